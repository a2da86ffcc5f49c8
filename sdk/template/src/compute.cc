// The example ComputeBackend: virtual machines kept in memory. It implements the required
// methods only (the lifecycle Stopped <-> Running); the optional ones (pause, restart, console,
// migration, metrics) keep ComputeBackend's defaults, which answer Unimplemented, and
// Capabilities() claims none of them. Where a real plugin starts and stops its hypervisor, this
// one attaches the disks' volumes and changes the phase.
#include "hci/compute.h"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "example_internal.h"
#include "hci/object_meta.h"
#include "hci/options.h"

namespace example {
namespace {

namespace v1 = hci::v1;
using hci::Result;
using hci::Status;

constexpr char kVmKind[] = "VirtualMachine";

struct ComputeOptions {
  std::uint64_t max_vcpus = 64;
  std::uint64_t max_memory_mib = 1 << 20;  // 1 TiB
};

Result<ComputeOptions> ParseComputeOptions(const google::protobuf::Struct& options) {
  // Errors name the field ("options.max_vcpus: ..."); RejectUnknown() refuses a misspelt key
  // instead of silently running with a default.
  hci::OptionsReader reader(options, "options");
  ComputeOptions out;
  HCI_ASSIGN_OR_RAISE(out.max_vcpus, reader.Unsigned("max_vcpus", out.max_vcpus, 1, 1024));
  HCI_ASSIGN_OR_RAISE(out.max_memory_mib,
                      reader.Unsigned("max_memory_mib", out.max_memory_mib, 1, 1ull << 32));
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  return out;
}

class ExampleCompute final : public hci::ComputeBackend {
 public:
  ExampleCompute(hci::PluginContext& context, ComputeOptions options)
      : context_(context), options_(options) {}

  v1::ComputeCapabilities Capabilities() const override {
    // Claim only what is implemented: the conformance kit exercises every claim and expects
    // Unimplemented from everything else. A graceful stop is instant here (no guest to wait for).
    v1::ComputeCapabilities caps;
    caps.set_graceful_stop(true);
    caps.add_run_strategies(v1::RUN_STRATEGY_MANUAL);
    return caps;
  }

  Result<v1::VirtualMachine> CreateVm(const v1::CreateVmRequest& request) override {
    // The core has already checked that the names in the request are valid RFC 1123 labels.
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateSpec(request.spec()));
    {
      std::lock_guard lock(mu_);
      if (auto it = vms_.find(name); it != vms_.end()) return Existing(it->second, request);
    }
    // Never call another backend with mu_ held: it may take as long as it likes, or call back.
    HCI_RETURN_NOT_OK(CheckVolumes(request.spec()));
    std::lock_guard lock(mu_);
    // Created meanwhile by another thread: the same rules as above.
    if (auto it = vms_.find(name); it != vms_.end()) return Existing(it->second, request);
    v1::VirtualMachine vm;
    *vm.mutable_metadata() = hci::NewObjectMeta(request.metadata());
    *vm.mutable_spec() = request.spec();
    vm.mutable_status()->set_node(context_.node_name());
    SetPhase(vm, v1::VM_PHASE_STOPPED, "Created");
    context_.logger().Info("vm", name, "defined");
    return vms_.emplace(name, std::move(vm)).first->second;
  }

  Result<v1::VirtualMachine> GetVm(const v1::GetVmRequest& request) override {
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(v1::VirtualMachine * vm, Find(request.name()));
    return *vm;
  }

  Result<v1::ListVmsResponse> ListVms(const v1::ListVmsRequest& request) override {
    v1::ListVmsResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, vm] : vms_) {
      if (hci::MatchesLabels(vm.metadata().labels(), request.label_selector())) {
        *out.add_vms() = vm;
      }
    }
    return out;
  }

  Status DeleteVm(const v1::DeleteVmRequest& request) override {
    v1::VirtualMachineSpec spec;
    {
      std::lock_guard lock(mu_);
      auto it = vms_.find(request.name());
      if (it == vms_.end()) return Status::OK();  // Deletes are idempotent.
      if (it->second.status().phase() == v1::VM_PHASE_RUNNING) {
        if (!request.force()) {
          return hci::FailedPrecondition("vm " + Quote(request.name()) +
                                         " is running; stop it first or set force");
        }
        SetPhase(it->second, v1::VM_PHASE_STOPPED, "ForcedStop");
      }
      spec = it->second.spec();
      vms_.erase(it);
    }
    // Detaching a volume that is not attached is OK, so a stopped VM needs no special case.
    return DetachDisks(request.name(), spec);
  }

  Result<v1::VirtualMachine> StartVm(const v1::StartVmRequest& request) override {
    v1::VirtualMachineSpec spec;
    {
      std::lock_guard lock(mu_);
      HCI_ASSIGN_OR_RAISE(v1::VirtualMachine * vm, Find(request.name()));
      // Repeating a call that already happened is not an error: callers retry after timeouts.
      if (vm->status().phase() == v1::VM_PHASE_RUNNING) return *vm;
      spec = vm->spec();
    }
    // A running VM holds its disks' volumes, so that nobody deletes them or attaches them
    // elsewhere. mu_ is released meanwhile; the core runs no other mutation of this VM.
    HCI_RETURN_NOT_OK(AttachDisks(request.name(), spec));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(v1::VirtualMachine * vm, Find(request.name()));
    // A real plugin launches the VM here, with each disk's AttachInfo, and returns once its
    // process runs.
    SetPhase(*vm, v1::VM_PHASE_RUNNING, "Started");
    return *vm;
  }

  Result<v1::VirtualMachine> StopVm(const v1::StopVmRequest& request) override {
    v1::VirtualMachine stopped;
    {
      std::lock_guard lock(mu_);
      HCI_ASSIGN_OR_RAISE(v1::VirtualMachine * vm, Find(request.name()));
      if (vm->status().phase() == v1::VM_PHASE_STOPPED) return *vm;
      // A real plugin presses the ACPI power button and waits up to the grace period before
      // forcing the VM off; status.reason tells the caller which of the two happened.
      SetPhase(*vm, v1::VM_PHASE_STOPPED, request.force() ? "ForcedStop" : "GuestShutdown");
      stopped = *vm;
    }
    HCI_RETURN_NOT_OK(DetachDisks(request.name(), stopped.spec()));
    return stopped;
  }

 private:
  // Unclaimed features are refused (Unimplemented, naming the field) rather than ignored, so a
  // caller never believes it got a UEFI VM that boots with BIOS.
  Status ValidateSpec(const v1::VirtualMachineSpec& spec) const {
    if (spec.vcpus() < 1 || spec.vcpus() > options_.max_vcpus) {
      return hci::InvalidArgument("spec.vcpus: " + std::to_string(spec.vcpus()) +
                                  " is not between 1 and " + std::to_string(options_.max_vcpus));
    }
    if (spec.memory_mib() < 1 || spec.memory_mib() > options_.max_memory_mib) {
      return hci::InvalidArgument("spec.memory_mib: " + std::to_string(spec.memory_mib()) +
                                  " is not between 1 and " +
                                  std::to_string(options_.max_memory_mib));
    }
    if (spec.firmware() == v1::FIRMWARE_UEFI) return NotClaimed("spec.firmware", "UEFI");
    if (spec.has_kernel_boot()) return NotClaimed("spec.kernel_boot", "direct kernel boot");
    if (spec.has_cloud_init()) return NotClaimed("spec.cloud_init", "cloud-init");
    if (!spec.accelerator().empty()) return NotClaimed("spec.accelerator", "choosing one");
    if (spec.run_strategy() != v1::RUN_STRATEGY_UNSPECIFIED &&
        spec.run_strategy() != v1::RUN_STRATEGY_MANUAL) {
      return NotClaimed("spec.run_strategy", v1::RunStrategy_Name(spec.run_strategy()));
    }
    return Status::OK();
  }

  // Asks the host's storage backend (through the core) whether each disk's volume exists.
  Status CheckVolumes(const v1::VirtualMachineSpec& spec) {
    hci::StorageBackend* storage = context_.storage();
    if (storage == nullptr) return Status::OK();  // No storage kind configured on this host.
    for (int i = 0; i < spec.disks_size(); ++i) {
      v1::GetVolumeRequest get;
      get.set_name(spec.disks(i).volume());
      if (auto volume = storage->GetVolume(get); !volume.ok()) {
        return volume.status().WithContext("spec.disks[" + std::to_string(i) + "].volume");
      }
    }
    return Status::OK();
  }

  // Attaches every disk's volume to the VM, or none: after a failure the volumes attached so far
  // are detached again, and the error names the disk.
  Status AttachDisks(const std::string& vm, const v1::VirtualMachineSpec& spec) {
    hci::StorageBackend* storage = context_.storage();
    if (storage == nullptr) return Status::OK();
    for (int i = 0; i < spec.disks_size(); ++i) {
      v1::AttachVolumeRequest attach;
      attach.set_name(spec.disks(i).volume());
      attach.set_attacher(vm);
      if (auto info = storage->AttachVolume(attach); !info.ok()) {
        DetachDisks(vm, spec).IgnoreError();
        return info.status().WithContext("spec.disks[" + std::to_string(i) + "].volume");
      }
    }
    return Status::OK();
  }

  // Detaches every disk's volume from the VM; returns the first error.
  Status DetachDisks(const std::string& vm, const v1::VirtualMachineSpec& spec) {
    hci::StorageBackend* storage = context_.storage();
    if (storage == nullptr) return Status::OK();
    Status result;
    for (int i = 0; i < spec.disks_size(); ++i) {
      v1::DetachVolumeRequest detach;
      detach.set_name(spec.disks(i).volume());
      detach.set_attacher(vm);
      if (Status detached = storage->DetachVolume(detach); !detached.ok() && result.ok()) {
        result = detached.WithContext("spec.disks[" + std::to_string(i) + "].volume");
      }
    }
    return result;
  }

  // Idempotent create: the same spec returns the existing VM, another spec is a conflict.
  Result<v1::VirtualMachine> Existing(const v1::VirtualMachine& vm,
                                      const v1::CreateVmRequest& request) const {
    if (!hci::DescribeSpecDifference(vm.spec(), request.spec()).empty()) {
      return SpecConflict("vm", vm.metadata().name(), vm.spec(), request.spec());
    }
    return vm;
  }

  Result<v1::VirtualMachine*> Find(const std::string& name) {
    auto it = vms_.find(name);
    if (it == vms_.end()) return Missing("vm", name);
    return &it->second;
  }

  // Every phase change is an event, so that embedders can follow VMs without polling.
  void SetPhase(v1::VirtualMachine& vm, v1::VmPhase phase, std::string reason) {
    v1::VmPhase old = vm.status().phase();
    vm.mutable_status()->set_phase(phase);
    vm.mutable_status()->set_reason(reason);
    if (old == phase) return;
    v1::Event event;
    event.set_type(v1::EVENT_TYPE_NORMAL);
    event.mutable_object()->set_kind(kVmKind);
    event.mutable_object()->set_name(vm.metadata().name());
    event.set_reason("VmPhaseChanged");
    event.set_message(v1::VmPhase_Name(old) + " -> " + v1::VmPhase_Name(phase) + " (" + reason +
                      ")");
    event.mutable_vm_phase()->set_old_phase(old);
    event.mutable_vm_phase()->set_new_phase(phase);
    context_.events().Publish(event);
  }

  hci::PluginContext& context_;  // Owned by the Host; outlives this backend.
  const ComputeOptions options_;
  // Every method may be called from any thread at once: one mutex guards all the state.
  std::mutex mu_;
  std::map<std::string, v1::VirtualMachine> vms_;
};

}  // namespace

Result<std::unique_ptr<hci::ComputeBackend>> MakeCompute(hci::PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(ComputeOptions options, ParseComputeOptions(context.options()));
  return std::unique_ptr<hci::ComputeBackend>(std::make_unique<ExampleCompute>(context, options));
}

}  // namespace example
