// `nrx sweep` output (sweep.h): repetition summaries, the throughput model, results.csv,
// results.json, and the gnuplot script and PNGs.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tools/nrx/sweep.h"

extern char** environ;

namespace nrx::tools::sweep {
namespace {

constexpr int kGnuplotTimeoutS = 60;

double median_of(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

Stat stat_of(const std::vector<double>& v) {
  Stat s;
  s.median = median_of(v);
  s.min = s.max = std::nan("");
  for (double x : v) {
    if (std::isnan(x)) continue;
    if (std::isnan(s.min) || x < s.min) s.min = x;
    if (std::isnan(s.max) || x > s.max) s.max = x;
  }
  return s;
}

// A CSV/JSON number: fixed decimals; NaN is "" in CSV and null in JSON.
std::string num(double v, int decimals, const char* missing) {
  if (std::isnan(v) || std::isinf(v)) return missing;
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// The gnuplot form of a string literal (single quotes, doubled inside).
std::string gp_string(const std::string& s) {
  std::string out = "'";
  for (char ch : s) {
    out += ch;
    if (ch == '\'') out += '\'';
  }
  return out + "'";
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f != nullptr) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

Result<File> open_for_writing(const std::string& path) {
  File f(std::fopen(path.c_str(), "w"));
  if (!f) {
    const int e = errno;
    return Status(e == ENOENT ? StatusCode::kNotFound : StatusCode::kPermissionDenied,
                  "cannot write " + path + ": " + std::strerror(e));
  }
  return f;
}

Status close_checked(File f, const std::string& path) {
  const bool bad = std::ferror(f.get()) != 0;
  if (std::fclose(f.release()) != 0 || bad) return Status::internal("error writing " + path);
  return ok_status();
}

}  // namespace

std::string Settings::classes_spec() const {
  std::string s;
  bool all = true;
  for (size_t i = 0; i < logs::kAccessClasses; ++i) {
    all = all && classes[i];
    if (classes[i]) s += (s.empty() ? "" : "+") + std::string(logs::access_name(static_cast<logs::Access>(i)));
  }
  return all ? "all" : s;
}

logs::LatencyProfile Settings::profile(size_t latency_index) const {
  logs::LatencyProfile p;
  p.seed = seed;
  for (size_t i = 0; i < logs::kAccessClasses; ++i) {
    if (classes[i]) p.delays[i] = latencies[latency_index];
  }
  return p;
}

PointResult summarise(const Settings& s, const Config& c, size_t latency_index, std::vector<Repetition> reps) {
  PointResult r;
  r.config = c;
  r.latency_index = latency_index;
  r.latency_spec = s.latencies[latency_index].spec();
  r.latency_ns = s.latencies[latency_index].mean_ns();
  std::vector<double> thr, p50, p99, rp50, rp99, wp50, wp99;
  uint64_t rounds = 0, appended = 0;
  for (const Repetition& x : reps) {
    thr.push_back(x.throughput());
    p50.push_back(x.p50_ns);
    p99.push_back(x.p99_ns);
    rp50.push_back(x.read_p50_ns);
    rp99.push_back(x.read_p99_ns);
    wp50.push_back(x.write_p50_ns);
    wp99.push_back(x.write_p99_ns);
    rounds += x.rounds;
    appended += x.appended;
    r.samples += x.samples;
    r.appenders = std::max(r.appenders, x.appenders);
  }
  r.throughput = stat_of(thr);
  r.p50 = stat_of(p50);
  r.p99 = stat_of(p99);
  r.read_p50 = median_of(rp50);
  r.read_p99 = median_of(rp99);
  r.write_p50 = median_of(wp50);
  r.write_p99 = median_of(wp99);
  r.avg_batch = rounds > 0 ? static_cast<double>(appended) / static_cast<double>(rounds) : std::nan("");
  r.reps = std::move(reps);
  return r;
}

// ---- The model (sweep.h) ----

double model_throughput(const ModelInput& in) {
  if (in.x0 <= 0) return 0;
  auto L = [&](logs::Access a) { return in.latency_ns[static_cast<size_t>(a)] * 1e-9; };  // seconds
  const double b = std::max(in.batch, 1.0);
  const double p = std::max(in.appenders, 1.0);
  const double t = std::max(in.threads, 1.0);
  const double r = std::max(in.replicas, 1.0);
  const double w = std::clamp(in.write_fraction, 0.0, 1.0);
  const double payloads = std::max(in.payloads, 0.0);
  const double per_write = (L(logs::Access::kReserve) + L(logs::Access::kTailUpdate)) / (b * p) +
                           L(logs::Access::kEntryWrite) / p + L(logs::Access::kEntryRead) * r / p +
                           payloads * (L(logs::Access::kEntryWrite) / t + L(logs::Access::kPayloadRead) * r / p);
  const double per_read = L(logs::Access::kCtailRead) / t;
  return 1.0 / (1.0 / in.x0 + w * per_write + (1 - w) * per_read);
}

void apply_model(const Settings& s, std::vector<PointResult>& points) {
  for (PointResult& p : points) {
    const PointResult* zero = nullptr;
    for (const PointResult& q : points) {
      if (q.config.label == p.config.label && q.latency_ns == 0) zero = &q;
    }
    if (zero == nullptr || std::isnan(zero->throughput.median)) continue;
    ModelInput in;
    in.x0 = zero->throughput.median;
    in.write_fraction = p.config.write_pct / 100.0;
    in.batch = std::isnan(p.avg_batch) ? 1.0 : p.avg_batch;
    // P and R as the header says: log threads are their own replicas; fs reports its appliers.
    in.appenders = s.subject == "log" ? p.config.threads : p.appenders > 0 ? p.appenders : p.config.replicas;
    in.threads = p.config.threads;
    in.replicas = s.subject == "log" ? p.config.threads : p.config.replicas;
    in.payloads = s.subject == "fs" ? 1 : 0;
    for (size_t i = 0; i < logs::kAccessClasses; ++i) in.latency_ns[i] = s.classes[i] ? p.latency_ns : 0;
    p.model = model_throughput(in);
  }
}

// ---- results.csv ----

Status write_csv(const Settings& s, const std::vector<PointResult>& points, const std::string& path) {
  NRX_ASSIGN_OR_RETURN(File f, open_for_writing(path));
  std::fputs(
      "subject,log,log_node,config,threads,replicas,write_pct,batch,latency,latency_ns,classes,repeat,"
      "throughput_ops,throughput_min,throughput_max,p50_ns,p50_min_ns,p50_max_ns,p99_ns,p99_min_ns,p99_max_ns,"
      "read_p50_ns,read_p99_ns,write_p50_ns,write_p99_ns,avg_batch,samples,model_ops\n",
      f.get());
  const std::string node = s.log_node < 0 ? "local" : std::to_string(s.log_node);
  for (const PointResult& p : points) {
    std::fprintf(f.get(), "%s,%s,%s,%s,%u,%u,%u,%u,%s,%s,%s,%zu,", s.subject.c_str(), s.log.c_str(), node.c_str(),
                 p.config.label.c_str(), p.config.threads, p.config.replicas, p.config.write_pct, p.config.batch,
                 p.latency_spec.c_str(), num(p.latency_ns, 1, "").c_str(), s.classes_spec().c_str(), p.reps.size());
    std::fprintf(f.get(), "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%" PRIu64 ",%s\n",
                 num(p.throughput.median, 0, "").c_str(), num(p.throughput.min, 0, "").c_str(),
                 num(p.throughput.max, 0, "").c_str(), num(p.p50.median, 1, "").c_str(), num(p.p50.min, 1, "").c_str(),
                 num(p.p50.max, 1, "").c_str(), num(p.p99.median, 1, "").c_str(), num(p.p99.min, 1, "").c_str(),
                 num(p.p99.max, 1, "").c_str(), num(p.read_p50, 1, "").c_str(), num(p.read_p99, 1, "").c_str(),
                 num(p.write_p50, 1, "").c_str(), num(p.write_p99, 1, "").c_str(), num(p.avg_batch, 2, "").c_str(),
                 p.samples, p.model ? num(*p.model, 0, "").c_str() : "");
  }
  return close_checked(std::move(f), path);
}

// ---- results.json ----

Status write_json(const Settings& s, const std::vector<PointResult>& points, const PlotOutcome& plots,
                  double elapsed_s, const std::string& clock, const std::string& path) {
  NRX_ASSIGN_OR_RETURN(File f, open_for_writing(path));
  std::FILE* o = f.get();
  std::fprintf(o, "{\n  \"tool\": \"nrx sweep\",\n  \"subject\": %s,\n  \"log\": %s,\n  \"log_node\": %s,\n",
               json_string(s.subject).c_str(), json_string(s.log).c_str(),
               s.log_node < 0 ? "\"local\"" : std::to_string(s.log_node).c_str());
  std::fprintf(o, "  \"classes\": [");
  bool first = true;
  for (size_t i = 0; i < logs::kAccessClasses; ++i) {
    if (!s.classes[i]) continue;
    std::fprintf(o, "%s%s", first ? "" : ", ", json_string(std::string(logs::access_name(static_cast<logs::Access>(i)))).c_str());
    first = false;
  }
  std::fprintf(o, "],\n  \"settings\": {\"repeat\": %u, \"warmup_ms\": %u, \"duration_ms\": %u, \"keys\": %" PRIu64
               ", \"log_slots\": %u, \"sample_every\": %u, \"seed\": %" PRIu64 "},\n",
               s.repeat, s.warmup_ms, s.duration_ms, s.keys, s.log_slots, s.sample_every, s.seed);
  std::fprintf(o, "  \"clock\": %s,\n  \"model\": %s,\n  \"elapsed_s\": %.2f,\n", json_string(clock).c_str(),
               json_string(kModelFormula).c_str(), elapsed_s);
  std::fprintf(o, "  \"plots\": [");
  for (size_t i = 0; i < plots.files.size(); ++i) std::fprintf(o, "%s%s", i ? ", " : "", json_string(plots.files[i]).c_str());
  std::fprintf(o, "],\n  \"plots_note\": %s,\n  \"points\": [\n", json_string(plots.note).c_str());
  auto stat = [](const Stat& st, int d) {
    return "{\"median\": " + num(st.median, d, "null") + ", \"min\": " + num(st.min, d, "null") +
           ", \"max\": " + num(st.max, d, "null") + "}";
  };
  for (size_t i = 0; i < points.size(); ++i) {
    const PointResult& p = points[i];
    std::fprintf(o,
                 "    {\"config\": %s, \"threads\": %u, \"replicas\": %u, \"write_pct\": %u, \"batch\": %u, "
                 "\"latency\": %s, \"latency_ns\": %s,\n",
                 json_string(p.config.label).c_str(), p.config.threads, p.config.replicas, p.config.write_pct,
                 p.config.batch, json_string(p.latency_spec).c_str(), num(p.latency_ns, 1, "null").c_str());
    std::fprintf(o, "     \"throughput_ops\": %s, \"p50_ns\": %s, \"p99_ns\": %s,\n", stat(p.throughput, 0).c_str(),
                 stat(p.p50, 1).c_str(), stat(p.p99, 1).c_str());
    std::fprintf(o,
                 "     \"read_p50_ns\": %s, \"read_p99_ns\": %s, \"write_p50_ns\": %s, \"write_p99_ns\": %s, "
                 "\"avg_batch\": %s, \"samples\": %" PRIu64 ", \"model_ops\": %s,\n",
                 num(p.read_p50, 1, "null").c_str(), num(p.read_p99, 1, "null").c_str(),
                 num(p.write_p50, 1, "null").c_str(), num(p.write_p99, 1, "null").c_str(),
                 num(p.avg_batch, 2, "null").c_str(), p.samples, p.model ? num(*p.model, 0, "null").c_str() : "null");
    std::fprintf(o, "     \"repetitions\": [");
    for (size_t k = 0; k < p.reps.size(); ++k) {
      const Repetition& r = p.reps[k];
      std::fprintf(o,
                   "%s{\"seconds\": %.4f, \"ops\": %" PRIu64 ", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64
                   ", \"throughput_ops\": %s, \"p50_ns\": %s, \"p99_ns\": %s}",
                   k ? ", " : "", r.seconds, r.ops, r.reads, r.writes, num(r.throughput(), 0, "null").c_str(),
                   num(r.p50_ns, 1, "null").c_str(), num(r.p99_ns, 1, "null").c_str());
    }
    std::fprintf(o, "]}%s\n", i + 1 < points.size() ? "," : "");
  }
  std::fprintf(o, "  ]\n}\n");
  return close_checked(std::move(f), path);
}

// ---- Plots ----

std::string find_program(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + program;
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return "";
}

namespace {

struct Metric {
  const char* file;
  const char* ylabel;
  int column;  // first of median, min, max in the data blocks
  bool model;
};
// Data block columns: 1 x | 2-4 throughput (M ops/s) median, min, max | 5 model | 6-8 p50 | 9-11 p99.
constexpr Metric kMetrics[] = {
    {"throughput.png", "throughput (M ops/s)", 2, true},
    {"p50.png", "p50 latency per operation (ns)", 6, false},
    {"p99.png", "p99 latency per operation (ns)", 9, false},
};

std::string plot_script(const Settings& s, const std::vector<PointResult>& points) {
  std::string gp;
  gp += "# Written by nrx sweep; re-render with: gnuplot plot.gp (in this folder)\n";
  gp += "set terminal pngcairo size 1100,680 noenhanced font 'sans,10'\nset grid\nset key outside right top\n";
  gp += "set xlabel 'injected latency per access (ns, mean; classes: " + s.classes_spec() + ")'\n";
  // x: the swept latencies as tics, with a margin so the 0 ns points sit off the border. y: log,
  // since throughput falls roughly as 1/latency and latencies span orders of magnitude.
  double max_x = 0;
  std::vector<double> xs;
  for (const logs::Delay& d : s.latencies) {
    max_x = std::max(max_x, d.mean_ns());
    if (std::find(xs.begin(), xs.end(), d.mean_ns()) == xs.end()) xs.push_back(d.mean_ns());
  }
  const double margin = std::max(max_x, 1.0) * 0.04;
  gp += "set xrange [" + num(-margin, 1, "0") + ":" + num(max_x + margin, 1, "1") + "]\n";
  if (xs.size() <= 12) {
    gp += "set xtics (";
    for (size_t i = 0; i < xs.size(); ++i) gp += (i ? ", " : "") + num(xs[i], 0, "0");
    gp += ")\n";
  }
  gp += "set logscale y\nset format y '%g'\n";
  // One data block per configuration, rows sorted by injected latency.
  std::vector<std::string> labels;
  for (const Config& c : s.configs) labels.push_back(c.label);
  for (size_t i = 0; i < labels.size(); ++i) {
    std::vector<const PointResult*> rows;
    for (const PointResult& p : points) {
      if (p.config.label == labels[i]) rows.push_back(&p);
    }
    std::stable_sort(rows.begin(), rows.end(),
                     [](const PointResult* a, const PointResult* b) { return a->latency_ns < b->latency_ns; });
    gp += "$c" + std::to_string(i) + " << EOD\n";
    for (const PointResult* p : rows) {
      gp += num(p->latency_ns, 1, "NaN") + " " + num(p->throughput.median / 1e6, 4, "NaN") + " " +
            num(p->throughput.min / 1e6, 4, "NaN") + " " + num(p->throughput.max / 1e6, 4, "NaN") + " " +
            (p->model ? num(*p->model / 1e6, 4, "NaN") : "NaN") + " " + num(p->p50.median, 1, "NaN") + " " +
            num(p->p50.min, 1, "NaN") + " " + num(p->p50.max, 1, "NaN") + " " + num(p->p99.median, 1, "NaN") + " " +
            num(p->p99.min, 1, "NaN") + " " + num(p->p99.max, 1, "NaN") + "\n";
    }
    gp += "EOD\n";
  }
  const std::string subject = "nrx sweep: " + s.subject + " on " + s.log +
                              (s.log_node >= 0 ? " (log on node " + std::to_string(s.log_node) + ")" : "");
  for (const Metric& m : kMetrics) {
    gp += "\nset output " + gp_string(m.file) + "\n";
    gp += "set title " + gp_string(subject + std::string(m.model ? "; dashed: model" : "") +
                                   " (median of " + std::to_string(s.repeat) + ", bars: min-max; log y)") + "\n";
    gp += "set ylabel " + gp_string(m.ylabel) + "\n";
    gp += "plot ";
    for (size_t i = 0; i < labels.size(); ++i) {
      const std::string block = "$c" + std::to_string(i);
      const std::string lc = " lc " + std::to_string(i + 1);
      gp += (i ? ", \\\n     " : "") + block + " using 1:" + std::to_string(m.column) + ":" +
            std::to_string(m.column + 1) + ":" + std::to_string(m.column + 2) + " with yerrorlines pt 7" + lc +
            " title " + gp_string(labels[i]);
      if (m.model) gp += ", \\\n     " + block + " using 1:5 with lines dt 2 lw 1.5" + lc + " notitle";
    }
    if (m.model) gp += ", \\\n     NaN with lines dt 2 lc 'black' title 'model'";
    gp += "\n";
  }
  return gp;
}

// Runs gnuplot on out_dir/plot.gp with out_dir as its working directory; stdout and stderr go to
// out_dir/gnuplot.log. Returns "" on success, else why not.
std::string run_gnuplot(const std::string& gnuplot, const std::string& dir) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addchdir_np(&fa, dir.c_str());
  posix_spawn_file_actions_addopen(&fa, 1, "gnuplot.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::string arg0 = gnuplot, arg1 = "plot.gp";
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, gnuplot.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return "cannot start " + gnuplot + ": " + std::strerror(rc);
  // Bounded wait: poll, and kill gnuplot if it runs past the limit (it takes well under a second).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kGnuplotTimeoutS);
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) return std::string("waitpid on gnuplot failed: ") + std::strerror(errno);
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      (void)waitpid(pid, &status, 0);
      return "gnuplot ran longer than " + std::to_string(kGnuplotTimeoutS) + " s and was stopped";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "gnuplot failed (exit " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + "); see " + dir +
           "/gnuplot.log";
  }
  return "";
}

}  // namespace

PlotOutcome write_plots(const Settings& s, const std::vector<PointResult>& points) {
  PlotOutcome out;
  const std::string script_path = s.out_dir + "/plot.gp";
  Result<File> f = open_for_writing(script_path);
  if (!f.ok()) {
    out.note = f.status().message();
    return out;
  }
  const std::string script = plot_script(s, points);
  std::fputs(script.c_str(), f->get());
  if (Status st = close_checked(std::move(*f), script_path); !st.ok()) {
    out.note = st.message();
    return out;
  }
  if (!s.plots) {
    out.note = "PNGs skipped (--no-plots); plot.gp is written";
    return out;
  }
  const std::string gnuplot = find_program("gnuplot");
  if (gnuplot.empty()) {
    out.note = "PNGs skipped: gnuplot is not installed (Debian package gnuplot-nox; `./nrx setup` installs it); "
               "render later with: cd " + s.out_dir + " && gnuplot plot.gp";
    return out;
  }
  if (std::string why = run_gnuplot(gnuplot, s.out_dir); !why.empty()) {
    out.note = why;
    return out;
  }
  for (const Metric& m : kMetrics) {
    struct stat st;
    const std::string png = s.out_dir + "/" + m.file;
    if (stat(png.c_str(), &st) != 0 || st.st_size == 0) {
      out.note = "gnuplot did not write " + png + "; see " + s.out_dir + "/gnuplot.log";
      return out;
    }
    out.files.push_back(m.file);
  }
  std::remove((s.out_dir + "/gnuplot.log").c_str());  // only kept when something went wrong
  out.made = true;
  return out;
}

}  // namespace nrx::tools::sweep
