#include "hci/yaml.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hci/v1/backup.pb.h"
#include "hci/v1/compute.pb.h"
#include "hci/v1/event.pb.h"
#include "hci/v1/host.pb.h"
#include "hci/v1/image.pb.h"
#include "hci/v1/network.pb.h"
#include "hci/v1/operation.pb.h"
#include "hci/v1/storage.pb.h"
#include "yaml_kitchen_sink.h"

namespace hci {
namespace {

namespace pb = google::protobuf;
namespace fs = std::filesystem;

// Equality that also holds for NaN == NaN; on failure `diff` says where.
bool SameMessage(const pb::Message& a, const pb::Message& b, std::string* diff) {
  pb::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  pb::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  differencer.ReportDifferencesToString(diff);
  return differencer.Compare(a, b);
}

#define EXPECT_SAME_MESSAGE(a, b)                        \
  do {                                                   \
    std::string diff_;                                   \
    EXPECT_TRUE(SameMessage((a), (b), &diff_)) << diff_; \
  } while (false)

template <typename M>
M FromText(std::string_view text_format) {
  M m;
  EXPECT_TRUE(pb::TextFormat::ParseFromString(std::string(text_format), &m)) << text_format;
  return m;
}

template <typename M>
M ParseOk(std::string_view yaml) {
  M m;
  const Status s = ParseYaml(yaml, &m);
  EXPECT_TRUE(s.ok()) << s << "\n" << yaml;
  return m;
}

// ToYaml's text; the message must be writable.
std::string YamlOf(const pb::Message& m) {
  const Result<std::string> yaml = ToYaml(m);
  EXPECT_TRUE(yaml.ok()) << yaml.status() << "\n" << m.DebugString();
  return yaml.ok() ? *yaml : std::string();
}

// The error of parsing `yaml` into an M; the message must be left empty.
template <typename M>
Status ParseError(std::string_view yaml) {
  M m;
  const Status s = ParseYaml(yaml, &m);
  EXPECT_FALSE(s.ok()) << yaml;
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(m.ByteSizeLong(), 0u) << m.DebugString();
  return s;
}

std::unique_ptr<pb::Message> NewKitchenSink() {
  return std::unique_ptr<pb::Message>(testing::KitchenSinkPrototype().New());
}

std::unique_ptr<pb::Message> KitchenFromText(std::string_view text_format) {
  auto m = NewKitchenSink();
  EXPECT_TRUE(pb::TextFormat::ParseFromString(std::string(text_format), m.get())) << text_format;
  return m;
}

std::unique_ptr<pb::Message> KitchenFromYaml(std::string_view yaml) {
  auto m = NewKitchenSink();
  const Status s = ParseYaml(yaml, m.get());
  EXPECT_TRUE(s.ok()) << s << "\n" << yaml;
  return m;
}

Status KitchenError(std::string_view yaml) {
  auto m = NewKitchenSink();
  const Status s = ParseYaml(yaml, m.get());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s << "\n" << yaml;
  EXPECT_EQ(m->ByteSizeLong(), 0u);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Whole documents.

constexpr char kHostConfigYaml[] = R"(# libhci host configuration
nodeName: node-1
state_dir: /var/lib/hci
pluginDirs:
  - /usr/lib/hci/plugins
  - /opt/hci/plugins
logLevel: debug
backends:
  compute:
    plugin: kvm
    options:
      accel: auto
      qemu: /usr/bin/qemu-system-x86_64
      maxVms: 16
      tcgFallback: true
      cpuModels: [host, qemu64]
      extra: ~
      port: "5900"
      ratio: -0.25
      nested: {a: {b: [1, two, {c: null}]}}
  storage:
    plugin: replicated
    options:
      replicas: 3
      dataDir: /var/lib/hci/volumes
  network:
    plugin: ovs
  image:
    plugin: local
  backup:
    plugin: nfs
    options: {url: "nfs://127.0.0.1/export", version: 4.1}
)";

TEST(YamlTest, LoadsFullHostConfig) {
  const auto config = ParseOk<v1::HostConfig>(kHostConfigYaml);
  const auto expected = FromText<v1::HostConfig>(R"pb(
    node_name: "node-1"
    state_dir: "/var/lib/hci"
    plugin_dirs: [ "/usr/lib/hci/plugins", "/opt/hci/plugins" ]
    log_level: LOG_LEVEL_DEBUG
    backends {
      compute {
        plugin: "kvm"
        options {
          fields {
            key: "accel"
            value { string_value: "auto" }
          }
          fields {
            key: "qemu"
            value { string_value: "/usr/bin/qemu-system-x86_64" }
          }
          fields {
            key: "maxVms"
            value { number_value: 16 }
          }
          fields {
            key: "tcgFallback"
            value { bool_value: true }
          }
          fields {
            key: "cpuModels"
            value {
              list_value {
                values { string_value: "host" }
                values { string_value: "qemu64" }
              }
            }
          }
          fields {
            key: "extra"
            value { null_value: NULL_VALUE }
          }
          fields {
            key: "port"
            value { string_value: "5900" }
          }
          fields {
            key: "ratio"
            value { number_value: -0.25 }
          }
          fields {
            key: "nested"
            value {
              struct_value {
                fields {
                  key: "a"
                  value {
                    struct_value {
                      fields {
                        key: "b"
                        value {
                          list_value {
                            values { number_value: 1 }
                            values { string_value: "two" }
                            values {
                              struct_value {
                                fields {
                                  key: "c"
                                  value { null_value: NULL_VALUE }
                                }
                              }
                            }
                          }
                        }
                      }
                    }
                  }
                }
              }
            }
          }
        }
      }
      storage {
        plugin: "replicated"
        options {
          fields {
            key: "replicas"
            value { number_value: 3 }
          }
          fields {
            key: "dataDir"
            value { string_value: "/var/lib/hci/volumes" }
          }
        }
      }
      network { plugin: "ovs" }
      image { plugin: "local" }
      backup {
        plugin: "nfs"
        options {
          fields {
            key: "url"
            value { string_value: "nfs://127.0.0.1/export" }
          }
          fields {
            key: "version"
            value { number_value: 4.1 }
          }
        }
      }
    }
  )pb");
  EXPECT_SAME_MESSAGE(config, expected);
}

constexpr char kVmYaml[] = R"(metadata:
  name: web-1
  labels:
    app: web
    tier: frontend
  annotations:
    hci.io/owner: "alice"
  uid: 6c1d2a52-1f0e-4b7e-9d0c-3f1b2a4c5d6e
  creationTime: "2024-05-01T12:00:00.250Z"
spec:
  vcpus: 2
  memoryMib: 2Gi
  firmware: uefi
  kernelBoot:
    kernelPath: /boot/vmlinux
    initrdPath: /boot/initrd.img
    cmdline: console=ttyS0 quiet
  disks:
    - name: root
      volume: web-1-root
      bus: virtio
      bootOrder: 1
    - name: data
      volume: web-1-data
      bus: SCSI
      read_only: true
  nics:
    - name: eth0
      network: vlan100
      macAddress: "52:54:00:12:34:56"
      model: e1000
  cloudInit:
    userData: |
      #cloud-config
      password: secret
    metaData: "instance-id: web-1\n"
  runStrategy: RerunOnFailure
  machineType: q35
  accelerator: tcg
  stopGracePeriodMs: 30000
status:
  phase: running
  reason: Started
  conditions:
    - type: Ready
      status: "true"
      lastTransitionTime: 2024-05-01T12:00:05+02:00
  node: node-1
  restartCount: 0
  macAddresses:
    eth0: "52:54:00:12:34:56"
)";

TEST(YamlTest, LoadsFullVirtualMachineManifest) {
  const auto vm = ParseOk<v1::VirtualMachine>(kVmYaml);
  const auto expected = FromText<v1::VirtualMachine>(R"pb(
    metadata {
      name: "web-1"
      labels { key: "app" value: "web" }
      labels { key: "tier" value: "frontend" }
      annotations { key: "hci.io/owner" value: "alice" }
      uid: "6c1d2a52-1f0e-4b7e-9d0c-3f1b2a4c5d6e"
      creation_time { seconds: 1714564800 nanos: 250000000 }
    }
    spec {
      vcpus: 2
      memory_mib: 2048
      firmware: FIRMWARE_UEFI
      kernel_boot {
        kernel_path: "/boot/vmlinux"
        initrd_path: "/boot/initrd.img"
        cmdline: "console=ttyS0 quiet"
      }
      disks { name: "root" volume: "web-1-root" bus: DISK_BUS_VIRTIO boot_order: 1 }
      disks { name: "data" volume: "web-1-data" bus: DISK_BUS_SCSI read_only: true }
      nics {
        name: "eth0"
        network: "vlan100"
        mac_address: "52:54:00:12:34:56"
        model: NIC_MODEL_E1000
      }
      cloud_init {
        user_data: "#cloud-config\npassword: secret\n"
        meta_data: "instance-id: web-1\n"
      }
      run_strategy: RUN_STRATEGY_RERUN_ON_FAILURE
      machine_type: "q35"
      accelerator: "tcg"
      stop_grace_period_ms: 30000
    }
    status {
      phase: VM_PHASE_RUNNING
      reason: "Started"
      conditions {
        type: "Ready"
        status: CONDITION_STATUS_TRUE
        last_transition_time { seconds: 1714557605 }
      }
      node: "node-1"
      mac_addresses { key: "eth0" value: "52:54:00:12:34:56" }
    }
  )pb");
  EXPECT_SAME_MESSAGE(vm, expected);
}

TEST(YamlTest, LoadsCreateVmRequest) {
  const auto req = ParseOk<v1::CreateVmRequest>("metadata: {name: vm-1}\nspec: {vcpus: 1}\n");
  EXPECT_EQ(req.metadata().name(), "vm-1");
  EXPECT_EQ(req.spec().vcpus(), 1u);
}

// ---------------------------------------------------------------------------------------------
// Errors name the field path and the position.

TEST(YamlTest, UnknownFieldNamesPathLineAndSuggestion) {
  EXPECT_EQ(ParseError<v1::VirtualMachine>("metadata:\n  name: a\nspec:\n  vcpu: 2\n").message(),
            "spec.vcpu: unknown field in hci.v1.VirtualMachineSpec (did you mean \"vcpus\"?) at "
            "line 4, column 3");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("spec:\n  memoryMB: 2\n").message(),
            "spec.memoryMB: unknown field in hci.v1.VirtualMachineSpec (did you mean "
            "\"memoryMib\"?) at line 2, column 3");
  EXPECT_EQ(ParseError<v1::HostConfig>("nodename: x\n").message(),
            "nodename: unknown field in hci.v1.HostConfig (did you mean \"nodeName\"?) at line "
            "1, column 1");
  const Status far = ParseError<v1::HostConfig>("zzzzzz: 1\n");
  EXPECT_EQ(far.message(), "zzzzzz: unknown field in hci.v1.HostConfig at line 1, column 1");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("spec:\n  disks:\n    - {name: a}\n    - {nam: b}\n")
                .message(),
            "spec.disks[1].nam: unknown field in hci.v1.Disk (did you mean \"name\"?) at line 4, "
            "column 8");
}

TEST(YamlTest, WrongTypeNamesPathTypeValueAndLine) {
  EXPECT_EQ(ParseError<v1::VirtualMachine>("spec:\n  vcpus: two\n").message(),
            "spec.vcpus: expected an integer (uint32), got \"two\" at line 2, column 10");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("spec:\n  vcpus: [1]\n").message(),
            "spec.vcpus: expected an integer (uint32), got a list at line 2, column 10");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("spec:\n  disks:\n    - name: root\n      bus: virtoi\n")
                .message(),
            "spec.disks[0].bus: unknown value \"virtoi\" (expected one of: virtio, scsi, sata) at "
            "line 4, column 12");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("metadata:\n  labels:\n    app: [x]\n").message(),
            "metadata.labels[\"app\"]: expected a string, got a list at line 3, column 10");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("spec:\n  disks: {name: a}\n").message(),
            "spec.disks: expected a list of hci.v1.Disk, got a mapping at line 2, column 10");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("spec: 3\n").message(),
            "spec: expected a mapping (hci.v1.VirtualMachineSpec), got \"3\" at line 1, column 7");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("metadata:\n  name: {a: 1}\n").message(),
            "metadata.name: expected a string, got a mapping at line 2, column 9");
  EXPECT_EQ(ParseError<v1::HostConfig>("backends:\n  compute:\n    options:\n      accel: 1e999\n")
                .message(),
            "backends.compute.options.accel: the number \"1e999\" is out of range for a double "
            "(quote it to keep it as a string) at line 4, column 14");
  EXPECT_EQ(ParseError<v1::HostConfig>("backends:\n  compute:\n    options: [a]\n").message(),
            "backends.compute.options: expected a mapping, got a list at line 3, column 14");
  EXPECT_EQ(ParseError<v1::VirtualMachine>("metadata:\n  creationTime: yesterday\n").message(),
            "metadata.creationTime: expected an RFC 3339 timestamp such as "
            "\"2024-05-01T12:00:00Z\", got \"yesterday\" at line 2, column 17");
}

TEST(YamlTest, Booleans) {
  EXPECT_TRUE(ParseOk<v1::Disk>("read_only: true").read_only());
  EXPECT_TRUE(ParseOk<v1::Disk>("readOnly: True").read_only());
  EXPECT_FALSE(ParseOk<v1::Disk>("readOnly: FALSE").read_only());
  EXPECT_EQ(ParseError<v1::Disk>("readOnly: yes").message(),
            "readOnly: expected a boolean (true or false), got \"yes\" at line 1, column 11");
  EXPECT_EQ(ParseError<v1::Disk>("readOnly: \"true\"").message(),
            "readOnly: expected a boolean (true or false), got the string \"true\" at line 1, "
            "column 11");
  EXPECT_FALSE(ParseError<v1::Disk>("readOnly: 1").ok());
}

TEST(YamlTest, IntegerRanges) {
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("vcpus: 4294967295").vcpus(), 4294967295u);
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("vcpus: -1").message(),
            "vcpus: \"-1\" is out of range for uint32 at line 1, column 8");
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("vcpus: 4294967296").message(),
            "vcpus: \"4294967296\" is out of range for uint32 at line 1, column 8");
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("memoryMib: 99999999999999999999999").message(),
            "memoryMib: \"99999999999999999999999\" is out of range for uint64 at line 1, column "
            "12");
  EXPECT_EQ(ParseOk<v1::OperationStatus>("code: -2147483648").code(), -2147483648);
  EXPECT_EQ(ParseOk<v1::OperationStatus>("code: 2147483647").code(), 2147483647);
  EXPECT_FALSE(ParseError<v1::OperationStatus>("code: 2147483648").ok());
  EXPECT_FALSE(ParseError<v1::OperationStatus>("code: -2147483649").ok());
  // Quoted numbers (as proto3 JSON writes 64-bit integers), hex, octal, integral floats.
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("vcpus: \"8\"").vcpus(), 8u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("vcpus: 0x10").vcpus(), 16u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("vcpus: 0o17").vcpus(), 15u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("vcpus: 2.0").vcpus(), 2u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("vcpus: 1e1").vcpus(), 10u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("vcpus: +3").vcpus(), 3u);
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("vcpus: 2.5").message(),
            "vcpus: expected an integer (uint32), got \"2.5\" at line 1, column 8");
  EXPECT_FALSE(ParseError<v1::VirtualMachineSpec>("vcpus: 1e30").ok());
  EXPECT_FALSE(ParseError<v1::VirtualMachineSpec>("vcpus: .inf").ok());

  auto k = KitchenFromYaml(
      "i32: -2147483648\ni64: -9223372036854775808\nu64: 18446744073709551615\n"
      "s32: -7\ns64: 9223372036854775807\nfx32: 4294967295\nsfx64: -1\n");
  EXPECT_SAME_MESSAGE(*k, *KitchenFromText("i32: -2147483648 i64: -9223372036854775808 "
                                           "u64: 18446744073709551615 s32: -7 "
                                           "s64: 9223372036854775807 fx32: 4294967295 sfx64: -1"));
  EXPECT_FALSE(KitchenError("u64: 18446744073709551616").ok());
  EXPECT_FALSE(KitchenError("i64: 9223372036854775808").ok());
  EXPECT_FALSE(KitchenError("i64: -9223372036854775809").ok());
}

TEST(YamlTest, FloatingPoint) {
  auto k = KitchenFromYaml(
      "flt: 0.1\ndbl: -2.5e-3\nfloats: [1, .inf, -.Inf, 3.4028235e38]\n"
      "doubles: [5e-324, 1.7976931348623157e308, \"NaN\", -Infinity, 1e3]\n");
  const pb::Descriptor* d = k->GetDescriptor();
  const pb::Reflection* r = k->GetReflection();
  EXPECT_EQ(r->GetFloat(*k, d->FindFieldByName("flt")), 0.1f);
  EXPECT_EQ(r->GetDouble(*k, d->FindFieldByName("dbl")), -2.5e-3);
  const pb::FieldDescriptor* floats = d->FindFieldByName("floats");
  ASSERT_EQ(r->FieldSize(*k, floats), 4);
  EXPECT_EQ(r->GetRepeatedFloat(*k, floats, 1), std::numeric_limits<float>::infinity());
  EXPECT_EQ(r->GetRepeatedFloat(*k, floats, 2), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(r->GetRepeatedFloat(*k, floats, 3), 3.4028235e38f);
  const pb::FieldDescriptor* doubles = d->FindFieldByName("doubles");
  ASSERT_EQ(r->FieldSize(*k, doubles), 5);
  EXPECT_EQ(r->GetRepeatedDouble(*k, doubles, 0), 5e-324);
  EXPECT_EQ(r->GetRepeatedDouble(*k, doubles, 1), 1.7976931348623157e308);
  EXPECT_TRUE(std::isnan(r->GetRepeatedDouble(*k, doubles, 2)));
  EXPECT_EQ(r->GetRepeatedDouble(*k, doubles, 3), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(r->GetRepeatedDouble(*k, doubles, 4), 1000.0);
  EXPECT_EQ(KitchenError("flt: 1e39").message(),
            "flt: \"1e39\" is out of range for float at line 1, column 6");
  EXPECT_EQ(KitchenError("dbl: fast").message(),
            "dbl: expected a number (double), got \"fast\" at line 1, column 6");
}

// ---------------------------------------------------------------------------------------------
// Enums.

TEST(YamlTest, EnumShortNames) {
  for (const char* bus : {"virtio", "VIRTIO", "Virtio", "DISK_BUS_VIRTIO", "disk_bus_virtio",
                          "DiskBusVirtio", "\"virtio\"", "1"}) {
    EXPECT_EQ(ParseOk<v1::Disk>(std::string("bus: ") + bus).bus(), v1::DISK_BUS_VIRTIO) << bus;
  }
  for (const char* strategy : {"RerunOnFailure", "rerun_on_failure", "RERUN_ON_FAILURE",
                               "rerunonfailure", "RUN_STRATEGY_RERUN_ON_FAILURE"}) {
    EXPECT_EQ(
        ParseOk<v1::VirtualMachineSpec>(std::string("runStrategy: ") + strategy).run_strategy(),
        v1::RUN_STRATEGY_RERUN_ON_FAILURE)
        << strategy;
  }
  EXPECT_EQ(ParseOk<v1::HostConfig>("logLevel: warn").log_level(), v1::LOG_LEVEL_WARN);
  EXPECT_EQ(ParseOk<v1::Event>("type: Warning").type(), v1::EVENT_TYPE_WARNING);
  auto k = KitchenFromYaml("color: dark_blue\ncolors: [red, DarkBlue, l2, COLOR_L2]\nhue: L2\n");
  EXPECT_SAME_MESSAGE(*k, *KitchenFromText("color: COLOR_DARK_BLUE colors: [ COLOR_RED, "
                                           "COLOR_DARK_BLUE, COLOR_L2, COLOR_L2 ] hue: COLOR_L2"));
}

TEST(YamlTest, EnumUnspecifiedOnlyByFullNameAndNotOffered) {
  v1::Disk disk = ParseOk<v1::Disk>("bus: DISK_BUS_UNSPECIFIED");
  EXPECT_EQ(disk.bus(), v1::DISK_BUS_UNSPECIFIED);
  EXPECT_EQ(ParseError<v1::Disk>("bus: unspecified").message(),
            "bus: unknown value \"unspecified\" (expected one of: virtio, scsi, sata) at line 1, "
            "column 6");
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("runStrategy: sometimes").message(),
            "runStrategy: unknown value \"sometimes\" (expected one of: always, halted, manual, "
            "rerun_on_failure, once) at line 1, column 14");
  // Numbers are proto3 JSON's other spelling; proto3 enums are open, so any int32 is kept.
  EXPECT_EQ(ParseOk<v1::Disk>("bus: 42").bus(), 42);
  EXPECT_FALSE(ParseError<v1::Disk>("bus: 2147483648").ok());
}

// ---------------------------------------------------------------------------------------------
// Quantities.

TEST(YamlTest, QuantitiesConvertToTheFieldsUnit) {
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("memoryMib: 1Gi").memory_mib(), 1024u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("memory_mib: 512Mi").memory_mib(), 512u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("memoryMib: 1.5Gi").memory_mib(), 1536u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("memoryMib: \"4Gi\"").memory_mib(), 4096u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("memoryMib: 1Ti").memory_mib(), 1048576u);
  EXPECT_EQ(ParseOk<v1::VirtualMachineSpec>("memoryMib: 2048").memory_mib(), 2048u);
  EXPECT_EQ(ParseOk<v1::VolumeSpec>("sizeBytes: 10Gi").size_bytes(), 10737418240u);
  EXPECT_EQ(ParseOk<v1::VolumeSpec>("size_bytes: 4Ki").size_bytes(), 4096u);
  EXPECT_EQ(ParseOk<v1::VolumeSpec>("sizeBytes: 0.5Ki").size_bytes(), 512u);
  EXPECT_EQ(ParseOk<v1::VolumeSpec>("sizeBytes: 15Ei").size_bytes(), 15ull << 60);
  EXPECT_EQ(ParseOk<v1::ReadConsoleRequest>("maxBytes: 64Ki").max_bytes(), 65536u);

  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("memoryMib: 1Ki").message(),
            "memoryMib: \"1Ki\" is not a whole number of MiB at line 1, column 12");
  EXPECT_EQ(ParseError<v1::VolumeSpec>("sizeBytes: 0.1Ki").message(),
            "sizeBytes: \"0.1Ki\" is not a whole number of bytes at line 1, column 12");
  EXPECT_EQ(ParseError<v1::VolumeSpec>("sizeBytes: 16Ei").message(),
            "sizeBytes: \"16Ei\" is out of range for uint64 at line 1, column 12");
  EXPECT_EQ(ParseError<v1::ReadConsoleRequest>("maxBytes: 4Gi").message(),
            "maxBytes: \"4Gi\" is out of range for uint32 at line 1, column 11");
  EXPECT_FALSE(ParseError<v1::VolumeSpec>("sizeBytes: 99999999999999999999999999999999Pi").ok());
  EXPECT_FALSE(ParseError<v1::VolumeSpec>("sizeBytes: -1Gi").ok());
  EXPECT_EQ(ParseError<v1::VolumeSpec>("sizeBytes: 10G").message(),
            "sizeBytes: expected an integer (uint64 or a quantity such as 512Mi), got \"10G\" at "
            "line 1, column 12");
  // Only *_bytes and *_mib fields take quantities.
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("vcpus: 2Ki").message(),
            "vcpus: expected an integer (uint32), got \"2Ki\" at line 1, column 8");
  auto k = KitchenFromYaml("deltaMib: -1Gi\nsmallBytes: 1Mi\n");
  EXPECT_SAME_MESSAGE(*k, *KitchenFromText("delta_mib: -1024 small_bytes: 1048576"));
  EXPECT_FALSE(KitchenError("smallBytes: 2Gi").ok());
}

// ---------------------------------------------------------------------------------------------
// Repeated fields, maps, oneofs, null.

TEST(YamlTest, OneofConflictNamesBothMembers) {
  EXPECT_EQ(
      ParseError<v1::ImageSpec>("url: https://example.com/a.img\nfile: /tmp/a.img\n").message(),
      "file: cannot be set together with \"url\" (both are in oneof \"source\") at line 2, "
      "column 1");
  EXPECT_EQ(
      ParseError<v1::VolumeSpec>("source:\n  image: img\n  snapshot: {volume: v}\n").message(),
      "source.snapshot: cannot be set together with \"image\" (both are in oneof "
      "\"source\") at line 3, column 3");
  // null does not set a member.
  EXPECT_EQ(ParseOk<v1::ImageSpec>("url: ~\nfile: /tmp/a.img\n").file(), "/tmp/a.img");
  // An empty string does: oneof members have presence.
  const auto spec = ParseOk<v1::ImageSpec>("file: \"\"");
  EXPECT_EQ(spec.source_case(), v1::ImageSpec::kFile);
}

TEST(YamlTest, MapKeys) {
  const auto meta = ParseOk<v1::ObjectMeta>(
      "labels:\n  app: web\n  \"1\": one\n  true: yes\n  ~weird key: x\n"
      "annotations: {\"a.b/c\": \"\", empty: }\n");
  EXPECT_EQ(meta.labels().size(), 4u);
  EXPECT_EQ(meta.labels().at("app"), "web");
  EXPECT_EQ(meta.labels().at("1"), "one");
  EXPECT_EQ(meta.labels().at("true"), "yes");
  EXPECT_EQ(meta.labels().at("~weird key"), "x");
  EXPECT_EQ(meta.annotations().at("a.b/c"), "");
  EXPECT_EQ(meta.annotations().at("empty"), "");
  EXPECT_EQ(ParseError<v1::ObjectMeta>("labels:\n  app: a\n  app: b\n").message(),
            "labels[\"app\"]: duplicate key at line 3, column 3");
  EXPECT_EQ(ParseError<v1::ObjectMeta>("labels:\n  [a]: b\n").message(),
            "labels: expected a key of type string, got a list at line 2, column 3");

  auto k = KitchenFromYaml(
      "byId: {1: one, \"-2\": minus two, 0x10: sixteen}\nbyFlag: {true: 1, \"false\": 0}\n"
      "children: {a: {i32: 1}, b: ~}\ncolorMap: {x: red}\nvalueMap: {n: ~, s: [1]}\n"
      "u64Map: {18446744073709551615: 0.5}\n");
  EXPECT_SAME_MESSAGE(*k, *KitchenFromText(R"pb(
    by_id { key: 1 value: "one" }
    by_id { key: -2 value: "minus two" }
    by_id { key: 16 value: "sixteen" }
    by_flag { key: true value: 1 }
    by_flag { key: false value: 0 }
    children {
      key: "a"
      value { i32: 1 }
    }
    children {
      key: "b"
      value {}
    }
    color_map { key: "x" value: COLOR_RED }
    value_map {
      key: "n"
      value { null_value: NULL_VALUE }
    }
    value_map {
      key: "s"
      value { list_value { values { number_value: 1 } } }
    }
    u64_map { key: 18446744073709551615 value: 0.5 }
  )pb"));
  EXPECT_EQ(KitchenError("byId: {1: a, 01: b}").message(),
            "byId[01]: duplicate key at line 1, column 14");
  EXPECT_EQ(KitchenError("byId: {x: a}").message(),
            "byId[x]: expected an integer (int32), got \"x\" at line 1, column 8");
  EXPECT_EQ(
      KitchenError("byFlag: {maybe: 1}").message(),
      "byFlag[maybe]: expected a boolean (true or false), got \"maybe\" at line 1, column 10");
}

TEST(YamlTest, DuplicateFields) {
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("vcpus: 1\nvcpus: 2\n").message(),
            "vcpus: duplicate field (already set as \"vcpus\") at line 2, column 1");
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("memory_mib: 1\nmemoryMib: 2\n").message(),
            "memoryMib: duplicate field (already set as \"memory_mib\") at line 2, column 1");
}

TEST(YamlTest, NullLeavesFieldsUnset) {
  const auto vm = ParseOk<v1::VirtualMachine>("metadata:\nspec: ~\nstatus: null\n");
  EXPECT_FALSE(vm.has_metadata());
  EXPECT_FALSE(vm.has_spec());
  EXPECT_FALSE(vm.has_status());
  const auto spec = ParseOk<v1::VirtualMachineSpec>(
      "vcpus: ~\ndisks: null\nkernelBoot:\nnics:\n  - ~\n  - name: eth0\n");
  EXPECT_EQ(spec.vcpus(), 0u);
  EXPECT_EQ(spec.disks_size(), 0);
  EXPECT_FALSE(spec.has_kernel_boot());
  ASSERT_EQ(spec.nics_size(), 2);  // a null element is an empty message
  EXPECT_EQ(spec.nics(0).ByteSizeLong(), 0u);
  EXPECT_EQ(spec.nics(1).name(), "eth0");
  // An empty mapping sets a message field.
  EXPECT_TRUE(ParseOk<v1::VirtualMachineSpec>("kernelBoot: {}").has_kernel_boot());
  EXPECT_EQ(ParseError<v1::VirtualMachineSpec>("machineType: x\ndisks: [~, 3]\n").message(),
            "disks[1]: expected a mapping (hci.v1.Disk), got \"3\" at line 2, column 12");
  EXPECT_EQ(ParseError<v1::ComputeCapabilities>("accelerators: [kvm, ~]").message(),
            "accelerators[1]: expected a string, got null at line 1, column 21");
}

// ---------------------------------------------------------------------------------------------
// Well-known types and bytes.

TEST(YamlTest, StructContents) {
  const auto s = ParseOk<pb::Struct>(R"(
string: hello
quoted_number: "42"
quoted_true: 'true'
tagged: !!str 7
number: 42
negative: -1.5e3
hex: 0xff
octal: 0o17
infinite: .inf
bools: [true, False, TRUE]
nulls: [~, null, Null, NULL]
date: 2024-01-01
quantity: 512Mi
version: 1.10
empty_map: {}
empty_list: []
big: 123456789012345678901234567890
multi: |
  line one
  line two
)");
  const auto& f = s.fields();
  EXPECT_EQ(f.at("string").string_value(), "hello");
  EXPECT_EQ(f.at("quoted_number").string_value(), "42");
  EXPECT_EQ(f.at("quoted_true").string_value(), "true");
  EXPECT_EQ(f.at("tagged").string_value(), "7");
  EXPECT_EQ(f.at("number").number_value(), 42);
  EXPECT_EQ(f.at("negative").number_value(), -1500);
  EXPECT_EQ(f.at("hex").number_value(), 255);
  EXPECT_EQ(f.at("octal").number_value(), 15);
  EXPECT_EQ(f.at("infinite").number_value(), std::numeric_limits<double>::infinity());
  ASSERT_EQ(f.at("bools").list_value().values_size(), 3);
  EXPECT_TRUE(f.at("bools").list_value().values(0).bool_value());
  EXPECT_EQ(f.at("bools").list_value().values(1).kind_case(), pb::Value::kBoolValue);
  EXPECT_FALSE(f.at("bools").list_value().values(1).bool_value());
  ASSERT_EQ(f.at("nulls").list_value().values_size(), 4);
  for (const auto& v : f.at("nulls").list_value().values()) {
    EXPECT_EQ(v.kind_case(), pb::Value::kNullValue);
  }
  EXPECT_EQ(f.at("date").string_value(), "2024-01-01");
  EXPECT_EQ(f.at("quantity").string_value(), "512Mi");
  EXPECT_EQ(f.at("version").number_value(), 1.1);  // YAML: quote versions
  EXPECT_EQ(f.at("empty_map").kind_case(), pb::Value::kStructValue);
  EXPECT_EQ(f.at("empty_map").struct_value().fields_size(), 0);
  EXPECT_EQ(f.at("empty_list").kind_case(), pb::Value::kListValue);
  EXPECT_EQ(f.at("big").number_value(), 1.2345678901234568e29);
  EXPECT_EQ(f.at("multi").string_value(), "line one\nline two\n");

  EXPECT_EQ(ParseError<pb::Struct>("a: 1\na: 2\n").message(),
            "a: duplicate key at line 2, column 1");
  EXPECT_EQ(ParseError<pb::Struct>("outer:\n  \"a b\": {c: [1, {d: 1e400}]}\n").message(),
            "outer[\"a b\"].c[1].d: the number \"1e400\" is out of range for a double (quote it "
            "to keep it as a string) at line 2, column 22");
  EXPECT_EQ(ParseError<pb::Struct>("? [a]\n: 1\n").message(),
            "expected a string key, got a list at line 1, column 3");
  // A Value field takes any YAML, null included.
  auto k = KitchenFromYaml("anyValue: ~\nlist: [1, a, [], {}]\nvalues: [~, x]\n");
  EXPECT_SAME_MESSAGE(*k, *KitchenFromText(R"pb(
    any_value { null_value: NULL_VALUE }
    list {
      values { number_value: 1 }
      values { string_value: "a" }
      values { list_value {} }
      values { struct_value {} }
    }
    values { null_value: NULL_VALUE }
    values { string_value: "x" }
  )pb"));
}

TEST(YamlTest, TimestampsDurationsAndWrappers) {
  const auto meta = ParseOk<v1::ObjectMeta>("creationTime: 2024-05-01T12:00:00.123456789+02:00");
  EXPECT_EQ(meta.creation_time().seconds(), 1714557600);
  EXPECT_EQ(meta.creation_time().nanos(), 123456789);
  EXPECT_FALSE(ParseError<v1::ObjectMeta>("creationTime: 2024-13-01T00:00:00Z").ok());
  EXPECT_FALSE(ParseError<v1::ObjectMeta>("creationTime: 1714557600").ok());
  EXPECT_FALSE(ParseError<v1::ObjectMeta>("creationTime: {seconds: 1}").ok());

  auto k = KitchenFromYaml(
      "timeout: 1.5s\nat: \"1970-01-01T00:00:00Z\"\nmaybeInt: 0\nmaybeText: \"\"\n"
      "maybeFlag: false\nmaybeDouble: -0.5\nmaybeBlob: AAE=\n");
  EXPECT_SAME_MESSAGE(*k, *KitchenFromText(R"pb(
    timeout { seconds: 1 nanos: 500000000 }
    at {}
    maybe_int {}
    maybe_text {}
    maybe_flag {}
    maybe_double { value: -0.5 }
    maybe_blob { value: "\000\001" }
  )pb"));
  EXPECT_SAME_MESSAGE(*KitchenFromYaml("timeout: -0.25s"),
                      *KitchenFromText("timeout { nanos: -250000000 }"));
  EXPECT_EQ(KitchenError("timeout: 1.5").message(),
            "timeout: expected a duration in seconds such as \"1.5s\", got \"1.5\" at line 1, "
            "column 10");
  EXPECT_FALSE(KitchenError("timeout: 999999999999999s").ok());
  EXPECT_FALSE(KitchenError("maybeInt: x").ok());
}

TEST(YamlTest, BytesAreBase64) {
  EXPECT_EQ(ParseOk<v1::ConsoleOutput>("data: aGVsbG8=").data(), "hello");
  EXPECT_EQ(ParseOk<v1::ConsoleOutput>("data: aGVsbG8").data(), "hello");  // unpadded
  EXPECT_EQ(ParseOk<v1::ConsoleOutput>("data: _-8=").data(), "\xff\xef");  // URL-safe
  EXPECT_EQ(ParseOk<v1::ConsoleOutput>("data: /+8=").data(), "\xff\xef");
  EXPECT_EQ(ParseOk<v1::ConsoleOutput>("data: \"\"").data(), "");
  EXPECT_EQ(ParseError<v1::ConsoleOutput>("data: not base64!").message(),
            "data: expected base64 data, got \"not base64!\" at line 1, column 7");
  EXPECT_FALSE(ParseError<v1::ConsoleOutput>("data: a").ok());
}

TEST(YamlTest, StringsMustBeUtf8) {
  EXPECT_EQ(ParseOk<v1::ObjectMeta>("name: \"h\u00e9llo \u2713\"").name(), "h\u00e9llo \u2713");
  EXPECT_EQ(ParseError<v1::ObjectMeta>("name: \"\xff\"").message(),
            "name: the string is not valid UTF-8 at line 1, column 7");
  // Scalars of any plain form are text for a string field.
  EXPECT_EQ(ParseOk<v1::ObjectMeta>("name: 0123").name(), "0123");
  EXPECT_EQ(ParseOk<v1::ObjectMeta>("name: true").name(), "true");
}

// ---------------------------------------------------------------------------------------------
// Document-level behaviour.

TEST(YamlTest, JsonInput) {
  const auto vm = ParseOk<v1::VirtualMachine>(R"({
    "metadata": {"name": "web-1", "labels": {"app": "web"}},
    "spec": {"vcpus": 2, "memoryMib": "1024", "runStrategy": "RUN_STRATEGY_ALWAYS",
             "disks": [{"name": "root", "bus": "DISK_BUS_VIRTIO", "bootOrder": 1}]}
  })");
  EXPECT_SAME_MESSAGE(vm, FromText<v1::VirtualMachine>(R"pb(
                        metadata {
                          name: "web-1"
                          labels { key: "app" value: "web" }
                        }
                        spec {
                          vcpus: 2
                          memory_mib: 1024
                          run_strategy: RUN_STRATEGY_ALWAYS
                          disks { name: "root" bus: DISK_BUS_VIRTIO boot_order: 1 }
                        }
                      )pb"));
}

TEST(YamlTest, ReadsWhatProtobufsJsonPrinterWrites) {
  auto original = ParseOk<v1::VirtualMachine>(kVmYaml);
  original.mutable_spec()->set_memory_mib(uint64_t{1} << 40);  // printed as a quoted string
  for (const bool proto_names : {false, true}) {
    pb::util::JsonPrintOptions options;
    options.preserve_proto_field_names = proto_names;
    std::string json;
    ASSERT_TRUE(pb::util::MessageToJsonString(original, &json, options).ok());
    EXPECT_SAME_MESSAGE(ParseOk<v1::VirtualMachine>(json), original);
  }
  auto config = ParseOk<v1::HostConfig>(kHostConfigYaml);
  std::string json;
  ASSERT_TRUE(pb::util::MessageToJsonString(config, &json).ok());
  EXPECT_SAME_MESSAGE(ParseOk<v1::HostConfig>(json), config);
}

TEST(YamlTest, EmptyAndNullDocumentsGiveAnEmptyMessage) {
  for (const char* text : {"", "\n", "# only a comment\n", "---\n", "~", "null", "---\n...\n"}) {
    v1::HostConfig config;
    config.set_node_name("stale");
    const Status s = ParseYaml(text, &config);
    EXPECT_TRUE(s.ok()) << s << " for " << text;
    EXPECT_EQ(config.ByteSizeLong(), 0u) << text;
  }
  EXPECT_EQ(ParseError<v1::HostConfig>("- a\n- b\n").message(),
            "expected a mapping (hci.v1.HostConfig), got a list at line 1, column 1");
  EXPECT_EQ(ParseError<v1::HostConfig>("hello").message(),
            "expected a mapping (hci.v1.HostConfig), got \"hello\" at line 1, column 1");
  EXPECT_EQ(ParseError<v1::HostConfig>("nodeName: a\n---\nnodeName: b\n").message(),
            "expected a single YAML document, found more content at line 2, column 1");
  // Trailing junk is not silently dropped (and a stray "," does not make yaml-cpp loop).
  EXPECT_EQ(ParseError<pb::Struct>("{a: 1},").message(),
            "expected a single YAML document, found more content at line 1, column 7");
  EXPECT_FALSE(ParseError<pb::Struct>(",").ok());
}

TEST(YamlTest, SyntaxErrorsHaveAPosition) {
  const Status s = ParseError<v1::VirtualMachine>("spec:\n  vcpus: 2\n  disks: [a, b\n");
  EXPECT_EQ(s.message().rfind("invalid YAML: ", 0), 0u) << s;
  EXPECT_NE(s.message().find(" at line "), std::string::npos) << s;
  EXPECT_EQ(
      ParseError<v1::VirtualMachine>("spec:\n\tvcpus: 2\n").message().rfind("invalid YAML: ", 0),
      0u);
}

TEST(YamlTest, ErrorLeavesTheMessageCleared) {
  v1::VirtualMachine vm;
  vm.mutable_metadata()->set_name("stale");
  const std::string text = std::string(kVmYaml) + "extra: 1\n";
  const Status s = ParseYaml(text, &vm);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "extra: unknown field in hci.v1.VirtualMachine at line 52, column 1");
  EXPECT_FALSE(vm.has_metadata());
  EXPECT_FALSE(vm.has_spec());
  EXPECT_EQ(vm.ByteSizeLong(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Files.

class YamlFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "hci-yaml-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Write(const std::string& name, std::string_view content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << content;
    return path;
  }
  std::string dir_;
};

TEST_F(YamlFileTest, MissingFileIsNotFound) {
  v1::HostConfig config;
  config.set_node_name("stale");
  const std::string path = dir_ + "/missing.yaml";
  const Status s = LoadYamlFile(path, &config);
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s;
  EXPECT_EQ(s.message().rfind(path + ": ", 0), 0u) << s;
  EXPECT_EQ(config.ByteSizeLong(), 0u);
}

TEST_F(YamlFileTest, LoadsAndPrefixesErrorsWithThePath) {
  v1::HostConfig config;
  ASSERT_TRUE(LoadYamlFile(Write("host.yaml", kHostConfigYaml), &config).ok());
  EXPECT_EQ(config.backends().compute().plugin(), "kvm");

  const std::string bad = Write("bad.yaml", "nodeName: a\nlogLevel: loud\n");
  const Status s = LoadYamlFile(bad, &config);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), bad +
                             ": logLevel: unknown value \"loud\" (expected one of: trace, debug, "
                             "info, warn, error, critical, off) at line 2, column 11");
  EXPECT_EQ(config.ByteSizeLong(), 0u);

  const Status dir = LoadYamlFile(dir_, &config);
  EXPECT_EQ(dir.code(), StatusCode::kInvalidArgument) << dir;
  EXPECT_EQ(dir.message().rfind(dir_ + ": ", 0), 0u) << dir;
}

// ---------------------------------------------------------------------------------------------
// ToYaml.

TEST(YamlTest, ToYamlWritesBlockYamlWithJsonNamesAndShortEnums) {
  v1::VirtualMachine vm;
  vm.mutable_metadata()->set_name("web-1");
  (*vm.mutable_metadata()->mutable_labels())["app"] = "web";
  vm.mutable_spec()->set_vcpus(2);
  vm.mutable_spec()->set_memory_mib(2048);
  vm.mutable_spec()->set_run_strategy(v1::RUN_STRATEGY_RERUN_ON_FAILURE);
  v1::Disk* disk = vm.mutable_spec()->add_disks();
  disk->set_name("root");
  disk->set_bus(v1::DISK_BUS_VIRTIO);
  disk->set_read_only(false);  // default: omitted
  vm.mutable_spec()->mutable_kernel_boot();
  vm.mutable_spec()->mutable_cloud_init()->set_user_data("#cloud-config\nhostname: web-1\n");
  vm.mutable_status()->set_reason("123");
  EXPECT_EQ(YamlOf(vm), R"(metadata:
  name: web-1
  labels:
    app: web
spec:
  vcpus: 2
  memoryMib: 2048
  kernelBoot: {}
  disks:
    - name: root
      bus: virtio
  cloudInit:
    userData: |
      #cloud-config
      hostname: web-1
  runStrategy: rerun_on_failure
status:
  reason: "123"
)");
  EXPECT_EQ(YamlOf(v1::HostConfig()), "{}\n");
  // Strings other YAML readers would take for something else are quoted; so are YAML 1.1's
  // sexagesimal numbers and booleans (the "on" key below), for PyYAML and go-yaml v2.
  EXPECT_EQ(YamlOf(FromText<v1::Nic>(R"pb(mac_address: "52:54:00:12:34:56" network: "yes")pb")),
            "network: \"yes\"\nmacAddress: \"52:54:00:12:34:56\"\n");

  v1::HostConfig config;
  config.mutable_backends()->mutable_compute()->set_plugin("kvm");
  pb::Struct* options = config.mutable_backends()->mutable_compute()->mutable_options();
  (*options->mutable_fields())["accel"].set_string_value("auto");
  (*options->mutable_fields())["max"].set_number_value(16);
  (*options->mutable_fields())["on"].set_bool_value(true);
  (*options->mutable_fields())["port"].set_string_value("5900");
  (*options->mutable_fields())["none"].set_null_value(pb::NULL_VALUE);
  (*options->mutable_fields())["list"].mutable_list_value()->add_values()->set_number_value(0.5);
  EXPECT_EQ(YamlOf(config), R"(backends:
  compute:
    plugin: kvm
    options:
      accel: auto
      list:
        - 0.5
      max: 16
      none: ~
      "on": true
      port: "5900"
)");
}

void ExpectRoundTrip(const pb::Message& m) {
  const std::string yaml = YamlOf(m);
  std::unique_ptr<pb::Message> back(m.New());
  const Status s = ParseYaml(yaml, back.get());
  ASSERT_TRUE(s.ok()) << s << "\n" << yaml;
  std::string diff;
  EXPECT_TRUE(SameMessage(m, *back, &diff)) << diff << "\n" << yaml;
  EXPECT_EQ(YamlOf(*back), yaml);
}

TEST(YamlTest, RoundTripsRichMessages) {
  ExpectRoundTrip(ParseOk<v1::VirtualMachine>(kVmYaml));
  ExpectRoundTrip(ParseOk<v1::HostConfig>(kHostConfigYaml));

  v1::HostConfig tricky;
  pb::Struct* options = tricky.mutable_backends()->mutable_storage()->mutable_options();
  auto& f = *options->mutable_fields();
  const std::string strings[] = {"",
                                 "null",
                                 "~",
                                 "true",
                                 "False",
                                 "123",
                                 "-1.5e3",
                                 "0x1f",
                                 ".nan",
                                 "Infinity",
                                 "a: b",
                                 "- x",
                                 "#c",
                                 " lead",
                                 "trail ",
                                 "tab\there",
                                 "multi\nline\n",
                                 "two\nlines",
                                 "\n\nblank first\n",
                                 " indented\nblock\n",
                                 "h\u00e9llo \u2713",
                                 "\x7f",
                                 "quote\"and\\backslash",
                                 "'single'",
                                 "@at",
                                 "`tick`",
                                 "%pct",
                                 "&amp",
                                 "*star",
                                 "!bang",
                                 "|pipe",
                                 ">gt",
                                 "[x]",
                                 "{y}",
                                 std::string("nul\0byte", 8),
                                 "\r\n",
                                 "\u0085nel",
                                 "\ufeffbom",
                                 "\u2028ls",
                                 "... ",
                                 "---",
                                 "? q",
                                 "ends with \n",
                                 "trailing\n\n",
                                 "line with trailing space \nnext\n",
                                 "a\n  \n",
                                 "a\n\n b\n",
                                 "\ta\n",
                                 "a\tb\n",
                                 "x\n#y\n",
                                 "x\n- y\n",
                                 "x\n  y\n",
                                 "x\n---\n...\n",
                                 "<<",
                                 "=",
                                 "-",
                                 ":",
                                 "? ",
                                 // Found by yaml_fuzzer: a plain scalar would lose a \r.
                                 "mocklicated \r\r\r",
                                 "tab\there",
                                 "bell\a",
                                 std::string(2000, 'k')};
  for (const std::string& s : strings) {
    f[s].set_string_value(s);
    f["key-" + s].mutable_list_value()->add_values()->set_string_value(s);
  }
  for (const double d :
       {0.0, -0.0, 1.0, 0.1, -2.5e-300, 5e-324, 1.7976931348623157e308, 123456789012345678.0,
        std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
        std::numeric_limits<double>::quiet_NaN()}) {
    f[std::to_string(d)].mutable_list_value()->add_values()->set_number_value(d);
  }
  f["deep"]
      .mutable_struct_value()
      ->mutable_fields()
      ->
      operator[]("x")
      .mutable_list_value()
      ->add_values()
      ->mutable_list_value()
      ->add_values()
      ->mutable_struct_value();
  ExpectRoundTrip(tricky);

  v1::Event event;
  event.mutable_time()->set_seconds(1714557600);
  event.mutable_time()->set_nanos(1000);
  event.set_type(v1::EVENT_TYPE_WARNING);
  event.mutable_object()->set_kind("VirtualMachine");
  event.mutable_vm_phase()->set_new_phase(v1::VM_PHASE_MIGRATING);
  ExpectRoundTrip(event);
  event.mutable_progress();  // switches the oneof to an empty message
  ExpectRoundTrip(event);

  v1::ImageSpec image;
  image.set_file("");  // an empty oneof member is still set
  image.set_format(v1::IMAGE_FORMAT_QCOW2);
  ExpectRoundTrip(image);

  v1::ConsoleOutput console;
  console.set_data(std::string("\0\xff\x01binary\n", 10));
  console.set_next_offset(18446744073709551615ull);
  ExpectRoundTrip(console);

  v1::ComputeCapabilities caps;
  caps.add_run_strategies(v1::RUN_STRATEGY_UNSPECIFIED);
  caps.add_run_strategies(v1::RUN_STRATEGY_RERUN_ON_FAILURE);
  caps.add_run_strategies(static_cast<v1::RunStrategy>(42));  // open enum: unknown number
  caps.add_accelerators("kvm");
  caps.add_accelerators("");
  ExpectRoundTrip(caps);
  EXPECT_NE(YamlOf(caps).find("- RUN_STRATEGY_UNSPECIFIED\n"), std::string::npos) << YamlOf(caps);

  v1::Volume volume;
  volume.mutable_spec()->mutable_source()->mutable_snapshot()->set_volume("v");
  volume.mutable_status()->add_replicas()->mutable_rebuild_progress()->set_total(7);
  volume.mutable_status()->add_replicas();
  ExpectRoundTrip(volume);

  auto k = KitchenFromText(R"pb(
    i32: -5
    i64: -9223372036854775808
    u32: 4294967295
    u64: 18446744073709551615
    s32: -1
    s64: 1
    fx32: 7
    fx64: 8
    sfx32: -9
    sfx64: -10
    flt: 0.1
    dbl: -1e-300
    flag: true
    text: "t"
    blob: "\000\377"
    color: COLOR_L2
    ints: [ 0, -1 ]
    doubles: [ 0, nan, inf ]
    strings: [ "", "a" ]
    blobs: [ "", "\001" ]
    colors: [ COLOR_UNSPECIFIED, COLOR_RED ]
    floats: [ 3.4028235e38, -0, 1e-45 ]
    flags: [ false, true ]
    by_id { key: -3 value: "" }
    by_id { key: 0 value: "zero" }
    by_flag { key: false value: 0 }
    by_flag { key: true value: -1 }
    children {
      key: ""
      value {}
    }
    children {
      key: "c"
      value { opt: 0 }
    }
    color_map { key: "u" value: COLOR_UNSPECIFIED }
    u64_map { key: 0 value: 0 }
    u64_map { key: 18446744073709551615 value: -inf }
    timeout { seconds: -315576000000 }
    at { seconds: 253402300799 nanos: 999999999 }
    maybe_int {}
    maybe_text { value: "null" }
    maybe_flag { value: true }
    maybe_double { value: nan }
    maybe_blob {}
    any_value { list_value {} }
    list {
      values { struct_value {} }
      values { null_value: NULL_VALUE }
    }
    meta {
      fields {
        key: "k"
        value { string_value: "v" }
      }
    }
    name: ""
    opt: 0
    size_bytes: 1
    delta_mib: -1
    small_bytes: -2147483648
    items {}
    items { child { hue: COLOR_DARK_BLUE } }
    values { number_value: 1 }
    value_map {
      key: "x"
      value { null_value: NULL_VALUE }
    }
  )pb");
  ExpectRoundTrip(*k);
}

// ---------------------------------------------------------------------------------------------
// What ToYaml refuses: anything ParseYaml could not read back.

Status ToYamlError(const pb::Message& m) {
  const Result<std::string> yaml = ToYaml(m);
  EXPECT_FALSE(yaml.ok()) << (yaml.ok() ? *yaml : "");
  EXPECT_EQ(yaml.status().code(), StatusCode::kInvalidArgument) << yaml.status();
  return yaml.status();
}

TEST(YamlTest, ToYamlRefusesStringsThatAreNotUtf8) {
  v1::VirtualMachine vm;
  vm.mutable_metadata()->set_name("vm");
  vm.mutable_spec()->mutable_kernel_boot()->set_cmdline("console=ttyS0 \xff");
  EXPECT_EQ(ToYamlError(vm).message(),
            "spec.kernel_boot.cmdline: the string is not valid UTF-8 (byte 14 of "
            "\"console=ttyS0 \\xff\"); use a bytes field for binary data");

  v1::Volume volume;
  (*volume.mutable_metadata()->mutable_labels())["ok"] = "fine";
  (*volume.mutable_metadata()->mutable_labels())["k\xc3"] = "v";
  EXPECT_EQ(ToYamlError(volume).message(),
            "metadata.labels[\"k\\xc3\"]: the key is not valid UTF-8 (byte 1 of \"k\\xc3\"); use "
            "a bytes field for binary data");

  v1::VirtualMachine disks;
  disks.mutable_spec()->add_disks()->set_name("root");
  disks.mutable_spec()->add_disks()->set_volume("\xed\xa0\x80");  // a UTF-16 surrogate
  EXPECT_EQ(ToYamlError(disks).message().rfind("spec.disks[1].volume: the string is not valid", 0),
            0u);

  v1::HostConfig config;
  // mutable_fields() again after each ToYaml: reflection reads leave an older Map reference stale.
  auto options = [&config]() -> auto& {
    return *config.mutable_backends()->mutable_storage()->mutable_options()->mutable_fields();
  };
  options()["path"].set_string_value("/srv/\xfe");
  EXPECT_EQ(ToYamlError(config).message().rfind("backends.storage.options.path: the string is not "
                                                "valid UTF-8",
                                                0),
            0u);
  options().clear();
  options()["\x80"].set_bool_value(true);
  EXPECT_EQ(ToYamlError(config).message().rfind(
                "backends.storage.options[\"\\x80\"]: the key is not valid UTF-8", 0),
            0u);

  // Bytes are base64 and may hold anything.
  v1::ConsoleOutput console;
  console.set_data("\xff\xfe");
  EXPECT_EQ(YamlOf(console), "data: //4=\n");
}

TEST(YamlTest, ToYamlRefusesTimestampsAndDurationsOutOfRange) {
  v1::VirtualMachine vm;
  vm.mutable_metadata()->mutable_creation_time()->set_seconds(253402300800);  // year 10000
  EXPECT_EQ(ToYamlError(vm).message(),
            "metadata.creation_time: timestamp {seconds: 253402300800, nanos: 0} is outside the "
            "years 0001 to 9999 or has nanos outside 0-999999999");
  vm.mutable_metadata()->mutable_creation_time()->set_seconds(0);
  vm.mutable_metadata()->mutable_creation_time()->set_nanos(-1);
  EXPECT_EQ(ToYamlError(vm).message().rfind("metadata.creation_time: timestamp {seconds: 0, "
                                            "nanos: -1}",
                                            0),
            0u);
  v1::VirtualMachine condition;
  condition.mutable_status()->add_conditions()->mutable_last_transition_time()->set_seconds(
      -62135596801);
  EXPECT_EQ(ToYamlError(condition).message().rfind(
                "status.conditions[0].last_transition_time: timestamp", 0),
            0u);
  // The limits themselves are written and read back.
  vm.mutable_metadata()->mutable_creation_time()->set_seconds(-62135596800);
  vm.mutable_metadata()->mutable_creation_time()->set_nanos(0);
  ExpectRoundTrip(vm);

  auto sink = KitchenFromText("timeout { seconds: 315576000001 }");
  EXPECT_EQ(ToYamlError(*sink).message(),
            "timeout: duration {seconds: 315576000001, nanos: 0} is outside +-10000 years or has "
            "seconds and nanos of different signs");
  sink = KitchenFromText("timeout { seconds: 1 nanos: -5 }");
  EXPECT_EQ(ToYamlError(*sink).message().rfind("timeout: duration {seconds: 1, nanos: -5}", 0), 0u);
  sink = KitchenFromText("timeout { seconds: -1 nanos: -5 }");
  ExpectRoundTrip(*sink);
}

TEST(YamlTest, ToYamlRefusesAnEmptyValue) {
  v1::HostConfig config;
  auto options = [&config]() -> auto& {
    return *config.mutable_backends()->mutable_compute()->mutable_options()->mutable_fields();
  };
  options()["accel"].set_string_value("tcg");
  options()["unset"];  // a Value with no kind: neither null nor anything else
  EXPECT_EQ(ToYamlError(config).message(),
            "backends.compute.options.unset: a google.protobuf.Value with no kind set cannot be "
            "written (set null_value for null)");
  options()["unset"].set_null_value(pb::NULL_VALUE);
  ExpectRoundTrip(config);

  options()["list"].mutable_list_value()->add_values()->set_number_value(1);
  options()["list"].mutable_list_value()->add_values();
  EXPECT_EQ(ToYamlError(config).message().rfind("backends.compute.options.list[1]: a "
                                                "google.protobuf.Value with no kind",
                                                0),
            0u);
  auto sink = KitchenFromText("any_value {}");
  EXPECT_EQ(ToYamlError(*sink).message().rfind("any_value: a google.protobuf.Value", 0), 0u);
}

TEST(YamlTest, ToYamlRefusesNestingParseYamlWouldRefuse) {
  // Each list level is a Value and a ListValue: two levels, as the reader counts them.
  auto nested = [](int lists) {
    pb::Value v;
    pb::Value* at = &v;
    for (int i = 0; i < lists; ++i) at = at->mutable_list_value()->add_values();
    at->set_string_value("x");
    return v;
  };
  v1::HostConfig ok;
  (*ok.mutable_backends()->mutable_compute()->mutable_options()->mutable_fields())["v"] =
      nested(29);
  ExpectRoundTrip(ok);
  v1::HostConfig deep;
  (*deep.mutable_backends()->mutable_compute()->mutable_options()->mutable_fields())["v"] =
      nested(40);
  const Status s = ToYamlError(deep);
  EXPECT_NE(s.message().find("nesting is deeper than the limit of 64 levels"), std::string::npos)
      << s;
  EXPECT_EQ(s.message().rfind("backends.compute.options.v[0][0]", 0), 0u) << s;
  // ParseYaml refuses the same depth when written by hand.
  std::string text = "backends: {compute: {options: {v: ";
  for (int i = 0; i < 40; ++i) text += "[";
  text += "x";
  for (int i = 0; i < 40; ++i) text += "]";
  text += "}}}";
  EXPECT_NE(ParseError<v1::HostConfig>(text).message().find("nesting is deeper"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Manifests.

// The error of ParseManifests on `text`.
Status ManifestError(std::string_view text) {
  const Result<std::vector<ManifestObject>> objects = ParseManifests(text);
  EXPECT_FALSE(objects.ok()) << text;
  EXPECT_EQ(objects.status().code(), StatusCode::kInvalidArgument) << objects.status();
  return objects.status();
}

std::vector<ManifestObject> Manifests(std::string_view text) {
  Result<std::vector<ManifestObject>> objects = ParseManifests(text);
  EXPECT_TRUE(objects.ok()) << objects.status() << "\n" << text;
  if (!objects.ok()) return {};
  return std::move(objects).ValueOrDie();
}

// Sets an environment variable for the lifetime of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value == nullptr) {
      ::unsetenv(name);
    } else {
      ::setenv(name, value, 1);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

constexpr char kManifest[] = R"(# A demo: an image, a volume from it and a VM booting it.
apiVersion: hci.dev/v1
kind: Image
metadata:
  name: guest
spec:
  file: /srv/images/guest.raw
  sha256: 3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351
---
kind: Volume
metadata: {name: root, labels: {app: demo}}
spec:
  source: {image: guest}
  sizeBytes: 1Gi
---
---
# comments only
---
apiVersion: hci.dev/v1
kind: VirtualMachine
metadata:
  name: demo
spec:
  vcpus: 2
  memoryMib: 256
  disks:
    - {name: root, volume: root, bus: virtio, bootOrder: 1}
  runStrategy: Manual
...
---
kind: Network
metadata: {name: vlan100}
spec: {type: l2_vlan, vlanId: 100}
--- {kind: Port, metadata: {name: p1}, spec: {network: vlan100}}
---
kind: BackupTarget
metadata: {name: nfs}
spec: {url: "nfs://127.0.0.1/export"}
---
kind: Backup
metadata: {name: b1}
spec: {target: nfs, volume: root}
)";

TEST(YamlTest, ManifestsHoldObjectsOfEveryKindInStreamOrder) {
  const std::vector<ManifestObject> objects = Manifests(kManifest);
  ASSERT_EQ(objects.size(), 7u);
  const std::pair<const char*, int> expected[] = {
      {"Image", 2}, {"Volume", 10},       {"VirtualMachine", 19}, {"Network", 31},
      {"Port", 34}, {"BackupTarget", 36}, {"Backup", 40}};
  const int documents[] = {1, 2, 5, 6, 7, 8, 9};
  for (size_t i = 0; i < objects.size(); ++i) {
    EXPECT_EQ(objects[i].kind, expected[i].first);
    EXPECT_EQ(objects[i].object->GetDescriptor()->full_name(),
              std::string("hci.v1.") + expected[i].first);
    EXPECT_EQ(objects[i].line, expected[i].second) << expected[i].first;
    EXPECT_EQ(objects[i].document, documents[i]) << expected[i].first;
  }
  EXPECT_SAME_MESSAGE(*objects[0].object, FromText<v1::Image>(R"pb(
    metadata { name: "guest" }
    spec {
      file: "/srv/images/guest.raw"
      sha256: "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351"
    }
  )pb"));
  EXPECT_SAME_MESSAGE(*objects[1].object, FromText<v1::Volume>(R"pb(
    metadata {
      name: "root"
      labels { key: "app" value: "demo" }
    }
    spec {
      size_bytes: 1073741824
      source { image: "guest" }
    }
  )pb"));
  EXPECT_SAME_MESSAGE(*objects[2].object, FromText<v1::VirtualMachine>(R"pb(
    metadata { name: "demo" }
    spec {
      vcpus: 2
      memory_mib: 256
      disks { name: "root" volume: "root" bus: DISK_BUS_VIRTIO boot_order: 1 }
      run_strategy: RUN_STRATEGY_MANUAL
    }
  )pb"));
  EXPECT_SAME_MESSAGE(*objects[4].object, FromText<v1::Port>(R"pb(
    metadata { name: "p1" }
    spec { network: "vlan100" }
  )pb"));

  // JSON is YAML too, and an empty stream holds no object.
  const auto json = Manifests(R"({"kind": "Volume", "metadata": {"name": "v"}, "spec": {}})");
  ASSERT_EQ(json.size(), 1u);
  EXPECT_EQ(json[0].line, 1);
  for (const char* empty : {"", "\n", "# nothing\n", "---\n", "---\n---\n...\n", "\xEF\xBB\xBF"}) {
    EXPECT_TRUE(Manifests(empty).empty()) << empty;
  }
  // CRLF line ends and a byte order mark do not shift the lines.
  const auto crlf = Manifests(
      "\xEF\xBB\xBFkind: Volume\r\nmetadata: {name: a}\r\n---\r\nkind: Volume\r\n"
      "metadata: {name: b}\r\n");
  ASSERT_EQ(crlf.size(), 2u);
  EXPECT_EQ(crlf[1].line, 4);
}

TEST(YamlTest, ManifestErrorsNameDocumentLineAndField) {
  const std::string text =
      "kind: Volume\nmetadata: {name: a}\n---\nkind: VirtualMachine\nmetadata:\n  name: vm\n"
      "spec:\n  memoryMib: 256\n  vcpus: two\n";
  EXPECT_EQ(ManifestError(text).message(),
            "document 2 (line 9): spec.vcpus: expected an integer (uint32), got \"two\"");
  EXPECT_EQ(ManifestError("kind: Volume\nmetadata: {name: a}\nspec:\n  sizeBytes: 1Gi\n  "
                          "sise: 2\n")
                .message(),
            "document 1 (line 5): spec.sise: unknown field in hci.v1.VolumeSpec");
  EXPECT_EQ(ManifestError("---\nkind: VirtualMachine\nmetadata: {name: vm}\nspec:\n  disks:\n"
                          "    - name: root\n      bus: virtoi\n")
                .message(),
            "document 1 (line 7): spec.disks[0].bus: unknown value \"virtoi\" (expected one of: "
            "virtio, scsi, sata)");
}

TEST(YamlTest, ManifestKindApiVersionStatusAndKeys) {
  EXPECT_EQ(ManifestError("kind: Volume\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: "
                          "b}\n")
                .message(),
            "document 2 (line 4): kind: unknown kind \"Pod\" (expected one of: VirtualMachine, "
            "Volume, Image, Network, Port, BackupTarget, Backup)");
  EXPECT_EQ(ManifestError("metadata: {name: a}\nspec: {}\n").message(),
            "document 1 (line 1): kind: missing (expected one of: VirtualMachine, Volume, Image, "
            "Network, Port, BackupTarget, Backup)");
  EXPECT_EQ(ManifestError("kind: [Volume]\nmetadata: {name: a}\n").message(),
            "document 1 (line 1): kind: expected one of: VirtualMachine, Volume, Image, Network, "
            "Port, BackupTarget, Backup; got a list");
  EXPECT_EQ(ManifestError("apiVersion: v1\nkind: Volume\nmetadata: {name: a}\n").message(),
            "document 1 (line 1): apiVersion: \"v1\" is not supported (expected \"hci.dev/v1\" "
            "or no apiVersion)");
  EXPECT_EQ(ManifestError("kind: VirtualMachine\nmetadata: {name: a}\nspec: {vcpus: 1}\nstatus:\n"
                          "  phase: running\n")
                .message(),
            "document 1 (line 4): status: is written by the backend and cannot be set in a "
            "manifest (remove it)");
  EXPECT_EQ(ManifestError("kind: Volume\nmetadata: {name: a}\nspecs: {}\n").message(),
            "document 1 (line 3): specs: unknown key (expected apiVersion, kind, metadata and "
            "spec; did you mean \"spec\"?)");
  EXPECT_EQ(ManifestError("kind: Volume\nkind: Image\n").message(),
            "document 1 (line 2): kind: duplicate key");
  EXPECT_EQ(ManifestError("- kind: Volume\n").message(),
            "document 1 (line 1): expected a mapping with apiVersion, kind, metadata and spec, "
            "got a list");
}

TEST(YamlTest, ManifestObjectsNeedAValidName) {
  EXPECT_EQ(ManifestError("kind: Volume\nspec: {sizeBytes: 4096}\n").message(),
            "document 1 (line 1): metadata.name: missing (every object in a manifest needs a "
            "name)");
  EXPECT_EQ(ManifestError("kind: Volume\nmetadata:\n  labels: {a: b}\n").message(),
            "document 1 (line 3): metadata.name: missing (every object in a manifest needs a "
            "name)");
  const Status bad = ManifestError("kind: Volume\nmetadata:\n  name: Data_1\n");
  EXPECT_EQ(bad.message().rfind("document 1 (line 3): metadata.name: \"Data_1\" is not a valid "
                                "name: ",
                                0),
            0u)
      << bad;
}

TEST(YamlTest, ManifestsExpandEnvironmentReferences) {
  ScopedEnv guest("HCI_YAML_TEST_GUEST", "/srv/guest dir");
  ScopedEnv cpus("HCI_YAML_TEST_CPUS", "2");
  ScopedEnv bus("HCI_YAML_TEST_BUS", "scsi");
  ScopedEnv unset("HCI_YAML_TEST_UNSET", nullptr);
  const auto objects = Manifests(R"(kind: VirtualMachine
metadata:
  name: vm
  labels: {"${HCI_YAML_TEST_CPUS}": "${HCI_YAML_TEST_CPUS}"}
spec:
  vcpus: ${HCI_YAML_TEST_CPUS}
  memoryMib: ${HCI_YAML_TEST_CPUS}Gi
  kernelBoot:
    kernelPath: ${HCI_YAML_TEST_GUEST}/vmlinux
    initrdPath: "${HCI_YAML_TEST_GUEST}/initramfs.cpio.gz"
    cmdline: echo $${HOME} costs $5 $$ ${HCI_YAML_TEST_CPUS}$${
  disks: [{name: d, volume: v, bus: "${HCI_YAML_TEST_BUS}"}]
)");
  ASSERT_EQ(objects.size(), 1u);
  EXPECT_SAME_MESSAGE(*objects[0].object, FromText<v1::VirtualMachine>(R"pb(
    metadata {
      name: "vm"
      labels { key: "${HCI_YAML_TEST_CPUS}" value: "2" }
    }
    spec {
      vcpus: 2
      memory_mib: 2048
      kernel_boot {
        kernel_path: "/srv/guest dir/vmlinux"
        initrd_path: "/srv/guest dir/initramfs.cpio.gz"
        cmdline: "echo ${HOME} costs $5 $$ 2${"
      }
      disks { name: "d" volume: "v" bus: DISK_BUS_SCSI }
    }
  )pb"));

  EXPECT_EQ(ManifestError("kind: Image\nmetadata: {name: i}\nspec:\n  file: "
                          "${HCI_YAML_TEST_UNSET}/disk.raw\n")
                .message(),
            "document 1 (line 4): spec.file: environment variable HCI_YAML_TEST_UNSET is not set "
            "(referenced as ${HCI_YAML_TEST_UNSET})");
  EXPECT_EQ(ManifestError("kind: Image\nmetadata: {name: i}\nspec:\n  file: /a/${HOME\n").message(),
            "document 1 (line 4): spec.file: unterminated environment reference \"${HOME\" "
            "(write $${ for a literal ${)");
  EXPECT_EQ(ManifestError("kind: Image\nmetadata: {name: i}\nspec: {file: '/${1X}'}\n").message(),
            "document 1 (line 3): spec.file: \"${1X}\" is not a valid environment reference "
            "(expected ${NAME} with letters, digits and '_'; write $${ for a literal ${)");
  // The expanded text is what is interpreted, so it is checked like any value.
  ScopedEnv word("HCI_YAML_TEST_WORD", "many");
  EXPECT_EQ(ManifestError("kind: VirtualMachine\nmetadata: {name: v}\nspec: {vcpus: "
                          "\"${HCI_YAML_TEST_WORD}\"}\n")
                .message(),
            "document 1 (line 3): spec.vcpus: expected an integer (uint32), got \"many\"");

  // ParseYaml (host configs) does not expand.
  const auto config = ParseOk<v1::HostConfig>("stateDir: ${HCI_YAML_TEST_GUEST}\n");
  EXPECT_EQ(config.state_dir(), "${HCI_YAML_TEST_GUEST}");
}

TEST(YamlTest, ManifestSyntaxErrorsAndHostileInput) {
  const Status syntax = ManifestError(
      "kind: Volume\nmetadata: {name: a}\n---\nkind: Volume\nmetadata: {name: b\n---\nkind: x\n");
  EXPECT_EQ(syntax.message().rfind("document 2 (line ", 0), 0u) << syntax;
  EXPECT_NE(syntax.message().find("invalid YAML: "), std::string::npos) << syntax;

  // A stray "," makes yaml-cpp 0.7 report empty documents forever: an error, not a hang.
  EXPECT_EQ(ManifestError("{kind: Volume, metadata: {name: a}},").message(),
            "document 2 (line 1): invalid YAML: unexpected \",\"");
  EXPECT_FALSE(ManifestError("kind: Volume\nmetadata: {name: a}\n---\n,\n").ok());
  EXPECT_FALSE(ManifestError(",").ok());

  EXPECT_EQ(ManifestError("kind: Volume\nmetadata: {name: a}\n---\nkind: \xff\n").message(),
            "line 4: the manifest is not valid UTF-8 text");
  EXPECT_EQ(ManifestError(std::string("kind: Volume\n\0", 14)).message(),
            "line 2: the manifest contains a NUL byte");

  // Alias bombs are stopped across documents by one node budget.
  std::string bomb =
      "kind: BackupTarget\nmetadata: {name: t}\nspec:\n  options:\n"
      "    a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'j'; ++c) {
    bomb += std::string("    ") + c + ": &" + c + " [";
    for (int i = 0; i < 10; ++i) bomb += std::string(i == 0 ? "*" : ", *") + char(c - 1);
    bomb += "]\n";
  }
  EXPECT_NE(ManifestError(bomb).message().find("expands to more than"), std::string::npos);

  // Documents that start indented after "..." keep their indentation.
  const auto indented = Manifests(
      "kind: Volume\nmetadata: {name: a}\n...\n  kind: Volume\n  metadata:\n"
      "    name: b\n");
  ASSERT_EQ(indented.size(), 2u);
  EXPECT_EQ(indented[1].line, 4);
}

TEST(YamlTest, ManifestGarbageIsRejectedOrRoundTrips) {
  std::mt19937 rng(20240502);
  const std::string alphabet = "{}[]:,-?&*!|>'\"%@`#~ \n\tab01.$kind:Volume metadata name spec";
  for (int i = 0; i < 2000; ++i) {
    std::string text = (i % 2 == 0) ? "kind: Volume\nmetadata: {name: a}\n" : "";
    const size_t length = rng() % 64;
    for (size_t j = 0; j < length; ++j) {
      text += (i % 5 == 0) ? static_cast<char>(rng() & 0xFF) : alphabet[rng() % alphabet.size()];
    }
    const Result<std::vector<ManifestObject>> objects = ParseManifests(text);
    if (!objects.ok()) {
      EXPECT_EQ(objects.status().code(), StatusCode::kInvalidArgument) << objects.status();
      continue;
    }
    for (const ManifestObject& object : *objects) ExpectRoundTrip(*object.object);
  }
}

// ---------------------------------------------------------------------------------------------
// Hostile input.

TEST(YamlTest, NestingDepthIsLimited) {
  std::string deep = "backends:\n  compute:\n    options: ";
  for (int i = 0; i < 200; ++i) deep += "{a: ";
  deep += "1";
  for (int i = 0; i < 200; ++i) deep += "}";
  const Status s = ParseError<v1::HostConfig>(deep);
  EXPECT_NE(s.message().find("nesting is deeper than the limit of 64 levels"), std::string::npos)
      << s;
  EXPECT_EQ(s.message().rfind("backends.compute.options.a.a.a.", 0), 0u) << s;

  std::string lists = "anyValue: ";
  for (int i = 0; i < 20; ++i) lists += "[";
  for (int i = 0; i < 20; ++i) lists += "]";
  auto k = KitchenFromYaml(lists);
  EXPECT_GT(k->ByteSizeLong(), 0u);

  // Far deeper than any parser's stack can take: yaml-cpp's own guard answers.
  std::string abyss(100000, '[');
  EXPECT_FALSE(ParseError<v1::HostConfig>("a: " + abyss).ok());
}

TEST(YamlTest, AliasBombsAreStopped) {
  // "Billion laughs": ten levels of ten aliases each expand to 10^10 nodes.
  std::string bomb =
      "backends:\n  compute:\n    options:\n      a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'j'; ++c) {
    bomb += std::string("      ") + c + ": &" + c + " [";
    for (int i = 0; i < 10; ++i) bomb += std::string(i == 0 ? "*" : ", *") + char(c - 1);
    bomb += "]\n";
  }
  const Status s = ParseError<v1::HostConfig>(bomb);
  EXPECT_NE(s.message().find("the document expands to more than"), std::string::npos) << s;

  // Ordinary aliases work.
  const auto meta = ParseOk<v1::ObjectMeta>("labels: &l {app: web}\nannotations: *l\n");
  EXPECT_EQ(meta.annotations().at("app"), "web");
  // An alias inside its own anchor is a cycle: an error, not a crash or a hang.
  EXPECT_FALSE(ParseError<pb::Struct>("a: &x [*x]\n").ok());
  EXPECT_FALSE(ParseError<pb::Struct>("&x {a: *x}\n").ok());
}

TEST(YamlTest, GarbageIsRejectedOrRoundTrips) {
  std::mt19937 rng(20240501);
  const std::string alphabet = "{}[]:,-?&*!|>'\"%@`#~ \n\tab01.eE+_\\";
  size_t parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string text;
    const size_t length = rng() % 48;
    for (size_t j = 0; j < length; ++j) {
      text += (i % 3 == 0) ? static_cast<char>(rng() & 0xFF) : alphabet[rng() % alphabet.size()];
    }
    for (const pb::Message* prototype :
         {static_cast<const pb::Message*>(&v1::VirtualMachine::default_instance()),
          &testing::KitchenSinkPrototype(),
          static_cast<const pb::Message*>(&pb::Struct::default_instance())}) {
      std::unique_ptr<pb::Message> m(prototype->New());
      const Status status = ParseYaml(text, m.get());
      if (status.ok()) {
        ++parsed;
        ExpectRoundTrip(*m);
      } else {
        EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status;
        EXPECT_EQ(m->ByteSizeLong(), 0u);
      }
    }
  }
  EXPECT_GT(parsed, 100u);  // the alphabet does produce valid documents
}

}  // namespace
}  // namespace hci
