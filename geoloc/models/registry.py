"""Encoder discovery and loading by plugin name (entry-point group ``geoloc.encoders``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from geoloc import plugins
from geoloc.config import DEFAULT_ENCODER
from geoloc.errors import ConfigError, EncoderMismatchError
from geoloc.models.base import Encoder, EncoderProtocol, protocol_members
from geoloc.models.checkpoint import apply_weights, read_checkpoint_meta, verified_meta

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENCODER",
    "GROUP",
    "WEIGHTS_DIR",
    "available_encoders",
    "build_encoder",
    "ensure_compatible",
    "load_checkpoint",
    "load_encoder",
    "shipped_checkpoint",
]

GROUP = "geoloc.encoders"
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
    if not isinstance(enc, EncoderProtocol):
        have = set(dir(enc))
        missing = [m for m in protocol_members(EncoderProtocol) if m not in have]
        raise ConfigError(f"encoder plugin {name!r} does not implement {', '.join(missing)}")
    return enc  # type: ignore[return-value]


def ensure_compatible(
    enc: Encoder,
    weights_sha256: str | None = None,
    omega_dim: int | None = None,
    phi_dim: int | None = None,
    what: str = "the index",
) -> None:
    """Raise :class:`EncoderMismatchError` unless ``enc`` has the hash/dims recorded by ``what``."""
    problems = []
    if weights_sha256 is not None and enc.weights_sha256 != weights_sha256:
        problems.append(f"weights SHA-256 {enc.weights_sha256[:12]}… != {weights_sha256[:12]}…")
    if omega_dim is not None and enc.omega_dim != omega_dim:
        problems.append(f"omega_dim {enc.omega_dim} != {omega_dim}")
    if phi_dim is not None and enc.phi_dim != phi_dim:
        problems.append(f"phi_dim {enc.phi_dim} != {phi_dim}")
    if problems:
        raise EncoderMismatchError(
            f"encoder {enc.name!r} does not match {what}: {'; '.join(problems)}"
        )


def shipped_checkpoint(name: str) -> Path | None:
    """``geoloc/weights/<name>`` when both its files exist, else None."""
    base = WEIGHTS_DIR / name
    if base.with_name(name + ".safetensors").is_file() and base.with_name(name + ".json").is_file():
        return base
    return None


def load_checkpoint(path: str | Path, device: str | None = None) -> Encoder:
    """Rebuild and load the encoder saved at ``path``; verify both hashes.

    Raises :class:`EncoderMismatchError` when the weights file or the resulting encoder does not
    have the recorded SHA-256.
    """
    meta, config = verified_meta(path)
    enc = apply_weights(build_encoder(str(meta["encoder"]), **config), path, meta)
    if device is not None:
        enc.to(device)
    return enc


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
