"""Device topics as the collector reads them: ``{prefix}/{site}/{device}/{kind}``.

>>> Topic.parse("trace/v1/site-01/kiosk-7/events", "trace/v1")
Topic(prefix='trace/v1', site='site-01', device='kiosk-7', kind='events')
>>> Topic.parse("trace/v1/site-01/kiosk-7/cmd/resend", "trace/v1") is None
True
>>> Topic("trace/v1", "site-01", "kiosk-7", "events").sibling("receipt")
'trace/v1/site-01/kiosk-7/receipt'
>>> subscriptions("trace/v1", share="collectors")[0]
'$share/collectors/trace/v1/+/+/events'
"""

from __future__ import annotations

from dataclasses import dataclass

#: What the collector subscribes to under each device.
KINDS = ("events", "documents", "health", "status")


def subscriptions(prefix: str, share: str | None = None) -> list[str]:
    """The topic filters, as a shared subscription in group ``share`` when given."""
    front = f"$share/{share}/" if share else ""
    return [f"{front}{prefix}/+/+/{kind}" for kind in KINDS]


@dataclass(frozen=True)
class Topic:
    """One device topic, split. Frozen: any thread may use it."""

    prefix: str
    site: str
    device: str
    kind: str

    @classmethod
    def parse(cls, topic: str, prefix: str) -> Topic | None:
        """The parts of ``topic``, or None if it is not ``{prefix}/{site}/{device}/{kind}`` of :data:`KINDS`."""
        if not topic.startswith(prefix + "/"):
            return None
        parts = topic[len(prefix) + 1 :].split("/")
        if len(parts) != 3 or parts[2] not in KINDS or not parts[0] or not parts[1]:
            return None
        return cls(prefix, parts[0], parts[1], parts[2])

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    def sibling(self, suffix: str) -> str:
        """Another topic of the same device: ``receipt``, ``cmd/resend``."""
        return f"{self.base}/{suffix}"
