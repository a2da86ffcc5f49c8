// YAML <-> protobuf by reflection. yaml-cpp parses the text into a node tree that is walked
// against the message's descriptor, so that every error names the field path and the position in
// the source (protobuf's JSON parser reports neither).
#include "hci/yaml.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/duration.pb.h>
#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/time_util.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "hci/names.h"
#include "hci/v1/backup.pb.h"
#include "hci/v1/compute.pb.h"
#include "hci/v1/image.pb.h"
#include "hci/v1/network.pb.h"
#include "hci/v1/storage.pb.h"

namespace hci {
namespace {

namespace pb = google::protobuf;
using pb::Descriptor;
using pb::FieldDescriptor;

// Message nesting limit (Struct and Value count as levels). It keeps recursion bounded on hostile
// input and stays below protobuf's own parse limit of 100, so a parsed message always
// round-trips through the binary format too.
constexpr int kMaxDepth = 64;
// Every YAML node visited costs one unit. A document cannot hold more nodes than bytes, so a
// visit count far beyond its size means aliases are being expanded (a "billion laughs" bomb).
constexpr size_t kNodesPerByte = 16;
constexpr size_t kMinNodeBudget = 100000;
// Longest value quoted in an error message; hostile input can be megabytes long.
constexpr size_t kMaxQuotedChars = 64;
constexpr size_t kMaxFileBytes = size_t{64} << 20;
// Range of google.protobuf.Timestamp (0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z)
// and google.protobuf.Duration (+-10000 years), as documented in their .proto files.
constexpr int64_t kMinTimestampSeconds = -62135596800;
constexpr int64_t kMaxTimestampSeconds = 253402300799;
constexpr int64_t kMaxDurationSeconds = 315576000000;
constexpr int32_t kNanosPerSecond = 1000000000;

// ---------------------------------------------------------------------------------------------
// Text helpers.

// Offset of the first byte that is not part of a valid UTF-8 sequence; npos when there is none.
size_t Utf8ErrorOffset(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    const bool overlong =
        (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

bool IsValidUtf8(std::string_view s) { return Utf8ErrorOffset(s) == std::string_view::npos; }

// `s` in double quotes, escaped, and shortened: for error messages.
std::string Quote(std::string_view s) {
  const bool utf8 = IsValidUtf8(s);
  std::string out = "\"";
  size_t chars = 0;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    const bool continuation = utf8 && (c & 0xC0) == 0x80;
    if (!continuation && chars++ == kMaxQuotedChars) {
      out += "...";
      break;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8)) {
          out += fmt::format("\\x{:02x}", c);
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// Lowercase without underscores: the form in which enum names are compared.
std::string NormalizeEnumName(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c != '_') out += AsciiLower(c);
  }
  return out;
}

// Case-insensitive Levenshtein distance.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const size_t cost = AsciiLower(a[i - 1]) == AsciiLower(b[j - 1]) ? 0 : 1;
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + cost});
      diagonal = above;
    }
  }
  return row[b.size()];
}

constexpr char kBase64Chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string Base64Encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    const uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    out += kBase64Chars[(v >> 18) & 63];
    out += kBase64Chars[(v >> 12) & 63];
    out += kBase64Chars[(v >> 6) & 63];
    out += kBase64Chars[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint32_t{static_cast<unsigned char>(in[i])} << 16;
    out += kBase64Chars[(v >> 18) & 63];
    out += kBase64Chars[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8);
    out += kBase64Chars[(v >> 18) & 63];
    out += kBase64Chars[(v >> 12) & 63];
    out += kBase64Chars[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

int Base64Digit(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;  // standard or URL-safe alphabet, as proto3 JSON accepts
  if (c == '/' || c == '_') return 63;
  return -1;
}

// Standard or URL-safe base64, padded or not (the proto3 JSON mapping accepts all four).
bool Base64Decode(std::string_view in, std::string* out) {
  if (in.size() % 4 == 0) {
    for (int k = 0; k < 2 && !in.empty() && in.back() == '='; ++k) in.remove_suffix(1);
  }
  if (in.size() % 4 == 1) return false;
  out->clear();
  out->reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (const char c : in) {
    const int d = Base64Digit(c);
    if (d < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      *out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Numbers, as YAML 1.2's core schema writes them.

enum class NumParse { kOk, kSyntax, kRange };

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? ; decimal integers match too.
bool IsFloatSyntax(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  if (i < n && (s[i] == '-' || s[i] == '+')) ++i;
  size_t int_digits = 0;
  while (i < n && IsDigit(s[i])) ++i, ++int_digits;
  size_t frac_digits = 0;
  if (i < n && s[i] == '.') {
    ++i;
    while (i < n && IsDigit(s[i])) ++i, ++frac_digits;
  }
  if (int_digits == 0 && frac_digits == 0) return false;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '-' || s[i] == '+')) ++i;
    size_t exp_digits = 0;
    while (i < n && IsDigit(s[i])) ++i, ++exp_digits;
    if (exp_digits == 0) return false;
  }
  return i == n;
}

// 0x[0-9a-fA-F]+ or 0o[0-7]+.
bool IsPrefixedIntSyntax(std::string_view s) {
  if (s.size() < 3 || s[0] != '0' || (s[1] != 'x' && s[1] != 'o')) return false;
  const bool hex = s[1] == 'x';
  return std::all_of(s.begin() + 2, s.end(), [hex](char c) {
    return hex ? (IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
               : (c >= '0' && c <= '7');
  });
}

bool IsDecimalIntSyntax(std::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  return !s.empty() && std::all_of(s.begin(), s.end(), IsDigit);
}

// A sign and a magnitude, so that every int64 and uint64 value fits.
struct IntValue {
  bool negative = false;
  uint64_t magnitude = 0;
};

NumParse ParseIntLiteral(std::string_view s, IntValue* out) {
  int base = 10;
  bool negative = false;
  if (IsPrefixedIntSyntax(s)) {
    base = s[1] == 'x' ? 16 : 8;
    s.remove_prefix(2);
  } else if (IsDecimalIntSyntax(s)) {
    if (s[0] == '-' || s[0] == '+') {
      negative = s[0] == '-';
      s.remove_prefix(1);
    }
  } else {
    return NumParse::kSyntax;
  }
  uint64_t magnitude = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), magnitude, base);
  if (ec == std::errc::result_out_of_range) return NumParse::kRange;
  if (ec != std::errc() || end != s.data() + s.size()) return NumParse::kSyntax;
  out->negative = negative && magnitude != 0;
  out->magnitude = magnitude;
  return NumParse::kOk;
}

// YAML's .inf/.nan spellings, and the proto3 JSON ones for float and double fields.
bool ParseSpecialFloat(std::string_view s, bool json_names, double* out) {
  static constexpr std::string_view kInf[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"};
  static constexpr std::string_view kNegInf[] = {"-.inf", "-.Inf", "-.INF"};
  static constexpr std::string_view kNan[] = {".nan", ".NaN", ".NAN"};
  auto in = [s](const auto& list) {
    return std::find(std::begin(list), std::end(list), s) != std::end(list);
  };
  if (in(kInf) || (json_names && s == "Infinity")) {
    *out = std::numeric_limits<double>::infinity();
  } else if (in(kNegInf) || (json_names && s == "-Infinity")) {
    *out = -std::numeric_limits<double>::infinity();
  } else if (in(kNan) || (json_names && s == "NaN")) {
    *out = std::numeric_limits<double>::quiet_NaN();
  } else {
    return false;
  }
  return true;
}

template <typename T>
NumParse ParseFloating(std::string_view s, bool json_names, T* out) {
  double special;
  if (ParseSpecialFloat(s, json_names, &special)) {
    *out = static_cast<T>(special);
    return NumParse::kOk;
  }
  if (IsPrefixedIntSyntax(s)) {
    IntValue v;
    if (ParseIntLiteral(s, &v) != NumParse::kOk) return NumParse::kRange;
    *out = static_cast<T>(v.magnitude);
    return NumParse::kOk;
  }
  if (!IsFloatSyntax(s)) return NumParse::kSyntax;
  if (s[0] == '+') s.remove_prefix(1);
  // from_chars: locale-independent and exact (shortest round-trip output parses back exactly).
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  if (ec == std::errc::result_out_of_range) return NumParse::kRange;
  if (ec != std::errc() || end != s.data() + s.size()) return NumParse::kSyntax;
  return NumParse::kOk;
}

template <typename T>
std::string FormatFloating(T v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);  // shortest round-trip form
  return ec == std::errc() ? std::string(buf, end) : std::string(".nan");
}

bool IsBoolText(std::string_view s, bool* value) {
  if (s == "true" || s == "True" || s == "TRUE") {
    *value = true;
    return true;
  }
  if (s == "false" || s == "False" || s == "FALSE") {
    *value = false;
    return true;
  }
  return false;
}

bool IsNullText(std::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

// What a plain (unquoted) scalar means under YAML 1.2's core schema.
enum class PlainKind { kNull, kBool, kNumber, kString };

PlainKind ResolvePlain(std::string_view s) {
  bool b;
  double d;
  if (IsNullText(s)) return PlainKind::kNull;
  if (IsBoolText(s, &b)) return PlainKind::kBool;
  if (ParseSpecialFloat(s, false, &d) || IsFloatSyntax(s) || IsPrefixedIntSyntax(s)) {
    return PlainKind::kNumber;
  }
  return PlainKind::kString;
}

// Kubernetes binary quantity: [-+]?[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei), converted to multiples of
// `unit` bytes.
enum class QuantityParse { kNotQuantity, kOk, kNotWhole, kRange };

QuantityParse ParseQuantity(std::string_view s, uint64_t unit, IntValue* out) {
  using U128 = unsigned __int128;
  static constexpr std::pair<std::string_view, int> kSuffixes[] = {
      {"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}, {"Pi", 50}, {"Ei", 60}};
  if (s.size() < 3) return QuantityParse::kNotQuantity;
  int shift = -1;
  for (const auto& [suffix, bits] : kSuffixes) {
    if (s.substr(s.size() - 2) == suffix) shift = bits;
  }
  if (shift < 0) return QuantityParse::kNotQuantity;
  std::string_view num = s.substr(0, s.size() - 2);
  bool negative = false;
  if (num[0] == '-' || num[0] == '+') {
    negative = num[0] == '-';
    num.remove_prefix(1);
  }
  const size_t dot = num.find('.');
  std::string_view int_part = num.substr(0, dot);
  std::string_view frac_part = dot == std::string_view::npos ? "" : num.substr(dot + 1);
  const bool digits_only = std::all_of(int_part.begin(), int_part.end(), IsDigit) &&
                           std::all_of(frac_part.begin(), frac_part.end(), IsDigit);
  if (int_part.empty() || !digits_only || (dot != std::string_view::npos && frac_part.empty())) {
    return QuantityParse::kNotQuantity;
  }
  while (!frac_part.empty() && frac_part.back() == '0') frac_part.remove_suffix(1);
  // 2^60 / 10^f is fractional for f > 60 (the last digit is not 0, so 10 does not divide it).
  if (frac_part.size() > 60) return QuantityParse::kNotWhole;
  const U128 max = ~U128{0};
  U128 n = 0;
  for (const std::string_view part : {int_part, frac_part}) {
    for (const char c : part) {
      const auto d = static_cast<unsigned>(c - '0');
      if (n > (max - d) / 10) return QuantityParse::kRange;
      n = n * 10 + d;
    }
  }
  if (n > (max >> shift)) return QuantityParse::kRange;
  n <<= shift;
  U128 pow10 = 1;
  for (size_t k = 0; k < frac_part.size(); ++k) pow10 *= 10;  // <= 10^38: n has that many digits
  if (n % pow10 != 0) return QuantityParse::kNotWhole;
  n /= pow10;
  if (n % unit != 0) return QuantityParse::kNotWhole;
  n /= unit;
  if (n > std::numeric_limits<uint64_t>::max()) return QuantityParse::kRange;
  out->magnitude = static_cast<uint64_t>(n);
  out->negative = negative && n != 0;
  return QuantityParse::kOk;
}

// Multiple of bytes an integer field counts in, from its name; 0 when it takes no quantity.
uint64_t QuantityUnit(const FieldDescriptor* field) {
  const std::string& name = field->name();
  auto ends_with = [&name](std::string_view suffix) {
    return name.size() >= suffix.size() &&
           std::string_view(name).substr(name.size() - suffix.size()) == suffix;
  };
  if (ends_with("_bytes")) return 1;
  if (ends_with("_mib")) return uint64_t{1} << 20;
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Enums: full names or the part after the common prefix, in any case, with or without '_'.

// The longest prefix ending in '_' shared by all value names ("DISK_BUS_").
std::string EnumPrefix(const pb::EnumDescriptor* e) {
  if (e->value_count() == 0) return "";
  std::string_view prefix = e->value(0)->name();
  for (int i = 1; i < e->value_count(); ++i) {
    const std::string& name = e->value(i)->name();
    size_t k = 0;
    while (k < prefix.size() && k < name.size() && prefix[k] == name[k]) ++k;
    prefix = prefix.substr(0, k);
  }
  const size_t underscore = prefix.rfind('_');
  if (underscore == std::string_view::npos) return "";
  prefix = prefix.substr(0, underscore + 1);
  for (int i = 0; i < e->value_count(); ++i) {
    if (e->value(i)->name().size() == prefix.size()) return "";  // a value would have no suffix
  }
  return std::string(prefix);
}

std::string_view EnumSuffix(const pb::EnumValueDescriptor* v, const std::string& prefix) {
  return std::string_view(v->name()).substr(prefix.size());
}

// The zero "nothing chosen" value is accepted by its full name only and never offered.
bool IsUnspecified(const pb::EnumValueDescriptor* v, const std::string& prefix) {
  return v->number() == 0 && EnumSuffix(v, prefix) == "UNSPECIFIED";
}

// Proto3 enums are open: any int32 is a valid value.
bool IsOpenEnum(const pb::EnumDescriptor* e) {
  return e->file()->syntax() == pb::FileDescriptor::SYNTAX_PROTO3;
}

// The enum number `text` names, or false.
bool ParseEnumText(const pb::EnumDescriptor* e, std::string_view text, bool plain, int* number) {
  if (plain && (IsDecimalIntSyntax(text) || IsPrefixedIntSyntax(text))) {
    IntValue v;
    if (ParseIntLiteral(text, &v) != NumParse::kOk) return false;
    const uint64_t limit = v.negative ? uint64_t{1} << 31 : (uint64_t{1} << 31) - 1;
    if (v.magnitude > limit) return false;
    const int64_t n =
        v.negative ? -static_cast<int64_t>(v.magnitude) : static_cast<int64_t>(v.magnitude);
    if (!IsOpenEnum(e) && e->FindValueByNumber(static_cast<int>(n)) == nullptr) return false;
    *number = static_cast<int>(n);
    return true;
  }
  if (const pb::EnumValueDescriptor* v = e->FindValueByName(std::string(text))) {
    *number = v->number();
    return true;
  }
  const std::string prefix = EnumPrefix(e);
  const std::string wanted = NormalizeEnumName(text);
  const pb::EnumValueDescriptor* by_suffix = nullptr;
  for (int i = 0; i < e->value_count(); ++i) {
    const pb::EnumValueDescriptor* v = e->value(i);
    if (NormalizeEnumName(v->name()) == wanted) {  // a full name wins over a suffix
      *number = v->number();
      return true;
    }
    if (by_suffix == nullptr && !IsUnspecified(v, prefix) &&
        NormalizeEnumName(EnumSuffix(v, prefix)) == wanted) {
      by_suffix = v;
    }
  }
  if (by_suffix == nullptr) return false;
  *number = by_suffix->number();
  return true;
}

// Whether ToYaml must quote `s` to keep it a string. Besides what YAML 1.2 reads as null, bool
// or number, this covers YAML 1.1's extra forms (yes/no/on/off, 0777, 1:30, 2024-01-01), so
// that other YAML readers (PyYAML, go-yaml v2) see a string too.
bool NeedsQuotes(std::string_view s) {
  if (ResolvePlain(s) != PlainKind::kString) return true;
  static constexpr std::string_view kYaml11Bools[] = {"y",  "Y",   "yes", "Yes", "YES", "n",
                                                      "N",  "no",  "No",  "NO",  "on",  "On",
                                                      "ON", "off", "Off", "OFF"};
  if (std::find(std::begin(kYaml11Bools), std::end(kYaml11Bools), s) != std::end(kYaml11Bools)) {
    return true;
  }
  // YAML 1.1 numbers, sexagesimals and dates, loosely: 0x1_f, 0b101, 0o17, 1_000, 1:30, 2024-01-01.
  std::string_view body = s;
  if (body[0] == '+' || body[0] == '-') body.remove_prefix(1);  // `s` is not empty: that is null
  if (body.size() > 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'b' || body[1] == 'o')) {
    return body.find_first_not_of("0123456789abcdefABCDEF_", 2) == std::string_view::npos;
  }
  return !body.empty() && (IsDigit(body[0]) || body[0] == '.') &&
         body.find_first_not_of("0123456789_:.eE+-") == std::string_view::npos;
}

// How ToYaml writes an enum value: the lowercase suffix when it reads back as the same value,
// else the full name; nothing for a number without a name (written as the number).
std::optional<std::string> EnumText(const pb::EnumDescriptor* e, int number) {
  const pb::EnumValueDescriptor* v = e->FindValueByNumber(number);
  if (v == nullptr) return std::nullopt;
  const std::string prefix = EnumPrefix(e);
  auto reads_back = [e, number](const std::string& text) {
    int parsed = 0;
    return ParseEnumText(e, text, /*plain=*/!NeedsQuotes(text), &parsed) && parsed == number;
  };
  if (!IsUnspecified(v, prefix)) {
    std::string short_name;
    for (const char c : EnumSuffix(v, prefix)) short_name += AsciiLower(c);
    if (reads_back(short_name)) return short_name;
  }
  if (reads_back(v->name())) return v->name();
  return std::nullopt;
}

std::string EnumChoices(const pb::EnumDescriptor* e) {
  const std::string prefix = EnumPrefix(e);
  std::string out;
  for (int i = 0; i < e->value_count(); ++i) {
    const pb::EnumValueDescriptor* v = e->value(i);
    if (IsUnspecified(v, prefix)) continue;
    if (!out.empty()) out += ", ";
    for (const char c : EnumSuffix(v, prefix)) out += AsciiLower(c);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Descriptor helpers.

const FieldDescriptor* FindField(const Descriptor* d, std::string_view key) {
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->name() == key || f->json_name() == key) return f;
  }
  return nullptr;
}

std::string DidYouMean(const Descriptor* d, std::string_view key) {
  if (key.size() > 64) return "";  // the distance is quadratic; no field name is that long
  size_t best = std::numeric_limits<size_t>::max();
  std::string_view best_name;
  for (int i = 0; i < d->field_count(); ++i) {
    for (const std::string* name : {&d->field(i)->name(), &d->field(i)->json_name()}) {
      const size_t distance = EditDistance(key, *name);
      if (distance < best) {
        best = distance;
        best_name = *name;
      }
    }
  }
  if (best_name.empty() || best > 2 || best * 2 > key.size()) return "";
  return fmt::format(" (did you mean {}?)", Quote(best_name));
}

bool IsWellKnown(const Descriptor* d, Descriptor::WellKnownType type) {
  return d->well_known_type() == type;
}

bool IsWrapper(const Descriptor* d) {
  switch (d->well_known_type()) {
    case Descriptor::WELLKNOWNTYPE_DOUBLEVALUE:
    case Descriptor::WELLKNOWNTYPE_FLOATVALUE:
    case Descriptor::WELLKNOWNTYPE_INT64VALUE:
    case Descriptor::WELLKNOWNTYPE_UINT64VALUE:
    case Descriptor::WELLKNOWNTYPE_INT32VALUE:
    case Descriptor::WELLKNOWNTYPE_UINT32VALUE:
    case Descriptor::WELLKNOWNTYPE_STRINGVALUE:
    case Descriptor::WELLKNOWNTYPE_BYTESVALUE:
    case Descriptor::WELLKNOWNTYPE_BOOLVALUE:
      return true;
    default:
      return false;
  }
}

bool IsValueField(const FieldDescriptor* f) {
  return f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE &&
         IsWellKnown(f->message_type(), Descriptor::WELLKNOWNTYPE_VALUE);
}

// "uint32", "string", "hci.v1.DiskBus", ...: how errors name a field's type.
std::string TypeName(const FieldDescriptor* f) {
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_ENUM:
      return f->enum_type()->full_name();
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return f->message_type()->full_name();
    default:
      return f->type_name();
  }
}

// ---------------------------------------------------------------------------------------------
// YAML -> message.

std::string Where(const YAML::Mark& mark) {
  if (mark.is_null()) return "";
  return fmt::format(" at line {}, column {}", mark.line + 1, mark.column + 1);
}

Status Error(std::string_view path, const YAML::Mark& mark, std::string_view what) {
  return InvalidArgument(
      fmt::format("{}{}{}{}", path, path.empty() ? "" : ": ", what, Where(mark)));
}

// Where a node tree sits in the caller's text, and how errors about it are worded.
struct SourceContext {
  // 0: the one document of ParseYaml, whose errors end in " at line L, column C". Otherwise
  // the 1-based number of a manifest document, whose errors start with "document N (line L): ".
  int document = 0;
  // 0-based line in the whole stream where the tree's text starts: marks are relative to it.
  int base_line = 0;
  // Absolute 0-based line for errors that have no position.
  int fallback_line = 0;
  // Expand ${NAME} references in scalar values (manifests).
  bool expand_env = false;
};

Status ContextError(const SourceContext& context, std::string_view path, const YAML::Mark& mark,
                    std::string_view what) {
  if (context.document == 0) return Error(path, mark, what);
  const int line = mark.is_null() ? context.fallback_line : context.base_line + mark.line;
  return InvalidArgument(fmt::format("document {} (line {}): {}{}{}", context.document, line + 1,
                                     path, path.empty() ? "" : ": ", what));
}

bool IsEnvName(std::string_view name) {
  if (name.empty() || IsDigit(name[0])) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  });
}

// Replaces each ${NAME} in `in` by the environment variable NAME, and $${ by ${. Returns the
// reason when a reference is malformed or names an unset variable.
std::optional<std::string> ExpandEnvReferences(std::string_view in, std::string* out) {
  out->clear();
  size_t i = 0;
  while (i < in.size()) {
    const size_t dollar = in.find('$', i);
    if (dollar == std::string_view::npos) {
      out->append(in.substr(i));
      break;
    }
    out->append(in.substr(i, dollar - i));
    const std::string_view rest = in.substr(dollar);
    if (rest.starts_with("$${")) {
      *out += "${";
      i = dollar + 3;
      continue;
    }
    if (!rest.starts_with("${")) {
      *out += '$';
      i = dollar + 1;
      continue;
    }
    const size_t close = rest.find('}');
    if (close == std::string_view::npos) {
      return fmt::format("unterminated environment reference {} (write $${{ for a literal ${{)",
                         Quote(rest));
    }
    const std::string_view name = rest.substr(2, close - 2);
    if (!IsEnvName(name)) {
      return fmt::format(
          "{} is not a valid environment reference (expected ${{NAME}} with letters, digits and "
          "'_'; write $${{ for a literal ${{)",
          Quote(rest.substr(0, close + 1)));
    }
    const char* value = std::getenv(std::string(name).c_str());
    if (value == nullptr) {
      return fmt::format("environment variable {} is not set (referenced as ${{{}}})", name, name);
    }
    out->append(value);
    i = dollar + close + 1;
  }
  return std::nullopt;
}

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar:
      return Quote(node.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "nothing";
  }
}

// A quoted scalar (or one tagged !!str) is a string; a plain one is resolved by the schema.
bool IsPlain(const YAML::Node& node) {
  const std::string& tag = node.Tag();
  return tag != "!" && tag != "tag:yaml.org,2002:str";
}

std::string JoinField(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

// Keys read as fields (`options.accel`) unless they need quoting (`options["a.b"]`), which also
// shortens hostile ones.
std::string JoinKey(const std::string& path, std::string_view key) {
  const bool simple = !key.empty() && key.size() <= kMaxQuotedChars &&
                      std::all_of(key.begin(), key.end(), [](char c) {
                        return IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                               c == '_' || c == '-';
                      });
  return simple ? JoinField(path, key) : fmt::format("{}[{}]", path, Quote(key));
}

struct ScalarValue {
  IntValue integer;
  double d = 0;
  float f = 0;
  bool b = false;
  int enum_number = 0;
  std::string str;
};

void StoreScalar(pb::Message* m, const FieldDescriptor* f, ScalarValue&& v) {
  const pb::Reflection* r = m->GetReflection();
  const bool add = f->is_repeated();
  const uint64_t mag = v.integer.magnitude;
  // Two's complement: the range was checked, so the wrapped value is the intended one.
  const uint64_t bits = v.integer.negative ? ~mag + 1 : mag;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      const auto x = static_cast<int32_t>(static_cast<uint32_t>(bits));
      add ? r->AddInt32(m, f, x) : r->SetInt32(m, f, x);
      break;
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      const auto x = static_cast<int64_t>(bits);
      add ? r->AddInt64(m, f, x) : r->SetInt64(m, f, x);
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      const auto x = static_cast<uint32_t>(bits);
      add ? r->AddUInt32(m, f, x) : r->SetUInt32(m, f, x);
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT64:
      add ? r->AddUInt64(m, f, bits) : r->SetUInt64(m, f, bits);
      break;
    case FieldDescriptor::CPPTYPE_DOUBLE:
      add ? r->AddDouble(m, f, v.d) : r->SetDouble(m, f, v.d);
      break;
    case FieldDescriptor::CPPTYPE_FLOAT:
      add ? r->AddFloat(m, f, v.f) : r->SetFloat(m, f, v.f);
      break;
    case FieldDescriptor::CPPTYPE_BOOL:
      add ? r->AddBool(m, f, v.b) : r->SetBool(m, f, v.b);
      break;
    case FieldDescriptor::CPPTYPE_ENUM:
      add ? r->AddEnumValue(m, f, v.enum_number) : r->SetEnumValue(m, f, v.enum_number);
      break;
    case FieldDescriptor::CPPTYPE_STRING:
      add ? r->AddString(m, f, std::move(v.str)) : r->SetString(m, f, std::move(v.str));
      break;
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;  // never a scalar
  }
}

class Reader {
 public:
  explicit Reader(size_t node_budget) : node_budget_(node_budget) {}

  void set_context(const SourceContext& context) { context_ = context; }
  const SourceContext& context() const { return context_; }

  // Errors are worded for the current context (a single document or a manifest document).
  Status Error(std::string_view path, const YAML::Mark& mark, std::string_view what) const {
    return ContextError(context_, path, mark, what);
  }

  // The text of the scalar `node`, with environment references expanded when the context says
  // so.
  Status ScalarText(const YAML::Node& node, const std::string& path, std::string* out) const {
    if (!context_.expand_env) {
      *out = node.Scalar();
      return Status::OK();
    }
    if (const std::optional<std::string> error = ExpandEnvReferences(node.Scalar(), out)) {
      return Error(path, node.Mark(), *error);
    }
    return Status::OK();
  }

  // Any message, including the well-known types with a special YAML form. `node` is not null.
  Status ReadMessageLike(const YAML::Node& node, pb::Message* msg, const std::string& path,
                         int depth) {
    if (depth > kMaxDepth) {
      return Error(
          path, node.Mark(),
          fmt::format("nesting is deeper than the limit of {} levels (inside a Struct, each "
                      "YAML level counts twice)",
                      kMaxDepth));
    }
    const Descriptor* d = msg->GetDescriptor();
    switch (d->well_known_type()) {
      case Descriptor::WELLKNOWNTYPE_STRUCT:
        return ReadStruct(node, msg, path, depth);
      case Descriptor::WELLKNOWNTYPE_VALUE:
        return ReadValue(node, msg, path, depth);
      case Descriptor::WELLKNOWNTYPE_LISTVALUE:
        return ReadListValue(node, msg, path, depth);
      case Descriptor::WELLKNOWNTYPE_TIMESTAMP:
        return ReadTimestamp(node, msg, path);
      case Descriptor::WELLKNOWNTYPE_DURATION:
        return ReadDuration(node, msg, path);
      default:
        break;
    }
    if (IsWrapper(d)) {
      const FieldDescriptor* value = d->FindFieldByNumber(1);
      ScalarValue v;
      HCI_RETURN_NOT_OK(ReadScalar(node, value, path, /*map_key=*/false, &v));
      StoreScalar(msg, value, std::move(v));
      return Status::OK();
    }
    return ReadMessage(node, msg, path, depth);
  }

  // Reads `value` into the field `field` of the top-level message `msg` (a manifest's metadata or
  // spec).
  Status ReadTopLevelField(const YAML::Node& value, pb::Message* msg, const FieldDescriptor* field,
                           const std::string& path) {
    HCI_RETURN_NOT_OK(Visit(value, path));
    if (value.IsNull() && (field->is_repeated() || !IsValueField(field))) return Status::OK();
    return ReadField(value, msg, field, path, 0);
  }

  // Counts a node against the budget.
  Status Visit(const YAML::Node& node, const std::string& path) {
    if (++nodes_visited_ > node_budget_) {
      return Error(path, node.Mark(),
                   fmt::format("the document expands to more than {} nodes (through aliases?)",
                               node_budget_));
    }
    return Status::OK();
  }

 private:
  Status ReadMessage(const YAML::Node& node, pb::Message* msg, const std::string& path, int depth) {
    const Descriptor* d = msg->GetDescriptor();
    if (!node.IsMap()) {
      return Error(path, node.Mark(),
                   fmt::format("expected a mapping ({}), got {}", d->full_name(), Describe(node)));
    }
    std::map<int, std::string> seen;  // field number -> key as written
    std::map<const pb::OneofDescriptor*, std::string> oneofs;
    for (const auto& kv : node) {
      const YAML::Node& key = kv.first;
      const YAML::Node& value = kv.second;
      HCI_RETURN_NOT_OK(Visit(key, path));
      HCI_RETURN_NOT_OK(Visit(value, path));
      if (!key.IsScalar()) {
        return Error(
            path, key.Mark(),
            fmt::format("expected a field name of {}, got {}", d->full_name(), Describe(key)));
      }
      const std::string& name = key.Scalar();
      const std::string field_path = JoinKey(path, name);
      const FieldDescriptor* field = FindField(d, name);
      if (field == nullptr) {
        return Error(field_path, key.Mark(),
                     fmt::format("unknown field in {}{}", d->full_name(), DidYouMean(d, name)));
      }
      if (const auto [it, inserted] = seen.emplace(field->number(), name); !inserted) {
        return Error(field_path, key.Mark(),
                     fmt::format("duplicate field (already set as {})", Quote(it->second)));
      }
      // null means "not set", as in the proto3 JSON mapping; a Value holds it as null_value.
      if (value.IsNull() && (field->is_repeated() || !IsValueField(field))) continue;
      if (const pb::OneofDescriptor* oneof = field->real_containing_oneof()) {
        if (const auto [it, inserted] = oneofs.emplace(oneof, name); !inserted) {
          return Error(field_path, key.Mark(),
                       fmt::format("cannot be set together with {} (both are in oneof {})",
                                   Quote(it->second), Quote(oneof->name())));
        }
      }
      HCI_RETURN_NOT_OK(ReadField(value, msg, field, field_path, depth));
    }
    return Status::OK();
  }

  Status ReadField(const YAML::Node& value, pb::Message* msg, const FieldDescriptor* field,
                   const std::string& path, int depth) {
    if (field->is_map()) return ReadMap(value, msg, field, path, depth);
    if (field->is_repeated()) return ReadRepeated(value, msg, field, path, depth);
    const pb::Reflection* r = msg->GetReflection();
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      return ReadMessageLike(value, r->MutableMessage(msg, field), path, depth + 1);
    }
    ScalarValue v;
    HCI_RETURN_NOT_OK(ReadScalar(value, field, path, /*map_key=*/false, &v));
    StoreScalar(msg, field, std::move(v));
    return Status::OK();
  }

  Status ReadRepeated(const YAML::Node& value, pb::Message* msg, const FieldDescriptor* field,
                      const std::string& path, int depth) {
    if (!value.IsSequence()) {
      return Error(path, value.Mark(),
                   fmt::format("expected a list of {}, got {}", TypeName(field), Describe(value)));
    }
    const pb::Reflection* r = msg->GetReflection();
    size_t index = 0;
    for (const YAML::Node& element : value) {
      const std::string element_path = fmt::format("{}[{}]", path, index++);
      HCI_RETURN_NOT_OK(Visit(element, element_path));
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        pb::Message* sub = r->AddMessage(msg, field);
        if (element.IsNull() && !IsValueField(field)) continue;  // an empty message
        HCI_RETURN_NOT_OK(ReadMessageLike(element, sub, element_path, depth + 1));
      } else {
        ScalarValue v;
        HCI_RETURN_NOT_OK(ReadScalar(element, field, element_path, /*map_key=*/false, &v));
        StoreScalar(msg, field, std::move(v));
      }
    }
    return Status::OK();
  }

  Status ReadMap(const YAML::Node& value, pb::Message* msg, const FieldDescriptor* field,
                 const std::string& path, int depth) {
    const Descriptor* entry_type = field->message_type();
    const FieldDescriptor* key_field = entry_type->map_key();
    const FieldDescriptor* value_field = entry_type->map_value();
    if (!value.IsMap()) {
      return Error(path, value.Mark(),
                   fmt::format("expected a mapping of {} to {}, got {}", TypeName(key_field),
                               TypeName(value_field), Describe(value)));
    }
    const pb::Reflection* r = msg->GetReflection();
    std::set<std::string> keys;
    for (const auto& kv : value) {
      const YAML::Node& key = kv.first;
      const YAML::Node& val = kv.second;
      HCI_RETURN_NOT_OK(Visit(key, path));
      HCI_RETURN_NOT_OK(Visit(val, path));
      if (!key.IsScalar()) {
        return Error(
            path, key.Mark(),
            fmt::format("expected a key of type {}, got {}", TypeName(key_field), Describe(key)));
      }
      // metadata.labels["app"], but ports[8080] and flags[true].
      const std::string& key_text = key.Scalar();
      const bool bare = key_field->cpp_type() != FieldDescriptor::CPPTYPE_STRING &&
                        key_text.size() <= kMaxQuotedChars &&
                        std::all_of(key_text.begin(), key_text.end(), [](char c) {
                          return IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                 c == '-' || c == '+';
                        });
      const std::string key_path =
          fmt::format("{}[{}]", path, bare && !key_text.empty() ? key_text : Quote(key_text));
      ScalarValue k;
      HCI_RETURN_NOT_OK(ReadScalar(key, key_field, key_path, /*map_key=*/true, &k));
      std::string canonical;
      switch (key_field->cpp_type()) {
        case FieldDescriptor::CPPTYPE_STRING:
          canonical = k.str;
          break;
        case FieldDescriptor::CPPTYPE_BOOL:
          canonical = k.b ? "true" : "false";
          break;
        default:
          canonical = fmt::format("{}{}", k.integer.negative ? "-" : "", k.integer.magnitude);
      }
      if (!keys.insert(canonical).second) return Error(key_path, key.Mark(), "duplicate key");
      pb::Message* entry = r->AddMessage(msg, field);
      StoreScalar(entry, key_field, std::move(k));
      const pb::Reflection* er = entry->GetReflection();
      if (value_field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        pb::Message* sub = er->MutableMessage(entry, value_field);
        if (val.IsNull() && !IsValueField(value_field)) continue;  // an empty message
        HCI_RETURN_NOT_OK(ReadMessageLike(val, sub, key_path, depth + 1));
      } else if (!val.IsNull()) {
        ScalarValue v;
        HCI_RETURN_NOT_OK(ReadScalar(val, value_field, key_path, /*map_key=*/false, &v));
        StoreScalar(entry, value_field, std::move(v));
      }
    }
    return Status::OK();
  }

  // Map keys come quoted from JSON, so they may be quoted whatever their type.
  Status ReadScalar(const YAML::Node& node, const FieldDescriptor* field, const std::string& path,
                    bool map_key, ScalarValue* out) {
    if (!node.IsScalar()) {
      return Error(path, node.Mark(),
                   fmt::format("expected {}, got {}", ExpectedScalar(field), Describe(node)));
    }
    std::string expanded;
    if (!map_key) HCI_RETURN_NOT_OK(ScalarText(node, path, &expanded));
    const std::string& text = map_key ? node.Scalar() : expanded;
    const bool plain = IsPlain(node);
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
      case FieldDescriptor::CPPTYPE_INT64:
      case FieldDescriptor::CPPTYPE_UINT32:
      case FieldDescriptor::CPPTYPE_UINT64:
        return ReadInteger(node, text, field, path, &out->integer);
      case FieldDescriptor::CPPTYPE_DOUBLE:
      case FieldDescriptor::CPPTYPE_FLOAT: {
        const bool is_float = field->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT;
        const NumParse p =
            is_float ? ParseFloating(text, true, &out->f) : ParseFloating(text, true, &out->d);
        if (p == NumParse::kSyntax) {
          return Error(path, node.Mark(),
                       fmt::format("expected {}, got {}", ExpectedScalar(field), Quote(text)));
        }
        if (p == NumParse::kRange) {
          return Error(path, node.Mark(),
                       fmt::format("{} is out of range for {}", Quote(text), TypeName(field)));
        }
        return Status::OK();
      }
      case FieldDescriptor::CPPTYPE_BOOL:
        if ((!plain && !map_key) || !IsBoolText(text, &out->b)) {
          return Error(path, node.Mark(),
                       fmt::format("expected a boolean (true or false), got {}{}",
                                   plain ? "" : "the string ", Quote(text)));
        }
        return Status::OK();
      case FieldDescriptor::CPPTYPE_ENUM:
        if (!ParseEnumText(field->enum_type(), text, plain, &out->enum_number)) {
          return Error(path, node.Mark(),
                       fmt::format("unknown value {} (expected one of: {})", Quote(text),
                                   EnumChoices(field->enum_type())));
        }
        return Status::OK();
      case FieldDescriptor::CPPTYPE_STRING:
        if (field->type() == FieldDescriptor::TYPE_BYTES) {
          if (!Base64Decode(text, &out->str)) {
            return Error(path, node.Mark(),
                         fmt::format("expected base64 data, got {}", Quote(text)));
          }
          return Status::OK();
        }
        if (!IsValidUtf8(text)) return Error(path, node.Mark(), "the string is not valid UTF-8");
        out->str = text;
        return Status::OK();
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
    return Error(path, node.Mark(), "internal error: a message field read as a scalar");
  }

  static std::string ExpectedScalar(const FieldDescriptor* field) {
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
      case FieldDescriptor::CPPTYPE_INT64:
      case FieldDescriptor::CPPTYPE_UINT32:
      case FieldDescriptor::CPPTYPE_UINT64:
        return fmt::format("an integer ({})", TypeName(field));
      case FieldDescriptor::CPPTYPE_DOUBLE:
      case FieldDescriptor::CPPTYPE_FLOAT:
        return fmt::format("a number ({})", TypeName(field));
      case FieldDescriptor::CPPTYPE_BOOL:
        return "a boolean (true or false)";
      case FieldDescriptor::CPPTYPE_ENUM:
        return fmt::format("one of: {}", EnumChoices(field->enum_type()));
      case FieldDescriptor::CPPTYPE_STRING:
        return field->type() == FieldDescriptor::TYPE_BYTES ? "base64 data" : "a string";
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
    return TypeName(field);
  }

  // `text` is the node's (expanded) text.
  Status ReadInteger(const YAML::Node& node, const std::string& text, const FieldDescriptor* field,
                     const std::string& path, IntValue* out) const {
    const uint64_t unit = QuantityUnit(field);
    NumParse p = ParseIntLiteral(text, out);
    if (p == NumParse::kSyntax && unit != 0) {
      switch (ParseQuantity(text, unit, out)) {
        case QuantityParse::kNotQuantity:
          break;
        case QuantityParse::kOk:
          p = NumParse::kOk;
          break;
        case QuantityParse::kRange:
          p = NumParse::kRange;
          break;
        case QuantityParse::kNotWhole:
          return Error(path, node.Mark(),
                       fmt::format("{} is not a whole number of {}", Quote(text),
                                   unit == 1 ? "bytes" : "MiB"));
      }
    }
    if (p == NumParse::kSyntax && IsFloatSyntax(text)) {
      // 1e3 or 2.0: the proto3 JSON mapping accepts integral numbers in any notation.
      double d = 0;
      const NumParse fp = ParseFloating(text, false, &d);
      if (fp == NumParse::kRange || (fp == NumParse::kOk && std::fabs(d) >= 0x1p64)) {
        p = NumParse::kRange;
      } else if (fp == NumParse::kOk && std::trunc(d) == d) {
        out->negative = d < 0;
        out->magnitude = static_cast<uint64_t>(std::fabs(d));
        p = NumParse::kOk;
      }
    }
    if (p == NumParse::kSyntax) {
      return Error(path, node.Mark(),
                   fmt::format("expected an integer ({}{}), got {}", TypeName(field),
                               unit != 0 ? " or a quantity such as 512Mi" : "", Quote(text)));
    }
    uint64_t max_positive = 0;
    uint64_t max_negative = 0;
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        max_positive = std::numeric_limits<int32_t>::max();
        max_negative = max_positive + 1;
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        max_positive = std::numeric_limits<int64_t>::max();
        max_negative = max_positive + 1;
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        max_positive = std::numeric_limits<uint32_t>::max();
        break;
      default:
        max_positive = std::numeric_limits<uint64_t>::max();
        break;
    }
    if (p == NumParse::kRange || out->magnitude > (out->negative ? max_negative : max_positive)) {
      return Error(path, node.Mark(),
                   fmt::format("{} is out of range for {}", Quote(text), TypeName(field)));
    }
    return Status::OK();
  }

  Status ReadStruct(const YAML::Node& node, pb::Message* msg, const std::string& path, int depth) {
    if (!node.IsMap()) {
      return Error(path, node.Mark(), fmt::format("expected a mapping, got {}", Describe(node)));
    }
    const FieldDescriptor* fields = msg->GetDescriptor()->FindFieldByNumber(1);
    const FieldDescriptor* key_field = fields->message_type()->map_key();
    const FieldDescriptor* value_field = fields->message_type()->map_value();
    const pb::Reflection* r = msg->GetReflection();
    std::set<std::string> keys;
    for (const auto& kv : node) {
      const YAML::Node& key = kv.first;
      const YAML::Node& val = kv.second;
      HCI_RETURN_NOT_OK(Visit(key, path));
      HCI_RETURN_NOT_OK(Visit(val, path));
      if (!key.IsScalar()) {
        return Error(path, key.Mark(), fmt::format("expected a string key, got {}", Describe(key)));
      }
      const std::string& name = key.Scalar();
      const std::string key_path = JoinKey(path, name);
      if (!IsValidUtf8(name)) return Error(key_path, key.Mark(), "the key is not valid UTF-8");
      if (!keys.insert(name).second) return Error(key_path, key.Mark(), "duplicate key");
      pb::Message* entry = r->AddMessage(msg, fields);
      entry->GetReflection()->SetString(entry, key_field, name);
      HCI_RETURN_NOT_OK(ReadMessageLike(
          val, entry->GetReflection()->MutableMessage(entry, value_field), key_path, depth + 1));
    }
    return Status::OK();
  }

  Status ReadListValue(const YAML::Node& node, pb::Message* msg, const std::string& path,
                       int depth) {
    if (!node.IsSequence()) {
      return Error(path, node.Mark(), fmt::format("expected a list, got {}", Describe(node)));
    }
    const FieldDescriptor* values = msg->GetDescriptor()->FindFieldByNumber(1);
    size_t index = 0;
    for (const YAML::Node& element : node) {
      const std::string element_path = fmt::format("{}[{}]", path, index++);
      HCI_RETURN_NOT_OK(Visit(element, element_path));
      HCI_RETURN_NOT_OK(ReadMessageLike(element, msg->GetReflection()->AddMessage(msg, values),
                                        element_path, depth + 1));
    }
    return Status::OK();
  }

  Status ReadValue(const YAML::Node& node, pb::Message* msg, const std::string& path, int depth) {
    const Descriptor* d = msg->GetDescriptor();
    const pb::Reflection* r = msg->GetReflection();
    // google.protobuf.Value: null_value = 1, number_value = 2, string_value = 3, bool_value = 4,
    // struct_value = 5, list_value = 6.
    switch (node.Type()) {
      case YAML::NodeType::Map:
        return ReadMessageLike(node, r->MutableMessage(msg, d->FindFieldByNumber(5)), path,
                               depth + 1);
      case YAML::NodeType::Sequence:
        return ReadMessageLike(node, r->MutableMessage(msg, d->FindFieldByNumber(6)), path,
                               depth + 1);
      case YAML::NodeType::Scalar:
        break;
      default:
        r->SetEnumValue(msg, d->FindFieldByNumber(1), 0);
        return Status::OK();
    }
    std::string text;
    HCI_RETURN_NOT_OK(ScalarText(node, path, &text));
    const PlainKind kind = IsPlain(node) ? ResolvePlain(text) : PlainKind::kString;
    switch (kind) {
      case PlainKind::kNull:
        r->SetEnumValue(msg, d->FindFieldByNumber(1), 0);
        return Status::OK();
      case PlainKind::kBool: {
        bool b = false;
        IsBoolText(text, &b);
        r->SetBool(msg, d->FindFieldByNumber(4), b);
        return Status::OK();
      }
      case PlainKind::kNumber: {
        double number = 0;
        if (ParseFloating(text, false, &number) != NumParse::kOk) {
          return Error(path, node.Mark(),
                       fmt::format("the number {} is out of range for a double (quote it to "
                                   "keep it as a string)",
                                   Quote(text)));
        }
        r->SetDouble(msg, d->FindFieldByNumber(2), number);
        return Status::OK();
      }
      case PlainKind::kString:
        break;
    }
    if (!IsValidUtf8(text)) return Error(path, node.Mark(), "the string is not valid UTF-8");
    r->SetString(msg, d->FindFieldByNumber(3), text);
    return Status::OK();
  }

  Status ReadTimestamp(const YAML::Node& node, pb::Message* msg, const std::string& path) const {
    pb::Timestamp ts;
    std::string text;
    if (node.IsScalar()) HCI_RETURN_NOT_OK(ScalarText(node, path, &text));
    if (!node.IsScalar() || !pb::util::TimeUtil::FromString(text, &ts)) {
      return Error(path, node.Mark(),
                   fmt::format("expected an RFC 3339 timestamp such as "
                               "\"2024-05-01T12:00:00Z\", got {}",
                               Describe(node)));
    }
    if (ts.seconds() < kMinTimestampSeconds || ts.seconds() > kMaxTimestampSeconds ||
        ts.nanos() < 0 || ts.nanos() >= kNanosPerSecond) {
      return Error(path, node.Mark(),
                   fmt::format("timestamp {} is outside the years 0001 to 9999", Quote(text)));
    }
    const Descriptor* d = msg->GetDescriptor();
    msg->GetReflection()->SetInt64(msg, d->FindFieldByNumber(1), ts.seconds());
    msg->GetReflection()->SetInt32(msg, d->FindFieldByNumber(2), ts.nanos());
    return Status::OK();
  }

  Status ReadDuration(const YAML::Node& node, pb::Message* msg, const std::string& path) const {
    pb::Duration duration;
    std::string text;
    if (node.IsScalar()) HCI_RETURN_NOT_OK(ScalarText(node, path, &text));
    if (!node.IsScalar() || !pb::util::TimeUtil::FromString(text, &duration)) {
      return Error(
          path, node.Mark(),
          fmt::format("expected a duration in seconds such as \"1.5s\", got {}", Describe(node)));
    }
    const int64_t s = duration.seconds();
    const int32_t n = duration.nanos();
    if (s < -kMaxDurationSeconds || s > kMaxDurationSeconds || n <= -kNanosPerSecond ||
        n >= kNanosPerSecond || (s > 0 && n < 0) || (s < 0 && n > 0)) {
      return Error(path, node.Mark(), fmt::format("duration {} is out of range", Quote(text)));
    }
    const Descriptor* d = msg->GetDescriptor();
    msg->GetReflection()->SetInt64(msg, d->FindFieldByNumber(1), s);
    msg->GetReflection()->SetInt32(msg, d->FindFieldByNumber(2), n);
    return Status::OK();
  }

  size_t node_budget_;
  size_t nodes_visited_ = 0;
  SourceContext context_;
};

// Notes where the second document starts, if there is one.
class DocumentCounter : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { start = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  YAML::Mark start = YAML::Mark::null_mark();
};

Status ParseYamlInto(std::string_view text, pb::Message* message) {
  const std::string input(text);
  YAML::Node root;
  try {
    // YAML::Load reads the first document and ignores the rest, and YAML::LoadAll never ends on
    // a stray "," (yaml-cpp 0.7 leaves the token unconsumed and yields an endless run of empty
    // documents). So a first pass looks at the first two documents only, then Load builds the
    // tree of the first one.
    std::istringstream stream(input);
    YAML::Parser parser(stream);
    DocumentCounter counter;
    if (!parser.HandleNextDocument(counter)) return Status::OK();  // no document at all
    if (parser.HandleNextDocument(counter)) {
      return Error("", counter.start, "expected a single YAML document, found more content");
    }
    root = YAML::Load(input);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("invalid YAML: {}{}", e.msg, Where(e.mark)));
  }
  if (root.IsNull()) return Status::OK();
  Reader reader(std::max(kMinNodeBudget, text.size() * kNodesPerByte));
  HCI_RETURN_NOT_OK(reader.ReadMessageLike(root, message, "", 0));
  if (!message->IsInitialized()) {  // proto2 required fields
    return InvalidArgument(
        fmt::format("missing required fields: {}", message->InitializationErrorString()));
  }
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Manifests.

constexpr char kManifestApiVersion[] = "hci.dev/v1";
// Far more documents than anyone writes by hand; keeps a hostile stream of "---" cheap.
constexpr size_t kMaxManifestDocuments = 10000;

struct ManifestKind {
  std::string_view kind;
  const pb::Message* prototype;
};

const std::vector<ManifestKind>& ManifestKinds() {
  static const auto* const kinds = new std::vector<ManifestKind>{
      {"VirtualMachine", &v1::VirtualMachine::default_instance()},
      {"Volume", &v1::Volume::default_instance()},
      {"Image", &v1::Image::default_instance()},
      {"Network", &v1::Network::default_instance()},
      {"Port", &v1::Port::default_instance()},
      {"BackupTarget", &v1::BackupTarget::default_instance()},
      {"Backup", &v1::Backup::default_instance()},
  };
  return *kinds;
}

std::string ManifestKindList() {
  std::string out;
  for (const ManifestKind& k : ManifestKinds()) {
    if (!out.empty()) out += ", ";
    out += k.kind;
  }
  return out;
}

// 1-based line of byte `offset` of `text`.
size_t LineOf(std::string_view text, size_t offset) {
  return static_cast<size_t>(
             std::count(text.begin(), text.begin() + std::min(offset, text.size()), '\n')) +
         1;
}

// The top-level keys of a manifest document besides `status`.
constexpr std::string_view kManifestKeys[] = {"apiVersion", "kind", "metadata", "spec"};

// One document's tree (not null) into an object.
Result<ManifestObject> ReadManifestDocument(Reader& reader, const YAML::Node& root) {
  if (!root.IsMap()) {
    return reader.Error("", root.Mark(),
                        fmt::format("expected a mapping with apiVersion, kind, metadata and spec, "
                                    "got {}",
                                    Describe(root)));
  }
  std::optional<YAML::Node> kind_node;
  std::optional<YAML::Node> api_node;
  std::optional<YAML::Node> metadata_node;
  std::optional<YAML::Node> spec_node;
  std::set<std::string> seen;
  for (const auto& kv : root) {
    const YAML::Node& key = kv.first;
    const YAML::Node& value = kv.second;
    HCI_RETURN_NOT_OK(reader.Visit(key, ""));
    HCI_RETURN_NOT_OK(reader.Visit(value, ""));
    if (!key.IsScalar()) {
      return reader.Error("", key.Mark(),
                          fmt::format("expected a key (apiVersion, kind, metadata or spec), got {}",
                                      Describe(key)));
    }
    const std::string& name = key.Scalar();
    const std::string path = JoinKey("", name);
    if (!seen.insert(name).second) return reader.Error(path, key.Mark(), "duplicate key");
    if (name == "kind") {
      kind_node.emplace(value);
    } else if (name == "apiVersion") {
      api_node.emplace(value);
    } else if (name == "metadata") {
      metadata_node.emplace(value);
    } else if (name == "spec") {
      spec_node.emplace(value);
    } else if (name == "status") {
      return reader.Error(path, key.Mark(),
                          "is written by the backend and cannot be set in a manifest (remove it)");
    } else {
      std::string suggestion;
      for (const std::string_view known : kManifestKeys) {
        if (EditDistance(name, known) <= 2 && name.size() <= 64) {
          suggestion = fmt::format("; did you mean {}?", Quote(known));
        }
      }
      return reader.Error(
          path, key.Mark(),
          fmt::format("unknown key (expected apiVersion, kind, metadata and spec{})", suggestion));
    }
  }
  if (!kind_node || kind_node->IsNull()) {
    return reader.Error("kind", kind_node ? kind_node->Mark() : root.Mark(),
                        fmt::format("missing (expected one of: {})", ManifestKindList()));
  }
  if (!kind_node->IsScalar()) {
    return reader.Error(
        "kind", kind_node->Mark(),
        fmt::format("expected one of: {}; got {}", ManifestKindList(), Describe(*kind_node)));
  }
  std::string kind;
  HCI_RETURN_NOT_OK(reader.ScalarText(*kind_node, "kind", &kind));
  const pb::Message* prototype = nullptr;
  for (const ManifestKind& k : ManifestKinds()) {
    if (k.kind == kind) prototype = k.prototype;
  }
  if (prototype == nullptr) {
    return reader.Error(
        "kind", kind_node->Mark(),
        fmt::format("unknown kind {} (expected one of: {})", Quote(kind), ManifestKindList()));
  }
  if (api_node) {
    std::string api_version;
    if (api_node->IsScalar())
      HCI_RETURN_NOT_OK(reader.ScalarText(*api_node, "apiVersion", &api_version));
    if (!api_node->IsScalar() || api_version != kManifestApiVersion) {
      return reader.Error(
          "apiVersion", api_node->Mark(),
          fmt::format("{} is not supported (expected {} or no apiVersion)",
                      api_node->IsScalar() ? Quote(api_version) : Describe(*api_node),
                      Quote(kManifestApiVersion)));
    }
  }
  ManifestObject out;
  out.kind = kind;
  out.object.reset(prototype->New());
  pb::Message* msg = out.object.get();
  const Descriptor* d = msg->GetDescriptor();
  const FieldDescriptor* metadata_field = d->FindFieldByName("metadata");
  if (metadata_node) {
    HCI_RETURN_NOT_OK(reader.ReadTopLevelField(*metadata_node, msg, metadata_field, "metadata"));
  }
  if (spec_node) {
    HCI_RETURN_NOT_OK(
        reader.ReadTopLevelField(*spec_node, msg, d->FindFieldByName("spec"), "spec"));
  }
  const pb::Message& meta = msg->GetReflection()->GetMessage(*msg, metadata_field);
  const std::string name =
      meta.GetReflection()->GetString(meta, meta.GetDescriptor()->FindFieldByName("name"));
  YAML::Mark name_mark = metadata_node ? metadata_node->Mark() : root.Mark();
  if (metadata_node && metadata_node->IsMap()) {
    for (const auto& kv : *metadata_node) {
      if (kv.first.IsScalar() && kv.first.Scalar() == "name") name_mark = kv.second.Mark();
    }
  }
  if (name.empty()) {
    return reader.Error("metadata.name", name_mark,
                        "missing (every object in a manifest needs a name)");
  }
  if (const Status valid = ValidateName("metadata.name", name); !valid.ok()) {
    return reader.Error("", name_mark, valid.message());
  }
  out.line = reader.context().base_line + root.Mark().line + 1;
  out.document = reader.context().document;
  return out;
}

Result<std::vector<ManifestObject>> ParseManifestsImpl(std::string_view text) {
  // A byte order mark may start the stream; it is not part of the text (and not of a line).
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  // yaml-cpp guesses UTF-16/32 from NUL bytes, and its marks then count other units than bytes:
  // only UTF-8 keeps the marks usable as offsets into `text`.
  if (const size_t bad = Utf8ErrorOffset(text); bad != std::string_view::npos) {
    return InvalidArgument(
        fmt::format("line {}: the manifest is not valid UTF-8 text", LineOf(text, bad)));
  }
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return InvalidArgument(
        fmt::format("line {}: the manifest contains a NUL byte", LineOf(text, nul)));
  }
  const std::string input(text);

  // Pass 1: where each document starts. YAML::LoadAll cannot be used: on a stray token such as
  // a "," after a flow collection, yaml-cpp 0.7 consumes nothing and reports an endless run of
  // empty documents at the same place, which this loop detects.
  std::vector<YAML::Mark> starts;
  {
    std::istringstream stream(input);
    YAML::Parser parser(stream);
    while (true) {
      DocumentCounter document;
      try {
        if (!parser.HandleNextDocument(document)) break;
      } catch (const YAML::Exception& e) {
        const size_t line = e.mark.is_null()
                                ? (starts.empty() ? 1 : static_cast<size_t>(starts.back().line) + 1)
                                : static_cast<size_t>(e.mark.line) + 1;
        return InvalidArgument(
            fmt::format("document {} (line {}): invalid YAML: {}", starts.size() + 1, line, e.msg));
      }
      if (document.start.is_null()) break;  // cannot happen: every document has a first token
      if (!starts.empty() && document.start.pos <= starts.back().pos) {
        const auto pos = static_cast<size_t>(document.start.pos);
        const std::string token =
            pos < input.size() && static_cast<unsigned char>(input[pos]) < 0x80
                ? Quote(input.substr(pos, 1))
                : std::string("content");
        return InvalidArgument(fmt::format("document {} (line {}): invalid YAML: unexpected {}",
                                           starts.size(), document.start.line + 1, token));
      }
      if (starts.size() == kMaxManifestDocuments) {
        return InvalidArgument(fmt::format("line {}: more than {} documents in one manifest",
                                           document.start.line + 1, kMaxManifestDocuments));
      }
      starts.push_back(document.start);
    }
  }

  // Pass 2: each document from its own slice of the text, which starts at the beginning of the
  // line of its first token (so indentation is kept) and ends where the next one starts.
  Reader reader(std::max(kMinNodeBudget, text.size() * kNodesPerByte));
  std::vector<ManifestObject> objects;
  for (size_t i = 0; i < starts.size(); ++i) {
    const size_t begin =
        i == 0 ? 0 : static_cast<size_t>(starts[i].pos) - static_cast<size_t>(starts[i].column);
    const size_t end = i + 1 < starts.size()
                           ? static_cast<size_t>(starts[i + 1].pos - starts[i + 1].column)
                           : input.size();
    SourceContext context;
    context.document = static_cast<int>(i) + 1;
    context.base_line = i == 0 ? 0 : starts[i].line;
    context.fallback_line = starts[i].line;
    context.expand_env = true;
    reader.set_context(context);
    YAML::Node root;
    try {
      root = YAML::Load(input.substr(begin, end > begin ? end - begin : 0));
    } catch (const YAML::Exception& e) {
      return reader.Error("", e.mark, fmt::format("invalid YAML: {}", e.msg));
    }
    if (root.IsNull()) continue;  // an empty document
    HCI_ASSIGN_OR_RAISE(ManifestObject object, ReadManifestDocument(reader, root));
    objects.push_back(std::move(object));
  }
  return objects;
}

// ---------------------------------------------------------------------------------------------
// message -> YAML.

// Strings that would read back as something else (null, a bool, a number) are double-quoted;
// multi-line text uses a literal block when that reproduces it exactly.
bool LiteralBlockKeepsText(std::string_view s) {
  // yaml-cpp writes "|" without chomping or indentation indicators: the text must end in exactly
  // one newline and must not start with a space or an empty line.
  if (s.size() < 2 || s.back() != '\n' || s[s.size() - 2] == '\n' || s[0] == ' ' || s[0] == '\n') {
    return false;
  }
  if (!IsValidUtf8(s)) return false;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7F || c >= 0x80) return false;
  }
  return true;
}

class Writer {
 public:
  explicit Writer(YAML::Emitter* out) : out_(*out) {}

  // The first field that could not be written so that ParseYaml reads it back; OK otherwise.
  const Status& status() const { return status_; }

  // `depth` counts as the reader counts it, so that what ParseYaml would refuse as too deep is
  // refused here.
  void Message(const pb::Message& m, const std::string& path, int depth) {
    if (!status_.ok()) return;
    if (depth > kMaxDepth) {
      Fail(path, fmt::format("nesting is deeper than the limit of {} levels that ParseYaml reads",
                             kMaxDepth));
      return;
    }
    const Descriptor* d = m.GetDescriptor();
    const pb::Reflection* r = m.GetReflection();
    switch (d->well_known_type()) {
      case Descriptor::WELLKNOWNTYPE_STRUCT:
        return Struct(m, path, depth);
      case Descriptor::WELLKNOWNTYPE_VALUE:
        return Value(m, path, depth);
      case Descriptor::WELLKNOWNTYPE_LISTVALUE:
        return List(m, path, depth);
      case Descriptor::WELLKNOWNTYPE_TIMESTAMP: {
        pb::Timestamp ts;
        ts.set_seconds(r->GetInt64(m, d->FindFieldByNumber(1)));
        ts.set_nanos(r->GetInt32(m, d->FindFieldByNumber(2)));
        if (ts.seconds() < kMinTimestampSeconds || ts.seconds() > kMaxTimestampSeconds ||
            ts.nanos() < 0 || ts.nanos() >= kNanosPerSecond) {
          Fail(path, fmt::format("timestamp {{seconds: {}, nanos: {}}} is outside the years 0001 "
                                 "to 9999 or has nanos outside 0-999999999",
                                 ts.seconds(), ts.nanos()));
          return;
        }
        out_ << pb::util::TimeUtil::ToString(ts);
        return;
      }
      case Descriptor::WELLKNOWNTYPE_DURATION: {
        pb::Duration duration;
        const int64_t s = r->GetInt64(m, d->FindFieldByNumber(1));
        const int32_t n = r->GetInt32(m, d->FindFieldByNumber(2));
        if (s < -kMaxDurationSeconds || s > kMaxDurationSeconds || n <= -kNanosPerSecond ||
            n >= kNanosPerSecond || (s > 0 && n < 0) || (s < 0 && n > 0)) {
          Fail(path, fmt::format("duration {{seconds: {}, nanos: {}}} is outside +-10000 years or "
                                 "has seconds and nanos of different signs",
                                 s, n));
          return;
        }
        duration.set_seconds(s);
        duration.set_nanos(n);
        out_ << pb::util::TimeUtil::ToString(duration);
        return;
      }
      default:
        break;
    }
    if (IsWrapper(d)) return Scalar(m, d->FindFieldByNumber(1), -1, false, path);
    std::vector<const FieldDescriptor*> fields;
    r->ListFields(m, &fields);
    std::erase_if(fields, [](const FieldDescriptor* f) { return f->is_extension(); });
    if (fields.empty()) {
      out_ << YAML::Flow << YAML::BeginMap << YAML::EndMap;
      return;
    }
    out_ << YAML::BeginMap;
    for (const FieldDescriptor* f : fields) {
      out_ << YAML::Key << f->json_name() << YAML::Value;
      Field(m, f, JoinField(path, f->name()), depth);
    }
    out_ << YAML::EndMap;
  }

 private:
  void Fail(const std::string& path, std::string_view what) {
    if (status_.ok()) {
      status_ = InvalidArgument(fmt::format("{}{}{}", path, path.empty() ? "" : ": ", what));
    }
  }

  void Field(const pb::Message& m, const FieldDescriptor* f, const std::string& path, int depth) {
    if (!status_.ok()) return;
    const pb::Reflection* r = m.GetReflection();
    if (f->is_map()) return Map(m, f, path, depth);
    if (!f->is_repeated()) {
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        return Message(r->GetMessage(m, f), path, depth + 1);
      }
      return Scalar(m, f, -1, false, path);
    }
    out_ << YAML::BeginSeq;
    for (int i = 0; i < r->FieldSize(m, f) && status_.ok(); ++i) {
      const std::string element_path = fmt::format("{}[{}]", path, i);
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        Message(r->GetRepeatedMessage(m, f, i), element_path, depth + 1);
      } else {
        Scalar(m, f, i, false, element_path);
      }
    }
    out_ << YAML::EndSeq;
  }

  // Map entries sorted by key, so that the output does not depend on hash order.
  void Map(const pb::Message& m, const FieldDescriptor* f, const std::string& path, int depth) {
    const pb::Reflection* r = m.GetReflection();
    const FieldDescriptor* key = f->message_type()->map_key();
    const FieldDescriptor* value = f->message_type()->map_value();
    std::vector<const pb::Message*> entries;
    for (int i = 0; i < r->FieldSize(m, f); ++i) entries.push_back(&r->GetRepeatedMessage(m, f, i));
    std::sort(entries.begin(), entries.end(), [key](const pb::Message* a, const pb::Message* b) {
      const pb::Reflection* ra = a->GetReflection();
      switch (key->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32:
          return ra->GetInt32(*a, key) < ra->GetInt32(*b, key);
        case FieldDescriptor::CPPTYPE_INT64:
          return ra->GetInt64(*a, key) < ra->GetInt64(*b, key);
        case FieldDescriptor::CPPTYPE_UINT32:
          return ra->GetUInt32(*a, key) < ra->GetUInt32(*b, key);
        case FieldDescriptor::CPPTYPE_UINT64:
          return ra->GetUInt64(*a, key) < ra->GetUInt64(*b, key);
        case FieldDescriptor::CPPTYPE_BOOL:
          return ra->GetBool(*a, key) < ra->GetBool(*b, key);
        default:
          return ra->GetString(*a, key) < ra->GetString(*b, key);
      }
    });
    out_ << YAML::BeginMap;
    for (const pb::Message* entry : entries) {
      if (!status_.ok()) return;
      const std::string entry_path = fmt::format("{}[{}]", path, KeyText(*entry, key));
      out_ << YAML::Key;
      Scalar(*entry, key, -1, /*is_key=*/true, entry_path);
      out_ << YAML::Value;
      if (value->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        Message(entry->GetReflection()->GetMessage(*entry, value), entry_path, depth + 1);
      } else {
        Scalar(*entry, value, -1, false, entry_path);
      }
    }
    out_ << YAML::EndMap;
  }

  // A map key as error paths show it: labels["app"], ports[8080].
  static std::string KeyText(const pb::Message& entry, const FieldDescriptor* key) {
    const pb::Reflection* r = entry.GetReflection();
    switch (key->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        return std::to_string(r->GetInt32(entry, key));
      case FieldDescriptor::CPPTYPE_INT64:
        return std::to_string(r->GetInt64(entry, key));
      case FieldDescriptor::CPPTYPE_UINT32:
        return std::to_string(r->GetUInt32(entry, key));
      case FieldDescriptor::CPPTYPE_UINT64:
        return std::to_string(r->GetUInt64(entry, key));
      case FieldDescriptor::CPPTYPE_BOOL:
        return r->GetBool(entry, key) ? "true" : "false";
      default:
        return Quote(r->GetString(entry, key));
    }
  }

  // Field `f` of `m`, element `i` when repeated (else -1).
  void Scalar(const pb::Message& m, const FieldDescriptor* f, int i, bool is_key,
              const std::string& path) {
    if (!status_.ok()) return;
    const pb::Reflection* r = m.GetReflection();
    const bool rep = i >= 0;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        out_ << std::to_string(rep ? r->GetRepeatedInt32(m, f, i) : r->GetInt32(m, f));
        return;
      case FieldDescriptor::CPPTYPE_INT64:
        out_ << std::to_string(rep ? r->GetRepeatedInt64(m, f, i) : r->GetInt64(m, f));
        return;
      case FieldDescriptor::CPPTYPE_UINT32:
        out_ << std::to_string(rep ? r->GetRepeatedUInt32(m, f, i) : r->GetUInt32(m, f));
        return;
      case FieldDescriptor::CPPTYPE_UINT64:
        out_ << std::to_string(rep ? r->GetRepeatedUInt64(m, f, i) : r->GetUInt64(m, f));
        return;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        out_ << FormatFloating(rep ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f));
        return;
      case FieldDescriptor::CPPTYPE_FLOAT:
        out_ << FormatFloating(rep ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f));
        return;
      case FieldDescriptor::CPPTYPE_BOOL:
        out_ << ((rep ? r->GetRepeatedBool(m, f, i) : r->GetBool(m, f)) ? "true" : "false");
        return;
      case FieldDescriptor::CPPTYPE_ENUM: {
        const int number = rep ? r->GetRepeatedEnumValue(m, f, i) : r->GetEnumValue(m, f);
        if (const std::optional<std::string> name = EnumText(f->enum_type(), number)) {
          String(*name, is_key, path);
        } else {
          out_ << std::to_string(number);  // an unknown value of an open enum: plain, a number
        }
        return;
      }
      case FieldDescriptor::CPPTYPE_STRING: {
        std::string scratch;
        const std::string& s = rep ? r->GetRepeatedStringReference(m, f, i, &scratch)
                                   : r->GetStringReference(m, f, &scratch);
        String(f->type() == FieldDescriptor::TYPE_BYTES ? Base64Encode(s) : s, is_key, path);
        return;
      }
      case FieldDescriptor::CPPTYPE_MESSAGE:
        return;
    }
  }

  void String(const std::string& s, bool is_key, const std::string& path) {
    if (!status_.ok()) return;
    if (const size_t bad = Utf8ErrorOffset(s); bad != std::string::npos) {
      // YAML text is Unicode: such bytes cannot be written, and ParseYaml refuses them.
      Fail(path, fmt::format("the {} is not valid UTF-8 (byte {} of {}); use a bytes field "
                             "for binary data",
                             is_key ? "key" : "string", bad, Quote(s)));
      return;
    }
    // yaml-cpp may write a control character other than a line feed (e.g. a carriage return)
    // into a plain scalar, where the reader takes it for a line break: escape it instead.
    const bool control = std::any_of(s.begin(), s.end(), [](char c) {
      return (static_cast<unsigned char>(c) < 0x20 && c != '\n') || c == 0x7f;
    });
    if (NeedsQuotes(s) || control) {
      out_ << YAML::DoubleQuoted << s;
    } else if (!is_key && s.find('\n') != std::string::npos && LiteralBlockKeepsText(s)) {
      // yaml-cpp writes the text's own line breaks and then one of its own; the reader's "clip"
      // chomping restores the single final newline.
      out_ << YAML::Literal << s.substr(0, s.size() - 1);
    } else {
      out_ << s;  // plain when yaml-cpp can write it so, else double-quoted
    }
  }

  void Struct(const pb::Message& m, const std::string& path, int depth) {
    const FieldDescriptor* fields = m.GetDescriptor()->FindFieldByNumber(1);
    const FieldDescriptor* key = fields->message_type()->map_key();
    const FieldDescriptor* value = fields->message_type()->map_value();
    const pb::Reflection* r = m.GetReflection();
    std::vector<std::pair<std::string, const pb::Message*>> entries;
    for (int i = 0; i < r->FieldSize(m, fields); ++i) {
      const pb::Message& entry = r->GetRepeatedMessage(m, fields, i);
      entries.emplace_back(entry.GetReflection()->GetString(entry, key),
                           &entry.GetReflection()->GetMessage(entry, value));
    }
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    if (entries.empty()) {
      out_ << YAML::Flow << YAML::BeginMap << YAML::EndMap;
      return;
    }
    out_ << YAML::BeginMap;
    for (const auto& [name, v] : entries) {
      if (!status_.ok()) return;
      const std::string entry_path = JoinKey(path, name);
      out_ << YAML::Key;
      String(name, /*is_key=*/true, entry_path);
      out_ << YAML::Value;
      Message(*v, entry_path, depth + 1);
    }
    out_ << YAML::EndMap;
  }

  void List(const pb::Message& m, const std::string& path, int depth) {
    const FieldDescriptor* values = m.GetDescriptor()->FindFieldByNumber(1);
    const pb::Reflection* r = m.GetReflection();
    if (r->FieldSize(m, values) == 0) {
      out_ << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
      return;
    }
    out_ << YAML::BeginSeq;
    for (int i = 0; i < r->FieldSize(m, values) && status_.ok(); ++i) {
      Message(r->GetRepeatedMessage(m, values, i), fmt::format("{}[{}]", path, i), depth + 1);
    }
    out_ << YAML::EndSeq;
  }

  void Value(const pb::Message& m, const std::string& path, int depth) {
    const Descriptor* d = m.GetDescriptor();
    const pb::Reflection* r = m.GetReflection();
    const FieldDescriptor* kind = r->GetOneofFieldDescriptor(m, d->FindOneofByName("kind"));
    switch (kind == nullptr ? 0 : kind->number()) {
      case 1:
        out_ << YAML::Null;
        return;
      case 2:
        out_ << FormatFloating(r->GetDouble(m, kind));
        return;
      case 3:
        return String(r->GetString(m, kind), /*is_key=*/false, path);
      case 4:
        out_ << (r->GetBool(m, kind) ? "true" : "false");
        return;
      case 5:
        return Message(r->GetMessage(m, kind), path, depth + 1);
      case 6:
        return Message(r->GetMessage(m, kind), path, depth + 1);
      default:
        // Written as null it would read back as null_value, a different message.
        Fail(
            path,
            "a google.protobuf.Value with no kind set cannot be written (set null_value for null)");
        return;
    }
  }

  YAML::Emitter& out_;
  Status status_;
};

}  // namespace

Status ParseYaml(std::string_view text, google::protobuf::Message* message) {
  message->Clear();
  Status status;
  try {
    status = ParseYamlInto(text, message);
  } catch (const std::exception& e) {
    // yaml-cpp throws on what it cannot represent; nothing may escape the API.
    status = InvalidArgument(fmt::format("invalid YAML: {}", e.what()));
  }
  if (!status.ok()) message->Clear();
  return status;
}

Status LoadYamlFile(const std::string& path, google::protobuf::Message* message) {
  message->Clear();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, path);
  std::string text;
  char buffer[65536];
  Status status;
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = errno == EISDIR ? InvalidArgument(path + ": is a directory, not a YAML file")
                               : ErrnoStatus(errno, path);
      break;
    }
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > kMaxFileBytes) {
      status = InvalidArgument(
          fmt::format("{}: the file is larger than {} MiB", path, kMaxFileBytes >> 20));
      break;
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  HCI_RETURN_NOT_OK(status);
  return ParseYaml(text, message).WithContext(path);
}

Result<std::string> ToYaml(const google::protobuf::Message& message) {
  if (!message.IsInitialized()) {  // proto2 required fields: ParseYaml would refuse the text
    return InvalidArgument(
        fmt::format("missing required fields: {}", message.InitializationErrorString()));
  }
  YAML::Emitter out;
  out.SetIndent(2);
  Writer writer(&out);
  try {
    writer.Message(message, "", 0);
  } catch (const std::exception& e) {
    return Internal(fmt::format("cannot write YAML: {}", e.what()));
  }
  HCI_RETURN_NOT_OK(writer.status());
  if (!out.good()) return Internal(fmt::format("cannot write YAML: {}", out.GetLastError()));
  std::string text = out.c_str();
  text += '\n';
  return text;
}

Result<std::vector<ManifestObject>> ParseManifests(std::string_view text) {
  try {
    return ParseManifestsImpl(text);
  } catch (const std::exception& e) {
    // yaml-cpp throws on what it cannot represent; nothing may escape the API.
    return InvalidArgument(fmt::format("invalid YAML: {}", e.what()));
  }
}

}  // namespace hci
