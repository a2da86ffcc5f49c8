// The replica protocol between engines (and the plugin) and hci-replica-server: framing,
// authentication and a blocking connection. Internal to plugins/replicated.
//
// Every frame is a fixed 48-byte header, all integers little-endian, then `length` payload bytes:
//
//   offset size field
//        0    4 magic       0x48434952 ("HCIR" read as big-endian text)
//        4    2 version     1
//        6    2 type        MsgType
//        8    4 flags       FrameFlag bits
//       12    4 status      responses: 0, or a positive errno value (EIO, ESTALE, EINVAL, ...)
//       16    8 handle      chosen by the requester, echoed in the response (pipelining)
//       24    8 offset      bytes into the volume (data frames)
//       32    4 length      payload bytes that follow the header (<= kMaxPayload)
//       36    4 count       bytes the data request covers (READ/TRIM/WRITE_ZEROES; = length for
//       WRITE) 40    8 generation  the engine's volume generation (data requests; fencing)
//
// A connection starts with the server's kHello (Hello), the client's kAuth (Auth) and the server's
// kAuthOk (AuthOk): a mutual HMAC-SHA256 challenge/response over a shared secret (RFC 2104), so
// the secret never crosses the wire and a replayed handshake fails (fresh nonces on both sides).
// Then the client sends requests: kControl frames (a ControlRequest payload, answered by a
// ControlResponse) and, after a ControlRequest.open, data frames for the opened replica. The server
// answers each request with a frame of the same type, kFlagResponse set and the same handle, in
// request order.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

#include "hci/replicated/v1/replica.pb.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci::replicated::wire {

inline constexpr std::uint32_t kMagic = 0x48434952;
inline constexpr std::uint16_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 48;
/// Largest payload of one frame, in bytes (32 MiB: NBD's usual maximum request).
inline constexpr std::uint32_t kMaxPayload = 32u << 20;
/// Every data request's offset and count are multiples of this (bytes).
inline constexpr std::uint32_t kBlockSize = 4096;
/// Bytes of each nonce in Hello/Auth.
inline constexpr std::size_t kNonceSize = 32;

enum class MsgType : std::uint16_t {
  kHello = 1,
  kAuth = 2,
  kAuthOk = 3,
  kControl = 10,
  kRead = 20,
  kWrite = 21,
  kFlush = 22,
  kTrim = 23,
  kWriteZeroes = 24,
};

enum FrameFlag : std::uint32_t {
  kFlagResponse = 1u << 0,
  /// WRITE / WRITE_ZEROES / TRIM: durable (fdatasync) before the response (NBD FUA).
  kFlagFua = 1u << 1,
};

struct Header {
  MsgType type = MsgType::kControl;
  std::uint32_t flags = 0;
  std::int32_t status = 0;
  std::uint64_t handle = 0;
  std::uint64_t offset = 0;
  std::uint32_t length = 0;
  std::uint32_t count = 0;
  std::uint64_t generation = 0;
};

/// Writes `header` (magic and version included) into `out`.
void EncodeHeader(const Header& header, std::span<std::uint8_t, kHeaderSize> out);

/// Parses and checks a header: magic, version, a known type, no unknown flag bit, length <=
/// kMaxPayload, a non-negative status; for data requests offset and count multiples of
/// kBlockSize, WRITE with length == count, READ/TRIM/WRITE_ZEROES/FLUSH requests without payload,
/// successful READ responses with length == count, every other data response (errors included)
/// without payload; Hello/Auth/AuthOk/Control with a payload, except a Control response (an OK
/// ControlResponse with nothing to report serializes to zero bytes) and a frame with a non-zero
/// status (the server's refusal of a wrong MAC is an AuthOk with status EACCES and no payload).
/// InvalidArgument naming the field otherwise.
Result<Header> DecodeHeader(std::span<const std::uint8_t, kHeaderSize> in);

/// Name of a type for logs ("READ", "CONTROL", ...; "TYPE(n)" for an unknown value).
std::string_view MsgTypeName(MsgType type);

/// HMAC-SHA256 of `label | server_nonce | client_nonce` under `secret` (32 bytes).
std::string AuthMac(std::string_view secret, std::string_view label, std::string_view server_nonce,
                    std::string_view client_nonce);
inline constexpr std::string_view kClientLabel = "hci-replica-v1 client";
inline constexpr std::string_view kServerLabel = "hci-replica-v1 server";

/// Maps a status code to the errno a data response carries, and back.
int StatusToErrno(const Status& status);
Status ErrnoToStatus(int err, std::string_view what);

/// A connected, authenticated stream socket. Sends are serialised by an internal mutex so that
/// several threads may send frames; receiving is the job of one thread at a time.
class Connection {
 public:
  explicit Connection(int fd, std::string peer);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Sends one frame: `header` with its length set to payload.size(). Unavailable when the peer
  /// is gone.
  Status Send(Header header, std::span<const std::uint8_t> payload = {});
  /// Receives one frame's header, then its payload into `payload` (resized). Unavailable when the
  /// peer closed or the socket failed, InvalidArgument for a malformed header (the connection is
  /// then unusable).
  Status Receive(Header* header, std::string* payload);
  /// As Receive, but the payload goes to `buffer` when it fits (a READ response's data) and the
  /// call fails with InvalidArgument when it does not (the connection is then unusable).
  /// Receive allocates as payload bytes arrive, not up front on the header's word.
  Status ReceiveInto(Header* header, std::span<std::uint8_t> buffer);

  /// Shuts the socket down both ways: a thread blocked in Receive returns Unavailable.
  void Shutdown();
  int fd() const { return fd_; }
  const std::string& peer() const { return peer_; }

 private:
  int fd_;
  std::string peer_;
  std::mutex send_mu_;
  // Set by Shutdown() and by a malformed frame: from then on every call fails with Unavailable,
  // even when bytes are still queued (the stream cannot be resynchronised).
  std::atomic<bool> dead_{false};
};

/// Connects to `address` ("host:port", IPv4 or a name resolved by getaddrinfo, or
/// "unix:/path"), within `timeout_ms` (<= 0: no limit), and authenticates with `secret`.
/// Unavailable when the server cannot be reached or does not finish the handshake in time,
/// PermissionDenied when the server refuses the secret or cannot prove it knows it,
/// InvalidArgument for an address that does not parse. TCP_NODELAY is set; the returned
/// connection has no socket timeouts.
Result<std::unique_ptr<Connection>> Dial(std::string_view address, std::string_view secret,
                                         std::string_view client_name, int timeout_ms);

/// The server's half of the handshake on an accepted socket. PermissionDenied (naming the peer)
/// for a wrong MAC, after telling the client so (AuthOk with status EACCES); InvalidArgument for
/// a malformed frame; Unavailable when the peer went away or a socket timeout the caller set
/// expired. `client_name` (may be null) receives Auth.client.
Status ServerHandshake(Connection& conn, std::string_view secret, std::string_view node,
                       std::string* client_name);

/// Sends `request` as a kControl frame and waits for its ControlResponse. The transport's error
/// when the exchange fails; otherwise the status carried by the response (its code and message),
/// with the response stored in `*response` either way. InvalidArgument, without sending, for a
/// request with nothing set. Not for a connection whose data requests are in flight.
Status Call(Connection& conn, const v1::ControlRequest& request, v1::ControlResponse* response);

/// Largest secret file accepted, in bytes.
inline constexpr std::size_t kMaxSecretBytes = 64 * 1024;

/// Reads the shared secret: the file's bytes, verbatim (a trailing newline is part of the
/// secret, so every side that reads the same file agrees). Refuses a file that group or others
/// may access at all, as ssh does for private keys. Errors name `field` (the option that named
/// the file, e.g. "--secret-file"): the errno status of open/read (NotFound for a missing file),
/// PermissionDenied for a file accessible by group or others, InvalidArgument for an empty file,
/// one that is not a regular file or one larger than kMaxSecretBytes.
Result<std::string> ReadSecretFile(std::string_view field, const std::string& path);

/// Sends `request` to an engine's control socket (a unix socket at `path`; no handshake: the
/// socket is mode 0600) and returns the engine's answer; Unavailable when the engine cannot be
/// reached or does not answer within `timeout_ms`. The response's own code is not turned into a
/// Status: callers read response.code().
Result<v1::EngineResponse> CallEngine(const std::string& path, const v1::EngineRequest& request,
                                      int timeout_ms);

}  // namespace hci::replicated::wire
