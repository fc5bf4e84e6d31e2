"""Encoder discovery and loading by plugin name (entry-point group ``geoloc.encoders``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from geoloc import plugins
from geoloc.errors import ConfigError, EncoderMismatchError
from geoloc.models.base import Encoder

log = logging.getLogger(__name__)

GROUP = "geoloc.encoders"
DEFAULT_ENCODER = "sgmnet"
#: Shipped head weights: ``<name>.safetensors`` + ``<name>.json`` (written by save_checkpoint).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def available_encoders() -> list[str]:
    """Names of the installed encoder plugins."""
    return sorted(plugins.available(GROUP))


def build_encoder(name: str, **params: Any) -> Encoder:
    """Instantiate plugin ``name`` with ``params`` (fresh, deterministic initialisation)."""
    factory = plugins.load(GROUP, name)
    try:
        enc = factory(**params)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: bad parameters: {exc}") from exc
    for attr in ("encode", "omega_dim", "phi_dim", "weights_sha256", "config"):
        if not hasattr(enc, attr):
            raise ConfigError(f"encoder plugin {name!r} does not implement {attr!r}")
    return enc


def shipped_checkpoint(name: str) -> Path | None:
    """``geoloc/weights/<name>`` when both its files exist, else None."""
    base = WEIGHTS_DIR / name
    if base.with_name(name + ".safetensors").is_file() and base.with_name(name + ".json").is_file():
        return base
    return None


def load_encoder(
    name: str = DEFAULT_ENCODER,
    checkpoint: str | Path | None = None,
    device: str | None = None,
    shipped: bool = True,
    **overrides: Any,
) -> Encoder:
    """Load encoder ``name`` in eval mode.

    With ``checkpoint``, that checkpoint (its encoder name must be ``name``; ``overrides`` are
    not allowed). Otherwise the shipped head weights ``geoloc/weights/<name>.*`` when present
    and ``shipped`` and the requested parameters equal the shipped ones; else the deterministic
    seeded initialisation with ``overrides`` as constructor parameters.
    """
    from geoloc.models.checkpoint import load_checkpoint, read_checkpoint_meta

    if checkpoint is not None:
        if overrides:
            raise ConfigError(
                f"parameters {sorted(overrides)} cannot be combined with a checkpoint"
            )
        meta = read_checkpoint_meta(checkpoint)
        if meta["encoder"] != name:
            raise EncoderMismatchError(
                f"checkpoint is for encoder {meta['encoder']!r}, not {name!r}", path=str(checkpoint)
            )
        return load_checkpoint(checkpoint, device=device)
    ship = shipped_checkpoint(name) if shipped else None
    if ship is not None:
        meta = read_checkpoint_meta(ship)
        wanted = {**meta["config"], **overrides}
        if wanted == meta["config"]:
            log.debug("loading shipped weights %s", ship)
            return load_checkpoint(ship, device=device)
        log.info("encoder %s: parameters differ from the shipped weights; fresh head", name)
    enc = build_encoder(name, **overrides)
    enc.eval()
    if device is not None:
        enc.to(device)
    return enc
