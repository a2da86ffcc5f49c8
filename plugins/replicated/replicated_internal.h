// Private declarations of the replicated StorageBackend plugin (docs/replicated-plugin.md):
// options, connections to the storage nodes' hci-replica-servers, engine processes, volume
// records and metrics. The plugin code lives in hci::replicated::plugin so that none of its names
// can collide with hci_replicated_core's, which is linked into the same shared object.
#pragma once

#include <google/protobuf/struct.pb.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "hci/plugin.h"
#include "hci/result.h"
#include "hci/status.h"
#include "hci/storage.h"
#include "replica.pb.h"

namespace hci::replicated::wire {
class Connection;
}  // namespace hci::replicated::wire

namespace hci::replicated::plugin {

/// libhci's API messages (hci.v1) and the replica protocol's (hci.replicated.v1).
namespace api = ::hci::v1;
namespace rpb = ::hci::replicated::v1;

/// The plugin's name, as registered with HCI_PLUGIN.
inline constexpr char kPluginName[] = "replicated";
/// Volume sizes are multiples of this many bytes.
inline constexpr std::uint64_t kBlockBytes = 4096;
/// The largest volume this plugin creates (1 PiB).
inline constexpr std::uint64_t kMaxVolumeBytes = 1ull << 50;
/// File name of the engine's nbdkit plugin.
inline constexpr char kEnginePluginFile[] = "nbdkit-hci-engine-plugin.so";

// ---------------------------------------------------------------------------------------------
// Options (replicated_options.cc)

/// One storage node: a running hci-replica-server.
struct NodeOption {
  /// RFC 1123 label; replicas are placed by it and records refer to it.
  std::string name;
  /// "host:port" (IPv4, "[IPv6]" or a resolvable name) or "unix:/path".
  std::string address;
};

/// Parsed backends.storage.options of a replicated binding.
struct Options {
  /// At least one; names unique.
  std::vector<NodeOption> nodes;
  /// Path of the shared secret file (mode 0600) and its bytes, verbatim.
  std::string secret_file;
  std::string secret;
  /// Absolute; holds volumes/ (records) and run/ (engine processes).
  std::string state_dir;
  /// Replicas of a volume whose spec.replica_count is 0; at most nodes.size().
  std::uint32_t replicas = 3;
  /// Replicas that must have a write before it is acknowledged; 0: a majority of each volume's.
  std::uint32_t write_quorum = 0;
  /// Absolute path of nbdkit-hci-engine-plugin.so.
  std::string engine_plugin;
  /// The nbdkit program, resolved in PATH.
  std::string nbdkit;
  /// Rebuild copy rate per engine, bytes per second; 0: unlimited.
  std::uint64_t rebuild_bytes_per_second = 0;
  /// A replica that does not answer within this long is failed by the engine; also the
  /// plugin's own deadline for a node's answer to a quick control request.
  std::chrono::milliseconds io_timeout{5000};
};

/// Parses the options Struct. Every error is InvalidArgument naming the option, e.g.
/// `nodes[1].address: "node-b" is not HOST:PORT or unix:/PATH` or
/// `secret_file: "/etc/hci/secret" cannot be read: No such file or directory`.
/// `default_state_dir` is the plugin context's state directory.
Result<Options> ParseOptions(const google::protobuf::Struct& options,
                             const std::string& default_state_dir);

/// Where the engine's nbdkit plugin is looked for when the `engine_plugin` option is not set:
/// `<directory of this plugin's .so>/../engine/` (the build tree and the install layout), then
/// `<libdir>/hci/engine/` of the install prefix. Paths in search order.
std::vector<std::string> EnginePluginCandidates();

/// Reads a shared secret file as hci-replica-server does: its bytes verbatim; refused when
/// group or others may access it, when empty, or larger than 64 KiB. Errors name `field`.
Result<std::string> ReadSecretFile(std::string_view field, const std::string& path);

// ---------------------------------------------------------------------------------------------
// Storage nodes (replicated_nodes.cc)

/// Control requests to one node's hci-replica-server over authenticated connections that are
/// kept for reuse (a few idle ones per node). Thread-safe.
class NodeClient {
 public:
  NodeClient(std::string node, std::string address, std::string secret,
             std::chrono::milliseconds dial_timeout);
  ~NodeClient();
  NodeClient(const NodeClient&) = delete;
  NodeClient& operator=(const NodeClient&) = delete;

  const std::string& node() const { return node_; }
  const std::string& address() const { return address_; }

  /// Sends one ControlRequest and waits up to `timeout` for its answer. Unavailable naming the
  /// node when it cannot be reached or does not answer in time; PermissionDenied when it refuses
  /// the secret; otherwise the status the server answered (NotFound, AlreadyExists, ...), with
  /// `*response` filled.
  Status Call(const rpb::ControlRequest& request, rpb::ControlResponse* response,
              std::chrono::milliseconds timeout);

 private:
  std::string node_;
  std::string address_;
  std::string secret_;
  std::chrono::milliseconds dial_timeout_;
  std::mutex mu_;
  std::vector<std::unique_ptr<wire::Connection>> idle_;
};

// ---------------------------------------------------------------------------------------------
// Engine processes (replicated_engine.cc)

/// Files of one volume's engine. `dir` is `<state_dir>/run/<volume>` (mode 0700); the sockets
/// are there too unless their paths would not fit a unix socket address (107 bytes), in which
/// case they go to `/tmp/hci-replicated-<uid>/<hash of dir>/` (0700, owned by this user).
struct EnginePaths {
  std::string dir;
  std::string config;    // binary EngineConfig, nbdkit's config=
  std::string pid_file;  // written by process::SpawnDaemon
  std::string log_file;  // nbdkit's stdout and stderr; the previous run's is log_file + ".1"
  std::string socket_dir;
  std::string nbd_socket;      // what QEMU connects to
  std::string control_socket;  // EngineRequest/EngineResponse
};

/// The paths of `volume`'s engine under `state_dir`.
EnginePaths EnginePathsFor(const std::string& state_dir, const std::string& volume);

/// The pid of the volume's running engine (its pid file names a live process whose command
/// line carries this volume's config= argument), or -1.
pid_t RunningEngine(const EnginePaths& paths);

/// Writes `config` to paths.config and starts `nbdkit --foreground --unix <nbd_socket>
/// --threads 16 <engine_plugin> config=<config>` as a daemon that outlives the embedder, then
/// waits up to `timeout` until its control socket answers a status request. On failure the
/// process is killed and the result is Unavailable with the tail of its log; filesystem errors
/// come back as their errno status.
Result<pid_t> StartEngine(const Options& options, const EnginePaths& paths,
                          const rpb::EngineConfig& config, std::chrono::milliseconds timeout);

/// Stops the volume's engine: SIGTERM, up to `grace` for it to exit, then SIGKILL. True when
/// it exited on SIGTERM (its replicas were left in step), false when it had to be killed or was
/// not running. Removes its sockets and pid file.
bool StopEngine(const EnginePaths& paths, std::chrono::milliseconds grace);

/// Sends one EngineRequest to the engine's control socket and returns its answer (whose `code`
/// may be an error: the caller decides). Unavailable when the socket does not answer within
/// `timeout`.
Result<rpb::EngineResponse> CallEngine(const std::string& control_socket,
                                       const rpb::EngineRequest& request,
                                       std::chrono::milliseconds timeout);

// ---------------------------------------------------------------------------------------------
// Volume records (replicated_records.cc)

/// One replica of a volume, as recorded.
struct Member {
  std::string name;  // "<volume>-r<k>", the replica's name on its node
  std::string node;
  /// The node's address when the replica was created; used when the node is no longer in
  /// the `nodes` option (the option's address wins otherwise).
  std::string address;
};

/// A volume as kept in memory and in `<state_dir>/volumes/<name>.json`.
struct VolumeRecord {
  /// metadata, the effective spec (replica_count resolved), and status.phase, attached_to and
  /// capacity_bytes; status.replicas and the rest are observed on every Get.
  api::Volume obj;
  /// What CreateVolume was given, for idempotent repeats.
  api::VolumeSpec requested;
  std::uint32_t write_quorum = 0;
  std::vector<Member> members;
  /// False from the moment an engine is started until it exits on SIGTERM: while false, the
  /// replicas may differ in the writes the engine had in flight, and only an engine (which
  /// resynchronises them at start) may touch them.
  bool engine_clean = true;
  /// A revert to this snapshot that has not reached every replica yet; attach is refused
  /// until a retried RevertVolume finishes it.
  std::string pending_revert;
  /// Metadata (uid, labels, creation time) of the snapshots made through the plugin, by name;
  /// which snapshots exist is read from the replicas.
  std::map<std::string, api::ObjectMeta> snapshots;
  /// Serialises the mutating calls on this volume (held across their network calls).
  std::shared_ptr<std::mutex> op = std::make_shared<std::mutex>();
};

/// Writes the record to `<dir>/<name>.json` atomically (temporary file, fsync, rename, fsync of
/// the directory).
Status SaveRecord(const std::string& dir, const VolumeRecord& record);
/// Removes `<dir>/<name>.json`; OK when absent.
Status RemoveRecord(const std::string& dir, const std::string& name);
/// Every record in `dir`; a file that cannot be read is skipped with its error in `errors`.
std::vector<VolumeRecord> LoadRecords(const std::string& dir, std::vector<std::string>* errors);

/// Writes `content` to `path` atomically, mode 0600.
Status WriteFileAtomically(const std::string& path, std::string_view content);
/// Creates `path` and its parents with mode 0700 (existing ones are kept as they are).
Status MakeDirs(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Metrics (replicated_metrics.cc)

/// Longhorn's volume metrics for `volumes` in Prometheus text exposition 0.0.4:
/// longhorn_volume_actual_size_bytes, longhorn_volume_capacity_bytes, longhorn_volume_state
/// (1 creating, 2 attached, 3 detached, 6 deleting) and longhorn_volume_robustness (0 unknown,
/// 1 healthy, 2 degraded, 3 faulted), each labelled {volume="<name>"}; then the engine's I/O
/// counters of attached volumes (`engines`, by volume) as hci_replicated_volume_*_total.
std::string RenderMetrics(const std::vector<api::Volume>& volumes,
                          const std::map<std::string, rpb::EngineStatus>& engines);

// ---------------------------------------------------------------------------------------------
// Factory (hci_plugin_entry's PluginFactories; replicated_storage.cc)

Result<std::unique_ptr<StorageBackend>> MakeStorage(PluginContext& context);

}  // namespace hci::replicated::plugin
