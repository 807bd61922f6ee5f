"""Rig geometry (``page4d.reconstruction.rig``) against independent references: scipy's rotation mean, a Sim(3)
built by hand, and unprojection of the re-expressed depth; and what ``--rig auto`` decides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from page4d.geometry.unprojection import unproject_depth
from page4d.reconstruction.registration import decide_rig
from page4d.reconstruction.rig import fit_cameras, re_express, rig_poses, rotation_angles_deg, rotation_mean, spread


def _poses(count: int, seed: int) -> np.ndarray:
    """``[count, 3, 4]`` world-to-camera of cameras around the origin, looking roughly at it."""
    gen = np.random.default_rng(seed)
    rot = Rotation.from_rotvec(gen.normal(scale=0.4, size=(count, 3))).as_matrix()
    centres = gen.normal(size=(count, 3)) * 2 + np.array([0, 0, -4])
    return np.concatenate([rot, -(rot @ centres[..., None])], axis=2)


def test_rotation_mean_ignores_a_few_wrong_rotations():
    gen = np.random.default_rng(0)
    truth = Rotation.from_rotvec([0.3, -0.5, 0.2])
    noisy = truth * Rotation.from_rotvec(gen.normal(scale=np.radians(1.0), size=(20, 3)))
    wrong = truth * Rotation.from_rotvec(gen.normal(scale=1.5, size=(3, 3)))
    mean = rotation_mean(np.concatenate([noisy.as_matrix(), wrong.as_matrix()]))
    reference = noisy.mean().as_matrix()  # scipy's chordal mean of the right ones alone
    assert rotation_angles_deg(mean, reference) < 0.3
    plain = Rotation.concatenate([noisy, wrong]).mean().as_matrix()
    assert rotation_angles_deg(plain, reference) > 1.0, "the wrong ones must pull a plain mean away"


def test_fit_cameras_recovers_a_similarity_despite_one_wrong_camera():
    known = _poses(6, seed=1)
    scale, rot, trans = 2.5, Rotation.from_rotvec([0.2, 0.7, -0.4]).as_matrix(), np.array([1.0, -2.0, 0.5])
    # the same cameras in a world X = (X' - t) R / s: [R_k R | (R_k t + t_k) / s]
    predicted = np.concatenate([known[:, :, :3] @ rot, (known[:, :, :3] @ trans + known[:, :, 3])[..., None] / scale],
                               axis=2)
    predicted[4] = _poses(1, seed=9)[0]  # a camera the model got wrong
    fit = fit_cameras(predicted, known)
    assert fit.scale_known and abs(fit.scale / scale - 1) < 1e-3
    assert rotation_angles_deg(fit.rotation, rot) < 0.05 and np.allclose(fit.translation, trans, atol=1e-2)
    one = fit_cameras(predicted[:1], known[:1])
    assert not one.scale_known and one.scale == 1.0


def test_re_expressed_frames_stay_consistent_with_their_new_cameras():
    """Depth and points that agree with the predicted cameras agree, after re-expression, with the new cameras
    (and the new depth is the old one times the scale)."""
    gen = np.random.default_rng(2)
    steps, views, height, width = 2, 3, 5, 7
    k = torch.tensor([[6.0, 0, 3], [0, 6.0, 2], [0, 0, 1]]).expand(steps * views, 3, 3).double()
    extrinsic = _poses(steps * views, seed=3)
    depth = gen.uniform(1, 3, size=(steps * views, height, width))
    points = unproject_depth(torch.from_numpy(depth), torch.from_numpy(extrinsic), k).numpy()
    arrays = {"extrinsic": extrinsic.reshape(steps, views, 3, 4).astype(np.float32),
              "depth": depth.reshape(steps, views, height, width).astype(np.float32),
              "world_points": points.reshape(steps, views, height, width, 3).astype(np.float32)}
    target = _poses(steps * views, seed=4).reshape(steps, views, 3, 4)
    re_express(arrays, target, 1.7)
    assert np.array_equal(arrays["extrinsic"], target.astype(np.float32))
    np.testing.assert_allclose(arrays["depth"], 1.7 * depth.reshape(steps, views, height, width), rtol=1e-6)
    again = unproject_depth(torch.from_numpy(arrays["depth"].reshape(-1, height, width)).double(),
                            torch.from_numpy(target.reshape(-1, 3, 4)), k).numpy()
    np.testing.assert_allclose(arrays["world_points"].reshape(again.shape), again, atol=2e-5)


def _jittered(steps: int, degrees: float, shift: float, seed: int = 5) -> np.ndarray:
    gen = np.random.default_rng(seed)
    rig = _poses(4, seed=6)
    out = np.empty((steps, 4, 3, 4))
    for t in range(steps):
        for v in range(4):
            rot = Rotation.from_rotvec(gen.normal(scale=np.radians(degrees) / 2, size=3)).as_matrix() @ rig[v, :, :3]
            centre = -rig[v, :, :3].T @ rig[v, :, 3] + gen.normal(scale=shift / 2, size=3)
            out[t, v] = np.concatenate([rot, -(rot @ centre)[:, None]], axis=1)
    return out


def test_rig_poses_average_the_steps_and_spread_measures_them():
    steps = _jittered(12, degrees=1.0, shift=0.01)
    rig = rig_poses(steps)
    truth = _poses(4, seed=6)
    assert rotation_angles_deg(rig[:, :, :3], truth[:, :, :3]).max() < 0.5
    found = spread(steps)
    assert 0.3 < found.rotation_deg.max() < 3.0 and found.centre.max() < 0.04
    assert spread(np.broadcast_to(rig, (5, *rig.shape))).rotation_deg.max() < 1e-3


def _window(extrinsic: np.ndarray) -> dict[str, np.ndarray]:
    return {"extrinsic": extrinsic.astype(np.float32), "depth": np.full((*extrinsic.shape[:2], 4, 4), 4.0, np.float32)}


def test_auto_tells_a_static_rig_from_a_moving_one():
    static = decide_rig("auto", _window(_jittered(8, degrees=2.0, shift=0.05)), "none")
    assert static.mode == "static" and "thresholds are 10° and 10 %" in static.reason
    moving = _jittered(8, degrees=0.5, shift=0.0)
    moving[..., 3] -= np.linspace(0, 2.0, 8)[:, None, None]  # the whole rig drives 2 units (half the depth)
    decision = decide_rig("auto", _window(moving), "none")
    assert decision.mode == "moving" and decision.spread.centre.max() > 1.5
    assert decide_rig("auto", _window(moving[:1]), "none").reason == "one time step"
    assert decide_rig("moving", _window(moving), "none").mode == "moving"


@pytest.mark.parametrize(
    ("rig", "calibrated", "match"),
    [("moving", "static", "one pose per camera, which describes a static rig"),
     ("static", "moving", "a pose per time step, which describes a moving rig")],
)
def test_a_rig_that_contradicts_the_calibration_is_refused(rig, calibrated, match):
    with pytest.raises(ValueError, match=match):
        decide_rig(rig, _window(_jittered(3, 1.0, 0.0)), calibrated)
    assert decide_rig("auto", _window(_jittered(3, 1.0, 0.0)), calibrated).mode == calibrated
