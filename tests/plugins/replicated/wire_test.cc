// The replica protocol: header encoding and validation, the HMAC handshake over real sockets,
// framing errors on the receiving side, and Call.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "wire/replica_wire.h"

namespace hci::replicated::wire {
namespace {

using ::testing::HasSubstr;
using Bytes = std::array<std::uint8_t, kHeaderSize>;

Bytes Encode(const Header& h) {
  Bytes out{};
  EncodeHeader(h, out);
  return out;
}

Result<Header> Decode(const Bytes& b) { return DecodeHeader(std::span<const std::uint8_t, 48>(b)); }

Header WriteRequest() {
  Header h;
  h.type = MsgType::kWrite;
  h.flags = kFlagFua;
  h.handle = 0x1122334455667788ull;
  h.offset = 3 * kBlockSize;
  h.length = 2 * kBlockSize;
  h.count = 2 * kBlockSize;
  h.generation = 0x0102030405060708ull;
  return h;
}

TEST(WireHeader, RoundTripKeepsEveryField) {
  const Header h = WriteRequest();
  Result<Header> back = Decode(Encode(h));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->type, h.type);
  EXPECT_EQ(back->flags, h.flags);
  EXPECT_EQ(back->status, h.status);
  EXPECT_EQ(back->handle, h.handle);
  EXPECT_EQ(back->offset, h.offset);
  EXPECT_EQ(back->length, h.length);
  EXPECT_EQ(back->count, h.count);
  EXPECT_EQ(back->generation, h.generation);

  Header resp;
  resp.type = MsgType::kRead;
  resp.flags = kFlagResponse;
  resp.status = ESTALE;
  resp.handle = 7;
  Result<Header> r = Decode(Encode(resp));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, ESTALE);
  EXPECT_EQ(r->flags, kFlagResponse);
}

TEST(WireHeader, LayoutIsLittleEndianAtTheDocumentedOffsets) {
  const Bytes b = Encode(WriteRequest());
  // magic 0x48434952 little-endian
  EXPECT_EQ(b[0], 0x52);
  EXPECT_EQ(b[1], 0x49);
  EXPECT_EQ(b[2], 0x43);
  EXPECT_EQ(b[3], 0x48);
  EXPECT_EQ(b[4], 1);  // version
  EXPECT_EQ(b[5], 0);
  EXPECT_EQ(b[6], 21);  // WRITE
  EXPECT_EQ(b[8], kFlagFua);
  EXPECT_EQ(b[16], 0x88);  // handle low byte first
  EXPECT_EQ(b[23], 0x11);
  EXPECT_EQ(b[24] | (b[25] << 8), 3 * 4096);  // offset
  EXPECT_EQ(b[32] | (b[33] << 8), 8192);      // length
  EXPECT_EQ(b[36] | (b[37] << 8), 8192);      // count
  EXPECT_EQ(b[40], 0x08);                     // generation
  EXPECT_EQ(b[47], 0x01);
}

void ExpectInvalid(const Bytes& b, const std::string& field) {
  Result<Header> r = Decode(b);
  ASSERT_FALSE(r.ok()) << "accepted a header with a bad " << field;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(field + ":"));
}

TEST(WireHeader, RefusesBadMagicVersionTypeFlagsAndStatus) {
  Bytes b = Encode(WriteRequest());
  b[0] ^= 1;
  ExpectInvalid(b, "magic");

  b = Encode(WriteRequest());
  b[4] = 2;
  ExpectInvalid(b, "version");

  b = Encode(WriteRequest());
  b[6] = 99;
  ExpectInvalid(b, "type");

  b = Encode(WriteRequest());
  b[8] |= 0x80;
  ExpectInvalid(b, "flags");

  Header h = WriteRequest();
  h.flags = kFlagResponse;
  h.length = 0;
  h.status = -5;
  ExpectInvalid(Encode(h), "status");
}

TEST(WireHeader, RefusesOversizeAndInconsistentLengths) {
  Header h = WriteRequest();
  h.length = kMaxPayload + 1;
  h.count = kMaxPayload + kBlockSize;
  ExpectInvalid(Encode(h), "length");

  h = WriteRequest();
  h.length = kBlockSize;  // count is two blocks
  ExpectInvalid(Encode(h), "length");

  h = Header{};
  h.type = MsgType::kRead;
  h.count = kBlockSize;
  h.length = kBlockSize;  // a READ request carries no data
  ExpectInvalid(Encode(h), "length");

  h = Header{};
  h.type = MsgType::kFlush;
  h.length = 1;
  ExpectInvalid(Encode(h), "length");

  h = Header{};
  h.type = MsgType::kRead;
  h.flags = kFlagResponse;
  h.count = 2 * kBlockSize;
  h.length = kBlockSize;  // a successful READ answers `count` bytes
  ExpectInvalid(Encode(h), "length");

  h = Header{};
  h.type = MsgType::kWrite;
  h.flags = kFlagResponse;
  h.length = 1;
  ExpectInvalid(Encode(h), "length");
}

TEST(WireHeader, RefusesUnalignedDataRequests) {
  Header h = WriteRequest();
  h.offset = 512;
  ExpectInvalid(Encode(h), "offset");

  h = Header{};
  h.type = MsgType::kTrim;
  h.count = 100;
  ExpectInvalid(Encode(h), "count");

  // Responses echo the request; their alignment is not re-checked, only their length.
  h.flags = kFlagResponse;
  EXPECT_TRUE(Decode(Encode(h)).ok());
}

TEST(WireHeader, HandshakeAndControlRequestsNeedAPayload) {
  for (MsgType t : {MsgType::kHello, MsgType::kAuth, MsgType::kAuthOk, MsgType::kControl}) {
    Header h;
    h.type = t;
    ExpectInvalid(Encode(h), "length");
    h.length = 10;
    EXPECT_TRUE(Decode(Encode(h)).ok()) << MsgTypeName(t);
  }
  // An OK ControlResponse with nothing to report serializes to zero bytes.
  Header h;
  h.type = MsgType::kControl;
  h.flags = kFlagResponse;
  EXPECT_TRUE(Decode(Encode(h)).ok());
}

TEST(WireHeader, TypeNames) {
  EXPECT_EQ(MsgTypeName(MsgType::kRead), "READ");
  EXPECT_EQ(MsgTypeName(MsgType::kControl), "CONTROL");
  EXPECT_EQ(MsgTypeName(MsgType::kWriteZeroes), "WRITE_ZEROES");
  EXPECT_EQ(MsgTypeName(static_cast<MsgType>(77)), "TYPE(77)");
}

std::string ToHex(const std::string& s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += kDigits[c >> 4];
    out += kDigits[c & 0xf];
  }
  return out;
}

TEST(WireAuth, MacIsHmacSha256OfTheConcatenation) {
  // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
  EXPECT_EQ(ToHex(AuthMac("Jefe", "what do ya ", "want for ", "nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(WireAuth, MacDependsOnSecretNoncesAndLabel) {
  const std::string sn(kNonceSize, 'a');
  const std::string cn(kNonceSize, 'b');
  const std::string base = AuthMac("secret", kClientLabel, sn, cn);
  EXPECT_EQ(base.size(), 32u);
  EXPECT_EQ(base, AuthMac("secret", kClientLabel, sn, cn));
  EXPECT_NE(base, AuthMac("secret2", kClientLabel, sn, cn));
  EXPECT_NE(base, AuthMac("secret", kServerLabel, sn, cn));
  EXPECT_NE(base, AuthMac("secret", kClientLabel, std::string(kNonceSize, 'c'), cn));
  EXPECT_NE(base, AuthMac("secret", kClientLabel, sn, std::string(kNonceSize, 'c')));
}

TEST(WireErrno, MapsStatusCodesBothWays) {
  EXPECT_EQ(StatusToErrno(Status::OK()), 0);
  EXPECT_EQ(StatusToErrno(Internal("x")), EIO);
  EXPECT_EQ(StatusToErrno(Unavailable("x")), EIO);
  EXPECT_EQ(StatusToErrno(FailedPrecondition("x")), ESTALE);
  EXPECT_EQ(StatusToErrno(InvalidArgument("x")), EINVAL);
  EXPECT_EQ(StatusToErrno(NotFound("x")), ENOENT);
  EXPECT_EQ(StatusToErrno(ResourceExhausted("x")), ENOSPC);
  EXPECT_EQ(StatusToErrno(PermissionDenied("x")), EROFS);

  EXPECT_TRUE(ErrnoToStatus(0, "read").ok());
  EXPECT_EQ(ErrnoToStatus(ESTALE, "read").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrnoToStatus(EINVAL, "read").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoToStatus(ENOENT, "read").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(ENOSPC, "read").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EROFS, "write").code(), StatusCode::kPermissionDenied);
  const Status eio = ErrnoToStatus(EIO, "write at 4096");
  EXPECT_EQ(eio.code(), StatusCode::kInternal);
  EXPECT_THAT(eio.message(), HasSubstr("write at 4096"));
}

// ---- Sockets ----

struct SocketPair {
  std::unique_ptr<Connection> a;
  int b = -1;  // raw end
  SocketPair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
    a = std::make_unique<Connection>(fds[0], "pair");
    b = fds[1];
  }
  ~SocketPair() {
    if (b >= 0) ::close(b);
  }
  void WriteRaw(const void* data, std::size_t n) {
    ASSERT_EQ(::send(b, data, n, MSG_NOSIGNAL), static_cast<ssize_t>(n));
  }
  void CloseRaw() {
    ::close(b);
    b = -1;
  }
};

TEST(WireConnection, SendAndReceiveAFrameWithPayload) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Connection left(fds[0], "left");
  Connection right(fds[1], "right");
  std::string data(2 * kBlockSize, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  Header h = WriteRequest();
  h.length = 0;  // Send sets it
  std::thread sender([&] {
    EXPECT_TRUE(
        left.Send(h, {reinterpret_cast<const std::uint8_t*>(data.data()), data.size()}).ok());
  });
  Header got;
  std::string payload;
  ASSERT_TRUE(right.Receive(&got, &payload).ok());
  sender.join();
  EXPECT_EQ(got.type, MsgType::kWrite);
  EXPECT_EQ(got.length, data.size());
  EXPECT_EQ(got.handle, h.handle);
  EXPECT_EQ(payload, data);
}

TEST(WireConnection, LargePayloadArrivesWhole) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Connection left(fds[0], "left");
  Connection right(fds[1], "right");
  std::vector<std::uint8_t> data(4 << 20);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 31 + 5);
  Header h;
  h.type = MsgType::kWrite;
  h.count = static_cast<std::uint32_t>(data.size());
  std::thread sender([&] { EXPECT_TRUE(left.Send(h, data).ok()); });
  Header got;
  std::string payload;
  ASSERT_TRUE(right.Receive(&got, &payload).ok());
  sender.join();
  ASSERT_EQ(payload.size(), data.size());
  EXPECT_EQ(std::memcmp(payload.data(), data.data(), data.size()), 0);
}

TEST(WireConnection, TruncatedFrameIsUnavailable) {
  SocketPair p;
  Header h = WriteRequest();
  const Bytes b = Encode(h);
  p.WriteRaw(b.data(), b.size());
  p.WriteRaw("abc", 3);  // 8192 promised
  p.CloseRaw();
  Header got;
  std::string payload;
  const Status s = p.a->Receive(&got, &payload);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("3 of 8192"));
}

TEST(WireConnection, TruncatedHeaderIsUnavailable) {
  SocketPair p;
  const Bytes b = Encode(WriteRequest());
  p.WriteRaw(b.data(), 20);
  p.CloseRaw();
  Header got;
  std::string payload;
  const Status s = p.a->Receive(&got, &payload);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("frame header"));
}

TEST(WireConnection, CleanCloseIsUnavailable) {
  SocketPair p;
  p.CloseRaw();
  Header got;
  std::string payload;
  EXPECT_EQ(p.a->Receive(&got, &payload).code(), StatusCode::kUnavailable);
}

TEST(WireConnection, OversizeLengthIsInvalidAndKillsTheConnection) {
  SocketPair p;
  Bytes b = Encode(WriteRequest());
  // length = count = kMaxPayload + 4096
  const std::uint32_t big = kMaxPayload + kBlockSize;
  for (int i = 0; i < 4; ++i) {
    b[32 + i] = static_cast<std::uint8_t>(big >> (8 * i));
    b[36 + i] = static_cast<std::uint8_t>(big >> (8 * i));
  }
  p.WriteRaw(b.data(), b.size());
  // A valid frame right behind it must not be read: the stream is dead.
  const Bytes ok = Encode(Header{.type = MsgType::kFlush});
  p.WriteRaw(ok.data(), ok.size());
  Header got;
  std::string payload;
  const Status s = p.a->Receive(&got, &payload);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("length"));
  EXPECT_EQ(p.a->Receive(&got, &payload).code(), StatusCode::kUnavailable);
}

TEST(WireConnection, ReceiveIntoRefusesAPayloadThatDoesNotFit) {
  SocketPair p;
  Header h;
  h.type = MsgType::kRead;
  h.flags = kFlagResponse;
  h.count = h.length = 2 * kBlockSize;
  const Bytes b = Encode(h);
  p.WriteRaw(b.data(), b.size());
  std::vector<std::uint8_t> buf(kBlockSize);
  Header got;
  const Status s = p.a->ReceiveInto(&got, buf);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("do not fit"));
}

TEST(WireConnection, ReceiveIntoFillsTheBuffer) {
  SocketPair p;
  Header h;
  h.type = MsgType::kRead;
  h.flags = kFlagResponse;
  h.handle = 42;
  h.count = h.length = kBlockSize;
  const Bytes b = Encode(h);
  p.WriteRaw(b.data(), b.size());
  const std::string data(kBlockSize, 'x');
  p.WriteRaw(data.data(), data.size());
  std::vector<std::uint8_t> buf(2 * kBlockSize, 0);
  Header got;
  ASSERT_TRUE(p.a->ReceiveInto(&got, buf).ok());
  EXPECT_EQ(got.handle, 42u);
  EXPECT_EQ(buf[0], 'x');
  EXPECT_EQ(buf[kBlockSize - 1], 'x');
  EXPECT_EQ(buf[kBlockSize], 0);
}

TEST(WireConnection, ShutdownWakesABlockedReceiver) {
  SocketPair p;
  Status s;
  std::thread receiver([&] {
    Header got;
    std::string payload;
    s = p.a->Receive(&got, &payload);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  p.a->Shutdown();
  receiver.join();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
}

// A TCP listener on 127.0.0.1 with a port chosen by the kernel.
class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0 || ::listen(fd_, 8) != 0) {
      std::abort();
    }
    socklen_t len = sizeof(sin);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sin), &len);
    port_ = ntohs(sin.sin_port);
  }
  ~Listener() { ::close(fd_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::unique_ptr<Connection> Accept() {
    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return nullptr;
    return std::make_unique<Connection>(c, "client");
  }

 private:
  int fd_;
  int port_ = 0;
};

struct HandshakeOutcome {
  Status client;
  Status server;
  std::string client_name;
};

HandshakeOutcome Handshake(const std::string& client_secret, const std::string& server_secret) {
  Listener listener;
  HandshakeOutcome out;
  std::thread server([&] {
    std::unique_ptr<Connection> conn = listener.Accept();
    ASSERT_NE(conn, nullptr);
    out.server = ServerHandshake(*conn, server_secret, "node-a", &out.client_name);
  });
  Result<std::unique_ptr<Connection>> conn =
      Dial(listener.address(), client_secret, "vol1-engine", 10000);
  out.client = conn.status();
  server.join();
  return out;
}

TEST(WireHandshake, RightSecretAuthenticatesBothSides) {
  const HandshakeOutcome out = Handshake("s3cret", "s3cret");
  EXPECT_TRUE(out.client.ok()) << out.client;
  EXPECT_TRUE(out.server.ok()) << out.server;
  EXPECT_EQ(out.client_name, "vol1-engine");
}

TEST(WireHandshake, WrongSecretIsPermissionDeniedOnBothSides) {
  const HandshakeOutcome out = Handshake("guess", "s3cret");
  EXPECT_EQ(out.client.code(), StatusCode::kPermissionDenied) << out.client;
  EXPECT_EQ(out.server.code(), StatusCode::kPermissionDenied) << out.server;
  EXPECT_THAT(out.server.message(), HasSubstr("vol1-engine"));
  EXPECT_THAT(out.client.message(), HasSubstr("node-a"));
}

TEST(WireHandshake, ClientRejectsAServerThatDoesNotKnowTheSecret) {
  // A fake server that sends Hello and answers any Auth with a made-up AuthOk.
  Listener listener;
  std::thread server([&] {
    std::unique_ptr<Connection> conn = listener.Accept();
    ASSERT_NE(conn, nullptr);
    v1::Hello hello;
    hello.set_server_nonce(std::string(kNonceSize, 'n'));
    hello.set_node("impostor");
    std::string payload = hello.SerializeAsString();
    ASSERT_TRUE(conn->Send(Header{.type = MsgType::kHello},
                           {reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()})
                    .ok());
    Header h;
    ASSERT_TRUE(conn->Receive(&h, &payload).ok());
    v1::AuthOk ok;
    ok.set_mac(std::string(32, 'm'));
    payload = ok.SerializeAsString();
    conn->Send(Header{.type = MsgType::kAuthOk, .flags = kFlagResponse},
               {reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()})
        .IgnoreError();
  });
  Result<std::unique_ptr<Connection>> conn = Dial(listener.address(), "s3cret", "t", 10000);
  server.join();
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(conn.status().message(), HasSubstr("impostor"));
}

TEST(WireHandshake, SilentServerTimesOut) {
  Listener listener;  // accepts (backlog) but never says Hello
  const auto start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<Connection>> conn = Dial(listener.address(), "s", "t", 300);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kUnavailable) << conn.status();
  EXPECT_LT(took, std::chrono::seconds(20));
}

TEST(WireHandshake, NobodyListeningIsUnavailable) {
  std::string address;
  {
    Listener listener;
    address = listener.address();
  }  // closed: the port refuses connections now
  Result<std::unique_ptr<Connection>> conn = Dial(address, "s", "t", 5000);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kUnavailable) << conn.status();
}

TEST(WireHandshake, BadAddressIsInvalidArgument) {
  EXPECT_EQ(Dial("no-port", "s", "t", 1000).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Dial("unix:", "s", "t", 1000).status().code(), StatusCode::kInvalidArgument);
}

TEST(WireHandshake, UnixSocketAddressAndCall) {
  const std::string dir = ::testing::TempDir() + "/wire-unix-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/s.sock";
  std::filesystem::remove(path);
  const int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::strncpy(sun.sun_path, path.c_str(), sizeof(sun.sun_path) - 1);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);

  std::thread server([&] {
    const int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(c, 0);
    Connection conn(c, "client");
    std::string name;
    ASSERT_TRUE(ServerHandshake(conn, "k", "node-u", &name).ok());
    // Answer two control requests: a get with NotFound, a list with OK and an empty body.
    for (int i = 0; i < 2; ++i) {
      Header h;
      std::string payload;
      ASSERT_TRUE(conn.Receive(&h, &payload).ok());
      v1::ControlRequest req;
      ASSERT_TRUE(req.ParseFromString(payload));
      v1::ControlResponse resp;
      if (req.has_get()) {
        resp.set_code(static_cast<int>(StatusCode::kNotFound));
        resp.set_message("replica \"" + req.get().replica() + "\" does not exist");
      }
      payload = resp.SerializeAsString();
      ASSERT_TRUE(
          conn.Send(Header{.type = MsgType::kControl, .flags = kFlagResponse, .handle = h.handle},
                    {reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()})
              .ok());
    }
  });
  Result<std::unique_ptr<Connection>> conn = Dial("unix:" + path, "k", "t", 10000);
  ASSERT_TRUE(conn.ok()) << conn.status();
  v1::ControlRequest req;
  req.mutable_get()->set_replica("r0");
  v1::ControlResponse resp;
  const Status s = Call(**conn, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("\"r0\""));
  EXPECT_EQ(resp.code(), static_cast<int>(StatusCode::kNotFound));
  req.set_list(true);
  EXPECT_TRUE(Call(**conn, req, &resp).ok());
  server.join();
  ::close(lfd);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hci::replicated::wire
