// nrx::syscall::ChannelServer: the shared-memory syscall channel through which other Linux
// processes reach NR-FS (DESIGN 4, syscall). The client side is libnrx (kernel/syscall/libnrx.h).
//
// The channel is one file on a tmpfs (/dev/shm/...), mapped MAP_SHARED by the server and by every
// client (layout in kernel/syscall/internal/channel_layout.h):
//   [ header: magic, version, slot count, slot size, server pid + start time, checksum ]
//   [ slot 0 ][ slot 1 ] ... [ slot N-1 ]     each: state word | owner pid | request | response |
//                                             data buffer (kMaxIo payload + two paths)
// Algorithm (one slot = one outstanding request, one server thread per slot, as in eRPC's
// per-session slots):
//   client: CAS state FREE -> CLAIMED, write the nrx_request and its inline data, CAS -> REQUEST;
//   server: sees REQUEST, copies the request out, runs it through syscall::execute() against the
//           FileSystem, writes the nrx_response, CAS -> RESPONSE;
//   client: sees RESPONSE, copies the result out, CAS -> FREE.
// Each side spins briefly, then sleeps in futex(FUTEX_WAIT) on the state word after setting its
// "waiting" bit in that same word with a CAS, so a publisher knows from its own CAS whether it must
// futex(FUTEX_WAKE): no lost wake-ups, and no syscall when the peer is still spinning.
//
// Invariants: the header is written once, before the file is linked at |path| (clients never see
// a half-built channel); only the server moves a slot REQUEST -> RESPONSE, only its client moves it
// otherwise; once the server sets a slot's CLOSED bit no new request is published on it, and every
// request published before is still answered. Everything a client writes is validated by the
// server (syscall::execute() is the boundary); everything the server writes is validated by the
// client on connect (magic, version, geometry, checksum, a live server pid).
//
// Thread safety: start() and the destructor are set-up/tear-down; path() and requests_served() may
// be called from any thread. The FileSystem must outlive the server.
//
//   auto memory = mem::Memory::create({}).value();
//   auto fs = fs::FileSystem<>::create(*memory, {}).value();
//   auto server = syscall::ChannelServer::start(*fs, /*replica=*/0, {.path = "/dev/shm/nrx"}).value();
//   // another process: nrx_connect("/dev/shm/nrx"); int fd = nrx_open("/a", NRX_O_CREAT | NRX_O_RDWR, 0644);
//   server.reset();  // stops the server threads, unlinks /dev/shm/nrx
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"
#include "kernel/fs/fs.h"

namespace nrx::syscall {

inline constexpr uint32_t kMaxChannelSlots = 64;

struct ChannelOptions {
  std::string path;      // a /dev/shm file (or any tmpfs path) that clients map; created, replaced if stale
  uint32_t slots = 8;    // concurrent requests (one server thread per slot), 1..64
};

class ChannelServer {
 public:
  // Serves |fs| (through replica |replica|: one fs::Handle per slot thread, attached here) on a
  // new channel at options.path (created mode 0600: clients are the same user). A stale channel
  // at the path (its server is gone) or an empty file is replaced; any other file is left alone.
  // Errors: kInvalidArgument (empty or over-long path, slots out of 1..64, no such replica),
  // kAlreadyExists (a live server owns the path, or it holds a file that is not a channel),
  // kResourceExhausted (the replica has no thread slots left for the server threads), the OS's
  // errors as kInternal/kUnavailable with the errno text.
  static Result<std::unique_ptr<ChannelServer>> start(fs::FileSystem<>& fs, uint32_t replica,
                                                      const ChannelOptions& options);
  // Stops the server threads (bounded: each finishes at most the request it is serving; requests
  // already published are answered, later ones fail with ECONNRESET), unlinks the file if it is
  // still ours.
  ~ChannelServer();

  ChannelServer(const ChannelServer&) = delete;
  ChannelServer& operator=(const ChannelServer&) = delete;

  const std::string& path() const;
  // Requests answered so far (any result, errors included).
  uint64_t requests_served() const;

 private:
  struct Impl;  // channel.cc
  explicit ChannelServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nrx::syscall
