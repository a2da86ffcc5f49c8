// The plugin ABI: what a plugin shared object exports and what the core gives it.
//
// A plugin is a shared object that exports exactly one symbol, `hci_plugin_entry`, returning a
// PluginDescriptor. Define it with HCI_PLUGIN(...):
//
//   HCI_PLUGIN("example", "1.0.0", {.storage = &MakeStorage})
//
// The loader reads the descriptor's stable header, refuses the plugin (naming the file and both
// versions) on an ABI or toolchain mismatch, and otherwise calls the factories of the backend
// kinds the host config assigns to it. Plugins are never unloaded. See docs/abi-policy.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <google/protobuf/struct.pb.h>

#include "hci/backup.h"
#include "hci/compute.h"
#include "hci/events.h"
#include "hci/export.h"
#include "hci/image.h"
#include "hci/logging.h"
#include "hci/network.h"
#include "hci/operation.h"
#include "hci/result.h"
#include "hci/storage.h"

namespace hci {

/// The plugin ABI this libhci was built with. Bumped on any change to a backend interface, the
/// descriptor after its stable header, PluginContext, or a type they use.
inline constexpr std::uint32_t kPluginAbiVersion = 1;
/// The oldest plugin ABI this libhci still loads.
inline constexpr std::uint32_t kPluginAbiOldest = 1;
/// First field of every descriptor ("HCIP").
inline constexpr std::uint32_t kPluginMagic = 0x50494348u;
/// Name of the one symbol a plugin exports.
inline constexpr const char kPluginEntrySymbol[] = "hci_plugin_entry";

/// What the core gives a plugin's factories. Owned by the Host; outlives every backend the
/// plugin creates. All methods are thread-safe.
class HCI_EXPORT PluginContext {
 public:
  virtual ~PluginContext();

  /// The plugin's name, as in its descriptor and the host config.
  virtual const std::string& plugin_name() const = 0;
  /// This node's name (HostConfig.node_name).
  virtual const std::string& node_name() const = 0;
  /// The plugin's own persistent directory, `<state_dir>/plugins/<plugin>/`, created with mode
  /// 0700. Shared by all backend kinds of the plugin.
  virtual const std::string& state_dir() const = 0;
  /// The options of this backend's binding in the host config (`backends.<kind>.options`).
  virtual const google::protobuf::Struct& options() const = 0;
  /// Logger whose component is the plugin name.
  virtual const Logger& logger() const = 0;
  /// Where the plugin publishes events.
  virtual EventSink& events() = 0;
  /// Where the plugin starts long operations.
  virtual OperationTracker& operations() = 0;

  ///@{
  /// The host's other backends, through the core (names validated, calls logged), for
  /// cross-kind work such as a compute plugin attaching volumes. nullptr when that kind is not
  /// configured. Valid once every factory has run (not inside a factory).
  virtual ComputeBackend* compute() = 0;
  virtual StorageBackend* storage() = 0;
  virtual NetworkBackend* network() = 0;
  virtual ImageBackend* image() = 0;
  virtual BackupBackend* backup() = 0;
  ///@}
};

///@{
/// Factories, one per backend kind; nullptr for the kinds the plugin does not provide.
/// A factory returns InvalidArgument naming the option for bad options.
using ComputeFactory = Result<std::unique_ptr<ComputeBackend>> (*)(PluginContext& context);
using StorageFactory = Result<std::unique_ptr<StorageBackend>> (*)(PluginContext& context);
using NetworkFactory = Result<std::unique_ptr<NetworkBackend>> (*)(PluginContext& context);
using ImageFactory = Result<std::unique_ptr<ImageBackend>> (*)(PluginContext& context);
using BackupFactory = Result<std::unique_ptr<BackupBackend>> (*)(PluginContext& context);
///@}

/// The descriptor's factories: which backend kinds the plugin provides, and how to make them.
struct PluginFactories {
  ///@{
  /// The factory of each kind; nullptr when the plugin does not provide it.
  ComputeFactory compute = nullptr;
  StorageFactory storage = nullptr;
  NetworkFactory network = nullptr;
  ImageFactory image = nullptr;
  BackupFactory backup = nullptr;
  ///@}
};

/// What `hci_plugin_entry` returns. The fields up to `protobuf_version` are the stable header:
/// their layout never changes, so that any libhci can read them and refuse a plugin cleanly.
struct PluginDescriptor {
  std::uint32_t magic;        ///< kPluginMagic
  std::uint32_t abi_version;  ///< kPluginAbiVersion the plugin was built with
  const char* name;           ///< RFC 1123 label, unique among loaded plugins
  const char* version;        ///< semver, e.g. "1.2.0"
  const char* compiler;       ///< e.g. "gcc 12.2.0"
  const char* stdlib;         ///< "libstdc++" or "libc++"
  std::int32_t cxx11_abi;     ///< _GLIBCXX_USE_CXX11_ABI, or -1
  std::int32_t protobuf_version;  ///< GOOGLE_PROTOBUF_VERSION
  // End of the stable header.
  /// After the stable header: read only once `abi_version` was accepted.
  PluginFactories factories;
};

/// The type of `hci_plugin_entry`.
using PluginEntryFn = const PluginDescriptor* (*)();

}  // namespace hci

// The toolchain fingerprint, evaluated in the plugin's translation unit.
#if defined(__clang__)
#define HCI_TOOLCHAIN_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define HCI_TOOLCHAIN_COMPILER "gcc " __VERSION__
#else
#define HCI_TOOLCHAIN_COMPILER "unknown"
#endif
#if defined(_LIBCPP_VERSION)
#define HCI_TOOLCHAIN_STDLIB "libc++"
#elif defined(__GLIBCXX__)
#define HCI_TOOLCHAIN_STDLIB "libstdc++"
#else
#define HCI_TOOLCHAIN_STDLIB "unknown"
#endif
#if defined(_GLIBCXX_USE_CXX11_ABI)
#define HCI_TOOLCHAIN_CXX11_ABI _GLIBCXX_USE_CXX11_ABI
#else
#define HCI_TOOLCHAIN_CXX11_ABI -1
#endif

/// Defines the plugin's entry symbol. NAME and VERSION are string literals; the third argument
/// is a braced PluginFactories initializer, e.g. `{.compute = &MakeCompute}`.
#define HCI_PLUGIN(NAME, VERSION, ...)                                                        \
  HCI_PLUGIN_EXPORT const ::hci::PluginDescriptor* hci_plugin_entry() {                      \
    static const ::hci::PluginDescriptor descriptor{                                         \
        ::hci::kPluginMagic,     ::hci::kPluginAbiVersion, NAME,                             \
        VERSION,                 HCI_TOOLCHAIN_COMPILER,   HCI_TOOLCHAIN_STDLIB,             \
        HCI_TOOLCHAIN_CXX11_ABI, GOOGLE_PROTOBUF_VERSION,  ::hci::PluginFactories __VA_ARGS__}; \
    return &descriptor;                                                                      \
  }
