// Stress tests of CNR (kernel/nr/cnr.h) over the concurrent hash map with 4 logs:
//  - linearizability: threads on 2 or 4 replicas mix point ops with scan-reads (size, range sum)
//    and scan-updates (clear) over a small key space and small logs (they wrap and fill); the
//    history is checked whole against MapWithScansModel (scans touch every key, so it does not
//    partition), and every replica's digest must agree at the end;
//  - deadlock freedom: two threads issue overlapping scans (reads and clears) without pause while
//    others update, 10^6 operations in all; it passes if it finishes and the replicas agree. A
//    watchdog aborts with the logs' positions if nothing completes for a long time.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernel/nr/cnr.h"
#include "kernel/nr/ds/concurrent_hashmap.h"
#include "logs/ring/ring_log.h"
#include "tests/kernel/nr/cnr_model.h"
#include "tests/lincheck/lincheck.h"

namespace nrx::nr {
namespace {

using Map = ConcurrentHashMap;
using Group = CnrGroup<Map, HashMapLogMapper, logs::RingLog>;
using Rep = Group::Replica;
using lincheck::MapOp;
using lincheck::MapWithScansModel;

constexpr uint32_t kLogs = 4;

// Sanitizers slow the replicas ~10x and the checker (test code, also instrumented) far more; the
// interleavings they look for show up with fewer operations.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr uint32_t kOpsDivisor = 5;
#else
constexpr uint32_t kOpsDivisor = 1;
#endif

std::unique_ptr<Group> make_group(uint32_t slots) {
  logs::LogOptions o;
  o.slot_count = slots;
  return Group::create(kLogs, o, [](const logs::LogOptions& lo) { return logs::RingLog::create(lo); }).value();
}

std::vector<std::unique_ptr<Rep>> make_replicas(Group& g, uint32_t n) {
  std::vector<std::unique_ptr<Rep>> reps;
  for (uint32_t i = 0; i < n; ++i) reps.push_back(g.make_replica(ReplicaOptions{}).value());
  return reps;
}

// Syncs every replica and expects their digests to be equal.
void expect_replicas_agree(std::vector<std::unique_ptr<Rep>>& reps) {
  std::vector<uint64_t> digests;
  for (auto& r : reps) {
    r->sync();
    digests.push_back(r->inspect([](const Map& m) { return m.digest(); }));
  }
  for (size_t i = 1; i < digests.size(); ++i) EXPECT_EQ(digests[i], digests[0]) << "replica " << i;
}

struct StressConfig {
  uint32_t threads;
  uint32_t replicas;
  uint32_t log_slots;
  uint32_t ops_per_thread;
  uint32_t keys;
};

void PrintTo(const StressConfig& c, std::ostream* os) {
  *os << c.threads << " threads, " << c.replicas << " replicas, " << c.log_slots << " slots, " << c.ops_per_thread
      << " ops/thread, " << c.keys << " keys";
}

std::string name_of(const ::testing::TestParamInfo<StressConfig>& info) {
  const StressConfig& c = info.param;
  return std::to_string(c.threads) + "threads_" + std::to_string(c.replicas) + "replicas_" +
         std::to_string(c.log_slots) + "slots_" + std::to_string(c.keys) + "keys";
}

class CnrMapStress : public ::testing::TestWithParam<StressConfig> {};

// Op mix, in percent: get 35, put 35, remove 20, size 4, range sum 4, clear 2 (10 % scans).
TEST_P(CnrMapStress, HistoryWithScansIsLinearizableAndReplicasAgree) {
  const StressConfig c = GetParam();
  const uint32_t ops = c.ops_per_thread / kOpsDivisor;
  auto g = make_group(c.log_slots);
  auto reps = make_replicas(*g, c.replicas);
  lincheck::Recorder<MapWithScansModel> rec(c.threads, ops);
  std::atomic<bool> go{false};
  std::atomic<uint32_t> failures{0};
  std::vector<std::thread> workers;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t t = 0; t < c.threads; ++t) {
    workers.emplace_back([&, t] {
      Rep& rep = *reps[t % c.replicas];
      auto token = rep.register_thread().value();
      std::mt19937_64 rng(0xC4A5 + t);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (uint32_t i = 0; i < ops; ++i) {
        const uint64_t x = rng();
        const uint64_t key = x % c.keys;
        const uint64_t value = (uint64_t{t + 1} << 24) | i;  // unique, so a stale value is detectable
        const uint32_t kind = static_cast<uint32_t>((x >> 32) % 100);
        lincheck::MapWithScansModel::Input in{MapOp::kGet, key, 0, 0};
        Result<Map::Response> out{Map::Response{}};
        const uint64_t stamp = rec.begin(t);
        if (kind < 35) {
          out = rep.execute({Map::ReadOp::kGet, key}, token);
        } else if (kind < 70) {
          in = {MapOp::kPut, key, value, 0};
          out = rep.execute_mut({Map::WriteOp::kPut, key, value}, token);
        } else if (kind < 90) {
          in = {MapOp::kRemove, key, 0, 0};
          out = rep.execute_mut({Map::WriteOp::kRemove, key, 0}, token);
        } else if (kind < 94) {
          in = {MapOp::kSize, 0, 0, 0};
          out = rep.execute_scan({Map::ScanOp::kSize, 0, 0}, token);
        } else if (kind < 98) {
          const uint64_t lo = (x >> 8) % c.keys, hi = lo + (x >> 16) % (c.keys / 2 + 1);
          in = {MapOp::kRangeSum, lo, 0, hi};
          out = rep.execute_scan({Map::ScanOp::kRangeSum, lo, hi}, token);
        } else {
          in = {MapOp::kClear, 0, 0, 0};
          out = rep.execute_scan_mut({Map::ScanOp::kClear, 0, 0}, token);
        }
        if (!out.ok()) {
          failures.fetch_add(1, std::memory_order_relaxed);
          ADD_FAILURE() << out.status().to_string();
          return;
        }
        rec.end(t, stamp, in, *out);
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& w : workers) w.join();
  const auto ran = std::chrono::steady_clock::now();
  ASSERT_EQ(failures.load(), 0u);

  const auto history = rec.history();
  ASSERT_EQ(history.size(), uint64_t{c.threads} * ops);
  const lincheck::CheckResult result = lincheck::check(history);
  const auto checked = std::chrono::steady_clock::now();
  EXPECT_EQ(result.verdict, lincheck::Verdict::kLinearizable) << result.explanation;
  using ms = std::chrono::milliseconds;
  std::printf("  %zu ops: run %lld ms, check %lld ms, %llu states\n", history.size(),
              static_cast<long long>(std::chrono::duration_cast<ms>(ran - start).count()),
              static_cast<long long>(std::chrono::duration_cast<ms>(checked - ran).count()),
              static_cast<unsigned long long>(result.states_explored));

  expect_replicas_agree(reps);
  // The logs wrapped: this run exercised slot reuse and full logs, not just a fresh buffer.
  for (uint32_t li = 0; li < kLogs; ++li) EXPECT_GT(g->log(li).tail(), uint64_t{2} * c.log_slots) << "log " << li;
}

// Table of configurations: (threads, replicas, log slots, ops/thread, keys).
INSTANTIATE_TEST_SUITE_P(
    Configs, CnrMapStress,
    ::testing::Values(StressConfig{4, 2, 64, 25000, 8},    // two replicas, tiny logs: wrap + full
                      StressConfig{4, 4, 128, 25000, 12},  // a replica per thread
                      StressConfig{6, 2, 256, 15000, 16}),  // more threads than cores: combining
    name_of);

struct DeadlockConfig {
  uint32_t replicas;          // the first two have threads; any others have none
  uint32_t log_slots;
  uint32_t updaters;          // spread over the first two replicas
  uint64_t total_ops;         // all threads together
};

void PrintTo(const DeadlockConfig& c, std::ostream* os) {
  *os << c.replicas << " replicas, " << c.log_slots << " slots, " << c.updaters << " updaters, " << c.total_ops
      << " ops";
}

std::string deadlock_name(const ::testing::TestParamInfo<DeadlockConfig>& info) {
  const DeadlockConfig& c = info.param;
  return std::to_string(c.replicas) + "replicas_" + std::to_string(c.log_slots) + "slots_" +
         std::to_string(c.updaters) + "updaters";
}

class CnrDeadlockFreedom : public ::testing::TestWithParam<DeadlockConfig> {};

TEST_P(CnrDeadlockFreedom, OverlappingScansAndUpdatesAlwaysFinish) {
  const DeadlockConfig c = GetParam();
  const uint64_t total = c.total_ops;  // 10^6 in every build, tsan included (~5 s there)
  constexpr uint32_t kScanners = 2;
  constexpr uint64_t kKeys = 64;
  auto g = make_group(c.log_slots);
  auto reps = make_replicas(*g, c.replicas);
  std::atomic<uint64_t> claimed{0};    // operations handed out
  std::atomic<uint64_t> completed{0};  // operations finished (the watchdog watches this)
  std::atomic<uint64_t> scans{0}, clears{0};
  std::atomic<uint32_t> failures{0};
  std::atomic<bool> go{false}, finished{false};

  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < kScanners + c.updaters; ++t) {
    workers.emplace_back([&, t] {
      const bool scanner = t < kScanners;
      Rep& rep = *reps[t % 2];  // scanners on different replicas, so their scans overlap
      auto token = rep.register_thread().value();
      std::mt19937_64 rng(0xDEAD + t);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      while (claimed.fetch_add(1, std::memory_order_relaxed) < total) {
        const uint64_t x = rng();
        const uint64_t key = x % kKeys;
        bool ok = true;
        if (scanner) {
          switch ((x >> 32) % 4) {
            case 0:
              ok = rep.execute_scan_mut({Map::ScanOp::kClear, 0, 0}, token).ok();
              clears.fetch_add(1, std::memory_order_relaxed);
              break;
            case 1:
              ok = rep.execute_scan({Map::ScanOp::kSize, 0, 0}, token).ok();
              break;
            default:
              ok = rep.execute_scan({Map::ScanOp::kRangeSum, key, key + 16}, token).ok();
              break;
          }
          scans.fetch_add(1, std::memory_order_relaxed);
        } else if ((x >> 32) % 8 == 0) {
          (void)rep.execute({Map::ReadOp::kGet, key}, token);
        } else {
          const auto kind = (x >> 40) % 3 == 0 ? Map::WriteOp::kRemove : Map::WriteOp::kPut;
          ok = rep.execute_mut({kind, key, x}, token).ok();
        }
        if (!ok) failures.fetch_add(1, std::memory_order_relaxed);
        completed.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }

  // Aborts (a hang would otherwise wait for the ctest timeout) when nothing completes for
  // kStall, printing where each replica stands in each log.
  constexpr auto kStall = std::chrono::seconds(120);
  std::thread watchdog([&] {
    uint64_t last = 0;
    auto since = std::chrono::steady_clock::now();
    while (!finished.load(std::memory_order_acquire)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling period, not a wait for a condition
      const uint64_t now = completed.load(std::memory_order_relaxed);
      if (now != last) {
        last = now;
        since = std::chrono::steady_clock::now();
      } else if (std::chrono::steady_clock::now() - since > kStall) {
        std::fprintf(stderr, "no operation completed for %lld s after %llu: deadlock?\n",
                     static_cast<long long>(kStall.count()), static_cast<unsigned long long>(now));
        for (uint32_t li = 0; li < kLogs; ++li) {
          std::fprintf(stderr, "  log %u: head %llu ctail %llu tail %llu;", li,
                       static_cast<unsigned long long>(g->log(li).head()),
                       static_cast<unsigned long long>(g->log(li).ctail()),
                       static_cast<unsigned long long>(g->log(li).tail()));
          for (auto& r : reps) {
            std::fprintf(stderr, " ltail(%u)=%llu", r->id(),
                         static_cast<unsigned long long>(g->log(li).ltail(r->id()).value()));
          }
          std::fprintf(stderr, "\n");
        }
        std::abort();
      }
    }
  });

  go.store(true, std::memory_order_release);
  for (auto& w : workers) w.join();
  finished.store(true, std::memory_order_release);
  watchdog.join();

  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(completed.load(), total);
  EXPECT_GT(scans.load(), 0u);
  expect_replicas_agree(reps);
  // Scan-updates ran at every replica, threadless ones included.
  for (auto& r : reps) EXPECT_GE(r->scans_executed(), clears.load()) << "replica " << r->id();
  std::printf("  %llu ops, %llu scans (%llu clears)\n", static_cast<unsigned long long>(completed.load()),
              static_cast<unsigned long long>(scans.load()), static_cast<unsigned long long>(clears.load()));
}

// Table of configurations: (replicas, log slots, updaters, total ops).
INSTANTIATE_TEST_SUITE_P(
    Configs, CnrDeadlockFreedom,
    ::testing::Values(DeadlockConfig{2, 64, 2, 1000000},   // the required shape: 2 replicas, 4 logs
                      DeadlockConfig{3, 32, 2, 1000000}),  // plus a replica with no threads, tinier logs
    deadlock_name);

}  // namespace
}  // namespace nrx::nr
