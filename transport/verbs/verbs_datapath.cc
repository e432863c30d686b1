// Data path of the verbs wrappers: posting WRITE, READ and atomics on a connected RC queue pair and
// reaping their completions (verbs.h says which posts are signalled and why).
#include <cstring>

#include "base/spin.h"
#include "transport/verbs/verbs.h"

namespace nrx::transport::verbs {

Status QueuePair::post(ibv_send_wr& wr) {
  if (!connected_) return Status::failed_precondition("queue pair is not connected");
  ibv_send_wr* bad = nullptr;
  if (int rc = ibv_post_send(qp_, &wr, &bad); rc != 0) {
    return Status::internal("ibv_post_send: " + std::string(std::strerror(rc)));
  }
  ++posts_;
  if ((wr.send_flags & IBV_SEND_SIGNALED) != 0) {
    last_signalled_ = wr.wr_id;
    since_signal_ = 0;
  } else {
    ++since_signal_;
  }
  return ok_status();
}

Status QueuePair::wait_for(uint64_t wr_id, Clock::time_point deadline) {
  ++waits_;
  SpinWait wait;
  ibv_wc wc[8];
  while (reaped_ < wr_id) {
    NRX_ASSIGN_OR_RETURN(size_t n, cq_->poll(wc));
    for (size_t i = 0; i < n; ++i) {
      if (wc[i].status != IBV_WC_SUCCESS) {
        return Status::unavailable(std::string("RDMA completion failed: ") + ibv_wc_status_str(wc[i].status) +
                                   " (vendor error " + std::to_string(wc[i].vendor_err) + ")");
      }
      // Signalled completions arrive in post order on an RC send queue.
      if (wc[i].wr_id > reaped_) reaped_ = wc[i].wr_id;
    }
    if (n == 0) {
      if (Clock::now() >= deadline) {
        return Status::deadline_exceeded("no RDMA completion for work request " + std::to_string(wr_id));
      }
      wait.pause();
    }
  }
  return ok_status();
}

Result<size_t> CompletionQueue::poll(std::span<ibv_wc> out) {
  const int n = ibv_poll_cq(cq_, static_cast<int>(out.size()), out.data());
  if (n < 0) return Status::internal("ibv_poll_cq failed");
  return static_cast<size_t>(n);
}

Status QueuePair::post_write(const MemoryRegion* mr, std::span<const std::byte> local, uint64_t remote_addr,
                             uint32_t rkey, Clock::time_point deadline) {
  const bool inline_ok = local.size() <= options_.max_inline;
  if (!inline_ok && (mr == nullptr || !mr->contains(local.data(), local.size()))) {
    return Status::invalid_argument("an RDMA WRITE source must lie in its memory region or fit inline (" +
                                    std::to_string(options_.max_inline) + " bytes)");
  }
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(local.data());
  sge.length = static_cast<uint32_t>(local.size());
  sge.lkey = mr != nullptr ? mr->lkey() : 0;
  ibv_send_wr wr{};
  wr.wr_id = next_wr_id_++;
  wr.sg_list = local.empty() ? nullptr : &sge;
  wr.num_sge = local.empty() ? 0 : 1;
  wr.opcode = IBV_WR_RDMA_WRITE;
  wr.wr.rdma.remote_addr = remote_addr;
  wr.wr.rdma.rkey = rkey;
  if (inline_ok && !local.empty()) wr.send_flags |= IBV_SEND_INLINE;
  const bool signal = since_signal_ + 1 >= options_.signal_every;
  if (signal) {
    // Reap the previous signalled post first: the send queue then holds at most
    // 2 x signal_every posts, below its depth.
    if (last_signalled_ > reaped_) NRX_RETURN_IF_ERROR(wait_for(last_signalled_, deadline));
    wr.send_flags |= IBV_SEND_SIGNALED;
  }
  return post(wr);
}

Status QueuePair::drain(Clock::time_point deadline) {
  if (since_signal_ > 0) {
    ibv_send_wr wr{};
    wr.wr_id = next_wr_id_++;
    wr.opcode = IBV_WR_RDMA_WRITE;  // zero bytes: completes after every earlier post (RC order)
    wr.send_flags = IBV_SEND_SIGNALED;
    NRX_RETURN_IF_ERROR(post(wr));
  }
  if (last_signalled_ > reaped_) return wait_for(last_signalled_, deadline);
  return ok_status();
}

Status QueuePair::read(const MemoryRegion& mr, std::span<std::byte> local, uint64_t remote_addr, uint32_t rkey,
                       Clock::time_point deadline) {
  if (local.empty() || !mr.contains(local.data(), local.size())) {
    return Status::invalid_argument("an RDMA READ target must be non-empty and lie in its memory region");
  }
  ibv_sge sge{reinterpret_cast<uintptr_t>(local.data()), static_cast<uint32_t>(local.size()), mr.lkey()};
  ibv_send_wr wr{};
  wr.wr_id = next_wr_id_++;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_RDMA_READ;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = remote_addr;
  wr.wr.rdma.rkey = rkey;
  NRX_RETURN_IF_ERROR(post(wr));
  return wait_for(wr.wr_id, deadline);
}

namespace {

Status check_atomic_args(const MemoryRegion& mr, const uint64_t* scratch, uint64_t remote_addr) {
  if (!mr.contains(scratch, 8) || reinterpret_cast<uintptr_t>(scratch) % 8 != 0) {
    return Status::invalid_argument("an atomic's result word must be 8-byte aligned inside its memory region");
  }
  if (remote_addr % 8 != 0) return Status::invalid_argument("an atomic's remote word must be 8-byte aligned");
  return ok_status();
}

}  // namespace

Result<uint64_t> QueuePair::atomic(ibv_wr_opcode opcode, const MemoryRegion& mr, uint64_t* scratch,
                                   uint64_t remote_addr, uint32_t rkey, uint64_t compare_add, uint64_t swap,
                                   Clock::time_point deadline) {
  NRX_RETURN_IF_ERROR(check_atomic_args(mr, scratch, remote_addr));
  ibv_sge sge{reinterpret_cast<uintptr_t>(scratch), 8, mr.lkey()};
  ibv_send_wr wr{};
  wr.wr_id = next_wr_id_++;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = opcode;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.atomic.remote_addr = remote_addr;
  wr.wr.atomic.rkey = rkey;
  wr.wr.atomic.compare_add = compare_add;
  wr.wr.atomic.swap = swap;
  NRX_RETURN_IF_ERROR(post(wr));
  NRX_RETURN_IF_ERROR(wait_for(wr.wr_id, deadline));
  uint64_t v = 0;
  std::memcpy(&v, scratch, 8);  // written by the device before the completion
  return v;
}

Result<uint64_t> QueuePair::fetch_add(const MemoryRegion& mr, uint64_t* scratch, uint64_t remote_addr, uint32_t rkey,
                                      uint64_t add, Clock::time_point deadline) {
  return atomic(IBV_WR_ATOMIC_FETCH_AND_ADD, mr, scratch, remote_addr, rkey, add, 0, deadline);
}

Result<uint64_t> QueuePair::compare_swap(const MemoryRegion& mr, uint64_t* scratch, uint64_t remote_addr,
                                         uint32_t rkey, uint64_t expected, uint64_t desired,
                                         Clock::time_point deadline) {
  return atomic(IBV_WR_ATOMIC_CMP_AND_SWP, mr, scratch, remote_addr, rkey, expected, desired, deadline);
}

}  // namespace nrx::transport::verbs
