// nrx::proc loader: process creation in two stages (NrOS paper section 4.4; DESIGN 4, proc).
//
//   Stage 1, outside NR (prepare_image): parse and validate the ELF64 file (ElfImage), allocate one
//   4 KiB frame per page of every writable segment from the creator's node and fill it with the
//   segment's file bytes and zeros. These frames are shared: every replica maps the same ones, so a
//   store by the process is seen whichever replica translates it.
//   Stage 2, replicated (load_image): with the load offset the process table agreed on (0 for a
//   fixed-address executable), map each read-only segment as a per-replica copy (Vspace::map_copy:
//   every replica copies the bytes into frames of its own node, so instruction fetches and rodata
//   reads stay node-local), map the shared writable frames, and map a zeroed stack.
//
// A page's bytes are what mmap of the file would give: the file from the page-aligned offset up to
// the segment's file size, zeros after (the bss). Rights follow p_flags (every page readable).
//
// Thread safety: a PreparedImage is a plain value, used by one thread; load_image runs on the
// caller's Core of the Vspace.
//
//   auto img = proc::prepare_image(file, memory, /*pool=*/0).value();
//   auto vs = vmem::Vspace<logs::RingLog>::create(memory, {.replica_pools = {0, 1}}, &logs::RingLog::create).value();
//   auto* core = vs->attach_core(0).value();
//   NRX_CHECK(proc::load_image(*vs, *core, img, /*load_offset=*/0).ok(), "load");
//   uint64_t pc = img.elf.entry();   // + load offset for a PIE
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "base/status.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"
#include "kernel/proc/elf.h"
#include "kernel/vmem/address_space.h"
#include "kernel/vmem/vspace.h"

namespace nrx::proc {

// The stack every process gets: kStackPages pages ending at kStackTop, writable, zeroed.
inline constexpr uint64_t kStackTop = uint64_t{0x7ffe'0000'0000};
inline constexpr uint64_t kStackPages = 16;

struct PreparedImage {
  struct WritablePage {
    uint64_t vaddr = 0;  // before the load offset
    mem::Frame frame;    // shared by every replica
    uint8_t rights = 0;  // vmem::rights bits
  };
  ElfImage elf;
  std::span<const std::byte> file;     // the caller keeps the file alive until load_image returns
  std::vector<WritablePage> writable;  // owned by the image until load_image maps them
  std::vector<mem::Frame> stack;       // likewise
  uint64_t span() const { return elf.highest() - elf.lowest(); }
};

// vmem rights for ELF p_flags: user pages, writable and executable as the flags say.
inline uint8_t segment_rights(uint32_t flags) {
  uint8_t r = vmem::rights::kUser;
  if ((flags & kSegWrite) != 0) r |= vmem::rights::kWrite;
  if ((flags & kSegExecute) != 0) r |= vmem::rights::kExecute;
  return r;
}

// The bytes of page |page_vaddr| (page-aligned, inside |s|) as the file gives them: |out| (4 KiB)
// gets the file's bytes where the segment has them, zeros elsewhere.
void page_contents(const Segment& s, std::span<const std::byte> file, uint64_t page_vaddr, std::span<std::byte> out);

// Stage 1. Errors: ElfImage::parse's (kInvalidArgument); kResourceExhausted (pool |pool| ran out:
// nothing stays allocated).
Result<PreparedImage> prepare_image(std::span<const std::byte> file, mem::Memory& memory, uint32_t pool);

// Frees the frames |img| still owns (after a failed or abandoned load). Idempotent.
void release_image(PreparedImage& img, mem::Memory& memory);

// Stage 2. On success the frames belong to the address space (unmapping returns them) and |img|
// owns none. Errors: kInvalidArgument (a PIE whose offset is not page-aligned, or an image that
// would leave the user half); Vspace::map_copy and map errors (kAlreadyExists, kResourceExhausted,
// the log's). On error the pages mapped so far stay mapped (the caller tears the address space
// down) and |img| keeps only the frames not yet mapped.
template <typename L>
Status load_image(vmem::Vspace<L>& vs, typename vmem::Vspace<L>::Core& core, PreparedImage& img,
                  uint64_t load_offset) {
  if (load_offset % kPageSize != 0) return Status::invalid_argument("load offset not page-aligned");
  if (load_offset != 0 && !img.elf.position_independent()) {
    return Status::invalid_argument("a fixed-address executable takes no load offset");
  }
  if (img.elf.highest() + load_offset > (uint64_t{1} << 47) || img.elf.highest() + load_offset < load_offset) {
    return Status::invalid_argument("the image does not fit the user half at this offset");
  }
  std::vector<std::byte> copy;
  for (const Segment& s : img.elf.segments()) {
    if (s.writable()) continue;
    const uint64_t len = s.page_end() - s.page_start();
    copy.assign(len, std::byte{0});
    for (uint64_t p = 0; p < len; p += kPageSize) {
      page_contents(s, img.file, s.page_start() + p, std::span<std::byte>(copy).subspan(p, kPageSize));
    }
    // Trailing zero pages need not travel in the payload: map_copy zero-fills past it.
    uint64_t used = len;
    while (used > 0 && copy[used - 1] == std::byte{0}) --used;
    NRX_RETURN_IF_ERROR(vs.map_copy(core, std::span<const std::byte>(copy.data(), used), s.page_start() + load_offset,
                                    len, segment_rights(s.flags)));
  }
  while (!img.writable.empty()) {
    const PreparedImage::WritablePage& w = img.writable.back();
    NRX_RETURN_IF_ERROR(vs.map(core, w.frame, w.vaddr + load_offset, kPageSize, w.rights));
    img.writable.pop_back();
  }
  while (!img.stack.empty()) {
    const uint64_t va = kStackTop - img.stack.size() * kPageSize;
    NRX_RETURN_IF_ERROR(
        vs.map(core, img.stack.back(), va, kPageSize, vmem::rights::kUser | vmem::rights::kWrite));
    img.stack.pop_back();
  }
  return Status::ok_status();
}

}  // namespace nrx::proc
