// `nrx sweep` (sweep.h): the control path. Parses and validates the options (bad input exits 2
// with one line), builds the grid, runs every point with a progress bar and ETA on stderr, and
// writes the results through sweep_report.cc. Subjects and log backends are tables; a backend not
// built yet (shm) is a known name answered with a clear error rather than an unknown one.
#include "tools/nrx/sweep.h"

#include <numa.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "base/cacheline.h"
#include "logs/latency/tsc.h"
#include "logs/log.h"
#include "tools/nrx/cli.h"

namespace nrx::tools {
namespace {

using sweep::Config;
using sweep::PointResult;
using sweep::Repetition;
using sweep::Settings;

using RunPoint = Result<std::vector<Repetition>> (*)(const Settings&, const Config&, const logs::LatencyProfile&);

// What can be swept (sweep.h describes each workload).
struct Subject {
  std::string_view name;
  RunPoint run;
};
constexpr Subject kSubjects[] = {
    {"log", &sweep::run_log_point},          // append + exec of the decorated ring, as bench_log
    {"hashmap", &sweep::run_hashmap_point},  // the NR hash map (kernel/nr/ds/hashmap.h) on Replica
    {"vmem", &sweep::run_vmem_point},        // NR-vMem map/unmap + Resolve (kernel/vmem/vspace.h)
    {"fs", &sweep::run_fs_point},            // NR-FS 1 KiB pwrite/pread (kernel/fs/fs.h), CNR
};

struct Backend {
  std::string_view name;
  std::string_view needs;  // empty: available
};
constexpr Backend kBackends[] = {
    {"ring", ""},
    {"shm", "the shm backend (logs/shm, emulated CXL shared memory)"},
};

// The classes the issue names. ctail_read is opt-in ('all'): with coherent caches an unchanged
// ctail stays cached near the reader, so charging every NR read a far access is the pessimistic,
// non-coherent case, and it hides NR's point that reads stay local.
constexpr const char* kDefaultClasses = "reserve,write,read,tail_update,payload_read";

constexpr uint32_t kMaxThreads = 256;

std::string names_of(auto const& table) {
  std::string s;
  for (const auto& e : table) s += (s.empty() ? "" : ", ") + std::string(e.name);
  return s;
}

// "1,2,4" -> {1, 2, 4}, each in [lo, hi]; sorted, duplicates dropped.
Result<std::vector<uint32_t>> parse_u32_list(const std::string& option, const std::string& text, uint32_t lo,
                                             uint32_t hi) {
  std::vector<uint32_t> out;
  if (text.empty()) return Status::invalid_argument("--" + option + " needs at least one value");
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    uint32_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty()) return Status::invalid_argument("--" + option + " has an empty item in '" + text + "'");
    if (ec != std::errc() || p != item.data() + item.size() || v < lo || v > hi) {
      return Status::invalid_argument("--" + option + " values must be whole numbers " + std::to_string(lo) + ".." +
                                      std::to_string(hi) + ", not '" + item + "'");
    }
    out.push_back(v);
    start = end + 1;
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// The injected latencies: each item a Delay spec (a bare number is fixed ns); sorted by mean.
Status parse_latencies(const std::string& text, Settings& s) {
  if (text.empty()) return Status::invalid_argument("--latency-ns needs at least one value");
  std::vector<logs::Delay> items;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    if (item.empty()) return Status::invalid_argument("--latency-ns has an empty item in '" + text + "'");
    Result<logs::Delay> d = logs::Delay::parse(item);
    if (!d.ok()) return Status::invalid_argument("--latency-ns: " + d.status().message());
    bool seen = false;
    for (const logs::Delay& delay : items) seen = seen || delay.spec() == d->spec();
    if (!seen) items.push_back(*d);
    start = end + 1;
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const logs::Delay& a, const logs::Delay& b) { return a.mean_ns() < b.mean_ns(); });
  s.latencies = std::move(items);
  return ok_status();
}

Status parse_classes(const std::string& text, Settings& s) {
  if (text == "all") {
    s.classes.fill(true);
    return ok_status();
  }
  if (text.empty()) return Status::invalid_argument("--classes needs at least one class, or 'all'");
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    Result<logs::Access> a = logs::access_from_name(item);
    if (!a.ok()) return Status::invalid_argument("--classes: " + a.status().message());
    s.classes[static_cast<size_t>(*a)] = true;
    start = end + 1;
  }
  return ok_status();
}

// Creates --out (and parents) and checks that a file can be written in it.
Status prepare_out_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::invalid_argument("cannot create --out " + dir + ": " + ec.message());
  if (!std::filesystem::is_directory(dir, ec)) return Status::invalid_argument("--out " + dir + " is not a directory");
  const std::string probe = dir + "/.nrx-sweep-probe";
  std::FILE* f = std::fopen(probe.c_str(), "w");
  if (f == nullptr) return Status::invalid_argument("cannot write into --out " + dir);
  std::fclose(f);
  std::remove(probe.c_str());
  return ok_status();
}

std::string clock_text(double seconds) {
  const auto s = static_cast<long>(std::lround(seconds));
  char b[32];
  std::snprintf(b, sizeof b, "%ld:%02ld", s / 60, s % 60);
  return b;
}

// Progress on stderr: a redrawn bar with ETA on a terminal, one line per point otherwise.
class Progress {
 public:
  Progress(size_t total, double estimate_per_point_s)
      : total_(total), estimate_(estimate_per_point_s), tty_(isatty(STDERR_FILENO) == 1),
        start_(std::chrono::steady_clock::now()) {}

  void starting(size_t done, const std::string& what) {
    if (!tty_) return;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * done / std::max<size_t>(total_, 1));
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r\033[K[%s] %zu/%zu  %s elapsed, ETA %s  %s", bar.c_str(), done, total_,
                 clock_text(elapsed()).c_str(), clock_text(eta(done)).c_str(), what.c_str());
    std::fflush(stderr);
  }

  void finished(size_t done, const std::string& what, const PointResult& r) {
    if (tty_) return;
    std::fprintf(stderr, "sweep: point %zu/%zu %s: %.3f M ops/s, p50 %.0f ns, p99 %.0f ns (%s elapsed, ETA %s)\n",
                 done, total_, what.c_str(), r.throughput.median / 1e6, r.p50.median, r.p99.median,
                 clock_text(elapsed()).c_str(), clock_text(eta(done)).c_str());
  }

  void close() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }

  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  double eta(size_t done) const {
    const double per = done == 0 ? estimate_ : elapsed() / static_cast<double>(done);
    return per * static_cast<double>(total_ - done);
  }

  const size_t total_;
  const double estimate_;
  const bool tty_;
  const std::chrono::steady_clock::time_point start_;
};

std::string fmt(double v, const char* f) {
  if (std::isnan(v)) return "-";
  char b[48];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

void print_table(const std::vector<PointResult>& points) {
  std::printf("%-14s %-16s %10s %-19s %9s %9s %7s %12s\n", "config", "latency", "Mops/s", " (min-max)", "p50 ns",
              "p99 ns", "batch", "model Mops/s");
  for (const PointResult& p : points) {
    const std::string range = "(" + fmt(p.throughput.min / 1e6, "%.3f") + "-" + fmt(p.throughput.max / 1e6, "%.3f") + ")";
    std::printf("%-14s %-16s %10s %-19s %9s %9s %7s %12s\n", p.config.label.c_str(), p.latency_spec.c_str(),
                fmt(p.throughput.median / 1e6, "%.3f").c_str(), range.c_str(), fmt(p.p50.median, "%.0f").c_str(),
                fmt(p.p99.median, "%.0f").c_str(), fmt(p.avg_batch, "%.2f").c_str(),
                p.model ? fmt(*p.model / 1e6, "%.3f").c_str() : "-");
  }
}

constexpr const char* kSummary =
    "Remote-latency sensitivity sweep: run a subject over the ring log wrapped in the latency\n"
    "decorator (logs/latency), for every configuration (threads x replicas x write ratio, or\n"
    "threads x batch) and every injected per-access latency, with a warm-up and --repeat\n"
    "repetitions per point. Writes DIR/results.csv, DIR/results.json and, with gnuplot,\n"
    "DIR/throughput.png, DIR/p50.png and DIR/p99.png (x: injected latency, one line per\n"
    "configuration; plot.gp re-renders them).\n"
    "\n"
    "subjects: log (append + exec of the decorated ring, each thread its own replica).\n"
    "          The others split the threads over replicas like `nrx boot --nodes`:\n"
    "          hashmap (the NR hash map on Replica: put / get of random keys);\n"
    "          vmem (NR-vMem: each thread a core in its own region; a write maps or unmaps a\n"
    "          4 KiB page, in turn, an unmap shooting down the other cores' TLBs; a read is a\n"
    "          TLB miss, translate walking the replica: Resolve);\n"
    "          fs (NR-FS on 4 CNR logs: each thread its own pre-filled 1 MiB file; a write is a\n"
    "          1 KiB pwrite, a read a 1 KiB pread, at random 1 KiB-aligned offsets, as fxmark).\n"
    "latencies: each item of --latency-ns is a delay: N (fixed ns), fixed:N, uniform:A:B,\n"
    "          normal:MEAN:SD, or replay:FILE (measured ns, one per line, cycled); the x value is\n"
    "          its mean. It is charged to every access class in --classes: reserve, write, read,\n"
    "          tail_update, payload_read, and with 'all' also ctail_read (each NR read then pays a\n"
    "          far read of ctail: the uncached case). See logs/latency/latency_log.h.\n"
    "real NUMA: --log-node N places the log on node N with libnuma; sweep with --latency-ns 0 to\n"
    "          measure the remote node instead of injecting latency.\n"
    "\n"
    "The dashed model on the throughput plot (X0: the configuration's throughput at 0 ns; w: write\n"
    "fraction; b: ops per append, measured (fs: not measured, 1); P: parallel appenders = replicas\n"
    "(log: threads; fs: replica x log pairs with writers); R: replicas (log: threads); T: threads;\n"
    "p: payloads per write (fs: 1, else 0); L_c: the delay of class c):\n"
    "  %MODEL%\n"
    "Batching divides the per-round costs (reserve, tail update) by b; it cannot hide the per-entry\n"
    "writes and reads, so past some b the curve stops improving.\n"
    "\n"
    "Exit status: 0 done (also when gnuplot is missing: the PNGs are then skipped, said so), 1 a\n"
    "point failed or gnuplot failed, 2 bad options.";

}  // namespace

int run_sweep(const std::vector<std::string>& args) {
  std::string summary = kSummary;
  summary.replace(summary.find("%MODEL%"), 7, sweep::kModelFormula);
  cli::Command cmd("sweep", summary);
  cmd.option("subject", "S", "what to measure: " + names_of(kSubjects), "hashmap");
  cmd.option("log", "B", "log backend: " + names_of(kBackends), "ring");
  cmd.option("log-node", "N", "NUMA node for the log's memory (libnuma); the real-NUMA mode", "local");
  cmd.option("latency-ns", "LIST", "injected per-access latencies (delay specs, see above)", "0,100,400,1600");
  cmd.option("classes", "LIST", "access classes that get the delay; 'all' adds ctail_read", kDefaultClasses);
  cmd.option("threads", "LIST", "worker threads", "1,2");
  cmd.option("replicas", "LIST", "hashmap, vmem, fs: replicas the threads are split over (<= threads)", "1,2");
  cmd.option("write-ratio", "LIST", "hashmap, vmem, fs: percent of operations that are writes", "10,50");
  cmd.option("batch", "LIST", "log: entries per append (1..64)", "1,8,32");
  cmd.option("repeat", "N", "measured repetitions per point (median, min and max reported)", "3");
  cmd.option("warmup-ms", "MS", "warm-up before a point's repetitions", "200");
  cmd.option("duration-ms", "MS", "length of one repetition", "400");
  cmd.option("keys", "K", "hashmap: keys, all present before the clock starts", "32768");
  cmd.option("log-slots", "S", "ring log slots (a power of two; fs: per CNR log)", "16384");
  cmd.option("sample-every", "N", "time one operation in N for the latency percentiles", "8");
  cmd.option("seed", "S", "random seed of the workload and the delay draws", "1");
  cmd.option("out", "DIR", "output folder (created if missing)", "nrx-sweep");
  cmd.flag("no-plots", "write plot.gp but do not run gnuplot");
  if (Status st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
  if (cmd.help_requested()) {
    std::fputs(cmd.usage().c_str(), stdout);
    return 0;
  }

  Settings s;
  s.subject = cmd.get("subject").value_or("hashmap");
  const Subject* subject = nullptr;
  for (const Subject& x : kSubjects) {
    if (x.name == s.subject) subject = &x;
  }
  if (subject == nullptr) {
    return cli::fail(cmd, Status::invalid_argument("unknown subject '" + s.subject + "' (known: " + names_of(kSubjects) + ")"));
  }
  s.log = cmd.get("log").value_or("ring");
  const Backend* backend = nullptr;
  for (const Backend& b : kBackends) {
    if (b.name == s.log) backend = &b;
  }
  if (backend == nullptr) {
    return cli::fail(cmd, Status::invalid_argument("unknown log backend '" + s.log + "' (known: " + names_of(kBackends) + ")"));
  }
  if (!backend->needs.empty()) {
    std::fprintf(stderr, "nrx sweep: --log %s needs %s, not built yet\n", s.log.c_str(), std::string(backend->needs).c_str());
    return 2;
  }

  const bool is_log = s.subject == "log";
  if (is_log && (cmd.has("replicas") || cmd.has("write-ratio") || cmd.has("keys"))) {
    return cli::fail(cmd, Status::invalid_argument(
                              "--replicas, --write-ratio and --keys do not apply to --subject log (each thread is its "
                              "own replica, every operation an append)"));
  }
  if ((s.subject == "vmem" || s.subject == "fs") && cmd.has("keys")) {
    return cli::fail(cmd, Status::invalid_argument("--keys applies to --subject hashmap only"));
  }
  if (!is_log && cmd.has("batch")) {
    return cli::fail(cmd, Status::invalid_argument("--batch applies to --subject log only (" + s.subject +
                                                   " batches by combining)"));
  }

  if (Status st = parse_latencies(cmd.get("latency-ns").value_or("0,100,400,1600"), s); !st.ok()) return cli::fail(cmd, st);
  if (Status st = parse_classes(cmd.get("classes").value_or(kDefaultClasses), s); !st.ok()) return cli::fail(cmd, st);
  auto threads = parse_u32_list("threads", cmd.get("threads").value_or("1,2"), 1, is_log ? logs::kMaxReplicasLimit : kMaxThreads);
  if (!threads.ok()) return cli::fail(cmd, threads.status());
  auto replicas = parse_u32_list("replicas", cmd.get("replicas").value_or("1,2"), 1, logs::kMaxReplicasLimit);
  if (!replicas.ok()) return cli::fail(cmd, replicas.status());
  auto writes = parse_u32_list("write-ratio", cmd.get("write-ratio").value_or("10,50"), 0, 100);
  if (!writes.ok()) return cli::fail(cmd, writes.status());
  auto batches = parse_u32_list("batch", cmd.get("batch").value_or("1,8,32"), 1, sweep::kMaxLogBatch);
  if (!batches.ok()) return cli::fail(cmd, batches.status());
  auto repeat = cmd.get_u64("repeat", 3, 1, 100);
  auto warmup = cmd.get_u64("warmup-ms", 200, 0, 600000);
  auto duration = cmd.get_u64("duration-ms", 400, 1, 600000);
  auto keys = cmd.get_u64("keys", 32768, 1, uint64_t{1} << 28);
  auto slots = cmd.get_u64("log-slots", 16384, 2, uint64_t{1} << 24);
  auto sample_every = cmd.get_u64("sample-every", 8, 1, 1u << 20);
  auto seed = cmd.get_u64("seed", 1, 0, UINT64_MAX);
  for (const Result<uint64_t>* r : {&repeat, &warmup, &duration, &keys, &slots, &sample_every, &seed}) {
    if (!r->ok()) return cli::fail(cmd, r->status());
  }
  if (!is_power_of_two(*slots)) return cli::fail(cmd, Status::invalid_argument("--log-slots must be a power of two"));
  s.repeat = static_cast<uint32_t>(*repeat);
  s.warmup_ms = static_cast<uint32_t>(*warmup);
  s.duration_ms = static_cast<uint32_t>(*duration);
  s.keys = *keys;
  s.log_slots = static_cast<uint32_t>(*slots);
  s.sample_every = static_cast<uint32_t>(*sample_every);
  s.seed = *seed;
  s.plots = !cmd.flag_set("no-plots");

  if (auto node = cmd.get("log-node"); node && *node != "local") {
    auto n = cmd.get_u64("log-node", 0, 0, 1023);
    if (!n.ok()) return cli::fail(cmd, Status::invalid_argument("--log-node expects a NUMA node number or 'local', not '" + *node + "'"));
    if (numa_available() < 0) return cli::fail(cmd, Status::invalid_argument("--log-node needs NUMA support, and libnuma reports none"));
    const int max_node = numa_max_node();
    if (static_cast<int>(*n) > max_node || numa_node_size64(static_cast<int>(*n), nullptr) <= 0) {
      return cli::fail(cmd, Status::invalid_argument("--log-node " + std::to_string(*n) + " does not exist or has no memory (nodes: 0.." +
                                                     std::to_string(max_node) + ")"));
    }
    s.log_node = static_cast<int>(*n);
  }

  // The grid: one configuration per plot line.
  std::vector<std::string> skipped;
  for (uint32_t t : *threads) {
    if (is_log) {
      for (uint32_t b : *batches) {
        s.configs.push_back({t, t, 100, b, "t" + std::to_string(t) + " b" + std::to_string(b)});
      }
      continue;
    }
    for (uint32_t r : *replicas) {
      if (r > t) {
        skipped.push_back("t" + std::to_string(t) + " r" + std::to_string(r));
        continue;
      }
      if ((t + r - 1) / r > 64) {
        return cli::fail(cmd, Status::invalid_argument("at most 64 threads per replica (" + std::to_string(t) +
                                                       " threads over " + std::to_string(r) + ")"));
      }
      for (uint32_t w : *writes) {
        s.configs.push_back({t, r, w, 0, "t" + std::to_string(t) + " r" + std::to_string(r) + " w" + std::to_string(w)});
      }
    }
  }
  if (s.configs.empty()) {
    return cli::fail(cmd, Status::invalid_argument("no configuration left: every --replicas value exceeds every --threads value"));
  }
  s.out_dir = cmd.get("out").value_or("nrx-sweep");
  if (Status st = prepare_out_dir(s.out_dir); !st.ok()) return cli::fail(cmd, st);

  const logs::Tsc& tsc = logs::Tsc::get();
  const size_t total = s.configs.size() * s.latencies.size();
  const double per_point = (s.warmup_ms + s.repeat * s.duration_ms) / 1000.0 + 0.05;
  std::fprintf(stderr, "nrx sweep: %s on %s, %zu point%s (%zu configuration%s x %zu latenc%s), about %s\n",
               s.subject.c_str(), s.log.c_str(), total, total == 1 ? "" : "s", s.configs.size(),
               s.configs.size() == 1 ? "" : "s", s.latencies.size(), s.latencies.size() == 1 ? "y" : "ies",
               clock_text(per_point * static_cast<double>(total)).c_str());
  if (!skipped.empty()) {
    std::string list;
    for (const std::string& k : skipped) list += (list.empty() ? "" : ", ") + k;
    std::fprintf(stderr, "nrx sweep: skipped (more replicas than threads): %s\n", list.c_str());
  }
  if (tsc.source() != logs::Tsc::Source::kTsc) std::fprintf(stderr, "nrx sweep: note: %s\n", tsc.note().c_str());

  Progress progress(total, per_point);
  std::vector<PointResult> points;
  size_t done = 0;
  for (const Config& c : s.configs) {
    for (size_t li = 0; li < s.latencies.size(); ++li) {
      const std::string what = c.label + " @ " + s.latencies[li].spec();
      progress.starting(done, what);
      Result<std::vector<Repetition>> reps = subject->run(s, c, s.profile(li));
      if (!reps.ok()) {
        progress.close();
        std::fprintf(stderr, "nrx sweep: point %s failed: %s\n", what.c_str(), reps.status().to_string().c_str());
        return 1;
      }
      points.push_back(sweep::summarise(s, c, li, std::move(*reps)));
      ++done;
      progress.finished(done, what, points.back());
    }
  }
  progress.close();
  sweep::apply_model(s, points);

  const std::string csv = s.out_dir + "/results.csv";
  const std::string json = s.out_dir + "/results.json";
  if (Status st = sweep::write_csv(s, points, csv); !st.ok()) {
    std::fprintf(stderr, "nrx sweep: %s\n", st.message().c_str());
    return 1;
  }
  const sweep::PlotOutcome plots = sweep::write_plots(s, points);
  const double elapsed = progress.elapsed();
  const std::string clock = std::string(tsc.source_name()) + ": " + tsc.note();
  if (Status st = sweep::write_json(s, points, plots, elapsed, clock, json); !st.ok()) {
    std::fprintf(stderr, "nrx sweep: %s\n", st.message().c_str());
    return 1;
  }

  print_table(points);
  bool has_model = false;
  for (const PointResult& p : points) has_model = has_model || p.model.has_value();
  if (!has_model) std::printf("model: needs a 0 ns point in --latency-ns (none given)\n");
  std::printf("results: %s, %s", csv.c_str(), json.c_str());
  for (const std::string& f : plots.files) std::printf(", %s/%s", s.out_dir.c_str(), f.c_str());
  std::printf("\n");
  if (!plots.made) std::fprintf(stderr, "nrx sweep: %s\n", plots.note.c_str());
  std::printf("elapsed %.1f s\n", elapsed);
  // A missing gnuplot is not a failure (CSV and JSON are complete); a gnuplot that failed is.
  const bool gnuplot_missing = plots.note.rfind("PNGs skipped", 0) == 0;
  return plots.made || gnuplot_missing ? 0 : 1;
}

}  // namespace nrx::tools
