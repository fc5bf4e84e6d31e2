"""The camera: intrinsics, frame metadata and priors, rectification to nadir, and the 6-DoF pose.

A library beside the localizer chain (it imports numpy, OpenCV, pyproj, rasterio and
:mod:`tiling`, nothing of :mod:`geoloc.localize`, ``store``, ``ingest`` or ``cli``):

- :mod:`~geoloc.camera.intrinsics`: :class:`Camera` from a ``--camera`` file, an HFOV or EXIF;
- :mod:`~geoloc.camera.metadata`: :func:`read_metadata` (EXIF + DJI XMP, never crashes);
- :mod:`~geoloc.camera.priors`: :func:`merge_priors` (flags over file values, with sources);
- :mod:`~geoloc.camera.rectify`: :func:`rectify` an oblique frame to a virtual nadir camera;
- :mod:`~geoloc.camera.pose`: :func:`solve_pose` from frame <-> map correspondences (+ DEM);
- :mod:`~geoloc.camera.prepare`: :func:`prepare_frame` (camera, priors, undistort, rectify, GSD,
  heading) and :func:`pose_from_matches` (verified matches -> pose), joined by a
  :class:`PixelChain`;
- :mod:`~geoloc.camera.render`: a pinhole renderer of georeferenced rasters, for tests.
"""

from __future__ import annotations

from geoloc.camera.attitude import angles_from_rotation, camera_to_world, world_to_camera
from geoloc.camera.dem import Dem, open_dem
from geoloc.camera.intrinsics import Camera, camera_from_exif, camera_from_hfov, load_camera
from geoloc.camera.metadata import FrameMetadata, parse_xmp, read_metadata
from geoloc.camera.pose import (
    CameraPose,
    PoseConfig,
    PoseResult,
    correspondences_from_homography,
    solve_pose,
)
from geoloc.camera.prepare import (
    PixelChain,
    PreparedFrame,
    pose_from_matches,
    prepare_frame,
    resolve_camera,
)
from geoloc.camera.priors import Prior, Priors, merge_priors
from geoloc.camera.rectify import Rectified, gsd_at_nadir, rectify
from geoloc.errors import CameraFileError, DemFileError

__all__ = [
    "Camera",
    "CameraFileError",
    "CameraPose",
    "Dem",
    "DemFileError",
    "FrameMetadata",
    "PixelChain",
    "PoseConfig",
    "PoseResult",
    "PreparedFrame",
    "Prior",
    "Priors",
    "Rectified",
    "angles_from_rotation",
    "camera_from_exif",
    "camera_from_hfov",
    "camera_to_world",
    "correspondences_from_homography",
    "gsd_at_nadir",
    "load_camera",
    "merge_priors",
    "open_dem",
    "parse_xmp",
    "pose_from_matches",
    "prepare_frame",
    "read_metadata",
    "rectify",
    "resolve_camera",
    "solve_pose",
    "world_to_camera",
]
