// The data path of `nrx sweep` (sweep.h): the measured loops of each subject. Every point builds
// its own log (LatencyLog<RingLog>, so every call binds statically) and subject, runs a warm-up,
// then its repetitions; workers are pinned like `nrx boot` pins them (one emulated node per
// replica) and time one operation in settings.sample_every with the TSC into a buffer allocated
// before the clock starts, so the measured loop never allocates.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/cacheline.h"
#include "base/spin.h"
#include "kernel/boot/topology.h"
#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/replica.h"
#include "kernel/nr/rwlock.h"
#include "logs/latency/latency_log.h"
#include "logs/latency/tsc.h"
#include "logs/ring/ring_log.h"
#include "tools/nrx/sweep.h"

namespace nrx::tools::sweep {
namespace {

using LatencyRing = logs::LatencyLog<logs::RingLog>;

// Samples kept per repetition over all threads (8 bytes each): bounds the buffers at 16 MiB.
constexpr size_t kMaxSamplesTotal = size_t{1} << 21;
constexpr size_t kMinSamplesPerThread = size_t{1} << 12;
constexpr uint32_t kLogEntryBytes = 32;  // the log subject's entries, as in bench_log

// A worker's operation stream: the delays' xorshift64* (its replay cursor goes unused).
using Rng = logs::DelayRng;

// One worker's counters and timed operations; its own cache lines.
struct alignas(kInterferenceSize) Worker {
  uint64_t ops = 0;
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t sink = 0;  // read results, so the compiler keeps the reads
  std::string error;
  std::vector<uint64_t> samples;  // (ticks << 1) | is_write; capacity fixed before the clock
  size_t n_samples = 0;

  void reset() {
    ops = reads = writes = 0;
    n_samples = 0;
    error.clear();
  }
  void record(uint64_t ticks, bool write) {
    if (n_samples < samples.size()) samples[n_samples++] = (ticks << 1) | (write ? 1 : 0);
  }
};

// The start/stop protocol of one phase: workers check in, wait for go, run until stop.
struct Phase {
  std::atomic<uint32_t> ready{0};
  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};

  void check_in_and_wait() {
    // release/acquire: the coordinator starts the clock only after every worker is set up.
    ready.fetch_add(1, std::memory_order_release);
    while (!go.load(std::memory_order_acquire)) cpu_relax();
  }
  // relaxed: a flag polled every operation; a few extra operations after it flips are counted.
  bool stopped() const { return stop.load(std::memory_order_relaxed); }
};

double percentile(std::vector<uint64_t>& v, double q, const logs::Tsc& tsc) {
  if (v.empty()) return std::nan("");
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return tsc.to_ns(v[k]);
}

// Merges the workers' samples into percentiles.
void fill_percentiles(std::vector<Worker>& workers, Repetition& rep) {
  const logs::Tsc& tsc = logs::Tsc::get();
  std::vector<uint64_t> all, reads, writes;
  for (const Worker& w : workers) {
    for (size_t i = 0; i < w.n_samples; ++i) {
      const uint64_t ticks = w.samples[i] >> 1;
      all.push_back(ticks);
      ((w.samples[i] & 1) != 0 ? writes : reads).push_back(ticks);
    }
  }
  rep.samples = all.size();
  rep.p50_ns = percentile(all, 0.50, tsc);
  rep.p99_ns = percentile(all, 0.99, tsc);
  rep.read_p50_ns = percentile(reads, 0.50, tsc);
  rep.read_p99_ns = percentile(reads, 0.99, tsc);
  rep.write_p50_ns = percentile(writes, 0.50, tsc);
  rep.write_p99_ns = percentile(writes, 0.99, tsc);
}

// Runs |threads| workers for |ms| milliseconds: body(worker index, Worker&, Phase&) is the loop.
// Returns the wall time from go to the last join.
template <typename Body>
double run_phase(uint32_t threads, uint32_t ms, std::vector<Worker>& workers, Body&& body) {
  Phase phase;
  for (Worker& w : workers) w.reset();
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (uint32_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] { body(t, workers[t], phase); });
  }
  // acquire: pairs with each worker's check-in, so every worker is set up before the clock starts.
  while (phase.ready.load(std::memory_order_acquire) < threads) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  // release: pairs with check_in_and_wait's acquire.
  phase.go.store(true, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));  // the measurement itself
  phase.stop.store(true, std::memory_order_relaxed);
  for (std::thread& th : pool) th.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<Worker> make_workers(uint32_t threads) {
  std::vector<Worker> workers(threads);
  const size_t per_thread = std::max(kMinSamplesPerThread, kMaxSamplesTotal / threads);
  for (Worker& w : workers) w.samples.assign(per_thread, 0);  // faulted in before any clock
  return workers;
}

logs::LogOptions log_options(const Settings& s, uint32_t entry_size, uint32_t replicas) {
  logs::LogOptions lo;
  lo.entry_size = entry_size;
  lo.slot_count = s.log_slots;
  lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, replicas);
  lo.numa_node = s.log_node;
  return lo;
}

Result<boot::Topology> placement(uint32_t nodes) { return boot::Topology::detect().emulate(nodes); }

std::string first_error(const std::vector<Worker>& workers) {
  for (const Worker& w : workers) {
    if (!w.error.empty()) return w.error;
  }
  return "";
}

}  // namespace

// ---- log: append + exec of the decorated ring, each thread its own replica (as bench_log) ------

Result<std::vector<Repetition>> run_log_point(const Settings& s, const Config& c, const logs::LatencyProfile& p) {
  const uint32_t threads = c.threads;
  const uint32_t batch = c.batch;
  if (batch == 0 || batch > kMaxLogBatch) return Status::invalid_argument("log batch must be 1.." + std::to_string(kMaxLogBatch));
  std::unique_ptr<nr::CombinerLock[]> locks(new nr::CombinerLock[threads]);
  logs::LogOptions lo = log_options(s, kLogEntryBytes, threads);
  LatencyRing* log_raw = nullptr;
  // The lagging-replica hook applies a replica whose thread is descheduled or done, never blocking
  // (try_lock), so appenders waiting on each other cannot deadlock.
  lo.on_lagging = [&locks, &log_raw, threads](uint32_t, logs::ReplicaId r) {
    if (r >= threads || !locks[r].try_lock()) return;
    (void)log_raw->exec(r, [](const logs::Entry&) {});
    locks[r].unlock();
  };
  NRX_ASSIGN_OR_RETURN(std::unique_ptr<LatencyRing> log, logs::with_latency<logs::RingLog>(p, &logs::RingLog::create)(lo));
  log_raw = log.get();
  for (uint32_t t = 0; t < threads; ++t) {
    NRX_ASSIGN_OR_RETURN(logs::ReplicaId r, log->register_replica());
    if (r != t) return Status::internal("unexpected replica id");
  }
  NRX_ASSIGN_OR_RETURN(boot::Topology topo, placement(threads));
  const logs::Tsc& tsc = logs::Tsc::get();
  std::vector<Worker> workers = make_workers(threads);

  auto body = [&](uint32_t t, Worker& w, Phase& phase) {
    boot::pin_current_thread(topo.nodes[t].cpus);
    std::array<std::byte, kMaxLogBatch * kLogEntryBytes> src;
    Rng rng(s.seed * 0x9e3779b97f4a7c15ull + t);
    for (size_t i = 0; i < src.size(); i += sizeof(uint64_t)) {
      const uint64_t x = rng.next();
      std::memcpy(src.data() + i, &x, sizeof x);
    }
    std::array<std::span<const std::byte>, kMaxLogBatch> entries;
    for (size_t i = 0; i < entries.size(); ++i) entries[i] = std::span(src).subspan(i * kLogEntryBytes, kLogEntryBytes);
    uint64_t sink = 0;
    auto visit = [&sink](const logs::Entry& e) { sink += static_cast<uint64_t>(e.data[0]); };
    const auto me = static_cast<logs::ReplicaId>(t);
    uint32_t until_sample = s.sample_every;
    phase.check_in_and_wait();
    while (!phase.stopped()) {
      const bool timed = --until_sample == 0;
      const uint64_t t0 = timed ? tsc.now() : 0;
      locks[t].lock();  // another thread's lagging hook may be applying our replica right now
      auto appended = log->append(me, logs::Batch(entries.data(), batch), visit);
      (void)log->exec(me, visit);
      locks[t].unlock();
      if (!appended.ok()) {
        w.error = appended.status().to_string();
        break;
      }
      if (timed) {
        w.record(tsc.now() - t0, true);
        until_sample = s.sample_every;
      }
      w.ops += batch;
      w.writes += batch;
    }
    w.sink = sink;
  };

  (void)run_phase(threads, s.warmup_ms, workers, body);
  if (std::string e = first_error(workers); !e.empty()) return Status::internal("log subject: " + e);
  std::vector<Repetition> reps;
  for (uint32_t k = 0; k < s.repeat; ++k) {
    Repetition rep;
    rep.seconds = run_phase(threads, s.duration_ms, workers, body);
    if (std::string e = first_error(workers); !e.empty()) return Status::internal("log subject: " + e);
    for (const Worker& w : workers) {
      rep.ops += w.ops;
      rep.writes += w.writes;
    }
    rep.appended = rep.ops;
    rep.rounds = rep.ops / batch;
    fill_percentiles(workers, rep);
    reps.push_back(rep);
  }
  return reps;
}

// ---- hashmap: NR hash map replicated over the decorated ring --------------------------------

Result<std::vector<Repetition>> run_hashmap_point(const Settings& s, const Config& c, const logs::LatencyProfile& p) {
  using Map = nr::HashMap;
  using Group = nr::ReplicaGroup<Map, LatencyRing>;
  using MapReplica = nr::Replica<Map, LatencyRing>;
  const uint32_t threads = c.threads;
  const uint32_t replicas = c.replicas;
  NRX_ASSIGN_OR_RETURN(std::unique_ptr<Group> group,
                       Group::create(log_options(s, sizeof(Map::WriteOp), replicas),
                                     logs::with_latency<logs::RingLog>(p, &logs::RingLog::create)));
  NRX_ASSIGN_OR_RETURN(boot::Topology topo, placement(replicas));

  // Every key present before the clock starts: puts assign, nothing allocates.
  Map initial(static_cast<size_t>(s.keys) * 2);
  for (uint64_t k = 0; k < s.keys; ++k) (void)initial.dispatch_mut({Map::WriteOp::kPut, k, k});
  std::vector<MapReplica*> reps;
  nr::ReplicaOptions ro;
  ro.max_threads = (threads + replicas - 1) / replicas;
  for (uint32_t n = 0; n < replicas; ++n) {
    // Built on a thread pinned to its node, so first touch places its memory there (as boot does).
    Result<MapReplica*> made = Status::internal("not created");
    std::thread([&] {
      boot::pin_current_thread(topo.nodes[n].cpus);
      made = group->add_replica(initial, ro);
    }).join();
    if (!made.ok()) return made.status();
    reps.push_back(*made);
  }
  // Thread t works on replica t % R, with a token registered once and reused by each phase's thread.
  std::vector<nr::ThreadToken> tokens;
  for (uint32_t t = 0; t < threads; ++t) {
    NRX_ASSIGN_OR_RETURN(nr::ThreadToken tok, reps[t % replicas]->register_thread());
    tokens.push_back(tok);
  }

  const logs::Tsc& tsc = logs::Tsc::get();
  std::vector<Worker> workers = make_workers(threads);
  // A put when the low 16 bits fall under the threshold: no division per operation.
  const uint64_t write_threshold = uint64_t{c.write_pct} * 65536 / 100;
  const uint64_t keys = s.keys;

  auto body = [&](uint32_t t, Worker& w, Phase& phase) {
    const uint32_t r = t % replicas;
    boot::pin_current_thread(topo.nodes[r].cpus);
    MapReplica& rep = *reps[r];
    const nr::ThreadToken token = tokens[t];
    Rng rng(s.seed * 0x9e3779b97f4a7c15ull + t);
    uint32_t until_sample = s.sample_every;
    uint64_t sink = 0;
    phase.check_in_and_wait();
    while (!phase.stopped()) {
      const uint64_t x = rng.next();
      const uint64_t key = (x >> 16) % keys;
      const bool write = (x & 0xffff) < write_threshold;
      const bool timed = --until_sample == 0;
      const uint64_t t0 = timed ? tsc.now() : 0;
      if (write) {
        Result<Map::Response> done = rep.execute_mut({Map::WriteOp::kPut, key, x}, token);
        if (!done.ok()) {
          w.error = done.status().to_string();
          break;
        }
        ++w.writes;
      } else {
        sink += rep.execute({Map::ReadOp::kGet, key}, token).value_or(0);
        ++w.reads;
      }
      if (timed) {
        w.record(tsc.now() - t0, write);
        until_sample = s.sample_every;
      }
      ++w.ops;
    }
    w.sink = sink;
  };

  auto rounds = [&] {
    uint64_t b = 0, o = 0;
    for (MapReplica* m : reps) {
      b += m->combined_batches();
      o += m->combined_ops();
    }
    return std::pair<uint64_t, uint64_t>(b, o);
  };

  (void)run_phase(threads, s.warmup_ms, workers, body);
  if (std::string e = first_error(workers); !e.empty()) return Status::internal("hashmap subject: " + e);
  std::vector<Repetition> out;
  for (uint32_t k = 0; k < s.repeat; ++k) {
    const auto before = rounds();
    Repetition rep;
    rep.seconds = run_phase(threads, s.duration_ms, workers, body);
    if (std::string e = first_error(workers); !e.empty()) return Status::internal("hashmap subject: " + e);
    const auto after = rounds();
    rep.rounds = after.first - before.first;
    rep.appended = after.second - before.second;
    for (const Worker& w : workers) {
      rep.ops += w.ops;
      rep.reads += w.reads;
      rep.writes += w.writes;
    }
    fill_percentiles(workers, rep);
    out.push_back(rep);
  }
  // Bring every replica to the tail before the group goes, so no thread is left mid-combine.
  for (MapReplica* m : reps) m->sync();
  return out;
}

}  // namespace nrx::tools::sweep
