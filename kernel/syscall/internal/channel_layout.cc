#include "kernel/syscall/internal/channel_layout.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace nrx::syscall::detail {

uint64_t header_checksum(const ChannelHeader& header) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64 offset basis
  const auto* bytes = reinterpret_cast<const unsigned char*>(&header);
  for (size_t i = 0; i < offsetof(ChannelHeader, checksum); ++i) {
    h ^= bytes[i];
    h *= 0x100000001b3ull;  // FNV-1a 64 prime
  }
  return h;
}

ChannelHeader make_header(uint32_t slots) {
  ChannelHeader header;
  std::memset(&header, 0, sizeof header);  // no indeterminate padding in a checksummed struct
  header.magic = kChannelMagic;
  header.version = kChannelVersion;
  header.slot_count = slots;
  header.slot_size = kSlotSize;
  header.slots_offset = kSlotsOffset;
  header.data_offset = kSlotDataOffset;
  header.data_capacity = NRX_DATA_CAPACITY;
  header.file_size = channel_file_size(slots);
  header.server_pid = static_cast<int32_t>(getpid());
  header.server_start_time = process_start_time(getpid());
  header.checksum = header_checksum(header);
  return header;
}

int validate_header(const ChannelHeader& h, uint64_t file_size, std::string* why) {
  char text[256];
  auto fail = [&](int err) {
    *why = text;
    return err;
  };
  if (h.magic != kChannelMagic) {
    std::snprintf(text, sizeof text, "bad magic %#llx: not an nrx syscall channel",
                  static_cast<unsigned long long>(h.magic));
    return fail(EPROTO);
  }
  if (h.version != kChannelVersion) {
    std::snprintf(text, sizeof text, "channel ABI version %u, this library speaks version %u", h.version,
                  kChannelVersion);
    return fail(EPROTONOSUPPORT);
  }
  if (h.checksum != header_checksum(h)) {
    std::snprintf(text, sizeof text, "header checksum mismatch: the channel header is corrupt");
    return fail(EPROTO);
  }
  if (h.slot_count == 0 || h.slot_count > kMaxSlots || h.reserved != 0 || h.server_pid <= 0) {
    std::snprintf(text, sizeof text, "invalid header fields (slots %u, server pid %d)", h.slot_count, h.server_pid);
    return fail(EPROTO);
  }
  if (h.slot_size != kSlotSize || h.slots_offset != kSlotsOffset || h.data_offset != kSlotDataOffset ||
      h.data_capacity != NRX_DATA_CAPACITY || h.file_size != channel_file_size(h.slot_count)) {
    std::snprintf(text, sizeof text,
                  "slot geometry (size %llu, data %llu bytes at %llu) does not match this library's (%llu, %u at %llu)",
                  static_cast<unsigned long long>(h.slot_size), static_cast<unsigned long long>(h.data_capacity),
                  static_cast<unsigned long long>(h.data_offset), static_cast<unsigned long long>(kSlotSize),
                  NRX_DATA_CAPACITY, static_cast<unsigned long long>(kSlotDataOffset));
    return fail(EPROTO);
  }
  if (file_size != h.file_size) {
    std::snprintf(text, sizeof text, "the file has %llu bytes, its header says %llu (%s)",
                  static_cast<unsigned long long>(file_size), static_cast<unsigned long long>(h.file_size),
                  file_size < h.file_size ? "truncated" : "trailing bytes");
    return fail(EPROTO);
  }
  why->clear();
  return 0;
}

namespace {

// Reads /proc/<pid>/stat: its state letter and start time. Returns false if it cannot be read;
// sets *gone when the process does not exist.
bool read_proc_stat(pid_t pid, char* state, uint64_t* start_time, bool* gone) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *gone = errno == ENOENT || errno == ESRCH;
    return false;
  }
  char buf[1024];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof buf - 1);
  } while (n < 0 && errno == EINTR);
  close(fd);
  *gone = false;
  if (n <= 0) {
    *gone = n == 0 || errno == ESRCH;  // the process went away between open and read
    return false;
  }
  buf[n] = '\0';
  // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so parse after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ') return false;
  p += 2;
  *state = *p;
  // Field 3 is the state; the start time is field 22, nineteen fields further.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return false;
    ++p;
  }
  char* end = nullptr;
  const unsigned long long t = std::strtoull(p, &end, 10);
  if (end == p) return false;
  *start_time = t;
  return true;
}

}  // namespace

uint64_t process_start_time(pid_t pid) {
  char state = 0;
  uint64_t start = 0;
  bool gone = false;
  return read_proc_stat(pid, &state, &start, &gone) ? start : 0;
}

bool process_alive(pid_t pid, uint64_t start_time) {
  if (pid <= 0) return false;
  char state = 0;
  uint64_t start = 0;
  bool gone = false;
  if (read_proc_stat(pid, &state, &start, &gone)) {
    if (state == 'Z' || state == 'X' || state == 'x') return false;  // dead, not yet reaped
    return start_time == 0 || start == start_time;
  }
  if (gone) return false;
  // No readable /proc: fall back on signal 0 (EPERM: it exists, owned by someone else).
  return kill(pid, 0) == 0 || errno == EPERM;
}

int futex_wait(uint32_t* w, uint32_t expected, std::chrono::nanoseconds timeout) {
  const int64_t ns = timeout.count() > 0 ? timeout.count() : 0;
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  // Shared futex (no FUTEX_PRIVATE_FLAG): the word lives in a file mapped by several processes.
  const long rc = ::syscall(SYS_futex, w, FUTEX_WAIT, expected, &ts, nullptr, 0);
  if (rc == 0) return 0;
  return errno == ETIMEDOUT ? ETIMEDOUT : 0;  // EAGAIN (the word moved), EINTR: re-read it
}

void futex_wake_all(uint32_t* w) { ::syscall(SYS_futex, w, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0); }

Transition transition(uint32_t* w, uint32_t from, uint32_t to, uint32_t keep, uint32_t refuse,
                      std::memory_order order) {
  std::atomic_ref<uint32_t> state(*w);
  // relaxed: the value only decides whether to try; the successful CAS carries |order|.
  uint32_t v = state.load(std::memory_order_relaxed);
  for (;;) {
    if ((v & kStateMask) != from || (v & refuse) != 0) return {false, v};
    const uint32_t next = (v & keep) | to;
    if (state.compare_exchange_weak(v, next, order, std::memory_order_relaxed)) break;
  }
  if ((v & (kServerWaiting | kClientWaiting) & ~keep) != 0) futex_wake_all(w);
  return {true, v};
}

void signal_slot_freed(ChannelHeader* header) {
  std::atomic_ref<uint32_t> free_word(header->free_word);
  uint32_t v = free_word.load(std::memory_order_relaxed);  // relaxed: the CAS below decides
  // release: a waiter that acquires the new count sees the slot state that was just freed.
  while (!free_word.compare_exchange_weak(v, (v + 1) & kFreeSeqMask, std::memory_order_release,
                                          std::memory_order_relaxed)) {
  }
  if ((v & kFreeWaiters) != 0) futex_wake_all(&header->free_word);
}

}  // namespace nrx::syscall::detail
