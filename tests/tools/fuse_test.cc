// `nrx fs mount` end to end (tools/nrx/fuse_mount.h): the built nrx binary (NRX_BINARY) mounts
// NR-FS with two replicas on a fresh directory in a child process (--foreground), and unmodified
// programs use it:
//   - sqlite3 (the Debian binary) creates a table, inserts 10^4 rows in one transaction, counts
//     them, and a second sqlite3 process runs PRAGMA integrity_check, which must print "ok";
//   - tar copies a source tree (NRX_SOURCE_TREE, snapshotted first so concurrent edits cannot
//     race the comparison) onto the mount and back off it, and diff -r finds no difference, both
//     between the snapshot and the copy back and between the snapshot and the mount itself;
//   - plain POSIX calls check the namespace rules (mkdir, rename over a file, ENOTEMPTY, unlink,
//     sorted listings, truncate, statfs, RENAME_NOREPLACE refused with EINVAL);
//   - four cp processes write at once, and the FUSE workers' handles span both replicas;
//   - with --channel, a libnrx client and the mount see each other's changes at once.
// Then the file system is unmounted (fusermount3 -u, or SIGTERM to the server) and the server
// must exit 0.
//
// Skips (GTEST_SKIP, with nrx's own one-line reason) when FUSE is not available: nrx exits 3 when
// /dev/fuse is missing or the kernel refuses the mount.
//
// Every wait is bounded: mount polling, each program and the server's exit have deadlines, and a
// watchdog kills the server when a whole test overruns, so a call stuck on the mount fails with
// ENOTCONN instead of hanging the suite.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/check.h"
#include "kernel/syscall/libnrx.h"

extern char** environ;

namespace nrx::tools {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kMountTimeout = std::chrono::seconds(60);    // boot + mount (sanitizer builds are slower)
constexpr auto kProgramTimeout = std::chrono::seconds(180);  // one sqlite3, tar or diff run
constexpr auto kExitTimeout = std::chrono::seconds(60);      // the server's exit after the unmount
constexpr auto kTestTimeout = std::chrono::seconds(480);     // the watchdog; ctest's TIMEOUT is 600
constexpr auto kPollInterval = std::chrono::milliseconds(20);  // the longest pause between polls
constexpr uint64_t kPoolMiB = 128;
constexpr int kExitNoFuse = 3;  // `nrx fs mount`: FUSE is not available here

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A temporary folder, removed with everything in it.
class TempDir {
 public:
  explicit TempDir(const char* what) {
    std::string name = std::string("/tmp/nrx-fuse-test-") + what + "-XXXXXX";
    NRX_CHECK(mkdtemp(name.data()) != nullptr, "mkdtemp failed");
    path_ = name;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Whether |dir| is a mount point, from /proc/self/mountinfo (field 5 is the mount point; our
// temporary paths have no characters that mountinfo escapes).
bool is_mounted(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, devs, root, mount_point;
    fields >> id >> parent >> devs >> root >> mount_point;
    if (mount_point == dir) return true;
  }
  return false;
}

struct Spawned {
  pid_t pid = -1;
  std::string error;  // set when the spawn failed
};

// Starts |argv| in its own process group, stdin from /dev/null, stdout and stderr to files.
Spawned spawn(const std::vector<std::string>& argv, const std::string& out_path, const std::string& err_path) {
  std::vector<std::string> args = argv;
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);  // so a timeout kills the whole pipeline
  posix_spawnattr_setpgroup(&attr, 0);
  Spawned s;
  const int rc = posix_spawnp(&s.pid, cargs[0], &fa, &attr, cargs.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) s.error = "cannot start " + argv[0] + ": " + std::strerror(rc);
  return s;
}

// Pauses between polls: 1 ms, doubling up to kPollInterval (short runs are timed closely).
class Backoff {
 public:
  void pause() {
    std::this_thread::sleep_for(pause_);
    pause_ = std::min<std::chrono::microseconds>(pause_ * 2, kPollInterval);
  }

 private:
  std::chrono::microseconds pause_{1000};
};

// Waits for |pid| until |deadline|; returns its exit status (128 + signal when killed), or
// nullopt when the deadline passed first.
std::optional<int> wait_until(pid_t pid, Clock::time_point deadline) {
  Backoff backoff;
  for (;;) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (done < 0 && errno != EINTR) return 255;  // not our child any more: nothing to wait for
    if (Clock::now() >= deadline) return std::nullopt;
    backoff.pause();  // polling the child, with a deadline
  }
}

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  double seconds = 0;
};

// Runs a bash command line (pipefail on) with a deadline; output captured under |scratch|.
RunResult run_shell(const std::string& command, const std::string& scratch) {
  const std::string out_path = scratch + "/cmd.out", err_path = scratch + "/cmd.err";
  const auto start = Clock::now();
  RunResult r;
  Spawned s = spawn({"/bin/bash", "-c", "set -o pipefail; " + command}, out_path, err_path);
  if (!s.error.empty()) {
    r.err = s.error;
    return r;
  }
  std::optional<int> code = wait_until(s.pid, start + kProgramTimeout);
  if (!code) {
    kill(-s.pid, SIGKILL);
    (void)waitpid(s.pid, nullptr, 0);
    r.err = "timed out after " + std::to_string(kProgramTimeout.count()) + " s: " + command;
    return r;
  }
  r.exit_code = *code;
  r.out = read_file(out_path);
  r.err = read_file(err_path);
  r.seconds = seconds_since(start);
  return r;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

// Calls |on_expiry| once if it is not destroyed within |limit|.
class Watchdog {
 public:
  Watchdog(std::chrono::seconds limit, std::function<void()> on_expiry)
      : thread_([this, limit, on_expiry = std::move(on_expiry)] {
          std::unique_lock<std::mutex> lock(mu_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) on_expiry();
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Sorted names in |dir| (without "." and ".."), in the order readdir returned them.
std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return {"<opendir failed: " + std::string(std::strerror(errno)) + ">"};
  while (const dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
  }
  closedir(d);
  return names;
}

// One `nrx fs mount MOUNT --foreground --nodes 2` child per test, on fresh directories.
class FuseMountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mount_ = mount_dir_.path();
    const std::string out = scratch_.path() + "/nrx.out", err = scratch_.path() + "/nrx.err";
    server_out_ = out;
    server_err_ = err;
    std::vector<std::string> argv = {NRX_BINARY,  "fs",         "mount", mount_, "--foreground",
                                     "--nodes",   "2",          "--pool-mib", std::to_string(kPoolMiB)};
    for (const std::string& a : extra_args()) argv.push_back(a);
    Spawned s = spawn(argv, out, err);
    ASSERT_TRUE(s.error.empty()) << s.error;
    server_.store(s.pid, std::memory_order_relaxed);
    // The watchdog kills the server when the test overruns: calls blocked on the mount then fail.
    watchdog_.emplace(kTestTimeout, [this] {
      std::fprintf(stderr, "fuse_test: the test overran %lld s; killing the server\n",
                   static_cast<long long>(kTestTimeout.count()));
      const pid_t pid = server_.load(std::memory_order_relaxed);
      if (pid > 0) kill(pid, SIGKILL);
      umount2(mount_.c_str(), MNT_DETACH);
    });

    const auto deadline = Clock::now() + kMountTimeout;
    Backoff backoff;
    const std::string expected_line =
        "nrx fs: NR-FS mounted on " + mount_ + " (2 replicas, 4 logs, " + std::to_string(kPoolMiB) + " MiB per node)";
    for (;;) {
      if (is_mounted(mount_) && read_file(out).find(expected_line) != std::string::npos) break;
      int status = 0;
      if (waitpid(s.pid, &status, WNOHANG) == s.pid) {
        server_.store(-1, std::memory_order_relaxed);
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        std::string reason = read_file(err);
        while (!reason.empty() && reason.back() == '\n') reason.pop_back();
        if (code == kExitNoFuse) GTEST_SKIP() << "FUSE is not available here: " << reason;
        FAIL() << "nrx fs mount exited " << code << " before mounting: " << reason;
      }
      ASSERT_LT(Clock::now(), deadline) << "no mount on " << mount_ << " after " << kMountTimeout.count()
                                        << " s; stdout: " << read_file(out) << " stderr: " << read_file(err);
      backoff.pause();  // polling mountinfo, with a deadline
    }
    mounted_ = true;
  }

  // Unmounts with fusermount3 -u, or with SIGTERM to the server; the server must exit 0.
  void unmount(bool by_signal) {
    if (!mounted_) return;
    mounted_ = false;
    const pid_t pid = server_.load(std::memory_order_relaxed);
    if (by_signal) {
      ASSERT_EQ(kill(pid, SIGTERM), 0) << std::strerror(errno);
    } else {
      RunResult r = run_shell("fusermount3 -u " + quote(mount_), scratch_.path());
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
    std::optional<int> code = wait_until(pid, Clock::now() + kExitTimeout);
    if (!code) {
      kill(pid, SIGKILL);
      (void)waitpid(pid, nullptr, 0);
    }
    server_.store(-1, std::memory_order_relaxed);
    ASSERT_TRUE(code.has_value()) << "the server did not exit within " << kExitTimeout.count() << " s of the unmount";
    EXPECT_EQ(*code, 0) << "stderr: " << read_file(server_err_);
    EXPECT_FALSE(is_mounted(mount_));
    EXPECT_NE(read_file(server_out_).find("nrx fs: NR-FS unmounted from " + mount_), std::string::npos)
        << read_file(server_out_);
  }

  void TearDown() override {
    unmount(/*by_signal=*/false);
    // After a failure: never leave a server or a mount behind.
    const pid_t pid = server_.load(std::memory_order_relaxed);
    if (pid > 0) {
      kill(pid, SIGKILL);
      (void)waitpid(pid, nullptr, 0);
      server_.store(-1, std::memory_order_relaxed);
    }
    if (is_mounted(mount_)) umount2(mount_.c_str(), MNT_DETACH);
    watchdog_.reset();
  }

  RunResult shell(const std::string& command) { return run_shell(command, scratch_.path()); }
  // More options for `nrx fs mount`.
  virtual std::vector<std::string> extra_args() const { return {}; }

  // Declared first: destroyed last, after the server is gone and the mount undone.
  TempDir scratch_{"scratch"};
  TempDir mount_dir_{"mnt"};
  std::string mount_;
  std::string server_out_, server_err_;
  std::atomic<pid_t> server_{-1};  // read by the watchdog thread
  bool mounted_ = false;
  std::optional<Watchdog> watchdog_;
};

TEST_F(FuseMountTest, SqliteBuildsAndChecksADatabase) {
  const std::string db = quote(mount_ + "/test.db");
  const std::string script = scratch_.path() + "/build.sql";
  ASSERT_TRUE(write_file(script,
                         "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB);\n"
                         "BEGIN;\n"
                         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)\n"
                         "  INSERT INTO t SELECT i, printf('row-%05d', i), randomblob(100 + i % 200) FROM n;\n"
                         "COMMIT;\n"
                         "CREATE INDEX t_name ON t(name);\n"
                         "SELECT count(*) FROM t;\n"));
  RunResult build = shell("sqlite3 -bail " + db + " < " + quote(script));
  ASSERT_EQ(build.exit_code, 0) << build.err;
  EXPECT_EQ(build.out, "10000\n");
  EXPECT_EQ(build.err, "");
  struct stat st{};
  ASSERT_EQ(stat((mount_ + "/test.db").c_str(), &st), 0) << std::strerror(errno);
  EXPECT_GT(st.st_size, 2'000'000) << "10^4 rows of 100..299 random bytes each";

  // A second process: what it reads comes from NR-FS, not from the first one's memory.
  RunResult check = shell("sqlite3 -bail " + db + " 'PRAGMA integrity_check;'");
  ASSERT_EQ(check.exit_code, 0) << check.err;
  EXPECT_EQ(check.out, "ok\n");
  RunResult count = shell("sqlite3 -bail " + db + " \"SELECT count(*), min(name), max(name) FROM t;\"");
  EXPECT_EQ(count.out, "10000|row-00001|row-10000\n") << count.err;

  // The rollback journal was deleted at commit, and nothing else is left behind. libfuse hides a
  // file unlinked while still open (.fuse_hidden*) until its release, which the kernel sends
  // asynchronously after close(): poll, with a deadline.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (Backoff backoff; list_dir(mount_) != std::vector<std::string>{"test.db"} && Clock::now() < deadline;) {
    backoff.pause();
  }
  EXPECT_EQ(list_dir(mount_), std::vector<std::string>{"test.db"});
  std::printf("[   TIME   ] sqlite3: create + insert 10^4 rows + index + count %.3f s; integrity_check %.3f s\n",
              build.seconds, check.seconds);
  RecordProperty("sqlite_build_seconds", std::to_string(build.seconds));
  RecordProperty("sqlite_check_seconds", std::to_string(check.seconds));
}

TEST_F(FuseMountTest, TarRoundTripMatchesTheSourceTree) {
  TempDir local("local");
  const std::string orig = local.path() + "/orig", back = local.path() + "/back", on_mount = mount_ + "/src";
  for (const std::string& d : {orig, back, on_mount}) ASSERT_EQ(mkdir(d.c_str(), 0755), 0) << d << ": " << std::strerror(errno);

  // Snapshot first: other people may be editing the tree while the test runs.
  RunResult snap = shell("tar -C " + quote(NRX_SOURCE_TREE) + " -cf - . | tar -C " + quote(orig) + " -xf -");
  ASSERT_EQ(snap.exit_code, 0) << snap.err;

  // --no-same-owner: NR-FS files belong to the user who mounted (chown to anyone else is EPERM).
  RunResult onto =
      shell("tar -C " + quote(orig) + " -cf - . | tar -C " + quote(on_mount) + " --no-same-owner -xf -");
  ASSERT_EQ(onto.exit_code, 0) << onto.err;
  EXPECT_EQ(onto.err, "");
  RunResult off = shell("tar -C " + quote(on_mount) + " -cf - . | tar -C " + quote(back) + " -xf -");
  ASSERT_EQ(off.exit_code, 0) << off.err;
  EXPECT_EQ(off.err, "");

  RunResult diff_back = shell("diff -r " + quote(orig) + " " + quote(back));
  EXPECT_EQ(diff_back.exit_code, 0) << diff_back.out << diff_back.err;
  EXPECT_EQ(diff_back.out, "");
  RunResult diff_mount = shell("diff -r " + quote(orig) + " " + quote(on_mount));
  EXPECT_EQ(diff_mount.exit_code, 0) << diff_mount.out << diff_mount.err;
  EXPECT_EQ(diff_mount.out, "");

  RunResult size = shell("echo -n $(find " + quote(orig) + " -type f | wc -l) files, $(du -sk " + quote(orig) +
                         " | cut -f1) KiB");
  std::printf("[   TIME   ] tar onto the mount %.3f s, tar off it %.3f s, diff -r %.3f s + %.3f s (%s)\n",
              onto.seconds, off.seconds, diff_back.seconds, diff_mount.seconds, size.out.c_str());
  RecordProperty("tar_onto_seconds", std::to_string(onto.seconds));
  RecordProperty("tar_off_seconds", std::to_string(off.seconds));
}

TEST_F(FuseMountTest, PosixCallsFollowTheNamespaceRules) {
  const std::string d = mount_ + "/d";
  ASSERT_EQ(mkdir(d.c_str(), 0755), 0) << std::strerror(errno);
  EXPECT_EQ(mkdir(d.c_str(), 0755), -1);
  EXPECT_EQ(errno, EEXIST);
  struct stat st{};
  ASSERT_EQ(stat(d.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0755u);

  ASSERT_TRUE(write_file(d + "/a", "alpha, first version"));
  ASSERT_TRUE(write_file(d + "/a", "alpha"));  // O_TRUNC on an existing file
  EXPECT_EQ(read_file(d + "/a"), "alpha");
  ASSERT_TRUE(write_file(d + "/b", "bravo!"));
  EXPECT_EQ(open((d + "/a").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644), -1);
  EXPECT_EQ(errno, EEXIST);

  // rename over an existing file replaces it.
  ASSERT_EQ(rename((d + "/a").c_str(), (d + "/b").c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(read_file(d + "/b"), "alpha");
  EXPECT_EQ(stat((d + "/a").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  // renameat2 flags have no NR-FS operation: refused with EINVAL, nothing changes. (Onto an
  // existing name, RENAME_NOREPLACE is answered EEXIST by the VFS before FUSE sees it.)
  ASSERT_TRUE(write_file(d + "/c", "charlie"));
  EXPECT_EQ(renameat2(AT_FDCWD, (d + "/c").c_str(), AT_FDCWD, (d + "/new").c_str(), RENAME_NOREPLACE), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(renameat2(AT_FDCWD, (d + "/c").c_str(), AT_FDCWD, (d + "/b").c_str(), RENAME_EXCHANGE), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(read_file(d + "/b"), "alpha");
  EXPECT_EQ(read_file(d + "/c"), "charlie");
  EXPECT_EQ(stat((d + "/new").c_str(), &st), -1);
  ASSERT_EQ(unlink((d + "/c").c_str()), 0);

  // A non-empty directory cannot go; an empty one can.
  ASSERT_EQ(mkdir((d + "/sub").c_str(), 0700), 0);
  EXPECT_EQ(rmdir(d.c_str()), -1);
  EXPECT_EQ(errno, ENOTEMPTY);
  EXPECT_EQ(rmdir((d + "/b").c_str()), -1);
  EXPECT_EQ(errno, ENOTDIR);
  EXPECT_EQ(unlink((d + "/sub").c_str()), -1);
  EXPECT_EQ(errno, EISDIR);

  // truncate by path and by descriptor; a write across several kMaxIo pieces reads back.
  ASSERT_EQ(truncate((d + "/b").c_str(), 2), 0) << std::strerror(errno);
  EXPECT_EQ(read_file(d + "/b"), "al");
  std::string big((size_t{1} << 20) + 123, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  ASSERT_TRUE(write_file(d + "/big", big));
  EXPECT_EQ(read_file(d + "/big"), big);
  const int fd = open((d + "/big").c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(ftruncate(fd, 5000), 0);
  EXPECT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 5000);
  EXPECT_EQ(close(fd), 0);
  EXPECT_EQ(read_file(d + "/big"), big.substr(0, 5000));

  ASSERT_EQ(unlink((d + "/b").c_str()), 0);
  ASSERT_EQ(unlink((d + "/big").c_str()), 0);
  EXPECT_EQ(unlink((d + "/b").c_str()), -1);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_EQ(rmdir((d + "/sub").c_str()), 0);
  EXPECT_EQ(list_dir(d), std::vector<std::string>{});
  ASSERT_EQ(rmdir(d.c_str()), 0) << std::strerror(errno);

  // Listings come sorted by name, from readdir itself and through ls.
  const std::vector<std::string> names = {"zeta", "Alpha", "mid", "beta.txt", "_under", "0zero"};
  for (const std::string& n : names) ASSERT_TRUE(write_file(mount_ + "/" + n, n));
  ASSERT_EQ(mkdir((mount_ + "/dir9").c_str(), 0755), 0);
  std::vector<std::string> sorted = names;
  sorted.push_back("dir9");
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(list_dir(mount_), sorted);
  RunResult ls = shell("LC_ALL=C ls -1 " + quote(mount_));
  std::string expected_ls;
  for (const std::string& n : sorted) expected_ls += n + "\n";
  EXPECT_EQ(ls.out, expected_ls) << ls.err;

  struct statvfs sv{};
  ASSERT_EQ(statvfs(mount_.c_str(), &sv), 0) << std::strerror(errno);
  EXPECT_EQ(sv.f_frsize, 4096u);
  EXPECT_EQ(static_cast<uint64_t>(sv.f_blocks) * sv.f_frsize, kPoolMiB << 20);
  EXPECT_GT(sv.f_bfree, 0u);
  EXPECT_EQ(access((mount_ + "/zeta").c_str(), R_OK | W_OK), 0);
  EXPECT_EQ(access((mount_ + "/nope").c_str(), F_OK), -1);
  EXPECT_EQ(errno, ENOENT);
}

// Four cp processes at once keep several FUSE workers busy: the copies must be exact, and the
// workers' handles must have been dealt over both replicas (the server reports them at unmount).
TEST_F(FuseMountTest, ParallelWritersUseEveryReplica) {
  TempDir local("local");
  RunResult gen = shell("cd " + quote(local.path()) +
                        " && for w in 0 1 2 3; do mkdir w$w && for i in $(seq 1 50); do"
                        " head -c $((1000 + 997 * i)) /dev/urandom > w$w/f$i || exit 1; done; done");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  RunResult copy = shell("pids=(); for w in 0 1 2 3; do cp -r " + quote(local.path()) + "/w$w " + quote(mount_) +
                         "/ & pids+=($!); done; for p in \"${pids[@]}\"; do wait $p || exit 1; done");
  ASSERT_EQ(copy.exit_code, 0) << copy.err;
  RunResult diff = shell("diff -r " + quote(local.path()) + " " + quote(mount_));
  EXPECT_EQ(diff.exit_code, 0) << diff.out << diff.err;
  std::printf("[   TIME   ] 4 parallel cp -r of 50 files each %.3f s, diff -r %.3f s\n", copy.seconds, diff.seconds);

  unmount(/*by_signal=*/false);
  const std::string out = read_file(server_out_);
  const std::string key = "FUSE worker handles per replica:";
  const size_t at = out.find(key);
  ASSERT_NE(at, std::string::npos) << out;
  std::istringstream counts(out.substr(at + key.size(), out.find(')', at) - at - key.size()));
  std::vector<int> per_replica;
  for (int n = 0; counts >> n;) per_replica.push_back(n);
  ASSERT_EQ(per_replica.size(), 2u) << out;
  EXPECT_GT(per_replica[0], 0) << out;
  EXPECT_GT(per_replica[1], 0) << out;
}

TEST_F(FuseMountTest, SigtermUnmountsCleanly) {
  ASSERT_TRUE(write_file(mount_ + "/f", "x"));
  EXPECT_EQ(read_file(mount_ + "/f"), "x");
  unmount(/*by_signal=*/true);
}

// `--channel PATH`: the syscall channel serves the same file system as the mount, at the same time.
class FuseChannelTest : public FuseMountTest {
 protected:
  std::vector<std::string> extra_args() const override { return {"--channel", channel_}; }
  const std::string channel_ = "/dev/shm/nrx-fuse-test-" + std::to_string(getpid());
};

TEST_F(FuseChannelTest, LibnrxAndFuseShareTheFileSystem) {
  ASSERT_EQ(nrx_connect(channel_.c_str()), 0) << nrx_last_error();
  const std::string via_channel = "written through libnrx";
  int fd = nrx_open("/from-channel", NRX_O_CREAT | NRX_O_RDWR, 0644);
  ASSERT_GE(fd, 0) << std::strerror(-fd);
  EXPECT_EQ(nrx_write(fd, via_channel.data(), via_channel.size()), static_cast<int64_t>(via_channel.size()));
  EXPECT_EQ(nrx_close(fd), 0);
  EXPECT_EQ(read_file(mount_ + "/from-channel"), via_channel);

  const std::string via_fuse = "written through FUSE";
  ASSERT_TRUE(write_file(mount_ + "/from-fuse", via_fuse));
  fd = nrx_open("/from-fuse", NRX_O_RDONLY, 0);
  ASSERT_GE(fd, 0) << std::strerror(-fd);
  std::string got(64, '\0');
  const int64_t n = nrx_read(fd, got.data(), got.size());
  ASSERT_GE(n, 0) << std::strerror(static_cast<int>(-n));
  got.resize(static_cast<size_t>(n));
  EXPECT_EQ(got, via_fuse);
  EXPECT_EQ(nrx_close(fd), 0);
  // A rename on one side shows on the other at once (no attribute or lookup caching with --channel).
  ASSERT_EQ(nrx_rename("/from-fuse", "/renamed"), 0);
  EXPECT_EQ(list_dir(mount_), (std::vector<std::string>{"from-channel", "renamed"}));
  EXPECT_EQ(nrx_disconnect(), 0);
}

// `nrx fs serve`: the channel alone, until SIGTERM; then exit 0 with the request count.
TEST(FsServeCommand, ServesLibnrxUntilSigterm) {
  TempDir scratch("scratch");
  const std::string channel = "/dev/shm/nrx-fs-serve-test-" + std::to_string(getpid());
  const std::string out = scratch.path() + "/nrx.out", err = scratch.path() + "/nrx.err";
  Spawned s = spawn({NRX_BINARY, "fs", "serve", "--channel", channel, "--nodes", "2", "--pool-mib", "16"}, out, err);
  ASSERT_TRUE(s.error.empty()) << s.error;
  const auto deadline = Clock::now() + kMountTimeout;
  Backoff backoff;
  while (read_file(out).find("nrx fs: NR-FS serving the syscall channel at " + channel) == std::string::npos) {
    int status = 0;
    ASSERT_NE(waitpid(s.pid, &status, WNOHANG), s.pid) << "nrx fs serve exited early: " << read_file(err);
    if (Clock::now() >= deadline) {
      kill(s.pid, SIGKILL);
      (void)waitpid(s.pid, nullptr, 0);
      FAIL() << "nrx fs serve did not start within " << kMountTimeout.count() << " s: " << read_file(err);
    }
    backoff.pause();  // polling its output, with a deadline
  }
  EXPECT_NE(read_file(out).find("(2 replicas, 4 logs, 16 MiB per node)"), std::string::npos) << read_file(out);
  ASSERT_EQ(nrx_connect(channel.c_str()), 0) << nrx_last_error();
  EXPECT_EQ(nrx_mkdir("/d", 0755), 0);
  EXPECT_EQ(nrx_mkdir("/d", 0755), -EEXIST);
  EXPECT_EQ(nrx_rmdir("/d"), 0);
  EXPECT_EQ(nrx_disconnect(), 0);
  ASSERT_EQ(kill(s.pid, SIGTERM), 0);
  std::optional<int> code = wait_until(s.pid, Clock::now() + kExitTimeout);
  if (!code) {
    kill(s.pid, SIGKILL);
    (void)waitpid(s.pid, nullptr, 0);
  }
  ASSERT_TRUE(code.has_value()) << "nrx fs serve did not stop within " << kExitTimeout.count() << " s of SIGTERM";
  EXPECT_EQ(*code, 0) << read_file(err);
  EXPECT_NE(read_file(out).find("nrx fs: stopped on signal 15 after "), std::string::npos) << read_file(out);
}

// Bad input answers with one line and exit status 2, before anything is mounted.
TEST(FuseMountCommand, RejectsBadInput) {
  TempDir scratch("scratch");
  TempDir empty("empty");
  TempDir full("full");
  ASSERT_TRUE(write_file(full.path() + "/x", "x"));
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string message;  // part of the one line on stderr
  };
  const std::vector<Case> cases = {
      {{"fs"}, 2, "usage: nrx fs"},
      {{"fs", "bogus"}, 2, "nrx fs: unknown command 'bogus'"},
      {{"fs", "mount"}, 2, "missing the mount directory"},
      {{"fs", "mount", scratch.path() + "/none"}, 2, "does not exist"},
      {{"fs", "mount", full.path()}, 2, "is not empty"},
      {{"fs", "mount", full.path() + "/x"}, 2, "is not a directory"},
      {{"fs", "mount", empty.path(), "--pool-mib", "3"}, 2, "--pool-mib must be even"},
      {{"fs", "mount", empty.path(), "--nodes", "0"}, 2, "--nodes must be between 1 and 64"},
      {{"fs", "mount", empty.path(), "--bogus"}, 2, "unknown option '--bogus'"},
      {{"fs", "mount", empty.path(), "extra"}, 2, "unexpected argument 'extra'"},
      {{"fs", "serve"}, 2, "--channel PATH is required"},
  };
  for (const Case& c : cases) {
    std::string line = NRX_BINARY;
    for (const std::string& a : c.args) line += " " + quote(a);
    RunResult r = run_shell(line, scratch.path());
    EXPECT_EQ(r.exit_code, c.code) << line << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << line << "\n" << r.err;
  }
  for (const char* help : {"fs --help", "fs mount --help", "fs serve --help"}) {
    RunResult r = run_shell(std::string(NRX_BINARY) + " " + help, scratch.path());
    EXPECT_EQ(r.exit_code, 0) << help;
    EXPECT_NE(r.out.find("usage: nrx fs"), std::string::npos) << r.out;
  }
}

}  // namespace
}  // namespace nrx::tools
