"""Evaluation metrics for depth, camera trajectories, relative poses and dynamic masks.

Protocols follow the MonST3R → CUT3R → Pi3 lineage (video depth: one alignment per clip; ATE / RPE after
Sim(3) Umeyama alignment of camera centres, RPE over consecutive frames) and VGGT's pose AUC.
Every function is pure, works on torch tensors, computes in float64 and returns Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from page4d.geometry.alignment import umeyama_sim3
from page4d.geometry.unprojection import closed_form_inverse_se3


def _median(values: torch.Tensor) -> torch.Tensor:
    """True median of a 1-D tensor (mean of the two middle values for an even count; torch.median takes the lower)."""
    ordered = torch.sort(values).values
    n = ordered.numel()
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def _rotation_angle_deg(rot: torch.Tensor) -> torch.Tensor:
    """Rotation angle in degrees of rotation matrices ``[..., 3, 3]`` -> ``[...]``.

    ``atan2(sin θ, cos θ)`` with ``sin θ = ||vee(R − Rᵀ)|| / 2`` and ``cos θ = (tr R − 1) / 2``: unlike ``arccos``
    it stays accurate near 0° (the identity gives exactly 0).
    """
    skew = rot - rot.transpose(-1, -2)
    sin = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], dim=-1).norm(dim=-1) / 2
    cos = (rot.diagonal(dim1=-2, dim2=-1).sum(dim=-1) - 1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def _vector_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between vectors ``a, b [..., 3]`` -> ``[...]`` as ``atan2(||a × b||, a · b)``."""
    return torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(dim=-1)))


def _check_poses(pred_w2c: torch.Tensor, gt_w2c: torch.Tensor, min_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``[N, 3, 4]`` pose pairs and return them as float64."""
    if pred_w2c.shape != gt_w2c.shape or pred_w2c.ndim != 3 or pred_w2c.shape[-2:] != (3, 4):
        raise ValueError(
            "expected pred_w2c and gt_w2c of the same shape [N, 3, 4], "
            f"got {tuple(pred_w2c.shape)} and {tuple(gt_w2c.shape)}"
        )
    if pred_w2c.shape[0] < min_frames:
        raise ValueError(f"need at least {min_frames} poses, got N = {pred_w2c.shape[0]}")
    return pred_w2c.detach().double(), gt_w2c.detach().double()


def depth_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor | None = None,
    align: Literal["median", "scale_shift", "none"] = "median",
    max_depth: float | None = None,
) -> dict[str, float]:
    """Depth error of ``pred [..., H, W]`` against ``gt [..., H, W]`` (z-depth), pooled over all leading axes.

    Valid pixels: ``valid [..., H, W]`` (bool, all True if None) and finite ``gt > 0`` and, if given,
    ``gt ≤ max_depth``. One alignment is fitted over all valid pixels of the input, so passing a whole clip
    ``[T, V, H, W]`` gives the per-sequence protocol:

    - ``"median"``: ``p ← p · median(g) / median(p)``;
    - ``"scale_shift"``: ``p ← a·p + b`` with ``(a, b) = argmin Σ (a·p + b − g)²`` (least squares, not LAD);
    - ``"none"``: ``p`` unchanged.

    Over the valid pixels, with aligned ``p``:
    ``abs_rel = mean(|p − g| / g)`` and ``delta_1.25 = mean(max(p/g, g/p) < 1.25)``, where a pixel with
    ``p ≤ 0`` counts as outside the threshold. Returns ``{"abs_rel", "delta_1.25", "scale", "shift"}`` where
    ``scale``/``shift`` are the fitted alignment (``1, 0`` for ``"none"``; shift ``0`` for ``"median"``).
    """
    if pred.shape != gt.shape or pred.ndim < 2:
        raise ValueError(
            f"pred and gt must have the same shape [..., H, W], got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    if valid is not None and valid.shape != gt.shape:
        raise ValueError(f"valid must have the shape of gt {tuple(gt.shape)}, got {tuple(valid.shape)}")
    if align not in ("median", "scale_shift", "none"):
        raise ValueError(f"align must be 'median', 'scale_shift' or 'none', got {align!r}")

    pred64, gt64 = pred.detach().double(), gt.detach().double()
    mask = torch.isfinite(gt64) & (gt64 > 0)
    if valid is not None:
        mask &= valid.bool()
    if max_depth is not None:
        mask &= gt64 <= max_depth
    p, g = pred64[mask], gt64[mask]
    if g.numel() == 0:
        raise ValueError("depth_metrics: no valid pixel (valid mask, gt > 0 and gt <= max_depth select nothing)")
    if not torch.isfinite(p).all():
        raise ValueError("depth_metrics: pred is non-finite at valid pixels")

    scale, shift = 1.0, 0.0
    if align == "median":
        pred_median = _median(p)
        if pred_median <= 0:
            raise ValueError(
                f"depth_metrics: median alignment needs a positive median prediction, got {float(pred_median)}"
            )
        scale = float(_median(g) / pred_median)
    elif align == "scale_shift":
        p_c = p - p.mean()
        variance = p_c.square().sum()
        if variance == 0:
            raise ValueError("depth_metrics: scale_shift alignment needs a non-constant prediction")
        scale = float((p_c * (g - g.mean())).sum() / variance)
        shift = float(g.mean() - scale * p.mean())
    p = scale * p + shift

    ratio = torch.where(p > 0, torch.maximum(p / g, g / p), torch.full_like(p, math.inf))
    return {
        "abs_rel": float(((p - g).abs() / g).mean()),
        "delta_1.25": float((ratio < 1.25).double().mean()),
        "scale": scale,
        "shift": shift,
    }


def camera_centres(extrinsic: torch.Tensor) -> torch.Tensor:
    """Camera centres in world coordinates ``[..., 3]`` from world-to-camera ``extrinsic [..., 3, 4]``: ``C = −Rᵀt``."""
    if extrinsic.shape[-2:] != (3, 4):
        raise ValueError(f"expected extrinsic [..., 3, 4], got shape {tuple(extrinsic.shape)}")
    return closed_form_inverse_se3(extrinsic)[..., :3, 3]


def _consecutive_relative(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation ``[N-1, 3, 3]`` and translation ``[N-1, 3]`` of ``Pᵢ⁻¹Pᵢ₊₁`` for camera-to-world ``c2w [N, 3, 4]``."""
    rot_t = c2w[:-1, :, :3].transpose(-1, -2)
    return rot_t @ c2w[1:, :, :3], (rot_t @ (c2w[1:, :, 3] - c2w[:-1, :, 3]).unsqueeze(-1)).squeeze(-1)


def relative_pose_error(pred_w2c: torch.Tensor, gt_w2c: torch.Tensor, scale: float = 1.0) -> dict[str, float]:
    """RPE over the N − 1 consecutive pairs of world-to-camera poses ``[N, 3, 4]`` (N ≥ 2) against ``[N, 3, 4]``.

    ``scale`` is the Sim(3) scale of an alignment fitted elsewhere (e.g. on more cameras than these N); the
    alignment's rotation and translation cancel in relative poses. With camera-to-world poses ``Pᵢ``, ``Qᵢ``,
    ``ΔPᵢ = Pᵢ⁻¹Pᵢ₊₁`` (its translation multiplied by ``scale``), ``ΔQᵢ = Qᵢ⁻¹Qᵢ₊₁`` and ``Eᵢ = ΔQᵢ⁻¹ΔPᵢ``:
    ``rpe_trans = mean_i ||trans(Eᵢ)||`` and ``rpe_rot_deg = mean_i angle(rot(Eᵢ))``.
    """
    pred, gt = _check_poses(pred_w2c, gt_w2c, min_frames=2)
    pred_rel_rot, pred_rel_trans = _consecutive_relative(closed_form_inverse_se3(pred))
    gt_rel_rot, gt_rel_trans = _consecutive_relative(closed_form_inverse_se3(gt))
    # trans(ΔQ⁻¹ΔP) = ΔR_Qᵀ(s·Δt_P − Δt_Q); the rotation preserves the norm.
    rpe_trans = (scale * pred_rel_trans - gt_rel_trans).norm(dim=-1).mean()
    rpe_rot = _rotation_angle_deg(gt_rel_rot.transpose(-1, -2) @ pred_rel_rot).mean()
    return {"rpe_trans": float(rpe_trans), "rpe_rot_deg": float(rpe_rot)}


def trajectory_metrics(pred_w2c: torch.Tensor, gt_w2c: torch.Tensor) -> dict[str, float]:
    """ATE and RPE of predicted world-to-camera poses ``[N, 3, 4]`` against ground truth ``[N, 3, 4]`` (N ≥ 3).

    ``(s, R, t) = umeyama_sim3(C_pred, C_gt)`` on the camera centres; the aligned poses have camera-to-world
    rotation ``R·Rᵢ`` and centre ``s·R·Cᵢ + t``. With ``Pᵢ``, ``Qᵢ`` the aligned predicted and ground-truth
    camera-to-world poses and relative poses ``ΔPᵢ = Pᵢ⁻¹Pᵢ₊₁`` (predicted relative translation thereby
    scaled by ``s``; the global ``R`` cancels), ``ΔQᵢ = Qᵢ⁻¹Qᵢ₊₁``, ``Eᵢ = ΔQᵢ⁻¹ΔPᵢ``:

    - ``ate_rmse = sqrt(mean_i ||s·R·C_pred,i + t − C_gt,i||²)``;
    - ``rpe_trans = mean_i ||trans(Eᵢ)||`` over the N − 1 consecutive pairs;
    - ``rpe_rot_deg = mean_i angle(rot(Eᵢ))`` in degrees (both from :func:`relative_pose_error`);
    - ``scale = s``.
    """
    pred, gt = _check_poses(pred_w2c, gt_w2c, min_frames=3)
    pred_centres, gt_centres = camera_centres(pred), camera_centres(gt)
    scale, rot, trans = umeyama_sim3(pred_centres, gt_centres)
    aligned_centres = scale * pred_centres @ rot.T + trans
    ate = (aligned_centres - gt_centres).square().sum(dim=-1).mean().sqrt()
    return {"ate_rmse": float(ate), **relative_pose_error(pred, gt, scale), "scale": scale}


def pose_auc(
    pred_w2c: torch.Tensor,
    gt_w2c: torch.Tensor,
    thresholds: Sequence[int] = (3, 5, 30),
    sign_ambiguous: bool = False,
) -> dict[str, float]:
    """Relative-pose AUC of predicted world-to-camera poses ``[N, 3, 4]`` against ground truth ``[N, 3, 4]`` (N ≥ 2).

    For every ordered pair ``i ≠ j`` the relative pose ``Eⱼ·Eᵢ⁻¹`` (camera i to camera j) gives
    ``rot_err = angle(R_gtᵀ·R_pred)`` and ``trans_err = angle(t_pred, t_gt)`` in degrees; the pair error is
    ``max(rot_err, trans_err)``. With ``sign_ambiguous`` the translation error is ``min(θ, 180° − θ)`` (as in
    VGGT's evaluation). A zero predicted relative translation has no direction and counts as an infinite error.

    Discretisation (VGGT's ``calculate_auc_np``, 1° bins): for an integer threshold ``τ``,
    ``auc@τ = (1/τ) Σ_{k=1..τ} mean_pairs(err < k)``, a right Riemann sum of the accuracy curve on ``[0, τ]``.
    Returns ``{"auc@τ": ...}`` for each threshold.
    """
    pred, gt = _check_poses(pred_w2c, gt_w2c, min_frames=2)
    if not thresholds or any(isinstance(tau, bool) or not isinstance(tau, int) or tau < 1 for tau in thresholds):
        raise ValueError(f"thresholds must be positive integers (degrees), got {tuple(thresholds)}")
    n = pred.shape[0]
    index = torch.arange(n, device=pred.device)
    i, j = (idx.flatten() for idx in torch.meshgrid(index, index, indexing="ij"))
    off_diagonal = i != j
    i, j = i[off_diagonal], j[off_diagonal]

    def relative(w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation ``[P, 3, 3]`` and translation ``[P, 3]`` of ``Eⱼ·Eᵢ⁻¹`` for the pairs ``(i, j)``."""
        rot = w2c[j, :, :3] @ w2c[i, :, :3].transpose(-1, -2)
        return rot, w2c[j, :, 3] - (rot @ w2c[i, :, 3:]).squeeze(-1)

    pred_rot, pred_trans = relative(pred)
    gt_rot, gt_trans = relative(gt)
    if (gt_trans.norm(dim=-1) == 0).any():
        raise ValueError("pose_auc: two ground-truth cameras share a centre, so a relative direction is undefined")
    rot_err = _rotation_angle_deg(gt_rot.transpose(-1, -2) @ pred_rot)
    trans_err = _vector_angle_deg(pred_trans, gt_trans)
    if sign_ambiguous:
        trans_err = torch.minimum(trans_err, 180 - trans_err)
    trans_err = torch.where(pred_trans.norm(dim=-1) == 0, math.inf, trans_err)
    err = torch.maximum(rot_err, trans_err)
    result = {}
    for tau in thresholds:
        steps = torch.arange(1, tau + 1, dtype=torch.float64, device=err.device)
        result[f"auc@{tau}"] = float((err[None, :] < steps[:, None]).double().mean())
    return result


def mask_metrics(pred: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """IoU and F1 of a predicted mask ``pred [...]`` (bool, or scores binarised as ``pred > threshold``) against
    ``gt [...]`` (bool; other dtypes are read as ``gt != 0``), pooled over all elements.

    With ``P``, ``G`` the positive sets: ``iou = |P ∩ G| / |P ∪ G|`` and ``f1 = 2|P ∩ G| / (|P| + |G|)``;
    both are 1.0 when ``P`` and ``G`` are empty. Returns ``{"iou", "f1"}``.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt masks must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    pred_mask = pred if pred.dtype == torch.bool else pred > threshold
    gt_mask = gt if gt.dtype == torch.bool else gt != 0
    intersection = int((pred_mask & gt_mask).sum())
    union = int((pred_mask | gt_mask).sum())
    if union == 0:
        return {"iou": 1.0, "f1": 1.0}
    total = int(pred_mask.sum()) + int(gt_mask.sum())
    return {"iou": intersection / union, "f1": 2 * intersection / total}
