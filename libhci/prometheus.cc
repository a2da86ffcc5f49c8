#include "hci/prometheus.h"

namespace hci {

std::string EscapePrometheusLabel(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void AppendPrometheusHeader(std::string* out, std::string_view name, std::string_view type,
                            std::string_view help) {
  out->append("# HELP ").append(name).append(" ");
  // HELP text escapes backslash and line feed, but not the double quote.
  for (char c : help) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else {
      *out += c;
    }
  }
  out->append("\n# TYPE ").append(name).append(" ").append(type).append("\n");
}

}  // namespace hci
