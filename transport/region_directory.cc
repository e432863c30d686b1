#include "transport/region_directory.h"

#include <atomic>
#include <cstring>
#include <thread>

#include "base/spin.h"
#include "transport/region.h"

namespace nrx::transport {

namespace {

constexpr uint64_t kMagic = 0x313052494458524EULL;  // "NRXDIR01" as little-endian bytes
constexpr uint32_t kVersion = 1;
// Header words (byte offsets).
constexpr size_t kVersionOff = 8, kCountOff = 12, kClusterOff = 16, kUsedOff = 24, kSealedOff = 32;
constexpr size_t kEntriesOff = 64, kEntryBytes = 64;  // entry: name[40], offset, bytes, reserved
static_assert(kEntriesOff + RegionDirectory::kMaxEntries * kEntryBytes <= RegionDirectory::kHeaderBytes);

std::atomic_ref<uint64_t> at(uint64_t* w) { return std::atomic_ref<uint64_t>(*w); }

Status check_region(std::span<std::byte> region) {
  if (region.size() <= RegionDirectory::kHeaderBytes) {
    return Status::invalid_argument("a shared region of " + format_bytes(region.size()) +
                                    " cannot hold a directory and anything in it");
  }
  if (reinterpret_cast<uintptr_t>(region.data()) % RegionDirectory::kAlign != 0) {
    return Status::invalid_argument("a region directory needs a page-aligned region");
  }
  return ok_status();
}

}  // namespace

Result<RegionDirectory> RegionDirectory::format(std::span<std::byte> region, uint64_t cluster_id) {
  NRX_RETURN_IF_ERROR(check_region(region));
  RegionDirectory d(region, /*creator=*/true);
  // Withdraw the old header first (release: an attacher that still sees the old magic reads the
  // old, consistent header).
  at(d.word(0)).store(0, std::memory_order_release);
  std::memset(region.data() + 8, 0, kHeaderBytes - 8);
  std::memcpy(region.data() + kVersionOff, &kVersion, 4);
  std::memcpy(region.data() + kClusterOff, &cluster_id, 8);
  *d.word(kUsedOff) = kHeaderBytes;
  at(d.word(0)).store(kMagic, std::memory_order_release);
  return d;
}

Result<RegionDirectory> RegionDirectory::open(std::span<std::byte> region, uint64_t cluster_id,
                                              std::chrono::nanoseconds wait) {
  NRX_RETURN_IF_ERROR(check_region(region));
  RegionDirectory d(region, /*creator=*/false);
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    // acquire: pairs with format's and seal's releases.
    if (at(d.word(0)).load(std::memory_order_acquire) == kMagic &&
        at(d.word(kSealedOff)).load(std::memory_order_acquire) == 1) {
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::deadline_exceeded("no sealed nrx region directory appeared in the shared region within " +
                                       std::to_string(std::chrono::duration_cast<std::chrono::seconds>(wait).count()) +
                                       " s (is the first machine, `nrx boot --log shm`, running on it?)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling shared memory, with a deadline
  }
  uint32_t version = 0;
  uint64_t cluster = 0;
  std::memcpy(&version, region.data() + kVersionOff, 4);
  std::memcpy(&cluster, region.data() + kClusterOff, 8);
  if (version != kVersion) {
    return Status::failed_precondition("the region directory has layout version " + std::to_string(version) +
                                       "; this build reads version " + std::to_string(kVersion));
  }
  if (cluster != cluster_id) {
    return Status::failed_precondition("the shared region belongs to cluster " + std::to_string(cluster) + ", not " +
                                       std::to_string(cluster_id));
  }
  if (d.count() > kMaxEntries || d.used() > region.size()) {
    return Status::failed_precondition("the region directory is corrupt (" + std::to_string(d.count()) +
                                       " entries, " + format_bytes(d.used()) + " used of " +
                                       format_bytes(region.size()) + ")");
  }
  for (uint32_t i = 0; i < d.count(); ++i) {
    const uint64_t off = *d.word(kEntriesOff + i * kEntryBytes + 40);
    const uint64_t len = *d.word(kEntriesOff + i * kEntryBytes + 48);
    if (off < kHeaderBytes || off % kAlign != 0 || len > region.size() || off > region.size() - len) {
      return Status::failed_precondition("the region directory's entry " + std::to_string(i) +
                                         " lies outside the region");
    }
  }
  return d;
}

uint64_t RegionDirectory::used() const { return at(word(kUsedOff)).load(std::memory_order_relaxed); }

uint32_t RegionDirectory::count() const {
  uint32_t n = 0;
  std::memcpy(&n, region_.data() + kCountOff, 4);
  return n;
}

Result<std::span<std::byte>> RegionDirectory::allocate(std::string_view name, uint64_t bytes) {
  if (!creator_ || at(word(kSealedOff)).load(std::memory_order_relaxed) != 0) {
    return Status::failed_precondition("only the creator allocates, and only before sealing");
  }
  if (name.empty() || name.size() > kMaxName) {
    return Status::invalid_argument("a region window needs a name of 1.." + std::to_string(kMaxName) + " bytes");
  }
  if (bytes == 0) return Status::invalid_argument("a region window needs at least one byte");
  if (find(name).ok()) return Status::already_exists("the region already has a window named " + std::string(name));
  const uint32_t n = count();
  if (n >= kMaxEntries) {
    return Status::resource_exhausted("the region directory is full (" + std::to_string(kMaxEntries) + " windows)");
  }
  const uint64_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  const uint64_t off = used();
  if (rounded > region_.size() - off) {
    return Status::resource_exhausted("the shared region has " + format_bytes(region_.size()) + "; " +
                                      std::string(name) + " needs " + format_bytes(rounded) + " more than the " +
                                      format_bytes(off) + " in use (give a larger region)");
  }
  std::byte* e = region_.data() + kEntriesOff + n * kEntryBytes;
  std::memset(e, 0, kEntryBytes);
  std::memcpy(e, name.data(), name.size());
  std::memcpy(e + 40, &off, 8);
  std::memcpy(e + 48, &rounded, 8);
  const uint32_t next = n + 1;
  std::memcpy(region_.data() + kCountOff, &next, 4);
  at(word(kUsedOff)).store(off + rounded, std::memory_order_relaxed);
  return region_.subspan(off, rounded);
}

void RegionDirectory::seal() {
  // release: every entry (and whatever the creator wrote into the windows) before the flag.
  at(word(kSealedOff)).store(1, std::memory_order_release);
}

Result<std::span<std::byte>> RegionDirectory::find(std::string_view name) const {
  const uint32_t n = std::min(count(), kMaxEntries);
  for (uint32_t i = 0; i < n; ++i) {
    const std::byte* e = region_.data() + kEntriesOff + i * kEntryBytes;
    const char* stored = reinterpret_cast<const char*>(e);
    if (strnlen(stored, 40) == name.size() && std::memcmp(stored, name.data(), name.size()) == 0) {
      uint64_t off = 0, len = 0;
      std::memcpy(&off, e + 40, 8);
      std::memcpy(&len, e + 48, 8);
      return region_.subspan(off, len);
    }
  }
  return Status::not_found("the shared region has no window named " + std::string(name));
}

}  // namespace nrx::transport
