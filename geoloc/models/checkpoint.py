"""Encoder checkpoints: ``PATH.safetensors`` (weights) + ``PATH.json`` (name, config, hashes).

When the backbone is frozen and pretrained, only the head (``head.*``) is stored, which keeps
shipped files small; the backbone is rebuilt from its own pretrained weights on load. The JSON
records the SHA-256 of the weights file and of the full encoder state dict (``weights_sha256``),
and both are verified on load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from geoloc.errors import ConfigError, EncoderMismatchError
from geoloc.models.base import Encoder

FORMAT = "geoloc-encoder-checkpoint/1"


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, json) paths for ``path`` given with or without an extension."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(enc: Encoder, path: str | Path, head_only: bool | None = None) -> Path:
    """Write ``PATH.safetensors`` + ``PATH.json`` for ``enc``; return the JSON path.

    ``head_only`` defaults to True when the backbone is frozen and pretrained.
    """
    from safetensors.torch import save_file

    if enc.optimized:
        raise ConfigError(f"encoder {enc.name!r} was optimised for inference; save it before")
    weights_path, json_path = checkpoint_paths(path)
    if head_only is None:
        head_only = enc.freeze_backbone and enc.pretrained
    state = enc.state_dict()
    if head_only:
        state = {k: v for k, v in state.items() if k.startswith("head.")}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(weights_path))
    meta: dict[str, Any] = {
        "format": FORMAT,
        "encoder": enc.name,
        "config": enc.config(),
        "weights_file": weights_path.name,
        "weights_file_sha256": _file_sha256(weights_path),
        "stored": "head" if head_only else "full",
        "weights_sha256": enc.weights_sha256,
        "omega_dim": enc.omega_dim,
        "phi_dim": enc.phi_dim,
        "num_nodes": enc.num_nodes,
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return json_path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (clear error when missing or malformed)."""
    _, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise ConfigError("checkpoint metadata not found", path=str(json_path))
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"checkpoint metadata is not valid JSON: {exc}", path=str(json_path)
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} file", path=str(json_path))
    for key in ("encoder", "config", "weights_file_sha256", "weights_sha256", "stored"):
        if key not in meta:
            raise ConfigError(f"checkpoint metadata lacks {key!r}", path=str(json_path))
    return meta


def verified_meta(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's metadata and the constructor parameters to rebuild its encoder with,
    after checking the weights file's SHA-256 (:class:`EncoderMismatchError` when it differs).

    The encoder itself is built by :func:`geoloc.models.registry.load_checkpoint` (the registry
    knows the plugins; this module only knows the file format).
    """
    weights_path, json_path = checkpoint_paths(path)
    meta = read_checkpoint_meta(path)
    if not weights_path.is_file():
        raise ConfigError("checkpoint weights not found", path=str(weights_path))
    actual = _file_sha256(weights_path)
    if actual != meta["weights_file_sha256"]:
        raise EncoderMismatchError(
            f"weights file SHA-256 {actual[:12]}… differs from the recorded "
            f"{str(meta['weights_file_sha256'])[:12]}… in {json_path.name}",
            path=str(weights_path),
        )
    config = dict(meta["config"])
    config.pop("name", None)
    # a full checkpoint holds the backbone too: its original weights file is not needed any more
    if meta["stored"] == "full" and config.get("backbone_weights"):
        config["backbone_weights"] = None
    return meta, config


def apply_weights(enc: Encoder, path: str | Path, meta: dict[str, Any]) -> Encoder:
    """Load the checkpoint's weights into ``enc`` (built from :func:`verified_meta`'s config)
    and verify the resulting state's SHA-256; returns ``enc`` in eval mode."""
    from safetensors.torch import load_file

    weights_path, json_path = checkpoint_paths(path)
    backbone_file = meta["config"].get("backbone_weights") if meta["stored"] == "full" else None
    if backbone_file:
        params = getattr(enc, "_params", None)
        if isinstance(params, dict):
            params["backbone_weights"] = backbone_file
        enc.pretrained = True
    state = load_file(str(weights_path))
    result = enc.load_state_dict(state, strict=False)
    expected_missing = (
        {k for k in enc.state_dict() if not k.startswith("head.")}
        if meta["stored"] == "head"
        else set()
    )
    if result.unexpected_keys or set(result.missing_keys) - expected_missing:
        raise EncoderMismatchError(
            f"weights do not fit encoder {meta['encoder']!r}: "
            f"{len(result.unexpected_keys)} unexpected, "
            f"{len(set(result.missing_keys) - expected_missing)} missing keys",
            path=str(weights_path),
        )
    sha = enc.weights_sha256
    if sha != meta["weights_sha256"]:
        raise EncoderMismatchError(
            f"encoder weights SHA-256 {sha[:12]}… differs from the recorded "
            f"{str(meta['weights_sha256'])[:12]}… (backbone weights changed?)",
            path=str(json_path),
        )
    enc.eval()
    return enc
