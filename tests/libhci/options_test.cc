#include "hci/options.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace hci {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

google::protobuf::Struct Json(const std::string& json) {
  google::protobuf::Struct s;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &s).ok()) << json;
  return s;
}

TEST(OptionsReaderTest, AbsentKeysGiveTheDefaults) {
  google::protobuf::Struct s;
  OptionsReader r(s, "options");
  EXPECT_EQ(*r.String("name", "dflt"), "dflt");
  EXPECT_EQ(*r.Unsigned("count", 7, 0, 10), 7u);
  EXPECT_EQ(*r.Bool("flag", true), true);
  EXPECT_EQ(*r.Millis("wait", milliseconds(250), milliseconds(0), milliseconds(1000)),
            milliseconds(250));
  EXPECT_EQ(r.Raw("list"), nullptr);
  EXPECT_TRUE(r.RejectUnknown().ok());
}

TEST(OptionsReaderTest, ReadsTypedValues) {
  auto s = Json(R"({"name": "qemu-img", "count": 10, "flag": false, "wait": 1000,
                    "list": [1, 2]})");
  OptionsReader r(s, "options");
  EXPECT_EQ(*r.String("name", "x"), "qemu-img");
  EXPECT_EQ(*r.Unsigned("count", 0, 10, 10), 10u);
  EXPECT_EQ(*r.Bool("flag", true), false);
  EXPECT_EQ(*r.Millis("wait", milliseconds(0), milliseconds(1), milliseconds(1000)),
            milliseconds(1000));
  const google::protobuf::Value* list = r.Raw("list");
  ASSERT_NE(list, nullptr);
  EXPECT_EQ(list->list_value().values_size(), 2);
  EXPECT_TRUE(r.RejectUnknown().ok());
}

TEST(OptionsReaderTest, WrongKindsNameTheFieldAndTheKind) {
  auto s = Json(R"({"name": 3, "count": "many", "flag": "yes", "wait": [1], "empty": ""})");
  OptionsReader r(s, "options");
  auto name = r.String("name", "");
  EXPECT_EQ(name.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(name.status().message(), "options.name: expected a string, got a number");
  EXPECT_EQ(r.Unsigned("count", 0).status().message(),
            "options.count: expected a non-negative integer, got a string");
  EXPECT_EQ(r.Bool("flag", false).status().message(),
            "options.flag: expected a boolean, got a string");
  EXPECT_EQ(r.Millis("wait", milliseconds(0), milliseconds(0), milliseconds(10)).status().message(),
            "options.wait: expected a number of milliseconds, got a list");
  EXPECT_EQ(r.String("empty", "x").status().message(), "options.empty: must not be empty");
  EXPECT_EQ(*r.String("empty", "x", /*allow_empty=*/true), "");
  // null is a value of the wrong kind, not an absent key: `key:` with nothing after it in YAML
  // is more likely a mistake than a wish for the default.
  auto null = Json(R"({"count": null})");
  OptionsReader n(null, "options");
  EXPECT_EQ(n.Unsigned("count", 1).status().message(),
            "options.count: expected a non-negative integer, got null");
  ASSERT_NE(n.Raw("count"), nullptr);
}

TEST(OptionsReaderTest, NumbersOutsideTheRangeOrNotWholeAreRefused) {
  auto s = Json(R"({"frac": 1.5, "neg": -1, "low": 0, "high": 11, "huge": 1e30, "ms": 2.5})");
  OptionsReader r(s, "");
  EXPECT_EQ(r.Unsigned("frac", 0, 0, 10).status().message(),
            "frac: 1.500000 is not an integer between 0 and 10");
  EXPECT_EQ(r.Unsigned("neg", 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Unsigned("low", 5, 1, 10).status().message(),
            "low: 0.000000 is not an integer between 1 and 10");
  EXPECT_EQ(r.Unsigned("high", 5, 1, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Unsigned("huge", 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Millis("ms", milliseconds(0), milliseconds(0), milliseconds(10)).status().message(),
            "ms: 2.500000 is not an integer between 0 and 10 (ms)");
}

TEST(OptionsReaderTest, RejectUnknownNamesTheKeyAndListsTheKnownOnes) {
  auto s = Json(R"({"latencyy_ms": 3, "b": 1, "zzz": 2})");
  OptionsReader r(s, "options");
  ASSERT_TRUE(r.Unsigned("b", 0).ok());
  ASSERT_TRUE(r.Unsigned("a", 0).ok());
  ASSERT_TRUE(r.Bool("c", false).ok());
  Status st = r.RejectUnknown();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "options.latencyy_ms: unknown option (known: a, b, c)");
  // A key whose read failed still counts as known: its own error is the one to report.
  ASSERT_FALSE(r.Bool("zzz", false).ok());
  EXPECT_THAT(r.RejectUnknown().message(), HasSubstr("latencyy_ms"));
  ASSERT_TRUE(r.Unsigned("latencyy_ms", 0).ok());
  EXPECT_TRUE(r.RejectUnknown().ok());
}

TEST(OptionsReaderTest, FieldJoinsThePrefix) {
  google::protobuf::Struct s;
  EXPECT_EQ(OptionsReader(s, "faults[0]").Field("code"), "faults[0].code");
  EXPECT_EQ(OptionsReader(s, "").Field("code"), "code");
}

TEST(ValueKindNameTest, NamesEveryKind) {
  google::protobuf::Value v;
  EXPECT_EQ(ValueKindName(v), "nothing");
  v.set_null_value(google::protobuf::NULL_VALUE);
  EXPECT_EQ(ValueKindName(v), "null");
  v.set_number_value(1);
  EXPECT_EQ(ValueKindName(v), "a number");
  v.set_string_value("s");
  EXPECT_EQ(ValueKindName(v), "a string");
  v.set_bool_value(true);
  EXPECT_EQ(ValueKindName(v), "a boolean");
  v.mutable_struct_value();
  EXPECT_EQ(ValueKindName(v), "a map");
  v.mutable_list_value();
  EXPECT_EQ(ValueKindName(v), "a list");
}

}  // namespace
}  // namespace hci
