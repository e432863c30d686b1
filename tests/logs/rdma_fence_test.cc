// Fencing on the RDMA log (logs/rdma): several machines' RdmaLog objects in one process, connected
// to each other through the one RDMA device (soft-RoCE in a QEMU guest: run by rdma_log_test, see
// rdma_log_test.cc). A machine "dies" mid-append (crash_in_append_for_testing: it reserved, and
// its WRITEs reached some mirrors or none); the survivors fence it, and every survivor then
// applies the same entries: the sequencer resolves the hole from a survivor that has the entry, or
// as a no-op, and the dead machine's replica leaves the head and ctail.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "logs/rdma/rdma_log.h"

namespace nrx::logs {
namespace {

namespace verbs = transport::verbs;

struct Cluster {
  std::vector<std::unique_ptr<RdmaLog>> logs;  // [machine]
  std::vector<ReplicaId> replicas;             // one per machine
  Cluster() = default;
  Cluster(Cluster&&) = default;
  Cluster& operator=(Cluster&&) = default;
  ~Cluster() {
    // Machine 0 closes last (it waits for the others to leave).
    while (!logs.empty()) logs.pop_back();
  }
};

Result<Cluster> make_cluster(uint32_t machines) {
  LogOptions o;
  o.entry_size = 32;
  o.slot_count = 64;
  o.payload_slots = 8;
  Cluster c;
  for (uint32_t m = 0; m < machines; ++m) {
    RdmaOptions r;
    if (const char* d = std::getenv("NRX_RDMA_DEVICE")) r.device.device = d;
    r.machine = m;
    r.machines = machines;
    r.payload_bytes = 256;
    r.rdma_timeout = std::chrono::seconds(5);
    r.hole_grace = std::chrono::milliseconds(100);
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<RdmaLog> log, RdmaLog::create(o, r));
    c.logs.push_back(std::move(log));
  }
  for (uint32_t m = 0; m < machines; ++m) {
    std::vector<verbs::Endpoint> from(machines);
    for (uint32_t j = 0; j < machines; ++j) {
      if (j != m) from[j] = c.logs[j]->endpoint(m);
    }
    NRX_RETURN_IF_ERROR(c.logs[m]->connect(from));
  }
  for (uint32_t m = 0; m < machines; ++m) {
    NRX_ASSIGN_OR_RETURN(ReplicaId r, c.logs[m]->register_replica());
    c.replicas.push_back(r);
  }
  return c;
}

std::array<std::byte, 8> op(uint64_t v) {
  std::array<std::byte, 8> b{};
  std::memcpy(b.data(), &v, 8);
  return b;
}

Status append(RdmaLog& log, ReplicaId r, uint64_t v) {
  const auto b = op(v);
  const std::array<std::span<const std::byte>, 1> batch{b};
  return log.append(r, batch, [](const Entry&) {}).status();
}

// Everything machine |m| applies, in order (values), up to the tail.
Result<std::vector<uint64_t>> applied(Cluster& c, uint32_t m) {
  std::vector<uint64_t> out;
  NRX_RETURN_IF_ERROR(c.logs[m]
                          ->exec(c.replicas[m],
                                 [&](const Entry& e) {
                                   uint64_t v = 0;
                                   std::memcpy(&v, e.data.data(), 8);
                                   out.push_back(v);
                                 })
                          .status());
  return out;
}

TEST(RdmaLogFencing, AnUnwrittenReservationOfAFencedMachineBecomesANoOp) {
  auto c = make_cluster(2);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_TRUE(append(*c->logs[1], c->replicas[1], 1).ok());
  // Machine 1 reserves 2 and dies before writing anything anywhere.
  const auto b = op(2);
  const std::array<std::span<const std::byte>, 1> batch{b};
  auto hole = c->logs[1]->crash_in_append_for_testing(c->replicas[1], batch, /*mask=*/0);
  ASSERT_TRUE(hole.ok()) << hole.status().to_string();
  ASSERT_TRUE(append(*c->logs[0], c->replicas[0], 3).ok());
  // Its replica holds the head back until it is fenced.
  EXPECT_EQ(c->logs[0]->head(), 0u);
  ASSERT_TRUE(c->logs[0]->fence_machine(1).ok());
  EXPECT_EQ(c->logs[0]->active_replicas(), uint64_t{1} << c->replicas[0]) << "machine 1's replica left";
  auto seen = applied(*c, 0);
  ASSERT_TRUE(seen.ok()) << seen.status().to_string();
  EXPECT_EQ(*seen, (std::vector<uint64_t>{1, 3})) << "the hole is skipped, nothing else";
  EXPECT_EQ(c->logs[0]->counts().holes, 1u);
  EXPECT_EQ(c->logs[0]->head(), 3u) << "only machine 0's replica counts for the head";
  // Fencing is idempotent; machine 0 and itself cannot be fenced.
  EXPECT_TRUE(c->logs[0]->fence_machine(1).ok());
  EXPECT_EQ(c->logs[0]->fence_machine(0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->logs[1]->fence_machine(0).code(), StatusCode::kUnavailable);
  // Appends go on with machine 1 cut off (no WRITE reaches its mirror any more).
  ASSERT_TRUE(append(*c->logs[0], c->replicas[0], 4).ok());
  seen = applied(*c, 0);
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(*seen, (std::vector<uint64_t>{4}));
}

TEST(RdmaLogFencing, AnEntryThatReachedOneSurvivorReachesEveryOne) {
  auto c = make_cluster(3);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_TRUE(append(*c->logs[2], c->replicas[2], 10).ok());
  // Machine 2's entry 11 reached machine 1's mirror only (machine 1 may apply it), then 2 died.
  const auto b = op(11);
  const std::array<std::span<const std::byte>, 1> batch{b};
  ASSERT_TRUE(c->logs[2]->crash_in_append_for_testing(c->replicas[2], batch, /*mask=*/1u << 1).ok());
  ASSERT_TRUE(append(*c->logs[1], c->replicas[1], 12).ok());
  auto at1 = applied(*c, 1);  // machine 1 has the whole log already
  ASSERT_TRUE(at1.ok()) << at1.status().to_string();
  EXPECT_EQ(*at1, (std::vector<uint64_t>{10, 11, 12}));
  for (uint32_t m : {0u, 1u}) ASSERT_TRUE(c->logs[m]->fence_machine(2).ok()) << "machine " << m;
  auto at0 = applied(*c, 0);  // the sequencer finds 11 in machine 1's mirror and keeps it
  ASSERT_TRUE(at0.ok()) << at0.status().to_string();
  EXPECT_EQ(*at0, *at1) << "every survivor applies the same entries";
  EXPECT_EQ(c->logs[0]->counts().holes, 1u);
  EXPECT_GE(c->logs[0]->counts().reads, 1u) << "the hole was looked up in machine 1's mirror";
}

TEST(RdmaLogFencing, AFencedMachinesPayloadHoldsCountAsReleased) {
  auto c = make_cluster(2);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  const std::array<std::byte, 4> data{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
  auto ref = c->logs[0]->payload_put(data);
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();
  EXPECT_EQ(c->logs[0]->payloads_live(), 1u);
  ASSERT_TRUE(c->logs[0]->payload_release(c->replicas[0], *ref).ok());
  EXPECT_EQ(c->logs[0]->payloads_live(), 1u) << "machine 1's replica still holds it";
  ASSERT_TRUE(c->logs[0]->fence_machine(1).ok());
  EXPECT_EQ(c->logs[0]->payloads_live(), 0u) << "a fenced holder counts as released";
}

TEST(RdmaLogFencing, AFencedMachinesPayloadsStayReadable) {
  auto c = make_cluster(3);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  const std::array<std::byte, 4> data{std::byte{9}, std::byte{8}, std::byte{7}, std::byte{6}};
  auto ref = c->logs[2]->payload_put(data);  // copies posted to machines 0 and 1 with it
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();
  ASSERT_TRUE(append(*c->logs[2], c->replicas[2], 1).ok());  // the entry after them, in order
  for (uint32_t m : {0u, 1u}) ASSERT_TRUE(c->logs[m]->fence_machine(2).ok());
  for (uint32_t m : {0u, 1u}) {
    ASSERT_TRUE(applied(*c, m).ok());  // the entry has arrived: so has the payload's copy
    const RdmaCounts before = c->logs[m]->counts();
    auto got = c->logs[m]->payload_get(*ref);
    ASSERT_TRUE(got.ok()) << "machine " << m << ": " << got.status().to_string();
    EXPECT_TRUE(std::equal(got->begin(), got->end(), data.begin(), data.end())) << "machine " << m;
    EXPECT_EQ(c->logs[m]->counts().reads, before.reads) << "read locally, no round trip";
    EXPECT_TRUE(c->logs[m]->payload_release(c->replicas[m], *ref).ok()) << "its owner is gone: nothing to do";
  }
}

}  // namespace
}  // namespace nrx::logs
