"""YAML <-> protobuf messages and manifests, with libhci's own rules (hci/yaml.h), and names."""

import os
import typing

from hci import _hci, v1
from google.protobuf import message as _message


def _type_name(message_type):
    if isinstance(message_type, type) and issubclass(message_type, _message.Message):
        return message_type.DESCRIPTOR.full_name
    raise TypeError(f"expected a protobuf message class such as hci.v1.VirtualMachineSpec, got "
                    f"{message_type!r}")


def parse_yaml(text, message_type):
    """Parses one YAML (or JSON) document into a new ``message_type`` message, with libhci's
    rules: keys in snake_case or camelCase, enums by full or short name (``virtio``,
    ``RerunOnFailure``), ``_bytes``/``_mib`` fields also as quantities (``10Gi``).

    Raises:
        hci.InvalidArgument: naming the field path and position, e.g.
            ``spec.disks[0].bus: unknown value "virtoi" ... at line 9, column 12``.
    """
    data = _hci.parse_yaml(text, _type_name(message_type))
    return message_type.FromString(data)


def load_yaml_file(path, message_type):
    """:func:`parse_yaml` on a file's content. Raises NotFound when it does not exist."""
    data = _hci.load_yaml_file(os.fspath(path), _type_name(message_type))
    return message_type.FromString(data)


def to_yaml(message):
    """Renders a message as block YAML that :func:`parse_yaml` reads back to an equal message
    (camelCase keys, short enum names, defaults omitted).

    Raises:
        hci.InvalidArgument: naming the field that could not be read back (e.g. a string that
            is not UTF-8).
    """
    if not isinstance(message, _message.Message):
        raise TypeError(f"expected a protobuf message, got {type(message).__name__}")
    return _hci.to_yaml(message.DESCRIPTOR.full_name, message.SerializeToString())


class ManifestObject(typing.NamedTuple):
    """One object of a manifest (:func:`parse_manifests`)."""

    #: The document's ``kind``, e.g. "VirtualMachine".
    kind: str
    #: The ``hci.v1.<kind>`` message with metadata and spec.
    object: typing.Any
    #: 1-based line of the document in the stream.
    line: int
    #: 1-based position of the document in the stream.
    document: int


def parse_manifests(text):
    """Parses a manifest (YAML documents separated by ``---``, each ``kind``, ``metadata``,
    ``spec``; ``${NAME}`` replaced by environment variables), as hcictl apply does: a list of
    :class:`ManifestObject` in stream order.

    Raises:
        hci.InvalidArgument: ``document 2 (line 14): spec.vcpus: ...``.
    """
    return [ManifestObject(kind, getattr(v1, kind).FromString(data), line, document)
            for kind, data, line, document in _hci.parse_manifests(text)]


def is_valid_name(name):
    """True when ``name`` is an RFC 1123 label: 1 to 63 characters of a-z, 0-9 and '-',
    starting and ending with a letter or digit (the rule for every object name)."""
    return _hci.is_valid_name(name)


def validate_name(field, name):
    """Raises :class:`hci.InvalidArgument` naming ``field`` and saying what is wrong unless
    ``name`` is valid (:func:`is_valid_name`)."""
    _hci.validate_name(field, name)
