// The local plugin's entry point: qcow2 volumes (storage) and an image store (image) that share
// the plugin's state directory.
#include "hci/plugin.h"
#include "local_internal.h"

HCI_PLUGIN("local", "0.1.0", {.storage = &hci::local::MakeStorage, .image = &hci::local::MakeImage})
