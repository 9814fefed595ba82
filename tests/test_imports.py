"""Each command loads only the libraries it uses: a scanner kind's or a sink's libraries
only when the config names them, sqlite-utils only to create the ledger's schema.

The commands run in a subprocess whose ``sys.modules`` is written out when ``main``
returns (threads joined, every scan decided); bench/startup.py times the result.
"""

import subprocess
import sys

from tests.support.agent import ROOT, agent_env

CODE = "81234567890123456789"

#: Third-party libraries that some configs need and none of these commands does.
HEAVY = (
    "evdev",
    "paho",
    "serial",
    "numpy",
    "zxingcpp",
    "PIL",
    "sqlite_utils",
    "gpiozero",
    "orjson",
    "cryptography",
    "tomlkit",
    "starlette",  # the local API's, only with [api] enabled
    "uvicorn",
    "h11",
    "anyio",
    "psycopg",  # the collector's (collector/), never the agent's
)

WRAPPER = """
import sys
from agent.cli import main
try:
    status = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
sys.exit(status)
"""


def modules_after(tmp_path, *args: str, stdin: bytes = b"") -> set[str]:
    """The modules loaded by ``scan-agent ARGS`` by the time it returns."""
    listing = tmp_path / "modules.txt"
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(listing), *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        env=agent_env(XDG_DATA_HOME=str(tmp_path / "xdg")),
    )
    assert result.returncode == 0, result.stderr.decode()
    return set(listing.read_text().split())


def loaded(modules: set[str], names) -> list[str]:
    """Which of ``names`` (packages, with their submodules) are in ``modules``."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_check_loads_no_scanner_sink_or_ledger_library(tmp_path):
    modules = modules_after(tmp_path, "check", CODE)
    assert "agent.codes" in modules  # the listing is real
    assert loaded(modules, HEAVY) == []
    # Nor the agent's own machinery that check does not use.
    assert loaded(modules, ("agent.runner", "agent.ledger", "agent.sinks.feedback", "sqlite3", "logging")) == []


def test_check_json_with_a_config_file_still_loads_none(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[codes]\naccept_gs1 = true\n[[scanners]]\nkind = "serial"\nport = "/dev/ttyACM0"\n')
    modules = modules_after(tmp_path, "check", "--json", "--config", str(cfg), CODE)
    assert loaded(modules, HEAVY) == []


def test_run_on_stdin_with_an_existing_ledger_loads_no_device_uplink_or_schema_library(tmp_path):
    db = str(tmp_path / "ledger.db")
    first = modules_after(tmp_path, "run", "--db", db)  # creates the ledger: sqlite-utils may load here
    assert "agent.pipeline" in first
    modules = modules_after(tmp_path, "run", "--db", db, stdin=f"{CODE}\n".encode())
    assert {"agent.pipeline", "agent.sources.stdin", "sqlite3"} <= modules  # it really ran
    assert loaded(modules, ("evdev", "serial", "paho", "numpy", "zxingcpp", "sqlite_utils", "gpiozero")) == []
