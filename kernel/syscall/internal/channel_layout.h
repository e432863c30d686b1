// The shared-memory layout of the syscall channel and the small pieces both of its ends use:
// header construction and validation, slot addressing, the slot state word, futex waits, and the
// liveness check of a process. Private to kernel/syscall (server: channel.cc; client: libnrx.cc);
// compiled into both, with no dependency beyond the C++ library so libnrx.so stays self-contained.
//
// File layout (offsets in bytes; every field fixed and static_asserted, no pointers):
//   0                 ChannelHeader (written once by the server before the file is linked)
//   kSlotsOffset      slot 0, then slot i at kSlotsOffset + i * kSlotSize:
//                       0     state word (atomic), owner pid (atomic)      -- SlotControl
//                       128   nrx_request (written by the client while CLAIMED)
//                       256   nrx_response (written by the server while REQUEST)
//                       4096  data buffer, NRX_DATA_CAPACITY bytes
//
// The slot state word (one 32-bit futex word):
//   bits 0..7  the state:   FREE -> CLAIMED -> REQUEST -> RESPONSE -> FREE     (normal cycle)
//                           REQUEST -> ABANDONED -> FREE   (the client gave up; the server frees)
//   bit 8      kServerWaiting: the slot's server thread sleeps in futex_wait on this word
//   bit 9      kClientWaiting: the slot's client sleeps in futex_wait on this word
//   bit 31     kClosed: the server has stopped taking requests on this slot (sticky)
// Every change is a CAS on the whole word, so a publisher learns from the value it replaced
// whether the other side sleeps (and must be woken), and a sleeper's futex_wait fails at once if
// the word moved after it decided to sleep: no lost wake-ups, no syscall while the peer spins.
// The header's free word counts slot releases (bits 0..30) and carries kFreeWaiters (bit 31) for
// clients that found every slot busy, by the same protocol.
//
// Thread safety: the functions are stateless; the words are only touched through std::atomic_ref.
//
//   ChannelHeader h = make_header(/*slots=*/8);                 // server, before linking the file
//   if (int err = validate_header(h, file_size, &why)) ...       // client, on connect
//   SlotControl* s = slot_at(base, i);
//   transition(&s->state, kFree, kClaimed, kServerWaiting, kClosed, std::memory_order_acq_rel);
//   futex_wait(&s->state, seen, std::chrono::milliseconds(50));  // after setting a waiting bit
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/cacheline.h"
#include "kernel/syscall/nrx_syscall.h"

namespace nrx::syscall::detail {

inline constexpr uint64_t kChannelMagic = 0x314E414843585200ull;  // "\0RXCHAN1" little-endian, no text
inline constexpr uint32_t kChannelVersion = NRX_ABI_VERSION;
inline constexpr uint32_t kMaxSlots = 64;
inline constexpr uint64_t kPageSize = 4096;

// Slot state word: the state (bits 0..7) and flags.
inline constexpr uint32_t kStateMask = 0xffu;
inline constexpr uint32_t kFree = 0;       // no client; any client may claim it
inline constexpr uint32_t kClaimed = 1;    // a client writes its request
inline constexpr uint32_t kRequest = 2;    // published; the server thread serves it
inline constexpr uint32_t kResponse = 3;   // answered; the client reads the response
inline constexpr uint32_t kAbandoned = 4;  // the client gave up waiting; the server frees it
inline constexpr uint32_t kServerWaiting = 1u << 8;  // the server thread sleeps on the word
inline constexpr uint32_t kClientWaiting = 1u << 9;  // the client sleeps on the word
inline constexpr uint32_t kClosed = 1u << 31;        // the server stopped: no new requests

// Header free word: release count (bits 0..30) and kFreeWaiters.
inline constexpr uint32_t kFreeWaiters = 1u << 31;
inline constexpr uint32_t kFreeSeqMask = kFreeWaiters - 1;

struct ChannelHeader {
  uint64_t magic;              // kChannelMagic
  uint32_t version;            // kChannelVersion
  uint32_t slot_count;         // 1..kMaxSlots
  uint64_t slot_size;          // kSlotSize
  uint64_t slots_offset;       // kSlotsOffset
  uint64_t data_offset;        // kSlotDataOffset (within a slot)
  uint64_t data_capacity;      // NRX_DATA_CAPACITY
  uint64_t file_size;          // kSlotsOffset + slot_count * kSlotSize
  int32_t server_pid;          // the serving process
  uint32_t reserved;           // 0
  uint64_t server_start_time;  // its start time (/proc/<pid>/stat field 22), 0 if unknown
  uint64_t checksum;           // header_checksum() of the bytes above
  // Written by clients and the server at run time (not covered by the checksum), on its own line.
  alignas(kInterferenceSize) uint32_t free_word;
};
static_assert(offsetof(ChannelHeader, slot_count) == 12);
static_assert(offsetof(ChannelHeader, server_pid) == 56);
static_assert(offsetof(ChannelHeader, server_start_time) == 64);
static_assert(offsetof(ChannelHeader, checksum) == 72);
static_assert(offsetof(ChannelHeader, free_word) == kInterferenceSize);
static_assert(sizeof(ChannelHeader) == 2 * kInterferenceSize);
static_assert(alignof(ChannelHeader) == kInterferenceSize);

struct SlotControl {
  alignas(kInterferenceSize) uint32_t state;  // the state word above
  uint32_t owner_pid;                         // the claiming client (0 between owners)
  alignas(kInterferenceSize) nrx_request request;
  alignas(kInterferenceSize) nrx_response response;
};
static_assert(offsetof(SlotControl, owner_pid) == 4);
static_assert(offsetof(SlotControl, request) == 128);
static_assert(offsetof(SlotControl, response) == 256);
static_assert(sizeof(SlotControl) <= kPageSize);
static_assert(alignof(SlotControl) == kInterferenceSize);

inline constexpr uint64_t kSlotsOffset = kPageSize;
inline constexpr uint64_t kSlotDataOffset = kPageSize;
inline constexpr uint64_t kSlotSize = round_up(kSlotDataOffset + NRX_DATA_CAPACITY, kPageSize);
static_assert(sizeof(ChannelHeader) <= kSlotsOffset);

inline constexpr uint64_t channel_file_size(uint32_t slots) { return kSlotsOffset + uint64_t{slots} * kSlotSize; }

inline SlotControl* slot_at(void* base, uint32_t i) {
  return reinterpret_cast<SlotControl*>(static_cast<std::byte*>(base) + kSlotsOffset + uint64_t{i} * kSlotSize);
}
inline std::byte* slot_data(void* base, uint32_t i) {
  return reinterpret_cast<std::byte*>(slot_at(base, i)) + kSlotDataOffset;
}

inline std::atomic_ref<uint32_t> word(uint32_t& w) { return std::atomic_ref<uint32_t>(w); }

// FNV-1a over the header's fixed fields (everything before checksum).
uint64_t header_checksum(const ChannelHeader& header);

// A header for |slots| slots served by this process.
ChannelHeader make_header(uint32_t slots);

// Checks a header read from a file of |file_size| bytes. Returns 0, or an errno (EPROTO,
// EPROTONOSUPPORT) with the reason in |why|.
int validate_header(const ChannelHeader& header, uint64_t file_size, std::string* why);

// The start time of process |pid| in clock ticks since boot (/proc/<pid>/stat field 22), or 0.
uint64_t process_start_time(pid_t pid);
// Whether |pid| is a running process (not a zombie) and, if |start_time| is not 0, the same one
// that started at that time (pids are reused).
bool process_alive(pid_t pid, uint64_t start_time);

// futex(FUTEX_WAIT) on a word of a MAP_SHARED mapping (not PRIVATE: other processes wake it).
// Sleeps while *|w| == |expected|, at most |timeout|. Returns 0 (woken, or the word differed:
// the caller re-reads it either way) or ETIMEDOUT.
int futex_wait(uint32_t* w, uint32_t expected, std::chrono::nanoseconds timeout);
// Wakes every sleeper on |w|.
void futex_wake_all(uint32_t* w);

// The outcome of transition(): whether it moved the word, and the value it found there.
struct Transition {
  bool moved;
  uint32_t found;
};

// Moves the slot state word |w| from state |from| to state |to|: if its state is |from| and none
// of the |refuse| bits is set, CAS it to (found & |keep|) | |to| with |order| (a failed CAS
// retries; a different state gives up, with relaxed order: callers that then read the slot
// re-load the word with acquire). Wakes the word's sleepers when a waiting bit that was set is
// not kept (its sleeper must see the new state).
Transition transition(uint32_t* w, uint32_t from, uint32_t to, uint32_t keep, uint32_t refuse,
                      std::memory_order order);

// Counts a slot release on the header's free word and wakes clients waiting for a free slot.
void signal_slot_freed(ChannelHeader* header);

}  // namespace nrx::syscall::detail
