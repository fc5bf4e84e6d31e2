"""Input expansion for ``geoloc ingest``: files, directories (recursive) and globs; file hashing."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from geoloc.store.hashing import sha256_file

#: Extensions (lower case) treated as rasters when a directory is walked. Explicit file paths
#: are accepted whatever their extension: the tiler decides whether GDAL can read them.
RASTER_EXTENSIONS: frozenset[str] = frozenset(
    {".tif", ".tiff", ".gtiff", ".vrt", ".jp2", ".img", ".ecw", ".sid", ".nitf", ".ntf"}
)

_GLOB_CHARS = frozenset("*?[")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PathProblem:
    """A user-supplied path that yields no raster (missing, empty directory, unmatched glob)."""

    path: str
    message: str


def _is_raster_name(p: Path) -> bool:
    return p.suffix.lower() in RASTER_EXTENSIONS and not p.name.startswith(".")


def _walk(directory: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if _is_raster_name(p) and p.is_file():
                found.append(p)
    return found


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[PathProblem]]:
    """Expand ``paths`` into a sorted, de-duplicated list of absolute raster paths.

    - an existing file is taken as is (the tiler validates it later);
    - a directory is walked recursively for files with a raster extension
      (:data:`RASTER_EXTENSIONS`, hidden files and directories skipped);
    - a path that does not exist but contains ``*``, ``?`` or ``[`` is a glob (``**`` recursive);
      directories it matches are walked.

    Returns ``(rasters, problems)``: problems name inputs that produced nothing (path not found,
    directory without rasters, glob without matches) so the caller can report them and carry on.
    The order of ``rasters`` follows the order of the inputs; duplicates are dropped.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    problems: list[PathProblem] = []

    def _add(items: Sequence[Path]) -> None:
        for item in items:
            resolved = item.resolve()
            if resolved not in seen:
                seen.add(resolved)
                out.append(resolved)

    for raw in paths:
        text = os.fspath(raw)
        p = Path(text).expanduser()
        if p.is_file():
            _add([p])
        elif p.is_dir():
            found = _walk(p)
            if not found:
                exts = ", ".join(sorted(RASTER_EXTENSIONS))
                problems.append(PathProblem(text, f"directory contains no raster files ({exts})"))
            _add(found)
        elif p.exists():
            problems.append(PathProblem(text, "not a regular file or directory"))
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            found = []
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    found.extend(_walk(mp))
                elif mp.is_file():
                    found.append(mp)
            if not found:
                problems.append(PathProblem(text, "glob pattern matches no raster file"))
            _add(found)
        else:
            problems.append(PathProblem(text, "no such file or directory"))
    return out, problems


__all__ = ["PathProblem", "expand_paths", "sha256_file"]
