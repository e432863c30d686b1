#include "kernel/mem/deterministic_allocator.h"

#include <string>

#include "base/check.h"

namespace nrx::mem {

DeterministicAllocator::DeterministicAllocator(Memory& memory, std::vector<uint32_t> slot_pools)
    : memory_(memory), slot_pools_(std::move(slot_pools)) {
  NRX_CHECK(!slot_pools_.empty() && slot_pools_.size() <= 64, "a deterministic allocator serves 1..64 slots");
  for (uint32_t p : slot_pools_) NRX_CHECK(p < memory_.pool_count(), "slot pool out of range");
}

Result<std::vector<Frame>> DeterministicAllocator::take_per_replica(AllocKey key, uint32_t slot, FrameClass cls,
                                                                    uint32_t count) {
  return take(key, slot, false, 0, cls, count);
}

Result<std::vector<Frame>> DeterministicAllocator::take_shared(AllocKey key, uint32_t slot, uint32_t pool,
                                                               FrameClass cls, uint32_t count) {
  if (pool >= memory_.pool_count()) return Status::invalid_argument("unknown pool " + std::to_string(pool));
  return take(key, slot, true, pool, cls, count);
}

DeterministicAllocator::Outcome DeterministicAllocator::decide(bool shared, uint32_t pool, FrameClass cls,
                                                               uint32_t count) {
  Outcome o;
  o.shared = shared;
  const uint32_t lists = shared ? 1 : slots();
  o.frames.resize(lists);
  for (uint32_t s = 0; s < lists && o.status.ok(); ++s) {
    NCache& cache = memory_.ncache(shared ? pool : slot_pools_[s]);
    for (uint32_t i = 0; i < count; ++i) {
      Result<Frame> f = cache.allocate(cls);
      if (!f.ok()) {
        o.status = f.status();
        break;
      }
      o.frames[s].push_back(*f);
    }
  }
  if (!o.status.ok()) {  // all or nothing: a failure leaves no frame allocated
    for (auto& list : o.frames) {
      for (const Frame& f : list) NRX_CHECK(memory_.ncache(f.pool).free(f).ok(), "freeing a fresh frame failed");
      list.clear();
    }
  }
  return o;
}

Result<std::vector<Frame>> DeterministicAllocator::take(AllocKey key, uint32_t slot, bool shared, uint32_t pool,
                                                        FrameClass cls, uint32_t count) {
  if (slot >= slots()) return Status::invalid_argument("slot " + std::to_string(slot) + " out of range");
  if (count == 0) return Status::invalid_argument("an allocation of 0 frames");
  MutexLock lock(mu_);
  auto it = outcomes_.find(key);
  if (it == outcomes_.end()) it = outcomes_.emplace(key, decide(shared, pool, cls, count)).first;
  Outcome& o = it->second;
  const uint64_t bit = uint64_t{1} << slot;
  if (o.shared != shared) return Status::failed_precondition("allocation key reused with another kind");
  if ((o.taken & bit) != 0) return Status::failed_precondition("slot " + std::to_string(slot) + " took this key twice");
  o.taken |= bit;
  Result<std::vector<Frame>> result = o.status.ok() ? Result<std::vector<Frame>>(o.frames[shared ? 0 : slot])
                                                    : Result<std::vector<Frame>>(o.status);
  const uint64_t all = slots() == 64 ? ~uint64_t{0} : (uint64_t{1} << slots()) - 1;
  if (o.taken == all) outcomes_.erase(it);
  return result;
}

size_t DeterministicAllocator::pending() const {
  MutexLock lock(mu_);
  return outcomes_.size();
}

}  // namespace nrx::mem
