// Tests for the linearizability checker: hand-written histories with a known answer (stack ones
// under both engines), a brute-force oracle on small random histories, randomised histories
// stretched from sequential executions (linearizable by construction) and then corrupted
// (non-linearizable by construction), the search budget, the scale stress tests need, the
// symbolic stack sets on their own, and the Recorder with real threads.
#include "tests/lincheck/lincheck.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/thread_annotations.h"
#include "tests/lincheck/models.h"

namespace nrx::lincheck {
namespace {

using Out = std::optional<uint64_t>;
using KvHistory = History<KvModel>;
using StackHistory = History<StackModel>;

Operation<KvModel> kv_put(uint32_t t, uint64_t inv, uint64_t resp, uint64_t key, uint64_t value, Out prev) {
  return {t, inv, resp, {KvOp::kPut, key, value}, prev};
}
Operation<KvModel> kv_get(uint32_t t, uint64_t inv, uint64_t resp, uint64_t key, Out value) {
  return {t, inv, resp, {KvOp::kGet, key, 0}, value};
}
Operation<KvModel> kv_remove(uint32_t t, uint64_t inv, uint64_t resp, uint64_t key, Out removed) {
  return {t, inv, resp, {KvOp::kRemove, key, 0}, removed};
}
Operation<StackModel> st_push(uint32_t t, uint64_t inv, uint64_t resp, uint64_t value) {
  return {t, inv, resp, {StackOp::kPush, value}, std::nullopt};
}
Operation<StackModel> st_pop(uint32_t t, uint64_t inv, uint64_t resp, Out popped) {
  return {t, inv, resp, {StackOp::kPop, 0}, popped};
}

// The stack has two engines; every stack test runs under both, and they must agree.
enum class Engine { kDepthFirst, kSymbolic };

CheckOptions options_for(Engine engine) {
  CheckOptions opts;
  opts.use_symbolic = engine == Engine::kSymbolic;
  return opts;
}

std::string engine_name(const ::testing::TestParamInfo<Engine>& info) {
  return info.param == Engine::kSymbolic ? "Symbolic" : "DepthFirst";
}

class LincheckStack : public ::testing::TestWithParam<Engine> {
 protected:
  CheckResult check_stack(const StackHistory& h) const { return check(h, options_for(GetParam())); }
};

INSTANTIATE_TEST_SUITE_P(Engines, LincheckStack, ::testing::Values(Engine::kDepthFirst, Engine::kSymbolic),
                         engine_name);

// ---------------------------------------------------------------------------------------------
// Hand-written linearizable histories: overlapping operations where few orders (often one) work.

TEST(LincheckKv, EmptyHistoryIsLinearizable) {
  const CheckResult r = check(KvHistory{});
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST(LincheckKv, ReadInsideWriteSeesEitherValue) {
  // Both gets overlap the put: the first is ordered before it, the second after.
  const KvHistory h = {
      kv_put(0, 0, 10, 1, 5, std::nullopt),
      kv_get(1, 1, 2, 1, std::nullopt),
      kv_get(2, 3, 4, 1, 5),
  };
  EXPECT_TRUE(check(h).ok());
  // Reversed, the reads would see the value appear and then vanish.
  const KvHistory flipped = {
      kv_put(0, 0, 10, 1, 5, std::nullopt),
      kv_get(1, 1, 2, 1, 5),
      kv_get(2, 3, 4, 1, std::nullopt),
  };
  EXPECT_EQ(check(flipped).verdict, Verdict::kNotLinearizable);
}

TEST(LincheckKv, ConcurrentPutsOnlyOneOrderWorks) {
  // put(1,2) saw 1, so put(1,1) went first; the later get pins the final value.
  const KvHistory h = {
      kv_put(0, 0, 10, 1, 2, 1),
      kv_put(1, 0, 10, 1, 1, std::nullopt),
      kv_get(2, 11, 12, 1, 2),
      kv_remove(0, 13, 14, 1, 2),
      kv_get(1, 15, 16, 1, std::nullopt),
  };
  const CheckResult r = check(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST(LincheckKv, EqualStampsAreConcurrent) {
  // a.response == b.invoke does not order a before b, so the get may take effect first.
  const KvHistory h = {kv_put(0, 0, 2, 1, 5, std::nullopt), kv_get(1, 2, 3, 1, std::nullopt)};
  EXPECT_TRUE(check(h).ok());
  // One tick later the put is over: the get must see it.
  const KvHistory late = {kv_put(0, 0, 2, 1, 5, std::nullopt), kv_get(1, 3, 4, 1, std::nullopt)};
  EXPECT_EQ(check(late).verdict, Verdict::kNotLinearizable);
}

TEST(LincheckKv, InputOrderDoesNotMatter) {
  KvHistory h = {
      kv_put(0, 0, 10, 1, 2, 1), kv_put(1, 0, 10, 1, 1, std::nullopt), kv_get(2, 11, 12, 1, 2),
      kv_put(0, 20, 21, 2, 9, std::nullopt), kv_get(1, 22, 23, 2, 9),
  };
  std::reverse(h.begin(), h.end());
  const CheckResult r = check(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST_P(LincheckStack, EmptyHistoryIsLinearizable) { EXPECT_TRUE(check_stack({}).ok()); }

TEST_P(LincheckStack, EqualStampsAreConcurrent) {
  // The pop invoked at the push's response stamp may still take effect first.
  const StackHistory h = {st_push(0, 0, 2, 1), st_pop(1, 2, 3, std::nullopt), st_pop(1, 4, 5, 1)};
  EXPECT_TRUE(check_stack(h).ok());
  const StackHistory late = {st_push(0, 0, 2, 1), st_pop(1, 3, 4, std::nullopt), st_pop(1, 5, 6, 1)};
  EXPECT_EQ(check_stack(late).verdict, Verdict::kNotLinearizable);
}

TEST_P(LincheckStack, ConcurrentPushesThenSequentialPops) {
  // Pops return 1 then 2: push(2) must be linearized before push(1).
  const StackHistory h = {
      st_push(0, 0, 10, 1),
      st_push(1, 1, 11, 2),
      st_pop(0, 12, 13, 1),
      st_pop(1, 14, 15, 2),
      st_pop(0, 16, 17, std::nullopt),
  };
  const CheckResult r = check_stack(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST_P(LincheckStack, SearchMustBacktrack) {
  // Only push 1, 3, 2 explains pops 2, 3, 1; the first orders tried fail at the pops.
  const StackHistory h = {
      st_push(0, 0, 10, 1), st_push(1, 0, 10, 2), st_push(2, 0, 10, 3),
      st_pop(0, 11, 12, 2), st_pop(1, 13, 14, 3), st_pop(2, 15, 16, 1),
  };
  const CheckResult r = check_stack(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST_P(LincheckStack, PopOverlappingPushMaySeeEmptyOrValue) {
  const StackHistory h = {
      st_push(0, 0, 10, 7),
      st_pop(1, 1, 2, std::nullopt),  // before the push took effect
      st_pop(2, 5, 12, 7),            // after it
      st_pop(1, 13, 14, std::nullopt),
  };
  const CheckResult r = check_stack(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST_P(LincheckStack, LongOperationSpanningManyOthers) {
  // One push spans 200 sequential operations of another thread; the last pop needs it.
  StackHistory h = {st_push(0, 0, 1000, 77)};
  for (uint64_t i = 0; i < 100; ++i) {
    h.push_back(st_push(1, 1 + 4 * i, 2 + 4 * i, i));
    h.push_back(st_pop(1, 3 + 4 * i, 4 + 4 * i, i));
  }
  h.push_back(st_pop(1, 1001, 1002, 77));
  const CheckResult r = check_stack(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST_P(LincheckStack, BuriedAmbiguityResolvedByLaterPops) {
  // Each pair of concurrent pushes is buried under the next pair and resolved only when popped,
  // in reverse: the shape that makes a concrete depth-first search exponential.
  constexpr uint64_t kPairs = 12;
  StackHistory h;
  uint64_t t = 0;
  for (uint64_t p = 0; p < kPairs; ++p, t += 3) {
    h.push_back(st_push(0, t, t + 2, 2 * p));
    h.push_back(st_push(1, t, t + 2, 2 * p + 1));
  }
  for (uint64_t p = kPairs; p-- > 0; t += 4) {
    // Pushes tried in invoke order would put 2p under 2p+1; the pops say the opposite.
    h.push_back(st_pop(0, t, t + 1, 2 * p));
    h.push_back(st_pop(1, t + 2, t + 3, 2 * p + 1));
  }
  const CheckResult r = check_stack(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
  // Depth-first: about 4 * 2^kPairs. Symbolic: both orders of a pair merge into one set, so a
  // handful of configurations per operation.
  if (GetParam() == Engine::kSymbolic) {
    EXPECT_LE(r.states_explored, 4 * h.size());
  }
}

// ---------------------------------------------------------------------------------------------
// Known non-linearizable histories.

TEST(LincheckKv, RejectsStaleRead) {
  const KvHistory h = {kv_put(0, 0, 1, 1, 5, std::nullopt), kv_get(1, 2, 3, 1, std::nullopt)};
  const CheckResult r = check(h);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("key 1"), std::string::npos) << r.explanation;
  EXPECT_NE(r.explanation.find("get(1) -> none"), std::string::npos) << r.explanation;
}

TEST(LincheckKv, RejectsLostUpdate) {
  // The second put should have returned 5.
  const KvHistory h = {kv_put(0, 0, 1, 1, 5, std::nullopt), kv_put(1, 2, 3, 1, 6, std::nullopt)};
  EXPECT_EQ(check(h).verdict, Verdict::kNotLinearizable);
  const KvHistory wrong_prev = {kv_put(0, 0, 1, 1, 5, std::nullopt), kv_put(0, 2, 3, 1, 6, 4)};
  EXPECT_EQ(check(wrong_prev).verdict, Verdict::kNotLinearizable);
}

TEST(LincheckKv, RejectsValueNeverWritten) {
  const KvHistory h = {kv_put(0, 0, 10, 1, 5, std::nullopt), kv_get(1, 1, 11, 1, 42)};
  EXPECT_EQ(check(h).verdict, Verdict::kNotLinearizable);
}

TEST(LincheckKv, RejectsValueOfAnotherKey) {
  // 5 was written, but to key 2: partitions must not leak into each other.
  const KvHistory h = {kv_put(0, 0, 10, 2, 5, std::nullopt), kv_get(1, 1, 11, 1, 5)};
  EXPECT_EQ(check(h).verdict, Verdict::kNotLinearizable);
}

TEST(LincheckKv, RejectsReadAfterRemove) {
  const KvHistory h = {
      kv_put(0, 0, 1, 1, 5, std::nullopt),
      kv_remove(1, 2, 3, 1, 5),
      kv_get(0, 4, 5, 1, 5),
  };
  EXPECT_EQ(check(h).verdict, Verdict::kNotLinearizable);
}

TEST(LincheckKv, ExplanationNamesTheBrokenKey) {
  const KvHistory h = {
      kv_put(0, 0, 1, 1, 5, std::nullopt), kv_get(1, 2, 3, 1, 5),  // key 1: fine
      kv_put(0, 4, 5, 2, 8, std::nullopt), kv_get(1, 6, 7, 2, 9),  // key 2: 9 never written
      kv_put(0, 8, 9, 3, 1, std::nullopt), kv_get(1, 10, 11, 3, 1),
  };
  const CheckResult r = check(h);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.explanation.rfind("key 2:", 0), 0u) << r.explanation;
  EXPECT_NE(r.explanation.find("get(2) -> 9"), std::string::npos) << r.explanation;
  EXPECT_NE(r.explanation.find("1 of 2 operations"), std::string::npos) << r.explanation;
  EXPECT_EQ(r.explanation.find("key 1"), std::string::npos) << r.explanation;
}

TEST_P(LincheckStack, RejectsPopOfValueNeverPushed) {
  const StackHistory h = {st_push(0, 0, 1, 1), st_pop(1, 0, 2, 99)};
  const CheckResult r = check_stack(h);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("pop() -> 99"), std::string::npos) << r.explanation;
  EXPECT_EQ(r.explanation.find("partition"), std::string::npos) << r.explanation;
}

TEST_P(LincheckStack, RejectsTwoPopsOfOnePush) {
  const StackHistory h = {st_push(0, 0, 1, 1), st_pop(0, 2, 5, 1), st_pop(1, 3, 6, 1)};
  EXPECT_EQ(check_stack(h).verdict, Verdict::kNotLinearizable);
}

TEST_P(LincheckStack, RejectsEmptyPopWhileValuePresent) {
  const StackHistory h = {st_push(0, 0, 1, 1), st_pop(1, 2, 3, std::nullopt)};
  EXPECT_EQ(check_stack(h).verdict, Verdict::kNotLinearizable);
  // The same with the value popped only afterwards: still nothing took it before the empty pop.
  const StackHistory later = {st_push(0, 0, 1, 1), st_pop(1, 2, 3, std::nullopt), st_pop(0, 4, 5, 1)};
  EXPECT_EQ(check_stack(later).verdict, Verdict::kNotLinearizable);
}

TEST_P(LincheckStack, RejectsFifoOrder) {
  const StackHistory h = {st_push(0, 0, 1, 1), st_push(0, 2, 3, 2), st_pop(1, 4, 5, 1), st_pop(1, 6, 7, 2)};
  const CheckResult r = check_stack(h);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("pop() -> 1"), std::string::npos) << r.explanation;
  EXPECT_NE(r.explanation.find("2 of 4 operations"), std::string::npos) << r.explanation;
}

TEST_P(LincheckStack, RejectsPushReportingAValue) {
  const StackHistory h = {{0, 0, 1, {StackOp::kPush, 1}, 1}};
  EXPECT_EQ(check_stack(h).verdict, Verdict::kNotLinearizable);
}

TEST_P(LincheckStack, RejectsBuriedOrderThatNoInterleavingExplains) {
  // Like BuriedAmbiguityResolvedByLaterPops, but the bottom pair's pushes are sequential and
  // its pops say they were not: only after every inner order fails can the search say no.
  constexpr uint64_t kPairs = 10;
  StackHistory h = {st_push(0, 0, 1, 0), st_push(0, 2, 3, 1)};
  uint64_t t = 4;
  for (uint64_t p = 1; p < kPairs; ++p, t += 3) {
    h.push_back(st_push(0, t, t + 2, 2 * p));
    h.push_back(st_push(1, t, t + 2, 2 * p + 1));
  }
  for (uint64_t p = kPairs; p-- > 0; t += 4) {
    h.push_back(st_pop(0, t, t + 1, 2 * p));
    h.push_back(st_pop(1, t + 2, t + 3, 2 * p + 1));
  }
  EXPECT_EQ(check_stack(h).verdict, Verdict::kNotLinearizable);
}

TEST(Lincheck, MalformedHistoryIsUnknown) {
  const KvHistory h = {kv_put(0, 5, 4, 1, 5, std::nullopt)};
  const CheckResult r = check(h);
  EXPECT_EQ(r.verdict, Verdict::kUnknown);
  EXPECT_NE(r.explanation.find("malformed"), std::string::npos) << r.explanation;
}

// ---------------------------------------------------------------------------------------------
// Search budget and memoisation.

// n pushes all concurrent, then one pop of a value never pushed: every order of the pushes is a
// distinct stack, so the depth-first search explores ~e*n! configurations before it can say no,
// and the symbolic one 2^n (one per subset of pushes).
StackHistory pathological_stack(uint64_t n) {
  StackHistory h;
  for (uint64_t i = 0; i < n; ++i) h.push_back(st_push(static_cast<uint32_t>(i), 0, 100, i + 1));
  h.push_back(st_pop(0, 200, 201, 1000));
  return h;
}

TEST_P(LincheckStack, TinyBudgetGivesUnknown) {
  CheckOptions opts = options_for(GetParam());
  opts.max_states = 100;
  const CheckResult r = check(pathological_stack(10), opts);
  EXPECT_EQ(r.verdict, Verdict::kUnknown);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.explanation.find("budget"), std::string::npos) << r.explanation;
}

TEST_P(LincheckStack, DefaultBudgetDecidesSmallPathologicalCase) {
  const CheckResult r = check_stack(pathological_stack(6));
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable) << r.explanation;
  // Depth-first: sum over k of 6!/(6-k)! orders of k pushes. Symbolic: 2^6 subsets.
  EXPECT_EQ(r.states_explored, GetParam() == Engine::kSymbolic ? 64u : 1957u);
  EXPECT_NE(r.explanation.find("6 of 7 operations"), std::string::npos) << r.explanation;
}

TEST(LincheckBudget, MemoisationCollapsesCommutingOperations) {
  // 16 concurrent reads that commute, then an impossible read: without memoisation 16! orders,
  // with it one configuration per subset.
  constexpr uint64_t kReads = 16;
  KvHistory h;
  for (uint64_t i = 0; i < kReads; ++i) h.push_back(kv_get(static_cast<uint32_t>(i), 0, 100, 1, std::nullopt));
  h.push_back(kv_get(0, 200, 201, 1, 3));
  const CheckResult r = check(h);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.states_explored, uint64_t{1} << kReads);
}

// ---------------------------------------------------------------------------------------------
// Random histories: generators shared by the oracle, randomised and scale tests.

constexpr uint64_t kSlot = 1000;                // logical time between consecutive linearization points
constexpr uint64_t kNeverWritten = 1ULL << 40;  // no generator writes values this large

// Gives op i (in sequential order) an interval containing its linearization point (i+1)*kSlot
// on one of `threads` threads, each thread's intervals disjoint; points are uniform within the
// intervals, so the sequential order is often far from invoke or response order. Spans up to
// threads*kSlot-1 mean at most threads-1 earlier ops are still running at a point, so some
// thread is always free.
template <typename Model>
History<Model> stretch(const std::vector<std::pair<typename Model::Input, typename Model::Output>>& seq,
                       uint32_t threads, std::mt19937_64& rng) {
  const uint64_t max_span = threads * kSlot - 1;
  std::vector<uint64_t> busy_until(threads, 0);
  History<Model> h;
  h.reserve(seq.size());
  std::vector<uint32_t> free_threads;
  for (size_t i = 0; i < seq.size(); ++i) {
    const uint64_t point = (i + 1) * kSlot;
    free_threads.clear();
    for (uint32_t t = 0; t < threads; ++t) {
      if (busy_until[t] < point) free_threads.push_back(t);
    }
    if (free_threads.empty()) {
      ADD_FAILURE() << "stretch: no free thread at op " << i;
      return h;
    }
    const uint32_t t = free_threads[rng() % free_threads.size()];
    const uint64_t lo = std::max(busy_until[t] + 1, point > max_span ? point - max_span : 0);
    const uint64_t invoke = lo + rng() % (point - lo + 1);
    const uint64_t response = point + rng() % (max_span + 1);
    busy_until[t] = response;
    h.push_back(Operation<Model>{t, invoke, response, seq[i].first, seq[i].second});
  }
  std::shuffle(h.begin(), h.end(), rng);  // check() must not rely on the input order
  return h;
}

std::vector<std::pair<KvModel::Input, Out>> random_kv_run(size_t n, uint64_t keys, uint64_t values,
                                                          std::mt19937_64& rng) {
  std::map<uint64_t, uint64_t> map;
  std::vector<std::pair<KvModel::Input, Out>> seq;
  seq.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t key = rng() % keys;
    const uint64_t value = 1 + rng() % values;  // few values: repeats make the search work
    const auto it = map.find(key);
    const Out old = it == map.end() ? Out{} : Out{it->second};
    const uint64_t dice = rng() % 10;
    if (dice < 4) {
      map[key] = value;
      seq.push_back({{KvOp::kPut, key, value}, old});
    } else if (dice < 8) {
      seq.push_back({{KvOp::kGet, key, 0}, old});
    } else {
      map.erase(key);
      seq.push_back({{KvOp::kRemove, key, 0}, old});
    }
  }
  return seq;
}

std::vector<std::pair<StackModel::Input, Out>> random_stack_run(size_t n, uint64_t values, std::mt19937_64& rng) {
  std::vector<uint64_t> stack;
  std::vector<std::pair<StackModel::Input, Out>> seq;
  seq.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (rng() % 2 == 0) {
      const uint64_t value = 1 + rng() % values;  // duplicates on purpose
      stack.push_back(value);
      seq.push_back({{StackOp::kPush, value}, std::nullopt});
    } else if (stack.empty()) {
      seq.push_back({{StackOp::kPop, 0}, std::nullopt});
    } else {
      seq.push_back({{StackOp::kPop, 0}, stack.back()});
      stack.pop_back();
    }
  }
  return seq;
}

// ---------------------------------------------------------------------------------------------
// Oracle: on histories of a few ops, try every order that respects real time.

// A whole map, not a per-key state: the oracle does not rely on the checker's partitioning.
bool kv_reference_step(std::map<uint64_t, uint64_t>& map, const KvModel::Input& in, const Out& out) {
  const auto it = map.find(in.key);
  const Out old = it == map.end() ? Out{} : Out{it->second};
  if (old != out) return false;
  if (in.op == KvOp::kPut) map[in.key] = in.value;
  if (in.op == KvOp::kRemove) map.erase(in.key);
  return true;
}

template <typename Model, typename State, typename Step>
bool brute_force(const History<Model>& h, std::vector<bool>& done, size_t count, const State& state, Step step) {
  if (count == h.size()) return true;
  for (size_t i = 0; i < h.size(); ++i) {
    if (done[i]) continue;
    bool blocked = false;  // some op still to place must precede op i
    for (size_t j = 0; j < h.size() && !blocked; ++j) blocked = !done[j] && h[j].response < h[i].invoke;
    if (blocked) continue;
    State next = state;
    if (!step(next, h[i].input, h[i].output)) continue;
    done[i] = true;
    const bool found = brute_force(h, done, count + 1, next, step);
    done[i] = false;
    if (found) return true;
  }
  return false;
}

// Stretched runs, half of them with one output replaced by a random small value (which may or
// may not break linearizability): the oracle decides. Stamps are coarsened so that many responses
// equal other ops' invokes (concurrent, by the definition) and many ops share stamps.
template <typename Model, typename Gen>
History<Model> small_random_history(std::mt19937_64& rng, Gen gen) {
  History<Model> h = stretch<Model>(gen(1 + rng() % 7), 3, rng);
  for (auto& op : h) {
    op.invoke /= kSlot / 2;
    op.response /= kSlot / 2;
  }
  if (rng() % 2 == 0) {
    auto& op = h[rng() % h.size()];
    const uint64_t v = rng() % 4;
    op.output = v == 0 ? Out{} : Out{v};
  }
  return h;
}

class LincheckOracle : public ::testing::TestWithParam<uint64_t> {};

TEST_P(LincheckOracle, KvAgreesWithBruteForce) {
  std::mt19937_64 rng(GetParam());
  int rejected = 0;
  for (int iter = 0; iter < 400; ++iter) {
    const KvHistory h = small_random_history<KvModel>(rng, [&](size_t n) { return random_kv_run(n, 2, 3, rng); });
    std::vector<bool> done(h.size());
    const bool expected = brute_force(h, done, 0, std::map<uint64_t, uint64_t>{}, kv_reference_step);
    const CheckResult r = check(h);
    ASSERT_EQ(r.ok(), expected) << "iteration " << iter << ": " << r.explanation;
    ASSERT_NE(r.verdict, Verdict::kUnknown);
    rejected += expected ? 0 : 1;
  }
  EXPECT_GT(rejected, 40);  // the corruptions do break histories: both answers are exercised
}

TEST_P(LincheckOracle, StackAgreesWithBruteForceUnderBothEngines) {
  std::mt19937_64 rng(GetParam());
  int rejected = 0;
  for (int iter = 0; iter < 400; ++iter) {
    const StackHistory h =
        small_random_history<StackModel>(rng, [&](size_t n) { return random_stack_run(n, 3, rng); });
    std::vector<bool> done(h.size());
    const bool expected = brute_force(h, done, 0, StackModel::init(), StackModel::step);
    for (Engine engine : {Engine::kDepthFirst, Engine::kSymbolic}) {
      const CheckResult r = check(h, options_for(engine));
      ASSERT_EQ(r.ok(), expected) << "iteration " << iter << " engine " << static_cast<int>(engine) << ": "
                                  << r.explanation;
      ASSERT_NE(r.verdict, Verdict::kUnknown);
    }
    rejected += expected ? 0 : 1;
  }
  EXPECT_GT(rejected, 40);
}

TEST_P(LincheckOracle, StackEnginesAgreeOnLongerHistories) {
  // Too long for brute force, short enough for the depth-first engine: the engines check each
  // other. Corruption here swaps two pops' outputs, which often stays explainable.
  std::mt19937_64 rng(GetParam());
  int rejected = 0;
  for (int iter = 0; iter < 100; ++iter) {
    StackHistory h = stretch<StackModel>(random_stack_run(40, 4, rng), 2, rng);
    if (iter % 2 == 1) {
      std::vector<size_t> pops;
      for (size_t i = 0; i < h.size(); ++i) {
        if (h[i].input.op == StackOp::kPop) pops.push_back(i);
      }
      if (pops.size() >= 2) std::swap(h[pops[rng() % pops.size()]].output, h[pops[rng() % pops.size()]].output);
    }
    const CheckResult symbolic = check(h, options_for(Engine::kSymbolic));
    const CheckResult depth_first = check(h, options_for(Engine::kDepthFirst));
    ASSERT_NE(symbolic.verdict, Verdict::kUnknown);
    ASSERT_NE(depth_first.verdict, Verdict::kUnknown);
    ASSERT_EQ(symbolic.verdict, depth_first.verdict) << "iteration " << iter << "\nsymbolic: " << symbolic.explanation
                                                     << "\ndepth-first: " << depth_first.explanation;
    rejected += symbolic.ok() ? 0 : 1;
  }
  EXPECT_GT(rejected, 5);
}

INSTANTIATE_TEST_SUITE_P(Seeds, LincheckOracle, ::testing::Values(11, 12, 13));

// ---------------------------------------------------------------------------------------------
// Randomised: long stretched runs are linearizable; an impossible output is caught.

class LincheckRandom : public ::testing::TestWithParam<uint64_t> {};

TEST_P(LincheckRandom, KvStretchedRunIsLinearizableAndCorruptionIsCaught) {
  std::mt19937_64 rng(GetParam());
  KvHistory h = stretch<KvModel>(random_kv_run(4000, 8, 50, rng), 4, rng);
  const CheckResult r = check(h);
  ASSERT_TRUE(r.ok()) << r.explanation;

  // Any KV op returns the value it found; a value never written to any key cannot be found.
  Operation<KvModel>& victim = h[rng() % h.size()];
  victim.output = kNeverWritten + victim.input.key;
  const CheckResult bad = check(h);
  EXPECT_EQ(bad.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(bad.explanation.rfind("key " + std::to_string(victim.input.key) + ":", 0), 0u) << bad.explanation;
}

TEST_P(LincheckRandom, StackStretchedRunIsLinearizableAndCorruptionIsCaught) {
  std::mt19937_64 rng(GetParam());
  StackHistory h = stretch<StackModel>(random_stack_run(3000, 20, rng), 4, rng);
  const CheckResult r = check(h);
  ASSERT_TRUE(r.ok()) << r.explanation;

  std::vector<size_t> pops;
  for (size_t i = 0; i < h.size(); ++i) {
    if (h[i].input.op == StackOp::kPop) pops.push_back(i);
  }
  ASSERT_FALSE(pops.empty());
  h[pops[rng() % pops.size()]].output = kNeverWritten;  // never pushed
  EXPECT_EQ(check(h).verdict, Verdict::kNotLinearizable);
}

INSTANTIATE_TEST_SUITE_P(Seeds, LincheckRandom, ::testing::Values(1, 2, 3, 42, 1234, 987654321));

// ---------------------------------------------------------------------------------------------
// Scale: the shapes the stress tests feed in, with times printed for reference.

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void report(const char* what, size_t ops, const CheckResult& r, std::chrono::steady_clock::time_point start) {
  std::printf("%s: %zu ops, %llu states, %.3f s\n", what, ops, static_cast<unsigned long long>(r.states_explored),
              seconds_since(start));
}

TEST(LincheckScale, KvEightyThousandOpsOverSixtyFourKeys) {
  std::mt19937_64 rng(7);
  const KvHistory h = stretch<KvModel>(random_kv_run(80'000, 64, 50, rng), 4, rng);
  const auto start = std::chrono::steady_clock::now();
  const CheckResult r = check(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
  report("kv", h.size(), r, start);
}

TEST(LincheckScale, StackTwentyThousandOps) {
  std::mt19937_64 rng(8);
  const StackHistory h = stretch<StackModel>(random_stack_run(20'000, 20, rng), 4, rng);
  const auto start = std::chrono::steady_clock::now();
  const CheckResult r = check(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
  report("stack", h.size(), r, start);
}

TEST_P(LincheckStack, HundredThousandOpPartitionDoesNotRecurse) {
  // One long partition, checked to the end and rejected at the very last op: 10^5 levels deep,
  // which a recursive search would not survive on a default thread stack.
  StackHistory h;
  constexpr uint64_t kPairs = 50'000;
  for (uint64_t i = 0; i < kPairs; ++i) {
    h.push_back(st_push(0, 4 * i, 4 * i + 1, i));
    h.push_back(st_pop(0, 4 * i + 2, 4 * i + 3, i));
  }
  EXPECT_TRUE(check_stack(h).ok());
  h.back().output = kNeverWritten;
  const CheckResult r = check_stack(h);
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.explanation.find("99999 of 100000"), std::string::npos) << r.explanation;
}

TEST_P(LincheckStack, DeepStackThenDrain) {
  // Every thread pushes, then pops, its values: a stack 10^4 deep (symbolic) or 2000 deep
  // (depth-first, whose memo holds a copy of the stack per configuration), concurrent pushes
  // all along.
  constexpr uint64_t kThreadsHere = 4;
  const uint64_t kPerThread = GetParam() == Engine::kSymbolic ? 2500 : 500;
  StackHistory h;
  std::vector<uint64_t> stack;
  uint64_t t = 0;
  for (uint64_t i = 0; i < kPerThread; ++i, t += 2) {
    for (uint32_t th = 0; th < kThreadsHere; ++th) {
      h.push_back(st_push(th, t, t + 1, i * kThreadsHere + th));
      stack.push_back(i * kThreadsHere + th);
    }
  }
  for (uint64_t i = 0; i < kPerThread; ++i, t += 2) {
    for (uint32_t th = 0; th < kThreadsHere; ++th) {
      h.push_back(st_pop(th, t, t + 1, stack.back()));
      stack.pop_back();
    }
  }
  const auto start = std::chrono::steady_clock::now();
  const CheckResult r = check_stack(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
  report(GetParam() == Engine::kSymbolic ? "deep stack, symbolic" : "deep stack, depth-first", h.size(), r, start);
}

// ---------------------------------------------------------------------------------------------
// The symbolic stack sets on their own.

TEST(LincheckStackSymbolic, JoinOfSetsThatDifferOnlyAtTheBottom) {
  // {[0, 1..N]} and {[9, 1..N]}: the join walks N levels of common tops, iteratively.
  constexpr uint64_t kDepth = 100'000;
  StackModel::Symbolic sym;
  const StackModel::Input push0{StackOp::kPush, 0}, push9{StackOp::kPush, 9}, pop{StackOp::kPop, 0};
  StackModel::Symbolic::Set a = sym.step(sym.init(), push0, std::nullopt);
  StackModel::Symbolic::Set b = sym.step(sym.init(), push9, std::nullopt);
  for (uint64_t v = 1; v <= kDepth; ++v) {
    a = sym.step(a, {StackOp::kPush, v}, std::nullopt);
    b = sym.step(b, {StackOp::kPush, v}, std::nullopt);
  }
  StackModel::Symbolic::Set both = sym.join(a, b);
  EXPECT_EQ(sym.join(both, a), both);  // hash-consed: a subset joins to the same node
  EXPECT_EQ(sym.join(b, a), both);
  for (uint64_t v = kDepth; v >= 1; --v) {
    EXPECT_TRUE(sym.empty(sym.step(both, pop, v + 1)));
    both = sym.step(both, pop, v);
    ASSERT_FALSE(sym.empty(both));
  }
  EXPECT_TRUE(sym.empty(sym.step(both, pop, std::nullopt)));
  EXPECT_FALSE(sym.empty(sym.step(sym.step(both, pop, 0), pop, std::nullopt)));
  EXPECT_FALSE(sym.empty(sym.step(sym.step(both, pop, 9), pop, std::nullopt)));
  EXPECT_TRUE(sym.empty(sym.step(both, pop, 5)));
}

TEST(LincheckStackSymbolic, JoinKeepsTheEmptyStackFromEitherSide) {
  const StackModel::Input pop{StackOp::kPop, 0};
  for (const bool empty_first : {true, false}) {
    StackModel::Symbolic sym;  // a fresh one per order: joins are memoised
    const StackModel::Symbolic::Set empty_stack = sym.init();
    const StackModel::Symbolic::Set one = sym.step(empty_stack, {StackOp::kPush, 1}, std::nullopt);
    const StackModel::Symbolic::Set joined = empty_first ? sym.join(empty_stack, one) : sym.join(one, empty_stack);
    EXPECT_FALSE(sym.empty(sym.step(joined, pop, std::nullopt)));
    EXPECT_FALSE(sym.empty(sym.step(joined, pop, 1)));
    EXPECT_TRUE(sym.empty(sym.step(joined, pop, 2)));
  }
}

TEST(LincheckStackSymbolic, PushReportingAValueLeavesNothing) {
  StackModel::Symbolic sym;
  EXPECT_TRUE(sym.empty(sym.step(sym.init(), {StackOp::kPush, 1}, 1)));
  EXPECT_FALSE(sym.empty(sym.step(sym.init(), {StackOp::kPop, 0}, std::nullopt)));
  EXPECT_TRUE(sym.empty(sym.step(sym.init(), {StackOp::kPop, 0}, 1)));
}

// ---------------------------------------------------------------------------------------------
// Recorder with real threads on correct objects.

class NRX_CAPABILITY("mutex") Mutex {
 public:
  void lock() NRX_ACQUIRE() { mu_.lock(); }
  void unlock() NRX_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class NRX_SCOPED_CAPABILITY Lock {
 public:
  explicit Lock(Mutex& mu) NRX_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~Lock() NRX_RELEASE() { mu_.unlock(); }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

 private:
  Mutex& mu_;
};

class LockedMap {
 public:
  Out put(uint64_t k, uint64_t v) {
    Lock l(mu_);
    const auto [it, inserted] = map_.try_emplace(k, v);
    if (inserted) return std::nullopt;
    return std::exchange(it->second, v);
  }
  Out get(uint64_t k) {
    Lock l(mu_);
    const auto it = map_.find(k);
    return it == map_.end() ? Out{} : Out{it->second};
  }
  Out remove(uint64_t k) {
    Lock l(mu_);
    const auto it = map_.find(k);
    if (it == map_.end()) return std::nullopt;
    const uint64_t v = it->second;
    map_.erase(it);
    return v;
  }

 private:
  Mutex mu_;
  std::map<uint64_t, uint64_t> map_ NRX_GUARDED_BY(mu_);
};

class LockedStack {
 public:
  void push(uint64_t v) {
    Lock l(mu_);
    stack_.push_back(v);
  }
  Out pop() {
    Lock l(mu_);
    if (stack_.empty()) return std::nullopt;
    const uint64_t v = stack_.back();
    stack_.pop_back();
    return v;
  }

 private:
  Mutex mu_;
  std::vector<uint64_t> stack_ NRX_GUARDED_BY(mu_);
};

// Treiber's lock-free stack. Nodes come from per-thread pools and are never reused, so there is
// no ABA and no reclamation; the pools outlive every thread.
class TreiberStack {
 public:
  struct Node {
    uint64_t value;
    Node* next;
  };

  void push(Node* node) {
    Node* top = top_.load(std::memory_order_relaxed);
    do {
      node->next = top;
      // release: publish the node's fields with it; relaxed on failure: only retried.
    } while (!top_.compare_exchange_weak(top, node, std::memory_order_release, std::memory_order_relaxed));
  }

  Out pop() {
    // acquire: read the node's fields after seeing it on top.
    Node* top = top_.load(std::memory_order_acquire);
    while (top != nullptr &&
           !top_.compare_exchange_weak(top, top->next, std::memory_order_acquire, std::memory_order_acquire)) {
    }
    return top == nullptr ? Out{} : Out{top->value};
  }

 private:
  std::atomic<Node*> top_{nullptr};
};

constexpr uint32_t kThreads = 4;

TEST(LincheckRecorder, LockedMapIsLinearizable) {
  constexpr size_t kOpsPerThread = 5000;
  LockedMap map;
  Recorder<KvModel> rec(kThreads, kOpsPerThread);
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      for (size_t i = 0; i < kOpsPerThread; ++i) {
        const uint64_t key = rng() % 16;
        const uint64_t value = 1 + rng() % 8;
        const uint64_t dice = rng() % 10;
        const uint64_t stamp = rec.begin(t);
        if (dice < 4) {
          rec.end(t, stamp, {KvOp::kPut, key, value}, map.put(key, value));
        } else if (dice < 8) {
          rec.end(t, stamp, {KvOp::kGet, key, 0}, map.get(key));
        } else {
          rec.end(t, stamp, {KvOp::kRemove, key, 0}, map.remove(key));
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();

  const KvHistory h = rec.history();
  ASSERT_EQ(h.size(), kThreads * kOpsPerThread);
  // Stamps are unique, and each thread's operations follow one another.
  std::vector<uint64_t> stamps;
  std::vector<uint64_t> last_response(kThreads, 0);
  std::vector<bool> seen(kThreads, false);
  for (const auto& op : h) {
    ASSERT_LT(op.invoke, op.response);
    if (seen[op.thread]) {
      ASSERT_GT(op.invoke, last_response[op.thread]);
    }
    seen[op.thread] = true;
    last_response[op.thread] = op.response;
    stamps.push_back(op.invoke);
    stamps.push_back(op.response);
  }
  std::sort(stamps.begin(), stamps.end());
  EXPECT_EQ(std::adjacent_find(stamps.begin(), stamps.end()), stamps.end());

  const CheckResult r = check(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
}

TEST(LincheckRecorder, LockedStackIsLinearizable) {
  constexpr size_t kOpsPerThread = 5000;
  LockedStack stack;
  Recorder<StackModel> rec(kThreads);
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(200 + t);
      for (size_t i = 0; i < kOpsPerThread; ++i) {
        const uint64_t stamp = rec.begin(t);
        if (rng() % 2 == 0) {
          const uint64_t value = t * kOpsPerThread + i;
          stack.push(value);
          rec.end(t, stamp, {StackOp::kPush, value}, std::nullopt);
        } else {
          rec.end(t, stamp, {StackOp::kPop, 0}, stack.pop());
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();

  const StackHistory h = rec.history();
  ASSERT_EQ(h.size(), kThreads * kOpsPerThread);
  // The default (symbolic) engine only: on real stack histories the depth-first one can take
  // exponential time, which is why the symbolic one exists.
  const auto start = std::chrono::steady_clock::now();
  const CheckResult r = check(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
  report("locked stack", h.size(), r, start);
}

TEST(LincheckRecorder, TreiberStackWithPreemptionIsLinearizable) {
  // Threads yield now and then inside an operation, so some intervals span many others: the
  // histories on which a concrete depth-first search blows up.
  constexpr size_t kOpsPerThread = 5000;
  TreiberStack stack;
  std::vector<std::vector<TreiberStack::Node>> pools(kThreads, std::vector<TreiberStack::Node>(kOpsPerThread));
  Recorder<StackModel> rec(kThreads, kOpsPerThread);
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(300 + t);
      for (size_t i = 0; i < kOpsPerThread; ++i) {
        const bool push = rng() % 2 == 0;
        const bool preempt = rng() % 64 == 0;
        const uint64_t stamp = rec.begin(t);
        if (push) {
          TreiberStack::Node* node = &pools[t][i];
          node->value = t * kOpsPerThread + i;
          if (preempt) std::this_thread::yield();
          stack.push(node);
          rec.end(t, stamp, {StackOp::kPush, node->value}, std::nullopt);
        } else {
          const Out popped = stack.pop();
          if (preempt) std::this_thread::yield();
          rec.end(t, stamp, {StackOp::kPop, 0}, popped);
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();

  const StackHistory h = rec.history();
  const auto start = std::chrono::steady_clock::now();
  const CheckResult r = check(h);
  EXPECT_TRUE(r.ok()) << r.explanation;
  report("treiber", h.size(), r, start);
}

}  // namespace
}  // namespace nrx::lincheck
