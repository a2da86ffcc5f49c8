// A real VM on a replicated volume: the test guest (tools/build-test-guest) boots under QEMU (kvm
// plugin, TCG) from a 3-replica volume of the replicated plugin, writes a file, loses a storage
// node (kill -9 of its hci-replica-server) while it runs and keeps running; the node comes back,
// the replica is rebuilt while the guest is up, the guest powers off cleanly, and every replica
// holds the same bytes — the file included, read from each replica's data with debugfs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <regex>
#include <thread>

#include "../kvm/kvm_test_env.h"
#include "hci/hci.h"
#include "plugin_test_nodes.h"

namespace hci::replicated::plugin_testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

process::RunResult MustRun(std::vector<std::string> argv) {
  process::RunOptions run;
  run.argv = std::move(argv);
  run.timeout = std::chrono::minutes(15);
  auto result = process::Run(run);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) return {};
  EXPECT_TRUE(process::CheckExit(*result, run.argv[0]).ok())
      << process::CheckExit(*result, run.argv[0]);
  return *result;
}

class ReplicatedVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MustRun({HCI_BUILD_TEST_GUEST, HCI_TEST_GUEST_DIR});
    auto guest = kvmtest::LoadGuestEnv(HCI_TEST_GUEST_DIR);
    ASSERT_TRUE(guest.ok()) << guest.status();
    guest_ = *guest;
    nodes_ = TestNodes::Start(3);
    ASSERT_NE(nodes_, nullptr);
    state_dir_ = nodes_->dir() + "/host";
    v1::HostConfig config;
    config.set_node_name("vm-test");
    config.set_state_dir(state_dir_);
    config.add_plugin_dirs(HCI_TEST_PLUGIN_DIR);
    config.set_log_level(v1::LOG_LEVEL_INFO);
    config.mutable_backends()->mutable_compute()->set_plugin("kvm");
    auto* storage = config.mutable_backends()->mutable_storage();
    storage->set_plugin("replicated");
    *storage->mutable_options() = nodes_->Options(2000);
    auto host = Host::Open(config);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(*host);
    compute_ = *host_->compute();
    storage_ = *host_->storage();
  }

  void TearDown() override {
    if (compute_ != nullptr) {
      v1::StopVmRequest stop;
      stop.set_name("vm");
      stop.set_force(true);
      compute_->StopVm(stop).status().IgnoreError();
    }
    host_.reset();
  }

  std::string Console() {
    std::string out;
    v1::ReadConsoleRequest read;
    read.set_name("vm");
    for (;;) {
      read.set_offset(out.size());
      auto chunk = compute_->ReadConsole(read);
      if (!chunk.ok() || chunk->data().empty()) break;
      out += chunk->data();
    }
    return out;
  }

  // The highest complete tick line; 0 before the first.
  int LastTick() {
    static const std::regex tick("hci-test-guest: tick ([0-9]+)\r?\n");
    const std::string text = Console();
    int last = 0;
    for (std::sregex_iterator it(text.begin(), text.end(), tick), end; it != end; ++it) {
      last = std::max(last, std::stoi((*it)[1]));
    }
    return last;
  }

  bool WaitForConsole(const std::string& line, Clock::duration timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (Console().find(line + "\n") != std::string::npos ||
          Console().find(line + "\r\n") != std::string::npos) {
        return true;
      }
      std::this_thread::sleep_for(200ms);
    }
    return false;
  }

  v1::Volume GetVolume() {
    v1::GetVolumeRequest get;
    get.set_name("root");
    auto volume = storage_->GetVolume(get);
    EXPECT_TRUE(volume.ok()) << volume.status();
    return volume.ok() ? *volume : v1::Volume();
  }

  kvmtest::GuestEnv guest_;
  std::unique_ptr<TestNodes> nodes_;
  std::string state_dir_;
  std::unique_ptr<Host> host_;
  ComputeBackend* compute_ = nullptr;
  StorageBackend* storage_ = nullptr;
};

TEST_F(ReplicatedVmTest, GuestKeepsRunningThroughALostReplicaAndReplicasConverge) {
  // The volume gets the guest's pristine disk through its NBD export before the VM exists.
  const auto disk_bytes = std::filesystem::file_size(guest_.disk);
  v1::CreateVolumeRequest create;
  create.mutable_metadata()->set_name("root");
  create.mutable_spec()->set_size_bytes((disk_bytes + 4095) / 4096 * 4096);
  create.mutable_spec()->set_replica_count(3);
  ASSERT_TRUE(storage_->CreateVolume(create).ok());
  v1::AttachVolumeRequest attach;
  attach.set_name("root");
  attach.set_attacher("prep");
  auto info = storage_->AttachVolume(attach);
  ASSERT_TRUE(info.ok()) << info.status();
  const std::string socket =
      info->blockdev().fields().at("server").struct_value().fields().at("path").string_value();
  MustRun({"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", guest_.disk,
           "nbd+unix:///?socket=" + socket});
  v1::DetachVolumeRequest detach;
  detach.set_name("root");
  detach.set_attacher("prep");
  ASSERT_TRUE(storage_->DetachVolume(detach).ok());

  ASSERT_TRUE(
      compute_->CreateVm(kvmtest::GuestVm("vm", guest_, "root", "hci.write=replicated")).ok());
  v1::StartVmRequest start;
  start.set_name("vm");
  ASSERT_TRUE(compute_->StartVm(start).ok());
  ASSERT_TRUE(WaitForConsole("hci-test-guest: disk ok boots=1", 180s)) << Console();

  // A storage node dies under the running guest: it goes on (its ticks go on), the volume is
  // degraded, never faulted.
  nodes_->Kill(1);
  const int tick_at_kill = LastTick();
  const auto deadline = Clock::now() + 60s;
  while (LastTick() < tick_at_kill + 25 && Clock::now() < deadline)
    std::this_thread::sleep_for(200ms);
  EXPECT_GE(LastTick(), tick_at_kill + 25) << "the guest stopped ticking after the node died";
  const v1::Volume degraded = GetVolume();
  EXPECT_EQ(degraded.status().robustness(), v1::VOLUME_ROBUSTNESS_DEGRADED)
      << degraded.DebugString();

  // The node comes back; the engine rebuilds its replica while the guest runs.
  ASSERT_EQ(nodes_->StartServer(1), Status::OK());
  bool healthy = false;
  for (auto until = Clock::now() + 120s; Clock::now() < until && !healthy;) {
    healthy = GetVolume().status().robustness() == v1::VOLUME_ROBUSTNESS_HEALTHY;
    if (!healthy) std::this_thread::sleep_for(200ms);
  }
  ASSERT_TRUE(healthy) << GetVolume().DebugString();
  EXPECT_GT(LastTick(), tick_at_kill + 25);

  // A clean power-off: the guest syncs and unmounts; QEMU exits, the volume is detached.
  v1::StopVmRequest stop;
  stop.set_name("vm");
  ASSERT_TRUE(compute_->StopVm(stop).ok());
  bool stopped = false;
  for (auto until = Clock::now() + 120s; Clock::now() < until && !stopped;) {
    v1::GetVmRequest get;
    get.set_name("vm");
    auto vm = compute_->GetVm(get);
    stopped = vm.ok() && vm->status().phase() == v1::VM_PHASE_STOPPED;
    if (!stopped) std::this_thread::sleep_for(200ms);
  }
  ASSERT_TRUE(stopped) << Console();
  for (auto until = Clock::now() + 60s;
       Clock::now() < until && !GetVolume().status().attached_to().empty();) {
    std::this_thread::sleep_for(200ms);
  }
  ASSERT_EQ(GetVolume().status().attached_to(), "");

  // Every replica: the same bytes, and the file the guest wrote. Without snapshots a replica's
  // content is its head layer file (docs/replicated-design.md), an ext4 image debugfs can read.
  std::string first_sum;
  for (int i = 0; i < 3; ++i) {
    std::string head;
    for (const auto& e : std::filesystem::directory_iterator(nodes_->node(i).data_dir)) {
      for (const auto& f : std::filesystem::directory_iterator(e.path())) {
        if (f.path().extension() == ".img") head = f.path().string();
      }
    }
    ASSERT_FALSE(head.empty()) << "no replica data on node " << i;
    const std::string sum = MustRun({"sha256sum", head}).stdout_data.substr(0, 64);
    if (i == 0) first_sum = sum;
    EXPECT_EQ(sum, first_sum) << "replica on node " << i << " differs";
    const std::string data = MustRun({"debugfs", "-R", "cat /hci-test/data", head}).stdout_data;
    EXPECT_NE(data.find("replicated"), std::string::npos) << "node " << i << ": " << data;
  }
}

// Online expand with a real guest: the volume grows while the VM runs, the replicated plugin
// grows every replica through the engine and asks the kvm plugin to resize the disk; QEMU swaps
// its NBD connection for one that sees the new size, and the guest's virtio_blk driver reports
// the capacity change (its kernel log, shown on the console with loglevel=6).
TEST_F(ReplicatedVmTest, GuestSeesTheVolumeGrowWhileItRuns) {
  std::mutex mu;
  std::vector<v1::Event> events;
  Subscription subscription = host_->Subscribe([&](const v1::Event& e) {
    std::lock_guard lock(mu);
    events.push_back(e);
  });
  auto reasons = [&] {
    std::lock_guard lock(mu);
    std::string out;
    for (const auto& e : events) out += e.reason() + ": " + e.message() + "\n";
    return out;
  };
  const auto disk_bytes = std::filesystem::file_size(guest_.disk);
  const std::uint64_t size = (disk_bytes + 4095) / 4096 * 4096;
  v1::CreateVolumeRequest create;
  create.mutable_metadata()->set_name("root");
  create.mutable_spec()->set_size_bytes(size);
  create.mutable_spec()->set_replica_count(3);
  ASSERT_TRUE(storage_->CreateVolume(create).ok());
  v1::AttachVolumeRequest attach;
  attach.set_name("root");
  attach.set_attacher("prep");
  auto info = storage_->AttachVolume(attach);
  ASSERT_TRUE(info.ok()) << info.status();
  const std::string socket =
      info->blockdev().fields().at("server").struct_value().fields().at("path").string_value();
  MustRun({"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", guest_.disk,
           "nbd+unix:///?socket=" + socket});
  v1::DetachVolumeRequest detach;
  detach.set_name("root");
  detach.set_attacher("prep");
  ASSERT_TRUE(storage_->DetachVolume(detach).ok());

  ASSERT_TRUE(compute_->Capabilities().resize_disk());
  ASSERT_TRUE(compute_->CreateVm(kvmtest::GuestVm("vm", guest_, "root", "loglevel=6")).ok());
  v1::StartVmRequest start;
  start.set_name("vm");
  ASSERT_TRUE(compute_->StartVm(start).ok());
  ASSERT_TRUE(WaitForConsole("hci-test-guest: disk ok boots=1", 180s)) << Console();
  const int tick_before = LastTick();

  const std::uint64_t bigger = size + 32 * (1 << 20);
  v1::ExpandVolumeRequest expand;
  expand.set_name("root");
  expand.set_size_bytes(bigger);
  auto grown = storage_->ExpandVolume(expand);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->status().capacity_bytes(), bigger);
  EXPECT_EQ(grown->status().attached_to(), "vm");

  // Linux's virtio_blk on a config-change interrupt: "[vda] new size: <512-byte sectors> ...".
  const std::string expected = "[vda] new size: " + std::to_string(bigger / 512) + " ";
  bool seen = false;
  for (auto until = Clock::now() + 60s; Clock::now() < until && !seen;) {
    seen = Console().find(expected) != std::string::npos;
    if (!seen) std::this_thread::sleep_for(200ms);
  }
  EXPECT_TRUE(seen) << "the guest did not see the new size\n" << reasons() << Console();
  const std::string all = reasons();
  EXPECT_THAT(all, ::testing::HasSubstr("VolumeExpanded: "));
  EXPECT_THAT(all, ::testing::HasSubstr("DiskResized: "));
  EXPECT_THAT(all, ::testing::Not(::testing::HasSubstr("ResizeDiskFailed")));
  // The guest goes on with its disk.
  const auto deadline = Clock::now() + 60s;
  while (LastTick() < tick_before + 10 && Clock::now() < deadline)
    std::this_thread::sleep_for(200ms);
  EXPECT_GE(LastTick(), tick_before + 10) << Console();

  // A second expand: the resize swaps the NBD node back (the nodes alternate).
  expand.set_size_bytes(bigger + (1 << 20));
  ASSERT_TRUE(storage_->ExpandVolume(expand).ok());
  const std::string again = "[vda] new size: " + std::to_string((bigger + (1 << 20)) / 512) + " ";
  seen = false;
  for (auto until = Clock::now() + 60s; Clock::now() < until && !seen;) {
    seen = Console().find(again) != std::string::npos;
    if (!seen) std::this_thread::sleep_for(200ms);
  }
  EXPECT_TRUE(seen) << reasons() << Console();

  v1::StopVmRequest stop;
  stop.set_name("vm");
  ASSERT_TRUE(compute_->StopVm(stop).ok());
}

}  // namespace
}  // namespace hci::replicated::plugin_testing
