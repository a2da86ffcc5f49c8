// The plugin's entry point. HCI_PLUGIN defines `hci_plugin_entry`, the only symbol the shared
// object exports: it returns a descriptor holding the ABI version and toolchain this file was
// compiled with (the loader refuses the plugin on a mismatch) and one factory per backend kind.
// Leave out the kinds you do not provide (a line each); the core never asks for them.
#include "hci/plugin.h"

#include "example_internal.h"

HCI_PLUGIN(example::kPluginName, "0.1.0",
           {
               .compute = &example::MakeCompute,
               .storage = &example::MakeStorage,
               .network = &example::MakeNetwork,
               .image = &example::MakeImage,
               .backup = &example::MakeBackup,
           })
