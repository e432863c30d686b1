// The shared-memory backend (logs/shm/shm_log.h) against the log conformance suite, over a memfd
// and over a /dev/shm file (both mapped MAP_SHARED), and through a second, attached ShmLog
// object; plus checks only the shm backend has: two ShmLog objects sharing one region, header
// validation (every byte flipped, forged fields with a valid checksum, truncated and misaligned
// regions, another cluster or epoch), region_bytes() exactness, corrupt entries and payload
// metadata answered with errors, deregistration, and the Access seam (read-modify-writes on
// region addresses counted per operation; none at all in noncoherent mode, crash fencing
// included).
#include "logs/shm/shm_log.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "logs/shm/internal/shm_log_impl.h"
#include "logs/shm/shm_layout.h"
#include "tests/logs/log_conformance.h"
#include "tests/logs/shm_test_region.h"

namespace nrx::logs {
namespace shm_test {

// Counts the read-modify-writes ShmLog performs on region addresses: compare_exchange, fetch_*,
// and seq_cst stores (an xchg on x86: a locked read-modify-write too). |stores| counts every
// store, to show a run really went through the policy. One counter set per |kTag|, so the
// noncoherent proof is not mixed with the coherent counts.
template <int kTag>
struct Counting : CoherentAccess {
  static inline std::atomic<uint64_t> rmws{0};
  static inline std::atomic<uint64_t> stores{0};
  static void count() { rmws.fetch_add(1, std::memory_order_relaxed); }
  static void store(uint64_t& w, uint64_t v, std::memory_order o) {
    stores.fetch_add(1, std::memory_order_relaxed);
    if (o == std::memory_order_seq_cst) count();
    CoherentAccess::store(w, v, o);
  }
  static bool compare_exchange(uint64_t& w, uint64_t& e, uint64_t d, std::memory_order s, std::memory_order f) {
    count();
    return CoherentAccess::compare_exchange(w, e, d, s, f);
  }
  static uint64_t fetch_add(uint64_t& w, uint64_t v, std::memory_order o) {
    count();
    return CoherentAccess::fetch_add(w, v, o);
  }
  static uint64_t fetch_sub(uint64_t& w, uint64_t v, std::memory_order o) {
    count();
    return CoherentAccess::fetch_sub(w, v, o);
  }
  static uint64_t fetch_or(uint64_t& w, uint64_t v, std::memory_order o) {
    count();
    return CoherentAccess::fetch_or(w, v, o);
  }
  static uint64_t fetch_and(uint64_t& w, uint64_t v, std::memory_order o) {
    count();
    return CoherentAccess::fetch_and(w, v, o);
  }
};
using CountingAccess = Counting<0>;             // coherent mode: counts per operation
using CountingNoncoherentAccess = Counting<1>;  // noncoherent mode only: must stay at zero

}  // namespace shm_test

// Named (not anonymous) policies, so these explicit instantiations have external linkage.
template class BasicShmLog<shm_test::CountingAccess>;
template class BasicShmLog<shm_test::CountingNoncoherentAccess>;

namespace {

using testing::as_log;
using testing::LogBackend;
using testing::LogConformance;
using testing::MappedRegion;
using NoncoherentCountingLog = BasicShmLog<shm_test::CountingNoncoherentAccess>;

constexpr uint64_t kCluster = 0x5eed;
// The conformance suite's payloads are up to 4 KiB; 8 KiB slots keep the regions small.
constexpr uint64_t kPayloadSlotBytes = 8192;

ShmOptions shm_options_for(const LogOptions& o) {
  ShmOptions s;
  s.cluster_id = kCluster;
  s.payload_bytes = uint64_t{o.payload_slots} * kPayloadSlotBytes;
  return s;
}

// ---- The conformance suite --------------------------------------------------------------------

// A log in a fresh region of |kind|; with |attached|, the suite talks to a second ShmLog that
// attach()ed to the region (the creator is dropped), so everything the suite checks must come
// through the header and the region alone.
LogBackend shm_backend(std::string name, MappedRegion::Kind kind, bool attached) {
  return {std::move(name), [kind, attached](const LogOptions& options) -> Result<std::unique_ptr<Log>> {
            ShmOptions shm = shm_options_for(options);
            const uint64_t bytes = ShmLog::region_bytes(options, shm);
            if (bytes == 0) return Status::invalid_argument("options the shm log rejects");
            NRX_ASSIGN_OR_RETURN(std::shared_ptr<MappedRegion> region,
                                 MappedRegion::create(kind, bytes, /*unlink_now=*/true));
            shm.keep_alive = region;
            Result<std::unique_ptr<ShmLog>> created = ShmLog::create(region->bytes(), options, shm);
            if (!attached || !created.ok()) return as_log(std::move(created));
            ShmAttachOptions a;
            a.cluster_id = kCluster;
            a.expected_epoch = (*created)->epoch();
            a.full_timeout = options.full_timeout;
            a.on_lagging = options.on_lagging;
            a.keep_alive = region;
            Result<std::unique_ptr<ShmLog>> peer = ShmLog::attach(region->bytes(), a);
            if (peer.ok() && (*peer)->options().log_id != options.log_id) {
              return Status::internal("attach lost the log id");
            }
            return as_log(std::move(peer));
          }};
}

// Noncoherent mode through the counting policy (every read-modify-write counted; the
// environment below requires zero). With |attached|, the suite talks to client 1, and the creator
// (client 0, which runs the sequencer) lives as long as that object (its keep_alive).
LogBackend noncoherent_backend(std::string name, MappedRegion::Kind kind, bool attached) {
  return {std::move(name), [kind, attached](const LogOptions& options) -> Result<std::unique_ptr<Log>> {
            ShmOptions shm = shm_options_for(options);
            shm.mode = ShmMode::kNoncoherent;
            const uint64_t bytes = NoncoherentCountingLog::region_bytes(options, shm);
            if (bytes == 0) return Status::invalid_argument("options the shm log rejects");
            NRX_ASSIGN_OR_RETURN(std::shared_ptr<MappedRegion> region,
                                 MappedRegion::create(kind, bytes, /*unlink_now=*/true));
            shm.keep_alive = region;
            Result<std::unique_ptr<NoncoherentCountingLog>> created =
                NoncoherentCountingLog::create(region->bytes(), options, shm);
            if (!attached || !created.ok()) return as_log(std::move(created));
            struct Owner {
              std::shared_ptr<MappedRegion> region;
              std::unique_ptr<NoncoherentCountingLog> creator;  // destroyed first: stops the sequencer
            };
            const uint64_t epoch = (*created)->epoch();
            auto owner = std::make_shared<Owner>(Owner{region, std::move(created).value()});
            ShmAttachOptions a;
            a.cluster_id = kCluster;
            a.expected_epoch = epoch;
            a.mode = ShmMode::kNoncoherent;
            a.client = 1;
            a.full_timeout = options.full_timeout;
            a.on_lagging = options.on_lagging;
            a.keep_alive = owner;
            return as_log(NoncoherentCountingLog::attach(region->bytes(), a));
          }};
}

// Configurations of the shm backend the suite runs against:
//   shm_memfd              coherent mode, region in a memfd (MAP_SHARED)
//   shm_devshm             coherent mode, region in a /dev/shm file (MAP_SHARED)
//   shm_devshm_attached    as shm_devshm, but used through a ShmLog that attach()ed to it
//   shm_nc_memfd           noncoherent mode (sequencer, single-writer lines), memfd, counting RMWs
//   shm_nc_devshm          noncoherent mode, /dev/shm file, counting RMWs
//   shm_nc_devshm_attached noncoherent mode through an attached client (1), counting RMWs
INSTANTIATE_TEST_SUITE_P(
    Shm, LogConformance,
    ::testing::Values(shm_backend("shm_memfd", MappedRegion::Kind::kMemfd, false),
                      shm_backend("shm_devshm", MappedRegion::Kind::kDevShm, false),
                      shm_backend("shm_devshm_attached", MappedRegion::Kind::kDevShm, true),
                      noncoherent_backend("shm_nc_memfd", MappedRegion::Kind::kMemfd, false),
                      noncoherent_backend("shm_nc_devshm", MappedRegion::Kind::kDevShm, false),
                      noncoherent_backend("shm_nc_devshm_attached", MappedRegion::Kind::kDevShm, true)),
    testing::LogBackendName());

// The proof (DESIGN 3.4): after the whole binary ran (the noncoherent conformance cases, and the
// noncoherent tests below), the noncoherent instantiation made not one read-modify-write on the
// region, and it did run (it stored). A failure here fails the binary.
class NoReadModifyWriteEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    using shm_test::CountingNoncoherentAccess;
    const uint64_t rmws = CountingNoncoherentAccess::rmws.load(std::memory_order_relaxed);
    const uint64_t stores = CountingNoncoherentAccess::stores.load(std::memory_order_relaxed);
    std::printf("[ shm noncoherent ] %llu stores, %llu read-modify-writes on the region\n",
                static_cast<unsigned long long>(stores), static_cast<unsigned long long>(rmws));
    EXPECT_EQ(rmws, 0u) << "the noncoherent mode made read-modify-writes on the region";
    const bool filtered = ::testing::GTEST_FLAG(filter) != "*";
    if (!filtered) {
      EXPECT_GT(stores, 0u) << "the noncoherent instantiation never ran";
    }
  }
};
const ::testing::Environment* const kNoRmwEnvironment =
    ::testing::AddGlobalTestEnvironment(new NoReadModifyWriteEnvironment);

// ---- Helpers ----------------------------------------------------------------------------------

LogOptions small(uint32_t slot_count = 8) {
  LogOptions o;
  o.entry_size = 32;
  o.slot_count = slot_count;
  o.max_replicas = 4;
  o.payload_slots = 4;
  o.full_timeout = std::chrono::seconds(2);
  return o;
}

ShmOptions small_shm() {
  ShmOptions s;
  s.cluster_id = kCluster;
  s.payload_bytes = 4 * 1024;
  s.epoch = 42;
  return s;
}

ShmAttachOptions attach_options(uint64_t epoch = 0, ShmMode mode = ShmMode::kCoherent, uint32_t client = 0) {
  ShmAttachOptions a;
  a.cluster_id = kCluster;
  a.expected_epoch = epoch;
  a.full_timeout = std::chrono::seconds(2);
  a.mode = mode;
  a.client = client;
  return a;
}

ShmOptions small_shm(ShmMode mode) {
  ShmOptions s = small_shm();
  s.mode = mode;
  return s;
}

const char* mode_name(ShmMode mode) { return mode == ShmMode::kNoncoherent ? "noncoherent" : "coherent"; }

// A region with a fresh log in it.
struct Fixture {
  std::shared_ptr<MappedRegion> region;
  std::unique_ptr<ShmLog> log;
};

Fixture make_log(LogOptions o = small(), ShmOptions s = small_shm()) {
  Fixture f;
  Result<std::shared_ptr<MappedRegion>> region =
      MappedRegion::create(MappedRegion::Kind::kMemfd, ShmLog::region_bytes(o, s));
  EXPECT_TRUE(region.ok()) << region.status().to_string();
  if (!region.ok()) return f;
  f.region = *region;
  Result<std::unique_ptr<ShmLog>> log = ShmLog::create(f.region->bytes(), o, s);
  EXPECT_TRUE(log.ok()) << log.status().to_string();
  if (log.ok()) f.log = std::move(log).value();
  return f;
}

std::vector<std::byte> bytes_of(uint64_t key, size_t length) {
  std::vector<std::byte> out(length);
  for (size_t i = 0; i < length; ++i) out[i] = static_cast<std::byte>((key * 131 + i) & 0xff);
  return out;
}

Result<LogIndex> append_one(Log& log, ReplicaId r, std::span<const std::byte> entry) {
  const std::span<const std::byte> batch[] = {entry};
  return log.append(r, batch, [](const Entry&) {});
}

shm::ShmHeader read_header(const MappedRegion& region) {
  shm::ShmHeader h;
  std::memcpy(&h, region.bytes().data(), sizeof(h));
  return h;
}

void write_header(const MappedRegion& region, const shm::ShmHeader& h) {
  std::memcpy(region.bytes().data(), &h, sizeof(h));
}

// ---- Two ShmLog objects over one region ("two processes in one") -------------------------------

class ShmModeTest : public ::testing::TestWithParam<ShmMode> {};
INSTANTIATE_TEST_SUITE_P(Modes, ShmModeTest, ::testing::Values(ShmMode::kCoherent, ShmMode::kNoncoherent),
                         [](const ::testing::TestParamInfo<ShmMode>& p) { return std::string(mode_name(p.param)); });

TEST_P(ShmModeTest, TwoObjectsShareOneLog) {
  Fixture f = make_log(small(16), small_shm(GetParam()));
  ASSERT_NE(f.log, nullptr);
  Result<std::unique_ptr<ShmLog>> peer = ShmLog::attach(f.region->bytes(), attach_options(42, GetParam(), 1));
  ASSERT_TRUE(peer.ok()) << peer.status().to_string();
  ShmLog& a = *f.log;
  ShmLog& b = **peer;
  EXPECT_EQ(b.options().entry_size, 32u);
  EXPECT_EQ(b.options().slot_count, 16u);
  EXPECT_EQ(b.options().max_replicas, 4u);
  EXPECT_EQ(b.epoch(), 42u);

  const ReplicaId ra = a.register_replica().value();
  const ReplicaId rb = b.register_replica().value();
  EXPECT_NE(ra, rb);
  EXPECT_EQ(a.active_replicas(), b.active_replicas());
  EXPECT_EQ(a.active_replicas(), (uint64_t{1} << ra) | (uint64_t{1} << rb));

  // Ids belong to the object that registered them.
  const auto e0 = bytes_of(0, 20);
  EXPECT_EQ(append_one(b, ra, e0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(b.exec(ra, [](const Entry&) {}).status().code(), StatusCode::kNotFound);
  // ...but every object sees every replica's ltail.
  EXPECT_EQ(b.ltail(ra).value_or(~0ull), 0u);

  // Entries appended through A are applied through B, and the other way round, over many laps.
  std::vector<std::vector<std::byte>> seen_a, seen_b;
  for (uint64_t i = 0; i < 100; ++i) {
    ShmLog& writer = i % 3 == 0 ? b : a;
    const ReplicaId w = i % 3 == 0 ? rb : ra;
    ASSERT_EQ(append_one(writer, w, bytes_of(i, 1 + i % 32)).value_or(~0ull), i);
    EXPECT_EQ(a.tail(), i + 1);
    EXPECT_EQ(b.tail(), i + 1);
    std::string error;
    auto check = [&](std::vector<std::vector<std::byte>>& seen) {
      return [&](const Entry& e) {
        const ReplicaId want = e.index % 3 == 0 ? rb : ra;
        if (e.writer != want) error = "index " + std::to_string(e.index) + " writer " + std::to_string(e.writer);
        seen.emplace_back(e.data.begin(), e.data.end());
      };
    };
    ASSERT_EQ(b.exec(rb, check(seen_b)).value_or(0), i + 1);
    if (i % 4 == 3) {
      ASSERT_EQ(a.exec(ra, check(seen_a)).value_or(0), i + 1);
    }
    ASSERT_EQ(error, "");
  }
  EXPECT_EQ(a.exec(ra, [&](const Entry& e) { seen_a.emplace_back(e.data.begin(), e.data.end()); }).value_or(0), 100u);
  ASSERT_EQ(seen_a.size(), 100u);
  ASSERT_EQ(seen_b.size(), 100u);
  for (uint64_t i = 0; i < 100; ++i) {
    EXPECT_EQ(seen_a[i], bytes_of(i, 1 + i % 32)) << i;
    EXPECT_EQ(seen_b[i], bytes_of(i, 1 + i % 32)) << i;
  }
  EXPECT_EQ(a.ctail(), 100u);
  EXPECT_EQ(b.head(), 100u);

  // A payload put through one object is read and released through both.
  const auto data = bytes_of(7, 1000);
  const Result<PayloadRef> ref = a.payload_put(data);
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();
  EXPECT_EQ(b.payloads_live(), 1u);
  const Result<std::span<const std::byte>> got = b.payload_get(*ref);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_TRUE(std::equal(got->begin(), got->end(), data.begin(), data.end()));
  EXPECT_EQ(b.payload_release(ra, *ref).code(), StatusCode::kNotFound) << "ra belongs to a";
  EXPECT_TRUE(a.payload_release(ra, *ref).ok());
  EXPECT_TRUE(b.payload_get(*ref).ok()) << "rb still holds it";
  EXPECT_TRUE(b.payload_release(rb, *ref).ok());
  EXPECT_EQ(a.payloads_live(), 0u);
  EXPECT_EQ(a.payload_get(*ref).status().code(), StatusCode::kNotFound);
}

// Two objects, a thread each, append and apply concurrently over a small log that fills often;
// both must see the same sequence.
TEST_P(ShmModeTest, TwoObjectsConcurrently) {
  Fixture f = make_log(small(16), small_shm(GetParam()));
  ASSERT_NE(f.log, nullptr);
  ShmAttachOptions opts = attach_options(0, GetParam(), 1);
  Result<std::unique_ptr<ShmLog>> peer = ShmLog::attach(f.region->bytes(), opts);
  ASSERT_TRUE(peer.ok()) << peer.status().to_string();
  ShmLog* logs[2] = {f.log.get(), peer->get()};
  ReplicaId ids[2] = {logs[0]->register_replica().value(), logs[1]->register_replica().value()};
  constexpr uint64_t kPerThread = 3000;
  std::vector<uint64_t> seen[2];
  std::string errors[2];
  std::atomic<int> done{0};
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        auto record = [&](const Entry& e) {
          uint64_t v = 0;
          std::memcpy(&v, e.data.data(), std::min(e.data.size(), sizeof(v)));
          seen[t].push_back(v);
        };
        for (uint64_t i = 0; i < kPerThread; ++i) {
          const uint64_t v = (uint64_t(t) << 32) | i;
          const std::span<const std::byte> entry = std::as_bytes(std::span<const uint64_t>(&v, 1));
          const std::span<const std::byte> batch[] = {entry};
          if (Result<LogIndex> r = logs[t]->append(ids[t], batch, record); !r.ok()) {
            errors[t] = r.status().to_string();
            return;
          }
          if (i % 2 == 0) {
            if (Result<LogIndex> r = logs[t]->exec(ids[t], record); !r.ok()) errors[t] = r.status().to_string();
          }
        }
        // Keep applying until the other side is done too: it may be waiting for this replica
        // (nobody else can apply for it: it belongs to this object).
        done.fetch_add(1, std::memory_order_acq_rel);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (done.load(std::memory_order_acquire) < 2 && std::chrono::steady_clock::now() < deadline) {
          if (Result<LogIndex> r = logs[t]->exec(ids[t], record); !r.ok()) errors[t] = r.status().to_string();
          std::this_thread::yield();
        }
      });
    }
    for (std::thread& th : threads) th.join();
  }
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  for (int t = 0; t < 2; ++t) {
    ASSERT_TRUE(logs[t]->exec(ids[t], [&](const Entry& e) {
                  uint64_t v = 0;
                  std::memcpy(&v, e.data.data(), sizeof(v));
                  seen[t].push_back(v);
                }).ok());
  }
  ASSERT_EQ(seen[0].size(), 2 * kPerThread);
  EXPECT_EQ(seen[0], seen[1]);
  uint64_t next[2] = {0, 0};
  for (uint64_t v : seen[0]) {
    const uint64_t t = v >> 32;
    ASSERT_LT(t, 2u);
    ASSERT_EQ(v & 0xffffffff, next[t]) << "thread " << t << " out of order";
    ++next[t];
  }
}

// ---- create() and region_bytes() --------------------------------------------------------------

TEST(ShmLogTest, RegionBytesIsExact) {
  for (uint32_t slots : {2u, 8u, 1024u}) {
    for (uint32_t entry : {1u, 32u, 100u, 4096u}) {
      LogOptions o = small(slots);
      o.entry_size = entry;
      const ShmOptions s = small_shm();
      const uint64_t bytes = ShmLog::region_bytes(o, s);
      ASSERT_GT(bytes, 0u);
      Result<std::shared_ptr<MappedRegion>> region = MappedRegion::create(MappedRegion::Kind::kMemfd, bytes);
      ASSERT_TRUE(region.ok()) << region.status().to_string();
      const std::span<std::byte> all = (*region)->bytes();
      Result<std::unique_ptr<ShmLog>> short_by_one = ShmLog::create(all.first(bytes - 1), o, s);
      EXPECT_EQ(short_by_one.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(short_by_one.status().message().find(std::to_string(bytes)), std::string::npos)
          << "the error should name the size needed: " << short_by_one.status().to_string();
      Result<std::unique_ptr<ShmLog>> exact = ShmLog::create(all, o, s);
      ASSERT_TRUE(exact.ok()) << exact.status().to_string();
      // The last payload slot's last byte is inside the region (the arena is used to its end).
      const ReplicaId r = (*exact)->register_replica().value();
      std::vector<PayloadRef> refs;
      for (uint32_t i = 0; i < o.payload_slots; ++i) {
        const auto data = bytes_of(i, (*exact)->geometry().payload_slot_bytes);
        refs.push_back((*exact)->payload_put(data).value());
      }
      for (const PayloadRef& ref : refs) EXPECT_TRUE((*exact)->payload_release(r, ref).ok());
      // And the attach side agrees: one byte less is a truncated region.
      EXPECT_EQ(ShmLog::attach(all.first(bytes - 1), attach_options()).status().code(), StatusCode::kInvalidArgument);
      EXPECT_TRUE(ShmLog::attach(all, attach_options()).ok());
    }
  }
}

TEST(ShmLogTest, CreateRejectsBadOptions) {
  struct Case {
    const char* what;
    std::function<void(LogOptions&, ShmOptions&)> set;
    StatusCode code;
  };
  const std::vector<Case> cases = {
      {"slot_count 3", [](LogOptions& o, ShmOptions&) { o.slot_count = 3; }, StatusCode::kInvalidArgument},
      {"slot_count 1", [](LogOptions& o, ShmOptions&) { o.slot_count = 1; }, StatusCode::kInvalidArgument},
      {"entry_size 0", [](LogOptions& o, ShmOptions&) { o.entry_size = 0; }, StatusCode::kInvalidArgument},
      {"entry_size 4097", [](LogOptions& o, ShmOptions&) { o.entry_size = 4097; }, StatusCode::kInvalidArgument},
      {"max_replicas 0", [](LogOptions& o, ShmOptions&) { o.max_replicas = 0; }, StatusCode::kInvalidArgument},
      {"max_replicas 65", [](LogOptions& o, ShmOptions&) { o.max_replicas = 65; }, StatusCode::kInvalidArgument},
      {"payload_slots 0", [](LogOptions& o, ShmOptions&) { o.payload_slots = 0; }, StatusCode::kInvalidArgument},
      {"arena under a line per slot", [](LogOptions&, ShmOptions& s) { s.payload_bytes = 4 * 63; },
       StatusCode::kInvalidArgument},
      {"mode 0", [](LogOptions&, ShmOptions& s) { s.mode = static_cast<ShmMode>(0); }, StatusCode::kInvalidArgument},
  };
  Result<std::shared_ptr<MappedRegion>> region = MappedRegion::create(MappedRegion::Kind::kMemfd, 1 << 20);
  ASSERT_TRUE(region.ok()) << region.status().to_string();
  for (const Case& c : cases) {
    LogOptions o = small();
    ShmOptions s = small_shm();
    c.set(o, s);
    EXPECT_EQ(ShmLog::region_bytes(o, s), 0u) << c.what;
    Result<std::unique_ptr<ShmLog>> log = ShmLog::create((*region)->bytes(), o, s);
    EXPECT_EQ(log.status().code(), c.code) << c.what << ": " << log.status().to_string();
  }
  // A region that does not start on a 128-byte line.
  Result<std::unique_ptr<ShmLog>> misaligned = ShmLog::create((*region)->bytes().subspan(64), small(), small_shm());
  EXPECT_EQ(misaligned.status().code(), StatusCode::kInvalidArgument) << misaligned.status().to_string();
}

// ---- Header validation ------------------------------------------------------------------------

// Flipping any single bit of the header makes attach fail with a clear error: the magic and the
// version are named, everything else is caught by the checksum (or the reserved-word check).
TEST(ShmLogTest, AttachRejectsEveryFlippedHeaderBit) {
  Fixture f = make_log();
  ASSERT_NE(f.log, nullptr);
  const shm::ShmHeader good = read_header(*f.region);
  for (size_t byte = 0; byte < sizeof(shm::ShmHeader); ++byte) {
    for (unsigned bit : {0u, 7u}) {
      shm::ShmHeader bad = good;
      reinterpret_cast<unsigned char*>(&bad)[byte] ^= static_cast<unsigned char>(1u << bit);
      write_header(*f.region, bad);
      const Result<std::unique_ptr<ShmLog>> log = ShmLog::attach(f.region->bytes(), attach_options());
      ASSERT_FALSE(log.ok()) << "byte " << byte << " bit " << bit << " flipped, yet attach succeeded";
      const Status& st = log.status();
      const std::string& m = st.message();
      if (byte < offsetof(shm::ShmHeader, layout_version)) {
        EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << byte << ": " << st.to_string();
        EXPECT_NE(m.find("magic"), std::string::npos) << st.to_string();
      } else if (byte < offsetof(shm::ShmHeader, header_bytes)) {
        EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << byte << ": " << st.to_string();
        EXPECT_NE(m.find("version"), std::string::npos) << st.to_string();
      } else if (byte < offsetof(shm::ShmHeader, reserved)) {
        EXPECT_EQ(st.code(), StatusCode::kDataLoss) << byte << ": " << st.to_string();
        EXPECT_NE(m.find("checksum"), std::string::npos) << st.to_string();
      } else {
        EXPECT_EQ(st.code(), StatusCode::kDataLoss) << byte << ": " << st.to_string();
        EXPECT_NE(m.find("reserved"), std::string::npos) << st.to_string();
      }
    }
  }
  write_header(*f.region, good);
  EXPECT_TRUE(ShmLog::attach(f.region->bytes(), attach_options()).ok());
}

// Headers whose checksum is valid but whose contents are wrong (a creator with another idea of
// the format, or a forged checksum) are still rejected, each with an error naming the field.
TEST(ShmLogTest, AttachRejectsForgedHeaders) {
  Fixture f = make_log();
  ASSERT_NE(f.log, nullptr);
  const shm::ShmHeader good = read_header(*f.region);
  struct Case {
    const char* what;
    std::function<void(shm::ShmHeader&)> set;
    StatusCode code;
    const char* names;  // a word the message must contain
  };
  const uint64_t size = f.region->bytes().size();
  const std::vector<Case> cases = {
      {"magic 0", [](shm::ShmHeader& h) { h.magic = 0; }, StatusCode::kInvalidArgument, "no shm log"},
      {"wrong magic", [](shm::ShmHeader& h) { h.magic = 0x1234; }, StatusCode::kInvalidArgument, "magic"},
      {"next version", [](shm::ShmHeader& h) { h.layout_version = shm::kLayoutVersion + 1; }, StatusCode::kInvalidArgument, "version"},
      {"header_bytes 64", [](shm::ShmHeader& h) { h.header_bytes = 64; }, StatusCode::kDataLoss, "bytes"},
      {"log_count 2", [](shm::ShmHeader& h) { h.log_count = 2; }, StatusCode::kDataLoss, "log_count"},
      {"entry_size 0", [](shm::ShmHeader& h) { h.entry_size = 0; }, StatusCode::kDataLoss, "entry_size"},
      {"entry_size 4097", [](shm::ShmHeader& h) { h.entry_size = 4097; }, StatusCode::kDataLoss, "entry_size"},
      {"slot_count 3", [](shm::ShmHeader& h) { h.slot_count = 3; }, StatusCode::kDataLoss, "slot_count"},
      {"slot_count 0", [](shm::ShmHeader& h) { h.slot_count = 0; }, StatusCode::kDataLoss, "slot_count"},
      {"max_replicas 65", [](shm::ShmHeader& h) { h.max_replicas = 65; }, StatusCode::kDataLoss, "max_replicas"},
      {"payload_slots 0", [](shm::ShmHeader& h) { h.payload_slots = 0; }, StatusCode::kDataLoss, "payload_slots"},
      {"payload_slot_bytes 65", [](shm::ShmHeader& h) { h.payload_slot_bytes = 65; }, StatusCode::kDataLoss,
       "payload slot"},
      {"payload_slot_bytes 2^62", [](shm::ShmHeader& h) { h.payload_slot_bytes = uint64_t{1} << 62; },
       StatusCode::kDataLoss, "payload slot"},
      {"slot_stride", [](shm::ShmHeader& h) { h.slot_stride += 64; }, StatusCode::kDataLoss, "slot_stride"},
      {"control_offset", [](shm::ShmHeader& h) { h.control_offset += 128; }, StatusCode::kDataLoss, "control_offset"},
      {"slots_offset", [](shm::ShmHeader& h) { h.slots_offset -= 128; }, StatusCode::kDataLoss, "slots_offset"},
      {"payload_meta_offset", [](shm::ShmHeader& h) { h.payload_meta_offset = ~0ull; }, StatusCode::kDataLoss,
       "payload_meta_offset"},
      {"payload_data_offset", [](shm::ShmHeader& h) { h.payload_data_offset = 0; }, StatusCode::kDataLoss,
       "payload_data_offset"},
      {"region_bytes", [](shm::ShmHeader& h) { h.region_bytes += 128; }, StatusCode::kDataLoss, "region_bytes"},
      {"mode 0", [](shm::ShmHeader& h) { h.mode = 0; }, StatusCode::kDataLoss, "mode"},
      {"mode 99", [](shm::ShmHeader& h) { h.mode = 99; }, StatusCode::kDataLoss, "mode"},
      {"noncoherent, attached as coherent",
       [](shm::ShmHeader& h) { h.mode = static_cast<uint32_t>(ShmMode::kNoncoherent); }, StatusCode::kInvalidArgument,
       "noncoherent"},
      {"another cluster", [](shm::ShmHeader& h) { h.cluster_id = kCluster + 1; }, StatusCode::kInvalidArgument,
       "cluster"},
      // A consistent geometry that needs more than the region has: a truncated mapping.
      {"geometry larger than the region",
       [size](shm::ShmHeader& h) {
         const shm::Geometry g =
             shm::plan_geometry(h.entry_size, h.slot_count * 2, h.max_replicas, h.payload_slots, h.payload_slot_bytes)
                 .value();
         ASSERT_GT(g.region_bytes, size);
         h = shm::make_header(g, ShmMode::kCoherent, h.cluster_id, h.epoch, h.log_id);
       },
       StatusCode::kInvalidArgument, "needs"},
  };
  for (const Case& c : cases) {
    shm::ShmHeader bad = good;
    c.set(bad);
    bad.checksum = shm::header_checksum(bad);  // forged: the checksum matches the bad contents
    write_header(*f.region, bad);
    const Result<std::unique_ptr<ShmLog>> log = ShmLog::attach(f.region->bytes(), attach_options());
    ASSERT_FALSE(log.ok()) << c.what << ": attach succeeded";
    EXPECT_EQ(log.status().code(), c.code) << c.what << ": " << log.status().to_string();
    EXPECT_NE(log.status().message().find(c.names), std::string::npos) << c.what << ": " << log.status().to_string();
  }
  write_header(*f.region, good);
  EXPECT_TRUE(ShmLog::attach(f.region->bytes(), attach_options()).ok());
}

TEST(ShmLogTest, AttachRejectsTruncatedMisalignedAndForeignRegions) {
  Fixture f = make_log();
  ASSERT_NE(f.log, nullptr);
  const std::span<std::byte> all = f.region->bytes();
  const uint64_t need = f.log->geometry().region_bytes;
  struct Case {
    const char* what;
    std::span<std::byte> region;
    ShmAttachOptions options;
    StatusCode code;
  };
  ShmAttachOptions other_cluster = attach_options();
  other_cluster.cluster_id = kCluster + 1;
  const std::vector<Case> cases = {
      {"empty region", all.first(0), attach_options(), StatusCode::kInvalidArgument},
      {"half a header", all.first(64), attach_options(), StatusCode::kInvalidArgument},
      {"header only", all.first(sizeof(shm::ShmHeader)), attach_options(), StatusCode::kInvalidArgument},
      {"one byte short", all.first(need - 1), attach_options(), StatusCode::kInvalidArgument},
      {"misaligned", all.subspan(8), attach_options(), StatusCode::kInvalidArgument},
      {"another cluster", all, other_cluster, StatusCode::kInvalidArgument},
      {"another epoch", all, attach_options(43), StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    const Result<std::unique_ptr<ShmLog>> log = ShmLog::attach(c.region, c.options);
    EXPECT_EQ(log.status().code(), c.code) << c.what << ": " << log.status().to_string();
  }
  EXPECT_TRUE(ShmLog::attach(all.first(need), attach_options(42)).ok());
  EXPECT_TRUE(ShmLog::attach(all, attach_options(0)).ok()) << "epoch 0 accepts any epoch";

  // A region nobody created (all zero), and one full of garbage.
  Result<std::shared_ptr<MappedRegion>> blank = MappedRegion::create(MappedRegion::Kind::kMemfd, need);
  ASSERT_TRUE(blank.ok());
  EXPECT_EQ(ShmLog::attach((*blank)->bytes(), attach_options()).status().code(), StatusCode::kInvalidArgument);
  std::memset((*blank)->bytes().data(), 0xa5, need);
  EXPECT_EQ(ShmLog::attach((*blank)->bytes(), attach_options()).status().code(), StatusCode::kInvalidArgument);
}

// ---- Corrupt contents -------------------------------------------------------------------------

// An entry whose length or writer is out of range is kDataLoss, not a crash or a bad span; ltail
// stays at it, the entries before it are applied, and a repaired entry is applied normally.
TEST(ShmLogTest, CorruptEntryIsDataLoss) {
  Fixture f = make_log();
  ASSERT_NE(f.log, nullptr);
  ShmLog& log = *f.log;
  const ReplicaId r = log.register_replica().value();
  for (uint64_t i = 0; i < 3; ++i) ASSERT_EQ(append_one(log, r, bytes_of(i, 10)).value_or(~0ull), i);
  std::byte* slot1 = f.region->bytes().data() + log.geometry().slots_offset + log.geometry().slot_stride;
  auto* header = reinterpret_cast<shm::SlotHeader*>(slot1);
  struct Case {
    const char* what;
    uint32_t writer;
    uint32_t length;
  };
  const Case cases[] = {
      {"length 0", r, 0},
      {"length entry_size + 1", r, 33},
      {"length 2^32 - 1", r, ~0u},
      {"writer max_replicas", 4, 10},
      {"writer 2^32 - 1", ~0u, 10},
  };
  uint64_t applied = 0;
  for (const Case& c : cases) {
    header->writer = c.writer;
    header->length = c.length;
    Result<LogIndex> lt = log.exec(r, [&](const Entry&) { ++applied; });
    EXPECT_EQ(lt.status().code(), StatusCode::kDataLoss) << c.what << ": " << lt.status().to_string();
    EXPECT_EQ(log.ltail(r).value_or(~0ull), 1u) << c.what;
  }
  EXPECT_EQ(applied, 1u) << "only the entry before the corrupt one";
  header->writer = r;
  header->length = 10;
  EXPECT_EQ(log.exec(r, [&](const Entry&) { ++applied; }).value_or(0), 3u);
  EXPECT_EQ(applied, 3u);

  // A marker from a later lap (the slot was overwritten under this replica): kDataLoss, no hang.
  ASSERT_EQ(append_one(log, r, bytes_of(3, 10)).value_or(~0ull), 3u);
  auto* slot3 = reinterpret_cast<shm::SlotHeader*>(f.region->bytes().data() + log.geometry().slots_offset +
                                                    3 * log.geometry().slot_stride);
  slot3->alive = 5;
  EXPECT_EQ(log.exec(r, [](const Entry&) {}).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(log.ltail(r).value_or(~0ull), 3u);
}

// Payload metadata written by someone else is checked before the bytes are handed out.
TEST(ShmLogTest, CorruptPayloadMetadataIsNotFound) {
  Fixture f = make_log();
  ASSERT_NE(f.log, nullptr);
  ShmLog& log = *f.log;
  const ReplicaId r = log.register_replica().value();
  const auto data = bytes_of(1, 100);
  const PayloadRef ref = log.payload_put(data).value();
  auto* meta = reinterpret_cast<shm::PayloadMeta*>(f.region->bytes().data() + log.geometry().payload_meta_offset) +
               ref.where;
  // A length beyond the slot, even if the ref agrees with it, never becomes a span.
  meta->length = log.geometry().payload_slot_bytes + 1;
  PayloadRef forged = ref;
  forged.length = static_cast<uint32_t>(meta->length);
  EXPECT_EQ(log.payload_get(forged).status().code(), StatusCode::kNotFound);
  meta->length = 100;
  EXPECT_TRUE(log.payload_get(ref).ok());
  // Refs out of range or of another generation.
  EXPECT_EQ(log.payload_get({log.geometry().payload_slots, 100, ref.generation}).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(log.payload_get({ref.where, 100, ref.generation + 1}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(log.payload_release(r, {ref.where, 100, ref.generation + 1}).code(), StatusCode::kNotFound);
  EXPECT_TRUE(log.payload_release(r, ref).ok());
  // Payloads larger than a slot are refused up front.
  const auto big = bytes_of(2, log.geometry().payload_slot_bytes + 1);
  EXPECT_EQ(log.payload_put(big).status().code(), StatusCode::kResourceExhausted);
}

// ---- Membership -------------------------------------------------------------------------------

// A replica that leaves drops out of the GC minimum and releases its payloads; its id is reused
// by the next registration, which starts at head.
TEST(ShmLogTest, DeregisterLeavesTheGcMinimum) {
  Fixture f = make_log(small(8));
  ASSERT_NE(f.log, nullptr);
  ShmLog& log = *f.log;
  const ReplicaId a = log.register_replica().value();
  const ReplicaId b = log.register_replica().value();
  const ReplicaId c = log.register_replica().value();
  const auto data = bytes_of(9, 64);
  const PayloadRef ref = log.payload_put(data).value();
  for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(append_one(log, a, bytes_of(i, 8)).ok());
  ASSERT_EQ(log.exec(a, [](const Entry&) {}).value_or(0), 8u);
  ASSERT_EQ(log.exec(c, [](const Entry&) {}).value_or(0), 8u);
  EXPECT_EQ(log.head(), 0u) << "b holds the head";
  EXPECT_EQ(log.deregister_replica(b).code(), StatusCode::kOk);
  EXPECT_EQ(log.head(), 8u);
  EXPECT_EQ(log.ltail(b).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(log.exec(b, [](const Entry&) {}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(log.deregister_replica(b).code(), StatusCode::kNotFound);
  // The log was full with b at 0; without b it has room again.
  EXPECT_EQ(append_one(log, a, bytes_of(8, 8)).value_or(~0ull), 8u);
  // b's payload hold is gone: a and c release it and it is freed.
  EXPECT_TRUE(log.payload_release(a, ref).ok());
  EXPECT_TRUE(log.payload_release(c, ref).ok());
  EXPECT_EQ(log.payloads_live(), 0u);
  // The id comes back, starting at head.
  const ReplicaId again = log.register_replica().value();
  EXPECT_EQ(again, b);
  EXPECT_EQ(log.ltail(again).value_or(~0ull), 8u);
  std::vector<LogIndex> seen;
  EXPECT_EQ(log.exec(again, [&](const Entry& e) { seen.push_back(e.index); }).value_or(0), 9u);
  EXPECT_EQ(seen, (std::vector<LogIndex>{8}));
}

// The replica registration lines record the owner (for fencing: tests/logs/shm_fencing_test.cc).
TEST(ShmLogTest, RegistrationIsRecordedInTheRegion) {
  Fixture f = make_log();
  ASSERT_NE(f.log, nullptr);
  const ReplicaId r = f.log->register_replica().value();
  const auto* line = reinterpret_cast<const shm::ReplicaLine*>(f.region->bytes().data() +
                                                               f.log->geometry().replicas_offset) +
                     r;
  EXPECT_EQ(line->state, static_cast<uint64_t>(shm::ReplicaState::kActive));
  EXPECT_EQ(line->owner_pid, static_cast<uint64_t>(getpid()));
  EXPECT_EQ(line->incarnation, 1u);
}

// ---- The Access seam --------------------------------------------------------------------------

TEST(ShmLogTest, ReadModifyWritesPerOperation) {
  using shm_test::CountingAccess;
  using CountingLog = BasicShmLog<CountingAccess>;
  const LogOptions o = small(64);
  const ShmOptions s = small_shm();
  Result<std::shared_ptr<MappedRegion>> region =
      MappedRegion::create(MappedRegion::Kind::kMemfd, CountingLog::region_bytes(o, s));
  ASSERT_TRUE(region.ok());
  std::unique_ptr<CountingLog> log = CountingLog::create((*region)->bytes(), o, s).value();
  auto rmws_of = [](auto&& f) {
    const uint64_t before = CountingAccess::rmws.load(std::memory_order_relaxed);
    f();
    return CountingAccess::rmws.load(std::memory_order_relaxed) - before;
  };
  ReplicaId r = 0;
  // Joining: GC lock, incarnation, active mask (the lock's release is a store).
  EXPECT_EQ(rmws_of([&] { r = log->register_replica().value(); }), 3u);
  const auto e = bytes_of(1, 16);
  const std::span<const std::byte> batch[] = {e, e, e};
  // An append with room: one CAS on the tail for the whole batch, and one CAS per entry on its
  // alive marker (a fencer's no-op and the publish must not both win a slot).
  EXPECT_EQ(rmws_of([&] { ASSERT_TRUE(log->append(r, batch, [](const Entry&) {}).ok()); }), 4u);
  // exec: one CAS raising ctail and one moving the ltail (a fenced zombie's fails); none when
  // there is nothing to apply.
  EXPECT_EQ(rmws_of([&] { ASSERT_TRUE(log->exec(r, [](const Entry&) {}).ok()); }), 2u);
  EXPECT_EQ(rmws_of([&] { ASSERT_TRUE(log->exec(r, [](const Entry&) {}).ok()); }), 0u);
  // Reads never write.
  EXPECT_EQ(rmws_of([&] {
              (void)log->head();
              (void)log->ctail();
              (void)log->is_synced_for_reads(r, 3);
            }),
            0u);
  // Payload put: the search hint, the slot claim, the live count; release: the mask, the count.
  PayloadRef ref{};
  EXPECT_EQ(rmws_of([&] { ref = log->payload_put(e).value(); }), 3u);
  EXPECT_EQ(rmws_of([&] { ASSERT_TRUE(log->payload_release(r, ref).ok()); }), 2u);
}

// ---- Noncoherent mode ---------------------------------------------------------------------------

// attach() checks the mode against the header and the client slot; both are clear errors.
TEST(ShmLogTest, NoncoherentAttachChecksModeAndClient) {
  Fixture nc = make_log(small(), small_shm(ShmMode::kNoncoherent));
  ASSERT_NE(nc.log, nullptr);
  EXPECT_EQ(nc.log->mode(), ShmMode::kNoncoherent);
  EXPECT_TRUE(nc.log->sequencer_running());
  const std::span<std::byte> bytes = nc.region->bytes();
  Result<std::unique_ptr<ShmLog>> as_coherent = ShmLog::attach(bytes, attach_options(0, ShmMode::kCoherent, 1));
  EXPECT_EQ(as_coherent.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(as_coherent.status().message().find("noncoherent"), std::string::npos) << as_coherent.status().to_string();
  for (uint32_t bad : {0u, shm::kMaxClients}) {
    Result<std::unique_ptr<ShmLog>> r = ShmLog::attach(bytes, attach_options(0, ShmMode::kNoncoherent, bad));
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << "client " << bad;
    EXPECT_NE(r.status().message().find("client"), std::string::npos) << r.status().to_string();
  }
  Result<std::unique_ptr<ShmLog>> ok = ShmLog::attach(bytes, attach_options(0, ShmMode::kNoncoherent, 5));
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ((*ok)->client(), 5u);
  EXPECT_FALSE((*ok)->sequencer_running());

  Fixture co = make_log();
  ASSERT_NE(co.log, nullptr);
  Result<std::unique_ptr<ShmLog>> as_nc = ShmLog::attach(co.region->bytes(), attach_options(0, ShmMode::kNoncoherent, 1));
  EXPECT_EQ(as_nc.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(as_nc.status().message().find("coherent"), std::string::npos) << as_nc.status().to_string();
}

// A dead sequencer never hangs anyone: appends, registrations and payload puts fail with
// kDeadlineExceeded within 2 x full_timeout, and nothing was appended.
TEST(ShmLogTest, NoncoherentDeadSequencerFailsBounded) {
  LogOptions o = small(8);
  o.full_timeout = std::chrono::milliseconds(200);
  Fixture f = make_log(o, small_shm(ShmMode::kNoncoherent));
  ASSERT_NE(f.log, nullptr);
  ShmAttachOptions a = attach_options(0, ShmMode::kNoncoherent, 2);
  a.full_timeout = std::chrono::milliseconds(200);
  Result<std::unique_ptr<ShmLog>> peer = ShmLog::attach(f.region->bytes(), a);
  ASSERT_TRUE(peer.ok()) << peer.status().to_string();
  const ReplicaId r = (*peer)->register_replica().value();
  ASSERT_EQ(append_one(**peer, r, bytes_of(1, 8)).value_or(~0ull), 0u);
  f.log->stop_sequencer();
  EXPECT_FALSE(f.log->sequencer_running());
  auto timed = [](auto&& op) {
    const auto start = std::chrono::steady_clock::now();
    const StatusCode code = op();
    return std::pair(code, std::chrono::steady_clock::now() - start);
  };
  const auto [append_code, append_time] = timed([&] { return append_one(**peer, r, bytes_of(2, 8)).status().code(); });
  EXPECT_EQ(append_code, StatusCode::kDeadlineExceeded);
  EXPECT_GE(append_time, std::chrono::milliseconds(200));
  EXPECT_LT(append_time, std::chrono::seconds(3));
  const auto [join_code, join_time] = timed([&] { return (*peer)->register_replica().status().code(); });
  EXPECT_EQ(join_code, StatusCode::kDeadlineExceeded);
  EXPECT_LT(join_time, std::chrono::seconds(3));
  const auto data = bytes_of(3, 100);
  EXPECT_EQ((*peer)->payload_put(data).status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ((*peer)->tail(), 1u) << "nothing was appended";
  // Reads still work: they need no sequencer.
  std::vector<LogIndex> seen;
  EXPECT_EQ((*peer)->exec(r, [&](const Entry& e) { seen.push_back(e.index); }).value_or(0), 1u);
  EXPECT_EQ(seen, (std::vector<LogIndex>{0}));
}

// Every kind of operation, through two objects (creator and client 3), in noncoherent mode:
// joins, appends that fill the log (apply_own, the hook, a timeout and its withdrawal), exec,
// reads, payloads (put, get, release, reuse), leaves. Each step: zero read-modify-writes.
TEST(ShmLogTest, NoncoherentOperationsMakeNoReadModifyWrite) {
  using shm_test::CountingNoncoherentAccess;
  LogOptions o = small(8);
  o.full_timeout = std::chrono::milliseconds(300);
  std::atomic<int> hooks{0};
  ShmOptions s = small_shm(ShmMode::kNoncoherent);
  Result<std::shared_ptr<MappedRegion>> region =
      MappedRegion::create(MappedRegion::Kind::kMemfd, NoncoherentCountingLog::region_bytes(o, s));
  ASSERT_TRUE(region.ok());
  std::unique_ptr<NoncoherentCountingLog> log = NoncoherentCountingLog::create((*region)->bytes(), o, s).value();
  ShmAttachOptions a = attach_options(0, ShmMode::kNoncoherent, 3);
  a.full_timeout = std::chrono::milliseconds(300);
  a.on_lagging = [&hooks](uint32_t, ReplicaId) { hooks.fetch_add(1, std::memory_order_relaxed); };
  std::unique_ptr<NoncoherentCountingLog> peer = NoncoherentCountingLog::attach((*region)->bytes(), a).value();
  auto rmws_of = [](auto&& f) {
    const uint64_t before = CountingNoncoherentAccess::rmws.load(std::memory_order_relaxed);
    f();
    return CountingNoncoherentAccess::rmws.load(std::memory_order_relaxed) - before;
  };
  ReplicaId ra = 0, rb = 0;
  EXPECT_EQ(rmws_of([&] { ra = log->register_replica().value(); }), 0u) << "join";
  EXPECT_EQ(rmws_of([&] { rb = peer->register_replica().value(); }), 0u) << "join";
  EXPECT_NE(ra, rb);
  EXPECT_EQ(log->active_replicas(), peer->active_replicas());
  const auto e = bytes_of(1, 16);
  const std::span<const std::byte> batch[] = {e, e, e};
  uint64_t applied_own = 0;
  auto count_own = [&](const Entry&) { ++applied_own; };
  EXPECT_EQ(rmws_of([&] { ASSERT_EQ(peer->append(rb, batch, count_own).value_or(~0ull), 0u); }), 0u) << "append";
  EXPECT_EQ(rmws_of([&] { ASSERT_EQ(log->append(ra, batch, count_own).value_or(~0ull), 3u); }), 0u) << "append";
  EXPECT_EQ(rmws_of([&] { ASSERT_EQ(log->exec(ra, [](const Entry&) {}).value_or(0), 6u); }), 0u) << "exec";
  EXPECT_EQ(rmws_of([&] {
              EXPECT_EQ(peer->ctail(), 6u);
              EXPECT_EQ(peer->tail(), 6u);
              EXPECT_EQ(peer->head(), 0u);
              EXPECT_FALSE(peer->is_synced_for_reads(rb, 6));
              EXPECT_TRUE(log->is_synced_for_reads(ra, 6));
            }),
            0u)
      << "reads";
  // rb lags at 0 with 6 of 8 slots used: ra's batch of 3 waits (hook on rb), times out, and its
  // withdrawn request is never granted.
  EXPECT_EQ(rmws_of([&] {
              EXPECT_EQ(log->append(ra, batch, count_own).status().code(), StatusCode::kDeadlineExceeded);
            }),
            0u)
      << "full";
  EXPECT_EQ(log->tail(), 6u);
  // rb's own append applies rb's entries (apply_own) when it finds the log full, then fits.
  EXPECT_EQ(rmws_of([&] { ASSERT_EQ(peer->append(rb, batch, count_own).value_or(~0ull), 6u); }), 0u)
      << "append through apply_own";
  EXPECT_EQ(applied_own, 6u);
  EXPECT_EQ(peer->ltail(rb).value_or(0), 6u);
  // Payloads: put (a slot granted by the sequencer), get, release by both, reuse of the slot.
  const auto data = bytes_of(5, 1000);
  PayloadRef ref{};
  EXPECT_EQ(rmws_of([&] { ref = peer->payload_put(data).value(); }), 0u) << "payload_put";
  EXPECT_EQ(rmws_of([&] {
              const Result<std::span<const std::byte>> got = log->payload_get(ref);
              ASSERT_TRUE(got.ok()) << got.status().to_string();
              EXPECT_TRUE(std::equal(got->begin(), got->end(), data.begin(), data.end()));
              EXPECT_EQ(log->payloads_live(), 1u);
            }),
            0u)
      << "payload_get";
  EXPECT_EQ(rmws_of([&] { EXPECT_TRUE(log->payload_release(ra, ref).ok()); }), 0u) << "payload_release";
  EXPECT_EQ(log->payload_release(ra, ref).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(peer->payload_get(ref).ok()) << "rb still holds it";
  EXPECT_EQ(rmws_of([&] { EXPECT_TRUE(peer->payload_release(rb, ref).ok()); }), 0u) << "payload_release";
  EXPECT_EQ(log->payloads_live(), 0u);
  EXPECT_EQ(log->payload_get(ref).status().code(), StatusCode::kNotFound);
  std::vector<PayloadRef> refs;
  EXPECT_EQ(rmws_of([&] {
              for (uint32_t i = 0; i < o.payload_slots; ++i) refs.push_back(log->payload_put(data).value());
              EXPECT_EQ(log->payload_put(data).status().code(), StatusCode::kResourceExhausted);
            }),
            0u)
      << "payload slots reused";
  // Leaving drops the replica's payload holds and its place in the GC minimum.
  EXPECT_EQ(rmws_of([&] { EXPECT_TRUE(peer->deregister_replica(rb).ok()); }), 0u) << "leave";
  EXPECT_EQ(log->active_replicas(), uint64_t{1} << ra);
  for (const PayloadRef& r : refs) EXPECT_TRUE(log->payload_release(ra, r).ok());
  EXPECT_EQ(log->payloads_live(), 0u);
  EXPECT_EQ(rmws_of([&] { ASSERT_TRUE(log->exec(ra, [](const Entry&) {}).ok()); }), 0u);
  EXPECT_EQ(log->head(), 9u);
  // The id comes back, at head.
  EXPECT_EQ(rmws_of([&] { EXPECT_EQ(peer->register_replica().value_or(99), rb); }), 0u) << "re-join";
  EXPECT_EQ(peer->ltail(rb).value_or(0), 9u);
  EXPECT_GT(hooks.load(), -1);  // (the hook ran on the creator's side, which has no hook)
  EXPECT_EQ(CountingNoncoherentAccess::rmws.load(std::memory_order_relaxed), 0u);
}

// Crash fencing in noncoherent mode (shm_log.h, "Crash fencing, noncoherent mode") through the
// counting policy: a replica that stops mid-batch is fenced by the sequencer (its heartbeat
// stayed unchanged for the lease), its hole becomes a no-op once its grant may no longer be
// published, its payload holds count as released (while fenced) and are released in its own
// marks (once its id is free), the zombie is refused and acknowledges, the id comes back, and an
// idle replica holding a full log is fenced too. Not one read-modify-write on the region.
TEST(ShmLogTest, NoncoherentFencingMakesNoReadModifyWrite) {
  using shm_test::CountingNoncoherentAccess;
  LogOptions o = small(8);
  o.full_timeout = std::chrono::seconds(20);
  ShmOptions s = small_shm(ShmMode::kNoncoherent);
  s.lease = std::chrono::milliseconds(100);
  Result<std::shared_ptr<MappedRegion>> region =
      MappedRegion::create(MappedRegion::Kind::kMemfd, NoncoherentCountingLog::region_bytes(o, s));
  ASSERT_TRUE(region.ok());
  std::unique_ptr<NoncoherentCountingLog> log = NoncoherentCountingLog::create((*region)->bytes(), o, s).value();
  ShmAttachOptions a = attach_options(0, ShmMode::kNoncoherent, 3);
  a.full_timeout = std::chrono::seconds(20);
  a.lease = std::chrono::seconds(60);  // times the sequencer only
  std::unique_ptr<NoncoherentCountingLog> peer = NoncoherentCountingLog::attach((*region)->bytes(), a).value();
  const uint64_t rmws_before = CountingNoncoherentAccess::rmws.load(std::memory_order_relaxed);
  const uint64_t stores_before = CountingNoncoherentAccess::stores.load(std::memory_order_relaxed);

  const ReplicaId ra = log->register_replica().value();
  const ReplicaId rb = peer->register_replica().value();
  const auto data = bytes_of(7, 500);
  const PayloadRef early = log->payload_put(data).value();  // held by ra and rb
  const PayloadRef late = log->payload_put(data).value();
  ASSERT_EQ(append_one(*peer, rb, bytes_of(1, 8)).value_or(~0ull), 0u);
  peer->crash_in_append_for_testing(1, /*publish=*/1, /*kill=*/false);
  const auto e = bytes_of(2, 8);
  const std::span<const std::byte> two[] = {e, e};
  ASSERT_EQ(peer->append(rb, two, [](const Entry&) {}).status().code(), StatusCode::kAborted);  // 1 published, 2 not

  std::vector<LogIndex> seen;
  Result<LogIndex> lt = log->exec(ra, [&](const Entry& entry) { seen.push_back(entry.index); });
  ASSERT_TRUE(lt.ok()) << lt.status().to_string();
  EXPECT_EQ(*lt, 3u);
  EXPECT_EQ(seen, (std::vector<LogIndex>{0, 1})) << "index 2 is a no-op";
  EXPECT_EQ(log->fenced_count(), 1u);
  EXPECT_EQ(log->active_replicas(), uint64_t{1} << ra);

  // While rb is fenced, its holds count as released.
  EXPECT_EQ(log->payloads_live(), 2u);
  EXPECT_TRUE(log->payload_release(ra, early).ok());
  EXPECT_EQ(log->payloads_live(), 1u);
  EXPECT_EQ(peer->payload_get(early).status().code(), StatusCode::kNotFound);

  // The zombie: refused; its append acknowledges, so the id comes back at the next join (the
  // sequencer then stores rb's release mark for |late| itself).
  EXPECT_EQ(peer->heartbeat().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(peer->payload_release(rb, late).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(append_one(*peer, rb, bytes_of(3, 8)).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(peer->exec(rb, [](const Entry&) {}).status().code(), StatusCode::kFailedPrecondition);
  const ReplicaId again = peer->register_replica().value();
  EXPECT_EQ(again, rb);
  EXPECT_EQ(peer->ltail(again).value_or(0), 3u);
  EXPECT_TRUE(log->payload_release(ra, late).ok());
  EXPECT_EQ(log->payloads_live(), 0u) << "rb's hold on |late| was released in its own mark";

  // The new rb idles without heartbeats while ra fills the log: fenced after the lease.
  for (uint64_t k = 0; k < 12; ++k) ASSERT_TRUE(append_one(*log, ra, bytes_of(10 + k, 8)).ok()) << k;
  EXPECT_EQ(log->fenced_count(), 2u);
  EXPECT_EQ(log->active_replicas(), uint64_t{1} << ra);
  EXPECT_TRUE(peer->deregister_replica(again).ok());

  EXPECT_GT(CountingNoncoherentAccess::stores.load(std::memory_order_relaxed), stores_before);
  EXPECT_EQ(CountingNoncoherentAccess::rmws.load(std::memory_order_relaxed), rmws_before)
      << "fencing made read-modify-writes on the region";
}

}  // namespace
}  // namespace nrx::logs
