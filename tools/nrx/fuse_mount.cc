// FuseMount: checks, mount, event loop and unmount (the control path; operations in fuse_ops.cc).
#include "tools/nrx/fuse_mount.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "base/mutex.h"
#include "tools/nrx/internal/fuse_ops.h"

namespace nrx::tools {
namespace {

// libfuse reports through fuse_log(). While mount() runs, its messages are collected so that the
// Status carries libfuse's reason (one clear line instead of libfuse's own); at other times they
// go to stderr, prefixed.
Mutex g_log_mu;
bool g_log_capturing NRX_GUARDED_BY(g_log_mu) = false;
std::string g_log_captured NRX_GUARDED_BY(g_log_mu);

void log_message(fuse_log_level level, const char* fmt, va_list ap) {
  if (level == FUSE_LOG_DEBUG) return;
  char line[512];
  std::vsnprintf(line, sizeof line, fmt, ap);
  size_t n = std::strlen(line);
  while (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
  MutexLock lock(g_log_mu);
  if (g_log_capturing) {
    g_log_captured += (g_log_captured.empty() ? "" : "; ") + std::string(line);
  } else {
    std::fprintf(stderr, "nrx fs: libfuse: %s\n", line);
  }
}

// Collects libfuse's messages for the lifetime of the object.
class LogCapture {
 public:
  LogCapture() {
    fuse_set_log_func(log_message);
    MutexLock lock(g_log_mu);
    g_log_capturing = true;
    g_log_captured.clear();
  }
  ~LogCapture() {
    MutexLock lock(g_log_mu);
    g_log_capturing = false;
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // What libfuse said, or |fallback| when it said nothing.
  std::string text(const std::string& fallback) const {
    MutexLock lock(g_log_mu);
    return g_log_captured.empty() ? fallback : g_log_captured;
  }
};

bool is_ending_signal(int rc) { return rc == SIGINT || rc == SIGTERM || rc == SIGHUP; }

}  // namespace

Status check_fuse_device() {
  const int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) {
      return Status::unavailable(
          "/dev/fuse is missing: load the fuse module (modprobe fuse), or give the container the device "
          "(docker run --device /dev/fuse --cap-add SYS_ADMIN)");
    }
    return Status::unavailable(std::string("cannot open /dev/fuse: ") + std::strerror(e));
  }
  close(fd);
  return ok_status();
}

Result<std::string> check_mount_dir(const std::string& dir) {
  if (dir.empty()) return Status::invalid_argument("the mount directory is empty ('')");
  char* real = realpath(dir.c_str(), nullptr);
  if (real == nullptr) {
    const int e = errno;
    if (e == ENOENT) return Status::invalid_argument("directory '" + dir + "' does not exist");
    return Status::invalid_argument("cannot resolve '" + dir + "': " + std::strerror(e));
  }
  std::string abs(real);
  std::free(real);
  struct stat st{};
  if (stat(abs.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status::invalid_argument("'" + dir + "' is not a directory");
  }
  DIR* d = opendir(abs.c_str());
  if (d == nullptr) return Status::invalid_argument("cannot read directory '" + dir + "': " + std::strerror(errno));
  bool empty = true;
  while (const dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  closedir(d);
  if (!empty) return Status::invalid_argument("directory '" + dir + "' is not empty (NR-FS mounts on an empty one)");
  return abs;
}

FuseMount::FuseMount(std::string dir, std::unique_ptr<detail::FuseContext> ctx)
    : dir_(std::move(dir)), ctx_(std::move(ctx)) {}

FuseMount::~FuseMount() {
  if (fuse_ != nullptr) {
    // A no-op when the mount is already gone (fusermount3 -u ended the loop).
    if (mounted_) fuse_unmount(fuse_);
    fuse_destroy(fuse_);
  }
}

std::vector<uint32_t> FuseMount::worker_handles() const { return ctx_->handles->attached_per_replica(); }

Result<std::unique_ptr<FuseMount>> FuseMount::mount(fs::FileSystem<>& nrfs, const FuseOptions& options) {
  NRX_RETURN_IF_ERROR(check_fuse_device());
  NRX_ASSIGN_OR_RETURN(std::string dir, check_mount_dir(options.dir));

  auto ctx = std::make_unique<detail::FuseContext>();
  ctx->handles = std::make_shared<detail::HandlePool>(nrfs);
  ctx->uid = getuid();
  ctx->gid = getgid();
  ctx->uncached = options.uncached;
  std::unique_ptr<FuseMount> m(new FuseMount(std::move(dir), std::move(ctx)));

  LogCapture capture;
  // fsname and subtype name the mount in /proc/mounts: "nrfs on DIR type fuse.nrfs".
  fuse_args args = FUSE_ARGS_INIT(0, nullptr);
  for (const char* arg : {"nrx", "-o", "fsname=nrfs,subtype=nrfs"}) {
    if (fuse_opt_add_arg(&args, arg) != 0) {
      fuse_opt_free_args(&args);
      return Status::resource_exhausted("out of memory building libfuse's arguments");
    }
  }
  const fuse_operations ops = detail::fuse_operations_for_nrfs();
  m->fuse_ = fuse_new(&args, &ops, sizeof ops, m->ctx_.get());
  fuse_opt_free_args(&args);
  if (m->fuse_ == nullptr) return Status::internal("libfuse refused its set-up: " + capture.text("no reason given"));
  if (fuse_mount(m->fuse_, m->dir_.c_str()) != 0) {
    return Status::unavailable("cannot mount on " + m->dir_ + ": " +
                               capture.text("the kernel refused the mount (no permission to mount FUSE here?)"));
  }
  m->mounted_ = true;
  return m;
}

Status FuseMount::serve() {
  fuse_session* se = fuse_get_session(fuse_);
  if (fuse_set_signal_handlers(se) != 0) return Status::internal("cannot install the SIGINT/SIGTERM handlers");
  // The loop's threads start from this one and inherit its mask: all of them may take the signal.
  sigset_t ending;
  sigemptyset(&ending);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&ending, sig);
  sigset_t old;
  pthread_sigmask(SIG_UNBLOCK, &ending, &old);
  // clone_fd 0: one /dev/fuse descriptor shared by the workers (what FUSE_USE_VERSION 31 offers).
  const int rc = fuse_loop_mt(fuse_, /*clone_fd=*/0);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  fuse_remove_signal_handlers(se);
  // The loop returns 0 after an unmount, the signal's number after SIGINT/SIGTERM/SIGHUP.
  if (rc == 0 || is_ending_signal(rc)) return ok_status();
  return Status::internal(std::string("the FUSE loop failed: ") + std::strerror(rc < 0 ? -rc : rc));
}

}  // namespace nrx::tools
