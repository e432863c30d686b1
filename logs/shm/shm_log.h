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
//    pid and host tag, so a process on the same host breaks it once that pid is gone (see
//    "Crash fencing"); a holder on another host that dies inside it still stalls joins until
//    their full_timeout (nothing there tells a dead holder from a slow one).
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
//    alone grants, so no GC lock is needed). It writes each grant before the tail covering it
//    (an appender that got its grant waits for that tail before returning). An appender that
//    waits applies its own entries (up to a tail read before it found itself unanswered) and,
//    with its request withdrawn and the withdrawal confirmed, calls the lagging hook while the
//    log is full (the hook may exec another replica up to the current tail, which must never
//    cover a grant the appender would publish only after the hook returns), then asks again;
//    after full_timeout it withdraws the request (cancel_seq) for good and fails with
//    kDeadlineExceeded once the sequencer confirms (or the sequencer granted meanwhile: then
//    the append completes). A dead or stopped sequencer (stop_sequencer(), or the creator gone)
//    makes appends, registrations and payload_puts fail with kDeadlineExceeded after at most
//    3 x full_timeout (the request, then its withdrawal, each wait bounded; a withdrawal for the
//    hook may wait twice), or with kUnavailable
//    as soon as its process is seen gone from this host (see "Crash fencing, noncoherent mode");
//    nothing hangs.
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
//    mark equals its generation (a fenced holder counts as released), which the sequencer checks
//    before granting the slot again.
//  - Entries: slots between a grant and their reuse are written only by the grantee (or, for a
//    fenced grantee's holes, by the sequencer: see the publish handshake); alive marker last,
//    each flushed.
// Residual risks: a client whose host dies between a payload grant and its use leaks that
// payload slot; a sequencer that stalls for more than full_timeout between reading a request and
// granting it may grant one its appender withdrew. Replicas whose owner dies are fenced by the
// sequencer ("Crash fencing, noncoherent mode" below); the sequencer's own death is not survived.
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
// Crash fencing (coherent mode; DESIGN 5 on one region). A process that dies leaves its replicas
// registered and may leave indices it reserved unpublished; fencing removes both obstacles:
//  - Liveness: each registered replica's ReplicaLine has a |heartbeat| word its owner changes (a
//    plain load + store, no read-modify-write) on every append, exec, exec_while and
//    payload_release, while it waits in those, and in heartbeat(). THE RULE: an owner whose
//    replica may sit idle calls heartbeat() at least every lease / 2 (the kernel's idle loop),
//    or it is fenced once the lease runs out. The lease (ShmOptions/ShmAttachOptions::lease) is
//    per process and measured with the FENCER's steady clock ("unchanged for lease since I first
//    saw this value"), so hosts need no common clock; the first look only starts the timer.
//  - Death on one host: a replica whose owner shares our host tag (boot id + pid namespace,
//    ReplicaLine::host) and whose pid is gone (kill(pid, 0) == ESRCH, or a zombie) is dead at
//    once. The same test breaks a GC lock whose holder (pid and host tag in the lock word) died.
//  - fence_dead(lease) fences every dead replica not owned by this object: under the GC lock its
//    active bit is cleared (it leaves the GC minimum), its state becomes kFenced and its
//    incarnation is bumped; then the payloads it held are released for it, and every index in
//    its recorded reservation [reserve_first, +count) that is below the tail, unpublished, and
//    covered by no live replica's reservation record is filled with a no-op (alive = lap |
//    kAliveNoop, by CAS; exec skips it). An appender records its reservation BEFORE its CAS on the
//    tail, so the owner of every reserved index is known: a live owner (it publishes) or a fenced
//    one (no-op). The id becomes free (kFree) once no slot of its reservation is left pending.
//    append's full-log wait and exec's wait for an unpublished entry call it themselves (every
//    lease / 8), so a survivor resumes within about a lease of the death.
//  - A zombie (fenced, then woke up) cannot write: every operation of a fenced replica returns
//    kFailedPrecondition ("fenced"); a publish is a CAS that fails once a no-op is there; an
//    appender that finds itself fenced right after reserving fills its own range with no-ops;
//    the ltail store is a CAS, so it never lands on a re-registered id. Residual risk (no
//    hardware write protection on shared memory): a zombie stalled between its checks and its
//    memcpy for a whole lap of the log can scribble over the entry bytes of a reused slot; and a
//    zombie that wakes, reserves after the fencer resolved its record, then dies again before
//    its own check leaves holes.
//
// Crash fencing, noncoherent mode. There is no read-modify-write to arbitrate with, so exactly one
// party decides: the sequencer, which already knows every grant it made and its owner.
//  - Liveness as above, measured by the sequencer with the CREATOR's lease (ShmOptions::lease;
//    an attacher's lease only times the sequencer, below; the rule "heartbeat() every lease / 2"
//    is about the creator's lease): the owner changes |heartbeat| in its own ReplicaLine (the
//    whole line is the owner's here) at most once a millisecond from append, exec, exec_while
//    and their waits (a flush per operation would cost more than a lease needs), and on every
//    heartbeat(). The sequencer learns the owner's pid and host tag from the join request, so a
//    replica whose process is gone from our host is dead at once. It checks every
//    clamp(lease / 8, 1 ms, 50 ms), from its thread and from the creator's own waits;
//    fence_dead(lease) on the creator runs that check now with |lease| (on any other object it is
//    a no-op: the sequencer does it).
//  - Fencing replica r at incarnation k, all by the sequencer: r leaves |active| (the GC minimum;
//    its requests are no longer served) and enters SequencerLine::fenced (every reader of a
//    payload's holders then counts r as released: its payload holds are released for it at
//    once), the incarnation a next join gets is bumped, and ResponseLine::fenced = k (flushed).
//    A zombie (an owner still at incarnation k) reads that mark and returns kFailedPrecondition
//    ("fenced"): heartbeat(), payload_release and deregister_replica on every call, append with
//    its grant, and append, exec and exec_while on entry at most once a millisecond, with the
//    heartbeat (a fencing follows a lease of silence, so the zombie's next operation reads it).
//  - THE PUBLISH HANDSHAKE (why a slot never gets both an entry and a no-op, without a CAS). The
//    sequencer remembers each replica's last grant: request number g, indices [first, +count).
//    An appender's RequestLine::seq holds the number of its latest request until it asks again,
//    which it does only after publishing all of that request's grant, or after the sequencer
//    confirmed the request's withdrawal (no grant); it publishes grant g only if the
//    ResponseLine read that delivers g (the grant and the mark share the line) shows no fenced
//    mark. So while the sequencer reads seq == g, the owner may still be publishing g, and the
//    sequencer fills NOTHING of g; it fills the unpublished indices of g (plain release stores of
//    lap | kAliveNoop, flushed) only once one of these holds:
//     (i)   seq != g: the owner moved on, so it published g whole; a hole there has no writer
//           (only crash_in_append_for_testing's simulated crash, whose object plays dead, makes
//           one);
//     (ii)  the owner acknowledged: RequestLine::fence_ack == k, stored by an owner that read
//           the mark, after its last write to the id's lines and slots (it never publishes
//           after reading the mark);
//     (iii) the owner's pid is gone from our host (a dead process stores nothing more);
//     (iv)  one more lease has passed since the fencing: a dead owner on another host is told
//           from a stalled one by time alone (plain loads and stores cannot decide between a
//           crashed and a slow party).
//    Or every index of g is published: nothing to fill. Only (iv) can be wrong. Residual risk:
//    a zombie on another host that stalls for more than that second lease INSIDE its publish
//    window (after reading its grant, before its last alive store: a memcpy and a flush per
//    entry) publishes over a no-op, and readers that passed the no-op diverge from later ones.
//    Readers wait on an unpublished index without a timeout, as in coherent mode: a dead
//    appender's indices are decided within about a lease (pid gone: within ~50 ms; a silent
//    owner on another host: one lease, two when it died inside its publish window).
//  - The id stays fenced (not reusable; its lines keep their single writer, the zombie) until the
//    sequencer has decided its slots AND the owner can write no more: its ack, or its pid gone.
//    Then the sequencer, now the lines' only writer, stores r's release marks for every live
//    payload r still held, forgets r's unanswered request, and clears r from |fenced|. An owner
//    acknowledges from append, exec, exec_while and deregister_replica (which, for a fenced
//    replica, only forgets it locally); heartbeat() and payload_release only report "fenced". A
//    replica fenced by lease whose host never returns keeps its id until the log is re-created.
//  - Like coherent mode, a payload_put that read the membership before a fencing may list the
//    fenced id after its marks were written; the id's next owner (or its leave) releases it.
//  - The creator's death is NOT survivable: the sequencer is the only writer of the tail and the
//    membership, and no other sharer can take over without an atomic. It publishes its pid and
//    host tag and changes SequencerLine::heartbeat at least every millisecond; a sharer on the
//    same host whose waits (append, register, payload_put, and exec's wait for an unpublished
//    entry) find that pid gone fail at once with kUnavailable ("the sequencer's process died");
//    exec's wait also fails with kUnavailable once that heartbeat stayed unchanged for this
//    object's lease (another host). Appends otherwise fail with kDeadlineExceeded after at most
//    3 x full_timeout, as above. Re-create the log (a new epoch) to go on.
//
// Per-process state (the lagging-replica hook, full_timeout, lease) is not in the region; what
// must match between sharers (entry_size, slot_count, max_replicas, payload geometry, log_id)
// comes from the header on attach.
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
#include <vector>

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
  // How long another replica's heartbeat may stay unchanged before this object fences it (see
  // "Crash fencing"). Per process; > 0. Noncoherent mode: the lease of the whole log (only the
  // creator's sequencer fences).
  std::chrono::nanoseconds lease = std::chrono::seconds(2);
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
  // As ShmOptions (coherent mode). Noncoherent mode: how long the sequencer's heartbeat may stay
  // unchanged before exec's wait for an unpublished entry gives up (kUnavailable).
  std::chrono::nanoseconds lease = std::chrono::seconds(2);
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
  // Errors: as Log; kFailedPrecondition when |replica| was fenced; kDeadlineExceeded also when
  // (noncoherent) the sequencer does not answer; kUnavailable (noncoherent) when the sequencer's
  // process died (same host).
  Result<LogIndex> append(ReplicaId replica, Batch batch, EntryVisitor apply_own) override;
  // Errors: as Log, and kDataLoss for an entry that fails its bounds check or a slot overwritten
  // before this replica read it (a corrupt region); ltail then points at that entry;
  // kFailedPrecondition when |replica| was fenced; kUnavailable (noncoherent) while waiting for an
  // unpublished entry when the sequencer's process died or its heartbeat stopped for the lease.
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
  // the bounded waits: other sharers' appends then fail with kDeadlineExceeded, this object's
  // with kUnavailable). No-op otherwise.
  void stop_sequencer();

  // ---- Crash fencing (see "Crash fencing" and "Crash fencing, noncoherent mode" above) ----
  // Marks every replica registered through this object alive (the kernel's idle loop calls it at
  // least every lease / 2). Errors: kFailedPrecondition naming the first of them that was fenced
  // (the others still beat).
  Status heartbeat();
  // Fences every replica, not owned by this object, whose owner is gone (same host, pid gone) or
  // whose heartbeat this object has seen unchanged for |lease|, and finishes earlier fencings
  // whose reserved slots were still covered by a live appender's record. Bounded: takes the GC
  // lock (breaking it for a dead holder on this host) for at most full_timeout. Noncoherent mode:
  // the sequencer fences; on the creator this runs its liveness check now with |lease| (and
  // finishes earlier fencings it can), on any other object it does nothing.
  // Errors: kInvalidArgument (|lease| <= 0), kUnavailable (coherent: the GC lock stayed held by a
  // live process past full_timeout).
  Status fence_dead(std::chrono::nanoseconds lease);
  // Replicas this object has fenced so far (statistics, tests).
  uint64_t fenced_count() const { return fenced_count_.load(std::memory_order_relaxed); }
  // Tests only: the |nth| append (1-based, counted over this object) from now on "crashes" right
  // after reserving its indices: it publishes the first |publish| entries of its batch (at most
  // all but one), then raises SIGKILL on the process when |kill|, else returns kAborted and
  // leaves the rest unpublished (the object then plays dead: its owner must stop using it).
  void crash_in_append_for_testing(uint64_t nth, uint32_t publish, bool kill);

 private:
  // What this object last saw of another replica's (or the sequencer's) heartbeat: the fencer's
  // own clock times the lease.
  struct Observation {
    uint64_t incarnation = 0;
    uint64_t heartbeat = 0;
    std::chrono::steady_clock::time_point since{};
    bool valid = false;
  };

  // The sequencer's private state (noncoherent creator only). Complete here, not in
  // shm_log_impl.h, so that clang's -Wthread-safety can name its mutex in the declarations below.
  struct Sequencer {
    explicit Sequencer(const shm::Geometry& g)
        : answered(g.max_replicas, 0),
          incarnation(g.max_replicas, 0),
          join_start(g.max_replicas, 0),
          owner(g.max_replicas, 0),
          owner_pid(g.max_replicas, 0),
          owner_host(g.max_replicas, 0),
          grant_seq(g.max_replicas, 0),
          grant_first(g.max_replicas, 0),
          grant_count(g.max_replicas, 0),
          victims(g.max_replicas),
          observed(g.max_replicas),
          client_answered(shm::kMaxClients, 0),
          payload_generation(g.payload_slots, 0) {}

    struct Answer {
      bool client;   // a client answer (else a replica's reservation answer)
      uint32_t who;  // client slot or replica id
      uint64_t seq;
      uint64_t status;
      uint64_t value[3];
    };
    // A fenced replica whose id is not free yet (see "Crash fencing, noncoherent mode").
    struct Victim {
      bool pending = false;
      bool slots_done = false;  // every index of its last grant is published or a no-op
      uint64_t incarnation = 0;  // the fenced one (ResponseLine::fenced)
      uint64_t grant_seq = 0;    // its last grant: request number, first index, count
      LogIndex grant_first = 0;
      uint64_t grant_count = 0;
      std::chrono::steady_clock::time_point fenced_at{};
      std::chrono::nanoseconds lease{};  // the lease it was fenced with (fallback (iv))
    };

    Mutex mu;
    LogIndex tail NRX_GUARDED_BY(mu) = 0;
    uint64_t active NRX_GUARDED_BY(mu) = 0;
    uint64_t ever NRX_GUARDED_BY(mu) = 0;
    uint64_t fenced NRX_GUARDED_BY(mu) = 0;  // ids fenced and not free yet (SequencerLine::fenced)
    uint64_t passes NRX_GUARDED_BY(mu) = 0;
    uint64_t beats NRX_GUARDED_BY(mu) = 0;  // SequencerLine::heartbeat
    std::chrono::steady_clock::time_point last_beat NRX_GUARDED_BY(mu){};
    std::chrono::steady_clock::time_point last_liveness NRX_GUARDED_BY(mu){};
    uint32_t next_replica NRX_GUARDED_BY(mu) = 0;  // round-robin start of the next pass
    uint64_t payload_hint NRX_GUARDED_BY(mu) = 0;
    std::vector<uint64_t> answered NRX_GUARDED_BY(mu);     // per replica: last request number answered
    std::vector<uint64_t> incarnation NRX_GUARDED_BY(mu);  // per replica: the join granted last (+1 once fenced)
    std::vector<LogIndex> join_start NRX_GUARDED_BY(mu);   // per replica: its ltail until it confirms
    std::vector<uint32_t> owner NRX_GUARDED_BY(mu);        // per replica: the client that joined it
    std::vector<uint64_t> owner_pid NRX_GUARDED_BY(mu);    // per replica: its owner's pid and host tag
    std::vector<uint64_t> owner_host NRX_GUARDED_BY(mu);   //   (from the join request)
    std::vector<uint64_t> grant_seq NRX_GUARDED_BY(mu);    // per replica: its last grant
    std::vector<LogIndex> grant_first NRX_GUARDED_BY(mu);
    std::vector<uint64_t> grant_count NRX_GUARDED_BY(mu);
    std::vector<Victim> victims NRX_GUARDED_BY(mu);
    std::vector<Observation> observed NRX_GUARDED_BY(mu);  // per replica: its heartbeat
    std::vector<uint64_t> client_answered NRX_GUARDED_BY(mu);
    std::vector<uint64_t> payload_generation NRX_GUARDED_BY(mu);  // per slot: last granted (0: never)
    std::vector<Answer> answers NRX_GUARDED_BY(mu);                // this pass's, written at its end
  };

  BasicShmLog(std::byte* base, const shm::Geometry& geo, LogOptions options, uint64_t cluster_id, uint64_t epoch,
              ShmMode mode, uint32_t client, std::chrono::nanoseconds lease, std::shared_ptr<void> keep_alive);

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

  // The GC lock (shm::MembershipLine): try_lock never waits; lock waits up to full_timeout and
  // breaks the lock of a holder on this host whose pid is gone.
  bool try_lock_gc();
  Status lock_gc();
  void unlock_gc();
  // Takes the lock from a dead holder on this host; true when we hold it now.
  bool try_break_gc_lock();

  // ---- Coherent-mode fencing (shm_log_impl.h) ----
  // kFailedPrecondition when |replica| (owned) was fenced; changes its heartbeat otherwise.
  Status check_alive_and_beat(ReplicaId replica);
  // Rate-limited fence_dead(lease_) for the wait loops; |last| is the caller's timer.
  void fence_from_wait(std::chrono::steady_clock::time_point* last);
  // Fences |victim| if it is still at incarnation |incarnation| (takes the GC lock).
  Status fence_one(ReplicaId victim, uint64_t incarnation);
  // Fills the unpublished, unowned slots of fenced |victim|'s reservation with no-ops; true when
  // none is left pending (the id is then free).
  bool resolve_fenced(ReplicaId victim);
  // Publishes a no-op at |index| unless an entry (or a no-op) of that lap is there already.
  void fill_noop(LogIndex index);
  Status fenced_error(ReplicaId replica) const;
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
  // Every replica in |holders| but those in |fenced| (whose holds were released for them) has
  // released generation |generation| of payload slot |where|.
  bool released_by_all(uint64_t where, uint32_t generation, uint64_t holders, uint64_t fenced) const;
  // SequencerLine::fenced as this host sees it now.
  uint64_t fenced_replicas() const;
  // Runs one sequencer pass here if this object owns the sequencer and nobody else is in one.
  void try_sequencer_pass();
  void sequencer_main();
  // One pass over the client and request lines; true when it answered something.
  bool sequencer_pass_locked(Sequencer& s) NRX_REQUIRES(s.mu);
  // min ltail over the active replicas as the sequencer knows them (tail if none).
  LogIndex sequencer_head_locked(Sequencer& s) NRX_REQUIRES(s.mu);
  // Writes |active|, |ever| and |fenced| to the SequencerLine when they changed (and flushes).
  void publish_membership_locked(Sequencer& s) NRX_REQUIRES(s.mu);

  // ---- Noncoherent mode: crash fencing (see "Crash fencing, noncoherent mode") ----
  // How often the sequencer looks at heartbeats and pids, and waiters at the sequencer.
  static std::chrono::nanoseconds liveness_period(std::chrono::nanoseconds lease);
  // Fences every dead replica not owned by this object (pid gone, or heartbeat unchanged for
  // |lease|), then moves every pending fencing on.
  void sequencer_liveness_locked(Sequencer& s, std::chrono::nanoseconds lease,
                                 std::chrono::steady_clock::time_point now) NRX_REQUIRES(s.mu);
  void fence_noncoherent_locked(Sequencer& s, ReplicaId victim, std::chrono::nanoseconds lease,
                                std::chrono::steady_clock::time_point now) NRX_REQUIRES(s.mu);
  // Fills the victim's unpublished indices once the handshake allows it, and frees its id once
  // its owner can write no more.
  void resolve_victim_locked(Sequencer& s, ReplicaId victim, std::chrono::steady_clock::time_point now)
      NRX_REQUIRES(s.mu);
  void free_victim_locked(Sequencer& s, ReplicaId victim) NRX_REQUIRES(s.mu);
  // True when the sequencer has fenced |replica| (owned) at the incarnation we registered with.
  bool fenced_mark_seen(ReplicaId replica) const;
  // At an exit of append/exec/exec_while/deregister that found |replica| fenced (its combiner, no
  // write to the id's lines after this): acknowledges the fencing once. Returns fenced_error.
  Status acknowledge_fencing(ReplicaId replica) NRX_EXCLUDES(ack_mu_);
  // Changes |replica|'s heartbeat word, at most once a millisecond unless |force|; with
  // |check_fenced|, first reads the fenced mark and returns false (no beat) when it is set.
  bool beat_noncoherent(ReplicaId replica, bool force, bool check_fenced);
  // kUnavailable when the sequencer is gone: its process died (same host) or, with |silent_too|,
  // its heartbeat stayed unchanged for lease_. OK otherwise (and always on a live creator).
  Status check_sequencer(bool silent_too) NRX_EXCLUDES(fence_mu_);

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
  // Coherent fencing: this host's tag (ReplicaLine::host), the lease, and per owned replica the
  // incarnation it registered with (written before its owned_ bit is set; read by its ops).
  const uint32_t host_tag_;
  const std::chrono::nanoseconds lease_;
  std::unique_ptr<uint64_t[]> incarnation_;
  // What this object last saw of each other replica (coherent fencing) and of the sequencer
  // (noncoherent attachers).
  Mutex fence_mu_;  // one fence_dead at a time per object
  std::vector<Observation> observed_ NRX_GUARDED_BY(fence_mu_);
  Observation sequencer_observed_ NRX_GUARDED_BY(fence_mu_);
  // Noncoherent: per owned replica, when this object last changed its heartbeat (steady clock,
  // ns); the owned replicas whose fencing this object acknowledged (it never writes their lines
  // again); and the lock that orders that acknowledgement after any heartbeat() or
  // payload_release still writing the id's lines from another thread.
  std::unique_ptr<std::atomic<int64_t>[]> last_beat_ns_;
  std::atomic<uint64_t> acknowledged_{0};
  Mutex ack_mu_;
  std::atomic<uint64_t> fenced_count_{0};
  // crash_in_append_for_testing: appends left before the crash (0: off), and its parameters.
  std::atomic<uint64_t> crash_countdown_{0};
  std::atomic<uint32_t> crash_publish_{0};
  std::atomic<bool> crash_kill_{false};
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
