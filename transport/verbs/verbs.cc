// Control path of the verbs wrappers: devices, ports and GIDs, protection domain, memory
// registration, queues, queue-pair state transitions, endpoints. The data path is in
// verbs_datapath.cc.
#include "transport/verbs/verbs.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <random>

namespace nrx::transport::verbs {

namespace {

std::string errno_text(int err) { return std::strerror(err != 0 ? err : EIO); }

const char* port_state_name(ibv_port_state s) {
  switch (s) {
    case IBV_PORT_DOWN: return "DOWN";
    case IBV_PORT_INIT: return "INIT";
    case IBV_PORT_ARMED: return "ARMED";
    case IBV_PORT_ACTIVE: return "ACTIVE";
    case IBV_PORT_ACTIVE_DEFER: return "ACTIVE_DEFER";
    default: return "NOP";
  }
}

bool gid_zero(const ibv_gid& g) {
  for (uint8_t b : g.raw) {
    if (b != 0) return false;
  }
  return true;
}

bool gid_ipv4_mapped(const ibv_gid& g) {
  for (int i = 0; i < 10; ++i) {
    if (g.raw[i] != 0) return false;
  }
  return g.raw[10] == 0xff && g.raw[11] == 0xff;
}

std::string gid_text(const ibv_gid& g) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(AF_INET6, g.raw, buf, sizeof buf) == nullptr) return "?";
  return buf;
}

// A field "name=value" of an endpoint's text; value parsed in |base|.
template <typename T>
Status field(std::string_view text, std::string_view name, int base, T& out) {
  const std::string key = std::string(name) + "=";
  size_t at = 0;
  for (;;) {
    at = text.find(key, at);
    if (at == std::string_view::npos) return Status::invalid_argument("endpoint has no " + std::string(name));
    if (at == 0 || text[at - 1] == ' ') break;
    at += key.size();
  }
  const char* first = text.data() + at + key.size();
  const char* last = text.data() + text.size();
  const char* end = first;
  while (end < last && *end != ' ') ++end;
  auto r = std::from_chars(first, end, out, base);
  if (r.ec != std::errc() || r.ptr != end || first == end) {
    return Status::invalid_argument("endpoint field " + std::string(name) + " is malformed");
  }
  return ok_status();
}

}  // namespace

// ---- Endpoint ----------------------------------------------------------------------------------

std::string Endpoint::to_string() const {
  char gidhex[33] = {};
  for (int i = 0; i < 16; ++i) std::snprintf(gidhex + 2 * i, 3, "%02x", gid[i]);
  char buf[256];
  std::snprintf(buf, sizeof buf, "qpn=%u psn=%u lid=%u gid=%s addr=%llx rkey=%x len=%llu", qp_num, psn, lid, gidhex,
                static_cast<unsigned long long>(addr), rkey, static_cast<unsigned long long>(length));
  return buf;
}

Result<Endpoint> Endpoint::parse(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.remove_suffix(1);
  Endpoint e;
  uint32_t lid = 0;
  NRX_RETURN_IF_ERROR(field(text, "qpn", 10, e.qp_num));
  NRX_RETURN_IF_ERROR(field(text, "psn", 10, e.psn));
  NRX_RETURN_IF_ERROR(field(text, "lid", 10, lid));
  NRX_RETURN_IF_ERROR(field(text, "addr", 16, e.addr));
  NRX_RETURN_IF_ERROR(field(text, "rkey", 16, e.rkey));
  NRX_RETURN_IF_ERROR(field(text, "len", 10, e.length));
  if (e.psn >= (1u << 24)) return Status::invalid_argument("endpoint psn is above 24 bits");
  if (lid > UINT16_MAX) return Status::invalid_argument("endpoint lid is above 16 bits");
  e.lid = static_cast<uint16_t>(lid);
  const size_t at = text.find("gid=");
  if (at == std::string_view::npos || (at != 0 && text[at - 1] != ' ')) {
    return Status::invalid_argument("endpoint has no gid");
  }
  const std::string_view hex = text.substr(at + 4, 32);
  if (hex.size() != 32 || (text.size() > at + 36 && text[at + 36] != ' ')) {
    return Status::invalid_argument("endpoint gid must be 32 hex digits");
  }
  for (int i = 0; i < 16; ++i) {
    auto r = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, e.gid[i], 16);
    if (r.ec != std::errc() || r.ptr != hex.data() + 2 * i + 2) {
      return Status::invalid_argument("endpoint gid must be 32 hex digits");
    }
  }
  return e;
}

// ---- devices -----------------------------------------------------------------------------------

Result<std::vector<std::string>> device_names() {
  int n = 0;
  errno = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) {
    // ENOSYS: no kernel support (no uverbs at all) is "no devices" to us.
    if (errno == ENOSYS || errno == 0) return std::vector<std::string>{};
    return Status::internal("ibv_get_device_list: " + errno_text(errno));
  }
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.emplace_back(ibv_get_device_name(list[i]));
  ibv_free_device_list(list);
  return names;
}

Result<std::unique_ptr<Context>> Context::open(const ContextOptions& options) {
  int n = 0;
  errno = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr && errno != ENOSYS && errno != 0) {
    return Status::internal("ibv_get_device_list: " + errno_text(errno));
  }
  struct FreeList {
    ibv_device** l;
    ~FreeList() {
      if (l != nullptr) ibv_free_device_list(l);
    }
  } free_list{list};
  if (list == nullptr || n == 0) {
    return Status::unavailable(
        "no RDMA device on this machine (for soft-RoCE: modprobe rdma_rxe && rdma link add rxe0 type rxe "
        "netdev eth0)");
  }
  ibv_device* dev = nullptr;
  std::string all;
  for (int i = 0; i < n; ++i) {
    const std::string nm = ibv_get_device_name(list[i]);
    all += (all.empty() ? "" : ", ") + nm;
    if (nm == options.device) dev = list[i];
  }
  if (options.device.empty()) {
    if (n > 1) return Status::invalid_argument("several RDMA devices (" + all + "): name one");
    dev = list[0];
  } else if (dev == nullptr) {
    return Status::not_found("no RDMA device '" + options.device + "' (there is " + all + ")");
  }
  std::unique_ptr<Context> c(new Context());
  c->name_ = ibv_get_device_name(dev);
  c->ctx_ = ibv_open_device(dev);
  if (c->ctx_ == nullptr) return Status::internal("ibv_open_device " + c->name_ + ": " + errno_text(errno));

  ibv_device_attr dattr{};
  if (int rc = ibv_query_device(c->ctx_, &dattr); rc != 0) {
    return Status::internal("ibv_query_device " + c->name_ + ": " + errno_text(rc));
  }
  if (options.port == 0 || options.port > dattr.phys_port_cnt) {
    return Status::invalid_argument(c->name_ + " has ports 1.." + std::to_string(dattr.phys_port_cnt) + ", not " +
                                    std::to_string(options.port));
  }
  c->atomics_ = dattr.atomic_cap != IBV_ATOMIC_NONE;
  c->port_ = options.port;
  ibv_port_attr pattr{};
  if (int rc = ibv_query_port(c->ctx_, c->port_, &pattr); rc != 0) {
    return Status::internal("ibv_query_port " + c->name_ + ": " + errno_text(rc));
  }
  if (pattr.state != IBV_PORT_ACTIVE) {
    return Status::failed_precondition(c->name_ + " port " + std::to_string(c->port_) + " is " +
                                       port_state_name(pattr.state) + ", not ACTIVE (is its netdev up?)");
  }
  c->lid_ = pattr.lid;
  c->mtu_ = pattr.active_mtu;

  // The GID: the caller's index, or the best of the port's table. RoCE v2 with an IPv4-mapped
  // address routes over the VMs' IPv4 network; the index differs between set-ups (rxe puts the
  // link-local RoCE v1/v2 pair first), so it is read from the table, never assumed.
  if (options.gid_index >= 0) {
    if (options.gid_index >= pattr.gid_tbl_len) {
      return Status::invalid_argument("GID index " + std::to_string(options.gid_index) + " is beyond " + c->name_ +
                                      "'s table of " + std::to_string(pattr.gid_tbl_len));
    }
    c->gid_index_ = options.gid_index;
    if (int rc = ibv_query_gid(c->ctx_, c->port_, c->gid_index_, &c->gid_); rc != 0) {
      return Status::internal("ibv_query_gid: " + errno_text(rc));
    }
    ibv_gid_entry entry{};
    c->roce_v2_ = ibv_query_gid_ex(c->ctx_, c->port_, c->gid_index_, &entry, 0) == 0 &&
                  entry.gid_type == IBV_GID_TYPE_ROCE_V2;
  } else {
    int best = -1, best_score = 0;
    for (int i = 0; i < pattr.gid_tbl_len; ++i) {
      ibv_gid_entry entry{};
      if (ibv_query_gid_ex(c->ctx_, c->port_, i, &entry, 0) != 0) continue;  // an empty slot
      if (gid_zero(entry.gid)) continue;
      const bool v2 = entry.gid_type == IBV_GID_TYPE_ROCE_V2;
      const int score = v2 && gid_ipv4_mapped(entry.gid) ? 4 : v2 ? 3 : entry.gid_type == IBV_GID_TYPE_IB ? 2 : 1;
      if (score > best_score) {
        best_score = score;
        best = i;
        c->gid_ = entry.gid;
        c->roce_v2_ = v2;
      }
    }
    if (best < 0) {
      return Status::failed_precondition(c->name_ + " port " + std::to_string(c->port_) +
                                         " has no usable GID (no address on its netdev?)");
    }
    c->gid_index_ = best;
  }
  c->pd_ = ibv_alloc_pd(c->ctx_);
  if (c->pd_ == nullptr) return Status::internal("ibv_alloc_pd: " + errno_text(errno));
  return c;
}

Context::~Context() {
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
  if (ctx_ != nullptr) ibv_close_device(ctx_);
}

std::string Context::describe() const {
  const int mtu_bytes = 128 << static_cast<int>(mtu_);
  return name_ + " port " + std::to_string(port_) + " ACTIVE, MTU " + std::to_string(mtu_bytes) + ", " +
         (roce_v2_ ? "RoCE v2" : "") + " GID " + std::to_string(gid_index_) + " " + gid_text(gid_) + ", atomics " +
         (atomics_ ? "yes" : "no");
}

// ---- memory, queues ------------------------------------------------------------------------------

Result<std::unique_ptr<MemoryRegion>> MemoryRegion::register_memory(const Context& ctx, std::span<std::byte> bytes,
                                                                    int access) {
  if (bytes.empty()) return Status::invalid_argument("cannot register an empty memory region");
  std::unique_ptr<MemoryRegion> m(new MemoryRegion());
  m->mr_ = ibv_reg_mr(ctx.pd(), bytes.data(), bytes.size(), access);
  if (m->mr_ == nullptr) {
    return Status::internal("ibv_reg_mr of " + std::to_string(bytes.size()) + " bytes: " + errno_text(errno));
  }
  m->data_ = bytes.data();
  m->size_ = bytes.size();
  return m;
}

MemoryRegion::~MemoryRegion() {
  if (mr_ != nullptr) ibv_dereg_mr(mr_);
}

bool MemoryRegion::contains(const void* p, size_t n) const {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return a >= addr() && n <= size_ && a - addr() <= size_ - n;
}

Result<std::unique_ptr<CompletionQueue>> CompletionQueue::create(const Context& ctx, uint32_t depth) {
  if (depth == 0) return Status::invalid_argument("a completion queue needs a depth");
  std::unique_ptr<CompletionQueue> q(new CompletionQueue());
  q->cq_ = ibv_create_cq(ctx.raw(), static_cast<int>(depth), nullptr, nullptr, 0);
  if (q->cq_ == nullptr) return Status::internal("ibv_create_cq(" + std::to_string(depth) + "): " + errno_text(errno));
  q->depth_ = depth;
  return q;
}

CompletionQueue::~CompletionQueue() {
  if (cq_ != nullptr) ibv_destroy_cq(cq_);
}

// ---- queue pairs -------------------------------------------------------------------------------

Result<std::unique_ptr<QueuePair>> QueuePair::create(const Context& ctx, CompletionQueue& cq,
                                                     const QueuePairOptions& options) {
  if (options.send_depth < 2 || options.recv_depth == 0 || options.signal_every == 0 ||
      options.signal_every > options.send_depth / 2 || options.max_rd_atomic == 0) {
    return Status::invalid_argument("queue pair options: send_depth >= 2, recv_depth >= 1, "
                                    "1 <= signal_every <= send_depth / 2, max_rd_atomic >= 1");
  }
  std::unique_ptr<QueuePair> q(new QueuePair());
  q->cq_ = &cq;
  q->ctx_ = &ctx;
  q->options_ = options;
  ibv_qp_init_attr init{};
  init.send_cq = cq.raw();
  init.recv_cq = cq.raw();
  init.qp_type = IBV_QPT_RC;
  init.sq_sig_all = 0;  // we choose which posts are signalled
  init.cap.max_send_wr = options.send_depth;
  init.cap.max_recv_wr = options.recv_depth;
  init.cap.max_send_sge = 1;
  init.cap.max_recv_sge = 1;
  init.cap.max_inline_data = options.max_inline;
  q->qp_ = ibv_create_qp(ctx.pd(), &init);
  if (q->qp_ == nullptr) return Status::internal("ibv_create_qp (RC): " + errno_text(errno));
  q->options_.max_inline = init.cap.max_inline_data;  // what the device granted
  // A random initial PSN: a stale packet of an earlier connection is not mistaken for ours.
  q->psn_ = std::random_device{}() & 0xffffff;

  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = ctx.port();
  a.qp_access_flags = MemoryRegion::kAllAccess;
  if (int rc = ibv_modify_qp(q->qp_, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
      rc != 0) {
    return Status::internal("queue pair RESET->INIT: " + errno_text(rc));
  }
  return q;
}

QueuePair::~QueuePair() {
  if (qp_ != nullptr) ibv_destroy_qp(qp_);
}

Endpoint QueuePair::local(const MemoryRegion* mr) const {
  Endpoint e;
  e.qp_num = qp_->qp_num;
  e.psn = psn_;
  e.lid = ctx_->lid();
  std::memcpy(e.gid.data(), ctx_->gid().raw, 16);
  if (mr != nullptr) {
    e.addr = mr->addr();
    e.rkey = mr->rkey();
    e.length = mr->size();
  }
  return e;
}

Status QueuePair::connect(const Endpoint& remote) {
  if (connected_) return Status::failed_precondition("queue pair is connected already");
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = ctx_->mtu();
  a.dest_qp_num = remote.qp_num;
  a.rq_psn = remote.psn;
  a.max_dest_rd_atomic = options_.max_rd_atomic;
  a.min_rnr_timer = 12;  // 0.64 ms before a receiver-not-ready retry
  a.ah_attr.is_global = 1;
  std::memcpy(a.ah_attr.grh.dgid.raw, remote.gid.data(), 16);
  a.ah_attr.grh.sgid_index = static_cast<uint8_t>(ctx_->gid_index());
  a.ah_attr.grh.hop_limit = 64;
  a.ah_attr.dlid = remote.lid;
  a.ah_attr.sl = 0;
  a.ah_attr.src_path_bits = 0;
  a.ah_attr.port_num = ctx_->port();
  if (int rc = ibv_modify_qp(qp_, &a,
                             IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                 IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
      rc != 0) {
    return Status::internal("queue pair INIT->RTR (to qpn " + std::to_string(remote.qp_num) + "): " + errno_text(rc));
  }
  ibv_qp_attr s{};
  s.qp_state = IBV_QPS_RTS;
  s.timeout = options_.timeout;
  s.retry_cnt = options_.retry_count;
  s.rnr_retry = 7;
  s.sq_psn = psn_;
  s.max_rd_atomic = options_.max_rd_atomic;
  if (int rc = ibv_modify_qp(qp_, &s,
                             IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                 IBV_QP_MAX_QP_RD_ATOMIC);
      rc != 0) {
    return Status::internal("queue pair RTR->RTS: " + errno_text(rc));
  }
  connected_ = true;
  return ok_status();
}

}  // namespace nrx::transport::verbs
