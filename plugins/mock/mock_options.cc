// Parsing of the mock's binding options (backends.<kind>.options in the host config).
#include <cctype>
#include <cmath>
#include <limits>
#include <string>

#include "mock_internal.h"

namespace hci::mock {
namespace {

using google::protobuf::Value;

std::string KindName(const Value& v) {
  switch (v.kind_case()) {
    case Value::kNullValue:
      return "null";
    case Value::kNumberValue:
      return "a number";
    case Value::kStringValue:
      return "a string";
    case Value::kBoolValue:
      return "a boolean";
    case Value::kStructValue:
      return "a map";
    case Value::kListValue:
      return "a list";
    default:
      return "nothing";
  }
}

// A non-negative integer no larger than `max`.
Result<std::uint64_t> ParseCount(const Value& v, const std::string& field, std::uint64_t max) {
  if (v.kind_case() != Value::kNumberValue) {
    return InvalidArgument(field + ": expected a non-negative integer, got " + KindName(v));
  }
  double d = v.number_value();
  if (!std::isfinite(d) || d < 0 || d != std::floor(d) || d > static_cast<double>(max)) {
    return InvalidArgument(field + ": " + std::to_string(d) + " is not an integer between 0 and " +
                           std::to_string(max));
  }
  return static_cast<std::uint64_t>(d);
}

std::string Normalize(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '_' || c == '-') continue;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// A status code as a number (14) or a name ("Unavailable", "UNAVAILABLE").
Result<int> ParseCode(const Value& v, const std::string& field) {
  constexpr int kMax = static_cast<int>(StatusCode::kUnauthenticated);
  if (v.kind_case() == Value::kStringValue) {
    std::string wanted = Normalize(v.string_value());
    for (int c = 0; c <= kMax; ++c) {
      if (Normalize(StatusCodeName(static_cast<StatusCode>(c))) == wanted) return c;
    }
    return InvalidArgument(field + ": " + Quote(v.string_value()) +
                           " is not a status code name (e.g. \"Unavailable\" or 14)");
  }
  if (v.kind_case() != Value::kNumberValue) {
    return InvalidArgument(field + ": expected a status code (0-16 or a name), got " + KindName(v));
  }
  double d = v.number_value();
  if (!std::isfinite(d) || d != std::floor(d) || d < 0 || d > kMax) {
    return InvalidArgument(field + ": " + std::to_string(d) + " is not a status code (0-" +
                           std::to_string(kMax) + ")");
  }
  return static_cast<int>(d);
}

Result<v1::Fault> ParseFault(const Value& v, const std::string& prefix) {
  if (v.kind_case() != Value::kStructValue) {
    return InvalidArgument(prefix + ": expected a map with operation, code, count, latency_ms, " +
                           "message; got " + KindName(v));
  }
  v1::Fault fault;
  constexpr auto kU32 = std::numeric_limits<std::uint32_t>::max();
  for (const auto& [key, value] : v.struct_value().fields()) {
    std::string field = prefix + "." + key;
    if (key == "operation") {
      if (value.kind_case() != Value::kStringValue) {
        return InvalidArgument(field + ": expected a string, got " + KindName(value));
      }
      fault.set_operation(value.string_value());
    } else if (key == "code") {
      HCI_ASSIGN_OR_RAISE(int code, ParseCode(value, field));
      fault.set_code(code);
    } else if (key == "count") {
      HCI_ASSIGN_OR_RAISE(auto count, ParseCount(value, field, kU32));
      fault.set_count(static_cast<std::uint32_t>(count));
    } else if (key == "latency_ms" || key == "latencyMs") {
      HCI_ASSIGN_OR_RAISE(auto ms, ParseCount(value, field, kU32));
      fault.set_latency_ms(static_cast<std::uint32_t>(ms));
    } else if (key == "message") {
      if (value.kind_case() != Value::kStringValue) {
        return InvalidArgument(field + ": expected a string, got " + KindName(value));
      }
      fault.set_message(value.string_value());
    } else {
      return InvalidArgument(field + ": unknown field (expected operation, code, count, " +
                             "latency_ms, message)");
    }
  }
  HCI_RETURN_NOT_OK(ValidateFault(fault, prefix));
  return fault;
}

}  // namespace

Result<Options> ParseOptions(const google::protobuf::Struct& options) {
  Options out;
  // Long enough for a day, short enough that a typo cannot hang a test run for weeks.
  constexpr std::uint64_t kMaxMs = 24ull * 3600 * 1000;
  for (const auto& [key, value] : options.fields()) {
    if (key == "faults") {
      if (value.kind_case() != Value::kListValue) {
        return InvalidArgument("faults: expected a list of faults, got " + KindName(value));
      }
      const auto& list = value.list_value().values();
      for (int i = 0; i < list.size(); ++i) {
        HCI_ASSIGN_OR_RAISE(auto fault, ParseFault(list[i], "faults[" + std::to_string(i) + "]"));
        out.faults.push_back(std::move(fault));
      }
    } else if (key == "latency_ms" || key == "latencyMs") {
      HCI_ASSIGN_OR_RAISE(auto ms, ParseCount(value, key, kMaxMs));
      out.latency_ms = static_cast<std::uint32_t>(ms);
    } else if (key == "operation_step_ms" || key == "operationStepMs") {
      HCI_ASSIGN_OR_RAISE(auto ms, ParseCount(value, key, kMaxMs));
      out.operation_step_ms = static_cast<std::uint32_t>(ms);
    } else {
      return InvalidArgument(key + ": unknown option of the mock plugin (expected faults, " +
                             "latency_ms, operation_step_ms)");
    }
  }
  return out;
}

}  // namespace hci::mock
