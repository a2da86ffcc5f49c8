// The kvm plugin's entry point: a ComputeBackend over QEMU and QMP.
#include "hci/plugin.h"
#include "kvm_internal.h"

HCI_PLUGIN("kvm", "0.1.0", {.compute = &hci::kvm::MakeCompute})
