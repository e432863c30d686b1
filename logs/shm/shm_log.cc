// The coherent shared-memory log: BasicShmLog over CoherentAccess, instantiated once here so
// users of logs/shm/shm_log.h compile none of it (the header declares it `extern template`).
#include "logs/shm/shm_log.h"

#include "logs/shm/internal/shm_log_impl.h"

namespace nrx::logs {

template class BasicShmLog<CoherentAccess>;

}  // namespace nrx::logs
