"""Special tokens and RoPE positions for the token grid ``[B, T, V, P, C]``.

Per frame the tokens are ``[camera (1), registers (R), patches (h·w, row-major)]``. The learned
camera and register tokens have two slots: slot 0 marks the reference frame (t=0, v=0), which
defines the world frame; every other (t, v) uses slot 1.
"""

from __future__ import annotations

import torch


def special_tokens(camera_token: torch.Tensor, register_token: torch.Tensor, b: int, t: int, v: int) -> torch.Tensor:
    """``camera_token`` [1,2,1,C] and ``register_token`` [1,2,R,C] -> ``[B, T, V, 1+R, C]``."""
    slots = torch.cat([camera_token, register_token], dim=2)[0]  # [2, 1+R, C]
    index = torch.ones(t, v, dtype=torch.long, device=slots.device)
    index[0, 0] = 0
    return slots[index].unsqueeze(0).expand(b, -1, -1, -1, -1)


def frame_positions(h: int, w: int, num_special: int, device: torch.device | None = None) -> torch.Tensor:
    """RoPE positions of one frame ``[P, 2]`` (y, x): special tokens (0, 0), patch (row+1, col+1)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    patches = torch.stack([ys.flatten(), xs.flatten()], dim=-1) + 1
    return torch.cat([torch.zeros(num_special, 2, dtype=torch.long, device=device), patches], dim=0)
