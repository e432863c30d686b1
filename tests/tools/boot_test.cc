// `nrx boot` end to end (tools/nrx/boot.cc): the built nrx binary (NRX_BINARY) boots the kernel with
// 1 and with 2 emulated nodes and runs the demo (fsbench, mapbench and kv as processes loaded from
// the binary's own ELF image); the test checks the exit code, the JSON summary's fields, that every
// subsystem's digests are equal across the replicas (one digest per replica), and the text summary.
// Also the interactive shell driven through stdin, and bad input (exit 2, one line on stderr).
//
// Every run is bounded: the programs run for a fraction of a second and a child that outlives
// kRunTimeout is killed and reported.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/syscall/libnrx.h"
#include "tests/tools/nrx_runner.h"

namespace nrx::tools {
namespace {

using test::JsonChecker;
using test::RunResult;
using test::TempDir;

constexpr auto kRunTimeout = std::chrono::seconds(240);

RunResult boot(const std::vector<std::string>& args, const TempDir& dir, const std::string& stdin_text = "") {
  std::vector<std::string> all = {"boot"};
  all.insert(all.end(), args.begin(), args.end());
  std::string in;
  if (!stdin_text.empty()) {
    in = dir.path() + "/stdin.txt";
    std::ofstream(in) << stdin_text;
  }
  return test::run_nrx(all, dir.path(), kRunTimeout, in);
}

// The hex strings of the JSON array "key":[...] that first follows the text |after| in |json|.
std::vector<std::string> array_after(const std::string& json, const std::string& after, const std::string& key) {
  const size_t from = json.find(after);
  if (from == std::string::npos) return {};
  const size_t k = json.find("\"" + key + "\":[", from);
  if (k == std::string::npos) return {};
  const size_t open = json.find('[', k);
  const size_t close = json.find(']', open);
  std::vector<std::string> out;
  const std::string body = json.substr(open + 1, close - open - 1);
  // Items are "<16 hex digits>", separated by commas (no std::regex: GCC 12's trips -Werror in
  // the sanitizer builds).
  std::stringstream items(body);
  for (std::string item; std::getline(items, item, ',');) {
    if (item.size() == 18 && item.front() == '"' && item.back() == '"' &&
        item.find_first_not_of("0123456789abcdef", 1) == 17) {
      out.push_back(item.substr(1, 16));
    }
  }
  return out;
}

// The unsigned number after the first occurrence of |key| (e.g. "\"mmu_accesses\":") at or after
// |from| in |text|; -1 if there is none.
long long number_after(const std::string& text, const std::string& key, size_t from = 0) {
  const size_t at = text.find(key, from);
  if (at == std::string::npos) return -1;
  const size_t digits = at + key.size();
  if (digits >= text.size() || text[digits] < '0' || text[digits] > '9') return -1;
  return std::stoll(text.substr(digits, 20));
}

class BootJson : public ::testing::TestWithParam<int> {};

TEST_P(BootJson, RunsTheDemoAndEveryReplicaAgrees) {
  const int nodes = GetParam();
  TempDir dir;
  RunResult r = boot({"--nodes", std::to_string(nodes), "--duration", "0.6", "--json"}, dir);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  JsonChecker check(r.out);
  ASSERT_TRUE(check.valid()) << "invalid JSON at byte " << check.where() << ": " << r.out;
  EXPECT_NE(r.out.find("\"replicas\":" + std::to_string(nodes) + ","), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"digests_equal\":true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"ok\":true"), std::string::npos) << r.out;
  for (const char* name : {"fsbench", "mapbench", "kv"}) {
    EXPECT_NE(r.out.find(std::string("\"name\":\"") + name + "\",\"status\":0"), std::string::npos) << name;
    const auto vmem = array_after(r.out, std::string("\"name\":\"") + name, "vmem_digests");
    ASSERT_EQ(vmem.size(), static_cast<size_t>(nodes)) << name;
    EXPECT_TRUE(std::all_of(vmem.begin(), vmem.end(), [&](const std::string& d) { return d == vmem.front(); }));
  }
  for (const char* subsystem : {"proc", "fs", "vmem"}) {
    // Searched from "subsystems" on: the per-process objects hold other digests.
    const size_t sub = r.out.find("\"subsystems\"");
    ASSERT_NE(sub, std::string::npos);
    const auto d = array_after(r.out.substr(sub), std::string("\"") + subsystem + "\"", "digests");
    ASSERT_EQ(d.size(), static_cast<size_t>(nodes)) << subsystem << ": " << r.out;
    EXPECT_TRUE(std::all_of(d.begin(), d.end(), [&](const std::string& x) { return x == d.front(); })) << subsystem;
  }
  // The programs did real work through the system calls.
  EXPECT_GT(number_after(r.out, "\"fs\":{\"calls\":"), 100);
  EXPECT_GT(number_after(r.out, "\"mmu_accesses\":"), 100);
  if (nodes > 1) {
    // mapbench's unmaps ran with its other core attached: shootdowns were sent.
    EXPECT_GT(number_after(r.out, "\"shootdowns\":", r.out.find("\"vmem\":{\"calls\"")), 0);
  }
  // Progress went to stderr, so stdout is only the JSON object.
  EXPECT_NE(r.err.find("[1/5] booting"), std::string::npos) << r.err;
}

// 1 node: the machine as detected (or its first node); 2: emulated, each with its own replicas.
INSTANTIATE_TEST_SUITE_P(Nodes, BootJson, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& i) { return std::to_string(i.param) + "nodes"; });

TEST(BootText, PrintsTheSummary) {
  TempDir dir;
  RunResult r = boot({"--nodes", "2", "--cores-per-node", "1", "--duration", "0.3"}, dir);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  for (const char* field : {"topology", "proc ", "fs ", "vmem ", "log gc", "digests", "checks     replicas agree: yes",
                            "result     OK"}) {
    EXPECT_NE(r.out.find(field), std::string::npos) << field << " missing from:\n" << r.out;
  }
  // One digest row per replica ("           R  PROC  FS  VMEM"), the same digests in each.
  std::vector<std::vector<std::string>> rows;
  std::stringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("           ", 0) != 0) continue;
    std::stringstream words(line);
    std::vector<std::string> w;
    for (std::string x; words >> x;) w.push_back(x);
    if (w.size() == 4 && (w[0] == "0" || w[0] == "1") && w[1].size() == 16) rows.push_back(w);
  }
  ASSERT_EQ(rows.size(), 2u) << r.out;
  for (int col = 1; col <= 3; ++col) EXPECT_EQ(rows[0][col], rows[1][col]) << "column " << col;
}

TEST(BootShell, RunsCommandsThroughTheSystemCalls) {
  TempDir dir;
  RunResult r = boot({"--nodes", "2", "--interactive"}, dir,
                     "mkdir /notes\nwrite /notes/a hello nrx\ncat /notes/a\nls /notes\nrun kv 0.2\nps\n"
                     "map 99\nbogus\nrm /notes/a\nls /notes\nexit\n");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("hello nrx\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nrx> a\n"), std::string::npos) << r.out;  // ls before the rm
  EXPECT_NE(r.out.find("exit 0 in"), std::string::npos) << r.out;  // run kv
  EXPECT_NE(r.out.find("map: no live process 99"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("unknown command 'bogus'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("result     OK"), std::string::npos) << r.out;
}

// Other Linux processes attach to the booted kernel through the system-call channel: a libnrx
// client (this test) writes a file, and the kernel's shell, reading stdin from a pipe, prints it.
TEST(BootChannel, OtherProcessesReachTheBootedKernel) {
  TempDir dir;
  const std::string channel = "/dev/shm/nrx-boot-test-" + std::to_string(getpid());
  int in[2];
  ASSERT_EQ(pipe(in), 0);
  std::vector<std::string> args = {NRX_BINARY, "boot", "--nodes", "2", "--interactive", "--channel", channel};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string out_path = dir.path() + "/stdout.txt", err_path = dir.path() + "/stderr.txt";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, NRX_BINARY, &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  // The channel appears once the kernel has booted (polled, with a deadline).
  const auto deadline = std::chrono::steady_clock::now() + kRunTimeout;
  int connected = -1;
  while (std::chrono::steady_clock::now() < deadline) {
    if (std::filesystem::exists(channel) && (connected = nrx_connect(channel.c_str())) == 0) break;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) break;  // it died: reported below
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(connected, 0) << nrx_last_error() << test::read_file(err_path);
  if (connected == 0) {
    const std::string text = "written by a Linux process";
    const int fd = nrx_open("/from-linux", NRX_O_CREAT | NRX_O_RDWR, 0644);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(nrx_write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    EXPECT_EQ(nrx_close(fd), 0);
    EXPECT_EQ(nrx_disconnect(), 0);
  }
  const std::string script = "cat /from-linux\nexit\n";
  EXPECT_EQ(write(in[1], script.data(), script.size()), static_cast<ssize_t>(script.size()));
  close(in[1]);
  int status = 0;
  for (;;) {
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      (void)waitpid(pid, &status, 0);
      FAIL() << "nrx boot ran past the test's time limit";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the child, with a deadline
  }
  const std::string out = test::read_file(out_path);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out << test::read_file(err_path);
  EXPECT_NE(out.find("written by a Linux process"), std::string::npos) << out;
  EXPECT_NE(out.find("result     OK"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(channel)) << "the channel file outlived the kernel";
}

// Two kernel processes on one shared-memory region (emulated CXL): `nrx boot --log shm --machines 2`
// and `nrx node --attach`. Each runs the demo on its own nodes and cores; the process table is
// shared (each machine keeps its own NR-FS, kernel.h says why), so after both finish, every
// replica in both processes has the same proc digest. Pids come from the one table: no pid
// appears in both. Both coherence modes: noncoherent runs the logs' sequencers in machine 0 and
// orders NR-FS's scans with the bakery (no cross-process atomics).
class BootShm : public ::testing::TestWithParam<std::string> {};

TEST_P(BootShm, TwoKernelProcessesAgree) {
  TempDir dir_a, dir_b;
  const std::string region = "/dev/shm/nrx-boot-test-" + std::to_string(getpid());
  auto start = [&](const std::vector<std::string>& args, const TempDir& dir) {
    std::vector<std::string> all = {NRX_BINARY};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    const std::string out = dir.path() + "/stdout.txt", err = dir.path() + "/stderr.txt";
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = 0;
    EXPECT_EQ(posix_spawn(&pid, NRX_BINARY, &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    return pid;
  };
  const pid_t a = start({"boot", "--log", "shm", "--region", region, "--machines", "2", "--nodes", "2",
                         "--cores-per-node", "1", "--duration", "0.6", "--coherence", GetParam(), "--json"},
                        dir_a);
  // Started at once: the node itself waits for the region to appear and for machine 0 to seal
  // its directory of windows.
  const auto deadline = std::chrono::steady_clock::now() + kRunTimeout;
  const pid_t b = start({"node", "--attach", region, "--machine", "1", "--machines", "2", "--nodes", "2",
                         "--cores-per-node", "1", "--duration", "0.6", "--coherence", GetParam(), "--json"},
                        dir_b);
  auto finish = [&](pid_t pid) {
    int status = 0;
    for (;;) {
      if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        (void)waitpid(pid, &status, 0);
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the child, with a deadline
    }
  };
  const int rc_a = finish(a), rc_b = finish(b);
  const std::string out_a = test::read_file(dir_a.path() + "/stdout.txt");
  const std::string out_b = test::read_file(dir_b.path() + "/stdout.txt");
  const std::string err_a = test::read_file(dir_a.path() + "/stderr.txt");
  const std::string err_b = test::read_file(dir_b.path() + "/stderr.txt");
  ASSERT_EQ(rc_a, 0) << out_a << err_a;
  ASSERT_EQ(rc_b, 0) << out_b << err_b;
  for (const std::string* out : {&out_a, &out_b}) {
    JsonChecker check(*out);
    ASSERT_TRUE(check.valid()) << *out;
    EXPECT_NE(out->find("\"log\":\"shm\""), std::string::npos);
    EXPECT_NE(out->find("\"coherence\":\"" + GetParam() + "\""), std::string::npos) << *out;
    EXPECT_NE(out->find("\"digests_equal\":true"), std::string::npos) << *out;
  }
  EXPECT_NE(out_b.find("\"machine\":1"), std::string::npos);
  EXPECT_NE(out_b.find("\"first_node\":2"), std::string::npos) << out_b;
  const size_t sub_a = out_a.find("\"subsystems\""), sub_b = out_b.find("\"subsystems\"");
  ASSERT_NE(sub_a, std::string::npos);
  ASSERT_NE(sub_b, std::string::npos);
  for (const char* subsystem : {"\"proc\"", "\"fs\""}) {
    const auto da = array_after(out_a.substr(sub_a), subsystem, "digests");
    const auto db = array_after(out_b.substr(sub_b), subsystem, "digests");
    ASSERT_EQ(da.size(), 2u) << subsystem;
    ASSERT_EQ(db.size(), 2u) << subsystem;
    EXPECT_EQ(da.front(), db.front()) << subsystem << ": the two kernel processes disagree";
  }
  // The shared process table handed out distinct pids: machine 0's demo took three, machine 1's
  // three others.
  auto pids = [](const std::string& out) {
    std::vector<long long> v;
    for (size_t at = out.find("\"pid\":"); at != std::string::npos; at = out.find("\"pid\":", at + 1)) {
      v.push_back(number_after(out, "\"pid\":", at));
    }
    return v;
  };
  const auto pa = pids(out_a), pb = pids(out_b);
  EXPECT_EQ(pa.size(), 3u);
  EXPECT_EQ(pb.size(), 3u);
  for (long long p : pa) EXPECT_EQ(std::count(pb.begin(), pb.end(), p), 0) << "pid " << p << " in both";
  EXPECT_FALSE(std::filesystem::exists(region)) << "the creator leaves no region behind";
}

INSTANTIATE_TEST_SUITE_P(Coherence, BootShm, ::testing::Values("coherent", "noncoherent"),
                         [](const auto& p) { return p.param; });

TEST(BootUsage, BadInputExitsTwoWithOneLine) {
  const std::vector<std::vector<std::string>> bad = {
      {"--nodes", "0"},       {"--nodes", "x"},         {"--duration", "-1"}, {"--duration", "abc"},
      {"--log", "tape"},      {"--device", "rxe0"},     {"--coherence", "noncoherent"},
      {"--log", "shm", "--coherence", "weak"},        {"--memory", "3"},    {"--cores-per-node", "0"},
      {"--region", "/dev/shm/x"},  {"--log", "shm", "--machines", "0"},  {"--log", "shm", "--machines", "65"},
      {"--no-such-option"},   {"positional"},
  };
  for (const auto& args : bad) {
    TempDir dir;
    RunResult r = boot(args, dir);
    EXPECT_EQ(r.exit_code, 2) << args[0] << ": " << r.out << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("nrx boot:"), std::string::npos) << r.err;
  }
  TempDir dir;
  RunResult help = boot({"--help"}, dir);
  EXPECT_EQ(help.exit_code, 0);
  for (const char* opt : {"--nodes", "--cores-per-node", "--duration", "--log", "--json", "--interactive"}) {
    EXPECT_NE(help.out.find(opt), std::string::npos) << opt;
  }
}

// --log rdma needs an RDMA device: without one (this host; the QEMU cluster adds soft-RoCE, see
// tests/cluster/rdma_cluster_test.sh) it fails at boot, saying how to add one.
TEST(BootRdma, WithoutADeviceFailsAndSaysHowToAddOne) {
  std::error_code ec;
  if (std::filesystem::exists("/sys/class/infiniband", ec) &&
      !std::filesystem::is_empty("/sys/class/infiniband", ec)) {
    GTEST_SKIP() << "this machine has an RDMA device";
  }
  TempDir dir;
  RunResult r = boot({"--log", "rdma", "--duration", "0.2"}, dir);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("no RDMA device"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rdma link add"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace nrx::tools
