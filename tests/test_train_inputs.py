"""Optional forward inputs in training: corrupted external masks, coarse cameras and keypoint maps are made from
the ground truth as configured, reach the model, and train β, the gate and λ_kpt (which stay put without them)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from page4d.config import EpipolarConfig
from page4d.data.synthetic import SceneConfig
from page4d.model import Page4D
from page4d.presets import preset
from page4d.reconstruction.rig import rotation_angles_deg
from page4d.train.config import TrainConfig
from page4d.train.inputs import InputsConfig, corrupted_mask, keypoint_map, noisy_priors
from page4d.train.trainer import Trainer

SCENE = SceneConfig(num_times=2, num_views=2, height=28, width=42)


def square(size: int = 16, low: int = 5, high: int = 11) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., low:high, low:high] = True
    return mask


@pytest.mark.parametrize("radius", [2, -2, 0])
def test_a_frame_mask_is_dilated_or_eroded_by_the_drawn_radius(radius):
    """Against the definition by loops: dilation by r sets every pixel within r (Chebyshev) of the mask, erosion
    keeps the pixels whose whole r-neighbourhood is in the mask."""
    mask = square()
    cfg = InputsConfig(mask_radius_px=abs(radius), mask_drop=0.0)

    class Fixed:  # a generator that draws the radius asked for and never drops
        def integers(self, low, high):
            return radius

        def random(self):
            return 1.0

    out = corrupted_mask(mask, Fixed(), cfg)[0, 0]
    size, r = mask.shape[-1], abs(radius)
    expected = torch.zeros(size, size)
    for y in range(size):
        for x in range(size):
            near = mask[0, 0, max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1]
            inside = bool(near.any()) if radius > 0 else bool(near.all()) and near.numel() == (2 * r + 1) ** 2
            expected[y, x] = float(inside if radius else mask[0, 0, y, x])
    assert torch.equal(out, expected)


def test_dropped_frames_are_empty_and_the_corruption_is_reproducible():
    mask = square().expand(3, 4, -1, -1)
    cfg = InputsConfig(mask_radius_px=2, mask_drop=0.5)
    a, b = (corrupted_mask(mask, np.random.default_rng(3), cfg) for _ in range(2))
    assert torch.equal(a, b)
    empty = a.flatten(2).amax(-1) == 0
    assert 0 < empty.sum() < 12  # some frames dropped, not all
    areas = a.flatten(2).sum(-1)[~empty]
    assert len(set(areas.tolist())) > 1  # radii differ from frame to frame


def test_coarse_cameras_are_off_by_the_configured_amount_once_per_view():
    truth_k = torch.tensor([[100.0, 0, 20], [0, 100, 14], [0, 0, 1]], dtype=torch.float64).expand(3, 8, 3, 3)
    angles = torch.linspace(0, 2 * np.pi, 9, dtype=torch.float64)[:8]
    centres = torch.stack([4 * angles.cos(), 4 * angles.sin(), torch.full_like(angles, 1.5)], dim=-1)
    forward = -centres / centres.norm(dim=-1, keepdim=True)
    right = torch.nn.functional.normalize(torch.cross(forward, torch.tensor([0, 0, 1.0], dtype=torch.float64)
                                                      .expand(8, 3), dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=1)  # world-to-camera rows
    extrinsics = torch.cat([rotation, -(rotation @ centres[..., None])], dim=-1).expand(3, 8, 3, 4)
    exact_k, exact = noisy_priors(truth_k, extrinsics, np.random.default_rng(0),
                                  InputsConfig(prior_rotation_deg=0, prior_translation=0, prior_focal=0))
    assert torch.allclose(exact, extrinsics, atol=1e-12) and torch.allclose(exact_k, truth_k)
    cfg = InputsConfig(prior_rotation_deg=3.0, prior_translation=0.05, prior_focal=0.05)
    k, coarse = noisy_priors(truth_k, extrinsics, np.random.default_rng(1), cfg)
    assert torch.equal(coarse[0], coarse[2]) and torch.equal(k[0], k[1])  # one error per view, every step
    turned = rotation_angles_deg(coarse[0, :, :, :3].numpy(), extrinsics[0, :, :, :3].numpy())
    # |rotation vector| of N(0, σ²) per axis: a χ with 3 dof, mean σ·√(8/π) ≈ 4.8° for σ = 3°
    assert 2.0 < turned.mean() < 8.0 and (turned > 0.1).all()
    moved = lambda e: -(e[..., :3].transpose(-1, -2) @ e[..., 3:])[..., 0]  # noqa: E731 - camera centres
    offset = (moved(coarse[0]) - moved(extrinsics[0])).norm(dim=-1)
    assert 0.05 < offset.mean() < 0.6  # σ = 0.05 × extent 4 per axis: mean |offset| ≈ 0.32
    ratio = k[0, :, 0, 0] / 100
    assert torch.equal(k[0, :, 0, 0], k[0, :, 1, 1]) and 0.005 < (ratio - 1).abs().mean() < 0.15


def test_the_keypoint_map_peaks_at_corners():
    image = torch.zeros(1, 1, 3, 32, 32)
    image[..., 8:24, 8:24] = 1.0
    strength = keypoint_map(image)[0, 0]
    assert strength.min() >= 0 and strength.max() == 1
    corner, edge, flat = strength[8, 8], strength[16, 8], strength[16, 16]
    assert corner > 0.5 and edge < 0.1 * corner and flat == 0


def test_presence_follows_the_probabilities_and_every_rank_agrees():
    cfg = InputsConfig(external_mask=0.5, camera_priors=1.0, keypoints=0.0)
    drawn = [cfg.present(0, step) for step in range(400)]
    assert all("camera_priors" in d and "keypoints" not in d for d in drawn)
    assert 150 < sum("external_mask" in d for d in drawn) < 250
    assert drawn == [cfg.present(0, step) for step in range(400)]  # a function of (seed, step) only


def model_folder(tmp_path, gate: str):
    """tiny-mv (fusion head, sparse landmarks) with the keypoint bias and an epipolar prior, saved as a folder."""
    cfg = preset("tiny-mv")
    mask = dataclasses.replace(cfg.aggregator.dynamic_mask, gate=gate)
    sparse = dataclasses.replace(cfg.aggregator.sparse_global, keypoint_bias=True)
    cfg.aggregator = dataclasses.replace(cfg.aggregator, dynamic_mask=mask, sparse_global=sparse,
                                         epipolar=EpipolarConfig(view_blocks=(1, 2)))
    torch.manual_seed(0)
    model = Page4D(cfg)
    with torch.no_grad():  # the sparse block past its identity start (LayerScale 0 passes no gradient to λ_kpt)
        model.aggregator.sparse_blocks[0].block.ls1.gamma.fill_(0.1)
    folder = tmp_path / f"model_{gate}"
    folder.mkdir()
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("gate", ["scalar", "mlp"])
def test_the_inputs_reach_the_model_and_train_beta_the_gate_and_lambda_kpt(tmp_path, gate):
    folder = model_folder(tmp_path, gate)

    def gradients(inputs: InputsConfig) -> dict[str, float]:
        trainer = Trainer(TrainConfig(init=str(folder), scene=SCENE, steps=2, inputs=inputs), tmp_path / "run")
        batch = trainer.batches.batch(0)
        trainer.train_step()
        agg = trainer.model.aggregator
        head = agg.dynamic_mask_head
        beta = head.beta.grad if gate == "scalar" else head.gate[2].weight.grad[1]  # the gate's β row
        kpt = agg.sparse_blocks[0].lambda_kpt.grad
        return {"beta": 0.0 if beta is None else float(beta.abs().sum()),
                "lambda_kpt": 0.0 if kpt is None else float(kpt.abs().sum()), "batch": sorted(batch)}

    on = gradients(InputsConfig(external_mask=1.0, camera_priors=1.0, keypoints=1.0))
    off = gradients(InputsConfig())
    assert {"external_mask", "prior_intrinsics", "prior_extrinsics", "keypoints"} <= set(on["batch"])
    assert not {"external_mask", "prior_intrinsics", "keypoints"} & set(off["batch"])
    assert on["beta"] > 0 and on["lambda_kpt"] > 0
    assert off["beta"] == 0 and off["lambda_kpt"] == 0


def test_an_input_the_model_cannot_read_is_refused_before_the_run():
    with pytest.raises(ValueError, match="inputs.camera_priors is 1.0, but the model has no epipolar prior in any "
                                         "view block to read it"):
        TrainConfig(model="tiny-mv", scene=SCENE, inputs=InputsConfig(camera_priors=1.0))
    with pytest.raises(ValueError, match=r"config.inputs.keypoints: got 1.5; use a probability in \[0, 1\]"):
        TrainConfig(model="tiny-mv", scene=SCENE, inputs=InputsConfig(keypoints=1.5))
