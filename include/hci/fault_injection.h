// Fault injection: make chosen backend calls fail or slow down, for testing embedders.
#pragma once

#include "hci/export.h"
#include "hci/status.h"
#include "hci/v1/testing.pb.h"

namespace hci {

/// Implemented by backends that support fault injection (the mock plugin); reached through
/// Backend::fault_injector(). Thread-safe.
class HCI_EXPORT FaultInjector {
 public:
  virtual ~FaultInjector();
  /// Adds a fault: the next `fault.count` calls of `fault.operation` (0: all calls until
  /// cleared) fail with `fault.code` after `fault.latency_ms`. InvalidArgument when the code is
  /// out of range.
  virtual Status Inject(const v1::Fault& fault) = 0;
  /// Removes every fault.
  virtual void Clear() = 0;
};

}  // namespace hci
