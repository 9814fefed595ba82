"""The HTTP server: uvicorn (its pure-Python h11 parser) on an event loop of its own thread.

uvicorn is given a socket bound here, so that a port in use is an error at start,
before READY, and so that each connection's kernel send buffer is small: a stream
client that stops reading is noticed after tens of kilobytes, not megabytes
(which every stalled client would otherwise pin in the kernel).

Threads: :meth:`Server.start` and :meth:`Server.stop` on the thread that owns the
server; everything else on the ``api`` thread's loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: A connection must have sent a whole request line and headers within this.
HEADER_TIMEOUT_S = 10.0
#: Kernel send buffer per connection (Linux doubles it for its own bookkeeping).
SEND_BUFFER = 32 * 1024
#: Connections and requests at once; more get 503 from uvicorn.
MAX_CONCURRENCY = 64


class TimelyH11(H11Protocol):
    """uvicorn's h11 protocol, but a connection that sends no complete request within
    ``HEADER_TIMEOUT_S`` of connecting is closed (uvicorn times out only idle keep-alives)."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._first_request = self.loop.call_later(HEADER_TIMEOUT_S, self._too_slow)

    def _too_slow(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._first_request.cancel()
        super().connection_lost(exc)


class _QuietCutOff(logging.Filter):
    """uvicorn logs an error when an app ends a response early; the stream does that on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (OSError if it cannot be had)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """Runs an ASGI ``app`` on ``sock`` in thread ``api``.

    ``on_loop(loop)`` runs on the loop before it serves (the sink keeps the loop to
    hand it decisions); ``before_exit()`` is awaited on the loop when stopping.
    """

    def __init__(
        self,
        app: Callable,
        sock: socket.socket,
        *,
        on_loop: Callable[[asyncio.AbstractEventLoop], None],
        before_exit: Callable[[], Awaitable[None]],
    ) -> None:
        self.sock = sock
        self.on_loop = on_loop
        self.before_exit = before_exit
        config = uvicorn.Config(
            app,
            http=TimelyH11,
            loop="asyncio",
            lifespan="off",
            log_config=None,  # the agent's logging, not uvicorn's
            access_log=False,
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
            limit_concurrency=MAX_CONCURRENCY,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self.uvicorn = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failed: BaseException | None = None
        logging.getLogger("uvicorn.error").addFilter(_QuietCutOff())

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._failed is not None:
            raise RuntimeError(f"the local API did not start: {self._failed or 'timed out'}")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as problem:
            self._failed = problem
            self._started.set()
            log.exception("the local API stopped")

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_loop(self.loop)
        serving = asyncio.create_task(self.uvicorn.serve(sockets=[self.sock]))
        while not self.uvicorn.started and not serving.done():
            await asyncio.sleep(0.005)
        self._started.set()
        await serving

    def stop(self, timeout: float = 10.0) -> None:
        """Let the streams carry out what they have, then close every connection."""
        loop = self.loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(self._exit(), loop)
            try:
                done.result(timeout)
            except Exception:
                log.exception("the local API did not stop cleanly")
            self._thread.join(timeout)
        self.sock.close()

    async def _exit(self) -> None:
        await self.before_exit()
        self.uvicorn.should_exit = True
