#include "kernel/boot/kernel.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <latch>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include "base/mutex.h"
#include "base/spin.h"
#include "kernel/fs/fs.h"
#include "kernel/fs/fs_impl.h"
#include "kernel/mem/ncache.h"
#include "kernel/nr/replica.h"
#include "kernel/proc/loader.h"
#include "kernel/syscall/syscalls.h"
#include "kernel/vmem/vspace.h"
#include "logs/rdma/rdma_log.h"
#include "logs/ring/ring_log.h"
#include "logs/shm/shm_log.h"
#include "transport/region.h"
#include "transport/region_directory.h"
#include "transport/verbs/mirror.h"

namespace nrx::boot {
namespace {

// A process runs on one machine: its address space's log is always a local ring.
using VspaceLog = logs::RingLog;
using KernelVspace = vmem::Vspace<VspaceLog>;

constexpr auto kIdleTick = std::chrono::milliseconds(1);
constexpr int kKilledStatus = 137;

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

// The bakery's memory over RDMA (kRdma's scan order): every machine holds a copy of the region;
// our own words are pushed to the others with posted WRITEs, the fence waits for them, and reads
// are local. A peer whose link broke is skipped by the mirror (it is dead: the bakery skips its
// ticket by its lease).
class MirrorMedium final : public nr::BakeryMedium {
 public:
  explicit MirrorMedium(std::shared_ptr<transport::verbs::Mirror> mirror) : mirror_(std::move(mirror)) {}
  void written(const void* p, size_t n) override {
    (void)mirror_->publish(static_cast<size_t>(static_cast<const std::byte*>(p) - mirror_->bytes().data()), n);
  }
  void to_read(const void*, size_t) override {}
  void store_load_fence() override { (void)mirror_->fence(); }

 private:
  std::shared_ptr<transport::verbs::Mirror> mirror_;
};

}  // namespace

bool ReplicaDigests::equal() const {
  auto same = [](const std::vector<uint64_t>& v) {
    return std::all_of(v.begin(), v.end(), [&](uint64_t d) { return d == v.front(); });
  };
  return same(proc) && same(fs) && same(vmem);
}

// The process table's replicas on this kernel's nodes, over the chosen backend. One virtual call per
// table operation (spawn, exit, core allocation, digests): the backend is picked once, at boot, and
// everything under the call binds statically (DESIGN 3.4).
class TablePort {
 public:
  virtual ~TablePort() = default;
  virtual Result<nr::ThreadToken> register_thread(uint32_t node) = 0;
  virtual Result<proc::ProcessTable::Response> execute_mut(uint32_t node, const proc::ProcessTable::WriteOp& op,
                                                           nr::ThreadToken token) = 0;
  virtual proc::ProcessTable::Response execute(uint32_t node, const proc::ProcessTable::ReadOp& op,
                                               nr::ThreadToken token) = 0;
  virtual void try_sync(uint32_t node) = 0;
  virtual uint64_t digest(uint32_t node, nr::ThreadToken token) = 0;  // synced to the log first
  virtual uint64_t exited(uint32_t node, nr::ThreadToken token) = 0;  // likewise
  virtual logs::ReplicaId replica_id(uint32_t node) const = 0;
  virtual uint32_t registered_replicas() const = 0;  // by every process sharing the log
  virtual LogPosition position() const = 0;
  virtual Status fence_machine(uint32_t machine) = 0;  // kRdma (see Kernel::fence_machine)
  virtual uint32_t unreachable() const = 0;            // kRdma: machines whose link broke (bits)
};

// kRdma's fencing and link reports on one log; nothing for the other backends (logs/shm fences by
// its own lease).
template <typename L>
Status fence_log_machine(L& log, uint32_t machine) {
  if constexpr (std::is_same_v<L, logs::RdmaLog>) return log.fence_machine(machine);
  return ok_status();
}
template <typename L>
uint32_t log_unreachable(const L& log) {
  if constexpr (std::is_same_v<L, logs::RdmaLog>) return log.unreachable();
  return 0;
}

template <typename L>
class TablePortImpl final : public TablePort {
 public:
  template <typename CreateLog>
  static Result<std::unique_ptr<TablePort>> create(const logs::LogOptions& lo, CreateLog&& create_log,
                                                   uint32_t local_nodes, uint32_t total_nodes, uint32_t cpn) {
    std::unique_ptr<TablePortImpl> t(new TablePortImpl);
    NRX_ASSIGN_OR_RETURN(t->group_, (Group::create(lo, std::forward<CreateLog>(create_log))));
    for (uint32_t n = 0; n < local_nodes; ++n) {
      NRX_RETURN_IF_ERROR(t->group_->add_replica(proc::ProcessTable(total_nodes, cpn), nr::ReplicaOptions{64}).status());
    }
    return std::unique_ptr<TablePort>(std::move(t));
  }
  Result<nr::ThreadToken> register_thread(uint32_t node) override { return group_->replica(node).register_thread(); }
  Result<proc::ProcessTable::Response> execute_mut(uint32_t node, const proc::ProcessTable::WriteOp& op,
                                                   nr::ThreadToken token) override {
    return group_->replica(node).execute_mut(op, token);
  }
  proc::ProcessTable::Response execute(uint32_t node, const proc::ProcessTable::ReadOp& op,
                                       nr::ThreadToken token) override {
    return group_->replica(node).execute(op, token);
  }
  void try_sync(uint32_t node) override {
    (void)group_->replica(node).try_sync();
    // A shared log fences replicas whose heartbeat stops (logs/shm): an idle core's tick is this
    // kernel's heartbeat, well inside the lease.
    if constexpr (requires(L& log) { log.heartbeat(); }) (void)group_->log().heartbeat();
  }
  uint64_t digest(uint32_t node, nr::ThreadToken token) override {
    group_->replica(node).sync();
    return group_->replica(node).inspect(token, [](const proc::ProcessTable& t) { return t.digest(); });
  }
  uint64_t exited(uint32_t node, nr::ThreadToken token) override {
    group_->replica(node).sync();
    return group_->replica(node).inspect(token, [](const proc::ProcessTable& t) { return t.exited(); });
  }
  logs::ReplicaId replica_id(uint32_t node) const override { return group_->replica(node).id(); }
  LogPosition position() const override {
    LogPosition p{"proc", group_->log().tail(), group_->log().tail()};
    for (size_t n = 0; n < group_->size(); ++n) {
      Result<logs::LogIndex> lt = group_->log().ltail(group_->replica(static_cast<uint32_t>(n)).id());
      if (lt.ok()) p.ltail = std::min<uint64_t>(p.ltail, *lt);
    }
    return p;
  }
  Status fence_machine(uint32_t machine) override { return fence_log_machine(group_->log(), machine); }
  uint32_t unreachable() const override { return log_unreachable(group_->log()); }
  uint32_t registered_replicas() const override {
    if constexpr (requires(const L& log) { log.active_replicas(); }) {
      return static_cast<uint32_t>(std::popcount(group_->log().active_replicas()));
    } else {
      return static_cast<uint32_t>(group_->size());
    }
  }

 private:
  using Group = nr::ReplicaGroup<proc::ProcessTable, L>;
  TablePortImpl() = default;
  std::unique_ptr<Group> group_;
};

// NR-FS over the chosen backend: the calls the kernel makes on it (one virtual call per system
// call; NR-FS itself is compiled for the backend).
class FsPort {
 public:
  virtual ~FsPort() = default;
  virtual Result<fs::Handle> attach(uint32_t node) = 0;
  virtual void advance(uint32_t node) = 0;
  virtual uint64_t digest(fs::Handle& h) = 0;
  virtual void execute(fs::Handle& h, const nrx_request& request, std::span<std::byte> data, nrx_response& response,
                       syscall::ProcessCalls* process) = 0;
  virtual uint32_t logs() const = 0;
  virtual LogPosition position(uint32_t log) const = 0;
  virtual Status fence_machine(uint32_t machine) = 0;
  virtual uint32_t unreachable() const = 0;
  virtual Result<std::unique_ptr<syscall::ChannelServer>> serve_channel(const std::string& path, uint32_t replica) = 0;
};

template <typename L>
class FsPortImpl final : public FsPort {
 public:
  explicit FsPortImpl(std::unique_ptr<fs::FileSystem<L>> fs) : fs_(std::move(fs)) {}
  Result<fs::Handle> attach(uint32_t node) override { return fs_->attach(node); }
  void advance(uint32_t node) override { fs_->advance(node); }
  uint64_t digest(fs::Handle& h) override { return fs_->digest(h); }
  void execute(fs::Handle& h, const nrx_request& request, std::span<std::byte> data, nrx_response& response,
               syscall::ProcessCalls* process) override {
    syscall::execute(*fs_, h, request, data, response, process);
  }
  uint32_t logs() const override { return fs_->logs(); }
  LogPosition position(uint32_t log) const override {
    auto [tail, low] = fs_->log_position(log);
    return {"fs" + std::to_string(log), tail, low};
  }
  Status fence_machine(uint32_t machine) override {
    for (uint32_t i = 0; i < fs_->logs(); ++i) NRX_RETURN_IF_ERROR(fence_log_machine(fs_->log(i), machine));
    return ok_status();
  }
  uint32_t unreachable() const override {
    uint32_t u = 0;
    for (uint32_t i = 0; i < fs_->logs(); ++i) u |= log_unreachable(fs_->log(i));
    return u;
  }
  Result<std::unique_ptr<syscall::ChannelServer>> serve_channel(const std::string& path, uint32_t replica) override {
    if constexpr (std::is_same_v<L, logs::RingLog>) {
      return syscall::ChannelServer::start(*fs_, replica, {.path = path});
    } else {
      return Status::unavailable("the syscall channel serves NR-FS on the ring log only (not with --log shm or rdma yet)");
    }
  }

 private:
  std::unique_ptr<fs::FileSystem<L>> fs_;
};

namespace detail {

// A process as the kernel (not the replicated table) keeps it: its address space and who runs it.
struct Process {
  Pid pid = 0;
  std::string name;
  const Program* program = nullptr;
  ProgramArgs args;
  uint64_t load_offset = 0;
  uint64_t entry = 0;
  std::unique_ptr<KernelVspace> vspace;
  // One descheduled Vspace core per replica: the kernel's own access (loading, digests, teardown).
  // kernel_mu serialises their users (spawn, the exit, the console) and the teardown that resets
  // vspace (a null vspace: torn down).
  std::mutex kernel_mu;
  std::vector<KernelVspace::Core*> kernel_cores;
  std::vector<uint32_t> cores;  // the kernel cores it holds, one per thread
  std::chrono::steady_clock::time_point started;

  std::atomic<bool> exiting{false};         // the exit has begun (exactly one side runs it)
  std::atomic<int> exit_requested{-1};      // a status from exit(), or -1
  std::atomic<uint32_t> running{0};         // threads that have not returned yet
  std::atomic<uint64_t> shootdowns{0};

  std::mutex done_mu;
  std::condition_variable done_cv;
  bool done = false;  // guarded by done_mu
  ProcessReport report;  // written before done
};

// A kernel core's mailbox: messages, plus the nudge flag (set by lagging-replica hooks).
class Mailbox {
 public:
  struct Message {
    enum class Kind : uint8_t { kRun, kStop, kShutdown } kind = Kind::kRun;
    std::shared_ptr<Process> process;
    uint32_t thread = 0;
    std::atomic<uint32_t>* ack = nullptr;  // kStop: decremented once done
  };

  void post(Message m) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(m));
    }
    cv_.notify_one();
  }
  // Sets the nudge flag; true if it was not set (the caller counts it as sent).
  bool nudge() {
    // acq_rel: the core's exchange(false) pairs with this; the flag carries no data.
    if (nudged_.exchange(true, std::memory_order_acq_rel)) return false;
    cv_.notify_one();
    return true;
  }
  bool take_nudge() { return nudged_.load(std::memory_order_relaxed) && nudged_.exchange(false, std::memory_order_acq_rel); }
  // Waits up to |tick| for a message; false if none came (or only a nudge).
  bool wait(Message* out, std::chrono::milliseconds tick) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, tick, [&] { return !queue_.empty() || nudged_.load(std::memory_order_relaxed); });
    if (queue_.empty()) return false;
    *out = std::move(queue_.front());
    queue_.pop_front();
    return true;
  }

 private:
  // std::mutex, not base Mutex: the condition variable needs it (the queue is its only state).
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Message> queue_;
  std::atomic<bool> nudged_{false};
};

struct KernelCore {
  uint32_t id = 0;
  uint32_t node = 0;
  std::vector<int> cpus;
  std::thread thread;
  Mailbox mailbox;
  // Registered on the core's own thread, used only there.
  fs::Handle fs_handle;
  nr::ThreadToken table_token{};
  std::unique_ptr<mem::TCache> tcache;
  // Single writer (the core's thread): relaxed.
  std::atomic<uint64_t> fs_calls{0}, vmem_calls{0}, proc_calls{0}, call_errors{0}, mmu{0};
  std::atomic<uint64_t> nudges_handled{0}, idle_advances{0};
};

}  // namespace detail

using detail::KernelCore;
using detail::Mailbox;
using detail::Process;

// Machine 0 creates (a /dev/shm file) or takes (a device-dax device, an ivshmem BAR) the region
// and formats it; the others wait for it to appear and for machine 0 to seal its directory (a VM
// may start before machine 0's).
Result<SharedRegion> open_shared_region(const ShmPlacement& sp) {
  const std::string& path = sp.region;
  if (path.empty()) return Status::invalid_argument("no shared region path");
  const bool dax = path.rfind("/dev/dax", 0) == 0;
  const bool bar = path.rfind("/sys/", 0) == 0 && path.find("/resource") != std::string::npos;
  const auto deadline = std::chrono::steady_clock::now() + sp.join_timeout;
  SharedRegion out;
  for (;;) {
    Result<transport::Region> r = dax   ? transport::Region::attach_dax(path)
                                  : bar ? transport::Region::attach_pci_bar(path)
                                  : sp.attach
                                      ? transport::Region::attach_file(path)
                                      : transport::Region::create_file(path, sp.region_bytes,
                                                                       {.replace_existing = true, .unlink_on_close = true});
    if (r.ok()) {
      out.region = std::make_shared<transport::Region>(std::move(*r));
      break;
    }
    // Not there yet (machine 0 creates it), or half-made (created, not yet sized): wait.
    const bool wait = sp.attach && (r.status().code() == StatusCode::kNotFound ||
                                    r.status().code() == StatusCode::kFailedPrecondition);
    if (!wait || std::chrono::steady_clock::now() >= deadline) return r.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling for the file, with a deadline
  }
  if (sp.attach) {
    const auto left = std::max<std::chrono::nanoseconds>(deadline - std::chrono::steady_clock::now(),
                                                         std::chrono::milliseconds(1));
    NRX_ASSIGN_OR_RETURN(transport::RegionDirectory d,
                         transport::RegionDirectory::open(out.region->bytes(), sp.cluster_id, left));
    out.directory.emplace(d);
  } else {
    NRX_ASSIGN_OR_RETURN(transport::RegionDirectory d,
                         transport::RegionDirectory::format(out.region->bytes(), sp.cluster_id));
    out.directory.emplace(d);
  }
  return out;
}

struct Kernel::Impl {
  KernelOptions options;
  uint32_t nodes = 0;
  uint32_t cores_per_node = 0;
  std::unique_ptr<mem::Memory> memory;
  uint32_t base_node = 0;  // the process table's number of local node 0 (machine * nodes)
  uint32_t base_core = 0;  // ... and of local core 0
  // kShm: which local node a shared log's replica id belongs to (-1: another machine's). Filled
  // at boot, before any core starts, and only read afterwards.
  std::vector<int32_t> node_of_replica_id;
  // kShm: the one shared region and its directory of windows (each log, NR-FS's scan order);
  // declared before the subsystems that use them.
  std::shared_ptr<transport::Region> shm_region;
  std::optional<transport::RegionDirectory> shm_dir;
  std::unique_ptr<TablePort> table;
  std::unique_ptr<FsPort> fs;
  std::vector<std::unique_ptr<KernelCore>> cores;
  std::atomic<uint32_t> nudge_rr{0};
  std::atomic<uint64_t> nudges_sent{0};
  std::atomic<uint64_t> spawned{0}, exited{0}, exited_shootdowns{0};

  // The console: the tokens of a thread that is not a core (spawn, kill, digests, the shell).
  Mutex console_mu;
  std::vector<nr::ThreadToken> console_table NRX_GUARDED_BY(console_mu);  // per replica
  std::vector<fs::Handle> console_fs NRX_GUARDED_BY(console_mu);          // per replica

  // Live processes (for idle advances, wait and kill) and the exited ones not yet waited for.
  Mutex procs_mu;
  std::map<Pid, std::shared_ptr<Process>> live NRX_GUARDED_BY(procs_mu);
  std::map<Pid, std::shared_ptr<Process>> zombies NRX_GUARDED_BY(procs_mu);
  std::vector<uint64_t> vmem_digest_sum NRX_GUARDED_BY(procs_mu);  // per replica, over exited processes

  // The lagging-replica hook of every kernel log: the group's own hook, plus a nudge message to one
  // core of the lagging replica's node (on this machine: another machine's idle cores advance its
  // replicas).
  logs::LaggingReplicaHook nudging_hook(logs::LaggingReplicaHook inner, bool ids_are_nodes) {
    return [this, inner = std::move(inner), ids_are_nodes](uint32_t log_id, logs::ReplicaId r) {
      if (ids_are_nodes) {
        nudge_node(r);
      } else if (r < node_of_replica_id.size() && node_of_replica_id[r] >= 0) {
        nudge_node(static_cast<uint32_t>(node_of_replica_id[r]));
      }
      if (inner) inner(log_id, r);
    };
  }

  // Ring logs (address spaces always; the table and NR-FS with LogBackend::kRing): replica ids are
  // the local nodes, added in order.
  auto ring_log_creator() {
    return [this](const logs::LogOptions& o) {
      logs::LogOptions with = o;
      with.on_lagging = nudging_hook(o.on_lagging, /*ids_are_nodes=*/true);
      return logs::RingLog::create(with);
    };
  }

  Status open_shm_region() {
    NRX_ASSIGN_OR_RETURN(SharedRegion r, open_shared_region(options.shm));
    shm_region = std::move(r.region);
    shm_dir.emplace(*r.directory);
    return ok_status();
  }

  // Machine 0 allocates window |name| of |bytes| in the shared region; the others find it.
  Result<std::span<std::byte>> shm_window(const std::string& name, uint64_t bytes) {
    if (options.shm.attach) return shm_dir->find(name);
    return shm_dir->allocate(name, bytes);
  }

  // Shared-memory logs: window <name><log_id> of the shared region, created (machine 0) or
  // attached.
  auto shm_log_creator(std::string name) {
    return [this, name](const logs::LogOptions& o) -> Result<std::unique_ptr<logs::ShmLog>> {
      const ShmPlacement& sp = options.shm;
      const std::string window = name + (name == "fs" ? std::to_string(o.log_id) : "");
      logs::LaggingReplicaHook hook = nudging_hook(o.on_lagging, /*ids_are_nodes=*/false);
      logs::LogOptions with = o;
      with.on_lagging = hook;
      // Payload slots hold NR-FS write data: one 4 KiB block and a path fit with room to spare.
      const logs::ShmMode mode = sp.noncoherent ? logs::ShmMode::kNoncoherent : logs::ShmMode::kCoherent;
      const logs::ShmOptions so{.mode = mode,
                                .cluster_id = sp.cluster_id,
                                .payload_bytes = uint64_t{with.payload_slots} * 8192,
                                .keep_alive = shm_region,
                                .lease = sp.lease};
      const uint64_t bytes = logs::ShmLog::region_bytes(with, so);
      if (bytes == 0) return Status::invalid_argument("no shm log fits these log options");
      NRX_ASSIGN_OR_RETURN(std::span<std::byte> at, shm_window(window, bytes));
      if (!sp.attach) return logs::ShmLog::create(at, with, so);
      NRX_ASSIGN_OR_RETURN(std::unique_ptr<logs::ShmLog> log,
                           logs::ShmLog::attach(at, {.cluster_id = sp.cluster_id,
                                                     .expected_epoch = 0,
                                                     .mode = mode,
                                                     .client = sp.machine,
                                                     .full_timeout = o.full_timeout,
                                                     .on_lagging = hook,
                                                     .keep_alive = shm_region,
                                                     .lease = sp.lease}));
      if (log->tail() != 0) {
        return Status::failed_precondition("shm log " + window + " already holds " + std::to_string(log->tail()) +
                                           " entries: joining a running cluster needs state transfer, "
                                           "which nrx does not have yet");
      }
      return log;
    };
  }

  // kRdma: connects |c| (an RdmaLog or a Mirror) to every other machine, its endpoints carried by
  // the placement's exchange under |name|.
  template <typename Connectable>
  Status connect_machines(Connectable& c, const std::string& name) {
    const RdmaPlacement& rp = options.rdma;
    std::vector<transport::verbs::Endpoint> from(rp.machines);
    if (rp.machines > 1) {
      if (!rp.exchange) {
        return Status::invalid_argument("--log rdma on " + std::to_string(rp.machines) +
                                        " machines needs a control plane to carry the connection data "
                                        "(nrx node --controller)");
      }
      std::vector<std::string> to(rp.machines);
      for (uint32_t m = 0; m < rp.machines; ++m) {
        if (m != rp.machine) to[m] = c.endpoint(m).to_string();
      }
      NRX_ASSIGN_OR_RETURN(std::vector<std::string> got, rp.exchange(name, std::move(to)));
      if (got.size() != rp.machines) {
        return Status::internal("the exchange of " + name + " returned " + std::to_string(got.size()) +
                                " endpoints for " + std::to_string(rp.machines) + " machines");
      }
      for (uint32_t m = 0; m < rp.machines; ++m) {
        if (m == rp.machine) continue;
        Result<transport::verbs::Endpoint> e = transport::verbs::Endpoint::parse(got[m]);
        if (!e.ok()) return Status::invalid_argument("machine " + std::to_string(m) + "'s endpoint for " + name +
                                                     ": " + e.status().message());
        from[m] = *e;
      }
    }
    return c.connect(from);
  }

  // RDMA logs: log <name><log_id>, a mirror on every machine, connected through the exchange.
  auto rdma_log_creator(std::string name) {
    return [this, name](const logs::LogOptions& o) -> Result<std::unique_ptr<logs::RdmaLog>> {
      const RdmaPlacement& rp = options.rdma;
      const std::string log_name = name + (name == "fs" ? std::to_string(o.log_id) : "");
      logs::LogOptions with = o;
      with.on_lagging = nudging_hook(o.on_lagging, /*ids_are_nodes=*/false);
      // A log's registered memory is pinned, and its payload arena is repeated per machine (the
      // owner's slots and everybody's cache): size it to what the log carries. The process table
      // carries no payloads; NR-FS's are write data of at most one 4 KiB block.
      if (name == "proc") with.payload_slots = 1;
      NRX_ASSIGN_OR_RETURN(std::unique_ptr<logs::RdmaLog> log,
                           logs::RdmaLog::create(with, {.machine = rp.machine,
                                                        .machines = rp.machines,
                                                        .device = {.device = rp.device},
                                                        .payload_bytes = 4096,
                                                        .replica_base = rp.machine * nodes,
                                                        .rdma_timeout = rp.rdma_timeout,
                                                        .hole_grace = rp.lease}));
      NRX_RETURN_IF_ERROR(connect_machines(*log, log_name));
      return log;
    };
  }

  // kRdma: NR-FS's scans are ordered by a bakery on a region mirrored on every machine. Each
  // machine formats its own copy before connecting (the mirror pushes nothing until connected).
  Result<std::unique_ptr<nr::ScanOrder>> rdma_scan_order() {
    const RdmaPlacement& rp = options.rdma;
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<transport::verbs::Mirror> made,
                         transport::verbs::Mirror::create({.machine = rp.machine,
                                                           .machines = rp.machines,
                                                           .bytes = nr::BakeryScanOrder::kRegionBytes,
                                                           .device = {.device = rp.device},
                                                           .timeout = rp.rdma_timeout}));
    std::shared_ptr<transport::verbs::Mirror> mirror = std::move(made);
    nr::SharedScanOrderOptions so{.cluster_id = rp.cluster_id, .participant = rp.machine};
    so.remote_lease = std::max<std::chrono::nanoseconds>(2 * rp.lease, std::chrono::seconds(10));
    NRX_ASSIGN_OR_RETURN(auto order,
                         nr::BakeryScanOrder::create(mirror->bytes(), so, std::make_shared<MirrorMedium>(mirror)));
    NRX_RETURN_IF_ERROR(connect_machines(*mirror, "fsscan"));
    return std::unique_ptr<nr::ScanOrder>(std::move(order));
  }

  // NR-FS's scans are ordered across the kernel processes by a scan order in window "fsscan" of
  // the shared region: a SharedScanOrder, or on noncoherent memory a BakeryScanOrder (one
  // participant per machine).
  Result<std::unique_ptr<nr::ScanOrder>> shm_scan_order() {
    nr::SharedScanOrderOptions so{.cluster_id = options.shm.cluster_id, .participant = options.shm.machine};
    so.remote_lease = std::max<std::chrono::nanoseconds>(2 * options.shm.lease, std::chrono::seconds(10));
    if (options.shm.noncoherent) {
      NRX_ASSIGN_OR_RETURN(std::span<std::byte> at, shm_window("fsscan", nr::BakeryScanOrder::kRegionBytes));
      if (options.shm.attach) {
        NRX_ASSIGN_OR_RETURN(auto order, nr::BakeryScanOrder::attach(at, so));
        return std::unique_ptr<nr::ScanOrder>(std::move(order));
      }
      NRX_ASSIGN_OR_RETURN(auto order, nr::BakeryScanOrder::create(at, so));
      return std::unique_ptr<nr::ScanOrder>(std::move(order));
    }
    NRX_ASSIGN_OR_RETURN(std::span<std::byte> at, shm_window("fsscan", nr::SharedScanOrder::kRegionBytes));
    if (options.shm.attach) {
      NRX_ASSIGN_OR_RETURN(auto order, nr::SharedScanOrder::attach(at, so));
      return std::unique_ptr<nr::ScanOrder>(std::move(order));
    }
    NRX_ASSIGN_OR_RETURN(auto order, nr::SharedScanOrder::create(at, so));
    return std::unique_ptr<nr::ScanOrder>(std::move(order));
  }

  // kShm, kRdma: NR-FS (its logs from make_log("fs"), scans ordered across the machines by
  // |order|) and the process table (make_log("proc")), shared by every machine's replicas.
  template <typename L, typename MakeLog>
  Status boot_shared(fs::FsOptions fo, const logs::LogOptions& lo, uint32_t total_nodes, uint32_t cpn,
                     std::unique_ptr<nr::ScanOrder> order, MakeLog make_log) {
    fo.max_replicas = total_nodes;
    NRX_ASSIGN_OR_RETURN(auto nrfs, fs::FileSystem<L>::create_with(*memory, fo, make_log("fs"), std::move(order)));
    fs = std::make_unique<FsPortImpl<L>>(std::move(nrfs));
    NRX_ASSIGN_OR_RETURN(table, TablePortImpl<L>::create(lo, make_log("proc"), nodes, total_nodes, cpn));
    return ok_status();
  }

  void nudge_node(uint32_t node) {
    if (node >= nodes) return;
    const uint32_t k = nudge_rr.fetch_add(1, std::memory_order_relaxed) % cores_per_node;
    if (cores[node * cores_per_node + k]->mailbox.nudge()) nudges_sent.fetch_add(1, std::memory_order_relaxed);
  }

  // What an idle or nudged core does: advance every subsystem's replica on its node, without
  // blocking (try_sync: if a combiner is busy there, the replica is moving anyway).
  void advance(KernelCore& c) NRX_EXCLUDES(procs_mu) {
    table->try_sync(c.node);
    fs->advance(c.node);
    MutexLock lock(procs_mu);
    for (auto& [pid, p] : live) {
      if (p->vspace) (void)p->vspace->group().replica(c.node).try_sync();
    }
  }

  void core_main(KernelCore& c, std::latch* ready, Status* registered);
  void run_process(KernelCore& c, const std::shared_ptr<Process>& p, uint32_t thread);
  void exit_process(const std::shared_ptr<Process>& p, int status, KernelCore* self);
  Result<proc::ProcessTable::Response> table_write(const proc::ProcessTable::WriteOp& op, KernelCore* self)
      NRX_EXCLUDES(console_mu);
  void teardown(Process& p);
};

// The system calls and MMU of one process on one core.
class CoreSys final : public Sys::Backend, public syscall::ProcessCalls {
 public:
  CoreSys(Kernel::Impl& k, KernelCore& c, Process& p, KernelVspace::Core& vcore)
      : k_(k), c_(c), p_(p), vcore_(vcore) {}

  bool exit_called() const { return exit_status_ >= 0; }
  int exit_status() const { return exit_status_; }

  void syscall(const nrx_request& request, std::span<std::byte> data, nrx_response& response) override {
    // The interrupt check at kernel entry: a nudge asks this core to advance its replicas.
    if (c_.mailbox.take_nudge()) {
      k_.advance(c_);
      c_.nudges_handled.fetch_add(1, std::memory_order_relaxed);
    }
    if (stopping()) {
      response = nrx_response{};
      response.result = -ESRCH;
      c_.call_errors.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    k_.fs->execute(c_.fs_handle, request, data, response, this);
    std::atomic<uint64_t>& counter = request.sysno >= NRX_SYS_MMAP && request.sysno <= NRX_SYS_MPROTECT ? c_.vmem_calls
                                     : request.sysno == NRX_SYS_GETPID || request.sysno == NRX_SYS_EXIT ? c_.proc_calls
                                                                                                        : c_.fs_calls;
    counter.fetch_add(1, std::memory_order_relaxed);
    if (response.result < 0) c_.call_errors.fetch_add(1, std::memory_order_relaxed);
  }

  int64_t access(uint64_t vaddr, std::byte* buf, uint64_t len, bool write) override {
    if (stopping()) return -ESRCH;
    c_.mmu.fetch_add(1, std::memory_order_relaxed);
    while (len > 0) {
      Result<vmem::Walk> w = p_.vspace->translate(vcore_, vaddr, write ? vmem::Access::kWrite : vmem::Access::kRead);
      if (!w.ok()) return -EFAULT;
      const uint64_t page_end = (vaddr | (mem::frame_size(w->page) - 1)) + 1;
      const uint64_t n = std::min(len, page_end - vaddr);
      std::byte* phys = k_.memory->physical().paddr_ptr(w->paddr, n);
      if (phys == nullptr) return -EFAULT;
      if (write) {
        std::memcpy(phys, buf, n);
      } else {
        std::memcpy(buf, phys, n);
      }
      vaddr += n;
      buf += n;
      len -= n;
    }
    return 0;
  }

  // syscall::ProcessCalls
  int64_t getpid() override { return static_cast<int64_t>(p_.pid); }
  int64_t exit(uint32_t status) override {
    exit_status_ = static_cast<int>(status);
    int none = -1;
    // relaxed: the exit itself (after the program returns) synchronises through the exit protocol.
    p_.exit_requested.compare_exchange_strong(none, exit_status_, std::memory_order_relaxed);
    return 0;
  }
  int64_t mmap(uint64_t vaddr, uint64_t length, uint32_t prot) override {
    if (int64_t err = check_range(vaddr, length); err != 0) return err;
    const uint8_t r = rights(prot);
    std::vector<mem::Frame> frames;
    frames.reserve(length / proc::kPageSize);
    uint64_t mapped = 0;
    int64_t result = 0;
    for (; mapped < length; mapped += proc::kPageSize) {
      Result<mem::Frame> f = c_.tcache->allocate(mem::FrameClass::kBase);
      if (!f.ok()) {
        result = -ENOMEM;
        break;
      }
      std::memset(k_.memory->physical().frame_ptr(*f), 0, proc::kPageSize);
      Status st = p_.vspace->map(vcore_, *f, vaddr + mapped, proc::kPageSize, r);
      if (!st.ok()) {
        (void)c_.tcache->free(*f);
        result = st.code() == StatusCode::kAlreadyExists ? -EEXIST : -fs::to_errno(st);
        if (st.code() == StatusCode::kResourceExhausted) result = -ENOMEM;
        break;
      }
    }
    if (result != 0 && mapped > 0) (void)munmap(vaddr, mapped);  // all or nothing
    return result;
  }
  int64_t munmap(uint64_t vaddr, uint64_t length) override {
    if (int64_t err = check_range(vaddr, length); err != 0) return err;
    Result<std::vector<vmem::Mapping>> gone = p_.vspace->unmap(vcore_, vaddr, length);
    if (!gone.ok()) return -fs::to_errno(gone.status());
    // Every core has flushed: the frames may be reused. Per-replica copies belong to the replicas.
    for (const vmem::Mapping& m : *gone) {
      if (m.owned) continue;
      const uint64_t step = mem::frame_size(m.frame.cls);
      for (uint64_t off = 0; off < m.len; off += step) {
        mem::Frame f = m.frame;
        f.offset += off;
        (void)c_.tcache->free(f);
      }
    }
    return 0;
  }
  int64_t mprotect(uint64_t vaddr, uint64_t length, uint32_t prot) override {
    if (int64_t err = check_range(vaddr, length); err != 0) return err;
    Status st = p_.vspace->adjust(vcore_, vaddr, length, rights(prot));
    return st.ok() ? 0 : -fs::to_errno(st);
  }

 private:
  bool stopping() const {
    // relaxed: a hint; the exit protocol's Stop message is what orders the core's last access.
    return p_.exiting.load(std::memory_order_relaxed) || p_.exit_requested.load(std::memory_order_relaxed) >= 0;
  }
  static int64_t check_range(uint64_t vaddr, uint64_t length) {
    if (length == 0 || vaddr % proc::kPageSize != 0 || length % proc::kPageSize != 0) return -EINVAL;
    if (vaddr >= proc::kUserTop || length > proc::kUserTop - vaddr) return -EINVAL;
    return 0;
  }
  static uint8_t rights(uint32_t prot) {
    uint8_t r = vmem::rights::kUser;
    if ((prot & NRX_PROT_WRITE) != 0) r |= vmem::rights::kWrite;
    if ((prot & NRX_PROT_EXEC) != 0) r |= vmem::rights::kExecute;
    return r;
  }

  Kernel::Impl& k_;
  KernelCore& c_;
  Process& p_;
  KernelVspace::Core& vcore_;
  int exit_status_ = -1;
};

void Kernel::Impl::core_main(KernelCore& c, std::latch* ready, Status* registered) {
  if (options.pin) pin_current_thread(c.cpus);
  {
    Result<fs::Handle> h = fs->attach(c.node);
    Result<nr::ThreadToken> t = table->register_thread(c.node);
    if (!h.ok() || !t.ok()) {
      *registered = !h.ok() ? h.status() : t.status();
      ready->count_down();
      return;
    }
    c.fs_handle = *h;
    c.table_token = *t;
    c.tcache = std::make_unique<mem::TCache>(*memory, c.node);
  }
  ready->count_down();
  for (;;) {
    Mailbox::Message m;
    if (!c.mailbox.wait(&m, kIdleTick)) {
      // Idle for a tick, or nudged: advance this node's replicas (NrOS section 4.5).
      if (c.mailbox.take_nudge()) c.nudges_handled.fetch_add(1, std::memory_order_relaxed);
      advance(c);
      c.idle_advances.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    switch (m.kind) {
      case Mailbox::Message::Kind::kRun:
        run_process(c, m.process, m.thread);
        break;
      case Mailbox::Message::Kind::kStop:
        // release: the exiting side's acquire of 0 orders its teardown after this core's last
        // access to the process (its program returned and its Vspace core was descheduled).
        m.ack->fetch_sub(1, std::memory_order_release);
        break;
      case Mailbox::Message::Kind::kShutdown:
        c.tcache.reset();  // drains to the node's NCache
        return;
    }
  }
}

void Kernel::Impl::run_process(KernelCore& c, const std::shared_ptr<Process>& p, uint32_t thread) {
  int status = 0;
  bool exit_called = false;
  if (!p->exiting.load(std::memory_order_acquire)) {
    Result<KernelVspace::Core*> vcore = p->vspace->attach_core(c.node);
    if (!vcore.ok()) {
      status = 1;
    } else {
      CoreSys backend(*this, c, *p, **vcore);
      Sys sys(backend, thread, static_cast<uint32_t>(p->cores.size()), c.node);
      status = p->program->main(sys, p->args) & 0xff;
      p->shootdowns.store(p->vspace->shootdowns_sent(), std::memory_order_relaxed);
      exit_called = backend.exit_called();
      if (exit_called) status = backend.exit_status();
      // The process no longer runs here: no more shootdowns for this core.
      p->vspace->deschedule(**vcore);
    }
  }
  // acq_rel: the last thread to return sees every other thread's work before it runs the exit.
  const bool last = p->running.fetch_sub(1, std::memory_order_acq_rel) == 1;
  if (exit_called || last || status != 0) {
    if (!p->exiting.exchange(true, std::memory_order_acq_rel)) exit_process(p, status, &c);
  }
}

Result<proc::ProcessTable::Response> Kernel::Impl::table_write(const proc::ProcessTable::WriteOp& op,
                                                               KernelCore* self) {
  Result<proc::ProcessTable::Response> r = Status::internal("unset");
  if (self != nullptr) {
    r = table->execute_mut(self->node, op, self->table_token);
  } else {
    MutexLock lock(console_mu);
    r = table->execute_mut(0, op, console_table[0]);
  }
  if (!r.ok()) return r.status();
  if (!r->status.ok()) return r->status;
  return r;
}

void Kernel::Impl::exit_process(const std::shared_ptr<Process>& p, int status, KernelCore* self) {
  // 1. Stop every other core: each acknowledges once the program returned there.
  std::atomic<uint32_t> pending{0};
  for (uint32_t core : p->cores) {
    if (self != nullptr && core == base_core + self->id) continue;
    pending.fetch_add(1, std::memory_order_relaxed);
    cores[core - base_core]->mailbox.post({.kind = Mailbox::Message::Kind::kStop, .process = p, .thread = 0, .ack = &pending});
  }
  SpinWait wait;
  // acquire: pairs with each core's release decrement.
  while (pending.load(std::memory_order_acquire) != 0) {
    if (self != nullptr && self->mailbox.take_nudge()) {
      advance(*self);
      self->nudges_handled.fetch_add(1, std::memory_order_relaxed);
    }
    wait.pause();
  }
  ProcessReport& rep = p->report;
  rep.pid = p->pid;
  rep.name = p->name;
  rep.status = status;
  rep.cores = p->cores;
  rep.load_offset = p->load_offset;
  rep.entry = p->entry;
  // 2. Nobody runs it now: compare its address space's replicas.
  std::unique_lock<std::mutex> kernel_lock(p->kernel_mu);
  rep.vmem_equal = true;
  for (KernelVspace::Core* kc : p->kernel_cores) {
    std::string why;
    const auto [digest, consistent, mappings] = p->vspace->inspect(*kc, [&](const vmem::AddressSpace& as) {
      return std::tuple<uint64_t, bool, uint64_t>{as.digest(), as.check_consistency(&why), as.mapping_count()};
    });
    rep.vmem_digests.push_back(digest);
    rep.mappings = mappings;
    if (!consistent) {
      rep.vmem_equal = false;
      rep.error = "address space replica inconsistent: " + why;
    }
  }
  for (uint64_t d : rep.vmem_digests) rep.vmem_equal = rep.vmem_equal && d == rep.vmem_digests.front();
  rep.shootdowns = p->vspace->shootdowns_sent();
  // 3. The replicated Exit: the process leaves every replica's table, its cores are free again.
  Result<proc::ProcessTable::Response> gone = table_write(proc::ProcessTable::exit_op(p->pid, status), self);
  if (!gone.ok() && rep.error.empty()) rep.error = "process table exit: " + gone.status().to_string();
  // 4. Its memory.
  {
    MutexLock lock(procs_mu);
    for (size_t r = 0; r < rep.vmem_digests.size() && r < vmem_digest_sum.size(); ++r) {
      vmem_digest_sum[r] = mix(vmem_digest_sum[r], mix(p->pid, rep.vmem_digests[r]));
    }
    live.erase(p->pid);
    zombies[p->pid] = p;
  }
  exited_shootdowns.fetch_add(rep.shootdowns, std::memory_order_relaxed);
  teardown(*p);
  kernel_lock.unlock();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - p->started).count();
  exited.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(p->done_mu);
    p->done = true;
  }
  p->done_cv.notify_all();
}

// Frees a process's memory once nothing runs it: the shared frames (writable segments, stack, mmap)
// here; the per-replica copies and page tables go with the address space's replicas.
void Kernel::Impl::teardown(Process& p) {
  if (!p.vspace) return;
  if (!p.kernel_cores.empty()) {
    std::vector<vmem::Mapping> maps = p.vspace->inspect(*p.kernel_cores.front(), [](const vmem::AddressSpace& as) {
      return as.mappings();
    });
    for (const vmem::Mapping& m : maps) {
      if (m.owned) continue;
      const uint64_t step = mem::frame_size(m.frame.cls);
      for (uint64_t off = 0; off < m.len; off += step) {
        mem::Frame f = m.frame;
        f.offset += off;
        (void)memory->ncache(f.pool).free(f);
      }
    }
  }
  p.kernel_cores.clear();
  p.vspace.reset();
}

Result<std::unique_ptr<Kernel>> Kernel::create(const KernelOptions& options) {
  if (options.topology.nodes.empty()) return Status::invalid_argument("no NUMA nodes to boot on");
  if (options.log_slots < 2 || (options.log_slots & (options.log_slots - 1)) != 0) {
    return Status::invalid_argument("log_slots must be a power of two >= 2");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->nodes = static_cast<uint32_t>(options.topology.nodes.size());
  uint32_t cpn = options.cores_per_node;
  if (cpn == 0) {
    cpn = 1;
    for (const Node& n : options.topology.nodes) cpn = std::max<uint32_t>(cpn, static_cast<uint32_t>(n.cpus.size()));
  }
  impl->cores_per_node = cpn;
  if (uint64_t{cpn} * impl->nodes > proc::kMaxCores) {
    return Status::invalid_argument("at most " + std::to_string(proc::kMaxCores) + " kernel cores in all");
  }
  if (cpn > 60) return Status::invalid_argument("at most 60 kernel cores per node");
  const bool shm = options.log == LogBackend::kShm;
  const bool rdma = options.log == LogBackend::kRdma;
  const uint32_t machines = shm ? options.shm.machines : rdma ? options.rdma.machines : 1;
  const uint32_t machine = shm ? options.shm.machine : rdma ? options.rdma.machine : 0;
  if (rdma && (machines == 0 || machine >= machines || machines > nr::BakeryScanOrder::kMaxParticipants)) {
    return Status::invalid_argument("machine " + std::to_string(machine) + " of " + std::to_string(machines) +
                                    " does not exist (--log rdma: 1.." +
                                    std::to_string(nr::BakeryScanOrder::kMaxParticipants) + " machines)");
  }
  if (shm) {
    if (options.shm.region.empty()) return Status::invalid_argument("--log shm needs a region path");
    if (machines == 0 || options.shm.machine >= machines) {
      return Status::invalid_argument("machine " + std::to_string(options.shm.machine) + " of " +
                                      std::to_string(machines) + " does not exist");
    }
    if (options.shm.noncoherent && machines > nr::BakeryScanOrder::kMaxParticipants) {
      return Status::invalid_argument("at most " + std::to_string(nr::BakeryScanOrder::kMaxParticipants) +
                                      " machines share noncoherent memory");
    }
  }
  const uint32_t total_nodes = impl->nodes * machines;
  if (uint64_t{cpn} * total_nodes > proc::kMaxCores || total_nodes > 64) {
    return Status::invalid_argument("at most 64 nodes and " + std::to_string(proc::kMaxCores) +
                                    " kernel cores over every machine");
  }
  impl->base_node = machine * impl->nodes;
  impl->base_core = impl->base_node * cpn;

  mem::MemoryOptions mo{.nodes = impl->nodes, .pool_bytes = options.pool_bytes};
  if (options.topology.numa_available) {
    for (const Node& n : options.topology.nodes) mo.physical_nodes.push_back(n.physical_node);
  }
  NRX_ASSIGN_OR_RETURN(impl->memory, mem::Memory::create(mo));

  std::vector<uint32_t> pools;
  for (uint32_t n = 0; n < impl->nodes; ++n) pools.push_back(n);
  logs::LogOptions lo{.entry_size = sizeof(proc::ProcessTable::WriteOp), .slot_count = options.log_slots};
  lo.max_replicas = std::max<uint32_t>(logs::kMinMaxReplicas, total_nodes);
  fs::FsOptions fo{.logs = options.fs_logs, .replica_pools = pools, .log_slots = options.log_slots};
  if (rdma) {
    // Over RDMA: the scan order's mirror first, then NR-FS's logs, then the table's (every machine
    // connects them in this order).
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<nr::ScanOrder> order, impl->rdma_scan_order());
    NRX_RETURN_IF_ERROR(impl->boot_shared<logs::RdmaLog>(fo, lo, total_nodes, cpn, std::move(order),
                                                          [&](std::string n) { return impl->rdma_log_creator(n); }));
  } else if (!shm) {
    NRX_ASSIGN_OR_RETURN(impl->table, TablePortImpl<logs::RingLog>::create(lo, impl->ring_log_creator(), impl->nodes,
                                                                           total_nodes, cpn));
    NRX_ASSIGN_OR_RETURN(auto nrfs,
                         fs::FileSystem<logs::RingLog>::create_with(*impl->memory, fo, impl->ring_log_creator()));
    impl->fs = std::make_unique<FsPortImpl<logs::RingLog>>(std::move(nrfs));
  } else {
    // Every machine's replicas share NR-FS's logs. Its namespace operations are CNR scans, ordered
    // across the kernel processes by a scan order in shared memory (nr::SharedScanOrder).
    NRX_RETURN_IF_ERROR(impl->open_shm_region());
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<nr::ScanOrder> order, impl->shm_scan_order());
    NRX_RETURN_IF_ERROR(impl->boot_shared<logs::ShmLog>(fo, lo, total_nodes, cpn, std::move(order),
                                                         [&](std::string n) { return impl->shm_log_creator(n); }));
    if (!options.shm.attach) impl->shm_dir->seal();  // every window is in place: others may attach
  }
  // Replica ids on the shared logs -> local nodes (the hooks' nudges). NR-FS's replicas register on
  // each log in the same order as the table's, so one map serves every log of this kernel.
  impl->node_of_replica_id.assign(64, -1);
  for (uint32_t n = 0; n < impl->nodes; ++n) {
    const logs::ReplicaId id = impl->table->replica_id(n);
    if (id < impl->node_of_replica_id.size()) impl->node_of_replica_id[id] = static_cast<int32_t>(n);
  }

  {
    MutexLock lock(impl->console_mu);
    for (uint32_t n = 0; n < impl->nodes; ++n) {
      NRX_ASSIGN_OR_RETURN(nr::ThreadToken t, impl->table->register_thread(n));
      impl->console_table.push_back(t);
      NRX_ASSIGN_OR_RETURN(fs::Handle h, impl->fs->attach(n));
      impl->console_fs.push_back(h);
    }
  }
  {
    MutexLock lock(impl->procs_mu);
    impl->vmem_digest_sum.assign(impl->nodes, 0);
  }

  std::unique_ptr<Kernel> kernel(new Kernel(std::move(impl)));
  Impl& k = *kernel->impl_;
  const uint32_t total = k.nodes * cpn;
  std::latch ready(total);
  std::vector<Status> registered(total);
  for (uint32_t i = 0; i < total; ++i) {
    auto c = std::make_unique<KernelCore>();
    c->id = i;
    c->node = i / cpn;
    c->cpus = options.topology.nodes[c->node].cpus;
    k.cores.push_back(std::move(c));
  }
  for (uint32_t i = 0; i < total; ++i) {
    KernelCore* c = k.cores[i].get();
    c->thread = std::thread([&k, c, &ready, &registered, i] { k.core_main(*c, &ready, &registered[i]); });
  }
  ready.wait();
  for (const Status& st : registered) {
    if (!st.ok()) return st;  // the destructor stops the cores that did start
  }
  return kernel;
}

Kernel::Kernel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Kernel::~Kernel() {
  std::vector<Pid> pids;
  {
    MutexLock lock(impl_->procs_mu);
    for (const auto& [pid, p] : impl_->live) pids.push_back(pid);
  }
  for (Pid pid : pids) (void)kill(pid);
  for (auto& c : impl_->cores) c->mailbox.post({.kind = Mailbox::Message::Kind::kShutdown, .process = nullptr, .thread = 0, .ack = nullptr});
  for (auto& c : impl_->cores) {
    if (c->thread.joinable()) c->thread.join();
  }
}

const Topology& Kernel::topology() const { return impl_->options.topology; }
uint32_t Kernel::nodes() const { return impl_->nodes; }
uint32_t Kernel::registered_replicas() const { return impl_->table->registered_replicas(); }
uint32_t Kernel::first_node() const { return impl_->base_node; }
std::vector<LogPosition> Kernel::log_positions() const {
  std::vector<LogPosition> out{impl_->table->position()};
  for (uint32_t i = 0; i < impl_->fs->logs(); ++i) out.push_back(impl_->fs->position(i));
  return out;
}

Status Kernel::fence_machine(uint32_t machine) {
  Impl& k = *impl_;
  if (k.options.log != LogBackend::kRdma) return ok_status();
  NRX_RETURN_IF_ERROR(k.fs->fence_machine(machine));
  return k.table->fence_machine(machine);
}

std::vector<uint32_t> Kernel::unreachable_machines() const {
  uint32_t bits = impl_->table->unreachable() | impl_->fs->unreachable();
  std::vector<uint32_t> out;
  for (; bits != 0; bits &= bits - 1) out.push_back(static_cast<uint32_t>(std::countr_zero(bits)));
  return out;
}

uint64_t Kernel::exited_in_table() {
  MutexLock lock(impl_->console_mu);
  return impl_->table->exited(0, impl_->console_table[0]);
}
uint32_t Kernel::cores_per_node() const { return impl_->cores_per_node; }
const mem::Memory& Kernel::memory() const { return *impl_->memory; }

Result<Pid> Kernel::spawn(const Program& program, std::span<const std::byte> image, const SpawnOptions& options) {
  Impl& k = *impl_;
  std::vector<uint32_t> nodes = options.nodes;
  if (nodes.empty()) {
    for (uint32_t n = 0; n < k.nodes; ++n) nodes.push_back(n);
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i] >= k.nodes) return Status::invalid_argument("node " + std::to_string(nodes[i]) + " does not exist");
    if (std::count(nodes.begin(), nodes.end(), nodes[i]) > 1) {
      return Status::invalid_argument("node " + std::to_string(nodes[i]) + " named twice");
    }
  }
  if (program.main == nullptr || program.name == nullptr) return Status::invalid_argument("a program needs a name and code");
  const uint32_t home = nodes.front();

  // Stage 1, outside NR: parse, writable frames filled from the file.
  NRX_ASSIGN_OR_RETURN(proc::PreparedImage img, proc::prepare_image(image, *k.memory, home));

  auto p = std::make_shared<Process>();
  p->name = program.name;
  p->program = &program;
  p->args = options.args;
  p->started = std::chrono::steady_clock::now();

  // The replicated Create: the pid and the one load offset every replica agrees on.
  Result<proc::ProcessTable::Response> made = k.table_write(
      proc::ProcessTable::create_op(program.name, img.elf.entry(), img.elf.position_independent(), img.span(),
                                       k.base_node + home),
      nullptr);
  if (!made.ok()) {
    proc::release_image(img, *k.memory);
    return made.status();
  }
  p->pid = made->pid;
  p->load_offset = made->load_offset;
  p->entry = img.elf.entry() + made->load_offset;

  auto fail = [&](const Status& st) -> Status {
    proc::release_image(img, *k.memory);
    k.teardown(*p);
    (void)k.table_write(proc::ProcessTable::exit_op(p->pid, kKilledStatus), nullptr);
    return st;
  };

  // The address space: one replica per node, its log nudging like the others.
  vmem::VspaceOptions vo{.replica_pools = {}, .log = {.entry_size = 64, .slot_count = k.options.log_slots},
                         .max_cores_per_replica = 64};
  for (uint32_t n = 0; n < k.nodes; ++n) vo.replica_pools.push_back(n);
  Result<std::unique_ptr<KernelVspace>> vs = KernelVspace::create(*k.memory, vo, k.ring_log_creator());
  if (!vs.ok()) return fail(vs.status());
  p->vspace = std::move(*vs);
  for (uint32_t n = 0; n < k.nodes; ++n) {
    Result<KernelVspace::Core*> kc = p->vspace->attach_core(n);
    if (!kc.ok()) return fail(kc.status());
    p->vspace->deschedule(**kc);
    p->kernel_cores.push_back(*kc);
  }
  {
    MutexLock lock(k.procs_mu);  // idle cores advance its replicas from now on
    k.live[p->pid] = p;
  }
  auto fail_live = [&](const Status& st) -> Status {
    {
      MutexLock lock(k.procs_mu);
      k.live.erase(p->pid);
    }
    return fail(st);
  };
  // Stage 2, replicated: per-replica read-only copies, shared writable frames, the stack. Nobody
  // else can reach the process yet but idle advances (which need no kernel core).
  if (Status st = proc::load_image(*p->vspace, *p->kernel_cores[home], img, made->load_offset); !st.ok()) {
    return fail_live(st);
  }
  // One core on each node; a core runs one process (over-subscription is refused).
  for (uint32_t n : nodes) {
    Result<proc::ProcessTable::Response> core =
        k.table_write(proc::ProcessTable::alloc_core_op(p->pid, k.base_node + n), nullptr);
    if (!core.ok()) {
      return fail_live(Status(core.status().code(), "no core for process " + std::to_string(p->pid) + " on node " +
                                                         std::to_string(n) + ": " + core.status().message()));
    }
    p->cores.push_back(core->core);
  }
  p->running.store(static_cast<uint32_t>(p->cores.size()), std::memory_order_relaxed);
  k.spawned.fetch_add(1, std::memory_order_relaxed);
  for (uint32_t t = 0; t < p->cores.size(); ++t) {
    k.cores[p->cores[t] - k.base_core]->mailbox.post({.kind = Mailbox::Message::Kind::kRun, .process = p, .thread = t, .ack = nullptr});
  }
  return p->pid;
}

Result<ProcessReport> Kernel::wait(Pid pid) {
  std::shared_ptr<Process> p;
  {
    MutexLock lock(impl_->procs_mu);
    if (auto it = impl_->live.find(pid); it != impl_->live.end()) p = it->second;
    if (auto it = impl_->zombies.find(pid); it != impl_->zombies.end()) p = it->second;
  }
  if (!p) return Status::not_found("no process " + std::to_string(pid));
  {
    std::unique_lock<std::mutex> lock(p->done_mu);
    p->done_cv.wait(lock, [&] { return p->done; });
  }
  MutexLock lock(impl_->procs_mu);
  if (impl_->zombies.erase(pid) == 0) return Status::not_found("process " + std::to_string(pid) + " already waited for");
  return p->report;
}

Result<ProcessReport> Kernel::kill(Pid pid) {
  std::shared_ptr<Process> p;
  {
    MutexLock lock(impl_->procs_mu);
    if (auto it = impl_->live.find(pid); it != impl_->live.end()) p = it->second;
  }
  if (p && !p->exiting.exchange(true, std::memory_order_acq_rel)) impl_->exit_process(p, kKilledStatus, nullptr);
  return wait(pid);
}

std::vector<proc::ProcessInfo> Kernel::processes() {
  MutexLock lock(impl_->console_mu);
  return impl_->table->execute(0, proc::ProcessTable::list_op(), impl_->console_table[0]).processes;
}

Result<std::vector<vmem::Mapping>> Kernel::mappings(Pid pid) {
  std::shared_ptr<Process> p;
  {
    MutexLock lock(impl_->procs_mu);
    if (auto it = impl_->live.find(pid); it != impl_->live.end()) p = it->second;
  }
  if (p) {
    std::lock_guard<std::mutex> lock(p->kernel_mu);
    if (p->vspace && !p->exiting.load(std::memory_order_acquire)) {
      return p->vspace->inspect(*p->kernel_cores[0], [](const vmem::AddressSpace& as) { return as.mappings(); });
    }
  }
  return Status::not_found("no live process " + std::to_string(pid));
}

Result<std::unique_ptr<syscall::ChannelServer>> Kernel::serve_channel(const std::string& path, uint32_t replica) {
  return impl_->fs->serve_channel(path, replica);
}

void Kernel::console_syscall(const nrx_request& request, std::span<std::byte> data, nrx_response& response) {
  MutexLock lock(impl_->console_mu);
  impl_->fs->execute(impl_->console_fs[0], request, data, response, nullptr);
}

ReplicaDigests Kernel::digests() {
  Impl& k = *impl_;
  ReplicaDigests d;
  {
    MutexLock lock(k.console_mu);
    for (uint32_t n = 0; n < k.nodes; ++n) {
      d.proc.push_back(k.table->digest(n, k.console_table[n]));
      d.fs.push_back(k.fs->digest(k.console_fs[n]));
    }
  }
  std::vector<std::shared_ptr<Process>> live;
  {
    MutexLock lock(k.procs_mu);
    d.vmem = k.vmem_digest_sum;
    for (const auto& [pid, p] : k.live) live.push_back(p);
  }
  for (const auto& p : live) {
    std::lock_guard<std::mutex> lock(p->kernel_mu);
    if (!p->vspace || p->exiting.load(std::memory_order_acquire)) continue;  // its exit records it
    for (uint32_t n = 0; n < k.nodes; ++n) {
      const uint64_t v = p->vspace->inspect(*p->kernel_cores[n], [](const vmem::AddressSpace& as) { return as.digest(); });
      d.vmem[n] = mix(d.vmem[n], mix(p->pid, v));
    }
  }
  return d;
}

KernelStats Kernel::stats() const {
  const Impl& k = *impl_;
  KernelStats s;
  for (const auto& c : k.cores) {
    s.fs_calls += c->fs_calls.load(std::memory_order_relaxed);
    s.vmem_calls += c->vmem_calls.load(std::memory_order_relaxed);
    s.proc_calls += c->proc_calls.load(std::memory_order_relaxed);
    s.call_errors += c->call_errors.load(std::memory_order_relaxed);
    s.mmu_accesses += c->mmu.load(std::memory_order_relaxed);
    s.nudges_handled += c->nudges_handled.load(std::memory_order_relaxed);
    s.idle_advances += c->idle_advances.load(std::memory_order_relaxed);
  }
  s.shootdowns_sent = k.exited_shootdowns.load(std::memory_order_relaxed);
  s.processes_spawned = k.spawned.load(std::memory_order_relaxed);
  s.processes_exited = k.exited.load(std::memory_order_relaxed);
  s.nudges_sent = k.nudges_sent.load(std::memory_order_relaxed);
  return s;
}

std::string Kernel::describe() const {
  const Impl& k = *impl_;
  const bool shm = k.options.log == LogBackend::kShm;
  const bool rdma = k.options.log == LogBackend::kRdma;
  const std::string replicas = std::to_string(k.nodes) + (k.nodes == 1 ? " replica" : " replicas");
  const std::string slots = std::to_string(k.options.log_slots) + " slots";
  const std::string shared = shm ? " shm log" : rdma ? " RDMA log" : " ring log";
  std::string s;
  s += "memory  " + k.memory->describe() + "\n";
  if (shm) {
    s += "shm     region " + k.options.shm.region + " (" + k.shm_region->describe() + "; " +
         transport::format_bytes(k.shm_dir->used()) + " in " + std::to_string(k.shm_dir->count()) +
         " windows: proc, fs0.., fsscan)" +
         (k.options.shm.noncoherent ? " (noncoherent), machine " : " (coherent), machine ") +
         std::to_string(k.options.shm.machine) + " of " + std::to_string(k.options.shm.machines) + ", nodes " +
         std::to_string(k.base_node) + ".." + std::to_string(k.base_node + k.nodes - 1) + " of the cluster\n";
  }
  if (rdma) {
    const RdmaPlacement& rp = k.options.rdma;
    s += "rdma    device " + (rp.device.empty() ? std::string("(the only one)") : rp.device) + ", machine " +
         std::to_string(rp.machine) + " of " + std::to_string(rp.machines) + " (machine 0 sequences every log), nodes " +
         std::to_string(k.base_node) + ".." + std::to_string(k.base_node + k.nodes - 1) +
         " of the cluster; NR-FS scans ordered by a bakery mirrored on every machine\n";
  }
  s += "proc    process table on NR: " + replicas + " here, 1" + shared + " of " + slots + "; " +
       std::to_string(k.nodes * k.cores_per_node) + " kernel cores (" + std::to_string(k.cores_per_node) +
       " per node)\n";
  s += "fs      NR-FS on CNR: " + replicas + " here, " + std::to_string(k.fs->logs()) +
       shared + "s of " + slots + "\n";
  s += "vmem    NR-vMem: one address space per process, " + replicas +
       " each (x86-64 4-level page tables), 1 ring log of " + slots + "\n";
  return s;
}

}  // namespace nrx::boot
