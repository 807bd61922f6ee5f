"""Evaluation protocols and runner: ground truth scores perfectly, a known Sim(3) is recovered, protocols differ
where they should, hand-computed point-cloud and consistency values, id matching and input errors."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import EXAMPLE, example_truth

from page4d.data.layout import load_clip
from page4d.eval import multiview_consistency, point_cloud_metrics, relative_pose_error
from page4d.eval.geometry_metrics import subsample_indices
from page4d.eval.protocols import camera_report
from page4d.eval.runner import evaluate
from page4d.geometry import quat_to_mat
from page4d.reconstruction import Reconstruction

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 84  # model grid 56 x 84: the protocol is the same as at 518, the test 40x cheaper
EXACT = 1e-9


@pytest.fixture(scope="module")
def clip():
    return load_clip(EXAMPLE)


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> Reconstruction:
    """The clip's ground truth as a prediction, through a save / load round trip like a real prediction."""
    folder = tmp_path_factory.mktemp("gt_prediction")
    example_truth(SIZE).save(folder)
    return Reconstruction.load(folder)


@pytest.fixture(scope="module")
def perfect(clip, truth) -> dict:
    return evaluate(clip, truth)


def _depth_scores(report: dict) -> list[dict]:
    return [report["depth"][align][region] for align in ("median", "scale_shift") for region in
            ("all", "static", "dynamic")]


def test_ground_truth_as_prediction_scores_perfectly(perfect, truth) -> None:
    # The comparison grid is the prediction's: every pixel with GT depth is evaluated, masks split it.
    pixels = perfect["depth"]["pixels"]
    assert pixels["all"] == int((truth.depth > 0).sum())
    assert pixels["dynamic"] == int(((truth.depth > 0) & (truth.dynamic_mask > 0.5)).sum()) > 0
    assert pixels["static"] + pixels["dynamic"] == pixels["all"]
    for scores in _depth_scores(perfect):
        assert scores["abs_rel"] == pytest.approx(0.0, abs=1e-6)
        assert scores["delta_1.25"] == 1.0
    assert perfect["depth"]["median"]["fit"]["scale"] == pytest.approx(1.0, abs=1e-7)
    cameras = perfect["cameras"]
    assert cameras["sim3"]["scale"] == pytest.approx(1.0, abs=1e-9)
    for key in ("ate_rmse", "rpe_trans", "rpe_rot_deg"):
        assert cameras[key] == pytest.approx(0.0, abs=1e-6)
    assert [cameras[f"auc@{tau}"] for tau in (3, 5, 30)] == [1.0, 1.0, 1.0]
    for source in ("depth", "point_head"):
        for key in ("accuracy", "completeness", "chamfer"):
            assert perfect["points"][source][key] == pytest.approx(0.0, abs=1e-6)
    assert perfect["dynamic_mask"] == {"iou": 1.0, "f1": 1.0, "per_step": {"iou": [1.0, 1.0, 1.0]}}
    # Reprojection agrees exactly with the ground truth's own (imperfect: occlusions, calibration) consistency.
    pred, gt = perfect["consistency"]["prediction"], perfect["consistency"]["ground_truth"]
    assert pred == gt
    assert 0.1 < gt["overlap"] < 1 and 0 < gt["within"] < 1
    assert perfect["per_step"]["time_ids"] == [8, 9, 10]
    assert perfect["per_step"]["abs_rel"] == pytest.approx([0.0] * 3, abs=1e-6)
    assert perfect["per_step"]["ate_rmse"] == pytest.approx([0.0] * 3, abs=1e-6)
    assert perfect["notes"] == []
    assert perfect["prediction"]["untrained"] is False


def _sim3_world(recon: Reconstruction, scale: float, rot: np.ndarray, trans: np.ndarray) -> Reconstruction:
    """``recon`` seen in a world ``X' = s·R·X + t`` with depth in units ``s`` times larger."""
    cam_rot = recon.extrinsic[..., :3].astype(np.float64)
    new_rot = cam_rot @ rot.T
    new_trans = scale * recon.extrinsic[..., 3].astype(np.float64) - new_rot @ trans
    extrinsic = np.concatenate([new_rot, new_trans[..., None]], axis=-1).astype(np.float32)
    points = (scale * recon.world_points.astype(np.float64) @ rot.T + trans).astype(np.float32)
    return dataclasses.replace(recon, extrinsic=extrinsic, depth=recon.depth * np.float32(scale), world_points=points)


def test_known_sim3_is_recovered_and_removed(clip, truth) -> None:
    scale = 2.5
    rot = quat_to_mat(torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.2, 0.8], dtype=torch.float64), dim=0))
    rot, trans = rot.numpy(), np.array([1.0, -2.0, 0.5])
    report = evaluate(clip, _sim3_world(truth, scale, rot, trans))
    sim3 = report["cameras"]["sim3"]  # prediction -> GT: the inverse similarity
    assert sim3["scale"] == pytest.approx(1 / scale, rel=1e-6)
    np.testing.assert_allclose(sim3["rotation"], rot.T, atol=1e-6)
    np.testing.assert_allclose(sim3["translation"], -rot.T @ trans / scale, atol=1e-5)
    for key in ("ate_rmse", "rpe_trans", "rpe_rot_deg"):
        assert report["cameras"][key] == pytest.approx(0.0, abs=1e-4)
    assert report["cameras"]["auc@3"] == 1.0
    for align in ("median", "scale_shift"):
        assert report["depth"][align]["fit"]["scale"] == pytest.approx(1 / scale, rel=1e-6)
        assert report["depth"][align]["all"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert report["depth"]["scale_shift"]["fit"]["shift"] == pytest.approx(0.0, abs=1e-5)
    for source in ("depth", "point_head"):
        assert report["points"][source]["chamfer"] == pytest.approx(0.0, abs=1e-5)
    assert report["consistency"]["prediction"]["within"] == pytest.approx(
        report["consistency"]["ground_truth"]["within"], abs=1e-3
    )


def test_per_frame_protocol_forgives_per_image_scales(clip, truth) -> None:
    factors = np.linspace(0.5, 1.6, 12, dtype=np.float32).reshape(3, 4)
    drifting = dataclasses.replace(truth, depth=truth.depth * factors[..., None, None])
    per_frame = evaluate(clip, drifting, protocol="per-frame")
    video = evaluate(clip, drifting, protocol="video-depth")
    for align in ("median", "scale_shift"):
        np.testing.assert_allclose(per_frame["depth"][align]["fit"]["scale"], 1 / factors, rtol=1e-6)
        assert per_frame["depth"][align]["all"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
        assert video["depth"][align]["all"]["abs_rel"] > 0.1  # one scale cannot undo a 3x spread
    assert per_frame["protocol"]["name"] == "per-frame"
    assert isinstance(video["depth"]["median"]["fit"]["scale"], float)  # one fit per clip


def test_max_depth_excludes_far_pixels_from_fit_and_scores(clip, truth) -> None:
    cap = float(np.median(truth.depth[truth.depth > 0]))
    wrong_far = dataclasses.replace(truth, depth=np.where(truth.depth > cap, truth.depth * 3, truth.depth))
    capped = evaluate(clip, wrong_far, max_depth=cap)
    assert capped["depth"]["pixels"]["all"] == int(((truth.depth > 0) & (truth.depth <= cap)).sum())
    assert capped["depth"]["median"]["all"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert capped["protocol"]["max_depth"] == cap
    assert evaluate(clip, wrong_far)["depth"]["median"]["all"]["abs_rel"] > 0.1


def _subset(recon: Reconstruction, times: list[int], views: list[int], **changes) -> Reconstruction:
    """``recon`` at positions ``times`` x ``views`` (as a prediction of part of the clip would be)."""
    rows = np.ix_(times, views)
    arrays = {name: getattr(recon, name)[rows] for name in recon.ARRAYS[2:] if getattr(recon, name) is not None}
    meta = {**recon.meta, "transforms": [recon.meta["transforms"][v] for v in views]}
    return dataclasses.replace(
        recon, time_ids=recon.time_ids[times], view_ids=recon.view_ids[views], meta=meta, **(arrays | changes)
    )


def test_subset_of_ids_and_no_mask_head(clip, truth) -> None:
    times, views = [1, 2], [1, 3]
    report = evaluate(clip, _subset(truth, times, views, dynamic_mask=None))
    assert report["evaluated"]["time_ids"] == [9, 10] and report["evaluated"]["view_ids"] == [1, 3]
    assert report["depth"]["pixels"]["all"] == int((truth.depth[np.ix_(times, views)] > 0).sum())
    assert report["depth"]["median"]["all"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert report["dynamic_mask"] is None and report["notes"] == ["dynamic mask: no mask head"]
    assert report["per_step"]["mask_iou"] is None
    # 2 static cameras x 2 steps: 2 distinct centres still fit a Sim(3) (any rotation about their line is exact).
    assert report["cameras"]["ate_rmse"] == pytest.approx(0.0, abs=1e-6)


def test_single_static_camera_aligns_points_on_depth(clip, truth) -> None:
    rot = quat_to_mat(torch.nn.functional.normalize(torch.tensor([0.1, 0.7, -0.2, 0.6], dtype=torch.float64), dim=0))
    moved = _sim3_world(truth, 0.4, rot.numpy(), np.array([3.0, 0.0, -1.0]))
    report = evaluate(clip, _subset(moved, [0, 1, 2], [2]))
    assert report["cameras"]["ate_rmse"] is None and report["cameras"]["auc@30"] is None
    assert report["consistency"] is None
    assert report["points"]["alignment"] == "Sim(3) fitted on the depth points"
    assert report["points"]["depth"]["chamfer"] == pytest.approx(0.0, abs=1e-5)
    assert report["notes"] == [
        "cameras: no ATE / RPE / point alignment: all ground-truth camera centres coincide, so no Sim(3) can be "
        "fitted",
        "cameras: pose AUC needs at least 2 views per time step",
        "points: the cameras give no Sim(3); the prediction is aligned on its depth points instead",
        "consistency: needs at least 2 views",
    ]


def test_clip_without_masks_has_no_static_dynamic_split(clip, truth, tmp_path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "clip", ignore=shutil.ignore_patterns("masks"))
    report = evaluate(load_clip(tmp_path / "clip"), truth)
    assert report["depth"]["median"]["static"] is None and report["depth"]["median"]["dynamic"] is None
    assert report["depth"]["median"]["all"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert report["dynamic_mask"] is None and "dynamic mask: the clip has no masks/ folder" in report["notes"]


def test_input_errors(clip, truth) -> None:
    shifted = dataclasses.replace(truth, time_ids=truth.time_ids + 100)
    with pytest.raises(ValueError, match=r"no \(time, view\) in common"):
        evaluate(clip, shifted)
    smaller = [{**t, "original_size": [240, 320]} for t in truth.meta["transforms"]]
    resized = dataclasses.replace(truth, meta={**truth.meta, "transforms": smaller})
    with pytest.raises(ValueError, match=r"view0 were made from 320x240 images \(meta transforms\) but the clip's "
                       "images are 640x480"):
        evaluate(clip, resized)
    with pytest.raises(ValueError, match="unknown protocol 'per-clip'"):
        evaluate(clip, truth, protocol="per-clip")
    with pytest.raises(ValueError, match="max_depth must be positive"):
        evaluate(clip, truth, max_depth=0.0)
    with pytest.raises(ValueError, match="no valid ground-truth depth"):
        evaluate(clip, truth, max_depth=1e-3)
    no_gt = dataclasses.replace(clip, depth_paths=None, intrinsics=None, extrinsics=None)
    with pytest.raises(ValueError, match=r"no depths/ and no cameras.json; evaluation needs the ground truth"):
        evaluate(no_gt, truth)


# Hand-computed geometry metrics.


def test_point_cloud_metrics_hand_computed() -> None:
    pred = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    gt = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    # pred -> gt: 0, 0, 2 (to the origin); gt -> pred: 0, 0, 3 (to (1, 0, 0)).
    scores = point_cloud_metrics(pred, gt)
    assert scores["accuracy"] == pytest.approx(2 / 3, abs=EXACT)
    assert scores["completeness"] == pytest.approx(1.0, abs=EXACT)
    assert scores["chamfer"] == pytest.approx(5 / 6, abs=EXACT)
    assert point_cloud_metrics(gt, gt) == {"accuracy": 0.0, "completeness": 0.0, "chamfer": 0.0}


def test_subsample_indices_are_even_and_deterministic() -> None:
    assert subsample_indices(10, 4).tolist() == [0, 2, 5, 7]
    assert subsample_indices(3, 4).tolist() == [0, 1, 2]
    picks = subsample_indices(1000, 7)
    assert len(set(picks.tolist())) == 7 and picks.tolist() == sorted(picks.tolist())


def _two_view_toy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3x3 images, f = 1, c = (1, 1); camera b = camera a moved 2 units along x. Step 0: a sees a plane at z = 2,
    b the same plane but with its left column at 2.2; step 1: both see the plane at z = 2."""
    k = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    ext_a = torch.cat([eye, torch.zeros(3, 1, dtype=torch.float64)], dim=1)
    ext_b = torch.cat([eye, torch.tensor([[-2.0], [0.0], [0.0]], dtype=torch.float64)], dim=1)
    depth = torch.full((2, 2, 3, 3), 2.0, dtype=torch.float64)
    depth[0, 1, :, 0] = 2.2
    return depth, torch.stack([ext_a, ext_b]).expand(2, 2, 3, 4), k.expand(2, 2, 3, 3)


def test_consistency_two_view_toy_hand_computed() -> None:
    depth, extrinsic, intrinsic = _two_view_toy()
    valid = torch.ones_like(depth, dtype=torch.bool)
    result = multiview_consistency(depth, extrinsic, intrinsic, valid, threshold=0.01)
    # Step 0, a -> b: column u lands at u - 1; u = 1 hits b's 2.2 (rel = -0.2/2.2), u = 2 agrees, u = 0 falls
    # outside. b -> a: b's column 0 (z = 2.2) lands at u = 0.91 -> 1 on depth 2 (rel = 0.1), column 1 agrees,
    # column 2 falls outside. 12 of 18 source pixels evaluated; |rel| = 0 x6, 1/11 x3, 0.1 x3.
    per_step = result["per_step"]
    assert per_step["overlap"] == pytest.approx([12 / 18, 12 / 18], abs=EXACT)
    assert per_step["within"] == pytest.approx([0.5, 1.0], abs=EXACT)
    assert per_step["median_abs_rel"] == pytest.approx([1 / 22, 0.0], abs=1e-7)
    assert result["overlap"] == pytest.approx(24 / 36, abs=EXACT)
    assert result["within"] == pytest.approx(18 / 24, abs=EXACT)
    assert result["median_abs_rel"] == pytest.approx(0.0, abs=EXACT)
    # An invalid pixel is neither a source nor a target: a's (u=2, v=0) removes one agreeing pixel each way.
    valid[0, 0, 0, 2] = False
    step0 = multiview_consistency(depth[:1], extrinsic[:1], intrinsic[:1], valid[:1])
    assert step0["overlap"] == pytest.approx(10 / 17, abs=EXACT)
    assert step0["within"] == pytest.approx(4 / 10, abs=EXACT)
    assert step0["median_abs_rel"] == pytest.approx(1 / 11, abs=1e-7)


# Cameras.


def test_relative_pose_error_uses_the_given_scale() -> None:
    def w2c(centres: list[float]) -> torch.Tensor:
        c = torch.tensor([[x, 0.0, 0.0] for x in centres], dtype=torch.float64)
        return torch.cat([torch.eye(3, dtype=torch.float64).expand(len(c), 3, 3), -c[:, :, None]], dim=-1)

    gt, pred = w2c([0.0, 1.0, 2.0]), w2c([0.0, 0.5, 1.0])
    assert relative_pose_error(pred, gt, scale=2.0) == {"rpe_trans": 0.0, "rpe_rot_deg": 0.0}
    assert relative_pose_error(pred, gt)["rpe_trans"] == pytest.approx(0.5, abs=EXACT)


def test_camera_report_pools_steps_and_names_degenerate_rigs() -> None:
    gen = torch.Generator().manual_seed(0)
    rot = quat_to_mat(torch.nn.functional.normalize(torch.randn(2, 3, 4, generator=gen, dtype=torch.float64), dim=-1))
    gt = torch.cat([rot, torch.randn(2, 3, 3, 1, generator=gen, dtype=torch.float64)], dim=-1)
    pred = gt.clone()
    pred[1, 2, :, 3] += torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    report, sim3, notes = camera_report(pred, gt)
    assert sim3 is not None and notes == []
    steps = report["per_step"]["ate_rmse"]
    assert report["ate_rmse"] == pytest.approx(math.sqrt((steps[0] ** 2 + steps[1] ** 2) / 2), abs=EXACT)
    assert steps[1] > steps[0] > 0
    assert report["auc@30"] == pytest.approx(sum(report["per_step"]["auc@30"]) / 2, abs=EXACT)
    assert report["per_step"]["auc@30"][0] == 1.0 > report["per_step"]["auc@30"][1]
    report, sim3, notes = camera_report(pred[:1, :2], gt[:1, :2])
    assert sim3 is None and report["ate_rmse"] is None and report["rpe_trans"] is None
    assert notes == ["cameras: no ATE / RPE / point alignment: a Sim(3) needs at least 3 cameras, got 2"]
    assert report["auc@30"] == 1.0
