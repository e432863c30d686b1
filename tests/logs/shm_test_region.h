// Shared-memory regions for the shm log's tests: a memfd or a /dev/shm file, mapped MAP_SHARED,
// owned by a MappedRegion (munmap, close and, for a file it created, unlink on destruction). The
// test binaries and the multi-process worker (shm_log_worker.cc) use it; the kernel's own region
// mechanisms belong in transport/ (DESIGN 1).
//
// Thread safety: a MappedRegion is immutable after construction; the bytes are the caller's.
//
//   auto region = MappedRegion::create(MappedRegion::Kind::kDevShm, ShmLog::region_bytes(o, s)).value();
//   auto log = ShmLog::create(region->bytes(), o, {.keep_alive = region}).value();
//   auto peer = MappedRegion::open(region->path()).value();     // another process does the same
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "base/status.h"

namespace nrx::logs::testing {

class MappedRegion {
 public:
  enum class Kind { kMemfd, kDevShm };

  // A new zero-filled region of |bytes| (> 0). A /dev/shm file is named after the pid and a
  // counter and unlinked when the region is destroyed (or at once when |unlink_now|).
  // Errors: kUnavailable (memfd_create, open, ftruncate or mmap failed; errno in the message).
  static Result<std::shared_ptr<MappedRegion>> create(Kind kind, uint64_t bytes, bool unlink_now = false) {
    std::string path;
    int fd = -1;
    if (kind == Kind::kMemfd) {
      fd = memfd_create("nrx-shm-log-test", MFD_CLOEXEC);
      if (fd < 0) return error("memfd_create");
    } else {
      static std::atomic<uint64_t> counter{0};
      path = "/dev/shm/nrx-shm-log-test-" + std::to_string(getpid()) + "-" +
             std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
      fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0) return error("open " + path);
    }
    auto region = std::shared_ptr<MappedRegion>(new MappedRegion(fd, path, !path.empty()));
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) return error("ftruncate");
    NRX_RETURN_IF_ERROR(region->map(bytes));
    if (unlink_now) region->unlink_file();
    return region;
  }

  // Maps an existing file (all of it). Errors: kUnavailable (open, fstat or mmap failed).
  static Result<std::shared_ptr<MappedRegion>> open_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return error("open " + path);
    auto region = std::shared_ptr<MappedRegion>(new MappedRegion(fd, path, false));
    struct stat st {};
    if (fstat(fd, &st) != 0) return error("fstat " + path);
    NRX_RETURN_IF_ERROR(region->map(static_cast<uint64_t>(st.st_size)));
    return region;
  }

  ~MappedRegion() {
    if (base_ != nullptr) munmap(base_, size_);
    if (fd_ >= 0) close(fd_);
    unlink_file();
  }
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;

  std::span<std::byte> bytes() const { return {static_cast<std::byte*>(base_), size_}; }
  const std::string& path() const { return path_; }  // empty for a memfd
  int fd() const { return fd_; }

  void unlink_file() {
    if (owns_file_) ::unlink(path_.c_str());
    owns_file_ = false;
  }

 private:
  MappedRegion(int fd, std::string path, bool owns_file) : fd_(fd), path_(std::move(path)), owns_file_(owns_file) {}

  static Status error(const std::string& what) {
    return Status::unavailable(what + " failed: " + std::strerror(errno));
  }

  Status map(uint64_t bytes) {
    if (bytes == 0) return Status::unavailable("cannot map an empty region");
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) return error("mmap of " + std::to_string(bytes) + " bytes");
    base_ = p;
    size_ = bytes;
    return ok_status();
  }

  int fd_;
  std::string path_;
  bool owns_file_;
  void* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace nrx::logs::testing
