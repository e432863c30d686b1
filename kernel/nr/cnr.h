// nrx::nr::ConcurrentReplica<D, M, L>: Concurrent Node Replication (CNR; NrOS, OSDI'21, section
// 3.2). NR serialises every update through one log and one combiner per replica; CNR gives a
// replica several logs so that commuting operations proceed in parallel.
//
// Model
// - D is itself thread-safe: its mutating dispatch is const (it synchronises internally, e.g. a
//   striped hash map). Ops that conflict must map to the same log; that log orders them.
// - A LogMapper M sends each write/read to one log (mapper(op, log_count)) and each scan to a set
//   of logs (mapper.scan_mask(scan, log_count), a bitmask).
// - Per log and per replica: one combiner lock and one flat-combining buffer. A write is posted
//   in its thread's slot of its log's buffer; the combiner of that log collects the posted ops,
//   appends them with one reservation and applies that log to the replica. Combiners of
//   different logs run at the same time on the same replica.
// - A read syncs only its own log (to that log's ctail) and runs on the replica directly.
// - Scans. A scan-read (e.g. size, range query) executes once, at the issuing replica; a
//   scan-update (e.g. clear) executes at every replica. Both are barriers at every replica. A scan
//   takes the group's scan lock, takes the next scan id and appends one scan entry to every log it
//   touches, in ascending log order; the lock makes every log order scans the same way. Lock, ids
//   and cancellations are the group's ScanOrder (scan_order.h): in-process by default, in shared
//   memory when the replicas live in several processes (then a scan whose issuer died half-way
//   into its logs is completed by whoever takes the lock over next; see "Orphans" there). At a replica, when a log's apply reaches a
//   scan entry, it records its arrival and waits; the scan executes only when the replica sits
//   exactly at the scan in every log it touches (every one of them arrived: nothing after the scan
//   applied, everything before it applied), which makes the scan a consistent cut. Whoever sees
//   the last arrival claims and executes the scan, then releases all those logs.
// - Waiting. An operation's own applier (a combiner for its batch, an append waiting for space)
//   waits in place at a scan, holding only its own log's combiner. Meanwhile it helps: it applies
//   the other logs with try_lock on their combiners, in *stop mode* (Log::exec_while), which
//   records arrival at a scan and stops there instead of waiting. Helpers, readers and the
//   lagging-replica hook only ever use stop mode. So a waiter never applies past a scan it does
//   not own, no thread waits while holding two combiners, combiners never take the scan lock,
//   and no cycle of waits can form (see the deadlock-freedom stress test).
// - The lagging-replica hook of each log nudges the replica behind on that log (try_sync_log).
//
// Invariants: at one replica, a log is at most at one scan at a time; scans with overlapping log
// sets execute in scan-id order; the scan lock is held only while appending scan entries.
//
// Thread safety: every public method may be called concurrently from registered threads; a
// ThreadToken belongs to one thread at a time.
//
//   CnrGroup<Map, Mapper, logs::RingLog> group(/*logs=*/4, /*replicas=*/2, log_options);
//   auto r0 = group.make_replica().value();
//   auto t = r0->register_thread().value();
//   r0->execute_mut({Map::WriteOp::kPut, 1, 2}, t);
//   auto n = r0->execute_scan({Map::ScanOp::kSize}, t);
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "base/cacheline.h"
#include "base/check.h"
#include "base/mutex.h"
#include "base/spin.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "kernel/nr/flat_combining.h"
#include "kernel/nr/replica.h"
#include "kernel/nr/rwlock.h"
#include "kernel/nr/scan_order.h"
#include "kernel/nr/typed_log.h"
#include "logs/log.h"

namespace nrx::nr {

// D for CNR: thread-safe, with const mutating dispatch and two kinds of scan.
// A structure whose ops need their log position (allocations, payload releases) takes an
// ApplyContext as a second argument of dispatch_mut and dispatch_scan_mut instead (dispatch.h).
template <typename D>
concept ConcurrentDispatch =
    requires(const D cd, const typename D::ReadOp& r, const typename D::ScanOp& s) {
      typename D::ReadOp;
      typename D::WriteOp;
      typename D::ScanOp;
      typename D::Response;
      { cd.dispatch(r) } -> std::same_as<typename D::Response>;
      { cd.dispatch_scan(s) } -> std::same_as<typename D::Response>;      // scan-read
    } &&
    (requires(const D cd, const typename D::WriteOp& w, const typename D::ScanOp& s) {
      { cd.dispatch_mut(w) } -> std::same_as<typename D::Response>;
      { cd.dispatch_scan_mut(s) } -> std::same_as<typename D::Response>;  // scan-update
    } ||
     requires(const D cd, const typename D::WriteOp& w, const typename D::ScanOp& s, const ApplyContext& c) {
      { cd.dispatch_mut(w, c) } -> std::same_as<typename D::Response>;
      { cd.dispatch_scan_mut(s, c) } -> std::same_as<typename D::Response>;
    }) &&
    std::is_trivially_copyable_v<typename D::WriteOp> && std::is_trivially_copyable_v<typename D::ScanOp> &&
    std::is_default_constructible_v<typename D::Response>;

template <typename M, typename D>
concept LogMapperFor = requires(const M m, const typename D::ReadOp& r, const typename D::WriteOp& w,
                                const typename D::ScanOp& s, uint32_t n) {
  { m(r, n) } -> std::convertible_to<uint32_t>;
  { m(w, n) } -> std::convertible_to<uint32_t>;
  { m.scan_mask(s, n) } -> std::convertible_to<uint64_t>;
};

inline constexpr uint32_t kMaxLogs = 64;  // scan sets are 64-bit masks

enum class ScanKind : uint8_t { kRead, kUpdate };

template <ConcurrentDispatch D, LogMapperFor<D> M, typename L>
class ConcurrentReplica;

// The logs and the scan lock shared by all replicas of one CNR structure.
template <ConcurrentDispatch D, LogMapperFor<D> M, typename L = logs::Log>
class CnrGroup {
 public:
  using Replica = ConcurrentReplica<D, M, L>;

  // What each log entry holds: a write, or one log's share of a scan.
  struct Entry {
    enum Kind : uint8_t { kWrite = 0, kScanRead = 1, kScanUpdate = 2 } kind;
    uint32_t issuer_replica;  // scans: who waits for the response
    uint32_t issuer_tid;
    uint64_t scan_id;   // scans: group-wide, increasing in every log
    uint64_t scan_mask;  // scans: the logs the scan entered
    union {
      typename D::WriteOp write;
      typename D::ScanOp scan;
    };
    // Ops may have default member initializers (a non-trivial default constructor), which a union
    // does not forward: start as a value-initialised write.
    Entry() : kind(kWrite), issuer_replica(0), issuer_tid(0), scan_id(0), scan_mask(0), write() {}
  };
  static_assert(std::is_trivially_copyable_v<Entry>);

  // Creates |log_count| logs with |options| (entry_size is set to fit Entry; log_id and on_lagging
  // are set per log). |create_log| builds one backend log: Result<std::unique_ptr<L>>(LogOptions).
  // |order| orders the scans (null: a LocalScanOrder; replicas in several processes share a
  // SharedScanOrder). Errors: kInvalidArgument (log_count 0 or above kMaxLogs; an Entry larger
  // than |order| can record), or the backend's error.
  template <typename CreateLog>
  static Result<std::unique_ptr<CnrGroup>> create(uint32_t log_count, logs::LogOptions options, CreateLog&& create_log,
                                                  M mapper = M{}, std::unique_ptr<ScanOrder> order = nullptr) {
    if (log_count == 0 || log_count > kMaxLogs) {
      return Status::invalid_argument("CNR needs 1.." + std::to_string(kMaxLogs) + " logs, not " +
                                      std::to_string(log_count));
    }
    if (order == nullptr) order = std::make_unique<LocalScanOrder>();
    if (sizeof(Entry) > order->max_entry_bytes()) {
      return Status::invalid_argument("a CNR entry of " + std::to_string(sizeof(Entry)) +
                                      " bytes does not fit the scan order's record");
    }
    std::unique_ptr<CnrGroup> g(new CnrGroup(std::move(mapper), std::move(order)));
    for (uint32_t i = 0; i < log_count; ++i) {
      logs::LogOptions o = options;
      o.log_id = i;
      o.entry_size = std::max<uint32_t>(o.entry_size, sizeof(Entry));
      CnrGroup* raw = g.get();
      // The lagging-replica hook of log i: help that replica on that log (never blocks).
      o.on_lagging = [raw](uint32_t log_id, logs::ReplicaId r) { raw->nudge(log_id, r); };
      auto made = create_log(o);
      if (!made.ok()) return made.status();
      g->logs_.push_back(std::move(*made));
    }
    return g;
  }

  // Creates a replica (registered with every log) holding D constructed from |args|.
  // Errors: kResourceExhausted (a log has no replica id left), kFailedPrecondition (the logs gave
  // this replica different ids).
  template <typename... Args>
  Result<std::unique_ptr<Replica>> make_replica(ReplicaOptions options, Args&&... args) {
    logs::ReplicaId id = 0;
    for (uint32_t i = 0; i < logs_.size(); ++i) {
      NRX_ASSIGN_OR_RETURN(logs::ReplicaId got, logs_[i]->register_replica());
      if (i == 0) id = got;
      if (got != id) return Status::failed_precondition("CNR logs assigned different replica ids");
    }
    std::unique_ptr<Replica> r(new Replica(*this, id, options, std::forward<Args>(args)...));
    {
      MutexLock lock(replicas_mu_);
      if (replicas_.size() <= id) replicas_.resize(id + 1, nullptr);
      replicas_[id] = r.get();
    }
    return r;
  }

  uint32_t log_count() const { return static_cast<uint32_t>(logs_.size()); }
  L& log(uint32_t i) const { return *logs_[i]; }
  const M& mapper() const { return mapper_; }
  uint64_t all_logs_mask() const {
    return logs_.size() >= 64 ? ~uint64_t{0} : (uint64_t{1} << logs_.size()) - 1;
  }

 private:
  friend class ConcurrentReplica<D, M, L>;
  CnrGroup(M mapper, std::unique_ptr<ScanOrder> order) : mapper_(std::move(mapper)), order_(std::move(order)) {}

  void nudge(uint32_t log_id, logs::ReplicaId r) NRX_EXCLUDES(replicas_mu_);
  void forget(logs::ReplicaId r) NRX_EXCLUDES(replicas_mu_) {
    MutexLock lock(replicas_mu_);
    if (r < replicas_.size()) replicas_[r] = nullptr;
  }

  // Scans that could not enter all their logs (an append failed, e.g. the log stayed full past
  // its timeout) are cancelled: no replica can have run one (its last log never arrives), so
  // every replica treats its entries as no-ops. Checked only when an applier reaches a scan entry.
  bool is_cancelled(uint64_t id) { return order_->is_cancelled(id); }

  M mapper_;
  std::vector<std::unique_ptr<L>> logs_;
  // Serialises scan insertion so that every log orders scans the same way; hands out scan ids and
  // keeps the cancelled ones. Its lock is held only while appending scan entries; never by a
  // combiner (a combiner's append may hold one log's combiner briefly, see insert()).
  std::unique_ptr<ScanOrder> order_;
  Mutex replicas_mu_;
  std::vector<Replica*> replicas_ NRX_GUARDED_BY(replicas_mu_);
};

template <ConcurrentDispatch D, LogMapperFor<D> M, typename L = logs::Log>
class ConcurrentReplica {
 public:
  using Group = CnrGroup<D, M, L>;
  using Entry = typename Group::Entry;
  using ReadOp = typename D::ReadOp;
  using WriteOp = typename D::WriteOp;
  using ScanOp = typename D::ScanOp;
  using Response = typename D::Response;

  static constexpr uint32_t kMaxBatch = 32;

  ~ConcurrentReplica() { group_.forget(id_); }
  ConcurrentReplica(const ConcurrentReplica&) = delete;
  ConcurrentReplica& operator=(const ConcurrentReplica&) = delete;

  logs::ReplicaId id() const { return id_; }

  // Errors: kResourceExhausted when max_threads threads are registered.
  Result<ThreadToken> register_thread() {
    NRX_ASSIGN_OR_RETURN(uint32_t tid, detail::claim_thread_slot(num_threads_, options_.max_threads, id_));
    return ThreadToken{tid, this};
  }

  // A read on the op's log: syncs that log to its ctail, then reads the (thread-safe) replica.
  Response execute(const ReadOp& op, ThreadToken token) {
    check_token(token);
    const uint32_t li = group_.mapper()(op, group_.log_count());
    sync_log_to(li, group_.log(li).ctail());
    return data_->dispatch(op);
  }

  // A write through its log. Errors: as Replica::execute_mut (the log's append error).
  Result<Response> execute_mut(const WriteOp& op, ThreadToken token) {
    check_token(token);
    const uint32_t li = group_.mapper()(op, group_.log_count());
    PerLog& pl = logs_[li];
    return detail::post_and_wait(pl.contexts[token.tid], op, [this, &pl, li] {
      if (!pl.combiner.try_lock()) return false;
      combine_locked(li);
      pl.combiner.unlock();
      return true;
    });
  }

  // A scan-read: executes once, here, at a consistent cut of the logs it touches.
  // Errors: kInvalidArgument (the scan touches no log); a log's append error (e.g.
  // kDeadlineExceeded): the scan is then cancelled and ran nowhere.
  Result<Response> execute_scan(const ScanOp& op, ThreadToken token) { return scan(op, ScanKind::kRead, token); }
  // A scan-update: executes at every replica, each at the same cut. Errors: as execute_scan.
  Result<Response> execute_scan_mut(const ScanOp& op, ThreadToken token) {
    return scan(op, ScanKind::kUpdate, token);
  }

  // Applies every log up to its tail (waiting at scans as needed).
  void sync() {
    for (uint32_t li = 0; li < group_.log_count(); ++li) sync_log_to(li, group_.log(li).tail());
  }

  // Applies log |li| until this replica's ltail reaches |target| (helping as a combiner).
  void sync_log_to(uint32_t li, logs::LogIndex target) {
    L& log = group_.log(li);
    SpinWait wait;
    for (uint32_t spins = 0; !log.is_synced_for_reads(id_, target); ++spins) {
      if (try_sync_log(li) && log.is_synced_for_reads(id_, target)) break;
      help(group_.all_logs_mask(), li);  // stopped at a scan, or busy: bring the others along
      if ((spins & 1023) == 1023) recover_orphan();  // stopped at a scan whose issuer died?
      wait.pause();
    }
  }

  // Applies log |li| in stop mode if nobody is applying it here now; never blocks. Returns false
  // if the combiner was busy. The lagging-replica hook (through nudge()).
  bool try_sync_log(uint32_t li) {
    if (li >= group_.log_count()) return false;
    PerLog& pl = logs_[li];
    if (!pl.combiner.try_lock()) return false;
    exec_locked(li, Mode::kStop);
    pl.combiner.unlock();
    return true;
  }

  // The hook's nudge: apply |li|; if it stopped at a scan, bring the other logs to it (stop mode)
  // and try again, so a replica with no threads of its own still gets past scans.
  void nudge(uint32_t li) {
    if (!try_sync_log(li)) return;
    if (logs_[li].at_scan.load(std::memory_order_acquire) == 0) return;
    help(group_.all_logs_mask(), li);
    try_sync_log(li);
  }

  // Runs |f(const D&)| on the replica without syncing (digests after sync()).
  template <typename F>
  auto inspect(F&& f) const {
    return f(static_cast<const D&>(*data_));
  }

  uint64_t scans_executed() const { return scans_executed_.load(std::memory_order_relaxed); }
  uint64_t combined_batches() const { return batches_.load(std::memory_order_relaxed); }
  uint64_t combined_ops() const { return combined_ops_.load(std::memory_order_relaxed); }

 private:
  friend class CnrGroup<D, M, L>;
  // kWait: the applier owns an operation and waits in place at a scan. kStop: a helper; it
  // records arrival at a scan and stops before it.
  enum class Mode : uint8_t { kWait, kStop };

  using Context = detail::FcSlot<WriteOp, Response>;

  // A thread's slot for the scan it issued (answered by whoever executes the scan here).
  struct alignas(kInterferenceSize) ScanContext {
    std::atomic<uint64_t> done_id{0};  // the scan id whose response is in |response|
    Response response{};
  };

  // Everything this replica keeps per log, on its own lines.
  struct alignas(kInterferenceSize) PerLog {
    CombinerLock combiner;
    std::unique_ptr<Context[]> contexts;
    // The scan this log's apply has reached and waits at (0: none), and the last scan released
    // for this log. Written by this log's combiner / the scan's executor; read by waiters.
    alignas(kInterferenceSize) std::atomic<uint64_t> at_scan{0};
    std::atomic<uint64_t> released_scan{0};
    // The scan id claimed for execution with this log as the lowest of its set.
    std::atomic<uint64_t> claimed_scan{0};
    // Combiner-owned batch bookkeeping.
    logs::LogIndex batch_first = 0;
    uint32_t batch_count = 0;
    std::array<uint32_t, kMaxBatch> batch_tids{};
    uint32_t scan_start = 0;
  };

  template <typename... Args>
  ConcurrentReplica(Group& group, logs::ReplicaId id, ReplicaOptions options, Args&&... args)
      : group_(group),
        id_(id),
        options_(options),
        logs_(new PerLog[group.log_count()]),
        scan_contexts_(new ScanContext[options.max_threads]),
        data_(std::make_unique<D>(std::forward<Args>(args)...)) {
    for (uint32_t i = 0; i < group.log_count(); ++i) logs_[i].contexts.reset(new Context[options.max_threads]);
  }

  void check_token(ThreadToken token) const {
    NRX_CHECK(token.tid < options_.max_threads, "thread token out of range");
    NRX_DCHECK(token.replica == this, "thread token of another replica");
  }

  Result<Response> scan(const ScanOp& op, ScanKind kind, ThreadToken token) {
    check_token(token);
    const uint64_t mask = group_.mapper().scan_mask(op, group_.log_count()) & group_.all_logs_mask();
    if (mask == 0) return Status::invalid_argument("scan touches no log");
    Entry e{};
    e.kind = kind == ScanKind::kRead ? Entry::kScanRead : Entry::kScanUpdate;
    e.issuer_replica = id_;
    e.issuer_tid = token.tid;
    e.scan_mask = mask;
    e.scan = op;
    {
      ScanOrder& order = *group_.order_;
      // Waiting for another process's scan: keep our replica moving on every log (its holder may
      // be waiting for space that only we can free).
      NRX_ASSIGN_OR_RETURN(std::optional<ScanOrder::Orphan> orphan,
                           order.lock([this] { help(group_.all_logs_mask(), UINT32_MAX); }));
      if (orphan.has_value() && orphan->id != 0) {
        if (Status st = complete_orphan(*orphan); !st.ok()) {
          order.unlock_keeping_orphan();  // the next holder tries again
          return st;
        }
      }
      e.scan_id = order.next_id();
      order.record(e.scan_id, mask, std::as_bytes(std::span<const Entry>(&e, 1)));
      Status st = insert(e);
      order.unlock();
      NRX_RETURN_IF_ERROR(st);
    }
    ScanContext& sc = scan_contexts_[token.tid];
    SpinWait wait;
    // acquire: pairs with the executor's release; the response is visible.
    for (uint32_t spins = 0; sc.done_id.load(std::memory_order_acquire) != e.scan_id; ++spins) {
      help(mask, UINT32_MAX);
      if ((spins & 1023) == 1023) recover_orphan();
      wait.pause();
    }
    return std::move(sc.response);
  }

  // With the scan lock held: appends our new scan |e| to every log of its mask, in ascending
  // order. A waiter at |e| holds the combiner of a log |e| already entered, and we only need the
  // higher ones next, so waiting for their combiners closes no cycle.
  Status insert(const Entry& e) {
    for (uint64_t m = e.scan_mask; m != 0; m &= m - 1) {
      const uint32_t li = static_cast<uint32_t>(std::countr_zero(m));
      if (Status st = append_one(li, e); !st.ok()) {
        // The scan sits in some logs but will never reach this one: nobody can run it, and
        // every log it entered would stop at it for good. Cancel it (still under the scan lock,
        // so no later scan is ordered after it yet); appliers then skip its entries.
        group_.order_->cancel(e.scan_id);
        return st;
      }
    }
    return ok_status();
  }

  Status append_one(uint32_t li, const Entry& e) {
    PerLog& pl = logs_[li];
    // Our combiner of this log, only for the append (apply_own may run while it waits for
    // space). Never two at once, so no lock order to get wrong.
    pl.combiner.lock();
    Status st = append_locked(li, &e, 1);
    pl.combiner.unlock();
    return st;
  }

  // With the scan lock taken over from a dead holder: appends its scan to every log of its mask
  // (a log that holds it already gets a second copy, which replicas skip) and forgets it.
  // In DESCENDING log order: the dead holder went up from the lowest log, so the logs that already
  // hold the orphan are the low ones, where one of our own threads may wait at it holding that
  // log's combiner. Going down, every log above already holds it when we reach such a log, so
  // the waiter's replica runs the orphan and the waiter lets go (ascending, we would wait for it
  // while it waits for us). Never cancelled: the orphan may sit in every log already and have run
  // somewhere; if an append fails (a log stayed full), the caller releases the lock keeping the
  // record and the next holder tries again.
  Status complete_orphan(const ScanOrder::Orphan& orphan) {
    ScanOrder& order = *group_.order_;
    Entry e{};
    const bool fits = orphan.entry.size() == sizeof(Entry);
    if (fits) std::memcpy(static_cast<void*>(&e), orphan.entry.data(), sizeof(Entry));
    if (!fits || e.scan_id != orphan.id || e.scan_mask != orphan.mask || (e.scan_mask & ~group_.all_logs_mask()) != 0 ||
        (e.kind != Entry::kScanRead && e.kind != Entry::kScanUpdate)) {
      // Not an entry this build wrote: it cannot be completed, so nobody may wait for it.
      order.cancel(orphan.id);
      order.clear_orphan();
      return ok_status();
    }
    for (uint64_t m = e.scan_mask; m != 0;) {
      const uint32_t li = 63 - static_cast<uint32_t>(std::countl_zero(m));
      m &= ~(uint64_t{1} << li);
      NRX_RETURN_IF_ERROR(append_one(li, e));
    }
    order.clear_orphan();
    orphans_completed_.fetch_add(1, std::memory_order_relaxed);
    return ok_status();
  }

 public:
  // If the scan lock's holder died, takes the lock over and completes its scan (see scan_order.h,
  // "Orphans"). Never waits for a live holder. Called from wait loops (no combiner held) and by
  // owners whose threads may all be waiting at the orphan (the kernel's idle tick).
  void recover_orphan() {
    ScanOrder& order = *group_.order_;
    std::optional<ScanOrder::Orphan> orphan = order.try_take_over();
    if (!orphan.has_value()) return;
    if (orphan->id != 0 && !complete_orphan(*orphan).ok()) {
      order.unlock_keeping_orphan();  // the next holder tries again
      return;
    }
    order.unlock();
  }
  uint64_t orphans_completed() const { return orphans_completed_.load(std::memory_order_relaxed); }

 private:

  // Appends |n| entries to log |li| with this replica's combiner of that log held.
  Status append_locked(uint32_t li, const Entry* const* entries, uint32_t n) {
    Log<Entry, L> typed(group_.log(li));
    auto r = typed.append(id_, std::span<const Entry* const>(entries, n),
                          [this, li](logs::LogIndex i, logs::ReplicaId w, const Entry& e) {
                            apply(li, i, w, e, Mode::kWait);
                          });
    if (!r.ok()) return r.status();
    logs_[li].batch_first = *r;
    return ok_status();
  }
  Status append_locked(uint32_t li, const Entry* e, uint32_t n) {
    const Entry* one[] = {e};
    return append_locked(li, one, n);
  }

  void combine_locked(uint32_t li) {
    PerLog& pl = logs_[li];
    std::array<Entry, kMaxBatch> entries;
    std::array<const Entry*, kMaxBatch> ptrs;
    uint32_t n = 0;
    const uint32_t threads = num_threads_.load(std::memory_order_acquire);
    for (uint32_t t = 0; t < threads && n < kMaxBatch; ++t) {
      const uint32_t slot = (pl.scan_start + t) % threads;
      if (pl.contexts[slot].pending()) {
        entries[n] = Entry{};
        entries[n].kind = Entry::kWrite;
        entries[n].write = pl.contexts[slot].op;
        ptrs[n] = &entries[n];
        pl.batch_tids[n] = slot;
        ++n;
      }
    }
    if (threads != 0) pl.scan_start = (pl.scan_start + 1) % threads;
    if (n == 0) {
      exec_locked(li, Mode::kWait);
      return;
    }
    pl.batch_count = 0;  // entries applied while append waits for space are never ours
    Status st = append_locked(li, ptrs.data(), n);
    if (!st.ok()) {
      for (uint32_t k = 0; k < n; ++k) detail::fail(pl.contexts[pl.batch_tids[k]], st);
      return;
    }
    pl.batch_count = n;
    exec_locked(li, Mode::kWait);
    batches_.fetch_add(1, std::memory_order_relaxed);
    combined_ops_.fetch_add(n, std::memory_order_relaxed);
    for (uint32_t k = 0; k < n; ++k) detail::complete(pl.contexts[pl.batch_tids[k]]);
    pl.batch_count = 0;
  }

  void exec_locked(uint32_t li, Mode mode) {
    Log<Entry, L> typed(group_.log(li));
    auto done = typed.exec_while(id_, [this, li, mode](logs::LogIndex i, logs::ReplicaId w, const Entry& e) {
      return apply(li, i, w, e, mode);
    });
    if (!done.ok()) {
      // Not registered, or (shared logs) fenced: the other replicas went on without this one, so
      // it must not apply anything more. A fenced process stops here, loudly.
      const std::string why = "CNR replica " + std::to_string(id_) + " cannot apply log " + std::to_string(li) + ": " +
                              done.status().to_string();
      ::nrx::detail::check_failed(__FILE__, __LINE__, "done.ok()", why.c_str());
    }
  }

  // Applies one entry of log |li| (this replica's combiner of |li| is held). Returns false when
  // it stopped before a scan (stop mode only).
  bool apply(uint32_t li, logs::LogIndex index, logs::ReplicaId writer, const Entry& e, Mode mode) {
    PerLog& pl = logs_[li];
    if (e.kind == Entry::kWrite) {
      Response r;
      if constexpr (requires { data_->dispatch_mut(e.write, ApplyContext{}); }) {
        r = data_->dispatch_mut(e.write, ApplyContext{index, writer, id_, li});
      } else {
        r = data_->dispatch_mut(e.write);
      }
      if (writer == id_ && index >= pl.batch_first && index - pl.batch_first < pl.batch_count) {
        pl.contexts[pl.batch_tids[index - pl.batch_first]].response = std::move(r);
      }
      return true;
    }
    if (e.kind != Entry::kScanRead && e.kind != Entry::kScanUpdate) return true;  // unknown: skipped everywhere
    // A scan entry from a shared log is input: one whose mask misses this log or names logs we do
    // not have is skipped too (every replica reads the same bytes, so all skip it).
    if ((e.scan_mask >> li & 1) == 0 || (e.scan_mask & ~group_.all_logs_mask()) != 0) return true;
    // Every replica stops at every scan, also a scan-read it will not execute. Otherwise a
    // replica could complete a write placed after the scan in one log and then a write placed
    // before it in a log the scan has not entered yet, and the scan's cut would see the second
    // without the first. As a barrier, no write after the scan completes anywhere until the scan
    // sits in all its logs.
    return arrive(li, e, mode);
  }

  // Log |li| has reached scan |e|. Records the arrival, executes the scan if every log of it has
  // arrived, and then either consumes the entry (the scan ran here), stops before it (kStop), or
  // waits in place helping the other logs until someone runs it (kWait).
  bool arrive(uint32_t li, const Entry& e, Mode mode) {
    PerLog& pl = logs_[li];
    // acquire: pairs with the executor's release; the scan's effects are visible.
    if (pl.released_scan.load(std::memory_order_acquire) == e.scan_id || group_.is_cancelled(e.scan_id)) {
      pl.at_scan.store(0, std::memory_order_relaxed);
      return true;
    }
    // release: our log's earlier entries are applied before anyone sees us arrived.
    pl.at_scan.store(e.scan_id, std::memory_order_release);
    SpinWait wait;
    for (;;) {
      try_execute(e);
      if (pl.released_scan.load(std::memory_order_acquire) == e.scan_id) {
        pl.at_scan.store(0, std::memory_order_relaxed);
        return true;
      }
      if (mode == Mode::kStop) return false;
      if (group_.is_cancelled(e.scan_id)) {  // its insertion failed while we waited
        pl.at_scan.store(0, std::memory_order_relaxed);
        return true;
      }
      help(e.scan_mask, li);
      wait.pause();
    }
  }

  // Executes scan |e| here if every log it touches has arrived at it and nobody else claimed it.
  // Claims are monotone (scan ids grow along every log): a thread that saw the arrivals of |e|,
  // stalled, and resumes after |e| and later scans ran, finds a higher claim and does nothing.
  void try_execute(const Entry& e) {
    if (!all_arrived(e)) return;
    PerLog& lowest = logs_[std::countr_zero(e.scan_mask)];
    uint64_t claimed = lowest.claimed_scan.load(std::memory_order_acquire);
    do {
      if (claimed >= e.scan_id) return;  // |e| (or a later scan) is claimed already
      // acq_rel: exactly one arrived applier executes the scan; it sees the others' arrivals.
    } while (!lowest.claimed_scan.compare_exchange_weak(claimed, e.scan_id, std::memory_order_acq_rel,
                                                       std::memory_order_acquire));
    execute_scan_entry(e);
  }

  bool all_arrived(const Entry& e) const {
    for (uint64_t m = e.scan_mask; m != 0; m &= m - 1) {
      // acquire: pairs with arrive()'s release; that log's earlier entries are applied.
      if (logs_[std::countr_zero(m)].at_scan.load(std::memory_order_acquire) != e.scan_id) return false;
    }
    return true;
  }

  // Runs the scan (a scan-read only at its issuer), answers the issuer, and releases its logs.
  void execute_scan_entry(const Entry& e) {
    const bool here = e.kind == Entry::kScanUpdate || e.issuer_replica == id_;
    Response r{};
    if (here) {
      if (e.kind == Entry::kScanRead) {
        r = data_->dispatch_scan(e.scan);
      } else if constexpr (requires { data_->dispatch_scan_mut(e.scan, ApplyContext{}); }) {
        r = data_->dispatch_scan_mut(e.scan, ApplyContext{e.scan_id, e.issuer_replica, id_, kScanLogs});
      } else {
        r = data_->dispatch_scan_mut(e.scan);
      }
      scans_executed_.fetch_add(1, std::memory_order_relaxed);
    }
    if (e.issuer_replica == id_ && e.issuer_tid < options_.max_threads) {  // (an orphan's issuer is gone)
      ScanContext& sc = scan_contexts_[e.issuer_tid];
      sc.response = std::move(r);
      // release: the response is visible before the issuer sees its scan done.
      sc.done_id.store(e.scan_id, std::memory_order_release);
    }
    for (uint64_t m = e.scan_mask; m != 0; m &= m - 1) {
      // release: the scan's effects are visible before any of its logs moves past it.
      logs_[std::countr_zero(m)].released_scan.store(e.scan_id, std::memory_order_release);
    }
  }

  // Applies the logs in |mask| other than |skip| whose combiner is free here.
  void help(uint64_t mask, uint32_t skip) {
    for (uint64_t m = mask; m != 0; m &= m - 1) {
      const uint32_t li = static_cast<uint32_t>(std::countr_zero(m));
      if (li != skip) try_sync_log(li);
    }
  }

  Group& group_;
  const logs::ReplicaId id_;
  const ReplicaOptions options_;
  std::unique_ptr<PerLog[]> logs_;
  std::unique_ptr<ScanContext[]> scan_contexts_;
  std::atomic<uint32_t> num_threads_{0};
  std::unique_ptr<D> data_;
  std::atomic<uint64_t> scans_executed_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> combined_ops_{0};
  std::atomic<uint64_t> orphans_completed_{0};
};

template <ConcurrentDispatch D, LogMapperFor<D> M, typename L>
void CnrGroup<D, M, L>::nudge(uint32_t log_id, logs::ReplicaId r) {
  Replica* rep = nullptr;
  {
    MutexLock lock(replicas_mu_);
    if (r < replicas_.size()) rep = replicas_[r];
  }
  if (rep != nullptr) rep->nudge(log_id);
}

}  // namespace nrx::nr
