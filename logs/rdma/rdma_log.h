// nrx::logs::RdmaLog: the RDMA backend of the Log contract (logs/log.h; DESIGN.md 3.4, "rdma"):
// machines without shared memory share one log over RDMA verbs (transport/verbs, RC queue pairs).
//
// Every machine keeps a MIRROR of the whole log in a registered memory region it polls locally
// (NR's local replicas, one step further out). Machine 0 is the sequencer: its region also holds
// the log's control words (tail, the next replica id, the active-replica mask) and the replica
// table (each replica's ltail and its ctail proposal |started|), which the others reach with RDMA.
//   append  one FETCH_AND_ADD on the sequencer's tail reserves the batch; the entries go into our
//           own mirror's slots (writer, length, bytes, and last a release store of the slot's
//           alive word, lap + 1, in its final 8 bytes), and then the whole batch into every other
//           machine's mirror with ONE posted RDMA WRITE of those slots (two where the batch wraps
//           around the ring) on the RC queue pair to that machine: the responder places a
//           message's bytes in address order (as it places one queue pair's WRITEs in order;
//           what rxe and common HCAs do, beyond what the IB spec promises), so each slot's alive
//           word lands after its body. Writes are unsignalled (signalled every N): no round trip
//           beyond the FETCH_AND_ADD. Before writing, the appender checks that the
//           slots are free (index < head + slot_count) against a cached head; only when that
//           fails does it READ the replica table (one more round trip) and, while the log stays
//           full, apply its own entries, call the lagging-replica hook and re-read. If the log is
//           still full after full_timeout it withdraws the reservation with a COMPARE_AND_SWAP
//           (tail: first + n -> first) and fails with kDeadlineExceeded; when others reserved
//           after it (the swap fails) it cannot withdraw without leaving holes, so it waits on
//           until there is room and appends (late, never lost).
//   exec    READs the sequencer's tail (one round trip), raises |started| in the sequencer's
//           table (a signalled WRITE, waited for: ctail must be raised before any effect is
//           seen), applies the local mirror up to that tail, waiting for entries that are
//           reserved but not yet written, then posts its ltail to the table (unsignalled).
//           The sequencer machine does both with local loads and stores. Because a reservation
//           comes before the room check, an appender may hold reserved slots while it waits for
//           room (and runs the lagging hook, which may exec another replica on its thread). So
//           an exec that reaches an unwritten slot first posts its ltail (the appender may be
//           waiting for exactly that progress), and an exec on the same object stops (returns
//           early) at a slot of a local reservation that is waiting for room, instead of waiting
//           for it: the only departure from "exec applies up to the tail it read".
//   head, ctail  READ of the replica table (min ltail, max started over the active replicas).
//   payloads  a payload lives in its putter's region (an arena of payload_slots slots of
//           RdmaOptions::payload_bytes); a reference names (machine, slot, generation). payload_put
//           also posts a copy (one WRITE per other machine) into each machine's cache slot for
//           it, before the entry that refers to it (same queue pair, in order): payload_get
//           reads locally, with no round trip, and a payload outlives its owner. A slot's header
//           holds its holders mask (the replicas active at put) and a released mask that each
//           holder sets with one FETCH_AND_ADD of its bit; the slot is free once released ==
//           holders.
// Every atomic on a region word goes through RDMA, also the owner's own (a loopback queue pair):
// RDMA atomics are not atomic with respect to CPU atomics on the same word.
//
// Replica ids: one FETCH_AND_ADD on the sequencer's counter (dense, in join order across
// machines), or fixed per machine (RdmaOptions::replica_base); registration, as in the contract, is
// a set-up step (not concurrent with appends).
//
// Fencing. A queue pair that breaks (the peer died: a WRITE's completion errs or never comes
// within rdma_timeout) cuts that machine off: this object stops writing to its mirror and reports
// it (unreachable()), and the cluster fences it (the controller, told by the kernel's heartbeat or
// by the machine's silence); then every survivor calls fence_machine(m). The sequencer clears m's
// replicas from the active mask (the owner of each replica id is in the table), so the head and
// ctail no longer wait for them. A slot m reserved but never wrote would stall every exec: once a
// fencing happened, the sequencer's exec resolves a slot that stays unwritten for hole_grace, by
// READing it from the other survivors' mirrors (m's WRITEs may have reached some of them, which
// may have applied it: then that entry is written to everybody) or, when none has it, by writing a
// no-op (the alive word with kNoop; exec skips it) into every mirror. m's payloads stay readable
// (every machine has its copy) and its replicas' holds on others' payloads count as released.
// Limits: the sequencer (machine 0) is not survived; a live appender stalled between its
// FETCH_AND_ADD and its WRITEs for longer than hole_grace after a fencing would see its entry
// resolved as a no-op on some mirrors (the kernel sets hole_grace to the cluster's lease: such a
// stall also loses the lease); an entry of m's that the sequencer copies from one survivor to
// another carries no payload copy with it (if m died between its payload WRITEs, a survivor may
// lack the payload: that write fails there); no state transfer, no second sequencer. A closing
// object on machine 0 waits (at most rdma_timeout) until every machine it has not cut off closed
// its own: the others' execs read machine 0's tail until they stop.
//
// Set-up is two-phase, so any channel can carry the endpoints (the cluster's control plane; a TCP
// line in `nrx rdma logbench`): create() makes the region and one queue pair per peer, endpoint()
// says what to send to each peer, connect() takes what each peer sent. A single machine
// (machines == 1) connects a loopback pair itself.
//
// Thread safety: as Log. Each queue pair (one per peer) is used under its own mutex.
//
//   auto log = RdmaLog::create(lo, {.machine = m, .machines = 2, .device = {.device = "rxe0"}}).value();
//   send_to_peer(log->endpoint(peer).to_string());
//   NRX_RETURN_IF_ERROR(log->connect({{peer, Endpoint::parse(receive_from_peer()).value()}}));
//   ReplicaId r = log->register_replica().value();
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "logs/log.h"
#include "transport/verbs/verbs.h"

namespace nrx::logs {

struct RdmaOptions {
  uint32_t machine = 0;   // this machine; 0 is the sequencer
  uint32_t machines = 1;  // machines sharing the log (1..16)
  transport::verbs::ContextOptions device{};
  uint64_t payload_bytes = 8192;  // largest payload (one arena slot)
  // Replica ids: kDenseIds takes them from the sequencer's counter (dense, in registration order
  // across machines); otherwise this machine's k-th registration gets replica_base + k, so that
  // several logs registered concurrently from several machines give a replica the same id on
  // each (CNR's requirement; the kernel uses machine * nodes).
  static constexpr uint32_t kDenseIds = UINT32_MAX;
  uint32_t replica_base = kDenseIds;
  std::chrono::nanoseconds rdma_timeout = std::chrono::seconds(10);  // a verb without completion
  // After a fence_machine(), how long an unwritten slot must stay so before the sequencer
  // resolves it as the fenced appender's (see "Fencing").
  std::chrono::nanoseconds hole_grace = std::chrono::seconds(5);
};

// Round trips and posts this object made (the benchmark's counts).
struct RdmaCounts {
  uint64_t appends = 0;
  uint64_t fetch_adds = 0;  // tail reservations
  uint64_t writes = 0;      // RDMA WRITEs posted (entries, ltails)
  uint64_t reads = 0;       // RDMA READs (tail, table, payloads)
  uint64_t waits = 0;       // completions waited for (round trips)
  uint64_t holes = 0;       // fenced appenders' slots the sequencer resolved
};

class RdmaLog final : public Log {
 public:
  // Errors: kInvalidArgument (options outside LogOptions' ranges, machine >= machines, machines
  // 0 or above 16); verbs' errors (no device, port not ACTIVE, ...).
  static Result<std::unique_ptr<RdmaLog>> create(const LogOptions& options, const RdmaOptions& rdma);
  ~RdmaLog() override;

  // What this machine sends to |peer| (its queue pair for that peer and this machine's region).
  transport::verbs::Endpoint endpoint(uint32_t peer) const;
  // Connects to every other machine; |from_peers[j]| is what machine j's endpoint(this machine)
  // said (the entry for this machine itself is ignored). Machines == 1: no argument needed.
  // Errors: kInvalidArgument (wrong count, a peer's region too small), verbs' transition errors.
  Status connect(std::span<const transport::verbs::Endpoint> from_peers);

  const LogOptions& options() const override { return options_; }
  Result<ReplicaId> register_replica() override;
  Result<LogIndex> append(ReplicaId replica, Batch batch, EntryVisitor apply_own) override;
  Result<LogIndex> exec(ReplicaId replica, EntryVisitor visitor) override;
  Result<LogIndex> exec_while(ReplicaId replica, StoppingVisitor visitor) override;
  LogIndex tail() const override;
  LogIndex ctail() const override;
  LogIndex head() const override;
  Result<LogIndex> ltail(ReplicaId replica) const override;
  bool is_synced_for_reads(ReplicaId replica, LogIndex ctail) const override;
  Result<PayloadRef> payload_put(std::span<const std::byte> data) override;
  Result<std::span<const std::byte>> payload_get(PayloadRef ref) const override;
  Status payload_release(ReplicaId replica, PayloadRef ref) override;
  uint64_t payloads_live() const override;

  // Fencing (see the header comment): machine |machine| is gone. This object stops writing to its
  // mirror, treats its replicas' payload holds as released and its payloads as lost; on the
  // sequencer its replicas also leave the active mask (the GC minimum, ctail), and from now on
  // holes are resolved. Idempotent. Errors: kInvalidArgument (this machine or none),
  // kUnavailable (machine 0: the sequencer's loss is not survived), verbs' errors.
  Status fence_machine(uint32_t machine);
  // Testing: an appender that dies mid-append. Reserves |batch| and writes its entries only into
  // the mirrors of the machines in |mask| (a bit each; ours too only if set), then stops.
  Result<LogIndex> crash_in_append_for_testing(ReplicaId replica, Batch batch, uint32_t mask);
  // Machines whose queue pair broke under this object (a bit each): they must be fenced, their
  // mirrors miss entries. The kernel reports them to the controller.
  uint32_t unreachable() const;

  // The active-replica mask (one bit per registered, unfenced replica): a READ of the sequencer's
  // word (a load on machine 0). 0 when the sequencer cannot be reached.
  uint64_t active_replicas() const;

  RdmaCounts counts() const;
  const transport::verbs::Context& context() const { return *ctx_; }

 private:
  struct Link;     // one peer: queue pair, completion queue, scratch, mutex
  struct Table;    // a snapshot of the sequencer's control words and replica table
  RdmaLog(const LogOptions& options, const RdmaOptions& rdma);

  Result<Table> read_table() const;
  Result<uint64_t> seq_fetch_add(size_t offset, uint64_t add) const;
  Result<uint64_t> seq_compare_swap(size_t offset, uint64_t expected, uint64_t desired) const;
  Result<uint64_t> seq_read_word(size_t offset) const;
  Status seq_write_word(size_t offset, uint64_t value, bool wait) const;
  // Writes |batch| into our mirror's slots from |first| on, each alive word last (0 unless
  // |publish_here|).
  void fill_slots(ReplicaId replica, LogIndex first, Batch batch, bool publish_here);
  // Posts slots [first, first + n) of our mirror into |machine|'s: one WRITE (two if they wrap).
  // Skips a cut-off machine; a failure cuts it off (lost_link).
  Status write_slots(uint32_t machine, LogIndex first, uint64_t n);
  std::byte* alive(std::byte* slot) const;  // a slot's alive word (its last 8 bytes)
  const std::byte* alive(const std::byte* slot) const;
  bool cut_off(uint32_t machine) const;
  // A link failed: machine 0's is an error (returned); another machine's is cut off and reported.
  Status lost_link(uint32_t machine, const Status& why);
  Status resolve_hole(LogIndex index);  // the sequencer, after a fencing
  bool all_released(uint64_t holders, uint64_t released) const;
  // Posts payload slot |slot| (header and |length| bytes) into |machine|'s cache slot for us.
  Status push_payload(uint32_t machine, uint32_t slot, size_t length);
  // exec up to min(tail, limit) (append's apply_own stops below its own reservation).
  Result<LogIndex> exec_impl(ReplicaId replica, StoppingVisitor visitor, LogIndex limit);
  Status check_owned(ReplicaId replica) const;
  class AwaitingRoom;
  bool awaiting_room(LogIndex index) const;  // inside a local reservation that waits for room
  std::byte* slot(LogIndex index) const;

  LogOptions options_;
  RdmaOptions rdma_;
  std::unique_ptr<transport::verbs::Context> ctx_;
  std::byte* region_ = nullptr;  // mmap'ed, registered
  size_t region_bytes_ = 0;
  std::unique_ptr<transport::verbs::MemoryRegion> mr_;
  std::vector<std::unique_ptr<Link>> links_;  // [machine]; [self] is the loopback link
  std::vector<transport::verbs::Endpoint> peers_;  // what each machine offered us
  size_t slot_stride_ = 0, slots_off_ = 0, payload_off_ = 0, payload_stride_ = 0, cache_off_ = 0, hole_off_ = 0;
  std::atomic<uint32_t> cut_off_{0};      // machines we no longer write to (fenced or unreachable)
  std::atomic<uint32_t> unreachable_{0};  // machines whose link broke
  std::atomic<uint32_t> fenced_{0};       // machines fence_machine() was called for
  std::atomic<uint64_t> fenced_replicas_{0};
  std::atomic<uint64_t> holes_{0};
  std::atomic<uint32_t> registered_here_{0};
  bool connected_ = false;  // connect() succeeded (the destructor's leaving protocol)  // replica_base: registrations made through this object
  std::vector<std::atomic<bool>> owned_;  // [replica]: registered through this object
  std::vector<std::atomic<uint64_t>> local_ltail_;  // [replica] (this object's replicas)
  mutable std::atomic<uint64_t> cached_head_{0};
  Mutex payload_mu_;  // this machine's arena allocation
  mutable Mutex awaiting_mu_;
  std::vector<std::pair<LogIndex, LogIndex>> awaiting_ NRX_GUARDED_BY(awaiting_mu_);
  std::atomic<uint32_t> awaiting_count_{0};  // awaiting_.size(), read without the mutex
  mutable std::atomic<uint64_t> n_appends_{0}, n_fetch_adds_{0}, n_writes_{0}, n_reads_{0};
};

}  // namespace nrx::logs
