#include "metrics_internal.h"

#include <fmt/format.h>

namespace hci::internal {

void CoreMetrics::RecordCall(std::string_view kind, std::string_view plugin,
                             std::string_view operation, StatusCode code, double seconds) {
  std::lock_guard lock(mu_);
  ++calls_[{std::string(kind), std::string(plugin), std::string(operation),
            std::string(StatusCodeName(code))}];
  auto& d = durations_[{std::string(kind), std::string(plugin), std::string(operation)}];
  d.sum += seconds;
  ++d.count;
}

std::string CoreMetrics::Text() const {
  std::lock_guard lock(mu_);
  std::string out;
  out += "# HELP hci_backend_requests_total Backend calls made through the core, by result.\n";
  out += "# TYPE hci_backend_requests_total counter\n";
  for (const auto& [key, n] : calls_) {
    const auto& [kind, plugin, op, code] = key;
    out += fmt::format(
        "hci_backend_requests_total{{kind=\"{}\",plugin=\"{}\",operation=\"{}\",code=\"{}\"}} {}\n",
        kind, plugin, op, code, n);
  }
  out += "# HELP hci_backend_request_duration_seconds Time spent in backend calls.\n";
  out += "# TYPE hci_backend_request_duration_seconds summary\n";
  for (const auto& [key, d] : durations_) {
    const auto& [kind, plugin, op] = key;
    auto labels = fmt::format("kind=\"{}\",plugin=\"{}\",operation=\"{}\"", kind, plugin, op);
    out += fmt::format("hci_backend_request_duration_seconds_sum{{{}}} {:.6f}\n", labels, d.sum);
    out += fmt::format("hci_backend_request_duration_seconds_count{{{}}} {}\n", labels, d.count);
  }
  return out;
}

}  // namespace hci::internal
