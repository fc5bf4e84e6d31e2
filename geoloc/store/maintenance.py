"""``geoloc index verify|info``: which encoder is meant, and do FAISS, the per-tile features and
the database agree.

The database is the source of truth; a rebuild of the index is a re-ingest of Ω
(:mod:`geoloc.ingest.rebuild`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.config import Settings
from geoloc.errors import ConfigError
from geoloc.store import repository as repo
from geoloc.store.faiss_store import OmegaIndex

if TYPE_CHECKING:
    from geoloc.store.database import Database

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """FAISS ids vs database ids of the complete orthomosaics of one encoder."""

    encoder_id: int
    encoder_name: str
    weights_sha256: str
    index_dir: str
    index_exists: bool
    db_count: int
    index_count: int
    missing_in_index: list[int] = field(default_factory=list)
    extra_in_index: list[int] = field(default_factory=list)
    #: the store keeps an Ω index (False: ingested with ``--no-omega``, nothing to compare)
    has_omega: bool = True
    #: the per-tile local features (absent: a store without features, nothing to check)
    features_exists: bool = False
    features_spec: dict[str, Any] | None = None
    features_count: int = 0
    missing_in_features: list[int] = field(default_factory=list)
    extra_in_features: list[int] = field(default_factory=list)
    feature_problems: list[str] = field(default_factory=list)

    @property
    def index_ok(self) -> bool:
        """True when FAISS and the database hold exactly the same ids (or the store keeps no
        Ω index)."""
        return not self.missing_in_index and not self.extra_in_index

    @property
    def features_ok(self) -> bool:
        """True when there are no features, or every complete tile has intact features and no
        other tile has any."""
        return not (self.missing_in_features or self.extra_in_features or self.feature_problems)

    @property
    def ok(self) -> bool:
        """True when FAISS, the features (if any) and the database agree."""
        return self.index_ok and self.features_ok

    def reason(self) -> str:
        """One line saying what disagrees and the fix (empty when :attr:`ok`)."""
        parts = []
        if not self.index_ok:
            parts.append(
                f"index differs from the database: {len(self.missing_in_index)} missing, "
                f"{len(self.extra_in_index)} extra; run `geoloc index rebuild`"
            )
        if self.feature_problems:
            more = len(self.feature_problems) - 1
            parts.append(
                f"{self.feature_problems[0]}{f' (and {more} more)' if more else ''}; "
                "run `geoloc index rebuild --features`"
            )
        elif self.missing_in_features or self.extra_in_features:
            parts.append(
                f"features differ from the database: {len(self.missing_in_features)} tiles "
                f"without, {len(self.extra_in_features)} extra; run `geoloc index rebuild "
                "--features`"
            )
        return "; ".join(parts)

    def as_dict(self, limit: int = 50) -> dict[str, Any]:
        """JSON-able form; id lists are cut to ``limit`` entries (counts are complete)."""
        return {
            "ok": self.ok,
            "encoder_id": self.encoder_id,
            "encoder": self.encoder_name,
            "weights_sha256": self.weights_sha256,
            "index_dir": self.index_dir,
            "has_omega": self.has_omega,
            "index_exists": self.index_exists,
            "db_count": self.db_count,
            "index_count": self.index_count,
            "missing_in_index_count": len(self.missing_in_index),
            "missing_in_index": self.missing_in_index[:limit],
            "extra_in_index_count": len(self.extra_in_index),
            "extra_in_index": self.extra_in_index[:limit],
            "features": {
                "ok": self.features_ok,
                "exists": self.features_exists,
                "spec": self.features_spec,
                "count": self.features_count,
                "missing_count": len(self.missing_in_features),
                "missing": self.missing_in_features[:limit],
                "extra_count": len(self.extra_in_features),
                "extra": self.extra_in_features[:limit],
                "problems": self.feature_problems[:limit],
            },
        }


def resolve_encoder(db: Database, spec: str | None) -> repo.EncoderRow:
    """The encoder named by ``spec``: an id, a weights SHA-256 prefix or a name.

    With ``spec=None`` the database must hold exactly one encoder.
    """
    encoders = repo.list_encoders(db)
    if not encoders:
        from geoloc.errors import EmptyDatabaseError

        raise EmptyDatabaseError(f"{db.url}: no encoder registered (nothing ingested yet)")
    if spec is None:
        if len(encoders) > 1:
            names = ", ".join(f"{e.id}:{e.name}:{e.weights_sha256[:12]}" for e in encoders)
            raise ConfigError(f"several encoders in the database ({names}): pass --encoder")
        return encoders[0]
    matches = [
        e
        for e in encoders
        if spec == str(e.id) or spec == e.name or e.weights_sha256.startswith(spec.lower())
    ]
    if len(matches) != 1:
        what = "no" if not matches else "several"
        raise ConfigError(f"{what} encoder matches {spec!r} (give an id, name or SHA-256 prefix)")
    return matches[0]


def verify_index(db: Database, settings: Settings, encoder: repo.EncoderRow) -> VerifyReport:
    """Compare the FAISS ids of ``encoder`` with its complete tiles in the database (a store
    without Ω: only its features)."""
    db_ids = repo.complete_tile_ids(db, encoder.id)
    exists = OmegaIndex.exists(settings, encoder.weights_sha256)
    if exists and encoder.has_omega:
        ix_ids = OmegaIndex.open(settings, encoder.weights_sha256, create=False).ids()
    else:
        ix_ids = np.zeros(0, dtype=np.int64)
    report = VerifyReport(
        encoder_id=encoder.id,
        encoder_name=encoder.name,
        weights_sha256=encoder.weights_sha256,
        index_dir=str(OmegaIndex.path_for(settings, encoder.weights_sha256)),
        index_exists=exists,
        db_count=int(db_ids.size),
        index_count=int(ix_ids.size),
        missing_in_index=np.setdiff1d(db_ids, ix_ids).tolist() if encoder.has_omega else [],
        extra_in_index=np.setdiff1d(ix_ids, db_ids).tolist(),
        has_omega=encoder.has_omega,
    )
    _verify_features(report, settings, encoder.weights_sha256, db_ids)
    return report


def _verify_features(
    report: VerifyReport, settings: Settings, sha: str, db_ids: np.ndarray
) -> None:
    """Fill the feature fields of ``report``: ids against the database, every file's SHA-256."""
    from geoloc.errors import IndexError_
    from geoloc.store.tile_features import FeatureStore

    fdir = FeatureStore.path_for(OmegaIndex.path_for(settings, sha))
    if not FeatureStore.exists(fdir):
        return
    report.features_exists = True
    try:
        feats = FeatureStore.open(fdir, warn=False)
    except IndexError_ as exc:
        report.feature_problems.append(str(exc))
        return
    report.features_spec = None if feats.spec is None else feats.spec.as_dict()
    f_ids = feats.ids()
    report.features_count = int(f_ids.size)
    report.missing_in_features = np.setdiff1d(db_ids, f_ids).tolist()
    report.extra_in_features = np.setdiff1d(f_ids, db_ids).tolist()
    report.feature_problems.extend(str(p) for p in feats.check())
