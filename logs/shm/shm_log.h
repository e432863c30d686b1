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
// `noncoherent` mode (ShmMode::kNoncoherent; CXL 2.0-style sharing, QEMU's type-3 device, where
// a locked read-modify-write is not atomic across hosts): the log makes NO read-modify-write on
// the region (tests/logs/shm_log_test.cc counts them: zero) and every region line has one writer.
// Writers flush what they wrote (Access::flush: clwb/clflushopt + sfence), readers invalidate
// before reading another host's line (Access::invalidate: clflushopt + mfence); single-writer
// words use plain acquire/release loads and stores (aligned 8-byte accesses are single-copy
// atomic on x86). The pieces:
//  - The sequencer: the ShmLog object that create()d the region runs a sequencer thread (and,
//    while it waits for an answer itself, runs sequencer passes inline). It alone writes the
//    SequencerLine (tail, active mask, ever-registered mask) and the response lines. Each
//    replica owns a RequestLine (seq, count, cancel) and reads its ResponseLine; the sequencer
//    polls the request lines round-robin and grants index ranges in that order, only while
//    tail + n <= head + slot_count, where head = min ltail of the active replicas (the sequencer
//    alone grants, so no GC lock is needed). It publishes the new tail before the grant. An
//    appender that waits applies its own entries and calls the lagging hook while the log is
//    full, and after full_timeout withdraws the request (cancel_seq) and fails with
//    kDeadlineExceeded once the sequencer confirms (or the sequencer granted meanwhile: then
//    the append completes). A dead or stopped sequencer (stop_sequencer(), or the creator gone)
//    makes appends, registrations and payload_puts fail with kDeadlineExceeded after at most
//    2 x full_timeout (the request, then its withdrawal, each wait bounded); nothing hangs.
//  - ltail, ctail: each replica's ltail and its ctail proposal |started| (raised before applying)
//    sit on its own LtailLine; ctail() = max |started| over every replica id ever registered.
//  - Membership: each ShmLog object owns a client mailbox (creator: client 0; an attacher names
//    its slot in ShmAttachOptions::client, unique per attacher: the controller/host id). Joins
//    and leaves are requests the sequencer arbitrates: it picks the lowest free id, the start
//    index (head), and an incarnation; the joiner writes its own LtailLine (ltail = start, then
//    the incarnation), and until that line shows the incarnation the sequencer counts the
//    replica at its start. Two attachers must never share a client slot (undetectable without
//    an atomic; documented, as host ids are on a CXL fabric).
//  - Payloads: the sequencer grants a free payload slot (and its next generation) through the
//    client mailbox; the grantee alone writes the slot's bytes and metadata (holders = active
//    replicas). Each replica releases by writing the generation into its own release mark for
//    the slot (DESIGN 3.3: one "applied" mark per replica); a payload is freed when every holder's
//    mark equals its generation, which the sequencer checks before granting the slot again.
//  - Entries: slots between a grant and their reuse are written only by the grantee; alive
//    marker last, each flushed.
// Residual risks (documented, for the fencing work): a client or appender whose host dies between
// a grant and its use leaks a payload slot or leaves reserved indices unpublished (readers wait,
// as in coherent mode, until the cluster fences it); a sequencer that stalls for more than
// full_timeout between reading a request and granting it may grant one its appender withdrew.
//
// Everything read from the region is checked before use: attach() validates the header (magic,
// version, checksum, geometry, offsets against the geometry, region size, mode, cluster); an
// entry's writer and length are bounds-checked before a visitor sees it (a corrupt entry makes
// exec return kDataLoss); a PayloadRef is bounds-checked before its slot is touched.
//
// The atomic type is a template parameter (STYLE.md): every atomic access to the region goes
// through Access (logs/shm/shm_access.h). ShmLog is BasicShmLog<CoherentAccess> and serves both
// modes (the mode is in the header, chosen at create()); tests count read-modify-writes with a
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
#include <thread>

#include "base/mutex.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "logs/log.h"
#include "logs/shm/shm_access.h"
#include "logs/shm/shm_layout.h"

namespace nrx::logs {

using shm::ShmMode;

// What create() needs beyond LogOptions.
struct ShmOptions {
  // kNoncoherent: this object becomes client 0 and runs the sequencer thread (see above).
  ShmMode mode = ShmMode::kCoherent;
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
  // The mode the caller expects; a region in the other mode is kInvalidArgument.
  ShmMode mode = ShmMode::kCoherent;
  // Noncoherent mode: this object's client slot, 1..shm::kMaxClients-1 (0 is the creator), unique
  // among the objects sharing the region (e.g. the host or process index). Ignored when coherent.
  uint32_t client = 0;
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
  // 128 bytes; an unknown mode). In noncoherent mode it starts the sequencer thread.
  static Result<std::unique_ptr<BasicShmLog>> create(std::span<std::byte> region, LogOptions options,
                                                     ShmOptions shm);
  // Opens the log another process created in |region| (the same bytes, mapped here).
  // Errors: as shm::check_header (kInvalidArgument: no log, wrong version, region too small,
  // another cluster/epoch; kDataLoss: a corrupt header), and kInvalidArgument for a region not
  // aligned to 128 bytes, a region in another mode than options.mode, or (noncoherent) a client
  // slot outside 1..shm::kMaxClients-1.
  static Result<std::unique_ptr<BasicShmLog>> attach(std::span<std::byte> region, ShmAttachOptions options);
  // Bytes a region needs for |options| and |shm|; 0 when they are invalid (create() says why).
  static uint64_t region_bytes(const LogOptions& options, const ShmOptions& shm);

  // Stops this object's sequencer (if any) first.
  ~BasicShmLog() override;
  BasicShmLog(const BasicShmLog&) = delete;
  BasicShmLog& operator=(const BasicShmLog&) = delete;

  const LogOptions& options() const override { return options_; }
  // Claims the lowest free replica id in the region, visible to every sharer; it starts at head.
  // Errors: kResourceExhausted (max_replicas registered), kUnavailable (the GC lock stayed held
  // past full_timeout: its holder died inside it), kDeadlineExceeded (noncoherent: the sequencer
  // did not answer within full_timeout), kDataLoss (noncoherent: a malformed answer).
  Result<ReplicaId> register_replica() override;
  // |replica| (registered through this object) leaves: it drops out of the GC minimum, releases
  // the payloads it still holds, and its id becomes free. Not concurrent with this replica's own
  // append/exec, nor with payload_put (a put racing with the leave may keep its bit set).
  // Errors: kNotFound (not registered through this object), kUnavailable (as register_replica),
  // kDeadlineExceeded (noncoherent: the sequencer did not answer; the replica stays registered).
  Status deregister_replica(ReplicaId replica);
  // Errors: as Log; kDeadlineExceeded also when (noncoherent) the sequencer does not answer.
  Result<LogIndex> append(ReplicaId replica, Batch batch, EntryVisitor apply_own) override;
  // Errors: as Log, and kDataLoss for an entry that fails its bounds check or a slot overwritten
  // before this replica read it (a corrupt region); ltail then points at that entry.
  Result<LogIndex> exec(ReplicaId replica, EntryVisitor visitor) override;
  Result<LogIndex> exec_while(ReplicaId replica, StoppingVisitor visitor) override;
  LogIndex tail() const override {
    uint64_t& word = noncoherent() ? sequencer_line().tail : control().tail.value;
    refresh(&word, sizeof(word));
    // acquire: a tail that covers an index is read before that index's slot.
    return Access::load(word, std::memory_order_acquire);
  }
  LogIndex ctail() const override;
  LogIndex head() const override;
  Result<LogIndex> ltail(ReplicaId replica) const override;
  // Inline: every NR read calls it; through a ShmLog& (final) it binds statically.
  bool is_synced_for_reads(ReplicaId replica, LogIndex ctail) const override {
    if (!active(replica)) return false;
    refresh(&ltail_line(replica).value, sizeof(uint64_t));
    // acquire: the index we compare is at least as new as the replica state we will read next.
    return Access::load(ltail_line(replica).value, std::memory_order_acquire) >= ctail;
  }
  // Errors: as Log; kResourceExhausted also for data longer than one payload slot.
  Result<PayloadRef> payload_put(std::span<const std::byte> data) override;
  Result<std::span<const std::byte>> payload_get(PayloadRef ref) const override;
  Status payload_release(ReplicaId replica, PayloadRef ref) override;
  uint64_t payloads_live() const override;

  // The region's identity and geometry.
  uint64_t cluster_id() const { return cluster_id_; }
  uint64_t epoch() const { return epoch_; }
  const shm::Geometry& geometry() const { return geo_; }
  size_t slot_stride() const { return geo_.slot_stride; }
  ShmMode mode() const { return mode_; }
  // Noncoherent mode: this object's client slot (0 for the creator).
  uint32_t client() const { return client_; }
  // Bit r set while replica r is registered (by any sharer).
  uint64_t active_replicas() const {
    uint64_t& word = noncoherent() ? sequencer_line().active : control().membership.active;
    refresh(&word, sizeof(word));
    // acquire: pairs with the release that added a replica (coherent: after setting its ltail).
    return Access::load(word, std::memory_order_acquire);
  }
  // Noncoherent mode: true while this object runs the log's sequencer (only the creator does).
  bool sequencer_running() const { return sequencer_ != nullptr && !sequencer_stop_.load(std::memory_order_acquire); }
  // Noncoherent mode, creator only: stops the sequencer for good, as if its host had died (tests
  // the bounded waits: every sharer's appends then fail with kDeadlineExceeded). No-op otherwise.
  void stop_sequencer();

 private:
  struct Sequencer;  // the sequencer's private state (shm_log_impl.h)

  BasicShmLog(std::byte* base, const shm::Geometry& geo, LogOptions options, uint64_t cluster_id, uint64_t epoch,
              ShmMode mode, uint32_t client, std::shared_ptr<void> keep_alive);

  bool noncoherent() const { return mode_ == ShmMode::kNoncoherent; }
  // Noncoherent mode only: write back what this host wrote / drop this host's copy before reading.
  void publish(const void* p, size_t n) const {
    if (noncoherent()) Access::flush(p, n);
  }
  void refresh(const void* p, size_t n) const {
    if (noncoherent()) Access::invalidate(p, n);
  }

  shm::ControlBlock& control() const { return *reinterpret_cast<shm::ControlBlock*>(base_ + geo_.control_offset); }
  shm::LtailLine& ltail_line(ReplicaId r) const {
    return reinterpret_cast<shm::LtailLine*>(base_ + geo_.ltails_offset)[r];
  }
  shm::SequencerLine& sequencer_line() const {
    return *reinterpret_cast<shm::SequencerLine*>(base_ + geo_.sequencer_offset);
  }
  shm::RequestLine& request_line(ReplicaId r) const {
    return reinterpret_cast<shm::RequestLine*>(base_ + geo_.requests_offset)[r];
  }
  shm::ResponseLine& response_line(ReplicaId r) const {
    return reinterpret_cast<shm::ResponseLine*>(base_ + geo_.responses_offset)[r];
  }
  shm::ClientRequestLine& client_request_line(uint32_t c) const {
    return reinterpret_cast<shm::ClientRequestLine*>(base_ + geo_.client_requests_offset)[c];
  }
  shm::ClientResponseLine& client_response_line(uint32_t c) const {
    return reinterpret_cast<shm::ClientResponseLine*>(base_ + geo_.client_responses_offset)[c];
  }
  // Replica r's release mark for payload slot |where| (noncoherent; written only by r's owner).
  uint64_t& release_mark(ReplicaId r, uint64_t where) const {
    return reinterpret_cast<uint64_t*>(base_ + geo_.releases_offset + r * geo_.release_stride)[where];
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

  // ---- Noncoherent mode (no read-modify-write on the region) ----
  struct ClientAnswer {
    uint64_t status;
    uint64_t value[3];
  };
  // One request through this object's client mailbox, answered by the sequencer.
  // Errors: kDeadlineExceeded (no answer within full_timeout).
  Result<ClientAnswer> client_call(uint64_t kind, uint64_t arg) NRX_EXCLUDES(client_mu_);
  Result<ReplicaId> register_noncoherent();
  Status deregister_noncoherent(ReplicaId replica);
  // Reserves |n| indices through the sequencer (see the header comment).
  Result<LogIndex> reserve_noncoherent(ReplicaId replica, uint64_t n, EntryVisitor apply_own);
  Result<PayloadRef> payload_put_noncoherent(std::span<const std::byte> data, uint64_t holders);
  // Every replica in |holders| has released generation |generation| of payload slot |where|.
  bool released_by_all(uint64_t where, uint32_t generation, uint64_t holders) const;
  // Runs one sequencer pass here if this object owns the sequencer and nobody else is in one.
  void try_sequencer_pass();
  void sequencer_main();
  // One pass over the client and request lines; true when it answered something.
  bool sequencer_pass_locked(Sequencer& s) NRX_REQUIRES(s.mu);
  // min ltail over the active replicas as the sequencer knows them (tail if none).
  LogIndex sequencer_head_locked(Sequencer& s) NRX_REQUIRES(s.mu);

  std::byte* const base_;
  const shm::Geometry geo_;
  const uint64_t mask_;
  const unsigned lap_shift_;
  LogOptions options_;
  const uint64_t cluster_id_;
  const uint64_t epoch_;
  const uint64_t pid_;
  const ShmMode mode_;
  const uint32_t client_;           // noncoherent: this object's client slot
  std::atomic<uint64_t> owned_{0};  // replica ids registered through this object
  // Noncoherent: the last request number per owned replica (only its combiner touches an entry).
  std::unique_ptr<uint64_t[]> request_seq_;
  Mutex client_mu_;                                    // one client request at a time
  uint64_t client_seq_ NRX_GUARDED_BY(client_mu_) = 0;  // the last client request number
  std::unique_ptr<Sequencer> sequencer_;              // noncoherent creator only
  std::atomic<bool> sequencer_stop_{false};
  std::thread sequencer_thread_;
  std::shared_ptr<void> keep_alive_;
};

extern template class BasicShmLog<CoherentAccess>;

// The coherent shared-memory log.
using ShmLog = BasicShmLog<CoherentAccess>;

}  // namespace nrx::logs
