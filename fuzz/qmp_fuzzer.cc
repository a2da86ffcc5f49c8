// libFuzzer target for hci::qmp::ParseQmpMessage: one input is one line from a QMP server.
//
// Beyond "no crash, no sanitizer report", checks that whatever the parser accepts can be
// serialized back to valid JSON (no NaN or infinity slips through). Values are not compared:
// Boost 1.81 does not promise correctly rounded doubles on parse, so equality could fail falsely.
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <variant>

#include "qmp/qmp_client.h"

namespace {

namespace json = boost::json;

void CheckRoundTrip(const json::value& v) {
  json::parse_options options;
  options.max_depth = hci::qmp::kMaxJsonDepth;
  json::error_code ec;
  json::value again = json::parse(json::serialize(v), ec, json::storage_ptr(), options);
  // Numbers may change representation (uint64 1 reads back as int64 1); nothing else may.
  const bool same_kind = again.kind() == v.kind() || (again.is_number() && v.is_number());
  if (ec || !same_kind) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  hci::Result<hci::qmp::QmpMessage> parsed = hci::qmp::ParseQmpMessage(line);
  if (!parsed.ok()) {
    // Every refusal must be an InvalidArgument (or, out of memory, ResourceExhausted) with a
    // message.
    const hci::StatusCode code = parsed.status().code();
    if ((code != hci::StatusCode::kInvalidArgument &&
         code != hci::StatusCode::kResourceExhausted) ||
        parsed.status().message().empty()) {
      __builtin_trap();
    }
    return 0;
  }
  const hci::qmp::QmpMessage& message = *parsed;
  if (const auto* ret = std::get_if<hci::qmp::QmpReturn>(&message)) {
    CheckRoundTrip(ret->value);
    CheckRoundTrip(ret->id);
  } else if (const auto* event = std::get_if<hci::qmp::QmpEvent>(&message)) {
    if (event->name.empty()) __builtin_trap();
    CheckRoundTrip(event->data);
  } else if (const auto* greeting = std::get_if<hci::qmp::QmpGreeting>(&message)) {
    if (greeting->version.major < 0 || greeting->version.minor < 0 || greeting->version.micro < 0) {
      __builtin_trap();
    }
  } else if (const auto* error = std::get_if<hci::qmp::QmpErrorReply>(&message)) {
    CheckRoundTrip(error->id);
  }
  return 0;
}
