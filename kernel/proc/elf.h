// nrx::proc::ElfImage: the first stage of process creation (NrOS paper section 4.4): parse and
// validate an x86-64 ELF64 executable (static or position-independent) from its bytes, and list
// the PT_LOAD segments the kernel must map. Layout per the System V ABI (gABI "ELF-64 Object File
// Format" and the x86-64 psABI): Elf64_Ehdr / Elf64_Phdr, little-endian.
//
// Everything in the file is input from outside: every offset, size and count is checked before it
// is used, with a clear error, never undefined behaviour (STYLE: validate at the boundary).
// Rejected: truncated files, wrong magic, class (not ELF64), data (not little-endian), version,
// machine (not x86-64), type (not EXEC or DYN), program headers outside the file, segments whose
// file bytes lie outside the file, filesz > memsz, overlapping or oversized segments, segments
// reaching past the user half, misaligned segments (vaddr and offset must agree modulo the page
// size), no PT_LOAD at all, an entry point outside every executable segment.
//
// Thread safety: a parsed image is a plain value.
//
//   std::vector<std::byte> file = read_file("/bin/prog");
//   auto elf = ElfImage::parse(file).value();
//   for (const Segment& s : elf.segments()) map(s.vaddr + load_offset, s.memsz, s.flags);
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace nrx::proc {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kMaxSegmentBytes = uint64_t{1} << 30;  // 1 GiB: larger is refused
inline constexpr uint32_t kMaxSegments = 64;

// Segment permission bits (p_flags).
inline constexpr uint32_t kSegExecute = 1;
inline constexpr uint32_t kSegWrite = 2;
inline constexpr uint32_t kSegRead = 4;

struct Segment {
  uint64_t vaddr = 0;   // p_vaddr (before the load offset of a PIE)
  uint64_t memsz = 0;   // bytes in memory; the part past filesz is zero
  uint64_t offset = 0;  // p_offset: where the file bytes start
  uint64_t filesz = 0;
  uint32_t flags = 0;   // kSeg* bits
  bool writable() const { return (flags & kSegWrite) != 0; }
  // The page-aligned range the segment occupies in memory.
  uint64_t page_start() const { return vaddr & ~(kPageSize - 1); }
  uint64_t page_end() const { return (vaddr + memsz + kPageSize - 1) & ~(kPageSize - 1); }
};

class ElfImage {
 public:
  // Errors: kInvalidArgument naming the first problem found (see the header comment).
  static Result<ElfImage> parse(std::span<const std::byte> file);

  bool position_independent() const { return pie_; }  // ET_DYN: needs a load offset
  uint64_t entry() const { return entry_; }
  const std::vector<Segment>& segments() const { return segments_; }
  // Lowest and highest page-aligned addresses of all segments (before any load offset).
  uint64_t lowest() const { return segments_.front().page_start(); }
  uint64_t highest() const { return segments_.back().page_end(); }

 private:
  bool pie_ = false;
  uint64_t entry_ = 0;
  std::vector<Segment> segments_;  // sorted by vaddr
};

}  // namespace nrx::proc
