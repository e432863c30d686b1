// How the shared-memory log touches words and bytes in the shared region: the one seam between
// the log's algorithm (shm_log.h) and the coherence of the memory under it (DESIGN 3.4).
//
// Every atomic operation ShmLog performs on a region address goes through an Access policy's
// static functions, and every block of bytes it publishes or consumes is bracketed by flush() /
// invalidate(). CoherentAccess maps the words onto std::atomic_ref and flush/invalidate onto the
// cache-maintenance instructions of logs/shm/shm_cache.h (clwb/clflushopt + fences, probed at
// run time). The log calls flush/invalidate only in noncoherent mode (CXL 2.0 sharing, QEMU's
// type-3 device), where it also never calls a read-modify-write (compare_exchange, fetch_*) nor a
// seq_cst store (an xchg on x86): every line there has one writer. A counting policy (tests)
// derives from CoherentAccess and hides the functions it wants to count; counting them in
// noncoherent mode is the proof that the mode needs no cross-host atomics.
//
// A policy: static functions load, store, compare_exchange, fetch_add, fetch_sub, fetch_or,
// fetch_and over uint64_t& (region words, naturally aligned), with the std::atomic meaning of
// each memory order; flush(p, n) after writing n plain bytes another host will read;
// invalidate(p, n) before reading n plain bytes another host wrote.
//
// Thread safety: stateless.
//
//   uint64_t& tail = ...;  // a word inside the mapped region
//   uint64_t first = CoherentAccess::fetch_add(tail, 3, std::memory_order_relaxed);
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "logs/shm/shm_cache.h"

namespace nrx::logs {

struct CoherentAccess {
  // Region words are plain uint64_t in mapped memory; std::atomic_ref makes each access atomic.
  // It must not fall back to a lock (a lock table is per process, useless across processes).
  static_assert(std::atomic_ref<uint64_t>::is_always_lock_free, "region atomics must be lock-free");
  static_assert(std::atomic_ref<uint64_t>::required_alignment == alignof(uint64_t),
                "region words are naturally aligned, which must suffice for atomic_ref");

  static uint64_t load(const uint64_t& word, std::memory_order order) {
    // const_cast: atomic_ref<const T> is C++26; the mapping is writable, a load does not write.
    return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(word)).load(order);
  }
  static void store(uint64_t& word, uint64_t value, std::memory_order order) {
    std::atomic_ref<uint64_t>(word).store(value, order);
  }
  // Strong compare-exchange (callers loop where a spurious failure would only cost a retry).
  static bool compare_exchange(uint64_t& word, uint64_t& expected, uint64_t desired, std::memory_order success,
                               std::memory_order failure) {
    return std::atomic_ref<uint64_t>(word).compare_exchange_strong(expected, desired, success, failure);
  }
  static uint64_t fetch_add(uint64_t& word, uint64_t value, std::memory_order order) {
    return std::atomic_ref<uint64_t>(word).fetch_add(value, order);
  }
  static uint64_t fetch_sub(uint64_t& word, uint64_t value, std::memory_order order) {
    return std::atomic_ref<uint64_t>(word).fetch_sub(value, order);
  }
  static uint64_t fetch_or(uint64_t& word, uint64_t value, std::memory_order order) {
    return std::atomic_ref<uint64_t>(word).fetch_or(value, order);
  }
  static uint64_t fetch_and(uint64_t& word, uint64_t value, std::memory_order order) {
    return std::atomic_ref<uint64_t>(word).fetch_and(value, order);
  }
  // Called in noncoherent mode only (coherent memory needs neither).
  static void flush(const void* bytes, size_t n) { shm::cache::write_back(bytes, n); }
  static void invalidate(const void* bytes, size_t n) { shm::cache::invalidate(bytes, n); }
};

}  // namespace nrx::logs
