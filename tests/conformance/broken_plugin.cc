// A deliberately broken storage plugin: it proves that the conformance kit fails a plugin that
// breaks the contract (conformance.broken expects these failures, and no others):
//
//   1. it claims `snapshots` but its snapshot methods answer Unimplemented;
//   2. CreateVolume is not idempotent: repeating it with the same spec gives AlreadyExists;
//   3. DeleteVolume deletes an attached volume;
//   4. ExpandVolume shrinks a volume;
//   5. it does not claim `revert`, yet RevertVolume answers OK.
//
// Everything else (validation, attach and detach, get and list) follows the contract.
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "hci/object_meta.h"
#include "hci/plugin.h"

namespace {

using hci::Result;
using hci::Status;
namespace v1 = hci::v1;

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

class BrokenStorage final : public hci::StorageBackend {
 public:
  v1::StorageCapabilities Capabilities() const override {
    v1::StorageCapabilities caps;
    caps.set_expand(true);
    caps.set_snapshots(true);  // defect 1: the snapshot methods keep their Unimplemented default
    return caps;
  }

  Result<v1::Volume> CreateVolume(const v1::CreateVolumeRequest& request) override {
    const auto& spec = request.spec();
    if (spec.size_bytes() == 0 || spec.size_bytes() % 4096 != 0) {
      return hci::InvalidArgument("spec.size_bytes: " + std::to_string(spec.size_bytes()) +
                                  " is not a positive multiple of 4096");
    }
    if (spec.source().source_case() != v1::VolumeSource::SOURCE_NOT_SET) {
      return hci::Unimplemented("spec.source: only blank volumes");
    }
    if (spec.replica_count() > 1) {
      return hci::InvalidArgument("spec.replica_count: one copy only");
    }
    std::lock_guard lock(mu_);
    const std::string& name = request.metadata().name();
    if (volumes_.count(name) > 0) {
      // Defect 2: the same spec again should return the existing volume.
      return hci::AlreadyExists("volume " + Quote(name) + " already exists");
    }
    v1::Volume volume;
    *volume.mutable_metadata() = hci::NewObjectMeta(request.metadata());
    *volume.mutable_spec() = spec;
    volume.mutable_status()->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    volume.mutable_status()->set_capacity_bytes(spec.size_bytes());
    return volumes_[name] = volume;
  }

  Result<v1::Volume> GetVolume(const v1::GetVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end())
      return hci::NotFound("volume " + Quote(request.name()) + " does not exist");
    return it->second;
  }

  Result<v1::ListVolumesResponse> ListVolumes(const v1::ListVolumesRequest& request) override {
    std::lock_guard lock(mu_);
    v1::ListVolumesResponse out;
    for (const auto& [name, volume] : volumes_) {
      if (hci::MatchesLabels(volume.metadata().labels(), request.label_selector())) {
        *out.add_volumes() = volume;
      }
    }
    return out;
  }

  Status DeleteVolume(const v1::DeleteVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    volumes_.erase(request.name());  // defect 3: attached or not
    return Status();
  }

  Result<v1::AttachInfo> AttachVolume(const v1::AttachVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end())
      return hci::NotFound("volume " + Quote(request.name()) + " does not exist");
    auto* status = it->second.mutable_status();
    if (!status->attached_to().empty() && status->attached_to() != request.attacher()) {
      return hci::FailedPrecondition("volume " + Quote(request.name()) + " is attached to " +
                                     Quote(status->attached_to()));
    }
    status->set_attached_to(request.attacher());
    status->set_phase(v1::VOLUME_PHASE_ATTACHED);
    v1::AttachInfo info;
    (*info.mutable_blockdev()->mutable_fields())["driver"].set_string_value("null-co");
    return info;
  }

  Status DetachVolume(const v1::DetachVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end() || it->second.status().attached_to() != request.attacher()) {
      return Status();
    }
    it->second.mutable_status()->clear_attached_to();
    it->second.mutable_status()->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    return Status();
  }

  Result<v1::Volume> ExpandVolume(const v1::ExpandVolumeRequest& request) override {
    if (request.size_bytes() == 0 || request.size_bytes() % 4096 != 0) {
      return hci::InvalidArgument("size_bytes: " + std::to_string(request.size_bytes()) +
                                  " is not a positive multiple of 4096");
    }
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end())
      return hci::NotFound("volume " + Quote(request.name()) + " does not exist");
    if (!it->second.status().attached_to().empty()) {
      return hci::FailedPrecondition("volume " + Quote(request.name()) + " is attached");
    }
    // Defect 4: a smaller size is applied instead of refused.
    it->second.mutable_spec()->set_size_bytes(request.size_bytes());
    it->second.mutable_status()->set_capacity_bytes(request.size_bytes());
    return it->second;
  }

  // Defect 5: implemented, though `revert` is not claimed.
  Result<v1::Volume> RevertVolume(const v1::RevertVolumeRequest& request) override {
    v1::GetVolumeRequest get;
    get.set_name(request.volume());
    return GetVolume(get);
  }

 private:
  std::mutex mu_;
  std::map<std::string, v1::Volume> volumes_;
};

Result<std::unique_ptr<hci::StorageBackend>> MakeStorage(hci::PluginContext&) {
  return std::unique_ptr<hci::StorageBackend>(std::make_unique<BrokenStorage>());
}

}  // namespace

HCI_PLUGIN("conformance-broken", "0.0.1", {.storage = &MakeStorage})
