"""Wake up when something appears in (or vanishes from) a directory: a small inotify helper.

Sources use it to notice a scanner being plugged in without polling fast. A
directory that does not exist yet (``/dev/serial/by-id`` before the first USB
serial device) is watched through its nearest existing parent, and the watch
moves down as the directories appear.

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> w = DirWatch([d])
>>> open(os.path.join(d, "ttyACM0"), "w").close()
>>> w.wait(2.0)
True
>>> w.wait(0.0)
False
>>> w.close()

Where inotify is missing (not Linux), :meth:`DirWatch.wait` just sleeps its
timeout and returns False, so callers fall back to their periodic re-check.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import time
from collections.abc import Iterable
from pathlib import Path

from agent.libc import libc

log = logging.getLogger(__name__)

# From <sys/inotify.h>.
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Appearing, vanishing, and permission changes (udev chmods a node after creating it).
_MASK = IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF


_LIBC = libc("inotify_init1")


class DirWatch:
    """An inotify descriptor watching some directories for entries coming and going."""

    def __init__(self, directories: Iterable[str | os.PathLike]) -> None:
        self.directories = [Path(d) for d in directories]
        self.fd: int | None = None
        self._watched: dict[Path, int] = {}
        if _LIBC is None:
            log.warning("inotify unavailable; scanners are looked for by periodic re-check only")
            return
        fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            problem = ctypes.get_errno()
            log.warning("inotify_init1 failed (%s); periodic re-check only", os.strerror(problem))
            return
        self.fd = fd
        self.rearm()

    def fileno(self) -> int:
        """The descriptor to select on (-1 without inotify)."""
        return -1 if self.fd is None else self.fd

    def rearm(self) -> None:
        """Watch each directory, or its nearest existing parent while it is missing."""
        if self.fd is None:
            return
        wanted = {t for t in (_nearest_existing(d) for d in self.directories) if t is not None}
        for target in set(self._watched) - wanted:
            # A nearer directory exists now: the parent's watch only adds noise.
            _LIBC.inotify_rm_watch(self.fd, self._watched.pop(target))
        for target in wanted - set(self._watched):
            wd = _LIBC.inotify_add_watch(self.fd, os.fsencode(target), _MASK)
            if wd < 0:
                problem = ctypes.get_errno()
                if problem not in (errno.ENOENT, errno.ENOTDIR):
                    log.warning("cannot watch %s: %s", target, os.strerror(problem))
                continue
            self._watched[target] = wd

    def drain(self) -> bool:
        """Consume pending notifications; True if there were any."""
        if self.fd is None:
            return False
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as problem:
                log.warning("inotify read failed: %s", problem)
                break
            if not data:
                break
            seen = True
            self._forget_gone(data)
        if seen:
            self.rearm()
        return seen

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a change; True if one came."""
        if self.fd is None:
            time.sleep(max(timeout, 0.0))
            return False
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        return bool(ready) and self.drain()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self._watched.clear()

    def _forget_gone(self, data: bytes) -> None:
        """Drop watches the kernel removed (the watched directory itself went away)."""
        # struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
        pos = 0
        while pos + 16 <= len(data):
            wd = int.from_bytes(data[pos : pos + 4], "little", signed=True)
            mask = int.from_bytes(data[pos + 4 : pos + 8], "little")
            pos += 16 + int.from_bytes(data[pos + 12 : pos + 16], "little")
            if mask & IN_IGNORED:
                self._watched = {p: w for p, w in self._watched.items() if w != wd}


def _nearest_existing(directory: Path) -> Path | None:
    for candidate in (directory, *directory.parents):
        if candidate.is_dir():
            return candidate
    return None
