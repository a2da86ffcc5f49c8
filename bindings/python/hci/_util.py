"""Helpers shared by the hci modules: request building and callback guards."""

import sys
import traceback


def make_request(cls, request, fields):
    """``request`` if it is a ``cls``; else a ``cls`` built from the keyword ``fields``."""
    if request is None:
        return cls(**fields)
    if fields:
        raise TypeError(f"pass either a hci.v1.{cls.__name__} or its fields as keywords, "
                        f"not both (got {sorted(fields)})")
    if not isinstance(request, cls):
        raise TypeError(f"expected hci.v1.{cls.__name__}, got {type(request).__module__}."
                        f"{type(request).__qualname__}")
    return request


def guard_callback(callback, what, convert=None):
    """A function for libhci to call: converts its arguments with ``convert`` and calls
    ``callback``; prints (never raises) what the callback raises, since libhci's threads cannot
    take Python exceptions."""
    if not callable(callback):
        raise TypeError(f"{what} callback: expected a callable, got {type(callback).__name__}")

    def call(*args):
        try:
            if convert is not None:
                args = convert(*args)
            callback(*args)
        except BaseException:  # noqa: B902 -- printed, like threading's excepthook does
            print(f"Exception in hci {what} callback {callback!r}:", file=sys.stderr)
            traceback.print_exc()

    return call
