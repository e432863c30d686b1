// nrx::mem::Frame: the name of a physical frame, the same on every replica and every machine
// (DESIGN 4, mem). A frame is (pool, offset): pool is the index of a physical-memory pool (one per
// NUMA node, or a shared CXL region in rack mode) and offset the frame's byte offset inside it.
// Names, never pointers, travel in log entries: a pointer means nothing on another machine.
//
// Physical addresses: the kernel's page tables hold physical addresses, so every frame also has
// one, paddr = pool << kPoolShift | offset. Pool p owns [p * 1 TiB, p * 1 TiB + size); with
// x86-64's 52-bit physical addresses that leaves room for 4096 pools of up to 1 TiB each.
//
// Thread safety: plain values.
//
//   nrx::mem::Frame f{.pool = 1, .offset = 3 * nrx::mem::kBaseFrameSize};
//   uint64_t pa = f.paddr();                            // 0x100'0000'3000
//   nrx::mem::Frame g = nrx::mem::Frame::from_paddr(pa, nrx::mem::FrameClass::kBase);
//   NRX_CHECK(f == g);
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace nrx::mem {

inline constexpr uint64_t kBaseFrameSize = 4096;             // 4 KiB
inline constexpr uint64_t kLargeFrameSize = 2 * 1024 * 1024;  // 2 MiB
inline constexpr uint64_t kBasePerLarge = kLargeFrameSize / kBaseFrameSize;  // 512

inline constexpr unsigned kPoolShift = 40;  // a pool spans at most 1 TiB of physical addresses
inline constexpr uint64_t kMaxPoolBytes = uint64_t{1} << kPoolShift;
inline constexpr uint32_t kMaxPools = 4096;  // 12 bits of pool id: paddr stays below 2^52

enum class FrameClass : uint8_t { kBase = 0, kLarge = 1 };  // 4 KiB, 2 MiB

constexpr uint64_t frame_size(FrameClass c) { return c == FrameClass::kLarge ? kLargeFrameSize : kBaseFrameSize; }
constexpr const char* frame_class_name(FrameClass c) { return c == FrameClass::kLarge ? "2 MiB" : "4 KiB"; }

struct Frame {
  uint32_t pool = 0;
  FrameClass cls = FrameClass::kBase;
  uint8_t reserved[3] = {};
  uint64_t offset = 0;  // multiple of frame_size(cls)

  uint64_t size() const { return frame_size(cls); }
  uint64_t paddr() const { return uint64_t{pool} << kPoolShift | offset; }
  static Frame from_paddr(uint64_t paddr, FrameClass cls) {
    return Frame{.pool = static_cast<uint32_t>(paddr >> kPoolShift), .cls = cls, .offset = paddr & (kMaxPoolBytes - 1)};
  }
  friend bool operator==(const Frame& a, const Frame& b) {
    return a.pool == b.pool && a.cls == b.cls && a.offset == b.offset;
  }
};
// Frames travel inside log entries (DESIGN 3.2): fixed layout, no pointers.
static_assert(std::is_trivially_copyable_v<Frame>);
static_assert(sizeof(Frame) == 16);
static_assert(offsetof(Frame, pool) == 0 && offsetof(Frame, cls) == 4 && offsetof(Frame, offset) == 8);

}  // namespace nrx::mem
