// The replicated plugin: the real hci_replicated.so loaded by hci::Host, against real
// hci-replica-server processes on 127.0.0.1, real nbdkit engines, libnbd and qemu-io as the
// clients of the attached volumes.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

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
  nbd_handle* handle() { return h_; }
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
    if (bind_images_) config.mutable_backends()->mutable_image()->set_plugin("local");
    HostOptions options;
    options.log_sink = std::make_shared<NullLogSink>();
    auto host = Host::Open(config, options);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(host).MoveValueUnsafe();
    subscription_ = host_->Subscribe(events_.Callback());
    auto storage = host_->storage();
    ASSERT_TRUE(storage.ok()) << storage.status();
    storage_ = *storage;
    if (bind_images_) {
      auto images = host_->image();
      ASSERT_TRUE(images.ok()) << images.status();
      images_ = *images;
    }
  }
  void Close() {
    subscription_.Reset();
    host_.reset();
    storage_ = nullptr;
    images_ = nullptr;
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
  // Set before SetUp: the host also binds the local plugin's image backend (images_).
  bool bind_images_ = false;
  ImageBackend* images_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Create, placement, errors

TEST_F(ReplicatedPluginTest, CreateMakesHealthyReplicasOnDistinctNodesAtGenerationOne) {
  auto caps = storage_->Capabilities();
  EXPECT_TRUE(caps.replication());
  EXPECT_EQ(caps.max_replicas(), 3u);
  EXPECT_TRUE(caps.snapshots() && caps.revert() && caps.changed_blocks());
  EXPECT_TRUE(caps.clone() && caps.from_image());
  EXPECT_TRUE(caps.expand() && caps.online_expand());

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

// Replicas whose volume the plugin has no record of (here: the record is lost, as when a
// delete could not reach a node that later came back) are never taken for a new volume of the
// same name: the new volume is healthy at generation 1 and reads zeros, not the old data.
TEST_F(ReplicatedPluginTest, LeftoverReplicasOfAVolumeOfTheSameNameAreNeverReused) {
  ASSERT_TRUE(Create("reuse").ok());
  {
    auto info = Attach("reuse");
    ASSERT_TRUE(info.ok()) << info.status();
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, kMiB, 0x31);
    nbd.Flush();
  }
  ASSERT_TRUE(Detach("reuse").ok());
  Close();
  const std::string record = state_dir_ + "/plugins/replicated/volumes/reuse.json";
  ASSERT_TRUE(std::filesystem::remove(record)) << record;
  Open();
  ASSERT_EQ(Get("reuse").status().code(), StatusCode::kNotFound);
  auto made = Create("reuse");
  ASSERT_TRUE(made.ok()) << made.status();
  auto got = Get("reuse");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*got);
  for (const auto& r : got->status().replicas()) EXPECT_EQ(r.generation(), 1u) << JsonOf(*got);
  auto info = Attach("reuse");
  ASSERT_TRUE(info.ok()) << info.status();
  Nbd nbd(SocketOf(*info));
  ASSERT_TRUE(nbd.ok());
  EXPECT_EQ(nbd.Check(0, kMiB, 0), "") << "the new volume shows the deleted volume's data";
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
  KillAndWait(pid, socket);
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
  ASSERT_EQ(nodes_->StartServer(1), Status::OK());
  // Nobody asks for the volume now: the plugin notices the engine's rebuild on its own, reports
  // it as an operation with progress, and publishes the events.
  std::optional<v1::OperationStatus> rebuild;
  bool saw_progress = false;
  for (int i = 0; i < 600; ++i) {
    for (const auto& op : host_->ListOperations()) {
      if (op.kind() != "RebuildReplica" || op.object().name() != "frail") continue;
      rebuild = op;
      saw_progress =
          saw_progress || (op.phase() == v1::OPERATION_PHASE_RUNNING && op.progress().total() > 0 &&
                           op.progress().done() <= op.progress().total());
    }
    if (rebuild && rebuild->phase() == v1::OPERATION_PHASE_SUCCEEDED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(rebuild.has_value()) << "the rebuild of frail-r1 was never reported";
  EXPECT_EQ(rebuild->phase(), v1::OPERATION_PHASE_SUCCEEDED) << rebuild->DebugString();
  EXPECT_TRUE(saw_progress) << "the rebuild operation never showed progress while running";
  EXPECT_EQ(rebuild->progress().done(), rebuild->progress().total());
  EXPECT_GE(rebuild->progress().total(), kMiB);
  EXPECT_THAT(rebuild->message(), HasSubstr("frail-r1"));
  EXPECT_TRUE(events_.WaitFor("RebuildStarted", "frail").has_value());
  EXPECT_TRUE(events_.WaitFor("VolumeHealthy", "frail").has_value());
  auto last = Get("frail");
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*last);
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
  ASSERT_EQ(nodes_->StartServer(2), Status::OK());
  EXPECT_TRUE(SnapshotNames("needy").empty()) << "a refused snapshot left a trace";
  ASSERT_TRUE(Snapshot("needy", "s1").ok());
  EXPECT_EQ(SnapshotNames("needy"), (std::vector<std::string>{"s1"}));
}

// ---------------------------------------------------------------------------------------------
// Expand

class ReplicatedExpandTest : public ReplicatedPluginTest {
 protected:
  Result<v1::Volume> Expand(const std::string& name, std::uint64_t size) {
    v1::ExpandVolumeRequest r;
    r.set_name(name);
    r.set_size_bytes(size);
    return storage_->ExpandVolume(r);
  }
  // The size of a replica's head layer file: frozen snapshot layers keep the size they were
  // taken at, so the largest layer file is the head.
  std::uint64_t ReplicaBytes(int node, const std::string& replica) {
    std::uint64_t largest = 0;
    std::error_code ec;
    for (const auto& f :
         std::filesystem::directory_iterator(nodes_->node(node).data_dir + "/" + replica, ec)) {
      if (f.path().extension() == ".img") {
        largest = std::max<std::uint64_t>(largest, std::filesystem::file_size(f.path()));
      }
    }
    return largest;
  }
  void ExpectReplicasHold(const std::string& volume, std::uint64_t size) {
    for (int i = 0; i < 3; ++i) {
      const std::string replica = volume + "-r" + std::to_string(i);
      // Placement puts replica k on some node: find it.
      int node = -1;
      for (int n = 0; n < 3; ++n) {
        if (nodes_->HasReplica(n, replica)) node = n;
      }
      ASSERT_GE(node, 0) << replica;
      EXPECT_EQ(ReplicaBytes(node, replica), size) << replica << " on node" << node;
    }
  }
};

TEST_F(ReplicatedExpandTest, CapabilitiesClaimOfflineAndOnlineExpand) {
  auto caps = storage_->Capabilities();
  EXPECT_TRUE(caps.expand());
  EXPECT_TRUE(caps.online_expand());
}

TEST_F(ReplicatedExpandTest, DetachedExpandKeepsOldDataAndNewSpaceReadsZero) {
  ASSERT_TRUE(Create("grow").ok());
  {
    auto info = Attach("grow");
    ASSERT_TRUE(info.ok()) << info.status();
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, kMiB, 0x11);
    nbd.Write(kSize - 4096, 4096, 0x22);
    nbd.Flush();
  }
  ASSERT_TRUE(Detach("grow").ok());
  ASSERT_TRUE(Snapshot("grow", "small").ok());

  const std::uint64_t bigger = kSize + 8 * kMiB;
  auto grown = Expand("grow", bigger);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->spec().size_bytes(), bigger);
  EXPECT_EQ(grown->status().capacity_bytes(), bigger);
  EXPECT_EQ(grown->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*grown);
  ExpectReplicasHold("grow", bigger);
  auto event = events_.WaitFor("VolumeExpanded", "grow");
  ASSERT_TRUE(event.has_value());
  EXPECT_THAT(event->message(), HasSubstr(std::to_string(bigger)));
  // Idempotent: the same size again changes nothing.
  auto same = Expand("grow", bigger);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(events_.Count("VolumeExpanded", "grow"), 1);
  // The record survives the Host.
  Close();
  Open();
  EXPECT_EQ(Get("grow")->status().capacity_bytes(), bigger);

  {
    auto info = Attach("grow");
    ASSERT_TRUE(info.ok()) << info.status();
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    EXPECT_EQ(nbd.Size(), static_cast<int64_t>(bigger));
    EXPECT_EQ(nbd.Check(0, kMiB, 0x11), "");
    EXPECT_EQ(nbd.Check(kSize - 4096, 4096, 0x22), "");
    EXPECT_EQ(nbd.Check(kSize, bigger - kSize, 0), "") << "new space must read zeroes";
    nbd.Write(bigger - 4096, 4096, 0x33);
    nbd.Flush();
  }
  ASSERT_TRUE(Detach("grow").ok());

  // A snapshot from before the expand is smaller; reverting to it keeps the volume's size.
  v1::RevertVolumeRequest revert;
  revert.set_volume("grow");
  revert.set_snapshot("small");
  auto reverted = storage_->RevertVolume(revert);
  ASSERT_TRUE(reverted.ok()) << reverted.status();
  EXPECT_EQ(reverted->status().capacity_bytes(), bigger);
  ExpectReplicasHold("grow", bigger);
  auto info = Attach("grow");
  ASSERT_TRUE(info.ok()) << info.status();
  Nbd nbd(SocketOf(*info));
  ASSERT_TRUE(nbd.ok());
  EXPECT_EQ(nbd.Size(), static_cast<int64_t>(bigger));
  EXPECT_EQ(nbd.Check(kSize - 4096, 4096, 0x22), "");
  EXPECT_EQ(nbd.Check(kSize, bigger - kSize, 0), "") << "the revert kept data past the snapshot";
}

TEST_F(ReplicatedExpandTest, BadSizesAreInvalidArgumentNamingSizeBytes) {
  ASSERT_TRUE(Create("sized").ok());
  const std::vector<std::uint64_t> bad_sizes = {0, kSize + 100, kSize - 4096, (1ull << 50) + 4096};
  for (std::uint64_t bad : bad_sizes) {
    auto refused = Expand("sized", bad);
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(refused.status().message(), HasSubstr("size_bytes")) << bad;
  }
  EXPECT_THAT(Expand("sized", kSize - 4096).status().message(), HasSubstr("smaller"));
  auto same = Expand("sized", kSize);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->status().capacity_bytes(), kSize);
  EXPECT_EQ(Expand("nope", kSize).status().code(), StatusCode::kNotFound);
  ExpectReplicasHold("sized", kSize);
  EXPECT_EQ(events_.Count("VolumeExpanded", "sized"), 0);
}

TEST_F(ReplicatedExpandTest, DetachedExpandNeedsEveryReplicaAndARetryFinishesIt) {
  ASSERT_TRUE(Create("held").ok());
  nodes_->Kill(2);
  auto refused = Expand("held", 2 * kSize);
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("held-r2"));
  EXPECT_EQ(Get("held")->status().capacity_bytes(), kSize) << "the record claims a size the "
                                                              "replicas do not all have";
  ASSERT_EQ(nodes_->StartServer(2), Status::OK());
  auto grown = Expand("held", 2 * kSize);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->status().capacity_bytes(), 2 * kSize);
  ExpectReplicasHold("held", 2 * kSize);
}

// Online: through the engine while a libnbd client writes. Its connection keeps the size it was
// told (NBD has no resize notification); a new connection sees the new size; no acknowledged
// write is lost.
TEST_F(ReplicatedExpandTest, AttachedExpandGoesThroughTheEngineWhileAWriterRuns) {
  ASSERT_TRUE(Create("live").ok());
  auto info = Attach("live");
  ASSERT_TRUE(info.ok()) << info.status();
  const std::string socket = SocketOf(*info);
  constexpr std::uint64_t kBlocks = 256;  // the writer's region: the first MiB
  std::vector<std::uint32_t> acked(kBlocks, 0);
  std::atomic<bool> stop{false};
  std::atomic<std::uint32_t> writes{0};
  std::string writer_error;
  std::thread writer([&] {
    nbd_handle* h = nbd_create();
    if (nbd_connect_unix(h, socket.c_str()) != 0) {
      writer_error = nbd_get_error();
      nbd_close(h);
      return;
    }
    std::vector<std::uint32_t> block(1024);
    for (std::uint32_t seq = 1; !stop.load(); ++seq) {
      const std::uint64_t b = (seq * 37) % kBlocks;
      std::fill(block.begin(), block.end(), seq);
      if (nbd_pwrite(h, block.data(), 4096, b * 4096, 0) != 0) {
        writer_error = nbd_get_error();
        break;
      }
      acked[b] = seq;
      if (seq % 16 == 0 && nbd_flush(h, 0) != 0) {
        writer_error = nbd_get_error();
        break;
      }
      ++writes;
    }
    nbd_shutdown(h, 0);
    nbd_close(h);
  });
  while (writes.load() < 50 && writer_error.empty()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::uint64_t bigger = 3 * kSize;
  auto grown = Expand("live", bigger);
  const std::uint32_t at_expand = writes.load();
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->status().capacity_bytes(), bigger);
  EXPECT_EQ(grown->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*grown);
  ExpectReplicasHold("live", bigger);
  {
    Nbd fresh(socket);
    ASSERT_TRUE(fresh.ok());
    EXPECT_EQ(fresh.Size(), static_cast<int64_t>(bigger)) << "a new connection sees the size";
    EXPECT_EQ(fresh.Check(kSize, bigger - kSize, 0), "");
    fresh.Write(bigger - 4096, 4096, 0x44);
    fresh.Flush();
  }
  while (writes.load() < at_expand + 50 && writer_error.empty()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  writer.join();
  ASSERT_EQ(writer_error, "") << "a write failed across the expand";
  EXPECT_TRUE(events_.WaitFor("VolumeExpanded", "live").has_value());

  // Every acknowledged write is there, through a new connection and after a re-attach.
  auto verify = [&](const std::string& sock) {
    nbd_handle* h = nbd_create();
    ASSERT_EQ(nbd_connect_unix(h, sock.c_str()), 0) << nbd_get_error();
    EXPECT_EQ(nbd_get_size(h), static_cast<int64_t>(bigger));
    std::vector<std::uint32_t> block(1024);
    for (std::uint64_t b = 0; b < kBlocks; ++b) {
      ASSERT_EQ(nbd_pread(h, block.data(), 4096, b * 4096, 0), 0) << nbd_get_error();
      EXPECT_EQ(block[0], acked[b]) << "block " << b;
      EXPECT_EQ(block[1023], acked[b]) << "block " << b;
    }
    ASSERT_EQ(nbd_pread(h, block.data(), 4096, bigger - 4096, 0), 0) << nbd_get_error();
    EXPECT_EQ(block[0], 0x44444444u);
    nbd_shutdown(h, 0);
    nbd_close(h);
  };
  verify(socket);
  ASSERT_TRUE(Detach("live").ok());
  EXPECT_EQ(Get("live")->status().capacity_bytes(), bigger);
  auto again = Attach("live");
  ASSERT_TRUE(again.ok()) << again.status();
  verify(SocketOf(*again));
}

// A replica that is down during an online expand misses it: its rebuild grows it first.
TEST_F(ReplicatedExpandTest, AReplicaThatMissedTheExpandIsGrownByItsRebuild) {
  ASSERT_TRUE(Create("late").ok());
  auto info = Attach("late");
  ASSERT_TRUE(info.ok()) << info.status();
  nodes_->Kill(1);
  const std::uint64_t bigger = 2 * kSize;
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, kMiB, 0x55);  // the engine notices the dead replica
    nbd.Flush();
  }
  auto grown = Expand("late", bigger);
  ASSERT_TRUE(grown.ok()) << grown.status();
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    ASSERT_EQ(nbd.Size(), static_cast<int64_t>(bigger));
    nbd.Write(bigger - kMiB, kMiB, 0x66);  // beyond the old end: must reach the late replica
    nbd.Flush();
  }
  ASSERT_EQ(nodes_->StartServer(1), Status::OK());
  bool healthy = false;
  for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
       std::chrono::steady_clock::now() < until && !healthy;) {
    auto got = Get("late");
    healthy = got.ok() && got->status().robustness() == v1::VOLUME_ROBUSTNESS_HEALTHY;
    if (!healthy) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_TRUE(healthy) << JsonOf(*Get("late"));
  ExpectReplicasHold("late", bigger);
  ASSERT_TRUE(Detach("late").ok());
  // The late replica's own layer file (its data at the volume's offsets) holds the write.
  std::string head;
  for (const auto& dir : std::filesystem::directory_iterator(nodes_->node(1).data_dir)) {
    if (!dir.path().filename().string().starts_with("late-r")) continue;
    for (const auto& f : std::filesystem::directory_iterator(dir.path())) {
      if (f.path().extension() == ".img") head = f.path().string();
    }
  }
  ASSERT_FALSE(head.empty());
  std::ifstream in(head, std::ios::binary);
  std::vector<char> tail(kMiB);
  in.seekg(static_cast<std::streamoff>(bigger - kMiB));
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  ASSERT_TRUE(in.good());
  EXPECT_TRUE(std::all_of(tail.begin(), tail.end(), [](char c) { return c == 0x66; }))
      << "the rebuild did not copy the write beyond the old end";
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
  ASSERT_EQ(nodes_->StartServer(1), Status::OK());
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

// ---------------------------------------------------------------------------------------------
// Clones

class ReplicatedCloneTest : public ReplicatedPluginTest {
 protected:
  Result<v1::Volume> CloneVolume(const std::string& name, const std::string& source,
                                 std::uint64_t size = 0) {
    v1::CreateVolumeRequest r;
    r.mutable_metadata()->set_name(name);
    r.mutable_spec()->set_size_bytes(size);
    r.mutable_spec()->mutable_source()->set_volume(source);
    return storage_->CreateVolume(r);
  }
  Result<v1::Volume> CloneSnapshot(const std::string& name, const std::string& volume,
                                   const std::string& snapshot, std::uint64_t size = 0) {
    v1::CreateVolumeRequest r;
    r.mutable_metadata()->set_name(name);
    r.mutable_spec()->set_size_bytes(size);
    r.mutable_spec()->mutable_source()->mutable_snapshot()->set_volume(volume);
    r.mutable_spec()->mutable_source()->mutable_snapshot()->set_snapshot(snapshot);
    return storage_->CreateVolume(r);
  }

  // One range of a volume and the byte every one of its bytes must hold.
  struct Expect {
    std::uint64_t offset;
    std::uint64_t length;
    std::uint8_t byte;
  };

  // Attaches `volume`, checks its size and every range, detaches it.
  void ExpectContent(const std::string& volume, std::uint64_t size,
                     const std::vector<Expect>& ranges) {
    auto info = Attach(volume, "checker");
    ASSERT_TRUE(info.ok()) << info.status();
    {
      Nbd nbd(SocketOf(*info));
      ASSERT_TRUE(nbd.ok());
      EXPECT_EQ(nbd.Size(), static_cast<int64_t>(size));
      for (const Expect& e : ranges) {
        EXPECT_EQ(nbd.Check(e.offset, e.length, e.byte), "")
            << volume << " at [" << e.offset << ", +" << e.length << ")";
      }
    }
    ASSERT_TRUE(Detach(volume, "checker").ok());
  }

  // Attaches `volume`, writes each range and flushes, detaches it.
  void WriteAndDetach(const std::string& volume, const std::vector<Expect>& ranges) {
    auto info = Attach(volume, "writer");
    ASSERT_TRUE(info.ok()) << info.status();
    {
      Nbd nbd(SocketOf(*info));
      ASSERT_TRUE(nbd.ok());
      for (const Expect& e : ranges) nbd.Write(e.offset, e.length, e.byte);
      nbd.Flush();
    }
    ASSERT_TRUE(Detach(volume, "writer").ok());
  }

  // The data file of each replica of a volume that has no snapshots (a single layer, whose
  // file holds the volume's bytes at their offsets), read from the nodes' data directories.
  std::map<std::string, std::string> ReplicaFiles(const std::string& volume) {
    std::map<std::string, std::string> out;
    auto got = Get(volume);
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return out;
    for (const auto& r : got->status().replicas()) {
      const int node = r.node().back() - '0';
      const std::string dir = nodes_->node(node).data_dir + "/" + r.name();
      std::vector<std::string> layers;
      for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        const std::string file = entry.path().filename().string();
        if (file.starts_with("layer-") && file.ends_with(".img")) layers.push_back(file);
      }
      EXPECT_EQ(layers.size(), 1u) << r.name() << " on " << r.node();
      if (layers.size() == 1) out[r.name()] = ReadAll(dir + "/" + layers[0]);
    }
    return out;
  }

  // Every replica of `volume` holds the same bytes (compared whole, not by a sample).
  void ExpectReplicasIdentical(const std::string& volume, std::size_t replicas = 3) {
    auto files = ReplicaFiles(volume);
    ASSERT_EQ(files.size(), replicas) << volume;
    const std::string& first = files.begin()->second;
    EXPECT_FALSE(first.empty());
    for (const auto& [name, content] : files) {
      EXPECT_TRUE(content == first)
          << "replica " << name << " of " << volume << " differs from " << files.begin()->first;
    }
  }

  bool HasCloneOperation(const std::string& volume, v1::OperationPhase phase) {
    for (const auto& op : host_->ListOperations()) {
      if (op.kind() == "CloneVolume" && op.object().name() == volume && op.phase() == phase) {
        return true;
      }
    }
    return false;
  }

  void ExpectNoReplicas(const std::string& volume) {
    EXPECT_EQ(Get(volume).status().code(), StatusCode::kNotFound);
    for (int i = 0; i < 3; ++i) {
      for (int k = 0; k < 3; ++k) {
        EXPECT_FALSE(nodes_->HasReplica(i, volume + "-r" + std::to_string(k)))
            << volume << "-r" << k << " left on node" << i;
      }
    }
  }
};

TEST_F(ReplicatedCloneTest, CloneOfASnapshotHoldsTheSnapshotNotLaterWrites) {
  ASSERT_TRUE(Create("src").ok());
  auto info = Attach("src");
  ASSERT_TRUE(info.ok()) << info.status();
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, kMiB, 0xA1);
    nbd.Write(8 * kMiB, 64 * 1024, 0xA2);
    nbd.Flush();
    ASSERT_TRUE(Snapshot("src", "s1").ok());
    nbd.Write(0, kMiB, 0xB1);
    nbd.Write(4 * kMiB, 4096, 0xB2);
    nbd.Flush();
  }
  ASSERT_TRUE(Detach("src").ok());

  auto clone = CloneSnapshot("restored", "src", "s1");
  ASSERT_TRUE(clone.ok()) << clone.status();
  EXPECT_EQ(clone->spec().size_bytes(), kSize) << "size 0 takes the snapshot's size";
  EXPECT_EQ(clone->status().capacity_bytes(), kSize);
  EXPECT_EQ(clone->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*clone);
  ASSERT_EQ(clone->status().replicas_size(), 3);
  for (const auto& r : clone->status().replicas()) {
    EXPECT_EQ(r.state(), v1::REPLICA_STATE_HEALTHY) << JsonOf(*clone);
  }
  EXPECT_GE(clone->status().actual_size_bytes(), kMiB + 64 * 1024);
  EXPECT_LT(clone->status().actual_size_bytes(), 4 * kMiB) << "only allocated data is copied";
  auto cloned = events_.WaitFor("VolumeCloned", "restored");
  ASSERT_TRUE(cloned.has_value());
  EXPECT_THAT(cloned->message(), HasSubstr("snapshot \"s1\" of volume \"src\""));
  EXPECT_TRUE(HasCloneOperation("restored", v1::OPERATION_PHASE_SUCCEEDED));
  EXPECT_TRUE(SnapshotNames("restored").empty()) << "a clone does not take the source's snapshots";

  ExpectReplicasIdentical("restored");
  ExpectContent("restored", kSize,
                {{0, kMiB, 0xA1},
                 {kMiB, 3 * kMiB, 0},
                 {4 * kMiB, 4096, 0},
                 {8 * kMiB, 64 * 1024, 0xA2},
                 {8 * kMiB + 64 * 1024, kSize - 8 * kMiB - 64 * 1024, 0}});
  // The source is untouched.
  ExpectContent("src", kSize, {{0, kMiB, 0xB1}, {4 * kMiB, 4096, 0xB2}, {8 * kMiB, 4096, 0xA2}});
  EXPECT_EQ(SnapshotNames("src"), (std::vector<std::string>{"s1"}));

  // Idempotent by name; another spec under the name is AlreadyExists.
  auto again = CloneSnapshot("restored", "src", "s1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->metadata().uid(), clone->metadata().uid());
  EXPECT_EQ(events_.Count("VolumeCloned", "restored"), 1) << "a repeat copies nothing";
  EXPECT_EQ(CloneVolume("restored", "src").status().code(), StatusCode::kAlreadyExists);
}

TEST_F(ReplicatedCloneTest, CloneOfADetachedVolumeIsAnIndependentCopy) {
  ASSERT_TRUE(Create("src").ok());
  WriteAndDetach("src", {{0, 4096, 0x11}, {5 * kMiB, 3 * kMiB, 0x12}, {kSize - 4096, 4096, 0x13}});

  const auto began = std::chrono::steady_clock::now();
  auto clone = CloneVolume("copy", "src");
  const auto took = std::chrono::steady_clock::now() - began;
  ASSERT_TRUE(clone.ok()) << clone.status();
  std::cerr << "clone of a detached volume with " << (4096 + 3 * kMiB + 4096)
            << " allocated bytes (3 replicas) took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms\n";
  EXPECT_EQ(clone->spec().size_bytes(), kSize);
  EXPECT_EQ(clone->spec().source().volume(), "src");
  ExpectReplicasIdentical("copy");

  // Writes to the clone do not reach the source and the other way round.
  WriteAndDetach("copy", {{0, 4096, 0x21}});
  WriteAndDetach("src", {{5 * kMiB, 4096, 0x31}});
  ExpectContent("src", kSize, {{0, 4096, 0x11}, {5 * kMiB, 4096, 0x31}});

  // Deleting the source leaves the clone whole.
  ASSERT_TRUE(Delete("src").ok());
  ExpectContent("copy", kSize,
                {{0, 4096, 0x21},
                 {4096, 5 * kMiB - 4096, 0},
                 {5 * kMiB, 3 * kMiB, 0x12},
                 {8 * kMiB, kSize - 8 * kMiB - 4096, 0},
                 {kSize - 4096, 4096, 0x13}});
  auto got = Get("copy");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*got);
}

TEST_F(ReplicatedCloneTest, CloneOfAnAttachedVolumeUsesATemporarySnapshot) {
  ASSERT_TRUE(Create("live").ok());
  auto info = Attach("live");
  ASSERT_TRUE(info.ok()) << info.status();
  Nbd nbd(SocketOf(*info));
  ASSERT_TRUE(nbd.ok());
  nbd.Write(0, 2 * kMiB, 0x41);
  nbd.Write(10 * kMiB, 4096, 0x42);
  nbd.Flush();

  auto clone = CloneVolume("hot-copy", "live");
  ASSERT_TRUE(clone.ok()) << clone.status();
  EXPECT_TRUE(SnapshotNames("live").empty()) << "the temporary snapshot is deleted";
  auto cloned = events_.WaitFor("VolumeCloned", "hot-copy");
  ASSERT_TRUE(cloned.has_value());
  // The source goes on serving its attacher.
  nbd.Write(0, 4096, 0x43);
  nbd.Flush();
  EXPECT_EQ(nbd.Check(0, 4096, 0x43), "");
  EXPECT_EQ(nbd.Check(10 * kMiB, 4096, 0x42), "");
  auto live = Get("live");
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(live->status().attached_to(), "vm-a");

  ExpectReplicasIdentical("hot-copy");
  ExpectContent("hot-copy", kSize,
                {{0, 2 * kMiB, 0x41}, {2 * kMiB, 8 * kMiB, 0}, {10 * kMiB, 4096, 0x42}});
}

TEST_F(ReplicatedCloneTest, ALargerCloneReadsZerosPastTheSourceAndASmallerOneIsRefused) {
  ASSERT_TRUE(Create("small").ok());
  WriteAndDetach("small", {{kSize - 4096, 4096, 0x51}});

  auto bigger = CloneVolume("bigger", "small", 2 * kSize);
  ASSERT_TRUE(bigger.ok()) << bigger.status();
  EXPECT_EQ(bigger->spec().size_bytes(), 2 * kSize);
  EXPECT_EQ(bigger->status().capacity_bytes(), 2 * kSize);
  ExpectContent("bigger", 2 * kSize,
                {{0, kSize - 4096, 0}, {kSize - 4096, 4096, 0x51}, {kSize, kSize, 0}});

  auto smaller = CloneVolume("smaller", "small", kSize / 2);
  EXPECT_EQ(smaller.status().code(), StatusCode::kInvalidArgument) << smaller.status();
  EXPECT_THAT(smaller.status().message(), HasSubstr("spec.size_bytes"));
  ExpectNoReplicas("smaller");
  ASSERT_TRUE(Snapshot("small", "s").ok());
  auto from_snap = CloneSnapshot("smaller", "small", "s", kSize - 4096);
  EXPECT_EQ(from_snap.status().code(), StatusCode::kInvalidArgument) << from_snap.status();
  EXPECT_THAT(from_snap.status().message(), HasSubstr("spec.size_bytes"));
  ExpectNoReplicas("smaller");
}

TEST_F(ReplicatedCloneTest, AMissingSourceIsNotFoundNamingTheField) {
  ASSERT_TRUE(Create("here").ok());
  auto no_volume = CloneVolume("c1", "nowhere");
  EXPECT_EQ(no_volume.status().code(), StatusCode::kNotFound) << no_volume.status();
  EXPECT_THAT(no_volume.status().message(), HasSubstr("spec.source.volume"));
  auto no_parent = CloneSnapshot("c2", "nowhere", "s");
  EXPECT_EQ(no_parent.status().code(), StatusCode::kNotFound) << no_parent.status();
  EXPECT_THAT(no_parent.status().message(), HasSubstr("spec.source.snapshot"));
  auto no_snapshot = CloneSnapshot("c3", "here", "never-taken");
  EXPECT_EQ(no_snapshot.status().code(), StatusCode::kNotFound) << no_snapshot.status();
  EXPECT_THAT(no_snapshot.status().message(),
              AllOf(HasSubstr("spec.source.snapshot"), HasSubstr("never-taken")));

  v1::CreateVolumeRequest linked;
  linked.mutable_metadata()->set_name("c4");
  linked.mutable_spec()->mutable_source()->set_volume("here");
  linked.mutable_spec()->set_linked_clone(true);
  auto refused = storage_->CreateVolume(linked);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("spec.linked_clone"));
  for (const char* name : {"c1", "c2", "c3", "c4"}) ExpectNoReplicas(name);
}

TEST_F(ReplicatedCloneTest, AFailedCloneLeavesNoReplicas) {
  // One replica, on node0 (the least loaded, ties by name): its node dies before the copy.
  auto one = Create("lonely", kSize, 1);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->status().replicas(0).node(), "node0");
  WriteAndDetach("lonely", {{0, kMiB, 0x61}});
  nodes_->Kill(0);
  v1::CreateVolumeRequest r;
  r.mutable_metadata()->set_name("orphan");
  r.mutable_spec()->set_replica_count(2);
  r.mutable_spec()->mutable_source()->set_volume("lonely");
  auto failed = storage_->CreateVolume(r);
  EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable) << failed.status();
  EXPECT_THAT(failed.status().message(), HasSubstr("spec.source.volume"));
  ExpectNoReplicas("orphan");
  EXPECT_TRUE(HasCloneOperation("orphan", v1::OPERATION_PHASE_FAILED));

  // Once the node is back the same request succeeds.
  ASSERT_EQ(nodes_->StartServer(0), Status::OK());
  auto retried = storage_->CreateVolume(r);
  ASSERT_TRUE(retried.ok()) << retried.status();
  ExpectReplicasIdentical("orphan", 2);
  ExpectContent("orphan", kSize, {{0, kMiB, 0x61}, {kMiB, kSize - kMiB, 0}});
}

// A clone of an attached volume is one point of its write stream: a writer stamps 4 KiB blocks
// one after the other (each acknowledged before the next) while the clone runs, so the clone
// holds a prefix of them — every block acknowledged before CreateVolume was called, none started
// after it returned. The source is large enough that the copy outlasts the engine's 1 s epoch,
// so the source replica moves to a new generation under the copy's reads.
TEST_F(ReplicatedCloneTest, CloneOfAVolumeBeingWrittenIsCrashConsistent) {
  constexpr std::uint64_t kBig = 64 * kMiB;
  constexpr std::uint64_t kStream = 48 * kMiB;  // the stamped blocks start here
  constexpr std::uint64_t kBlocks = (kBig - kStream) / 4096;
  ASSERT_TRUE(Create("busy", kBig).ok());
  auto info = Attach("busy");
  ASSERT_TRUE(info.ok()) << info.status();
  {
    Nbd fill(SocketOf(*info));
    ASSERT_TRUE(fill.ok());
    for (std::uint64_t off = 0; off < kStream; off += 4 * kMiB) {
      fill.Write(off, 4 * kMiB, static_cast<std::uint8_t>(0x70 + off / (4 * kMiB)));
    }
    fill.Flush();
  }
  auto stamp = [](std::uint64_t block) { return static_cast<std::uint8_t>(block % 255 + 1); };
  std::atomic<std::uint64_t> acked{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    Nbd nbd(SocketOf(*info));
    if (!nbd.ok()) return;
    for (std::uint64_t b = 0; b < kBlocks && !stop; ++b) {
      nbd.Write(kStream + b * 4096, 4096, stamp(b));
      if (b % 8 == 7) nbd.Flush();
      acked = b + 1;
    }
  });
  while (acked < 16) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const std::uint64_t before = acked;
  const auto began = std::chrono::steady_clock::now();
  auto clone = CloneVolume("busy-copy", "busy");
  const auto took = std::chrono::steady_clock::now() - began;
  const std::uint64_t after = acked + 1;  // the write in flight may have been cut in
  stop = true;
  writer.join();
  ASSERT_TRUE(clone.ok()) << clone.status();
  std::cerr << "clone of an attached 64 MiB volume (" << kStream / kMiB
            << " MiB + the stream allocated, 3 replicas) took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms while "
            << after - 1 - before << " blocks were written\n";
  EXPECT_TRUE(SnapshotNames("busy").empty()) << "the temporary snapshot is deleted";
  ASSERT_TRUE(Detach("busy").ok());
  ExpectReplicasIdentical("busy-copy");

  auto check = Attach("busy-copy", "checker");
  ASSERT_TRUE(check.ok()) << check.status();
  {
    Nbd nbd(SocketOf(*check));
    ASSERT_TRUE(nbd.ok());
    for (std::uint64_t off = 0; off < kStream; off += 4 * kMiB) {
      EXPECT_EQ(nbd.Check(off, 4 * kMiB, static_cast<std::uint8_t>(0x70 + off / (4 * kMiB))), "");
    }
    std::vector<std::uint8_t> stream(kBig - kStream);
    ASSERT_EQ(nbd_pread(nbd.handle(), stream.data(), stream.size(), kStream, 0), 0);
    std::uint64_t prefix = 0;
    while (prefix < kBlocks && stream[prefix * 4096] == stamp(prefix)) ++prefix;
    EXPECT_GE(prefix, before) << "a write acknowledged before the clone started is missing";
    EXPECT_LE(prefix, after) << "a write started after the clone returned is in it";
    for (std::uint64_t b = 0; b < kBlocks; ++b) {
      const std::uint8_t want = b < prefix ? stamp(b) : 0;
      const auto* block = stream.data() + b * 4096;
      ASSERT_TRUE(std::all_of(block, block + 4096, [&](std::uint8_t x) { return x == want; }))
          << "block " << b << " of the stream (prefix " << prefix << ") is not "
          << static_cast<int>(want) << ": not one point of the write stream";
    }
  }
  ASSERT_TRUE(Detach("busy-copy", "checker").ok());
}

// ---------------------------------------------------------------------------------------------
// Scrub (the content helpers are the clone tests')

// ---------------------------------------------------------------------------------------------
// Volumes from images: the local plugin's image backend stores them, the replicated plugin
// copies one through the new volume's engine (qemu-img convert).

TEST_F(ReplicatedPluginTest, AVolumeFromAnImageNeedsAnImageBackend) {
  v1::CreateVolumeRequest r;
  r.mutable_metadata()->set_name("from-img");
  r.mutable_spec()->mutable_source()->set_image("guest");
  auto created = storage_->CreateVolume(r);
  EXPECT_EQ(created.status().code(), StatusCode::kFailedPrecondition) << created.status();
  EXPECT_THAT(created.status().message(),
              AllOf(HasSubstr("spec.source.image"), HasSubstr("no image backend")));
  EXPECT_EQ(Get("from-img").status().code(), StatusCode::kNotFound);
}

class ReplicatedImageTest : public ReplicatedCloneTest {
 protected:
  // Not a multiple of 4096: the volume's size rounds it up.
  static constexpr std::uint64_t kImageBytes = 8 * kMiB + 512;

  void SetUp() override {
    bind_images_ = true;
    ReplicatedCloneTest::SetUp();
  }

  // What the image holds; zeros everywhere else. The last range is the image's last 512 bytes:
  // the engine takes whole 4096-byte blocks, so qemu-img reads, modifies and writes that block.
  static std::vector<Expect> Data() {
    return {{0, 64 * 1024, 0x11}, {3 * kMiB, 4096, 0x22}, {8 * kMiB, 512, 0x33}};
  }
  // The 4096-byte-aligned ranges of Data() and the zeros between, up to `size`; the block that
  // holds the image's last 512 bytes is left to ExpectTailBlock.
  static std::vector<Expect> Content(std::uint64_t size) {
    std::vector<Expect> out;
    std::uint64_t at = 0;
    for (const Expect& e : Data()) {
      if (e.offset > at) out.push_back({at, e.offset - at, 0});
      if (e.length % 4096 == 0) out.push_back(e);
      at = (e.offset + e.length + 4095) / 4096 * 4096;
    }
    if (size > at) out.push_back({at, size - at, 0});
    return out;
  }

  // The block at 8 MiB: the image's last 512 bytes (0x33), then zeros.
  void ExpectTailBlock(const std::string& volume) {
    auto info = Attach(volume, "checker");
    ASSERT_TRUE(info.ok()) << info.status();
    {
      Nbd nbd(SocketOf(*info));
      ASSERT_TRUE(nbd.ok());
      std::vector<std::uint8_t> block(4096);
      ASSERT_EQ(nbd_pread(nbd.handle(), block.data(), block.size(), 8 * kMiB, 0), 0)
          << nbd_get_error();
      std::vector<std::uint8_t> expected(4096, 0);
      std::fill(expected.begin(), expected.begin() + 512, 0x33);
      EXPECT_TRUE(block == expected) << volume << ": the block at 8 MiB";
    }
    ASSERT_TRUE(Detach(volume, "checker").ok());
  }

  // Writes Data() to a raw file, converts it to qcow2 with qemu-img and imports that as `name`
  // through the local image backend.
  Result<v1::Image> ImportQcow2(const std::string& name) {
    const std::string raw = nodes_->dir() + "/" + name + ".raw";
    const std::string qcow2 = nodes_->dir() + "/" + name + ".qcow2";
    {
      std::string bytes(kImageBytes, '\0');
      for (const Expect& e : Data()) std::memset(bytes.data() + e.offset, e.byte, e.length);
      std::ofstream out(raw, std::ios::binary);
      out << bytes;
      if (!out.flush()) return Internal("cannot write " + raw);
    }
    process::RunOptions run;
    run.argv = {"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2};
    HCI_ASSIGN_OR_RAISE(auto converted, process::Run(run));
    HCI_RETURN_NOT_OK(process::CheckExit(converted, "qemu-img convert"));
    v1::ImportImageRequest import;
    import.mutable_metadata()->set_name(name);
    import.mutable_spec()->set_file(qcow2);
    HCI_ASSIGN_OR_RAISE(Operation op, images_->ImportImage(import));
    HCI_RETURN_NOT_OK(op.Wait(std::chrono::milliseconds(120000)));
    v1::GetImageRequest get;
    get.set_name(name);
    return images_->GetImage(get);
  }

  Result<v1::Volume> FromImage(const std::string& name, const std::string& image,
                               std::uint64_t size = 0) {
    v1::CreateVolumeRequest r;
    r.mutable_metadata()->set_name(name);
    r.mutable_spec()->set_size_bytes(size);
    r.mutable_spec()->mutable_source()->set_image(image);
    return storage_->CreateVolume(r);
  }

  Status DeleteImage(const std::string& name) {
    v1::DeleteImageRequest r;
    r.set_name(name);
    return images_->DeleteImage(r);
  }

  bool HasOperation(const std::string& kind, const std::string& volume, v1::OperationPhase phase) {
    for (const auto& op : host_->ListOperations()) {
      if (op.kind() == kind && op.object().name() == volume && op.phase() == phase) return true;
    }
    return false;
  }
};

TEST_F(ReplicatedImageTest, AVolumeFromAQcow2ImageHoldsItsBytesOnEveryReplica) {
  EXPECT_TRUE(images_->Capabilities().local_path());
  EXPECT_TRUE(storage_->Capabilities().from_image());
  auto image = ImportQcow2("guest");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->status().virtual_size_bytes(), kImageBytes);
  EXPECT_TRUE(std::filesystem::is_regular_file(image->status().path())) << image->status().path();

  auto volume = FromImage("root", "guest");
  ASSERT_TRUE(volume.ok()) << volume.status();
  const std::uint64_t size = 8 * kMiB + 4096;
  EXPECT_EQ(volume->spec().size_bytes(), size) << "size 0: the image's size, rounded up to 4096";
  EXPECT_EQ(volume->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY);
  ASSERT_EQ(volume->status().replicas_size(), 3);
  // --target-is-zero: the image's 8 MiB of zeros are not written, the replicas stay thin.
  EXPECT_LT(volume->status().actual_size_bytes(), kMiB);
  EXPECT_TRUE(HasOperation("CopyImage", "root", v1::OPERATION_PHASE_SUCCEEDED));
  auto copied = events_.WaitFor("ImageCopied", "root");
  ASSERT_TRUE(copied.has_value());
  EXPECT_THAT(copied->message(), AllOf(HasSubstr("\"guest\""), HasSubstr("qcow2")));
  std::cout << "ImageCopied: " << copied->message() << "\n";

  ExpectContent("root", size, Content(size));
  ExpectTailBlock("root");
  ExpectReplicasIdentical("root");

  // Idempotent by name.
  auto again = FromImage("root", "guest");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->metadata().uid(), volume->metadata().uid());

  // The image backend refuses to delete an image a volume of this backend was made from.
  Status in_use = DeleteImage("guest");
  EXPECT_EQ(in_use.code(), StatusCode::kFailedPrecondition) << in_use;
  EXPECT_THAT(in_use.message(), HasSubstr("\"root\""));
  v1::DeleteVolumeRequest del;
  del.set_name("root");
  ASSERT_TRUE(storage_->DeleteVolume(del).ok());
  EXPECT_TRUE(DeleteImage("guest").ok());
}

TEST_F(ReplicatedImageTest, ALargerVolumeReadsZerosPastTheImageAndBadRequestsLeaveNothing) {
  auto image = ImportQcow2("guest");
  ASSERT_TRUE(image.ok()) << image.status();

  auto larger = FromImage("big", "guest", 16 * kMiB);
  ASSERT_TRUE(larger.ok()) << larger.status();
  ExpectContent("big", 16 * kMiB, Content(16 * kMiB));
  ExpectTailBlock("big");

  auto smaller = FromImage("small", "guest", 4 * kMiB);
  EXPECT_EQ(smaller.status().code(), StatusCode::kInvalidArgument) << smaller.status();
  EXPECT_THAT(smaller.status().message(), HasSubstr("spec.size_bytes"));
  ExpectNoReplicas("small");

  auto missing = FromImage("orphan", "no-such-image");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status();
  EXPECT_THAT(missing.status().message(), HasSubstr("spec.source.image"));
  ExpectNoReplicas("orphan");

  v1::CreateVolumeRequest linked;
  linked.mutable_metadata()->set_name("linked");
  linked.mutable_spec()->set_linked_clone(true);
  linked.mutable_spec()->mutable_source()->set_image("guest");
  auto refused = storage_->CreateVolume(linked);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("spec.linked_clone"));
  ExpectNoReplicas("linked");

  auto bad_name = FromImage("bad-name", "Not_A_Label");
  EXPECT_EQ(bad_name.status().code(), StatusCode::kInvalidArgument) << bad_name.status();
  EXPECT_THAT(bad_name.status().message(), HasSubstr("spec.source.image"));
}

class ReplicatedScrubTest : public ReplicatedCloneTest {
 protected:
  // Overwrites `bytes` bytes at volume offset `offset` in the single layer file of `replica`
  // (bit rot behind the server's back; the server keeps running and its block map is unchanged).
  void Corrupt(const std::string& volume, const std::string& replica, std::uint64_t offset,
               std::size_t bytes) {
    auto got = Get(volume);
    ASSERT_TRUE(got.ok()) << got.status();
    int node = -1;
    for (const auto& r : got->status().replicas()) {
      if (r.name() == replica) node = r.node().back() - '0';
    }
    ASSERT_GE(node, 0) << replica;
    const std::string dir = nodes_->node(node).data_dir + "/" + replica;
    std::string layer;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      const std::string file = entry.path().filename().string();
      if (file.starts_with("layer-") && file.ends_with(".img")) layer = dir + "/" + file;
    }
    ASSERT_FALSE(layer.empty()) << dir;
    const int fd = ::open(layer.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << layer << ": " << std::strerror(errno);
    std::vector<std::uint8_t> junk(bytes, 0xee);
    ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(bytes));
    ::close(fd);
  }

  Result<Operation> StartScrub(const std::string& volume, bool report_only) {
    v1::ScrubVolumeRequest r;
    r.set_name(volume);
    r.set_report_only(report_only);
    return storage_->ScrubVolume(r);
  }

  // Runs a scrub to its end and returns the volume's last_scrub.
  v1::ScrubResult Scrub(const std::string& volume, bool report_only) {
    auto op = StartScrub(volume, report_only);
    EXPECT_TRUE(op.ok()) << op.status();
    if (!op.ok()) return {};
    const Status done = op->Wait(std::chrono::minutes(2));
    EXPECT_TRUE(done.ok()) << done;
    EXPECT_EQ(op->status().progress().done(), op->status().progress().total());
    auto got = Get(volume);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? got->status().last_scrub() : v1::ScrubResult();
  }

  bool EngineRunning(const std::string& volume) {
    const std::string pid =
        ReadAll(state_dir_ + "/plugins/replicated/run/" + volume + "/engine.pid");
    return !pid.empty() && ::kill(std::atoi(pid.c_str()), 0) == 0;
  }
};

TEST_F(ReplicatedScrubTest, RepairsACorruptedReplicaOfADetachedVolume) {
  EXPECT_TRUE(storage_->Capabilities().scrub());
  constexpr std::uint64_t kBig = 64 * kMiB;
  ASSERT_TRUE(Create("scrub1", kBig).ok());
  WriteAndDetach("scrub1", {{2 * kMiB, 4 * kMiB, 0x5a}, {40 * kMiB, kMiB, 0x33}});
  // Made in chunks the last engine wrote: after a clean detach the scrub's engine does not
  // resynchronise them from its source replica (which would hide or spread the corruption).
  ASSERT_NO_FATAL_FAILURE(Corrupt("scrub1", "scrub1-r1", 3 * kMiB + 12345, 1000));

  // Report only: exactly that extent of exactly that replica, which stays corrupt.
  v1::ScrubResult report = Scrub("scrub1", /*report_only=*/true);
  EXPECT_EQ(report.code(), 0) << report.error();
  EXPECT_TRUE(report.report_only());
  EXPECT_EQ(report.bytes_compared(), kBig);
  ASSERT_EQ(report.mismatches_size(), 1) << JsonOf(report);
  EXPECT_EQ(report.mismatches(0).replica(), "scrub1-r1");
  EXPECT_EQ(report.mismatches(0).offset(), 3 * kMiB);
  EXPECT_EQ(report.mismatches(0).length(), kMiB);
  EXPECT_FALSE(report.mismatches(0).repaired());
  EXPECT_EQ(report.mismatched_bytes(), kMiB);
  EXPECT_EQ(report.repaired_bytes(), 0u);
  EXPECT_TRUE(report.has_start_time() && report.has_end_time());
  auto mismatch = events_.WaitFor("ScrubMismatch", "scrub1");
  ASSERT_TRUE(mismatch.has_value());
  EXPECT_EQ(mismatch->type(), v1::EVENT_TYPE_WARNING);
  EXPECT_THAT(mismatch->message(), AllOf(HasSubstr("scrub1-r1"), HasSubstr("3145728")));
  EXPECT_TRUE(events_.WaitFor("ScrubCompleted", "scrub1").has_value());
  {
    auto files = ReplicaFiles("scrub1");
    EXPECT_NE(files["scrub1-r1"], files["scrub1-r0"]) << "a report-only scrub repaired";
  }
  // The engine started for the scrub is gone again, and the volume is still detached.
  auto got = Get("scrub1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  EXPECT_TRUE(got->status().attached_to().empty());
  EXPECT_FALSE(EngineRunning("scrub1"));

  const auto began = std::chrono::steady_clock::now();
  v1::ScrubResult repair = Scrub("scrub1", /*report_only=*/false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  EXPECT_EQ(repair.code(), 0) << repair.error();
  ASSERT_EQ(repair.mismatches_size(), 1) << JsonOf(repair);
  EXPECT_EQ(repair.mismatches(0).replica(), "scrub1-r1");
  EXPECT_EQ(repair.mismatches(0).offset(), 3 * kMiB);
  EXPECT_TRUE(repair.mismatches(0).repaired());
  EXPECT_EQ(repair.repaired_bytes(), kMiB);
  std::cout << "[ SCRUB ] detached 64 MiB volume, engine start + compare + repair + stop: "
            << seconds << " s\n";
  ExpectReplicasIdentical("scrub1");
  ExpectContent("scrub1", kBig,
                {{0, 2 * kMiB, 0}, {2 * kMiB, 4 * kMiB, 0x5a}, {40 * kMiB, kMiB, 0x33}});
  // Recorded: the result survives the Host, and a new scrub finds nothing.
  Close();
  Open();
  got = Get("scrub1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status().last_scrub().repaired_bytes(), kMiB) << JsonOf(*got);
  EXPECT_EQ(Scrub("scrub1", true).mismatches_size(), 0);
  auto metrics = storage_->Metrics();
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics,
              HasSubstr("hci_replicated_volume_last_scrub_mismatched_bytes{volume=\"scrub1\"} 0"));
}

TEST_F(ReplicatedScrubTest, ScrubWhileWritingThroughNbdFindsNothingAndLosesNothing) {
  ASSERT_TRUE(Create("busy", kSize).ok());
  auto info = Attach("busy");
  ASSERT_TRUE(info.ok()) << info.status();
  // One writer rewrites every 4 KiB block of the volume with a new byte per pass; the scrub
  // runs meanwhile.
  std::atomic<bool> stop{false};
  std::atomic<int> passes{0};
  std::atomic<int> written{0};
  const std::string socket = SocketOf(*info);
  std::thread writer([&] {
    Nbd nbd(socket);
    if (!nbd.ok()) return;
    for (std::uint8_t pass = 1; !stop; ++pass) {
      for (std::uint64_t off = 0; off < kSize && !stop; off += 4096) {
        nbd.Write(off, 4096, pass);
        ++written;
      }
      if (!stop) ++passes;
    }
  });
  auto op = StartScrub("busy", /*report_only=*/false);
  if (op.ok()) {
    EXPECT_TRUE(op->Wait(std::chrono::minutes(2)).ok());
  }
  stop = true;
  writer.join();
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_GT(written.load(), 100) << "the writer hardly wrote while the scrub ran";
  auto got = Get("busy");
  ASSERT_TRUE(got.ok());
  const auto& result = got->status().last_scrub();
  EXPECT_EQ(result.code(), 0) << result.error();
  EXPECT_EQ(result.bytes_compared(), kSize);
  EXPECT_EQ(result.mismatches_size(), 0) << "false mismatches: " << JsonOf(result);
  // What was written last (a pass may have stopped halfway: bytes are pass p or p+1).
  {
    Nbd nbd(socket);
    ASSERT_TRUE(nbd.ok());
    // The writer stopped in pass p: blocks before its position hold p, the others p - 1.
    const auto p = static_cast<std::uint8_t>(passes.load() + 1);
    for (std::uint64_t off = 0; off < kSize; off += 4096) {
      const std::string now = nbd.Check(off, 4096, p);
      const std::string before = nbd.Check(off, 4096, static_cast<std::uint8_t>(p - 1));
      ASSERT_TRUE(now.empty() || before.empty()) << now << "; " << before;
    }
  }
  ASSERT_TRUE(Detach("busy").ok());
  ExpectReplicasIdentical("busy");
}

TEST_F(ReplicatedScrubTest, TwoReplicasThatDisagreeAreReportedNotRepaired) {
  ASSERT_TRUE(Create("pair", kSize, 2).ok());
  WriteAndDetach("pair", {{0, 4 * kMiB, 0x42}});
  // pair-r0 is the engine's source (ties by name): were the chunks the last engine wrote
  // resynchronised from it at start, pair-r1 would get the corruption too.
  ASSERT_NO_FATAL_FAILURE(Corrupt("pair", "pair-r0", kMiB, 4096));
  v1::ScrubResult result = Scrub("pair", /*report_only=*/false);
  EXPECT_EQ(result.code(), 0) << result.error();
  ASSERT_EQ(result.mismatches_size(), 2) << JsonOf(result);
  std::set<std::string> replicas;
  for (const auto& m : result.mismatches()) {
    replicas.insert(m.replica());
    EXPECT_EQ(m.offset(), kMiB);
    EXPECT_FALSE(m.repaired());
  }
  EXPECT_EQ(replicas, (std::set<std::string>{"pair-r0", "pair-r1"}));
  EXPECT_EQ(result.repaired_bytes(), 0u);
  auto files = ReplicaFiles("pair");
  EXPECT_NE(files["pair-r0"], files["pair-r1"]) << "a guess was written";
}

TEST_F(ReplicatedScrubTest, AttachTakesOverADetachedScrubAndCancelStopsOne) {
  // 2 MiB/s (the rebuild rate limits scrubs too): a 16 MiB scrub takes 8 s.
  options_.mutable_fields()->operator[]("rebuild_bytes_per_second").set_number_value(2 << 20);
  Close();
  Open();
  ASSERT_TRUE(Create("slow", kSize).ok());
  auto missing = StartScrub("nope", false);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status();
  ASSERT_TRUE(Create("single", kSize, 1).ok());
  auto single = StartScrub("single", false);
  EXPECT_EQ(single.status().code(), StatusCode::kFailedPrecondition) << single.status();

  auto op = StartScrub("slow", false);
  ASSERT_TRUE(op.ok()) << op.status();
  auto twice = StartScrub("slow", false);
  EXPECT_EQ(twice.status().code(), StatusCode::kAborted) << twice.status();
  auto deleting = Delete("slow");
  EXPECT_EQ(deleting.code(), StatusCode::kFailedPrecondition) << deleting;
  auto snap = Snapshot("slow", "s1");
  EXPECT_EQ(snap.status().code(), StatusCode::kFailedPrecondition) << snap.status();
  // The attach takes the scrub's engine over; the scrub goes on and the engine stays.
  auto info = Attach("slow");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(op->Wait(std::chrono::minutes(1)).ok());
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    nbd.Write(0, kMiB, 0x11);
    EXPECT_EQ(nbd.Check(0, kMiB, 0x11), "");
  }
  auto got = Get("slow");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status().attached_to(), "vm-a");
  EXPECT_EQ(got->status().last_scrub().bytes_compared(), kSize);

  // Cancelled: the operation and the recorded result say so.
  auto cancelled = StartScrub("slow", true);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  ASSERT_TRUE(cancelled->Cancel().ok());
  EXPECT_EQ(cancelled->Wait(std::chrono::minutes(1)).code(), StatusCode::kCancelled);
  got = Get("slow");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status().last_scrub().code(), static_cast<int>(StatusCode::kCancelled));
  EXPECT_LT(got->status().last_scrub().bytes_compared(), kSize);
  EXPECT_TRUE(events_.WaitFor("ScrubFailed", "slow").has_value());
  ASSERT_TRUE(Detach("slow").ok());
}

// ---------------------------------------------------------------------------------------------
// Spare nodes: replica replenishment

// Four storage nodes for three replicas (one spare), and a short replenish wait.
class ReplicatedSpareTest : public ReplicatedCloneTest {
 protected:
  void SetUp() override {
    nodes_ = TestNodes::Start(4);
    ASSERT_NE(nodes_, nullptr);
    state_dir_ = nodes_->dir() + "/host";
    options_ = nodes_->Options();
    (*options_.mutable_fields())["replica_replenish_wait_ms"].set_number_value(2000);
    Open();
  }
};

TEST_F(ReplicatedSpareTest, AReplicaOfAKilledNodeIsReplacedOnTheSpareNodeAndRetiredOnDelete) {
  auto created = Create("spare");
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_EQ(created->status().replicas_size(), 3) << JsonOf(*created);
  std::set<std::string> placed;
  for (const auto& r : created->status().replicas()) placed.insert(r.node());
  ASSERT_EQ(placed.size(), 3u) << JsonOf(*created);
  std::string spare_node;
  for (int i = 0; i < 4; ++i) {
    if (placed.count(nodes_->node(i).name) == 0) spare_node = nodes_->node(i).name;
  }
  const std::string lost = created->status().replicas(1).name();
  const std::string lost_node = created->status().replicas(1).node();
  const int killed = lost_node.back() - '0';
  ASSERT_TRUE(nodes_->HasReplica(killed, lost));

  auto info = Attach("spare");
  ASSERT_TRUE(info.ok()) << info.status();
  const std::vector<Expect> written = {
      {0, kMiB, 0x31}, {5 * kMiB, 64 * 1024, 0x32}, {kSize - 4096, 4096, 0x33}};
  const Expect degraded_write{8 * kMiB, kMiB, 0x34};
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    for (const Expect& e : written) nbd.Write(e.offset, e.length, e.byte);
    nbd.Flush();

    // The guest goes on writing while one replica's node is gone: the write reaches the two
    // others, and the replacement gets it from them by its full rebuild.
    nodes_->Kill(killed);
    nbd.Write(degraded_write.offset, degraded_write.length, degraded_write.byte);
    nbd.Flush();
  }

  // The engine replaces the member after replica_replenish_wait_ms (2 s) on the one node that
  // holds none of the volume's replicas; GetVolume adopts the membership.
  v1::Volume last;
  bool replaced = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    auto got = Get("spare");
    ASSERT_TRUE(got.ok()) << got.status();
    last = *got;
    replaced =
        last.status().robustness() == v1::VOLUME_ROBUSTNESS_HEALTHY &&
        std::any_of(last.status().replicas().begin(), last.status().replicas().end(),
                    [&](const v1::ReplicaStatus& r) {
                      return r.node() == spare_node && r.state() == v1::REPLICA_STATE_HEALTHY;
                    });
    if (replaced) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_TRUE(replaced) << "no healthy replica on spare node " << spare_node
                        << " within 60 s of the kill: " << JsonOf(last);
  auto event = events_.WaitFor("ReplicaReplaced", "spare");
  ASSERT_TRUE(event.has_value()) << "no ReplicaReplaced event";
  EXPECT_THAT(event->message(), AllOf(HasSubstr(lost + " on node " + lost_node),
                                      HasSubstr("spare-r3 on node " + spare_node)));

  // Three members on distinct nodes, the killed one not among them; the data is all there.
  auto expect_membership = [&](const v1::Volume& v) {
    ASSERT_EQ(v.status().replicas_size(), 3) << JsonOf(v);
    std::set<std::string> nodes, names;
    for (const auto& r : v.status().replicas()) {
      nodes.insert(r.node());
      names.insert(r.name());
      EXPECT_EQ(r.state(), v1::REPLICA_STATE_HEALTHY) << JsonOf(v);
    }
    EXPECT_EQ(nodes.size(), 3u) << JsonOf(v);
    EXPECT_EQ(nodes.count(lost_node), 0u) << JsonOf(v);
    EXPECT_EQ(nodes.count(spare_node), 1u) << JsonOf(v);
    EXPECT_EQ(names.count(lost), 0u) << JsonOf(v);
    EXPECT_EQ(names.count("spare-r3"), 1u) << JsonOf(v);
  };
  ASSERT_NO_FATAL_FAILURE(expect_membership(last));
  {
    Nbd nbd(SocketOf(*info));
    ASSERT_TRUE(nbd.ok());
    for (const Expect& e : written) {
      EXPECT_EQ(nbd.Check(e.offset, e.length, e.byte), "") << "at " << e.offset;
    }
    EXPECT_EQ(nbd.Check(degraded_write.offset, degraded_write.length, degraded_write.byte), "");
    EXPECT_EQ(nbd.Check(2 * kMiB, kMiB, 0), "");
  }
  ASSERT_TRUE(Detach("spare").ok());
  // Reads above may come from any member: the new one must hold the same bytes itself.
  ExpectReplicasIdentical("spare");

  // The membership is the record's, not only the engine's: a new Host sees it, and the engine
  // it starts serves the volume from the new members.
  Close();
  Open();
  auto reopened = Get("spare");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(reopened->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY) << JsonOf(*reopened);
  ASSERT_NO_FATAL_FAILURE(expect_membership(*reopened));
  std::vector<Expect> all = written;
  all.push_back(degraded_write);
  ASSERT_NO_FATAL_FAILURE(ExpectContent("spare", kSize, all));
  EXPECT_EQ(events_.Count("ReplicaReplaced", "spare"), 1);

  // The retired replica is still on the killed node (it was down while the engines ran). It
  // holds the delete up as a member would: left behind, it would be taken by the create of a
  // new volume "spare" and serve this one's data. Once the node answers, a retry deletes it.
  EXPECT_TRUE(nodes_->HasReplica(killed, lost));
  Status held = Delete("spare");
  EXPECT_EQ(held.code(), StatusCode::kUnavailable) << held;
  EXPECT_THAT(held.message(), AllOf(HasSubstr(lost), HasSubstr("retry")));
  auto deleting = Get("spare");
  ASSERT_TRUE(deleting.ok()) << deleting.status();
  EXPECT_EQ(deleting->status().phase(), v1::VOLUME_PHASE_DELETING);
  ASSERT_EQ(nodes_->StartServer(killed), Status::OK());
  EXPECT_TRUE(nodes_->HasReplica(killed, lost));
  ASSERT_TRUE(Delete("spare").ok());
  EXPECT_EQ(Get("spare").status().code(), StatusCode::kNotFound);
  for (int i = 0; i < 4; ++i) {
    for (int k = 0; k < 4; ++k) {
      const std::string replica = "spare-r" + std::to_string(k);
      EXPECT_FALSE(nodes_->HasReplica(i, replica)) << replica << " left on node" << i;
    }
  }
}

}  // namespace
}  // namespace hci::replicated::plugin_testing
