// The RDMA backend (logs/rdma) under the log conformance suite, on one machine: every tail
// reservation, withdrawal and payload release is a real RDMA atomic on a loopback queue pair, and
// the replica table is the sequencer's. It needs an RDMA device, so it runs inside a QEMU guest
// with soft-RoCE (tests/cluster/rdma_log_test.sh, label cluster), not on the host; the
// multi-machine path (entries written into other machines' mirrors) is `nrx rdma logbench`.
#include "logs/rdma/rdma_log.h"

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdlib>
#include <span>

#include "tests/logs/log_conformance.h"

namespace nrx::logs {
namespace {

RdmaOptions single_machine() {
  RdmaOptions r;
  if (const char* d = std::getenv("NRX_RDMA_DEVICE")) r.device.device = d;
  return r;
}

using testing::LogConformance;

INSTANTIATE_TEST_SUITE_P(Rdma, LogConformance,
                         ::testing::Values(testing::LogBackend{
                             "rdma",
                             [](const LogOptions& o) { return testing::as_log(RdmaLog::create(o, single_machine())); },
                             /*stress_appends_per_thread=*/1000, /*reserves_before_room=*/true}),
                         testing::LogBackendName());

// The append path's round trips: one FETCH_AND_ADD per append while the log has room (the cached
// head suffices), nothing else waited for; exec costs nothing remote on the sequencer machine.
TEST(RdmaLog, OneFetchAndAddPerAppend) {
  LogOptions o;
  o.entry_size = 32;
  o.slot_count = 1024;
  auto log = RdmaLog::create(o, single_machine());
  ASSERT_TRUE(log.ok()) << log.status().to_string();
  auto r = (*log)->register_replica();
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const RdmaCounts before = (*log)->counts();
  std::array<std::byte, 16> op{};
  const std::array<std::span<const std::byte>, 1> batch{op};
  for (int i = 0; i < 100; ++i) ASSERT_TRUE((*log)->append(*r, batch, [](const Entry&) {}).ok());
  const RdmaCounts after = (*log)->counts();
  EXPECT_EQ(after.appends - before.appends, 100u);
  EXPECT_EQ(after.fetch_adds - before.fetch_adds, 100u);
  EXPECT_EQ(after.waits - before.waits, 100u) << "a round trip other than the reservation";
  EXPECT_EQ(after.reads - before.reads, 0u);
  uint64_t seen = 0;
  ASSERT_EQ((*log)->exec(*r, [&](const Entry&) { ++seen; }).value_or(0), 100u);
  EXPECT_EQ(seen, 100u);
}

TEST(RdmaLog, BadOptionsAreRefused) {
  LogOptions o;
  RdmaOptions r = single_machine();
  r.machines = 2;
  r.machine = 2;
  EXPECT_EQ(RdmaLog::create(o, r).status().code(), StatusCode::kInvalidArgument);
  r.machines = 17;
  r.machine = 0;
  EXPECT_EQ(RdmaLog::create(o, r).status().code(), StatusCode::kInvalidArgument);
  o.slot_count = 1000;
  EXPECT_EQ(RdmaLog::create(o, single_machine()).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nrx::logs
