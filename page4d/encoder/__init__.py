"""Patch encoders: images ``[N, 3, H, W]`` (normalised) -> patch tokens ``[N, h·w, C]``."""

from __future__ import annotations

from torch import nn

from page4d.config import EncoderConfig
from page4d.encoder.conv import ConvPatchEmbed
from page4d.encoder.dinov2 import DinoVisionTransformer


def build_encoder(cfg: EncoderConfig, patch_size: int) -> nn.Module:
    """The encoder named by ``cfg.kind`` (``dinov2`` or ``conv``)."""
    if cfg.kind == "dinov2":
        return DinoVisionTransformer(cfg, patch_size)
    if cfg.kind == "conv":
        return ConvPatchEmbed(cfg.embed_dim, patch_size)
    raise ValueError(f"unknown encoder kind {cfg.kind!r}; use 'dinov2' or 'conv'")


__all__ = ["ConvPatchEmbed", "DinoVisionTransformer", "build_encoder"]
