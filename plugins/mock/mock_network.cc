// The mock NetworkBackend: Harvester-style VLAN networks and ports in memory.
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mock_internal.h"

namespace hci::mock {
namespace {

constexpr char kNetworkKind[] = "Network";
constexpr char kPortKind[] = "Port";
constexpr std::uint32_t kMinVlan = 1;
constexpr std::uint32_t kMaxVlan = 4094;
constexpr std::uint32_t kMinMtu = 68;  // RFC 791's minimum for IPv4
constexpr std::uint32_t kMaxMtu = 65535;
constexpr char kDefaultClusterNetwork[] = "mgmt";  // Harvester's built-in cluster network

std::string VlanRangeText(std::uint32_t id) {
  return std::to_string(id) + " is outside " + std::to_string(kMinVlan) + "-" +
         std::to_string(kMaxVlan);
}

Status ValidateNetworkSpec(const v1::NetworkSpec& spec) {
  switch (spec.type()) {
    case v1::NETWORK_TYPE_L2_VLAN:
      if (spec.vlan_id() < kMinVlan || spec.vlan_id() > kMaxVlan) {
        return InvalidArgument("spec.vlan_id: " + VlanRangeText(spec.vlan_id()) +
                               " (required for an L2_VLAN network)");
      }
      if (spec.trunks_size() > 0) {
        return InvalidArgument("spec.trunks: only an L2_VLAN_TRUNK network has trunks");
      }
      break;
    case v1::NETWORK_TYPE_L2_VLAN_TRUNK: {
      if (spec.vlan_id() != 0) {
        return InvalidArgument(
            "spec.vlan_id: must be 0 for an L2_VLAN_TRUNK network (use "
            "spec.trunks)");
      }
      if (spec.trunks_size() == 0) {
        return InvalidArgument("spec.trunks: an L2_VLAN_TRUNK network needs at least one range");
      }
      for (int i = 0; i < spec.trunks_size(); ++i) {
        const auto& r = spec.trunks(i);
        std::string field = "spec.trunks[" + std::to_string(i) + "]";
        if (r.min_id() < kMinVlan || r.min_id() > kMaxVlan) {
          return InvalidArgument(field + ".min_id: " + VlanRangeText(r.min_id()));
        }
        if (r.max_id() < kMinVlan || r.max_id() > kMaxVlan) {
          return InvalidArgument(field + ".max_id: " + VlanRangeText(r.max_id()));
        }
        if (r.max_id() < r.min_id()) {
          return InvalidArgument(field + ".max_id: " + std::to_string(r.max_id()) +
                                 " is smaller than min_id " + std::to_string(r.min_id()));
        }
        for (int j = 0; j < i; ++j) {
          const auto& o = spec.trunks(j);
          if (r.min_id() <= o.max_id() && o.min_id() <= r.max_id()) {
            return InvalidArgument(field + ": " + std::to_string(r.min_id()) + "-" +
                                   std::to_string(r.max_id()) + " overlaps spec.trunks[" +
                                   std::to_string(j) + "]");
          }
        }
      }
      break;
    }
    case v1::NETWORK_TYPE_UNTAGGED:
      if (spec.vlan_id() != 0) {
        return InvalidArgument("spec.vlan_id: must be 0 for an UNTAGGED network");
      }
      if (spec.trunks_size() > 0) {
        return InvalidArgument("spec.trunks: only an L2_VLAN_TRUNK network has trunks");
      }
      break;
    default:
      return InvalidArgument("spec.type: " +
                             (spec.type() == v1::NETWORK_TYPE_UNSPECIFIED
                                  ? std::string("is required")
                                  : "unknown value " + std::to_string(spec.type())) +
                             " (expected L2_VLAN, L2_VLAN_TRUNK or UNTAGGED)");
  }
  if (spec.mtu() != 0 && (spec.mtu() < kMinMtu || spec.mtu() > kMaxMtu)) {
    return InvalidArgument("spec.mtu: " + std::to_string(spec.mtu()) + " is outside " +
                           std::to_string(kMinMtu) + "-" + std::to_string(kMaxMtu) +
                           " (0 means 1500)");
  }
  return Status();
}

std::string LowerMac(std::string mac) {
  std::transform(mac.begin(), mac.end(), mac.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return mac;
}

class MockNetwork final : public NetworkBackend {
 public:
  explicit MockNetwork(std::shared_ptr<BackendEnv> env) : env_(std::move(env)) {}

  FaultInjector* fault_injector() override { return env_->faults(); }

  v1::NetworkCapabilities Capabilities() const override {
    v1::NetworkCapabilities caps;
    caps.set_vlan(true);
    caps.set_trunk(true);
    caps.set_untagged(true);
    caps.set_mtu(true);
    caps.set_max_mtu(kMaxMtu);
    caps.set_ports(true);
    return caps;
  }

  Result<std::string> Metrics() override {
    HCI_RETURN_NOT_OK(env_->Enter("Metrics"));
    std::lock_guard lock(mu_);
    std::map<std::string, int> ports_per_network;
    for (const auto& [name, port] : ports_) ++ports_per_network[port.spec().network()];
    std::string out =
        "# HELP hci_mock_network_ports Ports plugged into each network.\n"
        "# TYPE hci_mock_network_ports gauge\n";
    for (const auto& [name, net] : networks_) {
      out += "hci_mock_network_ports{network=\"" + name + "\"} " +
             std::to_string(ports_per_network[name]) + "\n";
    }
    return out;
  }

  Result<v1::Network> CreateNetwork(const v1::CreateNetworkRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("CreateNetwork"));
    const std::string& name = request.metadata().name();
    std::lock_guard lock(mu_);
    if (auto it = networks_.find(name); it != networks_.end()) {
      if (!DescribeSpecDifference(it->second.spec(), request.spec()).empty()) {
        return SpecConflict("network", name, it->second.spec(), request.spec());
      }
      return it->second;
    }
    HCI_RETURN_NOT_OK(ValidateNetworkSpec(request.spec()));
    v1::Network net;
    *net.mutable_metadata() = NewObjectMeta(request.metadata());
    *net.mutable_spec() = request.spec();
    const std::string& cluster = request.spec().cluster_network();
    net.mutable_status()->set_phase(v1::NETWORK_PHASE_READY);
    net.mutable_status()->set_bridge((cluster.empty() ? kDefaultClusterNetwork : cluster) +
                                     std::string("-br"));
    auto* ready = net.mutable_status()->add_conditions();
    ready->set_type("Ready");
    ready->set_status(v1::CONDITION_STATUS_TRUE);
    ready->set_reason("Created");
    *ready->mutable_last_transition_time() = Now();
    auto& stored = networks_.emplace(name, std::move(net)).first->second;
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kNetworkKind, name, "NetworkReady",
                                  "network ready on bridge " + stored.status().bridge()));
    return stored;
  }

  Result<v1::Network> GetNetwork(const v1::GetNetworkRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetNetwork"));
    std::lock_guard lock(mu_);
    auto it = networks_.find(request.name());
    if (it == networks_.end()) return Missing("network", request.name());
    return it->second;
  }

  Result<v1::ListNetworksResponse> ListNetworks(const v1::ListNetworksRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListNetworks"));
    v1::ListNetworksResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, net] : networks_) {
      if (MatchesLabels(net.metadata().labels(), request.label_selector())) {
        *out.add_networks() = net;
      }
    }
    return out;
  }

  Status DeleteNetwork(const v1::DeleteNetworkRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeleteNetwork"));
    std::lock_guard lock(mu_);
    auto it = networks_.find(request.name());
    if (it == networks_.end()) return Status();
    std::vector<std::string> users;
    for (const auto& [name, port] : ports_) {
      if (port.spec().network() == request.name()) users.push_back(name);
    }
    if (!users.empty()) {
      std::string list;
      for (const auto& u : users) list += (list.empty() ? "" : ", ") + Quote(u);
      return FailedPrecondition("network " + Quote(request.name()) + " has " +
                                std::to_string(users.size()) + " port(s) (" + list +
                                "); delete them first");
    }
    networks_.erase(it);
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kNetworkKind, request.name(),
                                  "NetworkDeleted", "network deleted"));
    return Status();
  }

  Result<v1::Port> CreatePort(const v1::CreatePortRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("CreatePort"));
    const std::string& name = request.metadata().name();
    const auto& spec = request.spec();
    std::lock_guard lock(mu_);
    if (auto it = ports_.find(name); it != ports_.end()) {
      if (!DescribeSpecDifference(it->second.spec(), spec).empty()) {
        return SpecConflict("port", name, it->second.spec(), spec);
      }
      return it->second;
    }
    if (!spec.mac_address().empty() && !IsValidMac(spec.mac_address())) {
      return InvalidArgument("spec.mac_address: \"" + spec.mac_address() +
                             "\" is not a unicast MAC address like 52:54:00:12:34:56");
    }
    if (!networks_.contains(spec.network())) {
      return Missing("network", spec.network(), "spec.network");
    }
    std::string mac = LowerMac(spec.mac_address());
    if (!mac.empty()) {
      for (const auto& [other, port] : ports_) {
        if (port.spec().network() == spec.network() && port.status().mac_address() == mac) {
          return AlreadyExists("spec.mac_address: " + mac + " is already used by port " +
                               Quote(other) + " on network " + Quote(spec.network()));
        }
      }
    } else {
      for (unsigned attempt = 0; mac.empty() || MacUsedLocked(mac); ++attempt) {
        mac = StableMac("port/" + name, attempt);
      }
    }
    v1::Port port;
    *port.mutable_metadata() = NewObjectMeta(request.metadata());
    *port.mutable_spec() = spec;
    port.mutable_status()->set_phase(v1::NETWORK_PHASE_READY);
    port.mutable_status()->set_mac_address(mac);
    port.mutable_status()->set_interface_name(TapName(name));
    auto& stored = ports_.emplace(name, std::move(port)).first->second;
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kPortKind, name, "PortReady",
                                  "port " + stored.status().interface_name() + " (" + mac +
                                      ") on network " + Quote(spec.network())));
    return stored;
  }

  Result<v1::Port> GetPort(const v1::GetPortRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetPort"));
    std::lock_guard lock(mu_);
    auto it = ports_.find(request.name());
    if (it == ports_.end()) return Missing("port", request.name());
    return it->second;
  }

  Result<v1::ListPortsResponse> ListPorts(const v1::ListPortsRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListPorts"));
    v1::ListPortsResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, port] : ports_) {
      if (request.network().empty() || port.spec().network() == request.network()) {
        *out.add_ports() = port;
      }
    }
    return out;
  }

  Status DeletePort(const v1::DeletePortRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeletePort"));
    std::lock_guard lock(mu_);
    if (ports_.erase(request.name()) == 0) return Status();
    env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kPortKind, request.name(), "PortDeleted",
                                  "port deleted"));
    return Status();
  }

 private:
  bool MacUsedLocked(const std::string& mac) const {
    for (const auto& [name, port] : ports_) {
      if (port.status().mac_address() == mac) return true;
    }
    return false;
  }

  // Linux interface names have at most 15 characters: "tap" plus 8 hex digits of the name's hash.
  static std::string TapName(const std::string& port) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "tap%08x", static_cast<unsigned>(Fnv1a(port) & 0xffffffffu));
    return buf;
  }

  std::shared_ptr<BackendEnv> env_;
  std::mutex mu_;
  std::map<std::string, v1::Network> networks_;
  // spec.mac_address is kept as requested; status.mac_address holds the effective MAC.
  std::map<std::string, v1::Port> ports_;
};

}  // namespace

Result<std::unique_ptr<NetworkBackend>> MakeNetwork(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(auto env, BackendEnv::Make(context, BackendKind::kNetwork));
  return std::unique_ptr<NetworkBackend>(std::make_unique<MockNetwork>(std::move(env)));
}

}  // namespace hci::mock
