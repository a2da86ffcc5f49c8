// Defaults of the optional backend methods: Unimplemented, naming the operation.
#include "hci/backend.h"

#include <string>

#include "hci/backup.h"
#include "hci/compute.h"
#include "hci/fault_injection.h"
#include "hci/image.h"
#include "hci/network.h"
#include "hci/storage.h"

namespace hci {

std::string_view BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kCompute: return "compute";
    case BackendKind::kStorage: return "storage";
    case BackendKind::kNetwork: return "network";
    case BackendKind::kImage: return "image";
    case BackendKind::kBackup: return "backup";
  }
  return "?";
}

Status NotImplemented(BackendKind kind, std::string_view operation) {
  std::string message(operation);
  message += " is not implemented by this ";
  message += BackendKindName(kind);
  message += " backend";
  return Unimplemented(std::move(message));
}

Backend::~Backend() = default;
Result<std::string> Backend::Metrics() { return Unimplemented("Metrics is not implemented"); }

// Out of line so that each interface's vtable and typeinfo live in libhci only.
ComputeBackend::~ComputeBackend() = default;
StorageBackend::~StorageBackend() = default;
NetworkBackend::~NetworkBackend() = default;
ImageBackend::~ImageBackend() = default;
BackupBackend::~BackupBackend() = default;
FaultInjector::~FaultInjector() = default;
ConsoleStream::~ConsoleStream() = default;

#define HCI_OPTIONAL(kind, Class, Ret, Method, Req)                     \
  Ret Class::Method(const Req&) { return NotImplemented(BackendKind::kind, #Method); }

HCI_OPTIONAL(kCompute, ComputeBackend, Result<v1::VirtualMachine>, RestartVm, v1::RestartVmRequest)
HCI_OPTIONAL(kCompute, ComputeBackend, Result<v1::VirtualMachine>, PauseVm, v1::PauseVmRequest)
HCI_OPTIONAL(kCompute, ComputeBackend, Result<v1::VirtualMachine>, ResumeVm, v1::ResumeVmRequest)
HCI_OPTIONAL(kCompute, ComputeBackend, Result<Operation>, MigrateVm, v1::MigrateVmRequest)
HCI_OPTIONAL(kCompute, ComputeBackend, Result<v1::ConsoleOutput>, ReadConsole,
             v1::ReadConsoleRequest)
HCI_OPTIONAL(kCompute, ComputeBackend, Result<std::unique_ptr<ConsoleStream>>, AttachConsole,
             v1::AttachConsoleRequest)
HCI_OPTIONAL(kCompute, ComputeBackend, Result<v1::VmMetricsResponse>, VmMetrics,
             v1::VmMetricsRequest)
HCI_OPTIONAL(kCompute, ComputeBackend, Status, ResizeDisk, v1::ResizeDiskRequest)

HCI_OPTIONAL(kStorage, StorageBackend, Result<v1::Volume>, ExpandVolume, v1::ExpandVolumeRequest)
HCI_OPTIONAL(kStorage, StorageBackend, Result<v1::Snapshot>, CreateSnapshot,
             v1::CreateSnapshotRequest)
HCI_OPTIONAL(kStorage, StorageBackend, Result<v1::ListSnapshotsResponse>, ListSnapshots,
             v1::ListSnapshotsRequest)
HCI_OPTIONAL(kStorage, StorageBackend, Status, DeleteSnapshot, v1::DeleteSnapshotRequest)
HCI_OPTIONAL(kStorage, StorageBackend, Result<v1::Volume>, RevertVolume, v1::RevertVolumeRequest)
HCI_OPTIONAL(kStorage, StorageBackend, Result<v1::ChangedBlocks>, GetChangedBlocks,
             v1::GetChangedBlocksRequest)
HCI_OPTIONAL(kStorage, StorageBackend, Result<Operation>, ScrubVolume, v1::ScrubVolumeRequest)

HCI_OPTIONAL(kNetwork, NetworkBackend, Result<v1::Port>, CreatePort, v1::CreatePortRequest)
HCI_OPTIONAL(kNetwork, NetworkBackend, Result<v1::Port>, GetPort, v1::GetPortRequest)
HCI_OPTIONAL(kNetwork, NetworkBackend, Result<v1::ListPortsResponse>, ListPorts,
             v1::ListPortsRequest)
HCI_OPTIONAL(kNetwork, NetworkBackend, Status, DeletePort, v1::DeletePortRequest)

HCI_OPTIONAL(kBackup, BackupBackend, Status, DeleteBackup, v1::DeleteBackupRequest)
HCI_OPTIONAL(kBackup, BackupBackend, Result<Operation>, RestoreBackup, v1::RestoreBackupRequest)

#undef HCI_OPTIONAL

}  // namespace hci
