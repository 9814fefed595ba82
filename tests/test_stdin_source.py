"""The stdin source on real file descriptors: pipes, regular files, overlong lines, stop()."""

import os
import subprocess
import threading

from agent.sources.stdin import StdinSource
from tests.support.agent import agent_cmd, agent_env

A = b"81234567890123456789"


def collect(writes: list[bytes]) -> list[bytes]:
    reads = []
    read_end, write_end = os.pipe()
    src = StdinSource(os.fdopen(read_end, "rb"))
    src.start(lambda r: reads.append(r.raw))
    for chunk in writes:
        os.write(write_end, chunk)
    os.close(write_end)
    assert src.done.wait(5)
    return reads


def test_crlf_is_one_line_and_a_last_line_without_newline_counts():
    assert collect([A + b"\r\n", b"12", b"3\n", A]) == [A + b"\r\n", b"123\n", A]


def test_an_overlong_line_is_one_read():
    reads = collect([b"9" * 1000] * 10 + [b"\n", A + b"\n"])
    assert len(reads) == 2
    assert len(reads[0]) > 512 and reads[1] == A + b"\n"


def test_stop_ends_a_blocked_reader():
    read_end, write_end = os.pipe()
    src = StdinSource(os.fdopen(read_end, "rb"))
    src.start(lambda r: None)
    src.stop()
    assert not any(t.name == "stdin:console" for t in threading.enumerate())
    os.close(write_end)


def test_stdin_redirected_from_a_regular_file(tmp_path):
    codes = tmp_path / "codes.txt"
    codes.write_bytes(A + b"\n123\n")
    with codes.open("rb") as stdin:
        result = subprocess.run(
            [*agent_cmd("run", "--db", str(tmp_path / "l.db"))], stdin=stdin, capture_output=True, env=agent_env()
        )
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.decode().splitlines()] == ["accepted", "rejected"]
