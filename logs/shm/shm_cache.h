// Cache maintenance for noncoherent shared memory (DESIGN 3.4, CXL 2.0-style sharing): write back
// the lines a host wrote so other hosts can read them from memory, and drop a host's own copy of
// lines another host may have written before reading them.
//
// Instruction choice (x86-64, probed once with cpuid at first use, never at compile time, so one
// binary runs on any x86-64 host or QEMU -cpu model):
//   write back:  clwb (keeps the line cached: the writer often reads it again), else clflushopt,
//                else clflush; then sfence, which orders the write-backs before the writer's later
//                stores (the "publish" store that follows must not reach memory first).
//   invalidate:  clflushopt, else clflush (clwb would keep a stale copy); then mfence, which
//                orders the flushes before the loads that follow (sfence does not order loads).
// Inline asm, not the _mm_clwb/__builtin_ia32_clflushopt intrinsics: those need -mclwb /
// -mclflushopt on the translation unit (a global flag), and asm lets a runtime probe pick.
// Other architectures: a full fence only (no noncoherent hosts to share with there yet).
//
// Invariants: whole 64-byte lines are flushed (the ones |p, p + n) touches). Thread safety: the
// probe is a function-local static (initialised once, thread-safe); the rest is stateless.
//
//   std::memcpy(slot, entry, n);
//   shm::cache::write_back(slot, n);        // now in memory for every host
//   shm::cache::invalidate(other, m);       // next loads of |other| come from memory
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "base/cacheline.h"

namespace nrx::logs::shm::cache {

enum class FlushInstruction { kNone, kClflush, kClflushopt, kClwb };

struct Instructions {
  FlushInstruction write_back = FlushInstruction::kNone;
  FlushInstruction invalidate = FlushInstruction::kNone;
};

// What this CPU supports (cpuid leaf 7 EBX bit 23: clflushopt, bit 24: clwb; leaf 1 EDX bit 19:
// clflush).
inline Instructions probe() {
  Instructions in;
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  bool clflush = false, clflushopt = false, clwb = false;
  if (__get_cpuid(1, &a, &b, &c, &d)) clflush = (d & (1u << 19)) != 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    clflushopt = (b & (1u << 23)) != 0;
    clwb = (b & (1u << 24)) != 0;
  }
  in.invalidate = clflushopt ? FlushInstruction::kClflushopt
                             : (clflush ? FlushInstruction::kClflush : FlushInstruction::kNone);
  in.write_back = clwb ? FlushInstruction::kClwb : in.invalidate;
#endif
  return in;
}

inline const Instructions& instructions() {
  static const Instructions kInstructions = probe();
  return kInstructions;
}

namespace detail {

inline void flush_lines(const void* p, size_t n, FlushInstruction how) {
#if defined(__x86_64__)
  if (n == 0 || how == FlushInstruction::kNone) return;
  auto line = reinterpret_cast<uintptr_t>(p) & ~(uintptr_t{kCacheLineSize} - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + n;
  for (; line < end; line += kCacheLineSize) {
    auto* addr = reinterpret_cast<char*>(line);
    switch (how) {
      case FlushInstruction::kClwb:
        asm volatile("clwb %0" : "+m"(*addr));
        break;
      case FlushInstruction::kClflushopt:
        asm volatile("clflushopt %0" : "+m"(*addr));
        break;
      case FlushInstruction::kClflush:
        asm volatile("clflush %0" : "+m"(*addr));
        break;
      case FlushInstruction::kNone:
        break;
    }
  }
#else
  (void)p;
  (void)n;
  (void)how;
#endif
}

}  // namespace detail

// After writing |n| bytes at |p| that another host will read.
inline void write_back(const void* p, size_t n) {
  detail::flush_lines(p, n, instructions().write_back);
#if defined(__x86_64__)
  // sfence: the write-backs complete before any later store (the publishing one) is visible.
  asm volatile("sfence" ::: "memory");
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// Before reading |n| bytes at |p| that another host may have written.
inline void invalidate(const void* p, size_t n) {
  detail::flush_lines(p, n, instructions().invalidate);
#if defined(__x86_64__)
  // mfence: the flushes complete before the loads that follow (sfence would not order loads).
  asm volatile("mfence" ::: "memory");
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// Orders this thread's earlier stores before its later loads (the store-load order Dekker-style
// protocols need; mfence, not a locked instruction). An asm statement on x86: ThreadSanitizer
// rejects std::atomic_thread_fence.
inline void store_load_fence() {
#if defined(__x86_64__)
  asm volatile("mfence" ::: "memory");
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace nrx::logs::shm::cache
