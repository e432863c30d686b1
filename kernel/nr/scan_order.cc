#include "kernel/nr/scan_order.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <utility>

#include "base/host.h"
#include "base/spin.h"
#include "logs/shm/shm_cache.h"

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

// ---- BakeryScanOrder ----------------------------------------------------------------------------

namespace {

constexpr uint64_t kBakeMagic = 0x31454B414258524EULL;  // "NRXBAKE1" as little-endian bytes
constexpr uint32_t kBakeVersion = 1;
constexpr size_t kHdrParticipantsOff = 24;
// Participant block offsets.
constexpr size_t kChoosingOff = 0, kNumberOff = 8, kStampOff = 16, kHoldingOff = 24, kOwnerOff = 32;
constexpr size_t kLastIdOff = 64, kBRecIdOff = 72, kBRecMaskOff = 80, kBRecLenOff = 88;
constexpr size_t kDoneOff = 128;
constexpr size_t kBCancelCountOff = 256, kBCancelOff = 264;
constexpr size_t kBEntryOff = BakeryScanOrder::kBlockBytes - BakeryScanOrder::kEntryCapacity;
constexpr uint64_t kBCancelCapacity = (kBEntryOff - kBCancelOff) / 8;
static_assert(kDoneOff + 8 * BakeryScanOrder::kMaxParticipants <= kBCancelCountOff);
static_assert(kBCancelCapacity >= 256);
// A waiter refreshes its stamp at most this often.
constexpr uint64_t kStampRefreshNs = 1000000;

// The default medium: one region in noncoherent shared memory (CXL 2.0-style), every store
// written back, every load of another's line invalidated first.
class CxlBakeryMedium final : public BakeryMedium {
 public:
  void written(const void* p, size_t n) override { logs::shm::cache::write_back(p, n); }
  void to_read(const void* p, size_t n) override { logs::shm::cache::invalidate(p, n); }
  void store_load_fence() override { logs::shm::cache::store_load_fence(); }
};

std::shared_ptr<BakeryMedium> or_cxl(std::shared_ptr<BakeryMedium> medium) {
  if (medium != nullptr) return medium;
  static const std::shared_ptr<BakeryMedium> cxl = std::make_shared<CxlBakeryMedium>();  // stateless
  return cxl;
}

Status check_bakery(std::span<std::byte> region, const SharedScanOrderOptions& options) {
  if (region.size() < BakeryScanOrder::kRegionBytes) {
    return Status::invalid_argument("a bakery scan-order region needs " + std::to_string(BakeryScanOrder::kRegionBytes) +
                                    " bytes, not " + std::to_string(region.size()));
  }
  if (reinterpret_cast<uintptr_t>(region.data()) % 64 != 0) {
    return Status::invalid_argument("a bakery scan-order region must be 64-byte aligned");
  }
  if (options.participant >= BakeryScanOrder::kMaxParticipants) {
    return Status::invalid_argument("scan-order participant " + std::to_string(options.participant) +
                                    " is out of range (at most " +
                                    std::to_string(BakeryScanOrder::kMaxParticipants - 1) + ")");
  }
  return ok_status();
}

}  // namespace

BakeryScanOrder::BakeryScanOrder(std::byte* base, SharedScanOrderOptions options,
                                 std::shared_ptr<BakeryMedium> medium)
    : base_(base), options_(options), medium_(or_cxl(std::move(medium))) {}

Result<std::unique_ptr<BakeryScanOrder>> BakeryScanOrder::create(std::span<std::byte> region,
                                                                 SharedScanOrderOptions options,
                                                                 std::shared_ptr<BakeryMedium> medium) {
  NRX_RETURN_IF_ERROR(check_bakery(region, options));
  std::byte* base = region.data();
  std::unique_ptr<BakeryScanOrder> o(new BakeryScanOrder(base, options, std::move(medium)));
  BakeryMedium& m = *o->medium_;
  // Withdraw an old header before rewriting (release + write-back: an attacher never sees a
  // half-written one).
  at(reinterpret_cast<uint64_t*>(base)).store(0, std::memory_order_release);
  m.written(base, 8);
  std::memset(base + 8, 0, kRegionBytes - 8);
  std::memcpy(base + kVersionOff, &kBakeVersion, 4);
  std::memcpy(base + kEntryCapOff, &kEntryCapacity, 4);
  std::memcpy(base + kClusterOff, &options.cluster_id, 8);
  std::memcpy(base + kHdrParticipantsOff, &kMaxParticipants, 4);
  m.written(base, kRegionBytes);
  at(reinterpret_cast<uint64_t*>(base)).store(kBakeMagic, std::memory_order_release);
  m.written(base, 8);
  return o;
}

Result<std::unique_ptr<BakeryScanOrder>> BakeryScanOrder::attach(std::span<std::byte> region,
                                                                 SharedScanOrderOptions options,
                                                                 std::shared_ptr<BakeryMedium> medium) {
  NRX_RETURN_IF_ERROR(check_bakery(region, options));
  std::byte* base = region.data();
  std::unique_ptr<BakeryScanOrder> o(new BakeryScanOrder(base, options, std::move(medium)));
  o->medium_->to_read(base, 64);
  // acquire: pairs with create's release of the magic; the rest of the header is complete.
  if (at(reinterpret_cast<uint64_t*>(base)).load(std::memory_order_acquire) != kBakeMagic) {
    return Status::failed_precondition("not a bakery CNR scan-order region (bad magic)");
  }
  uint32_t version = 0, entry_cap = 0, participants = 0;
  uint64_t cluster = 0;
  std::memcpy(&version, base + kVersionOff, 4);
  std::memcpy(&entry_cap, base + kEntryCapOff, 4);
  std::memcpy(&cluster, base + kClusterOff, 8);
  std::memcpy(&participants, base + kHdrParticipantsOff, 4);
  if (version != kBakeVersion || entry_cap != kEntryCapacity || participants != kMaxParticipants) {
    return Status::failed_precondition("bakery scan-order region has layout version " + std::to_string(version) +
                                       "; this build reads version " + std::to_string(kBakeVersion));
  }
  if (cluster != options.cluster_id) {
    return Status::failed_precondition("scan-order region belongs to cluster " + std::to_string(cluster) + ", not " +
                                       std::to_string(options.cluster_id));
  }
  return o;
}

uint64_t BakeryScanOrder::read(uint32_t p, size_t offset) const {
  uint64_t* w = word(p, offset);
  if (p != options_.participant) medium_->to_read(w, 8);
  // acquire: pairs with write()'s release; what the writer wrote before is visible.
  return at(w).load(std::memory_order_acquire);
}

void BakeryScanOrder::write(size_t offset, uint64_t value) {
  uint64_t* w = word(options_.participant, offset);
  // release, never seq_cst: a seq_cst store is an xchg on x86, a locked instruction.
  at(w).store(value, std::memory_order_release);
  medium_->written(w, 8);
}

bool BakeryScanOrder::dead(uint32_t p) const {
  const uint64_t owner = read(p, kOwnerOff);
  if (owner == 0) return false;
  if (static_cast<uint32_t>(owner >> 32) == host_tag()) return pid_gone(owner & UINT32_MAX);
  const uint64_t stamp = read(p, kStampOff);
  const uint64_t now = realtime_ns();
  return stamp != 0 && now > stamp && now - stamp > static_cast<uint64_t>(options_.remote_lease.count());
}

BakeryScanOrder::Outcome BakeryScanOrder::compete(bool patient, FunctionRef<void()> while_waiting, SpinWait& wait,
                                                  bool& took_over) {
  const uint32_t me = options_.participant;
  auto withdraw = [&] {
    write(kNumberOff, 0);
    write(kChoosingOff, 0);
  };
  // The doorway.
  write(kOwnerOff, self_owner());
  uint64_t stamp = realtime_ns();
  write(kStampOff, stamp);
  write(kChoosingOff, 1);
  // Our stores are visible before the loads below (store-load order).
  medium_->store_load_fence();
  uint64_t highest = 0;
  for (uint32_t p = 0; p < kMaxParticipants; ++p) highest = std::max(highest, p == me ? 0 : read(p, kNumberOff));
  const uint64_t mine = highest + 1;
  write(kNumberOff, mine);
  write(kChoosingOff, 0);
  medium_->store_load_fence();
  // Wait for everyone ahead.
  for (uint32_t p = 0; p < kMaxParticipants; ++p) {
    if (p == me) continue;
    for (uint32_t spins = 0;; ++spins) {
      const uint64_t choosing = read(p, kChoosingOff);
      const uint64_t number = read(p, kNumberOff);
      const bool ahead = choosing != 0 || (number != 0 && (number < mine || (number == mine && p < me)));
      if (!ahead) break;
      // Found dead before with this very ticket: skip it at once (a dead participant's ticket
      // stays for good, and every round would otherwise spin before asking again).
      if (number != 0 && number == dead_number_[p] && read(p, kOwnerOff) == dead_owner_[p]) break;
      // Liveness may cost a system call: ask now and then, not on every spin.
      if (((spins & 255) == 255 || !patient) && dead(p)) {
        if (read(p, kHoldingOff) != 0) took_over = true;
        dead_number_[p] = number;
        dead_owner_[p] = read(p, kOwnerOff);
        break;
      }
      if (!patient) {
        withdraw();
        return Outcome::kLost;
      }
      if (wait.expired()) {
        withdraw();
        return Outcome::kTimedOut;
      }
      if (const uint64_t now = realtime_ns(); now > stamp + kStampRefreshNs) {
        stamp = now;
        write(kStampOff, stamp);
      }
      while_waiting();
      wait.pause();
    }
  }
  // Stalled for half a lease since our last sign of life: others may have skipped us as dead.
  if (realtime_ns() - stamp > static_cast<uint64_t>(options_.remote_lease.count()) / 2) {
    withdraw();
    return Outcome::kStalled;
  }
  write(kStampOff, realtime_ns());
  write(kHoldingOff, 1);
  return Outcome::kWon;
}

uint64_t BakeryScanOrder::pending_record(uint32_t p) const {
  const uint64_t id = read(p, kBRecIdOff);
  if (id == 0) return 0;
  for (uint32_t q = 0; q < kMaxParticipants; ++q) {
    if (read(q, kDoneOff + 8 * size_t{p}) >= id) return 0;
  }
  return id;
}

std::optional<ScanOrder::Orphan> BakeryScanOrder::acquired(bool took_over) {
  if (took_over) take_overs_.fetch_add(1, std::memory_order_relaxed);
  orphan_from_ = UINT32_MAX;
  orphan_id_ = 0;
  for (uint32_t p = 0; p < kMaxParticipants; ++p) {
    const uint64_t id = pending_record(p);
    if (id == 0) continue;
    // A record nobody completed: its writer died holding the lock, or released it keeping the
    // record. The lock is exclusive, so there is at most one.
    Orphan o;
    o.id = id;
    o.mask = read(p, kBRecMaskOff);
    const uint64_t len = std::min<uint64_t>(read(p, kBRecLenOff), kEntryCapacity);
    medium_->to_read(block(p) + kBEntryOff, len);
    o.entry.assign(block(p) + kBEntryOff, block(p) + kBEntryOff + len);
    orphan_from_ = p;
    orphan_id_ = id;
    return o;
  }
  if (took_over) return Orphan{};
  return std::nullopt;
}

Result<std::optional<ScanOrder::Orphan>> BakeryScanOrder::lock(FunctionRef<void()> while_waiting) {
  mu_.lock();
  SpinWait wait(options_.lock_timeout);
  bool took_over = false;
  for (;;) {
    const Outcome outcome = compete(/*patient=*/true, while_waiting, wait, took_over);
    if (outcome == Outcome::kWon) break;
    if (outcome == Outcome::kTimedOut) {
      mu_.unlock();
      return Status::deadline_exceeded("the CNR scan lock (bakery) stayed held by live participants for " +
                                       std::to_string(options_.lock_timeout.count() / 1000000) + " ms");
    }
    took_over = false;  // kStalled: a new ticket
  }
  std::optional<Orphan> o = acquired(took_over);
  if ((!o.has_value() || o->id == 0) && cancelled_count() >= kBCancelCapacity) {
    unlock();
    return Status::resource_exhausted("this participant's scan-order cancel list is full; recreate the region");
  }
  return o;
}

std::optional<ScanOrder::Orphan> BakeryScanOrder::try_take_over() {
  // Only a dead holder's uncompleted record is worth taking the lock for (a dead participant's
  // ticket alone blocks nobody: every competitor skips it). Is there one?
  bool orphaned = false;
  for (uint32_t p = 0; p < kMaxParticipants && !orphaned; ++p) {
    if (p == options_.participant) continue;
    orphaned = read(p, kNumberOff) != 0 && read(p, kHoldingOff) != 0 && pending_record(p) != 0 && dead(p);
  }
  if (!orphaned || !mu_.try_lock()) return std::nullopt;  // or a thread of ours competes already
  SpinWait wait;
  bool took_over = false;
  if (compete(/*patient=*/false, [] {}, wait, took_over) != Outcome::kWon) {
    mu_.unlock();
    return std::nullopt;  // a live participant is ahead: it completes the orphan
  }
  std::optional<Orphan> o = acquired(took_over);
  return o.has_value() ? std::move(o) : std::optional<Orphan>(Orphan{});
}

uint64_t BakeryScanOrder::next_id() {
  // The id is consumed before it is recorded: a holder that dies between the two leaves a gap
  // in the ids, never a reused id.
  uint64_t highest = 0;
  for (uint32_t p = 0; p < kMaxParticipants; ++p) highest = std::max(highest, read(p, kLastIdOff));
  write(kLastIdOff, highest + 1);
  return highest + 1;
}

void BakeryScanOrder::record(uint64_t id, uint64_t mask, std::span<const std::byte> entry) {
  const size_t len = std::min<size_t>(entry.size(), kEntryCapacity);
  std::byte* mine = block(options_.participant);
  std::memcpy(mine + kBEntryOff, entry.data(), len);
  medium_->written(mine + kBEntryOff, len);
  write(kBRecMaskOff, mask);
  write(kBRecLenOff, len);
  write(kBRecIdOff, id);  // last (release): a taker-over that sees the id sees the entry
}

void BakeryScanOrder::clear_orphan() {
  if (orphan_from_ == UINT32_MAX) return;
  write(kDoneOff + 8 * size_t{orphan_from_}, orphan_id_);
  orphan_from_ = UINT32_MAX;
  orphan_id_ = 0;
}

void BakeryScanOrder::cancel(uint64_t id) {
  const uint64_t n = read(options_.participant, kBCancelCountOff);
  if (n >= kBCancelCapacity) return;  // lock() refuses new scans before this can happen
  write(kBCancelOff + 8 * n, id);
  write(kBCancelCountOff, n + 1);  // release: the id is in the list before anyone sees the count
}

uint64_t BakeryScanOrder::cancelled_count() const { return read(options_.participant, kBCancelCountOff); }

bool BakeryScanOrder::is_cancelled(uint64_t id) {
  for (uint32_t p = 0; p < kMaxParticipants; ++p) {
    const uint64_t n = std::min<uint64_t>(read(p, kBCancelCountOff), kBCancelCapacity);
    for (uint64_t i = 0; i < n; ++i) {
      if (read(p, kBCancelOff + 8 * i) == id) return true;
    }
  }
  return false;
}

void BakeryScanOrder::unlock() {
  write(kBRecIdOff, 0);
  unlock_keeping_orphan();
}

void BakeryScanOrder::unlock_keeping_orphan() {
  orphan_from_ = UINT32_MAX;
  orphan_id_ = 0;
  write(kHoldingOff, 0);
  // release: this holder's writes (ids, records, cancels, log appends) happen before the next
  // holder's, which reads this 0.
  write(kNumberOff, 0);
  mu_.unlock();
}

}  // namespace nrx::nr
