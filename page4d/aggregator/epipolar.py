"""Epipolar attention prior for view blocks: penalise keys far from the query's epipolar line.

For tokens ``[B, T, V, P, C]`` grouped as view sequences ``[(B·T), (V·P)]``, a query patch of view a and a
key patch of view c ≠ a (same time step) get ``-penalty`` added to their logit when the key's patch centre
lies more than ``band_px`` pixels from the epipolar line of the query's patch centre in view c. Cameras
follow ``page4d.conventions``: OpenCV axes, ``extrinsic`` world-to-camera ``[R | t]``, ``intrinsic`` pixel K
at the resolution of the model input, integer pixel coordinates at pixel centres.
"""

from __future__ import annotations

import copy

import torch
from einops import rearrange

from page4d.config import EpipolarConfig
from page4d.geometry import closed_form_inverse_se3

_BASELINE_RTOL = 1e-6
"""Camera centres closer than this fraction of their distance to the world origin count as coinciding."""
_LINE_RTOL = 1e-10
"""A line ``F x`` whose 2-D normal is below this fraction of ``|x|`` (with ``|F| = 1``) is degenerate."""
_ROTATION_ATOL = 1e-3


def _check_cameras(intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``intrinsics [B, T, V, 3, 3]`` and ``extrinsics [B, T, V, 3, 4]`` are usable."""
    if intrinsics.dim() != 5 or intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [B, T, V, 3, 3], got shape {tuple(intrinsics.shape)}")
    if extrinsics.shape != intrinsics.shape[:3] + (3, 4):
        raise ValueError(
            f"extrinsics must be [B, T, V, 3, 4] = {tuple(intrinsics.shape[:3]) + (3, 4)} to match the intrinsics, "
            f"got shape {tuple(extrinsics.shape)}"
        )
    if not (torch.isfinite(intrinsics).all() and torch.isfinite(extrinsics).all()):
        raise ValueError("camera intrinsics and extrinsics must be finite")
    if (torch.linalg.det(intrinsics.double()).abs() == 0).any():
        raise ValueError("every intrinsic matrix must be invertible")
    rot = extrinsics[..., :3].double()
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    if ((rot @ rot.mT - eye).abs() > _ROTATION_ATOL).any():
        raise ValueError("the 3×3 part of every extrinsic must be a rotation (orthonormal)")


def _skew(vec: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices ``[..., 3, 3]`` of vectors ``[..., 3]``: ``skew(a) @ b = a × b``."""
    x, y, z = vec.unbind(-1)
    zero = torch.zeros_like(x)
    return rearrange(torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1), "... (i j) -> ... i j", i=3)


def fundamental_matrices(intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """Fundamental matrices between every ordered pair of views at each (b, t): ``[B, T, V, V, 3, 3]``.

    ``F[b, t, a, c]`` maps a homogeneous pixel ``x_a`` of view a to its epipolar line ``l = F x_a`` in view c,
    so ``x_c · l = 0`` for the true correspondence ``x_c``. With the pose of c relative to a,
    ``R = R_c R_aᵀ``, ``t = t_c - R t_a``: ``F = K_c⁻ᵀ [t̂]× R K_a⁻¹``. Computed in float64, scaled to unit
    Frobenius norm (so it does not depend on the world scale), returned in the intrinsics' dtype. ``F`` is
    zero on the diagonal (a == c) and where the two camera centres coincide (pure rotation: no epipolar
    geometry).

    Args:
        intrinsics: pixel K ``[B, T, V, 3, 3]``.
        extrinsics: world-to-camera ``[R | t]`` ``[B, T, V, 3, 4]``.
    """
    _check_cameras(intrinsics, extrinsics)
    k_inv = torch.linalg.inv(intrinsics.double())
    ext = extrinsics.double()
    to_world = closed_form_inverse_se3(ext)
    rot_c, trans_c = ext[:, :, None, :, :, :3], ext[:, :, None, :, :, 3]
    rot = rot_c @ to_world[:, :, :, None, :, :3]
    trans = (rot_c @ to_world[:, :, :, None, :, 3:])[..., 0] + trans_c
    baseline = trans.norm(dim=-1)
    scale = torch.maximum(ext[:, :, :, None, :, 3].norm(dim=-1), trans_c.norm(dim=-1))
    num_views = ext.shape[2]
    degenerate = (baseline <= _BASELINE_RTOL * scale) | torch.eye(num_views, dtype=torch.bool, device=ext.device)
    direction = trans / torch.where(degenerate, 1.0, baseline)[..., None]
    fundamental = k_inv[:, :, None].mT @ _skew(direction) @ rot @ k_inv[:, :, :, None]
    norm = fundamental.flatten(-2).norm(dim=-1)
    fundamental = fundamental / torch.where(degenerate, 1.0, norm)[..., None, None]
    fundamental = fundamental.masked_fill(degenerate[..., None, None], 0.0)
    return fundamental.to(intrinsics.dtype)


def patch_centres(h: int, w: int, patch_size: int) -> torch.Tensor:
    """Pixel coordinates ``(u, v)`` = (column, row) of the patch centres, ``[h·w, 2]`` float64, row-major.

    Integer pixel coordinates are pixel centres, so patch (y, x), covering pixels ``x·s .. x·s + s - 1``,
    is centred at ``((x + 0.5)·s - 0.5, (y + 0.5)·s - 0.5)`` for patch size ``s``.
    """
    rows = (torch.arange(h, dtype=torch.float64) + 0.5) * patch_size - 0.5
    cols = (torch.arange(w, dtype=torch.float64) + 0.5) * patch_size - 0.5
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([grid_cols.flatten(), grid_rows.flatten()], dim=-1)


class EpipolarBias:
    """Epipolar logit bias for view sequences ``[(B·T), (V·P)]``, a ``ChunkedBias`` for ``attend``.

    Query row i (view a, token p) and key j (view c, token q) get ``-cfg.penalty`` when a ≠ c, both are
    patch tokens and the key's patch centre is more than ``cfg.band_px`` pixels from the query's epipolar
    line ``l = F x`` in view c (distance ``|l · x_q| / sqrt(l0² + l1²)``); 0 otherwise (same view, camera and
    register tokens, keys inside the band). Degenerate lines get no penalty: coinciding camera centres
    (``F = 0``), a query at the epipole and a line at infinity (vanishing 2-D normal).

    Only the fundamental matrices ``[(B·T), V, V, 3, 3]`` and patch centres ``[h·w, 2]`` are stored; each
    ``block`` builds its ``[B·T, 1, rows, V·P]`` bias from them in ``O(rows · V·P)`` memory.
    """

    def __init__(
        self,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        grid: tuple[int, int],
        patch_size: int,
        num_special: int,
        cfg: EpipolarConfig,
        tokens_shape: tuple[int, ...] | None = None,
    ):
        """Args:
        intrinsics: pixel K ``[B, T, V, 3, 3]`` at the model-input resolution (``H = h·patch_size``).
        extrinsics: world-to-camera ``[R | t]`` ``[B, T, V, 3, 4]``.
        grid: patch grid ``(h, w)``; tokens per frame ``P = num_special + h·w``.
        tokens_shape: optional shape of the token grid ``[B, T, V, P, ...]`` the cameras must match.
        """
        h, w = grid
        if min(h, w, patch_size) < 1 or num_special < 0:
            raise ValueError(f"need a non-empty grid, patch_size >= 1 and num_special >= 0, got {grid}, "
                             f"{patch_size}, {num_special}")
        fundamental = fundamental_matrices(intrinsics.double(), extrinsics.double())
        b, t, v = intrinsics.shape[:3]
        if tokens_shape is not None and tuple(tokens_shape[:4]) != (b, t, v, num_special + h * w):
            raise ValueError(
                f"cameras for [B, T, V] = {(b, t, v)} and P = {num_special} + {h}·{w} do not match the token grid "
                f"{tuple(tokens_shape)}"
            )
        self._times = t
        self.chunk_size = cfg.chunk_size
        self.band_px = cfg.band_px
        self.penalty = cfg.penalty
        self.num_special = num_special
        self.tokens_per_frame = num_special + h * w
        self.length = v * self.tokens_per_frame
        self.first_row = 0
        """Query row ``i`` of ``block`` is row ``first_row + i`` of the view sequences (``queries``)."""
        self.fundamental = rearrange(fundamental, "b t a c i j -> (b t) a c i j")
        """``[(B·T), V, V, 3, 3]`` float64, unit Frobenius norm or zero."""
        self.centres = patch_centres(h, w, patch_size).to(intrinsics.device)
        """``[h·w, 2]`` float64 pixel (u, v) of the patch centres."""

    def queries(self, batch: range, times: range, views: range) -> EpipolarBias:
        """The bias of the queries of ``views`` at ``times`` of the ``batch`` elements (keys: every view of those
        times), for a process that holds only those frames (``page4d.aggregator.grid``); the whole bias when every
        range is whole."""
        b, t, num_views = self.fundamental.shape[0] // self._times, self._times, self.fundamental.shape[1]
        if (batch, times, views) == (range(b), range(t), range(num_views)):
            return self
        part = copy.copy(self)
        part.fundamental = rearrange(
            rearrange(self.fundamental, "(b t) a c i j -> b t a c i j", b=b)[
                batch.start:batch.stop, times.start:times.stop
            ],
            "b t a c i j -> (b t) a c i j",
        )
        part._times = len(times)
        part.first_row = self.first_row + views.start * self.tokens_per_frame
        part.length = len(views) * self.tokens_per_frame
        return part

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Bias for query rows ``start:stop`` of the view sequences: ``[B·T, 1, stop - start, V·P]`` float32."""
        if not 0 <= start < stop <= self.length:
            raise ValueError(f"query rows {start}:{stop} are outside 0:{self.length}")
        rows = torch.arange(self.first_row + start, self.first_row + stop, device=self.centres.device)
        view = rows // self.tokens_per_frame
        patch = rows % self.tokens_per_frame - self.num_special
        query = torch.cat([self.centres[patch.clamp(min=0)], self.centres.new_ones(stop - start, 1)], dim=-1)
        lines = torch.einsum("nqcij,qj->nqci", self.fundamental[:, view], query)
        normal = lines[..., :2].norm(dim=-1, keepdim=True)
        keep = (normal > _LINE_RTOL * query.norm(dim=-1)[:, None, None]) & (patch >= 0)[:, None, None]
        # a zero line (special query, degenerate line, or same view since F's diagonal is 0) puts every key at
        # distance 0, inside any band: no penalty
        lines = torch.where(keep, lines / normal.clamp_min(torch.finfo(normal.dtype).tiny), 0.0).float()
        keys = torch.cat([self.centres, self.centres.new_ones(len(self.centres), 1)], dim=-1).float()
        distance = torch.einsum("nqci,ki->nqck", lines, keys).abs()
        bias = distance.new_zeros(*distance.shape[:3], self.tokens_per_frame)
        bias[..., self.num_special :].masked_fill_(distance > self.band_px, -self.penalty)
        return rearrange(bias, "n q v p -> n 1 q (v p)")
