"""The fusion mask head ``M = σ(α·M̃ + b + β·m_ext)``: no per-frame z-score unless asked, so a frame can be
all static and a one-patch frame is finite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from page4d.aggregator.mask_head import FusionMaskHead


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
    logits, key, moving = head(torch.randn(3, 8, 1, 1), torch.ones(3, 1, 1))
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
    logits, key, moving = head(image, external)
    expected = torch.sigmoid(0.7 * head.convs(image)[:, 0] - 0.4 + 1.3 * (2 * external - 1))
    assert torch.allclose(moving, expected, atol=1e-12) and torch.equal(key, moving)
    assert torch.allclose(logits, head.convs(image)[:, 0], atol=1e-12)
