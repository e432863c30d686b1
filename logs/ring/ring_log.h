// nrx::logs::RingLog: the local NUMA log, the reference backend of the Log contract (log.h).
//
// Memory: one slot array allocated with libnuma on LogOptions::numa_node (or interleaved), each
// slot a header line (alive marker, writer, length) followed by the entry bytes, rounded up to a
// cache line. tail, head, ctail and every replica's ltail sit on their own 128-byte line, so
// appenders, readers and GC never write the same line (STYLE.md, kInterferenceSize).
//
// Alive markers are per lap: the entry at index i is live when its slot's marker equals
// i / slot_count + 1. A marker is 64 bits, so laps never wrap and a reader never takes last
// lap's entry for this lap's.
//
// Thread safety: as Log (log.h). Payloads use a small mutex-protected free list (payload_put is
// once per bulk operation, never per log entry); gets and releases are lock-free.
//
//   auto log = nrx::logs::RingLog::create({.entry_size = 24, .slot_count = 4096}).value();
//   auto r = log->register_replica().value();
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "base/cacheline.h"
#include "base/mutex.h"
#include "base/thread_annotations.h"
#include "logs/log.h"

namespace nrx::logs {

class RingLog final : public Log {
 public:
  // Errors: kInvalidArgument for a geometry outside the ranges in LogOptions;
  // kResourceExhausted when the slot memory cannot be allocated.
  static Result<std::unique_ptr<RingLog>> create(LogOptions options);
  ~RingLog() override;
  RingLog(const RingLog&) = delete;
  RingLog& operator=(const RingLog&) = delete;

  const LogOptions& options() const override { return options_; }
  Result<ReplicaId> register_replica() override;
  Result<LogIndex> append(ReplicaId replica, Batch batch, EntryVisitor apply_own) override;
  Result<LogIndex> exec(ReplicaId replica, EntryVisitor visitor) override;
  Result<LogIndex> exec_while(ReplicaId replica, StoppingVisitor visitor) override;
  LogIndex tail() const override { return tail_.value.load(std::memory_order_acquire); }
  LogIndex ctail() const override { return ctail_.value.load(std::memory_order_acquire); }
  LogIndex head() const override;
  Result<LogIndex> ltail(ReplicaId replica) const override;
  // Inline: every NR read calls it; through a RingLog& (final) it binds statically.
  bool is_synced_for_reads(ReplicaId replica, LogIndex ctail) const override {
    // acquire: the index we compare is at least as new as the replica state we will read next.
    return registered(replica) && ltails_[replica].value.load(std::memory_order_acquire) >= ctail;
  }
  Result<PayloadRef> payload_put(std::span<const std::byte> data) override;
  Result<std::span<const std::byte>> payload_get(PayloadRef ref) const override;
  Status payload_release(ReplicaId replica, PayloadRef ref) override;
  uint64_t payloads_live() const override { return payloads_live_.load(std::memory_order_relaxed); }

  // Bytes between consecutive slots (header + entry_size, rounded up to a cache line).
  size_t slot_stride() const { return stride_; }

 private:
  // The header at the start of every slot. |alive| is the per-lap marker (lap + 1; 0 = never
  // written); |writer| and |length| are plain fields published by the release store to |alive|.
  struct SlotHeader {
    std::atomic<uint64_t> alive;
    uint32_t writer;
    uint32_t length;
  };
  static_assert(sizeof(SlotHeader) == 16);

  struct alignas(kInterferenceSize) PaddedIndex {
    std::atomic<LogIndex> value{0};
  };
  static_assert(sizeof(PaddedIndex) == kInterferenceSize);

  struct PayloadSlot {
    std::atomic<uint64_t> pending{0};   // replicas that have not released yet (bit per replica)
    std::atomic<uint32_t> generation{0};
    std::atomic<uint32_t> length{0};  // atomic: a stale payload_get may read it during a reuse
    std::unique_ptr<std::byte[]> bytes;
  };

  RingLog(LogOptions options, size_t stride, std::byte* slots, size_t slots_bytes);

  SlotHeader* slot(LogIndex index) const {
    return reinterpret_cast<SlotHeader*>(slots_ + (index & mask_) * stride_);
  }
  bool registered(ReplicaId replica) const {
    return replica < options_.max_replicas && replica < num_replicas_.load(std::memory_order_acquire);
  }
  // Lowest ltail over registered replicas, and the replica holding it.
  LogIndex min_ltail(ReplicaId* laggard) const;
  // Applies this replica's entries [ltail, to) through |visitor| (an EntryVisitor, or a
  // StoppingVisitor that returns false to stop before an entry); returns the new ltail.
  // A template so that plain exec pays one indirect call per entry, not two.
  template <typename Visitor>
  LogIndex apply_until(ReplicaId replica, LogIndex to, Visitor& visitor);

  const LogOptions options_;
  const size_t stride_;
  const uint64_t mask_;
  std::byte* const slots_;
  const size_t slots_bytes_;

  PaddedIndex tail_;
  PaddedIndex ctail_;
  // A cached lower bound of head: appenders recompute it from the ltails only when the log
  // looks full, so the common append reads one shared line, not max_replicas of them.
  PaddedIndex head_;
  std::unique_ptr<PaddedIndex[]> ltails_;
  std::atomic<uint32_t> num_replicas_{0};

  Mutex payload_mu_;  // also serialises register_replica (a set-up step)
  std::vector<uint32_t> payload_free_ NRX_GUARDED_BY(payload_mu_);
  std::unique_ptr<PayloadSlot[]> payloads_;
  std::atomic<uint64_t> payloads_live_{0};
};

}  // namespace nrx::logs
