// The example BackupBackend: backup targets and full backups, recorded in memory. Backups belong
// to the target's URL, not to the target object, so forgetting a target and registering the same
// URL again finds its backups, as it would on a real NFS export. Incremental backups and restore
// are optional and not claimed; delete is implemented and claimed. Where a real plugin attaches
// the volume and copies its blocks to the target (on a worker thread, as image.cc does), this one
// records the volume's size and finishes at once.
#include "hci/backup.h"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "example_internal.h"
#include "hci/object_meta.h"
#include "hci/operation.h"
#include "hci/options.h"
#include "hci/storage.h"

namespace example {
namespace {

namespace v1 = hci::v1;
using hci::Result;
using hci::Status;

constexpr char kBackupKind[] = "Backup";

struct Record {
  v1::Backup backup;
  hci::Operation operation;
};

class ExampleBackup final : public hci::BackupBackend {
 public:
  explicit ExampleBackup(hci::PluginContext& context) : context_(context) {}

  v1::BackupCapabilities Capabilities() const override {
    v1::BackupCapabilities caps;
    caps.set_delete_(true);
    return caps;
  }

  Result<v1::BackupTarget> CreateBackupTarget(
      const v1::CreateBackupTargetRequest& request) override {
    const std::string& name = request.metadata().name();
    const std::string& url = request.spec().url();
    // A real plugin connects here and answers Unavailable when the target cannot be reached.
    if (url.find("://") == std::string::npos || url.starts_with("://") || url.ends_with("://")) {
      return hci::InvalidArgument("spec.url: " + Quote(url) +
                                  " is not a URL like nfs://host/export/path");
    }
    std::lock_guard lock(mu_);
    if (auto it = targets_.find(name); it != targets_.end()) {
      if (!hci::DescribeSpecDifference(it->second.spec(), request.spec()).empty()) {
        return SpecConflict("backup target", name, it->second.spec(), request.spec());
      }
      return it->second;
    }
    v1::BackupTarget target;
    *target.mutable_metadata() = hci::NewObjectMeta(request.metadata());
    *target.mutable_spec() = request.spec();
    target.mutable_status()->set_phase(v1::BACKUP_TARGET_PHASE_AVAILABLE);
    return targets_.emplace(name, std::move(target)).first->second;
  }

  Result<v1::BackupTarget> GetBackupTarget(const v1::GetBackupTargetRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = targets_.find(request.name());
    if (it == targets_.end()) return Missing("backup target", request.name());
    return it->second;
  }

  Result<v1::ListBackupTargetsResponse> ListBackupTargets(
      const v1::ListBackupTargetsRequest&) override {
    v1::ListBackupTargetsResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, target] : targets_) *out.add_targets() = target;
    return out;
  }

  Status DeleteBackupTarget(const v1::DeleteBackupTargetRequest& request) override {
    std::lock_guard lock(mu_);
    targets_.erase(request.name());  // Its backups stay on the target (stores_).
    return Status::OK();
  }

  Result<hci::Operation> CreateBackup(const v1::CreateBackupRequest& request) override {
    const std::string& name = request.metadata().name();
    const v1::BackupSpec& spec = request.spec();
    if (!spec.snapshot().empty()) return NotClaimed("spec.snapshot", "backing up a snapshot");
    {
      std::lock_guard lock(mu_);
      HCI_ASSIGN_OR_RAISE(Store * store, FindStore(spec.target(), "spec.target"));
      if (auto it = store->find(name); it != store->end()) return Existing(it->second, request);
    }
    // Asked without mu_ held: another backend must never wait for this one's lock.
    hci::StorageBackend* storage = context_.storage();
    if (storage == nullptr) {
      return hci::FailedPrecondition("spec.volume: no storage backend is configured on this host");
    }
    v1::GetVolumeRequest get;
    get.set_name(spec.volume());
    Result<v1::Volume> volume = storage->GetVolume(get);
    if (!volume.ok()) return volume.status().WithContext("spec.volume");

    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Store * store, FindStore(spec.target(), "spec.target"));
    if (auto it = store->find(name); it != store->end()) return Existing(it->second, request);
    hci::OperationInfo info;
    info.kind = "CreateBackup";
    info.object.set_kind(kBackupKind);
    info.object.set_name(name);
    info.object.set_parent(spec.target());
    info.cancellable = false;  // It finishes before the caller could cancel it.
    hci::OperationControl control = context_.operations().Start(info);
    std::uint64_t size = volume->spec().size_bytes();
    Record& record = (*store)[name];
    *record.backup.mutable_metadata() = hci::NewObjectMeta(request.metadata());
    *record.backup.mutable_spec() = spec;
    v1::BackupStatus& status = *record.backup.mutable_status();
    status.set_phase(v1::BACKUP_PHASE_COMPLETED);
    status.set_volume_size_bytes(size);
    status.mutable_progress()->set_done(size);
    status.mutable_progress()->set_total(size);
    record.operation = control.handle();
    control.SetProgress(size, size);
    control.Finish(Status::OK());
    PublishEvent(context_, kBackupKind, name, "BackupCompleted",
                 "volume " + Quote(spec.volume()) + ", " + std::to_string(size) + " bytes");
    return record.operation;
  }

  Result<v1::Backup> GetBackup(const v1::GetBackupRequest& request) override {
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Store * store, FindStore(request.target(), "target"));
    auto it = store->find(request.name());
    if (it == store->end()) return Missing("backup", request.name());
    return it->second.backup;
  }

  Result<v1::ListBackupsResponse> ListBackups(const v1::ListBackupsRequest& request) override {
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Store * store, FindStore(request.target(), "target"));
    v1::ListBackupsResponse out;
    for (const auto& [name, record] : *store) {
      if (request.volume().empty() || record.backup.spec().volume() == request.volume()) {
        *out.add_backups() = record.backup;
      }
    }
    return out;
  }

  Status DeleteBackup(const v1::DeleteBackupRequest& request) override {
    std::lock_guard lock(mu_);
    auto target = targets_.find(request.target());
    if (target == targets_.end()) return Status::OK();
    stores_[target->second.spec().url()].erase(request.name());
    return Status::OK();
  }

 private:
  using Store = std::map<std::string, Record>;  // By backup name.

  // The backups on the target named `target`; NotFound naming `field` when there is no such
  // target. Callers hold mu_.
  Result<Store*> FindStore(const std::string& target, std::string_view field) {
    auto it = targets_.find(target);
    if (it == targets_.end()) return Missing("backup target", target, field);
    return &stores_[it->second.spec().url()];
  }

  Result<hci::Operation> Existing(const Record& record, const v1::CreateBackupRequest& request) {
    if (!hci::DescribeSpecDifference(record.backup.spec(), request.spec()).empty()) {
      return SpecConflict("backup", request.metadata().name(), record.backup.spec(),
                          request.spec());
    }
    return record.operation;
  }

  hci::PluginContext& context_;
  std::mutex mu_;
  std::map<std::string, v1::BackupTarget> targets_;  // By name.
  std::map<std::string, Store> stores_;              // By target URL.
};

}  // namespace

Result<std::unique_ptr<hci::BackupBackend>> MakeBackup(hci::PluginContext& context) {
  HCI_RETURN_NOT_OK(hci::OptionsReader(context.options(), "options").RejectUnknown());
  return std::unique_ptr<hci::BackupBackend>(std::make_unique<ExampleBackup>(context));
}

}  // namespace example
