// Waiting helpers for spin loops: a CPU pause, and a bounded wait that yields the core after a
// while (a 2-core machine runs more threads than cores; pure spinning would starve the holder)
// and reports when its deadline has passed, so no loop spins silently forever (DESIGN 3.1).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>

namespace nrx {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// One waiter's state. `pause()` spins briefly, then yields, then sleeps in short, growing naps
// (up to 64 us): with more threads than cores, the thread we wait for (an appender preempted
// between reserving and publishing its slot) needs our core more than we do. `expired()` is true
// once |timeout| (zero: never) has passed since construction; the clock is read every 64 pauses.
class SpinWait {
 public:
  // Reads no clock: constructing one on a path that usually does not wait costs nothing.
  explicit SpinWait(std::chrono::nanoseconds timeout = std::chrono::nanoseconds::zero()) : timeout_(timeout) {}

  void pause() {
    ++spins_;
    if (spins_ < kSpinsBeforeYield) {
      cpu_relax();
    } else if (spins_ < kSpinsBeforeSleep) {
      std::this_thread::yield();
    } else {
      const uint64_t shift = std::min<uint64_t>((spins_ - kSpinsBeforeSleep) / 16, 6);
      std::this_thread::sleep_for(std::chrono::microseconds(1u << shift));
    }
  }

  // The deadline runs from the first call (the first time the caller actually waits).
  bool expired() {
    if (timeout_.count() <= 0 || (spins_ & 63) != 0) return false;
    const Clock::time_point now = Clock::now();
    if (!started_) {
      start_ = now;
      started_ = true;
      return false;
    }
    return now - start_ >= timeout_;
  }

  uint64_t spins() const { return spins_; }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr uint64_t kSpinsBeforeYield = 256;
  static constexpr uint64_t kSpinsBeforeSleep = 512;
  std::chrono::nanoseconds timeout_;
  Clock::time_point start_{};
  bool started_ = false;
  uint64_t spins_ = 0;
};

}  // namespace nrx
