// nrx::tools::FuseMount: NR-FS (kernel/fs/fs.h) mounted on a Linux directory through libfuse3's
// high-level API, so unmodified programs (a shell, tar, SQLite) use the node-replicated file
// system (DESIGN 4, syscall: "FUSE as the way unmodified programs reach NR-FS"). This is the
// control path (checks, mount, event loop, unmount); the operations are internal/fuse_ops.h.
//
// Requests are served by libfuse's multi-threaded loop; each worker thread holds its own
// fs::Handle, dealt round-robin over the replicas, so every replica serves reads and writes.
//
// Signals: serve() installs libfuse's SIGINT/SIGTERM/SIGHUP handlers, which end the loop; the
// destructor then unmounts. A signal must reach the main thread or a FUSE worker to end the loop,
// so callers block those signals before starting other threads (the syscall channel) and leave
// them blocked there; serve() unblocks them on the calling thread while it runs.
//
// Thread safety: mount(), serve() and the destructor belong to one thread; the FileSystem must
// outlive the FuseMount.
//
//   auto mount = FuseMount::mount(*fs, {.dir = "/mnt/nrfs"});
//   if (!mount.ok()) return fail(mount.status());  // kUnavailable: no /dev/fuse, mount refused
//   std::printf("mounted on %s\n", (*mount)->dir().c_str());
//   Status st = (*mount)->serve();                 // until unmounted or SIGINT/SIGTERM
//   mount->reset();                                // unmounts
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "kernel/fs/fs.h"

struct fuse;

namespace nrx::tools {

namespace detail {
struct FuseContext;
}  // namespace detail

struct FuseOptions {
  std::string dir;  // an existing, empty directory
  // Other processes change the file system as well (the syscall channel): turn off the kernel's
  // attribute and lookup caches so their changes show at once.
  bool uncached = false;
};

class FuseMount {
 public:
  // Errors: kInvalidArgument (|dir| missing, not a directory, not empty); kUnavailable (/dev/fuse
  // missing or not usable, or the kernel refused the mount; the message says which and why).
  static Result<std::unique_ptr<FuseMount>> mount(fs::FileSystem<>& nrfs, const FuseOptions& options);
  ~FuseMount();
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // The mount point, absolute and without symbolic links.
  const std::string& dir() const { return dir_; }
  // NR-FS handles the FUSE worker threads have attached, per replica (dealt round-robin).
  std::vector<uint32_t> worker_handles() const;

  // Serves requests until the file system is unmounted (fusermount3 -u, umount) or SIGINT, SIGTERM
  // or SIGHUP arrives. Errors: kInternal when the loop fails (the message has libfuse's reason).
  Status serve();

 private:
  FuseMount(std::string dir, std::unique_ptr<detail::FuseContext> ctx);

  std::string dir_;
  std::unique_ptr<detail::FuseContext> ctx_;
  ::fuse* fuse_ = nullptr;
  bool mounted_ = false;
};

// Checks that |dir| can be a mount point: it exists, is a directory and is empty. Returns it
// absolute and without symbolic links. Errors: kInvalidArgument, naming the problem.
Result<std::string> check_mount_dir(const std::string& dir);

// Checks that /dev/fuse exists and opens for reading and writing. Errors: kUnavailable, with what
// to do about it.
Status check_fuse_device();

}  // namespace nrx::tools
