// DistributedRwLock: NR's readers-writer lock for one replica (Calciu et al. ASPLOS'17, 4.2).
//
// Each registered reader owns one flag on its own 128-byte line, so readers never write a shared
// line and read-mostly workloads scale; the single writer (the replica's combiner) raises one
// writer flag and waits for every reader flag to drop. Writer preference: a reader that sees the
// writer flag backs off before raising its own flag, so a stream of readers cannot starve the
// combiner, which would stall every update on this replica.
//
// The protocol is Dekker's: a reader stores its flag then loads the writer flag; the writer
// stores its flag then loads the reader flags. Those store->load pairs need seq_cst; everything
// else is acquire/release.
//
// The writer scans only the slots handed out so far (activate_reader), not max_readers: a
// replica sized for 64 threads but used by 2 pays for 2 flags per write.
//
// Thread safety: lock_shared(i)/unlock_shared(i) only from the thread that owns reader slot i,
// after activate_reader(i) returned; lock/unlock from any one thread at a time (the combiner).
//
//   DistributedRwLock lock(/*max_readers=*/8);
//   lock.lock_shared(3);  read();  lock.unlock_shared(3);
//   lock.lock();          write(); lock.unlock();
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "base/cacheline.h"
#include "base/check.h"
#include "base/spin.h"
#include "base/thread_annotations.h"

namespace nrx::nr {

class NRX_CAPABILITY("rwlock") DistributedRwLock {
 public:
  explicit DistributedRwLock(uint32_t max_readers) : max_readers_(max_readers), readers_(new ReaderFlag[max_readers]) {}

  uint32_t max_readers() const { return max_readers_; }
  // True while a writer holds the lock or waits for readers to leave (a snapshot, for tests).
  bool writer_active() const { return writer_.load(std::memory_order_relaxed); }

  // Makes reader slot |reader| one the writer waits for. Call before its first lock_shared.
  void activate_reader(uint32_t reader) {
    NRX_CHECK(reader < max_readers_, "reader slot out of range");
    uint32_t n = active_.load(std::memory_order_relaxed);
    // seq_cst: ordered before this reader's seq_cst flag store, so a writer whose seq_cst load of
    // active_ comes after that store in the total order counts the slot.
    while (n <= reader && !active_.compare_exchange_weak(n, reader + 1, std::memory_order_seq_cst)) {
    }
  }

  void lock() NRX_ACQUIRE() {
    SpinWait wait;
    // seq_cst: the writer flag must be visible before we read the reader flags (Dekker).
    while (writer_.exchange(true, std::memory_order_seq_cst)) wait.pause();
    // seq_cst: see activate_reader.
    const uint32_t active = active_.load(std::memory_order_seq_cst);
    for (uint32_t i = 0; i < active; ++i) {
      // seq_cst: the other half of the store->load pair with lock_shared.
      while (readers_[i].active.load(std::memory_order_seq_cst)) wait.pause();
    }
  }

  // release: the writer's updates are visible to the next reader that sees the flag down.
  void unlock() NRX_RELEASE() { writer_.store(false, std::memory_order_release); }

  void lock_shared(uint32_t reader) NRX_ACQUIRE_SHARED() {
    NRX_DCHECK(reader < max_readers_, "reader slot out of range");
    std::atomic<bool>& mine = readers_[reader].active;
    SpinWait wait;
    for (;;) {
      // Writer preference: do not even announce ourselves while a writer waits or writes.
      while (writer_.load(std::memory_order_acquire)) wait.pause();
      // seq_cst: our flag must be visible before we re-read the writer flag (Dekker).
      mine.store(true, std::memory_order_seq_cst);
      if (!writer_.load(std::memory_order_seq_cst)) return;
      mine.store(false, std::memory_order_relaxed);
    }
  }

  // release: our reads of the replica finish before a writer sees the flag down.
  void unlock_shared(uint32_t reader) NRX_RELEASE_SHARED() {
    readers_[reader].active.store(false, std::memory_order_release);
  }

 private:
  struct alignas(kInterferenceSize) ReaderFlag {
    std::atomic<bool> active{false};
  };
  static_assert(sizeof(ReaderFlag) == kInterferenceSize);

  const uint32_t max_readers_;
  alignas(kInterferenceSize) std::atomic<bool> writer_{false};
  std::atomic<uint32_t> active_{0};  // slots 0..active_-1 may hold readers; read with writer_
  std::unique_ptr<ReaderFlag[]> readers_;
};

// Holds reader slot |reader| of |lock| for a scope. Lets a read return its result directly (no
// named temporary, so the response is built in the caller's return slot).
class NRX_SCOPED_CAPABILITY SharedLockGuard {
 public:
  SharedLockGuard(DistributedRwLock& lock, uint32_t reader) NRX_ACQUIRE_SHARED(lock) : lock_(lock), reader_(reader) {
    lock_.lock_shared(reader_);
  }
  ~SharedLockGuard() NRX_RELEASE() { lock_.unlock_shared(reader_); }
  SharedLockGuard(const SharedLockGuard&) = delete;
  SharedLockGuard& operator=(const SharedLockGuard&) = delete;

 private:
  DistributedRwLock& lock_;
  const uint32_t reader_;
};

// The replica's combiner lock: a test-and-test-and-set word on its own line. Threads only ever
// try_lock it (a thread that fails waits for its op to be done instead, which is the point of
// flat combining).
class NRX_CAPABILITY("mutex") alignas(kInterferenceSize) CombinerLock {
 public:
  // acquire: the previous combiner's replica updates and context writes happen before ours.
  bool try_lock() NRX_TRY_ACQUIRE(true) {
    return !held_.load(std::memory_order_relaxed) && !held_.exchange(true, std::memory_order_acquire);
  }
  // Waits until the lock is free and takes it. Used by sync(), never on the op path.
  void lock() NRX_ACQUIRE() {
    SpinWait wait;
    while (!try_lock()) wait.pause();
  }
  void unlock() NRX_RELEASE() { held_.store(false, std::memory_order_release); }
  bool is_locked() const { return held_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> held_{false};
};
static_assert(sizeof(CombinerLock) == kInterferenceSize);

}  // namespace nrx::nr
