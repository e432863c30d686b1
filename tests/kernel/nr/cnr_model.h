// MapWithScansModel: the sequential specification of nr::ConcurrentHashMap as CNR exposes it
// (point ops and whole-map scans), for the linearizability checker (tests/lincheck/lincheck.h).
//
// Outputs are exactly what ConcurrentHashMap returns: put -> previous value, get -> value,
// remove -> removed value (each nullopt when the key was absent); size -> number of keys;
// range_sum(lo, hi) -> sum of the values with lo <= key <= hi, wrapping mod 2^64; clear -> the
// number of keys removed.
//
// Not partitionable: a scan reads or clears every key, so the history is checked as one object.
// Keep the key space small; the state is a sorted vector of (key, value), so equal maps compare and
// hash equal.
//
// Thread safety: static, pure functions.
//
//   History<MapWithScansModel> h = {{0, 0, 1, {MapOp::kPut, 1, 5, 0}, std::nullopt},
//                                   {0, 2, 3, {MapOp::kSize, 0, 0, 0}, 1}};
//   EXPECT_TRUE(check(h).ok());
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tests/lincheck/lincheck.h"

namespace nrx::lincheck {

enum class MapOp : uint8_t { kPut, kGet, kRemove, kSize, kRangeSum, kClear };

struct MapWithScansModel {
  struct Input {
    MapOp op;
    uint64_t key;    // put/get/remove; range_sum: lo
    uint64_t value;  // put
    uint64_t hi;     // range_sum
  };
  using Output = std::optional<uint64_t>;
  using State = std::vector<std::pair<uint64_t, uint64_t>>;  // sorted by key, keys unique

  static State init() { return {}; }

  static bool step(State& s, const Input& in, const Output& out) {
    const auto it = std::lower_bound(s.begin(), s.end(), in.key,
                                     [](const std::pair<uint64_t, uint64_t>& e, uint64_t k) { return e.first < k; });
    const bool found = it != s.end() && it->first == in.key;
    // What the map returns for the key: its value, or nullopt (compared without building an
    // optional, which GCC 12 misreads as maybe-uninitialized).
    const bool matches = found ? (out.has_value() && *out == it->second) : !out.has_value();
    switch (in.op) {
      case MapOp::kPut:
        if (!matches) return false;
        if (found) {
          it->second = in.value;
        } else {
          s.insert(it, {in.key, in.value});
        }
        return true;
      case MapOp::kGet:
        return matches;
      case MapOp::kRemove:
        if (!matches) return false;
        if (found) s.erase(it);
        return true;
      case MapOp::kSize:
        return out.has_value() && *out == s.size();
      case MapOp::kRangeSum: {
        uint64_t sum = 0;  // wraps, as the map's
        for (const auto& [k, v] : s) {
          if (k >= in.key && k <= in.hi) sum += v;
        }
        return out.has_value() && *out == sum;
      }
      case MapOp::kClear:
        if (!out.has_value() || *out != s.size()) return false;
        s.clear();
        return true;
    }
    return false;  // an op code outside the enum matches nothing
  }

  static size_t hash(const State& s) {
    uint64_t h = s.size();
    for (const auto& [k, v] : s) h = detail::mix64(h ^ detail::mix64(k ^ detail::mix64(v)));
    return static_cast<size_t>(h);
  }

  static std::string describe(const Input& in, const Output& out) {
    const std::string result = " -> " + (out ? std::to_string(*out) : std::string("none"));
    switch (in.op) {
      case MapOp::kPut:
        return "put(" + std::to_string(in.key) + ", " + std::to_string(in.value) + ")" + result;
      case MapOp::kGet:
        return "get(" + std::to_string(in.key) + ")" + result;
      case MapOp::kRemove:
        return "remove(" + std::to_string(in.key) + ")" + result;
      case MapOp::kSize:
        return "size()" + result;
      case MapOp::kRangeSum:
        return "range_sum(" + std::to_string(in.key) + ", " + std::to_string(in.hi) + ")" + result;
      case MapOp::kClear:
        return "clear()" + result;
    }
    return "op#" + std::to_string(static_cast<int>(in.op)) + result;
  }
};

}  // namespace nrx::lincheck
