"""Turning per-frame sightings into scans: multi-frame agreement and re-arm.

A camera sees a pack in many frames. A code becomes a scan only once it has
decoded identically in ``agree_frames`` frames within ``agree_window_s``
seconds (one stray misdecode is never a scan), and the same code is not a scan
again until it has been out of sight for ``rearm_frames`` decoded frames or
``rearm_s`` seconds, whichever comes first (a pack held in view is one scan).

>>> a = Agreement(agree_frames=2, rearm_frames=3)
>>> a.frame({"A"}, now=0.00), a.frame({"A"}, now=0.03), a.frame({"A"}, now=0.06)
([], [Sighting(key='A', t_first=0.0, t_last=0.03)], [])
>>> [a.frame(set(), now=0.1 + n / 30) for n in range(3)]
[[], [], []]
>>> a.frame({"A"}, now=0.3), a.frame({"A"}, now=0.33)
([], [Sighting(key='A', t_first=0.3, t_last=0.33)])

Keys are anything hashable; the camera source uses (symbology, content).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sighting:
    """A code that agreed: seen first at ``t_first``, agreement reached at ``t_last``."""

    key: Hashable
    t_first: float
    t_last: float


@dataclass
class _Track:
    hits: list[float] = field(default_factory=list)  # times of recent frames with the code
    emitted: bool = False
    last_frame: int = 0
    last_seen: float = 0.0


class Agreement:
    """Feed it the codes of each decoded frame in order; it says which became scans."""

    def __init__(
        self,
        *,
        agree_frames: int = 2,
        agree_window_s: float = 1.0,
        rearm_frames: int = 15,
        rearm_s: float = 1.0,
    ) -> None:
        self.agree_frames = agree_frames
        self.agree_window_s = agree_window_s
        self.rearm_frames = rearm_frames
        self.rearm_s = rearm_s
        self.frames = 0
        self._tracks: dict[Hashable, _Track] = {}

    def frame(self, keys: Iterable[Hashable], now: float) -> list[Sighting]:
        """Record one decoded frame taken at ``now`` (monotonic seconds); return new scans."""
        self.frames += 1
        seen = dict.fromkeys(keys)  # a set that keeps the order the decoder found them in
        new: list[Sighting] = []
        for key in seen:
            track = self._tracks.setdefault(key, _Track())
            track.last_frame, track.last_seen = self.frames, now
            if track.emitted:
                continue
            track.hits = [t for t in track.hits if now - t <= self.agree_window_s]
            track.hits.append(now)
            if len(track.hits) >= self.agree_frames:
                track.emitted = True
                new.append(Sighting(key, track.hits[0], now))
                track.hits = []
        self._forget_absent(seen, now)
        return new

    def _forget_absent(self, seen: dict[Hashable, None], now: float) -> None:
        # Forgetting an emitted code re-arms it; forgetting a code that never
        # agreed drops hits too old to count, so memory stays bounded.
        for key in [k for k in self._tracks if k not in seen]:
            track = self._tracks[key]
            absent_frames = self.frames - track.last_frame
            absent_s = now - track.last_seen
            if track.emitted:
                if absent_frames >= self.rearm_frames or absent_s >= self.rearm_s:
                    del self._tracks[key]
            elif absent_s > self.agree_window_s:
                del self._tracks[key]

    @property
    def tracked(self) -> int:
        """How many codes are remembered now (for diagnostics)."""
        return len(self._tracks)
