// CNR (kernel/nr/cnr.h) across real processes: the group's 4 logs are coherent ShmLogs in /dev/shm
// regions and its scans are ordered by a SharedScanOrder in a fifth region (kernel/nr/
// scan_order.h). Worker processes (cnr_shm_worker.cc, started with posix_spawn) each run a
// ConcurrentReplica of nr::ConcurrentHashMap over those logs. Cases:
//  - WorkersAreLinearizableAndAgree: three workers, two threads each, a seeded mix of point ops and
//    about 8% scans (size, range sum, clear). The merged history (CLOCK_MONOTONIC stamps, shared
//    by all processes) must be linearizable against MapWithScansModel (tests/kernel/nr/
//    cnr_model.h), every replica must end with the same digest and log tails, and the shared
//    order must have handed out exactly one id per scan, group-wide (its next id).
//  - ScanIds: two groups, one in this process and one in a worker, over the same shm logs. With a
//    LocalScanOrder each (the bug the shared order fixes: each process hands out its own ids),
//    both scans enter every log with id 1, and the worker's scan can never answer (its replica
//    takes its entry for an already released copy of the first). With the SharedScanOrder the ids
//    are 1 and 2 and both scans answer. Deterministic: the test reads the entries back through a
//    replica of its own that registered first.
//  - WorkerKilledMidScan: one of three workers raises SIGKILL while it holds the shared scan lock,
//    with its scan in some but not all of its logs (before the append to log L, or after
//    reserving log L's slot without publishing it). The survivors must take the lock over,
//    complete the orphan (exactly once, group-wide), fence the dead replica, finish every
//    operation and agree; the merged history, the dead worker's acknowledged operations
//    included and its pending ones as "may or may not have happened", must be linearizable.
// Waits poll with deadlines; every started worker is reaped (killed first at a deadline or on a
// failed assertion).
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/nr/cnr.h"
#include "kernel/nr/ds/concurrent_hashmap.h"
#include "kernel/nr/scan_order.h"
#include "logs/shm/shm_log.h"
#include "tests/kernel/nr/cnr_model.h"
#include "tests/lincheck/lincheck.h"
#include "tests/logs/shm_test_region.h"

extern char** environ;

namespace nrx::nr {
namespace {

using lincheck::MapOp;
using lincheck::MapWithScansModel;
using logs::ShmLog;
using logs::testing::MappedRegion;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using Map = ConcurrentHashMap;
// The worker's log type is a forwarding wrapper; the Entry layout does not depend on it.
using LocalGroup = CnrGroup<Map, HashMapLogMapper, ShmLog>;
using Entry = LocalGroup::Entry;

constexpr uint32_t kLogs = 4;
constexpr uint64_t kCluster = 0xc4a5c4a5;
constexpr uint32_t kWorkers = 3;
constexpr uint32_t kThreads = 2;
constexpr uint32_t kKeys = 8;

// Sanitizers slow the workers ~10x and the checker far more; the interleavings they look for
// show up with fewer operations.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr uint32_t kOpsDivisor = 2;
#else
constexpr uint32_t kOpsDivisor = 1;
#endif

// ---- Regions ------------------------------------------------------------------------------------

// The worker's control region (cnr_shm_worker.cc): counters on their own lines.
struct Control {  // as cnr_shm_worker.cc's
  alignas(128) uint64_t registered;
  alignas(128) uint64_t done;
  alignas(128) uint64_t go;
  alignas(128) uint64_t crashing_pid;
  alignas(128) uint64_t fenced;
};

// What a group shares: its logs, its scan order and the workers' control words.
struct GroupRegions {
  std::vector<std::shared_ptr<MappedRegion>> log_regions;
  std::vector<std::unique_ptr<ShmLog>> logs;  // the creator's views (no replica of their own)
  std::shared_ptr<MappedRegion> order_region;
  std::unique_ptr<SharedScanOrder> order;  // the creator's view
  std::shared_ptr<MappedRegion> control;

  Control& control_words() const { return *reinterpret_cast<Control*>(control->bytes().data()); }
  std::string log_paths() const {
    std::string s;
    for (const auto& r : log_regions) s += (s.empty() ? "" : ",") + r->path();
    return s;
  }
};

GroupRegions make_regions(uint32_t slot_count) {
  GroupRegions s;
  for (uint32_t i = 0; i < kLogs; ++i) {
    logs::LogOptions o;
    o.log_id = i;  // CNR names log i by the header's id
    o.entry_size = sizeof(Entry);
    o.slot_count = slot_count;
    o.payload_slots = 4;
    logs::ShmOptions shm;
    shm.cluster_id = kCluster;
    shm.payload_bytes = 4 * 4096;
    auto region = MappedRegion::create(MappedRegion::Kind::kDevShm, ShmLog::region_bytes(o, shm));
    EXPECT_TRUE(region.ok()) << region.status().to_string();
    if (!region.ok()) return {};
    auto log = ShmLog::create((*region)->bytes(), o, shm);
    EXPECT_TRUE(log.ok()) << log.status().to_string();
    if (!log.ok()) return {};
    s.log_regions.push_back(*region);
    s.logs.push_back(std::move(log).value());
  }
  auto order_region = MappedRegion::create(MappedRegion::Kind::kDevShm, SharedScanOrder::kRegionBytes);
  auto control = MappedRegion::create(MappedRegion::Kind::kDevShm, sizeof(Control));
  EXPECT_TRUE(order_region.ok() && control.ok());
  if (!order_region.ok() || !control.ok()) return {};
  auto order = SharedScanOrder::create((*order_region)->bytes(), {.cluster_id = kCluster});
  EXPECT_TRUE(order.ok()) << order.status().to_string();
  if (!order.ok()) return {};
  s.order_region = *order_region;
  s.order = std::move(order).value();
  s.control = *control;
  return s;
}

// ---- Worker processes ---------------------------------------------------------------------------

struct Worker {
  pid_t pid = -1;
  std::string out;
  int status = -1;  // waitpid status once reaped
};

// Owns the started workers: whatever path leaves the test (a failed ASSERT included), each one is
// reaped, killed first if it still runs.
class Workers {
 public:
  Workers() = default;
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;
  ~Workers() {
    kill_all();
    for (Worker& w : w_) std::remove(w.out.c_str());
  }

  Result<size_t> start(const std::vector<std::string>& args, std::string out) {
    std::vector<char*> argv;
    for (const std::string& s : args) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
    if (rc != 0) return Status::unavailable("posix_spawn " + args[0] + ": " + std::strerror(rc));
    w_.push_back({pid, std::move(out), -1});
    return w_.size() - 1;
  }

  // Reaps what has exited; true when every worker has.
  bool reap() {
    bool all = true;
    for (Worker& w : w_) {
      if (w.status != -1) continue;
      int status = 0;
      if (waitpid(w.pid, &status, WNOHANG) == w.pid) {
        w.status = status;
      } else {
        all = false;
      }
    }
    return all;
  }

  // Polls until every worker exited (reaping promptly: a reaped pid is "gone" at once for the
  // fencer and the scan lock) or |timeout| passed (then kills the rest); true when all exited.
  bool wait_all(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!reap()) {
      if (Clock::now() >= deadline) {
        kill_all();
        return false;
      }
      std::this_thread::sleep_for(2ms);  // polling period
    }
    return true;
  }

  void kill_all() {
    for (Worker& w : w_) {
      if (w.status != -1) continue;
      kill(w.pid, SIGKILL);
      waitpid(w.pid, &w.status, 0);
    }
  }

  Worker& operator[](size_t i) { return w_[i]; }
  size_t size() const { return w_.size(); }

 private:
  std::vector<Worker> w_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

std::string out_path(const std::string& tag, uint32_t i) {
  return "/dev/shm/nrx-cnr-mp-" + std::to_string(getpid()) + "-" + tag + "-" + std::to_string(i) + ".out";
}

std::vector<std::string> worker_args(const GroupRegions& s, const std::string& out, uint32_t index,
                                     const std::vector<std::string>& extra) {
  std::vector<std::string> args = {NRX_CNR_SHM_WORKER, "--logs", s.log_paths(), "--order", s.order_region->path(),
                                   "--control", s.control->path(), "--out", out, "--cluster", std::to_string(kCluster),
                                   "--index", std::to_string(index)};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// ---- Worker output ------------------------------------------------------------------------------

// One recorded operation, as the worker writes it (op codes are MapOp's).
struct OpLine {
  uint32_t thread = 0;
  MapOp op = MapOp::kGet;
  uint64_t key = 0, value = 0, hi = 0;
  std::optional<uint64_t> result;
  uint64_t invoke = 0, response = 0;

  MapWithScansModel::Input input() const { return {op, key, value, hi}; }
  bool is_scan() const { return op == MapOp::kSize || op == MapOp::kRangeSum || op == MapOp::kClear; }
  bool writes() const { return op == MapOp::kPut || op == MapOp::kRemove || op == MapOp::kClear; }
};

struct WorkerOutput {
  std::map<std::string, uint64_t> summary;  // a finished worker's counters
  std::vector<OpLine> done;                 // acknowledged operations
  std::vector<OpLine> pending;              // streamed: invoked, never acknowledged
  std::optional<std::pair<uint64_t, uint32_t>> dying;  // streamed: (scan id, log) of the crash point
  uint64_t last_stamp = 0;                             // streamed: the last stamp written

  uint64_t at(const std::string& key) const {
    auto it = summary.find(key);
    return it == summary.end() ? ~uint64_t{0} : it->second;
  }
};

Result<MapOp> map_op(unsigned op) {
  if (op > static_cast<unsigned>(MapOp::kClear)) return Status::data_loss("bad op " + std::to_string(op));
  return static_cast<MapOp>(op);
}

// A finished worker's output ("summary k=v ..." then operation lines) or a crash worker's stream
// ("streaming", then i/r lines and perhaps "dying <scan id> <log>").
Result<WorkerOutput> parse_output(const std::string& text) {
  std::istringstream in(text);
  WorkerOutput w;
  std::string line;
  if (!std::getline(in, line)) return Status::data_loss("empty worker output");
  std::istringstream head(line);
  std::string word;
  head >> word;
  if (word == "summary") {
    while (head >> word) {
      const size_t eq = word.find('=');
      if (eq == std::string::npos) return Status::data_loss("bad summary field " + word);
      w.summary[word.substr(0, eq)] = std::strtoull(word.c_str() + eq + 1, nullptr, 10);
    }
    while (std::getline(in, line)) {
      std::istringstream l(line);
      OpLine op;
      unsigned code = 0;
      int has = 0;
      uint64_t result = 0;
      if (!(l >> op.thread >> code >> op.key >> op.value >> op.hi >> has >> result >> op.invoke >> op.response)) {
        return Status::data_loss("unparsable history line: " + line);
      }
      NRX_ASSIGN_OR_RETURN(op.op, map_op(code));
      if (has) op.result = result;
      w.done.push_back(op);
    }
    return w;
  }
  if (word != "streaming") return Status::data_loss("unexpected worker output: " + text.substr(0, 300));
  std::map<std::pair<uint32_t, uint64_t>, OpLine> open;  // (thread, invoke) -> op
  while (std::getline(in, line)) {
    std::istringstream l(line);
    std::string kind;
    l >> kind;
    if (kind == "dying") {
      uint64_t id = 0;
      uint32_t log = 0;
      if (!(l >> id >> log)) return Status::data_loss("bad dying line: " + line);
      w.dying = {id, log};
      continue;
    }
    OpLine op;
    unsigned code = 0;
    if (!(l >> op.thread >> code >> op.key >> op.value >> op.hi)) return Status::data_loss("bad line: " + line);
    NRX_ASSIGN_OR_RETURN(op.op, map_op(code));
    if (kind == "i") {
      if (!(l >> op.invoke)) return Status::data_loss("bad invoke line: " + line);
      w.last_stamp = std::max(w.last_stamp, op.invoke);
      open[{op.thread, op.invoke}] = op;
    } else if (kind == "r") {
      int has = 0;
      uint64_t result = 0;
      if (!(l >> has >> result >> op.invoke >> op.response)) return Status::data_loss("bad response line: " + line);
      if (open.erase({op.thread, op.invoke}) != 1) return Status::data_loss("response without invoke: " + line);
      if (has) op.result = result;
      w.last_stamp = std::max(w.last_stamp, op.response);
      w.done.push_back(op);
    } else {
      return Status::data_loss("bad stream line: " + line);
    }
  }
  for (const auto& [k, op] : open) w.pending.push_back(op);
  return w;
}

// ---- Linearizability with operations of a dead process ------------------------------------------

// MapWithScansModel, plus "pending" operations (invoked by the dead worker, never answered): one
// that is checked took effect with whatever output the map gave. Whether it took effect at all
// is decided outside, by checking each subset of the pending writes (there are at most a few).
struct MapMaybeModel {
  struct Input {
    MapWithScansModel::Input op;
    bool pending;
  };
  using Output = MapWithScansModel::Output;
  using State = MapWithScansModel::State;

  static State init() { return MapWithScansModel::init(); }
  static bool step(State& s, const Input& in, const Output& out) {
    return MapWithScansModel::step(s, in.op, in.pending ? output_of(s, in.op) : out);
  }
  static size_t hash(const State& s) { return MapWithScansModel::hash(s); }
  static std::string describe(const Input& in, const Output& out) {
    return in.pending ? MapWithScansModel::describe(in.op, std::nullopt) + " (pending)"
                      : MapWithScansModel::describe(in.op, out);
  }

  // What the map answers to |op| in state |s|.
  static Output output_of(const State& s, const MapWithScansModel::Input& op) {
    switch (op.op) {
      case MapOp::kPut:
      case MapOp::kGet:
      case MapOp::kRemove:
        for (const auto& [k, v] : s) {
          if (k == op.key) return v;
        }
        return std::nullopt;
      case MapOp::kSize:
      case MapOp::kClear:
        return s.size();
      case MapOp::kRangeSum: {
        uint64_t sum = 0;
        for (const auto& [k, v] : s) {
          if (k >= op.key && k <= op.hi) sum += v;
        }
        return sum;
      }
    }
    return std::nullopt;
  }
};

// Checks |done| plus, for some subset of |pending|, those operations as taking effect anywhere
// after their invoke. Pending reads are dropped (they change nothing and nobody saw their answer).
lincheck::CheckResult check_with_pending(const std::vector<OpLine>& done, const std::vector<OpLine>& pending) {
  lincheck::History<MapMaybeModel> base;
  uint64_t last = 0;
  for (const OpLine& op : done) {
    base.push_back({op.thread, op.invoke, op.response, {op.input(), false}, op.result});
    last = std::max(last, op.response);
  }
  std::vector<OpLine> maybe;
  for (const OpLine& op : pending) {
    if (op.writes()) maybe.push_back(op);
  }
  lincheck::CheckResult first{};
  for (uint32_t subset = 0; subset < (1u << maybe.size()); ++subset) {
    lincheck::History<MapMaybeModel> h = base;
    for (size_t i = 0; i < maybe.size(); ++i) {
      if ((subset >> i) & 1) {
        h.push_back({maybe[i].thread, maybe[i].invoke, std::max(last, maybe[i].invoke) + 1,
                     {maybe[i].input(), true}, std::nullopt});
      }
    }
    lincheck::CheckResult r = lincheck::check(h);
    if (r.ok()) return r;
    if (subset == 0) first = std::move(r);
  }
  return first;  // none fits: the explanation for "no pending op took effect"
}

// Each worker's operations span overlaps every other's: they really ran at the same time.
void expect_overlap(const std::vector<WorkerOutput>& outs) {
  auto span_of = [](const WorkerOutput& w) {
    uint64_t lo = ~uint64_t{0}, hi = 0;
    for (const OpLine& op : w.done) {
      lo = std::min(lo, op.invoke);
      hi = std::max(hi, op.response);
    }
    return std::pair<uint64_t, uint64_t>(lo, hi);
  };
  for (size_t i = 0; i < outs.size(); ++i) {
    for (size_t j = i + 1; j < outs.size(); ++j) {
      const auto [lo_i, hi_i] = span_of(outs[i]);
      const auto [lo_j, hi_j] = span_of(outs[j]);
      EXPECT_TRUE(lo_i < hi_j && lo_j < hi_i) << "workers " << i << " and " << j << " never overlapped";
    }
  }
}

// Every finished worker applied the same logs: same digest, size and tails.
void expect_agree(const std::vector<const WorkerOutput*>& outs, const GroupRegions& s) {
  for (const WorkerOutput* w : outs) {
    for (const char* key : {"digest", "size"}) EXPECT_EQ(w->at(key), outs[0]->at(key)) << key << " diverged";
    for (uint32_t li = 0; li < kLogs; ++li) {
      EXPECT_EQ(w->at("tail" + std::to_string(li)), s.logs[li]->tail()) << "log " << li;
    }
  }
}

// The next id the shared order would hand out (takes and releases its lock; workers are gone).
uint64_t next_scan_id(SharedScanOrder& order) {
  auto locked = order.lock([] {});  // nobody else holds it: nothing to keep moving
  EXPECT_TRUE(locked.ok()) << locked.status().to_string();
  if (!locked.ok()) return 0;
  EXPECT_FALSE(locked->has_value()) << "an orphan was left behind";
  const uint64_t id = order.next_id();
  order.unlock();
  return id;
}

// ---- Three workers, shared scan order -----------------------------------------------------------

// One round: three processes x two threads on 4 logs of 128 slots (they wrap many times), 8 keys,
// 8% scans (size 3 : range sum 3 : clear 2).
void run_round(uint64_t seed) {
  const uint32_t ops = 20000 / kOpsDivisor;
  GroupRegions s = make_regions(128);
  ASSERT_EQ(s.logs.size(), kLogs);

  Workers workers;
  const auto start = Clock::now();
  for (uint32_t i = 0; i < kWorkers; ++i) {
    const std::string out = out_path("lin", i);
    auto w = workers.start(worker_args(s, out, i,
                                       {"--workers", std::to_string(kWorkers), "--threads", std::to_string(kThreads),
                                        "--ops", std::to_string(ops), "--seed", std::to_string(seed), "--keys",
                                        std::to_string(kKeys), "--scan-pct", "8"}),
                           out);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
  }
  const bool in_time = workers.wait_all(30s);
  const auto ran = Clock::now();
  ASSERT_TRUE(in_time) << "workers did not finish within 30 s; killed";

  std::vector<WorkerOutput> outs;
  for (uint32_t i = 0; i < kWorkers; ++i) {
    const std::string text = read_file(workers[i].out);
    ASSERT_TRUE(exited_ok(workers[i].status))
        << "worker " << i << ": " << describe_exit(workers[i].status) << ": " << text.substr(0, 300);
    auto out = parse_output(text);
    ASSERT_TRUE(out.ok()) << "worker " << i << ": " << out.status().to_string();
    ASSERT_EQ(out->done.size(), size_t{kThreads} * ops) << "worker " << i;
    outs.push_back(std::move(out).value());
  }

  std::vector<const WorkerOutput*> all_outs;
  uint64_t scans = 0, clears = 0, writes = 0;
  std::vector<OpLine> history;
  for (const WorkerOutput& w : outs) {
    all_outs.push_back(&w);
    EXPECT_EQ(w.at("take_overs"), 0u) << "no holder died";
    EXPECT_EQ(w.at("orphans_completed"), 0u);
    uint64_t own_scans = 0;
    for (const OpLine& op : w.done) {
      own_scans += op.is_scan() ? 1 : 0;
      clears += op.op == MapOp::kClear ? 1 : 0;
      writes += op.op == MapOp::kPut || op.op == MapOp::kRemove ? 1 : 0;
    }
    EXPECT_GT(own_scans, 0u);
    scans += own_scans;
    history.insert(history.end(), w.done.begin(), w.done.end());
  }
  expect_agree(all_outs, s);
  expect_overlap(outs);
  // Every scan entered all 4 logs, every write one; nothing else was appended.
  uint64_t tails = 0;
  for (uint32_t li = 0; li < kLogs; ++li) tails += s.logs[li]->tail();
  EXPECT_EQ(tails, writes + kLogs * scans);
  // Scan-updates ran at every replica (scan-reads only at their issuer).
  for (const WorkerOutput& w : outs) EXPECT_GE(w.at("scans_executed"), clears);
  // The shared order handed out ids 1..scans, one per scan, across the three processes.
  EXPECT_EQ(next_scan_id(*s.order), scans + 1);
  EXPECT_GE(scans * 100, history.size() * 5) << "too few scans to exercise their ordering";

  lincheck::History<MapWithScansModel> h;
  for (const OpLine& op : history) h.push_back({op.thread, op.invoke, op.response, op.input(), op.result});
  const lincheck::CheckResult check = lincheck::check(h);
  const auto checked = Clock::now();
  EXPECT_TRUE(check.ok()) << check.explanation;
  using ms = std::chrono::milliseconds;
  std::printf("  seed %llu: %zu ops (%llu scans, %llu clears): run %lld ms, check %lld ms, %llu states\n",
              static_cast<unsigned long long>(seed), history.size(), static_cast<unsigned long long>(scans),
              static_cast<unsigned long long>(clears),
              static_cast<long long>(std::chrono::duration_cast<ms>(ran - start).count()),
              static_cast<long long>(std::chrono::duration_cast<ms>(checked - ran).count()),
              static_cast<unsigned long long>(check.states_explored));
}

// Several seeds: a lost barrier shows up in most rounds, not all.
TEST(CnrMultiprocessTest, WorkersAreLinearizableAndAgree) {
  for (uint64_t seed : {41u, 42u, 43u}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    run_round(seed);
    if (HasFatalFailure()) return;
  }
}

// ---- Scan ids: one order per process vs. the shared order ---------------------------------------

// A scan entry as a log holds it.
struct ScanSeen {
  uint64_t id;
  uint32_t issuer;
};

// Reads every entry of log |li| that |spy| has not read yet, keeping the scans.
void read_scans(ShmLog& log, logs::ReplicaId spy, std::vector<ScanSeen>* out) {
  auto r = log.exec(spy, [out](const logs::Entry& e) {
    if (e.data.size() != sizeof(Entry)) return;
    Entry entry;
    std::memcpy(static_cast<void*>(&entry), e.data.data(), sizeof(Entry));
    if (entry.kind != Entry::kWrite) out->push_back({entry.scan_id, entry.issuer_replica});
  });
  ASSERT_TRUE(r.ok()) << r.status().to_string();
}

// This process's group (replica A) and a worker's (replica B) share the 4 logs; a spy replica
// registered first reads the scans back. A: put(1, 10), then size. B: size.
void scan_id_round(bool shared) {
  GroupRegions s = make_regions(16);
  ASSERT_EQ(s.logs.size(), kLogs);
  std::vector<logs::ReplicaId> spy(kLogs);
  for (uint32_t li = 0; li < kLogs; ++li) {
    auto id = s.logs[li]->register_replica();
    ASSERT_TRUE(id.ok()) << id.status().to_string();
    spy[li] = *id;
  }

  std::unique_ptr<ScanOrder> order;
  if (shared) {
    auto so = SharedScanOrder::attach(s.order_region->bytes(), {.cluster_id = kCluster});
    ASSERT_TRUE(so.ok()) << so.status().to_string();
    order = std::move(so).value();
  }  // else: the group makes a LocalScanOrder
  auto make_log = [&s](const logs::LogOptions& o) {
    logs::ShmAttachOptions at;
    at.cluster_id = kCluster;
    at.on_lagging = o.on_lagging;
    return ShmLog::attach(s.log_regions[o.log_id]->bytes(), at);
  };
  auto group = LocalGroup::create(kLogs, logs::LogOptions{}, make_log, HashMapLogMapper{}, std::move(order));
  ASSERT_TRUE(group.ok()) << group.status().to_string();
  auto a = (*group)->make_replica(ReplicaOptions{1});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  Control& control = s.control_words();
  // release: our registration is visible before the worker registers (index 1: after us).
  std::atomic_ref<uint64_t>(control.registered).store(1, std::memory_order_release);

  Workers workers;
  const std::string out = out_path(shared ? "ids-shared" : "ids-local", 0);
  std::vector<std::string> extra = {"--workers", "2", "--threads", "1", "--one-scan"};
  if (!shared) extra.push_back("--local-order");
  auto w = workers.start(worker_args(s, out, 1, extra), out);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  const auto deadline = Clock::now() + 30s;
  // acquire: pairs with the worker's release; its replica is registered on every log.
  while (std::atomic_ref<uint64_t>(control.registered).load(std::memory_order_acquire) < 2) {
    ASSERT_FALSE(workers.reap()) << "the worker exited early: " << read_file(out);
    ASSERT_LT(Clock::now(), deadline) << "the worker never registered";
    std::this_thread::sleep_for(1ms);  // polling period
  }
  ThreadToken token = (*a)->register_thread().value();
  auto put = (*a)->execute_mut({Map::WriteOp::kPut, 1, 10}, token);
  ASSERT_TRUE(put.ok()) << put.status().to_string();
  auto size = (*a)->execute_scan({Map::ScanOp::kSize, 0, 0}, token);
  ASSERT_TRUE(size.ok()) << size.status().to_string();
  EXPECT_EQ(*size, std::optional<uint64_t>(1));
  std::atomic_ref<uint64_t>(control.go).store(1, std::memory_order_release);

  // Both scans in every log, as the spy reads them.
  std::vector<std::vector<ScanSeen>> seen(kLogs);
  for (;;) {
    bool all = true;
    for (uint32_t li = 0; li < kLogs; ++li) {
      read_scans(*s.logs[li], spy[li], &seen[li]);
      if (::testing::Test::HasFatalFailure()) return;
      all = all && seen[li].size() >= 2;
    }
    if (all) break;
    ASSERT_LT(Clock::now(), deadline) << "the worker's scan never entered every log: " << read_file(out);
    std::this_thread::sleep_for(1ms);  // polling period
  }
  const uint32_t issuer_a = (*a)->id();
  for (uint32_t li = 0; li < kLogs; ++li) {
    SCOPED_TRACE(::testing::Message() << "log " << li);
    ASSERT_EQ(seen[li].size(), 2u);
    EXPECT_EQ(seen[li][0].issuer, issuer_a);
    EXPECT_NE(seen[li][1].issuer, issuer_a);
    EXPECT_EQ(seen[li][0].id, 1u);
    // The bug: each process's LocalScanOrder starts at 1, so the two scans share an id.
    EXPECT_EQ(seen[li][1].id, shared ? 2u : 1u);
  }
  if (shared) {
    ASSERT_TRUE(workers.wait_all(30s)) << "the worker's scan never answered";
    EXPECT_TRUE(exited_ok(workers[0].status)) << describe_exit(workers[0].status);
    EXPECT_EQ(read_file(out), "scanned 1 1\n");
    EXPECT_EQ(next_scan_id(*s.order), 3u);
  } else {
    // Its replica ran scan 1 (A's) and then skips its own entry, also id 1, as an already
    // released copy: nothing can ever answer it.
    EXPECT_FALSE(workers.reap()) << "the worker's scan answered: " << read_file(out);
    EXPECT_EQ(read_file(out), "");
  }  // ~Workers kills and reaps it
}

TEST(CnrMultiprocessTest, ScanIdsConflictWithALocalOrderPerProcess) { scan_id_round(/*shared=*/false); }
TEST(CnrMultiprocessTest, ScanIdsAreDistinctWithTheSharedOrder) { scan_id_round(/*shared=*/true); }

// ---- A worker killed mid-scan -------------------------------------------------------------------

struct CrashConfig {
  uint64_t seed;         // of the first round
  uint32_t die_at_scan;  // the dying worker's N-th scan (made a Clear or a Size) is the crash point
  uint32_t die_log;      // it entered logs 0..die_log-1, not die_log..3
  const char* die_kind;  // "clear" (runs at every replica) or "size" (its answer died with it)
  bool after_reserve;    // dies after reserving log die_log's slot (unpublished: fenced to a no-op)
};

void PrintTo(const CrashConfig& c, std::ostream* os) {
  *os << "seed " << c.seed << ", scan " << c.die_at_scan << " (" << c.die_kind << ") dies at log " << c.die_log
      << (c.after_reserve ? " after reserving" : " before appending");
}

std::string crash_name(const ::testing::TestParamInfo<CrashConfig>& info) {
  const CrashConfig& c = info.param;
  return std::string(c.die_kind) + "_log" + std::to_string(c.die_log) +
         (c.after_reserve ? "_after_reserve" : "_before_append");
}

class CnrMultiprocessCrashTest : public ::testing::TestWithParam<CrashConfig> {};

// One round: worker 2 of three dies at crash point |c| (its op mix seeded by |seed|); survivors
// run 4000 operations per thread.
void crash_round(const CrashConfig& c, uint64_t seed) {
  const uint32_t ops = 4000 / kOpsDivisor;
  constexpr uint32_t kDead = kWorkers - 1;
  GroupRegions s = make_regions(128);
  ASSERT_EQ(s.logs.size(), kLogs);

  Workers workers;
  const auto start = Clock::now();
  for (uint32_t i = 0; i < kWorkers; ++i) {
    const std::string out = out_path("crash", i);
    std::vector<std::string> extra = {"--workers", std::to_string(kWorkers), "--done-target",
                                      std::to_string(kWorkers - 1), "--threads", std::to_string(kThreads),
                                      "--ops", std::to_string(ops), "--seed", std::to_string(seed), "--keys",
                                      std::to_string(kKeys), "--scan-pct", "8",
                                      // Short, with the idle tick's heartbeats; the dead worker is
                                      // found by its pid (same host) long before its lease runs out.
                                      "--lease-ms", "1000"};
    if (i == kDead) {
      extra.insert(extra.end(), {"--die-at-scan", std::to_string(c.die_at_scan), "--die-log",
                                 std::to_string(c.die_log), "--die-kind", c.die_kind});
      if (c.after_reserve) extra.push_back("--die-after-reserve");
    }
    auto w = workers.start(worker_args(s, out, i, extra), out);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
  }
  const bool in_time = workers.wait_all(30s);
  const auto ran = Clock::now();
  ASSERT_TRUE(in_time) << "workers did not finish within 30 s (a survivor stuck behind the orphan?)";

  std::vector<WorkerOutput> outs;
  for (uint32_t i = 0; i < kWorkers; ++i) {
    const std::string text = read_file(workers[i].out);
    if (i == kDead) {
      ASSERT_TRUE(WIFSIGNALED(workers[i].status) && WTERMSIG(workers[i].status) == SIGKILL)
          << "the crash worker did not die: " << describe_exit(workers[i].status) << ": " << text.substr(0, 300);
    } else {
      ASSERT_TRUE(exited_ok(workers[i].status))
          << "survivor " << i << ": " << describe_exit(workers[i].status) << ": " << text.substr(0, 300);
    }
    auto out = parse_output(text);
    ASSERT_TRUE(out.ok()) << "worker " << i << ": " << out.status().to_string();
    outs.push_back(std::move(out).value());
  }
  const WorkerOutput& dead = outs[kDead];
  // It died at the planned point: holding the scan lock, its scan in logs 0..die_log-1 only.
  ASSERT_TRUE(dead.dying.has_value()) << "the crash worker died elsewhere";
  EXPECT_EQ(dead.dying->second, c.die_log);
  EXPECT_LE(dead.pending.size(), size_t{kThreads});
  const bool scan_pending = std::any_of(dead.pending.begin(), dead.pending.end(), [&](const OpLine& op) {
    return op.op == (std::string(c.die_kind) == "clear" ? MapOp::kClear : MapOp::kSize);
  });
  EXPECT_TRUE(scan_pending) << "the dying scan is not among the pending operations";

  std::vector<const WorkerOutput*> survivors;
  uint64_t take_overs = 0, orphans = 0, fenced = 0, orphan_seen = ~uint64_t{0};
  for (uint32_t i = 0; i < kDead; ++i) {
    const WorkerOutput& w = outs[i];
    survivors.push_back(&w);
    EXPECT_EQ(w.done.size(), size_t{kThreads} * ops) << "survivor " << i;
    take_overs += w.at("take_overs");
    orphans += w.at("orphans_completed");
    fenced += w.at("fenced");
    if (w.at("orphan_seen_ns") != 0) orphan_seen = std::min(orphan_seen, w.at("orphan_seen_ns"));
  }
  expect_agree(survivors, s);
  // The scan lock was taken over from the dead holder once, and its scan completed once.
  EXPECT_EQ(take_overs, 1u);
  EXPECT_EQ(orphans, 1u);
  // Each log's copy of the dead replica was fenced once (its pid is gone), by some survivor.
  EXPECT_EQ(fenced, uint64_t{kLogs});
  // Later scans got later ids: the orphan's id was consumed, none reused.
  EXPECT_GT(next_scan_id(*s.order), dead.dying->first);
  // From the dead worker's last stamp to a survivor's idle tick seeing the orphan completed.
  uint64_t recovery_ms = 0;
  if (orphan_seen != ~uint64_t{0}) {
    recovery_ms = orphan_seen > dead.last_stamp ? (orphan_seen - dead.last_stamp) / 1000000 : 0;
    ::testing::Test::RecordProperty("orphan_completed_after_ms", std::to_string(recovery_ms));
    EXPECT_LT(recovery_ms, 20000u) << "the orphan waited long for completion";
  }

  std::vector<OpLine> done;
  for (const WorkerOutput& w : outs) done.insert(done.end(), w.done.begin(), w.done.end());
  const lincheck::CheckResult check = check_with_pending(done, dead.pending);
  const auto checked = Clock::now();
  EXPECT_TRUE(check.ok()) << check.explanation;
  using ms = std::chrono::milliseconds;
  std::printf(
      "  seed %llu: dead worker %zu acknowledged, %zu pending; orphan completed after %llu ms; %zu ops: run %lld ms, "
      "check %lld ms, %llu states\n",
      static_cast<unsigned long long>(seed), dead.done.size(), dead.pending.size(),
      static_cast<unsigned long long>(recovery_ms), done.size(),
      static_cast<long long>(std::chrono::duration_cast<ms>(ran - start).count()),
      static_cast<long long>(std::chrono::duration_cast<ms>(checked - ran).count()),
      static_cast<unsigned long long>(check.states_explored));
}

// Five rounds per crash point (the seed moves the rest of the op mix): whether a survivor's thread
// waits at the orphan in place when the lock is taken over varies from round to round.
TEST_P(CnrMultiprocessCrashTest, WorkerKilledMidScanIsCompletedBySurvivors) {
  const CrashConfig c = GetParam();
  for (uint64_t round = 0; round < 5; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    crash_round(c, c.seed + 1000 * round);
    if (HasFatalFailure()) return;
  }
}

// Table of crash points: (seed, dying scan, log it dies at, kind, before/after reserving there).
INSTANTIATE_TEST_SUITE_P(
    CrashPoints, CnrMultiprocessCrashTest,
    ::testing::Values(CrashConfig{51, 3, 1, "clear", false},  // a clear in log 0 only: survivors run it
                      CrashConfig{52, 5, 2, "size", true},    // a size in logs 0-1, log 2's slot reserved
                      CrashConfig{53, 2, 3, "clear", true}),  // a clear in logs 0-2, log 3's slot reserved
    crash_name);

}  // namespace
}  // namespace nrx::nr
