// Private declarations of the replicated StorageBackend plugin (docs/replicated-plugin.md):
// options, connections to the storage nodes' hci-replica-servers, engine processes, volume
// records and metrics. The plugin code lives in hci::replicated::plugin so that none of its names
// can collide with hci_replicated_core's, which is linked into the same shared object.
#pragma once

#include <google/protobuf/struct.pb.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "hci/operation.h"
#include "hci/plugin.h"
#include "hci/replicated/v1/replica.pb.h"
#include "hci/result.h"
#include "hci/status.h"
#include "hci/storage.h"
#include "process/process.h"

namespace hci::replicated::wire {
class Connection;
}  // namespace hci::replicated::wire

namespace hci::replicated::plugin {

/// libhci's API messages (hci.v1) and the replica protocol's (hci.replicated.v1).
namespace api = ::hci::v1;
namespace rpb = ::hci::replicated::v1;

/// `s` in double quotes, as messages name volumes, replicas and snapshots.
inline std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

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
  /// A replica failed or unreachable this long (ms) is replaced by the engine with a new one on
  /// a node holding none of the volume's replicas (Longhorn's
  /// replica-replenishment-wait-interval); 0: never.
  std::uint64_t replica_replenish_wait_ms = 600000;
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

/// The engine's NBD export as a QEMU blockdev-add argument (BlockdevOptionsNbd, QAPI):
/// `{"driver": "nbd", "server": {"type": "unix", "path": <paths.nbd_socket>}}`. What AttachVolume
/// hands to the kvm plugin, and what a volume from an image is written through.
google::protobuf::Struct EngineBlockdev(const EnginePaths& paths);

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

/// CallEngine for the engine of attached volume `volume`, with its errors explained: Unavailable
/// when the engine does not answer ("volume "v" is attached but its engine does not answer
/// (...); AttachVolume again restarts it, then retry"), else the engine's own code with
/// `volume "v": <what>: <its message>` (`what` may be empty). Messages start with `field: `
/// when `field` is not empty.
Result<rpb::EngineResponse> AskAttachedEngine(
    const std::string& state_dir, const std::string& volume, const rpb::EngineRequest& request,
    std::string_view what, std::chrono::milliseconds timeout, std::string_view field = {});

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
  /// EngineConfig.membership_version of `members`: the engine bumps it (and rewrites its config
  /// file) when it replaces a member by one on a spare node; the plugin adopts the file's
  /// membership when its version is newer.
  std::uint64_t membership_version = 0;
  /// Replaced members whose replicas may still be on their nodes (deleted when reachable).
  std::vector<Member> retired;
  /// Serialises the mutating calls on this volume (held across their network calls).
  std::shared_ptr<std::mutex> op = std::make_shared<std::mutex>();
};

/// Writes the record to `<dir>/<name>.json` atomically (temporary file, fsync, rename, fsync of
/// the directory).
Status SaveRecord(const std::string& dir, const VolumeRecord& record);
/// Removes `<dir>/<name>.json`; OK when absent.
Status RemoveRecord(const std::string& dir, const std::string& name);
/// OK unless a RevertVolume of the volume has not reached every replica yet; then
/// FailedPrecondition `volume "v": a revert to snapshot "s" has not reached every replica; retry
/// RevertVolume first`: until it has, the replicas may differ and nothing may use them.
Status NoPendingRevert(const VolumeRecord& record);
/// Every record in `dir`; a file that cannot be read is skipped with its error in `errors`.
std::vector<VolumeRecord> LoadRecords(const std::string& dir, std::vector<std::string>* errors);

/// Writes `content` to `path` atomically, mode 0600.
using ::hci::process::WriteFileAtomically;
/// Creates `path` and its parents with mode 0700 (existing ones are kept as they are).
Status MakeDirs(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Clones (replicated_clone.cc)

/// The client of a member's node: the configured one, or one at the member's recorded address.
using NodeLookup = std::function<NodeClient&(const Member&)>;

/// What a new volume is cloned from: a volume's current content or one of its snapshots.
struct CloneSource {
  /// The source volume's record. The caller holds its op mutex from before CloneSourceSize
  /// until CloneInto returns, so nothing attaches, detaches, reverts or deletes it meanwhile.
  VolumeRecord volume;
  /// Empty: the volume's current content.
  std::string snapshot;
  /// The request field that named the source ("spec.source.volume" or "spec.source.snapshot"),
  /// for messages.
  std::string field;
};

/// The virtual size in bytes of what `source` holds: the volume's size, or the size the volume
/// had when the snapshot was taken. NotFound naming `<field>.snapshot` when no replica that
/// answers has the snapshot; Unavailable when no replica answers.
Result<std::uint64_t> CloneSourceSize(const Options& options, const NodeLookup& node,
                                      const CloneSource& source);

/// Copies `source` into `targets`, the replicas of the new volume `volume` (`size_bytes`, at
/// least the source's size), which the caller created empty at generation 1 as rebuild targets.
/// Reads one up-to-date replica of the source (opened read-only at the snapshot; at a temporary
/// crash-consistent snapshot taken through the engine when the source is attached and no
/// snapshot is named, deleted again afterwards; the head when it is detached), only the extents
/// it holds, and writes the non-zero ones to every target at generation 1; then flushes the
/// targets, checks that their SHA-256 extent hashes agree and clears their rebuild flag.
/// Reported as a "CloneVolume" operation on the new volume (progress in bytes of the source's
/// allocated extents) and a "VolumeCloned" event. Errors: the nodes' (Unavailable naming the
/// node), the engine's refusal of the snapshot (e.g. FailedPrecondition while it rebuilds),
/// DataLoss when the targets' hashes differ, Cancelled when the operation was cancelled. On
/// error the caller deletes the targets.
Status CloneInto(PluginContext& context, const Options& options, const NodeLookup& node,
                 const CloneSource& source, const std::string& volume, std::uint64_t size_bytes,
                 const std::vector<Member>& targets);

// ---------------------------------------------------------------------------------------------
// Volumes from images (replicated_image.cc)

/// The stored image a new volume is filled from (spec.source.image).
struct ImageSource {
  std::string name;
  /// Absolute path of the stored file (ImageStatus.path).
  std::string path;
  /// qemu-img's name of its stored format ("qcow2", "raw", ...).
  std::string format;
  std::uint64_t virtual_size_bytes = 0;
};

/// Image `name` of the host's image backend, which must be READY and give its file's path
/// (capability local_path). Errors name spec.source.image: NotFound when there is no such image;
/// FailedPrecondition when no image backend is configured, the image is not READY, or its path
/// or format is not given; the image backend's other errors.
Result<ImageSource> ResolveImage(PluginContext& context, const std::string& name);

/// Writes `image`'s content into volume `volume` (`size_bytes`, at least the image's virtual
/// size) through the volume's engine, already running at `engine` and serving replicas that were
/// just created (all zeros): `qemu-img convert -n --target-is-zero -f FORMAT -O raw` to the
/// engine's NBD export, so zero ranges are skipped and every write reaches the write quorum.
/// Reported as a "CopyImage" operation on the volume (progress: bytes written, from the engine's
/// counters, of `size_bytes`) and an "ImageCopied" event. Errors: Internal with qemu-img's
/// stderr when it fails (a write below quorum, an unreadable image), Cancelled when the
/// operation was cancelled. The caller stops the engine and, on error, deletes the replicas.
Status FillFromImage(PluginContext& context, const ImageSource& image, const std::string& volume,
                     const EnginePaths& engine, std::uint64_t size_bytes);

// ---------------------------------------------------------------------------------------------
// Metrics (replicated_metrics.cc)

/// Longhorn's volume metrics for `volumes` in Prometheus text exposition 0.0.4:
/// longhorn_volume_actual_size_bytes, longhorn_volume_capacity_bytes, longhorn_volume_state
/// (1 creating, 2 attached, 3 detached, 6 deleting) and longhorn_volume_robustness (0 unknown,
/// 1 healthy, 2 degraded, 3 faulted), each labelled {volume="<name>"}; then the engine's I/O
/// counters of attached volumes (`engines`, by volume) as hci_replicated_volume_*_total; and the
/// newest scrub of the volumes that had one as hci_replicated_volume_last_scrub_{mismatched_bytes,
/// repaired_bytes,timestamp_seconds}.
std::string RenderMetrics(const std::vector<api::Volume>& volumes,
                          const std::map<std::string, rpb::EngineStatus>& engines);

// ---------------------------------------------------------------------------------------------
// Scrub (replicated_scrub.cc)

/// The engine's scrub status as the API's ScrubResult (`report_only` as requested).
api::ScrubResult ToScrubResult(const rpb::ScrubStatus& status, bool report_only);

/// The scrubs a backend runs, at most one per volume: each is an Operation ("ScrubVolume",
/// progress in bytes compared of the volume's size) followed by a thread that polls the engine
/// doing the work, turns the mismatches it lists into ScrubMismatch events and, at the end,
/// hands the ScrubResult to `finished` and publishes ScrubCompleted (or ScrubFailed). Callers
/// serialise Running/Adopt/Release/Track of one volume with its op mutex. Thread-safe.
class Scrubs {
 public:
  /// Called on the scrub's thread once it ended (also when it failed or was cancelled), before
  /// the Operation finishes, so that a caller that waited sees VolumeStatus.last_scrub.
  using Finished = std::function<void(const std::string& volume, const api::ScrubResult& result)>;

  /// `io_timeout`: how long one status request to an engine may take.
  Scrubs(PluginContext& context, std::chrono::milliseconds io_timeout, Finished finished);
  /// Shutdown().
  ~Scrubs();
  Scrubs(const Scrubs&) = delete;
  Scrubs& operator=(const Scrubs&) = delete;

  /// True while a scrub of `volume` is tracked.
  bool Running(const std::string& volume);
  /// An attach takes over the engine a scrub of the detached volume started: true when there
  /// was such an engine (the scrub goes on in it and no longer stops it at the end).
  bool Adopt(const std::string& volume);
  /// From `finished`: forgets the volume's scrub; true when it ran in an engine of its own that
  /// the caller must now stop.
  bool Release(const std::string& volume);
  /// Tracks scrub `id`, which the engine at `control_socket` just started; `own_engine`: the
  /// engine was started for the scrub alone (the volume is detached).
  Operation Track(const std::string& volume, const std::string& control_socket, std::uint64_t id,
                  bool report_only, bool own_engine);
  /// Cancels every running scrub (in its engine too) and waits for their threads.
  void Shutdown();

 private:
  struct Job;
  void Poll(const std::shared_ptr<Job>& job);

  PluginContext& ctx_;
  const std::chrono::milliseconds io_timeout_;
  const Finished finished_;
  std::mutex mu_;
  bool shutdown_ = false;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::vector<std::thread> threads_;
};

// ---------------------------------------------------------------------------------------------
// Factory (hci_plugin_entry's PluginFactories; replicated_storage.cc)

Result<std::unique_ptr<StorageBackend>> MakeStorage(PluginContext& context);

}  // namespace hci::replicated::plugin
