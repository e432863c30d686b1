// bench_log: append + exec throughput of the log backends (logs::RingLog, logs::ShmLog), beside a
// memcpy bandwidth baseline in the same binary and run (README.md).
//
// `log/append_exec/batch:B/real_time/threads:T` (the ring log): T threads share one log of 2^16
// slots of 32-byte entries; each thread is its own replica and, per iteration, appends a batch of
// B entries (one reservation) and then execs its replica up to the tail (applying everybody's
// entries: with T threads a replica applies T entries for each one it appends). A per-replica
// lock, the stand-in for NR's combiner lock, lets the lagging-replica hook apply a replica whose
// thread is descheduled or already done, so a full log always progresses. The visitor reads each
// entry's first word.
//
// `log/append_exec_shm/<mode>/<backing>/batch:B/real_time/threads:T`: the same, over the
// shared-memory log (logs/shm/shm_log.h) in |mode| (coherent, or noncoherent: every append a
// round trip through the creator's sequencer thread, lines flushed and invalidated), its region a transport::Region mapped MAP_SHARED: an anonymous memfd at every batch
// size, and a /dev/shm file (the same tmpfs pages under another name) at the largest batch only.
// A backend that cannot make a working log on this machine is skipped with a note at startup.
//
// `log/memcpy/batch:B/real_time/threads:T` (the baseline): each thread copies the same B x 32
// bytes per iteration from a thread-local source into a thread-local 2 MiB ring (the payload size
// of the log's slots), one memcpy per iteration.
//
// Counters: items_per_second (entries appended per second, all threads), bytes_per_second
// (payload bytes appended or copied per second), vs_memcpy (this case's bytes/s over memcpy's at
// the same batch size and thread count) and, on the append_exec cases, vs_ring (bytes/s over the
// ring log's at the same batch size and thread count: the shm/ring ratio).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/check.h"
#include "base/status.h"
#include "kernel/nr/rwlock.h"
#include "logs/ring/ring_log.h"
#include "logs/shm/shm_log.h"
#include "tools/bench/bench_support.h"
#include "transport/region.h"

namespace nrx::bench {
namespace {

constexpr uint32_t kEntryBytes = 32;
constexpr uint32_t kLogSlots = 1u << 16;
constexpr size_t kRingBytes = size_t{kLogSlots} * kEntryBytes;  // memcpy's destination
constexpr int64_t kBatches[] = {1, 8, 32};
constexpr int64_t kMaxBatch = 32;
constexpr uint64_t kSeed = 0x6e72782d6c6f6721ull;

uint64_t first_word(std::span<const std::byte> data) {
  uint64_t w = 0;
  std::memcpy(&w, data.data(), std::min(sizeof w, data.size()));
  return w;
}

// The entries one thread appends (or copies): kMaxBatch x 32 bytes of its own random data.
struct alignas(64) Source {
  explicit Source(uint64_t seed) {
    XorShift64 rng(seed);
    for (size_t i = 0; i < bytes.size(); i += sizeof(uint64_t)) {
      const uint64_t w = rng.next();
      std::memcpy(bytes.data() + i, &w, sizeof w);
    }
  }
  std::array<std::byte, kMaxBatch * kEntryBytes> bytes;
};

// ---- Backends: how a case makes its log (once per run, in Setup, off the clock) ----------------

// The ring log, in private anonymous memory.
struct RingBackend {
  using Log = logs::RingLog;
  static constexpr const char* kName = "log/append_exec";  // unchanged since the first reference run
  static Result<std::unique_ptr<Log>> create(logs::LogOptions options) { return Log::create(std::move(options)); }
};

// The shared-memory log in |kMode| over a fresh region of kind |kBacking| (kMemfd or kFile, a file
// on /dev/shm), which the log keeps alive (ShmOptions::keep_alive) and frees with itself.
template <logs::ShmMode kMode, transport::RegionKind kBacking>
struct ShmBackend {
  static_assert(kBacking == transport::RegionKind::kMemfd || kBacking == transport::RegionKind::kFile);
  using Log = logs::ShmLog;
  static constexpr const char* kName =
      kMode == logs::ShmMode::kCoherent
          ? (kBacking == transport::RegionKind::kMemfd ? "log/append_exec_shm/coherent/memfd"
                                                       : "log/append_exec_shm/coherent/devshm")
          : (kBacking == transport::RegionKind::kMemfd ? "log/append_exec_shm/noncoherent/memfd"
                                                       : "log/append_exec_shm/noncoherent/devshm");

  // Errors: ShmLog::create's, and
  // transport::Region's (no memfd, /dev/shm full).
  static Result<std::unique_ptr<Log>> create(logs::LogOptions options) {
    logs::ShmOptions shm{.mode = kMode};
    const uint64_t need = Log::region_bytes(options, shm);
    // 0: options or mode refused; create() on no region says why.
    if (need == 0) return Log::create({}, std::move(options), std::move(shm));
    // Regions are whole pages; the log may have more bytes than it needs.
    const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = static_cast<size_t>((need + page - 1) / page * page);
    Result<transport::Region> region =
        kBacking == transport::RegionKind::kMemfd
            ? transport::Region::create_memfd("nrx-bench-log", bytes)
            : transport::Region::create_file("/dev/shm/nrx-bench-log-" + std::to_string(getpid()), bytes,
                                             {.replace_existing = true, .unlink_on_close = true});
    if (!region.ok()) return region.status();
    auto owner = std::make_shared<transport::Region>(std::move(region).value());
    const std::span<std::byte> bytes_view = owner->bytes();
    shm.keep_alive = std::move(owner);
    return Log::create(bytes_view, std::move(options), std::move(shm));
  }
};

template <typename Log>
using CreateLog = Result<std::unique_ptr<Log>> (*)(logs::LogOptions);

logs::LogOptions bench_log_options(uint32_t threads) {
  logs::LogOptions lo;
  lo.entry_size = kEntryBytes;
  lo.slot_count = kLogSlots;
  lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, threads);
  return lo;
}

// ---- append + exec --------------------------------------------------------------------------

// The log of the current run and one replica (with its lock) per thread; built by Setup before
// the threads start, destroyed by Teardown after they have all left the loop. A log that could
// not be made leaves status() not OK, and the case reports it as an error.
template <typename Log>
class LogRun {
 public:
  LogRun(const benchmark::State& state, CreateLog<Log> create)
      : threads_(static_cast<uint32_t>(state.threads())), locks_(std::make_unique<nr::CombinerLock[]>(threads_)) {
    logs::LogOptions lo = bench_log_options(threads_);
    lo.on_lagging = [this](uint32_t, logs::ReplicaId r) { help(r); };
    Result<std::unique_ptr<Log>> log = create(std::move(lo));
    if (!log.ok()) {
      status_ = log.status();
      return;
    }
    log_ = std::move(log).value();
    for (uint32_t t = 0; t < threads_; ++t) {
      // Registered in thread order before any append: thread t owns replica id t.
      NRX_CHECK(log_->register_replica().value() == t, "unexpected replica id");
    }
  }

  const Status& status() const { return status_; }
  Log& log() { return *log_; }
  nr::CombinerLock& lock(logs::ReplicaId r) { return locks_[r]; }

 private:
  // The lagging-replica hook: apply replica |r| for its thread unless that thread is at it.
  // Never blocks (try_lock), so two appenders that wait on each other cannot deadlock.
  void help(logs::ReplicaId r) {
    if (r >= threads_ || !locks_[r].try_lock()) return;
    uint64_t sink = 0;
    (void)log_->exec(r, [&sink](const logs::Entry& e) { sink += first_word(e.data); });
    locks_[r].unlock();
    benchmark::DoNotOptimize(sink);
  }

  const uint32_t threads_;
  std::unique_ptr<nr::CombinerLock[]> locks_;
  std::unique_ptr<Log> log_;  // after locks_: destroyed first, so the hook never sees them gone
  Status status_;
};

// The run of the case in progress, one per log type (cases run one at a time).
template <typename Log>
std::unique_ptr<LogRun<Log>> g_run;

template <typename Backend>
void setup_log(const benchmark::State& state) {
  g_run<typename Backend::Log> = std::make_unique<LogRun<typename Backend::Log>>(state, &Backend::create);
}
template <typename Backend>
void teardown_log(const benchmark::State&) {
  g_run<typename Backend::Log>.reset();
}

template <typename Log>
void BM_AppendExec(benchmark::State& state) {
  LogRun<Log>& run = *g_run<Log>;
  if (!run.status().ok()) {
    state.SkipWithError(run.status().to_string().c_str());
    for (auto _ : state) {
    }  // runs no iteration after SkipWithError; keeps the threads' start/stop barrier
    return;
  }
  const auto batch = static_cast<size_t>(state.range(0));
  const auto me = static_cast<logs::ReplicaId>(state.thread_index());
  const Source src(kSeed + me);
  std::array<std::span<const std::byte>, kMaxBatch> entries;
  for (size_t i = 0; i < entries.size(); ++i) entries[i] = std::span(src.bytes).subspan(i * kEntryBytes, kEntryBytes);
  uint64_t sink = 0;
  auto visit = [&sink](const logs::Entry& e) { sink += first_word(e.data); };
  nr::CombinerLock& mine = run.lock(me);
  for (auto _ : state) {
    mine.lock();  // another thread's lagging hook may be applying our replica right now
    auto appended = run.log().append(me, logs::Batch(entries.data(), batch), visit);
    (void)run.log().exec(me, visit);
    mine.unlock();
    if (!appended.ok()) {
      state.SkipWithError(appended.status().to_string().c_str());
      break;
    }
  }
  benchmark::DoNotOptimize(sink);
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(batch * kEntryBytes));
}

// ---- memcpy baseline ------------------------------------------------------------------------

void BM_Memcpy(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0)) * kEntryBytes;
  const Source src(kSeed + static_cast<uint64_t>(state.thread_index()));
  std::unique_ptr<std::byte[]> ring(new std::byte[kRingBytes]);
  std::memset(ring.get(), 0, kRingBytes);  // fault the pages in before the clock starts
  size_t off = 0;
  for (auto _ : state) {
    std::memcpy(ring.get() + off, src.bytes.data(), bytes);
    off += bytes;
    if (off == kRingBytes) off = 0;  // bytes divides kRingBytes
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

// ---- Registration ---------------------------------------------------------------------------

template <typename Backend>
void register_append_exec(int64_t batch, int threads) {
  benchmark::RegisterBenchmark(Backend::kName, &BM_AppendExec<typename Backend::Log>)
      ->Arg(batch)
      ->ArgName("batch")
      ->Threads(threads)
      ->UseRealTime()
      ->Setup(&setup_log<Backend>)
      ->Teardown(&teardown_log<Backend>);
}

// A backend compared with the ring: registered at every batch size, or only at the largest.
struct Variant {
  void (*register_case)(int64_t batch, int threads);
  bool every_batch;
};

// Makes |Backend|'s log as a case would and pushes one entry through it (append, exec). OK: the
// variant joins |variants|; an error: it is skipped, with a note on stderr and in the context.
template <typename Backend>
void add_variant(std::vector<Variant>& variants, bool every_batch) {
  Status status = ok_status();
  Result<std::unique_ptr<typename Backend::Log>> log = Backend::create(bench_log_options(1));
  if (!log.ok()) {
    status = log.status();
  } else if (Result<logs::ReplicaId> r = (*log)->register_replica(); !r.ok()) {
    status = r.status();
  } else {
    const std::array<std::byte, kEntryBytes> entry{};
    const std::array<std::span<const std::byte>, 1> batch = {std::span<const std::byte>(entry)};
    auto ignore = [](const logs::Entry&) {};
    if (auto a = (*log)->append(*r, logs::Batch(batch), ignore); !a.ok()) {
      status = a.status();
    } else if (auto e = (*log)->exec(*r, ignore); !e.ok()) {
      status = e.status();
    }
  }
  if (!status.ok()) {
    std::fprintf(stderr, "bench_log: skipping %s: %s\n", Backend::kName, status.to_string().c_str());
    benchmark::AddCustomContext(std::string("skipped ") + Backend::kName, status.to_string());
    return;
  }
  variants.push_back({&register_append_exec<Backend>, every_batch});
}

void register_all() {
  using logs::ShmMode;
  using transport::RegionKind;
  std::vector<Variant> variants;
  // One line per backend compared with the ring (a backend this machine cannot run is skipped).
  add_variant<ShmBackend<ShmMode::kCoherent, RegionKind::kMemfd>>(variants, /*every_batch=*/true);
  add_variant<ShmBackend<ShmMode::kCoherent, RegionKind::kFile>>(variants, /*every_batch=*/false);
  add_variant<ShmBackend<ShmMode::kNoncoherent, RegionKind::kMemfd>>(variants, /*every_batch=*/true);

  // Registration order is run order: each configuration's baselines first, memcpy (vs_memcpy)
  // then the ring (vs_ring) (bench_support.h).
  for (int64_t b : kBatches) {
    for (int t : thread_counts()) {
      if (t > static_cast<int>(logs::kMaxReplicasLimit)) break;  // one replica per thread
      benchmark::RegisterBenchmark("log/memcpy", &BM_Memcpy)->Arg(b)->ArgName("batch")->Threads(t)->UseRealTime();
      register_append_exec<RingBackend>(b, t);
      for (const Variant& v : variants) {
        if (v.every_batch || b == kMaxBatch) v.register_case(b, t);
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
      {{.prefix = "log/", .baseline = "log/memcpy", .counter = "vs_memcpy", .metric = "bytes_per_second"},
       {.prefix = "log/append_exec", .baseline = "log/append_exec", .counter = "vs_ring",
        .metric = "bytes_per_second"}});
}
