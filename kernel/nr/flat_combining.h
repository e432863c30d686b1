// Flat combining's per-thread half, shared by Replica (NR) and ConcurrentReplica (CNR): the slot in
// which a thread posts its operation, the post-and-wait loop, how a combiner answers a slot, and
// thread-slot registration (Hendler et al., "Flat Combining and the Synchronization-Parallelism
// Tradeoff", SPAA'10; NR's use of it, ASPLOS'17 section 4).
//
// Protocol of one slot: the owner writes |op| while kEmpty and publishes kPending (release); a
// combiner that sees kPending (acquire) reads |op|, writes |response| (or |error|) and publishes
// kDone (or kFailed) (release); the owner sees it (acquire), takes the result and resets kEmpty.
// Between its kPending and kDone only the combiner touches the slot; otherwise only its owner.
//
//   detail::FcSlot<Op, Resp> slot;                                   // one per thread
//   auto r = detail::post_and_wait(slot, op, [&] { return try_combine(); });
//   // in the combiner, for each slot it took: detail::answer(slot, response);
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "base/cacheline.h"
#include "base/spin.h"
#include "base/status.h"

namespace nrx::nr::detail {

enum FcState : uint32_t { kEmpty = 0, kPending = 1, kDone = 2, kFailed = 3 };

// One thread's flat-combining slot, on its own lines.
template <typename Op, typename Response>
struct alignas(kInterferenceSize) FcSlot {
  std::atomic<uint32_t> state{kEmpty};
  Op op;
  Response response{};
  Status error;

  // For the combiner: is an op posted here? (acquire: the op is then readable.)
  bool pending() const { return state.load(std::memory_order_acquire) == kPending; }
};

// Posts |op| in |slot| and waits for its result. |try_combine| is called while the op is pending:
// it tries the combiner lock and, if it got it, combines once (possibly answering this slot).
template <typename Op, typename Response, typename TryCombine>
Result<Response> post_and_wait(FcSlot<Op, Response>& slot, const Op& op, TryCombine&& try_combine) {
  slot.op = op;
  // release: the op is written before a combiner sees it pending.
  slot.state.store(kPending, std::memory_order_release);
  SpinWait wait;
  uint32_t state;
  // acquire: pairs with the combiner's release of kDone/kFailed; the result is visible.
  while ((state = slot.state.load(std::memory_order_acquire)) == kPending) {
    if (!try_combine()) wait.pause();
  }
  slot.state.store(kEmpty, std::memory_order_relaxed);  // only the owner touches a kEmpty slot
  if (state == kFailed) return std::move(slot.error);
  return std::move(slot.response);
}

// The combiner's answers. The response itself is usually written earlier, while applying.
template <typename Op, typename Response>
void complete(FcSlot<Op, Response>& slot) {
  // release: the response is visible before the owner sees kDone.
  slot.state.store(kDone, std::memory_order_release);
}
template <typename Op, typename Response>
void fail(FcSlot<Op, Response>& slot, const Status& error) {
  slot.error = error;
  // release: the error is visible before the owner sees kFailed.
  slot.state.store(kFailed, std::memory_order_release);
}

// Hands out the next of |max| thread slots of replica |replica| from |count|.
// Errors: kResourceExhausted when all |max| are taken.
inline Result<uint32_t> claim_thread_slot(std::atomic<uint32_t>& count, uint32_t max, uint32_t replica) {
  uint32_t n = count.load(std::memory_order_relaxed);
  do {
    if (n >= max) {
      return Status::resource_exhausted("replica " + std::to_string(replica) + " already has its " +
                                        std::to_string(max) + " threads");
    }
    // release: a combiner that counts this slot sees it constructed (kEmpty).
  } while (!count.compare_exchange_weak(n, n + 1, std::memory_order_release, std::memory_order_relaxed));
  return n;
}

}  // namespace nrx::nr::detail
