// The mock StorageBackend: Longhorn-style replicated volumes in memory (no data is stored).
//
// Changed-block tracking is crude: every volume carries a content generation, a number that
// changes whenever its content may have changed. The mock assumes an attached volume is written
// to, so each attach starts a new generation, and so does a snapshot taken while attached. Two
// points in time with the same generation have no changed blocks; otherwise the whole volume
// counts as changed.
#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mock_internal.h"

namespace hci::mock {
namespace {

constexpr char kVolumeKind[] = "Volume";
constexpr char kSnapshotKind[] = "Snapshot";
constexpr std::uint64_t kBlock = 4096;
constexpr std::uint32_t kDefaultReplicas = 3;
constexpr std::uint32_t kMaxReplicas = 3;

struct Snap {
  v1::Snapshot obj;
  std::uint64_t generation = 0;
  std::uint64_t size_bytes = 0;
  std::uint64_t seq = 0;  // creation order within the backend
};

struct Vol {
  // obj.spec is the effective spec (size resolved, grown by ExpandVolume); `requested` is what
  // CreateVolume was given, for idempotent repeats.
  v1::Volume obj;
  v1::VolumeSpec requested;
  // 0: never written (a blank volume that was never attached).
  std::uint64_t generation = 0;
  std::map<std::string, Snap> snapshots;
};

Status ValidateSize(std::uint64_t size, std::string_view field) {
  if (size % kBlock != 0) {
    return InvalidArgument(std::string(field) + ": " + std::to_string(size) +
                           " is not a multiple of 4096");
  }
  return Status();
}

class MockStorage final : public StorageBackend {
 public:
  explicit MockStorage(std::shared_ptr<BackendEnv> env) : env_(std::move(env)) {}

  FaultInjector* fault_injector() override { return env_->faults(); }

  v1::StorageCapabilities Capabilities() const override {
    v1::StorageCapabilities caps;
    caps.set_snapshots(true);
    caps.set_revert(true);
    caps.set_clone(true);
    caps.set_from_image(true);
    caps.set_expand(true);
    caps.set_online_expand(true);
    caps.set_replication(true);
    caps.set_max_replicas(kMaxReplicas);
    caps.set_changed_blocks(true);
    // Discard needs a data path; the mock's null-co device has none.
    caps.set_trim(false);
    caps.set_thin_provisioning(true);
    caps.set_scrub(true);
    return caps;
  }

  Result<std::string> Metrics() override {
    HCI_RETURN_NOT_OK(env_->Enter("Metrics"));
    std::string capacity =
        "# HELP longhorn_volume_capacity_bytes Configured size in bytes for this volume.\n"
        "# TYPE longhorn_volume_capacity_bytes gauge\n";
    std::string actual =
        "# HELP longhorn_volume_actual_size_bytes Actual space used by each replica of the "
        "volume on the corresponding node.\n"
        "# TYPE longhorn_volume_actual_size_bytes gauge\n";
    const std::string& node = env_->context().node_name();
    std::lock_guard lock(mu_);
    for (const auto& [name, vol] : volumes_) {
      std::string labels = "{node=\"" + node + "\",volume=\"" + name + "\"}";
      capacity += "longhorn_volume_capacity_bytes" + labels + " " +
                  std::to_string(vol.obj.spec().size_bytes()) + "\n";
      actual += "longhorn_volume_actual_size_bytes" + labels + " " +
                std::to_string(vol.obj.status().actual_size_bytes()) + "\n";
    }
    return capacity + actual;
  }

  Result<v1::Volume> CreateVolume(const v1::CreateVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("CreateVolume"));
    const std::string& name = request.metadata().name();
    const v1::VolumeSpec& spec = request.spec();
    {
      std::lock_guard lock(mu_);
      if (auto it = volumes_.find(name); it != volumes_.end()) return Existing(it->second, request);
    }
    HCI_RETURN_NOT_OK(ValidateSize(spec.size_bytes(), "spec.size_bytes"));
    if (spec.replica_count() > kMaxReplicas) {
      return InvalidArgument("spec.replica_count: " + std::to_string(spec.replica_count()) +
                             " is more than the " + std::to_string(kMaxReplicas) +
                             " replicas this backend places");
    }
    const auto& source = spec.source();
    if (spec.linked_clone() && source.source_case() != v1::VolumeSource::kImage) {
      return InvalidArgument(
          "spec.linked_clone: only a volume from an image can be a linked "
          "clone");
    }
    // Size and allocation of the source, when there is one.
    std::uint64_t source_size = 0;
    std::uint64_t source_actual = 0;
    bool sized_source = false;
    if (source.source_case() == v1::VolumeSource::kImage) {
      HCI_RETURN_NOT_OK(InspectImage(source.image(), &source_size, &source_actual, &sized_source));
    }

    std::lock_guard lock(mu_);
    if (auto it = volumes_.find(name); it != volumes_.end()) return Existing(it->second, request);
    switch (source.source_case()) {
      case v1::VolumeSource::kVolume: {
        auto it = volumes_.find(source.volume());
        if (it == volumes_.end()) return Missing("volume", source.volume(), "spec.source.volume");
        source_size = it->second.obj.spec().size_bytes();
        source_actual = it->second.obj.status().actual_size_bytes();
        sized_source = true;
        break;
      }
      case v1::VolumeSource::kSnapshot: {
        const auto& ref = source.snapshot();
        auto vit = volumes_.find(ref.volume());
        if (vit == volumes_.end()) {
          return Missing("volume", ref.volume(), "spec.source.snapshot.volume");
        }
        auto sit = vit->second.snapshots.find(ref.snapshot());
        if (sit == vit->second.snapshots.end()) {
          return NotFound("spec.source.snapshot.snapshot: snapshot " + Quote(ref.snapshot()) +
                          " of volume " + Quote(ref.volume()) + " does not exist");
        }
        source_size = sit->second.size_bytes;
        source_actual = sit->second.obj.status().size_bytes();
        sized_source = true;
        break;
      }
      default:
        break;
    }
    std::uint64_t size = spec.size_bytes();
    if (size == 0) {
      if (!sized_source) {
        return InvalidArgument(
            source.source_case() == v1::VolumeSource::SOURCE_NOT_SET
                ? "spec.size_bytes: must be greater than 0 for a blank volume"
                : "spec.size_bytes: is required when the source's size is unknown");
      }
      size = (source_size + kBlock - 1) / kBlock * kBlock;
    } else if (sized_source && size < source_size) {
      return InvalidArgument("spec.size_bytes: " + std::to_string(size) +
                             " is smaller than the source's " + std::to_string(source_size) +
                             " bytes");
    }

    Vol vol;
    *vol.obj.mutable_metadata() = NewObjectMeta(request.metadata());
    *vol.obj.mutable_spec() = spec;
    vol.obj.mutable_spec()->set_size_bytes(size);
    vol.requested = spec;
    vol.generation =
        source.source_case() == v1::VolumeSource::SOURCE_NOT_SET ? 0 : next_generation_++;
    auto* status = vol.obj.mutable_status();
    status->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    status->set_robustness(v1::VOLUME_ROBUSTNESS_HEALTHY);
    status->set_actual_size_bytes(std::min(source_actual, size));
    status->set_capacity_bytes(size);
    std::uint32_t replicas = spec.replica_count() == 0 ? kDefaultReplicas : spec.replica_count();
    for (std::uint32_t i = 0; i < replicas; ++i) {
      auto* r = status->add_replicas();
      r->set_name(name + "-r-" + std::to_string(i));
      r->set_node(env_->context().node_name());
      r->set_state(v1::REPLICA_STATE_HEALTHY);
    }
    auto* ready = status->add_conditions();
    ready->set_type("Ready");
    ready->set_status(v1::CONDITION_STATUS_TRUE);
    ready->set_reason("Created");
    *ready->mutable_last_transition_time() = Now();
    SyncLocked(vol);
    auto& stored = volumes_.emplace(name, std::move(vol)).first->second;
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeHealthy",
                                  "volume created with " + std::to_string(replicas) +
                                      " healthy replicas, " + std::to_string(size) + " bytes"));
    return stored.obj;
  }

  Result<v1::Volume> GetVolume(const v1::GetVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetVolume"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.name()));
    return vol->obj;
  }

  Result<v1::ListVolumesResponse> ListVolumes(const v1::ListVolumesRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListVolumes"));
    v1::ListVolumesResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, vol] : volumes_) {
      if (MatchesLabels(vol.obj.metadata().labels(), request.label_selector())) {
        *out.add_volumes() = vol.obj;
      }
    }
    return out;
  }

  Status DeleteVolume(const v1::DeleteVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeleteVolume"));
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end()) return Status();
    const auto& attached_to = it->second.obj.status().attached_to();
    if (!attached_to.empty()) {
      return FailedPrecondition("volume " + Quote(request.name()) + " is attached to " +
                                Quote(attached_to) + "; detach it first");
    }
    // Snapshots belong to the volume (as in Longhorn) and go with it.
    volumes_.erase(it);
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(),
                                  "VolumeDeleted", "volume and its snapshots deleted"));
    return Status();
  }

  Result<v1::AttachInfo> AttachVolume(const v1::AttachVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("AttachVolume"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.name()));
    auto* status = vol->obj.mutable_status();
    if (status->attached_to().empty()) {
      status->set_attached_to(request.attacher());
      status->set_phase(v1::VOLUME_PHASE_ATTACHED);
      vol->generation = next_generation_++;  // the attacher may write
      SyncLocked(*vol);
      env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(),
                                    "VolumeAttached", "attached to " + Quote(request.attacher())));
    } else if (status->attached_to() != request.attacher()) {
      return FailedPrecondition("volume " + Quote(request.name()) + " is attached to " +
                                Quote(status->attached_to()) + ", not " +
                                Quote(request.attacher()) + "; a volume has one attacher");
    }
    return AttachInfoFor(*vol);
  }

  Status DetachVolume(const v1::DetachVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DetachVolume"));
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end()) return Status();
    auto* status = it->second.obj.mutable_status();
    if (status->attached_to() != request.attacher()) return Status();
    status->clear_attached_to();
    status->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(),
                                  "VolumeDetached", "detached from " + Quote(request.attacher())));
    return Status();
  }

  Result<v1::Volume> ExpandVolume(const v1::ExpandVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ExpandVolume"));
    HCI_RETURN_NOT_OK(ValidateSize(request.size_bytes(), "size_bytes"));
    std::unique_lock lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.name()));
    std::uint64_t current = vol->obj.spec().size_bytes();
    if (request.size_bytes() < current) {
      return InvalidArgument("size_bytes: " + std::to_string(request.size_bytes()) +
                             " is smaller than the current size " + std::to_string(current) +
                             " (volumes cannot shrink)");
    }
    if (request.size_bytes() == current) return vol->obj;
    vol->obj.mutable_spec()->set_size_bytes(request.size_bytes());
    vol->obj.mutable_status()->set_capacity_bytes(request.size_bytes());
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(),
                                  "VolumeExpanded",
                                  "expanded from " + std::to_string(current) + " to " +
                                      std::to_string(request.size_bytes()) + " bytes"));
    v1::Volume out = vol->obj;
    lock.unlock();
    // Online expand as the StorageBackend contract has it: the attached VM is told.
    ComputeBackend* compute = env_->context().compute();
    const std::string& attacher = out.status().attached_to();
    if (!attacher.empty() && compute != nullptr) {
      v1::ResizeDiskRequest resize;
      resize.set_vm(attacher);
      resize.set_volume(request.name());
      resize.set_size_bytes(request.size_bytes());
      Status told = compute->ResizeDisk(resize);
      if (!told.ok() && told.code() != StatusCode::kNotFound) {
        env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_WARNING, kVolumeKind, request.name(),
                                      "ResizeDiskFailed",
                                      "the volume grew, but " + Quote(attacher) +
                                          " was not told: " + told.message()));
      }
    }
    return out;
  }

  Result<v1::Snapshot> CreateSnapshot(const v1::CreateSnapshotRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("CreateSnapshot"));
    const std::string& name = request.metadata().name();
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.volume()));
    if (auto it = vol->snapshots.find(name); it != vol->snapshots.end()) return it->second.obj;
    Snap snap;
    *snap.obj.mutable_metadata() = NewObjectMeta(request.metadata());
    snap.obj.set_volume(request.volume());
    snap.generation = vol->generation;
    snap.size_bytes = vol->obj.spec().size_bytes();
    snap.seq = next_snapshot_seq_++;
    auto* status = snap.obj.mutable_status();
    status->set_ready_to_use(true);
    status->set_size_bytes(vol->obj.status().actual_size_bytes());
    *status->mutable_creation_time() = snap.obj.metadata().creation_time();
    // Writes after the snapshot land in a new head, as in Longhorn's snapshot chain.
    if (!vol->obj.status().attached_to().empty()) {
      vol->generation = next_generation_++;
      SyncLocked(*vol);
    }
    auto& stored = vol->snapshots.emplace(name, std::move(snap)).first->second;
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kSnapshotKind, name, "SnapshotCreated",
                                  "snapshot of volume " + Quote(request.volume()),
                                  request.volume()));
    return stored.obj;
  }

  Result<v1::ListSnapshotsResponse> ListSnapshots(
      const v1::ListSnapshotsRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListSnapshots"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.volume()));
    std::vector<const Snap*> ordered;
    for (const auto& [name, snap] : vol->snapshots) ordered.push_back(&snap);
    std::sort(ordered.begin(), ordered.end(),
              [](const Snap* a, const Snap* b) { return a->seq < b->seq; });
    v1::ListSnapshotsResponse out;
    for (const Snap* snap : ordered) *out.add_snapshots() = snap->obj;
    return out;
  }

  Status DeleteSnapshot(const v1::DeleteSnapshotRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeleteSnapshot"));
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.volume());
    if (it == volumes_.end()) return Status();
    if (it->second.snapshots.erase(request.name()) > 0) {
      env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kSnapshotKind, request.name(),
                                    "SnapshotDeleted", "snapshot deleted", request.volume()));
    }
    return Status();
  }

  Result<v1::Volume> RevertVolume(const v1::RevertVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("RevertVolume"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.volume()));
    auto it = vol->snapshots.find(request.snapshot());
    if (it == vol->snapshots.end()) {
      return NotFound("snapshot: snapshot " + Quote(request.snapshot()) + " of volume " +
                      Quote(request.volume()) + " does not exist");
    }
    const auto& attached_to = vol->obj.status().attached_to();
    if (!attached_to.empty()) {
      return FailedPrecondition("volume " + Quote(request.volume()) + " is attached to " +
                                Quote(attached_to) + "; detach it before reverting");
    }
    vol->generation = it->second.generation;
    SyncLocked(*vol);
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.volume(),
                                  "VolumeReverted",
                                  "reverted to snapshot " + Quote(request.snapshot())));
    return vol->obj;
  }

  Result<v1::ChangedBlocks> GetChangedBlocks(const v1::GetChangedBlocksRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetChangedBlocks"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.volume()));
    auto find = [&](const std::string& snap, const char* field) -> Result<const Snap*> {
      auto it = vol->snapshots.find(snap);
      if (it == vol->snapshots.end()) {
        return NotFound(std::string(field) + ": snapshot " + Quote(snap) + " of volume " +
                        Quote(request.volume()) + " does not exist");
      }
      return &it->second;
    };
    // The "to" point: a snapshot, or the volume's current content.
    std::uint64_t to_generation = vol->generation;
    std::uint64_t to_size = vol->obj.spec().size_bytes();
    std::uint64_t to_seq = next_snapshot_seq_;
    if (!request.to_snapshot().empty()) {
      HCI_ASSIGN_OR_RAISE(const Snap* to, find(request.to_snapshot(), "to_snapshot"));
      to_generation = to->generation;
      to_size = to->size_bytes;
      to_seq = to->seq;
    }
    v1::ChangedBlocks out;
    out.set_size_bytes(to_size);
    bool changed;
    if (request.from_snapshot().empty()) {
      changed = to_generation != 0;  // generation 0: nothing was ever written
    } else {
      HCI_ASSIGN_OR_RAISE(const Snap* from, find(request.from_snapshot(), "from_snapshot"));
      if (from->seq > to_seq) {
        return InvalidArgument("from_snapshot: " + Quote(request.from_snapshot()) +
                               " was taken after to_snapshot " + Quote(request.to_snapshot()));
      }
      changed = from->generation != to_generation;
    }
    if (changed && to_size > 0) {
      auto* extent = out.add_extents();
      extent->set_offset(0);
      extent->set_length(to_size);
    }
    return out;
  }

  // The mock keeps one copy, so a scrub compares it with itself: it finds nothing, at once.
  Result<Operation> ScrubVolume(const v1::ScrubVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ScrubVolume"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vol * vol, FindLocked(request.name()));
    OperationInfo info;
    info.kind = "ScrubVolume";
    info.object.set_kind(kVolumeKind);
    info.object.set_name(request.name());
    info.cancellable = false;
    OperationControl control = env_->context().operations().Start(info);
    const std::uint64_t size = vol->obj.spec().size_bytes();
    auto* result = vol->obj.mutable_status()->mutable_last_scrub();
    result->Clear();
    *result->mutable_start_time() = Now();
    result->set_bytes_compared(size);
    result->set_report_only(request.report_only());
    *result->mutable_end_time() = Now();
    control.SetProgress(size, size, "compared");
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVolumeKind, request.name(),
                                  "ScrubCompleted",
                                  "compared " + std::to_string(size) + " bytes: no mismatch"));
    Operation handle = control.handle();
    control.Finish(Status());
    return handle;
  }

 private:
  Result<Vol*> FindLocked(const std::string& name) {
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Missing("volume", name);
    return &it->second;
  }

  Result<v1::Volume> Existing(const Vol& vol, const v1::CreateVolumeRequest& request) {
    if (!DescribeSpecDifference(vol.requested, request.spec()).empty()) {
      return SpecConflict("volume", request.metadata().name(), vol.requested, request.spec());
    }
    return vol.obj;
  }

  // Checks the image through the image backend, when one is configured.
  Status InspectImage(const std::string& image, std::uint64_t* size, std::uint64_t* actual,
                      bool* known) {
    ImageBackend* images = env_->context().image();
    if (images == nullptr) return Status();  // Nothing to check against; size must be given.
    v1::GetImageRequest get;
    get.set_name(image);
    auto found = images->GetImage(get);
    if (!found.ok()) {
      if (found.status().code() == StatusCode::kNotFound) {
        return Missing("image", image, "spec.source.image");
      }
      return found.status().WithContext("spec.source.image");
    }
    if (found->status().phase() != v1::IMAGE_PHASE_READY) {
      return FailedPrecondition("spec.source.image: image " + Quote(image) +
                                " is not ready (phase " +
                                v1::ImagePhase_Name(found->status().phase()) + ")");
    }
    *size = found->status().virtual_size_bytes();
    *actual = found->status().actual_size_bytes();
    *known = true;
    return Status();
  }

  // Reflects the generation and size into the replica statuses.
  void SyncLocked(Vol& vol) {
    for (auto& r : *vol.obj.mutable_status()->mutable_replicas()) {
      r.set_generation(vol.generation);
    }
  }

  static v1::AttachInfo AttachInfoFor(const Vol& vol) {
    v1::AttachInfo info;
    auto& fields = *info.mutable_blockdev()->mutable_fields();
    fields["driver"].set_string_value("null-co");
    fields["size"].set_number_value(static_cast<double>(vol.obj.spec().size_bytes()));
    fields["read-zeroes"].set_bool_value(true);
    return info;
  }

  std::shared_ptr<BackendEnv> env_;
  std::mutex mu_;
  std::map<std::string, Vol> volumes_;
  std::uint64_t next_generation_ = 1;
  std::uint64_t next_snapshot_seq_ = 1;
};

}  // namespace

Result<std::unique_ptr<StorageBackend>> MakeStorage(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(auto env, BackendEnv::Make(context, BackendKind::kStorage));
  return std::unique_ptr<StorageBackend>(std::make_unique<MockStorage>(std::move(env)));
}

}  // namespace hci::mock
