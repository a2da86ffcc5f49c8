// The replicated plugin: the real hci_replicated.so loaded by hci::Host, against real
// hci-replica-server processes on 127.0.0.1, real nbdkit engines, libnbd and qemu-io as the
// clients of the attached volumes.
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <libnbd.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>

#include "hci/hci.h"
#include "plugin_test_nodes.h"

namespace hci::replicated::plugin_testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::uint64_t kSize = 16 * kMiB;

class NullLogSink final : public LogSink {
 public:
  void Write(const LogRecord&) override {}
};

class EventLog {
 public:
  EventCallback Callback() {
    return [this](const v1::Event& e) {
      std::lock_guard lock(mu_);
      events_.push_back(e);
      cv_.notify_all();
    };
  }
  /// Waits up to 10 s for an event with `reason` about `name`.
  std::optional<v1::Event> WaitFor(const std::string& reason, const std::string& name) {
    std::unique_lock lock(mu_);
    std::optional<v1::Event> found;
    cv_.wait_for(lock, std::chrono::seconds(10), [&] {
      for (const auto& e : events_) {
        if (e.reason() == reason && e.object().name() == name) {
          found = e;
          return true;
        }
      }
      return false;
    });
    return found;
  }
  int Count(const std::string& reason, const std::string& name) {
    std::lock_guard lock(mu_);
    int n = 0;
    for (const auto& e : events_) n += e.reason() == reason && e.object().name() == name;
    return n;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::Event> events_;
};

std::string JsonOf(const google::protobuf::Message& m) {
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out);
  return out;
}

// A libnbd connection to an attached volume's socket.
class Nbd {
 public:
  explicit Nbd(const std::string& socket) : h_(nbd_create()) {
    if (nbd_connect_unix(h_, socket.c_str()) != 0) {
      ADD_FAILURE() << "nbd_connect_unix " << socket << ": " << nbd_get_error();
      nbd_close(h_);
      h_ = nullptr;
    }
  }
  ~Nbd() {
    if (h_ != nullptr) {
      nbd_shutdown(h_, 0);
      nbd_close(h_);
    }
  }
  bool ok() const { return h_ != nullptr; }
  int64_t Size() { return nbd_get_size(h_); }
  void Write(std::uint64_t offset, std::uint64_t length, std::uint8_t byte) {
    std::vector<std::uint8_t> buf(length, byte);
    ASSERT_EQ(nbd_pwrite(h_, buf.data(), buf.size(), offset, 0), 0) << nbd_get_error();
  }
  void Flush() { ASSERT_EQ(nbd_flush(h_, 0), 0) << nbd_get_error(); }
  // The bytes at [offset, offset + length) when they are all `byte`, else a description.
  std::string Check(std::uint64_t offset, std::uint64_t length, std::uint8_t byte) {
    std::vector<std::uint8_t> buf(length);
    if (nbd_pread(h_, buf.data(), buf.size(), offset, 0) != 0) {
      return std::string("read failed: ") + nbd_get_error();
    }
    for (std::size_t i = 0; i < buf.size(); ++i) {
      if (buf[i] != byte) {
        return "byte " + std::to_string(offset + i) + " is " + std::to_string(buf[i]) +
               ", expected " + std::to_string(byte);
      }
    }
    return "";
  }

 private:
  nbd_handle* h_;
};

class ReplicatedPluginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    nodes_ = TestNodes::Start(3);
    ASSERT_NE(nodes_, nullptr);
    state_dir_ = nodes_->dir() + "/host";
    options_ = nodes_->Options();
    Open();
  }
  void TearDown() override {
    // Detach what a failed test left attached: engines are daemons that outlive the Host.
    if (storage_ != nullptr) {
      auto list = storage_->ListVolumes({});
      if (list.ok()) {
        for (const auto& v : list->volumes()) {
          if (v.status().attached_to().empty()) continue;
          v1::DetachVolumeRequest d;
          d.set_name(v.metadata().name());
          d.set_attacher(v.status().attached_to());
          (void)storage_->DetachVolume(d);
        }
      }
    }
    Close();
    nodes_.reset();
  }

  void Open() {
    v1::HostConfig config;
    config.set_node_name("host-a");
    config.set_state_dir(state_dir_);
    config.add_plugin_dirs(HCI_TEST_PLUGIN_DIR);
    auto* binding = config.mutable_backends()->mutable_storage();
    binding->set_plugin("replicated");
    *binding->mutable_options() = options_;
    HostOptions options;
    options.log_sink = std::make_shared<NullLogSink>();
    auto host = Host::Open(config, options);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(host).MoveValueUnsafe();
    subscription_ = host_->Subscribe(events_.Callback());
    auto storage = host_->storage();
    ASSERT_TRUE(storage.ok()) << storage.status();
    storage_ = *storage;
  }
  void Close() {
    subscription_.Reset();
    host_.reset();
    storage_ = nullptr;
  }

  Result<v1::Volume> Create(const std::string& name, std::uint64_t size = kSize,
                            std::uint32_t replicas = 0) {
    v1::CreateVolumeRequest r;
    r.mutable_metadata()->set_name(name);
    r.mutable_spec()->set_size_bytes(size);
    r.mutable_spec()->set_replica_count(replicas);
    return storage_->CreateVolume(r);
  }
  Result<v1::Volume> Get(const std::string& name) {
    v1::GetVolumeRequest r;
    r.set_name(name);
    return storage_->GetVolume(r);
  }
  Result<v1::AttachInfo> Attach(const std::string& name, const std::string& who = "vm-a") {
    v1::AttachVolumeRequest r;
    r.set_name(name);
    r.set_attacher(who);
    return storage_->AttachVolume(r);
  }
  Status Detach(const std::string& name, const std::string& who = "vm-a") {
    v1::DetachVolumeRequest r;
    r.set_name(name);
    r.set_attacher(who);
    return storage_->DetachVolume(r);
  }
  Status Delete(const std::string& name) {
    v1::DeleteVolumeRequest r;
    r.set_name(name);
    return storage_->DeleteVolume(r);
  }
  Result<v1::Snapshot> Snapshot(const std::string& volume, const std::string& name) {
    v1::CreateSnapshotRequest r;
    r.set_volume(volume);
    r.mutable_metadata()->set_name(name);
    return storage_->CreateSnapshot(r);
  }
  std::vector<std::string> SnapshotNames(const std::string& volume) {
    v1::ListSnapshotsRequest r;
    r.set_volume(volume);
    auto list = storage_->ListSnapshots(r);
    EXPECT_TRUE(list.ok()) << list.status();
    std::vector<std::string> names;
    if (list.ok()) {
      for (const auto& s : list->snapshots()) names.push_back(s.metadata().name());
    }
    return names;
  }

  // The unix socket path of an AttachInfo's blockdev, after checking its shape.
  static std::string SocketOf(const v1::AttachInfo& info) {
    const auto& f = info.blockdev().fields();
    EXPECT_EQ(f.count("driver"), 1u);
    EXPECT_EQ(f.count("server"), 1u);
    if (f.count("driver") == 0 || f.count("server") == 0) return "";
    EXPECT_EQ(f.at("driver").string_value(), "nbd");
    const auto& server = f.at("server").struct_value().fields();
    EXPECT_EQ(server.count("type"), 1u);
    EXPECT_EQ(server.count("path"), 1u);
    if (server.count("type") == 0 || server.count("path") == 0) return "";
    EXPECT_EQ(server.at("type").string_value(), "unix");
    return server.at("path").string_value();
  }

  std::unique_ptr<TestNodes> nodes_;
  std::string state_dir_;
  google::protobuf::Struct options_;
  EventLog events_;
  Subscription subscription_;
  std::unique_ptr<Host> host_;
  StorageBackend* storage_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Create, placement, errors

TEST_F(ReplicatedPluginTest, CreateMakesHealthyReplicasOnDistinctNodesAtGenerationOne) {
  auto caps = storage_->Capabilities();
  EXPECT_TRUE(caps.replication());
  EXPECT_EQ(caps.max_replicas(), 3u);
  EXPECT_TRUE(caps.snapshots() && caps.revert() && caps.changed_blocks());
  EXPECT_FALSE(caps.clone() || caps.from_image() || caps.expand() || caps.online_expand());

  auto created = Create("vol1");
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_FALSE(created->metadata().uid().empty());
  EXPECT_EQ(created->spec().replica_count(), 3u);
  EXPECT_EQ(created->status().capacity_bytes(), kSize);

  auto got = Get("vol1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  EXPECT_EQ(got->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*got);
  EXPECT_GT(got->status().actual_size_bytes(), 0u);
  EXPECT_LT(got->status().actual_size_bytes(), kSize) << "replicas are sparse";
  ASSERT_EQ(got->status().replicas_size(), 3) << JsonOf(*got);
  std::set<std::string> nodes, names;
  for (const auto& r : got->status().replicas()) {
    EXPECT_EQ(r.state(), v1::REPLICA_STATE_HEALTHY) << JsonOf(*got);
    EXPECT_EQ(r.generation(), 1u);
    nodes.insert(r.node());
    names.insert(r.name());
  }
  EXPECT_EQ(nodes, (std::set<std::string>{"node0", "node1", "node2"}));
  EXPECT_EQ(names, (std::set<std::string>{"vol1-r0", "vol1-r1", "vol1-r2"}));
  for (const auto& r : got->status().replicas()) {
    const int node = r.node().back() - '0';
    EXPECT_TRUE(nodes_->HasReplica(node, r.name())) << r.name() << " on " << r.node();
  }
  EXPECT_TRUE(events_.WaitFor("VolumeHealthy", "vol1").has_value());

  // Idempotent by name.
  auto again = Create("vol1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->metadata().uid(), created->metadata().uid());
  auto other = Create("vol1", 2 * kSize);
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists) << other.status();

  // Survives the Host.
  Close();
  Open();
  auto reopened = Get("vol1");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(reopened->metadata().uid(), created->metadata().uid());
  EXPECT_EQ(reopened->status().replicas_size(), 3);
}

TEST_F(ReplicatedPluginTest, MoreReplicasThanNodesIsResourceExhausted) {
  auto refused = Create("big", kSize, 4);
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(refused.status().message(),
              HasSubstr("spec.replica_count: 4 replicas need 4 storage nodes, 3 are configured"));
  EXPECT_EQ(Get("big").status().code(), StatusCode::kNotFound);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(nodes_->HasReplica(i, "big-r0"));
}

TEST_F(ReplicatedPluginTest, BadSpecsAreRefusedNamingTheField) {
  auto unaligned = Create("odd", 4097);
  EXPECT_EQ(unaligned.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(unaligned.status().message(), HasSubstr("spec.size_bytes"));
  auto empty = Create("empty", 0);
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("spec.size_bytes"));

  v1::CreateVolumeRequest clone;
  clone.mutable_metadata()->set_name("clone");
  clone.mutable_spec()->set_size_bytes(kSize);
  clone.mutable_spec()->mutable_source()->set_volume("odd");
  EXPECT_EQ(storage_->CreateVolume(clone).status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(storage_->ListVolumes({})->volumes_size(), 0);
}

TEST_F(ReplicatedPluginTest, PlacementSpreadsReplicasOverTheLeastLoadedNodes) {
  std::map<std::string, int> per_node;
  for (int i = 0; i < 6; ++i) {
    auto v = Create("one-" + std::to_string(i), kSize, 1);
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_EQ(v->status().replicas_size(), 1);
    ++per_node[v->status().replicas(0).node()];
  }
  EXPECT_EQ(per_node, (std::map<std::string, int>{{"node0", 2}, {"node1", 2}, {"node2", 2}}));
  // Two replicas go to the two nodes with the fewest (ties by name).
  auto v = Create("one-x", kSize, 1);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->status().replicas(0).node(), "node0");
  auto two = Create("two", kSize, 2);
  ASSERT_TRUE(two.ok()) << two.status();
  std::set<std::string> got;
  for (const auto& r : two->status().replicas()) got.insert(r.node());
  EXPECT_EQ(got, (std::set<std::string>{"node1", "node2"}));
}

TEST_F(ReplicatedPluginTest, CreateWithANodeDownIsUnavailableAndLeavesNothing) {
  nodes_->Kill(2);
  auto refused = Create("partial");
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("node2"));
  EXPECT_EQ(Get("partial").status().code(), StatusCode::kNotFound);
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < 3; ++k) {
      EXPECT_FALSE(nodes_->HasReplica(i, "partial-r" + std::to_string(k)))
          << "a replica of the failed create is left on node" << i;
    }
  }
}

TEST_F(ReplicatedPluginTest, BadOptionsAreInvalidArgumentNamingTheOption) {
  Close();
  auto expect_refused = [&](google::protobuf::Struct options, const std::string& field) {
    options_ = std::move(options);
    v1::HostConfig config;
    config.set_state_dir(state_dir_);
    config.add_plugin_dirs(HCI_TEST_PLUGIN_DIR);
    config.mutable_backends()->mutable_storage()->set_plugin("replicated");
    *config.mutable_backends()->mutable_storage()->mutable_options() = options_;
    HostOptions o;
    o.log_sink = std::make_shared<NullLogSink>();
    auto host = Host::Open(config, o);
    ASSERT_FALSE(host.ok()) << "options with a bad " << field << " were accepted";
    EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument) << host.status();
    EXPECT_THAT(host.status().message(), HasSubstr(field));
  };
  auto base = nodes_->Options();
  auto no_secret = base;
  no_secret.mutable_fields()->erase("secret_file");
  expect_refused(no_secret, "secret_file");
  auto missing_secret = base;
  (*missing_secret.mutable_fields())["secret_file"].set_string_value(nodes_->dir() + "/nope");
  expect_refused(missing_secret, "secret_file");
  auto bad_address = base;
  (*(*bad_address.mutable_fields())["nodes"]
        .mutable_list_value()
        ->mutable_values(1)
        ->mutable_struct_value()
        ->mutable_fields())["address"]
      .set_string_value("node-b");
  expect_refused(bad_address, "nodes[1].address");
  auto bad_name = base;
  (*(*bad_name.mutable_fields())["nodes"]
        .mutable_list_value()
        ->mutable_values(0)
        ->mutable_struct_value()
        ->mutable_fields())["name"]
      .set_string_value("Node_0");
  expect_refused(bad_name, "nodes[0].name");
  auto too_many = base;
  (*too_many.mutable_fields())["replicas"].set_number_value(4);
  expect_refused(too_many, "replicas");
  auto unknown = base;
  (*unknown.mutable_fields())["replica"].set_number_value(2);
  expect_refused(unknown, "replica");
  auto no_engine = base;
  (*no_engine.mutable_fields())["engine_plugin"].set_string_value("/nonexistent/engine.so");
  expect_refused(no_engine, "engine_plugin");
  options_ = base;
}

// ---------------------------------------------------------------------------------------------
// Attach: the data path

TEST_F(ReplicatedPluginTest, AttachServesNbdThatSurvivesDetachAndReattach) {
  ASSERT_TRUE(Create("data").ok());
  auto info = Attach("data");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->path().empty());
  const std::string socket = SocketOf(*info);
  ASSERT_FALSE(socket.empty()) << JsonOf(*info);
  {
    Nbd nbd(socket);
    ASSERT_TRUE(nbd.ok());
    EXPECT_EQ(nbd.Size(), static_cast<int64_t>(kSize));
    nbd.Write(0, 64 * 1024, 0x5a);
    nbd.Write(kSize - 4096, 4096, 0xa5);
    nbd.Flush();
  }
  auto attached = Get("data");
  ASSERT_TRUE(attached.ok());
  EXPECT_EQ(attached->status().phase(), v1::VOLUME_PHASE_ATTACHED);
  EXPECT_EQ(attached->status().attached_to(), "vm-a");
  EXPECT_EQ(attached->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*attached);
  for (const auto& r : attached->status().replicas()) {
    EXPECT_EQ(r.state(), v1::REPLICA_STATE_HEALTHY) << JsonOf(*attached);
    EXPECT_GE(r.generation(), 2u) << "the engine moves the replicas to a new generation";
  }
  // Same attacher: the same engine; another one: refused; delete: refused.
  auto same = Attach("data");
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(SocketOf(*same), socket);
  EXPECT_EQ(Attach("data", "vm-b").status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Delete("data").code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Detach("data", "vm-b").ok());
  EXPECT_EQ(Get("data")->status().attached_to(), "vm-a");

  ASSERT_TRUE(Detach("data").ok());
  EXPECT_FALSE(std::filesystem::exists(socket)) << "the engine's socket outlived the detach";
  auto detached = Get("data");
  ASSERT_TRUE(detached.ok());
  EXPECT_EQ(detached->status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  EXPECT_TRUE(detached->status().attached_to().empty());
  EXPECT_EQ(detached->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*detached);
  EXPECT_GE(detached->status().actual_size_bytes(), 64u * 1024);

  auto again = Attach("data", "vm-b");
  ASSERT_TRUE(again.ok()) << again.status();
  Nbd nbd(SocketOf(*again));
  ASSERT_TRUE(nbd.ok());
  EXPECT_EQ(nbd.Check(0, 64 * 1024, 0x5a), "");
  EXPECT_EQ(nbd.Check(64 * 1024, 4096, 0), "");
  EXPECT_EQ(nbd.Check(kSize - 4096, 4096, 0xa5), "");
  EXPECT_TRUE(events_.WaitFor("VolumeAttached", "data").has_value());
  EXPECT_TRUE(events_.WaitFor("VolumeDetached", "data").has_value());
}

// QEMU opens exactly the blockdev options the kvm plugin passes to -blockdev.
TEST_F(ReplicatedPluginTest, QemuOpensTheBlockdevOptions) {
  ASSERT_TRUE(Create("qemu").ok());
  auto info = Attach("qemu");
  ASSERT_TRUE(info.ok()) << info.status();
  google::protobuf::Value blockdev;
  *blockdev.mutable_struct_value() = info->blockdev();
  // As the kvm plugin adds it before passing the object to -blockdev.
  (*blockdev.mutable_struct_value()->mutable_fields())["node-name"].set_string_value("disk0");
  const std::string json = "json:" + JsonOf(blockdev);
  process::RunOptions run;
  run.argv = {"qemu-io",        "-c", "write -P 0x3c 1M 256k", "-c",
              "flush",          "-c", "read -P 0x3c 1M 256k",  "-c",
              "read -P 0 0 4k", json};
  run.timeout = std::chrono::seconds(60);
  auto r = process::Run(run);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success()) << r->stdout_data << r->stderr_data;
  EXPECT_THAT(r->stdout_data, HasSubstr("wrote 262144/262144 bytes"));
  EXPECT_THAT(r->stdout_data, HasSubstr("read 262144/262144 bytes"));
  EXPECT_THAT(r->stdout_data + r->stderr_data, ::testing::Not(HasSubstr("verification failed")));
  Nbd nbd(SocketOf(*info));
  ASSERT_TRUE(nbd.ok());
  EXPECT_EQ(nbd.Check(kMiB, 256 * 1024, 0x3c), "");
}

// A state directory too deep for a unix socket address: the sockets go to a short private
// directory under /tmp, found again after a restart of the Host.
TEST_F(ReplicatedPluginTest, SocketsOfADeepStateDirectoryGoToAShortPath) {
  Close();
  const std::string deep = state_dir_ + "/" + std::string(60, 'd') + "/" + std::string(40, 'e');
  (*options_.mutable_fields())["state_dir"].set_string_value(deep);
  Open();
  ASSERT_TRUE(Create("deep").ok());
  auto info = Attach("deep");
  ASSERT_TRUE(info.ok()) << info.status();
  const std::string socket = SocketOf(*info);
  EXPECT_LT(socket.size(), 108u);
  EXPECT_THAT(socket, ::testing::StartsWith("/tmp/hci-replicated-"));
  EXPECT_TRUE(std::filesystem::exists(deep + "/run/deep/engine.pid"));
  {
    Nbd nbd(socket);
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, 4096, 0x42);
    nbd.Flush();
  }
  Close();
  Open();
  auto same = Attach("deep");
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(SocketOf(*same), socket);
  ASSERT_TRUE(Detach("deep").ok());
  ASSERT_TRUE(Delete("deep").ok());
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(socket).parent_path()))
      << "the socket directory outlived the volume";
}

TEST_F(ReplicatedPluginTest, EngineOutlivesTheHostAndIsFoundAgain) {
  ASSERT_TRUE(Create("keep").ok());
  auto info = Attach("keep");
  ASSERT_TRUE(info.ok()) << info.status();
  const std::string socket = SocketOf(*info);
  const std::string pid_file = state_dir_ + "/plugins/replicated/run/keep/engine.pid";
  const std::string pid_text = ReadAll(pid_file);
  ASSERT_FALSE(pid_text.empty()) << pid_file;
  const pid_t pid = std::stoi(pid_text);
  {
    Nbd nbd(socket);
    ASSERT_TRUE(nbd.ok());
    nbd.Write(8 * kMiB, kMiB, 0x11);
    nbd.Flush();
  }
  Close();
  EXPECT_FALSE(Exited(pid)) << "the engine died with the Host";
  Open();
  auto got = Get("keep");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status().attached_to(), "vm-a");
  EXPECT_EQ(got->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*got);
  auto same = Attach("keep");
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(SocketOf(*same), socket);
  EXPECT_EQ(std::stoi(ReadAll(pid_file)), pid) << "a second engine was started";
  {
    Nbd nbd(socket);
    ASSERT_TRUE(nbd.ok());
    EXPECT_EQ(nbd.Check(8 * kMiB, kMiB, 0x11), "");
  }

  // A dead engine is restarted by the attacher's next attach.
  ::kill(pid, SIGKILL);
  WaitGone(pid);
  auto dead = Get("keep");
  ASSERT_TRUE(dead.ok());
  EXPECT_THAT(dead->status().message(), HasSubstr("engine"));
  auto restarted = Attach("keep");
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_NE(std::stoi(ReadAll(pid_file)), pid);
  Nbd nbd(SocketOf(*restarted));
  ASSERT_TRUE(nbd.ok());
  EXPECT_EQ(nbd.Check(8 * kMiB, kMiB, 0x11), "");
}

// ---------------------------------------------------------------------------------------------
// Health

TEST_F(ReplicatedPluginTest, AKilledNodeShowsAFailedReplicaAndADegradedVolume) {
  ASSERT_TRUE(Create("frail").ok());
  nodes_->Kill(1);
  auto got = Get("frail");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status().robustness(), v1::VOLUME_ROBUSTNESS_DEGRADED) << JsonOf(*got);
  int failed = 0;
  for (const auto& r : got->status().replicas()) {
    if (r.node() == "node1") {
      EXPECT_EQ(r.state(), v1::REPLICA_STATE_FAILED);
      ++failed;
    } else {
      EXPECT_EQ(r.state(), v1::REPLICA_STATE_HEALTHY);
    }
  }
  EXPECT_EQ(failed, 1);
  EXPECT_THAT(got->status().message(), HasSubstr("node1"));
  auto degraded = events_.WaitFor("VolumeDegraded", "frail");
  ASSERT_TRUE(degraded.has_value());
  EXPECT_EQ(degraded->type(), v1::EVENT_TYPE_WARNING);
  auto metrics = storage_->Metrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr("longhorn_volume_robustness{volume=\"frail\"} 2\n"));
  EXPECT_THAT(*metrics, HasSubstr("longhorn_volume_state{volume=\"frail\"} 3\n"));
  EXPECT_THAT(*metrics, HasSubstr("longhorn_volume_capacity_bytes{volume=\"frail\"} " +
                                  std::to_string(kSize) + "\n"));

  // A degraded volume still attaches (a read quorum answers) and takes writes; the engine
  // reports the missing replica, and rebuilds it once its node is back — slowly enough here
  // (1 MiB at 256 KiB/s) that the rebuild is seen.
  Close();
  (*options_.mutable_fields())["rebuild_bytes_per_second"].set_number_value(256 * 1024);
  Open();
  auto info = Attach("frail");
  ASSERT_TRUE(info.ok()) << info.status();
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, kMiB, 0x77);
    nbd.Flush();
  }
  auto attached = Get("frail");
  ASSERT_TRUE(attached.ok());
  EXPECT_EQ(attached->status().robustness(), v1::VOLUME_ROBUSTNESS_DEGRADED) << JsonOf(*attached);
  EXPECT_EQ(attached->status().replicas(1).state(), v1::REPLICA_STATE_FAILED) << JsonOf(*attached);
  ASSERT_TRUE(nodes_->StartServer(1).ok());
  v1::Volume last;
  bool saw_rebuild = false;
  for (int i = 0; i < 600; ++i) {
    auto now = Get("frail");
    ASSERT_TRUE(now.ok());
    last = *now;
    for (const auto& r : last.status().replicas()) {
      if (r.state() != v1::REPLICA_STATE_REBUILDING) continue;
      saw_rebuild = true;
      EXPECT_EQ(r.name(), "frail-r1");
      EXPECT_LE(r.rebuild_progress().done(), r.rebuild_progress().total());
    }
    if (last.status().robustness() == v1::VOLUME_ROBUSTNESS_HEALTHY) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(last.status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(last);
  EXPECT_TRUE(saw_rebuild) << "the rebuild of frail-r1 was never reported";
  EXPECT_TRUE(events_.WaitFor("RebuildStarted", "frail").has_value());
  EXPECT_TRUE(events_.WaitFor("VolumeHealthy", "frail").has_value());
  auto metrics2 = storage_->Metrics();
  ASSERT_TRUE(metrics2.ok());
  EXPECT_THAT(*metrics2, HasSubstr("longhorn_volume_state{volume=\"frail\"} 2\n"));
  EXPECT_THAT(*metrics2, HasSubstr("hci_replicated_volume_write_bytes_total{volume=\"frail\"}"));
}

TEST_F(ReplicatedPluginTest, BelowTheWriteQuorumTheVolumeIsFaulted) {
  ASSERT_TRUE(Create("weak").ok());
  nodes_->Kill(0);
  nodes_->Kill(2);
  auto got = Get("weak");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status().robustness(), v1::VOLUME_ROBUSTNESS_FAULTED) << JsonOf(*got);
  ASSERT_GE(got->status().conditions_size(), 1);
  EXPECT_EQ(got->status().conditions(0).status(), v1::CONDITION_STATUS_FALSE);
}

// ---------------------------------------------------------------------------------------------
// Snapshots, changed blocks, revert

TEST_F(ReplicatedPluginTest, SnapshotsChangedBlocksAndRevert) {
  ASSERT_TRUE(Create("snappy").ok());
  auto info = Attach("snappy");
  ASSERT_TRUE(info.ok()) << info.status();
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, kMiB, 0x01);
    nbd.Flush();
    // Through the engine, while attached.
    auto first = Snapshot("snappy", "before");
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_EQ(first->volume(), "snappy");
    EXPECT_TRUE(first->status().ready_to_use());
    EXPECT_EQ(first->status().size_bytes(), kMiB);
    auto repeat = Snapshot("snappy", "before");
    ASSERT_TRUE(repeat.ok()) << repeat.status();
    EXPECT_EQ(repeat->metadata().uid(), first->metadata().uid());
    nbd.Write(4 * kMiB, 2 * kMiB, 0x02);
    nbd.Flush();
  }
  v1::RevertVolumeRequest revert;
  revert.set_volume("snappy");
  revert.set_snapshot("before");
  EXPECT_EQ(storage_->RevertVolume(revert).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Detach("snappy").ok());

  // Directly on the replicas, while detached.
  auto second = Snapshot("snappy", "after");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(SnapshotNames("snappy"), (std::vector<std::string>{"before", "after"}));

  v1::GetChangedBlocksRequest changed;
  changed.set_volume("snappy");
  changed.set_to_snapshot("before");
  auto until_first = storage_->GetChangedBlocks(changed);
  ASSERT_TRUE(until_first.ok()) << until_first.status();
  EXPECT_EQ(until_first->size_bytes(), kSize);
  ASSERT_EQ(until_first->extents_size(), 1) << JsonOf(*until_first);
  EXPECT_EQ(until_first->extents(0).offset(), 0u);
  EXPECT_EQ(until_first->extents(0).length(), kMiB);
  changed.set_from_snapshot("before");
  changed.set_to_snapshot("after");
  auto between = storage_->GetChangedBlocks(changed);
  ASSERT_TRUE(between.ok()) << between.status();
  ASSERT_EQ(between->extents_size(), 1) << JsonOf(*between);
  EXPECT_EQ(between->extents(0).offset(), 4 * kMiB);
  EXPECT_EQ(between->extents(0).length(), 2 * kMiB);
  changed.set_from_snapshot("nope");
  auto missing = storage_->GetChangedBlocks(changed);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("from_snapshot"));

  auto reverted = storage_->RevertVolume(revert);
  ASSERT_TRUE(reverted.ok()) << reverted.status();
  EXPECT_EQ(reverted->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*reverted);
  revert.set_snapshot("nope");
  EXPECT_EQ(storage_->RevertVolume(revert).status().code(), StatusCode::kNotFound);
  auto again = Attach("snappy");
  ASSERT_TRUE(again.ok()) << again.status();
  {
    Nbd nbd(SocketOf(*again));
    ASSERT_TRUE(nbd.ok());
    EXPECT_EQ(nbd.Check(0, kMiB, 0x01), "");
    EXPECT_EQ(nbd.Check(4 * kMiB, 2 * kMiB, 0x00), "") << "the revert did not undo the write";
  }
  ASSERT_TRUE(Detach("snappy").ok());

  v1::DeleteSnapshotRequest del;
  del.set_volume("snappy");
  del.set_name("after");
  ASSERT_TRUE(storage_->DeleteSnapshot(del).ok());
  ASSERT_TRUE(storage_->DeleteSnapshot(del).ok()) << "a second delete is OK";
  EXPECT_EQ(SnapshotNames("snappy"), (std::vector<std::string>{"before"}));
  EXPECT_TRUE(events_.WaitFor("SnapshotCreated", "after").has_value());
  EXPECT_TRUE(events_.WaitFor("VolumeReverted", "snappy").has_value());
}

TEST_F(ReplicatedPluginTest, DetachedSnapshotsNeedEveryReplica) {
  ASSERT_TRUE(Create("needy").ok());
  nodes_->Kill(2);
  auto refused = Snapshot("needy", "s1");
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("needy-r2"));
  ASSERT_TRUE(nodes_->StartServer(2).ok());
  EXPECT_TRUE(SnapshotNames("needy").empty()) << "a refused snapshot left a trace";
  ASSERT_TRUE(Snapshot("needy", "s1").ok());
  EXPECT_EQ(SnapshotNames("needy"), (std::vector<std::string>{"s1"}));
}

// ---------------------------------------------------------------------------------------------
// Delete

TEST_F(ReplicatedPluginTest, DeleteRemovesTheReplicasFromTheNodes) {
  ASSERT_TRUE(Create("gone").ok());
  ASSERT_TRUE(Attach("gone").ok());
  EXPECT_EQ(Delete("gone").code(), StatusCode::kFailedPrecondition);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(nodes_->HasReplica(i, "gone-r" + std::to_string(i)));
  ASSERT_TRUE(Detach("gone").ok());
  ASSERT_TRUE(Snapshot("gone", "s").ok());

  // A node that does not answer holds the delete up; a retry finishes it.
  nodes_->Kill(1);
  Status held = Delete("gone");
  EXPECT_EQ(held.code(), StatusCode::kUnavailable) << held;
  EXPECT_THAT(held.message(), HasSubstr("retry"));
  auto deleting = Get("gone");
  ASSERT_TRUE(deleting.ok());
  EXPECT_EQ(deleting->status().phase(), v1::VOLUME_PHASE_DELETING);
  EXPECT_EQ(Attach("gone").status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(nodes_->StartServer(1).ok());
  ASSERT_TRUE(Delete("gone").ok());
  EXPECT_EQ(Get("gone").status().code(), StatusCode::kNotFound);
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 3; ++k) {
      EXPECT_FALSE(nodes_->HasReplica(i, "gone-r" + std::to_string(k)));
    }
  }
  EXPECT_TRUE(Delete("gone").ok()) << "deleting a missing volume is OK";
  EXPECT_FALSE(std::filesystem::exists(state_dir_ + "/plugins/replicated/volumes/gone.json"));
}

}  // namespace
}  // namespace hci::replicated::plugin_testing
