// nrx::logs::Tsc: a calibrated time-stamp-counter clock and the busy wait behind the latency
// decorator (latency_log.h); `nrx sweep` also times its sampled operations with it.
//
// Algorithm: on x86-64 with an invariant TSC (CPUID 0x80000007, EDX bit 8: the counter ticks at a
// constant rate in every P- and C-state, so ticks convert to time), the first use calibrates the
// counter against CLOCK_MONOTONIC: five 4 ms windows, each reading both clocks at its start and
// end, and the median ratio kept (one preempted window on a busy machine cannot skew it). A wait
// of n ns converts n to ticks once (a 32.32 fixed-point multiply) and spins on rdtsc without a
// pause instruction: a pause costs up to ~140 cycles on recent cores, more than the accuracy the
// decorator promises (within 20 ns at 100 ns). The loop's own overshoot (it exits on the first
// read past the target, ~1.5 clock reads late) is measured after calibration (median of 255 waits
// against 255 empty measurements) and taken off every wait. Without an invariant TSC, or off x86-64, the clock
// falls back to clock_gettime(CLOCK_MONOTONIC) (vDSO, roughly 20-50 ns a read): waits still last
// at least n ns but short ones are coarse; source() and note() say which clock is in use.
//
// Invariants: ticks_per_ns() > 0; with Source::kMonotonic a tick is one nanosecond.
//
// Thread safety: get() calibrates once (a function-local static); the returned clock is
// immutable and safe from any thread. Waits spin on the calling thread only.
//
//   const nrx::logs::Tsc& tsc = nrx::logs::Tsc::get();
//   const uint64_t t0 = tsc.now();
//   tsc.delay_ns(100);                              // spins ~100 ns
//   const double took = tsc.to_ns(tsc.now() - t0);  // ~100
#pragma once

#include <cstdint>
#include <string>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace nrx::logs {

namespace detail {
__extension__ using Uint128 = unsigned __int128;  // GCC/Clang extension; -Wpedantic knows it is one
}  // namespace detail

class Tsc {
 public:
  enum class Source : uint8_t {
    kTsc,        // rdtsc, calibrated against CLOCK_MONOTONIC
    kMonotonic,  // clock_gettime(CLOCK_MONOTONIC): one tick = 1 ns
  };

  // The process-wide clock; the first call calibrates it (~20 ms).
  static const Tsc& get();

  Source source() const { return source_; }
  const char* source_name() const { return source_ == Source::kTsc ? "tsc" : "monotonic"; }
  double ticks_per_ns() const { return ticks_per_ns_; }
  // Why this source was chosen ("invariant TSC at 2.904 GHz", or why the TSC is not used).
  const std::string& note() const { return note_; }

  // The current tick count (not serialising: for waits and operation timings of hundreds of ns).
  uint64_t now() const {
#if defined(__x86_64__)
    if (source_ == Source::kTsc) return __rdtsc();
#endif
    return monotonic_ns();
  }

  // The tick count after every earlier instruction has completed (rdtscp, then lfence so later
  // instructions do not start before the read): the end of a measured interval.
  uint64_t now_serialised() const {
#if defined(__x86_64__)
    if (source_ == Source::kTsc) {
      unsigned aux;
      const uint64_t t = __rdtscp(&aux);
      _mm_lfence();
      return t;
    }
#endif
    return monotonic_ns();
  }

  uint64_t ticks(uint64_t ns) const {
    // 32.32 fixed point; __int128 so a wait of seconds does not overflow.
    return static_cast<uint64_t>((static_cast<detail::Uint128>(ns) * ticks_per_ns_q32_) >> 32);
  }
  double to_ns(uint64_t ticks) const { return static_cast<double>(ticks) / ticks_per_ns_; }

  // Spins until |ticks| ticks have passed since |start| (a value of now()).
  void spin_until(uint64_t start, uint64_t ticks) const {
    while (now() - start < ticks) {
    }
  }

  // Busy-waits |ns| nanoseconds on the calling thread. 0 returns at once.
  void delay_ns(uint64_t ns) const {
    const uint64_t t = ticks(ns);
    if (t <= overshoot_ticks_) return;
    spin_until(now(), t - overshoot_ticks_);
  }
  // How far a wait overshoots its target on this machine and build (the loop exits on the first
  // clock read past the target, plus the call's own reads): measured once, taken off every wait.
  uint64_t overshoot_ticks() const { return overshoot_ticks_; }

  static uint64_t monotonic_ns();

 private:
  Tsc();
  // Median extra ticks a 200 ns spin_until takes, clamped to [0, 50 ns].
  uint64_t measure_overshoot() const;

  Source source_ = Source::kMonotonic;
  double ticks_per_ns_ = 1.0;
  uint64_t ticks_per_ns_q32_ = uint64_t{1} << 32;
  uint64_t overshoot_ticks_ = 0;
  std::string note_;
};

}  // namespace nrx::logs
