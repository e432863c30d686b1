// Tests of the NR-Scheduler's process table (kernel/proc/process_table.h): the semantics and every
// error of each op, malformed log entries (refused, never a crash), PIE load offsets, a comparison
// against a simple sequential model under random op sequences, and the table replicated by NR over
// a ring log with threads on two replicas allocating cores concurrently, checking that no core ever
// has two owners and that the replicas end equal.
#include "kernel/proc/process_table.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernel/nr/replica.h"
#include "logs/ring/ring_log.h"

namespace nrx::proc {
namespace {

using PT = ProcessTable;
using WriteOp = PT::WriteOp;
using Response = PT::Response;

// Sanitizers slow everything ~10x; the interleavings they look for show up with fewer operations.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr uint32_t kOpsDivisor = 5;
#else
constexpr uint32_t kOpsDivisor = 1;
#endif

StatusCode code(const Response& r) { return r.status.code(); }

PT make_table(uint32_t nodes = 2, uint32_t cores_per_node = 4) { return PT::create(nodes, cores_per_node).value(); }

uint64_t create_ok(PT& t, std::string_view name = "p", bool pie = false, uint32_t node = 0) {
  Response r = t.dispatch_mut(PT::create_op(name, 0x1000, pie, 0x10000, node));
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.pid;
}

std::string invariants(const PT& t) {
  std::string why;
  return t.check_invariants(&why) ? "ok" : why;
}

// ---------------------------------------------------------------------------------------------
// Topology

TEST(ProcessTable, CreateValidatesTopology) {
  EXPECT_EQ(PT::create(0, 4).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PT::create(4, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PT::create(2, 513).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PT::create(UINT32_MAX, UINT32_MAX).status().code(), StatusCode::kInvalidArgument);  // no u32 overflow
  PT t = PT::create(32, 32).value();
  EXPECT_EQ(t.core_count(), kMaxCores);
  EXPECT_EQ(t.node_of(31), 0u);
  EXPECT_EQ(t.node_of(32), 1u);
  EXPECT_EQ(t.node_of(1023), 31u);
  for (uint32_t n = 0; n < 32; ++n) EXPECT_EQ(t.dispatch(PT::free_cores_op(n)).free_cores, 32u);
  EXPECT_EQ(invariants(t), "ok");
}

TEST(ProcessTable, WriteOpLayoutIsFixed) {
  static_assert(sizeof(WriteOp) == 64);
  static_assert(std::is_trivially_copyable_v<WriteOp>);
  // The factories leave every unused byte zero, so equal ops are equal bytes.
  const WriteOp a = PT::alloc_core_op(7, 1, 5);
  unsigned char bytes[sizeof(WriteOp)];
  std::memcpy(bytes, &a, sizeof(bytes));
  for (size_t i = 8 + sizeof(WriteOp::Core); i < sizeof(bytes); ++i) EXPECT_EQ(bytes[i], 0) << i;
  for (size_t i = 1; i < 8; ++i) EXPECT_EQ(bytes[i], 0) << i;
}

// ---------------------------------------------------------------------------------------------
// Create

TEST(ProcessTable, CreateAssignsIncreasingPidsAndRecordsTheProcess) {
  PT t = make_table();
  Response r = t.dispatch_mut(PT::create_op("init", 0x401000, false, 0x5000, 1));
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  EXPECT_EQ(r.pid, 1u);
  EXPECT_EQ(r.load_offset, 0u);  // non-PIE
  EXPECT_EQ(create_ok(t), 2u);
  EXPECT_EQ(create_ok(t), 3u);
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t.next_pid(), 4u);

  Response g = t.dispatch(PT::get_op(1));
  ASSERT_TRUE(g.status.ok());
  EXPECT_EQ(g.info.pid, 1u);
  EXPECT_EQ(g.info.name_view(), "init");
  EXPECT_EQ(g.info.entry, 0x401000u);
  EXPECT_EQ(g.info.load_offset, 0u);
  EXPECT_EQ(g.info.image_span, 0x5000u);
  EXPECT_EQ(g.info.home_node, 1u);
  EXPECT_EQ(g.info.cores, 0u);
  EXPECT_EQ(g.info.pie, 0);
  EXPECT_EQ(invariants(t), "ok");
}

TEST(ProcessTable, NamesAreTruncatedAndNulTerminated) {
  PT t = make_table();
  const std::string longname(100, 'x');
  const uint64_t pid = create_ok(t, longname);
  ProcessInfo info = t.dispatch(PT::get_op(pid)).info;
  EXPECT_EQ(info.name_view(), std::string(kNameBytes - 1, 'x'));
  EXPECT_EQ(info.name[kNameBytes - 1], '\0');
  // An embedded NUL ends the name.
  const uint64_t pid2 = create_ok(t, std::string_view("ab\0cd", 5));
  EXPECT_EQ(t.dispatch(PT::get_op(pid2)).info.name_view(), "ab");
}

TEST(ProcessTable, PidsAreNeverReused) {
  PT t = make_table();
  const uint64_t a = create_ok(t);
  ASSERT_TRUE(t.dispatch_mut(PT::exit_op(a, 0)).status.ok());
  const uint64_t b = create_ok(t);
  EXPECT_EQ(b, a + 1);
  EXPECT_EQ(t.dispatch(PT::get_op(a)).status.code(), StatusCode::kNotFound);
  EXPECT_EQ(t.exited(), 1u);
}

TEST(ProcessTable, CreateErrors) {
  PT t = make_table(2, 4);
  const uint64_t before = t.digest();
  auto expect_invalid = [&](const WriteOp& op, const char* what) {
    Response r = t.dispatch_mut(op);
    EXPECT_EQ(code(r), StatusCode::kInvalidArgument) << what << ": " << r.status.to_string();
  };
  expect_invalid(PT::create_op("", 0x1000, false, 0, 0), "empty name");
  expect_invalid(PT::create_op(std::string_view("\0x", 2), 0x1000, false, 0, 0), "name empty at its NUL");
  expect_invalid(PT::create_op("p", 0x1000, false, 0, 2), "home node out of range");
  expect_invalid(PT::create_op("p", 0x1000, false, 0, UINT32_MAX), "home node far out of range");
  expect_invalid(PT::create_op("p", kUserTop, false, 0, 0), "entry in the kernel half");
  expect_invalid(PT::create_op("p", kPieStride, true, 0x1000, 0), "PIE entry beyond its slot");
  expect_invalid(PT::create_op("p", 0x1000, true, kPieStride + 1, 0), "PIE image larger than the stride");
  EXPECT_EQ(t.digest(), before);  // nothing changed, not even next_pid
  EXPECT_EQ(t.next_pid(), 1u);
  // The largest PIE that fits, and a huge non-PIE span (no offset to compute) are fine.
  EXPECT_TRUE(t.dispatch_mut(PT::create_op("p", 0x1000, true, kPieStride, 0)).status.ok());
  EXPECT_TRUE(t.dispatch_mut(PT::create_op("p", 0x1000, false, kPieStride * 4, 1)).status.ok());
}

TEST(ProcessTable, CreateRefusesMoreThanMaxProcesses) {
  PT t = make_table(1, 1);
  for (uint32_t i = 0; i < kMaxProcesses; ++i) {
    ASSERT_TRUE(t.dispatch_mut(PT::create_op("p", 0, i % 2 == 0, 0x1000, 0)).status.ok()) << i;
  }
  EXPECT_EQ(t.size(), kMaxProcesses);
  const uint64_t before = t.digest();
  EXPECT_EQ(code(t.dispatch_mut(PT::create_op("q", 0, false, 0, 0))), StatusCode::kResourceExhausted);
  EXPECT_EQ(code(t.dispatch_mut(PT::create_op("q", 0, true, 0, 0))), StatusCode::kResourceExhausted);
  EXPECT_EQ(t.digest(), before);
  EXPECT_EQ(invariants(t), "ok");
  ASSERT_TRUE(t.dispatch_mut(PT::exit_op(17, 0)).status.ok());
  EXPECT_EQ(t.dispatch_mut(PT::create_op("q", 0, true, 0, 0)).pid, kMaxProcesses + 1);
  EXPECT_EQ(invariants(t), "ok");
}

// ---------------------------------------------------------------------------------------------
// PIE load offsets

TEST(ProcessTable, PieOffsetsAreDeterministicAndDistinct) {
  PT a = make_table();
  PT b = make_table();
  std::set<uint64_t> offsets;
  for (int i = 0; i < 50; ++i) {
    const WriteOp op = PT::create_op("pie", 0x1000, true, 0x20000, 0);
    Response ra = a.dispatch_mut(op);
    Response rb = b.dispatch_mut(op);
    ASSERT_TRUE(ra.status.ok());
    EXPECT_EQ(ra.load_offset, rb.load_offset);  // every replica computes the same offset
    EXPECT_EQ(ra.load_offset, kPieBase + (ra.pid % kMaxProcesses) * kPieStride);
    EXPECT_EQ(ra.load_offset % (uint64_t{2} << 20), 0u);  // 2 MiB aligned
    EXPECT_LT(ra.load_offset + kPieStride, kUserTop);
    EXPECT_TRUE(offsets.insert(ra.load_offset).second);
  }
  EXPECT_EQ(a.digest(), b.digest());
}

TEST(ProcessTable, PieSlotCollisionAfterPidWrapProbesToTheNextFreeSlot) {
  PT t = make_table(1, 1);
  const Response first = t.dispatch_mut(PT::create_op("old", 0x1000, true, 0x1000, 0));
  ASSERT_EQ(first.pid, 1u);
  EXPECT_EQ(first.load_offset, kPieBase + 1 * kPieStride);
  const Response second = t.dispatch_mut(PT::create_op("old2", 0x1000, true, 0x1000, 0));
  ASSERT_EQ(second.pid, 2u);
  // Burn pids up to 4096 with short-lived non-PIEs.
  while (t.next_pid() <= kMaxProcesses) {
    const uint64_t p = create_ok(t);
    ASSERT_TRUE(t.dispatch_mut(PT::exit_op(p, 0)).status.ok());
  }
  // pid 4097 prefers slot 1 (pid 1 holds it) and then slot 2 (pid 2): it gets slot 3.
  const Response wrapped = t.dispatch_mut(PT::create_op("new", 0x1000, true, 0x1000, 0));
  ASSERT_EQ(wrapped.pid, kMaxProcesses + 1);
  EXPECT_EQ(wrapped.load_offset, kPieBase + 3 * kPieStride);
  // Once pid 1 exits its slot is free again: pid 4098 prefers slot 2 (held), then 3 (held), 4.
  ASSERT_TRUE(t.dispatch_mut(PT::exit_op(1, 0)).status.ok());
  EXPECT_EQ(t.dispatch_mut(PT::create_op("n2", 0x1000, true, 0x1000, 0)).load_offset, kPieBase + 4 * kPieStride);
  EXPECT_EQ(invariants(t), "ok");
}

// ---------------------------------------------------------------------------------------------
// Cores

TEST(ProcessTable, AllocAnyCoreTakesTheLowestFreeCoreOnTheNode) {
  PT t = make_table(2, 4);
  const uint64_t p = create_ok(t);
  const uint64_t q = create_ok(t);
  EXPECT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 1)).core, 4u);
  EXPECT_EQ(t.dispatch_mut(PT::alloc_core_op(q, 1)).core, 5u);
  EXPECT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 1)).core, 6u);
  EXPECT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 0)).core, 0u);
  ASSERT_TRUE(t.dispatch_mut(PT::release_core_op(q, 5)).status.ok());
  EXPECT_EQ(t.dispatch_mut(PT::alloc_core_op(q, 1)).core, 5u);
  EXPECT_EQ(t.dispatch(PT::free_cores_op(1)).free_cores, 1u);
  EXPECT_EQ(t.dispatch(PT::free_cores_op(0)).free_cores, 3u);
  EXPECT_EQ(t.dispatch(PT::get_op(p)).info.cores, 3u);
  EXPECT_EQ(t.dispatch(PT::cores_of_op(p)).cores, (std::vector<uint32_t>{0, 4, 6}));
  EXPECT_EQ(t.dispatch(PT::core_owner_op(5)).pid, q);
  EXPECT_EQ(t.dispatch(PT::core_owner_op(7)).pid, 0u);
  EXPECT_EQ(invariants(t), "ok");
}

TEST(ProcessTable, AllocNamedCore) {
  PT t = make_table(2, 4);
  const uint64_t p = create_ok(t);
  Response r = t.dispatch_mut(PT::alloc_core_op(p, 1, 6));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.core, 6u);
  EXPECT_EQ(t.dispatch(PT::core_owner_op(6)).pid, p);
  // The same core again: the process already has it.
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, 1, 6))), StatusCode::kAlreadyExists);
  EXPECT_EQ(t.dispatch(PT::get_op(p)).info.cores, 1u);
}

TEST(ProcessTable, OverSubscriptionIsRefused) {
  PT t = make_table(2, 2);
  const uint64_t p = create_ok(t);
  const uint64_t q = create_ok(t);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 0, 1)).core, 1u);
  const uint64_t before = t.digest();
  // Another process's core is never shared.
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(q, 0, 1))), StatusCode::kResourceExhausted);
  EXPECT_EQ(t.digest(), before);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(q, 0)).core, 0u);
  // Node 0 is full now.
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(q, 0))), StatusCode::kResourceExhausted);
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, 0))), StatusCode::kResourceExhausted);
  EXPECT_EQ(t.dispatch(PT::free_cores_op(0)).free_cores, 0u);
  EXPECT_EQ(t.dispatch(PT::core_owner_op(1)).pid, p);
  EXPECT_EQ(t.dispatch(PT::core_owner_op(0)).pid, q);
  // Node 1 still has cores.
  EXPECT_EQ(t.dispatch_mut(PT::alloc_core_op(q, 1)).core, 2u);
  EXPECT_EQ(invariants(t), "ok");
}

TEST(ProcessTable, AllocCoreErrors) {
  PT t = make_table(2, 4);
  const uint64_t p = create_ok(t);
  const uint64_t before = t.digest();
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(0, 0))), StatusCode::kNotFound);  // pid 0 never exists
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(99, 0))), StatusCode::kNotFound);
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(99, 0, 2))), StatusCode::kNotFound);
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, 2))), StatusCode::kInvalidArgument);       // node
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, UINT32_MAX))), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, 1, 8))), StatusCode::kInvalidArgument);    // core
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, 0, 5))), StatusCode::kInvalidArgument);    // not on node 0
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, 1, 3))), StatusCode::kInvalidArgument);    // not on node 1
  EXPECT_EQ(t.digest(), before);
}

TEST(ProcessTable, ReleaseCore) {
  PT t = make_table(2, 4);
  const uint64_t p = create_ok(t);
  const uint64_t q = create_ok(t);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 0)).core, 0u);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(q, 0)).core, 1u);
  const uint64_t before = t.digest();
  EXPECT_EQ(code(t.dispatch_mut(PT::release_core_op(p, 1))), StatusCode::kFailedPrecondition);  // q's
  EXPECT_EQ(code(t.dispatch_mut(PT::release_core_op(p, 2))), StatusCode::kFailedPrecondition);  // free
  EXPECT_EQ(code(t.dispatch_mut(PT::release_core_op(99, 0))), StatusCode::kNotFound);
  EXPECT_EQ(code(t.dispatch_mut(PT::release_core_op(p, 8))), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(t.dispatch_mut(PT::release_core_op(p, kAnyCore))), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.digest(), before);
  Response r = t.dispatch_mut(PT::release_core_op(p, 0));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.core, 0u);
  EXPECT_EQ(t.dispatch(PT::core_owner_op(0)).pid, 0u);
  EXPECT_EQ(t.dispatch(PT::get_op(p)).info.cores, 0u);
  EXPECT_EQ(code(t.dispatch_mut(PT::release_core_op(p, 0))), StatusCode::kFailedPrecondition);  // twice
  EXPECT_EQ(t.dispatch(PT::free_cores_op(0)).free_cores, 3u);
  EXPECT_EQ(invariants(t), "ok");
}

TEST(ProcessTable, ExitFreesEveryCoreAndReportsThem) {
  PT t = make_table(2, 4);
  const uint64_t p = create_ok(t, "victim", true);
  const uint64_t q = create_ok(t);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 1, 7)).core, 7u);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(q, 0)).core, 0u);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 0)).core, 1u);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 1)).core, 4u);
  Response r = t.dispatch_mut(PT::exit_op(p, -3));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.cores, (std::vector<uint32_t>{1, 4, 7}));
  EXPECT_EQ(r.exit_status, -3);
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.exited(), 1u);
  for (uint32_t c : {1u, 4u, 7u}) EXPECT_EQ(t.dispatch(PT::core_owner_op(c)).pid, 0u);
  EXPECT_EQ(t.dispatch(PT::core_owner_op(0)).pid, q);
  EXPECT_EQ(t.dispatch(PT::free_cores_op(0)).free_cores, 3u);
  EXPECT_EQ(t.dispatch(PT::free_cores_op(1)).free_cores, 4u);
  // Everything about p is gone.
  const uint64_t before = t.digest();
  EXPECT_EQ(code(t.dispatch_mut(PT::exit_op(p, 0))), StatusCode::kNotFound);
  EXPECT_EQ(code(t.dispatch_mut(PT::alloc_core_op(p, 0))), StatusCode::kNotFound);
  EXPECT_EQ(code(t.dispatch_mut(PT::release_core_op(p, 1))), StatusCode::kNotFound);
  EXPECT_EQ(code(t.dispatch(PT::get_op(p))), StatusCode::kNotFound);
  EXPECT_EQ(code(t.dispatch(PT::cores_of_op(p))), StatusCode::kNotFound);
  EXPECT_EQ(t.digest(), before);
  // An exit of a process without cores lists none.
  Response rq = t.dispatch_mut(PT::exit_op(create_ok(t), 9));
  EXPECT_TRUE(rq.status.ok());
  EXPECT_TRUE(rq.cores.empty());
  EXPECT_EQ(rq.exit_status, 9);
  EXPECT_EQ(invariants(t), "ok");
}

// ---------------------------------------------------------------------------------------------
// Reads

TEST(ProcessTable, ReadOps) {
  PT t = make_table(2, 4);
  EXPECT_TRUE(t.dispatch(PT::list_op()).processes.empty());
  const uint64_t a = create_ok(t, "a");
  const uint64_t b = create_ok(t, "b", true, 1);
  const uint64_t c = create_ok(t, "c");
  ASSERT_TRUE(t.dispatch_mut(PT::exit_op(b, 0)).status.ok());
  Response l = t.dispatch(PT::list_op());
  ASSERT_TRUE(l.status.ok());
  ASSERT_EQ(l.processes.size(), 2u);
  EXPECT_EQ(l.processes[0].pid, a);
  EXPECT_EQ(l.processes[1].pid, c);
  EXPECT_EQ(l.processes[1].name_view(), "c");
  EXPECT_TRUE(t.dispatch(PT::cores_of_op(a)).cores.empty());
  EXPECT_EQ(code(t.dispatch(PT::core_owner_op(8))), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(t.dispatch(PT::free_cores_op(2))), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(t.dispatch(PT::get_op(0))), StatusCode::kNotFound);
  PT::ReadOp bad;
  bad.kind = static_cast<PT::ReadOp::Kind>(77);
  EXPECT_EQ(code(t.dispatch(bad)), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Malformed ops from the log

// |op| with byte |at| set to |value|.
WriteOp poke(WriteOp op, size_t at, unsigned char value) {
  unsigned char bytes[sizeof(WriteOp)];
  std::memcpy(bytes, &op, sizeof(bytes));
  bytes[at] = value;
  std::memcpy(&op, bytes, sizeof(bytes));
  return op;
}

TEST(ProcessTable, MalformedOpsAreRefusedAndChangeNothing) {
  PT t = make_table(2, 4);
  const uint64_t p = create_ok(t, "p", true);
  ASSERT_EQ(t.dispatch_mut(PT::alloc_core_op(p, 0)).core, 0u);
  const uint64_t before = t.digest();
  auto expect_invalid = [&](const WriteOp& op, const std::string& what) {
    Response r = t.dispatch_mut(op);
    EXPECT_EQ(code(r), StatusCode::kInvalidArgument) << what << ": " << r.status.to_string();
    EXPECT_EQ(t.digest(), before) << what;
  };
  for (unsigned k : {0u, 5u, 6u, 128u, 255u}) {
    expect_invalid(poke(PT::exit_op(p, 0), 0, static_cast<unsigned char>(k)), "unknown kind " + std::to_string(k));
  }
  // Header reserved bytes, for every kind.
  const WriteOp valid[] = {PT::create_op("x", 0x1000, false, 0, 0), PT::alloc_core_op(p, 0),
                           PT::release_core_op(p, 0), PT::exit_op(p, 0)};
  for (const WriteOp& op : valid) {
    for (size_t at = 1; at < 8; ++at) expect_invalid(poke(op, at, 1), "header reserved byte " + std::to_string(at));
  }
  // Bytes past a Core / Exit argument block.
  for (size_t at = 8 + 16; at < sizeof(WriteOp); ++at) {
    expect_invalid(poke(PT::alloc_core_op(p, 0), at, 0x80), "alloc tail byte " + std::to_string(at));
    expect_invalid(poke(PT::release_core_op(p, 0), at, 0x80), "release tail byte " + std::to_string(at));
    expect_invalid(poke(PT::exit_op(p, 0), at, 0x80), "exit tail byte " + std::to_string(at));
  }
  // Exit::reserved, ReleaseCore's node field.
  expect_invalid(poke(PT::exit_op(p, 0), 8 + offsetof(WriteOp::Exit, reserved), 1), "exit reserved");
  expect_invalid(poke(PT::release_core_op(p, 0), 8 + offsetof(WriteOp::Core, node), 1), "release node");
  // Create: reserved, pie flag, name without NUL, bytes after the NUL.
  const WriteOp create = PT::create_op("x", 0x1000, false, 0, 0);
  for (size_t i = 0; i < 3; ++i) {
    expect_invalid(poke(create, 8 + offsetof(WriteOp::Create, reserved) + i, 1), "create reserved");
  }
  expect_invalid(poke(create, 8 + offsetof(WriteOp::Create, pie), 2), "pie 2");
  WriteOp no_nul = create;
  std::memset(no_nul.args.create.name, 'a', kNameBytes);
  expect_invalid(no_nul, "name without NUL");
  expect_invalid(poke(create, 8 + 5, 'z'), "garbage after the name's NUL");
  EXPECT_EQ(t.next_pid(), 2u);
  EXPECT_EQ(invariants(t), "ok");
}

// Ops with random fields, a third of them with a few random bytes overwritten, never crash the
// table, keep its invariants, and two tables fed the same bytes stay equal.
TEST(ProcessTable, CorruptedOpsNeverBreakTheTable) {
  PT a = make_table(2, 3);
  PT b = make_table(2, 3);
  std::mt19937_64 rng(0xF00D);
  uint64_t accepted = 0;
  uint64_t corrupted_accepted = 0;
  const uint32_t ops = 200000 / kOpsDivisor;
  for (uint32_t i = 0; i < ops; ++i) {
    const uint64_t pid = 1 + rng() % (a.next_pid() + 1);
    const auto node = static_cast<uint32_t>(rng() % 3);  // 2: out of range
    const uint32_t core = rng() % 2 == 0 ? kAnyCore : static_cast<uint32_t>(rng() % 7);
    WriteOp op;
    switch (rng() % 4) {
      case 0: op = PT::create_op("n", rng() % 4096, rng() % 2 == 0, rng() % 4096, node); break;
      case 1: op = PT::alloc_core_op(pid, node, core); break;
      case 2: op = PT::release_core_op(pid, static_cast<uint32_t>(rng() % 7)); break;
      default: op = PT::exit_op(pid, static_cast<int32_t>(rng())); break;
    }
    const bool corrupt = rng() % 3 == 0;
    if (corrupt) {
      for (uint64_t k = 1 + rng() % 3; k > 0; --k) op = poke(op, rng() % sizeof(WriteOp), static_cast<unsigned char>(rng()));
    }
    Response ra = a.dispatch_mut(op);
    Response rb = b.dispatch_mut(op);
    ASSERT_EQ(ra.status.code(), rb.status.code());
    accepted += ra.status.ok();
    corrupted_accepted += corrupt && ra.status.ok();
    if (i % 997 == 0) {
      ASSERT_EQ(invariants(a), "ok") << "after op " << i;
    }
  }
  EXPECT_EQ(a.digest(), b.digest());
  EXPECT_EQ(invariants(a), "ok");
  EXPECT_GT(accepted, ops / 10);          // real work got through ...
  EXPECT_GT(corrupted_accepted, 0u);      // ... also ops whose corruption hit a field, not a rule
  EXPECT_GT(a.next_pid(), 1u);
}

TEST(ProcessTable, DigestTracksState) {
  PT a = make_table();
  PT b = make_table();
  EXPECT_EQ(a.digest(), b.digest());
  EXPECT_NE(a.digest(), make_table(4, 2).digest());  // topology counts
  const uint64_t p = create_ok(a);
  EXPECT_NE(a.digest(), b.digest());
  ASSERT_EQ(create_ok(b), p);
  EXPECT_EQ(a.digest(), b.digest());
  ASSERT_TRUE(a.dispatch_mut(PT::alloc_core_op(p, 0, 1)).status.ok());
  ASSERT_TRUE(b.dispatch_mut(PT::alloc_core_op(p, 0, 2)).status.ok());
  EXPECT_NE(a.digest(), b.digest());  // same counts, another core
}

// ---------------------------------------------------------------------------------------------
// Sequential model comparison

// A straightforward model of the documented semantics, written independently of the table.
class Model {
 public:
  Model(uint32_t nodes, uint32_t cpn) : nodes_(nodes), cpn_(cpn) {}

  struct Proc {
    ProcessInfo info;
    std::set<uint32_t> cores;
  };

  uint32_t cores() const { return nodes_ * cpn_; }
  const std::map<uint64_t, Proc>& procs() const { return procs_; }
  uint64_t next_pid() const { return next_pid_; }

  Response create(const std::string& name, uint64_t entry, bool pie, uint64_t span, uint32_t node) {
    Response r;
    const std::string n = name.substr(0, std::min(name.find('\0'), size_t{kNameBytes - 1}));
    if (n.empty() || node >= nodes_ || entry >= kUserTop || (pie && (entry >= kPieStride || span > kPieStride))) {
      r.status = Status::invalid_argument("");
      return r;
    }
    if (procs_.size() >= kMaxProcesses) {
      r.status = Status::resource_exhausted("");
      return r;
    }
    Proc p;
    p.info.pid = next_pid_++;
    std::memcpy(p.info.name, n.data(), n.size());
    p.info.entry = entry;
    p.info.image_span = span;
    p.info.home_node = node;
    p.info.pie = pie;
    if (pie) {
      uint64_t slot = p.info.pid % kMaxProcesses;
      while (slots_.count(slot) != 0) slot = (slot + 1) % kMaxProcesses;
      slots_.insert(slot);
      p.info.load_offset = kPieBase + slot * kPieStride;
    }
    r.pid = p.info.pid;
    r.load_offset = p.info.load_offset;
    procs_[r.pid] = p;
    return r;
  }

  Response alloc(uint64_t pid, uint32_t node, uint32_t core) {
    Response r;
    if (node >= nodes_ || (core != kAnyCore && (core >= cores() || core / cpn_ != node))) {
      r.status = Status::invalid_argument("");
      return r;
    }
    auto it = procs_.find(pid);
    if (it == procs_.end()) {
      r.status = Status::not_found("");
      return r;
    }
    if (core == kAnyCore) {
      for (uint32_t c = node * cpn_; c < (node + 1) * cpn_; ++c) {
        if (owner_.count(c) == 0) {
          core = c;
          break;
        }
      }
      if (core == kAnyCore) {
        r.status = Status::resource_exhausted("");
        return r;
      }
    } else if (owner_.count(core) != 0) {
      r.status = owner_[core] == pid ? Status::already_exists("") : Status::resource_exhausted("");
      return r;
    }
    owner_[core] = pid;
    it->second.cores.insert(core);
    it->second.info.cores++;
    r.core = core;
    return r;
  }

  Response release(uint64_t pid, uint32_t core) {
    Response r;
    if (core >= cores()) {
      r.status = Status::invalid_argument("");
      return r;
    }
    auto it = procs_.find(pid);
    if (it == procs_.end()) {
      r.status = Status::not_found("");
      return r;
    }
    if (it->second.cores.count(core) == 0) {
      r.status = Status::failed_precondition("");
      return r;
    }
    it->second.cores.erase(core);
    it->second.info.cores--;
    owner_.erase(core);
    return r;
  }

  Response exit(uint64_t pid, int32_t status) {
    Response r;
    auto it = procs_.find(pid);
    if (it == procs_.end()) {
      r.status = Status::not_found("");
      return r;
    }
    r.cores.assign(it->second.cores.begin(), it->second.cores.end());
    r.exit_status = status;
    for (uint32_t c : it->second.cores) owner_.erase(c);
    if (it->second.info.pie) slots_.erase((it->second.info.load_offset - kPieBase) / kPieStride);
    procs_.erase(it);
    return r;
  }

  Response get(uint64_t pid) const {
    Response r;
    auto it = procs_.find(pid);
    if (it == procs_.end()) r.status = Status::not_found("");
    else r.info = it->second.info;
    return r;
  }
  Response list() const {
    Response r;
    for (const auto& [pid, p] : procs_) r.processes.push_back(p.info);
    return r;
  }
  Response owner(uint32_t core) const {
    Response r;
    if (core >= cores()) r.status = Status::invalid_argument("");
    else r.pid = owner_.count(core) != 0 ? owner_.at(core) : 0;
    return r;
  }
  Response cores_of(uint64_t pid) const {
    Response r;
    auto it = procs_.find(pid);
    if (it == procs_.end()) r.status = Status::not_found("");
    else r.cores.assign(it->second.cores.begin(), it->second.cores.end());
    return r;
  }
  Response free_cores(uint32_t node) const {
    Response r;
    if (node >= nodes_) {
      r.status = Status::invalid_argument("");
      return r;
    }
    for (uint32_t c = node * cpn_; c < (node + 1) * cpn_; ++c) r.free_cores += owner_.count(c) == 0;
    return r;
  }

 private:
  uint32_t nodes_, cpn_;
  uint64_t next_pid_ = 1;
  std::map<uint64_t, Proc> procs_;
  std::map<uint32_t, uint64_t> owner_;
  std::set<uint64_t> slots_;
};

enum class OpKind { kCreate, kAlloc, kRelease, kExit, kGet, kList, kOwner, kCoresOf, kFree };

// Compares the fields |kind| defines (and the status code; messages are the table's own).
void expect_same(OpKind kind, const Response& got, const Response& want, uint32_t step) {
  ASSERT_EQ(got.status.code(), want.status.code()) << "step " << step << ": " << got.status.to_string();
  if (!want.status.ok()) return;
  switch (kind) {
    case OpKind::kCreate:
      EXPECT_EQ(got.pid, want.pid) << "step " << step;
      EXPECT_EQ(got.load_offset, want.load_offset) << "step " << step;
      break;
    case OpKind::kAlloc: EXPECT_EQ(got.core, want.core) << "step " << step; break;
    case OpKind::kRelease: break;
    case OpKind::kExit:
      EXPECT_EQ(got.cores, want.cores) << "step " << step;
      EXPECT_EQ(got.exit_status, want.exit_status) << "step " << step;
      break;
    case OpKind::kGet: EXPECT_EQ(got.info, want.info) << "step " << step; break;
    case OpKind::kList: EXPECT_EQ(got.processes, want.processes) << "step " << step; break;
    case OpKind::kOwner: EXPECT_EQ(got.pid, want.pid) << "step " << step; break;
    case OpKind::kCoresOf: EXPECT_EQ(got.cores, want.cores) << "step " << step; break;
    case OpKind::kFree: EXPECT_EQ(got.free_cores, want.free_cores) << "step " << step; break;
  }
}

struct ModelConfig {
  uint32_t nodes;
  uint32_t cores_per_node;
  uint64_t seed;
  uint32_t ops;
};

void PrintTo(const ModelConfig& c, std::ostream* os) {
  *os << c.nodes << "x" << c.cores_per_node << " seed " << c.seed << ", " << c.ops << " ops";
}

class ProcessTableModel : public ::testing::TestWithParam<ModelConfig> {};

TEST_P(ProcessTableModel, EveryResponseMatchesTheModel) {
  const ModelConfig c = GetParam();
  PT t = make_table(c.nodes, c.cores_per_node);
  Model m(c.nodes, c.cores_per_node);
  std::mt19937_64 rng(c.seed);
  const uint32_t cores = c.nodes * c.cores_per_node;
  std::vector<uint64_t> live;  // refreshed from the model as needed
  auto pick_pid = [&]() -> uint64_t {
    const uint32_t x = rng() % 10;
    if (x < 8 && !m.procs().empty()) {
      // A live pid (std::map has no random access: walk from a random key).
      auto it = m.procs().lower_bound(rng() % m.next_pid());
      if (it == m.procs().end()) it = m.procs().begin();
      return it->first;
    }
    if (x < 9) return rng() % (m.next_pid() + 2);  // often dead or never created
    return rng();
  };
  auto pick_node = [&]() -> uint32_t {
    const uint32_t x = rng() % 20;
    if (x == 0) return c.nodes;
    if (x == 1) return UINT32_MAX;
    return rng() % c.nodes;
  };
  auto pick_core = [&]() -> uint32_t {
    const uint32_t x = rng() % 20;
    if (x == 0) return cores;
    if (x == 1) return kAnyCore - 1;
    return rng() % cores;
  };
  const uint32_t ops = c.ops;  // single-threaded and fast even under sanitizers: no divisor
  for (uint32_t step = 0; step < ops; ++step) {
    const uint32_t x = rng() % 100;
    if (x < 20) {
      std::string name(rng() % 40, 'a' + static_cast<char>(rng() % 26));
      if (rng() % 30 == 0) name.clear();
      const bool pie = rng() % 2 == 0;
      uint64_t entry = rng() % (uint64_t{1} << 20);
      if (rng() % 30 == 0) entry = kPieStride + rng() % 1000;
      if (rng() % 30 == 0) entry = kUserTop + rng() % 1000;
      uint64_t span = rng() % (uint64_t{1} << 24);
      if (rng() % 20 == 0) span = kPieStride + rng() % 2 - 1 + rng() % 2;  // around the limit
      const uint32_t node = rng() % 20 == 0 ? c.nodes : static_cast<uint32_t>(rng() % c.nodes);
      expect_same(OpKind::kCreate, t.dispatch_mut(PT::create_op(name, entry, pie, span, node)),
                  m.create(name, entry, pie, span, node), step);
    } else if (x < 50) {
      const uint64_t pid = pick_pid();
      uint32_t node = pick_node();
      uint32_t core = kAnyCore;
      if (rng() % 2 == 0) {
        core = pick_core();
        if (core < cores && rng() % 10 != 0) node = core / c.cores_per_node;
      }
      expect_same(OpKind::kAlloc, t.dispatch_mut(PT::alloc_core_op(pid, node, core)), m.alloc(pid, node, core), step);
    } else if (x < 70) {
      const uint64_t pid = pick_pid();
      uint32_t core = pick_core();
      // Usually one of its own cores, so releases succeed often.
      auto it = m.procs().find(pid);
      if (it != m.procs().end() && !it->second.cores.empty() && rng() % 4 != 0) {
        auto ci = it->second.cores.begin();
        std::advance(ci, rng() % it->second.cores.size());
        core = *ci;
      }
      expect_same(OpKind::kRelease, t.dispatch_mut(PT::release_core_op(pid, core)), m.release(pid, core), step);
    } else if (x < 80) {
      const uint64_t pid = pick_pid();
      const auto status = static_cast<int32_t>(rng());
      expect_same(OpKind::kExit, t.dispatch_mut(PT::exit_op(pid, status)), m.exit(pid, status), step);
    } else if (x < 85) {
      const uint64_t pid = pick_pid();
      expect_same(OpKind::kGet, t.dispatch(PT::get_op(pid)), m.get(pid), step);
    } else if (x < 86) {
      expect_same(OpKind::kList, t.dispatch(PT::list_op()), m.list(), step);
    } else if (x < 92) {
      const uint32_t core = pick_core();
      expect_same(OpKind::kOwner, t.dispatch(PT::core_owner_op(core)), m.owner(core), step);
    } else if (x < 96) {
      const uint64_t pid = pick_pid();
      expect_same(OpKind::kCoresOf, t.dispatch(PT::cores_of_op(pid)), m.cores_of(pid), step);
    } else {
      const uint32_t node = pick_node();
      expect_same(OpKind::kFree, t.dispatch(PT::free_cores_op(node)), m.free_cores(node), step);
    }
    if (::testing::Test::HasFatalFailure()) return;
    if (step % 4096 == 0) {
      ASSERT_EQ(invariants(t), "ok") << "step " << step;
    }
  }
  EXPECT_EQ(invariants(t), "ok");
  EXPECT_EQ(t.size(), m.procs().size());
  expect_same(OpKind::kList, t.dispatch(PT::list_op()), m.list(), ops);
  // The run reached the interesting places: pids past the PIE slot wrap, and full nodes.
  if (ops >= 30000) {
    EXPECT_GT(t.next_pid(), kMaxProcesses);
  }
}

// Table of configurations: (nodes, cores per node, seed, ops).
INSTANTIATE_TEST_SUITE_P(Configs, ProcessTableModel,
                         ::testing::Values(ModelConfig{2, 4, 1, 40000},    // small: nodes fill up often
                                           ModelConfig{1, 1, 2, 30000},    // one core: all contention
                                           ModelConfig{3, 5, 3, 40000},    // odd geometry
                                           ModelConfig{16, 64, 4, 30000}),  // the largest table
                         [](const ::testing::TestParamInfo<ModelConfig>& param_info) {
                           const ModelConfig& c = param_info.param;
                           return std::to_string(c.nodes) + "x" + std::to_string(c.cores_per_node) + "_seed" +
                                  std::to_string(c.seed);
                         });

// ---------------------------------------------------------------------------------------------
// Replicated by NR

using Group = nr::ReplicaGroup<PT, logs::RingLog>;
using Rep = nr::Replica<PT, logs::RingLog>;

// Threads on two replicas create processes, allocate, release and exit concurrently. Each thread
// manages only its own processes, and keeps a shared record |held| (core -> pid) that it sets
// after a successful allocation and clears BEFORE the release or exit that frees the core: while
// the table says core c belongs to p, held[c] == p. So if the table ever handed an owned core to a
// second process, that process's thread would find held[c] != 0.
TEST(ProcessTableReplicated, ConcurrentCoreAllocationNeverDoubleBooksAndReplicasAgree) {
  constexpr uint32_t kNodes = 2;
  constexpr uint32_t kCoresPerNode = 4;
  constexpr uint32_t kCores = kNodes * kCoresPerNode;
  constexpr uint32_t kReplicas = 2;
  constexpr uint32_t kThreadsPerReplica = 2;
  constexpr uint32_t kThreads = kReplicas * kThreadsPerReplica;
  const uint32_t ops = 20000 / kOpsDivisor;

  logs::LogOptions o;
  o.entry_size = sizeof(WriteOp);
  o.slot_count = 256;  // small: the log wraps many times and fills, exercising the lagging hook
  auto group = Group::create(o, &logs::RingLog::create).value();
  std::vector<Rep*> replicas;
  for (uint32_t i = 0; i < kReplicas; ++i) replicas.push_back(group->add_replica(make_table(kNodes, kCoresPerNode)).value());

  std::unique_ptr<std::atomic<uint64_t>[]> held(new std::atomic<uint64_t>[kCores]);
  for (uint32_t c = 0; c < kCores; ++c) held[c].store(0, std::memory_order_relaxed);
  std::atomic<uint64_t> double_booked{0};
  std::atomic<uint64_t> allocs{0};
  std::atomic<uint64_t> refused{0};
  std::vector<std::map<uint64_t, std::set<uint32_t>>> mine(kThreads);  // each thread's processes
  std::atomic<bool> go{false};
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      Rep& rep = *replicas[t % kReplicas];
      const nr::ThreadToken token = rep.register_thread().value();
      std::mt19937_64 rng(0xACE + t);
      auto& procs = mine[t];
      uint64_t last_pid = 0;
      auto mut = [&](const WriteOp& op) {
        auto r = rep.execute_mut(op, token);
        EXPECT_TRUE(r.ok()) << r.status().to_string();
        return r.ok() ? std::move(*r) : Response{};
      };
      auto pick = [&]() {
        auto it = procs.begin();
        std::advance(it, rng() % procs.size());
        return it;
      };
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (uint32_t i = 0; i < ops; ++i) {
        const uint32_t x = rng() % 100;
        if (procs.empty() || (x < 10 && procs.size() < 4)) {
          const bool pie = rng() % 2 == 0;
          Response r = mut(PT::create_op("t" + std::to_string(t), 0x1000, pie, 0x100000, t % kNodes));
          ASSERT_TRUE(r.status.ok()) << r.status.to_string();
          EXPECT_GT(r.pid, last_pid);  // one log order: a thread's later create gets a larger pid
          last_pid = r.pid;
          EXPECT_EQ(r.load_offset != 0, pie);
          procs[r.pid];
        } else if (x < 55) {
          auto it = pick();
          const uint64_t pid = it->first;
          const uint32_t node = rng() % kNodes;
          const uint32_t want = rng() % 2 == 0 ? kAnyCore : node * kCoresPerNode + rng() % kCoresPerNode;
          Response r = mut(PT::alloc_core_op(pid, node, want));
          if (r.status.ok()) {
            allocs.fetch_add(1, std::memory_order_relaxed);
            EXPECT_TRUE(want == kAnyCore || r.core == want);
            EXPECT_EQ(r.core / kCoresPerNode, node);
            uint64_t expected = 0;
            if (!held[r.core].compare_exchange_strong(expected, pid, std::memory_order_acq_rel)) {
              double_booked.fetch_add(1, std::memory_order_relaxed);
              ADD_FAILURE() << "core " << r.core << " given to pid " << pid << " while pid " << expected << " holds it";
            }
            EXPECT_TRUE(it->second.insert(r.core).second);
          } else if (r.status.code() == StatusCode::kAlreadyExists) {
            EXPECT_NE(want, kAnyCore);
            EXPECT_EQ(it->second.count(want), 1u);
          } else {
            refused.fetch_add(1, std::memory_order_relaxed);
            EXPECT_EQ(r.status.code(), StatusCode::kResourceExhausted) << r.status.to_string();
            if (want != kAnyCore) {
              EXPECT_EQ(it->second.count(want), 0u);
            }
          }
        } else if (x < 80) {
          // Mostly a process that owns cores (most do not: the cores run out).
          auto it = pick();
          for (uint32_t tries = 0; tries < 8 && it->second.empty() && rng() % 8 != 0; ++tries) it = pick();
          const uint64_t pid = it->first;
          if (it->second.empty()) {
            // Not ours: refused whether it is free or another process's.
            const uint32_t core = rng() % kCores;
            EXPECT_EQ(mut(PT::release_core_op(pid, core)).status.code(), StatusCode::kFailedPrecondition);
            continue;
          }
          auto ci = it->second.begin();
          std::advance(ci, rng() % it->second.size());
          const uint32_t core = *ci;
          uint64_t expected = pid;
          EXPECT_TRUE(held[core].compare_exchange_strong(expected, 0, std::memory_order_acq_rel));
          it->second.erase(ci);
          Response r = mut(PT::release_core_op(pid, core));
          EXPECT_TRUE(r.status.ok()) << r.status.to_string();
        } else if (x < 90) {
          auto it = pick();
          const uint64_t pid = it->first;
          for (uint32_t core : it->second) {
            uint64_t expected = pid;
            EXPECT_TRUE(held[core].compare_exchange_strong(expected, 0, std::memory_order_acq_rel));
          }
          const int32_t status = static_cast<int32_t>(i);
          Response r = mut(PT::exit_op(pid, status));
          EXPECT_TRUE(r.status.ok()) << r.status.to_string();
          EXPECT_EQ(r.cores, std::vector<uint32_t>(it->second.begin(), it->second.end()));
          EXPECT_EQ(r.exit_status, status);
          procs.erase(it);
        } else {
          // Reads are linearizable: they see this thread's own completed writes.
          auto it = pick();
          const uint64_t pid = it->first;
          Response r = rep.execute(PT::cores_of_op(pid), token);
          EXPECT_EQ(r.cores, std::vector<uint32_t>(it->second.begin(), it->second.end()));
          EXPECT_EQ(rep.execute(PT::get_op(pid), token).info.cores, it->second.size());
          const uint32_t core = rng() % kCores;
          const uint64_t owner = rep.execute(PT::core_owner_op(core), token).pid;
          EXPECT_EQ(owner == pid, it->second.count(core) == 1) << "core " << core;
        }
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& w : workers) w.join();
  EXPECT_EQ(double_booked.load(), 0u);
  EXPECT_GT(allocs.load(), uint64_t{ops / 2});    // real work happened ...
  EXPECT_GT(refused.load(), uint64_t{ops / 10});  // ... and the cores ran out often

  size_t live = 0;
  for (const auto& m : mine) live += m.size();
  std::vector<uint64_t> digests;
  for (Rep* rep : replicas) {
    rep->sync();
    const nr::ThreadToken token = rep->register_thread().value();
    rep->inspect(token, [&](const PT& table) {
      digests.push_back(table.digest());
      EXPECT_EQ(invariants(table), "ok");
      EXPECT_EQ(table.size(), live);
      for (uint32_t c = 0; c < kCores; ++c) {
        EXPECT_EQ(table.dispatch(PT::core_owner_op(c)).pid, held[c].load(std::memory_order_relaxed)) << "core " << c;
      }
      return 0;
    });
  }
  EXPECT_EQ(digests[0], digests[1]);
  EXPECT_GT(group->log().tail(), uint64_t{4} * o.slot_count);  // the log wrapped
}

}  // namespace
}  // namespace nrx::proc
