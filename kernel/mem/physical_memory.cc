#include "kernel/mem/physical_memory.h"

#include <numa.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

namespace nrx::mem {
namespace {

std::string node_suffix(int node) { return node >= 0 ? ", node " + std::to_string(node) : ", first-touch"; }

Status check_size(uint64_t bytes) {
  if (bytes == 0 || bytes % kLargeFrameSize != 0) {
    return Status::invalid_argument("pool size must be a non-zero multiple of 2 MiB, got " + std::to_string(bytes));
  }
  if (bytes > kMaxPoolBytes) return Status::invalid_argument("pool size above 1 TiB");
  return Status::ok_status();
}

}  // namespace

Result<std::unique_ptr<Pool>> Pool::create(const PoolOptions& options) {
  NRX_RETURN_IF_ERROR(check_size(options.bytes));
  const bool numa = numa_available() >= 0;
  if (options.numa_node >= 0 && (!numa ? options.numa_node != 0 : options.numa_node > numa_max_node())) {
    return Status::invalid_argument("NUMA node " + std::to_string(options.numa_node) + " does not exist");
  }
  if (options.huge != HugePages::kOff) {
    void* p = mmap(nullptr, options.bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);  // reserved up front: no SIGBUS later
    if (p != MAP_FAILED) {
      if (numa && options.numa_node >= 0) numa_tonode_memory(p, options.bytes, options.numa_node);
      return std::unique_ptr<Pool>(new Pool(static_cast<std::byte*>(p), options.bytes, options.bytes,
                                            options.numa_node, true,
                                            "2 MiB hugetlb pages" + node_suffix(options.numa_node)));
    }
    if (options.huge == HugePages::kOn) {
      return Status::resource_exhausted(std::string("no 2 MiB huge pages for the pool (") + std::strerror(errno) +
                                        "); reserve some in /proc/sys/vm/nr_hugepages or use 4 KiB pages");
    }
  }
  // Over-map by 2 MiB and trim, so the pool is 2 MiB aligned and THP can back it.
  const uint64_t len = options.bytes + kLargeFrameSize;
  void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    return Status::resource_exhausted(std::string("mapping a pool of ") + std::to_string(options.bytes >> 20) +
                                      " MiB failed: " + std::strerror(errno));
  }
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kLargeFrameSize - 1) & ~(kLargeFrameSize - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = aligned + options.bytes;
  if (start + len > end) munmap(reinterpret_cast<void*>(end), start + len - end);
  void* p = reinterpret_cast<void*>(aligned);
  (void)madvise(p, options.bytes, MADV_HUGEPAGE);  // advice only: fine if THP is off
  if (numa && options.numa_node >= 0) numa_tonode_memory(p, options.bytes, options.numa_node);
  return std::unique_ptr<Pool>(new Pool(static_cast<std::byte*>(p), options.bytes, options.bytes, options.numa_node,
                                        false, "4 KiB pages (THP advised)" + node_suffix(options.numa_node)));
}

Result<std::unique_ptr<Pool>> Pool::adopt(std::span<std::byte> memory, std::string backing) {
  if (memory.data() == nullptr) return Status::invalid_argument("cannot adopt a null region as a pool");
  if (reinterpret_cast<uintptr_t>(memory.data()) % kLargeFrameSize != 0) {
    return Status::invalid_argument("a pool's memory must be 2 MiB aligned");
  }
  NRX_RETURN_IF_ERROR(check_size(memory.size()));
  return std::unique_ptr<Pool>(new Pool(memory.data(), memory.size(), 0, -1, false, std::move(backing)));
}

Pool::~Pool() {
  if (map_len_ != 0) munmap(base_, map_len_);
}

Result<uint32_t> PhysicalMemory::add_pool(std::unique_ptr<Pool> pool) {
  if (pool == nullptr) return Status::invalid_argument("null pool");
  if (pools_.size() >= kMaxPools) return Status::resource_exhausted("at most 4096 pools");
  pools_.push_back(std::move(pool));
  return static_cast<uint32_t>(pools_.size() - 1);
}

std::byte* PhysicalMemory::frame_ptr(const Frame& frame) const {
  if (frame.cls != FrameClass::kBase && frame.cls != FrameClass::kLarge) return nullptr;
  if (frame.offset % frame.size() != 0) return nullptr;
  return paddr_ptr(frame.paddr(), frame.size());
}

std::byte* PhysicalMemory::paddr_ptr(uint64_t paddr, uint64_t len) const {
  const uint64_t id = paddr >> kPoolShift;
  const uint64_t offset = paddr & (kMaxPoolBytes - 1);
  if (id >= pools_.size() || len == 0) return nullptr;
  const Pool& p = *pools_[id];
  if (offset >= p.size() || len > p.size() - offset) return nullptr;
  return p.base() + offset;
}

}  // namespace nrx::mem
