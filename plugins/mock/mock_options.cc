// Parsing of the mock's binding options (backends.<kind>.options in the host config).
#include <cctype>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "hci/options.h"
#include "mock_internal.h"

namespace hci::mock {
namespace {

using google::protobuf::Value;

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
    return InvalidArgument(field + ": expected a status code (0-16 or a name), got " +
                           ValueKindName(v));
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
                           "message; got " + ValueKindName(v));
  }
  v1::Fault fault;
  constexpr auto kU32 = std::numeric_limits<std::uint32_t>::max();
  OptionsReader reader(v.struct_value(), prefix);
  HCI_ASSIGN_OR_RAISE(auto operation, reader.String("operation", "", /*allow_empty=*/true));
  fault.set_operation(std::move(operation));
  if (const Value* code = reader.Raw("code")) {
    HCI_ASSIGN_OR_RAISE(int c, ParseCode(*code, reader.Field("code")));
    fault.set_code(c);
  }
  HCI_ASSIGN_OR_RAISE(auto count, reader.Unsigned("count", 0, 0, kU32));
  fault.set_count(static_cast<std::uint32_t>(count));
  HCI_ASSIGN_OR_RAISE(auto ms, reader.Unsigned("latency_ms", 0, 0, kU32));
  HCI_ASSIGN_OR_RAISE(ms, reader.Unsigned("latencyMs", ms, 0, kU32));
  fault.set_latency_ms(static_cast<std::uint32_t>(ms));
  HCI_ASSIGN_OR_RAISE(auto message, reader.String("message", "", /*allow_empty=*/true));
  fault.set_message(std::move(message));
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  HCI_RETURN_NOT_OK(ValidateFault(fault, prefix));
  return fault;
}

}  // namespace

Result<Options> ParseOptions(const google::protobuf::Struct& options) {
  using std::chrono::milliseconds;
  Options out;
  OptionsReader reader(options, "");
  if (const Value* faults = reader.Raw("faults")) {
    if (faults->kind_case() != Value::kListValue) {
      return InvalidArgument("faults: expected a list of faults, got " + ValueKindName(*faults));
    }
    const auto& list = faults->list_value().values();
    for (int i = 0; i < list.size(); ++i) {
      HCI_ASSIGN_OR_RAISE(auto fault, ParseFault(list[i], "faults[" + std::to_string(i) + "]"));
      out.faults.push_back(std::move(fault));
    }
  }
  // Long enough for a day, short enough that a typo cannot hang a test run for weeks.
  constexpr milliseconds kMax(24ll * 3600 * 1000);
  // Each option also accepts its camelCase spelling (as YAML configs tend to write it).
  HCI_ASSIGN_OR_RAISE(auto latency, reader.Millis("latency_ms", milliseconds(out.latency_ms),
                                                  milliseconds(0), kMax));
  HCI_ASSIGN_OR_RAISE(latency, reader.Millis("latencyMs", latency, milliseconds(0), kMax));
  out.latency_ms = static_cast<std::uint32_t>(latency.count());
  HCI_ASSIGN_OR_RAISE(auto step,
                      reader.Millis("operation_step_ms", milliseconds(out.operation_step_ms),
                                    milliseconds(0), kMax));
  HCI_ASSIGN_OR_RAISE(step, reader.Millis("operationStepMs", step, milliseconds(0), kMax));
  out.operation_step_ms = static_cast<std::uint32_t>(step.count());
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  return out;
}

}  // namespace hci::mock
