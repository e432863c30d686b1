// The shared-memory syscall channel: ChannelServer set-up rules, libnrx in this process and in a
// separate helper process (linked against libnrx.so), concurrent client threads contending for
// few slots, clear connect errors for missing, truncated, corrupt and mismatched channel files, and
// bounded failure (never a hang) when the server stops, is killed, or a client dies holding a slot.
// Every wait is bounded: child exits through pidfd + poll, helper output through poll, client
// threads through futures with deadlines.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/mem/memory.h"
#include "kernel/syscall/channel.h"
#include "kernel/syscall/internal/channel_layout.h"
#include "kernel/syscall/libnrx.h"

extern char** environ;

namespace nrx::syscall {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string unique_path(const char* tag) {
  static std::atomic<int> counter{0};
  return "/dev/shm/nrx-test-" + std::string(tag) + "-" + std::to_string(getpid()) + "-" +
         std::to_string(counter.fetch_add(1, std::memory_order_relaxed));  // relaxed: a name
}

// --- Child processes, waited for with deadlines --------------------------------------------------

struct Child {
  pid_t pid = -1;
  int pidfd = -1;
  int to_child = -1;    // its stdin (with_pipes)
  int from_child = -1;  // its stdout (with_pipes)
};

Child spawn(const std::vector<std::string>& args, bool with_pipes) {
  Child child;
  int in[2] = {-1, -1};
  int out[2] = {-1, -1};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (with_pipes) {
    EXPECT_EQ(pipe2(in, O_CLOEXEC), 0);
    EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
    posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  }
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int rc = posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "posix_spawn " << args[0] << ": " << std::strerror(rc);
  if (with_pipes) {
    close(in[0]);
    close(out[1]);
    child.to_child = in[1];
    child.from_child = out[0];
  }
  if (rc == 0) {
    child.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child.pid, 0));
    EXPECT_GE(child.pidfd, 0) << "pidfd_open: " << std::strerror(errno);
  }
  return child;
}

// The child's wait status once it has exited, or nullopt after |timeout|.
std::optional<int> wait_exit(Child& child, std::chrono::milliseconds timeout) {
  pollfd p{child.pidfd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
  int status = 0;
  if (waitpid(child.pid, &status, 0) != child.pid) return std::nullopt;
  close(child.pidfd);
  if (child.to_child >= 0) close(child.to_child);
  if (child.from_child >= 0) close(child.from_child);
  child = Child{};
  return status;
}

void kill_and_reap(Child& child) {
  if (child.pid <= 0) return;
  kill(child.pid, SIGKILL);
  EXPECT_TRUE(wait_exit(child, 30s).has_value());
}

// Reads one line from |fd| within |timeout|.
std::optional<std::string> read_line(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string line;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) != 1) continue;
    char c;
    if (read(fd, &c, 1) != 1) return std::nullopt;
    if (c == '\n') return line;
    line += c;
  }
}

// A process id that is certainly not running: a child that has exited and been reaped.
pid_t dead_pid() {
  Child child = spawn({"/bin/true"}, false);
  const pid_t pid = child.pid;
  EXPECT_TRUE(wait_exit(child, 30s).has_value());
  return pid;
}

// Runs |fn| on a thread and returns its result, or nullopt if it did not finish within |timeout|.
// A client that hangs fails the test at once (and ends the process: it holds the connection).
int64_t bounded(std::function<int64_t()> fn, std::chrono::milliseconds timeout,
                std::chrono::milliseconds* elapsed = nullptr) {
  std::packaged_task<int64_t()> task(std::move(fn));
  std::future<int64_t> result = task.get_future();
  const auto start = Clock::now();
  std::thread t(std::move(task));
  if (result.wait_for(timeout) != std::future_status::ready) {
    ADD_FAILURE() << "a client call did not return within " << timeout.count() << " ms";
    std::fflush(nullptr);
    std::_Exit(1);
  }
  if (elapsed != nullptr) *elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  t.join();
  return result.get();
}

// The channel file mapped by the test itself, to look at (or tamper with) slot state.
class Mapping {
 public:
  explicit Mapping(const std::string& path) {
    fd_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
    EXPECT_GE(fd_, 0) << path;
    struct stat st{};
    EXPECT_EQ(fstat(fd_, &st), 0);
    size_ = static_cast<size_t>(st.st_size);
    base_ = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    EXPECT_NE(base_, MAP_FAILED);
  }
  ~Mapping() {
    munmap(base_, size_);
    close(fd_);
  }
  detail::ChannelHeader* header() { return static_cast<detail::ChannelHeader*>(base_); }
  detail::SlotControl* slot(uint32_t i) { return detail::slot_at(base_, i); }
  // acquire: like a client, see what the slot's last writer published.
  uint32_t state(uint32_t i) { return detail::word(slot(i)->state).load(std::memory_order_acquire); }

 private:
  int fd_ = -1;
  void* base_ = nullptr;
  size_t size_ = 0;
};

// Waits (bounded) until |pred| holds; yields between looks. For observing another thread reach a
// state, not as a delay.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

std::string pattern(size_t n, size_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 13 + seed) % 26);
  return s;
}

class ChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = mem::Memory::create({.nodes = 2, .pool_bytes = 32ull << 20}).value();
    fs_ = fs::FileSystem<>::create(*memory_, {.logs = 4, .replica_pools = {0, 1}}).value();
    check_ = fs_->attach(1).value();  // the test reads what clients wrote through the other replica
    path_ = unique_path("ch");
  }
  void TearDown() override {
    (void)nrx_disconnect();
    server_.reset();
    unlink(path_.c_str());
  }
  void start(uint32_t slots = 4) { server_ = ChannelServer::start(*fs_, 0, {.path = path_, .slots = slots}).value(); }
  std::string read_file(const std::string& path) {
    const fs::Ino ino = fs_->lookup(check_, path).value();
    std::vector<std::byte> buf(fs::kMaxIo);
    std::string out;
    for (uint64_t off = 0;;) {
      const size_t n = fs_->pread(check_, ino, buf, off).value();
      if (n == 0) break;
      out.append(reinterpret_cast<const char*>(buf.data()), n);
      off += n;
    }
    return out;
  }

  std::unique_ptr<mem::Memory> memory_;
  std::unique_ptr<fs::FileSystem<>> fs_;
  fs::Handle check_;
  std::string path_;
  std::unique_ptr<ChannelServer> server_;
};

TEST_F(ChannelTest, StartValidatesOptions) {
  EXPECT_EQ(ChannelServer::start(*fs_, 0, {.path = ""}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelServer::start(*fs_, 0, {.path = path_, .slots = 0}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelServer::start(*fs_, 0, {.path = path_, .slots = 65}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelServer::start(*fs_, 7, {.path = path_}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelServer::start(*fs_, 0, {.path = "/nonexistent-dir/x"}).status().code(), StatusCode::kInternal);
  // A replica without thread registrations left for the server threads.
  auto memory = mem::Memory::create({.nodes = 1, .pool_bytes = 4ull << 20}).value();
  auto small = fs::FileSystem<>::create(*memory, {.logs = 1, .max_threads_per_replica = 4}).value();
  EXPECT_EQ(ChannelServer::start(*small, 0, {.path = path_, .slots = 8}).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_NE(access(path_.c_str(), F_OK), 0);  // none of them left a file
}

TEST_F(ChannelTest, OneLiveServerPerPathAndTheFileGoesWithIt) {
  start();
  EXPECT_EQ(server_->path(), path_);
  auto second = ChannelServer::start(*fs_, 1, {.path = path_});
  EXPECT_EQ(second.status().code(), StatusCode::kAlreadyExists) << second.status().to_string();
  struct stat st{};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), detail::channel_file_size(4));
  server_.reset();
  EXPECT_NE(access(path_.c_str(), F_OK), 0);
  start(1);  // the path is free again
}

TEST_F(ChannelTest, StaleChannelsAreReplacedForeignFilesAreNot) {
  // A channel left by a dead server.
  detail::ChannelHeader header = detail::make_header(2);
  header.server_pid = dead_pid();
  header.checksum = detail::header_checksum(header);
  {
    const int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, &header, sizeof header, 0), static_cast<ssize_t>(sizeof header));
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(header.file_size)), 0);
    close(fd);
  }
  start();
  server_.reset();
  // An empty file holds nothing: replaced.
  close(open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600));
  start();
  server_.reset();
  // Somebody's data: refused, and left alone.
  {
    const int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_EQ(write(fd, "precious data", 13), 13);
    close(fd);
  }
  auto refused = ChannelServer::start(*fs_, 0, {.path = path_});
  EXPECT_EQ(refused.status().code(), StatusCode::kAlreadyExists) << refused.status().to_string();
  struct stat st{};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 13);
}

TEST_F(ChannelTest, InProcessClient) {
  start();
  EXPECT_EQ(nrx_mkdir("/d", 0755), -ENOTCONN);
  ASSERT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();
  const int fd = nrx_open("/d/f", NRX_O_CREAT | NRX_O_RDWR, 0644);
  EXPECT_EQ(fd, -ENOENT);
  ASSERT_EQ(nrx_mkdir("/d", 0755), 0);
  const int f = nrx_open("/d/f", NRX_O_CREAT | NRX_O_RDWR, 0644);
  ASSERT_GE(f, 0);
  // 1 MiB + 3 bytes: nine requests, the last short.
  const std::string data = pattern((1 << 20) + 3, 5);
  EXPECT_EQ(nrx_write(f, data.data(), data.size()), static_cast<int64_t>(data.size()));
  EXPECT_EQ(read_file("/d/f"), data);  // through the kernel API, on the other replica
  std::string back(data.size(), '\0');
  EXPECT_EQ(nrx_pread(f, back.data(), back.size(), 0), static_cast<int64_t>(data.size()));
  EXPECT_EQ(back, data);
  EXPECT_EQ(nrx_write(f, "", 0), 0);
  nrx_statbuf st;
  EXPECT_EQ(nrx_fstat(f, &st), 0);
  EXPECT_EQ(st.size, data.size());
  EXPECT_EQ(nrx_close(f), 0);

  // Corrupt requests through the channel are answered; the server goes on serving.
  nrx_request raw{};
  nrx_response resp;
  raw.sysno = 0;
  EXPECT_EQ(nrx_syscall(&raw, nullptr, 0, &resp, nullptr, 0), -ENOSYS);
  raw.sysno = NRX_SYS_MKDIR;
  raw.path_len = 3;
  raw.reserved = 9;
  EXPECT_EQ(nrx_syscall(&raw, "/zz", 3, &resp, nullptr, 0), -EINVAL);
  raw.reserved = 0;
  raw.sysno = NRX_SYS_RENAME;
  raw.path_len = NRX_DATA_CAPACITY;
  raw.path2_len = 1;
  EXPECT_EQ(nrx_syscall(&raw, nullptr, 0, &resp, nullptr, 0), -EFAULT);
  EXPECT_EQ(nrx_syscall(&raw, "x", NRX_DATA_CAPACITY + 1, &resp, nullptr, 0), -EINVAL);
  raw = nrx_request{};
  raw.sysno = NRX_SYS_PREAD;
  raw.ino = st.ino;
  raw.length = 100;
  char small[10];
  EXPECT_EQ(nrx_syscall(&raw, nullptr, 0, &resp, small, sizeof small), -EPROTO);  // more data than room
  EXPECT_EQ(nrx_stat("/d/f", &st), 0);
  EXPECT_GE(server_->requests_served(), 20u);
}

TEST_F(ChannelTest, ClientProcessUsesLibnrxSo) {
  start();
  Child child = spawn({NRX_CLIENT_HELPER, path_}, false);
  ASSERT_GT(child.pid, 0);
  std::optional<int> status = wait_exit(child, 120s);
  if (!status) kill_and_reap(child);
  ASSERT_TRUE(status.has_value()) << "the client helper did not finish";
  ASSERT_TRUE(WIFEXITED(*status)) << "the client helper died: status " << *status;
  EXPECT_EQ(WEXITSTATUS(*status), 0) << "the client helper reported failures (its stderr above)";
  EXPECT_EQ(read_file("/helper/keep"), "written by the helper");
  EXPECT_EQ(fs_->readdir(check_, "/helper").value().size(), 1u);
}

TEST_F(ChannelTest, ConcurrentClientThreadsShareFewSlots) {
  start(/*slots=*/3);  // fewer slots than threads: claims contend and wait
  ASSERT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();
  ASSERT_EQ(nrx_mkdir("/shared", 0755), 0);
  constexpr int kThreads = 6;
  constexpr int kRecords = 60;
  constexpr size_t kRecord = 100;
  const uint64_t served_before = server_->requests_served();
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &failures] {
      auto check = [&](bool ok, const char* what, int i) {
        if (!ok) {
          std::fprintf(stderr, "thread %d, record %d: %s\n", t, i, what);
          failures.fetch_add(1, std::memory_order_relaxed);  // relaxed: a count, read after join
        }
      };
      const std::string name = "/t" + std::to_string(t);
      const int fd = nrx_open(name.c_str(), NRX_O_CREAT | NRX_O_RDWR, 0644);
      check(fd >= 0, "open", -1);
      for (int i = 0; i < kRecords; ++i) {
        const std::string rec = pattern(kRecord, static_cast<size_t>(t * 1000 + i));
        check(nrx_write(fd, rec.data(), rec.size()) == static_cast<int64_t>(kRecord), "write", i);
        const int j = i / 2;  // an earlier record, read back
        char buf[kRecord];
        check(nrx_pread(fd, buf, kRecord, static_cast<int64_t>(j * kRecord)) == static_cast<int64_t>(kRecord),
              "pread", i);
        check(std::memcmp(buf, pattern(kRecord, static_cast<size_t>(t * 1000 + j)).data(), kRecord) == 0,
              "pread data", i);
        const std::string entry = "/shared/" + std::to_string(t) + "-" + std::to_string(i);
        const int e = nrx_open(entry.c_str(), NRX_O_CREAT | NRX_O_EXCL | NRX_O_WRONLY, 0644);
        check(e >= 0, "create", i);
        check(nrx_close(e) == 0, "close", i);
        if (i % 2 == 0) check(nrx_unlink(entry.c_str()) == 0, "unlink", i);
      }
      check(nrx_close(fd) == 0, "close", -1);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(std::memory_order_relaxed), 0);  // relaxed: after join
  for (int t = 0; t < kThreads; ++t) {
    std::string want;
    for (int i = 0; i < kRecords; ++i) want += pattern(kRecord, static_cast<size_t>(t * 1000 + i));
    EXPECT_EQ(read_file("/t" + std::to_string(t)), want) << t;
  }
  EXPECT_EQ(fs_->readdir(check_, "/shared").value().size(), static_cast<size_t>(kThreads * kRecords / 2));
  EXPECT_GE(server_->requests_served() - served_before, static_cast<uint64_t>(kThreads * kRecords * 4));
}

TEST_F(ChannelTest, ConnectGivesClearErrorsForBadChannelFiles) {
  EXPECT_EQ(nrx_connect(nullptr), -EINVAL);
  EXPECT_EQ(nrx_connect(path_.c_str()), -ENOENT);
  EXPECT_NE(std::string(nrx_last_error()).find("no such channel"), std::string::npos) << nrx_last_error();

  start(2);
  detail::ChannelHeader good;
  {
    const int fd = open(path_.c_str(), O_RDONLY);
    ASSERT_EQ(pread(fd, &good, sizeof good, 0), static_cast<ssize_t>(sizeof good));
    close(fd);
  }
  const std::string bad = unique_path("bad");
  auto write_file = [&](const void* bytes, size_t n, uint64_t size) {
    const int fd = open(bad.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, bytes, n, 0), static_cast<ssize_t>(n));
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    close(fd);
  };
  struct Case {
    const char* what;
    std::function<void()> make;
    int err;
    const char* message;
  };
  auto with = [&](const std::function<void(detail::ChannelHeader&)>& edit, bool rechecksum) {
    return [&, edit, rechecksum] {
      detail::ChannelHeader h = good;
      edit(h);
      if (rechecksum) h.checksum = detail::header_checksum(h);
      write_file(&h, sizeof h, h.file_size);
    };
  };
  const pid_t gone = dead_pid();
  const std::vector<Case> cases = {
      {"empty", [&] { write_file("", 0, 0); }, EPROTO, "truncated"},
      {"shorter than the header", [&] { write_file(&good, 100, 100); }, EPROTO, "truncated"},
      {"shorter than the slots", [&] { write_file(&good, sizeof good, good.file_size - 4096); }, EPROTO, "truncated"},
      {"longer than the slots", [&] { write_file(&good, sizeof good, good.file_size + 4096); }, EPROTO, "trailing"},
      {"bad magic", with([](detail::ChannelHeader& h) { h.magic ^= 1; }, true), EPROTO, "bad magic"},
      {"corrupt field", with([](detail::ChannelHeader& h) { h.slot_count = 3; }, false), EPROTO, "checksum"},
      {"other version", with([](detail::ChannelHeader& h) { ++h.version; }, true), EPROTONOSUPPORT, "version"},
      {"other geometry", with([](detail::ChannelHeader& h) { h.slot_size += 4096; }, true), EPROTO, "geometry"},
      {"slot count 0", with([](detail::ChannelHeader& h) { h.slot_count = 0; }, true), EPROTO, "invalid header"},
      {"dead server", with([&](detail::ChannelHeader& h) { h.server_pid = gone; }, true), ECONNREFUSED, "stale"},
  };
  for (const Case& c : cases) {
    c.make();
    EXPECT_EQ(nrx_connect(bad.c_str()), -c.err) << c.what << ": " << nrx_last_error();
    EXPECT_NE(std::string(nrx_last_error()).find(c.message), std::string::npos) << c.what << ": " << nrx_last_error();
    EXPECT_EQ(nrx_mkdir("/x", 0755), -ENOTCONN) << c.what;
  }
  unlink(bad.c_str());

  ASSERT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();  // the real one works
  EXPECT_STREQ(nrx_last_error(), "");
  EXPECT_EQ(nrx_connect(path_.c_str()), -EISCONN);
}

TEST_F(ChannelTest, StoppedServerFailsWaitingAndLaterClients) {
  start(/*slots=*/1);
  ASSERT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();
  nrx_statbuf st;
  ASSERT_EQ(nrx_stat("/", &st), 0);
  // Another (live) client holds the only slot, so the next call waits for it. (acq_rel, relaxed:
  // as a client claims: libnrx.cc.)
  Mapping map(path_);
  ASSERT_TRUE(detail::transition(&map.slot(0)->state, detail::kFree, detail::kClaimed, detail::kServerWaiting, 0,
                                 std::memory_order_acq_rel)
                  .moved);
  detail::word(map.slot(0)->owner_pid).store(static_cast<uint32_t>(getpid()), std::memory_order_relaxed);
  std::packaged_task<int64_t()> waiting([] {
    nrx_statbuf s;
    return static_cast<int64_t>(nrx_stat("/", &s));
  });
  std::future<int64_t> result = waiting.get_future();
  std::thread client(std::move(waiting));
  // It sleeps on the free word once it has spun.
  ASSERT_TRUE(eventually([&] {
    // relaxed: only the bit is looked at, no data hangs on it.
    return (detail::word(map.header()->free_word).load(std::memory_order_relaxed) & detail::kFreeWaiters) != 0;
  }));
  const auto stop = Clock::now();
  server_.reset();
  ASSERT_EQ(result.wait_for(10s), std::future_status::ready) << "the waiting client hung after the server stopped";
  client.join();
  EXPECT_EQ(result.get(), -ECONNRESET);
  EXPECT_LT(Clock::now() - stop, 5s);
  std::chrono::milliseconds took{};
  EXPECT_EQ(bounded([] { return static_cast<int64_t>(nrx_mkdir("/late", 0755)); }, 10s, &took), -ECONNRESET);
  EXPECT_LT(took, 2s);
}

TEST_F(ChannelTest, SlotOfADeadClientIsReclaimed) {
  start(/*slots=*/1);
  ASSERT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();
  Mapping map(path_);
  // A client that claimed the only slot and died before publishing (orders as in libnrx.cc's claim).
  ASSERT_TRUE(eventually([&] { return (map.state(0) & detail::kServerWaiting) != 0; }));  // server asleep on it
  detail::word(map.slot(0)->owner_pid).store(static_cast<uint32_t>(dead_pid()), std::memory_order_relaxed);
  ASSERT_TRUE(detail::transition(&map.slot(0)->state, detail::kFree, detail::kClaimed, detail::kServerWaiting, 0,
                                 std::memory_order_acq_rel)
                  .moved);
  std::chrono::milliseconds took{};
  EXPECT_EQ(bounded([] { return static_cast<int64_t>(nrx_mkdir("/after", 0755)); }, 30s, &took), 0);
  EXPECT_LT(took, 10s);  // the server's idle check runs every second
  EXPECT_TRUE(fs_->stat(check_, "/after").ok());
}

TEST_F(ChannelTest, KilledServerFailsAWaitingClientInBoundedTime) {
  Child server = spawn({NRX_SERVER_HELPER, path_, "2"}, true);
  ASSERT_GT(server.pid, 0);
  std::optional<std::string> line = read_line(server.from_child, 60s);
  if (!line) kill_and_reap(server);
  ASSERT_EQ(line.value_or("(nothing)"), "ready");
  ASSERT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();
  ASSERT_EQ(nrx_mkdir("/k", 0755), 0);

  // Freeze the server, so the next request is published but never answered.
  ASSERT_EQ(kill(server.pid, SIGSTOP), 0);
  int status = 0;
  ASSERT_EQ(waitpid(server.pid, &status, WUNTRACED), server.pid);
  ASSERT_TRUE(WIFSTOPPED(status));
  std::packaged_task<int64_t()> waiting([] {
    nrx_statbuf s;
    return static_cast<int64_t>(nrx_stat("/k", &s));
  });
  std::future<int64_t> result = waiting.get_future();
  std::thread client(std::move(waiting));
  Mapping map(path_);
  ASSERT_TRUE(eventually([&] {  // it sleeps on its slot, waiting for the response
    return ((map.state(0) | map.state(1)) & detail::kClientWaiting) != 0;
  }));

  // Kill it (and leave it unreaped for now: a zombie is dead too).
  const auto killed = Clock::now();
  ASSERT_EQ(kill(server.pid, SIGKILL), 0);
  if (result.wait_for(10s) != std::future_status::ready) {
    ADD_FAILURE() << "the client hung after its server was killed";
    std::_Exit(1);
  }
  client.join();
  EXPECT_EQ(result.get(), -ECONNRESET);
  EXPECT_LT(Clock::now() - killed, 5s);

  // Later calls fail the same way, promptly; the file is now stale.
  std::chrono::milliseconds took{};
  EXPECT_EQ(bounded([] { return static_cast<int64_t>(nrx_mkdir("/late", 0755)); }, 10s, &took), -ECONNRESET);
  EXPECT_LT(took, 2s);
  std::optional<int> exited = wait_exit(server, 30s);
  ASSERT_TRUE(exited.has_value());
  EXPECT_TRUE(WIFSIGNALED(*exited));
  EXPECT_EQ(nrx_disconnect(), 0);
  EXPECT_EQ(nrx_connect(path_.c_str()), -ECONNREFUSED) << nrx_last_error();
  // A new server replaces the stale file.
  start();
  EXPECT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();
}

TEST_F(ChannelTest, ServerProcessStopsCleanly) {
  Child server = spawn({NRX_SERVER_HELPER, path_}, true);
  ASSERT_GT(server.pid, 0);
  std::optional<std::string> line = read_line(server.from_child, 60s);
  if (!line) kill_and_reap(server);
  ASSERT_EQ(line.value_or("(nothing)"), "ready");
  ASSERT_EQ(nrx_connect(path_.c_str()), 0) << nrx_last_error();
  EXPECT_EQ(nrx_mkdir("/m", 0755), 0);
  close(server.to_child);  // end of its stdin: it stops the server and exits
  server.to_child = -1;
  std::optional<int> exited = wait_exit(server, 30s);
  if (!exited) kill_and_reap(server);
  ASSERT_TRUE(exited.has_value());
  ASSERT_TRUE(WIFEXITED(*exited));
  EXPECT_EQ(WEXITSTATUS(*exited), 0);
  EXPECT_NE(access(path_.c_str(), F_OK), 0);  // it unlinked its file
  std::chrono::milliseconds took{};
  EXPECT_EQ(bounded([] { return static_cast<int64_t>(nrx_mkdir("/n", 0755)); }, 10s, &took), -ECONNRESET);
  EXPECT_LT(took, 2s);
}

}  // namespace
}  // namespace nrx::syscall
