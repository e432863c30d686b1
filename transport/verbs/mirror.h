// nrx::transport::verbs::Mirror: a small registered region that |machines| machines each hold a
// full copy of, kept alike by pushing: a machine stores into its own copy, then publish() sends
// those bytes with RDMA WRITEs into the same offsets of every peer's copy, over one RC queue pair
// per peer. Reads are local (the peers' pushes land in our copy). fence() waits until every
// WRITE posted so far has completed, i.e. been placed at its responder (RC completion semantics):
// the store -> load barrier of a protocol whose machines share no memory. Made for the CNR scan
// order's bakery across machines (kernel/nr/scan_order.h, BakeryMedium: written -> publish,
// store_load_fence -> fence, to_read -> nothing), the way logs/rdma mirrors the log.
//
// Guarantees (what the bakery's medium contract asks for):
//   - Single writer: the caller publishes only bytes no peer writes (its own block); Mirror does
//     not check this.
//   - Snapshot and per-peer order: publish() sends the bytes as they are during the call, in
//     inline WRITEs of at most kChunkBytes (the device copies inline data at post time), cut at
//     kChunkBytes-aligned offsets so no aligned word spans two WRITEs. So a later store to the
//     same bytes never overtakes an earlier publish, and one thread's publishes reach each peer
//     in call order (one RC queue pair per peer). Publishes racing in different threads have no
//     order between them. (This relies, as logs/rdma does, on a responder placing one queue
//     pair's WRITEs in order and each aligned 8-byte word whole: what rxe and common HCAs do; the
//     IB spec itself promises only completion order.) The cost is one post per 64 bytes:
//     meant for words and small records, not bulk data.
//   - Failures are not the caller's: a peer whose post or completion fails, or whose completion
//     does not come within |timeout| (it died, or its queue pair broke), is marked broken and
//     skipped from then on; publish() and fence() still succeed. broken() lists them; fencing a
//     dead machine is the cluster's job. Under rxe a vanished peer shows up as the timeout (the
//     requester gets no "retry exceeded" within 30 s), so the first fence() after a peer died
//     blocks for |timeout|: pick it below the bakery's remote lease.
//   - Before connect() nothing is pushed: publish() and fence() return at once, so each machine
//     can format its own copy locally first.
//
// Set-up is two-phase, as RdmaLog's: create() maps the region and makes one queue pair per peer,
// endpoint(peer) is what to send to that peer over any channel, connect() takes what each peer
// sent. Thread safety: publish(), fence(), broken() and endpoint() from any thread (one mutex per
// peer; never two held at once); connect() once, before the others are used concurrently.
//
//   auto m = Mirror::create({.machine = me, .machines = 2, .bytes = 65536, .device = {.device = "rxe0"}}).value();
//   send_to_peer(m->endpoint(peer).to_string());
//   NRX_RETURN_IF_ERROR(m->connect(endpoints_from_peers));   // [j]: what j's endpoint(me) said
//   std::atomic_ref<uint64_t>(word).store(v, std::memory_order_release);
//   NRX_RETURN_IF_ERROR(m->publish(offset_of_word, 8));      // posted, not waited for
//   NRX_RETURN_IF_ERROR(m->fence());                         // placed at every live peer
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/status.h"
#include "transport/verbs/verbs.h"

namespace nrx::transport::verbs {

struct MirrorOptions {
  uint32_t machine = 0;   // this machine: 0..machines-1
  uint32_t machines = 1;  // machines holding a copy (1..Mirror::kMaxMachines)
  size_t bytes = 0;       // the region's size (the same on every machine)
  ContextOptions device{};
  std::chrono::nanoseconds timeout = std::chrono::seconds(10);  // a WRITE without completion
};

class Mirror {
 public:
  static constexpr uint32_t kMaxMachines = 16;
  // Largest WRITE publish() posts: the queue pair's inline limit (see "Snapshot" above).
  static constexpr size_t kChunkBytes = 64;

  // An mmap'ed, zeroed region of |bytes| (page aligned), registered with remote write access, and
  // one completion queue + RC queue pair per peer (none for this machine). Errors:
  // kInvalidArgument (bytes 0, machine >= machines, machines 0 or above kMaxMachines),
  // kResourceExhausted (mmap), verbs' errors (no device, port not ACTIVE, ...).
  static Result<std::unique_ptr<Mirror>> create(const MirrorOptions& options);
  ~Mirror();
  Mirror(const Mirror&) = delete;
  Mirror& operator=(const Mirror&) = delete;

  // The local copy (page aligned). Peers' pushes land here: read it with atomic loads.
  std::span<std::byte> bytes() const { return {region_, options_.bytes}; }
  const MirrorOptions& options() const { return options_; }
  const Context& context() const { return *ctx_; }

  // What to send to |peer|: our queue pair for it and this region's addr, rkey and length. An
  // empty Endpoint for this machine itself or a peer out of range.
  Endpoint endpoint(uint32_t peer) const;
  // Connects to every peer; |from_peers[j]| is what machine j's endpoint(this machine) said (the
  // entry for this machine is ignored; with machines == 1 it may be empty). Errors:
  // kInvalidArgument (not one entry per machine, a peer's region length differs from ours),
  // kFailedPrecondition (connected already), verbs' transition errors (the Mirror is then
  // unusable: recreate it).
  Status connect(std::span<const Endpoint> from_peers);
  bool connected() const { return connected_.load(std::memory_order_acquire); }

  // Posts RDMA WRITEs of [offset, offset + n) of the local copy to the same offsets in every
  // connected, unbroken peer's copy; does not wait for them (it may wait for an old completion
  // when the send queue needs room). Before connect(): nothing. Errors: kInvalidArgument (the
  // range is not inside the region). A peer that fails is marked broken, never an error.
  Status publish(size_t offset, size_t n);
  // Waits until every WRITE posted so far has completed at every unbroken peer (each at most
  // |timeout|). A peer failing here is marked broken. Always ok today (a Status for the future).
  Status fence();
  // The peers marked broken, in increasing order.
  std::vector<uint32_t> broken() const;
  // Why |peer| was marked broken (the failed post's or completion's error); ok while it is not.
  // Errors: kInvalidArgument (this machine, or a peer out of range).
  Status link_status(uint32_t peer) const;

 private:
  struct Link;  // one peer: completion queue, queue pair, its region, mutex, broken flag
  explicit Mirror(const MirrorOptions& options);

  MirrorOptions options_;
  std::unique_ptr<Context> ctx_;
  std::byte* region_ = nullptr;  // mmap'ed, registered
  size_t mapped_ = 0;            // bytes rounded up to the page size
  std::unique_ptr<MemoryRegion> mr_;
  std::vector<std::unique_ptr<Link>> links_;  // [machine]; null for this machine
  std::atomic<bool> connected_{false};
};

}  // namespace nrx::transport::verbs
