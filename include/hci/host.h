// hci::Host: the embedder's entry point. One Host per node.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hci/backup.h"
#include "hci/compute.h"
#include "hci/events.h"
#include "hci/export.h"
#include "hci/image.h"
#include "hci/logging.h"
#include "hci/network.h"
#include "hci/operation.h"
#include "hci/result.h"
#include "hci/storage.h"
#include "hci/v1/host.pb.h"

namespace hci {

/// What the embedder supplies besides the config.
struct HostOptions {
  /// Where log lines go; nullptr: spdlog to stderr (MakeStderrLogSink()).
  std::shared_ptr<LogSink> log_sink;
  /// Receives every event, in order, from the core's dispatch thread; may be nullptr
  /// (Host::Subscribe adds receivers too).
  std::shared_ptr<EventSink> event_sink;
};

/// Loads plugins, creates the configured backends and gives the embedder access to them.
///
/// The backends returned by compute(), storage(), ... are the core's wrappers around the plugin's
/// backends: they validate names (RFC 1123), refuse a second mutating call on an object while one
/// is pending (Aborted), turn escaped exceptions into Internal, log and count every call. They
/// are valid for the Host's lifetime and safe to call from any thread.
class HCI_EXPORT Host {
 public:
  /// Opens a host: creates `config.state_dir` (0700) if needed, loads `config.plugin_files`
  /// (absolute paths), then scans `config.plugin_dirs` (empty: $HCI_PLUGIN_PATH,
  /// colon-separated, else the installed plugin directory), loads every acceptable plugin with
  /// the same checks, and creates the configured backends.
  ///
  /// Only one Host at a time manages a state directory (an flock on `<state_dir>/host.lock`,
  /// released when the Host is destroyed or its process dies).
  ///
  /// A refused plugin does not stop the others; it appears in plugins() with the reason. Errors:
  /// InvalidArgument naming the config field (a bad node name, a backend binding without a
  /// plugin); FailedPrecondition when another Host holds the state directory; NotFound when a configured plugin was not found or was refused (with the reason);
  /// a backend factory's own error, prefixed with the plugin and kind.
  static Result<std::unique_ptr<Host>> Open(const v1::HostConfig& config,
                                            HostOptions options = {});

  /// Reads a host config from a YAML file (see hci/yaml.h for the rules); errors name the field
  /// path and the line.
  static Result<v1::HostConfig> LoadConfig(const std::string& path);

  /// $HCI_STATE_DIR if set; else /var/lib/hci for root; else $XDG_STATE_HOME/hci or
  /// ~/.local/state/hci.
  static std::string DefaultStateDir();

  ~Host();
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  /// The effective config (defaults filled in: node_name, state_dir, plugin_dirs).
  const v1::HostConfig& config() const;

  ///@{
  /// The backend of each kind; FailedPrecondition when no plugin serves that kind
  /// (`backends.<kind>` unset in the config).
  Result<ComputeBackend*> compute() const;
  Result<StorageBackend*> storage() const;
  Result<NetworkBackend*> network() const;
  Result<ImageBackend*> image() const;
  Result<BackupBackend*> backup() const;
  ///@}

  /// Every plugin file the loader looked at, loaded or refused (with the reason), in scan order.
  std::vector<v1::PluginInfo> plugins() const;

  /// Registers `callback` for every event from now on (see EventSink for threading).
  Subscription Subscribe(EventCallback callback);

  /// Blocks until every event published before the call has been delivered to every
  /// subscriber, e.g. so that a command shows the events of the calls it just made. Returns at
  /// once when called from a subscriber callback (the delivering thread cannot wait for itself).
  void FlushEvents() const;

  /// Operations still running or finished in the last 10 minutes, oldest first.
  std::vector<v1::OperationStatus> ListOperations() const;
  /// NotFound when no such operation is tracked.
  Result<Operation> GetOperation(std::string_view id) const;

  /// The core's logger (component "core").
  const Logger& logger() const;

  /// Prometheus text exposition of the core's counters (hci_backend_requests_total,
  /// hci_backend_request_duration_seconds) followed by each backend's Metrics().
  std::string Metrics() const;

 private:
  struct Impl;
  explicit Host(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hci
