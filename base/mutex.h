// nrx::Mutex and nrx::MutexLock: std::mutex with Clang thread-safety annotations (libstdc++'s
// mutex carries none), so NRX_GUARDED_BY(mu_) is checked by the `clang` preset. For set-up and
// slow paths only; hot paths use the NR locks in kernel/nr/rwlock.h.
//
//   nrx::Mutex mu_;
//   int count_ NRX_GUARDED_BY(mu_);
//   { nrx::MutexLock lock(mu_); ++count_; }
#pragma once

#include <mutex>

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

}  // namespace nrx
