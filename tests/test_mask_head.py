"""The fusion gate ``M = σ(α·M̃ + b + β·m_ext)``: no per-frame z-score unless asked, so a frame can be all
static and a one-patch frame is finite; it wraps PAGE-4D's heads too (``dynamic_mask.fuse``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from page4d.aggregator.mask_head import FusionGate, FusionMaskHead, build_mask_head, compute_mask
from page4d.config import DynamicMaskConfig
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.presets import preset


def _fit_all_static(head: FusionMaskHead, steps: int = 150) -> torch.Tensor:
    """Train ``head`` with BCE towards "nothing moves" on random frames; returns M on unseen frames."""
    torch.manual_seed(1)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(steps):
        moving = head(torch.randn(4, 8, 5, 6))[2]
        loss = F.binary_cross_entropy(moving, torch.zeros_like(moving))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return head(torch.randn(4, 8, 5, 6))[2]


@pytest.mark.parametrize("gate", ["scalar", "mlp"])
def test_an_all_static_target_is_learnable(gate):
    """Every patch of unseen frames ends up below 0.1 (a per-frame z-score with no bias keeps about half of
    every frame above 0.5 whatever the weights)."""
    torch.manual_seed(0)
    moving = _fit_all_static(FusionMaskHead(8, gate))
    assert moving.max() < 0.1


def test_the_z_score_without_a_bias_cannot_learn_an_all_static_frame():
    """The off-by-default normalisation, bias held at 0: z-scores sum to 0 over a frame, so (softplus being
    convex) the mean BCE towards "static" is at least log 2 however the convs are trained, while the default
    head gets it near 0."""
    torch.manual_seed(0)
    head = FusionMaskHead(8, "scalar", normalise=True)
    head.bias.requires_grad_(False)
    moving = _fit_all_static(head)
    assert F.binary_cross_entropy(moving, torch.zeros_like(moving)) >= torch.log(torch.tensor(2.0)) - 1e-5
    torch.manual_seed(0)
    default = _fit_all_static(FusionMaskHead(8, "scalar"))
    assert F.binary_cross_entropy(default, torch.zeros_like(default)) < 0.05


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("gate", ["scalar", "mlp"])
def test_a_one_patch_frame_is_finite(gate, normalise):
    torch.manual_seed(0)
    head = FusionMaskHead(8, gate, normalise)
    logits, key, moving, _ = head(torch.randn(3, 8, 1, 1), torch.ones(3, 1, 1))
    assert torch.isfinite(torch.stack([logits, key, moving])).all()
    assert moving.shape == (3, 1, 1)


def test_the_fusion_is_the_formula():
    """M = σ(α·M̃ + b + β·(2·M_ext − 1)) with the head's own conv output as M̃, checked in float64."""
    torch.manual_seed(0)
    head = FusionMaskHead(8, "scalar").double()
    with torch.no_grad():
        head.alpha.fill_(0.7)
        head.beta.fill_(1.3)
        head.bias.fill_(-0.4)
    image, external = torch.randn(2, 8, 3, 4, dtype=torch.float64), torch.rand(2, 3, 4, dtype=torch.float64)
    logits, key, moving, estimate = head(image, external)
    expected = torch.sigmoid(0.7 * head.convs(image)[:, 0] - 0.4 + 1.3 * (2 * external - 1))
    assert torch.allclose(moving, expected, atol=1e-12) and torch.equal(key, moving)
    assert torch.allclose(logits, head.convs(image)[:, 0], atol=1e-12)


@pytest.mark.parametrize("head_name", ["fin10", "release"])
def test_a_fused_page4d_head_starts_as_its_own_moving_probability_and_takes_an_external_mask(head_name):
    """``dynamic_mask.fuse``: the gate around PAGE-4D's head gives σ(M̃) = the head's own moving probability at
    initialisation (no external mask), and an external mask pulls M towards it."""
    torch.manual_seed(0)
    cfg = DynamicMaskConfig(head=head_name, bias="pose_geo", fuse=True)
    head, gate = build_mask_head(cfg, 8), FusionGate(8, cfg.gate, cfg.normalise)
    tokens = torch.randn(1, 2, 2, 5 + 12, 8)
    plain = compute_mask(head, tokens, (3, 4), 5)
    fused = compute_mask(head, tokens, (3, 4), 5, fusion=gate)
    assert torch.allclose(fused.moving, plain.moving, atol=1e-6) and torch.equal(fused.key, fused.moving)
    assert not torch.allclose(plain.key, plain.moving)  # unfused, PAGE-4D's key is its own bias value
    external = torch.zeros(1, 2, 2, 3, 4)
    external[..., :2] = 1.0
    pulled = compute_mask(head, tokens, (3, 4), 5, external, fusion=gate)
    assert (pulled.moving[..., :2] > fused.moving[..., :2]).all()
    assert (pulled.moving[..., 2:] < fused.moving[..., 2:]).all()


def test_a_multi_view_model_with_a_fused_page4d_head_reads_external_masks_and_trains_the_gate():
    cfg = preset("tiny-mv")
    mask = dataclasses.replace(cfg.aggregator.dynamic_mask, head="fin10", fuse=True)
    cfg.aggregator = dataclasses.replace(cfg.aggregator, dynamic_mask=mask)
    torch.manual_seed(0)
    model = Page4D(cfg).train()
    keys = model.state_dict().keys()
    assert {"aggregator.mask_fusion.alpha", "aggregator.mask_fusion.beta", "aggregator.mask_fusion.bias"} <= keys
    assert any(k.startswith("aggregator.spatial_mask_head.head0.") for k in keys)
    images = torch.rand(1, 2, 2, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    external = (torch.rand(1, 2, 2, 28, 42, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    pred = model(images, ForwardInputs(external_mask=external))
    pred.dynamic_mask.mean().backward()
    for name in ("alpha", "beta", "bias"):
        assert getattr(model.aggregator.mask_fusion, name).grad.abs() > 0, name


@pytest.mark.parametrize(("changes", "match"), [({"head": "fusion"}, "the fusion head always fuses"),
                                                ({"bias": "page4d"}, "use it with bias 'pose_geo'")])
def test_fuse_is_refused_where_it_means_nothing(changes, match):
    with pytest.raises(ValueError, match=match):
        DynamicMaskConfig(**{"head": "fin10", "bias": "pose_geo", "fuse": True, **changes}).validate(4)
