// One process of the multi-process CNR test (cnr_multiprocess_test.cc): attaches to the CNR
// group's logs (one coherent ShmLog per /dev/shm region, --logs) and to its scan order (a
// SharedScanOrder region, --order; or, with --local-order, a LocalScanOrder of its own: the bug
// the shared order fixes), registers its own ConcurrentReplica of nr::ConcurrentHashMap
// (HashMapLogMapper: a key's ops on log key mod logs, every scan on all logs), meets the other
// workers, runs a seeded mix of put/get/remove and Size/RangeSum/Clear scans on several threads
// while recording each operation's invoke and response time (CLOCK_MONOTONIC, shared by all
// processes), then keeps applying until every worker is done, syncs, and writes its history, its
// replica's digest and counters to --out.
//
// Replica ids must be equal on every log (CnrGroup::make_replica), so workers register in turn:
// worker I waits until the control region's |registered| count is I. The same count, reaching
// --workers, is the start barrier (every replica starts from the empty map at index 0).
//
// An "idle tick" thread does what an idle kernel core does for its replica (kernel/fs
// FileSystem::advance): recover_orphan() (a scan whose issuer died), nudge() on every log, and a
// heartbeat on every ShmLog (fencing lease). Across processes it is needed for progress: the
// lagging-replica hook cannot reach another process's replica, and all threads of a process may
// wait where nothing completes an orphan (a combiner waiting in place at it, a write posted
// behind that combiner).
//
// Crash mode, --die-at-scan N --die-log L [--die-kind clear|size] [--die-after-reserve]: the N-th
// scan this process issues (made a Clear or a Size) dies while the worker holds the shared scan
// lock, after the scan entered logs 0..L-1 and before it entered log L (1 <= L < logs): the log
// type is a thin forwarding wrapper around ShmLog (HookedShmLog) whose append hook raises SIGKILL
// there; with --die-after-reserve the ShmLog reserves log L's slot first and dies without
// publishing it (crash_in_append_for_testing). Such a worker streams its history to --out as it
// goes (each line flushed: SIGKILL-proof): before an operation "i <thread> <op> <key> <value>
// <hi> <invoke_ns>", after it "r " + the operation line below; right before dying
// "dying <scan_id> <log>". An "i" without its "r" is pending: it may or may not have taken effect.
//
// --one-scan: register (in turn, as --index), wait until the control region's |go| is set, issue
// one Size scan, write "scanned <has> <value>" to --out and exit (the scan-id conflict test).
//
// Output (text): "summary" and key=value counters (digest, size, tail<i>, scans_executed,
// orphans_completed, take_overs, fenced, orphan_seen_ns), then one line per operation:
// "<thread> <op> <key> <value> <hi> <has_result> <result> <invoke_ns> <response_ns>" with op
// 0 put, 1 get, 2 remove, 3 size, 4 range_sum (key = lo, hi), 5 clear.
// On failure: "error <status>" and a non-zero exit code (see kExit*).
#include <signal.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/host.h"
#include "kernel/nr/cnr.h"
#include "kernel/nr/ds/concurrent_hashmap.h"
#include "kernel/nr/scan_order.h"
#include "logs/shm/shm_log.h"
#include "tests/logs/shm_test_region.h"

namespace {

using nrx::logs::ShmLog;
using nrx::logs::testing::MappedRegion;
using Map = nrx::nr::ConcurrentHashMap;

constexpr int kExitOk = 0;
constexpr int kExitUsage = 2;
constexpr int kExitSetup = 3;     // mapping, attach, group or registration failed
constexpr int kExitOpFailed = 4;  // an operation returned an error
constexpr int kExitBarrier = 5;   // the other workers never arrived / finished

// The control region: counters on their own lines (the test zero-fills it).
struct Control {
  alignas(128) uint64_t registered;  // workers registered so far (also the start barrier)
  alignas(128) uint64_t done;        // workers done with their operations
  alignas(128) uint64_t go;          // --one-scan: set by the test
  // The pid of the worker that will SIGKILL itself (0: none). The survivors' final barrier counts
  // only themselves (--done-target), so they also wait for its death: on a loaded machine it may
  // still be appending when they finish, and a survivor that digests then sees earlier tails.
  alignas(128) uint64_t crashing_pid;
  alignas(128) uint64_t fenced;  // survivors past their fence_dead of the crash worker
};

// A coherent ShmLog behind a forwarding Log, with a hook that sees every batch before it is
// appended (the crash mode's trigger). Everything else is the ShmLog's, call for call.
class HookedShmLog final : public nrx::logs::Log {
 public:
  using BeforeAppend = std::function<void(HookedShmLog&, nrx::logs::ReplicaId, nrx::logs::Batch)>;

  HookedShmLog(std::unique_ptr<ShmLog> inner, const BeforeAppend* hook) : inner_(std::move(inner)), hook_(hook) {}

  ShmLog& inner() const { return *inner_; }

  const nrx::logs::LogOptions& options() const override { return inner_->options(); }
  nrx::Result<nrx::logs::ReplicaId> register_replica() override { return inner_->register_replica(); }
  nrx::Result<nrx::logs::LogIndex> append(nrx::logs::ReplicaId replica, nrx::logs::Batch batch,
                                          nrx::logs::EntryVisitor apply_own) override {
    if (*hook_) (*hook_)(*this, replica, batch);
    return inner_->append(replica, batch, apply_own);
  }
  nrx::Result<nrx::logs::LogIndex> exec(nrx::logs::ReplicaId replica, nrx::logs::EntryVisitor visitor) override {
    return inner_->exec(replica, visitor);
  }
  nrx::Result<nrx::logs::LogIndex> exec_while(nrx::logs::ReplicaId replica,
                                              nrx::logs::StoppingVisitor visitor) override {
    return inner_->exec_while(replica, visitor);
  }
  nrx::logs::LogIndex tail() const override { return inner_->tail(); }
  nrx::logs::LogIndex ctail() const override { return inner_->ctail(); }
  nrx::logs::LogIndex head() const override { return inner_->head(); }
  nrx::Result<nrx::logs::LogIndex> ltail(nrx::logs::ReplicaId replica) const override {
    return inner_->ltail(replica);
  }
  bool is_synced_for_reads(nrx::logs::ReplicaId replica, nrx::logs::LogIndex ctail) const override {
    return inner_->is_synced_for_reads(replica, ctail);
  }
  nrx::Result<nrx::logs::PayloadRef> payload_put(std::span<const std::byte> data) override {
    return inner_->payload_put(data);
  }
  nrx::Result<std::span<const std::byte>> payload_get(nrx::logs::PayloadRef ref) const override {
    return inner_->payload_get(ref);
  }
  nrx::Status payload_release(nrx::logs::ReplicaId replica, nrx::logs::PayloadRef ref) override {
    return inner_->payload_release(replica, ref);
  }
  uint64_t payloads_live() const override { return inner_->payloads_live(); }

 private:
  std::unique_ptr<ShmLog> inner_;
  const BeforeAppend* hook_;  // the worker's, outlives every log
};

using Group = nrx::nr::CnrGroup<Map, nrx::nr::HashMapLogMapper, HookedShmLog>;
using Rep = Group::Replica;
using Entry = Group::Entry;

enum OpCode : uint8_t { kPut = 0, kGet = 1, kRemove = 2, kSize = 3, kRangeSum = 4, kClear = 5 };

struct Args {
  std::vector<std::string> logs;
  std::string order;
  std::string control;
  std::string out;
  uint64_t cluster = 0;
  uint32_t workers = 1;
  uint32_t index = 0;
  uint32_t threads = 2;
  uint32_t ops = 1000;
  uint64_t seed = 1;
  uint32_t keys = 8;
  uint32_t scan_pct = 8;  // of all ops: size, range sum and clear in 3:3:2
  uint32_t full_timeout_ms = 20000;
  uint32_t barrier_timeout_ms = 30000;
  uint32_t lease_ms = 1000;
  uint32_t lock_timeout_ms = 20000;  // the shared scan lock's
  uint32_t done_target = 0;  // 0: --workers
  bool local_order = false;
  bool one_scan = false;
  uint64_t die_at_scan = 0;  // 0: never
  uint32_t die_log = 1;
  uint8_t die_kind = kClear;
  bool die_after_reserve = false;
};

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string p;
  while (std::getline(ss, p, sep)) {
    if (!p.empty()) parts.push_back(p);
  }
  return parts;
}

bool parse(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--local-order") {
      a->local_order = true;
      continue;
    }
    if (arg == "--one-scan") {
      a->one_scan = true;
      continue;
    }
    if (arg == "--die-after-reserve") {
      a->die_after_reserve = true;
      continue;
    }
    if (i + 1 >= argc) return false;
    const std::string v = argv[++i];
    const uint64_t n = std::strtoull(v.c_str(), nullptr, 0);
    if (arg == "--logs") {
      a->logs = split(v, ',');
    } else if (arg == "--order") {
      a->order = v;
    } else if (arg == "--control") {
      a->control = v;
    } else if (arg == "--out") {
      a->out = v;
    } else if (arg == "--cluster") {
      a->cluster = n;
    } else if (arg == "--workers") {
      a->workers = static_cast<uint32_t>(n);
    } else if (arg == "--index") {
      a->index = static_cast<uint32_t>(n);
    } else if (arg == "--threads") {
      a->threads = static_cast<uint32_t>(n);
    } else if (arg == "--ops") {
      a->ops = static_cast<uint32_t>(n);
    } else if (arg == "--seed") {
      a->seed = n;
    } else if (arg == "--keys") {
      a->keys = static_cast<uint32_t>(n);
    } else if (arg == "--scan-pct") {
      a->scan_pct = static_cast<uint32_t>(n);
    } else if (arg == "--full-timeout-ms") {
      a->full_timeout_ms = static_cast<uint32_t>(n);
    } else if (arg == "--barrier-timeout-ms") {
      a->barrier_timeout_ms = static_cast<uint32_t>(n);
    } else if (arg == "--lease-ms") {
      a->lease_ms = static_cast<uint32_t>(n);
    } else if (arg == "--lock-timeout-ms") {
      a->lock_timeout_ms = static_cast<uint32_t>(n);
    } else if (arg == "--done-target") {
      a->done_target = static_cast<uint32_t>(n);
    } else if (arg == "--die-at-scan") {
      a->die_at_scan = n;
    } else if (arg == "--die-log") {
      a->die_log = static_cast<uint32_t>(n);
    } else if (arg == "--die-kind") {
      if (v == "clear") {
        a->die_kind = kClear;
      } else if (v == "size") {
        a->die_kind = kSize;
      } else {
        return false;
      }
    } else {
      return false;
    }
  }
  const bool dies_mid_scan = a->die_at_scan == 0 || (a->die_log >= 1 && a->die_log < a->logs.size());
  return !a->logs.empty() && a->logs.size() <= nrx::nr::kMaxLogs && !a->control.empty() && !a->out.empty() &&
         (a->local_order || !a->order.empty()) && a->threads >= 1 && a->keys >= 1 && a->scan_pct <= 100 &&
         a->workers >= 1 && a->index < a->workers && a->lease_ms >= 1 && dies_mid_scan;
}

int fail(const Args& a, int code, const std::string& what) {
  std::fprintf(stderr, "cnr_shm_worker %u: %s\n", a.index, what.c_str());
  if (FILE* f = std::fopen(a.out.c_str(), "w")) {
    std::fprintf(f, "error %s\n", what.c_str());
    std::fclose(f);
  }
  return code;
}

std::atomic_ref<uint64_t> word(uint64_t& w) { return std::atomic_ref<uint64_t>(w); }

// Polls until |counter| reaches |target| or the deadline passes; |idle| runs between looks.
template <typename Idle>
bool wait_for_count(uint64_t& counter, uint64_t target, uint32_t timeout_ms, Idle idle) {
  const uint64_t deadline = now_ns() + uint64_t{timeout_ms} * 1000000u;
  // acquire: pairs with the other workers' release increments (their registration or appends
  // happened before).
  while (word(counter).load(std::memory_order_acquire) < target) {
    if (now_ns() >= deadline) return false;
    idle();
  }
  return true;
}

struct Record {
  uint32_t thread;
  uint8_t op;
  uint64_t key;  // range_sum: lo
  uint64_t value;
  uint64_t hi;
  std::optional<uint64_t> result;
  uint64_t invoke;
  uint64_t response;
};

std::string record_line(const Record& r) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%u %u %" PRIu64 " %" PRIu64 " %" PRIu64 " %d %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
                r.thread, unsigned{r.op}, r.key, r.value, r.hi, r.result.has_value() ? 1 : 0, r.result.value_or(0),
                r.invoke, r.response);
  return buf;
}

// Set on the thread whose scan is the crash point (its scan entries are the hook's target).
thread_local bool t_doomed = false;

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, &a)) {
    std::fprintf(stderr,
                 "usage: cnr_shm_worker --logs P0,P1,.. (--order PATH | --local-order) --control PATH --out PATH "
                 "[--cluster C] [--workers N --index I] [--threads T] [--ops K] [--seed S] [--keys K] "
                 "[--scan-pct P] [--full-timeout-ms MS] [--barrier-timeout-ms MS] [--lease-ms MS] "
                 "[--lock-timeout-ms MS] [--done-target N] [--one-scan] [--die-at-scan N --die-log L "
                 "[--die-kind clear|size] [--die-after-reserve]]\n");
    return kExitUsage;
  }
  const uint32_t log_count = static_cast<uint32_t>(a.logs.size());
  // A test that dies (an abort, a timeout kill) takes its workers with it: none is left waiting.
  const pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) return fail(a, kExitSetup, "parent gone");

  // Crash mode streams the history (see the header); others write it at the end.
  FILE* stream = nullptr;
  std::mutex stream_mu;
  if (a.die_at_scan != 0) {
    stream = std::fopen(a.out.c_str(), "w");
    if (stream == nullptr) return fail(a, kExitSetup, "cannot write " + a.out);
    std::fprintf(stream, "streaming\n");
    std::fflush(stream);
  }
  auto stream_line = [&](const std::string& line) {
    if (stream == nullptr) return;
    std::lock_guard<std::mutex> lock(stream_mu);
    std::fputs(line.c_str(), stream);
    std::fflush(stream);  // in the kernel's buffer before the next step: SIGKILL-proof
  };

  // The crash point: the doomed thread's own scan entry, about to enter log --die-log.
  nrx::logs::ReplicaId my_id = UINT32_MAX;  // set before any thread runs
  HookedShmLog::BeforeAppend hook;
  if (a.die_at_scan != 0) {
    hook = [&](HookedShmLog& log, nrx::logs::ReplicaId replica, nrx::logs::Batch batch) {
      if (!t_doomed || log.options().log_id != a.die_log || batch.size() != 1 || batch[0].size() != sizeof(Entry)) {
        return;
      }
      Entry e;
      std::memcpy(static_cast<void*>(&e), batch[0].data(), sizeof(Entry));
      if (e.kind == Entry::kWrite || e.issuer_replica != my_id || replica != my_id) return;
      stream_line("dying " + std::to_string(e.scan_id) + " " + std::to_string(a.die_log) + "\n");
      if (a.die_after_reserve) {
        // The next append of this object (this one: our combiner of the log is held) reserves
        // its slot, publishes nothing and raises SIGKILL.
        log.inner().crash_in_append_for_testing(1, 0, /*kill=*/true);
        return;
      }
      raise(SIGKILL);
    };
  }

  // Regions: the logs, the scan order, the control words.
  std::vector<std::shared_ptr<MappedRegion>> log_regions;
  for (const std::string& path : a.logs) {
    nrx::Result<std::shared_ptr<MappedRegion>> r = MappedRegion::open_file(path);
    if (!r.ok()) return fail(a, kExitSetup, r.status().to_string());
    log_regions.push_back(*r);
  }
  nrx::Result<std::shared_ptr<MappedRegion>> control_region = MappedRegion::open_file(a.control);
  if (!control_region.ok()) return fail(a, kExitSetup, control_region.status().to_string());
  if ((*control_region)->bytes().size() < sizeof(Control)) return fail(a, kExitSetup, "control region too small");
  auto* control = reinterpret_cast<Control*>((*control_region)->bytes().data());

  std::shared_ptr<MappedRegion> order_region;
  std::unique_ptr<nrx::nr::ScanOrder> order;
  nrx::nr::SharedScanOrder* shared_order = nullptr;
  if (a.local_order) {
    order = std::make_unique<nrx::nr::LocalScanOrder>();
  } else {
    nrx::Result<std::shared_ptr<MappedRegion>> r = MappedRegion::open_file(a.order);
    if (!r.ok()) return fail(a, kExitSetup, r.status().to_string());
    order_region = *r;
    auto so = nrx::nr::SharedScanOrder::attach(
        order_region->bytes(),
        {.cluster_id = a.cluster, .lock_timeout = std::chrono::milliseconds(a.lock_timeout_ms)});
    if (!so.ok()) return fail(a, kExitSetup, "scan order: " + so.status().to_string());
    shared_order = so->get();
    order = std::move(so).value();
  }

  nrx::logs::LogOptions options;
  options.full_timeout = std::chrono::milliseconds(a.full_timeout_ms);
  auto make_log = [&](const nrx::logs::LogOptions& o) -> nrx::Result<std::unique_ptr<HookedShmLog>> {
    nrx::logs::ShmAttachOptions at;
    at.cluster_id = a.cluster;
    at.full_timeout = o.full_timeout;
    at.on_lagging = o.on_lagging;  // the group's nudge: helps this process's replica only
    at.keep_alive = log_regions[o.log_id];
    at.lease = std::chrono::milliseconds(a.lease_ms);
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<ShmLog> log, ShmLog::attach(log_regions[o.log_id]->bytes(), at));
    // The hook names the log by the header's id: region i must hold log i.
    if (log->options().log_id != o.log_id) {
      return nrx::Status::failed_precondition("region " + std::to_string(o.log_id) + " holds log " +
                                              std::to_string(log->options().log_id));
    }
    return std::make_unique<HookedShmLog>(std::move(log), &hook);
  };
  auto group = Group::create(log_count, options, make_log, nrx::nr::HashMapLogMapper{}, std::move(order));
  if (!group.ok()) return fail(a, kExitSetup, "group: " + group.status().to_string());

  // Register in turn (equal ids on every log), then wait for everyone (the start barrier).
  if (!wait_for_count(control->registered, a.index, a.barrier_timeout_ms, [] { std::this_thread::yield(); })) {
    return fail(a, kExitBarrier, "the workers before this one never registered");
  }
  auto replica = (*group)->make_replica(nrx::nr::ReplicaOptions{a.threads});
  if (!replica.ok()) return fail(a, kExitSetup, "replica: " + replica.status().to_string());
  Rep& rep = **replica;
  my_id = rep.id();
  // release: our registration is visible before the count says so.
  // relaxed: ordered before the registered count below by its release.
  if (a.die_at_scan != 0) word(control->crashing_pid).store(static_cast<uint64_t>(getpid()), std::memory_order_relaxed);
  word(control->registered).fetch_add(1, std::memory_order_release);

  if (a.one_scan) {
    if (!wait_for_count(control->go, 1, a.barrier_timeout_ms, [] { std::this_thread::yield(); })) {
      return fail(a, kExitBarrier, "the test never said go");
    }
    auto token = rep.register_thread();
    if (!token.ok()) return fail(a, kExitSetup, "register_thread: " + token.status().to_string());
    auto r = rep.execute_scan({Map::ScanOp::kSize, 0, 0}, *token);
    if (!r.ok()) return fail(a, kExitOpFailed, "scan: " + r.status().to_string());
    FILE* f = std::fopen(a.out.c_str(), "w");
    if (f == nullptr) return fail(a, kExitSetup, "cannot write " + a.out);
    std::fprintf(f, "scanned %d %" PRIu64 "\n", r->has_value() ? 1 : 0, r->value_or(0));
    return std::fclose(f) == 0 ? kExitOk : kExitSetup;
  }

  // The idle tick (see the header). Also notes when this replica first completed an orphan.
  std::atomic<bool> stop_tick{false};
  std::atomic<uint64_t> orphan_seen_ns{0};
  std::thread ticker([&] {
    // relaxed: a stop flag; join() orders everything the ticker did before main goes on.
    while (!stop_tick.load(std::memory_order_relaxed)) {
      rep.recover_orphan();
      for (uint32_t li = 0; li < log_count; ++li) {
        rep.nudge(li);
        (void)(*group)->log(li).inner().heartbeat();  // fenced: our next operation says so
      }
      if (rep.orphans_completed() != 0 && orphan_seen_ns.load(std::memory_order_relaxed) == 0) {
        orphan_seen_ns.store(now_ns(), std::memory_order_relaxed);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the tick period, not a wait for a condition
    }
  });
  auto stop_ticker = [&] {
    stop_tick.store(true, std::memory_order_relaxed);
    if (ticker.joinable()) ticker.join();
  };

  if (!wait_for_count(control->registered, a.workers, a.barrier_timeout_ms, [] { std::this_thread::yield(); })) {
    stop_ticker();
    return fail(a, kExitBarrier, "the other workers never registered");
  }

  std::vector<std::vector<Record>> records(a.threads);
  std::vector<std::string> errors(a.threads);
  std::atomic<uint64_t> scans_issued{0};
  {
    std::vector<std::thread> threads;
    for (uint32_t t = 0; t < a.threads; ++t) {
      threads.emplace_back([&, t] {
        nrx::Result<nrx::nr::ThreadToken> token = rep.register_thread();
        if (!token.ok()) {
          errors[t] = "register_thread: " + token.status().to_string();
          return;
        }
        std::mt19937_64 rng(a.seed * 1000003u + a.index * 101u + t);
        const uint32_t global_thread = a.index * a.threads + t;
        records[t].reserve(a.ops);
        // Point ops share what scans leave: put 45, remove 20, get 35 (of the rest, in percent).
        const uint64_t scan_cut = a.scan_pct * 100;  // per 10000
        for (uint32_t i = 0; i < a.ops; ++i) {
          const uint64_t x = rng();
          const uint64_t dice = x % 10000;
          const uint64_t key = (x >> 16) % a.keys;
          // Unique values: (thread, op) identifies every put, so the checker is sharp.
          const uint64_t value = (uint64_t{global_thread} << 32) | (i + 1);
          Record r{global_thread, kGet, key, 0, 0, std::nullopt, 0, 0};
          if (dice < scan_cut) {
            const uint64_t which = (x >> 40) % 8;
            r.op = which < 3 ? kSize : which < 6 ? kRangeSum : kClear;
            r.key = 0;
            if (r.op == kRangeSum) {
              r.key = (x >> 24) % a.keys;
              r.hi = r.key + (x >> 32) % (a.keys / 2 + 1);
            }
            if (a.die_at_scan != 0 && scans_issued.fetch_add(1, std::memory_order_relaxed) + 1 == a.die_at_scan) {
              r.op = a.die_kind;
              r.key = 0;
              r.hi = 0;
              t_doomed = true;
            }
          } else {
            const uint64_t point = (dice - scan_cut) * 100 / (10000 - scan_cut);
            r.op = point < 45 ? kPut : point < 65 ? kRemove : kGet;
            if (r.op == kPut) r.value = value;
          }
          // The invoke stamp precedes the streamed line, so it precedes the operation.
          r.invoke = now_ns();
          if (stream != nullptr) {
            stream_line("i " + std::to_string(r.thread) + " " + std::to_string(r.op) + " " + std::to_string(r.key) +
                        " " + std::to_string(r.value) + " " + std::to_string(r.hi) + " " + std::to_string(r.invoke) +
                        "\n");
          }
          nrx::Result<Map::Response> res{Map::Response{}};
          switch (r.op) {
            case kPut:
              res = rep.execute_mut({Map::WriteOp::kPut, key, value}, *token);
              break;
            case kRemove:
              res = rep.execute_mut({Map::WriteOp::kRemove, key, 0}, *token);
              break;
            case kGet:
              res = rep.execute({Map::ReadOp::kGet, key}, *token);
              break;
            case kSize:
              res = rep.execute_scan({Map::ScanOp::kSize, 0, 0}, *token);
              break;
            case kRangeSum:
              res = rep.execute_scan({Map::ScanOp::kRangeSum, r.key, r.hi}, *token);
              break;
            default:
              res = rep.execute_scan_mut({Map::ScanOp::kClear, 0, 0}, *token);
              break;
          }
          r.response = now_ns();
          if (!res.ok()) {
            errors[t] = "op " + std::to_string(r.op) + ": " + res.status().to_string();
            return;
          }
          r.result = *res;
          records[t].push_back(r);
          if (stream != nullptr) stream_line("r " + record_line(r));
        }
      });
    }
    for (std::thread& th : threads) th.join();
  }
  for (const std::string& e : errors) {
    if (!e.empty()) {
      stop_ticker();
      return fail(a, kExitOpFailed, e);
    }
  }

  // Done; keep applying until every worker is (one may wait for our replica to reach a scan).
  // release: every append of ours happened before the count says we are done.
  word(control->done).fetch_add(1, std::memory_order_release);
  const uint32_t done_target = a.done_target != 0 ? a.done_target : a.workers;
  if (!wait_for_count(control->done, done_target, a.barrier_timeout_ms, [&rep] {
        rep.sync();
        std::this_thread::yield();
      })) {
    stop_ticker();
    return fail(a, kExitBarrier, "the other workers never finished");
  }
  // Published before the crash worker's registered count, which our start barrier acquired.
  const uint64_t crashing = word(control->crashing_pid).load(std::memory_order_relaxed);
  if (crashing != 0 && crashing != static_cast<uint64_t>(getpid())) {
    const uint64_t deadline = now_ns() + uint64_t{a.barrier_timeout_ms} * 1000000u;
    while (!nrx::pid_gone(crashing)) {
      if (now_ns() >= deadline) {
        stop_ticker();
        return fail(a, kExitBarrier, "the crash worker never died");
      }
      rep.sync();  // it may wait for our replica to reach a scan before its fatal append
      std::this_thread::yield();
    }
    // Fence it now (its pid is gone): had it died while we still worked, a full log would have
    // made us; once per log, by whichever survivor gets there first.
    for (uint32_t li = 0; li < log_count; ++li) {
      (void)(*group)->log(li).inner().fence_dead(std::chrono::milliseconds(a.lease_ms));
    }
    // No survivor exits before every survivor has fenced: an exited survivor's pid is gone too,
    // and a later fence_dead would fence it as well.
    word(control->fenced).fetch_add(1, std::memory_order_release);
    if (!wait_for_count(control->fenced, done_target, a.barrier_timeout_ms, [&rep] {
          rep.sync();
          std::this_thread::yield();
        })) {
      stop_ticker();
      return fail(a, kExitBarrier, "the other survivors never fenced the crash worker");
    }
  }
  rep.sync();  // everything every worker appended is below the tails now
  stop_ticker();
  rep.sync();

  uint64_t fenced = 0;
  for (uint32_t li = 0; li < log_count; ++li) fenced += (*group)->log(li).inner().fenced_count();
  std::string summary = "summary digest=" + std::to_string(rep.inspect([](const Map& m) { return m.digest(); })) +
                        " size=" +
                        std::to_string(rep.inspect([](const Map& m) {
                          return m.dispatch_scan({Map::ScanOp::kSize, 0, 0}).value_or(0);
                        })) +
                        " scans_executed=" + std::to_string(rep.scans_executed()) +
                        " orphans_completed=" + std::to_string(rep.orphans_completed()) +
                        " take_overs=" + std::to_string(shared_order != nullptr ? shared_order->take_overs() : 0) +
                        " fenced=" + std::to_string(fenced) +
                        " orphan_seen_ns=" + std::to_string(orphan_seen_ns.load(std::memory_order_relaxed));
  for (uint32_t li = 0; li < log_count; ++li) {
    summary += " tail" + std::to_string(li) + "=" + std::to_string((*group)->log(li).tail());
  }
  FILE* f = std::fopen(a.out.c_str(), "w");
  if (f == nullptr) return fail(a, kExitSetup, "cannot write " + a.out);
  std::fprintf(f, "%s\n", summary.c_str());
  for (const auto& per_thread : records) {
    for (const Record& r : per_thread) std::fputs(record_line(r).c_str(), f);
  }
  if (std::fclose(f) != 0) return fail(a, kExitSetup, "cannot write " + a.out);
  return kExitOk;
}
