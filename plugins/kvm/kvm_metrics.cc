// Per-VM metrics with KubeVirt's names, from /proc and QMP query-blockstats.
#include <charconv>
#include <cstdio>
#include <string>

#include "hci/prometheus.h"
#include "kvm_internal.h"

namespace hci::kvm {
namespace {

std::string FormatSeconds(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3f", v);
  return buf;
}

}  // namespace

Result<double> ParseStatCpuSeconds(std::string_view stat, long ticks_per_second) {
  if (ticks_per_second <= 0) return InvalidArgument("ticks_per_second: must be positive");
  // "pid (comm) state ppid ...": comm may hold spaces and ')', so fields count from the last ')'.
  auto close = stat.rfind(')');
  if (close == std::string_view::npos) return InvalidArgument("stat: no \"(comm)\" field");
  std::string_view rest = stat.substr(close + 1);
  // Fields 3.. of proc(5); utime is field 14 and stime field 15.
  int field = 2;
  std::uint64_t utime = 0, stime = 0;
  bool have_u = false, have_s = false;
  std::size_t i = 0;
  while (i < rest.size() && !(have_u && have_s)) {
    while (i < rest.size() && rest[i] == ' ') ++i;
    std::size_t j = i;
    while (j < rest.size() && rest[j] != ' ' && rest[j] != '\n') ++j;
    if (j == i) break;
    ++field;
    if (field == 14 || field == 15) {
      std::uint64_t v = 0;
      auto [ptr, ec] = std::from_chars(rest.data() + i, rest.data() + j, v);
      if (ec != std::errc() || ptr != rest.data() + j) {
        return InvalidArgument("stat: field " + std::to_string(field) + " is not a number");
      }
      (field == 14 ? utime : stime) = v;
      (field == 14 ? have_u : have_s) = true;
    }
    i = j;
  }
  if (!have_u || !have_s) return InvalidArgument("stat: fewer than 15 fields");
  return static_cast<double>(utime + stime) / static_cast<double>(ticks_per_second);
}

Result<std::uint64_t> ParseVmRssBytes(std::string_view status) {
  std::size_t pos = 0;
  while (pos < status.size()) {
    std::size_t end = status.find('\n', pos);
    if (end == std::string_view::npos) end = status.size();
    std::string_view line = status.substr(pos, end - pos);
    pos = end + 1;
    if (!line.starts_with("VmRSS:")) continue;
    line.remove_prefix(6);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    std::uint64_t kib = 0;
    auto [ptr, ec] = std::from_chars(line.data(), line.data() + line.size(), kib);
    if (ec != std::errc()) return InvalidArgument("status: VmRSS is not a number");
    std::string_view unit(ptr, static_cast<std::size_t>(line.data() + line.size() - ptr));
    if (unit.find("kB") == std::string_view::npos) {
      return InvalidArgument("status: VmRSS is not in kB");
    }
    return kib * 1024;
  }
  return NotFound("status: no VmRSS line (a kernel thread, or the process is exiting)");
}

std::string RenderVmMetrics(std::string_view name, std::string_view node,
                            const std::vector<double>& vcpu_seconds, std::uint64_t rss_bytes,
                            const std::vector<DriveStats>& drives) {
  std::string base =
      "name=\"" + EscapePrometheusLabel(name) + "\",node=\"" + EscapePrometheusLabel(node) + "\"";
  std::string out;
  AppendPrometheusHeader(&out, "kubevirt_vmi_vcpu_seconds_total", "counter",
                         "Total amount of time spent in each state by each vcpu (cpu_id).");
  for (std::size_t i = 0; i < vcpu_seconds.size(); ++i) {
    out += "kubevirt_vmi_vcpu_seconds_total{id=\"" + std::to_string(i) + "\"," + base +
           ",state=\"running\"} " + FormatSeconds(vcpu_seconds[i]) + "\n";
  }
  AppendPrometheusHeader(&out, "kubevirt_vmi_memory_resident_bytes", "gauge",
                         "Resident set size of the process running the domain.");
  out += "kubevirt_vmi_memory_resident_bytes{" + base + "} " + std::to_string(rss_bytes) + "\n";
  struct Series {
    const char* metric;
    const char* help;
    std::uint64_t DriveStats::*field;
  };
  const Series kSeries[] = {
      {"kubevirt_vmi_storage_read_traffic_bytes_total", "Total number of bytes read from storage.",
       &DriveStats::read_bytes},
      {"kubevirt_vmi_storage_write_traffic_bytes_total", "Total number of written bytes.",
       &DriveStats::write_bytes},
      {"kubevirt_vmi_storage_iops_read_total", "Total number of I/O read operations.",
       &DriveStats::read_ops},
      {"kubevirt_vmi_storage_iops_write_total", "Total number of I/O write operations.",
       &DriveStats::write_ops},
  };
  for (const auto& s : kSeries) {
    AppendPrometheusHeader(&out, s.metric, "counter", s.help);
    for (const auto& d : drives) {
      out += std::string(s.metric) + "{drive=\"" + EscapePrometheusLabel(d.drive) + "\"," + base +
             "} " + std::to_string(d.*(s.field)) + "\n";
    }
  }
  return out;
}

}  // namespace hci::kvm
