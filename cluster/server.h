// nrx::cluster::ControllerServer: the gRPC face of a Controller (controller.h), and
// ControllerClient, the stub machines and tools use. Addresses are gRPC's: "HOST:PORT" (port 0
// picks a free one, see port()) and "unix:PATH" (the tools on the host reach a controller that
// listens inside a VM network namespace through its socket file). With TlsFiles the server
// serves TLS and the client checks the controller's certificate against the cluster's CA.
//
// The server runs a lease thread that calls Controller::expire_leases() every heartbeat period.
// Run and Exchange block in their handlers (gRPC's sync server gives each call a thread of its
// own); both end by the caller's deadline at the latest, and Exchange also when the caller goes
// away.
//
//   auto server = ControllerServer::start(*controller, {"127.0.0.1:0"}, std::nullopt).value();
//   auto client = ControllerClient::connect("127.0.0.1:" + std::to_string(server->port()),
//                                           std::nullopt).value();
//   v1::JoinReply j; NRX_RETURN_IF_ERROR(client->join(request, &j));
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "cluster/controller.h"
#include "cluster/tls.h"

namespace grpc {
class Server;
class Channel;
}  // namespace grpc

namespace nrx::cluster {

class ControllerServer {
 public:
  // Listens on every address. Errors: kInvalidArgument (no address), kUnavailable (an address
  // could not be bound: in use, no such interface, a unix path that cannot be created).
  static Result<std::unique_ptr<ControllerServer>> start(Controller& controller, const std::vector<std::string>& addresses,
                                                         const std::optional<TlsFiles>& tls);
  ~ControllerServer();  // stops serving (in-flight calls are cancelled after a short grace)
  ControllerServer(const ControllerServer&) = delete;
  ControllerServer& operator=(const ControllerServer&) = delete;
  // The port bound for the first TCP address (useful with port 0); 0 if there is none.
  int port() const { return port_; }

  struct Service;  // server.cc

 private:
  ControllerServer() = default;
  Controller* controller_ = nullptr;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  Mutex stop_mu_;
  std::condition_variable_any stop_cv_;
  bool stop_ NRX_GUARDED_BY(stop_mu_) = false;
  std::thread lease_thread_;
};

class ControllerClient {
 public:
  // Does not connect yet (the first call does). Errors: kInvalidArgument (empty address).
  static Result<std::unique_ptr<ControllerClient>> connect(const std::string& address, const std::optional<TlsFiles>& tls);
  ~ControllerClient();

  // Each call gives up after |timeout|. Errors: the controller's (mapped one-to-one from gRPC's
  // codes), kUnavailable (no controller at the address), kDeadlineExceeded.
  using Timeout = std::chrono::milliseconds;
  Status join(const v1::JoinRequest& request, v1::JoinReply* reply, Timeout timeout = Timeout(10000));
  Status heartbeat(const v1::HeartbeatRequest& request, v1::HeartbeatReply* reply, Timeout timeout = Timeout(5000));
  Status report(const v1::ReportRequest& request, v1::ReportReply* reply, Timeout timeout = Timeout(10000));
  Status run(const v1::RunRequest& request, v1::RunReply* reply, Timeout timeout);
  Status status(const v1::StatusRequest& request, v1::StatusReply* reply, Timeout timeout = Timeout(5000));
  Status shutdown(const v1::ShutdownRequest& request, Timeout timeout = Timeout(5000));
  // Blocks until every machine of the run posted (Controller::exchange): the call's own deadline
  // is the request's timeout_ms (0: kDefaultExchangeTimeoutMs) plus kExchangeSlack, so that the
  // controller's answer (kDeadlineExceeded naming the machines that did not post) arrives first.
  static constexpr Timeout kExchangeSlack{5000};
  Status exchange(const v1::ExchangeRequest& request, v1::ExchangeReply* reply);
  // Waits until the channel is connected or |timeout|. Errors: kUnavailable.
  Status wait_connected(Timeout timeout);

  struct Stub;  // server.cc

 private:
  ControllerClient() = default;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stub> stub_;
};

}  // namespace nrx::cluster
