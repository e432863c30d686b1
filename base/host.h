// Which host a process runs on, and whether a process there is gone: the liveness checks of
// words in shared memory that name their owner by (host tag, pid) (logs/shm's locks and replica
// lines, CNR's shared scan order).
//
//   const uint64_t owner = uint64_t{nrx::host_tag()} << 32 | static_cast<uint32_t>(getpid());
//   if (nrx::owner_gone(owner)) { ... break the lock ... }
#pragma once

#include <cstdint>

namespace nrx {

// This host's tag: pids are comparable only between processes with the same boot id and pid
// namespace. A hash of both, never 0; computed once per process.
uint32_t host_tag();

// True only when process |pid| of this host is provably gone: no such pid, or a zombie waiting
// for its parent to reap it. A pid of another host is never "gone" by this test.
bool pid_gone(uint64_t pid);

// |owner| is host_tag() << 32 | pid. True only if that owner is on this host and its pid is gone.
inline bool owner_gone(uint64_t owner) {
  return static_cast<uint32_t>(owner >> 32) == host_tag() && pid_gone(owner & UINT32_MAX);
}

// This process's owner word (as above); fork-safe (reads the pid each time).
uint64_t self_owner();

}  // namespace nrx
