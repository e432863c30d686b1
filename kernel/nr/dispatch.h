// The Dispatch concept: what makes a sequential data structure replicable by NR (DESIGN 2;
// NrOS's `Dispatch` trait). A type D provides
//   ReadOp, WriteOp, Response
//   Response dispatch(const ReadOp&) const;   // pure: reads the replica, changes nothing
//   Response dispatch_mut(const WriteOp&);    // deterministic: same ops, same order, same state
// WriteOp is copied into log slots that cross processes and machines, so it must be trivially
// copyable and hold no pointers (bulk data travels as a logs::PayloadRef).
//
//   struct Counter {
//     struct ReadOp {}; struct WriteOp { uint64_t add; }; using Response = uint64_t;
//     uint64_t v = 0;
//     Response dispatch(const ReadOp&) const { return v; }
//     Response dispatch_mut(const WriteOp& op) { return v += op.add; }
//   };
//   static_assert(nrx::nr::Dispatch<Counter>);
//
// A structure whose ops allocate (NR-vMem's page-table frames) needs to know WHICH log entry it is
// applying, so that every replica asks mem::DeterministicAllocator the same question. It declares
// `Response dispatch_mut(const WriteOp&, const ApplyContext&)` instead of the one-argument form;
// Replica calls whichever exists (apply_write below).
#pragma once

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "logs/log.h"

namespace nrx::nr {

// Where an op being applied sits: the same on every replica for the same log entry.
struct ApplyContext {
  logs::LogIndex index;    // the entry's log index (unique per log); a CNR scan: its scan id
  logs::ReplicaId writer;  // the replica that appended it (a scan: its issuer)
  logs::ReplicaId replica;  // the replica applying it now
  uint32_t log = 0;        // which log (CNR has several); kScanLogs for a scan
};
inline constexpr uint32_t kScanLogs = UINT32_MAX;

template <typename D>
concept DispatchWithContext = requires(D d, const typename D::WriteOp& w, const ApplyContext& c) {
  { d.dispatch_mut(w, c) } -> std::same_as<typename D::Response>;
};

template <typename D>
concept Dispatch =
    requires(const D cd, const typename D::ReadOp& r) {
      typename D::ReadOp;
      typename D::WriteOp;
      typename D::Response;
      { cd.dispatch(r) } -> std::same_as<typename D::Response>;
    } &&
    (DispatchWithContext<D> || requires(D d, const typename D::WriteOp& w) {
      { d.dispatch_mut(w) } -> std::same_as<typename D::Response>;
    }) &&
    std::is_trivially_copyable_v<typename D::WriteOp> && std::is_default_constructible_v<typename D::Response> &&
    std::is_move_assignable_v<typename D::Response>;

// Applies |op| to |d| with the context when D takes one.
template <typename D>
typename D::Response apply_write(D& d, const typename D::WriteOp& op, const ApplyContext& ctx) {
  if constexpr (DispatchWithContext<D>) {
    return d.dispatch_mut(op, ctx);
  } else {
    return d.dispatch_mut(op);
  }
}

}  // namespace nrx::nr
