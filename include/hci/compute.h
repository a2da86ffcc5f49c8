// ComputeBackend: virtual machine lifecycle, console, live migration.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "hci/backend.h"
#include "hci/export.h"
#include "hci/operation.h"
#include "hci/result.h"
#include "hci/v1/compute.pb.h"

namespace hci {

/// A live, bidirectional serial console. Thread-safe; one reader at a time.
class HCI_EXPORT ConsoleStream {
 public:
  virtual ~ConsoleStream();
  /// Returns the bytes available within `timeout` (possibly empty); Unavailable once the VM
  /// stopped or the console closed.
  virtual Result<std::string> Read(std::chrono::milliseconds timeout) = 0;
  /// Sends `data` to the guest's serial port.
  virtual Status Write(std::string_view data) = 0;
};

/// Virtual machines. Names are RFC 1123 labels (validated by the core before any call).
///
/// Lifecycle: Stopped -> Starting -> Running <-> Paused; Running -> Stopping -> Stopped;
/// any -> Failed when the VM's process dies unexpectedly. Calls that do not fit the current
/// phase return FailedPrecondition and change nothing.
class HCI_EXPORT ComputeBackend : public Backend {
 public:
  ~ComputeBackend() override;

  /// What this backend implements; every optional method it does not claim answers
  /// Unimplemented. Cheap and constant for the backend's lifetime.
  virtual v1::ComputeCapabilities Capabilities() const = 0;

  /// Defines a VM (persisting its spec) without starting it unless run_strategy is Always.
  /// Idempotent by name: the same spec returns the existing VM; a different spec gives
  /// AlreadyExists. InvalidArgument names the bad field (e.g. "spec.memory_mib").
  virtual Result<v1::VirtualMachine> CreateVm(const v1::CreateVmRequest& request) = 0;
  /// NotFound when there is no such VM.
  virtual Result<v1::VirtualMachine> GetVm(const v1::GetVmRequest& request) = 0;
  /// The VMs carrying every label of `label_selector` (all VMs when it is empty).
  virtual Result<v1::ListVmsResponse> ListVms(const v1::ListVmsRequest& request) = 0;
  /// Removes the VM definition. OK when it does not exist. FailedPrecondition while it runs
  /// unless `force` (then it is stopped first).
  virtual Status DeleteVm(const v1::DeleteVmRequest& request) = 0;

  /// Starts a stopped or failed VM and returns once its process runs (phase Running).
  /// OK and no change if already running; FailedPrecondition when paused.
  virtual Result<v1::VirtualMachine> StartVm(const v1::StartVmRequest& request) = 0;
  /// Stops a VM: the ACPI power button, then a forced power-off after the grace period
  /// (status.reason says which happened: "GuestShutdown" or "ForcedStop"); at once with
  /// `force`. OK and no change if already stopped.
  virtual Result<v1::VirtualMachine> StopVm(const v1::StopVmRequest& request) = 0;

  /// Optional (capability `restart`).
  virtual Result<v1::VirtualMachine> RestartVm(const v1::RestartVmRequest& request);
  /// Optional (capability `pause`): vCPUs stop; memory and devices stay. FailedPrecondition
  /// unless Running.
  virtual Result<v1::VirtualMachine> PauseVm(const v1::PauseVmRequest& request);
  /// Optional (capability `pause`). FailedPrecondition unless Paused.
  virtual Result<v1::VirtualMachine> ResumeVm(const v1::ResumeVmRequest& request);
  /// Optional (capability `live_migration`): a long operation with progress in bytes of guest
  /// memory transferred; the VM is Migrating meanwhile.
  virtual Result<Operation> MigrateVm(const v1::MigrateVmRequest& request);
  /// Optional (capability `console_log`): reads the serial console log from an offset.
  virtual Result<v1::ConsoleOutput> ReadConsole(const v1::ReadConsoleRequest& request);
  /// Optional (capability `console_attach`): attaches to the live serial console.
  virtual Result<std::unique_ptr<ConsoleStream>> AttachConsole(
      const v1::AttachConsoleRequest& request);
  /// Optional (capability `metrics`): per-VM metrics with KubeVirt's names
  /// (kubevirt_vmi_vcpu_seconds_total, kubevirt_vmi_memory_resident_bytes, ...).
  virtual Result<v1::VmMetricsResponse> VmMetrics(const v1::VmMetricsRequest& request);
  /// Optional (capability `resize_disk`): the storage backend grew `volume`, which backs a disk
  /// of the running VM `vm`, to `size_bytes`; QEMU takes the new size and the guest gets a
  /// capacity-change notification (libvirt's virDomainBlockResize). OK when the VM is not
  /// running (its next start opens the volume at the new size). NotFound when the VM does not
  /// exist or has no disk on `volume`; InvalidArgument when `size_bytes` is not a multiple of
  /// 4096 or smaller than the disk's current size.
  virtual Status ResizeDisk(const v1::ResizeDiskRequest& request);
};

}  // namespace hci
