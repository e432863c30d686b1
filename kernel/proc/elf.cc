#include "kernel/proc/elf.h"

#include <algorithm>
#include <cstring>

namespace nrx::proc {
namespace {

// Elf64_Ehdr and Elf64_Phdr, as the gABI lays them out.
struct Ehdr {
  unsigned char ident[16];
  uint16_t type;
  uint16_t machine;
  uint32_t version;
  uint64_t entry;
  uint64_t phoff;
  uint64_t shoff;
  uint32_t flags;
  uint16_t ehsize;
  uint16_t phentsize;
  uint16_t phnum;
  uint16_t shentsize;
  uint16_t shnum;
  uint16_t shstrndx;
};
static_assert(sizeof(Ehdr) == 64);
static_assert(offsetof(Ehdr, entry) == 24 && offsetof(Ehdr, phoff) == 32 && offsetof(Ehdr, phnum) == 56);

struct Phdr {
  uint32_t type;
  uint32_t flags;
  uint64_t offset;
  uint64_t vaddr;
  uint64_t paddr;
  uint64_t filesz;
  uint64_t memsz;
  uint64_t align;
};
static_assert(sizeof(Phdr) == 56);
static_assert(offsetof(Phdr, offset) == 8 && offsetof(Phdr, filesz) == 32 && offsetof(Phdr, align) == 48);

constexpr unsigned char kMagic[4] = {0x7f, 'E', 'L', 'F'};
constexpr unsigned char kClass64 = 2;
constexpr unsigned char kData2Lsb = 1;
constexpr unsigned char kVersionCurrent = 1;
constexpr uint16_t kTypeExec = 2;
constexpr uint16_t kTypeDyn = 3;
constexpr uint16_t kMachineX86_64 = 62;
constexpr uint32_t kPtLoad = 1;
constexpr uint64_t kUserTop = uint64_t{1} << 47;

Status bad(const std::string& why) { return Status::invalid_argument("not a loadable x86-64 ELF64 file: " + why); }

}  // namespace

Result<ElfImage> ElfImage::parse(std::span<const std::byte> file) {
  if (file.size() < sizeof(Ehdr)) return bad("truncated header (" + std::to_string(file.size()) + " bytes)");
  Ehdr eh;
  std::memcpy(&eh, file.data(), sizeof eh);
  if (std::memcmp(eh.ident, kMagic, sizeof kMagic) != 0) return bad("bad magic");
  if (eh.ident[4] != kClass64) return bad("not ELFCLASS64");
  if (eh.ident[5] != kData2Lsb) return bad("not little-endian");
  if (eh.ident[6] != kVersionCurrent || eh.version != kVersionCurrent) return bad("unknown ELF version");
  if (eh.machine != kMachineX86_64) return bad("machine " + std::to_string(eh.machine) + " is not x86-64");
  if (eh.type != kTypeExec && eh.type != kTypeDyn) return bad("type " + std::to_string(eh.type) + " is not EXEC or DYN");
  if (eh.phentsize != sizeof(Phdr)) return bad("program header size " + std::to_string(eh.phentsize));
  if (eh.phnum == 0) return bad("no program headers");
  if (eh.phoff > file.size() || uint64_t{eh.phnum} * sizeof(Phdr) > file.size() - eh.phoff) {
    return bad("program headers lie outside the file");
  }
  ElfImage img;
  img.pie_ = eh.type == kTypeDyn;
  img.entry_ = eh.entry;
  for (uint16_t i = 0; i < eh.phnum; ++i) {
    Phdr ph;
    std::memcpy(&ph, file.data() + eh.phoff + uint64_t{i} * sizeof(Phdr), sizeof ph);
    if (ph.type != kPtLoad) continue;
    const std::string which = "segment " + std::to_string(i) + ": ";
    if (img.segments_.size() == kMaxSegments) return bad("more than 64 loadable segments");
    if (ph.memsz == 0) continue;  // nothing to map
    if (ph.filesz > ph.memsz) return bad(which + "file size larger than memory size");
    if (ph.memsz > kMaxSegmentBytes) return bad(which + "larger than 1 GiB");
    if (ph.offset > file.size() || ph.filesz > file.size() - ph.offset) return bad(which + "file bytes lie outside the file");
    if (ph.vaddr >= kUserTop || ph.memsz > kUserTop - ph.vaddr) return bad(which + "reaches past the user address space");
    if (ph.vaddr % kPageSize != ph.offset % kPageSize) return bad(which + "address and file offset disagree modulo the page size");
    img.segments_.push_back(Segment{ph.vaddr, ph.memsz, ph.offset, ph.filesz, ph.flags & 7u});
  }
  if (img.segments_.empty()) return bad("no loadable segment");
  std::sort(img.segments_.begin(), img.segments_.end(), [](const Segment& a, const Segment& b) { return a.vaddr < b.vaddr; });
  for (size_t i = 1; i < img.segments_.size(); ++i) {
    // Page granularity: two segments may not share a page (each page gets one set of rights).
    if (img.segments_[i].page_start() < img.segments_[i - 1].page_end()) return bad("segments overlap");
  }
  const bool entry_ok = std::any_of(img.segments_.begin(), img.segments_.end(), [&](const Segment& s) {
    return (s.flags & kSegExecute) != 0 && eh.entry >= s.vaddr && eh.entry < s.vaddr + s.memsz;
  });
  if (!entry_ok) return bad("entry point outside every executable segment");
  return img;
}

}  // namespace nrx::proc
