// The ELF64 loader's first stage on real binaries built in the tree (static and PIE) and on broken
// files: every malformed header, table or segment is an error with a reason, never a crash.
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/proc/elf.h"

namespace nrx::proc {
namespace {

std::vector<std::byte> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

template <typename T>
void poke(std::vector<std::byte>& f, size_t offset, T value) {
  std::memcpy(f.data() + offset, &value, sizeof value);
}

std::string error_of(const std::vector<std::byte>& f) {
  auto r = ElfImage::parse(f);
  return r.ok() ? "" : r.status().message();
}

TEST(Elf, ParsesTheStaticExecutable) {
  auto file = read_file(NRX_TESTPROG_STATIC);
  ASSERT_GT(file.size(), 4096u);
  auto img = ElfImage::parse(file);
  ASSERT_TRUE(img.ok()) << img.status().to_string();
  EXPECT_FALSE(img->position_independent());
  EXPECT_GE(img->segments().size(), 2u);
  bool code = false, data = false;
  for (const Segment& s : img->segments()) {
    code |= (s.flags & kSegExecute) != 0;
    data |= s.writable() && s.memsz > s.filesz;  // .data + .bss
  }
  EXPECT_TRUE(code);
  EXPECT_TRUE(data);
  EXPECT_GE(img->lowest(), 0x400000u);  // the classic non-PIE base
}

TEST(Elf, ParsesThePositionIndependentExecutable) {
  auto file = read_file(NRX_TESTPROG_PIE);
  auto img = ElfImage::parse(file);
  ASSERT_TRUE(img.ok()) << img.status().to_string();
  EXPECT_TRUE(img->position_independent());
  EXPECT_EQ(img->lowest(), 0u);  // linked at 0: the kernel picks the load offset
}

TEST(Elf, RejectsBrokenFiles) {
  const auto good = read_file(NRX_TESTPROG_STATIC);
  ASSERT_TRUE(ElfImage::parse(good).ok());
  auto f = good;
  // Truncations anywhere in the header, the program headers and the segments.
  for (size_t n : {size_t{0}, size_t{3}, size_t{63}, size_t{100}, good.size() / 2}) {
    std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_NE(error_of(cut), "") << n;
  }
  f = good;
  f[0] = std::byte{0};
  EXPECT_NE(error_of(f).find("magic"), std::string::npos);
  f = good;
  f[4] = std::byte{1};  // ELFCLASS32
  EXPECT_NE(error_of(f).find("ELFCLASS64"), std::string::npos);
  f = good;
  f[5] = std::byte{2};  // big-endian
  EXPECT_NE(error_of(f).find("little-endian"), std::string::npos);
  f = good;
  poke<uint16_t>(f, 18, 183);  // EM_AARCH64
  EXPECT_NE(error_of(f).find("not x86-64"), std::string::npos);
  f = good;
  poke<uint16_t>(f, 16, 1);  // ET_REL
  EXPECT_NE(error_of(f).find("EXEC or DYN"), std::string::npos);
  f = good;
  poke<uint64_t>(f, 32, good.size());  // e_phoff past the end
  EXPECT_NE(error_of(f).find("outside the file"), std::string::npos);
  f = good;
  poke<uint16_t>(f, 56, 0xffff);  // e_phnum: a table far larger than the file
  EXPECT_NE(error_of(f).find("outside the file"), std::string::npos);
  f = good;
  poke<uint16_t>(f, 54, 32);  // e_phentsize
  EXPECT_NE(error_of(f), "");

  // Segment-level damage: find the first PT_LOAD and break it in different ways.
  uint64_t phoff;
  std::memcpy(&phoff, good.data() + 32, 8);
  uint16_t phnum;
  std::memcpy(&phnum, good.data() + 56, 2);
  size_t load = 0;
  for (uint16_t i = 0; i < phnum; ++i) {
    uint32_t type;
    std::memcpy(&type, good.data() + phoff + i * 56, 4);
    if (type == 1) {
      load = phoff + i * 56;
      break;
    }
  }
  ASSERT_NE(load, 0u);
  f = good;
  poke<uint64_t>(f, load + 32, uint64_t{1} << 40);  // p_filesz beyond the file
  EXPECT_NE(error_of(f), "");
  f = good;
  poke<uint64_t>(f, load + 40, uint64_t{1} << 36);  // p_memsz: 64 GiB
  EXPECT_NE(error_of(f).find("1 GiB"), std::string::npos);
  f = good;
  poke<uint64_t>(f, load + 16, uint64_t{1} << 47);  // p_vaddr past the user half
  EXPECT_NE(error_of(f), "");
  f = good;
  poke<uint64_t>(f, load + 16, 0x400123);  // vaddr and offset disagree modulo the page size
  EXPECT_NE(error_of(f).find("modulo"), std::string::npos);
  f = good;
  // Overlap: make the first loadable segment cover everything.
  poke<uint64_t>(f, load + 40, uint64_t{1} << 29);
  EXPECT_NE(error_of(f).find("overlap"), std::string::npos);
  f = good;
  poke<uint64_t>(f, 24, 0x10);  // the entry point outside every executable segment
  EXPECT_NE(error_of(f).find("entry"), std::string::npos);
}

}  // namespace
}  // namespace nrx::proc
