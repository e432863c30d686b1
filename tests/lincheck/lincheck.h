// Linearizability checker: decides whether a recorded concurrent history of operations could have
// come from some sequential execution of a model, in an order that respects real time.
//
// Algorithm: Wing & Gong's search for a linearization in the just-in-time form, with
// memoisation, of Lowe ("Testing for linearizability", Concurrency and Computation 2017; also
// the structure of Porcupine). Operations are sorted by invoke; the history becomes a list of
// call and return events in stamp order. An operation is *minimal* when its call comes before
// the first return still pending: nothing unlinearized must take effect before it. The search
// repeatedly picks a minimal operation, applies it to the model, and if the model's output
// equals the recorded one "lifts" both its events out of the list (dancing links) and goes on;
// when no minimal operation fits, it backtracks. Configurations (set of linearized operations,
// model state) are memoised, so none is expanded twice. Two engines share this frame:
//
//  - Depth-first (every model): an explicit stack (no recursion, so a 10^5-operation partition
//    cannot exhaust the thread's stack) over concrete states. Minimal operations are tried in
//    order of response; that is only an ordering, it speeds the search and cannot change its
//    answer.
//  - Breadth-first over symbolic state sets (models with a `Symbolic` type, e.g. StackModel):
//    one configuration per linearized set, holding the set of all model states reachable with
//    it; paths that reach the same set are merged (join). A stack needs this: two concurrent
//    pushes buried deep are told apart only when popped, and LIFO order makes a depth-first
//    search revisit every inner guess for each outer one, exponential on real histories. Layer
//    d holds the configurations with d operations linearized, and their minimal operations are
//    computed from the compact set (below) instead of an event list; nothing backtracks.
//
// P-compositionality: when the model has `static uint64_t partition(const Input&)` (detected with
// a `requires` expression), the history is split by it and every partition is checked on its own
// (linearizability is local: a history is linearizable iff each per-object sub-history is). A
// partitioned model may also give `static std::string describe_partition(uint64_t)` ("key 17").
//
// Configurations are stored compactly. Let m be the first (by invoke) operation not yet
// linearized. Every operation before m is linearized, and a linearized operation j after m has
// invoke_j <= response_m (otherwise m, still pending, would precede j in real time). So the set is
// (m, bits for the operations invoked in [invoke_m, response_m]): its size is the concurrency
// around m, not the length of the history. The depth-first engine keeps the set's hash
// incrementally (Zobrist: one XOR per lift or unlift).
//
// Invariants: a precedes b iff a.response < b.invoke (equal stamps count as concurrent); a
// configuration enters the memo (or a layer) once; the depth-first levels hold exactly the
// lifted operations, in lift order.
//
// Cost: time and memory grow with the number of configurations explored (times the state's
// size for the depth-first engine). CheckOptions::max_states bounds it per partition; a search
// that reaches the bound answers Verdict::kUnknown rather than guessing.
//
// Thread safety: check() is a pure function of its arguments (run several at once freely).
// Recorder::begin/end may be called concurrently by distinct threads, each with its own dense
// thread id; history() only after those threads have been joined.
//
// Usage:
//   Recorder<KvModel> rec(kThreads);                                   // shared by the workers
//   uint64_t t = rec.begin(me);                                        // in worker `me`
//   auto prev = map.put(k, v);
//   rec.end(me, t, {KvOp::kPut, k, v}, prev);
//   CheckResult r = check(rec.history());  EXPECT_TRUE(r.ok()) << r.explanation;  // after join
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/cacheline.h"
#include "base/check.h"

namespace nrx::lincheck {

// One completed operation. Timestamps are logical: values of one shared counter taken right before
// the call (invoke) and right after it returned (response). a precedes b iff a.response < b.invoke.
template <typename Model>
struct Operation {
  uint32_t thread;
  uint64_t invoke;
  uint64_t response;
  typename Model::Input input;
  typename Model::Output output;
};

template <typename Model>
using History = std::vector<Operation<Model>>;

// What check() needs of a sequential specification. `step` applies `in` to `s` and returns true
// (with `s` updated) iff the model's output equals `out`; on false, `s` is unspecified. `step`
// must be deterministic, `hash` consistent with ==.
template <typename M>
concept LinearizabilityModel =
    std::copyable<typename M::State> && std::equality_comparable<typename M::State> &&
    std::copyable<typename M::Input> && std::copyable<typename M::Output> &&
    requires(typename M::State& s, const typename M::State& cs, const typename M::Input& in,
             const typename M::Output& out) {
      { M::init() } -> std::convertible_to<typename M::State>;
      { M::step(s, in, out) } -> std::same_as<bool>;
      { M::hash(cs) } -> std::convertible_to<std::size_t>;
      { M::describe(in, out) } -> std::convertible_to<std::string>;
    };

// A model whose histories split into independent per-object sub-histories (e.g. per key).
template <typename M>
concept PartitionedModel = requires(const typename M::Input& in) {
  { M::partition(in) } -> std::convertible_to<uint64_t>;
};

// A model that can also represent *sets* of states symbolically, for the breadth-first engine.
// One M::Symbolic object lives for one partition's search and owns the sets' storage. Set is a
// small handle; the empty set must be the only set for which empty() is true.
//   init()           -> {M::init()}
//   step(S, in, out) -> {s' : s in S, M::step(s, in, out) gives s'}   (may be empty)
//   join(A, B)       -> A union B
//   size()           -> storage used, in nodes; counted against CheckOptions::max_states
template <typename M>
concept SymbolicModel =
    LinearizabilityModel<M> && std::default_initializable<typename M::Symbolic> &&
    std::copyable<typename M::Symbolic::Set> &&
    requires(typename M::Symbolic& sym, const typename M::Symbolic::Set& set, const typename M::Input& in,
             const typename M::Output& out) {
      { sym.init() } -> std::same_as<typename M::Symbolic::Set>;
      { sym.step(set, in, out) } -> std::same_as<typename M::Symbolic::Set>;
      { sym.join(set, set) } -> std::same_as<typename M::Symbolic::Set>;
      { sym.empty(set) } -> std::same_as<bool>;
      { sym.size() } -> std::convertible_to<std::size_t>;
    };

// Records a history from real threads. Each thread owns a buffer (no lock, no shared write per
// operation besides the clock); thread ids are dense, 0..threads-1.
template <typename Model>
class Recorder {
 public:
  explicit Recorder(uint32_t threads, size_t reserve_per_thread = 0) : buffers_(threads) {
    for (Buffer& b : buffers_) b.ops.reserve(reserve_per_thread);
  }

  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // Call right before invoking the operation; pass the returned stamp to end().
  uint64_t begin(uint32_t thread) {
    NRX_DCHECK(thread < buffers_.size(), "Recorder: thread id out of range");
    // seq_cst: the stamp must come before every memory access of the operation, and the stamps
    // must form one total order that agrees with real time and with the seq_cst order of the
    // structure's own atomics (acq_rel would give happens-before, not that). On x86 every locked
    // RMW is a full fence anyway, so it costs nothing extra.
    return clock_.fetch_add(1, std::memory_order_seq_cst);
  }

  // Call right after the operation returned, with the stamp from begin().
  void end(uint32_t thread, uint64_t invoke, typename Model::Input in, typename Model::Output out) {
    // seq_cst: as in begin(); the response stamp must follow every access of the operation.
    const uint64_t response = clock_.fetch_add(1, std::memory_order_seq_cst);
    NRX_DCHECK(thread < buffers_.size(), "Recorder: thread id out of range");
    buffers_[thread].ops.push_back(Operation<Model>{thread, invoke, response, std::move(in), std::move(out)});
  }

  // All recorded operations, thread by thread. Only after the recording threads were joined.
  History<Model> history() const {
    size_t total = 0;
    for (const Buffer& b : buffers_) total += b.ops.size();
    History<Model> h;
    h.reserve(total);
    for (const Buffer& b : buffers_) h.insert(h.end(), b.ops.begin(), b.ops.end());
    return h;
  }

 private:
  // Own cache lines per thread: a push_back must not invalidate a neighbour's vector header.
  struct alignas(kInterferenceSize) Buffer {
    std::vector<Operation<Model>> ops;
  };

  alignas(kInterferenceSize) std::atomic<uint64_t> clock_{0};
  alignas(kInterferenceSize) std::vector<Buffer> buffers_;
};

struct CheckOptions {
  uint64_t max_states = 50'000'000;  // search budget per partition (configurations explored)
  bool use_symbolic = true;          // a SymbolicModel goes to the breadth-first engine
};

enum class Verdict {
  kLinearizable,
  kNotLinearizable,
  kUnknown,  // budget exhausted, or the history is malformed (response < invoke)
};

struct CheckResult {
  Verdict verdict;
  // For kNotLinearizable: the partition ("key 17") and the operations none of which could be
  // linearized after the longest linearizable prefix found. For kUnknown: why.
  std::string explanation;
  uint64_t states_explored;  // configurations explored, summed over partitions
  bool ok() const { return verdict == Verdict::kLinearizable; }
};

namespace detail {

inline constexpr size_t kMaxExplainedOps = 6;  // candidates printed in an explanation
inline constexpr uint32_t kNoEntry = UINT32_MAX;

inline constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ULL;  // 2^64 / phi, odd: spreads a sum
inline constexpr uint64_t kZobristSeed = 0x5bd1e9955bd1e995ULL;  // any constant; fixed for determinism

inline uint64_t mix64(uint64_t x) {  // splitmix64's finaliser: cheap, full avalanche
  x += kGoldenGamma;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// 64 bits of `bits` starting at bit `pos`; bits past the end read as 0.
inline uint64_t bits_at(const std::vector<uint64_t>& bits, size_t pos) {
  const size_t w = pos >> 6;
  const unsigned sh = pos & 63;
  const uint64_t lo = w < bits.size() ? bits[w] : 0;
  if (sh == 0) return lo;
  const uint64_t hi = w + 1 < bits.size() ? bits[w + 1] : 0;
  return (lo >> sh) | (hi << (64 - sh));
}

// Writes `width` bits of `bits` starting at `pos` into `out` (whole words, top bits cleared).
inline void extract_bits(const std::vector<uint64_t>& bits, size_t pos, uint32_t width, std::vector<uint64_t>& out) {
  const uint32_t words = (width + 63) / 64;
  out.resize(words);
  for (uint32_t k = 0; k < words; ++k) out[k] = bits_at(bits, pos + 64 * size_t{k});
  if (width % 64 != 0) out[words - 1] &= (uint64_t{1} << (width % 64)) - 1;
}

inline uint64_t hash_window(uint32_t first, const std::vector<uint64_t>& window) {
  uint64_t h = mix64(first);
  for (uint64_t w : window) h = mix64(h ^ w);
  return h;
}

// An open-addressing table of entry ids keyed by a 64-bit hash; the caller owns the entries and
// says when two are equal. Load factor <= 1/2, linear probing.
class IdTable {
 public:
  IdTable() { clear(); }

  void clear() {
    slots_.assign(kInitialSlots, Slot{});
    size_ = 0;
  }

  // The id of an entry with this hash for which `equal(id)` holds; otherwise records `fresh`
  // under the hash and returns it.
  template <typename Equal>
  uint32_t find_or_insert(uint64_t hash, uint32_t fresh, Equal&& equal) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    const size_t mask = slots_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      Slot& s = slots_[i];
      if (s.id == kNoEntry) {
        s = Slot{hash, fresh};
        ++size_;
        return fresh;
      }
      if (s.hash == hash && equal(s.id)) return s.id;
    }
  }

 private:
  static constexpr size_t kInitialSlots = 64;  // power of two
  struct Slot {
    uint64_t hash = 0;
    uint32_t id = kNoEntry;
  };

  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.size() * 2, Slot{});
    const size_t mask = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.id == kNoEntry) continue;
      size_t i = s.hash & mask;
      while (slots_[i].id != kNoEntry) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
};

template <typename M>
std::string partition_name(uint64_t p) {
  if constexpr (requires { { M::describe_partition(p) } -> std::convertible_to<std::string>; }) {
    return M::describe_partition(p);
  } else {
    return "partition " + std::to_string(p);
  }
}

template <typename Model>
std::string describe_op(const Operation<Model>& op) {
  return "thread " + std::to_string(op.thread) + " [" + std::to_string(op.invoke) + ", " +
         std::to_string(op.response) + "] " + Model::describe(op.input, op.output);
}

template <typename Model>
bool by_invoke(const Operation<Model>* a, const Operation<Model>* b) {
  if (a->invoke != b->invoke) return a->invoke < b->invoke;
  if (a->response != b->response) return a->response < b->response;
  return a < b;  // same vector: original position, for a deterministic order
}

// One partition's operations, sorted by (invoke, response, original position), and what both
// engines derive from them.
template <typename Model>
class Timeline {
 public:
  explicit Timeline(const std::vector<const Operation<Model>*>& ops)
      : ops_(ops), n_(static_cast<uint32_t>(ops.size())), limit_(n_) {
    // limit_[i]: the last op invoked no later than op i's response. With op i the first pending
    // one, every linearized op lies below it or in (i, limit_[i]] (see the header).
    for (uint32_t i = 0; i < n_; ++i) {
      const uint64_t r = ops_[i]->response;
      const auto it = std::upper_bound(ops_.begin(), ops_.end(), r,
                                       [](uint64_t v, const Operation<Model>* op) { return v < op->invoke; });
      limit_[i] = static_cast<uint32_t>(it - ops_.begin()) - 1;
    }
  }

  uint32_t size() const { return n_; }
  const Operation<Model>& op(uint32_t i) const { return *ops_[i]; }
  // Window width of a configuration whose first pending op is `first`: ops first+1 .. limit.
  uint32_t width(uint32_t first) const { return first == n_ ? 0 : limit_[first] - first; }

  // The minimal ops of configuration (first, window), in invoke order: those invoked no later than
  // the earliest response of an op still pending (calls sort before returns at equal stamps).
  // Ops past limit_[first] are invoked after first's response, so only the window is scanned,
  // a word at a time: a preempted op keeps a wide window that is nearly all linearized.
  void minimal_ops(uint32_t first, const uint64_t* window, std::vector<uint32_t>& out) const {
    out.clear();
    if (first == n_) return;
    const uint32_t width = limit_[first] - first;
    uint64_t earliest = ops_[first]->response;
    for_each_pending(first, window, width, [&](uint32_t j) {
      earliest = std::min(earliest, ops_[j]->response);
      return true;
    });
    out.push_back(first);
    for_each_pending(first, window, width, [&](uint32_t j) {
      if (ops_[j]->invoke > earliest) return false;  // and so is every later one
      out.push_back(j);
      return true;
    });
  }

  // Why the search failed, given its deepest configuration (`depth` ops linearized).
  std::string explain(uint32_t first, const uint64_t* window, size_t depth) const {
    std::vector<uint32_t> candidates;
    minimal_ops(first, window, candidates);
    std::string s = "no linearization; the longest linearizable prefix has " + std::to_string(depth) + " of " +
                    std::to_string(n_) + " operations, after which none of these fits:";
    for (size_t i = 0; i < candidates.size() && i < kMaxExplainedOps; ++i) {
      s += "\n  " + describe_op(*ops_[candidates[i]]);
    }
    if (candidates.size() > kMaxExplainedOps) {
      s += "\n  ... and " + std::to_string(candidates.size() - kMaxExplainedOps) + " more";
    }
    return s;
  }

  std::string budget_exhausted(uint64_t max_states) const {
    return "search budget of " + std::to_string(max_states) + " states exhausted (" + std::to_string(n_) +
           " operations)";
  }

 private:
  // Calls f(j) for each op j in (first, first + width] not linearized, in order, while f is true.
  template <typename F>
  static void for_each_pending(uint32_t first, const uint64_t* window, uint32_t width, F&& f) {
    for (uint32_t w = 0; w * 64 < width; ++w) {
      uint64_t pending = ~window[w];
      if (width - w * 64 < 64) pending &= (uint64_t{1} << (width - w * 64)) - 1;
      for (; pending != 0; pending &= pending - 1) {
        if (!f(first + 1 + w * 64 + static_cast<uint32_t>(std::countr_zero(pending)))) return;
      }
    }
  }

  const std::vector<const Operation<Model>*>& ops_;
  const uint32_t n_;
  std::vector<uint32_t> limit_;
};

// The depth-first engine, for one partition.
template <typename Model>
class DepthFirstSearch {
 public:
  DepthFirstSearch(const Timeline<Model>& timeline, uint64_t max_states)
      : tl_(timeline), n_(timeline.size()), max_states_(max_states) {}

  // Returns the verdict; fills explanation() when it is not kLinearizable.
  Verdict run() {
    build_events();
    linearized_.assign(n_ / 64 + 1, 0);
    zobrist_.resize(n_);
    for (uint32_t i = 0; i < n_; ++i) zobrist_[i] = mix64(i ^ kZobristSeed);
    const uint32_t root = remember(Model::init());
    if (n_ == 0) return Verdict::kLinearizable;
    levels_.reserve(size_t{n_} + 1);
    best_ = root;
    open_level(root);

    while (true) {
      Level& level = levels_.back();
      if (level.next == level.end) {
        // No minimal op fits here: undo the choice that led here; the parent tries its next.
        if (levels_.size() == 1) {
          const Entry& b = entries_[best_];
          explanation_ = tl_.explain(b.first, arena_.data() + b.bits_begin, best_depth_);
          return Verdict::kNotLinearizable;
        }
        candidates_.resize(level.begin);
        levels_.pop_back();
        unlift(levels_.back().lifted);
        continue;
      }
      const uint32_t op = candidates_[level.next++];
      scratch_ = entries_[level.config].state;  // assignment: reuses scratch_'s storage
      if (!Model::step(scratch_, tl_.op(op).input, tl_.op(op).output)) continue;
      lift(op);
      const uint32_t child = remember(std::move(scratch_));
      if (child == kNoEntry) {  // reached before by another order: prune
        unlift(op);
        continue;
      }
      if (entries_.size() > max_states_) {
        explanation_ = tl_.budget_exhausted(max_states_);
        return Verdict::kUnknown;
      }
      level.lifted = op;
      if (levels_.size() > best_depth_) {
        best_depth_ = levels_.size();
        best_ = child;
      }
      if (next_[kHead] == tail()) return Verdict::kLinearizable;
      open_level(child);  // invalidates `level`
    }
  }

  uint64_t states() const { return entries_.size(); }
  const std::string& explanation() const { return explanation_; }

 private:
  using State = typename Model::State;

  // A memoised configuration. Levels refer to entries by index, so a state is stored once.
  struct Entry {
    size_t bits_begin;  // window words in arena_
    uint32_t first;     // the first op not linearized
    uint32_t words;
    State state;
  };

  // One level per lifted op, plus the current one: its configuration, its candidates
  // (candidates_[begin, end), tried in order; next is the next to try), and the op lifted from it.
  struct Level {
    uint32_t config;
    uint32_t begin;
    uint32_t next;
    uint32_t end;
    uint32_t lifted;
  };

  // Event list nodes: 0 is the head sentinel, 2n+1 the tail sentinel, 1..2n the events in stamp
  // order (calls before returns at equal stamps, so those ops overlap).
  static constexpr uint32_t kHead = 0;
  uint32_t tail() const { return 2 * n_ + 1; }

  void build_events() {
    struct Event {
      uint64_t stamp;
      uint32_t kind;  // 0 = call, 1 = return
      uint32_t op;
    };
    std::vector<Event> events;
    events.reserve(2 * size_t{n_});
    for (uint32_t i = 0; i < n_; ++i) {
      events.push_back(Event{tl_.op(i).invoke, 0, i});
      events.push_back(Event{tl_.op(i).response, 1, i});
    }
    std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
      if (a.stamp != b.stamp) return a.stamp < b.stamp;
      if (a.kind != b.kind) return a.kind < b.kind;
      return a.op < b.op;
    });
    const uint32_t nodes = 2 * n_ + 2;
    next_.resize(nodes);
    prev_.resize(nodes);
    node_op_.assign(nodes, 0);
    node_is_call_.assign(nodes, 0);
    call_node_.resize(n_);
    ret_node_.resize(n_);
    for (uint32_t k = 0; k < nodes; ++k) {
      next_[k] = k + 1;
      prev_[k] = k == 0 ? 0 : k - 1;
    }
    for (uint32_t k = 0; k < 2 * n_; ++k) {
      const uint32_t node = k + 1;
      node_op_[node] = events[k].op;
      node_is_call_[node] = events[k].kind == 0 ? 1 : 0;
      (events[k].kind == 0 ? call_node_ : ret_node_)[events[k].op] = node;
    }
  }

  void unlink(uint32_t node) {
    next_[prev_[node]] = next_[node];
    prev_[next_[node]] = prev_[node];
  }
  void relink(uint32_t node) {  // exact inverse of unlink, in LIFO order (dancing links)
    next_[prev_[node]] = node;
    prev_[next_[node]] = node;
  }

  void lift(uint32_t op) {
    unlink(call_node_[op]);
    unlink(ret_node_[op]);
    linearized_[op >> 6] |= uint64_t{1} << (op & 63);
    set_hash_ ^= zobrist_[op];
  }
  void unlift(uint32_t op) {
    relink(ret_node_[op]);
    relink(call_node_[op]);
    linearized_[op >> 6] &= ~(uint64_t{1} << (op & 63));
    set_hash_ ^= zobrist_[op];
  }

  // Opens a level for memo entry `config` (the current linearized set). Its candidates are the
  // minimal ops: the calls before the first return left in the event list. They go by response:
  // the op that must take effect soonest is the most constrained, and an op whose response came
  // late (its thread was preempted) is otherwise linearized too early, under a wrong guess that
  // is found out only much later (on Treiber-stack histories, invoke order blew the budget).
  void open_level(uint32_t config) {
    const auto begin = static_cast<uint32_t>(candidates_.size());
    for (uint32_t node = next_[kHead]; node_is_call_[node] != 0; node = next_[node]) {
      candidates_.push_back(node_op_[node]);
    }
    const auto end = static_cast<uint32_t>(candidates_.size());
    std::sort(candidates_.begin() + begin, candidates_.end(), [this](uint32_t a, uint32_t b) {
      const uint64_t ra = tl_.op(a).response, rb = tl_.op(b).response;
      return ra != rb ? ra < rb : a < b;
    });
    levels_.push_back(Level{config, begin, begin, end, kNoEntry});
  }

  // Memoises the current linearized set with `state`; kNoEntry if it was there already.
  uint32_t remember(State&& state) {
    const uint32_t first = next_[kHead] == tail() ? n_ : node_op_[next_[kHead]];
    extract_bits(linearized_, size_t{first} + 1, tl_.width(first), window_);
    const auto words = static_cast<uint32_t>(window_.size());
    const uint64_t hash = mix64(set_hash_ ^ (static_cast<uint64_t>(Model::hash(state)) * kGoldenGamma));
    const auto fresh = static_cast<uint32_t>(entries_.size());
    const uint32_t id = table_.find_or_insert(hash, fresh, [&](uint32_t e) {
      const Entry& x = entries_[e];
      return x.first == first && x.words == words &&
             std::equal(window_.begin(), window_.end(), arena_.begin() + static_cast<std::ptrdiff_t>(x.bits_begin)) &&
             x.state == state;
    });
    if (id != fresh) return kNoEntry;
    entries_.push_back(Entry{arena_.size(), first, words, std::move(state)});
    arena_.insert(arena_.end(), window_.begin(), window_.end());
    return fresh;
  }

  const Timeline<Model>& tl_;
  const uint32_t n_;
  const uint64_t max_states_;
  std::vector<uint32_t> next_, prev_, node_op_, call_node_, ret_node_;
  std::vector<uint8_t> node_is_call_;
  std::vector<uint64_t> linearized_;  // bit i: op i is lifted
  std::vector<uint64_t> zobrist_;     // a random word per op; set_hash_ is the XOR over the set
  uint64_t set_hash_ = 0;
  std::vector<uint64_t> window_;      // scratch for remember()
  State scratch_{};                   // the state a step is tried on
  std::vector<Entry> entries_;        // the memo
  std::vector<uint64_t> arena_;       // entries' window words
  IdTable table_;                     // entries_ as a set
  std::vector<Level> levels_;
  std::vector<uint32_t> candidates_;
  uint32_t best_ = 0;                 // the deepest configuration reached, for the explanation
  size_t best_depth_ = 0;
  std::string explanation_;
};

// The breadth-first engine over symbolic state sets, for one partition.
template <SymbolicModel Model>
class SymbolicSearch {
 public:
  SymbolicSearch(const Timeline<Model>& timeline, uint64_t max_states)
      : tl_(timeline), n_(timeline.size()), max_states_(max_states) {}

  Verdict run() {
    Layer layer, next;
    std::vector<uint64_t> window(words_for(tl_.width(0)), 0);
    layer.insert(0, window, sym_.init(), sym_);
    states_ = 1;
    std::vector<uint32_t> candidates;
    for (uint32_t depth = 0; depth < n_; ++depth) {
      next.clear();
      for (size_t i = 0; i < layer.entries.size(); ++i) {
        const typename Layer::Entry& e = layer.entries[i];
        const uint64_t* bits = layer.bits(e);
        tl_.minimal_ops(e.first, bits, candidates);
        for (uint32_t op : candidates) {
          Set s = sym_.step(e.set, tl_.op(op).input, tl_.op(op).output);
          if (sym_.empty(s)) continue;
          const uint32_t first = child_key(e.first, bits, op, window);
          next.insert(first, window, std::move(s), sym_);
        }
      }
      if (next.entries.empty()) {
        // Every configuration with `depth` ops linearized is a dead end; describe one.
        const typename Layer::Entry& e = layer.entries.front();
        explanation_ = tl_.explain(e.first, layer.bits(e), depth);
        return Verdict::kNotLinearizable;
      }
      states_ += next.entries.size();
      if (states_ > max_states_ || sym_.size() > max_states_) {
        explanation_ = tl_.budget_exhausted(max_states_);
        return Verdict::kUnknown;
      }
      std::swap(layer, next);
    }
    return Verdict::kLinearizable;
  }

  uint64_t states() const { return states_; }
  const std::string& explanation() const { return explanation_; }

 private:
  using Sym = typename Model::Symbolic;
  using Set = typename Sym::Set;

  static uint32_t words_for(uint32_t width) { return (width + 63) / 64; }

  // The configurations with one number of ops linearized, keyed by linearized set; a set reached
  // twice gets the join of the state sets.
  struct Layer {
    struct Entry {
      size_t bits_begin;
      uint32_t first;
      uint32_t words;
      Set set;
    };
    std::vector<Entry> entries;
    std::vector<uint64_t> arena;
    IdTable table;

    const uint64_t* bits(const Entry& e) const { return arena.data() + e.bits_begin; }

    void clear() {
      entries.clear();
      arena.clear();
      table.clear();
    }

    void insert(uint32_t first, const std::vector<uint64_t>& window, Set&& set, Sym& sym) {
      const auto words = static_cast<uint32_t>(window.size());
      const auto fresh = static_cast<uint32_t>(entries.size());
      const uint32_t id = table.find_or_insert(hash_window(first, window), fresh, [&](uint32_t e) {
        const Entry& x = entries[e];
        return x.first == first && x.words == words &&
               std::equal(window.begin(), window.end(), arena.begin() + static_cast<std::ptrdiff_t>(x.bits_begin));
      });
      if (id != fresh) {
        entries[id].set = sym.join(entries[id].set, set);
        return;
      }
      entries.push_back(Entry{arena.size(), first, words, std::move(set)});
      arena.insert(arena.end(), window.begin(), window.end());
    }
  };

  // The key of (first, window) plus op: returns the new first pending op, its window in `out`.
  uint32_t child_key(uint32_t first, const uint64_t* window, uint32_t op, std::vector<uint64_t>& out) {
    // rel_: bit i <-> op first+i; bit 0 (first itself) is pending, bits 1.. are the window.
    const uint32_t width = tl_.width(first);
    const uint32_t words = words_for(width);
    rel_.assign(words + 1, 0);
    for (uint32_t k = 0; k < words; ++k) {
      rel_[k] |= window[k] << 1;
      rel_[k + 1] |= window[k] >> 63;
    }
    const uint32_t bit = op - first;
    rel_[bit >> 6] |= uint64_t{1} << (bit & 63);
    uint32_t ones = 0;  // trailing ones: ops now linearized from `first` on
    for (uint64_t w : rel_) {
      const auto t = static_cast<uint32_t>(std::countr_one(w));
      ones += t;
      if (t < 64) break;
    }
    const uint32_t next_first = first + ones;  // <= limit(first) + 1 <= n
    extract_bits(rel_, size_t{ones} + 1, tl_.width(next_first), out);
    return next_first;
  }

  const Timeline<Model>& tl_;
  const uint32_t n_;
  const uint64_t max_states_;
  Sym sym_;
  uint64_t states_ = 0;
  std::vector<uint64_t> rel_;  // scratch for child_key()
  std::string explanation_;
};

}  // namespace detail

// Decides whether `h` is linearizable with respect to Model. Never throws or aborts on bad input:
// a malformed operation (response < invoke) gives kUnknown with an explanation naming it.
template <LinearizabilityModel Model>
CheckResult check(const History<Model>& h, CheckOptions opts = {}) {
  CheckResult result{Verdict::kLinearizable, "", 0};
  for (const Operation<Model>& op : h) {
    if (op.response < op.invoke) {
      result.verdict = Verdict::kUnknown;
      result.explanation = "malformed history: response before invoke in " + detail::describe_op(op);
      return result;
    }
  }
  // Entries and ops are indexed with 32 bits; the budget and this bound keep them inside.
  const uint64_t max_states = std::min<uint64_t>(opts.max_states, detail::kNoEntry - 1);
  if (h.size() >= (size_t{1} << 31)) {
    result.verdict = Verdict::kUnknown;
    result.explanation = "history too long: " + std::to_string(h.size()) + " operations";
    return result;
  }

  std::vector<const Operation<Model>*> ops;
  ops.reserve(h.size());
  for (const Operation<Model>& op : h) ops.push_back(&op);

  // Checks one partition (sorted by invoke); returns false to stop at a definite kNotLinearizable.
  std::string unknown;
  auto run = [&](const std::vector<const Operation<Model>*>& part, const std::string& name) {
    const detail::Timeline<Model> timeline(part);
    auto search_with = [&](auto&& search) {
      const Verdict v = search.run();
      result.states_explored += search.states();
      const std::string prefix = name.empty() ? "" : name + ": ";
      if (v == Verdict::kNotLinearizable) {
        result.verdict = v;
        result.explanation = prefix + search.explanation();
        return false;
      }
      if (v == Verdict::kUnknown && unknown.empty()) unknown = prefix + search.explanation();
      return true;
    };
    if constexpr (SymbolicModel<Model>) {
      if (opts.use_symbolic) return search_with(detail::SymbolicSearch<Model>(timeline, max_states));
    }
    return search_with(detail::DepthFirstSearch<Model>(timeline, max_states));
  };

  if constexpr (PartitionedModel<Model>) {
    std::sort(ops.begin(), ops.end(), [](const Operation<Model>* a, const Operation<Model>* b) {
      const uint64_t pa = Model::partition(a->input), pb = Model::partition(b->input);
      if (pa != pb) return pa < pb;
      return detail::by_invoke(a, b);
    });
    std::vector<const Operation<Model>*> part;
    for (size_t i = 0; i < ops.size();) {
      const uint64_t p = Model::partition(ops[i]->input);
      part.clear();
      for (; i < ops.size() && Model::partition(ops[i]->input) == p; ++i) part.push_back(ops[i]);
      if (!run(part, detail::partition_name<Model>(p))) return result;
    }
  } else {
    std::sort(ops.begin(), ops.end(), detail::by_invoke<Model>);
    if (!run(ops, "")) return result;
  }
  if (!unknown.empty()) {
    result.verdict = Verdict::kUnknown;
    result.explanation = std::move(unknown);
  }
  return result;
}

}  // namespace nrx::lincheck
