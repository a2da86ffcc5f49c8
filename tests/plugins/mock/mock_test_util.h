// Helpers shared by the mock plugin's unit and integration tests.
#pragma once

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hci/hci.h"

namespace hci::mock::testing {

/// Collects events (as an EventSink or a Host::Subscribe callback) and waits for them.
class EventLog final : public EventSink {
 public:
  void Publish(const v1::Event& event) override {
    {
      std::lock_guard lock(mu_);
      events_.push_back(event);
    }
    cv_.notify_all();
  }

  EventCallback Callback() {
    return [this](const v1::Event& event) { Publish(event); };
  }

  std::vector<v1::Event> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }

  /// Waits (up to a generous 5 s) until an event satisfies `match`; returns it or nullopt.
  std::optional<v1::Event> WaitFor(const std::function<bool(const v1::Event&)>& match) {
    std::unique_lock lock(mu_);
    std::optional<v1::Event> found;
    cv_.wait_for(lock, std::chrono::seconds(5), [&] {
      for (const auto& e : events_) {
        if (match(e)) {
          found = e;
          return true;
        }
      }
      return false;
    });
    return found;
  }

  /// Events whose reason is `reason`, in order.
  std::vector<v1::Event> WithReason(const std::string& reason) const {
    std::vector<v1::Event> out;
    for (const auto& e : events()) {
      if (e.reason() == reason) out.push_back(e);
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::Event> events_;
};

/// Parses a JSON object into a Struct (for plugin options); fails the test on bad JSON.
inline google::protobuf::Struct Options(const std::string& json) {
  google::protobuf::Struct s;
  auto status = google::protobuf::util::JsonStringToMessage(json, &s);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return s;
}

inline v1::CreateVmRequest VmRequest(const std::string& name, std::uint32_t vcpus = 1,
                                     std::uint64_t memory_mib = 256) {
  v1::CreateVmRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_vcpus(vcpus);
  r.mutable_spec()->set_memory_mib(memory_mib);
  return r;
}

inline v1::CreateVolumeRequest VolumeRequest(const std::string& name, std::uint64_t size) {
  v1::CreateVolumeRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_size_bytes(size);
  return r;
}

inline v1::CreateNetworkRequest VlanRequest(const std::string& name, std::uint32_t vlan) {
  v1::CreateNetworkRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_type(v1::NETWORK_TYPE_L2_VLAN);
  r.mutable_spec()->set_vlan_id(vlan);
  return r;
}

inline v1::ImportImageRequest ImageRequest(const std::string& name,
                                           const std::string& url = "https://example.com/a.img") {
  v1::ImportImageRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_url(url);
  return r;
}

template <typename Req>
Req Named(const std::string& name) {
  Req r;
  r.set_name(name);
  return r;
}

inline v1::Fault MakeFault(const std::string& operation, StatusCode code, std::uint32_t count = 0,
                           std::uint32_t latency_ms = 0) {
  v1::Fault f;
  f.set_operation(operation);
  f.set_code(static_cast<int>(code));
  f.set_count(count);
  f.set_latency_ms(latency_ms);
  return f;
}

}  // namespace hci::mock::testing
