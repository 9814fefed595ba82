"""What a kiosk installs: the runtime pulls in no camera stack; the camera extra does."""

import contextlib
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
CAMERA_STACK = {"numpy", "pillow", "zxing-cpp"}


def name(requirement: Requirement) -> str:
    return re.sub(r"[-_.]+", "-", requirement.name).lower()


def closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, through the installed packages' own metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if name(req) in seen:
            continue
        seen.add(name(req))
        # Not installed here (another platform's marker): nothing more to follow.
        with contextlib.suppress(metadata.PackageNotFoundError):
            todo += [Requirement(r) for r in metadata.requires(req.name) or []]
    return seen


def test_the_runtime_pulls_in_no_camera_stack():
    runtime = closure(PYPROJECT["project"]["dependencies"])
    assert {"paho-mqtt", "sqlite-utils", "cryptography"} <= runtime, "the closure was followed"
    assert not runtime & CAMERA_STACK, f"a camera-less kiosk would install {sorted(runtime & CAMERA_STACK)}"


def test_the_camera_extra_brings_the_camera_stack():
    camera = {name(Requirement(r)) for r in PYPROJECT["project"]["optional-dependencies"]["camera"]}
    assert camera == CAMERA_STACK


def test_the_api_extra_is_pure_python_and_the_runtime_does_without_it():
    api = {name(Requirement(r)) for r in PYPROJECT["project"]["optional-dependencies"]["api"]}
    assert api == {"starlette", "uvicorn"}
    assert not closure(PYPROJECT["project"]["dependencies"]) & api, "a kiosk without the API would install it"
    # One set of wheels for arm64 and armhf: nothing the extra pulls in is compiled.
    for dist in closure(PYPROJECT["project"]["optional-dependencies"]["api"]):
        with contextlib.suppress(metadata.PackageNotFoundError):
            wheel = metadata.distribution(dist).read_text("WHEEL") or ""
            assert "Root-Is-Purelib: true" in wheel, f"{dist} is not pure Python"


def test_the_collector_extra_brings_psycopg_and_a_kiosk_never_installs_it():
    collector = {name(Requirement(r)) for r in PYPROJECT["project"]["optional-dependencies"]["collector"]}
    assert collector == {"psycopg"}
    runtime = closure(PYPROJECT["project"]["dependencies"])
    assert not {n for n in runtime if n.startswith("psycopg")}, "a kiosk would install the collector's database driver"
    assert "collector" in PYPROJECT["project"]["scripts"]["scan-collector"]
