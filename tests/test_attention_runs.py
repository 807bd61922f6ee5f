"""Attention plans in a reconstruction (issue 14, part 3): ``reconstruct(attention=...)`` / ``--attention``.

``per-step`` steps, each predicted in its own frame and scale, are registered through the static rig; it is
refused where nothing could register them; ``auto`` runs the layout the weights record; ``meta.json`` says which
plan ran. A stand-in model that predicts the truth as a per-step pass would (each step in the frame of its camera
(t, 0), at its own scale) makes the registration exactly checkable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import needs_shared, perturbed
from rigs import TABLETOP, tabletop_cameras, write_toml

from page4d.attention_plans import resolve_plan
from page4d.cli.main import main
from page4d.data.sources import TimeSelection, open_input
from page4d.outputs import Predictions
from page4d.presets import preset
from page4d.reconstruction.record import Reconstruction
from page4d.reconstruction.runner import WindowPlan, reconstruct

pytestmark = needs_shared
STEPS = 8
SIZE = 168
MODEL = "page4d-small"
SCALES = 1.0 + 0.25 * np.arange(STEPS)
"""The stand-in's scale of each step (a per-step pass normalises each step's scale on its own)."""


def _relative(world_to_camera: np.ndarray, reference: np.ndarray, scale: float) -> np.ndarray:
    """``[V, 3, 4]`` cameras in the frame of ``reference`` ``[3, 4]``, lengths times ``scale``."""
    rot = world_to_camera[:, :, :3] @ reference[:, :3].T
    trans = scale * (world_to_camera[:, :, 3] - rot @ reference[:, 3])
    return np.concatenate([rot, trans[..., None]], axis=-1)


def _rotation_y(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


class StepOracle(torch.nn.Module):
    """Predicts the clip's truth. Under ``per-step`` each step is in the frame of its camera (t, 0) and at the
    step's own scale ``SCALES[t]``; under another plan the window is in the frame of its camera (t0, 0) at one
    scale. ``wobble``: camera 1 turns this many degrees per step (it moves relative to the others)."""

    def __init__(self, clip, layout: str = "set", wobble: float = 0.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = preset("tiny")
        self.config.trained_layout = layout
        transforms = clip.transforms("crop", SIZE)
        self.depth = clip.load_depths(transforms).numpy().astype(np.float64)
        self.k = clip.model_intrinsics(transforms).numpy().astype(np.float64)
        self.extrinsic = clip.extrinsics.numpy().astype(np.float64).copy()
        for t in range(len(self.extrinsic)):
            self.extrinsic[t, 1, :, :3] = _rotation_y(wobble * t) @ self.extrinsic[t, 1, :, :3]
            self.extrinsic[t, 1, :, 3] = _rotation_y(wobble * t) @ self.extrinsic[t, 1, :, 3]
        self.frames = clip.load_images(mode="crop", target_size=SIZE)[0]
        self.plans: list[str] = []

    def world_points(self, t: int) -> np.ndarray:
        """``[V, H, W, 3]`` points of step ``t``'s true depth in the true world."""
        height, width = self.depth.shape[2:]
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
        pixels = np.stack([cols, rows, np.ones_like(rows)], axis=-1)
        out = []
        for v in range(self.depth.shape[1]):
            camera = pixels @ np.linalg.inv(self.k[t, v]).T * self.depth[t, v][..., None]
            rot, trans = self.extrinsic[t, v, :, :3], self.extrinsic[t, v, :, 3]
            out.append((camera - trans) @ rot)
        return np.stack(out)

    def infer(self, images, inputs=None, query_points=None, attention="auto"):
        plan = resolve_plan(attention, self.config).name
        self.plans.append(plan)
        # which steps of the clip these are: the frames of camera 0 they equal
        times = [int((self.frames[:, 0] - frame).abs().flatten(1).amax(1).argmin()) for frame in images[0, :, 0]]
        fields: dict[str, list[np.ndarray]] = {"extrinsic": [], "depth": [], "world_points": []}
        for t in times:
            reference, scale = (self.extrinsic[t, 0], SCALES[t]) if plan == "per-step" else (
                self.extrinsic[times[0], 0], 1.0)
            fields["extrinsic"].append(_relative(self.extrinsic[t], reference, scale))
            fields["depth"].append(scale * self.depth[t])
            points = self.world_points(t)
            fields["world_points"].append(scale * (points @ reference[:, :3].T + reference[:, 3]))
        out = {k: torch.from_numpy(np.stack(v)).float()[None] for k, v in fields.items()}
        return Predictions(
            extrinsic=out["extrinsic"], intrinsic=torch.from_numpy(self.k[times]).float()[None],
            depth=out["depth"][..., None], depth_conf=torch.ones_like(out["depth"]),
            world_points=out["world_points"], world_points_conf=torch.ones_like(out["depth"]))


@pytest.fixture(scope="module")
def clip():
    return open_input([TABLETOP], TimeSelection(frames=STEPS))[0]


@pytest.mark.parametrize("rig", ["static", "auto"])
def test_per_step_steps_are_registered_through_the_static_rig(clip, rig):
    """Every step, whatever its own frame and scale, lands on the first step's cameras: one pose per camera,
    depth and points in one scale (the first step's), in windows that share no step."""
    oracle = StepOracle(clip)
    recon = reconstruct(oracle, clip, size=SIZE, progress=False, rig=rig, attention="per-step",
                        plan=WindowPlan(window=4, overlap=2))
    assert oracle.plans == ["per-step", "per-step"] and recon.meta["windows"] == [[0, 4], [4, 8]]
    assert recon.meta["attention"] == "per-step" and recon.meta["rig"]["mode"] == "static"
    first = _relative(oracle.extrinsic[0], oracle.extrinsic[0, 0], SCALES[0])
    np.testing.assert_allclose(recon.extrinsic, np.broadcast_to(first, recon.extrinsic.shape), atol=1e-5)
    valid = oracle.depth > 0
    np.testing.assert_allclose(recon.depth[valid], SCALES[0] * oracle.depth[valid], rtol=1e-4)
    reference = oracle.extrinsic[0, 0]
    for t in (0, 5):
        expected = SCALES[0] * (oracle.world_points(t) @ reference[:, :3].T + reference[:, 3])
        np.testing.assert_allclose(recon.world_points[t][valid[t]], expected[valid[t]], atol=1e-3)
    if rig == "auto":
        assert "per-step sees each step in its own frame" in recon.meta["rig"]["reason"]


def test_per_step_without_registration_is_refused_before_any_work(clip, tmp_path):
    """A moving rig without calibration and a single camera leave nothing to register per-step steps on; a rig
    whose cameras turn relative to one another is found moving by ``auto`` and refused with the way out."""
    oracle = StepOracle(clip)
    with pytest.raises(ValueError, match="a moving rig's steps can only be put in one world by calibrated poses"):
        reconstruct(oracle, clip, size=SIZE, progress=False, rig="moving", attention="per-step")
    listing = tmp_path / "view0.txt"
    listing.write_text("\n".join(str(p) for p in sorted((TABLETOP / "images").glob("time_*/view0.png"))))
    single = open_input([listing], TimeSelection(frames=STEPS))[0]
    with pytest.raises(ValueError, match="with one camera nothing ties the steps together"):
        reconstruct(oracle, single, size=SIZE, progress=False, rig="static", attention="per-step")
    assert oracle.plans == []
    wobbly = StepOracle(clip, wobble=4.0)  # 28° over the 8 steps: 14° either side of its mean
    moves = r"needs a static rig, and the cameras move .* 14\.0° .*from one pose each.*--rig static"
    with pytest.raises(ValueError, match=moves):
        reconstruct(wobbly, clip, size=SIZE, progress=False, attention="per-step", plan=WindowPlan("all"))
    with pytest.raises(ValueError, match="attention 'sets': choose one of auto, set, per-step, factorised"):
        reconstruct(oracle, clip, size=SIZE, progress=False, attention="sets")


@pytest.mark.parametrize("layout", ["set", "factorised"])
def test_auto_runs_the_layout_the_weights_record(clip, layout):
    oracle, lines = StepOracle(clip, layout=layout), []
    recon = reconstruct(oracle, clip, size=SIZE, progress=False, rig="moving", plan=WindowPlan("all"),
                        log=lines.append)
    assert oracle.plans == [layout] and recon.meta["attention"] == layout
    assert f"attention: {layout} (auto: the weights were trained in the {layout} layout)" in lines


def test_a_set_layout_model_reconstructs_as_its_set_forward_pass(clip):
    """With weights recorded as trained on sets, the reconstruction's depth and cameras are the model's ``set``
    forward pass over all T·V frames, which is not its factorised one."""
    config = preset("tiny")
    config.trained_layout = "set"
    model = perturbed(config)
    recon = reconstruct(model, clip, size=56, progress=False, rig="moving", plan=WindowPlan("all"))
    images, _ = clip.load_images(mode="crop", target_size=56)
    as_set, factorised = (model.infer(images[None], attention=plan) for plan in ("set", "factorised"))
    np.testing.assert_allclose(recon.depth, as_set.depth[0, ..., 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recon.extrinsic, as_set.extrinsic[0].numpy(), atol=1e-5)
    # the negative control: the factorised pass over the same frames gives other cameras (0.39 apart here)
    assert np.abs(recon.extrinsic - factorised.extrinsic[0].numpy()).max() > 0.05


def test_the_cli_runs_per_step_through_a_static_rig_and_a_calibration(tmp_path, capsys):
    """``--attention per-step`` with the shipped model: one pose per camera (static rig), the calibration's
    cameras and units with a calibration; the plan is printed and in meta.json; a moving rig is a one-line
    error that leaves no output."""
    frames = ["--frames", "6", "--export", "none", "--attention", "per-step"]
    out = tmp_path / "static"
    assert main(["reconstruct", str(TABLETOP), "-o", str(out), "--rig", "static", *frames]) == 0
    printed = capsys.readouterr().out
    assert "attention: per-step (as asked)" in printed and "attention per-step;" in printed
    assert json.loads((out / "meta.json").read_text())["attention"] == "per-step"
    cameras = json.loads((out / "cameras.json").read_text())
    poses = np.asarray(cameras["E_w2c"])
    assert poses.shape == (6, 4, 3, 4) and np.array_equal(poses, np.broadcast_to(poses[:1], poses.shape))
    library = reconstruct(MODEL, open_input([TABLETOP], TimeSelection(frames=6))[0], progress=False, rig="static",
                          attention="per-step")
    np.testing.assert_allclose(poses, library.extrinsic, atol=1e-6)  # the CLI and the library agree

    names, intrinsics, extrinsics, size = tabletop_cameras()
    toml = write_toml(tmp_path / "calibration.toml", list(zip(names, intrinsics, extrinsics, strict=True)), size)
    out = tmp_path / "calibrated"
    assert main(["reconstruct", str(TABLETOP), "-o", str(out), "--cameras", str(toml), *frames]) == 0
    capsys.readouterr()
    poses = np.asarray(json.loads((out / "cameras.json").read_text())["E_w2c"])
    np.testing.assert_allclose(poses, np.broadcast_to(extrinsics, poses.shape), atol=1e-6)
    with np.load(out / "predictions.npz") as saved:
        predicted = saved["depth"]
    clip = open_input([TABLETOP], TimeSelection(frames=6))[0]
    meta = json.loads((out / "meta.json").read_text())
    truth = clip.load_depths(Reconstruction.load(out).transforms).numpy()
    assert meta["attention"] == "per-step"
    assert abs(np.median(predicted[truth > 0] / truth[truth > 0]) - 1) < 0.1  # calibration units, no scale fit

    out = tmp_path / "moving"
    assert main(["reconstruct", str(TABLETOP), "-o", str(out), "--rig", "moving", *frames]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "calibrated poses" in error[0] and not out.exists()


def test_per_step_steps_land_on_calibrated_poses_per_time_step(clip, tmp_path):
    """A rig that moves as a whole, with a pose per time step in its calibration: each per-step step (which cannot
    see that motion) is placed on its own step's calibrated cameras, in the calibration's units, whatever scale it
    came at."""
    oracle = StepOracle(clip)
    cameras = json.loads((TABLETOP / "cameras.json").read_text())
    truth = np.asarray(cameras["E_w2c"], dtype=np.float64)
    for t in range(len(truth)):  # the world moves by [R_t | c_t] at step t: w2c_t = w2c · [R_t | c_t]⁻¹
        rot, shift = _rotation_y(5.0 * t), np.array([0.1 * t, 0.0, 0.05 * t])
        truth[t, :, :, :3] = truth[t, :, :, :3] @ rot.T
        truth[t, :, :, 3] = truth[t, :, :, 3] - np.einsum("vij,j->vi", truth[t, :, :, :3], shift)
    cameras["E_w2c"] = truth.tolist()
    (tmp_path / "cameras.json").write_text(json.dumps(cameras))
    recon = reconstruct(oracle, clip, size=SIZE, progress=False, rig="moving", attention="per-step",
                        calibration=tmp_path / "cameras.json", plan=WindowPlan(window=3))
    assert recon.meta["rig"]["mode"] == "moving" and recon.meta["windows"] == [[0, 3], [3, 6], [6, 8]]
    np.testing.assert_allclose(recon.extrinsic, truth[:STEPS], atol=1e-5)
    valid = oracle.depth > 0
    np.testing.assert_allclose(recon.depth[valid], oracle.depth[valid], rtol=1e-4)
    check = recon.meta["calibration"]["check"]["cameras"]
    assert all(c["rotation_deg"] < 0.05 for c in check.values())  # arccos of float32 rotations: ~0.03° at best
