"""The delivery recorder alone, on a real ledger: group-committed, only what was acknowledged."""

import threading

from agent.ledger import connect
from agent.ledger.outbox import Outbox
from agent.sinks.uplink.health import Counters
from agent.sinks.uplink.recorder import Recorder
from tests.support.backlog import fill_ledger


def deliveries(path) -> list[tuple[int, int]]:
    conn = connect(path)
    try:
        return [tuple(r) for r in conn.execute("SELECT scan_id, reason_code FROM deliveries ORDER BY scan_id")]
    finally:
        conn.close()


def test_puback_successes_are_recorded_in_one_batch_then_released(tmp_path):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 3)
    counters = Counters()
    recorder = Recorder(counters)
    for scan_id, code in ((1, 0), (2, 0), (3, 0x10)):  # 0x10: "no matching subscribers", still a success
        recorder.put(scan_id, code)
    released: list[list[int]] = []
    thread = threading.Thread(target=recorder.run, args=(Outbox.open(path), released.append))
    thread.start()
    recorder.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert deliveries(path) == [(1, 0), (2, 0), (3, 0x10)]
    assert released[0] == [1, 2, 3]  # gathered into one commit
    assert counters.delivered == 3 and counters.last_puback is not None
