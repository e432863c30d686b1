// The channel's server: set-up (creating and linking the file), one thread per slot serving
// requests through syscall::execute(), and tear-down. Protocol in channel.h and
// internal/channel_layout.h.
#include "kernel/syscall/channel.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "base/spin.h"
#include "kernel/syscall/internal/channel_layout.h"
#include "kernel/syscall/syscalls.h"

namespace nrx::syscall {

using detail::ChannelHeader;
using detail::SlotControl;
using detail::Transition;

namespace {

// Pauses a server thread spins after a request before it sleeps (the same client often sends the
// next one at once); short, because a 2-core machine has more threads than cores.
constexpr uint32_t kServerSpins = 2000;
// How long an idle server thread sleeps before it looks for slots held by dead clients.
constexpr std::chrono::seconds kIdleCheck{1};

// An OS error as a Status: transient or resource shortages kUnavailable, the rest kInternal.
Status os_error(int err, const std::string& what) {
  std::string message = what + ": " + std::strerror(err);
  switch (err) {
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EAGAIN:
    case EBUSY:
      return Status::unavailable(std::move(message)).with_errno(err);
    default:
      return Status::internal(std::move(message)).with_errno(err);
  }
}

// What is at |path| now: nothing (false), a stale channel or empty file to replace (true), or a
// file to leave alone. Errors: kAlreadyExists (a live server's channel, or a file that is not a
// channel at all).
Result<bool> check_existing(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    return os_error(errno, "cannot open existing " + path);
  }
  struct stat st{};
  ChannelHeader header;
  std::memset(&header, 0, sizeof header);
  const bool have_stat = fstat(fd, &st) == 0;
  const ssize_t n = have_stat ? pread(fd, &header, sizeof header, 0) : -1;
  close(fd);
  if (!have_stat) return os_error(errno, "cannot stat existing " + path);
  if (!S_ISREG(st.st_mode)) return Status::already_exists(path + " exists and is not a regular file");
  if (st.st_size == 0) return true;  // an empty file holds nothing to lose
  if (n < static_cast<ssize_t>(sizeof header.magic) || header.magic != detail::kChannelMagic) {
    return Status::already_exists(path + " exists and is not an nrx channel; remove it first");
  }
  // Ours (by its magic): refused while the process it names runs, even if the rest of the header
  // does not validate (another version's live server keeps its file).
  if (n == static_cast<ssize_t>(sizeof header) && header.server_pid > 0 &&
      detail::process_alive(header.server_pid, header.server_start_time)) {
    return Status::already_exists(path + " is served by a live server (pid " + std::to_string(header.server_pid) + ")");
  }
  // A channel whose server is gone (or a damaged one): stale, replaced.
  return true;
}

}  // namespace

struct ChannelServer::Impl {
  Impl(fs::FileSystem<>& filesystem, std::string channel_path, uint32_t slot_count)
      : fs(filesystem), path(std::move(channel_path)), slots(slot_count) {}
  ~Impl();

  ChannelHeader* header() const { return static_cast<ChannelHeader*>(base); }
  void run_slot(uint32_t i, fs::Handle h);
  void serve(uint32_t i, fs::Handle& h);
  void free_abandoned(uint32_t i);
  void reclaim_if_owner_dead(uint32_t i);

  fs::FileSystem<>& fs;
  const std::string path;
  const uint32_t slots;
  int fd = -1;
  void* base = nullptr;
  size_t size = 0;
  dev_t dev = 0;  // our file, so the destructor unlinks the path only while it is still ours
  ino_t ino = 0;
  bool linked = false;
  std::vector<std::thread> threads;
  std::atomic<uint64_t> served{0};
};

ChannelServer::Impl::~Impl() {
  if (base != nullptr) {
    for (uint32_t i = 0; i < slots; ++i) {
      uint32_t* w = &detail::slot_at(base, i)->state;
      // relaxed: the bit carries no data; it changes the word, so sleepers' futex_wait cannot miss
      // it, and every CAS after it sees it.
      detail::word(*w).fetch_or(detail::kClosed, std::memory_order_relaxed);
      detail::futex_wake_all(w);
    }
    detail::signal_slot_freed(header());  // clients waiting for a slot rescan and find them closed
  }
  for (std::thread& t : threads) t.join();
  if (linked) {
    struct stat st{};
    if (stat(path.c_str(), &st) == 0 && st.st_dev == dev && st.st_ino == ino) unlink(path.c_str());
  }
  if (base != nullptr) munmap(base, size);
  if (fd >= 0) close(fd);
}

void ChannelServer::Impl::run_slot(uint32_t i, fs::Handle h) {
  char name[16];
  std::snprintf(name, sizeof name, "nrx-sys-%u", i);
  pthread_setname_np(pthread_self(), name);
  uint32_t* w = &detail::slot_at(base, i)->state;
  std::atomic_ref<uint32_t> state(*w);
  uint32_t spins = 0;
  for (;;) {
    // acquire: the request and its data, written before the client's release CAS to REQUEST.
    uint32_t v = state.load(std::memory_order_acquire);
    const uint32_t s = v & detail::kStateMask;
    if (s == detail::kRequest) {
      serve(i, h);  // served even after kClosed: it was published before the close
      spins = 0;
      continue;
    }
    if (s == detail::kAbandoned) {
      free_abandoned(i);  // a client gave up before we saw its request
      continue;
    }
    if ((v & detail::kClosed) != 0) return;
    if (spins < kServerSpins) {
      ++spins;
      cpu_relax();
      continue;
    }
    if ((v & detail::kServerWaiting) == 0) {
      // relaxed: the bit only asks publishers to wake us; the request comes with the acquire load.
      if (!state.compare_exchange_strong(v, v | detail::kServerWaiting, std::memory_order_relaxed,
                                         std::memory_order_relaxed)) {
        continue;
      }
      v |= detail::kServerWaiting;
    }
    if (detail::futex_wait(w, v, kIdleCheck) == ETIMEDOUT) reclaim_if_owner_dead(i);
  }
}

void ChannelServer::Impl::serve(uint32_t i, fs::Handle& h) {
  SlotControl* slot = detail::slot_at(base, i);
  // A private copy: the client cannot change a field between its check and its use.
  nrx_request request;
  std::memcpy(&request, &slot->request, sizeof request);
  nrx_response response;
  execute(fs, h, request, std::span<std::byte>(detail::slot_data(base, i), NRX_DATA_CAPACITY), response);
  std::memcpy(&slot->response, &response, sizeof response);
  served.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  // release: the response and its data before the state that tells the client to read them.
  const Transition t = detail::transition(&slot->state, detail::kRequest, detail::kResponse,
                                          /*keep=*/detail::kClosed, /*refuse=*/0, std::memory_order_release);
  if (!t.moved && (t.found & detail::kStateMask) == detail::kAbandoned) free_abandoned(i);
  // Any other state: the client rewrote the word itself; there is nobody to answer.
}

void ChannelServer::Impl::free_abandoned(uint32_t i) {
  SlotControl* slot = detail::slot_at(base, i);
  // relaxed: ordered before the state change by its release.
  detail::word(slot->owner_pid).store(0, std::memory_order_relaxed);
  // release: owner 0 before FREE (the next owner's acq_rel claim sees it).
  if (detail::transition(&slot->state, detail::kAbandoned, detail::kFree, detail::kClosed, 0, std::memory_order_release)
          .moved) {
    detail::signal_slot_freed(header());
  }
}

void ChannelServer::Impl::reclaim_if_owner_dead(uint32_t i) {
  SlotControl* slot = detail::slot_at(base, i);
  std::atomic_ref<uint32_t> state(slot->state);
  std::atomic_ref<uint32_t> owner(slot->owner_pid);
  // acquire: pairs with the claim's acq_rel CAS, so the owner read below is the claimer's or 0 (a
  // claimer that has not yet written its pid), never the previous, possibly dead, owner's.
  const uint32_t v = state.load(std::memory_order_acquire);
  const uint32_t s = v & detail::kStateMask;
  if (s != detail::kClaimed && s != detail::kResponse) return;
  uint32_t pid = owner.load(std::memory_order_relaxed);  // relaxed: ordered by the acquire above
  if (pid == 0 || pid > static_cast<uint32_t>(INT_MAX) || detail::process_alive(static_cast<pid_t>(pid), 0)) return;
  // relaxed: only decides which of us (two idle checks cannot race: one thread per slot) clears it.
  if (!owner.compare_exchange_strong(pid, 0, std::memory_order_relaxed, std::memory_order_relaxed)) return;
  // release: owner 0 before FREE.
  if (detail::transition(&slot->state, s, detail::kFree, detail::kClosed, 0, std::memory_order_release).moved) {
    detail::signal_slot_freed(header());
  }
}

Result<std::unique_ptr<ChannelServer>> ChannelServer::start(fs::FileSystem<>& fs, uint32_t replica,
                                                            const ChannelOptions& options) {
  if (options.path.empty()) return Status::invalid_argument("channel path is empty");
  if (options.path.size() > PATH_MAX - 64) return Status::invalid_argument("channel path is too long");
  if (options.path.find('\0') != std::string::npos) return Status::invalid_argument("channel path contains a NUL");
  if (options.slots < 1 || options.slots > kMaxChannelSlots) {
    return Status::invalid_argument("slots must be in 1.." + std::to_string(kMaxChannelSlots) + ", not " +
                                    std::to_string(options.slots));
  }
  if (replica >= fs.replicas()) {
    return Status::invalid_argument("replica " + std::to_string(replica) + " does not exist (" +
                                    std::to_string(fs.replicas()) + " replicas)");
  }
  NRX_ASSIGN_OR_RETURN(const bool stale, check_existing(options.path));

  auto impl = std::make_unique<Impl>(fs, options.path, options.slots);
  impl->size = detail::channel_file_size(options.slots);

  // Built under a private name and linked into place whole: no client maps a half-built channel.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = options.path + ".tmp." + std::to_string(getpid()) + "." +
                          std::to_string(counter.fetch_add(1, std::memory_order_relaxed));  // relaxed: a name
  impl->fd = open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (impl->fd < 0) return os_error(errno, "cannot create " + tmp);
  auto remove_tmp = [&](Status st) {
    unlink(tmp.c_str());
    return st;
  };
  // Reserve the memory now: on a full tmpfs a sparse file would SIGBUS later instead of failing here.
  if (int err = posix_fallocate(impl->fd, 0, static_cast<off_t>(impl->size)); err != 0) {
    return remove_tmp(os_error(err, "cannot size " + tmp + " to " + std::to_string(impl->size) + " bytes"));
  }
  void* base = mmap(nullptr, impl->size, PROT_READ | PROT_WRITE, MAP_SHARED, impl->fd, 0);
  if (base == MAP_FAILED) return remove_tmp(os_error(errno, "cannot map " + tmp));
  impl->base = base;
  // The file is new, so every slot is zero: FREE, no owner. Only the header is written.
  const ChannelHeader header = detail::make_header(options.slots);
  std::memcpy(impl->base, &header, sizeof header);
  struct stat st{};
  if (fstat(impl->fd, &st) != 0) return remove_tmp(os_error(errno, "cannot stat " + tmp));
  impl->dev = st.st_dev;
  impl->ino = st.st_ino;
  // One Handle per server thread, attached now so a shortage fails start() rather than a thread
  // (and after the file work, so an OS error does not use up the replica's thread registrations).
  std::vector<fs::Handle> handles;
  for (uint32_t i = 0; i < options.slots; ++i) {
    Result<fs::Handle> h = fs.attach(replica);
    if (!h.ok()) {
      const int err = fs::to_errno(h.status());
      std::string message = "attaching server thread " + std::to_string(i) + " to replica " +
                            std::to_string(replica) + ": " + h.status().message();
      if (err == ENOSPC) return remove_tmp(Status::resource_exhausted(std::move(message)).with_errno(err));
      if (err == EINVAL) return remove_tmp(Status::invalid_argument(std::move(message)).with_errno(err));
      return remove_tmp(Status(h.status().code(), std::move(message)).with_errno(err));
    }
    handles.push_back(*h);
  }

  // A stale file at the path is replaced; link() refuses to replace a file another server put
  // there since.
  if (stale && unlink(options.path.c_str()) != 0 && errno != ENOENT) {
    return remove_tmp(os_error(errno, "cannot replace stale " + options.path));
  }
  if (link(tmp.c_str(), options.path.c_str()) != 0) {
    const int err = errno;
    if (err == EEXIST) return remove_tmp(Status::already_exists(options.path + " was created by another server meanwhile"));
    return remove_tmp(os_error(err, "cannot link " + options.path));
  }
  impl->linked = true;
  unlink(tmp.c_str());

  Impl* raw = impl.get();
  for (uint32_t i = 0; i < options.slots; ++i) {
    raw->threads.emplace_back([raw, i, h = handles[i]] { raw->run_slot(i, h); });
  }
  return std::unique_ptr<ChannelServer>(new ChannelServer(std::move(impl)));
}

ChannelServer::ChannelServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChannelServer::~ChannelServer() = default;

const std::string& ChannelServer::path() const { return impl_->path; }

uint64_t ChannelServer::requests_served() const {
  return impl_->served.load(std::memory_order_relaxed);  // relaxed: a statistic
}

}  // namespace nrx::syscall
