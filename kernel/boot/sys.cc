#include "kernel/boot/sys.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace nrx::boot {

Sys::Sys(Backend& backend, uint32_t thread, uint32_t threads, uint32_t node)
    : backend_(backend), thread_(thread), threads_(threads), node_(node), data_(NRX_DATA_CAPACITY) {}

int64_t Sys::call(const nrx_request& request, nrx_response* response) {
  nrx_response local{};
  nrx_response& r = response != nullptr ? *response : local;
  backend_.syscall(request, data_, r);
  return r.result;
}

int64_t Sys::path_call(uint32_t sysno, std::string_view path, std::string_view path2, uint32_t mode, uint32_t flags,
                       nrx_response* response) {
  if (path.size() + path2.size() > data_.size()) return -ENAMETOOLONG;
  nrx_request req{};
  req.sysno = sysno;
  req.mode = mode;
  req.flags = flags;
  req.path_len = static_cast<uint32_t>(path.size());
  req.path2_len = static_cast<uint32_t>(path2.size());
  // (An empty string_view may have a null data(): memcpy must not see it, even for 0 bytes.)
  if (!path.empty()) std::memcpy(data_.data(), path.data(), path.size());
  if (!path2.empty()) std::memcpy(data_.data() + path.size(), path2.data(), path2.size());
  return call(req, response);
}

int64_t Sys::getpid() {
  nrx_request req{};
  req.sysno = NRX_SYS_GETPID;
  return call(req);
}

int64_t Sys::exit(uint32_t status) {
  nrx_request req{};
  req.sysno = NRX_SYS_EXIT;
  req.flags = status;
  return call(req);
}

int64_t Sys::open(std::string_view path, uint32_t flags, uint32_t mode) {
  return path_call(NRX_SYS_OPEN, path, {}, (flags & NRX_O_CREAT) != 0 ? mode : 0, flags);
}

int64_t Sys::close(uint64_t ino) {
  nrx_request req{};
  req.sysno = NRX_SYS_CLOSE;
  req.ino = ino;
  return call(req);
}

int64_t Sys::pread(uint64_t ino, std::span<std::byte> out, uint64_t offset) {
  nrx_request req{};
  req.sysno = NRX_SYS_PREAD;
  req.ino = ino;
  req.offset = offset;
  req.length = std::min<uint64_t>(out.size(), NRX_MAX_IO);
  nrx_response resp{};
  const int64_t n = call(req, &resp);
  if (n > 0) std::memcpy(out.data(), data_.data(), static_cast<size_t>(n));
  return n;
}

int64_t Sys::pwrite(uint64_t ino, std::span<const std::byte> in, uint64_t offset) {
  const size_t n = std::min<size_t>(in.size(), NRX_MAX_IO);
  if (n > 0) std::memcpy(data_.data(), in.data(), n);
  nrx_request req{};
  req.sysno = NRX_SYS_PWRITE;
  req.ino = ino;
  req.offset = offset;
  req.length = n;
  return call(req);
}

int64_t Sys::mkdir(std::string_view path, uint32_t mode) { return path_call(NRX_SYS_MKDIR, path, {}, mode); }
int64_t Sys::rmdir(std::string_view path) { return path_call(NRX_SYS_RMDIR, path); }
int64_t Sys::unlink(std::string_view path) { return path_call(NRX_SYS_UNLINK, path); }
int64_t Sys::rename(std::string_view from, std::string_view to) { return path_call(NRX_SYS_RENAME, from, to); }

int64_t Sys::stat(std::string_view path, nrx_statbuf* out) {
  nrx_response resp{};
  const int64_t r = path_call(NRX_SYS_STAT, path, {}, 0, 0, &resp);
  if (r == 0 && out != nullptr) *out = resp.stat;
  return r;
}

int64_t Sys::count_entries(std::string_view path) {
  int64_t total = 0;
  std::string after;
  for (;;) {
    nrx_response resp{};
    const int64_t n = path_call(NRX_SYS_READDIR, path, after, 0, 0, &resp);
    if (n < 0) return n;
    total += n;
    if ((resp.flags & NRX_READDIR_MORE) == 0 || n == 0) return total;
    // Resume after the last record returned.
    size_t pos = 0;
    const nrx_dirent_record* last = nullptr;
    while (pos + sizeof(nrx_dirent_record) <= resp.length) {
      last = reinterpret_cast<const nrx_dirent_record*>(data_.data() + pos);
      if (last->record_len == 0) break;
      if (pos + last->record_len >= resp.length) break;
      pos += last->record_len;
    }
    if (last == nullptr) return total;
    after.assign(reinterpret_cast<const char*>(last) + sizeof(nrx_dirent_record), last->name_len);
  }
}

int64_t Sys::mmap(uint64_t vaddr, uint64_t length, uint32_t prot) {
  nrx_request req{};
  req.sysno = NRX_SYS_MMAP;
  req.offset = vaddr;
  req.length = length;
  req.flags = prot;
  return call(req);
}

int64_t Sys::munmap(uint64_t vaddr, uint64_t length) {
  nrx_request req{};
  req.sysno = NRX_SYS_MUNMAP;
  req.offset = vaddr;
  req.length = length;
  return call(req);
}

int64_t Sys::mprotect(uint64_t vaddr, uint64_t length, uint32_t prot) {
  nrx_request req{};
  req.sysno = NRX_SYS_MPROTECT;
  req.offset = vaddr;
  req.length = length;
  req.flags = prot;
  return call(req);
}

}  // namespace nrx::boot
