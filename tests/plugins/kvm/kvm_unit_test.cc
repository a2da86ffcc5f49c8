// Unit tests of the kvm plugin's pure parts: options, spec validation, the QEMU argv builder,
// metrics parsing and rendering, the accelerator checks and the console log reader.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "hci/hci.h"
#include "kvm_internal.h"
#include "kvm_test_env.h"

namespace hci::kvm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/hci-kvm-unit-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name, const std::string& content = "x") const {
    std::string p = path_ + "/" + name;
    std::ofstream(p) << content;
    return p;
  }

 private:
  std::string path_;
};

google::protobuf::Struct Json(const std::string& json) {
  google::protobuf::Struct s;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &s).ok()) << json;
  return s;
}

// The index of `arg` in `argv`, or -1.
int IndexOf(const std::vector<std::string>& argv, const std::string& arg) {
  auto it = std::find(argv.begin(), argv.end(), arg);
  return it == argv.end() ? -1 : static_cast<int>(it - argv.begin());
}

// The values following each occurrence of `option`.
std::vector<std::string> ValuesOf(const std::vector<std::string>& argv, const std::string& option) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == option) out.push_back(argv[i + 1]);
  }
  return out;
}

v1::AttachInfo RawAttach(const std::string& file) {
  v1::AttachInfo info;
  *info.mutable_blockdev() =
      Json(R"({"driver":"raw","file":{"driver":"file","filename":")" + file + R"("}})");
  info.set_path(file);
  return info;
}

struct Fixture {
  TempDir tmp;
  std::string kernel = tmp.File("vmlinux");
  std::string initrd = tmp.File("initrd");

  v1::VirtualMachineSpec Spec() const {
    v1::VirtualMachineSpec spec;
    spec.set_vcpus(2);
    spec.set_memory_mib(256);
    auto* kb = spec.mutable_kernel_boot();
    kb->set_kernel_path(kernel);
    kb->set_initrd_path(initrd);
    kb->set_cmdline("console=ttyS0 quiet");
    auto* disk = spec.add_disks();
    disk->set_name("root");
    disk->set_volume("vol-1");
    disk->set_boot_order(1);
    return spec;
  }

  LaunchConfig Launch(const std::string& accel = "tcg") const {
    LaunchConfig launch;
    launch.qemu_binary = "/usr/bin/qemu-system-x86_64";
    launch.vm_name = "vm-1";
    launch.machine_type = "";
    launch.accel = accel;
    launch.paths = VmPaths::For("/state/plugins/kvm/vms", "vm-1");
    return launch;
  }
};

// ---------------------------------------------------------------------------------------------
// argv builder

TEST(KvmArgvTest, BuildsTheDocumentedCommandLine) {
  Fixture f;
  auto argv = BuildQemuArgv(f.Spec(), {RawAttach("/vols/vol-1.raw")}, f.Launch());
  ASSERT_TRUE(argv.ok()) << argv.status();
  const auto& a = *argv;
  EXPECT_EQ(a[0], "/usr/bin/qemu-system-x86_64");
  EXPECT_THAT(ValuesOf(a, "-name"), ElementsAre("guest=vm-1,debug-threads=on"));
  EXPECT_THAT(ValuesOf(a, "-machine"), ElementsAre("q35"));
  EXPECT_THAT(ValuesOf(a, "-accel"), ElementsAre("tcg"));
  EXPECT_THAT(ValuesOf(a, "-cpu"), ElementsAre("max"));
  EXPECT_THAT(ValuesOf(a, "-m"), ElementsAre("256"));
  EXPECT_THAT(ValuesOf(a, "-smp"), ElementsAre("2"));
  for (const char* flag : {"-nodefaults", "-no-user-config", "-no-shutdown"}) {
    EXPECT_GE(IndexOf(a, flag), 0) << flag;
  }
  EXPECT_THAT(ValuesOf(a, "-display"), ElementsAre("none"));
  EXPECT_THAT(ValuesOf(a, "-vga"), ElementsAre("none"));
  EXPECT_THAT(ValuesOf(a, "-monitor"), ElementsAre("none"));
  EXPECT_THAT(ValuesOf(a, "-action"), ElementsAre("panic=pause"));
  const std::string dir = "/state/plugins/kvm/vms/vm-1";
  EXPECT_THAT(ValuesOf(a, "-chardev"), ElementsAre("socket,id=serial0,path=" + dir +
                                                   "/console.sock,server=on,wait=off,"
                                                   "logfile=" +
                                                   dir + "/serial.log,logappend=on"));
  EXPECT_THAT(ValuesOf(a, "-serial"), ElementsAre("chardev:serial0"));
  EXPECT_THAT(ValuesOf(a, "-qmp"), ElementsAre("unix:" + dir + "/qmp.sock,server=on,wait=off"));
  EXPECT_THAT(ValuesOf(a, "-pidfile"), ElementsAre(dir + "/qemu.pid"));
  EXPECT_THAT(ValuesOf(a, "-kernel"), ElementsAre(f.kernel));
  EXPECT_THAT(ValuesOf(a, "-initrd"), ElementsAre(f.initrd));
  EXPECT_THAT(ValuesOf(a, "-append"), ElementsAre("console=ttyS0 quiet"));
  EXPECT_THAT(
      ValuesOf(a, "-blockdev"),
      ElementsAre(R"({"driver":"raw","file":{"driver":"file","filename":"/vols/vol-1.raw"},)"
                  R"("node-name":"disk-root"})"));
  EXPECT_THAT(ValuesOf(a, "-device"),
              ElementsAre("pvpanic", "virtio-blk-pci,drive=disk-root,id=disk-root,bootindex=1"));
  EXPECT_THAT(ValuesOf(a, "-nic"), ElementsAre("none"));
  // The blockdev is defined before the device that uses it.
  EXPECT_LT(IndexOf(a, ValuesOf(a, "-blockdev")[0]),
            IndexOf(a, "virtio-blk-pci,drive=disk-root,id=disk-root,bootindex=1"));
}

TEST(KvmArgvTest, KvmUsesTheHostCpuAndPcMachine) {
  Fixture f;
  auto launch = f.Launch("kvm");
  launch.machine_type = "pc";
  auto argv = BuildQemuArgv(f.Spec(), {RawAttach("/v.raw")}, launch);
  ASSERT_TRUE(argv.ok()) << argv.status();
  EXPECT_THAT(ValuesOf(*argv, "-accel"), ElementsAre("kvm"));
  EXPECT_THAT(ValuesOf(*argv, "-cpu"), ElementsAre("host"));
  EXPECT_THAT(ValuesOf(*argv, "-machine"), ElementsAre("pc"));
}

TEST(KvmArgvTest, BusesReadOnlyAndNoBootOrder) {
  Fixture f;
  auto spec = f.Spec();
  spec.clear_kernel_boot();
  spec.mutable_disks(0)->set_bus(v1::DISK_BUS_SCSI);
  auto* data = spec.add_disks();
  data->set_name("data");
  data->set_volume("vol-2");
  data->set_bus(v1::DISK_BUS_SATA);
  auto* ro = spec.add_disks();
  ro->set_name("ro");
  ro->set_volume("vol-3");
  ro->set_read_only(true);
  auto argv = BuildQemuArgv(spec, {RawAttach("/a"), RawAttach("/b"), RawAttach("/c")}, f.Launch());
  ASSERT_TRUE(argv.ok()) << argv.status();
  EXPECT_LT(IndexOf(*argv, "-kernel"), 0);
  EXPECT_THAT(ValuesOf(*argv, "-device"),
              ElementsAre("pvpanic", "virtio-scsi-pci,id=scsi0", "ahci,id=sata0",
                          "scsi-hd,bus=scsi0.0,drive=disk-root,id=disk-root,bootindex=1",
                          "ide-hd,bus=sata0.0,drive=disk-data,id=disk-data",
                          "virtio-blk-pci,drive=disk-ro,id=disk-ro"));
  auto blockdevs = ValuesOf(*argv, "-blockdev");
  ASSERT_EQ(blockdevs.size(), 3u);
  EXPECT_THAT(blockdevs[2], HasSubstr(R"("node-name":"disk-ro")"));
  EXPECT_THAT(blockdevs[2], HasSubstr(R"("read-only":true)"));
  EXPECT_THAT(blockdevs[0], ::testing::Not(HasSubstr("read-only")));
}

TEST(KvmArgvTest, AnyBlockdevIsAcceptedAndIntegersStayIntegers) {
  Fixture f;
  v1::AttachInfo info;
  *info.mutable_blockdev() = Json(
      R"({"driver":"qcow2","file":{"driver":"file","filename":"/x.qcow2"},"cache":{"direct":true},)"
      R"("node-name":"theirs","size":10737418240})");
  auto argv = BuildQemuArgv(f.Spec(), {info}, f.Launch());
  ASSERT_TRUE(argv.ok()) << argv.status();
  auto blockdev = ValuesOf(*argv, "-blockdev").at(0);
  // Our node name replaces theirs: the device refers to it.
  EXPECT_THAT(blockdev, HasSubstr(R"("node-name":"disk-root")"));
  EXPECT_THAT(blockdev, ::testing::Not(HasSubstr("theirs")));
  EXPECT_THAT(blockdev, HasSubstr(R"("size":10737418240)"));
  EXPECT_THAT(blockdev, HasSubstr(R"("cache":{"direct":true})"));
}

// An NBD export gets a raw node on top (ResizeDisk swaps the NBD node under it); the device
// uses the raw node, which carries the disk's node name.
TEST(KvmArgvTest, AnNbdExportIsARawNodeOverAnNbdNode) {
  Fixture f;
  auto spec = f.Spec();
  spec.mutable_disks(0)->set_read_only(true);
  v1::AttachInfo info;
  *info.mutable_blockdev() =
      Json(R"({"driver":"nbd","server":{"type":"unix","path":"/run/nbd.sock"}})");
  auto argv = BuildQemuArgv(spec, {info}, f.Launch());
  ASSERT_TRUE(argv.ok()) << argv.status();
  auto blockdevs = ValuesOf(*argv, "-blockdev");
  ASSERT_EQ(blockdevs.size(), 2u);
  EXPECT_EQ(blockdevs[0], R"({"driver":"nbd","node-name":"nbd0-root","read-only":true,)"
                          R"("server":{"path":"/run/nbd.sock","type":"unix"}})");
  EXPECT_EQ(blockdevs[1],
            R"({"driver":"raw","file":"nbd0-root","node-name":"disk-root","read-only":true})");
  EXPECT_LT(IndexOf(*argv, blockdevs[1]), IndexOf(*argv,
                                                  "virtio-blk-pci,drive=disk-root,"
                                                  "id=disk-root,bootindex=1"));
  EXPECT_EQ(ProtocolNodeNameFor("root", 1), "nbd1-root");
  const std::string long_name(40, 'a');
  EXPECT_LE(ProtocolNodeNameFor(long_name, 0).size(), 31u);
  EXPECT_NE(ProtocolNodeNameFor(long_name, 0), ProtocolNodeNameFor(long_name, 1));
}

TEST(KvmArgvTest, CommasInPathsAreEscaped) {
  Fixture f;
  auto launch = f.Launch();
  launch.paths = VmPaths::For("/state,odd/vms", "vm-1");
  auto argv = BuildQemuArgv(f.Spec(), {RawAttach("/v")}, launch);
  ASSERT_TRUE(argv.ok()) << argv.status();
  EXPECT_THAT(ValuesOf(*argv, "-qmp").at(0), StartsWith("unix:/state,,odd/vms/vm-1/qmp.sock,"));
  EXPECT_THAT(ValuesOf(*argv, "-chardev").at(0), HasSubstr("path=/state,,odd/vms/"));
  EXPECT_THAT(CmdlineMarker(launch.paths), StartsWith("unix:/state,,odd/vms/vm-1/qmp.sock,"));
}

TEST(KvmArgvTest, UefiAddsPflashFirmware) {
  Fixture f;
  auto spec = f.Spec();
  spec.set_firmware(v1::FIRMWARE_UEFI);
  auto argv = BuildQemuArgv(spec, {RawAttach("/v")}, f.Launch());
  ASSERT_TRUE(argv.ok()) << argv.status();
  EXPECT_THAT(ValuesOf(*argv, "-machine"), ElementsAre("q35,pflash0=ovmf-code,pflash1=ovmf-vars"));
  auto blockdevs = ValuesOf(*argv, "-blockdev");
  ASSERT_EQ(blockdevs.size(), 3u);
  EXPECT_THAT(blockdevs[0], HasSubstr(kOvmfCode));
  EXPECT_THAT(blockdevs[0], HasSubstr(R"("read-only":true)"));
  EXPECT_THAT(blockdevs[1], HasSubstr("/vm-1/uefi-vars.fd"));
}

TEST(KvmArgvTest, MissingBlockdevOrAttachmentCountIsRefused) {
  Fixture f;
  auto argv = BuildQemuArgv(f.Spec(), {v1::AttachInfo()}, f.Launch());
  ASSERT_EQ(argv.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(argv.status().message(), StartsWith("spec.disks[0].volume:"));
  argv = BuildQemuArgv(f.Spec(), {}, f.Launch());
  EXPECT_EQ(argv.status().code(), StatusCode::kInvalidArgument);
}

TEST(KvmArgvTest, NodeNamesFitQemusLimitAndStayDistinct) {
  EXPECT_EQ(NodeNameFor("root"), "disk-root");
  std::string a(60, 'a'), b = std::string(59, 'a') + "b";
  EXPECT_LE(NodeNameFor(a).size(), 31u);
  EXPECT_LE(NodeNameFor(b).size(), 31u);
  EXPECT_NE(NodeNameFor(a), NodeNameFor(b));
  EXPECT_THAT(NodeNameFor(a), StartsWith("disk-aaaa"));
  // 26 characters still fit as they are.
  EXPECT_EQ(NodeNameFor(std::string(26, 'x')), "disk-" + std::string(26, 'x'));
}

// ---------------------------------------------------------------------------------------------
// Spec validation

TEST(KvmValidateTest, AcceptsAGoodSpec) {
  Fixture f;
  EXPECT_TRUE(ValidateSpec(f.Spec(), false).ok()) << ValidateSpec(f.Spec(), false);
}

TEST(KvmValidateTest, NamesTheBadField) {
  Fixture f;
  struct Case {
    std::string name;
    std::function<void(v1::VirtualMachineSpec&)> mutate;
    StatusCode code;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"zero vcpus", [](auto& s) { s.set_vcpus(0); }, StatusCode::kInvalidArgument, "spec.vcpus"},
      {"256 vcpus", [](auto& s) { s.set_vcpus(256); }, StatusCode::kInvalidArgument, "spec.vcpus"},
      {"8 MiB", [](auto& s) { s.set_memory_mib(8); }, StatusCode::kInvalidArgument,
       "spec.memory_mib"},
      {"relative kernel", [](auto& s) { s.mutable_kernel_boot()->set_kernel_path("vmlinux"); },
       StatusCode::kInvalidArgument, "spec.kernel_boot.kernel_path"},
      {"missing kernel",
       [](auto& s) { s.mutable_kernel_boot()->set_kernel_path("/nonexistent/vmlinux"); },
       StatusCode::kInvalidArgument, "spec.kernel_boot.kernel_path"},
      {"kernel is a directory", [](auto& s) { s.mutable_kernel_boot()->set_kernel_path("/tmp"); },
       StatusCode::kInvalidArgument, "spec.kernel_boot.kernel_path"},
      {"no kernel path", [](auto& s) { s.mutable_kernel_boot()->clear_kernel_path(); },
       StatusCode::kInvalidArgument, "spec.kernel_boot.kernel_path"},
      {"missing initrd",
       [](auto& s) { s.mutable_kernel_boot()->set_initrd_path("/nonexistent/initrd"); },
       StatusCode::kInvalidArgument, "spec.kernel_boot.initrd_path"},
      {"microvm", [](auto& s) { s.set_machine_type("microvm"); }, StatusCode::kInvalidArgument,
       "spec.machine_type"},
      {"accel", [](auto& s) { s.set_accelerator("hvf"); }, StatusCode::kInvalidArgument,
       "spec.accelerator"},
      {"uefi without ovmf", [](auto& s) { s.set_firmware(v1::FIRMWARE_UEFI); },
       StatusCode::kUnimplemented, "spec.firmware"},
      {"nics", [](auto& s) { s.add_nics()->set_name("eth0"); }, StatusCode::kUnimplemented,
       "spec.nics"},
      {"cloud-init", [](auto& s) { s.mutable_cloud_init()->set_user_data("#cloud-config"); },
       StatusCode::kUnimplemented, "spec.cloud_init"},
      {"nothing to boot",
       [](auto& s) {
         s.clear_kernel_boot();
         s.clear_disks();
       },
       StatusCode::kInvalidArgument, "spec.kernel_boot"},
      {"duplicate disk name",
       [](auto& s) {
         auto* d = s.add_disks();
         d->set_name("root");
         d->set_volume("vol-2");
       },
       StatusCode::kInvalidArgument, "spec.disks[1].name"},
      {"duplicate volume",
       [](auto& s) {
         auto* d = s.add_disks();
         d->set_name("data");
         d->set_volume("vol-1");
       },
       StatusCode::kInvalidArgument, "spec.disks[1].volume"},
      {"duplicate boot order",
       [](auto& s) {
         auto* d = s.add_disks();
         d->set_name("data");
         d->set_volume("vol-2");
         d->set_boot_order(1);
       },
       StatusCode::kInvalidArgument, "spec.disks[1].boot_order"},
      {"bad disk name", [](auto& s) { s.mutable_disks(0)->set_name("Root,x"); },
       StatusCode::kInvalidArgument, "spec.disks[0].name"},
      {"read-only sata",
       [](auto& s) {
         s.mutable_disks(0)->set_bus(v1::DISK_BUS_SATA);
         s.mutable_disks(0)->set_read_only(true);
       },
       StatusCode::kInvalidArgument, "spec.disks[0].read_only"},
  };
  for (const auto& c : cases) {
    auto spec = f.Spec();
    c.mutate(spec);
    Status s = ValidateSpec(spec, /*uefi_available=*/false);
    EXPECT_EQ(s.code(), c.code) << c.name << ": " << s;
    EXPECT_THAT(s.message(), StartsWith(c.field + ":")) << c.name;
  }
  auto spec = f.Spec();
  spec.set_firmware(v1::FIRMWARE_UEFI);
  EXPECT_TRUE(ValidateSpec(spec, /*uefi_available=*/true).ok());
}

TEST(KvmValidateTest, SevenSataDisksAreTooMany) {
  Fixture f;
  auto spec = f.Spec();
  spec.clear_disks();
  for (int i = 0; i < 7; ++i) {
    auto* d = spec.add_disks();
    d->set_name("d" + std::to_string(i));
    d->set_volume("v" + std::to_string(i));
    d->set_bus(v1::DISK_BUS_SATA);
  }
  Status s = ValidateSpec(spec, false);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), StartsWith("spec.disks[6].bus:"));
}

// ---------------------------------------------------------------------------------------------
// Options

TEST(KvmOptionsTest, DefaultsAndOverrides) {
  auto opts = ParseOptions(Json("{}"));
  ASSERT_TRUE(opts.ok());
  EXPECT_EQ(opts->accel, "auto");
  EXPECT_EQ(opts->machine_type, "q35");
  EXPECT_EQ(opts->restart_backoff_initial_ms, 1000u);
  EXPECT_EQ(opts->restart_backoff_max_ms, 60000u);
  EXPECT_EQ(opts->restart_backoff_reset_ms, 300000u);
  EXPECT_EQ(opts->powerdown_retry_ms, 5000u);
  opts = ParseOptions(Json(R"({"accel":"tcg","machine_type":"pc","start_timeout_ms":5000})"));
  ASSERT_TRUE(opts.ok()) << opts.status();
  EXPECT_EQ(opts->accel, "tcg");
  EXPECT_EQ(opts->machine_type, "pc");
  EXPECT_EQ(opts->start_timeout_ms, 5000u);
}

TEST(KvmOptionsTest, BadOptionsNameTheKey) {
  for (auto [json, key] : std::vector<std::pair<std::string, std::string>>{
           {R"({"accel":"fast"})", "accel"},
           {R"({"accel":1})", "accel"},
           {R"({"machine_type":"microvm"})", "machine_type"},
           {R"({"start_timeout_ms":1.5})", "start_timeout_ms"},
           {R"({"restart_backoff_initial_ms":5000,"restart_backoff_max_ms":10})",
            "restart_backoff_max_ms"},
           {R"({"colour":"blue"})", "colour"}}) {
    auto opts = ParseOptions(Json(json));
    EXPECT_EQ(opts.status().code(), StatusCode::kInvalidArgument) << json;
    EXPECT_THAT(opts.status().message(), StartsWith(key + ":")) << json;
  }
}

// ---------------------------------------------------------------------------------------------
// Metrics

TEST(KvmMetricsTest, ParsesProcStatAndStatus) {
  // comm with a space and a parenthesis, as QEMU's "CPU 0/TCG" threads have.
  std::string stat =
      "4242 (CPU 0/TCG) S 1 4242 4242 0 -1 4194624 100 0 0 0 250 50 0 0 20 0 9 0 123 0 0";
  auto seconds = ParseStatCpuSeconds(stat, 100);
  ASSERT_TRUE(seconds.ok()) << seconds.status();
  EXPECT_DOUBLE_EQ(*seconds, 3.0);
  EXPECT_FALSE(ParseStatCpuSeconds("4242 (x) S 1 2", 100).ok());
  EXPECT_FALSE(ParseStatCpuSeconds("garbage", 100).ok());
  auto rss = ParseVmRssBytes("Name:\tqemu\nVmPeak:\t 1 kB\nVmRSS:\t  123456 kB\nThreads: 9\n");
  ASSERT_TRUE(rss.ok()) << rss.status();
  EXPECT_EQ(*rss, 123456u * 1024);
  EXPECT_EQ(ParseVmRssBytes("Name:\tkthreadd\n").status().code(), StatusCode::kNotFound);
}

TEST(KvmMetricsTest, RendersKubevirtNames) {
  std::string text =
      RenderVmMetrics("vm-1", "node-a", {1.5, 0.25}, 4096, {DriveStats{"root", 10, 20, 3, 4}});
  EXPECT_THAT(text, HasSubstr("# TYPE kubevirt_vmi_vcpu_seconds_total counter\n"));
  EXPECT_THAT(text, HasSubstr("kubevirt_vmi_vcpu_seconds_total{id=\"0\",name=\"vm-1\","
                              "node=\"node-a\",state=\"running\"} 1.500\n"));
  EXPECT_THAT(text, HasSubstr("kubevirt_vmi_vcpu_seconds_total{id=\"1\","));
  EXPECT_THAT(text, HasSubstr("kubevirt_vmi_memory_resident_bytes{name=\"vm-1\","
                              "node=\"node-a\"} 4096\n"));
  EXPECT_THAT(text, HasSubstr("kubevirt_vmi_storage_read_traffic_bytes_total{drive=\"root\","
                              "name=\"vm-1\",node=\"node-a\"} 10\n"));
  EXPECT_THAT(text, HasSubstr("kubevirt_vmi_storage_write_traffic_bytes_total{drive=\"root\","
                              "name=\"vm-1\",node=\"node-a\"} 20\n"));
  EXPECT_THAT(text, HasSubstr("kubevirt_vmi_storage_iops_read_total{drive=\"root\","
                              "name=\"vm-1\",node=\"node-a\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("kubevirt_vmi_storage_iops_write_total{drive=\"root\","
                              "name=\"vm-1\",node=\"node-a\"} 4\n"));
}

// ---------------------------------------------------------------------------------------------
// Accelerator

TEST(KvmAccelTest, CpuinfoFlags) {
  EXPECT_TRUE(CpuinfoHasVirtualization("processor\t: 0\nflags\t\t: fpu vme vmx sse\n"));
  EXPECT_TRUE(CpuinfoHasVirtualization("flags\t\t: fpu svm\n"));
  EXPECT_FALSE(CpuinfoHasVirtualization("flags\t\t: fpu vmxx svm2 sse\n"));
  EXPECT_FALSE(CpuinfoHasVirtualization("vmx\nmodel name\t: vmx svm\n"));
}

// The probe guest runs under KVM exactly when /dev/kvm is usable: on these machines a software
// /dev/kvm runs it (it is `auto` that must then still refuse KVM, because of the CPU flags).
TEST(KvmAccelTest, ProbeGuestRunsWhenDevKvmOpens) {
  TempDir tmp;
  bool dev_kvm = ::access("/dev/kvm", R_OK | W_OK) == 0;
  Status probe = ProbeKvm("qemu-system-x86_64", tmp.path(), std::chrono::seconds(60));
  if (dev_kvm) {
    EXPECT_TRUE(probe.ok()) << probe;
  } else {
    EXPECT_EQ(probe.code(), StatusCode::kUnavailable) << probe;
  }
  // The probe image is removed afterwards.
  EXPECT_FALSE(std::filesystem::exists(tmp.path() + "/kvm-probe.bin"));
}

TEST(KvmAccelTest, AutoExplainsItsChoice) {
  TempDir tmp;
  auto choice = ChooseAutoAccel("qemu-system-x86_64", tmp.path(), std::chrono::seconds(60));
  auto cpuinfo = ReadFile("/proc/cpuinfo");
  ASSERT_TRUE(cpuinfo.ok());
  if (!CpuinfoHasVirtualization(*cpuinfo)) {
    EXPECT_EQ(choice.accel, "tcg");
    EXPECT_THAT(choice.reason, HasSubstr("neither vmx nor svm"));
  }
  EXPECT_THAT(choice.reason, StartsWith("auto: "));
}

// ---------------------------------------------------------------------------------------------
// Files and console log

TEST(KvmFilesTest, ConsoleLogReadsFromOffsets) {
  TempDir tmp;
  std::string log = tmp.File("serial.log", "hello\nworld\n");
  auto out = ReadConsoleLog(log, 0, 0);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->data(), "hello\nworld\n");
  EXPECT_EQ(out->next_offset(), 12u);
  out = ReadConsoleLog(log, 6, 3);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->data(), "wor");
  EXPECT_EQ(out->next_offset(), 9u);
  out = ReadConsoleLog(log, 12, 0);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->data(), "");
  EXPECT_EQ(ReadConsoleLog(log, 13, 0).status().code(), StatusCode::kOutOfRange);
  out = ReadConsoleLog(tmp.path() + "/missing.log", 0, 0);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->next_offset(), 0u);
}

TEST(KvmFilesTest, AtomicWriteAndLastLines) {
  TempDir tmp;
  std::string p = tmp.path() + "/f";
  ASSERT_TRUE(WriteFileAtomically(p, "one").ok());
  ASSERT_TRUE(WriteFileAtomically(p, "two").ok());
  EXPECT_EQ(*ReadFile(p), "two");
  EXPECT_FALSE(std::filesystem::exists(p + ".tmp"));
  EXPECT_EQ(ReadFile(tmp.path() + "/none").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(LastLines("a\n\nb\r\nc\nd\n", 3), "b; c; d");
  EXPECT_EQ(LastLines("", 3), "");
}

}  // namespace
}  // namespace hci::kvm
