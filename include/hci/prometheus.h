// Helpers for Backend::Metrics(): the Prometheus text exposition format.
#pragma once

#include <string>
#include <string_view>

#include "hci/export.h"

namespace hci {

/// `value` escaped for a label value inside double quotes, as the Prometheus text exposition
/// format (version 0.0.4) requires: backslash, double quote and line feed become `\\`, `\"` and
/// `\n`; everything else is kept as is (UTF-8).
HCI_EXPORT std::string EscapePrometheusLabel(std::string_view value);

/// Appends the `# HELP` and `# TYPE` lines of metric family `name` to `*out`. `type` is one of
/// counter, gauge, summary, histogram, untyped; `help` is one line (a line feed or backslash in
/// it is escaped).
HCI_EXPORT void AppendPrometheusHeader(std::string* out, std::string_view name,
                                       std::string_view type, std::string_view help);

}  // namespace hci
