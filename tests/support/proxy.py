"""A small TCP proxy for network faults between the agent and the broker.

proxy = FaultyProxy(broker.port).start()   # the agent connects to proxy.port
proxy.set("stall")    # hold every byte in both directions (a congested link)
proxy.set("slice")    # pass bytes on in 1..7-byte pieces (MQTT packets split anywhere)
proxy.drop()          # reset every connection and refuse new ones, until set("pass")
proxy.set("pass")
proxy.stop()

Runs its own asyncio loop on a thread; bytes are never altered, only delayed,
split or cut off with the connection.
"""

from __future__ import annotations

import asyncio
import random
import threading

from tests.support.net import free_port, wait_for_port

MODES = ("pass", "stall", "slice", "drop")


class FaultyProxy:
    def __init__(self, upstream_port: int, *, port: int | None = None, seed: int = 9) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.mode = "pass"
        self.connections = 0
        self._rng = random.Random(seed)
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> FaultyProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop
        ).result(5)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        def close() -> None:
            self._server.close()
            self._abort_all()

        self._loop.call_soon_threadsafe(close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}; allowed: {', '.join(MODES)}")
        self.mode = mode
        if mode == "drop":
            self._loop.call_soon_threadsafe(self._abort_all)

    def drop(self) -> None:
        self.set("drop")

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # RST: whatever was in flight is gone
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            while self.mode == "stall":
                await asyncio.sleep(0.02)
            if self.mode == "drop" or writer.transport.is_closing():
                return
            if self.mode == "slice":
                at = 0
                while at < len(data):
                    step = self._rng.randint(1, 7)
                    writer.write(data[at : at + step])
                    at += step
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(data)
                await writer.drain()
        writer.write_eof() if writer.can_write_eof() else None
