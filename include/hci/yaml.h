// YAML <-> protobuf messages, for manifests and the host config.
#pragma once

#include <string>
#include <string_view>

#include <google/protobuf/message.h>

#include "hci/export.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci {

/// Parses one YAML document (JSON is accepted too: it is YAML) into `message`, which is cleared
/// first. On error `message` is left cleared and the status is InvalidArgument naming the field
/// path and position, e.g. `spec.disks[0].bus: unknown value "virtoi" (expected one of: virtio,
/// scsi, sata) at line 9, column 12`.
///
/// Mapping (a superset of the proto3 JSON mapping):
/// - field keys: the proto name (`memory_mib`) or its lowerCamelCase JSON name (`memoryMib`);
///   unknown keys are errors;
/// - enums: the full value name (`DISK_BUS_VIRTIO`), or the part after the enum's prefix in any
///   case, with or without underscores (`virtio`, `RerunOnFailure`, `rerun_on_failure`);
/// - integers: decimal numbers; fields whose name ends in `_bytes` or `_mib` also take a
///   Kubernetes quantity with a binary suffix (`10Gi`, `512Mi`, `4Ki`), converted to the unit;
/// - google.protobuf.Struct/Value: any YAML; Timestamp: an RFC 3339 string; bytes: base64.
HCI_EXPORT Status ParseYaml(std::string_view text, google::protobuf::Message* message);

/// ParseYaml on a file's content; NotFound when the file does not exist; errors start with the
/// path.
HCI_EXPORT Status LoadYamlFile(const std::string& path, google::protobuf::Message* message);

/// Renders `message` as block YAML with lowerCamelCase keys, enum names shortened as ParseYaml
/// accepts them, and default-valued fields omitted. ParseYaml(ToYaml(m)) == m.
HCI_EXPORT std::string ToYaml(const google::protobuf::Message& message);

}  // namespace hci
