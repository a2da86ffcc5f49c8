// The replicated plugin's options (backends.storage.options) and the defaults found at run time.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "hci/names.h"
#include "hci/options.h"
#include "process/process.h"
#include "replicated_internal.h"
#include "wire/replica_wire.h"

namespace hci::replicated::plugin {
namespace {

// "host:port" with a port in 1-65535 (host: a name, an IPv4 address or "[IPv6]"), or
// "unix:/absolute/path".
Status ValidateAddress(const std::string& field, const std::string& address) {
  if (address.starts_with("unix:")) {
    if (address.size() > 5 && address[5] == '/') return Status();
    return InvalidArgument(field + ": " + Quote(address) +
                           " must name an absolute path after unix:");
  }
  const auto colon = address.rfind(':');
  const std::string bad =
      field + ": " + Quote(address) + " is not HOST:PORT (port 1-65535) or unix:/PATH";
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return InvalidArgument(bad);
  }
  const std::string host = address.substr(0, colon);
  if (host.find(':') != std::string::npos && !(host.front() == '[' && host.back() == ']')) {
    return InvalidArgument(bad);
  }
  const std::string port = address.substr(colon + 1);
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit)) {
    return InvalidArgument(bad);
  }
  const int value = std::atoi(port.c_str());
  if (value < 1 || value > 65535) return InvalidArgument(bad);
  return Status();
}

Result<std::vector<NodeOption>> ParseNodes(OptionsReader& reader) {
  const google::protobuf::Value* nodes = reader.Raw("nodes");
  const std::string usage = "a list of {name, address} maps, one per storage node";
  if (nodes == nullptr) {
    return InvalidArgument("nodes: is required (" + usage + ")");
  }
  if (!nodes->has_list_value()) {
    return InvalidArgument("nodes: expected " + usage + ", got " + ValueKindName(*nodes));
  }
  std::vector<NodeOption> out;
  std::set<std::string> names;
  const auto& list = nodes->list_value();
  for (int i = 0; i < list.values_size(); ++i) {
    const std::string field = "nodes[" + std::to_string(i) + "]";
    const google::protobuf::Value& item = list.values(i);
    if (!item.has_struct_value()) {
      return InvalidArgument(field + ": expected a map with name and address, got " +
                             ValueKindName(item));
    }
    OptionsReader node(item.struct_value(), field);
    NodeOption n;
    HCI_ASSIGN_OR_RAISE(n.name, node.String("name", ""));
    HCI_ASSIGN_OR_RAISE(n.address, node.String("address", ""));
    HCI_RETURN_NOT_OK(node.RejectUnknown());
    if (n.name.empty()) return InvalidArgument(field + ".name: is required");
    HCI_RETURN_NOT_OK(ValidateName(field + ".name", n.name));
    if (!names.insert(n.name).second) {
      return InvalidArgument(field + ".name: " + Quote(n.name) + " is listed twice");
    }
    if (n.address.empty()) return InvalidArgument(field + ".address: is required");
    HCI_RETURN_NOT_OK(ValidateAddress(field + ".address", n.address));
    out.push_back(std::move(n));
  }
  if (out.empty()) return InvalidArgument("nodes: at least one storage node is required");
  return out;
}

bool IsReadableFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), R_OK) == 0;
}

}  // namespace

Result<std::string> ReadSecretFile(std::string_view field, const std::string& path) {
  auto secret = wire::ReadSecretFile(field, path);
  // Every problem with an option is the embedder's to fix: InvalidArgument, whatever the errno.
  if (!secret.ok()) return InvalidArgument(secret.status().message());
  return secret;
}

std::vector<std::string> EnginePluginCandidates() {
  std::vector<std::string> out;
  // Any object of this shared object locates it.
  static const char anchor = 0;
  Dl_info info{};
  if (::dladdr(&anchor, &info) != 0 && info.dli_fname != nullptr) {
    std::filesystem::path self(info.dli_fname);
    out.push_back((self.parent_path() / ".." / "engine" / kEnginePluginFile).lexically_normal());
  }
#ifdef HCI_REPLICATED_ENGINE_DIR
  out.push_back(std::string(HCI_REPLICATED_ENGINE_DIR) + "/" + kEnginePluginFile);
#endif
  return out;
}

Result<Options> ParseOptions(const google::protobuf::Struct& options,
                             const std::string& default_state_dir) {
  Options out;
  OptionsReader reader(options, "");
  HCI_ASSIGN_OR_RAISE(out.nodes, ParseNodes(reader));
  const auto node_count = static_cast<std::uint64_t>(out.nodes.size());

  HCI_ASSIGN_OR_RAISE(out.secret_file, reader.String("secret_file", ""));
  if (out.secret_file.empty()) {
    return InvalidArgument(
        "secret_file: is required (the file with the secret shared with the storage nodes' "
        "hci-replica-servers, mode 0600)");
  }
  HCI_ASSIGN_OR_RAISE(out.secret, ReadSecretFile("secret_file", out.secret_file));

  HCI_ASSIGN_OR_RAISE(out.state_dir, reader.String("state_dir", default_state_dir));
  if (out.state_dir.empty() || out.state_dir.front() != '/') {
    return InvalidArgument("state_dir: " + Quote(out.state_dir) + " is not an absolute path");
  }
  while (out.state_dir.size() > 1 && out.state_dir.back() == '/') out.state_dir.pop_back();

  HCI_ASSIGN_OR_RAISE(
      auto replicas,
      reader.Unsigned("replicas", std::min<std::uint64_t>(3, node_count), 1, node_count));
  out.replicas = static_cast<std::uint32_t>(replicas);
  HCI_ASSIGN_OR_RAISE(auto quorum, reader.Unsigned("write_quorum", 0, 0, node_count));
  out.write_quorum = static_cast<std::uint32_t>(quorum);

  HCI_ASSIGN_OR_RAISE(out.engine_plugin, reader.String("engine_plugin", ""));
  if (out.engine_plugin.empty()) {
    const auto candidates = EnginePluginCandidates();
    for (const auto& c : candidates) {
      if (IsReadableFile(c)) {
        out.engine_plugin = c;
        break;
      }
    }
    if (out.engine_plugin.empty()) {
      std::string searched;
      for (const auto& c : candidates) searched += (searched.empty() ? "" : ", ") + c;
      return InvalidArgument(std::string("engine_plugin: ") + kEnginePluginFile +
                             " was not found (searched " + searched +
                             "); set the option to its path");
    }
  } else if (out.engine_plugin.front() != '/') {
    return InvalidArgument("engine_plugin: " + Quote(out.engine_plugin) +
                           " is not an absolute path");
  } else if (!IsReadableFile(out.engine_plugin)) {
    return InvalidArgument("engine_plugin: " + Quote(out.engine_plugin) +
                           " does not exist or cannot be read");
  }

  HCI_ASSIGN_OR_RAISE(std::string nbdkit, reader.String("nbdkit", "nbdkit"));
  const char* path = std::getenv("PATH");
  auto resolved = process::FindProgram(nbdkit, path != nullptr ? path : "/usr/bin:/bin");
  if (!resolved.ok()) {
    return InvalidArgument("nbdkit: " + Quote(nbdkit) +
                           " was not found (install nbdkit, or set the option to its path): " +
                           resolved.status().message());
  }
  out.nbdkit = *resolved;

  HCI_ASSIGN_OR_RAISE(out.rebuild_bytes_per_second,
                      reader.Unsigned("rebuild_bytes_per_second", 0, 0, 1ull << 50));
  HCI_ASSIGN_OR_RAISE(
      out.io_timeout,
      reader.Millis("io_timeout_ms", std::chrono::milliseconds(5000),
                    std::chrono::milliseconds(100), std::chrono::milliseconds(600000)));
  HCI_ASSIGN_OR_RAISE(out.replica_replenish_wait_ms,
                      reader.Unsigned("replica_replenish_wait_ms", 600000, 0, 1ull << 40));
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  return out;
}

}  // namespace hci::replicated::plugin
