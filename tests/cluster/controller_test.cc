// Tests of the control plane (cluster/): Controller's logic on a clock the test moves (joins,
// validation, leases and fencing, run orchestration: machine 0 formats first, the others attach
// after, barriers, digests, failures and deadlines; rdma clusters, whose runs have no format step,
// and the endpoint exchange among a run's machines), then the same controller over real gRPC on
// loopback TCP and a unix socket, with TLS from `init_cluster_dir`, and Agent (a machine's side)
// against a live server: run orders, losing the lease when the controller goes away, fencing,
// endpoint exchange.
//
// No test sleeps to wait for a condition: the controller's clock is injected, and conditions on
// other threads are polled against a deadline.
#include "cluster/agent.h"
#include "cluster/controller.h"
#include "cluster/server.h"
#include "cluster/tls.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define NRX_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NRX_TEST_TSAN 1
#endif
#endif

#if defined(NRX_TEST_TSAN)
// Debian's gRPC, gpr and Abseil are not built with TSan, so their locks are invisible to it and
// every buffer gRPC hands between its threads (malloc'd in one, memcpy'd or freed in another, all
// through TSan's interceptors) is reported as a race: some 860 reports per run, none with a frame
// of ours on top. Ignore what those libraries do through the interceptors; our code is still
// instrumented, and its own locking (std::mutex through pthread) is still checked.
extern "C" const char* __tsan_default_options() { return "ignore_noninstrumented_modules=1"; }
#endif

namespace nrx::cluster {
namespace {

using namespace std::chrono_literals;

constexpr char kSecret[] = "0123456789abcdef-controller-test";

// The controller's clock: frozen unless the test moves it.
class FakeClock {
 public:
  Clock::time_point now() const {
    // relaxed: only the value matters; the controller reads it under its own mutex.
    return base_ + std::chrono::nanoseconds(offset_ns_.load(std::memory_order_relaxed));
  }
  void advance(std::chrono::nanoseconds d) { offset_ns_.fetch_add(d.count(), std::memory_order_relaxed); }
  std::function<Clock::time_point()> fn() {
    return [this] { return now(); };
  }

 private:
  const Clock::time_point base_ = Clock::now();
  std::atomic<int64_t> offset_ns_{0};
};

// A fresh directory under /tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/nrx-ctl-XXXXXX";
    const char* p = mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    path_ = p ? p : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    if (path_ != "/tmp") std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Polls |done| until it holds or |limit| passed; true if it held.
bool eventually(const std::function<bool()>& done, Clock::duration limit = 5s) {
  const Clock::time_point deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

v1::Topology topology(uint32_t nodes) {
  v1::Topology t;
  t.set_nodes(nodes);
  t.set_cpus(8);
  t.set_cores_per_node(2);
  return t;
}

v1::Transport shm_transport() {
  v1::Transport t;
  t.set_kind("shm");
  t.set_path("/dev/shm/nrx-controller-test");
  t.set_bytes(uint64_t{64} << 20);
  return t;
}

// The RDMA log's transport: a device name, no region.
v1::Transport rdma_transport(const std::string& device = "rxe0") {
  v1::Transport t;
  t.set_kind("rdma");
  t.set_path(device);
  return t;
}

v1::JoinRequest join_request(const std::string& hostname, uint32_t nodes = 2) {
  v1::JoinRequest r;
  r.set_protocol(kProtocol);
  r.set_secret(kSecret);
  r.set_hostname(hostname);
  *r.mutable_topology() = topology(nodes);
  *r.add_transports() = shm_transport();
  return r;
}

v1::JoinRequest rdma_join_request(const std::string& hostname, uint32_t nodes = 2) {
  v1::JoinRequest r = join_request(hostname, nodes);
  r.clear_transports();
  *r.add_transports() = rdma_transport();
  return r;
}

ControllerOptions options(FakeClock& clock, uint32_t expected_nodes) {
  return {.secret = kSecret, .expected_nodes = expected_nodes, .now = clock.fn()};
}

v1::StatusReply status_of(Controller& c) {
  v1::StatusRequest req;
  req.set_secret(kSecret);
  v1::StatusReply rep;
  EXPECT_TRUE(c.status(req, &rep).ok());
  return rep;
}

// A port on 127.0.0.1 where nothing listens: bound (so nobody else takes it) but not listening,
// so a connection is refused at once.
class DeadPort {
 public:
  DeadPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_GE(fd_, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t n = sizeof a;
    EXPECT_EQ(getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &n), 0);
    port_ = ntohs(a.sin_port);
  }
  ~DeadPort() { close(fd_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// --- Controller logic ---------------------------------------------------------------------------

TEST(ControllerCreate, RefusesBadOptions) {
  FakeClock clock;
  ControllerOptions o = options(clock, 3);
  o.secret = std::string(kMinSecretBytes - 1, 'x');
  EXPECT_EQ(Controller::create(o).status().code(), StatusCode::kInvalidArgument) << "a short secret";
  o = options(clock, 0);
  EXPECT_EQ(Controller::create(o).status().code(), StatusCode::kInvalidArgument) << "no nodes";
  o = options(clock, kMaxReplicas + 1);
  EXPECT_EQ(Controller::create(o).status().code(), StatusCode::kInvalidArgument) << "more nodes than replicas";
  o = options(clock, 3);
  o.heartbeat = 100ms;
  o.lease = 199ms;
  Status short_lease = Controller::create(o).status();
  EXPECT_EQ(short_lease.code(), StatusCode::kInvalidArgument) << "a lease under two heartbeats";
  EXPECT_NE(short_lease.message().find("two heartbeat"), std::string::npos) << short_lease.to_string();
  o.heartbeat = 0ms;
  EXPECT_EQ(Controller::create(o).status().code(), StatusCode::kInvalidArgument) << "no heartbeat period";

  o = options(clock, 3);
  o.cluster_id = 0;
  auto c = Controller::create(o);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_NE((*c)->options().cluster_id, 0u) << "0 picks one at random";
  o.cluster_id = 42;
  EXPECT_EQ(Controller::create(o).value()->options().cluster_id, 42u);
}

TEST(ControllerJoin, AssignsNodeIdsInJoinOrder) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  std::vector<uint64_t> tokens;
  for (uint32_t i = 0; i < 3; ++i) {
    v1::JoinReply j;
    ASSERT_TRUE(c->join(join_request("host" + std::to_string(i), 2), &j).ok());
    EXPECT_EQ(j.node_id(), i);
    EXPECT_EQ(j.replicas_per_node(), 2u);
    EXPECT_EQ(j.first_replica(), i * 2);
    EXPECT_NE(j.token(), 0u);
    EXPECT_EQ(j.cluster_id(), c->options().cluster_id);
    EXPECT_EQ(j.expected_nodes(), 3u);
    EXPECT_EQ(j.lease_ms(), 4000u);
    EXPECT_EQ(j.heartbeat_ms(), 250u);
    tokens.push_back(j.token());
  }
  EXPECT_NE(tokens[0], tokens[1]);
  EXPECT_NE(tokens[1], tokens[2]);
  v1::StatusReply s = status_of(*c);
  ASSERT_EQ(s.nodes_size(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(s.nodes(i).hostname(), "host" + std::to_string(i));
    EXPECT_EQ(s.nodes(i).state(), "live");
    EXPECT_EQ(s.nodes(i).first_replica(), static_cast<uint32_t>(i) * 2);
  }
  EXPECT_EQ(s.run_state(), "none");
}

TEST(ControllerJoin, RefusesWrongSecret) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  v1::JoinRequest r = join_request("h");
  r.set_secret("0123456789abcdef-controller-tesT");
  v1::JoinReply j;
  EXPECT_EQ(c->join(r, &j).code(), StatusCode::kPermissionDenied);
  r.set_secret("");
  EXPECT_EQ(c->join(r, &j).code(), StatusCode::kPermissionDenied);
  r.set_secret(std::string(kSecret) + "x");
  EXPECT_EQ(c->join(r, &j).code(), StatusCode::kPermissionDenied) << "a prefix is not the secret";
  EXPECT_EQ(status_of(*c).nodes_size(), 0);
  v1::StatusRequest sr;
  v1::StatusReply srep;
  EXPECT_EQ(c->status(sr, &srep).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(c->shutdown(v1::ShutdownRequest()).code(), StatusCode::kPermissionDenied);
  EXPECT_FALSE(c->shutting_down());
}

// Each row breaks one field of an otherwise good JoinRequest.
TEST(ControllerJoin, RefusesMalformedRequests) {
  struct Case {
    const char* what;
    std::function<void(v1::JoinRequest*)> spoil;
  };
  const std::vector<Case> cases = {
      {"another protocol", [](v1::JoinRequest* r) { r->set_protocol(kProtocol + 1); }},
      {"empty hostname", [](v1::JoinRequest* r) { r->set_hostname(""); }},
      {"unprintable hostname", [](v1::JoinRequest* r) { r->set_hostname(std::string("ho\x01st")); }},
      {"long hostname", [](v1::JoinRequest* r) { r->set_hostname(std::string(65, 'h')); }},
      {"no topology", [](v1::JoinRequest* r) { r->clear_topology(); }},
      {"0 nodes", [](v1::JoinRequest* r) { r->mutable_topology()->set_nodes(0); }},
      {"too many nodes", [](v1::JoinRequest* r) { r->mutable_topology()->set_nodes(kMaxReplicas + 1); }},
      {"0 cpus", [](v1::JoinRequest* r) { r->mutable_topology()->set_cpus(0); }},
      {"0 cores per node", [](v1::JoinRequest* r) { r->mutable_topology()->set_cores_per_node(0); }},
      {"no transports", [](v1::JoinRequest* r) { r->clear_transports(); }},
      {"unknown kind", [](v1::JoinRequest* r) { r->mutable_transports(0)->set_kind("tcp"); }},
      {"empty kind", [](v1::JoinRequest* r) { r->mutable_transports(0)->set_kind(""); }},
      {"rdma with a path", [](v1::JoinRequest* r) { r->mutable_transports(0)->set_kind("rdma"); }},
      {"rdma without a device", [](v1::JoinRequest* r) { *r->mutable_transports(0) = rdma_transport(""); }},
      {"rdma device too long", [](v1::JoinRequest* r) { *r->mutable_transports(0) = rdma_transport(std::string(65, 'r')); }},
      {"rdma device with a space", [](v1::JoinRequest* r) { *r->mutable_transports(0) = rdma_transport("rxe 0"); }},
      {"rdma device unprintable", [](v1::JoinRequest* r) { *r->mutable_transports(0) = rdma_transport("rxe\n"); }},
      {"relative path", [](v1::JoinRequest* r) { r->mutable_transports(0)->set_path("dev/shm/x"); }},
      {"empty path", [](v1::JoinRequest* r) { r->mutable_transports(0)->set_path(""); }},
      {"tiny region", [](v1::JoinRequest* r) { r->mutable_transports(0)->set_bytes(uint64_t{1} << 20); }},
      {"nine transports",
       [](v1::JoinRequest* r) {
         for (int i = 0; i < 8; ++i) *r->add_transports() = shm_transport();
       }},
  };
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  for (const Case& k : cases) {
    v1::JoinRequest r = join_request("h");
    k.spoil(&r);
    v1::JoinReply j;
    Status st = c->join(r, &j);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << k.what << ": " << st.to_string();
    EXPECT_FALSE(st.message().empty()) << k.what;
  }
  EXPECT_EQ(status_of(*c).nodes_size(), 0) << "no malformed join took a node id";
  v1::JoinReply j;
  ASSERT_TRUE(c->join(join_request("h"), &j).ok());
  EXPECT_EQ(j.node_id(), 0u);
}

TEST(ControllerJoin, RefusesTopologyMismatch) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  v1::JoinReply j;
  ASSERT_TRUE(c->join(join_request("a", 2), &j).ok());
  Status st = c->join(join_request("b", 3), &j);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("topology mismatch"), std::string::npos) << st.to_string();
  ASSERT_TRUE(c->join(join_request("b", 2), &j).ok());
  EXPECT_EQ(j.node_id(), 1u) << "the refused join took no node id";
  EXPECT_EQ(j.first_replica(), 2u);
}

TEST(ControllerJoin, AcceptsRdmaAndOneKindPerCluster) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  v1::JoinReply j;
  v1::JoinRequest first = rdma_join_request("a");
  first.mutable_transports(0)->set_bytes(0);  // bytes and coherence mean nothing for rdma
  Status st = c->join(first, &j);
  ASSERT_TRUE(st.ok()) << st.to_string();
  v1::JoinRequest longest = rdma_join_request("b");
  *longest.mutable_transports(0) = rdma_transport(std::string(64, 'm'));
  longest.mutable_transports(0)->set_coherence("noncoherent");
  st = c->join(longest, &j);
  ASSERT_TRUE(st.ok()) << "a 64-character device, coherence ignored: " << st.to_string();
  EXPECT_EQ(j.node_id(), 1u);

  st = c->join(join_request("shm-host"), &j);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_NE(st.message().find("rdma"), std::string::npos) << st.to_string();
  EXPECT_NE(st.message().find("shm"), std::string::npos) << st.to_string();
  ASSERT_TRUE(c->join(rdma_join_request("c"), &j).ok());
  EXPECT_EQ(j.node_id(), 2u) << "the refused join took no node id";
  v1::StatusReply s = status_of(*c);
  ASSERT_EQ(s.nodes_size(), 3);
  EXPECT_EQ(s.nodes(1).transports(0).kind(), "rdma");
  EXPECT_EQ(s.nodes(1).transports(0).path(), std::string(64, 'm'));

  // The other way round: a shm cluster refuses an rdma machine.
  auto shm = Controller::create(options(clock, 3)).value();
  ASSERT_TRUE(shm->join(join_request("a"), &j).ok());
  st = shm->join(rdma_join_request("b"), &j);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_NE(st.message().find("transport mismatch"), std::string::npos) << st.to_string();
}

TEST(ControllerJoin, RefusesAFullCluster) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  v1::JoinReply j;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c->join(join_request("h" + std::to_string(i)), &j).ok());
  EXPECT_EQ(c->join(join_request("h3"), &j).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(status_of(*c).nodes_size(), 3);
}

TEST(ControllerJoin, RefusesMoreReplicasThanTheLogsHold) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  v1::JoinReply j;
  ASSERT_TRUE(c->join(join_request("a", 32), &j).ok());
  ASSERT_TRUE(c->join(join_request("b", 32), &j).ok());
  EXPECT_EQ(j.first_replica(), 32u);
  EXPECT_EQ(c->join(join_request("c", 32), &j).code(), StatusCode::kResourceExhausted) << "replica 64 would be one too many";
}

TEST(ControllerHeartbeat, RefusesStaleTokenAndUnknownNode) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  v1::JoinReply j;
  ASSERT_TRUE(c->join(join_request("a"), &j).ok());
  v1::HeartbeatRequest hb;
  hb.set_secret(kSecret);
  hb.set_node_id(j.node_id());
  hb.set_token(j.token());
  v1::HeartbeatReply rep;
  ASSERT_TRUE(c->heartbeat(hb, &rep).ok());
  EXPECT_EQ(rep.verdict(), v1::HeartbeatReply::VERDICT_OK);
  EXPECT_EQ(rep.run().run_id(), 0u) << "no run yet";

  hb.set_token(j.token() + 1);
  EXPECT_EQ(c->heartbeat(hb, &rep).code(), StatusCode::kFailedPrecondition);
  hb.set_token(j.token());
  hb.set_node_id(7);
  EXPECT_EQ(c->heartbeat(hb, &rep).code(), StatusCode::kNotFound);
  hb.set_node_id(j.node_id());
  hb.set_secret("wrong-wrong-wrong-wrong");
  EXPECT_EQ(c->heartbeat(hb, &rep).code(), StatusCode::kPermissionDenied);
  hb.set_secret(kSecret);
  hb.set_run_id(99);
  EXPECT_EQ(c->heartbeat(hb, &rep).code(), StatusCode::kInvalidArgument) << "no run 99";
  hb.set_run_id(0);
  v1::LogPosition* p = hb.add_logs();
  p->set_name("proc");
  p->set_tail(3);
  p->set_ltail(4);
  EXPECT_EQ(c->heartbeat(hb, &rep).code(), StatusCode::kInvalidArgument) << "ltail above tail";
  p->set_ltail(2);
  hb.set_fs_calls(17);
  ASSERT_TRUE(c->heartbeat(hb, &rep).ok());
  v1::StatusReply s = status_of(*c);
  ASSERT_EQ(s.nodes_size(), 1);
  EXPECT_EQ(s.nodes(0).fs_calls(), 17u);
  ASSERT_EQ(s.nodes(0).logs_size(), 1);
  EXPECT_EQ(s.nodes(0).logs(0).tail(), 3u);
}

// --- Leases -------------------------------------------------------------------------------------

TEST(ControllerLease, FencesOnlyTheSilentMachine) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();  // lease 4 s, heartbeat 250 ms
  std::vector<v1::JoinReply> joined(3);
  for (uint32_t i = 0; i < 3; ++i) ASSERT_TRUE(c->join(join_request("h" + std::to_string(i)), &joined[i]).ok());
  auto beat = [&](uint32_t id, v1::HeartbeatReply* rep) {
    v1::HeartbeatRequest hb;
    hb.set_secret(kSecret);
    hb.set_node_id(id);
    hb.set_token(joined[id].token());
    return c->heartbeat(hb, rep);
  };
  v1::HeartbeatReply rep;
  clock.advance(3s);
  ASSERT_TRUE(beat(0, &rep).ok());
  ASSERT_TRUE(beat(1, &rep).ok());
  clock.advance(1s);  // node 2 is exactly one lease old: not yet over it
  EXPECT_TRUE(c->expire_leases().empty());
  clock.advance(1ms);
  EXPECT_EQ(c->expire_leases(), std::vector<uint32_t>{2});
  EXPECT_TRUE(c->expire_leases().empty()) << "fenced once";

  ASSERT_TRUE(beat(2, &rep).ok());
  EXPECT_EQ(rep.verdict(), v1::HeartbeatReply::VERDICT_FENCED);
  ASSERT_TRUE(beat(0, &rep).ok());
  EXPECT_EQ(rep.verdict(), v1::HeartbeatReply::VERDICT_OK);
  v1::StatusReply s = status_of(*c);
  ASSERT_EQ(s.nodes_size(), 3);
  EXPECT_EQ(s.nodes(0).state(), "live");
  EXPECT_EQ(s.nodes(1).state(), "live");
  EXPECT_EQ(s.nodes(2).state(), "fenced");

  // Two live of three expected: a machine may join again, as a new node.
  v1::JoinReply again;
  ASSERT_TRUE(c->join(join_request("h2"), &again).ok());
  EXPECT_EQ(again.node_id(), 3u);
  EXPECT_EQ(again.first_replica(), 6u);
  EXPECT_NE(again.token(), joined[2].token());
  v1::JoinReply j;
  EXPECT_EQ(c->join(join_request("h4"), &j).code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(beat(2, &rep).ok());
  EXPECT_EQ(rep.verdict(), v1::HeartbeatReply::VERDICT_FENCED) << "fenced for good";
}

// --- Runs ---------------------------------------------------------------------------------------

v1::RunRequest run_request(const std::string& workload = "kv", double seconds = 1) {
  v1::RunRequest r;
  r.set_secret(kSecret);
  r.set_workload(workload);
  r.set_seconds(seconds);
  r.set_seed(7);
  return r;
}

TEST(ControllerRun, StartRunRefusesBadRequests) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 2)).value();
  v1::JoinReply j;
  ASSERT_TRUE(c->join(join_request("a"), &j).ok());
  EXPECT_EQ(c->start_run(run_request()).status().code(), StatusCode::kFailedPrecondition) << "1 of 2 joined";
  ASSERT_TRUE(c->join(join_request("b"), &j).ok());

  v1::RunRequest r = run_request();
  r.set_secret("not-the-secret-at-all");
  EXPECT_EQ(c->start_run(r).status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(c->start_run(run_request("bogus")).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->start_run(run_request("")).status().code(), StatusCode::kInvalidArgument);
  for (double s : {0.0, -1.0, 3601.0, std::nan("")}) {
    EXPECT_EQ(c->start_run(run_request("kv", s)).status().code(), StatusCode::kInvalidArgument) << s;
  }
  for (const std::string& w : workloads()) {
    Result<uint64_t> one = c->start_run(run_request(w));
    ASSERT_TRUE(one.ok()) << w << ": " << one.status().to_string();
    v1::RunReply rr;
    EXPECT_EQ(c->wait_run(*one, Clock::now() - 1ms, &rr).code(), StatusCode::kDeadlineExceeded) << "abandoned";
  }

  Result<uint64_t> first = c->start_run(run_request("demo", 3600));
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_EQ(status_of(*c).run_state(), "running");
  EXPECT_EQ(c->start_run(run_request()).status().code(), StatusCode::kFailedPrecondition) << "one run at a time";
  v1::RunReply rr;
  EXPECT_EQ(c->wait_run(*first + 1, Clock::now() + 1s, &rr).code(), StatusCode::kNotFound);
}

// A 3-machine cluster, 2 replicas each, on the test's clock.
class ControllerRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = Controller::create(options(clock_, 3)).value();
    for (uint32_t i = 0; i < 3; ++i) {
      v1::JoinReply j;
      ASSERT_TRUE(c_->join(join_request("m" + std::to_string(i), 2), &j).ok());
      tokens_.push_back(j.token());
    }
  }

  v1::HeartbeatReply beat(uint32_t id, uint64_t run_id, v1::Phase phase) {
    v1::HeartbeatRequest hb;
    hb.set_secret(kSecret);
    hb.set_node_id(id);
    hb.set_token(tokens_[id]);
    hb.set_run_id(run_id);
    hb.set_phase(phase);
    v1::HeartbeatReply rep;
    Status st = c_->heartbeat(hb, &rep);
    EXPECT_TRUE(st.ok()) << "node " << id << ": " << st.to_string();
    return rep;
  }

  Status report(uint32_t id, uint64_t run_id, bool ok, uint64_t digest = 0xd1, int replicas = 2) {
    v1::ReportRequest r;
    r.set_secret(kSecret);
    r.set_node_id(id);
    r.set_token(tokens_[id]);
    r.set_run_id(run_id);
    r.set_ok(ok);
    if (!ok) r.set_error("boom on m" + std::to_string(id));
    for (int i = 0; i < replicas; ++i) {
      r.add_proc_digests(digest);
      r.add_fs_digests(digest ^ 0xf5);
    }
    r.set_fs_calls(100);
    r.set_seconds(1.5);
    v1::ReportReply rep;
    return c_->report(r, &rep);
  }

  // Starts a run and brings every machine to PHASE_RUNNING (machine 0 formats first).
  uint64_t start_and_format() {
    const uint64_t run = c_->start_run(run_request()).value();
    EXPECT_EQ(beat(0, 0, v1::PHASE_IDLE).run().run_id(), run);
    beat(0, run, v1::PHASE_FORMATTED);
    for (uint32_t id = 1; id < 3; ++id) EXPECT_EQ(beat(id, 0, v1::PHASE_IDLE).run().run_id(), run);
    for (uint32_t id = 0; id < 3; ++id) beat(id, run, v1::PHASE_RUNNING);
    return run;
  }

  FakeClock clock_;
  std::unique_ptr<Controller> c_;
  std::vector<uint64_t> tokens_;
};

TEST_F(ControllerRunTest, MachineZeroFormatsThenTheOthersAttach) {
  const uint64_t run = c_->start_run(run_request()).value();
  EXPECT_NE(run, 0u);

  v1::HeartbeatReply r0 = beat(0, 0, v1::PHASE_IDLE);
  ASSERT_EQ(r0.run().run_id(), run);
  EXPECT_TRUE(r0.run().format());
  EXPECT_EQ(r0.run().machine(), 0u);
  EXPECT_EQ(r0.run().machines(), 3u);
  EXPECT_EQ(r0.run().workload(), "kv");
  EXPECT_EQ(r0.run().seconds(), 1.0);
  EXPECT_EQ(r0.run().seed(), 7u);
  EXPECT_EQ(r0.run().log(), "shm");
  const uint64_t region = r0.run().region_cluster_id();
  EXPECT_NE(region, 0u);

  // Until machine 0 says the region is formatted, the others have nothing to attach to.
  EXPECT_EQ(beat(1, 0, v1::PHASE_IDLE).run().run_id(), 0u);
  beat(0, run, v1::PHASE_BOOTING);
  EXPECT_EQ(beat(1, 0, v1::PHASE_IDLE).run().run_id(), 0u);
  EXPECT_EQ(beat(2, 0, v1::PHASE_IDLE).run().run_id(), 0u);
  beat(0, run, v1::PHASE_FORMATTED);

  v1::HeartbeatReply r1 = beat(1, 0, v1::PHASE_IDLE);
  ASSERT_EQ(r1.run().run_id(), run);
  EXPECT_FALSE(r1.run().format());
  EXPECT_EQ(r1.run().log(), "shm");
  EXPECT_EQ(r1.run().machine(), 1u);
  EXPECT_EQ(r1.run().region_cluster_id(), region);
  v1::HeartbeatReply r2 = beat(2, 0, v1::PHASE_IDLE);
  EXPECT_EQ(r2.run().machine(), 2u);
  EXPECT_EQ(r2.run().region_cluster_id(), region);

  // all_done: every live machine beat PHASE_DONE.
  for (uint32_t id = 0; id < 3; ++id) EXPECT_FALSE(beat(id, run, v1::PHASE_RUNNING).all_done());
  EXPECT_FALSE(beat(0, run, v1::PHASE_DONE).all_done());
  EXPECT_FALSE(beat(1, run, v1::PHASE_DONE).all_done());
  v1::HeartbeatReply done = beat(2, run, v1::PHASE_DONE);
  EXPECT_TRUE(done.all_done());
  EXPECT_FALSE(done.release());
  EXPECT_TRUE(done.fenced_machines().empty());

  EXPECT_EQ(report(0, run, true, 0xd1, 1).code(), StatusCode::kInvalidArgument) << "one digest for two replicas";
  EXPECT_EQ(report(0, run, true, 0xd1, 3).code(), StatusCode::kInvalidArgument) << "three digests for two replicas";
  ASSERT_TRUE(report(0, run, true).ok());
  ASSERT_TRUE(report(1, run, true).ok());
  EXPECT_EQ(status_of(*c_).run_state(), "running") << "machine 2 has not reported";
  EXPECT_FALSE(beat(0, run, v1::PHASE_REPORTED).release());

  // A waiter wakes when the last report arrives, not at its deadline.
  v1::RunReply rr;
  Status waited;
  Clock::duration waited_for{};
  std::thread waiter([&] {
    const Clock::time_point t0 = Clock::now();
    waited = c_->wait_run(run, Clock::now() + 60s, &rr);
    waited_for = Clock::now() - t0;
  });
  ASSERT_TRUE(report(2, run, true).ok());
  waiter.join();
  ASSERT_TRUE(waited.ok()) << waited.to_string();
  EXPECT_LT(waited_for, 10s);
  EXPECT_TRUE(rr.ok()) << rr.error();
  EXPECT_TRUE(rr.digests_equal());
  EXPECT_EQ(rr.run_id(), run);
  ASSERT_EQ(rr.machines_size(), 3);
  for (int m = 0; m < 3; ++m) {
    EXPECT_EQ(rr.machines(m).machine(), static_cast<uint32_t>(m));
    EXPECT_EQ(rr.machines(m).outcome(), "ok");
    EXPECT_EQ(rr.machines(m).proc_digests_size(), 2);
    EXPECT_EQ(rr.machines(m).fs_calls(), 100u);
  }
  EXPECT_TRUE(beat(1, run, v1::PHASE_REPORTED).release());
  EXPECT_EQ(status_of(*c_).run_state(), "ok");

  // The next run formats a region of its own.
  const uint64_t next = c_->start_run(run_request()).value();
  EXPECT_GT(next, run);
  v1::HeartbeatReply n0 = beat(0, 0, v1::PHASE_IDLE);
  EXPECT_EQ(n0.run().run_id(), next);
  EXPECT_NE(n0.run().region_cluster_id(), region);
}

TEST_F(ControllerRunTest, DifferentDigestsFailTheRun) {
  const uint64_t run = start_and_format();
  ASSERT_TRUE(report(0, run, true, 0xd1).ok());
  ASSERT_TRUE(report(1, run, true, 0xd1).ok());
  ASSERT_TRUE(report(2, run, true, 0xd2).ok());
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 10s, &rr).ok());
  EXPECT_FALSE(rr.ok());
  EXPECT_FALSE(rr.digests_equal());
  EXPECT_NE(rr.error().find("differ"), std::string::npos) << rr.error();
  EXPECT_EQ(status_of(*c_).run_state(), "failed");
}

TEST_F(ControllerRunTest, DifferentReplicasOfOneMachineFailTheRun) {
  const uint64_t run = start_and_format();
  for (uint32_t id = 0; id < 2; ++id) ASSERT_TRUE(report(id, run, true).ok());
  v1::ReportRequest r;
  r.set_secret(kSecret);
  r.set_node_id(2);
  r.set_token(tokens_[2]);
  r.set_run_id(run);
  r.set_ok(true);
  r.add_proc_digests(0xd1);
  r.add_proc_digests(0xd1);
  r.add_fs_digests(0xd1 ^ 0xf5);
  r.add_fs_digests(0x77);  // replica 1's file system differs
  v1::ReportReply rep;
  ASSERT_TRUE(c_->report(r, &rep).ok());
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 10s, &rr).ok());
  EXPECT_FALSE(rr.ok());
  EXPECT_FALSE(rr.digests_equal());
}

TEST_F(ControllerRunTest, MachineFencedAfterFormattingIsReportedFenced) {
  const uint64_t run = start_and_format();
  clock_.advance(3s);
  beat(0, run, v1::PHASE_RUNNING);
  beat(1, run, v1::PHASE_RUNNING);
  clock_.advance(2s);  // machine 2's last beat is 5 s old, the others' 2 s
  EXPECT_EQ(c_->expire_leases(), std::vector<uint32_t>{2});

  v1::HeartbeatReply r0 = beat(0, run, v1::PHASE_DONE);
  ASSERT_EQ(r0.fenced_machines_size(), 1);
  EXPECT_EQ(r0.fenced_machines(0), 2u);
  EXPECT_TRUE(beat(1, run, v1::PHASE_DONE).all_done()) << "the fenced machine left the barrier";
  EXPECT_EQ(beat(2, run, v1::PHASE_DONE).verdict(), v1::HeartbeatReply::VERDICT_FENCED);
  EXPECT_EQ(report(2, run, true).code(), StatusCode::kFailedPrecondition) << "a fenced machine's report";

  ASSERT_TRUE(report(0, run, true).ok());
  ASSERT_TRUE(report(1, run, true).ok());
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 10s, &rr).ok());
  EXPECT_TRUE(rr.ok()) << rr.error();
  EXPECT_TRUE(rr.digests_equal());
  ASSERT_EQ(rr.machines_size(), 3);
  EXPECT_EQ(rr.machines(0).outcome(), "ok");
  EXPECT_EQ(rr.machines(1).outcome(), "ok");
  EXPECT_EQ(rr.machines(2).outcome(), "fenced");

  // A run after the fencing leaves the fenced node out.
  const uint64_t next = c_->start_run(run_request()).value();
  EXPECT_EQ(beat(0, 0, v1::PHASE_IDLE).run().machines(), 2u);
  EXPECT_NE(next, run);
}

TEST_F(ControllerRunTest, MachineZeroFailingBeforeFormattingEndsTheRun) {
  const uint64_t run = c_->start_run(run_request()).value();
  beat(0, run, v1::PHASE_BOOTING);
  ASSERT_TRUE(report(0, run, false).ok());
  v1::RunReply rr;
  const Clock::time_point t0 = Clock::now();
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 30s, &rr).ok());
  EXPECT_LT(Clock::now() - t0, 5s) << "ended at once, not at the deadline";
  EXPECT_FALSE(rr.ok());
  EXPECT_NE(rr.error().find("machine 0"), std::string::npos) << rr.error();
  ASSERT_EQ(rr.machines_size(), 3);
  EXPECT_EQ(rr.machines(0).outcome(), "failed");
  EXPECT_EQ(beat(1, 0, v1::PHASE_IDLE).run().run_id(), 0u) << "nobody is told to attach";
  EXPECT_TRUE(beat(0, run, v1::PHASE_FAILED).release());
  EXPECT_TRUE(c_->start_run(run_request()).ok()) << "the controller is free for the next run";
}

TEST_F(ControllerRunTest, MachineZeroFailedPhaseBeforeFormattingEndsTheRun) {
  const uint64_t run = c_->start_run(run_request()).value();
  v1::HeartbeatRequest hb;
  hb.set_secret(kSecret);
  hb.set_node_id(0);
  hb.set_token(tokens_[0]);
  hb.set_run_id(run);
  hb.set_phase(v1::PHASE_FAILED);
  hb.set_error("cannot map the region");
  v1::HeartbeatReply rep;
  ASSERT_TRUE(c_->heartbeat(hb, &rep).ok());
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 30s, &rr).ok());
  EXPECT_FALSE(rr.ok());
  EXPECT_NE(rr.error().find("cannot map the region"), std::string::npos) << rr.error();
  EXPECT_TRUE(c_->start_run(run_request()).ok());
}

TEST_F(ControllerRunTest, MachineZeroFencedBeforeFormattingEndsTheRun) {
  const uint64_t run = c_->start_run(run_request()).value();
  clock_.advance(3s);
  beat(1, 0, v1::PHASE_IDLE);
  beat(2, 0, v1::PHASE_IDLE);
  clock_.advance(2s);
  EXPECT_EQ(c_->expire_leases(), std::vector<uint32_t>{0});
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 30s, &rr).ok());
  EXPECT_FALSE(rr.ok());
  EXPECT_NE(rr.error().find("fenced"), std::string::npos) << rr.error();
  EXPECT_EQ(rr.machines(0).outcome(), "fenced");
}

TEST_F(ControllerRunTest, DeadlineAbandonsTheRun) {
  const uint64_t run = start_and_format();
  v1::RunReply rr;
  Status st = c_->wait_run(run, Clock::now() - 1ms, &rr);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(rr.ok());
  EXPECT_EQ(rr.run_id(), run);
  EXPECT_TRUE(beat(1, run, v1::PHASE_RUNNING).release()) << "the machines are told to tear it down";
  Result<uint64_t> next = c_->start_run(run_request());
  ASSERT_TRUE(next.ok()) << next.status().to_string();
  EXPECT_GT(*next, run);
}

TEST_F(ControllerRunTest, ShutdownEndsWaitsAndTellsTheMachines) {
  const uint64_t run = start_and_format();
  v1::ShutdownRequest req;
  req.set_secret(kSecret);
  ASSERT_TRUE(c_->shutdown(req).ok());
  EXPECT_TRUE(c_->shutting_down());
  EXPECT_TRUE(c_->wait_shutdown(Clock::now()));
  EXPECT_EQ(beat(0, run, v1::PHASE_RUNNING).verdict(), v1::HeartbeatReply::VERDICT_SHUTDOWN);
  v1::RunReply rr;
  EXPECT_EQ(c_->wait_run(run, Clock::now() + 30s, &rr).code(), StatusCode::kUnavailable);
  v1::JoinReply j;
  EXPECT_EQ(c_->join(join_request("late"), &j).code(), StatusCode::kUnavailable);
}

// --- RDMA runs and endpoint exchange ------------------------------------------------------------

// A 3-machine rdma cluster (no shared region), 2 replicas each, on the test's clock.
class ControllerRdmaTest : public ControllerRunTest {
 protected:
  void SetUp() override {
    c_ = Controller::create(options(clock_, 3)).value();
    for (uint32_t i = 0; i < 3; ++i) {
      v1::JoinReply j;
      ASSERT_TRUE(c_->join(rdma_join_request("r" + std::to_string(i), 2), &j).ok());
      tokens_.push_back(j.token());
    }
  }

  v1::ExchangeRequest exchange_request(uint32_t id, uint64_t run, const std::string& name,
                                       std::vector<std::string> to, uint32_t timeout_ms = 10000) {
    v1::ExchangeRequest r;
    r.set_secret(kSecret);
    r.set_node_id(id);
    r.set_token(tokens_[id]);
    r.set_run_id(run);
    r.set_name(name);
    for (std::string& t : to) r.add_to_machines(std::move(t));
    r.set_timeout_ms(timeout_ms);
    return r;
  }

  // What machine |from| sends machine |to| under |name| (distinct for every pair and name).
  static std::string endpoint(const std::string& name, uint32_t from, uint32_t to) {
    return name + ":qp=" + std::to_string(100 * from + to) + ",from=" + std::to_string(from) + ",to=" + std::to_string(to);
  }
  // Machine |id|'s to_machines in a run of |machines|: its own entry empty.
  static std::vector<std::string> endpoints(const std::string& name, uint32_t id, uint32_t machines = 3) {
    std::vector<std::string> to(machines);
    for (uint32_t m = 0; m < machines; ++m) {
      if (m != id) to[m] = endpoint(name, id, m);
    }
    return to;
  }

  Status exchange(uint32_t id, uint64_t run, const std::string& name, uint32_t timeout_ms, v1::ExchangeReply* rep) {
    return c_->exchange(exchange_request(id, run, name, endpoints(name, id), timeout_ms), rep);
  }

  // Machines 0 and 1 exchange "proc" from threads of their own (machine 2 does not), each result
  // and how long it took recorded.
  struct TwoWaiters {
    std::vector<Status> results = std::vector<Status>(2);
    std::vector<Clock::duration> took = std::vector<Clock::duration>(2);
    std::vector<std::thread> threads;
    void start(ControllerRdmaTest& test, uint64_t run, uint32_t timeout_ms) {
      for (uint32_t id = 0; id < 2; ++id) {
        threads.emplace_back([this, &test, run, timeout_ms, id] {
          v1::ExchangeReply rep;
          const Clock::time_point t0 = Clock::now();
          results[id] = test.exchange(id, run, "proc", timeout_ms, &rep);
          took[id] = Clock::now() - t0;
        });
      }
    }
    void join() {
      for (std::thread& t : threads) t.join();
    }
  };

  // Every machine of |run| exchanges under |name| from a thread of its own; checks all 6 directions.
  void exchange_all(uint64_t run, const std::string& name) {
    std::vector<v1::ExchangeReply> replies(3);
    std::vector<Status> results(3);
    std::vector<std::thread> threads;
    for (uint32_t id = 0; id < 3; ++id) {
      threads.emplace_back([&, id] { results[id] = exchange(id, run, name, 60000, &replies[id]); });
    }
    for (std::thread& t : threads) t.join();
    for (uint32_t me = 0; me < 3; ++me) {
      ASSERT_TRUE(results[me].ok()) << "machine " << me << ": " << results[me].to_string();
      ASSERT_EQ(replies[me].from_machines_size(), 3) << "machine " << me;
      for (uint32_t j = 0; j < 3; ++j) {
        EXPECT_EQ(replies[me].from_machines(static_cast<int>(j)), j == me ? "" : endpoint(name, j, me))
            << "what machine " << j << " sent machine " << me;
      }
    }
  }
};

TEST_F(ControllerRdmaTest, EveryMachineGetsItsOrderAtOnce) {
  const uint64_t run = c_->start_run(run_request()).value();
  // Machine 0 has not even beaten yet: there is no region to wait for.
  for (uint32_t id : {2u, 1u, 0u}) {
    v1::HeartbeatReply r = beat(id, 0, v1::PHASE_IDLE);
    ASSERT_EQ(r.run().run_id(), run) << "machine " << id;
    EXPECT_EQ(r.run().machine(), id);
    EXPECT_EQ(r.run().machines(), 3u);
    EXPECT_EQ(r.run().log(), "rdma");
    EXPECT_FALSE(r.run().format()) << "nothing to format";
    EXPECT_FALSE(r.run().noncoherent());
  }
  // Machine 0 failing early does not end the run "before it formatted": the others run on, and the
  // run ends when every machine reported.
  ASSERT_TRUE(report(0, run, false).ok());
  EXPECT_EQ(status_of(*c_).run_state(), "running");
  EXPECT_EQ(beat(1, 0, v1::PHASE_IDLE).run().run_id(), run) << "still ordered";
  ASSERT_TRUE(report(1, run, true).ok());
  ASSERT_TRUE(report(2, run, true).ok());
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 10s, &rr).ok());
  EXPECT_FALSE(rr.ok());
  EXPECT_EQ(rr.error().find("before it formatted"), std::string::npos) << rr.error();
  EXPECT_EQ(rr.machines(0).outcome(), "failed");
  EXPECT_EQ(rr.machines(1).outcome(), "ok");
}

TEST_F(ControllerRdmaTest, MachineZeroFencedEarlyDoesNotEndTheRun) {
  const uint64_t run = c_->start_run(run_request()).value();
  clock_.advance(3s);
  beat(1, run, v1::PHASE_RUNNING);
  beat(2, run, v1::PHASE_RUNNING);
  clock_.advance(2s);
  EXPECT_EQ(c_->expire_leases(), std::vector<uint32_t>{0});
  EXPECT_EQ(status_of(*c_).run_state(), "running") << "the survivors report";
  ASSERT_TRUE(report(1, run, true).ok());
  ASSERT_TRUE(report(2, run, true).ok());
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 10s, &rr).ok());
  EXPECT_TRUE(rr.ok()) << rr.error();
  EXPECT_EQ(rr.machines(0).outcome(), "fenced");
}

TEST_F(ControllerRdmaTest, ExchangeGivesEachMachineWhatTheOthersSentIt) {
  const uint64_t run = c_->start_run(run_request()).value();
  exchange_all(run, "proc");
  exchange_all(run, "fs0");  // names are separate barriers
  // A retry after the exchange completed answers the same at once.
  v1::ExchangeReply again;
  ASSERT_TRUE(exchange(1, run, "proc", 60000, &again).ok());
  ASSERT_EQ(again.from_machines_size(), 3);
  EXPECT_EQ(again.from_machines(0), endpoint("proc", 0, 1));
  EXPECT_EQ(again.from_machines(1), "");
  EXPECT_EQ(again.from_machines(2), endpoint("proc", 2, 1));
}

TEST_F(ControllerRdmaTest, ExchangeRefusesMalformedRequests) {
  const uint64_t run = c_->start_run(run_request()).value();
  struct Case {
    const char* what;
    StatusCode code;
    std::function<void(v1::ExchangeRequest*)> spoil;
  };
  const std::vector<Case> cases = {
      {"wrong secret", StatusCode::kPermissionDenied, [](v1::ExchangeRequest* r) { r->set_secret("wrong-wrong-wrong-wrong"); }},
      {"stale token", StatusCode::kFailedPrecondition, [](v1::ExchangeRequest* r) { r->set_token(r->token() ^ 1); }},
      {"unknown node", StatusCode::kNotFound, [](v1::ExchangeRequest* r) { r->set_node_id(9); }},
      {"no such run", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->set_run_id(99); }},
      {"too few entries", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->mutable_to_machines()->RemoveLast(); }},
      {"too many entries", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->add_to_machines("x"); }},
      {"own entry not empty", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->set_to_machines(0, "me"); }},
      {"entry too long", StatusCode::kInvalidArgument,
       [](v1::ExchangeRequest* r) { r->set_to_machines(1, std::string(kMaxExchangeEntryBytes + 1, 'e')); }},
      {"empty name", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->set_name(""); }},
      {"long name", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->set_name(std::string(65, 'n')); }},
      {"name with a slash", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->set_name("fs/0"); }},
      {"name with a space", StatusCode::kInvalidArgument, [](v1::ExchangeRequest* r) { r->set_name("fs 0"); }},
      {"timeout too long", StatusCode::kInvalidArgument,
       [](v1::ExchangeRequest* r) { r->set_timeout_ms(kMaxExchangeTimeoutMs + 1); }},
  };
  for (const Case& k : cases) {
    v1::ExchangeRequest r = exchange_request(0, run, "proc", endpoints("proc", 0));
    k.spoil(&r);
    v1::ExchangeReply rep;
    Status st = c_->exchange(r, &rep);
    EXPECT_EQ(st.code(), k.code) << k.what << ": " << st.to_string();
    EXPECT_FALSE(st.message().empty()) << k.what;
  }
  // None of the refused requests posted: other content from machine 0 is no conflict.
  v1::ExchangeReply rep;
  Status st = c_->exchange(exchange_request(0, run, "proc", {"", "x", "y"}, 1), &rep);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st.to_string();

  // A machine of the cluster that takes no part in the run: one that joined after it started
  // (machine 2 is fenced to make room for it).
  clock_.advance(3s);
  beat(0, run, v1::PHASE_RUNNING);
  beat(1, run, v1::PHASE_RUNNING);
  clock_.advance(2s);
  ASSERT_EQ(c_->expire_leases(), std::vector<uint32_t>{2});
  v1::JoinReply late;
  ASSERT_TRUE(c_->join(rdma_join_request("late"), &late).ok());
  tokens_.push_back(late.token());
  st = c_->exchange(exchange_request(late.node_id(), run, "proc", {"a", "b", "c"}), &rep);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_NE(st.message().find("no part"), std::string::npos) << st.to_string();
}

TEST_F(ControllerRdmaTest, SameContentIsARetryOtherContentIsRefused) {
  const uint64_t run = c_->start_run(run_request()).value();
  v1::ExchangeReply rep;
  // Nobody else posts: the wait times out, but the post stays.
  Status st = exchange(0, run, "proc", 1, &rep);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st.to_string();
  st = exchange(0, run, "proc", 1, &rep);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << "the same content again is a retry: " << st.to_string();
  std::vector<std::string> other = endpoints("proc", 0);
  other[2] = "another queue pair";
  st = c_->exchange(exchange_request(0, run, "proc", other, 1), &rep);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.to_string();
  EXPECT_NE(st.message().find("other content"), std::string::npos) << st.to_string();
  // The first content stands: the exchange completes with it.
  exchange_all(run, "proc");
}

TEST_F(ControllerRdmaTest, DeadlineNamesTheMachinesThatDidNotPost) {
  const uint64_t run = c_->start_run(run_request()).value();
  TwoWaiters w;
  w.start(*this, run, /*timeout_ms=*/100);
  w.join();
  const std::vector<Status>& results = w.results;
  const std::vector<Clock::duration>& took = w.took;
  for (uint32_t id = 0; id < 2; ++id) {
    EXPECT_EQ(results[id].code(), StatusCode::kDeadlineExceeded) << results[id].to_string();
    const std::string& m = results[id].message();
    EXPECT_NE(m.find("machines 2 (node 2) did not post"), std::string::npos) << m;
    EXPECT_EQ(m.find("0 (node 0)"), std::string::npos) << "machine 0 posted: " << m;
    EXPECT_EQ(m.find("1 (node 1)"), std::string::npos) << "machine 1 posted: " << m;
    EXPECT_GE(took[id], 100ms) << "waited for the timeout";
    EXPECT_LT(took[id], 10s);
  }
}

TEST_F(ControllerRdmaTest, AMachineFencedWhileOthersWaitAbortsTheExchange) {
  const uint64_t run = c_->start_run(run_request()).value();
  clock_.advance(3s);
  beat(0, run, v1::PHASE_RUNNING);
  beat(1, run, v1::PHASE_RUNNING);
  TwoWaiters w;
  w.start(*this, run, /*timeout_ms=*/60000);
  clock_.advance(2s);  // machine 2 never beat or posted: its lease runs out
  EXPECT_EQ(c_->expire_leases(), std::vector<uint32_t>{2});
  w.join();
  const std::vector<Status>& results = w.results;
  const std::vector<Clock::duration>& took = w.took;
  for (uint32_t id = 0; id < 2; ++id) {
    EXPECT_EQ(results[id].code(), StatusCode::kAborted) << results[id].to_string();
    EXPECT_NE(results[id].message().find("machine 2 (node 2) was fenced"), std::string::npos) << results[id].to_string();
    EXPECT_LT(took[id], 10s) << "woken by the fencing, not the timeout";
  }
  v1::ExchangeReply rep;
  EXPECT_EQ(exchange(2, run, "proc", 60000, &rep).code(), StatusCode::kAborted) << "the fenced machine itself";
}

TEST_F(ControllerRdmaTest, AMachineReportedUnreachableIsFencedAtOnce) {
  const uint64_t run = c_->start_run(run_request()).value();
  for (uint32_t id = 0; id < 3; ++id) beat(id, run, v1::PHASE_RUNNING);
  // Machine 0's RDMA link to machine 1 broke; machine 1 still beats (its lease is fine), but its
  // mirrors miss entries from now on: it is fenced without waiting for the lease.
  v1::HeartbeatRequest hb;
  hb.set_secret(kSecret);
  hb.set_node_id(0);
  hb.set_token(tokens_[0]);
  hb.set_run_id(run);
  hb.set_phase(v1::PHASE_RUNNING);
  hb.add_unreachable_machines(1);
  hb.add_unreachable_machines(0);   // itself: ignored
  hb.add_unreachable_machines(7);   // no such machine: ignored
  v1::HeartbeatReply rep;
  ASSERT_TRUE(c_->heartbeat(hb, &rep).ok());
  EXPECT_EQ(std::vector<uint32_t>(rep.fenced_machines().begin(), rep.fenced_machines().end()), std::vector<uint32_t>{1});
  v1::HeartbeatReply told = beat(1, run, v1::PHASE_RUNNING);
  EXPECT_EQ(told.verdict(), v1::HeartbeatReply::VERDICT_FENCED);
  v1::StatusRequest sr;
  sr.set_secret(kSecret);
  v1::StatusReply st;
  ASSERT_TRUE(c_->status(sr, &st).ok());
  ASSERT_EQ(st.nodes_size(), 3);
  EXPECT_EQ(st.nodes(1).state(), "fenced");
  EXPECT_EQ(st.nodes(1).fenced_reason(), "its RDMA link broke (reported by node 0)");
  EXPECT_EQ(st.nodes(0).state(), "live");
  EXPECT_EQ(st.nodes(2).state(), "live");
  // A list longer than any cluster is refused.
  for (int i = 0; i < 70; ++i) hb.add_unreachable_machines(2);
  EXPECT_EQ(c_->heartbeat(hb, &rep).code(), StatusCode::kInvalidArgument);
}

TEST_F(ControllerRdmaTest, TheRunEndingOrShutdownEndsTheWait) {
  uint64_t run = c_->start_run(run_request()).value();
  Status waited;
  std::thread waiter([&] {
    v1::ExchangeReply rep;
    waited = exchange(0, run, "proc", 60000, &rep);
  });
  v1::RunReply rr;
  EXPECT_EQ(c_->wait_run(run, Clock::now() - 1ms, &rr).code(), StatusCode::kDeadlineExceeded) << "abandoned";
  waiter.join();
  EXPECT_EQ(waited.code(), StatusCode::kAborted) << waited.to_string();

  // The next run forgets the last run's endpoints: new content under the same name is no conflict.
  const uint64_t old = run;
  run = c_->start_run(run_request()).value();
  v1::ExchangeReply rep;
  EXPECT_EQ(exchange(0, old, "proc", 60000, &rep).code(), StatusCode::kAborted) << "the last run is over";
  std::vector<std::string> fresh = endpoints("proc", 0);
  fresh[1] = "run " + std::to_string(run);
  EXPECT_EQ(c_->exchange(exchange_request(0, run, "proc", fresh, 1), &rep).code(), StatusCode::kDeadlineExceeded);

  waiter = std::thread([&] { waited = exchange(1, run, "proc", 60000, &rep); });
  v1::ShutdownRequest down;
  down.set_secret(kSecret);
  ASSERT_TRUE(c_->shutdown(down).ok());
  waiter.join();
  EXPECT_EQ(waited.code(), StatusCode::kCancelled) << waited.to_string();
  EXPECT_EQ(exchange(2, run, "proc", 60000, &rep).code(), StatusCode::kCancelled) << "after the shutdown";
}

// --- Over gRPC ----------------------------------------------------------------------------------

TEST(ControllerGrpc, JoinAndStatusOverTcpAndUnix) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 3)).value();
  TempDir dir;
  const std::string sock = "unix:" + dir.path() + "/c.sock";
  auto server = ControllerServer::start(*c, {"127.0.0.1:0", sock}, std::nullopt);
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  ASSERT_GT((*server)->port(), 0);
  auto tcp = ControllerClient::connect("127.0.0.1:" + std::to_string((*server)->port()), std::nullopt).value();
  auto unix_client = ControllerClient::connect(sock, std::nullopt).value();

  v1::JoinReply j0, j1;
  ASSERT_TRUE(tcp->join(join_request("tcp-host"), &j0).ok());
  Status st = unix_client->join(join_request("unix-host"), &j1);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(j0.node_id(), 0u);
  EXPECT_EQ(j1.node_id(), 1u);
  EXPECT_EQ(j1.first_replica(), 2u);

  v1::StatusRequest sr;
  sr.set_secret(kSecret);
  for (ControllerClient* client : {tcp.get(), unix_client.get()}) {
    v1::StatusReply s;
    ASSERT_TRUE(client->status(sr, &s).ok());
    ASSERT_EQ(s.nodes_size(), 2);
    EXPECT_EQ(s.nodes(0).hostname(), "tcp-host");
    EXPECT_EQ(s.nodes(1).hostname(), "unix-host");
    EXPECT_EQ(s.expected_nodes(), 3u);
    EXPECT_FALSE(s.tls());
  }

  // The controller's codes survive gRPC's mapping.
  v1::JoinRequest bad = join_request("x");
  bad.set_secret("wrong-secret-wrong-secret");
  v1::JoinReply j;
  st = tcp->join(bad, &j);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st.to_string();
  EXPECT_NE(st.message().find("secret"), std::string::npos) << st.to_string();
  EXPECT_EQ(unix_client->join(join_request("x", 5), &j).code(), StatusCode::kInvalidArgument);
  v1::HeartbeatRequest hb;
  hb.set_secret(kSecret);
  hb.set_node_id(1);
  hb.set_token(j1.token() ^ 1);
  v1::HeartbeatReply hr;
  EXPECT_EQ(tcp->heartbeat(hb, &hr).code(), StatusCode::kFailedPrecondition);
  hb.set_node_id(9);
  EXPECT_EQ(tcp->heartbeat(hb, &hr).code(), StatusCode::kNotFound);
  v1::RunReply rr;
  EXPECT_EQ(tcp->run(run_request(), &rr, 5s).code(), StatusCode::kFailedPrecondition) << "2 of 3 joined";
}

TEST(ControllerGrpc, RunOverGrpcWaitsForTheReports) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 1)).value();
  auto server = ControllerServer::start(*c, {"127.0.0.1:0"}, std::nullopt).value();
  auto client = ControllerClient::connect("127.0.0.1:" + std::to_string(server->port()), std::nullopt).value();
  v1::JoinReply j;
  ASSERT_TRUE(client->join(join_request("solo", 1), &j).ok());

  v1::RunReply rr;
  Status ran;
  std::thread operator_thread([&] { ran = client->run(run_request(), &rr, 30s); });
  // The machine's side, over the same channel: take the order, report.
  v1::HeartbeatRequest hb;
  hb.set_secret(kSecret);
  hb.set_node_id(0);
  hb.set_token(j.token());
  v1::HeartbeatReply hr;
  const bool ordered = eventually([&] { return client->heartbeat(hb, &hr).ok() && hr.run().run_id() != 0; });
  EXPECT_TRUE(ordered) << "no run order within 5 s";
  if (ordered) {
    // Machine 0 formats and finishes (a report before any beat said so would end the run as
    // "failed before it formatted").
    const uint64_t run = hr.run().run_id();
    hb.set_run_id(run);
    hb.set_phase(v1::PHASE_DONE);
    EXPECT_TRUE(client->heartbeat(hb, &hr).ok());
    EXPECT_TRUE(hr.all_done());
    v1::ReportRequest rep;
    rep.set_secret(kSecret);
    rep.set_node_id(0);
    rep.set_token(j.token());
    rep.set_run_id(run);
    rep.set_ok(true);
    rep.add_proc_digests(1);
    rep.add_fs_digests(1);
    v1::ReportReply rp;
    EXPECT_TRUE(client->report(rep, &rp).ok());
  } else {
    v1::ShutdownRequest down;  // ends the operator's wait
    down.set_secret(kSecret);
    EXPECT_TRUE(c->shutdown(down).ok());
  }
  operator_thread.join();
  ASSERT_TRUE(ran.ok()) << ran.to_string();
  EXPECT_TRUE(rr.ok()) << rr.error();
  EXPECT_EQ(rr.run_id(), hb.run_id());
}

TEST(ControllerGrpc, StartRefusesBadAddresses) {
  FakeClock clock;
  auto c = Controller::create(options(clock, 1)).value();
  EXPECT_EQ(ControllerServer::start(*c, {}, std::nullopt).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ControllerServer::start(*c, {"unix:/nonexistent-nrx-dir/x/c.sock"}, std::nullopt).status().code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(ControllerClient::connect("", std::nullopt).status().code(), StatusCode::kInvalidArgument);
}

TEST(ControllerGrpc, UnreachableControllerFailsFast) {
  DeadPort dead;
  auto client = ControllerClient::connect(dead.address(), std::nullopt).value();
  v1::StatusRequest sr;
  sr.set_secret(kSecret);
  v1::StatusReply s;
  const Clock::time_point t0 = Clock::now();
  Status st = client->status(sr, &s, 500ms);
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_TRUE(st.code() == StatusCode::kUnavailable || st.code() == StatusCode::kDeadlineExceeded) << st.to_string();
  EXPECT_EQ(client->wait_connected(100ms).code(), StatusCode::kUnavailable);
}

// --- TLS ----------------------------------------------------------------------------------------

bool have_openssl() { return std::system("command -v openssl >/dev/null 2>&1") == 0; }

class ClusterTls : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_openssl()) GTEST_SKIP() << "the openssl command is not installed";
    cluster_dir_ = tmp_.path() + "/cluster";
    Status st = init_cluster_dir(cluster_dir_, {"nrx-test-host"});
    ASSERT_TRUE(st.ok()) << st.to_string();
    secret_ = read_secret(cluster_dir_ + "/secret").value();
  }

  TempDir tmp_;
  std::string cluster_dir_;
  std::string secret_;
};

TEST_F(ClusterTls, InitWritesACompleteDirectoryOnce) {
  EXPECT_EQ(secret_.size(), 64u) << "32 random bytes in hex";
  for (const char* f : {"ca.pem", "ca.key", "controller.pem", "controller.key", "secret"}) {
    EXPECT_TRUE(std::filesystem::exists(cluster_dir_ + "/" + f)) << f;
  }
  for (const char* f : {"controller.csr", "controller.ext", "ca.srl"}) {
    EXPECT_FALSE(std::filesystem::exists(cluster_dir_ + "/" + f)) << f << " is left behind";
  }
  const auto perms = std::filesystem::status(cluster_dir_ + "/controller.key").permissions();
  EXPECT_EQ(perms & std::filesystem::perms::others_read, std::filesystem::perms::none);
  EXPECT_EQ(init_cluster_dir(cluster_dir_, {}).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(read_secret(cluster_dir_ + "/secret").value(), secret_) << "not overwritten";

  auto server_tls = load_tls(cluster_dir_, true).value();
  ASSERT_TRUE(server_tls.has_value());
  EXPECT_NE(server_tls->cert_pem.find("BEGIN CERTIFICATE"), std::string::npos);
  EXPECT_NE(server_tls->key_pem.find("PRIVATE KEY"), std::string::npos);
  auto client_tls = load_tls(cluster_dir_, false).value();
  ASSERT_TRUE(client_tls.has_value());
  EXPECT_EQ(client_tls->ca_pem, server_tls->ca_pem);
  EXPECT_TRUE(client_tls->key_pem.empty());

  EXPECT_FALSE(load_tls(tmp_.path(), true).value().has_value()) << "no ca.pem: plaintext";
  std::filesystem::remove(cluster_dir_ + "/controller.key");
  EXPECT_EQ(load_tls(cluster_dir_, true).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(load_tls(cluster_dir_, false).ok()) << "a client needs ca.pem only";
}

TEST_F(ClusterTls, ReadSecretValidates) {
  EXPECT_EQ(read_secret(tmp_.path() + "/none").status().code(), StatusCode::kNotFound);
  const std::string path = tmp_.path() + "/s";
  std::ofstream(path) << "  short \n";
  EXPECT_EQ(read_secret(path).status().code(), StatusCode::kInvalidArgument);
  std::ofstream(path) << "0123456789abcdef\x01xyz\n";
  EXPECT_EQ(read_secret(path).status().code(), StatusCode::kInvalidArgument);
  std::ofstream(path) << "\n  0123456789abcdef  \n";
  EXPECT_EQ(read_secret(path).value(), "0123456789abcdef");
}

TEST_F(ClusterTls, JoinOverTcpAndUnix) {
  auto c = Controller::create({.secret = secret_, .expected_nodes = 3, .tls = true}).value();
  const std::string sock = "unix:" + tmp_.path() + "/c.sock";
  auto server = ControllerServer::start(*c, {"127.0.0.1:0", sock}, load_tls(cluster_dir_, true).value());
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  const std::optional<TlsFiles> client_tls = load_tls(cluster_dir_, false).value();
  auto tcp = ControllerClient::connect("127.0.0.1:" + std::to_string((*server)->port()), client_tls).value();
  auto unix_client = ControllerClient::connect(sock, client_tls).value();
  v1::JoinRequest r = join_request("tls-tcp");
  r.set_secret(secret_);
  v1::JoinReply j;
  Status st = tcp->join(r, &j);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(j.node_id(), 0u);
  r.set_hostname("tls-unix");
  st = unix_client->join(r, &j);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(j.node_id(), 1u);
  v1::StatusRequest sr;
  sr.set_secret(secret_);
  v1::StatusReply s;
  ASSERT_TRUE(tcp->status(sr, &s).ok());
  EXPECT_TRUE(s.tls());
  EXPECT_EQ(s.nodes_size(), 2);
}

TEST_F(ClusterTls, MismatchedClientsAreRefused) {
  auto c = Controller::create({.secret = secret_, .expected_nodes = 3}).value();
  auto tls_server = ControllerServer::start(*c, {"127.0.0.1:0"}, load_tls(cluster_dir_, true).value()).value();
  auto plain_server = ControllerServer::start(*c, {"127.0.0.1:0"}, std::nullopt).value();
  v1::JoinRequest r = join_request("h");
  r.set_secret(secret_);
  v1::JoinReply j;

  auto plain = ControllerClient::connect("127.0.0.1:" + std::to_string(tls_server->port()), std::nullopt).value();
  EXPECT_FALSE(plain->join(r, &j, 2s).ok()) << "a plaintext client to the TLS server";
  auto tls_client =
      ControllerClient::connect("127.0.0.1:" + std::to_string(plain_server->port()), load_tls(cluster_dir_, false).value())
          .value();
  EXPECT_FALSE(tls_client->join(r, &j, 2s).ok()) << "a TLS client to a plaintext server";

  // A CA of another cluster does not vouch for this controller.
  TempDir other;
  ASSERT_TRUE(init_cluster_dir(other.path() + "/c", {}).ok());
  auto stranger =
      ControllerClient::connect("127.0.0.1:" + std::to_string(tls_server->port()), load_tls(other.path() + "/c", false).value())
          .value();
  EXPECT_FALSE(stranger->join(r, &j, 2s).ok()) << "a client trusting another CA";
  v1::StatusRequest sr;
  sr.set_secret(secret_);
  v1::StatusReply s;
  ASSERT_TRUE(c->status(sr, &s).ok());
  EXPECT_EQ(s.nodes_size(), 0) << "none of them got through";
}

// --- Agent --------------------------------------------------------------------------------------

// A controller on the test's clock (it fences only when the test moves the clock) served on
// loopback with a short heartbeat and lease, so that the agent's own lease runs out quickly.
class ClusterAgent : public ::testing::Test {
 protected:
  static constexpr auto kHeartbeat = 20ms;
  static constexpr auto kLease = 200ms;

  void SetUp() override {
    c_ = Controller::create({.secret = kSecret, .expected_nodes = 1, .lease = kLease, .heartbeat = kHeartbeat,
                             .now = clock_.fn()})
             .value();
    server_ = ControllerServer::start(*c_, {"127.0.0.1:0"}, std::nullopt).value();
  }

  AgentOptions agent_options() const {
    AgentOptions o;
    o.address = "127.0.0.1:" + std::to_string(server_->port());
    o.secret = kSecret;
    o.hostname = "agent";
    o.topology = topology(1);
    o.transports = {shm_transport()};
    o.join_timeout = 10s;
    return o;
  }

  FakeClock clock_;
  std::unique_ptr<Controller> c_;
  std::unique_ptr<ControllerServer> server_;
};

TEST_F(ClusterAgent, JoinsTakesARunAndReports) {
  auto agent = Agent::join(agent_options());
  ASSERT_TRUE(agent.ok()) << agent.status().to_string();
  Agent& a = **agent;
  EXPECT_EQ(a.joined().node_id(), 0u);
  EXPECT_EQ(a.joined().heartbeat_ms(), 20u);
  EXPECT_EQ(a.joined().lease_ms(), 200u);
  EXPECT_EQ(a.next_run(Clock::now() + 50ms).status().code(), StatusCode::kDeadlineExceeded) << "no run yet";

  const uint64_t run = c_->start_run(run_request()).value();
  Result<v1::RunOrder> order = a.next_run(Clock::now() + 5s);
  ASSERT_TRUE(order.ok()) << order.status().to_string();
  EXPECT_EQ(order->run_id(), run);
  EXPECT_TRUE(order->format());
  EXPECT_EQ(order->machine(), 0u);
  EXPECT_EQ(order->machines(), 1u);
  EXPECT_EQ(a.next_run(Clock::now() + 50ms).status().code(), StatusCode::kDeadlineExceeded) << "taken once";

  a.set_phase(run, v1::PHASE_FORMATTED);
  a.set_phase(run, v1::PHASE_DONE);
  Status st = a.wait_all_done(run, Clock::now() + 5s);
  ASSERT_TRUE(st.ok()) << st.to_string();
  v1::ReportRequest rep;
  rep.set_run_id(run);
  rep.set_ok(true);
  rep.add_proc_digests(3);
  rep.add_fs_digests(3);
  ASSERT_TRUE(a.report(rep).ok());
  a.set_phase(run, v1::PHASE_REPORTED);
  st = a.wait_release(run, Clock::now() + 5s);
  ASSERT_TRUE(st.ok()) << st.to_string();
  v1::RunReply rr;
  ASSERT_TRUE(c_->wait_run(run, Clock::now() + 5s, &rr).ok());
  EXPECT_TRUE(rr.ok()) << rr.error();
  EXPECT_FALSE(a.lost()) << a.lost_reason();
}

TEST_F(ClusterAgent, LosesItsLeaseWhenTheControllerGoesAway) {
  auto agent = Agent::join(agent_options()).value();
  EXPECT_FALSE(agent->lost());
  server_.reset();
  // The last beat that got through was at most a heartbeat (plus its call) before the server went:
  // a lease after it, the agent gives up. Five leases leave room for a slow (sanitizer) build.
  ASSERT_TRUE(eventually([&] { return agent->lost(); }, 5 * kLease)) << "not lost within five leases";
  EXPECT_NE(agent->lost_reason().find("whole lease"), std::string::npos) << agent->lost_reason();
  EXPECT_EQ(agent->next_run(Clock::now() + 1s).status().code(), StatusCode::kAborted);
}

TEST_F(ClusterAgent, StopsWhenFenced) {
  auto agent = Agent::join(agent_options()).value();
  // Jump the controller's clock past the lease until it fences the agent (a beat that lands between
  // the jump and the expiry renews the lease: jump again).
  ASSERT_TRUE(eventually([&] {
    clock_.advance(10 * kLease);
    (void)c_->expire_leases();
    return status_of(*c_).nodes(0).state() == "fenced";
  }));
  ASSERT_TRUE(eventually([&] { return agent->lost(); }));
  EXPECT_NE(agent->lost_reason().find("fenced"), std::string::npos) << agent->lost_reason();
  EXPECT_EQ(agent->wait_all_done(1, Clock::now() + 1s).code(), StatusCode::kAborted);
}

TEST_F(ClusterAgent, WrongSecretFailsAtOnce) {
  AgentOptions o = agent_options();
  o.secret = "this-is-not-the-secret";
  o.join_timeout = 60s;
  const Clock::time_point t0 = Clock::now();
  Status st = Agent::join(o).status();
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st.to_string();
  EXPECT_LT(Clock::now() - t0, 5s) << "not retried until join_timeout";
}

TEST_F(ClusterAgent, NoControllerIsUnavailableAfterJoinTimeout) {
  DeadPort dead;
  AgentOptions o = agent_options();
  o.address = dead.address();
  o.join_timeout = 300ms;
  const Clock::time_point t0 = Clock::now();
  Status st = Agent::join(o).status();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
  EXPECT_LT(Clock::now() - t0, 5s);
}

// Two machines of an rdma cluster, each an Agent over gRPC, swap endpoints through the controller.
TEST(ClusterAgentRdma, ExchangeThroughTheServer) {
  FakeClock clock;  // the controller fences nobody: its clock stands still
  auto c = Controller::create({.secret = kSecret, .expected_nodes = 2, .lease = 1000ms, .heartbeat = 20ms,
                               .now = clock.fn()})
               .value();
  auto server = ControllerServer::start(*c, {"127.0.0.1:0"}, std::nullopt).value();
  const std::string address = "127.0.0.1:" + std::to_string(server->port());
  AgentOptions o;
  o.address = address;
  o.secret = kSecret;
  o.topology = topology(1);
  o.transports = {rdma_transport()};
  o.join_timeout = 10s;
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < 2; ++i) {
    o.hostname = "rdma-" + std::to_string(i);
    auto a = Agent::join(o);
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    agents.push_back(std::move(*a));
  }
  const uint64_t run = c->start_run(run_request()).value();
  for (uint32_t i = 0; i < 2; ++i) {
    Result<v1::RunOrder> order = agents[i]->next_run(Clock::now() + 5s);
    ASSERT_TRUE(order.ok()) << order.status().to_string();
    EXPECT_EQ(order->run_id(), run);
    EXPECT_EQ(order->log(), "rdma");
    EXPECT_EQ(order->machine(), i);
    EXPECT_EQ(order->machines(), 2u);
  }

  // Alone, machine 0 gets the controller's deadline (not gRPC's), naming machine 1.
  Result<std::vector<std::string>> alone = agents[0]->exchange(run, "solo", {"", "0 to 1"}, 50ms);
  EXPECT_EQ(alone.status().code(), StatusCode::kDeadlineExceeded) << alone.status().to_string();
  EXPECT_NE(alone.status().message().find("1 (node 1) did not post"), std::string::npos) << alone.status().to_string();

  Result<std::vector<std::string>> from1 = Status::internal("not run");
  std::thread machine1([&] { from1 = agents[1]->exchange(run, "proc", {"qp 1 to 0", ""}, 10s); });
  Result<std::vector<std::string>> from0 = agents[0]->exchange(run, "proc", {"", "qp 0 to 1"}, 10s);
  machine1.join();
  ASSERT_TRUE(from0.ok()) << from0.status().to_string();
  ASSERT_TRUE(from1.ok()) << from1.status().to_string();
  EXPECT_EQ(*from0, (std::vector<std::string>{"", "qp 1 to 0"}));
  EXPECT_EQ(*from1, (std::vector<std::string>{"qp 0 to 1", ""}));

  // The controller's refusals keep their codes across gRPC.
  EXPECT_EQ(agents[0]->exchange(run, "bad name", {"", "x"}, 10s).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(agents[0]->exchange(run, "proc", {"", "other"}, 10s).status().code(), StatusCode::kFailedPrecondition);
  auto client = ControllerClient::connect(address, std::nullopt).value();
  v1::ExchangeRequest req;
  req.set_secret("wrong-wrong-wrong-wrong");
  req.set_run_id(run);
  req.set_name("proc");
  v1::ExchangeReply rep;
  EXPECT_EQ(client->exchange(req, &rep).code(), StatusCode::kPermissionDenied);
  for (const auto& a : agents) EXPECT_FALSE(a->lost()) << a->lost_reason();
}

}  // namespace
}  // namespace nrx::cluster
