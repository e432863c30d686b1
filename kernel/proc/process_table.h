// nrx::proc::ProcessTable: the NR-Scheduler's process table and core allocator as a sequential
// data structure made replicable by node replication (NrOS paper section 4.4: processes, executors
// and core allocation are replicated state; one ProcessTable per replica, kept in step by the log).
//
// State: the kernel's cores (nodes x cores_per_node, core c on node c / cores_per_node), the live
// processes (pid -> ProcessInfo), the core owner table (core -> pid, 0 = free), next_pid (pids start
// at 1 and are never reused) and the count of processes that exited.
//
// Write ops (WriteOp, 64 bytes, built with the *_op factories):
//   Create(name, entry, pie, image_span, home_node)  next pid; a PIE gets THE load offset every
//                       replica agrees on (see kPieBase); Response: pid, load_offset
//   AllocCore(pid, node, core)  core == kAnyCore: the lowest free core on |node|; else exactly
//                       |core| (which must lie on |node|). A core has at most one owner: asking for
//                       a core another process owns is kResourceExhausted, never sharing. Response: core
//   ReleaseCore(pid, core)      gives |core| back
//   Exit(pid, status)    removes the process and frees every core it owned; Response: cores, exit_status
// Read ops: Get(pid) -> info, List -> processes (by pid), CoreOwner(core) -> pid, CoresOf(pid) ->
// cores, FreeCores(node) -> free_cores.
//
// Every op's fields are validated when it is applied (ops come through a log, in rack mode from
// other machines): an unknown kind, a nonzero reserved byte or a field out of range is answered
// with kInvalidArgument in Response::status, on every replica alike, and changes nothing.
//
// Invariants (check_invariants()): every owned core's owner is a live process and each process's
// ProcessInfo::cores equals the number of cores it owns; the per-node free counts match the owner
// table; live PIEs have distinct load-offset slots; every live pid is below next_pid. State changes
// only in dispatch_mut, deterministically from (state, op): replicas that applied the same log
// prefix have equal digest()s.
//
// Thread safety: none of its own (a Dispatch type): dispatch() is const and may run concurrently
// with other dispatch() calls; dispatch_mut() needs exclusive access. Replica<ProcessTable>
// provides both.
//
//   auto table = proc::ProcessTable::create(/*nodes=*/2, /*cores_per_node=*/4).value();
//   auto made = table.dispatch_mut(proc::ProcessTable::create_op("init", 0x1000, true, 0x20000, 0));
//   auto core = table.dispatch_mut(proc::ProcessTable::alloc_core_op(made.pid, 0, proc::kAnyCore));
//   auto info = table.dispatch(proc::ProcessTable::get_op(made.pid)).info;  // info.cores == 1
//   auto gone = table.dispatch_mut(proc::ProcessTable::exit_op(made.pid, 0));  // gone.cores == {core.core}
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "base/status.h"
#include "kernel/nr/dispatch.h"

namespace nrx::proc {

// AllocCore: any free core on the node.
inline constexpr uint32_t kAnyCore = UINT32_MAX;
// Most cores a table manages (nodes * cores_per_node).
inline constexpr uint32_t kMaxCores = 1024;
// Most processes alive at once.
inline constexpr uint32_t kMaxProcesses = 4096;
// Bytes of a process name, the terminating NUL included (longer names are truncated).
inline constexpr uint32_t kNameBytes = 32;
// User addresses lie below 2^47 (x86-64, 4-level paging).
inline constexpr uint64_t kUserTop = uint64_t{1} << 47;
// PIE load offsets: kPieBase + slot * kPieStride, slot in [0, kMaxProcesses). A PIE is linked at 0,
// so its image occupies [offset, offset + image_span), inside its slot (image_span <= kPieStride,
// 1 GiB: no ELF segment is larger, elf.h). The slot is pid % kMaxProcesses, or the next free one
// after it (a live PIE with an older pid may hold it): live PIEs never share a slot. The highest
// slot ends at 0x5955'0000'0000, well inside the user half.
inline constexpr uint64_t kPieBase = 0x5555'0000'0000;
inline constexpr uint64_t kPieStride = uint64_t{1} << 30;
static_assert(kPieBase + uint64_t{kMaxProcesses} * kPieStride <= kUserTop);

// One process, as the table keeps and reports it. Fixed layout, no pointers (it may be copied into
// a syscall reply).
struct ProcessInfo {
  uint64_t pid = 0;
  char name[kNameBytes] = {};  // NUL-terminated, nonempty; the bytes after the NUL are zero
  uint64_t entry = 0;          // entry point as linked (add load_offset for a PIE)
  uint64_t load_offset = 0;    // 0 for a non-PIE
  uint64_t image_span = 0;     // bytes between the image's lowest and highest page
  uint32_t home_node = 0;
  uint32_t cores = 0;  // cores it owns now
  uint8_t pie = 0;     // 1: position independent
  uint8_t reserved[7] = {};

  std::string_view name_view() const;
  friend bool operator==(const ProcessInfo&, const ProcessInfo&) = default;
};
static_assert(std::is_trivially_copyable_v<ProcessInfo>);
static_assert(sizeof(ProcessInfo) == 80);

class ProcessTable {
 public:
  // A log entry: 8 header bytes and the arguments of its kind. Every byte that the kind does not
  // use (reserved[], the rest of the union, Core::node of a ReleaseCore) must be zero. Build ops
  // with the *_op factories, which zero everything first.
  struct WriteOp {
    enum class Kind : uint8_t { kCreate = 1, kAllocCore = 2, kReleaseCore = 3, kExit = 4 };
    struct Create {
      char name[kNameBytes];  // NUL-terminated within the array, nonempty, zero after the NUL
      uint64_t entry;         // < kUserTop; a PIE's < kPieStride (it lies in the image)
      uint64_t image_span;    // a PIE's must be <= kPieStride
      uint32_t home_node;     // < nodes
      uint8_t pie;            // 0 or 1
      uint8_t reserved[3];
    };
    struct Core {     // kAllocCore, kReleaseCore
      uint64_t pid;
      uint32_t node;  // kAllocCore: < nodes; kReleaseCore: zero
      uint32_t core;  // < core_count(), or kAnyCore for kAllocCore
    };
    struct Exit {
      uint64_t pid;
      int32_t status;
      uint32_t reserved;
    };
    union Args {
      Create create;  // first and largest: `Args{}` zeroes all of it
      Core core;
      Exit exit;
    };

    Kind kind;
    uint8_t reserved[7];
    Args args;
  };
  static_assert(std::is_trivially_copyable_v<WriteOp>);
  static_assert(sizeof(WriteOp) == 64 && alignof(WriteOp) == 8);

  struct ReadOp {
    enum class Kind : uint8_t { kGet = 1, kList = 2, kCoreOwner = 3, kCoresOf = 4, kFreeCores = 5 };
    Kind kind = Kind::kList;
    uint32_t node = 0;  // kFreeCores
    uint32_t core = 0;  // kCoreOwner
    uint64_t pid = 0;   // kGet, kCoresOf
  };

  // One type for every op; each op fills the fields named for it and leaves the others default.
  struct Response {
    Status status;                       // the op's error, or ok
    uint64_t pid = 0;                    // Create: the new pid; CoreOwner: the owner (0: free)
    uint64_t load_offset = 0;            // Create
    uint32_t core = kAnyCore;            // AllocCore: the core now owned
    uint32_t free_cores = 0;             // FreeCores
    int32_t exit_status = 0;             // Exit: the status it was given
    std::vector<uint32_t> cores;         // Exit: the cores it owned; CoresOf; both ascending
    ProcessInfo info;                    // Get
    std::vector<ProcessInfo> processes;  // List, by pid
  };

  // Factories: the only way ops should be built (they zero the unused bytes). |name| is truncated
  // to kNameBytes - 1 bytes (and at an embedded NUL).
  static WriteOp create_op(std::string_view name, uint64_t entry, bool pie, uint64_t image_span,
                           uint32_t home_node);
  static WriteOp alloc_core_op(uint64_t pid, uint32_t node, uint32_t core = kAnyCore);
  static WriteOp release_core_op(uint64_t pid, uint32_t core);
  static WriteOp exit_op(uint64_t pid, int32_t status);
  static ReadOp get_op(uint64_t pid) { return {.kind = ReadOp::Kind::kGet, .pid = pid}; }
  static ReadOp list_op() { return {.kind = ReadOp::Kind::kList}; }
  static ReadOp core_owner_op(uint32_t core) { return {.kind = ReadOp::Kind::kCoreOwner, .core = core}; }
  static ReadOp cores_of_op(uint64_t pid) { return {.kind = ReadOp::Kind::kCoresOf, .pid = pid}; }
  static ReadOp free_cores_op(uint32_t node) { return {.kind = ReadOp::Kind::kFreeCores, .node = node}; }

  // Errors: kInvalidArgument when |nodes| or |cores_per_node| is 0 or nodes * cores_per_node
  // exceeds kMaxCores.
  static Result<ProcessTable> create(uint32_t nodes, uint32_t cores_per_node);
  // For a topology known to be valid (boot's): checks it (always on) and dies otherwise.
  ProcessTable(uint32_t nodes, uint32_t cores_per_node);

  // Reads. Errors in Response::status: kInvalidArgument (unknown kind; core or node out of
  // range); kNotFound (Get, CoresOf: no such live pid).
  Response dispatch(const ReadOp& op) const;

  // Writes. Errors in Response::status (the op then changes nothing):
  // - all: kInvalidArgument for what validate() refuses.
  // - Create: kResourceExhausted with kMaxProcesses processes alive.
  // - AllocCore: kNotFound (no such live pid); kAlreadyExists (|pid| already owns the named core);
  //   kResourceExhausted (no free core on |node|, or another process owns the named core).
  // - ReleaseCore: kNotFound (no such live pid); kFailedPrecondition (|pid| does not own |core|:
  //   it is free or another process's).
  // - Exit: kNotFound (no such live pid).
  Response dispatch_mut(const WriteOp& op);

  // The checks that need only the op and the topology, done when an op is applied (and usable
  // before it is logged): kInvalidArgument for an unknown kind, a nonzero reserved or unused byte,
  // a name that is empty or not NUL-terminated or not zero after its NUL, pie not 0 or 1, an
  // entry outside the user half (a PIE's at or above kPieStride), a PIE's image_span above
  // kPieStride, a node or core out of range, a named core not on |node|.
  Status validate(const WriteOp& op) const;

  uint32_t nodes() const { return nodes_; }
  uint32_t cores_per_node() const { return cores_per_node_; }
  uint32_t core_count() const { return nodes_ * cores_per_node_; }
  uint32_t node_of(uint32_t core) const { return core / cores_per_node_; }

  size_t size() const { return processes_.size(); }  // live processes
  uint64_t exited() const { return exited_; }        // successful Exits so far
  uint64_t next_pid() const { return next_pid_; }

  // A hash of the topology, every process record, the owner table, next_pid and the exited count:
  // equal on replicas that applied the same ops.
  uint64_t digest() const;
  // Checks the invariants in the header comment; false with the first violation in |why| (may be null).
  bool check_invariants(std::string* why) const;

 private:
  // The ops, after validate().
  Response create_process(const WriteOp::Create& a);
  Response alloc_core(const WriteOp::Core& a);
  Response release_core(const WriteOp::Core& a);
  Response exit_process(const WriteOp::Exit& a);
  std::vector<uint32_t> cores_of(uint64_t pid) const;

  uint32_t nodes_;
  uint32_t cores_per_node_;
  uint64_t next_pid_ = 1;
  uint64_t exited_ = 0;
  std::map<uint64_t, ProcessInfo> processes_;  // ordered: List and digest walk it by pid
  std::vector<uint64_t> owner_;                // core -> pid, 0 = free
  std::vector<uint32_t> free_per_node_;        // free cores on each node
  std::vector<bool> pie_slots_;                // kMaxProcesses slots: which a live PIE holds
};
static_assert(nr::Dispatch<ProcessTable>);

}  // namespace nrx::proc
