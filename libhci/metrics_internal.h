// The core's own counters, rendered in Prometheus text exposition format 0.0.4.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>

#include "hci/status.h"

namespace hci::internal {

class CoreMetrics {
 public:
  // Counts one backend call and its duration.
  void RecordCall(std::string_view kind, std::string_view plugin, std::string_view operation,
                  StatusCode code, double seconds);
  // hci_backend_requests_total{kind,plugin,operation,code} and
  // hci_backend_request_duration_seconds_{sum,count}{kind,plugin,operation}.
  std::string Text() const;

 private:
  using OpKey = std::tuple<std::string, std::string, std::string>;
  struct Duration {
    double sum = 0;
    std::uint64_t count = 0;
  };
  mutable std::mutex mu_;
  std::map<std::tuple<std::string, std::string, std::string, std::string>, std::uint64_t> calls_;
  std::map<OpKey, Duration> durations_;
};

}  // namespace hci::internal
