// nrx::boot::Kernel: the single-box nrx kernel assembled (DESIGN 1 and 4; NrOS paper sections 4.4
// and 4.5): physical memory with one pool per (possibly emulated) NUMA node; one replica per node of
// every subsystem (the process table on NR, NR-FS on CNR, and each process's NR-vMem address
// space); kernel cores as threads pinned to their node's CPUs, each with a mailbox; processes
// created in two stages from ELF64 images and run by the cores they hold.
//
// Kernel cores (executors). Each core thread loops over its mailbox:
//   Run(process, thread)  run the process's program on this core (attaching the core to the
//                         process's address space: it then takes part in TLB shootdowns);
//   Stop(process)         acknowledge that the process no longer runs here (the exit protocol);
//   a nudge flag          advance this node's replicas (below).
// With nothing to do for a tick (1 ms), a core advances its node's replicas of every subsystem:
// idle cores keep their replica from holding back the logs' heads.
//
// Log garbage collection (paper section 4.5): every log's lagging-replica hook, run by an appender
// that finds the log full, sets the nudge flag of one core of the lagging replica's node (round
// robin) and wakes it; the core advances its replicas at its next syscall or in its idle loop. The
// groups' own hooks also apply the lagging replica from the appender's thread (try_sync), so a node
// whose cores are all busy still cannot block the others.
//
// Processes. spawn() runs stage 1 of the loader (proc/loader.h: parse, allocate and fill the
// writable frames, outside NR), the process table's replicated Create (the pid and the one load
// offset every replica agrees on), stage 2 (per-replica copies of the read-only segments, the
// shared writable frames, the stack: replicated address-space ops), and the replicated AllocCore
// for one core on each requested node (over-subscription is an error: a core runs one process).
// Exit (a program calls exit(), its last core returns, or kill()): the process is marked exiting
// (its calls get ESRCH), a Stop message goes to each of its other cores and the exiting side
// waits for every acknowledgement; then the address space's replicas are compared (digest per
// replica) and the replicated Exit removes the process and frees its cores on every replica; last,
// its memory is freed.
//
// Thread safety: spawn, wait, kill, processes, mappings, console_syscall, digests and stats are safe
// from any thread that is not a kernel core (they serialise on the console); cores run programs.
//
//   auto kernel = Kernel::create({.topology = Topology::detect().emulate(2).value()}).value();
//   Pid pid = kernel->spawn(*find_program("fsbench"), image, {}).value();
//   ProcessReport r = kernel->wait(pid).value();          // r.status, r.vmem_digests
//   ReplicaDigests d = kernel->digests();                  // d.equal()
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "kernel/boot/sys.h"
#include "kernel/boot/topology.h"
#include "kernel/mem/memory.h"
#include "kernel/proc/process_table.h"
#include "kernel/syscall/channel.h"
#include "kernel/syscall/nrx_syscall.h"
#include "kernel/vmem/address_space.h"
#include "transport/region.h"
#include "transport/region_directory.h"

namespace nrx::boot {

using Pid = uint64_t;

// Where the kernel's shared logs live (the process table's and NR-FS's; each process's address
// space keeps a ring log of its own: a process runs on one machine).
enum class LogBackend : uint8_t {
  kRing,  // in this process (logs/ring): the single-host kernel
  kShm,   // in shared-memory regions (logs/shm): several kernel processes, each a "machine",
          // share the process table and NR-FS (emulated CXL shared memory)
  kRdma,  // over RDMA (logs/rdma): machines without shared memory share the process table and
          // NR-FS, each log mirrored on every machine (libibverbs; soft-RoCE in the QEMU cluster)
};

// kShm: everything shared lives in ONE region (transport::Region), carved into named windows by a
// transport::RegionDirectory: the process table's log "proc", NR-FS's logs "fs0".."fsN-1" and its
// scan order "fsscan" (nr::SharedScanOrder, which orders NR-FS's namespace operations across the
// processes). |region| is a /dev/shm file (machine 0 creates it, of |region_bytes|, sparse), an
// ivshmem BAR (/sys/bus/pci/devices/BDF/resource2) or a device-dax device (/dev/daxX.Y), which
// machine 0 formats. Every machine's replicas share the process table (pids, cores) and NR-FS.
// The kernel that creates them is machine 0; others attach as machines 1..machines-1, each with the
// same number of nodes; machine m's node n is node m * nodes + n of the shared process table.
// Attaching works only before the cluster's first operation (there is no state transfer yet):
// a log that already holds entries is refused.
// |noncoherent|: the region's memory gives no atomic read-modify-write across machines (CXL
// 2.0-style sharing, QEMU's type-3 device): the logs run in logs/shm's noncoherent mode (machine 0
// runs a sequencer thread per log; its death ends the cluster), and the scan order is a
// nr::BakeryScanOrder (machine numbers below its kMaxParticipants). Every machine must agree.
struct ShmPlacement {
  std::string region;        // the shared region's path, e.g. /dev/shm/nrx
  bool attach = false;       // join regions another kernel created (else create them)
  uint32_t machine = 0;      // this kernel's machine number
  uint32_t machines = 1;     // kernels sharing the regions
  uint64_t cluster_id = 1;   // must match between them
  bool noncoherent = false;  // see above
  uint64_t region_bytes = uint64_t{512} << 20;  // machine 0, a /dev/shm file: its size (sparse)
  // Machines 1..: how long to wait for the region to appear and machine 0 to seal its directory.
  std::chrono::nanoseconds join_timeout = std::chrono::seconds(60);
  // Data-plane liveness: another machine's replica whose heartbeat on a shared log stays unchanged
  // this long is fenced (logs/shm ShmOptions::lease), and a scan-lock holder on another machine
  // is presumed dead after twice this, at least 10 s (nr::SharedScanOrder's remote lease). A machine's kernel
  // heartbeats from every operation and from its idle cores; a VM that QEMU stalls longer than
  // this is fenced. Under a controller, its lease (cluster/controller.h).
  std::chrono::nanoseconds lease = std::chrono::seconds(2);
};

// The shared region of a ShmPlacement, mapped, and its directory: machine 0 (attach false) creates
// or takes the region and formats the directory (seal it when every window is in place); the
// others wait up to join_timeout for the region and the seal. Errors: transport::Region's and
// transport::RegionDirectory's (kFailedPrecondition: another cluster's region).
struct SharedRegion {
  std::shared_ptr<transport::Region> region;
  std::optional<transport::RegionDirectory> directory;  // set on success
};
Result<SharedRegion> open_shared_region(const ShmPlacement& placement);

// kRdma: the process table's log "proc" and NR-FS's logs "fs0".."fsN-1" are logs::RdmaLog objects
// (a mirror of each log on every machine; machine 0 sequences them), and NR-FS's scans are ordered
// by a nr::BakeryScanOrder whose region "fsscan" is mirrored on every machine with RDMA WRITEs
// (transport::verbs::Mirror): each machine writes its own block and pushes it to the others.
// Connection data travels through |exchange| (the cluster's control plane: cluster::Agent), called
// once per log and for "fsscan", in the same order on every machine; machine m's node n is node
// m * nodes + n of the shared process table, as with kShm. Every machine boots at the same time
// (no state transfer yet). Machine 0's death ends the cluster (it holds the logs' tails).
struct RdmaPlacement {
  uint32_t machine = 0;    // this kernel's machine number (0 sequences the logs)
  uint32_t machines = 1;   // kernels sharing the logs (1..16)
  std::string device;      // the RDMA device, e.g. "rxe0" (empty: the only one)
  uint64_t cluster_id = 1;  // the scan order's; must match between machines
  // Sends |to[j]| to machine j (this machine's own entry empty) and returns what every machine j
  // sent to this one ([j]), once all did; |name| is "proc", "fs0".., or "fsscan". Unused when
  // machines == 1 (a loopback connection).
  std::function<Result<std::vector<std::string>>(const std::string& name, std::vector<std::string> to)> exchange;
  // A scan-lock holder on another machine is presumed dead after twice this (at least 10 s).
  std::chrono::nanoseconds lease = std::chrono::seconds(2);
  std::chrono::nanoseconds rdma_timeout = std::chrono::seconds(10);  // a verb without completion
};
// Each RDMA log's memory is registered (pinned) and holds the whole log plus, for NR-FS, a payload
// arena of 2 * log_slots slots of 4 KiB per machine: keep KernelOptions::log_slots small with
// kRdma (kRdmaLogSlots: about 8.5 MiB per NR-FS log with 3 machines).
inline constexpr uint32_t kRdmaLogSlots = 256;

struct KernelOptions {
  Topology topology = Topology::detect();  // the nodes to boot on (detected, or emulated)
  uint32_t cores_per_node = 0;             // kernel cores per node; 0: the node's CPU count
  uint64_t pool_bytes = 256ull << 20;      // physical memory per node (a multiple of 2 MiB)
  uint32_t fs_logs = 4;                    // NR-FS's CNR logs
  uint32_t log_slots = 4096;               // per log (a power of two)
  bool pin = true;                         // pin core threads to their node's CPUs
  LogBackend log = LogBackend::kRing;      // where the process table's and NR-FS's logs live
  ShmPlacement shm = {};                   // log == kShm
  RdmaPlacement rdma = {};                 // log == kRdma
};

struct SpawnOptions {
  std::vector<uint32_t> nodes;  // one core on each of these nodes; empty: one on every node
  ProgramArgs args;
};

// Counters summed over the kernel cores.
struct KernelStats {
  uint64_t fs_calls = 0;           // NR-FS system calls
  uint64_t vmem_calls = 0;         // mmap, munmap, mprotect
  uint64_t proc_calls = 0;         // getpid, exit
  uint64_t call_errors = 0;        // calls that returned -errno
  uint64_t mmu_accesses = 0;       // loads and stores through the MMU
  uint64_t shootdowns_sent = 0;    // by exited processes' address spaces
  uint64_t processes_spawned = 0;
  uint64_t processes_exited = 0;
  uint64_t nudges_sent = 0;        // lagging-replica hook calls that flagged a core
  uint64_t nudges_handled = 0;
  uint64_t idle_advances = 0;      // idle ticks that advanced replicas
};

struct ProcessReport {
  Pid pid = 0;
  std::string name;
  int status = 0;                      // the exit status (137: killed)
  std::vector<uint32_t> cores;         // the kernel cores it held
  uint64_t load_offset = 0;            // agreed by the process table (PIE); 0 otherwise
  uint64_t entry = 0;                  // with the load offset
  std::vector<uint64_t> vmem_digests;  // its address space, per replica, at exit
  bool vmem_equal = false;             // all replicas agreed (and passed check_consistency)
  uint64_t mappings = 0;               // at exit
  uint64_t shootdowns = 0;             // sent by its unmaps and protects
  double seconds = 0;                  // from spawn to exit
  std::string error;                   // a kernel-side failure during exit, if any
};

// Where a kernel log stands: its tail and the lowest ltail of this kernel's replicas on it
// (tail - ltail is how far this machine lags).
struct LogPosition {
  std::string name;  // "proc", "fs0", ...
  uint64_t tail = 0;
  uint64_t ltail = 0;
};

// Per-replica digests of each subsystem (index = replica = node).
struct ReplicaDigests {
  std::vector<uint64_t> proc;
  std::vector<uint64_t> fs;
  std::vector<uint64_t> vmem;  // over every process that ran (at exit) and every live one (now)
  bool equal() const;
};

class Kernel {
 public:
  // Boots: memory, replicas, core threads (started and registered before this returns).
  // Errors: kInvalidArgument (no nodes, cores_per_node * nodes above the process table's limit,
  // log_slots not a power of two; kShm: no region, machine >= machines); kShm: the region's
  // errors (kAlreadyExists... see transport::Region), kFailedPrecondition (attaching to a log
  // that already holds entries); memory, log and replica errors.
  static Result<std::unique_ptr<Kernel>> create(const KernelOptions& options);
  // Kills every live process, stops and joins the cores.
  ~Kernel();
  Kernel(const Kernel&) = delete;
  Kernel& operator=(const Kernel&) = delete;

  const Topology& topology() const;
  uint32_t nodes() const;  // this kernel's (local) nodes
  // kShm, kRdma: replicas registered on the shared process-table log by every machine (this one's
  // included); kRing: nodes(). A demo waits until all machines have joined before it starts.
  uint32_t registered_replicas() const;
  // The process table's node number of local node 0 (machine * nodes; 0 for kRing).
  uint32_t first_node() const;
  // The process table's and NR-FS's logs (cluster status: positions and lag). Any thread.
  std::vector<LogPosition> log_positions() const;
  // kRdma: machine |machine| was fenced by the cluster (it died or its link broke): every shared
  // log stops writing to it and lets its replicas go (logs::RdmaLog::fence_machine; machine 0
  // also resolves the slots it left unwritten). Other backends: nothing to do (logs/shm fences by
  // its own lease). Idempotent. Errors: kUnavailable (machine 0: the sequencer is not survived),
  // verbs' errors.
  Status fence_machine(uint32_t machine);
  // kRdma: the machines some shared log lost its link to (to be reported: they must be fenced).
  std::vector<uint32_t> unreachable_machines() const;
  // Processes that exited, as the (shared) process table counts them: every machine's.
  uint64_t exited_in_table();
  uint32_t cores_per_node() const;
  const mem::Memory& memory() const;

  // Creates a process running |program| from the ELF64 file |image| (kept alive by the caller until
  // spawn returns). Errors: the loader's (kInvalidArgument for a bad ELF file); kInvalidArgument (a
  // node that does not exist, twice the same node); kResourceExhausted (no free core on a node, no
  // memory); log errors. On error nothing of the process remains.
  Result<Pid> spawn(const Program& program, std::span<const std::byte> image, const SpawnOptions& options);
  // Waits until |pid| has exited; returns its report (once: the kernel then forgets it).
  // Errors: kNotFound (no such process, or already waited for).
  Result<ProcessReport> wait(Pid pid);
  // Stops |pid| (exit status 137) and waits for it. Errors: as wait.
  Result<ProcessReport> kill(Pid pid);

  // The replicated process table (replica 0), sorted by pid.
  std::vector<proc::ProcessInfo> processes();
  // The mappings of live process |pid| (replica 0). Errors: kNotFound.
  Result<std::vector<vmem::Mapping>> mappings(Pid pid);
  // Lets other Linux processes reach this kernel's NR-FS: the shared-memory system-call channel at
  // |path| (libnrx, kernel/syscall/libnrx.h), served through replica |replica|. Destroy the server
  // before the kernel. Errors: ChannelServer::start's (kInvalidArgument, kAlreadyExists,
  // kResourceExhausted when the replica has no thread slots left for its threads); kUnavailable
  // with LogBackend::kShm (the channel serves ring-log NR-FS only, for now).
  Result<std::unique_ptr<syscall::ChannelServer>> serve_channel(const std::string& path, uint32_t replica = 0);
  // One NR-FS system call from the console (replica 0); the process calls are ENOSYS here.
  void console_syscall(const nrx_request& request, std::span<std::byte> data, nrx_response& response);
  // Brings every replica up to date and digests it. Call when no program is running (a running one
  // changes state between the replicas' digests).
  ReplicaDigests digests();
  KernelStats stats() const;
  // "fs: 3 logs ...": one line per subsystem describing its replicas.
  std::string describe() const;

  struct Impl;  // kernel.cc

 private:
  explicit Kernel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nrx::boot
