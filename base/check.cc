#include "base/check.h"

#include <cstdio>
#include <cstdlib>

namespace nrx::detail {

void check_failed(const char* file, int line, const char* cond, const char* msg) {
  std::fprintf(stderr, "nrx: check failed at %s:%d: %s (%s)\n", file, line, cond, msg ? msg : "");
  std::fflush(stderr);
  std::abort();
}

}  // namespace nrx::detail
