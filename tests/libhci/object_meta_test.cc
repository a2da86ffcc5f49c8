#include "hci/object_meta.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>

#include "hci/v1/compute.pb.h"

namespace hci {
namespace {

using google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

TEST(NewObjectMetaTest, CopiesIdentityAndSetsUidAndCreationTime) {
  v1::ObjectMeta requested;
  requested.set_name("vm-1");
  (*requested.mutable_labels())["app"] = "db";
  (*requested.mutable_annotations())["note"] = "x";
  requested.set_uid("caller-chosen");
  auto before = TimeUtil::GetCurrentTime();
  v1::ObjectMeta meta = NewObjectMeta(requested);
  auto after = TimeUtil::GetCurrentTime();
  EXPECT_EQ(meta.name(), "vm-1");
  EXPECT_EQ(meta.labels().at("app"), "db");
  EXPECT_EQ(meta.annotations().at("note"), "x");
  EXPECT_NE(meta.uid(), "caller-chosen");
  static const std::regex kUuidV4(
      "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  EXPECT_TRUE(std::regex_match(meta.uid(), kUuidV4)) << meta.uid();
  EXPECT_GE(meta.creation_time(), before);
  EXPECT_LE(meta.creation_time(), after);
}

TEST(NewObjectMetaTest, UidsAreUnique) {
  std::set<std::string> uids;
  for (int i = 0; i < 1000; ++i) uids.insert(NewObjectMeta({}).uid());
  EXPECT_EQ(uids.size(), 1000u);
}

TEST(MatchesLabelsTest, EverySelectorPairMustMatch) {
  google::protobuf::Map<std::string, std::string> labels;
  labels["app"] = "db";
  labels["tier"] = "back";
  google::protobuf::Map<std::string, std::string> selector;
  EXPECT_TRUE(MatchesLabels(labels, selector));
  selector["app"] = "db";
  EXPECT_TRUE(MatchesLabels(labels, selector));
  selector["tier"] = "front";
  EXPECT_FALSE(MatchesLabels(labels, selector));
  selector["tier"] = "back";
  selector["zone"] = "a";
  EXPECT_FALSE(MatchesLabels(labels, selector));
  EXPECT_FALSE(MatchesLabels({}, selector));
}

TEST(DescribeSpecDifferenceTest, EmptyWhenEqualElseTheFirstDifferenceOnOneLine) {
  v1::VirtualMachineSpec a;
  a.set_vcpus(2);
  a.set_memory_mib(512);
  v1::VirtualMachineSpec b = a;
  EXPECT_EQ(DescribeSpecDifference(a, b), "");
  b.set_vcpus(4);
  b.set_memory_mib(1024);
  std::string diff = DescribeSpecDifference(a, b);
  EXPECT_THAT(diff, HasSubstr("vcpus"));
  EXPECT_THAT(diff, HasSubstr("2"));
  EXPECT_THAT(diff, HasSubstr("4"));
  EXPECT_EQ(diff.find('\n'), std::string::npos) << diff;
  EXPECT_EQ(diff.find("memory_mib"), std::string::npos) << diff;
}

}  // namespace
}  // namespace hci
