// nrx::boot::Sys: what a program running as an nrx process sees of the kernel: the system-call ABI
// (kernel/syscall/nrx_syscall.h; one request struct, inline data, -errno results) and the MMU
// (loads and stores through the core's TLB and the process's replicated page tables). Programs are
// C++ functions run by every kernel core their process holds (NrOS's executors); they reach the
// kernel only through this class, as a user program reaches Linux only through libc's wrappers.
//
// Every call returns the ABI result: >= 0, or -errno. A program whose process is being stopped gets
// -ESRCH from every call and should return.
//
// Thread safety: one Sys per (process, core): used by the core's thread only.
//
//   int hello(nrx::boot::Sys& sys, const nrx::boot::ProgramArgs&) {
//     int64_t ino = sys.open("/hello", NRX_O_CREAT | NRX_O_RDWR);
//     if (ino < 0) return 1;
//     return sys.pwrite(ino, std::as_bytes(std::span("hi", 2)), 0) == 2 ? 0 : 1;
//   }
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "kernel/syscall/nrx_syscall.h"

namespace nrx::boot {

struct ProgramArgs {
  std::chrono::nanoseconds duration = std::chrono::milliseconds(500);  // how long a workload runs
  uint64_t seed = 1;
};

class Sys;
// A program: run once by each kernel core its process holds. Returns the exit status (0..255).
struct Program {
  const char* name;
  const char* summary;
  int (*main)(Sys& sys, const ProgramArgs& args);
};

class Sys {
 public:
  // The kernel side (kernel.cc): one system call, and one MMU access.
  class Backend {
   public:
    virtual ~Backend() = default;
    virtual void syscall(const nrx_request& request, std::span<std::byte> data, nrx_response& response) = 0;
    // Copies |len| bytes between |buf| and [vaddr, vaddr+len) as the core's MMU would; 0 or -EFAULT
    // (a page that is not mapped, or not writable for a store), -ESRCH (the process is stopping).
    virtual int64_t access(uint64_t vaddr, std::byte* buf, uint64_t len, bool write) = 0;
  };

  // |thread| of |threads|: which of the process's cores this is; |node| the core's NUMA node.
  Sys(Backend& backend, uint32_t thread, uint32_t threads, uint32_t node);

  uint32_t thread() const { return thread_; }
  uint32_t threads() const { return threads_; }
  uint32_t node() const { return node_; }

  // The raw call: |request|'s inline arguments are read from data() (nrx_syscall.h's layout);
  // |response| (optional) receives the whole response, result data stays in data().
  int64_t call(const nrx_request& request, nrx_response* response = nullptr);
  std::span<std::byte> data() { return data_; }

  int64_t getpid();
  // Ends the process (every core) with |status| once this program returns; later calls: -ESRCH.
  int64_t exit(uint32_t status);
  int64_t open(std::string_view path, uint32_t flags, uint32_t mode = 0644);
  int64_t close(uint64_t ino);
  int64_t pread(uint64_t ino, std::span<std::byte> out, uint64_t offset);
  int64_t pwrite(uint64_t ino, std::span<const std::byte> in, uint64_t offset);
  int64_t mkdir(std::string_view path, uint32_t mode = 0755);
  int64_t rmdir(std::string_view path);
  int64_t unlink(std::string_view path);
  int64_t rename(std::string_view from, std::string_view to);
  int64_t stat(std::string_view path, nrx_statbuf* out);
  // The number of entries of a directory (readdir, following NRX_READDIR_MORE).
  int64_t count_entries(std::string_view path);
  int64_t mmap(uint64_t vaddr, uint64_t length, uint32_t prot);
  int64_t munmap(uint64_t vaddr, uint64_t length);
  int64_t mprotect(uint64_t vaddr, uint64_t length, uint32_t prot);

  // The MMU (not system calls): 0 or -errno as Backend::access.
  int64_t load(uint64_t vaddr, std::span<std::byte> out) { return backend_.access(vaddr, out.data(), out.size(), false); }
  int64_t store(uint64_t vaddr, std::span<const std::byte> in) {
    return backend_.access(vaddr, const_cast<std::byte*>(in.data()), in.size(), true);
  }

 private:
  int64_t path_call(uint32_t sysno, std::string_view path, std::string_view path2 = {}, uint32_t mode = 0,
                    uint32_t flags = 0, nrx_response* response = nullptr);

  Backend& backend_;
  uint32_t thread_;
  uint32_t threads_;
  uint32_t node_;
  std::vector<std::byte> data_;  // NRX_DATA_CAPACITY bytes: one request's inline arguments
};

}  // namespace nrx::boot
