#include "kernel/proc/process_table.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>

#include "base/check.h"
#include "kernel/nr/ds/hashmap.h"  // nr::mix64

namespace nrx::proc {
namespace {

using WriteOp = ProcessTable::WriteOp;
using Response = ProcessTable::Response;

static_assert(sizeof(WriteOp::Create) == sizeof(WriteOp::Args), "Create fills the whole union");
static_assert(sizeof(WriteOp::Core) == 16 && sizeof(WriteOp::Exit) == 16);
static_assert(offsetof(WriteOp, args) == 8);

bool all_zero(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    if (b[i] != 0) return false;
  }
  return true;
}

// The arguments of |op| as kind T (memcpy: the op's bytes came from a log, whichever union member
// they were written as).
template <typename T>
T args_as(const WriteOp& op) {
  T t;
  std::memcpy(&t, &op.args, sizeof(T));
  return t;
}

// The union bytes past a T: unused by an op of that kind, so they must be zero.
template <typename T>
bool tail_is_zero(const WriteOp& op) {
  unsigned char bytes[sizeof(WriteOp::Args)];
  std::memcpy(bytes, &op.args, sizeof(bytes));
  return all_zero(bytes + sizeof(T), sizeof(bytes) - sizeof(T));
}

template <typename T>
WriteOp make_op(WriteOp::Kind kind, const T& args) {
  WriteOp op{};  // zeroes everything: Args{} zero-initialises its first (and largest) member
  op.kind = kind;
  std::memcpy(&op.args, &args, sizeof(T));
  return op;
}

Response error(Status s) {
  Response r;
  r.status = std::move(s);
  return r;
}

std::string pid_text(uint64_t pid) { return "pid " + std::to_string(pid); }
std::string core_text(uint32_t core) { return "core " + std::to_string(core); }

// Folds |w| into the running digest |h| (order-dependent: the table's walks are ordered).
uint64_t fold(uint64_t h, uint64_t w) { return nr::mix64(h ^ nr::mix64(w)); }

}  // namespace

std::string_view ProcessInfo::name_view() const { return std::string_view(name, strnlen(name, kNameBytes)); }

WriteOp ProcessTable::create_op(std::string_view name, uint64_t entry, bool pie, uint64_t image_span,
                                uint32_t home_node) {
  WriteOp::Create a{};
  const std::string_view n = name.substr(0, std::min(name.find('\0'), size_t{kNameBytes - 1}));
  std::memcpy(a.name, n.data(), n.size());
  a.entry = entry;
  a.image_span = image_span;
  a.home_node = home_node;
  a.pie = pie ? 1 : 0;
  return make_op(WriteOp::Kind::kCreate, a);
}

WriteOp ProcessTable::alloc_core_op(uint64_t pid, uint32_t node, uint32_t core) {
  return make_op(WriteOp::Kind::kAllocCore, WriteOp::Core{.pid = pid, .node = node, .core = core});
}

WriteOp ProcessTable::release_core_op(uint64_t pid, uint32_t core) {
  return make_op(WriteOp::Kind::kReleaseCore, WriteOp::Core{.pid = pid, .node = 0, .core = core});
}

WriteOp ProcessTable::exit_op(uint64_t pid, int32_t status) {
  return make_op(WriteOp::Kind::kExit, WriteOp::Exit{.pid = pid, .status = status, .reserved = 0});
}

Result<ProcessTable> ProcessTable::create(uint32_t nodes, uint32_t cores_per_node) {
  if (nodes == 0 || cores_per_node == 0) {
    return Status::invalid_argument("a process table needs at least one node and one core per node");
  }
  if (uint64_t{nodes} * cores_per_node > kMaxCores) {
    return Status::invalid_argument(std::to_string(nodes) + " nodes x " + std::to_string(cores_per_node) +
                                    " cores exceed the " + std::to_string(kMaxCores) + " cores a table manages");
  }
  return ProcessTable(nodes, cores_per_node);
}

ProcessTable::ProcessTable(uint32_t nodes, uint32_t cores_per_node)
    : nodes_(nodes), cores_per_node_(cores_per_node) {
  NRX_CHECK(nodes > 0 && cores_per_node > 0 && uint64_t{nodes} * cores_per_node <= kMaxCores,
            "process table topology out of range (use ProcessTable::create to validate)");
  owner_.assign(core_count(), 0);
  free_per_node_.assign(nodes, cores_per_node);
  pie_slots_.assign(kMaxProcesses, false);
}

Status ProcessTable::validate(const WriteOp& op) const {
  if (!all_zero(op.reserved, sizeof(op.reserved))) return Status::invalid_argument("reserved op bytes are not zero");
  switch (op.kind) {
    case WriteOp::Kind::kCreate: {
      const auto a = args_as<WriteOp::Create>(op);
      if (!all_zero(a.reserved, sizeof(a.reserved))) return Status::invalid_argument("reserved create bytes are not zero");
      const void* nul = std::memchr(a.name, '\0', kNameBytes);
      if (nul == nullptr) return Status::invalid_argument("process name is not NUL-terminated");
      const size_t len = static_cast<const char*>(nul) - a.name;
      if (len == 0) return Status::invalid_argument("empty process name");
      if (!all_zero(a.name + len, kNameBytes - len)) return Status::invalid_argument("bytes after the name's NUL are not zero");
      if (a.pie > 1) return Status::invalid_argument("pie must be 0 or 1");
      if (a.home_node >= nodes_) {
        return Status::invalid_argument("home node " + std::to_string(a.home_node) + " out of range (" +
                                        std::to_string(nodes_) + " nodes)");
      }
      if (a.entry >= kUserTop) return Status::invalid_argument("entry point outside the user half");
      if (a.pie == 1 && a.entry >= kPieStride) return Status::invalid_argument("PIE entry point beyond its load slot");
      if (a.pie == 1 && a.image_span > kPieStride) {
        return Status::invalid_argument("PIE image of " + std::to_string(a.image_span) + " bytes exceeds the " +
                                        std::to_string(kPieStride) + "-byte load slot");
      }
      return ok_status();
    }
    case WriteOp::Kind::kAllocCore:
    case WriteOp::Kind::kReleaseCore: {
      if (!tail_is_zero<WriteOp::Core>(op)) return Status::invalid_argument("unused op bytes are not zero");
      const auto a = args_as<WriteOp::Core>(op);
      if (op.kind == WriteOp::Kind::kReleaseCore) {
        if (a.node != 0) return Status::invalid_argument("release: the node field is reserved and must be zero");
        if (a.core >= core_count()) return Status::invalid_argument(core_text(a.core) + " out of range");
        return ok_status();
      }
      if (a.node >= nodes_) return Status::invalid_argument("node " + std::to_string(a.node) + " out of range");
      if (a.core != kAnyCore) {
        if (a.core >= core_count()) return Status::invalid_argument(core_text(a.core) + " out of range");
        if (node_of(a.core) != a.node) {
          return Status::invalid_argument(core_text(a.core) + " is not on node " + std::to_string(a.node));
        }
      }
      return ok_status();
    }
    case WriteOp::Kind::kExit: {
      if (!tail_is_zero<WriteOp::Exit>(op)) return Status::invalid_argument("unused op bytes are not zero");
      if (args_as<WriteOp::Exit>(op).reserved != 0) return Status::invalid_argument("reserved exit bytes are not zero");
      return ok_status();
    }
  }
  return Status::invalid_argument("unknown process-table op kind " + std::to_string(static_cast<unsigned>(op.kind)));
}

Response ProcessTable::dispatch_mut(const WriteOp& op) {
  if (Status s = validate(op); !s.ok()) return error(std::move(s));
  switch (op.kind) {
    case WriteOp::Kind::kCreate: return create_process(args_as<WriteOp::Create>(op));
    case WriteOp::Kind::kAllocCore: return alloc_core(args_as<WriteOp::Core>(op));
    case WriteOp::Kind::kReleaseCore: return release_core(args_as<WriteOp::Core>(op));
    case WriteOp::Kind::kExit: return exit_process(args_as<WriteOp::Exit>(op));
  }
  return error(Status::invalid_argument("unknown process-table op kind"));  // unreachable: validate() refused it
}

Response ProcessTable::create_process(const WriteOp::Create& a) {
  if (processes_.size() >= kMaxProcesses) {
    return error(Status::resource_exhausted(std::to_string(kMaxProcesses) + " processes are alive"));
  }
  ProcessInfo info;
  info.pid = next_pid_++;
  std::memcpy(info.name, a.name, kNameBytes);  // validated: NUL-terminated, zero after the NUL
  info.entry = a.entry;
  info.image_span = a.image_span;
  info.home_node = a.home_node;
  info.pie = a.pie;
  if (a.pie == 1) {
    // Fewer than kMaxProcesses processes are alive, so some slot is free and the probe ends.
    uint64_t slot = info.pid % kMaxProcesses;
    while (pie_slots_[slot]) slot = (slot + 1) % kMaxProcesses;
    pie_slots_[slot] = true;
    info.load_offset = kPieBase + slot * kPieStride;
  }
  processes_.emplace(info.pid, info);
  Response r;
  r.pid = info.pid;
  r.load_offset = info.load_offset;
  return r;
}

Response ProcessTable::alloc_core(const WriteOp::Core& a) {
  auto it = processes_.find(a.pid);
  if (it == processes_.end()) return error(Status::not_found("no process " + pid_text(a.pid)));
  uint32_t core = a.core;
  if (core == kAnyCore) {
    const uint32_t first = a.node * cores_per_node_;
    for (core = first; core < first + cores_per_node_ && owner_[core] != 0; ++core) {
    }
    if (core == first + cores_per_node_) {
      return error(Status::resource_exhausted("no free core on node " + std::to_string(a.node)));
    }
  } else if (owner_[core] == a.pid) {
    return error(Status::already_exists(pid_text(a.pid) + " already owns " + core_text(core)));
  } else if (owner_[core] != 0) {
    return error(Status::resource_exhausted(core_text(core) + " is owned by " + pid_text(owner_[core])));
  }
  owner_[core] = a.pid;
  --free_per_node_[node_of(core)];
  ++it->second.cores;
  Response r;
  r.pid = a.pid;
  r.core = core;
  return r;
}

Response ProcessTable::release_core(const WriteOp::Core& a) {
  auto it = processes_.find(a.pid);
  if (it == processes_.end()) return error(Status::not_found("no process " + pid_text(a.pid)));
  if (owner_[a.core] != a.pid) {
    return error(Status::failed_precondition(pid_text(a.pid) + " does not own " + core_text(a.core)));
  }
  owner_[a.core] = 0;
  ++free_per_node_[node_of(a.core)];
  --it->second.cores;
  Response r;
  r.pid = a.pid;
  r.core = a.core;
  return r;
}

Response ProcessTable::exit_process(const WriteOp::Exit& a) {
  auto it = processes_.find(a.pid);
  if (it == processes_.end()) return error(Status::not_found("no process " + pid_text(a.pid)));
  Response r;
  r.pid = a.pid;
  r.exit_status = a.status;
  if (it->second.cores != 0) r.cores = cores_of(a.pid);
  for (uint32_t core : r.cores) {
    owner_[core] = 0;
    ++free_per_node_[node_of(core)];
  }
  if (it->second.pie == 1) pie_slots_[(it->second.load_offset - kPieBase) / kPieStride] = false;
  processes_.erase(it);
  ++exited_;
  return r;
}

std::vector<uint32_t> ProcessTable::cores_of(uint64_t pid) const {
  std::vector<uint32_t> cores;
  for (uint32_t c = 0; c < owner_.size(); ++c) {
    if (owner_[c] == pid) cores.push_back(c);
  }
  return cores;
}

Response ProcessTable::dispatch(const ReadOp& op) const {
  Response r;
  switch (op.kind) {
    case ReadOp::Kind::kGet: {
      auto it = processes_.find(op.pid);
      if (it == processes_.end()) return error(Status::not_found("no process " + pid_text(op.pid)));
      r.pid = op.pid;
      r.info = it->second;
      return r;
    }
    case ReadOp::Kind::kList:
      r.processes.reserve(processes_.size());
      for (const auto& [pid, info] : processes_) r.processes.push_back(info);
      return r;
    case ReadOp::Kind::kCoreOwner:
      if (op.core >= core_count()) return error(Status::invalid_argument(core_text(op.core) + " out of range"));
      r.core = op.core;
      r.pid = owner_[op.core];
      return r;
    case ReadOp::Kind::kCoresOf:
      if (processes_.count(op.pid) == 0) return error(Status::not_found("no process " + pid_text(op.pid)));
      r.pid = op.pid;
      r.cores = cores_of(op.pid);
      return r;
    case ReadOp::Kind::kFreeCores:
      if (op.node >= nodes_) return error(Status::invalid_argument("node " + std::to_string(op.node) + " out of range"));
      r.free_cores = free_per_node_[op.node];
      return r;
  }
  return error(Status::invalid_argument("unknown process-table read kind " +
                                        std::to_string(static_cast<unsigned>(op.kind))));
}

uint64_t ProcessTable::digest() const {
  uint64_t h = fold(fold(nodes_, cores_per_node_), next_pid_);
  h = fold(h, exited_);
  h = fold(h, processes_.size());
  for (const auto& [pid, info] : processes_) {
    uint64_t words[sizeof(ProcessInfo) / 8];
    static_assert(sizeof(ProcessInfo) % 8 == 0);
    std::memcpy(words, &info, sizeof(words));
    for (uint64_t w : words) h = fold(h, w);
  }
  for (uint64_t owner : owner_) h = fold(h, owner);
  return h;
}

bool ProcessTable::check_invariants(std::string* why) const {
  auto fail = [why](std::string m) {
    if (why != nullptr) *why = std::move(m);
    return false;
  };
  if (owner_.size() != core_count() || free_per_node_.size() != nodes_) return fail("table sizes disagree with the topology");
  if (processes_.size() > kMaxProcesses) return fail("more than kMaxProcesses processes");
  std::map<uint64_t, uint32_t> owned;  // pid -> cores in the owner table
  std::vector<uint32_t> free(nodes_, 0);
  for (uint32_t c = 0; c < owner_.size(); ++c) {
    if (owner_[c] == 0) {
      ++free[node_of(c)];
    } else if (processes_.count(owner_[c]) == 0) {
      return fail(core_text(c) + " is owned by " + pid_text(owner_[c]) + ", which is not alive");
    } else {
      ++owned[owner_[c]];
    }
  }
  for (uint32_t n = 0; n < nodes_; ++n) {
    if (free[n] != free_per_node_[n]) {
      return fail("node " + std::to_string(n) + " counts " + std::to_string(free_per_node_[n]) + " free cores, the table " +
                  std::to_string(free[n]));
    }
  }
  std::vector<bool> slots(kMaxProcesses, false);
  for (const auto& [pid, info] : processes_) {
    if (info.pid != pid || pid == 0 || pid >= next_pid_) return fail(pid_text(pid) + ": bad pid in its record");
    const uint32_t expected = owned.count(pid) != 0 ? owned[pid] : 0;
    if (info.cores != expected) {
      return fail(pid_text(pid) + " counts " + std::to_string(info.cores) + " cores, the owner table " +
                  std::to_string(expected));
    }
    if (info.home_node >= nodes_) return fail(pid_text(pid) + ": home node out of range");
    if (info.name_view().empty() || info.name_view().size() >= kNameBytes) return fail(pid_text(pid) + ": bad name");
    if (info.pie == 0) {
      if (info.load_offset != 0) return fail(pid_text(pid) + ": a non-PIE with a load offset");
      continue;
    }
    if (info.load_offset < kPieBase || (info.load_offset - kPieBase) % kPieStride != 0 ||
        (info.load_offset - kPieBase) / kPieStride >= kMaxProcesses) {
      return fail(pid_text(pid) + ": load offset outside the PIE slots");
    }
    const uint64_t slot = (info.load_offset - kPieBase) / kPieStride;
    if (slots[slot]) return fail(pid_text(pid) + " shares its PIE slot with another live process");
    slots[slot] = true;
  }
  if (slots != pie_slots_) return fail("the PIE slot map disagrees with the live processes");
  return true;
}

}  // namespace nrx::proc
