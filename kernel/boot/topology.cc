#include "kernel/boot/topology.h"

#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

namespace nrx::boot {

Topology Topology::detect() {
  Topology t;
  t.numa_available = ::numa_available() >= 0;
  if (t.numa_available) {
    std::unique_ptr<bitmask, decltype(&numa_free_cpumask)> cpus(numa_allocate_cpumask(), &numa_free_cpumask);
    for (int node = 0; node <= numa_max_node(); ++node) {
      if (numa_bitmask_isbitset(numa_all_nodes_ptr, node) == 0) continue;
      Node n;
      n.id = static_cast<int>(t.nodes.size());
      n.physical_node = node;
      if (numa_node_to_cpus(node, cpus.get()) == 0) {
        for (unsigned c = 0; c < cpus->size; ++c) {
          if (numa_bitmask_isbitset(cpus.get(), c) != 0) n.cpus.push_back(static_cast<int>(c));
        }
      }
      long long free_bytes = 0;
      const long long size = numa_node_size64(node, &free_bytes);
      n.memory_bytes = size > 0 ? static_cast<uint64_t>(size) : 0;
      if (!n.cpus.empty()) t.nodes.push_back(std::move(n));  // memory-only nodes run no replica
    }
  }
  if (t.nodes.empty()) {
    Node n;
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    for (long c = 0; c < std::max(1L, online); ++c) n.cpus.push_back(static_cast<int>(c));
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page = sysconf(_SC_PAGESIZE);
    n.memory_bytes = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
    t.nodes.push_back(std::move(n));
  }
  return t;
}

Result<Topology> Topology::emulate(uint32_t count) const {
  if (count == 0 || count > 64) {
    return Status::invalid_argument("--nodes must be between 1 and 64, not " + std::to_string(count));
  }
  Topology e;
  e.numa_available = numa_available;
  e.emulated = count != nodes.size();
  if (!e.emulated) {
    e.nodes = nodes;
    return e;
  }
  e.nodes.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    const Node& backing = nodes[i % nodes.size()];
    e.nodes[i].id = static_cast<int>(i);
    e.nodes[i].physical_node = backing.physical_node;
    e.nodes[i].memory_bytes = backing.memory_bytes;
  }
  // Deal every real CPU to the emulated nodes backed by its node, round-robin.
  for (size_t p = 0; p < nodes.size(); ++p) {
    std::vector<uint32_t> mine;
    for (uint32_t i = 0; i < count; ++i) {
      if (i % nodes.size() == p) mine.push_back(i);
    }
    if (mine.empty() || nodes[p].cpus.empty()) continue;
    const std::vector<int>& cpus = nodes[p].cpus;
    // More emulated nodes than CPUs: node k takes CPU k mod count, so CPUs are shared evenly.
    const size_t rounds = std::max(cpus.size(), mine.size());
    for (size_t c = 0; c < rounds; ++c) {
      std::vector<int>& dst = e.nodes[mine[c % mine.size()]].cpus;
      const int cpu = cpus[c % cpus.size()];
      if (std::find(dst.begin(), dst.end(), cpu) == dst.end()) dst.push_back(cpu);
    }
  }
  return e;
}

size_t Topology::cpu_count() const {
  std::vector<int> all;
  for (const Node& n : nodes) all.insert(all.end(), n.cpus.begin(), n.cpus.end());
  std::sort(all.begin(), all.end());
  return static_cast<size_t>(std::unique(all.begin(), all.end()) - all.begin());
}

std::string Topology::describe() const {
  std::string s = std::to_string(nodes.size()) + (nodes.size() == 1 ? " node" : " nodes");
  if (emulated) s += " (emulated)";
  s += ", " + std::to_string(cpu_count()) + " cpus";
  if (!numa_available) s += ", libnuma: no NUMA support";
  return s;
}

bool pin_current_thread(const std::vector<int>& cpus) {
  if (cpus.empty()) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) {
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
  }
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

}  // namespace nrx::boot
