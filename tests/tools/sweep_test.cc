// `nrx sweep` end to end (tools/nrx/sweep.h): the built nrx binary (NRX_BINARY) runs tiny grids of
// every subject (log, hashmap, vmem, fs) into a temporary folder, and the test checks that
// results.csv has its header and one row per point, that results.json is well-formed JSON with the
// expected keys, and that every PNG starts with the PNG signature; bad input exits 2 with one line
// on stderr. Also the throughput model.
//
// Every run is bounded: the grids take well under a second of measuring, and a child that
// outlives kRunTimeout is killed and reported.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tools/nrx/sweep.h"

extern char** environ;

namespace nrx::tools::sweep {
namespace {

constexpr auto kRunTimeout = std::chrono::seconds(180);

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) out.push_back(line);
  return out;
}

size_t fields(const std::string& csv_line) { return static_cast<size_t>(std::count(csv_line.begin(), csv_line.end(), ',')) + 1; }

// A temporary folder, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/nrx-sweep-test-XXXXXX";
    NRX_CHECK(mkdtemp(name) != nullptr, "mkdtemp failed");
    path_ = name;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `nrx sweep ARGS` with stdout and stderr captured in files under |dir|. The grids below use
// two threads, so the sanitizer builds see replicas, combiners and the lagging hook at work (and,
// for vmem, TLB shootdowns between two cores).
RunResult run_sweep(const std::vector<std::string>& args, const std::string& dir) {
  std::vector<std::string> all = {NRX_BINARY, "sweep"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string out_path = dir + "/stdout.txt", err_path = dir + "/stderr.txt";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  RunResult r;
  const int rc = posix_spawn(&pid, NRX_BINARY, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = "posix_spawn failed";
    return r;
  }
  const auto deadline = std::chrono::steady_clock::now() + kRunTimeout;
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      (void)waitpid(pid, &status, 0);
      r.err = "nrx sweep ran past the test's time limit and was killed";
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the child, with a deadline
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out_path);
  r.err = read_file(err_path);
  return r;
}

// A strict JSON syntax check (RFC 8259 grammar; no duplicate-key or number-range checks).
class JsonChecker {
 public:
  explicit JsonChecker(const std::string& text) : s_(text) {}
  bool valid() {
    skip_ws();
    if (!value()) return false;
    skip_ws();
    return i_ == s_.size();
  }
  size_t where() const { return i_; }

 private:
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool literal(const char* word) {
    const std::string w(word);
    if (s_.compare(i_, w.size(), w) != 0) return false;
    i_ += w.size();
    return true;
  }
  bool string() {
    if (i_ >= s_.size() || s_[i_] != '"') return false;
    for (++i_; i_ < s_.size(); ++i_) {
      const auto c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        if (++i_ >= s_.size()) return false;
        const char e = s_[i_];
        if (e == 'u') {
          for (int k = 0; k < 4; ++k) {
            if (++i_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) return false;
          }
        } else if (std::string("\"\\/bfnrt").find(e) == std::string::npos) {
          return false;
        }
      }
    }
    return false;
  }
  bool digits() {
    const size_t start = i_;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
    return i_ > start;
  }
  bool number() {
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (i_ < s_.size() && s_[i_] == '0') {
      ++i_;
    } else if (!digits()) {
      return false;
    }
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (!digits()) return false;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digits()) return false;
    }
    return true;
  }
  bool value() {
    if (i_ >= s_.size()) return false;
    switch (s_[i_]) {
      case '{': return object();
      case '[': return array();
      case '"': return string();
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }
  bool object() {
    ++i_;
    skip_ws();
    if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
    for (;;) {
      skip_ws();
      if (!string()) return false;
      skip_ws();
      if (i_ >= s_.size() || s_[i_++] != ':') return false;
      skip_ws();
      if (!value()) return false;
      skip_ws();
      if (i_ >= s_.size()) return false;
      if (s_[i_] == '}') return ++i_, true;
      if (s_[i_++] != ',') return false;
    }
  }
  bool array() {
    ++i_;
    skip_ws();
    if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
    for (;;) {
      skip_ws();
      if (!value()) return false;
      skip_ws();
      if (i_ >= s_.size()) return false;
      if (s_[i_] == ']') return ++i_, true;
      if (s_[i_++] != ',') return false;
    }
  }

  const std::string& s_;
  size_t i_ = 0;
};

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

constexpr const char* kCsvHeader =
    "subject,log,log_node,config,threads,replicas,write_pct,batch,latency,latency_ns,classes,repeat,"
    "throughput_ops,throughput_min,throughput_max,p50_ns,p50_min_ns,p50_max_ns,p99_ns,p99_min_ns,p99_max_ns,"
    "read_p50_ns,read_p99_ns,write_p50_ns,write_p99_ns,avg_batch,samples,model_ops";

// Checks results.csv and results.json in |out| for |points| points of |subject|.
void check_results(const std::string& out, const std::string& subject, size_t points) {
  const std::vector<std::string> csv = lines_of(read_file(out + "/results.csv"));
  ASSERT_EQ(csv.size(), points + 1) << "results.csv: header plus one row per point";
  EXPECT_EQ(csv[0], kCsvHeader);
  for (size_t i = 1; i < csv.size(); ++i) {
    EXPECT_EQ(fields(csv[i]), fields(csv[0])) << "row " << i << ": " << csv[i];
    EXPECT_EQ(csv[i].rfind(subject + ",ring,local,", 0), 0u) << csv[i];
  }
  // The zero-latency row carries the model (it equals the measurement there).
  EXPECT_NE(csv[1].find(",none,0.0,"), std::string::npos) << csv[1];
  EXPECT_NE(csv[1].back(), ',') << "model_ops is empty in the zero-latency row: " << csv[1];

  const std::string json = read_file(out + "/results.json");
  JsonChecker checker(json);
  EXPECT_TRUE(checker.valid()) << "results.json is not valid JSON near byte " << checker.where() << ":\n" << json;
  for (const char* key : {"\"tool\"", "\"subject\"", "\"classes\"", "\"settings\"", "\"clock\"", "\"model\"",
                          "\"elapsed_s\"", "\"plots\"", "\"points\"", "\"throughput_ops\"", "\"p50_ns\"", "\"p99_ns\"",
                          "\"avg_batch\"", "\"model_ops\"", "\"repetitions\""}) {
    EXPECT_NE(json.find(key), std::string::npos) << "results.json lacks " << key;
  }
  EXPECT_NE(json.find("\"subject\": \"" + subject + "\""), std::string::npos);
  EXPECT_EQ(count_of(json, "\"config\":"), points);
}

bool is_png(const std::string& path) {
  const std::string bytes = read_file(path);
  return bytes.size() > 8 && bytes.compare(0, 8, std::string("\x89PNG\r\n\x1a\n", 8)) == 0;
}

TEST(SweepTest, TinyHashmapGridWritesCsvJsonAndPngs) {
  ASSERT_FALSE(find_program("gnuplot").empty())
      << "gnuplot is not on PATH: install the Debian package gnuplot-nox (./nrx setup does)";
  TempDir tmp;
  const std::string out = tmp.path() + "/out";
  const RunResult r = run_sweep({"--subject", "hashmap", "--latency-ns", "0,200", "--threads", "2", "--replicas", "2",
                                 "--write-ratio", "50", "--keys", "1024", "--repeat", "1", "--warmup-ms", "5",
                                 "--duration-ms", "30", "--out", out},
                                tmp.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  check_results(out, "hashmap", 2);
  for (const char* png : {"throughput.png", "p50.png", "p99.png"}) {
    EXPECT_TRUE(is_png(out + "/" + png)) << png << " missing or not a PNG; stderr:\n" << r.err;
  }
  EXPECT_TRUE(std::filesystem::exists(out + "/plot.gp"));
  EXPECT_NE(r.out.find("elapsed"), std::string::npos) << r.out;
}

TEST(SweepTest, TinyLogGridWithADistribution) {
  TempDir tmp;
  const std::string out = tmp.path() + "/out";
  const RunResult r = run_sweep({"--subject", "log", "--latency-ns", "uniform:50:150,0", "--threads", "2", "--batch",
                                 "8", "--repeat", "2", "--warmup-ms", "5", "--duration-ms", "20", "--no-plots", "--out",
                                 out},
                                tmp.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  check_results(out, "log", 2);  // sorted by mean: the 0 ns point comes first
  const std::vector<std::string> csv = lines_of(read_file(out + "/results.csv"));
  EXPECT_NE(csv[2].find(",uniform:50:150,100.0,"), std::string::npos) << csv[2];
  EXPECT_TRUE(std::filesystem::exists(out + "/plot.gp"));
  EXPECT_FALSE(std::filesystem::exists(out + "/throughput.png")) << "--no-plots ran gnuplot";
  EXPECT_NE(r.err.find("PNGs skipped"), std::string::npos) << r.err;
}

// Every PNG of a run with plots.
void check_pngs(const std::string& out, const RunResult& r) {
  for (const char* png : {"throughput.png", "p50.png", "p99.png"}) {
    EXPECT_TRUE(is_png(out + "/" + png)) << png << " missing or not a PNG; stderr:\n" << r.err;
  }
  EXPECT_TRUE(std::filesystem::exists(out + "/plot.gp"));
}

// The JSON "reads" and "writes" of every repetition: both kinds ran (a 50% write ratio).
void check_reads_and_writes(const std::string& out) {
  const std::string json = read_file(out + "/results.json");
  EXPECT_EQ(json.find("\"reads\": 0,"), std::string::npos) << "a repetition ran no reads:\n" << json;
  EXPECT_EQ(json.find("\"writes\": 0,"), std::string::npos) << "a repetition ran no writes:\n" << json;
}

// Two cores on two replicas map, unmap (shooting down each other's TLB) and Resolve.
TEST(SweepTest, TinyVmemGridWritesCsvJsonAndPngs) {
  ASSERT_FALSE(find_program("gnuplot").empty())
      << "gnuplot is not on PATH: install the Debian package gnuplot-nox (./nrx setup does)";
  TempDir tmp;
  const std::string out = tmp.path() + "/out";
  const RunResult r = run_sweep({"--subject", "vmem", "--latency-ns", "0,200", "--threads", "2", "--replicas", "1,2",
                                 "--write-ratio", "50", "--repeat", "1", "--warmup-ms", "5", "--duration-ms", "30",
                                 "--out", out},
                                tmp.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  check_results(out, "vmem", 4);
  check_pngs(out, r);
  check_reads_and_writes(out);
  // Combining is measured: every row has its operations per append round.
  const std::vector<std::string> csv = lines_of(read_file(out + "/results.csv"));
  for (size_t i = 1; i < csv.size(); ++i) {
    EXPECT_EQ(csv[i].find(",,"), std::string::npos) << "an empty field: " << csv[i];
  }
}

// Two threads, each on its own file, over two replicas and 4 CNR logs.
TEST(SweepTest, TinyFsGridWritesCsvJsonAndPngs) {
  ASSERT_FALSE(find_program("gnuplot").empty())
      << "gnuplot is not on PATH: install the Debian package gnuplot-nox (./nrx setup does)";
  TempDir tmp;
  const std::string out = tmp.path() + "/out";
  const RunResult r = run_sweep({"--subject", "fs", "--latency-ns", "0,200", "--threads", "2", "--replicas", "2",
                                 "--write-ratio", "50", "--repeat", "1", "--warmup-ms", "5", "--duration-ms", "30",
                                 "--out", out},
                                tmp.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  check_results(out, "fs", 2);
  check_pngs(out, r);
  check_reads_and_writes(out);
}

// Each bad input exits 2 with one line on stderr that says what is wrong.
TEST(SweepTest, BadInputExitsTwoWithOneLine) {
  TempDir tmp;
  const std::string file = tmp.path() + "/a-file";
  std::ofstream(file) << "x";
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--subject", "nope"}, "unknown subject 'nope'"},
      {{"--log", "shm"}, "--log shm needs the shm backend"},
      {{"--subject", "fs", "--log", "shm"}, "--log shm needs the shm backend"},
      {{"--log", "rdma"}, "unknown log backend 'rdma'"},
      {{"--threads", ""}, "--threads needs at least one value"},
      {{"--threads", "1,,2"}, "empty item"},
      {{"--threads", "0"}, "--threads values must be"},
      {{"--latency-ns", ""}, "--latency-ns needs at least one value"},
      {{"--latency-ns", "0,,100"}, "empty item"},
      {{"--latency-ns", "-5"}, "not a whole number"},
      {{"--latency-ns", "uniform:9:1"}, "is empty"},
      {{"--write-ratio", "101"}, "--write-ratio values must be"},
      {{"--threads", "1", "--replicas", "2"}, "no configuration left"},
      {{"--subject", "log", "--replicas", "2"}, "do not apply to --subject log"},
      {{"--subject", "hashmap", "--batch", "8"}, "log only"},
      {{"--subject", "vmem", "--batch", "8"}, "log only"},
      {{"--subject", "fs", "--keys", "100"}, "--keys applies to --subject hashmap only"},
      {{"--subject", "vmem", "--keys", "100"}, "--keys applies to --subject hashmap only"},
      {{"--subject", "vmem", "--threads", "130", "--replicas", "2"}, "at most 64 threads per replica"},
      {{"--classes", "bogus"}, "unknown access class 'bogus'"},
      {{"--log-node", "999"}, "--log-node 999"},
      {{"--log-slots", "1000"}, "power of two"},
      {{"--repeat", "0"}, "--repeat must be between"},
      {{"--out", file + "/sub"}, "--out"},
      {{"--bogus"}, "unknown option '--bogus'"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = c.args;
    if (std::find(args.begin(), args.end(), "--out") == args.end()) {
      args.insert(args.end(), {"--out", tmp.path() + "/never"});
    }
    const RunResult r = run_sweep(args, tmp.path());
    std::string what;
    for (const std::string& a : c.args) what += a + " ";
    EXPECT_EQ(r.exit_code, 2) << what << "\nstderr: " << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << what << "\nstderr: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << "\nstderr: " << r.err;
    EXPECT_FALSE(std::filesystem::exists(tmp.path() + "/never/results.csv")) << what;
  }
}

TEST(SweepTest, HelpListsSubjectsDefaultsAndTheModel) {
  TempDir tmp;
  const RunResult r = run_sweep({"--help"}, tmp.path());
  ASSERT_EQ(r.exit_code, 0);
  for (const char* text : {"--subject S", "log, hashmap, vmem, fs", "(default: 0,100,400,1600)", "--repeat N",
                           "(default: 3)", "--log-node N", "TLB", "pwrite", kModelFormula}) {
    EXPECT_NE(r.out.find(text), std::string::npos) << "--help lacks '" << text << "'";
  }
  EXPECT_EQ(r.out.find("(not built yet)"), std::string::npos) << "every subject is built now";
}

// ---- The model (sweep.h) ----

ModelInput all_classes(double x0, double w, double b, double p, double t, double latency_ns) {
  ModelInput in;
  in.x0 = x0;
  in.write_fraction = w;
  in.batch = b;
  in.appenders = p;
  in.threads = t;
  in.latency_ns.fill(latency_ns);
  return in;
}

TEST(SweepModelTest, ZeroLatencyIsTheMeasurement) {
  EXPECT_DOUBLE_EQ(model_throughput(all_classes(5e6, 0.3, 4, 2, 4, 0)), 5e6);
  EXPECT_EQ(model_throughput(all_classes(0, 0.3, 4, 2, 4, 100)), 0);
}

TEST(SweepModelTest, BatchingHidesPerRoundCostsOnly) {
  // All writes, one appender, 100 ns per access: per op 200/b ns of reserve + tail update, 100 ns
  // write, 100 ns read, on top of 1/X0 = 100 ns.
  const double b1 = model_throughput(all_classes(1e7, 1, 1, 1, 1, 100));
  const double b8 = model_throughput(all_classes(1e7, 1, 8, 1, 1, 100));
  const double b1000 = model_throughput(all_classes(1e7, 1, 1000, 1, 1, 100));
  EXPECT_NEAR(1e9 / b1, 100 + 200 + 100 + 100, 1e-6);
  EXPECT_NEAR(1e9 / b8, 100 + 25 + 100 + 100, 1e-6);
  EXPECT_GT(b8, b1);
  // However large the batch, per-entry writes and reads remain: the curve flattens at 300 ns/op.
  EXPECT_NEAR(1e9 / b1000, 300, 0.3);
  // Reads pay only the ctail read, spread over the threads.
  ModelInput reads = all_classes(1e7, 0, 1, 1, 4, 0);
  reads.latency_ns[static_cast<size_t>(logs::Access::kCtailRead)] = 400;
  EXPECT_NEAR(1e9 / model_throughput(reads), 100 + 100, 1e-6);
}

TEST(SweepModelTest, PayloadsAndReplicasAddTheirTerms) {
  // fs-like: all writes, b = 1, P = 2 appliers, R = 2 replicas, T = 2 threads, 100 ns per access.
  ModelInput in = all_classes(1e7, 1, 1, 2, 2, 100);
  in.replicas = 2;
  // Per op: 200/2 (reserve + tail update) + 100/2 (write) + 100*2/2 (every replica reads it) = 250 ns.
  EXPECT_NEAR(1e9 / model_throughput(in), 100 + 250, 1e-6);
  // One payload per write: written once on its thread (100/2), read by every replica (100*2/2).
  in.payloads = 1;
  EXPECT_NEAR(1e9 / model_throughput(in), 100 + 250 + 150, 1e-6);
  // Two replicas x two CNR logs: four appliers share the per-round work and the replicas' reads.
  in.appenders = 4;
  EXPECT_NEAR(1e9 / model_throughput(in), 100 + (50 + 25 + 50) + (50 + 50), 1e-6);
}

}  // namespace
}  // namespace nrx::tools::sweep
