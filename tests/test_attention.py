"""Attention paths and attention kinds: fused == dense, and time / view blocks == a masked global block."""

from __future__ import annotations

import pytest
import torch

from page4d.aggregator import kinds
from page4d.aggregator.tokens import frame_positions
from page4d.nn import AttentionExtras, Block, RotaryEmbedding2D, set_attention_backend


@pytest.fixture
def block() -> Block:
    torch.manual_seed(0)
    blk = Block(32, 4, mlp_ratio=2.0, init_values=0.5, qk_norm=True, rope=RotaryEmbedding2D(100.0)).double()
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return blk


def test_fused_equals_dense(block):
    x = torch.randn(3, 21, 32, dtype=torch.double)
    pos = torch.randint(0, 6, (21, 2))
    fused = block(x, pos)
    set_attention_backend(block, "dense")
    assert torch.allclose(block(x, pos), fused, atol=1e-12, rtol=0)


def test_fused_equals_dense_with_mask(block):
    x = torch.randn(2, 12, 32, dtype=torch.double)
    pos = torch.randint(0, 6, (12, 2))
    mask = torch.rand(12, 12) > 0.4
    mask |= torch.eye(12, dtype=torch.bool)
    fused = block(x, pos, AttentionExtras(mask=mask))
    set_attention_backend(block, "dense")
    assert torch.allclose(block(x, pos, AttentionExtras(mask=mask)), fused, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["time", "view", "frame"])
@pytest.mark.parametrize(("t", "v"), [(3, 2), (2, 4), (1, 3), (3, 1)])
def test_kind_equals_masked_global_attention(block, kind, t, v):
    """A block run on ``kind`` sequences equals the same block over all T·V·P tokens with the explicit
    same-view (time) / same-time (view) / same-frame block mask, on the dense reference path."""
    b, h, w = 2, 2, 3
    pos = frame_positions(h, w, num_special=5)
    p = pos.shape[0]
    grid = torch.randn(b, t, v, p, 32, dtype=torch.double)

    seq = kinds.to_sequences(grid, kind)
    factored = kinds.from_sequences(block(seq, pos.repeat(kinds.frames_per_sequence(kind, t, v), 1)), kind, b, t, v)

    set_attention_backend(block, "dense")
    flat = kinds.to_sequences(grid, "global")
    mask = kinds.same_group_mask(kind, t, v, p)
    dense = kinds.from_sequences(block(flat, pos.repeat(t * v, 1), AttentionExtras(mask=mask)), "global", b, t, v)
    assert torch.allclose(factored, dense, atol=1e-12, rtol=0)


def test_masks_differ_when_t_and_v_exceed_one():
    time, view = kinds.same_group_mask("time", 2, 3, 4), kinds.same_group_mask("view", 2, 3, 4)
    assert time.sum() == 3 * (2 * 4) ** 2 and view.sum() == 2 * (3 * 4) ** 2
    assert not torch.equal(time, view)


def test_rope_is_identity_at_origin_and_relative():
    rope = RotaryEmbedding2D(100.0)
    q = torch.randn(1, 2, 1, 16, dtype=torch.double)
    k = torch.randn(1, 2, 1, 16, dtype=torch.double)
    assert torch.equal(rope(q, torch.zeros(1, 2, dtype=torch.long)), q)
    a, b = torch.tensor([[3, 5]]), torch.tensor([[1, 2]])
    shift = torch.tensor([[4, 1]])
    dot = (rope(q, a) * rope(k, b)).sum()
    dot_shifted = (rope(q, a + shift) * rope(k, b + shift)).sum()
    assert torch.allclose(dot, dot_shifted, atol=1e-12)


class _FullBias:
    """A ChunkedBias over an explicit matrix (tests only)."""

    def __init__(self, matrix: torch.Tensor, chunk_size: int):
        self.matrix = matrix
        self.chunk_size = chunk_size

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.matrix[:, :, start:stop]


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_bias_fused_equals_dense_with_and_without_rank_one(chunk):
    from page4d.nn import RowKeyBias, attend

    gen = torch.Generator().manual_seed(chunk)
    q = torch.randn(2, 3, 23, 16, generator=gen, dtype=torch.double)
    k, v = (torch.randn(2, 3, 17, 16, generator=gen, dtype=torch.double) for _ in range(2))
    full = _FullBias(torch.randn(2, 1, 23, 17, generator=gen, dtype=torch.double) * 3, chunk)
    rank1 = RowKeyBias(torch.randn(2, 23, generator=gen, dtype=torch.double), torch.randn(2, 17, generator=gen,
                                                                                           dtype=torch.double))
    for bias in (None, rank1):
        extras = AttentionExtras(bias=bias, chunked_bias=full)
        fused, dense = attend(q, k, v, extras), attend(q, k, v, extras, backend="dense")
        assert torch.allclose(fused, dense, atol=1e-12)
    cross = attend(q, k, v, AttentionExtras(bias=rank1))
    assert torch.allclose(cross, attend(q, k, v, AttentionExtras(bias=rank1), backend="dense"), atol=1e-12)
