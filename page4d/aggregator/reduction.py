"""Token reduction: chosen time / view blocks run on fewer patch tokens, and every layer output stays full size.

In a reduced block each frame's patch grid ``h × w`` is average-pooled in ``f × f`` windows (edge windows over
the patches they hold) to ``⌈h/f⌉ × ⌈w/f⌉``; camera and register tokens are left as they are. The block runs on
the pooled tokens, with RoPE positions, mask-bias values and time indices pooled or rebuilt to match, and what it
adds to each pooled patch (its residual update) is added to every patch of the window. So the block costs about
1/f⁴ of its attention and 1/f² of its MLP, while the tokens a DPT head reads keep their full resolution and
their own detail. Blocks not listed run exactly as before (reduction off: the plain model bit for bit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange


class TokenPooling:
    """Pools and restores the patch tokens of ``[B, T, V, P, C]`` grids of ``num_special + h·w`` tokens per frame
    with an ``f × f`` window."""

    def __init__(self, factor: int, patch_grid: tuple[int, int], num_special: int):
        self.factor, self.grid, self.num_special = factor, patch_grid, num_special
        h, w = patch_grid
        self.pooled_grid = (math.ceil(h / factor), math.ceil(w / factor))

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame after pooling."""
        return self.num_special + self.pooled_grid[0] * self.pooled_grid[1]

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """``[..., num_special + h·w, C]`` -> ``[..., num_special + h'·w', C]`` (patches averaged per window)."""
        lead, (h, w) = grid.shape[:-2], self.grid
        special, patches = grid[..., : self.num_special, :], grid[..., self.num_special :, :]
        image = rearrange(patches, "... (h w) c -> (...) c h w", h=h, w=w)
        pooled = F.avg_pool2d(image, self.factor, ceil_mode=True)  # edge windows: the mean of the patches inside
        pooled = rearrange(pooled, "n c h w -> n (h w) c").reshape(*lead, -1, grid.shape[-1])
        return torch.cat([special, pooled], dim=-2)

    def pool_values(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token values ``[..., num_special + h·w]`` pooled the same way."""
        return self.pool(values[..., None])[..., 0]

    def restore(self, full: torch.Tensor, pooled_in: torch.Tensor, pooled_out: torch.Tensor) -> torch.Tensor:
        """``full`` ``[..., P, C]`` plus the block's update ``pooled_out - pooled_in`` ``[..., P', C]``, each pooled
        patch's update added to every patch of its window (special tokens: their own update)."""
        update = pooled_out - pooled_in
        (h, w), (ph, pw), f = self.grid, self.pooled_grid, self.factor
        patches = rearrange(update[..., self.num_special :, :], "... (h w) c -> ... h w c", h=ph, w=pw)
        patches = patches.repeat_interleave(f, dim=-3).repeat_interleave(f, dim=-2)[..., :h, :w, :]
        spread = torch.cat([update[..., : self.num_special, :], patches.flatten(-3, -2)], dim=-2)
        return full + spread
