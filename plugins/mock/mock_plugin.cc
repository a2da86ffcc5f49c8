// STUB: replaced by the real mock plugin.
#include "hci/plugin.h"

HCI_PLUGIN("mock", "0.1.0", {})
