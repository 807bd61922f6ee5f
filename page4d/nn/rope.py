"""2-D rotary position embedding (VGGT / CroCo style).

The head dimension D is split in halves: the first half is rotated by the row (y) position, the
second by the column (x) position. Within a half of size d, channel pairs are (i, i + d/2) with
frequency ``base^(-2i/d)``. Position (0, 0) is the identity, which is what special tokens get.

A time rotation (``TimeRotation``) turns the same channel pairs further by ``scale_h · t · ω_i`` per head h.
With the spatial frequencies (``ω_i = base^(-2i/d)``) a time step is exactly a diagonal spatial shift, so
time and position are confounded; the time rotation's own frequencies are the same set in reverse order
(``ω_i = base^(-2(d/2-1-i)/d)``), whose ratio to the spatial ones differs from pair to pair, so no spatial
shift reproduces a time step. Rotations of the same planes commute, so q·k depends on t - t' (and on
y - y', x - x') only; ``t = 0`` for every token, or ``scale = 0``, is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TimeRotation:
    """Per-token time index and per-head scale of a time rotation."""

    times: torch.Tensor
    """``[L]`` time index of each token of a sequence."""
    scale: torch.Tensor
    """``[heads]`` angle per unit of time, in units of each channel pair's frequency."""
    own_frequencies: bool = True
    """The spatial frequencies in reverse order (else the spatial ones)."""


class RotaryEmbedding2D(nn.Module):
    """Applies 2-D RoPE to queries or keys. Parameter-free."""

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = base

    def _tables(self, pos: torch.Tensor, dim: int, dtype: torch.dtype,
                reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """cos / sin tables ``[..., L, dim]`` for positions ``[..., L]`` (``reverse``: frequencies reversed)."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=pos.device).float() / dim))
        if reverse:
            inv_freq = inv_freq.flip(0)
        angles = (pos.float()[..., None] * inv_freq).to(dtype)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def rotate_time(self, x: torch.Tensor, rotation: TimeRotation) -> torch.Tensor:
        """Rotate ``x`` ``[N, heads, L, D]`` by ``scale_h · t_l`` on the channel pairs of both halves."""
        angle = rotation.scale[:, None].float() * rotation.times[None, :].float()  # [heads, L]
        half = x.shape[-1] // 2
        cos, sin = self._tables(angle, half, x.dtype, rotation.own_frequencies)
        return torch.cat([part * cos + self._rotate_half(part) * sin for part in (x[..., :half], x[..., half:])], -1)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` ``[N, heads, L, D]`` by positions ``pos`` ``[L, 2]`` or ``[N, L, 2]`` (y, x)."""
        if x.shape[-1] % 4:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {x.shape[-1]}")
        if pos.dim() == 3:
            pos = pos[:, None]  # broadcast over heads
        half = x.shape[-1] // 2
        out = []
        for axis, part in enumerate((x[..., :half], x[..., half:])):
            cos, sin = self._tables(pos[..., axis], half, x.dtype)
            out.append(part * cos + self._rotate_half(part) * sin)
        return torch.cat(out, dim=-1)
