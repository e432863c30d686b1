// The member definitions of BasicShmLog<Access> (logs/shm/shm_log.h). Private to the backend:
// included by shm_log.cc, which instantiates ShmLog (CoherentAccess), and by tests that
// instantiate the log over another Access policy (e.g. one that counts read-modify-writes).
// Control path (create, attach, membership) first, then the data path (append, exec, payloads).
#pragma once

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "base/host.h"
#include "base/spin.h"
#include "logs/shm/shm_log.h"

namespace nrx::logs {

// ---- Control path -----------------------------------------------------------------------------

namespace shm_detail {

inline uint64_t payload_slot_bytes_for(const LogOptions& o, const ShmOptions& shm) {
  if (o.payload_slots == 0) return 0;
  return shm.payload_bytes / o.payload_slots / kCacheLineSize * kCacheLineSize;
}

inline Result<shm::Geometry> plan(const LogOptions& o, const ShmOptions& shm) {
  if (shm.mode != ShmMode::kCoherent && shm.mode != ShmMode::kNoncoherent) {
    return Status::invalid_argument("unknown shm mode " + std::to_string(static_cast<uint32_t>(shm.mode)));
  }
  if (o.payload_slots != 0 && payload_slot_bytes_for(o, shm) < shm::kMinPayloadSlotBytes) {
    return Status::invalid_argument("payload_bytes " + std::to_string(shm.payload_bytes) + " gives each of the " +
                                    std::to_string(o.payload_slots) + " payload slots fewer than " +
                                    std::to_string(shm::kMinPayloadSlotBytes) + " bytes");
  }
  return shm::plan_geometry(o.entry_size, o.slot_count, o.max_replicas, o.payload_slots,
                            payload_slot_bytes_for(o, shm));
}

inline Status check_alignment(std::span<std::byte> region) {
  if (reinterpret_cast<uintptr_t>(region.data()) % kInterferenceSize != 0) {
    return Status::invalid_argument("the shm region must start on a " + std::to_string(kInterferenceSize) +
                                    "-byte boundary (map it with mmap)");
  }
  return ok_status();
}

inline uint64_t realtime_epoch() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  const uint64_t ns = static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
  return ns == 0 ? 1 : ns;  // 0 means "any" to attach()
}

}  // namespace shm_detail

template <typename Access>
uint64_t BasicShmLog<Access>::region_bytes(const LogOptions& options, const ShmOptions& shm) {
  Result<shm::Geometry> g = shm_detail::plan(options, shm);
  return g.ok() ? g->region_bytes : 0;
}

template <typename Access>
Result<std::unique_ptr<BasicShmLog<Access>>> BasicShmLog<Access>::create(std::span<std::byte> region,
                                                                          LogOptions options, ShmOptions shm) {
  NRX_ASSIGN_OR_RETURN(const shm::Geometry g, shm_detail::plan(options, shm));
  NRX_RETURN_IF_ERROR(shm_detail::check_alignment(region));
  if (region.size() < g.region_bytes) {
    return Status::invalid_argument("the shm region has " + std::to_string(region.size()) + " bytes; this log needs " +
                                    std::to_string(g.region_bytes));
  }
  if (shm.lease.count() <= 0) return Status::invalid_argument("the fencing lease must be positive");
  std::byte* base = region.data();
  // Withdraw any previous header first (release: an attacher that still sees the old magic reads
  // the old, consistent header, never a half-written new one), then zero everything but the
  // payload bytes: control words 0, alive markers 0 (never written), payload slots free.
  Access::store(*reinterpret_cast<uint64_t*>(base), 0, std::memory_order_release);
  std::memset(base + sizeof(uint64_t), 0, g.payload_data_offset - sizeof(uint64_t));
  const uint64_t epoch = shm.epoch != 0 ? shm.epoch : shm_detail::realtime_epoch();
  const shm::ShmHeader header = make_header(g, shm.mode, shm.cluster_id, epoch, options.log_id);
  std::memcpy(base + sizeof(uint64_t), reinterpret_cast<const std::byte*>(&header) + sizeof(uint64_t),
              sizeof(header) - sizeof(uint64_t));
  const bool noncoherent = shm.mode == ShmMode::kNoncoherent;
  if (noncoherent) {
    // relaxed (both): published with the header by the magic's release below. Sharers on this
    // host test the pid to tell that the sequencer's process died.
    auto* line = reinterpret_cast<shm::SequencerLine*>(base + g.sequencer_offset);
    Access::store(line->pid, static_cast<uint64_t>(getpid()), std::memory_order_relaxed);
    Access::store(line->host, nrx::host_tag(), std::memory_order_relaxed);
    Access::flush(base, g.payload_data_offset);
  }
  // release: the header and the zeroed sections are visible to whoever acquires the magic.
  Access::store(*reinterpret_cast<uint64_t*>(base), shm::kMagic, std::memory_order_release);
  if (noncoherent) Access::flush(base, sizeof(uint64_t));
  options.numa_node = kNumaLocal;  // placement belongs to whoever mapped the region
  std::unique_ptr<BasicShmLog> log(new BasicShmLog(base, g, std::move(options), shm.cluster_id, epoch, shm.mode, 0,
                                                   shm.lease, std::move(shm.keep_alive)));
  if (noncoherent) {
    log->sequencer_ = std::make_unique<Sequencer>(g);
    log->sequencer_thread_ = std::thread([raw = log.get()] { raw->sequencer_main(); });
  }
  return log;
}

template <typename Access>
Result<std::unique_ptr<BasicShmLog<Access>>> BasicShmLog<Access>::attach(std::span<std::byte> region,
                                                                          ShmAttachOptions options) {
  if (region.size() < sizeof(shm::ShmHeader)) {
    return Status::invalid_argument("the shm region has " + std::to_string(region.size()) +
                                    " bytes, too few for the " + std::to_string(sizeof(shm::ShmHeader)) +
                                    "-byte log header (truncated?)");
  }
  NRX_RETURN_IF_ERROR(shm_detail::check_alignment(region));
  std::byte* base = region.data();
  shm::ShmHeader header;
  Access::invalidate(base, sizeof(header));
  // acquire: pairs with create()'s release of the magic; the rest of the header is complete.
  header.magic = Access::load(*reinterpret_cast<const uint64_t*>(base), std::memory_order_acquire);
  std::memcpy(reinterpret_cast<std::byte*>(&header) + sizeof(uint64_t), base + sizeof(uint64_t),
              sizeof(header) - sizeof(uint64_t));
  NRX_ASSIGN_OR_RETURN(const shm::Geometry g, shm::check_header(header, region.size(), options.cluster_id,
                                                                options.expected_epoch));
  const auto mode = static_cast<ShmMode>(header.mode);
  if (mode != options.mode) {
    auto name = [](ShmMode m) { return m == ShmMode::kNoncoherent ? std::string("noncoherent") : std::string("coherent"); };
    return Status::invalid_argument("the shm log is in " + name(mode) + " mode but attach asked for " +
                                    name(options.mode) + " (ShmAttachOptions::mode)");
  }
  if (mode == ShmMode::kNoncoherent && (options.client == 0 || options.client >= shm::kMaxClients)) {
    return Status::invalid_argument("attaching to a noncoherent shm log needs a client slot in 1.." +
                                    std::to_string(shm::kMaxClients - 1) + " (ShmAttachOptions::client), not " +
                                    std::to_string(options.client));
  }
  if (options.lease.count() <= 0) return Status::invalid_argument("the fencing lease must be positive");
  LogOptions o;
  o.log_id = header.log_id;
  o.entry_size = g.entry_size;
  o.slot_count = g.slot_count;
  o.max_replicas = g.max_replicas;
  o.payload_slots = g.payload_slots;
  o.full_timeout = options.full_timeout;
  o.on_lagging = std::move(options.on_lagging);
  o.numa_node = kNumaLocal;
  const uint32_t client = mode == ShmMode::kNoncoherent ? options.client : 0;
  return std::unique_ptr<BasicShmLog>(new BasicShmLog(base, g, std::move(o), header.cluster_id, header.epoch, mode,
                                                      client, options.lease, std::move(options.keep_alive)));
}

template <typename Access>
BasicShmLog<Access>::BasicShmLog(std::byte* base, const shm::Geometry& geo, LogOptions options, uint64_t cluster_id,
                                 uint64_t epoch, ShmMode mode, uint32_t client, std::chrono::nanoseconds lease,
                                 std::shared_ptr<void> keep_alive)
    : base_(base),
      geo_(geo),
      mask_(uint64_t{geo.slot_count} - 1),
      lap_shift_(static_cast<unsigned>(std::countr_zero(geo.slot_count))),
      options_(std::move(options)),
      cluster_id_(cluster_id),
      epoch_(epoch),
      pid_(static_cast<uint64_t>(getpid())),
      mode_(mode),
      client_(client),
      host_tag_(nrx::host_tag()),
      lease_(lease),
      incarnation_(new uint64_t[geo.max_replicas]()),
      last_beat_ns_(new std::atomic<int64_t>[geo.max_replicas]()),
      request_seq_(new uint64_t[geo.max_replicas]()),
      keep_alive_(std::move(keep_alive)) {
  {
    MutexLock lock(fence_mu_);
    observed_.resize(geo.max_replicas);
  }
  if (noncoherent()) {
    // Continue the numbering of whoever used this client slot before (a re-attach): the
    // sequencer answers a request whose number differs from the last one it answered.
    shm::ClientRequestLine& q = client_request_line(client_);
    shm::ClientResponseLine& a = client_response_line(client_);
    refresh(&q, sizeof(q));
    refresh(&a, sizeof(a));
    MutexLock lock(client_mu_);
    // relaxed: nobody else writes our request line; the answer's number is only compared.
    client_seq_ = std::max(Access::load(q.seq, std::memory_order_relaxed), Access::load(a.seq, std::memory_order_relaxed));
  }
}

template <typename Access>
BasicShmLog<Access>::~BasicShmLog() {
  stop_sequencer();
}

template <typename Access>
void BasicShmLog<Access>::stop_sequencer() {
  if (sequencer_ == nullptr) return;
  // release: pairs with the thread's acquire; it exits at the next check.
  sequencer_stop_.store(true, std::memory_order_release);
  if (sequencer_thread_.joinable()) sequencer_thread_.join();
}

template <typename Access>
Status BasicShmLog<Access>::not_owned(ReplicaId replica) const {
  if (active(replica)) {
    return Status::not_found("replica " + std::to_string(replica) + " of log " + std::to_string(options_.log_id) +
                             " was registered by another process (or ShmLog object)");
  }
  return Status::not_found("replica " + std::to_string(replica) + " is not registered");
}

template <typename Access>
bool BasicShmLog<Access>::try_lock_gc() {
  uint64_t expected = 0;
  // acquire: the previous holder's membership changes and head raise happen before ours.
  return Access::compare_exchange(control().membership.gc_lock, expected,
                                  shm::gc_lock_word(host_tag_, static_cast<uint32_t>(pid_)), std::memory_order_acquire,
                                  std::memory_order_relaxed);
}

template <typename Access>
bool BasicShmLog<Access>::try_break_gc_lock() {
  if (noncoherent()) return false;  // the lock is unused there
  uint64_t& word = control().membership.gc_lock;
  // relaxed: only the holder's identity; the CAS below acquires.
  uint64_t holder = Access::load(word, std::memory_order_relaxed);
  if (holder == 0) return try_lock_gc();
  if ((holder >> shm::kGcLockHostShift) != host_tag_ || !nrx::pid_gone(holder & UINT32_MAX)) return false;
  // acquire: the dead holder's stores (a half-done join, leave or head raise, each harmless:
  // see fence_one) are visible before we act on membership.
  return Access::compare_exchange(word, holder, shm::gc_lock_word(host_tag_, static_cast<uint32_t>(pid_)),
                                  std::memory_order_acquire, std::memory_order_relaxed);
}

template <typename Access>
Status BasicShmLog<Access>::lock_gc() {
  SpinWait wait(options_.full_timeout);
  while (!try_lock_gc()) {
    if ((wait.spins() & 63) == 63 && try_break_gc_lock()) break;
    if (wait.expired()) {
      const uint64_t holder = Access::load(control().membership.gc_lock, std::memory_order_relaxed);
      return Status::unavailable("the GC lock of shm log " + std::to_string(options_.log_id) +
                                 " stayed held by pid " + std::to_string(holder & UINT32_MAX) +
                                 ((holder >> shm::kGcLockHostShift) == host_tag_ ? " (alive, on this host)"
                                                                                 : " (on another host)") +
                                 " for full_timeout");
    }
    wait.pause();
  }
  return ok_status();
}

template <typename Access>
void BasicShmLog<Access>::unlock_gc() {
  // release: our membership change / head raise is visible to the next holder.
  Access::store(control().membership.gc_lock, 0, std::memory_order_release);
}

template <typename Access>
Result<ReplicaId> BasicShmLog<Access>::register_replica() {
  if (noncoherent()) return register_noncoherent();
  NRX_RETURN_IF_ERROR(lock_gc());
  // relaxed: |active| changes only under the GC lock, which we hold.
  const uint64_t active_mask = Access::load(control().membership.active, std::memory_order_relaxed);
  // The lowest id that is neither active nor fenced with slots still pending (its reservation
  // record must survive until fence_dead has filled them).
  ReplicaId id = geo_.max_replicas;
  for (ReplicaId r = 0; r < geo_.max_replicas; ++r) {
    if (((active_mask >> r) & 1) != 0) continue;
    // relaxed: written under the GC lock (fencing), or by a CAS kFenced -> kFree (either is fine).
    if (Access::load(replica_line(r).state, std::memory_order_relaxed) ==
        static_cast<uint64_t>(shm::ReplicaState::kFenced)) {
      continue;
    }
    id = r;
    break;
  }
  if (id >= geo_.max_replicas) {
    unlock_gc();
    return Status::resource_exhausted("log " + std::to_string(options_.log_id) + " already has its " +
                                      std::to_string(geo_.max_replicas) +
                                      " replicas (fenced ones included until fence_dead resolves them)");
  }
  // Start at head (the ring's rule): the lowest ltail of the others, or the tail when alone. The
  // head cannot rise past it while we hold the lock, and every reservation so far stayed below
  // cached head + slot_count <= start + slot_count, so the slots from start on are intact.
  ReplicaId unused;
  const LogIndex start = min_ltail(&unused);
  Access::store(ltail_line(id).value, start, std::memory_order_relaxed);
  shm::ReplicaLine& line = replica_line(id);
  // relaxed (all): published by the release fetch_or of the active bit below.
  Access::store(line.owner_pid, pid_, std::memory_order_relaxed);
  Access::store(line.host, host_tag_, std::memory_order_relaxed);
  Access::store(line.reserve_count, 0, std::memory_order_relaxed);  // no reservation yet
  incarnation_[id] = Access::fetch_add(line.incarnation, 1, std::memory_order_relaxed) + 1;
  Access::store(line.state, static_cast<uint64_t>(shm::ReplicaState::kActive), std::memory_order_relaxed);
  // release: the ltail above is visible to anyone who sees the replica in the mask.
  Access::fetch_or(control().membership.active, uint64_t{1} << id, std::memory_order_release);
  unlock_gc();
  owned_.fetch_or(uint64_t{1} << id, std::memory_order_release);
  return id;
}

template <typename Access>
Status BasicShmLog<Access>::deregister_replica(ReplicaId replica) {
  if (!owned(replica)) return not_owned(replica);
  if (noncoherent()) return deregister_noncoherent(replica);
  const uint64_t bit = uint64_t{1} << replica;
  NRX_RETURN_IF_ERROR(lock_gc());
  // relaxed: incarnations change under the GC lock, which we hold.
  if (Access::load(replica_line(replica).incarnation, std::memory_order_relaxed) != incarnation_[replica]) {
    // Fenced: the id (and its payload holds) were taken from us already; only forget it here.
    unlock_gc();
    owned_.fetch_and(~bit, std::memory_order_release);
    return ok_status();
  }
  // release: our last reads of log slots (before our final ltail store) precede the head moving.
  Access::fetch_and(control().membership.active, ~bit, std::memory_order_release);
  Access::store(replica_line(replica).state, static_cast<uint64_t>(shm::ReplicaState::kFree),
                std::memory_order_relaxed);
  unlock_gc();
  owned_.fetch_and(~bit, std::memory_order_release);
  // Drop what we still hold: every live payload with our bit.
  for (uint64_t where = 0; where < geo_.payload_slots; ++where) {
    shm::PayloadMeta& m = payload_meta(where);
    const uint64_t state = Access::load(m.state, std::memory_order_acquire);
    if ((state & shm::kPayloadPhaseMask) != shm::kPayloadLive) continue;
    if ((Access::load(m.pending, std::memory_order_relaxed) & bit) == 0) continue;
    release_payload(where, shm::payload_generation(state), bit).ignore_error();  // stale: freed meanwhile
  }
  return ok_status();
}

template <typename Access>
LogIndex BasicShmLog<Access>::min_ltail(ReplicaId* laggard) const {
  uint64_t active_mask = active_replicas();
  LogIndex min = tail();
  *laggard = 0;
  bool first = true;
  while (active_mask != 0) {
    const auto r = static_cast<ReplicaId>(std::countr_zero(active_mask));
    active_mask &= active_mask - 1;
    refresh(&ltail_line(r).value, sizeof(uint64_t));
    // acquire: a replica's reads of its slots happen before its ltail store; whoever reuses a
    // slot after seeing this ltail must not overwrite what the replica was still reading.
    const LogIndex l = Access::load(ltail_line(r).value, std::memory_order_acquire);
    if (first || l < min) {
      min = l;
      *laggard = r;
      first = false;
    }
  }
  return min;
}

template <typename Access>
LogIndex BasicShmLog<Access>::head() const {
  ReplicaId unused;
  return min_ltail(&unused);
}

template <typename Access>
LogIndex BasicShmLog<Access>::refresh_head(ReplicaId* laggard) {
  if (!try_lock_gc()) {
    (void)min_ltail(laggard);  // only to name the laggard; not safe to reserve against
    // acquire: pairs with the release store of the last raise.
    return Access::load(control().head.value, std::memory_order_acquire);
  }
  LogIndex head = min_ltail(laggard);
  // relaxed: the cached head is only raised under the GC lock, which we hold.
  const LogIndex cached = Access::load(control().head.value, std::memory_order_relaxed);
  if (head > cached) {
    // release: publishes what min_ltail acquired (the readers are done with the slots below).
    Access::store(control().head.value, head, std::memory_order_release);
  } else {
    head = cached;
  }
  unlock_gc();
  return head;
}

template <typename Access>
Result<LogIndex> BasicShmLog<Access>::ltail(ReplicaId replica) const {
  if (!active(replica)) return Status::not_found("replica " + std::to_string(replica) + " is not registered");
  refresh(&ltail_line(replica).value, sizeof(uint64_t));
  // acquire: pairs with the owner's release store after applying.
  return Access::load(ltail_line(replica).value, std::memory_order_acquire);
}

// ---- Data path --------------------------------------------------------------------------------

template <typename Access>
Result<LogIndex> BasicShmLog<Access>::append(ReplicaId replica, Batch batch, EntryVisitor apply_own) {
  if (!owned(replica)) return not_owned(replica);
  const uint64_t n = batch.size();
  if (n == 0) return Status::invalid_argument("empty batch");
  if (n > geo_.slot_count) {
    return Status::invalid_argument("batch of " + std::to_string(n) + " entries exceeds the log's " +
                                    std::to_string(geo_.slot_count) + " slots");
  }
  for (const auto& e : batch) {
    if (e.empty() || e.size() > geo_.entry_size) {
      return Status::invalid_argument("entry of " + std::to_string(e.size()) + " bytes is outside 1.." +
                                      std::to_string(geo_.entry_size));
    }
  }

  const uint64_t capacity = geo_.slot_count;
  LogIndex first = 0;
  if (noncoherent()) {
    Status alive = check_alive_and_beat(replica);
    if (!alive.ok()) return alive.code() == StatusCode::kFailedPrecondition ? acknowledge_fencing(replica) : alive;
    Result<LogIndex> granted = reserve_noncoherent(replica, n, apply_own);
    if (!granted.ok()) {
      // Fenced while waiting (or applying its own entries): nothing of ours gets published.
      if (granted.status().code() == StatusCode::kFailedPrecondition) return acknowledge_fencing(replica);
      return granted.status();
    }
    first = *granted;
  } else {
  NRX_RETURN_IF_ERROR(check_alive_and_beat(replica));
  shm::ReplicaLine& me = replica_line(replica);
  uint64_t& tail_word = control().tail.value;
  SpinWait wait(options_.full_timeout);
  std::chrono::steady_clock::time_point last_fence{};
  first = Access::load(tail_word, std::memory_order_relaxed);
  for (;;) {
    // acquire: pairs with the release store of a raise, so the slots below head were fully read.
    LogIndex head = Access::load(control().head.value, std::memory_order_acquire);
    if (first + n > head + capacity) {
      ReplicaId laggard;
      head = refresh_head(&laggard);
      if (first + n > head + capacity) {
        // Full. Our own replica may be the one behind: apply its entries first (NR's append does
        // the same), then nudge whoever still holds the head back. Our reservation record must
        // not cover slots others reserved while we wait (a fencer would wait on it).
        // relaxed: a record only ever shrinks the fencer's work; see fence_one.
        Access::store(me.reserve_count, 0, std::memory_order_relaxed);
        NRX_RETURN_IF_ERROR(apply_until(replica, tail(), apply_own).status());
        head = refresh_head(&laggard);
        if (first + n > head + capacity) {
          if (laggard != replica && options_.on_lagging) options_.on_lagging(options_.log_id, laggard);
          if (wait.expired()) {
            return Status::deadline_exceeded("shm log " + std::to_string(options_.log_id) + " stayed full for " +
                                             std::to_string(options_.full_timeout.count() / 1000000) +
                                             " ms; replica " + std::to_string(laggard) + " is not advancing");
          }
          wait.pause();
          // A dead replica may hold the head: fence it (rate-limited), and show we live.
          fence_from_wait(&last_fence);
          NRX_RETURN_IF_ERROR(check_alive_and_beat(replica));
        }
        first = Access::load(tail_word, std::memory_order_relaxed);
        continue;
      }
    }
    // Record the reservation BEFORE making it: if we die right after the CAS, a fencer learns
    // from this record that the unpublished slots there may be ours. relaxed: published by the
    // CAS below (a fencer reads the tail first, then the records).
    Access::store(me.reserve_first, first, std::memory_order_relaxed);
    Access::store(me.reserve_count, n, std::memory_order_relaxed);
    // The single atomic step that reserves the whole batch. seq_cst on success: releases the
    // record above, and orders the CAS before the incarnation load below against a fencer's
    // incarnation bump then tail load (store buffering: one of us sees the other).
    if (Access::compare_exchange(tail_word, first, first + n, std::memory_order_seq_cst, std::memory_order_relaxed)) {
      break;
    }
  }
  // seq_cst: see the CAS. Fenced meanwhile: nobody may wait on the slots we just took.
  if (Access::load(me.incarnation, std::memory_order_seq_cst) != incarnation_[replica]) {
    for (uint64_t i = 0; i < n; ++i) fill_noop(first + i);
    return fenced_error(replica);
  }
  }
  // Tests: crash_in_append_for_testing (one relaxed load when off).
  uint64_t publish_n = n;
  bool crash = false;
  if (crash_countdown_.load(std::memory_order_relaxed) != 0 &&
      crash_countdown_.fetch_sub(1, std::memory_order_relaxed) == 1) {
    crash = true;
    publish_n = std::min<uint64_t>(crash_publish_.load(std::memory_order_relaxed), n - 1);
  }

  for (uint64_t i = 0; i < publish_n; ++i) {
    const LogIndex index = first + i;
    shm::SlotHeader* s = slot(index);
    const uint64_t want = (index >> lap_shift_) + 1;
    uint64_t before = 0;
    if (!noncoherent()) {
      // relaxed: only our own lap's no-op matters here, and the CAS below re-checks it.
      before = Access::load(s->alive, std::memory_order_relaxed);
      if ((before & shm::kAliveLapMask) >= want) {  // a fencer filled it: we were fenced
        for (uint64_t k = i; k < n; ++k) fill_noop(first + k);
        return fenced_error(replica);
      }
    }
    std::byte* bytes = reinterpret_cast<std::byte*>(s) + sizeof(shm::SlotHeader);
    std::memcpy(bytes, batch[i].data(), batch[i].size());
    s->writer = replica;
    s->length = static_cast<uint32_t>(batch[i].size());
    publish(s, sizeof(shm::SlotHeader) + batch[i].size());
    if (noncoherent()) {
      // release: the entry bytes, writer and length are visible before the marker says "live".
      Access::store(s->alive, want, std::memory_order_release);
      publish(&s->alive, sizeof(s->alive));
    } else if (!Access::compare_exchange(s->alive, before, want, std::memory_order_release,
                                         std::memory_order_relaxed)) {
      // release (on success): as above. Failure: a fencer's no-op won the slot; we are fenced.
      for (uint64_t k = i + 1; k < n; ++k) fill_noop(first + k);
      return fenced_error(replica);
    }
  }
  if (crash) {
    if (crash_kill_.load(std::memory_order_relaxed)) raise(SIGKILL);
    return Status(StatusCode::kAborted, "crash_in_append_for_testing: indices " + std::to_string(first + publish_n) +
                                            ".." + std::to_string(first + n - 1) + " left unpublished");
  }
  if (noncoherent()) {
    // The sequencer publishes the tail right after the grants (see sequencer_pass_locked): wait
    // for it to cover ours, so an exec after this append returns sees these entries. Bounded: if
    // the sequencer died in between, the entries are written and the log is stuck anyway.
    SpinWait wait(options_.full_timeout);
    while (tail() < first + n && !wait.expired()) {
      try_sequencer_pass();
      // Every 256 pauses: a dead sequencer never publishes that tail (our entries are written).
      if ((wait.spins() & 255) == 255 && !check_sequencer(/*silent_too=*/false).ok()) break;
      wait.pause();
    }
  }
  return first;
}

template <typename Access>
template <typename Visitor>
Result<LogIndex> BasicShmLog<Access>::apply_until(ReplicaId replica, LogIndex to, Visitor& visitor) {
  uint64_t& ltail_word = ltail_line(replica).value;
  // Only this replica's combiner writes its ltail, so a relaxed read of our own value suffices.
  const LogIndex from = Access::load(ltail_word, std::memory_order_relaxed);
  LogIndex i = from;
  if (i >= to) return i;
  // Raise ctail BEFORE applying (see RingLog::apply_until): ctail is the highest index a replica
  // has started applying to, so a read anywhere syncs past every effect already visible.
  if (noncoherent()) {
    // Our own proposal on our own line (ctail() takes the max over replicas): no read-modify-write.
    uint64_t& started = ltail_line(replica).started;
    // relaxed: only this replica's combiner writes |started|.
    if (Access::load(started, std::memory_order_relaxed) < to) {
      // release: orders the raise before the effects this replica is about to produce.
      Access::store(started, to, std::memory_order_release);
      publish(&started, sizeof(started));
    }
  } else {
    uint64_t& ctail_word = control().ctail.value;
    LogIndex c = Access::load(ctail_word, std::memory_order_relaxed);
    // release: orders the raise before the effects this replica is about to produce.
    while (c < to &&
           !Access::compare_exchange(ctail_word, c, to, std::memory_order_release, std::memory_order_relaxed)) {
    }
  }
  Status error;
  std::chrono::steady_clock::time_point last_fence{};
  for (; i < to; ++i) {
    const shm::SlotHeader* s = slot(i);
    const uint64_t want = (i >> lap_shift_) + 1;
    // acquire: pairs with the appender's release store; the entry is complete once we see it.
    // No timeout (log.h): an appender publishes right after reserving; a dead one is fenced
    // (coherent mode: by us, from here, once its lease is out or its pid is gone; noncoherent
    // mode: by the sequencer, which we only ask whether it still lives).
    SpinWait wait;
    std::chrono::steady_clock::time_point waiting_since{};
    uint64_t alive;
    for (;;) {
      refresh(&s->alive, sizeof(s->alive));
      alive = Access::load(s->alive, std::memory_order_acquire);
      if ((alive & shm::kAliveLapMask) >= want) break;
      wait.pause();
      if ((wait.spins() & 255) != 0) continue;
      error = check_alive_and_beat(replica);
      if (!error.ok()) break;
      if (!noncoherent()) {
        fence_from_wait(&last_fence);
        continue;
      }
      try_sequencer_pass();  // the creator's own wait helps its sequencer along
      // A live appender publishes within microseconds; after a liveness period of waiting, a
      // dead sequencer means nobody will ever fill this hole: say so instead of hanging.
      const auto now = std::chrono::steady_clock::now();
      if (waiting_since == std::chrono::steady_clock::time_point{}) waiting_since = now;
      if (now - waiting_since >= liveness_period(lease_) && now - last_fence >= liveness_period(lease_)) {
        last_fence = now;
        error = check_sequencer(/*silent_too=*/true);
        if (!error.ok()) break;
      }
    }
    if (!error.ok()) break;
    if (alive == (want | shm::kAliveNoop)) continue;  // a fenced writer's slot: nothing to apply
    if (alive != want) {
      error = Status::data_loss("shm log " + std::to_string(options_.log_id) + " slot of index " + std::to_string(i) +
                                " holds lap " + std::to_string(alive) + ", expected " + std::to_string(want) +
                                ": overwritten before replica " + std::to_string(replica) + " read it (corrupt region)");
      break;
    }
    refresh(s, sizeof(shm::SlotHeader));
    const uint32_t writer = s->writer;
    const uint32_t length = s->length;
    // Bounds-check before handing the bytes out: another process (or machine) wrote them.
    if (length == 0 || length > geo_.entry_size || writer >= geo_.max_replicas) {
      error = Status::data_loss("shm log " + std::to_string(options_.log_id) + " entry " + std::to_string(i) +
                                " is corrupt: writer " + std::to_string(writer) + ", length " + std::to_string(length) +
                                " (entry_size " + std::to_string(geo_.entry_size) + ", max_replicas " +
                                std::to_string(geo_.max_replicas) + ")");
      break;
    }
    const std::byte* bytes = reinterpret_cast<const std::byte*>(s) + sizeof(shm::SlotHeader);
    refresh(bytes, length);
    const Entry entry{i, writer, std::span<const std::byte>(bytes, length)};
    if constexpr (std::is_same_v<Visitor, StoppingVisitor>) {
      if (!visitor(entry)) break;
    } else {
      visitor(entry);
    }
  }
  if (i != from) {
    if (noncoherent()) {
      // release: our reads of the slots above happen before an appender that sees this ltail reuses them.
      Access::store(ltail_word, i, std::memory_order_release);
      publish(&ltail_word, sizeof(ltail_word));
    } else {
      LogIndex expected = from;
      // release: as above. A CAS, so a fenced zombie never moves the ltail of a re-registered id.
      if (!Access::compare_exchange(ltail_word, expected, i, std::memory_order_release, std::memory_order_relaxed)) {
        return fenced_error(replica);
      }
    }
  }
  if (!error.ok()) return error;
  return i;
}

template <typename Access>
Result<LogIndex> BasicShmLog<Access>::exec(ReplicaId replica, EntryVisitor visitor) {
  if (!owned(replica)) return not_owned(replica);
  Status alive = check_alive_and_beat(replica);
  Result<LogIndex> result = alive.ok() ? apply_until(replica, tail(), visitor) : Result<LogIndex>(std::move(alive));
  // Noncoherent: a fencing found here (at the start or while waiting) is acknowledged on the way
  // out, after our last ltail store (kFailedPrecondition comes from nothing else here).
  if (noncoherent() && !result.ok() && result.status().code() == StatusCode::kFailedPrecondition) {
    return acknowledge_fencing(replica);
  }
  return result;
}

template <typename Access>
Result<LogIndex> BasicShmLog<Access>::exec_while(ReplicaId replica, StoppingVisitor visitor) {
  if (!owned(replica)) return not_owned(replica);
  Status alive = check_alive_and_beat(replica);
  Result<LogIndex> result = alive.ok() ? apply_until(replica, tail(), visitor) : Result<LogIndex>(std::move(alive));
  if (noncoherent() && !result.ok() && result.status().code() == StatusCode::kFailedPrecondition) {
    return acknowledge_fencing(replica);  // as exec
  }
  return result;
}

template <typename Access>
Result<PayloadRef> BasicShmLog<Access>::payload_put(std::span<const std::byte> data) {
  if (data.empty()) return Status::invalid_argument("empty payload");
  if (data.size() > geo_.payload_slot_bytes) {
    return Status::resource_exhausted("payload of " + std::to_string(data.size()) +
                                      " bytes exceeds the arena's payload slots of " +
                                      std::to_string(geo_.payload_slot_bytes));
  }
  // acquire: the replicas in the mask have their ltails set (pairs with register's release).
  const uint64_t holders = active_replicas();
  if (holders == 0) return Status::failed_precondition("no replica is registered to release the payload");
  if (noncoherent()) return payload_put_noncoherent(data, holders);

  shm::PayloadLine& line = control().payloads;
  const uint64_t start = Access::fetch_add(line.hint, 1, std::memory_order_relaxed);
  for (uint64_t k = 0; k < geo_.payload_slots; ++k) {
    const uint64_t where = (start + k) % geo_.payload_slots;
    shm::PayloadMeta& m = payload_meta(where);
    uint64_t state = Access::load(m.state, std::memory_order_relaxed);
    if ((state & shm::kPayloadPhaseMask) != shm::kPayloadFree) continue;
    const uint32_t generation = shm::payload_generation(state);
    // acquire: pairs with the last release's store of kPayloadFree; every holder's reads of the
    // old bytes happen before we overwrite them.
    if (!Access::compare_exchange(m.state, state, shm::payload_state(generation, shm::kPayloadFilling),
                                  std::memory_order_acquire, std::memory_order_relaxed)) {
      continue;  // another put took it
    }
    std::memcpy(payload_bytes(where), data.data(), data.size());
    Access::store(m.length, data.size(), std::memory_order_relaxed);
    Access::store(m.pending, holders, std::memory_order_relaxed);
    // release: bytes, length and pending are visible to whoever acquires the live state.
    Access::store(m.state, shm::payload_state(generation, shm::kPayloadLive), std::memory_order_release);
    Access::fetch_add(line.live, 1, std::memory_order_relaxed);
    return PayloadRef{where, static_cast<uint32_t>(data.size()), generation};
  }
  return Status::resource_exhausted("all " + std::to_string(geo_.payload_slots) + " payload slots are live");
}

template <typename Access>
Result<std::span<const std::byte>> BasicShmLog<Access>::payload_get(PayloadRef ref) const {
  if (ref.where >= geo_.payload_slots) return Status::not_found("payload reference out of range");
  const shm::PayloadMeta& m = payload_meta(ref.where);
  refresh(&m, sizeof(m));
  // acquire: pairs with payload_put's release of the live state.
  const uint64_t state = Access::load(m.state, std::memory_order_acquire);
  if (state != shm::payload_state(ref.generation, shm::kPayloadLive)) {
    return Status::not_found("stale payload reference");
  }
  const uint64_t length = Access::load(m.length, std::memory_order_relaxed);
  if (length != ref.length || length == 0 || length > geo_.payload_slot_bytes) {
    return Status::not_found("stale payload reference");
  }
  if (noncoherent() && released_by_all(ref.where, ref.generation, Access::load(m.pending, std::memory_order_relaxed),
                                       fenced_replicas())) {
    return Status::not_found("stale payload reference (released by every holder)");
  }
  refresh(payload_bytes(ref.where), length);
  return std::span<const std::byte>(payload_bytes(ref.where), length);
}

template <typename Access>
Status BasicShmLog<Access>::payload_release(ReplicaId replica, PayloadRef ref) {
  if (!owned(replica)) return not_owned(replica);
  if (ref.where >= geo_.payload_slots) return Status::not_found("payload reference out of range");
  if (noncoherent()) {
    // Under ack_mu_: once our combiner acknowledged a fencing, no mark of ours may land in the id's
    // array (the sequencer may have handed it on).
    MutexLock lock(ack_mu_);
    if ((acknowledged_.load(std::memory_order_relaxed) >> replica & 1) != 0 || fenced_mark_seen(replica)) {
      return fenced_error(replica);
    }
    const shm::PayloadMeta& m = payload_meta(ref.where);
    refresh(&m, sizeof(m));
    // acquire: pairs with payload_put's release of the live state; |pending| is this generation's.
    if (Access::load(m.state, std::memory_order_acquire) != shm::payload_state(ref.generation, shm::kPayloadLive)) {
      return Status::not_found("stale payload reference");
    }
    const uint64_t holders = Access::load(m.pending, std::memory_order_relaxed);
    if (((holders >> replica) & 1) == 0) {
      return Status::failed_precondition("replica " + std::to_string(replica) + " did not hold this payload");
    }
    uint64_t& mark = release_mark(replica, ref.where);
    // relaxed: our own mark, written only by this replica's owner (us).
    if (Access::load(mark, std::memory_order_relaxed) == ref.generation) {
      return Status::failed_precondition("replica " + std::to_string(replica) + " already released this payload");
    }
    // release: our reads of the bytes happen before the sequencer, seeing every mark, reuses the slot.
    Access::store(mark, ref.generation, std::memory_order_release);
    publish(&mark, sizeof(mark));
    return ok_status();
  }
  NRX_RETURN_IF_ERROR(check_alive_and_beat(replica));
  return release_payload(ref.where, ref.generation, uint64_t{1} << replica);
}

template <typename Access>
Status BasicShmLog<Access>::release_payload(uint64_t where, uint32_t generation, uint64_t bit) {
  shm::PayloadMeta& m = payload_meta(where);
  // acquire: pairs with payload_put's release; |pending| below belongs to this generation.
  const uint64_t state = Access::load(m.state, std::memory_order_acquire);
  if (state != shm::payload_state(generation, shm::kPayloadLive)) return Status::not_found("stale payload reference");
  // acq_rel: every holder's reads of the bytes happen before the last releaser frees them.
  const uint64_t before = Access::fetch_and(m.pending, ~bit, std::memory_order_acq_rel);
  if (before == 0) return Status::not_found("stale payload reference");
  if ((before & bit) == 0) {
    return Status::failed_precondition("replica " + std::to_string(std::countr_zero(bit)) +
                                       " already released this payload (or did not hold it)");
  }
  if (before == bit) {
    Access::store(m.length, 0, std::memory_order_relaxed);
    // release: a holder of the old generation sees the change before the slot is reused, and the
    // next put (acquire CAS) sees every holder's reads as done.
    Access::store(m.state, shm::payload_state(generation + 1, shm::kPayloadFree), std::memory_order_release);
    Access::fetch_sub(control().payloads.live, 1, std::memory_order_relaxed);
  }
  return ok_status();
}

// ---- Coherent mode: crash fencing ---------------------------------------------------------------

template <typename Access>
Status BasicShmLog<Access>::fenced_error(ReplicaId replica) const {
  return Status::failed_precondition("replica " + std::to_string(replica) + " of shm log " +
                                     std::to_string(options_.log_id) +
                                     " was fenced (its lease ran out); register a new replica");
}

template <typename Access>
Status BasicShmLog<Access>::check_alive_and_beat(ReplicaId replica) {
  if (noncoherent()) {
    if ((acknowledged_.load(std::memory_order_acquire) >> replica & 1) != 0) return fenced_error(replica);
    // At most once a millisecond (one clock read otherwise): read the mark, then beat. A replica
    // is fenced only after a lease of silence (or its death), so its owner's next operation
    // always comes after a millisecond and sees the mark; appends also see it with their grant.
    if (!beat_noncoherent(replica, /*force=*/false, /*check_fenced=*/true)) return fenced_error(replica);
    return ok_status();
  }
  shm::ReplicaLine& line = replica_line(replica);
  // relaxed: a fencing is acted on through the CASes (tail record, publish, ltail); this early
  // check only saves work, so it needs no ordering.
  if (Access::load(line.incarnation, std::memory_order_relaxed) != incarnation_[replica]) return fenced_error(replica);
  // relaxed: any change shows we live; racing beats of one process may lose one increment.
  Access::store(line.heartbeat, Access::load(line.heartbeat, std::memory_order_relaxed) + 1,
                std::memory_order_relaxed);
  return ok_status();
}

template <typename Access>
Status BasicShmLog<Access>::heartbeat() {
  Status first_error;
  uint64_t mine = owned_.load(std::memory_order_acquire);
  while (mine != 0) {
    const auto r = static_cast<ReplicaId>(std::countr_zero(mine));
    mine &= mine - 1;
    Status st;
    if (noncoherent()) {
      // Under ack_mu_: never beat on an id our combiner has handed back (see payload_release).
      MutexLock lock(ack_mu_);
      if ((acknowledged_.load(std::memory_order_relaxed) >> r & 1) != 0 ||
          !beat_noncoherent(r, /*force=*/true, /*check_fenced=*/true)) {
        st = fenced_error(r);
      }
    } else {
      st = check_alive_and_beat(r);
    }
    if (!st.ok() && first_error.ok()) first_error = std::move(st);
  }
  return first_error;
}

template <typename Access>
void BasicShmLog<Access>::fence_from_wait(std::chrono::steady_clock::time_point* last) {
  if (noncoherent()) return;
  const auto now = std::chrono::steady_clock::now();
  const auto every = std::max<std::chrono::nanoseconds>(lease_ / 8, std::chrono::milliseconds(1));
  if (now - *last < every) return;
  *last = now;
  fence_dead(lease_).ignore_error();  // a wait path: it retries, and reports its own timeout
}

template <typename Access>
Status BasicShmLog<Access>::fence_dead(std::chrono::nanoseconds lease) {
  if (lease.count() <= 0) return Status::invalid_argument("the fencing lease must be positive");
  if (noncoherent()) {
    // Only the sequencer fences (it alone writes the membership and knows every grant); any
    // other object leaves it to the sequencer's own periodic check.
    Sequencer* s = sequencer_.get();
    if (s == nullptr) return ok_status();
    MutexLock lock(s->mu);
    sequencer_liveness_locked(*s, lease, std::chrono::steady_clock::now());
    return ok_status();
  }
  MutexLock lock(fence_mu_);
  const auto now = std::chrono::steady_clock::now();
  const uint64_t active_mask = active_replicas();
  const uint64_t mine = owned_.load(std::memory_order_acquire);
  Status result;
  for (ReplicaId r = 0; r < geo_.max_replicas; ++r) {
    shm::ReplicaLine& line = replica_line(r);
    const uint64_t bit = uint64_t{1} << r;
    if ((active_mask & bit) == 0) {
      observed_[r].valid = false;
      // A fencing (ours or another process's) that left slots covered by a live record then.
      // relaxed: re-checked by the CAS in resolve_fenced.
      if (Access::load(line.state, std::memory_order_relaxed) == static_cast<uint64_t>(shm::ReplicaState::kFenced)) {
        (void)resolve_fenced(r);
      }
      continue;
    }
    if ((mine & bit) != 0) continue;  // ours: alive while we run
    // acquire: the registration (owner, host) is read whole; fence_one re-checks under the lock.
    const uint64_t incarnation = Access::load(line.incarnation, std::memory_order_acquire);
    // relaxed: only compared with the previous look.
    const uint64_t beat = Access::load(line.heartbeat, std::memory_order_relaxed);
    bool dead = Access::load(line.host, std::memory_order_relaxed) == host_tag_ &&
                nrx::pid_gone(Access::load(line.owner_pid, std::memory_order_relaxed));
    Observation& o = observed_[r];
    if (!o.valid || o.incarnation != incarnation || o.heartbeat != beat) {
      o = Observation{incarnation, beat, now, true};
    } else if (now - o.since >= lease) {
      dead = true;
    }
    if (!dead) continue;
    Status st = fence_one(r, incarnation);
    if (st.ok()) {
      o.valid = false;
    } else if (result.ok()) {
      result = std::move(st);
    }
  }
  return result;
}

template <typename Access>
Status BasicShmLog<Access>::fence_one(ReplicaId victim, uint64_t incarnation) {
  shm::ReplicaLine& line = replica_line(victim);
  const uint64_t bit = uint64_t{1} << victim;
  NRX_RETURN_IF_ERROR(lock_gc());
  // relaxed: membership and incarnations change under the GC lock, which we hold.
  if ((Access::load(control().membership.active, std::memory_order_relaxed) & bit) == 0 ||
      Access::load(line.incarnation, std::memory_order_relaxed) != incarnation) {
    unlock_gc();
    return ok_status();  // left, or fenced by someone else, meanwhile
  }
  Access::store(line.state, static_cast<uint64_t>(shm::ReplicaState::kFenced), std::memory_order_relaxed);
  // seq_cst: against the appender's seq_cst CAS on the tail then incarnation load: either it sees
  // this bump (and fills its own range), or resolve_fenced's tail load sees its reservation.
  Access::fetch_add(line.incarnation, 1, std::memory_order_seq_cst);
  // release: like a leave; the head may now rise past the victim's ltail.
  Access::fetch_and(control().membership.active, ~bit, std::memory_order_release);
  unlock_gc();
  fenced_count_.fetch_add(1, std::memory_order_relaxed);
  // Release the payloads it held (as deregister_replica does for itself).
  for (uint64_t where = 0; where < geo_.payload_slots; ++where) {
    shm::PayloadMeta& m = payload_meta(where);
    // acquire: |pending| below belongs to this state's generation.
    const uint64_t state = Access::load(m.state, std::memory_order_acquire);
    if ((state & shm::kPayloadPhaseMask) != shm::kPayloadLive) continue;
    if ((Access::load(m.pending, std::memory_order_relaxed) & bit) == 0) continue;
    release_payload(where, shm::payload_generation(state), bit).ignore_error();  // freed meanwhile
  }
  (void)resolve_fenced(victim);
  return ok_status();
}

template <typename Access>
void BasicShmLog<Access>::fill_noop(LogIndex index) {
  shm::SlotHeader* s = slot(index);
  const uint64_t want = (index >> lap_shift_) + 1;
  // acquire: a value of our lap (entry or no-op) means the slot is decided.
  uint64_t before = Access::load(s->alive, std::memory_order_acquire);
  while ((before & shm::kAliveLapMask) < want) {
    // release: readers that see the no-op need nothing else from us (no bytes), but the
    // fencing that decided it (the victim out of the active mask) comes first.
    if (Access::compare_exchange(s->alive, before, want | shm::kAliveNoop, std::memory_order_release,
                                 std::memory_order_acquire)) {
      return;
    }
  }
}

template <typename Access>
bool BasicShmLog<Access>::resolve_fenced(ReplicaId victim) {
  shm::ReplicaLine& line = replica_line(victim);
  // seq_cst: see fence_one (read the tail after the incarnation bump); it also acquires every
  // reservation record stored before a CAS that the tail value we read follows.
  const LogIndex t = Access::load(control().tail.value, std::memory_order_seq_cst);
  // relaxed: ordered after the tail load above.
  const LogIndex first = Access::load(line.reserve_first, std::memory_order_relaxed);
  const uint64_t count = std::min<uint64_t>(Access::load(line.reserve_count, std::memory_order_relaxed), geo_.slot_count);
  bool pending = false;
  for (LogIndex i = first; i < first + count && i < t; ++i) {
    const uint64_t want = (i >> lap_shift_) + 1;
    // acquire: as fill_noop.
    if ((Access::load(slot(i)->alive, std::memory_order_acquire) & shm::kAliveLapMask) >= want) continue;
    // Unpublished and reserved (below the tail). Its owner wrote a record covering it before its
    // CAS: if a live replica's record covers it, that one may be the owner (it publishes, or it
    // lost the CAS and moves on): leave it. Otherwise every candidate owner is fenced: fill it.
    uint64_t live = active_replicas();
    bool covered = false;
    while (live != 0 && !covered) {
      const auto r = static_cast<ReplicaId>(std::countr_zero(live));
      live &= live - 1;
      const shm::ReplicaLine& other = replica_line(r);
      // relaxed: a record stored before a CAS our tail load followed is visible (see above).
      const LogIndex f = Access::load(other.reserve_first, std::memory_order_relaxed);
      const uint64_t c = Access::load(other.reserve_count, std::memory_order_relaxed);
      covered = f <= i && i - f < c;
    }
    if (covered) {
      pending = true;
      continue;
    }
    fill_noop(i);
  }
  if (pending) return false;
  // The id is free again. A CAS: another fencer may have freed it and someone re-registered it.
  uint64_t fenced = static_cast<uint64_t>(shm::ReplicaState::kFenced);
  // relaxed: registration reads it under the GC lock, and the no-ops above are published by
  // their own CASes.
  (void)Access::compare_exchange(line.state, fenced, static_cast<uint64_t>(shm::ReplicaState::kFree),
                                 std::memory_order_relaxed, std::memory_order_relaxed);
  return true;
}

template <typename Access>
void BasicShmLog<Access>::crash_in_append_for_testing(uint64_t nth, uint32_t publish, bool kill) {
  crash_publish_.store(publish, std::memory_order_relaxed);
  crash_kill_.store(kill, std::memory_order_relaxed);
  crash_countdown_.store(nth, std::memory_order_relaxed);
}

// ---- Accessors that differ by mode --------------------------------------------------------------

template <typename Access>
LogIndex BasicShmLog<Access>::ctail() const {
  if (!noncoherent()) {
    // acquire: whoever raised ctail did so before producing the effects a reader then syncs past.
    return Access::load(control().ctail.value, std::memory_order_acquire);
  }
  // The highest proposal of every replica id ever registered (a replica that left keeps its
  // proposal there: ctail never goes back).
  shm::SequencerLine& seq = sequencer_line();
  refresh(&seq.ever, sizeof(seq.ever));
  // relaxed: only which lines to read; each proposal is acquired below.
  uint64_t ever = Access::load(seq.ever, std::memory_order_relaxed);
  LogIndex c = 0;
  while (ever != 0) {
    const auto r = static_cast<ReplicaId>(std::countr_zero(ever));
    ever &= ever - 1;
    if (r >= geo_.max_replicas) break;
    const uint64_t& started = ltail_line(r).started;
    refresh(&started, sizeof(started));
    // acquire: the proposal was published before the effects of the entries below it.
    c = std::max(c, Access::load(started, std::memory_order_acquire));
  }
  return c;
}

template <typename Access>
uint64_t BasicShmLog<Access>::payloads_live() const {
  if (!noncoherent()) return Access::load(control().payloads.live, std::memory_order_relaxed);
  uint64_t live = 0;
  const uint64_t fenced = fenced_replicas();
  for (uint64_t where = 0; where < geo_.payload_slots; ++where) {
    const shm::PayloadMeta& m = payload_meta(where);
    refresh(&m, sizeof(m));
    // acquire: |pending| below belongs to the generation in |state|.
    const uint64_t state = Access::load(m.state, std::memory_order_acquire);
    if ((state & shm::kPayloadPhaseMask) != shm::kPayloadLive) continue;
    if (!released_by_all(where, shm::payload_generation(state), Access::load(m.pending, std::memory_order_relaxed),
                         fenced)) {
      ++live;
    }
  }
  return live;
}

// ---- Noncoherent mode: clients ------------------------------------------------------------------

template <typename Access>
Result<typename BasicShmLog<Access>::ClientAnswer> BasicShmLog<Access>::client_call(uint64_t kind, uint64_t arg) {
  MutexLock lock(client_mu_);
  const uint64_t seq = ++client_seq_;
  shm::ClientRequestLine& q = client_request_line(client_);
  // relaxed: published by the release store of |seq|.
  Access::store(q.kind, kind, std::memory_order_relaxed);
  Access::store(q.arg, arg, std::memory_order_relaxed);
  // release: kind and arg are visible to whoever acquires this request number.
  Access::store(q.seq, seq, std::memory_order_release);
  publish(&q, sizeof(q));
  const shm::ClientResponseLine& a = client_response_line(client_);
  SpinWait wait(options_.full_timeout);
  std::chrono::steady_clock::time_point last_check{};
  for (;;) {
    try_sequencer_pass();
    refresh(&a, sizeof(a));
    // acquire: the answer's status and values were stored before its number.
    if (Access::load(a.seq, std::memory_order_acquire) == seq) break;
    if ((wait.spins() & 255) == 255) {
      // The sequencer's process gone from this host: it will never answer.
      const auto now = std::chrono::steady_clock::now();
      if (now - last_check >= liveness_period(lease_)) {
        last_check = now;
        NRX_RETURN_IF_ERROR(check_sequencer(/*silent_too=*/false));
      }
    }
    if (wait.expired()) {
      refresh(&sequencer_line(), sizeof(shm::SequencerLine));
      return Status::deadline_exceeded(
          "the sequencer of noncoherent shm log " + std::to_string(options_.log_id) + " (pid " +
          std::to_string(Access::load(sequencer_line().pid, std::memory_order_relaxed)) +
          ") did not answer client " + std::to_string(client_) + " within " +
          std::to_string(options_.full_timeout.count() / 1000000) + " ms (is it dead?)");
    }
    wait.pause();
  }
  ClientAnswer answer;
  // relaxed: ordered by the acquire of the answer's number above.
  answer.status = Access::load(a.status, std::memory_order_relaxed);
  for (int i = 0; i < 3; ++i) answer.value[i] = Access::load(a.value[i], std::memory_order_relaxed);
  return answer;
}

template <typename Access>
Result<ReplicaId> BasicShmLog<Access>::register_noncoherent() {
  // Our pid and host tag: the sequencer fences the replica at once when this process is gone
  // from its host.
  NRX_ASSIGN_OR_RETURN(const ClientAnswer answer,
                       client_call(shm::kClientJoin, shm::gc_lock_word(host_tag_, static_cast<uint32_t>(pid_))));
  if (answer.status == shm::kClientExhausted) {
    return Status::resource_exhausted("log " + std::to_string(options_.log_id) + " already has its " +
                                      std::to_string(geo_.max_replicas) + " replicas");
  }
  // The answer comes from another host: checked before use.
  if (answer.status != shm::kClientOk || answer.value[0] >= geo_.max_replicas) {
    return Status::data_loss("the sequencer answered a join with status " + std::to_string(answer.status) +
                             ", replica " + std::to_string(answer.value[0]));
  }
  const auto id = static_cast<ReplicaId>(answer.value[0]);
  const LogIndex start = answer.value[1];
  // The id's lines are ours now (the sequencer handed them over); the previous owner may have
  // been another host, so drop any stale copy before reading them.
  shm::LtailLine& line = ltail_line(id);
  refresh(&line, sizeof(line));
  // relaxed: our own line from now on; |started| never goes back (ctail is monotonic).
  const uint64_t started = Access::load(line.started, std::memory_order_relaxed);
  Access::store(line.value, start, std::memory_order_relaxed);
  Access::store(line.started, std::max(started, start), std::memory_order_relaxed);
  // release: the ltail above is visible to the sequencer before it trusts this incarnation.
  Access::store(line.incarnation, answer.value[2], std::memory_order_release);
  publish(&line, sizeof(line));
  shm::ReplicaLine& info = replica_line(id);
  refresh(&info, sizeof(info));
  // relaxed: informational, except |heartbeat| (the sequencer times it; any change will do);
  // published with the flush.
  Access::store(info.owner_pid, pid_, std::memory_order_relaxed);
  Access::store(info.host, host_tag_, std::memory_order_relaxed);
  Access::store(info.incarnation, answer.value[2], std::memory_order_relaxed);
  Access::store(info.state, static_cast<uint64_t>(shm::ReplicaState::kActive), std::memory_order_relaxed);
  Access::store(info.heartbeat, Access::load(info.heartbeat, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  publish(&info, sizeof(info));
  incarnation_[id] = answer.value[2];
  last_beat_ns_[id].store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  acknowledged_.fetch_and(~(uint64_t{1} << id), std::memory_order_relaxed);
  // Continue the request numbering of the id's previous owner (the sequencer remembers the last
  // number it answered per id).
  shm::RequestLine& q = request_line(id);
  shm::ResponseLine& a = response_line(id);
  refresh(&q, sizeof(q));
  refresh(&a, sizeof(a));
  // relaxed: numbers only compared.
  request_seq_[id] = std::max(Access::load(q.seq, std::memory_order_relaxed), Access::load(a.seq, std::memory_order_relaxed));
  // release: request_seq_[id] is written before an append on another thread may use the id.
  owned_.fetch_or(uint64_t{1} << id, std::memory_order_release);
  return id;
}

template <typename Access>
Status BasicShmLog<Access>::deregister_noncoherent(ReplicaId replica) {
  const uint64_t bit = uint64_t{1} << replica;
  // Fenced: the sequencer took the id (and released our payload holds); we only acknowledge (so
  // it can hand the id on) and forget it.
  auto forget_fenced = [&] {
    acknowledge_fencing(replica).ignore_error();
    owned_.fetch_and(~bit, std::memory_order_release);
    return ok_status();
  };
  if ((acknowledged_.load(std::memory_order_acquire) & bit) != 0 || fenced_mark_seen(replica)) return forget_fenced();
  // Drop what we hold first: our release marks are ours only while we own the id.
  for (uint64_t where = 0; where < geo_.payload_slots; ++where) {
    const shm::PayloadMeta& m = payload_meta(where);
    refresh(&m, sizeof(m));
    // acquire: |pending| belongs to the generation in |state|.
    const uint64_t state = Access::load(m.state, std::memory_order_acquire);
    if ((state & shm::kPayloadPhaseMask) != shm::kPayloadLive) continue;
    if ((Access::load(m.pending, std::memory_order_relaxed) & bit) == 0) continue;
    uint64_t& mark = release_mark(replica, where);
    const uint64_t generation = shm::payload_generation(state);
    // relaxed: our own mark.
    if (Access::load(mark, std::memory_order_relaxed) == generation) continue;
    // release: as payload_release.
    Access::store(mark, generation, std::memory_order_release);
    publish(&mark, sizeof(mark));
  }
  NRX_ASSIGN_OR_RETURN(const ClientAnswer answer, client_call(shm::kClientLeave, replica));
  if (answer.status != shm::kClientOk && fenced_mark_seen(replica)) return forget_fenced();  // fenced meanwhile
  if (answer.status != shm::kClientOk) {
    return Status::data_loss("the sequencer refused replica " + std::to_string(replica) + "'s leave (status " +
                             std::to_string(answer.status) + ")");
  }
  shm::ReplicaLine& info = replica_line(replica);
  // relaxed: informational.
  Access::store(info.state, static_cast<uint64_t>(shm::ReplicaState::kFree), std::memory_order_relaxed);
  publish(&info, sizeof(info));
  owned_.fetch_and(~bit, std::memory_order_release);
  return ok_status();
}

template <typename Access>
Result<PayloadRef> BasicShmLog<Access>::payload_put_noncoherent(std::span<const std::byte> data, uint64_t holders) {
  NRX_ASSIGN_OR_RETURN(const ClientAnswer answer, client_call(shm::kClientPayload, 0));
  if (answer.status == shm::kClientExhausted) {
    return Status::resource_exhausted("all " + std::to_string(geo_.payload_slots) + " payload slots are live");
  }
  if (answer.status != shm::kClientOk || answer.value[0] >= geo_.payload_slots || answer.value[1] == 0 ||
      answer.value[1] > UINT32_MAX) {
    return Status::data_loss("the sequencer answered a payload request with status " + std::to_string(answer.status) +
                             ", slot " + std::to_string(answer.value[0]));
  }
  const uint64_t where = answer.value[0];
  const auto generation = static_cast<uint32_t>(answer.value[1]);
  shm::PayloadMeta& m = payload_meta(where);
  // The slot is ours for this generation. Mark it filling first (a stale reference to the old
  // generation then fails its state check instead of reading the new bytes), then fill it.
  // relaxed + flush: the write-back's sfence orders it before the bytes below on x86.
  Access::store(m.state, shm::payload_state(generation, shm::kPayloadFilling), std::memory_order_relaxed);
  publish(&m, sizeof(m));
  std::memcpy(payload_bytes(where), data.data(), data.size());
  publish(payload_bytes(where), data.size());
  // relaxed: published by the release store of the live state.
  Access::store(m.length, data.size(), std::memory_order_relaxed);
  Access::store(m.pending, holders, std::memory_order_relaxed);
  // release: bytes, length and holders are visible to whoever acquires the live state.
  Access::store(m.state, shm::payload_state(generation, shm::kPayloadLive), std::memory_order_release);
  publish(&m, sizeof(m));
  return PayloadRef{where, static_cast<uint32_t>(data.size()), generation};
}

template <typename Access>
uint64_t BasicShmLog<Access>::fenced_replicas() const {
  const uint64_t& word = sequencer_line().fenced;
  refresh(&word, sizeof(word));
  // acquire: pairs with the sequencer's release when it clears an id (after storing the id's
  // release marks): a holder no longer listed here has its marks visible.
  return Access::load(word, std::memory_order_acquire);
}

template <typename Access>
bool BasicShmLog<Access>::released_by_all(uint64_t where, uint32_t generation, uint64_t holders,
                                          uint64_t fenced) const {
  holders &= ~fenced;  // their holds were released for them when they were fenced
  while (holders != 0) {
    const auto r = static_cast<ReplicaId>(std::countr_zero(holders));
    holders &= holders - 1;
    if (r >= geo_.max_replicas) return false;  // a corrupt mask: never free it
    const uint64_t& mark = release_mark(r, where);
    refresh(&mark, sizeof(mark));
    // acquire: the holder's reads of the bytes happen before whoever sees its mark reuses them.
    if (Access::load(mark, std::memory_order_acquire) != generation) return false;
  }
  return true;
}

// ---- Noncoherent mode: appending through the sequencer -------------------------------------------

template <typename Access>
Result<LogIndex> BasicShmLog<Access>::reserve_noncoherent(ReplicaId replica, uint64_t n, EntryVisitor apply_own) {
  shm::RequestLine& q = request_line(replica);
  const shm::ResponseLine& a = response_line(replica);
  uint64_t seq = 0;
  auto request = [&] {
    seq = ++request_seq_[replica];
    // relaxed: published by the release store of |seq|.
    Access::store(q.count, n, std::memory_order_relaxed);
    // release: |count| is visible to whoever acquires this request number.
    Access::store(q.seq, seq, std::memory_order_release);
    publish(&q, sizeof(q));
  };
  // The publish handshake (shm_log.h): |seq| stays in our request line until we ask again, which
  // we do only after publishing its grant or after the sequencer confirmed its withdrawal, so the
  // sequencer fills nothing of a grant while we may publish it; we publish only if the read that
  // delivers the grant shows no fenced mark (the mark shares the answer's line).
  bool fenced = false;
  auto answered = [&] {
    refresh(&a, sizeof(a));
    // acquire: the answer's status and first index were stored before its number.
    const bool done = Access::load(a.seq, std::memory_order_acquire) == seq;
    // acquire: a mark, once seen, is final for this incarnation.
    fenced = Access::load(a.fenced, std::memory_order_acquire) == incarnation_[replica];
    return done || fenced;
  };
  // A request is withdrawn for good (full past full_timeout, or an error), or only while we call
  // the lagging hook: the hook may exec another replica up to the CURRENT tail, which must not
  // cover a grant of ours that we would publish only after the hook returns (we would wait on
  // ourselves). So the hook runs with no request outstanding, and we ask again after it.
  enum class Withdrawal { kNone, kForHook, kFinal };
  Withdrawal withdrawal = Withdrawal::kNone;
  ReplicaId hook_for = 0;
  Status error;
  std::chrono::steady_clock::time_point last_check{};
  SpinWait wait(options_.full_timeout);     // the log-full deadline, across re-requests
  SpinWait confirm(options_.full_timeout);  // a withdrawal's answer
  bool confirm_extended = false;
  auto withdraw = [&](Withdrawal why) {
    // release: ordered after the request it withdraws.
    Access::store(q.cancel_seq, seq, std::memory_order_release);
    publish(&q, sizeof(q));
    withdrawal = why;
    confirm = SpinWait(options_.full_timeout);
    confirm_extended = false;
  };
  request();
  for (;;) {
    if (answered()) {
      // Fenced: never publish (even a grant the same read delivered); the sequencer fills it once
      // append acknowledges, and forgets our request when it frees the id.
      if (fenced) return fenced_error(replica);
      // relaxed: ordered by the acquire in answered().
      const uint64_t status = Access::load(a.status, std::memory_order_relaxed);
      const LogIndex first = Access::load(a.first, std::memory_order_relaxed);
      if (status == shm::kResponseGranted) return first;  // even if withdrawn: the grant came first
      if (status == shm::kResponseCancelled && withdrawal == Withdrawal::kForHook) {
        options_.on_lagging(options_.log_id, hook_for);  // nothing of ours is pending now
        withdrawal = Withdrawal::kNone;
        request();
        wait.pause();  // moves the full-log schedule (and its deadline check) on
        continue;
      }
      if (!error.ok()) return error;
      if (status == shm::kResponseCancelled) {
        ReplicaId laggard;
        (void)min_ltail(&laggard);
        return Status::deadline_exceeded("shm log " + std::to_string(options_.log_id) + " stayed full for " +
                                         std::to_string(options_.full_timeout.count() / 1000000) + " ms; replica " +
                                         std::to_string(laggard) + " is not advancing");
      }
      return Status::data_loss("the sequencer answered replica " + std::to_string(replica) +
                               "'s request with status " + std::to_string(status));
    }
    try_sequencer_pass();
    SpinWait& active_wait = withdrawal == Withdrawal::kNone ? wait : confirm;
    if ((active_wait.spins() & 255) == 255) {
      // A long wait (the log is full, or the sequencer is slow): show we live, and give up at once
      // if the sequencer's process is gone (it would never answer; nothing to withdraw from).
      (void)beat_noncoherent(replica, /*force=*/false, /*check_fenced=*/false);
      const auto now = std::chrono::steady_clock::now();
      if (now - last_check >= liveness_period(lease_)) {
        last_check = now;
        if (Status gone = check_sequencer(/*silent_too=*/false); !gone.ok()) return gone;
      }
    }
    if (withdrawal == Withdrawal::kNone && (wait.spins() & 15) == 15) {
      // Full? Our own replica may be behind: apply it (as the coherent path does), then nudge
      // whoever holds the head back. The sequencer grants once the head moves. The tail is read
      // BEFORE checking for our answer: the sequencer writes a grant before the tail covering
      // it, so a tail read before an unanswered check never covers our own (unwritten) entries.
      ReplicaId laggard;
      const LogIndex t = tail();
      if (answered()) continue;  // handled above
      const LogIndex head = min_ltail(&laggard);
      if (t + n > head + geo_.slot_count) {
        if (Result<LogIndex> applied = apply_until(replica, t, apply_own); !applied.ok()) {
          error = applied.status();
        } else if (laggard != replica && options_.on_lagging) {
          hook_for = laggard;
          withdraw(Withdrawal::kForHook);
          continue;
        }
      }
    }
    if (withdrawal == Withdrawal::kNone && (wait.expired() || !error.ok())) {
      withdraw(Withdrawal::kFinal);  // the sequencer confirms (or had granted it already)
      continue;
    }
    if (withdrawal != Withdrawal::kNone && confirm.expired()) {
      if (withdrawal == Withdrawal::kForHook && !confirm_extended) {
        // Slow to confirm a withdrawal made only for the hook: one more full_timeout rather than
        // give up on a request a stalled sequencer might still grant (see "Residual risks").
        confirm_extended = true;
        confirm = SpinWait(options_.full_timeout);
        continue;
      }
      return Status::deadline_exceeded(
          "noncoherent shm log " + std::to_string(options_.log_id) + ": no answer for replica " +
          std::to_string(replica) + "'s withdrawn request within full_timeout (" +
          std::to_string(options_.full_timeout.count() / 1000000) + " ms): is the sequencer dead?");
    }
    active_wait.pause();
  }
}

// ---- Noncoherent mode: the sequencer ------------------------------------------------------------

// The sequencer's own state (BasicShmLog::Sequencer, defined in shm_log.h): only in the creator's
// memory, guarded by its |mu| (the thread and the creator's waiting calls take turns). Nothing
// there is shared with other hosts except through the lines it writes.


template <typename Access>
void BasicShmLog<Access>::try_sequencer_pass() {
  Sequencer* s = sequencer_.get();
  if (s == nullptr || sequencer_stop_.load(std::memory_order_acquire) || !s->mu.try_lock()) return;
  sequencer_pass_locked(*s);
  s->mu.unlock();
}

template <typename Access>
void BasicShmLog<Access>::sequencer_main() {
  Sequencer& s = *sequencer_;
  uint64_t idle = 0;
  // acquire: pairs with stop_sequencer()'s release.
  while (!sequencer_stop_.load(std::memory_order_acquire)) {
    bool worked;
    {
      MutexLock lock(s.mu);
      worked = sequencer_pass_locked(s);
    }
    if (worked) {
      idle = 0;
    } else if (++idle < 64) {
      cpu_relax();
    } else if (idle < 16384) {
      // yield: gives the core to appenders on a busy machine, yet answers within a pass.
      std::this_thread::yield();
    } else {
      // Idle for a while (milliseconds): nap. A request then waits up to this long (the
      // creator's own waits run passes inline).
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
}

template <typename Access>
void BasicShmLog<Access>::publish_membership_locked(Sequencer& s) {
  shm::SequencerLine& line = sequencer_line();
  // relaxed: our own line (nobody else writes it).
  if (Access::load(line.active, std::memory_order_relaxed) == s.active &&
      Access::load(line.ever, std::memory_order_relaxed) == s.ever &&
      Access::load(line.fenced, std::memory_order_relaxed) == s.fenced) {
    return;
  }
  // release (each): what the sequencer read or wrote to decide (ltails, release marks) happens
  // before anyone acting on the new values.
  Access::store(line.ever, s.ever, std::memory_order_release);
  Access::store(line.fenced, s.fenced, std::memory_order_release);
  Access::store(line.active, s.active, std::memory_order_release);
  publish(&line, sizeof(line));
}

template <typename Access>
LogIndex BasicShmLog<Access>::sequencer_head_locked(Sequencer& s) {
  LogIndex head = s.tail;
  uint64_t active_mask = s.active;
  while (active_mask != 0) {
    const auto r = static_cast<ReplicaId>(std::countr_zero(active_mask));
    active_mask &= active_mask - 1;
    const shm::LtailLine& line = ltail_line(r);
    refresh(&line, sizeof(line));
    // acquire: the owner stored the ltail before this incarnation, and finished reading the
    // slots below its ltail before storing it (we may hand them to a new writer next).
    const LogIndex l = Access::load(line.incarnation, std::memory_order_acquire) == s.incarnation[r]
                           ? Access::load(line.value, std::memory_order_acquire)
                           : s.join_start[r];
    head = std::min(head, l);
  }
  return head;
}

template <typename Access>
bool BasicShmLog<Access>::sequencer_pass_locked(Sequencer& s) {
  s.answers.clear();
  bool changed = false;  // tail or membership: the SequencerLine must be published
  const auto now = std::chrono::steady_clock::now();
  // 0. Liveness (rate-limited): fence dead replicas before computing any head below, and move
  // pending fencings on.
  if (now - s.last_liveness >= liveness_period(lease_)) {
    s.last_liveness = now;
    sequencer_liveness_locked(s, lease_, now);
  }
  // 1. Client requests (joins, leaves, payload slots): every 4th pass; reservations are hotter.
  if (s.passes++ % 8 == 0) {
    // One invalidation (one fence) for the whole contiguous array of client request lines.
    refresh(&client_request_line(0), shm::kMaxClients * sizeof(shm::ClientRequestLine));
    for (uint32_t c = 0; c < shm::kMaxClients; ++c) {
      const shm::ClientRequestLine& q = client_request_line(c);
      // acquire: the client stored kind and arg before the number.
      const uint64_t seq = Access::load(q.seq, std::memory_order_acquire);
      if (seq == s.client_answered[c]) continue;
      s.client_answered[c] = seq;
      // relaxed: ordered by the acquire above.
      const uint64_t kind = Access::load(q.kind, std::memory_order_relaxed);
      const uint64_t arg = Access::load(q.arg, std::memory_order_relaxed);
      typename Sequencer::Answer answer{true, c, seq, shm::kClientRejected, {0, 0, 0}};
      if (kind == shm::kClientJoin) {
        // A fenced id comes back only once free (its zombie can write no more): free what can be.
        uint64_t victims = s.fenced;
        while (victims != 0) {
          const auto v = static_cast<ReplicaId>(std::countr_zero(victims));
          victims &= victims - 1;
          resolve_victim_locked(s, v, now);
        }
        const auto id = static_cast<ReplicaId>(std::countr_one(s.active | s.fenced));
        if (id >= geo_.max_replicas) {
          answer.status = shm::kClientExhausted;
        } else {
          // Start at head (the ring's rule). Only this thread grants, so no reservation can
          // pass start + slot_count before the new replica's ltail is counted.
          const LogIndex start = sequencer_head_locked(s);
          s.incarnation[id] += 1;
          s.join_start[id] = start;
          s.owner[id] = c;
          s.owner_pid[id] = arg & UINT32_MAX;  // gc_lock_word(host tag, pid)
          s.owner_host[id] = arg >> shm::kGcLockHostShift;
          s.grant_seq[id] = 0;  // no grant of this incarnation yet
          s.grant_count[id] = 0;
          s.active |= uint64_t{1} << id;
          s.ever |= uint64_t{1} << id;
          changed = true;
          answer.status = shm::kClientOk;
          answer.value[0] = id;
          answer.value[1] = start;
          answer.value[2] = s.incarnation[id];
        }
      } else if (kind == shm::kClientLeave) {
        if (arg < geo_.max_replicas && ((s.active >> arg) & 1) != 0 && s.owner[arg] == c) {
          s.active &= ~(uint64_t{1} << arg);
          changed = true;
          answer.status = shm::kClientOk;
        }
      } else if (kind == shm::kClientPayload) {
        answer.status = shm::kClientExhausted;
        for (uint64_t k = 0; k < geo_.payload_slots; ++k) {
          const uint64_t where = (s.payload_hint + k) % geo_.payload_slots;
          const uint64_t generation = s.payload_generation[where];
          if (generation != 0) {
            // Free once its grantee made it live and every holder released that generation.
            const shm::PayloadMeta& m = payload_meta(where);
            refresh(&m, sizeof(m));
            // acquire: |pending| belongs to the state's generation.
            if (Access::load(m.state, std::memory_order_acquire) !=
                    shm::payload_state(static_cast<uint32_t>(generation), shm::kPayloadLive) ||
                !released_by_all(where, static_cast<uint32_t>(generation),
                                 Access::load(m.pending, std::memory_order_relaxed), s.fenced)) {
              continue;
            }
          }
          uint64_t next = (generation + 1) & UINT32_MAX;
          if (next == 0) next = 1;  // generation 0 means "never granted"
          s.payload_generation[where] = next;
          s.payload_hint = where + 1;
          answer.status = shm::kClientOk;
          answer.value[0] = where;
          answer.value[1] = next;
          break;
        }
      }
      s.answers.push_back(answer);
    }
  }
  // 2. Reservations, round-robin from the first request that did not fit last time. A request that
  // does not fit waits, but does not hold back smaller ones that fit: its replica may be waiting
  // for theirs (a laggard applies its own entries only once IT finds the log full), so strict
  // order could deadlock two full appenders until full_timeout.
  bool head_fresh = false;
  bool blocked = false;
  // One invalidation (one fence) for the whole contiguous array of request lines.
  refresh(&request_line(0), geo_.max_replicas * sizeof(shm::RequestLine));
  LogIndex head = 0;
  for (uint32_t k = 0; k < geo_.max_replicas; ++k) {
    const uint32_t r = (s.next_replica + k) % geo_.max_replicas;
    if (((s.active >> r) & 1) == 0) continue;
    const shm::RequestLine& q = request_line(r);
    // acquire: the appender stored the count before the number.
    const uint64_t seq = Access::load(q.seq, std::memory_order_acquire);
    if (seq == s.answered[r]) continue;
    // relaxed: ordered by the acquire above.
    const uint64_t count = Access::load(q.count, std::memory_order_relaxed);
    const uint64_t cancel = Access::load(q.cancel_seq, std::memory_order_relaxed);
    typename Sequencer::Answer answer{false, r, seq, shm::kResponseRejected, {0, 0, 0}};
    if (cancel == seq) {
      answer.status = shm::kResponseCancelled;
    } else if (count != 0 && count <= geo_.slot_count) {
      if (!head_fresh || s.tail + count > head + geo_.slot_count) {
        head = sequencer_head_locked(s);
        head_fresh = true;
      }
      if (s.tail + count > head + geo_.slot_count) {
        if (!blocked) s.next_replica = r;  // full: the first blocked request goes first next time
        blocked = true;
        continue;
      }
      answer.status = shm::kResponseGranted;
      answer.value[0] = s.tail;
      // Remembered for fencing: the only range of r that may still be unpublished.
      s.grant_seq[r] = seq;
      s.grant_first[r] = s.tail;
      s.grant_count[r] = count;
      s.tail += count;
      if (!blocked) s.next_replica = (r + 1) % geo_.max_replicas;
      changed = true;
    }
    s.answered[r] = seq;
    s.answers.push_back(answer);
  }
  // 3. Publish, in this order: membership (a joiner must find itself in the active mask once
  // answered), the answers, then the tail. A grant is written BEFORE the tail covering it: an
  // appender waiting for its grant reads the tail, then its answer, and applies up to that tail
  // only when unanswered (it must never wait for its own unwritten entries); an appender that got
  // its grant waits for the tail to cover it before returning (so a later exec sees it).
  shm::SequencerLine& line = sequencer_line();
  publish_membership_locked(s);
  for (const typename Sequencer::Answer& answer : s.answers) {
    if (answer.client) {
      shm::ClientResponseLine& a = client_response_line(answer.who);
      // relaxed: published by the release store of the number.
      Access::store(a.status, answer.status, std::memory_order_relaxed);
      for (int i = 0; i < 3; ++i) Access::store(a.value[i], answer.value[i], std::memory_order_relaxed);
      // release: status and values (and the SequencerLine above) before the number.
      Access::store(a.seq, answer.seq, std::memory_order_release);
      publish(&a, sizeof(a));
    } else {
      shm::ResponseLine& a = response_line(answer.who);
      // relaxed: published by the release store of the number.
      Access::store(a.status, answer.status, std::memory_order_relaxed);
      Access::store(a.first, answer.value[0], std::memory_order_relaxed);
      // release: status, first index and the tail covering them before the number.
      Access::store(a.seq, answer.seq, std::memory_order_release);
      publish(&a, sizeof(a));
    }
  }
  // The heartbeat changes at least every millisecond (sharers time it with their own lease).
  if (changed || now - s.last_beat >= std::chrono::milliseconds(1)) {
    s.last_beat = now;
    // relaxed: a liveness hint only.
    Access::store(line.heartbeat, ++s.beats, std::memory_order_relaxed);
    // release: the grants above (and the ltails read to make them) before the tail covering them.
    Access::store(line.tail, s.tail, std::memory_order_release);
    publish(&line, sizeof(line));
  }
  return !s.answers.empty();
}

// ---- Noncoherent mode: crash fencing ------------------------------------------------------------
// The protocol and its argument are in shm_log.h ("Crash fencing, noncoherent mode"). Every store
// below is a plain single-writer store on a line its writer owns at that moment, flushed.

template <typename Access>
std::chrono::nanoseconds BasicShmLog<Access>::liveness_period(std::chrono::nanoseconds lease) {
  // lease / 8 (a death is seen within ~1/8 lease of the lease running out), but at least 1 ms
  // (pid tests read /proc) and at most 50 ms (a gone pid is found quickly even under a long lease).
  return std::clamp<std::chrono::nanoseconds>(lease / 8, std::chrono::milliseconds(1), std::chrono::milliseconds(50));
}

template <typename Access>
bool BasicShmLog<Access>::fenced_mark_seen(ReplicaId replica) const {
  const uint64_t& mark = response_line(replica).fenced;
  refresh(&mark, sizeof(mark));
  // acquire: the sequencer's decisions about this incarnation (membership, no-ops) come first.
  return Access::load(mark, std::memory_order_acquire) == incarnation_[replica];
}

template <typename Access>
Status BasicShmLog<Access>::acknowledge_fencing(ReplicaId replica) {
  const uint64_t bit = uint64_t{1} << replica;
  MutexLock lock(ack_mu_);  // no heartbeat() or payload_release of ours is mid-write on the id now
  if ((acknowledged_.load(std::memory_order_relaxed) & bit) == 0) {
    shm::RequestLine& q = request_line(replica);
    // release: every store of ours to the id's lines and slots happens before the sequencer,
    // seeing the ack, fills our unpublished indices and hands the id on.
    Access::store(q.fence_ack, incarnation_[replica], std::memory_order_release);
    publish(&q, sizeof(q));
    acknowledged_.fetch_or(bit, std::memory_order_release);
  }
  return fenced_error(replica);
}

template <typename Access>
bool BasicShmLog<Access>::beat_noncoherent(ReplicaId replica, bool force, bool check_fenced) {
  // Rate-limited by our own clock: an invalidation and a flush per operation would cost more than
  // the sequencer needs (it times a lease of at least milliseconds).
  const int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
  std::atomic<int64_t>& last = last_beat_ns_[replica];
  // relaxed: a rate limit only; two threads beating at once just both beat.
  if (!force && now - last.load(std::memory_order_relaxed) < std::chrono::nanoseconds(std::chrono::milliseconds(1)).count()) {
    return true;
  }
  if (check_fenced && fenced_mark_seen(replica)) return false;  // never beat for a zombie
  last.store(now, std::memory_order_relaxed);
  uint64_t& word = replica_line(replica).heartbeat;
  // relaxed: any change shows we live; our own line (threads of this process may race: one
  // increment may be lost, the word still changes).
  Access::store(word, Access::load(word, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  publish(&word, sizeof(word));
  return true;
}

template <typename Access>
Status BasicShmLog<Access>::check_sequencer(bool silent_too) {
  if (sequencer_ != nullptr) {
    if (!sequencer_stop_.load(std::memory_order_acquire)) return ok_status();
    return Status::unavailable("the sequencer of noncoherent shm log " + std::to_string(options_.log_id) +
                               " was stopped (stop_sequencer): the log cannot go on without it");
  }
  const shm::SequencerLine& line = sequencer_line();
  refresh(&line, sizeof(line));
  // relaxed (all): the creator wrote pid and host before the header's magic; the heartbeat is
  // only compared with the previous look.
  const uint64_t pid = Access::load(line.pid, std::memory_order_relaxed);
  const uint64_t host = Access::load(line.host, std::memory_order_relaxed);
  const uint64_t beat = Access::load(line.heartbeat, std::memory_order_relaxed);
  if (host == host_tag_ && nrx::pid_gone(pid)) {
    return Status::unavailable("the sequencer's process (pid " + std::to_string(pid) + ") of noncoherent shm log " +
                               std::to_string(options_.log_id) +
                               " died: a noncoherent log cannot survive its creator; re-create it");
  }
  if (!silent_too) return ok_status();
  const auto now = std::chrono::steady_clock::now();
  MutexLock lock(fence_mu_);
  Observation& o = sequencer_observed_;
  if (!o.valid || o.heartbeat != beat) {
    o = Observation{0, beat, now, true};
    return ok_status();
  }
  if (now - o.since < lease_) return ok_status();
  return Status::unavailable("the sequencer (pid " + std::to_string(pid) + (host == host_tag_ ? "" : ", another host") +
                             ") of noncoherent shm log " + std::to_string(options_.log_id) +
                             " has shown no heartbeat for the lease (" +
                             std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(lease_).count()) +
                             " ms): it is dead or stopped, and a noncoherent log cannot survive it");
}

template <typename Access>
void BasicShmLog<Access>::sequencer_liveness_locked(Sequencer& s, std::chrono::nanoseconds lease,
                                                    std::chrono::steady_clock::time_point now) {
  uint64_t live = s.active;
  while (live != 0) {
    const auto r = static_cast<ReplicaId>(std::countr_zero(live));
    live &= live - 1;
    if (s.owner[r] == client_) continue;  // ours: alive while we run
    bool dead = s.owner_host[r] == host_tag_ && nrx::pid_gone(s.owner_pid[r]);
    const uint64_t& word = replica_line(r).heartbeat;
    refresh(&word, sizeof(word));
    // relaxed: only compared with the previous look.
    const uint64_t beat = Access::load(word, std::memory_order_relaxed);
    Observation& o = s.observed[r];
    if (!o.valid || o.incarnation != s.incarnation[r] || o.heartbeat != beat) {
      o = Observation{s.incarnation[r], beat, now, true};  // the first look only starts the timer
    } else if (now - o.since >= lease) {
      dead = true;
    }
    if (!dead) continue;
    o.valid = false;
    fence_noncoherent_locked(s, r, lease, now);
  }
  uint64_t victims = s.fenced;
  while (victims != 0) {
    const auto v = static_cast<ReplicaId>(std::countr_zero(victims));
    victims &= victims - 1;
    resolve_victim_locked(s, v, now);
  }
}

template <typename Access>
void BasicShmLog<Access>::fence_noncoherent_locked(Sequencer& s, ReplicaId victim, std::chrono::nanoseconds lease,
                                                   std::chrono::steady_clock::time_point now) {
  const uint64_t bit = uint64_t{1} << victim;
  typename Sequencer::Victim& v = s.victims[victim];
  v = typename Sequencer::Victim{};
  v.pending = true;
  v.incarnation = s.incarnation[victim];
  v.grant_seq = s.grant_seq[victim];
  v.grant_first = s.grant_first[victim];
  v.grant_count = s.grant_count[victim];
  v.fenced_at = now;
  v.lease = lease;
  // Out of the GC minimum and of every holder set; its requests are no longer served. The bump
  // keeps the zombie's LtailLine (still at the old incarnation) from ever being trusted again.
  s.active &= ~bit;
  s.fenced |= bit;
  s.incarnation[victim] += 1;
  fenced_count_.fetch_add(1, std::memory_order_relaxed);
  publish_membership_locked(s);
  shm::ResponseLine& a = response_line(victim);
  // release: the new membership (just published) comes before anyone acting on the mark.
  Access::store(a.fenced, v.incarnation, std::memory_order_release);
  publish(&a, sizeof(a));
  resolve_victim_locked(s, victim, now);
}

template <typename Access>
void BasicShmLog<Access>::resolve_victim_locked(Sequencer& s, ReplicaId victim,
                                                std::chrono::steady_clock::time_point now) {
  typename Sequencer::Victim& v = s.victims[victim];
  if (!v.pending) return;
  const shm::RequestLine& q = request_line(victim);
  refresh(&q, sizeof(q));
  // acquire (both): the owner's alive stores precede its next request and its ack (release).
  const uint64_t seq = Access::load(q.seq, std::memory_order_acquire);
  const bool acked = Access::load(q.fence_ack, std::memory_order_acquire) == v.incarnation;
  const bool gone = acked || (s.owner_host[victim] == host_tag_ && nrx::pid_gone(s.owner_pid[victim]));
  if (!v.slots_done) {
    bool unpublished = false;
    for (uint64_t k = 0; k < v.grant_count && !unpublished; ++k) {
      const shm::SlotHeader* slot_header = slot(v.grant_first + k);
      refresh(&slot_header->alive, sizeof(slot_header->alive));
      // acquire: as a reader's.
      unpublished = (Access::load(slot_header->alive, std::memory_order_acquire) & shm::kAliveLapMask) <
                    ((v.grant_first + k) >> lap_shift_) + 1;
    }
    // The handshake: while its request number is still the grant's, the owner may be publishing
    // it; fill only once it moved on (i), acknowledged (ii), died (iii), or one more lease has
    // passed (iv, the residual risk).
    const bool may_publish = v.grant_count != 0 && seq == v.grant_seq;
    if (!unpublished) {
      v.slots_done = true;
    } else if (!may_publish || gone || now - v.fenced_at >= v.lease) {
      for (uint64_t k = 0; k < v.grant_count; ++k) {
        const LogIndex index = v.grant_first + k;
        shm::SlotHeader* slot_header = slot(index);
        const uint64_t want = (index >> lap_shift_) + 1;
        refresh(&slot_header->alive, sizeof(slot_header->alive));
        // acquire: a published entry stays; only a hole of this lap becomes a no-op.
        if ((Access::load(slot_header->alive, std::memory_order_acquire) & shm::kAliveLapMask) >= want) continue;
        // release: the fencing (membership, published above) before a reader skipping the no-op
        // acts on a head that no longer counts the victim.
        Access::store(slot_header->alive, want | shm::kAliveNoop, std::memory_order_release);
        publish(&slot_header->alive, sizeof(slot_header->alive));
      }
      v.slots_done = true;
    }
  }
  if (v.slots_done && gone) free_victim_locked(s, victim);
}

template <typename Access>
void BasicShmLog<Access>::free_victim_locked(Sequencer& s, ReplicaId victim) {
  const uint64_t bit = uint64_t{1} << victim;
  // The id's lines have no other writer now (its owner acknowledged or died): we release, in its
  // own marks, every live payload it still holds, so readers no longer need the |fenced| bit.
  for (uint64_t where = 0; where < geo_.payload_slots; ++where) {
    const shm::PayloadMeta& m = payload_meta(where);
    refresh(&m, sizeof(m));
    // acquire: |pending| belongs to the generation in |state|.
    const uint64_t state = Access::load(m.state, std::memory_order_acquire);
    if ((state & shm::kPayloadPhaseMask) != shm::kPayloadLive) continue;
    if ((Access::load(m.pending, std::memory_order_relaxed) & bit) == 0) continue;
    uint64_t& mark = release_mark(victim, where);
    const uint64_t generation = shm::payload_generation(state);
    refresh(&mark, sizeof(mark));
    // relaxed: only compared; the zombie's last store is ordered by the ack we acquired.
    if (Access::load(mark, std::memory_order_relaxed) == generation) continue;
    // release: published before the |fenced| bit clears (publish_membership_locked, release).
    Access::store(mark, generation, std::memory_order_release);
    publish(&mark, sizeof(mark));
  }
  // Its last request (unanswered: it was fenced meanwhile) must not be granted to the next owner.
  const shm::RequestLine& q = request_line(victim);
  refresh(&q, sizeof(q));
  // relaxed: the number is only compared; nobody writes the line any more.
  s.answered[victim] = Access::load(q.seq, std::memory_order_relaxed);
  s.fenced &= ~bit;
  s.victims[victim].pending = false;
  publish_membership_locked(s);
}

}  // namespace nrx::logs
