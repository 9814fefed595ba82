"""The device's MQTT topics, with ``{p}`` = ``{topic_prefix}/{site}/{device}``.

``{p}/events`` (scan events), ``{p}/documents`` (documents opened and closed),
``{p}/status`` (retained ``online``/``offline``, ``offline`` as the Will),
``{p}/health``, ``{p}/cmd/#`` (in), ``{p}/reply`` (out), ``{p}/receipt`` (in, with
``[mqtt] receipts = true``: what the back end has stored), ``{p}/alarms`` (out: a
``conflict`` with another station) and, with ``[site] peers = true``, the site's
stations' events, document events and status ``{prefix}/{site}/+/events``,
``+/documents``, ``+/status`` (in), and their ``cmd/resend`` (out: catching up).

>>> Topics("trace/v1", "site-01", "kiosk-7").events
'trace/v1/site-01/kiosk-7/events'
>>> Topics("trace/v1", "site-01", "kiosk-7").documents
'trace/v1/site-01/kiosk-7/documents'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """The device's topics under ``{prefix}/{site}/{device}``. Frozen, so any thread may use it."""

    prefix: str
    site: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def documents(self) -> str:
        return f"{self.base}/documents"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def commands(self) -> str:
        return f"{self.base}/cmd/#"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    @property
    def receipt(self) -> str:
        return f"{self.base}/receipt"

    @property
    def alarms(self) -> str:
        return f"{self.base}/alarms"

    @property
    def site_events(self) -> str:
        """Every station's events at this site, this one's included (which it ignores)."""
        return f"{self.prefix}/{self.site}/+/events"

    @property
    def site_documents(self) -> str:
        """Every station's document events at this site (their seqs count for catch-up)."""
        return f"{self.prefix}/{self.site}/+/documents"

    @property
    def site_status(self) -> str:
        """Every station's retained ``online``/``offline`` at this site."""
        return f"{self.prefix}/{self.site}/+/status"

    def peer_command(self, device: str, name: str) -> str:
        """Another station's command topic.

        >>> Topics("trace/v1", "site-01", "kiosk-7").peer_command("kiosk-2", "resend")
        'trace/v1/site-01/kiosk-2/cmd/resend'
        """
        return f"{self.prefix}/{self.site}/{device}/cmd/{name}"

    def site_message(self, topic: str) -> tuple[str, str] | None:
        """``(device, kind)`` for another station's ``events``, ``documents`` or ``status``.

        >>> t = Topics("trace/v1", "site-01", "kiosk-7")
        >>> t.site_message("trace/v1/site-01/kiosk-2/documents"), t.site_message("trace/v1/site-01/kiosk-2/status")
        (('kiosk-2', 'documents'), ('kiosk-2', 'status'))
        >>> t.site_message("trace/v1/site-01/kiosk-7/status"), t.site_message("trace/v1/site-01/kiosk-2/reply")
        (None, None)
        """
        head = f"{self.prefix}/{self.site}/"
        if not topic.startswith(head):
            return None
        device, _, kind = topic[len(head) :].partition("/")
        if not device or device == self.device or kind not in ("events", "documents", "status"):
            return None
        return device, kind

    def peer(self, topic: str) -> str | None:
        """The device a message on ``topic`` comes from, if it is another station's events.

        >>> t = Topics("trace/v1", "site-01", "kiosk-7")
        >>> t.peer("trace/v1/site-01/kiosk-2/events"), t.peer("trace/v1/site-01/kiosk-7/events")
        ('kiosk-2', None)
        >>> t.peer("trace/v1/site-02/kiosk-2/events")
        """
        head = f"{self.prefix}/{self.site}/"
        if not topic.startswith(head) or not topic.endswith("/events"):
            return None
        device = topic[len(head) : -len("/events")]
        return None if not device or "/" in device or device == self.device else device

    def command_name(self, topic: str) -> str:
        """The command a message on ``topic`` asks for.

        >>> Topics("trace/v1", "site-01", "kiosk-7").command_name("trace/v1/site-01/kiosk-7/cmd/set")
        'set'
        """
        return topic.removeprefix(self.base + "/cmd/")
