// Integration test: the built hci_example.so loaded by a real hci::Host, as an embedder would
// load it. This checks what the unit tests cannot: that the loader accepts the file (ABI,
// toolchain, permissions), that the factories work with the core's context, and that the core's
// checks sit in front of the plugin.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "hci/hci.h"

namespace {

namespace v1 = hci::v1;
using ::testing::HasSubstr;

// The core logs every call; the test asserts on statuses instead.
class NullLogSink final : public hci::LogSink {
 public:
  void Write(const hci::LogRecord&) override {}
};

// The host config's `backends`: every kind the plugin provides (keep in step with plugin.cc).
constexpr char kBackends[] = R"(
compute: {plugin: example}
storage: {plugin: example}
network: {plugin: example}
image: {plugin: example}
backup: {plugin: example}
)";

// A Host with the plugin bound to its kinds, on a fresh state directory (one Host per state
// directory).
class HostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(hci::ParseYaml(kBackends, config_.mutable_backends()).ok());
    std::string state_dir = ::testing::TempDir() + "hci-example-host-XXXXXX";
    ASSERT_NE(::mkdtemp(state_dir.data()), nullptr);
    config_.set_node_name("node-1");
    config_.set_state_dir(state_dir);
    config_.add_plugin_dirs(EXAMPLE_PLUGIN_DIR);  // Where CMake put hci_example.so.
  }
  void TearDown() override {
    host_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(config_.state_dir(), ignored);
  }

  // Opens the Host for config_; fails the test when it cannot.
  hci::Host* Open() {
    hci::HostOptions options;
    options.log_sink = std::make_shared<NullLogSink>();
    auto host = hci::Host::Open(config_, options);
    EXPECT_TRUE(host.ok()) << host.status();
    if (host.ok()) host_ = std::move(host).MoveValueUnsafe();
    return host_.get();
  }

  v1::HostConfig config_;
  std::unique_ptr<hci::Host> host_;
};

TEST_F(HostTest, TheLoaderAcceptsThePlugin) {
  hci::Host* host = Open();
  ASSERT_NE(host, nullptr);
  bool found = false;
  for (const v1::PluginInfo& plugin : host->plugins()) {
    if (plugin.name() != "example") continue;
    found = true;
    EXPECT_EQ(plugin.state(), v1::PLUGIN_STATE_LOADED) << plugin.reason();
    // It provides exactly the kinds kBackends binds.
    std::vector<const google::protobuf::FieldDescriptor*> bound;
    config_.backends().GetReflection()->ListFields(config_.backends(), &bound);
    EXPECT_EQ(plugin.kinds_size(), static_cast<int>(bound.size()));
  }
  EXPECT_TRUE(found) << "no hci_example.so in " << EXAMPLE_PLUGIN_DIR;
}

TEST_F(HostTest, AVmBootsFromAVolume) {
  hci::Host* host = Open();
  ASSERT_NE(host, nullptr);
  hci::StorageBackend* storage = *host->storage();
  hci::ComputeBackend* compute = *host->compute();

  v1::CreateVolumeRequest volume;
  volume.mutable_metadata()->set_name("root");
  volume.mutable_spec()->set_size_bytes(1 << 30);
  ASSERT_TRUE(storage->CreateVolume(volume).ok());
  v1::CreateVmRequest vm;
  vm.mutable_metadata()->set_name("demo");
  vm.mutable_spec()->set_vcpus(1);
  vm.mutable_spec()->set_memory_mib(256);
  auto* disk = vm.mutable_spec()->add_disks();
  disk->set_name("root");
  disk->set_volume("root");
  // Events arrive on the core's dispatch thread, after the call that published them returned.
  std::mutex mu;
  std::condition_variable cv;
  std::string node;  // Of the VM's first VmPhaseChanged event.
  hci::Subscription events = host->Subscribe([&](const v1::Event& event) {
    std::lock_guard lock(mu);
    if (event.reason() == "VmPhaseChanged" && node.empty()) node = event.node();
    cv.notify_all();
  });
  ASSERT_TRUE(compute->CreateVm(vm).ok());
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return !node.empty(); }));
    EXPECT_EQ(node, "node-1");  // Filled in by the core.
  }
  v1::StartVmRequest start;
  start.set_name("demo");
  auto started = compute->StartVm(start);
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->status().phase(), v1::VM_PHASE_RUNNING);
  v1::GetVolumeRequest get;
  get.set_name("root");
  EXPECT_EQ(storage->GetVolume(get)->status().attached_to(), "demo");
  // The plugin's own metrics follow the core's.
  EXPECT_THAT(host->Metrics(), HasSubstr("hci_example_volumes 1"));
}

TEST_F(HostTest, TheCoreChecksNamesBeforeThePluginSeesThem) {
  hci::Host* host = Open();
  ASSERT_NE(host, nullptr);
  v1::CreateVolumeRequest volume;
  volume.mutable_metadata()->set_name("Not_A_Name");
  volume.mutable_spec()->set_size_bytes(4096);
  auto created = (*host->storage())->CreateVolume(volume);
  EXPECT_EQ(created.status().code(), hci::StatusCode::kInvalidArgument);
  EXPECT_THAT(created.status().message(), HasSubstr("metadata.name"));
}

TEST_F(HostTest, BadOptionsStopTheHostNamingTheBinding) {
  auto& options = *config_.mutable_backends()->mutable_storage()->mutable_options();
  (*options.mutable_fields())["capacity_bytes"].set_string_value("a lot");
  auto host = hci::Host::Open(config_);
  EXPECT_EQ(host.status().code(), hci::StatusCode::kInvalidArgument);
  EXPECT_THAT(host.status().message(),
              HasSubstr("backends.storage (plugin \"example\"): options.capacity_bytes"));
}

}  // namespace
