"""The ``scan-agent`` command line.

    scan-agent check CODE... [--json] [--accept-gs1]
    scan-agent run [--config F] [--movement M] [--db PATH] [--json]
    scan-agent ledger verify [--db PATH]
    scan-agent ledger export [--db PATH] [--since T] [--format csv|jsonl]
    scan-agent documents open --id ID --kind KIND [--ref KEY=VALUE ...] [--lines FILE|-]
    scan-agent documents close ID
    scan-agent documents void EVENT_ID --reason R [--approver A]
    scan-agent documents exception DOC --line PRODUCT --kind uncoded|damaged --reason R --approver A [--units N]
    scan-agent documents acknowledge --by NAME
    scan-agent documents list [--json]
    scan-agent documents show ID [--json]
    scan-agent documents export [--id ID] [--closed] [--format csv|jsonl]
    scan-agent manifest import FILE [--codes CSV] [--json]
    scan-agent ledger code CODE [--json]
    scan-agent provision --device-id ID --site SITE --broker HOST[:PORT] --ca FILE [--dir D]
    scan-agent provision --install-cert FILE [--dir D]
    scan-agent doctor [--config F] [--json] [--interactive]
    scan-agent --version

Every ``ledger``, ``documents`` and ``manifest`` command takes ``--config F`` and ``--db PATH``. The
documents commands that write go to the running agent (its control socket), or,
when no agent runs on that ledger, write it directly; the others only read it.

Exit status: 0 success, 1 a check or verification failed or a documents command was
refused, 2 bad usage or config (or another agent already runs on the ledger),
3 the ledger is damaged and ``[ledger] on_corrupt = "refuse"`` (it was moved aside).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent import __version__, config
from agent.domain import MOVEMENTS

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable

    from agent import codes

T = TypeVar("T")

# Each command imports what it needs itself: ``check`` must not pay for the ledger,
# the runner, logging or the scanners' libraries (bench/startup.py times it).


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.handler is not cmd_check:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except config.ConfigError as problem:
        print(f"scan-agent: bad config: {problem}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def cmd_check(args: argparse.Namespace) -> int:
    from agent import codes

    if args.json:
        import json
    cfg = config.load(args.config) if args.config else config.builtin_default()
    all_valid = True
    for text in args.codes:
        parsed = codes.parse(
            text, leading_digits=cfg.codes.leading_digits, accept_gs1=args.accept_gs1 or cfg.codes.accept_gs1
        )
        all_valid &= parsed.valid
        if args.json:
            print(json.dumps(_check_dict(parsed), ensure_ascii=False))
        elif parsed.valid:
            print(f"valid {parsed.kind} {parsed.code} product={parsed.product_id} serial={parsed.serial}")
        else:
            print(f"invalid {parsed.reason} {parsed.text} ({parsed.detail})")
    return 0 if all_valid else 1


def _check_dict(parsed: codes.TraceCode | codes.Rejection) -> dict:
    out = {
        "valid": parsed.valid,
        "kind": parsed.kind,
        "reason": parsed.reason,
        "code": parsed.code if parsed.valid else parsed.text,
        "product_id": parsed.product_id or None,
        "serial": parsed.serial or None,
        "symbology": parsed.symbology,
    }
    if parsed.valid:
        out.update(check=parsed.check, expiry=parsed.expiry, lot=parsed.lot)
    else:
        out["detail"] = parsed.detail
    return out


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import sqlite3

    from agent import control
    from agent.ledger import quarantine
    from agent.runner import Runner

    cfg = config.with_overrides(config.load(args.config), movement=args.movement, db=args.db)
    runner = Runner(cfg, out=sys.stdout, as_json=args.json)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.request_stop())
    try:
        return runner.run()
    except control.LedgerBusy as problem:
        print(f"scan-agent: REFUSING TO START: {problem}", file=sys.stderr)
        return 2
    except quarantine.LedgerDamaged as problem:
        print(f"scan-agent: REFUSING TO START: {problem}", file=sys.stderr)
        return 3
    except (sqlite3.Error, OSError) as problem:
        print(f"scan-agent: cannot open the ledger at {cfg.ledger.path}: {problem}", file=sys.stderr)
        return 2


def cmd_verify(args: argparse.Namespace) -> int:
    from agent import ledger
    from agent.ledger import quarantine

    path = Path(args.db) if args.db else config.load(args.config).ledger.path
    damage = quarantine.inspect(path) if path.exists() else []
    if damage:
        print(f"ledger DAMAGED: {path}:", file=sys.stderr)
        for problem in damage:
            print(f"  {problem}", file=sys.stderr)
        return 1
    conn = _open_existing(args)
    result = ledger.verify(conn)
    if result.ok:
        print(f"ledger intact: {result.rows} scans, hash chain and seq verified, manifests' codes verified")
        return 0
    print(f"ledger BROKEN at {result.problem}", file=sys.stderr)
    return 1


def cmd_code(args: argparse.Namespace) -> int:
    """One code's state here: held, dispensed, destroyed, and the scans behind each."""
    import json

    from agent.ledger import reports

    status = reports.code_status(_open_existing(args), args.code)
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return 0
    if not status["seen"]:
        print(f"{args.code}: never recorded at this station")
        return 0
    held = "held (received, not returned to the supplier)" if status["held"] else "not held"
    print(
        f"{args.code}: {held}; dispensed {status['dispensed']} time(s) not returned"
        + ", DESTROYED" * status["destroyed"]
    )
    for what, scan in status["scans"].items():
        via = "" if scan["via"] == "self" else f" inside {scan['via']}"
        doc = f" in document {scan['document']}" if scan["document"] else ""
        print(f"  {what}{via}{doc}: {scan['ts']} on {scan['device_id']} (event {scan['event_id']}, seq {scan['seq']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import csv
    import json

    from agent import ledger

    rows = ledger.export_rows(_open_existing(args), since=_iso_since(args.since))
    if args.format == "jsonl":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    columns = [*ledger.HASHED, "hash", *ledger.HASHED_WHEN_SET]
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return 0


def _iso_since(text: str | None) -> str | None:
    if text is None:
        return None
    from datetime import UTC, datetime

    from agent.clock import iso

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"scan-agent: --since {text!r} is not an ISO-8601 time, e.g. 2026-01-01T08:00:00Z") from None
    return iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _open_existing(args: argparse.Namespace) -> sqlite3.Connection:
    import sqlite3

    path = Path(args.db) if args.db else config.load(args.config).ledger.path
    if not path.exists():
        raise SystemExit(f"scan-agent: no ledger at {path}")
    # Read-only: an inspector's command must never change the ledger.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def cmd_documents_send(args: argparse.Namespace) -> int:
    """A documents command that writes: open, close, void, exception, acknowledge."""
    import json

    from agent import control
    from agent.ledger.documents import DocumentError

    cfg = config.with_overrides(config.load(args.config), db=args.db)
    try:
        result = control.send(cfg.ledger.path, args.verb, args.body(args), config=cfg)
    except DocumentError as problem:
        print(f"scan-agent documents: {problem}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    for row in result["rows"]:
        line = f"{row['verdict']}: {row['detail']} (event {row['event_id']}, seq {row['seq']})"
        progress = row.get("progress")
        if progress:
            line += f"; collected {_of(progress['collected'], progress['expected'])}"
        print(line)
    return 0


def cmd_manifest_import(args: argparse.Namespace) -> int:
    """Import a supplier's manifest: checked here first (naming the row of the first
    fault), then recorded by the ledger's one writer, as a documents command is."""
    import json

    from agent import control
    from agent.ledger.documents import DocumentError
    from agent.ledger.manifests import ManifestError, read_manifest_file

    cfg = config.with_overrides(config.load(args.config), db=args.db)
    try:
        manifest = read_manifest_file(args.file, args.codes, leading_digits=cfg.codes.leading_digits)
    except ManifestError as problem:
        print(f"scan-agent manifest: {args.file}: {problem}; nothing imported", file=sys.stderr)
        return 1
    try:
        result = control.send(cfg.ledger.path, "import_manifest", manifest.canonical(), config=cfg)
    except DocumentError as problem:
        print(f"scan-agent manifest: {problem}; nothing imported", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif result["imported"]:
        row = result["rows"][0]
        print(f"imported: {row['detail']} (event {row['event_id']}, seq {row['seq']})")
    else:
        print(f"manifest {result['bill_code']} was imported already, with the same contents; nothing to do")
    return 0


def _open_body(args: argparse.Namespace) -> dict:
    body: dict = {"id": args.id, "kind": args.kind}
    if args.ref:
        body["ref"] = dict(args.ref)
    if args.lines is not None:
        body["lines"] = _read_lines(args.lines)
    return body


def _read_lines(name: str) -> object:
    import json

    from agent.ledger.documents import DocumentError

    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        print(f"scan-agent documents: lines: cannot read {name}: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return json.loads(text)
    except ValueError as problem:
        raise DocumentError("lines", f"{name} is not JSON ({problem}); give a list of lines") from None


def _key_value(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, e.g. patient=P-17")
    return key, value


def _void_body(args: argparse.Namespace) -> dict:
    body = {"event_id": args.event_id, "reason": args.reason}
    if args.approver is not None:
        body["approver"] = args.approver
    return body


def _exception_body(args: argparse.Namespace) -> dict:
    body = {
        "document": args.document,
        "line": args.line,
        "kind": args.kind,
        "reason": args.reason,
        "approver": args.approver,
    }
    if args.units is not None:
        body["units"] = args.units
    return body


def cmd_documents_list(args: argparse.Namespace) -> int:
    import json

    from agent.ledger import reports

    documents = _report(args, reports.list_documents)
    if args.json:
        for doc in documents:
            print(json.dumps(doc, ensure_ascii=False))
        return 0
    table = [("id", "kind", "opened", "closed", "status", "collected")]
    for doc in documents:
        status = doc["status"] + (f" ({doc['reversals']} reversed)" if doc["reversals"] else "")
        collected = _of(doc["collected"], doc["expected"])
        table.append((doc["id"], doc["kind"], doc["opened_ts"], doc["closed_ts"] or "-", status, collected))
    widths = [max(len(row[n]) for row in table) for n in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_documents_show(args: argparse.Namespace) -> int:
    import json

    from agent.ledger import reports

    doc = _report(args, lambda conn: reports.show_document(conn, args.id))
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    opened, closed, progress = doc["opened"], doc["closed"], doc["progress"]
    print(f"{doc['kind']} {doc['id']}: {doc['status']} ({doc['movement']})")
    print(f"  opened {opened['ts']} by {opened['source_kind']}/{opened['source_id']} (event {opened['event_id']})")
    if closed is not None:
        print(f"  closed {closed['ts']} by {closed['closed_by']} (event {closed['event_id']})")
    if doc["ref"]:
        print("  ref " + " ".join(f"{k}={v}" for k, v in doc["ref"].items()))
    print(f"  collected {_of(progress['collected'], progress['expected'])}" + (", complete" * progress["complete"]))
    for line in doc["lines"]:
        extra = f", {line['exceptions']} by exception" if line["exceptions"] else ""
        print(f"  line {line['product_id']} {line['name']}: {_of(line['collected'], line['expected'])}{extra}")
    if doc["codes"]:
        print("codes:")
    for code in doc["codes"]:
        gone = f"  REVERSED by {code['reversed_by']}" if code["reversed_by"] else ""
        pack = f"  {code['level']} of {code['units']} units" if code["level"] != "unit" else ""
        print(
            f"  {code['drug_trac_codg']}  {code['product_id']}  trdn_flag={code['trdn_flag']}"
            f"  event {code['event_id']}  {code['ts']}{pack}{gone}"
        )
    if doc["voids"]:
        print("voids:")
    for void in doc["voids"]:
        approver = f" (approver {void['approver']})" if void["approver"] else ""
        print(f"  {void['kind']} {void['event_id']} of {void['voided']}: {void['reason']}{approver}")
    if doc["exceptions"]:
        print("exceptions:")
    for item in doc["exceptions"]:
        print(
            f"  {item['kind']} on line {item['line']}, {item['units']} unit(s): {item['reason']}"
            f" (approver {item['approver']}, event {item['event_id']})"
        )
    if doc["rejected"]:
        print(f"refused scans: {doc['rejected']}")
    if doc.get("no_manifest"):
        print("no manifest: received unit by unit, nothing to reconcile against")
    if doc["reconciliation"]:
        _print_reconciliation(doc["reconciliation"])
    return 0


def _print_reconciliation(rec: dict) -> None:
    """A delivery against its supplier's manifest, as the dock reads it."""
    verdict = "matches the manifest" if not rec["discrepancies"] else f"{rec['discrepancies']} discrepancies"
    print(f"reconciliation against manifest {rec['manifest']} ({rec['supplier']}): {verdict}")
    for line in rec["lines"]:
        mark = "" if line["received"] == line["expected"] else "  <--"
        print(
            f"  {line['product_id']} {line['name']} batch {line['batch'] or '-'} exp {line['expiry'] or '-'}:"
            f" received {line['received']} of {line['expected']}{mark}"
        )
    for item in rec["missing"]:
        print(f"  missing {item['level']} {item['code']} ({item['units']} units)")
    for code in rec["unexpected"]:
        print(f"  unexpected {code} (not on the manifest)")
    for item in rec["mismatches"]:
        what = "expired" if item["problem"] == "expired" else f"batch not on the bill (line batch {item['line_batch']})"
        print(f"  mismatch {item['code']}: batch {item['batch']} exp {item['expiry']}: {what}")


def cmd_documents_export(args: argparse.Namespace) -> int:
    import csv
    import json

    from agent.ledger import reports

    rows = _report(args, lambda conn: list(reports.export_codes(conn, args.id, closed_only=args.closed)))
    if args.format == "jsonl":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    writer = csv.DictWriter(sys.stdout, fieldnames=reports.EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return 0


def _report(args: argparse.Namespace, query: Callable[[sqlite3.Connection], T]) -> T:
    """``query`` on the ledger opened read-only, in one snapshot; a refusal exits 1."""
    import sqlite3

    from agent.ledger.documents import DocumentError

    conn = _open_existing(args)
    try:
        # One read transaction: an agent writing meanwhile cannot tear a report in two.
        conn.execute("BEGIN")
        return query(conn)
    except DocumentError as problem:
        print(f"scan-agent documents: {problem}", file=sys.stderr)
    except sqlite3.Error as problem:
        print(f"scan-agent documents: ledger: {problem}", file=sys.stderr)
    finally:
        conn.close()
    raise SystemExit(1)


def _of(collected: int, expected: int | None) -> str:
    return f"{collected}/{expected}" if expected is not None else str(collected)


def cmd_provision(args: argparse.Namespace) -> int:
    from agent.ops import provision

    try:
        if args.install_cert:
            print(provision.install_cert(args.install_cert, args.dir))
            return 0
        missing = [f"--{n.replace('_', '-')}" for n in ("device_id", "site", "broker", "ca") if not getattr(args, n)]
        if missing:
            print(f"scan-agent provision: {', '.join(missing)} needed (or --install-cert FILE)", file=sys.stderr)
            return 2
        csr = provision.provision(args.device_id, args.site, args.broker, args.ca, args.dir)
    except provision.ProvisionError as problem:
        print(f"scan-agent provision: {problem}", file=sys.stderr)
        return 1
    print(f"key {args.dir}/device.key (kept private), config {args.dir}/agent.toml written.", file=sys.stderr)
    print("Send this certificate signing request to the regional CA:", file=sys.stderr)
    print(csr, end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.ops import doctor

    checks = doctor.run_checks(Path(args.config), interactive=args.interactive, broker_timeout=args.timeout)
    print(doctor.report(checks, as_json=args.json))
    return 1 if any(c.failed for c in checks) else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scan-agent", description="Drug-traceability scanner kiosk agent.")
    parser.add_argument("--version", action="version", version=f"scan-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="check trace codes offline")
    check.add_argument("codes", nargs="+", metavar="CODE")
    check.add_argument("--json", action="store_true", help="one JSON object per line")
    check.add_argument("--accept-gs1", action="store_true", help="accept GS1 element strings too")
    check.add_argument("--config", help="take leading digits and GS1 settings from this config")
    check.set_defaults(handler=cmd_check)

    run = commands.add_parser("run", help="run the agent")
    run.add_argument("--config", help=f"config file (default {config.DEFAULT_PATH}, else built-in)")
    run.add_argument("--movement", choices=MOVEMENTS, help="override [station] movement")
    run.add_argument("--db", help="override [ledger] path")
    run.add_argument("--json", action="store_true", help="print each decision as a JSON object")
    run.set_defaults(handler=cmd_run)

    ledger_cmd = commands.add_parser("ledger", help="inspect the ledger")
    ledger_commands = ledger_cmd.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")
    verify = ledger_commands.add_parser("verify", help="recompute the hash chain")
    export = ledger_commands.add_parser("export", help="export scans for inspectors")
    export.add_argument("--since", help="only scans at or after this ISO-8601 UTC time, e.g. 2026-01-01T00:00:00Z")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    code = ledger_commands.add_parser("code", help="one code's state here, and the scans behind it")
    code.add_argument("code", metavar="CODE")
    code.add_argument("--json", action="store_true")
    for sub, handler in ((verify, cmd_verify), (export, cmd_export), (code, cmd_code)):
        _ledger_options(sub, "config naming the ledger")
        sub.set_defaults(handler=handler)

    _documents_parser(commands)

    manifest = commands.add_parser("manifest", help="supplier manifests for receiving (docs/manifest.md)")
    manifest_commands = manifest.add_subparsers(dest="manifest_command", required=True, metavar="COMMAND")
    imports = manifest_commands.add_parser("import", help="import a supplier's manifest (JSON; codes may be CSV)")
    imports.add_argument("file", metavar="FILE", help="the manifest, JSON")
    imports.add_argument("--codes", metavar="CSV", help="the manifest's code rows, CSV (docs/manifest.md)")
    imports.add_argument("--json", action="store_true", help="the reply as JSON")
    _ledger_options(imports, _WRITER_CONFIG_HELP)
    imports.set_defaults(handler=cmd_manifest_import)

    prov = commands.add_parser("provision", help="create the device key, CSR and config; install its certificate")
    prov.add_argument("--device-id", help="this kiosk's id (the certificate's CN)")
    prov.add_argument("--site", help="site id")
    prov.add_argument("--broker", help="regional broker, HOST[:PORT] (port 8883 by default)")
    prov.add_argument("--ca", help="the regional CA certificate (PEM)")
    prov.add_argument("--install-cert", metavar="FILE", help="install the certificate the CA returned")
    prov.add_argument("--dir", default="/etc/scan-agent", help="where key, certificates and config live")
    prov.set_defaults(handler=cmd_provision)

    doc = commands.add_parser("doctor", help="check this kiosk: config, ledger, disk, clock, scanners, broker")
    doc.add_argument("--config", default=str(config.DEFAULT_PATH), help="config file (default %(default)s)")
    doc.add_argument("--json", action="store_true", help="the checks as one JSON object")
    doc.add_argument("--interactive", action="store_true", help="also: scan a code now, LED and buzzer self-test")
    doc.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")
    doc.set_defaults(handler=cmd_doctor)
    return parser


def _documents_parser(commands: argparse._SubParsersAction) -> None:
    docs = commands.add_parser("documents", help="open, close and inspect documents (sales, deliveries, ...)")
    verbs = docs.add_subparsers(dest="documents_command", required=True, metavar="COMMAND")

    # Kinds and reasons are not argparse choices: the verb checks them and names the field.
    opening = verbs.add_parser("open", help="open a document")
    opening.add_argument("--id", required=True, help="the document's id (its barcode, the POS or HIS number)")
    opening.add_argument("--kind", required=True, help="sale, prescription, ward_order, delivery, ...")
    opening.add_argument(
        "--ref", action="append", type=_key_value, default=[], metavar="KEY=VALUE", help="e.g. patient=P-17"
    )
    opening.add_argument("--lines", metavar="FILE|-", help="expected lines, a JSON list (- reads stdin)")
    opening.set_defaults(verb="open_document", body=_open_body)

    closing = verbs.add_parser("close", help="close the open document")
    closing.add_argument("id", metavar="ID")
    closing.set_defaults(verb="close_document", body=lambda a: {"id": a.id})

    void = verbs.add_parser("void", help="void a document's scan (a reversal once the document closed)")
    void.add_argument("event_id", metavar="EVENT_ID")
    void.add_argument("--reason", required=True)
    void.add_argument("--approver")
    void.set_defaults(verb="void", body=_void_body)

    exception = verbs.add_parser("exception", help="count an item without a readable code against a line")
    exception.add_argument("document", metavar="DOC")
    exception.add_argument("--line", required=True, metavar="PRODUCT", help="the line's product id")
    exception.add_argument("--kind", required=True, help="uncoded or damaged")
    exception.add_argument("--reason", required=True)
    exception.add_argument("--approver", required=True)
    exception.add_argument("--units", type=int)
    exception.set_defaults(verb="exception", body=_exception_body)

    ack = verbs.add_parser("acknowledge", help="lift the station's lock")
    ack.add_argument("--by", required=True, metavar="NAME")
    ack.set_defaults(verb="acknowledge", body=lambda a: {"by": a.by})

    for sub in (opening, closing, void, exception, ack):
        sub.add_argument("--json", action="store_true", help="the reply as JSON")
        sub.set_defaults(handler=cmd_documents_send)

    listing = verbs.add_parser("list", help="every document: kind, opened, closed, status, collected")
    listing.add_argument("--json", action="store_true", help="one JSON object per document")
    listing.set_defaults(handler=cmd_documents_list)
    show = verbs.add_parser("show", help="one document: lines, progress, codes, voids, exceptions")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_documents_show)
    export = verbs.add_parser("export", help="one row per document code, for a 3505/3506 upload")
    export.add_argument("--id", help="only this document")
    export.add_argument("--closed", action="store_true", help="only closed documents")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.set_defaults(handler=cmd_documents_export)

    for sub in (opening, closing, void, exception, ack, listing, show, export):
        _ledger_options(sub, _WRITER_CONFIG_HELP)


#: ``--config`` of a command that may write the ledger itself when no agent runs.
_WRITER_CONFIG_HELP = "config naming the ledger (and, with no agent running, its settings)"


def _ledger_options(sub: argparse.ArgumentParser, config_help: str) -> None:
    """``--db`` and ``--config``, which every command on a ledger takes."""
    sub.add_argument("--db", help="ledger file (default: from the config)")
    sub.add_argument("--config", help=config_help)


if __name__ == "__main__":
    sys.exit(main())
