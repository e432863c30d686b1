// Concurrency stress for NR-FS (with the rest of the suite under tsan and asan): four threads on
// two replicas over four logs. Each thread owns a directory whose files it writes, reads back,
// truncates and renames, checking every answer against its own model (nobody else touches them);
// all threads also race on one shared directory (create/unlink/rename/mkdir of the same names),
// where any POSIX answer is allowed but the two replicas must end equal, and no payload may be
// left unreleased.
#include <atomic>
#include <cerrno>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/fs/fs.h"
#include "kernel/mem/memory.h"

namespace nrx::fs {
namespace {

TEST(FsStress, ConcurrentThreadsOnTwoReplicas) {
  constexpr int kThreads = 4;
  constexpr int kOps = 20000;
  auto memory = mem::Memory::create({.nodes = 2, .pool_bytes = 64ull << 20}).value();
  auto fs = FileSystem<>::create(*memory, {.logs = 4, .replica_pools = {0, 1}, .log_slots = 256}).value();
  {
    Handle h = fs->attach(0).value();
    ASSERT_TRUE(fs->mkdir(h, "/shared").ok());
    for (int t = 0; t < kThreads; ++t) ASSERT_TRUE(fs->mkdir(h, "/t" + std::to_string(t)).ok());
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Handle h = fs->attach(static_cast<uint32_t>(t % 2)).value();
      std::mt19937_64 rng(static_cast<uint64_t>(t) * 7 + 1);
      std::map<std::string, std::string> files;  // my files: path -> contents
      const std::string dir = "/t" + std::to_string(t);
      for (int i = 0; i < kOps; ++i) {
        const uint64_t dice = rng() % 100;
        const std::string name = dir + "/f" + std::to_string(rng() % 8);
        if (dice < 20) {  // the shared directory: anything POSIX allows
          const std::string a = "/shared/" + std::to_string(rng() % 4);
          const std::string b = "/shared/" + std::to_string(rng() % 4);
          Status st;
          switch (rng() % 4) {
            case 0: st = fs->open(h, a, kCreate).status(); break;
            case 1: st = fs->unlink(h, a); break;
            case 2: st = fs->rename(h, a, b); break;
            default: st = fs->mkdir(h, a); break;
          }
          const int e = to_errno(st);
          if (e != 0 && e != ENOENT && e != EEXIST && e != EISDIR && e != ENOTDIR && e != ENOTEMPTY) ++mismatches;
          continue;
        }
        auto it = files.find(name);
        if (dice < 50) {  // write
          auto ino = fs->open(h, name, kCreate | kWrite);
          if (!ino.ok()) {
            ++mismatches;
            continue;
          }
          const uint64_t off = rng() % 9000;
          std::string data(1 + rng() % 3000, static_cast<char>('a' + rng() % 26));
          if (!fs->pwrite(h, *ino, std::as_bytes(std::span(data)), off).ok()) ++mismatches;
          std::string& model = files[name];
          if (model.size() < off + data.size()) model.resize(off + data.size(), '\0');
          model.replace(off, data.size(), data);
        } else if (dice < 75) {  // read back everything
          auto ino = fs->open(h, name, 0);
          if (ino.ok() != (it != files.end())) {
            ++mismatches;
            continue;
          }
          if (!ino.ok()) continue;
          std::vector<std::byte> buf(it->second.size() + 100);
          auto n = fs->pread(h, *ino, buf, 0);
          if (!n.ok() || std::string(reinterpret_cast<const char*>(buf.data()), *n) != it->second) ++mismatches;
        } else if (dice < 85) {  // truncate
          if (it == files.end()) continue;
          const uint64_t size = rng() % 5000;
          auto ino = fs->open(h, name, kWrite);
          if (!ino.ok() || !fs->truncate(h, *ino, size).ok()) ++mismatches;
          it->second.resize(size, '\0');
        } else if (dice < 93) {  // rename within my directory
          const std::string to = dir + "/f" + std::to_string(rng() % 8);
          const int e = to_errno(fs->rename(h, name, to));
          if (e != (it == files.end() ? ENOENT : 0)) ++mismatches;
          if (it != files.end() && name != to) {
            files[to] = it->second;
            files.erase(name);
          }
        } else {  // unlink
          const int e = to_errno(fs->unlink(h, name));
          if (e != (it == files.end() ? ENOENT : 0)) ++mismatches;
          if (it != files.end()) files.erase(it);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
  Handle h0 = fs->attach(0).value();
  Handle h1 = fs->attach(1).value();
  EXPECT_EQ(fs->digest(h0), fs->digest(h1));
  (void)fs->digest(h0);
  EXPECT_EQ(fs->stats(h0).payloads_live, 0u);
}

}  // namespace
}  // namespace nrx::fs
