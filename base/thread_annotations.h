// Clang thread-safety annotations (-Wthread-safety, errors in the `clang` preset). Under GCC they
// expand to nothing. Locking rules live here, in the types, not in prose (STYLE.md).
#pragma once

#if defined(__clang__)
#define NRX_TSA(x) __attribute__((x))
#else
#define NRX_TSA(x)
#endif

#define NRX_CAPABILITY(x) NRX_TSA(capability(x))
#define NRX_SCOPED_CAPABILITY NRX_TSA(scoped_lockable)
#define NRX_GUARDED_BY(x) NRX_TSA(guarded_by(x))
#define NRX_PT_GUARDED_BY(x) NRX_TSA(pt_guarded_by(x))
#define NRX_REQUIRES(...) NRX_TSA(requires_capability(__VA_ARGS__))
#define NRX_REQUIRES_SHARED(...) NRX_TSA(requires_shared_capability(__VA_ARGS__))
#define NRX_ACQUIRE(...) NRX_TSA(acquire_capability(__VA_ARGS__))
#define NRX_ACQUIRE_SHARED(...) NRX_TSA(acquire_shared_capability(__VA_ARGS__))
#define NRX_RELEASE(...) NRX_TSA(release_capability(__VA_ARGS__))
#define NRX_RELEASE_SHARED(...) NRX_TSA(release_shared_capability(__VA_ARGS__))
#define NRX_TRY_ACQUIRE(...) NRX_TSA(try_acquire_capability(__VA_ARGS__))
#define NRX_EXCLUDES(...) NRX_TSA(locks_excluded(__VA_ARGS__))
#define NRX_RETURN_CAPABILITY(x) NRX_TSA(lock_returned(x))
#define NRX_NO_THREAD_SAFETY_ANALYSIS NRX_TSA(no_thread_safety_analysis)
