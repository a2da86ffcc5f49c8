// The kvm ComputeBackend: one QEMU process per running VM, driven through QMP, with no daemon.
//
// Threads and locks (docs/kvm-plugin.md has the whole story):
// - Vm::op_mu serialises the lifecycle operations of one VM (start, stop, restart, pause,
//   resume, delete, and the monitor's own reactions). Operations on different VMs never wait
//   for each other.
// - Vm::mu guards the VM's state (its VirtualMachine object and its current Run) and is only held
//   for short, non-blocking sections. Order: op_mu, then map_mu_, then mu.
// - One monitor thread per QEMU process watches it through a pidfd and QMP events; when QEMU
//   ends without an operation asking for it, the monitor takes op_mu and records why (guest
//   shutdown, panic, death) and applies the run strategy.
// - A Run (one QEMU process) owns its QMP client. The last reference to a Run or a QMP client is
//   never dropped while holding Vm::mu: the client's destructor joins its event thread, whose
//   handler takes Vm::mu.
#include <fcntl.h>
#include <google/protobuf/util/time_util.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "hci/names.h"
#include "hci/object_meta.h"
#include "hci/v1/event.pb.h"
#include "kvm_internal.h"
#include "process/process.h"
#include "qmp/qmp_client.h"

namespace hci::kvm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

constexpr char kVmKind[] = "VirtualMachine";
// How often a monitor looks at its process when nothing else wakes it.
constexpr auto kMonitorTick = 100ms;
// After `quit`, and again after SIGKILL, how long to wait for QEMU to go.
constexpr auto kQuitWait = 10s;
constexpr auto kKillWait = 10s;
// Reattach: how long to wait for a live QEMU's monitor.
constexpr auto kReattachConnect = 5s;
// Lines of qemu.log quoted in a ProcessDied message.
constexpr std::size_t kLogLines = 5;
constexpr char kLogHeader[] = "hci-kvm: ";
constexpr char kRestartPending[] = "RestartPending";

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

std::string PhaseName(v1::VmPhase phase) {
  switch (phase) {
    case v1::VM_PHASE_STOPPED:
      return "Stopped";
    case v1::VM_PHASE_STARTING:
      return "Starting";
    case v1::VM_PHASE_RUNNING:
      return "Running";
    case v1::VM_PHASE_PAUSED:
      return "Paused";
    case v1::VM_PHASE_STOPPING:
      return "Stopping";
    case v1::VM_PHASE_MIGRATING:
      return "Migrating";
    case v1::VM_PHASE_FAILED:
      return "Failed";
    case v1::VM_PHASE_UNKNOWN:
      return "Unknown";
    default:
      return "Unspecified";
  }
}

// Phases in which a QEMU process should exist, as persisted by an earlier Host.
bool PhaseHasProcess(v1::VmPhase phase) {
  return phase == v1::VM_PHASE_STARTING || phase == v1::VM_PHASE_RUNNING ||
         phase == v1::VM_PHASE_PAUSED || phase == v1::VM_PHASE_STOPPING ||
         phase == v1::VM_PHASE_MIGRATING || phase == v1::VM_PHASE_UNKNOWN;
}

google::protobuf::Timestamp Now() { return google::protobuf::util::TimeUtil::GetCurrentTime(); }

std::string Ms(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<milliseconds>(d).count()) + " ms";
}

// Where the output of the latest run starts in qemu.log: after the last "hci-kvm: " header.
std::uint64_t LatestRunLogOffset(const std::string& log) {
  std::size_t header = log.starts_with(kLogHeader) ? 0 : std::string::npos;
  if (auto at = log.rfind(std::string("\n") + kLogHeader); at != std::string::npos) {
    header = at + 1;
  }
  if (header == std::string::npos) return 0;
  auto eol = log.find('\n', header);
  return eol == std::string::npos ? log.size() : eol + 1;
}

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// ---------------------------------------------------------------------------------------------
// Threads the backend owns (monitors, delayed restarts): joined by Close() and the destructor.

class ThreadGroup {
 public:
  ThreadGroup() = default;
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  ~ThreadGroup() { Close(); }

  // Runs `fn` on a new thread; false once Close() was called.
  bool Spawn(std::function<void()> fn) {
    std::list<Entry> finished;
    {
      std::lock_guard lock(mu_);
      if (closed_) return false;
      for (auto it = threads_.begin(); it != threads_.end();) {
        auto next = std::next(it);
        if (it->done->load()) finished.splice(finished.end(), threads_, it);
        it = next;
      }
      auto done = std::make_shared<std::atomic<bool>>(false);
      threads_.push_back(Entry{std::thread([fn = std::move(fn), done] {
                                 fn();
                                 done->store(true);
                               }),
                               done});
    }
    for (auto& e : finished) e.thread.join();
    return true;
  }

  void Close() {
    std::list<Entry> all;
    {
      std::lock_guard lock(mu_);
      closed_ = true;
      all.swap(threads_);
    }
    for (auto& e : all) {
      if (e.thread.get_id() == std::this_thread::get_id()) {
        e.thread.detach();  // cannot happen by design; never self-join
      } else {
        e.thread.join();
      }
    }
  }

 private:
  struct Entry {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  bool closed_ = false;
  std::list<Entry> threads_;
};

// ---------------------------------------------------------------------------------------------
// State

struct Vm;

// One QEMU process of a VM.
struct Run {
  std::uint64_t id = 0;
  pid_t pid = -1;
  int pidfd = -1;
  Clock::time_point started;
  // Where this run's QEMU output starts in qemu.log.
  std::uint64_t log_offset = 0;

  // Guarded by Vm::mu.
  // An operation is ending this run (stop, delete, restart): the monitor leaves it alone.
  bool owned = false;
  // SHUTDOWN with reason guest-shutdown: the guest powered off; QEMU waits (-no-shutdown).
  bool guest_shutdown = false;
  // GUEST_PANICKED: the guest kernel panicked; QEMU waits (-action panic=pause).
  bool panicked = false;
  // STOP or RESUME arrived: the monitor re-reads query-status.
  bool reconcile = false;
  bool qmp_lost = false;
  std::string shutdown_reason;

  // Declared last so that it is destroyed first: its destructor joins the event thread that
  // writes the fields above.
  std::shared_ptr<qmp::QmpClient> qmp;

  ~Run() {
    qmp.reset();
    if (pidfd >= 0) ::close(pidfd);
  }

  // True once the process has exited; waits up to `timeout` for that.
  bool WaitExit(Clock::duration timeout) const {
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      auto ms = std::chrono::duration_cast<milliseconds>(timeout).count();
      int n;
      do {
        n = ::poll(&p, 1, static_cast<int>(std::max<long long>(0, ms)));
      } while (n < 0 && errno == EINTR);
      return n > 0;
    }
    // No pidfd (pre-5.3 kernel): poll the pid.
    auto deadline = Clock::now() + timeout;
    for (;;) {
      if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
      if (!process::ProcessAlive(pid, "")) return true;
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(20ms);
    }
  }

  void Kill() const {
    if (pidfd >= 0 && ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0) == 0) return;
    if (pidfd < 0) ::kill(pid, SIGKILL);
  }
};

struct Vm {
  Vm(std::string n, VmPaths p) : name(std::move(n)), paths(std::move(p)) {}

  const std::string name;
  const VmPaths paths;
  // One lifecycle operation at a time.
  std::timed_mutex op_mu;
  std::mutex mu;
  std::condition_variable cv;

  // Guarded by mu.
  v1::VirtualMachine obj;
  // Set while a QEMU process exists for the VM.
  std::shared_ptr<Run> run;
  bool deleted = false;
  // Bumped to cancel a scheduled automatic restart.
  std::uint64_t restart_token = 0;
  // Consecutive short runs, for the restart back-off.
  std::uint32_t failures = 0;
};

// Moves the QMP client out of `run` under the VM's lock and destroys it outside.
void DropQmp(Vm& vm, Run& run) {
  std::shared_ptr<qmp::QmpClient> q;
  {
    std::lock_guard lock(vm.mu);
    q = std::move(run.qmp);
  }
  q.reset();
}

// ---------------------------------------------------------------------------------------------
// The backend

class KvmCompute final : public ComputeBackend {
 public:
  KvmCompute(PluginContext& context, Options options, std::string vms_dir)
      : ctx_(context),
        opts_(std::move(options)),
        vms_dir_(std::move(vms_dir)),
        uefi_(::access(kOvmfCode, R_OK) == 0 && ::access(kOvmfVars, R_OK) == 0) {}

  ~KvmCompute() override {
    // VMs keep running: a later Host reattaches to them. Only our threads stop.
    stopping_.store(true);
    { std::lock_guard lock(ready_mu_); }
    ready_cv_.notify_all();
    std::vector<std::shared_ptr<Vm>> all;
    {
      std::lock_guard lock(map_mu_);
      for (auto& [name, vm] : vms_) all.push_back(vm);
    }
    for (auto& vm : all) {
      { std::lock_guard lock(vm->mu); }
      vm->cv.notify_all();
    }
    threads_.Close();
  }

  // Loads every VM under vms_dir_ and reattaches to the QEMU processes still running.
  void Recover();

  v1::ComputeCapabilities Capabilities() const override {
    v1::ComputeCapabilities caps;
    caps.set_pause(true);
    caps.set_restart(true);
    caps.set_graceful_stop(true);
    caps.set_console_log(true);
    caps.set_console_attach(true);
    caps.set_live_migration(false);
    caps.set_metrics(true);
    caps.set_resize_disk(true);
    caps.set_uefi(uefi_);
    caps.set_kernel_boot(true);
    caps.set_cloud_init(false);
    for (auto s : {v1::RUN_STRATEGY_ALWAYS, v1::RUN_STRATEGY_HALTED, v1::RUN_STRATEGY_MANUAL,
                   v1::RUN_STRATEGY_RERUN_ON_FAILURE, v1::RUN_STRATEGY_ONCE}) {
      caps.add_run_strategies(s);
    }
    caps.add_accelerators("tcg");
    if (AutoAccel().accel == "kvm") caps.add_accelerators("kvm");
    return caps;
  }

  Result<std::string> Metrics() override {
    MarkReady();
    std::map<std::string, int> counts;
    for (const auto& vm : AllVms()) {
      std::lock_guard lock(vm->mu);
      std::string phase = PhaseName(vm->obj.status().phase());
      std::transform(phase.begin(), phase.end(), phase.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      ++counts[phase];
    }
    std::string out =
        "# HELP kubevirt_vmi_phase_count Sum of VMIs per phase and node.\n"
        "# TYPE kubevirt_vmi_phase_count gauge\n";
    for (const auto& [phase, n] : counts) {
      out += "kubevirt_vmi_phase_count{node=\"" + ctx_.node_name() + "\",phase=\"" + phase +
             "\"} " + std::to_string(n) + "\n";
    }
    return out;
  }

  Result<v1::VirtualMachine> CreateVm(const v1::CreateVmRequest& request) override;

  Result<v1::VirtualMachine> GetVm(const v1::GetVmRequest& request) override {
    MarkReady();
    HCI_ASSIGN_OR_RAISE(auto vm, Find(request.name()));
    std::lock_guard lock(vm->mu);
    return vm->obj;
  }

  Result<v1::ListVmsResponse> ListVms(const v1::ListVmsRequest& request) override {
    MarkReady();
    v1::ListVmsResponse out;
    for (const auto& vm : AllVms()) {
      std::lock_guard lock(vm->mu);
      if (MatchesLabels(vm->obj.metadata().labels(), request.label_selector())) {
        *out.add_vms() = vm->obj;
      }
    }
    return out;
  }

  Status DeleteVm(const v1::DeleteVmRequest& request) override;

  Result<v1::VirtualMachine> StartVm(const v1::StartVmRequest& request) override {
    MarkReady();
    HCI_ASSIGN_OR_RAISE(auto vm, Find(request.name()));
    std::unique_lock op(vm->op_mu, std::defer_lock);
    HCI_RETURN_NOT_OK(LockOp(op));
    {
      std::lock_guard lock(vm->mu);
      if (vm->deleted) return NotFound("vm " + Quote(request.name()) + " does not exist");
      if (vm->run) {
        if (vm->obj.status().phase() == v1::VM_PHASE_PAUSED) {
          return FailedPrecondition("vm " + Quote(request.name()) +
                                    " is Paused; resume it instead of starting it");
        }
        return vm->obj;
      }
      if (vm->obj.spec().run_strategy() == v1::RUN_STRATEGY_HALTED) {
        return FailedPrecondition("vm " + Quote(request.name()) +
                                  ": spec.run_strategy is Halted, which keeps the VM stopped");
      }
    }
    return StartLocked(vm, /*automatic=*/false);
  }

  Result<v1::VirtualMachine> StopVm(const v1::StopVmRequest& request) override {
    MarkReady();
    HCI_ASSIGN_OR_RAISE(auto vm, Find(request.name()));
    std::unique_lock op(vm->op_mu, std::defer_lock);
    HCI_RETURN_NOT_OK(LockOp(op));
    return StopLocked(vm, request.force(), request.grace_period_ms());
  }

  Result<v1::VirtualMachine> RestartVm(const v1::RestartVmRequest& request) override;

  Result<v1::VirtualMachine> PauseVm(const v1::PauseVmRequest& request) override {
    return PauseOrResume(request.name(), /*pause=*/true);
  }

  Result<v1::VirtualMachine> ResumeVm(const v1::ResumeVmRequest& request) override {
    return PauseOrResume(request.name(), /*pause=*/false);
  }

  Result<Operation> MigrateVm(const v1::MigrateVmRequest&) override {
    return NotImplemented(BackendKind::kCompute, "MigrateVm");
  }

  Result<v1::ConsoleOutput> ReadConsole(const v1::ReadConsoleRequest& request) override {
    MarkReady();
    HCI_ASSIGN_OR_RAISE(auto vm, Find(request.name()));
    return ReadConsoleLog(vm->paths.serial_log, request.offset(), request.max_bytes());
  }

  Result<std::unique_ptr<ConsoleStream>> AttachConsole(
      const v1::AttachConsoleRequest& request) override {
    MarkReady();
    HCI_ASSIGN_OR_RAISE(auto vm, Find(request.name()));
    {
      std::lock_guard lock(vm->mu);
      if (!vm->run) {
        return FailedPrecondition("vm " + Quote(vm->name) + " is " +
                                  PhaseName(vm->obj.status().phase()) +
                                  "; the console exists only while the VM runs");
      }
    }
    return ConnectConsole(vm->paths.console_socket);
  }

  Result<v1::VmMetricsResponse> VmMetrics(const v1::VmMetricsRequest& request) override;

  Status ResizeDisk(const v1::ResizeDiskRequest& request) override;

 private:
  // ------------------------------------------------------------------------------------------
  // Readiness: the other backends (storage) are usable once Host::Open has returned. The first
  // call of any method proves that; threads started by the factory wait for it before they
  // touch another backend.

  void MarkReady() const {
    if (ready_.load(std::memory_order_acquire)) return;
    {
      std::lock_guard lock(ready_mu_);
      ready_.store(true, std::memory_order_release);
    }
    ready_cv_.notify_all();
  }

  bool WaitReady() const {
    std::unique_lock lock(ready_mu_);
    ready_cv_.wait(lock, [&] { return ready_.load() || stopping_.load(); });
    return !stopping_.load();
  }

  Status LockOp(std::unique_lock<std::timed_mutex>& op) const {
    while (!op.try_lock_for(200ms)) {
      if (stopping_.load()) return Unavailable("the kvm compute backend is shutting down");
    }
    return Status();
  }

  // ------------------------------------------------------------------------------------------
  // Lookup

  Result<std::shared_ptr<Vm>> Find(const std::string& name) const {
    std::lock_guard lock(map_mu_);
    auto it = vms_.find(name);
    if (it == vms_.end()) return NotFound("vm " + Quote(name) + " does not exist");
    return it->second;
  }

  std::vector<std::shared_ptr<Vm>> AllVms() const {
    std::lock_guard lock(map_mu_);
    std::vector<std::shared_ptr<Vm>> out;
    for (const auto& [name, vm] : vms_) out.push_back(vm);
    return out;
  }

  // ------------------------------------------------------------------------------------------
  // Status bookkeeping (all *Locked functions need Vm::mu)

  void PersistLocked(Vm& vm) {
    if (vm.deleted) return;
    Status s = WriteFileAtomically(vm.paths.status, vm.obj.status().SerializeAsString());
    if (!s.ok()) ctx_.logger().Warn("vm", vm.name, "cannot persist status: " + s.ToString());
  }

  void PublishLocked(Vm& vm, v1::EventType type, std::string reason, std::string message) {
    v1::Event event;
    event.set_type(type);
    event.mutable_object()->set_kind(kVmKind);
    event.mutable_object()->set_name(vm.name);
    event.set_reason(std::move(reason));
    event.set_message(std::move(message));
    ctx_.events().Publish(event);
  }

  // Sets phase, reason and message, persists the status and publishes VmPhaseChanged when the
  // phase changes.
  void SetPhaseLocked(Vm& vm, v1::VmPhase phase, std::string reason, std::string message = {}) {
    auto* status = vm.obj.mutable_status();
    v1::VmPhase old = status->phase();
    status->set_phase(phase);
    status->set_reason(std::move(reason));
    status->set_message(std::move(message));
    PersistLocked(vm);
    if (old == phase) return;
    std::string text = PhaseName(old) + " -> " + PhaseName(phase) + " (" + status->reason() +
                       (status->message().empty() ? "" : ": " + status->message()) + ")";
    ctx_.logger().Log(phase == v1::VM_PHASE_FAILED ? LogLevel::kWarn : LogLevel::kInfo, "vm",
                      vm.name, text);
    v1::Event event;
    event.set_type(phase == v1::VM_PHASE_FAILED ? v1::EVENT_TYPE_WARNING : v1::EVENT_TYPE_NORMAL);
    event.mutable_object()->set_kind(kVmKind);
    event.mutable_object()->set_name(vm.name);
    event.set_reason("VmPhaseChanged");
    event.set_message(std::move(text));
    event.mutable_vm_phase()->set_old_phase(old);
    event.mutable_vm_phase()->set_new_phase(phase);
    ctx_.events().Publish(event);
  }

  static void SetRestartConditionLocked(Vm& vm, bool pending, std::string message) {
    auto* conditions = vm.obj.mutable_status()->mutable_conditions();
    for (int i = 0; i < conditions->size(); ++i) {
      if (conditions->Get(i).type() == kRestartPending) {
        conditions->DeleteSubrange(i, 1);
        break;
      }
    }
    if (!pending) return;
    auto* c = conditions->Add();
    c->set_type(kRestartPending);
    c->set_status(v1::CONDITION_STATUS_TRUE);
    c->set_reason("RunStrategy");
    c->set_message(std::move(message));
    *c->mutable_last_transition_time() = Now();
  }

  static bool RestartPendingLocked(const Vm& vm) {
    for (const auto& c : vm.obj.status().conditions()) {
      if (c.type() == kRestartPending && c.status() == v1::CONDITION_STATUS_TRUE) return true;
    }
    return false;
  }

  // Cancels a scheduled automatic restart (an explicit operation overrides the strategy).
  void CancelRestartLocked(Vm& vm) {
    ++vm.restart_token;
    if (RestartPendingLocked(vm)) {
      SetRestartConditionLocked(vm, false, {});
      PersistLocked(vm);
    }
    vm.cv.notify_all();
  }

  // ------------------------------------------------------------------------------------------
  // Other backends

  // Disks must name existing volumes. NotFound becomes InvalidArgument naming the disk.
  Status CheckVolumes(const v1::VirtualMachineSpec& spec) {
    if (spec.disks_size() == 0) return Status();
    StorageBackend* storage = ctx_.storage();
    if (storage == nullptr) {
      return FailedPrecondition(
          "spec.disks: no storage backend is configured (set backends.storage in the host "
          "config)");
    }
    for (int i = 0; i < spec.disks_size(); ++i) {
      std::string field = "spec.disks[" + std::to_string(i) + "].volume";
      v1::GetVolumeRequest get;
      get.set_name(spec.disks(i).volume());
      auto volume = storage->GetVolume(get);
      if (volume.ok()) continue;
      if (volume.status().code() == StatusCode::kNotFound) {
        return InvalidArgument(field + ": volume " + Quote(spec.disks(i).volume()) +
                               " does not exist");
      }
      return volume.status().WithContext(field);
    }
    return Status();
  }

  // Attaches every disk's volume to the VM; on failure detaches what it attached.
  Result<std::vector<v1::AttachInfo>> AttachDisks(const std::string& name,
                                                  const v1::VirtualMachineSpec& spec) {
    std::vector<v1::AttachInfo> out;
    if (spec.disks_size() == 0) return out;
    if (!WaitReady()) return Unavailable("the kvm compute backend is shutting down");
    StorageBackend* storage = ctx_.storage();
    if (storage == nullptr) {
      return FailedPrecondition("spec.disks: no storage backend is configured");
    }
    for (int i = 0; i < spec.disks_size(); ++i) {
      v1::AttachVolumeRequest attach;
      attach.set_name(spec.disks(i).volume());
      attach.set_attacher(name);
      auto info = storage->AttachVolume(attach);
      if (info.ok()) {
        out.push_back(std::move(info).MoveValueUnsafe());
        continue;
      }
      for (int j = 0; j < i; ++j) DetachOne(*storage, name, spec.disks(j).volume());
      Status s = info.status();
      // The VM exists; a missing volume is a precondition of the start, not a missing VM.
      StatusCode code =
          s.code() == StatusCode::kNotFound ? StatusCode::kFailedPrecondition : s.code();
      return Status(code, "spec.disks[" + std::to_string(i) + "].volume: " + s.message());
    }
    return out;
  }

  void DetachDisks(const std::string& name, const v1::VirtualMachineSpec& spec) {
    if (spec.disks_size() == 0 || !WaitReady()) return;
    StorageBackend* storage = ctx_.storage();
    if (storage == nullptr) return;
    for (const auto& disk : spec.disks()) DetachOne(*storage, name, disk.volume());
  }

  void DetachOne(StorageBackend& storage, const std::string& vm, const std::string& volume) {
    v1::DetachVolumeRequest detach;
    detach.set_name(volume);
    detach.set_attacher(vm);
    Status s = storage.DetachVolume(detach);
    if (!s.ok()) {
      ctx_.logger().Warn("vm", vm, "cannot detach volume " + Quote(volume) + ": " + s.ToString());
    }
  }

  // ------------------------------------------------------------------------------------------
  // Accelerator

  AccelChoice AutoAccel() const {
    std::call_once(accel_once_, [&] {
      auto_accel_ = ChooseAutoAccel(opts_.qemu_binary, ctx_.state_dir(),
                                    milliseconds(opts_.kvm_probe_timeout_ms));
      ctx_.logger().Info(
          "", "",
          "accelerator for accel=auto: " + auto_accel_.accel + " (" + auto_accel_.reason + ")");
    });
    return auto_accel_;
  }

  Result<AccelChoice> ResolveAccel(const v1::VirtualMachineSpec& spec) const {
    std::string wanted = spec.accelerator();
    std::string source = "spec.accelerator";
    if (wanted.empty()) {
      wanted = opts_.accel;
      source = "the plugin option accel";
    }
    if (wanted == "tcg") return AccelChoice{"tcg", "tcg: requested by " + source};
    if (wanted == "kvm") {
      int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
      if (fd < 0) {
        return FailedPrecondition(
            (source == "spec.accelerator" ? "spec.accelerator" : "accel") +
            std::string(": kvm was requested but /dev/kvm cannot be opened read-write (") +
            std::strerror(errno) + ")");
      }
      ::close(fd);
      return AccelChoice{"kvm", "kvm: requested by " + source};
    }
    return AutoAccel();
  }

  // ------------------------------------------------------------------------------------------
  // Lifecycle (op_mu held by the caller)

  Status CheckSocketPaths(const std::string& name) const {
    VmPaths p = VmPaths::For(vms_dir_, name);
    for (const auto* path : {&p.qmp_socket, &p.console_socket}) {
      if (path->size() > kMaxSocketPath) {
        return FailedPrecondition("state_dir: the socket path \"" + *path + "\" is longer than " +
                                  std::to_string(kMaxSocketPath) +
                                  " bytes, the limit of a unix socket; use a shorter state_dir");
      }
    }
    return Status();
  }

  Result<v1::VirtualMachine> StartLocked(const std::shared_ptr<Vm>& vm, bool automatic);
  Result<v1::VirtualMachine> StopLocked(const std::shared_ptr<Vm>& vm, bool force,
                                        std::uint32_t grace_ms);
  Result<v1::VirtualMachine> PauseOrResume(const std::string& name, bool pause);

  // Connects to a QEMU's monitor with handlers that feed `run`'s flags.
  Result<std::shared_ptr<qmp::QmpClient>> ConnectQmp(const std::shared_ptr<Vm>& vm,
                                                     const std::shared_ptr<Run>& run,
                                                     Clock::time_point deadline);
  // The process ended or must end: quit it, then SIGKILL it.
  void EndProcess(Vm& vm, Run& run);
  // After the process is gone: drop the run, detach volumes, set the final phase.
  void FinishRun(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run, v1::VmPhase phase,
                 std::string reason, std::string message);
  // Why QEMU died, from its log.
  std::string DescribeDeath(const Vm& vm, const Run& run) const;

  void StartMonitor(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run);
  void Monitor(std::shared_ptr<Vm> vm, std::shared_ptr<Run> run);
  void Reconcile(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run);
  // The monitor's reaction to a run that ended by itself.
  enum class RunEnd { kExited, kGuestShutdown, kPanicked };
  void HandleRunEnd(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run, RunEnd end);

  // Applies the run strategy after a run ended (op_mu held).
  void MaybeScheduleRestart(const std::shared_ptr<Vm>& vm, bool failed, Clock::duration ran_for);
  void DelayedRestart(std::shared_ptr<Vm> vm, std::uint64_t token, milliseconds delay);

  // Reattach.
  void Adopt(const std::shared_ptr<Vm>& vm, pid_t pid);
  void RecoverDead(const std::shared_ptr<Vm>& vm);

  PluginContext& ctx_;
  const Options opts_;
  const std::string vms_dir_;
  const bool uefi_;
  std::atomic<std::uint64_t> next_run_id_{1};
  std::atomic<bool> stopping_{false};

  mutable std::mutex ready_mu_;
  mutable std::condition_variable ready_cv_;
  mutable std::atomic<bool> ready_{false};

  mutable std::once_flag accel_once_;
  mutable AccelChoice auto_accel_;

  mutable std::mutex map_mu_;
  std::map<std::string, std::shared_ptr<Vm>> vms_;

  ThreadGroup threads_;  // last: joined before the state above goes away
};

// ---------------------------------------------------------------------------------------------
// Create, delete

Result<v1::VirtualMachine> KvmCompute::CreateVm(const v1::CreateVmRequest& request) {
  MarkReady();
  const std::string& name = request.metadata().name();
  const auto& spec = request.spec();
  // Everything is checked before anything is written.
  HCI_RETURN_NOT_OK(ValidateName("metadata.name", name));
  HCI_RETURN_NOT_OK(ValidateSpec(spec, uefi_));
  auto existing = [&](Vm& vm) -> Result<v1::VirtualMachine> {
    std::lock_guard lock(vm.mu);
    std::string diff = DescribeSpecDifference(vm.obj.spec(), spec);
    if (diff.empty()) return vm.obj;
    return AlreadyExists("vm " + Quote(name) + " already exists with a different spec (" + diff +
                         ")");
  };
  if (auto found = Find(name); found.ok()) return existing(**found);
  HCI_RETURN_NOT_OK(CheckSocketPaths(name));
  HCI_RETURN_NOT_OK(CheckVolumes(spec));

  auto vm = std::make_shared<Vm>(name, VmPaths::For(vms_dir_, name));
  *vm->obj.mutable_metadata() = NewObjectMeta(request.metadata());
  *vm->obj.mutable_spec() = spec;
  vm->obj.mutable_status()->set_node(ctx_.node_name());
  {
    std::lock_guard lock(map_mu_);
    if (auto it = vms_.find(name); it != vms_.end()) {
      auto other = it->second;
      return existing(*other);
    }
    const std::string& dir = vm->paths.dir;
    if (::mkdir(dir.c_str(), 0700) != 0) {
      int err = errno;
      if (err != EEXIST) return ErrnoStatus(err, "mkdir \"" + dir + "\"");
      // A directory without a definition is what a crashed CreateVm leaves: reuse it.
      if (::access(vm->paths.spec.c_str(), F_OK) == 0) {
        return FailedPrecondition("vm " + Quote(name) + ": \"" + dir +
                                  "\" exists but could not be loaded; remove it");
      }
    }
    ::chmod(dir.c_str(), 0700);
    v1::VirtualMachine definition;
    *definition.mutable_metadata() = vm->obj.metadata();
    *definition.mutable_spec() = spec;
    Status written = WriteFileAtomically(vm->paths.spec, definition.SerializeAsString());
    if (!written.ok()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
      return written;
    }
    std::lock_guard vm_lock(vm->mu);
    SetPhaseLocked(*vm, v1::VM_PHASE_STOPPED, "Created");
    vms_.emplace(name, vm);
  }
  if (spec.run_strategy() == v1::RUN_STRATEGY_ALWAYS) {
    // KubeVirt's Always: the VM runs as soon as it exists. A failed start leaves it defined,
    // with the cause in its status (and a Warning event).
    std::unique_lock op(vm->op_mu, std::defer_lock);
    if (LockOp(op).ok()) StartLocked(vm, /*automatic=*/false).status().IgnoreError();
  }
  std::lock_guard lock(vm->mu);
  return vm->obj;
}

Status KvmCompute::DeleteVm(const v1::DeleteVmRequest& request) {
  MarkReady();
  auto found = Find(request.name());
  if (!found.ok()) return Status();  // already gone
  auto vm = *found;
  std::unique_lock op(vm->op_mu, std::defer_lock);
  HCI_RETURN_NOT_OK(LockOp(op));
  bool running;
  {
    std::lock_guard lock(vm->mu);
    if (vm->deleted) return Status();
    running = vm->run != nullptr;
    if (running && !request.force()) {
      return FailedPrecondition("vm " + Quote(vm->name) + " is " +
                                PhaseName(vm->obj.status().phase()) +
                                "; stop it first, or delete it with force");
    }
  }
  if (running) HCI_RETURN_NOT_OK(StopLocked(vm, /*force=*/true, 0));
  v1::VirtualMachineSpec spec;
  {
    std::lock_guard lock(vm->mu);
    CancelRestartLocked(*vm);
    vm->deleted = true;
    spec = vm->obj.spec();
  }
  {
    std::lock_guard lock(map_mu_);
    vms_.erase(vm->name);
  }
  // A VM that failed while no Host ran may still hold its volumes.
  DetachDisks(vm->name, spec);
  std::error_code ec;
  std::filesystem::remove_all(vm->paths.dir, ec);
  if (ec) {
    ctx_.logger().Warn("vm", vm->name, "cannot remove \"" + vm->paths.dir + "\": " + ec.message());
  }
  std::lock_guard lock(vm->mu);
  PublishLocked(*vm, v1::EVENT_TYPE_NORMAL, "VmDeleted", "VM definition removed");
  return Status();
}

// ---------------------------------------------------------------------------------------------
// Start

Result<std::shared_ptr<qmp::QmpClient>> KvmCompute::ConnectQmp(const std::shared_ptr<Vm>& vm,
                                                               const std::shared_ptr<Run>& run,
                                                               Clock::time_point deadline) {
  std::weak_ptr<Vm> weak_vm = vm;
  std::weak_ptr<Run> weak_run = run;
  qmp::ConnectOptions options;
  options.socket_path = vm->paths.qmp_socket;
  options.logger = ctx_.logger();
  options.log_object_name = vm->name;
  options.on_event = [weak_vm, weak_run](const qmp::QmpEvent& event) {
    auto v = weak_vm.lock();
    auto r = weak_run.lock();
    if (!v || !r) return;
    {
      std::lock_guard lock(v->mu);
      if (event.name == "SHUTDOWN") {
        auto it = event.data.find("reason");
        if (it != event.data.end() && it->value().is_string()) {
          r->shutdown_reason = std::string(it->value().as_string());
        }
        if (r->shutdown_reason == "guest-shutdown") r->guest_shutdown = true;
      } else if (event.name == "GUEST_PANICKED") {
        r->panicked = true;
      } else if (event.name == "STOP" || event.name == "RESUME") {
        r->reconcile = true;
      } else {
        return;
      }
    }
    v->cv.notify_all();
  };
  options.on_disconnect = [weak_vm, weak_run](const Status&) {
    auto v = weak_vm.lock();
    auto r = weak_run.lock();
    if (!v || !r) return;
    {
      std::lock_guard lock(v->mu);
      r->qmp_lost = true;
    }
    v->cv.notify_all();
  };
  // Connect in short slices so that a QEMU that dies during start-up is noticed at once.
  for (;;) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    options.connect_timeout = std::clamp(left, milliseconds(1), milliseconds(1000));
    auto client = qmp::QmpClient::Connect(options);
    if (client.ok()) return std::shared_ptr<qmp::QmpClient>(std::move(client).MoveValueUnsafe());
    if (run->WaitExit(0ms)) {
      return Unavailable("QEMU exited during start-up: " + DescribeDeath(*vm, *run));
    }
    if (Clock::now() >= deadline || stopping_.load()) {
      return DeadlineExceeded("QEMU's monitor did not answer: " + client.status().message());
    }
  }
}

Result<v1::VirtualMachine> KvmCompute::StartLocked(const std::shared_ptr<Vm>& vm, bool automatic) {
  const auto t0 = Clock::now();
  v1::VirtualMachineSpec spec;
  {
    std::lock_guard lock(vm->mu);
    ++vm->restart_token;  // this start supersedes any scheduled one
    SetRestartConditionLocked(*vm, false, {});
    SetPhaseLocked(*vm, v1::VM_PHASE_STARTING, automatic ? "Restarting" : "StartRequested");
    spec = vm->obj.spec();
  }
  // A failed start leaves the VM Stopped (an explicit start) or Failed (an automatic one, so
  // that the run strategy tries again), never stuck in Starting.
  auto fail = [&](Status status, std::string reason) -> Status {
    std::lock_guard lock(vm->mu);
    SetPhaseLocked(*vm, automatic ? v1::VM_PHASE_FAILED : v1::VM_PHASE_STOPPED, std::move(reason),
                   status.message());
    PublishLocked(*vm, v1::EVENT_TYPE_WARNING, "FailedStart", status.message());
    return status;
  };

  auto exe =
      process::FindProgram(opts_.qemu_binary, std::getenv("PATH") ? std::getenv("PATH") : "");
  if (!exe.ok()) {
    return fail(FailedPrecondition("qemu_binary: \"" + opts_.qemu_binary +
                                   "\" was not found (install the Debian package "
                                   "qemu-system-x86): " +
                                   exe.status().message()),
                "FailedStart");
  }
  if (Status s = CheckSocketPaths(vm->name); !s.ok()) return fail(s, "FailedStart");
  auto accel = ResolveAccel(spec);
  if (!accel.ok()) return fail(accel.status(), "FailedStart");

  auto attached = AttachDisks(vm->name, spec);
  if (!attached.ok()) return fail(attached.status(), "FailedAttachVolume");
  {
    // ResizeDisk needs them to open a second connection to an NBD volume.
    google::protobuf::Struct disks;
    for (int i = 0; i < spec.disks_size(); ++i) {
      *(*disks.mutable_fields())[spec.disks(i).name()].mutable_struct_value() =
          (*attached)[static_cast<std::size_t>(i)].blockdev();
    }
    if (Status s = WriteFileAtomically(vm->paths.disks, disks.SerializeAsString()); !s.ok()) {
      ctx_.logger().Warn("vm", vm->name,
                         "cannot save the disks' blockdev options (ResizeDisk of an NBD volume "
                         "will fail until the next start): " +
                             s.ToString());
    }
  }
  auto detach_and_fail = [&](Status status, std::string reason) -> Status {
    DetachDisks(vm->name, spec);
    return fail(std::move(status), std::move(reason));
  };

  LaunchConfig launch;
  launch.qemu_binary = *exe;
  launch.vm_name = vm->name;
  launch.machine_type = spec.machine_type().empty() ? opts_.machine_type : spec.machine_type();
  launch.accel = accel->accel;
  launch.paths = vm->paths;
  auto argv = BuildQemuArgv(spec, *attached, launch);
  if (!argv.ok()) return detach_and_fail(argv.status(), "FailedStart");

  const VmPaths& p = vm->paths;
  for (const auto* stale : {&p.qmp_socket, &p.console_socket, &p.qemu_pid, &p.pid}) {
    ::unlink(stale->c_str());
  }
  if (spec.firmware() == v1::FIRMWARE_UEFI && ::access(p.uefi_vars.c_str(), F_OK) != 0) {
    auto vars = ReadFile(kOvmfVars);
    Status copied = vars.ok() ? WriteFileAtomically(p.uefi_vars, *vars) : vars.status();
    if (!copied.ok()) return detach_and_fail(copied, "FailedStart");
  }
  // A header line per run in qemu.log; the run's own output starts after it.
  std::uint64_t log_offset = 0;
  {
    int fd = ::open(p.qemu_log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
      return detach_and_fail(ErrnoStatus(errno, "open \"" + p.qemu_log + "\""), "FailedStart");
    std::string header = std::string(kLogHeader) +
                         google::protobuf::util::TimeUtil::ToString(Now()) +
                         " starting QEMU (accel " + accel->accel + ")\n";
    ssize_t n = ::write(fd, header.data(), header.size());
    struct stat st {};
    if (n >= 0 && ::fstat(fd, &st) == 0) log_offset = static_cast<std::uint64_t>(st.st_size);
    ::close(fd);
  }

  process::DaemonOptions daemon;
  daemon.argv = std::move(*argv);
  daemon.working_dir = p.dir;
  daemon.log_file = p.qemu_log;
  daemon.pid_file = p.pid;
  auto pid = process::SpawnDaemon(daemon);
  if (!pid.ok()) return detach_and_fail(pid.status(), "FailedStart");
  const auto t_spawned = Clock::now();

  auto run = std::make_shared<Run>();
  run->id = next_run_id_++;
  run->pid = *pid;
  run->pidfd = PidfdOpen(*pid);
  run->started = t_spawned;
  run->log_offset = log_offset;

  auto deadline = t0 + milliseconds(opts_.start_timeout_ms);
  auto abort_start = [&](Status status) -> Status {
    run->Kill();
    run->WaitExit(kKillWait);
    DropQmp(*vm, *run);
    return detach_and_fail(std::move(status), "FailedStart");
  };
  auto client = ConnectQmp(vm, run, deadline);
  if (!client.ok()) return abort_start(client.status());
  // The directory is 0700 already; the sockets get 0600 as well (QEMU creates them with the
  // process umask).
  ::chmod(p.qmp_socket.c_str(), 0600);
  ::chmod(p.console_socket.c_str(), 0600);
  {
    std::lock_guard lock(vm->mu);
    run->qmp = *client;
  }
  // QEMU runs the guest at once (no -S); wait until it says so.
  std::string state;
  for (;;) {
    auto status = (*client)->Execute("query-status");
    if (status.ok() && status->is_object()) {
      if (auto* s = status->as_object().if_contains("status"); s && s->is_string()) {
        state = std::string(s->as_string());
      }
    }
    if (state == "running" || state == "shutdown" || state == "guest-panicked") break;
    if (run->WaitExit(0ms)) {
      return abort_start(Unavailable("QEMU exited during start-up: " + DescribeDeath(*vm, *run)));
    }
    if (Clock::now() >= deadline) {
      return abort_start(DeadlineExceeded(
          "QEMU did not report running within " + std::to_string(opts_.start_timeout_ms) +
          " ms (last status: " + (state.empty() ? status.status().ToString() : state) + ")"));
    }
    std::this_thread::sleep_for(20ms);
  }
  client->reset();
  const auto t_running = Clock::now();

  v1::VirtualMachine out;
  {
    std::lock_guard lock(vm->mu);
    vm->run = run;
    auto* status = vm->obj.mutable_status();
    status->set_accelerator(accel->accel);
    status->set_accelerator_reason(accel->reason);
    status->set_node(ctx_.node_name());
    *status->mutable_start_time() = Now();
    if (automatic) status->set_restart_count(status->restart_count() + 1);
    SetPhaseLocked(*vm, v1::VM_PHASE_RUNNING, automatic ? "Restarted" : "Started",
                   "QEMU pid " + std::to_string(*pid) + " running " + Ms(t_running - t0) +
                       " after the start request (accel " + accel->accel + ")");
    out = vm->obj;
  }
  ctx_.logger().Info("vm", vm->name,
                     "QEMU pid " + std::to_string(*pid) + " spawned in " + Ms(t_spawned - t0) +
                         ", running in " + Ms(t_running - t0) + "; " + accel->reason);
  StartMonitor(vm, run);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Stop

void KvmCompute::EndProcess(Vm& vm, Run& run) {
  if (run.WaitExit(0ms)) return;
  std::shared_ptr<qmp::QmpClient> q;
  {
    std::lock_guard lock(vm.mu);
    q = run.qmp;
  }
  if (q && q->connected()) {
    auto quit = q->Execute("quit", {}, 5s);
    if (!quit.ok()) ctx_.logger().Debug("vm", vm.name, "quit: " + quit.status().ToString());
    q.reset();
    if (run.WaitExit(kQuitWait)) return;
    ctx_.logger().Warn("vm", vm.name, "QEMU did not quit within " + Ms(kQuitWait) + "; SIGKILL");
  }
  q.reset();
  run.Kill();
  if (!run.WaitExit(kKillWait)) {
    ctx_.logger().Error(
        "vm", vm.name,
        "QEMU pid " + std::to_string(run.pid) + " survived SIGKILL for " + Ms(kKillWait));
  }
}

void KvmCompute::FinishRun(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run,
                           v1::VmPhase phase, std::string reason, std::string message) {
  std::shared_ptr<Run> dropped;
  std::shared_ptr<qmp::QmpClient> q;
  v1::VirtualMachineSpec spec;
  {
    std::lock_guard lock(vm->mu);
    if (vm->run == run) dropped = std::move(vm->run);
    q = std::move(run->qmp);
    spec = vm->obj.spec();
  }
  q.reset();
  dropped.reset();
  // QEMU removes its sockets when it exits normally, not when it is killed.
  ::unlink(vm->paths.qmp_socket.c_str());
  ::unlink(vm->paths.console_socket.c_str());
  DetachDisks(vm->name, spec);
  std::lock_guard lock(vm->mu);
  SetPhaseLocked(*vm, phase, std::move(reason), std::move(message));
}

std::string KvmCompute::DescribeDeath(const Vm& vm, const Run& run) const {
  std::string tail;
  if (auto log = ReadFile(vm.paths.qemu_log); log.ok() && log->size() > run.log_offset) {
    tail = LastLines(std::string_view(*log).substr(run.log_offset), kLogLines);
  }
  bool clean_exit = ::access(vm.paths.qemu_pid.c_str(), F_OK) != 0;
  std::string what = "QEMU (pid " + std::to_string(run.pid) + ")" +
                     (clean_exit ? " exited" : " died (killed, or it crashed)");
  return tail.empty() ? what + "; qemu.log has nothing to say" : what + ": " + tail;
}

Result<v1::VirtualMachine> KvmCompute::StopLocked(const std::shared_ptr<Vm>& vm, bool force,
                                                  std::uint32_t grace_ms) {
  std::shared_ptr<Run> run;
  bool paused = false;
  {
    std::lock_guard lock(vm->mu);
    if (vm->deleted) return NotFound("vm " + Quote(vm->name) + " does not exist");
    CancelRestartLocked(*vm);
    if (!vm->run) {
      // A failed VM (possibly waiting for an automatic restart) is now stopped for good.
      if (vm->obj.status().phase() == v1::VM_PHASE_FAILED) {
        SetPhaseLocked(*vm, v1::VM_PHASE_STOPPED, "StopRequested",
                       "stopped after: " + vm->obj.status().reason());
      }
      return vm->obj;
    }
    run = vm->run;
    run->owned = true;
    paused = vm->obj.status().phase() == v1::VM_PHASE_PAUSED;
    if (grace_ms == 0) grace_ms = vm->obj.spec().stop_grace_period_ms();
    if (grace_ms == 0) grace_ms = kDefaultStopGraceMs;
    SetPhaseLocked(
        *vm, v1::VM_PHASE_STOPPING, "StopRequested",
        force ? "force" : "ACPI power button, grace period " + std::to_string(grace_ms) + " ms");
  }
  vm->cv.notify_all();
  bool graceful = false;
  std::string message;
  if (force) {
    message = "powered off at once (force)";
  } else if (paused) {
    message = "the VM was paused, so it could not answer the power button";
  } else {
    const auto t0 = Clock::now();
    std::shared_ptr<qmp::QmpClient> q;
    {
      std::lock_guard lock(vm->mu);
      q = run->qmp;
      graceful = run->guest_shutdown;
    }
    auto press = [&] {
      auto reply = q->Execute("system_powerdown");
      if (!reply.ok()) {
        ctx_.logger().Warn("vm", vm->name, "system_powerdown: " + reply.status().ToString());
      }
      return reply.ok();
    };
    const bool pressed = graceful || (q && press());
    int presses = pressed ? 1 : 0;
    // Without a monitor (or when QEMU refused the button) nobody can ask the guest: force.
    const auto deadline = pressed ? t0 + milliseconds(grace_ms) : t0;
    const auto retry = milliseconds(opts_.powerdown_retry_ms);
    auto next_press = t0 + retry;
    while (!graceful && !run->WaitExit(0ms) && Clock::now() < deadline && !stopping_.load()) {
      if (q && retry.count() > 0 && Clock::now() >= next_press) {
        // A press the guest missed (it was still booting) is not queued by ACPI: press again.
        if (press()) ++presses;
        next_press += retry;
      }
      std::unique_lock lock(vm->mu);
      vm->cv.wait_for(lock, std::min<Clock::duration>(kMonitorTick, deadline - Clock::now()),
                      [&] { return run->guest_shutdown; });
      graceful = run->guest_shutdown;
    }
    q.reset();
    if (graceful) {
      message = "the guest powered off " + Ms(Clock::now() - t0) + " after the power button" +
                (presses > 1 ? " (pressed " + std::to_string(presses) + " times)" : "");
    } else if (!pressed) {
      message = "the power button could not be pressed (QEMU's monitor is not connected)";
    } else if (run->WaitExit(0ms)) {
      message = "QEMU ended before the guest powered off: " + DescribeDeath(*vm, *run);
    } else {
      message = "the guest did not power off within " + std::to_string(grace_ms) + " ms";
    }
  }
  EndProcess(*vm, *run);
  FinishRun(vm, run, v1::VM_PHASE_STOPPED, graceful ? "GuestShutdown" : "ForcedStop", message);
  std::lock_guard lock(vm->mu);
  return vm->obj;
}

// ---------------------------------------------------------------------------------------------
// Restart, pause, resume

Result<v1::VirtualMachine> KvmCompute::RestartVm(const v1::RestartVmRequest& request) {
  MarkReady();
  HCI_ASSIGN_OR_RAISE(auto vm, Find(request.name()));
  std::unique_lock op(vm->op_mu, std::defer_lock);
  HCI_RETURN_NOT_OK(LockOp(op));
  std::shared_ptr<qmp::QmpClient> q;
  {
    std::lock_guard lock(vm->mu);
    if (vm->deleted) return NotFound("vm " + Quote(vm->name) + " does not exist");
    if (!vm->run || vm->obj.status().phase() != v1::VM_PHASE_RUNNING) {
      return FailedPrecondition("vm " + Quote(vm->name) + " is " +
                                PhaseName(vm->obj.status().phase()) +
                                "; only a Running VM can be restarted");
    }
    q = vm->run->qmp;
  }
  if (request.force()) {
    // A hardware reset: the same QEMU process, the guest boots again at once.
    if (!q) return Unavailable("vm " + Quote(vm->name) + ": QEMU's monitor is not connected");
    HCI_RETURN_NOT_OK(q->Execute("system_reset").status());
    q.reset();
    std::lock_guard lock(vm->mu);
    auto* status = vm->obj.mutable_status();
    status->set_restart_count(status->restart_count() + 1);
    status->set_reason("Restarted");
    status->set_message("reset (system_reset)");
    PersistLocked(*vm);
    PublishLocked(*vm, v1::EVENT_TYPE_NORMAL, "VmRestarted", "VM reset (system_reset)");
    return vm->obj;
  }
  // A guest reboot cannot be requested over ACPI, so a graceful restart is a graceful stop
  // followed by a start of a new QEMU process.
  q.reset();
  HCI_RETURN_NOT_OK(StopLocked(vm, /*force=*/false, 0).status());
  HCI_ASSIGN_OR_RAISE(auto started, StartLocked(vm, /*automatic=*/false));
  std::lock_guard lock(vm->mu);
  auto* status = vm->obj.mutable_status();
  status->set_restart_count(status->restart_count() + 1);
  PersistLocked(*vm);
  PublishLocked(*vm, v1::EVENT_TYPE_NORMAL, "VmRestarted", "VM stopped and started again");
  return vm->obj;
}

Result<v1::VirtualMachine> KvmCompute::PauseOrResume(const std::string& name, bool pause) {
  MarkReady();
  HCI_ASSIGN_OR_RAISE(auto vm, Find(name));
  std::unique_lock op(vm->op_mu, std::defer_lock);
  HCI_RETURN_NOT_OK(LockOp(op));
  const v1::VmPhase from = pause ? v1::VM_PHASE_RUNNING : v1::VM_PHASE_PAUSED;
  std::shared_ptr<qmp::QmpClient> q;
  {
    std::lock_guard lock(vm->mu);
    if (vm->deleted) return NotFound("vm " + Quote(name) + " does not exist");
    if (!vm->run || vm->obj.status().phase() != from) {
      return FailedPrecondition("vm " + Quote(name) + " is " + PhaseName(vm->obj.status().phase()) +
                                "; only a " + PhaseName(from) + " VM can be " +
                                (pause ? "paused" : "resumed"));
    }
    q = vm->run->qmp;
  }
  if (!q) return Unavailable("vm " + Quote(name) + ": QEMU's monitor is not connected");
  HCI_RETURN_NOT_OK(q->Execute(pause ? "stop" : "cont").status());
  q.reset();
  std::lock_guard lock(vm->mu);
  SetPhaseLocked(*vm, pause ? v1::VM_PHASE_PAUSED : v1::VM_PHASE_RUNNING,
                 pause ? "PausedByUser" : "ResumedByUser");
  return vm->obj;
}

// ---------------------------------------------------------------------------------------------
// Monitoring

void KvmCompute::StartMonitor(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run) {
  if (!threads_.Spawn([this, vm, run] { Monitor(vm, run); })) {
    ctx_.logger().Warn("vm", vm->name, "not monitored: the backend is shutting down");
  }
}

void KvmCompute::Monitor(std::shared_ptr<Vm> vm, std::shared_ptr<Run> run) {
  std::optional<RunEnd> end;
  while (!end) {
    bool dead = run->WaitExit(0ms);
    bool reconcile = false;
    {
      std::unique_lock lock(vm->mu);
      if (stopping_.load() || vm->run != run || run->owned) break;
      if (run->panicked) {
        end = RunEnd::kPanicked;
      } else if (run->guest_shutdown) {
        end = RunEnd::kGuestShutdown;
      } else if (dead) {
        end = RunEnd::kExited;
      } else if (run->reconcile) {
        run->reconcile = false;
        reconcile = true;
      } else {
        vm->cv.wait_for(lock, kMonitorTick, [&] {
          return stopping_.load() || run->owned || run->panicked || run->guest_shutdown ||
                 run->reconcile;
        });
      }
    }
    if (reconcile) Reconcile(vm, run);
  }
  if (end) HandleRunEnd(vm, run, *end);
  run.reset();
  vm.reset();
}

void KvmCompute::Reconcile(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run) {
  // An operation in progress sets the phase itself (its own stop/cont caused the event).
  std::unique_lock op(vm->op_mu, std::try_to_lock);
  if (!op.owns_lock()) return;
  std::shared_ptr<qmp::QmpClient> q;
  {
    std::lock_guard lock(vm->mu);
    if (vm->run != run) return;
    q = run->qmp;
  }
  if (!q) return;
  auto reply = q->Execute("query-status");
  q.reset();
  if (!reply.ok() || !reply->is_object()) return;
  auto* s = reply->as_object().if_contains("status");
  if (s == nullptr || !s->is_string()) return;
  std::string state(s->as_string());
  std::lock_guard lock(vm->mu);
  if (vm->run != run) return;
  auto phase = vm->obj.status().phase();
  if (state == "running" && phase == v1::VM_PHASE_PAUSED) {
    SetPhaseLocked(*vm, v1::VM_PHASE_RUNNING, "Resumed", "QEMU reports running");
  } else if ((state == "paused" || state == "io-error" || state == "internal-error" ||
              state == "suspended") &&
             phase == v1::VM_PHASE_RUNNING) {
    SetPhaseLocked(*vm, v1::VM_PHASE_PAUSED, state == "io-error" ? "IOError" : "PausedByQemu",
                   "QEMU reports status " + state);
  }
}

void KvmCompute::HandleRunEnd(const std::shared_ptr<Vm>& vm, const std::shared_ptr<Run>& run,
                              RunEnd end) {
  std::unique_lock op(vm->op_mu, std::defer_lock);
  if (!LockOp(op).ok()) return;
  {
    std::lock_guard lock(vm->mu);
    // An operation that held op_mu meanwhile has dealt with this run.
    if (vm->deleted || vm->run != run || run->owned) return;
    run->owned = true;
  }
  v1::VmPhase phase = v1::VM_PHASE_FAILED;
  std::string reason, message;
  switch (end) {
    case RunEnd::kPanicked:
      reason = "GuestPanicked";
      message = "the guest kernel panicked (pvpanic); QEMU was stopped";
      break;
    case RunEnd::kGuestShutdown:
      phase = v1::VM_PHASE_STOPPED;
      reason = "GuestShutdown";
      message = "the guest powered off by itself";
      break;
    case RunEnd::kExited:
      reason = "ProcessDied";
      message = DescribeDeath(*vm, *run);
      break;
  }
  auto ran_for = Clock::now() - run->started;
  EndProcess(*vm, *run);
  FinishRun(vm, run, phase, reason, message);
  MaybeScheduleRestart(vm, phase == v1::VM_PHASE_FAILED, ran_for);
}

void KvmCompute::MaybeScheduleRestart(const std::shared_ptr<Vm>& vm, bool failed,
                                      Clock::duration ran_for) {
  std::uint64_t token;
  milliseconds delay;
  {
    std::lock_guard lock(vm->mu);
    if (vm->deleted) return;
    auto strategy = vm->obj.spec().run_strategy();
    bool restart = strategy == v1::RUN_STRATEGY_ALWAYS ||
                   (strategy == v1::RUN_STRATEGY_RERUN_ON_FAILURE && failed);
    if (!restart) return;
    if (ran_for >= milliseconds(opts_.restart_backoff_reset_ms)) vm->failures = 0;
    std::uint64_t ms = opts_.restart_backoff_initial_ms;
    for (std::uint32_t i = 0; i < vm->failures && ms < opts_.restart_backoff_max_ms; ++i) ms *= 2;
    delay = milliseconds(std::min<std::uint64_t>(ms, opts_.restart_backoff_max_ms));
    ++vm->failures;
    token = ++vm->restart_token;
    SetRestartConditionLocked(
        *vm, true,
        "run strategy " + v1::RunStrategy_Name(vm->obj.spec().run_strategy()) + ": restarting in " +
            std::to_string(delay.count()) + " ms (attempt " + std::to_string(vm->failures) + ")");
    PersistLocked(*vm);
  }
  ctx_.logger().Info("vm", vm->name, "restarting in " + std::to_string(delay.count()) + " ms");
  threads_.Spawn([this, vm, token, delay] { DelayedRestart(vm, token, delay); });
}

void KvmCompute::DelayedRestart(std::shared_ptr<Vm> vm, std::uint64_t token, milliseconds delay) {
  auto deadline = Clock::now() + delay;
  {
    std::unique_lock lock(vm->mu);
    vm->cv.wait_until(lock, deadline, [&] {
      return stopping_.load() || vm->deleted || vm->restart_token != token;
    });
    if (stopping_.load() || vm->deleted || vm->restart_token != token) return;
  }
  if (!WaitReady()) return;
  std::unique_lock op(vm->op_mu, std::defer_lock);
  if (!LockOp(op).ok()) return;
  {
    std::lock_guard lock(vm->mu);
    if (vm->deleted || vm->restart_token != token || vm->run) return;
  }
  auto started = StartLocked(vm, /*automatic=*/true);
  if (!started.ok()) MaybeScheduleRestart(vm, /*failed=*/true, Clock::duration::zero());
}

// ---------------------------------------------------------------------------------------------
// Metrics

Result<v1::VmMetricsResponse> KvmCompute::VmMetrics(const v1::VmMetricsRequest& request) {
  MarkReady();
  HCI_ASSIGN_OR_RAISE(auto vm, Find(request.name()));
  std::shared_ptr<qmp::QmpClient> q;
  pid_t pid;
  v1::VirtualMachineSpec spec;
  std::string node;
  {
    std::lock_guard lock(vm->mu);
    if (!vm->run) {
      return FailedPrecondition("vm " + Quote(vm->name) + " is " +
                                PhaseName(vm->obj.status().phase()) +
                                "; metrics exist only while the VM runs");
    }
    q = vm->run->qmp;
    pid = vm->run->pid;
    spec = vm->obj.spec();
    node = vm->obj.status().node();
  }
  if (!q) return Unavailable("vm " + Quote(vm->name) + ": QEMU's monitor is not connected");
  const long ticks = ::sysconf(_SC_CLK_TCK);
  const std::string proc = "/proc/" + std::to_string(pid);
  // vCPU threads, ordered by cpu-index.
  std::vector<double> vcpus;
  HCI_ASSIGN_OR_RAISE(auto cpus, q->Execute("query-cpus-fast"));
  if (cpus.is_array()) {
    std::vector<std::pair<std::int64_t, std::int64_t>> threads;  // cpu-index, thread-id
    for (const auto& c : cpus.as_array()) {
      if (!c.is_object()) continue;
      auto* index = c.as_object().if_contains("cpu-index");
      auto* tid = c.as_object().if_contains("thread-id");
      if (index && tid && index->is_int64() && tid->is_int64()) {
        threads.emplace_back(index->as_int64(), tid->as_int64());
      }
    }
    std::sort(threads.begin(), threads.end());
    for (const auto& [index, tid] : threads) {
      auto stat = ReadFile(proc + "/task/" + std::to_string(tid) + "/stat");
      auto seconds = stat.ok() ? ParseStatCpuSeconds(*stat, ticks) : Result<double>(stat.status());
      vcpus.push_back(seconds.ok() ? *seconds : 0.0);
    }
  }
  std::uint64_t rss = 0;
  if (auto status = ReadFile(proc + "/status"); status.ok()) {
    if (auto bytes = ParseVmRssBytes(*status); bytes.ok()) rss = *bytes;
  }
  std::map<std::string, std::string> disk_of_node;
  for (const auto& d : spec.disks()) disk_of_node[NodeNameFor(d.name())] = d.name();
  std::vector<DriveStats> drives;
  HCI_ASSIGN_OR_RAISE(auto blockstats, q->Execute("query-blockstats"));
  q.reset();
  if (blockstats.is_array()) {
    for (const auto& entry : blockstats.as_array()) {
      if (!entry.is_object()) continue;
      const auto& o = entry.as_object();
      auto* node_name = o.if_contains("node-name");
      auto* stats = o.if_contains("stats");
      if (!node_name || !node_name->is_string() || !stats || !stats->is_object()) continue;
      auto it = disk_of_node.find(std::string(node_name->as_string()));
      if (it == disk_of_node.end()) continue;
      auto number = [&](const char* key) -> std::uint64_t {
        auto* v = stats->as_object().if_contains(key);
        return v && v->is_int64() && v->as_int64() > 0 ? static_cast<std::uint64_t>(v->as_int64())
                                                       : 0;
      };
      drives.push_back(DriveStats{it->second, number("rd_bytes"), number("wr_bytes"),
                                  number("rd_operations"), number("wr_operations")});
    }
  }
  v1::VmMetricsResponse out;
  out.set_text(RenderVmMetrics(vm->name, node, vcpus, rss, drives));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Disk resize

namespace {

// The virtual size QEMU gives the disk whose root node is `node` (query-block).
Result<std::uint64_t> DiskBytes(qmp::QmpClient& q, const std::string& node) {
  HCI_ASSIGN_OR_RAISE(auto blocks, q.Execute("query-block"));
  if (blocks.is_array()) {
    for (const auto& b : blocks.as_array()) {
      const auto* inserted = b.is_object() ? b.as_object().if_contains("inserted") : nullptr;
      if (inserted == nullptr || !inserted->is_object()) continue;
      const auto* name = inserted->as_object().if_contains("node-name");
      if (name == nullptr || !name->is_string() || name->as_string() != node) continue;
      const auto* image = inserted->as_object().if_contains("image");
      const auto* size = image != nullptr && image->is_object()
                             ? image->as_object().if_contains("virtual-size")
                             : nullptr;
      if (size != nullptr && size->is_int64() && size->as_int64() >= 0) {
        return static_cast<std::uint64_t>(size->as_int64());
      }
    }
  }
  return NotFound("query-block: no device uses block node " + Quote(node));
}

Result<std::set<std::string>> NamedNodes(qmp::QmpClient& q) {
  HCI_ASSIGN_OR_RAISE(auto nodes, q.Execute("query-named-block-nodes"));
  std::set<std::string> out;
  if (nodes.is_array()) {
    for (const auto& n : nodes.as_array()) {
      const auto* name = n.is_object() ? n.as_object().if_contains("node-name") : nullptr;
      if (name != nullptr && name->is_string()) out.insert(std::string(name->as_string()));
    }
  }
  return out;
}

}  // namespace

// A file or qcow2 node grows with `block_resize`. An NBD export cannot: QEMU 7.2's NBD client
// learned the size at connect and refuses to grow (block/nbd.c nbd_co_truncate: "Cannot grow
// NBD nodes"). So an NBD disk is a raw node over the NBD node (BuildQemuArgv), and a resize
//   1. blockdev-add   a second NBD node, same server and export: a new connection, which the
//                     server answers with the new size;
//   2. blockdev-reopen the raw node with `file` = the new NBD node (QEMU drains the node, so no
//                     request is in flight on the old connection; qapi/block-core.json);
//   3. block_resize   the raw node to the new size: raw passes the truncate to the new NBD
//                     node, which accepts a size it already has, and QEMU tells the device
//                     (virtio-blk raises a config-change interrupt, the guest re-reads capacity);
//   4. blockdev-del   the old NBD node.
// Verified on QEMU 7.2 with the test guest (tests/plugins/replicated/vm_test.cc).
Status KvmCompute::ResizeDisk(const v1::ResizeDiskRequest& request) {
  MarkReady();
  HCI_ASSIGN_OR_RAISE(auto vm, Find(request.vm()));
  const std::uint64_t size = request.size_bytes();
  v1::Disk disk;
  std::shared_ptr<qmp::QmpClient> q;
  {
    std::lock_guard lock(vm->mu);
    if (vm->deleted) return NotFound("vm " + Quote(request.vm()) + " does not exist");
    bool found = false;
    for (const auto& d : vm->obj.spec().disks()) {
      if (d.volume() == request.volume()) {
        disk = d;
        found = true;
      }
    }
    if (!found) {
      return NotFound("volume: vm " + Quote(request.vm()) + " has no disk on volume " +
                      Quote(request.volume()));
    }
    // Not running: its next start opens the volume at the new size.
    if (!vm->run) return Status();
    q = vm->run->qmp;
  }
  if (!q) return Unavailable("vm " + Quote(request.vm()) + ": QEMU's monitor is not connected");
  const std::string root = NodeNameFor(disk.name());
  const std::string what = "vm " + Quote(request.vm()) + " disk " + Quote(disk.name());
  HCI_ASSIGN_OR_RAISE(std::uint64_t before, DiskBytes(*q, root));
  if (size < before) {
    return InvalidArgument("size_bytes: " + std::to_string(size) + " is smaller than " + what +
                           "'s current size " + std::to_string(before));
  }
  if (size == before) return Status();

  HCI_ASSIGN_OR_RAISE(auto nodes, NamedNodes(*q));
  const std::string slot0 = ProtocolNodeNameFor(disk.name(), 0);
  const std::string slot1 = ProtocolNodeNameFor(disk.name(), 1);
  if (nodes.count(slot0) == 0 && nodes.count(slot1) == 0) {
    HCI_RETURN_NOT_OK(
        q->Execute("block_resize", {{"node-name", root}, {"size", static_cast<std::int64_t>(size)}})
            .status()
            .WithContext(what));
  } else {
    if (nodes.count(slot0) > 0 && nodes.count(slot1) > 0) {
      // An earlier resize stopped halfway: the node the raw node does not use can go (QEMU
      // refuses to delete the one in use).
      for (const auto* n : {&slot0, &slot1}) {
        q->Execute("blockdev-del", {{"node-name", *n}}).status().IgnoreError();
      }
      HCI_ASSIGN_OR_RAISE(nodes, NamedNodes(*q));
    }
    const std::string& old_node = nodes.count(slot0) > 0 ? slot0 : slot1;
    const std::string& new_node = nodes.count(slot0) > 0 ? slot1 : slot0;
    auto saved = ReadFile(vm->paths.disks);
    google::protobuf::Struct disks;
    if (!saved.ok() || !disks.ParseFromString(*saved) || disks.fields().count(disk.name()) == 0) {
      return FailedPrecondition(what +
                                ": the blockdev options of its volume were not saved at "
                                "start (" +
                                vm->paths.disks + "); restart the VM to resize it");
    }
    google::protobuf::Value options = disks.fields().at(disk.name());
    auto& fields = *options.mutable_struct_value()->mutable_fields();
    fields["node-name"].set_string_value(new_node);
    if (disk.read_only()) fields["read-only"].set_bool_value(true);
    boost::system::error_code ec;
    boost::json::value args = boost::json::parse(ValueToJson(options), ec);
    if (ec || !args.is_object()) return Internal(what + ": blockdev options are not an object");
    HCI_RETURN_NOT_OK(
        q->Execute("blockdev-add", args.as_object()).status().WithContext(what + ": blockdev-add"));
    boost::json::object raw;
    raw["driver"] = "raw";
    raw["node-name"] = root;
    raw["file"] = new_node;
    if (disk.read_only()) raw["read-only"] = true;
    boost::json::array reopen_options;
    reopen_options.push_back(std::move(raw));
    boost::json::object reopen;
    reopen["options"] = std::move(reopen_options);
    Status reopened = q->Execute("blockdev-reopen", reopen).status();
    if (!reopened.ok()) {
      q->Execute("blockdev-del", {{"node-name", new_node}}).status().IgnoreError();
      return reopened.WithContext(what);
    }
    HCI_RETURN_NOT_OK(
        q->Execute("block_resize", {{"node-name", root}, {"size", static_cast<std::int64_t>(size)}})
            .status()
            .WithContext(what));
    if (Status del = q->Execute("blockdev-del", {{"node-name", old_node}}).status(); !del.ok()) {
      ctx_.logger().Warn(
          "vm", vm->name,
          "resize of disk " + Quote(disk.name()) + ": the old NBD node stays: " + del.ToString());
    }
  }
  HCI_ASSIGN_OR_RAISE(std::uint64_t after, DiskBytes(*q, root));
  q.reset();
  if (after != size) {
    return Internal(what + ": QEMU reports " + std::to_string(after) + " bytes after resizing to " +
                    std::to_string(size));
  }
  std::lock_guard lock(vm->mu);
  PublishLocked(*vm, v1::EVENT_TYPE_NORMAL, "DiskResized",
                "disk " + Quote(disk.name()) + " (volume " + Quote(request.volume()) +
                    ") grew from " + std::to_string(before) + " to " + std::to_string(size) +
                    " bytes");
  return Status();
}

// ---------------------------------------------------------------------------------------------
// Reattach

void KvmCompute::Recover() {
  std::error_code ec;
  std::filesystem::directory_iterator it(vms_dir_, ec);
  if (ec) {
    ctx_.logger().Warn("", "", "cannot list \"" + vms_dir_ + "\": " + ec.message());
    return;
  }
  for (const auto& entry : it) {
    std::string name = entry.path().filename().string();
    if (!IsValidName(name) || !entry.is_directory(ec)) continue;
    auto vm = std::make_shared<Vm>(name, VmPaths::For(vms_dir_, name));
    auto definition = ReadFile(vm->paths.spec);
    v1::VirtualMachine obj;
    if (!definition.ok() || !obj.ParseFromString(*definition) || obj.metadata().name() != name) {
      ctx_.logger().Warn("vm", name,
                         "skipped: \"" + vm->paths.spec + "\" is missing or unreadable");
      continue;
    }
    if (auto status = ReadFile(vm->paths.status); status.ok()) {
      obj.mutable_status()->ParseFromString(*status);
    }
    if (obj.status().phase() == v1::VM_PHASE_UNSPECIFIED) {
      obj.mutable_status()->set_phase(v1::VM_PHASE_STOPPED);
    }
    vm->obj = std::move(obj);
    {
      std::lock_guard lock(map_mu_);
      vms_.emplace(name, vm);
    }
    pid_t pid = -1;
    if (auto text = ReadFile(vm->paths.pid); text.ok()) pid = std::atoi(text->c_str());
    if (pid > 0 && process::ProcessAlive(pid, CmdlineMarker(vm->paths))) {
      Adopt(vm, pid);
    } else {
      RecoverDead(vm);
    }
  }
}

void KvmCompute::Adopt(const std::shared_ptr<Vm>& vm, pid_t pid) {
  auto run = std::make_shared<Run>();
  run->id = next_run_id_++;
  run->pid = pid;
  run->pidfd = PidfdOpen(pid);
  run->started = Clock::now();
  if (auto log = ReadFile(vm->paths.qemu_log); log.ok()) run->log_offset = LatestRunLogOffset(*log);
  // The pidfd must name the process that was checked: check again now that it is open.
  if (!process::ProcessAlive(pid, CmdlineMarker(vm->paths))) {
    RecoverDead(vm);
    return;
  }
  auto client = ConnectQmp(vm, run, Clock::now() + kReattachConnect);
  std::string state;
  if (client.ok()) {
    auto status = (*client)->Execute("query-status");
    if (status.ok() && status->is_object()) {
      if (auto* s = status->as_object().if_contains("status"); s && s->is_string()) {
        state = std::string(s->as_string());
      }
    }
  }
  {
    std::lock_guard lock(vm->mu);
    if (client.ok()) run->qmp = *client;
    vm->run = run;
    if (state == "shutdown") run->guest_shutdown = true;
    if (state == "guest-panicked") run->panicked = true;
    std::string message = "reattached to QEMU pid " + std::to_string(pid);
    const v1::VmPhase persisted = vm->obj.status().phase();
    if (client.ok() && ((state == "running" && persisted == v1::VM_PHASE_RUNNING) ||
                        (state == "paused" && persisted == v1::VM_PHASE_PAUSED))) {
      // Nothing happened to the VM: keep the reason of the transition that got it here
      // (Started, PausedByUser, ...), as every short-lived embedder such as hcictl reattaches.
    } else if (!client.ok()) {
      SetPhaseLocked(*vm, v1::VM_PHASE_UNKNOWN, "MonitorUnavailable",
                     message + ", but its monitor does not answer: " + client.status().message());
    } else if (state == "running") {
      SetPhaseLocked(*vm, v1::VM_PHASE_RUNNING, "Reattached", message);
    } else if (state == "paused" || state == "suspended" || state == "io-error") {
      SetPhaseLocked(*vm, v1::VM_PHASE_PAUSED, "Reattached", message + " (status " + state + ")");
    } else if (state == "shutdown" || state == "guest-panicked") {
      // The monitor records the end (and the run strategy applies).
      PersistLocked(*vm);
    } else {
      SetPhaseLocked(*vm, v1::VM_PHASE_UNKNOWN, "Reattached",
                     message + " in QEMU status \"" + state + "\"");
    }
  }
  if (client.ok()) client->reset();
  ctx_.logger().Info("vm", vm->name,
                     "reattached to QEMU pid " + std::to_string(pid) + " (status " +
                         (state.empty() ? "unknown" : state) + ")");
  StartMonitor(vm, run);
}

void KvmCompute::RecoverDead(const std::shared_ptr<Vm>& vm) {
  bool failed = false;
  bool apply_strategy = false;
  {
    std::lock_guard lock(vm->mu);
    auto phase = vm->obj.status().phase();
    if (PhaseHasProcess(phase)) {
      // QEMU ended while no Host was watching it.
      Run dead;
      dead.pid = -1;
      if (auto text = ReadFile(vm->paths.pid); text.ok()) dead.pid = std::atoi(text->c_str());
      if (auto log = ReadFile(vm->paths.qemu_log); log.ok()) {
        dead.log_offset = LatestRunLogOffset(*log);
      }
      if (phase == v1::VM_PHASE_STOPPING) {
        SetPhaseLocked(*vm, v1::VM_PHASE_STOPPED, "ForcedStop",
                       "QEMU ended while no Host was running, during a stop");
      } else {
        failed = true;
        SetPhaseLocked(*vm, v1::VM_PHASE_FAILED, "ProcessDied",
                       DescribeDeath(*vm, dead) + " (while no Host was running)");
      }
      apply_strategy = true;
    } else if (RestartPendingLocked(*vm)) {
      // The previous Host died while waiting to restart the VM.
      failed = phase == v1::VM_PHASE_FAILED;
      apply_strategy = true;
      SetRestartConditionLocked(*vm, false, {});
    }
  }
  if (!apply_strategy) return;
  // Volumes and restarts need the storage backend: wait until the Host is ready.
  threads_.Spawn([this, vm, failed] {
    if (!WaitReady()) return;
    std::unique_lock op(vm->op_mu, std::defer_lock);
    if (!LockOp(op).ok()) return;
    v1::VirtualMachineSpec spec;
    {
      std::lock_guard lock(vm->mu);
      if (vm->deleted || vm->run) return;
      spec = vm->obj.spec();
    }
    DetachDisks(vm->name, spec);
    MaybeScheduleRestart(vm, failed, Clock::duration::zero());
  });
}

}  // namespace

Result<std::unique_ptr<ComputeBackend>> MakeCompute(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(Options options, ParseOptions(context.options()));
  std::string vms_dir = context.state_dir() + "/vms";
  if (::mkdir(vms_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, "state_dir: mkdir \"" + vms_dir + "\"");
  }
  ::chmod(vms_dir.c_str(), 0700);
  auto backend = std::make_unique<KvmCompute>(context, std::move(options), std::move(vms_dir));
  backend->Recover();
  return std::unique_ptr<ComputeBackend>(std::move(backend));
}

}  // namespace hci::kvm
