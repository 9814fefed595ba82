"""A large command sent in chunks (``{p}/cmd/manifest``): parts in, the whole text out.

A supplier's manifest of 50,000 codes is a few megabytes of JSON, more than one
MQTT command should carry. The sender cuts the manifest's JSON text into parts
and sends each as ``{"bill_code", "chunk": i, "chunks": n, "sha256", "part"}``,
``sha256`` being that of the whole text (UTF-8). Parts may come in any order and
more than once; when all are here and the digest matches, the whole text is handed
over. Held in memory only, bounded, and dropped when stale: a sender whose upload
broke off starts it again.

>>> import hashlib
>>> text = '{"bill_code": "DN1"}'
>>> digest = hashlib.sha256(text.encode()).hexdigest()
>>> chunks = Chunks()
>>> chunks.add({"bill_code": "DN1", "chunk": 1, "chunks": 2, "sha256": digest, "part": text[10:]}, now=0.0)
(None, {'bill_code': 'DN1', 'received': 1, 'chunks': 2})
>>> chunks.add({"bill_code": "DN1", "chunk": 0, "chunks": 2, "sha256": digest, "part": text[:10]}, now=1.0)[0]
'{"bill_code": "DN1"}'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The whole of one upload may be at most this large ...
MAX_TOTAL_BYTES = 64 << 20
#: ... in at most this many parts ...
MAX_CHUNKS = 1024
#: ... with at most this many uploads under way at once ...
MAX_UPLOADS = 4
#: ... each dropped this long after its last part arrived.
STALE_S = 600.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ChunkError(ValueError):
    """A part refused; ``field`` names what was wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class _Upload:
    chunks: int
    parts: dict[int, str] = field(default_factory=dict)
    size: int = 0
    last: float = 0.0


class Chunks:
    """Uploads under way. Threads: only the uplink thread calls :meth:`add`."""

    def __init__(self) -> None:
        self._uploads: dict[tuple[str, str], _Upload] = {}

    def add(self, body: Mapping, *, now: float) -> tuple[str | None, dict]:
        """Take one part: ``(the whole text, progress)`` once it is complete, else ``(None, progress)``."""
        bill, index, count, digest, part = _read(body)
        self._drop_stale(now)
        key = (bill, digest)
        upload = self._uploads.get(key)
        if upload is None:
            if len(self._uploads) >= MAX_UPLOADS:
                raise ChunkError("bill_code", f"{MAX_UPLOADS} uploads are under way; finish one or wait {STALE_S:g} s")
            upload = self._uploads[key] = _Upload(chunks=count)
        if count != upload.chunks:
            raise ChunkError("chunks", f"this upload has {upload.chunks} parts, not {count}")
        if index not in upload.parts:
            upload.size += len(part.encode())
            if upload.size > MAX_TOTAL_BYTES:
                del self._uploads[key]
                raise ChunkError("part", f"the upload passed {MAX_TOTAL_BYTES} bytes; dropped")
            upload.parts[index] = part
        upload.last = now
        progress = {"bill_code": bill, "received": len(upload.parts), "chunks": count}
        if len(upload.parts) < count:
            return None, progress
        del self._uploads[key]
        text = "".join(upload.parts[n] for n in range(count))
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            raise ChunkError("sha256", "the parts put together do not match sha256; send the upload again")
        return text, progress

    def _drop_stale(self, now: float) -> None:
        for key in [key for key, upload in self._uploads.items() if now - upload.last > STALE_S]:
            del self._uploads[key]


def _read(body: Mapping) -> tuple[str, int, int, str, str]:
    unknown = sorted(set(body) - {"bill_code", "chunk", "chunks", "sha256", "part"})
    if unknown:
        raise ChunkError(unknown[0], "unknown field; a part has bill_code, chunk, chunks, sha256, part")
    bill = body.get("bill_code")
    if not isinstance(bill, str) or not bill or len(bill) > 64 or not bill.isprintable():
        raise ChunkError("bill_code", "must be the manifest's bill code (printable, 1 to 64 characters)")
    count = body.get("chunks")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CHUNKS:
        raise ChunkError("chunks", f"must be a whole number from 1 to {MAX_CHUNKS}")
    index = body.get("chunk")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ChunkError("chunk", f"must be a whole number from 0 to {count - 1}")
    digest = body.get("sha256")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ChunkError("sha256", "must be the sha256 of the whole manifest text, 64 lowercase hex digits")
    part = body.get("part")
    if not isinstance(part, str):
        raise ChunkError("part", "must be a string: a slice of the manifest's JSON text")
    return bill, index, count, digest, part
