// A plugin for guarded_backends_test.cc: a storage backend that misbehaves on request, so the
// test can watch what the core's wrapper does about it. Behaviour is chosen by volume name.
#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "hci/plugin.h"

namespace {

class ProbeStorage final : public hci::StorageBackend {
 public:
  explicit ProbeStorage(hci::PluginContext& context) : context_(context) {}

  hci::v1::StorageCapabilities Capabilities() const override { return {}; }

  hci::Result<hci::v1::Volume> CreateVolume(const hci::v1::CreateVolumeRequest& r) override {
    ++calls_;
    const std::string& name = r.metadata().name();
    if (name == "throws") throw std::runtime_error("boom");
    if (name == "throws-int") throw 42;
    if (name == "slow") std::this_thread::sleep_for(std::chrono::milliseconds(500));
    hci::v1::Volume v;
    *v.mutable_metadata() = r.metadata();
    return v;
  }
  hci::Result<hci::v1::Volume> GetVolume(const hci::v1::GetVolumeRequest& r) override {
    ++calls_;
    context_.logger().Info("volume", r.name(), "probe looked it up");
    hci::v1::Event event;
    event.set_reason("ProbeLookedUp");
    event.mutable_object()->set_kind("Volume");
    event.mutable_object()->set_name(r.name());
    context_.events().Publish(event);
    hci::v1::Volume v;
    v.mutable_metadata()->set_name(r.name());
    return v;
  }
  hci::Result<hci::v1::ListVolumesResponse> ListVolumes(
      const hci::v1::ListVolumesRequest&) override {
    ++calls_;
    return hci::v1::ListVolumesResponse();
  }
  hci::Status DeleteVolume(const hci::v1::DeleteVolumeRequest&) override {
    ++calls_;
    return {};
  }
  hci::Result<hci::v1::AttachInfo> AttachVolume(const hci::v1::AttachVolumeRequest&) override {
    ++calls_;
    return hci::v1::AttachInfo();
  }
  hci::Status DetachVolume(const hci::v1::DetachVolumeRequest&) override {
    ++calls_;
    return {};
  }
  // How many calls reached the plugin: the test checks that rejected ones did not.
  hci::Result<std::string> Metrics() override {
    return "core_probe_calls " + std::to_string(calls_.load()) + "\n";
  }

 private:
  hci::PluginContext& context_;
  std::atomic<int> calls_{0};
};

hci::Result<std::unique_ptr<hci::StorageBackend>> MakeStorage(hci::PluginContext& context) {
  return std::unique_ptr<hci::StorageBackend>(std::make_unique<ProbeStorage>(context));
}

// Fails the way a plugin should report bad options.
hci::Result<std::unique_ptr<hci::ComputeBackend>> MakeCompute(hci::PluginContext& context) {
  auto it = context.options().fields().find("fail");
  if (it != context.options().fields().end() && it->second.bool_value()) {
    return hci::InvalidArgument("options.fail: the probe was asked to fail");
  }
  throw std::runtime_error("the probe's compute factory throws unless options.fail is set");
}

}  // namespace

HCI_PLUGIN("core-probe", "0.0.1", {.compute = &MakeCompute, .storage = &MakeStorage})
