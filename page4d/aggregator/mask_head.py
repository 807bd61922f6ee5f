"""Dynamic-mask heads: patch tokens of every frame -> a per-patch key value and a moving probability.

Each head reads the patch tokens after a configured time block, detached: it learns only through
the attention bias it produces (and through a mask loss, when one is used). Three heads:

* ``fin10`` (PAGE-4D, the author's copy): two depthwise 3×3 convs and a 1×1 conv give a *keep* logit
  m; ``suppress = sigmoid(-m / tau)`` and the key value is ``-0.5 · clamp(alpha · suppress, 0, 1)``.
* ``release`` (PAGE-4D, kaichen-z/PAGE4D): per-channel standardisation, depthwise 3×3, 1×1 to a hidden
  width, 1×1 to one channel; the key value is ``sigmoid(logit + channel-mean) - 0.5``.
* ``fusion`` (the design documents): depthwise 3×3, 3×3 to C/2, 1×1 to one channel gives M̃;
  ``M = sigmoid(alpha·M̃ + b + beta·m_ext)`` with a learnable bias ``b`` and ``m_ext = 2·M_ext - 1`` (the
  external mask, 1 = moving, pooled to patches and centred so that static patches push M down as moving
  ones push it up; the bias absorbs the shift). ``alpha, beta`` are learnable scalars (``scalar`` gate) or
  per-frame values from a small MLP on the frame's mean token (``mlp`` gate). The key value is M.
  ``normalise`` z-scores M̃ per frame first (off by default: it makes about half of every frame read
  "moving" whatever it shows, and a one-patch frame has no spread to divide by).

``moving`` (1 = moving) is ``suppress`` for fin10, ``0.5 - key`` for the release (keys the pose queries
are pushed away from count as moving) and M for the fusion head. Every head also gives its moving logit M̃
(``σ(M̃)`` = moving), which a ``FusionGate`` fuses with an external mask: the fusion head's own, or, with
``DynamicMaskConfig.fuse``, one around a PAGE-4D head (so PAGE-4D's trained head can feed the design documents'
biases and take an external mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.config import DynamicMaskConfig

HEAD_KEYS = {"fin10": "spatial_mask_head", "release": "spatial_mask_head", "fusion": "dynamic_mask_head"}
"""Module name of each head inside the aggregator (PAGE-4D's heads keep their reference key names)."""


@dataclass
class MaskOutput:
    """Per-patch outputs of a mask head for every (t, v)."""

    logits: torch.Tensor
    """``[B, T, V, h, w]`` raw output of the conv stack."""
    key: torch.Tensor
    """``[B, T, V, h, w]`` the head's key value (PAGE-4D's bias value; M for the fusion head)."""
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

    def forward(self, image: torch.Tensor, external: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Patch image ``[N, C, h, w]`` -> (logits, key value, moving, moving logit), each ``[N, h, w]``."""
        logits = self.head0(image)[:, 0]
        alpha = F.softplus(self.alpha_logit) + 1e-6
        tau = torch.clamp(F.softplus(self.tau_logit) + 1e-6, min=1e-3)
        suppress = torch.sigmoid(-logits / tau)
        return logits, -0.5 * torch.clamp(alpha * suppress, 0.0, 1.0), suppress, -logits / tau


class ReleaseMaskHead(nn.Module):
    """Keys ``head0.0`` (depthwise 3×3), ``head0.2`` (1×1 to ``hidden``), ``head0.4`` (1×1 to 1)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.head0 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, hidden, 1), nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, image: torch.Tensor, external: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Patch image ``[N, C, h, w]`` -> (logits, key value, moving, moving logit), each ``[N, h, w]``."""
        mean = image.mean(dim=(-2, -1), keepdim=True)
        std = image.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
        normed = (image - mean) / std
        logits = self.head0(normed)[:, 0]
        keep = logits + normed.mean(dim=1).detach()
        key = torch.sigmoid(keep) - 0.5
        return logits, key, 0.5 - key, -keep  # 0.5 - key = 1 - σ(keep) = σ(-keep)


class FusionGate(nn.Module):
    """``M = sigmoid(alpha·M̃ + b + beta·m_ext)`` on a head's moving logit M̃. Keys ``bias`` and ``alpha`` /
    ``beta`` (scalar gate) or ``gate.{0,2}`` (MLP gate on the frame's mean token). At initialisation (α = β = 1,
    b = 0) and without an external mask, M is the head's own moving probability σ(M̃)."""

    def __init__(self, dim: int, gate: str, normalise: bool = False):
        super().__init__()
        self.normalise = normalise
        self.bias = nn.Parameter(torch.tensor(0.0))
        if gate == "scalar":
            self.alpha = nn.Parameter(torch.tensor(1.0))
            self.beta = nn.Parameter(torch.tensor(1.0))
        else:  # "mlp" (the config has checked the name)
            self.gate = nn.Sequential(nn.Linear(dim, dim // 4), nn.GELU(), nn.Linear(dim // 4, 2))
            nn.init.zeros_(self.gate[2].weight)
            with torch.no_grad():
                self.gate[2].bias.fill_(1.0)

    def fuse(self, image: torch.Tensor, estimate: torch.Tensor, external: torch.Tensor | None) -> torch.Tensor:
        """Patch image ``[N, C, h, w]``, moving logit ``[N, h, w]`` (+ external mask ``[N, h, w]`` in [0, 1]) ->
        M ``[N, h, w]``."""
        estimate = _z_scored(estimate) if self.normalise else estimate
        if hasattr(self, "gate"):
            alpha, beta = self.gate(image.mean(dim=(-2, -1))).unbind(-1)
            alpha, beta = alpha[:, None, None], beta[:, None, None]
        else:
            alpha, beta = self.alpha, self.beta
        fused = alpha * estimate + self.bias
        if external is not None:
            fused = fused + beta * (2.0 * external - 1.0)
        return torch.sigmoid(fused)


class FusionMaskHead(FusionGate):
    """Keys ``convs.{0,2,4}`` and the gate's (``FusionGate``): its own conv stack gives M̃."""

    def __init__(self, dim: int, gate: str, normalise: bool = False):
        super().__init__(dim, gate, normalise)
        self.convs = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, dim // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(dim // 2, 1, 1),
        )

    def forward(self, image: torch.Tensor, external: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Patch image ``[N, C, h, w]`` (+ external mask ``[N, h, w]`` in [0, 1]) -> (logits, M, M, logits)."""
        logits = self.convs(image)[:, 0]
        moving = self.fuse(image, logits, external)
        return logits, moving, moving, logits


def _z_scored(logits: torch.Tensor) -> torch.Tensor:
    """``[N, h, w]`` standardised per frame (a frame of one patch, which has no spread, gives 0)."""
    flat = logits.flatten(1)
    spread = flat.std(1, keepdim=True) if flat.shape[1] > 1 else torch.zeros_like(flat)
    return ((flat - flat.mean(1, keepdim=True)) / (spread + 1e-6)).view_as(logits)


_BUILDERS: dict[str, Callable[[DynamicMaskConfig, int], nn.Module]] = {
    "fin10": lambda cfg, dim: Fin10MaskHead(dim),
    "release": lambda cfg, dim: ReleaseMaskHead(dim, cfg.release_hidden),
    "fusion": lambda cfg, dim: FusionMaskHead(dim, cfg.gate, cfg.normalise),
}


def build_mask_head(cfg: DynamicMaskConfig, dim: int) -> nn.Module:
    """The head named by ``cfg.head`` (the config has checked the name) for tokens of width ``dim``."""
    return _BUILDERS[cfg.head](cfg, dim)


def compute_mask(
    head: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], num_special: int,
    external: torch.Tensor | None = None, fusion: FusionGate | None = None,
) -> MaskOutput:
    """Run ``head`` on the patch tokens of ``tokens`` ``[B, T, V, P, C]`` (detached).

    ``external``: optional ``[B, T, V, h, w]`` mask in [0, 1] (1 = moving), already pooled to patches.
    ``fusion``: a gate around a PAGE-4D head's moving logit (``DynamicMaskConfig.fuse``); its M is then both the
    key value and the moving probability.
    """
    b, t, v = tokens.shape[:3]
    h, w = grid
    image = rearrange(tokens[:, :, :, num_special:].detach(), "b t v (h w) c -> (b t v) c h w", h=h, w=w)
    ext = None if external is None else rearrange(external, "b t v h w -> (b t v) h w").to(image.dtype)
    logits, key, moving, estimate = head(image, ext)
    if fusion is not None:
        key = moving = fusion.fuse(image, estimate, ext)
    logits, key, moving = (rearrange(x, "(b t v) h w -> b t v h w", b=b, t=t, v=v) for x in (logits, key, moving))
    return MaskOutput(logits=logits, key=key, moving=moving)
