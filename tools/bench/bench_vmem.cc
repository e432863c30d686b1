// bench_vmem: NR-vMem (vmem::Vspace<logs::RingLog>: one AddressSpace replica per emulated NUMA node,
// the kernel cores running the process, TLB shootdown on unmap) against Linux's mmap/munmap of a
// memfd, in one binary and one run (README.md; the NrOS paper's figures 5 and 6).
//
// Throughput cases, `map/<variant>[/replicas:R]/real_time/threads:T` (figure 5's setup): T threads,
// each mapping 4 KiB pages at consecutive addresses in its OWN region (regions 1 GiB apart, so no
// two threads share a VMA or a page-table page below the PDPT). One iteration is one 4 KiB map.
// After kBatch maps (a full 2 MiB page table) the thread unmaps its region with ONE call and starts
// over; that unmap runs with the timer paused, so the reported time (each thread's own timed wall
// time, averaged over threads by Google Benchmark) counts maps only. Variants, baseline first:
//   linux  mmap(addr, 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_FIXED|MAP_POPULATE, memfd, off),
//          all threads in one process (one mm, Linux's per-process lock); the memfd's pages are
//          fallocated beforehand, so MAP_POPULATE maps existing page-cache pages. Unmap: munmap.
//   nr     Vspace::map of a frame pre-allocated (before the loop) from the NCache of the thread's
//          replica's pool; R replicas, one pool each (mem::Memory with R nodes), thread i is a
//          core attached to replica i % R. Every core is attached (scheduled) for the whole run,
//          so every unmap shoots down the other cores' TLBs. Unmap: Vspace::unmap of the whole
//          region (one log entry, one shootdown).
// After every op each thread polls its core for shootdowns (inside the timed loop here, outside the
// timed op in the latency cases): NR through
// Vspace::translate of an "anchor" page the thread keeps mapped outside its region (always a TLB
// hit), which is how a core notices a shootdown (translate checks the mailbox's pending hint and
// only then polls); a bare Vspace::poll would take the mailbox's mutex on every call, contending
// with the cores posting to it. Linux needs no polling (its shootdowns are interrupts).
// Counters: items_per_second (maps/s of all threads), vs_linux (over linux's at the same T) and,
// for what the timer leaves out, unmap_ns_per_page (region unmap time per page, mean of threads).
//
// Latency cases, `lat/<variant>[/replicas:R]/iterations:N/real_time/threads:T` (figure 6): T threads,
// each in its own region, repeat N rounds of: kLatBatch single-page maps at consecutive addresses,
// then kLatBatch single-page unmaps in the same order, then a barrier (so the threads map, and
// unmap, at the same time). Every map and every unmap is timed on its own
// with std::chrono::steady_clock (vDSO clock_gettime; the clock's own cost, clock_ns, is measured
// and NOT subtracted). NR unmap includes the shootdown: with 2 threads it waits until the other
// core polls, which that thread does between its own ops (a user-space core cannot be interrupted;
// Linux's munmap sends an IPI instead). Samples of all threads are merged; thread 0 reports
// map_p1_ns, map_p50_ns, map_p99_ns, unmap_p1_ns, unmap_p50_ns, unmap_p99_ns and, for NR, the
// ratio of each to linux's at the same T (map_p50_vs_linux ...; above 1 is slower than Linux).
//
// Thread i is pinned to the i-th CPU the process may use (mod their count), for both variants: a
// thread is a core, as in the paper's runs. Unpinned, the scheduler sometimes put both threads on
// one vCPU for a whole case, and every NR unmap then took ~9 us: the shootdown's wait spins until it
// yields the CPU to the thread that must acknowledge.
//
// Threads that are done wait for the others at a barrier that keeps polling their core: a core
// that stops polling (for instance in Google Benchmark's blocking end-of-loop barrier) would leave
// an unmap elsewhere waiting forever (vspace.h, thread safety).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/cacheline.h"
#include "base/check.h"
#include "base/spin.h"
#include "kernel/mem/frame.h"
#include "kernel/mem/memory.h"
#include "kernel/vmem/address_space.h"
#include "kernel/vmem/vspace.h"
#include "logs/ring/ring_log.h"
#include "tools/bench/bench_support.h"

namespace nrx::bench {
namespace {

constexpr uint64_t kPage = mem::kBaseFrameSize;
// Maps per region before it is unmapped (throughput) and per round (latency): one full page table,
// so a table is allocated by 1 map in 512 and freed by 1 unmap in 512 (below the 1 % tail).
constexpr uint64_t kBatch = mem::kBasePerLarge;
constexpr uint64_t kLatBatch = kBatch;
// Latency rounds per case: 128 x 512 = 65536 maps and as many unmaps per thread.
constexpr int kLatRounds = 128;
// Thread regions: far from anything else in the process (mmap(NULL) places mappings top-down from
// just below 2^47; the heap sits just above the binary, near 2^46 at most), 1 GiB apart.
constexpr uint64_t kArenaBase = uint64_t{1} << 44;  // 16 TiB
constexpr uint64_t kRegionStride = uint64_t{1} << 30;
constexpr uint64_t kRegionBytes = kBatch * kPage;
// NR's anchor page (see the header comment): inside the thread's 1 GiB slot, far from its region.
constexpr uint64_t kAnchorOffset = kRegionStride / 2;
constexpr uint8_t kRights = vmem::rights::kWrite | vmem::rights::kUser;  // PROT_READ | PROT_WRITE, user
constexpr int kMaxReplicas = 2;
// Per emulated node; pools are mapped lazily, so only touched frames (page tables) cost memory.
constexpr uint64_t kPoolBytes = 256ull << 20;
// Back-to-back clock reads timed to estimate the clock's own cost.
constexpr int kClockProbes = 1000;

uint64_t region_base(int thread) { return kArenaBase + static_cast<uint64_t>(thread) * kRegionStride; }

// A reusable barrier whose waiters keep calling |poll| (a Vspace core must answer shootdowns while
// it waits). Generation-counting: the last thread to arrive opens the barrier. Waiters never sleep
// (nrx::SpinWait naps up to 64 us, and a napping core leaves every unmap elsewhere waiting that
// long): they spin, then yield, polling between, so a thread sharing their CPU still runs.
class PollingBarrier {
 public:
  explicit PollingBarrier(int threads) : threads_(threads) {}

  template <typename Poll>
  void arrive_and_wait(Poll&& poll) {
    // acquire: pairs with the release that opened the previous phase, so |gen| is this phase's.
    const uint64_t gen = generation_.load(std::memory_order_acquire);
    // acq_rel: release hands this thread's writes (its samples) to the last arriver, whose
    // acquire collects every thread's before it opens the barrier.
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads_) {
      arrived_.store(0, std::memory_order_relaxed);  // relaxed: published by the release below
      // release: waiters that see the new generation see everything the last arriver saw.
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    // acquire: pairs with the release above.
    for (uint32_t spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins) {
      poll();
      if (spins < kSpinsBeforeYield) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr uint32_t kSpinsBeforeYield = 256;
  const int threads_;
  alignas(kInterferenceSize) std::atomic<int> arrived_{0};
  alignas(kInterferenceSize) std::atomic<uint64_t> generation_{0};
};

// Pins the calling thread to the |index|-th CPU of its affinity mask (mod their count) for its
// lifetime, then restores the mask (Google Benchmark's thread 0 is the main thread, which runs
// every case). If the mask cannot be read or set, the thread simply stays unpinned.
class CpuPin {
 public:
  explicit CpuPin(int index) {
    if (pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0) return;
    const int allowed = CPU_COUNT(&saved_);
    if (allowed == 0) return;
    int nth = index % allowed;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &saved_) || nth-- != 0) continue;
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pinned_ = pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
      return;
    }
  }
  ~CpuPin() {
    if (pinned_) (void)pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  CpuPin(const CpuPin&) = delete;
  CpuPin& operator=(const CpuPin&) = delete;

 private:
  cpu_set_t saved_{};
  bool pinned_ = false;
};

// ---------------------------------------------------------------------------------------------
// Variants. Each is built by Setup before the threads start and destroyed by Teardown after they
// have left the loop. A Handle is one thread's view: its region, and (NR) its core and frames.
// Pages are numbered inside the thread's region: page k is at region_base(thread) + k * kPage.

class LinuxVm {
 public:
  struct Handle {
    uint64_t region;
    off_t file_offset;  // the thread's kRegionBytes of the memfd
  };

  explicit LinuxVm(const benchmark::State& state) : threads_(state.threads()) {
    // The arena must be free: MAP_FIXED in the loop would silently replace whatever is there.
    const uint64_t arena = static_cast<uint64_t>(threads_) * kRegionStride;
    void* probe = mmap(reinterpret_cast<void*>(kArenaBase), arena, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    NRX_CHECK(probe == reinterpret_cast<void*>(kArenaBase), "the benchmark's address range is in use");
    NRX_CHECK(munmap(probe, arena) == 0, "munmap of the probe failed");
    fd_ = memfd_create("bench_vmem", MFD_CLOEXEC);
    NRX_CHECK(fd_ >= 0, "memfd_create failed");
    const auto bytes = static_cast<off_t>(static_cast<uint64_t>(threads_) * kRegionBytes);
    NRX_CHECK(ftruncate(fd_, bytes) == 0, "ftruncate of the memfd failed");
    // Allocate every page now, so MAP_POPULATE maps existing pages (NR maps pre-allocated frames).
    NRX_CHECK(fallocate(fd_, 0, 0, bytes) == 0, "fallocate of the memfd failed");
  }
  ~LinuxVm() { close(fd_); }
  LinuxVm(const LinuxVm&) = delete;
  LinuxVm& operator=(const LinuxVm&) = delete;

  Handle attach(const benchmark::State& state) {
    const int t = state.thread_index();
    return Handle{region_base(t), static_cast<off_t>(static_cast<uint64_t>(t) * kRegionBytes)};
  }

  void map(Handle& h, uint64_t page) {
    void* want = reinterpret_cast<void*>(h.region + page * kPage);
    void* got = mmap(want, kPage, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd_,
                     h.file_offset + static_cast<off_t>(page * kPage));
    NRX_CHECK(got == want, "mmap failed");
  }
  void unmap(Handle& h, uint64_t first, uint64_t pages) {
    NRX_CHECK(munmap(reinterpret_cast<void*>(h.region + first * kPage), pages * kPage) == 0, "munmap failed");
  }
  void poll(Handle&) {}

 private:
  const int threads_;
  int fd_ = -1;
};

class NrVm {
 public:
  using Space = vmem::Vspace<logs::RingLog>;
  struct Handle {
    Space::Core* core;
    uint64_t region;
    const std::vector<mem::Frame>* frames;  // kBatch frames of the core's node, page k -> frames[k]
    uint64_t anchor;                        // a page mapped for the whole run, in the core's TLB
  };

  // state.range(0): the replica count R.
  explicit NrVm(const benchmark::State& state) {
    const auto replicas = static_cast<uint32_t>(state.range(0));
    memory_ = mem::Memory::create({.nodes = replicas, .pool_bytes = kPoolBytes}).value();
    vmem::VspaceOptions options;
    options.replica_pools.clear();
    for (uint32_t r = 0; r < replicas; ++r) options.replica_pools.push_back(r);
    vs_ = Space::create(*memory_, options, &logs::RingLog::create).value();
    for (int t = 0; t < state.threads(); ++t) {
      const uint32_t slot = static_cast<uint32_t>(t) % replicas;
      cores_.push_back(vs_->attach_core(slot).value());
      std::vector<mem::Frame>& frames = frames_.emplace_back();
      frames.reserve(kBatch);
      for (uint64_t k = 0; k < kBatch; ++k) {
        frames.push_back(memory_->ncache(options.replica_pools[slot]).allocate(mem::FrameClass::kBase).value());
      }
      // The anchor, mapped and translated once so that polling through translate() hits the TLB.
      // (Maps shoot nothing down, so driving each core from this thread in turn cannot block.)
      anchors_.push_back(memory_->ncache(options.replica_pools[slot]).allocate(mem::FrameClass::kBase).value());
      NRX_CHECK(vs_->map(*cores_.back(), anchors_.back(), anchor_of(t), kPage, kRights).ok(), "anchor map failed");
      NRX_CHECK(vs_->translate(*cores_.back(), anchor_of(t), vmem::Access::kRead).ok(), "anchor translate failed");
    }
  }
  ~NrVm() {
    vs_.reset();  // frees the page tables; the frames mapped (regions empty, anchors) are ours
    for (const std::vector<mem::Frame>& frames : frames_) {
      for (const mem::Frame& f : frames) NRX_CHECK(memory_->ncache(f.pool).free(f).ok(), "frame free failed");
    }
    for (const mem::Frame& f : anchors_) NRX_CHECK(memory_->ncache(f.pool).free(f).ok(), "frame free failed");
  }
  NrVm(const NrVm&) = delete;
  NrVm& operator=(const NrVm&) = delete;

  Handle attach(const benchmark::State& state) {
    const auto t = static_cast<size_t>(state.thread_index());
    return Handle{cores_[t], region_base(state.thread_index()), &frames_[t], anchor_of(state.thread_index())};
  }

  void map(Handle& h, uint64_t page) {
    const Status s = vs_->map(*h.core, (*h.frames)[page], h.region + page * kPage, kPage, kRights);
    NRX_CHECK(s.ok(), "Vspace::map failed");
  }
  void unmap(Handle& h, uint64_t first, uint64_t pages) {
    auto r = vs_->unmap(*h.core, h.region + first * kPage, pages * kPage);
    // Each page was mapped on its own, so each comes back as its own piece.
    NRX_CHECK(r.ok() && r->size() == pages, "Vspace::unmap failed");
  }
  // What a core does between instructions: a translation, which answers pending shootdowns first.
  void poll(Handle& h) {
    NRX_CHECK(vs_->translate(*h.core, h.anchor, vmem::Access::kRead).ok(), "anchor translate failed");
  }

 private:
  static uint64_t anchor_of(int thread) { return region_base(thread) + kAnchorOffset; }

  std::unique_ptr<mem::Memory> memory_;
  std::unique_ptr<Space> vs_;  // destroyed first (~NrVm): its page tables live in memory_
  std::vector<Space::Core*> cores_;  // by thread index
  std::vector<std::vector<mem::Frame>> frames_;  // by thread index
  std::vector<mem::Frame> anchors_;              // by thread index
};

// The variant and the barrier of the current run (Setup builds them, Teardown destroys them).
template <typename Vm>
std::unique_ptr<Vm> g_vm;
std::unique_ptr<PollingBarrier> g_barrier;

// Latency samples of the current run, by thread: written by their thread in the loop, read by
// thread 0 after the barrier.
struct Samples {
  std::vector<uint64_t> map_ns;
  std::vector<uint64_t> unmap_ns;
};
std::vector<Samples> g_samples;

template <typename Vm>
void setup_vm(const benchmark::State& state) {
  g_vm<Vm> = std::make_unique<Vm>(state);
  g_barrier = std::make_unique<PollingBarrier>(state.threads());
  g_samples.assign(static_cast<size_t>(state.threads()), {});
}
template <typename Vm>
void teardown_vm(const benchmark::State&) {
  g_vm<Vm>.reset();
  g_barrier.reset();
  g_samples.clear();
}

using Clock = std::chrono::steady_clock;

uint64_t elapsed_ns(Clock::time_point from, Clock::time_point to) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count());
}

// Throughput: one map per iteration; a full region is unmapped with the timer paused. The last
// iteration of every thread also unmaps what is left and waits (polling) for the other threads.
template <typename Vm>
void BM_Map(benchmark::State& state) {
  const CpuPin pin(state.thread_index());
  Vm& vm = *g_vm<Vm>;
  typename Vm::Handle h = vm.attach(state);
  uint64_t in_region = 0;
  benchmark::IterationCount done = 0;
  uint64_t unmap_ns = 0;  // untimed by Google Benchmark, reported on the side
  for (auto _ : state) {
    vm.map(h, in_region);
    vm.poll(h);
    ++in_region;
    ++done;
    const bool last = done == state.max_iterations;
    if (in_region == kBatch || last) {
      state.PauseTiming();
      const Clock::time_point t0 = Clock::now();
      vm.unmap(h, 0, in_region);
      unmap_ns += elapsed_ns(t0, Clock::now());
      in_region = 0;
      if (last) g_barrier->arrive_and_wait([&] { vm.poll(h); });
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
  // Mean over threads of each thread's region-unmap time per page (every mapped page was unmapped).
  state.counters["unmap_ns_per_page"] = benchmark::Counter(
      static_cast<double>(unmap_ns) / static_cast<double>(state.iterations()), benchmark::Counter::kAvgThreads);
}

// The |q|-quantile of |v| (nearest rank below), reordering |v|.
double quantile(std::vector<uint64_t>& v, double q) {
  NRX_CHECK(!v.empty(), "no samples");
  const auto k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]);
}

// The median interval between two back-to-back steady_clock reads: what an empty timed op reports.
double clock_cost_ns() {
  std::vector<uint64_t> d;
  d.reserve(kClockProbes);
  for (int i = 0; i < kClockProbes; ++i) {
    const Clock::time_point a = Clock::now();
    const Clock::time_point b = Clock::now();
    d.push_back(elapsed_ns(a, b));
  }
  return quantile(d, 0.5);
}

// Latency: one round per iteration (kLatBatch maps, then kLatBatch unmaps, each timed alone).
template <typename Vm>
void BM_Latency(benchmark::State& state) {
  const CpuPin pin(state.thread_index());
  Vm& vm = *g_vm<Vm>;
  typename Vm::Handle h = vm.attach(state);
  Samples& mine = g_samples[static_cast<size_t>(state.thread_index())];
  const auto samples = static_cast<size_t>(state.max_iterations) * kLatBatch;
  mine.map_ns.reserve(samples);
  mine.unmap_ns.reserve(samples);
  for (auto _ : state) {
    for (uint64_t k = 0; k < kLatBatch; ++k) {
      const Clock::time_point t0 = Clock::now();
      vm.map(h, k);
      const Clock::time_point t1 = Clock::now();
      mine.map_ns.push_back(elapsed_ns(t0, t1));
      vm.poll(h);
    }
    for (uint64_t k = 0; k < kLatBatch; ++k) {
      const Clock::time_point t0 = Clock::now();
      vm.unmap(h, k, 1);
      const Clock::time_point t1 = Clock::now();
      mine.unmap_ns.push_back(elapsed_ns(t0, t1));
      vm.poll(h);
    }
    // Every round starts together: the threads map at the same time, then unmap at the same time
    // (and no thread measures against one that has finished).
    g_barrier->arrive_and_wait([&] { vm.poll(h); });
  }
  if (state.thread_index() != 0) return;
  // Every thread has passed the barrier: its samples are complete and visible here. Counters of
  // all threads are summed, so only thread 0 sets them.
  std::vector<uint64_t> maps;
  std::vector<uint64_t> unmaps;
  for (const Samples& s : g_samples) {
    maps.insert(maps.end(), s.map_ns.begin(), s.map_ns.end());
    unmaps.insert(unmaps.end(), s.unmap_ns.begin(), s.unmap_ns.end());
  }
  state.counters["map_p1_ns"] = quantile(maps, 0.01);
  state.counters["map_p50_ns"] = quantile(maps, 0.50);
  state.counters["map_p99_ns"] = quantile(maps, 0.99);
  state.counters["unmap_p1_ns"] = quantile(unmaps, 0.01);
  state.counters["unmap_p50_ns"] = quantile(unmaps, 0.50);
  state.counters["unmap_p99_ns"] = quantile(unmaps, 0.99);
  state.counters["clock_ns"] = clock_cost_ns();
}

template <typename Vm>
void register_case(const std::string& name, void (*fn)(benchmark::State&), std::vector<int64_t> args,
                   std::vector<std::string> arg_names, int threads) {
  benchmark::internal::Benchmark* b = benchmark::RegisterBenchmark(name.c_str(), fn);
  if (!args.empty()) b->Args(args)->ArgNames(arg_names);
  b->Threads(threads)->UseRealTime()->Setup(&setup_vm<Vm>)->Teardown(&teardown_vm<Vm>);
  if (name.starts_with("lat/")) b->Iterations(kLatRounds)->Unit(benchmark::kMillisecond);
}

void register_all() {
  // Registration order is run order: each configuration's baseline first (bench_support.h).
  for (int t : thread_counts()) {
    register_case<LinuxVm>("map/linux", &BM_Map<LinuxVm>, {}, {}, t);
    for (int r = 1; r <= std::min(t, kMaxReplicas); ++r) {
      register_case<NrVm>("map/nr", &BM_Map<NrVm>, {r}, {"replicas"}, t);
    }
  }
  for (int t : thread_counts()) {
    register_case<LinuxVm>("lat/linux", &BM_Latency<LinuxVm>, {}, {}, t);
    register_case<NrVm>("lat/nr", &BM_Latency<NrVm>, {std::min(t, kMaxReplicas)}, {"replicas"}, t);
  }
}

// One ratio per latency counter: NR's percentile over Linux's at the same thread count.
std::vector<RatioSpec> ratio_specs() {
  std::vector<RatioSpec> specs = {{.prefix = "map/", .baseline = "map/linux", .counter = "vs_linux",
                                   .metric = "items_per_second", .ignored_args = {"replicas"}}};
  for (const char* op : {"map", "unmap"}) {
    for (const char* p : {"p1", "p50", "p99"}) {
      const std::string stem = std::string(op) + "_" + p;
      specs.push_back({.prefix = "lat/", .baseline = "lat/linux", .counter = stem + "_vs_linux",
                       .metric = stem + "_ns", .ignored_args = {"replicas"}});
    }
  }
  return specs;
}

}  // namespace
}  // namespace nrx::bench

int main(int argc, char** argv) {
  nrx::bench::register_all();
  return nrx::bench::run_benchmarks(argc, argv, nrx::bench::ratio_specs());
}
