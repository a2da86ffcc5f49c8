"""hci.Operation: long operations (image import, migration, backup, restore)."""

from hci import v1
from hci._util import guard_callback


def _status(data):
    return (v1.OperationStatus.FromString(data),)


class Operation:
    """Handle on a long operation started by a backend (``ImageBackend.import_image``,
    ``ComputeBackend.migrate_vm``, ``BackupBackend.create_backup`` and ``restore_backup``), or
    found with ``Host.get_operation``. Copies share one operation; thread-safe. Operations
    outlive the Host that started them (a closed Host finishes them first).

    Example::

        op = host.image.import_image(metadata=hci.v1.ObjectMeta(name="debian"),
                                     spec=hci.v1.ImageSpec(url="https://..."))
        op.on_progress(lambda s: print(s.progress.done, "/", s.progress.total))
        final = op.wait(timeout=600)   # raises hci.DataLoss on a checksum mismatch
    """

    __slots__ = ("_impl",)

    def __init__(self, impl):
        self._impl = impl

    @property
    def id(self):
        """Unique within the process, e.g. ``"op-42"``."""
        return self._impl.id

    def status(self):
        """The current ``hci.v1.OperationStatus``: kind, object, phase, progress (done and
        total, in ``progress.unit``: bytes unless "items"), message, and once finished the
        final ``code`` (a :class:`hci.StatusCode` number) and ``error``."""
        return v1.OperationStatus.FromString(self._impl.status())

    def done(self):
        """True once the operation finished and its final progress callbacks ran."""
        return self._impl.done()

    def wait(self, timeout=None):
        """Blocks until the operation finishes and returns its final ``OperationStatus``.

        Args:
            timeout: seconds (a float), or None to wait as long as it takes.

        The GIL is released while waiting, so other Python threads run, and Ctrl-C interrupts
        the wait (KeyboardInterrupt; the operation goes on).

        Raises:
            hci.DeadlineExceeded: ``timeout`` passed first; the operation goes on.
            hci.Cancelled: the operation was cancelled.
            hci.Error: the subclass of the operation's final code, e.g. ``hci.DataLoss`` for an
                image whose sha256 did not match.
        """
        self._impl.wait(timeout)
        return self.status()

    def cancel(self):
        """Asks the operation to stop and returns at once; its final status becomes Cancelled
        unless it finishes first.

        Raises:
            hci.FailedPrecondition: it has already finished.
            hci.Unimplemented: this operation cannot be cancelled.
        """
        self._impl.cancel()

    def on_progress(self, callback):
        """Calls ``callback(status: hci.v1.OperationStatus)`` after every progress update and
        once at the end (at once if the operation already finished).

        The callback runs on the libhci thread that made the update, with the GIL held; it
        must be quick and must not call ``wait()`` on this operation. What it raises is printed
        to stderr, not propagated.
        """
        self._impl.on_progress(guard_callback(callback, "progress", _status))

    def __repr__(self):
        s = self.status()
        phase = v1.OperationPhase.Name(s.phase).replace("OPERATION_PHASE_", "").lower()
        return (f"<hci.Operation {s.id} {s.kind} {s.object.kind}/{s.object.name} {phase} "
                f"{s.progress.done}/{s.progress.total}>")
