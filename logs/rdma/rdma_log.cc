#include "logs/rdma/rdma_log.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include "base/spin.h"

namespace nrx::logs {

namespace verbs = transport::verbs;

namespace {

// The sequencer's control words (every region has them; only machine 0's are used).
constexpr size_t kTailOff = 0, kNextReplicaOff = 8, kActiveOff = 16;
constexpr size_t kLeftOff = 24;  // a bit per machine that has closed its object (see ~RdmaLog)
constexpr size_t kTableOff = 64;  // replica r: ltail at kTableOff + 24 r, started at + 8, owner at + 16
// A slot: meta word (writer << 32 | length), the bytes, and LAST its alive word (lap + 1; 0: never
// written) in the slot's final 8 bytes. One RDMA WRITE carries a whole batch of slots into a
// mirror; the responder places a message's bytes in address order, so each slot's alive word
// lands after its body. A hole the sequencer filled for a fenced appender has kNoop in its alive
// word: exec skips it.
constexpr size_t kSlotHeader = 8;
constexpr uint64_t kNoop = uint64_t{1} << 63;
// A payload slot's header: holders mask, released mask, generation, length; the bytes at 64.
constexpr size_t kHoldersOff = 0, kReleasedOff = 8, kGenOff = 16, kLenOff = 24, kPayloadHeader = 64;
constexpr uint32_t kMaxMachines = 16;

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }
size_t table_bytes(uint32_t max_replicas) { return kTableOff + 24 * size_t{max_replicas}; }
size_t ltail_off(ReplicaId r) { return kTableOff + 24 * size_t{r}; }
size_t started_off(ReplicaId r) { return kTableOff + 24 * size_t{r} + 8; }
size_t owner_off(ReplicaId r) { return kTableOff + 24 * size_t{r} + 16; }  // machine + 1 (0: none)

uint64_t load(const std::byte* p) {
  // acquire: pairs with the writer's release store (a CPU's) or the RDMA WRITE that placed it
  // after the bytes it guards (the queue pair's order).
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(const_cast<std::byte*>(p)))
      .load(std::memory_order_acquire);
}
void store(std::byte* p, uint64_t v) {
  // release: what was written before is visible to whoever sees |v|.
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(p)).store(v, std::memory_order_release);
}

Status validate(const LogOptions& o, const RdmaOptions& r) {
  if (o.entry_size == 0 || o.entry_size > 4096) return Status::invalid_argument("entry_size must be 1..4096");
  if (o.slot_count < 2 || !std::has_single_bit(o.slot_count)) {
    return Status::invalid_argument("slot_count must be a power of two >= 2");
  }
  if (o.max_replicas == 0 || o.max_replicas > kMaxReplicasLimit) {
    return Status::invalid_argument("max_replicas must be 1.." + std::to_string(kMaxReplicasLimit));
  }
  if (o.payload_slots == 0) return Status::invalid_argument("payload_slots must be >= 1");
  if (r.machines == 0 || r.machines > kMaxMachines || r.machine >= r.machines) {
    return Status::invalid_argument("machine " + std::to_string(r.machine) + " of " + std::to_string(r.machines) +
                                    " (1.." + std::to_string(kMaxMachines) + " machines)");
  }
  if (r.payload_bytes == 0 || r.payload_bytes > (uint64_t{1} << 24)) {
    return Status::invalid_argument("payload_bytes must be 1..16 MiB");
  }
  return ok_status();
}

}  // namespace

struct RdmaLog::Link {
  std::unique_ptr<verbs::CompletionQueue> cq;
  std::unique_ptr<verbs::QueuePair> qp;
  // The loopback link (this machine to itself) is a connected pair; we post on |qp|.
  std::unique_ptr<verbs::CompletionQueue> partner_cq;
  std::unique_ptr<verbs::QueuePair> partner;
  Mutex mu;
  size_t scratch = 0;  // region offset: an atomic's result word, then a READ buffer at +64
};

struct RdmaLog::Table {
  uint64_t tail = 0;
  uint64_t active = 0;
  std::vector<uint64_t> ltail, started, owner;
  LogIndex head() const {
    LogIndex h = UINT64_MAX;
    for (uint64_t m = active; m != 0; m &= m - 1) h = std::min(h, ltail[std::countr_zero(m)]);
    return h == UINT64_MAX ? tail : h;
  }
  LogIndex ctail() const {
    LogIndex c = 0;
    for (uint64_t m = active; m != 0; m &= m - 1) c = std::max(c, started[std::countr_zero(m)]);
    return c;
  }
};

RdmaLog::RdmaLog(const LogOptions& options, const RdmaOptions& rdma)
    : options_(options), rdma_(rdma), owned_(options.max_replicas), local_ltail_(options.max_replicas) {}

RdmaLog::~RdmaLog() {
  // Machine 0 holds the tail and the table that every other machine's execs read: it goes last.
  // The others say they left (one FETCH_AND_ADD of their bit; nothing of theirs touches the log
  // afterwards), and machine 0 waits for every machine it has not cut off, at most rdma_timeout.
  if (connected_ && rdma_.machines > 1) {
    if (rdma_.machine != 0) {
      (void)seq_fetch_add(kLeftOff, uint64_t{1} << rdma_.machine);
    } else {
      const uint64_t all = (uint64_t{1} << rdma_.machines) - 1;
      SpinWait wait(rdma_.rdma_timeout);
      while (((load(region_ + kLeftOff) | cut_off_.load(std::memory_order_acquire) | 1) & all) != all &&
             !wait.expired()) {
        wait.pause();
      }
    }
  }
  links_.clear();  // queue pairs before the region's registration, the region before the context
  mr_.reset();
  if (region_ != nullptr) munmap(region_, region_bytes_);
}

Result<std::unique_ptr<RdmaLog>> RdmaLog::create(const LogOptions& options, const RdmaOptions& rdma) {
  NRX_RETURN_IF_ERROR(validate(options, rdma));
  std::unique_ptr<RdmaLog> log(new RdmaLog(options, rdma));
  NRX_ASSIGN_OR_RETURN(log->ctx_, verbs::Context::open(rdma.device));
  if (!log->ctx_->atomics()) return Status::failed_precondition(log->ctx_->name() + " has no RDMA atomics");

  // The region: control words and replica table, one scratch area per link, the slots, the
  // payload arena, and the cache for other machines' payloads.
  const size_t scratch_stride = round_up(64 + table_bytes(options.max_replicas), 64);
  const size_t scratch_off = round_up(table_bytes(options.max_replicas), 64);
  log->slots_off_ = round_up(scratch_off + scratch_stride * rdma.machines, 4096);
  log->slot_stride_ = round_up(kSlotHeader + options.entry_size + 8, 64);
  log->payload_off_ = round_up(log->slots_off_ + log->slot_stride_ * options.slot_count, 64);
  log->payload_stride_ = kPayloadHeader + round_up(rdma.payload_bytes, 64);
  log->cache_off_ = log->payload_off_ + log->payload_stride_ * options.payload_slots;
  log->hole_off_ = log->cache_off_ + log->payload_stride_ * options.payload_slots * rdma.machines;
  log->region_bytes_ = round_up(log->hole_off_ + log->slot_stride_ * rdma.machines, 4096);
  void* p = mmap(nullptr, log->region_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Status::resource_exhausted("cannot map " + std::to_string(log->region_bytes_) + " bytes");
  log->region_ = static_cast<std::byte*>(p);
  NRX_ASSIGN_OR_RETURN(log->mr_, verbs::MemoryRegion::register_memory(
                                     *log->ctx_, std::span<std::byte>(log->region_, log->region_bytes_)));

  verbs::QueuePairOptions qo;
  qo.send_depth = 1024;
  qo.signal_every = 64;
  for (uint32_t m = 0; m < rdma.machines; ++m) {
    auto link = std::make_unique<Link>();
    link->scratch = scratch_off + scratch_stride * m;
    NRX_ASSIGN_OR_RETURN(link->cq, verbs::CompletionQueue::create(*log->ctx_, 2048));
    NRX_ASSIGN_OR_RETURN(link->qp, verbs::QueuePair::create(*log->ctx_, *link->cq, qo));
    if (m == rdma.machine) {
      NRX_ASSIGN_OR_RETURN(link->partner_cq, verbs::CompletionQueue::create(*log->ctx_, 16));
      NRX_ASSIGN_OR_RETURN(link->partner, verbs::QueuePair::create(*log->ctx_, *link->partner_cq, qo));
    }
    log->links_.push_back(std::move(link));
  }
  log->peers_.resize(rdma.machines);
  if (rdma.machines == 1) NRX_RETURN_IF_ERROR(log->connect({}));
  return log;
}

verbs::Endpoint RdmaLog::endpoint(uint32_t peer) const {
  if (peer >= links_.size()) return {};
  return links_[peer]->qp->local(mr_.get());
}

Status RdmaLog::connect(std::span<const verbs::Endpoint> from_peers) {
  const uint32_t self = rdma_.machine;
  if (rdma_.machines > 1 && from_peers.size() != rdma_.machines) {
    return Status::invalid_argument("connect wants one endpoint per machine (" + std::to_string(rdma_.machines) +
                                    "), got " + std::to_string(from_peers.size()));
  }
  for (uint32_t m = 0; m < rdma_.machines; ++m) {
    Link& l = *links_[m];
    if (m == self) {
      // Loopback: our qp and its partner, each the other's peer; the region is ours.
      NRX_RETURN_IF_ERROR(l.qp->connect(l.partner->local(mr_.get())));
      NRX_RETURN_IF_ERROR(l.partner->connect(l.qp->local(mr_.get())));
      peers_[m] = l.qp->local(mr_.get());
      continue;
    }
    const verbs::Endpoint& e = from_peers[m];
    if (e.length != region_bytes_) {
      return Status::invalid_argument("machine " + std::to_string(m) + "'s log region has " + std::to_string(e.length) +
                                      " bytes, ours " + std::to_string(region_bytes_) +
                                      ": the machines disagree on the log's geometry");
    }
    NRX_RETURN_IF_ERROR(l.qp->connect(e));
    peers_[m] = e;
  }
  connected_ = true;
  return ok_status();
}

// ---- sequencer words --------------------------------------------------------------------------

Result<uint64_t> RdmaLog::seq_fetch_add(size_t offset, uint64_t add) const {
  Link& l = *links_[0];
  MutexLock lock(l.mu);
  n_fetch_adds_.fetch_add(1, std::memory_order_relaxed);
  auto* scratch = reinterpret_cast<uint64_t*>(region_ + l.scratch);
  return l.qp->fetch_add(*mr_, scratch, peers_[0].addr + offset, peers_[0].rkey, add,
                         verbs::Clock::now() + rdma_.rdma_timeout);
}

Result<uint64_t> RdmaLog::seq_compare_swap(size_t offset, uint64_t expected, uint64_t desired) const {
  Link& l = *links_[0];
  MutexLock lock(l.mu);
  auto* scratch = reinterpret_cast<uint64_t*>(region_ + l.scratch);
  return l.qp->compare_swap(*mr_, scratch, peers_[0].addr + offset, peers_[0].rkey, expected, desired,
                            verbs::Clock::now() + rdma_.rdma_timeout);
}

Result<uint64_t> RdmaLog::seq_read_word(size_t offset) const {
  if (rdma_.machine == 0) return load(region_ + offset);
  Link& l = *links_[0];
  MutexLock lock(l.mu);
  n_reads_.fetch_add(1, std::memory_order_relaxed);
  std::span<std::byte> buf(region_ + l.scratch + 64, 8);
  NRX_RETURN_IF_ERROR(
      l.qp->read(*mr_, buf, peers_[0].addr + offset, peers_[0].rkey, verbs::Clock::now() + rdma_.rdma_timeout));
  return load(buf.data());
}

Status RdmaLog::seq_write_word(size_t offset, uint64_t value, bool wait) const {
  if (rdma_.machine == 0) {
    store(region_ + offset, value);
    return ok_status();
  }
  Link& l = *links_[0];
  MutexLock lock(l.mu);
  n_writes_.fetch_add(1, std::memory_order_relaxed);
  const auto deadline = verbs::Clock::now() + rdma_.rdma_timeout;
  NRX_RETURN_IF_ERROR(l.qp->post_write(nullptr, std::as_bytes(std::span(&value, 1)), peers_[0].addr + offset,
                                       peers_[0].rkey, deadline));
  return wait ? l.qp->drain(deadline) : ok_status();
}

uint64_t RdmaLog::active_replicas() const {
  Result<uint64_t> w = seq_read_word(kActiveOff);
  return w.ok() ? *w : 0;
}

Result<RdmaLog::Table> RdmaLog::read_table() const {
  const size_t n = table_bytes(options_.max_replicas);
  Table t;
  t.ltail.resize(options_.max_replicas);
  t.started.resize(options_.max_replicas);
  t.owner.resize(options_.max_replicas);
  auto fill = [&](const std::byte* b) {
    t.tail = load(b + kTailOff);
    t.active = load(b + kActiveOff);
    for (ReplicaId r = 0; r < options_.max_replicas; ++r) {
      t.ltail[r] = load(b + ltail_off(r));
      t.started[r] = load(b + started_off(r));
      t.owner[r] = load(b + owner_off(r));
    }
  };
  if (rdma_.machine == 0) {
    fill(region_);
    return t;
  }
  Link& l = *links_[0];
  MutexLock lock(l.mu);
  n_reads_.fetch_add(1, std::memory_order_relaxed);
  std::span<std::byte> buf(region_ + l.scratch + 64, n);
  NRX_RETURN_IF_ERROR(l.qp->read(*mr_, buf, peers_[0].addr, peers_[0].rkey, verbs::Clock::now() + rdma_.rdma_timeout));
  fill(buf.data());
  return t;
}

// ---- replicas ---------------------------------------------------------------------------------

Status RdmaLog::check_owned(ReplicaId replica) const {
  if (replica >= options_.max_replicas || !owned_[replica].load(std::memory_order_acquire)) {
    return Status::not_found("replica " + std::to_string(replica) + " is not registered here");
  }
  return ok_status();
}

Result<ReplicaId> RdmaLog::register_replica() {
  uint64_t id = 0;
  if (rdma_.replica_base == RdmaOptions::kDenseIds) {
    NRX_ASSIGN_OR_RETURN(id, seq_fetch_add(kNextReplicaOff, 1));
  } else {
    id = uint64_t{rdma_.replica_base} + registered_here_.fetch_add(1, std::memory_order_relaxed);
  }
  if (id >= options_.max_replicas) {
    return Status::resource_exhausted("the log has " + std::to_string(options_.max_replicas) + " replicas already");
  }
  const ReplicaId r = static_cast<ReplicaId>(id);
  NRX_ASSIGN_OR_RETURN(Table t, read_table());
  const LogIndex start = t.head();
  NRX_RETURN_IF_ERROR(seq_write_word(ltail_off(r), start, /*wait=*/true));
  NRX_RETURN_IF_ERROR(seq_write_word(started_off(r), start, /*wait=*/true));
  NRX_RETURN_IF_ERROR(seq_write_word(owner_off(r), uint64_t{rdma_.machine} + 1, /*wait=*/true));
  // The id is ours alone, so adding its bit sets it.
  NRX_RETURN_IF_ERROR(seq_fetch_add(kActiveOff, uint64_t{1} << r).status());
  local_ltail_[r].store(start, std::memory_order_relaxed);
  owned_[r].store(true, std::memory_order_release);
  return r;
}

std::byte* RdmaLog::slot(LogIndex index) const {
  return region_ + slots_off_ + slot_stride_ * (index & (options_.slot_count - 1));
}

bool RdmaLog::cut_off(uint32_t machine) const {
  return (cut_off_.load(std::memory_order_acquire) >> machine & 1) != 0;
}

Status RdmaLog::lost_link(uint32_t machine, const Status& why) {
  // The sequencer's link carries every reservation: without it this log cannot go on.
  if (machine == 0) return why;
  unreachable_.fetch_or(uint32_t{1} << machine, std::memory_order_acq_rel);
  cut_off_.fetch_or(uint32_t{1} << machine, std::memory_order_acq_rel);
  return ok_status();
}

std::byte* RdmaLog::alive(std::byte* slot) const { return slot + slot_stride_ - 8; }
const std::byte* RdmaLog::alive(const std::byte* slot) const { return slot + slot_stride_ - 8; }

Status RdmaLog::write_slots(uint32_t machine, LogIndex first, uint64_t n) {
  if (cut_off(machine)) return ok_status();
  Link& l = *links_[machine];
  MutexLock lock(l.mu);
  const auto deadline = verbs::Clock::now() + rdma_.rdma_timeout;
  // From our own mirror's copy of the slots (registered memory; not reused before every replica,
  // the receiver's too, has applied them): one WRITE, two where the batch wraps around the ring.
  Status st;
  for (uint64_t done = 0; done < n && st.ok();) {
    const uint64_t at = (first + done) & (options_.slot_count - 1);
    const uint64_t run = std::min<uint64_t>(n - done, options_.slot_count - at);
    const size_t off = slots_off_ + slot_stride_ * at;
    n_writes_.fetch_add(1, std::memory_order_relaxed);
    st = l.qp->post_write(mr_.get(), std::span<const std::byte>(region_ + off, slot_stride_ * run),
                          peers_[machine].addr + off, peers_[machine].rkey, deadline);
    done += run;
  }
  // A broken queue pair: that machine's mirror misses entries from here on, so it must be fenced
  // (unreachable() reports it); the others go on without it.
  return st.ok() ? st : lost_link(machine, st);
}

// An appender's reservation [first, last) while it waits for room, listed for exec_impl.
class RdmaLog::AwaitingRoom {
 public:
  AwaitingRoom(RdmaLog& log, LogIndex first, LogIndex last) : log_(log), first_(first) {
    MutexLock lock(log_.awaiting_mu_);
    log_.awaiting_.emplace_back(first, last);
    log_.awaiting_count_.fetch_add(1, std::memory_order_release);  // release: the range is listed
  }
  ~AwaitingRoom() {
    MutexLock lock(log_.awaiting_mu_);
    for (size_t i = 0; i < log_.awaiting_.size(); ++i) {
      if (log_.awaiting_[i].first == first_) {
        log_.awaiting_.erase(log_.awaiting_.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    log_.awaiting_count_.fetch_sub(1, std::memory_order_release);
  }
  AwaitingRoom(const AwaitingRoom&) = delete;
  AwaitingRoom& operator=(const AwaitingRoom&) = delete;

 private:
  RdmaLog& log_;
  LogIndex first_;
};

bool RdmaLog::awaiting_room(LogIndex index) const {
  MutexLock lock(awaiting_mu_);
  for (const auto& [first, last] : awaiting_) {
    if (index >= first && index < last) return true;
  }
  return false;
}

Result<LogIndex> RdmaLog::append(ReplicaId replica, Batch batch, EntryVisitor apply_own) {
  if (batch.empty()) return Status::invalid_argument("empty batch");
  if (batch.size() > options_.slot_count) return Status::invalid_argument("batch larger than the log");
  for (const auto& e : batch) {
    if (e.empty() || e.size() > options_.entry_size) {
      return Status::invalid_argument("entry of " + std::to_string(e.size()) + " bytes (1.." +
                                      std::to_string(options_.entry_size) + ")");
    }
  }
  NRX_RETURN_IF_ERROR(check_owned(replica));
  const uint64_t n = batch.size();
  NRX_ASSIGN_OR_RETURN(const LogIndex first, seq_fetch_add(kTailOff, n));
  n_appends_.fetch_add(1, std::memory_order_relaxed);

  // Room: every slot we write must have been applied by every replica (index < head + slots).
  if (first + n > cached_head_.load(std::memory_order_relaxed) + options_.slot_count) {
    // While we wait, this object's execs stop before our reservation instead of waiting for it
    // (the hook may exec another replica on this very thread).
    AwaitingRoom awaiting(*this, first, first + n);
    const auto start = std::chrono::steady_clock::now();
    bool may_withdraw = options_.full_timeout.count() > 0;
    SpinWait wait;
    for (;;) {
      NRX_ASSIGN_OR_RETURN(Table t, read_table());
      const LogIndex h = t.head();
      cached_head_.store(h, std::memory_order_relaxed);
      if (first + n <= h + options_.slot_count) break;
      // Apply our own pending entries (below our reservation), then nudge whoever holds the head.
      NRX_RETURN_IF_ERROR(exec_impl(
                              replica,
                              [&apply_own](const Entry& e) {
                                apply_own(e);
                                return true;
                              },
                              first)
                              .status());
      if (options_.on_lagging) {
        ReplicaId lag = replica;
        LogIndex low = UINT64_MAX;
        for (uint64_t m = t.active; m != 0; m &= m - 1) {
          const ReplicaId r = static_cast<ReplicaId>(std::countr_zero(m));
          if (r != replica && t.ltail[r] < low) low = t.ltail[r], lag = r;
        }
        if (lag != replica && low == h) options_.on_lagging(options_.log_id, lag);
      }
      if (may_withdraw && std::chrono::steady_clock::now() - start >= options_.full_timeout) {
        NRX_ASSIGN_OR_RETURN(uint64_t was, seq_compare_swap(kTailOff, first + n, first));
        if (was == first + n) {
          return Status::deadline_exceeded("log " + std::to_string(options_.log_id) + " stayed full for " +
                                           std::to_string(options_.full_timeout.count() / 1000000) + " ms");
        }
        may_withdraw = false;  // others reserved after us: no holes, so wait on and append late
      }
      wait.pause();
    }
  }

  fill_slots(replica, first, batch, /*publish_here=*/true);
  for (uint32_t m = 0; m < rdma_.machines; ++m) {
    if (m != rdma_.machine) NRX_RETURN_IF_ERROR(write_slots(m, first, n));
  }
  return first;
}

void RdmaLog::fill_slots(ReplicaId replica, LogIndex first, Batch batch, bool publish_here) {
  for (uint64_t k = 0; k < batch.size(); ++k) {
    std::byte* s = slot(first + k);
    const uint64_t meta = uint64_t{replica} << 32 | batch[k].size();
    std::memcpy(s, &meta, 8);
    std::memcpy(s + kSlotHeader, batch[k].data(), batch[k].size());
    // release: the body is in place before the alive word, for our readers and for the WRITE
    // that copies the slots (posted after this).
    store(alive(s), publish_here ? (first + k) / options_.slot_count + 1 : 0);
  }
}

Result<LogIndex> RdmaLog::crash_in_append_for_testing(ReplicaId replica, Batch batch, uint32_t mask) {
  NRX_RETURN_IF_ERROR(check_owned(replica));
  NRX_ASSIGN_OR_RETURN(const LogIndex first, seq_fetch_add(kTailOff, batch.size()));
  // The slots as complete entries (the WRITEs copy them from here), then our own copy withdrawn
  // unless |mask| names us: a test hook, with nobody reading this mirror meanwhile.
  fill_slots(replica, first, batch, /*publish_here=*/true);
  for (uint32_t m = 0; m < rdma_.machines; ++m) {
    if (m == rdma_.machine || (mask >> m & 1) == 0) continue;
    NRX_RETURN_IF_ERROR(write_slots(m, first, batch.size()));
    Link& l = *links_[m];
    MutexLock lock(l.mu);
    NRX_RETURN_IF_ERROR(l.qp->drain(verbs::Clock::now() + rdma_.rdma_timeout));  // they did land
  }
  if ((mask >> rdma_.machine & 1) == 0) {
    for (uint64_t k = 0; k < batch.size(); ++k) store(alive(slot(first + k)), 0);
  }
  return first;
}

Result<LogIndex> RdmaLog::exec(ReplicaId replica, EntryVisitor visitor) {
  return exec_impl(
      replica,
      [&visitor](const Entry& e) {
        visitor(e);
        return true;
      },
      UINT64_MAX);
}

Result<LogIndex> RdmaLog::exec_while(ReplicaId replica, StoppingVisitor visitor) {
  return exec_impl(replica, visitor, UINT64_MAX);
}

Result<LogIndex> RdmaLog::exec_impl(ReplicaId replica, StoppingVisitor visitor, LogIndex limit) {
  NRX_RETURN_IF_ERROR(check_owned(replica));
  NRX_ASSIGN_OR_RETURN(LogIndex tail, seq_read_word(kTailOff));
  tail = std::min(tail, limit);
  LogIndex lt = local_ltail_[replica].load(std::memory_order_relaxed);
  if (tail <= lt) return lt;
  // ctail first: nobody may see an effect of these entries before it covers them.
  NRX_RETURN_IF_ERROR(seq_write_word(started_off(replica), tail, /*wait=*/true));
  LogIndex published = lt;
  for (; lt < tail; ++lt) {
    const std::byte* s = slot(lt);
    const uint64_t want = lt / options_.slot_count + 1;
    if ((load(alive(s)) & ~kNoop) != want && published < lt) {
      // Its appender may be waiting for room that only our progress makes: publish it first.
      NRX_RETURN_IF_ERROR(seq_write_word(ltail_off(replica), lt, /*wait=*/false));
      published = lt;
    }
    SpinWait wait;
    bool stop = false;
    std::chrono::steady_clock::time_point unwritten_since{};
    while ((load(alive(s)) & ~kNoop) != want) {  // reserved, not yet written (or still in flight)
      // A reservation of this object's that waits for room: its appender may be waiting for us.
      if (awaiting_count_.load(std::memory_order_acquire) != 0 && awaiting_room(lt)) {
        stop = true;
        break;
      }
      // The sequencer resolves a hole that outlives the grace once a machine was fenced: its
      // appender may have died between its FETCH_AND_ADD and its WRITEs.
      if (rdma_.machine == 0 && fenced_.load(std::memory_order_acquire) != 0) {
        const auto now = std::chrono::steady_clock::now();
        if (unwritten_since == std::chrono::steady_clock::time_point{}) unwritten_since = now;
        if (now - unwritten_since >= rdma_.hole_grace) NRX_RETURN_IF_ERROR(resolve_hole(lt));
      }
      wait.pause();
    }
    if (stop) break;
    if ((load(alive(s)) & kNoop) != 0) continue;  // a fenced appender's hole: nothing to apply
    uint64_t meta = 0;
    std::memcpy(&meta, s, 8);
    const uint32_t len = static_cast<uint32_t>(meta);
    const ReplicaId writer = static_cast<ReplicaId>(meta >> 32);
    if (len == 0 || len > options_.entry_size || writer >= options_.max_replicas) {
      return Status::data_loss("log " + std::to_string(options_.log_id) + " entry " + std::to_string(lt) +
                               " is corrupt (writer " + std::to_string(writer) + ", " + std::to_string(len) + " bytes)");
    }
    if (!visitor(Entry{lt, writer, std::span<const std::byte>(s + kSlotHeader, len)})) break;
  }
  local_ltail_[replica].store(lt, std::memory_order_relaxed);
  NRX_RETURN_IF_ERROR(seq_write_word(ltail_off(replica), lt, /*wait=*/false));
  return lt;
}

LogIndex RdmaLog::tail() const { return seq_read_word(kTailOff).value_or(0); }

LogIndex RdmaLog::ctail() const {
  auto t = read_table();
  return t.ok() ? t->ctail() : 0;
}

LogIndex RdmaLog::head() const {
  auto t = read_table();
  return t.ok() ? t->head() : 0;
}

Result<LogIndex> RdmaLog::ltail(ReplicaId replica) const {
  if (replica < options_.max_replicas && owned_[replica].load(std::memory_order_acquire)) {
    return local_ltail_[replica].load(std::memory_order_relaxed);
  }
  NRX_ASSIGN_OR_RETURN(Table t, read_table());
  if (replica >= options_.max_replicas || (t.active >> replica & 1) == 0) {
    return Status::not_found("replica " + std::to_string(replica) + " is not registered");
  }
  return t.ltail[replica];
}

bool RdmaLog::is_synced_for_reads(ReplicaId replica, LogIndex ctail) const {
  auto lt = ltail(replica);
  return lt.ok() && *lt >= ctail;
}

// ---- payloads ---------------------------------------------------------------------------------

Result<PayloadRef> RdmaLog::payload_put(std::span<const std::byte> data) {
  if (data.empty()) return Status::invalid_argument("empty payload");
  if (data.size() > rdma_.payload_bytes) {
    return Status::invalid_argument("payload of " + std::to_string(data.size()) + " bytes (at most " +
                                    std::to_string(rdma_.payload_bytes) + ")");
  }
  NRX_ASSIGN_OR_RETURN(Table t, read_table());
  if (t.active == 0) return Status::failed_precondition("no replica is registered");
  MutexLock lock(payload_mu_);
  for (uint32_t s = 0; s < options_.payload_slots; ++s) {
    std::byte* p = region_ + payload_off_ + payload_stride_ * s;
    const uint64_t holders = load(p + kHoldersOff);
    if (holders != 0 && !all_released(holders, load(p + kReleasedOff))) continue;
    // Free: no release can be in flight (every holder released), so plain stores are safe here.
    const uint64_t gen = (load(p + kGenOff) + 1) & UINT32_MAX;
    std::memcpy(p + kPayloadHeader, data.data(), data.size());
    store(p + kReleasedOff, 0);
    store(p + kGenOff, gen);
    store(p + kLenOff, data.size());
    store(p + kHoldersOff, t.active);  // last (release): the slot is in use from here
    // A copy into every other machine's cache slot for it, posted before the entry that refers
    // to it (the same queue pair, which places in order): payload_get reads locally, and the
    // payload outlives its owner (a fenced machine's entries apply alike everywhere).
    for (uint32_t m = 0; m < rdma_.machines; ++m) {
      if (m != rdma_.machine) NRX_RETURN_IF_ERROR(push_payload(m, s, data.size()));
    }
    return PayloadRef{uint64_t{rdma_.machine} << 32 | s, static_cast<uint32_t>(data.size()),
                      static_cast<uint32_t>(gen)};
  }
  return Status::resource_exhausted("all " + std::to_string(options_.payload_slots) + " payload slots are in use");
}

Result<std::span<const std::byte>> RdmaLog::payload_get(PayloadRef ref) const {
  const uint32_t m = static_cast<uint32_t>(ref.where >> 32), s = static_cast<uint32_t>(ref.where);
  if (m >= rdma_.machines || s >= options_.payload_slots || ref.length == 0 || ref.length > rdma_.payload_bytes) {
    return Status::not_found("not a payload reference of this log");
  }
  // Ours in place; another machine's in our cache slot for it, where its payload_put wrote a copy
  // before the entry that refers to it reached us (another generation comes only after every
  // holder, ours included, released this one).
  const std::byte* p = m == rdma_.machine
                           ? region_ + payload_off_ + payload_stride_ * s
                           : region_ + cache_off_ + payload_stride_ * (size_t{m} * options_.payload_slots + s);
  const uint64_t holders = load(p + kHoldersOff);
  if (holders == 0 || load(p + kReleasedOff) == holders || load(p + kGenOff) != ref.generation ||
      load(p + kLenOff) != ref.length) {
    return Status::not_found("payload reference is stale (released or reused)");
  }
  return std::span<const std::byte>(p + kPayloadHeader, ref.length);
}

Status RdmaLog::payload_release(ReplicaId replica, PayloadRef ref) {
  const uint32_t m = static_cast<uint32_t>(ref.where >> 32), s = static_cast<uint32_t>(ref.where);
  if (m >= rdma_.machines || s >= options_.payload_slots) return Status::not_found("not a payload reference of this log");
  NRX_RETURN_IF_ERROR(check_owned(replica));
  if (m != rdma_.machine && cut_off(m)) return ok_status();  // its arena went with its machine
  // The header as the owner has it (ours: in place; another machine's: READ).
  uint64_t holders = 0, released = 0, gen = 0;
  const size_t off = payload_off_ + payload_stride_ * s;
  if (m == rdma_.machine) {
    holders = load(region_ + off + kHoldersOff);
    released = load(region_ + off + kReleasedOff);
    gen = load(region_ + off + kGenOff);
  } else {
    Link& l = *links_[m];
    MutexLock lock(l.mu);
    std::byte* buf = region_ + l.scratch + 64;
    n_reads_.fetch_add(1, std::memory_order_relaxed);
    NRX_RETURN_IF_ERROR(l.qp->read(*mr_, std::span<std::byte>(buf, 32), peers_[m].addr + off, peers_[m].rkey,
                                   verbs::Clock::now() + rdma_.rdma_timeout));
    holders = load(buf + kHoldersOff);
    released = load(buf + kReleasedOff);
    gen = load(buf + kGenOff);
  }
  const uint64_t bit = uint64_t{1} << replica;
  if (holders == 0 || released == holders || gen != ref.generation) {
    return Status::not_found("payload reference is stale (released or reused)");
  }
  if ((holders & bit) == 0) return Status::failed_precondition("replica " + std::to_string(replica) + " does not hold it");
  if ((released & bit) != 0) return Status::failed_precondition("replica " + std::to_string(replica) + " released it already");
  Link& l = *links_[m];
  MutexLock lock(l.mu);
  auto* scratch = reinterpret_cast<uint64_t*>(region_ + l.scratch);
  const auto deadline = verbs::Clock::now() + rdma_.rdma_timeout;
  NRX_ASSIGN_OR_RETURN(uint64_t old, l.qp->fetch_add(*mr_, scratch, peers_[m].addr + off + kReleasedOff,
                                                     peers_[m].rkey, bit, deadline));
  if ((old & bit) != 0) {  // a racing second release by the same replica: undo ours
    NRX_RETURN_IF_ERROR(l.qp->fetch_add(*mr_, scratch, peers_[m].addr + off + kReleasedOff, peers_[m].rkey,
                                        ~bit + 1, deadline)
                            .status());
    return Status::failed_precondition("replica " + std::to_string(replica) + " released it already");
  }
  return ok_status();
}

uint64_t RdmaLog::payloads_live() const {
  uint64_t n = 0;
  for (uint32_t s = 0; s < options_.payload_slots; ++s) {
    const std::byte* p = region_ + payload_off_ + payload_stride_ * s;
    const uint64_t holders = load(p + kHoldersOff);
    if (holders != 0 && !all_released(holders, load(p + kReleasedOff))) ++n;
  }
  return n;
}

Status RdmaLog::push_payload(uint32_t machine, uint32_t slot, size_t length) {
  if (cut_off(machine)) return ok_status();
  Link& l = *links_[machine];
  MutexLock lock(l.mu);
  n_writes_.fetch_add(1, std::memory_order_relaxed);
  const size_t from = payload_off_ + payload_stride_ * slot;
  const size_t to = cache_off_ + payload_stride_ * (size_t{rdma_.machine} * options_.payload_slots + slot);
  Status st = l.qp->post_write(mr_.get(), std::span<const std::byte>(region_ + from, kPayloadHeader + length),
                               peers_[machine].addr + to, peers_[machine].rkey,
                               verbs::Clock::now() + rdma_.rdma_timeout);
  return st.ok() ? st : lost_link(machine, st);
}

bool RdmaLog::all_released(uint64_t holders, uint64_t released) const {
  // A fenced machine's replicas never release: they count as released.
  return ((released | fenced_replicas_.load(std::memory_order_acquire)) & holders) == holders;
}

uint32_t RdmaLog::unreachable() const { return unreachable_.load(std::memory_order_acquire); }

Status RdmaLog::fence_machine(uint32_t machine) {
  if (machine >= rdma_.machines || machine == rdma_.machine) {
    return Status::invalid_argument("machine " + std::to_string(machine) + " cannot be fenced here");
  }
  if (machine == 0) return Status::unavailable("machine 0 sequences the log: its loss ends the log");
  const uint32_t bit = uint32_t{1} << machine;
  cut_off_.fetch_or(bit, std::memory_order_acq_rel);
  NRX_ASSIGN_OR_RETURN(Table t, read_table());
  uint64_t gone = 0;
  for (ReplicaId r = 0; r < options_.max_replicas; ++r) {
    if (t.owner[r] == uint64_t{machine} + 1) gone |= uint64_t{1} << r;
  }
  fenced_replicas_.fetch_or(gone, std::memory_order_acq_rel);
  if (rdma_.machine == 0) {
    // Its replicas leave the GC minimum and ctail (a COMPARE_AND_SWAP through the loopback pair:
    // RDMA atomics and CPU atomics do not mix on one word).
    for (uint64_t active = t.active; (active & gone) != 0;) {
      NRX_ASSIGN_OR_RETURN(uint64_t was, seq_compare_swap(kActiveOff, active, active & ~gone));
      if (was == active) break;
      active = was;
    }
  }
  fenced_.fetch_or(bit, std::memory_order_acq_rel);  // release: holes may be resolved from here
  return ok_status();
}

Status RdmaLog::resolve_hole(LogIndex index) {
  const uint64_t want = index / options_.slot_count + 1;
  const size_t off = slots_off_ + slot_stride_ * (index & (options_.slot_count - 1));
  std::byte* s = region_ + off;
  if ((load(alive(s)) & ~kNoop) == want) return ok_status();
  // The fenced appender's WRITEs may have reached some mirrors: a survivor that has the entry (and
  // may have applied it) decides, and everybody gets its copy. Otherwise a no-op for everybody.
  bool found = false;
  for (uint32_t m = 0; m < rdma_.machines && !found; ++m) {
    if (m == rdma_.machine || cut_off(m)) continue;
    std::byte* buf = region_ + hole_off_ + slot_stride_ * m;
    Link& l = *links_[m];
    Status st;
    {
      MutexLock lock(l.mu);
      n_reads_.fetch_add(1, std::memory_order_relaxed);
      st = l.qp->read(*mr_, std::span<std::byte>(buf, slot_stride_), peers_[m].addr + off, peers_[m].rkey,
                      verbs::Clock::now() + rdma_.rdma_timeout);
    }
    if (!st.ok()) {
      NRX_RETURN_IF_ERROR(lost_link(m, st));
      continue;
    }
    if ((load(alive(buf)) & ~kNoop) == want) {
      std::memcpy(s, buf, slot_stride_ - 8);
      found = (load(alive(buf)) & kNoop) == 0;
      if (!found) break;  // another resolver's no-op (cannot happen: only machine 0 resolves)
    }
  }
  // Our copy first (the WRITEs copy the slot from here), then every other survivor's.
  store(alive(s), found ? want : (want | kNoop));
  for (uint32_t m = 0; m < rdma_.machines; ++m) {
    if (m != rdma_.machine) NRX_RETURN_IF_ERROR(write_slots(m, index, 1));
  }
  holes_.fetch_add(1, std::memory_order_relaxed);
  return ok_status();
}

RdmaCounts RdmaLog::counts() const {
  RdmaCounts c;
  c.appends = n_appends_.load(std::memory_order_relaxed);
  c.fetch_adds = n_fetch_adds_.load(std::memory_order_relaxed);
  c.writes = n_writes_.load(std::memory_order_relaxed);
  c.reads = n_reads_.load(std::memory_order_relaxed);
  c.holes = holes_.load(std::memory_order_relaxed);
  for (const auto& l : links_) {
    MutexLock lock(l->mu);
    c.waits += l->qp->waits();
  }
  return c;
}

}  // namespace nrx::logs
