"""One PyAV video writer for the benchmarks and the tests that need a real video file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode RGB ``frames`` into ``path`` at ``fps`` with ``codec``/``pix_fmt``; return ``path``.

    The defaults give H.264 at PyAV's default quality (lossy, as a drone records it);
    ``codec="ffv1", pix_fmt="bgr0"`` in a ``.mkv`` gives a lossless file.
    """
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=int(fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        for rgb in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path
