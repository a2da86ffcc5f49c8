// A plugin whose descriptor is written by hand so that one field can be wrong. CMake sets the
// TEST_* macros per variant (test_plugins/CMakeLists.txt); the defaults are those HCI_PLUGIN uses.
#include "hci/plugin.h"

#ifndef TEST_MAGIC
#define TEST_MAGIC ::hci::kPluginMagic
#endif
#ifndef TEST_ABI
#define TEST_ABI ::hci::kPluginAbiVersion
#endif
#ifndef TEST_VERSION
#define TEST_VERSION "1.0.0"
#endif
#ifndef TEST_COMPILER
#define TEST_COMPILER HCI_TOOLCHAIN_COMPILER
#endif
#ifndef TEST_STDLIB
#define TEST_STDLIB HCI_TOOLCHAIN_STDLIB
#endif
#ifdef TEST_FLIP_CXX11_ABI
#define TEST_CXX11_ABI (HCI_TOOLCHAIN_CXX11_ABI == 1 ? 0 : 1)
#else
#define TEST_CXX11_ABI HCI_TOOLCHAIN_CXX11_ABI
#endif
#ifndef TEST_PROTOBUF
#define TEST_PROTOBUF GOOGLE_PROTOBUF_VERSION
#endif

HCI_PLUGIN_EXPORT const ::hci::PluginDescriptor* hci_plugin_entry() {
  static const ::hci::PluginDescriptor descriptor{TEST_MAGIC,     TEST_ABI,      TEST_NAME,
                                                  TEST_VERSION,   TEST_COMPILER, TEST_STDLIB,
                                                  TEST_CXX11_ABI, TEST_PROTOBUF, {}};
  return &descriptor;
}
