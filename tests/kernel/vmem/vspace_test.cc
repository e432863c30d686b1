// Vspace: NR-vMem with cores, software TLBs and TLB shootdown. The central property: once Unmap
// (or Adjust) returns, no core translates through the old mapping, although every core caches
// translations in its TLB and keeps translating concurrently.
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/mem/memory.h"
#include "kernel/vmem/vspace.h"
#include "logs/ring/ring_log.h"

namespace nrx::vmem {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t k4K = mem::kBaseFrameSize;
using VS = Vspace<logs::RingLog>;

// Pools 0 and 1 hold the two replicas' page tables; pool 2 is user memory.
struct Fixture {
  Fixture() {
    memory = mem::Memory::create({.nodes = 3, .pool_bytes = 16 * kMiB}).value();
    vs = VS::create(*memory, {.replica_pools = {0, 1}}, &logs::RingLog::create).value();
  }
  static mem::Frame user(uint64_t page) { return mem::Frame{.pool = 2, .offset = page * k4K}; }
  std::unique_ptr<mem::Memory> memory;
  std::unique_ptr<VS> vs;
};

// Translator cores (two per replica) hammer random pages while the main core unmaps them one by one
// (then, in a second phase, makes pages read-only). A translator reads the page's "gone" flag BEFORE
// translating; if the flag was already set (Unmap had returned) and the translation still
// succeeded, a core used a stale translation: a violation.
TEST(Vspace, ShootdownIsComplete) {
  constexpr uint64_t kPages = 512;
  constexpr uint64_t kBase = 0x1000'0000;
  Fixture f;
  VS::Core* main_core = f.vs->attach_core(0).value();
  ASSERT_TRUE(f.vs->map(*main_core, Fixture::user(0), kBase, kPages * k4K, rights::kWrite).ok());
  std::vector<std::atomic<bool>> gone(kPages), read_only(kPages);
  std::atomic<bool> done{false};
  std::atomic<uint64_t> violations{0}, hits{0}, handled{0}, translated{0};
  std::vector<VS::Core*> cores;
  for (uint32_t i = 0; i < 4; ++i) cores.push_back(f.vs->attach_core(i % 2).value());
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      VS::Core& core = *cores[i];
      std::mt19937_64 rng(i);
      uint64_t local_violations = 0, ok = 0;
      // acquire: pairs with the main core's release after its last operation.
      while (!done.load(std::memory_order_acquire)) {
        // Mostly a small hot set, so the TLB hits; sometimes anywhere.
        const uint64_t p = rng() % 4 == 0 ? rng() % kPages : (rng() % 32 + (ok / 64) % kPages) % kPages;
        const bool write = rng() % 2 == 0;
        // acquire: pairs with the release store the main core makes after unmap/adjust returned.
        const bool was_gone = gone[p].load(std::memory_order_acquire);
        const bool was_ro = read_only[p].load(std::memory_order_acquire);
        auto t = f.vs->translate(core, kBase + p * k4K, write ? Access::kWrite : Access::kRead);
        if (t.ok()) {
          ++ok;
          if (was_gone || (write && was_ro)) ++local_violations;
        }
      }
      violations.fetch_add(local_violations, std::memory_order_relaxed);
      hits.fetch_add(core.tlb().hits(), std::memory_order_relaxed);
      handled.fetch_add(core.shootdowns_handled(), std::memory_order_relaxed);
      translated.fetch_add(ok, std::memory_order_relaxed);
      f.vs->deschedule(core);
    });
  }
  // Phase 1: make the upper half read-only, page by page. Phase 2: unmap every page.
  for (uint64_t p = kPages / 2; p < kPages; ++p) {
    ASSERT_TRUE(f.vs->adjust(*main_core, kBase + p * k4K, k4K, 0).ok());
    read_only[p].store(true, std::memory_order_release);  // release: after adjust returned
  }
  for (uint64_t p = 0; p < kPages; ++p) {
    auto freed = f.vs->unmap(*main_core, kBase + p * k4K, k4K);
    ASSERT_TRUE(freed.ok());
    ASSERT_EQ(freed->size(), 1u);
    EXPECT_EQ(freed->at(0).frame, Fixture::user(p));
    gone[p].store(true, std::memory_order_release);  // release: after unmap returned
  }
  done.store(true, std::memory_order_release);  // release: see the translators' acquire
  for (auto& t : threads) t.join();
  EXPECT_EQ(violations.load(), 0u) << "a core translated through a mapping after Unmap/Adjust returned";
  EXPECT_GT(hits.load(), 0u) << "the TLBs never hit: the test would not notice a missing shootdown";
  EXPECT_GT(handled.load(), 0u);
  EXPECT_EQ(f.vs->shootdowns_sent(), 4 * (kPages + kPages / 2));  // every op reached every other core
  std::printf("translations %llu, TLB hits %llu, shootdown requests handled %llu\n",
              static_cast<unsigned long long>(translated.load()), static_cast<unsigned long long>(hits.load()),
              static_cast<unsigned long long>(handled.load()));
}

// The control: changing the page tables WITHOUT a shootdown leaves a stale TLB entry, so the test
// above would catch a Vspace that skipped it.
TEST(Vspace, WithoutAShootdownTheTlbIsStale) {
  Fixture f;
  VS::Core* core = f.vs->attach_core(0).value();
  const uint64_t va = 0x40'0000;
  ASSERT_TRUE(f.vs->map(*core, Fixture::user(1), va, k4K, rights::kWrite).ok());
  ASSERT_TRUE(f.vs->translate(*core, va, Access::kWrite).ok());  // fills the TLB
  // Unmap through the replica directly: the page tables change, no core hears of it.
  auto& replica = f.vs->group().replica(1);
  auto token = replica.register_thread().value();
  auto r = replica.execute_mut(AddressSpace::unmap_op(va, k4K), token);
  ASSERT_TRUE(r.ok() && r->status.ok());
  EXPECT_EQ(f.vs->resolve(*core, va).status().code(), StatusCode::kNotFound);  // the tables agree...
  EXPECT_TRUE(f.vs->translate(*core, va, Access::kWrite).ok());              // ...the TLB does not
  core->tlb().flush(va, k4K);
  EXPECT_EQ(f.vs->translate(*core, va, Access::kWrite).status().code(), StatusCode::kNotFound);
}

// Two cores on different replicas unmap at the same time: each waits for the other's
// acknowledgement while answering the other's request, so neither blocks.
TEST(Vspace, ConcurrentShootdownsDoNotDeadlock) {
  Fixture f;
  VS::Core* cores[2] = {f.vs->attach_core(0).value(), f.vs->attach_core(1).value()};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < 2; ++c) {
    threads.emplace_back([&, c] {
      const uint64_t base = 0x1000'0000 + static_cast<uint64_t>(c) * 0x100'0000;
      for (int i = 0; i < 2000; ++i) {
        const uint64_t va = base + static_cast<uint64_t>(i % 64) * k4K;
        if (!f.vs->map(*cores[c], Fixture::user(static_cast<uint64_t>(i % 64)), va, k4K, 0).ok()) ++errors;
        if (!f.vs->translate(*cores[c], va, Access::kRead).ok()) ++errors;
        if (!f.vs->unmap(*cores[c], va, k4K).ok()) ++errors;
      }
      // Keep answering until the other core is done too.
      f.vs->deschedule(*cores[c]);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
}

// Page-table frames for replica 1 come from a pool that runs out while replica 0's does not: the
// deterministic allocator makes the Map fail on BOTH replicas, so they stay equal.
TEST(Vspace, OutOfTableMemoryFailsOnEveryReplicaAlike) {
  auto memory = mem::Memory::create({.nodes = 3, .pool_bytes = 2 * kMiB}).value();
  // Pool 1 (replica 1's tables) keeps only a few frames.
  std::vector<mem::Frame> hog;
  while (memory->ncache(1).stats().free_bytes() > 8 * k4K) hog.push_back(memory->ncache(1).allocate(mem::FrameClass::kBase).value());
  auto vs = VS::create(*memory, {.replica_pools = {0, 1}}, &logs::RingLog::create).value();
  VS::Core* c0 = vs->attach_core(0).value();
  VS::Core* c1 = vs->attach_core(1).value();
  vs->deschedule(*c1);  // one thread drives both cores
  Status last;
  int mapped = 0;
  for (uint64_t i = 0; i < 64 && last.ok(); ++i) {
    // 1 GiB apart: each map needs a new PDPT entry's PD and PT.
    last = vs->map(*c0, Fixture::user(0), (i + 1) << 30, k4K, 0);
    if (last.ok()) ++mapped;
  }
  EXPECT_EQ(last.code(), StatusCode::kResourceExhausted) << last.to_string();
  EXPECT_GT(mapped, 0);
  EXPECT_GT(memory->ncache(0).stats().free_bytes(), 100 * k4K);  // replica 0 alone would have gone on
  vs->deschedule(*c0);
  vs->schedule(*c1);
  uint64_t digest[2];
  size_t count[2];
  VS::Core* cores[2] = {c0, c1};
  for (int r = 0; r < 2; ++r) {
    vs->inspect(*cores[r], [&](const AddressSpace& as) {
      std::string why;
      EXPECT_TRUE(as.check_consistency(&why)) << why;
      digest[r] = as.digest();
      count[r] = as.mapping_count();
    });
  }
  EXPECT_EQ(digest[0], digest[1]);
  EXPECT_EQ(count[0], static_cast<size_t>(mapped));
  EXPECT_EQ(count[1], static_cast<size_t>(mapped));
  // The failed map left no mapping and no page-table frames behind on either replica.
  EXPECT_EQ(vs->resolve(*c1, (static_cast<uint64_t>(mapped) + 1) << 30).status().code(), StatusCode::kNotFound);
  vs.reset();
  for (const auto& h : hog) ASSERT_TRUE(memory->ncache(1).free(h).ok());
  EXPECT_EQ(memory->stats().free_bytes(), 3 * 2 * kMiB);  // every table frame was returned
}

TEST(Vspace, RejectsBadConfigurationAndInput) {
  auto memory = mem::Memory::create({.nodes = 1, .pool_bytes = 2 * kMiB}).value();
  EXPECT_EQ(VS::create(*memory, {.replica_pools = {}}, &logs::RingLog::create).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(VS::create(*memory, {.replica_pools = {0, 3}}, &logs::RingLog::create).status().code(),
            StatusCode::kInvalidArgument);
  auto vs = VS::create(*memory, {.replica_pools = {0}}, &logs::RingLog::create).value();
  EXPECT_EQ(vs->attach_core(1).status().code(), StatusCode::kInvalidArgument);
  VS::Core* core = vs->attach_core(0).value();
  const uint64_t tail = vs->group().log().tail();
  EXPECT_EQ(vs->map(*core, mem::Frame{.pool = 0, .offset = 5}, 0x1000, k4K, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(vs->unmap(*core, 0x1001, k4K).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(vs->adjust(*core, 0x1000, k4K, 0xff).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(vs->group().log().tail(), tail);  // refused before taking a log slot
}

}  // namespace
}  // namespace nrx::vmem
