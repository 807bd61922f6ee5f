"""What the eval figures draw: camera centres seen from above (in any world orientation, the prediction through the
ATE's Sim(3)) and the depth error maps (the median scale of AbsRel, invalid pixels masked)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import EXAMPLE, example_truth

from page4d.data.layout import load_clip
from page4d.eval.plot_data import camera_top_view, depth_errors
from page4d.eval.protocols import Sim3, camera_report, depth_report
from page4d.eval.runner import run_evaluation
from page4d.geometry import quat_to_mat
from page4d.geometry.ground import ground_axes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXACT = 1e-9
WORLD_ROTATION = quat_to_mat(torch.nn.functional.normalize(torch.tensor([0.4, -0.3, 0.6, 0.5], dtype=torch.float64),
                                                           dim=0)).numpy()
WORLD_SHIFT = np.array([3.0, -1.0, 7.0])


def _look_at(centre: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera ``[3, 4]`` of an unrolled OpenCV camera at ``centre`` looking at ``target``."""
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    rot = np.stack([right, np.cross(forward, right), forward])  # rows: x right, y down, z forward
    return np.concatenate([rot, -(rot @ centre)[:, None]], axis=1)


def _layout() -> np.ndarray:
    """``[T=3, V=4, 3]`` centres in a z-up world: four cameras around a table at different heights, the rig
    sliding over time; view 0 looks along +y."""
    rig = np.array([[0.0, -5.0, 1.5], [4.0, 1.0, 2.0], [-1.0, 4.0, 1.0], [-3.5, -0.5, 2.5]])
    return np.stack([rig + [0.3 * t, 0.2 * t, 0.0] for t in range(3)])


def _rig(centres: np.ndarray, rotation: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """World-to-camera ``[T, V, 3, 4]`` of cameras at z-up ``centres [T, V, 3]`` looking at the rig's table, in
    the world ``x ↦ rotation·x + shift``."""
    steps = []
    for t, step in enumerate(centres):
        target = np.array([0.3 * t, 0.2 * t, 0.0])
        cams = [_look_at(rotation @ c + shift, rotation @ target + shift, rotation[:, 2]) for c in step]
        steps.append(np.stack(cams))
    return np.stack(steps)


def test_top_view_is_the_ground_layout_whatever_the_world_orientation() -> None:
    layout = _layout()
    gt = torch.from_numpy(_rig(layout, WORLD_ROTATION, WORLD_SHIFT))
    axes = ground_axes(gt.numpy())
    np.testing.assert_allclose(axes[2], WORLD_ROTATION[:, 2], atol=EXACT)  # up is the rotated z, not the world's z
    assert np.linalg.det(axes) == pytest.approx(1.0, abs=EXACT)  # seen from above, not mirrored from below
    view = camera_top_view(gt, gt, sim3=None)
    assert view.pred is None
    # Height is dropped, the rotated world is undone and view 0 looks up the page: exactly the (x, y) layout.
    expected = layout[..., :2] - layout[..., :2].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(view.gt, expected, atol=EXACT)


def _similar(w2c: np.ndarray, scale: float, rot: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The cameras ``w2c [..., 3, 4]`` in the world ``x ↦ scale·rot·x + shift``: rotation ``R_c·rotᵀ``, centre
    ``scale·rot·C + shift``."""
    rot_c = w2c[..., :3] @ rot.T
    centres = np.einsum("ij,...j->...i", scale * rot, -np.einsum("...ji,...j->...i", w2c[..., :3], w2c[..., 3]))
    return np.concatenate([rot_c, -np.einsum("...ij,...j->...i", rot_c, centres + shift)[..., None]], axis=-1)


def test_prediction_is_drawn_through_the_ate_sim3() -> None:
    layout = _layout()
    gt = torch.from_numpy(_rig(layout, WORLD_ROTATION, WORLD_SHIFT))
    scale, shift = 0.4, np.array([-2.0, 0.5, 1.0])
    rot = quat_to_mat(torch.nn.functional.normalize(torch.tensor([0.1, 0.7, -0.2, 0.7], dtype=torch.float64),
                                                    dim=0)).numpy()
    # The predicted world is a similarity of the ground truth's; the Sim(3) back is known exactly.
    exact = Sim3(1 / scale, torch.from_numpy(rot.T), torch.from_numpy(-rot.T @ shift / scale))
    moved = layout.copy()
    moved[1, 2] += [0.3, -0.2, 0.5]  # one predicted camera off by 0.3 right, 0.2 back, 0.5 up
    pred = torch.from_numpy(_similar(_rig(moved, WORLD_ROTATION, WORLD_SHIFT), scale, rot, shift))
    view = camera_top_view(pred, gt, exact)
    offset = view.pred - view.gt
    np.testing.assert_allclose(offset[1, 2], [0.3, -0.2], atol=EXACT)  # height dropped, the rest shows as it is
    offset[1, 2] = 0.0
    np.testing.assert_allclose(offset, 0.0, atol=EXACT)

    # Without the outlier, the Sim(3) the ATE fits puts every predicted centre on its ground truth.
    pred = torch.from_numpy(_similar(gt.numpy(), scale, rot, shift))
    _, sim3, _ = camera_report(pred, gt)
    np.testing.assert_allclose(camera_top_view(pred, gt, sim3).pred, view.gt, atol=1e-8)


def _independent_errors(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
    """``|pred·s − gt| / gt`` at valid pixels (NaN elsewhere) with ``s = median(gt) / median(pred)`` over them."""
    pred, gt = pred.astype(np.float64), gt.astype(np.float64)
    scale = float(np.median(gt[valid]) / np.median(pred[valid]))
    errors = np.full(gt.shape, np.nan)
    errors[valid] = np.abs(pred[valid] * scale - gt[valid]) / gt[valid]
    return errors, scale


def test_error_maps_are_abs_rel_after_the_metrics_median_scale() -> None:
    recon = example_truth(84)
    rng = np.random.default_rng(0)
    recon.depth = (recon.depth * 3.0 * (1.0 + 0.1 * rng.standard_normal(recon.depth.shape))).astype(np.float32)
    evaluation = run_evaluation(load_clip(EXAMPLE), recon)
    gt, valid = evaluation.truth.depth.numpy(), evaluation.truth.valid.numpy()
    assert 0 < valid.sum() < valid.size  # the example has pixels without ground truth: masking is exercised
    expected, scale = _independent_errors(recon.depth, gt, valid)
    median_fit = evaluation.report["depth"]["median"]["fit"]
    assert median_fit["scale"] == pytest.approx(scale, rel=1e-12)
    errors = depth_errors(recon.depth, gt, valid, median_fit["scale"])
    np.testing.assert_allclose(errors.error, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(errors.gt[~valid]).all() and np.isnan(errors.error[~valid]).all()
    np.testing.assert_allclose(errors.aligned, recon.depth.astype(np.float64) * scale, rtol=1e-12)
    # Each step's mean over its valid pixels is the AbsRel the report plots per step.
    for t, abs_rel in enumerate(evaluation.report["per_step"]["abs_rel"]):
        assert np.nanmean(errors.error[t]) == pytest.approx(abs_rel, rel=1e-9)
    assert errors.view_abs_rel(0, 1) == pytest.approx(np.nanmean(expected[0, 1]), rel=1e-12)


def test_per_frame_error_maps_scale_each_image_and_leave_empty_ones() -> None:
    gen = np.random.default_rng(1)
    gt = gen.uniform(1.0, 5.0, (2, 2, 6, 7))
    pred = gt * gen.uniform(0.5, 2.0, (2, 2, 1, 1)) + gen.normal(0.0, 0.05, gt.shape)
    valid = gen.random(gt.shape) > 0.3
    valid[1, 0] = False  # an image without ground truth: no fit, nothing scored
    fit = depth_report(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid), None,
                       "per-frame")["median"]["fit"]
    assert fit["scale"][1][0] is None
    errors = depth_errors(pred, gt, valid, fit["scale"])
    for t in range(2):
        for v in range(2):
            if (t, v) == (1, 0):
                assert np.isnan(errors.error[t, v]).all() and errors.view_abs_rel(t, v) is None
                np.testing.assert_array_equal(errors.aligned[t, v], pred[t, v])  # left unscaled, as the metric does
                continue
            expected, _ = _independent_errors(pred[t, v], gt[t, v], valid[t, v])
            np.testing.assert_allclose(errors.error[t, v], expected, rtol=1e-12, equal_nan=True)
    assert errors.depth_range == pytest.approx(tuple(np.percentile(gt[valid], (2.0, 98.0))))
    assert math.isfinite(errors.error_max) and errors.error_max >= 0.01
