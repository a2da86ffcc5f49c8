// Private declarations of the conformance kit: the run's environment, the resource tracker,
// the test context with its request builders and assertion helpers, and the per-kind test
// lists.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "hci/conformance/conformance.h"
#include "hci/conformance/v1/conformance.pb.h"
#include "hci/hci.h"

namespace hci::conformance::internal {

// ---------------------------------------------------------------------------------------------
// Log capture

// Keeps the log lines of the running test, so that a failed test can show what libhci and the
// plugin said; prints them at once in verbose mode.
class LogCapture final : public LogSink {
 public:
  explicit LogCapture(bool verbose) : verbose_(verbose) {}
  void Write(const LogRecord& record) override;
  // The lines since the last call, oldest first (at most kMaxLines; older ones are dropped).
  std::vector<std::string> Take();

 private:
  static constexpr std::size_t kMaxLines = 400;
  const bool verbose_;
  std::mutex mu_;
  std::vector<std::string> lines_;
  std::size_t dropped_ = 0;
};

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server for URL imports: serves the files of one directory on 127.0.0.1.

class HttpFileServer {
 public:
  virtual ~HttpFileServer() = default;
  // "http://127.0.0.1:PORT/".
  virtual std::string base_url() const = 0;
};

// Serves the regular files directly inside `root` (GET and HEAD; 404 for anything else).
Result<std::unique_ptr<HttpFileServer>> StartHttpFileServer(const std::string& root);

// ---------------------------------------------------------------------------------------------
// The run's environment

// Fixture values with every default applied.
struct Fixtures {
  int repeat = 10;
  int concurrency = 8;
  std::chrono::milliseconds timeout{60000};
  v1::VirtualMachineSpec vm_spec;
  bool vm_volume = true;  // give each VM a volume, when a storage backend is configured
  std::uint64_t vm_volume_size = 16ull << 20;
  std::string kernel_path;
  std::string initrd_path;
  bool bootable_kernel = false;  // kernel_path came from the config
  std::uint32_t stop_grace_period_ms = 500;
  std::uint64_t volume_size = 16ull << 20;
  std::uint32_t vlan_id = 100;
  std::string cluster_network;
  std::string image_file;
  std::string backup_target_url;
  google::protobuf::Struct backup_target_options;
  std::string backup_volume;
};

// A test as registered: its GoogleTest names, the operations whose matrix cells it decides, and
// its body.
class Context;
using Body = std::function<void(Context&)>;
struct TestDef {
  std::string suite;
  std::string name;
  // "kind/Operation", e.g. "storage/CreateVolume".
  std::vector<std::string> ops;
  Body body;
};

// Everything the tests share: the Host, the backends under test and helpers, capabilities and
// the kit's files. Lives as long as the Suite.
struct Env {
  Options options;
  v1::conformance::ConformanceConfig config;
  Fixtures fixtures;
  // The kit's temporary directory (image files, the default backup target and state dir).
  std::string work_dir;
  std::string state_dir;
  bool own_state_dir = false;

  std::shared_ptr<LogCapture> logs;
  std::unique_ptr<Host> host;
  // Why the plugin cannot be tested (the Handshake test reports it); OK otherwise.
  Status load_error;
  v1::PluginInfo plugin;
  std::set<BackendKind> kinds;  // tested kinds

  // Backends through the core (nullptr when not configured), whether under test or helpers.
  ComputeBackend* compute = nullptr;
  StorageBackend* storage = nullptr;
  NetworkBackend* network = nullptr;
  ImageBackend* image = nullptr;
  BackupBackend* backup = nullptr;
  v1::ComputeCapabilities compute_caps;
  v1::StorageCapabilities storage_caps;
  v1::NetworkCapabilities network_caps;
  v1::ImageCapabilities image_caps;
  v1::BackupCapabilities backup_caps;

  std::unique_ptr<HttpFileServer> http;
  std::string run_id;  // 4 hex digits, in every name the kit creates
  std::atomic<int> counter{0};

  // Test name ("Suite.Name") -> the operations it decides.
  std::map<std::string, std::vector<std::string>> test_ops;
  // Operations seen answering Unimplemented where no capability says so (Metrics).
  std::mutex mu;
  std::set<std::string> observed_unimplemented;

  bool tested(BackendKind kind) const { return kinds.count(kind) > 0; }
  // A fresh valid name: "cf<run>-<n>-<what>" (what is shortened to keep 63 characters).
  std::string NewName(std::string_view what);
  // The kit's prefix of every name, for the final leak check.
  std::string prefix() const { return "cf" + run_id + "-"; }
};

// ---------------------------------------------------------------------------------------------
// The resource tracker

// Remembers everything a test creates (registered before the create is attempted, so that a
// half-done create is cleaned too) and removes it when the test ends, whatever its outcome.
class Tracker {
 public:
  explicit Tracker(Env& env) : env_(env) {}
  ~Tracker() = default;

  void Vm(const std::string& name) { Add(Kind::kVm, name); }
  void Volume(const std::string& name) { Add(Kind::kVolume, name); }
  void Attachment(const std::string& volume, const std::string& attacher) {
    Add(Kind::kAttachment, volume, attacher);
  }
  void Snapshot(const std::string& volume, const std::string& name) {
    Add(Kind::kSnapshot, name, volume);
  }
  void Network(const std::string& name) { Add(Kind::kNetwork, name); }
  void Port(const std::string& name) { Add(Kind::kPort, name); }
  void Image(const std::string& name) { Add(Kind::kImage, name); }
  void BackupTarget(const std::string& name) { Add(Kind::kBackupTarget, name); }
  void Backup(const std::string& target, const std::string& name) {
    Add(Kind::kBackup, name, target);
  }
  void Op(const Operation& op);

  // Removes everything, users before what they use (operations, VMs, attachments, ports,
  // networks, backups, targets, snapshots, volumes, images), retrying briefly on Aborted and
  // Unavailable, then checks that each object is gone. Returns one sentence per failure.
  std::vector<std::string> CleanUp();

 private:
  enum class Kind {
    kVm,
    kAttachment,
    kPort,
    kNetwork,
    kBackup,
    kBackupTarget,
    kSnapshot,
    kVolume,
    kImage,
  };
  struct Entry {
    Kind kind;
    std::string name;
    std::string parent;
  };
  void Add(Kind kind, std::string name, std::string parent = {});
  Status Remove(const Entry& e);
  Status CheckGone(const Entry& e);

  Env& env_;
  std::mutex mu_;
  std::vector<Entry> entries_;
  std::vector<Operation> ops_;
};

// ---------------------------------------------------------------------------------------------
// The test context

// What a test body works with: the environment, its tracker, request builders and waits.
class Context {
 public:
  explicit Context(Env& env) : env(env), tracker(env) {}

  Env& env;
  Tracker tracker;
  const Fixtures& fx() const { return env.fixtures; }
  std::string Name(std::string_view what) { return env.NewName(what); }

  // Request builders: valid requests, with labels that mark the kit's objects.
  v1::ObjectMeta Meta(const std::string& name) const;
  v1::CreateVolumeRequest VolumeRequest(const std::string& name) const;
  // The template VM; with a volume when the fixtures and a storage backend allow (see
  // PrepareVm, which creates it).
  v1::CreateVmRequest VmRequest(const std::string& name) const;
  v1::CreateNetworkRequest NetworkRequest(const std::string& name) const;
  v1::CreatePortRequest PortRequest(const std::string& name, const std::string& network) const;
  // From the fixture file when the plugin imports files, else from its URL.
  v1::ImportImageRequest ImageRequest(const std::string& name) const;
  v1::ImportImageRequest ImageFileRequest(const std::string& name) const;
  v1::ImportImageRequest ImageUrlRequest(const std::string& name) const;
  v1::CreateBackupTargetRequest TargetRequest(const std::string& name) const;
  v1::CreateBackupRequest BackupRequest(const std::string& name, const std::string& target,
                                        const std::string& volume) const;

  // Create-and-track helpers; errors name the step.
  Result<v1::Volume> CreateVolume(const v1::CreateVolumeRequest& request);
  Result<v1::Volume> NewVolume(std::string_view what = "vol");
  // The request for a new VM, its disk volume created (and tracked) when one is used.
  Result<v1::CreateVmRequest> PrepareVm(std::string_view what = "vm");
  Result<v1::VirtualMachine> CreateVm(const v1::CreateVmRequest& request);
  Result<v1::VirtualMachine> NewVm(std::string_view what = "vm");
  Result<v1::VirtualMachine> NewRunningVm(std::string_view what = "vm");
  Result<v1::Network> NewNetwork(std::string_view what = "net");
  Result<v1::Port> NewPort(const std::string& network, std::string_view what = "port");
  // Imports and waits until the import finished successfully (phase Ready).
  Result<v1::Image> NewImage(const v1::ImportImageRequest& request);
  Result<v1::Image> NewImage(std::string_view what = "img");
  Result<v1::BackupTarget> NewTarget(std::string_view what = "tgt");
  // The volume to back up: a new one from the storage backend, or the fixture's name.
  Result<std::string> BackupVolume();
  // Creates a backup and waits for it to complete.
  Result<v1::Backup> NewBackup(const std::string& target, const std::string& volume,
                               std::string_view what = "bak", bool full = false);

  // Waits for an operation; DeadlineExceeded after the fixture timeout.
  Status Wait(const Operation& op) const;
  // Polls GetVm until its phase is `phase`; the last VM seen, or DeadlineExceeded.
  Result<v1::VirtualMachine> WaitVmPhase(const std::string& name, v1::VmPhase phase) const;

  // Runs `fn(i)` on `n` threads released together; returns the results in thread order.
  template <typename R>
  std::vector<R> Race(int n, const std::function<R(int)>& fn) const;
};

// Blocks the calling threads until `n` arrived, then releases them together.
void RunTogether(int n, const std::function<void(int)>& fn);

template <typename R>
std::vector<R> Context::Race(int n, const std::function<R(int)>& fn) const {
  std::vector<std::optional<R>> slots(static_cast<std::size_t>(n));
  RunTogether(n, [&](int i) { slots[static_cast<std::size_t>(i)].emplace(fn(i)); });
  std::vector<R> out;
  out.reserve(slots.size());
  for (auto& s : slots) out.push_back(std::move(*s));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Assertion helpers

// Success when `status` has `code` and, if `field` is given, its message names it.
testing::AssertionResult HasCode(const Status& status, StatusCode code,
                                 std::string_view field = {});
// Success for InvalidArgument naming one of `fields`.
testing::AssertionResult NamesField(const Status& status, std::vector<std::string> fields);
testing::AssertionResult IsOk(const Status& status);

template <typename T>
testing::AssertionResult IsOk(const Result<T>& result) {
  return IsOk(result.status());
}
template <typename T>
testing::AssertionResult HasCode(const Result<T>& result, StatusCode code,
                                 std::string_view field = {}) {
  return HasCode(result.status(), code, field);
}

// The outcome of a race: how many calls succeeded, were Aborted, or failed otherwise.
struct Tally {
  int ok = 0;
  int aborted = 0;
  std::vector<std::string> other;  // the unexpected statuses
  std::string Describe() const;
};
Tally Count(const std::vector<Status>& results);
template <typename T>
Tally Count(const std::vector<Result<T>>& results) {
  std::vector<Status> statuses;
  for (const auto& r : results) statuses.push_back(r.status());
  return Count(statuses);
}
// Success when every call answered OK or Aborted and at least one OK; with `expect_aborted`
// (the first call was slowed down inside the plugin) at least one Aborted too.
testing::AssertionResult OneWinsOthersAborted(const Tally& tally, bool expect_aborted);

// Slows the next call of `op` inside the plugin by `latency_ms` through the backend's fault
// injector, so that concurrent calls meet the core's in-flight guard. False (nothing done)
// when the backend has no fault injector. Undo with ClearFaults.
bool SlowNextCall(Backend* backend, const std::string& op, std::uint32_t latency_ms = 300);
void ClearFaults(Backend* backend);

// A VM's state that an illegal call must not change.
std::string VmState(const v1::VirtualMachine& vm);
// A volume's state that an illegal call must not change.
std::string VolumeState(const v1::Volume& volume);

#define CONF_ASSERT_OK(expr) ASSERT_TRUE(::hci::conformance::internal::IsOk(expr)) << #expr

#define CONF_ASSIGN_OR_FAIL_IMPL_(tmp, lhs, expr)                \
  auto tmp = (expr);                                             \
  ASSERT_TRUE(::hci::conformance::internal::IsOk(tmp)) << #expr; \
  lhs = std::move(tmp).MoveValueUnsafe()

// `CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());` fails the test (returning from it) on an error.
#define CONF_ASSIGN_OR_FAIL(lhs, expr) \
  CONF_ASSIGN_OR_FAIL_IMPL_(HCI_STATUS_CONCAT_(conf_tmp_, __COUNTER__), lhs, expr)

// ---------------------------------------------------------------------------------------------
// Test lists (one file each)

void AddCommonTests(Env& env, std::vector<TestDef>& tests);
void AddComputeTests(Env& env, std::vector<TestDef>& tests);
void AddStorageTests(Env& env, std::vector<TestDef>& tests);
void AddNetworkTests(Env& env, std::vector<TestDef>& tests);
void AddImageTests(Env& env, std::vector<TestDef>& tests);
void AddBackupTests(Env& env, std::vector<TestDef>& tests);
// Registered last: nothing the kit created is left behind.
void AddCleanupTests(Env& env, std::vector<TestDef>& tests);

// ---------------------------------------------------------------------------------------------
// Environment setup and the matrix (suite.cc, matrix.cc)

// Reads the config file (or defaults), opens the Host with the plugin bound, creates the
// fixtures. A plugin that cannot be loaded is recorded in env.load_error, not returned.
Result<std::unique_ptr<Env>> MakeEnv(const Options& options);
// Closes the Host and removes the kit's temporary files.
void DestroyEnv(Env& env);

// The capability that gates `op` of `kind` and whether the plugin claims it; nullopt for
// operations every backend of the kind implements (and Metrics).
struct Gate {
  std::string capability;
  bool claimed = false;
};
std::optional<Gate> GateOf(const Env& env, BackendKind kind, std::string_view op);
// The related capabilities of `op` that the plugin does not claim ("uefi", "run_strategies:
// Once", ...): they make a cell partial.
std::vector<std::string> UnclaimedFeatures(const Env& env, BackendKind kind, std::string_view op);

// How one registered test ended (from GoogleTest's results).
struct TestOutcome {
  bool ran = false;
  bool failed = false;
  bool skipped = false;
};
// The run's matrix: the capabilities decide what is missing; the outcomes of the tests tagged
// with an operation decide between complete and partial.
PluginMatrix ComputeMatrix(const Env& env, const std::map<std::string, TestOutcome>& outcomes);

// "compute/CreateVm".
std::string OpKey(BackendKind kind, std::string_view op);
std::optional<BackendKind> ParseKind(std::string_view name);

}  // namespace hci::conformance::internal
