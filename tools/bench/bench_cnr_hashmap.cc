// bench_cnr_hashmap: Concurrent Node Replication (nr::ConcurrentReplica over nr::CnrGroup, several
// ring logs) of a thread-safe hash map, against single-log NR (nr::Replica<nr::HashMap>) measured
// in the same run (README.md).
//
// Put cases, `put/<variant>[/logs:L]/replicas:R/real_time/threads:T`: T threads, thread i on
// replica i % R, each putting to its own range of 2^13 keys (distinct across threads, so puts of
// different threads commute and CNR may order them in different logs); every key is present before
// the case starts, so a put assigns and never allocates. Variants, baseline first:
//   nr   R replicas of nr::HashMap on one ring log; the log's lagging-replica hook runs
//        try_sync() on the replica holding the head back (as bench_nr_hashmap and `nrx boot`)
//   cnr  R replicas of nr::ConcurrentHashMap on L ring logs, key k on log k % L
//        (nr::HashMapLogMapper); the group's hook nudges a lagging replica on its own
// Counters: items_per_second (ops/s of all threads), vs_nr (over nr's at the same replicas and
// threads) and ops_per_batch (ops per flat-combining batch: how much combining batched).
//
// Scan-mix cases, `scan_mix/cnr[_no_scans]/logs:4/replicas:2[/scan_pct:S]/real_time/threads:2`: the
// same puts, with S % of the operations replaced by a Size scan-read (execute_scan, all logs at a
// consistent cut). The baseline is the same CNR configuration with no scans (`cnr_no_scans`);
// counter vs_no_scans. Each Size result is checked: puts only assign, so it is the key count.
//
// Every log has 2^14 slots (NR's one, and each of CNR's). ReplicaOptions::max_threads is the
// number of threads on that replica for both, so NR's writer lock scans as few reader flags as it
// can. Tokens are registered by Setup, before the threads start, and handed to them by index.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/check.h"
#include "kernel/nr/cnr.h"
#include "kernel/nr/ds/concurrent_hashmap.h"
#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/replica.h"
#include "logs/ring/ring_log.h"
#include "tools/bench/bench_support.h"

namespace nrx::bench {
namespace {

constexpr unsigned kKeyBitsPerThread = 13;
constexpr uint64_t kKeysPerThread = uint64_t{1} << kKeyBitsPerThread;
constexpr uint32_t kLogSlots = 1u << 14;
constexpr uint64_t kSeed = 0x636e722d62656e63ull;
constexpr int kMaxReplicas = 2;
constexpr int kLogCounts[] = {1, 2, 4};
// The scan mixes: one configuration, two scan ratios.
constexpr int kMixLogs = 4;
constexpr int kMixReplicas = 2;
constexpr int kMixThreads = 2;
constexpr int kScanPcts[] = {1, 10};

uint64_t initial_value(uint64_t key) { return nr::mix64(key); }

// Thread |thread|'s keys: [thread * 2^13, (thread + 1) * 2^13).
uint64_t first_key(int thread) { return static_cast<uint64_t>(thread) * kKeysPerThread; }

// One operation of a thread's stream: the key from the top bits, scan-or-put from the low 32.
struct Op {
  uint64_t key;
  bool scan;
};
inline Op draw(XorShift64& rng, uint64_t base, uint64_t scan_pct, uint64_t* value) {
  const uint64_t r = rng.next();
  *value = r;
  // ((r mod 2^32) * 100) >> 32 is uniform in 0..99 without a division.
  return Op{base + (r >> (64 - kKeyBitsPerThread)), (((r & 0xffffffffull) * 100) >> 32) < scan_pct};
}

// Threads on |replica| when |threads| are spread round-robin over |replicas| (thread i on i % R).
uint32_t threads_on(uint32_t replica, uint32_t threads, uint32_t replicas) {
  return threads / replicas + (replica < threads % replicas ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------
// The baseline: R replicas of nr::HashMap over one ring log. Args: {replicas}.
class NrMap {
 public:
  using MapReplica = nr::Replica<nr::HashMap, logs::RingLog>;
  struct Handle {
    MapReplica* replica;
    nr::ThreadToken token;
  };

  explicit NrMap(const benchmark::State& state) {
    const auto replicas = static_cast<uint32_t>(state.range(0));
    const auto threads = static_cast<uint32_t>(state.threads());
    logs::LogOptions lo;
    lo.entry_size = sizeof(nr::HashMap::WriteOp);
    lo.slot_count = kLogSlots;
    lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, replicas);
    group_ = nr::ReplicaGroup<nr::HashMap, logs::RingLog>::create(lo, &logs::RingLog::create).value();
    nr::HashMap initial(threads * kKeysPerThread);
    for (uint64_t k = 0; k < threads * kKeysPerThread; ++k) {
      (void)initial.dispatch_mut({nr::HashMap::WriteOp::kPut, k, initial_value(k)});
    }
    for (uint32_t r = 0; r < replicas; ++r) {
      nr::ReplicaOptions ro{.max_threads = std::max(1u, threads_on(r, threads, replicas))};
      replicas_.push_back(group_->add_replica(initial, ro).value());
    }
    for (uint32_t t = 0; t < threads; ++t) {
      MapReplica* r = replicas_[t % replicas];
      handles_.push_back(Handle{r, r->register_thread().value()});
    }
  }

  Handle& handle(const benchmark::State& state) { return handles_[static_cast<size_t>(state.thread_index())]; }
  uint64_t put(Handle& h, uint64_t key, uint64_t value) {
    auto r = h.replica->execute_mut({nr::HashMap::WriteOp::kPut, key, value}, h.token);
    NRX_CHECK(r.ok(), "execute_mut failed (the log stayed full)");
    return r->value_or(0);
  }
  uint64_t size(Handle&) { return 0; }  // never called: NR runs no scan mix
  // Ops per combined batch over all replicas (Setup appended nothing: the prefill is copied in).
  double ops_per_batch() const {
    uint64_t ops = 0, batches = 0;
    for (const auto& r : replicas_) {
      ops += r->combined_ops();
      batches += r->combined_batches();
    }
    return batches == 0 ? 0.0 : static_cast<double>(ops) / static_cast<double>(batches);
  }

 private:
  std::unique_ptr<nr::ReplicaGroup<nr::HashMap, logs::RingLog>> group_;  // the log, replicas, hook
  std::vector<MapReplica*> replicas_;
  std::vector<Handle> handles_;     // by thread index
};

// ---------------------------------------------------------------------------------------------
// CNR: R replicas of nr::ConcurrentHashMap over L ring logs. Args: {logs, replicas[, scan_pct]}.
class CnrMap {
 public:
  using Map = nr::ConcurrentHashMap;
  using Group = nr::CnrGroup<Map, nr::HashMapLogMapper, logs::RingLog>;
  using MapReplica = Group::Replica;
  struct Handle {
    MapReplica* replica;
    nr::ThreadToken token;
  };

  explicit CnrMap(const benchmark::State& state) {
    const auto log_count = static_cast<uint32_t>(state.range(0));
    const auto replicas = static_cast<uint32_t>(state.range(1));
    const auto threads = static_cast<uint32_t>(state.threads());
    logs::LogOptions lo;
    lo.slot_count = kLogSlots;
    lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, replicas);
    group_ = Group::create(log_count, lo, [](const logs::LogOptions& o) { return logs::RingLog::create(o); }).value();
    for (uint32_t r = 0; r < replicas; ++r) {
      nr::ReplicaOptions ro{.max_threads = std::max(1u, threads_on(r, threads, replicas))};
      replicas_.push_back(group_->make_replica(ro).value());
    }
    for (uint32_t t = 0; t < threads; ++t) {
      MapReplica* r = replicas_[t % replicas].get();
      handles_.push_back(Handle{r, r->register_thread().value()});
    }
    // Prefill through the replicas (ConcurrentHashMap starts empty): each thread's keys with its
    // own token, then every replica catches up, so the timed loop starts with nothing to apply.
    for (uint32_t t = 0; t < threads; ++t) {
      Handle& h = handles_[t];
      for (uint64_t k = first_key(static_cast<int>(t)); k < first_key(static_cast<int>(t) + 1); ++k) {
        NRX_CHECK(h.replica->execute_mut({Map::WriteOp::kPut, k, initial_value(k)}, h.token).ok(), "prefill put failed");
      }
    }
    for (auto& r : replicas_) r->sync();
    keys_ = threads * kKeysPerThread;
    for (auto& r : replicas_) {
      NRX_CHECK(r->inspect([](const Map& m) { return m.dispatch_scan({Map::ScanOp::kSize, 0, 0}); }) == keys_,
                "prefill: a replica has the wrong key count");
      start_ops_ += r->combined_ops();
      start_batches_ += r->combined_batches();
    }
  }

  Handle& handle(const benchmark::State& state) { return handles_[static_cast<size_t>(state.thread_index())]; }
  uint64_t put(Handle& h, uint64_t key, uint64_t value) {
    auto r = h.replica->execute_mut({Map::WriteOp::kPut, key, value}, h.token);
    NRX_CHECK(r.ok(), "execute_mut failed (a log stayed full)");
    return r->value_or(0);
  }
  uint64_t size(Handle& h) {
    auto r = h.replica->execute_scan({Map::ScanOp::kSize, 0, 0}, h.token);
    NRX_CHECK(r.ok() && r->value_or(0) == keys_, "Size scan failed or saw the wrong key count");
    return **r;
  }
  // Ops per combined batch since the prefill, over all replicas.
  double ops_per_batch() const {
    uint64_t ops = 0, batches = 0;
    for (const auto& r : replicas_) {
      ops += r->combined_ops();
      batches += r->combined_batches();
    }
    if (batches <= start_batches_) return 0.0;
    return static_cast<double>(ops - start_ops_) / static_cast<double>(batches - start_batches_);
  }

 private:
  std::unique_ptr<Group> group_;  // declared first: outlives the replicas
  std::vector<std::unique_ptr<MapReplica>> replicas_;
  std::vector<Handle> handles_;  // by thread index
  uint64_t keys_ = 0;
  uint64_t start_ops_ = 0;
  uint64_t start_batches_ = 0;
};

// The map of the current run, built by Setup before the threads start, destroyed by Teardown
// after they have all left the loop.
template <typename Map>
std::unique_ptr<Map> g_map;

template <typename Map>
void setup_map(const benchmark::State& state) {
  g_map<Map> = std::make_unique<Map>(state);
}
template <typename Map>
void teardown_map(const benchmark::State&) {
  g_map<Map>.reset();
}

// |kScans|: the scan percentage is the third argument; otherwise 100 % puts.
template <typename Map, bool kScans>
void BM_Map(benchmark::State& state) {
  Map& map = *g_map<Map>;
  const uint64_t scan_pct = kScans ? static_cast<uint64_t>(state.range(2)) : 0;
  typename Map::Handle& handle = map.handle(state);
  const uint64_t base = first_key(state.thread_index());
  XorShift64 rng(kSeed + static_cast<uint64_t>(state.thread_index()));
  uint64_t sink = 0;
  uint64_t value = 0;
  for (auto _ : state) {
    const Op op = draw(rng, base, scan_pct, &value);
    sink += op.scan ? map.size(handle) : map.put(handle, op.key, value);
  }
  benchmark::DoNotOptimize(sink);
  state.SetItemsProcessed(state.iterations());
  // Counters are summed over threads, so one thread reports; every thread has left the loop
  // (Google Benchmark's stop barrier), so every batch is counted.
  if (state.thread_index() == 0) {
    if (const double b = map.ops_per_batch(); b > 0) state.counters["ops_per_batch"] = b;
  }
}

template <typename Map, bool kScans>
void register_map(const std::string& name, std::vector<int64_t> args, std::vector<std::string> names, int threads) {
  benchmark::RegisterBenchmark(name.c_str(), &BM_Map<Map, kScans>)
      ->Args(args)
      ->ArgNames(names)
      ->Threads(threads)
      ->UseRealTime()
      ->Setup(&setup_map<Map>)
      ->Teardown(&teardown_map<Map>);
}

void register_all() {
  // Registration order is run order: each configuration's baseline first (bench_support.h).
  for (int t : thread_counts()) {
    for (int r = 1; r <= std::min(t, kMaxReplicas); ++r) {
      register_map<NrMap, false>("put/nr", {r}, {"replicas"}, t);
      for (int l : kLogCounts) register_map<CnrMap, false>("put/cnr", {l, r}, {"logs", "replicas"}, t);
    }
  }
  register_map<CnrMap, false>("scan_mix/cnr_no_scans", {kMixLogs, kMixReplicas}, {"logs", "replicas"}, kMixThreads);
  for (int s : kScanPcts) {
    register_map<CnrMap, true>("scan_mix/cnr", {kMixLogs, kMixReplicas, s}, {"logs", "replicas", "scan_pct"},
                               kMixThreads);
  }
}

}  // namespace
}  // namespace nrx::bench

int main(int argc, char** argv) {
  nrx::bench::register_all();
  return nrx::bench::run_benchmarks(
      argc, argv,
      {
          {.prefix = "put/", .baseline = "put/nr", .counter = "vs_nr", .metric = "items_per_second",
           .ignored_args = {"logs"}},
          {.prefix = "scan_mix/", .baseline = "scan_mix/cnr_no_scans", .counter = "vs_no_scans",
           .metric = "items_per_second", .ignored_args = {"scan_pct"}},
      });
}
