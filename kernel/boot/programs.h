// The built-in programs of nrx (DESIGN 4, proc): workloads that run as processes on kernel cores
// and reach the kernel only through the system-call API (sys.h). Each runs on every core its
// process holds (thread t of n) until args.duration has passed, checks what it reads back, and
// returns 0, or 1 on a wrong result (a stop, -ESRCH, is not a failure):
//   fsbench   NR-FS: per thread a 1 MiB file of 4 KiB blocks written and read back at pseudo-random
//             offsets; every 32 rounds a file created, listed and unlinked in a shared directory
//   mapbench  NR-vMem: per thread, map 16 pages, store and load through the MMU, make half
//             read-only (a store there must fault), unmap (a TLB shootdown on the process's other
//             cores; a load must then fault)
//   kv        a key-value store on NR-FS (one file per key under /kv) with read-your-writes: each
//             thread puts, gets and deletes its own keys and remembers their values in an mmap'd
//             table, checked on every get
//
//   const Program* p = find_program("kv");
//   kernel->spawn(*p, image, {.args = {.duration = 1s}});
#pragma once

#include <span>
#include <string_view>

#include "kernel/boot/sys.h"

namespace nrx::boot {

std::span<const Program> builtin_programs();
// nullptr if there is no such program.
const Program* find_program(std::string_view name);

}  // namespace nrx::boot
