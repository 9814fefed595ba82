"""``scan-collector``: run, migrate, report. A thin layer over :mod:`collector.service`,
:mod:`collector.schema` and :mod:`collector.report`.

    scan-collector migrate --dsn postgresql://collector@db/trace
    scan-collector run --broker mqtt.example:8883 --tls --ca-file ca.pem \\
        --cert-file collector.pem --key-file collector.key --dsn postgresql://collector@db/trace
    scan-collector report --dsn postgresql://collector@db/trace --json

>>> parse_broker("mqtt.example:8883")
('mqtt.example', 8883)
>>> parse_broker("mqtt.example", tls=True)
('mqtt.example', 8883)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path


def parse_broker(text: str, *, tls: bool = False) -> tuple[str, int]:
    """``HOST[:PORT]``; the port defaults to 1883, or 8883 with TLS (as the agent's ``[mqtt]``)."""
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    return host, int(port) if port else (8883 if tls else 1883)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scan-collector", description="MQTT events into PostgreSQL, with receipts")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="collect until stopped (SIGTERM, SIGINT)")
    run.add_argument("--broker", required=True, metavar="HOST:PORT")
    run.add_argument("--dsn", required=True, help="PostgreSQL connection string")
    run.add_argument("--prefix", default="trace/v1", help="topic prefix (the agents' [mqtt] topic_prefix)")
    run.add_argument("--client-id", help="MQTT client id: keep it across restarts (default: collector-HOST-PID)")
    run.add_argument("--share", default="collectors", help="shared subscription group")
    run.add_argument(
        "--shared",
        choices=("auto", "always", "never"),
        default="auto",
        help="subscribe as $share/GROUP/...: auto = with MQTT 5 unless the CONNACK says the broker"
        " has no shared subscriptions; always (mosquitto shares under 3.1.1 too); never",
    )
    run.add_argument("--no-share", action="store_true", help="the same as --shared never")
    run.add_argument(
        "--mqtt311", action="store_true", help="MQTT 3.1.1 (NATS, RabbitMQ): subscribes plainly unless --shared always"
    )
    run.add_argument("--tls", action="store_true")
    run.add_argument("--ca-file", default="")
    run.add_argument("--cert-file", default="", help="client certificate (with --key-file)")
    run.add_argument("--key-file", default="")
    run.add_argument("--username", default="")
    run.add_argument("--password-file", default="")
    run.add_argument("--gap-grace-s", type=float, default=5.0, help="a gap this old is asked for with cmd/resend")
    run.add_argument("--gap-retry-s", type=float, default=5.0, help="first wait before asking again (doubles)")
    run.add_argument("--gap-retry-max-s", type=float, default=300.0)
    run.add_argument("--max-payload-bytes", type=int, default=None)
    run.add_argument("--batch-max", type=int, default=5000, help="messages per transaction, at most")
    run.add_argument("--no-lead", action="store_true", help="never lead (receipts and gaps come from another)")
    run.add_argument("--log-level", default="INFO")

    migrate = commands.add_parser("migrate", help="create or update the database schema")
    migrate.add_argument("--dsn", required=True)

    rep = commands.add_parser("report", help="devices, seqs, gaps, chain breaks, conflicts")
    rep.add_argument("--dsn", required=True)
    rep.add_argument("--json", action="store_true", help="one JSON object: devices[], quarantine{}, conflicts")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import psycopg
    except ImportError:
        print("scan-collector needs psycopg: pip install 'scan-agent[collector]'", file=sys.stderr)
        return 2
    if args.command == "migrate":
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            from collector.schema import migrate

            applied = migrate(conn)
        print("applied: " + ", ".join(applied) if applied else "up to date")
        return 0
    if args.command == "report":
        from collector.report import render, report

        with psycopg.connect(args.dsn, autocommit=True) as conn:
            data = report(conn)
        print(json.dumps(data, ensure_ascii=False, indent=1) if args.json else render(data))
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from collector.check import MAX_PAYLOAD_BYTES
    from collector.intake import Broker
    from collector.service import Collector, Settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(args.cert_file) != bool(args.key_file):
        print("--cert-file and --key-file go together", file=sys.stderr)
        return 2
    if (args.ca_file or args.cert_file) and not args.tls:
        print("--ca-file/--cert-file/--key-file need --tls", file=sys.stderr)
        return 2
    host, port = parse_broker(args.broker, tls=args.tls)
    password = Path(args.password_file).read_text().rstrip("\r\n") if args.password_file else None
    broker = Broker(
        host,
        port,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        username=args.username,
        password=password,
        v5=not args.mqtt311,
    )
    extra = {"client_id": args.client_id} if args.client_id else {}
    settings = Settings(
        dsn=args.dsn,
        broker=broker,
        prefix=args.prefix,
        share=args.share,
        shared="never" if args.no_share else args.shared,
        batch_max=args.batch_max,
        max_payload_bytes=args.max_payload_bytes or MAX_PAYLOAD_BYTES,
        gap_grace_s=args.gap_grace_s,
        gap_retry_s=args.gap_retry_s,
        gap_retry_max_s=args.gap_retry_max_s,
        lead=not args.no_lead,
        **extra,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Collector(settings).run(stop)
    return 0
