// The core's wrappers around plugin backends. What the embedder (and other plugins, through
// PluginContext) call is always one of these: names are validated before the plugin sees a
// request, a second mutating call on an object whose first is still running gets Aborted (as
// CSI asks), exceptions never cross the boundary, and every call is logged and counted.
#pragma once

#include <memory>
#include <string>

#include "hci/backup.h"
#include "hci/compute.h"
#include "hci/image.h"
#include "hci/logging.h"
#include "hci/network.h"
#include "hci/storage.h"
#include "metrics_internal.h"

namespace hci::internal {

std::unique_ptr<ComputeBackend> GuardCompute(std::unique_ptr<ComputeBackend> inner,
                                             std::string plugin, Logger logger,
                                             CoreMetrics* metrics);
std::unique_ptr<StorageBackend> GuardStorage(std::unique_ptr<StorageBackend> inner,
                                             std::string plugin, Logger logger,
                                             CoreMetrics* metrics);
std::unique_ptr<NetworkBackend> GuardNetwork(std::unique_ptr<NetworkBackend> inner,
                                             std::string plugin, Logger logger,
                                             CoreMetrics* metrics);
std::unique_ptr<ImageBackend> GuardImage(std::unique_ptr<ImageBackend> inner, std::string plugin,
                                         Logger logger, CoreMetrics* metrics);
std::unique_ptr<BackupBackend> GuardBackup(std::unique_ptr<BackupBackend> inner,
                                           std::string plugin, Logger logger,
                                           CoreMetrics* metrics);

}  // namespace hci::internal
