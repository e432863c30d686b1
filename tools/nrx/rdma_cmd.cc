// `nrx rdma probe` and `nrx rdma ping`: is RDMA usable here, and between two machines? probe opens
// the device (transport/verbs), checks its port and picks its GID; ping connects an RC queue pair
// to a peer and runs real verbs against the peer's registered memory: FETCH_AND_ADDs (every
// returned value checked), a COMPARE_AND_SWAP, an RDMA WRITE read back with an RDMA READ. The two
// sides exchange their endpoints over one TCP connection (the cluster's log backend exchanges them
// through the control plane instead); under soft-RoCE in TCG guests the times measure the
// emulation, not RDMA hardware.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"
#include "logs/rdma/rdma_log.h"
#include "logs/ring/ring_log.h"
#include "logs/shm/shm_log.h"
#include "tools/nrx/cli.h"
#include "transport/region.h"
#include "transport/verbs/verbs.h"

namespace nrx::tools {
namespace {

namespace verbs = transport::verbs;
using Clock = std::chrono::steady_clock;

void device_options(cli::Command& cmd) {
  cmd.option("device", "NAME", "the RDMA device (e.g. rxe0)", "the only one");
  cmd.option("port", "P", "its port", "1");
  cmd.option("gid-index", "I", "the GID index", "discovered: RoCE v2 with an IPv4 address first");
}

Result<verbs::ContextOptions> context_options(const cli::Command& cmd) {
  verbs::ContextOptions o;
  o.device = cmd.get("device").value_or("");
  NRX_ASSIGN_OR_RETURN(uint64_t port, cmd.get_u64("port", 1, 1, 255));
  o.port = static_cast<uint8_t>(port);
  if (cmd.has("gid-index")) {
    NRX_ASSIGN_OR_RETURN(uint64_t gi, cmd.get_u64("gid-index", 0, 0, 1023));
    o.gid_index = static_cast<int>(gi);
  }
  return o;
}

int probe(const std::vector<std::string>& args) {
  cli::Command cmd("rdma probe",
                   "List this machine's RDMA devices and check one: its port is ACTIVE, which GID the\n"
                   "cluster would use, whether it does atomics. Exit 0 when the device is usable.");
  device_options(cmd);
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  auto o = context_options(cmd);
  if (!o.ok()) return cli::fail(cmd, o.status());
  auto names = verbs::device_names();
  if (!names.ok()) {
    std::fprintf(stderr, "nrx rdma probe: %s\n", names.status().to_string().c_str());
    return 1;
  }
  std::printf("devices: %s\n", names->empty() ? "none" : "");
  for (const std::string& n : *names) std::printf("  %s\n", n.c_str());
  auto ctx = verbs::Context::open(*o);
  if (!ctx.ok()) {
    std::fprintf(stderr, "nrx rdma probe: %s\n", ctx.status().to_string().c_str());
    return 1;
  }
  std::printf("usable: %s\n", (*ctx)->describe().c_str());
  return 0;
}

// ---- a line-based TCP exchange, every wait bounded ----

class Line {
 public:
  explicit Line(int fd) : fd_(fd) {}
  ~Line() {
    if (fd_ >= 0) ::close(fd_);
  }
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;

  Status send(const std::string& s) {
    const std::string line = s + "\n";
    size_t off = 0;
    while (off < line.size()) {
      const ssize_t n = ::send(fd_, line.data() + off, line.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::unavailable("the peer's TCP connection broke: " + std::string(std::strerror(errno)));
      off += static_cast<size_t>(n);
    }
    return ok_status();
  }
  Result<std::string> receive(Clock::time_point deadline) {
    for (;;) {
      if (size_t nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      if (buf_.size() > 4096) return Status::invalid_argument("the peer sent an over-long line");
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Status::deadline_exceeded("the peer did not answer in time");
      pollfd p{fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (r < 0 && errno != EINTR) return Status::internal("poll: " + std::string(std::strerror(errno)));
      if (r <= 0) continue;
      char chunk[512];
      const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::unavailable("the peer closed the TCP connection");
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
};

Result<int> listen_accept(uint16_t port, Clock::time_point deadline) {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return Status::internal("socket: " + std::string(std::strerror(errno)));
  int one = 1;
  (void)::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(s, 1) != 0) {
    const std::string why = std::strerror(errno);
    ::close(s);
    return Status::unavailable("cannot listen on port " + std::to_string(port) + ": " + why);
  }
  std::printf("nrx rdma: listening on port %u\n", port);
  std::fflush(stdout);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      ::close(s);
      return Status::deadline_exceeded("no peer connected in time");
    }
    pollfd p{s, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000))) > 0) break;
  }
  const int c = ::accept4(s, nullptr, nullptr, SOCK_CLOEXEC);
  ::close(s);
  if (c < 0) return Status::internal("accept: " + std::string(std::strerror(errno)));
  return c;
}

Result<int> connect_to(const std::string& hostport, Clock::time_point deadline) {
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos || colon == 0) return Status::invalid_argument("--connect wants HOST:PORT");
  const std::string host = hostport.substr(0, colon), port = hostport.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return Status::invalid_argument("cannot resolve " + hostport + ": " + gai_strerror(rc));
  }
  // The listener may not be up yet: retry until the deadline.
  for (;;) {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s >= 0 && ::connect(s, res->ai_addr, res->ai_addrlen) == 0) {
      ::freeaddrinfo(res);
      return s;
    }
    const std::string why = std::strerror(errno);
    if (s >= 0) ::close(s);
    if (Clock::now() >= deadline) {
      ::freeaddrinfo(res);
      return Status::unavailable("cannot connect to " + hostport + ": " + why);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // a retry interval, deadline above
  }
}

double median_us(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The memory both sides register: the counter word at 0, the WRITE target at 64, the READ-back
// buffer at 256, the atomics' result word at 512.
struct alignas(4096) Buffer {
  std::array<std::byte, 4096> bytes{};
  uint64_t* word(size_t off) { return reinterpret_cast<uint64_t*>(bytes.data() + off); }
};

// The two-sided commands' common options: the device, which side this is, the deadline.
struct PeerArgs {
  verbs::ContextOptions device;
  bool server = false;  // --listen: machine 0
  uint16_t port = 0;
  std::string connect;  // --connect HOST:PORT
  Clock::time_point deadline;
};

void peer_options(cli::Command& cmd, const char* timeout_default) {
  device_options(cmd);
  cmd.option("listen", "PORT", "be the listening side (machine 0) on TCP port PORT");
  cmd.option("connect", "HOST:PORT", "reach the listening side there");
  cmd.option("timeout", "S", "give up after S seconds", timeout_default);
}

Result<PeerArgs> peer_args(const cli::Command& cmd, uint64_t timeout_default) {
  PeerArgs a;
  NRX_ASSIGN_OR_RETURN(a.device, context_options(cmd));
  NRX_ASSIGN_OR_RETURN(uint64_t timeout, cmd.get_u64("timeout", timeout_default, 1, 3600));
  NRX_ASSIGN_OR_RETURN(uint64_t port, cmd.get_u64("listen", 0, 1, 65535));
  a.server = cmd.has("listen");
  if (a.server == cmd.has("connect")) return Status::invalid_argument("give one of --listen or --connect");
  a.port = static_cast<uint16_t>(port);
  a.connect = cmd.get("connect").value_or("");
  a.deadline = Clock::now() + std::chrono::seconds(timeout);
  return a;
}

// The TCP line to the other side (the listener waits for one peer; the other retries until up).
Result<int> open_line(const PeerArgs& a) {
  return a.server ? listen_accept(a.port, a.deadline) : connect_to(a.connect, a.deadline);
}

int ping(const std::vector<std::string>& args) {
  cli::Command cmd("rdma ping",
                   "Connect an RC queue pair to a peer and run real verbs on its memory: --count FETCH_AND_ADDs\n"
                   "(each returned value checked), a COMPARE_AND_SWAP, a WRITE read back by a READ. One side\n"
                   "--listen's, the other --connect's; endpoints travel over that TCP connection. Prints the\n"
                   "median round trips (under soft-RoCE in TCG guests: the emulation's, not hardware's).");
  peer_options(cmd, "60");
  cmd.option("count", "N", "FETCH_AND_ADDs and READs", "200");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  auto pa = peer_args(cmd, 60);
  if (!pa.ok()) return cli::fail(cmd, pa.status());
  auto count = cmd.get_u64("count", 200, 1, 1000000);
  if (!count.ok()) return cli::fail(cmd, count.status());
  const bool server = pa->server;
  const Clock::time_point deadline = pa->deadline;
  auto die = [](const Status& st) {
    std::fprintf(stderr, "nrx rdma ping: %s\n", st.to_string().c_str());
    return 1;
  };

  auto ctx = verbs::Context::open(pa->device);
  if (!ctx.ok()) return die(ctx.status());
  std::printf("nrx rdma ping: %s\n", (*ctx)->describe().c_str());
  auto cq = verbs::CompletionQueue::create(**ctx, 512);
  if (!cq.ok()) return die(cq.status());
  auto qp = verbs::QueuePair::create(**ctx, **cq, {});
  if (!qp.ok()) return die(qp.status());
  auto buf = std::make_unique<Buffer>();
  auto mr = verbs::MemoryRegion::register_memory(**ctx, buf->bytes);
  if (!mr.ok()) return die(mr.status());

  auto fd = open_line(*pa);
  if (!fd.ok()) return die(fd.status());
  Line line(*fd);
  if (Status st = line.send((*qp)->local(mr->get()).to_string()); !st.ok()) return die(st);
  auto peer_text = line.receive(deadline);
  if (!peer_text.ok()) return die(peer_text.status());
  auto peer = verbs::Endpoint::parse(*peer_text);
  if (!peer.ok()) return die(peer.status());
  if (peer->length < sizeof(Buffer)) return die(Status::invalid_argument("the peer offers too little memory"));
  if (Status st = (*qp)->connect(*peer); !st.ok()) return die(st);
  std::printf("nrx rdma ping: connected to qpn %u\n", peer->qp_num);
  std::fflush(stdout);

  if (server) {
    // The peer works on our memory; we wait for its word that it is done, then report the counter.
    auto done = line.receive(deadline);
    if (!done.ok()) return die(done.status());
    // acquire: the device's writes completed before the peer sent "done" (it waited for them).
    const uint64_t counter = std::atomic_ref<uint64_t>(*buf->word(0)).load(std::memory_order_acquire);
    if (Status st = line.send("counter=" + std::to_string(counter)); !st.ok()) return die(st);
    std::printf("nrx rdma ping: served; counter %llu\n", static_cast<unsigned long long>(counter));
    return 0;
  }

  verbs::QueuePair& q = **qp;
  const verbs::MemoryRegion& m = **mr;
  std::vector<double> faa_us, read_us;
  const uint64_t n = *count;
  for (uint64_t i = 0; i < n; ++i) {
    const Clock::time_point t0 = Clock::now();
    auto old = q.fetch_add(m, buf->word(512), peer->addr, peer->rkey, 1, deadline);
    if (!old.ok()) return die(old.status());
    faa_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (*old != i) {
      return die(Status::data_loss("FETCH_AND_ADD " + std::to_string(i) + " returned " + std::to_string(*old)));
    }
  }
  auto prev = q.compare_swap(m, buf->word(512), peer->addr, peer->rkey, n, n + 1000, deadline);
  if (!prev.ok()) return die(prev.status());
  if (*prev != n) return die(Status::data_loss("COMPARE_AND_SWAP found " + std::to_string(*prev)));
  std::array<std::byte, 64> pattern;
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<std::byte>(i * 7 + 1);
  const uint64_t posts_before = q.posts(), waits_before = q.waits();
  if (Status st = q.post_write(nullptr, pattern, peer->addr + 64, peer->rkey, deadline); !st.ok()) return die(st);
  const uint64_t write_waits = q.waits() - waits_before, write_posts = q.posts() - posts_before;
  if (Status st = q.drain(deadline); !st.ok()) return die(st);
  for (uint64_t i = 0; i < n; ++i) {
    std::memset(buf->bytes.data() + 256, 0, 64);
    const Clock::time_point t0 = Clock::now();
    if (Status st = q.read(m, std::span(buf->bytes).subspan(256, 64), peer->addr + 64, peer->rkey, deadline); !st.ok()) {
      return die(st);
    }
    read_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (std::memcmp(buf->bytes.data() + 256, pattern.data(), 64) != 0) {
      return die(Status::data_loss("the READ did not return what the WRITE wrote"));
    }
  }
  if (Status st = line.send("done"); !st.ok()) return die(st);
  auto reply = line.receive(deadline);
  if (!reply.ok()) return die(reply.status());
  const std::string want = "counter=" + std::to_string(n + 1000);
  if (*reply != want) return die(Status::data_loss("the peer's counter is " + *reply + ", not " + want.substr(8)));
  std::printf("nrx rdma ping: %llu FETCH_AND_ADDs exact, COMPARE_AND_SWAP ok, WRITE read back by %llu READs\n",
              static_cast<unsigned long long>(n), static_cast<unsigned long long>(n));
  std::printf("nrx rdma ping: median round trip FETCH_AND_ADD %.1f us, READ %.1f us; a WRITE: %llu post, %llu "
              "completions waited for\n",
              median_us(faa_us), median_us(read_us), static_cast<unsigned long long>(write_posts),
              static_cast<unsigned long long>(write_waits));
  std::printf("nrx rdma ping: OK\n");
  return 0;
}

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

// What a replica makes of the entries it applies: a digest in log order, and done markers seen.
struct Digest {
  static constexpr uint64_t kDone = 0x454e4f44454e4f44ull;  // "DONEDONE"
  uint64_t digest = 0;
  uint32_t done = 0;
  uint64_t entries = 0;
  void operator()(const logs::Entry& e) {
    uint64_t w[2] = {};
    std::memcpy(w, e.data.data(), std::min(e.data.size(), sizeof w));
    if (w[0] == kDone) ++done;
    digest = mix(mix(digest, w[0]), w[1]);
    ++entries;
  }
};

// What one log did in the loop below: entries/s and the median append latency.
struct LoopResult {
  uint64_t entries = 0;
  double per_s = 0;
  double append_us = 0;  // median over the appends
};

// The append + exec loop: batches of 8 entries of 32 bytes for |seconds| (or |appends| appends
// without exec when nonzero: the append path alone).
template <typename Log>
LoopResult bench_loop(Log& log, logs::ReplicaId me, uint32_t machine, double seconds, Digest& d, uint64_t appends = 0) {
  constexpr size_t kBatch = 8;
  std::array<std::array<uint64_t, 4>, kBatch> words{};
  std::array<std::span<const std::byte>, kBatch> batch;
  for (size_t i = 0; i < kBatch; ++i) batch[i] = std::as_bytes(std::span(words[i]));
  LoopResult r;
  std::vector<double> us;
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (uint64_t k = 0; appends != 0 ? k < appends : Clock::now() < end; ++k) {
    for (size_t i = 0; i < kBatch; ++i) words[i] = {uint64_t{machine} << 48 | (r.entries + i) | 1ull << 40, machine, 0, 0};
    const auto a = Clock::now();
    if (!log.append(me, batch, d).ok()) break;
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
    if (appends == 0 && !log.exec(me, d).ok()) break;
    r.entries += kBatch;
  }
  r.per_s = static_cast<double>(r.entries) / std::chrono::duration<double>(Clock::now() - t0).count();
  r.append_us = us.empty() ? 0 : median_us(us);
  return r;
}

int logbench(const std::vector<std::string>& args) {
  cli::Command cmd("rdma logbench",
                   "Two machines share one RDMA log (logs/rdma): both append batches and apply the log for\n"
                   "--seconds, then compare digests; prints entries/s and the median append latency beside\n"
                   "the same loop on a shared-memory log (logs/shm, a /dev/shm region) and on a local ring\n"
                   "log on the same machine, and what an append costs in RDMA operations and round trips\n"
                   "(measured on 100 appends alone). The --listen side is machine 0 (the sequencer). Under\n"
                   "soft-RoCE in TCG guests the figures measure the protocol, not RDMA hardware.");
  peer_options(cmd, "120");
  cmd.option("seconds", "S", "how long both append", "2");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  auto pa = peer_args(cmd, 120);
  if (!pa.ok()) return cli::fail(cmd, pa.status());
  auto secs = cmd.get_u64("seconds", 2, 1, 3600);
  if (!secs.ok()) return cli::fail(cmd, secs.status());
  const bool server = pa->server;
  const uint32_t machine = server ? 0 : 1;
  const auto deadline = pa->deadline;
  auto die = [](const Status& st) {
    std::fprintf(stderr, "nrx rdma logbench: %s\n", st.to_string().c_str());
    return 1;
  };
  logs::LogOptions lo;
  lo.entry_size = 32;
  lo.slot_count = 4096;
  lo.payload_slots = 16;
  lo.full_timeout = std::chrono::seconds(30);

  auto log = logs::RdmaLog::create(lo, {.machine = machine, .machines = 2, .device = pa->device});
  if (!log.ok()) return die(log.status());
  std::printf("nrx rdma logbench: machine %u of 2 on %s\n", machine, (*log)->context().describe().c_str());
  std::fflush(stdout);
  // The baselines: the same loop on a local ring log and on a shared-memory log (coherent mode,
  // one machine, in a /dev/shm region).
  LoopResult ring_r, shm_r;
  {
    auto ring = logs::RingLog::create(lo);
    if (!ring.ok()) return die(ring.status());
    auto me = (*ring)->register_replica();
    if (!me.ok()) return die(me.status());
    Digest d;
    ring_r = bench_loop(**ring, *me, machine, static_cast<double>(*secs), d);
  }
  {
    const logs::ShmOptions so{};
    const uint64_t bytes = (logs::ShmLog::region_bytes(lo, so) + 4095) / 4096 * 4096;  // whole pages
    auto region = transport::Region::create_file("/dev/shm/nrx-rdma-logbench-" + std::to_string(getpid()), bytes,
                                                 {.replace_existing = true, .unlink_on_close = true});
    if (!region.ok()) return die(region.status());
    auto shm = logs::ShmLog::create(region->bytes(), lo, so);
    if (!shm.ok()) return die(shm.status());
    auto me = (*shm)->register_replica();
    if (!me.ok()) return die(me.status());
    Digest d;
    shm_r = bench_loop(**shm, *me, machine, static_cast<double>(*secs), d);
  }

  auto fd = open_line(*pa);
  if (!fd.ok()) return die(fd.status());
  Line line(*fd);
  const uint32_t peer = 1 - machine;
  if (Status st = line.send((*log)->endpoint(peer).to_string()); !st.ok()) return die(st);
  auto text = line.receive(deadline);
  if (!text.ok()) return die(text.status());
  auto e = transport::verbs::Endpoint::parse(*text);
  if (!e.ok()) return die(e.status());
  std::vector<transport::verbs::Endpoint> from(2);
  from[peer] = *e;
  if (Status st = (*log)->connect(from); !st.ok()) return die(st);
  // Registration is a set-up step: machine 0, then machine 1, then both run.
  Result<logs::ReplicaId> me = Status::internal("not registered");
  if (server) {
    me = (*log)->register_replica();
    if (!me.ok()) return die(me.status());
    if (Status st = line.send("registered"); !st.ok()) return die(st);
    if (auto r = line.receive(deadline); !r.ok()) return die(r.status());
  } else {
    if (auto r = line.receive(deadline); !r.ok()) return die(r.status());
    me = (*log)->register_replica();
    if (!me.ok()) return die(me.status());
    if (Status st = line.send("registered"); !st.ok()) return die(st);
  }
  Digest d;
  const LoopResult rdma_r = bench_loop(**log, *me, machine, static_cast<double>(*secs), d);
  // The append path alone: 100 appends (800 entries per machine: room in a 4096-slot log once
  // both applied the loop's entries) without exec, counted.
  // Catch up, then wait for the other: twice, so that both applied every entry of both loops
  // (after the first round the other's loop has ended too) and the appends never wait for room.
  for (int round = 0; round < 2; ++round) {
    for (;;) {
      const logs::LogIndex t = (*log)->tail();
      auto lt = (*log)->exec(*me, d);
      if (!lt.ok()) return die(lt.status());
      if (*lt >= t) break;
    }
    if (Status st = line.send("caught-up"); !st.ok()) return die(st);
    if (auto r = line.receive(deadline); !r.ok()) return die(r.status());
  }
  const logs::RdmaCounts c0 = (*log)->counts();
  const LoopResult path_r = bench_loop(**log, *me, machine, 0, d, /*appends=*/100);
  const logs::RdmaCounts c1 = (*log)->counts();
  const uint64_t n = rdma_r.entries;
  std::array<uint64_t, 4> marker{Digest::kDone, machine, 0, 0};
  const std::array<std::span<const std::byte>, 1> done{std::as_bytes(std::span(marker))};
  if (auto r = (*log)->append(*me, done, d); !r.ok()) return die(r.status());
  while (d.done < 2) {
    if (Clock::now() >= deadline) return die(Status::deadline_exceeded("the other machine never finished"));
    if (auto r = (*log)->exec(*me, d); !r.ok()) return die(r.status());
  }
  // Compare digests; machine 0 (the sequencer's region) stays until machine 1 has compared.
  if (Status st = line.send("digest=" + std::to_string(d.digest) + " entries=" + std::to_string(d.entries)); !st.ok()) {
    return die(st);
  }
  auto other = line.receive(deadline);
  if (!other.ok()) return die(other.status());
  const std::string mine = "digest=" + std::to_string(d.digest) + " entries=" + std::to_string(d.entries);
  const double appends = static_cast<double>(std::max<uint64_t>(c1.appends - c0.appends, 1));
  std::printf("nrx rdma logbench: machine %u appended %llu entries in the loop; entries/s: rdma log %.0f, shm log "
              "%.0f, local ring %.0f (rdma/shm %.4f, rdma/ring %.4f)\n",
              machine, static_cast<unsigned long long>(n), rdma_r.per_s, shm_r.per_s, ring_r.per_s,
              rdma_r.per_s / std::max(shm_r.per_s, 1e-9), rdma_r.per_s / std::max(ring_r.per_s, 1e-9));
  std::printf("nrx rdma logbench: median append latency (batch of 8): rdma log %.1f us, shm log %.2f us, local ring "
              "%.2f us; the append path alone %.1f us\n",
              rdma_r.append_us, shm_r.append_us, ring_r.append_us, path_r.append_us);
  // One mirror besides ours: the target is 1 FETCH_AND_ADD and 1 posted WRITE per append, 1 round trip.
  std::printf("nrx rdma logbench: append path, per append (batch of 8, 1 other mirror): %.2f FETCH_AND_ADD, %.2f "
              "WRITEs posted, %.2f READs, %.2f round trips (completions waited for)\n",
              static_cast<double>(c1.fetch_adds - c0.fetch_adds) / appends,
              static_cast<double>(c1.writes - c0.writes) / appends, static_cast<double>(c1.reads - c0.reads) / appends,
              static_cast<double>(c1.waits - c0.waits) / appends);
  if (*other != mine) {
    return die(Status::data_loss("the machines applied different logs: mine " + mine + ", the other's " + *other));
  }
  std::printf("nrx rdma logbench: both machines applied the same %llu entries (%s)\n",
              static_cast<unsigned long long>(d.entries), mine.c_str());
  std::printf("nrx rdma logbench: note: soft-RoCE in TCG guests measures the protocol, not RDMA hardware\n");
  if (server) {
    (void)line.receive(deadline);  // machine 1 closes when it is done with our region
  }
  std::printf("nrx rdma logbench: OK\n");
  return 0;
}

}  // namespace

int run_rdma(const std::vector<std::string>& args) {
  static constexpr const char* kUsage =
      "usage: nrx rdma <probe|ping|logbench> [options]\n"
      "\n"
      "  probe   list the RDMA devices and check one (port ACTIVE, GID, atomics)\n"
      "  ping    real verbs against a peer's memory (FETCH_AND_ADD, COMPARE_AND_SWAP, WRITE, READ)\n"
      "  logbench  two machines share one RDMA log (logs/rdma): throughput beside a local ring, equal digests\n"
      "\n"
      "Run `nrx rdma <command> --help` for its options.\n";
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "probe") return probe(rest);
  if (args[0] == "ping") return ping(rest);
  if (args[0] == "logbench") return logbench(rest);
  std::fprintf(stderr, "nrx rdma: unknown command '%s' (see 'nrx rdma --help')\n", args[0].c_str());
  return 2;
}

}  // namespace nrx::tools
