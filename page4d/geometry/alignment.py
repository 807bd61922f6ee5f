"""Closed-form similarity alignment of point sets (Umeyama 1991)."""

from __future__ import annotations

import torch


def umeyama_sim3(
    src: torch.Tensor, dst: torch.Tensor, with_scale: bool = True
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Similarity ``(s, R, t)`` minimising ``Σᵢ ||dstᵢ − (s·R·srcᵢ + t)||²`` for ``src, dst [N, 3]``.

    With ``μ`` the means, ``Σ = (1/N) Σᵢ (dstᵢ − μ_dst)(srcᵢ − μ_src)ᵀ = U D Vᵀ`` (SVD) and
    ``S = diag(1, 1, sign(det U · det V))`` (reflection correction):
    ``R = U S Vᵀ``, ``s = tr(D S) / σ²_src`` with ``σ²_src = (1/N) Σᵢ ||srcᵢ − μ_src||²`` (``s = 1`` when
    ``with_scale`` is false), ``t = μ_dst − s·R·μ_src``.

    Computed in float64; returns ``s`` (float), ``R [3, 3]`` and ``t [3]`` as float64 tensors.
    Raises ``ValueError`` for mismatched shapes, ``N < 3`` or a point set whose points are all equal.
    """
    if src.ndim != 2 or src.shape[-1] != 3 or src.shape != dst.shape:
        raise ValueError(
            f"umeyama_sim3 expects src and dst of the same shape [N, 3], got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    if src.shape[0] < 3:
        raise ValueError(f"umeyama_sim3 needs at least 3 point pairs, got N = {src.shape[0]}")
    src64, dst64 = src.detach().double(), dst.detach().double()
    for name, points in (("src", src64), ("dst", dst64)):
        if not torch.isfinite(points).all():
            raise ValueError(f"umeyama_sim3: {name} contains non-finite values")
        if bool((points == points[0]).all()):
            raise ValueError(f"umeyama_sim3: degenerate input, all {name} points are equal")

    mean_src, mean_dst = src64.mean(dim=0), dst64.mean(dim=0)
    src_c, dst_c = src64 - mean_src, dst64 - mean_dst
    cov = dst_c.T @ src_c / src64.shape[0]
    u, d, vh = torch.linalg.svd(cov)
    correction = torch.ones(3, dtype=torch.float64, device=src64.device)
    if torch.linalg.det(u) * torch.linalg.det(vh) < 0:
        correction[2] = -1.0
    rot = u @ torch.diag(correction) @ vh
    scale = float((d * correction).sum() / src_c.square().sum(dim=-1).mean()) if with_scale else 1.0
    trans = mean_dst - scale * rot @ mean_src
    return scale, rot, trans
