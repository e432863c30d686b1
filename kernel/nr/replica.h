// nrx::nr::Replica<D>: one node-local replica of a sequential data structure D, kept consistent
// with the other replicas through a shared operation log (node replication: Calciu et al.,
// "Black-box Concurrent Data Structures for NUMA Architectures", ASPLOS'17; NrOS, OSDI'21).
//
// Algorithm
// - Writes (execute_mut) go through flat combining: the thread posts its op in its own context
//   slot and tries the replica's combiner lock. The winner (the combiner) collects up to kMaxBatch
//   posted ops, appends them to the log with ONE reservation, applies the log up to the tail under
//   the writer lock (its own ops and everybody else's, in log order) and hands each poster its
//   response. Losers spin on their own slot, not on a shared line.
// - Reads (execute) snapshot the log's ctail, make sure this replica has applied at least that far
//   (catching up as combiner if nobody else is), then run against the local copy under the
//   distributed readers-writer lock. A read therefore sees every write that completed before it
//   started, anywhere: that is what makes the replicated structure linearizable.
// - When the log is full, the append path applies this replica's own entries and calls the log's
//   lagging-replica hook for the replica holding the head back; the hook's owner nudges it, e.g.
//   with try_sync() from another thread (the kernel sends a message to one of its cores).
//
// Invariants
// - data_ changes only while the combiner lock AND the writer lock are held, and only by applying
//   log entries in index order: replicas that applied the same prefix are equal.
// - A context slot is written by its owner thread while kEmpty, by the combiner while kPending.
//
// L is the log backend type: logs::Log for any backend chosen at run time, or a final backend class
// (logs::RingLog) so that the per-op calls (ctail, is_synced_for_reads) bind statically and
// inline. Backends are picked once, at boot; the choice is a template argument, not a virtual
// call per operation (DESIGN 3.4).
//
// Thread safety: every public method is safe from any registered thread; a ThreadToken must be
// used by one thread at a time. A replica must outlive every thread using it.
//
//   auto log = logs::RingLog::create({.entry_size = 32}).value();
//   auto replica = nr::Replica<HashMap, logs::RingLog>::create(*log).value();
//   auto token = replica->register_thread().value();
//   replica->execute_mut({HashMap::WriteOp::kPut, 1, 42}, token).value();
//   std::optional<uint64_t> v = replica->execute({HashMap::ReadOp::kGet, 1}, token);
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/cacheline.h"
#include "base/spin.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "kernel/nr/dispatch.h"
#include "kernel/nr/flat_combining.h"
#include "kernel/nr/rwlock.h"
#include "kernel/nr/typed_log.h"
#include "logs/log.h"

namespace nrx::nr {

// A registered thread's handle on its replica: its context slot and reader flag.
struct ThreadToken {
  uint32_t tid = UINT32_MAX;
  const void* replica = nullptr;  // which replica issued it (checked in debug builds)
};

struct ReplicaOptions {
  uint32_t max_threads = 64;  // threads that may register with this replica
};

template <Dispatch D, typename L = logs::Log>
class Replica {
 public:
  using ReadOp = typename D::ReadOp;
  using WriteOp = typename D::WriteOp;
  using Response = typename D::Response;

  // Most ops one combiner round appends with one reservation.
  static constexpr uint32_t kMaxBatch = 32;

  // Registers a new replica of |initial| with |log|.
  // Errors: kInvalidArgument (WriteOp does not fit the log's entries, max_threads 0),
  // kResourceExhausted (the log has no replica id left).
  static Result<std::unique_ptr<Replica>> create(L& log, D initial = D{}, ReplicaOptions options = {}) {
    NRX_RETURN_IF_ERROR(Log<WriteOp, L>::check_fits(log));
    if (options.max_threads == 0) return Status::invalid_argument("a replica needs max_threads >= 1");
    NRX_ASSIGN_OR_RETURN(logs::ReplicaId id, log.register_replica());
    return std::unique_ptr<Replica>(new Replica(log, id, std::move(initial), options));
  }

  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;

  logs::ReplicaId id() const { return id_; }
  L& log() const { return log_.bytes(); }

  // Errors: kResourceExhausted when max_threads threads are registered.
  Result<ThreadToken> register_thread() {
    NRX_ASSIGN_OR_RETURN(uint32_t tid, detail::claim_thread_slot(num_threads_, options_.max_threads, id_));
    rwlock_.activate_reader(tid);
    return ThreadToken{tid, this};
  }

  // Executes a read-only op on this replica, after syncing it to the log's ctail.
  Response execute(const ReadOp& op, ThreadToken token) NRX_EXCLUDES(combiner_, rwlock_) {
    check_token(token);
    const logs::LogIndex ctail = log_.bytes().ctail();
    SpinWait wait;
    while (!log_.bytes().is_synced_for_reads(id_, ctail)) {
      if (combiner_.try_lock()) {
        exec_locked();
        combiner_.unlock();
        break;
      }
      wait.pause();  // a combiner is applying the log right now
    }
    SharedLockGuard reader(rwlock_, token.tid);
    return data_.dispatch(op);
  }

  // Executes a mutating op through the log; returns its response once this replica applied it.
  // Errors: whatever the log's append returned for the batch that carried |op|, typically
  // kDeadlineExceeded (the log stayed full; the op was not executed anywhere).
  Result<Response> execute_mut(const WriteOp& op, ThreadToken token) NRX_EXCLUDES(combiner_, rwlock_) {
    check_token(token);
    return detail::post_and_wait(contexts_[token.tid], op, [this] {
      if (!combiner_.try_lock()) return false;
      combine_locked();
      combiner_.unlock();
      return true;
    });
  }

  // Applies everything in the log up to its current tail to this replica; waits for the combiner.
  void sync() NRX_EXCLUDES(combiner_, rwlock_) {
    combiner_.lock();
    exec_locked();
    combiner_.unlock();
  }

  // Like sync(), but returns false at once if another thread is combining (it will apply the log
  // anyway). Safe to call from any thread, also from a lagging-replica hook running on another
  // replica's combiner: it never blocks, so replicas nudging each other cannot deadlock.
  bool try_sync() NRX_EXCLUDES(combiner_, rwlock_) {
    if (!combiner_.try_lock()) return false;
    exec_locked();
    combiner_.unlock();
    return true;
  }

  // Runs |f(const D&)| on the local copy under the reader lock, without syncing first. For
  // digests and statistics after a sync(); not linearizable on its own.
  template <typename F>
  auto inspect(ThreadToken token, F&& f) NRX_EXCLUDES(rwlock_) {
    check_token(token);
    SharedLockGuard reader(rwlock_, token.tid);
    return f(static_cast<const D&>(data_));
  }

  // Ops posted and not yet answered, right now (a racy snapshot, for tests and statistics).
  uint32_t posted_ops() const {
    uint32_t n = 0;
    const uint32_t threads = num_threads_.load(std::memory_order_acquire);
    for (uint32_t t = 0; t < threads; ++t) n += contexts_[t].state.load(std::memory_order_relaxed) == detail::kPending;
    return n;
  }

  // Statistics (relaxed counters).
  uint64_t combined_batches() const { return batches_.load(std::memory_order_relaxed); }
  uint64_t combined_ops() const { return combined_ops_.load(std::memory_order_relaxed); }
  uint64_t skipped_entries() const { return log_.skipped_entries(); }

 private:
  using Context = detail::FcSlot<WriteOp, Response>;

  Replica(L& log, logs::ReplicaId id, D initial, ReplicaOptions options)
      : log_(log),
        id_(id),
        options_(options),
        contexts_(new Context[options.max_threads]),
        rwlock_(options.max_threads),
        data_(std::move(initial)) {}

  void check_token(ThreadToken token) const {
    NRX_CHECK(token.tid < options_.max_threads, "thread token out of range");
    NRX_DCHECK(token.replica == this, "thread token of another replica");
  }

  // Collects up to kMaxBatch posted ops, appends them with one reservation and applies the log.
  void combine_locked() NRX_REQUIRES(combiner_) NRX_EXCLUDES(rwlock_) {
    std::array<const WriteOp*, kMaxBatch> ops;
    uint32_t n = 0;
    const uint32_t threads = num_threads_.load(std::memory_order_acquire);
    for (uint32_t t = 0; t < threads && n < kMaxBatch; ++t) {
      // Round-robin start so that with more than kMaxBatch posters nobody waits forever.
      const uint32_t slot = (scan_start_ + t) % threads;
      if (contexts_[slot].pending()) {
        ops[n] = &contexts_[slot].op;
        batch_tids_[n] = slot;
        ++n;
      }
    }
    if (threads != 0) scan_start_ = (scan_start_ + 1) % threads;
    if (n == 0) {
      exec_locked();
      return;
    }
    batch_count_ = 0;  // entries applied while append waits for space are never ours
    auto appended = log_.append(id_, std::span<const WriteOp* const>(ops.data(), n),
                                [this](logs::LogIndex i, logs::ReplicaId w, const WriteOp& op)
                                    NRX_NO_THREAD_SAFETY_ANALYSIS {  // runs inside append, under our combiner
                                      rwlock_.lock();
                                      apply_locked(i, w, op);
                                      rwlock_.unlock();
                                    });
    if (!appended.ok()) {
      for (uint32_t k = 0; k < n; ++k) detail::fail(contexts_[batch_tids_[k]], appended.status());
      return;
    }
    batch_first_ = *appended;
    batch_count_ = n;
    exec_locked();
    batches_.fetch_add(1, std::memory_order_relaxed);
    combined_ops_.fetch_add(n, std::memory_order_relaxed);
    for (uint32_t k = 0; k < n; ++k) detail::complete(contexts_[batch_tids_[k]]);
    batch_count_ = 0;
  }

  // Applies the log up to its tail under the writer lock.
  void exec_locked() NRX_REQUIRES(combiner_) NRX_EXCLUDES(rwlock_) {
    rwlock_.lock();
    auto done = log_.exec(id_, [this](logs::LogIndex i, logs::ReplicaId w, const WriteOp& op)
                                   NRX_NO_THREAD_SAFETY_ANALYSIS {  // runs inside exec, under both locks
                                     apply_locked(i, w, op);
                                   });
    rwlock_.unlock();
    // exec fails only for an unregistered replica, and this one registered in create().
    NRX_CHECK(done.ok(), "replica is not registered with its log");
  }

  void apply_locked(logs::LogIndex index, logs::ReplicaId writer, const WriteOp& op)
      NRX_REQUIRES(combiner_, rwlock_) {
    Response r = apply_write(data_, op, ApplyContext{index, writer, id_});
    if (writer == id_ && index >= batch_first_ && index - batch_first_ < batch_count_) {
      contexts_[batch_tids_[index - batch_first_]].response = std::move(r);
    }
  }

  Log<WriteOp, L> log_;
  const logs::ReplicaId id_;
  const ReplicaOptions options_;
  std::unique_ptr<Context[]> contexts_;
  std::atomic<uint32_t> num_threads_{0};

  CombinerLock combiner_;
  // The batch being combined: its first log index and the contexts its entries answer.
  logs::LogIndex batch_first_ NRX_GUARDED_BY(combiner_) = 0;
  uint32_t batch_count_ NRX_GUARDED_BY(combiner_) = 0;
  std::array<uint32_t, kMaxBatch> batch_tids_ NRX_GUARDED_BY(combiner_){};
  uint32_t scan_start_ NRX_GUARDED_BY(combiner_) = 0;

  DistributedRwLock rwlock_;
  D data_ NRX_GUARDED_BY(rwlock_);

  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> combined_ops_{0};
};

// The replicas of one NR structure over one log: creates the log with the lagging-replica hook
// wired to nudge the replica behind (try_sync(), which never blocks, so replicas nudging each
// other cannot deadlock: the user-space stand-in for NrOS's IPI), and keeps the replicas. Add
// each replica on the thread whose memory it should use (first touch: boot pins one per node).
//
// Thread safety: add_replica is a set-up step (not concurrent with operations); the rest is safe
// from any thread. The group outlives its replicas' users.
//
//   auto g = nr::ReplicaGroup<HashMap, logs::RingLog>::create(opts, &logs::RingLog::create).value();
//   nr::Replica<HashMap, logs::RingLog>* r0 = g->add_replica(HashMap{}).value();
template <Dispatch D, typename L = logs::Log>
class ReplicaGroup {
 public:
  using ReplicaType = Replica<D, L>;

  // |create_log| builds the backend: Result<std::unique_ptr<L>>(const logs::LogOptions&).
  // options.on_lagging is replaced by the group's hook. Errors: the backend's.
  template <typename CreateLog>
  static Result<std::unique_ptr<ReplicaGroup>> create(logs::LogOptions options, CreateLog&& create_log) {
    std::unique_ptr<ReplicaGroup> g(new ReplicaGroup(options.max_replicas));
    ReplicaGroup* raw = g.get();
    options.on_lagging = [raw](uint32_t, logs::ReplicaId r) { raw->nudge(r); };
    auto log = create_log(options);
    if (!log.ok()) return log.status();
    g->log_ = std::move(*log);
    return g;
  }

  // Errors: as Replica::create.
  Result<ReplicaType*> add_replica(D initial, ReplicaOptions options = {}) {
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<ReplicaType> r, ReplicaType::create(*log_, std::move(initial), options));
    ReplicaType* raw = r.get();
    // release: the hook that finds the pointer sees a constructed replica.
    by_id_[raw->id()].store(raw, std::memory_order_release);
    replicas_.push_back(std::move(r));
    return raw;
  }

  L& log() const { return *log_; }
  size_t size() const { return replicas_.size(); }
  ReplicaType& replica(size_t i) const { return *replicas_[i]; }
  uint64_t lagging_nudges() const { return nudges_.load(std::memory_order_relaxed); }

 private:
  explicit ReplicaGroup(uint32_t max_replicas) : by_id_(new std::atomic<ReplicaType*>[max_replicas]) {
    for (uint32_t i = 0; i < max_replicas; ++i) by_id_[i].store(nullptr, std::memory_order_relaxed);
  }

  void nudge(logs::ReplicaId r) {
    nudges_.fetch_add(1, std::memory_order_relaxed);
    // acquire: pairs with add_replica's release.
    if (ReplicaType* rep = by_id_[r].load(std::memory_order_acquire)) rep->try_sync();
  }

  std::unique_ptr<std::atomic<ReplicaType*>[]> by_id_;  // indexed by replica id (< max_replicas)
  std::unique_ptr<L> log_;
  std::vector<std::unique_ptr<ReplicaType>> replicas_;
  std::atomic<uint64_t> nudges_{0};
};

}  // namespace nrx::nr
