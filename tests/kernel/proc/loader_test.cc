// The two-stage process loader (loader.h) on the real executables built in the tree (a static
// ET_EXEC and a static PIE), loaded into a two-replica Vspace over two pools. Every PT_LOAD segment
// is read back byte for byte through EACH replica's translation: the file bytes, then the zero
// bss; read-only segments are per-replica copies in each replica's own pool, writable segments and
// the stack are the same shared frames on both; the rights follow p_flags. Bad input (misaligned
// or forbidden load offsets, broken files, a pool too small) is an error with nothing allocated,
// and tearing the address space down gives every frame back.
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/mem/memory.h"
#include "kernel/proc/elf.h"
#include "kernel/proc/loader.h"
#include "kernel/vmem/address_space.h"
#include "kernel/vmem/page_table.h"
#include "kernel/vmem/vspace.h"
#include "logs/ring/ring_log.h"

namespace nrx::proc {
namespace {

using VS = vmem::Vspace<logs::RingLog>;
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kPieOffset = 0x5555'4000'0000;

std::vector<std::byte> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

template <typename T>
T peek(const std::vector<std::byte>& f, size_t offset) {
  T v{};
  std::memcpy(&v, f.data() + offset, sizeof v);
  return v;
}
template <typename T>
void poke(std::vector<std::byte>& f, size_t offset, T value) {
  std::memcpy(f.data() + offset, &value, sizeof value);
}

// The PT_LOAD program headers as the file has them, read here without ElfImage (Elf64_Ehdr:
// e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38; Elf64_Phdr: p_type 0, p_flags 4,
// p_offset 8, p_vaddr 16, p_filesz 32, p_memsz 40), with the file offset of each header.
struct Phdr {
  size_t at = 0;
  Segment seg;
};
std::vector<Phdr> pt_loads(const std::vector<std::byte>& f) {
  std::vector<Phdr> out;
  const auto phoff = peek<uint64_t>(f, 0x20);
  const auto phentsize = peek<uint16_t>(f, 0x36);
  const auto phnum = peek<uint16_t>(f, 0x38);
  for (uint32_t i = 0; i < phnum; ++i) {
    const size_t at = phoff + size_t{i} * phentsize;
    if (peek<uint32_t>(f, at) != 1) continue;  // PT_LOAD
    out.push_back({at, Segment{.vaddr = peek<uint64_t>(f, at + 16), .memsz = peek<uint64_t>(f, at + 40),
                               .offset = peek<uint64_t>(f, at + 8), .filesz = peek<uint64_t>(f, at + 32),
                               .flags = peek<uint32_t>(f, at + 4)}});
  }
  return out;
}

uint64_t pages(const Segment& s) { return (s.page_end() - s.page_start()) / kPageSize; }

// Free frames of each pool, from the NCaches (nothing else caches frames in this test).
struct Counts {
  std::vector<mem::CacheStats> pools;
  static Counts of(const mem::Memory& m) {
    Counts c;
    for (uint32_t p = 0; p < m.pool_count(); ++p) c.pools.push_back(m.ncache(p).stats());
    return c;
  }
  friend bool operator==(const Counts& a, const Counts& b) {
    if (a.pools.size() != b.pools.size()) return false;
    for (size_t i = 0; i < a.pools.size(); ++i) {
      if (a.pools[i].free_base != b.pools[i].free_base || a.pools[i].free_large != b.pools[i].free_large) return false;
    }
    return true;
  }
  friend std::ostream& operator<<(std::ostream& os, const Counts& c) {
    for (size_t i = 0; i < c.pools.size(); ++i) {
      os << "pool " << i << ": " << c.pools[i].free_base << " x 4K + " << c.pools[i].free_large << " x 2M; ";
    }
    return os;
  }
};

// Two replicas over two pools (replica s in pool s), one core on each, driven by this one thread.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = mem::Memory::create({.nodes = 2, .pool_bytes = 64 * kMiB}).value();
    start_ = Counts::of(*memory_);
    vs_ = VS::create(*memory_, {.replica_pools = {0, 1}}, &logs::RingLog::create).value();
    for (uint32_t s = 0; s < 2; ++s) cores_[s] = vs_->attach_core(s).value();
    // One thread drives both cores: only core 0 takes part in shootdowns (the unmaps below run on
    // it); core 1 only resolves, which bypasses its TLB.
    vs_->deschedule(*cores_[1]);
  }

  // Unmaps every mapping through core 0, frees the shared frames Unmap hands back (the replicas
  // free their own copies), destroys the address space: every frame must be back.
  void teardown_and_expect_everything_back() {
    const std::vector<vmem::Mapping> maps =
        vs_->inspect(*cores_[0], [](const vmem::AddressSpace& as) { return as.mappings(); });
    for (const vmem::Mapping& m : maps) {
      auto gone = vs_->unmap(*cores_[0], m.vaddr, m.len);
      ASSERT_TRUE(gone.ok()) << gone.status().to_string();
      for (const vmem::Mapping& g : *gone) {
        EXPECT_FALSE(g.owned);
        for (uint64_t off = 0; off < g.len; off += g.frame.size()) {
          mem::Frame f = g.frame;
          f.offset += off;
          EXPECT_TRUE(memory_->ncache(f.pool).free(f).ok());
        }
      }
    }
    for (uint32_t s = 0; s < 2; ++s) {
      vs_->inspect(*cores_[s], [&](const vmem::AddressSpace& as) {
        EXPECT_EQ(as.mapping_count(), 0u) << "replica " << s;
        EXPECT_EQ(as.owned_frames(), 0u) << "replica " << s;
      });
    }
    vs_.reset();
    EXPECT_EQ(Counts::of(*memory_), start_) << "frames leaked";
  }

  uint64_t digest(uint32_t s) {
    return vs_->inspect(*cores_[s], [&](const vmem::AddressSpace& as) {
      std::string why;
      EXPECT_TRUE(as.check_consistency(&why)) << "replica " << s << ": " << why;
      return as.digest();
    });
  }

  // Replica s's bytes at [va, va+len) (within one page), through its page walker.
  std::vector<std::byte> bytes_at(uint32_t s, uint64_t va, uint64_t len, vmem::Walk* walk = nullptr) {
    auto w = vs_->resolve(*cores_[s], va);
    EXPECT_TRUE(w.ok()) << "replica " << s << " va 0x" << std::hex << va << ": " << w.status().to_string();
    if (!w.ok()) return {};
    if (walk != nullptr) *walk = *w;
    const std::byte* p = memory_->physical().paddr_ptr(w->paddr, len);
    EXPECT_NE(p, nullptr);
    if (p == nullptr) return {};
    return std::vector<std::byte>(p, p + len);
  }

  std::unique_ptr<mem::Memory> memory_;
  Counts start_;
  std::unique_ptr<VS> vs_;
  VS::Core* cores_[2] = {};
};

// One executable and the offset it is loaded at.
struct LoadCase {
  const char* name;
  const char* path;
  uint64_t load_offset;
  bool pie;
};
// The table: the fixed-address executable at 0 (it takes no other), the PIE far up in the user half
// at an offset like the process table's (kPieBase + slot * 1 GiB).
const LoadCase kLoadCases[] = {
    {"Static", NRX_TESTPROG_STATIC, 0, false},
    {"Pie", NRX_TESTPROG_PIE, kPieOffset, true},
};

class LoaderLoadTest : public LoaderTest, public ::testing::WithParamInterface<LoadCase> {};

TEST_P(LoaderLoadTest, EverySegmentReadsBackThroughEveryReplica) {
  const LoadCase& c = GetParam();
  const std::vector<std::byte> file = read_file(c.path);
  ASSERT_GT(file.size(), 4096u);
  auto img = prepare_image(file, *memory_, /*pool=*/0);
  ASSERT_TRUE(img.ok()) << img.status().to_string();
  ASSERT_EQ(img->elf.position_independent(), c.pie);

  // ElfImage lists exactly the file's PT_LOADs.
  const std::vector<Phdr> phdrs = pt_loads(file);
  ASSERT_EQ(img->elf.segments().size(), phdrs.size());
  uint64_t writable_pages = 0, readonly_pages = 0;
  for (size_t i = 0; i < phdrs.size(); ++i) {
    const Segment& a = img->elf.segments()[i];
    const Segment& b = phdrs[i].seg;
    EXPECT_EQ(a.vaddr, b.vaddr);
    EXPECT_EQ(a.memsz, b.memsz);
    EXPECT_EQ(a.offset, b.offset);
    EXPECT_EQ(a.filesz, b.filesz);
    EXPECT_EQ(a.flags, b.flags);
    (a.writable() ? writable_pages : readonly_pages) += pages(a);
  }
  ASSERT_GT(writable_pages, 0u);
  ASSERT_GT(readonly_pages, 0u);
  EXPECT_EQ(img->writable.size(), writable_pages);
  EXPECT_EQ(img->stack.size(), kStackPages);
  // Stage 1 took the writable and stack frames from pool 0 only.
  EXPECT_EQ(memory_->ncache(1).stats().free_bytes(), start_.pools[1].free_bytes() - /*vspace root*/ kPageSize);
  for (const auto& w : img->writable) EXPECT_EQ(w.frame.pool, 0u);

  const Status loaded = load_image(*vs_, *cores_[0], *img, c.load_offset);
  ASSERT_TRUE(loaded.ok()) << loaded.to_string();
  EXPECT_TRUE(img->writable.empty()) << "the address space owns the writable frames now";
  EXPECT_TRUE(img->stack.empty());

  for (const Segment& s : img->elf.segments()) {
    const uint64_t base = s.vaddr + c.load_offset;
    SCOPED_TRACE(::testing::Message() << "segment at 0x" << std::hex << s.vaddr << " flags " << s.flags);
    // [vaddr, vaddr+filesz) is the file's [offset, offset+filesz); [vaddr+filesz, vaddr+memsz) zero.
    for (uint32_t r = 0; r < 2; ++r) {
      std::vector<std::byte> got;
      for (uint64_t va = base; va < base + s.memsz;) {
        const uint64_t n = std::min((va | (kPageSize - 1)) + 1, base + s.memsz) - va;
        const std::vector<std::byte> part = bytes_at(r, va, n);
        ASSERT_EQ(part.size(), n);
        got.insert(got.end(), part.begin(), part.end());
        va += n;
      }
      ASSERT_EQ(got.size(), s.memsz);
      EXPECT_EQ(std::memcmp(got.data(), file.data() + s.offset, s.filesz), 0)
          << "replica " << r << ": the file bytes differ";
      const std::vector<std::byte> zeros(s.memsz - s.filesz);
      if (!zeros.empty()) {  // memcmp must not see a null pointer, even for 0 bytes
        EXPECT_EQ(std::memcmp(got.data() + s.filesz, zeros.data(), zeros.size()), 0)
            << "replica " << r << ": the bss is not zero";
      }
    }
    // Placement and rights, page by page.
    for (uint64_t va = s.page_start() + c.load_offset; va < s.page_end() + c.load_offset; va += kPageSize) {
      vmem::Walk w0, w1;
      (void)bytes_at(0, va, 1, &w0);
      (void)bytes_at(1, va, 1, &w1);
      const uint64_t pool0 = w0.paddr >> mem::kPoolShift, pool1 = w1.paddr >> mem::kPoolShift;
      if (s.writable()) {
        EXPECT_EQ(w0.paddr, w1.paddr) << "a writable page is not shared: 0x" << std::hex << va;
        EXPECT_EQ(pool0, 0u) << "the writable frames come from the creator's pool";
      } else {
        EXPECT_NE(w0.paddr, w1.paddr) << "a read-only page is shared: 0x" << std::hex << va;
        EXPECT_EQ(pool0, 0u) << "replica 0's copy is not in its pool";
        EXPECT_EQ(pool1, 1u) << "replica 1's copy is not in its pool";
      }
      for (const vmem::Walk& w : {w0, w1}) {
        EXPECT_EQ(w.page_vaddr, va);
        EXPECT_NE(w.leaf & vmem::pte::kUser, 0u);
        EXPECT_EQ((w.leaf & vmem::pte::kWritable) != 0, s.writable()) << std::hex << va;
        EXPECT_EQ((w.leaf & vmem::pte::kNoExecute) == 0, (s.flags & kSegExecute) != 0) << std::hex << va;
      }
    }
  }
  // The mappings: read-only pages owned by each replica (one Mapping per page), the rest shared.
  for (uint32_t r = 0; r < 2; ++r) {
    vs_->inspect(*cores_[r], [&](const vmem::AddressSpace& as) {
      EXPECT_EQ(as.owned_frames(), readonly_pages) << "replica " << r;
      uint64_t shared = 0;
      for (const vmem::Mapping& m : as.mappings()) {
        if (!m.owned) shared += m.len / kPageSize;
      }
      EXPECT_EQ(shared, writable_pages + kStackPages) << "replica " << r;
    });
  }
  // The entry point executes on both replicas.
  for (uint32_t r = 0; r < 2; ++r) {
    EXPECT_TRUE(vs_->resolve(*cores_[r], img->elf.entry() + c.load_offset, vmem::Access::kExecute).ok());
    // A store into code faults.
    EXPECT_EQ(vs_->resolve(*cores_[r], img->elf.entry() + c.load_offset, vmem::Access::kWrite).status().code(),
              StatusCode::kPermissionDenied);
  }

  // The stack: kStackPages zeroed pages right below kStackTop, writable, not executable, shared.
  for (uint64_t i = 1; i <= kStackPages; ++i) {
    const uint64_t va = kStackTop - i * kPageSize;
    vmem::Walk w0, w1;
    EXPECT_EQ(bytes_at(0, va, kPageSize, &w0), std::vector<std::byte>(kPageSize)) << "stack page " << i;
    (void)bytes_at(1, va, 1, &w1);
    EXPECT_EQ(w0.paddr, w1.paddr);
    EXPECT_NE(w0.leaf & vmem::pte::kWritable, 0u);
    EXPECT_NE(w0.leaf & vmem::pte::kNoExecute, 0u);
    EXPECT_TRUE(vs_->resolve(*cores_[1], va, vmem::Access::kWrite).ok());
  }
  EXPECT_EQ(vs_->resolve(*cores_[0], kStackTop).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(vs_->resolve(*cores_[0], kStackTop - (kStackPages + 1) * kPageSize).status().code(),
            StatusCode::kNotFound);

  // A store through replica 0's translation of a writable page is seen through replica 1's.
  const uint64_t digest_before = digest(0);
  EXPECT_EQ(digest(1), digest_before);
  const std::string msg = "stored on replica 0";
  for (const Segment& s : img->elf.segments()) {
    if (!s.writable()) continue;
    const uint64_t va = s.vaddr + c.load_offset;
    auto w = vs_->translate(*cores_[0], va, vmem::Access::kWrite);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    const uint64_t n = std::min<uint64_t>(msg.size(), kPageSize - (va % kPageSize));
    std::memcpy(memory_->physical().paddr_ptr(w->paddr, n), msg.data(), n);
    const std::vector<std::byte> back = bytes_at(1, va, n);
    ASSERT_EQ(back.size(), n);
    EXPECT_EQ(std::memcmp(back.data(), msg.data(), n), 0) << "replica 1 does not see the store";
  }
  {
    auto w = vs_->translate(*cores_[0], kStackTop - 64, vmem::Access::kWrite);
    ASSERT_TRUE(w.ok());
    std::memcpy(memory_->physical().paddr_ptr(w->paddr, msg.size()), msg.data(), msg.size());
    const std::vector<std::byte> back = bytes_at(1, kStackTop - 64, msg.size());
    EXPECT_EQ(std::memcmp(back.data(), msg.data(), msg.size()), 0);
  }
  // The digests (which hash owned pages by contents and leaves without A/D) still agree.
  EXPECT_EQ(digest(0), digest(1));

  teardown_and_expect_everything_back();
}

INSTANTIATE_TEST_SUITE_P(Executables, LoaderLoadTest, ::testing::ValuesIn(kLoadCases),
                         [](const ::testing::TestParamInfo<LoadCase>& p) { return std::string(p.param.name); });

// Two PIE processes at different offsets in one address space: the images do not collide.
TEST_F(LoaderTest, APieLoadsAtTwoOffsets) {
  const std::vector<std::byte> file = read_file(NRX_TESTPROG_PIE);
  auto a = prepare_image(file, *memory_, 0);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(load_image(*vs_, *cores_[0], *a, kPieOffset).ok());
  auto b = prepare_image(file, *memory_, 1);
  ASSERT_TRUE(b.ok());
  // The second image's stack collides with the first's: kAlreadyExists, the rest of b unmapped.
  const Status st = load_image(*vs_, *cores_[1], *b, kPieOffset + (uint64_t{1} << 30));
  EXPECT_EQ(st.code(), StatusCode::kAlreadyExists) << st.to_string();
  EXPECT_TRUE(b->writable.empty());
  EXPECT_EQ(b->stack.size(), kStackPages) << "a stack frame was consumed without being mapped";
  release_image(*b, *memory_);
  release_image(*b, *memory_);  // idempotent
  const uint64_t entry = b->elf.entry() + kPieOffset + (uint64_t{1} << 30);
  EXPECT_EQ(bytes_at(1, entry, 16), bytes_at(0, entry - (uint64_t{1} << 30), 16));
  EXPECT_EQ(digest(0), digest(1));
  teardown_and_expect_everything_back();
}

TEST_F(LoaderTest, BadLoadOffsetsAreInvalidArgumentAndMapNothing) {
  const std::vector<std::byte> pie_file = read_file(NRX_TESTPROG_PIE);
  const std::vector<std::byte> static_file = read_file(NRX_TESTPROG_STATIC);
  auto pie = prepare_image(pie_file, *memory_, 0);
  auto fixed = prepare_image(static_file, *memory_, 0);
  ASSERT_TRUE(pie.ok());
  ASSERT_TRUE(fixed.ok());
  const size_t pie_frames = pie->writable.size() + pie->stack.size();
  const size_t fixed_frames = fixed->writable.size() + fixed->stack.size();
  struct Bad {
    PreparedImage* img;
    uint64_t offset;
    const char* why;
  };
  const Bad bad[] = {
      {&*pie, kPieOffset + 0x123, "misaligned"},
      {&*pie, kPieOffset + 2048, "half a page"},
      {&*pie, (uint64_t{1} << 47) - kPageSize, "past the user half"},
      {&*pie, ~uint64_t{0} & ~(kPageSize - 1), "wrapping around"},
      {&*fixed, kPageSize, "a fixed-address executable with an offset"},
      {&*fixed, kPieOffset, "a fixed-address executable with a PIE offset"},
  };
  for (const Bad& b : bad) {
    EXPECT_EQ(load_image(*vs_, *cores_[0], *b.img, b.offset).code(), StatusCode::kInvalidArgument) << b.why;
  }
  EXPECT_EQ(pie->writable.size() + pie->stack.size(), pie_frames) << "the image lost frames";
  EXPECT_EQ(fixed->writable.size() + fixed->stack.size(), fixed_frames);
  for (uint32_t r = 0; r < 2; ++r) {
    vs_->inspect(*cores_[r], [&](const vmem::AddressSpace& as) { EXPECT_EQ(as.mapping_count(), 0u); });
  }
  release_image(*pie, *memory_);
  release_image(*fixed, *memory_);
  teardown_and_expect_everything_back();
}

// A failure half-way through stage 2 (the stack's top page is taken): what was mapped stays
// mapped, the image keeps exactly the frames it did not map, and teardown plus release_image free
// everything.
TEST_F(LoaderTest, AFailedLoadKeepsTheUnmappedFrames) {
  const std::vector<std::byte> file = read_file(NRX_TESTPROG_STATIC);
  const mem::Frame squatter = memory_->ncache(1).allocate(mem::FrameClass::kBase).value();
  ASSERT_TRUE(vs_->map(*cores_[0], squatter, kStackTop - kPageSize, kPageSize, vmem::rights::kUser).ok());
  auto img = prepare_image(file, *memory_, 0);
  ASSERT_TRUE(img.ok());
  const Status st = load_image(*vs_, *cores_[0], *img, 0);
  EXPECT_EQ(st.code(), StatusCode::kAlreadyExists) << st.to_string();
  EXPECT_TRUE(img->writable.empty());
  EXPECT_EQ(img->stack.size(), 1u) << "the frame for the stack's top page";
  release_image(*img, *memory_);
  EXPECT_EQ(digest(0), digest(1));
  teardown_and_expect_everything_back();  // frees the squatter with the shared frames
}

TEST_F(LoaderTest, BrokenFilesAreInvalidArgumentWithNothingAllocated) {
  const std::vector<std::byte> good = read_file(NRX_TESTPROG_STATIC);
  std::vector<std::vector<std::byte>> bad;
  bad.emplace_back();                                          // empty
  bad.emplace_back(good.begin(), good.begin() + 16);           // half an ELF header
  bad.emplace_back(good.begin(), good.begin() + 64);           // a header, no program headers
  bad.emplace_back(good.begin(), good.begin() + good.size() / 2);  // segments past the end
  std::vector<std::byte> garbage(64 * 1024);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<std::byte>((i * 7919 + 13) & 0xff);
  bad.push_back(garbage);
  std::vector<std::byte> magic = good;
  magic[1] = std::byte{'X'};
  bad.push_back(magic);
  const Counts before = Counts::of(*memory_);
  for (size_t i = 0; i < bad.size(); ++i) {
    auto r = prepare_image(bad[i], *memory_, 0);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << "case " << i;
    EXPECT_EQ(Counts::of(*memory_), before) << "case " << i;
  }
  EXPECT_EQ(prepare_image(good, *memory_, /*pool=*/2).status().code(), StatusCode::kInvalidArgument);
  // A good image prepared and abandoned gives its frames back.
  auto img = prepare_image(good, *memory_, 1);
  ASSERT_TRUE(img.ok());
  EXPECT_NE(Counts::of(*memory_), before);
  release_image(*img, *memory_);
  EXPECT_EQ(Counts::of(*memory_), before);
  teardown_and_expect_everything_back();
}

// The static executable with its writable (last) segment's memsz set so that it spans |wpages|
// pages: a large bss.
std::vector<std::byte> with_bss_pages(uint64_t wpages) {
  std::vector<std::byte> f = read_file(NRX_TESTPROG_STATIC);
  std::vector<Phdr> loads = pt_loads(f);
  const Phdr& last = loads.back();
  EXPECT_TRUE(last.seg.writable()) << "the writable segment is expected last";
  const uint64_t memsz = last.seg.page_start() + wpages * kPageSize - last.seg.vaddr;
  EXPECT_GE(memsz, last.seg.filesz);
  poke<uint64_t>(f, last.at + 40, memsz);
  return f;
}

// A pool too small for the image (2 MiB: 512 frames): kResourceExhausted, and every frame taken
// before running out is given back. Two places to run out: the writable segment, then the stack.
TEST(LoaderPoolTest, APoolTooSmallIsResourceExhaustedWithNothingLeaked) {
  auto memory = mem::Memory::create({.nodes = 1, .pool_bytes = 2 * kMiB}).value();
  const uint64_t frames = memory->ncache(0).capacity_bytes() / kPageSize;
  ASSERT_EQ(frames, 512u);
  const Counts before = Counts::of(*memory);
  struct Case {
    uint64_t wpages;
    const char* where;
  };
  const Case cases[] = {
      {2 * frames, "the writable segment runs out"},
      {frames - kStackPages / 2, "the stack runs out"},
      {frames - kStackPages + 1, "the last stack page runs out"},
  };
  for (const Case& c : cases) {
    const std::vector<std::byte> f = with_bss_pages(c.wpages);
    auto elf = ElfImage::parse(f);
    ASSERT_TRUE(elf.ok()) << elf.status().to_string();
    auto r = prepare_image(f, *memory, 0);
    EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << c.where;
    EXPECT_EQ(Counts::of(*memory), before) << c.where;
  }
  // Exactly the pool: fits.
  const std::vector<std::byte> f = with_bss_pages(frames - kStackPages);
  auto img = prepare_image(f, *memory, 0);
  ASSERT_TRUE(img.ok()) << img.status().to_string();
  EXPECT_EQ(memory->ncache(0).stats().free_bytes(), 0u);
  // The bss pages are zero, the file pages hold the file.
  const Segment& w = img->elf.segments().back();
  const std::byte* first = memory->physical().frame_ptr(img->writable.front().frame);
  EXPECT_EQ(std::memcmp(first + (w.vaddr - w.page_start()), f.data() + w.offset,
                        std::min(w.filesz, kPageSize - (w.vaddr - w.page_start()))),
            0);
  const std::byte* last = memory->physical().frame_ptr(img->writable.back().frame);
  EXPECT_EQ(img->writable.back().vaddr, w.page_end() - kPageSize);
  EXPECT_EQ(std::vector<std::byte>(last, last + kPageSize), std::vector<std::byte>(kPageSize));
  release_image(*img, *memory);
  EXPECT_EQ(Counts::of(*memory), before);
}

}  // namespace
}  // namespace nrx::proc
