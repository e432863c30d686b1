// nrx: the one command-line entry point (DESIGN 1, tools/). Subcommands grow with the kernel:
// boot, node, sweep, fs, controller, cluster and rdma.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace nrx::tools {
int run_boot(const std::vector<std::string>& args);
int run_sweep(const std::vector<std::string>& args);
int run_fs(const std::vector<std::string>& args);
int run_node(const std::vector<std::string>& args);
int run_node_agent(const std::vector<std::string>& args);
int run_controller(const std::vector<std::string>& args);
int run_cluster(const std::vector<std::string>& args);
int run_rdma(const std::vector<std::string>& args);
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
    "  node        another kernel process on the shared-memory regions of `boot --log shm` (a second machine);\n"
    "              with --controller ADDR, a cluster machine run by the controller (`nrx node --controller x --help`)\n"
    "  controller  the cluster's gRPC control plane: joins, leases, fencing, runs\n"
    "  cluster     up, run, status, down: a QEMU cluster of nrx machines (deploy/), and init (secret, TLS)\n"
    "  rdma        probe (is an RDMA device usable here?) and ping (real verbs against a peer's memory)\n"
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
  if (command == "node") {
    for (const std::string& a : args) {
      if (a == "--controller" || a.rfind("--controller=", 0) == 0) return nrx::tools::run_node_agent(args);
    }
    return nrx::tools::run_node(args);
  }
  if (command == "controller") return nrx::tools::run_controller(args);
  if (command == "cluster") return nrx::tools::run_cluster(args);
  if (command == "rdma") return nrx::tools::run_rdma(args);
  std::fprintf(stderr, "nrx: unknown command '%s' (see 'nrx --help')\n", command.c_str());
  return 2;
}
