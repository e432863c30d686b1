// Unit tests of Replica<D>: responses, cross-replica visibility, flat combining with one
// reservation per batch, limits and errors, and the full-log paths.
#include "kernel/nr/replica.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/ds/stack.h"
#include "logs/ring/ring_log.h"
#include "tests/kernel/nr/counting_log.h"

namespace nrx::nr {
namespace {

using Map = HashMap;

// Waits (bounded) until |cond| holds; returns whether it did.
template <typename F>
bool eventually(F cond, std::chrono::seconds limit = std::chrono::seconds(20)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

std::unique_ptr<logs::RingLog> make_log(uint32_t slots = 1024, logs::LaggingReplicaHook hook = {},
                                        std::chrono::nanoseconds timeout = std::chrono::seconds(10)) {
  logs::LogOptions o;
  o.entry_size = 32;
  o.slot_count = slots;
  o.on_lagging = std::move(hook);
  o.full_timeout = timeout;
  return logs::RingLog::create(o).value();
}

TEST(Replica, SingleReplicaResponses) {
  auto log = make_log();
  auto r = Replica<Map>::create(*log).value();
  auto t = r->register_thread().value();
  EXPECT_EQ(r->execute_mut({Map::WriteOp::kPut, 1, 10}, t).value(), std::nullopt);
  EXPECT_EQ(r->execute_mut({Map::WriteOp::kPut, 1, 11}, t).value(), 10u);
  EXPECT_EQ(r->execute({Map::ReadOp::kGet, 1}, t), 11u);
  EXPECT_EQ(r->execute({Map::ReadOp::kGet, 2}, t), std::nullopt);
  EXPECT_EQ(r->execute_mut({Map::WriteOp::kRemove, 1, 0}, t).value(), 11u);
  EXPECT_EQ(r->execute_mut({Map::WriteOp::kRemove, 1, 0}, t).value(), std::nullopt);
  EXPECT_EQ(r->execute({Map::ReadOp::kSize, 0}, t), 0u);
  EXPECT_EQ(log->tail(), 4u);
}

TEST(Replica, ReadOnOtherReplicaSeesCompletedWrite) {
  auto log = make_log();
  auto a = Replica<Map>::create(*log).value();
  auto b = Replica<Map>::create(*log).value();
  auto ta = a->register_thread().value();
  auto tb = b->register_thread().value();
  for (uint64_t k = 0; k < 100; ++k) {
    ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, k, k * 3}, ta).ok());
    // b never saw these ops; its read must catch up to ctail first.
    ASSERT_EQ(b->execute({Map::ReadOp::kGet, k}, tb), k * 3);
  }
  EXPECT_EQ(b->execute({Map::ReadOp::kDigest, 0}, tb), a->execute({Map::ReadOp::kDigest, 0}, ta));
  EXPECT_EQ(b->execute({Map::ReadOp::kSize, 0}, tb), 100u);
}

TEST(Replica, StackPopResponsesAreRoutedToTheirThreads) {
  auto log = make_log();
  auto a = Replica<Stack>::create(*log).value();
  auto t = a->register_thread().value();
  for (uint64_t v = 1; v <= 5; ++v) ASSERT_EQ(a->execute_mut({Stack::WriteOp::kPush, v}, t).value(), std::nullopt);
  for (uint64_t v = 5; v >= 1; --v) ASSERT_EQ(a->execute_mut({Stack::WriteOp::kPop, 0}, t).value(), v);
  EXPECT_EQ(a->execute_mut({Stack::WriteOp::kPop, 0}, t).value(), std::nullopt);
}

// A structure whose first write blocks until the test opens a gate, so the combiner is held
// inside apply while other threads post their ops; the next combiner must take them all in one
// batch, appended with one reservation.
struct Gated {
  struct WriteOp {
    uint64_t value;
    bool block;
  };
  struct ReadOp {};
  using Response = uint64_t;
  std::atomic<bool>* gate = nullptr;
  std::atomic<bool>* blocked = nullptr;
  uint64_t sum = 0;
  Response dispatch(const ReadOp&) const { return sum; }
  Response dispatch_mut(const WriteOp& op) {
    if (op.block && gate != nullptr) {
      blocked->store(true);
      while (!gate->load()) std::this_thread::yield();
    }
    return sum += op.value;
  }
};

TEST(Replica, CombinerAppendsPostedOpsWithOneReservation) {
  constexpr uint32_t kPosters = 6;
  auto ring = make_log();
  testing::CountingLog log(*ring);
  std::atomic<bool> gate{false}, blocked{false};
  auto r = Replica<Gated>::create(log, Gated{&gate, &blocked, 0}).value();

  std::thread first([&] {
    auto t = r->register_thread().value();
    EXPECT_TRUE(r->execute_mut({1000, true}, t).ok());
  });
  if (!eventually([&] { return blocked.load(); })) {
    gate.store(true);
    first.join();
    FAIL() << "the first op never reached dispatch_mut";
  }
  std::vector<std::thread> posters;
  for (uint32_t i = 0; i < kPosters; ++i) {
    posters.emplace_back([&, i] {
      auto t = r->register_thread().value();
      EXPECT_TRUE(r->execute_mut({i + 1, false}, t).ok());
    });
  }
  // The blocked op is still pending too, until its combiner finishes applying it.
  const bool all_posted = eventually([&] { return r->posted_ops() == kPosters + 1; });
  gate.store(true);
  first.join();
  for (auto& p : posters) p.join();
  ASSERT_TRUE(all_posted);

  std::vector<size_t> sizes = log.batch_sizes();
  ASSERT_EQ(sizes.size(), 2u) << "expected the blocking op's batch and one combined batch";
  EXPECT_EQ(sizes[0], 1u);
  EXPECT_EQ(sizes[1], kPosters);
  auto t = r->register_thread().value();
  EXPECT_EQ(r->execute({}, t), 1000u + kPosters * (kPosters + 1) / 2);
  EXPECT_EQ(r->combined_batches(), 2u);
  EXPECT_EQ(r->combined_ops(), kPosters + 1);
}

TEST(Replica, ThreadLimitIsAnError) {
  auto log = make_log();
  auto r = Replica<Map>::create(*log, Map{}, ReplicaOptions{.max_threads = 2}).value();
  EXPECT_TRUE(r->register_thread().ok());
  EXPECT_TRUE(r->register_thread().ok());
  auto third = r->register_thread();
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), StatusCode::kResourceExhausted);
}

TEST(Replica, OpLargerThanLogEntryIsRejectedAtCreate) {
  logs::LogOptions o;
  o.entry_size = 8;  // HashMap::WriteOp is 24 bytes
  o.slot_count = 16;
  auto log = logs::RingLog::create(o).value();
  auto r = Replica<Map>::create(*log);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST(Replica, ReplicaLimitOfTheLogIsAnError) {
  logs::LogOptions o;
  o.entry_size = 32;
  o.slot_count = 16;
  o.max_replicas = 2;
  auto log = logs::RingLog::create(o).value();
  EXPECT_TRUE(Replica<Map>::create(*log).ok());
  EXPECT_TRUE(Replica<Map>::create(*log).ok());
  auto third = Replica<Map>::create(*log);
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), StatusCode::kResourceExhausted);
}

TEST(Replica, FullLogWithIdleReplicaFailsWithDeadlineInsteadOfHanging) {
  auto log = make_log(16, {}, std::chrono::milliseconds(50));
  auto a = Replica<Map>::create(*log).value();
  auto b = Replica<Map>::create(*log).value();  // nobody drives b and there is no hook
  auto t = a->register_thread().value();
  for (uint64_t i = 0; i < 16; ++i) ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, i, i}, t).ok());
  auto r = a->execute_mut({Map::WriteOp::kPut, 99, 99}, t);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(log->tail(), 16u) << "a failed op must not be in the log";
  // Once b catches up, writes proceed, and the failed op was applied nowhere.
  b->sync();
  EXPECT_TRUE(a->execute_mut({Map::WriteOp::kPut, 100, 100}, t).ok());
  auto tb = b->register_thread().value();
  EXPECT_EQ(b->execute({Map::ReadOp::kGet, 99}, tb), std::nullopt);
  EXPECT_EQ(b->execute({Map::ReadOp::kGet, 100}, tb), 100u);
}

TEST(Replica, LaggingHookNudgesTheIdleReplica) {
  std::vector<Replica<Map>*> reps(2, nullptr);
  std::atomic<uint32_t> calls{0}, wrong{0};
  auto log = make_log(16, [&](uint32_t log_id, logs::ReplicaId r) {
    calls.fetch_add(1);
    if (log_id != 0 || r != 1) wrong.fetch_add(1);
    if (reps[r] != nullptr) reps[r]->try_sync();
  });
  auto a = Replica<Map>::create(*log).value();
  auto b = Replica<Map>::create(*log).value();
  reps = {a.get(), b.get()};
  auto t = a->register_thread().value();
  for (uint64_t i = 0; i < 1000; ++i) ASSERT_TRUE(a->execute_mut({Map::WriteOp::kPut, i % 50, i}, t).ok());
  EXPECT_GT(calls.load(), 0u);
  EXPECT_EQ(wrong.load(), 0u) << "the hook must name log 0 and the idle replica 1";
  b->sync();
  auto tb = b->register_thread().value();
  EXPECT_EQ(b->execute({Map::ReadOp::kDigest, 0}, tb), a->execute({Map::ReadOp::kDigest, 0}, t));
}

}  // namespace
}  // namespace nrx::nr
