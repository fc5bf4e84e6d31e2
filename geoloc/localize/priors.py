"""Priors (``geoloc.priors``): what the caller or the frame's metadata already knows.

A prior stage may restrict the tiles searched (a position circle) and/or the headings tried
(a known heading). The localizer intersects the restrictions of all its prior stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from geoloc.errors import ConfigError

if TYPE_CHECKING:
    from geoloc.localize.frame import Frame


@dataclass(frozen=True)
class Prior:
    """A GNSS-like position prior: a circle of ``radius_m`` around (lat, lon)."""

    lat: float
    lon: float
    radius_m: float

    @classmethod
    def parse(cls, text: str) -> Prior:
        """Parse ``LAT,LON,RADIUS_M``; ConfigError on anything else."""
        parts = [p.strip() for p in text.split(",")]
        try:
            lat, lon, rad = (float(p) for p in parts)
        except ValueError as exc:
            raise ConfigError(f"--prior must be LAT,LON,RADIUS_M (numbers), got {text!r}") from exc
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and rad > 0):
            raise ConfigError(f"--prior out of range (lat, lon, radius > 0): {text!r}")
        return cls(lat, lon, rad)


@runtime_checkable
class PriorStage(Protocol):
    """``geoloc.priors``: restrict the tiles searched and/or the headings tried."""

    name: str

    def allowed_ids(self, store: Any, prior: Prior | None) -> np.ndarray | None:
        """Tile ids the search is restricted to (None: no restriction)."""
        ...

    def headings(self, frame: Frame, default: list[float]) -> list[float]:
        """Heading hypotheses to try (``default`` when the prior knows nothing)."""
        ...


class GnssRadiusPrior:
    """``--prior LAT,LON,RADIUS_M``: only tiles whose centre lies within the radius answer."""

    name = "gnss-radius"
    default_conf: ClassVar[dict[str, Any]] = {}

    def allowed_ids(self, store: Any, prior: Prior | None) -> np.ndarray | None:
        """Ids of complete tiles within the prior's radius (geodesic), or None without a prior."""
        if prior is None:
            return None
        return np.asarray(store.within(prior.lat, prior.lon, prior.radius_m), dtype=np.int64)

    def headings(self, frame: Frame, default: list[float]) -> list[float]:
        """No heading information."""
        return default


class HeadingPrior:
    """A known heading (``--heading`` or DJI XMP gimbal/flight yaw) replaces the rotation search.

    ``tolerance_deg`` > 0 adds hypotheses at +- that angle around the known heading;
    ``use_xmp`` False ignores a heading read from the file's XMP.
    """

    name = "heading"
    default_conf: ClassVar[dict[str, Any]] = {"tolerance_deg": 0.0, "use_xmp": True}

    def __init__(self, **conf: Any) -> None:
        c = {**self.default_conf, **conf}
        self.tolerance_deg = float(c["tolerance_deg"])
        self.use_xmp = bool(c["use_xmp"])

    def allowed_ids(self, store: Any, prior: Prior | None) -> np.ndarray | None:
        """No position information."""
        return None

    def headings(self, frame: Frame, default: list[float]) -> list[float]:
        """[heading] (+- tolerance) when the frame's heading is known, else ``default``."""
        if frame.heading_deg is None or (frame.heading_source == "xmp" and not self.use_xmp):
            return default
        h = frame.heading_deg % 360.0
        if self.tolerance_deg > 0:
            return [h, (h - self.tolerance_deg) % 360.0, (h + self.tolerance_deg) % 360.0]
        return [h]


def allowed_ids(stages: list[PriorStage], store: Any, prior: Prior | None) -> np.ndarray | None:
    """The intersection of every stage's restriction (None: unrestricted)."""
    allowed: np.ndarray | None = None
    for p in stages:
        ids = p.allowed_ids(store, prior)
        if ids is not None:
            ids = np.asarray(ids, dtype=np.int64)
            allowed = ids if allowed is None else np.intersect1d(allowed, ids)
    return allowed
