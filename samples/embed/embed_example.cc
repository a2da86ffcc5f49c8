// Embedding libhci: open a host from a YAML config, create a volume and a VM, start and stop it.
#include <iostream>
#include <memory>
#include <string>

#include "hci/hci.h"

namespace {

hci::Status Run(const std::string& config_path) {
  HCI_ASSIGN_OR_RAISE(hci::v1::HostConfig config, hci::Host::LoadConfig(config_path));
  HCI_ASSIGN_OR_RAISE(std::unique_ptr<hci::Host> host, hci::Host::Open(config));
  // Called on the core's event thread, in order, until `events` goes out of scope.
  hci::Subscription events = host->Subscribe([](const hci::v1::Event& e) {
    std::cout << "event: " + e.object().name() + ": " + e.reason() + ": " + e.message() + "\n";
  });
  HCI_ASSIGN_OR_RAISE(auto* storage, host->storage());
  HCI_ASSIGN_OR_RAISE(auto* compute, host->compute());

  hci::v1::CreateVolumeRequest volume;
  volume.mutable_metadata()->set_name("demo-root");
  volume.mutable_spec()->set_size_bytes(1ull << 30);  // 1 GiB, blank
  HCI_RETURN_NOT_OK(storage->CreateVolume(volume));

  hci::v1::CreateVmRequest vm;
  vm.mutable_metadata()->set_name("demo");
  vm.mutable_spec()->set_vcpus(1);
  vm.mutable_spec()->set_memory_mib(256);
  hci::v1::Disk* disk = vm.mutable_spec()->add_disks();
  disk->set_name("root");
  disk->set_volume("demo-root");
  disk->set_boot_order(1);
  HCI_RETURN_NOT_OK(compute->CreateVm(vm));

  hci::v1::StartVmRequest start;
  start.set_name("demo");
  HCI_ASSIGN_OR_RAISE(hci::v1::VirtualMachine started, compute->StartVm(start));
  // One string per line: the event thread writes to std::cout too.
  std::cout << "demo: " + hci::v1::VmPhase_Name(started.status().phase()) + "\n";

  hci::v1::StopVmRequest stop;
  stop.set_name("demo");
  HCI_ASSIGN_OR_RAISE(hci::v1::VirtualMachine stopped, compute->StopVm(stop));
  std::cout << "demo: " + hci::v1::VmPhase_Name(stopped.status().phase()) + " (" +
                   stopped.status().reason() + ")\n";
  return hci::Status::OK();
}

}  // namespace

int main(int argc, char** argv) {
  hci::Status status = Run(argc > 1 ? argv[1] : "samples/embed/host.yaml");
  if (!status.ok()) {
    std::cerr << "error: " << status.ToString() << "\n";
    return 1;
  }
  return 0;
}
