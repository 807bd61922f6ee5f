"""Multi-head self-attention with a fused path and a dense reference path of identical semantics.

The fused path calls ``scaled_dot_product_attention`` (flash / memory-efficient kernels, no N×N
tensor). The dense path writes the softmax out explicitly; it exists so tests and attention biases
can be checked against an unambiguous reference.

A rank-1 bias ``logits[i, j] += rows_i · keys_j`` (PAGE-4D's mask) is applied on the fused path by
augmenting q and k with one extra channel (padded to a multiple of 8 for the fused kernels):
``[q, √D·rows] · [k, keys] / √D = q·k / √D + rows·keys``, so no N×N tensor is ever built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.nn.rope import RotaryEmbedding2D, TimeRotation

Backend = Literal["fused", "dense"]


@dataclass
class RowKeyBias:
    """Rank-1 logit bias ``logits[n, h, i, j] += rows[n, i] · keys[n, j]``, identical for every head."""

    rows: torch.Tensor
    """``[N, Lq]`` weight of each query row."""
    keys: torch.Tensor
    """``[N, Lk]`` value of each key."""

    def dense(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The bias written out for query rows ``start:stop``: ``[N, 1, rows, Lk]`` (reference paths only)."""
        return (self.rows[:, start:stop, None] * self.keys[:, None, :])[:, None]


class ChunkedBias(Protocol):
    """An additive logit bias that is not low-rank, produced a block of ``chunk_size`` query rows at a time."""

    chunk_size: int

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Bias for query rows ``start:stop``: ``[N, 1 or heads, stop - start, Lk]``."""
        ...


@dataclass(frozen=True)
class AttentionExtras:
    """Everything one attention call may add to plain ``softmax(q kᵀ / √D) v``, as one bundle (all optional).

    ``bias`` and ``chunked_bias`` add to the logits (after q/k-norm and RoPE); ``time_rotation`` rotates q and k
    after the 2-D RoPE; ``gather_keys`` maps this process's keys and values ``[N, heads, L, D]`` to those of the
    whole sequences when they span processes (``page4d.aggregator.grid``; the biases' keys are then the whole
    sequences'); ``mask`` (boolean, True = may attend, or additive, broadcastable to ``[N, heads, Lq, Lk]``) is for
    tests and dense reference checks only.
    """

    bias: RowKeyBias | None = None
    chunked_bias: ChunkedBias | None = None
    time_rotation: TimeRotation | None = None
    mask: torch.Tensor | None = None
    gather_keys: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


NO_EXTRAS = AttentionExtras()


def _augmented_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: RowKeyBias) -> torch.Tensor:
    """Fused attention with a rank-1 bias via one extra q/k channel; ``[N, heads, L, D]`` in and out."""
    n, heads, length, dim = q.shape
    keys_length = k.shape[2]
    pad = 8 * ((dim + 8) // 8) - dim  # at least one channel, total a multiple of 8
    rows = (bias.rows * dim**0.5).to(q.dtype)[:, None, :, None].expand(n, heads, length, 1)
    keys = bias.keys.to(k.dtype)[:, None, :, None].expand(n, heads, keys_length, 1)
    q = torch.cat([q, rows, q.new_zeros(n, heads, length, pad - 1)], dim=-1)
    k = torch.cat([k, keys, k.new_zeros(n, heads, keys_length, pad - 1)], dim=-1)
    v = torch.cat([v, v.new_zeros(n, heads, keys_length, pad)], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, scale=dim**-0.5)[..., :dim]


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extras: AttentionExtras = NO_EXTRAS
) -> torch.Tensor:
    """Reference attention ``softmax(q kᵀ / √D + biases + mask) v``, every bias written out densely (the chunked
    bias in one block); q ``[N, heads, Lq, D]``, k, v ``[N, heads, Lk, D]``."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if extras.bias is not None:
        logits = logits + extras.bias.dense().to(logits.dtype)
    if extras.chunked_bias is not None:
        logits = logits + extras.chunked_bias.block(0, q.shape[2]).to(logits.dtype)
    mask = extras.mask
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(dim=-1) @ v


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extras: AttentionExtras = NO_EXTRAS,
    *,
    backend: Backend = "fused",
) -> torch.Tensor:
    """Attention of ``q`` ``[N, heads, Lq, D]`` over ``k``, ``v`` ``[N, heads, Lk, D]`` -> ``[N, heads, Lq, D]``.

    Fused path: plain SDPA; a rank-1 ``extras.bias`` by q/k augmentation; an ``extras.chunked_bias`` one block
    of its ``chunk_size`` query rows at a time (memory ``chunk_size × Lk`` per head group, never ``Lq × Lk``),
    with the rank-1 bias added to each block. ``extras.time_rotation`` is not read here (``Attention.heads``).
    """
    if backend == "dense":
        return dense_attention(q, k, v, extras)
    if backend != "fused":
        raise ValueError(f"unknown attention backend {backend!r}; use 'fused' or 'dense'")
    bias, chunked_bias, attn_mask = extras.bias, extras.chunked_bias, extras.mask
    if (bias is not None or chunked_bias is not None) and attn_mask is not None:
        raise ValueError("the fused path does not combine an explicit attn_mask with attention biases")
    if chunked_bias is not None:
        outputs = []
        step = chunked_bias.chunk_size
        for start in range(0, q.shape[2], step):
            stop = min(start + step, q.shape[2])
            block = chunked_bias.block(start, stop)
            if bias is not None:
                block = block + bias.dense(start, stop)
            outputs.append(F.scaled_dot_product_attention(q[:, :, start:stop], k, v, attn_mask=block.to(q.dtype)))
        return torch.cat(outputs, dim=2)
    if bias is not None:
        return _augmented_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


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

    def heads(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, time_rotation: TimeRotation | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[N, heads, L, D]`` of tokens ``x`` ``[N, L, C]``, after q/k-norm, RoPE and time rotation."""
        qkv = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            if pos is None:
                raise ValueError("this attention uses RoPE and needs token positions")
            q, k = self.rope(q, pos), self.rope(k, pos)
        if time_rotation is not None:
            if self.rope is None:
                raise ValueError("a time rotation needs an attention with RoPE")
            q, k = self.rope.rotate_time(q, time_rotation), self.rope.rotate_time(k, time_rotation)
        return q, k, v

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, extras: AttentionExtras = NO_EXTRAS
    ) -> torch.Tensor:
        """``x`` ``[N, L, C]``, ``pos`` ``[L, 2]`` or ``[N, L, 2]`` (RoPE positions) -> ``[N, L, C]``, with the
        biases, time rotation, key gathering and (test-only) mask of ``extras``."""
        q, k, v = self.heads(x, pos, extras.time_rotation)
        if extras.gather_keys is not None:
            k, v = extras.gather_keys(k, v)
        out = attend(q, k, v, extras, backend=self.backend)
        return self.proj(rearrange(out, "n h l d -> n l (h d)"))


def set_attention_backend(module: nn.Module, backend: Backend) -> None:
    """Switch every ``Attention`` inside ``module`` to the ``fused`` or ``dense`` path."""
    if backend not in ("fused", "dense"):
        raise ValueError(f"unknown attention backend {backend!r}; use 'fused' or 'dense'")
    for m in module.modules():
        if isinstance(m, Attention):
            m.backend = backend
