// nrx: the one command-line entry point (DESIGN 1, tools/). Subcommands grow with the kernel:
// boot, node, sweep and fs now; cluster, controller and node come with their issues.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace nrx::tools {
int run_boot(const std::vector<std::string>& args);
int run_sweep(const std::vector<std::string>& args);
int run_fs(const std::vector<std::string>& args);
int run_node(const std::vector<std::string>& args);
}  // namespace nrx::tools

namespace {

constexpr const char* kUsage =
    "usage: nrx <command> [options]\n"
    "\n"
    "nrx: a node-replicated kernel (NrOS-style NR) from one NUMA box to a rack.\n"
    "\n"
    "commands:\n"
    "  boot        boot the kernel on this machine's NUMA topology and run the demo workload\n"
    "  sweep       remote-latency sweeps: throughput and p50/p99 against injected log latency\n"
    "  fs          NR-FS for other processes: `fs mount DIR` (FUSE) or `fs serve` (syscall channel)\n"
    "  node        another kernel process on the shared-memory regions of `boot --log shm` (a second machine)\n"
    "  help        show this help, or `nrx help <command>` for a command's options\n"
    "\n"
    "Run `nrx <command> --help` for the options of a command.\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  std::string command = args[0];
  args.erase(args.begin());
  if (command == "help") {
    if (args.empty()) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    command = args[0];
    args = {"--help"};
  }
  if (command == "boot") return nrx::tools::run_boot(args);
  if (command == "sweep") return nrx::tools::run_sweep(args);
  if (command == "fs") return nrx::tools::run_fs(args);
  if (command == "node") return nrx::tools::run_node(args);
  std::fprintf(stderr, "nrx: unknown command '%s' (see 'nrx --help')\n", command.c_str());
  return 2;
}
