"""libhci for Python: drive VMs, volumes, networks, images and backups through libhci's plugins.

Quick start (the mock plugin needs no QEMU)::

    import hci
    from hci import v1

    config = v1.HostConfig(state_dir="/tmp/hci-demo",
                           backends=v1.Backends(compute=v1.BackendBinding(plugin="mock"),
                                                storage=v1.BackendBinding(plugin="mock")))
    with hci.Host(config) as host:
        host.storage.create_volume(metadata=v1.ObjectMeta(name="root"),
                                   spec=v1.VolumeSpec(size_bytes=1 << 30))
        vm = host.compute.create_vm(
            metadata=v1.ObjectMeta(name="demo"),
            spec=v1.VirtualMachineSpec(vcpus=1, memory_mib=256,
                                       disks=[v1.Disk(name="root", volume="root")]))
        vm = host.compute.start_vm(name="demo")
        print(v1.VmPhase.Name(vm.status.phase))      # VM_PHASE_RUNNING

Messages are the standard protobuf classes of :mod:`hci.v1`. Errors raise a subclass of
:class:`hci.Error` per status code (:class:`hci.NotFound`, ...). Every call into libhci releases
the GIL. Plugins are written in C++ against the SDK, not in Python (docs/python.md says why).
"""

import atexit as _atexit

from hci import _errors
from hci import _hci
from hci import v1
from hci._backends import (BackupBackend, ComputeBackend, Console, FaultInjector, ImageBackend,
                           NetworkBackend, StorageBackend)
from hci._errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, Error,
                         FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                         PermissionDenied, ResourceExhausted, StatusCode, Unauthenticated,
                         Unavailable, Unimplemented, Unknown)
from hci._events import EventStream, Subscription
from hci._host import Host, LogLevel, LogRecord, log_to_python
from hci._operation import Operation
from hci._yaml import (ManifestObject, is_valid_name, load_yaml_file, parse_manifests,
                       parse_yaml, to_yaml, validate_name)

#: libhci's version, e.g. "0.1.0".
__version__ = _hci.VERSION
#: The plugin ABI this libhci loads (hci::kPluginAbiVersion).
PLUGIN_ABI_VERSION = _hci.PLUGIN_ABI_VERSION
#: Longest valid object name (an RFC 1123 label).
MAX_NAME_LENGTH = _hci.MAX_NAME_LENGTH

__all__ = [
    # Host and backends
    "Host", "ComputeBackend", "StorageBackend", "NetworkBackend", "ImageBackend",
    "BackupBackend", "Console", "FaultInjector",
    # Operations and events
    "Operation", "Subscription", "EventStream",
    # Logging
    "LogLevel", "LogRecord", "log_to_python",
    # Errors
    "StatusCode", "Error", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded",
    "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated",
    # YAML and names
    "ManifestObject", "parse_yaml", "load_yaml_file", "to_yaml", "parse_manifests",
    "is_valid_name", "validate_name",
    # Constants and messages
    "MAX_NAME_LENGTH", "PLUGIN_ABI_VERSION", "v1",
]

# Public classes present themselves as hci.X (help(), repr, pickling of errors).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("hci."):
        _obj.__module__ = "hci"
del _name, _obj

_hci._set_error_factory(_errors.error_from_status)


@_atexit.register
def _shutdown():
    # Before the interpreter finalizes: close the Hosts still open (their threads may be about
    # to call Python), then stop libhci's threads from calling into Python at all.
    from hci._host import close_all_hosts
    close_all_hosts()
    _hci._shutdown()
