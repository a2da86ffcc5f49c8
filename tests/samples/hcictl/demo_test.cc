// The main job end to end (ctest label `guest`): the real hcictl with its built-in config (the kvm
// and local plugins) applies samples/manifests/demo.yaml, the test guest boots under QEMU and
// prints its marker, and a graceful stop ends with reason GuestShutdown. Runs what
// tools/run-demo runs, with a fresh state directory.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "hci/hci.h"
#include "process/process.h"

namespace hci {
namespace {

namespace fs = std::filesystem;

struct Outcome {
  int code = -1;
  std::string out;
  std::string err;
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  return os << "exit " << o.code << "\n--- stdout\n" << o.out << "--- stderr\n" << o.err;
}

Outcome RunArgv(std::vector<std::string> argv, std::vector<std::pair<std::string, std::string>> env,
                std::chrono::seconds timeout) {
  process::RunOptions options;
  options.argv = std::move(argv);
  options.env = std::move(env);
  options.timeout = timeout;
  Result<process::RunResult> result = process::Run(options);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) return {};
  EXPECT_EQ(result->term_signal, 0)
      << options.argv[0] << " was killed by signal " << result->term_signal;
  return {result->exit_code, result->stdout_data, result->stderr_data};
}

class DemoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The guest (cached: about a second when it is up to date).
    const Outcome built =
        RunArgv({HCI_TEST_GUEST_BUILDER, HCI_TEST_GUEST_DIR}, {}, std::chrono::seconds(600));
    ASSERT_EQ(built.code, 0) << built;
    const Outcome sum = RunArgv({"sha256sum", std::string(HCI_TEST_GUEST_DIR) + "/disk.raw"}, {},
                                std::chrono::seconds(60));
    ASSERT_EQ(sum.code, 0) << sum;
    sha256_ = sum.out.substr(0, 64);
    state_dir_ = ::testing::TempDir() + "hcictl-demo-XXXXXX";
    ASSERT_NE(::mkdtemp(state_dir_.data()), nullptr);
  }

  void TearDown() override {
    // A failed test may leave QEMU running (it outlives hcictl by design): stop it.
    Hcictl({"delete", "vm", "demo", "--force", "--ignore-not-found"});
    fs::remove_all(state_dir_);
  }

  // hcictl with its built-in config (no HCI_CONFIG) and the demo's environment.
  Outcome Hcictl(std::vector<std::string> args) {
    args.insert(args.begin(), HCI_TEST_HCICTL);
    return RunArgv(std::move(args),
                   {{"HCI_CONFIG", ""},
                    {"HCI_STATE_DIR", state_dir_},
                    {"HCI_PLUGIN_PATH", HCI_TEST_PLUGIN_DIR},
                    {"HCI_TEST_GUEST", HCI_TEST_GUEST_DIR},
                    {"HCI_TEST_GUEST_SHA256", sha256_}},
                   std::chrono::seconds(300));
  }

  v1::VirtualMachine GetVm() {
    const Outcome o = Hcictl({"get", "vm", "demo", "-o", "json"});
    EXPECT_EQ(o.code, 0) << o;
    v1::VirtualMachine vm;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(o.out, &vm).ok()) << o;
    return vm;
  }

  std::string sha256_;
  std::string state_dir_;
};

TEST_F(DemoTest, ApplyBootsTheGuestAndStopIsGraceful) {
  const std::string manifest = std::string(HCI_TEST_SOURCE_DIR) + "/samples/manifests/demo.yaml";
  Outcome o = Hcictl({"apply", "-f", manifest});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out,
            "image/test-guest created\nvolume/demo-root created\nvm/demo created\n"
            "vm/demo started\n");
  EXPECT_NE(o.err.find("image/test-guest importing: 100% (64Mi of 64Mi)"), std::string::npos) << o;

  v1::VirtualMachine vm = GetVm();
  EXPECT_EQ(vm.status().phase(), v1::VM_PHASE_RUNNING) << vm.DebugString();
  EXPECT_FALSE(vm.status().accelerator().empty()) << vm.DebugString();

  // The guest's marker, then proof that it mounted the volume made from the image.
  o = Hcictl({"vm", "console", "demo", "--until", "hci-test-guest: ready", "--timeout", "180s"});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out, "hci-test-guest: ready\n");
  o = Hcictl({"vm", "console", "demo", "--until", "^hci-test-guest: disk ok boots=1$", "--timeout",
              "60s"});
  ASSERT_EQ(o.code, 0) << o;
  // The guest listens for the power button only from its first tick on: the stop that may come
  // before must still end GuestShutdown (the plugin presses the button again).

  o = Hcictl({"vm", "stop", "demo"});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out, "vm/demo stopped (GuestShutdown)\n");
  vm = GetVm();
  EXPECT_EQ(vm.status().phase(), v1::VM_PHASE_STOPPED) << vm.DebugString();
  EXPECT_EQ(vm.status().reason(), "GuestShutdown") << vm.DebugString();
  o = Hcictl({"vm", "console", "demo"});
  EXPECT_NE(o.out.find("hci-test-guest: powering off"), std::string::npos) << o;

  // Applying again changes nothing and leaves the stopped VM stopped.
  o = Hcictl({"apply", "-f", manifest});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out, "image/test-guest unchanged\nvolume/demo-root unchanged\nvm/demo unchanged\n");
  EXPECT_EQ(GetVm().status().phase(), v1::VM_PHASE_STOPPED);

  o = Hcictl({"delete", "-f", manifest});
  ASSERT_EQ(o.code, 0) << o;
  EXPECT_EQ(o.out, "vm/demo deleted\nvolume/demo-root deleted\nimage/test-guest deleted\n");
}

}  // namespace
}  // namespace hci
