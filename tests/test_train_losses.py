"""Training losses (hand-computed values, polarity) and freezing by patterns."""

from __future__ import annotations

import math

import pytest
import torch

from page4d.model import Page4D
from page4d.presets import preset
from page4d.train.freeze import train_only
from page4d.train.losses import camera_loss, dense_loss, gradient_loss, mask_loss, weighted_sum


def test_camera_loss_weights_later_iterations_more():
    target = torch.zeros(1, 1, 2, 9)
    first, last = target.clone(), target.clone()
    first[..., 0] = 2.0  # translation error 2 on one of 3 coordinates: mean 2/3
    last[..., 3] = 4.0  # quaternion error 4 on one of 4: mean 1
    last[..., 7] = 1.0  # FoV error 1 on one of 2: mean 0.5
    terms = camera_loss([first, last], target, gamma=0.6)
    # Iteration weights 0.6 / 2 and 1 / 2.
    assert math.isclose(terms["camera_T"].item(), 0.3 * 2 / 3, rel_tol=1e-6)
    assert math.isclose(terms["camera_R"].item(), 0.5 * 1.0, rel_tol=1e-6)
    assert math.isclose(terms["camera_FoV"].item(), 0.5 * 0.5, rel_tol=1e-6)
    assert math.isclose(terms["camera"].item(), 0.2 + 0.5 + 0.5 * 0.25, rel_tol=1e-6)
    assert camera_loss([target, target], target)["camera"].item() == 0.0


def test_camera_loss_clamps_translation_and_skips_invalid_frames():
    target = torch.zeros(1, 1, 2, 9)
    pred = target.clone()
    pred[0, 0, 0, :3] = 1000.0
    pred[0, 0, 1, 3] = 8.0
    clamped = camera_loss([pred], target, max_translation=100.0)
    assert math.isclose(clamped["camera_T"].item(), 100.0 * 3 / 6, rel_tol=1e-6)
    only_second = camera_loss([pred], target, valid=torch.tensor([[[False, True]]]))
    assert only_second["camera_T"].item() == 0.0 and math.isclose(only_second["camera_R"].item(), 2.0, rel_tol=1e-6)


def test_camera_rotation_loss_is_the_same_for_q_and_minus_q():
    """A camera 179° from the reference and one 181° from it are 2° apart, though their standardised (w ≥ 0)
    quaternions differ in the sign of xyz: the rotation term measures the 2°, not the sign flip."""
    def encoding(degrees: float) -> torch.Tensor:
        half = math.radians(degrees) / 2
        q = torch.tensor([0.0, math.sin(half), 0.0, math.cos(half)])  # xyzw, about y
        q = q if q[3] >= 0 else -q  # the targets' convention
        return torch.cat([torch.zeros(3), q, torch.ones(2)]).view(1, 1, 1, 9)

    near = camera_loss([encoding(179.0)], encoding(181.0))["camera_R"].item()
    plain = (encoding(179.0) - encoding(181.0))[..., 3:7].abs().mean().item()
    assert plain > 0.4  # what a plain L1 would charge: the xyz part flipped
    assert near == pytest.approx(2 * math.sin(math.radians(0.5)) / 4, rel=1e-5)  # |Δw| = 2 sin(0.5°); Δy = 0
    flipped = encoding(30.0).clone()
    flipped[..., 3:7] *= -1
    assert camera_loss([flipped], encoding(30.0))["camera_R"].item() == 0.0


def test_dense_loss_hand_computed():
    target = torch.zeros(1, 2, 3, 1)
    pred = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0, 0.0]).view(1, 2, 3, 1)
    conf = torch.full((1, 2, 3), 2.0)
    valid = torch.ones(1, 2, 3, dtype=torch.bool)
    terms = dense_loss(pred, conf, target, valid, "depth", gamma=0.5, alpha=0.1, quantile=1.0)
    assert math.isclose(terms["depth_reg"].item(), 3 / 6, rel_tol=1e-6)
    assert math.isclose(terms["depth_conf"].item(), 0.5 * 2 * 3 / 6 - 0.1 * math.log(2), rel_tol=1e-6)
    # Stride 1: x-differences |1|, |1| and 0, 0 (4 pairs): 0.5; y-differences |0|, |1|, |2| (3 pairs): 1.
    # Strides 2 and 4 see pixels (0, 0), (0, 2) / (0, 0) only: x-difference 2 (1 pair), nothing else.
    assert math.isclose(terms["depth_grad"].item(), (0.5 + 1.0 + 2.0 + 0.0) / 3, rel_tol=1e-6)
    perfect = dense_loss(target, conf, target, valid, "depth", gamma=0.5, alpha=0.1)
    assert perfect["depth_reg"].item() == 0.0 and perfect["depth_grad"].item() == 0.0


def test_dense_loss_drops_errors_above_the_quantile():
    target = torch.zeros(1, 1, 50, 3)
    pred = target.clone()
    pred[0, 0, :, 0] = torch.arange(50, dtype=torch.float32)
    pred[0, 0, 49, 0] = 1e6  # one wild outlier
    valid = torch.ones(1, 1, 50, dtype=torch.bool)
    terms = dense_loss(pred, torch.ones(1, 1, 50), target, valid, "point", gamma=1.0, alpha=0.2, quantile=0.98)
    assert math.isclose(terms["point_reg"].item(), sum(range(49)) / 49, rel_tol=1e-6)


def test_gradient_loss_ignores_pairs_with_an_invalid_pixel():
    error = torch.tensor([0.0, 5.0, 0.0]).view(1, 1, 3, 1)
    valid = torch.tensor([[[True, False, True]]])
    assert gradient_loss(error, valid, scales=1).item() == 0.0
    assert gradient_loss(error, torch.ones_like(valid), scales=1).item() == 5.0


def test_mask_loss_polarity_one_is_moving():
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    right, inverted = mask_loss(target * 0.9 + 0.05, target), mask_loss(0.95 - target * 0.9, target)
    assert math.isclose(right["mask_bce"].item(), -math.log(0.95), rel_tol=1e-5)
    assert math.isclose(inverted["mask_bce"].item(), -math.log(0.05), rel_tol=1e-5)
    assert right["mask_dice"] < 0.06 < 0.9 < inverted["mask_dice"]
    valid = torch.tensor([[True, True, False, False]])
    assert math.isclose(mask_loss(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), target, valid)["mask_bce"].item(),
                        math.log(2), rel_tol=1e-5)


def test_weighted_sum_names_unknown_weights():
    terms = {"camera": torch.tensor(2.0), "depth_reg": torch.tensor(3.0)}
    assert weighted_sum(terms, {"camera": 5.0, "depth_reg": 1.0}).item() == 13.0
    with pytest.raises(ValueError, match=r"unknown terms \['depht_reg'\]"):
        weighted_sum(terms, {"depht_reg": 1.0})


def test_train_only_freezes_everything_else():
    model = Page4D(preset("tiny"))
    trained = train_only(model, ["aggregator.time_blocks.{1..2}.*", "camera_head.*"])
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("aggregator.time_blocks.1.", "aggregator.time_blocks.2.", "camera_head."))}
    assert set(trained) == expected and len(expected) > 0
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    with pytest.raises(ValueError, match=r"1 patterns match no target key: aggregator\.tiem_blocks\.\*"):
        train_only(model, ["aggregator.tiem_blocks.*", "depth_head.*"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected  # unchanged on error
