// ParseQmpMessage, QmpErrorToStatus and DefaultTimeoutFor on crafted input: no QEMU needed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/json/serialize.hpp>
#include <chrono>
#include <string>
#include <variant>

#include "qmp/qmp_client.h"

namespace hci::qmp {
namespace {

using ::testing::HasSubstr;

// Lines as QEMU 7.2 sends them.
constexpr std::string_view kGreeting =
    R"({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, )"
    R"("package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}})"
    "\r\n";
constexpr std::string_view kStatusReturn =
    R"({"return": {"status": "running", "singlestep": false, "running": true}, "id": 2})"
    "\r\n";
constexpr std::string_view kGenericError =
    R"({"id": 5, "error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}})";
constexpr std::string_view kShutdownEvent =
    R"({"timestamp": {"seconds": 1795316662, "microseconds": 232103}, "event": "SHUTDOWN", )"
    R"("data": {"guest": false, "reason": "host-qmp-quit"}})";

template <typename T>
T ParseAs(std::string_view line) {
  Result<QmpMessage> parsed = ParseQmpMessage(line);
  EXPECT_TRUE(parsed.ok()) << parsed.status() << "\nline: " << line;
  if (!parsed.ok()) return T{};
  const T* typed = std::get_if<T>(&*parsed);
  EXPECT_NE(typed, nullptr) << "wrong message kind (index " << parsed->index() << ") for " << line;
  return typed != nullptr ? *typed : T{};
}

// Asserts that `line` is refused with InvalidArgument mentioning `needle`.
void ExpectRejected(std::string_view line, std::string_view needle) {
  Result<QmpMessage> parsed = ParseQmpMessage(line);
  ASSERT_FALSE(parsed.ok()) << "accepted: " << line;
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << parsed.status();
  EXPECT_THAT(parsed.status().message(), HasSubstr(std::string(needle))) << "line: " << line;
}

TEST(ParseQmpMessage, Greeting) {
  auto greeting = ParseAs<QmpGreeting>(kGreeting);
  EXPECT_EQ(greeting.version.major, 7);
  EXPECT_EQ(greeting.version.minor, 2);
  EXPECT_EQ(greeting.version.micro, 22);
  EXPECT_EQ(greeting.version.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
  EXPECT_EQ(greeting.version.ToString(), "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)");
  EXPECT_THAT(greeting.capabilities, ::testing::ElementsAre("oob"));
}

TEST(ParseQmpMessage, GreetingWithoutPackageOrCapabilities) {
  auto greeting = ParseAs<QmpGreeting>(
      R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 3}}, "capabilities": []}})");
  EXPECT_EQ(greeting.version.ToString(), "3.0.0");
  EXPECT_TRUE(greeting.capabilities.empty());
}

TEST(ParseQmpMessage, Return) {
  auto reply = ParseAs<QmpReturn>(kStatusReturn);
  EXPECT_EQ(reply.id, boost::json::value(2));
  ASSERT_TRUE(reply.value.is_object());
  EXPECT_EQ(reply.value.at("status"), "running");
}

TEST(ParseQmpMessage, ReturnOfOtherShapesAndWithoutId) {
  EXPECT_EQ(ParseAs<QmpReturn>(R"({"return": 1000, "id": 8})").value, boost::json::value(1000));
  EXPECT_TRUE(ParseAs<QmpReturn>(R"({"return": [1, "a"], "id": "x"})").value.is_array());
  auto no_id = ParseAs<QmpReturn>(R"({"return": {}})");
  EXPECT_TRUE(no_id.id.is_null());
  EXPECT_TRUE(no_id.value.is_object());
}

TEST(ParseQmpMessage, Error) {
  auto error = ParseAs<QmpErrorReply>(kGenericError);
  EXPECT_EQ(error.id, boost::json::value(5));
  EXPECT_EQ(error.error_class, "GenericError");
  EXPECT_EQ(error.desc, "Parameter 'x' is unexpected");
}

TEST(ParseQmpMessage, ErrorWithoutIdAsQemuSendsForJsonSyntaxErrors) {
  auto error = ParseAs<QmpErrorReply>(
      R"({"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}})");
  EXPECT_TRUE(error.id.is_null());
  EXPECT_EQ(error.desc, "JSON parse error, expecting value");
}

TEST(ParseQmpMessage, Event) {
  auto event = ParseAs<QmpEvent>(kShutdownEvent);
  EXPECT_EQ(event.name, "SHUTDOWN");
  EXPECT_EQ(event.seconds, 1795316662);
  EXPECT_EQ(event.microseconds, 232103);
  EXPECT_EQ(event.data.at("reason"), "host-qmp-quit");
  EXPECT_EQ(event.sequence, 0u);
}

TEST(ParseQmpMessage, EventWithoutDataOrTimestamp) {
  auto stop =
      ParseAs<QmpEvent>(R"({"timestamp": {"seconds": -1, "microseconds": -1}, "event": "STOP"})");
  EXPECT_EQ(stop.name, "STOP");
  EXPECT_TRUE(stop.data.empty());
  EXPECT_EQ(stop.seconds, -1);
  auto bare = ParseAs<QmpEvent>(R"({"event": "RESUME"})");
  EXPECT_EQ(bare.seconds, -1);
  EXPECT_EQ(bare.microseconds, -1);
}

TEST(ParseQmpMessage, LineEndings) {
  EXPECT_TRUE(ParseQmpMessage(R"({"return": {}})").ok());
  EXPECT_TRUE(ParseQmpMessage("{\"return\": {}}\n").ok());
  EXPECT_TRUE(ParseQmpMessage("{\"return\": {}}\r\n").ok());
}

TEST(ParseQmpMessage, RejectsGarbage) {
  ExpectRejected("", "not valid JSON");
  ExpectRejected("hello", "not valid JSON");
  ExpectRejected(R"({"return": {})", "not valid JSON");
  ExpectRejected(R"({"return": {}} {"return": {}})", "not valid JSON");
  ExpectRejected(R"({"return": {},})", "not valid JSON");
  ExpectRejected(R"({'return': {}})", "not valid JSON");
  ExpectRejected("{\"return\": \"\xff\xfe\"}", "not valid JSON");
  ExpectRejected(std::string_view("{\"return\": \0}", 14), "not valid JSON");
}

TEST(ParseQmpMessage, RejectsWrongTopLevelShapes) {
  ExpectRejected("[]", "must be a JSON object, got an array");
  ExpectRejected("42", "must be a JSON object, got a number");
  ExpectRejected(R"("QMP")", "must be a JSON object, got a string");
  ExpectRejected("{}", "exactly one of the members QMP, return, error, event; it has 0");
  ExpectRejected(R"({"id": 1, "unknown": true})", "it has 0");
  ExpectRejected(R"({"return": {}, "error": {"class": "GenericError", "desc": "x"}, "id": 1})",
                 "it has 2");
  ExpectRejected(R"({"event": "STOP", "return": {}})", "it has 2");
}

TEST(ParseQmpMessage, RejectsWrongMemberTypes) {
  ExpectRejected(R"({"QMP": []})", "QMP: must be an object, got an array");
  ExpectRejected(R"({"QMP": {"capabilities": []}})", "QMP.version: missing");
  ExpectRejected(R"({"QMP": {"version": {"qemu": {"major": "7", "minor": 2, "micro": 0}},
                             "capabilities": []}})",
                 "QMP.version.qemu.major: must be a non-negative integer");
  ExpectRejected(R"({"QMP": {"version": {"qemu": {"major": -7, "minor": 2, "micro": 0}},
                             "capabilities": []}})",
                 "QMP.version.qemu.major: must be a non-negative integer");
  ExpectRejected(R"({"QMP": {"version": {"qemu": {"major": 7, "minor": 2.5, "micro": 0}},
                             "capabilities": []}})",
                 "QMP.version.qemu.minor");
  ExpectRejected(R"({"QMP": {"version": {"qemu": {"major": 7, "minor": 2}}, "capabilities": []}})",
                 "QMP.version.qemu.micro: missing");
  ExpectRejected(R"({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}},
                             "capabilities": "oob"}})",
                 "QMP.capabilities: must be an array, got a string");
  ExpectRejected(R"({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}},
                             "capabilities": ["oob", 1]}})",
                 "QMP.capabilities[1]: must be a string, got a number");
  ExpectRejected(R"({"error": "boom", "id": 1})", "error: must be an object, got a string");
  ExpectRejected(R"({"error": {"class": 1, "desc": "x"}, "id": 1})",
                 "error.class: must be a string, got a number");
  ExpectRejected(R"({"error": {"class": "GenericError"}, "id": 1})", "error.desc: missing");
  ExpectRejected(R"({"event": 42})", "event: must be a string, got a number");
  ExpectRejected(R"({"event": ""})", "event: must not be empty");
  ExpectRejected(R"({"event": "STOP", "data": [1]})", "data: must be an object, got an array");
  ExpectRejected(R"({"event": "STOP", "timestamp": 5})", "timestamp: must be an object");
  ExpectRejected(R"({"event": "STOP", "timestamp": {"seconds": 1.5, "microseconds": 0}})",
                 "timestamp.seconds: must be an integer");
  ExpectRejected(R"({"event": "STOP", "timestamp": {"seconds": 1}})",
                 "timestamp.microseconds: missing");
}

TEST(ParseQmpMessage, HugeNumbers) {
  // Out of double range: Boost.JSON would yield infinity, which is not JSON.
  ExpectRejected(R"({"return": 1e99999, "id": 1})", "number too large");
  ExpectRejected(R"({"return": {"a": [-1e400]}, "id": 1})", "number too large");
  // Large but finite numbers pass through as doubles.
  auto big = ParseAs<QmpReturn>(R"({"return": 123456789012345678901234567890, "id": 1})");
  EXPECT_TRUE(big.value.is_double());
  // An integer timestamp beyond int64 is refused rather than wrapped.
  ExpectRejected(
      R"({"event": "STOP", "timestamp": {"seconds": 18446744073709551615, "microseconds": 0}})",
      "timestamp.seconds: must be an integer");
}

TEST(ParseQmpMessage, DeepNesting) {
  auto nested = [](std::size_t depth) {
    // `depth` levels in total: the top-level object plus depth-1 arrays.
    return R"({"return": )" + std::string(depth - 1, '[') + std::string(depth - 1, ']') + "}";
  };
  EXPECT_TRUE(ParseQmpMessage(nested(kMaxJsonDepth)).ok());
  ExpectRejected(nested(kMaxJsonDepth + 1), "nested deeper than 256 levels");
  // Far deeper input must fail cleanly too, not exhaust the stack.
  ExpectRejected(std::string(1'000'000, '['), "nested deeper than");
}

TEST(ParseQmpMessage, OversizeLine) {
  std::string line = R"({"return": ")";
  line.append(kMaxMessageBytes, 'x');
  line += R"("})";
  ExpectRejected(line, "more than the limit of 16777216 bytes");
  // Exactly at the limit is accepted.
  std::string fits = R"({"return": ")";
  fits.append(kMaxMessageBytes - fits.size() - 2, 'x');
  fits += R"("})";
  ASSERT_EQ(fits.size(), kMaxMessageBytes);
  EXPECT_TRUE(ParseQmpMessage(fits + "\r\n").ok());
}

TEST(QmpErrorToStatus, MapsClasses) {
  struct Case {
    const char* error_class;
    StatusCode code;
  };
  for (const Case& c : {Case{"CommandNotFound", StatusCode::kUnimplemented},
                        Case{"DeviceNotFound", StatusCode::kNotFound},
                        Case{"DeviceNotActive", StatusCode::kFailedPrecondition},
                        Case{"KVMMissingCap", StatusCode::kUnimplemented},
                        Case{"GenericError", StatusCode::kFailedPrecondition},
                        Case{"SomethingNew", StatusCode::kUnknown}}) {
    Status s = QmpErrorToStatus("device_del", {{}, c.error_class, "it went wrong"});
    EXPECT_EQ(s.code(), c.code) << c.error_class;
    EXPECT_THAT(s.message(), ::testing::StartsWith("device_del: it went wrong")) << c.error_class;
  }
  EXPECT_THAT(QmpErrorToStatus("x", {{}, "SomethingNew", "d"}).message(),
              HasSubstr("QMP error class SomethingNew"));
  EXPECT_EQ(QmpErrorToStatus("x", {{}, "GenericError", ""}).message(), "x: QMP error GenericError");
}

TEST(DefaultTimeoutFor, FollowsProxmox) {
  using std::chrono::seconds;
  EXPECT_EQ(DefaultTimeoutFor("query-status"), seconds(5));
  EXPECT_EQ(DefaultTimeoutFor("device_add"), seconds(60));
  EXPECT_EQ(DefaultTimeoutFor("blockdev-add"), seconds(60));
  EXPECT_EQ(DefaultTimeoutFor("block-job-cancel"), std::chrono::minutes(10));
  EXPECT_EQ(DefaultTimeoutFor("query-migrate"), std::chrono::hours(1));
}

}  // namespace
}  // namespace hci::qmp
