// nrx::fs::FsState: the replicated state of NR-FS, one per replica, as a CNR ConcurrentDispatch
// type (kernel/nr/cnr.h); FileSystem (fs.h) wraps it. See fs.h for the design.
//
// Ops:
//   WriteOp (one inode, on log ino mod logs): Write (data in a payload of that log), Truncate,
//           Chmod, SetTimes;
//   ScanOp  (the namespace, a scan-update over all logs; names in a payload of log 0): Create,
//           Mkdir, Rmdir, Unlink, Rename;
//   ReadOp  (local, after syncing one log): Lookup, Stat, ReadDir, Read.
// Every op is deterministic given (state, op, log position): inode numbers come from a counter
// only scans advance (scans are in the same order everywhere); data frames come from the
// deterministic allocator keyed by (log index, log), so a replica's answer to "is there space"
// is everybody's; times come from the op (the issuer's clock), not from the applying replica.
//
// Locking (the structure is thread-safe, as CNR requires): ns_mu_ guards the inode table and
// every directory's entries; a scan takes it exclusively, everything else shared. Each inode's
// mu guards its data and attributes: writes exclusive, reads shared. Order: ns_mu_, then an
// inode's mu.
//
//   FsState s(memory, &det, /*slot=*/0, &logs);            // CNR constructs one per replica
//   auto r = s.dispatch(FsState::ReadOp{.kind = FsState::ReadOp::kLookup, .path = "/a"});
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "kernel/fs/fs.h"
#include "kernel/mem/deterministic_allocator.h"
#include "kernel/mem/memory.h"
#include "kernel/nr/dispatch.h"
#include "logs/log.h"

namespace nrx::fs {

class FsState {
 public:
  struct WriteOp {
    enum Kind : uint8_t { kPwrite = 1, kSetSize = 2, kChmod = 3, kSetTimes = 4 };
    Kind kind = kPwrite;
    uint32_t mode = 0;       // Chmod
    Ino ino = 0;
    uint64_t offset = 0;     // Write: file offset; Truncate: the new size
    int64_t atime_ns = 0;    // SetTimes (-1: keep)
    int64_t mtime_ns = 0;    // Write/Truncate/Chmod: the issuer's now; SetTimes (-1: keep)
    logs::PayloadRef data{};  // Write: the bytes, in the payload table of this op's log
  };
  struct ScanOp {
    enum Kind : uint8_t { kCreateFile = 1, kMkdir = 2, kRmdir = 3, kUnlink = 4, kRename = 5 };
    Kind kind = kCreateFile;
    uint8_t exclusive = 0;   // Create: fail with EEXIST if the name exists
    uint32_t mode = 0;       // Create, Mkdir
    uint32_t len_a = 0;      // the payload holds path a (len_a bytes) then path b (Rename)
    uint32_t len_b = 0;
    int64_t now_ns = 0;
    logs::PayloadRef names{};  // in log 0's payload table
  };
  struct ReadOp {
    enum Kind : uint8_t { kLookup = 1, kStat = 2, kReadDir = 3, kRead = 4 };
    Kind kind = kLookup;
    Ino ino = 0;                  // Stat, ReadDir, Read
    std::string_view path{};      // Lookup (normalised, validated)
    std::span<std::byte> out{};   // Read: destination (a read op never enters a log)
    uint64_t offset = 0;          // Read
  };
  struct Response {
    Status status;
    Ino ino = 0;          // Lookup, Create, Mkdir
    uint64_t count = 0;   // Read/Write: bytes
    Stat stat;            // Stat
    std::vector<DirEntry> entries;  // ReadDir
  };

  // The replica in allocator slot |slot|; |logs| are the CNR group's logs (payload tables).
  FsState(mem::Memory& memory, mem::DeterministicAllocator* det, uint32_t slot, const std::vector<logs::Log*>* logs);
  ~FsState();
  FsState(const FsState&) = delete;
  FsState& operator=(const FsState&) = delete;

  Response dispatch(const ReadOp& op) const NRX_EXCLUDES(ns_mu_);
  Response dispatch_mut(const WriteOp& op, const nr::ApplyContext& ctx) const NRX_EXCLUDES(ns_mu_);
  Response dispatch_scan(const ScanOp& op) const;  // no scan-reads: answers EINVAL
  Response dispatch_scan_mut(const ScanOp& op, const nr::ApplyContext& ctx) const NRX_EXCLUDES(ns_mu_);

  // Hash of the namespace, attributes and contents (not frame names). Callers sync first.
  uint64_t digest() const NRX_EXCLUDES(ns_mu_);
  uint64_t inode_count() const NRX_EXCLUDES(ns_mu_);

 private:
  struct Inode {
    Ino ino = 0;
    FileType type = FileType::kFile;
    Ino parent = 0;                                  // directories; guarded by ns_mu_
    std::map<std::string, Ino, std::less<>> entries;  // directories; guarded by ns_mu_
    uint32_t subdirs = 0;                            // guarded by ns_mu_
    mutable SharedMutex mu;
    uint32_t mode NRX_GUARDED_BY(mu) = 0;
    uint64_t size NRX_GUARDED_BY(mu) = 0;
    std::vector<mem::Frame> pages NRX_GUARDED_BY(mu);  // kHole for a page never written
    int64_t atime_ns NRX_GUARDED_BY(mu) = 0;
    int64_t mtime_ns NRX_GUARDED_BY(mu) = 0;
    int64_t ctime_ns NRX_GUARDED_BY(mu) = 0;
  };

  Inode* find_locked(Ino ino) const NRX_REQUIRES_SHARED(ns_mu_);
  // The inode at |parts| (ENOENT, ENOTDIR along the way).
  Result<Inode*> resolve_locked(const std::vector<std::string_view>& parts) const NRX_REQUIRES_SHARED(ns_mu_);
  // The directory that holds the last component of |parts| (which must not be empty).
  Result<Inode*> parent_locked(const std::vector<std::string_view>& parts) const NRX_REQUIRES_SHARED(ns_mu_);
  Inode* make_inode_locked(FileType type, uint32_t mode, int64_t now, Inode* parent) const NRX_REQUIRES(ns_mu_);
  void drop_inode_locked(Inode* inode) const NRX_REQUIRES(ns_mu_);
  void free_pages_from(Inode& inode, uint64_t first_page) const NRX_REQUIRES(inode.mu);
  Stat stat_of(const Inode& inode) const NRX_REQUIRES_SHARED(ns_mu_, inode.mu);

  Response write_locked(const WriteOp& op, const nr::ApplyContext& ctx, Inode& inode,
                        std::span<const std::byte> data) const NRX_REQUIRES(inode.mu);
  Response scan_locked(const ScanOp& op, std::string_view a, std::string_view b) const NRX_REQUIRES(ns_mu_);
  Response rename_locked(const ScanOp& op, std::string_view from, std::string_view to) const NRX_REQUIRES(ns_mu_);

  mem::Memory& memory_;
  mem::DeterministicAllocator* det_;
  const uint32_t slot_;
  const std::vector<logs::Log*>* logs_;
  mutable SharedMutex ns_mu_;
  mutable std::unordered_map<Ino, std::unique_ptr<Inode>> inodes_ NRX_GUARDED_BY(ns_mu_);
  mutable Ino next_ino_ NRX_GUARDED_BY(ns_mu_) = kRootIno + 1;
};

// Sends inode ops to log ino mod n, path lookups to a log by hash, scans to every log.
struct FsLogMapper {
  uint32_t operator()(const FsState::ReadOp& op, uint32_t n) const;
  uint32_t operator()(const FsState::WriteOp& op, uint32_t n) const { return static_cast<uint32_t>(op.ino % n); }
  uint64_t scan_mask(const FsState::ScanOp&, uint32_t n) const { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }
};

}  // namespace nrx::fs
