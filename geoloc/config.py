"""The one configuration object: where geoloc keeps its data and which database it uses.

Environment variables:

- ``GEOLOC_HOME``: data directory (embedded Postgres data dir, FAISS indexes). Default: the
  platform's user data dir; when running as root, ``/var/lib/geoloc`` (never under ``/root``:
  the embedded server chowns the data dir to its own user and opens up its parents).
- ``GEOLOC_DATABASE_URL``: any Postgres >= 14 with pgvector >= 0.7 instead of the embedded server.
  Use the ``postgresql+psycopg2://`` driver name.
- ``GEOLOC_FEATURES``: ``0``/``off``/``false``/``no`` makes ingest skip the per-tile local features
  (verification then reads the rasters); ``GEOLOC_FEATURES_MAX``: keypoints kept per tile.
- ``GEOLOC_OMEGA``: ``1``/``on`` makes ingest keep the Ω FAISS index (needed by ``--preset
  seed``), ``0``/``off`` leaves it out; unset: a new store's default, an existing one's setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

#: The encoder plugin used when none is named (ingest, locate, train, eval, explain). Here, not
#: in geoloc.models, so the command line can show it without importing torch.
DEFAULT_ENCODER = "sgmnet"


def _default_home() -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/geoloc")
    return Path(platformdirs.user_data_dir("geoloc", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build with :meth:`Settings.from_env`."""

    home: Path = field(default_factory=_default_home)
    database_url: str | None = None
    #: ingest writes per-tile local features (``GEOLOC_FEATURES``)
    features: bool = True
    #: keypoints kept per tile; None: the feature store's default (``GEOLOC_FEATURES_MAX``)
    features_max: int | None = None
    #: bits per stored descriptor value of a new feature store (4, 5, 6 or 8); None: the
    #: feature store's default (``GEOLOC_FEATURES_BITS``)
    features_bits: int | None = None
    #: ingest keeps the Ω FAISS index (``GEOLOC_OMEGA``); None: the store's setting (a new
    #: store: ``geoloc.store.tile_store.DEFAULT_OMEGA``)
    omega: bool | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """Read ``GEOLOC_HOME``, ``GEOLOC_DATABASE_URL``, ``GEOLOC_FEATURES``,
        ``GEOLOC_FEATURES_MAX``, ``GEOLOC_FEATURES_BITS`` and ``GEOLOC_OMEGA`` from the
        environment."""
        home = os.environ.get("GEOLOC_HOME")
        url = os.environ.get("GEOLOC_DATABASE_URL") or None
        flag = os.environ.get("GEOLOC_FEATURES", "").strip().lower()
        fmax = os.environ.get("GEOLOC_FEATURES_MAX", "").strip()
        fbits = os.environ.get("GEOLOC_FEATURES_BITS", "").strip()
        omega = os.environ.get("GEOLOC_OMEGA", "").strip().lower()
        return cls(
            home=Path(home).expanduser().resolve() if home else _default_home(),
            database_url=url,
            features=flag not in ("0", "off", "false", "no"),
            features_max=int(fmax) if fmax.isdigit() else None,
            features_bits=int(fbits) if fbits.isdigit() else None,
            omega=True
            if omega in ("1", "on", "true", "yes")
            else False
            if omega in ("0", "off", "false", "no")
            else None,
        )

    @property
    def pgdata(self) -> Path:
        """Data directory of the embedded Postgres server."""
        return self.home / "pgdata"

    @property
    def index_dir(self) -> Path:
        """Directory of the FAISS Ω indexes."""
        return self.home / "index"

    @property
    def uses_embedded_db(self) -> bool:
        """True when no external database URL is configured."""
        return self.database_url is None


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to print or log)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is printed without its userinfo
        return url.split("@")[-1]
