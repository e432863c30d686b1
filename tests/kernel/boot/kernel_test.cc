// The assembled single-box kernel (kernel.h) on two emulated NUMA nodes: processes created from
// real ELF images (tests/kernel/proc's test programs, static and PIE) on one replica, the other or
// both, and exiting by returning, by exit() from one thread, or by kill(); the process table and
// the cores afterwards; over-subscription, running out of memory and bad input (errors with nothing
// left behind); wait's contract; the MMU and the file system through a program's Sys; replicas
// equal after a mixed workload of the built-in programs; and no physical memory lost to spawn and
// exit.
//
// The test programs below are plain C++ functions that reach the kernel only through Sys. Nothing
// sleeps for a fixed time: programs that must keep running loop until the kernel stops them
// (-ESRCH), bounded by their duration, and the test waits for them with wait().
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/boot/kernel.h"
#include "kernel/boot/programs.h"
#include "kernel/boot/sys.h"
#include "kernel/boot/topology.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/ncache.h"
#include "kernel/proc/elf.h"
#include "kernel/proc/loader.h"
#include "kernel/proc/process_table.h"

namespace nrx::boot {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kPage = 4096;
constexpr int kKilled = 137;
// How long a program that waits to be stopped may run before it gives up (status kNeverStopped):
// only reached when the kernel fails to stop it.
constexpr auto kStopBound = 20s;
constexpr int kNeverStopped = 99;

std::vector<std::byte> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}
const std::vector<std::byte>& pie_image() {
  static const std::vector<std::byte> image = read_file(NRX_TESTPROG_PIE);
  return image;
}
const std::vector<std::byte>& static_image() {
  static const std::vector<std::byte> image = read_file(NRX_TESTPROG_STATIC);
  return image;
}

// |image| (an ELF64 file) with the memsz of its last PT_LOAD (the writable one, in the test
// programs) grown to span |pages| pages: a large bss. Elf64_Ehdr: e_phoff at 0x20, e_phentsize
// 0x36, e_phnum 0x38; Elf64_Phdr: p_type 0, p_vaddr 16, p_memsz 40.
std::vector<std::byte> with_bss_pages(std::vector<std::byte> image, uint64_t pages) {
  auto get = [&](size_t at, auto v) {
    std::memcpy(&v, image.data() + at, sizeof v);
    return v;
  };
  const uint64_t phoff = get(0x20, uint64_t{});
  const uint16_t phentsize = get(0x36, uint16_t{});
  const uint16_t phnum = get(0x38, uint16_t{});
  size_t last = 0;
  for (uint32_t i = 0; i < phnum; ++i) {
    const size_t at = phoff + size_t{i} * phentsize;
    if (get(at, uint32_t{}) == 1) last = at;  // PT_LOAD
  }
  const uint64_t vaddr = get(last + 16, uint64_t{});
  const uint64_t memsz = (vaddr & ~(kPage - 1)) + pages * kPage - vaddr;
  std::memcpy(image.data() + last + 40, &memsz, sizeof memsz);
  return image;
}

// What the test programs tell the test (a program is a function in this binary): written by core
// threads, read by the test after wait() (whose mutex orders them) or polled as atomics.
std::atomic<int> g_started{0};  // threads of spin programs that made their first call
std::array<std::array<std::byte, 64>, 2> g_entry_bytes{};  // by thread

// --- Test programs -------------------------------------------------------------------------------

int returns_zero(Sys&, const ProgramArgs&) { return 0; }

// Loops on getpid() until the kernel stops the process (-ESRCH): for kill, exit from another
// thread and over-subscription.
int spin_until_stopped(Sys& sys, const ProgramArgs& args) {
  const Clock::time_point end = Clock::now() + args.duration;
  bool first = true;
  while (Clock::now() < end) {
    const int64_t r = sys.getpid();
    if (r == -ESRCH) return 0;
    if (r <= 0) return 2;
    if (first) g_started.fetch_add(1, std::memory_order_relaxed);
    first = false;
  }
  return kNeverStopped;
}

// The last thread calls exit(7); the others wait to be stopped.
int exits_seven(Sys& sys, const ProgramArgs& args) {
  if (sys.thread() + 1 == sys.threads()) {
    if (sys.getpid() <= 0) return 2;
    if (sys.exit(256) != -EINVAL) return 4;  // statuses are 0..255; the process goes on
    if (sys.getpid() <= 0) return 6;
    return sys.exit(7) == 0 ? 0 : 3;  // the exit status wins over the return value
  }
  return spin_until_stopped(sys, args);
}

// The last thread returns 5 (a failure ends the process); the others wait to be stopped.
int last_thread_fails(Sys& sys, const ProgramArgs& args) {
  if (sys.thread() + 1 == sys.threads()) return 5;
  return spin_until_stopped(sys, args);
}

// Memory through the MMU: mmap, stores and loads (one straddling two pages), faults outside the
// mapping, mprotect read-only, mmap over a mapped page, munmap. Each thread its own region.
int maps_memory(Sys& sys, const ProgramArgs&) {
  constexpr uint64_t kPages = 8;
  const uint64_t va = 0x1000'0000'0000ull + uint64_t{sys.thread()} * (uint64_t{1} << 32);
  if (sys.mmap(va, kPages * kPage, NRX_PROT_WRITE) != 0) return 10;
  std::array<std::byte, 64> line{}, back{};
  for (uint64_t p = 0; p < kPages; ++p) {
    for (size_t i = 0; i < line.size(); ++i) line[i] = static_cast<std::byte>(p * 31 + i + sys.thread());
    if (sys.store(va + p * kPage + 8 * p, line) != 0) return 11;
  }
  for (uint64_t p = 0; p < kPages; ++p) {
    for (size_t i = 0; i < line.size(); ++i) line[i] = static_cast<std::byte>(p * 31 + i + sys.thread());
    if (sys.load(va + p * kPage + 8 * p, back) != 0 || back != line) return 12;
  }
  // A fresh page reads as zeros.
  std::array<std::byte, 64> zeros{};
  if (sys.load(va + 3 * kPage + 1024, back) != 0 || back != zeros) return 13;
  // Across a page boundary.
  line.fill(std::byte{0x5a});
  if (sys.store(va + kPage - 32, line) != 0 || sys.load(va + kPage - 32, back) != 0 || back != line) return 14;
  // Outside the mapping.
  if (sys.load(va + kPages * kPage, back) != -EFAULT) return 15;
  if (sys.store(va + kPages * kPage - 32, line) != -EFAULT) return 16;  // its tail is unmapped
  // Read-only: stores fault, loads still see the data.
  if (sys.mprotect(va, kPages * kPage, 0) != 0) return 17;
  if (sys.store(va + kPage - 32, line) != -EFAULT) return 18;
  if (sys.load(va + kPage - 32, back) != 0 || back != line) return 19;
  if (sys.mmap(va, kPage, NRX_PROT_WRITE) != -EEXIST) return 20;
  if (sys.mmap(va + 1, kPage, NRX_PROT_WRITE) != -EINVAL) return 21;
  if (sys.munmap(va, kPages * kPage) != 0) return 22;
  if (sys.load(va, back) != -EFAULT) return 23;
  if (sys.munmap(va, kPage) >= 0) return 24;  // nothing mapped there now
  return 0;
}

// A file /t<pid>-<thread> written, read back, stat'ed and unlinked through Sys.
int writes_a_file(Sys& sys, const ProgramArgs&) {
  const int64_t pid = sys.getpid();
  if (pid <= 0) return 30;
  const std::string path = "/t" + std::to_string(pid) + "-" + std::to_string(sys.thread());
  const int64_t ino = sys.open(path, NRX_O_CREAT | NRX_O_EXCL | NRX_O_RDWR);
  if (ino < 0) return 31;
  std::vector<std::byte> data(10000), back(10000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>((i * 13 + static_cast<uint64_t>(pid)) & 0xff);
  if (sys.pwrite(static_cast<uint64_t>(ino), data, 0) != static_cast<int64_t>(data.size())) return 32;
  if (sys.pread(static_cast<uint64_t>(ino), back, 0) != static_cast<int64_t>(back.size()) || back != data) return 33;
  nrx_statbuf st{};
  if (sys.stat(path, &st) != 0 || st.size != data.size()) return 34;
  if (sys.close(static_cast<uint64_t>(ino)) != 0) return 35;
  if (sys.unlink(path) != 0) return 36;
  if (sys.stat(path, &st) != -ENOENT) return 37;
  return 0;
}

// Reads its own loaded image through the MMU. args.seed: the entry point as linked, bit 63 set for
// a PIE (whose load offset follows from its pid: process_table.h's slot rule). Copies 64 bytes at
// the entry into g_entry_bytes[thread]; a store there must fault (code is read-only); the stack
// below proc::kStackTop takes a store, and kStackTop itself is not mapped.
int reads_its_image(Sys& sys, const ProgramArgs& args) {
  const int64_t pid = sys.getpid();
  if (pid <= 0) return 40;
  const bool pie = (args.seed >> 63) != 0;
  uint64_t entry = args.seed & ~(uint64_t{1} << 63);
  if (pie) entry += proc::kPieBase + (static_cast<uint64_t>(pid) % proc::kMaxProcesses) * proc::kPieStride;
  std::array<std::byte, 64> code{};
  if (sys.load(entry, code) != 0) return 41;
  if (sys.thread() < g_entry_bytes.size()) g_entry_bytes[sys.thread()] = code;
  if (sys.store(entry, code) != -EFAULT) return 42;
  std::array<std::byte, 64> line{}, back{};
  line.fill(static_cast<std::byte>(0xa0 + sys.thread()));
  // Each thread its own stack slot (the stack is shared by the process's threads).
  const uint64_t slot = proc::kStackTop - 128 * (sys.thread() + 1);
  if (sys.load(slot, back) != 0) return 43;
  if (sys.store(slot, line) != 0 || sys.load(slot, back) != 0 || back != line) return 44;
  if (sys.load(proc::kStackTop, back) != -EFAULT) return 45;
  if (sys.load(proc::kStackTop - (proc::kStackPages + 1) * kPage, back) != -EFAULT) return 46;
  return 0;
}

const Program kReturnsZero{"returns_zero", "returns 0", &returns_zero};
const Program kSpin{"spin", "getpid until stopped", &spin_until_stopped};
const Program kExitsSeven{"exits_seven", "exit(7) from the last thread", &exits_seven};
const Program kLastThreadFails{"last_fails", "the last thread returns 5", &last_thread_fails};
const Program kMapsMemory{"maps_memory", "mmap, MMU loads and stores, munmap", &maps_memory};
const Program kWritesAFile{"writes_a_file", "a file written, read back, unlinked", &writes_a_file};
const Program kReadsItsImage{"reads_its_image", "its code and stack through the MMU", &reads_its_image};

SpawnOptions on(std::vector<uint32_t> nodes, std::chrono::nanoseconds duration = kStopBound) {
  return SpawnOptions{.nodes = std::move(nodes), .args = {.duration = duration, .seed = 1}};
}

// --- The fixture ---------------------------------------------------------------------------------

// A kernel on two emulated nodes with |cores_per_node| cores each (core c on node c / cpn).
class KernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_started.store(0, std::memory_order_relaxed);
    g_entry_bytes = {};
    boot(1);
  }
  void TearDown() override {
    if (!kernel_) return;
    EXPECT_TRUE(kernel_->processes().empty()) << "a process outlived its test";
  }

  void boot(uint32_t cores_per_node, uint64_t pool_bytes = 64 << 20) {
    kernel_.reset();
    auto k = Kernel::create(KernelOptions{.topology = Topology::detect().emulate(2).value(),
                                          .cores_per_node = cores_per_node,
                                          .pool_bytes = pool_bytes});
    ASSERT_TRUE(k.ok()) << k.status().to_string();
    kernel_ = std::move(*k);
    boot_free_ = free_bytes();
  }

  uint64_t free_bytes() const { return kernel_->memory().stats().free_bytes(); }

  // Every replica up to date (frees made by replicas applying exits and unlinks included), then
  // the physical memory must be what it was after boot.
  void expect_memory_back(const char* after) {
    (void)kernel_->digests();
    EXPECT_EQ(free_bytes(), boot_free_) << "after " << after << ": "
                                        << static_cast<int64_t>(boot_free_ - free_bytes()) / static_cast<int64_t>(kPage)
                                        << " frames missing";
  }

  // Waits until |n| spin threads have made their first call (a poll, not a fixed sleep).
  static void wait_started(int n) {
    const Clock::time_point end = Clock::now() + kStopBound;
    while (g_started.load(std::memory_order_relaxed) < n && Clock::now() < end) std::this_thread::yield();
    ASSERT_GE(g_started.load(std::memory_order_relaxed), n) << "the spin program never started";
  }

  // Spawns |program| and waits for it; checks what every report must say.
  ProcessReport run(const Program& program, const SpawnOptions& options,
                    const std::vector<std::byte>& image = pie_image()) {
    auto pid = kernel_->spawn(program, image, options);
    EXPECT_TRUE(pid.ok()) << program.name << ": " << pid.status().to_string();
    if (!pid.ok()) return {};
    auto rep = kernel_->wait(*pid);
    EXPECT_TRUE(rep.ok()) << rep.status().to_string();
    if (!rep.ok()) return {};
    expect_sound(*rep);
    EXPECT_EQ(rep->pid, *pid);
    return *rep;
  }

  // What a report says whatever the program did: the address space's replicas agreed.
  void expect_sound(const ProcessReport& r) {
    EXPECT_TRUE(r.error.empty()) << r.error;
    EXPECT_TRUE(r.vmem_equal) << "pid " << r.pid;
    ASSERT_EQ(r.vmem_digests.size(), kernel_->nodes());
    for (uint64_t d : r.vmem_digests) EXPECT_EQ(d, r.vmem_digests.front());
    EXPECT_GT(r.mappings, 0u);
  }

  std::unique_ptr<Kernel> kernel_;
  uint64_t boot_free_ = 0;
};

// --- Tests ---------------------------------------------------------------------------------------

// Processes on node 0, node 1 and both (in either order): the report says which cores ran it, the
// PIE's load offset follows the process table's slot rule, and afterwards nothing remains.
TEST_F(KernelTest, ProcessesRunAndExitOnEveryReplica) {
  const auto elf = proc::ElfImage::parse(pie_image()).value();
  const std::vector<std::vector<uint32_t>> placements = {{0}, {1}, {0, 1}, {1, 0}};
  uint64_t runs = 0;
  for (const auto& nodes : placements) {
    const ProcessReport r = run(kReturnsZero, on(nodes));
    ++runs;
    EXPECT_EQ(r.status, 0);
    EXPECT_EQ(r.name, "returns_zero");
    EXPECT_EQ(r.cores, nodes) << "with one core per node, core n is node n's";
    EXPECT_EQ(r.load_offset, proc::kPieBase + (r.pid % proc::kMaxProcesses) * proc::kPieStride);
    EXPECT_EQ(r.entry, elf.entry() + r.load_offset);
    EXPECT_TRUE(kernel_->processes().empty());
    EXPECT_EQ(kernel_->mappings(r.pid).status().code(), StatusCode::kNotFound);
  }
  // The fixed-address executable: no load offset.
  const auto fixed = proc::ElfImage::parse(static_image()).value();
  const ProcessReport s = run(kReturnsZero, on({0, 1}), static_image());
  ++runs;
  EXPECT_EQ(s.status, 0);
  EXPECT_EQ(s.load_offset, 0u);
  EXPECT_EQ(s.entry, fixed.entry());
  // Two at once, one per node.
  auto a = kernel_->spawn(kSpin, pie_image(), on({0}));
  auto b = kernel_->spawn(kSpin, pie_image(), on({1}));
  ASSERT_TRUE(a.ok() && b.ok());
  runs += 2;
  wait_started(2);
  const auto live = kernel_->processes();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].pid, *a);
  EXPECT_EQ(live[1].pid, *b);
  EXPECT_NE(live[0].load_offset, live[1].load_offset);
  for (const auto& info : live) {
    EXPECT_EQ(info.cores, 1u);
    EXPECT_EQ(info.pie, 1u);
    EXPECT_EQ(info.name_view(), "spin");
    EXPECT_EQ(info.image_span, elf.highest() - elf.lowest());
  }
  EXPECT_EQ(live[0].home_node, 0u);
  EXPECT_EQ(live[1].home_node, 1u);
  EXPECT_EQ(kernel_->kill(*a).value().status, kKilled);
  EXPECT_EQ(kernel_->kill(*b).value().status, kKilled);
  EXPECT_TRUE(kernel_->processes().empty());
  // Every core is free again: a process on every node runs.
  EXPECT_EQ(run(kReturnsZero, on({})).cores, (std::vector<uint32_t>{0, 1}));
  ++runs;
  const KernelStats st = kernel_->stats();
  EXPECT_EQ(st.processes_spawned, runs);
  EXPECT_EQ(st.processes_exited, runs);
  EXPECT_TRUE(kernel_->digests().equal());
  expect_memory_back("processes on every replica");
}

// The mappings of a live process: the read-only segments as per-replica pages, the writable
// segments and the stack as shared ones, at the load offset.
TEST_F(KernelTest, ALiveProcessShowsItsLoadedImage) {
  const auto elf = proc::ElfImage::parse(pie_image()).value();
  auto pid = kernel_->spawn(kSpin, pie_image(), on({0, 1}));
  ASSERT_TRUE(pid.ok()) << pid.status().to_string();
  wait_started(2);
  auto maps = kernel_->mappings(*pid);
  ASSERT_TRUE(maps.ok()) << maps.status().to_string();
  const uint64_t offset = proc::kPieBase + (*pid % proc::kMaxProcesses) * proc::kPieStride;
  uint64_t owned = 0, shared = 0, want_owned = 0, want_shared = proc::kStackPages;
  for (const proc::Segment& s : elf.segments()) {
    ((s.flags & proc::kSegWrite) != 0 ? want_shared : want_owned) += (s.page_end() - s.page_start()) / kPage;
  }
  for (const vmem::Mapping& m : *maps) {
    (m.owned ? owned : shared) += m.len / kPage;
    const bool stack = m.vaddr >= proc::kStackTop - proc::kStackPages * kPage && m.vaddr < proc::kStackTop;
    if (!stack) {
      EXPECT_GE(m.vaddr, offset + elf.lowest());
      EXPECT_LE(m.vaddr + m.len, offset + elf.highest());
    }
  }
  EXPECT_EQ(owned, want_owned);
  EXPECT_EQ(shared, want_shared);
  const ProcessReport r = kernel_->kill(*pid).value();
  expect_sound(r);
  EXPECT_EQ(r.status, kKilled);
  EXPECT_EQ(r.mappings, maps->size());
  EXPECT_EQ(kernel_->mappings(*pid).status().code(), StatusCode::kNotFound);
}

// exit(7) on one thread of a two-core process stops the other core; so does a thread returning
// non-zero. wait() returns with that status.
TEST_F(KernelTest, ExitFromOneThreadStopsTheOtherCores) {
  ProcessReport r = run(kExitsSeven, on({0, 1}));
  EXPECT_EQ(r.status, 7);
  EXPECT_EQ(r.cores, (std::vector<uint32_t>{0, 1}));
  r = run(kExitsSeven, on({1, 0}));
  EXPECT_EQ(r.status, 7);
  r = run(kExitsSeven, on({0}));
  EXPECT_EQ(r.status, 7);
  r = run(kLastThreadFails, on({0, 1}));
  EXPECT_EQ(r.status, 5);
  EXPECT_TRUE(kernel_->processes().empty());
  EXPECT_TRUE(kernel_->digests().equal());
  expect_memory_back("exits");
}

// kill() of a running process: status 137 once every core has stopped; it is then gone.
TEST_F(KernelTest, KillStopsALoopingProcess) {
  auto pid = kernel_->spawn(kSpin, pie_image(), on({0, 1}));
  ASSERT_TRUE(pid.ok()) << pid.status().to_string();
  wait_started(2);
  EXPECT_EQ(kernel_->processes().size(), 1u);
  auto r = kernel_->kill(*pid);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  expect_sound(*r);
  EXPECT_EQ(r->status, kKilled);
  EXPECT_EQ(r->cores, (std::vector<uint32_t>{0, 1}));
  EXPECT_GT(kernel_->stats().proc_calls, 2u);
  EXPECT_GT(kernel_->stats().call_errors, 0u) << "the stopped threads' last calls were ESRCH";
  EXPECT_EQ(kernel_->kill(*pid).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(kernel_->wait(*pid).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(kernel_->processes().empty());
  // A kill that comes before the cores ran the program at all (they may or may not have).
  auto quick = kernel_->spawn(kSpin, pie_image(), on({0, 1}));
  ASSERT_TRUE(quick.ok());
  EXPECT_EQ(kernel_->kill(*quick).value().status, kKilled);
  // kill() of a process that already ended reports its own status.
  auto done = kernel_->spawn(kExitsSeven, pie_image(), on({0}));
  ASSERT_TRUE(done.ok());
  const Clock::time_point end = Clock::now() + kStopBound;
  while (!kernel_->processes().empty() && Clock::now() < end) std::this_thread::yield();
  EXPECT_EQ(kernel_->kill(*done).value().status, 7);
  EXPECT_TRUE(kernel_->digests().equal());
  expect_memory_back("kills");
}

// A core runs one process: a second spawn on a busy node fails (also when it got a core on another
// node first) and leaves nothing behind; the core it took on the free node is free again.
TEST_F(KernelTest, OverSubscriptionIsRefusedAndLeavesNothing) {
  auto first = kernel_->spawn(kSpin, pie_image(), on({0}));
  ASSERT_TRUE(first.ok());
  wait_started(1);
  const auto before = kernel_->processes();
  ASSERT_EQ(before.size(), 1u);
  const uint64_t free_with_first = free_bytes();
  for (const auto& nodes : std::vector<std::vector<uint32_t>>{{0}, {1, 0}, {}}) {
    auto second = kernel_->spawn(kReturnsZero, pie_image(), on(nodes));
    EXPECT_EQ(second.status().code(), StatusCode::kResourceExhausted) << second.status().to_string();
    EXPECT_EQ(kernel_->processes(), before);
    (void)kernel_->digests();
    EXPECT_EQ(free_bytes(), free_with_first) << "a failed spawn kept memory";
  }
  // Node 1's core, allocated and given back by the failed spawns, runs a process.
  const ProcessReport r = run(kReturnsZero, on({1}));
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.cores, std::vector<uint32_t>{1});
  EXPECT_EQ(kernel_->kill(*first).value().status, kKilled);
  EXPECT_TRUE(kernel_->processes().empty());
  EXPECT_EQ(kernel_->stats().processes_spawned, 2u);
  EXPECT_TRUE(kernel_->digests().equal());
  expect_memory_back("over-subscription");
}

// Out of memory: 2 MiB per node, and every process copies its read-only segments into both
// nodes' pools, so a few processes fill them. The spawn that runs out (in stage 1 or in stage 2,
// after the pid, the address space and part of the image exist) is kResourceExhausted and leaves
// nothing behind; the processes already running are untouched.
TEST_F(KernelTest, ASpawnThatRunsOutOfMemoryLeavesNothing) {
  boot(/*cores_per_node=*/4, /*pool_bytes=*/2 << 20);
  // Stage 1 runs out: a bss of 600 pages does not fit a 512-frame pool.
  const std::vector<std::byte> big = with_bss_pages(static_image(), 600);
  ASSERT_TRUE(proc::ElfImage::parse(big).ok());
  EXPECT_EQ(kernel_->spawn(kReturnsZero, big, on({0})).status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(kernel_->processes().empty());
  expect_memory_back("a spawn whose image does not fit");
  // Stage 2 runs out: processes until the read-only copies no longer fit.
  std::vector<Pid> live;
  Status failed;
  for (uint32_t i = 0; i < 8 && failed.ok(); ++i) {
    const uint64_t free_before = free_bytes();
    const auto table_before = kernel_->processes();
    auto pid = kernel_->spawn(kSpin, static_image(), on({i % 2}));
    if (pid.ok()) {
      live.push_back(*pid);
      continue;
    }
    failed = pid.status();
    EXPECT_EQ(failed.code(), StatusCode::kResourceExhausted) << failed.to_string();
    EXPECT_EQ(kernel_->processes(), table_before);
    (void)kernel_->digests();
    EXPECT_EQ(free_bytes(), free_before) << "the failed spawn kept memory";
  }
  EXPECT_FALSE(failed.ok()) << "8 processes fit in 2 x 2 MiB";
  EXPECT_GE(live.size(), 1u);
  wait_started(static_cast<int>(live.size()));
  for (Pid pid : live) {
    auto r = kernel_->kill(pid);
    ASSERT_TRUE(r.ok());
    expect_sound(*r);
    EXPECT_EQ(r->status, kKilled);
  }
  EXPECT_TRUE(kernel_->digests().equal());
  expect_memory_back("running out of memory");
  // With the memory back, a process fits again.
  EXPECT_EQ(run(kReturnsZero, on({0, 1}), static_image()).status, 0);
}

// Bad spawns are kInvalidArgument and leave no process, no core and no memory behind.
TEST_F(KernelTest, BadSpawnsAreInvalidArgumentAndLeaveNothing) {
  std::vector<std::byte> garbage(64 * 1024);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<std::byte>((i * 7919 + 13) & 0xff);
  const std::vector<std::byte>& noise = garbage;
  const std::vector<std::byte> truncated(pie_image().begin(), pie_image().begin() + pie_image().size() / 2);
  const std::vector<std::byte> header_only(pie_image().begin(), pie_image().begin() + 64);
  const std::vector<std::byte> empty;
  for (const std::vector<std::byte>* image : {&noise, &truncated, &header_only, &empty}) {
    EXPECT_EQ(kernel_->spawn(kReturnsZero, *image, on({0})).status().code(), StatusCode::kInvalidArgument);
  }
  for (const auto& nodes : std::vector<std::vector<uint32_t>>{{2}, {0, 2}, {UINT32_MAX}, {0, 0}, {1, 0, 1}}) {
    EXPECT_EQ(kernel_->spawn(kReturnsZero, pie_image(), on(nodes)).status().code(), StatusCode::kInvalidArgument);
  }
  const Program no_code{"no_code", "", nullptr};
  EXPECT_EQ(kernel_->spawn(no_code, pie_image(), on({0})).status().code(), StatusCode::kInvalidArgument);
  const Program no_name{nullptr, "", &returns_zero};
  EXPECT_EQ(kernel_->spawn(no_name, pie_image(), on({0})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(kernel_->processes().empty());
  EXPECT_EQ(kernel_->stats().processes_spawned, 0u);
  expect_memory_back("bad spawns");
  // Nothing held a core: both nodes run a process.
  EXPECT_EQ(run(kReturnsZero, on({0, 1})).status, 0);
  expect_memory_back("a good spawn after bad ones");
}

TEST_F(KernelTest, WaitOnAnUnknownOrReapedPidIsNotFound) {
  EXPECT_EQ(kernel_->wait(0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(kernel_->wait(12345).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(kernel_->kill(12345).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(kernel_->mappings(12345).status().code(), StatusCode::kNotFound);
  auto pid = kernel_->spawn(kReturnsZero, pie_image(), on({1}));
  ASSERT_TRUE(pid.ok());
  EXPECT_TRUE(kernel_->wait(*pid).ok());
  EXPECT_EQ(kernel_->wait(*pid).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(kernel_->kill(*pid).status().code(), StatusCode::kNotFound);
  // Three waiters at once (two threads and a kill): exactly one gets the report.
  auto spin = kernel_->spawn(kSpin, pie_image(), on({0, 1}));
  ASSERT_TRUE(spin.ok());
  wait_started(2);
  std::atomic<int> reports{0}, not_found{0};
  auto waiter = [&] {
    auto r = kernel_->wait(*spin);
    (r.ok() ? reports : not_found).fetch_add(1, std::memory_order_relaxed);
    if (r.ok()) {
      EXPECT_EQ(r->status, kKilled);
    }
  };
  std::thread w1(waiter), w2(waiter);
  auto k = kernel_->kill(*spin);
  (k.ok() ? reports : not_found).fetch_add(1, std::memory_order_relaxed);
  w1.join();
  w2.join();
  EXPECT_EQ(reports.load(), 1);
  EXPECT_EQ(not_found.load(), 2);
  expect_memory_back("waits");
}

// A program's view through Sys: its image and stack through the MMU, mmap'd memory, files.
TEST_F(KernelTest, ProgramsSeeTheirImageMemoryAndFiles) {
  for (const bool pie : {false, true}) {
    const std::vector<std::byte>& image = pie ? pie_image() : static_image();
    const auto elf = proc::ElfImage::parse(image).value();
    SpawnOptions o = on({0, 1});
    o.args.seed = elf.entry() | (pie ? uint64_t{1} << 63 : 0);
    g_entry_bytes = {};
    const ProcessReport r = run(kReadsItsImage, o, image);
    EXPECT_EQ(r.status, 0) << (pie ? "PIE" : "static");
    // The 64 bytes at the entry are the file's, on node 0's copy and on node 1's.
    for (const proc::Segment& s : elf.segments()) {
      if (elf.entry() < s.vaddr || elf.entry() >= s.vaddr + s.filesz) continue;
      const std::byte* want = image.data() + s.offset + (elf.entry() - s.vaddr);
      for (size_t t = 0; t < 2; ++t) {
        EXPECT_EQ(std::memcmp(g_entry_bytes[t].data(), want, 64), 0) << "thread " << t << (pie ? " PIE" : " static");
      }
    }
  }
  EXPECT_EQ(run(kMapsMemory, on({0, 1})).status, 0);
  EXPECT_EQ(run(kMapsMemory, on({1})).status, 0);
  EXPECT_EQ(run(kWritesAFile, on({0, 1})).status, 0);
  EXPECT_EQ(run(kWritesAFile, on({1})).status, 0);
  const KernelStats st = kernel_->stats();
  EXPECT_GT(st.vmem_calls, 0u);
  EXPECT_GT(st.fs_calls, 0u);
  EXPECT_GT(st.mmu_accesses, 0u);
  EXPECT_TRUE(kernel_->digests().equal());
}

// Physical memory after spawn and exit, including failed spawns and a program's files: every frame
// a process took is back once it exited. mmap is the exception, by design: a core allocates mmap's
// frames through its TCache, which refills from the node's NCache in batches (TCache::kBaseCapacity
// / 2) and takes munmap'd frames back, and a TCache is drained only at shutdown; memory().stats()
// counts the NCaches only. So after mmap the free bytes stay short by what the cores' caches hold
// (at most kBaseCapacity frames per core that ran one), and must not move when the same cores do it
// again (no frame lost per spawn).
TEST_F(KernelTest, ExitedProcessesGiveBackTheirMemory) {
  const ProcessReport r = run(kReturnsZero, on({0, 1}));
  EXPECT_EQ(r.status, 0);
  expect_memory_back("a process returning 0");
  EXPECT_EQ(kernel_->spawn(kReturnsZero, std::vector<std::byte>(100), on({0})).status().code(),
            StatusCode::kInvalidArgument);
  expect_memory_back("a bad image");
  EXPECT_EQ(run(kWritesAFile, on({0, 1})).status, 0);
  expect_memory_back("a program that wrote and unlinked files");

  constexpr uint64_t kCacheBytes = mem::TCache::kBaseCapacity * mem::kBaseFrameSize;
  auto cached = [&] {
    (void)kernel_->digests();
    return boot_free_ - free_bytes();
  };
  EXPECT_EQ(run(kMapsMemory, on({1})).status, 0);
  const uint64_t one_core = cached();
  EXPECT_GT(one_core, 0u) << "the first mmap refills core 1's TCache from its NCache";
  EXPECT_LE(one_core, kCacheBytes);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(run(kMapsMemory, on({1})).status, 0);
    EXPECT_EQ(cached(), one_core) << "round " << i << ": frames lost by an mmap program on core 1";
  }
  EXPECT_EQ(run(kMapsMemory, on({0, 1})).status, 0);
  const uint64_t two_cores = cached();
  EXPECT_GT(two_cores, one_core);
  EXPECT_LE(two_cores, 2 * kCacheBytes);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(run(kMapsMemory, on({0, 1})).status, 0);
    EXPECT_EQ(cached(), two_cores) << "round " << i << ": frames lost by an mmap program on cores 0 and 1";
  }
  // Everything else still comes back exactly on top of that.
  EXPECT_EQ(run(kWritesAFile, on({1, 0})).status, 0);
  EXPECT_EQ(cached(), two_cores);
}

// The built-in workloads together on both nodes (three cores per node): all exit 0 and every
// subsystem's replicas agree afterwards.
TEST_F(KernelTest, MixedWorkloadLeavesReplicasEqual) {
  boot(3);
  std::vector<Pid> pids;
  for (const char* name : {"fsbench", "mapbench", "kv"}) {
    const Program* p = find_program(name);
    ASSERT_NE(p, nullptr) << name;
    auto pid = kernel_->spawn(*p, pie_image(), on({0, 1}, 100ms));
    ASSERT_TRUE(pid.ok()) << name << ": " << pid.status().to_string();
    pids.push_back(*pid);
  }
  EXPECT_LE(kernel_->processes().size(), 3u);  // a slow spawn may see an earlier one done
  for (Pid pid : pids) {
    auto r = kernel_->wait(pid);
    ASSERT_TRUE(r.ok());
    expect_sound(*r);
    EXPECT_EQ(r->status, 0) << r->name;
    EXPECT_EQ(r->cores.size(), 2u);
  }
  EXPECT_TRUE(kernel_->processes().empty());
  const ReplicaDigests d = kernel_->digests();
  EXPECT_EQ(d.proc.size(), 2u);
  EXPECT_EQ(d.fs.size(), 2u);
  EXPECT_EQ(d.vmem.size(), 2u);
  EXPECT_TRUE(d.equal());
  const KernelStats st = kernel_->stats();
  EXPECT_GT(st.fs_calls, 0u);
  EXPECT_GT(st.vmem_calls, 0u);
  EXPECT_GT(st.mmu_accesses, 0u);
  EXPECT_GT(st.shootdowns_sent, 0u) << "mapbench's unmaps on a two-core process shoot down";
  EXPECT_EQ(st.processes_exited, 3u);
  // The cores are free again: a second round on the same cores.
  EXPECT_EQ(run(kReturnsZero, on({0, 1})).status, 0);
}

}  // namespace
}  // namespace nrx::boot
