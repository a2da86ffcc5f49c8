// Network checks: networks of each claimed type, VLAN and MTU ranges, ports, idempotency, bad
// requests, races.
#include <google/protobuf/util/message_differencer.h>

#include <algorithm>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

using google::protobuf::util::MessageDifferencer;

std::string Op(std::string_view op) { return OpKey(BackendKind::kNetwork, op); }

NetworkBackend& N(Context& ctx) { return *ctx.env.network; }

Result<v1::Network> GetNetwork(Context& ctx, const std::string& name) {
  v1::GetNetworkRequest r;
  r.set_name(name);
  return N(ctx).GetNetwork(r);
}
Status DeleteNetwork(Context& ctx, const std::string& name) {
  v1::DeleteNetworkRequest r;
  r.set_name(name);
  return N(ctx).DeleteNetwork(r);
}
Result<v1::Port> GetPort(Context& ctx, const std::string& name) {
  v1::GetPortRequest r;
  r.set_name(name);
  return N(ctx).GetPort(r);
}
Status DeletePort(Context& ctx, const std::string& name) {
  v1::DeletePortRequest r;
  r.set_name(name);
  return N(ctx).DeletePort(r);
}

int CountNetworks(Context& ctx, const std::string& name) {
  auto list = N(ctx).ListNetworks({});
  if (!list.ok()) return -1;
  return static_cast<int>(
      std::count_if(list->networks().begin(), list->networks().end(),
                    [&](const auto& n) { return n.metadata().name() == name; }));
}

testing::AssertionResult NetworkAbsent(Context& ctx, const std::string& name) {
  auto n = GetNetwork(ctx, name);
  if (n.status().code() == StatusCode::kNotFound) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "network " << name << " exists (GetNetwork answers " << n.status() << ")";
}

testing::AssertionResult PortAbsent(Context& ctx, const std::string& name) {
  auto p = GetPort(ctx, name);
  if (p.status().code() == StatusCode::kNotFound) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "port " << name << " exists (GetPort answers " << p.status() << ")";
}

testing::AssertionResult NetworkUnchanged(Context& ctx, const v1::Network& before) {
  auto now = GetNetwork(ctx, before.metadata().name());
  if (!now.ok()) return testing::AssertionFailure() << "GetNetwork: " << now.status();
  if (now->metadata().uid() != before.metadata().uid() ||
      !MessageDifferencer::Equals(now->spec(), before.spec())) {
    return testing::AssertionFailure() << "the refused call changed the network";
  }
  return testing::AssertionSuccess();
}

void ExpectCreateRefused(Context& ctx, const std::function<void(v1::CreateNetworkRequest&)>& edit,
                         StatusCode code, const std::string& field) {
  auto request = ctx.NetworkRequest(ctx.Name("bad"));
  edit(request);
  ctx.tracker.Network(request.metadata().name());
  EXPECT_TRUE(HasCode(N(ctx).CreateNetwork(request), code, field));
  if (IsValidName(request.metadata().name())) {
    EXPECT_TRUE(NetworkAbsent(ctx, request.metadata().name()));
  }
}

void SetType(v1::CreateNetworkRequest& r, v1::NetworkType type, std::uint32_t vlan) {
  auto* spec = r.mutable_spec();
  spec->set_type(type);
  spec->clear_trunks();
  spec->set_vlan_id(type == v1::NETWORK_TYPE_L2_VLAN ? vlan : 0);
  if (type == v1::NETWORK_TYPE_L2_VLAN_TRUNK) {
    auto* range = spec->add_trunks();
    range->set_min_id(vlan);
    range->set_max_id(std::min<std::uint32_t>(vlan + 10, 4094));
  }
}

}  // namespace

void AddNetworkTests(Env& env, std::vector<TestDef>& tests) {
  const auto& caps = env.network_caps;
  const int repeat = env.fixtures.repeat;
  const int threads = env.fixtures.concurrency;
  const std::string lifecycle = "NetworkLifecycle";
  const std::string capabilities = "NetworkCapabilities";

  struct TypeCase {
    const char* name;
    v1::NetworkType type;
    bool claimed;
  };
  const TypeCase types[] = {{"Vlan", v1::NETWORK_TYPE_L2_VLAN, caps.vlan()},
                            {"Trunk", v1::NETWORK_TYPE_L2_VLAN_TRUNK, caps.trunk()},
                            {"Untagged", v1::NETWORK_TYPE_UNTAGGED, caps.untagged()}};
  for (const auto& t : types) {
    v1::NetworkType type = t.type;
    if (t.claimed) {
      tests.push_back(
          {lifecycle,
           std::string("CreateGetListDelete") + t.name,
           {Op("CreateNetwork"), Op("GetNetwork"), Op("ListNetworks"), Op("DeleteNetwork")},
           [type](Context& ctx) {
             auto request = ctx.NetworkRequest(ctx.Name("net"));
             SetType(request, type, ctx.fx().vlan_id);
             const std::string name = request.metadata().name();
             ctx.tracker.Network(name);
             CONF_ASSIGN_OR_FAIL(auto net, N(ctx).CreateNetwork(request));
             EXPECT_EQ(net.metadata().name(), name);
             EXPECT_FALSE(net.metadata().uid().empty());
             EXPECT_TRUE(MessageDifferencer::Equals(net.spec(), request.spec()))
                 << "CreateNetwork returned another spec: " << net.spec().ShortDebugString();
             EXPECT_NE(net.status().phase(), v1::NETWORK_PHASE_FAILED) << net.status().message();
             CONF_ASSIGN_OR_FAIL(auto got, GetNetwork(ctx, name));
             EXPECT_EQ(got.metadata().uid(), net.metadata().uid());
             EXPECT_EQ(CountNetworks(ctx, name), 1);
             v1::ListNetworksRequest selected;
             (*selected.mutable_label_selector())["hci-conformance"] = "no-such-run";
             CONF_ASSIGN_OR_FAIL(auto other, N(ctx).ListNetworks(selected));
             EXPECT_FALSE(std::any_of(other.networks().begin(), other.networks().end(),
                                      [&](const auto& n) { return n.metadata().name() == name; }))
                 << "ListNetworks with a label selector the network does not match lists it";
             EXPECT_TRUE(IsOk(DeleteNetwork(ctx, name)));
             EXPECT_TRUE(NetworkAbsent(ctx, name));
           }});
    } else {
      tests.push_back({capabilities,
                       std::string(t.name) + "Unimplemented",
                       {Op("CreateNetwork")},
                       [type](Context& ctx) {
                         ExpectCreateRefused(
                             ctx, [&](auto& r) { SetType(r, type, ctx.fx().vlan_id); },
                             StatusCode::kUnimplemented, "");
                       }});
    }
  }

  if (caps.vlan()) {
    // Documented: InvalidArgument for a VLAN ID outside 1-4094 ("spec.vlan_id").
    for (std::uint32_t bad : {0u, 4095u}) {
      tests.push_back({"NetworkNegative",
                       "CreateNetwork_spec_vlan_id_" + std::to_string(bad),
                       {Op("CreateNetwork")},
                       [bad](Context& ctx) {
                         ExpectCreateRefused(
                             ctx,
                             [&](auto& r) {
                               SetType(r, v1::NETWORK_TYPE_L2_VLAN, 1);
                               r.mutable_spec()->set_vlan_id(bad);
                             },
                             StatusCode::kInvalidArgument, "spec.vlan_id");
                       }});
    }
  }

  if (caps.mtu()) {
    const std::uint32_t max = caps.max_mtu() == 0 ? 65535 : caps.max_mtu();
    tests.push_back({lifecycle, "Mtu", {Op("CreateNetwork")}, [max](Context& ctx) {
                       auto request = ctx.NetworkRequest(ctx.Name("mtu"));
                       request.mutable_spec()->set_mtu(max);
                       ctx.tracker.Network(request.metadata().name());
                       CONF_ASSIGN_OR_FAIL(auto net, N(ctx).CreateNetwork(request));
                       EXPECT_EQ(net.spec().mtu(), max);
                       // Documented: InvalidArgument for an MTU outside 68-65535.
                       ExpectCreateRefused(
                           ctx, [](auto& r) { r.mutable_spec()->set_mtu(67); },
                           StatusCode::kInvalidArgument, "spec.mtu");
                       if (max < 65535) {
                         ExpectCreateRefused(
                             ctx, [&](auto& r) { r.mutable_spec()->set_mtu(max + 1); },
                             StatusCode::kInvalidArgument, "spec.mtu");
                       }
                     }});
  } else {
    tests.push_back({capabilities, "MtuUnimplemented", {Op("CreateNetwork")}, [](Context& ctx) {
                       ExpectCreateRefused(
                           ctx, [](auto& r) { r.mutable_spec()->set_mtu(9000); },
                           StatusCode::kUnimplemented, "");
                     }});
  }

  if (caps.ports()) {
    tests.push_back(
        {lifecycle,
         "Ports",
         {Op("CreatePort"), Op("GetPort"), Op("ListPorts"), Op("DeletePort"), Op("DeleteNetwork")},
         [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
           const std::string network = net.metadata().name();
           CONF_ASSIGN_OR_FAIL(auto port, ctx.NewPort(network));
           const std::string name = port.metadata().name();
           EXPECT_EQ(port.spec().network(), network);
           EXPECT_FALSE(port.metadata().uid().empty());
           CONF_ASSIGN_OR_FAIL(auto got, GetPort(ctx, name));
           EXPECT_EQ(got.metadata().uid(), port.metadata().uid());
           v1::ListPortsRequest list;
           list.set_network(network);
           CONF_ASSIGN_OR_FAIL(auto listed, N(ctx).ListPorts(list));
           ASSERT_EQ(listed.ports_size(), 1) << "ListPorts of the network";
           EXPECT_EQ(listed.ports(0).metadata().name(), name);
           // Documented: FailedPrecondition while ports use it.
           EXPECT_TRUE(HasCode(DeleteNetwork(ctx, network), StatusCode::kFailedPrecondition))
               << "DeleteNetwork of a network with a port";
           EXPECT_TRUE(NetworkUnchanged(ctx, net));
           // Documented: NotFound for an unknown network.
           auto orphan = ctx.PortRequest(ctx.Name("orphan"), ctx.Name("missing"));
           ctx.tracker.Port(orphan.metadata().name());
           EXPECT_TRUE(HasCode(N(ctx).CreatePort(orphan), StatusCode::kNotFound))
               << "CreatePort on a network that does not exist";
           EXPECT_TRUE(PortAbsent(ctx, orphan.metadata().name()));
           EXPECT_TRUE(IsOk(DeletePort(ctx, name)));
           EXPECT_TRUE(PortAbsent(ctx, name));
           EXPECT_TRUE(IsOk(DeleteNetwork(ctx, network)));
           EXPECT_TRUE(NetworkAbsent(ctx, network));
         }});
    tests.push_back(
        {"NetworkIdempotency", "CreatePort", {Op("CreatePort")}, [repeat](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
           auto request = ctx.PortRequest(ctx.Name("port"), net.metadata().name());
           ctx.tracker.Port(request.metadata().name());
           CONF_ASSIGN_OR_FAIL(auto first, N(ctx).CreatePort(request));
           for (int i = 1; i < repeat; ++i) {
             auto again = N(ctx).CreatePort(request);
             ASSERT_TRUE(IsOk(again)) << "CreatePort, try " << i + 1;
             EXPECT_EQ(again->metadata().uid(), first.metadata().uid());
           }
         }});
    tests.push_back(
        {"NetworkIdempotency", "DeletePort", {Op("DeletePort")}, [repeat](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
           CONF_ASSIGN_OR_FAIL(auto port, ctx.NewPort(net.metadata().name()));
           for (int i = 0; i < repeat; ++i) {
             EXPECT_TRUE(IsOk(DeletePort(ctx, port.metadata().name())))
                 << "DeletePort, try " << i + 1;
           }
           EXPECT_TRUE(PortAbsent(ctx, port.metadata().name()));
         }});
    tests.push_back(
        {"NetworkNegative", "CreatePort_spec_network", {Op("CreatePort")}, [](Context& ctx) {
           auto request = ctx.PortRequest(ctx.Name("port"), "");
           ctx.tracker.Port(request.metadata().name());
           EXPECT_TRUE(
               HasCode(N(ctx).CreatePort(request), StatusCode::kInvalidArgument, "spec.network"));
           EXPECT_TRUE(PortAbsent(ctx, request.metadata().name()));
         }});
    tests.push_back(
        {"NetworkNegative", "CreatePort_metadata_name", {Op("CreatePort")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
           auto request = ctx.PortRequest("", net.metadata().name());
           EXPECT_TRUE(
               HasCode(N(ctx).CreatePort(request), StatusCode::kInvalidArgument, "metadata.name"));
         }});
    for (const char* op : {"GetPort", "DeletePort"}) {
      std::string o = op;
      tests.push_back({"NetworkNegative", o + "_name", {Op(o)}, [o](Context& ctx) {
                         Status s =
                             o == "GetPort" ? GetPort(ctx, "").status() : DeletePort(ctx, "");
                         EXPECT_TRUE(HasCode(s, StatusCode::kInvalidArgument, "name"));
                       }});
    }
    tests.push_back({"NetworkNotFound", "GetPort", {Op("GetPort")}, [](Context& ctx) {
                       EXPECT_TRUE(
                           HasCode(GetPort(ctx, ctx.Name("missing")), StatusCode::kNotFound));
                     }});
    tests.push_back(
        {"NetworkConcurrency", "CreatePort", {Op("CreatePort")}, [threads](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
           auto request = ctx.PortRequest(ctx.Name("port"), net.metadata().name());
           ctx.tracker.Port(request.metadata().name());
           bool slowed = SlowNextCall(ctx.env.network, "CreatePort");
           auto results =
               ctx.Race<Result<v1::Port>>(threads, [&](int) { return N(ctx).CreatePort(request); });
           ClearFaults(ctx.env.network);
           EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
           v1::ListPortsRequest list;
           list.set_network(net.metadata().name());
           CONF_ASSIGN_OR_FAIL(auto listed, N(ctx).ListPorts(list));
           EXPECT_EQ(listed.ports_size(), 1) << "concurrent creates made several ports";
         }});
  } else {
    tests.push_back({capabilities,
                     "PortsUnimplemented",
                     {Op("CreatePort"), Op("GetPort"), Op("ListPorts"), Op("DeletePort")},
                     [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
                       auto request = ctx.PortRequest(ctx.Name("port"), net.metadata().name());
                       ctx.tracker.Port(request.metadata().name());
                       EXPECT_TRUE(HasCode(N(ctx).CreatePort(request), StatusCode::kUnimplemented));
                       EXPECT_TRUE(HasCode(GetPort(ctx, request.metadata().name()),
                                           StatusCode::kUnimplemented));
                       EXPECT_TRUE(HasCode(N(ctx).ListPorts({}), StatusCode::kUnimplemented));
                       EXPECT_TRUE(HasCode(DeletePort(ctx, request.metadata().name()),
                                           StatusCode::kUnimplemented));
                     }});
  }

  // ---------------------------------------------------------------------------------------
  // Idempotency

  tests.push_back(
      {"NetworkIdempotency", "CreateNetwork", {Op("CreateNetwork")}, [repeat](Context& ctx) {
         auto request = ctx.NetworkRequest(ctx.Name("net"));
         ctx.tracker.Network(request.metadata().name());
         CONF_ASSIGN_OR_FAIL(auto first, N(ctx).CreateNetwork(request));
         for (int i = 1; i < repeat; ++i) {
           auto again = N(ctx).CreateNetwork(request);
           ASSERT_TRUE(IsOk(again)) << "CreateNetwork with the same spec, try " << i + 1;
           EXPECT_EQ(again->metadata().uid(), first.metadata().uid())
               << "a repeated create made a new network";
         }
         EXPECT_EQ(CountNetworks(ctx, request.metadata().name()), 1);
         auto other = request;
         if (other.spec().type() == v1::NETWORK_TYPE_L2_VLAN) {
           other.mutable_spec()->set_vlan_id(request.spec().vlan_id() % 4094 + 1);
         } else {
           other.mutable_spec()->set_cluster_network(ctx.Name("other"));
         }
         EXPECT_TRUE(HasCode(N(ctx).CreateNetwork(other), StatusCode::kAlreadyExists))
             << "CreateNetwork of an existing name with another spec";
         EXPECT_TRUE(NetworkUnchanged(ctx, first));
       }});

  tests.push_back(
      {"NetworkIdempotency", "DeleteNetwork", {Op("DeleteNetwork")}, [repeat](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
         for (int i = 0; i < repeat; ++i) {
           EXPECT_TRUE(IsOk(DeleteNetwork(ctx, net.metadata().name())))
               << "DeleteNetwork, try " << i + 1;
         }
         EXPECT_TRUE(NetworkAbsent(ctx, net.metadata().name()));
         EXPECT_TRUE(IsOk(DeleteNetwork(ctx, ctx.Name("never"))));
       }});

  // ---------------------------------------------------------------------------------------
  // Bad requests

  tests.push_back(
      {"NetworkNegative", "CreateNetwork_metadata_name", {Op("CreateNetwork")}, [](Context& ctx) {
         ExpectCreateRefused(
             ctx, [](auto& r) { r.mutable_metadata()->set_name(""); }, StatusCode::kInvalidArgument,
             "metadata.name");
       }});
  tests.push_back(
      {"NetworkNegative", "CreateNetwork_spec_type", {Op("CreateNetwork")}, [](Context& ctx) {
         ExpectCreateRefused(
             ctx,
             [](auto& r) {
               r.mutable_spec()->set_type(v1::NETWORK_TYPE_UNSPECIFIED);
               r.mutable_spec()->set_vlan_id(0);
               r.mutable_spec()->clear_trunks();
             },
             StatusCode::kInvalidArgument, "spec.type");
       }});
  if (caps.trunk()) {
    tests.push_back(
        {"NetworkNegative", "CreateNetwork_spec_trunks", {Op("CreateNetwork")}, [](Context& ctx) {
           ExpectCreateRefused(
               ctx,
               [](auto& r) {
                 SetType(r, v1::NETWORK_TYPE_L2_VLAN_TRUNK, 1);
                 r.mutable_spec()->clear_trunks();
               },
               StatusCode::kInvalidArgument, "spec.trunks");
         }});
  }
  for (const char* op : {"GetNetwork", "DeleteNetwork"}) {
    std::string o = op;
    tests.push_back({"NetworkNegative", o + "_name", {Op(o)}, [o](Context& ctx) {
                       Status s = o == "GetNetwork" ? GetNetwork(ctx, "").status()
                                                    : DeleteNetwork(ctx, "");
                       EXPECT_TRUE(HasCode(s, StatusCode::kInvalidArgument, "name"));
                     }});
  }
  tests.push_back({"NetworkNotFound", "GetNetwork", {Op("GetNetwork")}, [](Context& ctx) {
                     EXPECT_TRUE(
                         HasCode(GetNetwork(ctx, ctx.Name("missing")), StatusCode::kNotFound));
                   }});

  // ---------------------------------------------------------------------------------------
  // Races

  tests.push_back(
      {"NetworkConcurrency", "CreateNetwork", {Op("CreateNetwork")}, [threads](Context& ctx) {
         auto request = ctx.NetworkRequest(ctx.Name("net"));
         ctx.tracker.Network(request.metadata().name());
         bool slowed = SlowNextCall(ctx.env.network, "CreateNetwork");
         auto results = ctx.Race<Result<v1::Network>>(
             threads, [&](int) { return N(ctx).CreateNetwork(request); });
         ClearFaults(ctx.env.network);
         EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
         std::set<std::string> uids;
         for (const auto& r : results) {
           if (r.ok()) uids.insert(r->metadata().uid());
         }
         EXPECT_EQ(uids.size(), 1u);
         EXPECT_EQ(CountNetworks(ctx, request.metadata().name()), 1);
       }});
  tests.push_back(
      {"NetworkConcurrency", "DeleteNetwork", {Op("DeleteNetwork")}, [threads](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto net, ctx.NewNetwork());
         const std::string name = net.metadata().name();
         bool slowed = SlowNextCall(ctx.env.network, "DeleteNetwork");
         auto results = ctx.Race<Status>(threads, [&](int) { return DeleteNetwork(ctx, name); });
         ClearFaults(ctx.env.network);
         EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
         EXPECT_TRUE(NetworkAbsent(ctx, name));
       }});
}

}  // namespace hci::conformance::internal
