"""Serial scanners (USB CDC ``/dev/ttyACM*``, RS-232 adapters) read with pyserial.

One :class:`SerialSource` per ``[[scanners]]`` entry. It finds its port by
path or glob, cuts the byte stream into scans (:mod:`agent.sources.framing`),
survives the port vanishing and reopens it when it returns, and lets the
feedback send bytes back to the scanner (host-ACK) through :meth:`reply`,
which every :class:`~agent.read.Read` it makes carries.

    src = SerialSource("/dev/serial/by-id/usb-Newland*", name="counter", terminator="cr")
    src.start(pipeline.submit)
    ...
    src.stop()
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from agent.read import Read
from agent.sources.aim import symbology
from agent.sources.framing import MAX_LINE, Frame, LineFramer
from agent.sources.identity import usb_identity
from agent.sources.reader import ReaderThread
from agent.sources.watch import DirWatch

log = logging.getLogger(__name__)

PARITIES = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD}

#: Longest wait between looks for a missing port when inotify says nothing
#: (a safety net: inotify normally wakes the source at once).
RECHECK_S = 0.5


class SerialSource:
    """Reads scans from one serial port on a daemon thread; never sets ``done``.

    ``connected`` is set while the port is open (tests and status reports use it).
    """

    kind = "serial"

    def __init__(
        self,
        port: str,
        *,
        name: str = "serial",
        movement: str | None = None,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "none",
        stopbits: float = 1,
        terminator: str = "any",
        read_timeout: float | None = None,
    ) -> None:
        self.port = port
        self.name = name
        self.movement = movement
        self.settings = {
            "baudrate": baudrate,
            "bytesize": bytesize,
            "parity": PARITIES[parity],
            "stopbits": stopbits,
        }
        self.terminator = terminator
        self.read_timeout = read_timeout
        self.done = threading.Event()
        self.connected = threading.Event()
        self.source_id = port
        self._serial: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._reader = ReaderThread(f"serial:{name}")
        self._last_problem = ""

    # -- the source interface -------------------------------------------------

    @classmethod
    def from_config(cls, config: Any) -> SerialSource:
        """The source for a ``kind = "serial"`` entry (:class:`agent.config.SerialScannerConfig`)."""
        return cls(
            config.port,
            name=config.name,
            movement=config.movement,
            baudrate=config.baudrate,
            bytesize=config.bytesize,
            parity=config.parity,
            stopbits=config.stopbits,
            terminator=config.terminator,
            read_timeout=None if config.read_timeout_ms is None else config.read_timeout_ms / 1000,
        )

    def start(self, submit: Callable[[Read], None]) -> None:
        self._reader.start(self._run, submit)

    def stop(self) -> None:
        self._reader.stop()

    def present(self) -> bool:
        return self.connected.is_set()

    def reply(self, data: bytes) -> None:
        """Send ``data`` to the scanner (host-ACK). Never raises: a scanner that
        is not connected just misses its beep, and the log says so."""
        with self._write_lock:
            port = self._serial
            if port is None:
                log.warning("serial scanner %s: not connected, %d reply bytes not sent", self.name, len(data))
                return
            try:
                port.write(data)
            except (serial.SerialException, OSError) as problem:
                log.warning("serial scanner %s: reply not sent: %s", self.name, problem)

    # -- the reader thread ----------------------------------------------------

    def _run(self, submit: Callable[[Read], None]) -> None:
        watch = DirWatch([Path(self.port).parent])
        try:
            while not self._reader.stopping.is_set():
                try:
                    port = self._open()
                except Exception as problem:  # a reader thread must never die
                    port = None
                    self._problem(f"cannot open: {problem}")
                if port is None:
                    self._wait_for_change(watch)
                    continue
                try:
                    self._read(port, submit)
                except Exception:
                    log.exception("serial scanner %s: reader failed; reopening", self.name)
                finally:
                    self._close()
        finally:
            watch.close()

    def _wait_for_change(self, watch: DirWatch) -> None:
        """Sleep until the port's directory changes, :meth:`stop` is called, or ``RECHECK_S`` passes."""
        waiting = [self._reader.wake_fd] + ([watch.fileno()] if watch.fileno() >= 0 else [])
        ready, _, _ = select.select(waiting, [], [], RECHECK_S)
        if watch.fileno() in ready:
            watch.drain()

    def _open(self) -> serial.Serial | None:
        path = self._find()
        if path is None:
            self._problem(f"no port matches {self.port}")
            return None
        try:
            port = serial.Serial(path, timeout=0, write_timeout=0.2, exclusive=True, **self.settings)
        except (serial.SerialException, OSError, ValueError) as problem:
            self._problem(f"cannot open {path}: {problem}")
            return None
        self.source_id = _identity(path, self.port)
        with self._write_lock:
            self._serial = port
        self._last_problem = ""
        self.connected.set()
        log.info("serial scanner %s: opened %s as %s", self.name, path, self.source_id)
        return port

    def _find(self) -> str | None:
        if not glob.has_magic(self.port):
            return self.port if os.path.exists(self.port) else None
        matches = sorted(glob.glob(self.port))
        if len(matches) > 1:
            self._problem(f"{self.port} matches {len(matches)} ports; reading {matches[0]} only", level=logging.INFO)
        return matches[0] if matches else None

    def _read(self, port: serial.Serial, submit: Callable[[Read], None]) -> None:
        framer = LineFramer(self.terminator, read_timeout=self.read_timeout)
        fd = port.fileno()
        try:
            while not self._reader.stopping.is_set():
                deadline = framer.deadline()
                # No partial scan pending: sleep until bytes come, the port goes (it reads
                # as ready, then fails) or stop() wakes us; no timeout to wake for.
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([fd, self._reader.wake_fd], [], [], wait)
                now = time.monotonic()
                if fd not in ready:
                    frame = framer.expire(now)
                    if frame is not None:
                        self._submit(frame, submit)
                    continue
                try:
                    # The descriptor itself, not pyserial's read(): that selects again and
                    # builds a timeout first, 20-40 us more before a scan is handed over.
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue  # woken with nothing to read after all (pyserial ignores it too)
                except OSError as problem:
                    self._problem(f"port lost: {problem}", level=logging.WARNING)
                    break
                if not data:
                    # Ready, yet nothing: an unplugged tty reads as end of file (pyserial says
                    # "device reports readiness to read but returned no data").
                    self._problem("port lost: ready to read but no data (device disconnected?)", level=logging.WARNING)
                    break
                for frame in framer.feed(data, now):
                    self._submit(frame, submit)
        finally:
            partial = framer.flush()
            if partial is not None:
                # Cut off by an unplug: recorded (and rejected) rather than lost.
                self._submit(partial, submit)
            if framer.dropped:
                log.info("serial scanner %s: %d bytes of overlong lines dropped", self.name, framer.dropped)

    def _submit(self, frame: Frame, submit: Callable[[Read], None]) -> None:
        if frame.overlong:
            log.warning(
                "serial scanner %s: line over %d bytes; rest dropped up to the next terminator", self.name, MAX_LINE
            )
        submit(
            Read(
                frame.raw,
                self.kind,
                self.source_id,
                symbology=symbology(frame.raw),
                t_first=frame.t_first,
                t_last=frame.t_last,
                movement=self.movement,
                scanner=self.name,
                reply=self.reply,
            )
        )

    def _close(self) -> None:
        self.connected.clear()
        with self._write_lock:
            port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def _problem(self, message: str, level: int = logging.WARNING) -> None:
        """Log why the scanner is not being read, once per distinct reason."""
        if message != self._last_problem:
            self._last_problem = message
            log.log(level, "serial scanner %s: %s", self.name, message)


def _identity(path: str, configured: str) -> str:
    """``VID:PID:serial`` for a USB serial port, else its by-id path, else the configured path."""
    try:
        from serial.tools.list_ports_linux import SysFS

        # SysFS finds the device by the node's own name: a by-id link must be resolved first.
        info = SysFS(os.path.realpath(path))
        if info.vid is not None and info.pid is not None:
            return usb_identity(info.vid, info.pid, info.serial_number, location=info.location or "")
    except Exception:  # not Linux, or sysfs without the usual files
        pass
    if path.startswith("/dev/serial/by-id/"):
        return path
    return configured if not glob.has_magic(configured) else path
