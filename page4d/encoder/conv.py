"""Conv patch embedding: one stride-p convolution, no normalisation, no position embedding."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class ConvPatchEmbed(nn.Module):
    """``[N, 3, H, W] -> [N, h·w, C]`` (row-major patches). Key ``proj``."""

    def __init__(self, embed_dim: int, patch_size: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(images), "n c h w -> n (h w) c")
