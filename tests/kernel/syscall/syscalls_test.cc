// The in-process dispatcher (syscall::execute) at the ABI boundary: every call, and every kind of
// bad input a client can send (unknown numbers, corrupt fields, lengths past the buffer, bad
// paths and names, invalid inodes, zero-length and huge I/O, a full pool), plus random requests
// that must always get an errno, never a crash.
#include "kernel/syscall/syscalls.h"

#include <cerrno>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/mem/memory.h"

namespace nrx::syscall {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class SyscallsTest : public ::testing::Test {
 protected:
  void SetUp() override { make(16 * kMiB); }

  void make(uint64_t pool_bytes) {
    fs_.reset();
    memory_ = mem::Memory::create({.nodes = 2, .pool_bytes = pool_bytes}).value();
    fs_ = fs::FileSystem<>::create(*memory_, {.logs = 4, .replica_pools = {0, 1}}).value();
    h0_ = fs_->attach(0).value();
    h1_ = fs_->attach(1).value();
  }

  // Runs |r| with |in| copied to data offset 0, on replica |replica|.
  nrx_response run(const nrx_request& r, std::string_view in = {}, int replica = 0) {
    EXPECT_LE(in.size(), data_.size());
    if (!in.empty()) std::memcpy(data_.data(), in.data(), in.size());
    nrx_response resp;
    std::memset(&resp, 0x5a, sizeof resp);  // execute() must overwrite all of it
    execute(*fs_, replica == 0 ? h0_ : h1_, r, data_, resp);
    if (resp.result < 0) {
      EXPECT_GE(resp.result, -4095) << syscall_name(r.sysno);
      EXPECT_EQ(resp.length, 0u);
      EXPECT_EQ(resp.flags, 0u);
    }
    return resp;
  }
  static nrx_request req(uint32_t sysno) {
    nrx_request r{};
    r.sysno = sysno;
    return r;
  }
  int64_t path_call(uint32_t sysno, std::string_view path, uint32_t mode = 0) {
    nrx_request r = req(sysno);
    r.path_len = static_cast<uint32_t>(path.size());
    r.mode = mode;
    return run(r, path).result;
  }
  int64_t open(std::string_view path, uint32_t flags, uint32_t mode = 0644) {
    nrx_request r = req(NRX_SYS_OPEN);
    r.flags = flags;
    r.mode = mode;
    r.path_len = static_cast<uint32_t>(path.size());
    return run(r, path).result;
  }
  int64_t rename(std::string_view from, std::string_view to) {
    nrx_request r = req(NRX_SYS_RENAME);
    r.path_len = static_cast<uint32_t>(from.size());
    r.path2_len = static_cast<uint32_t>(to.size());
    return run(r, std::string(from) + std::string(to)).result;
  }
  int64_t ino_call(uint32_t sysno, uint64_t ino) {
    nrx_request r = req(sysno);
    r.ino = ino;
    return run(r).result;
  }
  int64_t pwrite(uint64_t ino, std::string_view bytes, uint64_t offset) {
    nrx_request r = req(NRX_SYS_PWRITE);
    r.ino = ino;
    r.offset = offset;
    r.length = bytes.size();
    return run(r, bytes).result;
  }
  // pread's result, with the bytes in *out.
  int64_t pread(uint64_t ino, uint64_t length, uint64_t offset, std::string* out, int replica = 0) {
    nrx_request r = req(NRX_SYS_PREAD);
    r.ino = ino;
    r.offset = offset;
    r.length = length;
    nrx_response resp = run(r, {}, replica);
    if (resp.result >= 0) {
      EXPECT_EQ(static_cast<uint64_t>(resp.result), resp.length);
      out->assign(reinterpret_cast<const char*>(data_.data()), resp.length);
    }
    return resp.result;
  }
  std::string read_all(uint64_t ino, int replica = 0) {
    std::string all;
    std::string piece;
    for (uint64_t off = 0;;) {
      const int64_t n = pread(ino, NRX_MAX_IO, off, &piece, replica);
      EXPECT_GE(n, 0);
      if (n <= 0) break;
      all += piece;
      off += static_cast<uint64_t>(n);
    }
    return all;
  }
  nrx_statbuf fstat(uint64_t ino) {
    nrx_request r = req(NRX_SYS_FSTAT);
    r.ino = ino;
    nrx_response resp = run(r);
    EXPECT_EQ(resp.result, 0);
    return resp.stat;
  }
  // Every name in directory |path|, through as many readdir requests as it takes.
  std::vector<std::string> list(std::string_view path, int* requests = nullptr) {
    std::vector<std::string> names;
    std::string after;
    for (int i = 0;; ++i) {
      nrx_request r = req(NRX_SYS_READDIR);
      r.path_len = static_cast<uint32_t>(path.size());
      r.path2_len = static_cast<uint32_t>(after.size());
      nrx_response resp = run(r, std::string(path) + after);
      EXPECT_GE(resp.result, 0);
      if (resp.result < 0) break;
      size_t at = 0;
      for (int64_t k = 0; k < resp.result; ++k) {
        nrx_dirent_record rec;
        std::memcpy(&rec, data_.data() + at, sizeof rec);
        EXPECT_EQ(rec.record_len % 8, 0u);
        EXPECT_GE(rec.record_len, sizeof rec + rec.name_len);
        names.emplace_back(reinterpret_cast<const char*>(data_.data()) + at + sizeof rec, rec.name_len);
        at += rec.record_len;
      }
      EXPECT_EQ(at, resp.length);
      if (requests != nullptr) *requests = i + 1;
      if ((resp.flags & NRX_READDIR_MORE) == 0) break;
      EXPECT_GT(resp.result, 0);
      if (resp.result == 0) break;
      after = names.back();
    }
    return names;
  }

  std::unique_ptr<mem::Memory> memory_;
  std::unique_ptr<fs::FileSystem<>> fs_;
  fs::Handle h0_, h1_;
  std::vector<std::byte> data_ = std::vector<std::byte>(NRX_DATA_CAPACITY);
};

TEST_F(SyscallsTest, FileCallsRoundTrip) {
  const int64_t ino = open("/hello.txt", NRX_O_CREAT | NRX_O_RDWR, 0640);
  ASSERT_GT(ino, 0);
  EXPECT_EQ(pwrite(ino, "hello, world", 0), 12);
  std::string got;
  EXPECT_EQ(pread(ino, 100, 0, &got), 12);
  EXPECT_EQ(got, "hello, world");
  EXPECT_EQ(pread(ino, 5, 7, &got, /*replica=*/1), 5);  // the other replica sees it
  EXPECT_EQ(got, "world");
  EXPECT_EQ(pread(ino, 5, 100, &got), 0);  // past the end

  nrx_statbuf st = fstat(ino);
  EXPECT_EQ(st.ino, static_cast<uint64_t>(ino));
  EXPECT_EQ(st.type, NRX_DT_REG);
  EXPECT_EQ(st.mode, 0640u);
  EXPECT_EQ(st.nlink, 1u);
  EXPECT_EQ(st.size, 12u);
  EXPECT_EQ(st.reserved, 0u);

  nrx_request r = req(NRX_SYS_STAT);
  r.path_len = 10;
  nrx_response resp = run(r, "/hello.txt");
  ASSERT_EQ(resp.result, 0);
  EXPECT_EQ(resp.stat.ino, st.ino);
  EXPECT_EQ(resp.stat.size, 12u);

  r = req(NRX_SYS_TRUNCATE);
  r.ino = static_cast<uint64_t>(ino);
  r.offset = 5;
  EXPECT_EQ(run(r).result, 0);
  EXPECT_EQ(read_all(ino, 1), "hello");

  r = req(NRX_SYS_CHMOD);
  r.ino = static_cast<uint64_t>(ino);
  r.mode = 0600;
  EXPECT_EQ(run(r).result, 0);
  EXPECT_EQ(fstat(ino).mode, 0600u);

  r = req(NRX_SYS_UTIMENS);
  r.ino = static_cast<uint64_t>(ino);
  r.atime_ns = 1'000'000'123;
  r.mtime_ns = 2'000'000'456;
  EXPECT_EQ(run(r).result, 0);
  st = fstat(ino);
  EXPECT_EQ(st.atime_ns, 1'000'000'123);
  EXPECT_EQ(st.mtime_ns, 2'000'000'456);
  r.atime_ns = NRX_UTIME_OMIT;  // keep atime, mtime now
  r.mtime_ns = NRX_UTIME_NOW;
  EXPECT_EQ(run(r).result, 0);
  st = fstat(ino);
  EXPECT_EQ(st.atime_ns, 1'000'000'123);
  EXPECT_GT(st.mtime_ns, 1'600'000'000'000'000'000);  // after 2020
  r.atime_ns = NRX_UTIME_OMIT;
  r.mtime_ns = NRX_UTIME_OMIT;
  EXPECT_EQ(run(r).result, 0);
  EXPECT_EQ(fstat(ino).atime_ns, 1'000'000'123);
  r.atime_ns = -1;  // before 1970
  EXPECT_EQ(run(r).result, -EINVAL);
  r.ino = 12345;
  r.atime_ns = NRX_UTIME_OMIT;
  EXPECT_EQ(run(r).result, -EBADF);  // both omitted still checks the inode
  r.atime_ns = NRX_UTIME_NOW;
  EXPECT_EQ(run(r).result, -EBADF);

  EXPECT_EQ(ino_call(NRX_SYS_FSYNC, static_cast<uint64_t>(ino)), 0);
  EXPECT_EQ(ino_call(NRX_SYS_CLOSE, static_cast<uint64_t>(ino)), 0);
  // Open flags map onto NR-FS's.
  EXPECT_EQ(open("/hello.txt", NRX_O_RDONLY), ino);
  EXPECT_EQ(open("/hello.txt", NRX_O_CREAT | NRX_O_EXCL | NRX_O_WRONLY), -EEXIST);
  EXPECT_EQ(open("/hello.txt", NRX_O_RDONLY | NRX_O_DIRECTORY), -ENOTDIR);
  EXPECT_EQ(open("/hello.txt", NRX_O_RDONLY | NRX_O_TRUNC), -EINVAL);  // truncate needs write access
  EXPECT_EQ(open("/hello.txt", NRX_O_WRONLY | NRX_O_TRUNC | NRX_O_APPEND), ino);
  EXPECT_EQ(fstat(ino).size, 0u);
  EXPECT_EQ(open("/missing", NRX_O_RDONLY), -ENOENT);
  EXPECT_EQ(open("/", NRX_O_WRONLY), -EISDIR);
  EXPECT_EQ(open("/", NRX_O_RDONLY | NRX_O_DIRECTORY), static_cast<int64_t>(fs::kRootIno));
}

TEST_F(SyscallsTest, NamespaceCallsRoundTrip) {
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, "/d", 0755), 0);
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, "/d", 0755), -EEXIST);
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, "/x/y", 0755), -ENOENT);
  ASSERT_GT(open("/d/f", NRX_O_CREAT | NRX_O_WRONLY), 0);
  ASSERT_GT(open("/top", NRX_O_CREAT | NRX_O_WRONLY), 0);
  EXPECT_EQ(list("/"), (std::vector<std::string>{"d", "top"}));
  EXPECT_EQ(list("/d"), (std::vector<std::string>{"f"}));
  EXPECT_EQ(rename("/d/f", "/d/g"), 0);
  EXPECT_EQ(rename("/d/missing", "/d/h"), -ENOENT);
  EXPECT_EQ(rename("/d", "/d/sub"), -EINVAL);  // into its own subtree
  EXPECT_EQ(list("/d"), (std::vector<std::string>{"g"}));
  EXPECT_EQ(path_call(NRX_SYS_RMDIR, "/d"), -ENOTEMPTY);
  EXPECT_EQ(path_call(NRX_SYS_UNLINK, "/d"), -EISDIR);
  EXPECT_EQ(path_call(NRX_SYS_UNLINK, "/d/g"), 0);
  EXPECT_EQ(path_call(NRX_SYS_UNLINK, "/d/g"), -ENOENT);
  EXPECT_EQ(path_call(NRX_SYS_RMDIR, "/top"), -ENOTDIR);
  EXPECT_EQ(path_call(NRX_SYS_RMDIR, "/d"), 0);
  EXPECT_EQ(path_call(NRX_SYS_RMDIR, "/"), -EINVAL);
  EXPECT_EQ(path_call(NRX_SYS_STAT, "/d"), -ENOENT);
  nrx_request r = req(NRX_SYS_READDIR);
  r.path_len = 4;
  EXPECT_EQ(run(r, "/top").result, -ENOTDIR);
}

TEST_F(SyscallsTest, ReaddirPagesThroughLargeDirectories) {
  ASSERT_EQ(path_call(NRX_SYS_MKDIR, "/big", 0755), 0);
  std::vector<std::string> want;
  for (int i = 0; i < 1500; ++i) {
    // 200-byte names: ~216-byte records, so one request holds ~640 and three are needed.
    char prefix[16];
    std::snprintf(prefix, sizeof prefix, "%05d-", i);
    want.push_back(prefix + std::string(200 - std::strlen(prefix), 'n'));
    ASSERT_GT(open("/big/" + want.back(), NRX_O_CREAT | NRX_O_WRONLY), 0) << i;
  }
  int requests = 0;
  EXPECT_EQ(list("/big", &requests), want);  // sorted, complete, no duplicates across pages
  EXPECT_EQ(requests, 3);
  // Resuming after a name that is gone (or never existed) continues at the next one.
  nrx_request r = req(NRX_SYS_READDIR);
  r.path_len = 4;
  r.path2_len = 5;
  nrx_response resp = run(r, "/big01499");
  EXPECT_EQ(resp.result, 1);  // only "01499-nnn..." sorts after "01499"
  EXPECT_EQ(resp.flags, 0u);
}

TEST_F(SyscallsTest, UnknownNumbersAreEnosys) {
  for (uint32_t sysno : {0u, NRX_SYS_COUNT, NRX_SYS_COUNT + 1, 1000u, UINT32_MAX}) {
    EXPECT_EQ(run(req(sysno)).result, -ENOSYS) << sysno;
  }
  EXPECT_STREQ(syscall_name(NRX_SYS_PWRITE), "pwrite");
  EXPECT_STREQ(syscall_name(UINT32_MAX), "unknown");
}

// The process and memory calls reach a ProcessCalls only (a program on a kernel core); without
// one they are ENOSYS. Their field rules are checked before the implementation sees them.
class RecordingCalls : public ProcessCalls {
 public:
  int64_t getpid() override { return record("getpid", 0, 0, 0); }
  int64_t exit(uint32_t status) override { return record("exit", status, 0, 0); }
  int64_t mmap(uint64_t va, uint64_t len, uint32_t prot) override { return record("mmap", va, len, prot); }
  int64_t munmap(uint64_t va, uint64_t len) override { return record("munmap", va, len, 0); }
  int64_t mprotect(uint64_t va, uint64_t len, uint32_t prot) override { return record("mprotect", va, len, prot); }
  std::string last;

 private:
  int64_t record(const char* name, uint64_t a, uint64_t b, uint64_t c) {
    last = std::string(name) + " " + std::to_string(a) + " " + std::to_string(b) + " " + std::to_string(c);
    return 42;
  }
};

TEST_F(SyscallsTest, ProcessCallsNeedAProcess) {
  for (uint32_t sysno : {NRX_SYS_GETPID, NRX_SYS_EXIT, NRX_SYS_MMAP, NRX_SYS_MUNMAP, NRX_SYS_MPROTECT}) {
    EXPECT_EQ(run(req(sysno)).result, -ENOSYS) << syscall_name(sysno);
  }
  EXPECT_STREQ(syscall_name(NRX_SYS_MPROTECT), "mprotect");

  RecordingCalls calls;
  auto call = [&](const nrx_request& r) {
    nrx_response resp{};
    execute(*fs_, h0_, r, data_, resp, &calls);
    return resp.result;
  };
  nrx_request r = req(NRX_SYS_MMAP);
  r.offset = 0x10000;
  r.length = 0x2000;
  r.flags = NRX_PROT_WRITE;
  EXPECT_EQ(call(r), 42);
  EXPECT_EQ(calls.last, "mmap 65536 8192 1");
  r.flags = 0x80;  // an unknown protection bit
  calls.last.clear();
  EXPECT_EQ(call(r), -EINVAL);
  EXPECT_EQ(calls.last, "") << "the implementation must not see a request the ABI refuses";
  r = req(NRX_SYS_MUNMAP);
  r.offset = 0x10000;
  r.length = 0x1000;
  r.mode = 1;  // a field munmap does not take
  EXPECT_EQ(call(r), -EINVAL);
  r.mode = 0;
  EXPECT_EQ(call(r), 42);
  EXPECT_EQ(calls.last, "munmap 65536 4096 0");
  r = req(NRX_SYS_EXIT);
  r.flags = 256;  // statuses are 0..255
  EXPECT_EQ(call(r), -EINVAL);
  r.flags = 255;
  EXPECT_EQ(call(r), 42);
  EXPECT_EQ(calls.last, "exit 255 0 0");
  r = req(NRX_SYS_GETPID);
  r.ino = 3;
  EXPECT_EQ(call(r), -EINVAL);
  // The file-system calls still work beside them.
  nrx_request mk = req(NRX_SYS_MKDIR);
  mk.path_len = 2;
  mk.mode = 0755;
  std::memcpy(data_.data(), "/p", 2);
  EXPECT_EQ(call(mk), 0);
}

TEST_F(SyscallsTest, CorruptRequestFieldsAreRejected) {
  const int64_t ino = open("/f", NRX_O_CREAT | NRX_O_RDWR);
  ASSERT_GT(ino, 0);
  nrx_request r = req(NRX_SYS_FSTAT);
  r.ino = static_cast<uint64_t>(ino);
  r.reserved = 1;
  EXPECT_EQ(run(r).result, -EINVAL) << "reserved field";
  r.reserved = 0;
  r.path_len = 2;
  EXPECT_EQ(run(r, "/f").result, -EINVAL) << "a path fstat does not take";
  r.path_len = 0;
  r.offset = 1;
  EXPECT_EQ(run(r).result, -EINVAL) << "an offset fstat does not take";
  r.offset = 0;
  r.atime_ns = 5;
  EXPECT_EQ(run(r).result, -EINVAL) << "times fstat does not take";

  r = req(NRX_SYS_MKDIR);
  r.path_len = 2;
  r.flags = NRX_O_CREAT;
  EXPECT_EQ(run(r, "/d").result, -EINVAL) << "flags mkdir does not take";
  r.flags = 0;
  r.mode = 0100755;  // a file-type bit
  EXPECT_EQ(run(r, "/d").result, -EINVAL);

  EXPECT_EQ(open("/g", NRX_O_CREAT | NRX_O_RDWR | 0x8000'0000u), -EINVAL) << "unknown open flag";
  EXPECT_EQ(open("/g", NRX_O_CREAT | NRX_O_ACCMODE), -EINVAL) << "access mode 3";
  EXPECT_EQ(open("/g", NRX_O_CREAT | NRX_O_RDWR, 010000), -EINVAL) << "mode beyond 07777";

  r = req(NRX_SYS_CHMOD);
  r.ino = static_cast<uint64_t>(ino);
  r.mode = 0xffff'ffff;
  EXPECT_EQ(run(r).result, -EINVAL);

  // Lengths that reach past the buffer.
  r = req(NRX_SYS_STAT);
  r.path_len = NRX_DATA_CAPACITY + 1;
  EXPECT_EQ(run(r).result, -EFAULT);
  r.path_len = UINT32_MAX;
  EXPECT_EQ(run(r).result, -EFAULT);
  r = req(NRX_SYS_RENAME);
  r.path_len = NRX_DATA_CAPACITY / 2 + 1;
  r.path2_len = NRX_DATA_CAPACITY / 2;
  EXPECT_EQ(run(r).result, -EFAULT);
  r.path_len = UINT32_MAX;
  r.path2_len = UINT32_MAX;  // would wrap in 32 bits
  EXPECT_EQ(run(r).result, -EFAULT);

  // Out-of-range numbers.
  r = req(NRX_SYS_PREAD);
  r.ino = static_cast<uint64_t>(ino);
  r.length = 1;
  r.offset = uint64_t{1} << 63;
  EXPECT_EQ(run(r).result, -EINVAL) << "offset beyond INT64_MAX";
  r = req(NRX_SYS_TRUNCATE);
  r.ino = static_cast<uint64_t>(ino);
  r.offset = UINT64_MAX;
  EXPECT_EQ(run(r).result, -EINVAL) << "size beyond INT64_MAX";
  r.offset = fs::kMaxFileSize + 1;
  EXPECT_EQ(run(r).result, -EFBIG);
  EXPECT_EQ(ino_call(NRX_SYS_FSTAT, UINT64_MAX), -EBADF);

  // A buffer smaller than the I/O asked for (an in-process caller's).
  std::vector<std::byte> small(16);
  nrx_response resp;
  r = req(NRX_SYS_PREAD);
  r.ino = static_cast<uint64_t>(ino);
  r.length = 17;
  execute(*fs_, h0_, r, small, resp);
  EXPECT_EQ(resp.result, -EFAULT);
  r.sysno = NRX_SYS_PWRITE;
  execute(*fs_, h0_, r, small, resp);
  EXPECT_EQ(resp.result, -EFAULT);
  EXPECT_EQ(fstat(ino).size, 0u);  // nothing was written by any of them
}

TEST_F(SyscallsTest, BadPathsAndNames) {
  EXPECT_EQ(path_call(NRX_SYS_STAT, ""), -ENOENT);
  EXPECT_EQ(open("", NRX_O_CREAT | NRX_O_RDWR), -ENOENT);
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, "relative", 0755), -EINVAL);
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, std::string_view("/a\0b", 4), 0755), -EINVAL);
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, std::string_view("/ab\0", 4), 0755), -EINVAL);  // a "terminated" path
  EXPECT_EQ(path_call(NRX_SYS_STAT, "/a"), -ENOENT);  // none of them created anything

  const std::string name255(255, 'x');
  const std::string name256(256, 'x');
  EXPECT_GT(open("/" + name255, NRX_O_CREAT | NRX_O_RDWR), 0);
  EXPECT_EQ(open("/" + name256, NRX_O_CREAT | NRX_O_RDWR), -ENAMETOOLONG);
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, "/" + name256 + "/x", 0755), -ENAMETOOLONG);
  EXPECT_EQ(rename("/" + name255, "/" + name256), -ENAMETOOLONG);
  std::string long_path;
  while (long_path.size() <= NRX_PATH_MAX) long_path += "/" + std::string(100, 'p');
  EXPECT_EQ(path_call(NRX_SYS_STAT, long_path), -ENAMETOOLONG);

  // ".." never climbs above the root.
  EXPECT_EQ(path_call(NRX_SYS_STAT, "/.."), -EINVAL);
  EXPECT_EQ(path_call(NRX_SYS_MKDIR, "/../escape", 0755), -EINVAL);
  ASSERT_EQ(path_call(NRX_SYS_MKDIR, "/d", 0755), 0);
  EXPECT_EQ(open("/d/../../f", NRX_O_CREAT | NRX_O_RDWR), -EINVAL);
  EXPECT_GT(open("/d/./../f", NRX_O_CREAT | NRX_O_RDWR), 0);  // stays inside: "/f"
  EXPECT_EQ(path_call(NRX_SYS_STAT, "/f"), 0);

  // readdir's resume point is a name: no '/', no NUL, at most 255 bytes.
  nrx_request r = req(NRX_SYS_READDIR);
  r.path_len = 1;
  r.path2_len = 3;
  EXPECT_EQ(run(r, "/a/b").result, -EINVAL);
  EXPECT_EQ(run(r, std::string_view("/a\0b", 4)).result, -EINVAL);
  r.path2_len = 256;
  EXPECT_EQ(run(r, "/" + name256).result, -ENAMETOOLONG);
}

TEST_F(SyscallsTest, InvalidInodes) {
  for (uint32_t sysno : {NRX_SYS_CLOSE, NRX_SYS_FSTAT, NRX_SYS_FSYNC}) {
    EXPECT_EQ(ino_call(sysno, 0), -EBADF) << syscall_name(sysno);
    EXPECT_EQ(ino_call(sysno, 12345), -EBADF) << syscall_name(sysno);
  }
  std::string got;
  EXPECT_EQ(pread(999, 10, 0, &got), -EBADF);
  EXPECT_EQ(pwrite(999, "x", 0), -EBADF);
  const int64_t ino = open("/gone", NRX_O_CREAT | NRX_O_RDWR);
  ASSERT_GT(ino, 0);
  ASSERT_EQ(path_call(NRX_SYS_UNLINK, "/gone"), 0);
  EXPECT_EQ(pwrite(ino, "x", 0), -EBADF);  // an unlinked file's inode is gone at once
  EXPECT_EQ(pread(ino, 1, 0, &got), -EBADF);
  nrx_request r = req(NRX_SYS_TRUNCATE);
  r.ino = static_cast<uint64_t>(ino);
  EXPECT_EQ(run(r).result, -EBADF);
  // Directories are not files.
  EXPECT_EQ(pread(fs::kRootIno, 10, 0, &got), -EISDIR);
  EXPECT_EQ(pwrite(fs::kRootIno, "x", 0), -EISDIR);
}

TEST_F(SyscallsTest, ZeroLengthAndHugeIo) {
  const int64_t ino = open("/io", NRX_O_CREAT | NRX_O_RDWR);
  ASSERT_GT(ino, 0);
  EXPECT_EQ(pwrite(ino, "", 0), 0);  // POSIX: writes nothing, returns 0
  EXPECT_EQ(fstat(ino).size, 0u);
  EXPECT_EQ(pwrite(12345, "", 0), -EBADF);  // but still checks the inode
  EXPECT_EQ(pwrite(fs::kRootIno, "", 0), -EISDIR);
  std::string got;
  EXPECT_EQ(pread(ino, 0, 0, &got), 0);

  // Longer than kMaxIo: clamped, the count says how much moved.
  std::string big(NRX_DATA_CAPACITY, 'b');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  EXPECT_EQ(pwrite(ino, big, 0), static_cast<int64_t>(NRX_MAX_IO));
  nrx_request r = req(NRX_SYS_PWRITE);
  r.ino = static_cast<uint64_t>(ino);
  r.length = UINT64_MAX;
  r.offset = NRX_MAX_IO;
  EXPECT_EQ(run(r, std::string_view(big).substr(NRX_MAX_IO)).result, static_cast<int64_t>(NRX_MAX_IO));
  EXPECT_EQ(fstat(ino).size, 2u * NRX_MAX_IO);
  EXPECT_EQ(pread(ino, UINT64_MAX, 0, &got), static_cast<int64_t>(NRX_MAX_IO));
  EXPECT_EQ(got, big.substr(0, NRX_MAX_IO));
  // Past the largest file: EFBIG, and nothing changes.
  EXPECT_EQ(pwrite(ino, "x", fs::kMaxFileSize), -EFBIG);
  EXPECT_EQ(fstat(ino).size, 2u * NRX_MAX_IO);
}

TEST_F(SyscallsTest, FullPoolIsEnospcAndKeepsWhatWasWritten) {
  make(2 * kMiB);  // 512 frames per replica
  const int64_t ino = open("/fill", NRX_O_CREAT | NRX_O_WRONLY);
  ASSERT_GT(ino, 0);
  std::string chunk(NRX_MAX_IO, '\0');
  std::string written;
  int64_t last = 0;
  for (int i = 0; i < 64; ++i) {
    for (size_t k = 0; k < chunk.size(); ++k) chunk[k] = static_cast<char>('A' + (i + k / 4096) % 26);
    last = pwrite(ino, chunk, written.size());
    if (last < 0) break;
    written += chunk.substr(0, static_cast<size_t>(last));
  }
  EXPECT_EQ(last, -ENOSPC);
  EXPECT_GT(written.size(), 0u);
  EXPECT_EQ(fstat(ino).size, written.size());
  EXPECT_EQ(read_all(ino, 0), written);
  EXPECT_EQ(read_all(ino, 1), written);
  EXPECT_EQ(fs_->digest(h0_), fs_->digest(h1_));
}

// Random requests, mostly near-valid: whatever arrives, the answer is a value or an errno.
TEST_F(SyscallsTest, RandomRequestsNeverCrash) {
  ASSERT_GT(open("/f", NRX_O_CREAT | NRX_O_RDWR), 0);
  ASSERT_EQ(path_call(NRX_SYS_MKDIR, "/d", 0755), 0);
  std::mt19937_64 rng(42);
  auto pick = [&](std::initializer_list<uint64_t> values) {
    return *(values.begin() + rng() % values.size());
  };
  const char kChars[] = "/ad.\0x";
  for (int i = 0; i < 20000; ++i) {
    nrx_request r{};
    r.sysno = static_cast<uint32_t>(rng() % (NRX_SYS_COUNT + 2));
    if (rng() % 8 == 0) r.flags = static_cast<uint32_t>(rng());
    else if (r.sysno == NRX_SYS_OPEN) r.flags = static_cast<uint32_t>(rng() % 0x2000);
    if (rng() % 2 == 0) r.mode = static_cast<uint32_t>(pick({0, 0644, 0755, 07777, 010000, UINT32_MAX}));
    r.path_len = static_cast<uint32_t>(pick({0, 1, 2, 3, 5, 9, 256, 4097, NRX_DATA_CAPACITY, UINT32_MAX}));
    if (rng() % 2 == 0) r.path2_len = static_cast<uint32_t>(pick({0, 1, 2, 4, 255, 256, UINT32_MAX}));
    if (rng() % 2 == 0) r.ino = pick({0, 1, 2, 3, 4, 1000, UINT64_MAX, uint64_t{1} << 63});
    if (rng() % 2 == 0) r.offset = pick({0, 1, 4095, 4096, fs::kMaxFileSize, UINT64_MAX});
    if (rng() % 2 == 0) r.length = pick({0, 1, 4096, NRX_MAX_IO, NRX_MAX_IO + 1, UINT64_MAX});
    if (rng() % 4 == 0) r.atime_ns = static_cast<int64_t>(pick({0, 1, static_cast<uint64_t>(NRX_UTIME_NOW)}));
    if (rng() % 16 == 0) r.reserved = 1;
    for (size_t k = 0; k < 16; ++k) data_[k] = static_cast<std::byte>(kChars[rng() % (sizeof kChars - 1)]);
    data_[0] = static_cast<std::byte>(rng() % 4 == 0 ? 'a' : '/');
    nrx_response resp;
    execute(*fs_, h0_, r, data_, resp);
    ASSERT_GE(resp.result, -4095) << i;
    if (resp.result < 0) {
      ASSERT_EQ(resp.length, 0u);
    } else {
      ASSERT_LE(resp.length, NRX_DATA_CAPACITY);
    }
  }
  // The file system is still consistent across replicas.
  EXPECT_EQ(fs_->digest(h0_), fs_->digest(h1_));
}

}  // namespace
}  // namespace nrx::syscall
