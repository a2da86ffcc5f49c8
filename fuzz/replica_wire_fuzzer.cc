// libFuzzer target for the replica protocol's receiving side (plugins/replicated/wire): the input
// is what a peer sends, one or more frames back to back.
//
// Checks, beyond "no crash, no sanitizer report, no huge allocation":
// - DecodeHeader refuses with InvalidArgument and a message, or accepts a header that encodes
//   back to the same 48 bytes; the payload of an accepted HELLO/AUTH/AUTH_OK/CONTROL frame is
//   parsed as its message (which may fail, but must not crash).
// - Connection::Receive and ReceiveInto over a socketpair fed the input: every frame they return
//   has a valid header and exactly `length` payload bytes; after InvalidArgument the connection
//   stays dead (Unavailable); the stream always ends in an error, never hangs.
// - ServerHandshake fed the input as the client's side ends with a status, never a crash.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "wire/replica_wire.h"

namespace {

namespace wire = hci::replicated::wire;
namespace v1 = hci::replicated::v1;

// The socket passes feed at most this much (it fits a socketpair's buffer in one write).
constexpr std::size_t kMaxStreamBytes = 64 * 1024;
// Frames read per pass; the input cannot hold more than this many headers anyway.
constexpr int kMaxFrames = kMaxStreamBytes / wire::kHeaderSize + 1;

void ParsePayload(const wire::Header& h, std::span<const std::uint8_t> payload) {
  const void* p = payload.data();
  const int n = static_cast<int>(payload.size());
  const bool response = (h.flags & wire::kFlagResponse) != 0;
  switch (h.type) {
    case wire::MsgType::kHello: {
      v1::Hello m;
      (void)m.ParseFromArray(p, n);
      break;
    }
    case wire::MsgType::kAuth: {
      v1::Auth m;
      (void)m.ParseFromArray(p, n);
      break;
    }
    case wire::MsgType::kAuthOk: {
      v1::AuthOk m;
      (void)m.ParseFromArray(p, n);
      break;
    }
    case wire::MsgType::kControl:
      if (response) {
        v1::ControlResponse m;
        (void)m.ParseFromArray(p, n);
      } else {
        v1::ControlRequest m;
        (void)m.ParseFromArray(p, n);
      }
      break;
    default:
      break;
  }
}

void CheckDecode(const std::uint8_t* data, std::size_t size) {
  if (size < wire::kHeaderSize) return;
  std::span<const std::uint8_t, wire::kHeaderSize> in(data, wire::kHeaderSize);
  hci::Result<wire::Header> h = wire::DecodeHeader(in);
  if (!h.ok()) {
    if (h.status().code() != hci::StatusCode::kInvalidArgument || h.status().message().empty()) {
      __builtin_trap();
    }
    return;
  }
  std::array<std::uint8_t, wire::kHeaderSize> again{};
  wire::EncodeHeader(*h, again);
  if (std::memcmp(again.data(), data, wire::kHeaderSize) != 0) __builtin_trap();
  if (h->length > wire::kMaxPayload) __builtin_trap();
  const std::size_t available = std::min<std::size_t>(h->length, size - wire::kHeaderSize);
  ParsePayload(*h, {data + wire::kHeaderSize, available});
}

// A connected pair: `conn` owns one end, `peer` is the raw other end, already fed the input
// and closed for writing so that the reader sees EOF after it.
struct Fed {
  std::unique_ptr<wire::Connection> conn;
  int peer = -1;
  Fed(const std::uint8_t* data, std::size_t size) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) __builtin_trap();
    conn = std::make_unique<wire::Connection>(fds[0], "fuzz");
    peer = fds[1];
    // Non-blocking: whatever does not fit is dropped (a truncated stream is just another input).
    ::fcntl(peer, F_SETFL, O_NONBLOCK);
    const std::size_t n = std::min(size, kMaxStreamBytes);
    if (n > 0) (void)::send(peer, data, n, MSG_NOSIGNAL);
    ::shutdown(peer, SHUT_WR);
  }
  ~Fed() { ::close(peer); }
};

void CheckFrame(const wire::Header& h, std::size_t payload_size) {
  std::array<std::uint8_t, wire::kHeaderSize> bytes{};
  wire::EncodeHeader(h, bytes);
  if (!wire::DecodeHeader(bytes).ok()) __builtin_trap();
  if (payload_size != h.length) __builtin_trap();
}

void CheckEnd(wire::Connection& conn, const hci::Status& s, bool into) {
  if (s.code() == hci::StatusCode::kInvalidArgument) {
    // A malformed frame kills the connection.
    wire::Header h;
    std::string payload;
    std::array<std::uint8_t, 16> small{};
    const hci::Status next = into ? conn.ReceiveInto(&h, small) : conn.Receive(&h, &payload);
    if (next.code() != hci::StatusCode::kUnavailable) __builtin_trap();
  } else if (s.code() != hci::StatusCode::kUnavailable) {
    __builtin_trap();
  }
}

void CheckReceive(const std::uint8_t* data, std::size_t size) {
  Fed fed(data, size);
  std::string payload;
  for (int i = 0; i < kMaxFrames; ++i) {
    wire::Header h;
    const hci::Status s = fed.conn->Receive(&h, &payload);
    if (!s.ok()) {
      CheckEnd(*fed.conn, s, false);
      return;
    }
    CheckFrame(h, payload.size());
    ParsePayload(h, {reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()});
  }
  __builtin_trap();  // more frames than the input can hold
}

void CheckReceiveInto(const std::uint8_t* data, std::size_t size) {
  Fed fed(data, size);
  std::vector<std::uint8_t> buffer(2 * wire::kBlockSize);
  for (int i = 0; i < kMaxFrames; ++i) {
    wire::Header h;
    const hci::Status s = fed.conn->ReceiveInto(&h, buffer);
    if (!s.ok()) {
      CheckEnd(*fed.conn, s, true);
      return;
    }
    CheckFrame(h, h.length);
    if (h.length > buffer.size()) __builtin_trap();
  }
  __builtin_trap();
}

void CheckServerHandshake(const std::uint8_t* data, std::size_t size) {
  Fed fed(data, size);
  std::string client;
  const hci::Status s = wire::ServerHandshake(*fed.conn, "fuzz-secret", "node-f", &client);
  // A fuzzer cannot forge the MAC: the handshake fails, with one of the documented codes.
  if (s.ok()) __builtin_trap();
  const hci::StatusCode c = s.code();
  if (c != hci::StatusCode::kInvalidArgument && c != hci::StatusCode::kUnavailable &&
      c != hci::StatusCode::kPermissionDenied) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CheckDecode(data, size);
  CheckReceive(data, size);
  CheckReceiveInto(data, size);
  CheckServerHandshake(data, size);
  return 0;
}
