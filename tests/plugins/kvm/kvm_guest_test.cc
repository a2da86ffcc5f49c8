// The kvm plugin against a real QEMU (TCG) booting the real test guest (tools/build-test-guest,
// docs/test-guest.md), through hci::Host as an embedder uses it. Each test boots its own VMs in
// its own temporary state directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <mutex>
#include <numeric>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "hci/hci.h"
#include "kvm_test_env.h"
#include "process/process.h"

namespace hci::kvmtest {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Generous: TCG on a loaded 2-core machine boots the guest in 5-25 s.
constexpr auto kBootTimeout = 120s;
constexpr auto kShortTimeout = 30s;
constexpr char kReady[] = "hci-test-guest: ready";

// Collects events from Host::Subscribe and waits for them.
class EventLog {
 public:
  EventCallback Callback() {
    return [this](const v1::Event& event) {
      {
        std::lock_guard lock(mu_);
        events_.push_back(event);
      }
      cv_.notify_all();
    };
  }

  std::vector<v1::Event> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }

  std::optional<v1::Event> WaitFor(const std::function<bool(const v1::Event&)>& match,
                                   Clock::duration timeout) {
    std::unique_lock lock(mu_);
    std::optional<v1::Event> found;
    cv_.wait_for(lock, timeout, [&] {
      for (const auto& e : events_) {
        if (match(e)) {
          found = e;
          return true;
        }
      }
      return false;
    });
    return found;
  }

  // The new phases of `vm`'s VmPhaseChanged events, in order.
  std::vector<v1::VmPhase> Phases(const std::string& vm) const {
    std::vector<v1::VmPhase> out;
    for (const auto& e : events()) {
      if (e.reason() == "VmPhaseChanged" && e.object().name() == vm && e.has_vm_phase()) {
        out.push_back(e.vm_phase().new_phase());
      }
    }
    return out;
  }

  // Waits until `vm` has had at least `n` phase changes.
  std::vector<v1::VmPhase> WaitPhases(const std::string& vm, std::size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, 10s, [&] {
      std::size_t count = 0;
      for (const auto& e : events_) {
        count += e.reason() == "VmPhaseChanged" && e.object().name() == vm;
      }
      return count >= n;
    });
    lock.unlock();
    return Phases(vm);
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::Event> events_;
};

std::string PhaseList(const std::vector<v1::VmPhase>& phases) {
  std::string out;
  for (auto p : phases) out += (out.empty() ? "" : ", ") + v1::VmPhase_Name(p);
  return out;
}

long long MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

class KvmGuestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (guest_ || !guest_error_.empty()) return;
    process::RunOptions run;
    run.argv = {HCI_BUILD_TEST_GUEST, HCI_TEST_GUEST_DIR};
    run.timeout = std::chrono::minutes(15);
    auto built = process::Run(run);
    if (!built.ok()) {
      guest_error_ = "build-test-guest: " + built.status().ToString();
      return;
    }
    if (Status s = process::CheckExit(*built, "tools/build-test-guest"); !s.ok()) {
      guest_error_ = s.ToString() + " (run tools/install-deps)";
      return;
    }
    auto env = LoadGuestEnv(HCI_TEST_GUEST_DIR);
    if (!env.ok()) {
      guest_error_ = env.status().ToString();
      return;
    }
    guest_ = *env;
  }

  void SetUp() override {
    ASSERT_TRUE(guest_) << "the test guest is not available: " << guest_error_;
    char tmpl[] = "/tmp/hci-kvm-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    state_dir_ = tmpl;
  }

  void TearDown() override {
    if (host_) {
      // Stop what the test left running, so that no QEMU outlives it.
      if (auto compute = host_->compute(); compute.ok()) {
        auto list = (*compute)->ListVms({});
        if (list.ok()) {
          for (const auto& vm : list->vms()) {
            v1::StopVmRequest stop;
            stop.set_name(vm.metadata().name());
            stop.set_force(true);
            (*compute)->StopVm(stop).status().IgnoreError();
          }
        }
      }
      CloseHost();
    }
    KillLeftovers();
    std::error_code ec;
    std::filesystem::remove_all(state_dir_, ec);
  }

  std::string VmsDir() const { return state_dir_ + "/plugins/kvm/vms"; }

  void OpenHost(const std::string& compute_options = "{}") {
    ASSERT_FALSE(host_);
    auto host = Host::Open(MakeConfig(state_dir_, HCI_PLUGIN_DIR, compute_options));
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(*host);
    subscription_ = host_->Subscribe(events_.Callback());
    compute_ = *host_->compute();
    storage_ = *host_->storage();
  }

  void CloseHost() {
    subscription_.Reset();
    compute_ = nullptr;
    storage_ = nullptr;
    host_.reset();
  }

  // SIGKILLs any QEMU whose pidfile is in this test's state directory.
  void KillLeftovers() {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(VmsDir(), ec)) {
      pid_t pid = QemuPid(e.path().filename().string());
      if (pid > 0 && process::ProcessAlive(pid, e.path().string() + "/qmp.sock")) {
        ::kill(pid, SIGKILL);
      }
    }
  }

  pid_t QemuPid(const std::string& vm) const {
    std::FILE* f = std::fopen((VmsDir() + "/" + vm + "/pid").c_str(), "r");
    if (f == nullptr) return -1;
    int pid = -1;
    if (std::fscanf(f, "%d", &pid) != 1) pid = -1;
    std::fclose(f);
    return pid;
  }

  v1::VirtualMachine Get(const std::string& vm) {
    v1::GetVmRequest get;
    get.set_name(vm);
    auto got = compute_->GetVm(get);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : v1::VirtualMachine();
  }

  // The whole serial log, read through ReadConsole in pieces.
  std::string Console(const std::string& vm) {
    std::string out;
    v1::ReadConsoleRequest read;
    read.set_name(vm);
    for (;;) {
      read.set_offset(out.size());
      auto chunk = compute_->ReadConsole(read);
      if (!chunk.ok() || chunk->data().empty()) break;
      out += chunk->data();
    }
    return out;
  }

  // Complete lines only: a line still being written must not match.
  std::vector<std::string> Lines(const std::string& vm) {
    std::string text = Console(vm);
    std::vector<std::string> lines;
    std::size_t pos = 0;
    for (;;) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) break;
      std::string line = text.substr(pos, end - pos);
      while (!line.empty() && line.back() == '\r') line.pop_back();
      lines.push_back(std::move(line));
      pos = end + 1;
    }
    return lines;
  }

  int Count(const std::string& vm, const std::string& line) {
    int n = 0;
    for (const auto& l : Lines(vm)) n += l == line;
    return n;
  }

  std::vector<int> Ticks(const std::string& vm) {
    static const std::regex tick("^hci-test-guest: tick ([0-9]+)$");
    std::vector<int> out;
    std::smatch m;
    for (const auto& l : Lines(vm)) {
      if (std::regex_match(l, m, tick)) out.push_back(std::stoi(m[1]));
    }
    return out;
  }

  // Waits until `line` appears at least `n` times in the console.
  bool WaitForLine(const std::string& vm, const std::string& line, int n,
                   Clock::duration timeout = kBootTimeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (Count(vm, line) >= n) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  bool WaitForTick(const std::string& vm, int at_least, Clock::duration timeout = kShortTimeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto ticks = Ticks(vm);
      if (!ticks.empty() && ticks.back() >= at_least) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  bool WaitForPhase(const std::string& vm, v1::VmPhase phase, Clock::duration timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (Get(vm).status().phase() == phase) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  std::string Tail(const std::string& vm) {
    auto lines = Lines(vm);
    std::string out;
    for (std::size_t i = lines.size() > 15 ? lines.size() - 15 : 0; i < lines.size(); ++i) {
      out += lines[i] + "\n";
    }
    return out;
  }

  // Runs a host tool (sbin in PATH for debugfs) and returns its stdout.
  static std::string RunTool(std::vector<std::string> argv) {
    process::RunOptions run;
    run.argv = std::move(argv);
    run.env = {
        {"PATH", std::string(std::getenv("PATH") ? std::getenv("PATH") : "") + ":/usr/sbin:/sbin"}};
    run.timeout = 120s;
    auto result = process::Run(run);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return "";
    EXPECT_TRUE(result->success()) << run.argv[0] << ": " << result->stderr_data;
    return result->stdout_data;
  }

  // Reads a file of the guest's ext4 file system on a qcow2 volume, on the host: qemu-img
  // converts the volume to raw and debugfs (e2fsprogs) reads the file without mounting anything.
  std::string ReadGuestFile(const std::string& qcow2, const std::string& path) {
    std::string raw = state_dir_ + "/check.raw";
    RunTool({"qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw});
    std::string out = RunTool({"debugfs", "-R", "cat " + path, raw});
    std::filesystem::remove(raw);
    return out;
  }

  // Reads the first `length` bytes of the guest file `path` straight from the qcow2 volume with
  // qemu-io, at the offset debugfs finds for the file's first block: an independent check that
  // the bytes are on the volume itself, not only in what qemu-img convert produced.
  std::string ReadGuestFileWithQemuIo(const std::string& qcow2, const std::string& path,
                                      std::size_t length) {
    std::string raw = state_dir_ + "/check.raw";
    RunTool({"qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw});
    std::string stats = RunTool({"debugfs", "-R", "stats", raw});
    std::string bmap = RunTool({"debugfs", "-R", "bmap " + path + " 0", raw});
    std::filesystem::remove(raw);
    std::smatch m;
    static const std::regex block_size("Block size: +([0-9]+)");
    if (!std::regex_search(stats, m, block_size)) {
      ADD_FAILURE() << "no block size in debugfs stats: " << stats;
      return "";
    }
    const std::uint64_t offset = std::stoull(m[1]) * std::stoull(bmap);
    std::string dump =
        RunTool({"qemu-io", "-r", "-f", "qcow2", "-c",
                 "read -v " + std::to_string(offset) + " " + std::to_string(length), qcow2});
    // Lines of `read -v`: "00100000:  70 65 72 73 ...  persisted.pers".
    std::string bytes;
    static const std::regex line("^[0-9a-f]+: +((?:[0-9a-f]{2} )+)");
    std::istringstream in(dump);
    for (std::string l; std::getline(in, l);) {
      if (!std::regex_search(l, m, line)) continue;
      std::istringstream hex(m[1]);
      for (std::string byte; hex >> byte;) {
        bytes.push_back(static_cast<char>(std::stoi(byte, nullptr, 16)));
      }
    }
    return bytes.substr(0, length);
  }

  static inline std::optional<GuestEnv> guest_;
  static inline std::string guest_error_;

  std::string state_dir_;
  std::unique_ptr<Host> host_;
  EventLog events_;
  Subscription subscription_;
  ComputeBackend* compute_ = nullptr;
  StorageBackend* storage_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Bad input: InvalidArgument naming the field, and nothing on disk changed.

// Every path under `dir` with its type and size.
std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    std::string entry = it->path().string();
    if (it->is_regular_file(ec)) entry += " " + std::to_string(it->file_size(ec));
    if (it->is_directory(ec)) entry += "/";
    out.push_back(entry);
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST_F(KvmGuestTest, BadRequestsNameTheFieldAndChangeNothing) {
  OpenHost();
  ASSERT_TRUE(MakeGuestVolume(*host_, "vol", *guest_).ok());
  struct Case {
    std::string what;
    std::function<void(v1::CreateVmRequest&)> mutate;
    StatusCode code;
    std::string prefix;
  };
  const std::vector<Case> cases = {
      {"0 vCPUs", [](auto& r) { r.mutable_spec()->set_vcpus(0); }, StatusCode::kInvalidArgument,
       "spec.vcpus:"},
      {"8 MiB", [](auto& r) { r.mutable_spec()->set_memory_mib(8); }, StatusCode::kInvalidArgument,
       "spec.memory_mib:"},
      {"missing volume", [](auto& r) { r.mutable_spec()->mutable_disks(0)->set_volume("nope"); },
       StatusCode::kInvalidArgument, "spec.disks[0].volume:"},
      {"../x", [](auto& r) { r.mutable_metadata()->set_name("../x"); },
       StatusCode::kInvalidArgument, "metadata.name:"},
      {"bad kernel path",
       [](auto& r) {
         r.mutable_spec()->mutable_kernel_boot()->set_kernel_path("/nonexistent/vmlinux");
       },
       StatusCode::kInvalidArgument, "spec.kernel_boot.kernel_path:"},
      {"relative kernel path",
       [](auto& r) { r.mutable_spec()->mutable_kernel_boot()->set_kernel_path("vmlinux"); },
       StatusCode::kInvalidArgument, "spec.kernel_boot.kernel_path:"},
      {"a NIC", [](auto& r) { r.mutable_spec()->add_nics()->set_name("eth0"); },
       StatusCode::kUnimplemented, "spec.nics:"},
  };
  const auto before = Listing(state_dir_);
  for (const auto& c : cases) {
    auto request = GuestVm("bad", *guest_, "vol", "");
    c.mutate(request);
    auto created = compute_->CreateVm(request);
    EXPECT_EQ(created.status().code(), c.code) << c.what << ": " << created.status();
    EXPECT_THAT(created.status().message(), StartsWith(c.prefix)) << c.what;
    EXPECT_EQ(Listing(state_dir_), before) << c.what;
  }
  v1::ListVmsRequest list;
  EXPECT_EQ(compute_->ListVms(list)->vms_size(), 0);

  // A good request, then the same again (idempotent), then a different one (AlreadyExists).
  auto good = GuestVm("good", *guest_, "vol", "");
  auto created = compute_->CreateVm(good);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_FALSE(created->metadata().uid().empty());
  auto again = compute_->CreateVm(good);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->metadata().uid(), created->metadata().uid());
  good.mutable_spec()->set_vcpus(2);
  EXPECT_EQ(compute_->CreateVm(good).status().code(), StatusCode::kAlreadyExists);
  // Its directory is private.
  struct stat st {};
  ASSERT_EQ(::stat((VmsDir() + "/good").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  // Pause/resume/restart of a stopped VM are refused; delete removes the directory.
  v1::PauseVmRequest pause;
  pause.set_name("good");
  EXPECT_EQ(compute_->PauseVm(pause).status().code(), StatusCode::kFailedPrecondition);
  v1::DeleteVmRequest del;
  del.set_name("good");
  ASSERT_TRUE(compute_->DeleteVm(del).ok());
  EXPECT_FALSE(std::filesystem::exists(VmsDir() + "/good"));
  EXPECT_TRUE(compute_->DeleteVm(del).ok());  // already gone: OK

  // Run strategies at the edges: Always starts the VM on create (and an explicit stop is not
  // undone); Halted refuses to start.
  auto always = compute_->CreateVm(GuestVm("always", *guest_, "", "", v1::RUN_STRATEGY_ALWAYS));
  ASSERT_TRUE(always.ok()) << always.status();
  EXPECT_EQ(always->status().phase(), v1::VM_PHASE_RUNNING) << always->status().message();
  v1::StopVmRequest stop_always;
  stop_always.set_name("always");
  stop_always.set_force(true);
  auto stopped = compute_->StopVm(stop_always);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->status().reason(), "ForcedStop");
  std::this_thread::sleep_for(1500ms);  // longer than the first restart back-off
  EXPECT_EQ(Get("always").status().phase(), v1::VM_PHASE_STOPPED);
  ASSERT_TRUE(compute_->CreateVm(GuestVm("halted", *guest_, "", "", v1::RUN_STRATEGY_HALTED)).ok());
  v1::StartVmRequest start_halted;
  start_halted.set_name("halted");
  auto refused = compute_->StartVm(start_halted);
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("spec.run_strategy"));

  auto caps = compute_->Capabilities();
  EXPECT_TRUE(caps.pause() && caps.restart() && caps.graceful_stop() && caps.console_log() &&
              caps.console_attach() && caps.metrics() && caps.kernel_boot());
  EXPECT_FALSE(caps.live_migration());
  EXPECT_FALSE(caps.cloud_init());
  EXPECT_EQ(caps.run_strategies_size(), 5);
  EXPECT_THAT(caps.accelerators(), ::testing::Contains("tcg"));
  v1::MigrateVmRequest migrate;
  migrate.set_name("good");
  EXPECT_EQ(compute_->MigrateVm(migrate).status().code(), StatusCode::kUnimplemented);
}

// ---------------------------------------------------------------------------------------------
// Boot, console, metrics, pause/resume, reset, graceful and forced stop, data on the volume.

TEST_F(KvmGuestTest, LifecycleConsoleMetricsAndPersistence) {
  OpenHost();
  const std::string vm = "life";
  ASSERT_TRUE(MakeGuestVolume(*host_, "life-root", *guest_).ok());
  auto request = GuestVm(vm, *guest_, "life-root", "hci.write=persisted");
  request.mutable_spec()->set_stop_grace_period_ms(30'000);
  auto created = compute_->CreateVm(request);
  ASSERT_TRUE(created.ok()) << created.status();

  // Boot to the marker.
  v1::StartVmRequest start;
  start.set_name(vm);
  auto t0 = Clock::now();
  auto started = compute_->StartVm(start);
  ASSERT_TRUE(started.ok()) << started.status();
  auto to_running = MsSince(t0);
  EXPECT_EQ(started->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(started->status().accelerator(), "tcg");
  EXPECT_THAT(started->status().accelerator_reason(), StartsWith("auto: "));
  EXPECT_EQ(started->status().node(), "kvm-test");
  ASSERT_TRUE(WaitForLine(vm, kReady, 1)) << Tail(vm);
  auto to_ready = MsSince(t0);
  std::cout << "[timing] StartVm -> QMP running: " << to_running << " ms; -> '" << kReady
            << "': " << to_ready << " ms" << std::endl;
  ASSERT_TRUE(WaitForLine(vm, "hci-test-guest: disk ok boots=1", 1, 60s)) << Tail(vm);
  // The sockets are private.
  struct stat st {};
  ASSERT_EQ(::stat((VmsDir() + "/" + vm + "/qmp.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // Starting a running VM changes nothing; deleting it needs force.
  pid_t first_pid = QemuPid(vm);
  auto again = compute_->StartVm(start);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(QemuPid(vm), first_pid);
  v1::DeleteVmRequest delete_running;
  delete_running.set_name(vm);
  EXPECT_EQ(compute_->DeleteVm(delete_running).code(), StatusCode::kFailedPrecondition);

  // Metrics with KubeVirt's names and real numbers.
  ASSERT_TRUE(WaitForTick(vm, 3));
  v1::VmMetricsRequest metrics_request;
  metrics_request.set_name(vm);
  auto metrics = compute_->VmMetrics(metrics_request);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const std::string& text = metrics->text();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      text, m,
      std::regex("kubevirt_vmi_vcpu_seconds_total\\{id=\"0\",name=\"life\",node=\"kvm-test\","
                 "state=\"running\"\\} ([0-9.]+)")))
      << text;
  EXPECT_GT(std::stod(m[1]), 0.0) << text;
  ASSERT_TRUE(std::regex_search(
      text, m, std::regex("kubevirt_vmi_memory_resident_bytes\\{name=\"life\",[^}]*\\} ([0-9]+)")))
      << text;
  EXPECT_GT(std::stoull(m[1]), 1u << 20) << text;
  ASSERT_TRUE(std::regex_search(
      text, m,
      std::regex("kubevirt_vmi_storage_write_traffic_bytes_total\\{drive=\"root\",[^}]*\\} "
                 "([0-9]+)")))
      << text;
  EXPECT_GT(std::stoull(m[1]), 0u) << "the guest wrote to its disk: " << text;
  for (const char* name : {"kubevirt_vmi_storage_read_traffic_bytes_total{drive=\"root\"",
                           "kubevirt_vmi_storage_iops_read_total{drive=\"root\"",
                           "kubevirt_vmi_storage_iops_write_total{drive=\"root\""}) {
    EXPECT_THAT(text, HasSubstr(name));
  }

  // The live console streams the ticks.
  {
    v1::AttachConsoleRequest attach;
    attach.set_name(vm);
    auto console = compute_->AttachConsole(attach);
    ASSERT_TRUE(console.ok()) << console.status();
    std::string seen;
    auto deadline = Clock::now() + kShortTimeout;
    while (Clock::now() < deadline && seen.find("hci-test-guest: tick ") == std::string::npos) {
      auto chunk = (*console)->Read(500ms);
      ASSERT_TRUE(chunk.ok()) << chunk.status();
      seen += *chunk;
    }
    EXPECT_THAT(seen, HasSubstr("hci-test-guest: tick ")) << seen;
    EXPECT_TRUE((*console)->Write("\n").ok());
  }

  // Pause: the ticks stop. Resume: they go on.
  v1::PauseVmRequest pause;
  pause.set_name(vm);
  auto paused = compute_->PauseVm(pause);
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->status().phase(), v1::VM_PHASE_PAUSED);
  EXPECT_EQ(compute_->PauseVm(pause).status().code(), StatusCode::kFailedPrecondition);
  std::this_thread::sleep_for(300ms);  // output already in flight
  int last = Ticks(vm).back();
  std::this_thread::sleep_for(1200ms);
  EXPECT_EQ(Ticks(vm).back(), last) << "a paused guest ticked";
  v1::StartVmRequest start_paused;
  start_paused.set_name(vm);
  EXPECT_EQ(compute_->StartVm(start_paused).status().code(), StatusCode::kFailedPrecondition);
  v1::ResumeVmRequest resume;
  resume.set_name(vm);
  auto resumed = compute_->ResumeVm(resume);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_TRUE(WaitForTick(vm, last + 3)) << Tail(vm);

  // A forced restart resets the guest in the same QEMU: it boots again.
  pid_t pid = QemuPid(vm);
  v1::RestartVmRequest restart;
  restart.set_name(vm);
  restart.set_force(true);
  auto restarted = compute_->RestartVm(restart);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_EQ(restarted->status().restart_count(), 1u);
  EXPECT_EQ(restarted->status().phase(), v1::VM_PHASE_RUNNING);
  ASSERT_TRUE(WaitForLine(vm, kReady, 2)) << Tail(vm);
  ASSERT_TRUE(WaitForLine(vm, "hci-test-guest: disk ok boots=2", 1, 60s)) << Tail(vm);
  EXPECT_EQ(QemuPid(vm), pid);

  // A graceful restart: power button, then a new QEMU process. The guest only hears the
  // button once its /init watches it (by the time it ticks), so a press now, during boot, is
  // lost: the plugin presses again every powerdown_retry_ms until the guest hears it.
  restart.set_force(false);
  restarted = compute_->RestartVm(restart);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_EQ(restarted->status().restart_count(), 2u);
  EXPECT_EQ(restarted->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(Count(vm, "hci-test-guest: powering off"), 1) << Tail(vm);
  EXPECT_FALSE(process::ProcessAlive(pid, ""));
  pid = QemuPid(vm);
  ASSERT_TRUE(WaitForLine(vm, "hci-test-guest: disk ok boots=3", 1)) << Tail(vm);

  // Graceful stop, while the guest may still be booting: it hears the power button (pressed again
  // if need be) and powers off.
  v1::StopVmRequest stop;
  stop.set_name(vm);
  auto t_stop = Clock::now();
  auto stopped = compute_->StopVm(stop);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  std::cout << "[timing] graceful StopVm: " << MsSince(t_stop) << " ms" << std::endl;
  EXPECT_EQ(stopped->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_EQ(stopped->status().reason(), "GuestShutdown") << stopped->status().message();
  EXPECT_EQ(Count(vm, "hci-test-guest: powering off"), 2) << Tail(vm);
  EXPECT_FALSE(process::ProcessAlive(pid, ""));
  EXPECT_EQ(compute_->StopVm(stop)->status().reason(), "GuestShutdown");  // no change
  v1::AttachConsoleRequest attach;
  attach.set_name(vm);
  EXPECT_EQ(compute_->AttachConsole(attach).status().code(), StatusCode::kFailedPrecondition);

  // Start again on the same volume: the guest counts a fourth boot.
  started = compute_->StartVm(start);
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(WaitForLine(vm, "hci-test-guest: disk ok boots=4", 1)) << Tail(vm);
  EXPECT_EQ(Count(vm, kReady), 4);

  // Forced stop.
  stop.set_force(true);
  stopped = compute_->StopVm(stop);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->status().reason(), "ForcedStop");
  EXPECT_EQ(stopped->status().phase(), v1::VM_PHASE_STOPPED);

  // Every phase change was an event, in order.
  using P = v1::VmPhase;
  // Create; start; pause; resume; (the reset changes no phase); graceful restart; graceful
  // stop; start; forced stop.
  const std::vector<P> expected = {P::VM_PHASE_STOPPED,  P::VM_PHASE_STARTING, P::VM_PHASE_RUNNING,
                                   P::VM_PHASE_PAUSED,   P::VM_PHASE_RUNNING,  P::VM_PHASE_STOPPING,
                                   P::VM_PHASE_STOPPED,  P::VM_PHASE_STARTING, P::VM_PHASE_RUNNING,
                                   P::VM_PHASE_STOPPING, P::VM_PHASE_STOPPED,  P::VM_PHASE_STARTING,
                                   P::VM_PHASE_RUNNING,  P::VM_PHASE_STOPPING, P::VM_PHASE_STOPPED};
  auto phases = events_.WaitPhases(vm, expected.size());
  EXPECT_EQ(phases, expected) << PhaseList(phases);

  // The volume is detached and holds what the guest wrote, read on the host.
  v1::GetVolumeRequest get_volume;
  get_volume.set_name("life-root");
  auto volume = storage_->GetVolume(get_volume);
  ASSERT_TRUE(volume.ok());
  EXPECT_EQ(volume->status().attached_to(), "");
  std::string qcow2 = VolumeFile(state_dir_, "life-root");
  const std::string written = "persisted\npersisted\npersisted\npersisted\n";
  EXPECT_EQ(ReadGuestFile(qcow2, "/hci-test/data"), written);
  EXPECT_EQ(ReadGuestFileWithQemuIo(qcow2, "/hci-test/data", written.size()), written);
  std::string boots = ReadGuestFile(qcow2, "/hci-test/boots");
  EXPECT_EQ(std::count(boots.begin(), boots.end(), '\n'), 4) << boots;

  v1::DeleteVmRequest del;
  del.set_name(vm);
  EXPECT_TRUE(compute_->DeleteVm(del).ok());
}

// ---------------------------------------------------------------------------------------------
// Reattach: the embedder dies, the VM runs on, a new Host takes it over.

TEST_F(KvmGuestTest, ReattachAfterEmbedderIsKilled) {
  const std::string vm = "survivor";
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  pid_t helper = ::fork();
  ASSERT_GE(helper, 0);
  if (helper == 0) {
    ::dup2(out[1], 1);
    ::close(out[0]);
    ::close(out[1]);
    ::execl(HCI_REATTACH_HELPER, HCI_REATTACH_HELPER, state_dir_.c_str(), HCI_PLUGIN_DIR,
            HCI_TEST_GUEST_DIR, vm.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  std::string said;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(out[0], buf, sizeof(buf));
    if (n <= 0) break;
    said.append(buf, static_cast<std::size_t>(n));
    if (said.find('\n') != std::string::npos) break;
  }
  ::close(out[0]);
  ASSERT_EQ(said, "started\n") << "the helper said: " << said;

  // Watch the guest through its log while the helper's Host runs.
  const std::string serial = VmsDir() + "/" + vm + "/serial.log";
  auto serial_ticks = [&] {
    std::vector<int> ticks;
    std::FILE* f = std::fopen(serial.c_str(), "r");
    if (f == nullptr) return ticks;
    char line[512];
    std::string pending;
    while (std::fgets(line, sizeof(line), f) != nullptr) {
      pending += line;
      if (pending.back() != '\n') continue;
      int n;
      char tail;
      if (std::sscanf(pending.c_str(), "hci-test-guest: tick %d%c", &n, &tail) == 2 &&
          (tail == '\n' || tail == '\r')) {
        ticks.push_back(n);
      }
      pending.clear();
    }
    std::fclose(f);
    return ticks;
  };
  auto deadline = Clock::now() + kBootTimeout;
  while (Clock::now() < deadline && (serial_ticks().empty() || serial_ticks().back() < 5)) {
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_FALSE(serial_ticks().empty()) << "the guest never ticked";
  pid_t qemu = QemuPid(vm);
  ASSERT_GT(qemu, 0);

  // kill -9 the embedder.
  ASSERT_EQ(::kill(helper, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(helper, &wstatus, 0), helper);
  ASSERT_TRUE(WIFSIGNALED(wstatus));
  int ticks_at_death = serial_ticks().back();
  EXPECT_TRUE(process::ProcessAlive(qemu, "")) << "QEMU died with its embedder";

  // A new Host on the same state directory finds the VM running.
  OpenHost();
  auto got = Get(vm);
  EXPECT_EQ(got.status().phase(), v1::VM_PHASE_RUNNING) << got.status().message();
  // Nothing happened to the VM: the reason stays that of its start.
  EXPECT_EQ(got.status().reason(), "Started");
  EXPECT_EQ(got.status().accelerator(), "tcg");
  EXPECT_EQ(QemuPid(vm), qemu);
  // The guest went on ticking, without a gap and without a reboot.
  ASSERT_TRUE(WaitForTick(vm, ticks_at_death + 10)) << Tail(vm);
  auto ticks = Ticks(vm);
  ASSERT_FALSE(ticks.empty());
  std::vector<int> expected(ticks.size());
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(ticks, expected) << "ticks have a gap or restarted";
  EXPECT_EQ(Count(vm, kReady), 1);
  // The reattached VM is fully controllable: pause and resume through the new monitor.
  v1::PauseVmRequest pause;
  pause.set_name(vm);
  ASSERT_TRUE(compute_->PauseVm(pause).ok());
  v1::ResumeVmRequest resume;
  resume.set_name(vm);
  ASSERT_TRUE(compute_->ResumeVm(resume).ok());

  // Now QEMU dies while no Host runs: the next Host reports it Failed, with the reason.
  CloseHost();
  EXPECT_TRUE(process::ProcessAlive(qemu, "")) << "closing a Host must not stop its VMs";
  ASSERT_EQ(::kill(qemu, SIGKILL), 0);
  deadline = Clock::now() + kShortTimeout;
  while (Clock::now() < deadline && process::ProcessAlive(qemu, "")) {
    std::this_thread::sleep_for(50ms);
  }
  OpenHost();
  got = Get(vm);
  EXPECT_EQ(got.status().phase(), v1::VM_PHASE_FAILED);
  EXPECT_EQ(got.status().reason(), "ProcessDied");
  EXPECT_THAT(got.status().message(), HasSubstr("while no Host was running"));
  v1::DeleteVmRequest del;
  del.set_name(vm);
  ASSERT_TRUE(compute_->DeleteVm(del).ok());
  // The volume was detached: it can be deleted.
  v1::DeleteVolumeRequest delete_volume;
  delete_volume.set_name(vm + "-root");
  EXPECT_TRUE(storage_->DeleteVolume(delete_volume).ok());
}

// ---------------------------------------------------------------------------------------------
// A killed QEMU: Failed, then restarted by RerunOnFailure.

TEST_F(KvmGuestTest, KilledQemuFailsAndRerunOnFailureRestartsIt) {
  OpenHost();
  const std::string vm = "phoenix";
  auto created =
      compute_->CreateVm(GuestVm(vm, *guest_, "", "", v1::RUN_STRATEGY_RERUN_ON_FAILURE));
  ASSERT_TRUE(created.ok()) << created.status();
  v1::StartVmRequest start;
  start.set_name(vm);
  ASSERT_TRUE(compute_->StartVm(start).ok());
  ASSERT_TRUE(WaitForLine(vm, kReady, 1)) << Tail(vm);
  pid_t first = QemuPid(vm);
  ASSERT_GT(first, 0);

  ASSERT_EQ(::kill(first, SIGKILL), 0);
  auto failed = events_.WaitFor(
      [&](const v1::Event& e) {
        return e.object().name() == vm && e.has_vm_phase() &&
               e.vm_phase().new_phase() == v1::VM_PHASE_FAILED;
      },
      kShortTimeout);
  ASSERT_TRUE(failed) << "no Failed event";
  EXPECT_EQ(failed->type(), v1::EVENT_TYPE_WARNING);
  EXPECT_THAT(failed->message(), HasSubstr("ProcessDied"));

  // Restarted after the back-off: a new QEMU, a second boot, restart_count 1.
  ASSERT_TRUE(WaitForLine(vm, kReady, 2)) << Tail(vm);
  auto got = Get(vm);
  EXPECT_EQ(got.status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_EQ(got.status().reason(), "Restarted");
  EXPECT_EQ(got.status().restart_count(), 1u);
  EXPECT_NE(QemuPid(vm), first);
  for (const auto& c : got.status().conditions()) EXPECT_NE(c.type(), "RestartPending");

  // A guest panic is a failure too (GuestPanicked)... but a forced stop is not: it stays down.
  v1::StopVmRequest stop;
  stop.set_name(vm);
  stop.set_force(true);
  auto stopped = compute_->StopVm(stop);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->status().reason(), "ForcedStop");
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(Get(vm).status().phase(), v1::VM_PHASE_STOPPED);

  using P = v1::VmPhase;
  const std::vector<P> expected = {P::VM_PHASE_STOPPED,  P::VM_PHASE_STARTING, P::VM_PHASE_RUNNING,
                                   P::VM_PHASE_FAILED,   P::VM_PHASE_STARTING, P::VM_PHASE_RUNNING,
                                   P::VM_PHASE_STOPPING, P::VM_PHASE_STOPPED};
  auto phases = events_.WaitPhases(vm, expected.size());
  EXPECT_EQ(phases, expected) << PhaseList(phases);
}

// ---------------------------------------------------------------------------------------------
// Per-VM locking: a graceful stop that waits out its grace period holds up no other VM. The
// guests here are SeaBIOS finding nothing to boot on a blank disk: they never answer the power
// button, so the stop must end as a forced one after the grace period.

TEST_F(KvmGuestTest, LongStopOfOneVmDoesNotBlockAnother) {
  OpenHost();
  for (const std::string vm : {"slow", "quick"}) {
    v1::CreateVolumeRequest volume;
    volume.mutable_metadata()->set_name(vm + "-disk");
    volume.mutable_spec()->set_size_bytes(1 << 20);
    ASSERT_TRUE(storage_->CreateVolume(volume).ok());
    auto request = GuestVm(vm, *guest_, vm + "-disk", "");
    request.mutable_spec()->clear_kernel_boot();
    request.mutable_spec()->set_stop_grace_period_ms(10'000);
    ASSERT_TRUE(compute_->CreateVm(request).ok());
    v1::StartVmRequest start;
    start.set_name(vm);
    auto started = compute_->StartVm(start);
    ASSERT_TRUE(started.ok()) << started.status();
  }
  Result<v1::VirtualMachine> slow_stopped = Internal("not run");
  std::thread stopper([&] {
    v1::StopVmRequest stop;
    stop.set_name("slow");
    slow_stopped = compute_->StopVm(stop);
  });
  ASSERT_TRUE(WaitForPhase("slow", v1::VM_PHASE_STOPPING, kShortTimeout));
  // While "slow" waits for its guest, "quick" pauses, resumes and stops at once.
  v1::PauseVmRequest pause;
  pause.set_name("quick");
  EXPECT_TRUE(compute_->PauseVm(pause).ok());
  v1::ResumeVmRequest resume;
  resume.set_name("quick");
  EXPECT_TRUE(compute_->ResumeVm(resume).ok());
  v1::StopVmRequest stop_quick;
  stop_quick.set_name("quick");
  stop_quick.set_force(true);
  auto quick = compute_->StopVm(stop_quick);
  ASSERT_TRUE(quick.ok()) << quick.status();
  EXPECT_EQ(quick->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_EQ(Get("slow").status().phase(), v1::VM_PHASE_STOPPING)
      << "the other VM's calls waited for this one's stop";
  // A second mutating call on the VM being stopped is refused by the core, not queued.
  v1::StartVmRequest start_slow;
  start_slow.set_name("slow");
  EXPECT_EQ(compute_->StartVm(start_slow).status().code(), StatusCode::kAborted);
  stopper.join();
  ASSERT_TRUE(slow_stopped.ok()) << slow_stopped.status();
  EXPECT_EQ(slow_stopped->status().reason(), "ForcedStop");
  EXPECT_THAT(slow_stopped->status().message(), HasSubstr("did not power off within 10000 ms"));
}

// ---------------------------------------------------------------------------------------------
// A stop that comes while the guest is still in its firmware: the first press of the power
// button is lost (no ACPI driver yet), so the plugin presses again until the guest hears it, as
// OpenStack Nova's clean shutdown does; the stop still ends GuestShutdown.

TEST_F(KvmGuestTest, StopDuringBootPressesThePowerButtonAgain) {
  OpenHost(R"({"powerdown_retry_ms": 1000})");
  const std::string vm = "early";
  ASSERT_TRUE(compute_->CreateVm(GuestVm(vm, *guest_, "", "")).ok());
  v1::StartVmRequest start;
  start.set_name(vm);
  ASSERT_TRUE(compute_->StartVm(start).ok());
  ASSERT_EQ(Count(vm, kReady), 0) << "the guest booted before the stop: nothing to test";
  v1::StopVmRequest stop;
  stop.set_name(vm);
  stop.set_grace_period_ms(120'000);
  auto stopped = compute_->StopVm(stop);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->status().reason(), "GuestShutdown") << stopped->status().message();
  EXPECT_THAT(stopped->status().message(), ContainsRegex("pressed [0-9]+ times"));
  EXPECT_EQ(Count(vm, kReady), 1) << Tail(vm);
  EXPECT_EQ(Count(vm, "hci-test-guest: powering off"), 1) << Tail(vm);
}

// ---------------------------------------------------------------------------------------------
// A guest kernel panic: QEMU's pvpanic reports it, the VM is Failed with GuestPanicked, and
// with the Manual strategy it stays down.

TEST_F(KvmGuestTest, GuestPanicIsReported) {
  OpenHost();
  const std::string vm = "panicky";
  ASSERT_TRUE(compute_->CreateVm(GuestVm(vm, *guest_, "", "hci.panic=1")).ok());
  v1::StartVmRequest start;
  start.set_name(vm);
  ASSERT_TRUE(compute_->StartVm(start).ok());
  ASSERT_TRUE(WaitForPhase(vm, v1::VM_PHASE_FAILED, kBootTimeout)) << Tail(vm);
  auto got = Get(vm);
  EXPECT_EQ(got.status().reason(), "GuestPanicked") << got.status().message();
  EXPECT_EQ(Count(vm, kReady), 1);
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(Get(vm).status().phase(), v1::VM_PHASE_FAILED) << "Manual must not restart";
  EXPECT_FALSE(process::ProcessAlive(QemuPid(vm), "")) << "QEMU was left running";
}

// ResizeDisk on a qcow2 (file-backed) disk of a running VM: QEMU grows the image with
// block_resize and the guest's virtio_blk reports the new capacity (kernel log, loglevel=6).
TEST_F(KvmGuestTest, ResizeDiskGrowsADiskTheGuestSees) {
  OpenHost();
  const std::string vm = "rs";
  ASSERT_TRUE(MakeGuestVolume(*host_, "rs-root", *guest_).ok());
  v1::GetVolumeRequest get;
  get.set_name("rs-root");
  auto volume = storage_->GetVolume(get);
  ASSERT_TRUE(volume.ok()) << volume.status();
  const std::uint64_t size = volume->status().capacity_bytes();
  ASSERT_GT(size, 0u);
  ASSERT_TRUE(compute_->Capabilities().resize_disk());
  ASSERT_TRUE(compute_->CreateVm(GuestVm(vm, *guest_, "rs-root", "loglevel=6")).ok());

  v1::ResizeDiskRequest resize;
  resize.set_vm(vm);
  resize.set_volume("rs-root");
  resize.set_size_bytes(size);
  EXPECT_TRUE(compute_->ResizeDisk(resize).ok()) << "a stopped VM has nothing to do";

  v1::StartVmRequest start;
  start.set_name(vm);
  ASSERT_TRUE(compute_->StartVm(start).ok());
  ASSERT_TRUE(WaitForLine(vm, "hci-test-guest: disk ok boots=1", 1)) << Tail(vm);

  resize.set_volume("other");
  EXPECT_EQ(compute_->ResizeDisk(resize).code(), StatusCode::kNotFound);
  resize.set_volume("rs-root");
  resize.set_size_bytes(size - 4096);
  Status smaller = compute_->ResizeDisk(resize);
  EXPECT_EQ(smaller.code(), StatusCode::kInvalidArgument) << smaller;
  EXPECT_THAT(smaller.message(), HasSubstr("size_bytes"));
  resize.set_size_bytes(size);
  EXPECT_TRUE(compute_->ResizeDisk(resize).ok()) << "the same size changes nothing";

  const std::uint64_t bigger = size + 16 * (1 << 20);
  resize.set_size_bytes(bigger);
  Status grown = compute_->ResizeDisk(resize);
  ASSERT_TRUE(grown.ok()) << grown;
  const std::string expected = "[vda] new size: " + std::to_string(bigger / 512) + " ";
  auto deadline = Clock::now() + 60s;
  while (Clock::now() < deadline && Console(vm).find(expected) == std::string::npos) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_THAT(Console(vm), HasSubstr(expected));
  auto event = events_.WaitFor(
      [&](const v1::Event& e) { return e.reason() == "DiskResized" && e.object().name() == vm; },
      10s);
  ASSERT_TRUE(event.has_value());
  EXPECT_THAT(event->message(), HasSubstr(std::to_string(bigger)));
  const int ticks = Ticks(vm).empty() ? 0 : Ticks(vm).back();
  EXPECT_TRUE(WaitForTick(vm, ticks + 5)) << Tail(vm);
}

}  // namespace
}  // namespace hci::kvmtest
