// Crash fencing of the shared-memory log (logs/shm/shm_log.h, "Crash fencing" and "Crash
// fencing, noncoherent mode"), in both modes:
//  - in one process, two ShmLog objects on one region, the second "crashing" mid-append through
//    crash_in_append_for_testing (reserve, publish part of the batch, stop): the survivor's exec
//    and append go on once the lease runs out, no-ops are skipped, the zombie's operations fail
//    with kFailedPrecondition, its payload holds are released and its id is free again;
//  - an idle replica that stops heartbeating is fenced when the log fills (one that beats is not);
//  - a process that SIGKILLs itself between reserving and publishing (pid fast path: no lease
//    wait), and (coherent) a GC lock held by a dead pid (broken);
//  - noncoherent: only the sequencer fences (fence_dead elsewhere is a no-op), and the death of
//    the sequencer's process fails the survivors' waits with kUnavailable instead of hanging;
//  - three worker processes (shm_log_worker) running an NR hash map, one of which SIGKILLs itself
//    at a seeded random append, mid-batch: the two survivors finish every operation, agree on the
//    digest, and the merged history (the dead worker's acknowledged operations included, its
//    pending ones as "may or may not have happened") is linearizable.
// Noncoherent mode's zero read-modify-write proof covers fencing in shm_log_test.cc (the counting
// Access policy lives there). Every wait polls with a generous deadline (tens of seconds): the
// machine may be loaded; no test asserts a tight wall-clock bound.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "logs/shm/shm_log.h"
#include "tests/lincheck/lincheck.h"
#include "tests/lincheck/models.h"
#include "tests/logs/shm_test_region.h"

extern char** environ;

namespace nrx::logs {
namespace {

using testing::MappedRegion;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr uint64_t kCluster = 0xfe7ce;

std::vector<std::byte> bytes_of(uint64_t key, size_t n) {
  std::vector<std::byte> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((key * 131 + i) & 0xff);
  return b;
}

Result<LogIndex> append_n(ShmLog& log, ReplicaId r, uint64_t key, size_t n) {
  std::vector<std::vector<std::byte>> entries;
  std::vector<std::span<const std::byte>> batch;
  for (size_t i = 0; i < n; ++i) entries.push_back(bytes_of(key + i, 8));
  for (const auto& e : entries) batch.emplace_back(e);
  return log.append(r, batch, [](const Entry&) {});
}

// Two objects on one memfd region: the creator (the survivor; noncoherent: it runs the sequencer,
// so it is the fencer) and an attached one (the victim; noncoherent: client 1).
struct TwoObjects {
  std::shared_ptr<MappedRegion> region;
  std::unique_ptr<ShmLog> survivor;
  std::unique_ptr<ShmLog> victim;
};

ShmAttachOptions attach_options(ShmMode mode, uint32_t client, std::chrono::nanoseconds lease) {
  ShmAttachOptions a;
  a.cluster_id = kCluster;
  a.full_timeout = 30s;
  a.lease = lease;
  a.mode = mode;
  a.client = client;
  return a;
}

TwoObjects make_two(uint32_t slot_count, std::chrono::nanoseconds lease, ShmMode mode = ShmMode::kCoherent) {
  TwoObjects t;
  LogOptions o;
  o.entry_size = 16;
  o.slot_count = slot_count;
  o.payload_slots = 4;
  o.full_timeout = 30s;  // generous: fencing must end the waits long before
  ShmOptions shm;
  shm.cluster_id = kCluster;
  shm.payload_bytes = 4 * 4096;
  shm.lease = lease;
  shm.mode = mode;
  auto region = MappedRegion::create(MappedRegion::Kind::kMemfd, ShmLog::region_bytes(o, shm));
  EXPECT_TRUE(region.ok()) << region.status().to_string();
  if (!region.ok()) return t;
  t.region = *region;
  auto created = ShmLog::create(t.region->bytes(), o, shm);
  EXPECT_TRUE(created.ok()) << created.status().to_string();
  if (!created.ok()) return t;
  t.survivor = std::move(created).value();
  // Noncoherent: the attacher's lease only times the sequencer (never silent here); keep it long.
  auto attached = ShmLog::attach(t.region->bytes(),
                                 attach_options(mode, 1, mode == ShmMode::kNoncoherent ? std::chrono::nanoseconds(60s) : lease));
  EXPECT_TRUE(attached.ok()) << attached.status().to_string();
  if (attached.ok()) t.victim = std::move(attached).value();
  return t;
}

// Runs |f| on a thread and waits for it up to |deadline|; false (and the thread detached, its
// objects leaked on purpose) when it did not finish: a hang becomes a failure, not a stuck test.
template <typename F>
bool finishes_within(std::chrono::seconds deadline, F f) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread th([done, f]() mutable {
    f();
    done->store(true, std::memory_order_release);
  });
  const auto end = Clock::now() + deadline;
  while (!done->load(std::memory_order_acquire) && Clock::now() < end) std::this_thread::sleep_for(1ms);
  if (!done->load(std::memory_order_acquire)) {
    th.detach();
    return false;
  }
  th.join();
  return true;
}

// The victim reserves a batch of 3, publishes only its first entry and stops (its object plays
// dead; its process lives, so only the lease can tell). The survivor's exec waits on the hole,
// fences the victim after the lease, skips the two no-ops and applies everything else.
TEST(ShmFencingTest, CrashMidAppendIsFencedAfterTheLease) {
  constexpr auto kLease = 200ms;
  TwoObjects t = make_two(64, kLease);
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  const ReplicaId v = t.victim->register_replica().value();
  const PayloadRef ref = t.survivor->payload_put(bytes_of(5, 100)).value();
  ASSERT_EQ(append_n(*t.survivor, s, 0, 2).value_or(~0ull), 0u);
  ASSERT_EQ(append_n(*t.victim, v, 10, 1).value_or(~0ull), 2u);
  ASSERT_EQ(t.victim->exec(v, [](const Entry&) {}).value_or(0), 3u);

  t.victim->crash_in_append_for_testing(1, /*publish=*/1, /*kill=*/false);
  Result<LogIndex> crashed = append_n(*t.victim, v, 20, 3);  // indices 3 (published), 4, 5 (holes)
  ASSERT_EQ(crashed.status().code(), StatusCode::kAborted) << crashed.status().to_string();
  ASSERT_EQ(t.survivor->tail(), 6u);
  ASSERT_EQ(append_n(*t.survivor, s, 30, 1).value_or(~0ull), 6u);

  std::vector<std::pair<LogIndex, ReplicaId>> seen;
  Result<LogIndex> lt = Status::internal("exec never returned");
  const auto start = Clock::now();
  ASSERT_TRUE(finishes_within(60s, [&] { lt = t.survivor->exec(s, [&](const Entry& e) { seen.emplace_back(e.index, e.writer); }); }))
      << "the survivor's exec waited on the dead replica's hole forever";
  const auto waited = Clock::now() - start;
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 7u);
  const std::vector<std::pair<LogIndex, ReplicaId>> want = {{0, s}, {1, s}, {2, v}, {3, v}, {6, s}};
  EXPECT_EQ(seen, want) << "the no-ops at 4 and 5 must be skipped, everything else applied once";
  EXPECT_GE(waited, kLease) << "fenced before its lease ran out (its process is alive)";
  ::testing::Test::RecordProperty("exec_wait_ms",
                                  std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()));
  EXPECT_EQ(t.survivor->fenced_count(), 1u);
  EXPECT_EQ(t.survivor->active_replicas(), uint64_t{1} << s);
  EXPECT_EQ(t.survivor->head(), 7u);

  // The zombie: every operation says "fenced"; it cannot append or move anything.
  Result<LogIndex> zombie_append = append_n(*t.victim, v, 40, 1);
  EXPECT_EQ(zombie_append.status().code(), StatusCode::kFailedPrecondition) << zombie_append.status().to_string();
  EXPECT_NE(zombie_append.status().to_string().find("fenced"), std::string::npos);
  EXPECT_EQ(t.victim->exec(v, [](const Entry&) {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.victim->heartbeat().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.victim->payload_release(v, ref).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.survivor->tail(), 7u);

  // Its payload hold was released for it: the survivor's release frees the payload.
  EXPECT_TRUE(t.survivor->payload_release(s, ref).ok());
  EXPECT_EQ(t.survivor->payloads_live(), 0u);

  // Its id is free again; a new registration starts at head and sees only new entries.
  const ReplicaId again = t.survivor->register_replica().value();
  EXPECT_EQ(again, v);
  EXPECT_EQ(t.survivor->ltail(again).value_or(~0ull), 7u);
  ASSERT_EQ(append_n(*t.survivor, s, 50, 2).value_or(~0ull), 7u);
  std::vector<LogIndex> fresh;
  EXPECT_EQ(t.survivor->exec(again, [&](const Entry& e) { fresh.push_back(e.index); }).value_or(0), 9u);
  EXPECT_EQ(fresh, (std::vector<LogIndex>{7, 8}));
  // The zombie still cannot touch the id's new owner (its incarnation moved on twice).
  EXPECT_EQ(t.victim->exec(v, [](const Entry&) {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.survivor->ltail(again).value_or(~0ull), 9u);
  EXPECT_TRUE(t.victim->deregister_replica(v).ok()) << "a fenced replica's leave only forgets it locally";
  EXPECT_EQ(t.survivor->active_replicas(), (uint64_t{1} << s) | (uint64_t{1} << again));
}

// A registered replica that never applies anything (its owner idles without heartbeat()) holds
// the head; the survivor's full-log wait fences it after the lease and appends on. An idle owner
// that does call heartbeat() is not fenced.
TEST(ShmFencingTest, FullLogWaitFencesAnIdleReplica) {
  constexpr auto kLease = 1500ms;  // 150 missed beats: a loaded (sanitizer, 2-core) machine still beats
  TwoObjects t = make_two(8, kLease);
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  const ReplicaId v = t.victim->register_replica().value();

  // Beating owners (the idle loop's heartbeat()): a third object's appends find the log full,
  // fence nobody, and give up after its full_timeout of 1 s.
  std::atomic<bool> stop{false};
  std::thread beater([&] {
    while (!stop.load(std::memory_order_acquire)) {
      EXPECT_TRUE(t.victim->heartbeat().ok());
      EXPECT_TRUE(t.survivor->heartbeat().ok());
      std::this_thread::sleep_for(10ms);
    }
  });
  {
    ShmAttachOptions a;
    a.cluster_id = kCluster;
    a.full_timeout = 1s;
    a.lease = kLease;
    auto impatient = ShmLog::attach(t.region->bytes(), a).value();
    const ReplicaId i = impatient->register_replica().value();
    ASSERT_TRUE(t.survivor->exec(s, [](const Entry&) {}).ok());
    Status last;
    for (uint64_t k = 0; k < 9 && last.ok(); ++k) last = append_n(*impatient, i, k, 1).status();
    EXPECT_EQ(last.code(), StatusCode::kDeadlineExceeded) << last.to_string();
    EXPECT_EQ(impatient->fenced_count(), 0u) << "a replica that heartbeats was fenced";
    ASSERT_TRUE(impatient->deregister_replica(i).ok());
  }
  stop.store(true, std::memory_order_release);
  beater.join();
  EXPECT_NE(t.survivor->active_replicas() & (uint64_t{1} << v), 0u);

  // Idle victim: fenced from the full-log wait; every append completes.
  const auto start = Clock::now();
  Status error;
  ASSERT_TRUE(finishes_within(60s, [&] {
    for (uint64_t k = 0; k < 40 && error.ok(); ++k) error = append_n(*t.survivor, s, k, 1).status();
  }));
  EXPECT_TRUE(error.ok()) << error.to_string();
  EXPECT_GE(Clock::now() - start, kLease);
  EXPECT_EQ(t.survivor->active_replicas(), uint64_t{1} << s);
  EXPECT_GE(t.survivor->fenced_count(), 1u);
  EXPECT_EQ(t.victim->exec(v, [](const Entry&) {}).status().code(), StatusCode::kFailedPrecondition);
}

// fence_dead called directly: the first look starts the lease timer; a later one after the
// lease fences. Its own replicas are never fenced; a bad lease is kInvalidArgument.
TEST(ShmFencingTest, FenceDeadTimesTheLeaseWithItsOwnClock) {
  TwoObjects t = make_two(16, 10s);
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  const ReplicaId v = t.victim->register_replica().value();
  EXPECT_EQ(t.survivor->fence_dead(0ns).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(t.survivor->fence_dead(50ms).ok());
  EXPECT_EQ(t.survivor->fenced_count(), 0u) << "the first look only starts the timer";
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(t.victim->fence_dead(50ms).ok());  // the victim looks at the survivor: first look
  EXPECT_TRUE(t.survivor->fence_dead(50ms).ok());
  EXPECT_EQ(t.survivor->fenced_count(), 1u);
  EXPECT_EQ(t.survivor->active_replicas(), uint64_t{1} << s);
  EXPECT_EQ(t.victim->heartbeat().code(), StatusCode::kFailedPrecondition);
  (void)v;
}

// A child process registers, reserves a batch and SIGKILLs itself before publishing. Same host,
// pid gone: the parent fences it at once, with a lease of an hour.
TEST(ShmFencingTest, DeadProcessIsFencedWithoutWaitingForTheLease) {
  TwoObjects t = make_two(16, std::chrono::hours(1));
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  t.victim.reset();  // the child attaches its own object
  ASSERT_EQ(append_n(*t.survivor, s, 0, 1).value_or(~0ull), 0u);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ShmAttachOptions a;
    a.cluster_id = kCluster;
    auto log = ShmLog::attach(t.region->bytes(), a);
    if (!log.ok()) _exit(3);
    auto r = (*log)->register_replica();
    if (!r.ok()) _exit(4);
    (*log)->crash_in_append_for_testing(1, /*publish=*/0, /*kill=*/true);
    (void)append_n(**log, *r, 100, 2);  // SIGKILL inside, after the reservation
    _exit(5);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
  ASSERT_EQ(t.survivor->tail(), 3u) << "the child reserved 1..2";
  ASSERT_EQ(std::popcount(t.survivor->active_replicas()), 2);

  std::vector<LogIndex> seen;
  Result<LogIndex> lt = Status::internal("exec never returned");
  ASSERT_TRUE(finishes_within(60s, [&] { lt = t.survivor->exec(s, [&](const Entry& e) { seen.push_back(e.index); }); }));
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 3u);
  EXPECT_EQ(seen, (std::vector<LogIndex>{0}));
  EXPECT_EQ(t.survivor->active_replicas(), uint64_t{1} << s);
  EXPECT_EQ(append_n(*t.survivor, s, 1, 1).value_or(~0ull), 3u);
}

// A GC lock whose holder on this host is dead is broken; one held by a live process on another
// host (another tag) is not: registration then fails with kUnavailable after full_timeout.
TEST(ShmFencingTest, DeadGcLockHolderIsBroken) {
  TwoObjects t = make_two(16, 10s);
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  const auto* lines = reinterpret_cast<const shm::ReplicaLine*>(t.region->bytes().data() +
                                                                t.survivor->geometry().replicas_offset);
  const auto tag = static_cast<uint32_t>(lines[s].host);
  ASSERT_NE(tag, 0u);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);  // |child| is a pid nobody runs now
  auto& lock_word = reinterpret_cast<shm::ControlBlock*>(t.region->bytes().data() +
                                                         t.survivor->geometry().control_offset)
                        ->membership.gc_lock;
  std::atomic_ref<uint64_t>(lock_word).store(shm::gc_lock_word(tag, static_cast<uint32_t>(child)),
                                             std::memory_order_release);
  Result<ReplicaId> r = t.victim->register_replica();
  EXPECT_TRUE(r.ok()) << r.status().to_string();

  ShmAttachOptions a;
  a.cluster_id = kCluster;
  a.full_timeout = 200ms;
  auto other = ShmLog::attach(t.region->bytes(), a).value();
  std::atomic_ref<uint64_t>(lock_word).store(shm::gc_lock_word(tag ^ 1, static_cast<uint32_t>(child)),
                                             std::memory_order_release);
  Result<ReplicaId> blocked = other->register_replica();
  EXPECT_EQ(blocked.status().code(), StatusCode::kUnavailable) << blocked.status().to_string();
  EXPECT_NE(blocked.status().to_string().find("another host"), std::string::npos) << blocked.status().to_string();
  std::atomic_ref<uint64_t>(lock_word).store(0, std::memory_order_release);
}

// ---- Noncoherent mode: the sequencer fences ---------------------------------------------------

// Polls |done| every millisecond until it holds or |deadline| passes; true when it held.
template <typename F>
bool poll_until(std::chrono::seconds deadline, F done) {
  const auto end = Clock::now() + deadline;
  while (!done()) {
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// As CrashMidAppendIsFencedAfterTheLease, in noncoherent mode: the victim (client 1) is granted a
// batch of 3, publishes its first entry and stops while its grant is still its latest request
// (inside its publish window, as far as the sequencer can tell). The survivor's sequencer fences
// it once its heartbeat stayed unchanged for the lease, waits one more lease (the owner might still
// publish: its process lives), then fills the two holes with no-ops; the survivor's exec skips
// them. The zombie is refused; its acknowledgement frees the id.
TEST(ShmFencingTest, NoncoherentCrashMidAppendIsFencedBySequencer) {
  constexpr auto kLease = 200ms;
  TwoObjects t = make_two(64, kLease, ShmMode::kNoncoherent);
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  const ReplicaId v = t.victim->register_replica().value();
  const PayloadRef ref = t.survivor->payload_put(bytes_of(5, 100)).value();
  ASSERT_EQ(append_n(*t.survivor, s, 0, 2).value_or(~0ull), 0u);
  ASSERT_EQ(append_n(*t.victim, v, 10, 1).value_or(~0ull), 2u);
  ASSERT_EQ(t.victim->exec(v, [](const Entry&) {}).value_or(0), 3u);

  // The victim's last heartbeat is this one or a later one: the sequencer's lease runs from its
  // first look at it.
  const auto last_beat = Clock::now();
  ASSERT_TRUE(t.victim->heartbeat().ok());
  t.victim->crash_in_append_for_testing(1, /*publish=*/1, /*kill=*/false);
  Result<LogIndex> crashed = append_n(*t.victim, v, 20, 3);  // indices 3 (published), 4, 5 (holes)
  ASSERT_EQ(crashed.status().code(), StatusCode::kAborted) << crashed.status().to_string();
  ASSERT_EQ(t.survivor->tail(), 6u);
  ASSERT_EQ(append_n(*t.survivor, s, 30, 1).value_or(~0ull), 6u);

  std::vector<std::pair<LogIndex, ReplicaId>> seen;
  Result<LogIndex> lt = Status::internal("exec never returned");
  ASSERT_TRUE(finishes_within(60s, [&] { lt = t.survivor->exec(s, [&](const Entry& e) { seen.emplace_back(e.index, e.writer); }); }))
      << "the survivor's exec waited on the dead replica's hole forever";
  const auto waited = Clock::now() - last_beat;
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 7u);
  const std::vector<std::pair<LogIndex, ReplicaId>> want = {{0, s}, {1, s}, {2, v}, {3, v}, {6, s}};
  EXPECT_EQ(seen, want) << "the no-ops at 4 and 5 must be skipped, everything else applied once";
  // A lease of silence to fence, and one more before filling a grant its owner might publish.
  EXPECT_GE(waited, 2 * kLease) << "filled while its (live) owner might still publish";
  ::testing::Test::RecordProperty("exec_wait_ms",
                                  std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()));
  EXPECT_EQ(t.survivor->fenced_count(), 1u);
  EXPECT_EQ(t.survivor->active_replicas(), uint64_t{1} << s);
  EXPECT_EQ(t.survivor->head(), 7u);

  // Its payload hold counts as released at once: the survivor's release frees the payload.
  EXPECT_TRUE(t.victim->payload_get(ref).ok());
  EXPECT_TRUE(t.survivor->payload_release(s, ref).ok());
  EXPECT_EQ(t.survivor->payloads_live(), 0u);

  // The zombie: every operation says "fenced"; it cannot append or move anything.
  EXPECT_EQ(t.victim->heartbeat().code(), StatusCode::kFailedPrecondition);
  Result<LogIndex> zombie_append = append_n(*t.victim, v, 40, 1);
  EXPECT_EQ(zombie_append.status().code(), StatusCode::kFailedPrecondition) << zombie_append.status().to_string();
  EXPECT_NE(zombie_append.status().to_string().find("fenced"), std::string::npos);
  EXPECT_EQ(t.victim->exec(v, [](const Entry&) {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.victim->payload_release(v, ref).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.survivor->tail(), 7u);

  // The zombie acknowledged (its append above): the id is free again; a new registration starts
  // at head and sees only new entries.
  const ReplicaId again = t.survivor->register_replica().value();
  EXPECT_EQ(again, v);
  EXPECT_EQ(t.survivor->ltail(again).value_or(~0ull), 7u);
  ASSERT_EQ(append_n(*t.survivor, s, 50, 2).value_or(~0ull), 7u);
  std::vector<LogIndex> fresh;
  EXPECT_EQ(t.survivor->exec(again, [&](const Entry& e) { fresh.push_back(e.index); }).value_or(0), 9u);
  EXPECT_EQ(fresh, (std::vector<LogIndex>{7, 8}));
  // The zombie still cannot touch the id's new owner.
  EXPECT_EQ(t.victim->exec(v, [](const Entry&) {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.survivor->ltail(again).value_or(~0ull), 9u);
  EXPECT_TRUE(t.victim->deregister_replica(v).ok()) << "a fenced replica's leave only forgets it locally";
  EXPECT_EQ(t.survivor->active_replicas(), (uint64_t{1} << s) | (uint64_t{1} << again));
}

// As FullLogWaitFencesAnIdleReplica, in noncoherent mode: while its owner beats, an idle replica
// holding the head is not fenced (a third object's appends time out instead); once it stops, the
// sequencer fences it after the lease and the survivor's appends, waiting on the full log, resume.
TEST(ShmFencingTest, NoncoherentFullLogWaitFencesAnIdleReplica) {
  constexpr auto kLease = 1500ms;  // as above: long beside the 10 ms beats, so starvation does not fence
  TwoObjects t = make_two(8, kLease, ShmMode::kNoncoherent);
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  const ReplicaId v = t.victim->register_replica().value();

  std::atomic<bool> stop{false};
  // When the victim's last heartbeat started: the sequencer's lease runs from its first look at
  // that beat, which comes after this.
  std::atomic<int64_t> last_beat_ns{0};
  std::thread beater([&] {
    while (!stop.load(std::memory_order_acquire)) {
      last_beat_ns.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      EXPECT_TRUE(t.victim->heartbeat().ok());
      EXPECT_TRUE(t.survivor->heartbeat().ok());
      std::this_thread::sleep_for(10ms);
    }
  });
  {
    ShmAttachOptions a = attach_options(ShmMode::kNoncoherent, 2, 60s);
    a.full_timeout = 1s;
    auto impatient = ShmLog::attach(t.region->bytes(), a).value();
    const ReplicaId i = impatient->register_replica().value();
    ASSERT_TRUE(t.survivor->exec(s, [](const Entry&) {}).ok());
    Status last;
    for (uint64_t k = 0; k < 9 && last.ok(); ++k) last = append_n(*impatient, i, k, 1).status();
    EXPECT_EQ(last.code(), StatusCode::kDeadlineExceeded) << last.to_string();
    EXPECT_EQ(t.survivor->fenced_count(), 0u) << "a replica that heartbeats was fenced";
    ASSERT_TRUE(impatient->deregister_replica(i).ok());
  }
  stop.store(true, std::memory_order_release);
  beater.join();
  EXPECT_NE(t.survivor->active_replicas() & (uint64_t{1} << v), 0u);

  Status error;
  ASSERT_TRUE(finishes_within(60s, [&] {
    for (uint64_t k = 0; k < 40 && error.ok(); ++k) error = append_n(*t.survivor, s, k, 1).status();
  }));
  EXPECT_TRUE(error.ok()) << error.to_string();
  const Clock::time_point last_beat{Clock::duration(last_beat_ns.load(std::memory_order_relaxed))};
  EXPECT_GE(Clock::now() - last_beat, kLease) << "fenced before its heartbeat was silent for the lease";
  EXPECT_EQ(t.survivor->active_replicas(), uint64_t{1} << s);
  EXPECT_EQ(t.survivor->fenced_count(), 1u);
  EXPECT_EQ(t.victim->exec(v, [](const Entry&) {}).status().code(), StatusCode::kFailedPrecondition);
}

// fence_dead in noncoherent mode: only the creator (the sequencer) fences, with the lease given;
// elsewhere it is a no-op. A lease that has not run out fences nobody.
TEST(ShmFencingTest, NoncoherentFenceDeadRunsOnTheSequencer) {
  TwoObjects t = make_two(16, 10s, ShmMode::kNoncoherent);  // the sequencer's own checks: 10 s
  ASSERT_NE(t.victim, nullptr);
  const ReplicaId s = t.survivor->register_replica().value();
  const ReplicaId v = t.victim->register_replica().value();
  EXPECT_EQ(t.survivor->fence_dead(0ns).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.victim->fence_dead(0ns).code(), StatusCode::kInvalidArgument);
  const auto last_beat = Clock::now();
  ASSERT_TRUE(t.victim->heartbeat().ok());
  EXPECT_TRUE(t.survivor->fence_dead(std::chrono::hours(1)).ok());
  EXPECT_TRUE(t.victim->fence_dead(1ns).ok()) << "not the sequencer: a no-op";
  EXPECT_EQ(t.victim->fenced_count(), 0u);
  EXPECT_EQ(t.survivor->fenced_count(), 0u);
  EXPECT_NE(t.survivor->active_replicas() & (uint64_t{1} << v), 0u);
  ASSERT_TRUE(poll_until(20s, [&] {
    EXPECT_TRUE(t.survivor->fence_dead(50ms).ok());
    return t.survivor->fenced_count() == 1;
  }));
  EXPECT_GE(Clock::now() - last_beat, 50ms) << "fenced before its heartbeat was silent for the lease";
  EXPECT_EQ(t.survivor->active_replicas(), uint64_t{1} << s);
  EXPECT_EQ(t.victim->heartbeat().code(), StatusCode::kFailedPrecondition);
}

// Defined with the multi-process helpers below.
Result<pid_t> spawn(const std::vector<std::string>& args);
std::string read_file(const std::string& path);

// A worker process (noncoherent, client 1) registers, is granted a batch and SIGKILLs itself
// before publishing. Same host, pid gone: the sequencer fences it at once (its lease is an hour)
// and fills the hole; the survivor's exec goes on.
TEST(ShmFencingTest, NoncoherentDeadProcessIsFencedWithoutWaitingForTheLease) {
  LogOptions o;
  o.entry_size = 32;
  o.slot_count = 16;
  o.payload_slots = 4;
  ShmOptions shm;
  shm.cluster_id = kCluster;
  shm.payload_bytes = 4 * 4096;
  shm.mode = ShmMode::kNoncoherent;
  shm.lease = std::chrono::hours(1);
  auto region = MappedRegion::create(MappedRegion::Kind::kDevShm, ShmLog::region_bytes(o, shm)).value();
  auto control = MappedRegion::create(MappedRegion::Kind::kDevShm, 4096).value();
  auto log = ShmLog::create(region->bytes(), o, shm).value();
  const ReplicaId s = log->register_replica().value();
  ASSERT_EQ(append_n(*log, s, 0, 1).value_or(~0ull), 0u);

  const std::string out = "/dev/shm/nrx-shm-fence-nc-" + std::to_string(getpid()) + ".out";
  Result<pid_t> pid = spawn({NRX_SHM_LOG_WORKER, "--region", region->path(), "--control", control->path(), "--out",
                             out, "--cluster", std::to_string(kCluster), "--mode", "noncoherent", "--client", "1",
                             "--workers", "1", "--threads", "1", "--ops", "1000", "--keys", "4",
                             "--die-after-appends", "1", "--die-publish", "0"});
  ASSERT_TRUE(pid.ok()) << pid.status().to_string();
  int status = 0;
  const bool died = poll_until(30s, [&] { return waitpid(*pid, &status, WNOHANG) == *pid; });
  if (!died) {
    kill(*pid, SIGKILL);
    waitpid(*pid, &status, 0);
  }
  std::remove(out.c_str());
  ASSERT_TRUE(died) << "the worker never crashed";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "worker status " << status;
  ASSERT_EQ(log->tail(), 2u) << "the worker was granted index 1";

  const auto start = Clock::now();
  std::vector<LogIndex> seen;
  Result<LogIndex> lt = Status::internal("exec never returned");
  ASSERT_TRUE(finishes_within(60s, [&] { lt = log->exec(s, [&](const Entry& e) { seen.push_back(e.index); }); }));
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 2u);
  EXPECT_EQ(seen, (std::vector<LogIndex>{0}));
  EXPECT_LT(Clock::now() - start, 30s) << "waited for the lease instead of the pid";
  EXPECT_EQ(log->active_replicas(), uint64_t{1} << s);
  EXPECT_EQ(log->fenced_count(), 1u);
  EXPECT_EQ(append_n(*log, s, 1, 1).value_or(~0ull), 2u);
}

// The death of the sequencer's process (the creator, a worker here) is not survivable in
// noncoherent mode; the survivors must say so instead of hanging: an exec waiting on a hole that
// only the sequencer could fence, an append, a registration and a payload_put all fail with
// kUnavailable, long before their full_timeout.
TEST(ShmFencingTest, NoncoherentSequencerDeathFailsWaitersClearly) {
  LogOptions o;  // what shm_log_worker --create lays out
  o.entry_size = 32;
  o.slot_count = 16;
  o.payload_slots = 4;
  ShmOptions shm;
  shm.cluster_id = kCluster;
  shm.payload_bytes = 4 * 4096;
  shm.mode = ShmMode::kNoncoherent;
  auto region = MappedRegion::create(MappedRegion::Kind::kDevShm, ShmLog::region_bytes(o, shm)).value();
  const std::string out = "/dev/shm/nrx-shm-fence-seq-" + std::to_string(getpid()) + ".out";
  Result<pid_t> creator = spawn({NRX_SHM_LOG_WORKER, "--create", "--region", region->path(), "--out", out,
                                 "--cluster", std::to_string(kCluster), "--mode", "noncoherent", "--slots", "16",
                                 "--lease-ms", "60000"});
  ASSERT_TRUE(creator.ok()) << creator.status().to_string();
  std::unique_ptr<ShmLog> a, b;
  const bool attached = poll_until(30s, [&] {
    if (read_file(out).rfind("created", 0) != 0) return false;
    auto r = ShmLog::attach(region->bytes(), attach_options(ShmMode::kNoncoherent, 1, 300ms));
    if (r.ok()) a = std::move(r).value();
    return a != nullptr;
  });
  if (!attached) {
    kill(*creator, SIGKILL);
    waitpid(*creator, nullptr, 0);
    std::remove(out.c_str());
  }
  ASSERT_TRUE(attached) << "the creator never made the log: " << read_file(out);
  std::remove(out.c_str());
  b = ShmLog::attach(region->bytes(), attach_options(ShmMode::kNoncoherent, 2, 300ms)).value();
  const ReplicaId ra = a->register_replica().value();
  const ReplicaId rb = b->register_replica().value();
  ASSERT_EQ(append_n(*a, ra, 0, 1).value_or(~0ull), 0u);
  b->crash_in_append_for_testing(1, /*publish=*/0, /*kill=*/false);
  ASSERT_EQ(append_n(*b, rb, 1, 1).status().code(), StatusCode::kAborted);  // index 1: a hole
  kill(*creator, SIGKILL);
  ASSERT_EQ(waitpid(*creator, nullptr, 0), *creator);

  auto is_sequencer_death = [](const Status& st) {
    return st.code() == StatusCode::kUnavailable && st.message().find("sequencer") != std::string::npos &&
           st.message().find("died") != std::string::npos;
  };
  Result<LogIndex> lt = Status::internal("exec never returned");
  std::vector<LogIndex> seen;
  ASSERT_TRUE(finishes_within(60s, [&] { lt = a->exec(ra, [&](const Entry& e) { seen.push_back(e.index); }); }))
      << "exec hung on a hole nobody can fence any more";
  EXPECT_TRUE(is_sequencer_death(lt.status())) << lt.status().to_string();
  EXPECT_EQ(seen, (std::vector<LogIndex>{0}));
  EXPECT_EQ(a->ltail(ra).value_or(~0ull), 1u) << "ltail stops at the hole";
  const auto start = Clock::now();
  Result<LogIndex> appended = append_n(*a, ra, 2, 1);
  EXPECT_TRUE(is_sequencer_death(appended.status())) << appended.status().to_string();
  Result<ReplicaId> joined = a->register_replica();
  EXPECT_TRUE(is_sequencer_death(joined.status())) << joined.status().to_string();
  Result<PayloadRef> put = a->payload_put(bytes_of(1, 64));
  EXPECT_TRUE(is_sequencer_death(put.status())) << put.status().to_string();
  EXPECT_LT(Clock::now() - start, 10s) << "waited for full_timeout (30 s) instead of noticing the death";
}

// ---- Three processes, one SIGKILLed mid-append -------------------------------------------------

// The KV model of tests/lincheck/models.h, plus "pending" operations (invoked by the dead worker,
// never acknowledged): such an operation may or may not have taken effect, and its output is
// unknown. Only the breadth-first engine can say "may or may not" (a set of states), so the model
// is symbolic; its concrete step (required by the concept) treats pending as applied.
struct KvCrashModel {
  struct Input {
    lincheck::KvOp op;
    uint64_t key;
    uint64_t value;
    bool pending;
  };
  using Output = std::optional<uint64_t>;
  using State = std::optional<uint64_t>;

  static State init() { return std::nullopt; }
  static State apply(const State& s, const Input& in) {
    switch (in.op) {
      case lincheck::KvOp::kPut:
        return in.value;
      case lincheck::KvOp::kRemove:
        return std::nullopt;
      case lincheck::KvOp::kGet:
        return s;
    }
    return s;
  }
  static bool step(State& s, const Input& in, const Output& out) {
    if (!in.pending && out != s) return false;
    s = apply(s, in);
    return true;
  }
  static size_t hash(const State& s) { return s ? std::hash<uint64_t>{}(*s) + 1 : 0; }
  static uint64_t partition(const Input& in) { return in.key; }
  static std::string describe_partition(uint64_t key) { return "key " + std::to_string(key); }
  static std::string describe(const Input& in, const Output& out) {
    const char* name = in.op == lincheck::KvOp::kPut ? "put" : in.op == lincheck::KvOp::kGet ? "get" : "remove";
    std::string s = std::string(name) + "(" + std::to_string(in.key) +
                    (in.op == lincheck::KvOp::kPut ? ", " + std::to_string(in.value) : "") + ")";
    if (in.pending) return s + " pending";
    return s + " -> " + (out ? std::to_string(*out) : std::string("none"));
  }

  // A set of states: sorted, unique; a state is encoded value + 1 (0: absent).
  class Symbolic {
   public:
    using Set = std::vector<uint64_t>;
    Set init() { return {0}; }
    bool empty(const Set& s) const { return s.empty(); }
    size_t size() const { return steps_; }
    Set step(const Set& s, const Input& in, const Output& out) {
      ++steps_;
      Set next;
      for (uint64_t enc : s) {
        const State st = enc == 0 ? State{} : State{enc - 1};
        if (in.pending) next.push_back(enc);  // it did not happen (yet)
        if (!in.pending && out != st) continue;
        const State after = apply(st, in);
        next.push_back(after ? *after + 1 : 0);
      }
      std::sort(next.begin(), next.end());
      next.erase(std::unique(next.begin(), next.end()), next.end());
      return next;
    }
    Set join(const Set& a, const Set& b) {
      Set u;
      std::set_union(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(u));
      return u;
    }

   private:
    size_t steps_ = 0;
  };
};

struct Worker {
  pid_t pid = -1;
  std::string out;
  int status = -1;
};

Result<pid_t> spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& s : args) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
  if (rc != 0) return Status::unavailable("posix_spawn " + args[0] + ": " + std::strerror(rc));
  return pid;
}

// Reaps promptly (a reaped pid is "gone" at once for the fencer), kills everyone at the deadline.
bool wait_all(std::vector<Worker>& workers, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    size_t left = 0;
    for (Worker& w : workers) {
      if (w.status != -1) continue;
      int status = 0;
      if (waitpid(w.pid, &status, WNOHANG) == w.pid) {
        w.status = status;
      } else {
        ++left;
      }
    }
    if (left == 0) return true;
    if (Clock::now() >= deadline) {
      for (Worker& w : workers) {
        if (w.status == -1) {
          kill(w.pid, SIGKILL);
          waitpid(w.pid, &w.status, 0);
        }
      }
      return false;
    }
    std::this_thread::sleep_for(2ms);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

lincheck::KvOp kv_op(unsigned op) {
  return op == 0 ? lincheck::KvOp::kPut : op == 1 ? lincheck::KvOp::kGet : lincheck::KvOp::kRemove;
}

struct Parsed {
  uint64_t digest = 0;
  uint64_t size = 0;
  uint64_t tail = 0;
  lincheck::History<KvCrashModel> done;  // acknowledged
  // Invoked, never acknowledged (the dead worker): thread, op, key, value, invoke.
  std::vector<std::tuple<uint32_t, unsigned, uint64_t, uint64_t, uint64_t>> pending;
};

// A survivor's final output, or the dead worker's stream ("streaming", then i/r lines).
Result<Parsed> parse(const std::string& text) {
  std::istringstream in(text);
  Parsed p;
  std::string word;
  if (!(in >> word)) return Status::data_loss("empty worker output");
  if (word == "digest") {
    std::string w1, w2, w3;
    uint64_t nudges = 0;
    if (!(in >> p.digest >> w1 >> p.size >> w2 >> p.tail >> w3 >> nudges)) return Status::data_loss("bad summary");
    uint32_t thread = 0;
    unsigned op = 0;
    int has = 0;
    uint64_t key = 0, value = 0, result = 0, invoke = 0, response = 0;
    while (in >> thread >> op >> key >> value >> has >> result >> invoke >> response) {
      p.done.push_back({thread, invoke, response, {kv_op(op), key, value, false},
                        has ? std::optional<uint64_t>(result) : std::nullopt});
    }
    if (!in.eof()) return Status::data_loss("unparsable history line");
    return p;
  }
  if (word != "streaming") return Status::data_loss("unexpected worker output: " + text.substr(0, 200));
  std::map<std::pair<uint32_t, uint64_t>, std::tuple<uint32_t, unsigned, uint64_t, uint64_t, uint64_t>> open;
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::istringstream l(line);
    std::string kind;
    uint32_t thread = 0;
    unsigned op = 0;
    uint64_t key = 0, value = 0;
    if (!(l >> kind >> thread >> op >> key >> value)) continue;  // a torn last line cannot occur (one write)
    if (kind == "i") {
      uint64_t invoke = 0;
      if (!(l >> invoke)) return Status::data_loss("bad invoke line: " + line);
      open[{thread, invoke}] = {thread, op, key, value, invoke};
    } else if (kind == "r") {
      int has = 0;
      uint64_t result = 0, invoke = 0, response = 0;
      if (!(l >> has >> result >> invoke >> response)) return Status::data_loss("bad response line: " + line);
      if (open.erase({thread, invoke}) != 1) return Status::data_loss("response without invoke: " + line);
      p.done.push_back({thread, invoke, response, {kv_op(op), key, value, false},
                        has ? std::optional<uint64_t>(result) : std::nullopt});
    } else {
      return Status::data_loss("bad stream line: " + line);
    }
  }
  for (const auto& [k, v] : open) p.pending.push_back(v);
  return p;
}

// One round: 3 workers x 2 threads on a 128-slot log; worker 2 SIGKILLs itself at its |die_at|-th
// append after publishing |publish| entries of that batch (0: right after reserving). Coherent
// mode: the survivors fence it (pid gone). Noncoherent mode: the test's object, the creator, runs
// the sequencer, which fences it; the workers attach as clients 1..3.
void crash_round(uint64_t seed, ShmMode mode) {
  constexpr uint32_t kWorkers = 3;
  constexpr uint32_t kThreads = 2;
  constexpr uint32_t kOps = 3000;
  constexpr uint32_t kKeys = 4;
  std::mt19937_64 rng(seed);
  const uint64_t die_at = 20 + rng() % 400;
  const uint32_t publish = static_cast<uint32_t>(rng() % 2);
  SCOPED_TRACE(::testing::Message() << "die at append " << die_at << ", publishing " << publish);

  LogOptions o;
  o.entry_size = 32;
  o.slot_count = 128;
  o.payload_slots = 4;
  ShmOptions shm;
  shm.cluster_id = kCluster;
  shm.payload_bytes = 4 * 4096;
  shm.mode = mode;
  // Noncoherent: the sequencer's lease. Survivors are never fenced on a slow machine; the dead
  // one is found by its pid.
  shm.lease = 60s;
  auto region = MappedRegion::create(MappedRegion::Kind::kDevShm, ShmLog::region_bytes(o, shm));
  ASSERT_TRUE(region.ok()) << region.status().to_string();
  auto control = MappedRegion::create(MappedRegion::Kind::kDevShm, 4096);
  ASSERT_TRUE(control.ok()) << control.status().to_string();
  auto log = ShmLog::create((*region)->bytes(), o, shm);
  ASSERT_TRUE(log.ok()) << log.status().to_string();

  std::vector<Worker> workers(kWorkers);
  for (uint32_t i = 0; i < kWorkers; ++i) {
    workers[i].out = "/dev/shm/nrx-shm-fence-" + std::to_string(getpid()) + "-" + std::to_string(seed) + "-" +
                     std::to_string(i) + ".out";
    std::vector<std::string> args = {NRX_SHM_LOG_WORKER, "--region", (*region)->path(), "--control",
                                     (*control)->path(), "--out", workers[i].out, "--cluster", std::to_string(kCluster),
                                     "--mode", mode == ShmMode::kNoncoherent ? "noncoherent" : "coherent",
                                     "--workers", std::to_string(kWorkers), "--done-target", std::to_string(kWorkers - 1),
                                     "--index", std::to_string(i), "--threads", std::to_string(kThreads), "--ops",
                                     std::to_string(kOps), "--seed", std::to_string(seed), "--keys",
                                     std::to_string(kKeys), "--full-timeout-ms", "30000", "--barrier-timeout-ms",
                                     "60000",
                                     // Survivors never fence each other on a slow machine: the
                                     // dead one is found by its pid.
                                     "--lease-ms", "60000"};
    if (i == kWorkers - 1) {
      args.insert(args.end(), {"--die-after-appends", std::to_string(die_at), "--die-publish", std::to_string(publish)});
    }
    Result<pid_t> pid = spawn(args);
    ASSERT_TRUE(pid.ok()) << pid.status().to_string();
    workers[i].pid = *pid;
  }
  const auto start = Clock::now();
  const bool in_time = wait_all(workers, 120s);
  ::testing::Test::RecordProperty(
      "workers_ms_seed_" + std::to_string(seed),
      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()));
  std::vector<std::string> texts;
  for (const Worker& w : workers) {
    texts.push_back(read_file(w.out));
    std::remove(w.out.c_str());
  }
  ASSERT_TRUE(in_time) << "workers did not finish within 120 s (a survivor blocked on the dead one?)";

  const Worker& dead = workers[kWorkers - 1];
  ASSERT_TRUE(WIFSIGNALED(dead.status) && WTERMSIG(dead.status) == SIGKILL)
      << "the crash worker did not die: " << dead.status << " " << texts.back().substr(0, 200);
  std::vector<Parsed> parsed;
  for (uint32_t i = 0; i < kWorkers; ++i) {
    if (i < kWorkers - 1) {
      ASSERT_TRUE(WIFEXITED(workers[i].status) && WEXITSTATUS(workers[i].status) == 0)
          << "survivor " << i << ": status " << workers[i].status << ": " << texts[i].substr(0, 300);
    }
    Result<Parsed> p = parse(texts[i]);
    ASSERT_TRUE(p.ok()) << "worker " << i << ": " << p.status().to_string();
    parsed.push_back(std::move(p).value());
  }
  // Survivors: every operation acknowledged and recorded; the same state and tail.
  for (uint32_t i = 0; i + 1 < kWorkers; ++i) {
    EXPECT_EQ(parsed[i].done.size(), size_t{kThreads} * kOps) << "survivor " << i;
    EXPECT_EQ(parsed[i].digest, parsed[0].digest) << "survivor " << i << " diverged";
    EXPECT_EQ(parsed[i].size, parsed[0].size);
    EXPECT_EQ(parsed[i].tail, parsed[0].tail);
  }
  const Parsed& d = parsed.back();
  EXPECT_LE(d.pending.size(), size_t{kThreads});
  ::testing::Test::RecordProperty("dead_acknowledged_seed_" + std::to_string(seed), std::to_string(d.done.size()));
  ::testing::Test::RecordProperty("dead_pending_seed_" + std::to_string(seed), std::to_string(d.pending.size()));
  if (mode == ShmMode::kCoherent) {
    EXPECT_EQ((*log)->fenced_count(), 0u);
    EXPECT_EQ(std::popcount((*log)->active_replicas()), int{kWorkers - 1}) << "the dead replica is still registered";
  } else {
    // The sequencer fenced the dead worker (the survivors could not have finished otherwise), and
    // fences the survivors too once their processes are gone (they exit without leaving).
    const auto deadline = Clock::now() + 20s;
    while (((*log)->active_replicas() != 0 || (*log)->fenced_count() < kWorkers) && Clock::now() < deadline) {
      std::this_thread::sleep_for(2ms);
    }
    EXPECT_EQ((*log)->active_replicas(), 0u);
    EXPECT_EQ((*log)->fenced_count(), kWorkers);
  }

  lincheck::History<KvCrashModel> all;
  uint64_t last = 0;
  for (const Parsed& p : parsed) {
    for (const auto& op : p.done) last = std::max(last, op.response);
    all.insert(all.end(), p.done.begin(), p.done.end());
  }
  for (const auto& [thread, op, key, value, invoke] : d.pending) {
    all.push_back({thread, invoke, std::max(last, invoke) + 1, {kv_op(op), key, value, true}, std::nullopt});
  }
  const lincheck::CheckResult check = lincheck::check(all);
  EXPECT_TRUE(check.ok()) << check.explanation;
}

TEST(ShmFencingTest, ThreeWorkersOneKilledMidAppend) {
  for (uint64_t seed : {11u, 12u, 13u}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    crash_round(seed, ShmMode::kCoherent);
    if (HasFatalFailure()) return;
  }
}

// The same in noncoherent mode: the sequencer (this process) fences the dead worker by its pid,
// fills its unpublished indices with no-ops, and the survivors finish and agree.
TEST(ShmFencingTest, NoncoherentThreeWorkersOneKilledMidAppend) {
  for (uint64_t seed : {21u, 22u, 23u}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    crash_round(seed, ShmMode::kNoncoherent);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace nrx::logs
