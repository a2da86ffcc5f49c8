"""The five backend interfaces (compute, storage, network, image, backup), the live console and
fault injection.

Every method takes its request message (``hci.v1.<Name>Request``) or, instead, that message's
fields as keyword arguments, and returns the response message, an :class:`hci.Operation`, or
None. ``compute.get_vm(name="demo")`` and ``compute.get_vm(hci.v1.GetVmRequest(name="demo"))``
are the same call. Calls release the GIL while libhci works, and raise the :class:`hci.Error`
subclass of a non-OK status.
"""

import time

from hci import v1
from hci._errors import DeadlineExceeded
from hci._operation import Operation
from hci._util import make_request


class FaultInjector:
    """Makes chosen backend calls fail or slow down, for testing code built on hci. Only some
    plugins have one (the mock plugin: see docs/mock-plugin.md); reach it through
    ``backend.fault_injector``. The mock shares one injector among its five backends of a Host.
    """

    __slots__ = ("_backend",)

    def __init__(self, backend):
        self._backend = backend

    def inject(self, fault=None, /, **fields):
        """Adds a fault (``hci.v1.Fault`` or its fields): the next ``count`` calls (0: all until
        ``clear()``) of the backend method named ``operation`` (``"GetVm"``, or ``"*"``) sleep
        ``latency_ms`` and then fail with ``code`` (a :class:`hci.StatusCode`; 0 adds latency
        only) and ``message``.

        Raises:
            hci.InvalidArgument: unknown operation name or code (``fault.operation: ...``).
        """
        fault = make_request(v1.Fault, fault, fields)
        self._backend._impl.inject_fault(fault.SerializeToString())

    def clear(self):
        """Removes every fault."""
        self._backend._impl.clear_faults()


class _Backend:
    """What the five backend kinds have in common."""

    _CAPABILITIES = None  # the kind's capabilities message class

    __slots__ = ("_host", "_impl")

    def __init__(self, host, impl):
        self._host = host  # keeps the Host (and its close-at-exit) alive while in use
        self._impl = impl

    def _call(self, method, request_cls, response_cls, request, fields):
        data = getattr(self._impl, method)(
            make_request(request_cls, request, fields).SerializeToString())
        if response_cls is None:
            return None
        if response_cls is Operation:
            return Operation(data)
        return response_cls.FromString(data)

    def capabilities(self):
        """What this backend implements (``hci.v1.<Kind>Capabilities``). A method whose
        capability is false raises :class:`hci.Unimplemented`."""
        return self._CAPABILITIES.FromString(self._impl.capabilities())

    def metrics(self):
        """Backend-wide metrics, Prometheus text exposition format 0.0.4.

        Raises:
            hci.Unimplemented: the plugin exports none.
        """
        return self._impl.metrics()

    @property
    def fault_injector(self):
        """The plugin's :class:`FaultInjector`, or None when it has none."""
        return FaultInjector(self) if self._impl.has_fault_injector() else None

    def __repr__(self):
        return f"<hci.{type(self).__name__} of {self._host!r}>"


class Console:
    """A live, bidirectional serial console (``ComputeBackend.attach_console``). One reader at a
    time; closed by ``close()``, its ``with`` block, or when its Host closes."""

    __slots__ = ("_impl", "_buffer")

    def __init__(self, impl):
        self._impl = impl
        self._buffer = b""

    def read(self, timeout=1.0):
        """Bytes the guest printed within ``timeout`` seconds, possibly ``b""`` (GIL released
        while waiting).

        Raises:
            hci.Unavailable: the VM stopped or the console closed.
            hci.FailedPrecondition: this Console (or its Host) was closed.
        """
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        return self._impl.read(timeout)

    def read_until(self, marker, timeout):
        """Reads until ``marker`` (bytes, or str encoded as UTF-8) appears and returns everything
        up to and including it; what follows stays for the next read.

        Raises:
            hci.DeadlineExceeded: the marker did not appear within ``timeout`` seconds.
            hci.Unavailable: the console closed first.
        """
        if isinstance(marker, str):
            marker = marker.encode()
        deadline = time.monotonic() + timeout
        data = self._buffer
        self._buffer = b""
        while True:
            at = data.find(marker)
            if at >= 0:
                end = at + len(marker)
                self._buffer = data[end:]
                return data[:end]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._buffer = data
                raise DeadlineExceeded(f"console: {marker!r} did not appear within {timeout} s")
            data += self._impl.read(min(remaining, 1.0))

    def write(self, data):
        """Sends ``data`` (bytes, or str encoded as UTF-8) to the guest's serial port."""
        if isinstance(data, str):
            data = data.encode()
        self._impl.write(data)

    def close(self):
        """Detaches from the console. Idempotent."""
        self._impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ComputeBackend(_Backend):
    """Virtual machines (hci::ComputeBackend). Names are RFC 1123 labels, checked by the core.

    Lifecycle: Stopped -> Starting -> Running <-> Paused; Running -> Stopping -> Stopped; any ->
    Failed when the VM's process dies. A call that does not fit the current phase raises
    :class:`hci.FailedPrecondition` and changes nothing. Optional methods raise
    :class:`hci.Unimplemented` when ``capabilities()`` says so.
    """

    _CAPABILITIES = v1.ComputeCapabilities
    __slots__ = ()

    def create_vm(self, request=None, /, **fields):
        """Defines a VM (``CreateVmRequest``: metadata, spec) without starting it unless its
        run strategy is Always; returns the ``VirtualMachine``. Idempotent by name.

        Raises: AlreadyExists (same name, other spec), InvalidArgument naming the field
        (``spec.memory_mib: ...``), NotFound (a disk's volume or a NIC's network).
        """
        return self._call("create_vm", v1.CreateVmRequest, v1.VirtualMachine, request, fields)

    def get_vm(self, request=None, /, **fields):
        """The ``VirtualMachine`` named ``name``. Raises NotFound."""
        return self._call("get_vm", v1.GetVmRequest, v1.VirtualMachine, request, fields)

    def list_vms(self, request=None, /, **fields):
        """``ListVmsResponse`` (``.vms``), filtered by ``label_selector``."""
        return self._call("list_vms", v1.ListVmsRequest, v1.ListVmsResponse, request, fields)

    def delete_vm(self, request=None, /, **fields):
        """Removes the VM definition; fine when it does not exist. Raises FailedPrecondition
        while it runs, unless ``force`` (then it is stopped first)."""
        return self._call("delete_vm", v1.DeleteVmRequest, None, request, fields)

    def start_vm(self, request=None, /, **fields):
        """Starts a stopped or failed VM and returns it once its process runs (Running); no
        change if already running. Raises FailedPrecondition when paused."""
        return self._call("start_vm", v1.StartVmRequest, v1.VirtualMachine, request, fields)

    def stop_vm(self, request=None, /, **fields):
        """Stops a VM: the ACPI power button, then a forced power-off after the grace period
        (``status.reason``: "GuestShutdown" or "ForcedStop"); at once with ``force``. Returns
        the stopped ``VirtualMachine``; no change if already stopped."""
        return self._call("stop_vm", v1.StopVmRequest, v1.VirtualMachine, request, fields)

    def restart_vm(self, request=None, /, **fields):
        """Restarts a running VM (capability ``restart``); ``force``: reset at once."""
        return self._call("restart_vm", v1.RestartVmRequest, v1.VirtualMachine, request, fields)

    def pause_vm(self, request=None, /, **fields):
        """Stops the vCPUs of a Running VM (capability ``pause``)."""
        return self._call("pause_vm", v1.PauseVmRequest, v1.VirtualMachine, request, fields)

    def resume_vm(self, request=None, /, **fields):
        """Resumes a Paused VM (capability ``pause``)."""
        return self._call("resume_vm", v1.ResumeVmRequest, v1.VirtualMachine, request, fields)

    def migrate_vm(self, request=None, /, **fields):
        """Live-migrates a VM to ``target_node`` (capability ``live_migration``): an
        :class:`hci.Operation` with progress in bytes of guest memory."""
        return self._call("migrate_vm", v1.MigrateVmRequest, Operation, request, fields)

    def read_console(self, request=None, /, **fields):
        """Reads the serial console log of VM ``name`` from ``offset``, at most ``max_bytes``
        (capability ``console_log``): ``ConsoleOutput`` with ``data`` (bytes) and
        ``next_offset``. Raises OutOfRange for an offset past the end."""
        return self._call("read_console", v1.ReadConsoleRequest, v1.ConsoleOutput, request,
                          fields)

    def attach_console(self, request=None, /, **fields):
        """Attaches to the live serial console of VM ``name`` (capability ``console_attach``):
        a :class:`hci.Console`. Raises FailedPrecondition unless the VM runs."""
        request = make_request(v1.AttachConsoleRequest, request, fields)
        return Console(self._impl.attach_console(request.SerializeToString()))

    def vm_metrics(self, request=None, /, **fields):
        """Per-VM metrics with KubeVirt's names (capability ``metrics``):
        ``VmMetricsResponse.text``."""
        return self._call("vm_metrics", v1.VmMetricsRequest, v1.VmMetricsResponse, request,
                          fields)

    def resize_disk(self, request=None, /, **fields):
        """Tells running VM ``vm`` that ``volume``, behind one of its disks, grew to
        ``size_bytes`` (capability ``resize_disk``; libvirt's virDomainBlockResize). Storage
        backends with ``online_expand`` call it themselves from ``expand_volume``. Raises
        NotFound when the VM has no disk on that volume."""
        return self._call("resize_disk", v1.ResizeDiskRequest, None, request, fields)


class StorageBackend(_Backend):
    """Block volumes and snapshots (hci::StorageBackend). Sizes are bytes, multiples of 4096."""

    _CAPABILITIES = v1.StorageCapabilities
    __slots__ = ()

    def create_volume(self, request=None, /, **fields):
        """Creates a ``Volume``, blank or from ``spec.source`` (image, snapshot or volume).
        Idempotent by name. Raises AlreadyExists, NotFound (the source), InvalidArgument
        (``spec.size_bytes``), ResourceExhausted."""
        return self._call("create_volume", v1.CreateVolumeRequest, v1.Volume, request, fields)

    def get_volume(self, request=None, /, **fields):
        """The ``Volume`` named ``name``. Raises NotFound."""
        return self._call("get_volume", v1.GetVolumeRequest, v1.Volume, request, fields)

    def list_volumes(self, request=None, /, **fields):
        """``ListVolumesResponse`` (``.volumes``), filtered by ``label_selector``."""
        return self._call("list_volumes", v1.ListVolumesRequest, v1.ListVolumesResponse,
                          request, fields)

    def delete_volume(self, request=None, /, **fields):
        """Deletes a volume and its snapshots; fine when it does not exist. Raises
        FailedPrecondition while attached."""
        return self._call("delete_volume", v1.DeleteVolumeRequest, None, request, fields)

    def attach_volume(self, request=None, /, **fields):
        """Marks volume ``name`` in use by ``attacher``; returns how QEMU opens it
        (``AttachInfo``). Raises FailedPrecondition when another attacher holds it."""
        return self._call("attach_volume", v1.AttachVolumeRequest, v1.AttachInfo, request,
                          fields)

    def detach_volume(self, request=None, /, **fields):
        """Releases volume ``name`` from ``attacher``; fine when not attached to it."""
        return self._call("detach_volume", v1.DetachVolumeRequest, None, request, fields)

    def expand_volume(self, request=None, /, **fields):
        """Grows volume ``name`` to ``size_bytes`` (capability ``expand``). Raises
        InvalidArgument for a smaller size."""
        return self._call("expand_volume", v1.ExpandVolumeRequest, v1.Volume, request, fields)

    def create_snapshot(self, request=None, /, **fields):
        """Snapshots ``volume`` as ``metadata.name`` (capability ``snapshots``); idempotent by
        name. Raises FailedPrecondition when the backend cannot snapshot it in its state (the
        local plugin while QEMU holds the file)."""
        return self._call("create_snapshot", v1.CreateSnapshotRequest, v1.Snapshot, request,
                          fields)

    def list_snapshots(self, request=None, /, **fields):
        """``ListSnapshotsResponse`` (``.snapshots``) of ``volume``, in creation order."""
        return self._call("list_snapshots", v1.ListSnapshotsRequest, v1.ListSnapshotsResponse,
                          request, fields)

    def delete_snapshot(self, request=None, /, **fields):
        """Deletes snapshot ``name`` of ``volume``; fine when it does not exist."""
        return self._call("delete_snapshot", v1.DeleteSnapshotRequest, None, request, fields)

    def revert_volume(self, request=None, /, **fields):
        """Reverts ``volume`` to ``snapshot`` (capability ``revert``). Raises
        FailedPrecondition while attached."""
        return self._call("revert_volume", v1.RevertVolumeRequest, v1.Volume, request, fields)

    def get_changed_blocks(self, request=None, /, **fields):
        """Extents of ``volume`` that differ between ``from_snapshot`` and ``to_snapshot``
        (capability ``changed_blocks``): ``ChangedBlocks``."""
        return self._call("get_changed_blocks", v1.GetChangedBlocksRequest, v1.ChangedBlocks,
                          request, fields)

    def scrub_volume(self, request=None, /, **fields):
        """Compares the replicas of volume ``name`` extent by extent and, unless
        ``report_only``, repairs a replica that differs from the others (capability
        ``scrub``): an :class:`hci.Operation`; the findings are in the volume's
        ``status.last_scrub``."""
        return self._call("scrub_volume", v1.ScrubVolumeRequest, Operation, request, fields)


class NetworkBackend(_Backend):
    """Layer-2 networks (802.1Q VLAN 1-4094, trunks, untagged) and ports
    (hci::NetworkBackend)."""

    _CAPABILITIES = v1.NetworkCapabilities
    __slots__ = ()

    def create_network(self, request=None, /, **fields):
        """Creates a ``Network``; idempotent by name. Raises InvalidArgument for a VLAN ID
        outside 1-4094 (``spec.vlan_id``) or an MTU outside 68-65535 (``spec.mtu``)."""
        return self._call("create_network", v1.CreateNetworkRequest, v1.Network, request,
                          fields)

    def get_network(self, request=None, /, **fields):
        """The ``Network`` named ``name``. Raises NotFound."""
        return self._call("get_network", v1.GetNetworkRequest, v1.Network, request, fields)

    def list_networks(self, request=None, /, **fields):
        """``ListNetworksResponse`` (``.networks``), filtered by ``label_selector``."""
        return self._call("list_networks", v1.ListNetworksRequest, v1.ListNetworksResponse,
                          request, fields)

    def delete_network(self, request=None, /, **fields):
        """Deletes a network; fine when it does not exist. Raises FailedPrecondition while
        ports use it."""
        return self._call("delete_network", v1.DeleteNetworkRequest, None, request, fields)

    def create_port(self, request=None, /, **fields):
        """Creates a ``Port`` on ``spec.network`` (capability ``ports``); idempotent by name.
        Raises NotFound for an unknown network."""
        return self._call("create_port", v1.CreatePortRequest, v1.Port, request, fields)

    def get_port(self, request=None, /, **fields):
        """The ``Port`` named ``name``. Raises NotFound."""
        return self._call("get_port", v1.GetPortRequest, v1.Port, request, fields)

    def list_ports(self, request=None, /, **fields):
        """``ListPortsResponse`` (``.ports``), of ``network`` when given."""
        return self._call("list_ports", v1.ListPortsRequest, v1.ListPortsResponse, request,
                          fields)

    def delete_port(self, request=None, /, **fields):
        """Deletes a port; fine when it does not exist."""
        return self._call("delete_port", v1.DeletePortRequest, None, request, fields)


class ImageBackend(_Backend):
    """The host's image store (hci::ImageBackend)."""

    _CAPABILITIES = v1.ImageCapabilities
    __slots__ = ()

    def import_image(self, request=None, /, **fields):
        """Starts importing an image from ``spec.url`` or ``spec.file``: an
        :class:`hci.Operation` with progress in bytes. Idempotent by name (the same spec returns
        the running or finished import). A sha256 mismatch fails the operation with
        :class:`hci.DataLoss`. Raises AlreadyExists for another spec."""
        return self._call("import_image", v1.ImportImageRequest, Operation, request, fields)

    def get_image(self, request=None, /, **fields):
        """The ``Image`` named ``name``. Raises NotFound."""
        return self._call("get_image", v1.GetImageRequest, v1.Image, request, fields)

    def list_images(self, request=None, /, **fields):
        """``ListImagesResponse`` (``.images``), filtered by ``label_selector``."""
        return self._call("list_images", v1.ListImagesRequest, v1.ListImagesResponse, request,
                          fields)

    def delete_image(self, request=None, /, **fields):
        """Deletes an image; fine when it does not exist. Raises FailedPrecondition while a
        volume depends on it."""
        return self._call("delete_image", v1.DeleteImageRequest, None, request, fields)


class BackupBackend(_Backend):
    """Backups of volumes to backup targets (hci::BackupBackend)."""

    _CAPABILITIES = v1.BackupCapabilities
    __slots__ = ()

    def create_backup_target(self, request=None, /, **fields):
        """Registers a ``BackupTarget`` (``spec.url``); idempotent by name. Raises Unavailable
        when it cannot be reached."""
        return self._call("create_backup_target", v1.CreateBackupTargetRequest,
                          v1.BackupTarget, request, fields)

    def get_backup_target(self, request=None, /, **fields):
        """The ``BackupTarget`` named ``name``. Raises NotFound."""
        return self._call("get_backup_target", v1.GetBackupTargetRequest, v1.BackupTarget,
                          request, fields)

    def list_backup_targets(self, request=None, /, **fields):
        """``ListBackupTargetsResponse`` (``.targets``)."""
        return self._call("list_backup_targets", v1.ListBackupTargetsRequest,
                          v1.ListBackupTargetsResponse, request, fields)

    def delete_backup_target(self, request=None, /, **fields):
        """Forgets a target (its backups stay on it); fine when it does not exist."""
        return self._call("delete_backup_target", v1.DeleteBackupTargetRequest, None, request,
                          fields)

    def create_backup(self, request=None, /, **fields):
        """Starts backing up ``spec.volume`` (or its ``spec.snapshot``) to ``spec.target``: an
        :class:`hci.Operation` with progress in bytes read; incremental when possible.
        Idempotent by name."""
        return self._call("create_backup", v1.CreateBackupRequest, Operation, request, fields)

    def get_backup(self, request=None, /, **fields):
        """The ``Backup`` named ``name`` on ``target``. Raises NotFound."""
        return self._call("get_backup", v1.GetBackupRequest, v1.Backup, request, fields)

    def list_backups(self, request=None, /, **fields):
        """``ListBackupsResponse`` (``.backups``) on ``target``, of ``volume`` when given."""
        return self._call("list_backups", v1.ListBackupsRequest, v1.ListBackupsResponse,
                          request, fields)

    def delete_backup(self, request=None, /, **fields):
        """Deletes backup ``name`` on ``target`` (capability ``delete``); fine when it does not
        exist."""
        return self._call("delete_backup", v1.DeleteBackupRequest, None, request, fields)

    def restore_backup(self, request=None, /, **fields):
        """Restores ``backup`` from ``target`` into a new volume described by ``volume``
        (capability ``restore``): an :class:`hci.Operation`. Raises AlreadyExists when that
        volume exists."""
        return self._call("restore_backup", v1.RestoreBackupRequest, Operation, request, fields)
