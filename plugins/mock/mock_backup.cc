// The mock BackupBackend: backup targets, incremental backups and restores in memory.
//
// Backups live in a store per target URL, not per target: forgetting a target keeps its
// backups, and a target created later with the same URL finds them again (what a new cluster
// pointed at an old NFS export expects).
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mock_internal.h"

namespace hci::mock {
namespace {

constexpr char kBackupKind[] = "Backup";
constexpr char kVolumeKind[] = "Volume";
constexpr auto kCancelWait = std::chrono::seconds(10);

std::string PhaseName(v1::BackupPhase phase) {
  switch (phase) {
    case v1::BACKUP_PHASE_PENDING:
      return "Pending";
    case v1::BACKUP_PHASE_IN_PROGRESS:
      return "InProgress";
    case v1::BACKUP_PHASE_COMPLETED:
      return "Completed";
    case v1::BACKUP_PHASE_FAILED:
      return "Failed";
    case v1::BACKUP_PHASE_DELETING:
      return "Deleting";
    default:
      return "Unspecified";
  }
}

bool IsSchemeChar(char c, bool first) {
  if (c >= 'a' && c <= 'z') return true;
  if (first) return false;
  return (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

Status ValidateTargetSpec(const v1::BackupTargetSpec& spec) {
  const std::string& url = spec.url();
  auto sep = url.find("://");
  bool ok = sep != std::string::npos && sep > 0 && sep + 3 < url.size();
  for (std::size_t i = 0; ok && i < sep; ++i) ok = IsSchemeChar(url[i], i == 0);
  if (!ok) {
    return InvalidArgument("spec.url: \"" + url +
                           "\" is not a URL like nfs://host/export/path or s3://bucket/path");
  }
  return Status();
}

struct BackupRec {
  v1::Backup obj;
  Operation op;
  std::uint64_t attempt = 0;     // identifies the worker allowed to update this record
  std::uint64_t generation = 0;  // volume content generation backed up; 0: unknown
  std::uint64_t completed_seq = 0;
};

// The backups on one target URL, by backup name.
using Store = std::map<std::string, BackupRec>;

struct Restore {
  std::string url;
  std::string backup;
  Operation op;
};

// What the storage backend says about a volume.
struct VolumeFacts {
  std::uint64_t size = 0;
  std::uint64_t actual = 0;
  std::uint64_t generation = 0;
};

class MockBackup final : public BackupBackend {
 public:
  explicit MockBackup(std::shared_ptr<BackendEnv> env) : env_(std::move(env)) {}
  ~MockBackup() override { workers_.Stop(); }

  FaultInjector* fault_injector() override { return env_->faults(); }

  v1::BackupCapabilities Capabilities() const override {
    v1::BackupCapabilities caps;
    caps.set_incremental(true);
    caps.set_restore(true);
    caps.set_delete_(true);
    // The mock stores no bytes, so it names no compression.
    return caps;
  }

  Result<std::string> Metrics() override {
    HCI_RETURN_NOT_OK(env_->Enter("Metrics"));
    std::string out =
        "# HELP hci_mock_backup_stored_bytes Bytes stored on each backup target URL.\n"
        "# TYPE hci_mock_backup_stored_bytes gauge\n";
    std::lock_guard lock(mu_);
    for (const auto& [url, store] : stores_) {
      std::uint64_t bytes = 0;
      for (const auto& [name, rec] : store) bytes += rec.obj.status().stored_bytes();
      out += "hci_mock_backup_stored_bytes{url=\"" + url + "\"} " + std::to_string(bytes) + "\n";
    }
    return out;
  }

  Result<v1::BackupTarget> CreateBackupTarget(
      const v1::CreateBackupTargetRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("CreateBackupTarget"));
    const std::string& name = request.metadata().name();
    std::lock_guard lock(mu_);
    if (auto it = targets_.find(name); it != targets_.end()) {
      if (!DescribeSpecDifference(it->second.spec(), request.spec()).empty()) {
        return SpecConflict("backup target", name, it->second.spec(), request.spec());
      }
      return it->second;
    }
    HCI_RETURN_NOT_OK(ValidateTargetSpec(request.spec()));
    v1::BackupTarget target;
    *target.mutable_metadata() = NewObjectMeta(request.metadata());
    *target.mutable_spec() = request.spec();
    target.mutable_status()->set_phase(v1::BACKUP_TARGET_PHASE_AVAILABLE);
    *target.mutable_status()->mutable_last_sync_time() = Now();
    auto* ready = target.mutable_status()->add_conditions();
    ready->set_type("Available");
    ready->set_status(v1::CONDITION_STATUS_TRUE);
    ready->set_reason("Reachable");
    *ready->mutable_last_transition_time() = Now();
    std::size_t found = stores_[request.spec().url()].size();
    target.mutable_status()->set_message(std::to_string(found) + " backup(s) found");
    env_->Publish(
        env_->MakeEvent(v1::EVENT_TYPE_NORMAL, "BackupTarget", name, "BackupTargetAvailable",
                        request.spec().url() + ": " + std::to_string(found) + " backup(s) found"));
    return targets_.emplace(name, std::move(target)).first->second;
  }

  Result<v1::BackupTarget> GetBackupTarget(const v1::GetBackupTargetRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetBackupTarget"));
    std::lock_guard lock(mu_);
    auto it = targets_.find(request.name());
    if (it == targets_.end()) return Missing("backup target", request.name());
    return it->second;
  }

  Result<v1::ListBackupTargetsResponse> ListBackupTargets(
      const v1::ListBackupTargetsRequest&) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListBackupTargets"));
    v1::ListBackupTargetsResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, target] : targets_) *out.add_targets() = target;
    return out;
  }

  Status DeleteBackupTarget(const v1::DeleteBackupTargetRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeleteBackupTarget"));
    std::lock_guard lock(mu_);
    auto it = targets_.find(request.name());
    if (it == targets_.end()) return Status();
    for (const auto& [name, rec] : stores_[it->second.spec().url()]) {
      if (rec.op.valid() && !rec.op.done()) {
        return FailedPrecondition("backup target " + Quote(request.name()) + ": backup " +
                                  Quote(name) + " is in progress (operation " + rec.op.id() +
                                  "); wait for it or cancel it first");
      }
    }
    targets_.erase(it);
    return Status();
  }

  Result<Operation> CreateBackup(const v1::CreateBackupRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("CreateBackup"));
    const std::string& name = request.metadata().name();
    const v1::BackupSpec& spec = request.spec();
    {
      std::lock_guard lock(mu_);
      HCI_ASSIGN_OR_RAISE(auto url, TargetUrlLocked(spec.target(), "spec.target"));
      auto& store = stores_[url];
      if (auto it = store.find(name); it != store.end()) {
        HCI_RETURN_NOT_OK(SameBackupSpec(name, it->second.obj.spec(), spec));
        if (it->second.obj.status().phase() != v1::BACKUP_PHASE_FAILED) return it->second.op;
      }
    }
    HCI_ASSIGN_OR_RAISE(VolumeFacts facts, InspectVolume(spec));

    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(auto url, TargetUrlLocked(spec.target(), "spec.target"));
    auto& store = stores_[url];
    auto it = store.find(name);
    if (it != store.end()) {
      HCI_RETURN_NOT_OK(SameBackupSpec(name, it->second.obj.spec(), spec));
      if (it->second.obj.status().phase() != v1::BACKUP_PHASE_FAILED) return it->second.op;
    } else {
      BackupRec rec;
      *rec.obj.mutable_metadata() = NewObjectMeta(request.metadata());
      it = store.emplace(name, std::move(rec)).first;
    }
    BackupRec& rec = it->second;
    *rec.obj.mutable_spec() = spec;
    rec.generation = facts.generation;

    // Incremental to the volume's latest completed backup on this target, unless asked not to.
    const BackupRec* base = nullptr;
    if (!spec.full()) {
      for (const auto& [other, candidate] : store) {
        if (other == name || candidate.obj.spec().volume() != spec.volume() ||
            candidate.obj.status().phase() != v1::BACKUP_PHASE_COMPLETED) {
          continue;
        }
        if (base == nullptr || candidate.completed_seq > base->completed_seq) base = &candidate;
      }
    }
    bool unchanged =
        base != nullptr && facts.generation != 0 && base->generation == facts.generation;
    // Progress counts bytes read from the volume: nothing when it has not changed since the
    // base; otherwise the crude changed-block tracking says the whole volume.
    std::uint64_t to_read = unchanged ? 0 : facts.size;
    std::uint64_t to_store = unchanged ? 0 : facts.actual;

    auto* status = rec.obj.mutable_status();
    status->Clear();
    status->set_phase(v1::BACKUP_PHASE_PENDING);
    status->set_volume_size_bytes(facts.size);
    if (base != nullptr) status->set_base_backup(base->obj.metadata().name());
    status->set_snapshot(spec.snapshot());
    *status->mutable_start_time() = Now();
    status->mutable_progress()->set_total(to_read);

    OperationInfo info;
    info.kind = "CreateBackup";
    info.object.set_kind(kBackupKind);
    info.object.set_name(name);
    info.object.set_parent(spec.target());
    info.cancellable = true;
    info.progress_unit = "bytes";
    auto control = std::make_shared<OperationControl>(env_->context().operations().Start(info));
    rec.op = control->handle();
    rec.attempt = ++attempts_;
    Operation handle = rec.op;
    std::uint64_t attempt = rec.attempt;
    std::string target = spec.target();
    if (!workers_.Spawn([this, control, url, target, name, attempt, to_read, to_store] {
          RunBackup(*control, url, target, name, attempt, to_read, to_store);
        })) {
      status->set_phase(v1::BACKUP_PHASE_FAILED);
      control->Finish(Unavailable("the mock backup backend is shutting down"));
    }
    return handle;
  }

  Result<v1::Backup> GetBackup(const v1::GetBackupRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetBackup"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(auto url, TargetUrlLocked(request.target(), "target"));
    auto& store = stores_[url];
    auto it = store.find(request.name());
    if (it == store.end()) return Missing("backup", request.name());
    return AsSeenFrom(it->second.obj, request.target());
  }

  Result<v1::ListBackupsResponse> ListBackups(const v1::ListBackupsRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListBackups"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(auto url, TargetUrlLocked(request.target(), "target"));
    v1::ListBackupsResponse out;
    for (const auto& [name, rec] : stores_[url]) {
      if (request.volume().empty() || rec.obj.spec().volume() == request.volume()) {
        *out.add_backups() = AsSeenFrom(rec.obj, request.target());
      }
    }
    return out;
  }

  Status DeleteBackup(const v1::DeleteBackupRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeleteBackup"));
    Operation running;
    std::string url;
    {
      std::lock_guard lock(mu_);
      auto target = targets_.find(request.target());
      if (target == targets_.end()) return Status();
      url = target->second.spec().url();
      auto& store = stores_[url];
      auto it = store.find(request.name());
      if (it == store.end()) return Status();
      for (const auto& [volume, restore] : restores_) {
        if (restore.url == url && restore.backup == request.name() && !restore.op.done()) {
          return FailedPrecondition("backup " + Quote(request.name()) +
                                    " is being restored into volume " + Quote(volume) +
                                    " (operation " + restore.op.id() + ")");
        }
      }
      if (it->second.op.valid() && !it->second.op.done()) running = it->second.op;
    }
    // A backup still running is stopped first (a failed or running backup can always be
    // deleted).
    if (running.valid()) {
      running.Cancel().IgnoreError();
      Status done =
          running.Wait(std::chrono::duration_cast<std::chrono::milliseconds>(kCancelWait));
      if (done.code() == StatusCode::kDeadlineExceeded) {
        return Aborted("backup " + Quote(request.name()) + ": operation " + running.id() +
                       " did not stop in time; retry");
      }
    }
    std::lock_guard lock(mu_);
    // Each backup is complete on its own (as Longhorn's block maps are): backups that named
    // this one as their base still restore.
    if (stores_[url].erase(request.name()) > 0) {
      env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kBackupKind, request.name(),
                                    "BackupDeleted", "backup deleted", request.target()));
    }
    return Status();
  }

  Result<Operation> RestoreBackup(const v1::RestoreBackupRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("RestoreBackup"));
    StorageBackend* storage = env_->context().storage();
    if (storage == nullptr) {
      return FailedPrecondition(
          "RestoreBackup creates a volume and needs a storage backend "
          "(set backends.storage in the host config)");
    }
    const std::string& volume = request.volume().name();
    std::string url;
    std::uint64_t size = 0;
    {
      std::lock_guard lock(mu_);
      HCI_ASSIGN_OR_RAISE(url, TargetUrlLocked(request.target(), "target"));
      auto& store = stores_[url];
      auto it = store.find(request.backup());
      if (it == store.end()) return Missing("backup", request.backup(), "backup");
      auto phase = it->second.obj.status().phase();
      if (phase != v1::BACKUP_PHASE_COMPLETED) {
        return FailedPrecondition("backup: backup " + Quote(request.backup()) + " is " +
                                  PhaseName(phase) + "; only a Completed backup can be restored");
      }
      size = it->second.obj.status().volume_size_bytes();
      if (auto r = restores_.find(volume);
          r != restores_.end() && r->second.url == url && r->second.backup == request.backup()) {
        auto st = r->second.op.status();
        if (!r->second.op.done() || st.phase() == v1::OPERATION_PHASE_SUCCEEDED) {
          return r->second.op;  // the same restore, repeated
        }
      }
    }
    v1::GetVolumeRequest get;
    get.set_name(volume);
    if (auto existing = storage->GetVolume(get); existing.ok()) {
      return AlreadyExists("volume.name: volume " + Quote(volume) +
                           " already exists; restore into a new volume");
    }

    std::lock_guard lock(mu_);
    if (auto r = restores_.find(volume); r != restores_.end() && !r->second.op.done()) {
      return Aborted("volume.name: a restore into volume " + Quote(volume) +
                     " is already running (operation " + r->second.op.id() + ")");
    }
    OperationInfo info;
    info.kind = "RestoreBackup";
    info.object.set_kind(kVolumeKind);
    info.object.set_name(volume);
    info.cancellable = true;
    info.progress_unit = "bytes";
    auto control = std::make_shared<OperationControl>(env_->context().operations().Start(info));
    Operation handle = control->handle();
    restores_[volume] = Restore{url, request.backup(), handle};
    v1::ObjectMeta meta = request.volume();
    std::string backup = request.backup();
    if (!workers_.Spawn(
            [this, control, meta, backup, size] { RunRestore(*control, meta, backup, size); })) {
      control->Finish(Unavailable("the mock backup backend is shutting down"));
    }
    return handle;
  }

 private:
  Result<std::string> TargetUrlLocked(const std::string& target, std::string_view field) {
    auto it = targets_.find(target);
    if (it == targets_.end()) return Missing("backup target", target, field);
    return it->second.spec().url();
  }

  // The target may differ as long as the backup is the same; it is where the caller looks.
  static Status SameBackupSpec(const std::string& name, const v1::BackupSpec& existing,
                               const v1::BackupSpec& requested) {
    v1::BackupSpec a = existing;
    v1::BackupSpec b = requested;
    a.clear_target();
    b.clear_target();
    if (DescribeSpecDifference(a, b).empty()) return Status();
    return SpecConflict("backup", name, a, b);
  }

  static v1::Backup AsSeenFrom(const v1::Backup& backup, const std::string& target) {
    v1::Backup copy = backup;
    copy.mutable_spec()->set_target(target);
    return copy;
  }

  // Asks the storage backend (when configured) for the volume's size and content generation.
  Result<VolumeFacts> InspectVolume(const v1::BackupSpec& spec) {
    VolumeFacts facts;
    StorageBackend* storage = env_->context().storage();
    if (storage == nullptr) return facts;
    v1::GetVolumeRequest get;
    get.set_name(spec.volume());
    auto volume = storage->GetVolume(get);
    if (!volume.ok()) return volume.status().WithContext("spec.volume");
    facts.size = volume->spec().size_bytes();
    facts.actual = volume->status().actual_size_bytes();
    if (volume->status().replicas_size() > 0) {
      facts.generation = volume->status().replicas(0).generation();
    }
    if (!spec.snapshot().empty()) {
      v1::ListSnapshotsRequest list;
      list.set_volume(spec.volume());
      HCI_ASSIGN_OR_RAISE(auto snapshots, storage->ListSnapshots(list));
      bool found = false;
      for (const auto& s : snapshots.snapshots())
        found = found || s.metadata().name() == spec.snapshot();
      if (!found) {
        return NotFound("spec.snapshot: snapshot " + Quote(spec.snapshot()) + " of volume " +
                        Quote(spec.volume()) + " does not exist");
      }
      // A snapshot's content differs from the head's; the crude tracking cannot tell how.
      facts.generation = 0;
    }
    return facts;
  }

  template <typename Fn>
  bool UpdateLocked(const std::string& url, const std::string& name, std::uint64_t attempt,
                    Fn&& fn) {
    auto& store = stores_[url];
    auto it = store.find(name);
    if (it == store.end() || it->second.attempt != attempt) return false;
    fn(it->second);
    return true;
  }

  void RunBackup(OperationControl& control, const std::string& url, const std::string& target,
                 const std::string& name, std::uint64_t attempt, std::uint64_t to_read,
                 std::uint64_t to_store) {
    control.OnCancel([this] { workers_.Wake(); });
    auto cancelled = [&] { return control.cancel_requested(); };
    {
      std::lock_guard lock(mu_);
      UpdateLocked(url, name, attempt, [](BackupRec& rec) {
        rec.obj.mutable_status()->set_phase(v1::BACKUP_PHASE_IN_PROGRESS);
      });
    }
    control.SetProgress(0, to_read, "reading the volume");
    int step = 0;
    for (; step < kOperationSteps; ++step) {
      if (!workers_.SleepFor(env_->step(), cancelled)) break;
      std::uint64_t done = to_read * (step + 1) / kOperationSteps;
      {
        std::lock_guard lock(mu_);
        UpdateLocked(url, name, attempt, [&](BackupRec& rec) {
          rec.obj.mutable_status()->mutable_progress()->set_done(done);
        });
      }
      control.SetProgress(done, to_read, "reading the volume");
      auto event = env_->MakeEvent(
          v1::EVENT_TYPE_NORMAL, kBackupKind, name, "BackupProgress",
          std::to_string(done) + " of " + std::to_string(to_read) + " bytes read", target);
      event.set_operation_id(control.handle().id());
      event.mutable_progress()->set_done(done);
      event.mutable_progress()->set_total(to_read);
      env_->Publish(std::move(event));
    }
    Status result;
    if (step < kOperationSteps) {
      result = cancelled() ? Cancelled("backup " + Quote(name) + " cancelled")
                           : Unavailable("the mock backup backend shut down during the backup");
    }
    {
      std::lock_guard lock(mu_);
      bool current = UpdateLocked(url, name, attempt, [&](BackupRec& rec) {
        auto* status = rec.obj.mutable_status();
        *status->mutable_completion_time() = Now();
        if (result.ok()) {
          status->set_phase(v1::BACKUP_PHASE_COMPLETED);
          status->set_stored_bytes(to_store);
          rec.completed_seq = ++completions_;
        } else {
          status->set_phase(v1::BACKUP_PHASE_FAILED);
          status->set_message(result.message());
        }
      });
      if (current) {
        auto event = result.ok() ? env_->MakeEvent(
                                       v1::EVENT_TYPE_NORMAL, kBackupKind, name, "BackupCompleted",
                                       std::to_string(to_store) + " bytes stored", target)
                                 : env_->MakeEvent(v1::EVENT_TYPE_WARNING, kBackupKind, name,
                                                   "BackupFailed", result.message(), target);
        event.set_operation_id(control.handle().id());
        env_->Publish(std::move(event));
      }
    }
    control.Finish(std::move(result));
  }

  void RunRestore(OperationControl& control, const v1::ObjectMeta& meta, const std::string& backup,
                  std::uint64_t size) {
    control.OnCancel([this] { workers_.Wake(); });
    auto cancelled = [&] { return control.cancel_requested(); };
    control.SetProgress(0, size, "restoring backup " + Quote(backup));
    int step = 0;
    for (; step < kOperationSteps; ++step) {
      if (!workers_.SleepFor(env_->step(), cancelled)) break;
      control.SetProgress(size * (step + 1) / kOperationSteps, size,
                          "restoring backup " + Quote(backup));
    }
    Status result;
    if (step < kOperationSteps) {
      result = cancelled() ? Cancelled("restore of backup " + Quote(backup) + " cancelled")
                           : Unavailable("the mock backup backend shut down during the restore");
    } else if (StorageBackend* storage = env_->context().storage(); storage == nullptr) {
      result = FailedPrecondition("the storage backend went away during the restore");
    } else {
      v1::CreateVolumeRequest create;
      *create.mutable_metadata() = meta;
      create.mutable_spec()->set_size_bytes(size);
      auto volume = storage->CreateVolume(create);
      if (!volume.ok()) result = volume.status().WithContext("creating the restored volume");
    }
    auto event = result.ok()
                     ? env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, meta.name(),
                                       "BackupRestored", "restored from backup " + Quote(backup))
                     : env_->MakeEvent(v1::EVENT_TYPE_WARNING, kVolumeKind, meta.name(),
                                       "RestoreFailed", result.message());
    event.set_operation_id(control.handle().id());
    env_->Publish(std::move(event));
    control.Finish(std::move(result));
  }

  std::shared_ptr<BackendEnv> env_;
  std::mutex mu_;
  std::map<std::string, v1::BackupTarget> targets_;
  std::map<std::string, Store> stores_;      // by target URL
  std::map<std::string, Restore> restores_;  // by volume name
  std::uint64_t attempts_ = 0;
  std::uint64_t completions_ = 0;
  Workers workers_;
};

}  // namespace

Result<std::unique_ptr<BackupBackend>> MakeBackup(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(auto env, BackendEnv::Make(context, BackendKind::kBackup));
  return std::unique_ptr<BackupBackend>(std::make_unique<MockBackup>(std::move(env)));
}

}  // namespace hci::mock
