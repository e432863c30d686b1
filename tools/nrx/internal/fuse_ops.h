// The FUSE operations of `nrx fs mount` (the data path of tools/nrx/fuse_mount.h): libfuse3's
// high-level, path-based callbacks, each one translated into NR-FS calls (kernel/fs/fs.h) on the
// calling worker thread's own fs::Handle. Private to tools/nrx: fuse_mount.cc wires them up.
//
// Mapping: the FUSE file handle (fuse_file_info::fh) is the inode number that fs::open returns
// (NR-FS keeps no open-file state); errors are -fs::to_errno(status); reads and writes larger
// than fs::kMaxIo go to NR-FS in kMaxIo pieces. Files belong to the user who mounted.
//
// Handles: libfuse starts worker threads as load grows (and, depending on its version and loop
// configuration, retires idle ones), while a replica admits at most max_threads_per_replica
// threads and has no detach. So a worker takes a handle from a HandlePool on its first request,
// keeps it in a thread_local cache keyed by the pool, and gives it back when the thread exits; the
// next new worker takes it over (a Handle belongs to one thread at a time, not to one thread for
// ever). New handles deal the replicas round-robin, so every replica serves requests.
//
// Thread safety: every callback runs on any libfuse worker; HandlePool is internally locked.
//
//   auto pool = std::make_shared<detail::HandlePool>(*fs);
//   detail::FuseContext ctx{.handles = pool, .uid = getuid(), .gid = getgid()};
//   fuse_operations ops = detail::fuse_operations_for_nrfs();
//   struct fuse* f = fuse_new(&args, &ops, sizeof ops, &ctx);
//   fs::Handle* h = detail::thread_handle(pool).value();   // inside a callback
#pragma once

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 31  // libfuse3's high-level API as of 3.1 (Debian 12 ships 3.14)
#endif
#include <fuse.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "kernel/fs/fs.h"

namespace nrx::tools::detail {

class HandlePool {
 public:
  explicit HandlePool(fs::FileSystem<>& nrfs);
  HandlePool(const HandlePool&) = delete;
  HandlePool& operator=(const HandlePool&) = delete;

  fs::FileSystem<>& nrfs() const { return nrfs_; }
  // Unique over the process lifetime (a pool's address may be reused by a later one).
  uint64_t id() const { return id_; }
  // A handle given back earlier, else a new one on the next replica in round-robin order.
  // Errors: attach()'s (ENOSPC when the replica already has max_threads_per_replica threads).
  Result<fs::Handle> acquire() NRX_EXCLUDES(mu_);
  // Takes back a handle whose thread will not use it again.
  void release(const fs::Handle& handle) NRX_EXCLUDES(mu_);
  // Handles attached so far on each replica (given out, or back in the pool).
  std::vector<uint32_t> attached_per_replica() const NRX_EXCLUDES(mu_);

 private:
  fs::FileSystem<>& nrfs_;
  const uint64_t id_;
  mutable Mutex mu_;
  std::vector<fs::Handle> free_ NRX_GUARDED_BY(mu_);
  uint32_t next_replica_ NRX_GUARDED_BY(mu_) = 0;
  std::vector<uint32_t> attached_ NRX_GUARDED_BY(mu_);  // per replica
};

// The calling thread's handle on |pool|: taken from the pool on first use, given back when the
// thread exits. The pointer stays valid until then. Errors: HandlePool::acquire()'s.
Result<fs::Handle*> thread_handle(const std::shared_ptr<HandlePool>& pool);

// What every callback reaches through fuse_get_context()->private_data.
struct FuseContext {
  std::shared_ptr<HandlePool> handles;
  uid_t uid = 0;  // owner reported for every file: the user who mounted
  gid_t gid = 0;
  // Other processes change the file system too (the syscall channel): no attribute, entry or
  // negative-lookup caching in the kernel, so their changes show at once.
  bool uncached = false;
};

// The operations table: getattr, readdir, mkdir, rmdir, unlink, rename, create, open, read, write,
// truncate, release, flush, fsync, fsyncdir, chmod, chown (to the owner only), utimens, statfs,
// access, and init (which sets use_ino and the cache timeouts).
fuse_operations fuse_operations_for_nrfs();

}  // namespace nrx::tools::detail
