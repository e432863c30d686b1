#include "cluster/agent.h"

#include <algorithm>

namespace nrx::cluster {

Result<std::unique_ptr<Agent>> Agent::join(AgentOptions options) {
  std::unique_ptr<Agent> a(new Agent(std::move(options)));
  NRX_ASSIGN_OR_RETURN(a->client_, ControllerClient::connect(a->options_.address, a->options_.tls));
  v1::JoinRequest req;
  req.set_protocol(kProtocol);
  req.set_secret(a->options_.secret);
  req.set_hostname(a->options_.hostname);
  *req.mutable_topology() = a->options_.topology;
  for (const v1::Transport& t : a->options_.transports) *req.add_transports() = t;
  const Clock::time_point deadline = Clock::now() + a->options_.join_timeout;
  for (;;) {
    // Wait for the channel first (bounded): the controller may start after the machines.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    Status st = a->client_->wait_connected(std::max(std::chrono::milliseconds(1), std::min(left, std::chrono::milliseconds(2000))));
    if (st.ok()) st = a->client_->join(req, &a->joined_);
    if (st.ok()) break;
    if (st.code() != StatusCode::kUnavailable && st.code() != StatusCode::kDeadlineExceeded) return st;
    if (Clock::now() >= deadline) {
      return Status::unavailable("no controller at " + a->options_.address + " answered within " +
                                 std::to_string(a->options_.join_timeout.count() / 1000) + " s: " + st.message());
    }
  }
  a->beater_ = std::thread([p = a.get()] { p->beat_loop(); });
  return a;
}

Agent::~Agent() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  changed_.notify_all();
  if (beater_.joinable()) beater_.join();
}

void Agent::set_phase(uint64_t run_id, v1::Phase phase, std::string error) {
  MutexLock lock(mu_);
  run_id_ = run_id;
  phase_ = phase;
  error_ = std::move(error);
}

void Agent::set_progress(std::function<void(v1::HeartbeatRequest*)> fill) {
  MutexLock lock(mu_);
  fill_ = std::move(fill);
}

void Agent::beat_loop() {
  const auto period = std::chrono::milliseconds(joined_.heartbeat_ms());
  const auto lease = std::chrono::milliseconds(joined_.lease_ms());
  Clock::time_point last_ok = Clock::now();
  for (;;) {
    v1::HeartbeatRequest req;
    std::function<void(v1::HeartbeatRequest*)> fill;
    {
      MutexLock lock(mu_);
      if (stop_ || lost_ || shutdown_) return;
      req.set_run_id(run_id_);
      req.set_phase(phase_);
      req.set_error(error_);
      fill = fill_;
    }
    if (fill) fill(&req);  // outside the lock: it reads the kernel
    req.set_secret(options_.secret);
    req.set_node_id(joined_.node_id());
    req.set_token(joined_.token());
    v1::HeartbeatReply rep;
    const Clock::time_point sent = Clock::now();
    Status st = client_->heartbeat(req, &rep, std::chrono::duration_cast<std::chrono::milliseconds>(lease / 2));
    {
      MutexLock lock(mu_);
      if (st.ok()) {
        last_ok = sent;
        if (rep.verdict() == v1::HeartbeatReply::VERDICT_FENCED) {
          lost_ = true;
          lost_reason_ = "the controller fenced this machine (its lease expired)";
        } else if (rep.verdict() == v1::HeartbeatReply::VERDICT_SHUTDOWN) {
          shutdown_ = true;
        } else {
          last_ = rep;
        }
      } else if (st.code() == StatusCode::kNotFound || st.code() == StatusCode::kFailedPrecondition ||
                 st.code() == StatusCode::kPermissionDenied) {
        lost_ = true;
        lost_reason_ = "the controller no longer knows this machine: " + st.to_string();
      }
      if (!lost_ && Clock::now() - last_ok >= lease) {
        lost_ = true;
        lost_reason_ = "no heartbeat got through for a whole lease (" + std::to_string(lease.count()) +
                       " ms): the controller fences this machine; last error: " + st.to_string();
      }
      changed_.notify_all();
      if (lost_ || shutdown_) return;
      // Bounded, interruptible wait for the next beat (the destructor notifies).
      changed_.wait_until(mu_, Clock::now() + period);
    }
  }
}

Status Agent::wait_for(Clock::time_point deadline, const std::function<bool()>& done) {
  MutexLock lock(mu_);
  for (;;) {
    if (lost_) return Status(StatusCode::kAborted, lost_reason_);
    if (shutdown_) return Status(StatusCode::kCancelled, "the controller shut down");
    if (done()) return Status::ok_status();
    if (Clock::now() >= deadline) return Status::deadline_exceeded("the controller did not say so in time");
    changed_.wait_until(mu_, std::min(deadline, Clock::now() + std::chrono::milliseconds(100)));
  }
}

Result<v1::RunOrder> Agent::next_run(Clock::time_point deadline) {
  v1::RunOrder order;
  NRX_RETURN_IF_ERROR(wait_for(deadline, [&]() NRX_NO_THREAD_SAFETY_ANALYSIS {
    if (last_.run().run_id() == 0 || last_.run().run_id() <= taken_run_) return false;
    order = last_.run();
    taken_run_ = order.run_id();
    return true;
  }));
  return order;
}

Status Agent::wait_all_done(uint64_t run_id, Clock::time_point deadline) {
  return wait_for(deadline, [&]() NRX_NO_THREAD_SAFETY_ANALYSIS { return run_id_ == run_id && (last_.all_done() || last_.release()); });
}

Status Agent::wait_release(uint64_t run_id, Clock::time_point deadline) {
  return wait_for(deadline, [&]() NRX_NO_THREAD_SAFETY_ANALYSIS { return run_id_ == run_id && last_.release(); });
}

Status Agent::report(v1::ReportRequest request) {
  request.set_secret(options_.secret);
  request.set_node_id(joined_.node_id());
  request.set_token(joined_.token());
  v1::ReportReply rep;
  return client_->report(request, &rep);
}

Result<std::vector<std::string>> Agent::exchange(uint64_t run_id, const std::string& name,
                                                 std::vector<std::string> to_machines,
                                                 std::chrono::milliseconds timeout) {
  {
    MutexLock lock(mu_);
    if (lost_) return Status(StatusCode::kAborted, lost_reason_);
  }
  if (timeout.count() < 0 || timeout.count() > kMaxExchangeTimeoutMs) {
    return Status::invalid_argument("exchange timeout: 0.." + std::to_string(kMaxExchangeTimeoutMs) + " ms");
  }
  v1::ExchangeRequest req;
  req.set_secret(options_.secret);
  req.set_node_id(joined_.node_id());
  req.set_token(joined_.token());
  req.set_run_id(run_id);
  req.set_name(name);
  for (std::string& s : to_machines) req.add_to_machines(std::move(s));
  req.set_timeout_ms(static_cast<uint32_t>(timeout.count()));
  v1::ExchangeReply rep;
  NRX_RETURN_IF_ERROR(client_->exchange(req, &rep));
  return std::vector<std::string>(rep.from_machines().begin(), rep.from_machines().end());
}

std::vector<uint32_t> Agent::fenced_machines() const {
  MutexLock lock(mu_);
  return {last_.fenced_machines().begin(), last_.fenced_machines().end()};
}

bool Agent::lost() const {
  MutexLock lock(mu_);
  return lost_;
}

std::string Agent::lost_reason() const {
  MutexLock lock(mu_);
  return lost_reason_;
}

}  // namespace nrx::cluster
