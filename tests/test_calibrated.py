"""Calibration in and static rigs (issue 14, parts 1 and 2) on tabletop4v with the shipped model: a calibrated run
is in the calibration's world and units, the per-camera check finds a wrong camera, lens distortion is removed
before the model, ``--rig static`` gives one pose per camera without raising the camera error, and bad
calibrations are one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import needs_shared, perturbed
from rigs import TABLETOP, distorted_clip, tabletop_cameras, write_colmap_calibration, write_toml
from scipy.spatial.transform import Rotation

from page4d.cli.main import main
from page4d.config import EpipolarConfig
from page4d.data.calibration import read_calibration
from page4d.data.sources import TimeSelection, open_input
from page4d.eval.metrics import trajectory_metrics
from page4d.presets import preset
from page4d.reconstruction.runner import WindowPlan, reconstruct

pytestmark = needs_shared
STEPS = 6
MODEL = "page4d-small"


@pytest.fixture(scope="module")
def clip():
    return open_input([TABLETOP], TimeSelection(frames=STEPS))[0]


@pytest.fixture(scope="module")
def rig():
    names, intrinsics, extrinsics, size = tabletop_cameras()
    return list(zip(names, intrinsics, extrinsics, strict=True)), size


def _depth_ratio(recon, clip) -> float:
    """Median predicted / ground-truth depth on the model grid: 1 when the depth is in the truth's units."""
    truth = clip.load_depths(recon.transforms).numpy()
    valid = truth > 0
    return float(np.median(recon.depth[valid] / truth[valid]))


def _points_gap(recon) -> float:
    """Median distance of the point head's points from the depth's, over the median depth (confident pixels)."""
    good = recon.depth_conf > np.median(recon.depth_conf)
    gap = np.linalg.norm(recon.world_points - recon.depth_points(), axis=-1)[good]
    return float(np.median(gap) / np.median(recon.depth[good]))


def _scaled(cameras, factor: float):
    return [(name, k, np.concatenate([w2c[:, :3], factor * w2c[:, 3:]], axis=1)) for name, k, w2c in cameras]


@pytest.mark.parametrize("fmt", ["toml", "colmap"])
def test_a_calibrated_run_is_in_the_calibration_s_world_and_units(clip, rig, tmp_path, fmt):
    """Cameras equal the calibration; depth is in its units with no scale fit against the truth (the same
    calibration in a world three times larger gives three times the depth); the points follow the cameras."""
    cameras, size = rig

    def write(folder, cams):
        folder.mkdir()
        if fmt == "toml":
            return write_toml(folder / "calibration.toml", cams, size)
        return write_colmap_calibration(folder / "sparse", cams, size)

    recon = reconstruct(MODEL, clip, progress=False, calibration=write(tmp_path / "a", cameras))
    for v, (_, k, w2c) in enumerate(cameras):
        np.testing.assert_allclose(recon.extrinsic[:, v], np.broadcast_to(w2c, (STEPS, 3, 4)), atol=1e-6)
        np.testing.assert_allclose(recon.intrinsic_original[:, v], np.broadcast_to(k, (STEPS, 3, 3)), rtol=1e-6)
    ratio = _depth_ratio(recon, clip)
    assert abs(ratio - 1) < 0.1
    # the point head's points move with the cameras: they are as close to the depth's points, relative to the
    # depth, as in the model's own world (page4d-small's two heads differ by about a quarter of the depth)
    assert abs(_points_gap(recon) / _points_gap(reconstruct(MODEL, clip, progress=False, rig="moving")) - 1) < 0.1
    assert recon.meta["world"] == "the calibration's world and units" and recon.meta["rig"]["mode"] == "static"
    check = recon.meta["calibration"]["check"]["cameras"]
    assert set(check) == {"view0", "view1", "view2", "view3"}
    assert all(c["rotation_deg"] < 15 and c["focal_error"] < 0.15 for c in check.values())
    larger = reconstruct(MODEL, clip, progress=False, calibration=write(tmp_path / "b", _scaled(cameras, 3.0)))
    assert abs(_depth_ratio(larger, clip) / ratio - 3) < 0.03
    np.testing.assert_allclose(larger.extrinsic[..., 3], 3 * recon.extrinsic[..., 3], rtol=1e-5, atol=1e-6)


def test_the_check_finds_the_camera_whose_calibration_is_wrong(clip, rig, tmp_path):
    """Rotating one camera's calibration by 30° stands out in the per-camera check; its output camera is still the
    calibration's (the user's calibration is authoritative)."""
    cameras, size = rig
    name, k, w2c = cameras[2]
    wrong = Rotation.from_rotvec([0.0, np.radians(30), 0.0]).as_matrix() @ w2c[:, :3]
    cameras = [*cameras[:2], (name, k, np.concatenate([wrong, w2c[:, 3:]], axis=1)), *cameras[3:]]
    recon = reconstruct(MODEL, clip, progress=False, calibration=write_toml(tmp_path / "c.toml", cameras, size))
    check = recon.meta["calibration"]["check"]["cameras"]
    assert check["view2"]["rotation_deg"] > 20
    assert max(check[n]["rotation_deg"] for n in ("view0", "view1", "view3")) < 15
    np.testing.assert_allclose(recon.extrinsic[:, 2, :, :3], np.broadcast_to(wrong, (STEPS, 3, 3)), atol=1e-6)


def test_lens_distortion_is_removed_before_the_model(rig, tmp_path):
    """Frames recorded through distorting lenses, given with their calibration, reach the model as the pinhole
    frames do (up to resampling), and without the calibration they do not."""
    cameras, size = rig
    lenses = [[-0.28, 0.09, 0.001, -0.001], [0.15, -0.05, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.002], [0.0, 0.0, 0.0, 0.0]]
    times = [0, 1]
    distorted = open_input([distorted_clip(tmp_path / "lens", times, lenses)])[0]
    pinhole = open_input([TABLETOP], TimeSelection(frames=2))[0]
    calibration = write_toml(tmp_path / "lens.toml", cameras, size, lenses)
    notes = []
    recon = reconstruct(MODEL, distorted, progress=False, calibration=calibration, log=notes.append)
    assert "calibration: lens distortion removed from the frames of view0, view1, view2" in notes
    reference = reconstruct(MODEL, pinhole, progress=False)
    raw = reconstruct(MODEL, distorted, progress=False)
    inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))  # the borders have no source pixels

    def gap(a, b) -> float:
        return float(np.abs(a.images[inner].astype(np.float64) - b.images[inner]).mean())

    assert np.array_equal(raw.images[:, 3], reference.images[:, 3])  # view 3 has no distortion
    assert gap(recon, reference) < 0.25 * gap(raw, reference)
    assert gap(recon, reference) < 2.0


def test_a_static_rig_has_one_pose_per_camera_and_no_larger_camera_error(tmp_path):
    """``--rig static`` over all 16 steps, in one window and in windows that share no step: every camera keeps one
    pose, the camera error (ATE against the truth) is not above the per-step poses', and the windows' depths
    share one scale."""
    clip = open_input([TABLETOP])[0]
    truth = clip.extrinsics.flatten(0, 1).double()

    def ate(recon) -> float:
        return trajectory_metrics(torch.from_numpy(recon.extrinsic).flatten(0, 1).double(), truth)["ate_rmse"]

    moving = reconstruct(MODEL, clip, progress=False, rig="moving")
    static = reconstruct(MODEL, clip, progress=False, rig="static")
    windows = reconstruct(MODEL, clip, progress=False, rig="static", plan=WindowPlan(window=6, overlap=0))
    assert len(windows.meta["windows"]) == 3 and windows.meta["windows"][1] == [6, 12]
    for recon in (static, windows):
        assert np.array_equal(recon.extrinsic, np.broadcast_to(recon.extrinsic[:1], recon.extrinsic.shape))
        assert ate(recon) <= 1.05 * ate(moving)
    assert np.abs(moving.extrinsic - moving.extrinsic[:1]).max() > 1e-3  # per-step poses do move
    truth_depth = clip.load_depths(windows.transforms).numpy()
    ratios = [np.median(windows.depth[a:b][truth_depth[a:b] > 0] / truth_depth[a:b][truth_depth[a:b] > 0])
              for a, b in ((0, 6), (6, 12), (10, 16))]
    assert max(ratios) / min(ratios) < 1.05
    auto = reconstruct(MODEL, clip, progress=False, plan=WindowPlan(window=8, overlap=2))
    assert auto.meta["rig"]["mode"] == "static" and auto.meta["rig"]["reason"].startswith("auto: over the first 8")


def test_calibrated_cameras_reach_an_epipolar_model_as_camera_priors(clip, rig, tmp_path, monkeypatch):
    cfg = preset("tiny")
    cfg.aggregator.epipolar = EpipolarConfig(view_blocks=(1,), band_px=10.0)
    model = perturbed(cfg)
    seen = []
    infer = model.infer
    monkeypatch.setattr(model, "infer", lambda images, inputs=None, **kw: (seen.append(inputs),
                                                                            infer(images, inputs, **kw))[1])
    cameras, size = rig
    recon = reconstruct(model, clip, size=56, progress=False, calibration=write_toml(tmp_path / "c.toml", cameras,
                                                                                       size))
    (inputs,) = seen
    k, e = inputs.camera_priors
    assert k.shape == (1, STEPS, 4, 3, 3) and e.shape == (1, STEPS, 4, 3, 4)
    np.testing.assert_allclose(k[0].numpy(), recon.intrinsic, rtol=1e-6)
    np.testing.assert_allclose(e[0].numpy(), recon.extrinsic, atol=1e-6)
    seen.clear()
    reconstruct(model, clip, size=56, progress=False)
    assert seen == [None]


def test_the_cli_takes_a_calibration_and_reports_the_check(clip, rig, tmp_path, capsys):
    """``--cameras``: the match and a line per camera are printed, cameras.json and the COLMAP model carry the
    calibration (read back as one, they are it), meta.json holds the check, and the library gives the same."""
    cameras, size = rig
    calibration = write_toml(tmp_path / "rig.toml", cameras, size)
    out = tmp_path / "out"
    assert main(["reconstruct", str(TABLETOP), "-o", str(out), "--frames", str(STEPS), "--cameras",
                 str(calibration), "--export", "colmap"]) == 0
    printed = capsys.readouterr().out
    assert "cameras matched by name: view0 -> view0, view1 -> view1, view2 -> view2, view3 -> view3" in printed
    assert "rig: static (the calibration has one pose per camera)" in printed
    lines = [line for line in printed.splitlines() if line.startswith("  view")]
    assert len(lines) == 4 and all("rotation" in line and "centre" in line and "focal" in line for line in lines)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["calibration"]["source"] == str(calibration) and meta["calibration"]["poses"] is True
    for path in (out / "cameras.json", out / "colmap" / "time_03"):
        for read, (name, k, w2c) in zip(read_calibration(path), cameras, strict=True):
            assert read.name == name and np.allclose(read.extrinsic, w2c, atol=1e-5)
            assert np.allclose(read.intrinsic, k, atol=1e-3)
    library = reconstruct(MODEL, clip, progress=False, calibration=calibration)
    with np.load(out / "predictions.npz") as saved:
        np.testing.assert_allclose(saved["depth"], library.depth, rtol=1e-6)
    assert meta["calibration"]["check"] == library.meta["calibration"]["check"]


def _bad(tmp_path, cameras, image_size, **fields):
    return write_toml(tmp_path / "bad.toml", cameras, image_size, **fields)


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p, c, s: _bad(p, c[:3], s), [], r"has 3 camera\(s\) \(view0, view1, view2\) for 4 view\(s\)"),
        (lambda p, c, s: _bad(p, [*c, ("view9", c[0][1], c[0][2])], s), [], r"has 5 camera\(s\)"),
        (lambda p, c, s: _bad(p, [("side", *c[0][1:]), *c[1:]], s), [], r"camera\(s\) side match no view"),
        (lambda p, c, s: _bad(p, c, s, translation="[0.0, nan, 1.0]"), [], "contains NaN or Inf"),
        (lambda p, c, s: _bad(p, c, s, size="[640, 640]"), [], "another aspect ratio, so the calibration cannot"),
        (lambda p, c, s: _bad(p, c, s), ["--rig", "moving"], "one pose per camera, which describes a static rig"),
    ],
)
def test_bad_calibrations_are_one_line_errors(rig, tmp_path, capsys, make, extra, message):
    cameras, size = rig
    path = make(tmp_path, cameras, size)
    out = tmp_path / "out"
    code = main(["reconstruct", str(TABLETOP), "-o", str(out), "--frames", "2", "--cameras", str(path), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err)
    assert not out.exists()


def test_a_rotation_that_is_not_one_is_a_one_line_error(tmp_path, capsys):
    cameras = json.loads((TABLETOP / "cameras.json").read_text())
    cameras["E_w2c"] = [[[[2 * x for x in row[:3]] + [row[3]] for row in e] for e in step] for step in cameras["E_w2c"]]
    (tmp_path / "cameras.json").write_text(json.dumps(cameras))
    out = tmp_path / "out"
    assert main(["reconstruct", str(TABLETOP), "-o", str(out), "--cameras", str(tmp_path / "cameras.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a rotation matrix" in err and not out.exists()
