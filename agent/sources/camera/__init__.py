"""Camera scanners: frames in, agreed codes out.

- :mod:`~agent.sources.camera.frames`: picamera2 or image files, one frame at a time;
- :mod:`~agent.sources.camera.barcodes`: zxing-cpp finds the codes in a frame;
- :mod:`~agent.sources.camera.agreement`: a code counts once enough frames agree;
- :mod:`~agent.sources.camera.source`: :class:`CameraSource` runs them on two threads.

Everything here needs the ``camera`` extra (numpy, zxing-cpp, pillow); nothing
else in the agent imports it unless a camera is configured.
"""

from agent.sources.camera.source import CameraSource

__all__ = ["CameraSource"]
