#include "kernel/boot/programs.h"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>

namespace nrx::boot {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kPage = 4096;

// A result that ends the program: a stop (-ESRCH) ends it cleanly, anything else is a failure.
int ended(int64_t r) { return r == -ESRCH ? 0 : 1; }

void fill(std::span<std::byte> block, uint64_t a, uint64_t b) {
  for (size_t i = 0; i < block.size(); i += 8) {
    const uint64_t v = (a * 0x9e3779b97f4a7c15ull) ^ (b + i);
    std::memcpy(block.data() + i, &v, std::min<size_t>(8, block.size() - i));
  }
}

int fsbench(Sys& sys, const ProgramArgs& args) {
  const Clock::time_point end = Clock::now() + args.duration;
  const int64_t pid = sys.getpid();
  if (pid < 0) return ended(pid);
  if (int64_t r = sys.mkdir("/fsbench"); r < 0 && r != -EEXIST) return ended(r);
  const std::string file = "/fsbench/p" + std::to_string(pid) + "-t" + std::to_string(sys.thread());
  const int64_t ino = sys.open(file, NRX_O_CREAT | NRX_O_RDWR | NRX_O_TRUNC);
  if (ino < 0) return ended(ino);
  constexpr uint64_t kBlocks = 256;  // 1 MiB
  std::array<uint64_t, kBlocks> version{};  // what each block holds (0: never written)
  std::vector<std::byte> block(kPage), back(kPage), want(kPage);
  std::mt19937_64 rng(args.seed * 1000003 + static_cast<uint64_t>(pid) * 31 + sys.thread());
  for (uint64_t round = 1; Clock::now() < end; ++round) {
    const uint64_t b = rng() % kBlocks;
    fill(block, round, b);
    int64_t r = sys.pwrite(static_cast<uint64_t>(ino), block, b * kPage);
    if (r != static_cast<int64_t>(kPage)) return ended(r < 0 ? r : -EIO);
    version[b] = round;
    const uint64_t c = rng() % kBlocks;
    r = sys.pread(static_cast<uint64_t>(ino), back, c * kPage);
    if (r < 0) return ended(r);
    if (version[c] != 0) {
      fill(want, version[c], c);
      if (r != static_cast<int64_t>(kPage) || std::memcmp(back.data(), want.data(), kPage) != 0) return 1;
    }
    if (round % 32 == 0) {
      const std::string tmp = file + ".tmp";
      const int64_t t = sys.open(tmp, NRX_O_CREAT | NRX_O_EXCL | NRX_O_WRONLY);
      if (t < 0) return ended(t);
      if (int64_t n = sys.count_entries("/fsbench"); n < 2) return ended(n < 0 ? n : -EIO);
      if (int64_t u = sys.unlink(tmp); u != 0) return ended(u);
    }
  }
  return 0;
}

int mapbench(Sys& sys, const ProgramArgs& args) {
  const Clock::time_point end = Clock::now() + args.duration;
  constexpr uint64_t kPages = 16;
  // Each thread its own region: threads of one process share the address space.
  const uint64_t base = 0x1000'0000'0000ull + uint64_t{sys.thread()} * (uint64_t{1} << 32);
  std::array<std::byte, 64> line{}, back{};
  for (uint64_t round = 1; Clock::now() < end; ++round) {
    const uint64_t va = base + (round % 64) * kPages * kPage;
    if (int64_t r = sys.mmap(va, kPages * kPage, NRX_PROT_WRITE); r != 0) return ended(r);
    for (uint64_t p = 0; p < kPages; ++p) {
      fill(line, round, p);
      if (int64_t r = sys.store(va + p * kPage + 128, line); r != 0) return ended(r);
    }
    for (uint64_t p = 0; p < kPages; ++p) {
      if (int64_t r = sys.load(va + p * kPage + 128, back); r != 0) return ended(r);
      fill(line, round, p);
      if (back != line) return 1;
    }
    // Half read-only: a store there must fault now, on this core and any other.
    if (int64_t r = sys.mprotect(va, kPages / 2 * kPage, 0); r != 0) return ended(r);
    if (int64_t r = sys.store(va, line); r != -EFAULT) return ended(r == 0 ? -EIO : r);
    if (int64_t r = sys.munmap(va, kPages * kPage); r != 0) return ended(r);
    if (int64_t r = sys.load(va + kPage, back); r != -EFAULT) return ended(r == 0 ? -EIO : r);
  }
  return 0;
}

int kv(Sys& sys, const ProgramArgs& args) {
  const Clock::time_point end = Clock::now() + args.duration;
  const int64_t pid = sys.getpid();
  if (pid < 0) return ended(pid);
  if (int64_t r = sys.mkdir("/kv"); r < 0 && r != -EEXIST) return ended(r);
  // The thread's table of what it last stored per key (0: absent), in its own mapped memory.
  constexpr uint64_t kKeys = 256;
  const uint64_t table = 0x2000'0000'0000ull + uint64_t{sys.thread()} * (uint64_t{1} << 32);
  if (int64_t r = sys.mmap(table, (kKeys * 8 + kPage - 1) / kPage * kPage, NRX_PROT_WRITE); r != 0) return ended(r);
  auto remembered = [&](uint64_t k, uint64_t* v) { return sys.load(table + k * 8, std::as_writable_bytes(std::span(v, 1))); };
  auto remember = [&](uint64_t k, uint64_t v) { return sys.store(table + k * 8, std::as_bytes(std::span(&v, 1))); };
  auto path = [&](uint64_t k) {
    return "/kv/p" + std::to_string(pid) + "-t" + std::to_string(sys.thread()) + "-k" + std::to_string(k);
  };
  std::mt19937_64 rng(args.seed * 7919 + static_cast<uint64_t>(pid) * 131 + sys.thread());
  for (uint64_t seq = 1; Clock::now() < end; ++seq) {
    const uint64_t k = rng() % kKeys;
    const uint64_t op = rng() % 10;
    uint64_t stored = 0;
    if (int64_t r = remembered(k, &stored); r != 0) return ended(r);
    if (op < 4) {  // put
      const int64_t ino = sys.open(path(k), NRX_O_CREAT | NRX_O_WRONLY);
      if (ino < 0) return ended(ino);
      const uint64_t value = seq;
      if (int64_t r = sys.pwrite(static_cast<uint64_t>(ino), std::as_bytes(std::span(&value, 1)), 0); r != 8) {
        return ended(r < 0 ? r : -EIO);
      }
      if (int64_t r = remember(k, value); r != 0) return ended(r);
    } else if (op < 9) {  // get: read your own writes
      const int64_t ino = sys.open(path(k), NRX_O_RDONLY);
      if (ino == -ENOENT) {
        if (stored != 0) return 1;  // lost a put
        continue;
      }
      if (ino < 0) return ended(ino);
      uint64_t value = 0;
      const int64_t r = sys.pread(static_cast<uint64_t>(ino), std::as_writable_bytes(std::span(&value, 1)), 0);
      if (r < 0) return ended(r);
      if (r != 8 || value != stored) return 1;
    } else if (stored != 0) {  // delete
      if (int64_t r = sys.unlink(path(k)); r != 0) return ended(r);
      if (int64_t r = remember(k, 0); r != 0) return ended(r);
    }
  }
  return 0;
}

constexpr Program kPrograms[] = {
    {"fsbench", "NR-FS: 4 KiB writes and verified reads, creates, listings and unlinks", &fsbench},
    {"mapbench", "NR-vMem: map, store/load through the MMU, protect, unmap with TLB shootdowns", &mapbench},
    {"kv", "a key-value store on NR-FS with read-your-writes checked from mmap'd memory", &kv},
};

}  // namespace

std::span<const Program> builtin_programs() { return kPrograms; }

const Program* find_program(std::string_view name) {
  for (const Program& p : kPrograms) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

}  // namespace nrx::boot
