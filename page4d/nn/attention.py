"""Multi-head self-attention with a fused path and a dense reference path of identical semantics.

The fused path calls ``scaled_dot_product_attention`` (flash / memory-efficient kernels, no N×N
tensor). The dense path writes the softmax out explicitly; it exists so tests (and later attention
biases) can be checked against an unambiguous reference.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.nn.rope import RotaryEmbedding2D

Backend = Literal["fused", "dense"]


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference attention ``softmax(q kᵀ / √D + mask) v``.

    Args:
        q, k, v: ``[N, heads, L, D]``.
        attn_mask: optional boolean ``[..., L, L]`` (True = may attend) or additive float bias.
    """
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    return logits.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Self-attention with fused ``qkv``, optional per-head q/k LayerNorm and optional 2-D RoPE.

    Keys: ``qkv``, ``q_norm``, ``k_norm`` (when ``qk_norm``), ``proj``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        rope: RotaryEmbedding2D | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope
        self.backend: Backend = "fused"

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` ``[N, L, C]``, ``pos`` ``[L, 2]`` or ``[N, L, 2]`` (RoPE positions) -> ``[N, L, C]``.

        ``attn_mask`` (tests and reference checks only): boolean or additive, broadcastable to
        ``[N, heads, L, L]``.
        """
        qkv = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            if pos is None:
                raise ValueError("this attention uses RoPE and needs token positions")
            q, k = self.rope(q, pos), self.rope(k, pos)
        if self.backend == "fused":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = dense_attention(q, k, v, attn_mask)
        return self.proj(rearrange(out, "n h l d -> n l (h d)"))


def set_attention_backend(module: nn.Module, backend: Backend) -> None:
    """Switch every ``Attention`` inside ``module`` to the ``fused`` or ``dense`` path."""
    if backend not in ("fused", "dense"):
        raise ValueError(f"unknown attention backend {backend!r}; use 'fused' or 'dense'")
    for m in module.modules():
        if isinstance(m, Attention):
            m.backend = backend
