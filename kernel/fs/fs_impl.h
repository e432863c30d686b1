// FileSystem<L>'s definitions (see fs.h), in a header so that a log backend other than the ring
// (e.g. `nrx sweep`'s latency-decorated ring) can instantiate it: include this header in one .cc
// and write `template class nrx::fs::FileSystem<MyLog>;`. kernel/fs/fs.cc does it for RingLog.
#pragma once

#include "kernel/fs/fs.h"

#include <chrono>

#include "kernel/fs/fs_state.h"
#include "kernel/fs/path.h"
#include "kernel/nr/cnr.h"

namespace nrx::fs {
namespace detail {

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A path from outside, normalised (errors: as split_path).
inline Result<std::string> normal_path(std::string_view path) {
  NRX_ASSIGN_OR_RETURN(auto parts, split_path(path));
  return join_path(parts);
}

// "." or ".." as the last component names no entry of its own: EINVAL for namespace changes.
inline Status check_last(std::string_view path) {
  std::string_view last = last_raw_component(path);
  if (last == "." || last == "..") return fs_error(EINVAL, "a path ending in '.' or '..' names no entry");
  return Status();
}

}  // namespace detail

template <typename L>
struct FileSystem<L>::Impl {
  using Group = nr::CnrGroup<FsState, FsLogMapper, L>;
  using Replica = typename Group::Replica;

  Impl(mem::Memory& m, const FsOptions& o) : memory(m), options(o) {}

  mem::Memory& memory;
  FsOptions options;
  std::unique_ptr<mem::DeterministicAllocator> det;  // before group: replicas point at it
  std::vector<logs::Log*> log_ptrs;
  std::unique_ptr<Group> group;
  std::vector<std::unique_ptr<Replica>> replicas;

  Result<std::pair<Replica*, nr::ThreadToken>> enter(const Handle& h) {
    if (h.owner != this || h.replica >= replicas.size()) return fs_error(EINVAL, "handle of another file system");
    Replica* r = replicas[h.replica].get();
    return std::make_pair(r, nr::ThreadToken{h.tid, r});
  }

  // A write whose data goes into the payload table of the op's log first (DESIGN 3.3).
  Result<FsState::Response> write(const Handle& h, FsState::WriteOp op, std::span<const std::byte> data) {
    NRX_ASSIGN_OR_RETURN(auto rt, enter(h));
    logs::Log* log = nullptr;
    if (!data.empty()) {
      log = log_ptrs[group->mapper()(op, group->log_count())];
      NRX_ASSIGN_OR_RETURN(op.data, log->payload_put(data));
    }
    auto r = rt.first->execute_mut(op, rt.second);
    if (!r.ok()) {  // never logged: release for every replica, as they would have
      if (log != nullptr) {
        for (auto& rep : replicas) (void)log->payload_release(rep->id(), op.data);
      }
      return r.status();
    }
    NRX_RETURN_IF_ERROR(r->status);
    return std::move(*r);
  }

  // A namespace scan-update with its path(s) in a payload of log 0.
  Result<FsState::Response> scan(const Handle& h, FsState::ScanOp op, std::string_view a, std::string_view b = {}) {
    NRX_ASSIGN_OR_RETURN(auto rt, enter(h));
    std::string names;
    names.reserve(a.size() + b.size());
    names.append(a).append(b);
    op.len_a = static_cast<uint32_t>(a.size());
    op.len_b = static_cast<uint32_t>(b.size());
    op.now_ns = detail::now_ns();
    logs::Log* log = log_ptrs[0];
    NRX_ASSIGN_OR_RETURN(op.names, log->payload_put(std::as_bytes(std::span(names))));
    auto r = rt.first->execute_scan_mut(op, rt.second);
    if (!r.ok()) {
      for (auto& rep : replicas) (void)log->payload_release(rep->id(), op.names);
      return r.status();
    }
    NRX_RETURN_IF_ERROR(r->status);
    return std::move(*r);
  }

  Result<FsState::Response> read(const Handle& h, const FsState::ReadOp& op) {
    NRX_ASSIGN_OR_RETURN(auto rt, enter(h));
    FsState::Response r = rt.first->execute(op, rt.second);
    NRX_RETURN_IF_ERROR(r.status);
    return r;
  }
};

template <typename L>
Result<std::unique_ptr<FileSystem<L>>> FileSystem<L>::create(mem::Memory& memory, const FsOptions& options) {
  if constexpr (requires(const logs::LogOptions& o) { L::create(o); }) {
    return create_with(memory, options, [](const logs::LogOptions& o) { return L::create(o); });
  } else {
    // A backend whose logs need more than LogOptions (shm: a region) is built with create_with.
    return fs_error(EINVAL, "this log backend needs create_with (its logs need a region)");
  }
}

template <typename L>
template <typename CreateLog>
Result<std::unique_ptr<FileSystem<L>>> FileSystem<L>::create_with(mem::Memory& memory, const FsOptions& options,
                                                                  CreateLog&& create_log,
                                                                  std::unique_ptr<nr::ScanOrder> scan_order) {
  if (options.replica_pools.empty() || options.replica_pools.size() > 64) {
    return fs_error(EINVAL, "NR-FS needs 1..64 replicas");
  }
  for (uint32_t p : options.replica_pools) {
    if (p >= memory.pool_count()) return fs_error(EINVAL, "pool " + std::to_string(p) + " does not exist");
  }
  if (options.log_slots < 2 || (options.log_slots & (options.log_slots - 1)) != 0) {
    return fs_error(EINVAL, "log_slots must be a power of two >= 2");
  }
  auto impl = std::make_unique<Impl>(memory, options);
  impl->det = std::make_unique<mem::DeterministicAllocator>(memory, options.replica_pools);
  logs::LogOptions log{.entry_size = 64, .slot_count = options.log_slots};
  log.max_replicas = std::max<uint32_t>({logs::kMinMaxReplicas, static_cast<uint32_t>(options.replica_pools.size()),
                                         options.max_replicas});
  // Every entry holds at most one payload: with twice as many payload slots as log slots, a full
  // payload table cannot happen before a full log, whose lagging-replica hook moves things on.
  log.payload_slots = 2 * options.log_slots;
  NRX_ASSIGN_OR_RETURN(impl->group, Impl::Group::create(options.logs, log, std::forward<CreateLog>(create_log),
                                                        FsLogMapper{}, std::move(scan_order)));
  for (uint32_t i = 0; i < impl->group->log_count(); ++i) impl->log_ptrs.push_back(&impl->group->log(i));
  for (uint32_t s = 0; s < options.replica_pools.size(); ++s) {
    NRX_ASSIGN_OR_RETURN(auto r, impl->group->make_replica(nr::ReplicaOptions{options.max_threads_per_replica}, memory,
                                                           impl->det.get(), s, &impl->log_ptrs));
    impl->replicas.push_back(std::move(r));
  }
  return std::unique_ptr<FileSystem>(new FileSystem(std::move(impl)));
}

template <typename L>
FileSystem<L>::FileSystem(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

template <typename L>
FileSystem<L>::~FileSystem() = default;

template <typename L>
uint32_t FileSystem<L>::replicas() const {
  return static_cast<uint32_t>(impl_->replicas.size());
}

template <typename L>
uint32_t FileSystem<L>::logs() const {
  return impl_->group->log_count();
}

template <typename L>
L& FileSystem<L>::log(uint32_t i) const {
  return impl_->group->log(i);
}

template <typename L>
std::pair<uint64_t, uint64_t> FileSystem<L>::log_position(uint32_t i) const {
  L& log = impl_->group->log(i);
  const uint64_t tail = log.tail();
  uint64_t low = tail;
  for (const auto& r : impl_->replicas) {
    Result<logs::LogIndex> lt = log.ltail(r->id());
    if (lt.ok()) low = std::min<uint64_t>(low, *lt);
  }
  return {tail, low};
}

template <typename L>
Result<Handle> FileSystem<L>::attach(uint32_t replica) {
  if (replica >= impl_->replicas.size()) return fs_error(EINVAL, "replica " + std::to_string(replica) + " does not exist");
  auto token = impl_->replicas[replica]->register_thread();
  if (!token.ok()) return fs_error(ENOSPC, "too many threads on replica " + std::to_string(replica));
  return Handle{replica, token->tid, impl_.get()};
}

template <typename L>
Result<Ino> FileSystem<L>::open(Handle& h, std::string_view path, uint32_t flags, uint32_t mode) {
  if ((flags & ~kOpenFlags) != 0) return fs_error(EINVAL, "unknown open flags");
  if ((mode & ~07777u) != 0) return fs_error(EINVAL, "mode has bits beyond 07777");
  if ((flags & kTruncate) != 0 && (flags & kWrite) == 0) return fs_error(EINVAL, "truncate needs write access");
  NRX_ASSIGN_OR_RETURN(std::string p, detail::normal_path(path));
  Ino ino = 0;
  FileType type = FileType::kFile;
  if ((flags & kCreate) != 0) {
    FsState::ScanOp op{.kind = FsState::ScanOp::kCreateFile, .exclusive = (flags & kExclusive) != 0, .mode = mode};
    NRX_ASSIGN_OR_RETURN(auto r, impl_->scan(h, op, p));
    ino = r.ino;
    type = r.stat.type;
  } else {
    NRX_ASSIGN_OR_RETURN(auto r, impl_->read(h, {.kind = FsState::ReadOp::kLookup, .path = p}));
    ino = r.ino;
    type = r.stat.type;
  }
  if (type == FileType::kDir && (flags & (kWrite | kTruncate)) != 0) return fs_error(EISDIR, "is a directory");
  if (type != FileType::kDir && (flags & kDirectory) != 0) return fs_error(ENOTDIR, "not a directory");
  if ((flags & kTruncate) != 0) NRX_RETURN_IF_ERROR(truncate(h, ino, 0));
  return ino;
}

template <typename L>
Status FileSystem<L>::close(Handle& h, Ino ino) {
  return fstat(h, ino).status();
}

template <typename L>
Result<size_t> FileSystem<L>::pread(Handle& h, Ino ino, std::span<std::byte> out, uint64_t offset) {
  if (out.empty()) {
    NRX_RETURN_IF_ERROR(fstat(h, ino).status());
    return size_t{0};
  }
  NRX_ASSIGN_OR_RETURN(auto r, impl_->read(h, {.kind = FsState::ReadOp::kRead, .ino = ino, .out = out, .offset = offset}));
  return static_cast<size_t>(r.count);
}

template <typename L>
Result<size_t> FileSystem<L>::pwrite(Handle& h, Ino ino, std::span<const std::byte> data, uint64_t offset) {
  if (data.empty()) return fs_error(EINVAL, "empty write");
  if (data.size() > kMaxIo) data = data.first(kMaxIo);
  FsState::WriteOp op{.kind = FsState::WriteOp::kPwrite, .ino = ino, .offset = offset, .mtime_ns = detail::now_ns()};
  NRX_ASSIGN_OR_RETURN(auto r, impl_->write(h, op, data));
  return static_cast<size_t>(r.count);
}

template <typename L>
Status FileSystem<L>::truncate(Handle& h, Ino ino, uint64_t size) {
  FsState::WriteOp op{.kind = FsState::WriteOp::kSetSize, .ino = ino, .offset = size, .mtime_ns = detail::now_ns()};
  return impl_->write(h, op, {}).status();
}

template <typename L>
Status FileSystem<L>::fsync(Handle& h, Ino ino) {
  NRX_RETURN_IF_ERROR(fstat(h, ino).status());
  NRX_ASSIGN_OR_RETURN(auto rt, impl_->enter(h));
  rt.first->sync();
  return Status();
}

template <typename L>
Status FileSystem<L>::chmod(Handle& h, Ino ino, uint32_t mode) {
  if ((mode & ~07777u) != 0) return fs_error(EINVAL, "mode has bits beyond 07777");
  FsState::WriteOp op{.kind = FsState::WriteOp::kChmod, .mode = mode, .ino = ino, .mtime_ns = detail::now_ns()};
  return impl_->write(h, op, {}).status();
}

template <typename L>
Status FileSystem<L>::utimens(Handle& h, Ino ino, int64_t atime_ns, int64_t mtime_ns) {
  FsState::WriteOp op{.kind = FsState::WriteOp::kSetTimes, .ino = ino, .atime_ns = atime_ns, .mtime_ns = mtime_ns};
  return impl_->write(h, op, {}).status();
}

template <typename L>
Status FileSystem<L>::mkdir(Handle& h, std::string_view path, uint32_t mode) {
  if ((mode & ~07777u) != 0) return fs_error(EINVAL, "mode has bits beyond 07777");
  NRX_RETURN_IF_ERROR(detail::check_last(path));
  NRX_ASSIGN_OR_RETURN(std::string p, detail::normal_path(path));
  return impl_->scan(h, {.kind = FsState::ScanOp::kMkdir, .mode = mode}, p).status();
}

template <typename L>
Status FileSystem<L>::rmdir(Handle& h, std::string_view path) {
  NRX_RETURN_IF_ERROR(detail::check_last(path));
  NRX_ASSIGN_OR_RETURN(std::string p, detail::normal_path(path));
  return impl_->scan(h, {.kind = FsState::ScanOp::kRmdir}, p).status();
}

template <typename L>
Status FileSystem<L>::unlink(Handle& h, std::string_view path) {
  NRX_RETURN_IF_ERROR(detail::check_last(path));
  NRX_ASSIGN_OR_RETURN(std::string p, detail::normal_path(path));
  return impl_->scan(h, {.kind = FsState::ScanOp::kUnlink}, p).status();
}

template <typename L>
Status FileSystem<L>::rename(Handle& h, std::string_view from, std::string_view to) {
  NRX_RETURN_IF_ERROR(detail::check_last(from));
  NRX_RETURN_IF_ERROR(detail::check_last(to));
  NRX_ASSIGN_OR_RETURN(std::string a, detail::normal_path(from));
  NRX_ASSIGN_OR_RETURN(std::string b, detail::normal_path(to));
  return impl_->scan(h, {.kind = FsState::ScanOp::kRename}, a, b).status();
}

template <typename L>
Result<Ino> FileSystem<L>::lookup(Handle& h, std::string_view path) {
  NRX_ASSIGN_OR_RETURN(std::string p, detail::normal_path(path));
  NRX_ASSIGN_OR_RETURN(auto r, impl_->read(h, {.kind = FsState::ReadOp::kLookup, .path = p}));
  return r.ino;
}

template <typename L>
Result<Stat> FileSystem<L>::stat(Handle& h, std::string_view path) {
  NRX_ASSIGN_OR_RETURN(Ino ino, lookup(h, path));
  auto s = fstat(h, ino);
  if (!s.ok() && s.status().posix_errno() == EBADF) return fs_error(ENOENT, "removed while being looked up");
  return s;
}

template <typename L>
Result<Stat> FileSystem<L>::fstat(Handle& h, Ino ino) {
  NRX_ASSIGN_OR_RETURN(auto r, impl_->read(h, {.kind = FsState::ReadOp::kStat, .ino = ino}));
  return r.stat;
}

template <typename L>
Result<std::vector<DirEntry>> FileSystem<L>::readdir(Handle& h, std::string_view path) {
  NRX_ASSIGN_OR_RETURN(Ino ino, lookup(h, path));
  auto r = impl_->read(h, {.kind = FsState::ReadOp::kReadDir, .ino = ino});
  if (!r.ok() && r.status().posix_errno() == EBADF) return fs_error(ENOENT, "removed while being looked up");
  if (!r.ok()) return r.status();
  return std::move(r->entries);
}

template <typename L>
void FileSystem<L>::advance(uint32_t replica) {
  if (replica >= impl_->replicas.size()) return;
  impl_->replicas[replica]->recover_orphan();  // a scan whose issuer (another process) died
  for (uint32_t li = 0; li < impl_->group->log_count(); ++li) {
    impl_->replicas[replica]->nudge(li);
    // A shared log fences replicas whose heartbeat stops (logs/shm): advancing is their owner's
    // sign of life (an idle kernel core advances every tick, well inside the lease).
    if constexpr (requires(L& log) { log.heartbeat(); }) (void)impl_->group->log(li).heartbeat();
  }
}

template <typename L>
uint64_t FileSystem<L>::digest(Handle& h) {
  auto rt = impl_->enter(h);
  if (!rt.ok()) return 0;
  rt->first->sync();
  return rt->first->inspect([](const FsState& s) { return s.digest(); });
}

template <typename L>
FsStats FileSystem<L>::stats(Handle& h) {
  FsStats s;
  const uint32_t pool = impl_->options.replica_pools[h.replica < impl_->replicas.size() ? h.replica : 0];
  s.capacity_bytes = impl_->memory.ncache(pool).capacity_bytes();
  s.free_bytes = impl_->memory.ncache(pool).stats().free_bytes();
  auto rt = impl_->enter(h);
  if (rt.ok()) s.inodes = rt->first->inspect([](const FsState& st) { return st.inode_count(); });
  for (logs::Log* log : impl_->log_ptrs) s.payloads_live += log->payloads_live();
  return s;
}

}  // namespace nrx::fs
