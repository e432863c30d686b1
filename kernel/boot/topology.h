// nrx::boot::Topology: the machine's NUMA layout as the kernel uses it: nodes, the CPUs and memory
// of each, read with libnuma; and the emulated split (`--nodes N`) that lets every multi-replica
// path run on a machine with fewer real nodes (one replica per node, NrOS's placement rule).
//
// Thread safety: plain values.
//
//   auto topo = nrx::boot::Topology::detect();
//   auto plan = topo.emulate(4).value();   // 4 nodes, CPUs dealt round-robin
//   for (const auto& n : plan.nodes) pin_to(n.cpus);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace nrx::boot {

struct Node {
  int id = 0;               // node number (emulated nodes are numbered 0..N-1)
  int physical_node = 0;    // the real NUMA node backing it
  std::vector<int> cpus;    // CPUs this node's threads are pinned to
  uint64_t memory_bytes = 0;  // memory of the backing real node (0 if unknown)
};

struct Topology {
  bool numa_available = false;  // libnuma works on this machine
  bool emulated = false;        // nodes come from --nodes, not the hardware
  std::vector<Node> nodes;

  // Reads the real topology. Without libnuma support, one node holding every online CPU.
  static Topology detect();

  // |count| emulated nodes over this topology. Each emulated node is backed by a real node
  // (round-robin) and gets that node's CPUs dealt round-robin; when there are more emulated nodes
  // than CPUs, CPUs are shared. Errors: kInvalidArgument when |count| is 0 or above 64.
  Result<Topology> emulate(uint32_t count) const;

  size_t cpu_count() const;
  // "2 nodes (emulated on 1): node 0 cpus 0 | node 1 cpus 1".
  std::string describe() const;
};

// Pins the calling thread to |cpus|; an empty list or a failure leaves it unpinned (returns false).
bool pin_current_thread(const std::vector<int>& cpus);

}  // namespace nrx::boot
