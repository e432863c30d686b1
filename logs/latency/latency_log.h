// nrx::logs::LatencyLog<Inner>: a decorator over any log backend that makes its memory look
// further away: each access the inner log performs is charged a delay drawn from a
// LatencyProfile (latency_profile.h), busy-waited on the calibrated TSC (tsc.h), so
// sub-microsecond delays are exact. The tool for remote-latency sensitivity sweeps (`nrx sweep`,
// DESIGN.md 3.4): local NUMA ~0 ns extra, remote NUMA ~+50..100 ns, CXL +70..250 ns, RDMA us.
//
// What is charged, and when (one access class each, see latency_profile.h):
//   append       reserve once per call, then write once per entry, BEFORE the inner append: the
//                entries become visible to readers no earlier than they would over slow memory.
//                Writes are charged one after the other (no overlap): a pessimistic model that
//                a profile with a smaller write delay can soften.
//   exec,        tail_update once per call that applies at least one entry, charged before the
//   exec_while   first (ctail is raised before any entry is applied), then read once per entry
//                visited, before the visitor sees it. apply_own, called by append while the log
//                is full, is charged the same way.
//   ctail()      ctail_read once per call: every NR read asks how far it must be synced.
//   payload_put  write once; payload_get: payload_read once.
// Not charged: tail(), head(), ltail(), is_synced_for_reads() (statistics, GC and the reader's
// own ltail), and register_replica (set-up). The inner log's internal steps (its own tail reads,
// the wait for an unpublished entry) run at the inner's speed: a decorator cannot widen the window
// between an inner reservation and its publication, only delay around it.
//
// The hot path pays no virtual call of its own: Inner is a template parameter, the class is final,
// and Replica<D, LatencyLog<RingLog>> binds every call statically down to the ring's. With every
// read-side class none (and counting off), exec passes the caller's visitor straight through;
// otherwise one extra indirect call per entry wraps it. LatencyLog<Log> wraps a backend chosen at
// run time (make_latency_log).
//
// Placement instead of injection: on a real NUMA machine, give the inner ring a remote node
// (LogOptions::numa_node; `nrx sweep --log-node N`) and an all-none profile, and the latency is
// measured, not modelled.
//
// Invariants: behaves exactly as Inner (log.h's contract) apart from time; a delay is charged on
// the thread making the access; the profile never changes after create().
//
// Thread safety: as Inner. Each thread draws its delays from its own DelayRng (thread_delay_rng);
// no lock or allocation per access. With count_accesses, counters are relaxed atomics.
//
//   auto profile = nrx::logs::LatencyProfile::parse("fixed:200").value();
//   auto make = nrx::logs::with_latency<nrx::logs::RingLog>(profile, &nrx::logs::RingLog::create);
//   auto group = nr::ReplicaGroup<HashMap, nrx::logs::LatencyLog<nrx::logs::RingLog>>::create(opts, make);
//   // or: auto log = nrx::logs::LatencyLog<nrx::logs::RingLog>::create(ring, profile).value();
//   (*group)->add_replica(HashMap{});  // every append now pays reserve + writes of 200 ns each
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <type_traits>
#include <utility>

#include "base/cacheline.h"
#include "base/status.h"
#include "logs/latency/latency_profile.h"
#include "logs/latency/tsc.h"
#include "logs/log.h"

namespace nrx::logs {

template <typename Inner = Log>
  requires std::is_base_of_v<Log, Inner>
class LatencyLog final : public Log {
 public:
  // Errors: kInvalidArgument when |inner| is null.
  static Result<std::unique_ptr<LatencyLog>> create(std::unique_ptr<Inner> inner, LatencyProfile profile) {
    if (inner == nullptr) return Status::invalid_argument("the latency decorator needs a log to wrap");
    return std::unique_ptr<LatencyLog>(new LatencyLog(std::move(inner), std::move(profile)));
  }
  LatencyLog(const LatencyLog&) = delete;
  LatencyLog& operator=(const LatencyLog&) = delete;

  Inner& inner() const { return *inner_; }
  const LatencyProfile& profile() const { return profile_; }
  // Accesses of class |a| charged so far; 0 unless the profile has count_accesses.
  uint64_t accesses(Access a) const {
    return counts_[static_cast<size_t>(a)].value.load(std::memory_order_relaxed);
  }

  const LogOptions& options() const override { return inner_->options(); }
  Result<ReplicaId> register_replica() override { return inner_->register_replica(); }

  Result<LogIndex> append(ReplicaId replica, Batch batch, EntryVisitor apply_own) override {
    // A batch the inner log will reject outright costs nothing (nothing reaches its memory).
    if (!batch.empty() && batch.size() <= inner_->options().slot_count) {
      charge(Access::kReserve, 1);
      charge(Access::kEntryWrite, batch.size());
    }
    if (plain_apply_) return inner_->append(replica, batch, apply_own);
    auto charged_apply = charged(apply_own);
    return inner_->append(replica, batch, charged_apply);
  }

  Result<LogIndex> exec(ReplicaId replica, EntryVisitor visitor) override {
    if (plain_apply_) return inner_->exec(replica, visitor);
    auto charged_visitor = charged(visitor);
    return inner_->exec(replica, charged_visitor);
  }

  Result<LogIndex> exec_while(ReplicaId replica, StoppingVisitor visitor) override {
    if (plain_apply_) return inner_->exec_while(replica, visitor);
    auto charged_visitor = charged(visitor);
    return inner_->exec_while(replica, charged_visitor);
  }

  LogIndex tail() const override { return inner_->tail(); }
  LogIndex ctail() const override {
    charge(Access::kCtailRead, 1);
    return inner_->ctail();
  }
  LogIndex head() const override { return inner_->head(); }
  Result<LogIndex> ltail(ReplicaId replica) const override { return inner_->ltail(replica); }
  bool is_synced_for_reads(ReplicaId replica, LogIndex ctail) const override {
    return inner_->is_synced_for_reads(replica, ctail);
  }

  Result<PayloadRef> payload_put(std::span<const std::byte> data) override {
    if (!data.empty()) charge(Access::kEntryWrite, 1);
    return inner_->payload_put(data);
  }
  Result<std::span<const std::byte>> payload_get(PayloadRef ref) const override {
    charge(Access::kPayloadRead, 1);
    return inner_->payload_get(ref);
  }
  Status payload_release(ReplicaId replica, PayloadRef ref) override { return inner_->payload_release(replica, ref); }
  uint64_t payloads_live() const override { return inner_->payloads_live(); }

 private:
  struct alignas(kInterferenceSize) PaddedCounter {
    std::atomic<uint64_t> value{0};
  };
  static_assert(sizeof(PaddedCounter) == kInterferenceSize);

  LatencyLog(std::unique_ptr<Inner> inner, LatencyProfile profile)
      : inner_(std::move(inner)),
        profile_(std::move(profile)),
        tsc_(Tsc::get()),
        plain_apply_(profile_[Access::kEntryRead].is_none() && profile_[Access::kTailUpdate].is_none() &&
                     !profile_.count_accesses) {}

  // Charges |n| accesses of class |a| to the calling thread.
  void charge(Access a, uint64_t n) const {
    if (profile_.count_accesses) {
      // relaxed: a statistic; tests read it after joining the threads that counted.
      counts_[static_cast<size_t>(a)].value.fetch_add(n, std::memory_order_relaxed);
    }
    const Delay& d = profile_[a];
    if (d.is_none()) return;
    tsc_.delay_ns(d.sample_total_ns(thread_delay_rng(profile_.seed), n));
  }

  // Wraps an EntryVisitor or StoppingVisitor: tail_update before the first entry, read before each.
  template <typename Visitor>
  auto charged(Visitor& visitor) const {
    return [this, &visitor, first = true](const Entry& e) mutable {
      if (first) {
        first = false;
        charge(Access::kTailUpdate, 1);
      }
      charge(Access::kEntryRead, 1);
      return visitor(e);
    };
  }

  const std::unique_ptr<Inner> inner_;
  const LatencyProfile profile_;
  const Tsc& tsc_;
  // Neither read-side class delays nor counts: exec hands the caller's visitor straight through.
  const bool plain_apply_;
  mutable std::array<PaddedCounter, kAccessClasses> counts_{};
};

// Compiled once in latency_log.cc.
extern template class LatencyLog<Log>;

// Wraps a backend chosen at run time. Errors: kInvalidArgument when |inner| is null.
Result<std::unique_ptr<Log>> make_latency_log(std::unique_ptr<Log> inner, LatencyProfile profile);

// A create_log for nr::ReplicaGroup::create (or any "Result<unique_ptr<L>>(const LogOptions&)"):
// builds the inner backend with |create_inner| and wraps it in the decorator.
template <typename Inner, typename CreateInner>
auto with_latency(LatencyProfile profile, CreateInner create_inner) {
  return [profile = std::move(profile), create_inner](const LogOptions& options)
             -> Result<std::unique_ptr<LatencyLog<Inner>>> {
    Result<std::unique_ptr<Inner>> inner = create_inner(options);
    if (!inner.ok()) return inner.status();
    return LatencyLog<Inner>::create(std::move(*inner), profile);
  };
}

}  // namespace nrx::logs
