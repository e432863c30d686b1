// nrx::mem::Memory: the kernel's physical memory assembled: one pool and one NCache per (emulated)
// NUMA node, and the PhysicalMemory map that names them (DESIGN 4, mem). Boot creates one Memory;
// cores make their TCaches over it; NR-vMem reads page-table frames through physical().
//
// Thread safety: create() is set-up; afterwards everything is safe from any thread (the NCaches
// lock themselves, the pool map is read-only).
//
//   auto memory = nrx::mem::Memory::create({.nodes = 2, .pool_bytes = 256 << 20}).value();
//   nrx::mem::TCache core0(*memory, /*home_pool=*/0);
//   nrx::mem::Frame f = core0.allocate(nrx::mem::FrameClass::kLarge).value();
//   std::byte* bytes = memory->physical().frame_ptr(f);
//   std::printf("%s\n", memory->describe().c_str());
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/ncache.h"
#include "kernel/mem/physical_memory.h"

namespace nrx::mem {

struct MemoryOptions {
  uint32_t nodes = 1;                 // one pool per node
  uint64_t pool_bytes = 256ull << 20;  // per node; a multiple of 2 MiB
  HugePages huge = HugePages::kAuto;
  // Real NUMA node each pool is bound to (emulated nodes map onto real ones); empty: no binding.
  std::vector<int> physical_nodes = {};
};

class Memory {
 public:
  // Errors: kInvalidArgument (0 nodes, more than kMaxPools, physical_nodes of the wrong length);
  // Pool::create's errors.
  static Result<std::unique_ptr<Memory>> create(const MemoryOptions& options);

  const PhysicalMemory& physical() const { return physical_; }
  size_t pool_count() const { return ncaches_.size(); }
  // The NCache of pool |pool| (< pool_count()).
  NCache& ncache(uint32_t pool) const { return *ncaches_[pool]; }
  // Free memory over every node.
  CacheStats stats() const;
  // "2 pools x 256 MiB (4 KiB pages (THP advised), node 0 | ...)".
  std::string describe() const;

 private:
  Memory() = default;
  PhysicalMemory physical_;
  std::vector<std::unique_ptr<NCache>> ncaches_;
};

}  // namespace nrx::mem
