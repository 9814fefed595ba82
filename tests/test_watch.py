"""The inotify helper: wakes on entries coming and going, also under directories made later."""

from __future__ import annotations

import threading

from agent.sources.watch import DirWatch


def test_wakes_when_an_entry_appears_or_vanishes(tmp_path):
    watch = DirWatch([tmp_path])
    try:
        assert watch.wait(0.05) is False
        (tmp_path / "ttyACM0").touch()
        assert watch.wait(2) is True
        assert watch.wait(0.05) is False  # drained
        (tmp_path / "ttyACM0").unlink()
        assert watch.wait(2) is True
    finally:
        watch.close()


def test_a_missing_directory_is_watched_through_its_parent_until_it_exists(tmp_path):
    target = tmp_path / "serial" / "by-id"
    watch = DirWatch([target])
    try:
        (tmp_path / "serial").mkdir()
        assert watch.wait(2) is True
        target.mkdir()
        assert watch.wait(2) is True
        watch.wait(0.05)  # the parent's watch being removed reports itself; absorb that
        assert watch._watched.keys() == {target}
        # Now the directory itself is watched: a link appearing in it wakes us.
        (target / "usb-Newland_HR22-if00").symlink_to("/dev/null")
        assert watch.wait(2) is True
    finally:
        watch.close()


def test_wait_returns_as_soon_as_something_changes(tmp_path):
    watch = DirWatch([tmp_path])
    timer = threading.Timer(0.1, (tmp_path / "x").touch)
    timer.start()
    try:
        assert watch.wait(5) is True
    finally:
        timer.join()
        watch.close()
