// A separate server process for channel_test: boots a small NR-FS, serves it on the channel named
// on the command line, writes "ready\n" to stdout, and serves until its stdin reaches end of file
// (the test closes the pipe, or dies); then stops the server cleanly and exits 0. The test kills
// it instead to check that waiting clients fail rather than hang.
//
//   syscall_server_helper /dev/shm/nrx-test-123 [SLOTS]
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernel/mem/memory.h"
#include "kernel/syscall/channel.h"

int main(int argc, char** argv) {
  using namespace nrx;
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: %s CHANNEL [SLOTS]\n", argv[0]);
    return 2;
  }
  const uint32_t slots = argc == 3 ? static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)) : 4;
  auto memory = mem::Memory::create({.nodes = 1, .pool_bytes = 16ull << 20});
  if (!memory.ok()) {
    std::fprintf(stderr, "server helper: %s\n", memory.status().to_string().c_str());
    return 1;
  }
  auto fs = fs::FileSystem<>::create(**memory, {.logs = 2, .replica_pools = {0}});
  if (!fs.ok()) {
    std::fprintf(stderr, "server helper: %s\n", fs.status().to_string().c_str());
    return 1;
  }
  auto server = syscall::ChannelServer::start(**fs, 0, {.path = argv[1], .slots = slots});
  if (!server.ok()) {
    std::fprintf(stderr, "server helper: %s\n", server.status().to_string().c_str());
    return 1;
  }
  std::fputs("ready\n", stdout);
  std::fflush(stdout);
  char c;
  while (read(STDIN_FILENO, &c, 1) > 0) {
  }
  server->reset();
  return 0;
}
