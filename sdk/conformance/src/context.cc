// The test context: request builders, create-and-track helpers, waits, races and assertions.
#include <condition_variable>
#include <filesystem>
#include <thread>

#include "conformance_internal.h"

namespace hci::conformance::internal {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------------
// Request builders

v1::ObjectMeta Context::Meta(const std::string& name) const {
  v1::ObjectMeta meta;
  meta.set_name(name);
  (*meta.mutable_labels())["hci-conformance"] = env.run_id;
  return meta;
}

v1::CreateVolumeRequest Context::VolumeRequest(const std::string& name) const {
  v1::CreateVolumeRequest r;
  *r.mutable_metadata() = Meta(name);
  r.mutable_spec()->set_size_bytes(fx().volume_size);
  return r;
}

v1::CreateVmRequest Context::VmRequest(const std::string& name) const {
  v1::CreateVmRequest r;
  *r.mutable_metadata() = Meta(name);
  *r.mutable_spec() = fx().vm_spec;
  if (fx().vm_volume && env.storage != nullptr) {
    auto* disk = r.mutable_spec()->add_disks();
    disk->set_name("root");
    disk->set_volume(name + "-d");
    disk->set_boot_order(1);
  }
  return r;
}

v1::CreateNetworkRequest Context::NetworkRequest(const std::string& name) const {
  v1::CreateNetworkRequest r;
  *r.mutable_metadata() = Meta(name);
  auto* spec = r.mutable_spec();
  spec->set_cluster_network(fx().cluster_network);
  const auto& caps = env.network_caps;
  if (caps.vlan() || (!caps.untagged() && !caps.trunk())) {
    spec->set_type(v1::NETWORK_TYPE_L2_VLAN);
    spec->set_vlan_id(fx().vlan_id);
  } else if (caps.untagged()) {
    spec->set_type(v1::NETWORK_TYPE_UNTAGGED);
  } else {
    spec->set_type(v1::NETWORK_TYPE_L2_VLAN_TRUNK);
    auto* range = spec->add_trunks();
    range->set_min_id(fx().vlan_id);
    range->set_max_id(fx().vlan_id);
  }
  return r;
}

v1::CreatePortRequest Context::PortRequest(const std::string& name,
                                           const std::string& network) const {
  v1::CreatePortRequest r;
  *r.mutable_metadata() = Meta(name);
  r.mutable_spec()->set_network(network);
  return r;
}

v1::ImportImageRequest Context::ImageFileRequest(const std::string& name) const {
  v1::ImportImageRequest r;
  *r.mutable_metadata() = Meta(name);
  r.mutable_spec()->set_file(fx().image_file);
  return r;
}

v1::ImportImageRequest Context::ImageUrlRequest(const std::string& name) const {
  v1::ImportImageRequest r;
  *r.mutable_metadata() = Meta(name);
  std::string base = env.http ? env.http->base_url() : "http://127.0.0.1:9/";
  r.mutable_spec()->set_url(base + std::filesystem::path(fx().image_file).filename().string());
  return r;
}

v1::ImportImageRequest Context::ImageRequest(const std::string& name) const {
  return env.image_caps.import_file() || !env.image_caps.import_url() ? ImageFileRequest(name)
                                                                      : ImageUrlRequest(name);
}

v1::CreateBackupTargetRequest Context::TargetRequest(const std::string& name) const {
  v1::CreateBackupTargetRequest r;
  *r.mutable_metadata() = Meta(name);
  r.mutable_spec()->set_url(fx().backup_target_url);
  if (!fx().backup_target_options.fields().empty()) {
    *r.mutable_spec()->mutable_options() = fx().backup_target_options;
  }
  return r;
}

v1::CreateBackupRequest Context::BackupRequest(const std::string& name, const std::string& target,
                                               const std::string& volume) const {
  v1::CreateBackupRequest r;
  *r.mutable_metadata() = Meta(name);
  r.mutable_spec()->set_target(target);
  r.mutable_spec()->set_volume(volume);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Create-and-track helpers

Result<v1::Volume> Context::CreateVolume(const v1::CreateVolumeRequest& request) {
  if (env.storage == nullptr) return FailedPrecondition("no storage backend is configured");
  tracker.Volume(request.metadata().name());
  return env.storage->CreateVolume(request);
}

Result<v1::Volume> Context::NewVolume(std::string_view what) {
  auto r = CreateVolume(VolumeRequest(Name(what)));
  if (!r.ok()) return r.status().WithContext("creating a volume");
  return r;
}

Result<v1::CreateVmRequest> Context::PrepareVm(std::string_view what) {
  v1::CreateVmRequest request = VmRequest(Name(what));
  for (const auto& disk : request.spec().disks()) {
    v1::CreateVolumeRequest volume = VolumeRequest(disk.volume());
    volume.mutable_spec()->set_size_bytes(fx().vm_volume_size);
    auto made = CreateVolume(volume);
    if (!made.ok()) return made.status().WithContext("creating the VM's disk volume");
  }
  return request;
}

Result<v1::VirtualMachine> Context::CreateVm(const v1::CreateVmRequest& request) {
  if (env.compute == nullptr) return FailedPrecondition("no compute backend is configured");
  tracker.Vm(request.metadata().name());
  return env.compute->CreateVm(request);
}

Result<v1::VirtualMachine> Context::NewVm(std::string_view what) {
  HCI_ASSIGN_OR_RAISE(auto request, PrepareVm(what));
  auto vm = CreateVm(request);
  if (!vm.ok()) return vm.status().WithContext("CreateVm");
  return vm;
}

Result<v1::VirtualMachine> Context::NewRunningVm(std::string_view what) {
  HCI_ASSIGN_OR_RAISE(auto vm, NewVm(what));
  v1::StartVmRequest start;
  start.set_name(vm.metadata().name());
  auto started = env.compute->StartVm(start);
  if (!started.ok()) return started.status().WithContext("StartVm");
  return WaitVmPhase(vm.metadata().name(), v1::VM_PHASE_RUNNING);
}

Result<v1::Network> Context::NewNetwork(std::string_view what) {
  if (env.network == nullptr) return FailedPrecondition("no network backend is configured");
  auto request = NetworkRequest(Name(what));
  tracker.Network(request.metadata().name());
  auto made = env.network->CreateNetwork(request);
  if (!made.ok()) return made.status().WithContext("CreateNetwork");
  return made;
}

Result<v1::Port> Context::NewPort(const std::string& network, std::string_view what) {
  auto request = PortRequest(Name(what), network);
  tracker.Port(request.metadata().name());
  auto made = env.network->CreatePort(request);
  if (!made.ok()) return made.status().WithContext("CreatePort");
  return made;
}

Result<v1::Image> Context::NewImage(const v1::ImportImageRequest& request) {
  if (env.image == nullptr) return FailedPrecondition("no image backend is configured");
  tracker.Image(request.metadata().name());
  auto op = env.image->ImportImage(request);
  if (!op.ok()) return op.status().WithContext("ImportImage");
  tracker.Op(*op);
  HCI_RETURN_NOT_OK(Wait(*op).WithContext("the ImportImage operation"));
  v1::GetImageRequest get;
  get.set_name(request.metadata().name());
  auto image = env.image->GetImage(get);
  if (!image.ok()) return image.status().WithContext("GetImage after the import");
  if (image->status().phase() != v1::IMAGE_PHASE_READY) {
    return FailedPrecondition("image " + request.metadata().name() +
                              ": the import succeeded but the phase is " +
                              v1::ImagePhase_Name(image->status().phase()));
  }
  return image;
}

Result<v1::Image> Context::NewImage(std::string_view what) {
  return NewImage(ImageRequest(Name(what)));
}

Result<v1::BackupTarget> Context::NewTarget(std::string_view what) {
  if (env.backup == nullptr) return FailedPrecondition("no backup backend is configured");
  auto request = TargetRequest(Name(what));
  tracker.BackupTarget(request.metadata().name());
  auto made = env.backup->CreateBackupTarget(request);
  if (!made.ok()) return made.status().WithContext("CreateBackupTarget");
  return made;
}

Result<std::string> Context::BackupVolume() {
  if (env.storage == nullptr) {
    return fx().backup_volume.empty() ? Name("bvol") : fx().backup_volume;
  }
  HCI_ASSIGN_OR_RAISE(auto volume, NewVolume("bvol"));
  return volume.metadata().name();
}

Result<v1::Backup> Context::NewBackup(const std::string& target, const std::string& volume,
                                      std::string_view what, bool full) {
  auto request = BackupRequest(Name(what), target, volume);
  request.mutable_spec()->set_full(full);
  tracker.Backup(target, request.metadata().name());
  auto op = env.backup->CreateBackup(request);
  if (!op.ok()) return op.status().WithContext("CreateBackup");
  tracker.Op(*op);
  HCI_RETURN_NOT_OK(Wait(*op).WithContext("the CreateBackup operation"));
  v1::GetBackupRequest get;
  get.set_target(target);
  get.set_name(request.metadata().name());
  auto backup = env.backup->GetBackup(get);
  if (!backup.ok()) return backup.status().WithContext("GetBackup after the backup");
  return backup;
}

// ---------------------------------------------------------------------------------------------
// Waits and races

Status Context::Wait(const Operation& op) const {
  Status s = op.Wait(fx().timeout);
  if (s.code() == StatusCode::kDeadlineExceeded) {
    return DeadlineExceeded("operation " + op.id() + " (" + op.status().kind() +
                            ") did not finish within " + std::to_string(fx().timeout.count()) +
                            " ms");
  }
  return s;
}

Result<v1::VirtualMachine> Context::WaitVmPhase(const std::string& name, v1::VmPhase phase) const {
  auto deadline = std::chrono::steady_clock::now() + fx().timeout;
  v1::GetVmRequest get;
  get.set_name(name);
  for (;;) {
    auto vm = env.compute->GetVm(get);
    if (!vm.ok()) return vm.status().WithContext("GetVm");
    if (vm->status().phase() == phase) return vm;
    if (std::chrono::steady_clock::now() > deadline) {
      return DeadlineExceeded("vm " + name + " did not reach phase " + v1::VmPhase_Name(phase) +
                              " within " + std::to_string(fx().timeout.count()) + " ms (it is " +
                              v1::VmPhase_Name(vm->status().phase()) + ", reason \"" +
                              vm->status().reason() + "\")");
    }
    std::this_thread::sleep_for(20ms);
  }
}

void RunTogether(int n, const std::function<void(int)>& fn) {
  std::mutex mu;
  std::condition_variable cv;
  int ready = 0;
  bool go = false;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      {
        std::unique_lock lock(mu);
        ++ready;
        cv.notify_all();
        cv.wait(lock, [&] { return go; });
      }
      fn(i);
    });
  }
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return ready == n; });
    go = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
}

// ---------------------------------------------------------------------------------------------
// Assertions

testing::AssertionResult IsOk(const Status& status) {
  if (status.ok()) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "expected OK, got " << status.ToString();
}

testing::AssertionResult HasCode(const Status& status, StatusCode code, std::string_view field) {
  if (status.code() != code) {
    return testing::AssertionFailure()
           << "expected " << StatusCodeName(code) << ", got " << status.ToString();
  }
  if (!field.empty() && status.message().find(field) == std::string::npos) {
    return testing::AssertionFailure()
           << "expected " << StatusCodeName(code) << " naming the field \"" << field << "\", got "
           << status.ToString();
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult NamesField(const Status& status, std::vector<std::string> fields) {
  if (status.code() != StatusCode::kInvalidArgument) {
    return testing::AssertionFailure() << "expected InvalidArgument, got " << status.ToString();
  }
  for (const auto& f : fields) {
    if (status.message().find(f) != std::string::npos) return testing::AssertionSuccess();
  }
  std::string want;
  for (const auto& f : fields) want += (want.empty() ? "\"" : " or \"") + f + "\"";
  return testing::AssertionFailure()
         << "expected InvalidArgument naming the field " << want << ", got " << status.ToString();
}

std::string Tally::Describe() const {
  std::string text = std::to_string(ok) + " OK, " + std::to_string(aborted) + " Aborted";
  for (const auto& o : other) text += ", " + o;
  return text;
}

Tally Count(const std::vector<Status>& results) {
  Tally t;
  for (const auto& s : results) {
    if (s.ok()) {
      ++t.ok;
    } else if (s.code() == StatusCode::kAborted) {
      ++t.aborted;
    } else {
      t.other.push_back(s.ToString());
    }
  }
  return t;
}

testing::AssertionResult OneWinsOthersAborted(const Tally& tally, bool expect_aborted) {
  if (!tally.other.empty() || tally.ok < 1 || (expect_aborted && tally.aborted < 1)) {
    return testing::AssertionFailure()
           << "concurrent calls on one object: expected one to win and the others to answer "
              "Aborted (or OK, idempotently)"
           << (expect_aborted ? ", and at least one Aborted while the first was slowed down" : "")
           << "; got " << tally.Describe();
  }
  return testing::AssertionSuccess();
}

bool SlowNextCall(Backend* backend, const std::string& op, std::uint32_t latency_ms) {
  FaultInjector* faults = backend == nullptr ? nullptr : backend->fault_injector();
  if (faults == nullptr) return false;
  v1::Fault fault;
  fault.set_operation(op);
  fault.set_code(0);
  fault.set_count(1);
  fault.set_latency_ms(latency_ms);
  return faults->Inject(fault).ok();
}

void ClearFaults(Backend* backend) {
  if (FaultInjector* faults = backend == nullptr ? nullptr : backend->fault_injector()) {
    faults->Clear();
  }
}

std::string VmState(const v1::VirtualMachine& vm) {
  return "uid " + vm.metadata().uid() + ", phase " + v1::VmPhase_Name(vm.status().phase()) +
         ", restarts " + std::to_string(vm.status().restart_count()) + ", spec {" +
         vm.spec().ShortDebugString() + "}";
}

std::string VolumeState(const v1::Volume& volume) {
  return "uid " + volume.metadata().uid() + ", phase " +
         v1::VolumePhase_Name(volume.status().phase()) + ", attached to \"" +
         volume.status().attached_to() + "\", size " + std::to_string(volume.spec().size_bytes()) +
         ", capacity " + std::to_string(volume.status().capacity_bytes());
}

}  // namespace hci::conformance::internal
