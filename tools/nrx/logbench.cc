// `nrx cluster run logbench` on one machine (called by the node agent, cluster_cmd.cc): append +
// exec throughput of one shared shm log that every machine of the run appends to, beside the same
// loop on a local ring log (logs/ring) on this machine, measured in the same run; the ratio is the
// figure (under QEMU's TCG absolute numbers measure the emulator). Entries are 32 bytes, batches
// of 8, as tools/bench/bench_log. Every machine ends by appending a done marker and applies the log
// until it has seen every machine's marker, so every machine applies the whole log: the digest of
// the entries in log order must be equal on every machine (a correctness check, not a figure).
#include "tools/nrx/logbench.h"

#include <array>
#include <bit>
#include <chrono>
#include <cstring>
#include <thread>

#include "logs/ring/ring_log.h"
#include "logs/shm/shm_log.h"

namespace nrx::tools {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kEntryBytes = 32;
constexpr size_t kBatch = 8;
constexpr uint64_t kDoneMagic = 0x6e72782d646f6e65ull;  // "nrx-done"

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

// Entry words: [0] machine << 48 | sequence (or kDoneMagic), [1] machine, the rest filler.
struct Source {
  std::array<std::array<uint64_t, kEntryBytes / 8>, kBatch> words{};
  std::array<std::span<const std::byte>, kBatch> entries;
  Source() {
    for (size_t i = 0; i < kBatch; ++i) entries[i] = std::as_bytes(std::span(words[i]));
  }
  void fill(uint32_t machine, uint64_t seq) {
    for (size_t i = 0; i < kBatch; ++i) {
      words[i][0] = (uint64_t{machine} << 48) | (seq + i);
      words[i][1] = machine;
      words[i][2] = mix(machine, seq + i);
    }
  }
};

// What a replica makes of the entries it applies: a digest of their words in log order, and how
// many done markers it has seen.
struct Applied {
  uint64_t digest = 0;
  uint32_t done_seen = 0;
  void operator()(const logs::Entry& e) {
    uint64_t w[2] = {};
    std::memcpy(w, e.data.data(), std::min(e.data.size(), sizeof w));
    if (w[0] == kDoneMagic) ++done_seen;
    digest = mix(digest, w[0]);
    digest = mix(digest, w[1]);
  }
};

// The append + exec loop for |seconds|; entries appended (this machine's).
template <typename Log>
uint64_t loop(Log& log, logs::ReplicaId me, uint32_t machine, double seconds, Applied& visit) {
  Source src;
  uint64_t appended = 0;
  const Clock::time_point end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    src.fill(machine, appended);
    if (!log.append(me, logs::Batch(src.entries.data(), kBatch), visit).ok()) break;
    if (!log.exec(me, visit).ok()) break;
    appended += kBatch;
  }
  return appended;
}

logs::LogOptions options(uint32_t machines) {
  logs::LogOptions lo;
  lo.entry_size = kEntryBytes;
  lo.slot_count = 4096;
  lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, machines);
  lo.full_timeout = std::chrono::seconds(30);
  return lo;
}

}  // namespace

Result<LogBenchResult> run_logbench(const boot::ShmPlacement& sp, bool noncoherent, double seconds,
                                    const std::function<bool()>& lost, const std::function<void()>& formatted,
                                    const std::function<Status()>& before_close) {
  const logs::ShmMode mode = noncoherent ? logs::ShmMode::kNoncoherent : logs::ShmMode::kCoherent;
  LogBenchResult out;
  // The baseline first, on every machine at about the same time (they all start on the same order).
  {
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<logs::RingLog> ring, logs::RingLog::create(options(1)));
    NRX_ASSIGN_OR_RETURN(logs::ReplicaId me, ring->register_replica());
    Applied applied;
    const Clock::time_point t0 = Clock::now();
    const uint64_t n = loop(*ring, me, sp.machine, seconds, applied);
    out.ring_ops_per_s = static_cast<double>(n) / std::chrono::duration<double>(Clock::now() - t0).count();
  }
  NRX_ASSIGN_OR_RETURN(boot::SharedRegion region, boot::open_shared_region(sp));
  const logs::LogOptions lo = options(sp.machines);
  const logs::ShmOptions so{.mode = mode, .cluster_id = sp.cluster_id, .keep_alive = region.region, .lease = sp.lease};
  const uint64_t bytes = logs::ShmLog::region_bytes(lo, so);
  if (bytes == 0) return Status::internal("no shm log fits the logbench options");
  std::unique_ptr<logs::ShmLog> log;
  if (!sp.attach) {
    NRX_ASSIGN_OR_RETURN(std::span<std::byte> at, region.directory->allocate("logbench", bytes));
    NRX_ASSIGN_OR_RETURN(log, logs::ShmLog::create(at, lo, so));
    region.directory->seal();
    formatted();
  } else {
    NRX_ASSIGN_OR_RETURN(std::span<std::byte> at, region.directory->find("logbench"));
    NRX_ASSIGN_OR_RETURN(log, logs::ShmLog::attach(at, {.cluster_id = sp.cluster_id,
                                                        .mode = mode,
                                                        .client = sp.machine,
                                                        .full_timeout = lo.full_timeout,
                                                        .keep_alive = region.region,
                                                        .lease = sp.lease}));
  }
  NRX_ASSIGN_OR_RETURN(logs::ReplicaId me, log->register_replica());
  // Every machine's replica must be on the log before anyone appends (no state transfer).
  const Clock::time_point join_deadline = Clock::now() + std::chrono::minutes(2);
  while (static_cast<uint32_t>(std::popcount(log->active_replicas())) < sp.machines) {
    if (lost()) return Status(StatusCode::kAborted, "this machine was fenced");
    if (Clock::now() >= join_deadline) return Status::deadline_exceeded("not every machine joined the logbench log");
    (void)log->heartbeat();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // polling shared membership, deadline above
  }
  Applied visit;
  const Clock::time_point t0 = Clock::now();
  const uint64_t n = loop(*log, me, sp.machine, seconds, visit);
  out.shm_ops_per_s = static_cast<double>(n) / std::chrono::duration<double>(Clock::now() - t0).count();
  // The done marker, then apply until every machine's is seen.
  std::array<uint64_t, kEntryBytes / 8> marker{kDoneMagic, sp.machine};
  const std::array<std::span<const std::byte>, 1> batch{std::as_bytes(std::span(marker))};
  NRX_RETURN_IF_ERROR(log->append(me, logs::Batch(batch.data(), 1), visit).status());
  const Clock::time_point drain_deadline = Clock::now() + std::chrono::minutes(2);
  while (visit.done_seen < sp.machines) {
    if (lost()) return Status(StatusCode::kAborted, "this machine was fenced");
    if (Clock::now() >= drain_deadline) return Status::deadline_exceeded("not every machine finished the logbench");
    NRX_RETURN_IF_ERROR(log->exec(me, visit).status());
  }
  out.digest = visit.digest;
  out.entries = log->tail();
  out.appended = n;
  NRX_RETURN_IF_ERROR(before_close());
  return out;
}

}  // namespace nrx::tools
