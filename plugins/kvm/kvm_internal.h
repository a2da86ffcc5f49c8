// Private declarations shared by the kvm plugin's sources: options, the per-VM directory layout,
// spec validation, the QEMU argv builder, the accelerator choice, metrics parsing and the small
// file helpers. Everything here except MakeCompute is a pure function or a plain value type, so
// that unit tests can call it without QEMU.
#pragma once

#include <google/protobuf/struct.pb.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hci/compute.h"
#include "hci/plugin.h"
#include "hci/result.h"
#include "hci/status.h"
#include "hci/v1/compute.pb.h"
#include "hci/v1/storage.pb.h"
#include "process/process.h"

namespace hci::kvm {

/// The plugin's name, as registered with HCI_PLUGIN.
inline constexpr char kPluginName[] = "kvm";

/// Where Debian's ovmf package puts the UEFI firmware (code and variable template).
inline constexpr char kOvmfCode[] = "/usr/share/OVMF/OVMF_CODE_4M.fd";
inline constexpr char kOvmfVars[] = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Limits enforced on a VirtualMachineSpec.
inline constexpr std::uint32_t kMaxVcpus = 255;
inline constexpr std::uint64_t kMinMemoryMib = 16;
inline constexpr std::uint64_t kMaxMemoryMib = 16ull << 20;  // 16 TiB
/// Graceful stop wait when neither the request nor the spec gives one.
inline constexpr std::uint32_t kDefaultStopGraceMs = 60'000;
/// Ports of the one AHCI controller that SATA disks use.
inline constexpr int kMaxSataDisks = 6;
/// Longest path a unix socket address holds (sun_path minus its NUL).
inline constexpr std::size_t kMaxSocketPath = 107;

// ---------------------------------------------------------------------------------------------
// Options

/// Parsed backends.compute.options of a kvm binding. Every field has a default; unknown keys are
/// refused so that a typo does not silently change nothing.
struct Options {
  /// "auto", "kvm" or "tcg": the accelerator of VMs whose spec.accelerator is empty.
  std::string accel = "auto";
  /// The QEMU system emulator: a path, or a name looked up in PATH.
  std::string qemu_binary = "qemu-system-x86_64";
  /// The machine type of VMs whose spec.machine_type is empty ("q35" or "pc").
  std::string machine_type = "q35";
  /// How long StartVm waits for QEMU's monitor to answer and report `running`.
  std::uint32_t start_timeout_ms = 30'000;
  /// How long the KVM probe guest may take before KVM is declared unusable.
  std::uint32_t kvm_probe_timeout_ms = 5'000;
  /// Back-off before an automatic restart: initial, doubled after every failed run, capped.
  std::uint32_t restart_backoff_initial_ms = 1'000;
  std::uint32_t restart_backoff_max_ms = 60'000;
  /// A run that lasted this long resets the back-off to its initial value.
  std::uint32_t restart_backoff_reset_ms = 300'000;
  /// A graceful stop presses the ACPI power button again at this interval until the guest powers
  /// off or the grace period ends, as OpenStack Nova's clean shutdown does: a guest that was not
  /// yet listening (still booting) misses a single press. 0 presses once.
  std::uint32_t powerdown_retry_ms = 5'000;
};

/// Parses the options Struct. InvalidArgument naming the option (e.g. "accel: \"fast\" is not an
/// accelerator (expected auto, kvm or tcg)") for a bad value or an unknown key.
Result<Options> ParseOptions(const google::protobuf::Struct& options);

// ---------------------------------------------------------------------------------------------
// Per-VM directory

/// The files of one VM under <plugin state dir>/vms/<name>/ (mode 0700).
struct VmPaths {
  std::string dir;
  /// The VirtualMachine's metadata and spec (binary protobuf), written once by CreateVm.
  std::string spec;
  /// The last VirtualMachineStatus (binary protobuf), rewritten on every phase change.
  std::string status;
  /// The QEMU pid as written by the spawner; kept after QEMU exits, so that a later Host can
  /// tell that a VM died.
  std::string pid;
  /// QEMU's own -pidfile: QEMU removes it when it exits normally, not when it is killed.
  std::string qemu_pid;
  std::string qmp_socket;
  std::string console_socket;
  /// Everything the guest wrote to its serial port, across runs (logappend=on).
  std::string serial_log;
  /// QEMU's stdout and stderr, across runs; each run starts with a "hci-kvm:" header line.
  std::string qemu_log;
  /// UEFI variable store (a copy of the OVMF template), for UEFI VMs.
  std::string uefi_vars;
  /// The blockdev options the storage backend gave for each disk at the last start
  /// (google.protobuf.Struct, binary: disk name -> BlockdevOptions), for ResizeDisk, which opens
  /// a second connection to an NBD volume with them.
  std::string disks;

  static VmPaths For(const std::string& vms_dir, const std::string& name);
};

// ---------------------------------------------------------------------------------------------
// Spec validation and the QEMU command line

/// Checks everything about a spec that needs no other backend: vCPUs, memory, machine type,
/// accelerator, firmware, kernel files (absolute paths of existing regular files), disks (unique
/// volumes, buses, boot orders) and the features this backend does not implement yet (NICs,
/// cloud-init: Unimplemented naming the field). InvalidArgument names the field.
Status ValidateSpec(const v1::VirtualMachineSpec& spec, bool uefi_available);

/// The QEMU block node name of a disk: "disk-<name>" when that fits QEMU's 31-character limit,
/// else a prefix of it with a hash of the whole name (so that distinct disks stay distinct).
std::string NodeNameFor(std::string_view disk_name);

/// The protocol node under the raw node of a disk whose volume is an NBD export: "nbd0-<name>"
/// or "nbd1-<name>" (`slot` 0 or 1; ResizeDisk alternates them), shortened as NodeNameFor does.
std::string ProtocolNodeNameFor(std::string_view disk_name, int slot);

/// Converts a google.protobuf.Value to JSON text as QEMU's QAPI expects it: integral numbers
/// that fit in 64 bits are written as integers (Struct stores every number as a double).
std::string ValueToJson(const google::protobuf::Value& value);

/// What BuildQemuArgv needs besides the spec.
struct LaunchConfig {
  /// argv[0].
  std::string qemu_binary;
  std::string vm_name;
  /// "q35" (default when empty), "pc", "pc-q35-*" or "pc-i440fx-*".
  std::string machine_type;
  /// "tcg" or "kvm" (resolved: never "auto").
  std::string accel;
  VmPaths paths;
  /// Firmware files for UEFI VMs.
  std::string ovmf_code = kOvmfCode;
};

/// Builds the QEMU argv for `spec` (which ValidateSpec accepted). `attach[i]` is how the
/// storage backend said to open spec.disks[i]; any QAPI BlockdevOptions object is accepted and
/// gets this VM's node-name (and read-only when the disk is read-only). An NBD export
/// (`"driver": "nbd"`) becomes two nodes: the NBD node (ProtocolNodeNameFor(disk, 0)) under a
/// `raw` format node (NodeNameFor(disk)) that the device uses, so that ResizeDisk can swap the
/// NBD connection for one that sees a grown export (QEMU's NBD client cannot grow a node).
/// InvalidArgument naming `spec.disks[i]` when an AttachInfo has no blockdev or when the counts
/// differ.
Result<std::vector<std::string>> BuildQemuArgv(const v1::VirtualMachineSpec& spec,
                                               const std::vector<v1::AttachInfo>& attach,
                                               const LaunchConfig& launch);

/// A substring of QEMU's command line unique to this VM and state directory (the QMP socket
/// argument), for ProcessAlive: a recycled pid never matches it.
std::string CmdlineMarker(const VmPaths& paths);

// ---------------------------------------------------------------------------------------------
// Accelerator

/// The accelerator a VM runs with and a sentence saying why.
struct AccelChoice {
  std::string accel;  ///< "kvm" or "tcg"
  std::string reason;
};

/// True when /proc/cpuinfo text lists the vmx (Intel VT-x) or svm (AMD-V) flag.
bool CpuinfoHasVirtualization(std::string_view cpuinfo);

/// Boots a 13-byte guest (a BIOS image whose reset vector writes "K" to the serial port and
/// exits through isa-debug-exit) under `-accel kvm`, in `work_dir`, and checks that it ran.
/// OK when it did within `timeout`; otherwise Unavailable saying what happened.
Status ProbeKvm(const std::string& qemu_binary, const std::string& work_dir,
                std::chrono::milliseconds timeout);

/// What `auto` resolves to on this host: KVM only when the CPU advertises vmx/svm, /dev/kvm
/// opens read-write and ProbeKvm succeeds; TCG otherwise, with the first reason that failed.
AccelChoice ChooseAutoAccel(const std::string& qemu_binary, const std::string& work_dir,
                            std::chrono::milliseconds probe_timeout);

// ---------------------------------------------------------------------------------------------
// Metrics

/// utime + stime of a /proc/<pid>/task/<tid>/stat line, in seconds.
Result<double> ParseStatCpuSeconds(std::string_view stat, long ticks_per_second);
/// VmRSS of a /proc/<pid>/status text, in bytes.
Result<std::uint64_t> ParseVmRssBytes(std::string_view status);

/// One disk's counters from query-blockstats.
struct DriveStats {
  std::string drive;  ///< the disk's name in the spec
  std::uint64_t read_bytes = 0;
  std::uint64_t write_bytes = 0;
  std::uint64_t read_ops = 0;
  std::uint64_t write_ops = 0;
};

/// Prometheus text (format 0.0.4) with KubeVirt's metric names: kubevirt_vmi_vcpu_seconds_total
/// (one series per vCPU, labels id and state="running"), kubevirt_vmi_memory_resident_bytes and
/// kubevirt_vmi_storage_{read,write}_traffic_bytes_total / _iops_{read,write}_total (label
/// drive); every series carries name and node.
std::string RenderVmMetrics(std::string_view name, std::string_view node,
                            const std::vector<double>& vcpu_seconds, std::uint64_t rss_bytes,
                            const std::vector<DriveStats>& drives);

// ---------------------------------------------------------------------------------------------
// Files

/// Reads a whole file. NotFound (or another errno status) naming the path.
Result<std::string> ReadFile(const std::string& path);
/// Writes `data` to a temporary file in the same directory (mode 0600), fsyncs and renames it
/// over `path`.
using ::hci::process::WriteFileAtomically;
/// The last `max_lines` non-empty lines of `text`, joined with "; ".
std::string LastLines(std::string_view text, std::size_t max_lines);

// ---------------------------------------------------------------------------------------------
// Console

/// Reads up to `max_bytes` (0: 64 KiB) of the serial log from `offset`. A missing log reads as
/// empty; OutOfRange when `offset` is beyond its end.
Result<v1::ConsoleOutput> ReadConsoleLog(const std::string& path, std::uint64_t offset,
                                         std::uint32_t max_bytes);

/// Connects to QEMU's serial console socket. QEMU serves one console client at a time: a second
/// client connects but sees no data until the first one closes. Unavailable when nothing
/// listens (the VM is not running).
Result<std::unique_ptr<ConsoleStream>> ConnectConsole(const std::string& socket_path);

// ---------------------------------------------------------------------------------------------
// The backend

/// The factory (hci_plugin_entry's PluginFactories::compute; unit tests call it directly).
Result<std::unique_ptr<ComputeBackend>> MakeCompute(PluginContext& context);

}  // namespace hci::kvm
