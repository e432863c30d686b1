// Tests of CNR's scan orders (kernel/nr/scan_order.h): the shared one's header checks, ids and
// cancellations seen through two objects on one region, mutual exclusion, take-over from a dead
// holder (a forked child that exits holding the lock) with its recorded scan as the orphan, no
// take-over from a live holder, the remote lease; and a CNR group completing an orphan. The same
// for the bakery (noncoherent memory), plus mutual exclusion between forked processes.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "base/host.h"
#include "kernel/nr/cnr.h"
#include "kernel/nr/ds/concurrent_hashmap.h"
#include "kernel/nr/scan_order.h"
#include "logs/ring/ring_log.h"

namespace nrx::nr {
namespace {

// One anonymous shared mapping: visible to forked children, unmapped at the end.
class SharedBytes {
 public:
  explicit SharedBytes(size_t n) : n_(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    p_ = static_cast<std::byte*>(p);
  }
  ~SharedBytes() { munmap(p_, n_); }
  std::span<std::byte> span() { return {p_, n_}; }
  uint64_t& word(size_t offset) { return *reinterpret_cast<uint64_t*>(p_ + offset); }

 private:
  size_t n_;
  std::byte* p_;
};

constexpr auto noop = [] {};

// Runs |child| in a forked process and reaps it (its exit code). The child must _exit.
template <typename F>
int in_child(F&& child) {
  const pid_t pid = fork();
  if (pid == 0) {
    child();
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(SharedScanOrder, HeaderIsChecked) {
  SharedBytes mem(SharedScanOrder::kRegionBytes);
  EXPECT_EQ(SharedScanOrder::attach(mem.span(), {}).status().code(), StatusCode::kFailedPrecondition);  // zeroes
  EXPECT_EQ(SharedScanOrder::create(mem.span().first(100), {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SharedScanOrder::create(mem.span().subspan(4, 2048), {}).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(SharedScanOrder::create(mem.span(), {.cluster_id = 7}).ok());
  EXPECT_TRUE(SharedScanOrder::attach(mem.span(), {.cluster_id = 7}).ok());
  Status other = SharedScanOrder::attach(mem.span(), {.cluster_id = 8}).status();
  EXPECT_EQ(other.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(other.message().find("cluster 7"), std::string::npos) << other.to_string();
  mem.word(8) = 99;  // layout version
  EXPECT_EQ(SharedScanOrder::attach(mem.span(), {.cluster_id = 7}).status().code(), StatusCode::kFailedPrecondition);
}

TEST(SharedScanOrder, IdsAndCancellationsAreSharedBetweenObjects) {
  SharedBytes mem(SharedScanOrder::kRegionBytes);
  auto a = SharedScanOrder::create(mem.span(), {}).value();
  auto b = SharedScanOrder::attach(mem.span(), {}).value();
  ASSERT_TRUE(a->lock(noop).ok());
  const uint64_t first = a->next_id();
  a->cancel(first);
  a->unlock();
  auto got = b->lock(noop);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value()) << "a holder that unlocked leaves no orphan";
  EXPECT_EQ(b->next_id(), first + 1);
  b->unlock();
  EXPECT_TRUE(b->is_cancelled(first));
  EXPECT_FALSE(b->is_cancelled(first + 1));
  EXPECT_FALSE(a->try_take_over().has_value()) << "a free lock is not taken over";
}

TEST(SharedScanOrder, ExcludesAcrossObjectsAndThreads) {
  SharedBytes mem(SharedScanOrder::kRegionBytes);
  auto a = SharedScanOrder::create(mem.span(), {}).value();
  auto b = SharedScanOrder::attach(mem.span(), {}).value();
  uint64_t inside = 0;  // plain: only ever touched under the lock (TSan checks the claim)
  std::vector<uint64_t> ids[4];
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      SharedScanOrder& o = t % 2 == 0 ? *a : *b;
      for (int i = 0; i < 2000; ++i) {
        ASSERT_TRUE(o.lock(noop).ok());
        ++inside;
        ids[t].push_back(o.next_id());
        o.unlock();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(inside, 8000u);
  std::vector<uint64_t> all;
  for (auto& v : ids) {
    EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
    all.insert(all.end(), v.begin(), v.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end()) << "an id was handed out twice";
  EXPECT_EQ(all.front(), 1u);
  EXPECT_EQ(all.back(), 8000u);
}

TEST(SharedScanOrder, DeadHolderIsTakenOverWithItsOrphan) {
  SharedBytes mem(SharedScanOrder::kRegionBytes);
  auto a = SharedScanOrder::create(mem.span(), {}).value();
  const std::vector<std::byte> entry = {std::byte{1}, std::byte{2}, std::byte{3}};
  // The child dies holding the lock, its scan recorded (it may have entered some logs).
  ASSERT_EQ(in_child([&] {
              auto c = SharedScanOrder::attach(mem.span(), {}).value();
              if (!c->lock(noop).ok()) _exit(1);
              c->record(c->next_id(), 0b101, entry);
              _exit(0);
            }),
            0);
  auto o = a->try_take_over();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->id, 1u);
  EXPECT_EQ(o->mask, 0b101u);
  EXPECT_EQ(o->entry, entry);
  EXPECT_EQ(a->take_overs(), 1u);
  a->clear_orphan();
  EXPECT_EQ(a->next_id(), 2u);
  a->unlock();

  // A child that dies before recording leaves the lock, no orphan; lock() takes it over too.
  ASSERT_EQ(in_child([&] {
              auto c = SharedScanOrder::attach(mem.span(), {}).value();
              if (!c->lock(noop).ok()) _exit(1);
              _exit(0);
            }),
            0);
  auto got = a->lock(noop);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->id, 0u) << "taken over, nothing to complete";
  EXPECT_EQ(a->take_overs(), 2u);
  a->unlock();
}

TEST(SharedScanOrder, LiveHolderIsWaitedForUntilTheTimeout) {
  SharedBytes mem(SharedScanOrder::kRegionBytes);
  auto a = SharedScanOrder::create(mem.span(), {.lock_timeout = std::chrono::milliseconds(200)}).value();
  int to_child[2], from_child[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(from_child), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    auto c = SharedScanOrder::attach(mem.span(), {}).value();
    if (!c->lock(noop).ok()) _exit(1);
    char x = 'h';
    if (write(from_child[1], &x, 1) != 1) _exit(2);
    if (read(to_child[0], &x, 1) != 1) _exit(3);  // hold until the parent says so
    c->unlock();
    _exit(0);
  }
  char x = 0;
  ASSERT_EQ(read(from_child[0], &x, 1), 1);
  EXPECT_FALSE(a->try_take_over().has_value()) << "the holder is alive";
  uint64_t waits = 0;
  auto r = a->lock([&] { ++waits; });
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_GT(waits, 0u) << "the waiter keeps its replicas moving";
  ASSERT_EQ(write(to_child[1], &x, 1), 1);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_TRUE(a->lock(noop).ok()) << "free again";
  a->unlock();
  for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) close(fd);
}

TEST(SharedScanOrder, HolderOnAnotherHostIsPresumedDeadAfterTheRemoteLease) {
  SharedBytes mem(SharedScanOrder::kRegionBytes);
  auto a = SharedScanOrder::create(mem.span(), {.remote_lease = std::chrono::milliseconds(50)}).value();
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  const uint64_t now = static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
  // The documented layout: lock word at 64, its time stamp at 72.
  mem.word(64) = uint64_t{host_tag() + 1} << 32 | 12345;
  mem.word(72) = now + 3600ull * 1000000000u;  // just taken, as far as the stamp says
  EXPECT_FALSE(a->try_take_over().has_value());
  mem.word(72) = now - 1000000000u;  // held for a second: past the lease
  auto o = a->try_take_over();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->id, 0u);
  a->unlock();
}

// A CNR group whose scan-lock holder died after recording a Clear that reached no log: the next
// scan completes it first, on every replica, exactly once.
TEST(SharedScanOrder, CnrCompletesAnOrphanBeforeTheNextScan) {
  using Map = ConcurrentHashMap;
  using Group = CnrGroup<Map, HashMapLogMapper, logs::RingLog>;
  SharedBytes mem(SharedScanOrder::kRegionBytes);
  auto order = SharedScanOrder::create(mem.span(), {}).value();
  SharedScanOrder* raw = order.get();
  logs::LogOptions lo;
  lo.slot_count = 256;
  auto g = Group::create(
               4, lo, [](const logs::LogOptions& o) { return logs::RingLog::create(o); }, HashMapLogMapper{},
               std::move(order))
               .value();
  auto r0 = g->make_replica(ReplicaOptions{}).value();
  auto r1 = g->make_replica(ReplicaOptions{}).value();
  auto t0 = r0->register_thread().value();
  auto t1 = r1->register_thread().value();
  for (uint64_t k = 0; k < 10; ++k) ASSERT_TRUE(r0->execute_mut({Map::WriteOp::kPut, k, k}, t0).ok());

  Group::Entry clear{};
  clear.kind = Group::Entry::kScanUpdate;
  clear.issuer_replica = 40;  // nobody here: the issuer is gone
  clear.issuer_tid = 0;
  clear.scan_mask = g->all_logs_mask();
  clear.scan = {Map::ScanOp::kClear, 0, 0};
  ASSERT_EQ(in_child([&] {
              if (!raw->lock(noop).ok()) _exit(1);
              clear.scan_id = raw->next_id();
              raw->record(clear.scan_id, clear.scan_mask, std::as_bytes(std::span<const Group::Entry>(&clear, 1)));
              _exit(0);
            }),
            0);
  // The child's writes to the shared mapping are ours too: the next id moved on in the region.
  EXPECT_EQ(r1->execute_scan({Map::ScanOp::kSize, 0, 0}, t1).value(), std::optional<uint64_t>(0))
      << "the orphan Clear ran before this scan";
  EXPECT_EQ(r1->orphans_completed(), 1u);
  EXPECT_EQ(r0->execute_scan({Map::ScanOp::kSize, 0, 0}, t0).value(), std::optional<uint64_t>(0));
  EXPECT_EQ(r0->scans_executed(), r1->scans_executed()) << "every replica ran the Clear once, and the Sizes";
  ASSERT_TRUE(r0->execute_mut({Map::WriteOp::kPut, 1, 7}, t0).ok());
  EXPECT_EQ(r1->execute_scan({Map::ScanOp::kSize, 0, 0}, t1).value(), std::optional<uint64_t>(1));
}

// ---- BakeryScanOrder ----------------------------------------------------------------------------

SharedScanOrderOptions slot(uint32_t participant, SharedScanOrderOptions o = {}) {
  o.participant = participant;
  return o;
}

uint64_t realtime_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

TEST(BakeryScanOrder, HeaderAndSlotAreChecked) {
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  EXPECT_EQ(BakeryScanOrder::attach(mem.span(), {}).status().code(), StatusCode::kFailedPrecondition);  // zeroes
  EXPECT_EQ(BakeryScanOrder::create(mem.span().first(4096), {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(BakeryScanOrder::create(mem.span(), slot(BakeryScanOrder::kMaxParticipants)).status().code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(BakeryScanOrder::create(mem.span(), {.cluster_id = 7}).ok());
  EXPECT_TRUE(BakeryScanOrder::attach(mem.span(), slot(1, {.cluster_id = 7})).ok());
  Status other = BakeryScanOrder::attach(mem.span(), slot(1, {.cluster_id = 8})).status();
  EXPECT_EQ(other.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(other.message().find("cluster 7"), std::string::npos) << other.to_string();
  EXPECT_EQ(SharedScanOrder::attach(mem.span(), {.cluster_id = 7}).status().code(), StatusCode::kFailedPrecondition)
      << "a bakery region is not a coherent one";
  mem.word(8) = 99;  // layout version
  EXPECT_EQ(BakeryScanOrder::attach(mem.span(), slot(1, {.cluster_id = 7})).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(BakeryScanOrder, IdsAndCancellationsAreSharedBetweenParticipants) {
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  auto a = BakeryScanOrder::create(mem.span(), {}).value();
  auto b = BakeryScanOrder::attach(mem.span(), slot(5)).value();
  ASSERT_TRUE(a->lock(noop).ok());
  const uint64_t first = a->next_id();
  EXPECT_EQ(first, 1u);
  a->cancel(first);
  a->unlock();
  auto got = b->lock(noop);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value()) << "a holder that unlocked leaves no orphan";
  EXPECT_EQ(b->next_id(), first + 1) << "ids increase across participants";
  b->cancel(first + 1);
  b->unlock();
  for (BakeryScanOrder* o : {a.get(), b.get()}) {
    EXPECT_TRUE(o->is_cancelled(first));
    EXPECT_TRUE(o->is_cancelled(first + 1));
    EXPECT_FALSE(o->is_cancelled(first + 2));
  }
  EXPECT_FALSE(a->try_take_over().has_value()) << "a free lock is not taken over";
}

// |threads| threads spread over |objs| (participants) each take the lock |rounds| times: a plain
// counter only ever touched under the lock (TSan checks the claim) must count every round, and
// the ids the holders took, in holding order, must be exactly 1..N.
void expect_mutual_exclusion(const std::vector<std::unique_ptr<BakeryScanOrder>>& objs, int threads, int rounds) {
  uint64_t inside = 0;
  std::vector<uint64_t> order;
  std::vector<std::thread> running;
  for (int t = 0; t < threads; ++t) {
    running.emplace_back([&, t] {
      BakeryScanOrder& o = *objs[static_cast<size_t>(t) % objs.size()];
      for (int i = 0; i < rounds; ++i) {
        ASSERT_TRUE(o.lock(noop).ok());
        ++inside;
        order.push_back(o.next_id());
        o.unlock();
      }
    });
  }
  for (auto& th : running) th.join();
  EXPECT_EQ(inside, uint64_t(threads) * uint64_t(rounds));
  ASSERT_EQ(order.size(), size_t(threads) * size_t(rounds));
  for (size_t i = 0; i < order.size(); ++i) ASSERT_EQ(order[i], i + 1) << "the holders' sequence is not the ids'";
}

TEST(BakeryScanOrder, ExcludesAcrossParticipantsAndThreads) {
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  std::vector<std::unique_ptr<BakeryScanOrder>> objs;
  objs.push_back(BakeryScanOrder::create(mem.span(), {}).value());
  objs.push_back(BakeryScanOrder::attach(mem.span(), slot(1)).value());
  objs.push_back(BakeryScanOrder::attach(mem.span(), slot(9)).value());
  expect_mutual_exclusion(objs, /*threads=*/6, /*rounds=*/1000);
}

// Processes, as machines are: each forked child is a participant with a plain counter in the
// shared mapping that it increments under the lock (a read, a pause, a write: an overlap loses
// an increment), and the ids it takes are logged in holding order.
TEST(BakeryScanOrder, ExcludesAcrossProcesses) {
  constexpr int kChildren = 3, kRounds = 400;
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  SharedBytes shared(8 * (2 + kChildren * kRounds));
  auto a = BakeryScanOrder::create(mem.span(), {}).value();
  std::vector<pid_t> pids;
  for (int c = 0; c < kChildren; ++c) {
    const pid_t pid = fork();
    if (pid == 0) {
      auto o = BakeryScanOrder::attach(mem.span(), slot(1 + c)).value();
      for (int i = 0; i < kRounds; ++i) {
        if (!o->lock(noop).ok()) _exit(1);
        const uint64_t n = shared.word(0);
        cpu_relax();
        shared.word(0) = n + 1;
        shared.word(8 * (1 + n)) = o->next_id();
        o->unlock();
      }
      _exit(0);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  ASSERT_EQ(shared.word(0), uint64_t{kChildren} * kRounds) << "two holders at once lost an increment";
  for (uint64_t i = 0; i < uint64_t{kChildren} * kRounds; ++i) ASSERT_EQ(shared.word(8 * (1 + i)), i + 1);
  ASSERT_TRUE(a->lock(noop).ok());
  EXPECT_EQ(a->next_id(), uint64_t{kChildren} * kRounds + 1);
  a->unlock();
}

TEST(BakeryScanOrder, DeadHolderIsTakenOverWithItsOrphan) {
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  auto a = BakeryScanOrder::create(mem.span(), {}).value();
  const std::vector<std::byte> entry = {std::byte{1}, std::byte{2}, std::byte{3}};
  ASSERT_EQ(in_child([&] {
              auto c = BakeryScanOrder::attach(mem.span(), slot(1)).value();
              if (!c->lock(noop).ok()) _exit(1);
              c->record(c->next_id(), 0b101, entry);
              _exit(0);
            }),
            0);
  auto o = a->try_take_over();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->id, 1u);
  EXPECT_EQ(o->mask, 0b101u);
  EXPECT_EQ(o->entry, entry);
  EXPECT_EQ(a->take_overs(), 1u);
  a->clear_orphan();
  EXPECT_EQ(a->next_id(), 2u);
  a->unlock();
  // Completed: nobody gets it again, though the dead slot's ticket and record stay.
  auto b = BakeryScanOrder::attach(mem.span(), slot(2)).value();
  auto got = b->lock(noop);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value() && (*got)->id != 0) << "the orphan was completed once already";
  b->unlock();
  EXPECT_FALSE(a->try_take_over().has_value()) << "no orphan left: nothing to take over";

  // A child that dies before recording: lock() skips it, nothing to complete.
  ASSERT_EQ(in_child([&] {
              auto c = BakeryScanOrder::attach(mem.span(), slot(3)).value();
              if (!c->lock(noop).ok()) _exit(1);
              _exit(0);
            }),
            0);
  got = a->lock(noop);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->id, 0u) << "taken over, nothing to complete";
  EXPECT_EQ(a->take_overs(), 2u) << "slot 1 once (its ticket stays, skipped from then on), slot 3 once";
  a->unlock();
}

TEST(BakeryScanOrder, KeptRecordGoesToTheNextHolder) {
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  auto a = BakeryScanOrder::create(mem.span(), {}).value();
  auto b = BakeryScanOrder::attach(mem.span(), slot(1)).value();
  const std::vector<std::byte> entry = {std::byte{9}};
  ASSERT_TRUE(a->lock(noop).ok());
  const uint64_t id = a->next_id();
  a->record(id, 0b11, entry);
  a->unlock_keeping_orphan();  // e.g. a log stayed full while completing it
  auto got = b->lock(noop);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->id, id);
  EXPECT_EQ((*got)->entry, entry);
  EXPECT_EQ(b->take_overs(), 0u) << "a record kept by a live holder is no take-over";
  b->clear_orphan();
  b->unlock();
  got = a->lock(noop);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value()) << "completed once";
  a->unlock();
}

TEST(BakeryScanOrder, LiveHolderIsWaitedForUntilTheTimeout) {
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  auto a = BakeryScanOrder::create(mem.span(), {.lock_timeout = std::chrono::milliseconds(200)}).value();
  auto b = BakeryScanOrder::attach(mem.span(), slot(1)).value();
  ASSERT_TRUE(b->lock(noop).ok());  // this process is alive: never presumed dead
  EXPECT_FALSE(a->try_take_over().has_value()) << "the holder is alive";
  uint64_t waits = 0;
  auto r = a->lock([&] { ++waits; });
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_GT(waits, 0u) << "the waiter keeps its replicas moving";
  b->unlock();
  EXPECT_TRUE(a->lock(noop).ok()) << "free again";
  a->unlock();
}

TEST(BakeryScanOrder, ParticipantOnAnotherHostIsPresumedDeadAfterTheRemoteLease) {
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  auto a = BakeryScanOrder::create(mem.span(), {.remote_lease = std::chrono::milliseconds(50)}).value();
  // The documented layout: participant 4's block at 4096 * 5; number at 8, stamp at 16, holding
  // at 24, owner at 32, recorded scan id at 72 (its mask at 80, an empty entry).
  const size_t block = BakeryScanOrder::kBlockBytes * 5;
  mem.word(block + 72) = 5;
  mem.word(block + 80) = 1;
  mem.word(block + 8) = 1;
  mem.word(block + 24) = 1;
  mem.word(block + 32) = uint64_t{host_tag() + 1} << 32 | 12345;
  mem.word(block + 16) = realtime_now() + 3600ull * 1000000000u;  // just taken, as the stamp says
  EXPECT_FALSE(a->try_take_over().has_value());
  mem.word(block + 16) = realtime_now() - 1000000000u;  // held for a second: past the lease
  auto o = a->try_take_over();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->id, 5u);
  EXPECT_EQ(a->take_overs(), 1u);
  a->clear_orphan();
  a->unlock();
}

// ---- BakeryScanOrder over a mirrored medium ----------------------------------------------------
// Machines without shared memory (RDMA): each participant has its OWN copy of the region, and its
// medium pushes what it wrote into every other copy (what transport/verbs' Mirror does with RDMA
// WRITEs). Here the push is synchronous: word by word, release stores into the other copies (the
// readers' acquire loads pair with them; TSan sees every cross-participant access as atomic).
// to_read does nothing (others' stores land in our copy). The fence is still needed: the copy's
// stores and our next loads are the store-buffering pattern, which release/acquire does not order
// (two doorways could each miss the other's choosing = 1). A read-modify-write on one word all
// participants share orders them: the RMWs are totally ordered, so of two fencing doorways the
// later sees the earlier's stores (a seq_cst fence would too, but GCC's TSan rejects those).
class MirroredCopies {
 public:
  explicit MirroredCopies(uint32_t participants) {
    for (uint32_t i = 0; i < participants; ++i) {
      copies_.push_back(static_cast<std::byte*>(std::aligned_alloc(64, BakeryScanOrder::kRegionBytes)));
      std::memset(copies_.back(), 0xA5, BakeryScanOrder::kRegionBytes);  // create() must format it
    }
  }
  ~MirroredCopies() {
    for (std::byte* c : copies_) std::free(c);
  }
  MirroredCopies(const MirroredCopies&) = delete;
  MirroredCopies& operator=(const MirroredCopies&) = delete;

  std::span<std::byte> copy(uint32_t i) { return {copies_[i], BakeryScanOrder::kRegionBytes}; }
  // The medium of copy i's participant (bakery slot |slot|): pushes from copy i into every other
  // copy, once connected.
  std::shared_ptr<BakeryMedium> medium(uint32_t i, uint32_t slot) { return std::make_shared<Medium>(*this, i, slot); }
  // Until now written() pushed nothing: each copy is formatted locally, as a machine's is.
  void connect() { connected_.store(true, std::memory_order_release); }  // release: before any push
  uint64_t pushes() const { return pushes_.load(std::memory_order_relaxed); }

 private:
  class Medium final : public BakeryMedium {
   public:
    Medium(MirroredCopies& m, uint32_t self, uint32_t slot) : m_(m), self_(self), slot_(slot) {}
    void written(const void* p, size_t n) override {
      // acquire: pairs with connect().
      if (!m_.connected_.load(std::memory_order_acquire) || n == 0) return;
      const std::byte* mine = m_.copies_[self_];
      const size_t at = static_cast<size_t>(static_cast<const std::byte*>(p) - mine);
      EXPECT_LE(at + n, BakeryScanOrder::kRegionBytes) << "written() outside the region";
      // Whole words around [at, at + n): the block is ours alone, so its neighbouring bytes are
      // ours too (the bakery writes entries of any length).
      const size_t first = at / 8 * 8, last = (at + n + 7) / 8 * 8;
      const size_t block = BakeryScanOrder::kBlockBytes * (1 + size_t{slot_});
      EXPECT_TRUE(first >= block && last <= block + BakeryScanOrder::kBlockBytes)
          << "participant " << slot_ << " wrote outside its block: [" << at << ", " << at + n << ")";
      for (uint32_t j = 0; j < m_.copies_.size(); ++j) {
        if (j == self_) continue;
        for (size_t w = first; w < last; w += 8) {
          const uint64_t v = word(m_.copies_[self_], w).load(std::memory_order_relaxed);  // our own
          // release: a reader that sees this word sees our earlier pushes (per-peer order).
          word(m_.copies_[j], w).store(v, std::memory_order_release);
        }
      }
      m_.pushes_.fetch_add(1, std::memory_order_relaxed);
    }
    void to_read(const void*, size_t) override {}
    // acq_rel on the shared word: our pushes happen before any later fencer's loads, and every
    // earlier fencer's pushes before ours (a locked instruction on x86: a full barrier too).
    void store_load_fence() override { m_.fence_.fetch_add(1, std::memory_order_acq_rel); }

   private:
    static std::atomic_ref<uint64_t> word(std::byte* base, size_t offset) {
      return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(base + offset));
    }
    MirroredCopies& m_;
    uint32_t self_;  // our copy
    uint32_t slot_;  // our bakery slot: the only block we may write
  };

  std::vector<std::byte*> copies_;
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> pushes_{0};
  std::atomic<uint64_t> fence_{0};  // the word every participant's fence updates
};

TEST(BakeryScanOrder, MirroredCopiesShareIdsCancellationsAndRecords) {
  MirroredCopies m(2);
  auto a = BakeryScanOrder::create(m.copy(0), slot(0, {.cluster_id = 3}), m.medium(0, 0)).value();
  auto b = BakeryScanOrder::create(m.copy(1), slot(1, {.cluster_id = 3}), m.medium(1, 1)).value();
  EXPECT_EQ(m.pushes(), 0u) << "formatting is local";
  m.connect();
  EXPECT_TRUE(BakeryScanOrder::attach(m.copy(1), slot(1, {.cluster_id = 3}), m.medium(1, 1)).ok());
  ASSERT_TRUE(a->lock(noop).ok());
  const uint64_t first = a->next_id();
  a->cancel(first);
  const std::vector<std::byte> entry = {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}, std::byte{5}};
  a->record(first + 100, 0b110, entry);  // an entry of 5 bytes: not whole words
  a->unlock_keeping_orphan();
  EXPECT_GT(m.pushes(), 0u);
  auto got = b->lock(noop);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value()) << "a's kept record reached b's copy";
  EXPECT_EQ((*got)->id, first + 100);
  EXPECT_EQ((*got)->mask, 0b110u);
  EXPECT_EQ((*got)->entry, entry);
  b->clear_orphan();
  EXPECT_EQ(b->next_id(), first + 1) << "ids increase across copies";
  b->unlock();
  for (BakeryScanOrder* o : {a.get(), b.get()}) {
    EXPECT_TRUE(o->is_cancelled(first));
    EXPECT_FALSE(o->is_cancelled(first + 1));
  }
  got = a->lock(noop);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value()) << "b's done mark reached a's copy: completed once";
  a->unlock();
}

// The mutual-exclusion run of ExcludesAcrossParticipantsAndThreads, each participant on its own
// copy: a plain counter only touched under the lock (TSan checks the claim) and the holders' ids
// in holding order, which must be exactly 1..N.
TEST(BakeryScanOrder, ExcludesAcrossMirroredCopies) {
  constexpr uint32_t kParticipants = 3;
  constexpr int kThreads = 6, kRounds = 700;
  MirroredCopies m(kParticipants);
  std::vector<std::unique_ptr<BakeryScanOrder>> objs;
  for (uint32_t p = 0; p < kParticipants; ++p) {
    // Slots need not be dense: 0, 4, 8. Each copy formatted locally, then connected.
    objs.push_back(BakeryScanOrder::create(m.copy(p), slot(4 * p), m.medium(p, 4 * p)).value());
  }
  m.connect();
  expect_mutual_exclusion(objs, kThreads, kRounds);
}

// As SharedScanOrder's: the orphan Clear of a dead participant runs first, once, on every replica.
TEST(BakeryScanOrder, CnrCompletesAnOrphanBeforeTheNextScan) {
  using Map = ConcurrentHashMap;
  using Group = CnrGroup<Map, HashMapLogMapper, logs::RingLog>;
  SharedBytes mem(BakeryScanOrder::kRegionBytes);
  auto g = Group::create(
               4, [] {
                 logs::LogOptions lo;
                 lo.slot_count = 256;
                 return lo;
               }(),
               [](const logs::LogOptions& o) { return logs::RingLog::create(o); }, HashMapLogMapper{},
               BakeryScanOrder::create(mem.span(), {}).value())
               .value();
  auto r0 = g->make_replica(ReplicaOptions{}).value();
  auto r1 = g->make_replica(ReplicaOptions{}).value();
  auto t0 = r0->register_thread().value();
  auto t1 = r1->register_thread().value();
  for (uint64_t k = 0; k < 10; ++k) ASSERT_TRUE(r0->execute_mut({Map::WriteOp::kPut, k, k}, t0).ok());
  Group::Entry clear{};
  clear.kind = Group::Entry::kScanUpdate;
  clear.issuer_replica = 40;  // nobody here: the issuer is gone
  clear.scan_mask = g->all_logs_mask();
  clear.scan = {Map::ScanOp::kClear, 0, 0};
  ASSERT_EQ(in_child([&] {
              auto c = BakeryScanOrder::attach(mem.span(), slot(2)).value();
              if (!c->lock(noop).ok()) _exit(1);
              clear.scan_id = c->next_id();
              c->record(clear.scan_id, clear.scan_mask, std::as_bytes(std::span<const Group::Entry>(&clear, 1)));
              _exit(0);
            }),
            0);
  EXPECT_EQ(r1->execute_scan({Map::ScanOp::kSize, 0, 0}, t1).value(), std::optional<uint64_t>(0))
      << "the orphan Clear ran before this scan";
  EXPECT_EQ(r1->orphans_completed(), 1u);
  EXPECT_EQ(r0->execute_scan({Map::ScanOp::kSize, 0, 0}, t0).value(), std::optional<uint64_t>(0));
  EXPECT_EQ(r0->scans_executed(), r1->scans_executed()) << "every replica ran the Clear once, and the Sizes";
}

}  // namespace
}  // namespace nrx::nr
