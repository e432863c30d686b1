// The data path of `nrx sweep` (sweep.h): the measured loops of each subject. Every point builds
// its own log (LatencyLog<RingLog>, so every call binds statically) and subject, runs a warm-up,
// then its repetitions; workers are pinned like `nrx boot` pins them (one emulated node per
// replica) and time one operation in settings.sample_every with the TSC into a buffer allocated
// before the clock starts, so the measured loop itself never allocates (the subsystems may: an
// NR-vMem unmap returns its pieces in a vector, an NR-FS pwrite copies its data into a payload).
//
// vmem and fs instantiate their subsystem over LatencyLog<RingLog> here: Vspace is a header
// template; FileSystem's definitions come from kernel/fs/fs_impl.h, and only the members used here
// are instantiated (implicitly, in this one file). An explicit `template class` instantiation
// would also instantiate FileSystem::create, which calls L::create(LogOptions), a factory the
// decorator does not have (it wraps an inner log: with_latency), so it does not compile.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
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
#include "kernel/fs/fs_impl.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"
#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/replica.h"
#include "kernel/nr/rwlock.h"
#include "kernel/vmem/vspace.h"
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
    check_in_and_wait([] {});
  }
  // The same, calling idle() while it waits: a vmem core must keep answering shootdowns.
  template <typename Idle>
  void check_in_and_wait(Idle&& idle) {
    // release/acquire: the coordinator starts the clock only after every worker is set up.
    ready.fetch_add(1, std::memory_order_release);
    while (!go.load(std::memory_order_acquire)) {
      idle();
      cpu_relax();
    }
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

// Memory with one pool per entry of |pool_nodes| (emulated nodes of |topo|), each bound to the
// real node behind it where libnuma works (as `nrx fs mount` does).
Result<std::unique_ptr<mem::Memory>> make_memory(const boot::Topology& topo, const std::vector<uint32_t>& pool_nodes,
                                                 uint64_t pool_bytes) {
  mem::MemoryOptions mo;
  mo.nodes = static_cast<uint32_t>(pool_nodes.size());
  mo.pool_bytes = round_up(pool_bytes, mem::kLargeFrameSize);
  if (topo.numa_available) {
    for (uint32_t n : pool_nodes) mo.physical_nodes.push_back(topo.nodes[n].physical_node);
  }
  return mem::Memory::create(mo);
}

// A put, map/unmap or pwrite when the low 16 bits of a draw fall under this: no division per op.
uint64_t write_threshold(const Config& c) { return uint64_t{c.write_pct} * 65536 / 100; }

std::string first_error(const std::vector<Worker>& workers) {
  for (const Worker& w : workers) {
    if (!w.error.empty()) return w.error;
  }
  return "";
}

}  // namespace

// A point's measurement: a warm-up phase, then settings.repeat measured phases of |body|.
// |rounds()| returns the subject's cumulative (append rounds, operations appended), or {0, 0}
// when it does not report them; the difference over each phase goes into its repetition.
// For subjects that do not report their combining.
std::pair<uint64_t, uint64_t> no_rounds() { return {0, 0}; }

template <typename Body, typename Rounds>
Result<std::vector<Repetition>> measure(const Settings& s, uint32_t threads, std::vector<Worker>& workers,
                                        Body& body, const char* subject, Rounds&& rounds) {
  (void)run_phase(threads, s.warmup_ms, workers, body);
  auto failed = [&](const std::string& e) { return Status::internal(std::string(subject) + " subject: " + e); };
  if (std::string e = first_error(workers); !e.empty()) return failed(e);
  std::vector<Repetition> out;
  for (uint32_t k = 0; k < s.repeat; ++k) {
    const std::pair<uint64_t, uint64_t> before = rounds();
    Repetition rep;
    rep.seconds = run_phase(threads, s.duration_ms, workers, body);
    if (std::string e = first_error(workers); !e.empty()) return failed(e);
    const std::pair<uint64_t, uint64_t> after = rounds();
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
  return out;
}

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

  NRX_ASSIGN_OR_RETURN(std::vector<Repetition> reps, measure(s, threads, workers, body, "log", no_rounds));
  for (Repetition& rep : reps) {  // every append carries exactly |batch| entries
    rep.appended = rep.ops;
    rep.rounds = rep.ops / batch;
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
  const uint64_t write_below = write_threshold(c);
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
      const bool write = (x & 0xffff) < write_below;
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

  NRX_ASSIGN_OR_RETURN(std::vector<Repetition> out, measure(s, threads, workers, body, "hashmap", rounds));
  // Bring every replica to the tail before the group goes, so no thread is left mid-combine.
  for (MapReplica* m : reps) m->sync();
  return out;
}

// ---- vmem: NR-vMem map/unmap and Resolve, each thread a core in its own region ---------------

namespace {

constexpr uint64_t kPage = mem::kBaseFrameSize;
// Thread t's region starts at (t + 1) GiB: regions 1 GiB apart, as in bench_vmem, so no two
// threads share a page table below the PDPT.
constexpr uint64_t kVmemRegionStride = uint64_t{1} << 30;
// Pages 0..kVmemResidentPages-1 of a region stay mapped for the whole point: the reads' pages. They
// also keep the region's page tables alive, so the churn below never allocates or frees a table.
// Page 0 is the core's anchor: translating it (a TLB hit) is how a busy core polls for shootdowns.
constexpr uint32_t kVmemResidentPages = 32;
// The next kVmemChurnPages pages are mapped and unmapped in turn by the writes.
constexpr uint32_t kVmemChurnPages = 32;
constexpr uint64_t kVmemRegionPages = kVmemResidentPages + kVmemChurnPages;
// Per replica pool, for the page tables: a PD and a PT per region and the root and PDPT, with room.
constexpr uint64_t kVmemTablePoolBytes = 8ull << 20;

// Where a vmem worker's writes are: the next churn page, and whether it is mapped. Kept across
// phases (a phase may stop between a map and its unmap).
struct alignas(kInterferenceSize) ChurnCursor {
  uint32_t next = 0;
  bool mapped = false;
};

}  // namespace

Result<std::vector<Repetition>> run_vmem_point(const Settings& s, const Config& c, const logs::LatencyProfile& p) {
  using Vspace = vmem::Vspace<LatencyRing>;
  const uint32_t threads = c.threads;
  const uint32_t replicas = c.replicas;
  NRX_ASSIGN_OR_RETURN(boot::Topology topo, placement(replicas));
  // Pools 0..R-1 hold the replicas' page tables (each its node's); pool R is user memory, whose
  // frames the workers map by name (vspace_test's pattern: nothing reads or allocates them).
  std::vector<uint32_t> pool_nodes;
  for (uint32_t r = 0; r < replicas; ++r) pool_nodes.push_back(r);
  pool_nodes.push_back(0);
  const uint32_t user_pool = replicas;
  const uint64_t pool_bytes = std::max<uint64_t>(kVmemTablePoolBytes, threads * kVmemRegionPages * kPage);
  NRX_ASSIGN_OR_RETURN(std::unique_ptr<mem::Memory> memory, make_memory(topo, pool_nodes, pool_bytes));
  vmem::VspaceOptions vo;
  vo.replica_pools.clear();
  for (uint32_t r = 0; r < replicas; ++r) vo.replica_pools.push_back(r);
  vo.log = log_options(s, sizeof(vmem::AddressSpace::WriteOp), replicas);
  vo.max_cores_per_replica = (threads + replicas - 1) / replicas;
  NRX_ASSIGN_OR_RETURN(std::unique_ptr<Vspace> vs,
                       Vspace::create(*memory, vo, logs::with_latency<logs::RingLog>(p, &logs::RingLog::create)));

  auto region = [](uint32_t t) { return (uint64_t{t} + 1) * kVmemRegionStride; };
  auto user_frame = [user_pool](uint32_t t, uint64_t page) {
    return mem::Frame{.pool = user_pool, .offset = (uint64_t{t} * kVmemRegionPages + page) * kPage};
  };
  // Thread t is a core on replica t % R. The set-up thread maps every region's resident pages (a
  // map shoots nothing down), then deschedules every core: a worker schedules its core when its
  // phase starts and deschedules it before leaving, so no Unmap ever waits on a core nobody polls.
  std::vector<Vspace::Core*> cores;
  for (uint32_t t = 0; t < threads; ++t) {
    NRX_ASSIGN_OR_RETURN(Vspace::Core* core, vs->attach_core(t % replicas));
    cores.push_back(core);
  }
  for (uint32_t t = 0; t < threads; ++t) {
    if (Status st = vs->map(*cores[t], user_frame(t, 0), region(t), kVmemResidentPages * kPage, vmem::rights::kWrite);
        !st.ok()) {
      return Status::internal("vmem subject: mapping the resident pages: " + st.to_string());
    }
  }
  for (Vspace::Core* core : cores) vs->deschedule(*core);
  std::vector<ChurnCursor> cursors(threads);

  const logs::Tsc& tsc = logs::Tsc::get();
  std::vector<Worker> workers = make_workers(threads);
  const uint64_t write_below = write_threshold(c);

  auto body = [&](uint32_t t, Worker& w, Phase& phase) {
    const uint32_t r = t % replicas;
    boot::pin_current_thread(topo.nodes[r].cpus);
    Vspace::Core& core = *cores[t];
    ChurnCursor& cursor = cursors[t];
    const uint64_t base = region(t);
    Rng rng(s.seed * 0x9e3779b97f4a7c15ull + t);
    uint32_t until_sample = s.sample_every;
    uint64_t sink = 0;
    // A scheduled core receives shootdowns, so from here until deschedule it must keep polling:
    // while it waits for go, and between operations (vspace.h, thread safety).
    vs->schedule(core);
    auto poll = [&] { (void)vs->translate(core, base, vmem::Access::kRead); };
    phase.check_in_and_wait(poll);
    while (!phase.stopped()) {
      const uint64_t x = rng.next();
      const bool write = (x & 0xffff) < write_below;
      const bool timed = --until_sample == 0;
      const uint64_t t0 = timed ? tsc.now() : 0;
      if (write) {
        // Map the churn page, or unmap it (with the shootdown to every other scheduled core).
        const uint64_t page = kVmemResidentPages + cursor.next;
        const uint64_t va = base + page * kPage;
        Status st = cursor.mapped ? vs->unmap(core, va, kPage).status()
                                  : vs->map(core, user_frame(t, page), va, kPage, vmem::rights::kWrite);
        if (!st.ok()) {
          w.error = std::string(cursor.mapped ? "unmap: " : "map: ") + st.to_string();
          break;
        }
        if (cursor.mapped) cursor.next = (cursor.next + 1) % kVmemChurnPages;
        cursor.mapped = !cursor.mapped;
        ++w.writes;
      } else {
        // A TLB miss on a resident page (never the anchor): the core's entry is dropped, so
        // translate walks the replica, synced to the log first (Resolve, an NR read).
        const uint64_t va = base + (1 + (x >> 16) % (kVmemResidentPages - 1)) * kPage;
        core.tlb().flush(va, kPage);
        Result<vmem::Walk> walk = vs->translate(core, va, vmem::Access::kRead);
        if (!walk.ok()) {
          w.error = "translate: " + walk.status().to_string();
          break;
        }
        sink += walk->paddr;
        ++w.reads;
      }
      if (timed) {
        w.record(tsc.now() - t0, write);
        until_sample = s.sample_every;
      }
      ++w.ops;
      if (write) poll();  // a read's translate has polled already
    }
    vs->deschedule(core);  // answers what was posted to it; receives nothing more
    w.sink = sink;
  };

  auto rounds = [&] {
    uint64_t b = 0, o = 0;
    for (uint32_t r = 0; r < replicas; ++r) {
      b += vs->group().replica(r).combined_batches();
      o += vs->group().replica(r).combined_ops();
    }
    return std::pair<uint64_t, uint64_t>(b, o);
  };

  NRX_ASSIGN_OR_RETURN(std::vector<Repetition> out, measure(s, threads, workers, body, "vmem", rounds));
  return out;
}

// ---- fs: NR-FS 1 KiB pread/pwrite, each thread its own file (fxmark-like) --------------------

namespace {

constexpr uint64_t kFsBlockBytes = 1024;  // one pread or pwrite
constexpr uint64_t kFsFileBlocks = 1024;  // 1 MiB per file: small, so set-up stays short
constexpr uint64_t kFsFileBytes = kFsFileBlocks * kFsBlockBytes;
constexpr uint64_t kFsPrefillBytes = fs::kMaxIo;  // the largest write NR-FS takes
constexpr uint64_t kFsPoolSlack = 8ull << 20;     // beyond the files' data, per replica
constexpr uint32_t kFsLogs = 4;                   // CNR logs, as `nrx fs mount` and bench_fs
static_assert(kFsFileBytes % kFsPrefillBytes == 0);

}  // namespace

Result<std::vector<Repetition>> run_fs_point(const Settings& s, const Config& c, const logs::LatencyProfile& p) {
  using Fs = fs::FileSystem<LatencyRing>;
  const uint32_t threads = c.threads;
  const uint32_t replicas = c.replicas;
  NRX_ASSIGN_OR_RETURN(boot::Topology topo, placement(replicas));
  std::vector<uint32_t> pool_nodes;
  for (uint32_t r = 0; r < replicas; ++r) pool_nodes.push_back(r);
  // Every replica holds every file.
  NRX_ASSIGN_OR_RETURN(std::unique_ptr<mem::Memory> memory,
                       make_memory(topo, pool_nodes, uint64_t{threads} * kFsFileBytes + kFsPoolSlack));
  fs::FsOptions fo;
  fo.logs = kFsLogs;
  fo.replica_pools = pool_nodes;
  fo.log_slots = s.log_slots;
  fo.max_threads_per_replica = (threads + replicas - 1) / replicas;
  // NR-FS sets the logs' geometry itself; the sweep adds the placement (--log-node).
  auto decorated = logs::with_latency<logs::RingLog>(p, &logs::RingLog::create);
  auto create_log = [&decorated, node = s.log_node](const logs::LogOptions& options) {
    logs::LogOptions o = options;
    o.numa_node = node;
    return decorated(o);
  };
  NRX_ASSIGN_OR_RETURN(std::unique_ptr<Fs> nrfs, Fs::create_with(*memory, fo, create_log));

  // Thread t works on replica t % R with a handle made once and reused by each phase's thread, on
  // its own file, created and filled through thread 0's handle; then every replica applies the
  // logs (fsync through a handle on it), so no measured read meets a hole or an unapplied prefill.
  std::vector<fs::Handle> handles;
  for (uint32_t t = 0; t < threads; ++t) {
    NRX_ASSIGN_OR_RETURN(fs::Handle h, nrfs->attach(t % replicas));
    handles.push_back(h);
  }
  std::vector<fs::Ino> inos;
  std::vector<std::byte> chunk(kFsPrefillBytes);
  for (uint32_t t = 0; t < threads; ++t) {
    NRX_ASSIGN_OR_RETURN(fs::Ino ino, nrfs->open(handles[0], "/sweep-" + std::to_string(t), fs::kCreate | fs::kWrite));
    for (uint64_t off = 0; off < kFsFileBytes; off += kFsPrefillBytes) {
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<std::byte>((off + i) * 131 + t);
      NRX_ASSIGN_OR_RETURN(size_t n, nrfs->pwrite(handles[0], ino, chunk, off));
      if (n != chunk.size()) return Status::internal("fs subject: a prefill write was short");
    }
    inos.push_back(ino);
  }
  for (uint32_t r = 0; r < replicas; ++r) {  // thread r is on replica r (R <= T)
    for (fs::Ino ino : inos) {
      NRX_RETURN_IF_ERROR(nrfs->fsync(handles[r], ino));
      NRX_ASSIGN_OR_RETURN(fs::Stat st, nrfs->fstat(handles[r], ino));
      if (st.size != kFsFileBytes) return Status::internal("fs subject: a replica lacks prefill data");
    }
  }
  // The model's P: CNR combiners with writers, one per (replica, log) pair; a file's writes go to
  // log ino mod logs (fs.h).
  uint32_t appenders = 0;
  for (uint32_t r = 0; r < replicas; ++r) {
    uint64_t used = 0;  // bit per log
    for (uint32_t t = r; t < threads; t += replicas) used |= uint64_t{1} << (inos[t] % nrfs->logs());
    appenders += static_cast<uint32_t>(std::popcount(used));
  }

  const logs::Tsc& tsc = logs::Tsc::get();
  std::vector<Worker> workers = make_workers(threads);
  const uint64_t write_below = write_threshold(c);

  auto body = [&](uint32_t t, Worker& w, Phase& phase) {
    boot::pin_current_thread(topo.nodes[t % replicas].cpus);
    fs::Handle& h = handles[t];
    const fs::Ino ino = inos[t];
    Rng rng(s.seed * 0x9e3779b97f4a7c15ull + t);
    std::array<std::byte, kFsBlockBytes> in, out;
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<std::byte>(i * 7 + t);
    uint32_t until_sample = s.sample_every;
    uint64_t sink = 0;
    phase.check_in_and_wait();
    while (!phase.stopped()) {
      const uint64_t x = rng.next();
      const bool write = (x & 0xffff) < write_below;
      const uint64_t offset = ((x >> 16) % kFsFileBlocks) * kFsBlockBytes;
      const bool timed = --until_sample == 0;
      const uint64_t t0 = timed ? tsc.now() : 0;
      Result<size_t> moved = write ? nrfs->pwrite(h, ino, in, offset) : nrfs->pread(h, ino, out, offset);
      if (!moved.ok() || *moved != kFsBlockBytes) {
        w.error = std::string(write ? "pwrite: " : "pread: ") +
                  (moved.ok() ? "moved " + std::to_string(*moved) + " bytes, not 1024" : moved.status().to_string());
        break;
      }
      if (timed) {
        w.record(tsc.now() - t0, write);
        until_sample = s.sample_every;
      }
      if (write) {
        ++w.writes;
      } else {
        sink += static_cast<uint64_t>(out[0]);
        ++w.reads;
      }
      ++w.ops;
    }
    w.sink = sink;
  };

  NRX_ASSIGN_OR_RETURN(std::vector<Repetition> out, measure(s, threads, workers, body, "fs", no_rounds));
  // rounds and appended stay 0: NR-FS does not report its combining
  for (Repetition& rep : out) rep.appenders = appenders;
  return out;
}

}  // namespace nrx::tools::sweep
