// nrx::mem::NCache and TCache: the frame allocators of one NUMA node and of one core (NrOS paper
// section 4.1, whose kernel has the same two levels). An NCache owns every frame of its node's
// pool; a TCache is a core's small private stock, refilled from and drained to its node's NCache
// in batches so most allocations touch no shared line.
//
// NCache algorithm: the pool is cut into 2 MiB chunks. A chunk is free (a 2 MiB frame on the large
// free list), allocated as one 2 MiB frame, or split into 512 base frames tracked by a bitmap. A
// 4 KiB allocation takes the first free bit of a partially free split chunk (splitting a free
// chunk when none is left); a free that completes a chunk's bitmap turns it back into a free
// 2 MiB frame (coalescing, so 2 MiB frames do not run out while 4 KiB frames sit free).
// Invariants: every chunk is in exactly one state; free_base_ is the number of set bits over all
// split chunks; a frame can be freed only from the state it was allocated in (a double free or a
// free of the wrong class is an error, not corruption).
//
// Thread safety: NCache is safe from any thread (one mutex; a node's cores share it). A TCache
// belongs to one core: it is used by one thread at a time.
//
//   NCache node0(pool_id, pool_bytes);
//   TCache core0(memory, pool_id);                 // memory routes frees of other pools' frames
//   Frame f = core0.allocate(FrameClass::kBase).value();
//   (void)core0.free(f);
//   Frame big = node0.allocate(FrameClass::kLarge).value();   // out of memory: kResourceExhausted
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "kernel/mem/frame.h"

namespace nrx::mem {

class Memory;

struct CacheStats {
  uint64_t free_base = 0;   // free 4 KiB frames in split chunks
  uint64_t free_large = 0;  // free 2 MiB frames
  uint64_t free_bytes() const { return free_base * kBaseFrameSize + free_large * kLargeFrameSize; }
};

class NCache {
 public:
  // Manages every frame of pool |pool_id|, |pool_bytes| long (a multiple of 2 MiB).
  NCache(uint32_t pool_id, uint64_t pool_bytes);

  uint32_t pool_id() const { return pool_id_; }
  uint64_t capacity_bytes() const { return chunk_count_ * kLargeFrameSize; }

  // Errors: kResourceExhausted when the pool has no free frame of the class.
  Result<Frame> allocate(FrameClass cls) NRX_EXCLUDES(mu_);
  // Up to |count| frames of |cls| appended to |out|; returns how many (>= 1).
  // Errors: kResourceExhausted when not even one is free.
  Result<uint32_t> allocate_batch(FrameClass cls, uint32_t count, std::vector<Frame>& out) NRX_EXCLUDES(mu_);
  // Errors: kInvalidArgument (another pool's frame, misaligned or out of range);
  // kFailedPrecondition (not allocated as this class: a double free or the wrong class).
  Status free(const Frame& frame) NRX_EXCLUDES(mu_);
  // Frees each frame; returns the first error and goes on with the rest.
  Status free_batch(std::span<const Frame> frames) NRX_EXCLUDES(mu_);

  CacheStats stats() const NRX_EXCLUDES(mu_);

 private:
  enum class ChunkState : uint8_t { kFree, kLarge, kSplit };
  struct Chunk {
    std::array<uint64_t, kBasePerLarge / 64> free_bits{};  // bit set: that 4 KiB frame is free
    uint16_t free_count = 0;
    ChunkState state = ChunkState::kFree;
    bool in_partial = false;  // listed in partial_ (possibly stale: checked when popped)
  };

  Result<Frame> allocate_locked(FrameClass cls) NRX_REQUIRES(mu_);
  Status free_locked(const Frame& frame) NRX_REQUIRES(mu_);

  const uint32_t pool_id_;
  const uint64_t chunk_count_;  // 2 MiB chunks in the pool
  mutable Mutex mu_;
  std::vector<Chunk> chunks_ NRX_GUARDED_BY(mu_);
  std::vector<uint32_t> large_free_ NRX_GUARDED_BY(mu_);  // free chunks, a stack (low offsets first)
  std::vector<uint32_t> partial_ NRX_GUARDED_BY(mu_);     // split chunks that may have free frames
  uint64_t free_base_ NRX_GUARDED_BY(mu_) = 0;
};

class TCache {
 public:
  static constexpr uint32_t kBaseCapacity = 64;  // refill/drain by half of this
  static constexpr uint32_t kLargeCapacity = 8;

  // A core's cache over |memory|, refilled from the NCache of pool |home_pool|.
  TCache(Memory& memory, uint32_t home_pool);
  ~TCache();  // drains everything back to the NCache
  TCache(const TCache&) = delete;
  TCache& operator=(const TCache&) = delete;

  // Errors: kResourceExhausted when neither this cache nor its node has a frame of |cls|.
  Result<Frame> allocate(FrameClass cls);
  // Keeps a home-pool frame (draining half to the NCache when full); another pool's frame goes
  // straight back to its own NCache. Errors: as NCache::free for frames that reach an NCache;
  // kInvalidArgument for a frame of an unknown pool; kFailedPrecondition for a frame already in
  // this cache (a double free).
  Status free(const Frame& frame);
  // Returns every cached frame to the NCache. Errors: the first NCache::free error (a frame the
  // owner freed that the NCache did not hand out).
  Status drain();

  uint32_t home_pool() const { return home_pool_; }
  CacheStats stats() const { return {base_.size(), large_.size()}; }

 private:
  std::vector<Frame>& stock(FrameClass cls) { return cls == FrameClass::kLarge ? large_ : base_; }
  static uint32_t capacity(FrameClass cls) { return cls == FrameClass::kLarge ? kLargeCapacity : kBaseCapacity; }

  Memory& memory_;
  NCache& home_;
  const uint32_t home_pool_;
  std::vector<Frame> base_;
  std::vector<Frame> large_;
};

}  // namespace nrx::mem
