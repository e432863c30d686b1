// The log conformance suite: one parameterised GoogleTest (`LogConformance`) that checks the
// contract of nrx::logs::Log (logs/log.h, DESIGN.md section 3) against any backend.
//
// What it checks: index order and exactly-once delivery to every replica (late ones from head);
// a batch reserved in one atomic step; wrap-around over 100+ laps without stale entries; exec
// waiting for reserved but unpublished entries; the full log (apply_own, the lagging-replica
// hook, unblocking, kDeadlineExceeded after full_timeout); payload reference counting; the
// replica limit; argument validation; and a 4-thread stress case in which both replicas must
// apply the same sequence. Each case uses a small geometry so it runs in milliseconds, and every
// wait is bounded (full_timeout, joins, or a deadline on an atomic flag). A case is a contract
// check, not a ring check: a backend that fails one is wrong, or log.h is.
//
// The TEST_P bodies live in log_conformance.cc, compiled into the OBJECT library
// `nrx::log_conformance` (an object library, so the linker cannot drop the unreferenced TEST_P
// registrations). A backend's test binary links that library and instantiates the suite once,
// from its own .cc, with one factory per configuration:
//
//   #include "tests/logs/log_conformance.h"
//   INSTANTIATE_TEST_SUITE_P(
//       Ring, LogConformance,
//       ::testing::Values(nrx::logs::testing::LogBackend{
//           "ring", [](const nrx::logs::LogOptions& o) {
//             return nrx::logs::testing::as_log(nrx::logs::RingLog::create(o)); }}),
//       nrx::logs::testing::LogBackendName());
//
// The factory receives the geometry each case needs (entry_size, slot_count, max_replicas,
// full_timeout, payload_slots, log_id, on_lagging) and must honour those fields; it may change
// fields a backend owns (numa_node, a mode of its own).
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "base/status.h"
#include "logs/log.h"

namespace nrx::logs::testing {

// One backend configuration the suite runs against.
struct LogBackend {
  std::string name;  // used as the test-name suffix: [A-Za-z0-9_] only
  std::function<nrx::Result<std::unique_ptr<nrx::logs::Log>>(const nrx::logs::LogOptions&)> make;
  // Appends per thread in ConcurrentStress. A backend whose every append is a network round trip
  // under emulation (rdma over soft-RoCE in a TCG guest: milliseconds) runs fewer; the log still
  // wraps and fills many times over (64 slots).
  uint32_t stress_appends_per_thread = 4000;
  // True for a backend that reserves before it checks for room (rdma, log.h's invariants): in
  // ConcurrentStress the tail may then be ahead of head + slot_count by the batches of appenders
  // waiting for room (4 threads, 3 entries at most each), never more.
  bool reserves_before_room = false;
};

// Prints the backend's name in GoogleTest messages (instead of the struct's bytes).
inline void PrintTo(const LogBackend& backend, std::ostream* os) { *os << backend.name; }

// Name generator for INSTANTIATE_TEST_SUITE_P: "Ring/LogConformance.Ordering/ring".
struct LogBackendName {
  std::string operator()(const ::testing::TestParamInfo<LogBackend>& info) const { return info.param.name; }
};

// Converts a backend's `Result<std::unique_ptr<Concrete>>` (what its create() returns) into the
// `Result<std::unique_ptr<Log>>` a LogBackend factory returns.
template <typename Concrete>
nrx::Result<std::unique_ptr<nrx::logs::Log>> as_log(nrx::Result<std::unique_ptr<Concrete>> created) {
  if (!created.ok()) return created.status();
  return std::unique_ptr<nrx::logs::Log>(std::move(created).value());
}

class LogConformance : public ::testing::TestWithParam<LogBackend> {
 protected:
  // Builds a log through the backend's factory; on error records a test failure and returns
  // nullptr (callers ASSERT_NE(log, nullptr)).
  std::unique_ptr<Log> create(const LogOptions& options) const;

  // The options every case starts from: a small log (entry_size 32, slot_count 64, 4 replicas,
  // 16 payload slots, full_timeout 5 s, log_id 0, no hook).
  static LogOptions small_options();
};

}  // namespace nrx::logs::testing
