"""Track inputs: video files (PyAV) and folders / globs of frames, as one ordered frame stream.

Every decoded frame counts in ``index`` even when ``fps`` samples the video; an undecodable
frame is yielded as ``rgb=None`` with its error so the tracker can skip and count it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.errors import ConfigError, FrameError

VIDEO_EXT = (".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class SourceFrame:
    """One input frame: its number in the input, time (s), name, pixels or why there are none."""

    index: int
    t: float | None
    name: str | None
    rgb: np.ndarray | None
    path: Path | None = None
    error: str | None = None


def is_video(path: Path) -> bool:
    """True for a file with a video extension."""
    return path.suffix.lower() in VIDEO_EXT


def _exif_time(path: Path) -> float:
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            text = exif.get(36867) or exif.get_ifd(0x8769).get(36867) or exif.get(306)
    except (OSError, ValueError):
        text = None
    if not text:
        return float("inf")  # frames without a time go last, by name
    from datetime import datetime

    try:
        return datetime.strptime(str(text).strip(), "%Y:%m:%d %H:%M:%S").timestamp()
    except ValueError:
        return float("inf")


def expand_inputs(inputs: Sequence[str | Path], order: str = "name") -> list[Path]:
    """Videos and frame files from files, folders and globs, in order (``name`` | ``time``).

    ConfigError when an input does not exist or nothing usable is found (one line, naming it).
    """
    if order not in ("name", "time"):
        raise ConfigError(f"--order must be name or time, got {order!r}")
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT)
            if not files:
                raise ConfigError(f"{p}: no frames (JPEG/PNG/TIFF) in this folder")
        elif p.is_file():
            files = [p]
        else:
            matches = sorted(glob.glob(os.fspath(item)))
            files = [Path(m) for m in matches if Path(m).suffix.lower() in IMAGE_EXT + VIDEO_EXT]
            if not files:
                raise ConfigError(f"{item}: no such file, folder or matching frames")
        for f in files:
            if is_video(f):
                _probe(f)
        if order == "time":
            files = sorted(files, key=lambda f: (_exif_time(f), f.name))
        out.extend(files)
    return out


def _probe(path: Path) -> None:
    """ConfigError (one line) unless ``path`` opens as a video with a video stream."""
    import av

    try:
        with av.open(os.fspath(path)) as c:
            if not c.streams.video:
                raise ConfigError(f"{path}: no video stream")
    except (av.error.FFmpegError, OSError) as exc:
        raise ConfigError(f"{path}: cannot open the video ({exc})") from exc


def _video_frames(path: Path, fps: float | None, start_index: int) -> Iterator[SourceFrame]:
    import av

    try:
        container = av.open(os.fspath(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ConfigError(f"{path}: cannot open the video ({exc})") from exc
    with container:
        if not container.streams.video:
            raise ConfigError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_t = 0.0
        i = start_index - 1
        try:
            for frame in container.decode(stream):
                i += 1
                t = float(frame.time) if frame.time is not None else None
                if fps is not None and t is not None:
                    if t + 1e-6 < next_t:
                        continue
                    next_t += 1.0 / fps
                    while next_t <= t:
                        next_t += 1.0 / fps
                yield SourceFrame(i, t, path.name, frame.to_ndarray(format="rgb24"), path)
        except av.error.FFmpegError as exc:  # a broken stream ends this file, not the track
            yield SourceFrame(i + 1, None, path.name, None, path, f"{path}: decode error ({exc})")


def iter_frames(
    paths: list[Path], fps: float | None = None, frame_interval_s: float = 0.1
) -> Iterator[SourceFrame]:
    """The frames of every input in order; image files get ``t`` = index x ``frame_interval_s``."""
    from geoloc.localize import load_frame

    index = 0
    t_offset = 0.0
    for p in paths:
        if is_video(p):
            last_t = 0.0
            n = 0
            for sf in _video_frames(p, fps, index):
                if sf.t is not None:
                    last_t = sf.t
                    sf.t += t_offset
                n = sf.index - index + 1
                yield sf
            index += n
            t_offset += last_t + frame_interval_s
            continue
        t = t_offset
        try:
            rgb = load_frame(p).rgb
            yield SourceFrame(index, t, p.name, rgb, p)
        except FrameError as exc:
            yield SourceFrame(index, t, p.name, None, p, str(exc))
        index += 1
        t_offset += frame_interval_s
