#include "cluster/controller.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <random>

namespace nrx::cluster {
namespace {

uint64_t random_u64() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^ (static_cast<uint64_t>(Clock::now().time_since_epoch().count()) << 7);
}

// Constant time in the secret's length: a wrong secret's position of first difference is not
// visible in the answer's timing.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

bool printable(const std::string& s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isprint(static_cast<unsigned char>(c)) != 0; });
}

Status check_logs(const google::protobuf::RepeatedPtrField<v1::LogPosition>& logs) {
  if (logs.size() > 64) return Status::invalid_argument("logs: at most 64 log positions");
  for (const v1::LogPosition& p : logs) {
    if (!printable(p.name(), 32)) return Status::invalid_argument("logs: a log name must be 1..32 printable characters");
    if (p.ltail() > p.tail()) return Status::invalid_argument("logs: ltail above tail for log " + p.name());
  }
  return Status::ok_status();
}

// An exchange name: 1..kMaxExchangeName characters of [A-Za-z0-9_.-] (it lands in messages and logs).
bool exchange_name(const std::string& s) {
  if (s.empty() || s.size() > kMaxExchangeName) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

}  // namespace

Result<std::unique_ptr<Controller>> Controller::create(ControllerOptions options) {
  if (options.secret.size() < kMinSecretBytes) {
    return Status::invalid_argument("the cluster secret must have at least " + std::to_string(kMinSecretBytes) +
                                    " bytes (nrx cluster init writes one)");
  }
  if (options.expected_nodes == 0 || options.expected_nodes > kMaxReplicas) {
    return Status::invalid_argument("expected nodes must be in 1.." + std::to_string(kMaxReplicas));
  }
  if (options.heartbeat.count() <= 0 || options.lease < 2 * options.heartbeat) {
    return Status::invalid_argument("the lease must be at least two heartbeat periods");
  }
  if (options.cluster_id == 0) options.cluster_id = random_u64() | 1;
  if (!options.now) options.now = [] { return Clock::now(); };
  return std::unique_ptr<Controller>(new Controller(std::move(options)));
}

Controller::Controller(ControllerOptions options) : options_(std::move(options)) {}

Status Controller::check_secret(const std::string& secret) const {
  if (!same_secret(secret, options_.secret)) return Status::permission_denied("wrong cluster secret");
  return Status::ok_status();
}

Status Controller::join(const v1::JoinRequest& request, v1::JoinReply* reply) {
  NRX_RETURN_IF_ERROR(check_secret(request.secret()));
  if (request.protocol() != kProtocol) {
    return Status::invalid_argument("protocol " + std::to_string(request.protocol()) + " is not this controller's (" +
                                    std::to_string(kProtocol) + "): run the same nrx build everywhere");
  }
  if (!printable(request.hostname(), 64)) return Status::invalid_argument("hostname: 1..64 printable characters");
  const v1::Topology& t = request.topology();
  if (t.nodes() == 0 || t.nodes() > kMaxReplicas) {
    return Status::invalid_argument("topology.nodes must be in 1.." + std::to_string(kMaxReplicas));
  }
  if (t.cpus() == 0 || t.cpus() > 4096) return Status::invalid_argument("topology.cpus must be in 1..4096");
  if (t.cores_per_node() == 0 || t.cores_per_node() > 64) {
    return Status::invalid_argument("topology.cores_per_node must be in 1..64");
  }
  if (request.transports_size() == 0) return Status::invalid_argument("transports: a machine needs one (shm or rdma)");
  if (request.transports_size() > 8) return Status::invalid_argument("transports: at most 8");
  for (const v1::Transport& tr : request.transports()) {
    if (tr.kind() == "rdma") {
      // A verbs device name (rxe0, mlx5_0): no path, no space.
      if (!printable(tr.path(), 64) || tr.path().find_first_of("/ ") != std::string::npos) {
        return Status::invalid_argument("transports: an rdma transport needs a device name (1..64 printable "
                                        "characters, no '/' or space)");
      }
      continue;  // bytes and coherence mean nothing here
    }
    if (tr.kind() != "shm") {
      return Status::invalid_argument("transports: kind '" + tr.kind().substr(0, 16) + "' is not supported (shm, rdma)");
    }
    if (!printable(tr.path(), 4096) || tr.path()[0] != '/') {
      return Status::invalid_argument("transports: a shm transport needs an absolute path");
    }
    if (tr.bytes() < (uint64_t{4} << 20)) return Status::invalid_argument("transports: a shm region of at least 4 MiB");
    if (!tr.coherence().empty() && tr.coherence() != "coherent" && tr.coherence() != "noncoherent") {
      return Status::invalid_argument("transports: coherence must be coherent or noncoherent");
    }
  }
  // The first transport is the one the machine's logs use.
  const std::string kind = request.transports(0).kind();
  const std::string coherence =
      request.transports(0).coherence().empty() ? "coherent" : request.transports(0).coherence();
  MutexLock lock(mu_);
  if (shutdown_) return Status::unavailable("the controller is shutting down");
  const uint32_t live = static_cast<uint32_t>(
      std::count_if(nodes_.begin(), nodes_.end(), [](const Node& n) { return !n.fenced; }));
  if (live >= options_.expected_nodes) {
    return Status::resource_exhausted("the cluster is full: " + std::to_string(live) + " of " +
                                      std::to_string(options_.expected_nodes) + " machines joined");
  }
  if (replicas_per_node_ == 0) replicas_per_node_ = t.nodes();
  if (t.nodes() != replicas_per_node_) {
    return Status::invalid_argument("topology mismatch: every machine of this cluster runs " +
                                    std::to_string(replicas_per_node_) + " replicas (NUMA nodes); this one has " +
                                    std::to_string(t.nodes()) + " (use nrx node --nodes " +
                                    std::to_string(replicas_per_node_) + ")");
  }
  if (log_.empty()) log_ = kind;
  if (kind != log_) {
    return Status::invalid_argument("transport mismatch: this cluster's logs use " + log_ + ", this machine's " + kind +
                                    " (every machine of a cluster must use the same)");
  }
  if (kind == "shm") {
    if (coherence_.empty()) coherence_ = coherence;
    if (coherence != coherence_) {
      return Status::invalid_argument("coherence mismatch: this cluster's shared memory is " + coherence_ +
                                      ", this machine's is " + coherence);
    }
  }
  if (uint64_t{nodes_.size() + 1} * replicas_per_node_ > kMaxReplicas) {
    return Status::resource_exhausted("no replica ids left (" + std::to_string(kMaxReplicas) + " at most)");
  }
  Node n;
  n.id = static_cast<uint32_t>(nodes_.size());
  n.token = (random_u64() & ~uint64_t{0xffff}) | (++next_token_ & 0xffff);
  n.hostname = request.hostname();
  n.topology = t;
  n.transports.assign(request.transports().begin(), request.transports().end());
  n.last_beat = options_.now();
  nodes_.push_back(n);
  reply->set_node_id(n.id);
  reply->set_token(n.token);
  reply->set_cluster_id(options_.cluster_id);
  reply->set_lease_ms(static_cast<uint32_t>(options_.lease.count()));
  reply->set_heartbeat_ms(static_cast<uint32_t>(options_.heartbeat.count()));
  reply->set_replicas_per_node(replicas_per_node_);
  reply->set_first_replica(n.id * replicas_per_node_);
  reply->set_expected_nodes(options_.expected_nodes);
  changed_.notify_all();
  return Status::ok_status();
}

Status Controller::find_node_locked(uint32_t id, uint64_t token, Node** node) {
  if (id >= nodes_.size()) return Status::not_found("no node " + std::to_string(id) + " joined this controller");
  Node& n = nodes_[id];
  if (n.token != token) return Status::failed_precondition("a stale token for node " + std::to_string(id));
  *node = &n;
  return Status::ok_status();
}

bool Controller::live_locked(uint32_t id) const { return id < nodes_.size() && !nodes_[id].fenced; }

void Controller::fence_locked(Node& node, std::string reason) {
  if (node.fenced) return;
  node.fenced = true;
  node.fenced_reason = std::move(reason);
  update_run_locked();
  changed_.notify_all();
}

// Ends the current run when every live machine reported, or when machine 0 was fenced before it
// formatted the region (nobody else can then start).
void Controller::update_run_locked() {
  if (current_run_ == 0) return;
  Run& run = runs_[current_run_];
  if (run.ended) return;
  const uint32_t m0 = run.machines.front();
  const bool m0_failed = run.reports.count(m0) != 0 && !run.reports.at(m0).ok();
  if (!run.formatted && (!live_locked(m0) || m0_failed || !run.error.empty())) {
    // Nobody else can start: the others attach only to a region machine 0 formatted.
    if (run.error.empty()) {
      run.error = live_locked(m0) ? "machine 0 (node " + std::to_string(m0) + ") failed before it formatted the region"
                                  : "machine 0 (node " + std::to_string(m0) + ") was fenced before it formatted the region";
    }
  } else {
    for (uint32_t id : run.machines) {
      if (live_locked(id) && run.reports.count(id) == 0) return;
    }
  }
  run.ended = true;
  run.finished = options_.now();
  current_run_ = 0;
  changed_.notify_all();
}

Status Controller::heartbeat(const v1::HeartbeatRequest& request, v1::HeartbeatReply* reply) {
  NRX_RETURN_IF_ERROR(check_secret(request.secret()));
  NRX_RETURN_IF_ERROR(check_logs(request.logs()));
  if (!v1::Phase_IsValid(request.phase())) return Status::invalid_argument("phase: unknown value");
  if (request.error().size() > 4096) return Status::invalid_argument("error: at most 4096 bytes");
  if (request.unreachable_machines_size() > 64) return Status::invalid_argument("unreachable_machines: at most 64");
  MutexLock lock(mu_);
  Node* n = nullptr;
  NRX_RETURN_IF_ERROR(find_node_locked(request.node_id(), request.token(), &n));
  if (shutdown_) {
    n->told_shutdown = true;
    reply->set_verdict(v1::HeartbeatReply::VERDICT_SHUTDOWN);
    return Status::ok_status();
  }
  if (n->fenced) {
    reply->set_verdict(v1::HeartbeatReply::VERDICT_FENCED);
    return Status::ok_status();
  }
  // The run this machine works on, or (none yet) the current one if it takes part in it. Checked
  // before the lease is renewed: a refused beat renews nothing (the agent counts it as failed too).
  const uint64_t rid = request.run_id() != 0 ? request.run_id() : current_run_;
  auto it = runs_.find(rid);
  if (rid != 0 && it == runs_.end()) return Status::invalid_argument("no run " + std::to_string(rid));
  if (rid != 0 && request.run_id() != 0 &&
      std::find(it->second.machines.begin(), it->second.machines.end(), n->id) == it->second.machines.end()) {
    return Status::invalid_argument("this machine takes no part in run " + std::to_string(rid));
  }
  n->last_beat = options_.now();
  n->phase = request.phase();
  n->fs_calls = request.fs_calls();
  n->logs.assign(request.logs().begin(), request.logs().end());
  n->error = request.error();
  n->run_id = request.run_id();
  reply->set_verdict(v1::HeartbeatReply::VERDICT_OK);
  if (rid == 0) return Status::ok_status();
  Run& run = it->second;
  const auto pos = std::find(run.machines.begin(), run.machines.end(), n->id);
  if (pos == run.machines.end()) return Status::ok_status();  // joined after the run started: waits for the next
  const uint32_t machine = static_cast<uint32_t>(pos - run.machines.begin());
  if (request.run_id() == rid && request.phase() > run.phase[n->id]) run.phase[n->id] = request.phase();
  // A broken RDMA link: the peer's mirrors miss entries from now on, so it leaves the run at once.
  for (uint32_t m : request.unreachable_machines()) {
    if (request.run_id() != rid || m >= run.machines.size() || m == machine) continue;
    Node& peer = nodes_[run.machines[m]];
    fence_locked(peer, "its RDMA link broke (reported by node " + std::to_string(n->id) + ")");
  }
  if (machine == 0 && request.run_id() == rid && request.phase() >= v1::PHASE_FORMATTED &&
      request.phase() != v1::PHASE_FAILED) {
    run.formatted = true;
  }
  if (machine == 0 && request.run_id() == rid && request.phase() == v1::PHASE_FAILED && !run.formatted) {
    run.error = "machine 0 failed before it formatted the region: " + request.error();
  }
  if (!run.ended && !run.abandoned && (machine == 0 || run.formatted)) {
    v1::RunOrder* o = reply->mutable_run();
    o->set_run_id(run.id);
    o->set_workload(run.request.workload());
    o->set_machine(machine);
    o->set_machines(static_cast<uint32_t>(run.machines.size()));
    o->set_format(machine == 0 && run.log == "shm");
    o->set_region_cluster_id(run.region_cluster_id);
    o->set_seconds(run.request.seconds());
    o->set_seed(run.request.seed());
    o->set_noncoherent(run.log == "shm" && coherence_ == "noncoherent");
    o->set_log(run.log);
  }
  bool all_done = true;
  for (uint32_t id : run.machines) {
    if (!live_locked(id)) {
      reply->add_fenced_machines(static_cast<uint32_t>(std::find(run.machines.begin(), run.machines.end(), id) -
                                                       run.machines.begin()));
      continue;
    }
    const v1::Phase p = run.phase.count(id) ? run.phase[id] : v1::PHASE_IDLE;
    if (p < v1::PHASE_DONE) all_done = false;
  }
  reply->set_all_done(all_done);
  reply->set_release(run.ended || run.abandoned);
  if (!run.error.empty() && !run.ended) update_run_locked();
  return Status::ok_status();
}

Status Controller::report(const v1::ReportRequest& request, v1::ReportReply*) {
  NRX_RETURN_IF_ERROR(check_secret(request.secret()));
  if (request.error().size() > 4096) return Status::invalid_argument("error: at most 4096 bytes");
  if (!std::isfinite(request.seconds()) || request.seconds() < 0) return Status::invalid_argument("seconds: not a duration");
  NRX_RETURN_IF_ERROR(check_logs(request.logs()));
  MutexLock lock(mu_);
  Node* n = nullptr;
  NRX_RETURN_IF_ERROR(find_node_locked(request.node_id(), request.token(), &n));
  if (n->fenced) return Status::failed_precondition("node " + std::to_string(n->id) + " was fenced: its report is refused");
  auto it = runs_.find(request.run_id());
  if (it == runs_.end()) return Status::invalid_argument("no run " + std::to_string(request.run_id()));
  Run& run = it->second;
  if (std::find(run.machines.begin(), run.machines.end(), n->id) == run.machines.end()) {
    return Status::invalid_argument("this machine takes no part in run " + std::to_string(run.id));
  }
  if (request.ok() && (request.proc_digests_size() != static_cast<int>(replicas_per_node_) ||
                       request.fs_digests_size() != static_cast<int>(replicas_per_node_))) {
    return Status::invalid_argument("a report needs one proc and one fs digest per replica (" +
                                    std::to_string(replicas_per_node_) + ")");
  }
  n->last_beat = options_.now();
  if (request.ok() && n->id == run.machines.front()) run.formatted = true;  // it booted on its region
  run.reports[n->id] = request;
  run.phase[n->id] = request.ok() ? v1::PHASE_REPORTED : v1::PHASE_FAILED;
  update_run_locked();
  changed_.notify_all();
  return Status::ok_status();
}

Result<uint64_t> Controller::start_run(const v1::RunRequest& request) {
  NRX_RETURN_IF_ERROR(check_secret(request.secret()));
  const auto& w = workloads();
  if (std::find(w.begin(), w.end(), request.workload()) == w.end()) {
    std::string names;
    for (const std::string& s : w) names += (names.empty() ? "" : ", ") + s;
    return Status::invalid_argument("unknown workload '" + request.workload().substr(0, 32) + "' (" + names + ")");
  }
  if (!(request.seconds() > 0) || request.seconds() > 3600) {
    return Status::invalid_argument("seconds must be in (0, 3600]");
  }
  MutexLock lock(mu_);
  if (shutdown_) return Status::unavailable("the controller is shutting down");
  if (current_run_ != 0) return Status::failed_precondition("run " + std::to_string(current_run_) + " is still going on");
  if (nodes_.size() < options_.expected_nodes) {
    return Status::failed_precondition(std::to_string(nodes_.size()) + " of " + std::to_string(options_.expected_nodes) +
                                       " machines joined so far");
  }
  Run run;
  run.id = next_run_++;
  run.request = request;
  run.request.clear_secret();
  for (const Node& n : nodes_) {
    if (!n.fenced) run.machines.push_back(n.id);
  }
  if (run.machines.empty()) return Status::failed_precondition("no live machine");
  // Every run formats a fresh region: a cluster id of its own keeps a machine from attaching to
  // the previous run's directory.
  run.region_cluster_id = (options_.cluster_id ^ (run.id * 0x9e3779b97f4a7c15ull)) | 1;
  run.log = log_;
  // The RDMA log has no shared region: nobody waits for machine 0 to format one.
  run.formatted = run.log == "rdma";
  run.started = options_.now();
  // The previous runs' endpoints name queue pairs that are gone.
  for (auto& entry : runs_) entry.second.exchanges.clear();
  current_run_ = run.id;
  runs_[run.id] = std::move(run);
  changed_.notify_all();
  return current_run_;
}

void Controller::describe_run_locked(const Run& run, v1::RunReply* reply) const {
  reply->set_run_id(run.id);
  bool ok = run.error.empty();
  bool equal = true;
  const v1::ReportRequest* first = nullptr;
  std::string error = run.error;
  for (size_t m = 0; m < run.machines.size(); ++m) {
    const uint32_t id = run.machines[m];
    const Node& n = nodes_[id];
    v1::MachineResult* r = reply->add_machines();
    r->set_node_id(id);
    r->set_machine(static_cast<uint32_t>(m));
    r->set_hostname(n.hostname);
    auto it = run.reports.find(id);
    if (it != run.reports.end()) {
      const v1::ReportRequest& rep = it->second;
      r->set_outcome(rep.ok() ? "ok" : "failed");
      r->set_error(rep.error());
      *r->mutable_proc_digests() = rep.proc_digests();
      *r->mutable_fs_digests() = rep.fs_digests();
      r->set_fs_calls(rep.fs_calls());
      r->set_seconds(rep.seconds());
      *r->mutable_logs() = rep.logs();
      r->set_shm_ops_per_s(rep.shm_ops_per_s());
      r->set_ring_ops_per_s(rep.ring_ops_per_s());
      if (!rep.ok()) {
        ok = false;
        if (error.empty()) error = "machine " + std::to_string(m) + ": " + rep.error();
        continue;
      }
      for (int i = 0; i < rep.proc_digests_size(); ++i) {
        const v1::ReportRequest& f = first ? *first : rep;
        if (rep.proc_digests(i) != f.proc_digests(0) || rep.fs_digests(i) != f.fs_digests(0)) equal = false;
      }
      if (!first) first = &rep;
    } else if (n.fenced) {
      r->set_outcome("fenced");
      r->set_error("lease expired");
      for (const v1::LogPosition& p : n.logs) *r->add_logs() = p;
    } else {
      r->set_outcome("missing");
      ok = false;
    }
  }
  if (!first) {
    ok = false;
    if (error.empty()) error = "no machine reported";
  }
  // What fenced machines had applied must be in every survivor's replicas.
  std::string kept = "none fenced";
  for (uint32_t id : run.machines) {
    if (!nodes_[id].fenced) continue;
    if (kept == "none fenced") kept = "kept";
    for (const v1::LogPosition& dead : nodes_[id].logs) {
      for (const auto& [sid, rep] : run.reports) {
        if (!rep.ok()) continue;
        for (const v1::LogPosition& live : rep.logs()) {
          if (live.name() == dead.name() && live.ltail() < dead.ltail()) {
            kept = "LOST: node " + std::to_string(id) + " had applied " + dead.name() + " up to " +
                   std::to_string(dead.ltail()) + ", node " + std::to_string(sid) + " ends at " +
                   std::to_string(live.ltail());
            ok = false;
            if (error.empty()) error = kept;
          }
        }
      }
    }
  }
  reply->set_fenced_entries(kept);
  if (!equal) {
    ok = false;
    if (error.empty()) error = "replica digests differ between machines";
  }
  reply->set_ok(ok && run.ended);
  reply->set_digests_equal(first != nullptr && equal);
  reply->set_error(error);
  const Clock::time_point end = run.ended ? run.finished : options_.now();
  reply->set_seconds(std::chrono::duration<double>(end - run.started).count());
}

Status Controller::wait_run(uint64_t run_id, Clock::time_point deadline, v1::RunReply* reply) {
  MutexLock lock(mu_);
  if (runs_.count(run_id) == 0) return Status::not_found("no run " + std::to_string(run_id));
  for (;;) {
    Run& run = runs_[run_id];
    if (run.ended || run.abandoned || shutdown_) break;
    if (Clock::now() >= deadline) {
      run.abandoned = true;
      run.error = "the run did not end in time";
      if (current_run_ == run_id) current_run_ = 0;
      changed_.notify_all();  // exchange() waiters of this run give up
      describe_run_locked(run, reply);
      return Status::deadline_exceeded("run " + std::to_string(run_id) + " did not end in time");
    }
    // A bounded wait: lease expiry (another thread) notifies, and the deadline is re-checked.
    changed_.wait_until(mu_, std::min(deadline, Clock::now() + std::chrono::milliseconds(200)));
  }
  describe_run_locked(runs_[run_id], reply);
  if (shutdown_ && !runs_[run_id].ended) return Status::unavailable("the controller is shutting down");
  return Status::ok_status();
}

Status Controller::status(const v1::StatusRequest& request, v1::StatusReply* reply) {
  NRX_RETURN_IF_ERROR(check_secret(request.secret()));
  MutexLock lock(mu_);
  reply->set_cluster_id(options_.cluster_id);
  reply->set_expected_nodes(options_.expected_nodes);
  reply->set_lease_ms(static_cast<uint32_t>(options_.lease.count()));
  reply->set_tls(options_.tls);
  const Clock::time_point now = options_.now();
  for (const Node& n : nodes_) {
    v1::NodeStatus* s = reply->add_nodes();
    s->set_node_id(n.id);
    s->set_hostname(n.hostname);
    s->set_state(n.fenced ? "fenced" : "live");
    s->set_first_replica(n.id * replicas_per_node_);
    s->set_replicas(replicas_per_node_);
    s->set_since_heartbeat_s(std::chrono::duration<double>(now - n.last_beat).count());
    s->set_run_id(n.run_id);
    s->set_phase(n.phase);
    s->set_fs_calls(n.fs_calls);
    for (const v1::LogPosition& p : n.logs) *s->add_logs() = p;
    *s->mutable_topology() = n.topology;
    for (const v1::Transport& t : n.transports) *s->add_transports() = t;
    s->set_error(n.error);
    s->set_fenced_reason(n.fenced_reason);
  }
  uint64_t last = current_run_ != 0 ? current_run_ : (runs_.empty() ? 0 : runs_.rbegin()->first);
  reply->set_run_id(last);
  if (last == 0) {
    reply->set_run_state("none");
  } else if (current_run_ != 0) {
    reply->set_run_state("running");
  } else {
    v1::RunReply r;
    describe_run_locked(runs_[last], &r);
    reply->set_run_state(r.ok() ? "ok" : "failed");
  }
  return Status::ok_status();
}

Status Controller::shutdown(const v1::ShutdownRequest& request) {
  NRX_RETURN_IF_ERROR(check_secret(request.secret()));
  MutexLock lock(mu_);
  shutdown_ = true;
  changed_.notify_all();
  return Status::ok_status();
}

Status Controller::exchange(const v1::ExchangeRequest& request, v1::ExchangeReply* reply, Clock::time_point deadline,
                            const std::function<bool()>& cancelled) {
  NRX_RETURN_IF_ERROR(check_secret(request.secret()));
  if (!exchange_name(request.name())) {
    return Status::invalid_argument("name: 1.." + std::to_string(kMaxExchangeName) + " characters of [A-Za-z0-9_.-]");
  }
  if (request.timeout_ms() > kMaxExchangeTimeoutMs) {
    return Status::invalid_argument("timeout_ms: at most " + std::to_string(kMaxExchangeTimeoutMs));
  }
  for (int i = 0; i < request.to_machines_size(); ++i) {
    if (request.to_machines(i).size() > kMaxExchangeEntryBytes) {
      return Status::invalid_argument("to_machines[" + std::to_string(i) + "]: at most " +
                                      std::to_string(kMaxExchangeEntryBytes) + " bytes");
    }
  }
  const uint32_t timeout_ms = request.timeout_ms() == 0 ? kDefaultExchangeTimeoutMs : request.timeout_ms();
  // Real time, as wait_run: the wait sleeps on the condition variable, which the injected clock
  // cannot wake.
  deadline = std::min(deadline, Clock::now() + std::chrono::milliseconds(timeout_ms));
  const std::string& name = request.name();
  const std::string what = "exchange '" + name + "' of run " + std::to_string(request.run_id());

  MutexLock lock(mu_);
  Node* n = nullptr;
  NRX_RETURN_IF_ERROR(find_node_locked(request.node_id(), request.token(), &n));
  if (shutdown_) return Status(StatusCode::kCancelled, "the controller is shutting down");
  auto it = runs_.find(request.run_id());
  if (it == runs_.end()) return Status::invalid_argument("no run " + std::to_string(request.run_id()));
  // runs_ never erases: the reference outlives the waits below. Its exchanges may be cleared by
  // the next run meanwhile, so they are looked up again after every wait.
  Run& run = it->second;
  const auto pos = std::find(run.machines.begin(), run.machines.end(), n->id);
  if (pos == run.machines.end()) {
    return Status::invalid_argument("this machine takes no part in run " + std::to_string(run.id));
  }
  const uint32_t me = static_cast<uint32_t>(pos - run.machines.begin());
  const size_t machines = run.machines.size();
  if (static_cast<size_t>(request.to_machines_size()) != machines) {
    return Status::invalid_argument("to_machines: " + std::to_string(request.to_machines_size()) +
                                    " entries for the run's " + std::to_string(machines) + " machines");
  }
  if (!request.to_machines(static_cast<int>(me)).empty()) {
    return Status::invalid_argument("to_machines[" + std::to_string(me) + "]: this machine's own entry must be empty");
  }
  // Called with mu_ held (the analysis does not follow lambdas).
  const auto over = [&]() NRX_NO_THREAD_SAFETY_ANALYSIS {
    return run.ended || run.abandoned || current_run_ != run.id || !run.error.empty();
  };
  {
    std::vector<std::string> to(request.to_machines().begin(), request.to_machines().end());
    auto named = run.exchanges.find(name);
    if (named == run.exchanges.end() && !n->fenced && !over()) {
      if (run.exchanges.size() >= kMaxExchangeNames) {
        return Status::resource_exhausted(what + ": at most " + std::to_string(kMaxExchangeNames) + " names per run");
      }
      named = run.exchanges.emplace(name, std::map<uint32_t, std::vector<std::string>>()).first;
    }
    if (named != run.exchanges.end()) {
      auto mine = named->second.find(me);
      if (mine != named->second.end() && mine->second != to) {
        return Status::failed_precondition(what + ": machine " + std::to_string(me) + " already posted other content");
      }
      if (mine == named->second.end() && !n->fenced && !over()) {
        named->second.emplace(me, std::move(to));
        changed_.notify_all();
      }
    }
  }
  const auto machine_name = [&](size_t m) {
    return std::to_string(m) + " (node " + std::to_string(run.machines[m]) + ")";
  };
  for (;;) {
    auto named = run.exchanges.find(name);
    if (named != run.exchanges.end() && named->second.size() == machines) {
      // Complete: answer even if the run ended meanwhile (what was posted stays true).
      reply->clear_from_machines();
      for (size_t j = 0; j < machines; ++j) {
        reply->add_from_machines(j == me ? std::string() : named->second.at(static_cast<uint32_t>(j))[me]);
      }
      return Status::ok_status();
    }
    if (shutdown_) return Status(StatusCode::kCancelled, "the controller is shutting down");
    for (size_t m = 0; m < machines; ++m) {
      if (!live_locked(run.machines[m])) {
        return Status(StatusCode::kAborted,
                      what + ": machine " + machine_name(m) + " was fenced before every machine posted");
      }
    }
    if (over()) {
      const std::string how = run.error.empty() ? "ended" : "failed (" + run.error + ")";
      return Status(StatusCode::kAborted, what + ": the run " + how + " before every machine posted");
    }
    if (cancelled && cancelled()) return Status(StatusCode::kCancelled, what + ": the caller went away");
    if (Clock::now() >= deadline) {
      std::string missing;
      for (size_t m = 0; m < machines; ++m) {
        if (named == run.exchanges.end() || named->second.count(static_cast<uint32_t>(m)) == 0) {
          missing += (missing.empty() ? "" : ", ") + machine_name(m);
        }
      }
      return Status::deadline_exceeded(what + ": machines " + missing + " did not post within " +
                                       std::to_string(timeout_ms) + " ms");
    }
    // Posts, fencing, run ends and shutdown notify; the bounded wait re-checks |cancelled|.
    changed_.wait_until(mu_, std::min(deadline, Clock::now() + std::chrono::milliseconds(200)));
  }
}

std::vector<uint32_t> Controller::expire_leases() {
  MutexLock lock(mu_);
  std::vector<uint32_t> fenced;
  const Clock::time_point now = options_.now();
  for (Node& n : nodes_) {
    if (!n.fenced && now - n.last_beat > options_.lease) {
      fence_locked(n, "lease expired");
      fenced.push_back(n.id);
    }
  }
  return fenced;
}

bool Controller::all_told_shutdown() const {
  MutexLock lock(mu_);
  return std::all_of(nodes_.begin(), nodes_.end(), [](const Node& n) { return n.fenced || n.told_shutdown; });
}

bool Controller::shutting_down() const {
  MutexLock lock(mu_);
  return shutdown_;
}

bool Controller::wait_shutdown(Clock::time_point deadline) {
  MutexLock lock(mu_);
  while (!shutdown_ && Clock::now() < deadline) {
    changed_.wait_until(mu_, std::min(deadline, Clock::now() + std::chrono::milliseconds(200)));
  }
  return shutdown_;
}

}  // namespace nrx::cluster
