// Cache-line constants. Fields written by different threads sit kInterferenceSize apart: 128
// bytes on x86, because the adjacent-line prefetcher pulls lines in pairs (folly's argument).
#pragma once

#include <cstddef>

namespace nrx {

inline constexpr std::size_t kCacheLineSize = 64;
inline constexpr std::size_t kInterferenceSize = 128;

constexpr std::size_t round_up(std::size_t n, std::size_t align) { return (n + align - 1) / align * align; }
constexpr bool is_power_of_two(std::size_t n) { return n != 0 && (n & (n - 1)) == 0; }

}  // namespace nrx
