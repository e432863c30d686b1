// Concurrency stress for NR-vMem (runs under tsan and asan with the rest of the suite): four cores
// on two replicas map, unmap, adjust and translate at once.
// - Private regions: each core checks every answer against its own sequential model (nobody else
//   touches its region, so the model is exact).
// - One contested region: cores race to map and unmap the same pages. Per page, successful maps
//   and unmaps must alternate, so at the end (map successes - unmap successes) is 0 or 1 and must
//   match whether the page is mapped.
// At the end both replicas are cross-checked (tables vs. B-tree) and their digests must be equal.
#include <atomic>
#include <map>
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
constexpr uint64_t kPrivateBase = 0x10'0000'0000;  // core i: kPrivateBase + i * kRegion
constexpr uint64_t kRegion = 64 * kMiB;
constexpr uint64_t kPrivatePages = 256;
constexpr uint64_t kShared = 0x4000'0000;
constexpr uint64_t kSharedPages = 16;
constexpr int kCores = 4;
constexpr int kOpsPerCore = 20'000;
using VS = Vspace<logs::RingLog>;

TEST(VspaceStress, ConcurrentCoresStayConsistent) {
  auto memory = mem::Memory::create({.nodes = 3, .pool_bytes = 64 * kMiB}).value();
  VspaceOptions options{.replica_pools = {0, 1}, .log = {.entry_size = 64, .slot_count = 512}};
  auto vs = VS::create(*memory, options, &logs::RingLog::create).value();
  std::vector<VS::Core*> cores;
  for (int i = 0; i < kCores; ++i) cores.push_back(vs->attach_core(static_cast<uint32_t>(i % 2)).value());
  std::vector<std::atomic<int64_t>> shared_balance(kSharedPages);
  std::atomic<int> mismatches{0};
  std::atomic<int> finished{0};

  std::vector<std::thread> threads;
  for (int c = 0; c < kCores; ++c) {
    threads.emplace_back([&, c] {
      VS::Core& core = *cores[c];
      std::mt19937_64 rng(static_cast<uint64_t>(c) + 100);
      std::map<uint64_t, std::pair<uint64_t, uint8_t>> model;  // page -> (paddr, rights)
      const uint64_t base = kPrivateBase + static_cast<uint64_t>(c) * kRegion;
      auto frame = [&](uint64_t page) { return mem::Frame{.pool = 2, .offset = (page % 4096) * k4K}; };
      for (int i = 0; i < kOpsPerCore; ++i) {
        const uint64_t dice = rng() % 100;
        if (dice < 15) {  // the contested region
          const uint64_t p = rng() % kSharedPages;
          const uint64_t va = kShared + p * k4K;
          if (rng() % 2 == 0) {
            Status st = vs->map(core, frame(p), va, k4K, rights::kWrite);
            if (st.ok()) {
              shared_balance[p].fetch_add(1, std::memory_order_relaxed);
            } else if (st.code() != StatusCode::kAlreadyExists) {
              ++mismatches;
            }
          } else {
            auto r = vs->unmap(core, va, k4K);
            if (r.ok()) {
              shared_balance[p].fetch_sub(1, std::memory_order_relaxed);
            } else if (r.status().code() != StatusCode::kNotFound) {
              ++mismatches;
            }
          }
          continue;
        }
        const uint64_t p = rng() % kPrivatePages;
        const uint64_t va = base + p * k4K;
        auto it = model.find(va);
        if (dice < 45) {
          const uint8_t r = static_cast<uint8_t>(rng() % 8);
          Status st = vs->map(core, frame(p), va, k4K, r);
          if (it == model.end()) {
            if (!st.ok()) ++mismatches;
            model[va] = {frame(p).paddr(), r};
          } else if (st.code() != StatusCode::kAlreadyExists) {
            ++mismatches;
          }
        } else if (dice < 65) {
          auto r = vs->unmap(core, va, k4K);
          if (r.ok() != (it != model.end())) ++mismatches;
          if (it != model.end()) model.erase(it);
        } else if (dice < 75) {
          const uint8_t r = static_cast<uint8_t>(rng() % 8);
          Status st = vs->adjust(core, va, k4K, r);
          if (st.ok() != (it != model.end())) ++mismatches;
          if (it != model.end()) it->second.second = r;
        } else {
          const bool write = rng() % 2 == 0;
          auto t = vs->translate(core, va, write ? Access::kWrite : Access::kRead);
          const bool allowed = it != model.end() && (!write || (it->second.second & rights::kWrite) != 0);
          if (t.ok() != allowed || (t.ok() && t->paddr != it->second.first)) ++mismatches;
        }
      }
      finished.fetch_add(1, std::memory_order_release);  // release: ordering for the exit barrier
      // Keep answering shootdowns until every core is done, then leave.
      while (finished.load(std::memory_order_acquire) < kCores) vs->poll(core);  // acquire: see release
      vs->deschedule(core);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);

  uint64_t digest[2] = {0, 0};
  for (int r = 0; r < 2; ++r) {
    vs->schedule(*cores[r]);
    vs->inspect(*cores[r], [&](const AddressSpace& as) {
      std::string why;
      EXPECT_TRUE(as.check_consistency(&why)) << "replica " << r << ": " << why;
      digest[r] = as.digest();
      for (uint64_t p = 0; p < kSharedPages; ++p) {
        const int64_t balance = shared_balance[p].load(std::memory_order_relaxed);
        EXPECT_TRUE(balance == 0 || balance == 1) << "page " << p << " balance " << balance;
        EXPECT_EQ(as.resolve_mappings(kShared + p * k4K).ok(), balance == 1) << "page " << p;
      }
    });
    vs->deschedule(*cores[r]);
  }
  EXPECT_EQ(digest[0], digest[1]);
}

}  // namespace
}  // namespace nrx::vmem
