// A test decorator over any logs::Log that records every append's batch size, so tests can check
// that flat combining appends a combined batch with exactly one reservation.
#pragma once

#include <mutex>
#include <vector>

#include "logs/log.h"

namespace nrx::testing {

class CountingLog final : public logs::Log {
 public:
  explicit CountingLog(logs::Log& inner) : inner_(inner) {}

  std::vector<size_t> batch_sizes() const {
    std::lock_guard lock(mu_);
    return sizes_;
  }

  const logs::LogOptions& options() const override { return inner_.options(); }
  Result<logs::ReplicaId> register_replica() override { return inner_.register_replica(); }
  Result<logs::LogIndex> append(logs::ReplicaId r, logs::Batch batch, logs::EntryVisitor apply_own) override {
    {
      std::lock_guard lock(mu_);
      sizes_.push_back(batch.size());
    }
    return inner_.append(r, batch, apply_own);
  }
  Result<logs::LogIndex> exec(logs::ReplicaId r, logs::EntryVisitor v) override { return inner_.exec(r, v); }
  Result<logs::LogIndex> exec_while(logs::ReplicaId r, logs::StoppingVisitor v) override {
    return inner_.exec_while(r, v);
  }
  logs::LogIndex tail() const override { return inner_.tail(); }
  logs::LogIndex ctail() const override { return inner_.ctail(); }
  logs::LogIndex head() const override { return inner_.head(); }
  Result<logs::LogIndex> ltail(logs::ReplicaId r) const override { return inner_.ltail(r); }
  bool is_synced_for_reads(logs::ReplicaId r, logs::LogIndex c) const override { return inner_.is_synced_for_reads(r, c); }
  Result<logs::PayloadRef> payload_put(std::span<const std::byte> d) override { return inner_.payload_put(d); }
  Result<std::span<const std::byte>> payload_get(logs::PayloadRef p) const override { return inner_.payload_get(p); }
  Status payload_release(logs::ReplicaId r, logs::PayloadRef p) override { return inner_.payload_release(r, p); }
  uint64_t payloads_live() const override { return inner_.payloads_live(); }

 private:
  logs::Log& inner_;
  mutable std::mutex mu_;
  std::vector<size_t> sizes_;
};

}  // namespace nrx::testing
