// Shared pieces of the nrx benchmark binaries (tools/bench/README.md): the per-thread RNG every
// variant draws its operations from, the thread counts a sweep covers, and the main() that runs
// Google Benchmark with a ratio reporter, so each case is reported relative to a baseline measured
// in the same run (STYLE.md, "Tests and benchmarks").
//
// How ratios work: a RatioSpec names a family of cases (benchmark names starting with |prefix|) and
// the one among them that is the baseline. Cases are matched with their baseline by configuration:
// the benchmark arguments (minus the variant-only ones in |ignored_args|), the thread count, and
// the repetition index or aggregate name (mean, median). The baseline must be REGISTERED FIRST in
// its configuration (Google Benchmark runs and reports in registration order), so its result is
// known when the other cases are reported; the ratio is then added as a user counter before the
// console, JSON or CSV reporter prints the run. A case whose baseline was filtered out, or ran after
// it (--benchmark_enable_random_interleaving), simply has no ratio.
//
// Thread safety: XorShift64 is one thread's generator; run_benchmarks is main().
//
//   int main(int argc, char** argv) {
//     register_my_benchmarks();  // baseline of each configuration first
//     return nrx::bench::run_benchmarks(argc, argv, {{.prefix = "map/", .baseline = "map/locked",
//                                                     .counter = "vs_locked", .metric = "items_per_second"}});
//   }
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nrx::bench {

// xorshift64* (Vigna, 2016): a few cycles, no allocation, no shared state. Every variant of a
// benchmark draws the same operation stream from it, so RNG cost is identical across variants.
class XorShift64 {
 public:
  explicit XorShift64(uint64_t seed) {
    // SplitMix64 of the seed, so that seeds 0, 1, 2 ... give unrelated streams; never zero.
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    s_ = (z ^ (z >> 31)) | 1;
  }

  uint64_t next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545f4914f6cdd1dull;
  }

 private:
  uint64_t s_;
};

// Thread counts to sweep: 1..N with N = std::thread::hardware_concurrency() (at least 2); above 8
// cores only the powers of two and N, so a sweep stays a few minutes long on a big machine.
std::vector<int> thread_counts();

// One ratio counter (see the header comment).
struct RatioSpec {
  std::string prefix;    // benchmark names of this family start with it ("map/")
  std::string baseline;  // the baseline's registered name ("map/shared_mutex")
  std::string counter;   // the ratio counter added to every case ("vs_shared_mutex")
  // Compared quantity, ratio = case / baseline: a counter ("items_per_second": higher is faster),
  // or "real_time" / "cpu_time": time per iteration (lower is faster); with a time, a `ns_per_op`
  // counter is added too, for cases that do one operation per iteration.
  std::string metric;
  std::vector<std::string> ignored_args = {};  // arg names that only some variants have ("replicas")
};

// Parses Google Benchmark's flags, runs the registered benchmarks with the ratio counters added to
// the console output and to the --benchmark_out file, and returns main()'s exit status.
int run_benchmarks(int argc, char** argv, std::vector<RatioSpec> ratios);

}  // namespace nrx::bench
