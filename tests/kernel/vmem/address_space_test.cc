// NR-vMem's sequential core: the x86-64 page tables and walker (entry bits as the Intel SDM
// defines them) and AddressSpace's operations and errors, on one replica without NR.
#include <cstring>

#include <gtest/gtest.h>

#include "kernel/mem/memory.h"
#include "kernel/vmem/address_space.h"
#include "kernel/vmem/page_table.h"

namespace nrx::vmem {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t k4K = mem::kBaseFrameSize;
constexpr uint64_t k2M = mem::kLargeFrameSize;

// Intel SDM Vol. 3A, Table 4-19 (4-KByte page PTE) and 4-18 (2-MByte page PDE).
static_assert(pte::kPresent == 0x1 && pte::kWritable == 0x2 && pte::kUser == 0x4 && pte::kAccessed == 0x20 &&
              pte::kDirty == 0x40 && pte::kPageSize == 0x80 && pte::kNoExecute == 0x8000'0000'0000'0000);
static_assert(sizeof(AddressSpace::WriteOp) == 56 && std::is_trivially_copyable_v<AddressSpace::WriteOp>);

class AddressSpaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = mem::Memory::create({.nodes = 2, .pool_bytes = 16 * kMiB}).value();
    free_before_ = memory_->ncache(0).stats().free_bytes();
    auto root = memory_->ncache(0).allocate(mem::FrameClass::kBase).value();
    as_.emplace(AddressSpace::create(*memory_, nullptr, 0, root).value());
  }
  AddressSpace::Response apply(const AddressSpace::WriteOp& op) { return as_->dispatch_mut(op, {next_++, 0, 0}); }
  StatusCode code(const AddressSpace::WriteOp& op) { return apply(op).status.code(); }
  // User memory lives in pool 1; page tables in pool 0.
  static mem::Frame user(uint64_t offset, mem::FrameClass cls = mem::FrameClass::kBase) {
    return mem::Frame{.pool = 1, .cls = cls, .offset = offset};
  }

  std::unique_ptr<mem::Memory> memory_;
  std::optional<AddressSpace> as_;
  uint64_t free_before_ = 0;
  uint64_t next_ = 0;
};

TEST_F(AddressSpaceTest, MapsA4KPageThroughFourRealLevels) {
  const uint64_t va = 0x7f00'1234'5000;
  ASSERT_TRUE(apply(AddressSpace::map_op(user(5 * k4K), va, k4K, rights::kWrite | rights::kUser)).status.ok());
  EXPECT_EQ(as_->table_frames(), 4u);  // PML4 + PDPT + PD + PT
  auto t = as_->dispatch({va + 0xabc, Access::kNone});
  ASSERT_TRUE(t.status.ok()) << t.status.to_string();
  EXPECT_EQ(t.walk.paddr, user(5 * k4K).paddr() + 0xabc);
  EXPECT_EQ(t.walk.page, mem::FrameClass::kBase);
  EXPECT_EQ(t.walk.leaf & ~pte::kAddrMask, pte::kPresent | pte::kWritable | pte::kUser | pte::kNoExecute);
  EXPECT_EQ(t.walk.leaf & pte::kAddrMask, user(5 * k4K).paddr());
  // Index the tables by hand, as the MMU does (SDM Vol. 3A, 4.5.4): PML4[47:39] -> PDPT[38:30] ->
  // PD[29:21] -> PT[20:12], each entry's bits 51:12 naming the next table.
  const mem::PhysicalMemory& pm = memory_->physical();
  uint64_t table = as_->root_paddr();
  for (unsigned shift : {39u, 30u, 21u}) {
    const auto* entries = reinterpret_cast<const uint64_t*>(pm.paddr_ptr(table, k4K));
    ASSERT_NE(entries, nullptr);
    const uint64_t e = entries[(va >> shift) & 511];
    EXPECT_EQ(e & (pte::kPresent | pte::kWritable | pte::kUser | pte::kPageSize),
              pte::kPresent | pte::kWritable | pte::kUser);
    table = e & pte::kAddrMask;
    EXPECT_EQ(table >> mem::kPoolShift, 0u);  // tables live in this replica's pool
  }
  const auto* pt = reinterpret_cast<const uint64_t*>(pm.paddr_ptr(table, k4K));
  ASSERT_NE(pt, nullptr);
  EXPECT_EQ(pt[(va >> 12) & 511], t.walk.leaf);
  std::string why;
  EXPECT_TRUE(as_->check_consistency(&why)) << why;
}

TEST_F(AddressSpaceTest, Maps2MPagesWithThePageSizeBit) {
  ASSERT_TRUE(apply(AddressSpace::map_op(user(2 * k2M, mem::FrameClass::kLarge), 0x4000'0000, 2 * k2M, rights::kWrite))
                  .status.ok());
  EXPECT_EQ(as_->table_frames(), 3u);  // PML4 + PDPT + PD: no PT under 2 MiB leaves
  auto t = as_->dispatch({0x4000'0000 + k2M + 0x1234, Access::kNone});
  ASSERT_TRUE(t.status.ok());
  EXPECT_EQ(t.walk.page, mem::FrameClass::kLarge);
  EXPECT_NE(t.walk.leaf & pte::kPageSize, 0u);
  EXPECT_EQ(t.walk.paddr, user(3 * k2M).paddr() + 0x1234);
  EXPECT_EQ(t.walk.page_vaddr, 0x4000'0000 + k2M);
}

TEST_F(AddressSpaceTest, WalkerSetsAccessedAndDirtyAndChecksRights) {
  const uint64_t va = 0x10'0000;
  ASSERT_TRUE(apply(AddressSpace::map_op(user(0), va, 2 * k4K, rights::kWrite)).status.ok());
  auto look = as_->dispatch({va, Access::kNone});
  EXPECT_EQ(look.walk.leaf & (pte::kAccessed | pte::kDirty), 0u);
  auto read = as_->dispatch({va, Access::kRead});
  EXPECT_EQ(read.walk.leaf & (pte::kAccessed | pte::kDirty), pte::kAccessed);
  auto write = as_->dispatch({va, Access::kWrite});
  EXPECT_EQ(write.walk.leaf & (pte::kAccessed | pte::kDirty), pte::kAccessed | pte::kDirty);
  EXPECT_EQ(as_->dispatch({va, Access::kExecute}).status.code(), StatusCode::kPermissionDenied);  // NX
  ASSERT_TRUE(apply(AddressSpace::adjust_op(va, k4K, 0)).status.ok());
  EXPECT_EQ(as_->dispatch({va, Access::kWrite}).status.code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(as_->dispatch({va + k4K, Access::kWrite}).status.ok());  // the other page kept its rights
  EXPECT_NE(as_->dispatch({va, Access::kNone}).walk.leaf & pte::kDirty, 0u);  // adjust keeps A/D
}

TEST_F(AddressSpaceTest, ErrorsAreTheDocumentedOnes) {
  using AS = AddressSpace;
  ASSERT_TRUE(apply(AS::map_op(user(0), 0x20'0000, 4 * k4K, 0)).status.ok());
  EXPECT_EQ(code(AS::map_op(user(k4K * 8), 0x20'3000, k4K, 0)), StatusCode::kAlreadyExists);
  EXPECT_EQ(code(AS::map_op(user(k4K * 8), 0x1F'F000, 2 * k4K, 0)), StatusCode::kAlreadyExists);  // overlaps the start
  EXPECT_EQ(code(AS::map_op(user(0), 0x30'0800, k4K, 0)), StatusCode::kInvalidArgument);          // unaligned
  EXPECT_EQ(code(AS::map_op(user(0), 0x30'0000, 100, 0)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(AS::map_op(user(0, mem::FrameClass::kLarge), 0x30'1000, k2M, 0)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(AS::map_op(user(0), uint64_t{1} << 47, k4K, 0)), StatusCode::kInvalidArgument);  // non-canonical
  EXPECT_EQ(code(AS::map_op(user(0), 0xFFFF'8000'0000'0000, k4K, 0)), StatusCode::kInvalidArgument);  // kernel half
  EXPECT_EQ(code(AS::map_op(user(0), (uint64_t{1} << 47) - k4K, 2 * k4K, 0)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(AS::map_op(user(16 * kMiB), 0x30'0000, k4K, 0)), StatusCode::kInvalidArgument);  // no such frame
  EXPECT_EQ(code(AS::map_op(user(16 * kMiB - k4K), 0x30'0000, 2 * k4K, 0)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(AS::map_op(user(0), 0x30'0000, 0, 0)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(AS::map_op(user(0), 0x30'0000, k4K, 0x80)), StatusCode::kInvalidArgument);  // unknown rights
  EXPECT_EQ(code(AS::unmap_op(0x40'0000, k4K)), StatusCode::kNotFound);
  EXPECT_EQ(code(AS::unmap_op(0x20'0000, 5 * k4K)), StatusCode::kNotFound);  // runs past the mapping
  EXPECT_EQ(code(AS::adjust_op(0x1F'F000, 2 * k4K, 0)), StatusCode::kNotFound);
  EXPECT_EQ(code(AS::unmap_op(0x20'0800, k4K)), StatusCode::kInvalidArgument);
  AS::WriteOp bad = AS::unmap_op(0x20'0000, k4K);
  bad.kind = static_cast<AS::WriteOp::Kind>(9);
  EXPECT_EQ(code(bad), StatusCode::kInvalidArgument);
  EXPECT_EQ(as_->mapping_count(), 1u);  // no failed op changed anything
  std::string why;
  EXPECT_TRUE(as_->check_consistency(&why)) << why;
  EXPECT_EQ(as_->dispatch({uint64_t{1} << 47, Access::kNone}).status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(as_->dispatch({0x50'0000, Access::kNone}).status.code(), StatusCode::kNotFound);
}

TEST_F(AddressSpaceTest, PartialUnmapAndAdjustSplitMappings) {
  ASSERT_TRUE(apply(AddressSpace::map_op(user(0), 0x100'0000, 8 * k4K, rights::kWrite)).status.ok());
  auto r = apply(AddressSpace::unmap_op(0x100'2000, 2 * k4K));
  ASSERT_TRUE(r.status.ok());
  ASSERT_EQ(r.unmapped.size(), 1u);
  EXPECT_EQ(r.unmapped[0].vaddr, 0x100'2000u);
  EXPECT_EQ(r.unmapped[0].len, 2 * k4K);
  EXPECT_EQ(r.unmapped[0].frame, user(2 * k4K));  // the frames that backed the hole, to be freed
  ASSERT_TRUE(apply(AddressSpace::adjust_op(0x100'5000, k4K, 0)).status.ok());
  auto maps = as_->mappings();
  ASSERT_EQ(maps.size(), 4u);  // [0,2) rw, [4,5) rw, [5,6) ro, [6,8) rw
  EXPECT_EQ(maps[1].vaddr, 0x100'4000u);
  EXPECT_EQ(maps[2].rights, 0);
  EXPECT_EQ(maps[3].frame, user(6 * k4K));
  // An unmap across several pieces returns each of them.
  r = apply(AddressSpace::unmap_op(0x100'4000, 4 * k4K));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.unmapped.size(), 3u);
  std::string why;
  EXPECT_TRUE(as_->check_consistency(&why)) << why;
}

TEST_F(AddressSpaceTest, A2MPageIsNeverSplit) {
  ASSERT_TRUE(apply(AddressSpace::map_op(user(0, mem::FrameClass::kLarge), 0x4000'0000, 2 * k2M, 0)).status.ok());
  EXPECT_EQ(code(AddressSpace::unmap_op(0x4000'0000, k4K)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(AddressSpace::adjust_op(0x4000'0000 + k2M - k4K, 2 * k4K, 0)), StatusCode::kInvalidArgument);
  auto r = apply(AddressSpace::unmap_op(0x4000'0000 + k2M, k2M));  // whole pages split the mapping
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.unmapped[0].frame, user(k2M, mem::FrameClass::kLarge));
  EXPECT_EQ(as_->mapping_count(), 1u);
}

TEST_F(AddressSpaceTest, UnmapFreesEmptyTablesAndDestructionFreesTheRest) {
  ASSERT_TRUE(apply(AddressSpace::map_op(user(0), 0x7000'0000'0000, k4K, 0)).status.ok());
  ASSERT_TRUE(apply(AddressSpace::map_op(user(0), 0x10'0000, k4K, 0)).status.ok());
  EXPECT_EQ(as_->table_frames(), 7u);  // root + two paths of three
  ASSERT_TRUE(apply(AddressSpace::unmap_op(0x7000'0000'0000, k4K)).status.ok());
  EXPECT_EQ(as_->table_frames(), 4u);
  ASSERT_TRUE(apply(AddressSpace::unmap_op(0x10'0000, k4K)).status.ok());
  EXPECT_EQ(as_->table_frames(), 1u);
  ASSERT_TRUE(apply(AddressSpace::map_op(user(0), 0x10'0000, k4K, 0)).status.ok());
  as_.reset();
  EXPECT_EQ(memory_->ncache(0).stats().free_bytes(), free_before_);  // every table frame came back
}

TEST_F(AddressSpaceTest, OutOfMemoryForTablesIsAnErrorAndChangesNothing) {
  std::vector<mem::Frame> hog;
  while (true) {
    auto f = memory_->ncache(0).allocate(mem::FrameClass::kBase);
    if (!f.ok()) break;
    hog.push_back(*f);
  }
  auto r = apply(AddressSpace::map_op(user(0), 0x10'0000, k4K, 0));
  EXPECT_EQ(r.status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(as_->mapping_count(), 0u);
  EXPECT_EQ(as_->table_frames(), 1u);
  ASSERT_TRUE(memory_->ncache(0).free(hog.back()).ok());
  hog.pop_back();
  EXPECT_EQ(code(AddressSpace::map_op(user(0), 0x10'0000, k4K, 0)), StatusCode::kResourceExhausted);  // needs 3
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(memory_->ncache(0).free(hog.back()).ok());
    hog.pop_back();
  }
  EXPECT_TRUE(apply(AddressSpace::map_op(user(0), 0x10'0000, k4K, 0)).status.ok());
  for (const auto& f : hog) ASSERT_TRUE(memory_->ncache(0).free(f).ok());
}

TEST(PageTablesTest, RootMustBeAFrame) {
  auto memory = mem::Memory::create({.nodes = 1, .pool_bytes = 2 * kMiB}).value();
  EXPECT_EQ(PageTables::create(*memory, mem::Frame{.pool = 3}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PageTables::create(*memory, mem::Frame{.pool = 0, .cls = mem::FrameClass::kLarge}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nrx::vmem
