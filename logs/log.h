// nrx::logs::Log: the shared operation log of node replication, as one byte-level interface that
// every backend implements (ring: local NUMA memory; shm: CXL-style shared memory; rdma:
// libibverbs). DESIGN.md section 3 is the contract; tests/logs/log_conformance.h checks it, once
// per backend.
//
// Algorithm (NR, Calciu et al. ASPLOS'17; NrOS's `nr` crate): a circular buffer of fixed-size
// slots; logical indices grow forever and slot = index mod slot_count. An appender reserves n
// consecutive indices with one atomic step on the tail, writes its entries and publishes each with
// a per-lap alive marker, so readers never see a half-written entry or last lap's entry. Each
// replica applies entries in index order from its local tail (ltail); ctail is the highest ltail
// (what a read must be synced to); head is the lowest ltail of registered replicas, and a slot is
// reused only after every replica has applied it. ctail is raised when a replica *starts* applying
// up to an index, before any effect of those entries can be observed.
//
// Invariants: head <= ltail(r) <= ctail <= tail for every registered r; tail - head <= slot_count
// once no append is waiting for room. (rdma reserves with a FETCH_AND_ADD before it knows there is
// room, so while appenders wait the tail may run ahead of head + slot_count by their batches;
// nothing is written to a slot before every replica has applied its previous lap.)
//
// Thread safety: append, exec and the accessors are safe to call concurrently, with one rule that
// NR's combiner lock provides: calls of append/exec for the SAME replica id are never concurrent
// (one combiner per replica). register_replica is a set-up step: not concurrent with append.
// The lagging-replica hook runs on the appending thread, with the appender's combiner held.
//
//   auto log = nrx::logs::RingLog::create({.entry_size = 32, .slot_count = 1024});
//   nrx::logs::ReplicaId r = (*log)->register_replica().value();
//   std::array<std::byte, 8> op{};
//   std::span<const std::byte> batch[] = {op};
//   (void)(*log)->append(r, batch, [](const nrx::logs::Entry&) {});
//   (void)(*log)->exec(r, [](const nrx::logs::Entry& e) { /* apply e.data */ });
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <type_traits>

#include "base/function_ref.h"
#include "base/status.h"

namespace nrx::logs {

using ReplicaId = uint32_t;  // dense, 0 .. max_replicas-1, handed out by register_replica
using LogIndex = uint64_t;   // logical position; never wraps in practice (2^64 entries)

// Every backend admits at least this many replicas (one per NUMA node per machine).
inline constexpr uint32_t kMinMaxReplicas = 16;
// Ring and shm track payload releases in a 64-bit mask, one bit per replica.
inline constexpr uint32_t kMaxReplicasLimit = 64;

// Where a backend places its memory on a NUMA machine (ring: the slots; shm/rdma ignore it).
inline constexpr int kNumaLocal = -1;       // the calling thread's node
inline constexpr int kNumaInterleave = -2;  // pages interleaved over all nodes

// Called with (log id, replica id) when an append finds the log full because |replica| has not
// applied old entries. The kernel nudges that replica (DESIGN 2). Called repeatedly while full.
using LaggingReplicaHook = std::function<void(uint32_t log_id, ReplicaId replica)>;

struct LogOptions {
  uint32_t log_id = 0;           // names this log in hook calls and errors (CNR has several)
  uint32_t entry_size = 64;      // largest entry in bytes (an op); 1..4096
  uint32_t slot_count = 1u << 14;  // power of two, >= 2
  uint32_t max_replicas = kMinMaxReplicas;  // 1..kMaxReplicasLimit
  // How long an append may wait for a full log before failing with kDeadlineExceeded.
  // Zero waits without bound (the hook keeps being called).
  std::chrono::nanoseconds full_timeout = std::chrono::seconds(10);
  int numa_node = kNumaLocal;    // ring: node for the slots, or kNumaLocal / kNumaInterleave
  uint32_t payload_slots = 1024;   // payloads that may be live at once
  LaggingReplicaHook on_lagging{};  // may be empty
};

// One published entry, as a visitor sees it. |data| points into the log and is valid only during
// the visitor call; it has exactly the length the writer appended (bounds-checked by the log).
struct Entry {
  LogIndex index;
  ReplicaId writer;
  std::span<const std::byte> data;
};

using EntryVisitor = FunctionRef<void(const Entry&)>;
// Returns false to stop before an entry: it is not applied and stays the replica's next entry.
using StoppingVisitor = FunctionRef<bool(const Entry&)>;
using Batch = std::span<const std::span<const std::byte>>;

// Bulk data that travels beside an op (DESIGN 3.3): the op holds this reference, never a pointer.
// Ring: |where| is a slot in the payload table and |generation| tells reuses apart.
struct PayloadRef {
  uint64_t where;
  uint32_t length;
  uint32_t generation;
};
static_assert(std::is_trivially_copyable_v<PayloadRef>);
static_assert(sizeof(PayloadRef) == 16);

class Log {
 public:
  virtual ~Log() = default;

  virtual const LogOptions& options() const = 0;

  // Admits a new replica and returns its id. Its ltail starts at the log's head; if head > 0 the
  // caller must install a state snapshot taken at head before applying (state transfer).
  // Errors: kResourceExhausted when max_replicas replicas are registered.
  virtual Result<ReplicaId> register_replica() = 0;

  // Reserves |batch.size()| consecutive indices in one atomic step, writes the entries and
  // publishes them; returns the index of the first. Only while the log is full does it apply this
  // replica's pending entries through |apply_own| (the caller holds its replica's combiner), call
  // the lagging hook for the replica that holds back the head, and wait. There is no slack: a log
  // holds slot_count unapplied entries.
  // Errors: kInvalidArgument (empty batch, more entries than slots, an entry empty or longer than
  // entry_size); kNotFound (|replica| not registered); kDeadlineExceeded (full beyond
  // full_timeout: nothing was appended).
  virtual Result<LogIndex> append(ReplicaId replica, Batch batch, EntryVisitor apply_own) = 0;

  // Applies, in index order, every entry from ltail(replica) up to the tail observed at the call,
  // waiting for entries that are reserved but not yet published; raises ctail to that tail first
  // and advances ltail after. Returns the new ltail. Errors: kNotFound (|replica| not registered).
  // The wait for an unpublished entry has no timeout: in one process an appender publishes right
  // after reserving; across machines the cluster fences a dead appender by filling its slots with
  // no-op entries (DESIGN 5), which ends the wait.
  virtual Result<LogIndex> exec(ReplicaId replica, EntryVisitor visitor) = 0;

  // Like exec, but stops before the first entry for which |visitor| returns false; ltail then
  // points at that entry (CNR stops at a scan until every log has reached it).
  // Errors: kNotFound (|replica| not registered).
  virtual Result<LogIndex> exec_while(ReplicaId replica, StoppingVisitor visitor) = 0;

  virtual LogIndex tail() const = 0;   // next index to reserve
  // The highest index any replica has started applying up to (raised before the entries are
  // applied, so an effect seen anywhere is below it); >= every ltail. A read syncs to this.
  virtual LogIndex ctail() const = 0;
  virtual LogIndex head() const = 0;   // lowest ltail of the registered replicas
  // Errors: kNotFound (|replica| not registered).
  virtual Result<LogIndex> ltail(ReplicaId replica) const = 0;
  // True when |replica| has applied everything up to |ctail| (ltail >= ctail).
  virtual bool is_synced_for_reads(ReplicaId replica, LogIndex ctail) const = 0;

  // Copies |data| into the payload area; the reference stays valid until every replica
  // registered now has released it once (a replica registered later does not hold it).
  // Errors: kInvalidArgument (empty), kFailedPrecondition (no replica registered),
  // kResourceExhausted (no free payload slot or memory).
  virtual Result<PayloadRef> payload_put(std::span<const std::byte> data) = 0;
  // The bytes behind |ref|, valid until |replica| releases it. Errors: kNotFound (stale or bad ref).
  virtual Result<std::span<const std::byte>> payload_get(PayloadRef ref) const = 0;
  // |replica| is done with |ref|; the last release frees it. Errors: kNotFound (stale or bad ref,
  // or unregistered replica), kFailedPrecondition (|replica| already released it, or did not hold
  // it). Each holder releases exactly once: a second release racing with the free and reuse of
  // the same slot is outside the contract (ring then cannot tell the old payload from the new).
  virtual Status payload_release(ReplicaId replica, PayloadRef ref) = 0;
  // Payloads allocated and not yet released by everyone (for tests and statistics).
  virtual uint64_t payloads_live() const = 0;
};

}  // namespace nrx::logs
