// The mock ComputeBackend: KubeVirt-style VM lifecycle in memory, with a fake serial console,
// fake metrics and a simulated live migration.
#include <algorithm>
#include <charconv>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "mock_internal.h"

namespace hci::mock {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kVmKind[] = "VirtualMachine";
constexpr std::uint32_t kMaxVcpus = 288;              // QEMU's limit for a q35 machine
constexpr std::uint64_t kMaxMemoryMib = 16ull << 20;  // 16 TiB
constexpr std::uint32_t kDefaultConsoleRead = 64 * 1024;
constexpr auto kMigrationCancelWait = std::chrono::seconds(10);

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

// Phases in which the guest's vCPUs run.
bool Executing(v1::VmPhase phase) {
  return phase == v1::VM_PHASE_RUNNING || phase == v1::VM_PHASE_MIGRATING;
}
// Phases in which a QEMU process exists.
bool HasProcess(v1::VmPhase phase) { return Executing(phase) || phase == v1::VM_PHASE_PAUSED; }
bool Transitional(v1::VmPhase phase) {
  return phase == v1::VM_PHASE_STARTING || phase == v1::VM_PHASE_STOPPING;
}

Status Busy(const std::string& name, v1::VmPhase phase, std::string_view op) {
  return Aborted("vm " + Quote(name) + " is " + PhaseName(phase) + "; retry " + std::string(op) +
                 " when that finishes");
}

Status WrongPhase(const std::string& name, v1::VmPhase phase, std::string_view what) {
  return FailedPrecondition("vm " + Quote(name) + " is " + PhaseName(phase) + "; " +
                            std::string(what));
}

bool IsAbsolute(const std::string& path) { return !path.empty() && path.front() == '/'; }

bool ValidMachineType(const std::string& m) {
  return m.empty() || m == "pc" || m == "q35" || m == "microvm" || m.starts_with("pc-i440fx-") ||
         m.starts_with("pc-q35-");
}

Status ValidateSpec(const v1::VirtualMachineSpec& spec) {
  if (spec.vcpus() == 0) return InvalidArgument("spec.vcpus: must be at least 1");
  if (spec.vcpus() > kMaxVcpus) {
    return InvalidArgument("spec.vcpus: " + std::to_string(spec.vcpus()) + " is more than the " +
                           std::to_string(kMaxVcpus) + " vCPUs a VM can have");
  }
  if (spec.memory_mib() == 0) return InvalidArgument("spec.memory_mib: must be at least 1");
  if (spec.memory_mib() > kMaxMemoryMib) {
    return InvalidArgument("spec.memory_mib: " + std::to_string(spec.memory_mib()) +
                           " MiB is more than the 16 TiB a VM can have");
  }
  if (!v1::Firmware_IsValid(spec.firmware())) {
    return InvalidArgument("spec.firmware: unknown value " + std::to_string(spec.firmware()));
  }
  if (!v1::RunStrategy_IsValid(spec.run_strategy())) {
    return InvalidArgument("spec.run_strategy: unknown value " +
                           std::to_string(spec.run_strategy()));
  }
  if (spec.has_kernel_boot()) {
    const auto& kb = spec.kernel_boot();
    if (!IsAbsolute(kb.kernel_path())) {
      return InvalidArgument("spec.kernel_boot.kernel_path: \"" + kb.kernel_path() +
                             "\" is not an absolute path (required for a direct kernel boot)");
    }
    if (!kb.initrd_path().empty() && !IsAbsolute(kb.initrd_path())) {
      return InvalidArgument("spec.kernel_boot.initrd_path: \"" + kb.initrd_path() +
                             "\" is not an absolute path");
    }
  }
  if (!ValidMachineType(spec.machine_type())) {
    return InvalidArgument("spec.machine_type: \"" + spec.machine_type() +
                           "\" is not a machine type (expected pc, q35, microvm, pc-i440fx-* or "
                           "pc-q35-*)");
  }
  const auto& accel = spec.accelerator();
  if (!accel.empty() && accel != "auto" && accel != "kvm" && accel != "tcg") {
    return InvalidArgument("spec.accelerator: \"" + accel +
                           "\" is not an accelerator (expected auto, kvm or tcg)");
  }
  std::map<std::uint32_t, std::string> boot_orders;
  auto claim_boot = [&](std::uint32_t order, const std::string& field) -> Status {
    if (order == 0) return Status();
    auto [it, inserted] = boot_orders.emplace(order, field);
    if (!inserted) {
      return InvalidArgument(field + ".boot_order: " + std::to_string(order) +
                             " is already used by " + it->second);
    }
    return Status();
  };
  std::set<std::string> disk_names, volumes;
  for (int i = 0; i < spec.disks_size(); ++i) {
    const auto& d = spec.disks(i);
    std::string field = "spec.disks[" + std::to_string(i) + "]";
    if (!disk_names.insert(d.name()).second) {
      return InvalidArgument(field + ".name: " + Quote(d.name()) + " is used by another disk");
    }
    if (!volumes.insert(d.volume()).second) {
      return InvalidArgument(field + ".volume: volume " + Quote(d.volume()) +
                             " is already used by another disk of this VM");
    }
    if (!v1::DiskBus_IsValid(d.bus())) {
      return InvalidArgument(field + ".bus: unknown value " + std::to_string(d.bus()));
    }
    HCI_RETURN_NOT_OK(claim_boot(d.boot_order(), field));
  }
  std::set<std::string> nic_names, macs;
  for (int i = 0; i < spec.nics_size(); ++i) {
    const auto& n = spec.nics(i);
    std::string field = "spec.nics[" + std::to_string(i) + "]";
    if (!nic_names.insert(n.name()).second) {
      return InvalidArgument(field + ".name: " + Quote(n.name()) + " is used by another NIC");
    }
    if (!n.mac_address().empty()) {
      if (!IsValidMac(n.mac_address())) {
        return InvalidArgument(field + ".mac_address: \"" + n.mac_address() +
                               "\" is not a unicast MAC address like 52:54:00:12:34:56");
      }
      std::string lower = n.mac_address();
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (!macs.insert(lower).second) {
        return InvalidArgument(field + ".mac_address: " + n.mac_address() +
                               " is used by another NIC");
      }
    }
    if (!v1::NicModel_IsValid(n.model())) {
      return InvalidArgument(field + ".model: unknown value " + std::to_string(n.model()));
    }
    HCI_RETURN_NOT_OK(claim_boot(n.boot_order(), field));
  }
  return Status();
}

// The serial console of one VM: its log, kept across runs like libvirt's log file, and the live
// session that AttachConsole streams use (a new session per start).
class Console {
 public:
  void Append(std::string_view text) {
    std::lock_guard lock(mu_);
    log_ += text;
  }

  void Open() {
    std::lock_guard lock(mu_);
    ++session_;
    open_ = true;
    pending_.clear();
    cv_.notify_all();
  }

  void Close() {
    std::lock_guard lock(mu_);
    open_ = false;
    cv_.notify_all();
  }

  std::uint64_t session() const {
    std::lock_guard lock(mu_);
    return session_;
  }

  Result<v1::ConsoleOutput> ReadLog(std::uint64_t offset, std::uint32_t max_bytes) const {
    std::lock_guard lock(mu_);
    if (offset > log_.size()) {
      return OutOfRange("offset: " + std::to_string(offset) + " is beyond the end of the console " +
                        "log (" + std::to_string(log_.size()) + " bytes)");
    }
    std::size_t n = std::min<std::size_t>(log_.size() - offset,
                                          max_bytes == 0 ? kDefaultConsoleRead : max_bytes);
    v1::ConsoleOutput out;
    out.set_data(log_.substr(offset, n));
    out.set_next_offset(offset + n);
    return out;
  }

  Result<std::string> Read(std::uint64_t session, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    auto live = [&] { return open_ && session_ == session; };
    cv_.wait_for(lock, timeout, [&] { return !pending_.empty() || !live(); });
    if (!live()) return Unavailable("the console is closed: the VM stopped");
    std::string out;
    out.swap(pending_);
    return out;
  }

  // The mock guest echoes what it receives, like a shell on a serial line.
  Status Write(std::uint64_t session, std::string_view data) {
    std::lock_guard lock(mu_);
    if (!open_ || session_ != session) {
      return Unavailable("the console is closed: the VM stopped");
    }
    pending_ += data;
    log_ += data;
    cv_.notify_all();
    return Status();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string log_;
  std::string pending_;
  std::uint64_t session_ = 0;
  bool open_ = false;
};

class MockConsoleStream final : public ConsoleStream {
 public:
  MockConsoleStream(std::shared_ptr<Console> console, std::uint64_t session)
      : console_(std::move(console)), session_(session) {}
  Result<std::string> Read(std::chrono::milliseconds timeout) override {
    return console_->Read(session_, timeout);
  }
  Status Write(std::string_view data) override { return console_->Write(session_, data); }

 private:
  std::shared_ptr<Console> console_;
  std::uint64_t session_;
};

struct Vm {
  v1::VirtualMachine obj;
  std::shared_ptr<Console> console = std::make_shared<Console>();
  // vCPU time: the finished running intervals plus the current one.
  Clock::duration cpu_time{};
  std::optional<Clock::time_point> running_since;
  // Set while Migrating.
  Operation migration;
};

std::string FormatDouble(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, 3);
  return ec == std::errc() ? std::string(buf, end) : "0";
}

class MockCompute final : public ComputeBackend {
 public:
  explicit MockCompute(std::shared_ptr<BackendEnv> env) : env_(std::move(env)) {}

  ~MockCompute() override {
    workers_.Stop();
    std::lock_guard lock(mu_);
    for (auto& [name, vm] : vms_) vm->console->Close();
  }

  FaultInjector* fault_injector() override { return env_->faults(); }

  v1::ComputeCapabilities Capabilities() const override {
    v1::ComputeCapabilities caps;
    caps.set_pause(true);
    caps.set_restart(true);
    caps.set_graceful_stop(true);
    caps.set_console_log(true);
    caps.set_console_attach(true);
    caps.set_live_migration(true);
    caps.set_metrics(true);
    caps.set_uefi(true);
    caps.set_kernel_boot(true);
    caps.set_cloud_init(true);
    caps.set_resize_disk(true);
    for (auto s : {v1::RUN_STRATEGY_ALWAYS, v1::RUN_STRATEGY_HALTED, v1::RUN_STRATEGY_MANUAL,
                   v1::RUN_STRATEGY_RERUN_ON_FAILURE, v1::RUN_STRATEGY_ONCE}) {
      caps.add_run_strategies(s);
    }
    caps.add_accelerators("kvm");
    caps.add_accelerators("tcg");
    return caps;
  }

  Result<std::string> Metrics() override {
    HCI_RETURN_NOT_OK(env_->Enter("Metrics"));
    std::map<v1::VmPhase, int> counts;
    {
      std::lock_guard lock(mu_);
      for (const auto& [name, vm] : vms_) ++counts[vm->obj.status().phase()];
    }
    std::string out =
        "# HELP kubevirt_vmi_phase_count Sum of VMIs per phase and node.\n"
        "# TYPE kubevirt_vmi_phase_count gauge\n";
    for (const auto& [phase, n] : counts) {
      std::string lower = PhaseName(phase);
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      out += "kubevirt_vmi_phase_count{node=\"" + env_->context().node_name() + "\",phase=\"" +
             lower + "\"} " + std::to_string(n) + "\n";
    }
    return out;
  }

  Result<v1::VirtualMachine> CreateVm(const v1::CreateVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("CreateVm"));
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateSpec(request.spec()));
    {
      std::lock_guard lock(mu_);
      if (auto it = vms_.find(name); it != vms_.end()) return Existing(*it->second, request);
    }
    HCI_RETURN_NOT_OK(CheckReferences(request.spec()));
    {
      std::lock_guard lock(mu_);
      if (auto it = vms_.find(name); it != vms_.end()) return Existing(*it->second, request);
      auto vm = std::make_unique<Vm>();
      *vm->obj.mutable_metadata() = NewObjectMeta(request.metadata());
      *vm->obj.mutable_spec() = request.spec();
      auto* status = vm->obj.mutable_status();
      status->set_node(env_->context().node_name());
      AssignMacs(vm->obj);
      SetPhaseLocked(*vm, v1::VM_PHASE_STOPPED, "Created");
      auto& stored = *vms_.emplace(name, std::move(vm)).first->second;
      if (request.spec().run_strategy() != v1::RUN_STRATEGY_ALWAYS) return stored.obj;
    }
    // KubeVirt's runStrategy Always: the VM runs as soon as it exists. A failed start leaves it
    // defined and Stopped, with the cause in status.reason/message (and a Warning event).
    Start(name).status().IgnoreError();
    std::lock_guard lock(mu_);
    auto it = vms_.find(name);
    if (it == vms_.end()) return Missing("vm", name);
    return it->second->obj;
  }

  Result<v1::VirtualMachine> GetVm(const v1::GetVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetVm"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.name()));
    return vm->obj;
  }

  Result<v1::ListVmsResponse> ListVms(const v1::ListVmsRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListVms"));
    v1::ListVmsResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, vm] : vms_) {
      if (MatchesLabels(vm->obj.metadata().labels(), request.label_selector())) {
        *out.add_vms() = vm->obj;
      }
    }
    return out;
  }

  Status DeleteVm(const v1::DeleteVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeleteVm"));
    const std::string& name = request.name();
    {
      std::lock_guard lock(mu_);
      auto it = vms_.find(name);
      if (it == vms_.end()) return Status();
      auto phase = it->second->obj.status().phase();
      if (Transitional(phase)) return Busy(name, phase, "DeleteVm");
      if (HasProcess(phase) && !request.force()) {
        return WrongPhase(name, phase, "stop it first, or delete it with force");
      }
      if (!HasProcess(phase)) return EraseLocked(it);
    }
    HCI_RETURN_NOT_OK(Stop(name, /*force=*/true));
    std::lock_guard lock(mu_);
    auto it = vms_.find(name);
    if (it == vms_.end()) return Status();
    auto phase = it->second->obj.status().phase();
    if (HasProcess(phase) || Transitional(phase)) return Busy(name, phase, "DeleteVm");
    return EraseLocked(it);
  }

  Result<v1::VirtualMachine> StartVm(const v1::StartVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("StartVm"));
    return Start(request.name());
  }

  Result<v1::VirtualMachine> StopVm(const v1::StopVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("StopVm"));
    return Stop(request.name(), request.force());
  }

  Result<v1::VirtualMachine> RestartVm(const v1::RestartVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("RestartVm"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.name()));
    auto phase = vm->obj.status().phase();
    if (Transitional(phase)) return Busy(request.name(), phase, "RestartVm");
    if (phase != v1::VM_PHASE_RUNNING) {
      return WrongPhase(request.name(), phase, "only a Running VM can be restarted");
    }
    auto* status = vm->obj.mutable_status();
    status->set_restart_count(status->restart_count() + 1);
    *status->mutable_start_time() = Now();
    status->set_reason("Restarted");
    status->set_message(request.force() ? "reset" : "rebooted by the guest");
    vm->console->Append(request.force() ? "hci-mock: reset\n" : "hci-mock: rebooting\n");
    vm->console->Append(BootLog(vm->obj));
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVmKind, request.name(), "VmRestarted",
                                  request.force() ? "VM reset" : "VM rebooted"));
    return vm->obj;
  }

  Result<v1::VirtualMachine> PauseVm(const v1::PauseVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("PauseVm"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.name()));
    auto phase = vm->obj.status().phase();
    if (Transitional(phase)) return Busy(request.name(), phase, "PauseVm");
    if (phase != v1::VM_PHASE_RUNNING) {
      return WrongPhase(request.name(), phase, "only a Running VM can be paused");
    }
    SetPhaseLocked(*vm, v1::VM_PHASE_PAUSED, "PausedByUser");
    return vm->obj;
  }

  Result<v1::VirtualMachine> ResumeVm(const v1::ResumeVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ResumeVm"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.name()));
    auto phase = vm->obj.status().phase();
    if (Transitional(phase)) return Busy(request.name(), phase, "ResumeVm");
    if (phase != v1::VM_PHASE_PAUSED) {
      return WrongPhase(request.name(), phase, "only a Paused VM can be resumed");
    }
    SetPhaseLocked(*vm, v1::VM_PHASE_RUNNING, "Resumed");
    return vm->obj;
  }

  Result<Operation> MigrateVm(const v1::MigrateVmRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("MigrateVm"));
    const std::string& name = request.name();
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(name));
    auto phase = vm->obj.status().phase();
    // A second request while one runs joins it, as a retried CSI call would.
    if (phase == v1::VM_PHASE_MIGRATING) return vm->migration;
    if (Transitional(phase)) return Busy(name, phase, "MigrateVm");
    if (phase != v1::VM_PHASE_RUNNING) {
      return WrongPhase(name, phase, "only a Running VM can be migrated");
    }
    OperationInfo info;
    info.kind = "MigrateVm";
    info.object.set_kind(kVmKind);
    info.object.set_name(name);
    info.cancellable = true;
    info.progress_unit = "bytes";
    auto control = std::make_shared<OperationControl>(env_->context().operations().Start(info));
    Operation handle = control->handle();
    std::string uid = vm->obj.metadata().uid();
    std::string target = request.target_node();
    std::uint64_t total = vm->obj.spec().memory_mib() << 20;
    bool spawned = workers_.Spawn([this, control, name, uid, target, total] {
      RunMigration(*control, name, uid, target, total);
    });
    if (!spawned) {
      control->Finish(Unavailable("the mock compute backend is shutting down"));
      return Unavailable("the mock compute backend is shutting down");
    }
    vm->migration = handle;
    SetPhaseLocked(*vm, v1::VM_PHASE_MIGRATING, "Migrating",
                   "to node " + (target.empty() ? env_->context().node_name() : target));
    return handle;
  }

  Result<v1::ConsoleOutput> ReadConsole(const v1::ReadConsoleRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ReadConsole"));
    std::shared_ptr<Console> console;
    {
      std::lock_guard lock(mu_);
      HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.name()));
      console = vm->console;
    }
    return console->ReadLog(request.offset(), request.max_bytes());
  }

  Result<std::unique_ptr<ConsoleStream>> AttachConsole(
      const v1::AttachConsoleRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("AttachConsole"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.name()));
    auto phase = vm->obj.status().phase();
    if (!HasProcess(phase)) {
      return WrongPhase(request.name(), phase, "the console exists only while the VM runs");
    }
    return std::unique_ptr<ConsoleStream>(
        std::make_unique<MockConsoleStream>(vm->console, vm->console->session()));
  }

  Result<v1::VmMetricsResponse> VmMetrics(const v1::VmMetricsRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("VmMetrics"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.name()));
    auto phase = vm->obj.status().phase();
    if (!HasProcess(phase)) {
      return WrongPhase(request.name(), phase, "metrics exist only while the VM runs");
    }
    v1::VmMetricsResponse out;
    out.set_text(RenderMetrics(*vm));
    return out;
  }

  Status ResizeDisk(const v1::ResizeDiskRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ResizeDisk"));
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(request.vm()));
    const v1::Disk* disk = nullptr;
    for (const auto& d : vm->obj.spec().disks()) {
      if (d.volume() == request.volume()) disk = &d;
    }
    if (disk == nullptr) {
      return NotFound("volume: vm " + Quote(request.vm()) + " has no disk on volume " +
                      Quote(request.volume()));
    }
    // Stopped: the next start opens the volume at its new size.
    if (!HasProcess(vm->obj.status().phase())) return Status();
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVmKind, request.vm(), "DiskResized",
                                  "disk " + Quote(disk->name()) + " (volume " +
                                      Quote(request.volume()) + ") is now " +
                                      std::to_string(request.size_bytes()) + " bytes"));
    return Status();
  }

 private:
  Result<Vm*> FindLocked(const std::string& name) {
    auto it = vms_.find(name);
    if (it == vms_.end()) return Missing("vm", name);
    return it->second.get();
  }

  Result<v1::VirtualMachine> Existing(const Vm& vm, const v1::CreateVmRequest& request) {
    if (!DescribeSpecDifference(vm.obj.spec(), request.spec()).empty()) {
      return SpecConflict("vm", request.metadata().name(), vm.obj.spec(), request.spec());
    }
    return vm.obj;
  }

  Status EraseLocked(std::map<std::string, std::unique_ptr<Vm>>::iterator it) {
    std::string name = it->first;
    it->second->console->Close();
    vms_.erase(it);
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVmKind, name, "VmDeleted",
                                  "VM definition removed"));
    return Status();
  }

  // Disks must name existing volumes and NICs existing networks, when those backends exist.
  Status CheckReferences(const v1::VirtualMachineSpec& spec) {
    if (StorageBackend* storage = env_->context().storage(); storage != nullptr) {
      for (int i = 0; i < spec.disks_size(); ++i) {
        v1::GetVolumeRequest get;
        get.set_name(spec.disks(i).volume());
        auto volume = storage->GetVolume(get);
        if (!volume.ok()) {
          return volume.status().WithContext("spec.disks[" + std::to_string(i) + "].volume");
        }
      }
    }
    if (NetworkBackend* network = env_->context().network(); network != nullptr) {
      for (int i = 0; i < spec.nics_size(); ++i) {
        if (spec.nics(i).network().empty()) continue;
        v1::GetNetworkRequest get;
        get.set_name(spec.nics(i).network());
        auto net = network->GetNetwork(get);
        if (!net.ok()) {
          return net.status().WithContext("spec.nics[" + std::to_string(i) + "].network");
        }
      }
    }
    return Status();
  }

  // Stable MACs for NICs without one, kept for the VM's lifetime (migration included).
  static void AssignMacs(v1::VirtualMachine& vm) {
    std::set<std::string> used;
    for (const auto& nic : vm.spec().nics()) {
      if (!nic.mac_address().empty()) used.insert(nic.mac_address());
    }
    auto* macs = vm.mutable_status()->mutable_mac_addresses();
    for (const auto& nic : vm.spec().nics()) {
      if (!nic.mac_address().empty()) continue;
      std::string mac;
      for (unsigned attempt = 0;; ++attempt) {
        mac = StableMac(vm.metadata().name() + "/" + nic.name(), attempt);
        if (used.insert(mac).second) break;
      }
      (*macs)[nic.name()] = mac;
    }
  }

  // Sets phase, reason and message; accounts vCPU time; publishes VmPhaseChanged when the phase
  // changes.
  void SetPhaseLocked(Vm& vm, v1::VmPhase phase, std::string reason, std::string message = {}) {
    auto* status = vm.obj.mutable_status();
    v1::VmPhase old = status->phase();
    auto now = Clock::now();
    if (Executing(old) && !Executing(phase) && vm.running_since) {
      vm.cpu_time += now - *vm.running_since;
      vm.running_since.reset();
    } else if (!Executing(old) && Executing(phase)) {
      vm.running_since = now;
    }
    status->set_phase(phase);
    status->set_reason(std::move(reason));
    status->set_message(std::move(message));
    if (old == phase) return;
    auto event =
        env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVmKind, vm.obj.metadata().name(), "VmPhaseChanged",
                        PhaseName(old) + " -> " + PhaseName(phase) + " (" + status->reason() + ")");
    event.mutable_vm_phase()->set_old_phase(old);
    event.mutable_vm_phase()->set_new_phase(phase);
    env_->Publish(std::move(event));
  }

  static std::string BootLog(const v1::VirtualMachine& vm) {
    const auto& spec = vm.spec();
    std::string log = "hci-mock: starting vm " + Quote(vm.metadata().name()) + " (" +
                      std::to_string(spec.vcpus()) + " vCPUs, " +
                      std::to_string(spec.memory_mib()) + " MiB, accelerator " +
                      vm.status().accelerator() + ")\n";
    if (spec.has_kernel_boot()) {
      log += "hci-mock: booting kernel " + spec.kernel_boot().kernel_path() + "\n";
    }
    for (const auto& disk : spec.disks()) {
      log += "hci-mock: disk " + disk.name() + " -> volume " + disk.volume() + "\n";
    }
    for (const auto& nic : spec.nics()) {
      std::string mac = nic.mac_address();
      if (mac.empty()) {
        auto it = vm.status().mac_addresses().find(nic.name());
        if (it != vm.status().mac_addresses().end()) mac = it->second;
      }
      log += "hci-mock: nic " + nic.name() + " (" + mac + ")\n";
    }
    log += "hci-mock: ready\n";
    return log;
  }

  // Attaches every disk's volume to the VM; on failure detaches what it attached.
  Status AttachDisks(const v1::VirtualMachine& vm) {
    StorageBackend* storage = env_->context().storage();
    if (storage == nullptr) return Status();
    const auto& disks = vm.spec().disks();
    for (int i = 0; i < disks.size(); ++i) {
      v1::AttachVolumeRequest attach;
      attach.set_name(disks[i].volume());
      attach.set_attacher(vm.metadata().name());
      auto info = storage->AttachVolume(attach);
      if (info.ok()) continue;
      for (int j = 0; j < i; ++j) DetachOne(*storage, vm.metadata().name(), disks[j].volume());
      Status s = info.status();
      // The VM exists; a missing volume is a precondition of the start, not a missing VM.
      StatusCode code =
          s.code() == StatusCode::kNotFound ? StatusCode::kFailedPrecondition : s.code();
      return Status(code, "vm " + Quote(vm.metadata().name()) + " cannot start: spec.disks[" +
                              std::to_string(i) + "].volume: " + s.message());
    }
    return Status();
  }

  void DetachDisks(const v1::VirtualMachine& vm) {
    StorageBackend* storage = env_->context().storage();
    if (storage == nullptr) return;
    for (const auto& disk : vm.spec().disks()) {
      DetachOne(*storage, vm.metadata().name(), disk.volume());
    }
  }

  void DetachOne(StorageBackend& storage, const std::string& vm, const std::string& volume) {
    v1::DetachVolumeRequest detach;
    detach.set_name(volume);
    detach.set_attacher(vm);
    Status s = storage.DetachVolume(detach);
    if (!s.ok()) {
      env_->context().logger().Warn("vm", vm,
                                    "cannot detach volume " + Quote(volume) + ": " + s.ToString());
    }
  }

  Result<v1::VirtualMachine> Start(const std::string& name) {
    v1::VirtualMachine snapshot;
    {
      std::lock_guard lock(mu_);
      HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(name));
      auto phase = vm->obj.status().phase();
      if (Executing(phase)) return vm->obj;
      if (Transitional(phase)) return Busy(name, phase, "StartVm");
      if (phase == v1::VM_PHASE_PAUSED) {
        return WrongPhase(name, phase, "resume it instead of starting it");
      }
      // RUN_STRATEGY_HALTED means "keep stopped" (as the kvm plugin does).
      if (vm->obj.spec().run_strategy() == v1::RUN_STRATEGY_HALTED) {
        return FailedPrecondition("vm " + Quote(name) +
                                  ": spec.run_strategy is Halted, which keeps the VM stopped");
      }
      SetPhaseLocked(*vm, v1::VM_PHASE_STARTING, "Starting");
      snapshot = vm->obj;
    }
    // Volumes are attached without holding mu_: the storage backend may call back into us
    // (through the core) and must not wait for our lock. Starting keeps other calls away.
    Status attached = AttachDisks(snapshot);
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(name));
    if (!attached.ok()) {
      SetPhaseLocked(*vm, v1::VM_PHASE_STOPPED, "FailedAttachVolume", attached.message());
      env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_WARNING, kVmKind, name, "FailedStart",
                                    attached.message()));
      return attached;
    }
    auto* status = vm->obj.mutable_status();
    const std::string& accel = vm->obj.spec().accelerator();
    if (accel == "kvm" || accel == "tcg") {
      status->set_accelerator(accel);
      status->set_accelerator_reason("requested by spec.accelerator");
    } else {
      status->set_accelerator("tcg");
      status->set_accelerator_reason("hci-mock runs no guest code; auto resolves to tcg");
    }
    *status->mutable_start_time() = Now();
    vm->console->Open();
    vm->console->Append(BootLog(vm->obj));
    SetPhaseLocked(*vm, v1::VM_PHASE_RUNNING, "Started");
    return vm->obj;
  }

  // Cancels a running migration and waits for its worker to put the VM back to Running.
  Status EndMigration(const std::string& name, const Operation& migration) {
    Status cancelled = migration.Cancel();
    if (!cancelled.ok() && cancelled.code() != StatusCode::kFailedPrecondition) return cancelled;
    Status finished =
        migration.Wait(std::chrono::duration_cast<std::chrono::milliseconds>(kMigrationCancelWait));
    if (finished.code() == StatusCode::kDeadlineExceeded) {
      return Aborted("vm " + Quote(name) + ": the migration " + migration.id() +
                     " did not stop in time; retry");
    }
    return Status();
  }

  Result<v1::VirtualMachine> Stop(const std::string& name, bool force) {
    v1::VirtualMachine snapshot;
    bool forced = force;
    for (;;) {
      Operation migration;
      {
        std::lock_guard lock(mu_);
        HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(name));
        auto phase = vm->obj.status().phase();
        if (!HasProcess(phase) && !Transitional(phase)) return vm->obj;
        if (Transitional(phase)) return Busy(name, phase, "StopVm");
        if (phase == v1::VM_PHASE_MIGRATING) {
          migration = vm->migration;
        } else {
          // A paused guest cannot answer the ACPI power button: the grace period runs out.
          forced = force || phase == v1::VM_PHASE_PAUSED;
          vm->console->Append(forced ? "hci-mock: powered off\n"
                                     : "hci-mock: power button pressed\nhci-mock: halted\n");
          SetPhaseLocked(*vm, v1::VM_PHASE_STOPPING, "StopRequested");
          snapshot = vm->obj;
          break;
        }
      }
      HCI_RETURN_NOT_OK(EndMigration(name, migration));
    }
    DetachDisks(snapshot);
    std::lock_guard lock(mu_);
    HCI_ASSIGN_OR_RAISE(Vm * vm, FindLocked(name));
    vm->console->Close();
    SetPhaseLocked(*vm, v1::VM_PHASE_STOPPED, forced ? "ForcedStop" : "GuestShutdown");
    return vm->obj;
  }

  void RunMigration(OperationControl& control, const std::string& name, const std::string& uid,
                    const std::string& target, std::uint64_t total) {
    control.OnCancel([this] { workers_.Wake(); });
    auto cancelled = [&] { return control.cancel_requested(); };
    int step = 0;
    for (; step < kOperationSteps; ++step) {
      if (!workers_.SleepFor(env_->step(), cancelled)) break;
      std::uint64_t done = total * (step + 1) / kOperationSteps;
      control.SetProgress(done, total, "transferring guest memory");
      auto event = env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kVmKind, name, "MigrationProgress",
                                   std::to_string(done) + " of " + std::to_string(total) +
                                       " bytes of guest memory transferred");
      event.set_operation_id(control.handle().id());
      event.mutable_progress()->set_done(done);
      event.mutable_progress()->set_total(total);
      env_->Publish(std::move(event));
    }
    Status result;
    if (step < kOperationSteps) {
      result = cancelled() ? Cancelled("migration cancelled")
                           : Unavailable("the mock compute backend shut down during migration");
    }
    {
      std::lock_guard lock(mu_);
      auto it = vms_.find(name);
      if (it != vms_.end() && it->second->obj.metadata().uid() == uid &&
          it->second->obj.status().phase() == v1::VM_PHASE_MIGRATING) {
        Vm& vm = *it->second;
        vm.migration = Operation();
        if (result.ok()) {
          if (!target.empty()) vm.obj.mutable_status()->set_node(target);
          SetPhaseLocked(vm, v1::VM_PHASE_RUNNING, "Migrated",
                         "migrated to node " + vm.obj.status().node());
        } else {
          SetPhaseLocked(
              vm, v1::VM_PHASE_RUNNING,
              result.code() == StatusCode::kCancelled ? "MigrationCancelled" : "MigrationFailed",
              result.message());
        }
      } else if (result.ok()) {
        result = Aborted("vm " + Quote(name) + " changed during the migration");
      }
    }
    control.Finish(std::move(result));
  }

  std::string RenderMetrics(const Vm& vm) const {
    auto cpu = vm.cpu_time;
    if (vm.running_since) cpu += Clock::now() - *vm.running_since;
    double seconds = std::chrono::duration<double>(cpu).count();
    const auto& name = vm.obj.metadata().name();
    std::string base = "name=\"" + name + "\",node=\"" + vm.obj.status().node() + "\"";
    auto counter = [](std::uint64_t per_second, double s) {
      return std::to_string(static_cast<std::uint64_t>(per_second * s));
    };
    std::string out;
    out +=
        "# HELP kubevirt_vmi_vcpu_seconds_total Total amount of time spent in each state by each "
        "vcpu (cpu_id).\n# TYPE kubevirt_vmi_vcpu_seconds_total counter\n";
    for (std::uint32_t i = 0; i < vm.obj.spec().vcpus(); ++i) {
      out += "kubevirt_vmi_vcpu_seconds_total{id=\"" + std::to_string(i) + "\"," + base +
             ",state=\"running\"} " + FormatDouble(seconds) + "\n";
    }
    out +=
        "# HELP kubevirt_vmi_memory_resident_bytes Resident set size of the process running the "
        "domain.\n# TYPE kubevirt_vmi_memory_resident_bytes gauge\n";
    out += "kubevirt_vmi_memory_resident_bytes{" + base + "} " +
           std::to_string(vm.obj.spec().memory_mib() << 20) + "\n";
    struct Series {
      const char* metric;
      const char* help;
      const char* label;
      std::uint64_t rate;
    };
    const Series kNet[] = {{"kubevirt_vmi_network_receive_bytes_total",
                            "Total network traffic received in bytes.", "interface", 1500},
                           {"kubevirt_vmi_network_transmit_bytes_total",
                            "Total network traffic transmitted in bytes.", "interface", 1000}};
    const Series kDisk[] = {{"kubevirt_vmi_storage_read_traffic_bytes_total",
                             "Total number of bytes read from "
                             "storage.",
                             "drive", 40960},
                            {"kubevirt_vmi_storage_write_traffic_bytes_total",
                             "Total number of written bytes.", "drive", 20480},
                            {"kubevirt_vmi_storage_iops_read_total",
                             "Total number of I/O read operations.", "drive", 10},
                            {"kubevirt_vmi_storage_iops_write_total",
                             "Total number of I/O write operations.", "drive", 5}};
    for (const auto& s : kNet) {
      out +=
          std::string("# HELP ") + s.metric + " " + s.help + "\n# TYPE " + s.metric + " counter\n";
      for (const auto& nic : vm.obj.spec().nics()) {
        out += std::string(s.metric) + "{" + s.label + "=\"" + nic.name() + "\"," + base + "} " +
               counter(s.rate, seconds) + "\n";
      }
    }
    for (const auto& s : kDisk) {
      out +=
          std::string("# HELP ") + s.metric + " " + s.help + "\n# TYPE " + s.metric + " counter\n";
      for (const auto& disk : vm.obj.spec().disks()) {
        out += std::string(s.metric) + "{" + s.label + "=\"" + disk.name() + "\"," + base + "} " +
               counter(s.rate, seconds) + "\n";
      }
    }
    return out;
  }

  std::shared_ptr<BackendEnv> env_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Vm>> vms_;
  Workers workers_;  // last: joined before the state above goes away
};

}  // namespace

Result<std::unique_ptr<ComputeBackend>> MakeCompute(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(auto env, BackendEnv::Make(context, BackendKind::kCompute));
  return std::unique_ptr<ComputeBackend>(std::make_unique<MockCompute>(std::move(env)));
}

}  // namespace hci::mock
