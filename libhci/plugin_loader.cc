// STUB: replaced by the real loader (Boost.DLL).
#include "plugin_loader_internal.h"

namespace hci::internal {

PluginLoader::PluginLoader(Logger logger) : logger_(std::move(logger)) {}
void PluginLoader::ScanDirectories(const std::vector<std::string>&) {}
void PluginLoader::LoadFile(const std::string&) {}
const PluginDescriptor* PluginLoader::Find(std::string_view) const { return nullptr; }
const v1::PluginInfo* PluginLoader::FindInfo(std::string_view) const { return nullptr; }
void PluginLoader::Refuse(v1::PluginInfo, std::string) {}
Status CheckDescriptor(const PluginDescriptor&, const std::string&) { return Status(); }
std::string DescribeToolchain(const PluginDescriptor&) { return ""; }
const PluginDescriptor& CoreFingerprint() {
  static const PluginDescriptor d{};
  return d;
}

}  // namespace hci::internal
