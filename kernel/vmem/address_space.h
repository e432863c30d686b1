// nrx::vmem::AddressSpace: the sequential state of one process's virtual memory, made replicable
// by node replication (NrOS paper section 4.2, NR-vMem): a mapping B-tree (what is mapped where,
// the kernel's own record) plus real x86-64 4-level page tables (what the MMU would walk), kept in
// step by every operation. Vspace (vspace.h) wraps it in NR: one AddressSpace per replica.
//
// Operations (DESIGN 4, vmem):
//   Map(frame, vaddr, len, rights)  map [vaddr, vaddr+len) to physically contiguous memory starting
//                                   at |frame|, with pages of the frame's class (4 KiB or 2 MiB)
//   MapCopy(payload, vaddr, len, rights)
//                                   map [vaddr, vaddr+len) to fresh 4 KiB frames that THIS replica
//                                   allocates in its own node's memory and fills with the payload's
//                                   bytes (zeros after them): read-only segments are copied per
//                                   replica, not shared (NrOS paper section 4.4). The pages are
//                                   owned by the replica (Mapping::owned), one Mapping per page
//   Unmap(vaddr, len)               remove every page in the range; returns the removed pieces that
//                                   are not owned so the caller frees their frames once the TLBs are
//                                   shot down; owned pages are freed by each replica itself
//   Adjust(vaddr, len, rights)      change the rights of every page in the range (MapCopy pages
//                                   never become writable: kPermissionDenied)
//   Resolve(vaddr[, access])        the page walker's translation (read op)
// Partial unmaps and adjusts split mappings (as munmap/mprotect do); a 2 MiB page is never split.
// Page-table frames (and MapCopy's page frames) come from mem::DeterministicAllocator keyed by the
// op's log index, so every replica gets them in its own node's memory and an out-of-memory is the
// same on all. A MapCopy's payload lives in the log's payload table (DESIGN 3.3): every replica
// reads it while applying and releases it once afterwards, whatever the outcome.
//
// Owned frames: freed by the replica when an Unmap removes them and when the AddressSpace is
// destroyed. A core of the replica may still hold a TLB entry to such a frame until the Unmap's
// shootdown reaches it (the frame is freed when the replica applies the op, not after the
// shootdown), so in that window a stale access may reach a frame already reused. MapCopy is meant
// for read-only segments, unmapped when the process exits; deferring the free past the shootdown
// would close the window.
//
// Invariants: mappings in the B-tree are disjoint; the leaves of the page tables are exactly the
// pages of the mappings, with the mappings' addresses and rights (check_consistency()); an owned
// mapping is one 4 KiB page; state changes only in dispatch_mut, deterministically from (state, op,
// log index), except the frames of owned pages, which differ by replica (their contents do not).
//
// Thread safety: as a Dispatch type: dispatch() is const and may run concurrently with other
// dispatch() calls (walks set A/D bits atomically); dispatch_mut() needs exclusive access.
//
//   auto as = AddressSpace::create(memory, &det, /*slot=*/0, root, &log).value();
//   AddressSpace::WriteOp op = AddressSpace::map_op(frame, 0x40'0000, 4096, rights::kWrite);
//   auto r = as.dispatch_mut(op, nr::ApplyContext{.index = 0, .writer = 0, .replica = 0});
//   auto t = as.dispatch(AddressSpace::ReadOp{0x40'0010, Access::kRead});   // t.walk.paddr
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "base/status.h"
#include "kernel/mem/deterministic_allocator.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"
#include "kernel/nr/dispatch.h"
#include "kernel/vmem/btree.h"
#include "kernel/vmem/page_table.h"
#include "logs/log.h"

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
  // MapCopy pages: one 4 KiB page whose frame this replica allocated and frees (it differs by
  // replica); Unmap never hands it to the caller.
  bool owned = false;
  friend bool operator==(const Mapping&, const Mapping&) = default;
};

class AddressSpace {
 public:
  // Crosses the log (DESIGN 3.2): fixed layout, no pointers, reserved bytes zero.
  struct WriteOp {
    enum class Kind : uint8_t { kMap = 1, kUnmap = 2, kAdjust = 3, kMapCopy = 4 };
    Kind kind = Kind::kMap;
    uint8_t rights = 0;
    uint8_t reserved[6] = {};
    mem::Frame frame;  // kMap only
    uint64_t vaddr = 0;
    uint64_t len = 0;
    // kMapCopy only: the bytes to copy (data.length <= len), in the log's payload table; all zero
    // for no payload (the pages are zero-filled).
    logs::PayloadRef data{};
  };
  // The largest MapCopy (its payload length is 32-bit and its frames are counted in 32 bits).
  static constexpr uint64_t kMaxMapCopyBytes = uint64_t{1} << 32;
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
  // |data|: a payload of the log every replica reads (from Log::payload_put), or {} for none.
  static WriteOp map_copy_op(logs::PayloadRef data, uint64_t vaddr, uint64_t len, uint8_t r) {
    return {.kind = WriteOp::Kind::kMapCopy, .rights = r, .frame = {}, .vaddr = vaddr, .len = len, .data = data};
  }

  // The replica in slot |slot| of |det| (its page tables and owned frames come from slot |slot|'s
  // pool), rooted at |root|. |det| may be null for a lone address space: frames then come from
  // root's pool. |log| is the log the ops come through, whose payload table MapCopy reads; it may
  // be null when no MapCopy carries a payload. Errors: as PageTables::create; kInvalidArgument for
  // a slot |det| does not have.
  static Result<AddressSpace> create(mem::Memory& memory, mem::DeterministicAllocator* det, uint32_t slot,
                                     mem::Frame root, logs::Log* log = nullptr);

  // A moved-from AddressSpace owns nothing.
  AddressSpace(AddressSpace&& other) noexcept;
  AddressSpace& operator=(AddressSpace&& other) noexcept;
  AddressSpace(const AddressSpace&) = delete;
  AddressSpace& operator=(const AddressSpace&) = delete;
  ~AddressSpace();  // frees the owned frames (and, through PageTables, the table frames)

  // Resolve. Errors in Response::status: as PageTables::walk.
  Response dispatch(const ReadOp& op) const;
  // Map, MapCopy, Unmap, Adjust. Errors in Response::status: kInvalidArgument (see validate(); and
  // MapCopy: a payload the log does not hold, or no log); kAlreadyExists (Map/MapCopy over a mapped
  // page: nothing is allocated); kNotFound (Unmap/Adjust of a page that is not mapped: nothing
  // changes); kPermissionDenied (Adjust adding write rights to per-replica copies: the replicas'
  // copies would differ; nothing changes); kResourceExhausted (no frames for page tables or
  // MapCopy's pages: nothing changes, nothing stays allocated, on every replica alike). MapCopy releases its payload (for
  // ctx.replica) after applying, whatever the outcome (also when validate() fails).
  Response dispatch_mut(const WriteOp& op, const nr::ApplyContext& ctx);

  // The checks that need no state, done before an op is logged and again when it is applied:
  // kInvalidArgument for an unknown kind or rights bit, non-zero reserved bytes, a zero length, an
  // address or length not aligned to the page size (4 KiB for all but Map), a range outside the
  // user half [0, 2^47) (non-canonical or kernel), (Map) a frame whose range [frame, frame+len) is
  // not inside one pool, a payload on an op other than MapCopy, or (MapCopy) a frame, a payload
  // longer than len, or len above kMaxMapCopyBytes.
  static Status validate(const WriteOp& op, const mem::PhysicalMemory& physical);

  // The B-tree's translation of |vaddr| (what the walker must agree with). Errors: kNotFound.
  Result<Walk> resolve_mappings(uint64_t vaddr) const;
  // Every mapping, in address order.
  std::vector<Mapping> mappings() const;
  // A hash of the mappings and of the page-table leaves (without A/D bits, which differ by who
  // touched what, and without table addresses, which differ by node): equal on equal replicas.
  // Owned pages count by their contents (4 KiB each), not by their frames, which differ by node.
  uint64_t digest() const;
  // Walks every mapped page and every leaf and checks they agree; false with a reason if not.
  bool check_consistency(std::string* why) const;
  uint64_t table_frames() const { return tables_.table_frames(); }
  uint64_t root_paddr() const { return tables_.root_paddr(); }  // what CR3 would hold
  size_t mapping_count() const { return tree_.size(); }
  uint64_t owned_frames() const;  // frames of owned pages (MapCopy) in this replica

 private:
  AddressSpace(mem::Memory& memory, mem::DeterministicAllocator* det, uint32_t slot, logs::Log* log,
               PageTables tables)
      : memory_(&memory), det_(det), slot_(slot), log_(log), tables_(std::move(tables)) {}

  void apply_locked(const WriteOp& op, const nr::ApplyContext& ctx, Response& r);
  Status map_locked(const WriteOp& op, const nr::ApplyContext& ctx);
  Status map_copy_locked(const WriteOp& op, const nr::ApplyContext& ctx);
  // kAlreadyExists if any page of [vaddr, vaddr+len) is mapped.
  Status check_unmapped(uint64_t vaddr, uint64_t len) const;
  // |count| 4 KiB frames of this replica for the op at ctx.index (all or none; same outcome on
  // every replica). Errors: kResourceExhausted.
  Result<std::vector<mem::Frame>> allocate(const nr::ApplyContext& ctx, uint32_t count);
  void free_frame(const mem::Frame& f);
  void free_owned();  // every owned frame still mapped (destruction)
  // Checks that [lo, hi) is fully mapped and splits no 2 MiB page; returns the overlapping mappings.
  Result<std::vector<Mapping>> covering(uint64_t lo, uint64_t hi) const;
  // Removes |pieces| from the tree and puts back their parts outside [lo, hi) (and, with |keep|,
  // their parts inside with |new_rights|); returns the parts inside.
  std::vector<Mapping> split(const std::vector<Mapping>& pieces, uint64_t lo, uint64_t hi, bool keep,
                             uint8_t new_rights);

  mem::Memory* memory_;  // null once moved from
  mem::DeterministicAllocator* det_;
  uint32_t slot_;
  logs::Log* log_;  // payloads of MapCopy; may be null
  PageTables tables_;
  BTreeMap<uint64_t, Mapping> tree_;  // keyed by Mapping::vaddr
};

static_assert(std::is_trivially_copyable_v<AddressSpace::WriteOp>);
static_assert(sizeof(AddressSpace::WriteOp) == 56 && alignof(AddressSpace::WriteOp) == 8);
static_assert(offsetof(AddressSpace::WriteOp, frame) == 8 && offsetof(AddressSpace::WriteOp, vaddr) == 24 &&
              offsetof(AddressSpace::WriteOp, len) == 32 && offsetof(AddressSpace::WriteOp, data) == 40);

// The page-table rights bits for |r|.
uint64_t pte_rights(uint8_t r);

}  // namespace nrx::vmem
