// nrx::mem::Pool and PhysicalMemory: the kernel's "physical memory" (DESIGN 4, mem). A Pool is one
// contiguous mapping that frames are carved from: one per NUMA node, bound to that node with
// libnuma and backed by 2 MiB huge pages where the machine has them reserved (else 4 KiB pages with
// transparent-huge-page advice); or, in rack mode, a shared region from transport/ adopted as is.
// PhysicalMemory numbers the pools and turns frame names and physical addresses into pointers,
// which is what the software page walker uses to read page-table frames.
//
// 4 KiB-page pools are mapped lazily (MAP_NORESERVE): they cost memory only for frames that are
// touched, so pools are sized generously. Hugetlb pools reserve their pages when mapped (a pool
// that cannot get them falls back or fails at creation, never with SIGBUS on first touch). Pool p's physical addresses are [p << kPoolShift, + size).
//
// Thread safety: add_pool is a set-up step (not concurrent with anything); afterwards every const
// method is safe from any thread. The frames' contents are the caller's business.
//
//   nrx::mem::PhysicalMemory pm;
//   auto pool = nrx::mem::Pool::create({.bytes = 64 << 20, .numa_node = 0}).value();
//   uint32_t id = pm.add_pool(std::move(pool)).value();
//   std::byte* p = pm.frame_ptr(nrx::mem::Frame{.pool = id, .offset = 0});
//   std::printf("%s\n", pm.pool(id)->backing().c_str());   // "4 KiB pages (THP advised), node 0"
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "kernel/mem/frame.h"

namespace nrx::mem {

enum class HugePages : uint8_t {
  kAuto,  // 2 MiB hugetlb pages if the machine has them reserved, else 4 KiB pages
  kOn,    // hugetlb pages or an error
  kOff,   // 4 KiB pages
};

struct PoolOptions {
  uint64_t bytes = 64ull << 20;  // multiple of 2 MiB, at most kMaxPoolBytes
  int numa_node = -1;            // bind the pool to this node; -1: first touch (no binding)
  HugePages huge = HugePages::kAuto;
};

class Pool {
 public:
  // Maps a new pool. Errors: kInvalidArgument (size 0, not a multiple of 2 MiB, above 1 TiB, or a
  // NUMA node that does not exist); kResourceExhausted (the mapping failed, or kOn without reserved
  // huge pages).
  static Result<std::unique_ptr<Pool>> create(const PoolOptions& options);
  // Uses memory mapped by someone else (a shared region in rack mode); not unmapped by the pool.
  // Errors: kInvalidArgument (null, not 2 MiB aligned, size not a multiple of 2 MiB or too large).
  static Result<std::unique_ptr<Pool>> adopt(std::span<std::byte> memory, std::string backing);

  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  std::byte* base() const { return base_; }
  uint64_t size() const { return size_; }
  int numa_node() const { return numa_node_; }
  bool huge_pages() const { return huge_; }
  // How the pool is backed, for summaries: "2 MiB hugetlb pages, node 0".
  const std::string& backing() const { return backing_; }

 private:
  Pool(std::byte* base, uint64_t size, uint64_t map_len, int node, bool huge, std::string backing)
      : base_(base), size_(size), map_len_(map_len), numa_node_(node), huge_(huge), backing_(std::move(backing)) {}

  std::byte* base_;
  uint64_t size_;
  uint64_t map_len_;  // 0 for adopted memory
  int numa_node_;
  bool huge_;
  std::string backing_;
};

class PhysicalMemory {
 public:
  // Returns the new pool's id (dense from 0). Errors: kResourceExhausted beyond kMaxPools.
  Result<uint32_t> add_pool(std::unique_ptr<Pool> pool);

  size_t pool_count() const { return pools_.size(); }
  // nullptr for an unknown id.
  const Pool* pool(uint32_t id) const { return id < pools_.size() ? pools_[id].get() : nullptr; }

  // The first byte of |frame|, or nullptr when the frame is not inside a pool (bad pool id,
  // misaligned, or past the end): names come from logs, so they are checked, not trusted.
  std::byte* frame_ptr(const Frame& frame) const;
  // |len| bytes at physical address |paddr|, or nullptr when they are not all inside one pool.
  std::byte* paddr_ptr(uint64_t paddr, uint64_t len) const;
  // Whether |frame| names memory inside a pool, aligned to its class.
  bool valid(const Frame& frame) const { return frame_ptr(frame) != nullptr; }

 private:
  std::vector<std::unique_ptr<Pool>> pools_;
};

}  // namespace nrx::mem
