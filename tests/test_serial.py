"""Serial scanners: framing (pure), then SerialSource on real socat pseudo-terminal pairs."""

from __future__ import annotations

import logging
import os
import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import codes
from agent.ledger import Ledger, verify
from agent.pipeline import Pipeline
from agent.sources.framing import MAX_LINE, LineFramer
from agent.sources.serial import SerialSource
from tests.support.net import wait_until

CODE = "81234567890123456789"
OTHER = "81234567890123450000"


def frames(framer: LineFramer, *chunks: bytes) -> list[bytes]:
    return [f.raw for n, chunk in enumerate(chunks) for f in framer.feed(chunk, float(n))]


# -- framing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("terminator", "wire", "expected"),
    [
        ("cr", b"8123\r456\r", [b"8123\r", b"456\r"]),
        # A scanner left on CR LF with terminator = "cr": the LF belongs to the CR before it.
        ("cr", b"8123\r\n456\r\n", [b"8123\r", b"456\r"]),
        ("lf", b"8123\n456\n", [b"8123\n", b"456\n"]),
        ("lf", b"8123\r\n456\r\n", [b"8123\r\n", b"456\r\n"]),
        ("crlf", b"8123\r\n456\r\n", [b"8123\r\n", b"456\r\n"]),
        ("crlf", b"81\r23\r\n", [b"81\r23\r\n"]),  # a lone CR is data there
        ("any", b"8123\r456\n789\r\n0\r\n", [b"8123\r", b"456\n", b"789\r", b"0\r"]),
    ],
)
def test_terminators(terminator, wire, expected):
    assert frames(LineFramer(terminator), wire) == expected


def test_crlf_split_across_reads_is_one_terminator_never_an_empty_scan():
    assert frames(LineFramer("any"), b"8123\r", b"\n", b"456\r", b"\n") == [b"8123\r", b"456\r"]
    assert frames(LineFramer("crlf"), b"8123\r", b"\n") == [b"8123\r\n"]
    assert frames(LineFramer("cr"), b"8123\r", b"\n456\r", b"\n") == [b"8123\r", b"456\r"]


def test_terminators_alone_are_not_scans():
    assert frames(LineFramer("any"), b"\r\n\r\n\n\r") == []
    assert frames(LineFramer("crlf"), b"\r\n\r\n") == []


def test_overlong_line_is_one_read_then_resync_at_next_terminator():
    framer = LineFramer("cr")
    out = framer.feed(b"9" * 2000 + b"\r" + CODE.encode() + b"\r", 1.0)
    assert [len(f.raw) for f in out] == [MAX_LINE + 1, len(CODE) + 1]
    assert out[0].overlong and codes.parse(out[0].raw).reason == "too_long"
    assert codes.parse(out[1].raw).code == CODE
    assert framer.dropped == 2000 - MAX_LINE - 1


def test_read_timeout_ends_a_scan_without_terminator():
    framer = LineFramer("cr", read_timeout=0.05)
    assert framer.feed(b"8123", 10.0) == []
    assert framer.deadline() == 10.05
    assert framer.expire(10.04) is None
    frame = framer.expire(10.06)
    assert (frame.raw, frame.t_first, frame.t_last) == (b"8123", 10.0, 10.0)
    # ... and a byte arriving after the gap starts the next scan
    framer.feed(b"81", 20.0)
    assert [f.raw for f in framer.feed(b"99\r", 20.2)] == [b"81", b"99\r"]


def test_without_read_timeout_nothing_expires():
    framer = LineFramer("cr")
    framer.feed(b"8123", 0.0)
    assert framer.expire(1e9) is None and framer.deadline() is None


@given(
    scans=st.lists(st.text("0123456789", min_size=1, max_size=30), max_size=20),
    terminator=st.sampled_from(["\r", "\n", "\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=10),
)
def test_any_terminator_and_any_chunking_give_back_exactly_the_scans(scans, terminator, cuts):
    wire = "".join(s + terminator for s in scans).encode()
    points = sorted({min(c, len(wire)) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    got = [raw.rstrip(b"\r\n").decode() for raw in frames(LineFramer("any"), *chunks)]
    assert got == scans


# -- on a real pty ------------------------------------------------------------------


class Collect:
    def __init__(self):
        self.decisions = []

    def decided(self, decision):
        self.decisions.append(decision)


@pytest.fixture
def pipeline():
    sink = Collect()
    p = Pipeline(Ledger.open(":memory:", device_id="k", site_id="s"), sinks=[sink])
    p.sink = sink
    p.start()
    yield p
    p.stop()


def open_source(pty_pair, submit, **kwargs):
    source = SerialSource(str(pty_pair.host), name="counter", **kwargs)
    source.start(submit)
    assert source.connected.wait(2), "port not opened"
    return source


@pytest.mark.parametrize(("terminator", "suffix"), [("cr", b"\r"), ("lf", b"\n"), ("crlf", b"\r\n"), ("any", b"\r\n")])
def test_framing_on_a_pty(pty_pair, terminator, suffix):
    reads = []
    source = open_source(pty_pair, reads.append, terminator=terminator)
    fd = pty_pair.open_device()
    try:
        os.write(fd, CODE.encode() + suffix + OTHER.encode() + suffix)
        wait_until(lambda: len(reads) >= 2, 2, what="two reads")
        threading.Event().wait(0.2)  # room for a spurious empty third read to show up
        assert [codes.parse(r.raw).code for r in reads] == [CODE, OTHER]
        assert all(r.source_kind == "serial" and r.source_id == str(pty_pair.host) for r in reads)
        assert all(r.scanner == "counter" and r.symbology is None for r in reads)
    finally:
        os.close(fd)
        source.stop()


def test_aim_symbology_is_noted_on_the_read(pty_pair):
    reads = []
    source = open_source(pty_pair, reads.append)
    fd = pty_pair.open_device()
    try:
        os.write(fd, b"]C0" + CODE.encode() + b"\r")
        wait_until(lambda: reads, 2, what="a read")
        assert (reads[0].symbology, reads[0].raw) == ("]C0", b"]C0" + CODE.encode() + b"\r")
    finally:
        os.close(fd)
        source.stop()


def test_inter_byte_timeout_ends_a_read_on_a_pty(pty_pair):
    reads = []
    source = open_source(pty_pair, reads.append, terminator="cr", read_timeout=0.05)
    fd = pty_pair.open_device()
    try:
        os.write(fd, CODE.encode())
        wait_until(lambda: reads, 2, what="read ended by the timeout")
        assert reads[0].raw == CODE.encode()
    finally:
        os.close(fd)
        source.stop()


def test_reply_writes_back_to_the_scanner(pty_pair):
    reads = []
    source = open_source(pty_pair, reads.append)
    fd = pty_pair.open_device()
    try:
        os.write(fd, CODE.encode() + b"\r")
        wait_until(lambda: reads, 2, what="a read")
        reads[0].reply(b"\x06")  # host-ACK: good read
        os.set_blocking(fd, True)
        assert os.read(fd, 1) == b"\x06"
    finally:
        os.close(fd)
        source.stop()
    reads[0].reply(b"\x15")  # port closed: logged, never raised


def test_ten_thousand_random_byte_strings_and_every_code_around_them_decided(pty_pair, pipeline):
    rng = random.Random(20261122)
    source = open_source(pty_pair, pipeline.submit, terminator="cr")
    fd = pty_pair.open_device()
    expected = []
    try:
        chunks = []
        for n in range(10_000):
            if n % 500 == 0:
                code = f"8{n:019d}"
                expected.append(code)
                chunks.append(code.encode() + b"\r")
            size = rng.randint(600, 1500) if n % 997 == 0 else rng.randint(0, 80)
            chunks.append(rng.randbytes(size) + b"\r")
        last = f"8{10_000:019d}"
        expected.append(last)
        chunks.append(last.encode() + b"\r")
        for chunk in chunks:
            os.write(fd, chunk)
        wait_until(
            lambda: any(d.text == last for d in pipeline.sink.decisions), 60, interval=0.1, what="last code decided"
        )
    finally:
        os.close(fd)
    assert source._reader.is_alive()
    source.stop()
    decisions = pipeline.sink.decisions
    accepted = [d.text for d in decisions if d.verdict == "accepted"]
    assert accepted == expected
    reasons = {d.reason for d in decisions if d.verdict == "rejected"}
    assert {"not_text", "too_long"} <= reasons
    assert len(decisions) > 10_000  # every garbage string ended by a CR became (at least) one recorded read
    assert verify(pipeline.ledger.conn).ok


def test_unplug_and_replug_reopens_within_2_s_and_decides(pty_pair, pipeline, caplog):
    caplog.set_level(logging.INFO, logger="agent.sources.serial")
    source = open_source(pty_pair, pipeline.submit)
    fd = pty_pair.open_device()
    os.write(fd, CODE.encode() + b"\r")
    wait_until(lambda: pipeline.sink.decisions, 2, what="first scan decided")
    os.write(fd, b"8123")  # and the cable is pulled in the middle of the next scan
    threading.Event().wait(0.2)  # the bytes reach the reader
    os.close(fd)

    pty_pair.kill()  # cable out
    wait_until(lambda: not source.connected.is_set(), 2, what="loss noticed")
    threading.Event().wait(1.5)  # stays unplugged a while: must not spin or spam the log
    assert caplog.text.count("no port matches") == 1
    assert source._reader.is_alive()

    pty_pair.start()  # cable in
    assert source.connected.wait(2), "not reopened within 2 s"
    fd = pty_pair.open_device()
    try:
        os.write(fd, OTHER.encode() + b"\r")
        wait_until(lambda: len(pipeline.sink.decisions) == 3, 2, what="scan after replug decided")
    finally:
        os.close(fd)
        source.stop()
    decided = [(d.verdict, d.reason, d.text) for d in pipeline.sink.decisions]
    assert decided == [
        ("accepted", None, CODE),
        ("rejected", "wrong_length", "8123"),  # the cut-off scan is recorded, not lost
        ("accepted", None, OTHER),
    ]


def test_a_port_another_reader_holds_is_not_shared(pty_pair, caplog):
    first = open_source(pty_pair, [].append)
    second = SerialSource(str(pty_pair.host), name="second")
    second.start([].append)
    try:
        threading.Event().wait(1.5)  # a few retries
        assert not second.connected.is_set()
        assert caplog.text.lower().count("could not exclusively lock") == 1
    finally:
        second.stop()
        first.stop()


def test_port_by_glob(tmp_path, pty_pair):
    reads = []
    source = SerialSource(str(tmp_path / "scanner-h*"), name="glob")
    source.start(reads.append)
    try:
        assert source.connected.wait(2)
        fd = pty_pair.open_device()
        os.write(fd, CODE.encode() + b"\r")
        os.close(fd)
        wait_until(lambda: reads, 2, what="a read")
        assert reads[0].source_id == str(pty_pair.host)
    finally:
        source.stop()
