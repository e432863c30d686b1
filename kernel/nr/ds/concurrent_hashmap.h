// nrx::nr::ConcurrentHashMap: a thread-safe uint64 -> uint64 hash map for CNR (ConcurrentReplica):
// kStripes independently locked stripes, so writes mapped to different CNR logs apply in
// parallel. HashMapLogMapper sends a key's ops to log key mod logs (ops on one key conflict and
// share a log; different keys commute) and every scan to all logs.
//
// Writes: Put (previous value), Remove (removed value). Reads: Get.
// Scans: Size and RangeSum(lo, hi) (scan-reads: count of keys / sum of values with lo <= key <= hi,
// wrapping), Clear (a scan-update; returns the number of keys removed). Digest for tests.
//
// Thread safety: every method may be called concurrently (stripe spin locks).
//
//   nr::ConcurrentHashMap m;
//   m.dispatch_mut({nr::ConcurrentHashMap::WriteOp::kPut, 7, 70});
//   m.dispatch_scan({nr::ConcurrentHashMap::ScanOp::kSize, 0, 0});  // -> 1
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>

#include "base/thread_annotations.h"
#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/rwlock.h"

namespace nrx::nr {

class ConcurrentHashMap {
 public:
  struct WriteOp {
    enum Kind : uint8_t { kPut, kRemove } kind;
    uint64_t key;
    uint64_t value;
  };
  struct ReadOp {
    enum Kind : uint8_t { kGet } kind;
    uint64_t key;
  };
  struct ScanOp {
    enum Kind : uint8_t { kSize, kRangeSum, kClear } kind;
    uint64_t lo;
    uint64_t hi;
  };
  using Response = std::optional<uint64_t>;

  static constexpr uint32_t kStripes = 64;

  Response dispatch(const ReadOp& op) const {
    Stripe& s = stripe(op.key);
    StripeLock lock(s.mu);
    auto it = s.map.find(op.key);
    if (it == s.map.end()) return std::nullopt;
    return it->second;
  }

  Response dispatch_mut(const WriteOp& op) const {
    Stripe& s = stripe(op.key);
    StripeLock lock(s.mu);
    if (op.kind == WriteOp::kPut) {
      auto [it, inserted] = s.map.try_emplace(op.key, op.value);
      if (inserted) return std::nullopt;
      return std::exchange(it->second, op.value);
    }
    auto it = s.map.find(op.key);
    if (it == s.map.end()) return std::nullopt;
    const uint64_t v = it->second;
    s.map.erase(it);
    return v;
  }

  // Scans run while CNR holds every log of this replica at the scan, so no write is applied
  // meanwhile; the stripe locks only keep concurrent point reads consistent.
  Response dispatch_scan(const ScanOp& op) const {
    uint64_t n = 0;
    for (Stripe& s : stripes_) {
      StripeLock lock(s.mu);
      if (op.kind == ScanOp::kSize) {
        n += s.map.size();
      } else if (op.kind == ScanOp::kRangeSum) {
        for (const auto& [k, v] : s.map) {
          if (k >= op.lo && k <= op.hi) n += v;
        }
      }
    }
    return n;
  }

  Response dispatch_scan_mut(const ScanOp& op) const {
    if (op.kind != ScanOp::kClear) return dispatch_scan(op);
    uint64_t removed = 0;
    for (Stripe& s : stripes_) {
      StripeLock lock(s.mu);
      removed += s.map.size();
      s.map.clear();
    }
    return removed;
  }

  // Order-independent digest of the contents (equal on replicas that applied the same ops).
  uint64_t digest() const {
    uint64_t d = 0, n = 0;
    for (Stripe& s : stripes_) {
      StripeLock lock(s.mu);
      n += s.map.size();
      for (const auto& [k, v] : s.map) d += mix64(k * 0x100000001b3ull ^ mix64(v));
    }
    return d + mix64(n);
  }

 private:
  struct alignas(kInterferenceSize) Stripe {
    mutable CombinerLock mu;  // a test-and-test-and-set lock on its own line
    std::unordered_map<uint64_t, uint64_t> map NRX_GUARDED_BY(mu);
  };
  class NRX_SCOPED_CAPABILITY StripeLock {
   public:
    explicit StripeLock(CombinerLock& mu) NRX_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
    ~StripeLock() NRX_RELEASE() { mu_.unlock(); }

   private:
    CombinerLock& mu_;
  };

  Stripe& stripe(uint64_t key) const { return stripes_[mix64(key) % kStripes]; }

  mutable std::array<Stripe, kStripes> stripes_;
};

// Ops on one key share a log; scans enter every log.
struct HashMapLogMapper {
  uint32_t operator()(const ConcurrentHashMap::ReadOp& op, uint32_t logs) const {
    return static_cast<uint32_t>(op.key % logs);
  }
  uint32_t operator()(const ConcurrentHashMap::WriteOp& op, uint32_t logs) const {
    return static_cast<uint32_t>(op.key % logs);
  }
  uint64_t scan_mask(const ConcurrentHashMap::ScanOp&, uint32_t logs) const {
    return logs >= 64 ? ~uint64_t{0} : (uint64_t{1} << logs) - 1;
  }
};

}  // namespace nrx::nr
