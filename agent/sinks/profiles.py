"""Scanner profiles: one TOML file per scanner model in ``firmware_config/``.

The file's stem is the profile name a serial ``[[scanners]]`` entry refers to
(``profile = "honeywell-1950g"``). Top-level ``model``, ``vendor`` and ``manual``
strings, and a ``[host_ack]`` table: ``supported``, the ``good`` and ``bad`` commands as
hex bytes (``"1B 07 0D"``), and ``source``, the manual and section they come from.
Other tables in the file belong to other readers and are left alone.

>>> p = parse_profile("demo", '''
... model = "Demo 1"
... vendor = "Acme"
... manual = "Demo 1 User Guide"
... [host_ack]
... supported = true
... good = "06"
... bad = "15 0D"
... source = "Demo 1 User Guide, Host ACK"
... ''')
>>> p.host_ack.good, p.host_ack.bad
(b'\\x06', b'\\x15\\r')
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from agent.config import ConfigError, Table

#: Where the profiles are: beside the package in a checkout, where install.sh puts them on a kiosk.
_PLACES = (Path(__file__).resolve().parents[2] / "firmware_config", Path("/opt/scan-agent/firmware_config"))
PROFILE_DIR = next((place for place in _PLACES if place.is_dir()), _PLACES[0])


@dataclass(frozen=True)
class HostAckCommands:
    """The bytes that make the scanner itself sound good or bad, and where they are documented."""

    supported: bool
    good: bytes = b""
    bad: bytes = b""
    source: str = ""


@dataclass(frozen=True)
class ScannerProfile:
    name: str
    model: str
    vendor: str
    manual: str
    host_ack: HostAckCommands

    @property
    def acks(self) -> bool:
        """Whether the agent sends this scanner host-ACK commands."""
        return self.host_ack.supported


def parse_hex(text: str) -> bytes:
    """``"1B 07 0D"`` -> ``b"\\x1b\\x07\\r"``.

    >>> parse_hex("1b070d")
    b'\\x1b\\x07\\r'
    """
    return bytes.fromhex(text)


def parse_profile(name: str, text: str, where: str | None = None) -> ScannerProfile:
    """A profile from TOML text; :class:`~agent.config.ConfigError` names the file and key."""
    where = where or name
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        raise ConfigError(f"{where}: not valid TOML: {problem}") from problem
    top = Table(where, data)
    model = top.text("model", "", nonempty=True)
    vendor = top.text("vendor", "", nonempty=True)
    manual = top.text("manual", "", nonempty=True)
    t = Table(f"{where} [host_ack]", top.get("host_ack", {}, dict))
    supported = t.get("supported", False, bool)
    commands = {}
    for key in ("good", "bad"):
        text = t.text(key, "")
        try:
            commands[key] = parse_hex(text)
        except ValueError:
            t.fail(key, f'{text!r} is not allowed; allowed: hex bytes such as "1B 07 0D"')
        if supported and not commands[key]:
            t.fail(key, "missing; a scanner that supports host ACK needs its good and bad commands")
    source = t.text("source", "", nonempty=supported)
    t.finish()
    return ScannerProfile(name, model, vendor, manual, HostAckCommands(supported, source=source, **commands))


def load_profile(name: str, directory: str | Path = PROFILE_DIR) -> ScannerProfile:
    """The profile ``<directory>/<name>.toml``."""
    path = Path(directory) / f"{name}.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in Path(directory).glob("*.toml"))) or "none"
        raise ConfigError(f"scanner profile {name!r}: no file {path}; known profiles: {known}") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise ConfigError(f"{path}: cannot read: {problem}") from problem
    return parse_profile(name, text, where=str(path))


def load_profiles(directory: str | Path = PROFILE_DIR) -> dict[str, ScannerProfile]:
    """Every ``*.toml`` profile in ``directory``, by name."""
    return {path.stem: load_profile(path.stem, directory) for path in sorted(Path(directory).glob("*.toml"))}
