// kvm_reattach_helper STATE_DIR PLUGIN_DIR GUEST_DIR VM
//
// The embedder that kvm_test kills with SIGKILL: it opens a Host on STATE_DIR, creates a volume
// "<VM>-root" from the test guest's disk (plugins/local) and a VM booting the test guest on it,
// starts the VM, prints "started" and blocks until it is killed.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "kvm_test_env.h"

namespace {

int Fail(const std::string& what, const hci::Status& status) {
  std::printf("error: %s: %s\n", what.c_str(), status.ToString().c_str());
  std::fflush(stdout);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s STATE_DIR PLUGIN_DIR GUEST_DIR VM\n", argv[0]);
    return 2;
  }
  const std::string vm = argv[4];
  auto guest = hci::kvmtest::LoadGuestEnv(argv[3]);
  if (!guest.ok()) return Fail("guest.env", guest.status());
  auto host = hci::Host::Open(hci::kvmtest::MakeConfig(argv[1], argv[2]));
  if (!host.ok()) return Fail("Host::Open", host.status());
  auto compute = (*host)->compute();
  if (!compute.ok()) return Fail("compute", compute.status());
  hci::Status volume = hci::kvmtest::MakeGuestVolume(**host, vm + "-root", *guest);
  if (!volume.ok()) return Fail("volume", volume);
  auto created = (*compute)->CreateVm(hci::kvmtest::GuestVm(vm, *guest, vm + "-root", ""));
  if (!created.ok()) return Fail("CreateVm", created.status());
  hci::v1::StartVmRequest start;
  start.set_name(vm);
  auto started = (*compute)->StartVm(start);
  if (!started.ok()) return Fail("StartVm", started.status());
  std::printf("started\n");
  std::fflush(stdout);
  for (;;) ::pause();
}
