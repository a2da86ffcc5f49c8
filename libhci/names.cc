#include "hci/names.h"

#include <string>

namespace hci {
namespace {

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// Shows a name safely in a message: control bytes and quotes escaped, long input cut.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  std::size_t shown = 0;
  for (char c : s) {
    if (++shown > 80) {
      out += "...";
      break;
    }
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

constexpr std::string_view kRule =
    "use lowercase letters, digits and '-', 1-63 characters, starting and ending with a letter "
    "or digit (an RFC 1123 label)";

}  // namespace

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  if (!IsLowerAlnum(name.front()) || !IsLowerAlnum(name.back())) return false;
  for (char c : name) {
    if (!IsLowerAlnum(c) && c != '-') return false;
  }
  return true;
}

Status ValidateName(std::string_view field, std::string_view name) {
  if (IsValidName(name)) return Status();
  std::string why;
  if (name.empty()) {
    why = "it is empty";
  } else if (name.size() > kMaxNameLength) {
    why = "it is " + std::to_string(name.size()) + " characters long";
  } else {
    for (std::size_t i = 0; i < name.size(); ++i) {
      char c = name[i];
      if (IsLowerAlnum(c)) continue;
      if (c == '-' && i != 0 && i + 1 != name.size()) continue;
      if (c >= 'A' && c <= 'Z') {
        why = "uppercase '" + std::string(1, c) + "' at position " + std::to_string(i);
      } else if (c == '-') {
        why = std::string("'-' at the ") + (i == 0 ? "start" : "end");
      } else if (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) {
        why = "'" + std::string(1, c) + "' at position " + std::to_string(i) + " is not allowed";
      } else {
        why = "a control character at position " + std::to_string(i);
      }
      break;
    }
  }
  std::string message(field);
  message += ": " + Quote(name) + " is not a valid name: " + why + " (" + std::string(kRule) + ")";
  return InvalidArgument(std::move(message));
}

}  // namespace hci
