#include "tools/bench/bench_support.h"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

namespace nrx::bench {
namespace {

using Run = benchmark::BenchmarkReporter::Run;

// Decorates a console/JSON/CSV reporter: adds the ratio counters to each run, then forwards it.
// Runs arrive in the order they ran, so a baseline is recorded before the cases compared with it.
class RatioReporter final : public benchmark::BenchmarkReporter {
 public:
  RatioReporter(benchmark::BenchmarkReporter* inner, std::vector<RatioSpec> specs)
      : inner_(inner), specs_(std::move(specs)) {}

  bool ReportContext(const Context& context) override {
    forward_streams();
    return inner_->ReportContext(context);
  }

  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> annotated = runs;
    for (Run& run : annotated) annotate(run);
    forward_streams();
    inner_->ReportRuns(annotated);
  }

  void Finalize() override {
    forward_streams();
    inner_->Finalize();
  }

 private:
  // Google Benchmark points the streams of the reporter it was given (this one) at stdout or at
  // the --benchmark_out file; the wrapped reporter must write to the same place.
  void forward_streams() {
    inner_->SetOutputStream(&GetOutputStream());
    inner_->SetErrorStream(&GetErrorStream());
  }

  // The configuration a case shares with its baseline: arguments minus the variant-only ones,
  // threads, and which repetition or aggregate this run is.
  static std::string config_key(const Run& run, const RatioSpec& spec) {
    std::string key;
    std::string_view args = run.run_name.args;
    while (!args.empty()) {
      const size_t slash = args.find('/');
      const std::string_view part = args.substr(0, slash);
      const std::string_view name = part.substr(0, part.find(':'));
      if (std::find(spec.ignored_args.begin(), spec.ignored_args.end(), name) == spec.ignored_args.end()) {
        key.append(part).push_back('/');
      }
      args = slash == std::string_view::npos ? std::string_view{} : args.substr(slash + 1);
    }
    key += "threads:" + std::to_string(run.threads);
    key += run.run_type == Run::RT_Aggregate ? "|" + run.aggregate_name : "|rep:" + std::to_string(run.repetition_index);
    return key;
  }

  static bool is_time(const RatioSpec& spec) { return spec.metric == "real_time" || spec.metric == "cpu_time"; }

  // The compared quantity; for a time, seconds per iteration.
  static std::optional<double> metric(const Run& run, const RatioSpec& spec) {
    if (is_time(spec)) {
      if (run.iterations == 0) return std::nullopt;
      const double t = spec.metric == "real_time" ? run.GetAdjustedRealTime() : run.GetAdjustedCPUTime();
      return t / benchmark::GetTimeUnitMultiplier(run.time_unit);
    }
    auto it = run.counters.find(spec.metric);
    if (it == run.counters.end()) return std::nullopt;
    return static_cast<double>(it->second);
  }

  void annotate(Run& run) {
    if (run.error_occurred) return;
    // A ratio of standard deviations or of coefficients of variation means nothing.
    if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "mean" && run.aggregate_name != "median") return;
    const std::string& name = run.run_name.function_name;
    for (const RatioSpec& spec : specs_) {
      if (name.compare(0, spec.prefix.size(), spec.prefix) != 0) continue;
      const std::optional<double> value = metric(run, spec);
      if (!value) continue;
      if (is_time(spec)) run.counters["ns_per_op"] = *value * 1e9;
      const std::string key = spec.counter + "|" + config_key(run, spec);
      if (name == spec.baseline) {
        baselines_[key] = *value;
        run.counters[spec.counter] = 1.0;
        continue;
      }
      auto base = baselines_.find(key);
      if (base != baselines_.end() && base->second > 0) run.counters[spec.counter] = *value / base->second;
    }
  }

  benchmark::BenchmarkReporter* const inner_;
  const std::vector<RatioSpec> specs_;
  std::map<std::string, double> baselines_;
};

// The value of Google Benchmark flag |name| as it will parse it: the last --name=value (or
// -name=value) on the command line, else the environment variable NAME, else |fallback|.
std::string flag_value(int argc, char** argv, std::string_view name, const char* env, std::string fallback) {
  std::string value = std::move(fallback);
  if (const char* e = std::getenv(env); e != nullptr) value = e;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a.starts_with("--")) {
      a.remove_prefix(2);
    } else if (a.starts_with("-")) {
      a.remove_prefix(1);
    } else {
      continue;
    }
    if (a.starts_with(name) && a.size() > name.size() && a[name.size()] == '=') value = a.substr(name.size() + 1);
  }
  return value;
}

}  // namespace

std::vector<int> thread_counts() {
  const int n = std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  constexpr int kDenseUpTo = 8;
  std::vector<int> counts;
  for (int t = 1; t <= n; t = t < kDenseUpTo ? t + 1 : t * 2) counts.push_back(t);
  if (counts.back() != n) counts.push_back(n);
  return counts;
}

int run_benchmarks(int argc, char** argv, std::vector<RatioSpec> ratios) {
  // Read before Initialize, which removes the flags it recognises from argv.
  const std::string out_file = flag_value(argc, argv, "benchmark_out", "BENCHMARK_OUT", "");
  const std::string out_format = flag_value(argc, argv, "benchmark_out_format", "BENCHMARK_OUT_FORMAT", "json");

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  // The display reporter honours --benchmark_format and --benchmark_color; owned by the library.
  RatioReporter display(benchmark::CreateDefaultDisplayReporter(), ratios);
  std::unique_ptr<benchmark::BenchmarkReporter> file_inner;
  if (!out_file.empty()) {
    if (out_format == "json") {
      file_inner = std::make_unique<benchmark::JSONReporter>();
    } else if (out_format == "console") {
      file_inner = std::make_unique<benchmark::ConsoleReporter>(benchmark::ConsoleReporter::OO_None);
    } else if (out_format == "csv") {
      BENCHMARK_DISABLE_DEPRECATED_WARNING
      file_inner = std::make_unique<benchmark::CSVReporter>();
      BENCHMARK_RESTORE_DEPRECATED_WARNING
    }
    // Any other format: no file reporter of ours, and Google Benchmark reports the bad flag.
  }
  std::optional<RatioReporter> file;
  if (file_inner) file.emplace(file_inner.get(), ratios);

  benchmark::RunSpecifiedBenchmarks(&display, file ? &*file : nullptr);
  benchmark::Shutdown();
  return 0;
}

}  // namespace nrx::bench
