// A separate client process for channel_test: it links only libnrx.so and uses only its C API
// (libnrx.h), as a program outside the tree would. Runs a scripted session against the channel
// named on the command line and exits 0 if every result was as expected (1 otherwise, with the
// failures on stderr). It leaves /helper/keep ("written by the helper") for the test to check.
//
//   syscall_client_helper /dev/shm/nrx-test-123
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernel/syscall/libnrx.h"

namespace {

int g_failures = 0;

#define EXPECT_EQ_I(actual, expected)                                                                  \
  do {                                                                                                 \
    const long long a_ = static_cast<long long>(actual), e_ = static_cast<long long>(expected);        \
    if (a_ != e_) {                                                                                    \
      std::fprintf(stderr, "helper: %s:%d: %s is %lld, expected %lld\n", __FILE__, __LINE__, #actual, a_, e_); \
      ++g_failures;                                                                                    \
    }                                                                                                  \
  } while (0)

#define EXPECT_TRUE_I(cond)                                                                \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "helper: %s:%d: %s is false\n", __FILE__, __LINE__, #cond);     \
      ++g_failures;                                                                        \
    }                                                                                      \
  } while (0)

std::string pattern(size_t n, size_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CHANNEL\n", argv[0]);
    return 2;
  }
  if (int rc = nrx_connect(argv[1]); rc != 0) {
    std::fprintf(stderr, "helper: nrx_connect: %s (%s)\n", std::strerror(-rc), nrx_last_error());
    return 1;
  }
  EXPECT_EQ_I(nrx_connect(argv[1]), -EISCONN);

  EXPECT_EQ_I(nrx_mkdir("/helper", 0755), 0);
  EXPECT_EQ_I(nrx_mkdir("/helper", 0755), -EEXIST);
  const int fd = nrx_open("/helper/a", NRX_O_CREAT | NRX_O_RDWR, 0644);
  EXPECT_TRUE_I(fd >= 0);

  // 300 KiB: three requests each way (NRX_MAX_IO is 128 KiB).
  const std::string data = pattern(300 * 1024, 1);
  EXPECT_EQ_I(nrx_write(fd, data.data(), data.size()), data.size());
  EXPECT_EQ_I(nrx_lseek(fd, 0, NRX_SEEK_CUR), data.size());
  EXPECT_EQ_I(nrx_lseek(fd, 0, NRX_SEEK_SET), 0);
  std::vector<char> buf(data.size() + 100);
  EXPECT_EQ_I(nrx_read(fd, buf.data(), buf.size()), data.size());
  EXPECT_TRUE_I(std::memcmp(buf.data(), data.data(), data.size()) == 0);
  EXPECT_EQ_I(nrx_read(fd, buf.data(), buf.size()), 0);  // at the end
  EXPECT_EQ_I(nrx_lseek(fd, -10, NRX_SEEK_END), data.size() - 10);
  EXPECT_EQ_I(nrx_read(fd, buf.data(), 100), 10);
  EXPECT_TRUE_I(std::memcmp(buf.data(), data.data() + data.size() - 10, 10) == 0);
  EXPECT_EQ_I(nrx_lseek(fd, -1, NRX_SEEK_SET), -EINVAL);
  EXPECT_EQ_I(nrx_lseek(fd, 0, 7), -EINVAL);
  EXPECT_EQ_I(nrx_pwrite(fd, "XYZ", 3, 5), 3);
  EXPECT_EQ_I(nrx_pread(fd, buf.data(), 5, 4), 5);
  EXPECT_TRUE_I(std::memcmp(buf.data(), (std::string(1, data[4]) + "XYZ" + data[8]).data(), 5) == 0);
  EXPECT_EQ_I(nrx_pread(fd, buf.data(), 5, -1), -EINVAL);

  struct nrx_statbuf st;
  EXPECT_EQ_I(nrx_fstat(fd, &st), 0);
  EXPECT_EQ_I(st.size, data.size());
  EXPECT_EQ_I(st.type, NRX_DT_REG);
  EXPECT_EQ_I(nrx_ftruncate(fd, 1000), 0);
  EXPECT_EQ_I(nrx_stat("/helper/a", &st), 0);
  EXPECT_EQ_I(st.size, 1000);
  EXPECT_EQ_I(nrx_fsync(fd), 0);
  EXPECT_EQ_I(nrx_fchmod(fd, 0600), 0);
  EXPECT_EQ_I(nrx_futimens(fd, 5'000'000'000, NRX_UTIME_OMIT), 0);
  EXPECT_EQ_I(nrx_fstat(fd, &st), 0);
  EXPECT_EQ_I(st.mode, 0600);
  EXPECT_EQ_I(st.atime_ns, 5'000'000'000);

  // Rename, and the old name is gone.
  EXPECT_EQ_I(nrx_rename("/helper/a", "/helper/b"), 0);
  EXPECT_EQ_I(nrx_stat("/helper/a", &st), -ENOENT);
  EXPECT_EQ_I(nrx_stat("/helper/b", &st), 0);
  EXPECT_EQ_I(nrx_read(fd, buf.data(), 10), 0);  // the descriptor follows the inode; offset past 1000
  EXPECT_EQ_I(nrx_pread(fd, buf.data(), 10, 0), 10);

  // readdir, in pages of two.
  for (const char* name : {"/helper/c", "/helper/d", "/helper/e"}) {
    const int f = nrx_open(name, NRX_O_CREAT | NRX_O_WRONLY | NRX_O_EXCL, 0644);
    EXPECT_TRUE_I(f >= 0);
    EXPECT_EQ_I(nrx_close(f), 0);
  }
  struct nrx_dirent entries[2];
  std::string listing;
  std::string after;
  for (;;) {
    const int n = nrx_readdir("/helper", after.c_str(), entries, 2);
    EXPECT_TRUE_I(n >= 0 && n <= 2);
    if (n <= 0) break;
    for (int i = 0; i < n; ++i) listing += std::string(entries[i].name) + ",";
    after = entries[n - 1].name;
  }
  EXPECT_TRUE_I(listing == "b,c,d,e,");
  if (listing != "b,c,d,e,") std::fprintf(stderr, "helper: listing %s\n", listing.c_str());
  EXPECT_EQ_I(nrx_readdir("/helper/b", nullptr, entries, 2), -ENOTDIR);

  // Append mode writes at the end.
  const int app = nrx_open("/helper/c", NRX_O_WRONLY | NRX_O_APPEND, 0);
  EXPECT_EQ_I(nrx_write(app, "12", 2), 2);
  EXPECT_EQ_I(nrx_write(app, "34", 2), 2);
  EXPECT_EQ_I(nrx_lseek(app, 0, NRX_SEEK_CUR), 4);
  EXPECT_EQ_I(nrx_read(app, buf.data(), 1), -EBADF);  // write-only
  EXPECT_EQ_I(nrx_close(app), 0);

  // Descriptor errors.
  EXPECT_EQ_I(nrx_close(fd), 0);
  EXPECT_EQ_I(nrx_close(fd), -EBADF);
  EXPECT_EQ_I(nrx_read(fd, buf.data(), 1), -EBADF);
  EXPECT_EQ_I(nrx_write(-1, "x", 1), -EBADF);
  EXPECT_EQ_I(nrx_fstat(1 << 20, &st), -EBADF);
  const int ro = nrx_open("/helper/b", NRX_O_RDONLY, 0);
  EXPECT_EQ_I(ro, fd);  // the lowest free descriptor
  EXPECT_EQ_I(nrx_write(ro, "x", 1), -EBADF);
  EXPECT_EQ_I(nrx_ftruncate(ro, 0), -EINVAL);
  EXPECT_EQ_I(nrx_close(ro), 0);

  // Bad input is answered, not crashed on, across processes too.
  EXPECT_EQ_I(nrx_open("/helper/../..", NRX_O_RDONLY, 0), -EINVAL);
  EXPECT_EQ_I(nrx_open((std::string("/") + std::string(256, 'n')).c_str(), NRX_O_CREAT | NRX_O_RDWR, 0644),
              -ENAMETOOLONG);
  EXPECT_EQ_I(nrx_open("", NRX_O_RDONLY, 0), -ENOENT);
  nrx_request raw{};
  nrx_response resp;
  raw.sysno = 4242;
  EXPECT_EQ_I(nrx_syscall(&raw, nullptr, 0, &resp, nullptr, 0), -ENOSYS);
  raw.sysno = NRX_SYS_STAT;
  raw.path_len = UINT32_MAX;
  EXPECT_EQ_I(nrx_syscall(&raw, nullptr, 0, &resp, nullptr, 0), -EFAULT);

  // Unlink and rmdir; leave one file for the test to read through the kernel API.
  for (const char* name : {"/helper/b", "/helper/c", "/helper/d", "/helper/e"}) EXPECT_EQ_I(nrx_unlink(name), 0);
  EXPECT_EQ_I(nrx_rmdir("/helper"), 0);
  EXPECT_EQ_I(nrx_mkdir("/helper", 0755), 0);
  const int keep = nrx_open("/helper/keep", NRX_O_CREAT | NRX_O_WRONLY | NRX_O_TRUNC, 0644);
  EXPECT_EQ_I(nrx_write(keep, "written by the helper", 21), 21);
  EXPECT_EQ_I(nrx_close(keep), 0);

  EXPECT_EQ_I(nrx_disconnect(), 0);
  EXPECT_EQ_I(nrx_disconnect(), -ENOTCONN);
  EXPECT_EQ_I(nrx_mkdir("/x", 0755), -ENOTCONN);
  if (g_failures != 0) std::fprintf(stderr, "helper: %d failures\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
