// nrx::logs::LatencyProfile: how much delay the latency decorator (latency_log.h) adds to each
// class of log access, and the Delay distributions it draws from.
//
// A Delay is one of: none; fixed n ns; uniform over [a, b] ns; normal(mean, sd), clamped at 0;
// or replayed from measured latencies (one ns value per line of a file, cycled). Its compact
// string form, used by the CLI and printed back by spec(), is
//
//   "0" | "none" | "N" (= fixed:N) | "fixed:N" | "uniform:A:B" | "normal:MEAN:SD" | "replay:PATH"
//
// and a profile is either one Delay for every access class, or a comma-separated list of
// CLASS=DELAY assignments (classes not named get none; "all=" sets every class, and later
// assignments override earlier ones):
//
//   "fixed:100"                       every class 100 ns
//   "all=100,read=uniform:50:150"     every class 100 ns, entry reads 50..150 ns
//   "reserve=300,ctail_read=normal:200:30"
//
// Drawing a sample costs a few instructions and no allocation or lock: fixed is a constant;
// uniform is a random word modulo the range; normal indexes a table of 1024 quantiles of the
// distribution computed when the Delay is made (so the draw needs no log/sqrt; the tails beyond
// the 0.05th/99.95th percentiles are cut); replay walks the file's values with a per-thread
// cursor. The random state (DelayRng: xorshift64* and the replay cursor) belongs to one thread;
// the decorator keeps one per thread, tests pass their own to get a deterministic sequence.
//
// Thread safety: Delay and LatencyProfile are immutable values once made (copies share their
// read-only sample tables); a DelayRng is one thread's.
//
//   auto profile = nrx::logs::LatencyProfile::parse("all=100,read=uniform:50:150").value();
//   nrx::logs::DelayRng rng(/*seed=*/1);
//   uint64_t ns = profile[nrx::logs::Access::kEntryRead].sample_ns(rng);  // 50..150
//   double mean = profile[nrx::logs::Access::kReserve].mean_ns();         // 100
//   std::string spec = profile.spec();                                   // round-trips parse()
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace nrx::logs {

// The classes of log access the decorator charges, one Delay each. The granularity at which each
// is charged is documented in latency_log.h.
enum class Access : uint8_t {
  kReserve = 0,     // the atomic step on the tail that reserves a batch
  kEntryWrite = 1,  // writing one entry (and payload_put: one bulk write)
  kEntryRead = 2,   // reading one entry while applying it (exec, exec_while, apply_own)
  kTailUpdate = 3,  // raising ctail / advancing ltail, once per exec call that applies entries
  kPayloadRead = 4, // payload_get
  kCtailRead = 5,   // ctail(): what every NR read does to learn how far it must be synced
};
inline constexpr size_t kAccessClasses = 6;

// "reserve", "write", "read", "tail_update", "payload_read", "ctail_read".
std::string_view access_name(Access a);
// The class named |name| (as access_name prints it). Errors: kInvalidArgument for another name.
Result<Access> access_from_name(std::string_view name);

// One thread's random state for drawing delays: xorshift64* (Vigna, 2016) plus the replay cursor.
struct DelayRng {
  explicit DelayRng(uint64_t seed) {
    // SplitMix64 of the seed, so that nearby seeds give unrelated streams; never zero.
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    state = (z ^ (z >> 31)) | 1;
    cursor = state >> 40;  // threads start replaying at different lines
  }
  uint64_t next() {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
  }
  uint64_t state;
  uint64_t cursor;  // replay position (taken modulo the sample count)
};

class Delay {
 public:
  enum class Kind : uint8_t { kNone, kFixed, kUniform, kNormal, kReplay };

  // Quantiles in a normal Delay's table (a power of two: drawn with a shift).
  static constexpr uint32_t kNormalTableBits = 10;
  // Largest delay a spec may ask for: 10 s (a typo of a few zeros, not a latency).
  static constexpr uint64_t kMaxNs = 10'000'000'000ull;

  Delay() = default;  // none
  static Delay none() { return {}; }
  // Errors (all factories): kInvalidArgument for a value above kMaxNs, a negative or non-finite
  // value, a uniform range with a > b, or an empty replay.
  static Result<Delay> fixed(uint64_t ns);
  static Result<Delay> uniform(uint64_t lo_ns, uint64_t hi_ns);
  static Result<Delay> normal(double mean_ns, double sd_ns);
  // |source| names where the samples came from (printed by spec()).
  static Result<Delay> replay(std::vector<uint64_t> samples_ns, std::string source);
  // Reads one non-negative integer (ns) per line; blank lines and lines starting with '#' are
  // skipped. Errors: kNotFound (cannot open), kInvalidArgument (a bad line, named by number;
  // no values), kResourceExhausted (more than 16 Mi values).
  static Result<Delay> replay_file(const std::string& path);
  // Parses the compact form in the header comment. Errors: kInvalidArgument naming the problem,
  // or replay_file's.
  static Result<Delay> parse(std::string_view spec);

  Kind kind() const { return kind_; }
  bool is_none() const { return kind_ == Kind::kNone; }
  // The expected value of a sample (what the throughput model uses).
  double mean_ns() const { return mean_ns_; }
  // The canonical compact form: parse(spec()) gives the same delay.
  std::string spec() const;

  // One sample, in ns.
  uint64_t sample_ns(DelayRng& rng) const {
    switch (kind_) {
      case Kind::kNone: return 0;
      case Kind::kFixed: return a_;
      // Modulo bias is below range / 2^64 (ranges stay under 2^34 ns): immaterial.
      case Kind::kUniform: return a_ + rng.next() % (b_ - a_ + 1);
      case Kind::kNormal: return (*table_)[rng.next() >> (64 - kNormalTableBits)];
      case Kind::kReplay: return (*table_)[rng.cursor++ % table_->size()];
    }
    return 0;
  }
  // The sum of |n| samples (n accesses of this class charged in one wait).
  uint64_t sample_total_ns(DelayRng& rng, uint64_t n) const {
    if (kind_ == Kind::kFixed) return a_ * n;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; ++i) sum += sample_ns(rng);
    return sum;
  }

 private:
  Kind kind_ = Kind::kNone;
  uint64_t a_ = 0;      // fixed: the delay; uniform: low end
  uint64_t b_ = 0;      // uniform: high end (inclusive)
  double mean_ns_ = 0;  // expected sample
  double normal_mean_ns_ = 0;  // normal: the requested mean (for spec())
  double normal_sd_ns_ = 0;    // normal: the requested standard deviation (for spec())
  std::string source_;  // replay: the file (or "inline")
  std::shared_ptr<const std::vector<uint64_t>> table_;  // normal: quantiles; replay: the samples
};

struct LatencyProfile {
  std::array<Delay, kAccessClasses> delays{};  // all none: the decorator adds nothing
  // Seeds each thread's DelayRng (mixed with the order in which threads first draw a delay).
  uint64_t seed = 1;
  // Count every access per class (accesses()), for tests; costs a shared atomic increment per
  // charged access, so sweeps leave it off.
  bool count_accesses = false;

  // Every class delayed by |d|.
  static LatencyProfile all(const Delay& d) {
    LatencyProfile p;
    p.delays.fill(d);
    return p;
  }
  // Parses the compact form in the header comment. Errors: kInvalidArgument (an unknown class,
  // a missing '=', an empty item), or Delay::parse's.
  static Result<LatencyProfile> parse(std::string_view spec);

  const Delay& operator[](Access a) const { return delays[static_cast<size_t>(a)]; }
  Delay& operator[](Access a) { return delays[static_cast<size_t>(a)]; }
  bool all_none() const;
  // "none", one delay's spec when every class has it, else "class=delay,..." for every class that
  // is not none.
  std::string spec() const;
};

// The calling thread's DelayRng, seeded on its first use from |seed| and a process-wide count of
// threads that have drawn delays (so two threads never share a stream).
DelayRng& thread_delay_rng(uint64_t seed);

}  // namespace nrx::logs
