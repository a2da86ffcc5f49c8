// The replicated plugin's entry point: Longhorn-class replicated volumes (storage only).
#include "hci/plugin.h"
#include "replicated_internal.h"

HCI_PLUGIN("replicated", "0.1.0", {.storage = &hci::replicated::plugin::MakeStorage})
