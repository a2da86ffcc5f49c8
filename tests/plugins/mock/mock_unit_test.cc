// Unit tests of the mock plugin: the factories and backends called directly (no core guard),
// through a fake PluginContext.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "mock_internal.h"
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

constexpr std::uint64_t kMiB = 1 << 20;

class FakeContext final : public PluginContext {
 public:
  explicit FakeContext(google::protobuf::Struct options = {})
      : options_(std::move(options)), tracker_(MakeOperationTracker(&events_)) {}

  const std::string& plugin_name() const override { return plugin_; }
  const std::string& node_name() const override { return node_; }
  const std::string& state_dir() const override { return state_dir_; }
  const google::protobuf::Struct& options() const override { return options_; }
  const Logger& logger() const override { return logger_; }
  EventSink& events() override { return events_; }
  OperationTracker& operations() override { return *tracker_; }
  ComputeBackend* compute() override { return compute_; }
  StorageBackend* storage() override { return storage_; }
  NetworkBackend* network() override { return network_; }
  ImageBackend* image() override { return image_; }
  BackupBackend* backup() override { return backup_; }

  EventLog& log() { return events_; }

  ComputeBackend* compute_ = nullptr;
  StorageBackend* storage_ = nullptr;
  NetworkBackend* network_ = nullptr;
  ImageBackend* image_ = nullptr;
  BackupBackend* backup_ = nullptr;

 private:
  std::string plugin_ = "mock";
  std::string node_ = "node-a";
  std::string state_dir_ = "/nonexistent/hci-mock-test";
  google::protobuf::Struct options_;
  Logger logger_;
  EventLog events_;  // before tracker_: the tracker publishes to it
  std::unique_ptr<OperationTracker> tracker_;
};

// The five mock backends wired to each other through one context, as a Host would.
class MockSet {
 public:
  explicit MockSet(google::protobuf::Struct options = {}, bool wire = true) : ctx(options) {
    compute = Make(MakeCompute(ctx));
    storage = Make(MakeStorage(ctx));
    network = Make(MakeNetwork(ctx));
    image = Make(MakeImage(ctx));
    backup = Make(MakeBackup(ctx));
    if (wire) {
      ctx.compute_ = compute.get();
      ctx.storage_ = storage.get();
      ctx.network_ = network.get();
      ctx.image_ = image.get();
      ctx.backup_ = backup.get();
    }
  }
  // In the Host's order: backends before the tracker and the event sink.
  ~MockSet() {
    backup.reset();
    image.reset();
    network.reset();
    storage.reset();
    compute.reset();
  }

  template <typename T>
  static std::unique_ptr<T> Make(Result<std::unique_ptr<T>> made) {
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? std::move(made).MoveValueUnsafe() : nullptr;
  }

  FakeContext ctx;
  std::unique_ptr<ComputeBackend> compute;
  std::unique_ptr<StorageBackend> storage;
  std::unique_ptr<NetworkBackend> network;
  std::unique_ptr<ImageBackend> image;
  std::unique_ptr<BackupBackend> backup;
};

v1::VmPhase PhaseOf(ComputeBackend& compute, const std::string& name) {
  auto vm = compute.GetVm(Named<v1::GetVmRequest>(name));
  EXPECT_TRUE(vm.ok()) << vm.status();
  return vm.ok() ? vm->status().phase() : v1::VM_PHASE_UNSPECIFIED;
}

// Imports an image and waits for it to be Ready.
void ImportReady(ImageBackend& image, const std::string& name) {
  auto op = image.ImportImage(ImageRequest(name));
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(op->Wait(std::chrono::seconds(5)).ok());
}

// ---------------------------------------------------------------------------------------------
// Options and fault injection

TEST(MockOptions, ParsesFaultsLatencyAndStep) {
  auto parsed = ParseOptions(Options(R"({"latency_ms": 5, "operation_step_ms": 7, "faults": [
      {"operation": "CreateVolume", "code": 14, "count": 2, "latency_ms": 3, "message": "m"},
      {"operation": "*", "code": "FAILED_PRECONDITION"},
      {"operation": "StartVm", "code": "Aborted"}]})"));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->latency_ms, 5u);
  EXPECT_EQ(parsed->operation_step_ms, 7u);
  ASSERT_EQ(parsed->faults.size(), 3u);
  EXPECT_EQ(parsed->faults[0].operation(), "CreateVolume");
  EXPECT_EQ(parsed->faults[0].code(), 14);
  EXPECT_EQ(parsed->faults[0].count(), 2u);
  EXPECT_EQ(parsed->faults[0].latency_ms(), 3u);
  EXPECT_EQ(parsed->faults[0].message(), "m");
  EXPECT_EQ(parsed->faults[1].code(), static_cast<int>(StatusCode::kFailedPrecondition));
  EXPECT_EQ(parsed->faults[2].code(), static_cast<int>(StatusCode::kAborted));
}

TEST(MockOptions, BadOptionsNameTheField) {
  struct Case {
    const char* json;
    const char* field;
  };
  const Case cases[] = {
      {R"({"faults": [{"operation": "CreateVolume", "code": 99}]})", "faults[0].code"},
      {R"({"faults": [{"operation": "CreateVolume", "code": "Nope"}]})", "faults[0].code"},
      {R"({"faults": [{"operation": "CreateVolume", "code": 1.5}]})", "faults[0].code"},
      {R"({"faults": [{"code": 14}]})", "faults[0].operation"},
      {R"({"faults": [{"operation": "CreateVolumes", "code": 14}]})", "faults[0].operation"},
      {R"({"faults": [{"operation": "*", "code": 14}, {"operation": "*", "count": -1}]})",
       "faults[1].count"},
      {R"({"faults": [{"operation": "*", "colour": "red"}]})", "faults[0].colour"},
      {R"({"faults": {"operation": "*"}})", "faults"},
      {R"({"latency_ms": "slow"})", "latency_ms"},
      {R"({"latencyy_ms": 3})", "latencyy_ms"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseOptions(Options(c.json));
    ASSERT_FALSE(parsed.ok()) << c.json;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << c.json;
    EXPECT_TRUE(parsed.status().message().starts_with(std::string(c.field) + ":"))
        << c.json << " -> " << parsed.status();
  }
}

TEST(MockOptions, FactoryRefusesBadOptions) {
  FakeContext ctx(Options(R"({"faults": [{"operation": "CreateVolume", "code": 42}]})"));
  auto made = MakeStorage(ctx);
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(made.status().message(), HasSubstr("faults[0].code"));
}

TEST(MockFaultInjector, OneInjectorSharedByTheFiveBackends) {
  MockSet m;
  FaultInjector* faults = m.compute->fault_injector();
  ASSERT_NE(faults, nullptr);
  EXPECT_EQ(m.storage->fault_injector(), faults);
  EXPECT_EQ(m.network->fault_injector(), faults);
  EXPECT_EQ(m.image->fault_injector(), faults);
  EXPECT_EQ(m.backup->fault_injector(), faults);
  // Another Host (another tracker) gets its own.
  MockSet other;
  EXPECT_NE(other.compute->fault_injector(), faults);
}

TEST(MockFaultInjector, InjectValidatesTheFault) {
  MockSet m;
  auto* faults = m.storage->fault_injector();
  v1::Fault bad_code = MakeFault("CreateVolume", StatusCode::kOk);
  bad_code.set_code(17);
  Status s = faults->Inject(bad_code);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("fault.code"));
  s = faults->Inject(MakeFault("CreateVolumez", StatusCode::kUnavailable));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("fault.operation"));
  s = faults->Inject(MakeFault("", StatusCode::kUnavailable));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
}

TEST(MockFaultInjector, CountedFaultStopsAfterCount) {
  MockSet m;
  v1::Fault fault = MakeFault("CreateVolume", StatusCode::kUnavailable, 2);
  fault.set_message("disk on fire");
  ASSERT_TRUE(m.storage->fault_injector()->Inject(fault).ok());
  for (int i = 0; i < 2; ++i) {
    auto r = m.storage->CreateVolume(VolumeRequest("v", 4096));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(r.status().message(), HasSubstr("disk on fire"));
  }
  // Other methods were never affected; the third call goes through.
  EXPECT_EQ(m.storage->GetVolume(Named<v1::GetVolumeRequest>("v")).status().code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(m.storage->CreateVolume(VolumeRequest("v", 4096)).ok());
}

TEST(MockFaultInjector, WildcardUntilClearAndAcrossKinds) {
  MockSet m;
  ASSERT_TRUE(m.compute->fault_injector()->Inject(MakeFault("*", StatusCode::kInternal)).ok());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(m.network->ListNetworks({}).status().code(), StatusCode::kInternal);
    EXPECT_EQ(m.image->ListImages({}).status().code(), StatusCode::kInternal);
  }
  m.backup->fault_injector()->Clear();
  EXPECT_TRUE(m.network->ListNetworks({}).ok());
}

TEST(MockFaultInjector, LatencyOnlyFaultDelaysButSucceeds) {
  MockSet m;
  ASSERT_TRUE(
      m.network->fault_injector()->Inject(MakeFault("ListNetworks", StatusCode::kOk, 1, 50)).ok());
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(m.network->ListNetworks({}).ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(50));
}

TEST(MockFaultInjector, OptionFaultsApplyToTheirBackendOnly) {
  MockSet m(Options(R"({"faults": [{"operation": "*", "code": 14, "count": 1}]})"));
  // Each backend got the option: each fails its own first call once.
  EXPECT_EQ(m.network->ListNetworks({}).status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(m.network->ListNetworks({}).ok());
  EXPECT_EQ(m.storage->ListVolumes({}).status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(m.storage->ListVolumes({}).ok());
}

// ---------------------------------------------------------------------------------------------
// Capabilities

TEST(MockCapabilities, ClaimsWhatItImplements) {
  MockSet m;
  auto c = m.compute->Capabilities();
  EXPECT_TRUE(c.pause() && c.restart() && c.graceful_stop() && c.console_log() &&
              c.console_attach() && c.live_migration() && c.metrics() && c.uefi() &&
              c.kernel_boot() && c.cloud_init());
  EXPECT_EQ(c.run_strategies_size(), 5);
  auto s = m.storage->Capabilities();
  EXPECT_TRUE(s.snapshots() && s.revert() && s.clone() && s.from_image() && s.expand() &&
              s.online_expand() && s.replication() && s.changed_blocks() && s.thin_provisioning());
  EXPECT_EQ(s.max_replicas(), 3u);
  EXPECT_FALSE(s.trim());
  auto n = m.network->Capabilities();
  EXPECT_TRUE(n.vlan() && n.trunk() && n.untagged() && n.mtu() && n.ports());
  EXPECT_EQ(n.max_mtu(), 65535u);
  auto i = m.image->Capabilities();
  EXPECT_TRUE(i.import_url() && i.import_file() && i.checksum());
  auto b = m.backup->Capabilities();
  EXPECT_TRUE(b.incremental() && b.restore() && b.delete_());
  for (Backend* backend : std::initializer_list<Backend*>{
           m.compute.get(), m.storage.get(), m.network.get(), m.image.get(), m.backup.get()}) {
    auto text = backend->Metrics();
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_THAT(*text, HasSubstr("# TYPE "));
  }
}

// ---------------------------------------------------------------------------------------------
// Compute

TEST(MockCompute, ValidationNamesTheField) {
  MockSet m;
  struct Case {
    std::function<void(v1::CreateVmRequest&)> mutate;
    const char* field;
  };
  const Case cases[] = {
      {[](auto& r) { r.mutable_spec()->set_vcpus(0); }, "spec.vcpus"},
      {[](auto& r) { r.mutable_spec()->set_memory_mib(0); }, "spec.memory_mib"},
      {[](auto& r) { r.mutable_spec()->set_accelerator("hvf"); }, "spec.accelerator"},
      {[](auto& r) { r.mutable_spec()->set_machine_type("virt"); }, "spec.machine_type"},
      {[](auto& r) { r.mutable_spec()->mutable_kernel_boot()->set_kernel_path("vmlinuz"); },
       "spec.kernel_boot.kernel_path"},
      {[](auto& r) {
         auto* n = r.mutable_spec()->add_nics();
         n->set_name("nic0");
         n->set_mac_address("01:00:5e:00:00:01");  // multicast
       },
       "spec.nics[0].mac_address"},
      {[](auto& r) {
         for (int i = 0; i < 2; ++i) {
           auto* d = r.mutable_spec()->add_disks();
           d->set_name("root" + std::to_string(i));
           d->set_volume("v" + std::to_string(i));
           d->set_boot_order(1);
         }
       },
       "spec.disks[1].boot_order"},
      {[](auto& r) {
         for (int i = 0; i < 2; ++i) {
           auto* d = r.mutable_spec()->add_disks();
           d->set_name("root");
           d->set_volume("v" + std::to_string(i));
         }
       },
       "spec.disks[1].name"},
  };
  for (const auto& c : cases) {
    auto request = VmRequest("vm-1");
    c.mutate(request);
    auto r = m.compute->CreateVm(request);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
    EXPECT_TRUE(r.status().message().starts_with(std::string(c.field) + ":")) << r.status();
  }
  EXPECT_EQ(m.compute->ListVms({})->vms_size(), 0);
}

TEST(MockCompute, CreateIsIdempotentByName) {
  MockSet m;
  auto first = m.compute->CreateVm(VmRequest("vm-1", 2, 512));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_FALSE(first->metadata().uid().empty());
  for (int i = 0; i < 10; ++i) {
    auto again = m.compute->CreateVm(VmRequest("vm-1", 2, 512));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->metadata().uid(), first->metadata().uid());
    EXPECT_EQ(again->metadata().creation_time().seconds(),
              first->metadata().creation_time().seconds());
    EXPECT_EQ(again->metadata().creation_time().nanos(), first->metadata().creation_time().nanos());
  }
  auto conflict = m.compute->CreateVm(VmRequest("vm-1", 4, 512));
  EXPECT_EQ(conflict.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(conflict.status().message(), HasSubstr("\"vm-1\""));
  EXPECT_THAT(conflict.status().message(), HasSubstr("vcpus"));
  auto missing = m.compute->GetVm(Named<v1::GetVmRequest>("x"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "vm \"x\" does not exist");
  EXPECT_TRUE(m.compute->DeleteVm(Named<v1::DeleteVmRequest>("x")).ok());
}

TEST(MockCompute, LifecycleFollowsKubeVirtPhases) {
  MockSet m;
  ASSERT_TRUE(m.compute->CreateVm(VmRequest("vm-1")).ok());
  auto& c = *m.compute;
  auto expect_refused = [&](Status s, StatusCode code, v1::VmPhase unchanged) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_EQ(PhaseOf(c, "vm-1"), unchanged);
  };
  // Stopped: pause/resume/restart are refused, stop is a no-op.
  expect_refused(c.PauseVm(Named<v1::PauseVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition, v1::VM_PHASE_STOPPED);
  expect_refused(c.ResumeVm(Named<v1::ResumeVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition, v1::VM_PHASE_STOPPED);
  expect_refused(c.RestartVm(Named<v1::RestartVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition, v1::VM_PHASE_STOPPED);
  auto stopped = c.StopVm(Named<v1::StopVmRequest>("vm-1"));
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->status().reason(), "Created");

  auto running = c.StartVm(Named<v1::StartVmRequest>("vm-1"));
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(running->status().node(), "node-a");
  EXPECT_EQ(running->status().accelerator(), "tcg");
  EXPECT_TRUE(running->status().has_start_time());
  // Running: start is a no-op, resume is refused.
  auto again = c.StartVm(Named<v1::StartVmRequest>("vm-1"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->status().start_time().nanos(), running->status().start_time().nanos());
  expect_refused(c.ResumeVm(Named<v1::ResumeVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition, v1::VM_PHASE_RUNNING);

  auto restarted = c.RestartVm(Named<v1::RestartVmRequest>("vm-1"));
  ASSERT_TRUE(restarted.ok());
  EXPECT_EQ(restarted->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(restarted->status().restart_count(), 1u);

  ASSERT_EQ(c.PauseVm(Named<v1::PauseVmRequest>("vm-1"))->status().phase(), v1::VM_PHASE_PAUSED);
  // Paused: start, pause and restart are refused.
  expect_refused(c.StartVm(Named<v1::StartVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition, v1::VM_PHASE_PAUSED);
  expect_refused(c.PauseVm(Named<v1::PauseVmRequest>("vm-1")).status(),
                 StatusCode::kFailedPrecondition, v1::VM_PHASE_PAUSED);
  expect_refused(c.DeleteVm(Named<v1::DeleteVmRequest>("vm-1")), StatusCode::kFailedPrecondition,
                 v1::VM_PHASE_PAUSED);
  ASSERT_EQ(c.ResumeVm(Named<v1::ResumeVmRequest>("vm-1"))->status().phase(), v1::VM_PHASE_RUNNING);

  auto graceful = c.StopVm(Named<v1::StopVmRequest>("vm-1"));
  ASSERT_TRUE(graceful.ok());
  EXPECT_EQ(graceful->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_EQ(graceful->status().reason(), "GuestShutdown");
  ASSERT_TRUE(c.StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  v1::StopVmRequest force;
  force.set_name("vm-1");
  force.set_force(true);
  EXPECT_EQ(c.StopVm(force)->status().reason(), "ForcedStop");

  // Every phase change was published with its detail, in order.
  std::vector<std::pair<v1::VmPhase, v1::VmPhase>> changes;
  for (const auto& e : m.ctx.log().WithReason("VmPhaseChanged")) {
    EXPECT_EQ(e.object().name(), "vm-1");
    ASSERT_TRUE(e.has_vm_phase());
    changes.emplace_back(e.vm_phase().old_phase(), e.vm_phase().new_phase());
  }
  using P = std::pair<v1::VmPhase, v1::VmPhase>;
  std::vector<P> expected = {{v1::VM_PHASE_UNSPECIFIED, v1::VM_PHASE_STOPPED},
                             {v1::VM_PHASE_STOPPED, v1::VM_PHASE_STARTING},
                             {v1::VM_PHASE_STARTING, v1::VM_PHASE_RUNNING},
                             {v1::VM_PHASE_RUNNING, v1::VM_PHASE_PAUSED},
                             {v1::VM_PHASE_PAUSED, v1::VM_PHASE_RUNNING},
                             {v1::VM_PHASE_RUNNING, v1::VM_PHASE_STOPPING},
                             {v1::VM_PHASE_STOPPING, v1::VM_PHASE_STOPPED},
                             {v1::VM_PHASE_STOPPED, v1::VM_PHASE_STARTING},
                             {v1::VM_PHASE_STARTING, v1::VM_PHASE_RUNNING},
                             {v1::VM_PHASE_RUNNING, v1::VM_PHASE_STOPPING},
                             {v1::VM_PHASE_STOPPING, v1::VM_PHASE_STOPPED}};
  EXPECT_EQ(changes, expected);
}

TEST(MockCompute, PausedVmStopsForcedAndDeleteNeedsForce) {
  MockSet m;
  auto request = VmRequest("vm-1");
  request.mutable_spec()->set_run_strategy(v1::RUN_STRATEGY_ALWAYS);
  auto vm = m.compute->CreateVm(request);
  ASSERT_TRUE(vm.ok());
  EXPECT_EQ(vm->status().phase(), v1::VM_PHASE_RUNNING);  // Always starts on create
  ASSERT_TRUE(m.compute->PauseVm(Named<v1::PauseVmRequest>("vm-1")).ok());
  // The paused guest cannot answer the power button.
  EXPECT_EQ(m.compute->StopVm(Named<v1::StopVmRequest>("vm-1"))->status().reason(), "ForcedStop");
  ASSERT_TRUE(m.compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  Status refused = m.compute->DeleteVm(Named<v1::DeleteVmRequest>("vm-1"));
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("Running"));
  v1::DeleteVmRequest force;
  force.set_name("vm-1");
  force.set_force(true);
  EXPECT_TRUE(m.compute->DeleteVm(force).ok());
  EXPECT_EQ(m.compute->GetVm(Named<v1::GetVmRequest>("vm-1")).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(m.ctx.log().WithReason("VmDeleted").size(), 1u);
}

TEST(MockCompute, DisksReferenceVolumesAttachedWhileRunning) {
  MockSet m;
  auto request = VmRequest("vm-1");
  auto* disk = request.mutable_spec()->add_disks();
  disk->set_name("root");
  disk->set_volume("root-vol");
  auto missing = m.compute->CreateVm(request);
  ASSERT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("spec.disks[0].volume"));

  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("root-vol", 64 * kMiB)).ok());
  ASSERT_TRUE(m.compute->CreateVm(request).ok());
  auto volume = [&] { return *m.storage->GetVolume(Named<v1::GetVolumeRequest>("root-vol")); };
  EXPECT_EQ(volume().status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  ASSERT_TRUE(m.compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  EXPECT_EQ(volume().status().attached_to(), "vm-1");
  EXPECT_EQ(volume().status().phase(), v1::VOLUME_PHASE_ATTACHED);
  ASSERT_TRUE(m.compute->StopVm(Named<v1::StopVmRequest>("vm-1")).ok());
  EXPECT_EQ(volume().status().attached_to(), "");
}

TEST(MockCompute, FailedAttachLeavesVmStoppedAndRollsBack) {
  MockSet m;
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("a", 4096)).ok());
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("b", 4096)).ok());
  v1::AttachVolumeRequest other;
  other.set_name("b");
  other.set_attacher("someone-else");
  ASSERT_TRUE(m.storage->AttachVolume(other).ok());
  auto request = VmRequest("vm-1");
  for (const char* v : {"a", "b"}) {
    auto* d = request.mutable_spec()->add_disks();
    d->set_name(std::string("disk-") + v);
    d->set_volume(v);
  }
  ASSERT_TRUE(m.compute->CreateVm(request).ok());
  auto started = m.compute->StartVm(Named<v1::StartVmRequest>("vm-1"));
  ASSERT_EQ(started.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(started.status().message(), HasSubstr("spec.disks[1].volume"));
  auto vm = m.compute->GetVm(Named<v1::GetVmRequest>("vm-1"));
  EXPECT_EQ(vm->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_EQ(vm->status().reason(), "FailedAttachVolume");
  EXPECT_EQ(m.storage->GetVolume(Named<v1::GetVolumeRequest>("a"))->status().attached_to(), "");
  EXPECT_EQ(m.ctx.log().WithReason("FailedStart").size(), 1u);
}

TEST(MockCompute, WorksWithoutStorageBackend) {
  MockSet m({}, /*wire=*/false);
  auto request = VmRequest("vm-1");
  auto* d = request.mutable_spec()->add_disks();
  d->set_name("root");
  d->set_volume("anything");
  ASSERT_TRUE(m.compute->CreateVm(request).ok());
  EXPECT_TRUE(m.compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
}

TEST(MockCompute, NicsGetStableMacs) {
  MockSet m;
  ASSERT_TRUE(m.network->CreateNetwork(VlanRequest("vlan100", 100)).ok());
  auto request = VmRequest("vm-1");
  auto* nic = request.mutable_spec()->add_nics();
  nic->set_name("nic0");
  nic->set_network("vlan100");
  auto* fixed = request.mutable_spec()->add_nics();
  fixed->set_name("nic1");
  fixed->set_mac_address("52:54:00:aa:bb:cc");
  auto vm = m.compute->CreateVm(request);
  ASSERT_TRUE(vm.ok()) << vm.status();
  ASSERT_EQ(vm->status().mac_addresses().size(), 1u);
  std::string mac = vm->status().mac_addresses().at("nic0");
  EXPECT_TRUE(mac.starts_with("52:54:00:")) << mac;

  auto bad = request;
  bad.mutable_metadata()->set_name("vm-2");
  bad.mutable_spec()->mutable_nics(0)->set_network("nowhere");
  auto refused = m.compute->CreateVm(bad);
  EXPECT_EQ(refused.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(refused.status().message(), HasSubstr("spec.nics[0].network"));
}

TEST(MockCompute, ConsoleLogAndAttachedConsoleEcho) {
  MockSet m;
  ASSERT_TRUE(m.compute->CreateVm(VmRequest("vm-1")).ok());
  v1::AttachConsoleRequest attach;
  attach.set_name("vm-1");
  EXPECT_EQ(m.compute->AttachConsole(attach).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(m.compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());

  v1::ReadConsoleRequest read;
  read.set_name("vm-1");
  auto all = m.compute->ReadConsole(read);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(all->data(), HasSubstr("hci-mock: ready\n"));
  EXPECT_EQ(all->next_offset(), all->data().size());
  read.set_offset(5);
  read.set_max_bytes(4);
  auto part = m.compute->ReadConsole(read);
  ASSERT_TRUE(part.ok());
  EXPECT_EQ(part->data(), all->data().substr(5, 4));
  EXPECT_EQ(part->next_offset(), 9u);
  read.set_offset(all->data().size() + 1);
  EXPECT_EQ(m.compute->ReadConsole(read).status().code(), StatusCode::kOutOfRange);

  auto stream = m.compute->AttachConsole(attach);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->Write("hello\n").ok());
  auto echoed = (*stream)->Read(std::chrono::seconds(2));
  ASSERT_TRUE(echoed.ok());
  EXPECT_EQ(*echoed, "hello\n");
  auto quiet = (*stream)->Read(std::chrono::milliseconds(1));
  ASSERT_TRUE(quiet.ok());
  EXPECT_EQ(*quiet, "");
  ASSERT_TRUE(m.compute->StopVm(Named<v1::StopVmRequest>("vm-1")).ok());
  EXPECT_EQ((*stream)->Read(std::chrono::milliseconds(1)).status().code(),
            StatusCode::kUnavailable);
  EXPECT_EQ((*stream)->Write("x").code(), StatusCode::kUnavailable);
  // The log survives the stop and holds what was typed.
  read.set_offset(0);
  read.set_max_bytes(0);
  EXPECT_THAT(m.compute->ReadConsole(read)->data(), HasSubstr("hello\n"));
}

TEST(MockCompute, VmMetricsUseKubeVirtNames) {
  MockSet m;
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("root", 4096)).ok());
  auto request = VmRequest("vm-1", 2);
  auto* d = request.mutable_spec()->add_disks();
  d->set_name("rootdisk");
  d->set_volume("root");
  auto* n = request.mutable_spec()->add_nics();
  n->set_name("nic0");
  ASSERT_TRUE(m.compute->CreateVm(request).ok());
  v1::VmMetricsRequest metrics;
  metrics.set_name("vm-1");
  EXPECT_EQ(m.compute->VmMetrics(metrics).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(m.compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  auto text = m.compute->VmMetrics(metrics);
  ASSERT_TRUE(text.ok()) << text.status();
  for (const char* needle :
       {"# TYPE kubevirt_vmi_vcpu_seconds_total counter",
        "kubevirt_vmi_vcpu_seconds_total{id=\"0\",name=\"vm-1\",node=\"node-a\",state=\"running\"}",
        "kubevirt_vmi_vcpu_seconds_total{id=\"1\",",
        "kubevirt_vmi_memory_resident_bytes{name=\"vm-1\",node=\"node-a\"} 268435456",
        "kubevirt_vmi_network_receive_bytes_total{interface=\"nic0\"",
        "kubevirt_vmi_network_transmit_bytes_total{interface=\"nic0\"",
        "kubevirt_vmi_storage_read_traffic_bytes_total{drive=\"rootdisk\"",
        "kubevirt_vmi_storage_iops_write_total{drive=\"rootdisk\""}) {
    EXPECT_THAT(text->text(), HasSubstr(needle));
  }
  EXPECT_THAT(*m.compute->Metrics(), HasSubstr("kubevirt_vmi_phase_count{node=\"node-a\","
                                               "phase=\"running\"} 1"));
}

TEST(MockCompute, MigrationReportsProgressAndMovesTheVm) {
  MockSet m;
  ASSERT_TRUE(m.compute->CreateVm(VmRequest("vm-1", 1, 64)).ok());
  v1::MigrateVmRequest migrate;
  migrate.set_name("vm-1");
  migrate.set_target_node("node-b");
  EXPECT_EQ(m.compute->MigrateVm(migrate).status().code(), StatusCode::kFailedPrecondition);
  auto before = m.compute->StartVm(Named<v1::StartVmRequest>("vm-1"));
  ASSERT_TRUE(before.ok());
  std::mutex mu;
  std::vector<std::uint64_t> progress;
  auto op = m.compute->MigrateVm(migrate);
  ASSERT_TRUE(op.ok()) << op.status();
  op->OnProgress([&](const v1::OperationStatus& s) {
    std::lock_guard lock(mu);
    progress.push_back(s.progress().done());
  });
  EXPECT_EQ(PhaseOf(*m.compute, "vm-1"), v1::VM_PHASE_MIGRATING);
  // A second request joins the running migration.
  auto joined = m.compute->MigrateVm(migrate);
  ASSERT_TRUE(joined.ok());
  EXPECT_EQ(joined->id(), op->id());
  ASSERT_TRUE(op->Wait(std::chrono::seconds(5)).ok());
  auto after = m.compute->GetVm(Named<v1::GetVmRequest>("vm-1"));
  EXPECT_EQ(after->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(after->status().node(), "node-b");
  EXPECT_EQ(after->status().reason(), "Migrated");
  EXPECT_EQ(op->status().kind(), "MigrateVm");
  EXPECT_EQ(op->status().progress().done(), 64 * kMiB);
  EXPECT_EQ(op->status().progress().total(), 64 * kMiB);
  std::lock_guard lock(mu);
  EXPECT_FALSE(progress.empty());
  EXPECT_TRUE(std::is_sorted(progress.begin(), progress.end()));
  EXPECT_FALSE(m.ctx.log().WithReason("MigrationProgress").empty());
}

TEST(MockCompute, MigrationCancelAndStopDuringMigration) {
  MockSet m(Options(R"({"operation_step_ms": 200})"));
  ASSERT_TRUE(m.compute->CreateVm(VmRequest("vm-1")).ok());
  ASSERT_TRUE(m.compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  v1::MigrateVmRequest migrate;
  migrate.set_name("vm-1");
  auto op = m.compute->MigrateVm(migrate);
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(op->Cancel().ok());
  EXPECT_EQ(op->Wait(std::chrono::seconds(5)).code(), StatusCode::kCancelled);
  EXPECT_EQ(op->status().phase(), v1::OPERATION_PHASE_CANCELLED);
  auto vm = m.compute->GetVm(Named<v1::GetVmRequest>("vm-1"));
  EXPECT_EQ(vm->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(vm->status().reason(), "MigrationCancelled");
  EXPECT_EQ(vm->status().node(), "node-a");

  // Stopping a migrating VM ends the migration first.
  auto second = m.compute->MigrateVm(migrate);
  ASSERT_TRUE(second.ok());
  auto stopped = m.compute->StopVm(Named<v1::StopVmRequest>("vm-1"));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_TRUE(second->done());
  EXPECT_EQ(second->status().phase(), v1::OPERATION_PHASE_CANCELLED);
}

TEST(MockCompute, DestructionFinishesRunningOperations) {
  Operation op;
  {
    MockSet m(Options(R"({"operation_step_ms": 60000})"));
    ASSERT_TRUE(m.compute->CreateVm(VmRequest("vm-1")).ok());
    ASSERT_TRUE(m.compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
    auto started = m.compute->MigrateVm(Named<v1::MigrateVmRequest>("vm-1"));
    ASSERT_TRUE(started.ok());
    op = *started;
  }
  ASSERT_TRUE(op.done());
  EXPECT_EQ(op.status().code(), static_cast<int>(StatusCode::kUnavailable));
}

TEST(MockCompute, ConcurrentCallsAreSafe) {
  MockSet m;
  std::atomic<int> created{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        std::string name = "vm-" + std::to_string(i % 5);
        if (m.compute->CreateVm(VmRequest(name)).ok()) ++created;
        m.compute->StartVm(Named<v1::StartVmRequest>(name)).status().IgnoreError();
        m.compute->PauseVm(Named<v1::PauseVmRequest>(name)).status().IgnoreError();
        m.compute->StopVm(Named<v1::StopVmRequest>(name)).status().IgnoreError();
        if (t == 0 && i % 7 == 0) {
          v1::DeleteVmRequest del;
          del.set_name(name);
          del.set_force(true);
          m.compute->DeleteVm(del).IgnoreError();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(created.load(), 100);  // every create either made the VM or found the same one
  auto listed = m.compute->ListVms({});
  ASSERT_TRUE(listed.ok());
  for (const auto& vm : listed->vms()) {
    auto p = vm.status().phase();
    EXPECT_TRUE(p == v1::VM_PHASE_STOPPED || p == v1::VM_PHASE_RUNNING || p == v1::VM_PHASE_PAUSED)
        << v1::VmPhase_Name(p);
  }
}

// ---------------------------------------------------------------------------------------------
// Storage

TEST(MockStorage, SizeValidationAndIdempotency) {
  MockSet m;
  auto zero = m.storage->CreateVolume(VolumeRequest("v", 0));
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(zero.status().message().starts_with("spec.size_bytes:")) << zero.status();
  auto odd = m.storage->CreateVolume(VolumeRequest("v", 1000));
  EXPECT_EQ(odd.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(odd.status().message().starts_with("spec.size_bytes:")) << odd.status();
  auto too_many = VolumeRequest("v", 4096);
  too_many.mutable_spec()->set_replica_count(4);
  EXPECT_EQ(m.storage->CreateVolume(too_many).status().code(), StatusCode::kInvalidArgument);

  auto first = m.storage->CreateVolume(VolumeRequest("v", 8192));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  EXPECT_EQ(first->status().robustness(), v1::VOLUME_ROBUSTNESS_HEALTHY);
  EXPECT_EQ(first->status().replicas_size(), 3);
  for (int i = 0; i < 10; ++i) {
    auto again = m.storage->CreateVolume(VolumeRequest("v", 8192));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->metadata().uid(), first->metadata().uid());
  }
  auto conflict = m.storage->CreateVolume(VolumeRequest("v", 4096));
  EXPECT_EQ(conflict.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(conflict.status().message(), HasSubstr("volume \"v\""));
  EXPECT_EQ(m.storage->GetVolume(Named<v1::GetVolumeRequest>("w")).status().message(),
            "volume \"w\" does not exist");
  EXPECT_TRUE(m.storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("w")).ok());
}

TEST(MockStorage, SingleAttacherAndDeleteWhileAttached) {
  MockSet m;
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("v", 1 * kMiB)).ok());
  v1::AttachVolumeRequest attach;
  attach.set_name("v");
  attach.set_attacher("vm-a");
  auto info = m.storage->AttachVolume(attach);
  ASSERT_TRUE(info.ok()) << info.status();
  const auto& fields = info->blockdev().fields();
  EXPECT_EQ(fields.at("driver").string_value(), "null-co");
  EXPECT_EQ(fields.at("size").number_value(), static_cast<double>(kMiB));
  EXPECT_TRUE(m.storage->AttachVolume(attach).ok());  // same attacher: idempotent
  v1::AttachVolumeRequest other = attach;
  other.set_attacher("vm-b");
  auto refused = m.storage->AttachVolume(other);
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("\"vm-a\""));
  Status del = m.storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("v"));
  EXPECT_EQ(del.code(), StatusCode::kFailedPrecondition);
  v1::DetachVolumeRequest detach;
  detach.set_name("v");
  detach.set_attacher("vm-b");
  EXPECT_TRUE(m.storage->DetachVolume(detach).ok());  // not attached to vm-b: no-op
  EXPECT_EQ(m.storage->GetVolume(Named<v1::GetVolumeRequest>("v"))->status().attached_to(), "vm-a");
  detach.set_attacher("vm-a");
  EXPECT_TRUE(m.storage->DetachVolume(detach).ok());
  EXPECT_TRUE(m.storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("v")).ok());
  EXPECT_FALSE(m.ctx.log().WithReason("VolumeAttached").empty());
  EXPECT_FALSE(m.ctx.log().WithReason("VolumeDetached").empty());
}

TEST(MockStorage, ExpandNeverShrinks) {
  MockSet m;
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("v", 8192)).ok());
  v1::ExpandVolumeRequest expand;
  expand.set_name("v");
  expand.set_size_bytes(4096);
  auto shrink = m.storage->ExpandVolume(expand);
  EXPECT_EQ(shrink.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(shrink.status().message().starts_with("size_bytes:")) << shrink.status();
  expand.set_size_bytes(12345);
  EXPECT_EQ(m.storage->ExpandVolume(expand).status().code(), StatusCode::kInvalidArgument);
  expand.set_size_bytes(16384);
  auto grown = m.storage->ExpandVolume(expand);
  ASSERT_TRUE(grown.ok());
  EXPECT_EQ(grown->spec().size_bytes(), 16384u);
  // The original request still names the same volume.
  EXPECT_TRUE(m.storage->CreateVolume(VolumeRequest("v", 8192)).ok());
}

TEST(MockStorage, SourcesImageSnapshotAndVolume) {
  MockSet m;
  v1::CreateVolumeRequest from_image;
  from_image.mutable_metadata()->set_name("from-image");
  from_image.mutable_spec()->mutable_source()->set_image("debian");
  auto missing = m.storage->CreateVolume(from_image);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("spec.source.image"));
  ImportReady(*m.image, "debian");
  auto vol = m.storage->CreateVolume(from_image);
  ASSERT_TRUE(vol.ok()) << vol.status();
  EXPECT_EQ(vol->spec().size_bytes(), kImageBytes);  // the image's virtual size
  EXPECT_EQ(vol->status().actual_size_bytes(), kImageBytes);

  v1::CreateSnapshotRequest snap;
  snap.set_volume("from-image");
  snap.mutable_metadata()->set_name("s1");
  ASSERT_TRUE(m.storage->CreateSnapshot(snap).ok());
  v1::CreateVolumeRequest from_snap;
  from_snap.mutable_metadata()->set_name("from-snap");
  from_snap.mutable_spec()->mutable_source()->mutable_snapshot()->set_volume("from-image");
  from_snap.mutable_spec()->mutable_source()->mutable_snapshot()->set_snapshot("nope");
  EXPECT_EQ(m.storage->CreateVolume(from_snap).status().code(), StatusCode::kNotFound);
  from_snap.mutable_spec()->mutable_source()->mutable_snapshot()->set_snapshot("s1");
  EXPECT_EQ(m.storage->CreateVolume(from_snap)->spec().size_bytes(), kImageBytes);

  v1::CreateVolumeRequest clone;
  clone.mutable_metadata()->set_name("clone");
  clone.mutable_spec()->mutable_source()->set_volume("from-image");
  clone.mutable_spec()->set_size_bytes(4096);
  auto small = m.storage->CreateVolume(clone);
  EXPECT_EQ(small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(small.status().message().starts_with("spec.size_bytes:")) << small.status();
  clone.mutable_spec()->set_size_bytes(2 * kImageBytes);
  EXPECT_EQ(m.storage->CreateVolume(clone)->spec().size_bytes(), 2 * kImageBytes);

  // The image cannot go while volumes were made from it.
  Status del = m.image->DeleteImage(Named<v1::DeleteImageRequest>("debian"));
  EXPECT_EQ(del.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(del.message(), HasSubstr("\"from-image\""));
  ASSERT_TRUE(m.storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("from-image")).ok());
  EXPECT_TRUE(m.image->DeleteImage(Named<v1::DeleteImageRequest>("debian")).ok());
}

TEST(MockStorage, ImageMustBeReady) {
  MockSet m(Options(R"({"operation_step_ms": 60000})"));
  ASSERT_TRUE(m.image->ImportImage(ImageRequest("slow")).ok());
  v1::CreateVolumeRequest r;
  r.mutable_metadata()->set_name("v");
  r.mutable_spec()->mutable_source()->set_image("slow");
  EXPECT_EQ(m.storage->CreateVolume(r).status().code(), StatusCode::kFailedPrecondition);
}

TEST(MockStorage, SnapshotsRevertAndChangedBlocks) {
  MockSet m;
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("v", 8 * kMiB)).ok());
  auto snapshot = [&](const std::string& name) {
    v1::CreateSnapshotRequest r;
    r.set_volume("v");
    r.mutable_metadata()->set_name(name);
    return m.storage->CreateSnapshot(r);
  };
  auto changed = [&](const std::string& from, const std::string& to) {
    v1::GetChangedBlocksRequest r;
    r.set_volume("v");
    r.set_from_snapshot(from);
    r.set_to_snapshot(to);
    return m.storage->GetChangedBlocks(r);
  };
  auto s0 = snapshot("s0");
  ASSERT_TRUE(s0.ok());
  EXPECT_TRUE(s0->status().ready_to_use());
  EXPECT_EQ(snapshot("s0")->metadata().uid(), s0->metadata().uid());  // idempotent
  // A blank volume never attached has nothing allocated.
  EXPECT_EQ(changed("", "s0")->extents_size(), 0);

  v1::AttachVolumeRequest attach;
  attach.set_name("v");
  attach.set_attacher("vm-a");
  ASSERT_TRUE(m.storage->AttachVolume(attach).ok());
  ASSERT_TRUE(snapshot("s1").ok());
  ASSERT_TRUE(snapshot("s2").ok());  // taken while attached: writes may land in between
  v1::RevertVolumeRequest revert;
  revert.set_volume("v");
  revert.set_snapshot("s1");
  EXPECT_EQ(m.storage->RevertVolume(revert).status().code(), StatusCode::kFailedPrecondition);
  v1::DetachVolumeRequest detach;
  detach.set_name("v");
  detach.set_attacher("vm-a");
  ASSERT_TRUE(m.storage->DetachVolume(detach).ok());
  ASSERT_TRUE(snapshot("s3").ok());  // detached: nothing changes until the next attach

  auto full = changed("s0", "s1");
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_EQ(full->extents_size(), 1);
  EXPECT_EQ(full->extents(0).offset(), 0u);
  EXPECT_EQ(full->extents(0).length(), 8 * kMiB);
  EXPECT_EQ(full->size_bytes(), 8 * kMiB);
  // Writes may land after each snapshot taken while attached; none after the detach.
  EXPECT_EQ(changed("s1", "s2")->extents_size(), 1);
  EXPECT_EQ(changed("s2", "s3")->extents_size(), 1);
  EXPECT_EQ(changed("s3", "")->extents_size(), 0);
  EXPECT_EQ(changed("s2", "s1").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(changed("nope", "").status().code(), StatusCode::kNotFound);

  v1::ListSnapshotsRequest list;
  list.set_volume("v");
  auto listed = m.storage->ListSnapshots(list);
  ASSERT_TRUE(listed.ok());
  std::vector<std::string> names;
  for (const auto& s : listed->snapshots()) names.push_back(s.metadata().name());
  EXPECT_EQ(names, (std::vector<std::string>{"s0", "s1", "s2", "s3"}));

  revert.set_snapshot("nope");
  EXPECT_EQ(m.storage->RevertVolume(revert).status().code(), StatusCode::kNotFound);
  revert.set_snapshot("s1");
  ASSERT_TRUE(m.storage->RevertVolume(revert).ok());
  EXPECT_EQ(changed("s1", "")->extents_size(), 0);  // back to s1's content
  EXPECT_EQ(changed("s3", "")->extents_size(), 1);

  v1::DeleteSnapshotRequest del;
  del.set_volume("v");
  del.set_name("s1");
  EXPECT_TRUE(m.storage->DeleteSnapshot(del).ok());
  EXPECT_TRUE(m.storage->DeleteSnapshot(del).ok());  // missing: OK
  EXPECT_EQ(m.storage->ListSnapshots(list)->snapshots_size(), 3);
}

// ---------------------------------------------------------------------------------------------
// Network

TEST(MockNetwork, ValidatesVlansTrunksAndMtu) {
  MockSet m;
  struct Case {
    std::function<void(v1::NetworkSpec&)> spec;
    const char* field;  // nullptr: valid
  };
  const Case cases[] = {
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_L2_VLAN), s.set_vlan_id(0); }, "spec.vlan_id"},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_L2_VLAN), s.set_vlan_id(4095); }, "spec.vlan_id"},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_L2_VLAN), s.set_vlan_id(1); }, nullptr},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_L2_VLAN), s.set_vlan_id(4094); }, nullptr},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_UNTAGGED), s.set_vlan_id(5); }, "spec.vlan_id"},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_UNSPECIFIED); }, "spec.type"},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_UNTAGGED), s.set_mtu(67); }, "spec.mtu"},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_UNTAGGED), s.set_mtu(65536); }, "spec.mtu"},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_UNTAGGED), s.set_mtu(9000); }, nullptr},
      {[](auto& s) { s.set_type(v1::NETWORK_TYPE_L2_VLAN_TRUNK); }, "spec.trunks"},
      {[](auto& s) {
         s.set_type(v1::NETWORK_TYPE_L2_VLAN_TRUNK);
         s.add_trunks()->set_min_id(10);
         s.mutable_trunks(0)->set_max_id(5);
       },
       "spec.trunks[0].max_id"},
      {[](auto& s) {
         s.set_type(v1::NETWORK_TYPE_L2_VLAN_TRUNK);
         auto* a = s.add_trunks();
         a->set_min_id(10);
         a->set_max_id(20);
         auto* b = s.add_trunks();
         b->set_min_id(20);
         b->set_max_id(30);
       },
       "spec.trunks[1]"},
      {[](auto& s) {
         s.set_type(v1::NETWORK_TYPE_L2_VLAN_TRUNK);
         s.add_trunks()->set_min_id(0);
         s.mutable_trunks(0)->set_max_id(5);
       },
       "spec.trunks[0].min_id"},
      {[](auto& s) {
         s.set_type(v1::NETWORK_TYPE_L2_VLAN_TRUNK);
         s.set_vlan_id(7);
         s.add_trunks()->set_min_id(1);
         s.mutable_trunks(0)->set_max_id(5);
       },
       "spec.vlan_id"},
  };
  int i = 0;
  for (const auto& c : cases) {
    v1::CreateNetworkRequest r;
    r.mutable_metadata()->set_name("net-" + std::to_string(i++));
    c.spec(*r.mutable_spec());
    auto made = m.network->CreateNetwork(r);
    if (c.field == nullptr) {
      EXPECT_TRUE(made.ok()) << made.status();
    } else {
      ASSERT_FALSE(made.ok()) << c.field;
      EXPECT_EQ(made.status().code(), StatusCode::kInvalidArgument);
      EXPECT_TRUE(made.status().message().starts_with(std::string(c.field) + ":")) << made.status();
    }
  }
}

TEST(MockNetwork, PortsAndDeleteWithPorts) {
  MockSet m;
  auto net = m.network->CreateNetwork(VlanRequest("vlan100", 100));
  ASSERT_TRUE(net.ok());
  EXPECT_EQ(net->status().bridge(), "mgmt-br");
  EXPECT_EQ(m.network->CreateNetwork(VlanRequest("vlan100", 100))->metadata().uid(),
            net->metadata().uid());
  EXPECT_EQ(m.network->CreateNetwork(VlanRequest("vlan100", 200)).status().code(),
            StatusCode::kAlreadyExists);

  v1::CreatePortRequest port;
  port.mutable_metadata()->set_name("p1");
  port.mutable_spec()->set_network("nowhere");
  EXPECT_EQ(m.network->CreatePort(port).status().code(), StatusCode::kNotFound);
  port.mutable_spec()->set_network("vlan100");
  auto p1 = m.network->CreatePort(port);
  ASSERT_TRUE(p1.ok()) << p1.status();
  EXPECT_TRUE(p1->status().mac_address().starts_with("52:54:00:"));
  EXPECT_LE(p1->status().interface_name().size(), 15u);
  EXPECT_EQ(m.network->CreatePort(port)->status().mac_address(), p1->status().mac_address());
  v1::CreatePortRequest dup = port;
  dup.mutable_metadata()->set_name("p2");
  dup.mutable_spec()->set_mac_address(p1->status().mac_address());
  EXPECT_EQ(m.network->CreatePort(dup).status().code(), StatusCode::kAlreadyExists);

  Status refused = m.network->DeleteNetwork(Named<v1::DeleteNetworkRequest>("vlan100"));
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("\"p1\""));
  v1::ListPortsRequest list;
  list.set_network("vlan100");
  EXPECT_EQ(m.network->ListPorts(list)->ports_size(), 1);
  ASSERT_TRUE(m.network->DeletePort(Named<v1::DeletePortRequest>("p1")).ok());
  EXPECT_TRUE(m.network->DeletePort(Named<v1::DeletePortRequest>("p1")).ok());
  EXPECT_TRUE(m.network->DeleteNetwork(Named<v1::DeleteNetworkRequest>("vlan100")).ok());
  EXPECT_EQ(m.network->GetNetwork(Named<v1::GetNetworkRequest>("vlan100")).status().code(),
            StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// Image

TEST(MockImage, ValidatesTheSpec) {
  MockSet m;
  struct Case {
    std::function<void(v1::ImageSpec&)> spec;
    const char* field;
  };
  const Case cases[] = {
      {[](auto&) {}, "spec.url"},
      {[](auto& s) { s.set_url("ftp://host/a.img"); }, "spec.url"},
      {[](auto& s) { s.set_url("https://"); }, "spec.url"},
      {[](auto& s) { s.set_file("relative.img"); }, "spec.file"},
      {[](auto& s) {
         s.set_url("https://host/a.img");
         s.set_sha256(std::string(64, 'A'));
       },
       "spec.sha256"},
      {[](auto& s) {
         s.set_url("https://host/a.img");
         s.set_sha256("abc");
       },
       "spec.sha256"},
  };
  for (const auto& c : cases) {
    v1::ImportImageRequest r;
    r.mutable_metadata()->set_name("img");
    c.spec(*r.mutable_spec());
    auto op = m.image->ImportImage(r);
    ASSERT_FALSE(op.ok()) << c.field;
    EXPECT_EQ(op.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(op.status().message().starts_with(std::string(c.field) + ":")) << op.status();
  }
}

TEST(MockImage, ImportProgressIdempotencyAndEvents) {
  MockSet m;
  std::mutex mu;
  std::vector<v1::OperationStatus> updates;
  auto op = m.image->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(op.ok()) << op.status();
  op->OnProgress([&](const v1::OperationStatus& s) {
    std::lock_guard lock(mu);
    updates.push_back(s);
  });
  auto same = m.image->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->id(), op->id());
  auto other = m.image->ImportImage(ImageRequest("debian", "https://example.com/b.img"));
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(op->Wait(std::chrono::seconds(5)).ok());
  auto image = m.image->GetImage(Named<v1::GetImageRequest>("debian"));
  ASSERT_TRUE(image.ok());
  EXPECT_EQ(image->status().phase(), v1::IMAGE_PHASE_READY);
  EXPECT_EQ(image->status().sha256(), kImageSha256);
  EXPECT_EQ(image->status().virtual_size_bytes(), kImageBytes);
  {
    std::lock_guard lock(mu);
    ASSERT_FALSE(updates.empty());
    EXPECT_EQ(updates.back().phase(), v1::OPERATION_PHASE_SUCCEEDED);
    EXPECT_EQ(updates.back().progress().done(), kImageBytes);
    EXPECT_EQ(updates.back().progress().total(), kImageBytes);
  }
  // Finished: the same spec returns the finished operation.
  auto finished = m.image->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(finished.ok());
  EXPECT_EQ(finished->id(), op->id());
  EXPECT_TRUE(finished->done());
  EXPECT_EQ(m.ctx.log().WithReason("ImageReady").size(), 1u);
  EXPECT_FALSE(m.ctx.log().WithReason("OperationFinished").empty());
}

TEST(MockImage, ChecksumMismatchFailsWithDataLoss) {
  MockSet m;
  auto request = ImageRequest("bad");
  request.mutable_spec()->set_sha256(std::string(64, '0'));
  auto op = m.image->ImportImage(request);
  ASSERT_TRUE(op.ok());
  EXPECT_EQ(op->Wait(std::chrono::seconds(5)).code(), StatusCode::kDataLoss);
  auto image = m.image->GetImage(Named<v1::GetImageRequest>("bad"));
  EXPECT_EQ(image->status().phase(), v1::IMAGE_PHASE_FAILED);
  EXPECT_EQ(image->status().actual_size_bytes(), 0u);
  // The right checksum imports.
  auto good = ImageRequest("good");
  good.mutable_spec()->set_sha256(kImageSha256);
  EXPECT_TRUE(m.image->ImportImage(good)->Wait(std::chrono::seconds(5)).ok());
}

TEST(MockImage, CancelFailsTheImageAndReimportRetries) {
  MockSet m(Options(R"({"operation_step_ms": 300})"));
  auto op = m.image->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(op->Cancel().ok());
  EXPECT_EQ(op->Wait(std::chrono::seconds(5)).code(), StatusCode::kCancelled);
  auto image = m.image->GetImage(Named<v1::GetImageRequest>("debian"));
  EXPECT_EQ(image->status().phase(), v1::IMAGE_PHASE_FAILED);
  auto retry = m.image->ImportImage(ImageRequest("debian"));
  ASSERT_TRUE(retry.ok());
  EXPECT_NE(retry->id(), op->id());
  EXPECT_EQ(m.image->GetImage(Named<v1::GetImageRequest>("debian"))->metadata().uid(),
            image->metadata().uid());
  // Deleting an importing image stops the import.
  EXPECT_TRUE(m.image->DeleteImage(Named<v1::DeleteImageRequest>("debian")).ok());
  EXPECT_TRUE(retry->done());
  EXPECT_EQ(m.image->GetImage(Named<v1::GetImageRequest>("debian")).status().code(),
            StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// Backup

v1::CreateBackupRequest BackupRequest(const std::string& name, const std::string& volume,
                                      bool full = false) {
  v1::CreateBackupRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_target("nfs");
  r.mutable_spec()->set_volume(volume);
  r.mutable_spec()->set_full(full);
  return r;
}

void CreateTarget(BackupBackend& backup, const std::string& name = "nfs") {
  v1::CreateBackupTargetRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_url("nfs://127.0.0.1/export/backups");
  auto made = backup.CreateBackupTarget(r);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->status().phase(), v1::BACKUP_TARGET_PHASE_AVAILABLE);
}

v1::Backup GetBackup(BackupBackend& backup, const std::string& name) {
  v1::GetBackupRequest r;
  r.set_target("nfs");
  r.set_name(name);
  auto got = backup.GetBackup(r);
  EXPECT_TRUE(got.ok()) << got.status();
  return got.ok() ? *got : v1::Backup();
}

TEST(MockBackup, TargetsValidateAndAreIdempotent) {
  MockSet m;
  v1::CreateBackupTargetRequest r;
  r.mutable_metadata()->set_name("t");
  r.mutable_spec()->set_url("not a url");
  auto bad = m.backup->CreateBackupTarget(r);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(bad.status().message().starts_with("spec.url:")) << bad.status();
  r.mutable_spec()->set_url("s3://bucket/path");
  auto made = m.backup->CreateBackupTarget(r);
  ASSERT_TRUE(made.ok());
  EXPECT_EQ(m.backup->CreateBackupTarget(r)->metadata().uid(), made->metadata().uid());
  r.mutable_spec()->set_url("s3://other/path");
  EXPECT_EQ(m.backup->CreateBackupTarget(r).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(m.backup->GetBackupTarget(Named<v1::GetBackupTargetRequest>("x")).status().code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(m.backup->DeleteBackupTarget(Named<v1::DeleteBackupTargetRequest>("t")).ok());
  EXPECT_TRUE(m.backup->DeleteBackupTarget(Named<v1::DeleteBackupTargetRequest>("t")).ok());
}

TEST(MockBackup, IncrementalChainListDeleteAndRestore) {
  MockSet m;
  CreateTarget(*m.backup);
  ImportReady(*m.image, "debian");
  v1::CreateVolumeRequest vol;
  vol.mutable_metadata()->set_name("data");
  vol.mutable_spec()->mutable_source()->set_image("debian");
  ASSERT_TRUE(m.storage->CreateVolume(vol).ok());
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("other", 4096)).ok());

  EXPECT_EQ(m.backup->CreateBackup(BackupRequest("b0", "missing")).status().code(),
            StatusCode::kNotFound);
  auto b1 = m.backup->CreateBackup(BackupRequest("b1", "data"));
  ASSERT_TRUE(b1.ok()) << b1.status();
  EXPECT_EQ(m.backup->CreateBackup(BackupRequest("b1", "data"))->id(), b1->id());
  EXPECT_EQ(m.backup->CreateBackup(BackupRequest("b1", "other")).status().code(),
            StatusCode::kAlreadyExists);
  ASSERT_TRUE(b1->Wait(std::chrono::seconds(5)).ok());
  auto first = GetBackup(*m.backup, "b1");
  EXPECT_EQ(first.status().phase(), v1::BACKUP_PHASE_COMPLETED);
  EXPECT_EQ(first.status().base_backup(), "");
  EXPECT_EQ(first.status().volume_size_bytes(), kImageBytes);
  EXPECT_EQ(first.status().stored_bytes(), kImageBytes);

  // Unchanged volume: incremental to b1, nothing new stored.
  ASSERT_TRUE(
      m.backup->CreateBackup(BackupRequest("b2", "data"))->Wait(std::chrono::seconds(5)).ok());
  auto second = GetBackup(*m.backup, "b2");
  EXPECT_EQ(second.status().base_backup(), "b1");
  EXPECT_EQ(second.status().stored_bytes(), 0u);

  // Attached (written): incremental to b2, data stored.
  v1::AttachVolumeRequest attach;
  attach.set_name("data");
  attach.set_attacher("vm-a");
  ASSERT_TRUE(m.storage->AttachVolume(attach).ok());
  ASSERT_TRUE(
      m.backup->CreateBackup(BackupRequest("b3", "data"))->Wait(std::chrono::seconds(5)).ok());
  EXPECT_EQ(GetBackup(*m.backup, "b3").status().base_backup(), "b2");
  EXPECT_GT(GetBackup(*m.backup, "b3").status().stored_bytes(), 0u);
  // Full on request.
  ASSERT_TRUE(m.backup->CreateBackup(BackupRequest("b4", "data", true))
                  ->Wait(std::chrono::seconds(5))
                  .ok());
  EXPECT_EQ(GetBackup(*m.backup, "b4").status().base_backup(), "");
  ASSERT_TRUE(
      m.backup->CreateBackup(BackupRequest("o1", "other"))->Wait(std::chrono::seconds(5)).ok());
  EXPECT_FALSE(m.ctx.log().WithReason("BackupProgress").empty());
  EXPECT_EQ(m.ctx.log().WithReason("BackupCompleted").size(), 5u);

  v1::ListBackupsRequest list;
  list.set_target("nfs");
  EXPECT_EQ(m.backup->ListBackups(list)->backups_size(), 5);
  list.set_volume("data");
  EXPECT_EQ(m.backup->ListBackups(list)->backups_size(), 4);

  v1::DeleteBackupRequest del;
  del.set_target("nfs");
  del.set_name("b4");
  EXPECT_TRUE(m.backup->DeleteBackup(del).ok());
  EXPECT_TRUE(m.backup->DeleteBackup(del).ok());
  EXPECT_EQ(m.backup->ListBackups(list)->backups_size(), 3);

  v1::RestoreBackupRequest restore;
  restore.set_target("nfs");
  restore.set_backup("b3");
  restore.mutable_volume()->set_name("data");
  EXPECT_EQ(m.backup->RestoreBackup(restore).status().code(), StatusCode::kAlreadyExists);
  restore.mutable_volume()->set_name("restored");
  auto op = m.backup->RestoreBackup(restore);
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_EQ(m.backup->RestoreBackup(restore)->id(), op->id());
  ASSERT_TRUE(op->Wait(std::chrono::seconds(5)).ok()) << op->status().error();
  auto restored = m.storage->GetVolume(Named<v1::GetVolumeRequest>("restored"));
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->spec().size_bytes(), kImageBytes);
}

TEST(MockBackup, BackupsOutliveTheirTarget) {
  MockSet m;
  CreateTarget(*m.backup);
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("data", 4096)).ok());
  ASSERT_TRUE(
      m.backup->CreateBackup(BackupRequest("b1", "data"))->Wait(std::chrono::seconds(5)).ok());
  ASSERT_TRUE(m.backup->DeleteBackupTarget(Named<v1::DeleteBackupTargetRequest>("nfs")).ok());
  v1::ListBackupsRequest list;
  list.set_target("nfs");
  EXPECT_EQ(m.backup->ListBackups(list).status().code(), StatusCode::kNotFound);
  CreateTarget(*m.backup, "nfs");  // same URL again: the old backups are there
  EXPECT_EQ(m.backup->ListBackups(list)->backups_size(), 1);
}

TEST(MockBackup, CancelAndRestoreNeedsCompletedBackup) {
  MockSet m(Options(R"({"operation_step_ms": 300})"));
  CreateTarget(*m.backup);
  ASSERT_TRUE(m.storage->CreateVolume(VolumeRequest("data", 4096)).ok());
  auto op = m.backup->CreateBackup(BackupRequest("b1", "data"));
  ASSERT_TRUE(op.ok());
  v1::RestoreBackupRequest restore;
  restore.set_target("nfs");
  restore.set_backup("b1");
  restore.mutable_volume()->set_name("restored");
  EXPECT_EQ(m.backup->RestoreBackup(restore).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(op->Cancel().ok());
  EXPECT_EQ(op->Wait(std::chrono::seconds(5)).code(), StatusCode::kCancelled);
  EXPECT_EQ(GetBackup(*m.backup, "b1").status().phase(), v1::BACKUP_PHASE_FAILED);
  EXPECT_EQ(m.ctx.log().WithReason("BackupFailed").size(), 1u);
  // A failed backup can be deleted.
  v1::DeleteBackupRequest del;
  del.set_target("nfs");
  del.set_name("b1");
  EXPECT_TRUE(m.backup->DeleteBackup(del).ok());
}

}  // namespace
}  // namespace hci::mock
