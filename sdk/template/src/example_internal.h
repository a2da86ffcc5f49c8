// Private declarations of the example plugin: one factory per backend kind (plugin.cc hands them
// to HCI_PLUGIN; the unit tests call them directly) and the helpers the backends share.
//
// Providing fewer kinds? Delete the kind's .cc file and test, its factory below, its entries in
// plugin.cc and CMakeLists.txt, and its line in host_test.cc's kBackends.
#pragma once

#include <google/protobuf/message.h>

#include <memory>
#include <string>
#include <string_view>

#include "hci/plugin.h"

namespace example {

/// The plugin's name. It must be the same in HCI_PLUGIN (plugin.cc), hci_add_plugin()
/// (CMakeLists.txt, which names the file hci_example.so) and the host config's `plugin:` field.
inline constexpr char kPluginName[] = "example";

///@{
/// The factories, one per backend kind. Each parses the options of its binding
/// (backends.<kind>.options in the host config) and returns a backend that keeps its objects in
/// memory. Errors: InvalidArgument naming the option, e.g. `options.max_vcpus: 0 is not an
/// integer between 1 and 1024`. The image backend stores image files under <state_dir>/images;
/// the backup backend asks the host's storage backend for a volume's size.
hci::Result<std::unique_ptr<hci::ComputeBackend>> MakeCompute(hci::PluginContext& context);
hci::Result<std::unique_ptr<hci::StorageBackend>> MakeStorage(hci::PluginContext& context);
hci::Result<std::unique_ptr<hci::NetworkBackend>> MakeNetwork(hci::PluginContext& context);
hci::Result<std::unique_ptr<hci::ImageBackend>> MakeImage(hci::PluginContext& context);
hci::Result<std::unique_ptr<hci::BackupBackend>> MakeBackup(hci::PluginContext& context);
///@}

/// `"name"`, for messages.
std::string Quote(std::string_view name);

/// NotFound: `<field>: <what> "<name>" does not exist` (no `<field>: ` when `field` is empty).
hci::Status Missing(std::string_view what, std::string_view name, std::string_view field = {});

/// AlreadyExists for a create that repeats a name with another spec:
/// `<what> "<name>" already exists with a different spec (modified: vcpus: 1 -> 2)`.
hci::Status SpecConflict(std::string_view what, std::string_view name,
                         const google::protobuf::Message& existing,
                         const google::protobuf::Message& requested);

/// Unimplemented for a request field that asks for something Capabilities() does not claim:
/// `<field>: <feature> is not implemented by the example plugin`.
hci::Status NotClaimed(std::string_view field, std::string_view feature);

/// Publishes a Normal event about the object `kind`/`name` ("VirtualMachine", "demo"). The core
/// fills in the time, the node and the source, and delivers it from its own thread, so this
/// never blocks and may be called with a lock held.
void PublishEvent(hci::PluginContext& context, std::string_view kind, std::string_view name,
                  std::string_view reason, std::string message);

}  // namespace example
