"""PAGE-4D dynamic-mask heads and the attention bias they produce.

Both heads read the patch tokens of every frame after a configured time block (detached: the head
learns only through the bias it produces) and return a per-patch key value. The aggregator adds
``row_i · key_j`` to the attention logits of the biased view blocks, where ``row`` is the strength
on camera and register queries and 0 on patch queries.

Two incompatible variants exist (see docs of ``DynamicMaskConfig``):

* ``fin10`` (the author's copy): two depthwise 3×3 convs and a 1×1 conv give a *keep* logit m;
  ``suppress = sigmoid(-m / tau)`` and the key value is ``-0.5 · clamp(alpha · suppress, 0, 1)``.
* ``release`` (kaichen-z/PAGE4D): per-channel standardisation, depthwise 3×3, 1×1 to a hidden width,
  1×1 to one channel; the key value is ``sigmoid(logit + channel-mean) - 0.5``.

``moving`` is the probability that a patch is dynamic (1 = moving): ``suppress`` for fin10 and
``0.5 - key`` for the release (a key the pose queries are pushed away from is treated as moving).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.config import DynamicMaskConfig


def mask_alpha(step: float, hold_start: float, hold_end: float) -> float:
    """The release's cosine hold: 1 before ``hold_start``, 0 from ``hold_end``, a half cosine in between."""
    if step < hold_start:
        return 1.0
    if step >= hold_end:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - hold_start) / (hold_end - hold_start)))


def mask_strength(cfg: DynamicMaskConfig, step: float) -> float:
    """Weight of the bias on camera / register query rows at training step ``step`` (0 at inference)."""
    if cfg.schedule == "constant":
        return cfg.scale
    return cfg.scale * mask_alpha(step, cfg.hold_start, cfg.hold_end)


@dataclass
class MaskOutput:
    """The head's outputs for every (t, v); ``P`` = special tokens + h·w patches."""

    key_bias: torch.Tensor
    """``[B, T, V, P]`` value added (times the row weight) to the logits of each key; 0 on special tokens."""
    row_weight: torch.Tensor
    """``[B, T, V, P]`` strength on camera/register query rows, 0 on patch rows."""
    logits: torch.Tensor
    """``[B, T, V, h, w]`` raw output of the conv stack."""
    moving: torch.Tensor
    """``[B, T, V, h, w]`` probability that each patch is dynamic (1 = moving)."""


class Fin10MaskHead(nn.Module):
    """Keys ``head0.{0,2,4}``, ``alpha_logit``, ``tau_logit`` (0-d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.head0 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, 1, 1),
        )
        self.alpha_logit = nn.Parameter(torch.tensor(0.0))
        self.tau_logit = nn.Parameter(torch.tensor(math.log(2.0)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch image ``[N, C, h, w]`` -> (logits, key value, moving), each ``[N, h, w]``."""
        logits = self.head0(image)[:, 0]
        alpha = F.softplus(self.alpha_logit) + 1e-6
        tau = torch.clamp(F.softplus(self.tau_logit) + 1e-6, min=1e-3)
        suppress = torch.sigmoid(-logits / tau)
        return logits, -0.5 * torch.clamp(alpha * suppress, 0.0, 1.0), suppress


class ReleaseMaskHead(nn.Module):
    """Keys ``head0.0`` (depthwise 3×3), ``head0.2`` (1×1 to ``hidden``), ``head0.4`` (1×1 to 1)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.head0 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, hidden, 1), nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch image ``[N, C, h, w]`` -> (logits, key value, moving), each ``[N, h, w]``."""
        mean = image.mean(dim=(-2, -1), keepdim=True)
        std = image.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
        normed = (image - mean) / std
        logits = self.head0(normed)[:, 0]
        key = torch.sigmoid(logits + normed.mean(dim=1).detach()) - 0.5
        return logits, key, 0.5 - key


def build_mask_head(cfg: DynamicMaskConfig, dim: int) -> nn.Module:
    """The head named by ``cfg.head``, registered as ``aggregator.spatial_mask_head`` (reference key names)."""
    if cfg.head == "fin10":
        return Fin10MaskHead(dim)
    if cfg.head == "release":
        return ReleaseMaskHead(dim, cfg.release_hidden)
    raise ValueError(f"unknown dynamic mask head {cfg.head!r}; use 'fin10' or 'release'")


def compute_mask(
    head: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], num_special: int, strength: float
) -> MaskOutput:
    """Run ``head`` on the patch tokens of ``tokens`` ``[B, T, V, P, C]`` (detached) and build the bias."""
    b, t, v = tokens.shape[:3]
    h, w = grid
    image = rearrange(tokens[:, :, :, num_special:].detach(), "b t v (h w) c -> (b t v) c h w", h=h, w=w)
    logits, key, moving = (rearrange(x, "(b t v) h w -> b t v h w", b=b, t=t, v=v) for x in head(image))
    special = key.new_zeros(b, t, v, num_special)
    key_bias = torch.cat([special, key.flatten(-2)], dim=-1)
    row_weight = torch.cat([special + strength, torch.zeros_like(key.flatten(-2))], dim=-1)
    return MaskOutput(key_bias=key_bias, row_weight=row_weight, logits=logits, moving=moving)
