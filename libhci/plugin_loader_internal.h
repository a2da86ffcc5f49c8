// The plugin loader: the only code in libhci that includes Boost.DLL.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "hci/logging.h"
#include "hci/plugin.h"
#include "hci/status.h"
#include "hci/v1/host.pb.h"

namespace hci::internal {

// Loads plugin shared objects and remembers why each refused one was refused. Loaded libraries
// stay mapped for the life of the process (plugins are never unloaded), even after the loader
// is destroyed; loading the same file again reuses the mapping.
class PluginLoader {
 public:
  explicit PluginLoader(Logger logger);

  // Loads every regular file named *.so in each directory (symlinks followed), directories in the
  // given order and files sorted by name. A directory that does not exist is logged and skipped;
  // a directory writable by other users refuses every plugin in it. Never fails as a whole: the
  // outcome of each file is in report().
  void ScanDirectories(const std::vector<std::string>& dirs);

  // Loads one file and records the outcome in report(): refused (with the reason naming the file
  // and, for version checks, both versions) when the file or its directory is writable by
  // other users or not owned by root or this user, it is not an ELF shared object, dlopen fails,
  // the entry symbol is missing, the descriptor's magic, ABI version or toolchain does not match,
  // the name is not an RFC 1123 label or the version is empty, or another loaded file already has
  // that name. A file whose canonical path was already looked at by this loader is skipped (no
  // report entry): reaching one plugin through two directories or a symlink is not a duplicate.
  void LoadFile(const std::string& path);

  // One entry per file looked at, in order.
  const std::vector<v1::PluginInfo>& report() const { return report_; }

  // The descriptor of the loaded plugin `name`, or nullptr if none was loaded.
  const PluginDescriptor* Find(std::string_view name) const;
  // The report entry for `name`: the loaded one; else the last refused one whose descriptor has
  // that name; else the last one refused before its descriptor was read whose file is named
  // hci_<name>.so (hci_add_plugin's naming), so that a binding to it can say why. nullptr if none.
  const v1::PluginInfo* FindInfo(std::string_view name) const;

 private:
  struct Loaded {
    std::string name;
    std::string path;
    const PluginDescriptor* descriptor;
  };
  void Refuse(v1::PluginInfo info, std::string reason);

  Logger logger_;
  std::vector<v1::PluginInfo> report_;
  std::vector<Loaded> loaded_;
  // Canonical path -> the path it was first reached by.
  std::map<std::string, std::string> seen_;
};

// Checks a descriptor's stable header against this libhci: magic, ABI version within
// [kPluginAbiOldest, kPluginAbiVersion], stdlib, _GLIBCXX_USE_CXX11_ABI and protobuf version.
// The error (FailedPrecondition) names `path` and both sides' values.
Status CheckDescriptor(const PluginDescriptor& descriptor, const std::string& path);

// "gcc 12.2.0, libstdc++, cxx11-abi 1, protobuf 3021012" for a descriptor's toolchain fields.
std::string DescribeToolchain(const PluginDescriptor& descriptor);

// This libhci's own descriptor-shaped fingerprint (name and factories empty).
const PluginDescriptor& CoreFingerprint();

}  // namespace hci::internal
