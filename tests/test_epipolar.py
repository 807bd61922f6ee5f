"""Epipolar prior: geometry, brute-force equality of the bias, sign and band, chunking, memory, bad inputs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import fused_and_dense, perturbed, twin
from torch.utils._python_dispatch import TorchDispatchMode

from page4d.aggregator.epipolar import EpipolarBias, fundamental_matrices, patch_centres
from page4d.config import EpipolarConfig
from page4d.geometry import closed_form_inverse_se3, project_points
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.nn.attention import AttentionExtras, attend
from page4d.presets import preset

H, W, PATCH, SPECIAL = 3, 4, 14, 5
P = SPECIAL + H * W


def _look_at(centre: list[float], target: list[float]) -> torch.Tensor:
    """World-to-camera ``[3, 4]`` (OpenCV axes, image y roughly along world +y) of a camera at ``centre``."""
    c, tgt = torch.tensor(centre, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    z = (tgt - c) / (tgt - c).norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), z)
    x = x / x.norm()
    rot = torch.stack([x, torch.linalg.cross(z, x), z])
    return torch.cat([rot, -(rot @ c)[:, None]], dim=-1)


def _intrinsic(f: float = 40.0, cx: float = 27.5, cy: float = 20.5) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, f * 1.1, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _rig() -> tuple[torch.Tensor, torch.Tensor]:
    """Three float64 cameras around the origin at two time steps: K ``[1, 2, 3, 3, 3]``, [R | t] ``[1, 2, 3, 3, 4]``."""
    centres = [
        [[-1.0, 0.0, -3.0], [1.2, 0.3, -2.8], [0.2, -0.9, -3.3]],
        [[-0.4, 0.5, -3.1], [1.5, -0.2, -2.5], [-1.3, -0.6, -2.9]],
    ]
    ext = torch.stack([torch.stack([_look_at(c, [0.1, 0.0, 0.2]) for c in step]) for step in centres])[None]
    intr = torch.stack([_intrinsic(40.0), _intrinsic(36.0, 26.0, 22.0), _intrinsic(44.0, 29.0, 19.0)])
    return intr.expand(1, 2, 3, 3, 3).clone(), ext


def _brute_force(intr: torch.Tensor, ext: torch.Tensor, band: float, penalty: float) -> tuple[torch.Tensor, float]:
    """The bias ``[B·T, 1, V·P, V·P]`` pair by pair, each line through the epipole and the image of a second
    point on the query ray; also the smallest ``|distance - band|`` seen (how close a call was)."""
    b, t, v = intr.shape[:3]
    intr, ext = intr.reshape(b * t, v, 3, 3), ext.reshape(b * t, v, 3, 4)
    to_world = closed_form_inverse_se3(ext)
    out = torch.zeros(b * t, 1, v * P, v * P, dtype=torch.float64)
    margin = math.inf
    for n in range(b * t):
        for i in range(v * P):
            view_a, p = divmod(i, P)
            if p < SPECIAL:
                continue
            y, x = divmod(p - SPECIAL, W)
            pixel = torch.tensor([(x + 0.5) * PATCH - 0.5, (y + 0.5) * PATCH - 0.5, 1.0], dtype=torch.float64)
            ray = to_world[n, view_a, :, :3] @ torch.linalg.solve(intr[n, view_a], pixel)
            centre_a = to_world[n, view_a, :, 3]
            for view_c in range(v):
                if view_c == view_a:
                    continue
                proj = intr[n, view_c] @ ext[n, view_c]
                epipole = proj @ torch.cat([centre_a, torch.ones(1, dtype=torch.float64)])
                other = proj @ torch.cat([centre_a + 2.0 * ray, torch.ones(1, dtype=torch.float64)])
                l0, l1, l2 = torch.linalg.cross(epipole, other).tolist()
                for q in range(SPECIAL, P):
                    ky, kx = divmod(q - SPECIAL, W)
                    u, w = (kx + 0.5) * PATCH - 0.5, (ky + 0.5) * PATCH - 0.5
                    dist = abs(l0 * u + l1 * w + l2) / math.hypot(l0, l1)
                    margin = min(margin, abs(dist - band))
                    if dist > band:
                        out[n, 0, i, view_c * P + q] = -penalty
    return out, margin


def test_patch_centres_are_pixel_centres():
    centres = patch_centres(2, 3, 14)
    assert centres.shape == (6, 2)
    assert centres[0].tolist() == [6.5, 6.5]
    assert centres[1 * 3 + 2].tolist() == [2.5 * 14 - 0.5, 1.5 * 14 - 0.5]


def test_true_correspondences_lie_on_their_epipolar_lines():
    intr, ext = _rig()
    fund = fundamental_matrices(intr, ext)
    assert fund.shape == (1, 2, 3, 3, 3, 3)
    points = torch.rand(20, 3, dtype=torch.float64) - 0.5
    pixels, depth = project_points(points, ext, intr)
    assert (depth > 0).all()
    homog = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    for step in range(2):
        for a in range(3):
            assert fund[0, step, a, a].abs().max() == 0
            for c in set(range(3)) - {a}:
                lines = homog[0, step, a] @ fund[0, step, a, c].mT
                dist = (lines * homog[0, step, c]).sum(-1).abs() / lines[:, :2].norm(dim=-1)
                assert dist.max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("band", "penalty"), [(3.0, 4.0), (8.0, 2.5)])
def test_block_equals_brute_force(band, penalty, dtype):
    intr, ext = _rig()
    cfg = EpipolarConfig(band_px=band, penalty=penalty)
    bias = EpipolarBias(intr.to(dtype), ext.to(dtype), (H, W), PATCH, SPECIAL, cfg)
    expected, margin = _brute_force(intr, ext, band, penalty)
    assert margin > 1e-3, "a distance lies on the band edge: the comparison would test rounding"
    got = bias.block(0, 3 * P)
    assert got.dtype == torch.float32 and got.shape == (2, 1, 3 * P, 3 * P)
    assert torch.equal(got.double(), expected)
    assert 0 < (expected != 0).sum() < 0.5 * 2 * (3 * P) ** 2


def _rectified_pair(baseline: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Two cameras with identical K and R = I, the second ``baseline`` to the right: lines are image rows."""
    intr = _intrinsic(42.0, 27.5, 20.5)
    intr[1, 1] = 42.0
    ext = torch.zeros(2, 3, 4, dtype=torch.float64)
    ext[:, :, :3] = torch.eye(3, dtype=torch.float64)
    ext[1, 0, 3] = -baseline
    return intr.expand(1, 1, 2, 3, 3).clone(), ext[None, None]


def test_sign_and_band_on_a_rectified_pair():
    intr, ext = _rectified_pair()
    cfg = EpipolarConfig(band_px=7.0, penalty=3.0)
    bias = EpipolarBias(intr, ext, (H, W), PATCH, SPECIAL, cfg).block(0, 2 * P)[0, 0]
    # query patch (y=1, x=3) at depth 1.5 shifts by f·baseline/z = 14 px: the true match is patch (1, 2)
    query = SPECIAL + 1 * W + 3
    point = torch.tensor([[(3.5 * PATCH - 0.5 - 27.5) * 1.5 / 42.0, (1.5 * PATCH - 0.5 - 20.5) * 1.5 / 42.0, 1.5]])
    pixel, _ = project_points(point.double(), ext[0, 0, 1], intr[0, 0, 1])
    assert pixel[0].tolist() == pytest.approx([2.5 * PATCH - 0.5, 1.5 * PATCH - 0.5])
    assert bias[query, P + SPECIAL + 1 * W + 2] == 0
    assert bias[query, P + SPECIAL + 0 * W + 2] == -3.0
    rows = torch.arange(H).repeat_interleave(W)
    for q in range(H * W):
        for k in range(H * W):
            expected = 0.0 if rows[q] == rows[k] else -3.0
            assert bias[SPECIAL + q, P + SPECIAL + k] == expected
            assert bias[P + SPECIAL + q, SPECIAL + k] == expected
    assert (bias[:P, :P] == 0).all() and (bias[P:, P:] == 0).all()
    assert (bias[:, [0, 1, 4, P, P + 4]] == 0).all() and (bias[[2, 3, P + 1], :] == 0).all()


def test_chunks_concatenate_and_attend_paths_agree():
    intr, ext = _rig()
    cfg = EpipolarConfig(band_px=4.0, chunk_size=7)
    bias = EpipolarBias(intr, ext, (H, W), PATCH, SPECIAL, cfg)
    full = bias.block(0, 3 * P)
    for step in (1, 5, 17, 50):
        parts = [bias.block(s, min(s + step, 3 * P)) for s in range(0, 3 * P, step)]
        assert torch.equal(torch.cat(parts, dim=2), full)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 3 * P, 8, dtype=torch.float64).unbind(0)
    fused = attend(q, k, v, AttentionExtras(chunked_bias=bias))
    dense = attend(q, k, v, AttentionExtras(chunked_bias=bias), backend="dense")
    assert torch.allclose(fused, dense, atol=1e-12, rtol=0)
    assert not torch.allclose(fused, attend(q, k, v), atol=1e-3)


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_memory_is_bounded_by_the_requested_block():
    intr, ext = _rig()
    bias = EpipolarBias(intr, ext, (H, W), PATCH, SPECIAL, EpipolarConfig())
    stored = sum(x.numel() for x in vars(bias).values() if isinstance(x, torch.Tensor))
    assert stored == 2 * 3 * 3 * 9 + H * W * 2
    with _LargestOutput() as recorder:
        block = bias.block(10, 14)
    assert block.shape == (2, 1, 4, 3 * P)
    assert recorder.largest <= 2 * 4 * 3 * P < (3 * P) ** 2


@pytest.mark.parametrize("scale", [0.01, 3.7])
def test_world_scale_leaves_the_prior_unchanged(scale):
    intr, ext = _rig()
    scaled = ext.clone()
    scaled[..., 3] *= scale
    assert torch.allclose(fundamental_matrices(intr, scaled), fundamental_matrices(intr, ext), atol=1e-12)
    cfg = EpipolarConfig(band_px=5.0)
    make = lambda e: EpipolarBias(intr, e, (H, W), PATCH, SPECIAL, cfg).block(0, 3 * P)  # noqa: E731
    assert torch.equal(make(scaled), make(ext))


def test_degenerate_lines_get_no_penalty():
    intr, ext = _rectified_pair()
    ext[0, 0, 1, :, :3] = torch.tensor([[0.8, 0.0, 0.6], [0.0, 1.0, 0.0], [-0.6, 0.0, 0.8]], dtype=torch.float64)
    ext[0, 0, 1, :, 3] = 0.0
    assert fundamental_matrices(intr, ext).abs().max() == 0
    assert (EpipolarBias(intr, ext, (H, W), PATCH, SPECIAL, EpipolarConfig(band_px=0.0)).block(0, 2 * P) == 0).all()

    # forward motion with the principal point at patch (1, 1): that patch is the epipole of view 0
    intr, ext = _rectified_pair()
    intr[..., 0, 2] = intr[..., 1, 2] = 1.5 * PATCH - 0.5
    ext[0, 0, 1, :, 3] = torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64)
    bias = EpipolarBias(intr, ext, (H, W), PATCH, SPECIAL, EpipolarConfig(band_px=1.0)).block(0, 2 * P)[0, 0]
    assert (bias[SPECIAL + 1 * W + 1] == 0).all()
    assert (bias[SPECIAL + 2 * W + 3] != 0).any()


@pytest.mark.parametrize(
    "fields", [{"band_px": -1.0}, {"penalty": float("inf")}, {"penalty": float("nan")}, {"chunk_size": 0},
               {"view_blocks": (4,)}],
)
def test_bad_epipolar_settings_are_refused_once_by_the_config(fields):
    """The config refuses them when the model config is built (the bias module does not check them again)."""
    cfg = preset("tiny")
    with pytest.raises(ValueError, match=r"epipolar needs band_px >= 0|epipolar.view_blocks \(4,\) outside 0..3"):
        dataclasses.replace(cfg, aggregator=dataclasses.replace(cfg.aggregator, epipolar=EpipolarConfig(**fields)))


def test_bad_inputs_raise():
    intr, ext = _rig()
    cfg = EpipolarConfig()
    make = lambda i, e, **kw: EpipolarBias(i, e, (H, W), PATCH, SPECIAL, kw.pop("cfg", cfg), **kw)  # noqa: E731
    with pytest.raises(ValueError, match="intrinsics"):
        make(intr[0], ext)
    with pytest.raises(ValueError, match="extrinsics"):
        make(intr, ext[:, :, :2])
    with pytest.raises(ValueError, match="extrinsics"):
        fundamental_matrices(intr, ext[..., :3])
    bad = ext.clone()
    bad[0, 1, 2, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        make(intr, bad)
    singular = intr.clone()
    singular[0, 0, 1] = 0.0
    with pytest.raises(ValueError, match="invertible"):
        make(singular, ext)
    sheared = ext.clone()
    sheared[0, 0, 0, 0, 1] += 0.1
    with pytest.raises(ValueError, match="rotation"):
        make(intr, sheared)
    with pytest.raises(ValueError, match="token grid"):
        make(intr, ext, tokens_shape=(1, 2, 3, P + 1, 8))
    make(intr, ext, tokens_shape=(1, 2, 3, P, 8))
    with pytest.raises(ValueError, match="outside"):
        make(intr, ext).block(0, 3 * P + 1)


# --- the prior inside the model ---------------------------------------------------------------------


def _epipolar_model(penalty: float = 6.0) -> Page4D:
    cfg = preset("tiny")
    cfg.aggregator = dataclasses.replace(
        cfg.aggregator, epipolar=EpipolarConfig(view_blocks=(1, 2, 3), band_px=10.0, penalty=penalty, chunk_size=16)
    )
    return perturbed(cfg)


def _circle_rig(t: int, v: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """V cameras on a circle looking at the origin, the same at every time step: [1, T, V, 3, 3], [1, T, V, 3, 4]."""
    ks, es = [], []
    for i in range(v):
        angle = 2 * math.pi * i / v * 0.3
        centre = torch.tensor([4 * math.sin(angle), 0.3 * i, -4 * math.cos(angle)], dtype=torch.float64)
        forward = -centre / centre.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        rot = torch.stack([right, down, forward])
        es.append(torch.cat([rot, (-rot @ centre)[:, None]], dim=1))
        ks.append(torch.tensor([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]], dtype=torch.float64))
    k = torch.stack(ks).float()[None, None].expand(1, t, v, 3, 3)
    e = torch.stack(es).float()[None, None].expand(1, t, v, 3, 4)
    return k.contiguous(), e.contiguous()


def test_model_without_cameras_is_unchanged_and_with_cameras_changes():
    model = _epipolar_model()
    images = torch.rand(1, 2, 3, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    cameras = _circle_rig(2, 3, 28, 42)
    with torch.no_grad():
        plain = twin(model, epipolar=None)(images)
        assert torch.equal(model(images).depth, plain.depth)
    fused, dense = fused_and_dense(model, images, ForwardInputs(camera_priors=cameras))
    assert not torch.allclose(fused.pose_enc, plain.pose_enc, atol=1e-4)
    assert torch.allclose(fused.pose_enc, dense.pose_enc, atol=1e-5)
    assert torch.allclose(fused.depth, dense.depth, atol=1e-5)


def test_zero_penalty_with_cameras_matches_the_plain_model():
    model = _epipolar_model(penalty=0.0)
    images = torch.rand(1, 2, 3, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with_cameras = model(images, ForwardInputs(camera_priors=_circle_rig(2, 3, 28, 42)))
        assert torch.allclose(with_cameras.depth, model(images).depth, atol=1e-6)


def test_model_level_errors():
    images = torch.rand(1, 1, 3, 3, 28, 42)
    with pytest.raises(ValueError, match="epipolar prior, which this model's config does not use"):
        Page4D(preset("tiny"))(images, ForwardInputs(camera_priors=_circle_rig(1, 3, 28, 42)))
    cfg = preset("tiny")
    with pytest.raises(ValueError, match=r"epipolar.view_blocks \(9,\) outside 0..3"):
        cfg.aggregator = dataclasses.replace(cfg.aggregator, epipolar=EpipolarConfig(view_blocks=(9,)))
        cfg.validate()
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="needs the view bank to run view attention"):
        cfg.aggregator = dataclasses.replace(
            cfg.aggregator, epipolar=EpipolarConfig(view_blocks=(1,)), bank_kinds={"time": "frame", "view": "global"}
        )
        cfg.validate()
    with pytest.raises(ValueError, match="extrinsics must be"):
        k, e = _circle_rig(1, 3, 28, 42)
        _epipolar_model()(images, ForwardInputs(camera_priors=(k, e[:, :, :2])))
