// FileSystem<logs::RingLog>: NR-FS over the local ring log, the single-box kernel's backend; and
// FileSystem<logs::ShmLog>: over shared-memory logs, for kernels that share NR-FS across processes
// (`nrx boot --log shm`); and FileSystem<logs::RdmaLog>: over RDMA logs (`--log rdma`).
#include "kernel/fs/fs_impl.h"
#include "logs/rdma/rdma_log.h"
#include "logs/ring/ring_log.h"
#include "logs/shm/shm_log.h"

namespace nrx::fs {

template class FileSystem<logs::RingLog>;
template class FileSystem<logs::ShmLog>;
template class FileSystem<logs::RdmaLog>;

}  // namespace nrx::fs
