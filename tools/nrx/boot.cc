// `nrx boot`: boots the node-replicated core on this machine's NUMA topology and runs a demo
// workload on it. Until the full kernel exists (issue "Processes, cores and the single-host boot")
// the replicated state is the demo hash map: one replica per (possibly emulated) NUMA node, all
// sharing one ring log, several pinned threads per replica. It then checks that every replica ends
// with the same state digest and that each thread reads its own last write.
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernel/boot/topology.h"
#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/replica.h"
#include "logs/ring/ring_log.h"
#include "tools/nrx/cli.h"

namespace nrx::tools {
namespace {

using Map = nr::HashMap;
using MapReplica = nr::Replica<Map, logs::RingLog>;

// Each thread owns one key outside the shared range, for the read-your-writes check.
constexpr uint64_t kPrivateKeyBase = uint64_t{1} << 40;

struct ThreadResult {
  uint64_t reads = 0;
  uint64_t writes = 0;
  bool own_write_seen = false;
  std::string error;
};

std::string gib(uint64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024 * 1024));
  return b;
}

std::string cpu_list(const std::vector<int>& cpus) {
  std::string s;
  for (int c : cpus) s += (s.empty() ? "" : ",") + std::to_string(c);
  return s.empty() ? "-" : s;
}

}  // namespace

int run_boot(const std::vector<std::string>& args) {
  cli::Command cmd("boot",
                   "Boot nrx on this machine's NUMA topology: one replica per node over a shared ring log,\n"
                   "run a replicated demo workload with several threads per replica, and check that every\n"
                   "replica ends in the same state. Exits 0 when all checks pass, 1 when one fails.");
  cmd.option("nodes", "N", "NUMA nodes (replicas); more than the machine has are emulated", "detected");
  cmd.option("threads-per-node", "T", "worker threads per replica, pinned to the node's cpus", "2");
  cmd.option("ops", "N", "operations per thread", "1000000");
  cmd.option("write-pct", "P", "percentage of operations that are writes (put/remove)", "20");
  cmd.option("keys", "K", "size of the shared key space", "4096");
  cmd.option("log-slots", "S", "ring log slots (a power of two)", "65536");
  cmd.option("seed", "S", "random seed of the workload", "1");
  cmd.flag("json", "print the summary as one JSON object instead of text");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }

  const boot::Topology detected = boot::Topology::detect();
  auto nodes = cmd.get_u64("nodes", detected.nodes.size(), 1, 64);
  auto threads_per_node = cmd.get_u64("threads-per-node", 2, 1, 64);
  auto ops = cmd.get_u64("ops", 1000000, 1, uint64_t{1} << 32);
  auto write_pct = cmd.get_u64("write-pct", 20, 0, 100);
  auto keys = cmd.get_u64("keys", 4096, 1, uint64_t{1} << 32);
  auto slots = cmd.get_u64("log-slots", 65536, 2, uint64_t{1} << 24);
  auto seed = cmd.get_u64("seed", 1, 0, UINT64_MAX);
  for (const Result<uint64_t>* r : {&nodes, &threads_per_node, &ops, &write_pct, &keys, &slots, &seed}) {
    if (!r->ok()) return cli::fail(cmd, r->status());
  }
  if (!is_power_of_two(*slots)) return cli::fail(cmd, Status::invalid_argument("--log-slots must be a power of two"));
  const bool json = cmd.flag_set("json");

  auto topo_r = detected.emulate(static_cast<uint32_t>(*nodes));
  if (!topo_r.ok()) return cli::fail(cmd, topo_r.status());
  const boot::Topology& topo = *topo_r;
  const uint32_t replicas = static_cast<uint32_t>(topo.nodes.size());

  // The log lives on the local node when there is one real node, else interleaved over them.
  logs::LogOptions lo;
  lo.entry_size = sizeof(Map::WriteOp);
  lo.slot_count = static_cast<uint32_t>(*slots);
  lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, replicas);
  lo.numa_node = detected.nodes.size() > 1 ? logs::kNumaInterleave : logs::kNumaLocal;
  auto group_r = nr::ReplicaGroup<Map, logs::RingLog>::create(lo, &logs::RingLog::create);
  if (!group_r.ok()) {
    std::fprintf(stderr, "nrx boot: cannot create the log: %s\n", group_r.status().to_string().c_str());
    return 1;
  }
  nr::ReplicaGroup<Map, logs::RingLog>& group = **group_r;
  logs::RingLog& log = group.log();

  std::vector<MapReplica*> reps;
  for (uint32_t n = 0; n < replicas; ++n) {
    // Build each replica on a thread pinned to its node, so first-touch puts its memory there.
    Result<MapReplica*> made = Status::internal("not created");
    std::thread([&] {
      boot::pin_current_thread(topo.nodes[n].cpus);
      made = group.add_replica(Map(static_cast<size_t>(*keys) * 2));
    }).join();
    if (!made.ok()) {
      std::fprintf(stderr, "nrx boot: cannot create replica %u: %s\n", n, made.status().to_string().c_str());
      return 1;
    }
    reps.push_back(*made);
  }

  const uint64_t tpn = *threads_per_node;
  if (!json) {
    std::printf("nrx boot: node-replicated demo (replicated hash map on the ring log)\n");
    std::printf("topology   %s\n", topo.describe().c_str());
    for (const boot::Node& n : topo.nodes) {
      std::printf("  node %-3d cpus %-10s memory %-10s replica %d, %" PRIu64 " threads\n", n.id,
                  cpu_list(n.cpus).c_str(), gib(n.memory_bytes).c_str(), n.id, tpn);
    }
    std::printf("log        ring, %u slots x %zu B, %s\n", lo.slot_count, log.slot_stride(),
                lo.numa_node == logs::kNumaInterleave ? "interleaved over nodes" : "on the local node");
    std::printf("workload   %" PRIu64 " threads x %" PRIu64 " ops, %" PRIu64 "%% writes, %" PRIu64
                " keys, seed %" PRIu64 "\n", tpn * replicas, *ops, *write_pct, *keys, *seed);
    std::printf("running... ");
    std::fflush(stdout);
  }

  std::vector<ThreadResult> results(tpn * replicas);
  std::atomic<uint32_t> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> workers;
  for (uint32_t n = 0; n < replicas; ++n) {
    for (uint64_t t = 0; t < tpn; ++t) {
      const uint64_t tid = n * tpn + t;
      workers.emplace_back([&, n, tid] {
        boot::pin_current_thread(topo.nodes[n].cpus);
        MapReplica& rep = *reps[n];
        ThreadResult& res = results[tid];
        auto token = rep.register_thread();
        ready.fetch_add(1, std::memory_order_release);
        while (!go.load(std::memory_order_acquire)) cpu_relax();
        if (!token.ok()) {
          res.error = token.status().to_string();
          return;
        }
        std::mt19937_64 rng(*seed * 0x9e3779b97f4a7c15ull + tid);
        const uint64_t own_key = kPrivateKeyBase + tid;
        uint64_t last_own = 0;
        for (uint64_t i = 0; i < *ops; ++i) {
          const uint64_t x = rng();
          const uint64_t key = x % *keys;
          if ((x >> 32) % 100 < *write_pct) {
            Map::WriteOp op{(x >> 40) % 8 == 0 ? Map::WriteOp::kRemove : Map::WriteOp::kPut, key, (tid << 48) | i};
            if ((x >> 44) % 16 == 0) op = {Map::WriteOp::kPut, own_key, last_own = i + 1};
            auto r = rep.execute_mut(op, *token);
            if (!r.ok()) {
              res.error = r.status().to_string();
              return;
            }
            ++res.writes;
          } else {
            (void)rep.execute({Map::ReadOp::kGet, key}, *token);
            ++res.reads;
          }
        }
        // Read-your-writes across replicas: our last put must be visible to our own read.
        auto seen = rep.execute({Map::ReadOp::kGet, own_key}, *token);
        res.own_write_seen = last_own == 0 ? !seen.has_value() : seen == last_own;
      });
    }
  }
  while (ready.load(std::memory_order_acquire) < workers.size()) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& w : workers) w.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Bring every replica to the tail and compare their states.
  std::vector<uint64_t> digests;
  std::vector<uint64_t> sizes;
  for (auto& rep : reps) {
    rep->sync();
    auto token = rep->register_thread();
    if (!token.ok()) {
      std::fprintf(stderr, "nrx boot: %s\n", token.status().to_string().c_str());
      return 1;
    }
    digests.push_back(rep->inspect(*token, [](const Map& m) { return m.digest(); }));
    sizes.push_back(rep->inspect(*token, [](const Map& m) { return static_cast<uint64_t>(m.size()); }));
  }
  uint64_t reads = 0, writes = 0, own_ok = 0;
  std::string first_error;
  for (const ThreadResult& r : results) {
    reads += r.reads;
    writes += r.writes;
    own_ok += r.own_write_seen ? 1 : 0;
    if (first_error.empty() && !r.error.empty()) first_error = r.error;
  }
  bool digests_equal = true;
  for (uint64_t d : digests) digests_equal = digests_equal && d == digests[0];
  const bool ok = digests_equal && first_error.empty() && own_ok == results.size();
  const double mops = static_cast<double>(reads + writes) / secs / 1e6;

  if (json) {
    std::printf("{\"nodes\":%u,\"emulated\":%s,\"cpus\":%zu,\"threads\":%zu,\"ops\":%" PRIu64 ",\"reads\":%" PRIu64
                ",\"writes\":%" PRIu64 ",\"seconds\":%.4f,\"mops\":%.3f,\"log_tail\":%" PRIu64
                ",\"lagging_nudges\":%" PRIu64 ",\"replicas\":[",
                replicas, topo.emulated ? "true" : "false", topo.cpu_count(), results.size(), reads + writes, reads,
                writes, secs, mops, log.tail(), group.lagging_nudges());
    for (uint32_t n = 0; n < replicas; ++n) {
      std::printf("%s{\"id\":%u,\"digest\":\"%016" PRIx64 "\",\"keys\":%" PRIu64 ",\"batches\":%" PRIu64
                  ",\"combined_ops\":%" PRIu64 "}",
                  n ? "," : "", n, digests[n], sizes[n], reps[n]->combined_batches(), reps[n]->combined_ops());
    }
    std::printf("],\"digests_equal\":%s,\"read_your_writes\":%" PRIu64 ",\"ok\":%s}\n",
                digests_equal ? "true" : "false", own_ok, ok ? "true" : "false");
    return ok ? 0 : 1;
  }

  std::printf("done in %.2f s\n", secs);
  std::printf("throughput %.2f M ops/s (%" PRIu64 " reads, %" PRIu64 " writes; log tail %" PRIu64
              ", %" PRIu64 " lagging-replica nudges)\n", mops, reads, writes, log.tail(), group.lagging_nudges());
  for (uint32_t n = 0; n < replicas; ++n) {
    const uint64_t b = reps[n]->combined_batches();
    std::printf("replica %-2u digest %016" PRIx64 "  %" PRIu64 " keys  %" PRIu64 " combined batches, %.2f ops/batch\n",
                n, digests[n], sizes[n], b, b ? static_cast<double>(reps[n]->combined_ops()) / static_cast<double>(b) : 0.0);
  }
  std::printf("checks     replicas agree: %s; read-your-writes: %" PRIu64 "/%zu threads\n",
              digests_equal ? "yes" : "NO", own_ok, results.size());
  if (!first_error.empty()) std::printf("error      %s\n", first_error.c_str());
  std::printf("result     %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace nrx::tools
