// A plugin that needs a symbol nobody defines: it links (without --no-undefined) but
// dlopen(RTLD_NOW) fails, before any of its code runs.
#include <memory>
#include <string>

#include "hci/plugin.h"

extern "C" int loader_test_symbol_nobody_defines();

namespace {

hci::Result<std::unique_ptr<hci::StorageBackend>> MakeStorage(hci::PluginContext&) {
  return hci::Internal(std::to_string(loader_test_symbol_nobody_defines()));
}

}  // namespace

HCI_PLUGIN("loader-unresolved", "1.0.0", {.storage = &MakeStorage})
