// The logbench workload of `nrx cluster run` (see logbench.cc).
#pragma once

#include <cstdint>
#include <functional>

#include "base/status.h"
#include "kernel/boot/kernel.h"

namespace nrx::tools {

struct LogBenchResult {
  double shm_ops_per_s = 0;   // entries appended per second by this machine on the shared log
  double ring_ops_per_s = 0;  // the same loop on a local ring log (the baseline)
  uint64_t digest = 0;        // of every entry in log order: equal on every machine
  uint64_t entries = 0;       // the shared log's length
  uint64_t appended = 0;      // by this machine
};

// Runs on one machine of a run: |placement| names the region and this machine's number (machine 0
// formats it and creates the log, then calls |formatted|). |noncoherent|: the log runs in its
// noncoherent mode (a sequencer on machine 0; client slot = machine number). |lost| is polled while
// waiting for the other machines; |before_close| runs with the log still open once this machine is
// done (the controller's barrier: machine 0's sequencer must outlive every other machine's use).
// Errors: the region's and the log's; kDeadlineExceeded (another machine never joined or finished
// within 2 minutes); kAborted (|lost| turned true).
Result<LogBenchResult> run_logbench(const boot::ShmPlacement& placement, bool noncoherent, double seconds,
                                    const std::function<bool()>& lost, const std::function<void()>& formatted,
                                    const std::function<Status()>& before_close);

}  // namespace nrx::tools
