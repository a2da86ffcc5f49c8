// NetworkBackend: VLAN networks and ports.
#pragma once

#include "hci/backend.h"
#include "hci/export.h"
#include "hci/result.h"
#include "hci/v1/network.pb.h"

namespace hci {

/// Layer-2 networks (802.1Q VLAN ID 1-4094, trunks, untagged) and the ports VMs plug into.
/// Network and port names are RFC 1123 labels (validated by the core).
class HCI_EXPORT NetworkBackend : public Backend {
 public:
  ~NetworkBackend() override;

  /// What this backend implements; every optional method it does not claim answers
  /// Unimplemented. Cheap and constant for the backend's lifetime.
  virtual v1::NetworkCapabilities Capabilities() const = 0;

  /// Idempotent by name. InvalidArgument for a VLAN ID outside 1-4094 ("spec.vlan_id"), an MTU
  /// outside 68-65535 ("spec.mtu").
  virtual Result<v1::Network> CreateNetwork(const v1::CreateNetworkRequest& request) = 0;
  /// NotFound when there is no such network.
  virtual Result<v1::Network> GetNetwork(const v1::GetNetworkRequest& request) = 0;
  /// The networks carrying every label of `label_selector` (all networks when it is empty).
  virtual Result<v1::ListNetworksResponse> ListNetworks(const v1::ListNetworksRequest& request) = 0;
  /// OK when it does not exist. FailedPrecondition while ports use it.
  virtual Status DeleteNetwork(const v1::DeleteNetworkRequest& request) = 0;

  /// Optional (capability `ports`). Idempotent by name; NotFound for an unknown network.
  virtual Result<v1::Port> CreatePort(const v1::CreatePortRequest& request);
  /// Optional (capability `ports`). NotFound when there is no such port.
  virtual Result<v1::Port> GetPort(const v1::GetPortRequest& request);
  /// Optional (capability `ports`). The ports of `network`, or of every network when empty.
  virtual Result<v1::ListPortsResponse> ListPorts(const v1::ListPortsRequest& request);
  /// OK when it does not exist.
  virtual Status DeletePort(const v1::DeletePortRequest& request);
};

}  // namespace hci
