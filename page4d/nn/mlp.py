"""Two-layer MLP with exact (erf) GELU, key names ``fc1`` / ``fc2``."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``: ``[..., C_in] -> [..., C_out]``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
