"""Sin/cos embeddings used by the DPT head (uv grid) and the tracker (feature grid, flows)."""

from __future__ import annotations

import torch
from einops import rearrange


def sincos_1d(pos: torch.Tensor, dim: int, omega0: float) -> torch.Tensor:
    """Positions ``[M]`` -> ``[M, dim]`` = ``[sin(p·ω_k) | cos(p·ω_k)]``, ``ω_k = omega0^(-k/(dim/2))``.

    Computed in float64 and returned as float32, as the reference does.
    """
    if dim % 2:
        raise ValueError(f"sin/cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega0**omega
    angles = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def uv_pos_embed(height: int, width: int, channels: int, aspect_ratio: float, device: torch.device) -> torch.Tensor:
    """DPT embedding ``[channels, height, width]`` of a centred uv grid whose half-diagonal is 1.

    Channels ``[0, C/2)`` encode u (columns) and ``[C/2, C)`` encode v (rows), with ω₀ = 100. The
    grid spans the image aspect ratio ``W/H``, so every feature resolution sees the same geometry.
    """
    if channels % 4:
        raise ValueError(f"uv position embedding needs channels divisible by 4, got {channels}")
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, device=device)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    emb = torch.cat([sincos_1d(uu, channels // 2, 100.0), sincos_1d(vv, channels // 2, 100.0)], dim=1)
    return rearrange(emb, "(h w) c -> c h w", h=height)


def grid_pos_embed(channels: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Tracker embedding ``[1, channels, height, width]`` of integer feature-grid positions.

    Channels ``[0, C/2)`` encode x (columns) and ``[C/2, C)`` encode y (rows), with ω₀ = 10000.
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    emb = torch.cat([sincos_1d(xs, channels // 2, 10000.0), sincos_1d(ys, channels // 2, 10000.0)], dim=1)
    return rearrange(emb, "(h w) c -> 1 c h w", h=height)


def flow_embedding(flows: torch.Tensor, dim: int) -> torch.Tensor:
    """Flows ``[..., 2]`` (x, y) -> ``[..., 2·dim]``: the x embedding, then the y embedding.

    Per axis, channel 2k is ``sin(f·φ_k)`` and 2k+1 is ``cos(f·φ_k)`` with the *linear*
    frequencies ``φ_k = 2k·1000/dim`` (CoTracker / VGGSfM convention), in float32.
    """
    freqs = torch.arange(0, dim, 2, dtype=torch.float32, device=flows.device) * (1000.0 / dim)
    parts = []
    for axis in range(2):
        angles = flows[..., axis : axis + 1] * freqs
        parts.append(rearrange(torch.stack([angles.sin(), angles.cos()], dim=-1), "... k two -> ... (k two)"))
    return torch.cat(parts, dim=-1)
