"""What a scanned string is: a trace code, or a rejection with a stable reason.

Pure: text in, a :class:`TraceCode` or a :class:`Rejection` out. No I/O, no
config files, no clock, and nothing imported from the rest of the agent.

>>> parse(b"]C081234567890123456789\\r").product_id
'8123456'
>>> parse("6901234567892").reason
'product_barcode'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_BYTES = 512
GS = "\x1d"

#: Reject reasons. Stable: they are stored in the ledger and sent upstream.
REASONS = (
    "empty",
    "not_text",
    "too_long",
    "wrong_length",
    "not_numeric",
    "bad_prefix",
    "product_barcode",
    "gs1_bad_check",
    "gs1_malformed",
    "gs1_not_accepted",
)

# AIM symbology identifiers whose content is a GS1 element string.
GS1_SYMBOLOGIES = frozenset({"]C1", "]d2", "]Q3", "]e0", "]J1"})

#: An AIM symbology identifier: ``]``, a letter for the symbology, a modifier character.
AIM_PATTERN = r"\][A-Za-z][0-9A-Za-z]"
_AIM = re.compile(AIM_PATTERN)
_TERMINATORS = "\r\n\t"

# GS1 application identifiers we understand: AI -> (fixed length, or None for
# variable, max length). Unknown AIs make the string malformed rather than
# guessed at, because a wrong split would invent a serial number.
_GS1_AIS: dict[str, tuple[int | None, int]] = {
    "00": (18, 18),
    "01": (14, 14),
    "02": (14, 14),
    "10": (None, 20),
    "11": (6, 6),
    "12": (6, 6),
    "13": (6, 6),
    "15": (6, 6),
    "16": (6, 6),
    "17": (6, 6),
    "20": (2, 2),
    "21": (None, 20),
    "22": (None, 20),
    "240": (None, 30),
    "241": (None, 30),
    "30": (None, 8),
    "37": (None, 8),
    "710": (None, 20),
    "711": (None, 20),
    "712": (None, 20),
    "713": (None, 20),
    "714": (None, 20),
    **{str(n): (None, 90) for n in range(90, 100)},
}
_DATE_AIS = frozenset({"11", "12", "13", "15", "16", "17"})
_NUMERIC_AIS = frozenset({"00", "01", "02", "20", "30", "37"}) | _DATE_AIS
# GS1 "character set 82": the printable characters allowed in alphanumeric AIs.
_CSET82 = re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]*")
_BRACKETED = re.compile(r"\((\d{2,4})\)([^()]*)")


@dataclass(frozen=True)
class TraceCode:
    """A code that passed the offline checks.

    ``code`` is the canonical text that identifies the unit: the 20 digits for
    ``nmpa20``, ``(01)<gtin>(21)<serial>`` for ``gs1``.
    """

    kind: str
    code: str
    symbology: str | None = None
    product_id: str = ""
    serial: str = ""
    check: str = ""
    expiry: str | None = None
    lot: str | None = None
    ais: dict[str, str] = field(default_factory=dict, compare=False)

    valid = True
    reason = None


@dataclass(frozen=True)
class Rejection:
    """Why a scanned string is not a trace code.

    ``text`` is the input made printable (see :func:`escape`), so that a
    rejected read can still be stored and shown.
    """

    reason: str
    text: str
    detail: str = ""
    symbology: str | None = None

    valid = False
    kind = None
    code = None
    product_id = ""
    serial = ""


def parse(
    raw: bytes | str,
    *,
    leading_digits: Iterable[str] = ("8",),
    accept_gs1: bool = False,
) -> TraceCode | Rejection:
    """Check one scan against the trace-code rules.

    ``leading_digits`` are the allowed first digits of a 20-digit code;
    ``accept_gs1`` lets GS1 element strings (imported drugs) through.
    Never raises on any input.
    """
    if isinstance(raw, str):
        size = len(raw.encode("utf-8", "surrogatepass"))
        text: str | None = raw
    else:
        size = len(raw)
        text = _decode(raw)
    if size > MAX_BYTES:
        return Rejection("too_long", escape(raw[:64]) + "…", f"{size} bytes, limit {MAX_BYTES}")
    if text is None:
        return Rejection("not_text", escape(raw), "not valid UTF-8")
    text, symbology = _strip(text)
    if not text:
        return Rejection("empty", "", "nothing but terminators or spaces", symbology)
    if _CONTROL.search(text):
        return Rejection("not_text", escape(text), "control characters in the scan", symbology)
    if _looks_gs1(text, symbology, leading_digits):
        if not accept_gs1:
            return Rejection("gs1_not_accepted", escape(text), "GS1 codes are off for this station", symbology)
        return _parse_gs1(text, symbology)
    if not (text.isascii() and text.isdigit()):
        return Rejection("not_numeric", escape(text), "a trace code is 20 digits", symbology)
    if len(text) in (8, 12, 13) and _gtin_check_ok(text):
        return Rejection("product_barcode", text, "retail product barcode, scan the trace code", symbology)
    if len(text) != 20:
        return Rejection("wrong_length", text, f"{len(text)} digits, a trace code has 20", symbology)
    if text[0] not in set(leading_digits):
        return Rejection("bad_prefix", text, f"starts with {text[0]}", symbology)
    return TraceCode(
        kind="nmpa20",
        code=text,
        symbology=symbology,
        product_id=text[:7],
        serial=text[7:16],
        check=text[16:],
    )


def escape(raw: bytes | str) -> str:
    """Printable form of any input: non-printable characters as ``\\xNN``.

    >>> escape(b"12\\x00\\xff")
    '12\\\\x00\\\\xff'
    """
    as_bytes = isinstance(raw, bytes)
    if as_bytes:
        raw = raw.decode("latin-1")
    if _PLAIN.fullmatch(raw):  # the usual scan: printable ASCII, nothing to escape
        return raw
    if raw[-1:] == "\r" and _PLAIN.fullmatch(raw, 0, len(raw) - 1):
        return raw[:-1] + "\\x0d"  # a serial scan: the same, and its CR (not a character loop)
    out = []
    for ch in raw:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() and not (as_bytes and ord(ch) > 0x7E):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


_PLAIN = re.compile(r"[ -\[\]-~]*")


def gtin_check_digit(body: str) -> str:
    """The GS1 mod-10 check digit for the digits before it.

    >>> gtin_check_digit("690123456789")
    '2'
    """
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def _gtin_check_ok(digits: str) -> bool:
    return gtin_check_digit(digits[:-1]) == digits[-1]


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


#: C0 and C1 control characters, all but GS (0x1D), which separates GS1 fields.
_CONTROL = re.compile("[\x00-\x1c\x1e-\x1f\x7f-\x9f]")


def _strip(text: str) -> tuple[str, str | None]:
    """Drop one terminator run, surrounding spaces and an AIM prefix."""
    end = len(text)
    while end and text[end - 1] in _TERMINATORS:
        end -= 1
    text = text[:end].strip(" ")
    symbology = None
    if _AIM.match(text):
        symbology, text = text[:3], text[3:].strip(" ")
    return text, symbology


def _looks_gs1(text: str, symbology: str | None, leading_digits: Iterable[str]) -> bool:
    if symbology in GS1_SYMBOLOGIES or GS in text or text.startswith("("):
        return True
    # Unprefixed raw element string: only when it cannot be a 20-digit code
    # and does start with a GTIN.
    if len(text) == 20 and text.isdigit() and text[0] in set(leading_digits):
        return False
    return len(text) > 16 and text.startswith("01") and text[2:16].isdigit() and len(text) != 20


def _parse_gs1(text: str, symbology: str | None) -> TraceCode | Rejection:
    try:
        ais = _split_bracketed(text) if text.startswith("(") else _split_raw(text)
    except ValueError as problem:
        return Rejection("gs1_malformed", escape(text), str(problem), symbology)
    gtin = ais.get("01")
    if gtin is None:
        return Rejection("gs1_malformed", escape(text), "no GTIN (01)", symbology)
    if not _gtin_check_ok(gtin):
        return Rejection(
            "gs1_bad_check", escape(text), f"GTIN {gtin} check digit should be {gtin_check_digit(gtin[:-1])}", symbology
        )
    serial = ais.get("21")
    if not serial:
        return Rejection(
            "product_barcode", escape(text), "GS1 code without a serial (21), scan the unit's trace code", symbology
        )
    return TraceCode(
        kind="gs1",
        code=f"(01){gtin}(21){serial}",
        symbology=symbology,
        product_id=gtin,
        serial=serial,
        check=gtin[-1],
        expiry=ais.get("17"),
        lot=ais.get("10"),
        ais=ais,
    )


def _split_bracketed(text: str) -> dict[str, str]:
    ais: dict[str, str] = {}
    pos = 0
    for match in _BRACKETED.finditer(text):
        if match.start() != pos:
            raise ValueError(f"unexpected text at position {pos}")
        _store(ais, match.group(1), match.group(2))
        pos = match.end()
    if pos != len(text) or not ais:
        raise ValueError(f"unexpected text at position {pos}")
    return ais


def _split_raw(text: str) -> dict[str, str]:
    ais: dict[str, str] = {}
    text = text.lstrip(GS)
    pos = 0
    while pos < len(text):
        ai = next((text[pos : pos + n] for n in (2, 3) if text[pos : pos + n] in _GS1_AIS), None)
        if ai is None:
            raise ValueError(f"unknown application identifier at position {pos}")
        fixed = _GS1_AIS[ai][0]
        start = pos + len(ai)
        if fixed is not None:
            end = start + fixed
            value = text[start:end]
            pos = end + 1 if text[end : end + 1] == GS else end
        else:
            end = text.find(GS, start)
            end = len(text) if end < 0 else end
            value = text[start:end]
            pos = end + 1
        _store(ais, ai, value)
    return ais


def _store(ais: dict[str, str], ai: str, value: str) -> None:
    if ai not in _GS1_AIS:
        raise ValueError(f"unknown application identifier ({ai})")
    if ai in ais:
        raise ValueError(f"({ai}) appears twice")
    fixed, longest = _GS1_AIS[ai]
    if fixed is not None and len(value) != fixed:
        raise ValueError(f"({ai}) needs {fixed} characters, got {len(value)}")
    if not 0 < len(value) <= longest:
        raise ValueError(f"({ai}) needs 1 to {longest} characters, got {len(value)}")
    if ai in _NUMERIC_AIS and not (value.isascii() and value.isdigit()):
        raise ValueError(f"({ai}) must be digits")
    if ai in _DATE_AIS and not (1 <= int(value[2:4]) <= 12 and int(value[4:6]) <= 31):
        raise ValueError(f"({ai}) {value} is not a YYMMDD date")
    if not _CSET82.fullmatch(value):
        raise ValueError(f"({ai}) has characters GS1 does not allow")
    ais[ai] = value
