import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.pty import PtyPair


@pytest.fixture
def broker(tmp_path):
    """A mosquitto started for this test on a free port (persistence on)."""
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def pty_pair(tmp_path):
    """A socat pseudo-terminal pair: ``.host`` for the agent, ``.device`` for the scanner."""
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.kill()
