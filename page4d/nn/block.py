"""Pre-norm transformer block with LayerScale (VGGT / DINOv2 layout)."""

from __future__ import annotations

import torch
from torch import nn

from page4d.config import AggregatorConfig
from page4d.nn.attention import NO_EXTRAS, Attention, AttentionExtras
from page4d.nn.mlp import Mlp
from page4d.nn.rope import RotaryEmbedding2D


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` (key ``gamma`` ``[C]``)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    Keys: ``norm1``, ``attn.*``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``
    (no ``ls*`` keys when ``init_values`` is None). ``norm_eps`` is the epsilon of ``norm1`` / ``norm2``,
    ``qk_norm_eps`` that of the per-head q/k LayerNorms (Pi3 uses 1e-6 and 1e-5).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        rope: RotaryEmbedding2D | None = None,
        qk_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, qk_norm_eps, rope)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()

    @classmethod
    def from_config(
        cls, cfg: AggregatorConfig, rope: RotaryEmbedding2D | None, init_values: float | None = None
    ) -> Block:
        """An aggregator block of ``cfg``; ``init_values`` overrides ``cfg.init_values`` (0 for added blocks that
        must start as the identity)."""
        return cls(
            cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.proj_bias, cfg.ffn_bias,
            init_values=cfg.init_values if init_values is None else init_values, qk_norm=cfg.qk_norm,
            norm_eps=cfg.layernorm_eps, rope=rope, qk_norm_eps=cfg.qk_norm_eps,
        )

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, extras: AttentionExtras = NO_EXTRAS
    ) -> torch.Tensor:
        """``x`` ``[N, L, C]`` -> ``[N, L, C]``; ``pos`` and ``extras`` as in ``Attention.forward``."""
        x = x + self.ls1(self.attn(self.norm1(x), pos, extras))
        return x + self.ls2(self.mlp(self.norm2(x)))
