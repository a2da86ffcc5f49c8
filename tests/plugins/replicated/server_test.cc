// hci-replica-server: most behaviour through an in-process ReplicaServer over real TCP
// connections; configuration refusals, SIGTERM and restart through the real binary.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "process/process.h"
#include "server/replica_server.h"
#include "wire/replica_wire.h"

extern char** environ;

namespace hci::replicated {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using wire::Header;
using wire::MsgType;
using namespace std::chrono_literals;

constexpr char kSecret[] = "correct horse battery staple";
constexpr int kDialMs = 20000;

// Keeps every formatted log line, for assertions about what the server logged.
class CaptureSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string Text() {
    std::lock_guard lock(this->mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t buf;
    this->formatter_->format(msg, buf);
    text_.append(buf.data(), buf.size());
  }
  void flush_() override {}

 private:
  std::string text_;
};

// Waits (generously) until `pred` holds.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

std::string MakeTempDir() {
  std::string templ = ::testing::TempDir() + "/replica-server-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) std::abort();
  return templ;
}

std::span<const std::uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string Pattern(std::size_t size, int seed) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 13 + seed) & 0xff);
  return s;
}

// Sends one data request and returns its response (payload in *out).
Header Exchange(wire::Connection& conn, Header h, const std::string& payload = "",
                std::string* out = nullptr) {
  std::string ignored;
  if (out == nullptr) out = &ignored;
  EXPECT_TRUE(conn.Send(h, Bytes(payload)).ok());
  Header reply;
  const Status s = conn.Receive(&reply, out);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(reply.type, h.type);
  EXPECT_EQ(reply.handle, h.handle);
  EXPECT_NE(reply.flags & wire::kFlagResponse, 0u);
  return reply;
}

Header Data(MsgType type, std::uint64_t offset, std::uint32_t count, std::uint64_t generation,
            std::uint64_t handle = 1) {
  Header h;
  h.type = type;
  h.offset = offset;
  h.count = count;
  h.generation = generation;
  h.handle = handle;
  return h;
}

v1::ControlRequest CreateRequest(const std::string& replica, std::uint64_t size,
                                 std::uint64_t generation) {
  v1::ControlRequest req;
  v1::CreateReplica* c = req.mutable_create();
  c->set_replica(replica);
  c->set_volume("vol1");
  c->set_size_bytes(size);
  c->set_generation(generation);
  return req;
}

v1::ControlRequest OpenRequest(const std::string& replica, const std::string& snapshot = "") {
  v1::ControlRequest req;
  req.mutable_open()->set_replica(replica);
  req.mutable_open()->set_snapshot(snapshot);
  return req;
}

class ReplicaServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    sink_ = std::make_shared<CaptureSink>();
    logger_ = std::make_shared<spdlog::logger>("replica-server-test", sink_);
    logger_->set_level(spdlog::level::debug);
    StartServer();
  }
  void TearDown() override {
    if (server_) {
      EXPECT_TRUE(server_->Stop().ok());
    }
    server_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void StartServer(std::chrono::milliseconds handshake_timeout = 10s) {
    ReplicaServerOptions o;
    o.node = "node-a";
    o.listen = "127.0.0.1:0";
    o.data_dir = dir_ + "/data";
    o.secret = kSecret;
    o.handshake_timeout = handshake_timeout;
    o.logger = logger_;
    Result<std::unique_ptr<ReplicaServer>> s = ReplicaServer::Create(std::move(o));
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_TRUE(server_->Start().ok());
  }

  std::unique_ptr<wire::Connection> Connect() {
    Result<std::unique_ptr<wire::Connection>> c =
        wire::Dial(server_->address(), kSecret, "server-test", kDialMs);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // A connection with `replica` (1 MiB, generation 1) created and opened.
  std::unique_ptr<wire::Connection> Opened(const std::string& replica) {
    auto conn = Connect();
    if (conn == nullptr) return nullptr;
    v1::ControlResponse resp;
    Status s = wire::Call(*conn, CreateRequest(replica, 1 << 20, 1), &resp);
    EXPECT_TRUE(s.ok()) << s;
    s = wire::Call(*conn, OpenRequest(replica), &resp);
    EXPECT_TRUE(s.ok()) << s;
    return conn;
  }

  std::string dir_;
  std::shared_ptr<CaptureSink> sink_;
  std::shared_ptr<spdlog::logger> logger_;
  std::unique_ptr<ReplicaServer> server_;
};

TEST_F(ReplicaServerTest, ListensOnTheKernelsPort) {
  const std::string address = server_->address();
  EXPECT_THAT(address, ::testing::StartsWith("127.0.0.1:"));
  EXPECT_NE(address, "127.0.0.1:0");
  EXPECT_THAT(sink_->Text(), HasSubstr("listening on " + address));
}

TEST_F(ReplicaServerTest, CreateOpenWriteReadFlushThroughTheWire) {
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  v1::ControlResponse resp;
  ASSERT_TRUE(wire::Call(*conn, CreateRequest("vol1-r0", 1 << 20, 3), &resp).ok());
  EXPECT_EQ(resp.code(), 0);
  EXPECT_EQ(resp.info().meta().replica(), "vol1-r0");
  EXPECT_EQ(resp.info().meta().size_bytes(), 1u << 20);
  EXPECT_EQ(resp.info().meta().generation(), 3u);
  ASSERT_TRUE(wire::Call(*conn, OpenRequest("vol1-r0"), &resp).ok());
  EXPECT_EQ(resp.info().meta().generation(), 3u);

  const std::string data = Pattern(2 * wire::kBlockSize, 1);
  Header w = Data(MsgType::kWrite, 4096, static_cast<std::uint32_t>(data.size()), 3, 11);
  w.flags = wire::kFlagFua;
  EXPECT_EQ(Exchange(*conn, w, data).status, 0);

  std::string read;
  Header r = Exchange(*conn, Data(MsgType::kRead, 4096, 8192, 3, 12), "", &read);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.count, 8192u);
  EXPECT_EQ(read, data);

  // Unwritten space reads zeros; WRITE_ZEROES and TRIM zero what was written.
  r = Exchange(*conn, Data(MsgType::kRead, 65536, 4096, 3, 13), "", &read);
  EXPECT_EQ(read, std::string(4096, '\0'));
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kWriteZeroes, 4096, 4096, 3, 14)).status, 0);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kTrim, 8192, 4096, 3, 15)).status, 0);
  Exchange(*conn, Data(MsgType::kRead, 4096, 8192, 3, 16), "", &read);
  EXPECT_EQ(read, std::string(8192, '\0'));

  EXPECT_EQ(Exchange(*conn, Data(MsgType::kFlush, 0, 0, 3, 17)).status, 0);
  ASSERT_TRUE(wire::Call(*conn, OpenRequest("vol1-r0"), &resp).ok());
  EXPECT_FALSE(resp.info().meta().unclean()) << "FLUSH must leave the replica clean";
}

TEST_F(ReplicaServerTest, PipelinedRequestsAreAnsweredInOrder) {
  auto conn = Opened("vol1-r0");
  ASSERT_NE(conn, nullptr);
  constexpr int kRequests = 32;
  std::thread writer([&] {
    for (int i = 0; i < kRequests; ++i) {
      const std::string block = Pattern(4096, i);
      Header h = Data(MsgType::kWrite, static_cast<std::uint64_t>(i) * 4096, 4096, 1,
                      1000 + static_cast<std::uint64_t>(i));
      EXPECT_TRUE(conn->Send(h, Bytes(block)).ok());
    }
  });
  for (int i = 0; i < kRequests; ++i) {
    Header reply;
    std::string payload;
    ASSERT_TRUE(conn->Receive(&reply, &payload).ok());
    EXPECT_EQ(reply.handle, 1000u + static_cast<std::uint64_t>(i));
    EXPECT_EQ(reply.status, 0);
  }
  writer.join();
  std::string read;
  Exchange(*conn, Data(MsgType::kRead, 5 * 4096, 4096, 1), "", &read);
  EXPECT_EQ(read, Pattern(4096, 5));
}

TEST_F(ReplicaServerTest, StaleGenerationIsEstaleAndLoggedOnce) {
  auto conn = Opened("vol1-r0");
  ASSERT_NE(conn, nullptr);
  const std::string data = Pattern(4096, 2);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 2), data).status, ESTALE);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kRead, 0, 4096, 0)).status, ESTALE);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kFlush, 0, 0, 7)).status, ESTALE);
  // The refused write left nothing behind.
  std::string read;
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kRead, 0, 4096, 1), "", &read).status, 0);
  EXPECT_EQ(read, std::string(4096, '\0'));

  // After SetGeneration the old generation is the stale one.
  v1::ControlRequest req;
  req.mutable_set_generation()->set_replica("vol1-r0");
  req.mutable_set_generation()->set_expected_generation(1);
  req.mutable_set_generation()->set_generation(2);
  v1::ControlResponse resp;
  ASSERT_TRUE(wire::Call(*conn, req, &resp).ok());
  EXPECT_EQ(resp.info().meta().generation(), 2u);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 2), data).status, 0);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 1), data).status, ESTALE);

  const std::string log = sink_->Text();
  const std::string needle = "refusing requests at generation";
  const std::size_t first = log.find(needle);
  ASSERT_NE(first, std::string::npos) << log;
  EXPECT_EQ(log.find(needle, first + 1), std::string::npos) << "logged more than once:\n" << log;
}

TEST_F(ReplicaServerTest, DataRequestBeforeOpenIsEinval) {
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kRead, 0, 4096, 1)).status, EINVAL);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 1), Pattern(4096, 0)).status, EINVAL);
  // The connection stays usable.
  v1::ControlRequest list;
  list.set_list(true);
  v1::ControlResponse resp;
  EXPECT_TRUE(wire::Call(*conn, list, &resp).ok());
}

TEST_F(ReplicaServerTest, OutOfRangeRequestIsEinval) {
  auto conn = Opened("vol1-r0");
  ASSERT_NE(conn, nullptr);
  EXPECT_EQ(Exchange(*conn, Data(MsgType::kRead, 1 << 20, 4096, 1)).status, EINVAL);
}

TEST_F(ReplicaServerTest, SnapshotOpenReadsTheSnapshotAndRefusesWrites) {
  auto conn = Opened("vol1-r0");
  ASSERT_NE(conn, nullptr);
  const std::string before = Pattern(4096, 7);
  const std::string after = Pattern(4096, 8);
  ASSERT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 1), before).status, 0);
  v1::ControlRequest snap;
  snap.mutable_snapshot()->set_replica("vol1-r0");
  snap.mutable_snapshot()->set_snapshot("s1");
  v1::ControlResponse resp;
  ASSERT_TRUE(wire::Call(*conn, snap, &resp).ok());
  ASSERT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 1), after).status, 0);

  auto ro = Connect();
  ASSERT_NE(ro, nullptr);
  EXPECT_EQ(wire::Call(*ro, OpenRequest("vol1-r0", "nope"), &resp).code(), StatusCode::kNotFound);
  ASSERT_TRUE(wire::Call(*ro, OpenRequest("vol1-r0", "s1"), &resp).ok());
  std::string read;
  EXPECT_EQ(Exchange(*ro, Data(MsgType::kRead, 0, 4096, 1), "", &read).status, 0);
  EXPECT_EQ(read, before);
  EXPECT_EQ(Exchange(*ro, Data(MsgType::kWrite, 0, 4096, 1), after).status, EROFS);
  EXPECT_EQ(Exchange(*ro, Data(MsgType::kTrim, 0, 4096, 1)).status, EROFS);
  Exchange(*conn, Data(MsgType::kRead, 0, 4096, 1), "", &read);
  EXPECT_EQ(read, after);

  // What changed between the snapshot and the head: the one block written since.
  v1::ControlRequest changed;
  changed.mutable_changed_between()->set_replica("vol1-r0");
  changed.mutable_changed_between()->set_from_snapshot("s1");
  ASSERT_TRUE(wire::Call(*conn, changed, &resp).ok());
  ASSERT_EQ(resp.extents().offsets_size(), 1);
  EXPECT_EQ(resp.extents().offsets(0), 0u);
  EXPECT_EQ(resp.extents().lengths(0), 4096u);
}

// A connection opened with layer_writes fills the snapshot's own layer: the snapshot reads the
// new data, the head keeps its own blocks; fenced by generation like every data request.
TEST_F(ReplicaServerTest, LayerWritesFillTheSnapshotsLayer) {
  auto conn = Opened("vol1-r0");
  ASSERT_NE(conn, nullptr);
  const std::string head = Pattern(4096, 3);
  const std::string layer = Pattern(8192, 4);
  v1::ControlRequest snap;
  snap.mutable_snapshot()->set_replica("vol1-r0");
  snap.mutable_snapshot()->set_snapshot("s1");
  snap.mutable_snapshot()->set_generation(77);
  v1::ControlResponse resp;
  ASSERT_TRUE(wire::Call(*conn, snap, &resp).ok());
  ASSERT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 1), head).status, 0);

  auto fill = Connect();
  ASSERT_NE(fill, nullptr);
  v1::ControlRequest open = OpenRequest("vol1-r0");
  open.mutable_open()->set_layer_writes(true);
  EXPECT_EQ(wire::Call(*fill, open, &resp).code(), StatusCode::kInvalidArgument);
  EXPECT_NE(resp.message().find("layer_writes"), std::string::npos) << resp.message();
  open.mutable_open()->set_snapshot("s1");
  ASSERT_TRUE(wire::Call(*fill, open, &resp).ok());
  bool recorded = false;
  for (const auto& l : resp.info().meta().layers()) recorded |= l.generation() == 77;
  EXPECT_TRUE(recorded) << resp.info().meta().DebugString();
  EXPECT_EQ(Exchange(*fill, Data(MsgType::kWrite, 0, 8192, 2), layer).status, ESTALE);
  ASSERT_EQ(Exchange(*fill, Data(MsgType::kWrite, 0, 8192, 1), layer).status, 0);
  ASSERT_EQ(Exchange(*fill, Data(MsgType::kFlush, 0, 0, 1)).status, 0);
  std::string read;
  ASSERT_EQ(Exchange(*fill, Data(MsgType::kRead, 0, 8192, 1), "", &read).status, 0);
  EXPECT_EQ(read, layer);
  ASSERT_EQ(Exchange(*conn, Data(MsgType::kRead, 0, 8192, 1), "", &read).status, 0);
  EXPECT_EQ(read.substr(0, 4096), head);
  EXPECT_EQ(read.substr(4096), layer.substr(4096));
  ASSERT_EQ(Exchange(*fill, Data(MsgType::kTrim, 4096, 4096, 1)).status, 0);
  ASSERT_EQ(Exchange(*conn, Data(MsgType::kRead, 4096, 4096, 1), "", &read).status, 0);
  EXPECT_EQ(read, std::string(4096, '\0'));
}

TEST_F(ReplicaServerTest, ControlRequestsMapOntoTheStore) {
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  v1::ControlResponse resp;
  v1::ControlRequest get;
  get.mutable_get()->set_replica("missing");
  Status s = wire::Call(*conn, get, &resp);
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s;
  EXPECT_EQ(resp.code(), static_cast<int>(StatusCode::kNotFound));

  EXPECT_EQ(wire::Call(*conn, CreateRequest("Bad_Name", 1 << 20, 1), &resp).code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(wire::Call(*conn, CreateRequest("vol1-r0", 1 << 20, 1), &resp).ok());
  ASSERT_TRUE(wire::Call(*conn, CreateRequest("vol1-r1", 1 << 20, 1), &resp).ok());

  v1::ControlRequest list;
  list.set_list(true);
  ASSERT_TRUE(wire::Call(*conn, list, &resp).ok());
  std::vector<std::string> names;
  for (const auto& info : resp.replicas()) names.push_back(info.meta().replica());
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("vol1-r0", "vol1-r1"));

  v1::ControlRequest gen;
  gen.mutable_set_generation()->set_replica("vol1-r0");
  gen.mutable_set_generation()->set_expected_generation(5);
  gen.mutable_set_generation()->set_generation(6);
  EXPECT_EQ(wire::Call(*conn, gen, &resp).code(), StatusCode::kFailedPrecondition);

  v1::ControlRequest expand;
  expand.mutable_expand()->set_replica("vol1-r0");
  expand.mutable_expand()->set_size_bytes(2 << 20);
  ASSERT_TRUE(wire::Call(*conn, expand, &resp).ok());
  EXPECT_EQ(resp.info().meta().size_bytes(), 2u << 20);

  v1::ControlRequest hashes;
  hashes.mutable_hash_extents()->set_replica("vol1-r0");
  hashes.mutable_hash_extents()->set_offset(0);
  hashes.mutable_hash_extents()->set_length(2 << 20);
  hashes.mutable_hash_extents()->set_extent_bytes(1 << 20);
  ASSERT_TRUE(wire::Call(*conn, hashes, &resp).ok());
  ASSERT_EQ(resp.hashes_size(), 2);
  EXPECT_EQ(resp.hashes(0).size(), 32u);
  EXPECT_EQ(resp.hashes(0), resp.hashes(1));  // both all zeros

  v1::ControlRequest since;
  since.mutable_changed_since()->set_replica("vol1-r0");
  since.mutable_changed_since()->set_generation(1);
  ASSERT_TRUE(wire::Call(*conn, since, &resp).ok());
  EXPECT_EQ(resp.extents().offsets_size(), 0);

  v1::ControlRequest del;
  del.mutable_delete_()->set_replica("vol1-r1");
  ASSERT_TRUE(wire::Call(*conn, del, &resp).ok());
  get.mutable_get()->set_replica("vol1-r1");
  EXPECT_EQ(wire::Call(*conn, get, &resp).code(), StatusCode::kNotFound);

  v1::ControlRequest empty;
  EXPECT_EQ(wire::Call(*conn, empty, &resp).code(), StatusCode::kInvalidArgument);

  // A request this server does not know (a field from a newer protocol) is refused, and the
  // connection stays usable.
  const std::string unknown("\xf8\x06\x01", 3);  // field 111, varint 1
  Header h;
  h.type = MsgType::kControl;
  h.handle = 99;
  ASSERT_TRUE(conn->Send(h, Bytes(unknown)).ok());
  std::string payload;
  ASSERT_TRUE(conn->Receive(&h, &payload).ok());
  EXPECT_EQ(h.handle, 99u);
  ASSERT_TRUE(resp.ParseFromString(payload));
  EXPECT_EQ(resp.code(), static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_THAT(resp.message(), HasSubstr("request"));
  ASSERT_TRUE(wire::Call(*conn, list, &resp).ok());
}

TEST_F(ReplicaServerTest, WrongSecretIsRefusedAndLogged) {
  Result<std::unique_ptr<wire::Connection>> c =
      wire::Dial(server_->address(), "not the secret", "intruder", kDialMs);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kPermissionDenied) << c.status();
  EXPECT_TRUE(Eventually([&] {
    return sink_->Text().find("refused 127.0.0.1:") != std::string::npos;
  })) << sink_->Text();
  EXPECT_THAT(sink_->Text(), HasSubstr("intruder"));
  EXPECT_THAT(sink_->Text(), HasSubstr("[warning]"));
}

TEST_F(ReplicaServerTest, SilentClientIsDroppedAfterTheHandshakeTimeout) {
  ASSERT_TRUE(server_->Stop().ok());
  server_.reset();
  StartServer(300ms);
  const std::string address = server_->address();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port =
      htons(static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
  // Read the Hello, say nothing: the server must hang up (recv then returns 0).
  char buf[4096];
  ssize_t n;
  std::size_t total = 0;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) total += static_cast<std::size_t>(n);
  ::close(fd);
  EXPECT_EQ(n, 0);
  EXPECT_GT(total, wire::kHeaderSize);
  EXPECT_TRUE(Eventually([&] { return sink_->Text().find("refused") != std::string::npos; }))
      << sink_->Text();
}

TEST_F(ReplicaServerTest, StopClosesConnectionsAndFlushes) {
  auto conn = Opened("vol1-r0");
  ASSERT_NE(conn, nullptr);
  ASSERT_EQ(Exchange(*conn, Data(MsgType::kWrite, 0, 4096, 1), Pattern(4096, 3)).status, 0);
  EXPECT_TRUE(Eventually([&] { return server_->connection_count() == 1; }));
  Status receive;
  std::thread reader([&] {
    Header h;
    std::string payload;
    receive = conn->Receive(&h, &payload);
  });
  ASSERT_TRUE(server_->Stop().ok());
  reader.join();
  EXPECT_EQ(receive.code(), StatusCode::kUnavailable);
  Result<std::shared_ptr<Replica>> replica = server_->store().Get("vol1-r0");
  ASSERT_TRUE(replica.ok());
  EXPECT_FALSE((*replica)->Meta().unclean()) << "Stop() must flush every replica";
}

TEST(ReplicaServerCreate, RefusesBadOptions) {
  ReplicaServerOptions o;
  o.node = "Node_A";
  o.listen = "127.0.0.1:0";
  o.data_dir = "/nonexistent-unused";
  o.secret = "s";
  EXPECT_EQ(ReplicaServer::Create(o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(ReplicaServer::Create(o).status().message(), HasSubstr("node"));
  o.node = "node-a";
  o.secret = "";
  EXPECT_THAT(ReplicaServer::Create(o).status().message(), HasSubstr("secret"));
}

TEST(ReadSecretFile, RefusesMissingEmptyAndOpenFiles) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/secret";
  EXPECT_EQ(ReadSecretFile("--secret-file", path).status().code(), StatusCode::kNotFound);
  { std::ofstream(path) << ""; }
  ::chmod(path.c_str(), 0600);
  EXPECT_THAT(ReadSecretFile("--secret-file", path).status().message(), HasSubstr("empty"));
  { std::ofstream(path) << "abc\n"; }
  ::chmod(path.c_str(), 0640);
  Result<std::string> open = ReadSecretFile("--secret-file", path);
  EXPECT_EQ(open.status().code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(open.status().message(), HasSubstr("--secret-file"));
  EXPECT_THAT(open.status().message(), HasSubstr("0640"));
  ::chmod(path.c_str(), 0400);
  Result<std::string> ok = ReadSecretFile("--secret-file", path);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "abc\n");
  fs::remove_all(dir);
}

// ---- The real binary ----

class ReplicaServerBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    secret_file_ = dir_ + "/secret";
    WriteSecret(0600);
  }
  void TearDown() override {
    KillServer();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void WriteSecret(mode_t mode) {
    { std::ofstream(secret_file_, std::ios::trunc) << kSecret; }
    ::chmod(secret_file_.c_str(), mode);
  }

  std::vector<std::string> Argv(const std::string& node = "node-a") {
    return {HCI_REPLICA_SERVER, "--node",       node,           "--listen",
            "127.0.0.1:0",      "--data-dir",   dir_ + "/data", "--secret-file",
            secret_file_,       "--ready-file", ready_file()};
  }
  std::string ready_file() const { return dir_ + "/ready"; }
  std::string log_file() const { return dir_ + "/server.log"; }

  std::string Log() {
    std::ifstream in(log_file());
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Runs the server to completion (it must refuse to start).
  process::RunResult RunToExit(std::vector<std::string> argv) {
    process::RunOptions o;
    o.argv = std::move(argv);
    o.timeout = 60s;
    Result<process::RunResult> r = process::Run(o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : process::RunResult{};
  }

  // Starts the server in the background, as a child we can signal and reap; returns the address
  // from its ready file.
  std::string StartServer() {
    fs::remove(ready_file());
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log_file().c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    std::vector<std::string> args = Argv();
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, argv[0], &actions, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    EXPECT_EQ(rc, 0) << std::strerror(rc);
    if (rc != 0) return "";
    const bool ready = Eventually([&] { return fs::exists(ready_file()) || Exited(); }, 60s);
    EXPECT_TRUE(ready && fs::exists(ready_file())) << Log();
    std::ifstream in(ready_file());
    std::string address;
    std::getline(in, address);
    return address;
  }

  bool Exited() {
    if (pid_ <= 0) return true;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_status_ = status;
      pid_ = -1;
      return true;
    }
    return false;
  }

  // Sends `sig` and waits (up to 60 s) for the exit; the wait status, or -1 on timeout.
  int SignalAndWait(int sig) {
    ::kill(pid_, sig);
    if (!Eventually([&] { return Exited(); }, 60s)) return -1;
    return exit_status_;
  }

  void KillServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

  std::string dir_;
  std::string secret_file_;
  pid_t pid_ = -1;
  int exit_status_ = 0;
};

TEST_F(ReplicaServerBinaryTest, GroupReadableSecretFileExits2) {
  WriteSecret(0640);
  const process::RunResult r = RunToExit(Argv());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.stderr_data, HasSubstr("--secret-file"));
  EXPECT_THAT(r.stderr_data, HasSubstr("group or others"));
  EXPECT_FALSE(fs::exists(ready_file()));
}

TEST_F(ReplicaServerBinaryTest, MissingOrEmptySecretFileExits2) {
  fs::remove(secret_file_);
  process::RunResult r = RunToExit(Argv());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.stderr_data, HasSubstr("--secret-file"));
  { std::ofstream(secret_file_, std::ios::trunc) << ""; }
  ::chmod(secret_file_.c_str(), 0600);
  r = RunToExit(Argv());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.stderr_data, HasSubstr("empty"));
}

TEST_F(ReplicaServerBinaryTest, BadNodeNameAndMissingOptionExit2) {
  process::RunResult r = RunToExit(Argv("Node_A"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.stderr_data, HasSubstr("--node"));
  r = RunToExit({HCI_REPLICA_SERVER, "--node", "node-a"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.stderr_data, HasSubstr("--listen"));
}

TEST_F(ReplicaServerBinaryTest, ServesRefusesWrongSecretAndSurvivesSigtermRestart) {
  const std::string address = StartServer();
  ASSERT_FALSE(address.empty()) << Log();
  EXPECT_THAT(address, ::testing::StartsWith("127.0.0.1:"));

  Result<std::unique_ptr<wire::Connection>> bad = wire::Dial(address, "wrong", "intruder", kDialMs);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kPermissionDenied) << bad.status();
  EXPECT_TRUE(Eventually([&] { return Log().find("refused 127.0.0.1:") != std::string::npos; }))
      << Log();

  const std::string data = Pattern(16 * 4096, 9);
  {
    Result<std::unique_ptr<wire::Connection>> c = wire::Dial(address, kSecret, "test", kDialMs);
    ASSERT_TRUE(c.ok()) << c.status();
    v1::ControlResponse resp;
    ASSERT_TRUE(wire::Call(**c, CreateRequest("vol1-r0", 4 << 20, 1), &resp).ok());
    ASSERT_TRUE(wire::Call(**c, OpenRequest("vol1-r0"), &resp).ok());
    // No FLUSH: the shutdown must flush.
    EXPECT_EQ(Exchange(**c, Data(MsgType::kWrite, 1 << 20, 16 * 4096, 1), data).status, 0);
    EXPECT_EQ(Exchange(**c, Data(MsgType::kWrite, 0, 4096, 9), Pattern(4096, 0)).status, ESTALE);
    // The connection stays open across the SIGTERM: the server must shut it down itself.
    const int status = SignalAndWait(SIGTERM);
    ASSERT_NE(status, -1) << "no exit within 60 s of SIGTERM\n" << Log();
    ASSERT_TRUE(WIFEXITED(status)) << Log();
    EXPECT_EQ(WEXITSTATUS(status), 0) << Log();
    Header h;
    std::string payload;
    EXPECT_EQ((*c)->Receive(&h, &payload).code(), StatusCode::kUnavailable);
  }

  const std::string again = StartServer();
  ASSERT_FALSE(again.empty()) << Log();
  Result<std::unique_ptr<wire::Connection>> c = wire::Dial(again, kSecret, "test", kDialMs);
  ASSERT_TRUE(c.ok()) << c.status();
  v1::ControlResponse resp;
  ASSERT_TRUE(wire::Call(**c, OpenRequest("vol1-r0"), &resp).ok());
  EXPECT_FALSE(resp.info().meta().unclean()) << "SIGTERM must flush every replica";
  std::string read;
  EXPECT_EQ(Exchange(**c, Data(MsgType::kRead, 1 << 20, 16 * 4096, 1), "", &read).status, 0);
  EXPECT_EQ(read, data);
  const int status = SignalAndWait(SIGINT);
  ASSERT_TRUE(WIFEXITED(status)) << Log();
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_THAT(Log(), HasSubstr("received SIGINT"));
}

}  // namespace
}  // namespace hci::replicated
