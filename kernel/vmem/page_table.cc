#include "kernel/vmem/page_table.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "base/check.h"

namespace nrx::vmem {
namespace {

constexpr int kLevels = 4;  // PML4 = 4 ... PT = 1
constexpr uint64_t kEntries = 512;
constexpr uint64_t kIntermediate = pte::kPresent | pte::kWritable | pte::kUser;

constexpr unsigned shift(int level) { return 12 + 9 * static_cast<unsigned>(level - 1); }
constexpr int leaf_level(mem::FrameClass page) { return page == mem::FrameClass::kLarge ? 2 : 1; }
bool is_leaf(int level, uint64_t e) { return level == 1 || (level == 2 && (e & pte::kPageSize) != 0); }

// relaxed: entries change only under NR's writer lock, which orders them for walkers; the atomics
// exist because concurrent walkers set A/D bits in the same words.
uint64_t load(const uint64_t& e) { return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(e)).load(std::memory_order_relaxed); }
void store(uint64_t& e, uint64_t v) { std::atomic_ref<uint64_t>(e).store(v, std::memory_order_relaxed); }

// Visits the entries of one table covering [lo, hi): f(index, sub_lo, sub_hi, entry_start).
template <typename F>
void for_range(int level, uint64_t lo, uint64_t hi, F&& f) {
  const uint64_t span = uint64_t{1} << shift(level);
  for (uint64_t va = lo; va < hi;) {
    const uint64_t start = va & ~(span - 1);
    const uint64_t end = start + span;
    f(static_cast<uint32_t>((va >> shift(level)) & (kEntries - 1)), va, std::min(hi, end), start);
    va = end;
  }
}

}  // namespace

Result<PageTables> PageTables::create(mem::Memory& memory, mem::Frame root) {
  std::byte* p = memory.physical().frame_ptr(root);
  if (p == nullptr || root.cls != mem::FrameClass::kBase) {
    return Status::invalid_argument("page-table root must be a 4 KiB frame of physical memory");
  }
  std::memset(p, 0, mem::kBaseFrameSize);
  return PageTables(memory, root);
}

PageTables::PageTables(PageTables&& other) noexcept
    : memory_(std::exchange(other.memory_, nullptr)), root_(other.root_), table_frames_(other.table_frames_) {}

PageTables& PageTables::operator=(PageTables&& other) noexcept {
  if (this != &other) {
    this->~PageTables();
    memory_ = std::exchange(other.memory_, nullptr);
    root_ = other.root_;
    table_frames_ = other.table_frames_;
  }
  return *this;
}

PageTables::~PageTables() {
  if (memory_ == nullptr) return;
  free_level(table(root_.paddr()), kLevels);
  free_table(root_.paddr());
  memory_ = nullptr;
}

uint64_t* PageTables::table(uint64_t paddr) const {
  return reinterpret_cast<uint64_t*>(memory_->physical().paddr_ptr(paddr & pte::kAddrMask, mem::kBaseFrameSize));
}

void PageTables::free_table(uint64_t paddr) {
  const mem::Frame f = mem::Frame::from_paddr(paddr & pte::kAddrMask, mem::FrameClass::kBase);
  NRX_CHECK(memory_->ncache(f.pool).free(f).ok(), "freeing a page-table frame failed");
  --table_frames_;
}

uint32_t PageTables::tables_needed(uint64_t vaddr, uint64_t len, mem::FrameClass page) const {
  return count_missing(table(root_.paddr()), kLevels, vaddr, vaddr + len, leaf_level(page));
}

uint32_t PageTables::count_missing(const uint64_t* t, int level, uint64_t lo, uint64_t hi, int leaf) const {
  if (level == leaf) return 0;
  uint32_t n = 0;
  for_range(level, lo, hi, [&](uint32_t idx, uint64_t sub_lo, uint64_t sub_hi, uint64_t) {
    const uint64_t e = t != nullptr ? load(t[idx]) : 0;
    const uint64_t* child = nullptr;
    if ((e & pte::kPresent) != 0) {
      NRX_DCHECK(!is_leaf(level, e), "mapping over a 2 MiB leaf");
      child = table(e);
    } else {
      ++n;
    }
    n += count_missing(child, level - 1, sub_lo, sub_hi, leaf);
  });
  return n;
}

void PageTables::map(uint64_t vaddr, uint64_t paddr, uint64_t len, mem::FrameClass page, uint64_t rights,
                     std::vector<mem::Frame>& fresh) {
  map_level(table(root_.paddr()), kLevels, vaddr, vaddr + len, paddr, vaddr, leaf_level(page),
            (rights & pte::kRightsMask) | pte::kPresent, fresh);
}

void PageTables::map_level(uint64_t* t, int level, uint64_t lo, uint64_t hi, uint64_t pa_base, uint64_t va_base,
                           int leaf, uint64_t leaf_flags, std::vector<mem::Frame>& fresh) {
  for_range(level, lo, hi, [&](uint32_t idx, uint64_t sub_lo, uint64_t sub_hi, uint64_t start) {
    uint64_t e = load(t[idx]);
    if (level == leaf) {
      NRX_DCHECK((e & pte::kPresent) == 0, "mapping over a present leaf");
      const uint64_t pa = pa_base + (start - va_base);
      store(t[idx], pa | leaf_flags | (level == 2 ? pte::kPageSize : 0));
      return;
    }
    if ((e & pte::kPresent) == 0) {
      NRX_CHECK(!fresh.empty(), "map() was given fewer table frames than tables_needed()");
      const mem::Frame f = fresh.back();
      fresh.pop_back();
      std::memset(memory_->physical().frame_ptr(f), 0, mem::kBaseFrameSize);
      ++table_frames_;
      e = f.paddr() | kIntermediate;
      store(t[idx], e);
    }
    NRX_DCHECK(!is_leaf(level, e), "mapping under a 2 MiB leaf");
    map_level(table(e), level - 1, sub_lo, sub_hi, pa_base, va_base, leaf, leaf_flags, fresh);
  });
}

void PageTables::unmap(uint64_t vaddr, uint64_t len) { (void)unmap_level(table(root_.paddr()), kLevels, vaddr, vaddr + len); }

bool PageTables::unmap_level(uint64_t* t, int level, uint64_t lo, uint64_t hi) {
  for_range(level, lo, hi, [&](uint32_t idx, uint64_t sub_lo, uint64_t sub_hi, uint64_t start) {
    const uint64_t e = load(t[idx]);
    if ((e & pte::kPresent) == 0) return;
    if (is_leaf(level, e)) {
      NRX_DCHECK(sub_lo == start && sub_hi - start == (uint64_t{1} << shift(level)), "unmapping part of a leaf");
      store(t[idx], 0);
      return;
    }
    if (unmap_level(table(e), level - 1, sub_lo, sub_hi)) {
      store(t[idx], 0);
      free_table(e);
    }
  });
  for (uint64_t i = 0; i < kEntries; ++i) {
    if ((load(t[i]) & pte::kPresent) != 0) return false;
  }
  return true;
}

void PageTables::protect(uint64_t vaddr, uint64_t len, uint64_t rights) {
  protect_level(table(root_.paddr()), kLevels, vaddr, vaddr + len, rights & pte::kRightsMask);
}

void PageTables::protect_level(uint64_t* t, int level, uint64_t lo, uint64_t hi, uint64_t rights) {
  for_range(level, lo, hi, [&](uint32_t idx, uint64_t sub_lo, uint64_t sub_hi, uint64_t) {
    const uint64_t e = load(t[idx]);
    if ((e & pte::kPresent) == 0) return;
    if (is_leaf(level, e)) {
      store(t[idx], (e & ~pte::kRightsMask) | rights);
      return;
    }
    protect_level(table(e), level - 1, sub_lo, sub_hi, rights);
  });
}

Result<Walk> PageTables::walk(uint64_t vaddr, Access access) const {
  if (vaddr >= kUserTop) return Status::invalid_argument("address outside the user half");
  const uint64_t* t = table(root_.paddr());
  const uint64_t set = access == Access::kNone ? 0 : pte::kAccessed;
  for (int level = kLevels; level >= 1; --level) {
    if (t == nullptr) return Status::data_loss("a page-table entry points outside physical memory");
    const uint32_t idx = static_cast<uint32_t>((vaddr >> shift(level)) & (kEntries - 1));
    uint64_t& slot = const_cast<uint64_t&>(t[idx]);
    uint64_t e = load(slot);
    if ((e & pte::kPresent) == 0) return Status::not_found("no translation");
    if (!is_leaf(level, e)) {
      // relaxed: A is a hint for the OS, ordered by nothing (the MMU sets it the same way).
      if (set != 0 && (e & set) == 0) std::atomic_ref<uint64_t>(slot).fetch_or(set, std::memory_order_relaxed);
      t = table(e);
      continue;
    }
    if (access == Access::kWrite && (e & pte::kWritable) == 0) return Status::permission_denied("page is read-only");
    if (access == Access::kExecute && (e & pte::kNoExecute) != 0) return Status::permission_denied("page is no-execute");
    const uint64_t bits = set | (access == Access::kWrite ? pte::kDirty : 0);
    if (bits != 0 && (e & bits) != bits) {
      e = std::atomic_ref<uint64_t>(slot).fetch_or(bits, std::memory_order_relaxed) | bits;  // relaxed: as above
    }
    const uint64_t page_mask = (uint64_t{1} << shift(level)) - 1;
    const uint64_t base = e & (level == 2 ? pte::kLargeAddrMask : pte::kAddrMask);
    return Walk{.paddr = base | (vaddr & page_mask),
                .page_vaddr = vaddr & ~page_mask,
                .page = level == 2 ? mem::FrameClass::kLarge : mem::FrameClass::kBase,
                .leaf = e};
  }
  return Status::internal("unreachable");
}

void PageTables::for_each_leaf(FunctionRef<void(uint64_t, uint64_t, mem::FrameClass)> f) const {
  leaves_level(table(root_.paddr()), kLevels, 0, f);
}

void PageTables::leaves_level(const uint64_t* t, int level, uint64_t base,
                              FunctionRef<void(uint64_t, uint64_t, mem::FrameClass)> f) const {
  for (uint64_t i = 0; i < kEntries; ++i) {
    const uint64_t e = load(t[i]);
    if ((e & pte::kPresent) == 0) continue;
    const uint64_t va = base | (i << shift(level));
    if (is_leaf(level, e)) {
      f(va, e, level == 2 ? mem::FrameClass::kLarge : mem::FrameClass::kBase);
    } else {
      leaves_level(table(e), level - 1, va, f);
    }
  }
}

void PageTables::free_level(uint64_t* t, int level) {
  if (level == 1) return;
  for (uint64_t i = 0; i < kEntries; ++i) {
    const uint64_t e = load(t[i]);
    if ((e & pte::kPresent) == 0 || is_leaf(level, e)) continue;
    free_level(table(e), level - 1);
    free_table(e);
  }
}

}  // namespace nrx::vmem
