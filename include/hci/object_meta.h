// Object metadata helpers for backends: new uids and timestamps, label selection, spec
// comparison for idempotent creates.
#pragma once

#include <google/protobuf/map.h>
#include <google/protobuf/message.h>

#include <string>

#include "hci/export.h"
#include "hci/v1/meta.pb.h"

namespace hci {

/// The metadata of a newly created object: name, labels and annotations copied from
/// `requested`, a new random RFC 4122 version-4 uid ("xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx",
/// lowercase hex) and creation_time set to the current wall-clock time. Any uid or
/// creation_time in `requested` is ignored. Never fails: should the OS have no entropy to give,
/// the uid is a process-unique "00000000-0000-4000-8000-<12 hex digits>" instead.
HCI_EXPORT v1::ObjectMeta NewObjectMeta(const v1::ObjectMeta& requested);

/// True when `labels` carries every key of `selector` with the same value (an equality-based
/// Kubernetes selector); an empty selector matches everything.
HCI_EXPORT bool MatchesLabels(const google::protobuf::Map<std::string, std::string>& labels,
                              const google::protobuf::Map<std::string, std::string>& selector);

/// Empty when `existing` and `requested` are equal (protobuf field-by-field comparison);
/// otherwise one line describing the first difference, e.g. `modified: vcpus: 2 -> 4`, for an
/// AlreadyExists message on a create that repeats a name with another spec. Both must be of
/// the same message type.
HCI_EXPORT std::string DescribeSpecDifference(const google::protobuf::Message& existing,
                                              const google::protobuf::Message& requested);

}  // namespace hci
