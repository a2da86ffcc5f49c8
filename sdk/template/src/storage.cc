// The example StorageBackend: blank volumes kept in memory, attached as QEMU's `null-co` device
// (reads return zeros, writes are dropped). It implements the required methods, plus the
// backend-wide Metrics(); snapshots, clones and expansion keep StorageBackend's Unimplemented
// defaults and are not claimed. A real plugin allocates, attaches and frees real storage where
// this one edits a map.
#include "hci/storage.h"

#include <google/protobuf/struct.pb.h>

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

constexpr char kVolumeKind[] = "Volume";
constexpr std::uint64_t kBlockBytes = 4096;

struct StorageOptions {
  std::uint64_t capacity_bytes = 1ull << 40;  // 1 TiB: the sum of all volume sizes
};

Result<StorageOptions> ParseStorageOptions(const google::protobuf::Struct& options) {
  hci::OptionsReader reader(options, "options");
  StorageOptions out;
  HCI_ASSIGN_OR_RAISE(out.capacity_bytes,
                      reader.Unsigned("capacity_bytes", out.capacity_bytes, kBlockBytes));
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  return out;
}

class ExampleStorage final : public hci::StorageBackend {
 public:
  ExampleStorage(hci::PluginContext& context, StorageOptions options)
      : context_(context), options_(options) {}

  v1::StorageCapabilities Capabilities() const override {
    return {};  // Nothing optional: blank volumes, create/attach/detach/delete.
  }

  // Optional for every backend kind, without a capability flag: Host::Metrics() appends it.
  Result<std::string> Metrics() override {
    std::lock_guard lock(mu_);
    return "# HELP hci_example_volumes Volumes defined.\n"
           "# TYPE hci_example_volumes gauge\n"
           "hci_example_volumes " +
           std::to_string(volumes_.size()) +
           "\n"
           "# HELP hci_example_allocated_bytes Sum of the volumes' sizes.\n"
           "# TYPE hci_example_allocated_bytes gauge\n"
           "hci_example_allocated_bytes " +
           std::to_string(allocated_) + "\n";
  }

  Result<v1::Volume> CreateVolume(const v1::CreateVolumeRequest& request) override {
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateSpec(request.spec()));
    std::lock_guard lock(mu_);
    if (auto it = volumes_.find(name); it != volumes_.end()) {
      if (!hci::DescribeSpecDifference(it->second.spec(), request.spec()).empty()) {
        return SpecConflict("volume", name, it->second.spec(), request.spec());
      }
      return it->second;
    }
    std::uint64_t size = request.spec().size_bytes();
    if (size > options_.capacity_bytes - allocated_) {
      return hci::ResourceExhausted("spec.size_bytes: " + std::to_string(size) +
                                    " bytes do not fit; " +
                                    std::to_string(options_.capacity_bytes - allocated_) +
                                    " of options.capacity_bytes are free");
    }
    v1::Volume volume;
    *volume.mutable_metadata() = hci::NewObjectMeta(request.metadata());
    *volume.mutable_spec() = request.spec();
    volume.mutable_status()->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    volume.mutable_status()->set_capacity_bytes(size);
    allocated_ += size;
    PublishEvent(context_, kVolumeKind, name, "VolumeCreated", std::to_string(size) + " bytes");
    return volumes_.emplace(name, std::move(volume)).first->second;
  }

  Result<v1::Volume> GetVolume(const v1::GetVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end()) return Missing("volume", request.name());
    return it->second;
  }

  Result<v1::ListVolumesResponse> ListVolumes(const v1::ListVolumesRequest& request) override {
    v1::ListVolumesResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, volume] : volumes_) {
      if (hci::MatchesLabels(volume.metadata().labels(), request.label_selector())) {
        *out.add_volumes() = volume;
      }
    }
    return out;
  }

  Status DeleteVolume(const v1::DeleteVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end()) return Status::OK();
    if (const std::string& user = it->second.status().attached_to(); !user.empty()) {
      return hci::FailedPrecondition("volume " + Quote(request.name()) + " is attached to " +
                                     Quote(user) + "; detach it first");
    }
    allocated_ -= it->second.spec().size_bytes();
    volumes_.erase(it);
    PublishEvent(context_, kVolumeKind, request.name(), "VolumeDeleted", "deleted");
    return Status::OK();
  }

  Result<v1::AttachInfo> AttachVolume(const v1::AttachVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end()) return Missing("volume", request.name());
    v1::VolumeStatus& status = *it->second.mutable_status();
    if (status.attached_to().empty()) {
      status.set_attached_to(request.attacher());
      status.set_phase(v1::VOLUME_PHASE_ATTACHED);
    } else if (status.attached_to() != request.attacher()) {
      return hci::FailedPrecondition("volume " + Quote(request.name()) + " is attached to " +
                                     Quote(status.attached_to()) + ", not " +
                                     Quote(request.attacher()));
    }
    // What QEMU gets as -blockdev: a compute plugin passes it through without knowing which
    // storage plugin made it.
    v1::AttachInfo info;
    auto& fields = *info.mutable_blockdev()->mutable_fields();
    fields["driver"].set_string_value("null-co");
    fields["size"].set_number_value(static_cast<double>(it->second.spec().size_bytes()));
    fields["read-zeroes"].set_bool_value(true);
    return info;
  }

  Status DetachVolume(const v1::DetachVolumeRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(request.name());
    if (it == volumes_.end() || it->second.status().attached_to() != request.attacher()) {
      return Status::OK();
    }
    it->second.mutable_status()->clear_attached_to();
    it->second.mutable_status()->set_phase(v1::VOLUME_PHASE_AVAILABLE);
    return Status::OK();
  }

 private:
  static Status ValidateSpec(const v1::VolumeSpec& spec) {
    if (spec.source().source_case() != v1::VolumeSource::SOURCE_NOT_SET) {
      return NotClaimed("spec.source", "creating a volume from an image, snapshot or volume");
    }
    if (spec.linked_clone()) return NotClaimed("spec.linked_clone", "a linked clone");
    if (spec.replica_count() > 1) {
      return hci::InvalidArgument("spec.replica_count: " + std::to_string(spec.replica_count()) +
                                  " is more than the one copy this backend keeps");
    }
    if (spec.size_bytes() == 0 || spec.size_bytes() % kBlockBytes != 0) {
      return hci::InvalidArgument("spec.size_bytes: " + std::to_string(spec.size_bytes()) +
                                  " is not a positive multiple of 4096");
    }
    return Status::OK();
  }

  hci::PluginContext& context_;
  const StorageOptions options_;
  std::mutex mu_;
  std::map<std::string, v1::Volume> volumes_;
  std::uint64_t allocated_ = 0;  // Sum of the volumes' sizes, against options_.capacity_bytes.
};

}  // namespace

Result<std::unique_ptr<hci::StorageBackend>> MakeStorage(hci::PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(StorageOptions options, ParseStorageOptions(context.options()));
  return std::unique_ptr<hci::StorageBackend>(std::make_unique<ExampleStorage>(context, options));
}

}  // namespace example
