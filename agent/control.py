"""One writer per ledger, across processes: the agent's lock and control socket, and the
client the ``scan-agent documents`` commands use.

The agent keeps the chain's end and the open document in memory, so while it runs
no other process may write its ledger. It holds an exclusive :func:`fcntl.flock` on
the ledger file for as long as it runs (:class:`LedgerLock`), and takes commands on
a unix socket in the abstract namespace, named after the ledger (:func:`socket_name`,
:class:`ControlServer`). A command line calls :func:`send`: while an agent holds the
lock it asks the agent, which runs the verb on its pipeline thread; otherwise it
takes the lock itself and runs the verb on the ledger directly.

The protocol is one JSON line each way per connection:

    {"verb": "close_document", "body": {"id": "RX00000001"}}
    {"ok": true, "result": {"rows": [...]}}      or      {"ok": false, "error": "...", "field": "id"}

>>> name = socket_name("/var/lib/scan-agent/ledger.db")
>>> name[:12], len(name), name == socket_name("/var/lib/scan-agent/../scan-agent/ledger.db")
(b'\\x00scan-agent/', 28, True)
>>> answer_for(b'{"verb": "delete"}', station=None, source_id="root")["field"]
'verb'
>>> answer_for(b'not json', station=None, source_id="root")["error"]
'not JSON; send {"verb": ..., "body": {...}} on one line'
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import pwd
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent.ledger.documents import DocumentError
from agent.station import CALL_TIMEOUT_S, VERBS

if TYPE_CHECKING:
    from agent.config import Config
    from agent.station import Station

log = logging.getLogger(__name__)

#: The agent waits this long for the lock at start: a command line holds it for one verb.
LOCK_WAIT_S = 5.0
#: A request larger than this is refused unread (a manifest of 300,000 codes fits).
MAX_REQUEST_BYTES = 32 << 20
#: A client gets this long to send its whole request; the server serves one at a time.
REQUEST_TIMEOUT_S = 5.0
#: The client waits this long for a reply: the agent's own wait for its pipeline, and some.
REPLY_TIMEOUT_S = CALL_TIMEOUT_S + 5.0

T = TypeVar("T")


class LedgerBusy(Exception):
    """Another process holds the ledger's lock: a running agent or a documents command."""


class ControlError(DocumentError):
    """The command could not be carried to a writer (no ledger, an agent that does not
    answer); ``field`` is ``ledger`` or ``agent``. Nothing was recorded."""


def socket_name(ledger_path: str | os.PathLike) -> bytes:
    """The agent's control socket for the ledger at ``ledger_path``: an abstract unix
    socket name, so no file to go stale and no limit on the ledger path's length."""
    real = os.fsencode(os.path.realpath(ledger_path))
    return b"\0scan-agent/" + hashlib.sha256(real).hexdigest()[:16].encode()


class LedgerLock:
    """An exclusive ``flock`` on the ledger file: held by the agent for its lifetime, and
    by a command line for one verb when no agent runs.

    flock locks are independent of the POSIX record locks SQLite takes (on local file
    systems), so holding one changes nothing for SQLite. But closing *any* descriptor
    of a file drops every POSIX lock the process holds on it, SQLite's included: the
    lock's descriptor must be opened before the process's SQLite connections to the
    ledger and released only after they are all closed.

    Threads: one owner (the runner's thread, or the command line's).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self, *, create: bool = False) -> bool:
        """Take the lock if it is free; False if another process holds it.

        Raises :class:`FileNotFoundError` when there is no ledger and not ``create``.
        """
        assert self._fd is None, "already held"
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # as connect() would for the ledger
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def acquire(self, wait_s: float = LOCK_WAIT_S, *, create: bool = True) -> None:
        """Take the lock, waiting up to ``wait_s``; :class:`LedgerBusy` if it stays taken."""
        deadline = time.monotonic() + wait_s
        # Polled: flock has no timeout, and the holder is a short command or another agent.
        while not self.try_acquire(create=create):
            if time.monotonic() >= deadline:
                raise LedgerBusy(
                    f"another scan-agent or a documents command is using {self.path} "
                    f"(it held the ledger's lock for {wait_s:g} s); one writer at a time"
                )
            time.sleep(0.05)

    def replaced(self) -> bool:
        """Whether the path no longer names the locked file (it was moved aside)."""
        assert self._fd is not None
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return True
        mine = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def hold_ledger(path: str | os.PathLike, prepare: Callable[[], T], wait_s: float = LOCK_WAIT_S) -> tuple[LedgerLock, T]:
    """The agent's start: lock the ledger, then run ``prepare`` (the damaged-ledger check,
    :func:`agent.ledger.quarantine.prepare`) under the lock; returns the lock and what
    ``prepare`` returned. Raises :class:`LedgerBusy`, or what ``prepare`` raises.

    A ledger that is not there yet is locked (and so created) only after ``prepare``:
    an empty file made first would hide from it that a damaged ledger was moved aside
    and none replaced it. A ledger ``prepare`` moved aside is locked again at its new file.
    """
    lock = LedgerLock(path)
    try:
        if lock.path.exists():
            lock.acquire(wait_s, create=False)
        result = prepare()
        if not lock.held or lock.replaced():
            fresh = LedgerLock(path)
            fresh.acquire(wait_s, create=True)
            lock.release()
            lock = fresh
    except BaseException:
        lock.release()
        raise
    return lock, result


# -- the agent's side ----------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _refusal(field: str, message: str) -> dict:
    return {"ok": False, "error": message, "field": field}


class ControlServer:
    """The running agent's control socket: one JSON request per connection, answered by
    the runner's :class:`~agent.station.Station` with ``via="cli"``.

    Only root and the agent's own user may connect (checked with ``SO_PEERCRED``: an
    abstract socket has no file permissions). Connections are served one at a time:
    commands are rare and typed by a person, and the pipeline runs them one at a time
    anyway; a slow client is cut off after ``timeout_s``.

    Threads: :meth:`start` and :meth:`stop` for the thread that owns the agent (the
    runner's); connections are served on the server's own thread, ``control``.
    """

    def __init__(
        self,
        ledger_path: str | os.PathLike,
        station: Station,
        *,
        allowed_uids: frozenset[int] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.name = socket_name(ledger_path)
        self.station = station
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({0, os.getuid()})
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Bind and listen (raising :class:`LedgerBusy` if another process has the name), then serve."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.name)
        except OSError as problem:
            sock.close()
            if problem.errno == errno.EADDRINUSE:
                raise LedgerBusy(
                    f"another process serves this ledger's control socket ({self.name[1:].decode()})"
                ) from None
            raise
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = CALL_TIMEOUT_S + 1) -> None:
        """Stop taking connections; a command already running finishes first (up to ``timeout``)."""
        if self._sock is None:
            return
        self._stopping = True
        # Wakes the accept() below (EINVAL): no polling while the agent is idle.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()
        self._sock = None

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError as problem:
                if self._stopping:
                    return
                log.error("control socket: %s", problem)
                time.sleep(0.5)  # e.g. out of descriptors: do not spin
                continue
            with conn:
                try:
                    self.serve_one(conn)
                except Exception:
                    # Whatever one client did, the server serves the next.
                    log.exception("control socket: a request failed")

    def serve_one(self, conn: socket.socket) -> None:
        """Check the peer, read one request, answer it (on the ``control`` thread)."""
        deadline = time.monotonic() + self.timeout_s
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in self.allowed_uids:
            log.warning("control socket: refused uid %d (pid %d)", uid, pid)
            allowed = ", ".join(map(str, sorted(self.allowed_uids)))
            reply = _refusal("peer", f"uid {uid} may not command this agent; only uid {allowed} may")
        else:
            try:
                request = _read_line(conn, deadline)
            except _Refused as refused:
                reply = _refusal(refused.field, refused.message)
            else:
                reply = answer_for(request, station=self.station, source_id=user_name(uid))
                log.info(
                    "control: %s from %s (pid %d): %s",
                    _verb_of(request),
                    user_name(uid),
                    pid,
                    "done" if reply["ok"] else f"refused, {reply['field']}: {reply['error']}",
                )
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(OSError):  # a client that left does not hear its reply
            conn.sendall(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
            _drain(conn)


def _drain(conn: socket.socket, within_s: float = 1.0, limit: int = MAX_REQUEST_BYTES) -> None:
    """Read what the client still sends (a refused request was not read) before closing:
    a unix socket closed with unread data resets the connection, and the client's
    read then fails with the reply waiting for it."""
    conn.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + within_s
    drained = 0
    while drained <= limit and (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        chunk = conn.recv(65536)
        if not chunk:
            return
        drained += len(chunk)


def answer_for(request: bytes, *, station: Station | None, source_id: str) -> dict:
    """The reply to one request's bytes: the verb's result, or a refusal naming the field."""
    from agent.ledger import LedgerError

    try:
        message = json.loads(request)
    except (ValueError, RecursionError):
        return _refusal("request", 'not JSON; send {"verb": ..., "body": {...}} on one line')
    if not isinstance(message, dict):
        return _refusal("request", 'must be a JSON object: {"verb": ..., "body": {...}}')
    unknown = sorted(set(message) - {"verb", "body"})
    if unknown:
        return _refusal(unknown[0], "unknown field; allowed: verb, body")
    verb, body = message.get("verb"), message.get("body", {})
    if verb not in VERBS:
        return _refusal("verb", f"{verb!r} is not allowed; allowed: {', '.join(VERBS)}")
    if not isinstance(body, dict):
        return _refusal("body", "must be a JSON object")
    try:
        result = getattr(station, verb)(body, via="cli", source_id=source_id)
    except DocumentError as problem:
        return _refusal(problem.field, problem.message)
    except LedgerError as problem:
        return _refusal("ledger", str(problem))
    return {"ok": True, "result": result}


def _read_line(conn: socket.socket, deadline: float, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request: bytes up to the first newline or the end, at most ``limit``, by ``deadline``."""
    chunks: list[bytes] = []
    size = 0
    late = _Refused("request", "not received in time; send the request at once, ending with a newline")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise late
        # The deadline is for the whole request: a client trickling bytes is cut off too.
        conn.settimeout(left)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            raise late from None
        end = chunk.find(b"\n")
        if end >= 0:
            chunk = chunk[:end]
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _Refused("request", f"larger than {limit} bytes")
        if not chunk or end >= 0:
            return b"".join(chunks)


def _verb_of(request: bytes) -> str:
    try:
        return str(json.loads(request).get("verb"))[:40]
    except Exception:
        return "?"


def user_name(uid: int) -> str:
    """Who sent a command, as the ledger's ``source_id`` records it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# -- the command line's side ---------------------------------------------------------------


def send(
    ledger_path: str | os.PathLike,
    verb: str,
    body: Mapping,
    *,
    config: Config | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> dict:
    """Run ``verb`` on the ledger's one writer: the running agent if one holds the lock,
    else here, under the lock, on a :class:`~agent.ledger.Ledger` opened with
    ``config``'s settings. Returns the verb's result (``{"rows": [...]}``); raises
    :class:`~agent.ledger.documents.DocumentError` naming the field (nothing recorded).
    """
    if verb not in VERBS:
        raise DocumentError("verb", f"{verb!r} is not allowed; allowed: {', '.join(VERBS)}")
    path = Path(ledger_path)
    deadline = time.monotonic() + wait_s
    while True:
        lock = LedgerLock(path)
        try:
            free = lock.try_acquire()
        except FileNotFoundError:
            # Not created here: a mistyped --db must not start a second ledger.
            raise ControlError("ledger", f"no ledger at {path}; the agent creates it when it first starts") from None
        except OSError as problem:
            raise ControlError("ledger", f"cannot open {path}: {problem.strerror or problem}") from None
        if free:
            try:
                return run_here(path, verb, body, config=config)
            finally:
                lock.release()  # after run_here closed its connection (see LedgerLock)
        try:
            return ask(path, verb, body)
        except (ConnectionRefusedError, FileNotFoundError):
            # The agent holds the lock but is still starting (or stopping): its socket comes soon.
            if time.monotonic() >= deadline:
                raise ControlError(
                    "agent", f"an agent holds {path} but does not answer on its control socket"
                ) from None
            time.sleep(0.1)


def ask(ledger_path: str | os.PathLike, verb: str, body: Mapping, *, timeout_s: float = REPLY_TIMEOUT_S) -> dict:
    """Send one request to the agent serving ``ledger_path``; its result, or the refusal raised.

    Raises :class:`ConnectionRefusedError` when no agent listens.
    """
    request = json.dumps({"verb": verb, "body": dict(body)}, ensure_ascii=False).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(socket_name(ledger_path))
        _check_server(sock, ledger_path)
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent refused before reading it all: its reply says why
        try:
            data = _read_reply(sock)
        except TimeoutError:
            raise ControlError("agent", f"no reply from the agent within {timeout_s:g} s") from None
    try:
        reply = json.loads(data)
        ok = reply["ok"]
    except (ValueError, KeyError, TypeError):
        raise ControlError("agent", f"the agent's reply is not understood: {data[:200]!r}") from None
    if ok:
        return reply["result"]
    raise DocumentError(str(reply.get("field") or "agent"), str(reply.get("error")))


def _check_server(sock: socket.socket, ledger_path: str | os.PathLike) -> None:
    """The process behind the socket must be root, the ledger's owner or this user.

    An abstract socket's name is open to any local user: without this check another
    user could listen under the agent's name and collect (or fake replies to) commands.
    """
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    owner = os.stat(ledger_path).st_uid
    if uid not in (0, owner, os.getuid()):
        raise ControlError(
            "agent", f"the process answering for {ledger_path} runs as uid {uid}, not as root or the ledger's owner"
        )


def _read_reply(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class _Here:
    """Stands in for the pipeline under a :class:`~agent.station.Station` when no agent
    runs: each verb runs at once on the calling thread, which holds the ledger's lock
    and so is its one writer. The verbs check their JSON exactly as in the agent."""

    def __init__(self, ledger, operator: str, leading_digits: tuple[str, ...] = ("8",)) -> None:
        from agent.pipeline import Context

        self.ledger = ledger
        self.context = Context(operator=operator)
        self.leading_digits = leading_digits

    def call(self, verb: Callable[[], list]) -> Future:
        from agent.ledger import LedgerError

        future: Future = Future()
        try:
            future.set_result(verb())
        except (DocumentError, LedgerError) as problem:
            future.set_exception(problem)
        return future


def run_here(ledger_path: Path, verb: str, body: Mapping, *, config: Config | None = None) -> dict:
    """Run ``verb`` on the ledger in this process (the caller holds its lock)."""
    from agent import config as config_file
    from agent.ledger import Ledger, LedgerError, connect
    from agent.ledger.quarantine import inspect
    from agent.station import Station

    cfg = config or config_file.builtin_default()
    with as_owner(ledger_path):
        # Even looking may make SQLite's side files: as the owner, too.
        damage = inspect(ledger_path)
        if damage:
            raise ControlError(
                "ledger", f"{ledger_path} is damaged ({'; '.join(damage)}); see scan-agent ledger verify"
            )
        try:
            conn = connect(ledger_path)
            # A ledger belongs to one device: its rows go on under the id it already has,
            # whatever config (or none) this command line found.
            last = conn.execute("SELECT device_id, site_id FROM scans ORDER BY id DESC LIMIT 1").fetchone()
            device_id, site_id = (cfg.station.device_id, cfg.station.site_id) if last is None else tuple(last)
            ledger = Ledger(
                conn,
                device_id=device_id,
                site_id=site_id,
                double_read_window_s=cfg.codes.double_read_window_s,
                split_packs=cfg.codes.split_packs,
                lifecycle=cfg.codes.lifecycle,
                lock_on=cfg.documents.lock_on,
                unexpected=cfg.receiving.unexpected,
            )
        except Exception as problem:  # sqlite3.Error, OSError
            raise ControlError("ledger", f"cannot open {ledger_path}: {problem}") from problem
        try:
            here = _Here(ledger, cfg.station.operator, cfg.codes.leading_digits)
            station = Station(here, on_new=cfg.documents.on_new)
            return getattr(station, verb)(body, via="cli", source_id=user_name(os.getuid()))
        except LedgerError as problem:
            raise ControlError("ledger", str(problem)) from problem
        finally:
            ledger.conn.close()


@contextlib.contextmanager
def as_owner(path: Path) -> Iterator[None]:
    """Root writing another user's ledger does it as that user: the files SQLite makes
    beside it (``-wal``, ``-shm``) must be the agent's, or the agent cannot open its
    ledger again. Anyone else writes as themselves."""
    owner = path.stat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        yield
        return
    egid = os.getegid()
    os.setegid(owner.st_gid)
    os.seteuid(owner.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
