// Invariant checks. NRX_CHECK is always on (for conditions whose failure means memory would be
// corrupted); NRX_DCHECK only in debug builds and the sanitizer presets (NRX_DCHECK_ALWAYS_ON).
// Neither is for input from outside: that is validated and answered with a Status (STYLE.md).
#pragma once

namespace nrx::detail {
[[noreturn]] void check_failed(const char* file, int line, const char* cond, const char* msg);
}  // namespace nrx::detail

#define NRX_CHECK(cond, msg)                                                   \
  do {                                                                         \
    if (__builtin_expect(!(cond), 0)) ::nrx::detail::check_failed(__FILE__, __LINE__, #cond, msg); \
  } while (0)

#if !defined(NDEBUG) || defined(NRX_DCHECK_ALWAYS_ON)
#define NRX_DCHECK_IS_ON 1
#define NRX_DCHECK(cond, msg) NRX_CHECK(cond, msg)
#else
#define NRX_DCHECK_IS_ON 0
#define NRX_DCHECK(cond, msg) \
  do {                        \
    (void)sizeof(!(cond));    \
  } while (0)
#endif
