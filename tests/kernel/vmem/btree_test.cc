// Tests of vmem::BTreeMap (kernel/vmem/btree.h), NR-vMem's mapping B-tree:
//  - deterministic cases: insert and erase at every position of trees of many sizes and shapes,
//    root split, borrow from either sibling, merge and root shrink, floor/ceil at the edges,
//    for_each_in over ranges that start and end on, between and outside the keys, copy and move;
//  - object lifetimes (every constructed key and value destroyed once, nothing left behind by
//    entries moving between nodes), a move-only and a non-default-constructible value type, a
//    throwing value copy, and an allocation failure injected at every allocation of insert (the map
//    must stay as it was);
//  - O(log n) checks by counting key comparisons (find; for_each_in skips the subtrees outside
//    its range);
//  - a randomized model test against std::map over a table of node sizes and key spaces, 8 seeds
//    each, comparing every answer and checking the invariants as it goes.
#include "kernel/vmem/btree.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// Allocation failure injection for the whole test binary: while g_alloc_budget >= 0, each
// operator new takes one from it and throws std::bad_alloc when it is 0. -1: unlimited.
namespace {
std::atomic<int64_t> g_alloc_budget{-1};
}  // namespace

void* operator new(std::size_t n) {
  int64_t b = g_alloc_budget.load(std::memory_order_relaxed);
  while (b >= 0) {
    if (b == 0) throw std::bad_alloc();
    if (g_alloc_budget.compare_exchange_weak(b, b - 1, std::memory_order_relaxed)) break;
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// GCC pairs the free() here with the operator new call sites it sees inlined and calls them
// mismatched; they are not: this operator new allocates with malloc.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace nrx::vmem {
namespace {

using Pairs = std::vector<std::pair<uint64_t, uint64_t>>;

template <typename Map>
Pairs contents(const Map& m) {
  Pairs out;
  m.for_each([&](const auto& k, const auto& v) { out.emplace_back(k, v); });
  return out;
}

template <typename Map>
Pairs range(const Map& m, uint64_t lo, uint64_t hi) {
  Pairs out;
  m.for_each_in(lo, hi, [&](const auto& k, const auto& v) { out.emplace_back(k, v); });
  return out;
}

template <typename Map>
::testing::AssertionResult valid(const Map& m) {
  std::string why;
  if (m.check_invariants(&why)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "invariant broken: " << why;
}

// The fewest entries a tree of height h can hold (CLRS theorem 18.1) and the most.
template <int kMaxKeys>
void expect_height_within_bounds(size_t n, int h) {
  if (n == 0) {
    EXPECT_EQ(h, 0);
    return;
  }
  const uint64_t t = kMaxKeys / 2 + 1;
  uint64_t fewest = 2, most = 1;
  for (int i = 1; i < h; ++i) fewest *= t;
  for (int i = 0; i < h; ++i) most *= kMaxKeys + 1;
  EXPECT_LE(fewest - 1, n) << "height " << h << " too tall for " << n << " entries";
  EXPECT_LE(n, most - 1) << "height " << h << " too short for " << n << " entries";
}

// Keys 10, 20, ..., 10n with value key + 1, inserted in one of three orders (different shapes).
enum class Order { kAscending, kDescending, kShuffled };

template <int kMaxKeys>
BTreeMap<uint64_t, uint64_t, kMaxKeys> build(int n, Order order) {
  std::vector<uint64_t> keys(n);
  for (int i = 0; i < n; ++i) keys[i] = 10 * static_cast<uint64_t>(i + 1);
  if (order == Order::kDescending) std::reverse(keys.begin(), keys.end());
  if (order == Order::kShuffled) std::shuffle(keys.begin(), keys.end(), std::mt19937_64(n));
  BTreeMap<uint64_t, uint64_t, kMaxKeys> m;
  for (uint64_t k : keys) EXPECT_TRUE(m.insert(k, k + 1));
  return m;
}

Pairs expected_keys(int n) {
  Pairs out;
  for (int i = 1; i <= n; ++i) out.emplace_back(10 * i, 10 * i + 1);
  return out;
}

// Node sizes for the typed tests: the smallest (deepest trees, most splits and merges), a small
// one, and the default.
template <typename T>
class BTreeMapTyped : public ::testing::Test {};
using NodeSizes = ::testing::Types<std::integral_constant<int, 3>, std::integral_constant<int, 5>,
                                   std::integral_constant<int, 31>>;
TYPED_TEST_SUITE(BTreeMapTyped, NodeSizes);

TEST(BTreeMap, EmptyMap) {
  BTreeMap<uint64_t, uint64_t> m;
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.height(), 0);
  EXPECT_EQ(m.find(1), nullptr);
  EXPECT_FALSE(m.contains(1));
  EXPECT_FALSE(m.floor(1).has_value());
  EXPECT_FALSE(m.ceil(1).has_value());
  uint64_t k = 99;
  EXPECT_EQ(m.floor_value(1, &k), nullptr);
  EXPECT_EQ(m.ceil_value(1, &k), nullptr);
  EXPECT_EQ(k, 99u);
  EXPECT_FALSE(m.erase(1));
  EXPECT_TRUE(contents(m).empty());
  EXPECT_TRUE(range(m, 0, UINT64_MAX).empty());
  EXPECT_TRUE(valid(m));
  m.clear();
  EXPECT_TRUE(valid(m));
}

TEST(BTreeMap, InsertFindErase) {
  BTreeMap<uint64_t, uint64_t> m;
  EXPECT_TRUE(m.insert(7, 70));
  EXPECT_TRUE(m.insert(3, 30));
  EXPECT_FALSE(m.insert(7, 71)) << "duplicate insert must fail";
  ASSERT_NE(m.find(7), nullptr);
  EXPECT_EQ(*m.find(7), 70u) << "duplicate insert must not change the value";
  *m.find(3) = 33;
  const auto& cm = m;
  ASSERT_NE(cm.find(3), nullptr);
  EXPECT_EQ(*cm.find(3), 33u);
  EXPECT_EQ(m.size(), 2u);
  EXPECT_TRUE(m.erase(7));
  EXPECT_FALSE(m.erase(7));
  EXPECT_EQ(m.find(7), nullptr);
  EXPECT_EQ(m.size(), 1u);
  EXPECT_TRUE(valid(m));
  EXPECT_TRUE(m.erase(3));
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.height(), 0);
  EXPECT_TRUE(valid(m));
}

TYPED_TEST(BTreeMapTyped, InsertAtEveryPosition) {
  constexpr int kMax = TypeParam::value;
  for (Order order : {Order::kAscending, Order::kDescending, Order::kShuffled}) {
    for (int n = 0; n <= 70; ++n) {
      const auto base = build<kMax>(n, order);
      ASSERT_TRUE(valid(base));
      for (int p = 0; p <= n; ++p) {
        SCOPED_TRACE("order " + std::to_string(static_cast<int>(order)) + " n " +
                     std::to_string(n) + " p " + std::to_string(p));
        auto m = base;
        const uint64_t k = 10 * static_cast<uint64_t>(p) + 5;  // between keys p and p + 1
        ASSERT_TRUE(m.insert(k, 1));
        ASSERT_TRUE(valid(m));
        Pairs want = expected_keys(n);
        want.insert(want.begin() + p, {k, 1});
        ASSERT_EQ(contents(m), want);
        ASSERT_FALSE(m.insert(k, 2));
        ASSERT_TRUE(m.erase(k));
        ASSERT_TRUE(valid(m));
        ASSERT_EQ(contents(m), expected_keys(n));
      }
    }
  }
}

TYPED_TEST(BTreeMapTyped, EraseAtEveryPosition) {
  constexpr int kMax = TypeParam::value;
  for (Order order : {Order::kAscending, Order::kDescending, Order::kShuffled}) {
    for (int n = 1; n <= 70; ++n) {
      const auto base = build<kMax>(n, order);
      for (int p = 0; p < n; ++p) {
        SCOPED_TRACE("order " + std::to_string(static_cast<int>(order)) + " n " +
                     std::to_string(n) + " p " + std::to_string(p));
        auto m = base;
        const uint64_t k = 10 * static_cast<uint64_t>(p + 1);
        ASSERT_TRUE(m.erase(k));
        ASSERT_TRUE(valid(m));
        ASSERT_FALSE(m.erase(k));
        ASSERT_FALSE(m.erase(k + 1));
        Pairs want = expected_keys(n);
        want.erase(want.begin() + p);
        ASSERT_EQ(contents(m), want);
        ASSERT_EQ(m.size(), static_cast<size_t>(n - 1));
        ASSERT_TRUE(m.insert(k, k + 1));
        ASSERT_TRUE(valid(m));
        ASSERT_EQ(contents(m), expected_keys(n));
      }
    }
  }
}

// Grows to ~20k entries and shrinks to nothing in three orders; the height stays within the
// B-tree bounds and changes one level at a time.
TYPED_TEST(BTreeMapTyped, GrowAndShrink) {
  constexpr int kMax = TypeParam::value;
  constexpr int kN = 20000;
  for (Order order : {Order::kAscending, Order::kDescending, Order::kShuffled}) {
    std::vector<uint64_t> keys(kN);
    std::iota(keys.begin(), keys.end(), 0);
    if (order == Order::kDescending) std::reverse(keys.begin(), keys.end());
    if (order == Order::kShuffled) std::shuffle(keys.begin(), keys.end(), std::mt19937_64(1));
    BTreeMap<uint64_t, uint64_t, kMax> m;
    int h = 0;
    for (int i = 0; i < kN; ++i) {
      ASSERT_TRUE(m.insert(keys[i], i));
      ASSERT_TRUE(m.height() == h || m.height() == h + 1);
      h = m.height();
      if (i % 997 == 0) {
        ASSERT_TRUE(valid(m));
      }
    }
    ASSERT_TRUE(valid(m));
    expect_height_within_bounds<kMax>(m.size(), m.height());
    std::shuffle(keys.begin(), keys.end(), std::mt19937_64(2));
    for (int i = 0; i < kN; ++i) {
      ASSERT_TRUE(m.erase(keys[i]));
      ASSERT_TRUE(m.height() == h || m.height() == h - 1);
      h = m.height();
      if (i % 997 == 0) {
        ASSERT_TRUE(valid(m));
        expect_height_within_bounds<kMax>(m.size(), m.height());
      }
    }
    EXPECT_TRUE(m.empty());
    EXPECT_EQ(m.height(), 0);
    EXPECT_TRUE(valid(m));
  }
}

// With kMaxKeys = 3 the shapes are small enough to follow by hand. 1..4 overflows the root leaf:
// it keeps [1], 2 goes up into a new root, [3 4] is the right half.
TEST(BTreeMap, RootSplitBorrowMergeAndShrink) {
  using Map = BTreeMap<uint64_t, uint64_t, 3>;
  auto make = [] {
    Map m;
    for (uint64_t k = 1; k <= 3; ++k) EXPECT_TRUE(m.insert(k, k));
    EXPECT_EQ(m.height(), 1);
    EXPECT_TRUE(m.insert(4, 4));  // root split
    EXPECT_EQ(m.height(), 2);
    EXPECT_TRUE(valid(m));
    return m;
  };
  {
    // Erase 1: [] borrows 3 through the root from [3 4] -> root [3], leaves [2] [4].
    Map m = make();
    ASSERT_TRUE(m.erase(1));
    EXPECT_EQ(m.height(), 2);
    EXPECT_TRUE(valid(m));
    // Erase 2: [] cannot borrow from [4], merges into [3 4] and the empty root goes.
    ASSERT_TRUE(m.erase(2));
    EXPECT_EQ(m.height(), 1);
    EXPECT_TRUE(valid(m));
    EXPECT_EQ(contents(m), (Pairs{{3, 3}, {4, 4}}));
  }
  {
    // Insert 0 -> leaves [0 1] [3 4]; erase 4 and 3: [] borrows 1 through the root from [0 1].
    Map m = make();
    ASSERT_TRUE(m.insert(0, 0));
    ASSERT_TRUE(m.erase(4));
    ASSERT_TRUE(m.erase(3));
    EXPECT_EQ(m.height(), 2);
    EXPECT_TRUE(valid(m));
    EXPECT_EQ(contents(m), (Pairs{{0, 0}, {1, 1}, {2, 2}}));
  }
  {
    // Erase the root's key: its predecessor 1 replaces it and the thin leaf merges.
    Map m = make();
    ASSERT_TRUE(m.erase(2));
    EXPECT_TRUE(valid(m));
    EXPECT_EQ(contents(m), (Pairs{{1, 1}, {3, 3}, {4, 4}}));
  }
  {
    // Erasing inner keys of a deep tree, root first, each time.
    Map m = build<3>(500, Order::kShuffled);
    ASSERT_GE(m.height(), 5);
    for (int i = 0; i < 500; ++i) {
      // The median key is likely in an inner node; whichever it is must go cleanly.
      Pairs c = contents(m);
      const uint64_t k = c[c.size() / 2].first;
      ASSERT_TRUE(m.erase(k));
      ASSERT_TRUE(valid(m));
      ASSERT_EQ(m.find(k), nullptr);
    }
    EXPECT_TRUE(m.empty());
  }
}

TYPED_TEST(BTreeMapTyped, FloorAndCeil) {
  constexpr int kMax = TypeParam::value;
  for (int n : {1, 3, 1000}) {
    auto m = build<kMax>(n, Order::kShuffled);
    const uint64_t top = 10 * static_cast<uint64_t>(n);
    for (uint64_t q = 0; q <= top + 11; ++q) {
      const auto f = m.floor(q);
      if (q < 10) {
        ASSERT_FALSE(f.has_value()) << q;
      } else {
        const uint64_t want = std::min(q / 10 * 10, top);
        ASSERT_TRUE(f.has_value()) << q;
        ASSERT_EQ(f->first, want) << q;
        ASSERT_EQ(*f->second, want + 1) << q;
      }
      const auto c = m.ceil(q);
      if (q > top) {
        ASSERT_FALSE(c.has_value()) << q;
      } else {
        const uint64_t want = std::max<uint64_t>((q + 9) / 10 * 10, 10);
        ASSERT_TRUE(c.has_value()) << q;
        ASSERT_EQ(c->first, want) << q;
        ASSERT_EQ(*c->second, want + 1) << q;
      }
    }
    // Extremes of the key type.
    EXPECT_FALSE(m.floor(0).has_value());
    EXPECT_EQ(m.floor(UINT64_MAX)->first, top);
    EXPECT_EQ(m.ceil(0)->first, 10u);
    EXPECT_FALSE(m.ceil(UINT64_MAX).has_value());
  }
}

TEST(BTreeMap, FloorValueAndCeilValueUpdateInPlace) {
  auto m = build<3>(100, Order::kAscending);
  uint64_t k = 0;
  uint64_t* v = m.floor_value(255, &k);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(k, 250u);
  *v = 7;
  EXPECT_EQ(*m.find(250), 7u);
  v = m.ceil_value(255, &k);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(k, 260u);
  *v = 8;
  EXPECT_EQ(*m.find(260), 8u);
  EXPECT_EQ(m.floor_value(260), m.find(260)) << "exact hits; found_key is optional";
  EXPECT_EQ(m.ceil_value(250), m.find(250));
  k = 42;
  EXPECT_EQ(m.floor_value(5, &k), nullptr);
  EXPECT_EQ(m.ceil_value(1005, &k), nullptr);
  EXPECT_EQ(k, 42u) << "found_key untouched on a miss";
  EXPECT_TRUE(valid(m));
}

TYPED_TEST(BTreeMapTyped, ForEachInEveryRange) {
  constexpr int kMax = TypeParam::value;
  const auto m = build<kMax>(60, Order::kShuffled);  // keys 10..600
  for (uint64_t lo = 0; lo <= 615; lo += 5) {
    for (uint64_t hi = 0; hi <= 615; hi += 5) {
      Pairs want;
      for (uint64_t k = 10; k <= 600; k += 10) {
        if (lo <= k && k < hi) want.emplace_back(k, k + 1);
      }
      ASSERT_EQ(range(m, lo, hi), want) << "[" << lo << ", " << hi << ")";
    }
  }
  EXPECT_EQ(range(m, 0, UINT64_MAX), expected_keys(60));
  EXPECT_EQ(range(m, UINT64_MAX, 0), Pairs{});
  EXPECT_EQ(range(m, 601, UINT64_MAX), Pairs{});
  EXPECT_EQ(range(m, 0, 10), Pairs{});
  EXPECT_EQ(range(m, 600, 601), (Pairs{{600, 601}}));
}

TEST(BTreeMap, ForEachVisitsInOrder) {
  auto m = build<5>(1000, Order::kShuffled);
  EXPECT_EQ(contents(m), expected_keys(1000));
}

// A key that counts its comparisons, to see how much of the tree an operation touches.
struct CountedKey {
  uint64_t v;
  static inline uint64_t comparisons = 0;
  friend bool operator<(const CountedKey& a, const CountedKey& b) {
    ++comparisons;
    return a.v < b.v;
  }
};

TEST(BTreeMap, OperationsTouchOnlyAPathOfTheTree) {
  constexpr int kMax = 3;
  constexpr uint64_t kN = 100000;
  BTreeMap<CountedKey, uint64_t, kMax> m;
  for (uint64_t k = 0; k < kN; ++k) ASSERT_TRUE(m.insert(CountedKey{2 * k}, k));
  const int h = m.height();
  // lower_bound in a node costs at most 2 comparisons for 3 keys (+1 for equality).
  const uint64_t per_path = static_cast<uint64_t>(h) * 4;
  for (uint64_t k : {uint64_t{0}, kN / 3 * 2, kN - 1}) {
    for (uint64_t q : {2 * k, 2 * k + 1}) {
      CountedKey::comparisons = 0;
      (void)m.find(CountedKey{q});
      EXPECT_LE(CountedKey::comparisons, per_path);
      CountedKey::comparisons = 0;
      (void)m.floor(CountedKey{q});
      (void)m.ceil(CountedKey{q});
      EXPECT_LE(CountedKey::comparisons, 2 * per_path);
    }
    // A range holding 0, 1 or 50 keys: one path down on each side plus the keys reported.
    for (uint64_t width : {uint64_t{1}, uint64_t{2}, uint64_t{100}}) {
      uint64_t seen = 0;
      CountedKey::comparisons = 0;
      m.for_each_in(CountedKey{2 * k}, CountedKey{2 * k + width},
                    [&](const CountedKey&, const uint64_t&) { ++seen; });
      EXPECT_LE(CountedKey::comparisons, 2 * per_path + 2 * seen) << "width " << width;
    }
  }
}

// Copies are deep; moved-from maps are empty and usable.
TEST(BTreeMap, CopyAndMove) {
  auto a = build<3>(200, Order::kShuffled);
  BTreeMap<uint64_t, uint64_t, 3> b(a);
  EXPECT_TRUE(valid(b));
  EXPECT_EQ(contents(b), contents(a));
  EXPECT_EQ(b.height(), a.height());
  *b.find(10) = 0;
  ASSERT_TRUE(b.erase(20));
  ASSERT_TRUE(b.insert(15, 16));
  EXPECT_EQ(contents(a), expected_keys(200)) << "a copy shares nothing with its source";

  BTreeMap<uint64_t, uint64_t, 3> c;
  ASSERT_TRUE(c.insert(1, 1));
  c = a;
  EXPECT_EQ(contents(c), expected_keys(200));
  const auto& self = c;
  c = self;
  EXPECT_EQ(contents(c), expected_keys(200));
  EXPECT_TRUE(valid(c));

  BTreeMap<uint64_t, uint64_t, 3> d(std::move(c));
  EXPECT_EQ(contents(d), expected_keys(200));
  EXPECT_TRUE(c.empty());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_EQ(c.height(), 0);
  EXPECT_TRUE(valid(c));
  ASSERT_TRUE(c.insert(5, 6));
  EXPECT_EQ(contents(c), (Pairs{{5, 6}}));

  c = std::move(d);
  EXPECT_EQ(contents(c), expected_keys(200));
  EXPECT_TRUE(d.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(valid(d));

  swap(c, b);
  EXPECT_EQ(contents(b), expected_keys(200));
  EXPECT_EQ(c.size(), 200u);
  EXPECT_EQ(*c.find(15), 16u);

  c.clear();
  EXPECT_TRUE(c.empty());
  EXPECT_TRUE(valid(c));
  ASSERT_TRUE(c.insert(1, 2));
  EXPECT_EQ(c.size(), 1u);
}

// A value that counts live objects: every entry moved between nodes must leave nothing behind.
struct Tracked {
  static inline int64_t live = 0;
  static inline int64_t copies_until_throw = -1;  // -1: never throw
  uint64_t v;
  explicit Tracked(uint64_t x) : v(x) { ++live; }
  Tracked(const Tracked& o) : v(o.v) {
    if (copies_until_throw == 0) throw std::runtime_error("copy failed");
    if (copies_until_throw > 0) --copies_until_throw;
    ++live;
  }
  Tracked(Tracked&& o) noexcept : v(o.v) { ++live; }
  Tracked& operator=(const Tracked&) = delete;
  Tracked& operator=(Tracked&&) = delete;
  ~Tracked() { --live; }
};
static_assert(!std::is_default_constructible_v<Tracked> && !std::is_move_assignable_v<Tracked>);

TEST(BTreeMap, LifetimesBalanceWithNonDefaultConstructibleNonAssignableValues) {
  Tracked::live = 0;
  {
    BTreeMap<uint64_t, Tracked, 3> m;
    std::mt19937_64 rng(3);
    for (int i = 0; i < 20000; ++i) {
      const uint64_t k = rng() % 2000;
      if (rng() % 3 != 0) {
        (void)m.insert(k, Tracked(k));
      } else {
        (void)m.erase(k);
      }
      ASSERT_EQ(Tracked::live, static_cast<int64_t>(m.size())) << "op " << i;
    }
    ASSERT_TRUE(valid(m));
    m.for_each([](uint64_t k, const Tracked& t) { EXPECT_EQ(k, t.v); });
    auto copy = m;
    EXPECT_EQ(Tracked::live, static_cast<int64_t>(2 * m.size()));
  }
  EXPECT_EQ(Tracked::live, 0);
}

TEST(BTreeMap, ThrowingValueCopyLeavesBothMapsIntact) {
  using Map = BTreeMap<uint64_t, Tracked, 3>;
  Tracked::live = 0;
  {
    Map m;
    for (uint64_t k = 0; k < 500; ++k) ASSERT_TRUE(m.insert(k, Tracked(k)));
    Map target;
    ASSERT_TRUE(target.insert(7, Tracked(70)));
    for (int64_t fail_at : {0, 1, 250, 499}) {
      Tracked::copies_until_throw = fail_at;
      EXPECT_THROW({ Map copy(m); }, std::runtime_error);
      Tracked::copies_until_throw = fail_at;
      EXPECT_THROW(target = m, std::runtime_error);
      Tracked::copies_until_throw = -1;
      EXPECT_EQ(Tracked::live, 501) << "a failed copy leaked or lost values";
      EXPECT_TRUE(valid(m));
      EXPECT_EQ(m.size(), 500u);
      ASSERT_EQ(target.size(), 1u);
      EXPECT_EQ(target.find(7)->v, 70u) << "a failed copy assignment changed the target";
    }
  }
  EXPECT_EQ(Tracked::live, 0);
}

TEST(BTreeMap, MoveOnlyValues) {
  using Map = BTreeMap<uint64_t, std::unique_ptr<int>, 3>;
  static_assert(!std::is_copy_constructible_v<Map> && !std::is_copy_assignable_v<Map>);
  static_assert(std::is_nothrow_move_constructible_v<Map> && std::is_nothrow_move_assignable_v<Map>);
  Map m;
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(m.insert(i, std::make_unique<int>(i)));
  EXPECT_FALSE(m.insert(5, std::make_unique<int>(-1)));
  for (int i = 0; i < 1000; i += 2) ASSERT_TRUE(m.erase(i));
  ASSERT_TRUE(valid(m));
  **m.find(501) = 5001;
  Map moved(std::move(m));
  EXPECT_TRUE(m.empty());  // NOLINT(bugprone-use-after-move)
  int count = 0;
  moved.for_each([&](uint64_t k, const std::unique_ptr<int>& p) {
    EXPECT_EQ(*p, k == 501 ? 5001 : static_cast<int>(k));
    EXPECT_EQ(k % 2, 1u);
    ++count;
  });
  EXPECT_EQ(count, 500);
  const auto f = moved.floor(600);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->first, 599u);
  EXPECT_EQ(**f->second, 599);
  uint64_t k = 0;
  std::unique_ptr<int>* c = moved.ceil_value(600, &k);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(k, 601u);
  c->reset();
  EXPECT_EQ(*moved.find(601), nullptr);
}

// A value like NR-vMem's: a mapping with no default state; the usage example in the header.
struct Mapping {
  Mapping(uint64_t f, uint64_t l) : frame(f), len(l) {}
  uint64_t frame;
  uint64_t len;
};
static_assert(!std::is_default_constructible_v<Mapping>);

TEST(BTreeMap, MappingLookupByAddress) {
  BTreeMap<uint64_t, Mapping> maps;
  ASSERT_TRUE(maps.insert(0x4000, Mapping(0x100, 0x2000)));
  ASSERT_TRUE(maps.insert(0x10000, Mapping(0x200, 0x1000)));
  auto covering = [&](uint64_t va) -> std::optional<uint64_t> {
    auto m = maps.floor(va);
    if (m && va < m->first + m->second->len) return m->first;
    return std::nullopt;
  };
  EXPECT_EQ(covering(0x3fff), std::nullopt);
  EXPECT_EQ(covering(0x4000), 0x4000u);
  EXPECT_EQ(covering(0x5fff), 0x4000u);
  EXPECT_EQ(covering(0x6000), std::nullopt);
  EXPECT_EQ(covering(0x10fff), 0x10000u);
  EXPECT_EQ(covering(0x11000), std::nullopt);
}

// Fails each allocation an insert makes in turn (a leaf, split halves, a new root): the map must
// be unchanged after every failure and take the insert on the next try.
TEST(BTreeMap, AllocationFailureLeavesMapUnchanged) {
  BTreeMap<uint64_t, uint64_t, 3> m;
  std::mt19937_64 rng(4);
  int failures = 0, deepest_failure = 0;
  for (int i = 0; i < 3000; ++i) {
    const uint64_t k = rng() % 100000;
    const Pairs before = contents(m);
    const int height_before = m.height();
    for (int64_t budget = 0;; ++budget) {
      bool inserted = false, threw = false;
      g_alloc_budget.store(budget, std::memory_order_relaxed);
      try {
        inserted = m.insert(k, i);
      } catch (const std::bad_alloc&) {
        threw = true;
      }
      g_alloc_budget.store(-1, std::memory_order_relaxed);
      if (!threw) {
        ASSERT_EQ(inserted, std::none_of(before.begin(), before.end(),
                                         [&](const auto& e) { return e.first == k; }));
        break;
      }
      ++failures;
      deepest_failure = std::max(deepest_failure, static_cast<int>(budget));
      ASSERT_EQ(m.height(), height_before);
      ASSERT_EQ(contents(m), before) << "insert " << i << " failed at allocation " << budget;
    }
    if (i % 101 == 0) {
      ASSERT_TRUE(valid(m));
    }
  }
  EXPECT_TRUE(valid(m));
  EXPECT_GT(failures, 0);
  EXPECT_GE(deepest_failure, 2) << "no insert needed three allocations (two splits)";
}

// --- Randomized model test against std::map. ---------------------------------------------------

struct ModelConfig {
  const char* name;
  int max_keys;
  uint64_t key_space;  // keys are drawn from [0, key_space); queries a little beyond
};

// Node sizes 3 (deepest trees), 5 and the default 31, each over a small key space (dense: many
// duplicate inserts, erase hits, a tree that saturates and empties) and a large one (sparse:
// mostly new keys, a tree of thousands of entries).
constexpr ModelConfig kModelConfigs[] = {
    {"max3_small", 3, 1024},          {"max3_large", 3, uint64_t{1} << 40},
    {"max5_small", 5, 1024},          {"max5_large", 5, uint64_t{1} << 40},
    {"max31_small", 31, 1024},        {"max31_large", 31, uint64_t{1} << 40},
};
constexpr int kModelSeeds = 8;
constexpr int kModelOps = 20000;
constexpr int kPhaseOps = 5000;  // alternate growing and shrinking phases
constexpr int kCheckEvery = 64;

template <int kMax>
void run_model(uint64_t seed, uint64_t key_space) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(kMax));
  BTreeMap<uint64_t, uint64_t, kMax> tree;
  std::map<uint64_t, uint64_t> model;
  const uint64_t query_space = key_space + key_space / 8 + 1;
  auto new_key = [&] { return rng() % key_space; };
  auto any_key = [&] { return rng() % query_space; };
  auto existing_key = [&] {
    if (model.empty()) return new_key();
    auto it = model.lower_bound(new_key());
    return it == model.end() ? model.begin()->first : it->first;
  };
  auto model_floor = [&](uint64_t k) -> std::optional<std::pair<uint64_t, uint64_t>> {
    auto it = model.upper_bound(k);
    if (it == model.begin()) return std::nullopt;
    --it;
    return *it;
  };
  auto model_ceil = [&](uint64_t k) -> std::optional<std::pair<uint64_t, uint64_t>> {
    auto it = model.lower_bound(k);
    if (it == model.end()) return std::nullopt;
    return *it;
  };
  auto as_pair = [](const std::optional<std::pair<uint64_t, const uint64_t*>>& e)
      -> std::optional<std::pair<uint64_t, uint64_t>> {
    if (!e) return std::nullopt;
    return std::pair<uint64_t, uint64_t>(e->first, *e->second);
  };

  size_t max_size = 0;
  for (int op = 0; op < kModelOps; ++op) {
    const bool growing = (op / kPhaseOps) % 2 == 0;
    const int insert_pct = growing ? 45 : 10;
    const int erase_pct = growing ? 15 : 50;
    const int r = static_cast<int>(rng() % 100);
    const int q = static_cast<int>(rng() % 4);
    if (r < insert_pct) {
      const uint64_t k = new_key(), v = rng();
      ASSERT_EQ(tree.insert(k, v), model.emplace(k, v).second) << "insert " << k << " op " << op;
    } else if (r < insert_pct + erase_pct) {
      const uint64_t k = q == 0 ? any_key() : existing_key();
      ASSERT_EQ(tree.erase(k), model.erase(k) == 1) << "erase " << k << " op " << op;
    } else if (r < insert_pct + erase_pct + 10) {
      const uint64_t k = q < 2 ? any_key() : existing_key();
      uint64_t* v = tree.find(k);
      auto it = model.find(k);
      ASSERT_EQ(v != nullptr, it != model.end()) << "find " << k << " op " << op;
      if (v != nullptr) {
        ASSERT_EQ(*v, it->second) << "find " << k << " op " << op;
        if (q == 3) it->second = ++*v;
      }
    } else if (r < insert_pct + erase_pct + 20) {
      const uint64_t k = any_key();
      const auto want = model_floor(k);
      ASSERT_EQ(as_pair(tree.floor(k)), want) << "floor " << k << " op " << op;
      if (want && q == 0) {
        uint64_t found = 0;
        uint64_t* v = tree.floor_value(k, &found);
        ASSERT_TRUE(v != nullptr && found == want->first) << "floor_value " << k << " op " << op;
        model[found] = ++*v;
      }
    } else if (r < insert_pct + erase_pct + 30) {
      const uint64_t k = any_key();
      const auto want = model_ceil(k);
      ASSERT_EQ(as_pair(tree.ceil(k)), want) << "ceil " << k << " op " << op;
      if (want && q == 0) {
        uint64_t found = 0;
        uint64_t* v = tree.ceil_value(k, &found);
        ASSERT_TRUE(v != nullptr && found == want->first) << "ceil_value " << k << " op " << op;
        model[found] = ++*v;
      }
    } else {
      uint64_t lo = any_key();
      uint64_t hi = lo + rng() % (key_space / 4 + 2);
      if (q == 0) std::swap(lo, hi);  // an empty (reversed) range now and then
      Pairs want;
      if (lo < hi) {
        for (auto it = model.lower_bound(lo); it != model.end() && it->first < hi; ++it) {
          want.emplace_back(*it);
        }
      }
      ASSERT_EQ(range(tree, lo, hi), want) << "for_each_in [" << lo << ", " << hi << ") op " << op;
    }
    ASSERT_EQ(tree.size(), model.size()) << "op " << op;
    max_size = std::max(max_size, model.size());
    if (op % kCheckEvery == 0 || op == kModelOps - 1) {
      ASSERT_TRUE(valid(tree)) << "op " << op;
      ASSERT_EQ(contents(tree), Pairs(model.begin(), model.end())) << "op " << op;
      expect_height_within_bounds<kMax>(tree.size(), tree.height());
    }
  }
  // A replica starts from a copy: it must be equal and independent.
  auto copy = tree;
  ASSERT_TRUE(valid(copy));
  ASSERT_EQ(contents(copy), contents(tree));
  EXPECT_GT(max_size, 100u) << "the workload never grew the tree";
}

class BTreeMapModelTest : public ::testing::TestWithParam<std::tuple<ModelConfig, int>> {};

TEST_P(BTreeMapModelTest, MatchesStdMap) {
  const auto& [config, seed] = GetParam();
  switch (config.max_keys) {
    case 3: run_model<3>(seed, config.key_space); break;
    case 5: run_model<5>(seed, config.key_space); break;
    case 31: run_model<31>(seed, config.key_space); break;
    default: FAIL() << "no instantiation for max_keys " << config.max_keys;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, BTreeMapModelTest,
    ::testing::Combine(::testing::ValuesIn(kModelConfigs), ::testing::Range(0, kModelSeeds)),
    [](const ::testing::TestParamInfo<BTreeMapModelTest::ParamType>& p) {
      return std::string(std::get<0>(p.param).name) + "_seed" + std::to_string(std::get<1>(p.param));
    });

}  // namespace
}  // namespace nrx::vmem
