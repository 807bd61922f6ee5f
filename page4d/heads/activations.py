"""Output activations of the camera and dense heads (pure functions, VGGT semantics)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from page4d.conventions import POSE_ENCODING_DIM


def inverse_log(y: torch.Tensor) -> torch.Tensor:
    """``sign(y) · (exp|y| − 1)``: inverse of the symmetric log used for world points."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


Activation = Callable[[torch.Tensor], torch.Tensor]

VALUE_ACTIVATIONS: dict[str, Activation] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "exp": torch.exp,
    "inv_log": inverse_log,
}
"""Element-wise activations for pose components and dense predictions."""

CONF_ACTIVATIONS: dict[str, Activation] = {
    "expp1": lambda c: 1 + c.exp(),
    "expp0": torch.exp,
    "sigmoid": torch.sigmoid,
}
"""Activations for the confidence channel of dense heads."""


def _lookup(table: dict[str, Activation], name: str) -> Activation:
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def activate_pose(
    raw: torch.Tensor, trans_act: str = "linear", quat_act: str = "linear", fl_act: str = "relu"
) -> torch.Tensor:
    """Activate a raw pose encoding ``[..., 9]`` = t (3), quaternion xyzw (4), fov_h, fov_w."""
    if raw.shape[-1] != POSE_ENCODING_DIM:
        raise ValueError(f"pose encoding must have {POSE_ENCODING_DIM} channels, got {raw.shape[-1]}")
    acts = [_lookup(VALUE_ACTIVATIONS, name) for name in (trans_act, quat_act, fl_act)]
    parts = raw.split([3, 4, 2], dim=-1)
    return torch.cat([act(part) for act, part in zip(acts, parts, strict=True)], dim=-1)


def activate_dense(
    out: torch.Tensor, activation: str = "exp", conf_activation: str = "expp1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a dense head output ``[N, C, H, W]`` into ``(pred [N, H, W, C-1], conf [N, H, W])``.

    The last channel is the confidence; the others are the prediction.
    """
    fmap = rearrange(out, "n c h w -> n h w c")
    pred = _lookup(VALUE_ACTIVATIONS, activation)(fmap[..., :-1])
    conf = _lookup(CONF_ACTIVATIONS, conf_activation)(fmap[..., -1])
    return pred, conf
