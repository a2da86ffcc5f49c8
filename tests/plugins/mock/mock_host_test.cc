// Integration tests: the real hci_mock.so loaded by hci::Host, every kind bound to "mock", so
// each call goes through the core's guard (name validation, Aborted for concurrent mutations).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "mock_test_util.h"

namespace hci::mock {
namespace {

using testing::EventLog;
using ::testing::HasSubstr;
using testing::ImageRequest;
using testing::MakeFault;
using testing::Named;
using testing::Options;
using testing::VlanRequest;
using testing::VmRequest;
using testing::VolumeRequest;

// Drops log lines: the tests assert on statuses and events.
class NullLogSink final : public LogSink {
 public:
  void Write(const LogRecord&) override {}
};

// A fresh state directory per Host (one Host per state directory at a time).
std::string NewStateDir() {
  std::string pattern = ::testing::TempDir() + "hci-mock-test-XXXXXX";
  char* made = ::mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return pattern;
}

// Every kind bound to "mock"; `storage_options` and `image_options` for those two bindings.
v1::HostConfig MockConfig(const google::protobuf::Struct& storage_options = {},
                          const google::protobuf::Struct& image_options = {}) {
  v1::HostConfig config;
  config.set_node_name("node-a");
  config.set_state_dir(NewStateDir());
  config.add_plugin_dirs(HCI_TEST_PLUGIN_DIR);
  auto* b = config.mutable_backends();
  for (auto* binding : {b->mutable_compute(), b->mutable_storage(), b->mutable_network(),
                        b->mutable_image(), b->mutable_backup()}) {
    binding->set_plugin("mock");
  }
  if (!storage_options.fields().empty()) {
    *b->mutable_storage()->mutable_options() = storage_options;
  }
  if (!image_options.fields().empty()) *b->mutable_image()->mutable_options() = image_options;
  return config;
}

std::unique_ptr<Host> OpenHost(const v1::HostConfig& config) {
  HostOptions options;
  options.log_sink = std::make_shared<NullLogSink>();
  auto host = Host::Open(config, options);
  EXPECT_TRUE(host.ok()) << host.status();
  if (!host.ok()) return nullptr;
  return std::move(host).MoveValueUnsafe();
}

class MockHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_dir_ = config_.state_dir();
    host_ = OpenHost(config_);
    ASSERT_NE(host_, nullptr);
    compute_ = *host_->compute();
    storage_ = *host_->storage();
    network_ = *host_->network();
    image_ = *host_->image();
    backup_ = *host_->backup();
  }
  void TearDown() override {
    host_.reset();
    std::error_code ec;
    std::filesystem::remove_all(state_dir_, ec);
  }

  v1::HostConfig config_ = MockConfig();
  std::string state_dir_;
  std::unique_ptr<Host> host_;
  ComputeBackend* compute_ = nullptr;
  StorageBackend* storage_ = nullptr;
  NetworkBackend* network_ = nullptr;
  ImageBackend* image_ = nullptr;
  BackupBackend* backup_ = nullptr;
};

TEST_F(MockHostTest, PluginLoadedForAllFiveKinds) {
  bool found = false;
  for (const auto& info : host_->plugins()) {
    if (info.name() != "mock") continue;
    found = true;
    EXPECT_EQ(info.state(), v1::PLUGIN_STATE_LOADED) << info.reason();
    EXPECT_THAT(info.kinds(), ::testing::UnorderedElementsAre("compute", "storage", "network",
                                                              "image", "backup"));
  }
  EXPECT_TRUE(found);
  // The core's wrappers pass the shared injector through.
  ASSERT_NE(compute_->fault_injector(), nullptr);
  EXPECT_EQ(storage_->fault_injector(), compute_->fault_injector());
  EXPECT_EQ(backup_->fault_injector(), compute_->fault_injector());
}

TEST_F(MockHostTest, CreateByNameRepeatedTenTimesReturnsTheSameObject) {
  auto vm = compute_->CreateVm(VmRequest("vm-1"));
  auto volume = storage_->CreateVolume(VolumeRequest("vol-1", 1 << 20));
  auto net = network_->CreateNetwork(VlanRequest("vlan100", 100));
  auto import = image_->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(vm.ok() && volume.ok() && net.ok() && import.ok());
  for (int i = 0; i < 10; ++i) {
    auto v = compute_->CreateVm(VmRequest("vm-1"));
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->metadata().uid(), vm->metadata().uid());
    EXPECT_EQ(v->metadata().creation_time().SerializeAsString(),
              vm->metadata().creation_time().SerializeAsString());
    auto s = storage_->CreateVolume(VolumeRequest("vol-1", 1 << 20));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->metadata().uid(), volume->metadata().uid());
    auto n = network_->CreateNetwork(VlanRequest("vlan100", 100));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(n->metadata().uid(), net->metadata().uid());
    auto op = image_->ImportImage(ImageRequest("debian"));
    ASSERT_TRUE(op.ok()) << op.status();
    EXPECT_EQ(op->id(), import->id());
  }
  EXPECT_EQ(compute_->ListVms({})->vms_size(), 1);
  EXPECT_EQ(storage_->ListVolumes({})->volumes_size(), 1);
}

TEST_F(MockHostTest, ConflictingSpecAndMissingObjects) {
  ASSERT_TRUE(compute_->CreateVm(VmRequest("vm-1", 1, 256)).ok());
  auto conflict = compute_->CreateVm(VmRequest("vm-1", 1, 512));
  EXPECT_EQ(conflict.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(conflict.status().message(), HasSubstr("vm \"vm-1\" already exists"));
  ASSERT_TRUE(storage_->CreateVolume(VolumeRequest("vol-1", 4096)).ok());
  auto vconflict = storage_->CreateVolume(VolumeRequest("vol-1", 8192));
  EXPECT_EQ(vconflict.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(vconflict.status().message(), HasSubstr("volume \"vol-1\""));

  auto missing = compute_->GetVm(Named<v1::GetVmRequest>("x"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "vm \"x\" does not exist");
  EXPECT_EQ(storage_->GetVolume(Named<v1::GetVolumeRequest>("x")).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(network_->GetNetwork(Named<v1::GetNetworkRequest>("x")).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("x")).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(backup_->GetBackupTarget(Named<v1::GetBackupTargetRequest>("x")).status().code(),
            StatusCode::kNotFound);
  // Deletes of missing objects are OK.
  EXPECT_TRUE(compute_->DeleteVm(Named<v1::DeleteVmRequest>("x")).ok());
  EXPECT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("x")).ok());
  EXPECT_TRUE(network_->DeleteNetwork(Named<v1::DeleteNetworkRequest>("x")).ok());
  EXPECT_TRUE(image_->DeleteImage(Named<v1::DeleteImageRequest>("x")).ok());
}

TEST_F(MockHostTest, IllegalLifecycleTransitionsChangeNothing) {
  ASSERT_TRUE(compute_->CreateVm(VmRequest("vm-1")).ok());
  auto get = [&] { return *compute_->GetVm(Named<v1::GetVmRequest>("vm-1")); };
  auto expect_refused = [&](Status s, StatusCode code) {
    v1::VirtualMachine before = get();
    EXPECT_EQ(s.code(), code) << s;
    v1::VirtualMachine after = get();
    EXPECT_EQ(after.SerializeAsString(), before.SerializeAsString());
  };
  // Stopped.
  expect_refused(compute_->PauseVm(Named<v1::PauseVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  expect_refused(compute_->ResumeVm(Named<v1::ResumeVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  expect_refused(compute_->RestartVm(Named<v1::RestartVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  expect_refused(compute_->MigrateVm(Named<v1::MigrateVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  v1::VirtualMachine stopped = get();
  ASSERT_TRUE(compute_->StopVm(Named<v1::StopVmRequest>("vm-1")).ok());  // no-op
  EXPECT_EQ(get().SerializeAsString(), stopped.SerializeAsString());
  // Running.
  ASSERT_TRUE(compute_->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  expect_refused(compute_->ResumeVm(Named<v1::ResumeVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  expect_refused(compute_->DeleteVm(Named<v1::DeleteVmRequest>("vm-1")),
                 StatusCode::kFailedPrecondition);
  v1::VirtualMachine running = get();
  ASSERT_TRUE(compute_->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());  // no-op
  EXPECT_EQ(get().SerializeAsString(), running.SerializeAsString());
  // Paused.
  ASSERT_TRUE(compute_->PauseVm(Named<v1::PauseVmRequest>("vm-1")).ok());
  expect_refused(compute_->StartVm(Named<v1::StartVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  expect_refused(compute_->PauseVm(Named<v1::PauseVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  expect_refused(compute_->RestartVm(Named<v1::RestartVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition);
  EXPECT_EQ(get().status().phase(), v1::VM_PHASE_PAUSED);
}

TEST_F(MockHostTest, InjectedFaultsSurfaceThroughTheCoreAndStopAfterCount) {
  FaultInjector* faults = storage_->fault_injector();
  ASSERT_NE(faults, nullptr);
  ASSERT_TRUE(faults->Inject(MakeFault("CreateVolume", StatusCode::kUnavailable, 2)).ok());
  ASSERT_TRUE(faults->Inject(MakeFault("StartVm", StatusCode::kResourceExhausted, 1)).ok());
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(storage_->CreateVolume(VolumeRequest("v", 4096)).status().code(),
              StatusCode::kUnavailable);
  }
  EXPECT_TRUE(storage_->CreateVolume(VolumeRequest("v", 4096)).ok());
  ASSERT_TRUE(compute_->CreateVm(VmRequest("vm-1")).ok());
  EXPECT_EQ(compute_->StartVm(Named<v1::StartVmRequest>("vm-1")).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(compute_->GetVm(Named<v1::GetVmRequest>("vm-1"))->status().phase(),
            v1::VM_PHASE_STOPPED);
  EXPECT_TRUE(compute_->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  // Until cleared.
  ASSERT_TRUE(faults->Inject(MakeFault("ListNetworks", StatusCode::kInternal)).ok());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(network_->ListNetworks({}).status().code(), StatusCode::kInternal);
  }
  faults->Clear();
  EXPECT_TRUE(network_->ListNetworks({}).ok());
  // The core counted the failures.
  EXPECT_THAT(host_->Metrics(), HasSubstr("CreateVolume"));
}

TEST_F(MockHostTest, LatencyFaultMakesAConcurrentMutationAborted) {
  ASSERT_TRUE(compute_->CreateVm(VmRequest("vm-1")).ok());
  ASSERT_TRUE(
      compute_->fault_injector()->Inject(MakeFault("StartVm", StatusCode::kOk, 0, 600)).ok());
  std::latch go(2);
  std::vector<Status> results(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      results[i] = compute_->StartVm(Named<v1::StartVmRequest>("vm-1")).status();
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, aborted = 0;
  for (const auto& s : results) {
    if (s.ok()) ++ok;
    if (s.code() == StatusCode::kAborted) {
      ++aborted;
      EXPECT_THAT(s.message(), HasSubstr("StartVm"));
    }
  }
  EXPECT_EQ(ok, 1) << results[0] << " / " << results[1];
  EXPECT_EQ(aborted, 1) << results[0] << " / " << results[1];
  EXPECT_EQ(compute_->GetVm(Named<v1::GetVmRequest>("vm-1"))->status().phase(),
            v1::VM_PHASE_RUNNING);
}

TEST_F(MockHostTest, InvalidNamesAreRejectedBeforeTheMock) {
  // Any call that reached the mock would fail with DataLoss instead.
  ASSERT_TRUE(compute_->fault_injector()->Inject(MakeFault("*", StatusCode::kDataLoss)).ok());
  for (const std::string& name : {std::string("../x"), std::string("a/b"), std::string("Vm1"),
                                  std::string(), std::string(64, 'a')}) {
    auto vm = compute_->CreateVm(VmRequest(name));
    EXPECT_EQ(vm.status().code(), StatusCode::kInvalidArgument) << name << ": " << vm.status();
    EXPECT_TRUE(vm.status().message().starts_with("metadata.name:")) << vm.status();
    auto vol = storage_->CreateVolume(VolumeRequest(name, 4096));
    EXPECT_EQ(vol.status().code(), StatusCode::kInvalidArgument) << vol.status();
    EXPECT_TRUE(vol.status().message().starts_with("metadata.name:")) << vol.status();
    auto get = compute_->GetVm(Named<v1::GetVmRequest>(name));
    EXPECT_EQ(get.status().code(), StatusCode::kInvalidArgument) << get.status();
    EXPECT_TRUE(get.status().message().starts_with("name:")) << get.status();
    auto img = image_->ImportImage(ImageRequest(name));
    EXPECT_EQ(img.status().code(), StatusCode::kInvalidArgument) << img.status();
  }
  // A valid name does reach the mock (and its fault).
  EXPECT_EQ(compute_->GetVm(Named<v1::GetVmRequest>("vm-1")).status().code(),
            StatusCode::kDataLoss);
}

TEST_F(MockHostTest, ImportProgressCallbacksAndEvents) {
  EventLog events;
  Subscription sub = host_->Subscribe(events.Callback());
  auto op = image_->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(op.ok()) << op.status();
  std::mutex mu;
  std::vector<std::uint64_t> done;
  op->OnProgress([&](const v1::OperationStatus& s) {
    std::lock_guard lock(mu);
    done.push_back(s.progress().done());
  });
  ASSERT_TRUE(op->Wait(std::chrono::seconds(5)).ok());
  {
    std::lock_guard lock(mu);
    ASSERT_FALSE(done.empty());
    EXPECT_EQ(done.back(), op->status().progress().total());
  }
  auto ready = events.WaitFor([](const v1::Event& e) { return e.reason() == "ImageReady"; });
  ASSERT_TRUE(ready.has_value());
  EXPECT_EQ(ready->object().name(), "debian");
  EXPECT_EQ(ready->source(), "mock");
  EXPECT_EQ(ready->node(), "node-a");
  EXPECT_TRUE(events
                  .WaitFor([&](const v1::Event& e) {
                    return e.reason() == "OperationFinished" && e.operation_id() == op->id();
                  })
                  .has_value());
  ASSERT_TRUE(host_->GetOperation(op->id()).ok());
}

TEST(MockHostOptions, ImportCancelEndsCancelledAndFailsTheImage) {
  // Slow steps so that Cancel surely arrives while the import runs.
  auto config = MockConfig({}, Options(R"({"operation_step_ms": 500})"));
  auto host = OpenHost(config);
  ASSERT_NE(host, nullptr);
  EventLog events;
  Subscription sub = host->Subscribe(events.Callback());
  ImageBackend* image = *host->image();
  auto op = image->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(op->Cancel().ok());
  EXPECT_EQ(op->Wait(std::chrono::seconds(5)).code(), StatusCode::kCancelled);
  EXPECT_EQ(op->status().phase(), v1::OPERATION_PHASE_CANCELLED);
  EXPECT_EQ(image->GetImage(Named<v1::GetImageRequest>("debian"))->status().phase(),
            v1::IMAGE_PHASE_FAILED);
  EXPECT_TRUE(events
                  .WaitFor([](const v1::Event& e) {
                    return e.reason() == "ImportFailed" && e.type() == v1::EVENT_TYPE_WARNING;
                  })
                  .has_value());
  sub.Reset();
  host.reset();
  std::filesystem::remove_all(config.state_dir());
}

TEST_F(MockHostTest, VmPhaseChangeProducesEvent) {
  EventLog events;
  Subscription sub = host_->Subscribe(events.Callback());
  ASSERT_TRUE(compute_->CreateVm(VmRequest("vm-1")).ok());
  ASSERT_TRUE(compute_->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  auto event = events.WaitFor([](const v1::Event& e) {
    return e.reason() == "VmPhaseChanged" && e.vm_phase().new_phase() == v1::VM_PHASE_RUNNING;
  });
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->object().kind(), "VirtualMachine");
  EXPECT_EQ(event->object().name(), "vm-1");
  EXPECT_EQ(event->vm_phase().old_phase(), v1::VM_PHASE_STARTING);
  EXPECT_EQ(event->source(), "mock");
  EXPECT_TRUE(event->has_time());
}

TEST_F(MockHostTest, VmWithVolumesAndRestoreAcrossBackends) {
  ASSERT_TRUE(storage_->CreateVolume(VolumeRequest("root", 1 << 20)).ok());
  auto request = VmRequest("vm-1");
  auto* disk = request.mutable_spec()->add_disks();
  disk->set_name("root");
  disk->set_volume("root");
  request.mutable_spec()->set_run_strategy(v1::RUN_STRATEGY_ALWAYS);
  auto vm = compute_->CreateVm(request);
  ASSERT_TRUE(vm.ok()) << vm.status();
  EXPECT_EQ(vm->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(storage_->GetVolume(Named<v1::GetVolumeRequest>("root"))->status().attached_to(),
            "vm-1");
  EXPECT_EQ(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("root")).code(),
            StatusCode::kFailedPrecondition);

  v1::CreateBackupTargetRequest target;
  target.mutable_metadata()->set_name("nfs");
  target.mutable_spec()->set_url("nfs://127.0.0.1/export");
  ASSERT_TRUE(backup_->CreateBackupTarget(target).ok());
  v1::CreateBackupRequest b;
  b.mutable_metadata()->set_name("b1");
  b.mutable_spec()->set_target("nfs");
  b.mutable_spec()->set_volume("root");
  auto op = backup_->CreateBackup(b);
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(op->Wait(std::chrono::seconds(5)).ok());
  v1::RestoreBackupRequest restore;
  restore.set_target("nfs");
  restore.set_backup("b1");
  restore.mutable_volume()->set_name("root-copy");
  auto restored = backup_->RestoreBackup(restore);
  ASSERT_TRUE(restored.ok()) << restored.status();
  ASSERT_TRUE(restored->Wait(std::chrono::seconds(5)).ok()) << restored->status().error();
  EXPECT_EQ(storage_->GetVolume(Named<v1::GetVolumeRequest>("root-copy"))->spec().size_bytes(),
            1u << 20);
}

TEST(MockHostOptions, FaultsFromPluginOptions) {
  auto config = MockConfig(Options(R"({"faults": [
      {"operation": "CreateVolume", "code": 14, "count": 2, "message": "configured"}]})"));
  auto host = OpenHost(config);
  ASSERT_NE(host, nullptr);
  StorageBackend* storage = *host->storage();
  for (int i = 0; i < 2; ++i) {
    auto r = storage->CreateVolume(VolumeRequest("v", 4096));
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(r.status().message(), HasSubstr("configured"));
  }
  EXPECT_TRUE(storage->CreateVolume(VolumeRequest("v", 4096)).ok());
  host.reset();
  std::filesystem::remove_all(config.state_dir());
}

TEST(MockHostOptions, LatencyOptionDelaysEveryCall) {
  auto config = MockConfig(Options(R"({"latency_ms": 30})"));
  auto host = OpenHost(config);
  ASSERT_NE(host, nullptr);
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE((*host->storage())->ListVolumes({}).ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(30));
  // Other kinds have their own (default) options.
  EXPECT_TRUE((*host->network())->ListNetworks({}).ok());
  host.reset();
  std::filesystem::remove_all(config.state_dir());
}

TEST(MockHostOptions, BadOptionsFailOpenNamingTheField) {
  auto config = MockConfig(Options(R"({"faults": [{"operation": "CreateVolume", "code": 99}]})"));
  HostOptions options;
  options.log_sink = std::make_shared<NullLogSink>();
  auto host = Host::Open(config, options);
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(host.status().message(), HasSubstr("faults[0].code"));
  EXPECT_THAT(host.status().message(), HasSubstr("backends.storage"));
  std::filesystem::remove_all(config.state_dir());
}

}  // namespace
}  // namespace hci::mock
