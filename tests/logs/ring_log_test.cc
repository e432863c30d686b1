// The ring backend (logs/ring/ring_log.h) against the log conformance suite, in both placements
// of its slots, plus checks that only make sense for the ring: slot geometry, create()'s argument
// validation, the 64-replica payload mask, and an explicit NUMA node.
#include "logs/ring/ring_log.h"

#include <numa.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "base/cacheline.h"
#include "tests/logs/log_conformance.h"

namespace nrx::logs {
namespace {

using testing::as_log;
using testing::LogBackend;
using testing::LogConformance;

// ---- The conformance suite --------------------------------------------------------------------

// The factory for one placement of the slots; every other option comes from the suite.
LogBackend ring_backend(std::string name, int numa_node) {
  return {std::move(name), [numa_node](const LogOptions& options) {
            LogOptions o = options;
            o.numa_node = numa_node;
            return as_log(RingLog::create(o));
          }};
}

// Configurations of the ring backend the suite runs against:
//   ring              slots on the calling thread's NUMA node (the default placement)
//   ring_interleaved  slots interleaved over all nodes (a log every node shares)
INSTANTIATE_TEST_SUITE_P(Ring, LogConformance,
                         ::testing::Values(ring_backend("ring", kNumaLocal),
                                           ring_backend("ring_interleaved", kNumaInterleave)),
                         testing::LogBackendName());

// ---- Ring-only checks -------------------------------------------------------------------------

LogOptions small(uint32_t entry_size = 32, uint32_t slot_count = 8) {
  LogOptions o;
  o.entry_size = entry_size;
  o.slot_count = slot_count;
  o.payload_slots = 4;
  return o;
}

// A slot is its 16-byte header plus the entry, rounded up to a whole cache line.
TEST(RingLogTest, SlotStrideIsHeaderPlusEntryInCacheLines) {
  for (uint32_t entry_size : {1u, 16u, 47u, 48u, 49u, 64u, 100u, 4080u, 4081u, 4096u}) {
    Result<std::unique_ptr<RingLog>> log = RingLog::create(small(entry_size));
    ASSERT_TRUE(log.ok()) << "entry_size " << entry_size << ": " << log.status().to_string();
    const size_t stride = (*log)->slot_stride();
    EXPECT_EQ(stride % kCacheLineSize, 0u) << "entry_size " << entry_size;
    EXPECT_GE(stride, 16u + entry_size) << "entry_size " << entry_size;
    EXPECT_EQ(stride, round_up(16u + entry_size, kCacheLineSize)) << "entry_size " << entry_size;
  }
}

// create() answers a geometry outside LogOptions' ranges with kInvalidArgument.
TEST(RingLogTest, CreateRejectsBadGeometry) {
  struct Case {
    const char* what;
    std::function<void(LogOptions&)> set;
  };
  const std::vector<Case> cases = {
      {"slot_count 0", [](LogOptions& o) { o.slot_count = 0; }},
      {"slot_count 1", [](LogOptions& o) { o.slot_count = 1; }},
      {"slot_count 3", [](LogOptions& o) { o.slot_count = 3; }},
      {"slot_count 1000", [](LogOptions& o) { o.slot_count = 1000; }},
      {"slot_count 2^31 + 1", [](LogOptions& o) { o.slot_count = (1u << 31) + 1; }},
      {"entry_size 0", [](LogOptions& o) { o.entry_size = 0; }},
      {"entry_size 4097", [](LogOptions& o) { o.entry_size = 4097; }},
      {"max_replicas 0", [](LogOptions& o) { o.max_replicas = 0; }},
      {"max_replicas 65", [](LogOptions& o) { o.max_replicas = kMaxReplicasLimit + 1; }},
  };
  for (const Case& c : cases) {
    LogOptions o = small();
    c.set(o);
    Result<std::unique_ptr<RingLog>> log = RingLog::create(o);
    EXPECT_EQ(log.status().code(), StatusCode::kInvalidArgument) << c.what;
  }
}

// The edges of every range are accepted and usable.
TEST(RingLogTest, CreateAcceptsEdgeGeometry) {
  struct Case {
    const char* what;
    std::function<void(LogOptions&)> set;
  };
  const std::vector<Case> cases = {
      {"slot_count 2", [](LogOptions& o) { o.slot_count = 2; }},
      {"entry_size 1", [](LogOptions& o) { o.entry_size = 1; }},
      {"entry_size 4096", [](LogOptions& o) { o.entry_size = 4096; }},
      {"max_replicas 1", [](LogOptions& o) { o.max_replicas = 1; }},
      {"max_replicas 64", [](LogOptions& o) { o.max_replicas = kMaxReplicasLimit; }},
  };
  for (const Case& c : cases) {
    LogOptions o = small();
    c.set(o);
    Result<std::unique_ptr<RingLog>> log = RingLog::create(o);
    ASSERT_TRUE(log.ok()) << c.what << ": " << log.status().to_string();
    Result<ReplicaId> r = (*log)->register_replica();
    ASSERT_TRUE(r.ok()) << c.what;
    const std::vector<std::byte> entry(o.entry_size, std::byte{0x5a});
    const std::span<const std::byte> batch[] = {entry};
    Result<LogIndex> idx = (*log)->append(*r, batch, [](const Entry&) {});
    EXPECT_EQ(idx.value_or(~0ull), 0u) << c.what;
    size_t seen = 0;
    EXPECT_EQ((*log)->exec(*r, [&](const Entry& e) { seen += e.data.size() == entry.size() ? 1 : 100; }).value_or(0),
              1u)
        << c.what;
    EXPECT_EQ(seen, 1u) << c.what;
  }
}

// A two-slot log (the smallest) wraps many times under one replica.
TEST(RingLogTest, TwoSlotLogWraps) {
  Result<std::unique_ptr<RingLog>> made = RingLog::create(small(8, 2));
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  RingLog& log = **made;
  const ReplicaId r = log.register_replica().value();
  uint64_t next = 0;
  std::string error;
  auto check = [&](const Entry& e) {
    uint64_t got = ~0ull;
    if (e.data.size() == sizeof(got)) std::memcpy(&got, e.data.data(), sizeof(got));
    if (error.empty() && (e.index != next || got != next)) {
      error = "index " + std::to_string(e.index) + " holds " + std::to_string(got) + ", expected " + std::to_string(next);
    }
    ++next;
  };
  for (uint64_t i = 0; i < 1000; ++i) {
    const std::span<const std::byte> entry = std::as_bytes(std::span<const uint64_t>(&i, 1));
    const std::span<const std::byte> batch[] = {entry};
    ASSERT_EQ(log.append(r, batch, check).value_or(~0ull), i);
    ASSERT_EQ(log.exec(r, check).value_or(0), i + 1);
  }
  EXPECT_EQ(error, "");
  EXPECT_EQ(next, 1000u);
}

// The payload mask's top bit: with 64 replicas the payload lives until the 64th release.
TEST(RingLogTest, SixtyFourReplicasReleaseOnePayload) {
  LogOptions o = small();
  o.max_replicas = kMaxReplicasLimit;
  Result<std::unique_ptr<RingLog>> made = RingLog::create(o);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  RingLog& log = **made;
  for (uint32_t i = 0; i < kMaxReplicasLimit; ++i) ASSERT_EQ(log.register_replica().value_or(~0u), i);
  EXPECT_EQ(log.register_replica().status().code(), StatusCode::kResourceExhausted);
  const std::vector<std::byte> data(100, std::byte{7});
  const Result<PayloadRef> ref = log.payload_put(data);
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();
  // Release from the top down so bit 63 goes first and bit 0 frees it.
  for (uint32_t i = kMaxReplicasLimit; i-- > 0;) {
    EXPECT_EQ(log.payloads_live(), 1u) << "before replica " << i << " released";
    EXPECT_TRUE(log.payload_get(*ref).ok()) << "before replica " << i << " released";
    EXPECT_TRUE(log.payload_release(i, *ref).ok()) << "replica " << i;
    // After the last release the ref is stale: kNotFound, or kFailedPrecondition (see the
    // conformance suite's PayloadRefCounting); before it, a second release is kFailedPrecondition.
    const StatusCode again = log.payload_release(i, *ref).code();
    if (i == 0) {
      EXPECT_TRUE(again == StatusCode::kNotFound || again == StatusCode::kFailedPrecondition) << status_code_name(again);
    } else {
      EXPECT_EQ(again, StatusCode::kFailedPrecondition) << "second release by replica " << i;
    }
  }
  EXPECT_EQ(log.payloads_live(), 0u);
  EXPECT_EQ(log.payload_get(*ref).status().code(), StatusCode::kNotFound);
}

// An explicit node places the slots there; node 0 exists wherever NUMA is available.
TEST(RingLogTest, ExplicitNumaNode) {
  if (numa_available() < 0) GTEST_SKIP() << "libnuma reports no NUMA support";
  LogOptions o = small();
  o.numa_node = 0;
  Result<std::unique_ptr<RingLog>> made = RingLog::create(o);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  const ReplicaId r = (*made)->register_replica().value();
  const std::vector<std::byte> entry(32, std::byte{1});
  const std::span<const std::byte> batch[] = {entry};
  EXPECT_EQ((*made)->append(r, batch, [](const Entry&) {}).value_or(~0ull), 0u);
  EXPECT_EQ((*made)->exec(r, [](const Entry&) {}).value_or(0), 1u);
}

}  // namespace
}  // namespace nrx::logs
