// kernel/mem: pools, frame names, NCache (split and coalesce), TCache (refill and drain), and the
// deterministic allocator (first replica decides, failures replicated).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/mem/deterministic_allocator.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"
#include "kernel/mem/ncache.h"
#include "kernel/mem/physical_memory.h"

namespace nrx::mem {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<Memory> make_memory(uint32_t nodes, uint64_t bytes) {
  auto m = Memory::create({.nodes = nodes, .pool_bytes = bytes});
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? std::move(*m) : nullptr;
}

TEST(Frame, NamesAndPhysicalAddressesRoundTrip) {
  Frame f{.pool = 3, .cls = FrameClass::kLarge, .offset = 5 * kLargeFrameSize};
  EXPECT_EQ(f.paddr(), (uint64_t{3} << 40) | (5 * kLargeFrameSize));
  EXPECT_EQ(Frame::from_paddr(f.paddr(), FrameClass::kLarge), f);
  EXPECT_EQ(f.size(), kLargeFrameSize);
  const Frame last{.pool = kMaxPools - 1, .offset = kMaxPoolBytes - kBaseFrameSize};
  EXPECT_LT(last.paddr(), uint64_t{1} << 52);
}

TEST(Pool, RejectsBadSizesAndNodes) {
  EXPECT_EQ(Pool::create({.bytes = 0}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Pool::create({.bytes = 3 * kMiB}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Pool::create({.bytes = 2 * kMaxPoolBytes}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Pool::create({.bytes = 2 * kMiB, .numa_node = 4000}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Memory::create({.nodes = 0}).status().code(), StatusCode::kInvalidArgument);
}

TEST(Pool, IsAlignedWritableAndDescribed) {
  auto pool = Pool::create({.bytes = 4 * kMiB, .numa_node = 0});
  ASSERT_TRUE(pool.ok()) << pool.status().to_string();
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*pool)->base()) % kLargeFrameSize, 0u);
  std::memset((*pool)->base(), 0xab, (*pool)->size());  // every byte is backed
  EXPECT_NE((*pool)->backing().find("node 0"), std::string::npos) << (*pool)->backing();
}

TEST(Pool, HugePagesOnEitherWorkOrSayWhy) {
  auto pool = Pool::create({.bytes = 2 * kMiB, .huge = HugePages::kOn});
  if (pool.ok()) {
    EXPECT_TRUE((*pool)->huge_pages());
  } else {
    EXPECT_EQ(pool.status().code(), StatusCode::kResourceExhausted);
    EXPECT_NE(pool.status().to_string().find("nr_hugepages"), std::string::npos);
  }
}

TEST(PhysicalMemory, ChecksFrameNamesAgainstPools) {
  auto m = make_memory(2, 4 * kMiB);
  ASSERT_NE(m, nullptr);
  const PhysicalMemory& pm = m->physical();
  EXPECT_EQ(pm.frame_ptr({.pool = 1, .offset = 4096}), pm.pool(1)->base() + 4096);
  EXPECT_EQ(pm.frame_ptr({.pool = 2, .offset = 0}), nullptr);                      // no pool 2
  EXPECT_EQ(pm.frame_ptr({.pool = 0, .offset = 4 * kMiB}), nullptr);               // past the end
  EXPECT_EQ(pm.frame_ptr({.pool = 0, .offset = 100}), nullptr);                    // misaligned
  EXPECT_EQ(pm.frame_ptr({.pool = 0, .cls = FrameClass::kLarge, .offset = 4096}), nullptr);
  EXPECT_EQ(pm.paddr_ptr(Frame{.pool = 0, .offset = 3 * kMiB}.paddr(), 2 * kMiB), nullptr);  // runs off the end
  EXPECT_NE(pm.paddr_ptr(Frame{.pool = 0, .offset = 2 * kMiB}.paddr(), 2 * kMiB), nullptr);
}

TEST(NCache, HandsOutEveryFrameOnceThenRunsOut) {
  NCache c(0, 4 * kMiB);
  std::set<uint64_t> seen;
  for (uint64_t i = 0; i < 2 * kBasePerLarge; ++i) {
    auto f = c.allocate(FrameClass::kBase);
    ASSERT_TRUE(f.ok()) << i;
    EXPECT_EQ(f->offset % kBaseFrameSize, 0u);
    EXPECT_TRUE(seen.insert(f->offset).second) << "frame handed out twice";
  }
  EXPECT_EQ(c.allocate(FrameClass::kBase).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(c.allocate(FrameClass::kLarge).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(c.stats().free_bytes(), 0u);
}

TEST(NCache, SplitsAndCoalescesTwoMegabyteFrames) {
  NCache c(0, 4 * kMiB);
  auto small = c.allocate(FrameClass::kBase);
  ASSERT_TRUE(small.ok());
  auto large = c.allocate(FrameClass::kLarge);  // the chunk that was not split
  ASSERT_TRUE(large.ok());
  EXPECT_EQ(c.allocate(FrameClass::kLarge).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(c.stats().free_base, kBasePerLarge - 1);
  ASSERT_TRUE(c.free(*small).ok());  // the split chunk is whole again
  EXPECT_EQ(c.stats().free_large, 1u);
  EXPECT_EQ(c.stats().free_base, 0u);
  EXPECT_TRUE(c.allocate(FrameClass::kLarge).ok());
}

TEST(NCache, RejectsDoubleFreesWrongClassesAndForeignFrames) {
  NCache c(7, 4 * kMiB);
  auto f = c.allocate(FrameClass::kBase);
  auto g = c.allocate(FrameClass::kBase);  // keeps the chunk split after f is freed
  ASSERT_TRUE(f.ok() && g.ok());
  ASSERT_TRUE(c.free(*f).ok());
  EXPECT_EQ(c.free(*f).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.free(Frame{.pool = 7, .cls = FrameClass::kLarge, .offset = 0}).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.free(Frame{.pool = 6, .offset = 0}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.free(Frame{.pool = 7, .offset = 64 * kMiB}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.free(Frame{.pool = 7, .offset = 12}).code(), StatusCode::kInvalidArgument);
}

TEST(TCache, RefillsAndDrainsInBatches) {
  auto m = make_memory(2, 4 * kMiB);
  ASSERT_NE(m, nullptr);
  NCache& node = m->ncache(0);
  const uint64_t before = node.stats().free_bytes();
  std::vector<Frame> frames;
  {
    TCache core(*m, 0);
    auto f = core.allocate(FrameClass::kBase);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->pool, 0u);
    EXPECT_EQ(core.stats().free_base, TCache::kBaseCapacity / 2 - 1);  // one refill batch, minus f
    EXPECT_EQ(node.stats().free_bytes(), before - (TCache::kBaseCapacity / 2) * kBaseFrameSize);
    frames.push_back(*f);
    for (uint32_t i = 0; i < 3 * TCache::kBaseCapacity; ++i) frames.push_back(core.allocate(FrameClass::kBase).value());
    for (const Frame& x : frames) ASSERT_TRUE(core.free(x).ok());
    EXPECT_LT(core.stats().free_base, TCache::kBaseCapacity);  // drained as it filled
    EXPECT_EQ(core.free(frames.back()).code(), StatusCode::kFailedPrecondition);  // still cached: a double free
    // A frame of another node goes straight back to that node.
    auto remote = m->ncache(1).allocate(FrameClass::kLarge);
    ASSERT_TRUE(remote.ok());
    const uint64_t node1 = m->ncache(1).stats().free_large;
    ASSERT_TRUE(core.free(*remote).ok());
    EXPECT_EQ(m->ncache(1).stats().free_large, node1 + 1);
    EXPECT_EQ(core.free(Frame{.pool = 9}).code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(node.stats().free_bytes(), before);  // the destructor drained the rest
  EXPECT_EQ(node.stats().free_large, 2u);        // and every chunk coalesced
}

TEST(TCache, OutOfMemoryIsAnError) {
  auto m = make_memory(1, 2 * kMiB);
  ASSERT_NE(m, nullptr);
  TCache core(*m, 0);
  for (uint64_t i = 0; i < kBasePerLarge; ++i) ASSERT_TRUE(core.allocate(FrameClass::kBase).ok()) << i;
  EXPECT_EQ(core.allocate(FrameClass::kBase).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(core.allocate(FrameClass::kLarge).status().code(), StatusCode::kResourceExhausted);
}

// Cores on two nodes allocate and free at random through their TCaches; an ownership flag per frame
// proves no frame is ever held by two cores, and everything returns at the end.
TEST(TCache, ConcurrentCoresNeverShareAFrame) {
  constexpr uint64_t kPool = 8 * kMiB;
  auto m = make_memory(2, kPool);
  ASSERT_NE(m, nullptr);
  std::vector<std::atomic<uint8_t>> owned(2 * kPool / kBaseFrameSize);
  std::atomic<int> violations{0};
  auto index = [&](const Frame& f) { return f.pool * (kPool / kBaseFrameSize) + f.offset / kBaseFrameSize; };
  std::vector<std::thread> cores;
  for (uint32_t t = 0; t < 4; ++t) {
    cores.emplace_back([&, t] {
      TCache cache(*m, t % 2);
      std::mt19937_64 rng(t);
      std::vector<Frame> held;
      for (int i = 0; i < 20000; ++i) {
        if (held.size() < 200 && (held.empty() || rng() % 2 == 0)) {
          auto f = cache.allocate(FrameClass::kBase);
          if (!f.ok()) continue;
          if (owned[index(*f)].exchange(1, std::memory_order_relaxed) != 0) violations.fetch_add(1);
          held.push_back(*f);
        } else {
          // Free a random one, sometimes to the other node's core cache path (a remote free).
          const size_t k = rng() % held.size();
          owned[index(held[k])].store(0, std::memory_order_relaxed);
          if (!cache.free(held[k]).ok()) violations.fetch_add(1);
          held[k] = held.back();
          held.pop_back();
        }
      }
      for (const Frame& f : held) {
        owned[index(f)].store(0, std::memory_order_relaxed);
        if (!cache.free(f).ok()) violations.fetch_add(1);
      }
    });
  }
  for (auto& c : cores) c.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_EQ(m->stats().free_bytes(), 2 * kPool);
}

TEST(DeterministicAllocator, FirstReplicaDecidesForAll) {
  auto m = make_memory(2, 4 * kMiB);
  ASSERT_NE(m, nullptr);
  DeterministicAllocator det(*m, {0, 1});
  auto a1 = det.take_per_replica({.index = 10}, 1, FrameClass::kBase, 3);  // slot 1 arrives first
  ASSERT_TRUE(a1.ok());
  ASSERT_EQ(a1->size(), 3u);
  for (const Frame& f : *a1) EXPECT_EQ(f.pool, 1u);  // each slot's frames come from its own pool
  EXPECT_EQ(det.pending(), 1u);
  const uint64_t node0 = m->ncache(0).stats().free_bytes();
  auto a0 = det.take_per_replica({.index = 10}, 0, FrameClass::kBase, 3);
  ASSERT_TRUE(a0.ok());
  for (const Frame& f : *a0) EXPECT_EQ(f.pool, 0u);
  EXPECT_EQ(m->ncache(0).stats().free_bytes(), node0);  // slot 0's frames were allocated by slot 1's call
  EXPECT_EQ(det.pending(), 0u);

  auto s0 = det.take_shared({.index = 11}, 0, 1, FrameClass::kLarge, 1);
  auto s1 = det.take_shared({.index = 11}, 1, 1, FrameClass::kLarge, 1);
  ASSERT_TRUE(s0.ok() && s1.ok());
  EXPECT_EQ(*s0, *s1);  // shared: the same frames for everyone

  EXPECT_TRUE(det.take_per_replica({.index = 12}, 0, FrameClass::kBase, 1).ok());
  EXPECT_EQ(det.take_per_replica({.index = 12}, 0, FrameClass::kBase, 1).status().code(),
            StatusCode::kFailedPrecondition);  // a slot takes a key once
  EXPECT_EQ(det.take_shared({.index = 12}, 1, 0, FrameClass::kBase, 1).status().code(),
            StatusCode::kFailedPrecondition);  // the key was decided as per-replica
  EXPECT_EQ(det.take_per_replica({.index = 13}, 2, FrameClass::kBase, 1).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(det.take_shared({.index = 13}, 0, 5, FrameClass::kBase, 1).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(DeterministicAllocator, AFailureIsReplicatedAndLeavesNothingAllocated) {
  auto m = make_memory(2, 2 * kMiB);
  ASSERT_NE(m, nullptr);
  DeterministicAllocator det(*m, {0, 1});
  auto hog = m->ncache(1).allocate(FrameClass::kLarge);  // node 1 is full
  ASSERT_TRUE(hog.ok());
  const uint64_t node0 = m->ncache(0).stats().free_bytes();
  auto a0 = det.take_per_replica({.index = 5}, 0, FrameClass::kBase, 2);
  EXPECT_EQ(a0.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(m->ncache(0).stats().free_bytes(), node0);  // slot 0's frames were given back
  ASSERT_TRUE(m->ncache(1).free(*hog).ok());            // memory frees up before slot 1 arrives...
  auto a1 = det.take_per_replica({.index = 5}, 1, FrameClass::kBase, 2);
  EXPECT_EQ(a1.status().code(), StatusCode::kResourceExhausted);  // ...but the decision stands
  EXPECT_EQ(det.pending(), 0u);
}

// Slots race on the same keys from different threads: for every key each slot gets the frames the
// first arrival decided, shared keys give every slot the same frames, and nothing leaks.
TEST(DeterministicAllocator, ConcurrentSlotsAgree) {
  auto m = make_memory(2, 8 * kMiB);
  ASSERT_NE(m, nullptr);
  DeterministicAllocator det(*m, {0, 1});
  constexpr int kKeys = 2000;
  std::vector<std::vector<Frame>> got[2];
  got[0].resize(kKeys);
  got[1].resize(kKeys);
  std::vector<std::thread> slots;
  for (uint32_t s = 0; s < 2; ++s) {
    slots.emplace_back([&, s] {
      for (int k = 0; k < kKeys; ++k) {
        auto r = det.take_shared({.index = static_cast<uint64_t>(k)}, s, k % 2, FrameClass::kBase, 1);
        if (r.ok()) got[s][k] = *r;
      }
    });
  }
  for (auto& t : slots) t.join();
  EXPECT_EQ(det.pending(), 0u);
  for (int k = 0; k < kKeys; ++k) {
    ASSERT_EQ(got[0][k].size(), 1u);
    EXPECT_EQ(got[0][k], got[1][k]) << k;
    ASSERT_TRUE(m->ncache(got[0][k][0].pool).free(got[0][k][0]).ok());
  }
  EXPECT_EQ(m->stats().free_bytes(), 16 * kMiB);
}

}  // namespace
}  // namespace nrx::mem
