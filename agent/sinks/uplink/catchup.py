"""Catching up with the site's peers: which of their seqs this station has seen, and asking for the rest.

A peer numbers its events 1, 2, 3, ... (``seq``: scan events on ``{p}/events`` and
document events on ``{p}/documents`` share it). The intake tells :class:`CatchUp` each
peer event it has checked (:meth:`CatchUp.seen`), stored or not (only state-changing ones
are stored). Per peer it keeps the *floor*, every seq up to which has been seen, and
the seqs seen above it. Two things make it ask the peer to publish events again,
``{peer's prefix}/cmd/resend {"from_seq", "to_seq"}`` (:mod:`.commands`; the peer
publishes them on its own topics, to every subscriber, with their ``event_id``):

- **a gap**: a seq above the floor seen, the one after the floor not, still open
  :data:`GRACE_S` after it was noticed. A message lost between the broker and here
  (NATS 2.9.10 loses some, ``bench/fleet_nats_loss.py``), or dropped by a full queue.
- **a peer not heard since a mark**: this station (re)connected, or the peer said
  ``online`` (its retained ``{p}/status``). A peer that published while this station's
  session was gone (a broker restarted empty, a failover to a node without the session)
  has those events nowhere else, and if it then falls quiet no gap ever shows them. So
  :data:`PROBE_GRACE_S` after the mark, a peer not heard meanwhile is *probed*: asked for
  :data:`CHUNK` seqs above its floor; a chunk that comes back whole is followed by the next.
- **a peer gone quiet**, once the broker has shown it loses messages (a gap seen since
  start): :data:`QUIET_S` after a peer's last event it is probed once (unless it said
  ``offline``): a last event lost on a live connection shows no gap, there is no next
  event to show it. One probe a quiet spell, found empty when nothing was lost; on a
  broker that has lost nothing (mosquitto) no such probe is made, so a quiet site costs
  nothing.

Bounded and paced: at most :data:`CHUNK` seqs an ask; the same peer asked again only after
:data:`ASK_WAIT_S`, doubling up to :data:`MAX_WAIT_S` while its gap stays open; at most
:data:`ASKS_PER_S` asks a second for the whole site; a peer first heard at seq ``s`` is
asked back :data:`HISTORY` seqs at most; and more than :data:`MAX_ABOVE` seqs waiting above
a gap give that gap up (logged, counted). The floors survive a restart
(``peer_floors``, :func:`agent.ledger.peers.store`), so a restart asks only for what is new.

>>> c = CatchUp({"kiosk-2": 4})
>>> for seq in (5, 7, 8):
...     c.seen("kiosk-2", seq, now=100.0)
>>> c.floor("kiosk-2"), c.due(now=100.5)
(5, [])
>>> c.due(now=102.0)  # the gap (6) is still open after the grace: ask for it
[('kiosk-2', 6, 6)]
>>> c.due(now=102.5)  # asked: not again before ASK_WAIT_S
[]
>>> c.seen("kiosk-2", 6, now=103.0)
>>> c.floor("kiosk-2"), c.dirty()
(8, {'kiosk-2': 8})
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: A gap, or a peer not heard since a mark, is given this long (seconds) before it is asked for:
#: messages arrive out of order, and a persistent session's backlog takes a moment to come.
GRACE_S = 1.5
#: A peer not heard since a (re)connection or its ``online`` is probed this long after it:
#: a session that survived (NATS keeps it in JetStream) delivers its backlog meanwhile,
#: after a failover only once JetStream has new leaders (up to ~10 s); probed earlier,
#: the peer would publish again, to every subscriber, what was on its way anyway.
PROBE_GRACE_S = 12.0
#: At most this many seqs an ask (a peer's ``resend`` takes up to 10,000; a smaller chunk
#: delays the peer's own live events less, since it sends the resent ones first).
CHUNK = 500
#: The same peer is asked again after this long if its gap is still open, doubling ...
ASK_WAIT_S = 2.0
#: ... up to this.
MAX_WAIT_S = 300.0
#: At most this many asks a second across the site's peers.
ASKS_PER_S = 10.0
#: A peer not heard for this long after an event is probed once (its last event may be lost).
QUIET_S = 30.0
#: A peer first heard at seq ``s`` is asked back as far as ``s - HISTORY``, no further:
#: a new station does not pull a long-running peer's whole history through the broker.
HISTORY = 10_000
#: More seqs than this seen above a gap: the gap is given up (the floor moves past it).
MAX_ABOVE = 50_000


@dataclass
class _Peer:
    floor: int
    #: seqs seen above the floor (so the one after the floor was not)
    above: set[int] = field(default_factory=set)
    #: when (monotonic) the gap above the floor was noticed, or None
    gap_at: float | None = None
    #: heard since the last mark (a (re)connection, the peer's ``online``)
    heard: bool = True
    #: when (monotonic) to probe the peer if it is not heard by then, or None
    probe_at: float | None = None
    #: when (monotonic) to probe the peer if it stays quiet, or None (probed, or offline)
    quiet_at: float | None = None
    #: a probe asked through this seq: if the floor reaches it, ask the next chunk
    probe_to: int | None = None
    #: not before this (monotonic) is the peer asked again, unless its floor moves
    next_ask: float = 0.0
    attempts: int = 0


class CatchUp:
    """The floors of the site's peers and the asks they call for.

    Threads: ``uplink-peers`` only (:class:`~.peers.PeerIntake` calls every method from
    its thread; the intake passes its own connection's news on to it). :meth:`stats` may
    be read from any thread: it copies plain counters.
    """

    def __init__(self, floors: Mapping[str, int] | None = None) -> None:
        self._peers: dict[str, _Peer] = {device: _Peer(seq) for device, seq in (floors or {}).items()}
        self._dirty: dict[str, int] = {}
        self._next_any = 0.0  # the site-wide pace
        #: Counts since start.
        self.asked = 0
        self.asked_seqs = 0
        self.probes = 0
        self.given_up = 0
        #: gaps noticed since start: the broker loses messages, so quiet peers are probed too
        self.gaps_seen = 0

    # -- news ---------------------------------------------------------------------------

    def seen(self, device: str, seq: int, *, now: float) -> None:
        """A checked event of peer ``device`` with this ``seq`` (kept or not)."""
        peer = self._peers.get(device)
        if peer is None:
            peer = self._peers[device] = _Peer(max(0, seq - 1 - HISTORY))
        peer.heard = True
        peer.quiet_at = now + QUIET_S
        if seq <= peer.floor or seq in peer.above:
            return
        if seq != peer.floor + 1:
            peer.above.add(seq)
            if peer.gap_at is None:
                peer.gap_at = now
                self.gaps_seen += 1
            if len(peer.above) > MAX_ABOVE:
                self._give_up(device, peer, now)
            return
        self._advance(device, peer, seq, now)

    def connected(self, *, now: float) -> None:
        """This station (re)connected: every known peer not heard within the grace is probed."""
        for peer in self._peers.values():
            self._mark(peer, now)

    def online(self, device: str, *, now: float) -> None:
        """Peer ``device`` said ``online`` (it (re)connected and subscribed to its commands)."""
        peer = self._peers.get(device)
        if peer is not None:  # a peer never heard has no floor to ask from; its events will come
            self._mark(peer, now)

    def offline(self, device: str) -> None:
        """Peer ``device`` said ``offline``: no quiet probe (its ``online`` marks it again)."""
        peer = self._peers.get(device)
        if peer is not None:
            peer.quiet_at = None

    # -- the asks -----------------------------------------------------------------------

    def due(self, *, now: float) -> list[tuple[str, int, int]]:
        """The asks to make now, ``(device, from_seq, to_seq)``, within the site-wide pace."""
        asks = []
        for device, peer in self._peers.items():
            if now < self._next_any:
                break
            ask = self._ask(peer, now)
            if ask is None:
                continue
            first, last = ask
            asks.append((device, first, last))
            self.asked += 1
            self.asked_seqs += last - first + 1
            peer.next_ask = now + min(MAX_WAIT_S, ASK_WAIT_S * 2**peer.attempts)
            peer.attempts += 1
            # At most ASKS_PER_S a second, in bursts of up to a second's worth.
            step = 1.0 / ASKS_PER_S
            self._next_any = max(self._next_any, now - 1.0 + step) + step
        return asks

    def next_due(self) -> float | None:
        """When (monotonic) :meth:`due` may have something to ask, or None."""
        times = []
        for peer in self._peers.values():
            if peer.above and peer.gap_at is not None:
                times.append(max(peer.gap_at + GRACE_S, peer.next_ask))
            if peer.probe_at is not None:
                times.append(peer.probe_at)
            if peer.quiet_at is not None and self.gaps_seen:
                times.append(peer.quiet_at)
            if peer.probe_to is not None and peer.floor >= peer.probe_to:
                times.append(0.0)  # the last probe came back whole: ask on at once
        return max(min(times), self._next_any) if times else None

    def _ask(self, peer: _Peer, now: float) -> tuple[int, int] | None:
        first = peer.floor + 1
        if peer.above and peer.gap_at is not None and now >= max(peer.gap_at + GRACE_S, peer.next_ask):
            return first, min(min(peer.above) - 1, peer.floor + CHUNK)
        if peer.probe_to is not None and peer.floor >= peer.probe_to:
            # The last probe came back whole: there may be more.
            peer.probe_to = peer.floor + CHUNK
            self.probes += 1
            return first, peer.probe_to
        if peer.probe_at is not None and now >= peer.probe_at:
            peer.probe_at = None
            if not peer.heard and not peer.above:  # heard since the mark: a gap is asked as a gap
                return self._probe(peer)
        if peer.quiet_at is not None and self.gaps_seen and now >= peer.quiet_at:
            peer.quiet_at = None
            if not peer.above:
                return self._probe(peer)
        return None

    def _probe(self, peer: _Peer) -> tuple[int, int]:
        peer.probe_to = peer.floor + CHUNK
        self.probes += 1
        return peer.floor + 1, peer.probe_to

    # -- the floors ---------------------------------------------------------------------

    def floor(self, device: str) -> int | None:
        peer = self._peers.get(device)
        return None if peer is None else peer.floor

    def dirty(self) -> dict[str, int]:
        """The floors raised since :meth:`saved`, to be stored with the rows that raised them."""
        return dict(self._dirty)

    def saved(self, floors: Mapping[str, int]) -> None:
        """These floors are on disk."""
        for device, seq in floors.items():
            if self._dirty.get(device) == seq:
                del self._dirty[device]

    def stats(self) -> dict:
        """For the health report: asks made, and the gaps open now."""
        peers = list(self._peers.values())
        return {
            "asked": self.asked,
            "asked_seqs": self.asked_seqs,
            "probes": self.probes,
            "given_up": self.given_up,
            "gaps_seen": self.gaps_seen,
            "gaps_open": sum(1 for p in peers if p.above),
            "peers": len(peers),
        }

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return ((device, peer.floor) for device, peer in self._peers.items())

    # -- inside -------------------------------------------------------------------------

    def _mark(self, peer: _Peer, now: float) -> None:
        peer.heard = False
        peer.probe_at = now + PROBE_GRACE_S
        peer.probe_to = None
        peer.next_ask = 0.0
        peer.attempts = 0

    def _advance(self, device: str, peer: _Peer, seq: int, now: float) -> None:
        peer.floor = seq
        while peer.floor + 1 in peer.above:
            peer.floor += 1
            peer.above.discard(peer.floor)
        self._dirty[device] = peer.floor
        # The next gap up (if any) gets its own grace and is asked for without backoff.
        peer.gap_at = now if peer.above else None
        peer.next_ask, peer.attempts = 0.0, 0

    def _give_up(self, device: str, peer: _Peer, now: float) -> None:
        lowest = min(peer.above)
        missing = lowest - peer.floor - 1
        self.given_up += missing
        log.error(
            "peers: gave up %d events of %s (seqs %d..%d): %d seen above them",
            missing,
            device,
            peer.floor + 1,
            lowest - 1,
            len(peer.above),
        )
        peer.above.discard(lowest)
        self._advance(device, peer, lowest, now)
