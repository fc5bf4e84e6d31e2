"""The pinhole camera: intrinsics K, lens distortion, image size, and where they came from.

OpenCV conventions throughout: K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels with integer
coordinates at pixel centres, distortion (k1, k2, p1, p2[, k3[, k4, k5, k6]]). A camera is built
from a ``--camera`` file (JSON or YAML with the keys ``K``, ``dist``, ``width``, ``height``), from a
horizontal field of view and the image size, or from the EXIF focal length.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.errors import CameraFileError

if TYPE_CHECKING:
    from geoloc.camera.metadata import FrameMetadata

log = logging.getLogger(__name__)

__all__ = [
    "Camera",
    "SensorSpec",
    "SENSORS",
    "camera_from_exif",
    "camera_from_hfov",
    "load_camera",
]

#: Width of the 35 mm film frame: the reference of EXIF ``FocalLengthIn35mmFilm``, applied to the
#: longer image side as OpenSfM does (opensfm/exif.py, ``focal_35 / 36``).
FILM_35MM_WIDTH_MM = 36.0


@dataclass(frozen=True)
class SensorSpec:
    """Sensor width (mm) of a camera model, as its manufacturer publishes it, and where."""

    name: str
    sensor_width_mm: float
    source: str


# Keyed by the EXIF ``Model`` tag (upper case) that each DJI camera writes. Widths are the
# sensor formats on the spec pages: 1/2.3" = 6.17 mm, 1/2" = 6.4 mm, 1" = 13.2 mm,
# 4/3 = 17.3 mm (the active width of the format).
SENSORS: dict[str, SensorSpec] = {
    spec.name.split(" ", 1)[0].upper(): spec
    for spec in (
        SensorSpec("FC300S Phantom 3 Advanced", 6.17, "https://www.dji.com/phantom-3-adv/info"),
        SensorSpec("FC300X Phantom 3 Professional", 6.17, "https://www.dji.com/phantom-3-pro/info"),
        SensorSpec("FC330 Phantom 4", 6.17, "https://www.dji.com/phantom-4/info"),
        SensorSpec("FC6310 Phantom 4 Pro", 13.2, "https://www.dji.com/phantom-4-pro/info"),
        SensorSpec(
            "FC6310S Phantom 4 Pro V2.0", 13.2, "https://www.dji.com/phantom-4-pro-v2/specs"
        ),
        SensorSpec("FC6310R Phantom 4 RTK", 13.2, "https://www.dji.com/phantom-4-rtk/info"),
        SensorSpec("FC220 Mavic Pro", 6.17, "https://www.dji.com/mavic/info"),
        SensorSpec("L1D-20C Mavic 2 Pro", 13.2, "https://www.dji.com/mavic-2/info"),
        SensorSpec("L2D-20C Mavic 3", 17.3, "https://www.dji.com/mavic-3/specs"),
        SensorSpec("FC2103 Mavic Air", 6.17, "https://www.dji.com/mavic-air/info"),
        SensorSpec("FC3170 Mavic Air 2", 6.4, "https://www.dji.com/mavic-air-2/specs"),
        SensorSpec("FC7203 Mavic Mini", 6.17, "https://www.dji.com/mavic-mini/specs"),
        SensorSpec("FC7303 Mini 2", 6.17, "https://www.dji.com/mini-2/specs"),
    )
}


@dataclass
class Camera:
    """A pinhole camera with optional distortion, for images of ``width`` x ``height`` pixels.

    ``source`` says where the intrinsics came from (``"file"``, ``"hfov"``, ``"exif"``, ...), for
    the answer's list of priors.
    """

    K: np.ndarray
    width: int
    height: int
    dist: np.ndarray | None = None
    source: str = "given"
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        if self.dist is not None:
            d = np.asarray(self.dist, dtype=np.float64).ravel()
            self.dist = d if d.size and np.any(d != 0) else None

    @property
    def fx(self) -> float:
        """Focal length along x, in pixels."""
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        """Focal length along y, in pixels."""
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        """Principal point x, in pixels."""
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        """Principal point y, in pixels."""
        return float(self.K[1, 2])

    @property
    def focal_px(self) -> float:
        """The geometric mean of fx and fy (the scale of a pixel at unit depth)."""
        return math.sqrt(self.fx * self.fy)

    @property
    def hfov_deg(self) -> float:
        """Horizontal field of view in degrees."""
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera for the image resized to ``width`` x ``height`` pixels.

        Pixel centres move with the resize (OpenCV's convention: x' = (x + 0.5) s - 0.5).
        """
        sx, sy = width / self.width, height / self.height
        k = self.K.copy()
        k[0, 0] *= sx
        k[0, 1] *= sx
        k[1, 1] *= sy
        k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
        k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
        return Camera(k, int(width), int(height), self.dist, self.source, self.detail)

    def fitted_to(self, width: int, height: int) -> Camera:
        """This camera for an image of the given size, by scaling; the image may be rotated 90 deg.

        A calibration made on the landscape sensor also applies to a portrait image of the same
        sensor (swapped sides): then fx/fy and cx/cy swap as well. The distortion is dropped for
        a turned image (its coefficients are not re-derived), with a warning.
        """
        if (width, height) == (self.width, self.height):
            return self
        if abs(width / height - self.height / self.width) < abs(
            width / height - self.width / self.height
        ):
            if self.dist is not None:
                log.warning("%s: distortion ignored for a frame turned 90 degrees", self.detail)
            k = np.array([[self.fy, 0.0, self.cy], [0.0, self.fx, self.cx], [0.0, 0.0, 1.0]])
            turned = Camera(k, self.height, self.width, None, self.source, self.detail)
            return turned.scaled(width, height)
        return self.scaled(width, height)

    def undistort_points(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) with the lens distortion removed (same K)."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if self.dist is None or p.shape[0] == 0:
            return p.copy()
        import cv2

        out = cv2.undistortPoints(p[:, None, :], self.K, self.dist, P=self.K)
        return np.asarray(out, dtype=np.float64).reshape(-1, 2)

    def undistort(self, img: np.ndarray, *, nearest: bool = False) -> np.ndarray:
        """The image as a distortion-free pinhole camera with the same K would have seen it."""
        if self.dist is None:
            return img
        import cv2

        h, w = img.shape[:2]
        cam = self if (w, h) == (self.width, self.height) else self.scaled(w, h)
        src = img.astype(np.uint8) if img.dtype == bool else img
        map1, map2 = cv2.initUndistortRectifyMap(cam.K, cam.dist, None, cam.K, (w, h), cv2.CV_32FC1)
        interp = cv2.INTER_NEAREST if nearest or img.dtype == bool else cv2.INTER_LINEAR
        out = cv2.remap(src, map1, map2, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out.astype(bool) if img.dtype == bool else out

    def as_dict(self) -> dict[str, Any]:
        """The camera in the ``--camera`` file format (JSON-able)."""
        return {
            "K": self.K.tolist(),
            "dist": [] if self.dist is None else self.dist.tolist(),
            "width": self.width,
            "height": self.height,
        }


def _k_from_focal(f_px: float, width: int, height: int) -> np.ndarray:
    return np.array(
        [[f_px, 0.0, (width - 1) / 2.0], [0.0, f_px, (height - 1) / 2.0], [0.0, 0.0, 1.0]]
    )


def camera_from_hfov(hfov_deg: float, width: int, height: int, *, source: str = "hfov") -> Camera:
    """A distortion-free camera with square pixels and the principal point at the image centre."""
    if not (math.isfinite(hfov_deg) and 0.0 < hfov_deg < 180.0):
        raise ValueError(f"horizontal field of view must be in (0, 180) degrees, got {hfov_deg}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    f_px = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
    return Camera(_k_from_focal(f_px, width, height), int(width), int(height), None, source)


def camera_from_exif(meta: FrameMetadata, width: int, height: int) -> Camera | None:
    """The camera from the EXIF focal length, or None when the file does not say enough.

    In order: the focal length with the sensor width of a known camera model (:data:`SENSORS`,
    exact), with the focal-plane resolution tags, or the 35 mm-equivalent focal length (rounded
    by the camera to whole millimetres, so a few percent off).
    """
    f_mm = meta.focal_length_mm
    long_side = max(width, height)
    spec = SENSORS.get((meta.model or "").strip().upper())
    if f_mm and spec is not None:
        f_px = f_mm / spec.sensor_width_mm * long_side
        detail = f"FocalLength {f_mm:g} mm, {spec.name} sensor {spec.sensor_width_mm:g} mm"
    elif f_mm and meta.focal_plane_px_per_mm:
        sx = long_side / meta.exif_long_side if meta.exif_long_side else 1.0
        f_px = f_mm * meta.focal_plane_px_per_mm * sx
        detail = f"FocalLength {f_mm:g} mm, FocalPlaneXResolution"
    elif meta.focal_35mm:
        f_px = meta.focal_35mm / FILM_35MM_WIDTH_MM * long_side
        detail = f"FocalLengthIn35mmFilm {meta.focal_35mm:g} mm"
    else:
        return None
    if not (math.isfinite(f_px) and f_px > 0):
        return None
    return Camera(_k_from_focal(f_px, width, height), int(width), int(height), None, "exif", detail)


# ------------------------------------------------------------------------------ camera files
def _number(v: Any, what: str, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CameraFileError(f"{what} must be a number, got {v!r}", path=path)
    f = float(v)
    if not math.isfinite(f):
        raise CameraFileError(f"{what} must be finite, got {v!r}", path=path)
    return f


def _yaml_load(text: str) -> Any:
    """YAML, also as cv2.FileStorage writes it (a ``%YAML`` line, ``!!opencv-matrix`` values)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def matrix(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
        m = loader.construct_mapping(node, deep=True)
        rows, cols, data = m.get("rows"), m.get("cols"), m.get("data")
        if not (isinstance(rows, int) and isinstance(cols, int) and isinstance(data, list)):
            raise yaml.YAMLError("opencv-matrix needs rows, cols and data")
        if len(data) != rows * cols:
            raise yaml.YAMLError(f"opencv-matrix of {rows}x{cols} has {len(data)} values")
        return [data[i * cols : (i + 1) * cols] for i in range(rows)] if rows > 1 else data

    _Loader.add_constructor("tag:yaml.org,2002:opencv-matrix", matrix)
    if text.startswith("%YAML"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _parse(text: str, path: str) -> Any:
    import yaml

    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            return _yaml_load(text)
        except yaml.YAMLError as exc:
            raise CameraFileError(f"not valid YAML: {exc}", path=path) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if suffix == ".json":
            raise CameraFileError(f"not valid JSON: {exc}", path=path) from exc
    try:  # neither suffix says: YAML is a superset of JSON, so it is the last try
        return _yaml_load(text)
    except yaml.YAMLError as exc:
        raise CameraFileError(f"neither JSON nor YAML: {exc}", path=path) from exc


def load_camera(path: str | os.PathLike[str]) -> Camera:
    """Read a ``--camera`` file (JSON or YAML, OpenCV convention); raises :class:`CameraFileError`.

    Keys: ``K`` (3x3, fx and fy > 0, last row 0 0 1), ``width`` and ``height`` (the calibrated
    image size, positive integers), and optionally ``dist`` (4, 5, 8, 12 or 14 coefficients).
    """
    p = os.fspath(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CameraFileError("no such file", path=p) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CameraFileError(f"cannot read: {exc}", path=p) from exc
    data = _parse(text, p)
    if not isinstance(data, dict):
        raise CameraFileError("must be a mapping with keys K, dist, width, height", path=p)
    missing = [k for k in ("K", "width", "height") if k not in data]
    if missing:
        raise CameraFileError(f"missing key(s) {', '.join(missing)}", path=p)
    k_raw = data["K"]
    if isinstance(k_raw, list) and len(k_raw) == 9 and not any(isinstance(r, list) for r in k_raw):
        k_raw = [k_raw[0:3], k_raw[3:6], k_raw[6:9]]  # a flat row-major list, as OpenCV YAML has
    if not (
        isinstance(k_raw, list)
        and len(k_raw) == 3
        and all(isinstance(r, list) and len(r) == 3 for r in k_raw)
    ):
        raise CameraFileError("K must be a 3x3 list of numbers", path=p)
    k = np.array([[_number(v, "K entry", p) for v in row] for row in k_raw])
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise CameraFileError(
            f"focal lengths must be positive, got fx={k[0, 0]:g} fy={k[1, 1]:g}", path=p
        )
    if not np.allclose(k[2], [0.0, 0.0, 1.0]) or k[1, 0] != 0:
        raise CameraFileError("K's last row must be [0, 0, 1] and K[1][0] must be 0", path=p)
    size = []
    for key in ("width", "height"):
        v = _number(data[key], key, p)
        if v != int(v) or v < 1:
            raise CameraFileError(f"{key} must be a positive integer, got {data[key]!r}", path=p)
        size.append(int(v))
    dist_raw = data.get("dist", [])
    if dist_raw is None:
        dist_raw = []
    if isinstance(dist_raw, list) and len(dist_raw) == 1 and isinstance(dist_raw[0], list):
        dist_raw = dist_raw[0]  # [[k1, k2, ...]] as cv2.FileStorage writes a 1 x N matrix
    if not isinstance(dist_raw, list) or len(dist_raw) not in (0, 4, 5, 8, 12, 14):
        raise CameraFileError("dist must be a list of 4, 5, 8, 12 or 14 numbers", path=p)
    dist = np.array([_number(v, "dist entry", p) for v in dist_raw], dtype=np.float64)
    return Camera(k, size[0], size[1], dist if dist.size else None, "file", p)
