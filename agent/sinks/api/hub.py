"""The live half of the decision stream: each new event, read once, offered to every client.

The hub holds no events of its own. Told that the ledger has an event up to some
``seq`` (:meth:`Hub.wake`), it reads the rows it has not read yet through
``read_after`` and offers each one, already framed, to every subscription. A
subscription holds at most ``buffer`` frames: a client that falls further behind
is dropped (:attr:`Subscription.dropped`), and it comes back with ``Last-Event-ID``.

>>> frames = {1: b"one", 2: b"two", 3: b"three"}
>>> hub = Hub(lambda after, upto: [(s, frames[s]) for s in range(after + 1, upto + 1)], last_seq=1, buffer=1)
>>> sub = hub.subscribe(after=1)
>>> hub.wake(2); sub.take()
[(2, b'two')]
>>> hub.wake(3); hub.wake(3); sub.take()   # no repeat
[(3, b'three')]
>>> hub.unsubscribe(sub)
>>> slow = hub.subscribe(after=3)
>>> frames[4], frames[5] = b"four", b"five"
>>> hub.wake(5); slow.dropped.is_set(), hub.dropped   # a buffer of one, two events: dropped
(True, 1)

Threads: every method runs on the API's event loop thread (the loop's
``call_soon_threadsafe`` brings the pipeline's news there), so nothing here locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

#: ``read_after(after, upto)``: the events with ``after < seq <= upto`` as ``(seq, frame)``, in order.
ReadAfter = Callable[[int, int], list[tuple[int, bytes]]]


class Subscription:
    """One stream client's bounded buffer of frames, from seq ``after`` on (loop thread only)."""

    def __init__(self, after: int, buffer: int) -> None:
        #: The last seq this client has been given (or was given before it reconnected).
        self.cursor = after
        self.buffer = buffer
        self._frames: deque[tuple[int, bytes]] = deque()
        #: Set when there is something to take, the client is dropped, or the hub closes.
        self.ready = asyncio.Event()
        #: Set when the client fell more than ``buffer`` events behind.
        self.dropped = asyncio.Event()
        self.closed = False

    def offer(self, seq: int, frame: bytes) -> bool:
        """Queue one event; False (and :attr:`dropped` set) when the buffer is full."""
        if seq <= self.cursor or self.dropped.is_set():
            return True  # already had it (history overlapped the live feed), or gone anyway
        if len(self._frames) >= self.buffer:
            self.dropped.set()
            self.ready.set()
            return False
        self._frames.append((seq, frame))
        self.cursor = seq
        self.ready.set()
        return True

    def take(self) -> list[tuple[int, bytes]]:
        """Everything queued so far, oldest first; the buffer is empty afterwards."""
        frames = list(self._frames)
        self._frames.clear()
        self.ready.clear()
        return frames

    def close(self) -> None:
        """The hub is closing: the client gets what is queued, then its stream ends."""
        self.closed = True
        self.ready.set()


class Hub:
    """Fans new events out to :class:`Subscription`\\ s; ``last_seq`` is the newest event read so far."""

    def __init__(self, read_after: ReadAfter, *, last_seq: int, buffer: int, chunk: int = 500) -> None:
        self.read_after = read_after
        #: The newest seq the hub has read and offered: a client at this cursor misses nothing.
        self.last_seq = last_seq
        self.buffer = buffer
        self.chunk = chunk
        self.subscriptions: set[Subscription] = set()
        #: Clients dropped for falling behind, since start.
        self.dropped = 0

    def subscribe(self, after: int) -> Subscription:
        """A subscription for the events after ``after``.

        Call it only once the client has everything up to :attr:`last_seq` (or
        beyond): the hub offers only what it reads from now on.
        """
        sub = Subscription(after, self.buffer)
        self.subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

    def wake(self, seq: int) -> None:
        """The ledger has events up to ``seq``: read the ones not read yet and offer them."""
        while seq > self.last_seq:
            upto = min(seq, self.last_seq + self.chunk)
            events = self.read_after(self.last_seq, upto)
            for event_seq, frame in events:
                for sub in list(self.subscriptions):
                    if not sub.offer(event_seq, frame):
                        self.subscriptions.discard(sub)
                        self.dropped += 1
            # Past ``upto`` even when rows are missing: a seq is never written later.
            self.last_seq = max(upto, events[-1][0] if events else upto)

    def close(self) -> None:
        """End every stream (after what each has queued)."""
        for sub in self.subscriptions:
            sub.close()
        self.subscriptions.clear()
