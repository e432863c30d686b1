// FileSystem<logs::RingLog>: NR-FS over the local ring log, the single-box kernel's backend.
#include "kernel/fs/fs_impl.h"
#include "logs/ring/ring_log.h"

namespace nrx::fs {

template class FileSystem<logs::RingLog>;

}  // namespace nrx::fs
