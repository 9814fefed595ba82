"""The site's other stations: what they moved, and how it counts in this station's decisions.

Each station publishes its scans; the uplink's peer intake (:mod:`agent.sinks.uplink.peers`)
checks every peer event's hash and hands the ones that change a code's state (:func:`kept`)
to :func:`store`, which writes them to ``peer_events`` on the intake's own connection:
idempotent by ``event_id``, append-only (triggers), and chained row to row
(:func:`chain_hash`) so that :func:`check` finds a row altered or deleted. The table is
outside this device's hash chain: it records what others said, not what this station did.

**The site's state of a code** is this station's ``code_state`` (a :class:`State`) plus
a :class:`Tally` of the peers' movements, counted with signs: a dispense or use +1 out, a
customer return -1; a receive +1 held, a return to the supplier -1; a void undoes the
movement it voids. :func:`combine` adds the two (clamped) for :func:`~agent.ledger.rules.judge`,
and names a peer's scan by a negative id (``-peer_events.id``); :func:`local_part` takes
the peers' share back out of the state an accepted scan leaves, so ``code_state`` keeps
this station's own share. Exact when the site's movements of a code are in a legal order
(each return after a sale); a return accepted with nothing out (lifecycle ``warn``/``off``)
counts -1 at the peers that hear of it and 0 here.

>>> t = fold([(1, "dispense", "accepted")])
>>> t
Tally(out=1, held=0, destroyed=0, last_out=1, last_in=None, last_destroy=None)
>>> combine(State(), t)
State(out_count=1, out_id=-1, in_held=0, in_id=None, destroyed_id=None)
>>> fold([(1, "dispense", "accepted"), (2, "return_in", "accepted")]).out
0
>>> fold([(1, "receive", "accepted"), (2, "receive", "void")]).held
0

A customer return here of a code a peer sold: the site's count goes to 0, and this
station keeps -1 as its own share:

>>> site = combine(State(), t)
>>> local_part(RULES["return_in"].then(site, 9), State(), t)
State(out_count=-1, out_id=None, in_held=0, in_id=None, destroyed_id=None)
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import orjson

from agent.ledger.rules import RULES, State

#: Movements that change a code's state (a stock check changes nothing).
MOVING = ("receive", "dispense", "use", "return_in", "return_out", "destroy")
#: What each movement adds to (out, held, destroyed).
DELTAS: dict[str, tuple[int, int, int]] = {
    "receive": (0, 1, 0),
    "dispense": (1, 0, 0),
    "use": (1, 0, 0),
    "return_in": (-1, 0, 0),
    "return_out": (0, -1, 0),
    "destroy": (0, 0, 1),
}
#: Verdicts of the rows kept: an accepted movement, and a void of one (it counts negative).
UNDOING = ("void", "reversal")
#: The first row's ``chain`` links to this.
CHAIN_GENESIS = "0" * 64
#: Columns of a peer row, in the order :func:`chain_hash` covers them.
COLUMNS = ("event_id", "device_id", "site_id", "seq", "ts", "movement", "verdict", "code", "product_id", "hash")


class Tally(NamedTuple):
    """The peers' movements of one code, counted with signs; ``last_*`` are ``peer_events`` ids."""

    out: int = 0
    held: int = 0
    destroyed: int = 0
    #: the last accepted dispense or use
    last_out: int | None = None
    #: the last accepted receive
    last_in: int | None = None
    #: the last accepted destruction
    last_destroy: int | None = None


NONE = Tally()


def kept(event: Mapping) -> bool:
    """Whether a peer's (hash-checked) event changes a code's state, and so is stored.

    >>> kept({"verdict": "accepted", "movement": "dispense", "code": "81234567890123456789"})
    True
    >>> kept({"verdict": "duplicate", "movement": "dispense", "code": "81234567890123456789"})
    False
    >>> kept({"verdict": "accepted", "movement": "check", "code": "81234567890123456789"})
    False
    """
    if not event.get("code") or event.get("movement") not in MOVING:
        return False
    return event.get("verdict") == "accepted" or event.get("verdict") in UNDOING


def fold(rows: Iterable[tuple[int, str, str]]) -> Tally:
    """The tally of a code's peer rows ``(id, movement, verdict)``, in id order."""
    out = held = destroyed = 0
    last_out = last_in = last_destroy = None
    for row_id, movement, verdict in rows:
        d_out, d_held, d_destroyed = DELTAS[movement]
        sign = -1 if verdict in UNDOING else 1
        out, held, destroyed = out + sign * d_out, held + sign * d_held, destroyed + sign * d_destroyed
        if sign > 0:
            if d_out > 0:
                last_out = row_id
            elif d_held > 0:
                last_in = row_id
            elif d_destroyed:
                last_destroy = row_id
    return Tally(out, held, destroyed, last_out, last_in, last_destroy)


def combine(local: State, tally: Tally) -> State:
    """The site's state of a code: this station's ``local`` share plus the peers' ``tally``.

    An id names a local scan (positive) or a peer row (negative): the local one while it
    still counts, the peer's otherwise.

    >>> combine(State(1, 5, 0, None, None), Tally(out=1, last_out=2)).out_count
    2
    >>> combine(State(in_held=1, in_id=4), Tally(held=-1)).in_held
    0
    """
    if tally == NONE:
        return local
    out_id = local.out_id
    if tally.last_out is not None and (local.out_count <= 0 or out_id is None):
        out_id = -tally.last_out
    in_id = local.in_id
    if tally.last_in is not None and (local.in_held <= 0 or in_id is None):
        in_id = -tally.last_in
    destroyed_id = local.destroyed_id
    if destroyed_id is None and tally.destroyed > 0 and tally.last_destroy is not None:
        destroyed_id = -tally.last_destroy
    return State(
        out_count=max(0, local.out_count + tally.out),
        out_id=out_id,
        in_held=min(1, max(0, local.in_held + tally.held)),
        in_id=in_id,
        destroyed_id=destroyed_id,
    )


def local_part(after: State, local: State, tally: Tally) -> State:
    """This station's share of the site state ``after`` an accepted scan: the peers' counts
    taken out, and a peer's id (negative) replaced by the local one it stood in for."""
    if tally == NONE:
        return after

    def own(new: int | None, old: int | None) -> int | None:
        return old if new is not None and new < 0 else new

    return State(
        out_count=after.out_count - tally.out,
        out_id=own(after.out_id, local.out_id),
        in_held=after.in_held - tally.held,
        in_id=own(after.in_id, local.in_id),
        destroyed_id=own(after.destroyed_id, local.destroyed_id),
    )


def tally(conn: sqlite3.Connection, code: str, *, before: int | None = None) -> Tally:
    """The peers' tally of ``code`` (a probe of the ``peer_events_code`` index and one of
    ``peer_packs``), or only of the rows before id ``before``. A code inside a pack a peer
    received counts that pack's rows too: received with it, voided or returned with it."""
    rows = conn.execute(_TALLY, {"code": code, "before": _NO_LIMIT if before is None else before}).fetchall()
    return fold(tuple(r) for r in rows) if rows else NONE


def row(conn: sqlite3.Connection, peer_id: int) -> sqlite3.Row | None:
    """A peer row by its id (a negative id in a :class:`State`, turned positive)."""
    return conn.execute("SELECT * FROM peer_events WHERE id = ?", (peer_id,)).fetchone()


def chain_hash(prev: str, row: Mapping) -> str:
    """SHA-256 of the row before's chain and this row's :data:`COLUMNS` (compact JSON list).

    >>> len(chain_hash(CHAIN_GENESIS, dict.fromkeys(COLUMNS)))
    64
    """
    return hashlib.sha256(prev.encode() + orjson.dumps([row[c] for c in COLUMNS])).hexdigest()


class Conflict(NamedTuple):
    """A peer's accepted scan that the site's count says was a duplicate of one accepted here."""

    alarm_id: int
    ts: str
    code: str
    local: dict
    peer: dict

    def record(self) -> dict:
        return {"code": self.code, "local": self.local, "peer": self.peer}

    def detail(self) -> str:
        local, peer = self.local, self.peer
        return (
            f"{peer['movement']} of {self.code} at {peer['device_id']} ({peer['ts']}, event {peer['event_id']})"
            f" conflicts with its {local['movement']} here ({local['ts']}, event {local['event_id']}):"
            " both accepted while the stations did not hear each other"
        )


def store(
    conn: sqlite3.Connection,
    rows: Iterable[Mapping],
    *,
    device_id: str,
    received_ts: str,
    split_packs: Mapping[str, int] | None = None,
    floors: Mapping[str, int] | None = None,
) -> tuple[int, list[Conflict]]:
    """Store peer rows (dicts of :data:`COLUMNS`) not stored yet, in one transaction; returns
    how many were new and the conflicts they raised, each recorded as a ``conflict`` alarm
    in the same transaction (so a crash loses neither, and a repeat raises none).

    ``floors`` (``{device_id: seq}``, every seq of that peer up to it seen) raise
    ``peer_floors`` in the same transaction, so a floor is never on disk ahead of the rows
    it covers; ``rows`` may then be empty.

    The intake's connection only (one writer of ``peer_events``); the pipeline's decisions
    serialise with it on SQLite's write lock, so a scan either saw a peer row or was
    accepted before it arrived, and then the row's arrival finds it.
    """
    split_packs = split_packs or {}
    new = 0
    conflicts: list[Conflict] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        last = conn.execute("SELECT chain FROM peer_events ORDER BY id DESC LIMIT 1").fetchone()
        prev = CHAIN_GENESIS if last is None else last[0]
        for peer in rows:
            values = {c: peer.get(c) for c in COLUMNS}
            chain = chain_hash(prev, values)
            cursor = conn.execute(_INSERT, {**values, "received_ts": received_ts, "chain": chain})
            if not cursor.rowcount:
                continue  # stored already: a redelivery, a resend
            new += 1
            prev = chain
            inner = tuple(peer.get("pack_codes") or ())
            if inner:
                conn.executemany(_PACK, [(code, values["code"]) for code in inner])
            conflict = _conflict(conn, cursor.lastrowid, values, device_id, received_ts, split_packs, inner)
            if conflict is not None:
                conflicts.append(conflict)
        if floors:
            conn.executemany(_FLOOR, [(device, seq, received_ts) for device, seq in floors.items()])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return new, conflicts


def _conflict(
    conn: sqlite3.Connection,
    peer_id: int,
    peer: Mapping,
    device_id: str,
    ts: str,
    split_packs: Mapping[str, int],
    inner: tuple[str, ...] = (),
) -> Conflict | None:
    """A ``conflict`` alarm if the peer's accepted dispense (use) or receive finds the code,
    or for a pack one of the codes inside it, already out (held) at the site, with this
    station's own accepted scan counted in it (the first such code: one alarm a peer row)."""
    movement = peer["movement"]
    if peer["verdict"] != "accepted" or movement not in ("dispense", "use", "receive"):
        return None
    for code in (peer["code"], *inner):
        conflict = _conflict_of(conn, peer_id, peer, code, device_id, ts, split_packs)
        if conflict is not None:
            return conflict
    return None


def _conflict_of(
    conn: sqlite3.Connection,
    peer_id: int,
    peer: Mapping,
    code: str,
    device_id: str,
    ts: str,
    split_packs: Mapping[str, int],
) -> Conflict | None:
    movement = peer["movement"]
    found = conn.execute(_LOCAL_STATE, (code,)).fetchone()
    if found is None:
        return None
    local = State(*found)
    site = combine(local, tally(conn, code, before=peer_id))
    if movement == "receive":
        ours = local.in_id if local.in_held > 0 and site.in_held >= 1 else None
    else:
        allowed = split_packs.get(peer["product_id"] or "", 1)
        ours = local.out_id if local.out_count > 0 and site.out_count >= allowed else None
    if ours is None or ours < 0:
        return None
    scan = conn.execute(
        "SELECT event_id, seq, ts, device_id, movement FROM scans WHERE id = ? AND verdict = 'accepted'", (ours,)
    ).fetchone()
    if scan is None or scan["device_id"] != device_id:
        return None
    conflict = Conflict(
        alarm_id=0,
        ts=ts,
        code=code,
        local=dict(scan),
        peer={k: peer[k] for k in ("event_id", "seq", "ts", "device_id", "movement")},
    )
    cursor = conn.execute(
        "INSERT INTO alarms (ts, kind, detail, record) VALUES (?, 'conflict', ?, ?)",
        (ts, conflict.detail(), orjson.dumps(conflict.record(), option=orjson.OPT_SORT_KEYS).decode()),
    )
    return conflict._replace(alarm_id=cursor.lastrowid)


def floors(conn: sqlite3.Connection) -> dict[str, int]:
    """``{device_id: seq}``: how far each peer's events have been heard without a gap.

    >>> import sqlite3
    >>> from agent.ledger.schema import create_schema
    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> create_schema(conn)
    >>> _ = store(conn, [], device_id="kiosk-1", received_ts="t", floors={"kiosk-2": 7})
    >>> _ = store(conn, [], device_id="kiosk-1", received_ts="t", floors={"kiosk-2": 5})  # never lowered
    >>> floors(conn)
    {'kiosk-2': 7}
    """
    return {device: seq for device, seq in conn.execute("SELECT device_id, through_seq FROM peer_floors")}


def check(conn: sqlite3.Connection) -> list[str]:
    """What :func:`agent.ledger.chain.verify` finds wrong with ``peer_events``: a trigger
    missing (the table could be rewritten), a row missing in the middle (ids run 1..N),
    a row altered (its ``chain`` does not follow). A tail cut off, like the scans' own,
    is not seen here; the peers still hold those events (``cmd/resend``)."""
    problems = []
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    for action in ("update", "delete"):
        if f"peer_events_no_{action}" not in triggers:
            problems.append(f"peer_events: the no-{action} trigger is missing")
    prev, expected = CHAIN_GENESIS, 1
    for found in conn.execute(f"SELECT id, chain, {', '.join(COLUMNS)} FROM peer_events ORDER BY id"):
        if found["id"] != expected:
            problems.append(f"peer_events: rows {expected}..{found['id'] - 1} are missing")
            break
        if chain_hash(prev, found) != found["chain"]:
            problems.append(f"peer_events: row {found['id']} does not follow the row before (altered)")
            break
        prev, expected = found["chain"], expected + 1
    return problems


# A code's own peer rows, and those of every pack a peer received it in (``peer_packs``).
_TALLY = (
    "SELECT id, movement, verdict FROM peer_events WHERE code = :code AND id < :before"
    " UNION SELECT e.id, e.movement, e.verdict FROM peer_packs AS k JOIN peer_events AS e ON e.code = k.pack_code"
    " WHERE k.code = :code AND e.id < :before ORDER BY id"
)
_NO_LIMIT = 2**63 - 1
_PACK = "INSERT OR IGNORE INTO peer_packs (code, pack_code) VALUES (?, ?)"
_LOCAL_STATE = "SELECT out_count, out_id, in_held, in_id, destroyed_id FROM code_state WHERE code = ?"
# A floor only rises: a late copy of an older batch never lowers it.
_FLOOR = (
    "INSERT INTO peer_floors (device_id, through_seq, ts) VALUES (?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET through_seq = excluded.through_seq, ts = excluded.ts"
    " WHERE excluded.through_seq > peer_floors.through_seq"
)
_INSERT = (
    f"INSERT OR IGNORE INTO peer_events ({', '.join(COLUMNS)}, received_ts, chain)"
    f" VALUES ({', '.join(':' + c for c in COLUMNS)}, :received_ts, :chain)"
)

__all__ = ["RULES", "Conflict", "Tally", "check", "combine", "floors", "fold", "kept", "local_part", "store", "tally"]
