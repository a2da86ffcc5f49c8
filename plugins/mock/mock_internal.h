// Private declarations shared by the mock plugin's sources: options, fault injection, worker
// threads and the small helpers every mock backend uses.
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/timestamp.pb.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "hci/backend.h"
#include "hci/backup.h"
#include "hci/compute.h"
#include "hci/fault_injection.h"
#include "hci/image.h"
#include "hci/network.h"
#include "hci/object_meta.h"
#include "hci/plugin.h"
#include "hci/result.h"
#include "hci/status.h"
#include "hci/storage.h"
#include "hci/v1/event.pb.h"
#include "hci/v1/testing.pb.h"

namespace hci::mock {

/// The plugin's name, as registered with HCI_PLUGIN.
inline constexpr char kPluginName[] = "mock";

/// Bytes every mock image "downloads": the mock serves 64 MiB of zeros for any source.
inline constexpr std::uint64_t kImageBytes = 64ull << 20;
/// SHA-256 of kImageBytes zero bytes: the checksum every mock import receives.
inline constexpr char kImageSha256[] =
    "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351";
/// Steps a long mock operation takes (progress is reported after each).
inline constexpr int kOperationSteps = 5;

// ---------------------------------------------------------------------------------------------
// Options

/// Parsed backends.<kind>.options of a mock binding.
struct Options {
  /// Delay added to every call of the backend, in milliseconds.
  std::uint32_t latency_ms = 0;
  /// Duration of one of the kOperationSteps steps of a long operation, in milliseconds.
  std::uint32_t operation_step_ms = 20;
  /// Faults active from load time, for this backend only.
  std::vector<v1::Fault> faults;
};

/// Parses the options Struct: `faults` (a list of Fault objects, `code` as a number or a
/// StatusCode name), `latency_ms`, `operation_step_ms`. InvalidArgument naming the option path,
/// e.g. "faults[0].code: 99 is not a status code (0-16)".
Result<Options> ParseOptions(const google::protobuf::Struct& options);

/// OK when `fault` names a backend method (or "*") and a status code; otherwise
/// InvalidArgument naming `<prefix>.operation` or `<prefix>.code`.
Status ValidateFault(const v1::Fault& fault, std::string_view prefix);

/// True when `op` is the name of a method of one of the five backend interfaces.
bool IsBackendMethod(std::string_view op);

// ---------------------------------------------------------------------------------------------
// Fault injection

/// The FaultInjector shared by the mock backends of one Host. Faults added through Inject()
/// apply to every kind; faults from a backend's options apply to that backend only.
class MockFaults final : public FaultInjector {
 public:
  Status Inject(const v1::Fault& fault) override;
  void Clear() override;

  /// Adds `fault` (already validated) for calls of `kind` only.
  void AddScoped(BackendKind kind, const v1::Fault& fault);

  /// Applies the faults matching a call of `op` on a `kind` backend: sleeps for their summed
  /// latency plus `extra_latency_ms`, counts each down, and returns the status of the first
  /// matching fault with a non-zero code (OK when there is none).
  Status OnCall(BackendKind kind, std::string_view op, std::uint32_t extra_latency_ms);

 private:
  struct Entry {
    v1::Fault fault;
    bool all_kinds;
    BackendKind kind;
    std::uint32_t remaining;  // 0: unlimited
  };
  std::mutex mu_;
  std::list<Entry> entries_;
};

/// The injector shared by every mock backend created through the same Host (recognised by its
/// operation tracker). Created on first use; lives as long as one of its backends does.
std::shared_ptr<MockFaults> SharedFaults(PluginContext& context);

// ---------------------------------------------------------------------------------------------
// Worker threads

/// Threads owned by one backend, for its long operations. Joined by Stop() (and the
/// destructor); never detached.
class Workers {
 public:
  Workers() = default;
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;
  ~Workers();

  /// Runs `fn` on a new thread; false (and `fn` not run) once Stop() was called. Finished
  /// threads are joined on the next Spawn.
  bool Spawn(std::function<void()> fn);
  /// Waits up to `duration`; false when the backend is stopping or `cancelled()` became true
  /// (checked whenever Wake() is called).
  bool SleepFor(std::chrono::milliseconds duration, const std::function<bool()>& cancelled);
  /// Wakes every sleeper so it rechecks its cancel predicate; for OperationControl::OnCancel.
  void Wake();
  bool stopping() const;
  /// Asks every worker to stop and joins them.
  void Stop();

 private:
  struct Worker {
    std::thread thread;
    std::shared_ptr<bool> done;  // guarded by mu_
  };
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::list<Worker> workers_;
};

// ---------------------------------------------------------------------------------------------
// Per-backend plumbing

/// What every mock backend holds: its context, options and the shared fault injector.
class BackendEnv {
 public:
  /// InvalidArgument naming the option on bad options.
  static Result<std::shared_ptr<BackendEnv>> Make(PluginContext& context, BackendKind kind);

  BackendEnv(PluginContext& context, BackendKind kind, Options options,
             std::shared_ptr<MockFaults> faults);

  /// Called first by every backend method: latency and injected faults.
  Status Enter(std::string_view op) const {
    return faults_->OnCall(kind_, op, options_.latency_ms);
  }

  PluginContext& context() const { return context_; }
  const Options& options() const { return options_; }
  MockFaults* faults() const { return faults_.get(); }
  std::chrono::milliseconds step() const {
    return std::chrono::milliseconds(options_.operation_step_ms);
  }

  /// Publishes an event about `kind`/`name` (an ObjectRef), filled with type, reason, message.
  void Publish(v1::Event event) const;
  v1::Event MakeEvent(v1::EventType type, std::string_view kind, std::string_view name,
                      std::string_view reason, std::string message,
                      std::string_view parent = {}) const;

 private:
  PluginContext& context_;
  BackendKind kind_;
  Options options_;
  std::shared_ptr<MockFaults> faults_;
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The current wall-clock time.
google::protobuf::Timestamp Now();
/// `<kind> "<name>" already exists with a different spec (<difference>)`.
Status SpecConflict(std::string_view kind, std::string_view name,
                    const google::protobuf::Message& existing,
                    const google::protobuf::Message& requested);
/// NotFound(`<kind> "<name>" does not exist`), with `field: ` in front when given.
Status Missing(std::string_view kind, std::string_view name, std::string_view field = {});
/// "\"name\"".
std::string Quote(std::string_view name);
/// A locally administered-style QEMU MAC (52:54:00:xx:xx:xx) derived from `key`.
std::string StableMac(std::string_view key, unsigned attempt = 0);
/// True for "xx:xx:xx:xx:xx:xx" (hex, either case) with a unicast first octet.
bool IsValidMac(std::string_view mac);
/// 64-bit FNV-1a.
std::uint64_t Fnv1a(std::string_view data);

// ---------------------------------------------------------------------------------------------
// Factories (hci_plugin_entry's PluginFactories; unit tests call them directly)

Result<std::unique_ptr<ComputeBackend>> MakeCompute(PluginContext& context);
Result<std::unique_ptr<StorageBackend>> MakeStorage(PluginContext& context);
Result<std::unique_ptr<NetworkBackend>> MakeNetwork(PluginContext& context);
Result<std::unique_ptr<ImageBackend>> MakeImage(PluginContext& context);
Result<std::unique_ptr<BackupBackend>> MakeBackup(PluginContext& context);

}  // namespace hci::mock
