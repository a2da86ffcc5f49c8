// What the unit tests use instead of a Host: a PluginContext whose events are recorded and whose
// state directory is a fresh temporary directory. The factories are called with it directly, so
// the tests run the plugin's code without the core's checks in front of it (the integration test,
// host_test.cc, loads the real .so through a Host for that).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "example_internal.h"
#include "hci/hci.h"

namespace example::testing {

/// Records every event published through it.
class RecordingSink final : public hci::EventSink {
 public:
  void Publish(const hci::v1::Event& event) override {
    std::lock_guard lock(mu_);
    events_.push_back(event);
  }
  /// The reasons of the events published so far, in order.
  std::vector<std::string> reasons() const {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (const auto& event : events_) out.push_back(event.reason());
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<hci::v1::Event> events_;
};

/// A PluginContext for one backend binding with `options`. set_storage() lets a backend reach a
/// storage backend, as PluginContext::storage() does under a Host.
class TestContext final : public hci::PluginContext {
 public:
  explicit TestContext(google::protobuf::Struct options = {})
      : options_(std::move(options)), tracker_(hci::MakeOperationTracker(&events_)) {
    std::string pattern = ::testing::TempDir() + "hci-example-test-XXXXXX";
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    state_dir_ = pattern;
  }
  ~TestContext() override {
    std::error_code ignored;
    std::filesystem::remove_all(state_dir_, ignored);
  }

  const std::string& plugin_name() const override { return plugin_name_; }
  const std::string& node_name() const override { return node_name_; }
  const std::string& state_dir() const override { return state_dir_; }
  const google::protobuf::Struct& options() const override { return options_; }
  const hci::Logger& logger() const override { return logger_; }
  hci::EventSink& events() override { return events_; }
  hci::OperationTracker& operations() override { return *tracker_; }
  hci::ComputeBackend* compute() override { return nullptr; }
  hci::StorageBackend* storage() override { return storage_; }
  hci::NetworkBackend* network() override { return nullptr; }
  hci::ImageBackend* image() override { return nullptr; }
  hci::BackupBackend* backup() override { return nullptr; }

  const RecordingSink& recorded() const { return events_; }
  void set_storage(hci::StorageBackend* storage) { storage_ = storage; }

 private:
  std::string plugin_name_ = kPluginName;
  std::string node_name_ = "node-1";
  std::string state_dir_;
  google::protobuf::Struct options_;
  hci::Logger logger_;    // Drops everything.
  RecordingSink events_;  // Before tracker_, which publishes to it.
  std::unique_ptr<hci::OperationTracker> tracker_;
  hci::StorageBackend* storage_ = nullptr;
};

/// The backend a factory made; fails the test (and returns nullptr) when it failed.
template <typename T>
std::unique_ptr<T> Made(hci::Result<std::unique_ptr<T>> made) {
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? std::move(made).MoveValueUnsafe() : nullptr;
}

/// A Struct from one key and a number, for options.
inline google::protobuf::Struct NumberOption(const std::string& key, double value) {
  google::protobuf::Struct options;
  (*options.mutable_fields())[key].set_number_value(value);
  return options;
}

/// A request that only carries a name (`GetVmRequest`, `DeleteVolumeRequest`, ...).
template <typename Request>
Request Named(const std::string& name) {
  Request request;
  request.set_name(name);
  return request;
}

}  // namespace example::testing
