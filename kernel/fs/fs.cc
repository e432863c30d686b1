// FileSystem<logs::RingLog>: NR-FS over the local ring log, the single-box kernel's backend; and
// FileSystem<logs::ShmLog>: over shared-memory logs, for kernels that share NR-FS across processes
// (`nrx boot --log shm`).
#include "kernel/fs/fs_impl.h"
#include "logs/ring/ring_log.h"
#include "logs/shm/shm_log.h"

namespace nrx::fs {

template class FileSystem<logs::RingLog>;
template class FileSystem<logs::ShmLog>;

}  // namespace nrx::fs
