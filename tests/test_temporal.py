"""Relative temporal encoding in the time bank: identity at init and at T = 1, relative in t, trainable."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import fused_and_dense, perturbed, twin

from page4d.model import Page4D
from page4d.nn import RotaryEmbedding2D, TimeRotation
from page4d.presets import preset


def temporal_model(scale: float = 0.0) -> Page4D:
    cfg = preset("tiny")
    cfg.aggregator = dataclasses.replace(cfg.aggregator, temporal_rope=True)
    model = perturbed(cfg)
    with torch.no_grad():
        model.aggregator.temporal_rope.scale.fill_(scale)
    return model


def plain_twin(model: Page4D) -> Page4D:
    return twin(model, temporal_rope=False)


IMAGES = torch.rand(1, 3, 2, 3, 28, 42, generator=torch.Generator().manual_seed(3))


def outputs_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("pose_enc", "depth", "world_points"))


def test_zero_scale_is_the_plain_model_bit_for_bit():
    model = temporal_model(0.0)
    with torch.no_grad():
        assert outputs_equal(model(IMAGES), plain_twin(model)(IMAGES))


def test_one_time_step_is_the_identity_even_with_nonzero_scale():
    model = temporal_model(0.7)
    with torch.no_grad():
        assert outputs_equal(model(IMAGES[:, :1]), plain_twin(model)(IMAGES[:, :1]))
        assert not torch.allclose(model(IMAGES).pose_enc, plain_twin(model)(IMAGES).pose_enc, atol=1e-4)


def test_rotation_depends_only_on_the_time_difference():
    rope = RotaryEmbedding2D(100.0)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 1, 16, generator=gen, dtype=torch.double)
    k = torch.randn(1, 3, 1, 16, generator=gen, dtype=torch.double)
    scale = torch.tensor([0.3, -1.2, 2.0], dtype=torch.double)

    def score(tq: float, tk: float) -> torch.Tensor:
        rq = rope.rotate_time(q, TimeRotation(torch.tensor([tq]), scale))
        rk = rope.rotate_time(k, TimeRotation(torch.tensor([tk]), scale))
        return (rq * rk).sum(-1)

    assert torch.allclose(score(5.0, 2.0), score(9.0, 6.0), atol=1e-12)
    assert not torch.allclose(score(5.0, 2.0), score(5.0, 3.0), atol=1e-3)
    assert torch.allclose(score(4.0, 4.0), (q * k).sum(-1), atol=1e-12)


def test_scale_trains_from_zero():
    model = temporal_model(0.0).train()
    pred = model(IMAGES)
    (pred.pose_enc.sum() + pred.depth.mean()).backward()
    grad = model.aggregator.temporal_rope.scale.grad
    assert grad is not None and (grad.abs().sum(-1) > 0).all()


def test_only_sequences_spanning_time_are_rotated():
    """With the time bank run as per-frame attention no sequence spans two time steps: scales change nothing."""
    model = temporal_model(0.9)

    framewise = {"time": "frame", "view": "view"}
    with torch.no_grad():
        rotated = twin(model, bank_kinds=framewise)(IMAGES)
        assert outputs_equal(rotated, twin(model, bank_kinds=framewise, temporal_rope=False)(IMAGES))


def test_fused_equals_dense_with_time_rotation():

    model = temporal_model(0.6)
    fused, dense = fused_and_dense(model, IMAGES)
    assert torch.allclose(fused.pose_enc, dense.pose_enc, atol=1e-5)
    assert torch.allclose(fused.depth, dense.depth, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("s", [0.5, 1.0, 3.0])
def test_a_time_step_is_not_a_spatial_shift(s):
    """A key at (Δy, Δx, Δt) = (s, s, 1) under a time scale of -s: with the spatial frequencies its rotation
    cancels exactly (it reads as the key at (0, 0, 0), the confound the own frequencies remove); with the
    time rotation's own frequencies it does not."""
    rope = RotaryEmbedding2D(100.0)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 1, 16, generator=gen, dtype=torch.double)
    k = torch.randn(1, 2, 1, 16, generator=gen, dtype=torch.double)
    scale = torch.full((2,), -s, dtype=torch.double)

    def score(key_at: tuple[float, float], t: float, own: bool) -> torch.Tensor:
        moved = rope(k, torch.tensor([key_at], dtype=torch.double))
        moved = rope.rotate_time(moved, TimeRotation(torch.tensor([t]), scale, own_frequencies=own))
        return (q * moved).sum(-1)

    at_origin = (q * k).sum(-1)
    assert torch.allclose(score((s, s), 1.0, own=False), at_origin, atol=1e-12)
    assert (score((s, s), 1.0, own=True) - at_origin).abs().max() > 1e-2
    for own in (False, True):  # either frequency set still rotates by t - t' only
        assert torch.allclose(score((0.0, 0.0), 0.0, own), at_origin, atol=1e-12)


def test_the_model_uses_the_own_frequencies_unless_told():
    """The configured frequency set reaches the time blocks: the two settings give different outputs for T > 1
    and the same for T = 1."""
    model = temporal_model(0.7)
    spatial = twin(model, temporal_frequencies="spatial")
    with torch.no_grad():
        assert not torch.allclose(model(IMAGES).pose_enc, spatial(IMAGES).pose_enc, atol=1e-5)
        assert outputs_equal(model(IMAGES[:, :1]), spatial(IMAGES[:, :1]))
