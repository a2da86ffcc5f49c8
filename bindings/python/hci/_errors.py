"""Status codes and the exception hierarchy that libhci's non-OK statuses map onto."""

import enum

__all__ = [
    "StatusCode", "Error", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded",
    "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated", "error_from_status",
]


class StatusCode(enum.IntEnum):
    """hci::StatusCode: gRPC's numbering (google.rpc.Code), so codes map one to one onto gRPC
    and CSI. ``OperationStatus.code`` and ``Fault.code`` hold these numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Error(Exception):
    """A non-OK hci::Status. Every libhci error raises a subclass named after its code
    (``hci.NotFound``, ``hci.InvalidArgument``, ...); catch ``hci.Error`` for all of them.

    Attributes:
        code: the :class:`StatusCode`.
        message: the status message, a sentence that names the field or object concerned,
            e.g. ``spec.vcpus: must be between 1 and 288, got 0``.
    """

    #: The code of this class; Error itself is used only for codes outside the enum.
    CODE = StatusCode.UNKNOWN

    def __init__(self, message="", code=None):
        super().__init__(message)
        self.code = self.CODE if code is None else code
        self.message = message

    def __str__(self):
        # The traceback already shows the class (hci.NotFound): the message says the rest.
        if type(self) is Error:
            return f"Code({int(self.code)}): {self.message}"
        return self.message

    def __repr__(self):
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self):
        return (type(self), (self.message, self.code))


class Cancelled(Error):
    """The caller cancelled the operation."""

    CODE = StatusCode.CANCELLED


class Unknown(Error):
    """An error of unknown kind."""

    CODE = StatusCode.UNKNOWN


class InvalidArgument(Error):
    """A request field is wrong; the message names the field (``spec.memory_mib: ...``)."""

    CODE = StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(Error):
    """The deadline passed first; ``Operation.wait(timeout)`` raises it while the operation
    goes on."""

    CODE = StatusCode.DEADLINE_EXCEEDED


class NotFound(Error):
    """The named object does not exist."""

    CODE = StatusCode.NOT_FOUND


class AlreadyExists(Error):
    """An object of that name exists with a different spec (creates are idempotent by name)."""

    CODE = StatusCode.ALREADY_EXISTS


class PermissionDenied(Error):
    """The caller may not do this (file modes, ownership)."""

    CODE = StatusCode.PERMISSION_DENIED


class ResourceExhausted(Error):
    """Not enough capacity (nodes, space, addresses)."""

    CODE = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(Error):
    """Not allowed in the object's current state (or the Host is closed); do not retry as is."""

    CODE = StatusCode.FAILED_PRECONDITION


class Aborted(Error):
    """Another operation is already pending on that object; retry later."""

    CODE = StatusCode.ABORTED


class OutOfRange(Error):
    """A position past the end, e.g. a console offset beyond the log."""

    CODE = StatusCode.OUT_OF_RANGE


class Unimplemented(Error):
    """The backend does not implement this (see its capabilities); do not retry."""

    CODE = StatusCode.UNIMPLEMENTED


class Internal(Error):
    """A bug or broken invariant."""

    CODE = StatusCode.INTERNAL


class Unavailable(Error):
    """Transient; retry with back-off."""

    CODE = StatusCode.UNAVAILABLE


class DataLoss(Error):
    """Data was lost or corrupted, e.g. an image's sha256 did not match."""

    CODE = StatusCode.DATA_LOSS


class Unauthenticated(Error):
    """The caller's credentials are missing or wrong."""

    CODE = StatusCode.UNAUTHENTICATED


_BY_CODE = {cls.CODE: cls for cls in (
    Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
    PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange, Unimplemented,
    Internal, Unavailable, DataLoss, Unauthenticated)}


def error_from_status(code, message):
    """The exception for a non-OK status: an instance of the subclass for ``code`` (``Error``
    for a number outside :class:`StatusCode`), carrying ``code`` and ``message``."""
    try:
        code = StatusCode(code)
    except ValueError:
        return Error(message, code)
    cls = _BY_CODE.get(code)
    if cls is None:  # OK is not an error; report it as a bug rather than hide it.
        return Internal(f"an OK status was raised as an error: {message}")
    return cls(message)
