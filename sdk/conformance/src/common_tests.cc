// Checks for every plugin: the loader's handshake, stable capabilities, Metrics, and the final
// leak check.
#include <google/protobuf/util/message_differencer.h>

#include <sstream>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

using google::protobuf::util::MessageDifferencer;

// OK when `text` reads as Prometheus text exposition 0.0.4: comments, blank lines and samples
// `name{labels} value [timestamp]` with a valid metric name and a numeric value.
Status CheckExposition(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line.front() == '#') continue;
    std::size_t i = 0;
    auto name_char = [](char c, bool first) {
      return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
             (!first && std::isdigit(static_cast<unsigned char>(c)));
    };
    while (i < line.size() && name_char(line[i], i == 0)) ++i;
    if (i == 0) return InvalidArgument("line " + std::to_string(n) + ": no metric name: " + line);
    if (i < line.size() && line[i] == '{') {
      auto close = line.find('}', i);
      if (close == std::string::npos) {
        return InvalidArgument("line " + std::to_string(n) + ": unterminated labels: " + line);
      }
      i = close + 1;
    }
    if (i >= line.size() || line[i] != ' ') {
      return InvalidArgument("line " + std::to_string(n) + ": no value: " + line);
    }
    std::string value = line.substr(i + 1);
    value = value.substr(0, value.find(' '));
    char* end = nullptr;
    std::strtod(value.c_str(), &end);
    bool special = value == "NaN" || value == "+Inf" || value == "-Inf";
    if (!special && (value.empty() || end == nullptr || *end != '\0')) {
      return InvalidArgument("line " + std::to_string(n) + ": \"" + value +
                             "\" is not a number: " + line);
    }
  }
  return Status();
}

Backend* BackendOf(Env& env, BackendKind kind) {
  switch (kind) {
    case BackendKind::kCompute:
      return env.compute;
    case BackendKind::kStorage:
      return env.storage;
    case BackendKind::kNetwork:
      return env.network;
    case BackendKind::kImage:
      return env.image;
    case BackendKind::kBackup:
      return env.backup;
  }
  return nullptr;
}

// Capabilities() twice, as the message of its kind.
template <typename Caps>
void ExpectStable(const Caps& first, const Caps& second) {
  std::string diff;
  MessageDifferencer d;
  d.ReportDifferencesToString(&diff);
  EXPECT_TRUE(d.Compare(first, second)) << "Capabilities() changed between two calls: " << diff;
}

}  // namespace

void AddCommonTests(Env& env, std::vector<TestDef>& tests) {
  tests.push_back({"Handshake", "PluginLoads", {}, [](Context& ctx) {
                     const Env& env = ctx.env;
                     ASSERT_TRUE(env.load_error.ok())
                         << "the plugin cannot be tested: " << env.load_error;
                     const v1::PluginInfo& info = env.plugin;
                     EXPECT_EQ(info.state(), v1::PLUGIN_STATE_LOADED) << info.reason();
                     EXPECT_TRUE(IsValidName(info.name())) << "name \"" << info.name() << "\"";
                     EXPECT_FALSE(info.version().empty());
                     EXPECT_GE(info.abi_version(), kPluginAbiOldest);
                     EXPECT_LE(info.abi_version(), kPluginAbiVersion);
                     EXPECT_FALSE(info.toolchain().empty());
                     EXPECT_GT(info.kinds_size(), 0) << "the plugin provides no backend kind";
                     EXPECT_FALSE(env.kinds.empty());
                   }});
  if (!env.load_error.ok()) return;

  for (BackendKind kind : env.kinds) {
    const std::string k(BackendKindName(kind));
    std::string suite = "Handshake";
    tests.push_back({suite, "BackendCreated_" + k, {}, [kind, k](Context& ctx) {
                       EXPECT_NE(BackendOf(ctx.env, kind), nullptr)
                           << "Host::Open succeeded but no " << k << " backend is configured";
                     }});
    tests.push_back({suite, "CapabilitiesStable_" + k, {}, [kind](Context& ctx) {
                       Env& e = ctx.env;
                       switch (kind) {
                         case BackendKind::kCompute:
                           ExpectStable(e.compute->Capabilities(), e.compute->Capabilities());
                           break;
                         case BackendKind::kStorage:
                           ExpectStable(e.storage->Capabilities(), e.storage->Capabilities());
                           if (e.storage_caps.replication()) {
                             EXPECT_GE(e.storage_caps.max_replicas(), 1u)
                                 << "replication is claimed with max_replicas 0";
                           }
                           break;
                         case BackendKind::kNetwork:
                           ExpectStable(e.network->Capabilities(), e.network->Capabilities());
                           if (e.network_caps.mtu() && e.network_caps.max_mtu() != 0) {
                             EXPECT_GE(e.network_caps.max_mtu(), 68u);
                             EXPECT_LE(e.network_caps.max_mtu(), 65535u);
                           }
                           break;
                         case BackendKind::kImage:
                           ExpectStable(e.image->Capabilities(), e.image->Capabilities());
                           break;
                         case BackendKind::kBackup:
                           ExpectStable(e.backup->Capabilities(), e.backup->Capabilities());
                           break;
                       }
                     }});
    tests.push_back({"Metrics", k, {OpKey(kind, "Metrics")}, [kind](Context& ctx) {
                       Backend* backend = BackendOf(ctx.env, kind);
                       ASSERT_NE(backend, nullptr);
                       auto text = backend->Metrics();
                       if (text.status().code() == StatusCode::kUnimplemented) {
                         std::lock_guard lock(ctx.env.mu);
                         ctx.env.observed_unimplemented.insert(OpKey(kind, "Metrics"));
                         return;
                       }
                       ASSERT_TRUE(IsOk(text)) << "Metrics() must answer OK or Unimplemented";
                       EXPECT_TRUE(IsOk(CheckExposition(*text)))
                           << "Metrics() is not Prometheus text exposition:\n"
                           << *text;
                     }});
  }
}

void AddCleanupTests(Env& env, std::vector<TestDef>& tests) {
  (void)env;
  tests.push_back({"Cleanup", "NothingLeftBehind", {}, [](Context& ctx) {
                     Env& e = ctx.env;
                     const std::string prefix = e.prefix();
                     std::vector<std::string> left;
                     auto check = [&](const std::string& kind, const std::string& name) {
                       if (name.rfind(prefix, 0) == 0) left.push_back(kind + " " + name);
                     };
                     if (e.compute != nullptr) {
                       auto list = e.compute->ListVms({});
                       ASSERT_TRUE(IsOk(list));
                       for (const auto& x : list->vms()) check("vm", x.metadata().name());
                     }
                     if (e.storage != nullptr) {
                       auto list = e.storage->ListVolumes({});
                       ASSERT_TRUE(IsOk(list));
                       for (const auto& x : list->volumes()) check("volume", x.metadata().name());
                     }
                     if (e.network != nullptr) {
                       auto list = e.network->ListNetworks({});
                       ASSERT_TRUE(IsOk(list));
                       for (const auto& x : list->networks()) check("network", x.metadata().name());
                       if (e.network_caps.ports()) {
                         auto ports = e.network->ListPorts({});
                         ASSERT_TRUE(IsOk(ports));
                         for (const auto& x : ports->ports()) check("port", x.metadata().name());
                       }
                     }
                     if (e.image != nullptr) {
                       auto list = e.image->ListImages({});
                       ASSERT_TRUE(IsOk(list));
                       for (const auto& x : list->images()) check("image", x.metadata().name());
                     }
                     if (e.backup != nullptr) {
                       auto list = e.backup->ListBackupTargets({});
                       ASSERT_TRUE(IsOk(list));
                       for (const auto& x : list->targets()) {
                         check("backup target", x.metadata().name());
                       }
                     }
                     std::string all;
                     for (const auto& l : left) all += "\n  " + l;
                     EXPECT_TRUE(left.empty())
                         << "objects the kit created are still listed after every check "
                            "cleaned up:"
                         << all;
                   }});
}

}  // namespace hci::conformance::internal
