// The example NetworkBackend: VLAN and untagged networks kept in memory. Trunks and ports are
// optional and not implemented: Capabilities() does not claim them, trunk networks are refused
// as Unimplemented, and the port methods keep NetworkBackend's Unimplemented defaults. A real
// plugin configures a bridge (Open vSwitch, Linux bridge) where this one edits a map.
#include "hci/network.h"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "example_internal.h"
#include "hci/object_meta.h"
#include "hci/options.h"

namespace example {
namespace {

namespace v1 = hci::v1;
using hci::Result;
using hci::Status;

constexpr char kNetworkKind[] = "Network";
constexpr std::uint32_t kMinMtu = 68;  // RFC 791's minimum for IPv4

struct NetworkOptions {
  std::uint64_t max_mtu = 9000;  // What the uplink carries.
};

Result<NetworkOptions> ParseNetworkOptions(const google::protobuf::Struct& options) {
  hci::OptionsReader reader(options, "options");
  NetworkOptions out;
  HCI_ASSIGN_OR_RAISE(out.max_mtu, reader.Unsigned("max_mtu", out.max_mtu, 1500, 65535));
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  return out;
}

class ExampleNetwork final : public hci::NetworkBackend {
 public:
  ExampleNetwork(hci::PluginContext& context, NetworkOptions options)
      : context_(context), options_(options) {}

  v1::NetworkCapabilities Capabilities() const override {
    v1::NetworkCapabilities caps;
    caps.set_vlan(true);
    caps.set_untagged(true);
    caps.set_mtu(true);
    caps.set_max_mtu(static_cast<std::uint32_t>(options_.max_mtu));
    return caps;
  }

  Result<v1::Network> CreateNetwork(const v1::CreateNetworkRequest& request) override {
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateSpec(request.spec()));
    std::lock_guard lock(mu_);
    if (auto it = networks_.find(name); it != networks_.end()) {
      if (!hci::DescribeSpecDifference(it->second.spec(), request.spec()).empty()) {
        return SpecConflict("network", name, it->second.spec(), request.spec());
      }
      return it->second;
    }
    v1::Network network;
    *network.mutable_metadata() = hci::NewObjectMeta(request.metadata());
    *network.mutable_spec() = request.spec();
    const std::string& cluster = request.spec().cluster_network();
    network.mutable_status()->set_phase(v1::NETWORK_PHASE_READY);
    network.mutable_status()->set_bridge((cluster.empty() ? "mgmt" : cluster) + "-br");
    PublishEvent(context_, kNetworkKind, name, "NetworkReady",
                 "on bridge " + network.status().bridge());
    return networks_.emplace(name, std::move(network)).first->second;
  }

  Result<v1::Network> GetNetwork(const v1::GetNetworkRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = networks_.find(request.name());
    if (it == networks_.end()) return Missing("network", request.name());
    return it->second;
  }

  Result<v1::ListNetworksResponse> ListNetworks(const v1::ListNetworksRequest& request) override {
    v1::ListNetworksResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, network] : networks_) {
      if (hci::MatchesLabels(network.metadata().labels(), request.label_selector())) {
        *out.add_networks() = network;
      }
    }
    return out;
  }

  Status DeleteNetwork(const v1::DeleteNetworkRequest& request) override {
    std::lock_guard lock(mu_);
    // No ports here, so nothing can be using a network; a plugin with ports answers
    // FailedPrecondition while any port is plugged in.
    if (networks_.erase(request.name()) > 0) {
      PublishEvent(context_, kNetworkKind, request.name(), "NetworkDeleted", "deleted");
    }
    return Status::OK();
  }

 private:
  Status ValidateSpec(const v1::NetworkSpec& spec) const {
    switch (spec.type()) {
      case v1::NETWORK_TYPE_L2_VLAN:
        if (spec.vlan_id() < 1 || spec.vlan_id() > 4094) {
          return hci::InvalidArgument("spec.vlan_id: " + std::to_string(spec.vlan_id()) +
                                      " is not a VLAN ID (1-4094)");
        }
        break;
      case v1::NETWORK_TYPE_UNTAGGED:
        if (spec.vlan_id() != 0) {
          return hci::InvalidArgument("spec.vlan_id: must be 0 for an UNTAGGED network");
        }
        break;
      case v1::NETWORK_TYPE_L2_VLAN_TRUNK:
        return NotClaimed("spec.type", "an L2_VLAN_TRUNK network");
      default:
        return hci::InvalidArgument("spec.type: " + std::to_string(spec.type()) +
                                    " is not L2_VLAN or UNTAGGED");
    }
    if (spec.trunks_size() > 0) {
      return hci::InvalidArgument("spec.trunks: only an L2_VLAN_TRUNK network has trunks");
    }
    if (spec.mtu() != 0 && (spec.mtu() < kMinMtu || spec.mtu() > options_.max_mtu)) {
      return hci::InvalidArgument("spec.mtu: " + std::to_string(spec.mtu()) + " is outside " +
                                  std::to_string(kMinMtu) + "-" + std::to_string(options_.max_mtu) +
                                  " (0 means 1500)");
    }
    return Status::OK();
  }

  hci::PluginContext& context_;
  const NetworkOptions options_;
  std::mutex mu_;
  std::map<std::string, v1::Network> networks_;
};

}  // namespace

Result<std::unique_ptr<hci::NetworkBackend>> MakeNetwork(hci::PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(NetworkOptions options, ParseNetworkOptions(context.options()));
  return std::unique_ptr<hci::NetworkBackend>(std::make_unique<ExampleNetwork>(context, options));
}

}  // namespace example
