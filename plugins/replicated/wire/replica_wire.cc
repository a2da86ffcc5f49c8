#include "wire/replica_wire.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

namespace hci::replicated::wire {
namespace {

using Clock = std::chrono::steady_clock;

// ---- Little-endian fields, by hand so that the layout never depends on the host. ----

void Put16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v);
  p[1] = static_cast<std::uint8_t>(v >> 8);
}
void Put32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void Put64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint16_t Get16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (static_cast<std::uint16_t>(p[1]) << 8));
}
std::uint32_t Get32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
std::uint64_t Get64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

bool KnownType(std::uint16_t t) {
  switch (static_cast<MsgType>(t)) {
    case MsgType::kHello:
    case MsgType::kAuth:
    case MsgType::kAuthOk:
    case MsgType::kControl:
    case MsgType::kRead:
    case MsgType::kWrite:
    case MsgType::kFlush:
    case MsgType::kTrim:
    case MsgType::kWriteZeroes:
      return true;
  }
  return false;
}

bool IsDataType(MsgType t) {
  return t == MsgType::kRead || t == MsgType::kWrite || t == MsgType::kFlush ||
         t == MsgType::kTrim || t == MsgType::kWriteZeroes;
}

std::string HeaderError(const Header& h, std::string_view field, std::string_view what) {
  std::string msg = "replica frame header (";
  msg.append(MsgTypeName(h.type));
  if (h.flags & kFlagResponse) msg += " response";
  msg += "): ";
  msg.append(field);
  msg += ": ";
  msg.append(what);
  return msg;
}

std::string Errno(int err) { return std::strerror(err); }

// ---- Socket I/O that survives EINTR and short transfers. ----

// Why a recv() that returned `n` (errno `err`) ended the reading of `what`, of which `got` of
// `total` bytes had arrived.
Status RecvError(ssize_t n, int err, std::size_t got, std::size_t total, std::string_view what,
                 const std::string& peer) {
  if (n == 0) {
    if (got == 0 && what == "frame header") {
      return Unavailable(peer + ": connection closed by the peer");
    }
    return Unavailable(peer + ": connection closed in the middle of the " + std::string(what) +
                       " (" + std::to_string(got) + " of " + std::to_string(total) +
                       " bytes received)");
  }
  if (err == EAGAIN || err == EWOULDBLOCK) {
    return Unavailable(peer + ": timed out waiting for the " + std::string(what));
  }
  return Unavailable(peer + ": receiving the " + std::string(what) + " failed: " + Errno(err));
}

// Reads exactly `size` bytes.
Status ReadFull(int fd, std::uint8_t* data, std::size_t size, std::string_view what,
                const std::string& peer) {
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = ::recv(fd, data + got, size - got, 0);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return RecvError(n, errno, got, size, what, peer);
  }
  return Status::OK();
}

std::string Hex(std::uint32_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(8, '0');
  for (int i = 7; i >= 0; --i, v >>= 4) out[static_cast<std::size_t>(i)] = kDigits[v & 0xf];
  return out;
}

// Writes every byte of `iov` (modified in place). MSG_NOSIGNAL: a vanished peer is an error,
// not a SIGPIPE that kills the process.
Status WriteAll(int fd, iovec* iov, int iovcnt, const std::string& peer) {
  while (iovcnt > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(iovcnt);
    const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return Unavailable(peer + ": timed out sending a frame");
      }
      return Unavailable(peer + ": sending a frame failed: " + Errno(errno));
    }
    auto left = static_cast<std::size_t>(n);
    while (iovcnt > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --iovcnt;
    }
    if (iovcnt > 0) {
      iov->iov_base = static_cast<std::uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return Status::OK();
}

// Receive and send deadlines for the handshake; zero clears them.
void SetIoTimeout(int fd, int timeout_ms) {
  timeval tv{};
  if (timeout_ms > 0) {
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = static_cast<suseconds_t>(timeout_ms % 1000) * 1000;
  }
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

std::string RandomNonce() {
  std::string nonce(kNonceSize, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), static_cast<int>(kNonceSize)) !=
      1) {
    return {};
  }
  return nonce;
}

bool MacEquals(const std::string& a, const std::string& b) {
  return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::span<const std::uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Receives one frame of `type` and parses its payload as `message`.
template <typename Message>
Status ReceiveMessage(Connection& conn, MsgType type, Header* header, Message* message) {
  std::string payload;
  HCI_RETURN_NOT_OK(conn.Receive(header, &payload));
  if (header->type != type) {
    conn.Shutdown();
    return InvalidArgument(conn.peer() + ": expected a " + std::string(MsgTypeName(type)) +
                           " frame, got " + std::string(MsgTypeName(header->type)));
  }
  if (header->status != 0) return Status::OK();  // the caller reads the refusal
  if (!message->ParseFromString(payload)) {
    conn.Shutdown();
    return InvalidArgument(conn.peer() + ": " + std::string(MsgTypeName(type)) +
                           " payload is not a valid " + message->GetTypeName() + " message");
  }
  return Status::OK();
}

template <typename Message>
Status SendMessage(Connection& conn, MsgType type, std::uint32_t flags, const Message& message) {
  std::string payload;
  if (!message.SerializeToString(&payload)) {
    return Internal("cannot serialize a " + message.GetTypeName() + " message");
  }
  Header h;
  h.type = type;
  h.flags = flags;
  return conn.Send(h, Bytes(payload));
}

// ---- Dialing. ----

struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
  int release() { return std::exchange(fd, -1); }
};

int RemainingMs(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1LL << 30));
}

// Connects `fd` (non-blocking) to `addr` by `deadline`; leaves it blocking.
Status ConnectBy(int fd, const sockaddr* addr, socklen_t len, Clock::time_point deadline,
                 std::string_view address) {
  std::string where(address);
  int rc;
  do {
    rc = ::connect(fd, addr, len);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    if (errno != EINPROGRESS) {
      return Unavailable("cannot connect to replica server " + where + ": " + Errno(errno));
    }
    for (;;) {
      pollfd p{fd, POLLOUT, 0};
      const int ready = ::poll(&p, 1, RemainingMs(deadline));
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) {
        return Unavailable("cannot connect to replica server " + where + ": poll: " + Errno(errno));
      }
      if (ready == 0) {
        return Unavailable("cannot connect to replica server " + where + ": timed out");
      }
      break;
    }
    int err = 0;
    socklen_t err_len = sizeof(err);
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) err = errno;
    if (err != 0) {
      return Unavailable("cannot connect to replica server " + where + ": " + Errno(err));
    }
  }
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    return Internal("replica server " + where + ": fcntl: " + Errno(errno));
  }
  return Status::OK();
}

Result<int> ConnectUnix(std::string_view path, Clock::time_point deadline,
                        std::string_view address) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sun.sun_path)) {
    return InvalidArgument("address: \"" + std::string(address) +
                           "\": a unix socket path must be 1-" +
                           std::to_string(sizeof(sun.sun_path) - 1) + " bytes");
  }
  std::memcpy(sun.sun_path, path.data(), path.size());
  FdCloser fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
  if (fd.fd < 0) return Internal("socket: " + Errno(errno));
  HCI_RETURN_NOT_OK(
      ConnectBy(fd.fd, reinterpret_cast<const sockaddr*>(&sun), sizeof(sun), deadline, address));
  return fd.release();
}

Result<int> ConnectTcp(std::string_view address, Clock::time_point deadline) {
  const std::size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == address.size()) {
    return InvalidArgument("address: \"" + std::string(address) +
                           "\" is not \"host:port\" or \"unix:/path\"");
  }
  std::string host(address.substr(0, colon));
  const std::string port(address.substr(colon + 1));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  const int gai = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
  if (gai != 0) {
    return Unavailable("cannot resolve replica server address \"" + std::string(address) +
                       "\": " + ::gai_strerror(gai));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(list, &::freeaddrinfo);
  Status last =
      Unavailable("cannot connect to replica server " + std::string(address) + ": no address");
  for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    FdCloser fd{
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol)};
    if (fd.fd < 0) {
      last = Internal("socket: " + Errno(errno));
      continue;
    }
    last = ConnectBy(fd.fd, ai->ai_addr, ai->ai_addrlen, deadline, address);
    if (!last.ok()) continue;
    // Small control frames and pipelined data requests must not wait for Nagle.
    const int one = 1;
    ::setsockopt(fd.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd.release();
  }
  return last;
}

Status ClientHandshake(Connection& conn, std::string_view secret, std::string_view client_name) {
  Header h;
  v1::Hello hello;
  HCI_RETURN_NOT_OK(ReceiveMessage(conn, MsgType::kHello, &h, &hello));
  if (h.status != 0 || hello.server_nonce().size() != kNonceSize) {
    conn.Shutdown();
    return InvalidArgument(conn.peer() + ": HELLO: server_nonce must be " +
                           std::to_string(kNonceSize) + " bytes");
  }
  const std::string client_nonce = RandomNonce();
  if (client_nonce.empty()) return Internal("RAND_bytes failed to make a nonce");

  v1::Auth auth;
  auth.set_client_nonce(client_nonce);
  auth.set_mac(AuthMac(secret, kClientLabel, hello.server_nonce(), client_nonce));
  auth.set_client(std::string(client_name));
  HCI_RETURN_NOT_OK(SendMessage(conn, MsgType::kAuth, 0, auth));

  v1::AuthOk ok;
  Status received = ReceiveMessage(conn, MsgType::kAuthOk, &h, &ok);
  if (!received.ok()) {
    if (received.code() == StatusCode::kUnavailable) {
      return Unavailable(received.message() +
                         " (during the handshake: a replica server closes "
                         "the connection when it refuses the secret)");
    }
    return received;
  }
  const std::string node = hello.node().empty() ? conn.peer() : hello.node();
  if (h.status != 0) {
    return PermissionDenied("replica server \"" + node + "\" at " + conn.peer() +
                            " refused the secret");
  }
  if (!MacEquals(ok.mac(), AuthMac(secret, kServerLabel, hello.server_nonce(), client_nonce))) {
    conn.Shutdown();
    return PermissionDenied("replica server \"" + node + "\" at " + conn.peer() +
                            " could not prove that it knows the secret (wrong AUTH_OK mac)");
  }
  return Status::OK();
}

}  // namespace

void EncodeHeader(const Header& header, std::span<std::uint8_t, kHeaderSize> out) {
  std::uint8_t* p = out.data();
  Put32(p + 0, kMagic);
  Put16(p + 4, kVersion);
  Put16(p + 6, static_cast<std::uint16_t>(header.type));
  Put32(p + 8, header.flags);
  Put32(p + 12, static_cast<std::uint32_t>(header.status));
  Put64(p + 16, header.handle);
  Put64(p + 24, header.offset);
  Put32(p + 32, header.length);
  Put32(p + 36, header.count);
  Put64(p + 40, header.generation);
}

Result<Header> DecodeHeader(std::span<const std::uint8_t, kHeaderSize> in) {
  const std::uint8_t* p = in.data();
  Header h;
  const std::uint32_t magic = Get32(p + 0);
  if (magic != kMagic) {
    return InvalidArgument("replica frame header: magic: 0x" + Hex(magic) +
                           " is not 0x48434952 (not a replica protocol peer?)");
  }
  const std::uint16_t version = Get16(p + 4);
  if (version != kVersion) {
    return InvalidArgument("replica frame header: version: " + std::to_string(version) +
                           " is not supported (this side speaks version " +
                           std::to_string(kVersion) + ")");
  }
  const std::uint16_t type = Get16(p + 6);
  if (!KnownType(type)) {
    return InvalidArgument("replica frame header: type: " + std::to_string(type) +
                           " is not a known message type");
  }
  h.type = static_cast<MsgType>(type);
  h.flags = Get32(p + 8);
  h.status = static_cast<std::int32_t>(Get32(p + 12));
  h.handle = Get64(p + 16);
  h.offset = Get64(p + 24);
  h.length = Get32(p + 32);
  h.count = Get32(p + 36);
  h.generation = Get64(p + 40);

  constexpr std::uint32_t kKnownFlags = kFlagResponse | kFlagFua;
  if ((h.flags & ~kKnownFlags) != 0) {
    return InvalidArgument(
        HeaderError(h, "flags", "unknown bits 0x" + Hex(h.flags & ~kKnownFlags)));
  }
  if (h.length > kMaxPayload) {
    return InvalidArgument(HeaderError(h, "length",
                                       std::to_string(h.length) + " exceeds the maximum of " +
                                           std::to_string(kMaxPayload) + " bytes"));
  }
  if (h.status < 0) {
    return InvalidArgument(HeaderError(h, "status", std::to_string(h.status) + " is negative"));
  }
  const bool response = (h.flags & kFlagResponse) != 0;
  if (IsDataType(h.type)) {
    if (!response) {
      if (h.offset % kBlockSize != 0) {
        return InvalidArgument(HeaderError(
            h, "offset",
            std::to_string(h.offset) + " is not a multiple of " + std::to_string(kBlockSize)));
      }
      if (h.count % kBlockSize != 0) {
        return InvalidArgument(HeaderError(
            h, "count",
            std::to_string(h.count) + " is not a multiple of " + std::to_string(kBlockSize)));
      }
      if (h.type == MsgType::kWrite && h.length != h.count) {
        return InvalidArgument(HeaderError(
            h, "length",
            std::to_string(h.length) + " differs from count " + std::to_string(h.count)));
      }
      if (h.type != MsgType::kWrite && h.length != 0) {
        return InvalidArgument(HeaderError(
            h, "length", std::to_string(h.length) + ": this request carries no payload"));
      }
    } else if (h.type == MsgType::kRead && h.status == 0 && h.length != h.count) {
      return InvalidArgument(
          HeaderError(h, "length",
                      std::to_string(h.length) + " differs from count " + std::to_string(h.count)));
    } else if ((h.type != MsgType::kRead || h.status != 0) && h.length != 0) {
      // Only a successful READ answers with data.
      return InvalidArgument(HeaderError(
          h, "length", std::to_string(h.length) + ": this response carries no payload"));
    }
  } else if (h.length == 0 && h.status == 0 && !(h.type == MsgType::kControl && response)) {
    // Every Hello/Auth/AuthOk/ControlRequest serializes to at least one byte. A ControlResponse
    // may legitimately be empty (OK and nothing to report), and a frame with a status is a
    // refusal without a message.
    return InvalidArgument(HeaderError(h, "length", "0: this frame must carry a payload"));
  }
  return h;
}

std::string_view MsgTypeName(MsgType type) {
  switch (type) {
    case MsgType::kHello:
      return "HELLO";
    case MsgType::kAuth:
      return "AUTH";
    case MsgType::kAuthOk:
      return "AUTH_OK";
    case MsgType::kControl:
      return "CONTROL";
    case MsgType::kRead:
      return "READ";
    case MsgType::kWrite:
      return "WRITE";
    case MsgType::kFlush:
      return "FLUSH";
    case MsgType::kTrim:
      return "TRIM";
    case MsgType::kWriteZeroes:
      return "WRITE_ZEROES";
  }
  // The view must outlive the call: one buffer per thread, valid until its next unknown type.
  thread_local std::string unknown;
  unknown = "TYPE(" + std::to_string(static_cast<unsigned>(type)) + ")";
  return unknown;
}

std::string AuthMac(std::string_view secret, std::string_view label, std::string_view server_nonce,
                    std::string_view client_nonce) {
  std::string input;
  input.reserve(label.size() + server_nonce.size() + client_nonce.size());
  input.append(label).append(server_nonce).append(client_nonce);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  // An empty key is legal HMAC but HMAC() wants a non-null pointer.
  static const unsigned char kEmpty = 0;
  const void* key = secret.empty() ? static_cast<const void*>(&kEmpty) : secret.data();
  if (HMAC(EVP_sha256(), key, static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac,
           &mac_len) == nullptr) {
    return {};
  }
  return std::string(reinterpret_cast<const char*>(mac), mac_len);
}

int StatusToErrno(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk:
      return 0;
    case StatusCode::kFailedPrecondition:
      return ESTALE;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return EINVAL;
    case StatusCode::kNotFound:
      return ENOENT;
    case StatusCode::kResourceExhausted:
      return ENOSPC;
    case StatusCode::kPermissionDenied:
      return EROFS;
    default:
      return EIO;
  }
}

Status ErrnoToStatus(int err, std::string_view what) {
  std::string msg(what);
  msg += ": ";
  switch (err) {
    case 0:
      return Status::OK();
    case ESTALE:
      return FailedPrecondition(msg + "stale generation (the replica has moved on)");
    case EINVAL:
      return InvalidArgument(msg + "invalid request");
    case ENOENT:
      return NotFound(msg + "no such replica or snapshot");
    case ENOSPC:
      return ResourceExhausted(msg + "no space left on the replica's node");
    case EROFS:
      return PermissionDenied(msg + "the connection is read-only (opened at a snapshot)");
    case EIO:
      return Internal(msg + "I/O error on the replica");
    default:
      return Internal(msg + Errno(err) + " (errno " + std::to_string(err) + ")");
  }
}

Connection::Connection(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}

Connection::~Connection() {
  if (fd_ >= 0) ::close(fd_);
}

Status Connection::Send(Header header, std::span<const std::uint8_t> payload) {
  if (payload.size() > kMaxPayload) {
    return InvalidArgument(peer_ + ": payload: " + std::to_string(payload.size()) +
                           " bytes exceed the maximum of " + std::to_string(kMaxPayload));
  }
  if (dead_.load(std::memory_order_relaxed)) {
    return Unavailable(peer_ + ": the connection was shut down");
  }
  header.length = static_cast<std::uint32_t>(payload.size());
  std::uint8_t buf[kHeaderSize];
  EncodeHeader(header, std::span<std::uint8_t, kHeaderSize>(buf, kHeaderSize));
  iovec iov[2];
  iov[0].iov_base = buf;
  iov[0].iov_len = kHeaderSize;
  iov[1].iov_base = const_cast<std::uint8_t*>(payload.data());
  iov[1].iov_len = payload.size();
  std::lock_guard lock(send_mu_);
  return WriteAll(fd_, iov, payload.empty() ? 1 : 2, peer_);
}

namespace {

// Reads and checks a header; a bad one kills the connection, since the stream cannot be
// resynchronised.
Status ReceiveHeader(Connection& conn, bool dead, Header* header) {
  if (dead) return Unavailable(conn.peer() + ": the connection was shut down");
  std::uint8_t buf[kHeaderSize];
  HCI_RETURN_NOT_OK(ReadFull(conn.fd(), buf, kHeaderSize, "frame header", conn.peer()));
  Result<Header> decoded = DecodeHeader(std::span<const std::uint8_t, kHeaderSize>(buf));
  if (!decoded.ok()) {
    conn.Shutdown();
    return decoded.status().WithContext(conn.peer());
  }
  *header = *decoded;
  return Status::OK();
}

}  // namespace

Status Connection::Receive(Header* header, std::string* payload) {
  HCI_RETURN_NOT_OK(ReceiveHeader(*this, dead_.load(std::memory_order_relaxed), header));
  const std::size_t length = header->length;
  // A header promises up to kMaxPayload bytes: allocate as the bytes come in, not on the word
  // of the peer, unless the buffer is already big enough.
  constexpr std::size_t kFirstChunk = 64 * 1024;
  std::size_t got = 0;
  if (payload->capacity() >= length) {
    payload->resize(length);
  } else {
    payload->resize(std::min(length, kFirstChunk));
  }
  while (got < length) {
    if (payload->size() == got) payload->resize(std::min(length, 2 * got));
    const ssize_t n = ::recv(fd_, payload->data() + got, payload->size() - got, 0);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    const int err = errno;
    payload->clear();
    return RecvError(n, err, got, length, "frame payload", peer_);
  }
  return Status::OK();
}

Status Connection::ReceiveInto(Header* header, std::span<std::uint8_t> buffer) {
  HCI_RETURN_NOT_OK(ReceiveHeader(*this, dead_.load(std::memory_order_relaxed), header));
  if (header->length > buffer.size()) {
    // The payload stays unread: the stream is out of step from here on.
    Shutdown();
    return InvalidArgument(peer_ + ": " + std::string(MsgTypeName(header->type)) +
                           " frame: length: " + std::to_string(header->length) +
                           " bytes do not fit the " + std::to_string(buffer.size()) +
                           "-byte buffer");
  }
  return ReadFull(fd_, buffer.data(), header->length, "frame payload", peer_);
}

void Connection::Shutdown() {
  dead_.store(true, std::memory_order_relaxed);
  ::shutdown(fd_, SHUT_RDWR);
}

Result<std::unique_ptr<Connection>> Dial(std::string_view address, std::string_view secret,
                                         std::string_view client_name, int timeout_ms) {
  // timeout_ms <= 0: no limit, for callers that abort by other means.
  const Clock::time_point deadline = timeout_ms > 0
                                         ? Clock::now() + std::chrono::milliseconds(timeout_ms)
                                         : Clock::now() + std::chrono::hours(24 * 365);
  constexpr std::string_view kUnix = "unix:";
  Result<int> fd = address.starts_with(kUnix)
                       ? ConnectUnix(address.substr(kUnix.size()), deadline, address)
                       : ConnectTcp(address, deadline);
  HCI_RETURN_NOT_OK(fd);
  auto conn = std::make_unique<Connection>(*fd, std::string(address));
  // A server that accepts but never speaks must not hang the caller past the deadline; after the
  // handshake there are no timeouts (callers shut the socket down to abort).
  SetIoTimeout(conn->fd(), std::max(1, RemainingMs(deadline)));
  HCI_RETURN_NOT_OK(ClientHandshake(*conn, secret, client_name));
  SetIoTimeout(conn->fd(), 0);
  return conn;
}

Status ServerHandshake(Connection& conn, std::string_view secret, std::string_view node,
                       std::string* client_name) {
  const std::string server_nonce = RandomNonce();
  if (server_nonce.empty()) return Internal("RAND_bytes failed to make a nonce");
  v1::Hello hello;
  hello.set_server_nonce(server_nonce);
  hello.set_node(std::string(node));
  HCI_RETURN_NOT_OK(SendMessage(conn, MsgType::kHello, 0, hello));

  Header h;
  v1::Auth auth;
  HCI_RETURN_NOT_OK(ReceiveMessage(conn, MsgType::kAuth, &h, &auth));
  if (h.status != 0 || auth.client_nonce().size() != kNonceSize) {
    conn.Shutdown();
    return InvalidArgument(conn.peer() + ": AUTH: client_nonce must be " +
                           std::to_string(kNonceSize) + " bytes");
  }
  if (client_name != nullptr) *client_name = auth.client();
  if (!MacEquals(auth.mac(), AuthMac(secret, kClientLabel, server_nonce, auth.client_nonce()))) {
    // Tell the client why before hanging up (best effort): AUTH_OK with a status, no payload.
    Header refusal;
    refusal.type = MsgType::kAuthOk;
    refusal.flags = kFlagResponse;
    refusal.status = EACCES;
    conn.Send(refusal).IgnoreError();
    conn.Shutdown();
    return PermissionDenied("client \"" + auth.client() + "\" at " + conn.peer() +
                            " does not know the secret (wrong AUTH mac)");
  }
  v1::AuthOk ok;
  ok.set_mac(AuthMac(secret, kServerLabel, server_nonce, auth.client_nonce()));
  return SendMessage(conn, MsgType::kAuthOk, kFlagResponse, ok);
}

Status Call(Connection& conn, const v1::ControlRequest& request, v1::ControlResponse* response) {
  static std::atomic<std::uint64_t> next_handle{1};
  // An empty request would serialize to an empty CONTROL frame, which the server must treat as
  // malformed and hang up on.
  if (request.request_case() == v1::ControlRequest::REQUEST_NOT_SET) {
    return InvalidArgument("request: no request set");
  }
  std::string payload;
  if (!request.SerializeToString(&payload)) {
    return Internal("cannot serialize a ControlRequest");
  }
  Header h;
  h.type = MsgType::kControl;
  h.handle = next_handle.fetch_add(1, std::memory_order_relaxed);
  HCI_RETURN_NOT_OK(conn.Send(h, Bytes(payload)));

  Header reply;
  HCI_RETURN_NOT_OK(conn.Receive(&reply, &payload));
  if (reply.type != MsgType::kControl || (reply.flags & kFlagResponse) == 0 ||
      reply.handle != h.handle) {
    conn.Shutdown();
    return InvalidArgument(conn.peer() + ": expected the CONTROL response to handle " +
                           std::to_string(h.handle) + ", got a " +
                           std::string(MsgTypeName(reply.type)) + " frame with handle " +
                           std::to_string(reply.handle));
  }
  response->Clear();
  if (!response->ParseFromString(payload)) {
    return InvalidArgument(conn.peer() + ": CONTROL response is not a valid ControlResponse");
  }
  if (response->code() == 0) return Status::OK();
  const int code = response->code();
  const auto status_code = code > 0 && code <= static_cast<int>(StatusCode::kUnauthenticated)
                               ? static_cast<StatusCode>(code)
                               : StatusCode::kUnknown;
  std::string message = response->message();
  if (message.empty()) {
    message = "replica server " + conn.peer() + " answered " +
              std::string(StatusCodeName(status_code)) + " without a message";
  }
  return Status(status_code, std::move(message));
}

Result<std::string> ReadSecretFile(std::string_view field, const std::string& path) {
  const std::string what = std::string(field) + ": " + "\"" + path + "\"";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, what);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoStatus(err, what);
  }
  auto fail = [fd](Status s) {
    ::close(fd);
    return s;
  };
  if (!S_ISREG(st.st_mode)) return fail(InvalidArgument(what + " is not a regular file"));
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return fail(PermissionDenied(what + " is accessible by group or others (mode " + mode +
                                 "): the shared secret must be readable by its owner only "
                                 "(chmod 600)"));
  }
  if (st.st_size == 0) return fail(InvalidArgument(what + " is empty"));
  if (static_cast<std::uint64_t>(st.st_size) > kMaxSecretBytes) {
    return fail(
        InvalidArgument(what + " is larger than " + std::to_string(kMaxSecretBytes) + " bytes"));
  }
  std::string secret(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < secret.size()) {
    const ssize_t n = ::read(fd, secret.data() + got, secret.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(ErrnoStatus(errno, what));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  secret.resize(got);
  if (secret.empty()) return InvalidArgument(what + " is empty");
  return secret;
}

Result<v1::EngineResponse> CallEngine(const std::string& path, const v1::EngineRequest& request,
                                      int timeout_ms) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument("control socket: \"" + path + "\" must be 1-107 bytes");
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "control socket");
  timeval tv{};
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = (timeout_ms % 1000) * 1000;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    return Unavailable("engine control socket " + path + ": " + std::strerror(err));
  }
  Connection conn(fd, "engine " + path);
  const std::string out = request.SerializeAsString();
  Header h;
  h.type = MsgType::kControl;
  h.handle = 1;
  HCI_RETURN_NOT_OK(conn.Send(h, {reinterpret_cast<const std::uint8_t*>(out.data()), out.size()}));
  std::string payload;
  HCI_RETURN_NOT_OK(conn.Receive(&h, &payload));
  v1::EngineResponse response;
  if (!response.ParseFromString(payload)) {
    return Unavailable("engine control socket " + path + ": the answer is not an EngineResponse");
  }
  return response;
}

}  // namespace hci::replicated::wire
