// The TEST_P bodies of the log conformance suite (log_conformance.h). Compiled once into the
// OBJECT library nrx::log_conformance; each backend's test binary instantiates the suite.
//
// Conventions: every case builds its own small log through the backend's factory; entry contents
// are derived from a key (usually the index the entry must land at), so a stale, torn or misplaced
// entry is detected by comparing bytes; every wait is bounded (full_timeout, a deadline on an
// atomic flag, or a join), and threads are joined by a guard so a failed ASSERT never leaves one
// running.
#include "tests/logs/log_conformance.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "base/thread_annotations.h"

namespace nrx::logs::testing {

// A backend binary that links the suite but does not instantiate it is not an error.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(LogConformance);

std::unique_ptr<Log> LogConformance::create(const LogOptions& options) const {
  Result<std::unique_ptr<Log>> made = GetParam().make(options);
  if (!made.ok()) {
    ADD_FAILURE() << "backend " << GetParam().name << " failed to create a log: " << made.status().to_string();
    return nullptr;
  }
  if (*made == nullptr) {
    ADD_FAILURE() << "backend " << GetParam().name << " returned a null log";
    return nullptr;
  }
  return std::move(made).value();
}

LogOptions LogConformance::small_options() {
  LogOptions o;
  o.log_id = 0;
  o.entry_size = 32;
  o.slot_count = 64;
  o.max_replicas = 4;
  o.full_timeout = std::chrono::seconds(5);
  o.payload_slots = 16;
  return o;
}

namespace {

using Bytes = std::vector<std::byte>;
using Clock = std::chrono::steady_clock;

// Upper bound for any wait on another thread in this file; a correct backend needs milliseconds.
constexpr auto kWaitBound = std::chrono::seconds(10);

// ---- Entry contents ---------------------------------------------------------------------------

// |length| bytes derived from |key|: the key itself (host byte order, as many of its 8 bytes as
// fit), then 8-byte words that mix the key with their offset. Two keys never give the same
// content of 8+ bytes, and a word copied from another entry or lap does not match. Built a word
// at a time so multi-KiB entries stay cheap under ThreadSanitizer.
Bytes keyed_bytes(uint64_t key, size_t length) {
  Bytes out(length);
  for (size_t off = 0; off < length; off += sizeof(uint64_t)) {
    const uint64_t word = off == 0 ? key : ((key + 1) * 0x9e3779b97f4a7c15ull) ^ (off * 0xbf58476d1ce4e5b9ull);
    std::memcpy(out.data() + off, &word, std::min(sizeof(word), length - off));
  }
  return out;
}

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// An entry as a visitor saw it, copied out of the log (Entry::data is valid only during the call).
struct Seen {
  LogIndex index;
  ReplicaId writer;
  Bytes data;
  bool operator==(const Seen&) const = default;
};

void PrintTo(const Seen& s, std::ostream* os) {
  *os << "{index=" << s.index << " writer=" << s.writer << " length=" << s.data.size() << "}";
}

Seen copy_entry(const Entry& e) { return {e.index, e.writer, Bytes(e.data.begin(), e.data.end())}; }

// Checks that |seen| is exactly the entries at indices [from, from + size) in order, with every
// entry's content equal to keyed_bytes(index, length_of(index)) and its writer |writer|.
template <typename LengthOf>
::testing::AssertionResult indexed_run(const std::vector<Seen>& seen, LogIndex from, size_t size,
                                       ReplicaId writer, LengthOf length_of) {
  if (seen.size() != size) {
    return ::testing::AssertionFailure() << "saw " << seen.size() << " entries, expected " << size;
  }
  for (size_t i = 0; i < seen.size(); ++i) {
    const LogIndex want = from + i;
    const Seen& s = seen[i];
    if (s.index != want) {
      return ::testing::AssertionFailure() << "position " << i << ": index " << s.index << ", expected " << want;
    }
    if (s.writer != writer) {
      return ::testing::AssertionFailure() << "index " << want << ": writer " << s.writer << ", expected " << writer;
    }
    if (!same_bytes(s.data, keyed_bytes(want, length_of(want)))) {
      return ::testing::AssertionFailure() << "index " << want << ": wrong content (length " << s.data.size()
                                           << ", expected " << length_of(want) << "; stale or torn entry?)";
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- Log helpers ------------------------------------------------------------------------------

Result<LogIndex> append_one(Log& log, ReplicaId replica, std::span<const std::byte> entry, EntryVisitor apply_own) {
  const std::span<const std::byte> batch[] = {entry};
  return log.append(replica, batch, apply_own);
}

Result<LogIndex> append_all(Log& log, ReplicaId replica, const std::vector<Bytes>& entries, EntryVisitor apply_own) {
  const std::vector<std::span<const std::byte>> batch(entries.begin(), entries.end());
  return log.append(replica, batch, apply_own);
}

// head <= ltail(r) <= ctail <= tail and tail - head <= slot_count, for a quiescent log.
::testing::AssertionResult invariants_hold(const Log& log, std::initializer_list<ReplicaId> replicas) {
  const LogIndex head = log.head();
  const LogIndex ctail = log.ctail();
  const LogIndex tail = log.tail();
  if (!(head <= ctail && ctail <= tail)) {
    return ::testing::AssertionFailure() << "head " << head << " ctail " << ctail << " tail " << tail;
  }
  if (tail - head > log.options().slot_count) {
    return ::testing::AssertionFailure() << "tail " << tail << " - head " << head << " > slot_count";
  }
  for (ReplicaId r : replicas) {
    const Result<LogIndex> ltail = log.ltail(r);
    if (!ltail.ok()) return ::testing::AssertionFailure() << "ltail(" << r << "): " << ltail.status().to_string();
    if (!(head <= *ltail && *ltail <= ctail)) {
      return ::testing::AssertionFailure() << "ltail(" << r << ") " << *ltail << " outside [head " << head
                                           << ", ctail " << ctail << "]";
    }
  }
  return ::testing::AssertionSuccess();
}

// Spins (yielding) until |pred| holds or |timeout| passes; returns whether |pred| held.
template <typename Pred>
bool wait_for(Pred pred, std::chrono::nanoseconds timeout = kWaitBound) {
  const auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Joins its threads on destruction, after raising |stop|, so an ASSERT that returns early from a
// test body never destroys a joinable std::thread. Thread loops poll stop().
class ThreadGroup {
 public:
  ThreadGroup() = default;
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  ~ThreadGroup() {
    stop_.store(true, std::memory_order_relaxed);
    join();
  }
  template <typename F>
  void start(F&& f) {
    threads_.emplace_back(std::forward<F>(f));
  }
  void join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  bool stop() const { return stop_.load(std::memory_order_relaxed); }
  void request_stop() { stop_.store(true, std::memory_order_relaxed); }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// Records the lagging-replica hook's calls; shared with the hook through a shared_ptr because
// LogOptions (and so the hook) is copied into the log.
struct HookRecorder {
  Mutex mu;
  std::vector<std::pair<uint32_t, ReplicaId>> calls NRX_GUARDED_BY(mu);
  std::atomic<int> count{0};

  LaggingReplicaHook hook(std::shared_ptr<HookRecorder> self) {
    return [self](uint32_t log_id, ReplicaId replica) {
      {
        MutexLock lock(self->mu);
        if (self->calls.size() < 4096) self->calls.emplace_back(log_id, replica);
      }
      // release: a waiter that sees the count also sees the recorded call.
      self->count.fetch_add(1, std::memory_order_release);
    };
  }
  std::vector<std::pair<uint32_t, ReplicaId>> snapshot() {
    MutexLock lock(mu);
    return calls;
  }
};

}  // namespace

// ---- 1. Ordering ------------------------------------------------------------------------------

// Entries appended by three replicas are applied by each, exactly once, in index order, with the
// right writer and bytes; append returns the first index of a contiguous run; tail, ctail, ltail
// and head move as the contract says; apply_own is not used while the log has room.
TEST_P(LogConformance, Ordering) {
  LogOptions o = small_options();
  o.entry_size = 48;
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  ReplicaId r[3];
  for (ReplicaId& id : r) {
    Result<ReplicaId> reg = log->register_replica();
    ASSERT_TRUE(reg.ok()) << reg.status().to_string();
    id = *reg;
  }
  EXPECT_EQ(log->tail(), 0u);
  EXPECT_EQ(log->ctail(), 0u);
  EXPECT_EQ(log->head(), 0u);
  for (ReplicaId id : r) {
    EXPECT_EQ(log->ltail(id).value_or(~0ull), 0u);
    EXPECT_TRUE(log->is_synced_for_reads(id, 0));
  }

  // Batches of various sizes; entry lengths include 1 and entry_size (48).
  struct Planned {
    ReplicaId writer;
    std::vector<size_t> lengths;
    LogIndex first;  // the index append must return
  };
  const std::vector<Planned> plan = {
      {r[0], {1}, 0},
      {r[1], {48, 9, 8}, 1},
      {r[2], {17, 30}, 4},
      {r[0], {48}, 6},
  };
  std::vector<Seen> expected;
  int own_calls = 0;
  auto count_own = [&own_calls](const Entry&) { ++own_calls; };
  for (const Planned& p : plan) {
    std::vector<Bytes> entries;
    for (size_t k = 0; k < p.lengths.size(); ++k) entries.push_back(keyed_bytes(p.first + k, p.lengths[k]));
    Result<LogIndex> first = append_all(*log, p.writer, entries, count_own);
    ASSERT_TRUE(first.ok()) << first.status().to_string();
    EXPECT_EQ(*first, p.first);
    EXPECT_EQ(log->tail(), p.first + entries.size());
    for (size_t k = 0; k < entries.size(); ++k) expected.push_back({p.first + k, p.writer, entries[k]});
  }
  EXPECT_EQ(own_calls, 0) << "apply_own ran although the log was far from full";
  EXPECT_EQ(log->ctail(), 0u) << "no replica has applied anything yet";
  EXPECT_EQ(log->head(), 0u);
  EXPECT_TRUE(invariants_hold(*log, {r[0], r[1], r[2]}));

  std::vector<Seen> seen;
  auto record = [&seen](const Entry& e) { seen.push_back(copy_entry(e)); };

  // r1 applies everything first.
  Result<LogIndex> lt = log->exec(r[1], record);
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 7u);
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(log->ltail(r[1]).value_or(0), 7u);
  EXPECT_EQ(log->ctail(), 7u);
  EXPECT_EQ(log->head(), 0u) << "r0 and r2 have applied nothing";
  EXPECT_TRUE(log->is_synced_for_reads(r[1], log->ctail()));
  EXPECT_FALSE(log->is_synced_for_reads(r[0], log->ctail()));
  EXPECT_TRUE(log->is_synced_for_reads(r[0], 0));
  EXPECT_TRUE(invariants_hold(*log, {r[0], r[1], r[2]}));

  // Nothing new: exec returns the same ltail and visits nothing.
  seen.clear();
  lt = log->exec(r[1], record);
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 7u);
  EXPECT_TRUE(seen.empty());

  seen.clear();
  lt = log->exec(r[0], record);
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 7u);
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(log->head(), 0u) << "r2 has applied nothing";
  EXPECT_EQ(log->ctail(), 7u);

  // More entries after two replicas caught up: each replica sees only what it has not applied.
  const std::vector<Bytes> more = {keyed_bytes(7, 5), keyed_bytes(8, 2)};
  Result<LogIndex> first = append_all(*log, r[2], more, count_own);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_EQ(*first, 7u);
  EXPECT_EQ(log->tail(), 9u);
  EXPECT_EQ(log->ctail(), 7u);
  EXPECT_TRUE(log->is_synced_for_reads(r[0], log->ctail()));
  EXPECT_FALSE(log->is_synced_for_reads(r[0], log->tail()));
  expected.push_back({7, r[2], more[0]});
  expected.push_back({8, r[2], more[1]});
  const std::vector<Seen> tail_part(expected.begin() + 7, expected.end());

  seen.clear();
  lt = log->exec(r[2], record);
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 9u);
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(log->ctail(), 9u);
  EXPECT_EQ(log->head(), 7u) << "r0 and r1 are at 7";

  seen.clear();
  lt = log->exec(r[0], record);
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(seen, tail_part);
  EXPECT_EQ(log->head(), 7u) << "r1 is at 7";

  seen.clear();
  lt = log->exec(r[1], record);
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(seen, tail_part);
  EXPECT_EQ(log->head(), 9u);
  EXPECT_EQ(log->ctail(), 9u);
  EXPECT_EQ(log->tail(), 9u);
  EXPECT_EQ(own_calls, 0);
  EXPECT_TRUE(invariants_hold(*log, {r[0], r[1], r[2]}));
}

// A replica registered after others applied entries starts at head (not at tail, not at 0):
// it sees the entries from head on, and none before.
// exec_while stops before the first entry its visitor rejects: that entry is not applied, ltail
// points at it, and the next exec starts there (CNR stops at a scan this way).
TEST_P(LogConformance, ExecWhileStopsBeforeRejectedEntry) {
  LogOptions o = small_options();
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const ReplicaId a = log->register_replica().value();
  const ReplicaId b = log->register_replica().value();
  std::vector<Bytes> entries;
  for (LogIndex i = 0; i < 6; ++i) entries.push_back(keyed_bytes(i, 8));
  ASSERT_TRUE(append_all(*log, a, entries, [](const Entry&) {}).ok());

  std::vector<LogIndex> seen;
  Result<LogIndex> stopped = log->exec_while(b, [&seen](const Entry& e) {
    if (e.index == 3) return false;
    seen.push_back(e.index);
    return true;
  });
  ASSERT_TRUE(stopped.ok()) << stopped.status().to_string();
  EXPECT_EQ(*stopped, 3u);
  EXPECT_EQ(seen, (std::vector<LogIndex>{0, 1, 2}));
  EXPECT_EQ(log->ltail(b).value_or(~0ull), 3u);
  EXPECT_FALSE(log->is_synced_for_reads(b, 6));

  // Stopping at once changes nothing; then a plain exec resumes at the rejected entry.
  EXPECT_EQ(log->exec_while(b, [](const Entry&) { return false; }).value_or(~0ull), 3u);
  seen.clear();
  EXPECT_EQ(log->exec(b, [&seen](const Entry& e) { seen.push_back(e.index); }).value_or(~0ull), 6u);
  EXPECT_EQ(seen, (std::vector<LogIndex>{3, 4, 5}));
  EXPECT_FALSE(log->exec_while(99, [](const Entry&) { return true; }).ok());
}

TEST_P(LogConformance, LateReplicaStartsAtHead) {
  std::unique_ptr<Log> log = create(small_options());
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  auto ignore = [](const Entry&) {};
  auto length_of = [](LogIndex i) { return size_t{8} + i; };
  // Entries 0..4 applied by A, entries 5..7 not yet: head 5, tail 8.
  for (LogIndex i = 0; i < 8; ++i) {
    const Bytes e = keyed_bytes(i, length_of(i));
    ASSERT_EQ(append_one(*log, *a, e, ignore).value_or(~0ull), i);
    if (i == 4) {
      ASSERT_EQ(log->exec(*a, ignore).value_or(0), 5u);
    }
  }
  EXPECT_EQ(log->head(), 5u);
  EXPECT_EQ(log->tail(), 8u);

  const Result<ReplicaId> b = log->register_replica();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_NE(*a, *b);
  EXPECT_EQ(log->ltail(*b).value_or(~0ull), 5u) << "a new replica's ltail starts at head";
  EXPECT_EQ(log->head(), 5u);
  EXPECT_TRUE(invariants_hold(*log, {*a, *b}));

  std::vector<Seen> seen;
  auto record = [&seen](const Entry& e) { seen.push_back(copy_entry(e)); };
  EXPECT_EQ(log->exec(*b, record).value_or(0), 8u);
  EXPECT_TRUE(indexed_run(seen, 5, 3, *a, length_of)) << "the late replica applies from head";
  const Bytes e8 = keyed_bytes(8, length_of(8));
  ASSERT_EQ(append_one(*log, *b, e8, ignore).value_or(~0ull), 8u);
  seen.clear();
  EXPECT_EQ(log->exec(*b, record).value_or(0), 9u);
  EXPECT_TRUE(indexed_run(seen, 8, 1, *b, length_of));
  EXPECT_EQ(log->head(), 5u) << "A is still at 5";
  seen.clear();
  EXPECT_EQ(log->exec(*a, record).value_or(0), 9u);
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[3].writer, *b);
  EXPECT_EQ(log->head(), 9u);
}

// ---- 2. Batch reservation is one atomic step --------------------------------------------------

// K threads, each its own replica, append batches of B entries concurrently (and exec their own
// replica in between). Every batch must occupy B consecutive indices, in order, and every replica
// must see the same gap-free, duplicate-free sequence.
TEST_P(LogConformance, BatchReservationIsAtomic) {
  constexpr int kThreads = 4;
  constexpr int kBatches = 25;
  constexpr int kBatchSize = 5;
  constexpr uint64_t kTotal = uint64_t{kThreads} * kBatches * kBatchSize;  // 500: never fills 1024
  LogOptions o = small_options();
  o.slot_count = 1024;
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);

  // Key of entry k of batch b of thread t; its length varies with the key.
  auto key_of = [](int t, int b, int k) { return (uint64_t(t) << 32) | (uint64_t(b) << 8) | uint64_t(k); };
  auto length_of = [](uint64_t key) { return size_t{8} + (key * 7) % 25; };  // 8..32

  struct PerThread {
    ReplicaId replica = 0;
    std::vector<LogIndex> firsts;  // first index of each batch
    std::vector<Seen> seen;        // what its replica applied, in order
    std::string error;
  };
  std::array<PerThread, kThreads> per;
  for (PerThread& p : per) {
    Result<ReplicaId> reg = log->register_replica();
    ASSERT_TRUE(reg.ok()) << reg.status().to_string();
    p.replica = *reg;
  }

  std::atomic<int> arrived{0};
  {
    ThreadGroup group;
    for (int t = 0; t < kThreads; ++t) {
      group.start([&, t] {
        PerThread& me = per[t];
        auto record = [&me](const Entry& e) { me.seen.push_back(copy_entry(e)); };
        arrived.fetch_add(1, std::memory_order_relaxed);
        // Start together so the batches really race (bounded: all threads are already running).
        if (!wait_for([&] { return arrived.load(std::memory_order_relaxed) == kThreads || group.stop(); })) {
          me.error = "start gate timed out";
          return;
        }
        for (int b = 0; b < kBatches && !group.stop(); ++b) {
          std::vector<Bytes> entries;
          for (int k = 0; k < kBatchSize; ++k) entries.push_back(keyed_bytes(key_of(t, b, k), length_of(key_of(t, b, k))));
          Result<LogIndex> first = append_all(*log, me.replica, entries, record);
          if (!first.ok()) {
            me.error = "append: " + first.status().to_string();
            return;
          }
          me.firsts.push_back(*first);
          if (Result<LogIndex> lt = log->exec(me.replica, record); !lt.ok()) {
            me.error = "exec: " + lt.status().to_string();
            return;
          }
        }
      });
    }
    group.join();
  }
  for (const PerThread& p : per) ASSERT_EQ(p.error, "");
  ASSERT_EQ(log->tail(), kTotal);

  // Every replica catches up; all must have seen indices 0..kTotal-1 exactly once, in order.
  for (PerThread& p : per) {
    auto record = [&p](const Entry& e) { p.seen.push_back(copy_entry(e)); };
    ASSERT_EQ(log->exec(p.replica, record).value_or(0), kTotal);
    ASSERT_EQ(p.seen.size(), kTotal) << "replica " << p.replica;
    for (uint64_t i = 0; i < kTotal; ++i) ASSERT_EQ(p.seen[i].index, i) << "replica " << p.replica;
  }
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(per[t].seen, per[0].seen) << "replicas disagree";

  // Each batch sits, complete and in order, at [first, first + B).
  const std::vector<Seen>& seq = per[0].seen;
  std::set<LogIndex> firsts;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(per[t].firsts.size(), size_t{kBatches});
    for (int b = 0; b < kBatches; ++b) {
      const LogIndex first = per[t].firsts[b];
      ASSERT_LE(first + kBatchSize, kTotal);
      EXPECT_TRUE(firsts.insert(first).second) << "two batches got first index " << first;
      for (int k = 0; k < kBatchSize; ++k) {
        const Seen& s = seq[first + k];
        const uint64_t key = key_of(t, b, k);
        EXPECT_EQ(s.writer, per[t].replica) << "index " << first + k;
        EXPECT_TRUE(same_bytes(s.data, keyed_bytes(key, length_of(key))))
            << "thread " << t << " batch " << b << " entry " << k << " is not at index " << first + k;
      }
    }
  }
  // The batches' first indices are B apart: together they tile [0, kTotal).
  LogIndex expect_first = 0;
  for (LogIndex f : firsts) {
    EXPECT_EQ(f, expect_first);
    expect_first = f + kBatchSize;
  }
}

// ---- 3. Wrap-around ---------------------------------------------------------------------------

// An 8-slot log goes round 128 times: replica A appends (batches of 1 and 2) and applies through
// apply_own and exec; replica B applies concurrently from another thread. Both must see every
// entry exactly once with its own content: an entry left from a previous lap has another index
// in its bytes and is caught.
TEST_P(LogConformance, WrapAroundManyLaps) {
  constexpr uint32_t kSlots = 8;
  constexpr uint64_t kLaps = 128;
  constexpr uint64_t kTotal = kSlots * kLaps;
  LogOptions o = small_options();
  o.slot_count = kSlots;
  o.entry_size = 32;
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  const Result<ReplicaId> b = log->register_replica();
  ASSERT_TRUE(a.ok() && b.ok());
  auto length_of = [](LogIndex i) { return size_t{8} + (i * 5) % 25; };  // 8..32

  std::vector<Seen> seen_a;
  std::vector<Seen> seen_b;
  std::string error_a;
  std::string error_b;
  {
    ThreadGroup group;
    group.start([&] {  // B: applies until it has everything
      auto record = [&seen_b](const Entry& e) { seen_b.push_back(copy_entry(e)); };
      const auto deadline = Clock::now() + kWaitBound;
      LogIndex ltail = 0;
      while (ltail < kTotal && !group.stop()) {
        Result<LogIndex> lt = log->exec(*b, record);
        if (!lt.ok()) {
          error_b = "exec: " + lt.status().to_string();
          return;
        }
        if (*lt < ltail) {
          error_b = "ltail went backwards";
          return;
        }
        if (*lt == ltail) {
          if (Clock::now() >= deadline) {
            error_b = "timed out at ltail " + std::to_string(ltail);
            return;
          }
          std::this_thread::yield();
        }
        ltail = *lt;
      }
    });
    group.start([&] {  // A: appends, applying its own entries when the log is full
      auto record = [&seen_a](const Entry& e) { seen_a.push_back(copy_entry(e)); };
      LogIndex next = 0;
      while (next < kTotal && !group.stop()) {
        const size_t n = (next % 3 == 2 && next + 2 <= kTotal) ? 2 : 1;
        std::vector<Bytes> entries;
        for (size_t k = 0; k < n; ++k) entries.push_back(keyed_bytes(next + k, length_of(next + k)));
        Result<LogIndex> first = append_all(*log, *a, entries, record);
        if (!first.ok() || *first != next) {
          error_a = first.ok() ? "append returned " + std::to_string(*first) + ", expected " + std::to_string(next)
                               : "append: " + first.status().to_string();
          group.request_stop();
          return;
        }
        next += n;
        if (next % 5 == 0) {
          if (Result<LogIndex> lt = log->exec(*a, record); !lt.ok()) {
            error_a = "exec: " + lt.status().to_string();
            group.request_stop();
            return;
          }
        }
      }
    });
    group.join();
  }
  ASSERT_EQ(error_a, "");
  ASSERT_EQ(error_b, "");
  EXPECT_EQ(log->tail(), kTotal);
  auto record_a = [&seen_a](const Entry& e) { seen_a.push_back(copy_entry(e)); };
  EXPECT_EQ(log->exec(*a, record_a).value_or(0), kTotal);
  EXPECT_TRUE(indexed_run(seen_a, 0, kTotal, *a, length_of)) << "replica A (apply_own + exec)";
  EXPECT_TRUE(indexed_run(seen_b, 0, kTotal, *a, length_of)) << "replica B";
  EXPECT_EQ(log->head(), kTotal);
  EXPECT_TRUE(invariants_hold(*log, {*a, *b}));
}

// exec applies up to the tail it observed, waiting for entries that are reserved but not yet
// written. The appender's batches are 32 entries of ~4 KiB, so the window between reservation
// and publication is microseconds long, and a reader spinning on exec lands in it often: an exec
// that skipped or misread an unpublished entry leaves a gap or wrong bytes in B's sequence.
TEST_P(LogConformance, ExecWaitsForReservedEntries) {
  constexpr uint32_t kEntrySize = 4096;
  constexpr uint64_t kBatch = 32;
  constexpr uint64_t kTotal = 64 * kBatch;  // two laps of the 1024 slots
  LogOptions o = small_options();
  o.entry_size = kEntrySize;
  o.slot_count = 1024;  // B keeps up, so A rarely waits for room and B mostly runs at the tail
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  const Result<ReplicaId> b = log->register_replica();
  ASSERT_TRUE(a.ok() && b.ok());
  auto length_of = [](LogIndex i) { return size_t{kEntrySize} - i % 64; };

  std::vector<Seen> seen_b;
  std::string error_a;
  std::string error_b;
  {
    ThreadGroup group;
    group.start([&] {  // B: exec in a tight loop, so it often runs into reserved entries
      auto record = [&seen_b](const Entry& e) { seen_b.push_back(copy_entry(e)); };
      const auto deadline = Clock::now() + kWaitBound;
      LogIndex ltail = 0;
      while (ltail < kTotal && !group.stop()) {
        Result<LogIndex> lt = log->exec(*b, record);
        if (!lt.ok()) {
          error_b = "exec: " + lt.status().to_string();
          return;
        }
        if (*lt == ltail && Clock::now() >= deadline) {
          error_b = "timed out at ltail " + std::to_string(ltail);
          return;
        }
        ltail = *lt;
      }
    });
    group.start([&] {  // A: large batches of large entries
      std::vector<Bytes> entries(kBatch);
      for (LogIndex next = 0; next < kTotal && !group.stop(); next += kBatch) {
        for (uint64_t k = 0; k < kBatch; ++k) entries[k] = keyed_bytes(next + k, length_of(next + k));
        Result<LogIndex> first = append_all(*log, *a, entries, [](const Entry&) {});
        if (!first.ok() || *first != next) {
          error_a = first.ok() ? "append returned " + std::to_string(*first) : "append: " + first.status().to_string();
          group.request_stop();
          return;
        }
      }
    });
    group.join();
  }
  ASSERT_EQ(error_a, "");
  ASSERT_EQ(error_b, "");
  EXPECT_TRUE(indexed_run(seen_b, 0, kTotal, *a, length_of)) << "replica B";
}

// A single replica never needs anyone else: appending far beyond slot_count without exec makes
// progress through apply_own, and apply_own + exec see every entry once, in order.
TEST_P(LogConformance, SingleReplicaProgressesThroughApplyOwn) {
  constexpr uint32_t kSlots = 8;
  constexpr uint64_t kTotal = 20 * kSlots;
  LogOptions o = small_options();
  o.slot_count = kSlots;
  o.full_timeout = std::chrono::seconds(2);
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  auto length_of = [](LogIndex i) { return size_t{1} + i % 32; };
  std::vector<Seen> seen;
  auto record = [&seen](const Entry& e) { seen.push_back(copy_entry(e)); };
  for (LogIndex i = 0; i < kTotal; ++i) {
    const Bytes e = keyed_bytes(i, length_of(i));
    Result<LogIndex> idx = append_one(*log, *a, e, record);
    ASSERT_TRUE(idx.ok()) << "append " << i << ": " << idx.status().to_string();
    ASSERT_EQ(*idx, i);
  }
  EXPECT_FALSE(seen.empty()) << "the log filled, so apply_own must have run";
  EXPECT_EQ(log->exec(*a, record).value_or(0), kTotal);
  // Keys shorter than 8 bytes only hold the key's low bytes; indexed_run compares full content.
  EXPECT_TRUE(indexed_run(seen, 0, kTotal, *a, length_of));
}

// ---- 4. Full log with a lagging replica -------------------------------------------------------

// A appends until the log is full. The append that finds it full applies A's own entries through
// apply_own and calls the hook with (log_id 7, B); once the hook has run, another thread makes B
// exec, and the blocked append completes.
TEST_P(LogConformance, FullLogCallsHookAndUnblocks) {
  constexpr uint32_t kSlots = 8;
  auto hooks = std::make_shared<HookRecorder>();
  LogOptions o = small_options();
  o.log_id = 7;
  o.slot_count = kSlots;
  o.full_timeout = std::chrono::seconds(10);
  o.on_lagging = hooks->hook(hooks);
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  const Result<ReplicaId> b = log->register_replica();
  ASSERT_TRUE(a.ok() && b.ok());
  auto length_of = [](LogIndex i) { return size_t{8} + i % 20; };

  std::vector<Seen> seen_b;
  Result<LogIndex> b_exec = Status::internal("B never ran exec");
  std::vector<Seen> seen_a;  // apply_own, then exec
  auto record_a = [&seen_a](const Entry& e) { seen_a.push_back(copy_entry(e)); };
  LogIndex blocked_at = ~0ull;
  {
    ThreadGroup group;
    group.start([&] {  // B's combiner: wakes when the hook has been called, then applies
      // acquire: pairs with the hook's release increment.
      (void)wait_for([&] { return hooks->count.load(std::memory_order_acquire) > 0 || group.stop(); });
      if (hooks->count.load(std::memory_order_acquire) == 0) return;  // never full: the main thread reports
      b_exec = log->exec(*b, [&seen_b](const Entry& e) { seen_b.push_back(copy_entry(e)); });
    });
    for (LogIndex i = 0; i <= kSlots; ++i) {
      const int before = hooks->count.load(std::memory_order_acquire);
      const Bytes e = keyed_bytes(i, length_of(i));
      Result<LogIndex> idx = append_one(*log, *a, e, record_a);
      ASSERT_TRUE(idx.ok()) << "append " << i << ": " << idx.status().to_string();
      ASSERT_EQ(*idx, i);
      if (hooks->count.load(std::memory_order_acquire) > before) {
        blocked_at = i;
        break;
      }
    }
    group.request_stop();  // the helper still applies for B if the hook ran
    group.join();
  }
  ASSERT_NE(blocked_at, ~0ull) << "slot_count + 1 appends with B at 0 never found the log full";
  EXPECT_GE(blocked_at, 1u);
  EXPECT_LE(blocked_at, kSlots);
  ASSERT_TRUE(b_exec.ok()) << b_exec.status().to_string();
  EXPECT_TRUE(indexed_run(seen_b, 0, *b_exec, *a, length_of)) << "what B applied while A was blocked";
  EXPECT_GE(*b_exec, 1u);
  EXPECT_GT(log->ltail(*b).value_or(0), 0u) << "the blocked append finished although B never advanced";
  EXPECT_EQ(log->tail(), blocked_at + 1);

  // The hook was called for B, under log id 7, every time.
  const auto calls = hooks->snapshot();
  ASSERT_FALSE(calls.empty());
  for (const auto& [log_id, replica] : calls) {
    EXPECT_EQ(log_id, 7u);
    EXPECT_EQ(replica, *b) << "hook named a replica that was not holding back the head";
  }

  // apply_own applied A's pending entries (the log was full), starting at 0, before B moved.
  EXPECT_FALSE(seen_a.empty()) << "the full log did not apply A's own entries through apply_own";
  EXPECT_LE(seen_a.size(), blocked_at) << "apply_own went past the entries appended before the full append";
  // A's exec picks up exactly where apply_own stopped.
  EXPECT_EQ(log->exec(*a, record_a).value_or(0), blocked_at + 1);
  EXPECT_TRUE(indexed_run(seen_a, 0, blocked_at + 1, *a, length_of)) << "A: apply_own + exec";
  seen_b.clear();
  const LogIndex b_from = *b_exec;
  EXPECT_EQ(log->exec(*b, [&seen_b](const Entry& e) { seen_b.push_back(copy_entry(e)); }).value_or(0), blocked_at + 1);
  EXPECT_TRUE(indexed_run(seen_b, b_from, blocked_at + 1 - b_from, *a, length_of)) << "B's second exec";
  EXPECT_EQ(log->head(), blocked_at + 1);
  EXPECT_TRUE(invariants_hold(*log, {*a, *b}));
}

// With B never advancing, an append on the full log fails with kDeadlineExceeded after
// full_timeout and appends nothing; once B catches up, appends work again.
TEST_P(LogConformance, FullLogTimesOut) {
  constexpr uint32_t kSlots = 8;
  constexpr auto kTimeout = std::chrono::milliseconds(50);
  auto hooks = std::make_shared<HookRecorder>();
  LogOptions o = small_options();
  o.log_id = 7;
  o.slot_count = kSlots;
  o.full_timeout = kTimeout;
  o.on_lagging = hooks->hook(hooks);
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  const Result<ReplicaId> b = log->register_replica();
  ASSERT_TRUE(a.ok() && b.ok());
  auto ignore = [](const Entry&) {};
  auto length_of = [](LogIndex i) { return size_t{8} + i % 20; };

  LogIndex appended = 0;
  bool timed_out = false;
  for (LogIndex i = 0; i <= kSlots; ++i) {
    const Bytes e = keyed_bytes(i, length_of(i));
    const LogIndex tail_before = log->tail();
    const auto start = Clock::now();
    Result<LogIndex> idx = append_one(*log, *a, e, ignore);
    const auto elapsed = Clock::now() - start;
    if (idx.ok()) {
      ASSERT_EQ(*idx, i);
      ++appended;
      continue;
    }
    EXPECT_EQ(idx.status().code(), StatusCode::kDeadlineExceeded) << idx.status().to_string();
    EXPECT_GE(elapsed, kTimeout) << "gave up before full_timeout";
    EXPECT_LT(elapsed, std::chrono::seconds(5)) << "full_timeout not honoured";
    EXPECT_EQ(log->tail(), tail_before) << "a failed append reserved indices";
    timed_out = true;
    break;
  }
  ASSERT_TRUE(timed_out) << "slot_count + 1 appends with B at 0 never hit the full-log timeout";
  EXPECT_GE(appended, 1u);
  EXPECT_LE(appended, kSlots);
  EXPECT_EQ(log->tail(), appended);
  EXPECT_EQ(log->ltail(*b).value_or(~0ull), 0u);
  const auto calls = hooks->snapshot();
  ASSERT_FALSE(calls.empty()) << "the full log never called the lagging hook";
  for (const auto& [log_id, replica] : calls) {
    EXPECT_EQ(log_id, 7u);
    EXPECT_EQ(replica, *b);
  }

  // B sees exactly the successful appends (nothing of the failed one), then A can append again.
  std::vector<Seen> seen_b;
  EXPECT_EQ(log->exec(*b, [&seen_b](const Entry& e) { seen_b.push_back(copy_entry(e)); }).value_or(0), appended);
  EXPECT_TRUE(indexed_run(seen_b, 0, appended, *a, length_of));
  const Bytes e = keyed_bytes(appended, length_of(appended));
  Result<LogIndex> again = append_one(*log, *a, e, ignore);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(*again, appended);
}

// ---- 5. Payloads ------------------------------------------------------------------------------

// A payload stays readable until each of the registered replicas has released it once.
TEST_P(LogConformance, PayloadRefCounting) {
  LogOptions o = small_options();
  o.payload_slots = 4;
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  ReplicaId r[3];
  for (ReplicaId& id : r) {
    Result<ReplicaId> reg = log->register_replica();
    ASSERT_TRUE(reg.ok()) << reg.status().to_string();
    id = *reg;
  }
  ASSERT_EQ(log->payloads_live(), 0u);
  const Bytes data = keyed_bytes(42, 300);  // larger than an entry: payloads are bulk data
  const Result<PayloadRef> ref = log->payload_put(data);
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();
  EXPECT_EQ(ref->length, data.size());
  EXPECT_EQ(log->payloads_live(), 1u);

  auto readable = [&]() -> ::testing::AssertionResult {
    const Result<std::span<const std::byte>> got = log->payload_get(*ref);
    if (!got.ok()) return ::testing::AssertionFailure() << got.status().to_string();
    if (!same_bytes(*got, data)) return ::testing::AssertionFailure() << "wrong bytes (" << got->size() << ")";
    return ::testing::AssertionSuccess();
  };
  EXPECT_TRUE(readable());

  EXPECT_TRUE(log->payload_release(r[0], *ref).ok());
  EXPECT_TRUE(readable()) << "after 1 of 3 releases";
  EXPECT_EQ(log->payloads_live(), 1u);
  EXPECT_EQ(log->payload_release(r[0], *ref).code(), StatusCode::kFailedPrecondition) << "second release by r0";
  EXPECT_EQ(log->payload_release(3, *ref).code(), StatusCode::kNotFound) << "replica 3 is not registered";
  EXPECT_TRUE(readable()) << "a rejected release must not count";
  EXPECT_EQ(log->payloads_live(), 1u);

  EXPECT_TRUE(log->payload_release(r[1], *ref).ok());
  EXPECT_TRUE(readable()) << "after 2 of 3 releases";
  EXPECT_EQ(log->payloads_live(), 1u);
  EXPECT_TRUE(log->payload_release(r[2], *ref).ok());
  EXPECT_EQ(log->payloads_live(), 0u);
  const Result<std::span<const std::byte>> gone = log->payload_get(*ref);
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound) << "payload readable after its last release";

  // Releasing a freed payload again is an error and frees nothing twice. (The contract allows
  // either reading: the ref is stale, kNotFound, or r0 already released it, kFailedPrecondition.)
  const StatusCode again = log->payload_release(r[0], *ref).code();
  EXPECT_TRUE(again == StatusCode::kNotFound || again == StatusCode::kFailedPrecondition)
      << status_code_name(again);
  EXPECT_EQ(log->payloads_live(), 0u);
}

// payload_slots bounds the live payloads; a freed slot is reused, and refs to its previous use
// are stale (kNotFound) without disturbing the new one; bad refs and empty data are rejected.
TEST_P(LogConformance, PayloadExhaustionAndStaleRefs) {
  constexpr uint32_t kPayloadSlots = 4;
  LogOptions o = small_options();
  o.payload_slots = kPayloadSlots;
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  const Result<ReplicaId> b = log->register_replica();
  ASSERT_TRUE(a.ok() && b.ok());

  const size_t lengths[kPayloadSlots] = {1, 64, 4096, 7};
  std::vector<Bytes> data;
  std::vector<PayloadRef> refs;
  for (uint32_t i = 0; i < kPayloadSlots; ++i) {
    data.push_back(keyed_bytes(1000 + i, lengths[i]));
    const Result<PayloadRef> ref = log->payload_put(data.back());
    ASSERT_TRUE(ref.ok()) << "payload " << i << ": " << ref.status().to_string();
    refs.push_back(*ref);
  }
  EXPECT_EQ(log->payloads_live(), kPayloadSlots);
  const Bytes extra = keyed_bytes(2000, 16);
  EXPECT_EQ(log->payload_put(extra).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(log->payloads_live(), kPayloadSlots);

  auto holds = [&](const PayloadRef& ref, const Bytes& bytes) -> ::testing::AssertionResult {
    const Result<std::span<const std::byte>> got = log->payload_get(ref);
    if (!got.ok()) return ::testing::AssertionFailure() << got.status().to_string();
    if (!same_bytes(*got, bytes)) return ::testing::AssertionFailure() << "wrong bytes (" << got->size() << ")";
    return ::testing::AssertionSuccess();
  };
  for (uint32_t i = 0; i < kPayloadSlots; ++i) EXPECT_TRUE(holds(refs[i], data[i])) << "payload " << i;

  // Free payload 1; the only free slot is now its slot, so the next put reuses it.
  ASSERT_TRUE(log->payload_release(*a, refs[1]).ok());
  ASSERT_TRUE(log->payload_release(*b, refs[1]).ok());
  EXPECT_EQ(log->payloads_live(), kPayloadSlots - 1);
  const Bytes reused_data = keyed_bytes(3000, 64);
  const Result<PayloadRef> reused = log->payload_put(reused_data);
  ASSERT_TRUE(reused.ok()) << reused.status().to_string();
  EXPECT_EQ(log->payloads_live(), kPayloadSlots);
  EXPECT_FALSE(reused->where == refs[1].where && reused->generation == refs[1].generation)
      << "a reused slot must get a new generation";
  EXPECT_EQ(log->payload_get(refs[1]).status().code(), StatusCode::kNotFound) << "stale ref after reuse";
  EXPECT_EQ(log->payload_release(*a, refs[1]).code(), StatusCode::kNotFound) << "stale ref after reuse";
  EXPECT_TRUE(holds(*reused, reused_data)) << "the stale release must not touch the new payload";
  EXPECT_EQ(log->payloads_live(), kPayloadSlots);
  for (uint32_t i : {0u, 2u, 3u}) EXPECT_TRUE(holds(refs[i], data[i])) << "payload " << i;
  EXPECT_EQ(log->payload_put(extra).status().code(), StatusCode::kResourceExhausted);

  // Refs that never came from payload_put.
  const PayloadRef bad[] = {
      {std::numeric_limits<uint64_t>::max(), 8, 0},
      {std::numeric_limits<uint64_t>::max() / 2, 8, refs[0].generation},
  };
  for (const PayloadRef& ref : bad) {
    EXPECT_EQ(log->payload_get(ref).status().code(), StatusCode::kNotFound) << "where=" << ref.where;
    EXPECT_EQ(log->payload_release(*a, ref).code(), StatusCode::kNotFound) << "where=" << ref.where;
  }
  const Bytes empty;
  EXPECT_EQ(log->payload_put(empty).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(log->payloads_live(), kPayloadSlots);

  // Release everything; every slot is usable again.
  refs[1] = *reused;
  for (const PayloadRef& ref : refs) {
    EXPECT_TRUE(log->payload_release(*a, ref).ok());
    EXPECT_TRUE(log->payload_release(*b, ref).ok());
  }
  EXPECT_EQ(log->payloads_live(), 0u);
  std::vector<PayloadRef> again;
  for (uint32_t i = 0; i < kPayloadSlots; ++i) {
    const Result<PayloadRef> ref = log->payload_put(data[i]);
    ASSERT_TRUE(ref.ok()) << ref.status().to_string();
    again.push_back(*ref);
  }
  for (uint32_t i = 0; i < kPayloadSlots; ++i) EXPECT_TRUE(holds(again[i], data[i])) << "payload " << i;
  EXPECT_EQ(log->payloads_live(), kPayloadSlots);
}

// ---- 6. The replica limit ---------------------------------------------------------------------

// max_replicas replicas register with dense ids 0..max-1; one more is kResourceExhausted. Every
// backend admits kMinMaxReplicas when asked, and each of them appends, applies and releases.
TEST_P(LogConformance, ReplicaLimit) {
  for (uint32_t max : {1u, 5u, kMinMaxReplicas}) {
    SCOPED_TRACE(::testing::Message() << "max_replicas " << max);
    LogOptions o = small_options();
    o.max_replicas = max;
    o.slot_count = 64;
    std::unique_ptr<Log> log = create(o);
    ASSERT_NE(log, nullptr);
    std::set<ReplicaId> ids;
    for (uint32_t i = 0; i < max; ++i) {
      Result<ReplicaId> reg = log->register_replica();
      ASSERT_TRUE(reg.ok()) << "replica " << i << ": " << reg.status().to_string();
      EXPECT_TRUE(ids.insert(*reg).second) << "id " << *reg << " handed out twice";
    }
    EXPECT_EQ(ids.size(), max);
    EXPECT_EQ(*ids.rbegin(), max - 1) << "ids are dense: 0..max_replicas-1";
    const Result<ReplicaId> one_more = log->register_replica();
    EXPECT_EQ(one_more.status().code(), StatusCode::kResourceExhausted);

    auto ignore = [](const Entry&) {};
    for (ReplicaId r : ids) {
      const Bytes e = keyed_bytes(r, 8);
      ASSERT_TRUE(append_one(*log, r, e, ignore).ok()) << "replica " << r;
    }
    const Bytes payload = keyed_bytes(77, 100);
    const Result<PayloadRef> ref = log->payload_put(payload);
    ASSERT_TRUE(ref.ok()) << ref.status().to_string();
    for (ReplicaId r : ids) {
      std::vector<Seen> seen;
      ASSERT_EQ(log->exec(r, [&seen](const Entry& e) { seen.push_back(copy_entry(e)); }).value_or(0), max);
      ASSERT_EQ(seen.size(), max);
      for (uint32_t i = 0; i < max; ++i) EXPECT_EQ(seen[i].index, i);
      EXPECT_EQ(log->payloads_live(), 1u) << "released by " << r << " replicas of " << max;
      EXPECT_TRUE(log->payload_release(r, *ref).ok()) << "replica " << r;
    }
    EXPECT_EQ(log->payloads_live(), 0u);
    EXPECT_EQ(log->head(), max);
  }
}

// ---- 7. Bad arguments -------------------------------------------------------------------------

// Malformed batches are kInvalidArgument, unknown replicas kNotFound, and none changes the log.
TEST_P(LogConformance, BadArguments) {
  constexpr uint32_t kSlots = 8;
  LogOptions o = small_options();
  o.entry_size = 32;
  o.slot_count = kSlots;
  o.max_replicas = 4;
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  const Result<ReplicaId> a = log->register_replica();
  const Result<ReplicaId> b = log->register_replica();
  ASSERT_TRUE(a.ok() && b.ok());
  int own_calls = 0;
  auto count_own = [&own_calls](const Entry&) { ++own_calls; };

  const Bytes good = keyed_bytes(0, 10);
  ASSERT_EQ(append_one(*log, *a, good, count_own).value_or(~0ull), 0u);
  ASSERT_EQ(log->tail(), 1u);

  const Bytes oversized = keyed_bytes(9, 33);
  const Bytes empty;
  const Bytes valid = keyed_bytes(1, 32);  // the content index 1 gets at the end
  struct BadBatch {
    const char* what;
    std::vector<std::span<const std::byte>> entries;
  };
  std::vector<BadBatch> bad = {
      {"entry of entry_size + 1 bytes", {oversized}},
      {"empty entry", {empty}},
      {"empty batch", {}},
      {"valid entry then an oversized one", {valid, oversized}},
      {"valid entry then an empty one", {valid, empty}},
      {"more entries than slots", std::vector<std::span<const std::byte>>(kSlots + 1, valid)},
  };
  for (const BadBatch& batch : bad) {
    Result<LogIndex> r = log->append(*a, batch.entries, count_own);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << batch.what << ": " << r.status().to_string();
    EXPECT_EQ(log->tail(), 1u) << batch.what << " changed the tail";
  }

  // Ids that were never handed out: one inside max_replicas, one at it, one far past it.
  for (ReplicaId unknown : {ReplicaId{2}, ReplicaId{o.max_replicas}, std::numeric_limits<ReplicaId>::max()}) {
    EXPECT_EQ(append_one(*log, unknown, valid, count_own).status().code(), StatusCode::kNotFound) << unknown;
    EXPECT_EQ(log->exec(unknown, count_own).status().code(), StatusCode::kNotFound) << unknown;
    EXPECT_EQ(log->ltail(unknown).status().code(), StatusCode::kNotFound) << unknown;
    EXPECT_EQ(log->tail(), 1u);
  }
  EXPECT_EQ(own_calls, 0);
  EXPECT_EQ(log->ctail(), 0u);

  // Exactly entry_size bytes is fine; B sees just the two good entries.
  ASSERT_EQ(append_one(*log, *a, valid, count_own).value_or(~0ull), 1u);
  std::vector<Seen> seen;
  EXPECT_EQ(log->exec(*b, [&seen](const Entry& e) { seen.push_back(copy_entry(e)); }).value_or(0), 2u);
  EXPECT_TRUE(indexed_run(seen, 0, 2, *a, [](LogIndex i) { return i == 0 ? size_t{10} : size_t{32}; }));
}

// ---- 8. Concurrent stress ---------------------------------------------------------------------

namespace {

// One replica of the stress case: its combiner lock and what it applied.
struct StressReplica {
  ReplicaId id = 0;
  Mutex mu;  // NR's combiner: serialises this replica's append and exec calls
  struct Rec {
    LogIndex index;
    ReplicaId writer;
    uint32_t thread;
    uint32_t seq;
    uint32_t length;
    bool content_ok;
    bool operator==(const Rec&) const = default;
  };
  std::vector<Rec> seen NRX_GUARDED_BY(mu);

  // Records an applied entry. Only visitors call it, and they run inside append/exec for this
  // replica, which are only called with |mu| held; the analysis cannot follow a lambda into
  // that call, hence the opt-out.
  void record(const Entry& e) NRX_NO_THREAD_SAFETY_ANALYSIS;
};

// Entry |seq| of stress thread |thread|: [thread][seq, 4 bytes][pattern], 5..20 bytes.
Bytes stress_entry(uint32_t thread, uint32_t seq) {
  Bytes out(5 + (seq * 3 + thread) % 16);
  out[0] = static_cast<std::byte>(thread);
  std::memcpy(out.data() + 1, &seq, sizeof(seq));
  for (size_t i = 5; i < out.size(); ++i) out[i] = static_cast<std::byte>((thread * 7 + seq + i) & 0xff);
  return out;
}

StressReplica::Rec decode_stress(const Entry& e);

void StressReplica::record(const Entry& e) { seen.push_back(decode_stress(e)); }

StressReplica::Rec decode_stress(const Entry& e) {
  StressReplica::Rec rec{e.index, e.writer, ~0u, ~0u, static_cast<uint32_t>(e.data.size()), false};
  if (e.data.size() >= 5) {
    rec.thread = static_cast<uint32_t>(e.data[0]);
    std::memcpy(&rec.seq, e.data.data() + 1, sizeof(rec.seq));
    rec.content_ok = same_bytes(e.data, stress_entry(rec.thread, rec.seq));
  }
  return rec;
}

// The replica whose combiner the current thread holds, so the hook never try_locks it.
thread_local int tl_held_replica = -1;

}  // namespace

// 4 threads on 2 replicas (2 per replica, serialised by the replica's mutex) append small batches
// to a 64-slot log, which wraps and fills many times; the hook, on the appender's thread,
// try_locks the lagging replica and applies for it. At the end both replicas must have seen the
// same gap-free sequence, each thread's entries in program order at the indices append returned.
TEST_P(LogConformance, ConcurrentStress) {
  constexpr int kThreads = 4;
  constexpr int kReplicas = 2;
  const uint32_t kAppendsPerThread = GetParam().stress_appends_per_thread;
  struct Shared {
    Log* log = nullptr;
    std::array<StressReplica, kReplicas> replicas;
    std::atomic<uint64_t> hook_calls{0};
    std::atomic<uint64_t> hook_execs{0};
    Mutex error_mu;
    std::string error NRX_GUARDED_BY(error_mu);  // the first failure
    void fail(std::string what) {
      MutexLock lock(error_mu);
      if (error.empty()) error = std::move(what);
    }
  };
  auto shared = std::make_shared<Shared>();
  LogOptions o = small_options();
  o.slot_count = 64;
  o.entry_size = 32;
  o.full_timeout = std::chrono::seconds(5);
  o.on_lagging = [s = shared.get()](uint32_t, ReplicaId lagging) {
    s->hook_calls.fetch_add(1, std::memory_order_relaxed);
    for (StressReplica& rep : s->replicas) {
      if (rep.id != lagging || static_cast<int>(rep.id) == tl_held_replica) continue;
      if (!rep.mu.try_lock()) return;  // its combiner is busy, so it is making progress
      Result<LogIndex> lt = s->log->exec(rep.id, [&rep](const Entry& e) { rep.record(e); });
      rep.mu.unlock();
      if (!lt.ok()) s->fail("hook exec: " + lt.status().to_string());
      s->hook_execs.fetch_add(1, std::memory_order_relaxed);
    }
  };
  std::unique_ptr<Log> log = create(o);
  ASSERT_NE(log, nullptr);
  shared->log = log.get();
  for (StressReplica& rep : shared->replicas) {
    Result<ReplicaId> reg = log->register_replica();
    ASSERT_TRUE(reg.ok()) << reg.status().to_string();
    rep.id = *reg;
  }

  struct Append {
    LogIndex first;
    uint32_t count;
    uint32_t first_seq;
  };
  std::array<std::vector<Append>, kThreads> appends;
  {
    ThreadGroup group;
    for (int t = 0; t < kThreads; ++t) {
      group.start([&, t] {
        StressReplica& rep = shared->replicas[t % kReplicas];
        auto record = [&rep](const Entry& e) { rep.record(e); };
        uint32_t seq = 0;
        for (uint32_t i = 0; i < kAppendsPerThread && !group.stop(); ++i) {
          const uint32_t n = 1 + i % 3;
          std::vector<Bytes> entries;
          for (uint32_t k = 0; k < n; ++k) entries.push_back(stress_entry(static_cast<uint32_t>(t), seq + k));
          MutexLock lock(rep.mu);
          tl_held_replica = static_cast<int>(rep.id);
          Result<LogIndex> first = append_all(*log, rep.id, entries, record);
          if (!first.ok()) {
            shared->fail("thread " + std::to_string(t) + " append " + std::to_string(i) + ": " +
                         first.status().to_string());
            group.request_stop();
            tl_held_replica = -1;
            return;
          }
          appends[t].push_back({*first, n, seq});
          seq += n;
          if (i % 4 == 3) {
            if (Result<LogIndex> lt = log->exec(rep.id, record); !lt.ok()) shared->fail("exec: " + lt.status().to_string());
          }
          if (i % 32 == 0) {
            // Every index is monotonic, so reading lower bounds first keeps these checks sound
            // while other threads run; ltail(own) is stable because this thread holds its combiner.
            const LogIndex head = log->head();
            const LogIndex own = log->ltail(rep.id).value_or(0);
            const LogIndex ctail = log->ctail();
            const LogIndex tail = log->tail();
            const LogIndex head2 = log->head();
            if (!(head <= own && own <= ctail && ctail <= tail)) {
              shared->fail("invariant: head " + std::to_string(head) + " ltail " + std::to_string(own) + " ctail " +
                           std::to_string(ctail) + " tail " + std::to_string(tail));
            }
            const uint64_t overshoot = GetParam().reserves_before_room ? uint64_t{kThreads} * 3 : 0;
            if (tail > head2 + log->options().slot_count + overshoot) {
              shared->fail("tail " + std::to_string(tail) + " more than slot_count past head " + std::to_string(head2));
            }
          }
          tl_held_replica = -1;
        }
      });
    }
    group.join();
  }
  {
    MutexLock lock(shared->error_mu);
    ASSERT_EQ(shared->error, "");
  }
  // No timing check: an append that waited out full_timeout failed and set |error| above; how
  // long the run took says more about the machine's load than about the log.

  uint64_t total = 0;
  for (const auto& per_thread : appends) {
    ASSERT_EQ(per_thread.size(), kAppendsPerThread);
    for (const Append& ap : per_thread) total += ap.count;
  }
  ASSERT_EQ(log->tail(), total);

  // Both replicas catch up (single-threaded now) and must agree entry for entry.
  std::array<std::vector<StressReplica::Rec>, kReplicas> applied;
  for (int k = 0; k < kReplicas; ++k) {
    StressReplica& rep = shared->replicas[k];
    MutexLock lock(rep.mu);
    auto record = [&rep](const Entry& e) { rep.record(e); };
    ASSERT_EQ(log->exec(rep.id, record).value_or(0), total);
    applied[k] = rep.seen;
  }
  for (int k = 0; k < kReplicas; ++k) {
    ASSERT_EQ(applied[k].size(), total) << "replica " << shared->replicas[k].id;
    for (uint64_t i = 0; i < total; ++i) ASSERT_EQ(applied[k][i].index, i) << "replica " << shared->replicas[k].id;
  }
  const std::vector<StressReplica::Rec>& seq = applied[0];
  EXPECT_TRUE(seq == applied[1]) << "the replicas applied different sequences";

  // Content, writers and per-thread program order, and each append's entries at its indices.
  std::array<uint32_t, kThreads> next_seq{};
  for (const StressReplica::Rec& rec : seq) {
    ASSERT_TRUE(rec.content_ok) << "index " << rec.index << ": corrupt entry";
    ASSERT_LT(rec.thread, uint32_t{kThreads}) << "index " << rec.index;
    EXPECT_EQ(rec.writer, shared->replicas[rec.thread % kReplicas].id) << "index " << rec.index;
    ASSERT_EQ(rec.seq, next_seq[rec.thread]) << "index " << rec.index << ": thread " << rec.thread << " out of order";
    ++next_seq[rec.thread];
  }
  for (int t = 0; t < kThreads; ++t) {
    for (const Append& ap : appends[t]) {
      for (uint32_t k = 0; k < ap.count; ++k) {
        const StressReplica::Rec& rec = seq[ap.first + k];
        ASSERT_EQ(rec.thread, uint32_t(t)) << "index " << ap.first + k;
        ASSERT_EQ(rec.seq, ap.first_seq + k) << "index " << ap.first + k;
      }
    }
  }
  EXPECT_EQ(log->head(), total);
  EXPECT_TRUE(invariants_hold(*log, {shared->replicas[0].id, shared->replicas[1].id}));
  // Informational: how much the full log leaned on the hook.
  RecordProperty("hook_calls", std::to_string(shared->hook_calls.load(std::memory_order_relaxed)));
  RecordProperty("hook_execs", std::to_string(shared->hook_execs.load(std::memory_order_relaxed)));
}

}  // namespace nrx::logs::testing
