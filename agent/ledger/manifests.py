"""Supplier manifests: a delivery's bill, its lines, and every code with its level and parent.

Pure: :func:`read_manifest` checks parsed JSON and returns a :class:`Manifest`, or
raises :class:`ManifestError` naming the row and the field. Nothing is half-read: the
whole manifest is accepted or none of it. :func:`read_manifest_file` is the only
function that touches a file. The format is described in ``docs/manifest.md``.

>>> case, unit = "81234560000000010001", "81234570000000010002"
>>> m = read_manifest({"bill_code": "DN00000001", "supplier": "Acme", "ship_date": "2026-11-20",
...     "lines": [{"product_id": "8123457", "name": "Amoxicillin", "batch": "B1",
...                "expiry": "2028-01-31", "quantity": 1}],
...     "codes": [{"code": case, "level": "case", "parent": None},
...               {"code": unit, "level": "unit", "parent": case}]})
>>> m.units_under(case)
('81234570000000010002',)
>>> m.line_for(unit).batch
'B1'
>>> len(m.digest())
64
>>> read_manifest({"bill_code": "DN1", "supplier": "Acme", "ship_date": "2026-11-20", "lines": [],
...     "codes": [{"code": unit, "level": "pallet", "parent": None}]})
Traceback (most recent call last):
agent.ledger.manifests.ManifestError: codes[0], field level: 'pallet' is not allowed; allowed: case, middle, unit
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from agent.codes import parse

#: Packaging levels, largest first: a case (箱码) holds middle packs (中包码) or units (小包码).
LEVELS = ("case", "middle", "unit")
#: The levels a code of each level may have as its parent (None: no parent).
PARENT_LEVELS = {"case": (None,), "middle": ("case",), "unit": ("case", "middle", None)}
#: Bill codes, batches and the supplier are refused beyond these lengths.
MAX_TEXT = 64
MAX_NAME = 200
#: Far above any real delivery; a guard against a runaway file, not a business rule.
MAX_CODES = 5_000_000
MAX_QUANTITY = MAX_CODES
#: The columns of a codes CSV (header row required; ``code``, ``level`` and ``parent`` must be there).
CSV_COLUMNS = ("code", "level", "parent", "batch", "expiry", "ratio", "partial")
CSV_REQUIRED = ("code", "level", "parent")

_PRODUCT = re.compile(r"[0-9]{7}|[0-9]{14}")
_PLAIN_CODE = re.compile(r"[0-9]{1,64}").fullmatch  # needs no JSON escaping
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RATIO = re.compile(r"[1-9][0-9]{0,6}(?::[1-9][0-9]{0,6}){0,2}")


class ManifestError(ValueError):
    """A manifest refused whole; ``row`` and ``field`` say where, ``message`` what is allowed.

    ``row`` is ``"codes[17]"``, ``"lines[2]"``, ``"codes.csv line 18"``, or ``""`` for
    the whole file; ``field`` is ``""`` when the whole row or file is wrong.

    >>> str(ManifestError("codes[17]", "parent", "not in the manifest"))
    'codes[17], field parent: not in the manifest'
    >>> str(ManifestError("", "ship_date", "must be a date"))
    'field ship_date: must be a date'
    """

    def __init__(self, row: str, field: str, message: str) -> None:
        where = ", ".join(part for part in (row, f"field {field}" if field else "") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.row = row
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ManifestLine:
    """One line of the bill: a product and batch, and how many units of it are shipped."""

    product_id: str
    name: str
    batch: str
    expiry: str
    quantity: int

    def to_dict(self) -> dict:
        return {
            "product_id": self.product_id,
            "name": self.name,
            "batch": self.batch,
            "expiry": self.expiry,
            "quantity": self.quantity,
        }


@dataclass(frozen=True, slots=True)
class ManifestCode:
    """One code of the delivery at its packaging level, with its parent (None at the top).

    ``ratio`` is the pack ratio (包装比例) as the supplier gave it, e.g. ``"1:600"`` or
    ``"1:10:600"`` (see :func:`full_count`); ``partial`` marks a 零箱, a pack holding fewer
    units than its ratio.

    >>> ManifestCode("81234560000000010001", "case", None, ratio="1:600").product_id
    '8123456'
    """

    code: str
    level: str
    parent: str | None
    batch: str = ""
    expiry: str = ""
    ratio: str = ""
    partial: bool = False

    @property
    def product_id(self) -> str:
        """The first 7 digits: the product *and* its packaging level (a case has its own)."""
        return self.code[:7]

    def to_dict(self) -> dict:
        """The canonical form: optional fields only when set."""
        out: dict = {"code": self.code, "level": self.level, "parent": self.parent}
        if self.batch:
            out["batch"] = self.batch
        if self.expiry:
            out["expiry"] = self.expiry
        if self.ratio:
            out["ratio"] = self.ratio
        if self.partial:
            out["partial"] = True
        return out


def full_count(ratio: str, level: str) -> tuple[int | None, int]:
    """(middle packs, units) in a full pack of ``level`` with this ratio.

    One number, or ``1:N``: N units. ``1:M:N`` is the three-level ratio: a full case
    holds M middle packs and N units, so a middle pack holds N / M units.

    >>> full_count("1:600", "case"), full_count("1:10:600", "case"), full_count("1:10:600", "middle")
    ((None, 600), (10, 600), (None, 60))
    >>> full_count("24", "middle")
    (None, 24)
    """
    parts = [int(p) for p in ratio.split(":")]
    if len(parts) == 1:
        return None, parts[0]
    if parts[0] != 1:
        raise ValueError(f"{ratio!r}: a ratio of several numbers starts with 1 (one pack)")
    if len(parts) == 2:
        return None, parts[1]
    middles, units = parts[1], parts[2]
    if level == "middle":
        if units % middles:
            raise ValueError(f"{ratio!r}: {units} units do not split evenly into {middles} middle packs")
        return None, units // middles
    return middles, units


@dataclass(frozen=True)
class Manifest:
    """A supplier's outbound bill (上游单据) with its code relation (码关联), checked whole.

    Build one with :func:`read_manifest`; the indexes behind :meth:`code`,
    :meth:`units_under` and :meth:`line_for` are built once, on first use.
    """

    bill_code: str
    supplier: str
    ship_date: str
    lines: tuple[ManifestLine, ...]
    codes: tuple[ManifestCode, ...]

    def canonical(self) -> dict:
        """The JSON-ready canonical form: lines sorted by (product_id, batch), codes by code.

        Sorted, so the same bill and relation give the same form whatever order the
        supplier's system wrote them in. Fields we do not model are left out.
        """
        return {**self._head(), "codes": [c.to_dict() for c in sorted(self.codes, key=lambda c: c.code)]}

    def _head(self) -> dict:
        """:meth:`canonical` with an empty code list."""
        return {
            "bill_code": self.bill_code,
            "supplier": self.supplier,
            "ship_date": self.ship_date,
            "lines": [line.to_dict() for line in sorted(self.lines, key=lambda x: (x.product_id, x.batch))],
            "codes": [],
        }

    def digest(self) -> str:
        """sha256 (hex) of :meth:`canonical` as compact JSON with sorted keys: equal manifests, equal digests."""
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return hashlib.sha256(self.canonical_text().encode("utf-8")).hexdigest()

    def canonical_text(self) -> str:
        """:meth:`canonical` as compact JSON with sorted keys: the text :meth:`digest` hashes.

        The same text as ``json.dumps(m.canonical(), sort_keys=True, separators=(",", ":"),
        ensure_ascii=False)``, written row by row for the common code row, which is three
        times faster for a million codes.
        """
        head = self._head()
        text = json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        parts = []
        add = parts.append
        for c in sorted(self.codes, key=lambda c: c.code):
            if c.batch or c.expiry or c.ratio or c.partial or not _PLAIN_CODE(c.code):
                add(json.dumps(c.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False))
            elif c.parent is None:
                add(f'{{"code":"{c.code}","level":"{c.level}","parent":null}}')
            elif _PLAIN_CODE(c.parent):
                add(f'{{"code":"{c.code}","level":"{c.level}","parent":"{c.parent}"}}')
            else:
                add(json.dumps(c.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        # '"codes":[]' cannot occur inside a JSON string (its quotes would be escaped).
        return text.replace('"codes":[]', '"codes":[' + ",".join(parts) + "]", 1)

    @cached_property
    def _by_code(self) -> dict[str, ManifestCode]:
        return {c.code: c for c in self.codes}

    @cached_property
    def _children(self) -> dict[str, list[ManifestCode]]:
        children: dict[str, list[ManifestCode]] = {}
        for c in self.codes:
            if c.parent is not None:
                children.setdefault(c.parent, []).append(c)
        return children

    @cached_property
    def _lines(self) -> dict[tuple[str, str], ManifestLine]:
        return {(line.product_id, line.batch): line for line in self.lines}

    @cached_property
    def _lines_of_product(self) -> dict[str, list[ManifestLine]]:
        out: dict[str, list[ManifestLine]] = {}
        for line in self.lines:
            out.setdefault(line.product_id, []).append(line)
        return out

    def code(self, code: str) -> ManifestCode | None:
        """The manifest's entry for ``code``, or None if the code is not on it."""
        return self._by_code.get(code)

    def children(self, code: str) -> tuple[ManifestCode, ...]:
        """The codes directly under ``code``, in file order."""
        return tuple(self._children.get(code, ()))

    def units_under(self, code: str) -> tuple[str, ...]:
        """Every unit code below a case or middle pack, in file order; () for a unit or an unknown code."""
        out: list[str] = []
        for child in self._children.get(code, ()):
            if child.level == "unit":
                out.append(child.code)
            else:  # a middle pack: the levels allow no deeper nesting
                out.extend(c.code for c in self._children.get(child.code, ()))
        return tuple(out)

    def line_for(self, code: str) -> ManifestLine | None:
        """The line a unit belongs to: by product_id, and by batch when the code has one."""
        entry = self._by_code.get(code)
        if entry is None or entry.level != "unit":
            return None
        if entry.batch:
            return self._lines.get((entry.product_id, entry.batch))
        lines = self._lines_of_product.get(entry.product_id, ())
        return lines[0] if len(lines) == 1 else None

    @property
    def unit_count(self) -> int:
        """How many unit codes the manifest lists (it may exceed one document's 3,500)."""
        return sum(1 for c in self.codes if c.level == "unit")


def read_manifest(
    data: Mapping, *, leading_digits: Iterable[str] = ("8",), code_rows: CodeRows | None = None
) -> Manifest:
    """Check a parsed JSON manifest whole and return it, or raise :class:`ManifestError`.

    Fields we do not know are allowed and ignored (the format may grow). ``code_rows``
    gives the codes from elsewhere (a CSV, see :func:`read_codes_csv`); the JSON then
    must not list codes itself.
    """
    if not isinstance(data, Mapping):
        raise ManifestError(
            "", "", "a manifest must be a JSON object with bill_code, supplier, ship_date, lines, codes"
        )
    bill_code = _text(data, "bill_code", "", MAX_TEXT)
    supplier = _text(data, "supplier", "", MAX_NAME)
    ship_date = _date(data, "ship_date", "")
    lines = _read_lines(data.get("lines"))
    if code_rows is None:
        raw = data.get("codes")
        if not isinstance(raw, list):
            raise ManifestError("", "codes", "must be a list of objects with code, level, parent (may be empty)")
        code_rows = CodeRows(raw, lambda n: f"codes[{n}]")
    elif data.get("codes"):
        raise ManifestError("", "codes", "the codes come from the CSV; the JSON must not list codes as well")
    codes = _read_codes(code_rows, frozenset(leading_digits))
    manifest = Manifest(bill_code, supplier, ship_date, lines, codes)
    _check_relation(manifest, code_rows.label)
    _check_lines(manifest, code_rows.label)
    return manifest


def read_manifest_file(
    path: str | Path, codes_csv: str | Path | None = None, *, leading_digits: Iterable[str] = ("8",)
) -> Manifest:
    """Read a JSON manifest file, its codes from ``codes_csv`` if given. Errors are :class:`ManifestError`."""
    path = Path(path)
    data = _load_json(path)
    rows = read_codes_csv(codes_csv) if codes_csv is not None else None
    return read_manifest(data, leading_digits=leading_digits, code_rows=rows)


@dataclass(frozen=True)
class CodeRows:
    """Code rows as mappings, and how to name row ``n`` in an error (``codes[n]`` or ``codes.csv line n+2``)."""

    rows: Sequence[Mapping]
    label: Callable[[int], str]


def read_codes_csv(path: str | Path) -> CodeRows:
    """The code rows of a CSV file (UTF-8, header row first; see :data:`CSV_COLUMNS`)."""
    path = Path(path)
    name = path.name
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{name} line 1", "", f"empty file; the header row is {','.join(CSV_COLUMNS)}")
            header = [h.strip() for h in header]
            for column in CSV_REQUIRED:
                if column not in header:
                    raise ManifestError(
                        f"{name} line 1", column, f"missing column; the header must name {', '.join(CSV_REQUIRED)}"
                    )
            for column in header:
                if header.count(column) > 1:
                    raise ManifestError(f"{name} line 1", column, "column named twice")
            width = len(header)
            rows: list[dict] = []
            line_numbers: list[int] = []
            for record in reader:
                if not record:  # a blank line: csv gives [], nothing to lose
                    continue
                if len(record) != width:
                    raise ManifestError(
                        f"{name} line {reader.line_num}", "", f"{len(record)} columns; the header has {width}"
                    )
                row = dict(zip(header, record, strict=True))
                row["parent"] = row["parent"] or None
                if "partial" in row:
                    row["partial"] = _csv_bool(row["partial"], f"{name} line {reader.line_num}")
                rows.append(row)
                line_numbers.append(reader.line_num)
    except OSError as e:
        raise ManifestError("", "", f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ManifestError("", "", f"{path}: not UTF-8 text") from None
    except csv.Error as e:
        raise ManifestError(f"{name} line {reader.line_num}", "", f"not CSV: {e}") from None
    return CodeRows(rows, lambda n: f"{name} line {line_numbers[n]}")


# --- the checks -------------------------------------------------------------


def _load_json(path: Path) -> object:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ManifestError("", "", f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ManifestError("", "", f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ManifestError("", "", f"{path}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def _csv_bool(value: str, row: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("", "0", "false", "no"):
        return False
    if lowered in ("1", "true", "yes"):
        return True
    raise ManifestError(row, "partial", f"{value!r} is not allowed; allowed: true, false, 1, 0 or empty")


def _text(body: Mapping, key: str, row: str, limit: int, *, required: bool = True) -> str:
    if key not in body and not required:
        return ""
    value = body.get(key)
    if not isinstance(value, str) or not value or value != value.strip() or len(value) > limit:
        raise ManifestError(row, key, f"{value!r}: must be text of 1 to {limit} characters, no spaces at either end")
    if not value.isprintable():
        raise ManifestError(row, key, f"{value!r}: must be printable (no control characters)")
    return value


def _date(body: Mapping, key: str, row: str, *, required: bool = True) -> str:
    if key not in body and not required:
        return ""
    value = body.get(key)
    if not _is_date(value):
        raise ManifestError(row, key, f"{value!r}: must be an ISO date, YYYY-MM-DD")
    return value


def _is_date(value: object) -> bool:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _read_lines(raw: object) -> tuple[ManifestLine, ...]:
    if not isinstance(raw, list):
        raise ManifestError("", "lines", "must be a list of objects with product_id, name, batch, expiry, quantity")
    out: list[ManifestLine] = []
    seen: dict[tuple[str, str], int] = {}
    for n, line in enumerate(raw):
        row = f"lines[{n}]"
        if not isinstance(line, Mapping):
            raise ManifestError(row, "", "must be an object with product_id, name, batch, expiry, quantity")
        product = line.get("product_id")
        if not isinstance(product, str) or not _PRODUCT.fullmatch(product):
            raise ManifestError(row, "product_id", f"{product!r}: must be the 7-digit product id or a 14-digit GTIN")
        name = line.get("name")
        if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
            raise ManifestError(row, "name", f"{name!r}: must be printable text of at most {MAX_NAME} characters")
        batch = _text(line, "batch", row, MAX_TEXT)
        expiry = _date(line, "expiry", row)
        quantity = line.get("quantity")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
            raise ManifestError(row, "quantity", f"{quantity!r}: must be a whole number from 1 to {MAX_QUANTITY}")
        key = (product, batch)
        if key in seen:
            raise ManifestError(row, "batch", f"product {product} batch {batch} is on lines[{seen[key]}] already")
        seen[key] = n
        out.append(ManifestLine(product, name, batch, expiry, quantity))
    return tuple(out)


def _read_codes(source: CodeRows, leading: frozenset[str]) -> tuple[ManifestCode, ...]:
    rows, label = source.rows, source.label
    if len(rows) > MAX_CODES:
        raise ManifestError("", "codes", f"{len(rows)} codes; a manifest holds at most {MAX_CODES}")
    out: list[ManifestCode] = []
    append = out.append
    seen: dict[str, int] = {}
    new = _new_code
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ManifestError(label(n), "", "must be an object with code, level, parent")
        code = row.get("code")
        # The usual row: 20 ASCII digits with an allowed first digit, which is all that
        # parse() checks of a plain 20-digit text (the check characters' algorithm is not
        # public), at a tenth of the cost. Anything else goes to parse() for its reason.
        if not (isinstance(code, str) and len(code) == 20 and code.isascii() and code.isdigit() and code[0] in leading):
            raise ManifestError(label(n), "code", _why_not_code(code, leading))
        if code in seen:
            raise ManifestError(label(n), "code", f"{code} is listed twice (first at {label(seen[code])})")
        seen[code] = n
        level = row.get("level")
        if not isinstance(level, str) or level not in PARENT_LEVELS:
            raise ManifestError(label(n), "level", f"{level!r} is not allowed; allowed: {', '.join(LEVELS)}")
        parent = row.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise ManifestError(label(n), "parent", f"{parent!r}: must be a code of this manifest, or null")
        if len(row) <= 3:  # code, level, parent and nothing else: most rows of a big manifest
            append(new(code, level, parent or None, "", "", "", False))
        else:
            append(new(code, level, parent or None, *_optional(row, level, label(n))))
    return tuple(out)


def _optional(row: Mapping, level: str, where: str) -> tuple[str, str, str, bool]:
    """A code row's batch, expiry, ratio and partial, checked."""
    batch = row.get("batch") or ""
    if batch:
        batch = _text(row, "batch", where, MAX_TEXT)
    expiry = row.get("expiry") or ""
    if expiry:
        expiry = _date(row, "expiry", where)
    ratio = row.get("ratio")
    ratio = "" if ratio is None or ratio == "" else _read_ratio(ratio, level, where)
    partial = row.get("partial", False)
    if partial is None:
        partial = False
    if not isinstance(partial, bool):
        raise ManifestError(where, "partial", f"{partial!r}: must be true or false")
    if partial and level == "unit":
        raise ManifestError(where, "partial", "a unit cannot be partial; partial (零箱) marks a case or middle")
    return batch, expiry, ratio, partial


def _slot_setter() -> Callable[..., ManifestCode]:
    # A frozen dataclass's __init__ goes through object.__setattr__ once per field; a
    # million codes then cost a second more. The checks above have been done, so the
    # slots are filled directly. Same object, same equality and hash.
    setters = [ManifestCode.__dict__[name].__set__ for name in ManifestCode.__slots__]
    if len(setters) != 7:  # the fields and this function must change together
        raise RuntimeError("ManifestCode's fields changed; update _slot_setter")
    s0, s1, s2, s3, s4, s5, s6 = setters
    make = object.__new__

    def new(code: str, level: str, parent: str | None, batch: str, expiry: str, ratio: str, partial: bool):
        c = make(ManifestCode)
        s0(c, code)
        s1(c, level)
        s2(c, parent)
        s3(c, batch)
        s4(c, expiry)
        s5(c, ratio)
        s6(c, partial)
        return c

    return new


_new_code = _slot_setter()


def _why_not_code(code: object, leading: frozenset[str]) -> str:
    if not isinstance(code, str):
        return f"{code!r}: must be a 20-digit trace code as text"
    result = parse(code, leading_digits=leading)
    allowed = f"allowed: 20 digits starting with {' or '.join(sorted(leading))}"
    if result.valid:  # e.g. surrounding spaces or a symbology prefix: a manifest holds the bare code
        return f"{code!r}: not the bare code ({result.code}); {allowed}"
    detail = f" ({result.detail})" if result.detail else ""
    return f"{code!r}: {result.reason}{detail}; {allowed}"


def _read_ratio(ratio: object, level: str, row: str) -> str:
    if isinstance(ratio, int) and not isinstance(ratio, bool):
        ratio = str(ratio)
    if not isinstance(ratio, str) or not _RATIO.fullmatch(ratio.strip()):
        raise ManifestError(row, "ratio", f"{ratio!r}: must be a pack ratio such as 600, 1:600 or 1:10:600")
    ratio = ratio.strip()
    if level != "unit":  # a unit's ratio is kept as given, never checked: a unit holds nothing
        try:
            full_count(ratio, level)
        except ValueError as e:
            raise ManifestError(row, "ratio", str(e)) from None
    return ratio


def _check_relation(manifest: Manifest, label: Callable[[int], str]) -> None:
    """Parents exist and sit at the right level; packs hold as many units as their ratio says."""
    by_code = manifest._by_code
    for n, c in enumerate(manifest.codes):
        if c.parent is None:
            if c.level == "middle":
                raise ManifestError(label(n), "parent", "a middle pack must have a case as its parent")
            continue
        if c.parent == c.code:
            raise ManifestError(label(n), "parent", f"{c.code} is its own parent (a cycle)")
        parent = by_code.get(c.parent)
        if parent is None:
            raise ManifestError(label(n), "parent", f"{c.parent} is not in the manifest; a parent must be listed too")
        if parent.parent == c.code:
            raise ManifestError(label(n), "parent", f"a cycle: {c.parent}'s parent is {c.code}")
        if parent.level not in PARENT_LEVELS[c.level]:
            allowed = [lvl or "none" for lvl in PARENT_LEVELS[c.level]]
            raise ManifestError(
                label(n),
                "parent",
                f"{c.parent} is a {parent.level}; a {c.level}'s parent may be: {', '.join(allowed)}",
            )
    children = manifest._children
    for n, c in enumerate(manifest.codes):
        if c.level == "unit":
            continue
        units = manifest.units_under(c.code)
        if not units:
            raise ManifestError(label(n), "code", f"the {c.level} {c.code} has no unit codes under it")
        if not c.ratio:
            continue
        middles, full = full_count(c.ratio, c.level)
        if len(units) > full or (len(units) < full and not c.partial):
            hint = "" if c.partial or len(units) > full else "; mark it partial (零箱) if it is not full"
            raise ManifestError(
                label(n),
                "ratio",
                f"the {c.level} {c.code} holds {len(units)} units, its ratio {c.ratio} says {full}{hint}",
            )
        if middles is not None:
            held = sum(1 for child in children.get(c.code, ()) if child.level == "middle")
            if held > middles or (held < middles and not c.partial):
                raise ManifestError(
                    label(n),
                    "ratio",
                    f"the case {c.code} holds {held} middle packs, its ratio {c.ratio} says {middles}",
                )


def _check_lines(manifest: Manifest, label: Callable[[int], str]) -> None:
    """Every unit has a line; each line with units listed has exactly ``quantity`` of them."""
    lines = manifest._lines
    of_product = manifest._lines_of_product
    counts: Counter[tuple[str, str]] = Counter()
    for n, c in enumerate(manifest.codes):
        if c.level != "unit":
            continue
        product = c.code[:7]
        if c.batch:
            line = lines.get((product, c.batch))
            if line is None:
                raise ManifestError(label(n), "batch", f"product {product} batch {c.batch} is on no line of the bill")
        else:
            found = of_product.get(product)
            if not found:
                raise ManifestError(label(n), "code", f"product {product} is on no line of the bill")
            if len(found) > 1:
                batches = ", ".join(line.batch for line in found)
                raise ManifestError(
                    label(n), "batch", f"product {product} has lines for batches {batches}; the code must name one"
                )
            line = found[0]
        if c.expiry and c.expiry != line.expiry:
            raise ManifestError(
                label(n), "expiry", f"{c.expiry} differs from the line's expiry {line.expiry} (batch {line.batch})"
            )
        counts[(line.product_id, line.batch)] += 1
    for n, line in enumerate(manifest.lines):
        listed = counts.get((line.product_id, line.batch), 0)
        if listed and listed != line.quantity:
            raise ManifestError(
                f"lines[{n}]",
                "quantity",
                f"{line.quantity} units of product {line.product_id} batch {line.batch}, "
                f"but the codes list {listed}; they must agree",
            )
