#include "kernel/mem/ncache.h"

#include <bit>
#include <string>

#include "base/check.h"
#include "kernel/mem/memory.h"

namespace nrx::mem {

NCache::NCache(uint32_t pool_id, uint64_t pool_bytes)
    : pool_id_(pool_id), chunk_count_(pool_bytes / kLargeFrameSize) {
  MutexLock lock(mu_);
  chunks_.resize(chunk_count_);
  large_free_.reserve(chunks_.size());
  partial_.reserve(chunks_.size());
  for (size_t i = chunks_.size(); i-- > 0;) large_free_.push_back(static_cast<uint32_t>(i));
}

Result<Frame> NCache::allocate(FrameClass cls) {
  MutexLock lock(mu_);
  return allocate_locked(cls);
}

Result<uint32_t> NCache::allocate_batch(FrameClass cls, uint32_t count, std::vector<Frame>& out) {
  MutexLock lock(mu_);
  uint32_t got = 0;
  for (; got < count; ++got) {
    Result<Frame> f = allocate_locked(cls);
    if (!f.ok()) {
      if (got == 0) return f.status();
      break;
    }
    out.push_back(*f);
  }
  return got;
}

Result<Frame> NCache::allocate_locked(FrameClass cls) {
  if (cls == FrameClass::kLarge) {
    if (large_free_.empty()) {
      return Status::resource_exhausted("pool " + std::to_string(pool_id_) + " has no free 2 MiB frame (" +
                                        std::to_string(free_base_) + " free 4 KiB frames)");
    }
    const uint32_t c = large_free_.back();
    large_free_.pop_back();
    chunks_[c].state = ChunkState::kLarge;
    return Frame{.pool = pool_id_, .cls = FrameClass::kLarge, .offset = uint64_t{c} * kLargeFrameSize};
  }
  // Drop stale entries: chunks that filled up or coalesced since they were listed.
  while (!partial_.empty()) {
    Chunk& top = chunks_[partial_.back()];
    if (top.state == ChunkState::kSplit && top.free_count > 0) break;
    top.in_partial = false;
    partial_.pop_back();
  }
  if (partial_.empty()) {
    if (large_free_.empty()) {
      return Status::resource_exhausted("pool " + std::to_string(pool_id_) + " has no free 4 KiB frame");
    }
    const uint32_t c = large_free_.back();
    large_free_.pop_back();
    Chunk& chunk = chunks_[c];
    chunk.state = ChunkState::kSplit;
    chunk.free_bits.fill(~uint64_t{0});
    chunk.free_count = kBasePerLarge;
    free_base_ += kBasePerLarge;
    if (!chunk.in_partial) {
      chunk.in_partial = true;
      partial_.push_back(c);
    }
  }
  const uint32_t c = partial_.back();
  Chunk& chunk = chunks_[c];
  for (uint32_t w = 0; w < chunk.free_bits.size(); ++w) {
    if (chunk.free_bits[w] == 0) continue;
    const uint32_t bit = static_cast<uint32_t>(std::countr_zero(chunk.free_bits[w]));
    chunk.free_bits[w] &= ~(uint64_t{1} << bit);
    --chunk.free_count;
    --free_base_;
    return Frame{.pool = pool_id_,
                 .cls = FrameClass::kBase,
                 .offset = uint64_t{c} * kLargeFrameSize + (uint64_t{w} * 64 + bit) * kBaseFrameSize};
  }
  NRX_CHECK(false, "NCache: a partial chunk with free_count > 0 has no free bit");
  return Status::internal("unreachable");
}

Status NCache::free(const Frame& frame) {
  MutexLock lock(mu_);
  return free_locked(frame);
}

Status NCache::free_batch(std::span<const Frame> frames) {
  MutexLock lock(mu_);
  Status first;
  for (const Frame& f : frames) {
    Status st = free_locked(f);
    if (!st.ok() && first.ok()) first = st;
  }
  return first;
}

Status NCache::free_locked(const Frame& frame) {
  if (frame.pool != pool_id_) {
    return Status::invalid_argument("frame of pool " + std::to_string(frame.pool) + " freed to pool " +
                                    std::to_string(pool_id_));
  }
  if (frame.offset % frame.size() != 0 || frame.offset / kLargeFrameSize >= chunks_.size()) {
    return Status::invalid_argument("frame offset " + std::to_string(frame.offset) + " is misaligned or outside pool " +
                                    std::to_string(pool_id_));
  }
  const auto c = static_cast<uint32_t>(frame.offset / kLargeFrameSize);
  Chunk& chunk = chunks_[c];
  if (frame.cls == FrameClass::kLarge) {
    if (chunk.state != ChunkState::kLarge) {
      return Status::failed_precondition("2 MiB frame at offset " + std::to_string(frame.offset) +
                                         " is not allocated as a 2 MiB frame (double free?)");
    }
    chunk.state = ChunkState::kFree;
    large_free_.push_back(c);
    return Status::ok_status();
  }
  const uint64_t i = (frame.offset % kLargeFrameSize) / kBaseFrameSize;
  const uint64_t mask = uint64_t{1} << (i % 64);
  if (chunk.state != ChunkState::kSplit || (chunk.free_bits[i / 64] & mask) != 0) {
    return Status::failed_precondition("4 KiB frame at offset " + std::to_string(frame.offset) +
                                       " is not allocated as a 4 KiB frame (double free?)");
  }
  chunk.free_bits[i / 64] |= mask;
  ++chunk.free_count;
  ++free_base_;
  if (chunk.free_count == kBasePerLarge) {  // coalesce: the whole chunk is a free 2 MiB frame again
    chunk.state = ChunkState::kFree;
    free_base_ -= kBasePerLarge;
    large_free_.push_back(c);
  } else if (!chunk.in_partial) {
    chunk.in_partial = true;
    partial_.push_back(c);
  }
  return Status::ok_status();
}

CacheStats NCache::stats() const {
  MutexLock lock(mu_);
  return {free_base_, large_free_.size()};
}

TCache::TCache(Memory& memory, uint32_t home_pool)
    : memory_(memory), home_(memory.ncache(home_pool)), home_pool_(home_pool) {
  base_.reserve(kBaseCapacity);
  large_.reserve(kLargeCapacity);
}

TCache::~TCache() { (void)drain(); }  // frees were checked on the way in

Result<Frame> TCache::allocate(FrameClass cls) {
  std::vector<Frame>& s = stock(cls);
  if (s.empty()) NRX_RETURN_IF_ERROR(home_.allocate_batch(cls, capacity(cls) / 2, s).status());
  Frame f = s.back();
  s.pop_back();
  return f;
}

Status TCache::free(const Frame& frame) {
  if (frame.pool != home_pool_) {
    if (frame.pool >= memory_.pool_count()) {
      return Status::invalid_argument("frame of unknown pool " + std::to_string(frame.pool));
    }
    return memory_.ncache(frame.pool).free(frame);
  }
  std::vector<Frame>& s = stock(frame.cls);
  for (const Frame& held : s) {
    if (held == frame) {
      return Status::failed_precondition("frame at offset " + std::to_string(frame.offset) + " freed twice");
    }
  }
  s.push_back(frame);
  if (s.size() >= capacity(frame.cls)) {
    // Return the older half (the bottom of the stack) and keep the recently freed, cache-warm half.
    const size_t give = capacity(frame.cls) / 2;
    Status st = home_.free_batch(std::span<const Frame>(s).first(give));
    s.erase(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(give));
    return st;
  }
  return Status::ok_status();
}

Status TCache::drain() {
  Status st = home_.free_batch(base_);
  Status large = home_.free_batch(large_);
  base_.clear();
  large_.clear();
  return st.ok() ? large : st;
}

}  // namespace nrx::mem
