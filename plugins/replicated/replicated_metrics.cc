// Metrics with Longhorn's names (longhorn/longhorn-manager metrics_collector) where the meaning is
// the same, plus the engines' I/O counters.
#include <string>

#include "hci/prometheus.h"
#include "replicated_internal.h"

namespace hci::replicated::plugin {
namespace {

// Longhorn's longhorn_volume_state values.
int LonghornState(api::VolumePhase phase) {
  switch (phase) {
    case api::VOLUME_PHASE_CREATING:
      return 1;
    case api::VOLUME_PHASE_ATTACHED:
      return 2;
    case api::VOLUME_PHASE_AVAILABLE:
      return 3;
    case api::VOLUME_PHASE_DELETING:
      return 6;
    default:
      return 0;
  }
}

}  // namespace

std::string RenderMetrics(const std::vector<api::Volume>& volumes,
                          const std::map<std::string, rpb::EngineStatus>& engines) {
  std::string out;
  struct Gauge {
    const char* name;
    const char* help;
    std::uint64_t (*value)(const api::Volume&);
  };
  const Gauge gauges[] = {
      {"longhorn_volume_actual_size_bytes",
       "Actual space used by the volume's largest replica on its node, in bytes",
       [](const api::Volume& v) { return v.status().actual_size_bytes(); }},
      {"longhorn_volume_capacity_bytes", "Configured size in bytes for this volume",
       [](const api::Volume& v) { return v.status().capacity_bytes(); }},
      {"longhorn_volume_state",
       "State of this volume: 1=creating, 2=attached, 3=detached, 4=attaching, 5=detaching, "
       "6=deleting",
       [](const api::Volume& v) {
         return static_cast<std::uint64_t>(LonghornState(v.status().phase()));
       }},
      {"longhorn_volume_robustness",
       "Robustness of this volume: 0=unknown, 1=healthy, 2=degraded, 3=faulted",
       [](const api::Volume& v) { return static_cast<std::uint64_t>(v.status().robustness()); }},
  };
  for (const Gauge& g : gauges) {
    AppendPrometheusHeader(&out, g.name, "gauge", g.help);
    for (const auto& v : volumes) {
      out += std::string(g.name) + "{volume=\"" + EscapePrometheusLabel(v.metadata().name()) +
             "\"} " + std::to_string(g.value(v)) + "\n";
    }
  }
  // The newest scrub of each volume that had one (VolumeStatus.last_scrub).
  const Gauge scrub_gauges[] = {
      {"hci_replicated_volume_last_scrub_mismatched_bytes",
       "Bytes, summed over replicas, that differed from the agreeing replicas in the volume's "
       "newest scrub",
       [](const api::Volume& v) { return v.status().last_scrub().mismatched_bytes(); }},
      {"hci_replicated_volume_last_scrub_repaired_bytes",
       "Bytes rewritten on differing replicas by the volume's newest scrub",
       [](const api::Volume& v) { return v.status().last_scrub().repaired_bytes(); }},
      {"hci_replicated_volume_last_scrub_timestamp_seconds",
       "When the volume's newest scrub ended, in seconds since the Unix epoch",
       [](const api::Volume& v) {
         return static_cast<std::uint64_t>(v.status().last_scrub().end_time().seconds());
       }},
  };
  for (const Gauge& g : scrub_gauges) {
    AppendPrometheusHeader(&out, g.name, "gauge", g.help);
    for (const auto& v : volumes) {
      if (!v.status().has_last_scrub()) continue;
      out += std::string(g.name) + "{volume=\"" + EscapePrometheusLabel(v.metadata().name()) +
             "\"} " + std::to_string(g.value(v)) + "\n";
    }
  }
  struct Counter {
    const char* name;
    const char* help;
    std::uint64_t (*value)(const rpb::EngineStatus&);
  };
  const Counter counters[] = {
      {"hci_replicated_volume_read_bytes_total", "Bytes read by the engine since it started",
       [](const rpb::EngineStatus& s) { return s.read_bytes(); }},
      {"hci_replicated_volume_write_bytes_total", "Bytes written by the engine since it started",
       [](const rpb::EngineStatus& s) { return s.write_bytes(); }},
      {"hci_replicated_volume_read_ops_total", "Read requests served since the engine started",
       [](const rpb::EngineStatus& s) { return s.read_ops(); }},
      {"hci_replicated_volume_write_ops_total", "Write requests served since the engine started",
       [](const rpb::EngineStatus& s) { return s.write_ops(); }},
      {"hci_replicated_volume_failed_ops_total",
       "Requests the engine answered with an error since it started",
       [](const rpb::EngineStatus& s) { return s.failed_ops(); }},
  };
  for (const Counter& c : counters) {
    AppendPrometheusHeader(&out, c.name, "counter", c.help);
    for (const auto& [volume, status] : engines) {
      out += std::string(c.name) + "{volume=\"" + EscapePrometheusLabel(volume) + "\"} " +
             std::to_string(c.value(status)) + "\n";
    }
  }
  return out;
}

}  // namespace hci::replicated::plugin
