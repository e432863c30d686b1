// The rack-scale commands (DESIGN 5): `nrx controller` (the gRPC control plane), `nrx node
// --controller` (a machine's agent: joins, then boots the kernel on the shared region for each run
// the controller orders and reports its replicas' digests), and `nrx cluster
// init|status|run|up|down` (the operator's side; up and down drive deploy/cluster.sh).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/json_util.h>

#include "cluster/agent.h"
#include "cluster/controller.h"
#include "cluster/server.h"
#include "cluster/tls.h"
#include "kernel/boot/kernel.h"
#include "kernel/boot/programs.h"
#include "kernel/boot/topology.h"
#include "tools/nrx/cli.h"
#include "tools/nrx/logbench.h"

namespace nrx::tools {

Result<std::vector<std::byte>> read_self();  // boot.cc: this executable, the programs' ELF image

namespace {

namespace v1 = ::nrx::cluster::v1;
using cluster::Clock;

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop.store(true, std::memory_order_relaxed); }

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%016" PRIx64, v);
  return b;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(sep, start);
    std::string part = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!part.empty()) out.push_back(part);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// The repository root, from this executable's place (ROOT/build*/bin/nrx), or $NRX_ROOT.
std::string repo_root() {
  if (const char* r = std::getenv("NRX_ROOT")) return r;
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  for (int i = 0; i < 3; ++i) p = p.substr(0, p.rfind('/'));
  // build/bin/nrx -> ROOT; build/tsan/bin/nrx -> ROOT/build: look for deploy/ upwards.
  for (int i = 0; i < 3 && access((p + "/deploy/cluster.sh").c_str(), F_OK) != 0; ++i) p = p.substr(0, p.rfind('/'));
  return p;
}

std::string default_run_dir() { return repo_root() + "/build/cluster/nrx"; }

struct Access {
  std::string address;
  std::string secret;
  std::optional<cluster::TlsFiles> tls;
  std::unique_ptr<cluster::ControllerClient> client;
};

// --controller and --cluster-dir, with `nrx cluster up`'s defaults (its run directory).
Result<Access> access_from(const cli::Command& cmd) {
  const std::string run_dir = cmd.get("dir").value_or(default_run_dir());
  Access a;
  a.address = cmd.get("controller").value_or("unix:" + run_dir + "/controller.sock");
  const std::string cdir = cmd.get("cluster-dir").value_or(run_dir + "/secrets");
  NRX_ASSIGN_OR_RETURN(a.secret, cluster::read_secret(cdir + "/secret"));
  NRX_ASSIGN_OR_RETURN(a.tls, cluster::load_tls(cdir, false));
  NRX_ASSIGN_OR_RETURN(a.client, cluster::ControllerClient::connect(a.address, a.tls));
  return a;
}

void common_access_options(cli::Command& cmd) {
  cmd.option("controller", "ADDR", "the controller: HOST:PORT or unix:PATH", "unix:DIR/controller.sock");
  cmd.option("cluster-dir", "DIR", "the cluster's secret and TLS files (nrx cluster init)", "DIR/secrets");
  cmd.option("dir", "DIR", "the run directory of `nrx cluster up`", "build/cluster/nrx");
}

}  // namespace

// ---- nrx controller ----

int run_controller(const std::vector<std::string>& args) {
  cli::Command cmd("controller",
                   "Run the cluster's control plane (gRPC): machines (`nrx node --controller`) join with the\n"
                   "cluster secret and get node and replica ids; the controller runs their leases, fences a\n"
                   "machine whose lease expires, and drives runs (`nrx cluster run`). Serves TLS when the\n"
                   "cluster directory holds ca.pem. Stops on SIGINT/SIGTERM or `nrx cluster down`.");
  cmd.option("listen", "ADDRS", "comma-separated addresses: HOST:PORT, unix:PATH", "127.0.0.1:7700");
  cmd.option("cluster-dir", "DIR", "secret and TLS files (nrx cluster init DIR) (required)");
  cmd.option("nodes", "N", "machines the cluster waits for", "3");
  cmd.option("lease-ms", "MS", "a machine silent for this long is fenced", "4000");
  cmd.option("heartbeat-ms", "MS", "how often machines beat", "250");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  auto nodes = cmd.get_u64("nodes", 3, 1, cluster::kMaxReplicas);
  auto lease = cmd.get_u64("lease-ms", 4000, 100, 600000);
  auto beat = cmd.get_u64("heartbeat-ms", 250, 10, 60000);
  for (auto* r : {&nodes, &lease, &beat}) {
    if (!r->ok()) return cli::fail(cmd, r->status());
  }
  if (!cmd.has("cluster-dir")) return cli::fail(cmd, Status::invalid_argument("--cluster-dir DIR is required"));
  const std::string cdir = *cmd.get("cluster-dir");
  Result<std::string> secret = cluster::read_secret(cdir + "/secret");
  if (!secret.ok()) return cli::fail(cmd, secret.status());
  Result<std::optional<cluster::TlsFiles>> tls = cluster::load_tls(cdir, true);
  if (!tls.ok()) return cli::fail(cmd, tls.status());
  cluster::ControllerOptions o;
  o.secret = *secret;
  o.expected_nodes = static_cast<uint32_t>(*nodes);
  o.lease = std::chrono::milliseconds(*lease);
  o.heartbeat = std::chrono::milliseconds(*beat);
  o.tls = tls->has_value();
  Result<std::unique_ptr<cluster::Controller>> c = cluster::Controller::create(o);
  if (!c.ok()) return cli::fail(cmd, c.status());
  const std::vector<std::string> addrs = split(cmd.get("listen").value_or("127.0.0.1:7700"), ',');
  Result<std::unique_ptr<cluster::ControllerServer>> server = cluster::ControllerServer::start(**c, addrs, *tls);
  if (!server.ok()) {
    std::fprintf(stderr, "nrx controller: %s\n", server.status().to_string().c_str());
    return 1;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  std::printf("nrx controller: listening on %s (%s), waiting for %u machines; lease %" PRIu64 " ms\n",
              cmd.get("listen").value_or("127.0.0.1:7700").c_str(), o.tls ? "TLS" : "plaintext", o.expected_nodes,
              *lease);
  std::fflush(stdout);
  // Progress: membership changes as they happen (polled from the controller's own status).
  v1::StatusRequest sreq;
  sreq.set_secret(*secret);
  std::vector<std::string> seen;
  while (!g_stop.load(std::memory_order_relaxed) && !(*c)->wait_shutdown(Clock::now() + std::chrono::milliseconds(200))) {
    v1::StatusReply s;
    if (!(*c)->status(sreq, &s).ok()) continue;
    for (const v1::NodeStatus& n : s.nodes()) {
      const std::string key = std::to_string(n.node_id()) + n.state();
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
      seen.push_back(key);
      std::printf("nrx controller: node %u (%s) %s, replicas %u..%u\n", n.node_id(), n.hostname().c_str(),
                  n.state() == "live" ? "joined" : ("FENCED (" + n.fenced_reason() + ")").c_str(), n.first_replica(),
                  n.first_replica() + n.replicas() - 1);
      std::fflush(stdout);
    }
  }
  // Linger (at most a lease) until every machine heard that the controller stops: they then
  // leave at once instead of waiting out their lease.
  const Clock::time_point linger = Clock::now() + o.lease;
  while (!(*c)->all_told_shutdown() && Clock::now() < linger && !g_stop.load(std::memory_order_relaxed)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the machines' last beats, bounded
  }
  std::printf("nrx controller: stopping\n");
  return 0;
}

// ---- nrx node --controller ----

namespace {

std::string self_hostname() {
  char h[256] = {};
  if (gethostname(h, sizeof h - 1) != 0 || h[0] == '\0') return "nrx-node";
  return h;
}


struct NodeConfig {
  boot::Topology topology;
  uint32_t cores_per_node = 0;
  uint64_t pool_bytes = 0;
  std::string region;
  uint64_t region_bytes = 0;
  std::string log = "shm";  // or "rdma"
  std::string device;       // rdma: the RDMA device
};

// One run on this machine: boot on the run's region, wait for every machine's replicas, run the
// workload, wait for every live machine, digest, report. Returns the report to send.
v1::ReportRequest run_once(cluster::Agent& agent, const v1::RunOrder& order, const NodeConfig& cfg,
                           std::span<const std::byte> image) {
  v1::ReportRequest rep;
  rep.set_run_id(order.run_id());
  const Clock::time_point t0 = Clock::now();
  auto fail = [&](const std::string& why) {
    rep.set_ok(false);
    rep.set_error(why);
    agent.set_phase(order.run_id(), v1::PHASE_FAILED, why);
    std::printf("nrx node: run %" PRIu64 " failed: %s\n", order.run_id(), why.c_str());
    std::fflush(stdout);
    return rep;
  };
  const bool rdma = order.log() == "rdma";
  if (rdma) {
    std::printf("nrx node: run %" PRIu64 ": %s as machine %u of %u (RDMA logs on %s)\n", order.run_id(),
                order.workload().c_str(), order.machine(), order.machines(), cfg.device.c_str());
  } else {
    std::printf("nrx node: run %" PRIu64 ": %s as machine %u of %u (%s the region)\n", order.run_id(),
                order.workload().c_str(), order.machine(), order.machines(),
                order.format() ? "formatting" : "attaching to");
  }
  std::fflush(stdout);
  agent.set_phase(order.run_id(), v1::PHASE_BOOTING);
  if (rdma && order.workload() == "logbench") {
    return fail("logbench runs on shared-memory clusters; over RDMA, `nrx rdma logbench` measures the RDMA log "
                "between two machines beside a local ring");
  }
  if (order.workload() == "logbench") {
    boot::ShmPlacement sp;
    sp.region = cfg.region;
    sp.attach = !order.format();
    sp.machine = order.machine();
    sp.machines = order.machines();
    sp.cluster_id = order.region_cluster_id();
    sp.region_bytes = cfg.region_bytes;
    if (order.format() && cfg.region.rfind("/dev/shm/", 0) == 0) unlink(cfg.region.c_str());
    // Machine 0 reports the region formatted once the log is in place and the directory sealed:
    // only then does the controller let the others attach.
    sp.lease = std::chrono::milliseconds(agent.joined().lease_ms());
    Result<LogBenchResult> b = run_logbench(
        sp, order.noncoherent(), order.seconds(), [&agent] { return agent.lost(); },
        [&] { agent.set_phase(order.run_id(), v1::PHASE_FORMATTED); },
        [&] {
          // Every machine done before anyone closes the log (machine 0 runs the sequencer).
          agent.set_phase(order.run_id(), v1::PHASE_DONE);
          return agent.wait_all_done(order.run_id(), Clock::now() + std::chrono::minutes(10));
        });
    if (!b.ok()) return fail("logbench: " + b.status().to_string());
    std::printf("nrx node: logbench (%s): shared log %.0f entries/s, local ring %.0f entries/s (ratio %.3f); log digest %s\n",
                order.noncoherent() ? "noncoherent" : "coherent", b->shm_ops_per_s, b->ring_ops_per_s,
                b->shm_ops_per_s / std::max(b->ring_ops_per_s, 1e-9), hex(b->digest).c_str());
    std::fflush(stdout);
    rep.set_ok(true);
    // Both digest columns carry the log's digest (one per replica, as the report wants).
    for (uint32_t i = 0; i < agent.joined().replicas_per_node(); ++i) {
      rep.add_proc_digests(b->digest);
      rep.add_fs_digests(b->digest);
    }
    v1::LogPosition* l = rep.add_logs();
    l->set_name("logbench");
    l->set_tail(b->entries);
    l->set_ltail(b->entries);
    rep.set_fs_calls(b->appended);
    rep.set_shm_ops_per_s(b->shm_ops_per_s);
    rep.set_ring_ops_per_s(b->ring_ops_per_s);
    rep.set_seconds(std::chrono::duration<double>(Clock::now() - t0).count());
    if (Status st = agent.report(rep); !st.ok()) std::printf("nrx node: report refused: %s\n", st.to_string().c_str());
    agent.set_phase(order.run_id(), v1::PHASE_REPORTED);
    (void)agent.wait_release(order.run_id(), Clock::now() + std::chrono::minutes(5));
    return rep;
  }
  boot::KernelOptions ko{.topology = cfg.topology, .cores_per_node = cfg.cores_per_node, .pool_bytes = cfg.pool_bytes};
  if (rdma) {
    ko.log = boot::LogBackend::kRdma;
    ko.log_slots = boot::kRdmaLogSlots;
    ko.rdma.machine = order.machine();
    ko.rdma.machines = order.machines();
    ko.rdma.device = cfg.device;
    ko.rdma.cluster_id = order.region_cluster_id();
    ko.rdma.lease = std::chrono::milliseconds(agent.joined().lease_ms());
    // Every log's and the scan order's endpoints travel through the controller.
    ko.rdma.exchange = [&agent, run = order.run_id()](const std::string& name, std::vector<std::string> to) {
      return agent.exchange(run, name, std::move(to), std::chrono::minutes(2));
    };
  } else {
    ko.log = boot::LogBackend::kShm;
    ko.shm.region = cfg.region;
    ko.shm.attach = !order.format();
    ko.shm.machine = order.machine();
    ko.shm.machines = order.machines();
    ko.shm.cluster_id = order.region_cluster_id();
    ko.shm.region_bytes = cfg.region_bytes;
    ko.shm.noncoherent = order.noncoherent();  // machine 0 sequences the logs; the bakery orders scans
    // The data plane fences by the same lease as the control plane.
    ko.shm.lease = std::chrono::milliseconds(agent.joined().lease_ms());
    // A /dev/shm file is created by machine 0 for each run: the previous run's goes first.
    if (order.format() && cfg.region.rfind("/dev/shm/", 0) == 0) unlink(cfg.region.c_str());
  }
  Result<std::unique_ptr<boot::Kernel>> made = boot::Kernel::create(ko);
  if (!made.ok()) return fail("boot: " + made.status().to_string());
  boot::Kernel& kernel = **made;
  agent.set_progress([&kernel](v1::HeartbeatRequest* req) {
    req->set_fs_calls(kernel.stats().fs_calls);
    // RDMA: machines a log lost its link to; the controller fences them.
    for (uint32_t m : kernel.unreachable_machines()) req->add_unreachable_machines(m);
    for (const boot::LogPosition& p : kernel.log_positions()) {
      v1::LogPosition* l = req->add_logs();
      l->set_name(p.name);
      l->set_tail(p.tail);
      l->set_ltail(std::min(p.ltail, p.tail));
    }
  });
  struct ClearProgress {
    cluster::Agent& a;
    ~ClearProgress() { a.set_progress(nullptr); }
  } clear{agent};
  // RDMA: the logs learn the controller's fencings from here (logs/shm fences by its own lease):
  // they stop writing to the fenced machine, and machine 0 lets its replicas go and resolves the
  // slots it left unwritten. Polls the agent's latest heartbeat reply.
  struct Fencer {
    std::atomic<bool> stop{false};
    std::thread thread;
    ~Fencer() {
      stop.store(true, std::memory_order_relaxed);
      if (thread.joinable()) thread.join();
    }
  } fencer;
  if (rdma) {
    fencer.thread = std::thread([&agent, &kernel, &fencer] {
      std::vector<uint32_t> done;
      while (!fencer.stop.load(std::memory_order_relaxed)) {
        for (uint32_t m : agent.fenced_machines()) {
          if (std::find(done.begin(), done.end(), m) != done.end()) continue;
          done.push_back(m);
          Status st = kernel.fence_machine(m);
          std::printf("nrx node: machine %u fenced by the controller; its RDMA links cut%s%s\n", m,
                      st.ok() ? "" : ": ", st.ok() ? "" : st.to_string().c_str());
          std::fflush(stdout);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the agent's reply changes per heartbeat
      }
    });
  }
  agent.set_phase(order.run_id(), order.format() ? v1::PHASE_FORMATTED : v1::PHASE_BOOTING);
  const uint32_t want = order.machines() * kernel.nodes();
  const Clock::time_point join_deadline = Clock::now() + std::chrono::minutes(2);
  while (kernel.registered_replicas() < want) {
    if (agent.lost()) return fail(agent.lost_reason());
    if (!agent.fenced_machines().empty()) return fail("a machine was fenced before every replica joined");
    if (Clock::now() >= join_deadline) {
      return fail("only " + std::to_string(kernel.registered_replicas()) + " of " + std::to_string(want) +
                  " replicas joined in 2 minutes");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling a shared counter, deadline above
  }
  agent.set_phase(order.run_id(), v1::PHASE_RUNNING);
  std::vector<const boot::Program*> programs;
  if (order.workload() == "demo") {
    for (const boot::Program& p : boot::builtin_programs()) programs.push_back(&p);
  } else if (const boot::Program* p = boot::find_program(order.workload())) {
    programs.push_back(p);
  } else {
    return fail("unknown workload " + order.workload());
  }
  std::string error;
  for (const boot::Program* prog : programs) {
    boot::SpawnOptions so;
    so.args.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(order.seconds() / static_cast<double>(programs.size())));
    so.args.seed = order.seed() + order.machine();
    Result<boot::Pid> pid = kernel.spawn(*prog, image, so);
    if (!pid.ok()) {
      error = std::string(prog->name) + ": " + pid.status().to_string();
      break;
    }
    Result<boot::ProcessReport> r = kernel.wait(*pid);
    if (!r.ok()) {
      error = r.status().to_string();
      break;
    }
    std::printf("nrx node: %s exited %d in %.2f s; address space replicas %s\n", prog->name, r->status, r->seconds,
                r->vmem_equal ? "agree" : "DIFFER");
    std::fflush(stdout);
    if (r->status != 0) error = std::string(prog->name) + " exited with status " + std::to_string(r->status);
    if (!r->vmem_equal) error = std::string(prog->name) + ": address space replicas differ";
    if (!error.empty()) break;
  }
  if (!error.empty()) return fail(error);
  agent.set_phase(order.run_id(), v1::PHASE_DONE);
  std::printf("nrx node: workload done, waiting for the other machines\n");
  std::fflush(stdout);
  if (Status st = agent.wait_all_done(order.run_id(), Clock::now() + std::chrono::minutes(10)); !st.ok()) {
    return fail("waiting for the other machines: " + st.to_string());
  }
  if (!agent.fenced_machines().empty()) {
    std::printf("nrx node: machines fenced in this run:");
    for (uint32_t m : agent.fenced_machines()) std::printf(" %u", m);
    std::printf("\n");
  }
  const boot::ReplicaDigests d = kernel.digests();
  rep.set_ok(d.equal());
  if (!d.equal()) rep.set_error("this machine's replicas differ");
  for (uint64_t x : d.proc) rep.add_proc_digests(x);
  for (uint64_t x : d.fs) rep.add_fs_digests(x);
  rep.set_fs_calls(kernel.stats().fs_calls);
  for (const boot::LogPosition& p : kernel.log_positions()) {
    v1::LogPosition* l = rep.add_logs();
    l->set_name(p.name);
    l->set_tail(p.tail);
    l->set_ltail(std::min(p.ltail, p.tail));
  }
  rep.set_seconds(std::chrono::duration<double>(Clock::now() - t0).count());
  std::printf("nrx node: digests proc %s fs %s\n", hex(d.proc.front()).c_str(), hex(d.fs.front()).c_str());
  std::fflush(stdout);
  if (Status st = agent.report(rep); !st.ok()) {
    std::printf("nrx node: report refused: %s\n", st.to_string().c_str());
  }
  agent.set_phase(order.run_id(), v1::PHASE_REPORTED);
  // Keep the replicas serving until every machine reported: their digests sync to the logs.
  (void)agent.wait_release(order.run_id(), Clock::now() + std::chrono::minutes(5));
  return rep;
}

}  // namespace

int run_node_agent(const std::vector<std::string>& args) {
  cli::Command cmd("node",
                   "Join a cluster's controller as one machine (`nrx node --controller ADDR`): the controller\n"
                   "assigns this machine's node and replica ids; for each `nrx cluster run` it boots the kernel\n"
                   "on the shared region (machine 0 formats it, the others attach) or on RDMA logs (--log rdma:\n"
                   "endpoints exchanged through the controller), runs the workload, waits\n"
                   "for every live machine and reports its replicas' digests. Leaves when the controller shuts\n"
                   "down; stops at once (exit 3) when fenced. Without --controller: see `nrx node --help`.");
  cmd.option("controller", "ADDR", "the controller: HOST:PORT or unix:PATH (required)");
  cmd.option("cluster-dir", "DIR", "the cluster's secret and CA (nrx cluster init) (required)");
  cmd.option("log", "BACKEND", "where the kernel's shared logs live: shm (a shared region, --region) or rdma\n"
             "      (RDMA logs mirrored on every machine, --device)", "shm");
  cmd.option("region", "PATH", "--log shm: this machine's view of the shared region: a /dev/shm file, an ivshmem\n"
             "      BAR (resource2) or /dev/daxX.Y (required)");
  cmd.option("device", "NAME", "--log rdma: the RDMA device, e.g. rxe0 (required)");
  cmd.option("region-size", "MIB", "a /dev/shm region's size (machine 0 creates it)", "512");
  cmd.option("nodes", "N", "NUMA nodes (replicas) on this machine; more than it has are emulated", "detected");
  cmd.option("cores-per-node", "C", "kernel cores per node", "cpus per node");
  cmd.option("memory", "MIB", "physical memory per node, in MiB (a multiple of 2)", "64");
  cmd.option("runs", "K", "leave after K runs (0: when the controller shuts down)", "0");
  cmd.option("coherence", "MODE",
             "coherent (cross-machine atomics work: one host, ivshmem) or noncoherent (emulated CXL\n"
             "      type-3: the logs' noncoherent mode, sequenced by machine 0 of each run)",
             "coherent");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  const std::string log = cmd.get("log").value_or("shm");
  if (log != "shm" && log != "rdma") return cli::fail(cmd, Status::invalid_argument("--log must be shm or rdma"));
  for (const char* req : {"controller", "cluster-dir", log == "shm" ? "region" : "device"}) {
    if (!cmd.has(req)) {
      return cli::fail(cmd, Status::invalid_argument(std::string("--") + req + " is required" +
                                                     (log == "rdma" ? " with --log rdma" : "")));
    }
  }
  if (log == "rdma" && (cmd.has("region") || cmd.has("coherence"))) {
    return cli::fail(cmd, Status::invalid_argument("--region and --coherence go with --log shm"));
  }
  if (log == "shm" && cmd.has("device")) return cli::fail(cmd, Status::invalid_argument("--device goes with --log rdma"));
  const boot::Topology detected = boot::Topology::detect();
  auto nodes = cmd.get_u64("nodes", detected.nodes.size(), 1, 64);
  auto cpn = cmd.get_u64("cores-per-node", 0, 1, 60);
  auto mem = cmd.get_u64("memory", 64, 16, uint64_t{1} << 20);
  auto size = cmd.get_u64("region-size", 512, 4, uint64_t{1} << 20);
  auto runs = cmd.get_u64("runs", 0, 0, 1000000);
  for (auto* r : {&nodes, &cpn, &mem, &size, &runs}) {
    if (!r->ok()) return cli::fail(cmd, r->status());
  }
  if (*mem % 2 != 0) return cli::fail(cmd, Status::invalid_argument("--memory must be a multiple of 2 MiB"));
  NodeConfig cfg;
  cfg.topology = detected;
  if (cmd.has("nodes") && *nodes != detected.nodes.size()) {
    auto t = detected.emulate(static_cast<uint32_t>(*nodes));
    if (!t.ok()) return cli::fail(cmd, t.status());
    cfg.topology = *t;
  }
  cfg.cores_per_node = cmd.has("cores-per-node") ? static_cast<uint32_t>(*cpn) : 0;
  cfg.pool_bytes = *mem << 20;
  cfg.region = cmd.get("region").value_or("");
  cfg.log = log;
  cfg.device = cmd.get("device").value_or("");
  cfg.region_bytes = *size << 20;
  const std::string cdir = *cmd.get("cluster-dir");
  Result<std::string> secret = cluster::read_secret(cdir + "/secret");
  if (!secret.ok()) return cli::fail(cmd, secret.status());
  Result<std::optional<cluster::TlsFiles>> tls = cluster::load_tls(cdir, false);
  if (!tls.ok()) return cli::fail(cmd, tls.status());
  Result<std::vector<std::byte>> image = read_self();
  if (!image.ok()) {
    std::fprintf(stderr, "nrx node: %s\n", image.status().to_string().c_str());
    return 1;
  }
  cluster::AgentOptions ao;
  ao.address = *cmd.get("controller");
  ao.tls = *tls;
  ao.secret = *secret;
  ao.hostname = self_hostname();
  ao.topology.set_nodes(static_cast<uint32_t>(cfg.topology.nodes.size()));
  ao.topology.set_cpus(static_cast<uint32_t>(cfg.topology.cpu_count()));
  ao.topology.set_cores_per_node(cfg.cores_per_node != 0 ? cfg.cores_per_node
                                                         : static_cast<uint32_t>(std::max<size_t>(1, cfg.topology.nodes.front().cpus.size())));
  v1::Transport t;
  t.set_kind(log);
  if (log == "rdma") {
    t.set_path(cfg.device);
  } else {
    t.set_path(cfg.region);
    t.set_bytes(cfg.region_bytes);
    const std::string coherence = cmd.get("coherence").value_or("coherent");
    if (coherence != "coherent" && coherence != "noncoherent") {
      return cli::fail(cmd, Status::invalid_argument("--coherence must be coherent or noncoherent"));
    }
    t.set_coherence(coherence);
  }
  ao.transports.push_back(t);
  std::printf("nrx node: joining %s (%s) with %zu nodes, %s %s\n", ao.address.c_str(), ao.tls ? "TLS" : "plaintext",
              cfg.topology.nodes.size(), log == "rdma" ? "RDMA device" : "region",
              log == "rdma" ? cfg.device.c_str() : cfg.region.c_str());
  std::fflush(stdout);
  Result<std::unique_ptr<cluster::Agent>> agent = cluster::Agent::join(ao);
  if (!agent.ok()) {
    std::fprintf(stderr, "nrx node: cannot join: %s\n", agent.status().to_string().c_str());
    return 1;
  }
  const v1::JoinReply& j = (*agent)->joined();
  std::printf("nrx node: joined cluster %s as node %u (replicas %u..%u of %u machines), lease %u ms\n",
              hex(j.cluster_id()).c_str(), j.node_id(), j.first_replica(), j.first_replica() + j.replicas_per_node() - 1,
              j.expected_nodes(), j.lease_ms());
  std::fflush(stdout);
  // A fenced machine stops at once: its replicas were (or are about to be) fenced on the shared
  // logs, and nothing it does from now on may reach them.
  std::thread watchdog([a = agent->get()] {
    for (;;) {
      if (a->lost()) {
        std::fprintf(stderr, "nrx node: stopping: %s\n", a->lost_reason().c_str());
        std::fflush(stderr);
        _exit(3);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a watchdog's poll period
    }
  });
  watchdog.detach();
  uint64_t done = 0;
  int rc = 0;
  while (*runs == 0 || done < *runs) {
    Result<v1::RunOrder> order = (*agent)->next_run(Clock::now() + std::chrono::hours(24));
    if (!order.ok()) {
      if (order.status().code() == StatusCode::kCancelled) {
        std::printf("nrx node: the controller shut down; leaving\n");
        break;
      }
      std::fprintf(stderr, "nrx node: %s\n", order.status().to_string().c_str());
      return 1;
    }
    const v1::ReportRequest r = run_once(**agent, *order, cfg, *image);
    if (!r.ok()) {
      (void)(*agent)->report(r);
      rc = 1;
    }
    (*agent)->set_phase(0, v1::PHASE_IDLE);
    ++done;
  }
  return rc;
}

// ---- nrx cluster ----

static int cluster_status(const std::vector<std::string>& args) {
  cli::Command cmd("cluster status", "Show the cluster: machines, their replicas, heartbeats, log positions and lag, and the last run.");
  common_access_options(cmd);
  cmd.flag("json", "print the controller's answer as JSON (protobuf's mapping)");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  Result<Access> a = access_from(cmd);
  if (!a.ok()) return cli::fail(cmd, a.status());
  v1::StatusRequest req;
  req.set_secret(a->secret);
  v1::StatusReply s;
  if (Status st = a->client->status(req, &s); !st.ok()) {
    std::fprintf(stderr, "nrx cluster status: %s\n", st.to_string().c_str());
    return 1;
  }
  if (cmd.flag_set("json")) {
    std::string json;
    google::protobuf::util::JsonPrintOptions jo;
    jo.always_print_primitive_fields = true;
    if (!google::protobuf::util::MessageToJsonString(s, &json, jo).ok()) {
      std::fprintf(stderr, "nrx cluster status: cannot print the answer as JSON\n");
      return 1;
    }
    std::printf("%s\n", json.c_str());
    return 0;
  }
  std::printf("cluster %s: %d of %u machines joined, lease %u ms, %s; run %" PRIu64 " %s\n",
              hex(s.cluster_id()).c_str(), s.nodes_size(), s.expected_nodes(), s.lease_ms(),
              s.tls() ? "TLS" : "plaintext", s.run_id(), s.run_state().c_str());
  std::printf("%-5s %-16s %-7s %-9s %-10s %-10s %-10s %s\n", "node", "host", "state", "replicas", "heartbeat",
              "phase", "fs calls", "logs (name tail lag)");
  for (const v1::NodeStatus& n : s.nodes()) {
    std::string logs;
    for (const v1::LogPosition& p : n.logs()) {
      logs += p.name() + " " + std::to_string(p.tail()) + " " + std::to_string(p.tail() - p.ltail()) + "  ";
    }
    std::string phase = v1::Phase_Name(n.phase());
    if (phase.rfind("PHASE_", 0) == 0) phase = phase.substr(6);
    char reps[32];
    std::snprintf(reps, sizeof reps, "%u..%u", n.first_replica(), n.first_replica() + n.replicas() - 1);
    std::printf("%-5u %-16s %-7s %-9s %7.1f s  %-10s %-10" PRIu64 " %s\n", n.node_id(), n.hostname().c_str(),
                n.state().c_str(), reps, n.since_heartbeat_s(), phase.c_str(), n.fs_calls(), logs.c_str());
  }
  return 0;
}

static int cluster_run(const std::vector<std::string>& args) {
  cli::Command cmd("cluster run",
                   "Run a workload on every live machine of the cluster: each boots the kernel on a freshly\n"
                   "formatted shared region, runs it with writes from every machine, and reports its replicas'\n"
                   "digests. Exit 0 when every machine's every replica ends with the same digests.");
  cmd.positional_arg("WORKLOAD", "demo, kv, fsbench, mapbench or logbench (required)");
  common_access_options(cmd);
  cmd.option("seconds", "S", "how long the workload runs", "3");
  cmd.option("seed", "N", "random seed (machine m uses seed + m)", "1");
  cmd.option("timeout", "S", "give up after S seconds", "600");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  const std::string workload = cmd.positional().value_or("");
  if (workload.empty()) return cli::fail(cmd, Status::invalid_argument("name a WORKLOAD (demo, kv, fsbench, mapbench, logbench)"));
  auto seed = cmd.get_u64("seed", 1, 0, UINT64_MAX);
  auto timeout = cmd.get_u64("timeout", 600, 1, 3600);
  if (!seed.ok()) return cli::fail(cmd, seed.status());
  if (!timeout.ok()) return cli::fail(cmd, timeout.status());
  char* end = nullptr;
  const std::string secs_s = cmd.get("seconds").value_or("3");
  const double secs = std::strtod(secs_s.c_str(), &end);
  if (end == secs_s.c_str() || *end != '\0' || !(secs > 0) || secs > 3600) {
    return cli::fail(cmd, Status::invalid_argument("--seconds must be in (0, 3600]"));
  }
  Result<Access> a = access_from(cmd);
  if (!a.ok()) return cli::fail(cmd, a.status());
  v1::RunRequest req;
  req.set_secret(a->secret);
  req.set_workload(workload);
  req.set_seconds(secs);
  req.set_seed(*seed);
  req.set_timeout_s(static_cast<uint32_t>(*timeout));
  std::printf("nrx cluster run: %s for %.1f s on every live machine ...\n", workload.c_str(), secs);
  std::fflush(stdout);
  v1::RunReply r;
  if (Status st = a->client->run(req, &r, std::chrono::seconds(*timeout + 5)); !st.ok()) {
    std::fprintf(stderr, "nrx cluster run: %s\n", st.to_string().c_str());
    return st.code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::printf("%-8s %-5s %-16s %-8s %-10s %-8s %-17s %s\n", "machine", "node", "host", "outcome", "fs calls",
              "seconds", "proc digest", "fs digest");
  for (const v1::MachineResult& m : r.machines()) {
    std::printf("%-8u %-5u %-16s %-8s %-10" PRIu64 " %-8.2f %-17s %s%s%s\n", m.machine(), m.node_id(),
                m.hostname().c_str(), m.outcome().c_str(), m.fs_calls(), m.seconds(),
                m.proc_digests_size() ? hex(m.proc_digests(0)).c_str() : "-",
                m.fs_digests_size() ? hex(m.fs_digests(0)).c_str() : "-", m.error().empty() ? "" : "  ",
                m.error().c_str());
  }
  std::printf("run %" PRIu64 ": %s in %.1f s; every replica on every reporting machine %s\n", r.run_id(),
              r.ok() ? "OK" : "FAILED", r.seconds(), r.digests_equal() ? "has the same digests" : "does NOT agree");
  if (workload == "logbench") {
    std::vector<double> ratios;
    std::printf("\nlogbench: append+exec, 32-byte entries in batches of 8, entries/s per machine\n");
    std::printf("%-8s %-16s %14s %14s %10s\n", "machine", "host", "shared log", "local ring", "shm/ring");
    for (const v1::MachineResult& m : r.machines()) {
      if (m.outcome() != "ok") continue;
      const double ratio = m.shm_ops_per_s() / std::max(m.ring_ops_per_s(), 1e-9);
      ratios.push_back(ratio);
      std::printf("%-8u %-16s %14.0f %14.0f %10.3f\n", m.machine(), m.hostname().c_str(), m.shm_ops_per_s(),
                  m.ring_ops_per_s(), ratio);
    }
    if (!ratios.empty()) {
      std::sort(ratios.begin(), ratios.end());
      std::printf("median shm/ring ratio %.3f over %zu machines\n", ratios[ratios.size() / 2], ratios.size());
    }
    std::printf("note: inside QEMU (TCG) absolute rates measure the emulator, not the hardware; compare ratios.\n"
                "      The shared log is appended to by every machine at once; the ring by this machine alone.\n");
  }
  if (r.fenced_entries() != "none fenced") {
    std::printf("fenced machines' applied log entries on every survivor: %s\n", r.fenced_entries().c_str());
  }
  if (!r.error().empty()) std::printf("error: %s\n", r.error().c_str());
  return r.ok() ? 0 : 1;
}

static int cluster_init(const std::vector<std::string>& args) {
  cli::Command cmd("cluster init",
                   "Make a cluster directory: a random secret and a self-signed CA with the controller's\n"
                   "certificate (OpenSSL). The controller then serves TLS and machines check it.");
  cmd.positional_arg("DIR", "the directory to create (required)");
  cmd.option("san", "NAMES", "more names or IPs the controller is reached by (comma-separated)");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  const std::string dir = cmd.positional().value_or("");
  if (dir.empty()) return cli::fail(cmd, Status::invalid_argument("name the directory to create"));
  Status st = cluster::init_cluster_dir(dir, split(cmd.get("san").value_or(""), ','));
  if (!st.ok()) {
    std::fprintf(stderr, "nrx cluster init: %s\n", st.to_string().c_str());
    return st.code() == StatusCode::kAlreadyExists ? 2 : 1;
  }
  std::printf("nrx cluster init: %s: secret, ca.pem, controller.pem (and their keys)\n", dir.c_str());
  return 0;
}

static int cluster_down_rpc(const std::vector<std::string>& args) {
  cli::Command cmd("cluster shutdown", "Tell the controller to stop (machines leave at their next heartbeat).");
  common_access_options(cmd);
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  Result<Access> a = access_from(cmd);
  if (!a.ok()) return cli::fail(cmd, a.status());
  v1::ShutdownRequest req;
  req.set_secret(a->secret);
  if (Status st = a->client->shutdown(req); !st.ok()) {
    std::fprintf(stderr, "nrx cluster shutdown: %s\n", st.to_string().c_str());
    return 1;
  }
  return 0;
}

int run_cluster(const std::vector<std::string>& args) {
  static const char* kUsage =
      "usage: nrx cluster <command> [options]\n"
      "\n"
      "A rack of nrx machines (QEMU VMs here) sharing the kernel's logs through shared memory or RDMA.\n"
      "\n"
      "commands:\n"
      "  up        start N VMs on one shared memory (--shm ivshmem|cxl) or with RDMA logs (--log rdma:\n"
      "            soft-RoCE) and a private network, the controller on the host, and an `nrx node` in\n"
      "            every VM; returns once every machine joined (deploy/cluster.sh; `up --help`)\n"
      "  run W     run workload W (demo, kv, fsbench, mapbench, logbench) on every machine; check digests\n"
      "  status    machines, replicas, heartbeats, log positions and lag\n"
      "  down      stop the machines, the controller and the VMs; remove the shared memory\n"
      "  init DIR  make a cluster directory: secret and TLS certificates (OpenSSL)\n"
      "  shutdown  tell the controller to stop (what `down` does first)\n"
      "\n"
      "Run `nrx cluster <command> --help` for its options.\n";
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string sub = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (sub == "status") return cluster_status(rest);
  if (sub == "run") return cluster_run(rest);
  if (sub == "init") return cluster_init(rest);
  if (sub == "shutdown") return cluster_down_rpc(rest);
  if (sub == "up" || sub == "down") {
    const std::string script = repo_root() + "/deploy/cluster.sh";
    if (access(script.c_str(), X_OK) != 0) {
      std::fprintf(stderr, "nrx cluster %s: %s is missing (set NRX_ROOT to the nrx checkout)\n", sub.c_str(), script.c_str());
      return 2;
    }
    // The script runs this very binary on the host and in the guests.
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0 && std::getenv("NRX_BIN") == nullptr) setenv("NRX_BIN", std::string(exe, static_cast<size_t>(n)).c_str(), 1);
    std::vector<std::string> argv = {script, sub};
    argv.insert(argv.end(), rest.begin(), rest.end());
    std::vector<char*> cargv;
    for (std::string& s : argv) cargv.push_back(s.data());
    cargv.push_back(nullptr);
    execv(script.c_str(), cargv.data());
    std::fprintf(stderr, "nrx cluster %s: cannot run %s: %s\n", sub.c_str(), script.c_str(), std::strerror(errno));
    return 1;
  }
  std::fprintf(stderr, "nrx cluster: unknown command '%s' (see 'nrx cluster --help')\n", sub.c_str());
  return 2;
}

}  // namespace nrx::tools
