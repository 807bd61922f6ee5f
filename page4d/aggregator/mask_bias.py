"""How a dynamic mask biases attention (keys ``aggregator.mask_bias.*``): strategy objects that give the
rank-1 bias of each block bank.

The bias of a block is ``logits[i, j] += row_i · key_j`` with ``row_i`` one value for camera/register
queries and one for patch queries, and ``key_j`` a per-patch value (0 on camera/register keys).

* ``Page4DBias``: PAGE-4D; view blocks only; row = strength on camera/register queries, 0 on patch
  queries; key = the head's key value.
* ``PoseGeoBias``: the design documents' λ biases; key = the moving probability M; learnable, clamped to
  ``[-b, b]``, starting at 0, with separate ``λ_pose_t``, ``λ_geo_t`` in time blocks. In a ``shared``
  stream the camera/register queries act as the pose stream (row ``-λ_pose``: attend less to moving
  keys) and the patch queries as the geometry stream (row ``+λ_geo``: attend more to them). With dual
  streams (``page4d.aggregator.streams``) every query of the ``pose`` stream gets ``-λ_pose`` and every
  query of the ``geometry`` stream ``+λ_geo``.

A strategy returns no rows when every row weight is exactly 0 and none needs a gradient, and the
aggregator then runs plain attention: at inference an untrained bias is bit-for-bit the model without
it. While λ are being trained the bias path always runs (a zero λ still needs its gradient); its
outputs then equal the plain model's up to float rounding.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from page4d.aggregator.mask_head import MaskOutput
from page4d.config import DynamicMaskConfig


def mask_alpha(step: float, hold_start: float, hold_end: float) -> float:
    """The release's cosine hold: 1 before ``hold_start``, 0 from ``hold_end``, a half cosine in between."""
    if step < hold_start:
        return 1.0
    if step >= hold_end:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - hold_start) / (hold_end - hold_start)))


def mask_strength(cfg: DynamicMaskConfig, step: float) -> float:
    """PAGE-4D's weight on camera / register query rows at training step ``step`` (0 at inference)."""
    if cfg.schedule == "constant":
        return cfg.scale
    return cfg.scale * mask_alpha(step, cfg.hold_start, cfg.hold_end)


RowValues = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Block bank -> (row weight on camera/register queries, row weight on patch queries), 0-d tensors."""

StreamRole = Literal["shared", "pose", "geometry"]
"""Which queries a token stream stands for: both kinds (one stream), or one of the two dual streams."""


class Page4DBias(nn.Module):
    """PAGE-4D's bias. Parameter-free."""

    def __init__(self, cfg: DynamicMaskConfig):
        super().__init__()
        self.cfg = cfg

    def row_values(self, step: float, role: StreamRole = "shared") -> RowValues:
        strength = mask_strength(self.cfg, step)
        if strength == 0.0:
            return {}
        return {"view": (torch.tensor(strength), torch.tensor(0.0))}

    def key_values(self, mask: MaskOutput) -> torch.Tensor:
        return mask.key


class PoseGeoBias(nn.Module):
    """The design documents' λ biases: keys ``lambda_pose``, ``lambda_geo``, ``lambda_pose_t``, ``lambda_geo_t``."""

    def __init__(self, cfg: DynamicMaskConfig):
        super().__init__()
        self.bound = cfg.lambda_bound
        self.lambda_pose = nn.Parameter(torch.tensor(0.0))
        self.lambda_geo = nn.Parameter(torch.tensor(0.0))
        self.lambda_pose_t = nn.Parameter(torch.tensor(0.0))
        self.lambda_geo_t = nn.Parameter(torch.tensor(0.0))

    def row_values(self, step: float, role: StreamRole = "shared") -> RowValues:
        raw = (self.lambda_pose, self.lambda_geo, self.lambda_pose_t, self.lambda_geo_t)
        pose, geo, pose_t, geo_t = (lam.clamp(-self.bound, self.bound) for lam in raw)
        trained = torch.is_grad_enabled() and any(lam.requires_grad for lam in raw)
        if role == "pose":
            rows = {"view": (-pose, -pose), "time": (-pose_t, -pose_t)}
        elif role == "geometry":
            rows = {"view": (geo, geo), "time": (geo_t, geo_t)}
        else:
            rows = {"view": (-pose, geo), "time": (-pose_t, geo_t)}
        # A bank whose rows are all 0 (and untrained) runs plain attention, exactly rather than up to rounding.
        return {bank: r for bank, r in rows.items() if trained or any(bool(x.detach() != 0) for x in r)}

    def key_values(self, mask: MaskOutput) -> torch.Tensor:
        return mask.moving


BIASES: dict[str, type[nn.Module]] = {"page4d": Page4DBias, "pose_geo": PoseGeoBias}
"""``DynamicMaskConfig.bias`` -> its strategy (the config has checked the name)."""


def grid_bias(
    rows: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor, num_special: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and key values over the token grid: ``keys`` ``[B, T, V, h, w]`` -> two ``[B, T, V, P]``."""
    b, t, v = keys.shape[:3]
    keys = keys.flatten(-2)
    special_row, patch_row = (r.to(keys) for r in rows)
    zeros = keys.new_zeros(b, t, v, num_special)
    row = torch.cat([special_row.expand(b, t, v, num_special), patch_row.expand(b, t, v, keys.shape[-1])], dim=-1)
    return row, torch.cat([zeros, keys], dim=-1)
