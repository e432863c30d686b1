// nrx::mem::DeterministicAllocator: frames for allocations made INSIDE replicated operations
// (DESIGN 4, mem). Every replica applies the same op, but an allocator's answer depends on when it
// is asked, so asking it independently would let replicas diverge (one gets a frame, another runs
// out). Here the first replica to reach an allocation decides for all: it allocates (or fails) once,
// records the outcome under the op's key, and every other replica receives that same outcome.
//
// Two kinds, both decided once:
// - per replica (page-table frames: each replica has its own tables in its own node's memory): the
//   first replica allocates |count| frames for EVERY replica slot, each from that slot's pool; if
//   any of them fails it frees the rest and records the error, so all slots fail alike;
// - shared (memory all replicas map: the same frames for everyone): |count| frames from one pool.
//
// Key: (log index of the op, sequence number of the allocation inside the op), unique per log; one
// allocator serves one replicated structure (one log). An outcome is forgotten once every slot has
// taken it; a slot that never applies the op (a dead replica) leaves it pending, visible in pending().
//
// Thread safety: every method is safe from any thread (one mutex; allocations inside replicated
// ops are rare next to the ops themselves).
//
//   DeterministicAllocator det(memory, {/*slot 0 ->*/ 0, /*slot 1 ->*/ 1});
//   // inside dispatch_mut(op, ctx) on the replica in slot s:
//   auto frames = det.take_per_replica({ctx.index, 0}, s, FrameClass::kBase, 3);
//   if (!frames.ok()) return frames.status();   // every replica returns this same error
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"

namespace nrx::mem {

struct AllocKey {
  uint64_t index = 0;  // the op's log index
  uint32_t seq = 0;    // which allocation of that op
  friend auto operator<=>(const AllocKey&, const AllocKey&) = default;
};

class DeterministicAllocator {
 public:
  // Slot i allocates its per-replica frames from pool slot_pools[i] (at most 64 slots).
  DeterministicAllocator(Memory& memory, std::vector<uint32_t> slot_pools);

  uint32_t slots() const { return static_cast<uint32_t>(slot_pools_.size()); }

  // This slot's |count| frames of |cls| for |key|. Errors (identical for every slot of one key):
  // kResourceExhausted (some slot's pool ran out; nothing stays allocated); kInvalidArgument (bad
  // slot, count 0); kFailedPrecondition (this slot already took |key|, or |key| was used for a
  // shared allocation).
  Result<std::vector<Frame>> take_per_replica(AllocKey key, uint32_t slot, FrameClass cls, uint32_t count)
      NRX_EXCLUDES(mu_);
  // The same |count| frames of |cls| from |pool| for every slot. Errors: as take_per_replica, and
  // kInvalidArgument for an unknown pool.
  Result<std::vector<Frame>> take_shared(AllocKey key, uint32_t slot, uint32_t pool, FrameClass cls, uint32_t count)
      NRX_EXCLUDES(mu_);

  // Outcomes decided but not yet taken by every slot.
  size_t pending() const NRX_EXCLUDES(mu_);

 private:
  struct Outcome {
    bool shared = false;
    Status status;                         // the decision's error, or ok
    std::vector<std::vector<Frame>> frames;  // per slot (one vector when shared)
    uint64_t taken = 0;                    // bit per slot
  };
  Result<std::vector<Frame>> take(AllocKey key, uint32_t slot, bool shared, uint32_t pool, FrameClass cls,
                                  uint32_t count) NRX_EXCLUDES(mu_);
  Outcome decide(bool shared, uint32_t pool, FrameClass cls, uint32_t count);

  Memory& memory_;
  const std::vector<uint32_t> slot_pools_;
  mutable Mutex mu_;
  std::map<AllocKey, Outcome> outcomes_ NRX_GUARDED_BY(mu_);
};

}  // namespace nrx::mem
