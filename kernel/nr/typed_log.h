// nrx::nr::Log<Op>: the typed view of a byte-level logs::Log for one fixed-size operation type.
//
// It checks once, at construction, that Op fits the log's entries; append copies the ops' bytes,
// exec decodes each entry back into an Op (memcpy: slots are not aligned for every Op) after
// checking its length, so an entry of the wrong size, e.g. written by a machine running another
// build, is skipped and counted instead of being misread. Every replica skips the same entries,
// so their states still agree.
//
// L is the backend type: logs::Log (any backend, one virtual call per batch and per accessor) or a
// final backend class such as logs::RingLog, whose calls the compiler binds directly and inlines
// (DESIGN 3.4: no virtual call per op on the hot path).
//
// Thread safety: as logs::Log (one combiner per replica calls append/exec for that replica).
//
//   nr::Log<Op> typed(bytes_log);                     // bytes_log.entry_size >= sizeof(Op)
//   const Op* ops[] = {&a, &b};
//   typed.append(replica, ops, [](logs::LogIndex, logs::ReplicaId, const Op&) {});
//   typed.exec(replica, [&](logs::LogIndex i, logs::ReplicaId w, const Op& op) { apply(op); });
#pragma once

#include <array>
#include <atomic>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>

#include "base/status.h"
#include "logs/log.h"

namespace nrx::nr {

template <typename Op, typename L = logs::Log>
  requires std::is_trivially_copyable_v<Op> && std::is_base_of_v<logs::Log, L>
class Log {
 public:
  static constexpr size_t kMaxBatch = 64;

  // Errors: kInvalidArgument when Op does not fit the log's entry size.
  static Status check_fits(const logs::Log& log) {
    if (sizeof(Op) > log.options().entry_size) {
      return Status::invalid_argument("operation of " + std::to_string(sizeof(Op)) + " bytes does not fit log " +
                                      std::to_string(log.options().log_id) + " entries of " +
                                      std::to_string(log.options().entry_size) + " bytes");
    }
    return ok_status();
  }

  explicit Log(L& log) : log_(log) {}

  L& bytes() const { return log_; }
  uint64_t skipped_entries() const { return skipped_.load(std::memory_order_relaxed); }

  // Appends |ops| (at most kMaxBatch) as one reservation; see logs::Log::append.
  // F: void(logs::LogIndex, logs::ReplicaId, const Op&), applies this replica's entries while full.
  template <typename F>
  Result<logs::LogIndex> append(logs::ReplicaId replica, std::span<const Op* const> ops, F&& apply_own) {
    if (ops.size() > kMaxBatch) return Status::invalid_argument("typed batch larger than kMaxBatch");
    std::array<std::span<const std::byte>, kMaxBatch> entries;
    for (size_t i = 0; i < ops.size(); ++i) {
      entries[i] = std::span<const std::byte>(reinterpret_cast<const std::byte*>(ops[i]), sizeof(Op));
    }
    return log_.append(replica, logs::Batch(entries.data(), ops.size()), decoder(apply_own));
  }

  template <typename F>
  Result<logs::LogIndex> exec(logs::ReplicaId replica, F&& visitor) {
    return log_.exec(replica, decoder(visitor));
  }

  // F: bool(logs::LogIndex, logs::ReplicaId, const Op&); false stops before that entry.
  template <typename F>
  Result<logs::LogIndex> exec_while(logs::ReplicaId replica, F&& visitor) {
    return log_.exec_while(replica, [this, &visitor](const logs::Entry& e) {
      if (e.data.size() != sizeof(Op)) {
        skipped_.fetch_add(1, std::memory_order_relaxed);
        return true;
      }
      Op op;
      std::memcpy(&op, e.data.data(), sizeof(Op));
      return static_cast<bool>(visitor(e.index, e.writer, op));
    });
  }

 private:
  template <typename F>
  auto decoder(F& visitor) {
    return [this, &visitor](const logs::Entry& e) {
      if (e.data.size() != sizeof(Op)) {
        skipped_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      Op op;
      std::memcpy(&op, e.data.data(), sizeof(Op));
      visitor(e.index, e.writer, op);
    };
  }

  L& log_;
  std::atomic<uint64_t> skipped_{0};
};

}  // namespace nrx::nr
