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

#include "tests/tools/nrx_runner.h"
#include "tools/nrx/sweep.h"

extern char** environ;

namespace nrx::tools::sweep {
namespace {

using test::JsonChecker;
using test::read_file;
using test::RunResult;
using test::TempDir;

constexpr auto kRunTimeout = std::chrono::seconds(180);

// Runs `nrx sweep ARGS` with stdout and stderr captured in files under |dir|. The grids below use
// two threads, so the sanitizer builds see replicas, combiners and the lagging hook at work (and,
// for vmem, TLB shootdowns between two cores).
RunResult run_sweep(const std::vector<std::string>& args, const std::string& dir) {
  std::vector<std::string> all = {"sweep"};
  all.insert(all.end(), args.begin(), args.end());
  return test::run_nrx(all, dir, kRunTimeout);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) out.push_back(line);
  return out;
}

size_t fields(const std::string& csv_line) { return static_cast<size_t>(std::count(csv_line.begin(), csv_line.end(), ',')) + 1; }


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
  // Every field is filled, except that a point starved of CPU (shootdowns wait for the other core
  // to be scheduled) may have too few samples to have both reads and writes among them: then its
  // read_* or write_* percentiles (fields 21..24) are empty, honestly.
  for (size_t i = 1; i < csv.size(); ++i) {
    std::vector<std::string> f;
    std::stringstream ss(csv[i]);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    if (csv[i].back() == ',') f.push_back("");
    ASSERT_EQ(f.size(), 28u) << csv[i];
    const bool few_samples = !f[26].empty() && std::stoull(f[26]) < 20;
    for (size_t k = 0; k < f.size(); ++k) {
      if (few_samples && k >= 21 && k <= 24) continue;
      EXPECT_FALSE(f[k].empty()) << "empty field " << k << ": " << csv[i];
    }
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
