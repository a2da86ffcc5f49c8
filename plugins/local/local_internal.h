// Private declarations shared by the local plugin's sources: the on-disk store both backends
// share, qemu-img wrappers, fetching image sources, options and small helpers.
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/timestamp.pb.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "hci/image.h"
#include "hci/logging.h"
#include "hci/object_meta.h"
#include "hci/operation.h"
#include "hci/plugin.h"
#include "hci/result.h"
#include "hci/status.h"
#include "hci/storage.h"
#include "process/process.h"

namespace hci::local {

/// The plugin's name, as registered with HCI_PLUGIN.
inline constexpr char kPluginName[] = "local";
/// Volume sizes are multiples of this many bytes.
inline constexpr std::uint64_t kBlockBytes = 4096;
/// The largest volume this plugin creates (1 PiB): qcow2 with its default 64 KiB clusters
/// cannot address much more.
inline constexpr std::uint64_t kMaxVolumeBytes = 1ull << 50;

// ---------------------------------------------------------------------------------------------
// Options

/// Parsed backends.<kind>.options of a local binding. Every key is optional.
struct Options {
  /// The qemu-img program (looked up in PATH when it has no '/').
  std::string qemu_img = "qemu-img";
  /// Image imports from a URL: seconds to wait for the TCP/TLS connection.
  std::uint32_t connect_timeout_seconds = 30;
  /// Image imports from a URL: abort when less than one byte arrived for this many seconds.
  std::uint32_t stall_timeout_seconds = 60;
  /// Image imports (URL and file): the most bytes per second read from the source; 0: no limit.
  std::uint64_t max_bytes_per_second = 0;
};

/// Parses the options Struct of a binding of `kind`. Unknown keys and keys of the other kind
/// are refused with InvalidArgument naming the key, e.g. "max_bytes_per_second: expected a
/// non-negative integer, got a string" or "latency_ms: unknown option (known: qemu_img)".
Result<Options> ParseOptions(const google::protobuf::Struct& options, BackendKind kind);

// ---------------------------------------------------------------------------------------------
// qemu-img

/// What `qemu-img info --output=json` says about an image.
struct ImageInfo {
  /// "raw", "qcow2", "vmdk", ...
  std::string format;
  std::uint64_t virtual_size = 0;
  /// Bytes allocated on the host; 0 when qemu-img did not say.
  std::uint64_t actual_size = 0;
  /// The backing file as recorded in the image; empty when there is none.
  std::string backing_filename;
  /// Names (tags) of the internal snapshots, in the image's order.
  std::vector<std::string> snapshots;
  /// Files of a VMDK's extents (format-specific data); empty for other formats.
  std::vector<std::string> extent_files;
  /// A qcow2's external data file (format-specific "data-file"); empty when none.
  std::string data_file;
};

/// Parses the JSON printed by `qemu-img info --output=json`. InvalidArgument (naming the member)
/// on JSON that is not an object or lacks "format" or "virtual-size".
Result<ImageInfo> ParseImageInfo(std::string_view json);

/// Runs qemu-img with an argv. Errors carry qemu-img's stderr; a lock held by another process
/// (a running QEMU) gives FailedPrecondition, other failures Internal.
class QemuImg {
 public:
  explicit QemuImg(std::string program) : program_(std::move(program)) {}

  /// `info --output=json [-f format] [-U] path`. `force_share` reads an image another process
  /// holds open for writing (a running VM), for metadata only.
  Result<ImageInfo> Info(const std::string& path, std::string_view format = {},
                         bool force_share = true) const;
  /// `create -f qcow2 [-b backing -F backing_format] path size`.
  Status Create(const std::string& path, std::uint64_t size, const std::string& backing = {},
                std::string_view backing_format = {}) const;
  /// `convert -f src_format -O qcow2 [-l snapshot.name=snapshot] src dst`; `cancelled` is polled.
  Status Convert(const std::string& src, std::string_view src_format, const std::string& dst,
                 const std::string& snapshot = {}, std::function<bool()> cancelled = nullptr) const;
  /// `resize -f qcow2 path size` (grows only).
  Status Resize(const std::string& path, std::uint64_t size) const;
  /// `snapshot -c|-a|-d name path`: `op` is 'c' (create), 'a' (apply, i.e. revert) or 'd'.
  Status Snapshot(char op, const std::string& name, const std::string& path) const;

 private:
  Status RunChecked(std::vector<std::string> args, std::string_view what,
                    std::chrono::milliseconds timeout, std::function<bool()> cancelled,
                    std::string* stdout_data) const;
  std::string program_;
};

// ---------------------------------------------------------------------------------------------
// Fetching image sources (local_fetch.cc)

/// What a fetch copied.
struct FetchResult {
  /// Lowercase hex SHA-256 of every byte received.
  std::string sha256;
  std::uint64_t bytes = 0;
};

struct FetchOptions {
  std::uint32_t connect_timeout_seconds = 30;
  std::uint32_t stall_timeout_seconds = 60;
  std::uint64_t max_bytes_per_second = 0;
  /// Called with bytes done and the total (0 when unknown), from the fetching thread.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
  /// Polled at least once a second; true aborts the fetch with Cancelled.
  std::function<bool()> cancelled;
};

/// Copies the regular file `source` to `dest_path` (created, mode 0600, written sparsely where
/// the source has runs of zeros), hashing it on the way. NotFound/PermissionDenied naming
/// "spec.file" when it cannot be read; InvalidArgument when it is not a regular file.
Result<FetchResult> CopyFile(const std::string& source, const std::string& dest_path,
                             const FetchOptions& options);

/// Downloads `url` (http or https; redirects followed) to `dest_path` as CopyFile does. An HTTP
/// status >= 400 fails with the status in the message ("spec.url: ... answered HTTP 404"):
/// NotFound for 404/410, PermissionDenied for 401/403, Unavailable for 5xx and 429,
/// FailedPrecondition for other codes; connection errors and stalls give Unavailable.
Result<FetchResult> Download(const std::string& url, const std::string& dest_path,
                             const FetchOptions& options);

/// Calls curl_global_init once per process.
void InitCurlOnce();

// ---------------------------------------------------------------------------------------------
// The store shared by the storage and image backends of one state directory

/// A volume as kept in memory and in volumes/<name>.json.
struct VolumeRecord {
  /// The effective object: spec.size_bytes resolved and grown by ExpandVolume.
  v1::Volume obj;
  /// What CreateVolume was given, for idempotent repeats.
  v1::VolumeSpec requested;
  /// Held shared while the volume's file is read (a clone), exclusively while it is changed.
  std::shared_ptr<std::shared_mutex> io = std::make_shared<std::shared_mutex>();
};

/// A snapshot as kept in memory and in snapshots/<volume>/<name>.json.
struct SnapshotRecord {
  v1::Snapshot obj;
  /// The volume's virtual size when the snapshot was taken.
  std::uint64_t virtual_size = 0;
};

/// An image as kept in memory; only Ready images are in images/<name>.json.
struct ImageRecord {
  v1::Image obj;
  /// The latest import (invalid for an image loaded from disk until asked for).
  Operation import;
  /// Identifies the import allowed to update this record.
  std::uint64_t attempt = 0;
};

/// The on-disk state of one plugin state directory, shared by the storage and image backends
/// created for it (one instance per directory per process). Layout:
///
///   volumes/<name>.qcow2, volumes/<name>.json
///   snapshots/<volume>/<snapshot>.json
///   images/<name>.qcow2, images/<name>.json
///   tmp/   files being built; emptied when the store is opened
///
/// Each .json file is written to a temporary file, fsynced and renamed, so a crash leaves the old
/// record or the new one. A record is the commit point: a create writes its qcow2 first and its
/// record last; a delete removes the record first. Opening the store therefore removes qcow2 files
/// without a record (a create that crashed) and snapshot records without a volume.
class Store {
 public:
  /// The store of `context.state_dir()`, loaded from disk on first use in this process.
  static Result<std::shared_ptr<Store>> Open(PluginContext& context);

  Store(std::string root, Logger logger);
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& root() const { return root_; }
  const Logger& logger() const { return logger_; }
  std::string VolumePath(std::string_view name) const;
  std::string ImagePath(std::string_view name) const;
  /// A new unique path under tmp/ ending in `suffix`.
  std::string TempPath(std::string_view stem, std::string_view suffix);

  /// Guards every map below.
  std::mutex mu;
  std::map<std::string, VolumeRecord> volumes;
  /// Snapshots by volume name, then snapshot name.
  std::map<std::string, std::map<std::string, SnapshotRecord>> snapshots;
  std::map<std::string, ImageRecord> images;
  /// Volumes being created, with the image they come from ("" for none): reserves the name and
  /// keeps the image from being deleted meanwhile.
  std::map<std::string, std::string> creating;

  /// Persist or remove one record (call with `mu` held; the writes are small).
  Status SaveVolume(const VolumeRecord& record);
  Status RemoveVolumeRecord(std::string_view name);
  Status SaveSnapshot(const SnapshotRecord& record);
  Status RemoveSnapshotRecord(std::string_view volume, std::string_view name);
  Status SaveImage(const ImageRecord& record);
  Status RemoveImageRecord(std::string_view name);

  /// Names of the volumes that depend on image `name` (source recorded or being created).
  /// Call with `mu` held.
  std::vector<std::string> VolumesUsingImageLocked(std::string_view name) const;

 private:
  Status Load();
  void LoadVolumes();
  void LoadSnapshots();
  void LoadImages();

  std::string root_;
  Logger logger_;
  std::atomic<std::uint64_t> temp_counter_{0};
};

// ---------------------------------------------------------------------------------------------
// Files

/// Writes `content` to `path` atomically (mode 0600): a temporary file in the same directory,
/// fsync, rename, fsync of the directory.
using ::hci::process::WriteFileAtomically;
/// Removes `path`; OK when it does not exist.
Status RemoveFile(const std::string& path);
/// Renames `from` to `to`, failing with AlreadyExists rather than replacing `to`.
Status RenameNoReplace(const std::string& from, const std::string& to);
/// Bytes allocated to `path` on its file system; 0 when it cannot be stat'ed.
std::uint64_t AllocatedBytes(const std::string& path);
/// fsyncs the file `path`: qemu-img writes its output without flushing (convert's default cache
/// mode is "unsafe"), so a file must be synced before its record may point at it.
Status SyncFile(const std::string& path);
/// fsyncs the directory `dir` so that a rename or unlink in it is durable.
void SyncDir(const std::string& dir);

/// Removes a file when it goes out of scope, unless Release()d.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile();
  const std::string& path() const { return path_; }
  void Release() { path_.clear(); }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The current wall-clock time.
google::protobuf::Timestamp Now();
/// "\"name\"".
std::string Quote(std::string_view s);
/// `<kind> "<name>" does not exist`, with `field: ` in front when given.
Status Missing(std::string_view kind, std::string_view name, std::string_view field = {});
using ::hci::MakeEvent;
/// "qcow2" for IMAGE_FORMAT_QCOW2 etc. ("raw" for ISO); empty for UNSPECIFIED.
std::string FormatName(v1::ImageFormat format);
/// The enum value of a qemu-img format name; UNSPECIFIED for formats outside the enum.
v1::ImageFormat FormatFromName(std::string_view name);

/// Runs worker threads for long operations; Stop() (and the destructor) joins them.
class Workers {
 public:
  Workers() = default;
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;
  ~Workers() { Stop(); }
  /// False (and `fn` not run) once Stop() was called.
  bool Spawn(std::function<void()> fn);
  bool stopping() const { return stopping_.load(); }
  void Stop();

 private:
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::atomic<bool> stopping_{false};
  std::list<Worker> workers_;
};

// ---------------------------------------------------------------------------------------------
// Factories (hci_plugin_entry's PluginFactories; unit tests call them directly)

Result<std::unique_ptr<StorageBackend>> MakeStorage(PluginContext& context);
Result<std::unique_ptr<ImageBackend>> MakeImage(PluginContext& context);

}  // namespace hci::local
