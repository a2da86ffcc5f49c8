// What the kvm plugin's tests and their reattach helper share: the test guest's files, the host
// config and the VM specs. No GoogleTest here: the helper binary includes it too.
#pragma once

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <map>
#include <string>

#include "hci/hci.h"
#include "process/process.h"

namespace hci::kvmtest {

/// The variables of tools/build-test-guest's guest.env (see docs/test-guest.md).
struct GuestEnv {
  std::string kernel;
  std::string initrd;
  std::string disk;
  std::string cmdline;
};

/// Reads guest.env the way tests/guest/boot_test.py does: bash sources it (the values are
/// written with printf %q) and prints the environment NUL-separated.
inline Result<GuestEnv> LoadGuestEnv(const std::string& guest_dir) {
  process::RunOptions run;
  run.argv = {"bash", "-c", "set -a && . \"$1\" && env -0", "bash", guest_dir + "/guest.env"};
  run.timeout = std::chrono::seconds(30);
  HCI_ASSIGN_OR_RAISE(auto result, process::Run(run));
  HCI_RETURN_NOT_OK(process::CheckExit(result, "reading guest.env"));
  std::map<std::string, std::string> vars;
  const std::string& out = result.stdout_data;
  std::size_t pos = 0;
  while (pos < out.size()) {
    std::size_t end = out.find('\0', pos);
    if (end == std::string::npos) end = out.size();
    std::string item = out.substr(pos, end - pos);
    if (auto eq = item.find('='); eq != std::string::npos) {
      vars[item.substr(0, eq)] = item.substr(eq + 1);
    }
    pos = end + 1;
  }
  GuestEnv env;
  for (auto [key, field] : {std::pair{"KERNEL", &env.kernel}, std::pair{"INITRD", &env.initrd},
                            std::pair{"DISK", &env.disk}, std::pair{"CMDLINE", &env.cmdline}}) {
    auto it = vars.find(key);
    if (it == vars.end() || it->second.empty()) {
      return NotFound(guest_dir + "/guest.env: " + key + " is missing");
    }
    *field = it->second;
  }
  return env;
}

/// A Host config: the kvm plugin for compute, the local plugin for volumes and images.
inline v1::HostConfig MakeConfig(const std::string& state_dir, const std::string& plugin_dir,
                                 const std::string& compute_options_json = "{}") {
  v1::HostConfig config;
  config.set_node_name("kvm-test");
  config.set_state_dir(state_dir);
  config.add_plugin_dirs(plugin_dir);
  config.set_log_level(v1::LOG_LEVEL_INFO);
  auto* compute = config.mutable_backends()->mutable_compute();
  compute->set_plugin("kvm");
  if (compute_options_json != "{}") {
    (void)google::protobuf::util::JsonStringToMessage(compute_options_json,
                                                      compute->mutable_options());
  }
  config.mutable_backends()->mutable_storage()->set_plugin("local");
  config.mutable_backends()->mutable_image()->set_plugin("local");
  return config;
}

/// Imports the test guest's disk as image "test-guest" (once per state directory) and makes
/// volume `name` from it: a full qcow2 copy the guest can write.
inline Status MakeGuestVolume(Host& host, const std::string& name, const GuestEnv& guest) {
  HCI_ASSIGN_OR_RAISE(ImageBackend * images, host.image());
  HCI_ASSIGN_OR_RAISE(StorageBackend * storage, host.storage());
  v1::ImportImageRequest import;
  import.mutable_metadata()->set_name("test-guest");
  import.mutable_spec()->set_file(guest.disk);
  HCI_ASSIGN_OR_RAISE(Operation op, images->ImportImage(import));
  HCI_RETURN_NOT_OK(op.Wait(std::chrono::minutes(5)));
  v1::CreateVolumeRequest create;
  create.mutable_metadata()->set_name(name);
  create.mutable_spec()->mutable_source()->set_image("test-guest");
  return storage->CreateVolume(create).status();
}

/// Where the local plugin keeps volume `name` (docs/local-plugin.md).
inline std::string VolumeFile(const std::string& state_dir, const std::string& name) {
  return state_dir + "/plugins/local/volumes/" + name + ".qcow2";
}

/// A VM booting the test guest's kernel; with `volume`, a virtio disk "root" on it.
inline v1::CreateVmRequest GuestVm(const std::string& name, const GuestEnv& guest,
                                   const std::string& volume, const std::string& extra_cmdline,
                                   v1::RunStrategy strategy = v1::RUN_STRATEGY_MANUAL) {
  v1::CreateVmRequest request;
  request.mutable_metadata()->set_name(name);
  auto* spec = request.mutable_spec();
  spec->set_vcpus(1);
  spec->set_memory_mib(256);
  spec->set_run_strategy(strategy);
  auto* kb = spec->mutable_kernel_boot();
  kb->set_kernel_path(guest.kernel);
  kb->set_initrd_path(guest.initrd);
  kb->set_cmdline(guest.cmdline + (extra_cmdline.empty() ? "" : " " + extra_cmdline));
  if (!volume.empty()) {
    auto* disk = spec->add_disks();
    disk->set_name("root");
    disk->set_volume(volume);
    disk->set_boot_order(1);
  }
  return request;
}

}  // namespace hci::kvmtest
