"""Training losses as pure functions: each takes predictions and targets and returns named scalar terms.

* :func:`camera_loss`: VGGT's camera term, L1 on the pose encoding (translation clamped, quaternion, FoV) of
  every camera-head iteration, later iterations weighted more (``gamma ** (n - 1 - k)``), averaged.
* :func:`dense_loss`: VGGT's depth / point term for one dense head: the Euclidean error ``e`` per valid pixel,
  its confidence-weighted form ``gamma·e·c − alpha·log c``, each averaged below its ``quantile`` (outliers
  dropped), and a multi-scale gradient-matching term.
* :func:`mask_loss`: dynamic-mask BCE and soft Dice against a target where **1 = moving** (the convention of
  ``Predictions.dynamic_mask``; the prototype's scripts supervised PAGE-4D's "keep" logit with this target,
  i.e. with the wrong polarity).
* :func:`weighted_sum`: the total from named weights, every weight naming an existing term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

Terms = dict[str, torch.Tensor]


def _valid_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values [..., K]`` over the positions where ``valid [...]`` holds (all by default) and the K entries."""
    if valid is not None:
        values = values[valid]
    return values.mean() if values.numel() else values.sum()


def camera_loss(
    pose_enc_list: Sequence[torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    gamma: float = 0.6,
    weight_fov: float = 0.5,
    max_translation: float = 100.0,
) -> Terms:
    """Pose-encoding L1 over camera-head iterations.

    The rotation term is sign-invariant: q and -q are one rotation, and the targets' quaternions are standardised
    to w ≥ 0, so a camera turned just past 180° from the reference has a target whose xyz part flips sign against
    one just short of it. Each frame's rotation error is ``min(|q̂ - q|, |q̂ + q|)`` (L1 over the 4 components,
    averaged like the other parts), which equals plain L1 wherever q̂ is the nearer of the two; wide rigs, with
    cameras facing each other across the scene, have many targets near 180°.

    Args:
        pose_enc_list: one ``[B, T, V, 9]`` per iteration (``Predictions.pose_enc_list``).
        target: ``[B, T, V, 9]`` ground-truth encoding (``extri_intri_to_pose_encoding``).
        valid: optional ``[B, T, V]`` bool, frames to supervise.

    Returns ``camera_T``, ``camera_R``, ``camera_FoV`` and ``camera = T + R + weight_fov·FoV``, each the
    iteration average of ``gamma ** (n - 1 - k)`` times that iteration's value.
    """
    count = len(pose_enc_list)
    parts = {"camera_T": slice(0, 3), "camera_R": slice(3, 7), "camera_FoV": slice(7, 9)}
    terms = {name: target.new_zeros(()) for name in parts}
    for k, pred in enumerate(pose_enc_list):
        weight = gamma ** (count - 1 - k) / count
        error = (pred - target).abs()
        rotation = torch.minimum(error[..., 3:7].sum(-1), (pred[..., 3:7] + target[..., 3:7]).abs().sum(-1))
        values = {"camera_T": error[..., 0:3].clamp(max=max_translation), "camera_R": rotation[..., None] / 4,
                  "camera_FoV": error[..., 7:9]}
        for name in parts:
            terms[name] = terms[name] + weight * _valid_mean(values[name], valid)
    terms["camera"] = terms["camera_T"] + terms["camera_R"] + weight_fov * terms["camera_FoV"]
    return terms


def _below_quantile(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """Mean of the ``values [N]`` at or below their ``quantile`` (all of them for ``quantile`` 1)."""
    if values.numel() == 0:
        return values.sum()
    if quantile >= 1:
        return values.mean()
    return values[values <= torch.quantile(values.detach().float(), quantile).to(values.dtype)].mean()


def gradient_loss(error: torch.Tensor, valid: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Multi-scale gradient matching: mean |∂x e| + |∂y e| of the error map ``error [N, H, W, C]`` over pairs of
    valid neighbours ``valid [N, H, W]``, at strides 1, 2, 4, ..., averaged over the scales."""
    total = error.new_zeros(())
    for scale in range(scales):
        step = 2**scale
        e, ok = error[:, ::step, ::step], valid[:, ::step, ::step]
        for axis in (1, 2):
            size = e.shape[axis] - 1
            diff = (e.narrow(axis, 1, size) - e.narrow(axis, 0, size)).abs().sum(-1)
            pair = ok.narrow(axis, 1, size) & ok.narrow(axis, 0, size)
            total = total + _valid_mean(diff, pair)
    return total / scales


def dense_loss(
    pred: torch.Tensor,
    conf: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    name: str,
    gamma: float,
    alpha: float,
    quantile: float = 0.98,
) -> Terms:
    """One dense head's terms, named ``{name}_conf``, ``{name}_reg`` and ``{name}_grad``.

    Args:
        pred: ``[N, H, W, C]`` (depth: C = 1; points: C = 3); ``conf`` ``[N, H, W]`` (> 0);
        target: like ``pred``; valid: ``[N, H, W]`` bool, pixels with ground truth.
        gamma, alpha: the confidence term's weights (VGGT: depth 0.3 / 0.06, points 1.0 / 0.2).
    """
    error = (pred - target).norm(dim=-1)
    confident = gamma * error * conf - alpha * torch.log(conf)
    return {
        f"{name}_conf": _below_quantile(confident[valid], quantile),
        f"{name}_reg": _below_quantile(error[valid], quantile),
        f"{name}_grad": gradient_loss(pred - target, valid),
    }


def mask_loss(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-6) -> Terms:
    """``mask_bce`` and ``mask_dice`` of a moving-probability map ``prob`` against ``target`` (1 = moving), both
    ``[...]``, over ``valid`` pixels (all by default)."""
    target = target.to(prob.dtype)
    if valid is not None:
        prob, target = prob[valid], target[valid]
    prob = prob.clamp(eps, 1 - eps)
    bce = F.binary_cross_entropy(prob, target) if prob.numel() else prob.sum()
    dice = 1 - (2 * (prob * target).sum() + eps) / (prob.sum() + target.sum() + eps)
    return {"mask_bce": bce, "mask_dice": dice}


def weighted_sum(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``Σ weights[k] · terms[k]``; a weight for a term that does not exist is an error (a misspelt weight would
    otherwise silently train nothing)."""
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"loss weights for unknown terms {unknown}; the terms are {sorted(terms)}")
    return sum((w * terms[k] for k, w in weights.items() if w), start=next(iter(terms.values())).new_zeros(()))
