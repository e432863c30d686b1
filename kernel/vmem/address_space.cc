#include "kernel/vmem/address_space.h"

#include <utility>

#include "base/check.h"

namespace nrx::vmem {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdULL;
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

Walk walk_of(const Mapping& m, uint64_t vaddr) {
  const uint64_t page = m.frame.size();
  const uint64_t paddr = m.frame.paddr() + (vaddr - m.vaddr);
  uint64_t leaf = ((paddr & ~(page - 1)) | pte::kPresent | pte_rights(m.rights));
  if (m.frame.cls == mem::FrameClass::kLarge) leaf |= pte::kPageSize;
  return Walk{.paddr = paddr, .page_vaddr = vaddr & ~(page - 1), .page = m.frame.cls, .leaf = leaf};
}

// The piece of |m| that covers [lo, hi) (clipped to |m|).
Mapping piece(const Mapping& m, uint64_t lo, uint64_t hi) {
  const uint64_t s = std::max(lo, m.vaddr);
  const uint64_t e = std::min(hi, m.vaddr + m.len);
  Mapping p = m;
  p.vaddr = s;
  p.len = e - s;
  p.frame.offset = m.frame.offset + (s - m.vaddr);
  return p;
}

}  // namespace

uint64_t pte_rights(uint8_t r) {
  uint64_t bits = 0;
  if ((r & rights::kWrite) != 0) bits |= pte::kWritable;
  if ((r & rights::kUser) != 0) bits |= pte::kUser;
  if ((r & rights::kExecute) == 0) bits |= pte::kNoExecute;
  return bits;
}

Result<AddressSpace> AddressSpace::create(mem::Memory& memory, mem::DeterministicAllocator* det, uint32_t slot,
                                          mem::Frame root) {
  if (det != nullptr && slot >= det->slots()) {
    return Status::invalid_argument("replica slot " + std::to_string(slot) + " is not in the allocator");
  }
  NRX_ASSIGN_OR_RETURN(PageTables tables, PageTables::create(memory, root));
  return AddressSpace(memory, det, slot, std::move(tables));
}

Status AddressSpace::validate(const WriteOp& op, const mem::PhysicalMemory& physical) {
  using Kind = WriteOp::Kind;
  if (op.kind != Kind::kMap && op.kind != Kind::kUnmap && op.kind != Kind::kAdjust) {
    return Status::invalid_argument("unknown address-space operation");
  }
  if ((op.rights & ~rights::kAll) != 0) return Status::invalid_argument("unknown rights bits");
  if (op.len == 0) return Status::invalid_argument("zero length");
  const uint64_t page = op.kind == Kind::kMap ? op.frame.size() : mem::kBaseFrameSize;
  if (op.kind == Kind::kMap && op.frame.cls != mem::FrameClass::kBase && op.frame.cls != mem::FrameClass::kLarge) {
    return Status::invalid_argument("unknown frame class");
  }
  if (op.vaddr % page != 0 || op.len % page != 0) {
    return Status::invalid_argument("address " + hex(op.vaddr) + " or length " + hex(op.len) + " is not aligned to " +
                                    hex(page));
  }
  if (op.vaddr >= kUserTop || op.len > kUserTop - op.vaddr) {
    return Status::invalid_argument("range " + hex(op.vaddr) + " + " + hex(op.len) +
                                    " leaves the canonical user half [0, 2^47)");
  }
  if (op.kind == Kind::kMap) {
    if (op.frame.offset % op.frame.size() != 0 || physical.paddr_ptr(op.frame.paddr(), op.len) == nullptr) {
      return Status::invalid_argument("frames " + hex(op.frame.paddr()) + " + " + hex(op.len) +
                                      " are not inside one pool of physical memory");
    }
  }
  return Status::ok_status();
}

AddressSpace::Response AddressSpace::dispatch(const ReadOp& op) const {
  Response r;
  Result<Walk> w = tables_.walk(op.vaddr, op.access);
  if (w.ok()) {
    r.walk = *w;
  } else {
    r.status = w.status();
  }
  return r;
}

AddressSpace::Response AddressSpace::dispatch_mut(const WriteOp& op, const nr::ApplyContext& ctx) {
  Response r;
  r.status = validate(op, memory_->physical());
  if (!r.status.ok()) return r;
  switch (op.kind) {
    case WriteOp::Kind::kMap:
      r.status = map_locked(op, ctx);
      break;
    case WriteOp::Kind::kUnmap: {
      Result<std::vector<Mapping>> pieces = covering(op.vaddr, op.vaddr + op.len);
      if (!pieces.ok()) {
        r.status = pieces.status();
        break;
      }
      r.unmapped = split(*pieces, op.vaddr, op.vaddr + op.len, false, 0);
      tables_.unmap(op.vaddr, op.len);
      break;
    }
    case WriteOp::Kind::kAdjust: {
      Result<std::vector<Mapping>> pieces = covering(op.vaddr, op.vaddr + op.len);
      if (!pieces.ok()) {
        r.status = pieces.status();
        break;
      }
      (void)split(*pieces, op.vaddr, op.vaddr + op.len, true, op.rights);
      tables_.protect(op.vaddr, op.len, pte_rights(op.rights));
      break;
    }
  }
  return r;
}

Status AddressSpace::map_locked(const WriteOp& op, const nr::ApplyContext& ctx) {
  // Mappings are disjoint, so the one starting last at or before the range's last byte is the
  // only candidate for an overlap.
  if (auto prev = tree_.floor(op.vaddr + op.len - 1); prev && prev->first + prev->second->len > op.vaddr) {
    return Status::already_exists("range " + hex(op.vaddr) + " + " + hex(op.len) + " overlaps the mapping at " +
                                  hex(prev->first));
  }
  const uint32_t needed = tables_.tables_needed(op.vaddr, op.len, op.frame.cls);
  std::vector<mem::Frame> fresh;
  if (needed > 0) {
    if (det_ != nullptr) {
      NRX_ASSIGN_OR_RETURN(fresh, det_->take_per_replica({ctx.index, 0}, slot_, mem::FrameClass::kBase, needed));
      NRX_CHECK(fresh.size() == needed, "replicas disagree on the page tables a map needs");
    } else {
      const uint32_t pool = static_cast<uint32_t>(tables_.root_paddr() >> mem::kPoolShift);
      NRX_RETURN_IF_ERROR(memory_->ncache(pool).allocate_batch(mem::FrameClass::kBase, needed, fresh).status());
      if (fresh.size() < needed) {
        (void)memory_->ncache(pool).free_batch(fresh);
        return Status::resource_exhausted("no frames for " + std::to_string(needed) + " page tables");
      }
    }
  }
  tables_.map(op.vaddr, op.frame.paddr(), op.len, op.frame.cls, pte_rights(op.rights), fresh);
  const bool inserted = tree_.insert(op.vaddr, Mapping{op.vaddr, op.len, op.frame, op.rights});
  NRX_CHECK(inserted, "a mapping key existed after the overlap check");
  return Status::ok_status();
}

Result<std::vector<Mapping>> AddressSpace::covering(uint64_t lo, uint64_t hi) const {
  std::vector<Mapping> found;
  if (auto first = tree_.floor(lo); first && first->first < lo && first->first + first->second->len > lo) {
    found.push_back(*first->second);
  }
  tree_.for_each_in(lo, hi, [&](const uint64_t&, const Mapping& m) { found.push_back(m); });
  uint64_t cur = lo;
  for (const Mapping& m : found) {
    if (m.vaddr > cur) return Status::not_found("nothing is mapped at " + hex(cur));
    cur = m.vaddr + m.len;
  }
  if (cur < hi) return Status::not_found("nothing is mapped at " + hex(cur));
  for (const Mapping& m : found) {
    if (m.frame.cls != mem::FrameClass::kLarge) continue;
    const bool lo_inside = lo > m.vaddr && lo < m.vaddr + m.len;
    const bool hi_inside = hi > m.vaddr && hi < m.vaddr + m.len;
    if ((lo_inside && (lo - m.vaddr) % mem::kLargeFrameSize != 0) ||
        (hi_inside && (hi - m.vaddr) % mem::kLargeFrameSize != 0)) {
      return Status::invalid_argument("range " + hex(lo) + " .. " + hex(hi) + " would split a 2 MiB page");
    }
  }
  return found;
}

std::vector<Mapping> AddressSpace::split(const std::vector<Mapping>& pieces, uint64_t lo, uint64_t hi, bool keep,
                                         uint8_t new_rights) {
  std::vector<Mapping> inside;
  for (const Mapping& m : pieces) {
    (void)tree_.erase(m.vaddr);
    if (m.vaddr < lo) (void)tree_.insert(m.vaddr, piece(m, m.vaddr, lo));
    if (m.vaddr + m.len > hi) {
      Mapping tail = piece(m, hi, m.vaddr + m.len);
      (void)tree_.insert(tail.vaddr, tail);
    }
    Mapping in = piece(m, lo, hi);
    if (keep) {
      in.rights = new_rights;
      (void)tree_.insert(in.vaddr, in);
    }
    inside.push_back(in);
  }
  return inside;
}

Result<Walk> AddressSpace::resolve_mappings(uint64_t vaddr) const {
  auto m = tree_.floor(vaddr);
  if (!m || m->first + m->second->len <= vaddr) return Status::not_found("no mapping at " + hex(vaddr));
  return walk_of(*m->second, vaddr);
}

std::vector<Mapping> AddressSpace::mappings() const {
  std::vector<Mapping> all;
  all.reserve(tree_.size());
  tree_.for_each([&](const uint64_t&, const Mapping& m) { all.push_back(m); });
  return all;
}

uint64_t AddressSpace::digest() const {
  uint64_t h = 0x6e72782d766d656dULL;  // "nrx-vmem"
  tree_.for_each([&](const uint64_t&, const Mapping& m) {
    h = mix(h, m.vaddr);
    h = mix(h, m.len);
    h = mix(h, m.frame.paddr() | static_cast<uint64_t>(m.frame.cls));
    h = mix(h, m.rights);
  });
  tables_.for_each_leaf([&](uint64_t va, uint64_t leaf, mem::FrameClass) {
    h = mix(h, va);
    h = mix(h, leaf & ~(pte::kAccessed | pte::kDirty));
  });
  return h;
}

bool AddressSpace::check_consistency(std::string* why) const {
  auto fail = [&](std::string reason) {
    if (why != nullptr) *why = std::move(reason);
    return false;
  };
  uint64_t pages = 0;
  std::string error;
  tree_.for_each([&](const uint64_t&, const Mapping& m) {
    for (uint64_t va = m.vaddr; va < m.vaddr + m.len && error.empty(); va += m.frame.size()) {
      ++pages;
      Result<Walk> w = tables_.walk(va);
      const Walk want = walk_of(m, va);
      if (!w.ok()) {
        error = "mapped page " + hex(va) + " has no translation: " + w.status().to_string();
      } else if (w->paddr != want.paddr || w->page != want.page ||
                 (w->leaf & pte::kRightsMask) != (want.leaf & pte::kRightsMask)) {
        error = "page " + hex(va) + ": tables say " + hex(w->leaf) + ", mappings say " + hex(want.leaf);
      }
    }
  });
  if (!error.empty()) return fail(error);
  uint64_t leaves = 0;
  tables_.for_each_leaf([&](uint64_t, uint64_t, mem::FrameClass) { ++leaves; });
  if (leaves != pages) {
    return fail(std::to_string(leaves) + " page-table leaves but " + std::to_string(pages) + " mapped pages");
  }
  return true;
}

}  // namespace nrx::vmem
