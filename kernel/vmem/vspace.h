// nrx::vmem::Vspace<L>: a process's virtual memory under node replication (NR-vMem, NrOS paper
// section 4.2): one AddressSpace replica per NUMA node over one log, the kernel cores that run the
// process (each with a software TLB), and the TLB shootdown that Unmap and Adjust run.
//
// Shootdown protocol (the user-space stand-in for NrOS's IPIs):
//   1. the initiating core applies the op through NR (execute_mut: the op is in the log and this
//      core's replica has applied it) and flushes its own TLB range;
//   2. it posts a request to the mailbox of every other core running the process and waits for
//      their acknowledgements, servicing its own mailbox meanwhile (two cores unmapping at once
//      must not wait on each other);
//   3. a core handles a request at its next poll, which translate() makes before every
//      translation: it acknowledges early, advances its replica (try_sync), then flushes the range;
//   4. the call returns once every core acknowledged.
// Why early acknowledgement is safe: a core handles a request completely (ack, advance, flush)
// before it translates again, and a TLB miss goes to its replica, which syncs to the log's ctail
// first. So once Unmap returns, no core translates through the unmapped range (tested by
// vspace_test's ShootdownIsComplete), and the caller may free the returned frames.
//
// MapCopy (map_copy): the bytes go into the log's payload table before the op is logged (DESIGN
// 3.3); every replica copies them into its own fresh frames, in its own node's memory (NrOS paper
// section 4.4: read-only segments are replicated), and releases the payload. Those pages are owned
// by the replicas: Unmap frees them in each replica and does not return them.
//
// L is the log backend type (logs::RingLog for the single-box kernel; logs::Log for any).
//
// Thread safety: map/unmap/adjust/resolve/translate are safe from any thread, each with its own
// Core (a Core is used by one thread at a time: it is that thread's CPU). A scheduled core must be
// polled by its thread (translate() does it) or an Unmap elsewhere waits for it; one thread driving
// several cores schedules only the one it is using. attach_core/schedule/deschedule may run while
// others operate.
//
//   auto vs = Vspace<logs::RingLog>::create(memory, {.replica_pools = {0, 1}}, &logs::RingLog::create).value();
//   auto* core = vs->attach_core(/*slot=*/0).value();
//   NRX_CHECK(vs->map(*core, frame, 0x40'0000, 4096, rights::kWrite).ok(), "map");
//   NRX_CHECK(vs->map_copy(*core, code_bytes, 0x20'0000, 0x3000, rights::kExecute).ok(), "map_copy");
//   uint64_t pa = vs->translate(*core, 0x40'0010, Access::kWrite).value().paddr;
//   auto freed = vs->unmap(*core, 0x40'0000, 4096).value();   // every TLB flushed; free the frames
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "base/spin.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "kernel/mem/deterministic_allocator.h"
#include "kernel/mem/memory.h"
#include "kernel/nr/replica.h"
#include "kernel/vmem/address_space.h"
#include "kernel/vmem/tlb.h"
#include "logs/log.h"

namespace nrx::vmem {

struct VspaceOptions {
  // One replica per entry: the pool its page tables and MapCopy pages come from (its node's pool).
  std::vector<uint32_t> replica_pools = {0};
  // entry_size: at least sizeof(AddressSpace::WriteOp) (56); create() refuses less.
  logs::LogOptions log{.entry_size = 64, .slot_count = 1u << 12};
  uint32_t max_cores_per_replica = 64;
};

template <typename L = logs::Log>
class Vspace {
 public:
  using Group = nr::ReplicaGroup<AddressSpace, L>;
  using ReplicaType = nr::Replica<AddressSpace, L>;

  // A kernel core running this process. Used by one thread at a time.
  class Core {
   public:
    uint32_t slot() const { return slot_; }
    Tlb& tlb() { return tlb_; }
    uint64_t shootdowns_handled() const { return handled_; }

   private:
    friend class Vspace;
    Core(uint32_t slot, ReplicaType* replica, nr::ThreadToken token) : slot_(slot), replica_(replica), token_(token) {}
    uint32_t slot_;
    ReplicaType* replica_;
    nr::ThreadToken token_;
    Tlb tlb_;
    ShootdownMailbox mailbox_;
    std::vector<ShootdownRequest> inbox_;  // reused buffer
    uint64_t handled_ = 0;
  };

  // |create_log|: Result<std::unique_ptr<L>>(const logs::LogOptions&), e.g. &logs::RingLog::create.
  // Errors: kInvalidArgument (no replicas, a pool that does not exist, more than 64 replicas);
  // kResourceExhausted (no frame for a root table); the log's errors.
  template <typename CreateLog>
  static Result<std::unique_ptr<Vspace>> create(mem::Memory& memory, const VspaceOptions& options,
                                                CreateLog&& create_log) {
    if (options.replica_pools.empty() || options.replica_pools.size() > 64) {
      return Status::invalid_argument("an address space needs 1..64 replicas");
    }
    for (uint32_t p : options.replica_pools) {
      if (p >= memory.pool_count()) return Status::invalid_argument("pool " + std::to_string(p) + " does not exist");
    }
    std::unique_ptr<Vspace> vs(new Vspace(memory, options));
    logs::LogOptions log = options.log;
    log.max_replicas = std::max<uint32_t>(log.max_replicas, static_cast<uint32_t>(options.replica_pools.size()));
    NRX_ASSIGN_OR_RETURN(vs->group_, Group::create(log, std::forward<CreateLog>(create_log)));
    for (uint32_t s = 0; s < options.replica_pools.size(); ++s) {
      NRX_ASSIGN_OR_RETURN(mem::Frame root, memory.ncache(options.replica_pools[s]).allocate(mem::FrameClass::kBase));
      auto as = AddressSpace::create(memory, vs->det_.get(), s, root, &vs->group_->log());
      if (!as.ok()) {
        (void)memory.ncache(root.pool).free(root);
        return as.status();
      }
      NRX_RETURN_IF_ERROR(
          vs->group_->add_replica(std::move(*as), nr::ReplicaOptions{options.max_cores_per_replica}).status());
    }
    return vs;
  }

  // Brings every replica up to the log first, so that frames allocated for an op (MapCopy's
  // pages, page tables) reach the replica that owns them and every payload is released.
  ~Vspace() {
    if (group_ == nullptr) return;
    for (size_t i = 0; i < group_->size(); ++i) group_->replica(i).sync();
  }

  uint32_t replicas() const { return static_cast<uint32_t>(group_->size()); }
  Group& group() const { return *group_; }
  mem::Memory& memory() const { return memory_; }

  // A core that runs this process on replica |slot|; it is scheduled: it receives shootdowns.
  // Errors: kInvalidArgument (no such replica); kResourceExhausted (the replica has no thread slot).
  Result<Core*> attach_core(uint32_t slot) NRX_EXCLUDES(cores_mu_) {
    if (slot >= group_->size()) return Status::invalid_argument("replica " + std::to_string(slot) + " does not exist");
    ReplicaType* r = &group_->replica(slot);
    NRX_ASSIGN_OR_RETURN(nr::ThreadToken token, r->register_thread());
    MutexLock lock(cores_mu_);
    cores_.push_back(std::unique_ptr<Core>(new Core(slot, r, token)));
    attached_.push_back(cores_.back().get());
    return cores_.back().get();
  }

  // A context switch: the process stops running on |core|. It receives no further shootdowns (it
  // answers those already posted), so a descheduled core never holds up an Unmap; schedule()
  // flushes its whole TLB when the process comes back (what Linux's lazy-TLB mode does too).
  void deschedule(Core& core) NRX_EXCLUDES(cores_mu_) {
    {
      MutexLock lock(cores_mu_);
      std::erase(attached_, &core);
    }
    poll(core);
  }
  // The process runs on |core| again: its TLB starts empty and it receives shootdowns.
  void schedule(Core& core) NRX_EXCLUDES(cores_mu_) {
    core.tlb_.flush_all();
    MutexLock lock(cores_mu_);
    if (std::find(attached_.begin(), attached_.end(), &core) == attached_.end()) attached_.push_back(&core);
  }

  // Map(frame, vaddr, len, rights). Errors: as AddressSpace::dispatch_mut, plus the log's append
  // errors (kDeadlineExceeded: the log stayed full).
  Status map(Core& core, mem::Frame frame, uint64_t vaddr, uint64_t len, uint8_t r) {
    return write(core, AddressSpace::map_op(frame, vaddr, len, r)).status();
  }

  // MapCopy(bytes, vaddr, len, rights): maps [vaddr, vaddr+len) to fresh 4 KiB frames of each
  // replica's own pool holding |bytes| followed by zeros (|bytes| may be empty: all zeros). Bad
  // input is refused before anything is logged. Errors: kInvalidArgument (see
  // AddressSpace::validate: alignment, range, |bytes| longer than |len|, |len| above
  // AddressSpace::kMaxMapCopyBytes); kAlreadyExists (a page of the range is mapped: nothing is
  // allocated); kResourceExhausted (a replica's pool has no frames for the pages or their tables:
  // nothing is mapped or allocated on any replica; or the log's payload table is full); the log's
  // append errors (kDeadlineExceeded: the log stayed full; the payload is released here).
  Status map_copy(Core& core, std::span<const std::byte> bytes, uint64_t vaddr, uint64_t len, uint8_t r) {
    if (bytes.size() > AddressSpace::kMaxMapCopyBytes || bytes.size() > UINT32_MAX) {
      return Status::invalid_argument("MapCopy payload of " + std::to_string(bytes.size()) + " bytes is too large");
    }
    // The length stands in for the payload until it is put, so validate() sees it.
    AddressSpace::WriteOp op = AddressSpace::map_copy_op(
        logs::PayloadRef{.where = 0, .length = static_cast<uint32_t>(bytes.size()), .generation = 0}, vaddr, len, r);
    NRX_RETURN_IF_ERROR(AddressSpace::validate(op, memory_.physical()));
    logs::Log& log = group_->log();
    op.data = {};
    if (!bytes.empty()) {
      NRX_ASSIGN_OR_RETURN(op.data, log.payload_put(bytes));
    }
    Result<AddressSpace::Response> res = core.replica_->execute_mut(op, core.token_);
    if (!res.ok()) {  // never logged: release for every replica, as they would have
      if (!bytes.empty()) {
        for (size_t i = 0; i < group_->size(); ++i) (void)log.payload_release(group_->replica(i).id(), op.data);
      }
      return res.status();
    }
    return res->status;
  }

  // Unmap(vaddr, len): returns the pieces removed once every core running the process has flushed
  // them from its TLB (the frames may be freed then). Owned pieces (MapCopy pages) are not
  // returned: each replica freed its own when it applied the op. Errors: as map.
  Result<std::vector<Mapping>> unmap(Core& core, uint64_t vaddr, uint64_t len) {
    NRX_ASSIGN_OR_RETURN(AddressSpace::Response r, write(core, AddressSpace::unmap_op(vaddr, len)));
    shootdown(core, vaddr, len);
    return std::move(r.unmapped);
  }

  // Adjust(vaddr, len, rights), with a shootdown like unmap. Errors: as map.
  Status adjust(Core& core, uint64_t vaddr, uint64_t len, uint8_t r) {
    NRX_RETURN_IF_ERROR(write(core, AddressSpace::adjust_op(vaddr, len, r)).status());
    shootdown(core, vaddr, len);
    return Status::ok_status();
  }

  // Resolve(vaddr) on the core's replica (synced to the log first), bypassing the TLB.
  // Errors: as PageTables::walk.
  Result<Walk> resolve(Core& core, uint64_t vaddr, Access access = Access::kNone) {
    AddressSpace::Response r = core.replica_->execute(AddressSpace::ReadOp{vaddr, access}, core.token_);
    if (!r.status.ok()) return r.status;
    return r.walk;
  }

  // What the core's MMU does for an access: handle pending shootdowns, then the TLB, then on a miss
  // the replica's page walker (setting A/D) and a TLB fill. Errors: as resolve.
  Result<Walk> translate(Core& core, uint64_t vaddr, Access access) {
    poll(core);
    if (auto hit = core.tlb_.lookup(vaddr, access)) return *hit;
    NRX_ASSIGN_OR_RETURN(Walk w, resolve(core, vaddr, access));
    core.tlb_.insert(w);
    return w;
  }

  // Handles the core's pending shootdowns: acknowledge, advance the replica, flush.
  void poll(Core& core) {
    if (!core.mailbox_.pending()) return;  // the cheap check: no lock when nothing was posted
    core.inbox_.clear();
    core.mailbox_.take(core.inbox_);
    if (core.inbox_.empty()) return;
    for (const ShootdownRequest& req : core.inbox_) {
      // release: the initiator's acquire of 0 orders its return after this core took the request.
      req.pending->fetch_sub(1, std::memory_order_release);
    }
    (void)core.replica_->try_sync();  // a combiner elsewhere applies the log if this fails
    for (const ShootdownRequest& req : core.inbox_) core.tlb_.flush(req.vaddr, req.len);
    core.handled_ += core.inbox_.size();
  }

  // Runs |f(const AddressSpace&)| on the core's replica, synced to the log (tests, digests).
  template <typename F>
  auto inspect(Core& core, F&& f) {
    core.replica_->sync();
    return core.replica_->inspect(core.token_, std::forward<F>(f));
  }

  uint64_t shootdowns_sent() const { return sent_.load(std::memory_order_relaxed); }

 private:
  Vspace(mem::Memory& memory, const VspaceOptions& options)
      : memory_(memory), det_(std::make_unique<mem::DeterministicAllocator>(memory, options.replica_pools)) {}

  Result<AddressSpace::Response> write(Core& core, const AddressSpace::WriteOp& op) {
    // Bad input is refused before it takes a log slot; the replicas check again when applying.
    NRX_RETURN_IF_ERROR(AddressSpace::validate(op, memory_.physical()));
    NRX_ASSIGN_OR_RETURN(AddressSpace::Response r, core.replica_->execute_mut(op, core.token_));
    if (!r.status.ok()) return r.status;
    return r;
  }

  void shootdown(Core& self, uint64_t vaddr, uint64_t len) NRX_EXCLUDES(cores_mu_) {
    self.tlb_.flush(vaddr, len);
    std::atomic<uint32_t> pending{0};
    {
      MutexLock lock(cores_mu_);
      for (Core* c : attached_) {
        if (c == &self) continue;
        // relaxed: the mailbox's mutex orders this before the core's decrement.
        pending.fetch_add(1, std::memory_order_relaxed);
        c->mailbox_.post({vaddr, len, &pending});
        sent_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    SpinWait wait;
    // acquire: pairs with each core's release decrement.
    while (pending.load(std::memory_order_acquire) != 0) {
      if (self.mailbox_.pending()) poll(self);
      wait.pause();
    }
  }

  mem::Memory& memory_;
  std::unique_ptr<mem::DeterministicAllocator> det_;  // before group_: replicas point at it
  std::unique_ptr<Group> group_;
  Mutex cores_mu_;
  std::vector<std::unique_ptr<Core>> cores_ NRX_GUARDED_BY(cores_mu_);
  std::vector<Core*> attached_ NRX_GUARDED_BY(cores_mu_);
  std::atomic<uint64_t> sent_{0};
};

}  // namespace nrx::vmem
