"""hci.Host: the embedder's entry point, and log records."""

import enum
import logging
import os
import threading
import typing
import weakref

from hci import _hci, v1
from hci._backends import (BackupBackend, ComputeBackend, ImageBackend, NetworkBackend,
                           StorageBackend)
from hci._events import EventStream, Subscription, event_from_wire
from hci._operation import Operation
from hci._util import guard_callback

# Hosts still open, closed by hci's atexit hook before the interpreter shuts down.
_open_hosts = weakref.WeakSet()
_open_hosts_lock = threading.Lock()


class LogLevel(enum.IntEnum):
    """hci::LogLevel, the level of a :class:`LogRecord`."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5
    OFF = 6


class LogRecord(typing.NamedTuple):
    """One log line of libhci or a plugin, as given to ``Host(on_log=...)``."""

    #: The :class:`LogLevel`.
    level: LogLevel
    #: "core", "loader" or the plugin's name.
    component: str
    #: Kind and name of the object concerned ("vm", "demo"); both "" when none.
    object_kind: str
    object_name: str
    message: str


_PYTHON_LEVELS = {
    LogLevel.TRACE: 5, LogLevel.DEBUG: logging.DEBUG, LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING, LogLevel.ERROR: logging.ERROR,
    LogLevel.CRITICAL: logging.CRITICAL,
}


def log_to_python(logger="hci"):
    """An ``on_log`` callback that forwards libhci's log lines to the standard :mod:`logging`
    module, to the logger ``<logger>.<component>`` (e.g. ``hci.core``, ``hci.kvm``), as
    ``"kind/name: message"``. The host config's ``log_level`` still filters first."""
    base = logging.getLogger(logger)

    def forward(record):
        target = base.getChild(record.component) if record.component else base
        where = f"{record.object_kind}/{record.object_name}: " if record.object_kind else ""
        target.log(_PYTHON_LEVELS.get(record.level, logging.INFO), "%s%s", where,
                   record.message)

    return forward


def _log_record(level, component, object_kind, object_name, message):
    return (LogRecord(LogLevel(level), component, object_kind, object_name, message),)


def _as_config(config):
    if config is None:
        return v1.HostConfig()
    if isinstance(config, v1.HostConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return Host.load_config(config)
    raise TypeError(f"config: expected hci.v1.HostConfig, a YAML file path or None, got "
                    f"{type(config).__name__}")


class Host:
    """An open hci::Host: loads the plugins, creates the configured backends and gives access to
    them. One Host per node and state directory.

    Args:
        config: a ``hci.v1.HostConfig``, the path of a YAML host config (see
            :meth:`load_config`), or None for every default (node name from the host name,
            state directory :meth:`default_state_dir`, plugins from ``$HCI_PLUGIN_PATH`` or the
            installed plugin directory, no backends).
        on_event: ``callback(event: hci.v1.Event)`` for every event, including those published
            while the Host opens (e.g. the kvm plugin's reattach events), which
            :meth:`subscribe` cannot see.
        on_log: ``callback(record: hci.LogRecord)`` for every log line at or above the config's
            ``log_level``, instead of libhci's stderr logger; see :func:`hci.log_to_python`.
            It runs on any thread and must not call hci.

    Callbacks run on libhci's threads with the GIL held; what they raise is printed to stderr.

    Raises:
        hci.InvalidArgument: a config field is wrong (the message names it).
        hci.FailedPrecondition: another Host holds the state directory.
        hci.NotFound: a configured plugin was not found or was refused (with the reason).

    Use it as a context manager, or call :meth:`close`::

        with hci.Host("host.yaml") as host:
            vm = host.compute.get_vm(name="demo")
            print(hci.v1.VmPhase.Name(vm.status.phase))

    Backends (:attr:`compute`, :attr:`storage`, :attr:`network`, :attr:`image`,
    :attr:`backup`) are safe to use from any thread; every call releases the GIL.
    """

    def __init__(self, config=None, *, on_event=None, on_log=None):
        config = _as_config(config)
        self._impl = _hci.Host.open(
            config.SerializeToString(),
            guard_callback(on_log, "log", _log_record) if on_log is not None else None,
            guard_callback(on_event, "event", event_from_wire) if on_event is not None else None)
        self._node = self._impl_config().node_name
        self._streams = weakref.WeakSet()
        with _open_hosts_lock:
            _open_hosts.add(self)

    @classmethod
    def open(cls, config=None, *, on_event=None, on_log=None):
        """Same as ``Host(config, on_event=..., on_log=...)``."""
        return cls(config, on_event=on_event, on_log=on_log)

    @staticmethod
    def load_config(path):
        """Reads a YAML host config into a ``hci.v1.HostConfig`` (keys in snake_case or
        camelCase, enums by short name, sizes like ``10Gi``: see docs/hcictl.md).

        Raises:
            hci.NotFound: the file does not exist.
            hci.InvalidArgument: naming the field path and line.
        """
        return v1.HostConfig.FromString(_hci.load_config(os.fspath(path)))

    @staticmethod
    def default_state_dir():
        """``$HCI_STATE_DIR`` if set; else /var/lib/hci for root; else
        ``$XDG_STATE_HOME/hci`` or ``~/.local/state/hci``."""
        return _hci.default_state_dir()

    def _impl_config(self):
        return v1.HostConfig.FromString(self._impl.config())

    @property
    def config(self):
        """The effective ``hci.v1.HostConfig`` (defaults filled in: node_name, state_dir,
        plugin_dirs)."""
        return self._impl_config()

    @property
    def compute(self):
        """The :class:`ComputeBackend`. Raises FailedPrecondition when ``backends.compute`` is
        not configured."""
        return ComputeBackend(self, self._impl.compute())

    @property
    def storage(self):
        """The :class:`StorageBackend`. Raises FailedPrecondition when not configured."""
        return StorageBackend(self, self._impl.storage())

    @property
    def network(self):
        """The :class:`NetworkBackend`. Raises FailedPrecondition when not configured."""
        return NetworkBackend(self, self._impl.network())

    @property
    def image(self):
        """The :class:`ImageBackend`. Raises FailedPrecondition when not configured."""
        return ImageBackend(self, self._impl.image())

    @property
    def backup(self):
        """The :class:`BackupBackend`. Raises FailedPrecondition when not configured."""
        return BackupBackend(self, self._impl.backup())

    def plugins(self):
        """Every plugin file the loader looked at, loaded or refused with the reason, in scan
        order: a list of ``hci.v1.PluginInfo``."""
        return [v1.PluginInfo.FromString(data) for data in self._impl.plugins()]

    def subscribe(self, callback):
        """Calls ``callback(event: hci.v1.Event)`` for every event from now on, in publication
        order, from libhci's event thread (GIL held; keep it quick). Returns the
        :class:`Subscription` that keeps it registered."""
        return Subscription(
            self._impl.subscribe(guard_callback(callback, "event", event_from_wire)))

    def flush_events(self):
        """Blocks (GIL released) until every event published before the call has been delivered
        to every subscriber, e.g. to see the events of the calls just made. Returns at once when
        called from an event callback."""
        self._impl.flush_events()

    def events(self, timeout=None):
        """An :class:`EventStream`: iterate over the events published from now on; iteration
        ends when none arrives within ``timeout`` seconds (None: wait for ever) or the Host
        closes."""
        stream = EventStream(self, timeout)
        self._streams.add(stream)
        return stream

    def list_operations(self):
        """Operations running or finished in the last 10 minutes, oldest first: a list of
        ``hci.v1.OperationStatus``."""
        return [v1.OperationStatus.FromString(data) for data in self._impl.list_operations()]

    def get_operation(self, id):  # noqa: A002 -- mirrors Operation.id
        """The :class:`Operation` with this id. Raises NotFound when not tracked."""
        return Operation(self._impl.get_operation(id))

    def metrics(self):
        """Prometheus text of the core's counters (``hci_backend_requests_total``, ...) followed
        by each backend's own."""
        return self._impl.metrics()

    def close(self):
        """Destroys the Host: stops the backends (their running operations finish), delivers the
        queued events, releases the state directory. Idempotent. Later calls on this Host, its
        backends or consoles raise FailedPrecondition. Waits for calls in flight on other
        threads.

        Raises:
            hci.FailedPrecondition: called from an hci callback (closing joins the threads that
                run them).
        """
        self._impl.close()
        for stream in list(self._streams):
            stream._end()
        with _open_hosts_lock:
            _open_hosts.discard(self)

    @property
    def closed(self):
        """True once :meth:`close` ran."""
        return self._impl.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<hci.Host node={self._node!r} {'closed' if self.closed else 'open'}>"


def close_all_hosts():
    """Closes every Host still open (hci's atexit hook)."""
    with _open_hosts_lock:
        hosts = list(_open_hosts)
    for host in hosts:
        try:
            host.close()
        except Exception:  # noqa: BLE001 -- at exit, report and go on with the others
            import traceback
            traceback.print_exc()
