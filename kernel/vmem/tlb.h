// nrx::vmem::Tlb and ShootdownMailbox: a core's software TLB and the mailbox that stands in for the
// TLB-shootdown IPI (NrOS paper section 4.2; DESIGN 4, vmem). A Tlb caches translations the page
// walker produced, like the hardware TLB: it is NOT kept coherent with the page tables, so after an
// Unmap or Adjust every core that may cache the range must flush it, which is what the mailbox
// carries. Vspace (vspace.h) runs the protocol.
//
// Tlb: direct-mapped, 64 entries for 4 KiB pages and 16 for 2 MiB pages, tagged by page number.
// Mailbox: a small locked queue plus a counter a core polls cheaply between translations (the
// "interrupt pending" line); each request points at the initiator's acknowledgement counter.
//
// Thread safety: a Tlb belongs to one core (one thread at a time). ShootdownMailbox::post is safe
// from any thread; take() and pending() from the owning core.
//
//   Tlb tlb;
//   if (auto hit = tlb.lookup(va, Access::kRead)) use(hit->paddr);
//   else tlb.insert(walk);                                   // after a miss went to the walker
//   tlb.flush(va, len);                                      // on a shootdown
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "base/mutex.h"
#include "base/thread_annotations.h"
#include "kernel/mem/frame.h"
#include "kernel/vmem/page_table.h"

namespace nrx::vmem {

class Tlb {
 public:
  static constexpr uint32_t kBaseEntries = 64;
  static constexpr uint32_t kLargeEntries = 16;

  // The cached translation of |vaddr| if it allows |access|. A write through an entry whose D bit
  // is clear misses (the walker must set D, as the MMU does).
  std::optional<Walk> lookup(uint64_t vaddr, Access access) {
    const Entry* e = find(vaddr);
    if (e == nullptr || !allows(e->walk.leaf, access)) {
      ++misses_;
      return std::nullopt;
    }
    ++hits_;
    Walk w = e->walk;
    w.paddr = e->walk.paddr + (vaddr - e->walk.page_vaddr);
    return w;
  }

  // Caches |w| (a walker result) for its whole page.
  void insert(const Walk& w) {
    const uint64_t page = mem::frame_size(w.page);
    Entry& e = slot(w.page, w.page_vaddr);
    e.valid = true;
    e.walk = w;
    e.walk.paddr = w.paddr - (w.paddr & (page - 1));  // the page's base
  }

  // Drops every entry overlapping [vaddr, vaddr+len).
  void flush(uint64_t vaddr, uint64_t len) {
    ++flushes_;
    for (Entry& e : base_) drop_if_overlaps(e, mem::kBaseFrameSize, vaddr, len);
    for (Entry& e : large_) drop_if_overlaps(e, mem::kLargeFrameSize, vaddr, len);
  }
  void flush_all() {
    ++flushes_;
    for (Entry& e : base_) e.valid = false;
    for (Entry& e : large_) e.valid = false;
  }

  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  uint64_t flushes() const { return flushes_; }

 private:
  struct Entry {
    bool valid = false;
    Walk walk;  // paddr is the page's base
  };
  static bool allows(uint64_t leaf, Access access) {
    switch (access) {
      case Access::kWrite: return (leaf & pte::kWritable) != 0 && (leaf & pte::kDirty) != 0;
      case Access::kExecute: return (leaf & pte::kNoExecute) == 0;
      default: return true;
    }
  }
  Entry& slot(mem::FrameClass page, uint64_t vaddr) {
    return page == mem::FrameClass::kLarge ? large_[(vaddr >> 21) % kLargeEntries]
                                           : base_[(vaddr >> 12) % kBaseEntries];
  }
  const Entry* find(uint64_t vaddr) const {
    const Entry& l = large_[(vaddr >> 21) % kLargeEntries];
    if (l.valid && l.walk.page_vaddr == (vaddr & ~(mem::kLargeFrameSize - 1))) return &l;
    const Entry& b = base_[(vaddr >> 12) % kBaseEntries];
    if (b.valid && b.walk.page_vaddr == (vaddr & ~(mem::kBaseFrameSize - 1))) return &b;
    return nullptr;
  }
  static void drop_if_overlaps(Entry& e, uint64_t page, uint64_t vaddr, uint64_t len) {
    if (e.valid && e.walk.page_vaddr < vaddr + len && vaddr < e.walk.page_vaddr + page) e.valid = false;
  }

  std::array<Entry, kBaseEntries> base_{};
  std::array<Entry, kLargeEntries> large_{};
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
  uint64_t flushes_ = 0;
};

// One shootdown: flush [vaddr, vaddr+len), then decrement *pending (the initiator waits for 0).
struct ShootdownRequest {
  uint64_t vaddr = 0;
  uint64_t len = 0;
  std::atomic<uint32_t>* pending = nullptr;  // lives on the initiator's stack until it reads 0
};

class ShootdownMailbox {
 public:
  void post(const ShootdownRequest& r) NRX_EXCLUDES(mu_) {
    MutexLock lock(mu_);
    queue_.push_back(r);
    // relaxed: only a hint for the poller; the queue itself is read under mu_.
    count_.store(static_cast<uint32_t>(queue_.size()), std::memory_order_relaxed);
  }
  // Cheap check a core makes between translations.
  bool pending() const { return count_.load(std::memory_order_relaxed) != 0; }  // relaxed: hint, see post
  // Moves every queued request into |out|.
  void take(std::vector<ShootdownRequest>& out) NRX_EXCLUDES(mu_) {
    MutexLock lock(mu_);
    out.insert(out.end(), queue_.begin(), queue_.end());
    queue_.clear();
    count_.store(0, std::memory_order_relaxed);  // relaxed: as in post
  }

 private:
  Mutex mu_;
  std::vector<ShootdownRequest> queue_ NRX_GUARDED_BY(mu_);
  std::atomic<uint32_t> count_{0};
};

}  // namespace nrx::vmem
