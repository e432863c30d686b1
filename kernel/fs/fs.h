// nrx::fs::FileSystem<L>: NR-FS, the in-memory file system of NrOS (paper section 4.3) on
// Concurrent Node Replication: one replica per NUMA node, several logs (DESIGN 4, fs).
//
// Structure (fs_state.h holds the replicated state, FsState):
// - a path -> inode namespace (directories of named entries) and an inode table; files are lists of
//   4 KiB frames from kernel/mem, each replica holding its own copy in its own node's pool (frames
//   come from mem::DeterministicAllocator, so running out of space is the same on every replica);
// - namespace operations (create, mkdir, rmdir, unlink, rename) are CNR scan-updates over every log,
//   so they are ordered against everything; inode operations (pwrite, truncate, chmod, utimens) are
//   writes on their inode's log (ino mod logs): operations on different files proceed in parallel;
// - reads (lookup, stat, readdir, pread) run on the local replica after syncing one log: a path
//   read syncs any log (every namespace change is a scan in all of them), an inode read syncs the
//   inode's log, so a read sees every operation that completed before it started;
// - write data and path names are copied into log payloads before the op is logged (DESIGN 3.3)
//   and each replica releases them after applying; the last release frees them.
// The kernel keeps no file offsets and no descriptors: open() returns the inode number, pread and
// pwrite take explicit offsets (the syscall layer's client library keeps descriptors and offsets).
//
// Paths are absolute ("/a/b"), at most kPathMax bytes, components 1..kNameMax bytes without NUL
// or '/'; "." is skipped and ".." goes up, but never above the root (EINVAL). No symbolic or hard
// links. An unlinked file's inode is gone at once: I/O on its number then fails with EBADF.
//
// Errors are Status values carrying a POSIX errno (Status::posix_errno(); to_errno() maps any
// Status): ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EBADF, EINVAL, ENAMETOOLONG, ENOSPC, EFBIG.
//
// Thread safety: every method may be called concurrently; a Handle belongs to one thread at a
// time (it holds the thread's CNR token on its replica).
//
//   auto memory = mem::Memory::create({.nodes = 2}).value();
//   auto fs = fs::FileSystem<>::create(*memory, {.replica_pools = {0, 1}}).value();
//   fs::Handle h = fs->attach(/*replica=*/0).value();
//   fs::Ino f = fs->open(h, "/hello.txt", fs::kCreate | fs::kWrite).value();
//   fs->pwrite(h, f, std::as_bytes(std::span("hi", 2)), 0).value();      // 2
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "kernel/mem/memory.h"
#include "kernel/nr/scan_order.h"
#include "logs/log.h"

namespace nrx::logs {
class RingLog;
}

namespace nrx::fs {

using Ino = uint64_t;
inline constexpr Ino kRootIno = 1;
inline constexpr size_t kNameMax = 255;
inline constexpr size_t kPathMax = 4096;
inline constexpr size_t kMaxIo = 128 * 1024;           // bytes one pread/pwrite moves at most
inline constexpr uint64_t kMaxFileSize = uint64_t{1} << 40;  // EFBIG beyond

enum class FileType : uint8_t { kFile = 1, kDir = 2 };

// open() flags.
inline constexpr uint32_t kCreate = 1u << 0;     // create a file if the path does not exist
inline constexpr uint32_t kExclusive = 1u << 1;  // with kCreate: EEXIST if it exists
inline constexpr uint32_t kTruncate = 1u << 2;   // truncate to 0 (needs kWrite)
inline constexpr uint32_t kWrite = 1u << 3;      // opened for writing: EISDIR on a directory
inline constexpr uint32_t kDirectory = 1u << 4;  // must be a directory: ENOTDIR otherwise
inline constexpr uint32_t kOpenFlags = kCreate | kExclusive | kTruncate | kWrite | kDirectory;

struct Stat {
  Ino ino = 0;
  FileType type = FileType::kFile;
  uint32_t mode = 0;    // permission bits (07777)
  uint32_t nlink = 0;   // files 1; directories 2 + subdirectories
  uint64_t size = 0;    // bytes (directories: entry count)
  uint64_t blocks = 0;  // 4 KiB frames allocated
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
};

struct DirEntry {
  std::string name;
  Ino ino = 0;
  FileType type = FileType::kFile;
  friend bool operator==(const DirEntry&, const DirEntry&) = default;
};

struct FsOptions {
  uint32_t logs = 4;                       // CNR logs (1..64)
  std::vector<uint32_t> replica_pools = {0};  // one replica per entry: the pool its data lives in
  uint32_t log_slots = 1024;               // per log; payload slots are twice this
  uint32_t max_threads_per_replica = 64;
  // Replicas that may register on the logs, from every process sharing them (0: this process's,
  // replica_pools.size()).
  uint32_t max_replicas = 0;
};

struct FsStats {
  uint64_t capacity_bytes = 0;  // data frames one replica can hold (its pool)
  uint64_t free_bytes = 0;      // of replica 0's pool
  uint64_t inodes = 0;          // on the handle's replica
  uint64_t payloads_live = 0;   // write data and names not yet released by every replica
};

// A thread's access to one replica (the CNR thread token). One thread at a time.
struct Handle {
  uint32_t replica = 0;
  uint32_t tid = UINT32_MAX;
  const void* owner = nullptr;
};

// The errno for |status|: its posix_errno() if set, else by canonical code (kNotFound ENOENT,
// kAlreadyExists EEXIST, kInvalidArgument EINVAL, kResourceExhausted ENOSPC, ...; EIO otherwise).
int to_errno(const Status& status);

template <typename L = logs::RingLog>
class FileSystem {
 public:
  // Errors: kInvalidArgument (no replicas, a pool that does not exist, logs out of range); the
  // log backend's errors.
  static Result<std::unique_ptr<FileSystem>> create(mem::Memory& memory, const FsOptions& options);
  // The same with the logs built by |create_log|: Result<std::unique_ptr<L>>(const LogOptions&)
  // (e.g. a latency-decorated ring for `nrx sweep`, or shm logs in regions). Replicas in other
  // processes that share those logs must share |scan_order| too (nr::SharedScanOrder; null: an
  // in-process order). Defined in fs_impl.h.
  template <typename CreateLog>
  static Result<std::unique_ptr<FileSystem>> create_with(mem::Memory& memory, const FsOptions& options,
                                                         CreateLog&& create_log,
                                                         std::unique_ptr<nr::ScanOrder> scan_order = nullptr);
  ~FileSystem();

  uint32_t replicas() const;
  uint32_t logs() const;
  // Log |i|'s tail and the lowest ltail of this process's replicas on it (status, lag).
  std::pair<uint64_t, uint64_t> log_position(uint32_t i) const;
  // Log |i| itself (i < logs()): backend operations the kernel makes beside NR-FS's (fencing).
  L& log(uint32_t i) const;

  // Registers the calling thread with replica |replica|. Errors: EINVAL (no such replica), ENOSPC
  // (max_threads_per_replica threads registered).
  Result<Handle> attach(uint32_t replica);

  // Opens (and with kCreate creates, with |mode|) the file or directory at |path|; returns its
  // inode number. Errors: ENOENT, EEXIST (kCreate|kExclusive), ENOTDIR, EISDIR (kWrite or
  // kTruncate on a directory), EINVAL (bad path or flags), ENAMETOOLONG.
  Result<Ino> open(Handle& h, std::string_view path, uint32_t flags, uint32_t mode = 0644);
  // Checks |ino| is live (the kernel keeps no open-file state). Errors: EBADF.
  Status close(Handle& h, Ino ino);
  // Reads up to min(out.size(), kMaxIo) bytes at |offset|; returns the count (0 at or past the
  // end; holes read as zeros). Errors: EBADF, EISDIR.
  Result<size_t> pread(Handle& h, Ino ino, std::span<std::byte> out, uint64_t offset);
  // Writes min(data.size(), kMaxIo) bytes at |offset| (extending the file, holes as zeros); returns
  // the count. A write that needs frames the pool does not have writes nothing and fails with
  // ENOSPC on every replica; what was written before stays. Errors: EBADF, EISDIR, ENOSPC, EFBIG,
  // EINVAL (empty data).
  Result<size_t> pwrite(Handle& h, Ino ino, std::span<const std::byte> data, uint64_t offset);
  // Sets the size; shrinking frees frames, growing adds a hole. Errors: EBADF, EISDIR, EFBIG.
  Status truncate(Handle& h, Ino ino, uint64_t size);
  // Everything is in memory: checks |ino| and makes sure this replica has applied its log.
  // Errors: EBADF.
  Status fsync(Handle& h, Ino ino);
  Status chmod(Handle& h, Ino ino, uint32_t mode);                        // Errors: EBADF, EINVAL
  Status utimens(Handle& h, Ino ino, int64_t atime_ns, int64_t mtime_ns);  // Errors: EBADF

  // Errors: EEXIST, ENOENT (parent), ENOTDIR, EINVAL, ENAMETOOLONG.
  Status mkdir(Handle& h, std::string_view path, uint32_t mode = 0755);
  // Errors: ENOENT, ENOTDIR, ENOTEMPTY, EINVAL (the root, or a path ending in "." or "..").
  Status rmdir(Handle& h, std::string_view path);
  // Errors: ENOENT, ENOTDIR, EISDIR.
  Status unlink(Handle& h, std::string_view path);
  // POSIX rename: replaces a file, or an empty directory by a directory. Errors: ENOENT, ENOTDIR,
  // EISDIR, ENOTEMPTY, EINVAL (into its own subtree, the root).
  Status rename(Handle& h, std::string_view from, std::string_view to);

  // Errors: ENOENT, ENOTDIR, EINVAL, ENAMETOOLONG.
  Result<Ino> lookup(Handle& h, std::string_view path);
  Result<Stat> stat(Handle& h, std::string_view path);  // Errors: as lookup
  Result<Stat> fstat(Handle& h, Ino ino);                // Errors: EBADF
  // The entries of the directory at |path|, sorted by name, without "." and "..".
  // Errors: as lookup, ENOTDIR.
  Result<std::vector<DirEntry>> readdir(Handle& h, std::string_view path);

  // Applies every log on the handle's replica and hashes its whole state (namespace, metadata and
  // contents; not frame names, which differ by node): equal on equal replicas.
  uint64_t digest(Handle& h);
  FsStats stats(Handle& h);
  // Applies what it can of every log on replica |replica| without blocking and without a Handle
  // (stop mode: never past a scan it does not own): what an idle kernel core or a lagging-replica
  // nudge does so its replica does not hold back the logs' heads (NrOS section 4.5). A replica that
  // does not exist: nothing.
  void advance(uint32_t replica);

 private:
  struct Impl;
  explicit FileSystem(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

extern template class FileSystem<logs::RingLog>;

}  // namespace nrx::fs
