#include "kernel/mem/memory.h"

namespace nrx::mem {

Result<std::unique_ptr<Memory>> Memory::create(const MemoryOptions& options) {
  if (options.nodes == 0 || options.nodes > kMaxPools) {
    return Status::invalid_argument("memory needs 1.." + std::to_string(kMaxPools) + " nodes");
  }
  if (!options.physical_nodes.empty() && options.physical_nodes.size() != options.nodes) {
    return Status::invalid_argument("physical_nodes must name one real node per node");
  }
  std::unique_ptr<Memory> m(new Memory());
  for (uint32_t n = 0; n < options.nodes; ++n) {
    const int bind = options.physical_nodes.empty() ? -1 : options.physical_nodes[n];
    NRX_ASSIGN_OR_RETURN(std::unique_ptr<Pool> pool,
                         Pool::create({.bytes = options.pool_bytes, .numa_node = bind, .huge = options.huge}));
    NRX_ASSIGN_OR_RETURN(uint32_t id, m->physical_.add_pool(std::move(pool)));
    m->ncaches_.push_back(std::make_unique<NCache>(id, options.pool_bytes));
  }
  return m;
}

CacheStats Memory::stats() const {
  CacheStats total;
  for (const auto& c : ncaches_) {
    CacheStats s = c->stats();
    total.free_base += s.free_base;
    total.free_large += s.free_large;
  }
  return total;
}

std::string Memory::describe() const {
  std::string s = std::to_string(ncaches_.size()) + (ncaches_.size() == 1 ? " pool" : " pools");
  s += " x " + std::to_string(physical_.pool(0)->size() >> 20) + " MiB (";
  for (uint32_t p = 0; p < physical_.pool_count(); ++p) {
    if (p > 0) s += " | ";
    s += physical_.pool(p)->backing();
  }
  return s + ")";
}

}  // namespace nrx::mem
