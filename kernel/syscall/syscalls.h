// nrx::syscall::execute(): the in-process system-call dispatcher. It runs one ABI request
// (kernel/syscall/nrx_syscall.h) against NR-FS (fs::FileSystem<>) and fills the ABI response.
//
// This is the boundary (STYLE.md, Errors): a request comes from another process, through shared
// memory, so execute() trusts nothing in it. It checks the number (ENOSYS), that every field the
// call does not read is 0 and every reserved field is 0 (EINVAL), that inline arguments lie inside
// |data| (EFAULT), paths (empty ENOENT, relative or with an embedded NUL EINVAL, over kPathMax or
// with a component over kNameMax ENAMETOOLONG), flags and modes (EINVAL), offsets and sizes beyond
// INT64_MAX (EINVAL); it clamps pread/pwrite to fs::kMaxIo; everything else NR-FS answers itself
// (".." above the root is its EINVAL). Bad input yields an error response: never a crash, an
// assert, or undefined behaviour. Paths are copied out of |data| before they are checked, so a
// client that rewrites its buffer mid-call cannot change what was validated.
//
// Thread safety: as FileSystem's: concurrent calls are fine, each with its own Handle (a Handle
// belongs to one thread at a time). |request| and |response| are the caller's private copies;
// |data| may be shared memory.
//
//   nrx_request req{};  nrx_response resp{};
//   std::vector<std::byte> data(NRX_DATA_CAPACITY);
//   req.sysno = NRX_SYS_MKDIR;  req.mode = 0755;  req.path_len = 2;
//   std::memcpy(data.data(), "/d", 2);
//   syscall::execute(*fs, handle, req, data, resp);   // resp.result == 0 or -errno
#pragma once

#include <cstddef>
#include <span>

#include "kernel/fs/fs.h"
#include "kernel/syscall/nrx_syscall.h"

namespace nrx::syscall {

// The process and memory calls (getpid, exit, mmap, munmap, mprotect) of a program running as an
// nrx process: the kernel that runs it implements them (kernel/boot/kernel.h). Each is called with
// arguments already checked against the ABI's field rules (unused fields 0, prot bits known, the
// exit status 0..255); the rest (alignment, the user half) is the implementation's. Each returns
// the call's result: >= 0, or -errno.
class ProcessCalls {
 public:
  virtual ~ProcessCalls() = default;
  virtual int64_t getpid() = 0;
  virtual int64_t exit(uint32_t status) = 0;
  virtual int64_t mmap(uint64_t vaddr, uint64_t length, uint32_t prot) = 0;
  virtual int64_t munmap(uint64_t vaddr, uint64_t length) = 0;
  virtual int64_t mprotect(uint64_t vaddr, uint64_t length, uint32_t prot) = 0;
};

// Executes |request| with |h| on |fs|. Reads inline arguments from |data| and writes result data
// (pread's bytes, readdir's records) into it; |response| is overwritten entirely. Errors are in
// response.result as -errno (nrx_syscall.h lists them).
// |process| serves the process and memory calls; without one (the channel, tools) they are ENOSYS.
// L: the log backend NR-FS runs on (instantiated for logs::RingLog and logs::ShmLog).
template <typename L>
void execute(fs::FileSystem<L>& fs, fs::Handle& h, const nrx_request& request, std::span<std::byte> data,
             nrx_response& response, ProcessCalls* process = nullptr);

// "open", "pread", ...: the name of syscall number |sysno| ("unknown" outside the table).
const char* syscall_name(uint32_t sysno);

}  // namespace nrx::syscall
