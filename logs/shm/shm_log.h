// nrx::logs::ShmLog: the shared-memory (emulated CXL) backend of the Log contract (logs/log.h,
// DESIGN.md 3.4). One log lives entirely inside one caller-provided region (a memfd or /dev/shm
// file mapped MAP_SHARED by several processes; later a DAX device or ivshmem BAR shared by VMs),
// laid out as logs/shm/shm_layout.h says, at offsets, never pointers: every process that maps the
// region and attach()es shares ONE log.
//
// Algorithm: the ring's (logs/ring/ring_log.h), unchanged, in `coherent` mode: one atomic step
// on the shared tail reserves a batch; entries are published with per-lap alive markers
// (release); ltail per replica; ctail raised before applying; head = min ltail of the active
// replicas, cached on its own line and raised only when the log looks full. Two additions for
// sharers that are processes, not threads:
//  - Membership lives in the region: an |active| bitmask (a replica id is a bit) guarded by a
//    GC lock word. Joining (register_replica) and raising the cached head both take that lock,
//    so a head value that allows a reservation was computed with every replica that had joined:
//    a replica joining at head (the ring's rule) never finds its first slot already reused. The
//    lock is only touched when the log is full, or to join/leave; an append that cannot take it
//    keeps the old head (and waits, bounded by full_timeout). The lock word holds the owner's
//    pid, so the fencing work can break it for a dead owner; until then a process dying inside
//    that few-instruction section stalls appends until their full_timeout.
//  - A replica id belongs to the ShmLog object (so the process) that registered it: append,
//    exec, exec_while and payload_release accept only ids registered through this object
//    (kNotFound otherwise); ltail, head and is_synced_for_reads see every process's replicas.
// Payloads live in a fixed-size-slot arena in the region (DESIGN 3.3): a put claims a free slot
// with one CAS, copies the bytes, and sets the pending mask to the active replicas; each release
// clears its bit, the last frees the slot and bumps its generation.
//
// Everything read from the region is checked before use: attach() validates the header (magic,
// version, checksum, geometry, offsets against the geometry, region size, mode, cluster); an
// entry's writer and length are bounds-checked before a visitor sees it (a corrupt entry makes
// exec return kDataLoss); a PayloadRef is bounds-checked before its slot is touched.
//
// The atomic type is a template parameter (STYLE.md): every atomic access to the region goes
// through Access (logs/shm/shm_access.h). ShmLog is BasicShmLog<CoherentAccess>; the noncoherent
// mode will be another policy plus the sequencer, and tests count read-modify-writes with a
// counting policy.
//
// Per-process state (the lagging-replica hook, full_timeout) is not in the region; what must
// match between sharers (entry_size, slot_count, max_replicas, payload geometry, log_id) comes
// from the header on attach. A process that exits leaves its replicas registered (as a crashed
// machine would) until deregister_replica or, later, fencing.
//
// Thread safety: as Log. create/attach/destruction are set-up steps. The region must stay mapped
// while the log exists (ShmOptions::keep_alive can own the mapping).
//
//   std::span<std::byte> region = map_shared(ShmLog::region_bytes(opts, shm));   // your mmap
//   auto log = nrx::logs::ShmLog::create(region, opts, {.cluster_id = 7}).value();
//   // in another process, over the same file:
//   auto peer = nrx::logs::ShmLog::attach(region2, {.cluster_id = 7}).value();
//   nrx::logs::ReplicaId r = peer->register_replica().value();
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "base/status.h"
#include "logs/log.h"
#include "logs/shm/shm_access.h"
#include "logs/shm/shm_layout.h"

namespace nrx::logs {

using shm::ShmMode;

// What create() needs beyond LogOptions.
struct ShmOptions {
  ShmMode mode = ShmMode::kCoherent;  // kNoncoherent: kUnavailable for now
  uint64_t cluster_id = 0;            // attach() must name the same cluster
  // Size of the payload arena; split into LogOptions::payload_slots equal slots, each rounded down
  // to a cache line (a payload may be at most one slot long).
  uint64_t payload_bytes = uint64_t{4} << 20;
  // The region's epoch (this creation). 0: derived from CLOCK_REALTIME, so re-creating a region
  // gives it a new epoch that holders of the old log can tell apart.
  uint64_t epoch = 0;
  // Kept alive as long as the log (e.g. the object that owns the mapping). May be empty.
  std::shared_ptr<void> keep_alive{};
};

// What attach() needs: the expected identity, and the per-process options.
struct ShmAttachOptions {
  uint64_t cluster_id = 0;      // must equal the header's
  uint64_t expected_epoch = 0;  // 0: any epoch
  std::chrono::nanoseconds full_timeout = std::chrono::seconds(10);  // as LogOptions
  LaggingReplicaHook on_lagging{};                                   // as LogOptions
  std::shared_ptr<void> keep_alive{};                                // as ShmOptions
};

template <typename Access>
class BasicShmLog final : public Log {
 public:
  // Lays out a new log in |region| (zeroing its control, slot and payload metadata sections) and
  // publishes the header last. Never call it on a region other processes are using.
  // Errors: kInvalidArgument (a geometry outside LogOptions' ranges; an arena too small for
  // payload_slots slots of a cache line; a region smaller than region_bytes() or not aligned to
  // 128 bytes), kUnavailable (noncoherent mode: comes later).
  static Result<std::unique_ptr<BasicShmLog>> create(std::span<std::byte> region, LogOptions options,
                                                     ShmOptions shm);
  // Opens the log another process created in |region| (the same bytes, mapped here).
  // Errors: as shm::check_header (kInvalidArgument: no log, wrong version, region too small,
  // another cluster/epoch; kDataLoss: a corrupt header), and kInvalidArgument for a region not
  // aligned to 128 bytes.
  static Result<std::unique_ptr<BasicShmLog>> attach(std::span<std::byte> region, ShmAttachOptions options);
  // Bytes a region needs for |options| and |shm|; 0 when they are invalid (create() says why).
  static uint64_t region_bytes(const LogOptions& options, const ShmOptions& shm);

  ~BasicShmLog() override = default;
  BasicShmLog(const BasicShmLog&) = delete;
  BasicShmLog& operator=(const BasicShmLog&) = delete;

  const LogOptions& options() const override { return options_; }
  // Claims the lowest free replica id in the region, visible to every sharer; it starts at head.
  // Errors: kResourceExhausted (max_replicas registered), kUnavailable (the GC lock stayed held
  // past full_timeout: its holder died inside it).
  Result<ReplicaId> register_replica() override;
  // |replica| (registered through this object) leaves: it drops out of the GC minimum, releases
  // the payloads it still holds, and its id becomes free. Not concurrent with this replica's own
  // append/exec, nor with payload_put (a put racing with the leave may keep its bit set).
  // Errors: kNotFound (not registered through this object), kUnavailable (as register_replica).
  Status deregister_replica(ReplicaId replica);
  Result<LogIndex> append(ReplicaId replica, Batch batch, EntryVisitor apply_own) override;
  // Errors: as Log, and kDataLoss for an entry that fails its bounds check or a slot overwritten
  // before this replica read it (a corrupt region); ltail then points at that entry.
  Result<LogIndex> exec(ReplicaId replica, EntryVisitor visitor) override;
  Result<LogIndex> exec_while(ReplicaId replica, StoppingVisitor visitor) override;
  LogIndex tail() const override {
    // acquire: a tail that covers an index is read before that index's slot.
    return Access::load(control().tail.value, std::memory_order_acquire);
  }
  LogIndex ctail() const override {
    // acquire: whoever raised ctail did so before producing the effects a reader then syncs past.
    return Access::load(control().ctail.value, std::memory_order_acquire);
  }
  LogIndex head() const override;
  Result<LogIndex> ltail(ReplicaId replica) const override;
  // Inline: every NR read calls it; through a ShmLog& (final) it binds statically.
  bool is_synced_for_reads(ReplicaId replica, LogIndex ctail) const override {
    // acquire: the index we compare is at least as new as the replica state we will read next.
    return active(replica) && Access::load(ltail_line(replica).value, std::memory_order_acquire) >= ctail;
  }
  // Errors: as Log; kResourceExhausted also for data longer than one payload slot.
  Result<PayloadRef> payload_put(std::span<const std::byte> data) override;
  Result<std::span<const std::byte>> payload_get(PayloadRef ref) const override;
  Status payload_release(ReplicaId replica, PayloadRef ref) override;
  uint64_t payloads_live() const override {
    return Access::load(control().payloads.live, std::memory_order_relaxed);
  }

  // The region's identity and geometry.
  uint64_t cluster_id() const { return cluster_id_; }
  uint64_t epoch() const { return epoch_; }
  const shm::Geometry& geometry() const { return geo_; }
  size_t slot_stride() const { return geo_.slot_stride; }
  // Bit r set while replica r is registered (by any sharer).
  uint64_t active_replicas() const {
    // acquire: pairs with the release that added a replica after setting its ltail.
    return Access::load(control().membership.active, std::memory_order_acquire);
  }

 private:
  BasicShmLog(std::byte* base, const shm::Geometry& geo, LogOptions options, uint64_t cluster_id, uint64_t epoch,
              std::shared_ptr<void> keep_alive);

  shm::ControlBlock& control() const { return *reinterpret_cast<shm::ControlBlock*>(base_ + geo_.control_offset); }
  shm::IndexLine& ltail_line(ReplicaId r) const {
    return reinterpret_cast<shm::IndexLine*>(base_ + geo_.ltails_offset)[r];
  }
  shm::ReplicaLine& replica_line(ReplicaId r) const {
    return reinterpret_cast<shm::ReplicaLine*>(base_ + geo_.replicas_offset)[r];
  }
  shm::SlotHeader* slot(LogIndex index) const {
    return reinterpret_cast<shm::SlotHeader*>(base_ + geo_.slots_offset + (index & mask_) * geo_.slot_stride);
  }
  shm::PayloadMeta& payload_meta(uint64_t where) const {
    return reinterpret_cast<shm::PayloadMeta*>(base_ + geo_.payload_meta_offset)[where];
  }
  std::byte* payload_bytes(uint64_t where) const {
    return base_ + geo_.payload_data_offset + where * geo_.payload_slot_bytes;
  }
  // Registered (by anyone) per the region's membership mask.
  bool active(ReplicaId replica) const {
    return replica < geo_.max_replicas && ((active_replicas() >> replica) & 1) != 0;
  }
  // Registered through this object (so append/exec/release may use it).
  bool owned(ReplicaId replica) const {
    return replica < geo_.max_replicas && ((owned_.load(std::memory_order_acquire) >> replica) & 1) != 0;
  }
  Status not_owned(ReplicaId replica) const;

  // The GC lock (shm::MembershipLine): try_lock never waits; lock waits up to full_timeout.
  bool try_lock_gc();
  Status lock_gc();
  void unlock_gc();
  // Lowest ltail over active replicas (tail if none), and the replica holding it.
  LogIndex min_ltail(ReplicaId* laggard) const;
  // A head value that may authorise a reservation: recomputed and published under the GC lock
  // when it is free, else the cached one. |laggard| is always filled (a hint for the hook).
  LogIndex refresh_head(ReplicaId* laggard);
  // Applies this replica's entries [ltail, to) (see RingLog::apply_until); kDataLoss for a corrupt
  // entry, with ltail left at it.
  template <typename Visitor>
  Result<LogIndex> apply_until(ReplicaId replica, LogIndex to, Visitor& visitor);
  // Clears |bit| from payload |where| of generation |generation|; frees it on the last release.
  Status release_payload(uint64_t where, uint32_t generation, uint64_t bit);

  std::byte* const base_;
  const shm::Geometry geo_;
  const uint64_t mask_;
  const unsigned lap_shift_;
  LogOptions options_;
  const uint64_t cluster_id_;
  const uint64_t epoch_;
  const uint64_t pid_;
  std::atomic<uint64_t> owned_{0};  // replica ids registered through this object
  std::shared_ptr<void> keep_alive_;
};

extern template class BasicShmLog<CoherentAccess>;

// The coherent shared-memory log.
using ShmLog = BasicShmLog<CoherentAccess>;

}  // namespace nrx::logs
