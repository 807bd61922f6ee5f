"""Camera geometry of a rig: robust rotation averaging, a Sim(3) fitted to known cameras, and frames re-expressed
on given cameras.

Re-expressing frame (t, v) on a camera ``E = [R_c | t_c]`` keeps what the model saw from that camera and moves it:
its camera-frame geometry is scaled by ``s`` and placed at ``E``, so ``X' = R_cᵀ·(s·(R_p·X + t_p) − t_c)`` for
its world points, depth becomes ``s·depth`` and its extrinsic ``E``. Depth, points and camera then agree exactly
as they did before, in the world and units of ``E``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROBUST_SCALE = 2.0
"""Residuals beyond this many robust standard deviations weigh less (Cauchy weights) in the fits below."""


def project_to_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation ``[3, 3]`` nearest to ``matrix`` in the Frobenius norm (SVD, determinant forced to +1)."""
    u, _, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def rotation_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of ``a·bᵀ`` for rotations ``[..., 3, 3]``, from ``‖a − b‖_F = 2√2·sin(θ/2)``: exact down to
    small angles, where the arccos of the trace loses them (float32 rotations 0.02° apart read as equal)."""
    distance = np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), axis=(-2, -1))
    return np.degrees(2 * np.arcsin(np.clip(distance / (2 * np.sqrt(2)), 0.0, 1.0)))


def _cauchy(residuals: np.ndarray) -> np.ndarray:
    sigma = 1.4826 * np.median(residuals) + 1e-12
    return 1.0 / (1.0 + (residuals / (ROBUST_SCALE * sigma)) ** 2)


def rotation_mean(rotations: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Robust chordal mean ``[3, 3]`` of rotations ``[N, 3, 3]``: the projected weighted sum, re-weighted by each
    rotation's angle from the mean, so a few wrong ones barely move it."""
    weights = np.ones(len(rotations))
    mean = project_to_rotation(rotations.sum(0))
    for _ in range(iterations):
        weights = _cauchy(rotation_angles_deg(rotations, mean[None]))
        mean = project_to_rotation(np.einsum("n,nij->ij", weights, rotations))
    return mean


def centres(extrinsic: np.ndarray) -> np.ndarray:
    """Camera centres ``[..., 3]`` of world-to-camera ``[..., 3, 4]``: ``−Rᵀ·t``."""
    return -np.einsum("...ji,...j->...i", extrinsic[..., :3], extrinsic[..., 3])


def pose(rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """World-to-camera ``[3, 4]`` of a camera with this ``rotation`` (world to camera) and ``centre``."""
    return np.concatenate([rotation, -(rotation @ centre)[:, None]], axis=1)


def rig_poses(extrinsic: np.ndarray) -> np.ndarray:
    """One pose per camera ``[V, 3, 4]`` from per-step poses ``[T, V, 3, 4]``: the robust rotation mean and the
    coordinate-wise median centre over the time steps."""
    ext = extrinsic.astype(np.float64)
    middle = np.median(centres(ext), axis=0)
    return np.stack([pose(rotation_mean(ext[:, v, :, :3]), middle[v]) for v in range(ext.shape[1])])


@dataclass(frozen=True)
class Spread:
    """How far per-step poses ``[T, V]`` stray from one pose per camera (what a static rig would have)."""

    rotation_deg: np.ndarray
    """``[V]`` largest angle of a step's camera from the camera's mean rotation."""
    centre: np.ndarray
    """``[V]`` largest distance of a step's centre from the camera's median centre, in scene units."""


def spread(extrinsic: np.ndarray) -> Spread:
    """The :class:`Spread` of per-step poses ``[T, V, 3, 4]`` around :func:`rig_poses`."""
    ext = extrinsic.astype(np.float64)
    rig = rig_poses(ext)
    angles = rotation_angles_deg(ext[..., :3], rig[None, :, :, :3])
    distances = np.linalg.norm(centres(ext) - centres(rig)[None], axis=-1)
    return Spread(rotation_deg=angles.max(0), centre=distances.max(0))


def steps_aligned(extrinsic: np.ndarray) -> np.ndarray:
    """Per-step poses ``[T, V, 3, 4]`` predicted step by step, each step in its own frame and scale, moved by one
    similarity per step (:func:`fit_cameras`) onto the first step's rig, then onto the rig averaged over the steps:
    what stays is how the cameras move relative to one another."""
    ext = extrinsic.astype(np.float64)
    target = ext[0]
    for _ in range(2):
        ext = np.stack([moved(step, fit_cameras(step, target)) for step in ext])
        target = rig_poses(ext)
    return ext


@dataclass(frozen=True)
class Similarity:
    """``X_target = s·R·X + t`` taking predicted world points into the known cameras' world."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    scale_known: bool
    """False when the cameras' centres are too close together to give a scale (one camera, or all at one place):
    then ``scale`` is 1."""


def fit_cameras(predicted: np.ndarray, known: np.ndarray, iterations: int = 10) -> Similarity:
    """The similarity that best maps the ``predicted`` cameras ``[N, 3, 4]`` onto the ``known`` ones of the same
    frames: rotation from the robust mean of ``R_knownᵀ·R_pred``, then scale and translation from the centres by
    re-weighted least squares (a camera far off weighs little)."""
    pred, known = predicted.astype(np.float64), known.astype(np.float64)
    rotation = rotation_mean(np.einsum("nji,njk->nik", known[:, :, :3], pred[:, :, :3]))
    src, dst = centres(pred) @ rotation.T, centres(known)
    weights = np.ones(len(src))
    scale, scale_known = 1.0, True
    for _ in range(iterations):
        w = weights / weights.sum()
        src_mean, dst_mean = w @ src, w @ dst
        spread_src = w @ np.sum((src - src_mean) ** 2, axis=1)
        spread_dst = w @ np.sum((dst - dst_mean) ** 2, axis=1)
        scale_known = bool(spread_src > 1e-12 * (1 + spread_dst) and spread_dst > 0)
        scale = float(w @ np.sum((src - src_mean) * (dst - dst_mean), axis=1) / spread_src) if scale_known else 1.0
        if scale <= 0:  # the predicted rig is mirrored or collapsed: no positive scale fits, keep the units
            scale, scale_known = 1.0, False
        translation = dst_mean - scale * src_mean
        weights = _cauchy(np.linalg.norm(dst - (scale * src + translation), axis=1))
    return Similarity(scale, rotation, translation, scale_known)


def moved(cameras: np.ndarray, fit: Similarity) -> np.ndarray:
    """World-to-camera ``[N, 3, 4]`` of ``cameras`` ``[N, 3, 4]`` once their world is moved by ``fit``: rotation
    ``R_c·Rᵀ``, centre ``s·R·C + t``."""
    cams = cameras.astype(np.float64)
    rotation = cams[:, :, :3] @ fit.rotation.T
    centre = fit.scale * centres(cams) @ fit.rotation.T + fit.translation
    return np.concatenate([rotation, -(rotation @ centre[..., None])], axis=2)


def camera_errors(predicted: np.ndarray, known: np.ndarray, fit: Similarity) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, how far a predicted camera ``[N, 3, 4]`` moved by ``fit`` is from the known one: rotation in
    degrees ``[N]`` and centre distance in the known cameras' units ``[N]``."""
    placed, known = moved(predicted, fit), known.astype(np.float64)
    angles = rotation_angles_deg(placed[:, :, :3], known[:, :, :3])
    return angles, np.linalg.norm(centres(placed) - centres(known), axis=1)


def re_express(arrays: dict[str, np.ndarray], cameras: np.ndarray, scale: float | np.ndarray) -> None:
    """Place every frame of one window on ``cameras`` ``[T', V, 3, 4]`` (module docstring), in place:
    ``extrinsic [T', V, 3, 4]``, ``depth [T', V, H, W]``, ``world_points [T', V, H, W, 3]``; points one time step
    at a time in float64. ``scale``: one for all frames, or one per view ``[V]``."""
    pred = arrays["extrinsic"].astype(np.float64)
    target = cameras.astype(np.float64)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), pred.shape[1:2])[None, :]  # [1, V]
    # X' = M·X + b per frame, M = s·R_cᵀ·R_p, b = R_cᵀ·(s·t_p − t_c)
    mix = scale[..., None, None] * np.einsum("tvji,tvjk->tvik", target[..., :3], pred[..., :3])
    shift = np.einsum("tvji,tvj->tvi", target[..., :3], scale[..., None] * pred[..., 3] - target[..., 3])
    points = arrays["world_points"]
    for t in range(len(points)):
        moved = np.einsum("vij,vhwj->vhwi", mix[t], points[t].astype(np.float64)) + shift[t][:, None, None]
        points[t] = moved
    arrays["depth"] *= scale.astype(np.float32)[..., None, None]
    arrays["extrinsic"] = target.astype(np.float32)
