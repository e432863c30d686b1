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
#pragma once

#include <concepts>
#include <type_traits>

namespace nrx::nr {

template <typename D>
concept Dispatch =
    requires(D d, const D cd, const typename D::ReadOp& r, const typename D::WriteOp& w) {
      typename D::ReadOp;
      typename D::WriteOp;
      typename D::Response;
      { cd.dispatch(r) } -> std::same_as<typename D::Response>;
      { d.dispatch_mut(w) } -> std::same_as<typename D::Response>;
    } &&
    std::is_trivially_copyable_v<typename D::WriteOp> && std::is_default_constructible_v<typename D::Response> &&
    std::is_move_assignable_v<typename D::Response>;

}  // namespace nrx::nr
