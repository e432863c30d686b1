// MapCopy: NR-vMem's per-replica copy of a read-only segment (NrOS paper section 4.4). The bytes
// travel as a log payload; every replica copies them into fresh frames of its own pool, owns those
// frames (Unmap and destruction free them in each replica, Unmap never hands them back), and
// releases the payload. Checked on two replicas over two pools: the bytes through each replica's
// translation, the pools, the zero tail, the digests, the errors (nothing allocated or mapped on
// either replica) and the free frame counts, which must come back after every case.
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/mem/memory.h"
#include "kernel/vmem/address_space.h"
#include "kernel/vmem/vspace.h"
#include "logs/ring/ring_log.h"

namespace nrx::vmem {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t k4K = mem::kBaseFrameSize;
using VS = Vspace<logs::RingLog>;

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 131 + seed + i / k4K) & 0xff);
  return b;
}

// Two replicas, replica s in pool s (its tables and its MapCopy pages), one core on each.
class MapCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = mem::Memory::create({.nodes = 2, .pool_bytes = 64 * kMiB}).value();
    for (uint32_t p = 0; p < 2; ++p) before_create_[p] = free_bytes(p);
    vs_ = VS::create(*memory_, {.replica_pools = {0, 1}}, &logs::RingLog::create).value();
    for (uint32_t s = 0; s < 2; ++s) cores_[s] = vs_->attach_core(s).value();
    // One thread drives both cores: only the one in use is scheduled (see Vspace's thread safety).
    vs_->deschedule(*cores_[1]);
    for (uint32_t p = 0; p < 2; ++p) start_[p] = free_bytes(p);
  }

  uint64_t free_bytes(uint32_t pool) const { return memory_->ncache(pool).stats().free_bytes(); }
  uint64_t payloads_live() const { return vs_->group().log().payloads_live(); }
  // Both replicas apply everything logged so far (a payload lives until both have).
  void sync_all() {
    for (VS::Core* c : cores_) vs_->inspect(*c, [](const AddressSpace&) {});
  }
  // Both replicas applied everything; the free counts of both pools are what they were after create.
  void expect_back_to_start() {
    sync_all();
    EXPECT_EQ(free_bytes(0), start_[0]);
    EXPECT_EQ(free_bytes(1), start_[1]);
    EXPECT_EQ(payloads_live(), 0u);
  }
  // Replica s's view of [va, va+len): every page read back through its translation.
  std::vector<std::byte> read_back(uint32_t s, uint64_t va, uint64_t len, std::vector<uint32_t>* pools = nullptr) {
    if (s == 1) switch_to(1);
    std::vector<std::byte> out(len);
    for (uint64_t off = 0; off < len; off += k4K) {
      auto w = vs_->translate(*cores_[s], va + off, Access::kRead);
      EXPECT_TRUE(w.ok()) << std::hex << va + off << ": " << w.status().to_string();
      if (!w.ok()) break;
      EXPECT_EQ(w->page_vaddr, va + off);
      const std::byte* p = memory_->physical().paddr_ptr(w->paddr, k4K);
      EXPECT_NE(p, nullptr);
      if (p == nullptr) break;
      std::memcpy(out.data() + off, p, k4K);
      if (pools != nullptr) pools->push_back(static_cast<uint32_t>(w->paddr >> mem::kPoolShift));
    }
    if (s == 1) switch_to(0);
    return out;
  }
  void switch_to(uint32_t s) {
    vs_->deschedule(*cores_[1 - s]);
    vs_->schedule(*cores_[s]);
  }
  uint64_t digest(uint32_t s, uint64_t* owned = nullptr, size_t* mappings = nullptr) {
    return vs_->inspect(*cores_[s], [&](const AddressSpace& as) {
      std::string why;
      EXPECT_TRUE(as.check_consistency(&why)) << "replica " << s << ": " << why;
      if (owned != nullptr) *owned = as.owned_frames();
      if (mappings != nullptr) *mappings = as.mapping_count();
      return as.digest();
    });
  }

  std::unique_ptr<mem::Memory> memory_;
  uint64_t before_create_[2] = {};
  uint64_t start_[2] = {};
  std::unique_ptr<VS> vs_;
  VS::Core* cores_[2] = {};
};

TEST_F(MapCopyTest, EveryReplicaHasItsOwnCopyInItsOwnPool) {
  const uint64_t va = 0x40'0000;
  const uint64_t len = 8 * k4K;
  const std::vector<std::byte> bytes = pattern(5 * k4K + 100, 7);  // a partial last page, then zeros
  ASSERT_TRUE(vs_->map_copy(*cores_[0], bytes, va, len, rights::kExecute | rights::kUser).ok());
  std::vector<std::byte> want(len);
  std::memcpy(want.data(), bytes.data(), bytes.size());
  for (uint32_t s = 0; s < 2; ++s) {
    std::vector<uint32_t> pools;
    const std::vector<std::byte> got = read_back(s, va, len, &pools);
    EXPECT_TRUE(got == want) << "replica " << s << " does not hold the bytes (or the zero tail)";
    EXPECT_EQ(pools, std::vector<uint32_t>(len / k4K, s)) << "replica " << s << "'s pages are not in its pool";
    EXPECT_EQ(vs_->resolve(*cores_[s], va).value().leaf & pte::kRightsMask,
              pte_rights(rights::kExecute | rights::kUser));
  }
  // The same contents, different frames: the digests agree anyway.
  uint64_t owned[2];
  size_t mappings[2];
  EXPECT_EQ(digest(0, &owned[0], &mappings[0]), digest(1, &owned[1], &mappings[1]));
  EXPECT_EQ(owned[0], len / k4K);
  EXPECT_EQ(owned[1], len / k4K);
  EXPECT_EQ(mappings[0], len / k4K);  // one Mapping per page
  EXPECT_NE(vs_->resolve(*cores_[0], va).value().paddr, vs_->resolve(*cores_[1], va).value().paddr);
  EXPECT_EQ(payloads_live(), 0u);
  EXPECT_LT(free_bytes(0), start_[0]);
  EXPECT_LT(free_bytes(1), start_[1]);

  auto unmapped = vs_->unmap(*cores_[0], va, len);
  ASSERT_TRUE(unmapped.ok());
  EXPECT_TRUE(unmapped->empty()) << "Unmap handed back owned pages";
  EXPECT_EQ(vs_->resolve(*cores_[1], va).status().code(), StatusCode::kNotFound);
  expect_back_to_start();
}

TEST_F(MapCopyTest, ContentsDecideTheDigest) {
  ASSERT_TRUE(vs_->map_copy(*cores_[0], pattern(k4K, 1), 0x40'0000, k4K, 0).ok());
  const uint64_t d = digest(0);
  ASSERT_EQ(d, digest(1));
  // A byte changed in one replica's copy only: the replicas differ, and the digest says so.
  const uint64_t pa = vs_->resolve(*cores_[1], 0x40'0000).value().paddr;
  memory_->physical().paddr_ptr(pa, 1)[0] ^= std::byte{1};
  EXPECT_NE(digest(0), digest(1));
  memory_->physical().paddr_ptr(pa, 1)[0] ^= std::byte{1};
  EXPECT_EQ(digest(1), d);
}

TEST_F(MapCopyTest, EmptyPayloadMapsZeroPages) {
  const uint64_t va = 0x7000'0000;
  ASSERT_TRUE(vs_->map_copy(*cores_[0], {}, va, 3 * k4K, rights::kWrite).ok());
  for (uint32_t s = 0; s < 2; ++s) EXPECT_TRUE(read_back(s, va, 3 * k4K) == std::vector<std::byte>(3 * k4K));
  EXPECT_EQ(digest(0), digest(1));
  ASSERT_TRUE(vs_->unmap(*cores_[0], va, 3 * k4K).ok());
  expect_back_to_start();
}

// Per-replica copies never become writable: a store would reach one replica's copy only. Every
// replica refuses the Adjust alike and nothing changes (the digests stay equal).
TEST_F(MapCopyTest, CopiesCannotBeMadeWritable) {
  const uint64_t va = 0x200'0000;
  ASSERT_TRUE(vs_->map_copy(*cores_[0], pattern(2 * k4K, 5), va, 2 * k4K, rights::kExecute).ok());
  const uint64_t before = digest(0, nullptr);
  Status st = vs_->adjust(*cores_[0], va, 2 * k4K, rights::kWrite | rights::kUser);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st.to_string();
  st = vs_->adjust(*cores_[0], va + k4K, k4K, rights::kWrite);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st.to_string();
  EXPECT_EQ(digest(0, nullptr), before);
  EXPECT_EQ(digest(1, nullptr), before);
  EXPECT_TRUE(vs_->translate(*cores_[0], va, Access::kWrite).status().code() != StatusCode::kOk);
  // Removing rights is fine.
  EXPECT_TRUE(vs_->adjust(*cores_[0], va, 2 * k4K, rights::kUser).ok());
  ASSERT_TRUE(vs_->unmap(*cores_[0], va, 2 * k4K).ok());
}

// Unmap hands back the shared pieces of a range and frees the owned ones in each replica; Adjust
// keeps owned pages owned; a partial Unmap leaves the rest mapped and owned.
TEST_F(MapCopyTest, UnmapReturnsOnlySharedPiecesAndAdjustKeepsOwnership) {
  const mem::Frame shared = memory_->ncache(0).allocate(mem::FrameClass::kBase).value();
  const uint64_t va = 0x100'0000;
  ASSERT_TRUE(vs_->map(*cores_[0], shared, va, k4K, rights::kWrite).ok());
  ASSERT_TRUE(vs_->map_copy(*cores_[0], pattern(4 * k4K, 3), va + k4K, 4 * k4K, rights::kExecute).ok());
  ASSERT_TRUE(vs_->adjust(*cores_[0], va, 5 * k4K, rights::kUser).ok());
  for (uint32_t s = 0; s < 2; ++s) {
    vs_->inspect(*cores_[s], [&](const AddressSpace& as) {
      for (const Mapping& m : as.mappings()) {
        EXPECT_EQ(m.owned, m.vaddr != va) << std::hex << m.vaddr;
        EXPECT_EQ(m.rights, rights::kUser);
      }
      EXPECT_EQ(as.owned_frames(), 4u);
    });
  }
  EXPECT_TRUE(read_back(1, va + k4K, 4 * k4K) == pattern(4 * k4K, 3)) << "Adjust changed the contents";
  // Unmap the shared page and the first two copied pages.
  auto pieces = vs_->unmap(*cores_[0], va, 3 * k4K);
  ASSERT_TRUE(pieces.ok());
  ASSERT_EQ(pieces->size(), 1u);
  EXPECT_EQ(pieces->at(0).frame, shared);
  EXPECT_FALSE(pieces->at(0).owned);
  uint64_t owned[2];
  EXPECT_EQ(digest(0, &owned[0]), digest(1, &owned[1]));
  EXPECT_EQ(owned[0], 2u);
  EXPECT_EQ(owned[1], 2u);
  const std::vector<std::byte> copied = pattern(4 * k4K, 3);
  EXPECT_TRUE(read_back(0, va + 3 * k4K, 2 * k4K) == std::vector<std::byte>(copied.begin() + 2 * k4K, copied.end()));
  switch_to(1);  // the rest through the other replica
  ASSERT_TRUE(vs_->unmap(*cores_[1], va + 3 * k4K, 2 * k4K).ok());
  switch_to(0);
  ASSERT_TRUE(memory_->ncache(0).free(shared).ok());
  expect_back_to_start();
}

TEST_F(MapCopyTest, OverAMappedPageIsAlreadyExistsAndAllocatesNothing) {
  const mem::Frame shared = memory_->ncache(0).allocate(mem::FrameClass::kBase).value();
  const uint64_t va = 0x40'0000;
  ASSERT_TRUE(vs_->map(*cores_[0], shared, va + 5 * k4K, k4K, 0).ok());
  sync_all();
  const uint64_t free0 = free_bytes(0), free1 = free_bytes(1);
  const uint64_t d = digest(0);
  EXPECT_EQ(vs_->map_copy(*cores_[0], pattern(k4K, 9), va, 8 * k4K, 0).code(), StatusCode::kAlreadyExists);
  sync_all();
  EXPECT_EQ(payloads_live(), 0u);
  EXPECT_EQ(free_bytes(0), free0);
  EXPECT_EQ(free_bytes(1), free1);
  EXPECT_EQ(digest(0), d);
  EXPECT_EQ(digest(1), d);
  ASSERT_TRUE(vs_->unmap(*cores_[0], va + 5 * k4K, k4K).ok());
  ASSERT_TRUE(memory_->ncache(0).free(shared).ok());
  expect_back_to_start();
}

TEST_F(MapCopyTest, BadInputIsRefusedBeforeTheLog) {
  const auto code = [&](std::span<const std::byte> b, uint64_t va, uint64_t len, uint8_t r = 0) {
    return vs_->map_copy(*cores_[0], b, va, len, r).code();
  };
  const std::vector<std::byte> page = pattern(k4K, 2);
  EXPECT_EQ(code(pattern(k4K + 1, 2), 0x40'0000, k4K), StatusCode::kInvalidArgument);  // payload > len
  EXPECT_EQ(code(page, 0x40'0008, k4K), StatusCode::kInvalidArgument);                 // unaligned
  EXPECT_EQ(code(page, 0x40'0000, k4K + 8), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(page, 0x40'0000, 0), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(page, kUserTop - k4K, 2 * k4K), StatusCode::kInvalidArgument);  // leaves the user half
  EXPECT_EQ(code(page, 0x40'0000, k4K, 0x80), StatusCode::kInvalidArgument);    // unknown rights
  EXPECT_EQ(code({}, 0, AddressSpace::kMaxMapCopyBytes + k4K), StatusCode::kInvalidArgument);
  // Nothing reached the log: no entry, no payload.
  EXPECT_EQ(vs_->group().log().tail(), 0u);
  expect_back_to_start();
}

// An op that reached the log with a payload its log does not hold (another machine's bad entry)
// fails alike on every replica and maps nothing.
TEST_F(MapCopyTest, APayloadTheLogDoesNotHoldIsInvalid) {
  auto& replica = vs_->group().replica(0);
  auto token = replica.register_thread().value();
  const logs::PayloadRef bogus{.where = 7, .length = 16, .generation = 99};
  auto r = replica.execute_mut(AddressSpace::map_copy_op(bogus, 0x40'0000, k4K, 0), token);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status.code(), StatusCode::kInvalidArgument);
  size_t mappings[2];
  EXPECT_EQ(digest(0, nullptr, &mappings[0]), digest(1, nullptr, &mappings[1]));
  EXPECT_EQ(mappings[0], 0u);
  EXPECT_EQ(mappings[1], 0u);
  expect_back_to_start();
}

// One replica's pool runs out: the allocation fails on both replicas alike, nothing is mapped on
// either, and nothing stays allocated in either pool.
TEST_F(MapCopyTest, OutOfMemoryOnOneReplicaFailsOnAllAndLeaksNothing) {
  std::vector<mem::Frame> hog;
  while (true) {
    auto f = memory_->ncache(1).allocate(mem::FrameClass::kBase);
    if (!f.ok()) break;
    hog.push_back(*f);
  }
  // Leave a few frames: enough for the tables, not for the pages too.
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(memory_->ncache(1).free(hog.back()).ok());
    hog.pop_back();
  }
  const uint64_t free0 = free_bytes(0), free1 = free_bytes(1);
  const uint64_t va = 0x40'0000;
  EXPECT_EQ(vs_->map_copy(*cores_[0], pattern(3 * k4K, 4), va, 16 * k4K, rights::kExecute).code(),
            StatusCode::kResourceExhausted);
  size_t mappings[2];
  uint64_t tables[2];
  for (uint32_t s = 0; s < 2; ++s) {
    vs_->inspect(*cores_[s], [&](const AddressSpace& as) {
      mappings[s] = as.mapping_count();
      tables[s] = as.table_frames();
    });
    EXPECT_EQ(vs_->resolve(*cores_[s], va).status().code(), StatusCode::kNotFound);
  }
  EXPECT_EQ(mappings[0], 0u);
  EXPECT_EQ(mappings[1], 0u);
  EXPECT_EQ(tables[0], 1u);
  EXPECT_EQ(tables[1], 1u);
  EXPECT_EQ(digest(0), digest(1));
  EXPECT_EQ(free_bytes(0), free0);
  EXPECT_EQ(free_bytes(1), free1);
  EXPECT_EQ(payloads_live(), 0u);
  // With the memory back, the same op succeeds.
  for (const auto& f : hog) ASSERT_TRUE(memory_->ncache(1).free(f).ok());
  EXPECT_TRUE(vs_->map_copy(*cores_[0], pattern(3 * k4K, 4), va, 16 * k4K, rights::kExecute).ok());
  EXPECT_TRUE(read_back(1, va, 3 * k4K) == pattern(3 * k4K, 4));
  ASSERT_TRUE(vs_->unmap(*cores_[0], va, 16 * k4K).ok());
  expect_back_to_start();
}

// Destroying the address space frees every replica's owned frames (and tables), also those of a
// replica that had not applied the MapCopy yet.
TEST_F(MapCopyTest, DestroyingTheVspaceFreesOwnedFrames) {
  ASSERT_TRUE(vs_->map_copy(*cores_[0], pattern(10 * k4K, 5), 0x40'0000, 10 * k4K, rights::kExecute).ok());
  ASSERT_TRUE(vs_->map_copy(*cores_[0], pattern(100, 6), 0x7fff'0000'0000, 2 * k4K, 0).ok());
  // Replica 1 has not applied them (nobody synced it); its share waits in the allocator.
  vs_.reset();
  EXPECT_EQ(free_bytes(0), before_create_[0]);
  EXPECT_EQ(free_bytes(1), before_create_[1]);
}

// AddressSpace alone: a moved-from one frees nothing twice; the op's checks.
TEST(MapCopyAddressSpace, MoveAndDestroyFreeOnce) {
  auto memory = mem::Memory::create({.nodes = 1, .pool_bytes = 16 * kMiB}).value();
  const uint64_t before = memory->ncache(0).stats().free_bytes();
  {
    auto root = memory->ncache(0).allocate(mem::FrameClass::kBase).value();
    std::optional<AddressSpace> a;
    a.emplace(AddressSpace::create(*memory, nullptr, 0, root).value());
    auto r = a->dispatch_mut(AddressSpace::map_copy_op({}, 0x40'0000, 4 * k4K, 0), {0, 0, 0});
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    EXPECT_EQ(a->owned_frames(), 4u);
    AddressSpace b = std::move(*a);
    a.reset();  // the moved-from one owns nothing
    EXPECT_EQ(b.owned_frames(), 4u);
    std::string why;
    EXPECT_TRUE(b.check_consistency(&why)) << why;
    auto root2 = memory->ncache(0).allocate(mem::FrameClass::kBase).value();
    AddressSpace c = AddressSpace::create(*memory, nullptr, 0, root2).value();
    c = std::move(b);  // frees c's own tables, takes b's pages
    EXPECT_EQ(c.owned_frames(), 4u);
    // A payload without a log to read it from.
    const logs::PayloadRef ref{.where = 0, .length = 8, .generation = 0};
    EXPECT_EQ(c.dispatch_mut(AddressSpace::map_copy_op(ref, 0x80'0000, k4K, 0), {1, 0, 0}).status.code(),
              StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(memory->ncache(0).stats().free_bytes(), before);
}

TEST(MapCopyAddressSpace, ValidateKeepsPayloadsAndFramesApart) {
  auto memory = mem::Memory::create({.nodes = 1, .pool_bytes = 4 * kMiB}).value();
  const auto& pm = memory->physical();
  const logs::PayloadRef ref{.where = 1, .length = 8, .generation = 1};
  EXPECT_TRUE(AddressSpace::validate(AddressSpace::map_copy_op(ref, 0x40'0000, k4K, 0), pm).ok());
  EXPECT_TRUE(AddressSpace::validate(AddressSpace::map_copy_op({}, 0x40'0000, k4K, 0), pm).ok());
  AddressSpace::WriteOp with_frame = AddressSpace::map_copy_op(ref, 0x40'0000, k4K, 0);
  with_frame.frame = mem::Frame{.pool = 0, .offset = k4K};
  EXPECT_EQ(AddressSpace::validate(with_frame, pm).code(), StatusCode::kInvalidArgument);
  AddressSpace::WriteOp map_with_payload = AddressSpace::map_op(mem::Frame{.pool = 0}, 0x40'0000, k4K, 0);
  map_with_payload.data = ref;
  EXPECT_EQ(AddressSpace::validate(map_with_payload, pm).code(), StatusCode::kInvalidArgument);
  AddressSpace::WriteOp unmap_with_payload = AddressSpace::unmap_op(0x40'0000, k4K);
  unmap_with_payload.data = ref;
  EXPECT_EQ(AddressSpace::validate(unmap_with_payload, pm).code(), StatusCode::kInvalidArgument);
  AddressSpace::WriteOp reserved = AddressSpace::map_copy_op({}, 0x40'0000, k4K, 0);
  reserved.reserved[3] = 1;
  EXPECT_EQ(AddressSpace::validate(reserved, pm).code(), StatusCode::kInvalidArgument);
  const logs::PayloadRef long_ref{.where = 1, .length = k4K + 1, .generation = 1};
  EXPECT_EQ(AddressSpace::validate(AddressSpace::map_copy_op(long_ref, 0x40'0000, k4K, 0), pm).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nrx::vmem
