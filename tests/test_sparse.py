"""Sparse global attention: each strategy == a dense masked reference, changes the output, is the identity at
init, attends only to its key set, costs sub-quadratic pairs, and takes the keypoint bias."""

from __future__ import annotations

import pytest
import torch

from page4d.aggregator import sparse_strategies
from page4d.aggregator.sparse import SparseCall, SparseGlobalBlock
from page4d.aggregator.sparse_strategies import (
    dilated_groups,
    dilated_mask,
    landmark_anchors,
    pooled_landmark_index,
    sparse_block,
)
from page4d.aggregator.tokens import frame_positions
from page4d.config import SPARSE_STRATEGIES, AggregatorConfig, SparseGlobalConfig
from page4d.nn import RotaryEmbedding2D, attend, set_attention_backend
from page4d.nn.attention import NO_EXTRAS

STRATEGIES = list(SPARSE_STRATEGIES)
H, W, SPECIAL, C = 2, 3, 5, 32
P = SPECIAL + H * W
POS = frame_positions(H, W, SPECIAL)


def make_block(
    strategy: str, keypoint_bias: bool = False, gamma: float | None = 0.5, lam: float = 1.5, heads: int = 4, **cfg
) -> SparseGlobalBlock:
    """A float64 block; with ``gamma``, random non-trivial weights and LayerScale ``gamma``, else the init."""
    torch.manual_seed(0)
    settings = {"num_landmarks": 3, "dilation_levels": (1, 2), "num_memory_tokens": 4, **cfg}
    config = SparseGlobalConfig(strategy=strategy, keypoint_bias=keypoint_bias, **settings)
    agg = AggregatorConfig(embed_dim=C, num_heads=heads, mlp_ratio=2.0)
    blk = sparse_block(config, agg, RotaryEmbedding2D(100.0)).double()
    if gamma is not None:
        with torch.no_grad():
            for p in blk.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            blk.block.ls1.gamma.fill_(gamma)
            blk.block.ls2.gamma.fill_(gamma)
            if keypoint_bias:
                blk.lambda_kpt.fill_(lam)
    return blk


def tokens(t: int, v: int, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, v, P, C, dtype=torch.double, generator=torch.Generator().manual_seed(seed))


def keypoint_map(t: int, v: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, t, v, H * W, dtype=torch.double, generator=torch.Generator().manual_seed(7))


class Spy:
    """Records every ``attend`` call made by the sparse block (queries, keys, bias, backend)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[dict] = []
        monkeypatch.setattr(sparse_strategies, "attend", self)

    def __call__(self, q, k, v, extras=NO_EXTRAS, *, backend="fused"):
        self.calls.append({"q": q, "k": k, "bias": extras.bias, "backend": backend})
        return attend(q, k, v, extras, backend=backend)

    def pairs(self, batch: int) -> int:
        """(query, key) pairs attended, per batch element."""
        return sum(c["q"].shape[0] * c["q"].shape[2] * c["k"].shape[2] for c in self.calls) // batch


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("t", "v", "keypoint_bias"), [(3, 2, False), (2, 4, True)])
def test_forward_equals_dense_reference(strategy, t, v, keypoint_bias):
    blk = make_block(strategy, keypoint_bias)
    grid = tokens(t, v)
    kwargs = {"keypoints": keypoint_map(t, v)} if keypoint_bias else {}
    out = blk(grid, POS, SPECIAL, **kwargs)
    assert torch.allclose(out, blk.dense_reference(grid, POS, SPECIAL, **kwargs), atol=1e-10, rtol=0)
    assert not torch.allclose(out, grid, atol=1e-3)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_float32_and_dense_backend(strategy, monkeypatch):
    blk = make_block(strategy, keypoint_bias=True, heads=2).float()
    grid, kpt = tokens(2, 4).float(), keypoint_map(2, 4).float()
    fused = blk(grid, POS, SPECIAL, keypoints=kpt)
    assert torch.allclose(fused, blk.dense_reference(grid, POS, SPECIAL, keypoints=kpt), atol=1e-5, rtol=0)
    set_attention_backend(blk, "dense")
    spy = Spy(monkeypatch)
    assert torch.allclose(blk(grid, POS, SPECIAL, keypoints=kpt), fused, atol=1e-5, rtol=0)
    assert spy.calls and all(c["backend"] == "dense" for c in spy.calls)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("keypoint_bias", [False, True])
def test_identity_at_init(strategy, keypoint_bias):
    blk = make_block(strategy, keypoint_bias, gamma=None)
    assert torch.equal(blk.block.ls1.gamma, torch.zeros(C, dtype=torch.double))
    grid = tokens(3, 2)
    kwargs = {"keypoints": keypoint_map(3, 2)} if keypoint_bias else {}
    assert torch.equal(blk(grid, POS, SPECIAL, **kwargs), grid)


def test_dilated_groups_cover_distinct_neighbours():
    groups = dilated_groups(2, 4, (1, 2))
    assert len(groups) > 1  # unequal neighbour counts: several groups, no padding
    frames = torch.cat([f for f, _ in groups])
    assert sorted(frames.tolist()) == list(range(8))
    for _, near in groups:
        assert all(len(set(row.tolist())) == near.shape[1] for row in near)
    mask = dilated_mask(2, 4, 1, (1, 2))
    for f, near in groups:
        for frame, row in zip(f.tolist(), near.tolist(), strict=True):
            assert mask[frame].nonzero().flatten().tolist() == row


def _perturb(grid: torch.Tensor, t: int, v: int, p: slice | int = slice(None)) -> torch.Tensor:
    other = grid.clone()
    other[:, t, v, p] += torch.randn_like(other[:, t, v, p])
    return other


def test_landmark_outputs_depend_only_on_anchors_and_own_token():
    blk = make_block("landmark")
    grid = tokens(3, 2)
    scores = torch.rand(2, 3, 2, H * W, generator=torch.Generator().manual_seed(3))
    anchors = landmark_anchors(SparseCall(grid, SPECIAL, scores, None, None), 3)
    assert torch.equal(anchors, scores.topk(3, dim=-1).indices)
    out = blk(grid, POS, SPECIAL, scores=scores)
    idle = next(i for i in range(H * W) if i not in anchors[0, 1, 0].tolist() + anchors[1, 1, 0].tolist())
    changed = blk(_perturb(grid, 1, 0, SPECIAL + idle), POS, SPECIAL, scores=scores)
    keep = torch.ones(3, 2, P, dtype=torch.bool)
    keep[1, 0, SPECIAL + idle] = False
    assert torch.allclose(changed[:, keep], out[:, keep], atol=1e-12, rtol=0)
    assert not torch.allclose(changed[:, 1, 0, SPECIAL + idle], out[:, 1, 0, SPECIAL + idle])
    anchor = anchors[0, 1, 0, 0].item()
    moved = blk(_perturb(grid, 1, 0, SPECIAL + anchor), POS, SPECIAL, scores=scores)
    assert not torch.allclose(moved[0, 2, 1], out[0, 2, 1], atol=1e-6)  # another frame sees the anchor


def test_dilated_only_neighbour_frames_influence():
    blk = make_block("dilated", dilation_levels=(2,))
    grid = tokens(4, 3)
    out = blk(grid, POS, SPECIAL)
    far = grid.clone()
    for t, v in [(1, 0), (0, 1), (1, 1), (3, 0), (2, 2)]:  # not neighbours of frame (0, 0)
        far = _perturb(far, t, v)
    assert torch.allclose(blk(far, POS, SPECIAL)[:, 0, 0], out[:, 0, 0], atol=1e-12, rtol=0)
    for t, v in [(2, 0), (0, 2)]:
        assert not torch.allclose(blk(_perturb(grid, t, v), POS, SPECIAL)[:, 0, 0], out[:, 0, 0], atol=1e-6)


def test_memory_every_frame_reaches_every_other_frame():
    blk = make_block("memory")
    grid = tokens(3, 2)
    out = blk(grid, POS, SPECIAL)
    changed = blk(_perturb(grid, 2, 1), POS, SPECIAL)
    for t in range(3):
        for v in range(2):
            if (t, v) != (2, 1):
                assert (changed[:, t, v] - out[:, t, v]).abs().amax(-1).min() > 1e-8


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keypoint_bias_raises_attention_on_keypoints(strategy, monkeypatch):
    """Patch queries (memory: memory queries) put more mass on keypoint keys when λ > 0; other rows unchanged."""
    grid = tokens(3, 2)
    kpt = (torch.rand(2, 3, 2, H * W, generator=torch.Generator().manual_seed(5)) > 0.5).double()
    scores = torch.rand(2, 3, 2, H * W, generator=torch.Generator().manual_seed(6))
    kwargs = {"keypoints": kpt, "scores": scores}
    runs = []
    for lam in (0.0, 2.0):
        spy = Spy(monkeypatch)
        out = make_block(strategy, keypoint_bias=True, lam=lam)(grid, POS, SPECIAL, **kwargs)
        call = spy.calls[0]
        bias = call["bias"]
        logits = call["q"] @ call["k"].transpose(-2, -1) * call["q"].shape[-1] ** -0.5 + bias.dense()
        mass = (logits.softmax(-1) * (bias.keys > 0)[:, None, None, :].double()).sum(-1)
        runs.append((out, mass, bias.rows))
    (out0, mass0, _), (out2, mass2, rows) = runs
    biased = (rows != 0)[:, None, :].expand_as(mass0)
    assert biased.any() and (mass0[biased] < 1).any()
    assert (mass2[biased] > mass0[biased] - 1e-12).all()
    assert (mass2[biased & (mass0 < 1 - 1e-9)] > mass0[biased & (mass0 < 1 - 1e-9)]).all()
    assert torch.allclose(mass2[~biased], mass0[~biased], atol=1e-12)
    if strategy != "memory":  # memory: λ moves the memory tokens, which every token reads
        assert torch.allclose(out2[..., :SPECIAL, :], out0[..., :SPECIAL, :], atol=1e-12, rtol=0)
    assert not torch.allclose(out2[..., SPECIAL:, :], out0[..., SPECIAL:, :], atol=1e-6)


def test_landmarks_ranked_by_keypoints_without_scores():
    blk = make_block("landmark")
    grid, kpt = tokens(3, 2), keypoint_map(3, 2)
    assert torch.equal(landmark_anchors(SparseCall(grid, SPECIAL, None, kpt, None), 3), kpt.topk(3, dim=-1).indices)
    assert torch.allclose(blk(grid, POS, SPECIAL, keypoints=kpt), blk(grid, POS, SPECIAL, scores=kpt), atol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_parameter_gets_a_gradient(strategy):
    blk = make_block(strategy, keypoint_bias=True, lam=0.7)
    grid = tokens(3, 2).requires_grad_()
    blk(grid, POS, SPECIAL, keypoints=keypoint_map(3, 2)).square().sum().backward()
    names = dict(blk.named_parameters())
    assert "lambda_kpt" in names and ("memory_tokens" in names) == (strategy == "memory")
    for name, p in names.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert grid.grad.abs().sum() > 0


@pytest.mark.parametrize(("t", "v"), [(16, 2), (8, 4)])
def test_cost_of_each_strategy_and_which_are_subquadratic(t, v, monkeypatch):
    """(query, key) pairs counted from the attention calls: the per-frame landmark pool costs N·T·V·K (quadratic
    in the frames, as stated), the clip pool N·K, dilated its neighbour mask, memory M·(M + N) + N·M; all but the
    per-frame pool stay under a quarter of N² here, and no call is ever N × N."""
    n, b = t * v * P, 1
    grid = tokens(t, v, b=b)
    counts = {}
    variants = {**{name: {} for name in STRATEGIES}, "landmark-clip": {"landmark_pool": "clip", "num_landmarks": 8}}
    for name, extra in variants.items():
        spy = Spy(monkeypatch)
        settings = {"dilation_levels": (1, 2, 4), "num_memory_tokens": 32, "num_landmarks": 3, **extra}
        blk = make_block(name.split("-")[0], **settings)
        blk(grid, POS, SPECIAL)
        counts[name] = spy.pairs(b)
        assert all(c["q"].shape[2] * c["k"].shape[2] < n * n for c in spy.calls)  # never N×N
    assert counts["landmark"] == n * t * v * 3
    assert counts["landmark-clip"] == n * 8
    assert counts["dilated"] == dilated_mask(t, v, P, (1, 2, 4)).sum()
    assert counts["memory"] == 32 * (32 + n) + n * 32
    assert all(counts[name] < 0.25 * n * n for name in ("dilated", "memory", "landmark-clip"))


def test_clip_landmark_pairs_per_query_stay_fixed_as_the_clip_grows(monkeypatch):
    """The clip pool is sub-quadratic: keys per query do not grow with T (the per-frame pool's grow as T·V·K)."""
    per_query = {}
    for pool in ("frame", "clip"):
        blk = make_block("landmark", landmark_pool=pool, num_landmarks=4)
        for t in (4, 32):
            spy = Spy(monkeypatch)
            blk(tokens(t, 2, b=1), POS, SPECIAL)
            per_query[pool, t] = spy.pairs(1) / (t * 2 * P)
    assert per_query["clip", 4] == per_query["clip", 32] == 4
    assert per_query["frame", 32] == 8 * per_query["frame", 4] == 32 * 2 * 4


@pytest.mark.parametrize(("t", "v", "keypoint_bias"), [(3, 2, False), (2, 4, True)])
def test_clip_landmark_pool_equals_dense_reference(t, v, keypoint_bias):
    blk = make_block("landmark", keypoint_bias, landmark_pool="clip", num_landmarks=5)
    grid = tokens(t, v)
    kwargs = {"keypoints": keypoint_map(t, v)} if keypoint_bias else {}
    out = blk(grid, POS, SPECIAL, **kwargs)
    assert torch.allclose(out, blk.dense_reference(grid, POS, SPECIAL, **kwargs), atol=1e-10, rtol=0)
    assert not torch.allclose(out, grid, atol=1e-3)


def test_clip_pool_takes_the_best_ranked_patches_of_the_clip_and_only_they_are_read():
    """The pool is the K best scores over every (t, v, patch), by an independent sort of all candidates (ties
    to the earlier frame and patch); a patch outside the pool changes nothing but its own output."""
    t, v, k = 3, 2, 4
    blk = make_block("landmark", landmark_pool="clip", num_landmarks=k)
    grid = tokens(t, v)
    scores = torch.rand(2, t, v, H * W, generator=torch.Generator().manual_seed(5)).double()
    scores[1, 2, 1, :3] = 2.0  # batch 1: three ties at the top, then the rest
    pool = pooled_landmark_index(SparseCall(grid, SPECIAL, scores, None, None), k)
    for batch in range(2):
        candidates = sorted((-scores[batch, ti, vi, p].item(), ti, vi, p) for ti in range(t) for vi in range(v)
                             for p in range(H * W))
        expected = [(ti * v + vi) * P + SPECIAL + p for _, ti, vi, p in candidates[:k]]
        assert pool[batch].tolist() == expected
    out = blk(grid, POS, SPECIAL, scores=scores)
    chosen = set(pool[0].tolist()) | set(pool[1].tolist())
    idle = next(i for i in range(t * v * P) if i % P >= SPECIAL and i not in chosen)
    ti, vi, pi = idle // (v * P), idle // P % v, idle % P
    changed = blk(_perturb(grid, ti, vi, pi), POS, SPECIAL, scores=scores)
    keep = torch.ones(t, v, P, dtype=torch.bool)
    keep[ti, vi, pi] = False
    assert torch.allclose(changed[:, keep], out[:, keep], atol=1e-12, rtol=0)
    first = pool[0, 0].item()
    moved = blk(_perturb(grid, first // (v * P), first // P % v, first % P), POS, SPECIAL, scores=scores)
    assert not torch.allclose(moved[0], out[0], atol=1e-6)


def test_dilated_pairs_per_query_are_bounded_as_time_grows(monkeypatch):
    per_query = []
    blk = make_block("dilated", dilation_levels=(1, 2, 4))
    for t in (8, 64):
        spy = Spy(monkeypatch)
        blk(tokens(t, 2, b=1), POS, SPECIAL)
        per_query.append(spy.pairs(1) / (t * 2 * P))
    assert max(per_query) <= (1 + 4 * 3) * P
    assert per_query[1] / (64 * 2 * P) < per_query[0] / (8 * 2 * P) / 5  # share of all keys falls ~1/T


@pytest.mark.parametrize(
    ("strategy", "cfg", "call", "match"),
    [
        ("landmark", {}, {"scores": torch.rand(2, 3, 2, 5)}, "scores must have shape"),
        ("landmark", {"keypoint_bias": True}, {"keypoints": torch.rand(2, 3, 2)}, "keypoints must have shape"),
        ("landmark", {"num_landmarks": 7}, {}, "the landmark sparse block needs at least 7 patches per frame, got 6"),
        ("dilated", {}, {"keypoints": torch.rand(2, 3, 2, 6)}, "keypoints were given but nothing uses them"),
        ("landmark", {}, {"keypoints": torch.rand(2, 3, 2, 6), "scores": torch.rand(2, 3, 2, 6)}, "nothing uses"),
        ("memory", {}, {"num_special": 11}, "num_special must be in"),
        ("memory", {}, {"pos": POS[:-1]}, "pos must be one frame's RoPE positions"),
        ("memory", {}, {"grid": torch.randn(2, 6, P, C)}, "needs tokens"),
    ],
)
def test_bad_inputs_raise(strategy, cfg, call, match):
    blk = make_block(strategy, **cfg).float()
    args = {"grid": torch.randn(2, 3, 2, P, C), "pos": POS, "num_special": SPECIAL, **call}
    with pytest.raises(ValueError, match=match):
        blk(**args)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"strategy": "block_dilated"}, "unknown sparse_global.strategy 'block_dilated'; use one of landmark, dilated"),
        ({"strategy": "landmark", "num_landmarks": 0}, "num_landmarks must be at least 1"),
        ({"strategy": "dilated", "dilation_levels": (0, 1)}, "dilation_levels must be positive"),
        ({"strategy": "memory", "num_memory_tokens": 0}, "num_memory_tokens must be at least 1"),
        ({"after_pairs": (4,)}, r"after_pairs \(4,\) outside 0..3"),
    ],
)
def test_bad_config_raises_when_the_aggregator_config_is_built(cfg, match):
    with pytest.raises(ValueError, match=match):
        AggregatorConfig(embed_dim=C, num_heads=4, depth=4,
                         sparse_global=SparseGlobalConfig(**{"after_pairs": (1,), **cfg})).validate()


def test_every_configurable_strategy_has_its_own_class():
    """The config's name list and the strategy registry agree, and each name builds a different subclass."""
    assert tuple(sparse_strategies.STRATEGIES) == SPARSE_STRATEGIES
    classes = {type(make_block(name, gamma=None)) for name in SPARSE_STRATEGIES}
    assert len(classes) == len(SPARSE_STRATEGIES)
    assert all(issubclass(c, SparseGlobalBlock) and c is not SparseGlobalBlock for c in classes)
    with pytest.raises(TypeError, match="abstract methods attend, reference"):  # the shared block alone is no strategy
        SparseGlobalBlock(SparseGlobalConfig(), AggregatorConfig(embed_dim=C, num_heads=4), RotaryEmbedding2D())
