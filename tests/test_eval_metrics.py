"""Evaluation metrics: identities, known Sim(3) recovery, hand-computed values and input validation."""

from __future__ import annotations

import math

import pytest
import torch

from page4d.eval import camera_centres, depth_metrics, mask_metrics, pose_auc, trajectory_metrics
from page4d.geometry import quat_to_mat
from page4d.geometry.alignment import umeyama_sim3

TOL = 1e-9


def _rot_z(deg: float) -> torch.Tensor:
    """Rotation ``[3, 3]`` (float64) by ``deg`` degrees about z."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _w2c(rot_c2w: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``[N, 3, 4]`` from camera-to-world rotations ``[N, 3, 3]`` and centres ``[N, 3]``."""
    rot = rot_c2w.transpose(-1, -2)
    return torch.cat([rot, -(rot @ centres.to(rot.dtype).unsqueeze(-1))], dim=-1)


def _random_poses(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random world-to-camera poses ``[n, 3, 4]`` (float64) with distinct centres."""
    gen = torch.Generator().manual_seed(seed)
    quat = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen, dtype=torch.float64), dim=-1)
    return _w2c(quat_to_mat(quat), torch.randn(n, 3, generator=gen, dtype=torch.float64) * 2)


def _known_sim3() -> tuple[float, torch.Tensor, torch.Tensor]:
    """A fixed Sim(3) ``(s, R, t)``: s = 2.5, a generic rotation, a translation (float64)."""
    rot = quat_to_mat(torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.2, 0.8], dtype=torch.float64), dim=0))
    return 2.5, rot, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


# Ground truth as prediction.


def test_perfect_prediction_scores_perfectly() -> None:
    depth = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    for align in ("median", "scale_shift", "none"):
        scores = depth_metrics(depth, depth, align=align)
        assert scores["abs_rel"] == pytest.approx(0.0, abs=TOL)
        assert scores["delta_1.25"] == 1.0
    poses = _random_poses(6)
    traj = trajectory_metrics(poses, poses)
    assert traj["ate_rmse"] == pytest.approx(0.0, abs=TOL)
    assert traj["rpe_trans"] == pytest.approx(0.0, abs=TOL)
    assert traj["rpe_rot_deg"] == pytest.approx(0.0, abs=TOL)
    assert traj["scale"] == pytest.approx(1.0, abs=TOL)
    assert pose_auc(poses, poses) == {"auc@3": 1.0, "auc@5": 1.0, "auc@30": 1.0}
    mask = torch.tensor([[True, False], [True, True]])
    assert mask_metrics(mask, mask) == {"iou": 1.0, "f1": 1.0}


# Known Sim(3) and alignment.


def test_umeyama_recovers_known_sim3() -> None:
    scale, rot, trans = _known_sim3()
    src = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s, r, t = umeyama_sim3(src, scale * src @ rot.T + trans)
    assert s == pytest.approx(scale, abs=TOL)
    assert torch.allclose(r, rot, atol=TOL, rtol=0)
    assert torch.allclose(t, trans, atol=TOL, rtol=0)


def test_umeyama_without_scale_and_reflection_correction() -> None:
    src = torch.randn(10, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, rot, trans = _known_sim3()
    s, r, t = umeyama_sim3(src, src @ rot.T + trans, with_scale=False)
    assert s == 1.0
    assert torch.allclose(r, rot, atol=TOL, rtol=0)
    assert torch.allclose(t, trans, atol=TOL, rtol=0)
    mirrored = src * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    _, r, _ = umeyama_sim3(src, mirrored)
    assert float(torch.linalg.det(r)) == pytest.approx(1.0, abs=TOL)


def test_trajectory_metrics_invariant_to_sim3() -> None:
    scale, rot, trans = _known_sim3()
    gt = _random_poses(8, seed=4)
    gt_c2w_rot = gt[:, :, :3].transpose(-1, -2)
    gt_centres = camera_centres(gt)
    # Prediction in a frame where gt = scale·rot·pred + trans.
    pred = _w2c(rot.T @ gt_c2w_rot, (gt_centres - trans) @ rot / scale)
    s, r, t = umeyama_sim3(camera_centres(pred), gt_centres)
    assert s == pytest.approx(scale, abs=TOL)
    assert torch.allclose(r, rot, atol=TOL, rtol=0)
    assert torch.allclose(t, trans, atol=TOL, rtol=0)
    traj = trajectory_metrics(pred, gt)
    assert traj["scale"] == pytest.approx(scale, abs=TOL)
    for key in ("ate_rmse", "rpe_trans", "rpe_rot_deg"):
        assert traj[key] == pytest.approx(0.0, abs=TOL)


def test_median_alignment_removes_scale() -> None:
    gt = torch.rand(3, 2, 5, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.1
    scores = depth_metrics(3 * gt, gt, align="median")
    assert scores["abs_rel"] == pytest.approx(0.0, abs=TOL)
    assert scores["scale"] == pytest.approx(1 / 3, abs=TOL)
    assert depth_metrics(3 * gt, gt, align="none")["abs_rel"] == pytest.approx(2.0, abs=TOL)


def test_scale_shift_alignment_recovers_affine_map() -> None:
    gt = torch.rand(4, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 0.1
    scores = depth_metrics(2 * gt + 1, gt, align="scale_shift")
    assert scores["abs_rel"] == pytest.approx(0.0, abs=TOL)
    assert scores["scale"] == pytest.approx(0.5, abs=TOL)
    assert scores["shift"] == pytest.approx(-0.5, abs=TOL)


# Hand-computed values.


def test_depth_hand_computed() -> None:
    pred = torch.tensor([[1.0, 2.0, 4.0]])
    gt = torch.tensor([[1.0, 2.0, 2.0]])
    for align in ("none", "median"):
        scores = depth_metrics(pred, gt, align=align)
        assert scores["abs_rel"] == pytest.approx(1 / 3, abs=TOL)
        assert scores["delta_1.25"] == pytest.approx(2 / 3, abs=TOL)


def test_depth_valid_mask_and_max_depth() -> None:
    pred = torch.tensor([[1.0, 2.0, 4.0, 1.0, 9.0]])
    gt = torch.tensor([[1.0, 2.0, 2.0, 0.0, 90.0]])
    # gt = 0 and gt > max_depth are dropped; the valid mask drops the third pixel.
    scores = depth_metrics(pred, gt, align="none", max_depth=70.0)
    assert scores["abs_rel"] == pytest.approx(1 / 3, abs=TOL)
    valid = torch.tensor([[True, True, False, True, True]])
    scores = depth_metrics(pred, gt, valid=valid, align="none", max_depth=70.0)
    assert scores == {"abs_rel": 0.0, "delta_1.25": 1.0, "scale": 1.0, "shift": 0.0}


def test_depth_delta_counts_and_non_positive_prediction() -> None:
    gt = torch.ones(1, 4)
    # Ratios 1.2 (in), 1/0.81 ≈ 1.23 (in), 1.3 (out), and p < 0 (out).
    pred = torch.tensor([[1.2, 0.81, 1.3, -1.0]])
    scores = depth_metrics(pred, gt, align="none")
    assert scores["delta_1.25"] == pytest.approx(0.5, abs=TOL)
    assert scores["abs_rel"] == pytest.approx((0.2 + 0.19 + 0.3 + 2.0) / 4, abs=1e-6)


def test_median_uses_mean_of_middle_values() -> None:
    pred = torch.tensor([[1.0, 2.0, 3.0, 10.0]], dtype=torch.float64)
    gt = torch.tensor([[5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    assert depth_metrics(pred, gt, align="median")["scale"] == pytest.approx(2.0, abs=TOL)


def test_rotation_error_of_ninety_degrees() -> None:
    gt = _w2c(torch.eye(3, dtype=torch.float64).expand(3, 3, 3), torch.tensor([[0.0, 0, 0], [0, 0, 1], [0, 0, 2]]))
    pred_c2w_rot = torch.stack([torch.eye(3, dtype=torch.float64), _rot_z(90), torch.eye(3, dtype=torch.float64)])
    pred = _w2c(pred_c2w_rot, camera_centres(gt))
    traj = trajectory_metrics(pred, gt)
    assert traj["rpe_rot_deg"] == pytest.approx(90.0, abs=TOL)
    assert traj["ate_rmse"] == pytest.approx(0.0, abs=TOL)
    assert traj["rpe_trans"] == pytest.approx(0.0, abs=TOL)
    # Two cameras: both ordered pairs have rotation error 90° and translation error 0°.
    auc = pose_auc(pred[:2], gt[:2], thresholds=(30, 100))
    assert auc["auc@30"] == 0.0
    assert auc["auc@100"] == pytest.approx(0.1, abs=TOL)


def test_pose_auc_translation_direction_and_sign_ambiguity() -> None:
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    gt = _w2c(eye, torch.tensor([[0.0, 0, 0], [1, 0, 0]]))
    flipped = _w2c(eye, torch.tensor([[0.0, 0, 0], [-3, 0, 0]]))
    assert pose_auc(flipped, gt, thresholds=(5,)) == {"auc@5": 0.0}
    assert pose_auc(flipped, gt, thresholds=(5,), sign_ambiguous=True) == {"auc@5": 1.0}
    collapsed = _w2c(eye, torch.zeros(2, 3, dtype=torch.float64))
    assert pose_auc(collapsed, gt, thresholds=(5,), sign_ambiguous=True) == {"auc@5": 0.0}
    # 45° translation error: err < k for k = 46..90 -> 45 of 90 steps.
    tilted = _w2c(eye, torch.tensor([[0.0, 0, 0], [1, 1, 0]]))
    assert pose_auc(tilted, gt, thresholds=(90,))["auc@90"] == pytest.approx(0.5, abs=TOL)


def test_mask_hand_computed() -> None:
    pred = torch.tensor([[0.9, 0.8, 0.1], [0.6, 0.2, 0.0]])
    gt = torch.tensor([[True, False, False], [True, True, False]])
    # P = {00, 01, 10}, G = {00, 10, 11}: |P ∩ G| = 2, |P ∪ G| = 4.
    scores = mask_metrics(pred, gt)
    assert scores["iou"] == pytest.approx(0.5, abs=TOL)
    assert scores["f1"] == pytest.approx(2 * 2 / 6, abs=TOL)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert mask_metrics(empty, empty) == {"iou": 1.0, "f1": 1.0}
    assert mask_metrics(empty, gt) == {"iou": 0.0, "f1": 0.0}


def test_camera_centres() -> None:
    rot, centre = _rot_z(30), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    w2c = _w2c(rot[None], centre[None])
    assert torch.allclose(camera_centres(w2c)[0], centre, atol=TOL, rtol=0)


# Bad inputs.


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        depth_metrics(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="valid must have the shape"):
        depth_metrics(torch.ones(2, 3), torch.ones(2, 3), valid=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(torch.ones(2, 3), torch.full((2, 3), 100.0), max_depth=70.0)
    with pytest.raises(ValueError, match="align must be"):
        depth_metrics(torch.ones(2, 3), torch.ones(2, 3), align="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-constant prediction"):
        depth_metrics(torch.ones(2, 3), torch.rand(2, 3) + 1, align="scale_shift")
    with pytest.raises(ValueError, match="at least 3 point pairs"):
        umeyama_sim3(torch.rand(2, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="all src points are equal"):
        umeyama_sim3(torch.ones(5, 3), torch.rand(5, 3))
    with pytest.raises(ValueError, match="same shape"):
        umeyama_sim3(torch.rand(5, 3), torch.rand(4, 3))
    poses = _random_poses(4)
    with pytest.raises(ValueError, match="at least 3 poses"):
        trajectory_metrics(poses[:2], poses[:2])
    with pytest.raises(ValueError, match="same shape"):
        trajectory_metrics(poses, poses[:3])
    with pytest.raises(ValueError, match="thresholds must be positive integers"):
        pose_auc(poses, poses, thresholds=(0.5,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share a centre"):
        pose_auc(poses, _w2c(torch.eye(3, dtype=torch.float64).expand(4, 3, 3), torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="same shape"):
        mask_metrics(torch.ones(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="extrinsic"):
        camera_centres(torch.eye(3))
