// The member definitions of BasicShmLog<Access> (logs/shm/shm_log.h). Private to the backend:
// included by shm_log.cc, which instantiates ShmLog (CoherentAccess), and by tests that
// instantiate the log over another Access policy (e.g. one that counts read-modify-writes).
// Control path (create, attach, membership) first, then the data path (append, exec, payloads).
#pragma once

#include <time.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <new>
#include <string>
#include <utility>

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
  if (shm.mode == ShmMode::kNoncoherent) return Status::unavailable("noncoherent mode comes later");
  if (shm.mode != ShmMode::kCoherent) {
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
  Access::flush(base, g.payload_data_offset);
  // release: the header and the zeroed sections are visible to whoever acquires the magic.
  Access::store(*reinterpret_cast<uint64_t*>(base), shm::kMagic, std::memory_order_release);
  Access::flush(base, sizeof(uint64_t));
  options.numa_node = kNumaLocal;  // placement belongs to whoever mapped the region
  return std::unique_ptr<BasicShmLog>(
      new BasicShmLog(base, g, std::move(options), shm.cluster_id, epoch, std::move(shm.keep_alive)));
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
  LogOptions o;
  o.log_id = header.log_id;
  o.entry_size = g.entry_size;
  o.slot_count = g.slot_count;
  o.max_replicas = g.max_replicas;
  o.payload_slots = g.payload_slots;
  o.full_timeout = options.full_timeout;
  o.on_lagging = std::move(options.on_lagging);
  o.numa_node = kNumaLocal;
  return std::unique_ptr<BasicShmLog>(
      new BasicShmLog(base, g, std::move(o), header.cluster_id, header.epoch, std::move(options.keep_alive)));
}

template <typename Access>
BasicShmLog<Access>::BasicShmLog(std::byte* base, const shm::Geometry& geo, LogOptions options, uint64_t cluster_id,
                                 uint64_t epoch, std::shared_ptr<void> keep_alive)
    : base_(base),
      geo_(geo),
      mask_(uint64_t{geo.slot_count} - 1),
      lap_shift_(static_cast<unsigned>(std::countr_zero(geo.slot_count))),
      options_(std::move(options)),
      cluster_id_(cluster_id),
      epoch_(epoch),
      pid_(static_cast<uint64_t>(getpid())),
      keep_alive_(std::move(keep_alive)) {}

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
  return Access::compare_exchange(control().membership.gc_lock, expected, pid_, std::memory_order_acquire,
                                  std::memory_order_relaxed);
}

template <typename Access>
Status BasicShmLog<Access>::lock_gc() {
  SpinWait wait(options_.full_timeout);
  while (!try_lock_gc()) {
    if (wait.expired()) {
      return Status::unavailable("the GC lock of shm log " + std::to_string(options_.log_id) +
                                 " stayed held by pid " +
                                 std::to_string(Access::load(control().membership.gc_lock, std::memory_order_relaxed)) +
                                 " (did it die inside it?)");
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
  NRX_RETURN_IF_ERROR(lock_gc());
  // relaxed: |active| changes only under the GC lock, which we hold.
  const uint64_t active_mask = Access::load(control().membership.active, std::memory_order_relaxed);
  const auto id = static_cast<ReplicaId>(std::countr_one(active_mask));
  if (id >= geo_.max_replicas) {
    unlock_gc();
    return Status::resource_exhausted("log " + std::to_string(options_.log_id) + " already has its " +
                                      std::to_string(geo_.max_replicas) + " replicas");
  }
  // Start at head (the ring's rule): the lowest ltail of the others, or the tail when alone. The
  // head cannot rise past it while we hold the lock, and every reservation so far stayed below
  // cached head + slot_count <= start + slot_count, so the slots from start on are intact.
  ReplicaId unused;
  const LogIndex start = min_ltail(&unused);
  Access::store(ltail_line(id).value, start, std::memory_order_relaxed);
  shm::ReplicaLine& line = replica_line(id);
  Access::store(line.owner_pid, pid_, std::memory_order_relaxed);
  Access::fetch_add(line.incarnation, 1, std::memory_order_relaxed);
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
  NRX_RETURN_IF_ERROR(lock_gc());
  const uint64_t bit = uint64_t{1} << replica;
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
  uint64_t& tail_word = control().tail.value;
  SpinWait wait(options_.full_timeout);
  LogIndex first = Access::load(tail_word, std::memory_order_relaxed);
  for (;;) {
    // acquire: pairs with the release store of a raise, so the slots below head were fully read.
    LogIndex head = Access::load(control().head.value, std::memory_order_acquire);
    if (first + n > head + capacity) {
      ReplicaId laggard;
      head = refresh_head(&laggard);
      if (first + n > head + capacity) {
        // Full. Our own replica may be the one behind: apply its entries first (NR's append does
        // the same), then nudge whoever still holds the head back.
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
        }
        first = Access::load(tail_word, std::memory_order_relaxed);
        continue;
      }
    }
    // The single atomic step that reserves the whole batch. relaxed on success: the entries are
    // published by their own alive markers, not by the tail.
    if (Access::compare_exchange(tail_word, first, first + n, std::memory_order_relaxed, std::memory_order_relaxed)) {
      break;
    }
  }

  for (uint64_t i = 0; i < n; ++i) {
    const LogIndex index = first + i;
    shm::SlotHeader* s = slot(index);
    std::byte* bytes = reinterpret_cast<std::byte*>(s) + sizeof(shm::SlotHeader);
    std::memcpy(bytes, batch[i].data(), batch[i].size());
    s->writer = replica;
    s->length = static_cast<uint32_t>(batch[i].size());
    Access::flush(s, sizeof(shm::SlotHeader) + batch[i].size());
    // release: the entry bytes, writer and length are visible before the marker says "live".
    Access::store(s->alive, (index >> lap_shift_) + 1, std::memory_order_release);
    Access::flush(&s->alive, sizeof(s->alive));
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
  uint64_t& ctail_word = control().ctail.value;
  LogIndex c = Access::load(ctail_word, std::memory_order_relaxed);
  // release: orders the raise before the effects this replica is about to produce.
  while (c < to && !Access::compare_exchange(ctail_word, c, to, std::memory_order_release, std::memory_order_relaxed)) {
  }
  Status error;
  for (; i < to; ++i) {
    const shm::SlotHeader* s = slot(i);
    const uint64_t want = (i >> lap_shift_) + 1;
    // acquire: pairs with the appender's release store; the entry is complete once we see it.
    // No timeout (log.h): an appender publishes right after reserving; a dead one is fenced.
    SpinWait wait;
    uint64_t alive;
    for (;;) {
      Access::invalidate(&s->alive, sizeof(s->alive));
      alive = Access::load(s->alive, std::memory_order_acquire);
      if (alive >= want) break;
      wait.pause();
    }
    if (alive != want) {
      error = Status::data_loss("shm log " + std::to_string(options_.log_id) + " slot of index " + std::to_string(i) +
                                " holds lap " + std::to_string(alive) + ", expected " + std::to_string(want) +
                                ": overwritten before replica " + std::to_string(replica) + " read it (corrupt region)");
      break;
    }
    Access::invalidate(s, sizeof(shm::SlotHeader));
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
    Access::invalidate(bytes, length);
    const Entry entry{i, writer, std::span<const std::byte>(bytes, length)};
    if constexpr (std::is_same_v<Visitor, StoppingVisitor>) {
      if (!visitor(entry)) break;
    } else {
      visitor(entry);
    }
  }
  if (i != from) {
    // release: our reads of the slots above happen before an appender that sees this ltail reuses them.
    Access::store(ltail_word, i, std::memory_order_release);
    Access::flush(&ltail_word, sizeof(ltail_word));
  }
  if (!error.ok()) return error;
  return i;
}

template <typename Access>
Result<LogIndex> BasicShmLog<Access>::exec(ReplicaId replica, EntryVisitor visitor) {
  if (!owned(replica)) return not_owned(replica);
  return apply_until(replica, tail(), visitor);
}

template <typename Access>
Result<LogIndex> BasicShmLog<Access>::exec_while(ReplicaId replica, StoppingVisitor visitor) {
  if (!owned(replica)) return not_owned(replica);
  return apply_until(replica, tail(), visitor);
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
    Access::flush(payload_bytes(where), data.size());
    Access::store(m.length, data.size(), std::memory_order_relaxed);
    Access::store(m.pending, holders, std::memory_order_relaxed);
    // release: bytes, length and pending are visible to whoever acquires the live state.
    Access::store(m.state, shm::payload_state(generation, shm::kPayloadLive), std::memory_order_release);
    Access::flush(&m, sizeof(m));
    Access::fetch_add(line.live, 1, std::memory_order_relaxed);
    return PayloadRef{where, static_cast<uint32_t>(data.size()), generation};
  }
  return Status::resource_exhausted("all " + std::to_string(geo_.payload_slots) + " payload slots are live");
}

template <typename Access>
Result<std::span<const std::byte>> BasicShmLog<Access>::payload_get(PayloadRef ref) const {
  if (ref.where >= geo_.payload_slots) return Status::not_found("payload reference out of range");
  const shm::PayloadMeta& m = payload_meta(ref.where);
  Access::invalidate(&m, sizeof(m));
  // acquire: pairs with payload_put's release of the live state.
  const uint64_t state = Access::load(m.state, std::memory_order_acquire);
  if (state != shm::payload_state(ref.generation, shm::kPayloadLive)) {
    return Status::not_found("stale payload reference");
  }
  const uint64_t length = Access::load(m.length, std::memory_order_relaxed);
  if (length != ref.length || length == 0 || length > geo_.payload_slot_bytes) {
    return Status::not_found("stale payload reference");
  }
  Access::invalidate(payload_bytes(ref.where), length);
  return std::span<const std::byte>(payload_bytes(ref.where), length);
}

template <typename Access>
Status BasicShmLog<Access>::payload_release(ReplicaId replica, PayloadRef ref) {
  if (!owned(replica)) return not_owned(replica);
  if (ref.where >= geo_.payload_slots) return Status::not_found("payload reference out of range");
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
    Access::flush(&m, sizeof(m));
    Access::fetch_sub(control().payloads.live, 1, std::memory_order_relaxed);
  }
  return ok_status();
}

}  // namespace nrx::logs
