"""The runner freezes its startup heap, so garbage collections while scanning stay short
(bench/gc_pause.py measures them; the USB VM bench lost keys to them before)."""

import gc
import io

from agent.config import Config, FeedbackConfig, LedgerConfig
from agent.runner import Runner


def test_the_runner_freezes_what_it_built_before_reading_scans(tmp_path):
    gc.unfreeze()
    cfg = Config(ledger=LedgerConfig(str(tmp_path / "ledger.db")), feedback=FeedbackConfig("none"))
    out = io.StringIO()
    runner = Runner(cfg, out=out, stdin=io.BytesIO(b"81234567890123456789\n"))
    try:
        assert runner.run() == 0
        frozen = gc.get_freeze_count()
        # The whole interpreter's startup heap, the agent's modules included, not a handful.
        assert frozen > 10_000, frozen
        assert out.getvalue().split()[:2] == ["accepted", "81234567890123456789"]
    finally:
        gc.unfreeze()  # the rest of the test run collects as usual
