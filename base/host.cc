#include "base/host.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <fstream>
#include <iterator>
#include <string>

namespace nrx {

uint32_t host_tag() {
  static const uint32_t tag = [] {
    std::string id;
    {
      std::ifstream boot("/proc/sys/kernel/random/boot_id");
      id.assign(std::istreambuf_iterator<char>(boot), std::istreambuf_iterator<char>());
    }
    struct stat st {};
    if (stat("/proc/self/ns/pid", &st) == 0) id += ":" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
    uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
    for (const char c : id) {
      h ^= static_cast<unsigned char>(c);
      h *= 0x100000001b3ULL;
    }
    const auto t = static_cast<uint32_t>(h ^ (h >> 32));
    return t == 0 ? 1u : t;
  }();
  return tag;
}

bool pid_gone(uint64_t pid) {
  if (pid == 0 || pid > static_cast<uint64_t>(INT_MAX)) return false;  // not a pid we can ask about
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return true;
  // A zombie (dead, not yet reaped by its parent) still answers kill(); its state says "Z".
  std::ifstream stat_file("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat_file, line)) return false;
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return false;
  const char state = line[paren + 2];
  return state == 'Z' || state == 'X';
}

uint64_t self_owner() { return uint64_t{host_tag()} << 32 | static_cast<uint32_t>(getpid()); }

}  // namespace nrx
