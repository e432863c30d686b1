// Log garbage collection in the booted kernel (NrOS paper section 4.5; kernel/boot/kernel.h): with
// tiny logs and a writer on node 0 only, node 1's replicas fall behind and hold back the logs'
// heads. The lagging-replica hook must nudge a core of node 1 by a message (its mailbox's nudge
// flag), that core must advance its replicas, and the writer must finish without a log timeout;
// afterwards the replicas agree. Also: idle cores advance their replicas by themselves.
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/boot/kernel.h"
#include "kernel/boot/programs.h"

namespace nrx::boot {
namespace {

std::vector<std::byte> self_image() {
  std::ifstream in("/proc/self/exe", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(bytes.size());
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

TEST(KernelGc, LaggingNodesAreNudgedAndTheWriterNeverStalls) {
  auto topo = Topology::detect().emulate(2);
  ASSERT_TRUE(topo.ok());
  auto kernel = Kernel::create({.topology = *topo, .cores_per_node = 1, .pool_bytes = 64ull << 20, .log_slots = 16});
  ASSERT_TRUE(kernel.ok()) << kernel.status().to_string();
  const std::vector<std::byte> image = self_image();
  ASSERT_FALSE(image.empty());
  // fsbench on node 0 only: every write is a log entry that node 1 must apply before its slot is
  // reused, and a 16-slot log fills after 16 of them.
  SpawnOptions so{.nodes = {0}, .args = {.duration = std::chrono::milliseconds(300), .seed = 3}};
  auto pid = (*kernel)->spawn(*find_program("fsbench"), image, so);
  ASSERT_TRUE(pid.ok()) << pid.status().to_string();
  auto report = (*kernel)->wait(*pid);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->status, 0) << "a log append timed out or a read was wrong";
  const KernelStats s = (*kernel)->stats();
  EXPECT_GT(s.fs_calls, 100u);
  EXPECT_GT(s.nudges_sent, 0u) << "the logs filled, yet no core of the lagging node was nudged";
  EXPECT_GT(s.nudges_handled, 0u);
  EXPECT_LE(s.nudges_handled, s.nudges_sent);
  EXPECT_GT(s.idle_advances, 0u) << "idle cores must advance their replicas";
  const ReplicaDigests d = (*kernel)->digests();
  EXPECT_TRUE(d.equal());
}

}  // namespace
}  // namespace nrx::boot
