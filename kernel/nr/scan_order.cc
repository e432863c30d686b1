#include "kernel/nr/scan_order.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

#include "base/host.h"
#include "base/spin.h"

namespace nrx::nr {

// ---- LocalScanOrder -----------------------------------------------------------------------------

Result<std::optional<ScanOrder::Orphan>> LocalScanOrder::lock(FunctionRef<void()> /*while_waiting*/) {
  mu_.lock();
  return std::optional<Orphan>();
}

void LocalScanOrder::cancel(uint64_t id) {
  MutexLock lock(cancel_mu_);
  cancelled_.push_back(id);
  // release: the id is in the list before anyone sees the count.
  cancelled_count_.fetch_add(1, std::memory_order_release);
}

bool LocalScanOrder::is_cancelled(uint64_t id) {
  // acquire: pairs with cancel; the fast path when nothing was ever cancelled.
  if (cancelled_count_.load(std::memory_order_acquire) == 0) return false;
  MutexLock lock(cancel_mu_);
  return std::find(cancelled_.begin(), cancelled_.end(), id) != cancelled_.end();
}

// ---- SharedScanOrder ----------------------------------------------------------------------------

namespace {

constexpr uint64_t kMagic = 0x314E41435358524EULL;  // "NRXSCAN1" as little-endian bytes
constexpr uint32_t kVersion = 1;
constexpr size_t kVersionOff = 8, kEntryCapOff = 12, kClusterOff = 16, kCancelCapOff = 24;
constexpr size_t kLockOff = 64, kSinceOff = 72, kRecIdOff = 80, kRecMaskOff = 88, kRecLenOff = 96, kNextOff = 104;
constexpr size_t kCancelCountOff = 128, kCancelOff = 136;
constexpr size_t kEntryOff = SharedScanOrder::kRegionBytes - SharedScanOrder::kEntryCapacity;
constexpr uint32_t kCancelCapacity = static_cast<uint32_t>((kEntryOff - kCancelOff) / 8);
static_assert(kCancelCapacity >= 256);

std::atomic_ref<uint64_t> at(uint64_t* w) { return std::atomic_ref<uint64_t>(*w); }

uint64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

Status check_region(std::span<std::byte> region) {
  if (region.size() < SharedScanOrder::kRegionBytes) {
    return Status::invalid_argument("a scan-order region needs " + std::to_string(SharedScanOrder::kRegionBytes) +
                                    " bytes, not " + std::to_string(region.size()));
  }
  if (reinterpret_cast<uintptr_t>(region.data()) % 8 != 0) {
    return Status::invalid_argument("a scan-order region must be 8-byte aligned");
  }
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<SharedScanOrder>> SharedScanOrder::create(std::span<std::byte> region,
                                                                 SharedScanOrderOptions options) {
  NRX_RETURN_IF_ERROR(check_region(region));
  std::byte* base = region.data();
  std::unique_ptr<SharedScanOrder> o(new SharedScanOrder(base, options));
  // Withdraw an old header before rewriting (release: an attacher never sees a half-written one).
  at(o->word(0)).store(0, std::memory_order_release);
  std::memset(base + 8, 0, kRegionBytes - 8);
  std::memcpy(base + kVersionOff, &kVersion, 4);
  std::memcpy(base + kEntryCapOff, &kEntryCapacity, 4);
  std::memcpy(base + kClusterOff, &options.cluster_id, 8);
  std::memcpy(base + kCancelCapOff, &kCancelCapacity, 4);
  *o->word(kNextOff) = 1;
  at(o->word(0)).store(kMagic, std::memory_order_release);
  return o;
}

Result<std::unique_ptr<SharedScanOrder>> SharedScanOrder::attach(std::span<std::byte> region,
                                                                 SharedScanOrderOptions options) {
  NRX_RETURN_IF_ERROR(check_region(region));
  std::byte* base = region.data();
  std::unique_ptr<SharedScanOrder> o(new SharedScanOrder(base, options));
  // acquire: pairs with create's release of the magic; the rest of the header is complete.
  if (at(o->word(0)).load(std::memory_order_acquire) != kMagic) {
    return Status::failed_precondition("not a CNR scan-order region (bad magic)");
  }
  uint32_t version = 0, entry_cap = 0, cancel_cap = 0;
  uint64_t cluster = 0;
  std::memcpy(&version, base + kVersionOff, 4);
  std::memcpy(&entry_cap, base + kEntryCapOff, 4);
  std::memcpy(&cluster, base + kClusterOff, 8);
  std::memcpy(&cancel_cap, base + kCancelCapOff, 4);
  if (version != kVersion || entry_cap != kEntryCapacity || cancel_cap != kCancelCapacity) {
    return Status::failed_precondition("scan-order region has layout version " + std::to_string(version) +
                                       "; this build reads version " + std::to_string(kVersion));
  }
  if (cluster != options.cluster_id) {
    return Status::failed_precondition("scan-order region belongs to cluster " + std::to_string(cluster) + ", not " +
                                       std::to_string(options.cluster_id));
  }
  return o;
}

uint32_t SharedScanOrder::cancel_capacity() const { return kCancelCapacity; }

bool SharedScanOrder::holder_dead(uint64_t holder) const {
  if (holder == 0) return false;
  if (static_cast<uint32_t>(holder >> 32) == host_tag()) return pid_gone(holder & UINT32_MAX);
  // Another host: presumed dead after holding the lock for the remote lease. The stamp may lag
  // the lock word by a moment (written right after the CAS); 0 reads as "just taken".
  const uint64_t since = at(word(kSinceOff)).load(std::memory_order_relaxed);
  const uint64_t now = realtime_ns();
  return since != 0 && now > since && now - since > static_cast<uint64_t>(options_.remote_lease.count());
}

std::optional<ScanOrder::Orphan> SharedScanOrder::acquired(bool from_dead) {
  at(word(kSinceOff)).store(realtime_ns(), std::memory_order_relaxed);
  if (from_dead) take_overs_.fetch_add(1, std::memory_order_relaxed);
  // acquire: pairs with record()'s release; the entry bytes and mask are complete.
  const uint64_t id = at(word(kRecIdOff)).load(std::memory_order_acquire);
  if (id == 0) return std::nullopt;
  Orphan o;
  o.id = id;
  o.mask = *word(kRecMaskOff);
  const uint64_t len = std::min<uint64_t>(*word(kRecLenOff), kEntryCapacity);
  o.entry.assign(base_ + kEntryOff, base_ + kEntryOff + len);
  return o;
}

Result<std::optional<ScanOrder::Orphan>> SharedScanOrder::lock(FunctionRef<void()> while_waiting) {
  const uint64_t me = self_owner();
  SpinWait wait(options_.lock_timeout);
  for (uint32_t spins = 0;; ++spins) {
    uint64_t holder = 0;
    // acquire: pairs with unlock's release; the previous holder's words are visible.
    if (at(word(kLockOff)).compare_exchange_strong(holder, me, std::memory_order_acquire)) break;
    // Liveness costs a system call: ask now and then, not on every spin.
    if ((spins & 255) == 255 && holder_dead(holder) &&
        at(word(kLockOff)).compare_exchange_strong(holder, me, std::memory_order_acquire)) {
      std::optional<Orphan> o = acquired(/*from_dead=*/true);
      return o.has_value() ? std::move(o) : std::optional<Orphan>(Orphan{});
    }
    if (wait.expired()) {
      return Status::deadline_exceeded("the CNR scan lock stayed held (by pid " + std::to_string(holder & UINT32_MAX) +
                                       (static_cast<uint32_t>(holder >> 32) == host_tag() ? "" : " of another host") +
                                       ")");
    }
    while_waiting();
    wait.pause();
  }
  std::optional<Orphan> o = acquired(/*from_dead=*/false);
  if (!o.has_value() && at(word(kCancelCountOff)).load(std::memory_order_relaxed) >= cancel_capacity()) {
    unlock();
    return Status::resource_exhausted("the shared scan order's cancel list is full; recreate the region");
  }
  return o;
}

std::optional<ScanOrder::Orphan> SharedScanOrder::try_take_over() {
  uint64_t holder = at(word(kLockOff)).load(std::memory_order_relaxed);
  if (!holder_dead(holder)) return std::nullopt;
  if (!at(word(kLockOff)).compare_exchange_strong(holder, self_owner(), std::memory_order_acquire)) {
    return std::nullopt;  // someone else took it over (or it changed hands)
  }
  std::optional<Orphan> o = acquired(/*from_dead=*/true);
  return o.has_value() ? std::move(o) : std::optional<Orphan>(Orphan{});
}

uint64_t SharedScanOrder::next_id() {
  // The id is consumed before it is recorded: a holder that dies between the two leaves a gap
  // in the ids, never a reused id.
  const uint64_t id = *word(kNextOff);
  at(word(kNextOff)).store(id + 1, std::memory_order_relaxed);
  return id;
}

void SharedScanOrder::record(uint64_t id, uint64_t mask, std::span<const std::byte> entry) {
  const size_t len = std::min<size_t>(entry.size(), kEntryCapacity);
  std::memcpy(base_ + kEntryOff, entry.data(), len);
  *word(kRecMaskOff) = mask;
  *word(kRecLenOff) = len;
  // release: a taker-over that sees the id sees the entry.
  at(word(kRecIdOff)).store(id, std::memory_order_release);
}

void SharedScanOrder::clear_orphan() { at(word(kRecIdOff)).store(0, std::memory_order_relaxed); }

void SharedScanOrder::cancel(uint64_t id) {
  const uint64_t n = *word(kCancelCountOff);
  if (n >= cancel_capacity()) return;  // lock() refuses new scans before this can happen
  *word(kCancelOff + 8 * n) = id;
  // release: the id is in the list before anyone sees the count.
  at(word(kCancelCountOff)).store(n + 1, std::memory_order_release);
}

bool SharedScanOrder::is_cancelled(uint64_t id) {
  // acquire: pairs with cancel's release.
  const uint64_t n = std::min<uint64_t>(at(word(kCancelCountOff)).load(std::memory_order_acquire), cancel_capacity());
  for (uint64_t i = 0; i < n; ++i) {
    if (at(word(kCancelOff + 8 * i)).load(std::memory_order_relaxed) == id) return true;
  }
  return false;
}

void SharedScanOrder::unlock() {
  at(word(kRecIdOff)).store(0, std::memory_order_relaxed);
  unlock_keeping_orphan();
}

void SharedScanOrder::unlock_keeping_orphan() {
  at(word(kSinceOff)).store(0, std::memory_order_relaxed);
  // release: this holder's writes (ids, cancels, log appends) happen before the next holder's.
  at(word(kLockOff)).store(0, std::memory_order_release);
}

}  // namespace nrx::nr
