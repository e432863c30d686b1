#include "kernel/vmem/address_space.h"

#include <algorithm>
#include <cstring>
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

// A hash of one 4 KiB page's bytes (an owned page counts by what it holds, not where).
uint64_t hash_page(const std::byte* p) {
  uint64_t h = 0x636f6e74656e7473ULL;  // "contents"
  for (size_t i = 0; i < mem::kBaseFrameSize; i += sizeof(uint64_t)) {
    uint64_t w;
    std::memcpy(&w, p + i, sizeof w);
    h = mix(h, w);
  }
  return h;
}

bool is_zero(const logs::PayloadRef& ref) { return ref.where == 0 && ref.length == 0 && ref.generation == 0; }

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
                                          mem::Frame root, logs::Log* log) {
  if (det != nullptr && slot >= det->slots()) {
    return Status::invalid_argument("replica slot " + std::to_string(slot) + " is not in the allocator");
  }
  NRX_ASSIGN_OR_RETURN(PageTables tables, PageTables::create(memory, root));
  return AddressSpace(memory, det, slot, log, std::move(tables));
}

AddressSpace::AddressSpace(AddressSpace&& other) noexcept
    : memory_(std::exchange(other.memory_, nullptr)),
      det_(other.det_),
      slot_(other.slot_),
      log_(other.log_),
      tables_(std::move(other.tables_)),
      tree_(std::move(other.tree_)) {}

AddressSpace& AddressSpace::operator=(AddressSpace&& other) noexcept {
  if (this != &other) {
    free_owned();
    memory_ = std::exchange(other.memory_, nullptr);
    det_ = other.det_;
    slot_ = other.slot_;
    log_ = other.log_;
    tables_ = std::move(other.tables_);  // frees this one's tables
    tree_ = std::move(other.tree_);
  }
  return *this;
}

AddressSpace::~AddressSpace() { free_owned(); }

void AddressSpace::free_owned() {
  if (memory_ == nullptr) return;  // moved from: the frames went with the tree
  tree_.for_each([&](const uint64_t&, const Mapping& m) {
    if (m.owned) free_frame(m.frame);
  });
}

void AddressSpace::free_frame(const mem::Frame& f) {
  NRX_CHECK(memory_->ncache(f.pool).free(f).ok(), "freeing an owned frame failed");
}

uint64_t AddressSpace::owned_frames() const {
  uint64_t n = 0;
  tree_.for_each([&](const uint64_t&, const Mapping& m) { n += m.owned ? 1 : 0; });
  return n;
}

Status AddressSpace::validate(const WriteOp& op, const mem::PhysicalMemory& physical) {
  using Kind = WriteOp::Kind;
  if (op.kind != Kind::kMap && op.kind != Kind::kUnmap && op.kind != Kind::kAdjust && op.kind != Kind::kMapCopy) {
    return Status::invalid_argument("unknown address-space operation");
  }
  if ((op.rights & ~rights::kAll) != 0) return Status::invalid_argument("unknown rights bits");
  if (std::any_of(std::begin(op.reserved), std::end(op.reserved), [](uint8_t b) { return b != 0; })) {
    return Status::invalid_argument("reserved bytes of an address-space operation are not zero");
  }
  if (op.len == 0) return Status::invalid_argument("zero length");
  if (op.kind != Kind::kMapCopy && !is_zero(op.data)) {
    return Status::invalid_argument("only MapCopy carries a payload");
  }
  if (op.kind == Kind::kMapCopy) {
    if (!(op.frame == mem::Frame{})) return Status::invalid_argument("MapCopy allocates its frames; none is given");
    if (op.len > kMaxMapCopyBytes) {
      return Status::invalid_argument("MapCopy of " + hex(op.len) + " bytes is above the limit of " +
                                      hex(kMaxMapCopyBytes));
    }
    if (op.data.length > op.len) {
      return Status::invalid_argument("MapCopy payload of " + std::to_string(op.data.length) +
                                      " bytes is longer than its range of " + hex(op.len));
    }
  }
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
  if (r.status.ok()) apply_locked(op, ctx, r);
  // Every replica releases a MapCopy's payload once, after applying, whatever the outcome (the
  // last release frees it). A payload on another kind was refused by validate() and is not ours.
  if (op.kind == WriteOp::Kind::kMapCopy && !is_zero(op.data) && log_ != nullptr) {
    (void)log_->payload_release(ctx.replica, op.data);
  }
  return r;
}

void AddressSpace::apply_locked(const WriteOp& op, const nr::ApplyContext& ctx, Response& r) {
  switch (op.kind) {
    case WriteOp::Kind::kMap:
      r.status = map_locked(op, ctx);
      break;
    case WriteOp::Kind::kMapCopy:
      r.status = map_copy_locked(op, ctx);
      break;
    case WriteOp::Kind::kUnmap: {
      Result<std::vector<Mapping>> pieces = covering(op.vaddr, op.vaddr + op.len);
      if (!pieces.ok()) {
        r.status = pieces.status();
        break;
      }
      r.unmapped = split(*pieces, op.vaddr, op.vaddr + op.len, false, 0);
      tables_.unmap(op.vaddr, op.len);
      // Owned pages are this replica's: it frees them and the caller never sees them.
      std::erase_if(r.unmapped, [&](const Mapping& m) {
        if (m.owned) free_frame(m.frame);
        return m.owned;
      });
      break;
    }
    case WriteOp::Kind::kAdjust: {
      Result<std::vector<Mapping>> pieces = covering(op.vaddr, op.vaddr + op.len);
      if (!pieces.ok()) {
        r.status = pieces.status();
        break;
      }
      // A per-replica copy stays read-only: a store to a writable one would reach one replica's
      // copy only, and the replicas would differ. Ownership is replicated state, so every replica
      // refuses alike.
      if ((op.rights & rights::kWrite) != 0 &&
          std::any_of(pieces->begin(), pieces->end(), [](const Mapping& m) { return m.owned; })) {
        r.status = Status::permission_denied("range " + hex(op.vaddr) + " + " + hex(op.len) +
                                             " holds per-replica copies (MapCopy), which cannot be made writable");
        break;
      }
      (void)split(*pieces, op.vaddr, op.vaddr + op.len, true, op.rights);
      tables_.protect(op.vaddr, op.len, pte_rights(op.rights));
      break;
    }
  }
}

Status AddressSpace::check_unmapped(uint64_t vaddr, uint64_t len) const {
  // Mappings are disjoint, so the one starting last at or before the range's last byte is the
  // only candidate for an overlap.
  if (auto prev = tree_.floor(vaddr + len - 1); prev && prev->first + prev->second->len > vaddr) {
    return Status::already_exists("range " + hex(vaddr) + " + " + hex(len) + " overlaps the mapping at " +
                                  hex(prev->first));
  }
  return Status::ok_status();
}

Result<std::vector<mem::Frame>> AddressSpace::allocate(const nr::ApplyContext& ctx, uint32_t count) {
  std::vector<mem::Frame> fresh;
  if (count == 0) return fresh;
  if (det_ != nullptr) {
    // One allocation per op (sequence 0): every replica asks the same question.
    NRX_ASSIGN_OR_RETURN(fresh, det_->take_per_replica({ctx.index, 0}, slot_, mem::FrameClass::kBase, count));
    NRX_CHECK(fresh.size() == count, "replicas disagree on the frames an op needs");
  } else {
    const uint32_t pool = static_cast<uint32_t>(tables_.root_paddr() >> mem::kPoolShift);
    NRX_RETURN_IF_ERROR(memory_->ncache(pool).allocate_batch(mem::FrameClass::kBase, count, fresh).status());
    if (fresh.size() < count) {
      (void)memory_->ncache(pool).free_batch(fresh);
      return Status::resource_exhausted("no frames for " + std::to_string(count) + " pages");
    }
  }
  return fresh;
}

Status AddressSpace::map_locked(const WriteOp& op, const nr::ApplyContext& ctx) {
  NRX_RETURN_IF_ERROR(check_unmapped(op.vaddr, op.len));
  const uint32_t needed = tables_.tables_needed(op.vaddr, op.len, op.frame.cls);
  NRX_ASSIGN_OR_RETURN(std::vector<mem::Frame> fresh, allocate(ctx, needed));
  tables_.map(op.vaddr, op.frame.paddr(), op.len, op.frame.cls, pte_rights(op.rights), fresh);
  const bool inserted = tree_.insert(op.vaddr, Mapping{op.vaddr, op.len, op.frame, op.rights});
  NRX_CHECK(inserted, "a mapping key existed after the overlap check");
  return Status::ok_status();
}

Status AddressSpace::map_copy_locked(const WriteOp& op, const nr::ApplyContext& ctx) {
  std::span<const std::byte> bytes;
  if (!is_zero(op.data)) {
    if (log_ == nullptr) return Status::invalid_argument("MapCopy payload, but this address space has no log");
    Result<std::span<const std::byte>> got = log_->payload_get(op.data);
    if (!got.ok()) return Status::invalid_argument("MapCopy payload is missing: " + got.status().to_string());
    if (got->size() > op.len) return Status::invalid_argument("MapCopy payload is longer than its range");
    bytes = *got;
  }
  NRX_RETURN_IF_ERROR(check_unmapped(op.vaddr, op.len));
  // validate() bounds len by kMaxMapCopyBytes, so pages and tables fit 32 bits.
  const auto pages = static_cast<uint32_t>(op.len / mem::kBaseFrameSize);
  const uint32_t needed = tables_.tables_needed(op.vaddr, op.len, mem::FrameClass::kBase);
  // Tables and pages in one allocation: all or nothing, the same outcome on every replica.
  NRX_ASSIGN_OR_RETURN(std::vector<mem::Frame> fresh, allocate(ctx, needed + pages));
  std::vector<mem::Frame> tables(fresh.begin(), fresh.begin() + needed);
  const uint64_t leaf_rights = pte_rights(op.rights);
  for (uint32_t i = 0; i < pages; ++i) {
    const mem::Frame& f = fresh[needed + i];
    std::byte* dst = memory_->physical().frame_ptr(f);
    NRX_CHECK(dst != nullptr, "a fresh frame is outside physical memory");
    const uint64_t at = uint64_t{i} * mem::kBaseFrameSize;
    const size_t n = at < bytes.size() ? std::min<size_t>(mem::kBaseFrameSize, bytes.size() - at) : 0;
    if (n > 0) std::memcpy(dst, bytes.data() + at, n);
    std::memset(dst + n, 0, mem::kBaseFrameSize - n);
    const uint64_t va = op.vaddr + at;
    // Each page has its own frame: one 4 KiB leaf and one Mapping per page.
    tables_.map(va, f.paddr(), mem::kBaseFrameSize, mem::FrameClass::kBase, leaf_rights, tables);
    const bool inserted = tree_.insert(va, Mapping{va, mem::kBaseFrameSize, f, op.rights, /*owned=*/true});
    NRX_CHECK(inserted, "a mapping key existed after the overlap check");
  }
  NRX_CHECK(tables.empty(), "MapCopy was given more table frames than it used");
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
    if (m.owned) {  // its frame differs by replica; its contents must not
      const std::byte* p = memory_->physical().frame_ptr(m.frame);
      h = mix(h, p != nullptr ? hash_page(p) : 0);
    } else {
      h = mix(h, m.frame.paddr() | static_cast<uint64_t>(m.frame.cls));
    }
    h = mix(h, m.rights);
    h = mix(h, m.owned ? 1 : 0);
  });
  tables_.for_each_leaf([&](uint64_t va, uint64_t leaf, mem::FrameClass) {
    uint64_t bits = leaf & ~(pte::kAccessed | pte::kDirty);
    // An owned page's leaf points at this replica's frame: hash it without the address.
    if (auto m = tree_.floor(va); m && m->second->owned && m->first == va) bits &= ~pte::kAddrMask;
    h = mix(h, va);
    h = mix(h, bits);
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
    if (m.owned && (m.len != mem::kBaseFrameSize || m.frame.cls != mem::FrameClass::kBase) && error.empty()) {
      error = "owned mapping at " + hex(m.vaddr) + " is not one 4 KiB page";
    }
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
