// hci._hci.ComputeBackend, StorageBackend, NetworkBackend, ImageBackend and BackupBackend.
//
// Every method takes the serialized request and returns the serialized response (or None, an
// Operation, a Console). The Host is looked up on every call, so a backend object that outlives
// Host.close() raises FailedPrecondition instead of touching a destroyed backend.
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "hci/backup.h"
#include "hci/compute.h"
#include "hci/fault_injection.h"
#include "hci/image.h"
#include "hci/network.h"
#include "hci/storage.h"
#include "py_objects_internal.h"

namespace hci::python {
namespace {

template <typename B>
struct PyBackend {
  std::shared_ptr<HostBox> box;
};

template <typename B>
Result<B*> GetBackend(const Host& host);
template <>
Result<ComputeBackend*> GetBackend(const Host& host) {
  return host.compute();
}
template <>
Result<StorageBackend*> GetBackend(const Host& host) {
  return host.storage();
}
template <>
Result<NetworkBackend*> GetBackend(const Host& host) {
  return host.network();
}
template <>
Result<ImageBackend*> GetBackend(const Host& host) {
  return host.image();
}
template <>
Result<BackupBackend*> GetBackend(const Host& host) {
  return host.backup();
}

// A backend of an open Host; the lease keeps the Host open while the backend is used.
template <typename B>
struct Leased {
  HostBox::Lease lease;
  B* backend;
};

template <typename B>
Leased<B> Enter(const PyBackend<B>& self) {
  HostBox::Lease lease = self.box->Acquire();
  B* backend = ValueOrThrow(GetBackend<B>(lease.host()));
  return Leased<B>{std::move(lease), backend};
}

// The request, backend and return types of a backend method `R (B::*)(const Req&)`.
template <auto M>
struct Method;
template <typename B, typename Req, typename R, R (B::*F)(const Req&)>
struct Method<F> {
  using Backend = B;
  using Request = Req;
  using Return = R;
};

// Calls method M with the parsed request, without the GIL (bound with call_guard).
template <auto M>
auto Call(const PyBackend<typename Method<M>::Backend>& self, const std::string& request) {
  using T = Method<M>;
  using R = typename T::Return;
  auto parsed = ParseOrThrow<typename T::Request>(request, "request");
  Leased<typename T::Backend> in = Enter(self);
  if constexpr (std::is_same_v<R, Status>) {
    ThrowIfError((in.backend->*M)(parsed));
  } else if constexpr (std::is_same_v<R, Result<Operation>>) {
    return PyOperation{ValueOrThrow((in.backend->*M)(parsed))};
  } else {
    return ToWire(ValueOrThrow((in.backend->*M)(parsed)));
  }
}

PyConsole AttachConsole(const PyBackend<ComputeBackend>& self, const std::string& request) {
  auto parsed = ParseOrThrow<v1::AttachConsoleRequest>(request, "request");
  Leased<ComputeBackend> in = Enter(self);
  auto console = std::make_shared<ConsoleBox>(ValueOrThrow(in.backend->AttachConsole(parsed)));
  self.box->AddConsole(console);
  return PyConsole{self.box, std::move(console)};
}

// Binds one backend class with the methods every kind has; returns it for the kind's own.
template <typename B>
py::class_<PyBackend<B>> BindBackend(py::module_& m, const char* name, const char* doc) {
  using Release = py::call_guard<py::gil_scoped_release>;
  py::class_<PyBackend<B>> cls(m, name, doc);
  cls.def(
         "capabilities",
         [](const PyBackend<B>& self) { return ToWire(Enter(self).backend->Capabilities()); },
         Release(), "Serialized capabilities message of this kind.")
      .def(
          "metrics",
          [](const PyBackend<B>& self) {
            return Text{ValueOrThrow(Enter(self).backend->Metrics())};
          },
          Release(), "Backend-wide Prometheus text; Unimplemented when the plugin has none.")
      .def(
          "has_fault_injector",
          [](const PyBackend<B>& self) { return Enter(self).backend->fault_injector() != nullptr; },
          Release(), "True when the plugin supports fault injection (the mock).")
      .def(
          "inject_fault",
          [](const PyBackend<B>& self, const std::string& fault) {
            auto parsed = ParseOrThrow<v1::Fault>(fault, "fault");
            Leased<B> in = Enter(self);
            FaultInjector* injector = in.backend->fault_injector();
            if (injector == nullptr) {
              throw StatusError(Unimplemented("this backend's plugin has no fault injector"));
            }
            ThrowIfError(injector->Inject(parsed));
          },
          py::arg("fault"), Release(), "FaultInjector::Inject with serialized hci.v1.Fault.")
      .def(
          "clear_faults",
          [](const PyBackend<B>& self) {
            Leased<B> in = Enter(self);
            FaultInjector* injector = in.backend->fault_injector();
            if (injector == nullptr) {
              throw StatusError(Unimplemented("this backend's plugin has no fault injector"));
            }
            injector->Clear();
          },
          Release(), "FaultInjector::Clear.");
  return cls;
}

// Adds method M as `name`, taking request bytes, with the GIL released.
template <auto M, typename Cls>
void Def(Cls& cls, const char* name, const char* doc) {
  cls.def(name, &Call<M>, py::arg("request"), py::call_guard<py::gil_scoped_release>(), doc);
}

}  // namespace

void BindBackends(py::module_& m) {
  auto host = py::reinterpret_borrow<py::class_<HostBox, std::shared_ptr<HostBox>>>(m.attr("Host"));

  auto compute = BindBackend<ComputeBackend>(m, "ComputeBackend", "hci::ComputeBackend.");
  Def<&ComputeBackend::CreateVm>(compute, "create_vm", "CreateVmRequest -> VirtualMachine");
  Def<&ComputeBackend::GetVm>(compute, "get_vm", "GetVmRequest -> VirtualMachine");
  Def<&ComputeBackend::ListVms>(compute, "list_vms", "ListVmsRequest -> ListVmsResponse");
  Def<&ComputeBackend::DeleteVm>(compute, "delete_vm", "DeleteVmRequest -> None");
  Def<&ComputeBackend::StartVm>(compute, "start_vm", "StartVmRequest -> VirtualMachine");
  Def<&ComputeBackend::StopVm>(compute, "stop_vm", "StopVmRequest -> VirtualMachine");
  Def<&ComputeBackend::RestartVm>(compute, "restart_vm", "RestartVmRequest -> VirtualMachine");
  Def<&ComputeBackend::PauseVm>(compute, "pause_vm", "PauseVmRequest -> VirtualMachine");
  Def<&ComputeBackend::ResumeVm>(compute, "resume_vm", "ResumeVmRequest -> VirtualMachine");
  Def<&ComputeBackend::MigrateVm>(compute, "migrate_vm", "MigrateVmRequest -> Operation");
  Def<&ComputeBackend::ReadConsole>(compute, "read_console", "ReadConsoleRequest -> ConsoleOutput");
  Def<&ComputeBackend::VmMetrics>(compute, "vm_metrics", "VmMetricsRequest -> VmMetricsResponse");
  Def<&ComputeBackend::ResizeDisk>(compute, "resize_disk", "ResizeDiskRequest -> None");
  compute.def("attach_console", &AttachConsole, py::arg("request"),
              py::call_guard<py::gil_scoped_release>(), "AttachConsoleRequest -> Console");

  auto storage = BindBackend<StorageBackend>(m, "StorageBackend", "hci::StorageBackend.");
  Def<&StorageBackend::CreateVolume>(storage, "create_volume", "CreateVolumeRequest -> Volume");
  Def<&StorageBackend::GetVolume>(storage, "get_volume", "GetVolumeRequest -> Volume");
  Def<&StorageBackend::ListVolumes>(storage, "list_volumes",
                                    "ListVolumesRequest -> ListVolumesResponse");
  Def<&StorageBackend::DeleteVolume>(storage, "delete_volume", "DeleteVolumeRequest -> None");
  Def<&StorageBackend::AttachVolume>(storage, "attach_volume", "AttachVolumeRequest -> AttachInfo");
  Def<&StorageBackend::DetachVolume>(storage, "detach_volume", "DetachVolumeRequest -> None");
  Def<&StorageBackend::ExpandVolume>(storage, "expand_volume", "ExpandVolumeRequest -> Volume");
  Def<&StorageBackend::CreateSnapshot>(storage, "create_snapshot",
                                       "CreateSnapshotRequest -> Snapshot");
  Def<&StorageBackend::ListSnapshots>(storage, "list_snapshots",
                                      "ListSnapshotsRequest -> ListSnapshotsResponse");
  Def<&StorageBackend::DeleteSnapshot>(storage, "delete_snapshot", "DeleteSnapshotRequest -> None");
  Def<&StorageBackend::RevertVolume>(storage, "revert_volume", "RevertVolumeRequest -> Volume");
  Def<&StorageBackend::GetChangedBlocks>(storage, "get_changed_blocks",
                                         "GetChangedBlocksRequest -> ChangedBlocks");
  Def<&StorageBackend::ScrubVolume>(storage, "scrub_volume", "ScrubVolumeRequest -> Operation");

  auto network = BindBackend<NetworkBackend>(m, "NetworkBackend", "hci::NetworkBackend.");
  Def<&NetworkBackend::CreateNetwork>(network, "create_network", "CreateNetworkRequest -> Network");
  Def<&NetworkBackend::GetNetwork>(network, "get_network", "GetNetworkRequest -> Network");
  Def<&NetworkBackend::ListNetworks>(network, "list_networks",
                                     "ListNetworksRequest -> ListNetworksResponse");
  Def<&NetworkBackend::DeleteNetwork>(network, "delete_network", "DeleteNetworkRequest -> None");
  Def<&NetworkBackend::CreatePort>(network, "create_port", "CreatePortRequest -> Port");
  Def<&NetworkBackend::GetPort>(network, "get_port", "GetPortRequest -> Port");
  Def<&NetworkBackend::ListPorts>(network, "list_ports", "ListPortsRequest -> ListPortsResponse");
  Def<&NetworkBackend::DeletePort>(network, "delete_port", "DeletePortRequest -> None");

  auto image = BindBackend<ImageBackend>(m, "ImageBackend", "hci::ImageBackend.");
  Def<&ImageBackend::ImportImage>(image, "import_image", "ImportImageRequest -> Operation");
  Def<&ImageBackend::GetImage>(image, "get_image", "GetImageRequest -> Image");
  Def<&ImageBackend::ListImages>(image, "list_images", "ListImagesRequest -> ListImagesResponse");
  Def<&ImageBackend::DeleteImage>(image, "delete_image", "DeleteImageRequest -> None");

  auto backup = BindBackend<BackupBackend>(m, "BackupBackend", "hci::BackupBackend.");
  Def<&BackupBackend::CreateBackupTarget>(backup, "create_backup_target",
                                          "CreateBackupTargetRequest -> BackupTarget");
  Def<&BackupBackend::GetBackupTarget>(backup, "get_backup_target",
                                       "GetBackupTargetRequest -> BackupTarget");
  Def<&BackupBackend::ListBackupTargets>(backup, "list_backup_targets",
                                         "ListBackupTargetsRequest -> ListBackupTargetsResponse");
  Def<&BackupBackend::DeleteBackupTarget>(backup, "delete_backup_target",
                                          "DeleteBackupTargetRequest -> None");
  Def<&BackupBackend::CreateBackup>(backup, "create_backup", "CreateBackupRequest -> Operation");
  Def<&BackupBackend::GetBackup>(backup, "get_backup", "GetBackupRequest -> Backup");
  Def<&BackupBackend::ListBackups>(backup, "list_backups",
                                   "ListBackupsRequest -> ListBackupsResponse");
  Def<&BackupBackend::DeleteBackup>(backup, "delete_backup", "DeleteBackupRequest -> None");
  Def<&BackupBackend::RestoreBackup>(backup, "restore_backup", "RestoreBackupRequest -> Operation");

  // host.compute() etc.: FailedPrecondition when the kind is not configured.
  host.def(
          "compute",
          [](const std::shared_ptr<HostBox>& self) {
            (void)Enter(PyBackend<ComputeBackend>{self});
            return PyBackend<ComputeBackend>{self};
          },
          py::call_guard<py::gil_scoped_release>(), "The compute backend.")
      .def(
          "storage",
          [](const std::shared_ptr<HostBox>& self) {
            (void)Enter(PyBackend<StorageBackend>{self});
            return PyBackend<StorageBackend>{self};
          },
          py::call_guard<py::gil_scoped_release>(), "The storage backend.")
      .def(
          "network",
          [](const std::shared_ptr<HostBox>& self) {
            (void)Enter(PyBackend<NetworkBackend>{self});
            return PyBackend<NetworkBackend>{self};
          },
          py::call_guard<py::gil_scoped_release>(), "The network backend.")
      .def(
          "image",
          [](const std::shared_ptr<HostBox>& self) {
            (void)Enter(PyBackend<ImageBackend>{self});
            return PyBackend<ImageBackend>{self};
          },
          py::call_guard<py::gil_scoped_release>(), "The image backend.")
      .def(
          "backup",
          [](const std::shared_ptr<HostBox>& self) {
            (void)Enter(PyBackend<BackupBackend>{self});
            return PyBackend<BackupBackend>{self};
          },
          py::call_guard<py::gil_scoped_release>(), "The backup backend.");
}

}  // namespace hci::python
