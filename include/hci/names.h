// Validation of object names (VMs, volumes, networks, images, snapshots, backups, ...).
#pragma once

#include <string_view>

#include "hci/export.h"
#include "hci/status.h"

namespace hci {

/// Longest valid name, in characters (an RFC 1123 DNS label).
inline constexpr std::size_t kMaxNameLength = 63;

/// True when `name` is an RFC 1123 label (RFC 1123 section 2.1, as Kubernetes uses it):
/// 1 to 63 characters of lowercase a-z, 0-9 and '-', starting and ending with a letter or digit.
/// Such a name is safe as a path component, a QMP argument and a command-line argument.
HCI_EXPORT bool IsValidName(std::string_view name);

/// OK for a valid name; otherwise InvalidArgument naming `field` and saying what is wrong, e.g.
/// `metadata.name: "a/b" is not a valid name: '/' at position 1 is not allowed (use lowercase
/// letters, digits and '-', 1-63 characters, starting and ending with a letter or digit)`.
HCI_EXPORT Status ValidateName(std::string_view field, std::string_view name);

}  // namespace hci
