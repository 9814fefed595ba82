"""The power-cut suite, host side: ``scripts/powercut-tests`` runs it after installing the VM tools.

    python -m tests.powercut.run --kernel /boot/vmlinuz-... --out DIR [--cycles 4] [--control-cycles 4]
        [--scenarios plain,documents,cases,receipts] [--seed N] [--minutes M]

Each boot of the VM (qemu without KVM, through virtme-ng) runs one agent per
role, each a kiosk of its own: one raw ext4 disk image per role as virtio-blk
with ``cache=none`` (the guest's flushes reach this machine's disk) and one
virtio serial port per role whose host end is a file that qemu writes as the
guest prints. A real role per scenario runs ``scan-agent`` as shipped, its
scenario in every boot (:data:`tests.powercut.feed.FEEDS`): loose scans
(``plain`` dispensing); scans inside prescriptions (``documents``); a receiving
dock scanning 600-unit ``cases`` of a manifest imported just before the agent
starts (inside a delivery every other boot); loose scans with the agent's outbox
draining over MQTT to a back end on this machine that sends ``receipts``
(:mod:`tests.powercut.uplink`: mosquitto, PostgreSQL and ``scan-collector run``,
started once for the run; the VM gets qemu's user network). ``control`` runs it
with the test-only switch that opens the ledger with ``synchronous=OFF``, the
scenarios in turn (:func:`tests.powercut.feed.scenario`). All run in the same
boots, so one cut hits every one of them: N boots are N cycles of each
scenario. The boots take no longer than one agent's did: without KVM a boot is
mostly the kernel's start and Python's, and the agents share one import of the
agent before they fork (:mod:`tests.powercut.vm_agents`). 3-15 s (random)
after every agent has printed its first decision (and the collector has also
stored a first event of this boot from each role in its receipts scenario and
everything its ledger held before it, so that receipts keep moving), qemu is
SIGKILLed: a power cut.
A decision in the port file was printed before the cut, since qemu wrote it
there. Then, per role, on a copy of the image: ``e2fsck -fy``, ``debugfs dump``
of the ledger and its WAL, and the checks:

- every decision received (accepted, duplicate, rejected, double read) is in
  the ledger with the same verdict and seq (otherwise it is **lost**);
- ``scan-agent ledger verify`` passes, ``PRAGMA integrity_check`` is ok and
  seq has no gaps (otherwise the ledger is **broken**);
- each closed document's record lists exactly the scans the ledger counts for it;
- every case or middle pack is whole or absent (:func:`check_packs`): a pack row
  lists what the manifest puts in it and has every code under it received with
  ``in_id`` = that row; every received code's ``in_id`` is a row that covers it
  (otherwise the pack is **torn**, and the ledger broken);
- the uplink's delivered state (``deliveries``) and receipted state
  (``receipts.stored_through_seq``) never run ahead of the ledger's scans, and
  every event the collector received (stored or quarantined) is in the ledger
  with the same event id and hash (:func:`tests.powercut.uplink.check_uplink`;
  otherwise the uplink is **ahead**). On every cycle once a back end runs: what
  an earlier receipts cycle delivered must stay in the ledger through later cuts.

Rows committed but never received are counted (allowed: the cut came between
commit and print). The image is used again at the next boot, so the agent
restarts on a ledger that has just lost power; only a role whose check failed
gets a new image. Recovery = qemu started to that role's agent being up (its log's
``scan-agent up``: the ledger that lost power opened, checked and ready for a scan).

Exit status: 0 when ``real`` lost nothing, was never broken nor ahead, and got
receipts back in its receipts cycles, and the control showed loss, breakage or
an uplink ahead (it must: that is how the suite shows it can fail); 1
otherwise; 77 when the VM did not come up at the first boot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from tests.powercut.feed import FEEDS, SCENARIOS, cases_manifest, delivery, pack_contents, scenario
from tests.powercut.uplink import Backend, check_uplink

ROOT = Path(__file__).resolve().parents[2]
IMAGE_MIB = 256
FAULT = {
    ("real", "plain"): "power cut (qemu SIGKILL), plain dispensing",
    ("real", "documents"): "power cut, a document open (prescriptions of 5-40 scans)",
    ("control", "plain"): "power cut, control: ledger with synchronous=OFF",
    ("control", "documents"): "power cut, control, documents",
    ("real", "cases"): "power cut, receiving 600-unit cases (a delivery open every other cycle)",
    ("control", "cases"): "power cut, control, cases",
    ("real", "receipts"): "power cut, outbox draining over MQTT to scan-collector, receipts on",
    ("control", "receipts"): "power cut, control, receipts",
}
#: In a receipts cycle, the cut waits this long at most (after the first decisions) for the
#: collector to store each agent's backlog (:func:`boot`).
DRAIN_WAIT_S = 150.0
#: Modules the VM's udev would load for qemu's q35 devices (KVM, AHCI and the CD-ROM, watchdogs,
#: SMBus, PC speaker, crypto accelerators...), none of them on the ledger's path (virtio_blk,
#: ext4, virtio_console, virtio_net stay). Loading them over the 9p root without KVM held the
#: boot 6-10 s; the kernel refuses them by name (``module_blacklist=``).
UNNEEDED_MODULES = (
    "kvm_amd,kvm_intel,kvm,ccp,irqbypass,crct10dif_pclmul,crc32_pclmul,ghash_clmulni_intel,sha512_ssse3,"
    "sha512_generic,sha256_ssse3,sha1_ssse3,sr_mod,cdrom,sg,iTCO_wdt,intel_pmc_bxt,iTCO_vendor_support,ahci,"
    "libahci,libata,aesni_intel,evdev,crypto_simd,psmouse,scsi_mod,i2c_i801,cryptd,i2c_smbus,serio_raw,pcspkr,"
    "lpc_ich,qemu_fw_cfg,i6300esb,watchdog,button,intel_rapl_msr,intel_rapl_common,joydev"
)
#: The repository's packages the VM imports: compiled here before each boot (:func:`compile_tree`).
VM_PACKAGES = ("agent", "tests/powercut", "tests/support")
#: Verdicts the agent records (documents add entry rows); ``fault`` (ledger unwritable)
#: says it was not recorded.
RECORDED = {
    "accepted", "duplicate", "rejected", "double_read", "opened", "closed", "locked", "acknowledged", "manifest",
}  # fmt: skip
#: What a pack (case or middle pack) code holds: code -> (its units, its middle packs), sorted.
Contents = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


@dataclass
class Role:
    """One kiosk of the VM: its own disk image, port and ledger. A real role keeps one
    scenario (``scenario``); the control (``scenario`` None) takes the boots' turn
    (:func:`tests.powercut.feed.scenario`)."""

    name: str
    image: Path
    port: Path
    cycles: int
    scenario: str | None = None
    received: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # since the image was made
    unprinted: set[str] = field(default_factory=set)  # committed, never printed, counted already
    results: list[dict] = field(default_factory=list)
    offset: int = 0
    partial: bytes = b""
    first_at: float | None = None
    up_at: float | None = None  # the agent's "scan-agent up" before its first decision this boot
    this_boot: list[dict] = field(default_factory=list)
    generation: int = 1  # of its disk image: a new image is a new device to the collector
    uplink_before: tuple[int, int] = (0, 0)  # deliveries and receipted-through seq at the last check
    stored_at: float | None = None  # receipts cycles: the collector's first event of this boot
    drained_at: float | None = None  # receipts cycles: the collector stored through last_seq
    last_seq: int = 0  # the ledger's last seq at the last check

    @property
    def device(self) -> str:
        return f"powercut-{self.name}-{self.generation}"

    @property
    def kind(self) -> str:
        """``control`` (ledger opened synchronous=OFF) or ``real`` (the agent as shipped)."""
        return "control" if self.scenario is None else "real"

    def scenario_at(self, cycle: int, rotation: tuple[str, ...]) -> str:
        return self.scenario or scenario(cycle, rotation)

    def online_at(self, cycle: int, rotation: tuple[str, ...]) -> bool:
        """Whether the role reaches the broker in this boot: in its receipts scenario, the
        real kiosk in odd boots only (in even ones its broker is port 9 on this machine, where
        nothing listens, or the VM has no network at all, and its outbox holds what it scans for
        the next boot to drain), the control whenever its turn is receipts."""
        return self.scenario_at(cycle, rotation) == "receipts" and (self.kind == "control" or cycle % 2 == 1)


def compile_tree() -> None:
    """Byte-compile the packages the VM imports, where their sources changed (other work may
    edit them between boots). The VM reads its root read-only over 9p without KVM: a module
    without a current ``.pyc`` is compiled there at every boot, seconds of the agent's start
    (with PYTHONDONTWRITEBYTECODE set on this machine, the repository had none)."""
    import compileall

    for package in VM_PACKAGES:
        compileall.compile_dir(ROOT / package, quiet=1)
    compileall.compile_file(ROOT / "tests" / "__init__.py", quiet=1)


def make_image(path: Path) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(IMAGE_MIB * 2**20)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-L", path.stem, str(path)], check=True)


def qemu_opts(roles: list[Role]) -> str:
    opts = ["-device virtio-serial-pci,id=pcser"]
    for r in roles:
        opts += [
            f"-drive if=none,id=d-{r.name},file={r.image},format=raw,cache=none,aio=threads",
            f"-device virtio-blk-pci,drive=d-{r.name},serial=pc-{r.name}",
            f"-chardev file,id=c-{r.name},path={r.port}",
            f"-device virtserialport,bus=pcser.0,chardev=c-{r.name},name=pc.{r.name}",
        ]
    return " ".join(opts)


class Console:
    """vng's output (the guest's console) to a file, each line with seconds since the launch."""

    def __init__(self, proc: subprocess.Popen, path: Path, launched: float) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(proc, path, launched), daemon=True)
        self._thread.start()

    def _read(self, proc, path, launched) -> None:
        with open(path, "w", encoding="utf-8") as log:
            for raw in proc.stdout:
                at = time.monotonic() - launched
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.lines.append((at, line))
                log.write(f"{at:7.2f} {line}\n")
                log.flush()

    def seen(self, text: str) -> float | None:
        return next((at for at, line in self.lines if text in line), None)

    def last_seen(self, text: str, until: float | None) -> float | None:
        """When ``text`` last came before ``until`` (None: ever)."""
        return next((at for at, line in reversed(self.lines) if text in line and (until is None or at <= until)), None)

    def agent_up(self, role: str, first_decision: float | None) -> float | None:
        """When ``role``'s agent last said it was up (``scan-agent up`` in its log) before its
        first decision: its recovery. A dock's first boot has two (the new ledger's run, then
        the agent)."""
        return self.last_seen(f"[{role}] INFO agent.runner: scan-agent up", first_decision)

    def tail(self, n: int = 25) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def join(self) -> None:
        self._thread.join(10)


def read_port(role: Role) -> None:
    """New complete lines from the role's port file: decisions as the guest printed them."""
    with open(role.port, "rb") as f:
        f.seek(role.offset)
        data = f.read()
    role.offset += len(data)
    data = role.partial + data
    *complete, role.partial = data.split(b"\n")
    for raw in complete:
        try:
            decision = json.loads(raw)
        except ValueError:
            continue
        if isinstance(decision, dict) and "verdict" in decision:
            role.this_boot.append(decision)


def power_cut(session: int) -> None:
    """SIGKILL the qemu of this vng session (vng forks it), then anything else left in the session."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getsid(int(pid)) == session and Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system"):
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def dump_ledger(image: Path, into: Path) -> tuple[int, str, Path | None]:
    """e2fsck a copy of ``image``, then dump the ledger and its WAL into ``into``."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    copy = into / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    fsck = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
    for name in ("ledger.db", "ledger.db-wal"):
        subprocess.run(["debugfs", "-R", f"dump /ledger/{name} {into / name}", str(copy)], capture_output=True)
    copy.unlink()
    db = into / "ledger.db"
    return fsck.returncode, (fsck.stdout + fsck.stderr).strip(), db if db.exists() else None


def check_ledger(
    db: Path | None,
    received: dict[str, tuple[str, int | None]],
    counted: set[str] | None = None,
    contents: Contents | None = None,
) -> dict:
    """The invariant on a ledger read out after a cut; ``received`` = event_id -> (verdict, seq) as printed;
    ``contents``: what every pack of the manifests imported so far holds (:func:`check_packs`).

    ``unprinted`` counts the decisions committed and never printed that are not in
    ``counted`` yet (rows of earlier cuts on the same image were counted then), and
    adds them to it. A ``locked`` row is never printed (the scan that locked is), so
    it is not counted.
    """
    result = {"verify_ok": False, "verify": "", "integrity": "", "seq_ok": False, "stored": 0}
    stored: dict[str, tuple[str, int | None]] = {}
    if db is None:
        result["verify"] = result["integrity"] = "no ledger file"
    else:
        verify = subprocess.run(
            [sys.executable, "-m", "agent", "ledger", "verify", "--db", str(db)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        result["verify_ok"] = verify.returncode == 0
        result["verify"] = (verify.stdout + verify.stderr).strip().splitlines()[-1:] or [""]
        result["verify"] = result["verify"][0]
        try:
            conn = sqlite3.connect(str(db))
            try:
                result["integrity"] = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
                stored = {eid: (v, s) for eid, v, s in conn.execute("SELECT event_id, verdict, seq FROM scans")}
            finally:
                conn.close()
        except sqlite3.DatabaseError as problem:
            result["integrity"] = f"{type(problem).__name__}: {problem}"
    if stored:
        result.update(check_documents(db))
        result.update(check_packs(db, contents or {}))
    seqs = sorted(s for _, s in stored.values() if s is not None)
    result["seq_ok"] = seqs == list(range(1, len(seqs) + 1))
    result["stored"] = len(stored)
    lost = [eid for eid, printed in received.items() if stored.get(eid) != printed]
    result["lost"] = len(lost)
    result["lost_examples"] = lost[:3]
    counted = set() if counted is None else counted
    unprinted = {eid for eid, (verdict, _) in stored.items() if eid not in received and verdict != "locked"}
    result["unprinted"] = len(unprinted - counted)
    counted |= unprinted
    result["broken"] = not (
        result["verify_ok"]
        and result["integrity"] == "ok"
        and result["seq_ok"]
        and not result.get("documents_bad")
        and not result.get("torn")
    )
    return result


def check_documents(db: Path) -> dict:
    """Each closed document's record against the ledger: it must list exactly the document's
    accepted scans that were not voided. A document open at a cut is closed in the next boot
    from what the agent rebuilt at start, so a rebuild that lost or invented a scan shows here."""
    conn = sqlite3.connect(str(db))
    try:
        event_of: dict[int, str] = {}
        counted: dict[str, set[str]] = {}
        bad, closed = [], 0
        query = "SELECT id, document, verdict, event_id, earlier_id, record FROM scans WHERE document IS NOT NULL"
        for row_id, doc, verdict, event_id, earlier_id, record in conn.execute(query + " ORDER BY id"):
            if verdict == "accepted" and (record is None or "pack" in json.loads(record)):  # a case counts too
                event_of[row_id] = event_id
                counted.setdefault(doc, set()).add(event_id)
            elif verdict in ("void", "reversal"):
                counted.get(doc, set()).discard(event_of.get(earlier_id, ""))
            elif verdict == "closed":
                closed += 1
                listed = {scan["event_id"] for scan in json.loads(record)["scans"]}
                if listed != counted.get(doc, set()):
                    bad.append(doc)
        last = conn.execute(
            "SELECT verdict FROM scans WHERE record IS NOT NULL AND verdict IN ('opened', 'closed') ORDER BY id DESC"
        ).fetchone()
    except (sqlite3.DatabaseError, ValueError) as problem:  # ValueError: a record that is not JSON
        return {"documents_bad": 1, "documents_problem": str(problem)}
    finally:
        conn.close()
    return {
        "documents_closed": closed,
        "documents_bad": len(bad),
        "document_open": last is not None and last[0] == "opened",
    }


def check_packs(db: Path, contents: Contents) -> dict:
    """Every case or middle pack all units or none, on the ledger as the cut left it.

    - a pack row (``accepted``, ``record`` = ``{"pack": ...}``) lists the units and middle
      packs the manifest puts in its code, and the pack's code and every one of them is
      received (``code_state``: ``in_held`` 1) with ``in_id`` = that row;
    - every received code's ``in_id`` is a row that covers it: its own (a unit received
      alone) or a pack row that lists it. A unit received by a row that is not there is
      what a torn case leaves.

    **torn** counts the pack rows that fail the first and the missing rows units point at.
    """
    problems: list[str] = []
    conn = sqlite3.connect(str(db))
    try:
        packs: dict[int, tuple[str, str, dict]] = {}
        query = "SELECT id, event_id, code, record FROM scans WHERE verdict = 'accepted' AND record LIKE '%\"pack\"%'"
        for row_id, event_id, code, record in conn.execute(query):
            pack = json.loads(record).get("pack")
            if pack is not None:
                packs[row_id] = (event_id, code, pack)
        state = {
            code: (held, in_id) for code, held, in_id in conn.execute("SELECT code, in_held, in_id FROM code_state")
        }
        own = dict(conn.execute("SELECT id, code FROM scans WHERE verdict = 'accepted' AND code IS NOT NULL"))
    except (sqlite3.DatabaseError, ValueError) as problem:  # ValueError: a record that is not JSON
        return {"torn": 1, "packs_problem": f"{type(problem).__name__}: {problem}"}
    finally:
        conn.close()
    covers: dict[int, set[str]] = {}
    torn = 0
    for row_id, (_, code, pack) in packs.items():
        listed = (tuple(sorted(pack["units"])), tuple(sorted(pack["middles"])))
        covers[row_id] = {code, *pack["units"], *pack["middles"]}
        wrong = [c for c in sorted(covers[row_id]) if state.get(c) != (1, row_id)]
        if contents.get(code) != listed:
            want = contents.get(code, ((), ()))
            problems.append(f"row {row_id} ({code}) lists {len(listed[0])} units, the manifest {len(want[0])}")
        elif wrong:
            problems.append(f"row {row_id} ({code}): {len(wrong)} codes not received by it, e.g. {wrong[0]}")
        torn += contents.get(code) != listed or bool(wrong)
    orphans: dict[int | None, list[str]] = {}
    for code, (held, in_id) in state.items():
        if held and code not in covers.get(in_id, ()) and own.get(in_id) != code:
            orphans.setdefault(in_id, []).append(code)
    for in_id, codes in sorted(orphans.items(), key=lambda item: item[0] or 0):
        problems.append(f"{len(codes)} codes received by row {in_id}, which is not there or does not list them")
    torn += len(orphans)
    return {
        "packs_stored": len(packs),
        "units_stored": sum(len(p["units"]) for _, _, p in packs.values()),
        "pack_events": {event_id for event_id, _, _ in packs.values()},
        "torn": torn,
        "torn_examples": problems[:3],
    }


def summary_rows(roles: list[Role]) -> list[dict]:
    """One row per role and scenario, in the shape of ``tests/faults`` figures plus the power-cut columns."""
    rows = []
    for r in roles:
        for name in SCENARIOS:
            results = [c for c in r.results if c["scenario"] == name]
            if not results:
                continue
            recovery = [c["recovery_s"] for c in results if c["recovery_s"] is not None]
            rows.append(
                {
                    "fault": FAULT[r.kind, name],
                    "role": r.name,
                    "scenario": name,
                    "cycles": len(results),
                    "sent": sum(c["decisions"] for c in results),
                    "lost": sum(c["lost"] for c in results),
                    "duplicated": 0,
                    "unprinted": sum(c["unprinted"] for c in results),
                    "broken": sum(c["broken"] for c in results),
                    "cycles_with_loss": sum(c["lost"] > 0 for c in results),
                    "open_at_cut": sum(bool(c.get("document_open")) for c in results),
                    "packs": sum(c.get("packs", 0) for c in results),
                    "units": sum(c.get("units", 0) for c in results),
                    "torn": sum(c.get("torn", 0) for c in results),
                    "pack_next": sum(bool(c.get("pack_next")) for c in results),
                    "pack_next_committed": sum(c.get("pack_next") == "committed" for c in results),
                    "delivered": sum(c.get("delivered_this_boot", 0) for c in results),
                    "collector_received": max((c.get("collector_received", 0) for c in results), default=0),
                    "receipted_cycles": sum(c.get("receipted_this_boot", 0) > 0 for c in results),
                    "online_cycles": sum(bool(c.get("online")) for c in results),
                    "caught_up_cycles": sum(c.get("collector_caught_up_s") is not None for c in results),
                    "ahead": sum(c.get("ahead", 0) for c in results),
                    "cycles_ahead": sum(c.get("ahead", 0) > 0 for c in results),
                    "max_recovery_s": round(max(recovery), 1) if recovery else None,
                    "note": "",
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| fault | cycles | scans (decisions printed) | lost | committed, never printed | broken ledgers "
        "| max recovery |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        recovery = "–" if row["max_recovery_s"] is None else f"{row['max_recovery_s']:.0f} s"
        lost = f"{row['lost']:,}" + (f" (in {row['cycles_with_loss']} cycles)" if row["lost"] else "")
        fault = row["fault"]
        if row.get("scenario") == "documents":
            fault += f"; {row['open_at_cut']} of {row['cycles']} cuts with one open"
        if row.get("scenario") == "cases":
            fault += (
                f"; {row['packs']:,} packs accepted ({row['units']:,} units), torn {row['torn']}; "
                f"{row['pack_next']} of {row['cycles']} cuts with a pack next in line "
                f"({row['pack_next_committed']} of those committed, never printed)"
            )
        if row.get("scenario") == "receipts":
            fault += (
                f"; online in {row.get('online_cycles', row['cycles'])} of {row['cycles']} cycles; "
                f"{row['delivered']:,} events delivered, the backlog stored before the cut in "
                f"{row['caught_up_cycles']} of them, receipts came back in "
                f"{row['receipted_cycles']}; "
                f"ahead of the ledger: {row['ahead']:,}"
                + (f" (in {row['cycles_ahead']} cycles)" if row["ahead"] else "")
            )
        lines.append(
            f"| {fault} | {row['cycles']} | {row['sent']:,} | {lost} | {row['unprinted']:,} "
            f"| {row['broken']} | {recovery} |"
        )
    return "\n".join(lines)


def boot(args, cycle: int, roles: list[Role], rng: random.Random, backend: Backend | None) -> tuple[str, float]:
    """One boot: launch, wait for every role's first decision (and for each role in its
    receipts scenario for the collector's first event of it), run 3-15 s, cut.
    ('cut'|'no-vm'|'failed', cut_after)."""
    online = [r for r in roles if r.online_at(cycle, args.scenarios)] if backend else []
    uplink = bool(online)
    for r in roles:
        r.port.write_bytes(b"")
        r.offset, r.partial, r.first_at, r.this_boot, r.stored_at, r.drained_at = 0, b"", None, [], None, None
        r.up_at = None
    stored_before = {r.name: backend.stored(r.device) for r in online}
    specs = " ".join(
        f"{r.name}={r.device}={r.scenario_at(cycle, args.scenarios)}={backend.port if r in online else '-'}"
        for r in roles
    )
    inner = f"tests/powercut/in-vm {cycle} {'user' if uplink else '-'} {specs}"
    cmd = [
        "vng", "--run", args.kernel, *([] if args.kvm else ["--disable-kvm"]), "--user", "root",
        # --force-9p: 9p is what vng falls back to here after waiting ~4 s for a virtiofsd that fails
        "--force-9p", "--append", f"module_blacklist={UNNEEDED_MODULES}",
        "--cpus", "2", "--memory", "1G", *(["--network", "user", "--no-dhcp"] if uplink else []),
        f"--qemu-opts={qemu_opts(roles)}", "--exec", inner,
    ]  # fmt: skip
    env = dict(os.environ, PATH=f"{ROOT / '.venv-vm' / 'bin'}:{os.environ['PATH']}")
    compile_tree()
    launched = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    console = Console(proc, args.out / f"cycle-{cycle}.console", launched)
    cut_at = None
    outcome = "failed"
    polled = 0.0
    try:
        while True:
            now = time.monotonic()
            for r in roles:
                read_port(r)
                if r.first_at is None and any(d.get("verdict") != "manifest" for d in r.this_boot):
                    r.first_at = now - launched
            if uplink and cut_at is None and now - polled >= 0.5:
                polled = now
                for r in online:
                    if r.stored_at is None and backend.stored(r.device) > stored_before[r.name]:
                        r.stored_at = now - launched
                    if (
                        r.stored_at is not None
                        and r.drained_at is None
                        and backend.stored_through(r.device) >= r.last_seq
                    ):
                        r.drained_at = now - launched
            started = all(r.first_at is not None for r in roles)
            # A receipts cycle cuts once the collector has stored (and so receipted) what the
            # ledger held before this boot: else the backlog of the offline cycles between two
            # receipts cycles outgrows one short connection, the collector's stored-through
            # stops at its first gap, and no receipt moves for the rest of the run.
            if started and uplink and any(r.drained_at is None for r in online):
                started = now - launched - max(r.first_at for r in roles) > DRAIN_WAIT_S
            if cut_at is None and started:
                cut_at = now + rng.uniform(3, 15)
            if cut_at is not None and now >= cut_at:
                power_cut(proc.pid)
                outcome = "cut"
                break
            if proc.poll() is not None:
                outcome = "failed" if console.seen("powercut-vm: up") is not None else "no-vm"
                break
            if cut_at is None and now - launched > args.boot_timeout:
                outcome = "failed" if console.seen("powercut-vm: up") is not None else "no-vm"
                power_cut(proc.pid)
                break
            time.sleep(0.05)
        after = (time.monotonic() - launched) - max(max(r.first_at or 0, r.drained_at or 0) for r in roles)
    finally:
        if outcome != "cut":  # also when this script is interrupted: no VM left behind
            power_cut(proc.pid)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        console.join()
    for r in roles:
        read_port(r)  # all qemu wrote before it died
        r.up_at = console.agent_up(r.name, r.first_at)
    if outcome != "cut":
        print(f"scripts/powercut-tests: boot {cycle}: {outcome}; the console's end:\n{console.tail()}", file=sys.stderr)
    up = console.seen("powercut-vm: up")
    print(
        f"boot {cycle}: guest up {up if up is None else round(up, 1)} s after launch; "
        + ", ".join(f"{r.name} first decision {r.first_at and round(r.first_at, 1)} s" for r in roles)
        + (
            ", the collector's first event, and through the ledger's seq before the boot: "
            + ", ".join(
                f"{r.name} {r.stored_at and round(r.stored_at, 1)} s and {r.drained_at and round(r.drained_at, 1)} s "
                f"(seq {r.last_seq})"
                for r in online
            )
            if uplink
            else ""
        )
        + (f"; power cut {after:.1f} s after that" if outcome == "cut" else ""),
        flush=True,
    )
    return outcome, after


def next_in_line(cycle: int, decisions: list[dict], contents: Contents) -> str | None:
    """The pack the feed gave the agent right after the line of the last decision printed
    this boot, if that line is a pack's first scan (each line fed gets one decision; the
    manifest's comes from the import): the cut came during that pack's expansion, or
    before the agent read it (the feeder is ahead of the agent). None otherwise."""
    fed = sum(d.get("verdict") != "manifest" for d in decisions)
    lines = [line.strip().decode() for line in islice(FEEDS["cases"](cycle, seed=cycle), fed + 1)]
    return lines[-1] if lines[-1] in contents and lines[-1] not in lines[:-1] else None


def rows_of(db: Path | None, code: str) -> int:
    """How many ledger rows ``code`` has (0 when the ledger cannot be read)."""
    if db is None:
        return 0
    try:
        conn = sqlite3.connect(str(db))
        try:
            return conn.execute("SELECT COUNT(*) FROM scans WHERE code = ?", (code,)).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return 0


def check_role(args, cycle: int, r: Role, cut_after: float, contents: Contents, backend: Backend | None) -> dict:
    printed = [d for d in r.this_boot if d.get("verdict") in RECORDED]
    for d in printed:
        r.received[d["event_id"]] = (d["verdict"], d["seq"])
    name = r.scenario_at(cycle, args.scenarios)
    fsck_rc, fsck_out, db = dump_ledger(r.image, args.out / "check" / r.name)
    result = check_ledger(db, r.received, r.unprinted, contents)
    if backend is not None and r.scenario in (None, "receipts"):
        # every cycle of a role that talks to the collector: what it delivered once must stay behind the ledger
        result.update(check_uplink(db, backend.received(r.device)))
        result["delivered_this_boot"] = result["delivered"] - r.uplink_before[0]
        result["receipted_this_boot"] = max(0, result["receipted_through"] - r.uplink_before[1])
        result["collector_first_s"] = r.stored_at and round(r.stored_at, 2)
        result["collector_caught_up_s"] = r.drained_at and round(r.drained_at, 2)
        result["online"] = r.online_at(cycle, args.scenarios)
        r.uplink_before = (result["delivered"], result["receipted_through"])
        r.last_seq = result["last_seq"]
    pack_events = result.pop("pack_events", set())
    accepted_packs = [d for d in r.this_boot if d.get("verdict") == "accepted" and "pack" in (d.get("record") or {})]
    result["packs"] = len(accepted_packs)
    result["units"] = sum(len(d["record"]["pack"]["units"]) for d in accepted_packs)
    # Printed as accepted, yet no whole pack row: lost already, counted again here by name.
    result["packs_missing"] = sum(d["event_id"] not in pack_events for d in accepted_packs)
    if name == "cases":
        result["delivery"] = delivery(cycle)
        pack = next_in_line(cycle, r.this_boot, contents)
        if pack is not None:  # its first scan, unanswered: a row of it was committed, never printed
            result["pack_next"] = "committed" if rows_of(db, pack) else "absent"
    counts: dict[str, int] = {}
    for d in r.this_boot:
        counts[d["verdict"]] = counts.get(d["verdict"], 0) + 1
    result.update(
        role=r.name,
        cycle=cycle,
        scenario=name,
        decisions=len(r.this_boot),
        verdicts=counts,
        recovery_s=None if r.up_at is None else round(r.up_at, 2),
        cut_after_s=round(cut_after, 2),
        e2fsck_rc=fsck_rc,
    )
    if fsck_rc >= 4:
        result["broken"] = True
        result["e2fsck"] = fsck_out.splitlines()[-3:]
    r.results.append(result)
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    state = "BROKEN" if result["broken"] else "intact"
    if result["scenario"] == "documents":
        state += (
            f", {result.get('documents_closed', 0)} documents closed ({result.get('documents_bad', 0)} not matching "
            f"the ledger), one open at the cut: {bool(result.get('document_open'))}"
        )
    if result["scenario"] == "cases":
        state += (
            f", {'in a delivery' if result['delivery'] else 'no delivery'}: {result['packs']} packs accepted "
            f"({result['units']} units, {result['packs_missing']} of them not whole in the ledger); the ledger "
            f"{result.get('packs_stored', 0)} pack rows ({result.get('units_stored', 0)} units), torn "
            f"{result.get('torn', 0)}; next in line at the cut: "
            + (f"a pack, {result['pack_next']}" if result.get("pack_next") else "no new pack")
        )
    print(
        f"  {r.name:9} cycle {len(r.results)}: {result['decisions']} decisions ({verdicts}); "
        f"lost {result['lost']}; committed-but-unprinted {result['unprinted']}; ledger {result['stored']} rows, "
        f"{state} (verify: {result['verify'] or '-'}; integrity_check: {result['integrity'][:80]}; "
        f"seq {'contiguous' if result['seq_ok'] else 'GAPS'}; e2fsck exit {fsck_rc}); "
        f"recovery {result['recovery_s']} s",
        flush=True,
    )
    if result["lost"]:
        print(f"  {r.name:9} lost, e.g. {result['lost_examples']}", flush=True)
    if result.get("torn"):
        print(f"  {r.name:9} TORN packs, e.g. {result['torn_examples']}", flush=True)
    if "ahead" in result and (name == "receipts" or result["ahead"]):
        print(
            f"  {r.name:9} uplink ({r.device}): {result['delivered_this_boot']} events delivered this boot "
            f"({result['delivered']} in all), receipts through seq {result['receipted_through']} "
            f"(+{result['receipted_this_boot']} this boot); the collector received {result['collector_received']}; "
            f"ahead of the ledger: {result['ahead']}"
            + (f", e.g. {result['ahead_examples']}" if result["ahead"] else ""),
            flush=True,
        )
    with open(args.out / "cycles.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    if result["lost"] or result["broken"] or result.get("ahead"):
        make_image(r.image)  # the next boot starts a new ledger, a new device to the collector
        r.received, r.unprinted, r.uplink_before, r.last_seq = {}, set(), (0, 0), 0
        r.generation += 1
        print(f"  {r.name:9} the next boot gets a new disk image", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--control-cycles", type=int, default=4)
    parser.add_argument("--boot-timeout", type=float, default=420, help="seconds from launch to every first decision")
    parser.add_argument("--kvm", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="start no boot after this many minutes (the cycles run are reported)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: tuple(text.split(",")),
        default=SCENARIOS,
        help=f"the cycles take these in turn (default: {','.join(SCENARIOS)})",
    )
    args = parser.parse_args(argv)
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios: a comma-separated list of {', '.join(SCENARIOS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally that stops the VM
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cycles.jsonl").write_text("")
    # One kiosk per scenario, each on its own disk, all in every boot: a boot cuts each once.
    roles = [
        Role(name, args.out / f"{name}.img", args.out / f"{name}.port", args.cycles, name) for name in args.scenarios
    ]
    roles.append(Role("control", args.out / "control.img", args.out / "control.port", args.control_cycles))
    for r in roles:
        make_image(r.image)
    boots = max(args.cycles, args.control_cycles)
    print(
        f"scripts/powercut-tests: {args.cycles} cycles of each scenario ({', '.join(args.scenarios)}: one agent "
        f"of each, on its own disk, in every boot), {args.control_cycles} of the control (synchronous=OFF, the "
        f"scenarios in turn), in {boots} boots of {args.kernel} ({'KVM' if args.kvm else 'no KVM'}); seed {seed}; "
        f"results in {args.out}",
        flush=True,
    )
    started = time.monotonic()
    failed_boots = 0
    relaunched: list[int] = []  # boots whose VM never came up, launched again
    contents: Contents = {}  # every pack of the manifests imported so far (codes differ between cycles)
    with contextlib.ExitStack() as stack:
        backend = None
        if any(r.scenario_at(c, args.scenarios) == "receipts" for r in roles for c in range(1, r.cycles + 1)):
            backend = stack.enter_context(Backend(args.out / "backend"))
            print(
                f"scripts/powercut-tests: the back end for the receipts cycles: mosquitto on port {backend.port}, "
                f"scan-collector into PostgreSQL ({time.monotonic() - started:.1f} s to start)",
                flush=True,
            )
        for cycle in range(1, boots + 1):
            if args.minutes is not None and time.monotonic() - started > args.minutes * 60:
                print(f"scripts/powercut-tests: {args.minutes:g} min are up: stopping before boot {cycle}", flush=True)
                for r in roles:  # what was run is what is reported and judged
                    r.cycles = min(r.cycles, cycle - 1)
                boots = cycle - 1
                break
            this = [r for r in roles if cycle <= r.cycles]
            if any(r.scenario_at(cycle, args.scenarios) == "cases" for r in this):
                contents.update(pack_contents(cases_manifest(cycle)))
            outcome, after = boot(args, cycle, this, rng, backend)
            # A VM that never ran in-vm touched no disk: launched again, at most twice a boot
            # (a long run here lost a boot to a vng that exited after 11 s, printing nothing).
            while outcome == "no-vm" and cycle > 1 and relaunched.count(cycle) < 2:
                relaunched.append(cycle)
                print(f"scripts/powercut-tests: boot {cycle}: the VM did not come up; launching it again", flush=True)
                outcome, after = boot(args, cycle, this, rng, backend)
            if outcome == "no-vm" and cycle == 1:
                print("scripts/powercut-tests: SKIPPED the power-cut suite: the VM did not come up "
                      f"(see {args.out}/cycle-1.console)", file=sys.stderr)  # fmt: skip
                return 77
            if outcome != "cut":
                failed_boots += 1
            for r in this:
                if outcome == "cut" or r.this_boot:
                    check_role(args, cycle, r, after, contents, backend)
    took = time.monotonic() - started

    rows = summary_rows(roles)
    for row in rows:
        row["note"] = f"seed {seed}"
    with open(args.out / "figures.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    sys.path.insert(0, str(ROOT))
    from bench.machine import header

    md = (
        f"```\n{header()}\ncommand: POWERCUT_CYCLES={args.cycles} POWERCUT_CONTROL_CYCLES={args.control_cycles} "
        + (f"POWERCUT_SCENARIOS={','.join(args.scenarios)} " if args.scenarios != SCENARIOS else "")
        + (f"POWERCUT_MINUTES={args.minutes:g} " if args.minutes is not None else "")
        + f"scripts/powercut-tests\ntook:    {took / 60:.1f} min ({boots} boots, "
        f"{'KVM' if args.kvm else 'no KVM'}"
        + (f"; {len(relaunched)} launches again, the VM not up: boots {relaunched}" if relaunched else "")
        + ")\n```\n\n"
        f"{table(rows)}\n"
    )
    (args.out / "summary.md").write_text(md, encoding="utf-8")
    print(f"\n{md}", flush=True)

    control = next(r for r in roles if r.kind == "control")
    results = [c for r in roles if r.kind == "real" for c in r.results]
    problems = []
    if failed_boots:
        problems.append(f"{failed_boots} boots did not reach the power cut")
    for r in roles:
        if r.kind == "real" and len(r.results) < r.cycles:
            problems.append(f"only {len(r.results)} of {r.cycles} {r.name} cycles were checked")
    if any(c["lost"] for c in results):
        problems.append(f"the real agent LOST {sum(c['lost'] for c in results)} printed decisions")
    if any(c.get("torn") for c in results):
        problems.append(f"the real agent's ledger had {sum(c.get('torn', 0) for c in results)} TORN packs")
    if any(c["packs_missing"] for c in results):
        problems.append(f"{sum(c['packs_missing'] for c in results)} packs printed accepted are not whole")
    if any(c["broken"] for c in results):
        problems.append(f"the real agent's ledger was BROKEN in {sum(c['broken'] for c in results)} cycles")
    if any(c["decisions"] == 0 for c in results):
        problems.append("a real cycle printed no decision")
    if any(c.get("ahead") for c in results):
        problems.append(
            f"the real agent's uplink was AHEAD of its ledger {sum(c['ahead'] for c in results)} times "
            f"(in {sum(c['ahead'] > 0 for c in results)} cycles)"
        )
    receipts = [c for c in results if c["scenario"] == "receipts" and c.get("online")]
    silent = [c["cycle"] for c in receipts if c.get("collector_first_s") is None]
    if silent:
        problems.append(f"in receipts cycles {silent} no event of the real agent reached the collector")
    if receipts and not any(c.get("receipted_this_boot") for c in receipts):
        problems.append(f"no receipt came back to the real agent in {len(receipts)} receipts cycles")
    shown = sum(c["lost"] > 0 or c["broken"] or c.get("ahead", 0) > 0 for c in control.results)
    if args.control_cycles:
        if shown:
            print(f"scripts/powercut-tests: the control (synchronous=OFF) showed loss or breakage in {shown} of "
                  f"{len(control.results)} cycles, as it must", flush=True)  # fmt: skip
        else:
            problems.append(
                f"the control (synchronous=OFF) lost nothing in {len(control.results)} cycles: "
                "the suite did not show it can fail (run more control cycles)"
            )
    if problems:
        print("scripts/powercut-tests: FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    packs = sum(c["packs"] for c in results)
    units = sum(c["units"] for c in results)
    print(f"scripts/powercut-tests: PASSED: {len(results)} power cuts, 0 printed decisions lost, "
          f"every ledger verified, {packs} packs ({units} units) accepted, none torn ({took / 60:.1f} min)",
          flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
