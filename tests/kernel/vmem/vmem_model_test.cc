// Model-based test of NR-vMem: random Map/MapCopy/Unmap/Adjust/Resolve sequences on an address
// space replicated twice over a ring log, issued alternately through both replicas, compared op by
// op with a plain sequential model (a map from page to translation). For every address an op
// touches, the page walker of each replica, the mapping B-tree of each replica and the model must
// agree (a MapCopy page: in the replica's own pool, holding the model's bytes); every few thousand
// ops the whole state is cross-checked (every mapped page walked, every leaf accounted for), the
// replicas' digests must be equal and no payload may be left; at the end, destroying the address
// space gives back every frame it allocated.
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/mem/memory.h"
#include "kernel/vmem/vspace.h"
#include "logs/ring/ring_log.h"

namespace nrx::vmem {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t k4K = mem::kBaseFrameSize;
constexpr uint64_t k2M = mem::kLargeFrameSize;
constexpr uint64_t kUserPool = 2;  // user memory; pools 0 and 1 hold each replica's page tables
constexpr uint64_t kUserBytes = 64 * kMiB;
constexpr uint64_t kWindow = 16 * kMiB;
// Windows that cross the boundaries of every table level, up to the top of the user half.
constexpr uint64_t kZones[] = {0x40'0000, (uint64_t{1} << 39) - 8 * kMiB, (uint64_t{1} << 30) * 7 - 8 * kMiB,
                               (uint64_t{1} << 47) - kWindow};

struct Page {
  uint64_t paddr;  // of the page's first byte (0 for an owned page: it differs by replica)
  uint8_t rights;
  mem::FrameClass cls;
  bool owned = false;  // MapCopy: a 4 KiB page of the replica's own pool
  uint64_t head = 0;   // owned: the page's first 8 bytes
};

// The sequential model: page start -> page.
class Model {
 public:
  std::optional<std::pair<uint64_t, Page>> find(uint64_t va) const {
    if (auto it = pages_.find(va & ~(k2M - 1)); it != pages_.end() && it->second.cls == mem::FrameClass::kLarge) {
      return *it;
    }
    if (auto it = pages_.find(va & ~(k4K - 1)); it != pages_.end() && it->second.cls == mem::FrameClass::kBase) {
      return *it;
    }
    return std::nullopt;
  }

  StatusCode map(const mem::Frame& f, uint64_t va, uint64_t len, uint8_t r) {
    for (uint64_t a = va; a < va + len; a += k4K) {
      if (find(a)) return StatusCode::kAlreadyExists;
    }
    for (uint64_t a = va; a < va + len; a += f.size()) pages_[a] = Page{f.paddr() + (a - va), r, f.cls};
    return StatusCode::kOk;
  }

  // |heads|: the first 8 bytes of each page.
  StatusCode map_copy(uint64_t va, uint64_t len, uint8_t r, const std::vector<uint64_t>& heads) {
    for (uint64_t a = va; a < va + len; a += k4K) {
      if (find(a)) return StatusCode::kAlreadyExists;
    }
    for (uint64_t a = va; a < va + len; a += k4K) {
      pages_[a] = Page{0, r, mem::FrameClass::kBase, true, heads[(a - va) / k4K]};
    }
    return StatusCode::kOk;
  }

  // Checks coverage like AddressSpace: first a gap (kNotFound), then a split 2 MiB page.
  StatusCode check_range(uint64_t va, uint64_t len) const {
    for (uint64_t a = va; a < va + len; a += k4K) {
      if (!find(a)) return StatusCode::kNotFound;
    }
    for (uint64_t edge : {va, va + len}) {
      auto p = find(edge);
      if (p && p->second.cls == mem::FrameClass::kLarge && p->first != edge) return StatusCode::kInvalidArgument;
    }
    return StatusCode::kOk;
  }

  // Removes the range; returns the bytes removed that are not owned (what Unmap hands back).
  uint64_t unmap(uint64_t va, uint64_t len) {
    uint64_t removed = 0;
    for (uint64_t a = va; a < va + len;) {
      auto p = find(a);
      const uint64_t size = mem::frame_size(p->second.cls);
      pages_.erase(p->first);
      if (!p->second.owned) removed += size;
      a = p->first + size;
    }
    return removed;
  }

  // Adjust's outcome once the range is known to be mapped: MapCopy pages never become writable.
  StatusCode adjust_outcome(uint64_t va, uint64_t len, uint8_t r) {
    if ((r & rights::kWrite) == 0) return StatusCode::kOk;
    for (uint64_t a = va; a < va + len;) {
      auto p = find(a);
      if (p->second.owned) return StatusCode::kPermissionDenied;
      a = p->first + mem::frame_size(p->second.cls);
    }
    return StatusCode::kOk;
  }

  void adjust(uint64_t va, uint64_t len, uint8_t r) {
    for (uint64_t a = va; a < va + len;) {
      auto p = find(a);
      pages_[p->first].rights = r;
      a = p->first + mem::frame_size(p->second.cls);
    }
  }

  size_t pages() const { return pages_.size(); }
  // The first mapped page at or after |va| (or |va| when there is none).
  uint64_t first_page_at_or_after(uint64_t va) const {
    auto it = pages_.lower_bound(va);
    return it == pages_.end() ? va : it->first;
  }

 private:
  std::map<uint64_t, Page> pages_;
};

class VmemModel : public ::testing::TestWithParam<uint64_t> {};

TEST_P(VmemModel, ReplicasAgreeWithTheModelAndWithThemselves) {
  constexpr int kOps = 50'000;  // x 4 seeds = 2 x 10^5 operations
  std::mt19937_64 rng(GetParam());
  auto memory = mem::Memory::create({.nodes = 3, .pool_bytes = kUserBytes}).value();
  const uint64_t free_at_start[2] = {memory->ncache(0).stats().free_bytes(), memory->ncache(1).stats().free_bytes()};
  VspaceOptions options{.replica_pools = {0, 1}, .log = {.entry_size = 64, .slot_count = 256}};
  auto vs = Vspace<logs::RingLog>::create(*memory, options, &logs::RingLog::create).value();
  using Core = Vspace<logs::RingLog>::Core;
  Core* cores[2] = {vs->attach_core(0).value(), vs->attach_core(1).value()};
  // One thread drives both cores: only the one in use is scheduled (see Vspace's thread safety).
  vs->deschedule(*cores[1]);
  Model model;
  int current = 0;
  // Outcomes per op kind, so a regression that makes every op fail the same way cannot pass.
  std::map<std::string, int> outcomes;
  auto count = [&](const char* kind, StatusCode code) { ++outcomes[std::string(kind) + ":" + std::to_string(static_cast<int>(code))]; };

  // An |align|-aligned address whose range of |len| bytes stays inside one window: 4 KiB maps use
  // the lower half of each window, 2 MiB maps the upper half, unmaps and adjusts either.
  enum Half { kLower, kUpper, kAny };
  auto pick_addr = [&](uint64_t align, uint64_t len, Half half) {
    const uint64_t zone = kZones[rng() % std::size(kZones)];
    const uint64_t span = half == kAny ? kWindow : kWindow / 2;
    const uint64_t base = zone + (half == kUpper ? kWindow / 2 : 0);
    return base + (rng() % ((span - len) / align + 1)) * align;
  };
  // Often start at a mapped page, so unmaps and adjusts mostly hit something.
  auto pick_target = [&](uint64_t align, uint64_t len) {
    const uint64_t va = pick_addr(align, len, kAny);
    if (rng() % 3 == 0) return va;
    const uint64_t start = model.first_page_at_or_after(va) & ~(align - 1);
    for (uint64_t zone : kZones) {
      if (start >= zone && start + len <= zone + kWindow) return start;
    }
    return va;
  };
  // An owned page as replica |c| translates it: in its own pool, holding the model's bytes.
  auto check_owned = [&](int c, uint64_t va, uint64_t paddr, const std::pair<uint64_t, Page>& want) {
    EXPECT_EQ(paddr >> mem::kPoolShift, static_cast<uint64_t>(c)) << std::hex << va;
    const std::byte* p = memory->physical().paddr_ptr(paddr - (va - want.first), 8);
    ASSERT_NE(p, nullptr) << std::hex << va;
    uint64_t head;
    std::memcpy(&head, p, sizeof head);
    EXPECT_EQ(head, want.second.head) << std::hex << va;
  };
  auto check_addresses = [&](const std::vector<uint64_t>& addrs) {
    for (int c = 0; c < 2; ++c) {
      vs->inspect(*cores[c], [&](const AddressSpace& as) {
        for (uint64_t va : addrs) {
          if (va >= kUserTop) continue;
          auto want = model.find(va);
          auto walked = as.dispatch({va, Access::kNone});
          auto tree = as.resolve_mappings(va);
          if (!want) {
            ASSERT_EQ(walked.status.code(), StatusCode::kNotFound) << std::hex << va;
            ASSERT_EQ(tree.status().code(), StatusCode::kNotFound) << std::hex << va;
            continue;
          }
          ASSERT_TRUE(walked.status.ok()) << std::hex << va << " " << walked.status.to_string();
          ASSERT_TRUE(tree.ok()) << std::hex << va;
          if (want->second.owned) {
            check_owned(c, va, walked.walk.paddr, *want);
            EXPECT_EQ(tree->paddr, walked.walk.paddr) << std::hex << va;
          } else {
            const uint64_t pa = want->second.paddr + (va - want->first);
            EXPECT_EQ(walked.walk.paddr, pa) << std::hex << va;
            EXPECT_EQ(tree->paddr, pa) << std::hex << va;
          }
          EXPECT_EQ(walked.walk.page, want->second.cls);
          EXPECT_EQ(walked.walk.leaf & pte::kRightsMask, pte_rights(want->second.rights)) << std::hex << va;
          EXPECT_EQ(tree->leaf & pte::kRightsMask, pte_rights(want->second.rights));
        }
      });
    }
  };

  for (int i = 0; i < kOps; ++i) {
    const int c = static_cast<int>(rng() % 2);
    Core& core = *cores[c];
    if (c != current) {
      vs->deschedule(*cores[current]);
      vs->schedule(core);
      current = c;
    }
    const uint64_t dice = rng() % 100;
    std::vector<uint64_t> touched;
    if (dice >= 34 && dice < 40) {  // MapCopy: a payload of 0..len bytes, zeros after it
      const uint64_t len = k4K * (1 + rng() % 8);
      const uint64_t va = pick_addr(k4K, len, kLower);
      std::vector<std::byte> bytes(rng() % 4 == 0 ? 0 : 1 + rng() % len);
      for (auto& b : bytes) b = static_cast<std::byte>(rng());
      std::vector<std::byte> image(len);
      std::copy(bytes.begin(), bytes.end(), image.begin());
      std::vector<uint64_t> heads(len / k4K);
      for (size_t k = 0; k < heads.size(); ++k) std::memcpy(&heads[k], image.data() + k * k4K, 8);
      const uint8_t r = static_cast<uint8_t>(rng() % 8);
      const StatusCode want = model.map_copy(va, len, r, heads);
      ASSERT_EQ(vs->map_copy(core, bytes, va, len, r).code(), want) << "op " << i;
      count("mapcopy", want);
      touched = {va, va + len / 2, va + len - 1, va + len};
    } else if (dice < 40) {  // Map 4 KiB pages or 2 MiB pages
      const bool large = dice < 6;
      const uint64_t page = large ? k2M : k4K;
      const uint64_t len = page * (1 + rng() % (large ? 2 : 8));
      const uint64_t va = pick_addr(page, len, large ? kUpper : kLower);
      const mem::Frame f{.pool = kUserPool,
                         .cls = large ? mem::FrameClass::kLarge : mem::FrameClass::kBase,
                         .offset = (rng() % ((kUserBytes - len) / page + 1)) * page};
      const uint8_t r = static_cast<uint8_t>(rng() % 8);
      const StatusCode want = model.map(f, va, len, r);
      ASSERT_EQ(vs->map(core, f, va, len, r).code(), want) << "op " << i;
      count(large ? "map2m" : "map4k", want);
      touched = {va, va + len / 2, va + len - 1, va + len};
    } else if (dice < 65) {  // Unmap, sometimes of whole 2 MiB pages
      const bool large = rng() % 4 == 0;
      const uint64_t align = large ? k2M : k4K;
      const uint64_t len = align * (1 + rng() % 4);
      const uint64_t va = pick_target(align, len);
      const StatusCode want = model.check_range(va, len);
      auto got = vs->unmap(core, va, len);
      ASSERT_EQ(got.status().code(), want) << "op " << i << std::hex << " va " << va << " len " << len;
      count("unmap", want);
      if (got.ok()) {
        uint64_t bytes = 0;
        for (const Mapping& m : *got) {
          // Every piece returned is what the model had there, frame by frame.
          auto p = model.find(m.vaddr);
          ASSERT_TRUE(p.has_value());
          EXPECT_FALSE(m.owned || p->second.owned) << "Unmap handed back an owned page";
          EXPECT_EQ(m.frame.paddr(), p->second.paddr + (m.vaddr - p->first));
          bytes += m.len;
        }
        EXPECT_EQ(bytes, model.unmap(va, len));
      }
      touched = {va, va + len - 1, va + len};
    } else if (dice < 80) {  // Adjust
      const bool large = rng() % 4 == 0;
      const uint64_t align = large ? k2M : k4K;
      const uint64_t len = align * (1 + rng() % 4);
      const uint64_t va = pick_target(align, len);
      const uint8_t r = static_cast<uint8_t>(rng() % 8);
      StatusCode want = model.check_range(va, len);
      if (want == StatusCode::kOk) want = model.adjust_outcome(va, len, r);
      ASSERT_EQ(vs->adjust(core, va, len, r).code(), want) << "op " << i;
      count("adjust", want);
      if (want == StatusCode::kOk) model.adjust(va, len, r);
      touched = {va, va + len - 1};
    } else if (dice < 97) {  // Resolve through the core's MMU (TLB + walker)
      const uint64_t va = pick_addr(8, 8, kAny);
      auto want = model.find(va);
      auto got = vs->translate(core, va, Access::kRead);
      ASSERT_EQ(got.ok(), want.has_value()) << "op " << i << std::hex << " va " << va;
      count("resolve", got.status().code());
      if (got.ok() && want->second.owned) {
        check_owned(c, va, got->paddr, *want);
      } else if (got.ok()) {
        EXPECT_EQ(got->paddr, want->second.paddr + (va - want->first));
      }
      touched = {va};
    } else {  // bad input, refused before it reaches the log
      const uint64_t va = pick_addr(k4K, k4K, kAny) + 8;
      EXPECT_EQ(vs->map(core, mem::Frame{.pool = kUserPool}, va, k4K, 0).code(), StatusCode::kInvalidArgument);
      EXPECT_EQ(vs->unmap(core, (uint64_t{1} << 47), k4K).status().code(), StatusCode::kInvalidArgument);
      const std::vector<std::byte> too_long(k4K + 1);
      EXPECT_EQ(vs->map_copy(core, too_long, va - 8, k4K, 0).code(), StatusCode::kInvalidArgument);
      touched = {va};
    }
    check_addresses(touched);
    if (HasFatalFailure()) return;
    if (i % 5000 == 4999 || i == kOps - 1) {
      uint64_t digest[2];
      for (int r = 0; r < 2; ++r) {
        vs->inspect(*cores[r], [&](const AddressSpace& as) {
          std::string why;
          EXPECT_TRUE(as.check_consistency(&why)) << "replica " << r << ": " << why;
          digest[r] = as.digest();
        });
      }
      ASSERT_EQ(digest[0], digest[1]) << "replicas diverged by op " << i;
      EXPECT_EQ(vs->group().log().payloads_live(), 0u) << "a MapCopy payload was not released by op " << i;
    }
  }
  EXPECT_GT(model.pages(), 0u);
  std::string summary;
  for (const auto& [k, n] : outcomes) summary += k + "=" + std::to_string(n) + " ";
  std::printf("seed %llu: %zu pages mapped at the end; outcomes (kind:status=count): %s\n",
              static_cast<unsigned long long>(GetParam()), model.pages(), summary.c_str());
  for (const char* kind : {"map4k:0", "map2m:0", "map4k:6", "mapcopy:0", "mapcopy:6", "unmap:0", "unmap:5", "adjust:0",
                           "adjust:5", "resolve:0", "resolve:5"}) {
    EXPECT_GE(outcomes[kind], 100) << kind << ": the op mix no longer covers this outcome";
  }
  // Page tables and owned pages all go back to their pools with the address space.
  vs.reset();
  EXPECT_EQ(memory->ncache(0).stats().free_bytes(), free_at_start[0]);
  EXPECT_EQ(memory->ncache(1).stats().free_bytes(), free_at_start[1]);
}

// Four seeds x 50,000 ops.
INSTANTIATE_TEST_SUITE_P(Seeds, VmemModel, ::testing::Values(1, 2, 3, 4));

}  // namespace
}  // namespace nrx::vmem
