#include "logs/shm/shm_layout.h"

#include <cstring>
#include <string>

#include "logs/log.h"

namespace nrx::logs::shm {
namespace {

std::string hex(uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "0x";
  bool started = false;
  for (int shift = 60; shift >= 0; shift -= 4) {
    const unsigned d = (v >> shift) & 0xf;
    if (d != 0 || started || shift == 0) {
      out += kDigits[d];
      started = true;
    }
  }
  return out;
}

// a + b and a * b with overflow reported (a corrupt header may hold anything).
bool add(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }
bool mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

Result<Geometry> plan_geometry(uint32_t entry_size, uint32_t slot_count, uint32_t max_replicas,
                               uint32_t payload_slots, uint64_t payload_slot_bytes) {
  if (entry_size == 0 || entry_size > kMaxEntrySize) {
    return Status::invalid_argument("entry_size " + std::to_string(entry_size) + " is outside 1.." +
                                    std::to_string(kMaxEntrySize));
  }
  if (slot_count < 2 || slot_count > kMaxSlotCount || !is_power_of_two(slot_count)) {
    return Status::invalid_argument("slot_count " + std::to_string(slot_count) + " must be a power of two in 2.." +
                                    std::to_string(kMaxSlotCount));
  }
  if (max_replicas == 0 || max_replicas > kMaxReplicasLimit) {
    return Status::invalid_argument("max_replicas " + std::to_string(max_replicas) + " is outside 1.." +
                                    std::to_string(kMaxReplicasLimit));
  }
  if (payload_slots == 0) return Status::invalid_argument("payload_slots must be at least 1");
  if (payload_slot_bytes < kMinPayloadSlotBytes || payload_slot_bytes > kMaxPayloadSlotBytes ||
      payload_slot_bytes % kCacheLineSize != 0) {
    return Status::invalid_argument("payload slot of " + std::to_string(payload_slot_bytes) +
                                    " bytes must be a multiple of " + std::to_string(kCacheLineSize) + " in " +
                                    std::to_string(kMinPayloadSlotBytes) + ".." +
                                    std::to_string(kMaxPayloadSlotBytes));
  }
  Geometry g;
  g.entry_size = entry_size;
  g.slot_count = slot_count;
  g.slot_stride = static_cast<uint32_t>(round_up(sizeof(SlotHeader) + entry_size, kCacheLineSize));
  g.max_replicas = max_replicas;
  g.payload_slots = payload_slots;
  g.payload_slot_bytes = payload_slot_bytes;
  // Every product below is bounded by the ranges checked above (< 2^31 * 2^31), so only the final
  // sums can approach 2^64; they are checked anyway.
  g.control_offset = round_up(sizeof(ShmHeader), kInterferenceSize);
  g.ltails_offset = g.control_offset + sizeof(ControlBlock);
  g.replicas_offset = g.ltails_offset + uint64_t{max_replicas} * sizeof(LtailLine);
  g.sequencer_offset = g.replicas_offset + uint64_t{max_replicas} * sizeof(ReplicaLine);
  g.requests_offset = g.sequencer_offset + sizeof(SequencerLine);
  g.responses_offset = g.requests_offset + uint64_t{max_replicas} * sizeof(RequestLine);
  g.client_requests_offset = g.responses_offset + uint64_t{max_replicas} * sizeof(ResponseLine);
  g.client_responses_offset = g.client_requests_offset + uint64_t{kMaxClients} * sizeof(ClientRequestLine);
  g.releases_offset = g.client_responses_offset + uint64_t{kMaxClients} * sizeof(ClientResponseLine);
  g.release_stride = round_up(uint64_t{payload_slots} * sizeof(uint64_t), kInterferenceSize);
  g.slots_offset = g.releases_offset + uint64_t{max_replicas} * g.release_stride;
  const uint64_t slots_bytes = round_up(uint64_t{slot_count} * g.slot_stride, kInterferenceSize);
  g.payload_meta_offset = g.slots_offset + slots_bytes;
  const uint64_t meta_bytes = round_up(uint64_t{payload_slots} * sizeof(PayloadMeta), kInterferenceSize);
  g.payload_data_offset = g.payload_meta_offset + meta_bytes;
  uint64_t data_bytes = 0;
  if (!mul(payload_slots, payload_slot_bytes, &data_bytes) ||
      !add(g.payload_data_offset, round_up(data_bytes, kInterferenceSize), &g.region_bytes)) {
    return Status::invalid_argument("the payload arena of " + std::to_string(payload_slots) + " x " +
                                    std::to_string(payload_slot_bytes) + " bytes does not fit 64-bit offsets");
  }
  return g;
}

uint64_t header_checksum(const ShmHeader& header) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(&header);
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64 offset basis
  for (size_t i = 0; i < offsetof(ShmHeader, checksum); ++i) {
    h ^= bytes[i];
    h *= 0x100000001b3ULL;  // FNV-1a 64 prime
  }
  return h;
}

ShmHeader make_header(const Geometry& g, ShmMode mode, uint64_t cluster_id, uint64_t epoch, uint32_t log_id) {
  ShmHeader h;
  std::memset(&h, 0, sizeof(h));  // padding-free, but the checksum must never see garbage
  h.magic = kMagic;
  h.layout_version = kLayoutVersion;
  h.header_bytes = sizeof(ShmHeader);
  h.cluster_id = cluster_id;
  h.epoch = epoch;
  h.region_bytes = g.region_bytes;
  h.mode = static_cast<uint32_t>(mode);
  h.log_id = log_id;
  h.log_count = kLogsPerRegion;
  h.entry_size = g.entry_size;
  h.slot_count = g.slot_count;
  h.slot_stride = g.slot_stride;
  h.max_replicas = g.max_replicas;
  h.payload_slots = g.payload_slots;
  h.payload_slot_bytes = g.payload_slot_bytes;
  h.control_offset = g.control_offset;
  h.slots_offset = g.slots_offset;
  h.payload_meta_offset = g.payload_meta_offset;
  h.payload_data_offset = g.payload_data_offset;
  h.checksum = header_checksum(h);
  return h;
}

Result<Geometry> check_header(const ShmHeader& h, uint64_t region_size, uint64_t cluster_id, uint64_t expected_epoch) {
  if (h.magic != kMagic) {
    if (h.magic == 0) {
      return Status::invalid_argument("the region holds no shm log (magic is 0: never created, or create() unfinished)");
    }
    return Status::invalid_argument("the region is not an shm log: magic " + hex(h.magic) + ", expected " +
                                    hex(kMagic));
  }
  if (h.layout_version != kLayoutVersion) {
    return Status::invalid_argument("shm log layout version " + std::to_string(h.layout_version) +
                                    "; this build reads version " + std::to_string(kLayoutVersion));
  }
  if (const uint64_t sum = header_checksum(h); sum != h.checksum) {
    return Status::data_loss("shm log header is corrupt: checksum " + hex(h.checksum) + " but its contents sum to " +
                             hex(sum));
  }
  // From here on the header is what some creator wrote; a value out of range means a creator with
  // another idea of the format (or a forged checksum), and is still answered, never trusted.
  if (h.header_bytes != sizeof(ShmHeader)) {
    return Status::data_loss("shm log header says it is " + std::to_string(h.header_bytes) + " bytes, expected " +
                             std::to_string(sizeof(ShmHeader)));
  }
  if (h.log_count != kLogsPerRegion) {
    return Status::data_loss("shm log header holds log_count " + std::to_string(h.log_count) + ", expected " +
                             std::to_string(kLogsPerRegion));
  }
  if (h.reserved != 0) return Status::data_loss("shm log header's reserved word is not zero");
  Result<Geometry> g = plan_geometry(h.entry_size, h.slot_count, h.max_replicas, h.payload_slots, h.payload_slot_bytes);
  if (!g.ok()) return Status::data_loss("shm log header has a bad geometry: " + g.status().message());
  struct Field {
    const char* name;
    uint64_t stored;
    uint64_t expected;
  };
  const Field fields[] = {
      {"slot_stride", h.slot_stride, g->slot_stride},
      {"control_offset", h.control_offset, g->control_offset},
      {"slots_offset", h.slots_offset, g->slots_offset},
      {"payload_meta_offset", h.payload_meta_offset, g->payload_meta_offset},
      {"payload_data_offset", h.payload_data_offset, g->payload_data_offset},
      {"region_bytes", h.region_bytes, g->region_bytes},
  };
  for (const Field& f : fields) {
    if (f.stored != f.expected) {
      return Status::data_loss(std::string("shm log header's ") + f.name + " " + std::to_string(f.stored) +
                               " disagrees with its geometry (expected " + std::to_string(f.expected) + ")");
    }
  }
  if (g->region_bytes > region_size) {
    return Status::invalid_argument("the shm log needs " + std::to_string(g->region_bytes) +
                                    " bytes but the region has only " + std::to_string(region_size) +
                                    " (truncated, or the wrong mapping)");
  }
  if (h.mode != static_cast<uint32_t>(ShmMode::kCoherent) && h.mode != static_cast<uint32_t>(ShmMode::kNoncoherent)) {
    return Status::data_loss("shm log header has unknown mode " + std::to_string(h.mode));
  }
  if (h.cluster_id != cluster_id) {
    return Status::invalid_argument("the shm log belongs to cluster " + std::to_string(h.cluster_id) + ", not " +
                                    std::to_string(cluster_id));
  }
  if (expected_epoch != 0 && h.epoch != expected_epoch) {
    return Status::invalid_argument("the shm log is epoch " + std::to_string(h.epoch) + ", not the expected " +
                                    std::to_string(expected_epoch) + " (the region was re-created)");
  }
  return g;
}

}  // namespace nrx::logs::shm
