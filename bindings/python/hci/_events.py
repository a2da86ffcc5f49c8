"""hci.Subscription and hci.EventStream: the two ways to receive events."""

import queue
import time

from hci import v1
from hci._errors import DeadlineExceeded

_END = object()  # queued when the stream's Host closes


class Subscription:
    """Keeps an event callback registered (``Host.subscribe``). Closing it, or leaving its
    ``with`` block, unsubscribes: once ``close()`` returns, the callback is not running and
    never runs again. Dropping the last reference closes it too. A Subscription may outlive its
    Host."""

    __slots__ = ("_impl",)

    def __init__(self, impl):
        self._impl = impl

    @property
    def active(self):
        """True until closed."""
        return self._impl.active

    def close(self):
        """Unsubscribes. Idempotent; may be called from the callback itself."""
        self._impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<hci.Subscription {'active' if self.active else 'closed'}>"


class EventStream:
    """Events as an iterator (``Host.events``): a queue fed by a subscription made when the
    stream was created, so no event published after that is missed.

    Iteration stops when no event arrives within the stream's ``timeout`` seconds, or when the
    Host closes. Use it in a ``with`` block (or call ``close()``) to unsubscribe::

        with host.events(timeout=5) as events:
            host.compute.start_vm(name="demo")
            for event in events:
                print(event.reason, event.object.name, event.message)
    """

    def __init__(self, host, timeout):
        self._queue = queue.SimpleQueue()
        self._timeout = timeout
        self._ended = False
        self._subscription = host.subscribe(self._queue.put)

    def get(self, timeout=None):
        """The next ``hci.v1.Event``, waiting at most ``timeout`` seconds (None: for ever);
        None when none came in time or the Host closed."""
        if self._ended:
            return None
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is _END:
            self._ended = True
            return None
        return event

    def wait_for(self, predicate, timeout):
        """The next event for which ``predicate(event)`` is true; events before it are dropped.

        Raises:
            hci.DeadlineExceeded: none came within ``timeout`` seconds (or the Host closed).
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            event = self.get(max(remaining, 0)) if remaining > 0 else None
            if event is None:
                raise DeadlineExceeded(f"no matching event within {timeout} s")
            if predicate(event):
                return event

    def close(self):
        """Unsubscribes; events already queued can still be read."""
        self._subscription.close()

    def _end(self):
        self._queue.put(_END)

    def __iter__(self):
        return self

    def __next__(self):
        event = self.get(self._timeout)
        if event is None:
            raise StopIteration
        return event

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<hci.EventStream timeout={self._timeout} {self._subscription!r}>"


def event_from_wire(data):
    """Converts the extension's event bytes for a callback."""
    return (v1.Event.FromString(data),)
