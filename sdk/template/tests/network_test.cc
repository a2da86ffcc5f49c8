// Unit tests of the example network backend, called directly through a TestContext.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_context.h"

namespace example {
namespace {

namespace v1 = hci::v1;
using ::testing::HasSubstr;
using testing::Made;
using testing::Named;
using testing::TestContext;

v1::CreateNetworkRequest VlanRequest(const std::string& name, std::uint32_t vlan_id) {
  v1::CreateNetworkRequest request;
  request.mutable_metadata()->set_name(name);
  request.mutable_spec()->set_type(v1::NETWORK_TYPE_L2_VLAN);
  request.mutable_spec()->set_vlan_id(vlan_id);
  return request;
}

TEST(NetworkTest, CreateIsIdempotentByName) {
  TestContext context;
  auto network = Made(MakeNetwork(context));
  auto first = network->CreateNetwork(VlanRequest("vlan100", 100));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status().phase(), v1::NETWORK_PHASE_READY);
  EXPECT_EQ(first->status().bridge(), "mgmt-br");
  EXPECT_TRUE(network->CreateNetwork(VlanRequest("vlan100", 100)).ok());
  EXPECT_EQ(network->CreateNetwork(VlanRequest("vlan100", 200)).status().code(),
            hci::StatusCode::kAlreadyExists);
  ASSERT_TRUE(network->DeleteNetwork(Named<v1::DeleteNetworkRequest>("vlan100")).ok());
  EXPECT_TRUE(network->DeleteNetwork(Named<v1::DeleteNetworkRequest>("vlan100")).ok());
  EXPECT_EQ(network->GetNetwork(Named<v1::GetNetworkRequest>("vlan100")).status().code(),
            hci::StatusCode::kNotFound);
}

TEST(NetworkTest, ErrorsNameTheField) {
  TestContext context(testing::NumberOption("max_mtu", 1500));
  auto network = Made(MakeNetwork(context));
  auto bad_vlan = network->CreateNetwork(VlanRequest("bad", 4095));
  EXPECT_EQ(bad_vlan.status().code(), hci::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_vlan.status().message(), HasSubstr("spec.vlan_id: 4095"));

  auto jumbo = VlanRequest("jumbo", 10);
  jumbo.mutable_spec()->set_mtu(9000);
  EXPECT_THAT(network->CreateNetwork(jumbo).status().message(),
              HasSubstr("spec.mtu: 9000 is outside 68-1500"));
  EXPECT_EQ(network->Capabilities().max_mtu(), 1500u);
}

TEST(NetworkTest, UnclaimedFeaturesAreUnimplemented) {
  TestContext context;
  auto network = Made(MakeNetwork(context));
  EXPECT_FALSE(network->Capabilities().trunk());
  v1::CreateNetworkRequest trunk;
  trunk.mutable_metadata()->set_name("trunk");
  trunk.mutable_spec()->set_type(v1::NETWORK_TYPE_L2_VLAN_TRUNK);
  EXPECT_EQ(network->CreateNetwork(trunk).status().code(), hci::StatusCode::kUnimplemented);
  EXPECT_FALSE(network->Capabilities().ports());
  EXPECT_EQ(network->ListPorts(v1::ListPortsRequest()).status().code(),
            hci::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace example
