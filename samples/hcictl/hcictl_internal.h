// hcictl's private declarations: the command context, resources, output helpers and the
// commands, shared by the sources of samples/hcictl.
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "hci/hci.h"

namespace hcictl {

namespace pb = google::protobuf;
namespace v1 = hci::v1;

// ---------------------------------------------------------------------------------------------
// Exit codes

/// Success.
inline constexpr int kExitOk = 0;
/// The command line is wrong (unknown command or flag, missing argument, bad flag value).
inline constexpr int kExitUsage = 2;
/// A failed call exits with kExitStatusBase + its hci::StatusCode: 65 Cancelled, 66 Unknown,
/// 67 InvalidArgument, 68 DeadlineExceeded, 69 NotFound, 70 AlreadyExists, ... 80
/// Unauthenticated.
inline constexpr int kExitStatusBase = 64;
/// Interrupted by SIGINT or SIGTERM while waiting.
inline constexpr int kExitInterrupted = 130;

/// The exit code for a failed (or OK) status, as above.
int ExitCode(const hci::Status& status);
/// The table printed by `hcictl --help` and docs/hcictl.md.
std::string ExitCodeHelp();

// ---------------------------------------------------------------------------------------------
// Interrupts

/// While an InterruptScope lives, SIGINT and SIGTERM set Interrupted() instead of ending the
/// process, so that a wait loop can cancel what it waits for and exit with kExitInterrupted.
/// Outside of one, the signals keep their default action.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
};
bool Interrupted();
/// Cancelled("interrupted"): what a wait loop returns once Interrupted().
hci::Status InterruptedStatus();

// ---------------------------------------------------------------------------------------------
// Context

enum class OutputFormat { kTable, kJson, kYaml, kName };

struct GlobalOptions {
  /// --config, else $HCI_CONFIG; empty: the built-in default config.
  std::string config;
  /// --state-dir (wins over $HCI_STATE_DIR, the config's state_dir and the default).
  std::string state_dir;
  /// Number of -v flags: 0 warn, 1 info, 2 debug, 3+ trace.
  int verbosity = 0;
};

/// The Host config hcictl uses without --config or $HCI_CONFIG: compute from the kvm plugin,
/// storage and images from the local plugin, plugin directories from $HCI_PLUGIN_PATH or the
/// installed plugin directory.
v1::HostConfig DefaultHostConfig();

/// What every command works with: the global options, the output format, the Host (opened on
/// first use and kept for the process, or for a whole `hcictl batch`), and the events the Host
/// published since.
class Context {
 public:
  explicit Context(GlobalOptions options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const GlobalOptions& options() const { return options_; }

  /// The config the Host is opened with: the file (or the default), then the state dir by
  /// precedence --state-dir > $HCI_STATE_DIR > config state_dir > Host::DefaultStateDir(), and
  /// the log level from -v (warn without it).
  hci::Result<v1::HostConfig> ResolveConfig() const;
  /// Opens the Host on first use; later calls return the same one.
  hci::Result<hci::Host*> host();

  hci::Result<hci::ComputeBackend*> compute();
  hci::Result<hci::StorageBackend*> storage();
  hci::Result<hci::NetworkBackend*> network();
  hci::Result<hci::ImageBackend*> image();
  hci::Result<hci::BackupBackend*> backup();

  /// Events about `kind`/`name` seen by this process, oldest first.
  std::vector<v1::Event> EventsFor(std::string_view kind, std::string_view name) const;

  OutputFormat output = OutputFormat::kTable;

  /// Returns InvalidArgument(message) and makes the command exit with kExitUsage.
  hci::Status UsageError(std::string message);
  /// `result`, with an error turned into a usage error (for flag values that do not parse).
  template <typename T>
  hci::Result<T> Usage(hci::Result<T> result) {
    if (!result.ok()) return UsageError(result.status().message());
    return result;
  }
  bool usage_error() const { return usage_error_; }
  void clear_usage_error() { usage_error_ = false; }

 private:
  GlobalOptions options_;
  std::unique_ptr<hci::Host> host_;
  hci::Subscription subscription_;
  mutable std::mutex events_mu_;
  std::deque<v1::Event> events_;
  bool usage_error_ = false;
};

// ---------------------------------------------------------------------------------------------
// Parsing and formatting

/// "30s", "5m", "1h30m", "500ms", or a number of seconds. InvalidArgument naming `flag`.
hci::Result<std::chrono::milliseconds> ParseDuration(std::string_view text, std::string_view flag);
/// Bytes: "1073741824", or a binary quantity "10Gi", "512Mi", "1.5Ti" (Ki..Ei). InvalidArgument
/// naming `flag`.
hci::Result<std::uint64_t> ParseSize(std::string_view text, std::string_view flag);

/// "0", "512B", "4Ki", "1.5Gi": binary units, at most one decimal.
std::string HumanBytes(std::uint64_t bytes);
/// kubectl's age format ("45s", "3m10s", "5h", "12d"); "<unknown>" when `time` is unset.
std::string HumanAge(const pb::Timestamp& time);
/// An enum value as a word: VM_PHASE_RUNNING -> "Running", NETWORK_TYPE_L2_VLAN -> "L2Vlan";
/// "" for the zero UNSPECIFIED value.
std::string EnumWord(const pb::EnumDescriptor* type, int value);
template <typename E>
std::string Word(E value) {
  return EnumWord(pb::GetEnumDescriptor<E>(), static_cast<int>(value));
}

/// Rows under an upper-case header, columns aligned as kubectl does, each line after `indent`;
/// empty cells read "<none>".
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows, std::string_view indent);
/// FormatTable to stdout.
void PrintTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows);
/// The proto3 JSON form, indented, lowerCamelCase names.
hci::Result<std::string> ToJson(const pb::Message& message);

/// Reads a file, or stdin for "-" (at most 64 MiB).
hci::Result<std::string> ReadInput(const std::string& path);

/// Renders the progress of a long operation on stderr: a bar redrawn in place when stderr is a
/// terminal, else one line per 10 %.
class ProgressPrinter {
 public:
  /// `label` e.g. "image/guest importing".
  explicit ProgressPrinter(std::string label);
  void Update(const v1::OperationStatus& status);
  /// Ends the bar's line (terminal only).
  void Done();

 private:
  std::string label_;
  bool tty_;
  int last_decile_ = 0;
  bool drawn_ = false;
};

/// Waits for `operation` with a progress printer, polling for interrupts; on an interrupt,
/// cancels it and returns InterruptedStatus(). Returns the operation's final status.
hci::Status WaitWithProgress(const hci::Operation& operation, const std::string& label);

// ---------------------------------------------------------------------------------------------
// Resources: the kinds get/describe/delete know

using MessagePtr = std::unique_ptr<pb::Message>;

struct Resource {
  /// Singular CLI name, also the prefix of `-o name` output: "vm", "volume", ...
  std::string name;
  /// Kind in manifests and events ("VirtualMachine"); empty for operation and plugin.
  std::string manifest_kind;
  /// Other accepted spellings ("vms", "virtualmachine", ...).
  std::vector<std::string> aliases;
  /// For objects scoped under another: the flag naming the parent ("volume" for snapshots,
  /// "target" for backups, "network" to filter ports); empty otherwise.
  std::string parent_flag;
  bool parent_required = false;
  std::vector<std::string> columns;
  std::function<hci::Result<MessagePtr>(Context&, const std::string& parent,
                                        const std::string& name)>
      get;
  std::function<hci::Result<std::vector<MessagePtr>>(Context&, const std::string& parent)> list;
  /// nullptr when objects of this kind cannot be deleted.
  std::function<hci::Status(Context&, const std::string& parent, const std::string& name,
                            bool force)>
      remove;
  std::function<std::vector<std::string>(const pb::Message&)> row;
  /// The object's name (an operation's id, a plugin's name).
  std::function<std::string(const pb::Message&)> object_name;
};

/// nullptr for an unknown spelling.
const Resource* FindResource(std::string_view spelling);
/// The resource of a manifest kind ("VirtualMachine" -> vm); nullptr if none.
const Resource* ResourceOfManifestKind(std::string_view kind);
/// "vm, volume, image, ..." for help and errors.
std::string ResourceList();

/// Prints `objects` in the context's format: a table, JSON (an object when `single`, else an
/// array), YAML (one document per object) or `kind/name` lines.
hci::Status PrintObjects(Context& ctx, const Resource& resource,
                         const std::vector<MessagePtr>& objects, bool single);
/// After an action: "vm/demo started" for tables, `vm/demo` for -o name, the object for JSON
/// and YAML.
hci::Status PrintResult(Context& ctx, const Resource& resource, const pb::Message& object,
                        std::string_view verb);

// ---------------------------------------------------------------------------------------------
// Commands

/// The flags naming a parent object (--volume, --target, --network).
struct ParentFlags {
  std::string volume;
  std::string target;
  std::string network;
};

struct GetOptions {
  std::string kind;
  std::vector<std::string> names;
  ParentFlags parent;
};
hci::Status RunGet(Context& ctx, const GetOptions& options);
hci::Status RunDescribe(Context& ctx, const GetOptions& options);

struct DeleteOptions {
  std::string kind;
  std::vector<std::string> names;
  ParentFlags parent;
  std::vector<std::string> files;
  bool force = false;
  bool ignore_not_found = false;
};
hci::Status RunDelete(Context& ctx, const DeleteOptions& options);

struct ApplyOptions {
  std::vector<std::string> files;
  /// Start the VMs apply creates (unless their run_strategy is Halted).
  bool start = true;
};
hci::Status RunApply(Context& ctx, const ApplyOptions& options);
/// `delete -f`: the manifests' objects in reverse dependency order.
hci::Status RunDeleteFiles(Context& ctx, const DeleteOptions& options);

struct VmActionOptions {
  std::string action;  // start, stop, restart, pause, resume
  std::string name;
  bool force = false;
  std::string grace_period;  // stop
};
hci::Status RunVmAction(Context& ctx, const VmActionOptions& options);

struct ConsoleOptions {
  std::string name;
  bool follow = false;
  std::string until;
  std::string timeout;
  bool skip_existing = false;
  bool attach = false;
};
hci::Status RunConsole(Context& ctx, const ConsoleOptions& options);

struct ImageImportOptions {
  std::string name;
  std::string url;
  std::string file;
  std::string sha256;
  std::string format;
};
hci::Status RunImageImport(Context& ctx, const ImageImportOptions& options);

struct VolumeOptions {
  std::string name;
  std::string size;
  std::string from_image;
  std::string from_volume;
  std::string from_snapshot;
  std::uint32_t replicas = 0;
  bool linked_clone = false;
};
hci::Status RunVolumeCreate(Context& ctx, const VolumeOptions& options);
hci::Status RunVolumeResize(Context& ctx, const VolumeOptions& options);

struct VolumeScrubOptions {
  std::string name;
  bool report_only = false;
  bool wait = false;
};
/// `hcictl volume scrub NAME [--report-only] [--wait]`: starts StorageBackend::ScrubVolume;
/// with --wait, follows its progress and prints the volume's status.last_scrub.
hci::Status RunVolumeScrub(Context& ctx, const VolumeScrubOptions& options);

struct SnapshotOptions {
  std::string action;  // create, list, delete, revert
  std::string volume;
  std::string name;
};
hci::Status RunSnapshot(Context& ctx, const SnapshotOptions& options);

/// The plugin loader's report, from a Host opened on a temporary state directory without
/// backends, so that it works even when the configured plugins cannot be loaded.
hci::Result<std::vector<v1::PluginInfo>> PluginReport(Context& ctx);

}  // namespace hcictl
