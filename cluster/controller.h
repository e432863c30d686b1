// nrx::cluster::Controller: the control plane of a rack of nrx machines (DESIGN 5). Machines join
// with their topology, transports and the cluster secret; the controller assigns node ids (the
// join order) and replica ids (node_id * replicas_per_node ...), runs leases on heartbeats, and
// drives runs: a run is one kernel instance per live machine on one freshly formatted shared
// region (no state transfer yet, so every run starts empty), with machine 0 formatting it and the
// others attaching only once it reported the region formatted.
//
// Transports. Every machine of a cluster uses the same transport kind for its logs (the first to
// join sets it; RunOrder::log says which): "shm", the shared region above, or "rdma", the RDMA log
// (logs/rdma/rdma_log.h), which has no region to format: every machine of an rdma run gets its
// order at once, and the machines swap their endpoints (queue pair numbers, GIDs, rkeys, addresses)
// through exchange(), a per-run, per-name barrier: each machine posts what it sends to each other
// machine, and once all of them posted, each gets what the others sent it.
//
// Fencing. A machine whose heartbeat is older than the lease is fenced: it is marked so for good
// (a rejoin is a new node id), it leaves every barrier of the current run, the survivors are told
// (HeartbeatReply::fenced_machines) and make their shared logs fence its replicas at once (the
// log's own lease does the data-plane work: its replicas leave the GC minimum and the slots it
// reserved but never published become no-ops, logs/shm/shm_log.h), and the machine itself, if it
// was only slow, is told VERDICT_FENCED on its next heartbeat and stops. A machine stops on its own
// when it could not renew its lease for a whole lease (cluster/agent.h): the two sides agree
// without talking.
//
// This class is the logic, with no gRPC in it (ControllerServer in server.h serves it); its clock
// is injectable so that lease expiry is tested without waiting. Thread-safe: every method may be
// called from any thread (one mutex; run waiters sleep on a condition variable).
//
//   Controller c({.secret = "0123456789abcdef", .expected_nodes = 2});
//   v1::JoinReply j; NRX_RETURN_IF_ERROR(c.join(request, &j));     // j.node_id(), j.token()
//   c.expire_leases();                                              // the server's lease thread
//   uint64_t run = c.start_run(run_request).value(); c.wait_run(run, deadline, &reply);
//   c.exchange(exchange_request, &exchange_reply);                  // rdma: each machine, blocks
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "cluster/proto/controller.pb.h"

namespace nrx::cluster {

// v1 (the generated protocol types) is nrx::cluster::v1: usable here unqualified.
using Clock = std::chrono::steady_clock;

// The protocol version JoinRequest::protocol must carry.
inline constexpr uint32_t kProtocol = 1;
// Shortest secret accepted (bytes): a cluster secret is a password, not a label.
inline constexpr size_t kMinSecretBytes = 16;
// Replicas in one cluster at most (the shared logs' replica limit).
inline constexpr uint32_t kMaxReplicas = 64;
// Workloads a run may name: the kernel's built-in programs, "demo" for all of them, and
// "logbench" (append/exec throughput of a shared log beside a local ring, tools/nrx/logbench.h).
inline const std::vector<std::string>& workloads();
// Exchange (ExchangeRequest): a name's length, one entry's bytes, the wait's default and limit.
inline constexpr size_t kMaxExchangeName = 64;
inline constexpr size_t kMaxExchangeEntryBytes = 512;
inline constexpr uint32_t kDefaultExchangeTimeoutMs = 60000;
inline constexpr uint32_t kMaxExchangeTimeoutMs = 600000;
inline constexpr size_t kMaxExchangeNames = 256;  // per run

struct ControllerOptions {
  std::string secret;                            // required, at least kMinSecretBytes
  uint32_t expected_nodes = 3;                   // machines the cluster waits for
  std::chrono::milliseconds lease{4000};         // heartbeat older than this: fenced
  std::chrono::milliseconds heartbeat{250};      // how often machines beat
  uint64_t cluster_id = 0;                       // 0: chosen at random
  bool tls = false;                              // reported by Status only
  std::function<Clock::time_point()> now = [] { return Clock::now(); };
};

class Controller {
 public:
  // Errors: kInvalidArgument (secret too short, expected_nodes 0 or above kMaxReplicas, lease below
  // 2 heartbeats).
  static Result<std::unique_ptr<Controller>> create(ControllerOptions options);

  // The RPCs (server.h maps each onto the gRPC method of the same name). Every one checks the
  // secret first: kPermissionDenied for a wrong one. Then:
  // join: kInvalidArgument (protocol, hostname, topology or transports malformed, a topology whose
  //   node count differs from the cluster's, a transport kind or coherence other than the
  //   cluster's), kResourceExhausted (the cluster is full).
  Status join(const v1::JoinRequest& request, v1::JoinReply* reply);
  // heartbeat: kNotFound (no such node), kFailedPrecondition (a stale token: an older incarnation),
  //   kInvalidArgument (a run id that is not this machine's run, a malformed log position).
  //   A fenced machine gets OK with VERDICT_FENCED.
  Status heartbeat(const v1::HeartbeatRequest& request, v1::HeartbeatReply* reply);
  // report: as heartbeat, plus kFailedPrecondition for a report from a fenced machine, and
  //   kInvalidArgument for digests whose count is not replicas_per_node.
  Status report(const v1::ReportRequest& request, v1::ReportReply* reply);
  // start_run: kInvalidArgument (unknown workload, seconds outside (0, 3600]), kFailedPrecondition
  //   (a run is still going on, fewer machines joined than expected, none live).
  Result<uint64_t> start_run(const v1::RunRequest& request);
  // Waits for |run_id| to end (every live machine reported, or machine 0 fenced before it
  // formatted) or |deadline|, and describes it. Errors: kNotFound (no such run),
  // kDeadlineExceeded (the run is then abandoned: a later run may start).
  Status wait_run(uint64_t run_id, Clock::time_point deadline, v1::RunReply* reply);
  Status status(const v1::StatusRequest& request, v1::StatusReply* reply);
  Status shutdown(const v1::ShutdownRequest& request);
  // exchange: posts request.to_machines under (run, name) and waits until every machine of the run
  //   posted under that name, then answers reply->from_machines[j] = what machine j sent to the
  //   caller. The wait ends at request.timeout_ms (real time; 0: kDefaultExchangeTimeoutMs) or
  //   |deadline| if sooner; |cancelled| (if set) is polled during it (the gRPC caller went away).
  //   A retry with the same content is harmless. Errors: as heartbeat for the node and token;
  //   kInvalidArgument (no such run, a run this machine takes no part in, a malformed name, a
  //   to_machines whose size is not the run's machine count or whose own entry is not empty, an
  //   entry over kMaxExchangeEntryBytes, timeout_ms over kMaxExchangeTimeoutMs),
  //   kResourceExhausted (kMaxExchangeNames names in this run already), kFailedPrecondition
  //   (this machine already posted other content under that name), kAborted (the caller or
  //   another machine of the run was fenced, or the run ended, failed or was abandoned, before
  //   every machine posted: the message names which), kDeadlineExceeded (the message names the
  //   machines that did not post), kCancelled (shutdown, or |cancelled|).
  Status exchange(const v1::ExchangeRequest& request, v1::ExchangeReply* reply,
                  Clock::time_point deadline = Clock::time_point::max(), const std::function<bool()>& cancelled = {});

  // Fences every live machine whose last heartbeat is older than the lease; returns their node
  // ids. The server calls it every heartbeat period; tests call it after moving the clock.
  std::vector<uint32_t> expire_leases();
  bool shutting_down() const;
  // Blocks until shutdown() was called or |deadline|; true if it was.
  bool wait_shutdown(Clock::time_point deadline);
  // After shutdown(): true once every live machine got VERDICT_SHUTDOWN (the controller process
  // lingers until then, or a lease, so machines leave instead of timing out).
  bool all_told_shutdown() const;
  const ControllerOptions& options() const { return options_; }

 private:
  // Every request's first check: the secret, compared in constant time.
  Status check_secret(const std::string& secret) const;

  struct Node {
    uint32_t id = 0;
    uint64_t token = 0;
    std::string hostname;
    v1::Topology topology;
    std::vector<v1::Transport> transports;
    bool fenced = false;
    std::string fenced_reason;
    bool told_shutdown = false;
    Clock::time_point last_beat{};
    uint64_t run_id = 0;
    v1::Phase phase = v1::PHASE_IDLE;
    uint64_t fs_calls = 0;
    std::vector<v1::LogPosition> logs;
    std::string error;
  };
  struct Run {
    uint64_t id = 0;
    v1::RunRequest request;
    std::vector<uint32_t> machines;  // node ids in machine order
    uint64_t region_cluster_id = 0;
    std::string log;         // the cluster's transport kind when the run started
    bool formatted = false;  // rdma: from the start (no region)
    std::map<uint32_t, v1::Phase> phase;          // by node id: the furthest phase seen
    std::map<uint32_t, v1::ReportRequest> reports;
    bool ended = false;
    bool abandoned = false;
    std::string error;
    Clock::time_point started{};
    Clock::time_point finished{};
    // exchange(): by name, by machine number, what that machine sends to each machine. Cleared
    // when the next run starts.
    std::map<std::string, std::map<uint32_t, std::vector<std::string>>> exchanges;
  };

  explicit Controller(ControllerOptions options);
  Status find_node_locked(uint32_t id, uint64_t token, Node** node) NRX_REQUIRES(mu_);
  void fence_locked(Node& node, std::string reason) NRX_REQUIRES(mu_);
  void update_run_locked() NRX_REQUIRES(mu_);
  bool live_locked(uint32_t id) const NRX_REQUIRES(mu_);
  void describe_run_locked(const Run& run, v1::RunReply* reply) const NRX_REQUIRES(mu_);

  const ControllerOptions options_;
  mutable Mutex mu_;
  std::condition_variable_any changed_;
  std::vector<Node> nodes_ NRX_GUARDED_BY(mu_);
  uint32_t replicas_per_node_ NRX_GUARDED_BY(mu_) = 0;  // set by the first join
  std::string coherence_ NRX_GUARDED_BY(mu_);            // likewise (shm only)
  std::string log_ NRX_GUARDED_BY(mu_);                  // likewise: the transport kind
  std::map<uint64_t, Run> runs_ NRX_GUARDED_BY(mu_);
  uint64_t current_run_ NRX_GUARDED_BY(mu_) = 0;  // 0: none going on
  uint64_t next_run_ NRX_GUARDED_BY(mu_) = 1;
  uint64_t next_token_ NRX_GUARDED_BY(mu_) = 0;
  bool shutdown_ NRX_GUARDED_BY(mu_) = false;
};

inline const std::vector<std::string>& workloads() {
  static const std::vector<std::string> kWorkloads = {"demo", "kv", "fsbench", "mapbench", "logbench"};
  return kWorkloads;
}

}  // namespace nrx::cluster
