// nrx::nr::Stack: a sequential LIFO of uint64 with a Dispatch interface, the second structure of
// the NR stress tests (its writes return values, so combining must route responses exactly).
//
// Writes: Push (returns nullopt), Pop (returns the top, or nullopt when empty).
// Reads: Peek, Size, Digest (order-dependent: the stack's order is part of its state).
//
//   nr::Stack s;
//   s.dispatch_mut({nr::Stack::WriteOp::kPush, 5});
//   s.dispatch_mut({nr::Stack::WriteOp::kPop, 0});  // -> 5
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "kernel/nr/ds/hashmap.h"

namespace nrx::nr {

class Stack {
 public:
  struct WriteOp {
    enum Kind : uint8_t { kPush, kPop } kind;
    uint64_t value;
  };
  struct ReadOp {
    enum Kind : uint8_t { kPeek, kSize, kDigest } kind;
  };
  using Response = std::optional<uint64_t>;

  Response dispatch(const ReadOp& op) const {
    switch (op.kind) {
      case ReadOp::kPeek:
        if (items_.empty()) return std::nullopt;
        return items_.back();
      case ReadOp::kSize: return items_.size();
      case ReadOp::kDigest: {
        uint64_t d = mix64(items_.size());
        for (uint64_t v : items_) d = mix64(d ^ v);
        return d;
      }
    }
    return std::nullopt;
  }

  Response dispatch_mut(const WriteOp& op) {
    switch (op.kind) {
      case WriteOp::kPush: items_.push_back(op.value); return std::nullopt;
      case WriteOp::kPop: {
        if (items_.empty()) return std::nullopt;
        uint64_t v = items_.back();
        items_.pop_back();
        return v;
      }
    }
    return std::nullopt;
  }

 private:
  std::vector<uint64_t> items_;
};

}  // namespace nrx::nr
