#include "kernel/proc/loader.h"

#include <cstring>

namespace nrx::proc {

void page_contents(const Segment& s, std::span<const std::byte> file, uint64_t page_vaddr, std::span<std::byte> out) {
  std::memset(out.data(), 0, out.size());
  // As mmap of the file: the segment's pages show the file from the page-aligned offset
  // (offset - (vaddr - page_start), never negative: ElfImage checks vaddr = offset mod the page
  // size), up to the end of the file part; the bss after it is zero.
  const uint64_t lo = std::max(page_vaddr, s.page_start());
  const uint64_t hi = std::min(page_vaddr + out.size(), s.vaddr + s.filesz);
  if (lo >= hi) return;
  const uint64_t off = s.offset - (s.vaddr - s.page_start()) + (lo - s.page_start());
  if (off >= file.size()) return;
  const uint64_t n = std::min<uint64_t>(hi - lo, file.size() - off);
  std::memcpy(out.data() + (lo - page_vaddr), file.data() + off, n);
}

Result<PreparedImage> prepare_image(std::span<const std::byte> file, mem::Memory& memory, uint32_t pool) {
  if (pool >= memory.pool_count()) return Status::invalid_argument("pool " + std::to_string(pool) + " does not exist");
  NRX_ASSIGN_OR_RETURN(ElfImage elf, ElfImage::parse(file));
  PreparedImage img{.elf = std::move(elf), .file = file, .writable = {}, .stack = {}};
  mem::NCache& ncache = memory.ncache(pool);
  auto fail = [&](const Status& st) {
    release_image(img, memory);
    return st;
  };
  for (const Segment& s : img.elf.segments()) {
    if (!s.writable()) continue;
    for (uint64_t va = s.page_start(); va < s.page_end(); va += kPageSize) {
      Result<mem::Frame> f = ncache.allocate(mem::FrameClass::kBase);
      if (!f.ok()) return fail(f.status());
      std::byte* bytes = memory.physical().frame_ptr(*f);
      page_contents(s, file, va, std::span<std::byte>(bytes, kPageSize));
      img.writable.push_back({.vaddr = va, .frame = *f, .rights = segment_rights(s.flags)});
    }
  }
  for (uint64_t i = 0; i < kStackPages; ++i) {
    Result<mem::Frame> f = ncache.allocate(mem::FrameClass::kBase);
    if (!f.ok()) return fail(f.status());
    std::memset(memory.physical().frame_ptr(*f), 0, kPageSize);
    img.stack.push_back(*f);
  }
  return img;
}

void release_image(PreparedImage& img, mem::Memory& memory) {
  for (const auto& w : img.writable) (void)memory.ncache(w.frame.pool).free(w.frame);
  for (const mem::Frame& f : img.stack) (void)memory.ncache(f.pool).free(f);
  img.writable.clear();
  img.stack.clear();
}

}  // namespace nrx::proc
