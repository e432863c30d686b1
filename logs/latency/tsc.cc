#include "logs/latency/tsc.h"

#include <time.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace nrx::logs {
namespace {

constexpr uint64_t kWindowNs = 4'000'000;  // one calibration window: 4 ms
constexpr int kWindows = 5;                // odd, so the median is one window's ratio

#if defined(__x86_64__)
// CPUID 0x80000007 EDX bit 8: invariant TSC (constant rate, runs through every C-state).
bool invariant_tsc() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0x80000000u, &eax, &ebx, &ecx, &edx) == 0 || eax < 0x80000007u) return false;
  if (__get_cpuid(0x80000007u, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (edx & (1u << 8)) != 0;
}

// Ticks per nanosecond over one window; 0 when the clocks disagree about time passing.
double calibration_window() {
  const uint64_t t0 = Tsc::monotonic_ns();
  const uint64_t c0 = __rdtsc();
  uint64_t t1 = t0;
  while (t1 - t0 < kWindowNs) t1 = Tsc::monotonic_ns();
  const uint64_t c1 = __rdtsc();
  if (c1 <= c0 || t1 <= t0) return 0;
  return static_cast<double>(c1 - c0) / static_cast<double>(t1 - t0);
}
#endif

constexpr int kOvershootSamples = 255;

uint64_t median(std::array<uint64_t, kOvershootSamples>& v) {
  std::nth_element(v.begin(), v.begin() + kOvershootSamples / 2, v.end());
  return v[kOvershootSamples / 2];
}

}  // namespace

uint64_t Tsc::measure_overshoot() const {
  std::array<uint64_t, kOvershootSamples> empty{}, waited{};
  const uint64_t target = ticks(200);
  for (int i = 0; i < kOvershootSamples; ++i) {
    uint64_t t0 = now_serialised();
    empty[i] = now_serialised() - t0;
    t0 = now_serialised();
    spin_until(now(), target);
    waited[i] = now_serialised() - t0;
  }
  const uint64_t e = median(empty), w = median(waited);
  if (w <= e + target) return 0;
  return std::min(w - e - target, ticks(50));
}

uint64_t Tsc::monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

const Tsc& Tsc::get() {
  static const Tsc tsc;  // calibrated once, on first use (thread-safe initialisation)
  return tsc;
}

Tsc::Tsc() {
#if defined(__x86_64__)
  if (!invariant_tsc()) {
    note_ = "the CPU reports no invariant TSC (CPUID 0x80000007 EDX bit 8); waits spin on CLOCK_MONOTONIC";
    return;
  }
  std::array<double, kWindows> ratios{};
  for (double& r : ratios) r = calibration_window();
  std::sort(ratios.begin(), ratios.end());
  const double median = ratios[kWindows / 2];
  // A TSC below 100 MHz or above 100 GHz is a broken virtual TSC, not a clock to trust.
  if (!(median > 0.1 && median < 100.0)) {
    note_ = "TSC calibration gave an implausible rate; waits spin on CLOCK_MONOTONIC";
    return;
  }
  source_ = Source::kTsc;
  ticks_per_ns_ = median;
  ticks_per_ns_q32_ = static_cast<uint64_t>(std::llround(median * 4294967296.0));
  overshoot_ticks_ = measure_overshoot();
  char buf[128];
  std::snprintf(buf, sizeof buf, "invariant TSC at %.3f GHz (calibrated against CLOCK_MONOTONIC; wait overshoot %.1f ns)",
                median, to_ns(overshoot_ticks_));
  note_ = buf;
#else
  note_ = "no TSC on this architecture; waits spin on CLOCK_MONOTONIC";
#endif
}

}  // namespace nrx::logs
