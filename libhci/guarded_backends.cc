#include "guarded_backends_internal.h"

#include <chrono>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "hci/names.h"

namespace hci::internal {
namespace {

using Clock = std::chrono::steady_clock;

enum class Access { kRead, kMutate };

// Validates `name` when non-empty (for optional references).
Status ValidateOptionalName(std::string_view field, std::string_view name) {
  return name.empty() ? Status() : ValidateName(field, name);
}

template <typename R>
Status StatusOfAny(const R& r) {
  if constexpr (std::is_same_v<R, Status>) {
    return r;
  } else {
    return r.status();
  }
}

// Shared by the five wrappers: in-flight tracking, exception barrier, logging and metrics.
class CallGuard {
 public:
  CallGuard(BackendKind kind, std::string plugin, Logger logger, CoreMetrics* metrics)
      : kind_(kind), plugin_(std::move(plugin)), logger_(std::move(logger)), metrics_(metrics) {}

  // Runs `validate`, then (for kMutate, while no other mutating call on `object_kind/name` is
  // running) `fn`, returning its result.
  template <typename R, typename Validate, typename Fn>
  R Call(std::string_view op, std::string_view object_kind, std::string_view name, Access access,
         Validate&& validate, Fn&& fn) {
    auto start = Clock::now();
    R result = Run<R>(op, object_kind, name, access, validate, fn);
    Status status = StatusOfAny(result);
    auto elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    metrics_->RecordCall(BackendKindName(kind_), plugin_, op, status.code(), elapsed);
    auto ms = static_cast<long long>(elapsed * 1000);
    if (status.ok()) {
      logger_.Log(access == Access::kMutate ? LogLevel::kInfo : LogLevel::kDebug, object_kind,
                  name, std::string(op) + ": ok (" + std::to_string(ms) + " ms)");
    } else {
      logger_.Log(access == Access::kMutate ? LogLevel::kWarn : LogLevel::kDebug, object_kind,
                  name,
                  std::string(op) + ": " + status.ToString() + " (" + std::to_string(ms) + " ms)");
    }
    return result;
  }

 private:
  template <typename R, typename Validate, typename Fn>
  R Run(std::string_view op, std::string_view object_kind, std::string_view name, Access access,
        Validate& validate, Fn& fn) {
    Status valid = validate();
    if (!valid.ok()) return valid;
    std::string key;
    if (access == Access::kMutate && !name.empty()) {
      key = std::string(object_kind) + "/" + std::string(name);
      std::lock_guard lock(mu_);
      auto it = in_flight_.find(key);
      if (it != in_flight_.end()) {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() -
                                                                        it->second.since)
                      .count();
        return Aborted(std::string(object_kind) + " \"" + std::string(name) + "\": " +
                       it->second.op + " has been in progress for " + std::to_string(ms) +
                       " ms; retry " + std::string(op) + " when it finishes");
      }
      in_flight_.emplace(key, InFlight{std::string(op), Clock::now()});
    }
    R result = Barrier<R>(op, fn);
    if (!key.empty()) {
      std::lock_guard lock(mu_);
      in_flight_.erase(key);
    }
    return result;
  }

  // No exception crosses the plugin boundary into the embedder.
  template <typename R, typename Fn>
  R Barrier(std::string_view op, Fn& fn) {
    try {
      return fn();
    } catch (const std::exception& e) {
      return Internal("plugin \"" + plugin_ + "\" threw from " + std::string(op) + ": " +
                      e.what());
    } catch (...) {
      return Internal("plugin \"" + plugin_ + "\" threw a non-standard exception from " +
                      std::string(op));
    }
  }

  struct InFlight {
    std::string op;
    Clock::time_point since;
  };

  BackendKind kind_;
  std::string plugin_;
  Logger logger_;
  CoreMetrics* metrics_;
  std::mutex mu_;
  std::map<std::string, InFlight, std::less<>> in_flight_;
};

Status NoCheck() { return Status(); }

// ---------------------------------------------------------------------------------------------
// Compute

Status ValidateVmSpec(const v1::VirtualMachineSpec& spec) {
  for (int i = 0; i < spec.disks_size(); ++i) {
    const auto& d = spec.disks(i);
    auto prefix = "spec.disks[" + std::to_string(i) + "]";
    HCI_RETURN_NOT_OK(ValidateName(prefix + ".name", d.name()));
    HCI_RETURN_NOT_OK(ValidateName(prefix + ".volume", d.volume()));
  }
  for (int i = 0; i < spec.nics_size(); ++i) {
    const auto& n = spec.nics(i);
    auto prefix = "spec.nics[" + std::to_string(i) + "]";
    HCI_RETURN_NOT_OK(ValidateName(prefix + ".name", n.name()));
    HCI_RETURN_NOT_OK(ValidateOptionalName(prefix + ".network", n.network()));
  }
  return Status();
}

class GuardedCompute final : public ComputeBackend {
 public:
  GuardedCompute(std::unique_ptr<ComputeBackend> inner, std::string plugin, Logger logger,
                CoreMetrics* metrics)
      : inner_(std::move(inner)),
        g_(BackendKind::kCompute, std::move(plugin), std::move(logger), metrics) {}

  FaultInjector* fault_injector() override { return inner_->fault_injector(); }
  Result<std::string> Metrics() override {
    return g_.Call<Result<std::string>>("Metrics", "", "", Access::kRead, NoCheck,
                                        [&] { return inner_->Metrics(); });
  }
  v1::ComputeCapabilities Capabilities() const override { return inner_->Capabilities(); }

  Result<v1::VirtualMachine> CreateVm(const v1::CreateVmRequest& r) override {
    return g_.Call<Result<v1::VirtualMachine>>(
        "CreateVm", "vm", r.metadata().name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("metadata.name", r.metadata().name()));
          return ValidateVmSpec(r.spec());
        },
        [&] { return inner_->CreateVm(r); });
  }
  Result<v1::VirtualMachine> GetVm(const v1::GetVmRequest& r) override {
    return g_.Call<Result<v1::VirtualMachine>>(
        "GetVm", "vm", r.name(), Access::kRead, [&] { return ValidateName("name", r.name()); },
        [&] { return inner_->GetVm(r); });
  }
  Result<v1::ListVmsResponse> ListVms(const v1::ListVmsRequest& r) override {
    return g_.Call<Result<v1::ListVmsResponse>>("ListVms", "vm", "", Access::kRead, NoCheck,
                                                [&] { return inner_->ListVms(r); });
  }
  Status DeleteVm(const v1::DeleteVmRequest& r) override {
    return Mutate<Status>("DeleteVm", r, [&] { return inner_->DeleteVm(r); });
  }
  Result<v1::VirtualMachine> StartVm(const v1::StartVmRequest& r) override {
    return Mutate<Result<v1::VirtualMachine>>("StartVm", r, [&] { return inner_->StartVm(r); });
  }
  Result<v1::VirtualMachine> StopVm(const v1::StopVmRequest& r) override {
    return Mutate<Result<v1::VirtualMachine>>("StopVm", r, [&] { return inner_->StopVm(r); });
  }
  Result<v1::VirtualMachine> RestartVm(const v1::RestartVmRequest& r) override {
    return Mutate<Result<v1::VirtualMachine>>("RestartVm", r,
                                              [&] { return inner_->RestartVm(r); });
  }
  Result<v1::VirtualMachine> PauseVm(const v1::PauseVmRequest& r) override {
    return Mutate<Result<v1::VirtualMachine>>("PauseVm", r, [&] { return inner_->PauseVm(r); });
  }
  Result<v1::VirtualMachine> ResumeVm(const v1::ResumeVmRequest& r) override {
    return Mutate<Result<v1::VirtualMachine>>("ResumeVm", r,
                                              [&] { return inner_->ResumeVm(r); });
  }
  Result<Operation> MigrateVm(const v1::MigrateVmRequest& r) override {
    return g_.Call<Result<Operation>>(
        "MigrateVm", "vm", r.name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("name", r.name()));
          return ValidateOptionalName("target_node", r.target_node());
        },
        [&] { return inner_->MigrateVm(r); });
  }
  Result<v1::ConsoleOutput> ReadConsole(const v1::ReadConsoleRequest& r) override {
    return Read<Result<v1::ConsoleOutput>>("ReadConsole", r,
                                           [&] { return inner_->ReadConsole(r); });
  }
  Result<std::unique_ptr<ConsoleStream>> AttachConsole(
      const v1::AttachConsoleRequest& r) override {
    return Read<Result<std::unique_ptr<ConsoleStream>>>(
        "AttachConsole", r, [&] { return inner_->AttachConsole(r); });
  }
  Result<v1::VmMetricsResponse> VmMetrics(const v1::VmMetricsRequest& r) override {
    return Read<Result<v1::VmMetricsResponse>>("VmMetrics", r,
                                               [&] { return inner_->VmMetrics(r); });
  }
  Status ResizeDisk(const v1::ResizeDiskRequest& r) override {
    return g_.Call<Status>(
        "ResizeDisk", "vm", r.vm(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("vm", r.vm()));
          HCI_RETURN_NOT_OK(ValidateName("volume", r.volume()));
          if (r.size_bytes() == 0 || r.size_bytes() % 4096 != 0) {
            return InvalidArgument("size_bytes: " + std::to_string(r.size_bytes()) +
                                   " is not a positive multiple of 4096");
          }
          return Status();
        },
        [&] { return inner_->ResizeDisk(r); });
  }

 private:
  template <typename R, typename Req, typename Fn>
  R Mutate(std::string_view op, const Req& r, Fn&& fn) {
    return g_.Call<R>(op, "vm", r.name(), Access::kMutate,
                      [&] { return ValidateName("name", r.name()); }, fn);
  }
  template <typename R, typename Req, typename Fn>
  R Read(std::string_view op, const Req& r, Fn&& fn) {
    return g_.Call<R>(op, "vm", r.name(), Access::kRead,
                      [&] { return ValidateName("name", r.name()); }, fn);
  }

  std::unique_ptr<ComputeBackend> inner_;
  CallGuard g_;
};

// ---------------------------------------------------------------------------------------------
// Storage

Status ValidateVolumeSource(const v1::VolumeSource& s) {
  switch (s.source_case()) {
    case v1::VolumeSource::kImage:
      return ValidateName("spec.source.image", s.image());
    case v1::VolumeSource::kSnapshot:
      HCI_RETURN_NOT_OK(ValidateName("spec.source.snapshot.volume", s.snapshot().volume()));
      return ValidateName("spec.source.snapshot.snapshot", s.snapshot().snapshot());
    case v1::VolumeSource::kVolume:
      return ValidateName("spec.source.volume", s.volume());
    case v1::VolumeSource::SOURCE_NOT_SET:
      return Status();
  }
  return Status();
}

class GuardedStorage final : public StorageBackend {
 public:
  GuardedStorage(std::unique_ptr<StorageBackend> inner, std::string plugin, Logger logger,
                CoreMetrics* metrics)
      : inner_(std::move(inner)),
        g_(BackendKind::kStorage, std::move(plugin), std::move(logger), metrics) {}

  FaultInjector* fault_injector() override { return inner_->fault_injector(); }
  Result<std::string> Metrics() override {
    return g_.Call<Result<std::string>>("Metrics", "", "", Access::kRead, NoCheck,
                                        [&] { return inner_->Metrics(); });
  }
  v1::StorageCapabilities Capabilities() const override { return inner_->Capabilities(); }

  Result<v1::Volume> CreateVolume(const v1::CreateVolumeRequest& r) override {
    return g_.Call<Result<v1::Volume>>(
        "CreateVolume", "volume", r.metadata().name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("metadata.name", r.metadata().name()));
          return ValidateVolumeSource(r.spec().source());
        },
        [&] { return inner_->CreateVolume(r); });
  }
  Result<v1::Volume> GetVolume(const v1::GetVolumeRequest& r) override {
    return g_.Call<Result<v1::Volume>>(
        "GetVolume", "volume", r.name(), Access::kRead,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->GetVolume(r); });
  }
  Result<v1::ListVolumesResponse> ListVolumes(const v1::ListVolumesRequest& r) override {
    return g_.Call<Result<v1::ListVolumesResponse>>("ListVolumes", "volume", "", Access::kRead,
                                                    NoCheck,
                                                    [&] { return inner_->ListVolumes(r); });
  }
  Status DeleteVolume(const v1::DeleteVolumeRequest& r) override {
    return g_.Call<Status>(
        "DeleteVolume", "volume", r.name(), Access::kMutate,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->DeleteVolume(r); });
  }
  Result<v1::AttachInfo> AttachVolume(const v1::AttachVolumeRequest& r) override {
    return g_.Call<Result<v1::AttachInfo>>(
        "AttachVolume", "volume", r.name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("name", r.name()));
          return ValidateName("attacher", r.attacher());
        },
        [&] { return inner_->AttachVolume(r); });
  }
  Status DetachVolume(const v1::DetachVolumeRequest& r) override {
    return g_.Call<Status>(
        "DetachVolume", "volume", r.name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("name", r.name()));
          return ValidateName("attacher", r.attacher());
        },
        [&] { return inner_->DetachVolume(r); });
  }
  Result<v1::Volume> ExpandVolume(const v1::ExpandVolumeRequest& r) override {
    return g_.Call<Result<v1::Volume>>(
        "ExpandVolume", "volume", r.name(), Access::kMutate,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->ExpandVolume(r); });
  }
  // Snapshot calls lock the volume: a snapshot and a write-path change must not interleave.
  Result<v1::Snapshot> CreateSnapshot(const v1::CreateSnapshotRequest& r) override {
    return g_.Call<Result<v1::Snapshot>>(
        "CreateSnapshot", "volume", r.volume(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("volume", r.volume()));
          return ValidateName("metadata.name", r.metadata().name());
        },
        [&] { return inner_->CreateSnapshot(r); });
  }
  Result<v1::ListSnapshotsResponse> ListSnapshots(const v1::ListSnapshotsRequest& r) override {
    return g_.Call<Result<v1::ListSnapshotsResponse>>(
        "ListSnapshots", "volume", r.volume(), Access::kRead,
        [&] { return ValidateName("volume", r.volume()); },
        [&] { return inner_->ListSnapshots(r); });
  }
  Status DeleteSnapshot(const v1::DeleteSnapshotRequest& r) override {
    return g_.Call<Status>(
        "DeleteSnapshot", "volume", r.volume(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("volume", r.volume()));
          return ValidateName("name", r.name());
        },
        [&] { return inner_->DeleteSnapshot(r); });
  }
  Result<v1::Volume> RevertVolume(const v1::RevertVolumeRequest& r) override {
    return g_.Call<Result<v1::Volume>>(
        "RevertVolume", "volume", r.volume(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("volume", r.volume()));
          return ValidateName("snapshot", r.snapshot());
        },
        [&] { return inner_->RevertVolume(r); });
  }
  Result<v1::ChangedBlocks> GetChangedBlocks(const v1::GetChangedBlocksRequest& r) override {
    return g_.Call<Result<v1::ChangedBlocks>>(
        "GetChangedBlocks", "volume", r.volume(), Access::kRead,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("volume", r.volume()));
          HCI_RETURN_NOT_OK(ValidateOptionalName("from_snapshot", r.from_snapshot()));
          return ValidateOptionalName("to_snapshot", r.to_snapshot());
        },
        [&] { return inner_->GetChangedBlocks(r); });
  }
  Result<Operation> ScrubVolume(const v1::ScrubVolumeRequest& r) override {
    return g_.Call<Result<Operation>>(
        "ScrubVolume", "volume", r.name(), Access::kMutate,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->ScrubVolume(r); });
  }

 private:
  std::unique_ptr<StorageBackend> inner_;
  CallGuard g_;
};

// ---------------------------------------------------------------------------------------------
// Network

class GuardedNetwork final : public NetworkBackend {
 public:
  GuardedNetwork(std::unique_ptr<NetworkBackend> inner, std::string plugin, Logger logger,
                CoreMetrics* metrics)
      : inner_(std::move(inner)),
        g_(BackendKind::kNetwork, std::move(plugin), std::move(logger), metrics) {}

  FaultInjector* fault_injector() override { return inner_->fault_injector(); }
  Result<std::string> Metrics() override {
    return g_.Call<Result<std::string>>("Metrics", "", "", Access::kRead, NoCheck,
                                        [&] { return inner_->Metrics(); });
  }
  v1::NetworkCapabilities Capabilities() const override { return inner_->Capabilities(); }

  Result<v1::Network> CreateNetwork(const v1::CreateNetworkRequest& r) override {
    return g_.Call<Result<v1::Network>>(
        "CreateNetwork", "network", r.metadata().name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("metadata.name", r.metadata().name()));
          return ValidateOptionalName("spec.cluster_network", r.spec().cluster_network());
        },
        [&] { return inner_->CreateNetwork(r); });
  }
  Result<v1::Network> GetNetwork(const v1::GetNetworkRequest& r) override {
    return g_.Call<Result<v1::Network>>(
        "GetNetwork", "network", r.name(), Access::kRead,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->GetNetwork(r); });
  }
  Result<v1::ListNetworksResponse> ListNetworks(const v1::ListNetworksRequest& r) override {
    return g_.Call<Result<v1::ListNetworksResponse>>("ListNetworks", "network", "",
                                                     Access::kRead, NoCheck,
                                                     [&] { return inner_->ListNetworks(r); });
  }
  Status DeleteNetwork(const v1::DeleteNetworkRequest& r) override {
    return g_.Call<Status>(
        "DeleteNetwork", "network", r.name(), Access::kMutate,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->DeleteNetwork(r); });
  }
  Result<v1::Port> CreatePort(const v1::CreatePortRequest& r) override {
    return g_.Call<Result<v1::Port>>(
        "CreatePort", "port", r.metadata().name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("metadata.name", r.metadata().name()));
          HCI_RETURN_NOT_OK(ValidateName("spec.network", r.spec().network()));
          return ValidateOptionalName("spec.owner", r.spec().owner());
        },
        [&] { return inner_->CreatePort(r); });
  }
  Result<v1::Port> GetPort(const v1::GetPortRequest& r) override {
    return g_.Call<Result<v1::Port>>(
        "GetPort", "port", r.name(), Access::kRead,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->GetPort(r); });
  }
  Result<v1::ListPortsResponse> ListPorts(const v1::ListPortsRequest& r) override {
    return g_.Call<Result<v1::ListPortsResponse>>(
        "ListPorts", "port", "", Access::kRead,
        [&] { return ValidateOptionalName("network", r.network()); },
        [&] { return inner_->ListPorts(r); });
  }
  Status DeletePort(const v1::DeletePortRequest& r) override {
    return g_.Call<Status>(
        "DeletePort", "port", r.name(), Access::kMutate,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->DeletePort(r); });
  }

 private:
  std::unique_ptr<NetworkBackend> inner_;
  CallGuard g_;
};

// ---------------------------------------------------------------------------------------------
// Image

class GuardedImage final : public ImageBackend {
 public:
  GuardedImage(std::unique_ptr<ImageBackend> inner, std::string plugin, Logger logger,
              CoreMetrics* metrics)
      : inner_(std::move(inner)),
        g_(BackendKind::kImage, std::move(plugin), std::move(logger), metrics) {}

  FaultInjector* fault_injector() override { return inner_->fault_injector(); }
  Result<std::string> Metrics() override {
    return g_.Call<Result<std::string>>("Metrics", "", "", Access::kRead, NoCheck,
                                        [&] { return inner_->Metrics(); });
  }
  v1::ImageCapabilities Capabilities() const override { return inner_->Capabilities(); }

  Result<Operation> ImportImage(const v1::ImportImageRequest& r) override {
    return g_.Call<Result<Operation>>(
        "ImportImage", "image", r.metadata().name(), Access::kMutate,
        [&] { return ValidateName("metadata.name", r.metadata().name()); },
        [&] { return inner_->ImportImage(r); });
  }
  Result<v1::Image> GetImage(const v1::GetImageRequest& r) override {
    return g_.Call<Result<v1::Image>>(
        "GetImage", "image", r.name(), Access::kRead,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->GetImage(r); });
  }
  Result<v1::ListImagesResponse> ListImages(const v1::ListImagesRequest& r) override {
    return g_.Call<Result<v1::ListImagesResponse>>("ListImages", "image", "", Access::kRead,
                                                   NoCheck,
                                                   [&] { return inner_->ListImages(r); });
  }
  Status DeleteImage(const v1::DeleteImageRequest& r) override {
    return g_.Call<Status>(
        "DeleteImage", "image", r.name(), Access::kMutate,
        [&] { return ValidateName("name", r.name()); }, [&] { return inner_->DeleteImage(r); });
  }

 private:
  std::unique_ptr<ImageBackend> inner_;
  CallGuard g_;
};

// ---------------------------------------------------------------------------------------------
// Backup

class GuardedBackup final : public BackupBackend {
 public:
  GuardedBackup(std::unique_ptr<BackupBackend> inner, std::string plugin, Logger logger,
               CoreMetrics* metrics)
      : inner_(std::move(inner)),
        g_(BackendKind::kBackup, std::move(plugin), std::move(logger), metrics) {}

  FaultInjector* fault_injector() override { return inner_->fault_injector(); }
  Result<std::string> Metrics() override {
    return g_.Call<Result<std::string>>("Metrics", "", "", Access::kRead, NoCheck,
                                        [&] { return inner_->Metrics(); });
  }
  v1::BackupCapabilities Capabilities() const override { return inner_->Capabilities(); }

  Result<v1::BackupTarget> CreateBackupTarget(const v1::CreateBackupTargetRequest& r) override {
    return g_.Call<Result<v1::BackupTarget>>(
        "CreateBackupTarget", "backup-target", r.metadata().name(), Access::kMutate,
        [&] { return ValidateName("metadata.name", r.metadata().name()); },
        [&] { return inner_->CreateBackupTarget(r); });
  }
  Result<v1::BackupTarget> GetBackupTarget(const v1::GetBackupTargetRequest& r) override {
    return g_.Call<Result<v1::BackupTarget>>(
        "GetBackupTarget", "backup-target", r.name(), Access::kRead,
        [&] { return ValidateName("name", r.name()); },
        [&] { return inner_->GetBackupTarget(r); });
  }
  Result<v1::ListBackupTargetsResponse> ListBackupTargets(
      const v1::ListBackupTargetsRequest& r) override {
    return g_.Call<Result<v1::ListBackupTargetsResponse>>(
        "ListBackupTargets", "backup-target", "", Access::kRead, NoCheck,
        [&] { return inner_->ListBackupTargets(r); });
  }
  Status DeleteBackupTarget(const v1::DeleteBackupTargetRequest& r) override {
    return g_.Call<Status>(
        "DeleteBackupTarget", "backup-target", r.name(), Access::kMutate,
        [&] { return ValidateName("name", r.name()); },
        [&] { return inner_->DeleteBackupTarget(r); });
  }
  Result<Operation> CreateBackup(const v1::CreateBackupRequest& r) override {
    return g_.Call<Result<Operation>>(
        "CreateBackup", "backup", r.metadata().name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("metadata.name", r.metadata().name()));
          HCI_RETURN_NOT_OK(ValidateName("spec.target", r.spec().target()));
          HCI_RETURN_NOT_OK(ValidateName("spec.volume", r.spec().volume()));
          return ValidateOptionalName("spec.snapshot", r.spec().snapshot());
        },
        [&] { return inner_->CreateBackup(r); });
  }
  Result<v1::Backup> GetBackup(const v1::GetBackupRequest& r) override {
    return g_.Call<Result<v1::Backup>>(
        "GetBackup", "backup", r.name(), Access::kRead,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("target", r.target()));
          return ValidateName("name", r.name());
        },
        [&] { return inner_->GetBackup(r); });
  }
  Result<v1::ListBackupsResponse> ListBackups(const v1::ListBackupsRequest& r) override {
    return g_.Call<Result<v1::ListBackupsResponse>>(
        "ListBackups", "backup", "", Access::kRead,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("target", r.target()));
          return ValidateOptionalName("volume", r.volume());
        },
        [&] { return inner_->ListBackups(r); });
  }
  Status DeleteBackup(const v1::DeleteBackupRequest& r) override {
    return g_.Call<Status>(
        "DeleteBackup", "backup", r.name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("target", r.target()));
          return ValidateName("name", r.name());
        },
        [&] { return inner_->DeleteBackup(r); });
  }
  Result<Operation> RestoreBackup(const v1::RestoreBackupRequest& r) override {
    return g_.Call<Result<Operation>>(
        "RestoreBackup", "volume", r.volume().name(), Access::kMutate,
        [&] {
          HCI_RETURN_NOT_OK(ValidateName("target", r.target()));
          HCI_RETURN_NOT_OK(ValidateName("backup", r.backup()));
          return ValidateName("volume.name", r.volume().name());
        },
        [&] { return inner_->RestoreBackup(r); });
  }

 private:
  std::unique_ptr<BackupBackend> inner_;
  CallGuard g_;
};

}  // namespace

std::unique_ptr<ComputeBackend> GuardCompute(std::unique_ptr<ComputeBackend> inner,
                                             std::string plugin, Logger logger,
                                             CoreMetrics* metrics) {
  return std::make_unique<GuardedCompute>(std::move(inner), std::move(plugin), std::move(logger),
                                             metrics);
}
std::unique_ptr<StorageBackend> GuardStorage(std::unique_ptr<StorageBackend> inner,
                                             std::string plugin, Logger logger,
                                             CoreMetrics* metrics) {
  return std::make_unique<GuardedStorage>(std::move(inner), std::move(plugin), std::move(logger),
                                             metrics);
}
std::unique_ptr<NetworkBackend> GuardNetwork(std::unique_ptr<NetworkBackend> inner,
                                             std::string plugin, Logger logger,
                                             CoreMetrics* metrics) {
  return std::make_unique<GuardedNetwork>(std::move(inner), std::move(plugin), std::move(logger),
                                             metrics);
}
std::unique_ptr<ImageBackend> GuardImage(std::unique_ptr<ImageBackend> inner, std::string plugin,
                                         Logger logger, CoreMetrics* metrics) {
  return std::make_unique<GuardedImage>(std::move(inner), std::move(plugin), std::move(logger),
                                           metrics);
}
std::unique_ptr<BackupBackend> GuardBackup(std::unique_ptr<BackupBackend> inner,
                                           std::string plugin, Logger logger,
                                           CoreMetrics* metrics) {
  return std::make_unique<GuardedBackup>(std::move(inner), std::move(plugin), std::move(logger),
                                            metrics);
}

}  // namespace hci::internal
