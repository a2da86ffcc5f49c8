// A good plugin for the loader tests: one trivial storage backend, defined with HCI_PLUGIN.
#include <atomic>
#include <memory>
#include <string>

#include "hci/plugin.h"

namespace {

// Process-wide while the library stays mapped: a count that restarts at 1 would mean the library
// was unloaded and mapped again.
std::atomic<int> factory_calls{0};

// Holds no volumes; every required method answers as for an empty store.
class EmptyStorage final : public hci::StorageBackend {
 public:
  explicit EmptyStorage(int instance) : instance_(instance) {}

  hci::v1::StorageCapabilities Capabilities() const override { return {}; }
  hci::Result<hci::v1::Volume> CreateVolume(const hci::v1::CreateVolumeRequest&) override {
    return hci::Unimplemented("CreateVolume is not implemented by the loader-good test plugin");
  }
  hci::Result<hci::v1::Volume> GetVolume(const hci::v1::GetVolumeRequest& request) override {
    return hci::NotFound("volume \"" + request.name() + "\" does not exist");
  }
  hci::Result<hci::v1::ListVolumesResponse> ListVolumes(
      const hci::v1::ListVolumesRequest&) override {
    return hci::v1::ListVolumesResponse();
  }
  hci::Status DeleteVolume(const hci::v1::DeleteVolumeRequest&) override { return {}; }
  hci::Result<hci::v1::AttachInfo> AttachVolume(const hci::v1::AttachVolumeRequest&) override {
    return hci::Unimplemented("AttachVolume is not implemented by the loader-good test plugin");
  }
  hci::Status DetachVolume(const hci::v1::DetachVolumeRequest&) override { return {}; }
  hci::Result<std::string> Metrics() override {
    return "loader_good_factory_call " + std::to_string(instance_) + "\n";
  }

 private:
  int instance_;
};

hci::Result<std::unique_ptr<hci::StorageBackend>> MakeStorage(hci::PluginContext&) {
  return std::unique_ptr<hci::StorageBackend>(std::make_unique<EmptyStorage>(++factory_calls));
}

}  // namespace

HCI_PLUGIN("loader-good", "1.2.3", {.storage = &MakeStorage})
