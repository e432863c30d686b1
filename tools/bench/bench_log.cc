// bench_log: append + exec throughput of the ring log (logs::RingLog), beside a memcpy bandwidth
// baseline in the same binary and run (README.md).
//
// `log/append_exec/batch:B/real_time/threads:T`: T threads share one log of 2^16 slots of 32-byte
// entries; each thread is its own replica and, per iteration, appends a batch of B entries (one
// reservation) and then execs its replica up to the tail (applying everybody's entries: with T
// threads a replica applies T entries for each one it appends). A per-replica lock, the stand-in
// for NR's combiner lock, lets the lagging-replica hook apply a replica whose thread is descheduled
// or already done, so a full log always progresses. The visitor reads each entry's first word.
//
// `log/memcpy/batch:B/real_time/threads:T` (the baseline): each thread copies the same B x 32
// bytes per iteration from a thread-local source into a thread-local 2 MiB ring (the payload size
// of the log's slots), one memcpy per iteration.
//
// Counters: items_per_second (entries appended per second, all threads), bytes_per_second
// (payload bytes appended or copied per second) and vs_memcpy (this case's bytes/s over memcpy's
// at the same batch size and thread count).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "base/check.h"
#include "kernel/nr/rwlock.h"
#include "logs/ring/ring_log.h"
#include "tools/bench/bench_support.h"

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

// The log of the current run and one replica (with its lock) per thread; built by Setup before
// the threads start, destroyed by Teardown after they have all left the loop.
class LogRun {
 public:
  explicit LogRun(const benchmark::State& state) : threads_(static_cast<uint32_t>(state.threads())) {
    logs::LogOptions lo;
    lo.entry_size = kEntryBytes;
    lo.slot_count = kLogSlots;
    lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, threads_);
    lo.on_lagging = [this](uint32_t, logs::ReplicaId r) { help(r); };
    log_ = logs::RingLog::create(std::move(lo)).value();
    locks_ = std::make_unique<nr::CombinerLock[]>(threads_);
    for (uint32_t t = 0; t < threads_; ++t) {
      // Registered in thread order before any append: thread t owns replica id t.
      NRX_CHECK(log_->register_replica().value() == t, "unexpected replica id");
    }
  }

  logs::RingLog& log() { return *log_; }
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
  std::unique_ptr<logs::RingLog> log_;
  std::unique_ptr<nr::CombinerLock[]> locks_;
};

std::unique_ptr<LogRun> g_run;

void setup_log(const benchmark::State& state) { g_run = std::make_unique<LogRun>(state); }
void teardown_log(const benchmark::State&) { g_run.reset(); }

void BM_AppendExec(benchmark::State& state) {
  LogRun& run = *g_run;
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

void register_all() {
  // Registration order is run order: each configuration's baseline first (bench_support.h).
  for (int64_t b : kBatches) {
    for (int t : thread_counts()) {
      if (t > static_cast<int>(logs::kMaxReplicasLimit)) break;  // one replica per thread
      benchmark::RegisterBenchmark("log/memcpy", &BM_Memcpy)->Arg(b)->ArgName("batch")->Threads(t)->UseRealTime();
      benchmark::RegisterBenchmark("log/append_exec", &BM_AppendExec)
          ->Arg(b)
          ->ArgName("batch")
          ->Threads(t)
          ->UseRealTime()
          ->Setup(&setup_log)
          ->Teardown(&teardown_log);
    }
  }
}

}  // namespace
}  // namespace nrx::bench

int main(int argc, char** argv) {
  nrx::bench::register_all();
  return nrx::bench::run_benchmarks(argc, argv,
                                    {{.prefix = "log/", .baseline = "log/memcpy", .counter = "vs_memcpy",
                                      .metric = "bytes_per_second"}});
}
