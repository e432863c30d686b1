// libnrx: the client side of the syscall channel (libnrx.h). Connection set-up and validation,
// the request path over one channel slot (claim, publish, wait, free), and the POSIX-like calls
// with their client-side descriptors and offsets. Protocol in channel.h and
// internal/channel_layout.h.
#include "kernel/syscall/libnrx.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "base/spin.h"
#include "kernel/syscall/internal/channel_layout.h"

namespace {

namespace detail = nrx::syscall::detail;
using Clock = std::chrono::steady_clock;

// Pauses a client spins on its slot before it sleeps: most requests are answered within them.
constexpr uint32_t kClientSpins = 1000;
// The longest single sleep: the server's liveness is checked at least this often while waiting.
constexpr std::chrono::milliseconds kSlice{50};
constexpr uint32_t kDefaultTimeoutMs = 60'000;

struct Connection {
  ~Connection() {
    if (base != nullptr) munmap(base, size);
    if (fd >= 0) close(fd);
  }
  detail::ChannelHeader* header() const { return static_cast<detail::ChannelHeader*>(base); }

  int fd = -1;
  void* base = nullptr;
  size_t size = 0;
  uint32_t slots = 0;
  pid_t server_pid = 0;
  uint64_t server_start_time = 0;
};

struct OpenFile {
  OpenFile(uint64_t i, uint32_t f) : ino(i), flags(f) {}
  const uint64_t ino;
  const uint32_t flags;  // NRX_O_* as opened
  nrx::Mutex mu;         // serialises read/write/lseek: the offset moves atomically
  uint64_t offset NRX_GUARDED_BY(mu) = 0;
};

// The process's one connection and descriptor table. Lock order: an OpenFile's mu, then conn_mu
// (shared); conn_mu, then fd_mu. Never fd_mu while taking another.
struct Client {
  nrx::SharedMutex conn_mu;  // shared: a request in flight; exclusive: connect, disconnect
  std::unique_ptr<Connection> conn NRX_GUARDED_BY(conn_mu);
  nrx::Mutex fd_mu;
  std::vector<std::shared_ptr<OpenFile>> fds NRX_GUARDED_BY(fd_mu);
  std::atomic<uint32_t> timeout_ms{kDefaultTimeoutMs};
  std::atomic<uint32_t> next_hint{0};
};

// Never destroyed: calls from threads still running at exit must not find it gone.
Client& client() {
  static Client* c = new Client;
  return *c;
}

thread_local char t_last_error[512];

int connect_error(int err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int connect_error(int err, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(t_last_error, sizeof t_last_error, fmt, args);
  va_end(args);
  return -err;
}

// --- One request over one slot -------------------------------------------------------------------

// Whether to stop waiting: -ECONNRESET when the server process is gone, -ETIMEDOUT past the
// deadline, 0 to go on.
int check_server(const Connection& c, Clock::time_point deadline) {
  if (!detail::process_alive(c.server_pid, c.server_start_time)) return -ECONNRESET;
  if (Clock::now() >= deadline) return -ETIMEDOUT;
  return 0;
}

std::chrono::nanoseconds sleep_for(Clock::time_point deadline) {
  const auto left = deadline - Clock::now();
  return std::chrono::nanoseconds(std::max<int64_t>(
      std::min<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(left).count(),
                        std::chrono::duration_cast<std::chrono::nanoseconds>(kSlice).count()),
      0));
}

// Claims a free slot: its index, or -ECONNRESET (server stopped or gone), -ETIMEDOUT.
int claim_slot(const Connection& c, Clock::time_point deadline) {
  thread_local uint32_t hint = client().next_hint.fetch_add(1, std::memory_order_relaxed);  // relaxed: a spread
  std::atomic_ref<uint32_t> free_word(c.header()->free_word);
  uint32_t spins = 0;
  for (;;) {
    // acquire: pairs with signal_slot_freed's release, so a slot freed before this count was
    // bumped is seen FREE by the scan below (and a later free changes the word we sleep on).
    uint32_t seq = free_word.load(std::memory_order_acquire);
    bool closed = false;
    for (uint32_t k = 0; k < c.slots; ++k) {
      const uint32_t i = (hint + k) % c.slots;
      // acq_rel: acquire the previous owner's release of the slot (its response read, owner 0);
      // release so the server's owner check that reads this claim sees owner 0, never a stale pid.
      const detail::Transition t =
          detail::transition(&detail::slot_at(c.base, i)->state, detail::kFree, detail::kClaimed,
                             /*keep=*/detail::kServerWaiting, /*refuse=*/detail::kClosed, std::memory_order_acq_rel);
      if (t.moved) {
        hint = i;
        return static_cast<int>(i);
      }
      closed |= (t.found & detail::kClosed) != 0;
    }
    if (closed) return -ECONNRESET;  // the server closes every slot at once
    if (spins < kClientSpins) {
      ++spins;
      nrx::cpu_relax();
      continue;
    }
    if ((seq & detail::kFreeWaiters) == 0) {
      // relaxed: the bit only asks releasers to wake us; what they freed comes with the acquire load.
      if (!free_word.compare_exchange_strong(seq, seq | detail::kFreeWaiters, std::memory_order_relaxed,
                                             std::memory_order_relaxed)) {
        continue;
      }
      seq |= detail::kFreeWaiters;
    }
    if (detail::futex_wait(&c.header()->free_word, seq, sleep_for(deadline)) == ETIMEDOUT) {
      if (int err = check_server(c, deadline); err != 0) return err;
    } else if (Clock::now() >= deadline) {
      return -ETIMEDOUT;
    }
  }
}

// Gives slot |i| back after its response was read (or its request never went out).
void free_slot(const Connection& c, uint32_t i, uint32_t from) {
  detail::SlotControl* slot = detail::slot_at(c.base, i);
  // relaxed: ordered before FREE by the release below.
  detail::word(slot->owner_pid).store(0, std::memory_order_relaxed);
  // release: our reads of the response, and owner 0, before the next owner's claim.
  if (detail::transition(&slot->state, from, detail::kFree, detail::kClosed | detail::kServerWaiting, 0,
                         std::memory_order_release)
          .moved) {
    detail::signal_slot_freed(c.header());
  }
}

// Sends one request; fills *response and copies up to |out_cap| bytes of its data. Returns
// response->result, or a channel error (-ECONNRESET, -ETIMEDOUT, -EPROTO, -ENOTCONN).
int64_t call(const nrx_request& request, const void* in, size_t in_len, nrx_response* response, void* out,
             size_t out_cap) {
  *response = nrx_response{};
  Client& cl = client();
  nrx::ReaderLock lock(cl.conn_mu);
  if (!cl.conn) return response->result = -ENOTCONN;
  const Connection& c = *cl.conn;
  // relaxed: a setting, no data hangs on it.
  const auto deadline = Clock::now() + std::chrono::milliseconds(cl.timeout_ms.load(std::memory_order_relaxed));

  const int claimed = claim_slot(c, deadline);
  if (claimed < 0) return response->result = claimed;
  const auto i = static_cast<uint32_t>(claimed);
  detail::SlotControl* slot = detail::slot_at(c.base, i);
  // relaxed: read by the server only after it acquires the slot's state.
  detail::word(slot->owner_pid).store(static_cast<uint32_t>(getpid()), std::memory_order_relaxed);
  std::memcpy(&slot->request, &request, sizeof request);
  if (in_len > 0) std::memcpy(detail::slot_data(c.base, i), in, in_len);

  // release: the request and its data before the state that tells the server to read them.
  detail::Transition t = detail::transition(&slot->state, detail::kClaimed, detail::kRequest, /*keep=*/0,
                                            /*refuse=*/detail::kClosed, std::memory_order_release);
  if (!t.moved) {
    if ((t.found & detail::kStateMask) != detail::kClaimed) return response->result = -EPROTO;  // word scribbled
    free_slot(c, i, detail::kClaimed);
    return response->result = -ECONNRESET;  // closed between our claim and publish
  }

  std::atomic_ref<uint32_t> state(slot->state);
  uint32_t spins = 0;
  for (;;) {
    // acquire: the response and its data, written before the server's release CAS to RESPONSE.
    uint32_t v = state.load(std::memory_order_acquire);
    const uint32_t s = v & detail::kStateMask;
    if (s == detail::kResponse) break;
    if (s != detail::kRequest) return response->result = -EPROTO;  // not ours any more: leave it
    if (spins < kClientSpins) {
      ++spins;
      nrx::cpu_relax();
      continue;
    }
    if ((v & detail::kClientWaiting) == 0) {
      // relaxed: the bit only asks the server to wake us; the response comes with the acquire load.
      if (!state.compare_exchange_strong(v, v | detail::kClientWaiting, std::memory_order_relaxed,
                                         std::memory_order_relaxed)) {
        continue;
      }
      v |= detail::kClientWaiting;
    }
    int err = 0;
    if (detail::futex_wait(&slot->state, v, sleep_for(deadline)) == ETIMEDOUT) {
      err = check_server(c, deadline);
    } else if (Clock::now() >= deadline) {
      err = -ETIMEDOUT;
    }
    if (err != 0) {
      // Give the slot up: a live server frees it when it finishes; a dead one never will.
      // relaxed: nothing is published by abandoning; if it fails the loop re-reads with acquire.
      t = detail::transition(&slot->state, detail::kRequest, detail::kAbandoned, detail::kClosed, 0,
                             std::memory_order_relaxed);
      if (t.moved) return response->result = err;
    }
  }

  std::memcpy(response, &slot->response, sizeof *response);
  int64_t result = response->result;
  if (response->length > NRX_DATA_CAPACITY || response->length > out_cap ||
      (result < 0 && (response->length != 0 || result < -4095))) {
    result = -EPROTO;
  } else if (response->length > 0) {
    std::memcpy(out, detail::slot_data(c.base, i), response->length);
  }
  free_slot(c, i, detail::kResponse);
  if (result != response->result) {
    *response = nrx_response{};
    response->result = result;
  }
  return result;
}

// --- Requests by kind --------------------------------------------------------------------------

int64_t path_call(uint32_t sysno, const char* path, const char* path2, uint32_t mode, nrx_response* response) {
  if (path == nullptr) return -EFAULT;
  const size_t len = std::strlen(path);
  const size_t len2 = path2 == nullptr ? 0 : std::strlen(path2);
  if (len > NRX_PATH_MAX || len2 > NRX_PATH_MAX) return -ENAMETOOLONG;
  char buf[2 * NRX_PATH_MAX];
  std::memcpy(buf, path, len);
  if (len2 > 0) std::memcpy(buf + len, path2, len2);
  nrx_request request{};
  request.sysno = sysno;
  request.mode = mode;
  request.path_len = static_cast<uint32_t>(len);
  request.path2_len = static_cast<uint32_t>(len2);
  return call(request, buf, len + len2, response, nullptr, 0);
}

int64_t ino_call(uint32_t sysno, uint64_t ino, nrx_response* response) {
  nrx_request request{};
  request.sysno = sysno;
  request.ino = ino;
  return call(request, nullptr, 0, response, nullptr, 0);
}

// One pread of at most NRX_MAX_IO bytes.
int64_t pread_once(uint64_t ino, void* buf, size_t count, uint64_t offset) {
  nrx_request request{};
  request.sysno = NRX_SYS_PREAD;
  request.ino = ino;
  request.offset = offset;
  request.length = count;
  nrx_response response;
  const int64_t r = call(request, nullptr, 0, &response, buf, count);
  if (r >= 0 && static_cast<uint64_t>(r) != response.length) return -EPROTO;
  return r;
}

// One pwrite of at most NRX_MAX_IO bytes.
int64_t pwrite_once(uint64_t ino, const void* buf, size_t count, uint64_t offset) {
  nrx_request request{};
  request.sysno = NRX_SYS_PWRITE;
  request.ino = ino;
  request.offset = offset;
  request.length = count;
  nrx_response response;
  const int64_t r = call(request, buf, count, &response, nullptr, 0);
  if (r > static_cast<int64_t>(count)) return -EPROTO;
  return r;
}

// Reads or writes |count| bytes at |offset| in NRX_MAX_IO pieces. Returns the bytes moved (short at
// the end of the file, or when a later piece fails), or the first piece's error.
int64_t transfer(bool write, uint64_t ino, void* buf, size_t count, uint64_t offset) {
  if (count > static_cast<size_t>(INT64_MAX)) count = static_cast<size_t>(INT64_MAX);
  if (count > 0 && buf == nullptr) return -EFAULT;
  size_t done = 0;
  while (done < count) {
    const size_t piece = std::min<size_t>(count - done, NRX_MAX_IO);
    if (offset + done > static_cast<uint64_t>(INT64_MAX)) return done > 0 ? static_cast<int64_t>(done) : -EFBIG;
    auto* p = static_cast<char*>(buf) + done;
    const int64_t r = write ? pwrite_once(ino, p, piece, offset + done) : pread_once(ino, p, piece, offset + done);
    if (r < 0) return done > 0 ? static_cast<int64_t>(done) : r;
    done += static_cast<size_t>(r);
    if (static_cast<size_t>(r) < piece) break;
  }
  return static_cast<int64_t>(done);
}

std::shared_ptr<OpenFile> lookup_fd(int fd) {
  Client& cl = client();
  nrx::MutexLock lock(cl.fd_mu);
  if (fd < 0 || static_cast<size_t>(fd) >= cl.fds.size()) return nullptr;
  return cl.fds[static_cast<size_t>(fd)];
}

bool readable(const OpenFile& f) { return (f.flags & NRX_O_ACCMODE) != NRX_O_WRONLY; }
bool writable(const OpenFile& f) { return (f.flags & NRX_O_ACCMODE) != NRX_O_RDONLY; }

int64_t file_size(uint64_t ino) {
  nrx_response response;
  const int64_t r = ino_call(NRX_SYS_FSTAT, ino, &response);
  if (r < 0) return r;
  if (response.stat.size > static_cast<uint64_t>(INT64_MAX)) return -EOVERFLOW;
  return static_cast<int64_t>(response.stat.size);
}

}  // namespace

extern "C" {

int nrx_connect(const char* channel_path) {
  t_last_error[0] = '\0';
  if (channel_path == nullptr || channel_path[0] == '\0') return connect_error(EINVAL, "no channel path given");
  Client& cl = client();
  nrx::WriterLock lock(cl.conn_mu);
  if (cl.conn) return connect_error(EISCONN, "already connected (nrx_disconnect first)");

  auto c = std::make_unique<Connection>();
  c->fd = open(channel_path, O_RDWR | O_CLOEXEC);
  if (c->fd < 0) {
    const int err = errno;
    if (err == ENOENT) return connect_error(err, "%s: no such channel (is the server running?)", channel_path);
    return connect_error(err, "%s: cannot open: %s", channel_path, std::strerror(err));
  }
  struct stat st{};
  if (fstat(c->fd, &st) != 0) {
    const int err = errno;
    return connect_error(err, "%s: cannot stat: %s", channel_path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) return connect_error(EPROTO, "%s: not a regular file", channel_path);
  detail::ChannelHeader header;
  if (static_cast<uint64_t>(st.st_size) < sizeof header) {
    return connect_error(EPROTO, "%s: truncated: %lld bytes, smaller than the %zu-byte channel header", channel_path,
                         static_cast<long long>(st.st_size), sizeof header);
  }
  if (pread(c->fd, &header, sizeof header, 0) != static_cast<ssize_t>(sizeof header)) {
    return connect_error(EPROTO, "%s: cannot read the channel header", channel_path);
  }
  std::string why;
  if (int err = detail::validate_header(header, static_cast<uint64_t>(st.st_size), &why); err != 0) {
    return connect_error(err, "%s: %s", channel_path, why.c_str());
  }
  if (!detail::process_alive(header.server_pid, header.server_start_time)) {
    return connect_error(ECONNREFUSED, "%s: its server (pid %d) is not running: a stale channel file", channel_path,
                         header.server_pid);
  }
  c->size = static_cast<size_t>(header.file_size);
  void* base = mmap(nullptr, c->size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    return connect_error(err, "%s: cannot map: %s", channel_path, std::strerror(err));
  }
  c->base = base;
  c->slots = header.slot_count;
  c->server_pid = header.server_pid;
  c->server_start_time = header.server_start_time;
  if (const char* env = std::getenv("NRX_TIMEOUT_MS"); env != nullptr) {
    char* end = nullptr;
    const unsigned long ms = std::strtoul(env, &end, 10);
    // relaxed: a setting.
    if (end != env && *end == '\0' && ms > 0 && ms <= UINT32_MAX) cl.timeout_ms.store(static_cast<uint32_t>(ms), std::memory_order_relaxed);
  }
  cl.conn = std::move(c);
  return 0;
}

int nrx_disconnect(void) {
  Client& cl = client();
  nrx::WriterLock lock(cl.conn_mu);  // waits for requests in flight
  if (!cl.conn) return -ENOTCONN;
  cl.conn.reset();
  nrx::MutexLock fd_lock(cl.fd_mu);
  cl.fds.clear();
  return 0;
}

const char* nrx_last_error(void) { return t_last_error; }

uint32_t nrx_set_timeout_ms(uint32_t timeout_ms) {
  if (timeout_ms == 0) timeout_ms = kDefaultTimeoutMs;
  // relaxed: a setting, read at the start of each request.
  return client().timeout_ms.exchange(timeout_ms, std::memory_order_relaxed);
}

int64_t nrx_syscall(const struct nrx_request* request, const void* in, size_t in_len, struct nrx_response* response,
                    void* out, size_t out_cap) {
  if (request == nullptr || response == nullptr || (in_len > 0 && in == nullptr) || (out_cap > 0 && out == nullptr)) {
    return -EFAULT;
  }
  if (in_len > NRX_DATA_CAPACITY) return -EINVAL;
  return call(*request, in, in_len, response, out, out_cap);
}

int nrx_open(const char* path, uint32_t flags, uint32_t mode) {
  if ((flags & ~NRX_O_ALL) != 0 || (flags & NRX_O_ACCMODE) == NRX_O_ACCMODE) return -EINVAL;
  if (path == nullptr) return -EFAULT;
  const size_t len = std::strlen(path);
  if (len > NRX_PATH_MAX) return -ENAMETOOLONG;
  nrx_request request{};
  request.sysno = NRX_SYS_OPEN;
  request.flags = flags;
  request.mode = (flags & NRX_O_CREAT) != 0 ? (mode & NRX_MODE_MASK) : 0;
  request.path_len = static_cast<uint32_t>(len);
  nrx_response response;
  const int64_t ino = call(request, path, len, &response, nullptr, 0);
  if (ino < 0) return static_cast<int>(ino);
  auto file = std::make_shared<OpenFile>(static_cast<uint64_t>(ino), flags);
  Client& cl = client();
  nrx::MutexLock lock(cl.fd_mu);
  for (size_t fd = 0; fd < cl.fds.size(); ++fd) {
    if (!cl.fds[fd]) {
      cl.fds[fd] = std::move(file);
      return static_cast<int>(fd);
    }
  }
  if (cl.fds.size() >= NRX_MAX_FDS) return -EMFILE;
  cl.fds.push_back(std::move(file));
  return static_cast<int>(cl.fds.size() - 1);
}

int nrx_close(int fd) {
  std::shared_ptr<OpenFile> file;
  {
    Client& cl = client();
    nrx::MutexLock lock(cl.fd_mu);
    if (fd < 0 || static_cast<size_t>(fd) >= cl.fds.size() || !cl.fds[static_cast<size_t>(fd)]) return -EBADF;
    file = std::move(cl.fds[static_cast<size_t>(fd)]);
  }
  nrx_response response;
  const int64_t r = ino_call(NRX_SYS_CLOSE, file->ino, &response);
  // The descriptor is closed either way; EBADF from the kernel only means the file was unlinked.
  return r == -EBADF ? 0 : static_cast<int>(std::min<int64_t>(r, 0));
}

int64_t nrx_read(int fd, void* buf, size_t count) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file || !readable(*file)) return -EBADF;
  nrx::MutexLock lock(file->mu);
  const int64_t r = transfer(/*write=*/false, file->ino, buf, count, file->offset);
  if (r > 0) file->offset += static_cast<uint64_t>(r);
  return r;
}

int64_t nrx_write(int fd, const void* buf, size_t count) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file || !writable(*file)) return -EBADF;
  nrx::MutexLock lock(file->mu);
  if ((file->flags & NRX_O_APPEND) != 0) {
    const int64_t size = file_size(file->ino);
    if (size < 0) return size;
    file->offset = static_cast<uint64_t>(size);
  }
  if (count == 0) return 0;
  const int64_t r = transfer(/*write=*/true, file->ino, const_cast<void*>(buf), count, file->offset);
  if (r > 0) file->offset += static_cast<uint64_t>(r);
  return r;
}

int64_t nrx_lseek(int fd, int64_t offset, int whence) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file) return -EBADF;
  nrx::MutexLock lock(file->mu);
  int64_t base = 0;
  switch (whence) {
    case NRX_SEEK_SET:
      base = 0;
      break;
    case NRX_SEEK_CUR:
      base = static_cast<int64_t>(file->offset);
      break;
    case NRX_SEEK_END:
      base = file_size(file->ino);
      if (base < 0) return base;
      break;
    default:
      return -EINVAL;
  }
  int64_t next = 0;
  if (__builtin_add_overflow(base, offset, &next)) return -EOVERFLOW;
  if (next < 0) return -EINVAL;
  file->offset = static_cast<uint64_t>(next);
  return next;
}

int64_t nrx_pread(int fd, void* buf, size_t count, int64_t offset) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file || !readable(*file)) return -EBADF;
  if (offset < 0) return -EINVAL;
  return transfer(/*write=*/false, file->ino, buf, count, static_cast<uint64_t>(offset));
}

int64_t nrx_pwrite(int fd, const void* buf, size_t count, int64_t offset) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file || !writable(*file)) return -EBADF;
  if (offset < 0) return -EINVAL;
  if (count == 0) return 0;
  return transfer(/*write=*/true, file->ino, const_cast<void*>(buf), count, static_cast<uint64_t>(offset));
}

int nrx_mkdir(const char* path, uint32_t mode) {
  nrx_response response;
  return static_cast<int>(path_call(NRX_SYS_MKDIR, path, nullptr, mode & NRX_MODE_MASK, &response));
}

int nrx_rmdir(const char* path) {
  nrx_response response;
  return static_cast<int>(path_call(NRX_SYS_RMDIR, path, nullptr, 0, &response));
}

int nrx_unlink(const char* path) {
  nrx_response response;
  return static_cast<int>(path_call(NRX_SYS_UNLINK, path, nullptr, 0, &response));
}

int nrx_rename(const char* from, const char* to) {
  if (to == nullptr) return -EFAULT;
  nrx_response response;
  return static_cast<int>(path_call(NRX_SYS_RENAME, from, to, 0, &response));
}

int nrx_stat(const char* path, struct nrx_statbuf* st) {
  if (st == nullptr) return -EFAULT;
  nrx_response response;
  const int64_t r = path_call(NRX_SYS_STAT, path, nullptr, 0, &response);
  if (r == 0) *st = response.stat;
  return static_cast<int>(std::min<int64_t>(r, 0));
}

int nrx_fstat(int fd, struct nrx_statbuf* st) {
  if (st == nullptr) return -EFAULT;
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file) return -EBADF;
  nrx_response response;
  const int64_t r = ino_call(NRX_SYS_FSTAT, file->ino, &response);
  if (r == 0) *st = response.stat;
  return static_cast<int>(std::min<int64_t>(r, 0));
}

int nrx_ftruncate(int fd, int64_t size) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file) return -EBADF;
  if (!writable(*file) || size < 0) return -EINVAL;  // Linux: EINVAL for a descriptor not open for writing
  nrx_request request{};
  request.sysno = NRX_SYS_TRUNCATE;
  request.ino = file->ino;
  request.offset = static_cast<uint64_t>(size);
  nrx_response response;
  return static_cast<int>(call(request, nullptr, 0, &response, nullptr, 0));
}

int nrx_fsync(int fd) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file) return -EBADF;
  nrx_response response;
  return static_cast<int>(ino_call(NRX_SYS_FSYNC, file->ino, &response));
}

int nrx_fchmod(int fd, uint32_t mode) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file) return -EBADF;
  nrx_request request{};
  request.sysno = NRX_SYS_CHMOD;
  request.ino = file->ino;
  request.mode = mode;
  nrx_response response;
  return static_cast<int>(call(request, nullptr, 0, &response, nullptr, 0));
}

int nrx_futimens(int fd, int64_t atime_ns, int64_t mtime_ns) {
  std::shared_ptr<OpenFile> file = lookup_fd(fd);
  if (!file) return -EBADF;
  nrx_request request{};
  request.sysno = NRX_SYS_UTIMENS;
  request.ino = file->ino;
  request.atime_ns = atime_ns;
  request.mtime_ns = mtime_ns;
  nrx_response response;
  return static_cast<int>(call(request, nullptr, 0, &response, nullptr, 0));
}

int nrx_readdir(const char* path, const char* after, struct nrx_dirent* entries, int max_entries) {
  if (entries == nullptr) return -EFAULT;
  if (max_entries <= 0) return -EINVAL;
  if (path == nullptr) return -EFAULT;
  const size_t len = std::strlen(path);
  if (len > NRX_PATH_MAX) return -ENAMETOOLONG;
  if (after != nullptr && std::strlen(after) > NRX_NAME_MAX) return -ENAMETOOLONG;
  std::string resume = after == nullptr ? "" : after;
  std::vector<std::byte> records(NRX_DATA_CAPACITY);
  int filled = 0;
  while (filled < max_entries) {
    char buf[NRX_PATH_MAX + NRX_NAME_MAX];
    std::memcpy(buf, path, len);
    std::memcpy(buf + len, resume.data(), resume.size());
    nrx_request request{};
    request.sysno = NRX_SYS_READDIR;
    request.path_len = static_cast<uint32_t>(len);
    request.path2_len = static_cast<uint32_t>(resume.size());
    nrx_response response;
    const int64_t count = call(request, buf, len + resume.size(), &response, records.data(), records.size());
    if (count < 0) return filled > 0 ? filled : static_cast<int>(count);
    // Parse what the server sent; a malformed record is a protocol error, not a crash.
    size_t at = 0;
    for (int64_t k = 0; k < count && filled < max_entries; ++k) {
      nrx_dirent_record record;
      if (at + sizeof record > response.length) return -EPROTO;
      std::memcpy(&record, records.data() + at, sizeof record);
      if (record.name_len == 0 || record.name_len > NRX_NAME_MAX || record.record_len % 8 != 0 ||
          record.record_len < sizeof record + record.name_len || at + record.record_len > response.length) {
        return -EPROTO;
      }
      nrx_dirent& e = entries[filled++];
      e.ino = record.ino;
      e.type = record.type;
      std::memcpy(e.name, records.data() + at + sizeof record, record.name_len);
      e.name[record.name_len] = '\0';
      resume.assign(e.name, record.name_len);
      at += record.record_len;
    }
    if (count == 0 || (response.flags & NRX_READDIR_MORE) == 0) break;
  }
  return filled;
}

}  // extern "C"
