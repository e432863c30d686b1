// nrx::transport::Region: one mapped shared-memory region, the raw memory under the shm log
// backend (DESIGN.md 3.4, "shm": emulated CXL shared memory). A Region is created or attached from
//   - a file on /dev/shm (or any tmpfs): processes on one host, and the host side of a QEMU
//     memory-backend-file (ivshmem or CXL type-3);
//   - a memfd: processes on one host; the fd travels to another process with send_fd/receive_fd
//     (SCM_RIGHTS over a Unix domain socket);
//   - a device-dax character device (/dev/daxX.Y): a guest's view of a CXL type-3 device;
//   - a PCI BAR resource file (.../resource2 of an ivshmem-plain device): a guest's view of ivshmem.
// Every one is mapped MAP_SHARED, read-write, whole (or the window the options name), and the
// bytes are the same bytes every other mapping of that backing sees. What lives inside (headers,
// offsets, coherence rules) is the log backend's business, not this class's.
//
// Size rules (no silent rounding anywhere: a size the rules refuse is an error that says why):
//   - create_file / create_memfd: |bytes| > 0 and a multiple of the base page size (4 KiB on
//     x86-64). Huge pages are used only when |bytes| is also a multiple of the huge page size.
//   - attach_file / attach_fd: the size is the file's (fstat); it must be > 0 and a multiple of
//     the page size of its file system (4 KiB; the huge page size on hugetlbfs).
//   - attach_dax: the device size comes from sysfs; offset and length must be multiples of the
//     device alignment (sysfs `align`, 2 MiB when the kernel has no such attribute); length 0
//     means "from offset to the end, rounded DOWN to the alignment" (the one rounding rule).
//   - attach_pci_bar: the BAR size is the resource file's st_size; offset and length are multiples
//     of the base page size; length 0 means "from offset to the end of the BAR".
//
// Invariants: a live Region owns exactly one mapping [bytes().data(), +size()) and one open fd of
// its backing (fd()), both released on destruction; size() > 0 and a multiple of page_size(). A
// moved-from Region owns nothing (size() == 0). A created file stays on disk after destruction
// unless CreateOptions::unlink_on_close asked for removal (other processes may still attach).
//
// Thread safety: the bytes are shared memory: any thread (and process) may read and write them;
// ordering is the caller's. The Region object itself is immutable after creation, so its const
// accessors may be called concurrently; moving or destroying it must not race with any use.
//
//   auto r = nrx::transport::Region::create_memfd("nrx-log", 64 << 20, {.huge_pages = true});
//   if (!r.ok()) return r.status();
//   std::puts(r->describe().c_str());  // "memfd nrx-log, 64 MiB, 2 MiB hugetlb pages"
//   NRX_RETURN_IF_ERROR(nrx::transport::send_fd(sock, r->fd()));  // to another process, which:
//   int fd = receive_fd(sock).value(); auto same = Region::attach_fd(fd); ::close(fd);
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

namespace nrx::transport {

// What backs a Region.
enum class RegionKind : uint8_t {
  kFile,    // a file on /dev/shm or another file system (create_file / attach_file)
  kMemfd,   // an anonymous memfd (create_memfd / attach_fd)
  kDax,     // a device-dax character device (attach_dax)
  kPciBar,  // a PCI BAR resource file (attach_pci_bar)
};
std::string_view region_kind_name(RegionKind kind);  // "file", "memfd", "dax", "pci-bar"

struct CreateOptions {
  // create_file: O_CREAT|O_EXCL refuses an existing file (kAlreadyExists); true unlinks a stale
  // file at the path first (never a directory).
  bool replace_existing = false;
  // The creator removes the file when its Region is destroyed (mappings elsewhere stay valid).
  bool unlink_on_close = false;
  // memfd: try MFD_HUGETLB first, fall back to base pages (+ MADV_HUGEPAGE); file: MADV_HUGEPAGE.
  // describe() says what was obtained and why not.
  bool huge_pages = false;
  // Reserve the backing memory now (posix_fallocate): a full tmpfs fails here with
  // kResourceExhausted instead of a SIGBUS on a later store.
  bool reserve = false;
  mode_t mode = 0600;  // create_file: set exactly (fchmod), not filtered by the umask
};

struct AttachOptions {
  bool huge_pages = false;  // MADV_HUGEPAGE on the mapping (files and memfds on tmpfs)
};

struct DaxOptions {
  // Where sysfs is mounted; tests point this at a fake tree with the same layout.
  std::string sysfs_root = "/sys";
  uint64_t offset = 0;  // into the device; a multiple of the device alignment
  uint64_t length = 0;  // 0: from offset to the end, rounded down to the alignment
  // Accept a regular file standing in for the character device (tests; the sysfs entry is then
  // looked up by the file's name under bus/dax/devices/).
  bool allow_regular_file = false;
};

struct PciBarOptions {
  uint64_t offset = 0;  // into the BAR; a multiple of the base page size
  uint64_t length = 0;  // 0: from offset to the end of the BAR
};

// The alignment of a device-dax device whose sysfs entry has no `align` attribute.
inline constexpr uint64_t kDefaultDaxAlign = uint64_t{2} << 20;

class Region {
 public:
  // Creates |path| (mode options.mode), sizes it to |bytes| (zero-filled) and maps it.
  // kInvalidArgument: empty path, |bytes| zero / not a page multiple / too large, path is a
  // directory. kAlreadyExists: the file exists and !options.replace_existing. kNotFound: the
  // parent directory does not exist. kPermissionDenied, kResourceExhausted (no space, no memory).
  static Result<Region> create_file(std::string_view path, size_t bytes, const CreateOptions& options = {});

  // Maps an existing file, whole. kInvalidArgument: empty path. kNotFound: no such file.
  // kFailedPrecondition: a directory or other non-regular file, an empty file, a size that is not
  // a page multiple. kPermissionDenied.
  static Result<Region> attach_file(std::string_view path, const AttachOptions& options = {});

  // Creates an anonymous memfd named |name| (shown in /proc/PID/fd) of |bytes|, zero-filled.
  // kInvalidArgument: empty or over-long name (> 249 bytes), bad |bytes| as for create_file.
  // kResourceExhausted. replace_existing and unlink_on_close do not apply.
  static Result<Region> create_memfd(std::string_view name, size_t bytes, const CreateOptions& options = {});

  // Maps the file behind |fd| (a memfd received from another process, or any regular file) whole.
  // The fd is dup'd: the caller keeps, and closes, its own. Errors as for attach_file;
  // kInvalidArgument for a bad fd.
  static Result<Region> attach_fd(int fd, const AttachOptions& options = {});

  // Maps a device-dax device. Size from <sysfs>/dev/char/<maj>:<min>/size (or, by name,
  // <sysfs>/bus/dax/devices/<name>/size), alignment from the `align` attribute beside it.
  // kInvalidArgument: empty path, misaligned offset/length. kNotFound: no such path.
  // kUnavailable: the path is not a device-dax device (no sysfs entry, or not a character
  // device). kDataLoss: an unparsable sysfs attribute. kOutOfRange: the window exceeds the device.
  // kFailedPrecondition: a stand-in file shorter than the device.
  static Result<Region> attach_dax(std::string_view path, const DaxOptions& options = {});

  // Maps a PCI BAR resource file (ivshmem-plain: /sys/bus/pci/devices/BDF/resource2; the device
  // must be enabled first: `echo 1 > .../enable`). kInvalidArgument: empty path, misaligned
  // window. kNotFound. kFailedPrecondition: not a regular file, a zero-sized BAR.
  // kOutOfRange: the window exceeds the BAR. kUnavailable: the kernel refused the mapping.
  static Result<Region> attach_pci_bar(std::string_view path, const PciBarOptions& options = {});

  Region(Region&& other) noexcept;
  Region& operator=(Region&& other) noexcept;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();

  std::span<std::byte> bytes() const { return {base_, size_}; }
  size_t size() const { return size_; }
  RegionKind kind() const { return kind_; }
  // The path, or the memfd's name ("fd N" for attach_fd of a file that is not a memfd).
  const std::string& source() const { return source_; }
  // The Region's own fd of its backing (valid while the Region lives; pass it with send_fd).
  int fd() const { return fd_; }
  // Where the mapping starts in the backing (dax and BAR windows), else 0.
  uint64_t offset() const { return offset_; }
  // The granularity the mapping is made of: the base page, the hugetlb page, the DAX alignment.
  size_t page_size() const { return page_size_; }
  // True when the mapping is backed by hugetlb pages (MFD_HUGETLB or a hugetlbfs file).
  bool hugetlb() const { return hugetlb_; }
  // "file /dev/shm/nrx-cxl, 256 MiB, 4 KiB pages", "dax /dev/dax0.0, 6 MiB at offset 2 MiB, 2 MiB
  // aligned", "memfd nrx-log, 64 MiB, 4 KiB pages (MFD_HUGETLB failed at mmap: Cannot allocate
  // memory, no free pages in vm.nr_hugepages; fell back; MADV_HUGEPAGE advised, shmem THP never)".
  std::string describe() const;

 private:
  Region() = default;
  void release();

  RegionKind kind_ = RegionKind::kFile;
  std::string source_;
  int fd_ = -1;
  std::byte* base_ = nullptr;
  size_t size_ = 0;
  uint64_t offset_ = 0;
  size_t page_size_ = 0;
  bool hugetlb_ = false;
  std::string pages_;        // "4 KiB pages (...)": what describe() says about the pages
  std::string unlink_path_;  // non-empty: unlink on destruction
};

// Sends |fd| over the connected Unix domain socket |unix_socket| (SCM_RIGHTS, with one data byte).
// The caller keeps |fd| open or closes it; the receiver gets its own descriptor.
// kInvalidArgument: a negative fd or a socket that is not a Unix socket. kUnavailable: the peer
// has gone (EPIPE/ECONNRESET; no SIGPIPE is raised).
Status send_fd(int unix_socket, int fd);

inline constexpr std::chrono::milliseconds kWaitForever{-1};

// Receives one fd sent with send_fd; the caller owns (and closes) it. It is close-on-exec.
// kDeadlineExceeded: nothing arrived within |timeout| (kWaitForever: no bound). kUnavailable: the
// peer closed the socket. kDataLoss: a message without exactly one fd (extra fds are closed).
Result<int> receive_fd(int unix_socket, std::chrono::milliseconds timeout = kWaitForever);

// "64 MiB", "4 KiB", "1 GiB", "12345 bytes": exact, never rounded.
std::string format_bytes(uint64_t bytes);

}  // namespace nrx::transport
