// `nrx sweep`: remote-latency sensitivity sweeps. For every point of a grid (subject
// configuration x injected per-access latency) it runs the subject over the latency decorator
// (logs/latency/latency_log.h) on the ring log, with a warm-up and --repeat repetitions, and writes
// results.csv, results.json and one PNG per metric (throughput, p50 and p99 per-op latency, each
// against the injected latency, one line per configuration) with gnuplot. Beside the measurement
// it draws a model of the expected throughput (model_throughput below), so the plot shows where
// batching hides latency and where it stops.
//
// Subjects (every one over LatencyLog<RingLog>; threads are split over replicas, thread t on
// replica t % R, except for log):
//   log      append(batch) + exec, each thread its own replica (as bench_log)
//   hashmap  the NR hash map on Replica; a write is a put, a read a get
//   vmem     NR-vMem (kernel/vmem/vspace.h): each thread a core in its own 1 GiB region; a write
//            maps or unmaps one 4 KiB page (in turn; an unmap includes the TLB shootdown to the
//            other cores), a read is a TLB miss, i.e. translate walks the replica (Resolve)
//   fs       NR-FS (kernel/fs/fs.h, CNR over 4 logs): each thread its own pre-filled file; a write
//            is a 1 KiB pwrite, a read a 1 KiB pread, at random 1 KiB-aligned offsets (fxmark-like)
//
// Files: sweep.cc is the control path (options, grid, progress, orchestration); sweep_run.cc the
// data path (the subjects' measured loops); sweep_report.cc the model, CSV, JSON and plots.
//
// The model. Per point: X0 = the configuration's measured throughput at zero injected latency,
// w = write fraction, b = operations per append (log: the batch; hashmap, vmem: measured, combined
// ops / combiner rounds; fs: not measured, NR-FS keeps its combiners' counters private, so b = 1),
// P = appenders running in parallel (log: threads, each its own replica; hashmap, vmem: replicas,
// one combiner each; fs: (replica, log) pairs that have writers, one CNR combiner each),
// R = replicas, T = threads, p = payloads per write (fs: 1, the pwrite's data; else 0),
// L_c = the mean delay of access class c:
//
//   1/X(L) = 1/X0 + w * ( (L_reserve + L_tail_update) / (b * P)  +  L_write / P  +  L_read * R / P
//                         + p * (L_write / T + L_payload_read * R / P) )
//                 + (1 - w) * L_ctail_read / T
//
// Each append round pays one reserve and one tail update for b operations (batching divides them
// by b), one write per operation, and every replica reads every entry (R reads per operation,
// spread over the P appliers: L_read per operation when P = R). A write carrying a payload also
// writes it (on its own thread) and every replica reads it. NR reads pay one ctail read each, in
// parallel over the threads. So batching hides the per-round costs and stops helping once
// per-entry writes and reads dominate: no batch size hides L_write / P + L_read * R / P. It is a
// first-order model: it assumes the appenders are the bottleneck, that threads do not outnumber
// cores, and that delays add to, rather than overlap with, the zero-latency work. The TLB
// shootdowns of vmem and the data copies of fs are in X0 and are not modelled further.
//
// Thread safety: run on the main thread; the run_* functions start and join their own workers.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "logs/latency/latency_profile.h"

namespace nrx::tools::sweep {

inline constexpr uint32_t kMaxLogBatch = 64;  // log subject: most entries per append

// One line of a plot: a configuration of the subject.
struct Config {
  uint32_t threads = 1;
  uint32_t replicas = 1;    // replicas the threads are split over; log: one per thread
  uint32_t write_pct = 100;  // % of operations that are writes (put, map/unmap, pwrite); log: 100
  uint32_t batch = 0;       // log: entries per append; others: 0 (measured instead)
  std::string label;        // "t2 r1 w10" (hashmap, vmem, fs), "t2 b8" (log)
};

struct Settings {
  std::string subject;  // "log", "hashmap", "vmem" or "fs"
  std::string log = "ring";
  int log_node = -1;      // logs::kNumaLocal, or a NUMA node for the ring's slots
  std::vector<logs::Delay> latencies;  // one per x value, sorted by mean
  std::array<bool, logs::kAccessClasses> classes{};  // which access classes get the delay
  std::vector<Config> configs;
  uint32_t repeat = 3;
  uint32_t warmup_ms = 200;
  uint32_t duration_ms = 400;
  uint64_t keys = 1u << 15;  // hashmap
  uint32_t log_slots = 1u << 14;
  uint32_t sample_every = 8;  // time one operation in this many
  uint64_t seed = 1;
  std::string out_dir;
  bool plots = true;

  std::string classes_spec() const;  // "all", or "reserve+write" (no commas: a CSV field)
  // The profile of one x value: |latencies[i]| on every selected class.
  logs::LatencyProfile profile(size_t latency_index) const;
};

// One measured repetition of one point.
struct Repetition {
  double seconds = 0;
  uint64_t ops = 0;       // reads + writes (vmem: each map and each unmap); log: entries appended
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t rounds = 0;    // append calls (combiner rounds); 0 if unknown
  uint64_t appended = 0;  // operations those rounds carried
  uint64_t samples = 0;   // timed operations
  uint32_t appenders = 0;  // the model's P when the run knows it (fs); 0: the subject's default
  // Per-operation latency percentiles in ns (NaN when no operation of that kind was timed). For
  // the log subject an "operation" is one append(batch) + exec.
  double p50_ns = 0, p99_ns = 0;
  double read_p50_ns = 0, read_p99_ns = 0;
  double write_p50_ns = 0, write_p99_ns = 0;
  double throughput() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
};

struct Stat {
  double median = 0, min = 0, max = 0;
};

struct PointResult {
  Config config;
  size_t latency_index = 0;
  std::string latency_spec;  // canonical (Delay::spec)
  double latency_ns = 0;     // its mean: the x value
  std::vector<Repetition> reps;
  Stat throughput, p50, p99;
  double read_p50 = 0, read_p99 = 0, write_p50 = 0, write_p99 = 0;  // medians over repetitions
  double avg_batch = 0;  // operations per append round (NaN: not measured)
  uint32_t appenders = 0;  // from the repetitions (fs); 0: the subject's default
  uint64_t samples = 0;
  std::optional<double> model;  // expected throughput; none without a zero-latency point
};

// Runs one point: a warm-up of settings.warmup_ms, then settings.repeat repetitions of
// settings.duration_ms. Errors: the log's (creation, a full log that timed out); vmem and fs also
// Memory::create's and the subsystem's own (creation, an operation that failed: kInternal naming it).
Result<std::vector<Repetition>> run_log_point(const Settings& s, const Config& c, const logs::LatencyProfile& p);
Result<std::vector<Repetition>> run_hashmap_point(const Settings& s, const Config& c, const logs::LatencyProfile& p);
Result<std::vector<Repetition>> run_vmem_point(const Settings& s, const Config& c, const logs::LatencyProfile& p);
Result<std::vector<Repetition>> run_fs_point(const Settings& s, const Config& c, const logs::LatencyProfile& p);

// Medians and extremes over the repetitions.
PointResult summarise(const Settings& s, const Config& c, size_t latency_index, std::vector<Repetition> reps);

// ---- The model (header comment) ----

struct ModelInput {
  double x0 = 0;              // ops/s at zero injected latency
  double write_fraction = 1;  // w
  double batch = 1;           // b
  double appenders = 1;       // P
  double threads = 1;         // T
  double replicas = 1;        // R: replicas that read every entry
  double payloads = 0;        // p: payloads per write
  std::array<double, logs::kAccessClasses> latency_ns{};  // mean delay per class (0: none)
};
inline constexpr const char* kModelFormula =
    "1/X = 1/X0 + w*((L_reserve + L_tail_update)/(b*P) + L_write/P + L_read*R/P"
    " + p*(L_write/T + L_payload_read*R/P)) + (1-w)*L_ctail_read/T";
// Expected ops/s; 0 when x0 <= 0.
double model_throughput(const ModelInput& in);
// Fills every point's model from its configuration's zero-latency point (if there is one).
void apply_model(const Settings& s, std::vector<PointResult>& points);

// ---- Output (sweep_report.cc) ----

// Errors: kPermissionDenied / kNotFound naming the file when it cannot be written.
Status write_csv(const Settings& s, const std::vector<PointResult>& points, const std::string& path);

struct PlotOutcome {
  bool made = false;
  std::vector<std::string> files;  // PNG names inside out_dir
  std::string note;                // why the PNGs were skipped or failed (empty when made)
};
// Writes plot.gp into out_dir and runs gnuplot on it (bounded: 60 s). Never fails the sweep on
// its own: the outcome says what happened.
PlotOutcome write_plots(const Settings& s, const std::vector<PointResult>& points);

Status write_json(const Settings& s, const std::vector<PointResult>& points, const PlotOutcome& plots,
                  double elapsed_s, const std::string& clock, const std::string& path);

// The absolute path of |program| on $PATH, or empty.
std::string find_program(const std::string& program);

}  // namespace nrx::tools::sweep
