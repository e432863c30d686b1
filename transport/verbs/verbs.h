// nrx::transport::verbs: thin RAII wrappers over libibverbs, the raw mechanism under the rdma log
// backend (DESIGN.md 3.4, "rdma"). What the backend needs and nothing more: a device opened by name
// with its port checked and its GID index discovered from the port's GID table (RoCE v2 with an
// IPv4 address first, never a hard-coded index), a protection domain, registered memory, a
// completion queue, and reliable-connected (RC) queue pairs driven through INIT -> RTR -> RTS to a
// peer described by an Endpoint (QP number, PSN, GID, LID, and one memory region's address and
// rkey: what the control plane carries between machines).
//
// Data path (verbs_datapath.cc): RDMA WRITE (inline when it fits), RDMA READ, FETCH_AND_ADD and
// COMPARE_AND_SWAP, each one posted work request; unsignalled posts are signalled every N (so the
// send queue never overflows without a completion per post), and the blocking helpers wait for
// their own completion with a deadline (a peer that died shows up as a completion error or a
// timeout, never a hang). Completions are checked: a status other than IBV_WC_SUCCESS is an error
// naming it (ibv_wc_status_str), e.g. "retry exceeded" when the peer is gone.
//
// Errors are clear for what goes wrong on a real set-up: no RDMA device at all (soft-RoCE not
// loaded), an unknown device name (the error lists the ones there are), a port that is not ACTIVE,
// no usable GID, a failed state transition (which one, and errno's text).
//
// Invariants: every object owns exactly one verbs resource and releases it on destruction, in the
// order verbs requires (a QueuePair before its CompletionQueue, MemoryRegions and QueuePairs before
// the Context that holds their protection domain: the caller keeps the Context alive longer).
//
// Thread safety: a Context's const accessors are safe from any thread; a QueuePair and its
// CompletionQueue belong to one thread at a time (the caller serialises posts and polls).
//
//   auto ctx = verbs::Context::open({.device = "rxe0"}).value();       // port 1, GID discovered
//   auto cq = verbs::CompletionQueue::create(*ctx, 64).value();
//   auto qp = verbs::QueuePair::create(*ctx, *cq, {}).value();
//   auto mr = verbs::MemoryRegion::register_memory(*ctx, buf, 4096).value();
//   send(qp->local(*mr).to_string()); NRX_RETURN_IF_ERROR(qp->connect(Endpoint::parse(recv()).value()));
//   uint64_t before = qp->fetch_add(*mr, scratch, remote.addr, remote.rkey, 1, deadline).value();
#pragma once

#include <infiniband/verbs.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace nrx::transport::verbs {

using Clock = std::chrono::steady_clock;

// How a peer reaches one of our queue pairs and one of our memory regions. Text form (one line,
// what the control plane and `nrx rdma ping` exchange):
//   "qpn=<dec> psn=<dec> lid=<dec> gid=<32 hex> addr=<hex> rkey=<hex> len=<dec>"
struct Endpoint {
  uint32_t qp_num = 0;
  uint32_t psn = 0;  // 24 bits
  uint16_t lid = 0;  // 0 on RoCE
  std::array<uint8_t, 16> gid{};
  uint64_t addr = 0;  // the memory region's first byte, in the owner's address space
  uint32_t rkey = 0;
  uint64_t length = 0;

  std::string to_string() const;
  // Errors: kInvalidArgument (a missing or malformed field, a PSN above 24 bits).
  static Result<Endpoint> parse(std::string_view text);
};

struct ContextOptions {
  std::string device;  // e.g. "rxe0"; empty: the only device (an error when there are several)
  uint8_t port = 1;
  int gid_index = -1;  // -1: discovered (RoCE v2 with an IPv4-mapped GID, then any non-zero GID)
};

// The names of the RDMA devices of this machine (empty when there are none). Errors: kInternal
// (ibv_get_device_list failed for a reason other than "no devices").
Result<std::vector<std::string>> device_names();

// An opened device, its checked port, its GID and a protection domain.
class Context {
 public:
  // Errors: kUnavailable (no RDMA device: says how to add a soft-RoCE one), kNotFound (no device
  // of that name; lists the others), kInvalidArgument (several devices and none named, a port or
  // GID index out of range), kFailedPrecondition (the port is not ACTIVE; no usable GID),
  // kInternal (a verbs call failed: its errno text).
  static Result<std::unique_ptr<Context>> open(const ContextOptions& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  ibv_context* raw() const { return ctx_; }
  ibv_pd* pd() const { return pd_; }
  const std::string& name() const { return name_; }
  uint8_t port() const { return port_; }
  int gid_index() const { return gid_index_; }
  const ibv_gid& gid() const { return gid_; }
  uint16_t lid() const { return lid_; }
  ibv_mtu mtu() const { return mtu_; }
  bool roce_v2() const { return roce_v2_; }
  // Device limits the backend cares about.
  uint32_t max_inline_hint() const { return 64; }
  bool atomics() const { return atomics_; }  // FETCH_AND_ADD / COMPARE_AND_SWAP between QPs
  // "rxe0 port 1 ACTIVE, MTU 1024, RoCE v2 GID 1 ::ffff:10.77.0.2, atomics yes".
  std::string describe() const;

 private:
  Context() = default;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  std::string name_;
  uint8_t port_ = 1;
  int gid_index_ = 0;
  ibv_gid gid_{};
  uint16_t lid_ = 0;
  ibv_mtu mtu_ = IBV_MTU_1024;
  bool roce_v2_ = false;
  bool atomics_ = false;
};

// Registered memory: local and remote access (write, read, atomics) unless |access| says otherwise.
class MemoryRegion {
 public:
  static constexpr int kAllAccess =
      IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
  // |bytes| must outlive the region. Errors: kInvalidArgument (empty), kInternal (ibv_reg_mr).
  static Result<std::unique_ptr<MemoryRegion>> register_memory(const Context& ctx, std::span<std::byte> bytes,
                                                               int access = kAllAccess);
  ~MemoryRegion();
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  uint32_t lkey() const { return mr_->lkey; }
  uint32_t rkey() const { return mr_->rkey; }
  uint64_t addr() const { return reinterpret_cast<uintptr_t>(data_); }
  bool contains(const void* p, size_t n) const;

 private:
  MemoryRegion() = default;
  ibv_mr* mr_ = nullptr;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

class CompletionQueue {
 public:
  // Errors: kInvalidArgument (depth 0), kInternal (ibv_create_cq).
  static Result<std::unique_ptr<CompletionQueue>> create(const Context& ctx, uint32_t depth);
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;
  ibv_cq* raw() const { return cq_; }
  uint32_t depth() const { return depth_; }

  // Polls once: the completions there are (up to out.size()). A completion with an error status
  // is returned like the others (the caller decides); kInternal only when polling itself fails.
  Result<size_t> poll(std::span<ibv_wc> out);

 private:
  CompletionQueue() = default;
  ibv_cq* cq_ = nullptr;
  uint32_t depth_ = 0;
};

struct QueuePairOptions {
  uint32_t send_depth = 256;  // send queue slots
  uint32_t recv_depth = 16;
  uint32_t max_inline = 64;   // bytes a WRITE may carry inline (0: never inline)
  uint32_t signal_every = 32;  // an unsignalled post is signalled every N posts (1..send_depth/2)
  uint8_t max_rd_atomic = 8;   // outstanding READs/atomics, each way
  uint8_t timeout = 14;        // local ACK timeout: 4.096 us * 2^timeout (14: ~67 ms)
  uint8_t retry_count = 7;     // transport retries before "retry exceeded" (a dead peer)
};

// A reliable-connected queue pair on |cq| (sends and receives), connected to one peer.
class QueuePair {
 public:
  // Errors: kInvalidArgument (a depth or signal_every out of range), kInternal (ibv_create_qp,
  // or the transition to INIT).
  static Result<std::unique_ptr<QueuePair>> create(const Context& ctx, CompletionQueue& cq,
                                                   const QueuePairOptions& options);
  ~QueuePair();
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;

  // This queue pair's endpoint, offering |mr| to the peer (null: no memory offered).
  Endpoint local(const MemoryRegion* mr) const;
  // INIT -> RTR -> RTS towards |remote|. Errors: kFailedPrecondition (already connected),
  // kInternal naming the transition that failed ("INIT->RTR: Invalid argument").
  Status connect(const Endpoint& remote);
  bool connected() const { return connected_; }
  uint32_t qp_num() const { return qp_->qp_num; }

  // ---- data path (verbs_datapath.cc) ----
  // Posts an RDMA WRITE of |local| (inside |mr|, or inline and then |mr| may be null) to
  // |remote_addr| under |rkey|. Unsignalled unless it is the signal_every-th post since the last
  // signalled one; a signalled post first reaps the previous signalled completion, so the send
  // queue holds at most 2 x signal_every posts. Errors: kInvalidArgument (local not in mr and too
  // big to inline), kUnavailable (a completion came back with an error: the peer is gone or
  // refused; the QP is then in the error state), kDeadlineExceeded (no completion by |deadline|),
  // kInternal (ibv_post_send).
  Status post_write(const MemoryRegion* mr, std::span<const std::byte> local, uint64_t remote_addr, uint32_t rkey,
                    Clock::time_point deadline);
  // Waits until every post so far has completed (posts a signalled zero-byte WRITE if the last
  // post was unsignalled). Errors: as post_write.
  Status drain(Clock::time_point deadline);
  // One round trip each: posts the operation signalled and waits for it.
  // READ |local|.size() bytes at |remote_addr| into |local| (inside |mr|).
  Status read(const MemoryRegion& mr, std::span<std::byte> local, uint64_t remote_addr, uint32_t rkey,
              Clock::time_point deadline);
  // FETCH_AND_ADD on the 8-byte-aligned word at |remote_addr|; returns its value before the add.
  // |scratch| is 8 bytes inside |mr| that receive the old value.
  Result<uint64_t> fetch_add(const MemoryRegion& mr, uint64_t* scratch, uint64_t remote_addr, uint32_t rkey,
                             uint64_t add, Clock::time_point deadline);
  // COMPARE_AND_SWAP: returns the word's previous value (equal to |expected| when it swapped).
  Result<uint64_t> compare_swap(const MemoryRegion& mr, uint64_t* scratch, uint64_t remote_addr, uint32_t rkey,
                                uint64_t expected, uint64_t desired, Clock::time_point deadline);

  // Work requests posted, and completions this object waited for (round trips), since creation.
  uint64_t posts() const { return posts_; }
  uint64_t waits() const { return waits_; }

 private:
  QueuePair() = default;
  Status post(ibv_send_wr& wr);
  // One signalled atomic (FETCH_AND_ADD or COMPARE_AND_SWAP), waited for; the word's old value.
  Result<uint64_t> atomic(ibv_wr_opcode opcode, const MemoryRegion& mr, uint64_t* scratch, uint64_t remote_addr,
                          uint32_t rkey, uint64_t compare_add, uint64_t swap, Clock::time_point deadline);
  // Waits for the completion of the signalled work request |wr_id|, skipping older signalled ones.
  Status wait_for(uint64_t wr_id, Clock::time_point deadline);

  ibv_qp* qp_ = nullptr;
  CompletionQueue* cq_ = nullptr;
  const Context* ctx_ = nullptr;
  QueuePairOptions options_;
  bool connected_ = false;
  uint32_t psn_ = 0;
  uint64_t next_wr_id_ = 1;
  uint64_t last_signalled_ = 0;   // wr_id of the newest signalled post (0: none)
  uint64_t reaped_ = 0;           // every signalled wr_id up to this one has completed
  uint32_t since_signal_ = 0;     // unsignalled posts since the last signalled one
  uint64_t posts_ = 0;
  uint64_t waits_ = 0;
};

}  // namespace nrx::transport::verbs
