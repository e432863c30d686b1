// nrx::vmem::BTreeMap: an ordered in-memory map K -> V, NR-vMem's mapping B-tree (an address
// space's mappings keyed by start virtual address). Point ops and floor/ceil are O(log n); the
// range visitor prunes every subtree outside [lo, hi).
//
// Algorithm: a classic B-tree (Bayer & McCreight 1972; CLRS chapter 18), not a B+-tree: every
// node, inner or leaf, holds up to kMaxKeys entries (key and value), an inner node with n keys has
// n + 1 children. Unlike CLRS, which splits full nodes on the way down and fills thin nodes on the
// way down, both updates here are bottom-up: insert descends once, puts the entry into a leaf and
// splits upward while a node overflows (a node has room for kMaxKeys + 1 entries for that moment);
// erase swaps an inner entry with its predecessor, removes it from a leaf and walks up borrowing
// from a sibling or merging with it, shrinking the root when it empties. So a failed insert (key
// present) or erase (key absent) leaves the tree untouched, and splits happen only when needed.
//
// Invariants (check_invariants() verifies all of them):
//  - keys strictly ascend in every node and separate the children's key ranges;
//  - every non-root node holds kMinKeys..kMaxKeys keys (kMinKeys = kMaxKeys / 2), the root
//    1..kMaxKeys; an empty map has no root;
//  - all leaves are at the same depth, so height <= 1 + log_t((n + 1) / 2), t = kMinKeys + 1;
//  - size() is the number of entries.
//
// Requirements: K is totally ordered by a non-throwing operator<. K and V are nothrow
// move-constructible (entries move between nodes without a way to fail); neither needs to be
// default-constructible or assignable. Copying the map needs both copy-constructible; floor()/
// ceil() return the key by value and floor_value()/ceil_value() assign it, so those need K
// copyable. Only std::bad_alloc escapes (from insert and copying): insert allocates every node it
// needs before it changes anything, so an insert that throws leaves the map as it was; erase never
// allocates.
//
// Thread safety: none; a sequential structure. NR (kernel/nr/replica.h) makes it concurrent by
// replicating it, so copying is a deep copy: a new replica starts from a copy.
//
//   vmem::BTreeMap<uint64_t, Mapping> maps;
//   if (!maps.insert(0x4000, Mapping{...})) { /* already mapped */ }
//   auto m = maps.floor(va);  // the mapping starting at or below va, if any
//   if (m && va < m->first + m->second->len) { /* va is mapped */ }
//   maps.for_each_in(lo, hi, [](uint64_t start, const Mapping& mp) { /* starts in [lo, hi) */ });
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "base/check.h"

namespace nrx::vmem {

template <typename K, typename V, int kMaxKeys = 31>
class BTreeMap {
  static_assert(kMaxKeys >= 3 && kMaxKeys % 2 == 1, "kMaxKeys must be odd and at least 3");
  static_assert(std::is_nothrow_move_constructible_v<K> && std::is_nothrow_move_constructible_v<V>,
                "entries move between nodes, which must not fail");

 public:
  // The fewest keys a non-root node holds; a split of an overflowing node (kMaxKeys + 1 keys)
  // leaves kMinKeys and kMinKeys + 1, a merge makes at most 2 * kMinKeys = kMaxKeys - 1.
  static constexpr int kMinKeys = kMaxKeys / 2;

  BTreeMap() noexcept = default;
  ~BTreeMap() = default;

  BTreeMap(const BTreeMap& other)
    requires std::copy_constructible<K> && std::copy_constructible<V>
      : root_(other.root_ ? clone(*other.root_) : nullptr), size_(other.size_) {}

  // Copy-and-swap: if the copy throws, *this is unchanged.
  BTreeMap& operator=(const BTreeMap& other)
    requires std::copy_constructible<K> && std::copy_constructible<V>
  {
    if (this != &other) {
      BTreeMap copy(other);
      swap(copy);
    }
    return *this;
  }

  // A moved-from map is empty and usable.
  BTreeMap(BTreeMap&& other) noexcept
      : root_(std::move(other.root_)), size_(std::exchange(other.size_, 0)) {}

  BTreeMap& operator=(BTreeMap&& other) noexcept {
    if (this != &other) {
      root_ = std::move(other.root_);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  void swap(BTreeMap& other) noexcept {
    root_.swap(other.root_);
    std::swap(size_, other.size_);
  }
  friend void swap(BTreeMap& a, BTreeMap& b) noexcept { a.swap(b); }

  // Adds key -> value. Returns false, and changes nothing, if key is already present.
  // Throws std::bad_alloc (map unchanged) if a node cannot be allocated.
  [[nodiscard]] bool insert(K key, V value) {
    if (!root_) {
      root_ = std::make_unique<Node>(/*is_leaf=*/true);
      insert_entry(root_.get(), 0, std::move(key), std::move(value), nullptr);
      size_ = 1;
      return true;
    }
    Path path;
    int depth = 0;
    for (Node* x = root_.get();;) {
      const int i = lower_bound(x, key);
      if (i < x->n && !(key < x->key(i))) return false;
      NRX_DCHECK(depth < kMaxHeight, "B-tree deeper than its size allows");
      path[depth++] = {x, i};
      if (x->leaf) break;
      x = x->child[i].get();
    }
    // The nodes that overflow are the full ones at the bottom of the path; allocate their new
    // right halves (and a new root if the old one splits) before changing anything.
    int splits = 0;
    while (splits < depth && path[depth - 1 - splits].node->n == kMaxKeys) ++splits;
    std::array<std::unique_ptr<Node>, kMaxHeight> halves;
    for (int s = 0; s < splits; ++s) {
      halves[s] = std::make_unique<Node>(path[depth - 1 - s].node->leaf);
    }
    std::unique_ptr<Node> new_root;
    if (splits == depth) new_root = std::make_unique<Node>(/*is_leaf=*/false);

    // Nothing below can fail.
    insert_entry(path[depth - 1].node, path[depth - 1].index, std::move(key), std::move(value),
                 nullptr);
    ++size_;
    for (int level = depth - 1; path[level].node->n > kMaxKeys; --level) {
      std::unique_ptr<Node>& right = halves[depth - 1 - level];
      if (level == 0) {
        new_root->child[0] = std::move(root_);
        root_ = std::move(new_root);
        split_child(root_.get(), 0, std::move(right));
        break;
      }
      split_child(path[level - 1].node, path[level - 1].index, std::move(right));
    }
    return true;
  }

  // Removes key and its value. Returns false if key is absent. Never allocates or throws.
  bool erase(const K& key) noexcept {
    Path path;
    int depth = 0;
    Node* x = root_.get();
    int i = 0;
    for (;;) {
      if (x == nullptr) return false;
      i = lower_bound(x, key);
      NRX_DCHECK(depth < kMaxHeight, "B-tree deeper than its size allows");
      path[depth++] = {x, i};
      if (i < x->n && !(key < x->key(i))) break;
      x = x->leaf ? nullptr : x->child[i].get();
    }
    destroy_entry(x, i);
    if (x->leaf) {
      close_gap(x, i);
      --x->n;
    } else {
      // The predecessor (the largest entry of child i's subtree) sits last in a leaf; it moves
      // into the hole, and that leaf is where the tree may have become thin.
      Node* y = x->child[i].get();
      for (;;) {
        NRX_DCHECK(depth < kMaxHeight, "B-tree deeper than its size allows");
        path[depth++] = {y, y->n};
        if (y->leaf) break;
        y = y->child[y->n].get();
      }
      relocate_entry(x, i, y, y->n - 1);
      --y->n;
    }
    --size_;

    for (int level = depth - 1; level > 0 && path[level].node->n < kMinKeys; --level) {
      Node* parent = path[level - 1].node;
      const int ci = path[level - 1].index;
      if (ci > 0 && parent->child[ci - 1]->n > kMinKeys) {
        borrow_from_left(parent, ci);
        break;
      }
      if (ci < parent->n && parent->child[ci + 1]->n > kMinKeys) {
        borrow_from_right(parent, ci);
        break;
      }
      merge_children(parent, ci > 0 ? ci - 1 : ci);  // parent lost a key: look at it next
    }
    if (root_->n == 0) {
      // unique_ptr's move assignment releases the child before it deletes the old root.
      root_ = root_->leaf ? nullptr : std::move(root_->child[0]);
    }
    return true;
  }

  // The value stored under key, or nullptr.
  [[nodiscard]] V* find(const K& key) noexcept {
    Pos p = find_pos(key);
    return p.node ? &p.node->value(p.index) : nullptr;
  }
  [[nodiscard]] const V* find(const K& key) const noexcept {
    Pos p = find_pos(key);
    return p.node ? &p.node->value(p.index) : nullptr;
  }
  [[nodiscard]] bool contains(const K& key) const noexcept { return find_pos(key).node != nullptr; }

  // The entry with the greatest key <= key, or nullopt.
  [[nodiscard]] std::optional<std::pair<K, const V*>> floor(const K& key) const {
    Pos p = floor_pos(key);
    if (!p.node) return std::nullopt;
    return std::pair<K, const V*>(p.node->key(p.index), &p.node->value(p.index));
  }

  // The entry with the smallest key >= key, or nullopt.
  [[nodiscard]] std::optional<std::pair<K, const V*>> ceil(const K& key) const {
    Pos p = ceil_pos(key);
    if (!p.node) return std::nullopt;
    return std::pair<K, const V*>(p.node->key(p.index), &p.node->value(p.index));
  }

  // Mutable floor/ceil, to update a value in place: the value of the entry with the greatest key
  // <= key (smallest key >= key), or nullptr; if found and found_key is non-null, *found_key is
  // set to the entry's key. The key itself cannot be changed through these (it orders the tree).
  [[nodiscard]] V* floor_value(const K& key, K* found_key = nullptr) {
    return value_at(floor_pos(key), found_key);
  }
  [[nodiscard]] V* ceil_value(const K& key, K* found_key = nullptr) {
    return value_at(ceil_pos(key), found_key);
  }

  // Calls f(const K&, const V&) for every entry in ascending key order. f must not modify the map.
  template <typename F>
  void for_each(F&& f) const {
    if (root_) visit_all(root_.get(), f);
  }

  // Calls f(const K&, const V&) in ascending key order for the entries with lo <= key < hi
  // (none if !(lo < hi)). Visits only the subtrees whose key range meets [lo, hi): O(log n + m)
  // for m entries reported. f must not modify the map.
  template <typename F>
  void for_each_in(const K& lo, const K& hi, F&& f) const {
    if (root_ && lo < hi) visit_range(root_.get(), &lo, hi, f);
  }

  [[nodiscard]] size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  void clear() noexcept {
    root_.reset();
    size_ = 0;
  }

  // Levels of nodes: 0 for an empty map, 1 when the root is a leaf.
  [[nodiscard]] int height() const noexcept {
    int h = 0;
    for (const Node* x = root_.get(); x != nullptr; x = x->leaf ? nullptr : x->child[0].get()) ++h;
    return h;
  }

  // Verifies the invariants listed at the top of this file in O(n). On failure returns false and,
  // if why is non-null, says which invariant broke and where.
  bool check_invariants(std::string* why = nullptr) const {
    if (!root_) {
      if (size_ == 0) return true;
      return fail(why, "no root but size() is " + std::to_string(size_));
    }
    Check c;
    if (!check_node(root_.get(), nullptr, nullptr, 1, c, why)) return false;
    if (c.entries != size_) {
      return fail(why, "size() is " + std::to_string(size_) + " but the tree holds " +
                           std::to_string(c.entries) + " entries");
    }
    return true;
  }

 private:
  // One slot of entry storage whose lifetime the node manages: slots [0, n) hold live objects.
  template <typename T>
  union Slot {
    Slot() noexcept {}
    ~Slot() {}
    T v;
  };

  // Room for one entry beyond kMaxKeys: insert overflows a node by one, then splits it.
  static constexpr int kSlots = kMaxKeys + 1;

  struct Node {
    explicit Node(bool is_leaf) noexcept : leaf(is_leaf) {}
    ~Node() {
      for (int i = 0; i < n; ++i) {
        std::destroy_at(&keys[i].v);
        std::destroy_at(&values[i].v);
      }
    }
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;

    K& key(int i) noexcept { return keys[i].v; }
    const K& key(int i) const noexcept { return keys[i].v; }
    V& value(int i) noexcept { return values[i].v; }
    const V& value(int i) const noexcept { return values[i].v; }

    int n = 0;  // live entries; an inner node also has n + 1 children
    const bool leaf;
    Slot<K> keys[kSlots];
    Slot<V> values[kSlots];
    std::unique_ptr<Node> child[kSlots + 1];  // all null in a leaf
  };

  // An upper bound on the height: a tree of height h holds at least 2 t^(h-1) - 1 entries
  // (CLRS theorem 18.1), t = kMinKeys + 1, and size_ is a size_t. Sizes the descent paths.
  static constexpr int max_height() {
    const size_t t = static_cast<size_t>(kMinKeys) + 1;
    int h = 1;
    for (size_t pow = 1; pow <= SIZE_MAX / t; pow *= t) ++h;  // pow = t^(h-1)
    return h + 1;
  }
  static constexpr int kMaxHeight = max_height();

  // One step of a descent: the node and the child index taken from it (for the last node, the
  // entry index).
  struct Step {
    Node* node;
    int index;
  };
  using Path = std::array<Step, kMaxHeight>;

  struct Pos {
    Node* node = nullptr;
    int index = 0;
  };

  // The first index i in x with !(x->key(i) < key), or x->n.
  static int lower_bound(const Node* x, const K& key) noexcept {
    int lo = 0, hi = x->n;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (x->key(mid) < key) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }

  Pos find_pos(const K& key) const noexcept {
    for (Node* x = root_.get(); x != nullptr;) {
      const int i = lower_bound(x, key);
      if (i < x->n && !(key < x->key(i))) return {x, i};
      x = x->leaf ? nullptr : x->child[i].get();
    }
    return {};
  }

  // Descending into child i, every key found deeper is greater than key(i - 1), so the last
  // candidate seen on the path is the floor.
  Pos floor_pos(const K& key) const noexcept {
    Pos best;
    for (Node* x = root_.get(); x != nullptr;) {
      const int i = lower_bound(x, key);
      if (i < x->n && !(key < x->key(i))) return {x, i};
      if (i > 0) best = {x, i - 1};
      x = x->leaf ? nullptr : x->child[i].get();
    }
    return best;
  }

  // Mirror image of floor_pos: keys deeper in child i are less than key(i).
  Pos ceil_pos(const K& key) const noexcept {
    Pos best;
    for (Node* x = root_.get(); x != nullptr;) {
      const int i = lower_bound(x, key);
      if (i < x->n && !(key < x->key(i))) return {x, i};
      if (i < x->n) best = {x, i};
      x = x->leaf ? nullptr : x->child[i].get();
    }
    return best;
  }

  static V* value_at(Pos p, K* found_key) {
    if (!p.node) return nullptr;
    if (found_key != nullptr) *found_key = p.node->key(p.index);
    return &p.node->value(p.index);
  }

  // --- Entry moves. Each keeps "slots [0, n) are live" true once the caller fixes n. ---------

  static void construct_entry(Node* x, int i, K&& key, V&& value) noexcept {
    std::construct_at(&x->keys[i].v, std::move(key));
    std::construct_at(&x->values[i].v, std::move(value));
  }
  static void destroy_entry(Node* x, int i) noexcept {
    std::destroy_at(&x->keys[i].v);
    std::destroy_at(&x->values[i].v);
  }
  // Moves the live entry src[si] into the dead slot dst[di]; src[si] is dead afterwards.
  static void relocate_entry(Node* dst, int di, Node* src, int si) noexcept {
    construct_entry(dst, di, std::move(src->key(si)), std::move(src->value(si)));
    destroy_entry(src, si);
  }
  // Slot i of x is dead: moves entries i+1..n-1 down one (children untouched); slot n-1 is then
  // dead and the caller decrements n.
  static void close_gap(Node* x, int i) noexcept {
    for (int j = i; j + 1 < x->n; ++j) relocate_entry(x, j, x, j + 1);
  }

  // Inserts (key, value) as entry i of x and right (null for a leaf) as child i + 1. x may
  // hold kMaxKeys entries, and then overflows by one.
  static void insert_entry(Node* x, int i, K&& key, V&& value, std::unique_ptr<Node> right) noexcept {
    NRX_DCHECK(x->n < kSlots, "node already overflowing");
    for (int j = x->n; j > i; --j) relocate_entry(x, j, x, j - 1);
    construct_entry(x, i, std::move(key), std::move(value));
    if (!x->leaf) {
      for (int j = x->n + 1; j > i + 1; --j) x->child[j] = std::move(x->child[j - 1]);
      x->child[i + 1] = std::move(right);
    }
    ++x->n;
  }

  // parent->child[ci] overflows (kMaxKeys + 1 entries): it keeps its first kMinKeys entries,
  // right (empty, same kind) takes the last kMinKeys + 1, and the median moves up into parent
  // as entry ci. parent may overflow in turn.
  static void split_child(Node* parent, int ci, std::unique_ptr<Node> right) noexcept {
    Node* full = parent->child[ci].get();
    NRX_DCHECK(full->n == kSlots && right->n == 0 && right->leaf == full->leaf, "bad split");
    constexpr int m = kMinKeys;
    for (int j = m + 1; j < full->n; ++j) relocate_entry(right.get(), j - m - 1, full, j);
    right->n = full->n - m - 1;
    if (!full->leaf) {
      for (int j = m + 1; j <= full->n; ++j) right->child[j - m - 1] = std::move(full->child[j]);
    }
    K median_key(std::move(full->key(m)));
    V median_value(std::move(full->value(m)));
    destroy_entry(full, m);
    full->n = m;
    insert_entry(parent, ci, std::move(median_key), std::move(median_value), std::move(right));
  }

  // parent->child[ci] is one entry short; its left sibling has one to spare. Rotates right:
  // the separator comes down in front of child ci, the sibling's last entry goes up.
  static void borrow_from_left(Node* parent, int ci) noexcept {
    Node* thin = parent->child[ci].get();
    Node* left = parent->child[ci - 1].get();
    for (int j = thin->n; j > 0; --j) relocate_entry(thin, j, thin, j - 1);
    relocate_entry(thin, 0, parent, ci - 1);
    if (!thin->leaf) {
      for (int j = thin->n + 1; j > 0; --j) thin->child[j] = std::move(thin->child[j - 1]);
      thin->child[0] = std::move(left->child[left->n]);
    }
    ++thin->n;
    relocate_entry(parent, ci - 1, left, left->n - 1);
    --left->n;
  }

  // Mirror image: the separator goes to the end of child ci, the right sibling's first entry up.
  static void borrow_from_right(Node* parent, int ci) noexcept {
    Node* thin = parent->child[ci].get();
    Node* right = parent->child[ci + 1].get();
    relocate_entry(thin, thin->n, parent, ci);
    if (!thin->leaf) thin->child[thin->n + 1] = std::move(right->child[0]);
    ++thin->n;
    relocate_entry(parent, ci, right, 0);
    close_gap(right, 0);
    if (!right->leaf) {
      for (int j = 0; j < right->n; ++j) right->child[j] = std::move(right->child[j + 1]);
    }
    --right->n;
  }

  // Merges parent->child[s + 1] and separator s into parent->child[s] (together at most
  // 2 * kMinKeys = kMaxKeys - 1 entries, as one of them is thin) and frees the right node.
  static void merge_children(Node* parent, int s) noexcept {
    Node* left = parent->child[s].get();
    std::unique_ptr<Node> right = std::move(parent->child[s + 1]);
    NRX_DCHECK(left->n + 1 + right->n <= kMaxKeys, "merge would overflow");
    relocate_entry(left, left->n, parent, s);
    for (int j = 0; j < right->n; ++j) relocate_entry(left, left->n + 1 + j, right.get(), j);
    if (!left->leaf) {
      for (int j = 0; j <= right->n; ++j) left->child[left->n + 1 + j] = std::move(right->child[j]);
    }
    left->n += 1 + right->n;
    right->n = 0;  // every entry moved out; its destructor has nothing left to destroy
    close_gap(parent, s);
    for (int j = s + 1; j < parent->n; ++j) parent->child[j] = std::move(parent->child[j + 1]);
    --parent->n;
  }

  // Deep copy of a subtree. Each entry is copied into locals first so that a throwing copy leaks
  // nothing: the partial node holds only live entries and is freed by its owner.
  static std::unique_ptr<Node> clone(const Node& src) {
    auto dst = std::make_unique<Node>(src.leaf);
    for (int i = 0; i < src.n; ++i) {
      K key(src.key(i));
      V value(src.value(i));
      construct_entry(dst.get(), i, std::move(key), std::move(value));
      ++dst->n;
    }
    if (!src.leaf) {
      for (int i = 0; i <= src.n; ++i) dst->child[i] = clone(*src.child[i]);
    }
    return dst;
  }

  template <typename F>
  static void visit_all(const Node* x, F& f) {
    for (int i = 0; i < x->n; ++i) {
      if (!x->leaf) visit_all(x->child[i].get(), f);
      f(x->key(i), x->value(i));
    }
    if (!x->leaf) visit_all(x->child[x->n].get(), f);
  }

  // Visits the entries of x's subtree in [*lo, hi); lo is null when every key here is >= lo.
  // Children left of i = lower_bound(lo) hold only keys < lo, and so does child i if key(i) == lo;
  // children right of the first one visited are above lo. Once a key >= hi is met, nothing right
  // of it is visited (and the callers up the recursion meet a key >= hi next).
  template <typename F>
  static void visit_range(const Node* x, const K* lo, const K& hi, F& f) {
    int i = 0;
    bool visit_child = !x->leaf;
    if (lo != nullptr) {
      i = lower_bound(x, *lo);
      if (i < x->n && !(*lo < x->key(i))) visit_child = false;
    }
    for (;; ++i) {
      if (visit_child) visit_range(x->child[i].get(), lo, hi, f);
      if (i == x->n || !(x->key(i) < hi)) return;
      f(x->key(i), x->value(i));
      lo = nullptr;
      visit_child = !x->leaf;
    }
  }

  struct Check {
    int leaf_depth = 0;  // depth of the first leaf met; 0 before that
    size_t entries = 0;
  };

  static bool fail(std::string* why, std::string reason) {
    if (why != nullptr) *why = std::move(reason);
    return false;
  }

  // Checks the subtree at x, whose keys must lie strictly between *lo and *hi (null: unbounded).
  bool check_node(const Node* x, const K* lo, const K* hi, int depth, Check& c,
                  std::string* why) const {
    const std::string where = "node at depth " + std::to_string(depth);
    const int min_keys = x == root_.get() ? 1 : kMinKeys;
    if (x->n < min_keys || x->n > kMaxKeys) {
      return fail(why, where + " holds " + std::to_string(x->n) + " keys, outside [" +
                           std::to_string(min_keys) + ", " + std::to_string(kMaxKeys) + "]");
    }
    for (int i = 1; i < x->n; ++i) {
      if (!(x->key(i - 1) < x->key(i))) {
        return fail(why, where + ": keys " + std::to_string(i - 1) + " and " + std::to_string(i) +
                             " are not ascending");
      }
    }
    if (lo != nullptr && !(*lo < x->key(0))) {
      return fail(why, where + ": first key is not above its parent's separator");
    }
    if (hi != nullptr && !(x->key(x->n - 1) < *hi)) {
      return fail(why, where + ": last key is not below its parent's separator");
    }
    c.entries += static_cast<size_t>(x->n);
    if (x->leaf) {
      for (const auto& ch : x->child) {
        if (ch) return fail(why, "leaf " + where + " has a child");
      }
      if (c.leaf_depth == 0) c.leaf_depth = depth;
      if (c.leaf_depth != depth) {
        return fail(why, "leaf " + where + ", but an earlier leaf is at depth " +
                             std::to_string(c.leaf_depth));
      }
      return true;
    }
    for (int i = 0; i < kSlots + 1; ++i) {
      if ((i <= x->n) != static_cast<bool>(x->child[i])) {
        return fail(why, "inner " + where + " with " + std::to_string(x->n) + " keys: child " +
                             std::to_string(i) + (i <= x->n ? " is missing" : " is set"));
      }
    }
    for (int i = 0; i <= x->n; ++i) {
      const K* child_lo = i > 0 ? &x->key(i - 1) : lo;
      const K* child_hi = i < x->n ? &x->key(i) : hi;
      if (!check_node(x->child[i].get(), child_lo, child_hi, depth + 1, c, why)) return false;
    }
    return true;
  }

  std::unique_ptr<Node> root_;  // null iff the map is empty
  size_t size_ = 0;
};

}  // namespace nrx::vmem
