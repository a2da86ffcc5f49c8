// YAML <-> protobuf messages, for manifests and the host config.
#pragma once

#include <google/protobuf/message.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

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
/// accepts them, and default-valued fields omitted, such that ParseYaml(*ToYaml(m)) == m.
///
/// Errors: InvalidArgument naming the field path (proto names, e.g. `spec.kernel_boot.cmdline`)
/// for what ParseYaml could not read back: a string (or string map key, or Struct key) that is
/// not valid UTF-8; a Timestamp outside 0001-01-01..9999-12-31 or with nanos outside
/// 0..999999999; a Duration outside +-10000 years or with inconsistent signs; a
/// google.protobuf.Value with no kind set (write null_value for null); nesting deeper than the
/// 64 levels ParseYaml accepts; unset proto2 required fields.
HCI_EXPORT Result<std::string> ToYaml(const google::protobuf::Message& message);

/// One object of a manifest (see ParseManifests).
struct ManifestObject {
  /// The document's `kind`, e.g. "VirtualMachine".
  std::string kind;
  /// A `hci.v1.<kind>` message (hci::v1::VirtualMachine, ...) holding metadata and spec.
  std::unique_ptr<google::protobuf::Message> object;
  /// 1-based line of the document's top-level mapping in the stream.
  int line = 0;
  /// 1-based position of the document in the stream (empty documents count too), as used in
  /// error messages ("document 2 (line 14): ...").
  int document = 0;
};

/// Parses a manifest: a stream of YAML documents separated by `---`, each of the form
///
///     apiVersion: hci.dev/v1      # optional; no other value is accepted
///     kind: Volume                # VirtualMachine, Volume, Image, Network, Port,
///                                 # BackupTarget or Backup: the message hci.v1.<kind>
///     metadata: {name: data}      # metadata.name is required and must be a valid name
///     spec: {sizeBytes: 1Gi}      # the fields of hci.v1.<kind>Spec, as ParseYaml reads them
///
/// `status` is refused (the backend writes it). Empty documents are skipped. Objects come back
/// in stream order.
///
/// Environment references: `${NAME}` (NAME: letters, digits and '_', not starting with a digit)
/// in any scalar value (not in keys) is replaced by the value of the environment variable NAME
/// before the value is interpreted, so `vcpus: ${CPUS}` reads as a number. `$${` stands for a
/// literal `${`; a `$` not followed by `{` is kept as is. Meant for host-specific paths, e.g.
/// `file: ${HCI_TEST_GUEST}/disk.raw` in samples/manifests/demo.yaml.
///
/// Errors: InvalidArgument of the form `document 2 (line 14): spec.vcpus: <what>`, where the
/// line is that of the offending value in the whole stream: YAML syntax errors, a missing or
/// unknown `kind` (the message lists the accepted kinds), another `apiVersion`, `status` or an
/// unknown top-level key, a missing or invalid `metadata.name`, an unset environment variable
/// (named, with the field), a malformed `${` reference, any ParseYaml error in metadata or
/// spec, and input that is not UTF-8 or contains a NUL byte.
HCI_EXPORT Result<std::vector<ManifestObject>> ParseManifests(std::string_view text);

}  // namespace hci
