// `nrx boot`: boots the single-host nrx kernel (kernel/boot/kernel.h) on this machine's NUMA
// topology, or on --nodes emulated nodes, and runs the demo: the built-in programs fsbench,
// mapbench and kv, each as a process loaded from a real ELF image (this executable) with one core
// on every node, so every replica of every subsystem serves calls. It then checks that all replicas
// agree (per-subsystem digests; each address space's replicas at its exit) and prints a summary
// (text, or one JSON object with --json). --interactive opens a small shell on the booted kernel
// instead of the demo. Exit code: 0 when every check passes, 1 when one fails, 2 for bad usage.
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernel/boot/kernel.h"
#include "kernel/boot/programs.h"
#include "kernel/boot/topology.h"
#include "tools/nrx/cli.h"

namespace nrx::tools {

// This executable: the ELF image the built-in programs are loaded from (cluster_cmd.cc uses it too).
Result<std::vector<std::byte>> read_self() {
  std::ifstream in("/proc/self/exe", std::ios::binary);
  if (!in) return Status::not_found("cannot open /proc/self/exe");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(bytes.size());
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

namespace {

using Clock = std::chrono::steady_clock;

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%016" PRIx64, v);
  return b;
}

// "a b" (text) or "\"a\",\"b\"" (JSON strings).
std::string hex_list(const std::vector<uint64_t>& v, bool json) {
  std::string s;
  for (uint64_t d : v) {
    if (!s.empty()) s += json ? "," : " ";
    s += json ? "\"" + hex(d) + "\"" : hex(d);
  }
  return s;
}

std::string list(const std::vector<uint32_t>& v) {
  std::string s;
  for (uint32_t c : v) s += (s.empty() ? "" : ",") + std::to_string(c);
  return s;
}

bool all_equal(const std::vector<uint64_t>& v) {
  for (uint64_t d : v) {
    if (d != v.front()) return false;
  }
  return true;
}


// Seconds from "--duration": a positive decimal number, at most an hour.
Result<double> parse_seconds(const cli::Command& cmd, const char* name, double fallback) {
  std::optional<std::string> v = cmd.get(name);
  if (!v) return fallback;
  char* end = nullptr;
  errno = 0;
  const double d = std::strtod(v->c_str(), &end);
  if (errno != 0 || end == v->c_str() || *end != '\0' || !(d > 0) || d > 3600) {
    return Status::invalid_argument(std::string("--") + name + " must be a number of seconds in (0, 3600], not '" + *v + "'");
  }
  return d;
}

struct Totals {
  std::vector<boot::ProcessReport> reports;
  double seconds = 0;  // wall time of the workload phases
};

void print_report(const boot::ProcessReport& r) {
  std::printf("exit %d in %.2f s; %" PRIu64 " mappings at exit, %" PRIu64 " shootdowns; address space replicas %s\n",
              r.status, r.seconds, r.mappings, r.shootdowns, r.vmem_equal ? "agree" : "DIFFER");
  if (!r.error.empty()) std::printf("           error: %s\n", r.error.c_str());
}

// The interactive shell: commands run against the booted kernel through its system-call API.
int shell(boot::Kernel& kernel, std::span<const std::byte> image, bool json) {
  const char* kHelp =
      "commands:\n"
      "  ls [PATH]              list a directory (NR-FS)\n"
      "  cat PATH               print a file\n"
      "  write PATH TEXT...     create or replace a file with TEXT\n"
      "  mkdir PATH             make a directory\n"
      "  rm PATH                remove a file (or an empty directory)\n"
      "  ps                     the replicated process table and core owners\n"
      "  run PROG [SECONDS]     run a built-in program (fsbench, mapbench, kv) on every node and wait\n"
      "  start PROG [SECONDS]   start one in the background (see ps, map, wait, kill)\n"
      "  wait PID | kill PID    wait for / stop a background process\n"
      "  map PID                the mappings of a live process\n"
      "  stats                  system-call counters and per-replica digests\n"
      "  help                   this list\n"
      "  exit                   check the replicas, print the summary and leave\n";
  std::vector<std::byte> data(NRX_DATA_CAPACITY);
  auto call = [&](uint32_t sysno, const std::string& path, nrx_request req = {}) {
    req.sysno = sysno;
    req.path_len = static_cast<uint32_t>(std::min<size_t>(path.size(), NRX_PATH_MAX + 1));
    std::memcpy(data.data(), path.data(), req.path_len);
    nrx_response resp{};
    kernel.console_syscall(req, data, resp);
    return resp;
  };
  auto err = [](int64_t r) { return std::string(std::strerror(static_cast<int>(-r))); };
  std::printf("nrx shell: type 'help' for commands, 'exit' to leave\n");
  std::string line;
  for (;;) {
    std::printf("nrx> ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) {
      std::printf("\n");
      break;
    }
    std::istringstream in(line);
    std::string cmd;
    if (!(in >> cmd)) continue;
    std::string arg;
    in >> arg;
    if (cmd == "exit" || cmd == "quit") break;
    if (cmd == "help") {
      std::fputs(kHelp, stdout);
    } else if (cmd == "ls") {
      if (arg.empty()) arg = "/";
      std::string after;
      for (;;) {
        nrx_request req{};
        req.path2_len = static_cast<uint32_t>(after.size());
        std::memcpy(data.data() + arg.size(), after.data(), after.size());
        nrx_response resp = call(NRX_SYS_READDIR, arg, req);
        if (resp.result < 0) {
          std::printf("ls: %s: %s\n", arg.c_str(), err(resp.result).c_str());
          break;
        }
        size_t pos = 0;
        for (int64_t i = 0; i < resp.result; ++i) {
          nrx_dirent_record rec;
          std::memcpy(&rec, data.data() + pos, sizeof rec);
          after.assign(reinterpret_cast<const char*>(data.data() + pos + sizeof rec), rec.name_len);
          std::printf("%s%s\n", after.c_str(), rec.type == NRX_DT_DIR ? "/" : "");
          pos += rec.record_len;
        }
        if ((resp.flags & NRX_READDIR_MORE) == 0 || resp.result == 0) break;
      }
    } else if (cmd == "cat") {
      nrx_request open{};
      const int64_t ino = call(NRX_SYS_OPEN, arg, open).result;
      if (ino < 0) {
        std::printf("cat: %s: %s\n", arg.c_str(), err(ino).c_str());
        continue;
      }
      for (uint64_t off = 0;;) {
        nrx_request req{};
        req.ino = static_cast<uint64_t>(ino);
        req.offset = off;
        req.length = NRX_MAX_IO;
        req.sysno = NRX_SYS_PREAD;
        nrx_response resp{};
        kernel.console_syscall(req, data, resp);
        if (resp.result <= 0) break;
        std::fwrite(data.data(), 1, static_cast<size_t>(resp.result), stdout);
        off += static_cast<uint64_t>(resp.result);
      }
      std::printf("\n");
    } else if (cmd == "write") {
      std::string text;
      std::getline(in, text);
      if (!text.empty() && text[0] == ' ') text.erase(0, 1);
      nrx_request open{};
      open.flags = NRX_O_CREAT | NRX_O_WRONLY | NRX_O_TRUNC;
      open.mode = 0644;
      const int64_t ino = call(NRX_SYS_OPEN, arg, open).result;
      if (ino < 0) {
        std::printf("write: %s: %s\n", arg.c_str(), err(ino).c_str());
        continue;
      }
      if (text.empty()) continue;
      nrx_request req{};
      req.sysno = NRX_SYS_PWRITE;
      req.ino = static_cast<uint64_t>(ino);
      req.length = std::min<size_t>(text.size(), NRX_MAX_IO);
      std::memcpy(data.data(), text.data(), req.length);
      nrx_response resp{};
      kernel.console_syscall(req, data, resp);
      if (resp.result < 0) std::printf("write: %s: %s\n", arg.c_str(), err(resp.result).c_str());
    } else if (cmd == "mkdir" || cmd == "rm") {
      nrx_request req{};
      if (cmd == "mkdir") req.mode = 0755;
      int64_t r = call(cmd == "mkdir" ? NRX_SYS_MKDIR : NRX_SYS_UNLINK, arg, req).result;
      if (r == -EISDIR && cmd == "rm") r = call(NRX_SYS_RMDIR, arg).result;
      if (r < 0) std::printf("%s: %s: %s\n", cmd.c_str(), arg.c_str(), err(r).c_str());
    } else if (cmd == "ps") {
      std::printf("  PID  NAME        HOME  CORES  LOAD OFFSET\n");
      for (const proc::ProcessInfo& p : kernel.processes()) {
        std::printf("%5" PRIu64 "  %-10s  %4u  %5u  0x%" PRIx64 "\n", p.pid, p.name, p.home_node, p.cores, p.load_offset);
      }
    } else if (cmd == "run" || cmd == "start") {
      const boot::Program* prog = boot::find_program(arg);
      if (prog == nullptr) {
        std::printf("%s: no program '%s' (fsbench, mapbench, kv)\n", cmd.c_str(), arg.c_str());
        continue;
      }
      double secs = 1.0;
      if (std::string s; in >> s) secs = std::atof(s.c_str());
      if (!(secs > 0) || secs > 3600) {
        std::printf("%s: seconds must be in (0, 3600]\n", cmd.c_str());
        continue;
      }
      boot::SpawnOptions so;
      so.args.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(secs));
      Result<boot::Pid> pid = kernel.spawn(*prog, image, so);
      if (!pid.ok()) {
        std::printf("%s: %s\n", cmd.c_str(), pid.status().to_string().c_str());
        continue;
      }
      std::printf("pid %" PRIu64 "\n", *pid);
      if (cmd == "start") continue;
      Result<boot::ProcessReport> r = kernel.wait(*pid);
      if (r.ok()) print_report(*r);
    } else if (cmd == "wait" || cmd == "kill") {
      const boot::Pid pid = std::strtoull(arg.c_str(), nullptr, 10);
      Result<boot::ProcessReport> r = cmd == "wait" ? kernel.wait(pid) : kernel.kill(pid);
      if (r.ok()) {
        print_report(*r);
      } else {
        std::printf("%s: %s\n", cmd.c_str(), r.status().message().c_str());
      }
    } else if (cmd == "map") {
      Result<std::vector<vmem::Mapping>> maps = kernel.mappings(std::strtoull(arg.c_str(), nullptr, 10));
      if (!maps.ok()) {
        std::printf("map: %s\n", maps.status().message().c_str());
        continue;
      }
      // Adjacent pages with the same rights and kind print as one range.
      for (size_t i = 0; i < maps->size();) {
        const vmem::Mapping& m = (*maps)[i];
        uint64_t end = m.vaddr + m.len;
        size_t j = i + 1;
        while (j < maps->size() && (*maps)[j].vaddr == end && (*maps)[j].rights == m.rights &&
               (*maps)[j].owned == m.owned) {
          end += (*maps)[j].len;
          ++j;
        }
        std::printf("%012" PRIx64 "-%012" PRIx64 " r%c%c %4zu pages  %s\n", m.vaddr, end,
                    (m.rights & vmem::rights::kWrite) ? 'w' : '-', (m.rights & vmem::rights::kExecute) ? 'x' : '-',
                    static_cast<size_t>((end - m.vaddr) / 4096),
                    m.owned ? "per-replica copies (one in each node's memory)" : "shared frames");
        i = j;
      }
    } else if (cmd == "stats") {
      const boot::KernelStats s = kernel.stats();
      std::printf("fs calls %" PRIu64 ", vmem calls %" PRIu64 ", mmu accesses %" PRIu64 ", processes %" PRIu64
                  " spawned / %" PRIu64 " exited, nudges %" PRIu64 " sent / %" PRIu64 " handled\n",
                  s.fs_calls, s.vmem_calls, s.mmu_accesses, s.processes_spawned, s.processes_exited, s.nudges_sent,
                  s.nudges_handled);
      const boot::ReplicaDigests d = kernel.digests();
      std::printf("digests proc %s | fs %s | vmem %s\n", hex_list(d.proc, false).c_str(), hex_list(d.fs, false).c_str(),
                  hex_list(d.vmem, false).c_str());
    } else {
      std::printf("unknown command '%s' (type 'help')\n", cmd.c_str());
    }
  }
  (void)json;
  return 0;
}

}  // namespace

// Polls |done| every 20 ms until it holds or |deadline| passes (a wait for other processes, which
// have no way to wake this one).
template <typename F>
bool wait_until(F&& done, Clock::time_point deadline) {
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// Every machine of a shm cluster runs the same demo (builtin_programs(), each once); the shared
// process table counts exits. Once it has counted every machine's, nobody logs to it any more,
// and every replica, synced, must equal every other. Errors: kDeadlineExceeded.
Status cluster_barrier(boot::Kernel& kernel, uint32_t machines, Clock::time_point deadline) {
  const uint64_t want = uint64_t{machines} * boot::builtin_programs().size();
  if (!wait_until([&] { return kernel.exited_in_table() >= want; }, deadline)) {
    return Status::deadline_exceeded("the other machines did not finish their demos in time");
  }
  return Status::ok_status();
}

int run_kernel(const char* name, const std::vector<std::string>& args) {
  const bool node_cmd = std::string(name) == "node";
  cli::Command cmd(name,
                   node_cmd
                       ? "Start another nrx kernel process on the shared region a `nrx boot --log shm` formats:\n"
                         "another \"machine\" (a process on this host, or a VM sharing an ivshmem or CXL region)\n"
                         "whose replicas join the same process-table and NR-FS logs. Waits up to 60 s for the\n"
                         "region and for machine 0 to finish formatting it. It runs the demo on its own nodes and cores,\n"
                         "waits until every machine is done, and checks that its replicas agree with each other;\n"
                         "compare its digests with the other machines'. Exits 0 when every check passes."
                       : "Boot the nrx kernel on this machine's NUMA topology: one replica per node of the process\n"
                         "table (NR), NR-FS (CNR) and every process's address space (NR-vMem), kernel cores as\n"
                         "pinned threads. Then run the demo: the built-in programs fsbench, mapbench and kv, each a\n"
                         "process loaded from a real ELF image with one core on every node. Checks that all replicas\n"
                         "agree and prints a summary. Exits 0 when every check passes, 1 when one fails.");
  if (node_cmd) {
    cmd.option("attach", "PATH",
               "the shared region `nrx boot --log shm --region PATH` formats: the same file, or this\n"
               "      machine's view of it (an ivshmem BAR resource2 file, a /dev/daxX.Y device) (required)");
    cmd.option("machine", "K", "this kernel's machine number (1..machines-1)", "1");
    cmd.option("machines", "M", "kernel processes sharing the regions", "2");
  }
  cmd.option("nodes", "N", "NUMA nodes (replicas); more than the machine has are emulated", "detected");
  cmd.option("cores-per-node", "C", "kernel cores per node (threads pinned to the node's cpus)", "cpus per node");
  cmd.option("duration", "SECONDS", "how long the demo's programs run in all (a third each)", "3");
  if (!node_cmd) {
    cmd.option("log", "BACKEND",
               "operation-log backend of the process table and NR-FS: ring, shm (shared-memory regions\n"
               "      that `nrx node --attach` processes join) or rdma (RDMA logs on --device; one machine\n"
               "      here, several through `nrx cluster up --log rdma`)",
               "ring");
    cmd.option("device", "NAME", "--log rdma: the RDMA device (e.g. rxe0)", "the only one");
    cmd.option("region", "PATH",
               "--log shm: the shared region: a /dev/shm file (created), or an ivshmem BAR\n"
               "      (/sys/bus/pci/devices/BDF/resource2) or device-dax device (/dev/daxX.Y), formatted",
               "/dev/shm/nrx");
    cmd.option("region-size", "MIB", "--log shm: the size of a /dev/shm region file (sparse)", "512");
    cmd.option("machines", "M", "--log shm: wait for M-1 `nrx node` processes before the demo", "1");
  }
  cmd.option("coherence", "MODE",
             std::string(node_cmd ? "" : "--log shm: ") +
                 "coherent (atomics work across the sharers: one host, ivshmem) or noncoherent\n"
                 "      (CXL 2.0-style, QEMU's type-3 device: no cross-machine atomics; machine 0 sequences\n"
                 "      the logs); every machine must name the same",
             "coherent");
  cmd.option("memory", "MIB", "physical memory per node, in MiB (a multiple of 2)", "256");
  cmd.option("seed", "S", "random seed of the programs", "1");
  cmd.option("channel", "PATH",
             "also serve NR-FS to other Linux processes on the syscall channel at PATH (libnrx)");
  cmd.flag("json", "print the summary as one JSON object instead of text");
  cmd.flag("interactive", "open a shell on the booted kernel instead of running the demo");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }
  const boot::Topology detected = boot::Topology::detect();
  auto nodes = cmd.get_u64("nodes", detected.nodes.size(), 1, 64);
  auto cpn = cmd.get_u64("cores-per-node", 0, 1, 60);
  auto memory_mib = cmd.get_u64("memory", 256, 16, uint64_t{1} << 20);
  auto seed = cmd.get_u64("seed", 1, 0, UINT64_MAX);
  for (const Result<uint64_t>* r : {&nodes, &cpn, &memory_mib, &seed}) {
    if (!r->ok()) return cli::fail(cmd, r->status());
  }
  if (*memory_mib % 2 != 0) return cli::fail(cmd, Status::invalid_argument("--memory must be a multiple of 2 MiB"));
  Result<double> duration = parse_seconds(cmd, "duration", 3.0);
  if (!duration.ok()) return cli::fail(cmd, duration.status());
  const std::string log = node_cmd ? "shm" : cmd.get("log").value_or("ring");
  if (log != "ring" && log != "shm" && log != "rdma") {
    return cli::fail(cmd, Status::invalid_argument("--log must be ring, shm or rdma, not '" + log + "'"));
  }
  boot::ShmPlacement shm;
  if (log == "shm") {
    auto machines = cmd.get_u64("machines", node_cmd ? 2 : 1, node_cmd ? 2 : 1, 64);
    auto machine = cmd.get_u64("machine", node_cmd ? 1 : 0, node_cmd ? 1 : 0, 63);
    if (!machines.ok()) return cli::fail(cmd, machines.status());
    if (!machine.ok()) return cli::fail(cmd, machine.status());
    if (*machine >= *machines) {
      return cli::fail(cmd, Status::invalid_argument("--machine must be below --machines"));
    }
    shm.machines = static_cast<uint32_t>(*machines);
    shm.machine = static_cast<uint32_t>(*machine);
    shm.attach = node_cmd;
    shm.region = cmd.get(node_cmd ? "attach" : "region").value_or(node_cmd ? "" : "/dev/shm/nrx");
    if (!node_cmd) {
      auto mib = cmd.get_u64("region-size", 512, 4, uint64_t{1} << 20);
      if (!mib.ok()) return cli::fail(cmd, mib.status());
      shm.region_bytes = *mib << 20;
    }
    if (shm.region.empty()) return cli::fail(cmd, Status::invalid_argument("--attach PATH is required"));
    const std::string coherence = cmd.get("coherence").value_or("coherent");
    if (coherence != "coherent" && coherence != "noncoherent") {
      return cli::fail(cmd, Status::invalid_argument("--coherence must be coherent or noncoherent, not '" +
                                                     coherence + "'"));
    }
    shm.noncoherent = coherence == "noncoherent";
  } else if (cmd.has("region") || cmd.has("machines") || cmd.has("region-size") || cmd.has("coherence")) {
    return cli::fail(cmd,
                     Status::invalid_argument("--region, --region-size, --machines and --coherence go with --log shm"));
  }
  if (!node_cmd && cmd.has("device") && log != "rdma") {
    return cli::fail(cmd, Status::invalid_argument("--device goes with --log rdma"));
  }
  const bool json = cmd.flag_set("json");
  const bool interactive = cmd.flag_set("interactive");

  boot::Topology topo = detected;
  if (cmd.has("nodes") && *nodes != detected.nodes.size()) {
    auto t = detected.emulate(static_cast<uint32_t>(*nodes));
    if (!t.ok()) return cli::fail(cmd, t.status());
    topo = *t;
  }
  Result<std::vector<std::byte>> image = read_self();
  if (!image.ok()) {
    std::fprintf(stderr, "nrx %s: %s\n", name, image.status().to_string().c_str());
    return 1;
  }
  // Progress goes to stderr with --json (stdout is the JSON object), to stdout otherwise.
  FILE* progress = json ? stderr : stdout;
  const uint32_t steps = interactive ? 2 : 5;
  if (node_cmd) {
    std::fprintf(progress, "nrx node: machine %u of %u on %s\n", shm.machine, shm.machines, shm.region.c_str());
  } else {
    std::fprintf(progress, "nrx boot: the %s node-replicated kernel\n",
                 log == "shm" ? "shared-memory (emulated CXL)" : log == "rdma" ? "RDMA-log" : "single-host");
  }
  std::fprintf(progress, "topology   %s\n", topo.describe().c_str());
  std::fprintf(progress, "[1/%u] booting: memory, replicas, kernel cores ... ", steps);
  std::fflush(progress);
  const Clock::time_point t0 = Clock::now();
  boot::KernelOptions ko{.topology = topo,
                         .cores_per_node = cmd.has("cores-per-node") ? static_cast<uint32_t>(*cpn) : 0,
                         .pool_bytes = *memory_mib << 20};
  ko.log = log == "shm" ? boot::LogBackend::kShm : log == "rdma" ? boot::LogBackend::kRdma : boot::LogBackend::kRing;
  ko.shm = shm;
  if (log == "rdma") {
    ko.rdma.device = cmd.get("device").value_or("");
    ko.log_slots = boot::kRdmaLogSlots;
  }
  Result<std::unique_ptr<boot::Kernel>> made = boot::Kernel::create(ko);
  if (!made.ok()) {
    std::fprintf(progress, "failed\n");
    std::fprintf(stderr, "nrx %s: %s\n", name, made.status().to_string().c_str());
    return 1;
  }
  boot::Kernel& kernel = **made;
  std::fprintf(progress, "done in %.2f s\n", std::chrono::duration<double>(Clock::now() - t0).count());
  if (!json) std::fputs(kernel.describe().c_str(), stdout);
  std::unique_ptr<syscall::ChannelServer> channel;
  if (std::optional<std::string> path = cmd.get("channel")) {
    Result<std::unique_ptr<syscall::ChannelServer>> server = kernel.serve_channel(*path);
    if (!server.ok()) {
      std::fprintf(stderr, "nrx %s: cannot serve the channel: %s\n", name, server.status().to_string().c_str());
      return 1;
    }
    channel = std::move(*server);
    std::fprintf(progress, "channel    %s: other processes reach NR-FS through libnrx (replica 0)\n", path->c_str());
    std::fflush(progress);
  }

  Totals totals;
  bool ok = true;
  std::string first_error;
  auto failed = [&](const std::string& why) {
    if (first_error.empty()) first_error = why;
    ok = false;
  };
  if (shm.machines > 1) {
    // Every machine's replicas must be on the logs before anyone logs (no state transfer yet).
    const uint32_t want = shm.machines * kernel.nodes();
    std::fprintf(progress, "      waiting for %u machines to join (%s) ... ", shm.machines,
                 node_cmd ? "the others" : ("nrx node --attach " + shm.region).c_str());
    std::fflush(progress);
    if (!wait_until([&] { return kernel.registered_replicas() >= want; }, Clock::now() + std::chrono::minutes(5))) {
      std::fprintf(progress, "timed out\n");
      std::fprintf(stderr, "nrx %s: only %u of %u replicas joined within 5 minutes\n", name,
                   kernel.registered_replicas(), want);
      return 1;
    }
    std::fprintf(progress, "all %u replicas joined\n", want);
  }
  const Clock::time_point w0 = Clock::now();
  if (interactive) {
    std::fprintf(progress, "[2/%u] shell\n", steps);
    shell(kernel, *image, json);
  } else {
    uint32_t step = 2;
    for (const boot::Program& prog : boot::builtin_programs()) {
      boot::SpawnOptions so;
      so.args.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(*duration / 3));
      so.args.seed = *seed;
      std::fprintf(progress, "[%u/%u] %-8s ", step++, steps, prog.name);
      std::fflush(progress);
      Result<boot::Pid> pid = kernel.spawn(prog, *image, so);
      if (!pid.ok()) {
        std::fprintf(progress, "cannot start: %s\n", pid.status().to_string().c_str());
        failed(std::string(prog.name) + ": " + pid.status().to_string());
        continue;
      }
      std::fprintf(progress, "pid %" PRIu64 " for %.2f s ... ", *pid, *duration / 3);
      std::fflush(progress);
      Result<boot::ProcessReport> r = kernel.wait(*pid);
      if (!r.ok()) {
        failed(r.status().to_string());
        std::fprintf(progress, "%s\n", r.status().to_string().c_str());
        continue;
      }
      if (json) {
        std::fprintf(progress, "exit %d\n", r->status);
      } else {
        print_report(*r);
      }
      if (r->status != 0) failed(std::string(prog.name) + " exited with status " + std::to_string(r->status));
      if (!r->vmem_equal) failed(std::string(prog.name) + ": address space replicas differ " + r->error);
      totals.reports.push_back(std::move(*r));
    }
  }
  totals.seconds = std::chrono::duration<double>(Clock::now() - w0).count();
  if (shm.machines > 1 && !interactive) {
    std::fprintf(progress, "      waiting for every machine to finish ... ");
    std::fflush(progress);
    Status st = cluster_barrier(kernel, shm.machines, Clock::now() + std::chrono::minutes(5));
    std::fprintf(progress, "%s\n", st.ok() ? "done" : st.to_string().c_str());
    if (!st.ok()) failed(st.to_string());
  }
  std::fprintf(progress, "[%u/%u] checking that every replica agrees ... ", steps, steps);
  std::fflush(progress);
  const boot::ReplicaDigests d = kernel.digests();
  std::fprintf(progress, "%s\n", d.equal() ? "yes" : "NO");
  if (!d.equal()) failed("replica digests differ");
  const boot::KernelStats s = kernel.stats();
  const double secs = std::max(totals.seconds, 1e-9);
  const uint32_t replicas = kernel.nodes();

  if (json) {
    std::printf("{\"topology\":{\"nodes\":%u,\"emulated\":%s,\"cpus\":%zu,\"description\":\"%s\"},", replicas,
                topo.emulated ? "true" : "false", topo.cpu_count(), topo.describe().c_str());
    std::printf("\"replicas\":%u,\"cores\":%u,\"cores_per_node\":%u,\"log\":\"%s\",\"coherence\":\"%s\","
                "\"machine\":%u,\"machines\":%u,\"first_node\":%u,\"seconds\":%.3f,",
                replicas, replicas * kernel.cores_per_node(), kernel.cores_per_node(), log.c_str(),
                shm.noncoherent ? "noncoherent" : "coherent", shm.machine, shm.machines, kernel.first_node(), secs);
    std::printf("\"processes\":[");
    for (size_t i = 0; i < totals.reports.size(); ++i) {
      const boot::ProcessReport& r = totals.reports[i];
      std::printf("%s{\"pid\":%" PRIu64 ",\"name\":\"%s\",\"status\":%d,\"cores\":[%s],\"load_offset\":%" PRIu64
                  ",\"mappings\":%" PRIu64 ",\"shootdowns\":%" PRIu64 ",\"seconds\":%.3f,\"vmem_digests\":[%s],"
                  "\"vmem_equal\":%s}",
                  i ? "," : "", r.pid, r.name.c_str(), r.status, list(r.cores).c_str(), r.load_offset, r.mappings,
                  r.shootdowns, r.seconds, hex_list(r.vmem_digests, true).c_str(), r.vmem_equal ? "true" : "false");
    }
    std::printf("],\"subsystems\":{");
    std::printf("\"proc\":{\"spawned\":%" PRIu64 ",\"exited\":%" PRIu64 ",\"calls\":%" PRIu64
                ",\"digests\":[%s],\"equal\":%s},",
                s.processes_spawned, s.processes_exited, s.proc_calls, hex_list(d.proc, true).c_str(),
                all_equal(d.proc) ? "true" : "false");
    std::printf("\"fs\":{\"calls\":%" PRIu64 ",\"calls_per_s\":%.0f,\"digests\":[%s],\"equal\":%s},", s.fs_calls,
                s.fs_calls / secs, hex_list(d.fs, true).c_str(), all_equal(d.fs) ? "true" : "false");
    std::printf("\"vmem\":{\"calls\":%" PRIu64 ",\"calls_per_s\":%.0f,\"mmu_accesses\":%" PRIu64
                ",\"shootdowns\":%" PRIu64 ",\"digests\":[%s],\"equal\":%s}},",
                s.vmem_calls, s.vmem_calls / secs, s.mmu_accesses, s.shootdowns_sent, hex_list(d.vmem, true).c_str(),
                all_equal(d.vmem) ? "true" : "false");
    std::printf("\"gc\":{\"nudges_sent\":%" PRIu64 ",\"nudges_handled\":%" PRIu64 ",\"idle_advances\":%" PRIu64 "},",
                s.nudges_sent, s.nudges_handled, s.idle_advances);
    std::printf("\"call_errors\":%" PRIu64 ",\"digests_equal\":%s,\"ok\":%s", s.call_errors, d.equal() ? "true" : "false",
                ok ? "true" : "false");
    if (!first_error.empty()) std::printf(",\"error\":\"%s\"", first_error.c_str());
    std::printf("}\n");
    return ok ? 0 : 1;
  }
  std::printf("\nsummary    %u replica%s (one per node), %u kernel cores, %s logs, %.2f s %s\n", replicas,
              replicas == 1 ? "" : "s", replicas * kernel.cores_per_node(), log.c_str(), secs,
              interactive ? "in the shell" : "of programs");
  std::printf("proc       %" PRIu64 " processes spawned, %" PRIu64 " exited (%" PRIu64 " getpid/exit calls)\n",
              s.processes_spawned, s.processes_exited, s.proc_calls);
  std::printf("fs         %" PRIu64 " system calls, %.0f calls/s\n", s.fs_calls, s.fs_calls / secs);
  std::printf("vmem       %" PRIu64 " map/unmap/protect calls (%.0f/s), %" PRIu64 " MMU accesses, %" PRIu64
              " TLB shootdowns\n",
              s.vmem_calls, s.vmem_calls / secs, s.mmu_accesses, s.shootdowns_sent);
  std::printf("log gc     %" PRIu64 " nudges sent, %" PRIu64 " handled; %" PRIu64 " idle advances\n", s.nudges_sent,
              s.nudges_handled, s.idle_advances);
  std::printf("digests    replica  proc              fs                vmem\n");
  for (uint32_t r = 0; r < replicas; ++r) {
    std::printf("           %-7u  %s  %s  %s\n", r, hex(d.proc[r]).c_str(), hex(d.fs[r]).c_str(), hex(d.vmem[r]).c_str());
  }
  std::printf("checks     replicas agree: %s; programs exited 0: %s\n", d.equal() ? "yes" : "NO",
              std::all_of(totals.reports.begin(), totals.reports.end(), [](const auto& r) { return r.status == 0; })
                  ? "yes"
                  : "NO");
  if (!first_error.empty()) std::printf("error      %s\n", first_error.c_str());
  std::printf("result     %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

int run_boot(const std::vector<std::string>& args) { return run_kernel("boot", args); }
int run_node(const std::vector<std::string>& args) { return run_kernel("node", args); }

}  // namespace nrx::tools
