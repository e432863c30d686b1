// DistributedRwLock: mutual exclusion between the writer and readers, shared readers, and writer
// preference (a reader arriving while a writer waits goes after the writer).
#include "kernel/nr/rwlock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace nrx::nr {
namespace {

template <typename F>
bool eventually(F cond) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST(DistributedRwLock, WriterExcludesReaders) {
  constexpr uint32_t kReaders = 3;
  DistributedRwLock lock(kReaders);
  // Two counters the writer keeps equal; a reader that ever sees them differ saw a torn write.
  std::atomic<uint64_t> a{0}, b{0};
  std::atomic<uint64_t> torn{0};
  std::atomic<bool> stop{false};
  for (uint32_t r = 0; r < kReaders; ++r) lock.activate_reader(r);
  std::vector<std::thread> readers;
  for (uint32_t r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      while (!stop.load()) {
        lock.lock_shared(r);
        if (a.load(std::memory_order_relaxed) != b.load(std::memory_order_relaxed)) torn.fetch_add(1);
        lock.unlock_shared(r);
      }
    });
  }
  for (int i = 0; i < 20000; ++i) {
    lock.lock();
    a.store(a.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    std::this_thread::yield();  // widen the window in which a reader could slip in
    b.store(b.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    lock.unlock();
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(torn.load(), 0u);
}

TEST(DistributedRwLock, ReadersShare) {
  DistributedRwLock lock(2);
  lock.activate_reader(0);
  lock.activate_reader(1);
  lock.lock_shared(0);
  std::atomic<bool> second_in{false};
  std::thread t([&] {
    lock.lock_shared(1);  // would block forever if readers excluded each other
    second_in.store(true);
    lock.unlock_shared(1);
  });
  EXPECT_TRUE(eventually([&] { return second_in.load(); }));
  t.join();
  lock.unlock_shared(0);
}

TEST(DistributedRwLock, WaitingWriterGoesBeforeNewReaders) {
  DistributedRwLock lock(2);
  lock.activate_reader(0);
  lock.activate_reader(1);
  lock.lock_shared(0);  // an old reader holds the lock
  std::atomic<int> order{0};
  std::atomic<int> writer_at{-1}, reader_at{-1};
  std::thread writer([&] {
    lock.lock();
    writer_at.store(order.fetch_add(1));
    lock.unlock();
  });
  EXPECT_TRUE(eventually([&] { return lock.writer_active(); }));  // EXPECT: the lock must be released below
  std::atomic<bool> reader_trying{false};
  std::thread reader([&] {
    reader_trying.store(true);
    lock.lock_shared(1);
    reader_at.store(order.fetch_add(1));
    lock.unlock_shared(1);
  });
  EXPECT_TRUE(eventually([&] { return reader_trying.load(); }));
  // Give a lock without writer preference every chance to let the new reader in now.
  for (int i = 0; i < 2000 && reader_at.load() == -1; ++i) std::this_thread::yield();
  EXPECT_EQ(reader_at.load(), -1) << "a new reader entered while a writer was waiting";
  lock.unlock_shared(0);  // the old reader leaves: the waiting writer must go first
  writer.join();
  reader.join();
  EXPECT_EQ(writer_at.load(), 0);
  EXPECT_EQ(reader_at.load(), 1);
}

}  // namespace
}  // namespace nrx::nr
