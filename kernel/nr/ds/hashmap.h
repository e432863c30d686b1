// nrx::nr::HashMap: a sequential uint64 -> uint64 hash map with a Dispatch interface, the
// replicated demo structure of `nrx boot`, the NR stress tests and bench_nr_hashmap.
//
// Writes: Put (returns the previous value), Remove (returns the removed value).
// Reads: Get (value or nullopt), Size, Digest (an order-independent digest of the contents:
// replicas that applied the same log prefix have equal digests).
//
// Thread safety: none of its own; Replica<HashMap> provides it.
//
//   nr::HashMap m;
//   m.dispatch_mut({nr::HashMap::WriteOp::kPut, 7, 70});
//   m.dispatch({nr::HashMap::ReadOp::kGet, 7});  // -> 70
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>

namespace nrx::nr {

// SplitMix64's finaliser: a cheap, well-mixed hash for digests.
constexpr uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class HashMap {
 public:
  struct WriteOp {
    enum Kind : uint8_t { kPut, kRemove } kind;
    uint64_t key;
    uint64_t value;
  };
  struct ReadOp {
    enum Kind : uint8_t { kGet, kSize, kDigest } kind;
    uint64_t key;
  };
  using Response = std::optional<uint64_t>;

  HashMap() = default;
  explicit HashMap(size_t expected_keys) { map_.reserve(expected_keys); }

  Response dispatch(const ReadOp& op) const {
    switch (op.kind) {
      case ReadOp::kGet: {
        auto it = map_.find(op.key);
        if (it == map_.end()) return std::nullopt;
        return it->second;
      }
      case ReadOp::kSize: return map_.size();
      case ReadOp::kDigest: return digest();
    }
    return std::nullopt;
  }

  Response dispatch_mut(const WriteOp& op) {
    switch (op.kind) {
      case WriteOp::kPut: {
        auto [it, inserted] = map_.try_emplace(op.key, op.value);
        if (inserted) return std::nullopt;
        return std::exchange(it->second, op.value);
      }
      case WriteOp::kRemove: {
        auto it = map_.find(op.key);
        if (it == map_.end()) return std::nullopt;
        uint64_t v = it->second;
        map_.erase(it);
        return v;
      }
    }
    return std::nullopt;
  }

  uint64_t digest() const {
    uint64_t d = mix64(map_.size());
    for (const auto& [k, v] : map_) d += mix64(k * 0x100000001b3ull ^ mix64(v));  // + commutes
    return d;
  }

  size_t size() const { return map_.size(); }

 private:
  std::unordered_map<uint64_t, uint64_t> map_;
};

}  // namespace nrx::nr
