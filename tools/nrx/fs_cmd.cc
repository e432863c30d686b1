// `nrx fs`: NR-FS (kernel/fs) served to other Linux processes. `nrx fs mount DIR` boots NR-FS (one
// memory pool and one replica per, possibly emulated, NUMA node) and mounts it through FUSE
// (tools/nrx/fuse_mount.h), optionally also serving the shared-memory syscall channel
// (kernel/syscall/channel.h) on the same file system; `nrx fs serve` serves the channel alone.
//
// Signals: SIGINT, SIGTERM and SIGHUP are blocked before anything starts a thread, so no helper
// thread (the channel's) swallows one; the FUSE loop unblocks them for its own threads, and
// `serve` waits for them with sigwait().
//
// Without --foreground, `mount` forks before it creates anything (threads do not survive a fork);
// the child boots, mounts and reports through a pipe, and the parent prints that report and exits
// with its status: when the command returns, the mount is there (or the error was printed).
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernel/boot/topology.h"
#include "kernel/fs/fs.h"
#include "kernel/mem/memory.h"
#include "kernel/syscall/channel.h"
#include "tools/nrx/cli.h"
#include "tools/nrx/fuse_mount.h"

namespace nrx::tools {
namespace {

constexpr int kExitFailed = 1;
constexpr int kExitBadInput = 2;
constexpr int kExitNoFuse = 3;  // FUSE is not available on this machine (tests skip on it)

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kDefaultPoolMiB = 256;
constexpr uint64_t kMaxPoolMiB = uint64_t{1} << 20;  // 1 TiB per node
constexpr uint64_t kDefaultLogs = 4;

constexpr const char* kFsUsage =
    "usage: nrx fs <command> [options]\n"
    "\n"
    "NR-FS, the node-replicated in-memory file system (one replica per NUMA node over several\n"
    "logs), served to other Linux processes.\n"
    "\n"
    "commands:\n"
    "  mount DIR   mount NR-FS on the empty directory DIR through FUSE: unmodified programs use it\n"
    "  serve       serve NR-FS through the shared-memory syscall channel only (libnrx clients)\n"
    "\n"
    "Run `nrx fs <command> --help` for the options of a command.\n";

constexpr const char* kMountSummary =
    "Boot NR-FS (one memory pool and one replica per NUMA node, emulated with --nodes) and mount it\n"
    "on the empty directory DIR through FUSE (libfuse3), so unmodified programs (a shell, tar,\n"
    "SQLite) use it. Requests are served by several threads, each with its own NR-FS handle, dealt\n"
    "round-robin over the replicas. Prints one line once mounted; SIGINT, SIGTERM or SIGHUP (or\n"
    "`fusermount3 -u DIR`) unmounts. Everything lives in memory and is gone after the unmount.\n"
    "With --channel PATH, other processes can also use the same file system through libnrx.\n"
    "Files belong to the user who mounted; symbolic and hard links are not supported.\n"
    "\n"
    "Exit status: 0 after a clean unmount, 1 on failure, 2 on bad input, 3 when FUSE is not\n"
    "available here (no /dev/fuse, or the kernel refused the mount).";

constexpr const char* kServeSummary =
    "Boot NR-FS (one memory pool and one replica per NUMA node, emulated with --nodes) and serve it\n"
    "through the shared-memory syscall channel at PATH until SIGINT, SIGTERM or SIGHUP; libnrx\n"
    "clients in other processes use it. Prints one line once serving.\n"
    "\n"
    "Exit status: 0 after a signal, 1 on failure, 2 on bad input.";

// The NR-FS configuration both commands boot.
struct BootConfig {
  uint32_t nodes = 1;
  uint32_t logs = kDefaultLogs;
  uint64_t pool_mib = kDefaultPoolMiB;
};

struct BootedFs {
  std::unique_ptr<mem::Memory> memory;
  std::unique_ptr<fs::FileSystem<>> nrfs;  // declared after memory: destroyed before it
};

void add_boot_options(cli::Command& cmd) {
  cmd.option("nodes", "N", "NUMA nodes (replicas); more than the machine has are emulated", "detected");
  cmd.option("pool-mib", "M", "memory pool per node in MiB, even (file data of one replica)",
             std::to_string(kDefaultPoolMiB));
  cmd.option("logs", "K", "CNR logs of NR-FS (1..64)", std::to_string(kDefaultLogs));
}

Result<BootConfig> read_boot_options(const cli::Command& cmd, const boot::Topology& detected) {
  BootConfig c;
  NRX_ASSIGN_OR_RETURN(uint64_t nodes, cmd.get_u64("nodes", detected.nodes.size(), 1, 64));
  NRX_ASSIGN_OR_RETURN(uint64_t logs, cmd.get_u64("logs", kDefaultLogs, 1, 64));
  NRX_ASSIGN_OR_RETURN(c.pool_mib, cmd.get_u64("pool-mib", kDefaultPoolMiB, 2, kMaxPoolMiB));
  if (c.pool_mib % 2 != 0) {
    return Status::invalid_argument("--pool-mib must be even (pools are made of 2 MiB frames), not " +
                                    std::to_string(c.pool_mib));
  }
  c.nodes = static_cast<uint32_t>(nodes);
  c.logs = static_cast<uint32_t>(logs);
  return c;
}

// Memory with one pool per node, bound to the real node behind it, and NR-FS with one replica per
// pool. Errors: Memory::create's and FileSystem::create's.
Result<BootedFs> boot_nrfs(const BootConfig& c, const boot::Topology& detected) {
  NRX_ASSIGN_OR_RETURN(boot::Topology topo, detected.emulate(c.nodes));
  mem::MemoryOptions mo;
  mo.nodes = c.nodes;
  mo.pool_bytes = c.pool_mib * kMiB;
  if (detected.numa_available) {
    for (const boot::Node& n : topo.nodes) mo.physical_nodes.push_back(n.physical_node);
  }
  BootedFs b;
  NRX_ASSIGN_OR_RETURN(b.memory, mem::Memory::create(mo));
  fs::FsOptions fo;
  fo.logs = c.logs;
  fo.replica_pools.clear();
  for (uint32_t p = 0; p < c.nodes; ++p) fo.replica_pools.push_back(p);
  NRX_ASSIGN_OR_RETURN(b.nrfs, fs::FileSystem<>::create(*b.memory, fo));
  return b;
}

// "2 replicas, 4 logs, 256 MiB per node".
std::string describe(const BootConfig& c) {
  return std::to_string(c.nodes) + (c.nodes == 1 ? " replica, " : " replicas, ") + std::to_string(c.logs) +
         (c.logs == 1 ? " log, " : " logs, ") + std::to_string(c.pool_mib) + " MiB per node";
}

sigset_t ending_signals() {
  sigset_t s;
  sigemptyset(&s);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&s, sig);
  return s;
}

// Where the outcome of start-up goes: this terminal, or (in the background child) the pipe to
// the parent, which prints it. Wire format: one digit (the exit status), then the text.
class Startup {
 public:
  explicit Startup(int pipe_fd) : fd_(pipe_fd) {}

  // Reports the end of start-up; returns |code|. On success in the background child, stdio then
  // goes to /dev/null and the working directory to /, so the mount does not hold either.
  int report(int code, const std::string& line) {
    if (fd_ < 0) {
      std::fprintf(code == 0 ? stdout : stderr, "%s\n", line.c_str());
      std::fflush(stdout);
      return code;
    }
    const std::string msg = std::to_string(code) + line + "\n";
    for (size_t off = 0; off < msg.size();) {
      const ssize_t n = write(fd_, msg.data() + off, msg.size() - off);
      if (n <= 0) break;  // the parent is gone: nobody left to tell
      off += static_cast<size_t>(n);
    }
    close(fd_);
    fd_ = -1;
    if (code == 0) {
      const int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
      if (devnull >= 0) {
        for (int std_fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) dup2(devnull, std_fd);
        close(devnull);
      }
      if (chdir("/") != 0) {
        // Nothing to report to any more; staying in the old directory only keeps it busy.
      }
    }
    return code;
  }

 private:
  int fd_;
};

// The parent's side of a background start: prints the child's report and returns its status.
int await_background(pid_t child, int pipe_fd) {
  std::string msg;
  char buf[512];
  for (;;) {
    const ssize_t n = read(pipe_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.append(buf, static_cast<size_t>(n));
  }
  close(pipe_fd);
  if (msg.empty() || msg[0] < '0' || msg[0] > '9') {
    int wstatus = 0;
    waitpid(child, &wstatus, 0);
    std::fprintf(stderr, "nrx fs mount: the background server exited during start-up (status %d)\n",
                 WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus));
    return kExitFailed;
  }
  const int code = msg[0] - '0';
  std::fputs(msg.c_str() + 1, code == 0 ? stdout : stderr);
  if (code != 0) waitpid(child, nullptr, 0);  // it exits right after reporting
  return code;
}

int run_mount(const std::vector<std::string>& all_args) {
  cli::Command cmd("fs mount", kMountSummary);
  add_boot_options(cmd);
  cmd.option("channel", "PATH", "also serve the shared-memory syscall channel at PATH (libnrx clients)");
  cmd.flag("foreground", "stay in the foreground (default: return once mounted, serve in the background)");
  // DIR comes first (`nrx fs mount DIR [options]`); cli::Command parses the options after it.
  std::vector<std::string> args = all_args;
  std::optional<std::string> dir;
  if (!args.empty() && !args[0].empty() && args[0][0] != '-') {
    dir = args[0];
    args.erase(args.begin());
  }
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::string usage = cmd.usage();
    usage.replace(0, usage.find('\n'), "usage: nrx fs mount DIR [options]");
    std::fputs(usage.c_str(), stdout);
    return 0;
  }
  if (!dir) return cli::fail(cmd, Status::invalid_argument("missing the mount directory: nrx fs mount DIR"));
  const boot::Topology detected = boot::Topology::detect();
  Result<BootConfig> config = read_boot_options(cmd, detected);
  if (!config.ok()) return cli::fail(cmd, config.status());
  const std::optional<std::string> channel = cmd.get("channel");
  if (channel && channel->empty()) return cli::fail(cmd, Status::invalid_argument("--channel needs a path"));

  // Checked here too (FuseMount::mount checks again) so the answers come before any start-up.
  Result<std::string> abs_dir = check_mount_dir(*dir);
  if (!abs_dir.ok()) return cli::fail(cmd, abs_dir.status());
  if (Status st = check_fuse_device(); !st.ok()) {
    std::fprintf(stderr, "nrx fs mount: %s\n", st.message().c_str());
    return kExitNoFuse;
  }

  const sigset_t ending = ending_signals();
  pthread_sigmask(SIG_BLOCK, &ending, nullptr);

  int report_fd = -1;
  if (!cmd.flag_set("foreground")) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      std::perror("nrx fs mount: pipe");
      return kExitFailed;
    }
    std::fflush(nullptr);
    const pid_t child = fork();
    if (child < 0) {
      std::perror("nrx fs mount: fork");
      return kExitFailed;
    }
    if (child > 0) {
      pthread_sigmask(SIG_UNBLOCK, &ending, nullptr);  // ^C while waiting stops this process only
      close(fds[1]);
      return await_background(child, fds[0]);
    }
    close(fds[0]);
    setsid();  // out of the terminal's process group: its ^C is not for the server
    report_fd = fds[1];
  }
  Startup startup(report_fd);

  Result<BootedFs> booted = boot_nrfs(*config, detected);
  if (!booted.ok()) {
    return startup.report(kExitFailed, "nrx fs mount: cannot boot NR-FS: " + booted.status().to_string());
  }
  fs::FileSystem<>& nrfs = *booted->nrfs;

  std::unique_ptr<syscall::ChannelServer> server;
  if (channel) {
    auto started = syscall::ChannelServer::start(nrfs, /*replica=*/0, {.path = *channel});
    if (!started.ok()) {
      return startup.report(kExitFailed, "nrx fs mount: cannot serve the syscall channel at " + *channel + ": " +
                                             started.status().to_string());
    }
    server = std::move(*started);
  }

  Result<std::unique_ptr<FuseMount>> mount = FuseMount::mount(nrfs, {.dir = *abs_dir, .uncached = channel.has_value()});
  if (!mount.ok()) {
    const StatusCode code = mount.status().code();
    return startup.report(code == StatusCode::kUnavailable       ? kExitNoFuse
                          : code == StatusCode::kInvalidArgument ? kExitBadInput
                                                                 : kExitFailed,
                          "nrx fs mount: " + mount.status().message());
  }
  std::string line = "nrx fs: NR-FS mounted on " + (*mount)->dir() + " (" + describe(*config) + ")";
  if (server) line += "; syscall channel at " + server->path();
  startup.report(0, line);

  const Status served = (*mount)->serve();
  std::string handles;
  for (uint32_t n : (*mount)->worker_handles()) handles += " " + std::to_string(n);
  mount->reset();  // unmounts
  if (!served.ok()) {
    std::fprintf(stderr, "nrx fs mount: %s\n", served.message().c_str());
    return kExitFailed;
  }
  std::string done = "nrx fs: NR-FS unmounted from " + *abs_dir + " (FUSE worker handles per replica:" + handles + ")";
  if (server) done += "; syscall channel: " + std::to_string(server->requests_served()) + " requests served";
  std::printf("%s\n", done.c_str());
  return 0;
}

int run_serve(const std::vector<std::string>& args) {
  cli::Command cmd("fs serve", kServeSummary);
  cmd.option("channel", "PATH", "where the shared-memory syscall channel lives (required)");
  add_boot_options(cmd);
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  const std::optional<std::string> channel = cmd.get("channel");
  if (!channel || channel->empty()) return cli::fail(cmd, Status::invalid_argument("--channel PATH is required"));
  const boot::Topology detected = boot::Topology::detect();
  Result<BootConfig> config = read_boot_options(cmd, detected);
  if (!config.ok()) return cli::fail(cmd, config.status());

  // Blocked before the channel starts its threads, so that sigwait() below receives them.
  const sigset_t ending = ending_signals();
  pthread_sigmask(SIG_BLOCK, &ending, nullptr);

  Result<BootedFs> booted = boot_nrfs(*config, detected);
  if (!booted.ok()) {
    std::fprintf(stderr, "nrx fs serve: cannot boot NR-FS: %s\n", booted.status().to_string().c_str());
    return kExitFailed;
  }
  auto server = syscall::ChannelServer::start(*booted->nrfs, /*replica=*/0, {.path = *channel});
  if (!server.ok()) {
    std::fprintf(stderr, "nrx fs serve: cannot serve the syscall channel at %s: %s\n", channel->c_str(),
                 server.status().to_string().c_str());
    return kExitFailed;
  }
  std::printf("nrx fs: NR-FS serving the syscall channel at %s (%s)\n", (*server)->path().c_str(),
              describe(*config).c_str());
  std::fflush(stdout);
  int sig = 0;
  while (sigwait(&ending, &sig) != 0) {
  }
  const uint64_t served = (*server)->requests_served();
  server->reset();
  std::printf("nrx fs: stopped on signal %d after %" PRIu64 " requests\n", sig, served);
  return 0;
}

}  // namespace

int run_fs(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kFsUsage, args.empty() ? stderr : stdout);
    return args.empty() ? kExitBadInput : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "mount") return run_mount(rest);
  if (args[0] == "serve") return run_serve(rest);
  std::fprintf(stderr, "nrx fs: unknown command '%s' (see 'nrx fs --help')\n", args[0].c_str());
  return kExitBadInput;
}

}  // namespace nrx::tools
