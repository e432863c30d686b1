// Mirror (mirror.h): set-up (region, queue pairs, connect) and its small data path (publish, fence).
#include "transport/verbs/mirror.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>

#include "base/mutex.h"
#include "base/thread_annotations.h"

namespace nrx::transport::verbs {

struct Mirror::Link {
  std::unique_ptr<CompletionQueue> cq;  // declared first: destroyed after its queue pair
  std::unique_ptr<QueuePair> qp;        // posted and polled under |mu| only
  mutable Mutex mu;
  Endpoint remote NRX_GUARDED_BY(mu);  // the peer's copy
  bool broken NRX_GUARDED_BY(mu) = false;
  Status why NRX_GUARDED_BY(mu);  // what broke it

  void mark_broken(Status s) NRX_REQUIRES(mu) {
    broken = true;
    why = std::move(s);
  }
};

Mirror::Mirror(const MirrorOptions& options) : options_(options) {}

Mirror::~Mirror() {
  links_.clear();  // queue pairs before the region's registration, the region before the context
  mr_.reset();
  if (region_ != nullptr) munmap(region_, mapped_);
}

Result<std::unique_ptr<Mirror>> Mirror::create(const MirrorOptions& options) {
  if (options.machines == 0 || options.machines > kMaxMachines || options.machine >= options.machines) {
    return Status::invalid_argument("machine " + std::to_string(options.machine) + " of " +
                                    std::to_string(options.machines) + " (1.." + std::to_string(kMaxMachines) +
                                    " machines)");
  }
  if (options.bytes == 0) return Status::invalid_argument("a mirror needs at least one byte");
  std::unique_ptr<Mirror> m(new Mirror(options));
  NRX_ASSIGN_OR_RETURN(m->ctx_, Context::open(options.device));
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  m->mapped_ = (options.bytes + page - 1) / page * page;
  void* p = mmap(nullptr, m->mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Status::resource_exhausted("cannot map " + std::to_string(m->mapped_) + " bytes");
  m->region_ = static_cast<std::byte*>(p);
  NRX_ASSIGN_OR_RETURN(m->mr_, MemoryRegion::register_memory(*m->ctx_, m->bytes(),
                                                             IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE));
  QueuePairOptions qo;
  qo.max_inline = kChunkBytes;  // every publish is inline: a snapshot taken at post time
  m->links_.resize(options.machines);
  for (uint32_t j = 0; j < options.machines; ++j) {
    if (j == options.machine) continue;
    auto link = std::make_unique<Link>();
    NRX_ASSIGN_OR_RETURN(link->cq, CompletionQueue::create(*m->ctx_, qo.send_depth));
    NRX_ASSIGN_OR_RETURN(link->qp, QueuePair::create(*m->ctx_, *link->cq, qo));
    m->links_[j] = std::move(link);
  }
  return m;
}

Endpoint Mirror::endpoint(uint32_t peer) const {
  if (peer >= links_.size() || links_[peer] == nullptr) return {};
  return links_[peer]->qp->local(mr_.get());
}

Status Mirror::connect(std::span<const Endpoint> from_peers) {
  if (connected()) return Status::failed_precondition("the mirror is connected already");
  if (from_peers.size() != options_.machines && !(options_.machines == 1 && from_peers.empty())) {
    return Status::invalid_argument("connect needs one endpoint per machine (" + std::to_string(options_.machines) +
                                    "), not " + std::to_string(from_peers.size()));
  }
  for (uint32_t j = 0; j < options_.machines; ++j) {
    if (j == options_.machine) continue;
    if (from_peers[j].length != options_.bytes) {
      return Status::invalid_argument("machine " + std::to_string(j) + "'s mirror has " +
                                      std::to_string(from_peers[j].length) + " bytes, ours " +
                                      std::to_string(options_.bytes));
    }
  }
  for (uint32_t j = 0; j < options_.machines; ++j) {
    if (j == options_.machine) continue;
    Link& l = *links_[j];
    MutexLock lock(l.mu);
    NRX_RETURN_IF_ERROR(l.qp->connect(from_peers[j]));
    l.remote = from_peers[j];
  }
  // release: publishers that see it see every link's remote region.
  connected_.store(true, std::memory_order_release);
  return ok_status();
}

Status Mirror::publish(size_t offset, size_t n) {
  if (offset > options_.bytes || n > options_.bytes - offset) {
    return Status::invalid_argument("publish of [" + std::to_string(offset) + ", +" + std::to_string(n) +
                                    ") outside the mirror's " + std::to_string(options_.bytes) + " bytes");
  }
  if (n == 0 || !connected()) return ok_status();
  for (const auto& link : links_) {
    if (link == nullptr) continue;
    Link& l = *link;
    MutexLock lock(l.mu);
    if (l.broken) continue;
    const auto deadline = Clock::now() + options_.timeout;
    for (size_t at = offset, end = offset + n; at < end;) {
      // Cut at kChunkBytes-aligned offsets: an aligned word never spans two WRITEs.
      const size_t len = std::min(end, (at / kChunkBytes + 1) * kChunkBytes) - at;
      if (Status s = l.qp->post_write(mr_.get(), std::span<const std::byte>(region_ + at, len), l.remote.addr + at,
                                      l.remote.rkey, deadline);
          !s.ok()) {
        l.mark_broken(std::move(s));  // the peer is gone (or its queue pair broke): skipped from now on
        break;
      }
      at += len;
    }
  }
  return ok_status();
}

Status Mirror::fence() {
  if (!connected()) return ok_status();
  for (const auto& link : links_) {
    if (link == nullptr) continue;
    Link& l = *link;
    MutexLock lock(l.mu);
    if (l.broken) continue;
    if (Status s = l.qp->drain(Clock::now() + options_.timeout); !s.ok()) l.mark_broken(std::move(s));
  }
  return ok_status();
}

std::vector<uint32_t> Mirror::broken() const {
  std::vector<uint32_t> out;
  for (uint32_t j = 0; j < links_.size(); ++j) {
    if (links_[j] == nullptr) continue;
    MutexLock lock(links_[j]->mu);
    if (links_[j]->broken) out.push_back(j);
  }
  return out;
}

Status Mirror::link_status(uint32_t peer) const {
  if (peer >= links_.size() || links_[peer] == nullptr) {
    return Status::invalid_argument("machine " + std::to_string(peer) + " is not a peer of this mirror");
  }
  MutexLock lock(links_[peer]->mu);
  return links_[peer]->why;
}

}  // namespace nrx::transport::verbs
