// What every backend interface has in common.
#pragma once

#include <string>
#include <string_view>

#include "hci/export.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci {

/// The five kinds of backend a plugin can provide.
enum class BackendKind { kCompute, kStorage, kNetwork, kImage, kBackup };

/// Every kind, for iterating over them.
inline constexpr BackendKind kAllBackendKinds[] = {BackendKind::kCompute, BackendKind::kStorage,
                                                   BackendKind::kNetwork, BackendKind::kImage,
                                                   BackendKind::kBackup};

/// "compute", "storage", "network", "image", "backup".
HCI_EXPORT std::string_view BackendKindName(BackendKind kind);

class FaultInjector;

/// Base of the five backend interfaces. Backends are created by plugin factories, owned by the
/// Host and called from any thread: implementations must be thread-safe.
///
/// Every method returns a Status or Result and never throws; the core additionally turns an
/// escaped exception into Internal. Optional methods default to Unimplemented and are paired with
/// a capability flag in the kind's Capabilities message.
class HCI_EXPORT Backend {
 public:
  virtual ~Backend();

  /// Test hook: the backend's fault injector, or nullptr (the default) when it has none.
  virtual FaultInjector* fault_injector() { return nullptr; }

  /// Backend-wide metrics in Prometheus text exposition format 0.0.4. Default: Unimplemented.
  virtual Result<std::string> Metrics();

 protected:
  Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
};

/// Unimplemented("<operation> is not implemented by this <kind> backend"), for optional methods.
HCI_EXPORT Status NotImplemented(BackendKind kind, std::string_view operation);

}  // namespace hci
