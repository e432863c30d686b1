// nrx::Mutex and nrx::MutexLock: std::mutex with Clang thread-safety annotations (libstdc++'s
// mutex carries none), so NRX_GUARDED_BY(mu_) is checked by the `clang` preset. For set-up and
// slow paths only; hot paths use the NR locks in kernel/nr/rwlock.h.
//
//   nrx::Mutex mu_;
//   int count_ NRX_GUARDED_BY(mu_);
//   { nrx::MutexLock lock(mu_); ++count_; }
#pragma once

#include <mutex>
#include <shared_mutex>

#include "base/thread_annotations.h"

namespace nrx {

class NRX_CAPABILITY("mutex") Mutex {
 public:
  void lock() NRX_ACQUIRE() { mu_.lock(); }
  void unlock() NRX_RELEASE() { mu_.unlock(); }
  bool try_lock() NRX_TRY_ACQUIRE(true) { return mu_.try_lock(); }

 private:
  std::mutex mu_;
};

class NRX_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) NRX_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() NRX_RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

// A readers-writer mutex with annotations (NR-FS's namespace and inode locks).
class NRX_CAPABILITY("mutex") SharedMutex {
 public:
  void lock() NRX_ACQUIRE() { mu_.lock(); }
  void unlock() NRX_RELEASE() { mu_.unlock(); }
  void lock_shared() NRX_ACQUIRE_SHARED() { mu_.lock_shared(); }
  void unlock_shared() NRX_RELEASE_SHARED() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
};

class NRX_SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(SharedMutex& mu) NRX_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~WriterLock() NRX_RELEASE() { mu_.unlock(); }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  SharedMutex& mu_;
};

class NRX_SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(SharedMutex& mu) NRX_ACQUIRE_SHARED(mu) : mu_(mu) { mu_.lock_shared(); }
  ~ReaderLock() NRX_RELEASE() { mu_.unlock_shared(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

 private:
  SharedMutex& mu_;
};

}  // namespace nrx
