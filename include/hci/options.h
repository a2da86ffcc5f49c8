// Typed reading of a plugin binding's options (`backends.<kind>.options` in the host config).
#pragma once

#include <google/protobuf/struct.pb.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <string_view>

#include "hci/export.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci {

/// How a Value's kind reads in an error message: "null", "a number", "a string", "a boolean",
/// "a map", "a list", or "nothing" when no kind is set.
HCI_EXPORT std::string ValueKindName(const google::protobuf::Value& value);

/// Reads the fields of one options Struct by key, each with its type, default and range, and
/// remembers which keys were asked for so that RejectUnknown() can refuse the others (typos).
///
/// Every error is InvalidArgument naming the field as `<prefix>.<key>` (just `<key>` when the
/// prefix is empty), e.g. `options.latency_ms: expected a number of milliseconds, got a string`.
/// A key that is absent yields the default; one set to null is of the wrong kind. The reader holds
/// a reference to the Struct, which must outlive it. Not thread-safe.
class HCI_EXPORT OptionsReader {
 public:
  /// `prefix` names the Struct itself in errors ("options", "faults[0]", or "" for none).
  OptionsReader(const google::protobuf::Struct& options, std::string prefix);

  /// A string, non-empty unless `allow_empty`. Errors: `<field>: expected a string, got a
  /// number` for another kind, `<field>: must not be empty` for "" when not `allow_empty`.
  Result<std::string> String(std::string_view key, std::string default_value,
                             bool allow_empty = false);

  /// A whole number in [min, max]. Errors: `<field>: expected a non-negative integer, got a
  /// string` for another kind; `<field>: 1.500000 is not an integer between <min> and <max>` for
  /// a fraction, a negative or an out-of-range number, NaN or infinity.
  Result<std::uint64_t> Unsigned(std::string_view key, std::uint64_t default_value,
                                 std::uint64_t min = 0,
                                 std::uint64_t max = std::numeric_limits<std::uint64_t>::max());

  /// true or false. Error: `<field>: expected a boolean, got a string`.
  Result<bool> Bool(std::string_view key, bool default_value);

  /// A duration given as a whole number of milliseconds in [min, max]. Errors: `<field>:
  /// expected a number of milliseconds, got a string`; `<field>: 1.500000 is not an integer
  /// between <min> and <max> (ms)`.
  Result<std::chrono::milliseconds> Millis(std::string_view key,
                                           std::chrono::milliseconds default_value,
                                           std::chrono::milliseconds min,
                                           std::chrono::milliseconds max);

  /// The raw value of `key` for shapes the typed readers do not cover (lists, maps, a number or
  /// a name); nullptr when absent. Marks `key` as known.
  const google::protobuf::Value* Raw(std::string_view key);

  /// `<prefix>.<key>`, or `<key>` with an empty prefix: the name to put in an error about `key`.
  std::string Field(std::string_view key) const;

  /// OK when every key of the Struct was asked for through one of the methods above; otherwise
  /// InvalidArgument for the first unknown key in sorted order:
  /// `<field>: unknown option (known: a, b, c)`, the known keys sorted.
  Status RejectUnknown() const;

 private:
  const google::protobuf::Value* Find(std::string_view key);

  const google::protobuf::Struct& options_;
  std::string prefix_;
  std::set<std::string, std::less<>> known_;
};

}  // namespace hci
