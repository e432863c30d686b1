// bench_nr_hashmap: the node-replicated hash map (nr::Replica<nr::HashMap, logs::RingLog>)
// beside three concurrent-map baselines, in one binary and one run (README.md).
//
// Throughput cases, `map/<variant>/write_pct:W[/replicas:R]/real_time/threads:T`: T threads run a
// stream of gets and puts (W % puts) over a prefilled key space; every variant draws the stream
// from the same per-thread xorshift generator and no operation allocates (every key exists, so a
// put assigns). Variants, baseline first:
//   shared_mutex  std::unordered_map + std::shared_mutex (the reference: vs_shared_mutex = 1)
//   tbb           tbb::concurrent_hash_map (accessor locks per element)
//   urcu          liburcu's lock-free cds_lfht (memb flavour); values are atomics updated in place
//   nr            R replicas of nr::HashMap, thread i on replica i % R, one 2^16-slot ring log
// Counters: items_per_second (ops/s of all threads) and vs_shared_mutex (this case's ops/s over
// shared_mutex's at the same write ratio and thread count).
//
// Overhead cases, single thread, one operation per iteration, timed in CPU time (steadier than
// wall time on a shared machine): NR's execute() (a get) against std::unordered_map::find on the
// same contents, and execute_mut() (a put) against try_emplace + assign. Counters: ns_per_op and
// vs_raw (ns/op over the raw operation's). A diagnostic case, raw_find_seq_cst, adds to the raw
// find only the reader-flag stores NR's read takes (DistributedRwLock::lock_shared's seq_cst store
// is a full fence on x86), to show what that fence alone costs.
#include <benchmark/benchmark.h>
#include <oneapi/tbb/concurrent_hash_map.h>
#include <urcu/urcu-memb.h>  // the RCU flavour goes before rculfhash.h
#include <urcu/rculfhash.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/cacheline.h"
#include "base/check.h"
#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/replica.h"
#include "logs/ring/ring_log.h"
#include "tools/bench/bench_support.h"

namespace nrx::bench {
namespace {

// 2^15 keys (inside the 10^4..10^5 the workload calls for), all present before a case starts.
constexpr unsigned kKeyBits = 15;
constexpr uint64_t kKeys = uint64_t{1} << kKeyBits;
constexpr uint32_t kLogSlots = 1u << 16;
constexpr uint64_t kSeed = 0x6e72782d62656e63ull;
constexpr int kMaxReplicas = 2;
constexpr int kWritePcts[] = {0, 10, 60, 100};

uint64_t initial_value(uint64_t key) { return nr::mix64(key); }

// One operation of the stream: the key from the top bits, put-or-get from the low 32.
struct Op {
  uint64_t key;
  bool write;
};
inline Op draw(XorShift64& rng, uint64_t write_pct, uint64_t* value) {
  const uint64_t r = rng.next();
  *value = r;
  // ((r mod 2^32) * 100) >> 32 is uniform in 0..99 without a division.
  return Op{r >> (64 - kKeyBits), (((r & 0xffffffffull) * 100) >> 32) < write_pct};
}

// ---------------------------------------------------------------------------------------------
// Variants. Each is built once per benchmark run by Setup (before the threads start) and exposes
// attach/detach (per-thread registration) and get/put returning the value seen (0 if absent).

class SharedMutexMap {
 public:
  struct Handle {};

  explicit SharedMutexMap(const benchmark::State&) {
    map_.reserve(kKeys);
    for (uint64_t k = 0; k < kKeys; ++k) map_.emplace(k, initial_value(k));
  }
  Handle attach(const benchmark::State&) { return {}; }
  void detach(Handle&) {}

  uint64_t get(Handle&, uint64_t key) {
    std::shared_lock lock(mu_);
    auto it = map_.find(key);
    return it == map_.end() ? 0 : it->second;
  }
  uint64_t put(Handle&, uint64_t key, uint64_t value) {
    std::unique_lock lock(mu_);
    auto [it, inserted] = map_.try_emplace(key, value);
    return inserted ? 0 : std::exchange(it->second, value);
  }

 private:
  std::shared_mutex mu_;
  std::unordered_map<uint64_t, uint64_t> map_;
};

class TbbMap {
 public:
  struct Handle {};

  explicit TbbMap(const benchmark::State&) : map_(kKeys) {
    for (uint64_t k = 0; k < kKeys; ++k) map_.emplace(k, initial_value(k));
  }
  Handle attach(const benchmark::State&) { return {}; }
  void detach(Handle&) {}

  uint64_t get(Handle&, uint64_t key) {
    Map::const_accessor a;
    return map_.find(a, key) ? a->second : 0;
  }
  uint64_t put(Handle&, uint64_t key, uint64_t value) {
    Map::accessor a;
    map_.insert(a, key);  // finds the existing element (no allocation) and write-locks it
    return std::exchange(a->second, value);
  }

 private:
  using Map = tbb::concurrent_hash_map<uint64_t, uint64_t>;
  Map map_;
};

// liburcu's lock-free resizable hash table. Lookups run under rcu_read_lock; a put on a present
// key swaps the node's atomic value in place (no allocation, like the other variants' assign);
// a put on an absent key (never, after the prefill) adds a node. Nodes are removed and freed
// through call_rcu only at teardown.
class UrcuMap {
 public:
  struct Handle {};

  explicit UrcuMap(const benchmark::State&) {
    urcu_memb_register_thread();
    ht_ = cds_lfht_new_flavor(kKeys, 1, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING, &urcu_memb_flavor, nullptr);
    NRX_CHECK(ht_ != nullptr, "cds_lfht_new_flavor failed");
    urcu_memb_read_lock();
    for (uint64_t k = 0; k < kKeys; ++k) add(k, initial_value(k));
    urcu_memb_read_unlock();
    urcu_memb_unregister_thread();
  }

  ~UrcuMap() {
    urcu_memb_register_thread();
    urcu_memb_read_lock();
    cds_lfht_iter it;
    cds_lfht_first(ht_, &it);
    for (cds_lfht_node* n = cds_lfht_iter_get_node(&it); n != nullptr; n = cds_lfht_iter_get_node(&it)) {
      cds_lfht_next(ht_, &it);
      if (cds_lfht_del(ht_, n) == 0) urcu_memb_call_rcu(&node_of(n)->rcu, &free_node);
    }
    urcu_memb_read_unlock();
    urcu_memb_barrier();  // every call_rcu above has run
    urcu_memb_unregister_thread();
    NRX_CHECK(cds_lfht_destroy(ht_, nullptr) == 0, "cds_lfht_destroy failed");
  }

  UrcuMap(const UrcuMap&) = delete;
  UrcuMap& operator=(const UrcuMap&) = delete;

  Handle attach(const benchmark::State&) {
    urcu_memb_register_thread();
    return {};
  }
  void detach(Handle&) { urcu_memb_unregister_thread(); }

  uint64_t get(Handle&, uint64_t key) {
    urcu_memb_read_lock();
    Node* n = lookup(key);
    // acquire: the same guarantee a lock-based map gives a reader of the value.
    const uint64_t v = n == nullptr ? 0 : n->value.load(std::memory_order_acquire);
    urcu_memb_read_unlock();
    return v;
  }

  uint64_t put(Handle&, uint64_t key, uint64_t value) {
    urcu_memb_read_lock();
    uint64_t old = 0;
    if (Node* n = lookup(key); n != nullptr) {
      // acq_rel: readers of the new value see it as they would after a locked assign.
      old = n->value.exchange(value, std::memory_order_acq_rel);
    } else {
      add(key, value);
    }
    urcu_memb_read_unlock();
    return old;
  }

 private:
  struct Node {
    cds_lfht_node node;  // first: node_of is a cast
    uint64_t key;
    std::atomic<uint64_t> value;
    rcu_head rcu;
  };
  static_assert(offsetof(Node, node) == 0);

  static Node* node_of(cds_lfht_node* n) { return reinterpret_cast<Node*>(n); }
  static Node* node_of(rcu_head* h) {
    return reinterpret_cast<Node*>(reinterpret_cast<std::byte*>(h) - offsetof(Node, rcu));
  }
  static void free_node(rcu_head* h) { delete node_of(h); }
  static int match(cds_lfht_node* n, const void* key) { return node_of(n)->key == *static_cast<const uint64_t*>(key); }

  // Under rcu_read_lock.
  Node* lookup(uint64_t key) {
    cds_lfht_iter it;
    cds_lfht_lookup(ht_, nr::mix64(key), &match, &key, &it);
    cds_lfht_node* n = cds_lfht_iter_get_node(&it);
    return n == nullptr ? nullptr : node_of(n);
  }
  // Under rcu_read_lock. A concurrent add of the same key wins; ours is freed unpublished.
  void add(uint64_t key, uint64_t value) {
    Node* n = new Node{{}, key, {value}, {}};
    cds_lfht_node_init(&n->node);
    cds_lfht_node* existing = cds_lfht_add_unique(ht_, nr::mix64(key), &match, &key, &n->node);
    if (existing != &n->node) {
      node_of(existing)->value.store(value, std::memory_order_release);
      delete n;
    }
  }

  cds_lfht* ht_ = nullptr;
};

// R replicas over one ring log, as `nrx boot` builds them: the log's lagging-replica hook runs
// try_sync() on the replica that holds the head back (a replica whose threads have finished, or
// are descheduled, would otherwise block appends until the log's timeout).
class NrMap {
 public:
  using MapReplica = nr::Replica<nr::HashMap, logs::RingLog>;
  struct Handle {
    MapReplica* replica;
    nr::ThreadToken token;
  };

  explicit NrMap(const benchmark::State& state) {
    const auto replicas = static_cast<uint32_t>(state.range(1));
    logs::LogOptions lo;
    lo.entry_size = sizeof(nr::HashMap::WriteOp);
    lo.slot_count = kLogSlots;
    lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, replicas);
    group_ = nr::ReplicaGroup<nr::HashMap, logs::RingLog>::create(lo, &logs::RingLog::create).value();
    nr::HashMap initial(kKeys);
    for (uint64_t k = 0; k < kKeys; ++k) (void)initial.dispatch_mut({nr::HashMap::WriteOp::kPut, k, initial_value(k)});
    // The default thread limit (as `nrx boot` uses it), raised only where a big machine needs more.
    nr::ReplicaOptions ro;
    const auto per_replica = static_cast<uint32_t>((state.threads() + replicas - 1) / replicas);
    ro.max_threads = std::max(ro.max_threads, per_replica);
    for (uint32_t r = 0; r < replicas; ++r) {
      replicas_.push_back(group_->add_replica(initial, ro).value());
    }
  }

  // Threads are spread evenly: thread i uses replica i % R and registers its own token there.
  Handle attach(const benchmark::State& state) {
    MapReplica* r = replicas_[static_cast<size_t>(state.thread_index()) % replicas_.size()];
    return Handle{r, r->register_thread().value()};
  }
  void detach(Handle&) {}

  uint64_t get(Handle& h, uint64_t key) {
    return h.replica->execute({nr::HashMap::ReadOp::kGet, key}, h.token).value_or(0);
  }
  uint64_t put(Handle& h, uint64_t key, uint64_t value) {
    auto r = h.replica->execute_mut({nr::HashMap::WriteOp::kPut, key, value}, h.token);
    NRX_CHECK(r.ok(), "execute_mut failed (the log stayed full)");
    return r->value_or(0);
  }

 private:
  std::unique_ptr<nr::ReplicaGroup<nr::HashMap, logs::RingLog>> group_;  // the log, replicas, hook
  std::vector<MapReplica*> replicas_;
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

template <typename Map>
void BM_Map(benchmark::State& state) {
  Map& map = *g_map<Map>;
  const auto write_pct = static_cast<uint64_t>(state.range(0));
  typename Map::Handle handle = map.attach(state);
  XorShift64 rng(kSeed + static_cast<uint64_t>(state.thread_index()));
  uint64_t sink = 0;
  uint64_t value = 0;
  for (auto _ : state) {
    const Op op = draw(rng, write_pct, &value);
    sink += op.write ? map.put(handle, op.key, value) : map.get(handle, op.key);
  }
  benchmark::DoNotOptimize(sink);
  map.detach(handle);
  state.SetItemsProcessed(state.iterations());
}

// ---------------------------------------------------------------------------------------------
// Single-thread overhead of NR's two entry points against the bare operation on the same map.

std::unordered_map<uint64_t, uint64_t> raw_map() {
  std::unordered_map<uint64_t, uint64_t> m;
  m.reserve(kKeys);  // as nr::HashMap(kKeys): same buckets, same insertion order
  for (uint64_t k = 0; k < kKeys; ++k) m.emplace(k, initial_value(k));
  return m;
}

struct SingleNr {
  SingleNr() {
    logs::LogOptions lo;
    lo.entry_size = sizeof(nr::HashMap::WriteOp);
    lo.slot_count = kLogSlots;
    log = logs::RingLog::create(std::move(lo)).value();
    nr::HashMap initial(kKeys);
    for (uint64_t k = 0; k < kKeys; ++k) (void)initial.dispatch_mut({nr::HashMap::WriteOp::kPut, k, initial_value(k)});
    replica = nr::Replica<nr::HashMap, logs::RingLog>::create(*log, std::move(initial)).value();
    token = replica->register_thread().value();
  }
  std::unique_ptr<logs::RingLog> log;
  std::unique_ptr<nr::Replica<nr::HashMap, logs::RingLog>> replica;
  nr::ThreadToken token;
};

void BM_ReadRaw(benchmark::State& state) {
  const auto m = raw_map();
  XorShift64 rng(kSeed);
  uint64_t value = 0;
  for (auto _ : state) {
    const Op op = draw(rng, 0, &value);
    auto it = m.find(op.key);
    uint64_t v = it == m.end() ? 0 : it->second;
    benchmark::DoNotOptimize(v);
  }
}

void BM_ReadRawSeqCst(benchmark::State& state) {
  const auto m = raw_map();
  alignas(kInterferenceSize) std::atomic<bool> reader_flag{false};
  XorShift64 rng(kSeed);
  uint64_t value = 0;
  for (auto _ : state) {
    const Op op = draw(rng, 0, &value);
    // seq_cst, then release: exactly the stores of DistributedRwLock::lock_shared / unlock_shared.
    reader_flag.store(true, std::memory_order_seq_cst);
    auto it = m.find(op.key);
    uint64_t v = it == m.end() ? 0 : it->second;
    reader_flag.store(false, std::memory_order_release);
    benchmark::DoNotOptimize(v);
  }
}

void BM_ReadNr(benchmark::State& state) {
  SingleNr nr;
  XorShift64 rng(kSeed);
  uint64_t value = 0;
  for (auto _ : state) {
    const Op op = draw(rng, 0, &value);
    uint64_t v = nr.replica->execute({nr::HashMap::ReadOp::kGet, op.key}, nr.token).value_or(0);
    benchmark::DoNotOptimize(v);
  }
}

void BM_WriteRaw(benchmark::State& state) {
  auto m = raw_map();
  XorShift64 rng(kSeed);
  uint64_t value = 0;
  for (auto _ : state) {
    const Op op = draw(rng, 100, &value);
    auto [it, inserted] = m.try_emplace(op.key, value);
    uint64_t old = inserted ? 0 : std::exchange(it->second, value);
    benchmark::DoNotOptimize(old);
  }
}

void BM_WriteNr(benchmark::State& state) {
  SingleNr nr;
  XorShift64 rng(kSeed);
  uint64_t value = 0;
  for (auto _ : state) {
    const Op op = draw(rng, 100, &value);
    auto r = nr.replica->execute_mut({nr::HashMap::WriteOp::kPut, op.key, value}, nr.token);
    if (!r.ok()) {
      state.SkipWithError(r.status().to_string().c_str());
      break;
    }
    uint64_t old = r->value_or(0);
    benchmark::DoNotOptimize(old);
  }
}

template <typename Map>
void register_map(const std::string& variant, std::vector<int64_t> args, std::vector<std::string> names, int threads) {
  benchmark::RegisterBenchmark(("map/" + variant).c_str(), &BM_Map<Map>)
      ->Args(args)
      ->ArgNames(names)
      ->Threads(threads)
      ->UseRealTime()
      ->Setup(&setup_map<Map>)
      ->Teardown(&teardown_map<Map>);
}

void register_all() {
  // Registration order is run order: each configuration's baseline first (bench_support.h).
  benchmark::RegisterBenchmark("overhead/read/raw_find", &BM_ReadRaw)->Unit(benchmark::kNanosecond);
  benchmark::RegisterBenchmark("overhead/read/raw_find_seq_cst", &BM_ReadRawSeqCst)->Unit(benchmark::kNanosecond);
  benchmark::RegisterBenchmark("overhead/read/nr_execute", &BM_ReadNr)->Unit(benchmark::kNanosecond);
  benchmark::RegisterBenchmark("overhead/write/raw_assign", &BM_WriteRaw)->Unit(benchmark::kNanosecond);
  benchmark::RegisterBenchmark("overhead/write/nr_execute_mut", &BM_WriteNr)->Unit(benchmark::kNanosecond);
  for (int w : kWritePcts) {
    for (int t : thread_counts()) {
      register_map<SharedMutexMap>("shared_mutex", {w}, {"write_pct"}, t);
      register_map<TbbMap>("tbb", {w}, {"write_pct"}, t);
      register_map<UrcuMap>("urcu", {w}, {"write_pct"}, t);
      for (int r = 1; r <= std::min(t, kMaxReplicas); ++r) {
        register_map<NrMap>("nr", {w, r}, {"write_pct", "replicas"}, t);
      }
    }
  }
}

}  // namespace
}  // namespace nrx::bench

int main(int argc, char** argv) {
  nrx::bench::register_all();
  return nrx::bench::run_benchmarks(
      argc, argv,
      {
          {.prefix = "map/", .baseline = "map/shared_mutex", .counter = "vs_shared_mutex",
           .metric = "items_per_second", .ignored_args = {"replicas"}},
          {.prefix = "overhead/read/", .baseline = "overhead/read/raw_find", .counter = "vs_raw", .metric = "cpu_time"},
          {.prefix = "overhead/write/", .baseline = "overhead/write/raw_assign", .counter = "vs_raw",
           .metric = "cpu_time"},
      });
}
