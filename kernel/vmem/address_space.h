// nrx::vmem::AddressSpace: the sequential state of one process's virtual memory, made replicable
// by node replication (NrOS paper section 4.2, NR-vMem): a mapping B-tree (what is mapped where,
// the kernel's own record) plus real x86-64 4-level page tables (what the MMU would walk), kept in
// step by every operation. Vspace (vspace.h) wraps it in NR: one AddressSpace per replica.
//
// Operations (DESIGN 4, vmem):
//   Map(frame, vaddr, len, rights)  map [vaddr, vaddr+len) to physically contiguous memory starting
//                                   at |frame|, with pages of the frame's class (4 KiB or 2 MiB)
//   Unmap(vaddr, len)               remove every page in the range; returns the removed pieces so
//                                   the caller frees their frames once the TLBs are shot down
//   Adjust(vaddr, len, rights)      change the rights of every page in the range
//   Resolve(vaddr[, access])        the page walker's translation (read op)
// Partial unmaps and adjusts split mappings (as munmap/mprotect do); a 2 MiB page is never split.
// Page-table frames come from mem::DeterministicAllocator keyed by the op's log index, so every
// replica gets its tables in its own node's memory and an out-of-memory is the same on all.
//
// Invariants: mappings in the B-tree are disjoint; the leaves of the page tables are exactly the
// pages of the mappings, with the mappings' addresses and rights (check_consistency()); state
// changes only in dispatch_mut, deterministically from (state, op, log index).
//
// Thread safety: as a Dispatch type: dispatch() is const and may run concurrently with other
// dispatch() calls (walks set A/D bits atomically); dispatch_mut() needs exclusive access.
//
//   auto as = AddressSpace::create(memory, &det, /*slot=*/0, root).value();
//   AddressSpace::WriteOp op = AddressSpace::map_op(frame, 0x40'0000, 4096, rights::kWrite);
//   auto r = as.dispatch_mut(op, nr::ApplyContext{.index = 0, .writer = 0, .replica = 0});
//   auto t = as.dispatch(AddressSpace::ReadOp{0x40'0010, Access::kRead});   // t.walk.paddr
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "kernel/mem/deterministic_allocator.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"
#include "kernel/nr/dispatch.h"
#include "kernel/vmem/btree.h"
#include "kernel/vmem/page_table.h"

namespace nrx::vmem {

// Rights of a mapping, beyond "readable" (always).
namespace rights {
inline constexpr uint8_t kWrite = 1;
inline constexpr uint8_t kExecute = 2;
inline constexpr uint8_t kUser = 4;
inline constexpr uint8_t kAll = kWrite | kExecute | kUser;
}  // namespace rights

// One piece of mapped memory: [vaddr, vaddr+len) -> frame.paddr() + (va - vaddr).
struct Mapping {
  uint64_t vaddr = 0;
  uint64_t len = 0;
  mem::Frame frame;  // the first frame; its class is the page size
  uint8_t rights = 0;
  friend bool operator==(const Mapping&, const Mapping&) = default;
};

class AddressSpace {
 public:
  struct WriteOp {
    enum class Kind : uint8_t { kMap = 1, kUnmap = 2, kAdjust = 3 };
    Kind kind = Kind::kMap;
    uint8_t rights = 0;
    uint8_t reserved[6] = {};
    mem::Frame frame;  // kMap only
    uint64_t vaddr = 0;
    uint64_t len = 0;
  };
  struct ReadOp {
    uint64_t vaddr = 0;
    Access access = Access::kNone;  // kNone: look up only; else check rights and set A/D
  };
  struct Response {
    Status status;                  // the op's error, or ok
    Walk walk;                      // Resolve
    std::vector<Mapping> unmapped;  // Unmap: the pieces removed, in address order
  };

  static WriteOp map_op(mem::Frame frame, uint64_t vaddr, uint64_t len, uint8_t r) {
    return {.kind = WriteOp::Kind::kMap, .rights = r, .frame = frame, .vaddr = vaddr, .len = len};
  }
  static WriteOp unmap_op(uint64_t vaddr, uint64_t len) {
    return {.kind = WriteOp::Kind::kUnmap, .frame = {}, .vaddr = vaddr, .len = len};
  }
  static WriteOp adjust_op(uint64_t vaddr, uint64_t len, uint8_t r) {
    return {.kind = WriteOp::Kind::kAdjust, .rights = r, .frame = {}, .vaddr = vaddr, .len = len};
  }

  // The replica in slot |slot| of |det| (its page tables come from slot |slot|'s pool), rooted at
  // |root|. |det| may be null for a lone address space: tables then come from root's pool.
  // Errors: as PageTables::create; kInvalidArgument for a slot |det| does not have.
  static Result<AddressSpace> create(mem::Memory& memory, mem::DeterministicAllocator* det, uint32_t slot,
                                     mem::Frame root);

  AddressSpace(AddressSpace&&) noexcept = default;
  AddressSpace& operator=(AddressSpace&&) noexcept = default;

  // Resolve. Errors in Response::status: as PageTables::walk.
  Response dispatch(const ReadOp& op) const;
  // Map, Unmap, Adjust. Errors in Response::status: kInvalidArgument (see validate());
  // kAlreadyExists (Map over a mapped page); kNotFound (Unmap/Adjust of a page that is not mapped:
  // nothing changes); kResourceExhausted (no frames for page tables: nothing changes, on every
  // replica alike).
  Response dispatch_mut(const WriteOp& op, const nr::ApplyContext& ctx);

  // The checks that need no state, done before an op is logged and again when it is applied:
  // kInvalidArgument for an unknown kind or rights bit, a zero length, an address or length not
  // aligned to the page size, a range outside the user half [0, 2^47) (non-canonical or kernel),
  // or (Map) a frame whose range [frame, frame+len) is not inside one pool.
  static Status validate(const WriteOp& op, const mem::PhysicalMemory& physical);

  // The B-tree's translation of |vaddr| (what the walker must agree with). Errors: kNotFound.
  Result<Walk> resolve_mappings(uint64_t vaddr) const;
  // Every mapping, in address order.
  std::vector<Mapping> mappings() const;
  // A hash of the mappings and of the page-table leaves (without A/D bits, which differ by who
  // touched what, and without table addresses, which differ by node): equal on equal replicas.
  uint64_t digest() const;
  // Walks every mapped page and every leaf and checks they agree; false with a reason if not.
  bool check_consistency(std::string* why) const;
  uint64_t table_frames() const { return tables_.table_frames(); }
  uint64_t root_paddr() const { return tables_.root_paddr(); }  // what CR3 would hold
  size_t mapping_count() const { return tree_.size(); }

 private:
  AddressSpace(mem::Memory& memory, mem::DeterministicAllocator* det, uint32_t slot, PageTables tables)
      : memory_(&memory), det_(det), slot_(slot), tables_(std::move(tables)) {}

  Status map_locked(const WriteOp& op, const nr::ApplyContext& ctx);
  // Checks that [lo, hi) is fully mapped and splits no 2 MiB page; returns the overlapping mappings.
  Result<std::vector<Mapping>> covering(uint64_t lo, uint64_t hi) const;
  // Removes |pieces| from the tree and puts back their parts outside [lo, hi) (and, with |keep|,
  // their parts inside with |new_rights|); returns the parts inside.
  std::vector<Mapping> split(const std::vector<Mapping>& pieces, uint64_t lo, uint64_t hi, bool keep,
                             uint8_t new_rights);

  mem::Memory* memory_;
  mem::DeterministicAllocator* det_;
  uint32_t slot_;
  PageTables tables_;
  BTreeMap<uint64_t, Mapping> tree_;  // keyed by Mapping::vaddr
};

// The page-table rights bits for |r|.
uint64_t pte_rights(uint8_t r);

}  // namespace nrx::vmem
