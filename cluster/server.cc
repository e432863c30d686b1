#include "cluster/server.h"

#include <grpcpp/grpcpp.h>

#include "cluster/proto/controller.grpc.pb.h"

namespace nrx::cluster {
namespace {

grpc::Status to_grpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())), s.message());
}

Status from_grpc(const grpc::Status& s) {
  if (s.ok()) return Status::ok_status();
  const int code = static_cast<int>(s.error_code());
  if (code <= 0 || code > static_cast<int>(StatusCode::kUnauthenticated)) return Status(StatusCode::kUnknown, s.error_message());
  std::string msg = s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) msg = "the controller is unreachable: " + msg;
  return Status(static_cast<StatusCode>(code), msg);
}

}  // namespace

struct ControllerServer::Service final : v1::Controller::Service {
  explicit Service(Controller& c) : controller(c) {}
  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest* req, v1::JoinReply* rep) override {
    return to_grpc(controller.join(*req, rep));
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req, v1::HeartbeatReply* rep) override {
    return to_grpc(controller.heartbeat(*req, rep));
  }
  grpc::Status Report(grpc::ServerContext*, const v1::ReportRequest* req, v1::ReportReply* rep) override {
    return to_grpc(controller.report(*req, rep));
  }
  grpc::Status Run(grpc::ServerContext* ctx, const v1::RunRequest* req, v1::RunReply* rep) override {
    Result<uint64_t> id = controller.start_run(*req);
    if (!id.ok()) return to_grpc(id.status());
    const uint32_t timeout_s = req->timeout_s() == 0 ? 600 : std::min<uint32_t>(req->timeout_s(), 3600);
    Clock::time_point deadline = Clock::now() + std::chrono::seconds(timeout_s);
    // The caller's own deadline, if sooner (a run that outlives its caller is abandoned).
    const auto client_deadline = ctx->deadline();
    if (client_deadline != std::chrono::system_clock::time_point::max()) {
      deadline = std::min(deadline, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                       client_deadline - std::chrono::system_clock::now()));
    }
    nrx::Status st = controller.wait_run(*id, deadline, rep);
    if (!st.ok() && st.code() != StatusCode::kDeadlineExceeded) return to_grpc(st);
    return grpc::Status::OK;  // the reply says whether the run succeeded
  }
  grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest* req, v1::StatusReply* rep) override {
    return to_grpc(controller.status(*req, rep));
  }
  grpc::Status Shutdown(grpc::ServerContext*, const v1::ShutdownRequest* req, v1::ShutdownReply*) override {
    return to_grpc(controller.shutdown(*req));
  }
  grpc::Status Exchange(grpc::ServerContext* ctx, const v1::ExchangeRequest* req, v1::ExchangeReply* rep) override {
    // The caller's deadline, if sooner than the request's timeout; a caller that went away (or a
    // server shutting down, which cancels its calls) ends the wait too.
    Clock::time_point deadline = Clock::time_point::max();
    const auto client_deadline = ctx->deadline();
    if (client_deadline != std::chrono::system_clock::time_point::max()) {
      deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(client_deadline -
                                                                            std::chrono::system_clock::now());
    }
    return to_grpc(controller.exchange(*req, rep, deadline, [ctx] { return ctx->IsCancelled(); }));
  }
  Controller& controller;
};

Result<std::unique_ptr<ControllerServer>> ControllerServer::start(Controller& controller,
                                                                  const std::vector<std::string>& addresses,
                                                                  const std::optional<TlsFiles>& tls) {
  if (addresses.empty()) return Status::invalid_argument("the controller needs an address to listen on");
  std::unique_ptr<ControllerServer> s(new ControllerServer);
  s->controller_ = &controller;
  s->service_ = std::make_unique<Service>(controller);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (tls) {
    grpc::SslServerCredentialsOptions o;
    o.pem_root_certs = tls->ca_pem;
    o.pem_key_cert_pairs.push_back({tls->key_pem, tls->cert_pem});
    creds = grpc::SslServerCredentials(o);
  }
  std::vector<std::unique_ptr<int>> ports;
  for (const std::string& a : addresses) {
    ports.push_back(std::make_unique<int>(0));
    builder.AddListeningPort(a, creds, ports.back().get());
  }
  builder.RegisterService(s->service_.get());
  // A unix socket's file survives a crashed controller; a new one replaces it.
  for (const std::string& a : addresses) {
    if (a.rfind("unix:", 0) == 0) unlink(a.substr(5).c_str());
  }
  s->server_ = builder.BuildAndStart();
  if (!s->server_) return Status::unavailable("cannot listen on the controller's addresses (in use, or not local?)");
  for (size_t i = 0; i < addresses.size(); ++i) {
    if (addresses[i].rfind("unix:", 0) == 0) continue;
    if (*ports[i] == 0) return Status::unavailable("cannot listen on " + addresses[i]);
    if (s->port_ == 0) s->port_ = *ports[i];
  }
  ControllerServer* raw = s.get();
  s->lease_thread_ = std::thread([raw] {
    const auto period = raw->controller_->options().heartbeat;
    MutexLock lock(raw->stop_mu_);
    while (!raw->stop_) {
      (void)raw->controller_->expire_leases();
      // Woken at once by the destructor; otherwise once per heartbeat period.
      raw->stop_cv_.wait_until(raw->stop_mu_, Clock::now() + period);
    }
  });
  return s;
}

ControllerServer::~ControllerServer() {
  {
    MutexLock lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (lease_thread_.joinable()) lease_thread_.join();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

struct ControllerClient::Stub {
  std::unique_ptr<v1::Controller::Stub> stub;
};

Result<std::unique_ptr<ControllerClient>> ControllerClient::connect(const std::string& address,
                                                                    const std::optional<TlsFiles>& tls) {
  if (address.empty()) return Status::invalid_argument("no controller address");
  std::unique_ptr<ControllerClient> c(new ControllerClient);
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (tls) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = tls->ca_pem;
    creds = grpc::SslCredentials(o);
    // A unix socket has no host name to check: the controller's certificate names localhost.
    if (address.rfind("unix:", 0) == 0) args.SetSslTargetNameOverride("localhost");
  }
  // Fail fast while the controller is away, so that heartbeats and their lease accounting stay
  // on the caller's clock.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  c->channel_ = grpc::CreateCustomChannel(address, creds, args);
  c->stub_ = std::make_unique<Stub>();
  c->stub_->stub = v1::Controller::NewStub(c->channel_);
  return c;
}

ControllerClient::~ControllerClient() = default;

namespace {
template <typename Call>
Status call(ControllerClient::Timeout timeout, Call&& f) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  return from_grpc(f(&ctx));
}
}  // namespace

Status ControllerClient::join(const v1::JoinRequest& req, v1::JoinReply* rep, Timeout t) {
  return call(t, [&](grpc::ClientContext* ctx) { return stub_->stub->Join(ctx, req, rep); });
}
Status ControllerClient::heartbeat(const v1::HeartbeatRequest& req, v1::HeartbeatReply* rep, Timeout t) {
  return call(t, [&](grpc::ClientContext* ctx) { return stub_->stub->Heartbeat(ctx, req, rep); });
}
Status ControllerClient::report(const v1::ReportRequest& req, v1::ReportReply* rep, Timeout t) {
  return call(t, [&](grpc::ClientContext* ctx) { return stub_->stub->Report(ctx, req, rep); });
}
Status ControllerClient::run(const v1::RunRequest& req, v1::RunReply* rep, Timeout t) {
  return call(t, [&](grpc::ClientContext* ctx) { return stub_->stub->Run(ctx, req, rep); });
}
Status ControllerClient::status(const v1::StatusRequest& req, v1::StatusReply* rep, Timeout t) {
  return call(t, [&](grpc::ClientContext* ctx) { return stub_->stub->Status(ctx, req, rep); });
}
Status ControllerClient::shutdown(const v1::ShutdownRequest& req, Timeout t) {
  v1::ShutdownReply rep;
  return call(t, [&](grpc::ClientContext* ctx) { return stub_->stub->Shutdown(ctx, req, &rep); });
}
Status ControllerClient::exchange(const v1::ExchangeRequest& req, v1::ExchangeReply* rep) {
  const uint32_t ms = req.timeout_ms() == 0 ? kDefaultExchangeTimeoutMs : req.timeout_ms();
  return call(Timeout(ms) + kExchangeSlack,
              [&](grpc::ClientContext* ctx) { return stub_->stub->Exchange(ctx, req, rep); });
}
Status ControllerClient::wait_connected(Timeout t) {
  if (channel_->WaitForConnected(std::chrono::system_clock::now() + t)) return Status::ok_status();
  return Status::unavailable("no controller answered within " + std::to_string(t.count()) + " ms");
}

}  // namespace nrx::cluster
