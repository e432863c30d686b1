// The dispatcher: validation first (every field of a request that came from outside), then one
// FileSystem call, then the response. See syscalls.h for the contract.
#include "kernel/syscall/syscalls.h"

#include "logs/rdma/rdma_log.h"
#include "logs/ring/ring_log.h"
#include "logs/shm/shm_log.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>

#include "base/cacheline.h"

namespace nrx::syscall {

// The ABI's limits are the kernel's: a request the ABI allows is one NR-FS can take.
static_assert(NRX_NAME_MAX == fs::kNameMax);
static_assert(NRX_PATH_MAX == fs::kPathMax);
static_assert(NRX_MAX_IO == fs::kMaxIo);
static_assert(NRX_DT_REG == static_cast<uint32_t>(fs::FileType::kFile));
static_assert(NRX_DT_DIR == static_cast<uint32_t>(fs::FileType::kDir));
static_assert(NRX_DATA_CAPACITY >= fs::kMaxIo && NRX_DATA_CAPACITY >= 2 * fs::kPathMax);

namespace {

// The fields each call reads; any other field must be 0 (nrx_syscall.h).
enum Field : uint32_t {
  kFieldPath = 1u << 0,
  kFieldPath2 = 1u << 1,
  kFieldFlags = 1u << 2,
  kFieldMode = 1u << 3,
  kFieldIno = 1u << 4,
  kFieldOffset = 1u << 5,
  kFieldLength = 1u << 6,
  kFieldTimes = 1u << 7,
};

struct CallSpec {
  const char* name;
  uint32_t fields;
};

// Indexed by number; entry 0 is "no such call".
constexpr CallSpec kCalls[NRX_SYS_COUNT] = {
    {"unknown", 0},
    {"open", kFieldPath | kFieldFlags | kFieldMode},                      // NRX_SYS_OPEN
    {"close", kFieldIno},                                                 // NRX_SYS_CLOSE
    {"pread", kFieldIno | kFieldOffset | kFieldLength},                   // NRX_SYS_PREAD
    {"pwrite", kFieldIno | kFieldOffset | kFieldLength},                  // NRX_SYS_PWRITE
    {"mkdir", kFieldPath | kFieldMode},                                   // NRX_SYS_MKDIR
    {"rmdir", kFieldPath},                                                // NRX_SYS_RMDIR
    {"unlink", kFieldPath},                                               // NRX_SYS_UNLINK
    {"rename", kFieldPath | kFieldPath2},                                 // NRX_SYS_RENAME
    {"readdir", kFieldPath | kFieldPath2},                                // NRX_SYS_READDIR
    {"stat", kFieldPath},                                                 // NRX_SYS_STAT
    {"fstat", kFieldIno},                                                 // NRX_SYS_FSTAT
    {"truncate", kFieldIno | kFieldOffset},                               // NRX_SYS_TRUNCATE
    {"fsync", kFieldIno},                                                 // NRX_SYS_FSYNC
    {"chmod", kFieldIno | kFieldMode},                                    // NRX_SYS_CHMOD
    {"utimens", kFieldIno | kFieldTimes},                                 // NRX_SYS_UTIMENS
    {"getpid", 0},                                                        // NRX_SYS_GETPID
    {"exit", kFieldFlags},                                                // NRX_SYS_EXIT
    {"mmap", kFieldOffset | kFieldLength | kFieldFlags},                  // NRX_SYS_MMAP
    {"munmap", kFieldOffset | kFieldLength},                              // NRX_SYS_MUNMAP
    {"mprotect", kFieldOffset | kFieldLength | kFieldFlags},              // NRX_SYS_MPROTECT
};
static_assert(NRX_SYS_MPROTECT + 1 == NRX_SYS_COUNT, "a new call needs its kCalls entry");

constexpr int64_t kInt64Max = INT64_MAX;

// A validated error: -errno in the response.
int64_t fail(int err) { return -static_cast<int64_t>(err); }

int64_t fail(const Status& status) { return fail(fs::to_errno(status)); }

// The fields of |r| that are set, as Field bits (reserved counts as every field, so it fails).
uint32_t fields_present(const nrx_request& r) {
  uint32_t present = 0;
  if (r.path_len != 0) present |= kFieldPath;
  if (r.path2_len != 0) present |= kFieldPath2;
  if (r.flags != 0) present |= kFieldFlags;
  if (r.mode != 0) present |= kFieldMode;
  if (r.ino != 0) present |= kFieldIno;
  if (r.offset != 0) present |= kFieldOffset;
  if (r.length != 0) present |= kFieldLength;
  if (r.atime_ns != 0 || r.mtime_ns != 0) present |= kFieldTimes;
  return present;
}

// Checks an absolute path copied out of the request: 0 or an errno.
int check_path(std::string_view path) {
  if (path.empty()) return ENOENT;  // POSIX: the empty path names nothing
  if (path.size() > fs::kPathMax) return ENAMETOOLONG;
  if (path.find('\0') != std::string_view::npos) return EINVAL;
  if (path.front() != '/') return EINVAL;  // no working directory in the kernel
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (end - start > fs::kNameMax) return ENAMETOOLONG;
    start = end + 1;
  }
  return 0;
}

// Checks a single name (readdir's resume point): 1..kNameMax bytes, no '/' or NUL.
int check_name(std::string_view name) {
  if (name.size() > fs::kNameMax) return ENAMETOOLONG;
  if (name.find('\0') != std::string_view::npos || name.find('/') != std::string_view::npos) return EINVAL;
  return 0;
}

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void fill_stat(const fs::Stat& s, nrx_statbuf& out) {
  out = nrx_statbuf{};
  out.ino = s.ino;
  out.type = static_cast<uint32_t>(s.type);
  out.mode = s.mode;
  out.nlink = s.nlink;
  out.size = s.size;
  out.blocks = s.blocks;
  out.atime_ns = s.atime_ns;
  out.mtime_ns = s.mtime_ns;
  out.ctime_ns = s.ctime_ns;
}

// Open flags: NRX_O_* -> fs flags, or an errno.
int translate_open_flags(uint32_t flags, uint32_t* fs_flags) {
  if ((flags & ~NRX_O_ALL) != 0) return EINVAL;
  const uint32_t access = flags & NRX_O_ACCMODE;
  if (access == NRX_O_ACCMODE) return EINVAL;
  uint32_t f = 0;
  if (access != NRX_O_RDONLY) f |= fs::kWrite;
  if ((flags & NRX_O_CREAT) != 0) f |= fs::kCreate;
  if ((flags & NRX_O_EXCL) != 0) f |= fs::kExclusive;
  if ((flags & NRX_O_TRUNC) != 0) f |= fs::kTruncate;
  if ((flags & NRX_O_DIRECTORY) != 0) f |= fs::kDirectory;
  *fs_flags = f;
  return 0;
}

// Packs the entries of |entries| after |after| into |out| as nrx_dirent_records.
int64_t pack_dirents(const std::vector<fs::DirEntry>& entries, std::string_view after, std::span<std::byte> out,
                     nrx_response& response) {
  auto it = entries.begin();
  if (!after.empty()) {
    it = std::upper_bound(entries.begin(), entries.end(), after,
                          [](std::string_view a, const fs::DirEntry& e) { return a < std::string_view(e.name); });
  }
  size_t used = 0;
  int64_t count = 0;
  for (; it != entries.end(); ++it) {
    // NR-FS names are 1..kNameMax bytes; anything else would be a kernel bug, skipped rather than
    // sent malformed.
    if (it->name.empty() || it->name.size() > fs::kNameMax) continue;
    const size_t record_len = round_up(sizeof(nrx_dirent_record) + it->name.size(), 8);
    if (used + record_len > out.size()) {
      response.flags |= NRX_READDIR_MORE;
      break;
    }
    nrx_dirent_record record{};
    record.ino = it->ino;
    record.type = static_cast<uint32_t>(it->type);
    record.name_len = static_cast<uint16_t>(it->name.size());
    record.record_len = static_cast<uint16_t>(record_len);
    std::memcpy(out.data() + used, &record, sizeof record);
    std::memcpy(out.data() + used + sizeof record, it->name.data(), it->name.size());
    std::memset(out.data() + used + sizeof record + it->name.size(), 0,
                record_len - sizeof record - it->name.size());
    used += record_len;
    ++count;
  }
  response.length = static_cast<uint32_t>(used);
  return count;
}

// The process and memory calls, after run()'s generic field checks.
int64_t run_process_call(ProcessCalls* process, const nrx_request& r) {
  if (process == nullptr) return fail(ENOSYS);  // not a program running on a kernel core
  switch (r.sysno) {
    case NRX_SYS_GETPID:
      return process->getpid();
    case NRX_SYS_EXIT:
      if (r.flags > 255) return fail(EINVAL);
      return process->exit(r.flags);
    case NRX_SYS_MMAP:
      if ((r.flags & ~NRX_PROT_ALL) != 0) return fail(EINVAL);
      return process->mmap(r.offset, r.length, r.flags);
    case NRX_SYS_MUNMAP:
      return process->munmap(r.offset, r.length);
    case NRX_SYS_MPROTECT:
      if ((r.flags & ~NRX_PROT_ALL) != 0) return fail(EINVAL);
      return process->mprotect(r.offset, r.length, r.flags);
    default:
      return fail(ENOSYS);
  }
}

template <typename L>
int64_t run(fs::FileSystem<L>& fs, fs::Handle& h, const nrx_request& r, std::span<std::byte> data,
            nrx_response& response, ProcessCalls* process) {
  if (r.sysno == 0 || r.sysno >= NRX_SYS_COUNT) return fail(ENOSYS);
  const CallSpec& call = kCalls[r.sysno];
  if (r.reserved != 0) return fail(EINVAL);
  if ((fields_present(r) & ~call.fields) != 0) return fail(EINVAL);

  // Inline arguments: inside the buffer (64-bit sums: no overflow from two 32-bit lengths).
  if (uint64_t{r.path_len} + uint64_t{r.path2_len} > data.size()) return fail(EFAULT);
  // Copied out before they are checked (|data| may be shared with the caller).
  std::string path;
  std::string path2;
  if ((call.fields & kFieldPath) != 0) {
    path.assign(reinterpret_cast<const char*>(data.data()), r.path_len);
    if (int err = check_path(path); err != 0) return fail(err);
  }
  if ((call.fields & kFieldPath2) != 0) {
    path2.assign(reinterpret_cast<const char*>(data.data()) + r.path_len, r.path2_len);
    const int err = r.sysno == NRX_SYS_READDIR ? check_name(path2) : check_path(path2);
    if (err != 0) return fail(err);
  }
  if ((call.fields & kFieldMode) != 0 && (r.mode & ~NRX_MODE_MASK) != 0) return fail(EINVAL);
  if (r.ino > static_cast<uint64_t>(kInt64Max)) return fail(EBADF);
  if (r.offset > static_cast<uint64_t>(kInt64Max)) return fail(EINVAL);

  switch (r.sysno) {
    case NRX_SYS_GETPID:
    case NRX_SYS_EXIT:
    case NRX_SYS_MMAP:
    case NRX_SYS_MUNMAP:
    case NRX_SYS_MPROTECT:
      return run_process_call(process, r);
    case NRX_SYS_OPEN: {
      uint32_t flags = 0;
      if (int err = translate_open_flags(r.flags, &flags); err != 0) return fail(err);
      Result<fs::Ino> ino = fs.open(h, path, flags, r.mode);
      if (!ino.ok()) return fail(ino.status());
      if (*ino > static_cast<uint64_t>(kInt64Max)) return fail(EOVERFLOW);
      return static_cast<int64_t>(*ino);
    }
    case NRX_SYS_CLOSE: {
      Status st = fs.close(h, r.ino);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_PREAD: {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(r.length, fs::kMaxIo));
      if (n > data.size()) return fail(EFAULT);
      Result<size_t> got = fs.pread(h, r.ino, data.first(n), r.offset);
      if (!got.ok()) return fail(got.status());
      if (*got > n) return fail(EIO);  // never: the kernel reads at most what fits
      response.length = static_cast<uint32_t>(*got);
      return static_cast<int64_t>(*got);
    }
    case NRX_SYS_PWRITE: {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(r.length, fs::kMaxIo));
      if (n > data.size()) return fail(EFAULT);
      if (n == 0) {
        // POSIX: a zero-length write may check for errors and returns 0; NR-FS refuses empty data.
        Result<fs::Stat> st = fs.fstat(h, r.ino);
        if (!st.ok()) return fail(st.status());
        return st->type == fs::FileType::kDir ? fail(EISDIR) : 0;
      }
      Result<size_t> put = fs.pwrite(h, r.ino, data.first(n), r.offset);
      if (!put.ok()) return fail(put.status());
      return static_cast<int64_t>(*put);
    }
    case NRX_SYS_MKDIR: {
      Status st = fs.mkdir(h, path, r.mode);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_RMDIR: {
      Status st = fs.rmdir(h, path);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_UNLINK: {
      Status st = fs.unlink(h, path);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_RENAME: {
      Status st = fs.rename(h, path, path2);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_READDIR: {
      Result<std::vector<fs::DirEntry>> entries = fs.readdir(h, path);
      if (!entries.ok()) return fail(entries.status());
      return pack_dirents(*entries, path2, data, response);
    }
    case NRX_SYS_STAT: {
      Result<fs::Stat> st = fs.stat(h, path);
      if (!st.ok()) return fail(st.status());
      fill_stat(*st, response.stat);
      return 0;
    }
    case NRX_SYS_FSTAT: {
      Result<fs::Stat> st = fs.fstat(h, r.ino);
      if (!st.ok()) return fail(st.status());
      fill_stat(*st, response.stat);
      return 0;
    }
    case NRX_SYS_TRUNCATE: {
      Status st = fs.truncate(h, r.ino, r.offset);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_FSYNC: {
      Status st = fs.fsync(h, r.ino);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_CHMOD: {
      Status st = fs.chmod(h, r.ino, r.mode);
      return st.ok() ? 0 : fail(st);
    }
    case NRX_SYS_UTIMENS: {
      int64_t atime = r.atime_ns;
      int64_t mtime = r.mtime_ns;
      auto valid = [](int64_t t) { return t >= 0 || t == NRX_UTIME_OMIT || t == NRX_UTIME_NOW; };
      if (!valid(atime) || !valid(mtime)) return fail(EINVAL);  // before 1970: not representable
      if (atime == NRX_UTIME_OMIT || mtime == NRX_UTIME_OMIT) {
        Result<fs::Stat> st = fs.fstat(h, r.ino);  // also the EBADF check when both are omitted
        if (!st.ok()) return fail(st.status());
        if (atime == NRX_UTIME_OMIT) atime = st->atime_ns;
        if (mtime == NRX_UTIME_OMIT) mtime = st->mtime_ns;
        if (r.atime_ns == NRX_UTIME_OMIT && r.mtime_ns == NRX_UTIME_OMIT) return 0;
      }
      if (atime == NRX_UTIME_NOW || mtime == NRX_UTIME_NOW) {
        const int64_t now = now_ns();
        if (atime == NRX_UTIME_NOW) atime = now;
        if (mtime == NRX_UTIME_NOW) mtime = now;
      }
      Status st = fs.utimens(h, r.ino, atime, mtime);
      return st.ok() ? 0 : fail(st);
    }
    default:
      return fail(ENOSYS);  // unreachable: the range check above
  }
}

}  // namespace

template <typename L>
void execute(fs::FileSystem<L>& fs, fs::Handle& h, const nrx_request& request, std::span<std::byte> data,
             nrx_response& response, ProcessCalls* process) {
  response = nrx_response{};
  const int64_t result = run(fs, h, request, data, response, process);
  if (result < 0) {
    // An error carries nothing else: no half-filled stat, no data length to trust.
    response = nrx_response{};
  }
  response.result = result;
}

// The backends NR-FS runs on: the ring (single box), shared memory (emulated CXL, rack) and RDMA.
template void execute<logs::RingLog>(fs::FileSystem<logs::RingLog>&, fs::Handle&, const nrx_request&,
                                     std::span<std::byte>, nrx_response&, ProcessCalls*);
template void execute<logs::ShmLog>(fs::FileSystem<logs::ShmLog>&, fs::Handle&, const nrx_request&,
                                    std::span<std::byte>, nrx_response&, ProcessCalls*);
template void execute<logs::RdmaLog>(fs::FileSystem<logs::RdmaLog>&, fs::Handle&, const nrx_request&,
                                     std::span<std::byte>, nrx_response&, ProcessCalls*);

const char* syscall_name(uint32_t sysno) { return sysno < NRX_SYS_COUNT ? kCalls[sysno].name : kCalls[0].name; }

}  // namespace nrx::syscall
