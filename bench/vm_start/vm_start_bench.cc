// How long a VM takes to start, three ways, booting the same test guest (tools/build-test-guest)
// with the same machine, CPU, memory, kernel, initramfs and disk:
//   BM_LibhciStartVm     libhci's kvm plugin: ComputeBackend::StartVm (through hci::Host)
//   BM_DirectArgv        the very argv the plugin ran, spawned directly, watched over QMP
//   BM_VirshStart        `virsh start` of an equivalent libvirt domain (<os><kernel>...)
// Each repetition measures two intervals from the start request: until QEMU reports `running`
// (the benchmark's manual time; for virsh, until `virsh start` returns, which libvirt does once
// the domain runs) and until the guest prints `hci-test-guest: ready` on its serial port
// (counter to_marker_ms). bench/vm_start/run runs this with repetitions and prints the medians
// and the ratios against the direct argv; docs/benchmarks.md records a run.
//
// Environment: HCI_TEST_GUEST (required) is the test guest's directory; HCI_BENCH_LIBVIRT_URI
// (default qemu:///system) the libvirt connection. A way that cannot run here is reported with
// SkipWithError and its reason, never silently.
#include <benchmark/benchmark.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "hci/hci.h"
#include "kvm_test_env.h"
#include "process/process.h"
#include "qmp/qmp_client.h"

namespace hci::bench {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr char kVm[] = "bench";
constexpr char kMarker[] = "hci-test-guest: ready";
constexpr auto kBootDeadline = 180s;
constexpr char kLibvirtDomain[] = "hci-bench-vm-start";

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::uintmax_t FileSize(const std::string& path) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  return ec ? 0 : size;
}

// Polls `path` (from byte `offset`) every 2 ms until it holds the marker; the time it was seen.
Result<Clock::time_point> WaitForMarker(const std::string& path, std::uintmax_t offset,
                                        Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      in.seekg(static_cast<std::streamoff>(offset));
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (text.find(kMarker) != std::string::npos) return Clock::now();
    }
    std::this_thread::sleep_for(2ms);
  }
  return DeadlineExceeded("no \"" + std::string(kMarker) + "\" in " + path);
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read " + path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Waits until QEMU behind `socket` says `running` (as the kvm plugin does after spawning it).
Status WaitRunning(qmp::QmpClient& client, Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    auto status = client.Execute("query-status");
    if (status.ok() && status->is_object()) {
      if (auto* s = status->as_object().if_contains("status");
          s && s->is_string() && s->as_string() == "running") {
        return Status::OK();
      }
    }
    std::this_thread::sleep_for(20ms);
  }
  return DeadlineExceeded("QEMU did not report running");
}

// What all three ways share: the guest, a Host with the VM defined, and the argv it ran.
class Fixture {
 public:
  static Fixture& Get() {
    static Fixture* fixture = new Fixture();  // never destroyed: QEMU may still be stopping
    return *fixture;
  }

  Status Init() {
    if (initialized_) return init_status_;
    initialized_ = true;
    init_status_ = DoInit();
    return init_status_;
  }

  kvmtest::GuestEnv guest;
  std::string state_dir;
  std::unique_ptr<Host> host;
  ComputeBackend* compute = nullptr;
  std::string vm_dir;
  std::string volume_file;
  std::vector<std::string> argv;  // the plugin's QEMU argv (warm-up run), from /proc/PID/cmdline

 private:
  Status DoInit() {
    const char* guest_dir = std::getenv("HCI_TEST_GUEST");
    if (guest_dir == nullptr || *guest_dir == '\0') {
      return FailedPrecondition(
          "HCI_TEST_GUEST is not set: point it at tools/build-test-guest's output directory");
    }
    HCI_ASSIGN_OR_RAISE(guest, kvmtest::LoadGuestEnv(guest_dir));
    char tmpl[] = "/tmp/hci-bench-vm-start.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return ErrnoStatus(errno, "mkdtemp");
    state_dir = tmpl;
    // Every way runs under TCG with the same CPU model: KVM cannot run Linux guests here
    // (../shared/ENVIRONMENT.md), and the comparison must not depend on the accel probe.
    HCI_ASSIGN_OR_RAISE(
        host, Host::Open(kvmtest::MakeConfig(state_dir, HCI_PLUGIN_DIR, R"({"accel": "tcg"})")));
    HCI_ASSIGN_OR_RAISE(compute, host->compute());
    HCI_RETURN_NOT_OK(kvmtest::MakeGuestVolume(*host, "bench-root", guest));
    volume_file = kvmtest::VolumeFile(state_dir, "bench-root");
    HCI_RETURN_NOT_OK(compute->CreateVm(kvmtest::GuestVm(kVm, guest, "bench-root", "")).status());
    vm_dir = state_dir + "/plugins/kvm/vms/" + kVm;
    // A warm-up boot, untimed: fills the page cache for every way alike, and gives the argv
    // that BM_DirectArgv runs, so that the ways can run in any order (interleaved).
    v1::StartVmRequest start;
    start.set_name(kVm);
    HCI_RETURN_NOT_OK(compute->StartVm(start).status());
    HCI_RETURN_NOT_OK(
        WaitForMarker(vm_dir + "/serial.log", 0, Clock::now() + kBootDeadline).status());
    HCI_RETURN_NOT_OK(CaptureArgv());
    v1::StopVmRequest stop;
    stop.set_name(kVm);
    stop.set_force(true);
    return compute->StopVm(stop).status();
  }

  // Reads QEMU's argv from /proc while the plugin's VM runs (its pidfile names the process).
  Status CaptureArgv() {
    HCI_ASSIGN_OR_RAISE(std::string pid, ReadFile(vm_dir + "/qemu.pid"));
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    HCI_ASSIGN_OR_RAISE(std::string cmdline, ReadFile("/proc/" + pid + "/cmdline"));
    std::size_t pos = 0;
    while (pos < cmdline.size()) {
      std::size_t end = cmdline.find('\0', pos);
      if (end == std::string::npos) end = cmdline.size();
      argv.push_back(cmdline.substr(pos, end - pos));
      pos = end + 1;
    }
    if (argv.empty()) return Internal("empty /proc/" + pid + "/cmdline");
    return Status::OK();
  }

  bool initialized_ = false;
  Status init_status_;
};

void Report(benchmark::State& state, Clock::duration to_running, Clock::duration to_marker) {
  state.SetIterationTime(std::chrono::duration<double>(to_running).count());
  state.counters["to_running_ms"] = Ms(to_running);
  state.counters["to_marker_ms"] = Ms(to_marker);
}

void BM_LibhciStartVm(benchmark::State& state) {
  Fixture& f = Fixture::Get();
  if (Status s = f.Init(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  const std::string serial = f.vm_dir + "/serial.log";
  for (auto _ : state) {
    const auto offset = FileSize(serial);
    v1::StartVmRequest start;
    start.set_name(kVm);
    const auto t0 = Clock::now();
    auto started = f.compute->StartVm(start);
    const auto t_running = Clock::now();
    if (!started.ok()) return state.SkipWithError(started.status().ToString().c_str());
    auto t_marker = WaitForMarker(serial, offset, t0 + kBootDeadline);
    if (!t_marker.ok()) return state.SkipWithError(t_marker.status().ToString().c_str());
    Report(state, t_running - t0, *t_marker - t0);
    v1::StopVmRequest stop;
    stop.set_name(kVm);
    stop.set_force(true);
    if (auto stopped = f.compute->StopVm(stop); !stopped.ok()) {
      return state.SkipWithError(stopped.status().ToString().c_str());
    }
  }
}

// Spawns the plugin's argv in its own session, as the plugin does, with its paths moved from
// the VM's directory into another (so nothing of the plugin's state is touched), then connects
// to QMP and waits for `running`.
void BM_DirectArgv(benchmark::State& state) {
  Fixture& f = Fixture::Get();
  if (Status s = f.Init(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  const std::string dir = f.state_dir + "/direct";
  std::filesystem::create_directories(dir);
  ::chmod(dir.c_str(), 0700);
  std::vector<std::string> argv = f.argv;
  for (auto& arg : argv) {
    for (std::size_t at; (at = arg.find(f.vm_dir + "/")) != std::string::npos;) {
      arg.replace(at, f.vm_dir.size(), dir);
    }
  }
  const std::string serial = dir + "/serial.log";
  for (auto _ : state) {
    std::filesystem::remove(dir + "/qmp.sock");
    std::filesystem::remove(dir + "/console.sock");
    const auto offset = FileSize(serial);
    process::DaemonOptions daemon;
    daemon.argv = argv;
    daemon.log_file = dir + "/qemu.log";
    const auto t0 = Clock::now();
    auto pid = process::SpawnDaemon(daemon);
    if (!pid.ok()) return state.SkipWithError(pid.status().ToString().c_str());
    qmp::ConnectOptions connect;
    connect.socket_path = dir + "/qmp.sock";
    auto client = qmp::QmpClient::Connect(connect);
    if (!client.ok()) return state.SkipWithError(client.status().ToString().c_str());
    if (Status s = WaitRunning(**client, t0 + 30s); !s.ok()) {
      return state.SkipWithError(s.ToString().c_str());
    }
    const auto t_running = Clock::now();
    auto t_marker = WaitForMarker(serial, offset, t0 + kBootDeadline);
    if (!t_marker.ok()) return state.SkipWithError(t_marker.status().ToString().c_str());
    Report(state, t_running - t0, *t_marker - t0);
    (void)(*client)->Execute("quit");
    client->reset();
    for (auto until = Clock::now() + 10s;
         process::ProcessAlive(*pid, "") && Clock::now() < until;) {
      std::this_thread::sleep_for(10ms);
    }
  }
}

Result<process::RunResult> Virsh(const std::string& uri, std::vector<std::string> args) {
  process::RunOptions run;
  run.argv = {"virsh", "--quiet", "--connect", uri};
  run.argv.insert(run.argv.end(), args.begin(), args.end());
  run.timeout = 120s;
  return process::Run(run);
}

std::string XmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// The libvirt twin of the plugin's VM: q35, TCG with `-cpu max`, 1 vCPU, 256 MiB, the same
// kernel, initramfs and command line, the same kind of virtio disk (a copy of the volume), the
// serial port to a file, pvpanic, no NIC, no USB, no balloon. QEMU runs as root, as it does
// under the plugin here (a static DAC label, no relabelling).
std::string DomainXml(const Fixture& f, const std::string& disk, const std::string& serial) {
  std::ostringstream x;
  x << "<domain type='qemu'>\n"
    << "  <name>" << kLibvirtDomain << "</name>\n"
    << "  <memory unit='MiB'>256</memory>\n"
    << "  <vcpu>1</vcpu>\n"
    << "  <os>\n"
    << "    <type arch='x86_64' machine='q35'>hvm</type>\n"
    << "    <kernel>" << XmlEscape(f.guest.kernel) << "</kernel>\n"
    << "    <initrd>" << XmlEscape(f.guest.initrd) << "</initrd>\n"
    << "    <cmdline>" << XmlEscape(f.guest.cmdline) << "</cmdline>\n"
    << "  </os>\n"
    << "  <features><acpi/></features>\n"
    << "  <cpu mode='maximum' migratable='off'/>\n"
    << "  <on_poweroff>destroy</on_poweroff>\n"
    << "  <on_crash>destroy</on_crash>\n"
    << "  <devices>\n"
    << "    <disk type='file' device='disk'>\n"
    << "      <driver name='qemu' type='qcow2'/>\n"
    << "      <source file='" << XmlEscape(disk) << "'/>\n"
    << "      <target dev='vda' bus='virtio'/>\n"
    << "    </disk>\n"
    << "    <serial type='file'>\n"
    << "      <source path='" << XmlEscape(serial) << "' append='on'/>\n"
    << "      <target port='0'/>\n"
    << "    </serial>\n"
    << "    <controller type='usb' model='none'/>\n"
    << "    <memballoon model='none'/>\n"
    << "    <panic model='isa'/>\n"
    << "  </devices>\n"
    << "  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>\n"
    << "</domain>\n";
  return x.str();
}

void BM_VirshStart(benchmark::State& state) {
  Fixture& f = Fixture::Get();
  if (Status s = f.Init(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  const char* env_uri = std::getenv("HCI_BENCH_LIBVIRT_URI");
  const std::string uri = env_uri && *env_uri ? env_uri : "qemu:///system";
  auto skip = [&](const std::string& why) { state.SkipWithError(why.c_str()); };
  auto version = Virsh(uri, {"version"});
  if (!version.ok() || version->exit_code != 0) {
    return skip("libvirt is not reachable at " + uri + " (bench/vm_start/run starts virtlogd " +
                "and libvirtd): " +
                (version.ok() ? process::Tail(version->stderr_data) : version.status().ToString()));
  }
  const std::string dir = f.state_dir + "/libvirt";
  std::filesystem::create_directories(dir);
  const std::string disk = dir + "/root.qcow2";
  const std::string serial = dir + "/serial.log";
  std::error_code ec;
  std::filesystem::copy_file(f.volume_file, disk, std::filesystem::copy_options::overwrite_existing,
                             ec);
  if (ec) return skip("copy " + f.volume_file + ": " + ec.message());
  const std::string xml_path = dir + "/domain.xml";
  std::ofstream(xml_path) << DomainXml(f, disk, serial);
  (void)Virsh(uri, {"destroy", kLibvirtDomain});  // left over from an interrupted run
  (void)Virsh(uri, {"undefine", kLibvirtDomain});
  auto defined = Virsh(uri, {"define", xml_path});
  if (!defined.ok() || defined->exit_code != 0) {
    return skip("virsh define: " +
                (defined.ok() ? process::Tail(defined->stderr_data) : defined.status().ToString()));
  }
  for (auto _ : state) {
    const auto offset = FileSize(serial);
    const auto t0 = Clock::now();
    auto started = Virsh(uri, {"start", kLibvirtDomain});
    const auto t_running = Clock::now();
    if (!started.ok() || started->exit_code != 0) {
      skip("virsh start: " +
           (started.ok() ? process::Tail(started->stderr_data) : started.status().ToString()));
      break;
    }
    auto t_marker = WaitForMarker(serial, offset, t0 + kBootDeadline);
    if (!t_marker.ok()) {
      skip(t_marker.status().ToString());
      break;
    }
    Report(state, t_running - t0, *t_marker - t0);
    (void)Virsh(uri, {"destroy", kLibvirtDomain});
  }
  (void)Virsh(uri, {"destroy", kLibvirtDomain});
  (void)Virsh(uri, {"undefine", kLibvirtDomain});
}

// One iteration per repetition: a boot takes seconds, and each must be a fresh start.
BENCHMARK(BM_LibhciStartVm)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DirectArgv)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_VirshStart)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace hci::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  auto& f = hci::bench::Fixture::Get();
  if (f.host) {
    hci::v1::DeleteVmRequest del;
    del.set_name(hci::bench::kVm);
    del.set_force(true);
    (void)f.compute->DeleteVm(del);
    f.host.reset();
  }
  if (!f.state_dir.empty()) std::filesystem::remove_all(f.state_dir);
  return 0;
}
