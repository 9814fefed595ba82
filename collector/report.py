"""``scan-collector report``: per device, what is stored, what is missing, what is wrong.

:func:`report` reads it from the database; :func:`render` is the text form.

>>> print(render({"devices": [], "quarantine": {}, "conflicts": 0}))
no devices yet
quarantine: none
"""

from __future__ import annotations

import psycopg

#: Events per second are counted over this many last seconds of storing.
RATE_WINDOW_S = 60


def report(conn: psycopg.Connection) -> dict:
    """``{"devices": [...], "quarantine": {reason: n}, "conflicts": n}``; each device has
    ``device_id``, ``site_id``, ``last_seq`` (highest seq stored), ``stored_through_seq``, ``stored``,
    ``gaps`` (open), ``missing`` (seqs in them), ``unclosed_gaps``, ``chain_breaks``, ``conflicts``,
    ``duplicates``, ``last_seen``, ``status``, ``events_per_second`` and ``open_gaps``
    (``{from_seq, to_seq, unclosed}`` each)."""
    devices = []
    rows = conn.execute(
        "SELECT d.device_id, d.site_id, d.max_seq, d.stored_through_seq, d.stored, d.duplicates,"
        " to_char(d.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), d.status,"
        " (SELECT count(*) FROM chain_breaks b WHERE b.device_id = d.device_id),"
        " (SELECT count(*) FROM conflicts c WHERE c.device_id = d.device_id OR c.other_device_id = d.device_id),"
        " (SELECT count(*) FROM events e WHERE e.device_id = d.device_id"
        "    AND e.received_at > clock_timestamp() - make_interval(secs => %s))"
        " FROM devices d ORDER BY d.site_id, d.device_id",
        (RATE_WINDOW_S,),
    ).fetchall()
    gaps: dict[str, list] = {}
    for device, start, end, unclosed in conn.execute(
        "SELECT device_id, from_seq, to_seq, unclosed FROM gaps WHERE closed_at IS NULL ORDER BY device_id, from_seq"
    ):
        gaps.setdefault(device, []).append((start, end, unclosed))
    for device, site, last, through, stored, dups, seen, status, breaks, conflicts, recent in rows:
        open_gaps = gaps.get(device, [])
        # Gaps the closer has not recorded yet are still gaps: the seqs stored say so.
        missing = max(0, last - through - _stored_after(conn, device, through)) if last > through else 0
        devices.append(
            {
                "device_id": device,
                "site_id": site,
                "last_seq": last,
                "stored_through_seq": through,
                "stored": stored,
                "gaps": max(len(open_gaps), 1 if missing else 0),
                "missing": missing,
                "unclosed_gaps": sum(1 for g in open_gaps if g[2]),
                "open_gaps": [{"from_seq": a, "to_seq": b, "unclosed": u} for a, b, u in open_gaps],
                "chain_breaks": breaks,
                "conflicts": conflicts,
                "duplicates": dups,
                "last_seen": seen,
                "status": status,
                "events_per_second": round(recent / RATE_WINDOW_S, 2),
            }
        )
    quarantine = dict(conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY reason"))
    conflicts = conn.execute("SELECT count(*) FROM conflicts").fetchone()[0]
    return {"devices": devices, "quarantine": quarantine, "conflicts": conflicts}


def _stored_after(conn: psycopg.Connection, device: str, through: int) -> int:
    return conn.execute(
        "SELECT count(DISTINCT seq) FROM events WHERE device_id = %s AND seq > %s", (device, through)
    ).fetchone()[0]


def render(data: dict) -> str:
    """The report as a table a person reads."""
    lines = []
    if not data["devices"]:
        lines.append("no devices yet")
    else:
        lines.append(
            f"{'site':<12} {'device':<16} {'last seq':>9} {'through':>9} {'stored':>9} {'missing':>8}"
            f" {'breaks':>6} {'confl':>5} {'ev/s':>7}  last seen"
        )
        for d in data["devices"]:
            lines.append(
                f"{d['site_id']:<12} {d['device_id']:<16} {d['last_seq']:>9} {d['stored_through_seq']:>9}"
                f" {d['stored']:>9} {d['missing']:>8} {d['chain_breaks']:>6} {d['conflicts']:>5}"
                f" {d['events_per_second']:>7}  {d['last_seen']}"
            )
            for gap in d["open_gaps"]:
                unclosed = "  (unclosed after every retry)" if gap["unclosed"] else ""
                lines.append(f"    open gap {gap['from_seq']}..{gap['to_seq']}{unclosed}")
    quarantine = ", ".join(f"{reason} {n}" for reason, n in data["quarantine"].items()) or "none"
    lines.append(f"quarantine: {quarantine}")
    if data["conflicts"]:
        lines.append(f"conflicts (a code dispensed on two devices): {data['conflicts']}")
    return "\n".join(lines)
