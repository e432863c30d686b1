#include "transport/region.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

namespace nrx::transport {
namespace {

// memfd names are limited by the kernel to NAME_MAX minus the "memfd:" prefix.
constexpr size_t kMaxMemfdName = 249;
// The fallback when /proc/meminfo has no Hugepagesize line (x86-64's default huge page).
constexpr size_t kDefaultHugePage = size_t{2} << 20;
// How many fds one receive_fd can take in before closing the extras (a well-behaved peer sends 1).
constexpr size_t kMaxFdsPerMessage = 8;

std::string errno_text(int e) {
  char buf[128];
  // GNU strerror_r (glibc with _GNU_SOURCE, which g++ and clang++ define): may return |buf| or a
  // static string; both are valid here. Thread-safe, unlike strerror.
  return strerror_r(e, buf, sizeof buf);
}

// The canonical code for an errno from open/ftruncate/mmap/..., with |what| and the errno text.
// Callers pass errno itself as |e|: |what| and |object| are views, so building the arguments
// allocates nothing that could clobber errno first.
Status errno_status(int e, std::string_view what, std::string_view object = {}) {
  std::string m(what);
  if (!object.empty()) m.append(" ").append(object);
  m.append(": ").append(errno_text(e));
  StatusCode code = StatusCode::kInternal;
  switch (e) {
    case ENOENT: code = StatusCode::kNotFound; break;
    case EACCES:
    case EPERM:
    case EROFS: code = StatusCode::kPermissionDenied; break;
    case EEXIST: code = StatusCode::kAlreadyExists; break;
    case EISDIR:
    case ENOTDIR: code = StatusCode::kFailedPrecondition; break;
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case EDQUOT:
    case EFBIG: code = StatusCode::kResourceExhausted; break;
    case EINVAL:
    case ENAMETOOLONG:
    case EBADF:
    case ENOTSOCK: code = StatusCode::kInvalidArgument; break;
    case ENODEV:
    case ENXIO:
    case EIO:
    case EPIPE:
    case ECONNRESET: code = StatusCode::kUnavailable; break;
    default: break;
  }
  return Status(code, std::move(m)).with_errno(e);
}

// Closes the fd it holds unless released: keeps every error path of the factories leak-free.
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : fd_(fd) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

size_t base_page_size() {
  long p = ::sysconf(_SC_PAGESIZE);
  return p > 0 ? static_cast<size_t>(p) : 4096;
}

Status check_new_size(size_t bytes) {
  const size_t page = base_page_size();
  if (bytes == 0) return Status::invalid_argument("region size must be at least one page, not 0");
  if (bytes % page != 0) {
    return Status::invalid_argument("region size " + std::to_string(bytes) + " is not a multiple of the " +
                                    format_bytes(page) + " page size");
  }
  if (bytes > static_cast<size_t>(std::numeric_limits<off_t>::max())) {
    return Status::invalid_argument("region size " + std::to_string(bytes) + " exceeds the largest file size");
  }
  return ok_status();
}

Result<std::byte*> map_shared(int fd, size_t length, uint64_t offset, const std::string& what) {
  void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return errno_status(errno, "mmap", what);
  return static_cast<std::byte*>(p);
}

// The bracketed choice of a sysfs multiple-choice file ("always within_size advise [never] deny").
std::string sysfs_choice(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "unknown";
  size_t open = line.find('[');
  size_t close = line.find(']', open);
  if (open == std::string::npos || close == std::string::npos) return "unknown";
  return line.substr(open + 1, close - open - 1);
}

// Advises transparent huge pages on a file-backed mapping and says what that means here.
std::string advise_huge_pages(std::byte* base, size_t length, bool on_tmpfs) {
  if (::madvise(base, length, MADV_HUGEPAGE) != 0) return "MADV_HUGEPAGE refused: " + errno_text(errno);
  if (!on_tmpfs) return "MADV_HUGEPAGE advised";
  // tmpfs/memfd pages become huge only as shmem_enabled allows (advise, within_size, always).
  return "MADV_HUGEPAGE advised, shmem THP " + sysfs_choice("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
}

// The default hugetlb page size (Hugepagesize in /proc/meminfo).
size_t hugetlb_page_size() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Hugepagesize:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    size_t kib = 0;
    if (fields >> kib && kib > 0) return kib << 10;
  }
  return kDefaultHugePage;
}

bool on_tmpfs(int fd) {
  struct statfs fs {};
  return ::fstatfs(fd, &fs) == 0 && static_cast<unsigned long>(fs.f_type) == TMPFS_MAGIC;
}

// Reads one unsigned number from a sysfs attribute (decimal, or hex with 0x).
// kNotFound: no such attribute. kDataLoss: not a number.
Result<uint64_t> read_sysfs_u64(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::not_found("no sysfs attribute " + path);
  std::string text;
  std::getline(in, text);
  size_t begin = text.find_first_not_of(" \t\r\n");
  size_t end = text.find_last_not_of(" \t\r\n");
  if (begin == std::string::npos) return Status::data_loss("sysfs attribute " + path + " is empty");
  std::string_view s(text.data() + begin, end - begin + 1);
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    s.remove_prefix(2);
    base = 16;
  }
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (ec != std::errc() || ptr != s.data() + s.size()) {
    return Status::data_loss("sysfs attribute " + path + " is not a number: \"" + text + "\"");
  }
  return v;
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string base_name(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

// Checks a window [offset, offset + *length) of a backing of |total| bytes, in units of |unit|;
// a zero *length becomes the rest of the backing, rounded down to |unit|.
Status check_window(uint64_t offset, uint64_t* length, uint64_t total, uint64_t unit, const std::string& what) {
  if (offset % unit != 0) {
    return Status::invalid_argument(what + ": offset " + std::to_string(offset) + " is not a multiple of " +
                                    format_bytes(unit));
  }
  if (*length % unit != 0) {
    return Status::invalid_argument(what + ": length " + std::to_string(*length) + " is not a multiple of " +
                                    format_bytes(unit));
  }
  if (offset >= total) {
    return Status::out_of_range(what + ": offset " + std::to_string(offset) + " is past the end (" +
                                format_bytes(total) + ")");
  }
  if (*length == 0) {
    *length = (total - offset) / unit * unit;
    if (*length == 0) {
      return Status::out_of_range(what + ": less than " + format_bytes(unit) + " left after offset " +
                                  std::to_string(offset));
    }
  }
  if (*length > total - offset) {
    return Status::out_of_range(what + ": window of " + format_bytes(*length) + " at offset " +
                                std::to_string(offset) + " exceeds " + format_bytes(total));
  }
  return ok_status();
}

}  // namespace

std::string_view region_kind_name(RegionKind kind) {
  switch (kind) {
    case RegionKind::kFile: return "file";
    case RegionKind::kMemfd: return "memfd";
    case RegionKind::kDax: return "dax";
    case RegionKind::kPciBar: return "pci-bar";
  }
  return "unknown";
}

std::string format_bytes(uint64_t bytes) {
  constexpr uint64_t kKiB = 1024;
  constexpr uint64_t kMiB = kKiB * 1024;
  constexpr uint64_t kGiB = kMiB * 1024;
  if (bytes != 0 && bytes % kGiB == 0) return std::to_string(bytes / kGiB) + " GiB";
  if (bytes != 0 && bytes % kMiB == 0) return std::to_string(bytes / kMiB) + " MiB";
  if (bytes != 0 && bytes % kKiB == 0) return std::to_string(bytes / kKiB) + " KiB";
  return std::to_string(bytes) + " bytes";
}

// ---- Lifetime ---------------------------------------------------------------------------------

Region::Region(Region&& other) noexcept
    : kind_(other.kind_),
      source_(std::move(other.source_)),
      fd_(std::exchange(other.fd_, -1)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      offset_(std::exchange(other.offset_, 0)),
      page_size_(std::exchange(other.page_size_, 0)),
      hugetlb_(std::exchange(other.hugetlb_, false)),
      pages_(std::move(other.pages_)),
      unlink_path_(std::move(other.unlink_path_)) {
  other.unlink_path_.clear();  // a moved-from string is valid but unspecified: make it empty
}

Region& Region::operator=(Region&& other) noexcept {
  if (this != &other) {
    release();
    kind_ = other.kind_;
    source_ = std::move(other.source_);
    fd_ = std::exchange(other.fd_, -1);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    offset_ = std::exchange(other.offset_, 0);
    page_size_ = std::exchange(other.page_size_, 0);
    hugetlb_ = std::exchange(other.hugetlb_, false);
    pages_ = std::move(other.pages_);
    unlink_path_ = std::move(other.unlink_path_);
    other.unlink_path_.clear();
  }
  return *this;
}

Region::~Region() { release(); }

void Region::release() {
  // Teardown has no caller to report to: a failing munmap/close/unlink leaves nothing to undo.
  if (base_ != nullptr) (void)::munmap(base_, size_);
  if (fd_ >= 0) (void)::close(fd_);
  if (!unlink_path_.empty()) (void)::unlink(unlink_path_.c_str());
  base_ = nullptr;
  size_ = 0;
  fd_ = -1;
  unlink_path_.clear();
}

std::string Region::describe() const {
  if (size_ == 0) return "empty region (moved from)";
  std::string d = std::string(region_kind_name(kind_)) + " " + source_ + ", " + format_bytes(size_);
  if (offset_ != 0) d += " at offset " + format_bytes(offset_);
  return d + ", " + pages_;
}

// ---- Files ------------------------------------------------------------------------------------

Result<Region> Region::create_file(std::string_view path_view, size_t bytes, const CreateOptions& options) {
  if (path_view.empty()) return Status::invalid_argument("create_file: empty path");
  NRX_RETURN_IF_ERROR(check_new_size(bytes));
  const std::string path(path_view);
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return Status::invalid_argument("create_file: " + path + " is a directory");
  }
  constexpr int kFlags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY;
  OwnedFd fd(::open(path.c_str(), kFlags, options.mode));
  if (fd.get() < 0 && errno == EEXIST && options.replace_existing) {
    if (::unlink(path.c_str()) != 0) return errno_status(errno, "create_file: remove stale", path);
    fd.reset(::open(path.c_str(), kFlags, options.mode));
  }
  if (fd.get() < 0) {
    int e = errno;
    if (e == EEXIST) {
      return Status::already_exists("create_file: " + path +
                                    " exists (CreateOptions::replace_existing replaces a stale one)")
          .with_errno(e);
    }
    return errno_status(e, "create_file: open", path);
  }
  // From here the file is ours: a failure removes it again, so no half-made region is left.
  auto fail = [&path](Status s) {
    (void)::unlink(path.c_str());  // best effort; |s| is the error worth reporting
    return s;
  };
  if (::fchmod(fd.get(), options.mode) != 0) return fail(errno_status(errno, "create_file: chmod", path));
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return fail(errno_status(errno, "create_file: size", path));
  }
  if (options.reserve) {
    if (int e = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes)); e != 0) {
      return fail(errno_status(e, "create_file: reserve " + format_bytes(bytes) + " for " + path));
    }
  }
  auto base = map_shared(fd.get(), bytes, 0, path);
  if (!base.ok()) return fail(base.status());

  Region r;
  r.kind_ = RegionKind::kFile;
  r.source_ = path;
  r.base_ = *base;
  r.size_ = bytes;
  r.page_size_ = base_page_size();
  r.pages_ = format_bytes(r.page_size_) + " pages";
  if (options.huge_pages) r.pages_ += " (" + advise_huge_pages(r.base_, bytes, on_tmpfs(fd.get())) + ")";
  if (options.unlink_on_close) r.unlink_path_ = path;
  r.fd_ = fd.release();
  return r;
}

namespace {

// What attach_file and attach_fd share: validates the open file behind |fd| and maps it whole.
struct AttachedMapping {
  std::byte* base;
  size_t size;
  size_t page_size;
  bool hugetlb;
  std::string pages;
};

Result<AttachedMapping> map_whole_file(int fd, const std::string& what, const AttachOptions& options) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_status(errno, "attach: stat", what);
  if (S_ISDIR(st.st_mode)) return Status::failed_precondition("attach " + what + ": is a directory");
  if (!S_ISREG(st.st_mode)) return Status::failed_precondition("attach " + what + ": not a regular file");
  if (st.st_size <= 0) {
    return Status::failed_precondition("attach " + what + ": the file is empty (has its creator sized it yet?)");
  }
  const int mode = ::fcntl(fd, F_GETFL);
  if (mode >= 0 && (mode & O_ACCMODE) != O_RDWR) {
    return Status::failed_precondition("attach " + what + ": the fd is not open for reading and writing");
  }
  struct statfs fs {};
  const bool hugetlb =
      ::fstatfs(fd, &fs) == 0 && static_cast<unsigned long>(fs.f_type) == HUGETLBFS_MAGIC;
  // hugetlbfs reports its page size as the block size.
  const size_t page = hugetlb ? static_cast<size_t>(st.st_blksize) : base_page_size();
  const auto size = static_cast<uint64_t>(st.st_size);
  if (page == 0 || size % page != 0) {
    return Status::failed_precondition("attach " + what + ": size " + std::to_string(size) +
                                       " is not a multiple of the " + format_bytes(page) + " page size");
  }
  NRX_ASSIGN_OR_RETURN(std::byte * base, map_shared(fd, size, 0, what));
  AttachedMapping m{base, size, page, hugetlb, format_bytes(page) + (hugetlb ? " hugetlb pages" : " pages")};
  if (options.huge_pages && !hugetlb) {
    m.pages += " (" + advise_huge_pages(base, size, static_cast<unsigned long>(fs.f_type) == TMPFS_MAGIC) + ")";
  }
  return m;
}

}  // namespace

Result<Region> Region::attach_file(std::string_view path_view, const AttachOptions& options) {
  if (path_view.empty()) return Status::invalid_argument("attach_file: empty path");
  const std::string path(path_view);
  // O_NONBLOCK: opening a FIFO someone left at the path must not hang; it is refused below.
  OwnedFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (fd.get() < 0) {
    int e = errno;
    if (e == EISDIR) return Status::failed_precondition("attach_file: " + path + " is a directory").with_errno(e);
    if (e == ENOENT) return Status::not_found("attach_file: no file " + path).with_errno(e);
    return errno_status(e, "attach_file: open", path);
  }
  NRX_ASSIGN_OR_RETURN(AttachedMapping m, map_whole_file(fd.get(), path, options));
  Region r;
  r.kind_ = RegionKind::kFile;
  r.source_ = path;
  r.base_ = m.base;
  r.size_ = m.size;
  r.page_size_ = m.page_size;
  r.hugetlb_ = m.hugetlb;
  r.pages_ = std::move(m.pages);
  r.fd_ = fd.release();
  return r;
}

// ---- memfd ------------------------------------------------------------------------------------

Result<Region> Region::create_memfd(std::string_view name_view, size_t bytes, const CreateOptions& options) {
  if (name_view.empty()) return Status::invalid_argument("create_memfd: empty name");
  if (name_view.size() > kMaxMemfdName) {
    return Status::invalid_argument("create_memfd: name longer than " + std::to_string(kMaxMemfdName) + " bytes");
  }
  NRX_RETURN_IF_ERROR(check_new_size(bytes));
  const std::string name(name_view);

  // Sized, (reserved,) sealed against resizing by any holder of the fd (a peer that shrank it
  // would SIGBUS everyone else), and mapped; on failure says which step refused.
  auto make = [&](unsigned flags, std::string* failed_step) -> Result<std::pair<int, std::byte*>> {
    auto failed = [failed_step, &name](const char* step, int err, std::string_view what) {
      *failed_step = step;
      return errno_status(err, what, name);
    };
    OwnedFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | flags));
    if (fd.get() < 0) return failed("memfd_create", errno, "create_memfd");
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
      return failed("ftruncate", errno, "create_memfd: size");
    }
    if (options.reserve) {
      if (int err = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes)); err != 0) {
        return failed("fallocate", err, "create_memfd: reserve");
      }
    }
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
      return failed("seal", errno, "create_memfd: seal");
    }
    auto base = map_shared(fd.get(), bytes, 0, "memfd " + name);
    if (!base.ok()) {
      *failed_step = "mmap";
      return base.status();
    }
    return std::pair<int, std::byte*>(fd.release(), *base);
  };

  Region r;
  r.kind_ = RegionKind::kMemfd;
  r.source_ = name;
  r.size_ = bytes;
  std::string fallback_reason;
  if (options.huge_pages) {
    const size_t huge = hugetlb_page_size();
    if (bytes % huge != 0) {
      fallback_reason = "huge pages skipped: size is not a multiple of " + format_bytes(huge);
    } else {
      std::string step;
      auto made = make(MFD_HUGETLB, &step);
      if (made.ok()) {
        r.fd_ = made->first;
        r.base_ = made->second;
        r.page_size_ = huge;
        r.hugetlb_ = true;
        r.pages_ = format_bytes(huge) + " hugetlb pages";
        return r;
      }
      const int e = made.status().posix_errno();
      fallback_reason = "MFD_HUGETLB failed at " + step + ": " + errno_text(e);
      if (step == "mmap" && e == ENOMEM) fallback_reason += ", no free pages in vm.nr_hugepages";
    }
  }
  std::string step;
  NRX_ASSIGN_OR_RETURN(auto made, make(0, &step));
  r.fd_ = made.first;
  r.base_ = made.second;
  r.page_size_ = base_page_size();
  r.pages_ = format_bytes(r.page_size_) + " pages";
  if (options.huge_pages) {
    r.pages_ += " (" + fallback_reason + "; fell back; " + advise_huge_pages(r.base_, bytes, true) + ")";
  }
  return r;
}

Result<Region> Region::attach_fd(int fd, const AttachOptions& options) {
  if (fd < 0) return Status::invalid_argument("attach_fd: negative fd " + std::to_string(fd));
  OwnedFd own(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (own.get() < 0) {
    int e = errno;
    if (e == EBADF) return Status::invalid_argument("attach_fd: fd " + std::to_string(fd) + " is not open").with_errno(e);
    return errno_status(e, "attach_fd: dup fd " + std::to_string(fd));
  }
  // A memfd's /proc link reads "/memfd:NAME (deleted)"; anything else is a file with a path.
  RegionKind kind = RegionKind::kFile;
  std::string source = "fd " + std::to_string(fd);
  char link[4096];
  const std::string proc = "/proc/self/fd/" + std::to_string(own.get());
  if (ssize_t n = ::readlink(proc.c_str(), link, sizeof link - 1); n > 0) {
    std::string target(link, static_cast<size_t>(n));
    constexpr std::string_view kMemfdPrefix = "/memfd:";
    constexpr std::string_view kDeleted = " (deleted)";
    if (target.rfind(kMemfdPrefix, 0) == 0) {
      kind = RegionKind::kMemfd;
      source = target.substr(kMemfdPrefix.size());
      if (source.size() >= kDeleted.size() &&
          source.compare(source.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0) {
        source.resize(source.size() - kDeleted.size());
      }
    } else if (!target.empty() && target[0] == '/') {
      source = std::move(target);
    }
  }
  NRX_ASSIGN_OR_RETURN(AttachedMapping m, map_whole_file(own.get(), source, options));
  Region r;
  r.kind_ = kind;
  r.source_ = std::move(source);
  r.base_ = m.base;
  r.size_ = m.size;
  r.page_size_ = m.page_size;
  r.hugetlb_ = m.hugetlb;
  r.pages_ = std::move(m.pages);
  r.fd_ = own.release();
  return r;
}

// ---- Devices ----------------------------------------------------------------------------------

Result<Region> Region::attach_dax(std::string_view path_view, const DaxOptions& options) {
  if (path_view.empty()) return Status::invalid_argument("attach_dax: empty path");
  const std::string path(path_view);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    int e = errno;
    if (e == ENOENT) {
      return Status::not_found("attach_dax: no device " + path +
                               " (no device-dax configured: CXL type-3 / pmem in devdax mode)")
          .with_errno(e);
    }
    return errno_status(e, "attach_dax: stat", path);
  }
  if (S_ISDIR(st.st_mode)) return Status::failed_precondition("attach_dax: " + path + " is a directory");

  // The sysfs directory of the device: by major:minor for a real character device (authoritative),
  // else by name under bus/dax/devices (also how a stand-in file is found).
  const std::string by_name = options.sysfs_root + "/bus/dax/devices/" + base_name(path);
  std::string sysdir;
  if (S_ISCHR(st.st_mode)) {
    const std::string by_devno = options.sysfs_root + "/dev/char/" + std::to_string(major(st.st_rdev)) + ":" +
                                 std::to_string(minor(st.st_rdev));
    if (file_exists(by_devno + "/size")) {
      sysdir = by_devno;
    } else if (file_exists(by_name + "/size")) {
      sysdir = by_name;
    } else {
      return Status::unavailable("attach_dax: " + path + " is not a device-dax device (no " + by_devno +
                                 "/size)");
    }
  } else if (S_ISREG(st.st_mode) && options.allow_regular_file) {
    if (!file_exists(by_name + "/size")) {
      return Status::unavailable("attach_dax: no device-dax entry for " + path + " (no " + by_name + "/size)");
    }
    sysdir = by_name;
  } else {
    return Status::unavailable("attach_dax: " + path + " is not a character device (device-dax is /dev/daxX.Y)");
  }

  auto size = read_sysfs_u64(sysdir + "/size");
  if (!size.ok()) {
    if (size.status().code() == StatusCode::kNotFound) return Status::unavailable("attach_dax: " + size.status().message());
    return size.status();
  }
  if (*size == 0) return Status::unavailable("attach_dax: " + path + " has size 0 (not configured?)");
  uint64_t align = kDefaultDaxAlign;
  if (auto a = read_sysfs_u64(sysdir + "/align"); a.ok()) {
    align = *a;
  } else if (a.status().code() != StatusCode::kNotFound) {
    return a.status();
  }
  if (align < base_page_size() || (align & (align - 1)) != 0) {
    return Status::data_loss("attach_dax: " + sysdir + "/align is " + std::to_string(align) +
                             ", not a power of two of at least a page");
  }
  uint64_t length = options.length;
  NRX_RETURN_IF_ERROR(check_window(options.offset, &length, *size, align, "attach_dax " + path));

  OwnedFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY));
  if (fd.get() < 0) return errno_status(errno, "attach_dax: open", path);
  if (S_ISREG(st.st_mode)) {
    // A stand-in file shorter than the device would SIGBUS on access past its end.
    struct stat now {};
    if (::fstat(fd.get(), &now) != 0) return errno_status(errno, "attach_dax: stat", path);
    if (static_cast<uint64_t>(now.st_size) < options.offset + length) {
      return Status::failed_precondition("attach_dax: stand-in file " + path + " holds " +
                                         format_bytes(static_cast<uint64_t>(now.st_size)) + ", less than the " +
                                         format_bytes(options.offset + length) + " the window needs");
    }
  }
  auto base = map_shared(fd.get(), length, options.offset, "dax " + path);
  if (!base.ok()) {
    const int e = base.status().posix_errno();
    if (e == EACCES || e == EPERM) return base.status();
    return Status::unavailable(base.status().message()).with_errno(e);
  }
  Region r;
  r.kind_ = RegionKind::kDax;
  r.source_ = path;
  r.base_ = *base;
  r.size_ = length;
  r.offset_ = options.offset;
  r.page_size_ = align;
  r.pages_ = format_bytes(align) + " aligned";
  r.fd_ = fd.release();
  return r;
}

Result<Region> Region::attach_pci_bar(std::string_view path_view, const PciBarOptions& options) {
  if (path_view.empty()) return Status::invalid_argument("attach_pci_bar: empty path");
  const std::string path(path_view);
  OwnedFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (fd.get() < 0) {
    int e = errno;
    if (e == EISDIR) return Status::failed_precondition("attach_pci_bar: " + path + " is a directory").with_errno(e);
    if (e == ENOENT) return Status::not_found("attach_pci_bar: no BAR resource file " + path).with_errno(e);
    return errno_status(e, "attach_pci_bar: open", path);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errno_status(errno, "attach_pci_bar: stat", path);
  // sysfs resourceN files are regular files whose size is the BAR's.
  if (!S_ISREG(st.st_mode)) return Status::failed_precondition("attach_pci_bar: " + path + " is not a regular file");
  if (st.st_size <= 0) return Status::failed_precondition("attach_pci_bar: " + path + " has a zero-sized BAR");
  uint64_t length = options.length;
  const uint64_t page = base_page_size();
  NRX_RETURN_IF_ERROR(check_window(options.offset, &length, static_cast<uint64_t>(st.st_size), page,
                                   "attach_pci_bar " + path));
  auto base = map_shared(fd.get(), length, options.offset, "BAR " + path);
  if (!base.ok()) {
    const int e = base.status().posix_errno();
    if (e == EACCES || e == EPERM) return base.status();
    return Status::unavailable(base.status().message() + " (is the device enabled? echo 1 > .../enable)")
        .with_errno(e);
  }
  Region r;
  r.kind_ = RegionKind::kPciBar;
  r.source_ = path;
  r.base_ = *base;
  r.size_ = length;
  r.offset_ = options.offset;
  r.page_size_ = page;
  r.pages_ = format_bytes(page) + " pages";
  r.fd_ = fd.release();
  return r;
}

// ---- Passing fds ------------------------------------------------------------------------------

Status send_fd(int unix_socket, int fd) {
  if (fd < 0) return Status::invalid_argument("send_fd: negative fd " + std::to_string(fd));
  if (unix_socket < 0) return Status::invalid_argument("send_fd: negative socket " + std::to_string(unix_socket));
  char byte = 'F';  // SCM_RIGHTS needs at least one byte of real data to ride on
  iovec iov{&byte, 1};
  union {
    cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t n;
  do {
    n = ::sendmsg(unix_socket, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    int e = errno;
    if (e == EPIPE || e == ECONNRESET) return Status::unavailable("send_fd: the peer has gone").with_errno(e);
    if (e == EOPNOTSUPP) return Status::invalid_argument("send_fd: not a Unix domain socket").with_errno(e);
    return errno_status(e, "send_fd");
  }
  if (n != 1) return Status::internal("send_fd: sent " + std::to_string(n) + " bytes instead of 1");
  return ok_status();
}

Result<int> receive_fd(int unix_socket, std::chrono::milliseconds timeout) {
  if (unix_socket < 0) {
    return Status::invalid_argument("receive_fd: negative socket " + std::to_string(unix_socket));
  }
  if (timeout != kWaitForever) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{unix_socket, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
      if (ready > 0) break;  // readable, hung up or in error: recvmsg says which
      if (ready == 0) {
        return Status::deadline_exceeded("receive_fd: no fd within " + std::to_string(timeout.count()) + " ms");
      }
      if (errno != EINTR) return errno_status(errno, "receive_fd: poll");
    }
  }
  char byte = 0;
  iovec iov{&byte, 1};
  union {
    cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  } control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  ssize_t n;
  do {
    n = ::recvmsg(unix_socket, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_status(errno, "receive_fd");
  if (n == 0) return Status::unavailable("receive_fd: the peer closed the socket");

  int fds[kMaxFdsPerMessage];
  size_t count = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t in_this = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < in_this && count < kMaxFdsPerMessage; ++i) {
      std::memcpy(&fds[count++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
  }
  auto close_all = [&] {
    for (size_t i = 0; i < count; ++i) (void)::close(fds[i]);  // unwanted: nothing to report
  };
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    close_all();
    return Status::data_loss("receive_fd: control data truncated (more than " +
                             std::to_string(kMaxFdsPerMessage) + " fds sent)");
  }
  if (count != 1) {
    close_all();
    return Status::data_loss("receive_fd: message carried " + std::to_string(count) + " fds, not 1");
  }
  return fds[0];
}

}  // namespace nrx::transport
