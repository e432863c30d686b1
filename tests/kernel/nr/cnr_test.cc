// Unit tests of CNR (nr::ConcurrentReplica / nr::CnrGroup, kernel/nr/cnr.h) over the concurrent
// hash map: point-op responses, cross-replica visibility, per-log ordering, scans as consistent
// cuts, scan-updates at every replica, progress of replicas that have no threads of their own
// (the lagging-replica hook), argument errors; plus sanity tests of MapWithScansModel (the
// sequential specification the CNR stress test checks histories against).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
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

constexpr auto kWaitLimit = std::chrono::seconds(30);  // bound on every wait for another thread

std::unique_ptr<Group> make_group(uint32_t log_count, uint32_t slots) {
  logs::LogOptions o;
  o.slot_count = slots;
  return Group::create(log_count, o, [](const logs::LogOptions& lo) { return logs::RingLog::create(lo); }).value();
}

// Spins (yielding) until |flag| is true or kWaitLimit passes; returns the flag.
bool wait_for(const std::atomic<bool>& flag) {
  const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
  while (!flag.load(std::memory_order_acquire)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

uint64_t digest_of(Rep& r) {
  r.sync();
  return r.inspect([](const Map& m) { return m.digest(); });
}

TEST(CnrBasics, PointOpResponsesOnOneReplica) {
  auto g = make_group(4, 256);
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto t = a->register_thread().value();

  EXPECT_EQ(a->execute({Map::ReadOp::kGet, 1}, t), std::nullopt);
  EXPECT_EQ(a->execute_mut({Map::WriteOp::kPut, 1, 10}, t).value(), std::nullopt);
  EXPECT_EQ(a->execute_mut({Map::WriteOp::kPut, 1, 11}, t).value(), std::optional<uint64_t>(10));
  EXPECT_EQ(a->execute({Map::ReadOp::kGet, 1}, t), std::optional<uint64_t>(11));
  EXPECT_EQ(a->execute_mut({Map::WriteOp::kPut, 2, 20}, t).value(), std::nullopt);  // another log
  EXPECT_EQ(a->execute_mut({Map::WriteOp::kRemove, 1, 0}, t).value(), std::optional<uint64_t>(11));
  EXPECT_EQ(a->execute_mut({Map::WriteOp::kRemove, 1, 0}, t).value(), std::nullopt);
  EXPECT_EQ(a->execute({Map::ReadOp::kGet, 1}, t), std::nullopt);
  EXPECT_EQ(a->execute({Map::ReadOp::kGet, 2}, t), std::optional<uint64_t>(20));
}

TEST(CnrBasics, WriteOnOneReplicaIsReadOnAnother) {
  auto g = make_group(4, 256);
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto b = g->make_replica(ReplicaOptions{}).value();
  auto ta = a->register_thread().value();
  auto tb = b->register_thread().value();
  for (uint64_t k = 0; k < 8; ++k) {
    ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, k, 100 + k}, ta).ok());
    // b never applied this log: its read must sync the key's log first.
    EXPECT_EQ(b->execute({Map::ReadOp::kGet, k}, tb), std::optional<uint64_t>(100 + k)) << "key " << k;
  }
  ASSERT_TRUE(b->execute_mut({Map::WriteOp::kRemove, 3, 0}, tb).ok());
  EXPECT_EQ(a->execute({Map::ReadOp::kGet, 3}, ta), std::nullopt);
  EXPECT_EQ(digest_of(*a), digest_of(*b));
}

// Two replicas write the same key (one log) concurrently, every value unique. A put returns its
// predecessor in that log's order, so the responses must chain all puts into ONE sequence that
// starts from "absent", keeps each thread's program order, and ends with the value both replicas
// hold after syncing.
TEST(CnrOrdering, SameKeyWritesApplyInOneLogOrderEverywhere) {
  constexpr uint32_t kPuts = 3000;
  constexpr uint64_t kKey = 5;
  auto g = make_group(4, 64);  // small: the log wraps
  std::unique_ptr<Rep> reps[2] = {g->make_replica(ReplicaOptions{}).value(), g->make_replica(ReplicaOptions{}).value()};
  std::vector<std::optional<uint64_t>> prev[2];
  std::atomic<bool> go{false};
  std::atomic<uint32_t> failures{0};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      auto tok = reps[t]->register_thread().value();
      prev[t].reserve(kPuts);
      (void)wait_for(go);
      for (uint32_t i = 0; i < kPuts; ++i) {
        auto r = reps[t]->execute_mut({Map::WriteOp::kPut, kKey, (uint64_t{t + 1} << 32) | i}, tok);
        if (!r.ok()) {
          failures.fetch_add(1, std::memory_order_relaxed);
          return;
        }
        prev[t].push_back(*r);
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0u);

  // next[v] = the put that came right after the put of v in the log.
  std::unordered_map<uint64_t, uint64_t> next;
  std::optional<uint64_t> first;
  for (uint32_t t = 0; t < 2; ++t) {
    for (uint32_t i = 0; i < kPuts; ++i) {
      const uint64_t v = (uint64_t{t + 1} << 32) | i;
      if (!prev[t][i]) {
        ASSERT_FALSE(first.has_value()) << "two puts saw the key absent";
        first = v;
      } else {
        ASSERT_TRUE(next.emplace(*prev[t][i], v).second) << "two puts followed the put of " << *prev[t][i];
      }
    }
  }
  ASSERT_TRUE(first.has_value());
  uint64_t last = *first;
  uint32_t seen = 1;
  uint64_t next_of_thread[2] = {0, 0};  // the index each thread's next put on the chain must have
  EXPECT_EQ(last & 0xffffffffu, 0u) << "the first put is not a thread's first";
  next_of_thread[(last >> 32) - 1] = (last & 0xffffffffu) + 1;
  for (auto it = next.find(last); it != next.end(); it = next.find(last)) {
    last = it->second;
    ++seen;
    ASSERT_LE(seen, 2 * kPuts) << "the chain has a cycle";
    const uint64_t t = (last >> 32) - 1, i = last & 0xffffffffu;
    EXPECT_EQ(i, next_of_thread[t]) << "thread " << t << "'s puts out of program order";
    next_of_thread[t] = i + 1;
  }
  EXPECT_EQ(seen, 2 * kPuts) << "the puts do not form one sequence";
  for (auto& r : reps) {
    auto tok = r->register_thread().value();
    EXPECT_EQ(r->execute({Map::ReadOp::kGet, kKey}, tok), std::optional<uint64_t>(last)) << "replica " << r->id();
  }
  EXPECT_EQ(digest_of(*reps[0]), digest_of(*reps[1]));
}

TEST(CnrScans, SizeRangeSumAndClearResponses) {
  auto g = make_group(4, 256);
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto t = a->register_thread().value();
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kSize, 0, 0}, t).value(), std::optional<uint64_t>(0));
  for (uint64_t k = 1; k <= 6; ++k) ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, k, k * 10}, t).ok());
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kSize, 0, 0}, t).value(), std::optional<uint64_t>(6));
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kRangeSum, 2, 4}, t).value(), std::optional<uint64_t>(90));
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kRangeSum, 7, 100}, t).value(), std::optional<uint64_t>(0));
  // The sum wraps.
  ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, 7, ~uint64_t{0}}, t).ok());
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kRangeSum, 6, 7}, t).value(), std::optional<uint64_t>(59));
  EXPECT_EQ(a->scans_executed(), 5u);
}

TEST(CnrScans, ClearAtOneReplicaClearsEveryReplica) {
  auto g = make_group(4, 256);
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto b = g->make_replica(ReplicaOptions{}).value();
  auto ta = a->register_thread().value();
  auto tb = b->register_thread().value();
  for (uint64_t k = 0; k < 10; ++k) ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, k, k + 1}, ta).ok());
  EXPECT_EQ(b->execute({Map::ReadOp::kGet, 9}, tb), std::optional<uint64_t>(10));
  EXPECT_EQ(a->execute_scan_mut({Map::ScanOp::kClear, 0, 0}, ta).value(), std::optional<uint64_t>(10));
  for (uint64_t k = 0; k < 10; ++k) EXPECT_EQ(b->execute({Map::ReadOp::kGet, k}, tb), std::nullopt) << "key " << k;
  EXPECT_EQ(b->execute_scan({Map::ScanOp::kSize, 0, 0}, tb).value(), std::optional<uint64_t>(0));
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kSize, 0, 0}, ta).value(), std::optional<uint64_t>(0));
  // A clear issued at b afterwards answers b's count (nothing left).
  ASSERT_TRUE(b->execute_mut({Map::WriteOp::kPut, 3, 4}, tb).ok());
  EXPECT_EQ(b->execute_scan_mut({Map::ScanOp::kClear, 0, 0}, tb).value(), std::optional<uint64_t>(1));
  EXPECT_EQ(a->execute({Map::ReadOp::kGet, 3}, ta), std::nullopt);
  // The clears ran at both replicas, each scan-read only where it was issued.
  EXPECT_EQ(a->scans_executed(), 3u);
  EXPECT_EQ(b->scans_executed(), 3u);
  EXPECT_EQ(digest_of(*a), digest_of(*b));
}

// A writer on replica b puts k1 = i, then k2 = i (shifted into the high half) for i = 1, 2, ...;
// k1's log comes before k2's. A scan on replica a reads both with one range sum; any state a
// sequential execution of the writer's prefix produces has i1 == i2 or i1 == i2 + 1.
TEST(CnrScans, RangeSumSeesAConsistentCutOfConcurrentWrites) {
  constexpr uint64_t kK1 = 0, kK2 = 3;  // logs 0 and 3 of 4
  constexpr uint32_t kWrites = 20000;
  auto g = make_group(4, 128);
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto b = g->make_replica(ReplicaOptions{}).value();
  std::atomic<bool> go{false}, done{false};
  std::atomic<uint32_t> write_failures{0};
  std::thread writer([&] {
    auto tok = b->register_thread().value();
    (void)wait_for(go);
    for (uint64_t i = 1; i <= kWrites; ++i) {
      if (!b->execute_mut({Map::WriteOp::kPut, kK1, i}, tok).ok()) write_failures.fetch_add(1);
      if (!b->execute_mut({Map::WriteOp::kPut, kK2, i << 32}, tok).ok()) write_failures.fetch_add(1);
    }
    done.store(true, std::memory_order_release);
  });
  auto ta = a->register_thread().value();
  go.store(true, std::memory_order_release);
  uint32_t scans = 0, bad = 0;
  std::string first_bad;
  const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
  while (!done.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < deadline) {
    const uint64_t sum = a->execute_scan({Map::ScanOp::kRangeSum, kK1, kK2}, ta).value().value();
    const uint64_t i1 = sum & 0xffffffffu, i2 = sum >> 32;
    ++scans;
    if (i1 != i2 && i1 != i2 + 1) {
      if (bad++ == 0) first_bad = "k1=" + std::to_string(i1) + " k2=" + std::to_string(i2);
    }
  }
  writer.join();
  EXPECT_EQ(write_failures.load(), 0u);
  EXPECT_EQ(bad, 0u) << bad << " of " << scans << " scans saw no sequential state; first: " << first_bad;
  EXPECT_GT(scans, 0u);
  EXPECT_EQ(digest_of(*a), digest_of(*b));
}

// A log backend that can hold one append of one replica at its start until released, to force
// an interleaving: a scan that has entered the lower logs but not yet the higher ones.
class GatedLog final : public logs::Log {
 public:
  explicit GatedLog(std::unique_ptr<logs::RingLog> inner) : inner_(std::move(inner)) {}

  // The next append by |replica| waits at its start until open() (or the wait limit).
  void arm(logs::ReplicaId replica) { armed_.store(replica, std::memory_order_release); }
  const std::atomic<bool>& reached() const { return reached_; }
  void open() { open_.store(true, std::memory_order_release); }
  // The next append by |replica| fails as if the log had stayed full past its timeout.
  void arm_failure(logs::ReplicaId replica) { fail_.store(replica, std::memory_order_release); }

  const logs::LogOptions& options() const override { return inner_->options(); }
  Result<logs::ReplicaId> register_replica() override { return inner_->register_replica(); }
  Result<logs::LogIndex> append(logs::ReplicaId r, logs::Batch batch, logs::EntryVisitor apply_own) override {
    logs::ReplicaId failing = r;
    if (fail_.compare_exchange_strong(failing, kNone, std::memory_order_acq_rel)) {
      return Status::deadline_exceeded("gated log: injected full-log timeout");
    }
    logs::ReplicaId expected = r;
    if (armed_.compare_exchange_strong(expected, kNone, std::memory_order_acq_rel)) {
      reached_.store(true, std::memory_order_release);
      (void)wait_for(open_);
    }
    return inner_->append(r, batch, apply_own);
  }
  Result<logs::LogIndex> exec(logs::ReplicaId r, logs::EntryVisitor v) override { return inner_->exec(r, v); }
  Result<logs::LogIndex> exec_while(logs::ReplicaId r, logs::StoppingVisitor v) override {
    return inner_->exec_while(r, v);
  }
  logs::LogIndex tail() const override { return inner_->tail(); }
  logs::LogIndex ctail() const override { return inner_->ctail(); }
  logs::LogIndex head() const override { return inner_->head(); }
  Result<logs::LogIndex> ltail(logs::ReplicaId r) const override { return inner_->ltail(r); }
  bool is_synced_for_reads(logs::ReplicaId r, logs::LogIndex c) const override {
    return inner_->is_synced_for_reads(r, c);
  }
  Result<logs::PayloadRef> payload_put(std::span<const std::byte> d) override { return inner_->payload_put(d); }
  Result<std::span<const std::byte>> payload_get(logs::PayloadRef p) const override { return inner_->payload_get(p); }
  Status payload_release(logs::ReplicaId r, logs::PayloadRef p) override { return inner_->payload_release(r, p); }
  uint64_t payloads_live() const override { return inner_->payloads_live(); }

 private:
  static constexpr logs::ReplicaId kNone = UINT32_MAX;
  std::unique_ptr<logs::RingLog> inner_;
  std::atomic<logs::ReplicaId> armed_{kNone};
  std::atomic<logs::ReplicaId> fail_{kNone};
  std::atomic<bool> reached_{false};
  std::atomic<bool> open_{false};
};

// The same cut property, forced: replica a's range sum over keys 0 (log 0) and 3 (log 3) has
// entered logs 0..2 and is held before log 3. Meanwhile a thread of replica b puts 0 := 1 and
// then, after that put returned, 3 := 2. In real time put(0) precedes put(3), so a linearizable
// range sum returns 0, 1 or 3, never 2 (key 3 written but not key 0).
TEST(CnrScans, ScanReadDoesNotSeeALaterWriteWithoutAnEarlierOne) {
  using GatedGroup = CnrGroup<Map, HashMapLogMapper, GatedLog>;
  logs::LogOptions o;
  o.slot_count = 64;
  std::vector<GatedLog*> logs_by_id;
  auto g = GatedGroup::create(4, o, [&](const logs::LogOptions& lo) -> Result<std::unique_ptr<GatedLog>> {
             auto ring = logs::RingLog::create(lo);
             if (!ring.ok()) return ring.status();
             auto gated = std::make_unique<GatedLog>(std::move(*ring));
             logs_by_id.push_back(gated.get());
             return gated;
           }).value();
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto b = g->make_replica(ReplicaOptions{}).value();
  auto tb = b->register_thread().value();
  logs_by_id[3]->arm(a->id());

  std::optional<uint64_t> sum;
  std::thread scanner([&] {
    auto ta = a->register_thread().value();
    auto r = a->execute_scan({Map::ScanOp::kRangeSum, 0, 3}, ta);
    if (r.ok()) sum = *r;
  });
  const bool held = wait_for(logs_by_id[3]->reached());
  EXPECT_TRUE(held) << "the scan never reached log 3";
  std::optional<uint64_t> p0, p3;
  std::atomic<bool> put0_appended{false};
  std::thread writer;
  if (held) {
    // The scan is in logs 0..2 and holds the group's scan lock; these writes need neither. put(0, 1)
    // lands after the scan in log 0, so it may complete only once the scan sits in every log.
    const logs::LogIndex tail0 = g->log(0).tail();
    writer = std::thread([&] {
      p0 = b->execute_mut({Map::WriteOp::kPut, 0, 1}, tb).value();
      p3 = b->execute_mut({Map::WriteOp::kPut, 3, 2}, tb).value();
    });
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (g->log(0).tail() == tail0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    put0_appended.store(g->log(0).tail() > tail0);
    EXPECT_TRUE(put0_appended.load()) << "put(0, 1) never reached log 0";
  }
  logs_by_id[3]->open();
  scanner.join();
  if (writer.joinable()) writer.join();
  EXPECT_EQ(p0, std::nullopt);
  EXPECT_EQ(p3, std::nullopt);
  ASSERT_TRUE(sum.has_value());
  EXPECT_NE(*sum, 2u) << "range_sum(0, 3) saw put(3, 2) but not put(0, 1), which completed before it began";

  // The same verdict from the checker, over the recorded real-time order.
  using Op = lincheck::Operation<MapWithScansModel>;
  lincheck::History<MapWithScansModel> h = {
      Op{0, 0, 5, {MapOp::kRangeSum, 0, 0, 3}, sum},
      Op{1, 1, 2, {MapOp::kPut, 0, 1, 0}, p0},
      Op{1, 3, 4, {MapOp::kPut, 3, 2, 0}, p3},
  };
  const lincheck::CheckResult result = lincheck::check(h);
  EXPECT_EQ(result.verdict, lincheck::Verdict::kLinearizable) << result.explanation;
}

// A scan whose entry cannot be appended to one of its logs (here log 2: the append fails as a log
// that stayed full would) is in logs 0 and 1 but can never run. It must come back as an error,
// not a crash, and its orphaned entries must not stop either replica on logs 0 and 1.
TEST(CnrScans, ScanThatCannotEnterEveryLogIsCancelledNotFatal) {
  using GatedGroup = CnrGroup<Map, HashMapLogMapper, GatedLog>;
  logs::LogOptions o;
  o.slot_count = 64;
  std::vector<GatedLog*> logs_by_id;
  auto g = GatedGroup::create(4, o, [&](const logs::LogOptions& lo) -> Result<std::unique_ptr<GatedLog>> {
             auto ring = logs::RingLog::create(lo);
             if (!ring.ok()) return ring.status();
             auto gated = std::make_unique<GatedLog>(std::move(*ring));
             logs_by_id.push_back(gated.get());
             return gated;
           }).value();
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto b = g->make_replica(ReplicaOptions{}).value();
  auto ta = a->register_thread().value();
  auto tb = b->register_thread().value();
  for (uint64_t k = 0; k < 8; ++k) ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, k, k}, ta).ok());

  logs_by_id[2]->arm_failure(a->id());
  auto failed = a->execute_scan_mut({Map::ScanOp::kClear, 0, 0}, ta);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_GT(g->log(0).tail(), 2u) << "the scan entered log 0 before failing at log 2";

  // Both replicas get past the orphaned entries in logs 0 and 1 (keys 0..15 cover all 4 logs).
  for (uint64_t k = 0; k < 16; ++k) {
    ASSERT_TRUE(b->execute_mut({Map::WriteOp::kPut, k, 100 + k}, tb).ok());
    ASSERT_EQ(a->execute({Map::ReadOp::kGet, k}, ta), 100 + k) << "the cancelled clear must not have run";
  }
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kSize, 0, 0}, ta).value(), 16u);
  EXPECT_EQ(b->execute_scan({Map::ScanOp::kSize, 0, 0}, tb).value(), 16u);
  a->sync();
  b->sync();
  EXPECT_EQ(a->inspect([](const Map& m) { return m.digest(); }), b->inspect([](const Map& m) { return m.digest(); }));
}

// Replica b's only thread issues scans and nothing else; replica c has no threads at all. Replica
// a writes a lot through 16-slot logs and clears now and then, so every log fills over and over
// and b and c hold it back: a's writes complete only if the lagging-replica hook moves b and c
// past the scan entries. Afterwards all three agree.
TEST(CnrScans, IdleAndThreadlessReplicasDoNotBlockWriters) {
  constexpr uint32_t kWrites = 20000;
  constexpr uint32_t kClearEvery = 1000;
  auto g = make_group(4, 16);
  auto a = g->make_replica(ReplicaOptions{}).value();
  auto b = g->make_replica(ReplicaOptions{}).value();
  auto c = g->make_replica(ReplicaOptions{}).value();  // never registers a thread
  std::atomic<bool> done{false};
  std::atomic<uint32_t> write_failures{0};
  std::atomic<uint32_t> clears{0};
  std::thread writer([&] {
    auto ta = a->register_thread().value();
    for (uint32_t i = 0; i < kWrites; ++i) {
      if (!a->execute_mut({Map::WriteOp::kPut, i % 32, i}, ta).ok()) write_failures.fetch_add(1);
      if (i % kClearEvery == kClearEvery - 1) {
        if (a->execute_scan_mut({Map::ScanOp::kClear, 0, 0}, ta).ok()) clears.fetch_add(1);
      }
    }
    done.store(true, std::memory_order_release);
  });
  uint32_t b_scans = 0;
  std::thread scanner([&] {
    auto tb = b->register_thread().value();
    while (!done.load(std::memory_order_acquire) && b_scans < 200) {
      const uint64_t n = b->execute_scan({Map::ScanOp::kSize, 0, 0}, tb).value().value();
      EXPECT_LE(n, 32u);
      ++b_scans;
    }
  });
  const bool finished = wait_for(done);
  EXPECT_TRUE(finished) << "a's writes did not complete within the limit";
  writer.join();
  scanner.join();
  EXPECT_EQ(write_failures.load(), 0u);
  EXPECT_EQ(clears.load(), kWrites / kClearEvery);
  const uint64_t da = digest_of(*a), db = digest_of(*b), dc = digest_of(*c);
  EXPECT_EQ(db, da);
  EXPECT_EQ(dc, da);
  // c executed every clear (scan-updates run everywhere) and no scan-read (they run where issued).
  EXPECT_EQ(c->scans_executed(), kWrites / kClearEvery);
  EXPECT_EQ(b->scans_executed(), kWrites / kClearEvery + b_scans);
  for (uint32_t li = 0; li < g->log_count(); ++li) EXPECT_GT(g->log(li).tail(), 16u) << "log " << li;
}

TEST(CnrErrors, LogCountOutOfRange) {
  logs::LogOptions o;
  o.slot_count = 16;
  auto mk = [](const logs::LogOptions& lo) { return logs::RingLog::create(lo); };
  auto zero = Group::create(0, o, mk);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  auto too_many = Group::create(kMaxLogs + 1, o, mk);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  auto one = Group::create(1, o, mk);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ((*one)->log_count(), 1u);
  auto max = Group::create(kMaxLogs, o, mk);
  ASSERT_TRUE(max.ok());
  EXPECT_EQ((*max)->all_logs_mask(), ~uint64_t{0});
}

TEST(CnrErrors, ThreadLimit) {
  auto g = make_group(2, 16);
  auto a = g->make_replica(ReplicaOptions{.max_threads = 1}).value();
  auto t = a->register_thread();
  ASSERT_TRUE(t.ok());
  auto second = a->register_thread();
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kResourceExhausted);
  // The one thread still works, scans included.
  ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, 1, 1}, *t).ok());
  EXPECT_EQ(a->execute_scan({Map::ScanOp::kSize, 0, 0}, *t).value(), std::optional<uint64_t>(1));
}

// --- MapWithScansModel sanity: the checker with this model accepts and rejects what it should.

using Op = lincheck::Operation<MapWithScansModel>;
using History = lincheck::History<MapWithScansModel>;

TEST(MapWithScansModel, SequentialHistoryIsAccepted) {
  const History h = {
      Op{0, 0, 1, {MapOp::kPut, 1, 5, 0}, std::nullopt},   Op{0, 2, 3, {MapOp::kPut, 2, 7, 0}, std::nullopt},
      Op{0, 4, 5, {MapOp::kSize, 0, 0, 0}, 2},             Op{0, 6, 7, {MapOp::kRangeSum, 0, 0, 1}, 5},
      Op{0, 8, 9, {MapOp::kPut, 1, 6, 0}, 5},              Op{0, 10, 11, {MapOp::kGet, 1, 0, 0}, 6},
      Op{0, 12, 13, {MapOp::kRemove, 2, 0, 0}, 7},         Op{0, 14, 15, {MapOp::kClear, 0, 0, 0}, 1},
      Op{0, 16, 17, {MapOp::kGet, 1, 0, 0}, std::nullopt}, Op{0, 18, 19, {MapOp::kSize, 0, 0, 0}, 0},
  };
  const lincheck::CheckResult r = lincheck::check(h);
  EXPECT_EQ(r.verdict, lincheck::Verdict::kLinearizable) << r.explanation;
}

TEST(MapWithScansModel, SizeAfterCompletedClearIsRejected) {
  const History h = {
      Op{0, 0, 1, {MapOp::kPut, 1, 5, 0}, std::nullopt},
      Op{1, 0, 1, {MapOp::kPut, 2, 6, 0}, std::nullopt},
      Op{0, 2, 3, {MapOp::kClear, 0, 0, 0}, 2},
      Op{1, 4, 5, {MapOp::kSize, 0, 0, 0}, 2},
  };
  EXPECT_EQ(lincheck::check(h).verdict, lincheck::Verdict::kNotLinearizable);
}

TEST(MapWithScansModel, ConcurrentClearMayOrderEitherWay) {
  // The size overlaps the clear: 2 (before it) and 0 (after it) both linearize; 1 does not.
  for (uint64_t size : {0u, 2u, 1u}) {
    const History h = {
        Op{0, 0, 1, {MapOp::kPut, 1, 5, 0}, std::nullopt},
        Op{0, 2, 3, {MapOp::kPut, 2, 6, 0}, std::nullopt},
        Op{0, 4, 7, {MapOp::kClear, 0, 0, 0}, 2},
        Op{1, 5, 6, {MapOp::kSize, 0, 0, 0}, size},
    };
    EXPECT_EQ(lincheck::check(h).verdict,
              size == 1 ? lincheck::Verdict::kNotLinearizable : lincheck::Verdict::kLinearizable)
        << "size " << size;
  }
}

TEST(MapWithScansModel, TornRangeSumAndWrongClearCountAreRejected) {
  // put(0) completes before put(3) starts: a sum that has 3's value without 0's is torn.
  const History torn = {
      Op{0, 0, 5, {MapOp::kRangeSum, 0, 0, 3}, 2},
      Op{1, 1, 2, {MapOp::kPut, 0, 1, 0}, std::nullopt},
      Op{1, 3, 4, {MapOp::kPut, 3, 2, 0}, std::nullopt},
  };
  EXPECT_EQ(lincheck::check(torn).verdict, lincheck::Verdict::kNotLinearizable);
  const History wrong_count = {
      Op{0, 0, 1, {MapOp::kPut, 1, 5, 0}, std::nullopt},
      Op{0, 2, 3, {MapOp::kClear, 0, 0, 0}, 2},
  };
  EXPECT_EQ(lincheck::check(wrong_count).verdict, lincheck::Verdict::kNotLinearizable);
  // The sum wraps, as the map's.
  const History wraps = {
      Op{0, 0, 1, {MapOp::kPut, 1, ~uint64_t{0}, 0}, std::nullopt},
      Op{0, 2, 3, {MapOp::kPut, 2, 3, 0}, std::nullopt},
      Op{0, 4, 5, {MapOp::kRangeSum, 0, 0, 9}, 2},
  };
  EXPECT_EQ(lincheck::check(wraps).verdict, lincheck::Verdict::kLinearizable);
}

}  // namespace
}  // namespace nrx::nr
