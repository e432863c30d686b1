// nrx::transport::Region (transport/region.h): every backing kind a shm log region can come from,
// checked for what matters to the log: two mappings of one backing see the same bytes (in one
// process, and across a fork with the memfd passed over SCM_RIGHTS), bad input is a clear error,
// and describe() says what pages were obtained. No DAX device or ivshmem BAR exists here, so those
// paths run against a fake sysfs tree and regular files standing in for the device files.
#include "transport/region.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <type_traits>

#include <gtest/gtest.h>

namespace nrx::transport {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

static_assert(!std::is_copy_constructible_v<Region>);
static_assert(!std::is_copy_assignable_v<Region>);
static_assert(std::is_nothrow_move_constructible_v<Region>);
static_assert(std::is_nothrow_move_assignable_v<Region>);

bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

void make_sized_file(const fs::path& path, size_t bytes) {
  std::ofstream(path).close();
  fs::resize_file(path, bytes);
}

// A fresh scratch directory under /tmp and a unique /dev/shm name per test; both removed after.
class RegionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nrx-region-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    shm_path_ = "/dev/shm/nrx-region-test-" + std::to_string(::getpid()) + "-" + info->name();
    fs::remove(shm_path_);
  }
  void TearDown() override {
    std::error_code ec;  // best effort: a failed test may leave either behind
    fs::remove_all(dir_, ec);
    fs::remove(shm_path_, ec);
  }

  fs::path dir_;
  std::string shm_path_;
};

// ---- /dev/shm files ---------------------------------------------------------------------------

TEST_F(RegionTest, CreatedAndAttachedFileShareBytes) {
  auto a = Region::create_file(shm_path_, 1 * kMiB);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  auto b = Region::attach_file(shm_path_);
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  ASSERT_EQ(a->size(), 1 * kMiB);
  ASSERT_EQ(b->size(), 1 * kMiB);
  EXPECT_NE(a->bytes().data(), b->bytes().data());
  EXPECT_EQ(a->kind(), RegionKind::kFile);
  EXPECT_EQ(a->source(), shm_path_);
  EXPECT_EQ(a->page_size(), 4 * kKiB);
  EXPECT_EQ(a->describe(), "file " + shm_path_ + ", 1 MiB, 4 KiB pages");

  // Fresh file: zero-filled. Then stores through either mapping are loads through the other.
  for (std::byte x : b->bytes()) ASSERT_EQ(x, std::byte{0});
  for (size_t i = 0; i < a->size(); i += 4093) a->bytes()[i] = std::byte(i * 7);
  for (size_t i = 0; i < b->size(); i += 4093) ASSERT_EQ(b->bytes()[i], std::byte(i * 7)) << i;
  b->bytes()[b->size() - 1] = std::byte{0x5a};
  EXPECT_EQ(a->bytes()[a->size() - 1], std::byte{0x5a});

  struct stat st {};
  ASSERT_EQ(::stat(shm_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(RegionTest, CreatedFileOutlivesItsRegionByDefault) {
  { ASSERT_TRUE(Region::create_file(shm_path_, 8 * kKiB).ok()); }
  EXPECT_TRUE(fs::exists(shm_path_));
  auto again = Region::attach_file(shm_path_);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again->size(), 8 * kKiB);
}

TEST_F(RegionTest, UnlinkOnCloseRemovesTheFileButNotOtherMappings) {
  auto creator = Region::create_file(shm_path_, 64 * kKiB, {.unlink_on_close = true});
  ASSERT_TRUE(creator.ok()) << creator.status().to_string();
  auto peer = Region::attach_file(shm_path_);
  ASSERT_TRUE(peer.ok());
  creator->bytes()[100] = std::byte{42};
  { Region gone = std::move(*creator); }
  EXPECT_FALSE(fs::exists(shm_path_));
  EXPECT_EQ(peer->bytes()[100], std::byte{42});
  peer->bytes()[101] = std::byte{43};  // still mapped and writable
}

TEST_F(RegionTest, CreateRefusesAnExistingFileUnlessReplacing) {
  auto first = Region::create_file(shm_path_, 4 * kKiB);
  ASSERT_TRUE(first.ok());
  first->bytes()[0] = std::byte{9};
  auto second = Region::create_file(shm_path_, 4 * kKiB);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(second.status().message().find("replace_existing"), std::string::npos);

  auto replaced = Region::create_file(shm_path_, 16 * kKiB, {.replace_existing = true});
  ASSERT_TRUE(replaced.ok()) << replaced.status().to_string();
  EXPECT_EQ(replaced->size(), 16 * kKiB);
  EXPECT_EQ(replaced->bytes()[0], std::byte{0});  // a new file, not the stale one resized
  EXPECT_EQ(first->bytes()[0], std::byte{9});     // the old mapping keeps the old (unlinked) file
}

TEST_F(RegionTest, CreateFileOptionsModeReserveAndHugePages) {
  auto r = Region::create_file(shm_path_, 2 * kMiB, {.huge_pages = true, .reserve = true, .mode = 0640});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  struct stat st {};
  ASSERT_EQ(::stat(shm_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_GE(static_cast<size_t>(st.st_blocks) * 512, 2 * kMiB);  // reserved, not sparse
  // /dev/shm is tmpfs: the note names the hint and the shmem THP setting it depends on.
  EXPECT_NE(r->describe().find("MADV_HUGEPAGE"), std::string::npos) << r->describe();
  EXPECT_NE(r->describe().find("shmem THP"), std::string::npos) << r->describe();
}

TEST_F(RegionTest, CreateFileBadInput) {
  struct Case {
    const char* what;
    std::string path;
    size_t bytes;
    StatusCode code;
  };
  const Case cases[] = {
      {"empty path", "", 4 * kKiB, StatusCode::kInvalidArgument},
      {"zero size", shm_path_, 0, StatusCode::kInvalidArgument},
      {"below a page", shm_path_, 1000, StatusCode::kInvalidArgument},
      {"not a page multiple", shm_path_, 4 * kKiB + 1, StatusCode::kInvalidArgument},
      {"directory", dir_.string(), 4 * kKiB, StatusCode::kInvalidArgument},
      {"missing parent", (dir_ / "no" / "such").string(), 4 * kKiB, StatusCode::kNotFound},
  };
  for (const Case& c : cases) {
    auto r = Region::create_file(c.path, c.bytes);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().to_string();
    EXPECT_FALSE(r.status().message().empty()) << c.what;
  }
  EXPECT_FALSE(fs::exists(shm_path_));  // no failed create leaves a file behind
}

TEST_F(RegionTest, AttachFileBadInput) {
  make_sized_file(dir_ / "empty", 0);
  make_sized_file(dir_ / "odd", 5000);
  ASSERT_EQ(::mkfifo((dir_ / "fifo").c_str(), 0600), 0);
  struct Case {
    const char* what;
    std::string path;
    StatusCode code;
  };
  const Case cases[] = {
      {"empty path", "", StatusCode::kInvalidArgument},
      {"missing", (dir_ / "missing").string(), StatusCode::kNotFound},
      {"empty file", (dir_ / "empty").string(), StatusCode::kFailedPrecondition},
      {"not a page multiple", (dir_ / "odd").string(), StatusCode::kFailedPrecondition},
      {"directory", dir_.string(), StatusCode::kFailedPrecondition},
      {"fifo (must not hang)", (dir_ / "fifo").string(), StatusCode::kFailedPrecondition},
  };
  for (const Case& c : cases) {
    auto r = Region::attach_file(c.path);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().to_string();
  }
  auto dir = Region::attach_file(dir_.string());
  EXPECT_NE(dir.status().message().find("directory"), std::string::npos) << dir.status().to_string();
  auto empty = Region::attach_file((dir_ / "empty").string());
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos) << empty.status().to_string();
}

// ---- memfd and fd passing ---------------------------------------------------------------------

TEST_F(RegionTest, MemfdAttachedThroughItsFdSharesBytes) {
  auto a = Region::create_memfd("nrx-log", 64 * kMiB);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->kind(), RegionKind::kMemfd);
  EXPECT_EQ(a->describe(), "memfd nrx-log, 64 MiB, 4 KiB pages");

  const int fd = ::dup(a->fd());
  ASSERT_GE(fd, 0);
  auto b = Region::attach_fd(fd);
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_TRUE(fd_is_open(fd));  // attach_fd dup'd: the caller's fd is still its own
  ::close(fd);
  EXPECT_EQ(b->kind(), RegionKind::kMemfd);
  EXPECT_EQ(b->source(), "nrx-log");
  EXPECT_EQ(b->size(), 64 * kMiB);
  a->bytes()[12345] = std::byte{0xab};
  EXPECT_EQ(b->bytes()[12345], std::byte{0xab});

  // Sealed: no holder of the fd can shrink it under the other mappings.
  EXPECT_NE(::ftruncate(b->fd(), 4 * kKiB), 0);
}

TEST_F(RegionTest, AttachFdBadInput) {
  EXPECT_EQ(Region::attach_fd(-1).status().code(), StatusCode::kInvalidArgument);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ::close(p[1]);
  const int closed = p[1];
  EXPECT_EQ(Region::attach_fd(closed).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Region::attach_fd(p[0]).status().code(), StatusCode::kFailedPrecondition);  // a pipe
  ::close(p[0]);

  make_sized_file(dir_ / "ro", 4 * kKiB);
  const int ro = ::open((dir_ / "ro").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(ro, 0);
  auto r = Region::attach_fd(ro);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().to_string();
  ::close(ro);

  // A regular file's fd attaches as a file, named by its path.
  const int rw = ::open((dir_ / "ro").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(rw, 0);
  auto f = Region::attach_fd(rw);
  ::close(rw);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->kind(), RegionKind::kFile);
  EXPECT_EQ(f->source(), (dir_ / "ro").string());
}

TEST_F(RegionTest, CreateMemfdBadInput) {
  EXPECT_EQ(Region::create_memfd("", 4 * kKiB).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Region::create_memfd(std::string(250, 'n'), 4 * kKiB).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Region::create_memfd("x", 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Region::create_memfd("x", 4 * kKiB + 8).status().code(), StatusCode::kInvalidArgument);
}

// The child process: receives the memfd, maps it, writes a pattern, answers one byte.
[[noreturn]] void child_writes_pattern(int sock) {
  auto fd = receive_fd(sock, 10s);
  if (!fd.ok()) ::_exit(10);
  auto r = Region::attach_fd(*fd);
  ::close(*fd);
  if (!r.ok()) ::_exit(11);
  if (r->kind() != RegionKind::kMemfd || r->source() != "nrx-fork") ::_exit(12);
  // The parent's marker must already be visible: one backing, not a copy.
  if (r->bytes()[0] != std::byte{0xee}) ::_exit(13);
  for (size_t i = 1; i < r->size(); ++i) r->bytes()[i] = std::byte((i * 31) & 0xff);
  const char done = 'D';
  if (::write(sock, &done, 1) != 1) ::_exit(14);
  ::_exit(0);
}

TEST_F(RegionTest, MemfdPassedToForkedChildOverSocketpair) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(sv[0]);
    child_writes_pattern(sv[1]);
  }
  ::close(sv[1]);
  // Created after the fork: the child can only have it through SCM_RIGHTS.
  auto region = Region::create_memfd("nrx-fork", 256 * kKiB);
  ASSERT_TRUE(region.ok()) << region.status().to_string();
  region->bytes()[0] = std::byte{0xee};
  ASSERT_TRUE(send_fd(sv[0], region->fd()).ok());

  // Bounded waits: the child's answer, then its exit; a hung child is killed, not waited for.
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  pollfd p{sv[0], POLLIN, 0};
  const int ready = ::poll(&p, 1, 20'000);
  char done = 0;
  const bool answered = ready == 1 && ::read(sv[0], &done, 1) == 1 && done == 'D';
  int wstatus = 0;
  pid_t waited = 0;
  while ((waited = ::waitpid(pid, &wstatus, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  if (waited == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &wstatus, 0);
    FAIL() << "child did not exit in time";
  }
  ::close(sv[0]);
  ASSERT_TRUE(WIFEXITED(wstatus)) << "child status " << wstatus;
  ASSERT_EQ(WEXITSTATUS(wstatus), 0) << "child failed at step " << WEXITSTATUS(wstatus);
  ASSERT_TRUE(answered);
  for (size_t i = 1; i < region->size(); ++i) {
    ASSERT_EQ(region->bytes()[i], std::byte((i * 31) & 0xff)) << "byte " << i;
  }
}

TEST_F(RegionTest, ReceivedFdAttachesInTheSameProcess) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
  auto a = Region::create_memfd("nrx-self", 16 * kKiB);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(send_fd(sv[0], a->fd()).ok());
  auto fd = receive_fd(sv[1], 5s);
  ASSERT_TRUE(fd.ok()) << fd.status().to_string();
  EXPECT_NE(*fd, a->fd());
  EXPECT_TRUE(::fcntl(*fd, F_GETFD) & FD_CLOEXEC);
  auto b = Region::attach_fd(*fd);
  ::close(*fd);
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  b->bytes()[7] = std::byte{7};
  EXPECT_EQ(a->bytes()[7], std::byte{7});
  ::close(sv[0]);
  ::close(sv[1]);
}

TEST_F(RegionTest, FdPassingErrors) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  EXPECT_EQ(send_fd(sv[0], -1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(send_fd(-1, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(receive_fd(-1).status().code(), StatusCode::kInvalidArgument);

  // Nothing sent: the deadline ends the wait.
  const auto start = std::chrono::steady_clock::now();
  auto none = receive_fd(sv[1], 50ms);
  EXPECT_EQ(none.status().code(), StatusCode::kDeadlineExceeded) << none.status().to_string();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 45ms);

  // A byte without an fd is not an fd.
  const char plain = 'x';
  ASSERT_EQ(::write(sv[0], &plain, 1), 1);
  EXPECT_EQ(receive_fd(sv[1], 1s).status().code(), StatusCode::kDataLoss);

  // Not a socket.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  EXPECT_EQ(send_fd(p[1], p[0]).code(), StatusCode::kInvalidArgument);
  ::close(p[0]);
  ::close(p[1]);

  // The peer has gone: the receiver sees the close, the sender an error, not SIGPIPE.
  ::close(sv[0]);
  EXPECT_EQ(receive_fd(sv[1], 1s).status().code(), StatusCode::kUnavailable);
  int sv2[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2), 0);
  ::close(sv2[1]);
  EXPECT_EQ(send_fd(sv2[0], sv[1]).code(), StatusCode::kUnavailable);
  ::close(sv2[0]);
  ::close(sv[1]);
}

// ---- Huge pages -------------------------------------------------------------------------------

TEST_F(RegionTest, MemfdHugePagesOrAReportedFallback) {
  auto r = Region::create_memfd("nrx-huge", 4 * kMiB, {.huge_pages = true});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const std::string d = r->describe();
  if (r->hugetlb()) {  // a machine with free hugetlb pages
    EXPECT_GE(r->page_size(), 2 * kMiB);
    EXPECT_NE(d.find("hugetlb pages"), std::string::npos) << d;
  } else {  // here: vm.nr_hugepages is 0, so MFD_HUGETLB fails and base pages are used
    EXPECT_EQ(r->page_size(), 4 * kKiB);
    EXPECT_NE(d.find("MFD_HUGETLB failed"), std::string::npos) << d;
    EXPECT_NE(d.find("fell back"), std::string::npos) << d;
  }
  r->bytes()[r->size() - 1] = std::byte{1};  // usable either way
  std::printf("huge-page memfd: %s\n", d.c_str());

  // A size that is no huge page multiple never tries MFD_HUGETLB, and says so.
  auto small = Region::create_memfd("nrx-small", 12 * kKiB, {.huge_pages = true});
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  EXPECT_FALSE(small->hugetlb());
  EXPECT_NE(small->describe().find("not a multiple of"), std::string::npos) << small->describe();
  EXPECT_NE(small->describe().find("fell back"), std::string::npos) << small->describe();
}

// ---- Device-dax -------------------------------------------------------------------------------

// A fake sysfs tree with bus/dax/devices/dax0.0/{size,align} and a regular file standing in for
// /dev/dax0.0, as big as the device.
class DaxTest : public RegionTest {
 protected:
  void SetUp() override {
    RegionTest::SetUp();
    sysfs_ = dir_ / "sys";
    entry_ = sysfs_ / "bus/dax/devices/dax0.0";
    fs::create_directories(entry_);
    fs::create_directories(dir_ / "dev");
    device_ = (dir_ / "dev/dax0.0").string();
    make_sized_file(device_, 8 * kMiB);
    write_file(entry_ / "size", "8388608\n");
    write_file(entry_ / "align", "2097152\n");
  }
  DaxOptions options(uint64_t offset = 0, uint64_t length = 0) const {
    return {.sysfs_root = sysfs_.string(), .offset = offset, .length = length, .allow_regular_file = true};
  }

  fs::path sysfs_;
  fs::path entry_;
  std::string device_;
};

TEST_F(DaxTest, SizeAndAlignmentComeFromSysfs) {
  auto r = Region::attach_dax(device_, options());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->kind(), RegionKind::kDax);
  EXPECT_EQ(r->size(), 8 * kMiB);
  EXPECT_EQ(r->page_size(), 2 * kMiB);
  EXPECT_EQ(r->describe(), "dax " + device_ + ", 8 MiB, 2 MiB aligned");

  // MAP_SHARED: the stand-in's bytes, as a file mapping of it sees them.
  auto file = Region::attach_file(device_);
  ASSERT_TRUE(file.ok());
  r->bytes()[3 * kMiB + 5] = std::byte{0x33};
  EXPECT_EQ(file->bytes()[3 * kMiB + 5], std::byte{0x33});

  // A window at an aligned offset; length 0 is "to the end".
  auto window = Region::attach_dax(device_, options(2 * kMiB));
  ASSERT_TRUE(window.ok()) << window.status().to_string();
  EXPECT_EQ(window->size(), 6 * kMiB);
  EXPECT_EQ(window->offset(), 2 * kMiB);
  EXPECT_EQ(window->bytes()[1 * kMiB + 5], std::byte{0x33});
  EXPECT_EQ(window->describe(), "dax " + device_ + ", 6 MiB at offset 2 MiB, 2 MiB aligned");
  auto two = Region::attach_dax(device_, options(4 * kMiB, 2 * kMiB));
  ASSERT_TRUE(two.ok()) << two.status().to_string();
  EXPECT_EQ(two->size(), 2 * kMiB);
}

TEST_F(DaxTest, AlignmentDefaultsAndOtherValues) {
  fs::remove(entry_ / "align");  // kernels before 5.10 have no align attribute
  auto r = Region::attach_dax(device_, options());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->page_size(), kDefaultDaxAlign);

  // A 4 KiB-aligned namespace (`ndctl create-namespace -a 4096`), size in hex, not a 2 MiB multiple;
  // a 2 MiB alignment would round the same size down.
  write_file(entry_ / "align", "4096");
  write_file(entry_ / "size", "0x7ff000\n");
  auto small = Region::attach_dax(device_, options());
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  EXPECT_EQ(small->size(), 8 * kMiB - 4 * kKiB);
  EXPECT_EQ(small->page_size(), 4 * kKiB);
  write_file(entry_ / "align", "2097152");
  auto rounded = Region::attach_dax(device_, options());
  ASSERT_TRUE(rounded.ok()) << rounded.status().to_string();
  EXPECT_EQ(rounded->size(), 6 * kMiB);
}

TEST_F(DaxTest, BadWindowsAndBadSysfs) {
  struct Case {
    const char* what;
    uint64_t offset, length;
    StatusCode code;
  };
  const Case windows[] = {
      {"misaligned offset", 1 * kMiB, 0, StatusCode::kInvalidArgument},
      {"misaligned length", 0, 2 * kMiB + 4 * kKiB, StatusCode::kInvalidArgument},
      {"offset at the end", 8 * kMiB, 0, StatusCode::kOutOfRange},
      {"window past the end", 2 * kMiB, 8 * kMiB, StatusCode::kOutOfRange},
  };
  for (const Case& c : windows) {
    auto r = Region::attach_dax(device_, options(c.offset, c.length));
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().to_string();
  }

  struct SysfsCase {
    const char* what;
    const char* size;
    const char* align;
    StatusCode code;
  };
  const SysfsCase attributes[] = {
      {"size not a number", "lots\n", "2097152", StatusCode::kDataLoss},
      {"size empty", "\n", "2097152", StatusCode::kDataLoss},
      {"size zero", "0\n", "2097152", StatusCode::kUnavailable},
      {"align not a power of two", "8388608", "3000000", StatusCode::kDataLoss},
      {"align below a page", "8388608", "512", StatusCode::kDataLoss},
      {"size beyond the stand-in", "16777216", "2097152", StatusCode::kFailedPrecondition},
  };
  for (const SysfsCase& c : attributes) {
    write_file(entry_ / "size", c.size);
    write_file(entry_ / "align", c.align);
    auto r = Region::attach_dax(device_, options());
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().to_string();
  }
}

TEST_F(DaxTest, NotADaxDevice) {
  // A regular file is refused unless a test allows it.
  DaxOptions strict = options();
  strict.allow_regular_file = false;
  EXPECT_EQ(Region::attach_dax(device_, strict).status().code(), StatusCode::kUnavailable);
  // No sysfs entry for the name.
  make_sized_file(dir_ / "dev/dax9.9", 2 * kMiB);
  auto unknown = Region::attach_dax((dir_ / "dev/dax9.9").string(), options());
  EXPECT_EQ(unknown.status().code(), StatusCode::kUnavailable) << unknown.status().to_string();
  EXPECT_EQ(Region::attach_dax("", options()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Region::attach_dax((dir_ / "dev").string(), options()).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(Region::attach_dax((dir_ / "dev/none").string(), options()).status().code(), StatusCode::kNotFound);

  // This machine's real devices: no /dev/dax0.0, and /dev/null is a character device that the real
  // sysfs does not list as dax.
  if (!fs::exists("/dev/dax0.0")) {
    auto missing = Region::attach_dax("/dev/dax0.0");
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().to_string();
    EXPECT_NE(missing.status().message().find("device-dax"), std::string::npos);
  }
  auto null_dev = Region::attach_dax("/dev/null");
  EXPECT_EQ(null_dev.status().code(), StatusCode::kUnavailable) << null_dev.status().to_string();
}

TEST_F(DaxTest, CharacterDeviceIsFoundByMajorMinor) {
  // /dev/null stands in for a character device; the fake sysfs lists its major:minor as dax, so
  // lookup succeeds and the mapping itself is what fails (the null device cannot be mapped).
  struct stat st {};
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  const fs::path by_devno =
      sysfs_ / "dev/char" / (std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev)));
  fs::create_directories(by_devno);
  write_file(by_devno / "size", "4194304");
  write_file(by_devno / "align", "2097152");
  auto r = Region::attach_dax("/dev/null", options(0, 0));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().to_string();
  EXPECT_NE(r.status().message().find("mmap"), std::string::npos) << r.status().to_string();
  // The window was checked against the sysfs size first.
  EXPECT_EQ(Region::attach_dax("/dev/null", options(0, 8 * kMiB)).status().code(), StatusCode::kOutOfRange);
}

// ---- ivshmem BAR ------------------------------------------------------------------------------

TEST_F(RegionTest, PciBarStandInFile) {
  const std::string bar = (dir_ / "resource2").string();
  make_sized_file(bar, 64 * kKiB);
  auto r = Region::attach_pci_bar(bar);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->kind(), RegionKind::kPciBar);
  EXPECT_EQ(r->size(), 64 * kKiB);
  EXPECT_EQ(r->describe(), "pci-bar " + bar + ", 64 KiB, 4 KiB pages");
  auto window = Region::attach_pci_bar(bar, {.offset = 4 * kKiB, .length = 8 * kKiB});
  ASSERT_TRUE(window.ok()) << window.status().to_string();
  EXPECT_EQ(window->size(), 8 * kKiB);
  r->bytes()[4 * kKiB + 3] = std::byte{0x42};
  EXPECT_EQ(window->bytes()[3], std::byte{0x42});

  make_sized_file(dir_ / "empty", 0);
  struct Case {
    const char* what;
    std::string path;
    PciBarOptions options;
    StatusCode code;
  };
  const Case cases[] = {
      {"empty path", "", {}, StatusCode::kInvalidArgument},
      {"missing", (dir_ / "resource9").string(), {}, StatusCode::kNotFound},
      {"directory", dir_.string(), {}, StatusCode::kFailedPrecondition},
      {"zero-sized", (dir_ / "empty").string(), {}, StatusCode::kFailedPrecondition},
      {"character device", "/dev/null", {}, StatusCode::kFailedPrecondition},
      {"misaligned offset", bar, {.offset = 100}, StatusCode::kInvalidArgument},
      {"misaligned length", bar, {.length = 5000}, StatusCode::kInvalidArgument},
      {"past the end", bar, {.offset = 64 * kKiB}, StatusCode::kOutOfRange},
      {"window too long", bar, {.offset = 60 * kKiB, .length = 8 * kKiB}, StatusCode::kOutOfRange},
  };
  for (const Case& c : cases) {
    auto e = Region::attach_pci_bar(c.path, c.options);
    EXPECT_EQ(e.status().code(), c.code) << c.what << ": " << e.status().to_string();
  }
}

// ---- Lifetime ---------------------------------------------------------------------------------

TEST_F(RegionTest, MoveTransfersOwnershipAndDestructionReleases) {
  auto made = Region::create_memfd("nrx-move", 8 * kKiB);
  ASSERT_TRUE(made.ok());
  Region a = std::move(*made);
  const int fd = a.fd();
  std::byte* base = a.bytes().data();
  Region b = std::move(a);
  EXPECT_EQ(a.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_TRUE(a.bytes().empty());
  EXPECT_EQ(a.fd(), -1);
  EXPECT_EQ(a.describe(), "empty region (moved from)");
  EXPECT_EQ(b.bytes().data(), base);
  EXPECT_EQ(b.fd(), fd);

  auto other = Region::create_memfd("nrx-other", 4 * kKiB);
  ASSERT_TRUE(other.ok());
  const int other_fd = other->fd();
  *other = std::move(b);  // releases nrx-other's mapping and fd
  EXPECT_FALSE(fd_is_open(other_fd));
  EXPECT_EQ(other->fd(), fd);
  EXPECT_EQ(other->source(), "nrx-move");
  { Region last = std::move(*other); }
  EXPECT_FALSE(fd_is_open(fd));
}

TEST(FormatBytes, ExactUnits) {
  EXPECT_EQ(format_bytes(0), "0 bytes");
  EXPECT_EQ(format_bytes(4096), "4 KiB");
  EXPECT_EQ(format_bytes(64 * kMiB), "64 MiB");
  EXPECT_EQ(format_bytes(uint64_t{3} << 30), "3 GiB");
  EXPECT_EQ(format_bytes(1536 * kKiB), "1536 KiB");
  EXPECT_EQ(format_bytes(12345), "12345 bytes");
  EXPECT_EQ(region_kind_name(RegionKind::kPciBar), "pci-bar");
}

}  // namespace
}  // namespace nrx::transport
