"""The catch-up's bookkeeping (agent.sinks.uplink.catchup): floors, gaps, probes, pace.

Times are monotonic seconds given by the test; what goes on the wire is in test_site.py.
"""

from agent.sinks.uplink import catchup
from agent.sinks.uplink.catchup import ASK_WAIT_S, CHUNK, GRACE_S, HISTORY, PROBE_GRACE_S, QUIET_S, CatchUp


def test_events_in_any_order_raise_the_floor_to_the_highest_contiguous_seq():
    c = CatchUp()
    for seq in (1, 3, 2, 2, 5):
        c.seen("k2", seq, now=0.0)
    assert c.floor("k2") == 3
    c.seen("k2", 4, now=0.1)
    assert c.floor("k2") == 5 and c.dirty() == {"k2": 5}
    c.saved({"k2": 5})
    assert c.dirty() == {}
    assert c.due(now=QUIET_S) == []  # no gap, no mark, not quiet long enough: nothing to ask


def test_a_gap_is_asked_for_after_the_grace_then_again_with_backoff_until_it_fills():
    c = CatchUp({"k2": 10})
    c.seen("k2", 14, now=0.0)
    assert c.due(now=GRACE_S - 0.1) == []
    assert c.due(now=GRACE_S) == [("k2", 11, 13)]
    assert c.due(now=GRACE_S + ASK_WAIT_S - 0.1) == []
    assert c.due(now=GRACE_S + ASK_WAIT_S) == [("k2", 11, 13)]
    assert c.due(now=GRACE_S + 2 * ASK_WAIT_S) == []  # the wait doubled
    assert c.due(now=GRACE_S + 3 * ASK_WAIT_S) == [("k2", 11, 13)]
    for seq in (11, 12, 13):
        c.seen("k2", seq, now=20.0)
    assert c.floor("k2") == 14 and c.stats()["gaps_open"] == 0 and c.stats()["asked"] == 3
    assert c.next_due() == 20.0 + QUIET_S  # only the quiet probe is left


def test_a_long_gap_is_asked_for_a_chunk_at_a_time():
    c = CatchUp({"k2": 0})
    c.seen("k2", 3 * CHUNK, now=0.0)
    assert c.due(now=GRACE_S) == [("k2", 1, CHUNK)]
    for seq in range(1, CHUNK + 1):
        c.seen("k2", seq, now=3.0)
    assert c.due(now=3.0 + GRACE_S) == [("k2", CHUNK + 1, 2 * CHUNK)]  # at once, no backoff


def test_a_peer_not_heard_since_the_station_reconnected_is_probed_once_and_a_full_chunk_asks_on():
    c = CatchUp({"quiet": 7, "talking": 3})
    c.connected(now=0.0)
    c.seen("talking", 4, now=0.5)
    assert c.due(now=PROBE_GRACE_S) == [("quiet", 8, 7 + CHUNK)]
    assert c.due(now=PROBE_GRACE_S + 20) == []  # a probe that brings nothing back is not repeated
    for seq in range(8, 8 + CHUNK):  # it came back whole: there may be more
        c.seen("quiet", seq, now=PROBE_GRACE_S + 1)
    assert c.due(now=PROBE_GRACE_S + 1) == [("quiet", 8 + CHUNK, 7 + 2 * CHUNK)]
    c.seen("quiet", 8 + CHUNK, now=PROBE_GRACE_S + 2)  # a short answer: the peer has no more
    assert c.due(now=PROBE_GRACE_S + 20) == []
    assert c.stats()["probes"] == 2


def test_a_peer_gone_quiet_is_probed_once_unless_it_said_offline_once_a_gap_was_seen():
    c = CatchUp()
    c.seen("k2", 1, now=0.0)
    c.seen("k3", 1, now=0.0)
    assert c.due(now=QUIET_S + 1) == [] and c.next_due() is None  # no loss seen: quiet costs nothing
    c.seen("k4", 5, now=0.0)  # k4's first seqs were lost on the way: this broker loses messages
    c.seen("k4", 1, now=0.0)
    c.seen("k2", 2, now=10.0)  # each event puts the quiet probe off
    c.offline("k3")
    c.seen("k4", 2, now=QUIET_S + 9)
    c.seen("k4", 3, now=QUIET_S + 9)
    c.seen("k4", 4, now=QUIET_S + 9)
    assert c.due(now=QUIET_S + 9) == []
    assert c.due(now=QUIET_S + 10) == [("k2", 3, 2 + CHUNK)]  # its last event may have been lost
    assert c.due(now=10 * QUIET_S) == [("k4", 6, 5 + CHUNK)]  # k4's own quiet spell; k2 not again
    assert c.due(now=20 * QUIET_S) == []  # once a quiet spell
    c.online("k3", now=400.0)  # back: marked, probed if not heard within the grace
    assert c.due(now=400.0 + PROBE_GRACE_S) == [("k3", 2, 1 + CHUNK)]


def test_a_peer_saying_online_is_probed_unless_heard_meanwhile():
    c = CatchUp({"k2": 5, "k3": 9})
    c.online("k2", now=0.0)
    c.online("k3", now=0.0)
    c.online("stranger", now=0.0)  # never heard: no floor to ask from
    c.seen("k3", 10, now=1.0)
    assert c.due(now=PROBE_GRACE_S) == [("k2", 6, 5 + CHUNK)]


def test_a_peer_first_heard_late_in_its_life_is_asked_back_only_so_far():
    c = CatchUp()
    c.seen("old", HISTORY + 50, now=0.0)
    assert c.floor("old") == 49
    assert c.due(now=GRACE_S) == [("old", 50, 49 + CHUNK)]


def test_asks_are_paced_across_the_site(monkeypatch):
    monkeypatch.setattr(catchup, "ASKS_PER_S", 4.0)
    c = CatchUp({f"k{n}": 0 for n in range(10)})
    for n in range(10):
        c.seen(f"k{n}", 2, now=0.0)
    first = c.due(now=GRACE_S)
    assert len(first) == 4
    assert c.due(now=GRACE_S) == []
    assert len(c.due(now=GRACE_S + 0.25)) == 1
    assert c.next_due() >= GRACE_S + 0.5


def test_too_many_seqs_waiting_above_a_gap_give_it_up(monkeypatch):
    monkeypatch.setattr(catchup, "MAX_ABOVE", 3)
    c = CatchUp({"k2": 0})
    for seq in (5, 6, 7, 9):
        c.seen("k2", seq, now=0.0)
    assert c.floor("k2") == 7 and c.stats()["given_up"] == 4
    assert c.due(now=GRACE_S) == [("k2", 8, 8)]  # the gap above it is still asked for


def test_the_intake_asks_nothing_and_sleeps_while_the_station_is_offline(tmp_path):
    """A gap due while the broker is away must not spin uplink-peers: it sleeps until the
    reconnection wakes it (and then every peer is marked and asked)."""
    from agent.sinks.uplink.peers import PeerIntake
    from agent.sinks.uplink.topics import Topics

    online = [False]
    sent = []
    intake = PeerIntake(
        tmp_path / "ledger.db",
        topics=Topics("trace/v1", "site-1", "kiosk-1"),
        site_id="site-1",
        publish=lambda topic, body: sent.append((topic, body)),
        connected_now=lambda: online[0],
    )
    intake.catchup = CatchUp({"kiosk-2": 3})
    intake.catchup.seen("kiosk-2", 6, now=0.0)
    intake.catchup.saved(intake.catchup.dirty())
    assert intake._sleep() is None  # offline: no timer at all
    online[0] = True
    assert intake._sleep() == 0.0  # the gap is long overdue
