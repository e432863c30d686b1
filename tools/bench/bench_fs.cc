// bench_fs: NR-FS (fs::FileSystem<logs::RingLog>: CNR over 4 ring logs, one replica per emulated
// NUMA node) against Linux tmpfs, fxmark-style (the NrOS paper's figure 3), in one binary and one
// run (README.md).
//
// Cases `fs/<variant>/per_thread_file:F/write_pct:W[/replicas:R]/real_time/threads:T`: T threads
// each run a stream of 1 KiB preads and pwrites (W % pwrites) at random 1 KiB-aligned offsets of a
// 16 MiB file that is fully written before the case starts, so no operation meets a hole, grows the
// file or allocates a frame. F = 0: every thread on ONE shared file; F = 1: thread i on its own
// file. One iteration is one operation. Variants, baseline first:
//   tmpfs  the same files in a fresh directory under /dev/shm, pread(2)/pwrite(2) on real file
//          descriptors, one per thread (on the shared file too: T descriptors of one file)
//   nrfs   R = min(T, 2) replicas, each in its own mem::Memory node (pool), 4 CNR logs (a file's
//          writes go to log ino mod 4); thread i attaches to replica i % R with its own Handle
// Both draw the same stream from the same per-thread xorshift64*: the block from the top bits,
// read-or-write from the low 32 bits (as bench_nr_hashmap).
//
// Checks (the same work in both variants): every pread and pwrite must move exactly 1 KiB, and
// the first word of every block is its block number (the prefill writes it, every pwrite writes it
// again), which every pread compares: a short or misplaced read stops the binary. A read racing a
// write of the same block sees that word whole, old or new, since both hold the same value.
//
// Counters: items_per_second (ops/s, all threads), bytes_per_second (1 KiB per op) and vs_tmpfs
// (ops/s over tmpfs's at the same file mode, write ratio and thread count).
//
// State: Google Benchmark runs Setup and Teardown around each trial of a case (it grows the
// iteration count until --benchmark_min_time), so every trial starts from fresh, fully written
// files: a new mem::Memory and FileSystem for nrfs, new files for tmpfs. Handles and descriptors
// are made by Setup and handed to the threads by index. The tmpfs files are unlinked as soon as
// their descriptors are open (they live on while open and vanish with the process however it
// ends); the directory is removed at exit and on SIGINT, SIGTERM, SIGHUP and SIGABRT.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/cacheline.h"
#include "base/check.h"
#include "kernel/fs/fs.h"
#include "kernel/mem/memory.h"
#include "tools/bench/bench_support.h"

namespace nrx::bench {
namespace {

constexpr uint64_t kBlockBytes = 1024;                        // one pread or pwrite
constexpr unsigned kBlockBits = 14;                           // 2^14 blocks of 1 KiB
constexpr uint64_t kFileBlocks = uint64_t{1} << kBlockBits;
constexpr uint64_t kFileBytes = kFileBlocks * kBlockBytes;    // 16 MiB per file
constexpr uint64_t kPrefillBytes = fs::kMaxIo;                // prefill chunk: NR-FS's largest write
constexpr uint64_t kSeed = 0x6e72782d66736265ull;
constexpr int kMaxReplicas = 2;
constexpr uint32_t kLogs = 4;
constexpr uint64_t kPoolAlign = uint64_t{2} << 20;            // mem::MemoryOptions::pool_bytes unit
constexpr uint64_t kPoolSlack = uint64_t{4} << 20;            // beyond the files' frames
constexpr int kWritePcts[] = {0, 10, 60, 100};
constexpr int kFileModes[] = {0, 1};                          // per_thread_file: 0 shared, 1 own
constexpr char kShmTemplate[] = "/dev/shm/nrx-bench-fs-XXXXXX";
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGABRT};

static_assert(kPrefillBytes % kBlockBytes == 0 && kFileBytes % kPrefillBytes == 0);

using Block = std::array<std::byte, kBlockBytes>;

// One operation of the stream: the block from the top bits, pwrite-or-pread from the low 32.
struct Op {
  uint64_t block;
  uint64_t r;  // the raw draw, stamped into written blocks
  bool write;
};
inline Op draw(XorShift64& rng, uint64_t write_pct) {
  const uint64_t r = rng.next();
  // ((r mod 2^32) * 100) >> 32 is uniform in 0..99 without a division.
  return Op{r >> (64 - kBlockBits), r, (((r & 0xffffffffull) * 100) >> 32) < write_pct};
}

// The block header: word 0 is the block number (never changes), word 1 the writer's draw.
inline void stamp(std::byte* block, uint64_t number, uint64_t r) {
  std::memcpy(block, &number, sizeof number);
  std::memcpy(block + sizeof number, &r, sizeof r);
}
inline uint64_t block_number(const std::byte* block) {
  uint64_t n;
  std::memcpy(&n, block, sizeof n);
  return n;
}

// A prefill chunk for file offset |offset|: every block stamped with its number, the rest a
// pattern that is not zero (zeros would look like a hole).
void fill_chunk(std::span<std::byte> chunk, uint64_t offset) {
  std::memset(chunk.data(), 0xa5, chunk.size());
  for (uint64_t b = 0; b < chunk.size() / kBlockBytes; ++b) {
    stamp(chunk.data() + b * kBlockBytes, offset / kBlockBytes + b, 0);
  }
}

int file_count(bool per_thread, int threads) { return per_thread ? threads : 1; }
// The file thread |thread| works on: its own, or the shared one (index 0).
int file_of(bool per_thread, int thread) { return per_thread ? thread : 0; }
std::string file_name(bool per_thread, int file) { return per_thread ? "t" + std::to_string(file) : "shared"; }

// ---------------------------------------------------------------------------------------------
// The /dev/shm directory: made on first use, removed at exit or on a fatal signal. Its file names
// are all known up front ("shared", "t0".."t<N-1>"), so the signal handler only unlinks and
// rmdirs (both async-signal-safe) paths built before the handlers were installed.

struct ShmDir {
  std::string dir;
  std::vector<std::string> files;  // every name a case may create, as full paths
};
ShmDir* g_shm = nullptr;  // set once, before the handlers; never changed after

void remove_shm_dir() {
  if (g_shm == nullptr) return;
  for (const std::string& f : g_shm->files) (void)unlink(f.c_str());
  (void)rmdir(g_shm->dir.c_str());
}

void on_fatal_signal(int sig) {
  remove_shm_dir();
  (void)raise(sig);  // SA_RESETHAND restored the default action: delivered when this returns
}

const ShmDir& shm_dir() {
  if (g_shm != nullptr) return *g_shm;
  auto* shm = new ShmDir;  // lives until exit: the atexit and signal handlers use it
  char path[sizeof kShmTemplate];
  std::memcpy(path, kShmTemplate, sizeof kShmTemplate);
  NRX_CHECK(mkdtemp(path) != nullptr, "mkdtemp under /dev/shm failed");
  shm->dir = path;
  shm->files.push_back(shm->dir + "/" + file_name(false, 0));
  for (int t = 0; t < thread_counts().back(); ++t) shm->files.push_back(shm->dir + "/" + file_name(true, t));
  g_shm = shm;
  NRX_CHECK(std::atexit(&remove_shm_dir) == 0, "atexit failed");
  struct sigaction sa = {};
  sa.sa_handler = &on_fatal_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (int sig : kCleanupSignals) NRX_CHECK(sigaction(sig, &sa, nullptr) == 0, "sigaction failed");
  return *g_shm;
}

// ---------------------------------------------------------------------------------------------
// Variants. Each is built by Setup before the threads start and destroyed by Teardown after they
// have all left the loop; a thread finds its state by index. Args: {per_thread_file, write_pct
// [, replicas]}.

// The baseline: tmpfs files, one descriptor per thread.
class Tmpfs {
 public:
  // Read-only in the loop; aligned so no two threads' states share a line anyway.
  struct alignas(kInterferenceSize) Thread {
    int fd = -1;
  };

  explicit Tmpfs(const benchmark::State& state) : threads_(static_cast<size_t>(state.threads())) {
    const bool per_thread = state.range(0) != 0;
    const ShmDir& shm = shm_dir();
    std::vector<std::byte> chunk(kPrefillBytes);
    for (int f = 0; f < file_count(per_thread, state.threads()); ++f) {
      const std::string path = shm.dir + "/" + file_name(per_thread, f);
      const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      NRX_CHECK(fd >= 0, "creating a file under /dev/shm failed");
      for (uint64_t off = 0; off < kFileBytes; off += kPrefillBytes) {
        fill_chunk(chunk, off);
        NRX_CHECK(pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(off)) == static_cast<ssize_t>(chunk.size()),
                  "prefilling a tmpfs file failed");
      }
      for (int t = 0; t < state.threads(); ++t) {
        if (file_of(per_thread, t) != f) continue;
        threads_[static_cast<size_t>(t)].fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
        NRX_CHECK(threads_[static_cast<size_t>(t)].fd >= 0, "opening a tmpfs file failed");
      }
      NRX_CHECK(close(fd) == 0, "close failed");
      NRX_CHECK(unlink(path.c_str()) == 0, "unlinking a tmpfs file failed");  // lives on while open
    }
  }
  ~Tmpfs() {
    for (Thread& t : threads_) (void)close(t.fd);
  }
  Tmpfs(const Tmpfs&) = delete;
  Tmpfs& operator=(const Tmpfs&) = delete;

  Thread& thread(const benchmark::State& state) { return threads_[static_cast<size_t>(state.thread_index())]; }
  static void read(Thread& t, Block& out, uint64_t offset) {
    NRX_CHECK(pread(t.fd, out.data(), out.size(), static_cast<off_t>(offset)) == static_cast<ssize_t>(out.size()),
              "tmpfs pread failed or was short");
  }
  static void write(Thread& t, const Block& in, uint64_t offset) {
    NRX_CHECK(pwrite(t.fd, in.data(), in.size(), static_cast<off_t>(offset)) == static_cast<ssize_t>(in.size()),
              "tmpfs pwrite failed or was short");
  }

 private:
  std::vector<Thread> threads_;  // by thread index
};

// NR-FS: R replicas, each in its own pool, 4 CNR logs; thread i on replica i % R.
class NrFs {
 public:
  struct alignas(kInterferenceSize) Thread {
    fs::FileSystem<>* fs = nullptr;
    fs::Handle handle;
    fs::Ino ino = 0;
  };

  explicit NrFs(const benchmark::State& state) : threads_(static_cast<size_t>(state.threads())) {
    const bool per_thread = state.range(0) != 0;
    const auto replicas = static_cast<uint32_t>(state.range(2));
    const auto threads = static_cast<uint32_t>(state.threads());
    const int files = file_count(per_thread, state.threads());
    const uint64_t pool = round_up(static_cast<uint64_t>(files) * kFileBytes + kPoolSlack, kPoolAlign);
    memory_ = mem::Memory::create({.nodes = replicas, .pool_bytes = pool}).value();
    fs::FsOptions fo;
    fo.logs = kLogs;
    fo.replica_pools.clear();
    for (uint32_t r = 0; r < replicas; ++r) fo.replica_pools.push_back(r);
    // As bench_cnr_hashmap: no more thread slots than threads, so combiners scan few reader flags.
    fo.max_threads_per_replica = (threads + replicas - 1) / replicas;
    fs_ = fs::FileSystem<>::create(*memory_, fo).value();
    for (uint32_t t = 0; t < threads; ++t) {
      threads_[t].fs = fs_.get();
      threads_[t].handle = fs_->attach(t % replicas).value();
    }
    // Create and fill every file through thread 0's handle, then let every replica catch up (fsync
    // applies all logs on the handle's replica) and check that it holds every file in full.
    std::vector<fs::Ino> inos;
    std::vector<std::byte> chunk(kPrefillBytes);
    fs::Handle& h0 = threads_[0].handle;
    for (int f = 0; f < files; ++f) {
      const fs::Ino ino = fs_->open(h0, "/" + file_name(per_thread, f), fs::kCreate | fs::kWrite).value();
      for (uint64_t off = 0; off < kFileBytes; off += kPrefillBytes) {
        fill_chunk(chunk, off);
        NRX_CHECK(fs_->pwrite(h0, ino, chunk, off).value() == chunk.size(), "prefilling an NR-FS file was short");
      }
      inos.push_back(ino);
    }
    for (uint32_t r = 0; r < replicas; ++r) {  // thread r is on replica r (R <= T)
      for (fs::Ino ino : inos) {
        NRX_CHECK(fs_->fsync(threads_[r].handle, ino).ok(), "fsync failed");
        NRX_CHECK(fs_->fstat(threads_[r].handle, ino).value().size == kFileBytes, "a replica lacks prefill data");
      }
    }
    for (uint32_t t = 0; t < threads; ++t) threads_[t].ino = inos[static_cast<size_t>(file_of(per_thread, static_cast<int>(t)))];
  }

  Thread& thread(const benchmark::State& state) { return threads_[static_cast<size_t>(state.thread_index())]; }
  static void read(Thread& t, Block& out, uint64_t offset) {
    auto n = t.fs->pread(t.handle, t.ino, out, offset);
    NRX_CHECK(n.ok() && *n == out.size(), "NR-FS pread failed or was short");
  }
  static void write(Thread& t, const Block& in, uint64_t offset) {
    auto n = t.fs->pwrite(t.handle, t.ino, in, offset);
    NRX_CHECK(n.ok() && *n == in.size(), "NR-FS pwrite failed or was short");
  }

 private:
  std::unique_ptr<mem::Memory> memory_;  // declared first: outlives the file system's frames
  std::unique_ptr<fs::FileSystem<>> fs_;
  std::vector<Thread> threads_;  // by thread index
};

// The variant of the current run, built by Setup before the threads start, destroyed by Teardown
// after they have all left the loop.
template <typename Files>
std::unique_ptr<Files> g_files;

template <typename Files>
void setup_files(const benchmark::State& state) {
  g_files<Files> = std::make_unique<Files>(state);
}
template <typename Files>
void teardown_files(const benchmark::State&) {
  g_files<Files>.reset();
}

template <typename Files>
void BM_Fs(benchmark::State& state) {
  Files& files = *g_files<Files>;
  const auto write_pct = static_cast<uint64_t>(state.range(1));
  typename Files::Thread& t = files.thread(state);
  XorShift64 rng(kSeed + static_cast<uint64_t>(state.thread_index()));
  Block buf;
  fill_chunk(buf, 0);
  for (auto _ : state) {
    const Op op = draw(rng, write_pct);
    const uint64_t offset = op.block * kBlockBytes;
    if (op.write) {
      stamp(buf.data(), op.block, op.r);
      Files::write(t, buf, offset);
    } else {
      Files::read(t, buf, offset);
      NRX_CHECK(block_number(buf.data()) == op.block, "a pread returned another block's data");
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kBlockBytes));
}

template <typename Files>
void register_case(const std::string& variant, std::vector<int64_t> args, std::vector<std::string> names, int threads) {
  benchmark::RegisterBenchmark(("fs/" + variant).c_str(), &BM_Fs<Files>)
      ->Args(args)
      ->ArgNames(names)
      ->Threads(threads)
      ->UseRealTime()
      ->Setup(&setup_files<Files>)
      ->Teardown(&teardown_files<Files>);
}

void register_all() {
  // Registration order is run order: each configuration's baseline first (bench_support.h).
  for (int per_thread : kFileModes) {
    for (int w : kWritePcts) {
      for (int t : thread_counts()) {
        register_case<Tmpfs>("tmpfs", {per_thread, w}, {"per_thread_file", "write_pct"}, t);
        register_case<NrFs>("nrfs", {per_thread, w, std::min(t, kMaxReplicas)},
                            {"per_thread_file", "write_pct", "replicas"}, t);
      }
    }
  }
}

}  // namespace
}  // namespace nrx::bench

int main(int argc, char** argv) {
  nrx::bench::register_all();
  return nrx::bench::run_benchmarks(argc, argv,
                                    {{.prefix = "fs/", .baseline = "fs/tmpfs", .counter = "vs_tmpfs",
                                      .metric = "items_per_second", .ignored_args = {"replicas"}}});
}
