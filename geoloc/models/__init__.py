"""Encoders: SGM-Net (Ω and the CSMG scene graph Φ) and the NetVLAD family, as plugins.

>>> from geoloc.models import load_encoder
>>> enc = load_encoder("sgmnet")          # eval mode; shipped head weights if present
>>> out = enc.encode(uint8_images)        # (B, 3, H, W) RGB -> EncoderOutput
"""

from __future__ import annotations

from geoloc.models.base import (
    Encoder,
    EncoderInputError,
    EncoderOutput,
    EncoderProtocol,
    state_dict_sha256,
)
from geoloc.models.checkpoint import save_checkpoint
from geoloc.models.registry import (
    DEFAULT_ENCODER,
    available_encoders,
    build_encoder,
    ensure_compatible,
    load_checkpoint,
    load_encoder,
)

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderInputError",
    "EncoderOutput",
    "EncoderProtocol",
    "available_encoders",
    "build_encoder",
    "ensure_compatible",
    "load_checkpoint",
    "load_encoder",
    "save_checkpoint",
    "state_dict_sha256",
]
