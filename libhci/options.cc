#include "hci/options.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

namespace hci {

using google::protobuf::Value;

std::string ValueKindName(const Value& value) {
  switch (value.kind_case()) {
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

namespace {

// True when `d` is a whole number in [min, max]. 2^64 itself rounds to UINT64_MAX as a double,
// so it is excluded explicitly: casting it back would be undefined.
bool IsWholeInRange(double d, std::uint64_t min, std::uint64_t max) {
  constexpr double kTwoTo64 = 18446744073709551616.0;
  return std::isfinite(d) && d == std::floor(d) && d >= static_cast<double>(min) &&
         d <= static_cast<double>(max) && d < kTwoTo64;
}

}  // namespace

OptionsReader::OptionsReader(const google::protobuf::Struct& options, std::string prefix)
    : options_(options), prefix_(std::move(prefix)) {}

std::string OptionsReader::Field(std::string_view key) const {
  if (prefix_.empty()) return std::string(key);
  return prefix_ + "." + std::string(key);
}

const Value* OptionsReader::Find(std::string_view key) {
  known_.emplace(key);
  auto it = options_.fields().find(std::string(key));
  return it == options_.fields().end() ? nullptr : &it->second;
}

const Value* OptionsReader::Raw(std::string_view key) { return Find(key); }

Result<std::string> OptionsReader::String(std::string_view key, std::string default_value,
                                          bool allow_empty) {
  const Value* v = Find(key);
  if (v == nullptr) return default_value;
  if (v->kind_case() != Value::kStringValue) {
    return InvalidArgument(Field(key) + ": expected a string, got " + ValueKindName(*v));
  }
  if (!allow_empty && v->string_value().empty())
    return InvalidArgument(Field(key) + ": must not be empty");
  return v->string_value();
}

Result<std::uint64_t> OptionsReader::Unsigned(std::string_view key, std::uint64_t default_value,
                                              std::uint64_t min, std::uint64_t max) {
  const Value* v = Find(key);
  if (v == nullptr) return default_value;
  if (v->kind_case() != Value::kNumberValue) {
    return InvalidArgument(Field(key) + ": expected a non-negative integer, got " +
                           ValueKindName(*v));
  }
  double d = v->number_value();
  if (!IsWholeInRange(d, min, max)) {
    return InvalidArgument(Field(key) + ": " + std::to_string(d) + " is not an integer between " +
                           std::to_string(min) + " and " + std::to_string(max));
  }
  return static_cast<std::uint64_t>(d);
}

Result<bool> OptionsReader::Bool(std::string_view key, bool default_value) {
  const Value* v = Find(key);
  if (v == nullptr) return default_value;
  if (v->kind_case() != Value::kBoolValue) {
    return InvalidArgument(Field(key) + ": expected a boolean, got " + ValueKindName(*v));
  }
  return v->bool_value();
}

Result<std::chrono::milliseconds> OptionsReader::Millis(std::string_view key,
                                                        std::chrono::milliseconds default_value,
                                                        std::chrono::milliseconds min,
                                                        std::chrono::milliseconds max) {
  const Value* v = Find(key);
  if (v == nullptr) return default_value;
  if (v->kind_case() != Value::kNumberValue) {
    return InvalidArgument(Field(key) + ": expected a number of milliseconds, got " +
                           ValueKindName(*v));
  }
  double d = v->number_value();
  auto lo = static_cast<std::uint64_t>(std::max<std::int64_t>(min.count(), 0));
  auto hi = static_cast<std::uint64_t>(std::max<std::int64_t>(max.count(), 0));
  if (!IsWholeInRange(d, lo, hi)) {
    return InvalidArgument(Field(key) + ": " + std::to_string(d) + " is not an integer between " +
                           std::to_string(lo) + " and " + std::to_string(hi) + " (ms)");
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(d));
}

Status OptionsReader::RejectUnknown() const {
  // fields() is a hash map: sort the unknown keys so the error does not depend on its order.
  std::set<std::string> unknown;
  for (const auto& [key, value] : options_.fields()) {
    if (!known_.contains(key)) unknown.insert(key);
  }
  if (unknown.empty()) return Status();
  std::string known;
  for (const auto& k : known_) {
    if (!known.empty()) known += ", ";
    known += k;
  }
  return InvalidArgument(Field(*unknown.begin()) + ": unknown option (known: " + known + ")");
}

}  // namespace hci
