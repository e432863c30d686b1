// The FUSE operations of `nrx fs mount` over NR-FS (see internal/fuse_ops.h): the data path.
#include "tools/nrx/internal/fuse_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <span>
#include <string_view>
#include <utility>

namespace nrx::tools::detail {
namespace {

constexpr uint64_t kBlockBytes = 4096;      // NR-FS frames: statfs block size, st_blksize
constexpr uint64_t kStatBlockBytes = 512;   // st_blocks counts 512-byte units (POSIX)
constexpr uint32_t kPermissionBits = 07777;

std::atomic<uint64_t> g_next_pool_id{1};

// One thread's handle on one pool; gives the handle back when the thread exits.
struct Lease {
  Lease(std::shared_ptr<HandlePool> p, fs::Handle h) : pool(std::move(p)), handle(h) {}
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { pool->release(handle); }

  std::shared_ptr<HandlePool> pool;  // owned: the pool outlives every thread that used it
  fs::Handle handle;
};

// Usually one entry (one mount per process); unique_ptr keeps the handles' addresses stable.
thread_local std::vector<std::unique_ptr<Lease>> t_leases;

FuseContext& context() { return *static_cast<FuseContext*>(fuse_get_context()->private_data); }

int neg_errno(const Status& status) { return -fs::to_errno(status); }

// Runs |body(nrfs, handle, ctx)| with the calling worker's handle; -errno if there is none.
template <typename Body>
int with_handle(Body&& body) {
  FuseContext& ctx = context();
  Result<fs::Handle*> h = thread_handle(ctx.handles);
  if (!h.ok()) return neg_errno(h.status());
  return body(ctx.handles->nrfs(), **h, ctx);
}

// The inode an operation is about: the open file's (fh) when there is one, else |path|'s.
Result<fs::Ino> target_ino(fs::FileSystem<>& nrfs, fs::Handle& h, const char* path, const fuse_file_info* fi) {
  if (fi != nullptr) return fs::Ino{fi->fh};
  return nrfs.lookup(h, path);
}

timespec to_timespec(int64_t ns) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1'000'000'000;
    ts.tv_sec -= 1;
  }
  return ts;
}

int64_t to_ns(const timespec& ts) { return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec; }

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return to_ns(ts);
}

mode_t type_bits(fs::FileType type) { return type == fs::FileType::kDir ? S_IFDIR : S_IFREG; }

void fill_stat(const fs::Stat& s, const FuseContext& ctx, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_ino = s.ino;
  st->st_mode = type_bits(s.type) | (s.mode & kPermissionBits);
  st->st_nlink = s.nlink;
  st->st_uid = ctx.uid;
  st->st_gid = ctx.gid;
  st->st_size = static_cast<off_t>(s.size);
  st->st_blksize = kBlockBytes;
  st->st_blocks = static_cast<blkcnt_t>(s.blocks * (kBlockBytes / kStatBlockBytes));
  st->st_atim = to_timespec(s.atime_ns);
  st->st_mtim = to_timespec(s.mtime_ns);
  st->st_ctim = to_timespec(s.ctime_ns);
}

// open(2) flags as NR-FS open() flags. O_TRUNC counts only when writing: NR-FS refuses kTruncate
// without kWrite, and O_RDONLY|O_TRUNC is unspecified by POSIX.
uint32_t open_flags(int flags) {
  uint32_t out = 0;
  const int access = flags & O_ACCMODE;
  if (access == O_WRONLY || access == O_RDWR) out |= fs::kWrite;
  if (flags & O_CREAT) out |= fs::kCreate;
  if ((flags & O_CREAT) && (flags & O_EXCL)) out |= fs::kExclusive;
  if ((flags & O_TRUNC) && (out & fs::kWrite)) out |= fs::kTruncate;
  if (flags & O_DIRECTORY) out |= fs::kDirectory;
  return out;
}

void* op_init(fuse_conn_info* /*conn*/, fuse_config* cfg) {
  FuseContext& ctx = context();
  cfg->use_ino = 1;  // st_ino is NR-FS's inode number
  if (ctx.uncached) {
    cfg->entry_timeout = 0;
    cfg->attr_timeout = 0;
    cfg->negative_timeout = 0;
  }
  return &ctx;  // init's result becomes private_data: keep the context
}

int op_getattr(const char* path, struct stat* st, fuse_file_info* fi) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext& ctx) {
    Result<fs::Stat> s = fi != nullptr ? nrfs.fstat(h, fi->fh) : nrfs.stat(h, path);
    if (!s.ok()) return neg_errno(s.status());
    fill_stat(*s, ctx, st);
    return 0;
  });
}

int op_readdir(const char* path, void* buf, fuse_fill_dir_t filler, off_t /*offset*/, fuse_file_info* /*fi*/,
               fuse_readdir_flags /*flags*/) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<std::vector<fs::DirEntry>> entries = nrfs.readdir(h, path);
    if (!entries.ok()) return neg_errno(entries.status());
    // Offset 0 for every entry: libfuse collects the whole listing and pages it to the kernel.
    struct stat st{};
    st.st_mode = S_IFDIR;
    filler(buf, ".", &st, 0, static_cast<fuse_fill_dir_flags>(0));
    filler(buf, "..", &st, 0, static_cast<fuse_fill_dir_flags>(0));
    for (const fs::DirEntry& e : *entries) {
      st.st_ino = e.ino;
      st.st_mode = type_bits(e.type);
      if (filler(buf, e.name.c_str(), &st, 0, static_cast<fuse_fill_dir_flags>(0)) != 0) return -ENOMEM;
    }
    return 0;
  });
}

int op_mkdir(const char* path, mode_t mode) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    return neg_errno(nrfs.mkdir(h, path, mode & kPermissionBits));
  });
}

int op_rmdir(const char* path) {
  return with_handle(
      [&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) { return neg_errno(nrfs.rmdir(h, path)); });
}

int op_unlink(const char* path) {
  return with_handle(
      [&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) { return neg_errno(nrfs.unlink(h, path)); });
}

int op_rename(const char* from, const char* to, unsigned int flags) {
  // RENAME_NOREPLACE and RENAME_EXCHANGE have no NR-FS operation; refusing them beats a racy
  // emulation (EINVAL is what Linux answers for flags a file system does not support).
  if (flags != 0) return -EINVAL;
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    return neg_errno(nrfs.rename(h, from, to));
  });
}

int op_open_common(const char* path, uint32_t flags, mode_t mode, fuse_file_info* fi) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<fs::Ino> ino = nrfs.open(h, path, flags, mode & kPermissionBits);
    if (!ino.ok()) return neg_errno(ino.status());
    fi->fh = *ino;
    return 0;
  });
}

int op_create(const char* path, mode_t mode, fuse_file_info* fi) {
  return op_open_common(path, open_flags(fi->flags) | fs::kCreate, mode, fi);
}

int op_open(const char* path, fuse_file_info* fi) { return op_open_common(path, open_flags(fi->flags), 0644, fi); }

int op_read(const char* path, char* buf, size_t size, off_t offset, fuse_file_info* fi) {
  if (offset < 0) return -EINVAL;
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<fs::Ino> ino = target_ino(nrfs, h, path, fi);
    if (!ino.ok()) return neg_errno(ino.status());
    size_t done = 0;
    while (done < size) {
      const size_t piece = std::min(size - done, fs::kMaxIo);
      Result<size_t> n = nrfs.pread(h, *ino, std::as_writable_bytes(std::span(buf + done, piece)),
                                    static_cast<uint64_t>(offset) + done);
      if (!n.ok()) return done > 0 ? static_cast<int>(done) : neg_errno(n.status());
      done += *n;
      if (*n < piece) break;  // end of file
    }
    return static_cast<int>(done);
  });
}

int op_write(const char* path, const char* buf, size_t size, off_t offset, fuse_file_info* fi) {
  if (offset < 0) return -EINVAL;
  if (size == 0) return 0;  // NR-FS refuses empty writes; POSIX makes them a no-op
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<fs::Ino> ino = target_ino(nrfs, h, path, fi);
    if (!ino.ok()) return neg_errno(ino.status());
    size_t done = 0;
    while (done < size) {
      const size_t piece = std::min(size - done, fs::kMaxIo);
      Result<size_t> n = nrfs.pwrite(h, *ino, std::as_bytes(std::span(buf + done, piece)),
                                     static_cast<uint64_t>(offset) + done);
      // A short count tells the writer how far it got (ENOSPC on a later piece).
      if (!n.ok()) return done > 0 ? static_cast<int>(done) : neg_errno(n.status());
      if (*n == 0) break;
      done += *n;
    }
    return static_cast<int>(done);
  });
}

int op_truncate(const char* path, off_t size, fuse_file_info* fi) {
  if (size < 0) return -EINVAL;
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<fs::Ino> ino = target_ino(nrfs, h, path, fi);
    if (!ino.ok()) return neg_errno(ino.status());
    return neg_errno(nrfs.truncate(h, *ino, static_cast<uint64_t>(size)));
  });
}

int op_release(const char* /*path*/, fuse_file_info* fi) {
  return with_handle(
      [&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) { return neg_errno(nrfs.close(h, fi->fh)); });
}

// Nothing is buffered here: close(2) has nothing to report beyond the file still existing.
int op_flush(const char* /*path*/, fuse_file_info* /*fi*/) { return 0; }

int op_fsync(const char* /*path*/, int /*datasync*/, fuse_file_info* fi) {
  return with_handle(
      [&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) { return neg_errno(nrfs.fsync(h, fi->fh)); });
}

// Programs fsync a directory after creating files in it (SQLite does): make sure it exists.
int op_fsyncdir(const char* path, int /*datasync*/, fuse_file_info* /*fi*/) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<fs::Ino> ino = nrfs.lookup(h, path);
    return ino.ok() ? 0 : neg_errno(ino.status());
  });
}

int op_chmod(const char* path, mode_t mode, fuse_file_info* fi) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<fs::Ino> ino = target_ino(nrfs, h, path, fi);
    if (!ino.ok()) return neg_errno(ino.status());
    return neg_errno(nrfs.chmod(h, *ino, mode & kPermissionBits));
  });
}

// NR-FS has no owners: every file belongs to the user who mounted. chown to that owner (what
// `tar -x` and `cp -p` do when they run as that user) succeeds; any other owner is EPERM.
int op_chown(const char* path, uid_t uid, gid_t gid, fuse_file_info* fi) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext& ctx) {
    Result<fs::Ino> ino = target_ino(nrfs, h, path, fi);
    if (!ino.ok()) return neg_errno(ino.status());
    const bool uid_ok = uid == static_cast<uid_t>(-1) || uid == ctx.uid;
    const bool gid_ok = gid == static_cast<gid_t>(-1) || gid == ctx.gid;
    return uid_ok && gid_ok ? 0 : -EPERM;
  });
}

int op_utimens(const char* path, const timespec tv[2], fuse_file_info* fi) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    Result<fs::Ino> ino = target_ino(nrfs, h, path, fi);
    if (!ino.ok()) return neg_errno(ino.status());
    const bool omit_any = tv != nullptr && (tv[0].tv_nsec == UTIME_OMIT || tv[1].tv_nsec == UTIME_OMIT);
    fs::Stat old;
    if (omit_any) {
      Result<fs::Stat> s = nrfs.fstat(h, *ino);
      if (!s.ok()) return neg_errno(s.status());
      old = *s;
    }
    const int64_t now = now_ns();
    auto pick = [&](int i, int64_t current) {
      if (tv == nullptr || tv[i].tv_nsec == UTIME_NOW) return now;
      if (tv[i].tv_nsec == UTIME_OMIT) return current;
      return to_ns(tv[i]);
    };
    return neg_errno(nrfs.utimens(h, *ino, pick(0, old.atime_ns), pick(1, old.mtime_ns)));
  });
}

int op_statfs(const char* /*path*/, struct statvfs* sv) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext&) {
    const fs::FsStats s = nrfs.stats(h);
    std::memset(sv, 0, sizeof *sv);
    sv->f_bsize = kBlockBytes;
    sv->f_frsize = kBlockBytes;
    sv->f_blocks = s.capacity_bytes / kBlockBytes;
    sv->f_bfree = s.free_bytes / kBlockBytes;
    sv->f_bavail = sv->f_bfree;
    // No inode table limit: an inode costs no frame until it holds data. Report the files there
    // are plus one more per free frame, so `df -i` shows a sensible figure.
    sv->f_ffree = sv->f_bfree;
    sv->f_favail = sv->f_bfree;
    sv->f_files = s.inodes + sv->f_ffree;
    sv->f_namemax = fs::kNameMax;
    return 0;
  });
}

// access(2) against the permission bits, with the mounting user as every file's owner; root may
// read and write anything and execute what has an x bit (or is a directory), as in Linux.
int op_access(const char* path, int mask) {
  return with_handle([&](fs::FileSystem<>& nrfs, fs::Handle& h, const FuseContext& ctx) {
    Result<fs::Stat> s = nrfs.stat(h, path);
    if (!s.ok()) return neg_errno(s.status());
    if (mask == F_OK) return 0;
    const fuse_context* caller = fuse_get_context();
    const uint32_t mode = s->mode & 0777;
    uint32_t allowed = 0;  // rwx as 4/2/1
    if (caller->uid == 0) {
      allowed = 6 | ((s->type == fs::FileType::kDir || (mode & 0111) != 0) ? 1 : 0);
    } else if (caller->uid == ctx.uid) {
      allowed = (mode >> 6) & 7;
    } else if (caller->gid == ctx.gid) {
      allowed = (mode >> 3) & 7;
    } else {
      allowed = mode & 7;
    }
    const uint32_t wanted = ((mask & R_OK) ? 4 : 0) | ((mask & W_OK) ? 2 : 0) | ((mask & X_OK) ? 1 : 0);
    return (wanted & ~allowed) == 0 ? 0 : -EACCES;
  });
}

}  // namespace

HandlePool::HandlePool(fs::FileSystem<>& nrfs)
    // relaxed: the id only has to be unique, it orders nothing.
    : nrfs_(nrfs), id_(g_next_pool_id.fetch_add(1, std::memory_order_relaxed)), attached_(nrfs.replicas(), 0) {}

Result<fs::Handle> HandlePool::acquire() {
  MutexLock lock(mu_);
  if (!free_.empty()) {
    fs::Handle h = free_.back();
    free_.pop_back();
    return h;
  }
  const uint32_t replica = next_replica_;
  NRX_ASSIGN_OR_RETURN(fs::Handle h, nrfs_.attach(replica));
  next_replica_ = (replica + 1) % nrfs_.replicas();
  ++attached_[replica];
  return h;
}

void HandlePool::release(const fs::Handle& handle) {
  MutexLock lock(mu_);
  free_.push_back(handle);
}

std::vector<uint32_t> HandlePool::attached_per_replica() const {
  MutexLock lock(mu_);
  return attached_;
}

Result<fs::Handle*> thread_handle(const std::shared_ptr<HandlePool>& pool) {
  for (const std::unique_ptr<Lease>& lease : t_leases) {
    if (lease->pool->id() == pool->id()) return &lease->handle;
  }
  NRX_ASSIGN_OR_RETURN(fs::Handle h, pool->acquire());
  t_leases.push_back(std::make_unique<Lease>(pool, h));
  return &t_leases.back()->handle;
}

fuse_operations fuse_operations_for_nrfs() {
  fuse_operations ops{};
  ops.init = op_init;
  ops.getattr = op_getattr;
  ops.readdir = op_readdir;
  ops.mkdir = op_mkdir;
  ops.rmdir = op_rmdir;
  ops.unlink = op_unlink;
  ops.rename = op_rename;
  ops.create = op_create;
  ops.open = op_open;
  ops.read = op_read;
  ops.write = op_write;
  ops.truncate = op_truncate;
  ops.release = op_release;
  ops.flush = op_flush;
  ops.fsync = op_fsync;
  ops.fsyncdir = op_fsyncdir;
  ops.chmod = op_chmod;
  ops.chown = op_chown;
  ops.utimens = op_utimens;
  ops.statfs = op_statfs;
  ops.access = op_access;
  return ops;
}

}  // namespace nrx::tools::detail
