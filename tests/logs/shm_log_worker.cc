// One process of the multi-process shm log test (shm_multiprocess_test.cc): attaches to the log
// in a /dev/shm region, registers its own replica of a node-replicated hash map
// (nr::Replica<nr::HashMap, ShmLog>), meets the other workers at a barrier (so every replica
// starts from the empty map at index 0), runs a seeded random mix of put/get/remove on several
// threads while recording each operation's invoke and response time (CLOCK_MONOTONIC, which all
// processes share), then keeps applying the log until every worker is done, syncs, and writes
// its history and its replica's digest to --out.
//
// The barrier and done counters live in a second small region (--control), not in the log's.
//
// --mode coherent|noncoherent: the mode the log must be in (attach checks it against the header);
// noncoherent attaches as client --client (default: --index + 1; 0 is the creator, which runs
// the sequencer).
//
// --hang: register the replica, write "registered" to --out, and sleep until killed (a worker
// that dies holding a replica, for the test that checks nobody waits on it forever).
//
// --create: instead of attaching, CREATE the log in --region (the file must be at least
// ShmLog::region_bytes of: entry_size 32, --slots S slots (default 64), payload_slots 4,
// payload_bytes 4 x 4096, --mode, --cluster, --lease-ms), write "created <pid>" to --out and
// sleep until killed. Noncoherent mode: this process then runs the sequencer, so killing it is
// the death of the sequencer's process (shm_fencing_test checks the survivors fail clearly).
//
// --die-after-appends K [--die-publish P]: crash test (fencing, either mode). The K-th append of
// this process's log object reserves its batch (noncoherent: is granted it), publishes its first
// P entries (at most all but one) and raises SIGKILL on the process: a death between reserving
// and publishing, possibly mid-batch. Such a worker streams its history to --out as it goes
// (each line flushed): before an operation "i <thread> <op> <key> <value> <invoke_ns>", after it
// the operation line below prefixed with "r ". An "i" without its "r" is pending: it may or may
// not have taken effect. --done-target N: how many workers the final barrier waits for (default
// --workers; the survivors of a crash test name the survivors). --lease-ms L: the fencing lease
// (default 2000; coherent: this process's, as a fencer; noncoherent: how long the sequencer may
// stay silent, the fencing lease being the creator's). Every wait of a worker heartbeats its
// replica (the kernel's idle-loop rule), so only a dead worker is ever fenced.
//
// Output (text): "digest <d> size <n> tail <t> nudges <k>", then one line per operation:
// "<thread> <op 0=put 1=get 2=remove> <key> <value> <has_result> <result> <invoke_ns> <response_ns>".
// On failure: "error <status>" and a non-zero exit code (see kExit*).
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/host.h"
#include "kernel/nr/ds/hashmap.h"
#include "kernel/nr/replica.h"
#include "logs/shm/shm_log.h"
#include "tests/logs/shm_test_region.h"

namespace {

using nrx::logs::ShmLog;
using nrx::logs::testing::MappedRegion;
using HashMapReplica = nrx::nr::Replica<nrx::nr::HashMap, ShmLog>;

constexpr int kExitOk = 0;
constexpr int kExitUsage = 2;
constexpr int kExitSetup = 3;     // mapping, attach or registration failed
constexpr int kExitOpFailed = 4;  // an operation returned an error (e.g. the log stayed full)
constexpr int kExitBarrier = 5;   // the other workers never arrived / finished

// The control region: counters on their own lines.
struct Control {
  alignas(128) uint64_t ready;
  alignas(128) uint64_t done;
  // The pid of the worker that will SIGKILL itself (0: none). The survivors' final barrier counts
  // only themselves (--done-target), so they also wait for its death: on a loaded machine it may
  // still be appending when they finish, and a survivor that digests then sees an earlier tail.
  alignas(128) uint64_t crashing_pid;
  alignas(128) uint64_t fenced;  // survivors past their fence_dead of the crash worker
};

struct Args {
  std::string region;
  std::string control;
  std::string out;
  uint64_t cluster = 0;
  uint32_t workers = 1;
  uint32_t index = 0;
  uint32_t threads = 2;
  uint32_t ops = 1000;
  uint64_t seed = 1;
  uint32_t keys = 16;
  uint32_t full_timeout_ms = 5000;
  uint32_t barrier_timeout_ms = 15000;
  bool hang = false;
  uint64_t die_after_appends = 0;  // 0: never
  uint32_t die_publish = 0;
  uint32_t done_target = 0;  // 0: --workers
  uint32_t lease_ms = 2000;
  nrx::logs::ShmMode mode = nrx::logs::ShmMode::kCoherent;
  uint32_t client = 0;  // 0: --index + 1
  bool create = false;
  uint32_t slots = 64;  // --create only
};

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

bool parse(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--hang") {
      a->hang = true;
      continue;
    }
    if (arg == "--create") {
      a->create = true;
      continue;
    }
    if (i + 1 >= argc) return false;
    const std::string v = argv[++i];
    if (arg == "--region") {
      a->region = v;
    } else if (arg == "--control") {
      a->control = v;
    } else if (arg == "--out") {
      a->out = v;
    } else if (arg == "--cluster") {
      a->cluster = std::strtoull(v.c_str(), nullptr, 0);
    } else if (arg == "--workers") {
      a->workers = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--index") {
      a->index = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--threads") {
      a->threads = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--ops") {
      a->ops = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--seed") {
      a->seed = std::strtoull(v.c_str(), nullptr, 0);
    } else if (arg == "--keys") {
      a->keys = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--full-timeout-ms") {
      a->full_timeout_ms = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--mode") {
      if (v == "coherent") {
        a->mode = nrx::logs::ShmMode::kCoherent;
      } else if (v == "noncoherent") {
        a->mode = nrx::logs::ShmMode::kNoncoherent;
      } else {
        return false;
      }
    } else if (arg == "--client") {
      a->client = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--die-after-appends") {
      a->die_after_appends = std::strtoull(v.c_str(), nullptr, 0);
    } else if (arg == "--die-publish") {
      a->die_publish = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--done-target") {
      a->done_target = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--lease-ms") {
      a->lease_ms = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--slots") {
      a->slots = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else if (arg == "--barrier-timeout-ms") {
      a->barrier_timeout_ms = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 0));
    } else {
      return false;
    }
  }
  return !a->region.empty() && !a->out.empty() && a->threads >= 1 && a->keys >= 1 &&
         (a->hang || a->create || (!a->control.empty() && a->workers >= 1));
}

int fail(const Args& a, int code, const std::string& what) {
  std::fprintf(stderr, "shm_log_worker %u: %s\n", a.index, what.c_str());
  if (FILE* f = std::fopen(a.out.c_str(), "w")) {
    std::fprintf(f, "error %s\n", what.c_str());
    std::fclose(f);
  }
  return code;
}

// Waits until |counter| reaches |target| while |idle| keeps this process's replica moving.
template <typename Idle>
bool wait_for_count(uint64_t& counter, uint64_t target, uint32_t timeout_ms, Idle idle) {
  const uint64_t deadline = now_ns() + uint64_t{timeout_ms} * 1000000u;
  // acquire: pairs with the other workers' release increments (their appends happened before).
  while (std::atomic_ref<uint64_t>(counter).load(std::memory_order_acquire) < target) {
    if (now_ns() >= deadline) return false;
    idle();
  }
  return true;
}

struct Record {
  uint32_t thread;
  uint8_t op;  // 0 put, 1 get, 2 remove
  uint64_t key;
  uint64_t value;
  std::optional<uint64_t> result;
  uint64_t invoke;
  uint64_t response;
};

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, &a)) {
    std::fprintf(stderr,
                 "usage: shm_log_worker --region PATH --out PATH [--control PATH --workers N --index I] "
                 "[--cluster C] [--threads T] [--ops K] [--seed S] [--keys K] [--full-timeout-ms MS] "
                 "[--mode coherent|noncoherent] [--client N] [--hang] [--create [--slots S]]\n");
    return kExitUsage;
  }
  nrx::Result<std::shared_ptr<MappedRegion>> region = MappedRegion::open_file(a.region);
  if (!region.ok()) return fail(a, kExitSetup, region.status().to_string());
  if (a.create) {
    nrx::logs::LogOptions o;
    o.entry_size = 32;
    o.slot_count = a.slots;
    o.payload_slots = 4;
    nrx::logs::ShmOptions shm;
    shm.mode = a.mode;
    shm.cluster_id = a.cluster;
    shm.payload_bytes = 4 * 4096;
    shm.lease = std::chrono::milliseconds(a.lease_ms == 0 ? 1 : a.lease_ms);
    nrx::Result<std::unique_ptr<ShmLog>> created = ShmLog::create((*region)->bytes(), o, shm);
    if (!created.ok()) return fail(a, kExitSetup, "create: " + created.status().to_string());
    if (FILE* f = std::fopen(a.out.c_str(), "w")) {
      std::fprintf(f, "created %d\n", static_cast<int>(getpid()));
      std::fclose(f);
    }
    for (;;) pause();  // until SIGKILL: the sequencer's process dies with its log object
  }

  std::atomic<uint64_t> nudges{0};
  nrx::logs::ShmAttachOptions opts;
  opts.cluster_id = a.cluster;
  opts.full_timeout = std::chrono::milliseconds(a.full_timeout_ms);
  opts.mode = a.mode;
  opts.client = a.client != 0 ? a.client : a.index + 1;
  opts.lease = std::chrono::milliseconds(a.lease_ms == 0 ? 1 : a.lease_ms);
  // Another process's replica cannot be nudged from here (it applies the log itself); count.
  opts.on_lagging = [&nudges](uint32_t, nrx::logs::ReplicaId) { nudges.fetch_add(1, std::memory_order_relaxed); };
  nrx::Result<std::unique_ptr<ShmLog>> log = ShmLog::attach((*region)->bytes(), opts);
  if (!log.ok()) return fail(a, kExitSetup, "attach: " + log.status().to_string());
  if (a.die_after_appends != 0) {
    (*log)->crash_in_append_for_testing(a.die_after_appends, a.die_publish, /*kill=*/true);
  }
  // A crash-test worker streams its history (see the header); others write it at the end.
  FILE* stream = nullptr;
  std::mutex stream_mu;
  if (a.die_after_appends != 0) {
    stream = std::fopen(a.out.c_str(), "w");
    if (stream == nullptr) return fail(a, kExitSetup, "cannot write " + a.out);
    std::fprintf(stream, "streaming\n");
    std::fflush(stream);
  }
  auto stream_line = [&](const std::string& line) {
    if (stream == nullptr) return;
    std::lock_guard<std::mutex> lock(stream_mu);
    std::fputs(line.c_str(), stream);
    std::fflush(stream);  // in the kernel's buffer before the next operation: SIGKILL-proof
  };
  nrx::Result<std::unique_ptr<HashMapReplica>> replica =
      HashMapReplica::create(**log, nrx::nr::HashMap{}, nrx::nr::ReplicaOptions{a.threads + 1});
  if (!replica.ok()) return fail(a, kExitSetup, "replica: " + replica.status().to_string());
  HashMapReplica& rep = **replica;

  if (a.hang) {
    if (FILE* f = std::fopen(a.out.c_str(), "w")) {
      std::fprintf(f, "registered %u\n", rep.id());
      std::fclose(f);
    }
    for (;;) pause();  // until SIGKILL: a replica whose process died without leaving
  }

  nrx::Result<std::shared_ptr<MappedRegion>> control_region = MappedRegion::open_file(a.control);
  if (!control_region.ok()) return fail(a, kExitSetup, control_region.status().to_string());
  if ((*control_region)->bytes().size() < sizeof(Control)) return fail(a, kExitSetup, "control region too small");
  auto* control = reinterpret_cast<Control*>((*control_region)->bytes().data());

  // Everybody registers before anybody appends, so every replica starts from the empty map.
  // release: our registration is visible before the count says so.
  if (a.die_after_appends != 0) {
    // relaxed: ordered before the ready count below by its release.
    std::atomic_ref<uint64_t>(control->crashing_pid).store(static_cast<uint64_t>(getpid()), std::memory_order_relaxed);
  }
  std::atomic_ref<uint64_t>(control->ready).fetch_add(1, std::memory_order_release);
  // The barrier heartbeats our replica: with several processes starting on a loaded machine it
  // may last longer than the fencing lease.
  if (!wait_for_count(control->ready, a.workers, a.barrier_timeout_ms, [&log] {
        (void)(*log)->heartbeat();
        std::this_thread::yield();
      })) {
    return fail(a, kExitBarrier, "the other workers never registered");
  }

  std::vector<std::vector<Record>> records(a.threads);
  std::vector<std::string> errors(a.threads);
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
        for (uint32_t i = 0; i < a.ops; ++i) {
          const uint64_t dice = rng() % 100;
          const uint64_t key = rng() % a.keys;
          // Unique values: (thread, op) identifies every put, so the checker is sharp.
          const uint64_t value = (uint64_t{global_thread} << 32) | (i + 1);
          Record r{global_thread, 0, key, 0, std::nullopt, 0, 0};
          const uint8_t planned = dice < 45 ? 0 : dice < 55 ? 2 : 1;
          if (stream != nullptr) {
            // The invoke stamp is taken before the line is written, so it precedes the operation.
            r.invoke = now_ns();
            stream_line("i " + std::to_string(global_thread) + " " + std::to_string(planned) + " " +
                        std::to_string(key) + " " + std::to_string(planned == 0 ? value : 0) + " " +
                        std::to_string(r.invoke) + "\n");
          }
          auto stamp = [&r, stream] {
            if (stream == nullptr) r.invoke = now_ns();
          };
          if (dice < 45) {
            r.op = 0;
            r.value = value;
            stamp();
            auto res = rep.execute_mut({nrx::nr::HashMap::WriteOp::kPut, key, value}, *token);
            r.response = now_ns();
            if (!res.ok()) {
              errors[t] = "put: " + res.status().to_string();
              return;
            }
            r.result = *res;
          } else if (dice < 55) {
            r.op = 2;
            stamp();
            auto res = rep.execute_mut({nrx::nr::HashMap::WriteOp::kRemove, key, 0}, *token);
            r.response = now_ns();
            if (!res.ok()) {
              errors[t] = "remove: " + res.status().to_string();
              return;
            }
            r.result = *res;
          } else {
            r.op = 1;
            stamp();
            r.result = rep.execute({nrx::nr::HashMap::ReadOp::kGet, key}, *token);
            r.response = now_ns();
          }
          records[t].push_back(r);
          if (stream != nullptr) {
            stream_line("r " + std::to_string(r.thread) + " " + std::to_string(r.op) + " " + std::to_string(r.key) +
                        " " + std::to_string(r.value) + " " + std::to_string(r.result.has_value() ? 1 : 0) + " " +
                        std::to_string(r.result.value_or(0)) + " " + std::to_string(r.invoke) + " " +
                        std::to_string(r.response) + "\n");
          }
        }
      });
    }
    for (std::thread& th : threads) th.join();
  }
  for (const std::string& e : errors) {
    if (!e.empty()) return fail(a, kExitOpFailed, e);
  }

  // Done; keep applying until every worker is (one may be waiting for our replica to advance).
  // release: every append of ours happened before the count says we are done.
  std::atomic_ref<uint64_t>(control->done).fetch_add(1, std::memory_order_release);
  const uint32_t done_target = a.done_target != 0 ? a.done_target : a.workers;
  if (!wait_for_count(control->done, done_target, a.barrier_timeout_ms, [&rep] {
        rep.sync();
        std::this_thread::yield();
      })) {
    return fail(a, kExitBarrier, "the other workers never finished");
  }
  // Published before the crash worker's ready count, which our ready barrier acquired.
  const uint64_t crashing = std::atomic_ref<uint64_t>(control->crashing_pid).load(std::memory_order_relaxed);
  if (crashing != 0 && crashing != static_cast<uint64_t>(getpid())) {
    const uint64_t deadline = now_ns() + uint64_t{a.barrier_timeout_ms} * 1000000u;
    while (!nrx::pid_gone(crashing)) {
      if (now_ns() >= deadline) return fail(a, kExitBarrier, "the crash worker never died");
      rep.sync();  // it may wait for our replica to advance before its fatal append
      std::this_thread::yield();
    }
    // Fence it now (its pid is gone): had it died while we still worked, a full log would have
    // made us. Noncoherent mode: only the sequencer fences; this is a no-op here.
    (void)(*log)->fence_dead(std::chrono::milliseconds(a.lease_ms));
    // No survivor exits before every survivor has fenced: an exited survivor's pid is gone too,
    // and a later fence_dead would fence it as well.
    std::atomic_ref<uint64_t>(control->fenced).fetch_add(1, std::memory_order_release);
    if (!wait_for_count(control->fenced, done_target, a.barrier_timeout_ms, [&rep] {
          rep.sync();
          std::this_thread::yield();
        })) {
      return fail(a, kExitBarrier, "the other survivors never fenced the crash worker");
    }
  }
  rep.sync();  // everything every worker appended is below the tail now
  nrx::Result<nrx::nr::ThreadToken> token = rep.register_thread();
  if (!token.ok()) return fail(a, kExitSetup, "register_thread: " + token.status().to_string());
  const uint64_t digest = rep.inspect(*token, [](const nrx::nr::HashMap& m) { return m.digest(); });
  const uint64_t size = rep.inspect(*token, [](const nrx::nr::HashMap& m) { return uint64_t{m.size()}; });

  FILE* f = std::fopen(a.out.c_str(), "w");
  if (f == nullptr) return fail(a, kExitSetup, "cannot write " + a.out);
  std::fprintf(f, "digest %" PRIu64 " size %" PRIu64 " tail %" PRIu64 " nudges %" PRIu64 "\n", digest, size,
               (*log)->tail(), nudges.load(std::memory_order_relaxed));
  for (const auto& per_thread : records) {
    for (const Record& r : per_thread) {
      std::fprintf(f, "%u %u %" PRIu64 " %" PRIu64 " %d %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", r.thread, r.op, r.key,
                   r.value, r.result.has_value() ? 1 : 0, r.result.value_or(0), r.invoke, r.response);
    }
  }
  if (std::fclose(f) != 0) return fail(a, kExitSetup, "cannot write " + a.out);
  return kExitOk;
}
