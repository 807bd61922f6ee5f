"""Token reduction: listed blocks run on f × f-pooled patch tokens, their update spread back over each window;
identity when off, full-size layer outputs, an independent loop reference for reduced time and view blocks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import perturbed, twin

from page4d.aggregator.reduction import TokenPooling
from page4d.config import TokenReductionConfig
from page4d.nn import RowKeyBias, TimeRotation
from page4d.nn.attention import NO_EXTRAS
from page4d.presets import preset

SPECIAL = 5
"""tiny-mv's camera and register tokens per frame."""
IMAGES = torch.rand(1, 3, 2, 3, 42, 70, generator=torch.Generator().manual_seed(4))
"""3 steps × 2 views at 3 × 5 patches: odd in both directions, so 2 × 2 windows include edge windows."""


def windows(h: int, w: int, f: int) -> list[list[int]]:
    """Patch indices (row-major) of each f × f window, windows row-major, edge windows smaller."""
    return [[r * w + c for r in range(wr, min(wr + f, h)) for c in range(wc, min(wc + f, w))]
            for wr in range(0, h, f) for wc in range(0, w, f)]


def pooled_by_loops(x: torch.Tensor, h: int, w: int, f: int) -> torch.Tensor:
    """``[..., SPECIAL + h·w, C]`` -> special tokens, then each window's mean (loops, no pooling op)."""
    means = [x[..., [SPECIAL + i for i in window], :].mean(dim=-2) for window in windows(h, w, f)]
    return torch.cat([x[..., :SPECIAL, :], torch.stack(means, dim=-2)], dim=-2)


def spread_by_loops(full: torch.Tensor, update: torch.Tensor, h: int, w: int, f: int) -> torch.Tensor:
    out = full.clone()
    out[..., :SPECIAL, :] += update[..., :SPECIAL, :]
    for n, window in enumerate(windows(h, w, f)):
        for i in window:
            out[..., SPECIAL + i, :] += update[..., SPECIAL + n, :]
    return out


@pytest.mark.parametrize(("h", "w", "f"), [(3, 5, 2), (4, 4, 2), (7, 5, 3)])
def test_pooling_and_restoring_match_loops_over_windows(h, w, f):
    gen = torch.Generator().manual_seed(0)
    pooling = TokenPooling(f, (h, w), SPECIAL)
    x = torch.randn(2, 3, SPECIAL + h * w, 4, generator=gen, dtype=torch.float64)
    pooled = pooling.pool(x)
    assert pooled.shape[-2] == pooling.tokens_per_frame == SPECIAL + len(windows(h, w, f))
    assert torch.allclose(pooled, pooled_by_loops(x, h, w, f), atol=1e-12)
    out = pooled + torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
    assert torch.allclose(pooling.restore(x, pooled, out), spread_by_loops(x, out - pooled, h, w, f), atol=1e-12)
    assert torch.equal(pooling.restore(x, pooled, pooled), x)  # no update: the full tokens exactly


def reduction_model(**changes):
    """tiny-mv (mask biases, temporal encoding, sparse block) with perturbed weights and, with ``changes``, token
    reduction."""
    cfg = preset("tiny-mv")
    cfg.aggregator = dataclasses.replace(cfg.aggregator, temporal_rope=True, **changes)
    model = perturbed(cfg)
    assert model.aggregator.patch_start_idx == SPECIAL
    return model


def entries(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer output of both readers and the mask of ``model``'s aggregator, in float64."""
    aggregator = model.aggregator.double()
    with torch.no_grad():
        out = aggregator(images.double(), range(4), range(4))
    found = {f"pose{i}": x for i, x in out.pose_entries.items()}
    found |= {f"geometry{i}": x for i, x in out.geometry_entries.items()}
    return found | {"mask": out.mask.moving}


def test_reduction_off_or_listing_no_block_is_the_plain_model_bit_for_bit():
    model = reduction_model()
    idle = twin(model, token_reduction=TokenReductionConfig(2, (), ()))
    with torch.no_grad():
        a, b = model(IMAGES), idle(IMAGES)
    assert all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("pose_enc", "depth", "world_points",
                                                                   "dynamic_mask"))


def reference_block(block, f: int, h: int, w: int, frames: int):
    """``block.forward`` as a reduced block by the loop reference: the sequence ``[S, frames·P, C]``, its
    positions, the rank-1 bias values and the time indices pooled per window, the block run on the pooled tokens,
    its update spread back."""
    plain = block.forward
    p = SPECIAL + h * w

    def forward(x, pos=None, extras=NO_EXTRAS):
        grid = x.unflatten(1, (frames, p))
        pooled = pooled_by_loops(grid, h, w, f)
        positions = pooled_by_loops(pos[:p].double()[None], h, w, f)[0].repeat(frames, 1)
        bias, rotation = extras.bias, extras.time_rotation
        if bias is not None:
            rows, keys = (pooled_by_loops(z.unflatten(1, (frames, p))[..., None], h, w, f)[..., 0].flatten(1, 2)
                          for z in (bias.rows, bias.keys))
            bias = RowKeyBias(rows=rows, keys=keys)
        if rotation is not None:
            times = rotation.times.view(frames, p)[:, : pooled.shape[2]].flatten()
            rotation = TimeRotation(times, rotation.scale, rotation.own_frequencies)
        out = plain(pooled.flatten(1, 2), positions, dataclasses.replace(extras, bias=bias, time_rotation=rotation))
        return spread_by_loops(grid, out.unflatten(1, (frames, -1)) - pooled, h, w, f).flatten(1, 2)

    return forward


def test_reduced_time_and_view_blocks_equal_the_loop_reference():
    """Time block 2 and view blocks 1, 3 (biased, rotated, before and after the sparse block) reduced: every
    layer output and the mask equal (float64) those of the unreduced twin whose same blocks run the loop
    reference; they are full size, and the reduction changes them (it is not a no-op)."""
    model = reduction_model()
    reduced = twin(model, token_reduction=TokenReductionConfig(2, (2,), (1, 3)))
    reference = twin(model)
    h, w = 3, 5
    reference.aggregator.time_blocks[2].forward = reference_block(reference.aggregator.time_blocks[2], 2, h, w, 3)
    for i in (1, 3):
        reference.aggregator.view_blocks[i].forward = reference_block(reference.aggregator.view_blocks[i], 2, h, w, 2)
    a, b, plain = entries(reduced, IMAGES), entries(reference, IMAGES), entries(model, IMAGES)
    assert a.keys() == b.keys() and len(a) == 9
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-12, rtol=0), name
        assert a[name].shape == plain[name].shape  # full-size layer outputs
    assert not torch.allclose(a["geometry3"], plain["geometry3"], atol=1e-6)


def test_a_reduced_block_attends_over_the_pooled_tokens_only(monkeypatch):
    """The saving is real: a reduced view block's attention sees V·(special + windows) keys, not V·P."""
    from page4d.nn import attention

    model = reduction_model(token_reduction=TokenReductionConfig(2, (), (1,)))
    lengths = []
    original = attention.Attention.forward

    def spy(self, x, pos=None, extras=NO_EXTRAS):
        lengths.append(x.shape[1])
        return original(self, x, pos, extras)

    monkeypatch.setattr(attention.Attention, "forward", spy)
    with torch.no_grad():
        model(IMAGES)
    p, pooled = SPECIAL + 15, SPECIAL + 6
    view_lengths = [n for n in lengths if n in (2 * p, 2 * pooled)]
    assert view_lengths.count(2 * pooled) == 1 and view_lengths.count(2 * p) == 3  # view blocks 0, 2, 3 full


def test_training_through_reduced_blocks_reaches_every_parameter():
    model = reduction_model(token_reduction=TokenReductionConfig(2, (0, 1, 2, 3), (0, 1, 2, 3))).train()
    pred = model(IMAGES)
    (pred.depth.mean() + pred.pose_enc.sum() + pred.dynamic_mask.mean()).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not [n for n in silent if "blocks" in n], silent


def test_bad_reduction_configs_are_refused():
    base = preset("tiny-mv")
    for changes, match in (({"factor": 1}, "factor must be at least 2"),
                           ({"view_blocks": (9,)}, r"view_blocks \(9,\) outside 0..3")):
        with pytest.raises(ValueError, match=match):  # ModelConfig validates as it is built
            dataclasses.replace(base, aggregator=dataclasses.replace(
                base.aggregator, token_reduction=TokenReductionConfig(**changes)))
