// The on-region format of the shared-memory log (logs/shm/shm_log.h): every byte of the log lives
// in one caller-provided region that several processes (and, through QEMU, several VMs) map, so
// this file is the wire format between them (DESIGN.md 3.2). Everything here is trivially
// copyable, fixed-layout, pinned with static_asserts, and holds offsets from the region's start,
// never pointers.
//
// Region, in order (every section starts on a kInterferenceSize line):
//
//   [0, 128)            ShmHeader: magic, layout version, cluster id, epoch, mode, geometry and
//                       the offset of every section below, then a checksum of all of it. The
//                       header is immutable once create() has stored the magic (last, release).
//   control_offset      ControlBlock: tail, ctail, head (cached lower bound), membership (GC lock
//                       word + active-replica mask), payload counters; each on its own 128-byte
//                       line (coherent mode). Then max_replicas LtailLines (one ltail per replica,
//                       plus its ctail proposal in noncoherent mode), then max_replicas
//                       ReplicaLines (registration/liveness, reserved for fencing).
//   sequencer_offset    noncoherent mode (present in both): the SequencerLine (tail, membership),
//                       max_replicas RequestLines + ResponseLines (the replicas' tail mailboxes),
//                       kMaxClients ClientRequestLines + ClientResponseLines (join, leave and
//                       payload-slot mailboxes of each ShmLog object), then max_replicas arrays
//                       of payload_slots release marks (one 8-byte generation per payload slot),
//                       each array rounded up to kInterferenceSize. Every one of these lines has
//                       exactly one writer (named at each struct).
//   slots_offset        slot_count slots of slot_stride bytes: SlotHeader (per-lap alive marker,
//                       writer, length) + entry bytes, rounded up to a cache line (as the ring).
//   payload_meta_offset payload_slots PayloadMetas (state word, pending-release mask, length).
//   payload_data_offset payload_slots fixed-size payload slots of payload_slot_bytes each.
//   region_bytes        end of the layout (the mapping may be larger, never smaller).
//
// Invariants: every section offset and size is a multiple of kInterferenceSize except the
// payload data slots (multiples of kCacheLineSize); every word accessed atomically is a naturally
// aligned uint64_t; attach() recomputes the whole layout from the geometry fields and rejects a
// header whose offsets disagree, so no offset read from the region is ever used unchecked.
//
// Thread safety: plain data. The functions below are pure.
//
//   Result<shm::Geometry> g = shm::plan_geometry(64, 1024, 16, 64, 4096);
//   std::vector<std::byte> region(g->region_bytes);   // (a real one is an mmap'ed MAP_SHARED file)
//   shm::ShmHeader h = shm::make_header(*g, shm::ShmMode::kCoherent, /*cluster*/ 7, /*epoch*/ 1, 0);
//   Result<shm::Geometry> back = shm::check_header(h, region.size(), 7, 0);   // == *g
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "base/cacheline.h"
#include "base/status.h"

namespace nrx::logs::shm {

// "NRXSHLOG" read as a little-endian uint64_t.
inline constexpr uint64_t kMagic = 0x474F4C485358524EULL;
// Bumped whenever any struct or rule in this file changes meaning.
// 2: noncoherent-mode sections; 3: fencing words; 4: noncoherent fencing (SequencerLine::host and
// ::fenced, RequestLine::fence_ack, ResponseLine::fenced, the join request's owner word).
inline constexpr uint32_t kLayoutVersion = 4;
// Entries are at most this long (as the ring).
inline constexpr uint32_t kMaxEntrySize = 4096;
// Largest slot_count: 2^31 (slot indices and strides stay within 64-bit offsets by far).
inline constexpr uint32_t kMaxSlotCount = 1u << 31;
// A payload slot is at least one cache line and at most what PayloadRef::length can describe.
inline constexpr uint64_t kMinPayloadSlotBytes = kCacheLineSize;
inline constexpr uint64_t kMaxPayloadSlotBytes = uint64_t{1} << 31;
// Each region holds one log for now; the field exists so a multi-log (CNR) region is a new
// layout version, not a silent misreading.
inline constexpr uint32_t kLogsPerRegion = 1;

// How processes sharing the region see each other's writes (DESIGN 3.4).
enum class ShmMode : uint32_t {
  kCoherent = 1,     // loads, stores and locked read-modify-writes are coherent across sharers
  kNoncoherent = 2,  // CXL 2.0 style: single-writer lines, flush/invalidate, a sequencer
};

// Client mailboxes in every region: each ShmLog object sharing a noncoherent log owns one client
// slot (the creator 0, attachers 1..kMaxClients-1, assigned by whoever starts them).
inline constexpr uint32_t kMaxClients = 64;

// The region's first 128 bytes. Written once by create(); |magic| is stored last (release), so
// an attacher that reads the magic (acquire) reads a complete header.
struct ShmHeader {
  uint64_t magic;                // kMagic
  uint32_t layout_version;       // kLayoutVersion
  uint32_t header_bytes;         // sizeof(ShmHeader)
  uint64_t cluster_id;           // the cluster this log belongs to (attach must name the same)
  uint64_t epoch;                // this creation of the log: differs between re-creations
  uint64_t region_bytes;         // bytes the layout spans from offset 0
  uint32_t mode;                 // ShmMode
  uint32_t log_id;               // LogOptions::log_id of the creator
  uint32_t log_count;            // kLogsPerRegion
  uint32_t entry_size;           // 1..kMaxEntrySize
  uint32_t slot_count;           // power of two, 2..kMaxSlotCount
  uint32_t slot_stride;          // round_up(sizeof(SlotHeader) + entry_size, kCacheLineSize)
  uint32_t max_replicas;         // 1..kMaxReplicasLimit
  uint32_t payload_slots;        // >= 1
  uint64_t payload_slot_bytes;   // multiple of kCacheLineSize, kMin..kMaxPayloadSlotBytes
  uint64_t control_offset;       // ControlBlock, then ltail lines, then replica lines
  uint64_t slots_offset;         // the slot array
  uint64_t payload_meta_offset;  // PayloadMeta array
  uint64_t payload_data_offset;  // payload bytes
  uint64_t checksum;             // header_checksum() of every byte before this field
  uint64_t reserved;             // zero
};
static_assert(std::is_trivially_copyable_v<ShmHeader>);
static_assert(sizeof(ShmHeader) == 128);
static_assert(alignof(ShmHeader) == 8);
static_assert(offsetof(ShmHeader, magic) == 0);
static_assert(offsetof(ShmHeader, layout_version) == 8);
static_assert(offsetof(ShmHeader, cluster_id) == 16);
static_assert(offsetof(ShmHeader, epoch) == 24);
static_assert(offsetof(ShmHeader, region_bytes) == 32);
static_assert(offsetof(ShmHeader, mode) == 40);
static_assert(offsetof(ShmHeader, entry_size) == 52);
static_assert(offsetof(ShmHeader, payload_slot_bytes) == 72);
static_assert(offsetof(ShmHeader, control_offset) == 80);
static_assert(offsetof(ShmHeader, payload_data_offset) == 104);
static_assert(offsetof(ShmHeader, checksum) == 112);

// One index (tail, ctail, head, an ltail) alone on its line: its writers never share a line with
// another index's writers (STYLE: kInterferenceSize).
struct alignas(kInterferenceSize) IndexLine {
  uint64_t value;
  uint64_t reserved[15];
};
static_assert(std::is_trivially_copyable_v<IndexLine>);
static_assert(sizeof(IndexLine) == kInterferenceSize);
static_assert(alignof(IndexLine) == kInterferenceSize);

// Who is in the log. |gc_lock| is 0 when free, else gc_lock_word(holder's host tag, pid): it
// serialises raising the cached head with joining, leaving and fencing, so a head value that
// authorises a reservation was never computed without a replica that had already joined (see
// shm_log.h). A fencer on the same host (equal tag) breaks it when that pid is gone. |active| has
// bit r set while replica r is registered; it is changed only under |gc_lock|.
inline constexpr unsigned kGcLockHostShift = 32;  // bits 32..63: host tag (never 0); 0..31: pid
constexpr uint64_t gc_lock_word(uint32_t host_tag, uint32_t pid) {
  return (uint64_t{host_tag} << kGcLockHostShift) | pid;
}
struct alignas(kInterferenceSize) MembershipLine {
  uint64_t gc_lock;
  uint64_t active;
  uint64_t reserved[14];
};
static_assert(sizeof(MembershipLine) == kInterferenceSize);
static_assert(offsetof(MembershipLine, active) == 8);

// Payload bookkeeping shared by every process: live payloads, and where the next search for a
// free payload slot starts (a hint: any value works).
struct alignas(kInterferenceSize) PayloadLine {
  uint64_t live;
  uint64_t hint;
  uint64_t reserved[14];
};
static_assert(sizeof(PayloadLine) == kInterferenceSize);

struct ControlBlock {
  IndexLine tail;
  IndexLine ctail;
  IndexLine head;  // a lower bound of min(ltail) over active replicas; raised under gc_lock only
  MembershipLine membership;
  PayloadLine payloads;
};
static_assert(std::is_trivially_copyable_v<ControlBlock>);
static_assert(sizeof(ControlBlock) == 5 * kInterferenceSize);
static_assert(offsetof(ControlBlock, ctail) == 1 * kInterferenceSize);
static_assert(offsetof(ControlBlock, head) == 2 * kInterferenceSize);
static_assert(offsetof(ControlBlock, membership) == 3 * kInterferenceSize);
static_assert(offsetof(ControlBlock, payloads) == 4 * kInterferenceSize);

// One replica's index line. |value| is its ltail (both modes). Noncoherent mode adds, written
// only by the replica's owner: |started|, the highest index it has started applying up to (its
// ctail proposal: ctail = max over replicas), and |incarnation|, the join it belongs to (the
// sequencer trusts |value| only once it equals the incarnation it granted).
struct alignas(kInterferenceSize) LtailLine {
  uint64_t value;
  uint64_t started;
  uint64_t incarnation;
  uint64_t reserved[13];
};
static_assert(std::is_trivially_copyable_v<LtailLine>);
static_assert(sizeof(LtailLine) == kInterferenceSize);
static_assert(offsetof(LtailLine, started) == 8);
static_assert(offsetof(LtailLine, incarnation) == 16);

// ---- Noncoherent mode: single-writer lines only --------------------------------------------------

// Written only by the sequencer (the creating ShmLog object's sequencer): the next index to
// grant, the registered replicas, every id ever registered (whose |started| counts for ctail),
// a heartbeat (changed at least every millisecond while it runs), its pid and host tag (the
// process whose death ends the log: sharers on the same host test the pid), and |fenced|: the
// replica ids fenced and not yet free again (their payload holds count as released; see
// shm_log.h, "Crash fencing, noncoherent mode").
struct alignas(kInterferenceSize) SequencerLine {
  uint64_t tail;
  uint64_t active;
  uint64_t ever;
  uint64_t heartbeat;
  uint64_t pid;
  uint64_t host;
  uint64_t fenced;
  uint64_t reserved[9];
};
static_assert(std::is_trivially_copyable_v<SequencerLine>);
static_assert(sizeof(SequencerLine) == kInterferenceSize);
static_assert(offsetof(SequencerLine, active) == 8);
static_assert(offsetof(SequencerLine, host) == 40);
static_assert(offsetof(SequencerLine, fenced) == 48);

// A replica's tail reservation request, written only by the replica's owner: |count| indices,
// numbered |seq| (one per append; |seq| is stored last). |cancel_seq| == |seq| withdraws it (the
// appender gave up); the sequencer answers a withdrawn request with kResponseCancelled.
// |fence_ack| == the incarnation in ResponseLine::fenced: the owner learnt it was fenced and will
// never write this id's lines (nor its slots) again, so the sequencer may hand them on.
struct alignas(kInterferenceSize) RequestLine {
  uint64_t seq;
  uint64_t count;
  uint64_t cancel_seq;
  uint64_t fence_ack;
  uint64_t reserved[12];
};
static_assert(std::is_trivially_copyable_v<RequestLine>);
static_assert(sizeof(RequestLine) == kInterferenceSize);
static_assert(offsetof(RequestLine, fence_ack) == 24);

// The sequencer's answer to a RequestLine, written only by the sequencer: |status| and |first|
// (the first granted index), published by the store of |seq| (the request it answers).
// |fenced|: the last incarnation of this id the sequencer fenced (0: none). It sits on the line
// the appender reads its grant from, so one read tells it both (the publish handshake in
// shm_log.h needs exactly that read after its request).
inline constexpr uint64_t kResponseGranted = 1;
inline constexpr uint64_t kResponseCancelled = 2;
inline constexpr uint64_t kResponseRejected = 3;  // a request no correct appender writes
struct alignas(kInterferenceSize) ResponseLine {
  uint64_t seq;
  uint64_t status;
  uint64_t first;
  uint64_t fenced;
  uint64_t reserved[12];
};
static_assert(std::is_trivially_copyable_v<ResponseLine>);
static_assert(sizeof(ResponseLine) == kInterferenceSize);
static_assert(offsetof(ResponseLine, fenced) == 24);

// A ShmLog object's control request, written only by that client: |kind| with argument |arg|,
// numbered |seq| (stored last).
inline constexpr uint64_t kClientJoin = 1;     // a new replica id (arg: gc_lock_word(host tag, pid) of
                                               // its owner, for fencing); answer: id, start, incarnation
inline constexpr uint64_t kClientLeave = 2;    // |arg| leaves; answer: ok
inline constexpr uint64_t kClientPayload = 3;  // a free payload slot; answer: slot, generation
struct alignas(kInterferenceSize) ClientRequestLine {
  uint64_t seq;
  uint64_t kind;
  uint64_t arg;
  uint64_t reserved[13];
};
static_assert(std::is_trivially_copyable_v<ClientRequestLine>);
static_assert(sizeof(ClientRequestLine) == kInterferenceSize);

// The sequencer's answer to a ClientRequestLine, written only by the sequencer.
inline constexpr uint64_t kClientOk = 1;
inline constexpr uint64_t kClientExhausted = 2;  // no free replica id / payload slot
inline constexpr uint64_t kClientRejected = 3;   // a malformed request (e.g. leaving a foreign id)
struct alignas(kInterferenceSize) ClientResponseLine {
  uint64_t seq;
  uint64_t status;
  uint64_t value[3];
  uint64_t reserved[11];
};
static_assert(std::is_trivially_copyable_v<ClientResponseLine>);
static_assert(sizeof(ClientResponseLine) == kInterferenceSize);
static_assert(offsetof(ClientResponseLine, value) == 16);

// Registration, liveness and the pending reservation of one replica id (coherent-mode fencing,
// shm_log.h). Written by the owner: |heartbeat| (changes while the owner lives), |reserve_first|
// and |reserve_count| (the batch it is about to reserve or has reserved, stored BEFORE the CAS on
// the tail, so whoever fences a dead owner knows which unpublished slots may be its own).
// Written under the GC lock: |state|, |owner_pid|, |host|, |incarnation| (bumped by every
// registration AND every fencing: an owner whose remembered incarnation differs is fenced).
// Noncoherent mode: the whole line is the owner's; the sequencer reads only |heartbeat| (the
// other fields are informational; the sequencer keeps its own record of owner and incarnation).
enum class ReplicaState : uint64_t {
  kFree = 0,
  kActive = 1,
  kFenced = 2,  // out of the active mask; some of its reserved slots may still need no-ops
};
struct alignas(kInterferenceSize) ReplicaLine {
  uint64_t state;          // ReplicaState
  uint64_t owner_pid;      // the process that registered it
  uint64_t incarnation;    // registrations + fencings of this id so far
  uint64_t heartbeat;      // any change means "alive"; the fencer times it with its own clock
  uint64_t host;           // the owner's host tag (pid namespace + boot): pids compare only within one
  uint64_t reserve_first;  // the owner's latest reservation (attempt): [first, first + count)
  uint64_t reserve_count;
  uint64_t reserved[9];
};
static_assert(std::is_trivially_copyable_v<ReplicaLine>);
static_assert(sizeof(ReplicaLine) == kInterferenceSize);
static_assert(offsetof(ReplicaLine, owner_pid) == 8);
static_assert(offsetof(ReplicaLine, heartbeat) == 24);
static_assert(offsetof(ReplicaLine, host) == 32);
static_assert(offsetof(ReplicaLine, reserve_first) == 40);
static_assert(offsetof(ReplicaLine, reserve_count) == 48);

// The start of every slot (as the ring's). |alive| is the per-lap marker: the entry at index i is
// live when it equals i / slot_count + 1 (0: never written); |writer| and |length| are published
// by the release store to |alive|. Coherent mode publishes with a CAS from the previous lap's
// value, and a fencer fills a dead appender's slot with lap | kAliveNoop (a CAS too): exactly one
// of them wins, and readers skip a no-op without calling the visitor. Noncoherent mode: both are
// plain stores, and the publish handshake of shm_log.h ("Crash fencing, noncoherent mode") lets
// at most one of them happen.
inline constexpr uint64_t kAliveNoop = uint64_t{1} << 63;  // bit 63: a fenced writer's no-op entry
inline constexpr uint64_t kAliveLapMask = kAliveNoop - 1;  // bits 0..62: the lap
struct SlotHeader {
  uint64_t alive;
  uint32_t writer;
  uint32_t length;
};
static_assert(std::is_trivially_copyable_v<SlotHeader>);
static_assert(sizeof(SlotHeader) == 16);
static_assert(offsetof(SlotHeader, writer) == 8);
static_assert(offsetof(SlotHeader, length) == 12);

// One payload slot's metadata. Coherent mode: claimed with a CAS on |state|, |pending| cleared bit
// by bit. Noncoherent mode: written only by the client the sequencer granted the slot to (for
// one generation); |pending| is then the immutable holder mask, and holder r has released
// generation g when its release mark for the slot (written only by r's owner) equals g. |state| packs the phase and the generation:
inline constexpr uint64_t kPayloadPhaseMask = 0xff;     // bits 0..7: phase
inline constexpr uint64_t kPayloadFree = 0;             //   no payload; may be claimed
inline constexpr uint64_t kPayloadFilling = 1;          //   claimed by a put, bytes being copied
inline constexpr uint64_t kPayloadLive = 2;             //   readable; |pending| holders
inline constexpr unsigned kPayloadGenerationShift = 32;  // bits 32..63: generation (PayloadRef's)
constexpr uint64_t payload_state(uint32_t generation, uint64_t phase) {
  return (uint64_t{generation} << kPayloadGenerationShift) | phase;
}
constexpr uint32_t payload_generation(uint64_t state) {
  return static_cast<uint32_t>(state >> kPayloadGenerationShift);
}
struct PayloadMeta {
  uint64_t state;    // payload_state(generation, phase)
  uint64_t pending;  // replicas (bit per id) that have not released it yet
  uint64_t length;   // bytes in use, <= payload_slot_bytes
  uint64_t reserved[5];
};
static_assert(std::is_trivially_copyable_v<PayloadMeta>);
static_assert(sizeof(PayloadMeta) == kCacheLineSize);
static_assert(offsetof(PayloadMeta, pending) == 8);

// The layout of one region, computed from its geometry (never read from the region unchecked).
struct Geometry {
  uint32_t entry_size = 0;
  uint32_t slot_count = 0;
  uint32_t slot_stride = 0;
  uint32_t max_replicas = 0;
  uint32_t payload_slots = 0;
  uint64_t payload_slot_bytes = 0;
  uint64_t control_offset = 0;
  uint64_t ltails_offset = 0;    // max_replicas LtailLines
  uint64_t replicas_offset = 0;  // max_replicas ReplicaLines
  uint64_t sequencer_offset = 0;        // SequencerLine
  uint64_t requests_offset = 0;         // max_replicas RequestLines
  uint64_t responses_offset = 0;        // max_replicas ResponseLines
  uint64_t client_requests_offset = 0;  // kMaxClients ClientRequestLines
  uint64_t client_responses_offset = 0; // kMaxClients ClientResponseLines
  uint64_t releases_offset = 0;         // max_replicas arrays of release marks
  uint64_t release_stride = 0;          // bytes per replica's array (multiple of kInterferenceSize)
  uint64_t slots_offset = 0;
  uint64_t payload_meta_offset = 0;
  uint64_t payload_data_offset = 0;
  uint64_t region_bytes = 0;
  bool operator==(const Geometry&) const = default;
};

// Checks the ranges (entry_size, slot_count, max_replicas, payload_slots, payload_slot_bytes as
// the constants above say) and lays the sections out.
// Errors: kInvalidArgument naming the first field out of range.
Result<Geometry> plan_geometry(uint32_t entry_size, uint32_t slot_count, uint32_t max_replicas,
                               uint32_t payload_slots, uint64_t payload_slot_bytes);

// FNV-1a over the header's bytes before |checksum|.
uint64_t header_checksum(const ShmHeader& header);

// A complete header for |g| (checksum included).
ShmHeader make_header(const Geometry& g, ShmMode mode, uint64_t cluster_id, uint64_t epoch, uint32_t log_id);

// Validates a header copied out of a region of |region_size| bytes, in this order: magic, layout
// version, checksum, geometry ranges, section offsets against the geometry, region size, mode,
// cluster id and epoch (|expected_epoch| 0 accepts any). Returns the geometry.
// Errors: kInvalidArgument (not a log: wrong magic; another layout version; a region smaller
// than the layout; another cluster or epoch), kDataLoss (checksum mismatch; a field out of range
// or inconsistent with the others, an unknown mode: a corrupt header).
Result<Geometry> check_header(const ShmHeader& header, uint64_t region_size, uint64_t cluster_id,
                              uint64_t expected_epoch);

}  // namespace nrx::logs::shm
