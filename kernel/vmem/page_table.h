// nrx::vmem::PageTables: real x86-64 4-level page tables (PML4 -> PDPT -> PD -> PT) kept in frames
// of kernel/mem, with the entry format of the Intel SDM (Vol. 3A, section 4.5, "4-level paging"),
// and the software page walker that reads them the way the MMU does. One PageTables per replica of
// an address space: the tables live in that replica's node memory, so their frames (and hence the
// addresses in non-leaf entries) differ between replicas while the translations they hold agree.
//
// Scope: the lower canonical half (user addresses [0, 2^47)); 4 KiB leaves in PTs and 2 MiB leaves
// (PS=1) in PDs. Non-leaf entries are present|writable|user: the leaf alone decides the rights, as
// most kernels do. A and D are set by the walker when an access is given (as the MMU sets them),
// with an atomic OR, so concurrent readers of one replica may walk at once.
//
// Invariants: no table except the root is empty (unmap frees a table its last entry left); a PD
// entry is either a 2 MiB leaf or points to a PT, never both; every table frame belongs to |memory|.
//
// Thread safety: walk() may run concurrently with other walk() calls; map/unmap/protect need
// exclusive access (NR: the replica's writer lock). Entries are read and written through
// std::atomic_ref (relaxed) because walks set A/D bits concurrently with other walks.
//
//   PageTables pt = PageTables::create(memory, root_frame).value();
//   std::vector<mem::Frame> fresh = ...;                    // pt.tables_needed(va, len, kBase) frames
//   pt.map(0x40'0000, frame.paddr(), 0x2000, mem::FrameClass::kBase, pte::kWritable | pte::kUser, fresh);
//   Result<Walk> w = pt.walk(0x40'1234, Access::kWrite);  // sets A and D, paddr = frame + 0x1234
//   pt.unmap(0x40'0000, 0x2000);                           // frees the PT, PD and PDPT it emptied
#pragma once

#include <cstdint>
#include <vector>

#include "base/function_ref.h"
#include "base/status.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"

namespace nrx::vmem {

// Entry bits (Intel SDM Vol. 3A, Tables 4-15..4-20).
namespace pte {
inline constexpr uint64_t kPresent = uint64_t{1} << 0;
inline constexpr uint64_t kWritable = uint64_t{1} << 1;       // R/W
inline constexpr uint64_t kUser = uint64_t{1} << 2;           // U/S
inline constexpr uint64_t kWriteThrough = uint64_t{1} << 3;   // PWT
inline constexpr uint64_t kCacheDisable = uint64_t{1} << 4;   // PCD
inline constexpr uint64_t kAccessed = uint64_t{1} << 5;       // A: set by the walker on any access
inline constexpr uint64_t kDirty = uint64_t{1} << 6;          // D: leaves only, set on a write
inline constexpr uint64_t kPageSize = uint64_t{1} << 7;       // PS: in a PD entry, a 2 MiB leaf
inline constexpr uint64_t kGlobal = uint64_t{1} << 8;         // G
inline constexpr uint64_t kNoExecute = uint64_t{1} << 63;     // XD/NX
inline constexpr uint64_t kAddrMask = 0x000F'FFFF'FFFF'F000;      // bits 51:12, 4 KiB aligned
inline constexpr uint64_t kLargeAddrMask = 0x000F'FFFF'FFE0'0000;  // bits 51:21 of a 2 MiB leaf
// Bits a leaf's rights are made of (what protect() replaces).
inline constexpr uint64_t kRightsMask = kWritable | kUser | kNoExecute;
}  // namespace pte

inline constexpr uint64_t kUserTop = uint64_t{1} << 47;  // end of the lower canonical half

enum class Access : uint8_t { kNone, kRead, kWrite, kExecute };

// What the walker found for one address.
struct Walk {
  uint64_t paddr = 0;       // the translated physical address
  uint64_t page_vaddr = 0;  // start of the page holding the address
  mem::FrameClass page = mem::FrameClass::kBase;
  uint64_t leaf = 0;        // the leaf entry as read (after setting A/D)
};

class PageTables {
 public:
  // Tables rooted at |root| (a 4 KiB frame of |memory|, zeroed here). Takes ownership of the frame.
  // Errors: kInvalidArgument when |root| is not a 4 KiB frame of |memory|.
  static Result<PageTables> create(mem::Memory& memory, mem::Frame root);

  PageTables(PageTables&& other) noexcept;
  PageTables& operator=(PageTables&& other) noexcept;
  PageTables(const PageTables&) = delete;
  PageTables& operator=(const PageTables&) = delete;
  ~PageTables();  // frees every table frame, the root too

  uint64_t root_paddr() const { return root_.paddr(); }

  // Table frames map() needs to cover [vaddr, vaddr+len) with pages of |page|: the ones missing
  // on the way down. Same answer on every replica with the same mappings.
  uint32_t tables_needed(uint64_t vaddr, uint64_t len, mem::FrameClass page) const;
  // Maps [vaddr, vaddr+len) to [paddr, paddr+len) with |page|-sized leaves carrying |rights|
  // (pte::kRightsMask bits). Preconditions (the caller, AddressSpace, checks them): aligned, in the
  // user half, nothing mapped there, and |fresh| holds tables_needed() 4 KiB frames (consumed).
  void map(uint64_t vaddr, uint64_t paddr, uint64_t len, mem::FrameClass page, uint64_t rights,
           std::vector<mem::Frame>& fresh);
  // Clears every leaf in [vaddr, vaddr+len) and frees tables left empty. Precondition: no 2 MiB leaf
  // straddles the range's ends.
  void unmap(uint64_t vaddr, uint64_t len);
  // Replaces the rights bits of every leaf in [vaddr, vaddr+len) (same precondition as unmap).
  void protect(uint64_t vaddr, uint64_t len, uint64_t rights);

  // The software page walker. With an access other than kNone it checks the leaf's rights (a write
  // needs W, an execute needs NX clear) and sets A (and D on a write), as the MMU does.
  // Errors: kNotFound (no translation: a non-present entry on the way); kPermissionDenied (the
  // rights forbid |access|); kInvalidArgument (outside the user half); kDataLoss (an entry points
  // outside physical memory: corrupt tables).
  Result<Walk> walk(uint64_t vaddr, Access access = Access::kNone) const;

  // Calls f(vaddr, leaf entry, page class) for every leaf, in address order.
  void for_each_leaf(FunctionRef<void(uint64_t, uint64_t, mem::FrameClass)> f) const;
  // Table frames in use, the root included.
  uint64_t table_frames() const { return table_frames_; }

 private:
  PageTables(mem::Memory& memory, mem::Frame root) : memory_(&memory), root_(root), table_frames_(1) {}
  uint64_t* table(uint64_t paddr) const;
  uint32_t count_missing(const uint64_t* t, int level, uint64_t lo, uint64_t hi, int leaf_level) const;
  void map_level(uint64_t* t, int level, uint64_t lo, uint64_t hi, uint64_t pa_base, uint64_t va_base,
                 int leaf_level, uint64_t leaf_flags, std::vector<mem::Frame>& fresh);
  // Returns true when |t| is left with no present entry.
  bool unmap_level(uint64_t* t, int level, uint64_t lo, uint64_t hi);
  void protect_level(uint64_t* t, int level, uint64_t lo, uint64_t hi, uint64_t rights);
  void leaves_level(const uint64_t* t, int level, uint64_t base,
                    FunctionRef<void(uint64_t, uint64_t, mem::FrameClass)> f) const;
  void free_level(uint64_t* t, int level);
  void free_table(uint64_t paddr);

  mem::Memory* memory_;  // null once moved from
  mem::Frame root_;
  uint64_t table_frames_;
};

}  // namespace nrx::vmem
