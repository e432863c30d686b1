// nrx::transport::RegionDirectory: named, page-aligned windows carved out of one shared region,
// so that everything a cluster shares (each log, CNR's scan order) can live in the ONE region a
// machine has: an ivshmem BAR, a device-dax device, or a /dev/shm file.
//
// Layout: a 4 KiB header at offset 0 (magic "NRXDIR01", version, cluster id, capacity, bump
// pointer, sealed flag, up to kMaxEntries entries of {name, offset, bytes}), then the windows in
// allocation order, each at a 4 KiB boundary. The creator formats the region, allocates every
// window and then seals the directory; attachers wait until it is sealed (the creator may still
// be building when they start, as on another VM) and look windows up by name. A directory is
// immutable once sealed; there is no freeing.
//
// Thread safety: the creator's calls (format, allocate, seal) from one thread; find() and the
// accessors from any thread once open() returned.
//
//   auto dir = RegionDirectory::format(region.bytes(), cluster_id).value();       // machine 0
//   std::span<std::byte> log0 = dir.allocate("fs0", bytes).value();
//   dir.seal();
//   auto same = RegionDirectory::open(region.bytes(), cluster_id, 60s).value();    // machine 1
//   std::span<std::byte> also_log0 = same.find("fs0").value();
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

namespace nrx::transport {

class RegionDirectory {
 public:
  static constexpr uint64_t kHeaderBytes = 4096;
  static constexpr uint64_t kAlign = 4096;
  static constexpr uint32_t kMaxEntries = 60;
  static constexpr size_t kMaxName = 39;

  // Formats |region| (8-byte aligned, larger than the header; anything in it is lost, and an
  // attacher never sees a half-written header). Errors: kInvalidArgument.
  static Result<RegionDirectory> format(std::span<std::byte> region, uint64_t cluster_id);
  // Waits up to |wait| for a sealed directory of |cluster_id| in |region|. Errors:
  // kInvalidArgument (too small, misaligned), kFailedPrecondition (another cluster or layout
  // version; a directory that lies about its windows), kDeadlineExceeded (none sealed in time).
  static Result<RegionDirectory> open(std::span<std::byte> region, uint64_t cluster_id,
                                      std::chrono::nanoseconds wait);

  // Creator, before seal(): a new window of |bytes| (rounded up to kAlign) named |name|.
  // Errors: kInvalidArgument (empty or over-long name, 0 bytes), kAlreadyExists,
  // kResourceExhausted (the region or the entry table is full: the message says how much the
  // region would need), kFailedPrecondition (sealed, or not the creator).
  Result<std::span<std::byte>> allocate(std::string_view name, uint64_t bytes);
  // Creator: no more windows; attachers may now open the directory.
  void seal();
  // The window named |name|. Errors: kNotFound.
  Result<std::span<std::byte>> find(std::string_view name) const;

  uint64_t capacity() const { return region_.size(); }
  uint64_t used() const;  // header and windows
  uint32_t count() const;

 private:
  RegionDirectory(std::span<std::byte> region, bool creator) : region_(region), creator_(creator) {}
  uint64_t* word(size_t offset) const { return reinterpret_cast<uint64_t*>(region_.data() + offset); }

  std::span<std::byte> region_;
  bool creator_ = false;
};

}  // namespace nrx::transport
