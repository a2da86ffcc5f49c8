// The local StorageBackend: qcow2 volumes in the plugin's state directory, managed with qemu-img.
//
// Locking: Store::mu guards the records and is held only briefly; each volume's `io` lock is held
// shared while its file is read (a clone) and exclusively while it is changed (resize, snapshot,
// revert, attach, delete), without Store::mu. Order: a volume's io lock, then Store::mu.
#include <algorithm>
#include <boost/scope_exit.hpp>
#include <filesystem>
#include <utility>

#include "hci/names.h"
#include "local_internal.h"

namespace hci::local {
namespace {

constexpr char kVolumeKind[] = "Volume";
constexpr char kSnapshotKind[] = "Snapshot";

Status ValidateSize(std::uint64_t size, std::string_view field) {
  if (size % kBlockBytes != 0) {
    return InvalidArgument(std::string(field) + ": " + std::to_string(size) +
                           " is not a multiple of 4096");
  }
  if (size > kMaxVolumeBytes) {
    return InvalidArgument(std::string(field) + ": " + std::to_string(size) +
                           " is more than the largest volume this backend creates (" +
                           std::to_string(kMaxVolumeBytes) + " bytes, 1 PiB)");
  }
  return Status();
}

Status ValidateSpec(const v1::VolumeSpec& spec) {
  HCI_RETURN_NOT_OK(ValidateSize(spec.size_bytes(), "spec.size_bytes"));
  if (spec.replica_count() > 1) {
    return InvalidArgument("spec.replica_count: " + std::to_string(spec.replica_count()) +
                           " replicas requested, but this backend keeps one copy on this node");
  }
  const auto& source = spec.source();
  switch (source.source_case()) {
    case v1::VolumeSource::kImage:
      HCI_RETURN_NOT_OK(ValidateName("spec.source.image", source.image()));
      break;
    case v1::VolumeSource::kVolume:
      HCI_RETURN_NOT_OK(ValidateName("spec.source.volume", source.volume()));
      break;
    case v1::VolumeSource::kSnapshot:
      HCI_RETURN_NOT_OK(ValidateName("spec.source.snapshot.volume", source.snapshot().volume()));
      HCI_RETURN_NOT_OK(
          ValidateName("spec.source.snapshot.snapshot", source.snapshot().snapshot()));
      break;
    case v1::VolumeSource::SOURCE_NOT_SET:
      if (spec.size_bytes() == 0) {
        return InvalidArgument("spec.size_bytes: must be greater than 0 for a blank volume");
      }
      break;
  }
  if (spec.linked_clone() && source.source_case() != v1::VolumeSource::kImage) {
    return InvalidArgument("spec.linked_clone: only a volume from an image can be a linked clone");
  }
  return Status();
}

Status Attached(const v1::Volume& volume, std::string_view action) {
  return FailedPrecondition("volume " + Quote(volume.metadata().name()) + " is attached to " +
                            Quote(volume.status().attached_to()) + "; detach it before " +
                            std::string(action));
}

Status CheckUsable(const v1::Volume& volume) {
  if (volume.status().phase() == v1::VOLUME_PHASE_FAILED) {
    return FailedPrecondition("volume " + Quote(volume.metadata().name()) +
                              " is Failed: " + volume.status().message());
  }
  return Status();
}

// Where a new volume's content comes from, resolved under Store::mu.
struct Plan {
  v1::VolumeSource::SourceCase kind = v1::VolumeSource::SOURCE_NOT_SET;
  std::string source_path;
  std::string snapshot;       // for a clone of a snapshot
  std::string image;          // for a volume from an image
  bool linked = false;        // ... as a backing file rather than a copy
  std::string source_volume;  // for clones
  std::uint64_t source_size = 0;
  std::uint64_t size = 0;
  std::shared_ptr<std::shared_mutex> source_io;  // the source volume's, for clones
};

class LocalStorage final : public StorageBackend {
 public:
  LocalStorage(PluginContext& context, Options options, std::shared_ptr<Store> store)
      : context_(context), store_(std::move(store)), qemu_img_(std::move(options.qemu_img)) {}

  v1::StorageCapabilities Capabilities() const override {
    v1::StorageCapabilities caps;
    caps.set_snapshots(true);
    caps.set_revert(true);
    caps.set_clone(true);
    caps.set_from_image(true);
    caps.set_expand(true);
    // Growing a volume a VM has open needs QMP block_resize, which is the compute plugin's.
    caps.set_online_expand(false);
    caps.set_replication(false);
    caps.set_max_replicas(1);
    caps.set_changed_blocks(false);
    caps.set_trim(false);
    caps.set_thin_provisioning(true);
    return caps;
  }

  Result<v1::Volume> CreateVolume(const v1::CreateVolumeRequest& request) override {
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateName("metadata.name", name));
    const v1::VolumeSpec& spec = request.spec();
    {
      std::lock_guard lock(store_->mu);
      if (auto it = store_->volumes.find(name); it != store_->volumes.end()) {
        return Existing(it->second, request);
      }
    }
    HCI_RETURN_NOT_OK(ValidateSpec(spec));

    Plan plan;
    {
      std::lock_guard lock(store_->mu);
      if (auto it = store_->volumes.find(name); it != store_->volumes.end()) {
        return Existing(it->second, request);
      }
      if (store_->creating.count(name) > 0) {
        return Aborted("volume " + Quote(name) + " is being created; retry when that finishes");
      }
      HCI_ASSIGN_OR_RAISE(plan, PlanLocked(spec));
      store_->creating.emplace(name, plan.image);
    }
    BOOST_SCOPE_EXIT_ALL(&) {
      std::lock_guard lock(store_->mu);
      store_->creating.erase(name);
    };

    TempFile tmp(store_->TempPath(name, ".qcow2"));
    HCI_RETURN_NOT_OK(Build(plan, tmp.path()));
    HCI_RETURN_NOT_OK(SyncFile(tmp.path()));

    VolumeRecord record;
    *record.obj.mutable_metadata() = NewObjectMeta(request.metadata());
    *record.obj.mutable_spec() = spec;
    record.obj.mutable_spec()->set_size_bytes(plan.size);
    record.requested = spec;
    auto* status = record.obj.mutable_status();
    status->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    status->set_capacity_bytes(plan.size);
    auto* ready = status->add_conditions();
    ready->set_type("Ready");
    ready->set_status(v1::CONDITION_STATUS_TRUE);
    ready->set_reason("Created");
    *ready->mutable_last_transition_time() = Now();

    const std::string path = store_->VolumePath(name);
    std::lock_guard lock(store_->mu);
    HCI_RETURN_NOT_OK(RenameNoReplace(tmp.path(), path));
    tmp.Release();
    // The record is the commit point: without it the file is removed again.
    if (Status saved = store_->SaveVolume(record); !saved.ok()) {
      RemoveFile(path).IgnoreError();
      return saved.WithContext("volume " + Quote(name) + ": saving its record");
    }
    auto& stored = store_->volumes.emplace(name, std::move(record)).first->second;
    std::string what = plan.kind == v1::VolumeSource::SOURCE_NOT_SET ? "blank"
                       : plan.kind == v1::VolumeSource::kImage
                           ? (spec.linked_clone() ? "linked clone of image " : "copy of image ") +
                                 Quote(plan.image)
                       : plan.kind == v1::VolumeSource::kVolume
                           ? "clone of volume " + Quote(spec.source().volume())
                           : "clone of snapshot " + Quote(spec.source().snapshot().snapshot()) +
                                 " of volume " + Quote(spec.source().snapshot().volume());
    Publish(MakeEvent(
        v1::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeHealthy",
        "created " + std::to_string(plan.size) + "-byte volume at " + path + " (" + what + ")"));
    return Refreshed(stored);
  }

  Result<v1::Volume> GetVolume(const v1::GetVolumeRequest& request) override {
    std::lock_guard lock(store_->mu);
    auto it = store_->volumes.find(request.name());
    if (it == store_->volumes.end()) return Missing("volume", request.name());
    return Refreshed(it->second);
  }

  Result<v1::ListVolumesResponse> ListVolumes(const v1::ListVolumesRequest& request) override {
    v1::ListVolumesResponse out;
    std::lock_guard lock(store_->mu);
    for (const auto& [name, record] : store_->volumes) {
      if (MatchesLabels(record.obj.metadata().labels(), request.label_selector())) {
        *out.add_volumes() = Refreshed(record);
      }
    }
    return out;
  }

  Status DeleteVolume(const v1::DeleteVolumeRequest& request) override {
    const std::string& name = request.name();
    HCI_RETURN_NOT_OK(ValidateName("name", name));
    std::shared_ptr<std::shared_mutex> io;
    {
      std::lock_guard lock(store_->mu);
      auto it = store_->volumes.find(name);
      if (it == store_->volumes.end()) return Status();
      if (!it->second.obj.status().attached_to().empty()) {
        return Attached(it->second.obj, "deleting it");
      }
      io = it->second.io;
    }
    // Waits for clones still reading the volume.
    std::unique_lock io_lock(*io);
    std::lock_guard lock(store_->mu);
    auto it = store_->volumes.find(name);
    if (it == store_->volumes.end()) return Status();
    if (!it->second.obj.status().attached_to().empty()) {
      return Attached(it->second.obj, "deleting it");
    }
    HCI_RETURN_NOT_OK(store_->RemoveVolumeRecord(name));  // the commit point
    store_->volumes.erase(it);
    store_->snapshots.erase(name);
    // Left behind only if these fail; the next Open removes them (they have no record).
    RemoveFile(store_->VolumePath(name)).IgnoreError();
    std::error_code ec;
    std::filesystem::remove_all(store_->root() + "/snapshots/" + name, ec);
    Publish(MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeDeleted",
                      "volume and its snapshots deleted"));
    return Status();
  }

  Result<v1::AttachInfo> AttachVolume(const v1::AttachVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("name", request.name()));
    if (request.attacher().empty()) return InvalidArgument("attacher: is required");
    HCI_ASSIGN_OR_RAISE(auto io, IoLock(request.name()));
    std::unique_lock io_lock(*io);
    std::lock_guard lock(store_->mu);
    auto it = store_->volumes.find(request.name());
    if (it == store_->volumes.end()) return Missing("volume", request.name());
    VolumeRecord& record = it->second;
    HCI_RETURN_NOT_OK(CheckUsable(record.obj));
    auto* status = record.obj.mutable_status();
    if (status->attached_to().empty()) {
      status->set_attached_to(request.attacher());
      status->set_phase(v1::VOLUME_PHASE_ATTACHED);
      // Persisted: a VM outlives the Host that attached its volumes.
      if (Status saved = store_->SaveVolume(record); !saved.ok()) {
        status->clear_attached_to();
        status->set_phase(v1::VOLUME_PHASE_AVAILABLE);
        return saved;
      }
      Publish(MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(), "VolumeAttached",
                        "attached to " + Quote(request.attacher())));
    } else if (status->attached_to() != request.attacher()) {
      return FailedPrecondition("volume " + Quote(request.name()) + " is attached to " +
                                Quote(status->attached_to()) + ", not " +
                                Quote(request.attacher()) + "; a volume has one attacher");
    }
    v1::AttachInfo info;
    const std::string path = store_->VolumePath(request.name());
    auto& fields = *info.mutable_blockdev()->mutable_fields();
    fields["driver"].set_string_value("qcow2");
    auto& file = *fields["file"].mutable_struct_value()->mutable_fields();
    file["driver"].set_string_value("file");
    file["filename"].set_string_value(path);
    info.set_path(path);
    return info;
  }

  Status DetachVolume(const v1::DetachVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("name", request.name()));
    auto io = IoLock(request.name());
    if (!io.ok()) return Status();  // no such volume: nothing is attached
    std::unique_lock io_lock(**io);
    std::lock_guard lock(store_->mu);
    auto it = store_->volumes.find(request.name());
    if (it == store_->volumes.end()) return Status();
    VolumeRecord& record = it->second;
    auto* status = record.obj.mutable_status();
    if (status->attached_to().empty() || status->attached_to() != request.attacher()) {
      return Status();
    }
    status->clear_attached_to();
    if (status->phase() == v1::VOLUME_PHASE_ATTACHED) status->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    if (Status saved = store_->SaveVolume(record); !saved.ok()) {
      status->set_attached_to(request.attacher());
      status->set_phase(v1::VOLUME_PHASE_ATTACHED);
      return saved;
    }
    Publish(MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(), "VolumeDetached",
                      "detached from " + Quote(request.attacher())));
    return Status();
  }

  Result<v1::Volume> ExpandVolume(const v1::ExpandVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("name", request.name()));
    HCI_RETURN_NOT_OK(ValidateSize(request.size_bytes(), "size_bytes"));
    HCI_ASSIGN_OR_RAISE(auto io, IoLock(request.name()));
    std::unique_lock io_lock(*io);
    std::string path;
    std::uint64_t current;
    {
      std::lock_guard lock(store_->mu);
      HCI_ASSIGN_OR_RAISE(VolumeRecord * record, FindLocked(request.name()));
      HCI_RETURN_NOT_OK(CheckUsable(record->obj));
      current = record->obj.spec().size_bytes();
      if (request.size_bytes() < current) {
        return InvalidArgument("size_bytes: " + std::to_string(request.size_bytes()) +
                               " is smaller than the current size " + std::to_string(current) +
                               " (volumes cannot shrink)");
      }
      if (request.size_bytes() == current) return Refreshed(*record);
      if (!record->obj.status().attached_to().empty()) {
        return Attached(record->obj, "expanding it (online expansion is not supported)");
      }
      path = store_->VolumePath(request.name());
    }
    HCI_RETURN_NOT_OK(qemu_img_.Resize(path, request.size_bytes()));
    std::lock_guard lock(store_->mu);
    HCI_ASSIGN_OR_RAISE(VolumeRecord * record, FindLocked(request.name()));
    record->obj.mutable_spec()->set_size_bytes(request.size_bytes());
    record->obj.mutable_status()->set_capacity_bytes(request.size_bytes());
    HCI_RETURN_NOT_OK(store_->SaveVolume(*record));
    Publish(MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(), "VolumeExpanded",
                      "expanded from " + std::to_string(current) + " to " +
                          std::to_string(request.size_bytes()) + " bytes"));
    return Refreshed(*record);
  }

  Result<v1::Snapshot> CreateSnapshot(const v1::CreateSnapshotRequest& request) override {
    const std::string& volume = request.volume();
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateName("volume", volume));
    HCI_RETURN_NOT_OK(ValidateName("metadata.name", name));
    HCI_ASSIGN_OR_RAISE(auto io, IoLock(volume));
    std::unique_lock io_lock(*io);
    std::string path;
    SnapshotRecord record;
    {
      std::lock_guard lock(store_->mu);
      HCI_ASSIGN_OR_RAISE(VolumeRecord * vol, FindLocked(volume));
      auto& snaps = store_->snapshots[volume];
      if (auto it = snaps.find(name); it != snaps.end()) return it->second.obj;
      HCI_RETURN_NOT_OK(CheckUsable(vol->obj));
      path = store_->VolumePath(volume);
      record.virtual_size = vol->obj.spec().size_bytes();
    }
    Status created = qemu_img_.Snapshot('c', name, path);
    if (!created.ok() && created.code() != StatusCode::kFailedPrecondition) {
      // A snapshot of that name without a record: left by a crash before the record was
      // written. Replace it.
      auto info = qemu_img_.Info(path, "qcow2");
      if (info.ok() && std::find(info->snapshots.begin(), info->snapshots.end(), name) !=
                           info->snapshots.end()) {
        HCI_RETURN_NOT_OK(qemu_img_.Snapshot('d', name, path));
        created = qemu_img_.Snapshot('c', name, path);
      }
    }
    HCI_RETURN_NOT_OK(created);
    *record.obj.mutable_metadata() = NewObjectMeta(request.metadata());
    record.obj.set_volume(volume);
    auto* status = record.obj.mutable_status();
    status->set_ready_to_use(true);
    // Internal snapshots share clusters with the volume: what the file held when it was taken is
    // an upper bound of the data the snapshot keeps.
    status->set_size_bytes(AllocatedBytes(path));
    *status->mutable_creation_time() = record.obj.metadata().creation_time();
    std::lock_guard lock(store_->mu);
    if (Status saved = store_->SaveSnapshot(record); !saved.ok()) {
      qemu_img_.Snapshot('d', name, path).IgnoreError();
      return saved;
    }
    auto& stored = store_->snapshots[volume].emplace(name, std::move(record)).first->second;
    Publish(MakeEvent(v1::EVENT_TYPE_NORMAL, kSnapshotKind, name, "SnapshotCreated",
                      "internal qcow2 snapshot of volume " + Quote(volume), volume));
    return stored.obj;
  }

  Result<v1::ListSnapshotsResponse> ListSnapshots(
      const v1::ListSnapshotsRequest& request) override {
    std::lock_guard lock(store_->mu);
    HCI_RETURN_NOT_OK(FindLocked(request.volume()).status());
    std::vector<const SnapshotRecord*> ordered;
    if (auto it = store_->snapshots.find(request.volume()); it != store_->snapshots.end()) {
      for (const auto& [name, snap] : it->second) ordered.push_back(&snap);
    }
    std::sort(ordered.begin(), ordered.end(), [](const SnapshotRecord* a, const SnapshotRecord* b) {
      const auto& ta = a->obj.metadata().creation_time();
      const auto& tb = b->obj.metadata().creation_time();
      if (ta.seconds() != tb.seconds()) return ta.seconds() < tb.seconds();
      if (ta.nanos() != tb.nanos()) return ta.nanos() < tb.nanos();
      return a->obj.metadata().name() < b->obj.metadata().name();
    });
    v1::ListSnapshotsResponse out;
    for (const SnapshotRecord* snap : ordered) *out.add_snapshots() = snap->obj;
    return out;
  }

  Status DeleteSnapshot(const v1::DeleteSnapshotRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("volume", request.volume()));
    HCI_RETURN_NOT_OK(ValidateName("name", request.name()));
    auto io = IoLock(request.volume());
    if (!io.ok()) return Status();
    std::unique_lock io_lock(**io);
    std::string path;
    {
      std::lock_guard lock(store_->mu);
      auto vit = store_->volumes.find(request.volume());
      if (vit == store_->volumes.end()) return Status();
      auto sit = store_->snapshots.find(request.volume());
      if (sit == store_->snapshots.end() || sit->second.count(request.name()) == 0) {
        return Status();
      }
      if (!vit->second.obj.status().attached_to().empty()) {
        return Attached(vit->second.obj, "deleting its snapshot " + Quote(request.name()));
      }
      path = store_->VolumePath(request.volume());
    }
    Status deleted = qemu_img_.Snapshot('d', request.name(), path);
    if (!deleted.ok()) {
      // Gone from the file already (a delete interrupted before its record was removed).
      auto info = qemu_img_.Info(path, "qcow2");
      if (!info.ok() || std::find(info->snapshots.begin(), info->snapshots.end(), request.name()) !=
                            info->snapshots.end()) {
        return deleted;
      }
    }
    std::lock_guard lock(store_->mu);
    HCI_RETURN_NOT_OK(store_->RemoveSnapshotRecord(request.volume(), request.name()));
    store_->snapshots[request.volume()].erase(request.name());
    Publish(MakeEvent(v1::EVENT_TYPE_NORMAL, kSnapshotKind, request.name(), "SnapshotDeleted",
                      "snapshot deleted", request.volume()));
    return Status();
  }

  Result<v1::Volume> RevertVolume(const v1::RevertVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("volume", request.volume()));
    HCI_RETURN_NOT_OK(ValidateName("snapshot", request.snapshot()));
    HCI_ASSIGN_OR_RAISE(auto io, IoLock(request.volume()));
    std::unique_lock io_lock(*io);
    std::string path;
    {
      std::lock_guard lock(store_->mu);
      HCI_ASSIGN_OR_RAISE(VolumeRecord * vol, FindLocked(request.volume()));
      auto sit = store_->snapshots.find(request.volume());
      if (sit == store_->snapshots.end() || sit->second.count(request.snapshot()) == 0) {
        return NotFound("snapshot: snapshot " + Quote(request.snapshot()) + " of volume " +
                        Quote(request.volume()) + " does not exist");
      }
      HCI_RETURN_NOT_OK(CheckUsable(vol->obj));
      if (!vol->obj.status().attached_to().empty()) return Attached(vol->obj, "reverting it");
      path = store_->VolumePath(request.volume());
    }
    HCI_RETURN_NOT_OK(qemu_img_.Snapshot('a', request.snapshot(), path));
    // A revert also restores the size the volume had when the snapshot was taken.
    HCI_ASSIGN_OR_RAISE(ImageInfo info, qemu_img_.Info(path, "qcow2"));
    std::lock_guard lock(store_->mu);
    HCI_ASSIGN_OR_RAISE(VolumeRecord * vol, FindLocked(request.volume()));
    vol->obj.mutable_spec()->set_size_bytes(info.virtual_size);
    vol->obj.mutable_status()->set_capacity_bytes(info.virtual_size);
    HCI_RETURN_NOT_OK(store_->SaveVolume(*vol));
    Publish(MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.volume(), "VolumeReverted",
                      "reverted to snapshot " + Quote(request.snapshot())));
    return Refreshed(*vol);
  }

 private:
  Result<VolumeRecord*> FindLocked(const std::string& name) {
    auto it = store_->volumes.find(name);
    if (it == store_->volumes.end()) return Missing("volume", name);
    return &it->second;
  }

  Result<std::shared_ptr<std::shared_mutex>> IoLock(const std::string& name) {
    std::lock_guard lock(store_->mu);
    HCI_ASSIGN_OR_RAISE(VolumeRecord * record, FindLocked(name));
    return record->io;
  }

  Result<v1::Volume> Existing(const VolumeRecord& record, const v1::CreateVolumeRequest& request) {
    if (!DescribeSpecDifference(record.requested, request.spec()).empty()) {
      return AlreadyExists("volume " + Quote(request.metadata().name()) +
                           " already exists with a different spec (" +
                           DescribeSpecDifference(record.requested, request.spec()) + ")");
    }
    return Refreshed(record);
  }

  // The record's object with the allocation read from the file system.
  v1::Volume Refreshed(const VolumeRecord& record) const {
    v1::Volume out = record.obj;
    if (out.status().phase() != v1::VOLUME_PHASE_FAILED) {
      out.mutable_status()->set_actual_size_bytes(
          AllocatedBytes(store_->VolumePath(out.metadata().name())));
    }
    return out;
  }

  Result<Plan> PlanLocked(const v1::VolumeSpec& spec) {
    Plan plan;
    const auto& source = spec.source();
    plan.kind = source.source_case();
    bool sized = true;
    switch (plan.kind) {
      case v1::VolumeSource::kImage: {
        auto it = store_->images.find(source.image());
        if (it == store_->images.end())
          return Missing("image", source.image(), "spec.source.image");
        const auto& image = it->second.obj;
        if (image.status().phase() != v1::IMAGE_PHASE_READY) {
          return FailedPrecondition("spec.source.image: image " + Quote(source.image()) +
                                    " is not ready (phase " +
                                    v1::ImagePhase_Name(image.status().phase()) + ")");
        }
        plan.image = source.image();
        plan.linked = spec.linked_clone();
        plan.source_path = store_->ImagePath(source.image());
        plan.source_size = image.status().virtual_size_bytes();
        break;
      }
      case v1::VolumeSource::kVolume: {
        auto it = store_->volumes.find(source.volume());
        if (it == store_->volumes.end()) {
          return Missing("volume", source.volume(), "spec.source.volume");
        }
        HCI_RETURN_NOT_OK(CheckUsable(it->second.obj).WithContext("spec.source.volume"));
        plan.source_volume = source.volume();
        plan.source_path = store_->VolumePath(source.volume());
        plan.source_size = it->second.obj.spec().size_bytes();
        plan.source_io = it->second.io;
        break;
      }
      case v1::VolumeSource::kSnapshot: {
        const auto& ref = source.snapshot();
        auto it = store_->volumes.find(ref.volume());
        if (it == store_->volumes.end()) {
          return Missing("volume", ref.volume(), "spec.source.snapshot.volume");
        }
        HCI_RETURN_NOT_OK(CheckUsable(it->second.obj).WithContext("spec.source.snapshot.volume"));
        auto sit = store_->snapshots.find(ref.volume());
        if (sit == store_->snapshots.end() || sit->second.count(ref.snapshot()) == 0) {
          return NotFound("spec.source.snapshot.snapshot: snapshot " + Quote(ref.snapshot()) +
                          " of volume " + Quote(ref.volume()) + " does not exist");
        }
        plan.source_volume = ref.volume();
        plan.source_path = store_->VolumePath(ref.volume());
        plan.snapshot = ref.snapshot();
        plan.source_size = sit->second.at(ref.snapshot()).virtual_size;
        plan.source_io = it->second.io;
        break;
      }
      case v1::VolumeSource::SOURCE_NOT_SET:
        sized = false;
        break;
    }
    plan.size = spec.size_bytes();
    if (sized) {
      std::uint64_t rounded = (plan.source_size + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
      if (plan.size == 0) {
        plan.size = rounded;
      } else if (plan.size < plan.source_size) {
        return InvalidArgument("spec.size_bytes: " + std::to_string(plan.size) +
                               " is smaller than the source's " + std::to_string(plan.source_size) +
                               " bytes");
      }
    }
    return plan;
  }

  // Writes the new volume's qcow2 to `tmp`, without Store::mu.
  Status Build(const Plan& plan, const std::string& tmp) {
    switch (plan.kind) {
      case v1::VolumeSource::SOURCE_NOT_SET:
        return qemu_img_.Create(tmp, plan.size);
      case v1::VolumeSource::kImage:
        // Images never change once Ready, and cannot be deleted while `creating` names them.
        if (plan.linked) return qemu_img_.Create(tmp, plan.size, plan.source_path, "qcow2");
        HCI_RETURN_NOT_OK(qemu_img_.Convert(plan.source_path, "qcow2", tmp));
        if (plan.size > plan.source_size) return qemu_img_.Resize(tmp, plan.size);
        return Status();
      case v1::VolumeSource::kVolume:
      case v1::VolumeSource::kSnapshot: {
        std::shared_lock io_lock(*plan.source_io);
        {
          // Deleted between planning and now (the delete held the io lock)?
          std::lock_guard lock(store_->mu);
          const std::string& source = plan.source_volume;
          if (store_->volumes.count(source) == 0) {
            return Missing("volume", source,
                           plan.kind == v1::VolumeSource::kVolume ? "spec.source.volume"
                                                                  : "spec.source.snapshot.volume");
          }
          if (plan.kind == v1::VolumeSource::kSnapshot &&
              store_->snapshots[source].count(plan.snapshot) == 0) {
            return NotFound("spec.source.snapshot.snapshot: snapshot " + Quote(plan.snapshot) +
                            " of volume " + Quote(source) + " does not exist");
          }
        }
        HCI_RETURN_NOT_OK(qemu_img_.Convert(plan.source_path, "qcow2", tmp, plan.snapshot));
        if (plan.size > plan.source_size) return qemu_img_.Resize(tmp, plan.size);
        return Status();
      }
    }
    return Internal("unknown volume source");
  }

  void Publish(const v1::Event& event) { context_.events().Publish(event); }

  PluginContext& context_;
  std::shared_ptr<Store> store_;
  QemuImg qemu_img_;
};

}  // namespace

Result<std::unique_ptr<StorageBackend>> MakeStorage(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(Options options, ParseOptions(context.options(), BackendKind::kStorage));
  HCI_ASSIGN_OR_RAISE(auto store, Store::Open(context));
  return std::unique_ptr<StorageBackend>(
      std::make_unique<LocalStorage>(context, std::move(options), std::move(store)));
}

}  // namespace hci::local
