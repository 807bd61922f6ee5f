"""Geometry utilities: VGGT fixture parity and property tests (rotations, pose encoding, unprojection)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, SHARED, load_fixture, needs_shared, rel_err, tolerance
from safetensors import safe_open

from page4d.geometry import (
    closed_form_inverse_se3,
    extri_intri_to_pose_encoding,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    project_points,
    quat_to_mat,
    standardize_quaternion,
    unproject_depth,
)


def _fixtures_with(*keys: str) -> list[Path]:
    """Fixture folders (``PAGE4D_FIXTURE_DIRS`` or all under ../shared/fixtures) whose outputs hold ``keys``."""
    listed = os.environ.get("PAGE4D_FIXTURE_DIRS")
    folders = [Path(p) for p in listed.split(os.pathsep) if p] if listed else sorted(FIXTURES.iterdir())
    found = []
    for folder in folders:
        if (folder / "outputs.safetensors").is_file():
            with safe_open(folder / "outputs.safetensors", "pt") as outputs:
                if set(keys) <= set(outputs.keys()):
                    found.append(folder)
    return found


def _fixture_cases(*keys: str) -> list:
    """:func:`_fixtures_with` as test cases. Without ``../shared`` (and no ``PAGE4D_FIXTURE_DIRS``) there is no
    folder to list: one case that skips naming the missing prerequisite, instead of a failed collection."""
    if not os.environ.get("PAGE4D_FIXTURE_DIRS") and not SHARED.is_dir():
        return [pytest.param(FIXTURES, marks=needs_shared, id=FIXTURES.name)]
    return _fixtures_with(*keys)


def _image_size(fix: dict) -> tuple[int, int]:
    height, width = fix["inputs"]["images"].shape[-2:]
    return height, width


@pytest.mark.parametrize("folder", _fixture_cases("pose_enc", "extrinsic", "intrinsic"), ids=lambda d: d.name)
def test_pose_encoding_to_extri_intri_parity(folder):
    fixture = load_fixture(str(folder))
    out = fixture["outputs"]
    extrinsic, intrinsic = pose_encoding_to_extri_intri(out["pose_enc"], _image_size(fixture))
    assert rel_err(extrinsic, out["extrinsic"]) <= tolerance(fixture, "extrinsic")
    assert rel_err(intrinsic, out["intrinsic"]) <= tolerance(fixture, "intrinsic")


@pytest.mark.parametrize("folder", _fixture_cases("pose_enc_roundtrip"), ids=lambda d: d.name)
def test_pose_encoding_roundtrip_parity(folder):
    fixture = load_fixture(str(folder))
    out = fixture["outputs"]
    pose_enc = extri_intri_to_pose_encoding(out["extrinsic"], out["intrinsic"], _image_size(fixture))
    assert pose_enc.dtype == torch.float32
    assert rel_err(pose_enc, out["pose_enc_roundtrip"]) <= tolerance(fixture, "pose_enc_roundtrip")


@pytest.mark.parametrize("folder", _fixture_cases("depth_unprojected_world_points"), ids=lambda d: d.name)
def test_unprojection_parity(folder):
    fixture = load_fixture(str(folder))
    out = fixture["outputs"]
    points = unproject_depth(out["depth"], out["extrinsic"], out["intrinsic"])
    ref = out["depth_unprojected_world_points"]
    assert points.dtype == torch.float32
    assert rel_err(points, ref) <= tolerance(fixture, "depth_unprojected_world_points")


@needs_shared
def test_every_geometry_parity_source_is_present():
    if "PAGE4D_FIXTURE_DIRS" not in os.environ:
        assert {d.name for d in _fixtures_with("depth_unprojected_world_points")} == {"vggt_conv_tiny"}
        assert {"vggt_conv_tiny", "vggt_dinov2_tiny"} <= {d.name for d in _fixtures_with("pose_enc_roundtrip")}


def _random_quats(n: int, seed: int = 0) -> torch.Tensor:
    quat = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return standardize_quaternion(quat / quat.norm(dim=-1, keepdim=True))


def test_quaternion_matrix_roundtrip():
    quat = _random_quats(2000)
    rot = quat_to_mat(quat)
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(2000, dtype=torch.float64))
    torch.testing.assert_close(mat_to_quat(rot), quat, atol=1e-12, rtol=0)
    torch.testing.assert_close(quat_to_mat(mat_to_quat(rot)), rot, atol=1e-12, rtol=0)


def test_quat_to_mat_scale_invariant_and_batched():
    quat = _random_quats(24).reshape(2, 3, 4, 4)
    torch.testing.assert_close(quat_to_mat(3.7 * quat), quat_to_mat(quat))
    assert quat_to_mat(quat).shape == (2, 3, 4, 3, 3)
    assert mat_to_quat(quat_to_mat(quat)).shape == (2, 3, 4, 4)


def test_quaternion_convention_xyzw():
    angle = 0.3
    quat = torch.tensor([0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)], dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    expected = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(quat_to_mat(quat), expected)
    torch.testing.assert_close(mat_to_quat(expected), quat)


def test_mat_to_quat_half_turns_and_identity():
    rots = torch.stack(
        [torch.eye(3), torch.diag(torch.tensor([1.0, -1.0, -1.0])), torch.diag(torch.tensor([-1.0, 1.0, -1.0]))]
    ).double()
    quat = mat_to_quat(rots)
    assert (quat[..., 3] >= 0).all()
    torch.testing.assert_close(quat_to_mat(quat), rots)


def test_mat_to_quat_gradient_is_finite():
    rot = torch.eye(3, dtype=torch.float64, requires_grad=True)
    mat_to_quat(rot).sum().backward()
    assert torch.isfinite(rot.grad).all()


def _random_cameras(shape: tuple[int, ...], image_size: tuple[int, int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    height, width = image_size
    num = math.prod(shape)
    rot = quat_to_mat(_random_quats(num, seed)).reshape(shape + (3, 3))
    trans = torch.randn(shape + (3, 1), generator=gen, dtype=torch.float64)
    extrinsic = torch.cat([rot, trans], dim=-1)
    focal = 50 + 200 * torch.rand(shape + (2,), generator=gen, dtype=torch.float64)
    intrinsic = torch.zeros(shape + (3, 3), dtype=torch.float64)
    intrinsic[..., 0, 0], intrinsic[..., 1, 1] = focal[..., 0], focal[..., 1]
    intrinsic[..., 0, 2], intrinsic[..., 1, 2], intrinsic[..., 2, 2] = width / 2, height / 2, 1.0
    return extrinsic, intrinsic


def test_extri_intri_encoding_roundtrip():
    image_size = (70, 98)
    extrinsic, intrinsic = _random_cameras((2, 3, 4), image_size)
    pose_enc = extri_intri_to_pose_encoding(extrinsic, intrinsic, image_size)
    assert pose_enc.shape == (2, 3, 4, 9)
    extrinsic_back, intrinsic_back = pose_encoding_to_extri_intri(pose_enc, image_size)
    torch.testing.assert_close(extrinsic_back, extrinsic.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(intrinsic_back, intrinsic.float(), atol=0, rtol=1e-5)


def test_closed_form_inverse_se3():
    extrinsic, _ = _random_cameras((5,), (10, 10))
    inverse = closed_form_inverse_se3(extrinsic)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64).expand(5, 1, 4)
    homogeneous = torch.cat([extrinsic, bottom], dim=-2)
    eye = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    torch.testing.assert_close(closed_form_inverse_se3(homogeneous) @ homogeneous, eye)
    torch.testing.assert_close(closed_form_inverse_se3(inverse), extrinsic)


def test_unproject_then_project_returns_pixel_grid():
    height, width = 6, 9
    extrinsic, intrinsic = _random_cameras((2, 3), (height, width), seed=3)
    extrinsic, intrinsic = extrinsic.float(), intrinsic.float()
    depth = 0.5 + 4 * torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    points = unproject_depth(depth, extrinsic, intrinsic)
    assert points.shape == (2, 3, height, width, 3)
    torch.testing.assert_close(unproject_depth(depth[..., None], extrinsic, intrinsic), points)
    uv, z = project_points(points.double().flatten(2, 3), extrinsic.double(), intrinsic.double())
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack([cols, rows], dim=-1).double().flatten(0, 1).expand_as(uv)
    torch.testing.assert_close(uv, grid, atol=1e-4, rtol=0)
    torch.testing.assert_close(z, depth.double().flatten(2, 3), atol=1e-5, rtol=1e-5)
