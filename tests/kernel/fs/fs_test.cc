// NR-FS semantics through the kernel API: files, directories, rename rules, holes, truncate,
// POSIX errors, bad paths, out of space (nothing written before is lost), payload release, and
// replicas that agree.
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/fs/fs.h"
#include "kernel/mem/memory.h"

namespace nrx::fs {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::span<const std::byte> bytes(const std::string& s) { return std::as_bytes(std::span(s)); }

class FsTest : public ::testing::Test {
 protected:
  void SetUp() override { make(16 * kMiB); }
  void make(uint64_t pool_bytes) {
    fs_.reset();
    memory_ = mem::Memory::create({.nodes = 2, .pool_bytes = pool_bytes}).value();
    fs_ = FileSystem<>::create(*memory_, {.logs = 4, .replica_pools = {0, 1}}).value();
    h0_ = fs_->attach(0).value();
    h1_ = fs_->attach(1).value();
  }
  int err(const Status& s) { return to_errno(s); }
  template <typename T>
  int err(const Result<T>& r) {
    return to_errno(r.status());
  }
  std::string read_all(Handle& h, Ino ino) {
    std::string out;
    std::vector<std::byte> buf(kMaxIo);
    for (uint64_t off = 0;;) {
      auto n = fs_->pread(h, ino, buf, off);
      EXPECT_TRUE(n.ok()) << n.status().to_string();
      if (!n.ok() || *n == 0) break;
      out.append(reinterpret_cast<const char*>(buf.data()), *n);
      off += *n;
    }
    return out;
  }

  std::unique_ptr<mem::Memory> memory_;
  std::unique_ptr<FileSystem<>> fs_;
  Handle h0_, h1_;
};

TEST_F(FsTest, WriteOnOneReplicaReadOnTheOther) {
  Ino f = fs_->open(h0_, "/hello.txt", kCreate | kWrite).value();
  ASSERT_EQ(fs_->pwrite(h0_, f, bytes("hello, world"), 0).value(), 12u);
  EXPECT_EQ(read_all(h1_, f), "hello, world");
  auto st = fs_->stat(h1_, "/hello.txt").value();
  EXPECT_EQ(st.size, 12u);
  EXPECT_EQ(st.type, FileType::kFile);
  EXPECT_EQ(st.mode, 0644u);
  EXPECT_EQ(st.blocks, 1u);
  EXPECT_EQ(fs_->digest(h0_), fs_->digest(h1_));
}

TEST_F(FsTest, HolesReadAsZerosAndTruncateShrinksAndGrows) {
  Ino f = fs_->open(h0_, "/sparse", kCreate | kWrite).value();
  ASSERT_TRUE(fs_->pwrite(h0_, f, bytes("end"), 3 * 4096 + 10).ok());
  std::string all = read_all(h1_, f);
  ASSERT_EQ(all.size(), 3 * 4096 + 13u);
  EXPECT_EQ(all.substr(0, 3 * 4096 + 10), std::string(3 * 4096 + 10, '\0'));
  EXPECT_EQ(fs_->fstat(h1_, f).value().blocks, 1u);  // the hole holds no frames
  ASSERT_TRUE(fs_->pwrite(h0_, f, bytes("abcdef"), 0).ok());
  ASSERT_TRUE(fs_->truncate(h1_, f, 3).ok());
  ASSERT_TRUE(fs_->truncate(h0_, f, 8).ok());
  EXPECT_EQ(read_all(h0_, f), std::string("abc\0\0\0\0\0", 8));  // the cut tail came back as zeros
  EXPECT_EQ(fs_->fstat(h0_, f).value().blocks, 1u);
}

TEST_F(FsTest, DirectoriesAndRenameFollowPosix) {
  ASSERT_TRUE(fs_->mkdir(h0_, "/a").ok());
  ASSERT_TRUE(fs_->mkdir(h1_, "/a/b").ok());
  EXPECT_EQ(err(fs_->mkdir(h0_, "/a")), EEXIST);
  EXPECT_EQ(err(fs_->mkdir(h0_, "/x/y")), ENOENT);
  Ino f = fs_->open(h0_, "/a/f", kCreate | kWrite).value();
  ASSERT_TRUE(fs_->pwrite(h0_, f, bytes("data"), 0).ok());
  EXPECT_EQ(err(fs_->mkdir(h0_, "/a/f/g")), ENOTDIR);
  EXPECT_EQ(err(fs_->open(h0_, "/a/f", kDirectory)), ENOTDIR);
  EXPECT_EQ(err(fs_->open(h0_, "/a", kWrite)), EISDIR);
  EXPECT_EQ(err(fs_->open(h0_, "/a/f", kCreate | kExclusive)), EEXIST);
  EXPECT_EQ(err(fs_->rmdir(h0_, "/a")), ENOTEMPTY);
  EXPECT_EQ(err(fs_->rmdir(h0_, "/a/f")), ENOTDIR);
  EXPECT_EQ(err(fs_->unlink(h0_, "/a/b")), EISDIR);
  EXPECT_EQ(err(fs_->rename(h0_, "/a", "/a/b/c")), EINVAL);  // into its own subtree
  EXPECT_EQ(err(fs_->rename(h0_, "/a/f", "/a/b")), EISDIR);
  EXPECT_EQ(err(fs_->rename(h0_, "/a/b", "/a/f")), ENOTDIR);
  EXPECT_EQ(err(fs_->rename(h0_, "/nope", "/z")), ENOENT);
  ASSERT_TRUE(fs_->mkdir(h0_, "/a/b/c").ok());
  ASSERT_TRUE(fs_->mkdir(h0_, "/d").ok());
  EXPECT_EQ(err(fs_->rename(h0_, "/d", "/a/b")), ENOTEMPTY);
  ASSERT_TRUE(fs_->rename(h1_, "/a/f", "/a/g").ok());
  Ino g2 = fs_->open(h0_, "/g2", kCreate | kWrite).value();
  ASSERT_TRUE(fs_->rename(h0_, "/g2", "/a/g").ok());  // replaces the file, freeing its frames
  EXPECT_EQ(fs_->lookup(h1_, "/a/g").value(), g2);
  EXPECT_EQ(err(fs_->fstat(h1_, f)), EBADF);  // the replaced inode is gone
  auto entries = fs_->readdir(h1_, "/a").value();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "b");
  EXPECT_EQ(entries[0].type, FileType::kDir);
  EXPECT_EQ(entries[1].name, "g");
  EXPECT_EQ(fs_->stat(h0_, "/a").value().nlink, 3u);
  ASSERT_TRUE(fs_->rename(h0_, "/a/b", "/b2").ok());
  EXPECT_TRUE(fs_->stat(h1_, "/b2/c").ok());
  EXPECT_EQ(fs_->stat(h0_, "/a").value().nlink, 2u);
  EXPECT_EQ(err(fs_->rmdir(h0_, "/")), EINVAL);
  EXPECT_EQ(fs_->digest(h0_), fs_->digest(h1_));
}

TEST_F(FsTest, BadPathsAndArgumentsAreRefused) {
  EXPECT_EQ(err(fs_->open(h0_, "", kCreate)), EINVAL);
  EXPECT_EQ(err(fs_->open(h0_, "relative", kCreate)), EINVAL);
  EXPECT_EQ(err(fs_->open(h0_, "/../etc", 0)), EINVAL);  // never above the root
  EXPECT_EQ(err(fs_->open(h0_, std::string_view("/a\0b", 4), kCreate)), EINVAL);
  EXPECT_EQ(err(fs_->open(h0_, "/" + std::string(256, 'n'), kCreate)), ENAMETOOLONG);
  EXPECT_TRUE(fs_->open(h0_, "/" + std::string(255, 'n'), kCreate).ok());
  EXPECT_EQ(err(fs_->open(h0_, "/" + std::string(5000, 'n'), kCreate)), ENAMETOOLONG);
  EXPECT_EQ(err(fs_->open(h0_, "/f", 1u << 20)), EINVAL);
  EXPECT_EQ(err(fs_->mkdir(h0_, "/x/..")), EINVAL);
  EXPECT_EQ(err(fs_->pread(h0_, 9999, {}, 0)), EBADF);
  std::vector<std::byte> buf(10);
  EXPECT_EQ(err(fs_->pread(h0_, 9999, buf, 0)), EBADF);
  EXPECT_EQ(err(fs_->pwrite(h0_, 9999, bytes("x"), 0)), EBADF);
  EXPECT_EQ(err(fs_->pread(h0_, kRootIno, buf, 0)), EISDIR);
  Ino f = fs_->open(h0_, "/f", kCreate | kWrite).value();
  EXPECT_EQ(err(fs_->pwrite(h0_, f, {}, 0)), EINVAL);
  EXPECT_EQ(err(fs_->pwrite(h0_, f, bytes("x"), kMaxFileSize)), EFBIG);
  EXPECT_EQ(err(fs_->chmod(h0_, f, 010000)), EINVAL);
  EXPECT_EQ(err(fs_->close(h0_, 12345)), EBADF);
  Handle stranger{};
  EXPECT_EQ(err(fs_->lookup(stranger, "/")), EINVAL);
  EXPECT_EQ(err(fs_->attach(7)), EINVAL);
}

TEST_F(FsTest, LargeWritesAreClampedToOneIoAndRoundTrip) {
  Ino f = fs_->open(h0_, "/big", kCreate | kWrite).value();
  std::string data(3 * kMaxIo + 123, 'q');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 26);
  uint64_t off = 0;
  while (off < data.size()) {
    auto n = fs_->pwrite(h0_, f, bytes(data).subspan(off), off);
    ASSERT_TRUE(n.ok());
    EXPECT_LE(*n, kMaxIo);
    off += *n;
  }
  EXPECT_EQ(read_all(h1_, f), data);
}

TEST_F(FsTest, OutOfSpaceFailsOnEveryReplicaAndKeepsWhatWasWritten) {
  make(2 * kMiB);  // 512 frames per replica
  Ino f = fs_->open(h0_, "/fill", kCreate | kWrite).value();
  std::string chunk(64 * 1024, 'z');
  uint64_t off = 0;
  Status last;
  while (last.ok()) {
    auto n = fs_->pwrite(h0_, f, bytes(chunk), off);
    if (!n.ok()) {
      last = n.status();
      break;
    }
    off += *n;
  }
  EXPECT_EQ(to_errno(last), ENOSPC);
  EXPECT_GT(off, 0u);
  EXPECT_EQ(fs_->fstat(h1_, f).value().size, off);  // the failed write left the size alone
  EXPECT_EQ(read_all(h1_, f), std::string(off, 'z'));
  EXPECT_EQ(fs_->digest(h0_), fs_->digest(h1_));
  ASSERT_TRUE(fs_->truncate(h1_, f, 0).ok());  // space comes back
  EXPECT_TRUE(fs_->pwrite(h0_, f, bytes(chunk), 0).ok());
}

TEST_F(FsTest, PayloadsAreReleasedByEveryReplica) {
  Ino f = fs_->open(h0_, "/p", kCreate | kWrite).value();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(fs_->pwrite(h0_, f, bytes("payload"), static_cast<uint64_t>(i) * 7).ok());
  ASSERT_TRUE(fs_->mkdir(h0_, "/d").ok());
  (void)fs_->digest(h1_);  // replica 1 applies everything
  (void)fs_->digest(h0_);
  EXPECT_EQ(read_all(h1_, f).size(), 700u);
  // Every write and every namespace op put a payload; all of them are free again.
  FsStats s = fs_->stats(h0_);
  EXPECT_EQ(s.inodes, 3u);
  EXPECT_EQ(s.payloads_live, 0u);
}

}  // namespace
}  // namespace nrx::fs
