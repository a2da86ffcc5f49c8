// Spec validation, the per-VM directory layout and the QEMU argv builder: pure functions.
#include <sys/stat.h>

#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <string>

#include "hci/names.h"
#include "kvm_internal.h"

namespace hci::kvm {
namespace {

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

bool IsAbsolute(const std::string& path) { return !path.empty() && path.front() == '/'; }

// An absolute path naming an existing regular file.
Status CheckHostFile(const std::string& path, const std::string& field, bool required) {
  if (path.empty()) {
    return required ? InvalidArgument(field + ": is required") : Status();
  }
  if (!IsAbsolute(path)) {
    return InvalidArgument(field + ": \"" + path + "\" is not an absolute path");
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return InvalidArgument(field + ": \"" + path + "\" does not exist or cannot be read");
  }
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument(field + ": \"" + path + "\" is not a regular file");
  }
  return Status();
}

// QEMU's option syntax: a ',' inside a value is written ",,".
std::string EscapeComma(std::string_view s) {
  std::string out;
  for (char c : s) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

bool ValidMachineType(const std::string& m) {
  return m.empty() || m == "q35" || m == "pc" || m.starts_with("pc-q35-") ||
         m.starts_with("pc-i440fx-");
}

std::uint64_t Fnv1a(std::string_view data) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

boost::json::value ToJson(const google::protobuf::Value& v) {
  using google::protobuf::Value;
  switch (v.kind_case()) {
    case Value::kNumberValue: {
      double d = v.number_value();
      // Struct keeps every number as a double; QAPI wants integers for sizes and counts.
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.007199254740992e15) {
        return static_cast<std::int64_t>(d);
      }
      return d;
    }
    case Value::kStringValue:
      return boost::json::string(v.string_value());
    case Value::kBoolValue:
      return v.bool_value();
    case Value::kStructValue: {
      // Sorted keys: protobuf maps iterate in no fixed order, and the argv should not vary.
      std::map<std::string, const google::protobuf::Value*> sorted;
      for (const auto& [key, field] : v.struct_value().fields()) sorted[key] = &field;
      boost::json::object o;
      for (const auto& [key, field] : sorted) o[key] = ToJson(*field);
      return o;
    }
    case Value::kListValue: {
      boost::json::array a;
      for (const auto& item : v.list_value().values()) a.push_back(ToJson(item));
      return a;
    }
    default:
      return nullptr;
  }
}

}  // namespace

VmPaths VmPaths::For(const std::string& vms_dir, const std::string& name) {
  VmPaths p;
  p.dir = vms_dir + "/" + name;
  p.spec = p.dir + "/spec.pb";
  p.status = p.dir + "/status.pb";
  p.pid = p.dir + "/pid";
  p.qemu_pid = p.dir + "/qemu.pid";
  p.qmp_socket = p.dir + "/qmp.sock";
  p.console_socket = p.dir + "/console.sock";
  p.serial_log = p.dir + "/serial.log";
  p.qemu_log = p.dir + "/qemu.log";
  p.uefi_vars = p.dir + "/uefi-vars.fd";
  p.disks = p.dir + "/disks.pb";
  return p;
}

std::string CmdlineMarker(const VmPaths& paths) {
  return "unix:" + EscapeComma(paths.qmp_socket) + ",server=on";
}

namespace {

// `kind` (5 characters, e.g. "disk-") + the disk name, shortened with a hash of the whole name
// when that does not fit QEMU's limit.
std::string NodeName(std::string_view kind, std::string_view disk_name) {
  constexpr std::size_t kMaxNodeName = 31;  // QEMU's BlockDriverState.node_name is char[32]
  std::string direct = std::string(kind) + std::string(disk_name);
  if (direct.size() <= kMaxNodeName) return direct;
  char hash[9];
  std::snprintf(hash, sizeof(hash), "%08x", static_cast<unsigned>(Fnv1a(disk_name) & 0xffffffffu));
  std::string prefix(disk_name.substr(0, kMaxNodeName - kind.size() - 1 - 8));
  while (!prefix.empty() && prefix.back() == '-') prefix.pop_back();
  return std::string(kind) + prefix + "-" + hash;
}

}  // namespace

std::string NodeNameFor(std::string_view disk_name) { return NodeName("disk-", disk_name); }

std::string ProtocolNodeNameFor(std::string_view disk_name, int slot) {
  return NodeName(slot == 0 ? "nbd0-" : "nbd1-", disk_name);
}

std::string ValueToJson(const google::protobuf::Value& value) {
  return boost::json::serialize(ToJson(value));
}

Status ValidateSpec(const v1::VirtualMachineSpec& spec, bool uefi_available) {
  if (spec.vcpus() < 1 || spec.vcpus() > kMaxVcpus) {
    return InvalidArgument("spec.vcpus: " + std::to_string(spec.vcpus()) +
                           " is not between 1 and " + std::to_string(kMaxVcpus));
  }
  if (spec.memory_mib() < kMinMemoryMib) {
    return InvalidArgument("spec.memory_mib: " + std::to_string(spec.memory_mib()) +
                           " MiB is less than the minimum of " + std::to_string(kMinMemoryMib) +
                           " MiB");
  }
  if (spec.memory_mib() > kMaxMemoryMib) {
    return InvalidArgument("spec.memory_mib: " + std::to_string(spec.memory_mib()) +
                           " MiB is more than the 16 TiB a VM can have");
  }
  if (!v1::Firmware_IsValid(spec.firmware())) {
    return InvalidArgument("spec.firmware: unknown value " + std::to_string(spec.firmware()));
  }
  if (spec.firmware() == v1::FIRMWARE_UEFI && !uefi_available) {
    return Unimplemented(std::string("spec.firmware: UEFI needs the OVMF firmware (") + kOvmfCode +
                         " from the Debian package ovmf), which is not installed on this host");
  }
  if (!v1::RunStrategy_IsValid(spec.run_strategy())) {
    return InvalidArgument("spec.run_strategy: unknown value " +
                           std::to_string(spec.run_strategy()));
  }
  if (!ValidMachineType(spec.machine_type())) {
    return InvalidArgument("spec.machine_type: \"" + spec.machine_type() +
                           "\" is not supported (expected q35, pc, pc-q35-* or pc-i440fx-*; "
                           "microvm hangs Linux guests under TCG)");
  }
  const auto& accel = spec.accelerator();
  if (!accel.empty() && accel != "auto" && accel != "kvm" && accel != "tcg") {
    return InvalidArgument("spec.accelerator: \"" + accel +
                           "\" is not an accelerator (expected auto, kvm or tcg)");
  }
  if (spec.has_kernel_boot()) {
    const auto& kb = spec.kernel_boot();
    HCI_RETURN_NOT_OK(CheckHostFile(kb.kernel_path(), "spec.kernel_boot.kernel_path", true));
    HCI_RETURN_NOT_OK(CheckHostFile(kb.initrd_path(), "spec.kernel_boot.initrd_path", false));
    if (kb.cmdline().find('\0') != std::string::npos) {
      return InvalidArgument("spec.kernel_boot.cmdline: contains a NUL byte");
    }
  }
  if (spec.nics_size() > 0) {
    return Unimplemented(
        "spec.nics: the kvm compute backend cannot connect NICs yet (it needs the network "
        "backend's Open vSwitch ports, a later feature); remove the NICs");
  }
  if (spec.has_cloud_init()) {
    return Unimplemented(
        "spec.cloud_init: the kvm compute backend does not build NoCloud seed volumes yet; "
        "attach a prepared cidata volume as a disk instead");
  }
  if (!spec.has_kernel_boot() && spec.disks_size() == 0) {
    return InvalidArgument(
        "spec.kernel_boot: the VM has nothing to boot (give a kernel or at least one disk)");
  }
  std::set<std::string> names, volumes;
  std::map<std::uint32_t, int> boot_orders;
  int sata = 0;
  for (int i = 0; i < spec.disks_size(); ++i) {
    const auto& d = spec.disks(i);
    std::string field = "spec.disks[" + std::to_string(i) + "]";
    HCI_RETURN_NOT_OK(ValidateName(field + ".name", d.name()));
    HCI_RETURN_NOT_OK(ValidateName(field + ".volume", d.volume()));
    if (!names.insert(d.name()).second) {
      return InvalidArgument(field + ".name: " + Quote(d.name()) + " is used by another disk");
    }
    if (!volumes.insert(d.volume()).second) {
      return InvalidArgument(field + ".volume: volume " + Quote(d.volume()) +
                             " is already used by another disk of this VM");
    }
    if (!v1::DiskBus_IsValid(d.bus())) {
      return InvalidArgument(field + ".bus: unknown value " + std::to_string(d.bus()));
    }
    if (d.bus() == v1::DISK_BUS_SATA) {
      if (++sata > kMaxSataDisks) {
        return InvalidArgument(field + ".bus: more than " + std::to_string(kMaxSataDisks) +
                               " SATA disks (the AHCI controller has " +
                               std::to_string(kMaxSataDisks) + " ports)");
      }
      if (d.read_only()) {
        return InvalidArgument(field +
                               ".read_only: a SATA disk cannot be read-only (use virtio or scsi)");
      }
    }
    if (d.boot_order() != 0) {
      auto [it, inserted] = boot_orders.emplace(d.boot_order(), i);
      if (!inserted) {
        return InvalidArgument(field + ".boot_order: " + std::to_string(d.boot_order()) +
                               " is already used by spec.disks[" + std::to_string(it->second) +
                               "]");
      }
    }
  }
  return Status();
}

Result<std::vector<std::string>> BuildQemuArgv(const v1::VirtualMachineSpec& spec,
                                               const std::vector<v1::AttachInfo>& attach,
                                               const LaunchConfig& launch) {
  if (attach.size() != static_cast<std::size_t>(spec.disks_size())) {
    return InvalidArgument("spec.disks: " + std::to_string(spec.disks_size()) + " disks but " +
                           std::to_string(attach.size()) + " attachments");
  }
  const VmPaths& p = launch.paths;
  std::string machine = launch.machine_type.empty() ? "q35" : launch.machine_type;
  bool uefi = spec.firmware() == v1::FIRMWARE_UEFI;
  if (uefi) machine += ",pflash0=ovmf-code,pflash1=ovmf-vars";
  std::vector<std::string> argv = {
      launch.qemu_binary,
      "-name",
      "guest=" + EscapeComma(launch.vm_name) + ",debug-threads=on",
      "-machine",
      machine,
      "-accel",
      launch.accel,
      "-cpu",
      launch.accel == "kvm" ? "host" : "max",
      "-m",
      std::to_string(spec.memory_mib()),
      "-smp",
      std::to_string(spec.vcpus()),
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-vga",
      "none",
      "-monitor",
      "none",
      "-chardev",
      "socket,id=serial0,path=" + EscapeComma(p.console_socket) +
          ",server=on,wait=off,logfile=" + EscapeComma(p.serial_log) + ",logappend=on",
      "-serial",
      "chardev:serial0",
      "-qmp",
      "unix:" + EscapeComma(p.qmp_socket) + ",server=on,wait=off",
      "-pidfile",
      p.qemu_pid,
      // A guest power-off or panic leaves QEMU stopped (state "shutdown" / "guest-panicked")
      // instead of exiting, so the reason survives until a Host reads it, even a Host started
      // later; the plugin then quits QEMU itself.
      "-no-shutdown",
      "-action",
      "panic=pause",
      "-device",
      "pvpanic",
  };
  if (uefi) {
    argv.insert(
        argv.end(),
        {"-blockdev",
         R"({"driver":"file","filename":)" +
             boost::json::serialize(boost::json::value(boost::json::string(launch.ovmf_code))) +
             R"(,"node-name":"ovmf-code","read-only":true})",
         "-blockdev",
         R"({"driver":"file","filename":)" +
             boost::json::serialize(boost::json::value(boost::json::string(p.uefi_vars))) +
             R"(,"node-name":"ovmf-vars"})"});
  }
  if (spec.has_kernel_boot()) {
    const auto& kb = spec.kernel_boot();
    argv.insert(argv.end(), {"-kernel", kb.kernel_path()});
    if (!kb.initrd_path().empty()) argv.insert(argv.end(), {"-initrd", kb.initrd_path()});
    if (!kb.cmdline().empty()) argv.insert(argv.end(), {"-append", kb.cmdline()});
  }
  bool scsi = false, sata = false;
  for (const auto& d : spec.disks()) {
    scsi = scsi || d.bus() == v1::DISK_BUS_SCSI;
    sata = sata || d.bus() == v1::DISK_BUS_SATA;
  }
  if (scsi) argv.insert(argv.end(), {"-device", "virtio-scsi-pci,id=scsi0"});
  if (sata) argv.insert(argv.end(), {"-device", "ahci,id=sata0"});
  int sata_port = 0;
  for (int i = 0; i < spec.disks_size(); ++i) {
    const auto& d = spec.disks(i);
    std::string field = "spec.disks[" + std::to_string(i) + "]";
    const auto& info = attach[static_cast<std::size_t>(i)];
    if (!info.has_blockdev() || info.blockdev().fields().empty()) {
      return InvalidArgument(field +
                             ".volume: the storage backend gave no blockdev options for "
                             "volume " +
                             Quote(d.volume()));
    }
    google::protobuf::Value blockdev;
    *blockdev.mutable_struct_value() = info.blockdev();
    auto& fields = *blockdev.mutable_struct_value()->mutable_fields();
    std::string node = NodeNameFor(d.name());
    if (d.read_only()) fields["read-only"].set_bool_value(true);
    auto driver = fields.find("driver");
    if (driver != fields.end() && driver->second.string_value() == "nbd") {
      // QEMU's NBD client learns the export's size when it connects and cannot grow the node
      // ("Cannot grow NBD nodes"); a raw node on top can take a new connection (ResizeDisk).
      const std::string protocol = ProtocolNodeNameFor(d.name(), 0);
      fields["node-name"].set_string_value(protocol);
      argv.insert(argv.end(), {"-blockdev", ValueToJson(blockdev)});
      google::protobuf::Value raw;
      auto& raw_fields = *raw.mutable_struct_value()->mutable_fields();
      raw_fields["driver"].set_string_value("raw");
      raw_fields["file"].set_string_value(protocol);
      raw_fields["node-name"].set_string_value(node);
      if (d.read_only()) raw_fields["read-only"].set_bool_value(true);
      argv.insert(argv.end(), {"-blockdev", ValueToJson(raw)});
    } else {
      fields["node-name"].set_string_value(node);
      argv.insert(argv.end(), {"-blockdev", ValueToJson(blockdev)});
    }
    std::string device;
    switch (d.bus()) {
      case v1::DISK_BUS_SCSI:
        device = "scsi-hd,bus=scsi0.0";
        break;
      case v1::DISK_BUS_SATA:
        device = "ide-hd,bus=sata0." + std::to_string(sata_port++);
        break;
      default:
        device = "virtio-blk-pci";
        break;
    }
    device += ",drive=" + node + ",id=" + node;
    if (d.boot_order() != 0) device += ",bootindex=" + std::to_string(d.boot_order());
    argv.insert(argv.end(), {"-device", device});
  }
  argv.insert(argv.end(), {"-nic", "none"});
  return argv;
}

}  // namespace hci::kvm
