// The mock's FaultInjector: faults shared by the five mock backends of one Host.
#include <algorithm>
#include <array>
#include <map>
#include <string>
#include <thread>
#include <utility>

#include "mock_internal.h"

namespace hci::mock {
namespace {

// Every method of the five backend interfaces (Metrics is common to all).
constexpr std::array<std::string_view, 49> kBackendMethods = {
    // ComputeBackend
    "CreateVm", "GetVm", "ListVms", "DeleteVm", "StartVm", "StopVm", "RestartVm", "PauseVm",
    "ResumeVm", "MigrateVm", "ReadConsole", "AttachConsole", "VmMetrics", "ResizeDisk",
    // StorageBackend
    "CreateVolume", "GetVolume", "ListVolumes", "DeleteVolume", "AttachVolume", "DetachVolume",
    "ExpandVolume", "CreateSnapshot", "ListSnapshots", "DeleteSnapshot", "RevertVolume",
    "GetChangedBlocks", "ScrubVolume",
    // NetworkBackend
    "CreateNetwork", "GetNetwork", "ListNetworks", "DeleteNetwork", "CreatePort", "GetPort",
    "ListPorts", "DeletePort",
    // ImageBackend
    "ImportImage", "GetImage", "ListImages", "DeleteImage",
    // BackupBackend
    "CreateBackupTarget", "GetBackupTarget", "ListBackupTargets", "DeleteBackupTarget",
    "CreateBackup", "GetBackup", "ListBackups", "DeleteBackup", "RestoreBackup",
    // Backend
    "Metrics"};

constexpr int kMaxStatusCode = static_cast<int>(StatusCode::kUnauthenticated);

}  // namespace

bool IsBackendMethod(std::string_view op) {
  return std::find(kBackendMethods.begin(), kBackendMethods.end(), op) != kBackendMethods.end();
}

Status ValidateFault(const v1::Fault& fault, std::string_view prefix) {
  std::string p(prefix);
  if (!p.empty()) p += '.';
  if (fault.operation().empty()) {
    return InvalidArgument(p + "operation: is required (a backend method name such as " +
                           "\"CreateVolume\", or \"*\" for every method)");
  }
  if (fault.operation() != "*" && !IsBackendMethod(fault.operation())) {
    return InvalidArgument(p + "operation: " + Quote(fault.operation()) +
                           " is not a backend method (use a name such as \"CreateVolume\" or "
                           "\"StartVm\", or \"*\")");
  }
  if (fault.code() < 0 || fault.code() > kMaxStatusCode) {
    return InvalidArgument(p + "code: " + std::to_string(fault.code()) +
                           " is not a status code (0-" + std::to_string(kMaxStatusCode) + ")");
  }
  return Status();
}

// ---------------------------------------------------------------------------------------------

Status MockFaults::Inject(const v1::Fault& fault) {
  HCI_RETURN_NOT_OK(ValidateFault(fault, "fault"));
  std::lock_guard lock(mu_);
  entries_.push_back(Entry{fault, true, BackendKind::kCompute, fault.count()});
  return Status();
}

void MockFaults::Clear() {
  std::lock_guard lock(mu_);
  entries_.clear();
}

void MockFaults::AddScoped(BackendKind kind, const v1::Fault& fault) {
  std::lock_guard lock(mu_);
  entries_.push_back(Entry{fault, false, kind, fault.count()});
}

Status MockFaults::OnCall(BackendKind kind, std::string_view op, std::uint32_t extra_latency_ms) {
  std::uint64_t latency_ms = extra_latency_ms;
  Status result;
  {
    std::lock_guard lock(mu_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      const v1::Fault& f = it->fault;
      bool matches =
          (it->all_kinds || it->kind == kind) && (f.operation() == "*" || f.operation() == op);
      if (!matches) {
        ++it;
        continue;
      }
      latency_ms += f.latency_ms();
      if (result.ok() && f.code() != 0) {
        std::string message = f.message().empty() ? "injected fault" : f.message();
        result = Status(static_cast<StatusCode>(f.code()),
                        std::string(op) + ": " + message + " (hci-mock fault injection)");
      }
      if (it->remaining != 0 && --it->remaining == 0) {
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (latency_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(latency_ms));
  return result;
}

std::shared_ptr<MockFaults> SharedFaults(PluginContext& context) {
  // Keyed by the Host's operation tracker: every PluginContext of one Host returns the same
  // tracker, and the Host outlives its backends (which hold the injector).
  static std::mutex mu;
  static std::map<const void*, std::weak_ptr<MockFaults>> registry;
  const void* key = &context.operations();
  std::lock_guard lock(mu);
  std::erase_if(registry, [](const auto& entry) { return entry.second.expired(); });
  if (auto it = registry.find(key); it != registry.end()) {
    if (auto faults = it->second.lock()) return faults;
  }
  auto faults = std::make_shared<MockFaults>();
  registry[key] = faults;
  return faults;
}

}  // namespace hci::mock
