// Stress tests of node replication: several threads on several replicas hammer a replicated hash
// map and a replicated stack through a small ring log (so it wraps and fills over and over, and
// the lagging-replica hook is exercised); every operation's invocation and response are recorded
// and the history must pass the linearizability checker (per-key decomposition for the map). At
// the end every replica must have the same state digest.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/ds/stack.h"
#include "kernel/nr/replica.h"
#include "logs/ring/ring_log.h"
#include "tests/lincheck/lincheck.h"
#include "tests/lincheck/models.h"

namespace nrx::nr {
namespace {

struct StressConfig {
  uint32_t threads;
  uint32_t replicas;
  uint32_t log_slots;
  uint32_t ops_per_thread;
  uint32_t keys;  // hash map only
};

// Printed by GoogleTest (and so by ctest) instead of the struct's bytes.
void PrintTo(const StressConfig& c, std::ostream* os) {
  *os << c.threads << " threads, " << c.replicas << " replicas, " << c.log_slots << " slots, " << c.ops_per_thread
      << " ops/thread";
}

std::string name_of(const ::testing::TestParamInfo<StressConfig>& info) {
  const StressConfig& c = info.param;
  return std::to_string(c.threads) + "threads_" + std::to_string(c.replicas) + "replicas_" +
         std::to_string(c.log_slots) + "slots";
}

// Sanitizers slow the replicas ~10x and the checker (test code, also instrumented) far more; the
// interleavings they look for show up with fewer operations.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr uint32_t kOpsDivisor = 5;
#else
constexpr uint32_t kOpsDivisor = 1;
#endif

// The threads run at least this many, and more on machines with more cores.
uint32_t scaled(uint32_t threads) {
  return std::max(threads, std::min(16u, std::thread::hardware_concurrency()));
}

// Replicas of D over one ring log whose lagging-replica hook helps the replica behind.
template <typename D>
struct Cluster {
  std::unique_ptr<ReplicaGroup<D, logs::RingLog>> group;
  std::vector<Replica<D, logs::RingLog>*> replicas;

  Cluster(uint32_t n, uint32_t slots) {
    logs::LogOptions o;
    o.entry_size = 32;
    o.slot_count = slots;
    group = ReplicaGroup<D, logs::RingLog>::create(o, &logs::RingLog::create).value();
    for (uint32_t i = 0; i < n; ++i) replicas.push_back(group->add_replica(D{}).value());
  }
  logs::RingLog& log() const { return group->log(); }
};

class NrHashMapStress : public ::testing::TestWithParam<StressConfig> {};

TEST_P(NrHashMapStress, HistoryIsLinearizableAndReplicasAgree) {
  const StressConfig c = GetParam();
  const uint32_t threads = scaled(c.threads);
  const uint32_t ops = c.ops_per_thread / kOpsDivisor;
  Cluster<HashMap> cluster(c.replicas, c.log_slots);
  lincheck::Recorder<lincheck::KvModel> rec(threads, ops);
  std::atomic<bool> go{false};
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto& rep = *cluster.replicas[t % c.replicas];
      auto token = rep.register_thread().value();
      std::mt19937_64 rng(0xC0FFEE + t);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (uint32_t i = 0; i < ops; ++i) {
        const uint64_t x = rng();
        const uint64_t key = x % c.keys;
        const uint64_t value = (uint64_t{t} << 32) | i;  // unique, so a stale value is detectable
        const uint32_t kind = (x >> 32) % 10;
        const uint64_t stamp = rec.begin(t);
        if (kind < 4) {
          auto out = rep.execute({HashMap::ReadOp::kGet, key}, token);
          rec.end(t, stamp, {lincheck::KvOp::kGet, key, 0}, out);
        } else if (kind < 8) {
          auto out = rep.execute_mut({HashMap::WriteOp::kPut, key, value}, token);
          ASSERT_TRUE(out.ok()) << out.status().to_string();
          rec.end(t, stamp, {lincheck::KvOp::kPut, key, value}, *out);
        } else {
          auto out = rep.execute_mut({HashMap::WriteOp::kRemove, key, 0}, token);
          ASSERT_TRUE(out.ok()) << out.status().to_string();
          rec.end(t, stamp, {lincheck::KvOp::kRemove, key, 0}, *out);
        }
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& w : workers) w.join();

  const auto history = rec.history();
  ASSERT_EQ(history.size(), uint64_t{threads} * ops);
  const lincheck::CheckResult result = lincheck::check(history);
  EXPECT_EQ(result.verdict, lincheck::Verdict::kLinearizable) << result.explanation;

  std::vector<uint64_t> digests;
  for (auto& rep : cluster.replicas) {
    rep->sync();
    auto token = rep->register_thread().value();
    digests.push_back(rep->inspect(token, [](const HashMap& m) { return m.digest(); }));
  }
  for (size_t i = 1; i < digests.size(); ++i) EXPECT_EQ(digests[i], digests[0]) << "replica " << i;
  // The log wrapped: this run exercised slot reuse, not just a fresh buffer.
  EXPECT_GT(cluster.log().tail(), uint64_t{2} * c.log_slots);
}

// Table of configurations: (threads, replicas, log slots, ops/thread, keys).
INSTANTIATE_TEST_SUITE_P(
    Configs, NrHashMapStress,
    ::testing::Values(StressConfig{4, 2, 64, 100000, 64},   // two replicas, tiny log: constant wrap + full
                      StressConfig{4, 4, 256, 100000, 16},  // a replica per thread, hot keys
                      StressConfig{8, 2, 1024, 50000, 256}),  // more threads than cores: combining
    name_of);

class NrStackStress : public ::testing::TestWithParam<StressConfig> {};

TEST_P(NrStackStress, HistoryIsLinearizableAndReplicasAgree) {
  const StressConfig c = GetParam();
  const uint32_t threads = scaled(c.threads);
  const uint32_t ops = c.ops_per_thread / kOpsDivisor;
  Cluster<Stack> cluster(c.replicas, c.log_slots);
  lincheck::Recorder<lincheck::StackModel> rec(threads, ops);
  std::atomic<bool> go{false};
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto& rep = *cluster.replicas[t % c.replicas];
      auto token = rep.register_thread().value();
      std::mt19937_64 rng(0xBEEF + t);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (uint32_t i = 0; i < ops; ++i) {
        const bool push = rng() % 2 == 0;
        const uint64_t value = (uint64_t{t} << 32) | i;
        const uint64_t stamp = rec.begin(t);
        auto out = rep.execute_mut({push ? Stack::WriteOp::kPush : Stack::WriteOp::kPop, value}, token);
        ASSERT_TRUE(out.ok()) << out.status().to_string();
        rec.end(t, stamp, {push ? lincheck::StackOp::kPush : lincheck::StackOp::kPop, value}, *out);
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& w : workers) w.join();

  const lincheck::CheckResult result = lincheck::check(rec.history());
  EXPECT_EQ(result.verdict, lincheck::Verdict::kLinearizable) << result.explanation;
  std::vector<uint64_t> digests;
  for (auto& rep : cluster.replicas) {
    rep->sync();
    auto token = rep->register_thread().value();
    digests.push_back(*rep->execute({Stack::ReadOp::kDigest}, token));
  }
  for (size_t i = 1; i < digests.size(); ++i) EXPECT_EQ(digests[i], digests[0]) << "replica " << i;
}

INSTANTIATE_TEST_SUITE_P(Configs, NrStackStress,
                         ::testing::Values(StressConfig{4, 2, 64, 20000, 0},  // tiny log: wrap + full
                                           StressConfig{4, 4, 512, 20000, 0}),
                         name_of);

}  // namespace
}  // namespace nrx::nr
