"""Prometheus text for ``GET /metrics``: what the API counted itself, and gauges read when asked.

>>> m = Metrics()
>>> m.heard("accepted", 0.004); m.heard("duplicate", 0.02); m.heard("double_read", None)
>>> text = m.render(gauges=[Gauge("scan_agent_outbox_depth", "Events not delivered yet.", [({}, 2)])])
>>> 'scan_agent_decisions_total{verdict="accepted"} 1' in text
True
>>> 'scan_agent_decision_latency_seconds_bucket{le="0.005"} 1' in text, 'le="+Inf"} 2' in text
(True, True)
>>> "scan_agent_outbox_depth 2" in text
True

Threads: :meth:`Metrics.heard` and :meth:`Metrics.render` run on the API's event loop thread only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.domain import ENTRIES, VERDICTS

#: Upper bounds of the read-to-commit histogram, in seconds: a scan is committed in a few
#: ms on a Pi with a healthy card; the top buckets catch a card that has started to stall.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Gauge:
    """One gauge family: ``samples`` are ``(labels, value)``; a None value is left out."""

    name: str
    help: str
    samples: Iterable[tuple[Mapping[str, str], float | None]]
    kind: str = "gauge"


@dataclass
class Metrics:
    """Counters the API keeps since start: verdicts, and read-to-commit latency of scans."""

    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*VERDICTS, "fault", *ENTRIES), 0))
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_count: int = 0
    latency_sum: float = 0.0

    def heard(self, verdict: str, latency_s: float | None) -> None:
        """Count one decision; ``latency_s`` (last byte read to commit) for a scan, None otherwise."""
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        if latency_s is None:
            return
        index = bisect_left(LATENCY_BUCKETS, latency_s)
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.latency_count += 1
        self.latency_sum += latency_s

    def render(self, gauges: Iterable[Gauge] = ()) -> str:
        """The exposition text (format 0.0.4) of the counters and ``gauges``."""
        lines = [
            "# HELP scan_agent_decisions_total Decisions committed since start (fault: not recorded), by verdict.",
            "# TYPE scan_agent_decisions_total counter",
        ]
        lines += [f'scan_agent_decisions_total{{verdict="{v}"}} {n}' for v, n in self.verdicts.items()]
        name = "scan_agent_decision_latency_seconds"
        lines += [
            f"# HELP {name} A scan's last byte read to its decision committed.",
            f"# TYPE {name} histogram",
        ]
        running = 0
        for bound, count in zip(LATENCY_BUCKETS, self.buckets, strict=True):
            running += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines += [
            f'{name}_bucket{{le="+Inf"}} {self.latency_count}',
            f"{name}_sum {self.latency_sum:.6f}",
            f"{name}_count {self.latency_count}",
        ]
        for gauge in gauges:
            lines += [f"# HELP {gauge.name} {gauge.help}", f"# TYPE {gauge.name} {gauge.kind}"]
            for labels, value in gauge.samples:
                if value is None:
                    continue
                tags = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{gauge.name}{{{tags}}} {_number(value)}" if tags else f"{gauge.name} {_number(value)}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
