// Runs the real hcictl binary (an argv, no shell) against the mock plugin, with a temporary state
// directory and host config, and checks what it prints and how it exits.
//
// The mock keeps its objects in memory, per Host: each hcictl process starts empty. Flows that
// need several commands on the same objects therefore run as one `hcictl batch`, which keeps one
// Host for all its lines.
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "hci/hci.h"
#include "process/process.h"

namespace hci {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;

constexpr int kUsage = 2;
int Code(StatusCode code) { return 64 + static_cast<int>(code); }

constexpr char kHostConfig[] = R"(# Every backend kind served by the mock plugin.
backends:
  compute: {plugin: mock}
  storage: {plugin: mock}
  network: {plugin: mock}
  image: {plugin: mock}
  backup: {plugin: mock}
)";

constexpr char kManifest[] = R"(apiVersion: hci.dev/v1
kind: Image
metadata:
  name: guest
spec:
  file: ${HCI_HCICTL_TEST_DIR}/guest.raw
---
kind: Volume
metadata: {name: data}
spec:
  sizeBytes: 1Gi
  source: {image: guest}
---
kind: VirtualMachine
metadata:
  name: demo
  labels: {app: demo}
spec:
  vcpus: 1
  memoryMib: 256
  disks:
    - {name: root, volume: data, bootOrder: 1}
  runStrategy: Manual
)";

constexpr char kCreated[] =
    "image/guest created\nvolume/data created\nvm/demo created\nvm/demo started\n";

struct Outcome {
  int code = -1;
  std::string out;
  std::string err;
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  return os << "exit " << o.code << "\n--- stdout\n" << o.out << "--- stderr\n" << o.err;
}

class HcictlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "hcictl-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
    state_dir_ = dir_ + "/state";
    config_ = Write("host.yaml", kHostConfig);
    manifest_ = Write("demo.yaml", kManifest);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, std::string_view content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << content;
    return path;
  }

  // Runs hcictl with `args` and the test's config, state dir and plugins; `env` adds to or
  // overrides that.
  Outcome Run(std::vector<std::string> args,
              std::vector<std::pair<std::string, std::string>> env = {},
              std::optional<std::string> stdin_data = std::nullopt) {
    process::RunOptions options;
    options.argv = {HCI_TEST_HCICTL};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.env = {{"HCI_CONFIG", config_},
                   {"HCI_STATE_DIR", state_dir_},
                   {"HCI_PLUGIN_PATH", HCI_TEST_PLUGIN_DIR},
                   {"HCI_HCICTL_TEST_DIR", dir_}};
    for (auto& [name, value] : env) options.env.emplace_back(name, value);
    options.stdin_data = std::move(stdin_data);
    options.timeout = std::chrono::seconds(60);
    Result<process::RunResult> result = process::Run(options);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    EXPECT_EQ(result->term_signal, 0)
        << "hcictl was killed by signal " << result->term_signal << "\n"
        << result->stderr_data;
    return {result->exit_code, result->stdout_data, result->stderr_data};
  }

  // `hcictl batch` of `lines`, from a file.
  Outcome Batch(const std::string& lines, std::vector<std::pair<std::string, std::string>> env = {},
                std::optional<std::string> stdin_data = std::nullopt) {
    return Run({"batch", Write("batch.txt", lines)}, std::move(env), std::move(stdin_data));
  }

  std::string dir_;
  std::string state_dir_;
  std::string config_;
  std::string manifest_;
};

// `text` with the AGE at the end of each table row replaced by "AGE", so that a run crossing a
// second boundary compares equal.
std::string WithoutAges(const std::string& text) {
  static const std::regex kAge(R"(( +)[0-9]+s$)", std::regex::multiline);
  return std::regex_replace(text, kAge, "$1AGE");
}

// The part of `text` after `prefix`, which it must start with.
std::string After(const std::string& text, const std::string& prefix) {
  EXPECT_EQ(text.substr(0, prefix.size()), prefix) << text;
  return text.size() >= prefix.size() ? text.substr(prefix.size()) : "";
}

TEST_F(HcictlTest, ApplyTwiceSaysUnchanged) {
  const Outcome o = Batch("apply -f " + manifest_ + "\napply -f " + manifest_ + "\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out, std::string(kCreated) +
                       "image/guest unchanged\nvolume/data unchanged\nvm/demo unchanged\n");
  // Progress lines go to stderr (not a terminal here: a line per 10 %).
  EXPECT_NE(o.err.find("image/guest importing: 100% (64Mi of 64Mi)"), std::string::npos) << o;
}

// The main job's manifest, against the mock (which imports any path as 64 MiB of zeros): it
// parses, its environment references resolve, and the mock accepts every object. The `guest`
// test boots it for real.
TEST_F(HcictlTest, DemoManifestAppliesAgainstTheMock) {
  const std::string demo = std::string(HCI_TEST_SOURCE_DIR) + "/samples/manifests/demo.yaml";
  const std::vector<std::pair<std::string, std::string>> env = {
      {"HCI_TEST_GUEST", "/srv/test-guest"},
      {"HCI_TEST_GUEST_SHA256",
       "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351"}};
  Outcome o = Batch("apply -f " + demo + "\nget vm demo -o yaml\n", env);
  ASSERT_EQ(o.code, 0) << o;
  v1::VirtualMachine vm;
  ASSERT_TRUE(ParseYaml(After(o.out,
                              "image/test-guest created\nvolume/demo-root created\n"
                              "vm/demo created\nvm/demo started\n"),
                        &vm)
                  .ok())
      << o;
  EXPECT_EQ(vm.spec().kernel_boot().kernel_path(), "/srv/test-guest/vmlinux");
  EXPECT_EQ(vm.spec().kernel_boot().cmdline(), "console=ttyS0 panic=-1 quiet");
  EXPECT_EQ(vm.spec().run_strategy(), v1::RUN_STRATEGY_MANUAL);
  EXPECT_EQ(vm.spec().accelerator(), "auto");

  ::unsetenv("HCI_TEST_GUEST");
  o = Run({"apply", "-f", demo}, {{"HCI_TEST_GUEST_SHA256", "0"}});
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_NE(o.err.find("spec.file: environment variable HCI_TEST_GUEST is not set"),
            std::string::npos)
      << o;
}

TEST_F(HcictlTest, ApplyCreatesInDependencyOrderAndCanLeaveVmsStopped) {
  // The VM first in the file, the image last: apply still creates the image first.
  const std::string reversed = Write("reversed.yaml", R"(kind: VirtualMachine
metadata: {name: demo}
spec: {vcpus: 1, memoryMib: 128, disks: [{name: root, volume: data}]}
---
kind: Network
metadata: {name: vlan100}
spec: {type: l2_vlan, vlanId: 100}
---
kind: Volume
metadata: {name: data}
spec: {source: {image: guest}}
---
kind: Image
metadata: {name: guest}
spec: {url: "https://images.example/guest.qcow2"}
)");
  const Outcome o = Batch("apply --no-start -f " + reversed + "\nget vm demo\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(WithoutAges(After(o.out,
                              "image/guest created\nnetwork/vlan100 created\n"
                              "volume/data created\nvm/demo created\n")),
            "NAME   PHASE     REASON    VCPUS   MEMORY   ACCEL    AGE\n"
            "demo   Stopped   Created   1       128Mi    <none>   AGE\n");
}

TEST_F(HcictlTest, ApplyRefusesAChangedSpecAndDuplicates) {
  const std::string bigger = Write("bigger.yaml", R"(kind: Volume
metadata: {name: data}
spec: {sizeBytes: 2Gi, source: {image: guest}}
)");
  Outcome o = Batch("apply -f " + manifest_ + "\napply -f " + bigger + "\n");
  EXPECT_EQ(o.code, Code(StatusCode::kAlreadyExists)) << o;
  EXPECT_NE(o.err.find("error: line 2: " + bigger + ": document 1 (line 1): volume/data: "),
            std::string::npos)
      << o;
  EXPECT_NE(o.err.find("delete it first"), std::string::npos) << o;

  o = Run({"apply", "-f", manifest_, "-f", manifest_});
  EXPECT_EQ(o.code, kUsage) << o;
  EXPECT_NE(o.err.find("image/guest: defined twice (first at " + manifest_ +
                       ": document 1 (line 1): image/guest)"),
            std::string::npos)
      << o;
}

TEST_F(HcictlTest, GetInEveryOutputFormat) {
  const std::string names = "image/guest\nvolume/data\nvm/demo\n";
  const std::string apply = "apply -o name -f " + manifest_ + "\n";

  Outcome o = Batch(apply + "get vm demo -o json\n");
  ASSERT_EQ(o.code, 0) << o;
  v1::VirtualMachine vm;
  const auto parsed = pb::util::JsonStringToMessage(After(o.out, names), &vm);
  ASSERT_TRUE(parsed.ok()) << parsed.ToString() << "\n" << o;
  EXPECT_EQ(vm.metadata().name(), "demo");
  EXPECT_EQ(vm.metadata().labels().at("app"), "demo");
  EXPECT_EQ(vm.spec().memory_mib(), 256u);
  EXPECT_EQ(vm.spec().disks(0).volume(), "data");
  EXPECT_EQ(vm.status().phase(), v1::VM_PHASE_RUNNING);

  // A list is a JSON array of the objects.
  o = Batch(apply + "get volume -o json\n");
  ASSERT_EQ(o.code, 0) << o;
  v1::ListVolumesResponse volumes;
  ASSERT_TRUE(
      pb::util::JsonStringToMessage("{\"volumes\": " + After(o.out, names) + "}", &volumes).ok())
      << o;
  ASSERT_EQ(volumes.volumes_size(), 1);
  EXPECT_EQ(volumes.volumes(0).spec().size_bytes(), 1ull << 30);
  EXPECT_EQ(volumes.volumes(0).status().attached_to(), "demo");

  o = Batch(apply + "get vm demo -o yaml\n");
  ASSERT_EQ(o.code, 0) << o;
  v1::VirtualMachine from_yaml;
  ASSERT_TRUE(ParseYaml(After(o.out, names), &from_yaml).ok()) << o;
  EXPECT_EQ(from_yaml.metadata().name(), "demo");
  EXPECT_EQ(from_yaml.status().phase(), v1::VM_PHASE_RUNNING);

  o = Batch(apply + "get image -o yaml\nget image guest -o name\n");
  ASSERT_EQ(o.code, 0) << o;
  const std::string images = After(o.out, names);
  ASSERT_TRUE(images.ends_with("image/guest\n")) << o;
  v1::Image image;
  ASSERT_TRUE(ParseYaml(images.substr(0, images.size() - 12), &image).ok()) << o;
  EXPECT_EQ(image.status().phase(), v1::IMAGE_PHASE_READY);
  EXPECT_EQ(image.spec().file(), dir_ + "/guest.raw");  // ${HCI_HCICTL_TEST_DIR} expanded

  o = Batch(apply + "get vm\nget volume\nget image\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(WithoutAges(After(o.out, names)),
            "NAME   PHASE     REASON    VCPUS   MEMORY   ACCEL   AGE\n"
            "demo   Running   Started   1       256Mi    tcg     AGE\n"
            "NAME   PHASE      SIZE   ALLOCATED   SOURCE        ATTACHED-TO   AGE\n"
            "data   Attached   1Gi    64Mi        image/guest   demo          AGE\n"
            "NAME    PHASE   FORMAT   SIZE   STORED   AGE\n"
            "guest   Ready   raw      64Mi   64Mi     AGE\n");

  o = Run({"get", "vm"});
  EXPECT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out, "");
  EXPECT_EQ(o.err, "No resources found.\n");
  o = Run({"get", "vm", "-o", "json"});
  EXPECT_EQ(o.out, "[]\n") << o;
}

TEST_F(HcictlTest, DescribeShowsSpecStatusConditionsAndEvents) {
  const Outcome o = Batch("apply -f " + manifest_ + "\ndescribe vm demo\ndescribe volume data\n");
  ASSERT_EQ(o.code, 0) << o;
  const std::string text = After(o.out, kCreated);
  for (const char* expected :
       {"Kind:         VirtualMachine\nName:         demo\n", "Labels:       app=demo\n",
        "Spec:\n  vcpus: 1\n  memoryMib: 256\n", "Status:\n  phase: running\n",
        "Events:\n  AGE   TYPE     REASON", "VmPhaseChanged", "Kind:         Volume\n",
        "Conditions:\n  TYPE    STATUS   REASON", "VolumeAttached"}) {
    EXPECT_NE(text.find(expected), std::string::npos) << expected << "\n" << o;
  }
}

TEST_F(HcictlTest, VmLifecycle) {
  const Outcome o = Batch("apply -f " + manifest_ +
                          "\n"
                          "vm pause demo\n"
                          "vm resume demo\n"
                          "vm restart demo\n"
                          "vm stop demo --grace-period 30s\n"
                          "vm start demo\n"
                          "vm stop --force demo\n"
                          "get vm demo -o name\n"
                          "vm pause demo\n");
  EXPECT_EQ(o.code, Code(StatusCode::kFailedPrecondition)) << o;
  EXPECT_EQ(After(o.out, kCreated),
            "vm/demo paused\nvm/demo resumed\nvm/demo restarted\n"
            "vm/demo stopped (GuestShutdown)\nvm/demo started\nvm/demo stopped (ForcedStop)\n"
            "vm/demo\n");
  EXPECT_NE(o.err.find("error: line 9: "), std::string::npos) << o;

  EXPECT_EQ(Run({"vm", "stop", "demo", "--force", "--grace-period", "5s"}).code, kUsage);
  EXPECT_EQ(Run({"vm", "stop", "demo", "--grace-period", "soon"}).code, kUsage);
  EXPECT_EQ(Run({"vm", "start"}).code, kUsage);
  EXPECT_EQ(Run({"vm", "start", "nope"}).code, Code(StatusCode::kNotFound));
}

TEST_F(HcictlTest, ConsoleUntilFollowAndAttach) {
  const std::string apply = "apply -f " + manifest_ + "\n";
  Outcome o = Batch(apply + "vm console demo --until 'mock: (re)?ady$' --timeout 10s\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(After(o.out, kCreated), "hci-mock: ready\n");

  // --follow prints every line up to the match.
  o = Batch(apply + "vm console demo --follow --until ready --timeout 10s\n");
  ASSERT_EQ(o.code, 0) << o;
  const std::string followed = After(o.out, kCreated);
  EXPECT_EQ(followed.rfind("hci-mock: starting vm \"demo\"", 0), 0u) << o;
  EXPECT_TRUE(followed.ends_with("hci-mock: ready\n")) << o;

  // No match while the VM runs: DeadlineExceeded after the timeout.
  o = Batch(apply + "vm console demo --until 'no such line' --timeout 1s\n");
  EXPECT_EQ(o.code, Code(StatusCode::kDeadlineExceeded)) << o;
  EXPECT_NE(o.err.find("no console line matched \"no such line\" within 1s"), std::string::npos)
      << o;
  // No match and the VM stopped: FailedPrecondition at once.
  o = Batch(apply + "vm stop demo\nvm console demo --until 'no such line' --timeout 60s\n");
  EXPECT_EQ(o.code, Code(StatusCode::kFailedPrecondition)) << o;
  EXPECT_NE(o.err.find("vm/demo is Stopped (GuestShutdown) and no console line matched"),
            std::string::npos)
      << o;

  // The whole log without flags; --skip-existing with --until only sees new lines.
  o = Batch(apply + "vm console demo\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_NE(After(o.out, kCreated).find("hci-mock: disk root -> volume data\n"), std::string::npos);
  o = Batch(apply + "vm console demo --skip-existing --until ready --timeout 1s\n");
  EXPECT_EQ(o.code, Code(StatusCode::kDeadlineExceeded)) << o;

  // --attach: the mock echoes what is written; input from a pipe ends the session.
  o = Batch(apply + "vm console demo --attach\n", {}, "hello from the test\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_NE(After(o.out, kCreated).find("hello from the test"), std::string::npos) << o;
  EXPECT_NE(o.err.find("Connected to vm/demo"), std::string::npos) << o;

  EXPECT_EQ(Run({"vm", "console", "demo", "--until", "(unclosed"}).code, kUsage);
  EXPECT_EQ(Run({"vm", "console", "demo", "--timeout", "1s"}).code, kUsage);
  EXPECT_EQ(Run({"vm", "console", "demo", "--attach", "--follow"}).code, kUsage);
  EXPECT_EQ(Run({"vm", "console", "nope"}).code, Code(StatusCode::kNotFound));
}

TEST_F(HcictlTest, DeleteByNameAndByManifest) {
  Outcome o = Batch("apply -f " + manifest_ + "\ndelete vm demo\n");
  EXPECT_EQ(o.code, Code(StatusCode::kFailedPrecondition)) << o;
  EXPECT_NE(o.err.find("error: vm/demo: "), std::string::npos) << o;

  o = Batch("apply -f " + manifest_ + "\ndelete vm demo --force\ndelete -f " + manifest_ +
            " --ignore-not-found\nget vm\nget volume\nget image\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(After(o.out, kCreated), "vm/demo deleted\nvolume/data deleted\nimage/guest deleted\n");
  EXPECT_NE(o.err.find("No resources found.\nNo resources found.\nNo resources found.\n"),
            std::string::npos)
      << o;

  // Reverse dependency order, and --force for the running VM.
  o = Batch("apply -f " + manifest_ + "\ndelete -f " + manifest_ + " --force\n");
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(After(o.out, kCreated), "vm/demo deleted\nvolume/data deleted\nimage/guest deleted\n");

  o = Run({"delete", "vm", "nope"});
  EXPECT_EQ(o.code, Code(StatusCode::kNotFound)) << o;
  EXPECT_NE(o.err.find("error: vm/nope: "), std::string::npos) << o;
  EXPECT_EQ(Run({"delete", "vm", "nope", "--ignore-not-found"}).code, 0);
  o = Run({"delete", "-f", manifest_});
  EXPECT_EQ(o.code, Code(StatusCode::kNotFound)) << o;
  EXPECT_NE(o.err.find(manifest_ + ": document 3 (line 14): vm/demo: "), std::string::npos) << o;
  EXPECT_EQ(Run({"delete", "operation", "op-1"}).code, kUsage);
  EXPECT_EQ(Run({"delete", "vm"}).code, kUsage);
}

TEST_F(HcictlTest, BadManifestsNameDocumentLineAndField) {
  const std::string bad = Write("bad.yaml", R"(kind: Volume
metadata: {name: data}
spec: {sizeBytes: 1Gi}
---
kind: VirtualMachine
metadata:
  name: demo
spec:
  memoryMib: 256
  vcpus: two
)");
  Outcome o = Run({"apply", "-f", bad});
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_EQ(o.err, "error: " + bad +
                       ": document 2 (line 10): spec.vcpus: expected an integer (uint32), got "
                       "\"two\"\n");
  EXPECT_EQ(o.out, "");  // nothing was applied

  const std::string first = Write("first.yaml",
                                  "kind: VirtualMachine\nmetadata: {name: a}\n"
                                  "spec:\n  vcpus: -1\n");
  o = Run({"apply", "-f", first});
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_NE(o.err.find("document 1 (line 4): spec.vcpus: "), std::string::npos) << o;

  // What only the backend can check is reported with the document too.
  const std::string zero =
      Write("zero.yaml", "kind: VirtualMachine\nmetadata: {name: a}\nspec: {vcpus: 0}\n");
  o = Run({"apply", "-f", zero});
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_NE(o.err.find("error: " + zero + ": document 1 (line 1): vm/a: spec.vcpus: "),
            std::string::npos)
      << o;

  const std::string pod = Write("pod.yaml", "kind: Pod\nmetadata: {name: web}\n");
  o = Run({"apply", "-f", pod});
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_NE(o.err.find("document 1 (line 1): kind: unknown kind \"Pod\" (expected one of: "
                       "VirtualMachine, Volume, Image, Network, Port, BackupTarget, Backup)"),
            std::string::npos)
      << o;

  // Manifests come from stdin too.
  o = Run({"apply", "-f", "-"}, {}, "kind: Volume\nmetadata: {name: v}\nstatus: {}\n");
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_NE(o.err.find("error: stdin: document 1 (line 3): status: "), std::string::npos) << o;
  o = Run({"apply", "-f", dir_ + "/missing.yaml"});
  EXPECT_EQ(o.code, Code(StatusCode::kNotFound)) << o;
  o = Run({"apply", "-f", "-"}, {}, "# nothing\n");
  EXPECT_EQ(o.code, kUsage) << o;
}

TEST_F(HcictlTest, EnvironmentReferencesInManifests) {
  const std::string manifest = Write("env.yaml", R"(kind: Image
metadata: {name: guest}
spec:
  file: ${HCI_HCICTL_TEST_UNSET}/disk.raw
)");
  Outcome o = Run({"apply", "-f", manifest}, {{"HCI_HCICTL_TEST_UNSET", ""}});
  ASSERT_EQ(o.code, 0) << o;            // set, if empty: "/disk.raw"
  ::unsetenv("HCI_HCICTL_TEST_UNSET");  // hcictl inherits the test's environment otherwise
  o = Run({"apply", "-f", manifest});
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_EQ(o.err, "error: " + manifest +
                       ": document 1 (line 4): spec.file: environment variable "
                       "HCI_HCICTL_TEST_UNSET is not set (referenced as "
                       "${HCI_HCICTL_TEST_UNSET})\n");
}

TEST_F(HcictlTest, ExitCodesTellErrorsApart) {
  Outcome o = Run({"get", "vm", "nope"});
  EXPECT_EQ(o.code, Code(StatusCode::kNotFound)) << o;
  EXPECT_EQ(o.err, "error: vm \"nope\" does not exist\n");
  o = Run({"get", "vm", "Not_A_Name"});
  EXPECT_EQ(o.code, Code(StatusCode::kInvalidArgument)) << o;
  EXPECT_NE(o.err.find("\"Not_A_Name\" is not a valid name"), std::string::npos) << o;

  // Usage errors: 2, with a hint.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {},
           {"frobnicate"},
           {"get"},
           {"get", "vm", "--bogus"},
           {"get", "vm", "-o", "xml"},
           {"get", "vmz"},
           {"get", "snapshot", "s1"},
           {"get", "vm", "--volume", "v"},
           {"image", "import", "x"},
           {"image", "import", "x", "--url", "http://a/b", "--file", "/a"},
           {"volume", "create", "v"},
           {"volume", "create", "v", "--size", "ten"},
           {"volume", "create", "v", "--size", "999999999999999999999999999999Ei"},
           {"volume", "create", "v", "--size", "1.00000000001Ki"},
           {"vm", "console", "demo", "--until", "x", "--timeout", "1e9s"},
           {"volume", "create", "v", "--from-snapshot", "nosep"},
           {"volume", "snapshot", "create", "v"},
           {"--state-dir"},
       }) {
    o = Run(args);
    EXPECT_EQ(o.code, kUsage) << ::testing::PrintToString(args) << "\n" << o;
    EXPECT_EQ(o.err.rfind("error: ", 0), args.empty() ? std::string::npos : 0u) << o;
  }
  o = Run({"get", "--help"});
  EXPECT_EQ(o.code, 0) << o;
  EXPECT_NE(o.out.find("Usage:"), std::string::npos) << o;
  o = Run({"--help"});
  EXPECT_NE(o.out.find("  69   NotFound\n"), std::string::npos) << o;
}

TEST_F(HcictlTest, ImagesVolumesAndSnapshots) {
  Outcome o = Run({"image", "import", "img", "--file", "guest.raw", "--format", "qcow2"});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out, "image/img imported\n");
  EXPECT_NE(o.err.find("image/img importing: 100% (64Mi of 64Mi)\n"), std::string::npos) << o;
  o = Run({"image", "import", "img", "--url", "https://images.example/x.raw", "--sha256",
           std::string(64, 'a')});
  EXPECT_EQ(o.code, Code(StatusCode::kDataLoss)) << o;
  EXPECT_NE(o.err.find("error: image/img: import failed: "), std::string::npos) << o;

  o = Batch(
      "volume create blank --size 10Gi\n"
      "volume resize blank --size 20Gi\n"
      "volume scrub blank --wait --report-only\n"
      "volume snapshot create blank s1\n"
      "volume snapshot list blank\n"
      "get snapshot s1 --volume blank -o name\n"
      "volume snapshot revert blank s1\n"
      "volume create copy --from-snapshot blank/s1\n"
      "volume snapshot delete blank s1\n"
      "get volume -o name\n"
      "volume create blank --size 1Gi\n");
  EXPECT_EQ(o.code, Code(StatusCode::kAlreadyExists)) << o;
  const std::string expected =
      "volume/blank created\n"
      "volume/blank resized to 20Gi\n"
      "volume/blank scrubbed: 20Gi compared, 0 mismatched, 0 repaired (report only)\n"
      "snapshot/s1 created\n"
      "NAME   VOLUME   READY   SIZE   AGE\n"
      "s1     blank    true    0      AGE\n"
      "snapshot/s1\n"
      "volume/blank reverted to snapshot s1\n"
      "volume/copy created\n"
      "snapshot/s1 deleted\n"
      "volume/blank\nvolume/copy\n";
  EXPECT_EQ(WithoutAges(o.out), expected) << o;
  EXPECT_NE(o.err.find("error: line 11: volume/blank already exists"), std::string::npos) << o;
}

TEST_F(HcictlTest, PluginsAndVersion) {
  Outcome o = Run({"plugins"});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out.rfind("NAME ", 0), 0u) << o;
  EXPECT_NE(o.out.find("mock "), std::string::npos) << o;
  // Works even when the configured plugin does not exist (that is when it is needed).
  const std::string broken = Write("broken.yaml", "backends: {compute: {plugin: nope}}\n");
  o = Run({"get", "plugin", "mock", "-o", "yaml"}, {{"HCI_CONFIG", broken}});
  ASSERT_EQ(o.code, 0) << o;
  v1::PluginInfo info;
  ASSERT_TRUE(ParseYaml(o.out, &info).ok()) << o;
  EXPECT_EQ(info.state(), v1::PLUGIN_STATE_LOADED);
  EXPECT_EQ(info.kinds_size(), 5);

  o = Run({"version"});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out.rfind(std::string("hcictl ") + HCI_VERSION_STRING + " ", 0), 0u) << o;
  o = Run({"version", "-o", "yaml"});
  EXPECT_NE(o.out.find("pluginAbi: " + std::to_string(kPluginAbiVersion) + "\n"), std::string::npos)
      << o;
  EXPECT_FALSE(fs::exists(state_dir_));  // none of the above opened a Host on the state dir

  o = Run({"get", "vm"}, {{"HCI_CONFIG", broken}});
  EXPECT_EQ(o.code, Code(StatusCode::kNotFound)) << o;
  EXPECT_NE(o.err.find("`hcictl plugins` lists what the loader found"), std::string::npos) << o;
}

TEST_F(HcictlTest, StateDirPrecedenceAndLock) {
  const std::string from_config = dir_ + "/from-config";
  const std::string config =
      Write("with-state.yaml", std::string(kHostConfig) + "state_dir: " + from_config + "\n");
  const std::string from_env = dir_ + "/from-env";
  const std::string from_flag = dir_ + "/from-flag";
  ASSERT_EQ(Run({"--state-dir", from_flag, "get", "vm"},
                {{"HCI_CONFIG", config}, {"HCI_STATE_DIR", from_env}})
                .code,
            0);
  EXPECT_TRUE(fs::exists(from_flag + "/host.lock"));
  EXPECT_FALSE(fs::exists(from_env));
  ASSERT_EQ(Run({"get", "vm"}, {{"HCI_CONFIG", config}, {"HCI_STATE_DIR", from_env}}).code, 0);
  EXPECT_TRUE(fs::exists(from_env + "/host.lock"));
  EXPECT_FALSE(fs::exists(from_config));
  ASSERT_EQ(Run({"get", "vm"}, {{"HCI_CONFIG", config}, {"HCI_STATE_DIR", ""}}).code, 0);
  EXPECT_TRUE(fs::exists(from_config + "/host.lock"));
  ASSERT_EQ(Run({"--config", config, "get", "vm"},
                {{"HCI_CONFIG", "/nonexistent.yaml"}, {"HCI_STATE_DIR", ""}})
                .code,
            0);

  // Another Host holds the state dir: FailedPrecondition, and a hint.
  const int fd = ::open((from_flag + "/host.lock").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const Outcome o = Run({"--state-dir", from_flag, "get", "vm"});
  ::close(fd);
  EXPECT_EQ(o.code, Code(StatusCode::kFailedPrecondition)) << o;
  EXPECT_NE(o.err.find("--state-dir or $HCI_STATE_DIR selects another one"), std::string::npos)
      << o;
}

TEST_F(HcictlTest, BatchReportsTheFailingLine) {
  Outcome o = Batch("# a comment\n\nget vm\nget 'vm' \"nope\"\nget vm\n");
  EXPECT_EQ(o.code, Code(StatusCode::kNotFound)) << o;
  EXPECT_EQ(o.err, "No resources found.\nerror: line 4: vm \"nope\" does not exist\n");
  o = Batch("get vm 'unterminated\n");
  EXPECT_EQ(o.code, kUsage) << o;
  EXPECT_EQ(o.err, "error: line 1: unterminated ' quote\n");
  o = Batch("get vm --state-dir /tmp\n");
  EXPECT_EQ(o.code, kUsage) << o;
  EXPECT_NE(o.err.find("error: line 1: "), std::string::npos) << o;
  o = Run({"batch", "-"}, {}, "version\n");
  EXPECT_EQ(o.code, 0) << o;
}

// Whatever the arguments or the manifest, hcictl exits with a documented code and never dies
// of a signal (Run() checks that).
TEST_F(HcictlTest, GarbageNeverCrashes) {
  std::mt19937 rng(20240503);
  const std::vector<std::string> words = {
      "get",     "vm",       "volume",    "-o",     "json",     "yaml", "apply", "-f",
      "delete",  "--force",  "vm",        "stop",   "start",    "demo", "--",    "-",
      "''",      "describe", "image",     "import", "--url",    "a",    "batch", "console",
      "--until", "(",        "--timeout", "0",      "snapshot", "-v"};
  const std::string alphabet = "{}[]:,-?&*!|>'\"%@`#~ \n\tab01.$kind:Volume metadata name spec";
  for (int i = 0; i < 25; ++i) {
    std::vector<std::string> args;
    const size_t n = rng() % 6;
    for (size_t j = 0; j < n; ++j) args.push_back(words[rng() % words.size()]);
    Outcome o = Run(args, {}, "");
    EXPECT_TRUE(o.code == 0 || o.code == kUsage || (o.code > 64 && o.code <= 80))
        << ::testing::PrintToString(args) << "\n"
        << o;

    std::string manifest = "kind: Volume\nmetadata: {name: v}\n";
    for (size_t j = 0; j < 40; ++j) {
      manifest +=
          (i % 4 == 0) ? static_cast<char>(rng() & 0xFF) : alphabet[rng() % alphabet.size()];
    }
    o = Run({"apply", "-f", "-"}, {}, manifest);
    EXPECT_TRUE(o.code == 0 || o.code == kUsage || (o.code > 64 && o.code <= 80)) << o;
  }
}

}  // namespace
}  // namespace hci
