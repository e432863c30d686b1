// nrx::cluster::Agent: a machine's side of the control plane (`nrx node --controller`). It joins
// (retrying while the controller is not up yet), then beats from a thread of its own every
// heartbeat period, carrying the phase and progress the machine sets; each reply may bring a run
// order, the run's barriers (all done, release) and the machines fenced meanwhile. The machine's
// run loop (tools/nrx/cluster_cmd.cc) waits on those with the methods below.
//
// Lease discipline: if no heartbeat succeeded for a whole lease (measured on this machine's clock
// from the last success), the agent considers itself fenced: the controller, whose lease started
// no earlier than that success, has fenced it or is about to. The same holds when a reply says
// VERDICT_FENCED. Either way lost() turns true and every wait returns kAborted: the machine must
// stop using the shared logs at once.
//
// With the RDMA log (RunOrder::log "rdma") the machines of a run swap their endpoints with
// exchange(), which goes straight to the controller (not through the heartbeat thread).
//
//   auto agent = Agent::join({.address = "10.77.0.1:7700", .secret = s, ...}).value();
//   v1::RunOrder run = agent->next_run(deadline).value();
//   agent->set_phase(run.run_id(), v1::PHASE_RUNNING);
//   NRX_RETURN_IF_ERROR(agent->wait_all_done(run.run_id(), deadline));
//   std::vector<std::string> from = agent->exchange(run.run_id(), "proc", to, 60s).value();  // rdma
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "cluster/controller.h"
#include "cluster/server.h"

namespace nrx::cluster {

struct AgentOptions {
  std::string address;                // the controller
  std::optional<TlsFiles> tls;
  std::string secret;
  std::string hostname;
  v1::Topology topology;
  std::vector<v1::Transport> transports;
  std::chrono::milliseconds join_timeout{60000};  // keep trying this long while unreachable
};

class Agent {
 public:
  // Joins and starts beating. Errors: the controller's answer to Join (kPermissionDenied for a
  // wrong secret, kInvalidArgument, kResourceExhausted), kUnavailable (no controller answered
  // within join_timeout).
  static Result<std::unique_ptr<Agent>> join(AgentOptions options);
  ~Agent();  // stops beating (the controller then fences this machine after its lease)
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  const v1::JoinReply& joined() const { return joined_; }

  // What the next heartbeats carry.
  void set_phase(uint64_t run_id, v1::Phase phase, std::string error = "");
  // Called on the heartbeat thread before each beat, to fill in progress (fs_calls, logs).
  void set_progress(std::function<void(v1::HeartbeatRequest*)> fill);

  // The next run order this machine has not taken yet. Errors: kAborted (fenced), kCancelled
  // (the controller shut down), kDeadlineExceeded.
  Result<v1::RunOrder> next_run(Clock::time_point deadline);
  // Until every live machine of |run_id| is done (all_done), or |deadline|. Errors: as next_run.
  Status wait_all_done(uint64_t run_id, Clock::time_point deadline);
  // Until the controller releases |run_id| (every live machine reported). Errors: as next_run.
  Status wait_release(uint64_t run_id, Clock::time_point deadline);
  Status report(v1::ReportRequest request);
  // Endpoint exchange for |run_id| under |name| ("proc", "fs0", "fsscan": 1..64 characters of
  // [A-Za-z0-9_.-]): sends to_machines[j] to machine j of the run (one entry per machine, this
  // machine's own empty, each at most kMaxExchangeEntryBytes) and blocks until every machine of the
  // run posted under |name| or |timeout| (0: kDefaultExchangeTimeoutMs; at most
  // kMaxExchangeTimeoutMs); returns what each machine j sent to this one (index j; this machine's
  // own entry empty). Safe to retry with the same content. Errors: kAborted (this machine lost its
  // lease before the call; or the controller's: a machine of the run fenced, the run over),
  // kDeadlineExceeded (the message names the machines that did not post), kCancelled (the
  // controller is shutting down), kInvalidArgument (a malformed name or list, a run this machine
  // takes no part in), kFailedPrecondition (other content already posted under |name|),
  // kUnavailable (the controller is unreachable).
  Result<std::vector<std::string>> exchange(uint64_t run_id, const std::string& name,
                                            std::vector<std::string> to_machines, std::chrono::milliseconds timeout);
  // Machine numbers of |run_id| the controller fenced so far (from the latest reply).
  std::vector<uint32_t> fenced_machines() const;
  bool lost() const;       // fenced, or the lease lapsed without a successful heartbeat
  std::string lost_reason() const;

 private:
  explicit Agent(AgentOptions options) : options_(std::move(options)) {}
  void beat_loop();
  Status wait_for(Clock::time_point deadline, const std::function<bool()>& done);

  const AgentOptions options_;
  std::unique_ptr<ControllerClient> client_;
  v1::JoinReply joined_;
  mutable Mutex mu_;
  std::condition_variable_any changed_;
  uint64_t run_id_ NRX_GUARDED_BY(mu_) = 0;
  v1::Phase phase_ NRX_GUARDED_BY(mu_) = v1::PHASE_IDLE;
  std::string error_ NRX_GUARDED_BY(mu_);
  std::function<void(v1::HeartbeatRequest*)> fill_ NRX_GUARDED_BY(mu_);
  v1::HeartbeatReply last_ NRX_GUARDED_BY(mu_);
  uint64_t taken_run_ NRX_GUARDED_BY(mu_) = 0;  // the last order next_run returned
  bool lost_ NRX_GUARDED_BY(mu_) = false;
  bool shutdown_ NRX_GUARDED_BY(mu_) = false;
  std::string lost_reason_ NRX_GUARDED_BY(mu_);
  bool stop_ NRX_GUARDED_BY(mu_) = false;
  std::thread beater_;
};

}  // namespace nrx::cluster
