// How a CNR group orders its scans (cnr.h): one scan at a time enters its logs, each with the next
// scan id, so every log holds scans in the same order; and a record of the scans that could not
// enter all their logs (cancelled: every replica skips them).
//
// - LocalScanOrder: every replica of the group lives in this process (a mutex and a counter).
// - SharedScanOrder: the replicas live in several processes (or machines) whose logs sit in
//   shared memory (logs/shm, coherent mode). Lock, next id and cancel list are words in a small
//   region of that memory. The lock word names its holder (host tag, pid: base/host.h).
// - BakeryScanOrder: the same, over NONCOHERENT shared memory (logs/shm's noncoherent mode; CXL
//   2.0-style sharing, QEMU's type-3 device), where a read-modify-write is not atomic across
//   hosts. Lamport's bakery lock among participants (one per process or machine, each with a
//   fixed slot), made only of words each participant alone writes (flushed after writing,
//   invalidated before reading another's); threads of one process first take a local mutex.
//   Next id, records and cancel lists are per participant too: the holder reads everyone's.
//   How its stores reach the others is a BakeryMedium: CXL cache operations by default, or a
//   mirror (each machine its own copy of the region, its stores pushed into every peer's copy,
//   e.g. with RDMA WRITEs: transport/verbs/mirror.h) where machines share no memory at all.
//
// Orphans. A process that dies while holding the shared lock may have put its scan into some of
// its logs and not the others; replicas that reached it wait there. Before inserting, the holder
// records the scan's entry in the region. Whoever takes the lock over from a dead holder
// (lock(), or try_take_over() from a replica's wait loop) gets that entry as the orphan and
// appends it to every log of its mask before anything else. In a log that already holds it, the
// second copy comes right after the first with no other scan between (the lock was held
// throughout), and replicas skip it as an already released scan; elsewhere it completes the
// barrier. So an orphan runs, at every replica, exactly once: an operation of a dead process that
// may or may not take effect, as for any operation whose issuer died before its answer.
// "Dead" is provable only on the holder's own host (pid gone). A holder on another host is
// presumed dead once it has held the lock longer than |remote_lease| (its clock and ours must
// roughly agree: QEMU guests of one host do). The taker appends in descending log order and never
// cancels an orphan (cnr.h, complete_orphan, says why). Threads waiting at an orphan do not take
// over themselves (they hold a combiner): some thread of the process must call
// ConcurrentReplica::recover_orphan() now and then (the kernel's idle tick, via NR-FS's advance).
// Risks: a remote holder that is slow, not dead, and outlives the lease makes two holders, whose
// scans may enter the logs in different orders; a dead holder's pid reused by another process of
// its host hides its death, and scans then fail with kDeadlineExceeded.
//
// Thread safety: all methods may be called from any thread; lock() blocks until the lock is held
// (or its timeout passes); the holder calls next_id, record, cancel, clear_orphan and unlock.
//
//   NRX_ASSIGN_OR_RETURN(auto order, nr::SharedScanOrder::create(region_bytes, {.cluster_id = 7}));
//   auto group = CnrGroup<Map, Mapper, logs::ShmLog>::create(4, options, make_log, {}, std::move(order));
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "base/function_ref.h"
#include "base/mutex.h"
#include "base/spin.h"
#include "base/status.h"
#include "base/thread_annotations.h"

namespace nrx::nr {

class ScanOrder {
 public:
  // A scan whose holder died while inserting it: its entry bytes and the logs it enters.
  struct Orphan {
    uint64_t id = 0;
    uint64_t mask = 0;
    std::vector<std::byte> entry;
  };

  virtual ~ScanOrder() = default;

  // Takes the lock. If it was taken over from a dead holder, returns that holder's orphan scan.
  // While it waits for another process's holder it calls |while_waiting| now and then: the
  // holder may be appending to a full log that only this process's replicas can drain (no
  // lagging-replica hook reaches across processes), so the waiter must keep them moving.
  // Errors: kDeadlineExceeded (held by a live holder for the whole timeout), kResourceExhausted
  // (the cancel list is full: no scan can be cancelled any more, so none may start).
  virtual Result<std::optional<Orphan>> lock(FunctionRef<void()> while_waiting) = 0;
  // Takes the lock only if its holder is dead (never waits). nullopt: not taken (free, or a live
  // holder). A taken lock may carry an orphan (Orphan::id != 0) or not (id 0). BakeryScanOrder
  // takes it only for a dead holder's orphan (a dead holder without one blocks nobody there).
  virtual std::optional<Orphan> try_take_over() = 0;
  // Holder only: the next scan id (1, 2, ...; increasing across the group).
  virtual uint64_t next_id() = 0;
  // Holder only: scan |id| with |entry| (at most max_entry_bytes()) is about to enter |mask|'s logs.
  virtual void record(uint64_t id, uint64_t mask, std::span<const std::byte> entry) = 0;
  // Holder only: the orphan is complete (every log of its mask holds it) or cancelled.
  virtual void clear_orphan() = 0;
  // Holder only: scan |id| did not enter all its logs and never will; replicas skip it.
  virtual void cancel(uint64_t id) = 0;
  virtual bool is_cancelled(uint64_t id) = 0;
  // Holder only: releases the lock (forgetting the recorded scan).
  virtual void unlock() = 0;
  // Holder only: releases the lock but keeps the recorded scan, which the next holder gets as an
  // orphan (an orphan whose completion failed, e.g. a log stayed full: it must not be cancelled).
  virtual void unlock_keeping_orphan() = 0;
  virtual size_t max_entry_bytes() const = 0;
};

class LocalScanOrder final : public ScanOrder {
 public:
  // The mutex is held across calls (lock() ... unlock()), which the analysis cannot follow.
  // Blocks on a mutex: in one process, the lagging-replica hooks keep every replica moving.
  Result<std::optional<Orphan>> lock(FunctionRef<void()> while_waiting) override NRX_NO_THREAD_SAFETY_ANALYSIS;
  std::optional<Orphan> try_take_over() override { return std::nullopt; }  // a holder here is alive
  uint64_t next_id() override NRX_NO_THREAD_SAFETY_ANALYSIS { return next_++; }
  void record(uint64_t, uint64_t, std::span<const std::byte>) override {}
  void clear_orphan() override {}
  void cancel(uint64_t id) override NRX_EXCLUDES(cancel_mu_);
  bool is_cancelled(uint64_t id) override NRX_EXCLUDES(cancel_mu_);
  void unlock() override NRX_NO_THREAD_SAFETY_ANALYSIS { mu_.unlock(); }
  void unlock_keeping_orphan() override NRX_NO_THREAD_SAFETY_ANALYSIS { mu_.unlock(); }  // never has one
  size_t max_entry_bytes() const override { return SIZE_MAX; }

 private:
  Mutex mu_;
  uint64_t next_ NRX_GUARDED_BY(mu_) = 1;
  Mutex cancel_mu_;
  std::vector<uint64_t> cancelled_ NRX_GUARDED_BY(cancel_mu_);
  std::atomic<uint32_t> cancelled_count_{0};
};

struct SharedScanOrderOptions {
  uint64_t cluster_id = 0;  // must match on attach
  std::chrono::nanoseconds lock_timeout = std::chrono::seconds(60);
  std::chrono::nanoseconds remote_lease = std::chrono::seconds(30);  // see "Orphans"
  // BakeryScanOrder only: this object's slot, 0..BakeryScanOrder::kMaxParticipants-1, unique among
  // the objects sharing the region (the machine number). Two objects in one slot break the lock
  // (undetectable without an atomic, as logs/shm's client slots).
  uint32_t participant = 0;
};

// The region's layout (offsets from its start; the region is 4 KiB or more, 8-byte aligned):
//   0 magic "NRXSCAN1", 8 layout version, 12 entry capacity, 16 cluster id, 24 cancel capacity;
//   64 lock word (host tag << 32 | pid; 0 free), 72 when the holder took it (CLOCK_REALTIME ns),
//   80 recorded scan id (0: none), 88 its mask, 96 its entry length, 104 next scan id;
//   128 cancelled count; 136 cancelled ids; then the recorded entry (entry capacity bytes).
class SharedScanOrder final : public ScanOrder {
 public:
  static constexpr size_t kRegionBytes = 4096;
  static constexpr uint32_t kEntryCapacity = 512;

  // Initialises |region| (at least kRegionBytes, 8-byte aligned; any previous content is lost).
  // The region must outlive the object. Errors: kInvalidArgument (too small, misaligned).
  static Result<std::unique_ptr<SharedScanOrder>> create(std::span<std::byte> region, SharedScanOrderOptions options);
  // Attaches to a region another process created. Errors: kInvalidArgument (too small,
  // misaligned), kFailedPrecondition (not a scan-order region, another layout version or cluster).
  static Result<std::unique_ptr<SharedScanOrder>> attach(std::span<std::byte> region, SharedScanOrderOptions options);

  Result<std::optional<Orphan>> lock(FunctionRef<void()> while_waiting) override;
  std::optional<Orphan> try_take_over() override;
  uint64_t next_id() override;
  void record(uint64_t id, uint64_t mask, std::span<const std::byte> entry) override;
  void clear_orphan() override;
  void cancel(uint64_t id) override;
  bool is_cancelled(uint64_t id) override;
  void unlock() override;
  void unlock_keeping_orphan() override;
  size_t max_entry_bytes() const override { return kEntryCapacity; }

  // Locks taken over from dead holders, and orphans handed out (statistics, tests).
  uint64_t take_overs() const { return take_overs_.load(std::memory_order_relaxed); }

 private:
  SharedScanOrder(std::byte* base, SharedScanOrderOptions options) : base_(base), options_(options) {}
  uint64_t* word(size_t offset) const { return reinterpret_cast<uint64_t*>(base_ + offset); }
  bool holder_dead(uint64_t holder) const;
  // With the lock just taken (over): the stamp, and the recorded scan if there is one.
  std::optional<Orphan> acquired(bool from_dead);
  uint32_t cancel_capacity() const;

  std::byte* base_;
  SharedScanOrderOptions options_;
  std::atomic<uint64_t> take_overs_{0};
};

// How a bakery participant's stores reach the others, and how it sees theirs: the only memory
// operations BakeryScanOrder needs beyond plain atomic loads and stores on its region.
//   - CXL (the default, nullptr): one region all participants map; written() writes the lines
//     back (clwb/clflushopt + sfence), to_read() invalidates them, the fence is an mfence.
//   - A mirror (machines without shared memory): every participant keeps its own full copy of
//     the region; written() pushes the bytes from its copy into the same offsets of every peer's
//     copy (RDMA WRITEs on one RC queue pair per peer), to_read() does nothing (peers' stores
//     land in our copy), the fence waits until every push so far has been placed at every peer
//     (RC completions). The adapter over transport/verbs' Mirror lives with the kernel's boot
//     code (kernel/nr does not depend on verbs).
// What the bakery needs from a medium (its correctness argument rests on exactly these):
//   1. Single-writer blocks: written() is only ever called on bytes of the caller's own
//      participant block (or, in create(), the whole region); nobody else writes them.
//   2. Per-peer order: two written() calls by one participant become visible to any one other
//      participant in call order (the holder's record, ids and cancels before its number = 0;
//      number = mine before choosing = 0). An RC queue pair per peer gives this; different
//      peers may see them at different times.
//   3. Whole words: an aligned 8-byte word is seen either old or new, never torn.
//   4. The fence: once store_load_fence() returns, every earlier written() is visible to every
//      participant, and no later load of ours is performed before that (a store-load barrier:
//      the doorway's choosing = 1 and number = mine must be seen before we read the others').
//   5. written() need not wait for the peers (the fence is where waiting belongs), and may be a
//      no-op until the medium is "connected": create() formats through the medium, so with a
//      mirror every participant create()s its own copy BEFORE the copies are connected (a
//      connected create() would wipe the peers' blocks in their copies).
// Failures are the medium's own business: a peer it cannot reach any more is dead, and the
// bakery's liveness rules (the remote lease) skip it; written() and the fence cannot fail.
// Thread safety: called by one thread at a time per participant (the bakery's local mutex is
// held), but from any thread; a medium shared by several participants must be thread-safe.
// The calls are virtual: a bakery lock costs a few dozen of them, once per scan (not per op).
class BakeryMedium {
 public:
  virtual ~BakeryMedium() = default;
  // Our own bytes [p, p + n) (inside the region) changed: make them visible to the others.
  virtual void written(const void* p, size_t n) = 0;
  // About to read another participant's bytes [p, p + n).
  virtual void to_read(const void* p, size_t n) = 0;
  // Every earlier written() is visible to all before any later read (see 4 above).
  virtual void store_load_fence() = 0;
};

// The bakery (noncoherent memory). Participant i takes a ticket: choosing[i] = 1, number[i] = 1 +
// the highest number it reads, choosing[i] = 0; then waits, for every other j, until j is not
// choosing and holds no ticket ordered before its own ((number, slot) pairs). Unlock: number[i] =
// 0. Each store is released and written back, and a store-load fence (mfence, not a locked
// instruction) orders a participant's stores before its following loads, as the bakery needs.
// Ids: the holder takes 1 + the highest id any participant issued (its own word, written back
// before it unlocks). Cancellations: each participant lists the ids it cancelled; is_cancelled
// reads every list. Records: each participant records its scan in its own block; an orphan is a
// record nobody completed: its id above every participant's "done" mark for that slot (clear_orphan
// sets the holder's mark). So the next holder, whoever it is, finds a dead holder's record.
// Liveness: a competing participant names itself (host tag, pid) and refreshes a CLOCK_REALTIME
// stamp while it waits (at most once a millisecond); the holder's stamp is when it took the lock.
// A participant ahead of us is skipped as dead once its pid is gone from our host, or (another
// host) once its stamp is older than |remote_lease|; skipping a holder is a take-over. A waiter
// that finds its own stamp older than half the lease when it would enter (it was stalled: others
// may have skipped it) withdraws and takes a new ticket. The risks are SharedScanOrder's (a
// remote participant that is slow, not dead, beyond the lease makes two holders).
//
// The region's layout: block 0 the header (0 magic "NRXBAKE1", 8 layout version, 12 entry
// capacity, 16 cluster id, 24 participants); block 1 + p participant p's (kBlockBytes each): 0
// choosing, 8 number, 16 stamp, 24 holding, 32 owner; 64 last id issued, 72 recorded scan id, 80
// its mask, 88 its entry length; 128 done marks (one per participant: the highest orphan id of
// that slot completed by this one); 256 cancelled count, 264 cancelled ids; the recorded entry in
// the last kEntryCapacity bytes.
class BakeryScanOrder final : public ScanOrder {
 public:
  static constexpr uint32_t kMaxParticipants = 16;
  static constexpr size_t kBlockBytes = 4096;
  static constexpr size_t kRegionBytes = kBlockBytes * (1 + kMaxParticipants);
  static constexpr uint32_t kEntryCapacity = 512;

  // As SharedScanOrder's, through |medium| (nullptr: CXL cache operations on a region every
  // participant maps; a mirror: create() on every participant's own copy before connecting it).
  // Errors also: kInvalidArgument (participant out of range).
  static Result<std::unique_ptr<BakeryScanOrder>> create(std::span<std::byte> region, SharedScanOrderOptions options,
                                                         std::shared_ptr<BakeryMedium> medium = nullptr);
  static Result<std::unique_ptr<BakeryScanOrder>> attach(std::span<std::byte> region, SharedScanOrderOptions options,
                                                         std::shared_ptr<BakeryMedium> medium = nullptr);

  // The local mutex is held across calls (lock() ... unlock()), which the analysis cannot follow.
  Result<std::optional<Orphan>> lock(FunctionRef<void()> while_waiting) override NRX_NO_THREAD_SAFETY_ANALYSIS;
  std::optional<Orphan> try_take_over() override NRX_NO_THREAD_SAFETY_ANALYSIS;
  uint64_t next_id() override;
  void record(uint64_t id, uint64_t mask, std::span<const std::byte> entry) override;
  void clear_orphan() override;
  void cancel(uint64_t id) override;
  bool is_cancelled(uint64_t id) override;
  void unlock() override NRX_NO_THREAD_SAFETY_ANALYSIS;
  void unlock_keeping_orphan() override NRX_NO_THREAD_SAFETY_ANALYSIS;
  size_t max_entry_bytes() const override { return kEntryCapacity; }

  uint64_t take_overs() const { return take_overs_.load(std::memory_order_relaxed); }

 private:
  enum class Outcome : uint8_t { kWon, kLost, kStalled, kTimedOut };
  BakeryScanOrder(std::byte* base, SharedScanOrderOptions options, std::shared_ptr<BakeryMedium> medium);
  std::byte* block(uint32_t p) const { return base_ + kBlockBytes * (1 + size_t{p}); }
  uint64_t* word(uint32_t p, size_t offset) const { return reinterpret_cast<uint64_t*>(block(p) + offset); }
  uint64_t read(uint32_t p, size_t offset) const;     // another's word: invalidated, then acquire
  void write(size_t offset, uint64_t value);          // our own word: release, then written back
  bool dead(uint32_t p) const;                        // a competitor presumed or proven dead
  // One bakery round with a fresh ticket. |patient| false: gives up (kLost) at the first live
  // participant ahead. On any outcome but kWon our ticket is withdrawn.
  Outcome compete(bool patient, FunctionRef<void()> while_waiting, SpinWait& wait, bool& took_over);
  std::optional<Orphan> acquired(bool took_over);
  uint64_t pending_record(uint32_t p) const;  // p's recorded scan id if nobody completed it; else 0
  uint64_t cancelled_count() const;

  std::byte* base_;
  SharedScanOrderOptions options_;
  std::shared_ptr<BakeryMedium> medium_;  // never null
  Mutex mu_;                          // one thread of this process competes or holds at a time
  uint32_t orphan_from_ = UINT32_MAX;  // holder: the slot whose record lock() handed out
  // A ticket (and its owner) found dead (0: none). Under mu_, which the analysis cannot follow.
  std::array<uint64_t, kMaxParticipants> dead_number_{};
  std::array<uint64_t, kMaxParticipants> dead_owner_{};
  uint64_t orphan_id_ = 0;
  std::atomic<uint64_t> take_overs_{0};
};

}  // namespace nrx::nr
