// Sequential specifications for the linearizability checker (lincheck.h): a key-value map
// partitioned per key, and a LIFO stack.
//
// Each model is a struct of static functions over a value-type State; `step` is the
// specification: it returns true (and advances the state) iff the recorded output is what the
// sequential object would have returned. KvModel is P-compositional: check() splits a history by
// key and checks each key alone, with State being that one key's value. StackModel also has
// Symbolic, sets of stacks as a shared automaton, which check() uses instead of concrete stacks.
//
// Thread safety: the static functions are pure; a StackModel::Symbolic belongs to one search.
//
// Usage:
//   History<KvModel> h = {{0, 0, 1, {KvOp::kPut, 1, 5}, std::nullopt},
//                         {1, 2, 3, {KvOp::kGet, 1, 0}, 5}};
//   EXPECT_TRUE(check(h).ok());
//   History<StackModel> s = {{0, 0, 1, {StackOp::kPush, 7}, std::nullopt},
//                            {0, 2, 3, {StackOp::kPop, 0}, 7}};
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tests/lincheck/lincheck.h"

namespace nrx::lincheck {

namespace detail {
inline std::string describe_value(const std::optional<uint64_t>& v, const char* absent) {
  return v ? std::to_string(*v) : std::string(absent);
}
}  // namespace detail

enum class KvOp : uint8_t { kPut, kGet, kRemove };

// A map uint64_t -> uint64_t. put returns the previous value, get the value, remove the removed
// value; each returns nullopt when the key was absent.
struct KvModel {
  struct Input {
    KvOp op;
    uint64_t key;
    uint64_t value;  // put only
  };
  using Output = std::optional<uint64_t>;
  using State = std::optional<uint64_t>;  // one key's value: histories are partitioned by key

  static State init() { return std::nullopt; }

  static bool step(State& s, const Input& in, const Output& out) {
    if (out != s) return false;  // every operation returns the value it found
    switch (in.op) {
      case KvOp::kPut:
        s = in.value;
        return true;
      case KvOp::kGet:
        return true;
      case KvOp::kRemove:
        s = std::nullopt;
        return true;
    }
    return false;  // an op code outside the enum matches nothing
  }

  static size_t hash(const State& s) { return s ? static_cast<size_t>(detail::mix64(*s)) : 0; }

  static uint64_t partition(const Input& in) { return in.key; }
  static std::string describe_partition(uint64_t key) { return "key " + std::to_string(key); }

  static std::string describe(const Input& in, const Output& out) {
    const std::string result = " -> " + detail::describe_value(out, "none");
    const std::string key = std::to_string(in.key);
    switch (in.op) {
      case KvOp::kPut:
        return "put(" + key + ", " + std::to_string(in.value) + ")" + result;
      case KvOp::kGet:
        return "get(" + key + ")" + result;
      case KvOp::kRemove:
        return "remove(" + key + ")" + result;
    }
    return "op#" + std::to_string(static_cast<int>(in.op)) + "(" + key + ")" + result;
  }
};

enum class StackOp : uint8_t { kPush, kPop };

// A LIFO stack of uint64_t. push returns nullopt; pop returns the top, or nullopt when empty.
struct StackModel {
  struct Input {
    StackOp op;
    uint64_t value;  // push only
  };
  using Output = std::optional<uint64_t>;
  using State = std::vector<uint64_t>;  // bottom first

  static State init() { return {}; }

  static bool step(State& s, const Input& in, const Output& out) {
    switch (in.op) {
      case StackOp::kPush:
        if (out.has_value()) return false;
        s.push_back(in.value);
        return true;
      case StackOp::kPop:
        if (s.empty()) return !out.has_value();
        if (out != s.back()) return false;
        s.pop_back();
        return true;
    }
    return false;  // an op code outside the enum matches nothing
  }

  static size_t hash(const State& s) {
    uint64_t h = s.size();
    for (uint64_t v : s) h = detail::mix64(h ^ v);
    return static_cast<size_t>(h);
  }

  // Sets of stacks for the breadth-first engine (see lincheck.h): a hash-consed acyclic automaton
  // that reads a stack from the top. A node is a set: whether it holds the empty stack, and for
  // each value v the node of the stacks below a top v. Push is a new node with one edge, a pop
  // follows the edge of its value, a join merges edges; stacks that differ only deep down share
  // everything above the difference, so k buried ambiguities cost O(k) nodes, not 2^k stacks.
  // Invariants: node 0 is the empty set and no edge leads to it; edges are sorted by value; equal
  // sets are the same node (hash-consing, by induction on height), so join(a, a) is free.
  class Symbolic {
   public:
    using Set = uint32_t;

    Symbolic() {
      nodes_.push_back(Node{false, 0, 0});  // the empty set
    }

    Set init() { return make(true, 0, 0); }
    bool empty(Set s) const { return s == kEmptySet; }
    size_t size() const { return nodes_.size(); }

    Set step(Set s, const Input& in, const Output& out) {
      if (s == kEmptySet) return kEmptySet;
      switch (in.op) {
        case StackOp::kPush:
          if (out.has_value()) return kEmptySet;
          scratch_.assign(1, Edge{in.value, s});
          return make(false, 0, 1);
        case StackOp::kPop:
          if (!out.has_value()) return nodes_[s].has_empty ? init() : kEmptySet;
          return child(s, *out);
      }
      return kEmptySet;  // an op code outside the enum matches nothing
    }

    // Iterative (an explicit stack of merges), since sets can be as deep as the stack is tall.
    Set join(Set a, Set b) {
      if (const Set quick = join_known(a, b); quick != kUnknownJoin) return quick;
      scratch_.clear();
      merges_.push_back(Merge{a, b, 0, 0, 0});
      while (true) {
        Merge& m = merges_.back();
        const Node na = nodes_[m.a], nb = nodes_[m.b];
        bool descended = false;
        while (m.i < na.size || m.j < nb.size) {
          const Edge* ea = m.i < na.size ? &edges_[na.begin + m.i] : nullptr;
          const Edge* eb = m.j < nb.size ? &edges_[nb.begin + m.j] : nullptr;
          if (eb == nullptr || (ea != nullptr && ea->value < eb->value)) {
            scratch_.push_back(*ea);
            ++m.i;
          } else if (ea == nullptr || eb->value < ea->value) {
            scratch_.push_back(*eb);
            ++m.j;
          } else if (const Set c = join_known(ea->child, eb->child); c != kUnknownJoin) {
            scratch_.push_back(Edge{ea->value, c});
            ++m.i;
            ++m.j;
          } else {
            const auto out = static_cast<uint32_t>(scratch_.size());
            merges_.push_back(Merge{ea->child, eb->child, 0, 0, out});  // invalidates m
            descended = true;
            break;
          }
        }
        if (descended) continue;
        const Merge done = merges_.back();
        merges_.pop_back();
        const auto size = static_cast<uint32_t>(scratch_.size()) - done.out;
        const Set joined = make(na.has_empty || nb.has_empty, done.out, size);
        scratch_.resize(done.out);
        joins_.insert_or_assign(join_key(done.a, done.b), joined);
        if (merges_.empty()) return joined;
        Merge& parent = merges_.back();
        scratch_.push_back(Edge{edges_[nodes_[parent.a].begin + parent.i].value, joined});
        ++parent.i;
        ++parent.j;
      }
    }

   private:
    static constexpr Set kEmptySet = 0;
    static constexpr Set kUnknownJoin = UINT32_MAX;

    struct Node {
      bool has_empty;  // the set holds the empty stack
      uint32_t begin;  // edges_[begin, begin + size)
      uint32_t size;
    };
    struct Edge {
      uint64_t value;  // the top
      Set child;       // the stacks below it
    };
    // One pending join(a, b): edges of a before i and of b before j are merged into
    // scratch_[out, ...) already.
    struct Merge {
      Set a, b;
      uint32_t i, j;
      uint32_t out;
    };

    static uint64_t join_key(Set a, Set b) {
      if (a > b) std::swap(a, b);
      return (uint64_t{a} << 32) | b;
    }

    Set join_known(Set a, Set b) const {
      if (a == b || b == kEmptySet) return a;
      if (a == kEmptySet) return b;
      const auto it = joins_.find(join_key(a, b));
      return it == joins_.end() ? kUnknownJoin : it->second;
    }

    Set child(Set s, uint64_t top) const {
      const Node& n = nodes_[s];
      const auto first = edges_.begin() + n.begin, last = first + n.size;
      const auto it = std::lower_bound(first, last, top, [](const Edge& e, uint64_t v) { return e.value < v; });
      return it != last && it->value == top ? it->child : kEmptySet;
    }

    // The node for (has_empty, scratch_[begin, begin + size)), created unless it exists.
    Set make(bool has_empty, uint32_t begin, uint32_t size) {
      if (!has_empty && size == 0) return kEmptySet;
      uint64_t h = detail::mix64(has_empty ? 1 : 2);
      for (uint32_t k = begin; k < begin + size; ++k) {
        h = detail::mix64(h ^ scratch_[k].value);
        h = detail::mix64(h ^ scratch_[k].child);
      }
      const auto fresh = static_cast<Set>(nodes_.size());
      const Set id = table_.find_or_insert(h, fresh, [&](Set x) {
        const Node& n = nodes_[x];
        if (n.has_empty != has_empty || n.size != size) return false;
        for (uint32_t k = 0; k < size; ++k) {
          const Edge& e = edges_[n.begin + k];
          if (e.value != scratch_[begin + k].value || e.child != scratch_[begin + k].child) return false;
        }
        return true;
      });
      if (id == fresh) {
        nodes_.push_back(Node{has_empty, static_cast<uint32_t>(edges_.size()), size});
        edges_.insert(edges_.end(), scratch_.begin() + begin, scratch_.begin() + begin + size);
      }
      return id;
    }

    std::vector<Node> nodes_;
    std::vector<Edge> edges_;
    detail::IdTable table_;                    // nodes_ as a set (hash-consing)
    std::unordered_map<uint64_t, Set> joins_;  // join(a, b) by unordered pair
    std::vector<Edge> scratch_;                // edges being built
    std::vector<Merge> merges_;                // join()'s explicit stack
  };

  static std::string describe(const Input& in, const Output& out) {
    switch (in.op) {
      case StackOp::kPush:
        return "push(" + std::to_string(in.value) + ")" + (out ? " -> " + std::to_string(*out) : "");
      case StackOp::kPop:
        return "pop() -> " + detail::describe_value(out, "empty");
    }
    return "op#" + std::to_string(static_cast<int>(in.op)) + "() -> " + detail::describe_value(out, "empty");
  }
};

}  // namespace nrx::lincheck
