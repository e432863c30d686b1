#include "logs/latency/latency_log.h"

namespace nrx::logs {

template class LatencyLog<Log>;

Result<std::unique_ptr<Log>> make_latency_log(std::unique_ptr<Log> inner, LatencyProfile profile) {
  NRX_ASSIGN_OR_RETURN(std::unique_ptr<LatencyLog<Log>> log, LatencyLog<Log>::create(std::move(inner), std::move(profile)));
  return std::unique_ptr<Log>(std::move(log));
}

}  // namespace nrx::logs
