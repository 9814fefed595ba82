"""The C library, for the few calls Python does not wrap (inotify, adjtimex).

>>> libc("getpid").getpid() == __import__("os").getpid()
True
>>> libc("no_such_function_anywhere") is None
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def libc(symbol: str) -> ctypes.CDLL | None:
    """A handle on the C library that has ``symbol``, or None where none has it.

    The process's own symbols come first (they include libc's), ``libc.so.6`` next.
    ``ctypes.util.find_library`` is the last resort: it runs ldconfig in a subprocess,
    milliseconds that a start, or a scan's commit, should not pay.
    """
    for name in (None, "libc.so.6"):
        handle = _with(name, symbol)
        if handle is not None:
            return handle
    return _with(ctypes.util.find_library("c"), symbol)


def _with(name: str | None, symbol: str) -> ctypes.CDLL | None:
    try:
        handle = ctypes.CDLL(name, use_errno=True)
        getattr(handle, symbol)
    except (OSError, AttributeError):
        return None
    return handle
