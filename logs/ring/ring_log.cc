#include "logs/ring/ring_log.h"

#include <numa.h>
#include <sys/mman.h>

#include <bit>
#include <cstring>
#include <new>
#include <string>

#include "base/spin.h"

namespace nrx::logs {
namespace {

constexpr uint32_t kMaxEntrySize = 4096;

Status validate(const LogOptions& o) {
  if (o.entry_size == 0 || o.entry_size > kMaxEntrySize) {
    return Status::invalid_argument("entry_size " + std::to_string(o.entry_size) + " is outside 1.." +
                                    std::to_string(kMaxEntrySize));
  }
  if (o.slot_count < 2 || !is_power_of_two(o.slot_count)) {
    return Status::invalid_argument("slot_count " + std::to_string(o.slot_count) +
                                    " must be a power of two >= 2");
  }
  if (o.max_replicas == 0 || o.max_replicas > kMaxReplicasLimit) {
    return Status::invalid_argument("max_replicas " + std::to_string(o.max_replicas) + " is outside 1.." +
                                    std::to_string(kMaxReplicasLimit));
  }
  if (o.payload_slots == 0) return Status::invalid_argument("payload_slots must be at least 1");
  if (o.numa_node < kNumaInterleave) {
    return Status::invalid_argument("numa_node " + std::to_string(o.numa_node) + " is not a node");
  }
  if (o.numa_node >= 0 && (numa_available() < 0 || o.numa_node > numa_max_node())) {
    return Status::invalid_argument("numa_node " + std::to_string(o.numa_node) + " does not exist on this machine");
  }
  return ok_status();
}

// Slot memory: libnuma where the machine has NUMA support, else a plain anonymous mapping.
// Both return zeroed, page-aligned memory, so every alive marker starts at 0 (never written).
std::byte* allocate_slots(size_t bytes, int node) {
  void* p = nullptr;
  if (numa_available() >= 0) {
    if (node >= 0) {
      p = numa_alloc_onnode(bytes, node);
    } else if (node == kNumaInterleave) {
      p = numa_alloc_interleaved(bytes);
    } else {
      p = numa_alloc_local(bytes);
    }
  } else {
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) p = nullptr;
  }
  return static_cast<std::byte*>(p);
}

void free_slots(std::byte* p, size_t bytes) {
  if (numa_available() >= 0) {
    numa_free(p, bytes);
  } else {
    munmap(p, bytes);
  }
}

}  // namespace

Result<std::unique_ptr<RingLog>> RingLog::create(LogOptions options) {
  NRX_RETURN_IF_ERROR(validate(options));
  const size_t stride = round_up(sizeof(SlotHeader) + options.entry_size, kCacheLineSize);
  const size_t bytes = stride * options.slot_count;
  std::byte* slots = allocate_slots(bytes, options.numa_node);
  if (slots == nullptr) {
    return Status::resource_exhausted("cannot allocate " + std::to_string(bytes) + " bytes for log slots");
  }
  return std::unique_ptr<RingLog>(new RingLog(std::move(options), stride, slots, bytes));
}

RingLog::RingLog(LogOptions options, size_t stride, std::byte* slots, size_t slots_bytes)
    : options_(std::move(options)),
      stride_(stride),
      mask_(options_.slot_count - 1),
      slots_(slots),
      slots_bytes_(slots_bytes),
      ltails_(new PaddedIndex[options_.max_replicas]),
      payloads_(new PayloadSlot[options_.payload_slots]) {
  for (uint64_t i = 0; i < options_.slot_count; ++i) {
    new (slots_ + i * stride_) SlotHeader{};
  }
  MutexLock lock(payload_mu_);
  payload_free_.reserve(options_.payload_slots);
  for (uint32_t i = options_.payload_slots; i > 0; --i) payload_free_.push_back(i - 1);
}

RingLog::~RingLog() { free_slots(slots_, slots_bytes_); }

Result<ReplicaId> RingLog::register_replica() {
  MutexLock lock(payload_mu_);
  const uint32_t id = num_replicas_.load(std::memory_order_relaxed);
  if (id >= options_.max_replicas) {
    return Status::resource_exhausted("log " + std::to_string(options_.log_id) + " already has its " +
                                      std::to_string(options_.max_replicas) + " replicas");
  }
  ReplicaId unused;
  const LogIndex start = id == 0 ? tail() : min_ltail(&unused);
  ltails_[id].value.store(start, std::memory_order_relaxed);
  // release: the ltail above is visible to anyone who sees the replica counted.
  num_replicas_.store(id + 1, std::memory_order_release);
  return id;
}

LogIndex RingLog::min_ltail(ReplicaId* laggard) const {
  const uint32_t n = num_replicas_.load(std::memory_order_acquire);
  LogIndex min = tail();
  *laggard = 0;
  for (uint32_t r = 0; r < n; ++r) {
    // acquire: a replica's reads of its slots happen before its ltail store; whoever reuses a
    // slot after seeing this ltail must not overwrite what the replica was still reading.
    const LogIndex l = ltails_[r].value.load(std::memory_order_acquire);
    if (l < min || r == 0) {
      min = l;
      *laggard = r;
    }
  }
  return min;
}

LogIndex RingLog::head() const {
  ReplicaId unused;
  return min_ltail(&unused);
}

Result<LogIndex> RingLog::ltail(ReplicaId replica) const {
  if (!registered(replica)) return Status::not_found("replica " + std::to_string(replica) + " is not registered");
  return ltails_[replica].value.load(std::memory_order_acquire);
}

Result<LogIndex> RingLog::append(ReplicaId replica, Batch batch, EntryVisitor apply_own) {
  if (!registered(replica)) return Status::not_found("replica " + std::to_string(replica) + " is not registered");
  const uint64_t n = batch.size();
  if (n == 0) return Status::invalid_argument("empty batch");
  if (n > options_.slot_count) {
    return Status::invalid_argument("batch of " + std::to_string(n) + " entries exceeds the log's " +
                                    std::to_string(options_.slot_count) + " slots");
  }
  for (const auto& e : batch) {
    if (e.empty() || e.size() > options_.entry_size) {
      return Status::invalid_argument("entry of " + std::to_string(e.size()) + " bytes is outside 1.." +
                                      std::to_string(options_.entry_size));
    }
  }

  const uint64_t capacity = options_.slot_count;
  SpinWait wait(options_.full_timeout);
  LogIndex first = tail_.value.load(std::memory_order_relaxed);
  for (;;) {
    // acquire: pairs with the release CAS on head_, so the slots below head were fully read.
    LogIndex head = head_.value.load(std::memory_order_acquire);
    if (first + n > head + capacity) {
      ReplicaId laggard;
      head = min_ltail(&laggard);
      LogIndex cached = head_.value.load(std::memory_order_relaxed);
      // release: publishes what min_ltail acquired (the readers are done with the slots below).
      while (cached < head && !head_.value.compare_exchange_weak(cached, head, std::memory_order_release,
                                                                 std::memory_order_relaxed)) {
      }
      if (first + n > head + capacity) {
        // Full. Our own replica may be the one behind: apply its entries first (NR's append does
        // the same), then nudge whoever still holds the head back.
        apply_until(replica, tail(), apply_own);
        head = min_ltail(&laggard);
        if (first + n > head + capacity) {
          if (laggard != replica && options_.on_lagging) options_.on_lagging(options_.log_id, laggard);
          if (wait.expired()) {
            return Status::deadline_exceeded("log " + std::to_string(options_.log_id) + " stayed full for " +
                                             std::to_string(options_.full_timeout.count() / 1000000) +
                                             " ms; replica " + std::to_string(laggard) + " is not advancing");
          }
          wait.pause();
        }
        first = tail_.value.load(std::memory_order_relaxed);
        continue;
      }
    }
    // The single atomic step that reserves the whole batch. relaxed on success: the entries are
    // published by their own alive markers, not by the tail.
    if (tail_.value.compare_exchange_weak(first, first + n, std::memory_order_relaxed, std::memory_order_relaxed)) {
      break;
    }
  }

  const unsigned shift = std::countr_zero(options_.slot_count);
  for (uint64_t i = 0; i < n; ++i) {
    const LogIndex index = first + i;
    SlotHeader* s = slot(index);
    std::memcpy(reinterpret_cast<std::byte*>(s) + sizeof(SlotHeader), batch[i].data(), batch[i].size());
    s->writer = replica;
    s->length = static_cast<uint32_t>(batch[i].size());
    // release: the entry bytes, writer and length are visible before the marker says "live".
    s->alive.store((index >> shift) + 1, std::memory_order_release);
  }
  return first;
}

template <typename Visitor>
LogIndex RingLog::apply_until(ReplicaId replica, LogIndex to, Visitor& visitor) {
  // Only this replica's combiner writes its ltail, so a relaxed read of our own value suffices.
  LogIndex i = ltails_[replica].value.load(std::memory_order_relaxed);
  if (i >= to) return i;
  // Raise ctail BEFORE applying: once any replica may expose an entry's effect (CNR replicas have
  // no readers-writer lock, so effects are visible while a batch is applied), every later read
  // elsewhere must sync past it. ctail is therefore "the highest index a replica has started
  // applying to"; it is still >= every ltail.
  LogIndex c = ctail_.value.load(std::memory_order_relaxed);
  // release: orders the raise before the effects this replica is about to produce.
  while (c < to && !ctail_.value.compare_exchange_weak(c, to, std::memory_order_release, std::memory_order_relaxed)) {
  }
  const unsigned shift = std::countr_zero(options_.slot_count);
  for (; i < to; ++i) {
    const SlotHeader* s = slot(i);
    const uint64_t want = (i >> shift) + 1;
    // acquire: pairs with the appender's release store; the entry is complete once we see it.
    // The appender writes right after reserving and never blocks in between, so this wait ends.
    SpinWait wait;
    while (s->alive.load(std::memory_order_acquire) != want) wait.pause();
    // Bounds-check before handing the bytes out, as for an entry from another machine.
    NRX_CHECK(s->length != 0 && s->length <= options_.entry_size && s->writer < options_.max_replicas,
              "corrupt ring log entry");
    const Entry entry{i, s->writer,
                      std::span<const std::byte>(reinterpret_cast<const std::byte*>(s) + sizeof(SlotHeader), s->length)};
    if constexpr (std::is_same_v<Visitor, StoppingVisitor>) {
      if (!visitor(entry)) {
        to = i;
        break;
      }
    } else {
      visitor(entry);
    }
  }
  if (to == ltails_[replica].value.load(std::memory_order_relaxed)) return to;  // stopped at once
  // release: our reads of the slots above happen before an appender that sees this ltail reuses them.
  ltails_[replica].value.store(to, std::memory_order_release);
  return to;
}

Result<LogIndex> RingLog::exec(ReplicaId replica, EntryVisitor visitor) {
  if (!registered(replica)) return Status::not_found("replica " + std::to_string(replica) + " is not registered");
  return apply_until(replica, tail(), visitor);
}

Result<LogIndex> RingLog::exec_while(ReplicaId replica, StoppingVisitor visitor) {
  if (!registered(replica)) return Status::not_found("replica " + std::to_string(replica) + " is not registered");
  return apply_until(replica, tail(), visitor);
}

Result<PayloadRef> RingLog::payload_put(std::span<const std::byte> data) {
  if (data.empty()) return Status::invalid_argument("empty payload");
  if (data.size() > UINT32_MAX) return Status::invalid_argument("payload larger than 4 GiB");
  const uint32_t replicas = num_replicas_.load(std::memory_order_acquire);
  if (replicas == 0) return Status::failed_precondition("no replica is registered to release the payload");
  std::unique_ptr<std::byte[]> bytes(new (std::nothrow) std::byte[data.size()]);
  if (!bytes) return Status::resource_exhausted("cannot allocate a payload of " + std::to_string(data.size()) + " bytes");
  std::memcpy(bytes.get(), data.data(), data.size());

  uint32_t where;
  {
    MutexLock lock(payload_mu_);
    if (payload_free_.empty()) {
      return Status::resource_exhausted("all " + std::to_string(options_.payload_slots) + " payload slots are live");
    }
    where = payload_free_.back();
    payload_free_.pop_back();
  }
  PayloadSlot& p = payloads_[where];
  p.bytes = std::move(bytes);
  p.length.store(static_cast<uint32_t>(data.size()), std::memory_order_relaxed);
  const uint64_t mask = replicas >= 64 ? ~uint64_t{0} : (uint64_t{1} << replicas) - 1;
  // release: bytes and length are visible to whoever acquires a non-zero |pending|.
  p.pending.store(mask, std::memory_order_release);
  payloads_live_.fetch_add(1, std::memory_order_relaxed);
  return PayloadRef{where, static_cast<uint32_t>(data.size()), p.generation.load(std::memory_order_relaxed)};
}

Result<std::span<const std::byte>> RingLog::payload_get(PayloadRef ref) const {
  if (ref.where >= options_.payload_slots) return Status::not_found("payload reference out of range");
  const PayloadSlot& p = payloads_[ref.where];
  // acquire: pairs with payload_put's release of |pending|.
  if (p.pending.load(std::memory_order_acquire) == 0 ||
      p.generation.load(std::memory_order_acquire) != ref.generation ||
      p.length.load(std::memory_order_relaxed) != ref.length) {
    return Status::not_found("stale payload reference");
  }
  return std::span<const std::byte>(p.bytes.get(), ref.length);
}

Status RingLog::payload_release(ReplicaId replica, PayloadRef ref) {
  if (!registered(replica)) return Status::not_found("replica " + std::to_string(replica) + " is not registered");
  if (ref.where >= options_.payload_slots) return Status::not_found("payload reference out of range");
  PayloadSlot& p = payloads_[ref.where];
  if (p.generation.load(std::memory_order_acquire) != ref.generation) {
    return Status::not_found("stale payload reference");
  }
  const uint64_t bit = uint64_t{1} << replica;
  // acq_rel: every replica's reads of the bytes happen before the last releaser frees them.
  const uint64_t before = p.pending.fetch_and(~bit, std::memory_order_acq_rel);
  if (before == 0) return Status::not_found("stale payload reference");
  if ((before & bit) == 0) {
    return Status::failed_precondition("replica " + std::to_string(replica) + " already released this payload");
  }
  if (before == bit) {
    p.bytes.reset();
    p.length.store(0, std::memory_order_relaxed);
    // release: a holder of the old generation sees the change before the slot is reused.
    p.generation.fetch_add(1, std::memory_order_release);
    payloads_live_.fetch_sub(1, std::memory_order_relaxed);
    MutexLock lock(payload_mu_);
    payload_free_.push_back(static_cast<uint32_t>(ref.where));
  }
  return ok_status();
}

}  // namespace nrx::logs
