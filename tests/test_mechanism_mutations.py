"""Tests that fail when a mechanism is broken in a way that still leaves the outputs plausible (issue 16).

Each expected value here is written independently of the code under test: token indices by explicit loops
over (t, v, p), attention by an explicit float64 softmax over logits whose biases are placed token by token,
landmark anchors by a mask whose static patches are chosen by hand.

* every token's time index is its own frame's (``token_times``, the dense masks' index builders), and
  through the aggregator the rotated time-block logits follow the true time difference;
* the pose/geo mask bias lands on the right queries and keys of a time block and a view block (shared and
  dual streams), against a float64 reference attention;
* landmark anchors are the most static patches (per frame, and per clip).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from page4d.aggregator import kinds, sparse_strategies, temporal
from page4d.aggregator.aggregator import Aggregator
from page4d.config import AggregatorConfig, DynamicMaskConfig, SparseGlobalConfig
from page4d.inputs import ForwardInputs
from page4d.nn import Block
from page4d.nn.attention import Attention
from page4d.presets import preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCH = 14
H, W = 2, 3
"""Patch grid of every frame (images 28 × 42 pixels)."""
SPECIAL = 5
"""Camera + 4 register tokens in front of each frame's patches."""
P = SPECIAL + H * W
BOUND = 4.0
"""``DynamicMaskConfig.lambda_bound`` (default)."""


# ----------------------------------------------------------------------------------------------------------
# helpers: a float64 aggregator, hooks, and a reference block whose attention is written out here


def float64_aggregator(seed: int = 0, **changes) -> Aggregator:
    """The tiny preset's aggregator with ``changes``, every parameter moved off its init, in float64 eval mode."""
    cfg = preset("tiny")
    agg_cfg: AggregatorConfig = dataclasses.replace(cfg.aggregator, **changes)
    agg_cfg.validate()
    torch.manual_seed(seed)
    aggregator = Aggregator(agg_cfg, cfg.encoder, cfg.patch_size).double().eval()
    with torch.no_grad():
        for p in aggregator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return aggregator


def images(b: int, t: int, v: int, seed: int = 1) -> torch.Tensor:
    """Random float64 images ``[B, T, V, 3, 28, 42]``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, v, 3, PATCH * H, PATCH * W, generator=gen, dtype=torch.double)


def to_pixels(patches: torch.Tensor) -> torch.Tensor:
    """A per-patch map ``[B, T, V, h, w]`` -> the constant-per-patch pixel map ``[B, T, V, 14h, 14w]``."""
    return patches.repeat_interleave(PATCH, dim=-2).repeat_interleave(PATCH, dim=-1)


class Calls:
    """Forward hooks that keep the input tokens, positions and output of every call of some modules."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {n: [] for n in modules}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.calls[name].append((args[0].detach().clone(), args[1], output.detach().clone()))
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def hand_positions(frames: int) -> torch.Tensor:
    """RoPE positions ``[frames·P, 2]`` of a sequence of whole frames: special tokens (0, 0), patch (row+1, col+1)."""
    one = [(0, 0)] * SPECIAL + [(i // W + 1, i % W + 1) for i in range(H * W)]
    return torch.tensor(one * frames)


def reference_block(block: Block, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``block`` on tokens ``x`` ``[N, L, C]`` (float64) with the additive logit bias ``bias`` ``[N, L, L]``
    (-inf: may not attend), its attention computed here: einsum logits, explicit softmax, einsum values.

    The block's own sub-layers (LayerNorms, linear maps, the parameter-free 2-D RoPE, MLP) are reused; only the
    attention, where the bias enters, is rewritten."""
    attn = block.attn
    n, length, _ = x.shape
    pos = hand_positions(length // P)
    qkv = block.attn.qkv(block.norm1(x)).view(n, length, 3, attn.num_heads, -1)  # VGGT's (three heads dim) order
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [N, heads, L, D]
    q, k = attn.rope(attn.q_norm(q), pos), attn.rope(attn.k_norm(k), pos)
    logits = torch.einsum("nhid,nhjd->nhij", q, k) / math.sqrt(q.shape[-1]) + bias[:, None]
    weights = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.einsum("nhij,nhjd->nihd", weights, v).reshape(n, length, -1)
    x = x + block.ls1(attn.proj(out))
    return x + block.ls2(block.mlp(block.norm2(x)))


# ----------------------------------------------------------------------------------------------------------
# 1. time indices


@pytest.mark.parametrize("kind", ["time", "view", "frame", "global"])
def test_token_times_are_each_tokens_own_time_step(kind: str) -> None:
    """``token_times``: token l of a sequence gets the time step of the frame it belongs to (frames are whole
    blocks of P tokens; a time sequence is ordered (t, p), a global one (t, v, p))."""
    t, v, p = 3, 2, 4
    expected = {
        "time": [ti for ti in range(t) for _ in range(p)],
        "global": [ti for ti in range(t) for _ in range(v) for _ in range(p)],
        "view": None,  # one time step per sequence: no rotation
        "frame": None,
    }[kind]
    got = temporal.token_times(kind, t, v, p)
    assert (got if got is None else got.tolist()) == expected


@pytest.mark.parametrize("kind", ["time", "view", "frame", "global"])
def test_same_group_mask_matches_a_loop_over_t_v_p(kind: str) -> None:
    """``kinds.same_group_mask``: in the global (t, v, p) order two tokens share a time sequence iff same view,
    a view sequence iff same time, a frame iff both, and a global one always."""
    t, v, p = 2, 3, 2
    tokens = [(ti, vi) for ti in range(t) for vi in range(v) for _ in range(p)]
    rule = {
        "time": lambda a, b: a[1] == b[1],
        "view": lambda a, b: a[0] == b[0],
        "frame": lambda a, b: a == b,
        "global": lambda a, b: True,
    }[kind]
    expected = torch.tensor([[rule(a, b) for b in tokens] for a in tokens])
    assert torch.equal(kinds.same_group_mask(kind, t, v, p), expected)


def test_dilated_mask_matches_a_loop_over_t_v_p() -> None:
    """``dilated_mask``: token (t, v, p) sees token (t', v', p') iff the frames are at a time offset in
    {0, ±l} with the same view, or at a view offset in {0, ±l} at the same time."""
    t, v, p, levels = 4, 3, 2, (1, 2)
    tokens = [(ti, vi) for ti in range(t) for vi in range(v) for _ in range(p)]
    steps = {0, *levels}

    def near(a: tuple[int, int], b: tuple[int, int]) -> bool:
        dt, dv = abs(a[0] - b[0]), abs(a[1] - b[1])
        return (dt == 0 and dv in steps) or (dv == 0 and dt in steps)

    expected = torch.tensor([[near(a, b) for b in tokens] for a in tokens])
    assert torch.equal(sparse_strategies.dilated_mask(t, v, p, levels), expected)


def test_time_block_logits_follow_the_true_time_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the aggregator, with the time rotation on: a clip whose frames repeat over time gives, in the
    first time block, logits between (t, p) and (t', p') that depend on t' - t only, equal the unrotated logits
    when t = t' and differ from them when t ≠ t'. Tokens of the wrong time step break all three."""
    t, v = 3, 2
    aggregator = float64_aggregator(temporal_rope=True)
    with torch.no_grad():
        # One distinct angle per head, in every time block.
        scale = aggregator.temporal_rope.scale
        scale.copy_(torch.linspace(-0.9, 1.3, scale.shape[1]).expand_as(scale))
    seen: list[tuple[torch.Tensor, ...]] = []
    original = Attention.heads

    def spy(self: Attention, x: torch.Tensor, pos: torch.Tensor | None = None, time_rotation=None):
        q, k, values = original(self, x, pos, time_rotation)
        if time_rotation is not None:  # also keep the same tokens' q, k without the time rotation
            seen.append((q, k, *original(self, x, pos, None)[:2]))
        return q, k, values

    monkeypatch.setattr(Attention, "heads", spy)
    clip = images(1, 1, v).expand(-1, t, -1, -1, -1, -1)  # every time step shows the same images
    with torch.no_grad():
        aggregator(clip, {aggregator.cfg.depth - 1})
    heads = aggregator.cfg.num_heads
    q, k, q0, k0 = seen[0]  # time block 0: sequences [B·V, T·P], ordered (t, p)
    assert q.shape[:3] == (v, heads, t * P)

    def logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[N, heads, T, P, T, P]``."""
        return (torch.einsum("nhid,nhjd->nhij", a, b) / math.sqrt(a.shape[-1])).view(v, heads, t, P, t, P)

    rotated, plain = logits(q, k)[1:], logits(q0, k0)[1:]  # view 0 excluded: its (t=0) frame has other tokens
    for dt in range(-(t - 1), t):
        pairs = [(t1, t1 + dt) for t1 in range(t) if 0 <= t1 + dt < t]
        first = rotated[:, :, pairs[0][0], :, pairs[0][1]]
        for t1, t2 in pairs[1:]:
            assert torch.allclose(rotated[:, :, t1, :, t2], first, atol=1e-5, rtol=0), (dt, t1, t2)
        if dt == 0:
            assert torch.allclose(first, plain[:, :, 0, :, 0], atol=1e-5, rtol=0)
        else:
            assert (first - plain[:, :, pairs[0][0], :, pairs[0][1]]).abs().max() > 1e-2, dt


# ----------------------------------------------------------------------------------------------------------
# 2. the pose/geo mask bias against a float64 reference


LAMBDAS = {"lambda_pose": 1.3, "lambda_geo": -0.8, "lambda_pose_t": 5.5, "lambda_geo_t": 2.1}
"""λ_pose_t is above the bound: it acts as 4."""


def clamped(name: str) -> float:
    return max(-BOUND, min(BOUND, LAMBDAS[name]))


def row_weight(bank: str, role: str, p: int) -> float:
    """Row value of a query at in-frame index ``p``: the pose stream -λ_pose, the geometry stream +λ_geo;
    in a shared stream camera/register queries are the pose stream and patch queries the geometry stream."""
    suffix = "_t" if bank == "time" else ""
    pose = role == "pose" or (role == "shared" and p < SPECIAL)
    return -clamped("lambda_pose" + suffix) if pose else clamped("lambda_geo" + suffix)


def key_weight(moving: torch.Tensor, b: int, t: int, v: int, p: int) -> float:
    """Key value of token (t, v, p): the moving probability of its patch, 0 for camera/register keys."""
    if p < SPECIAL:
        return 0.0
    return float(moving[b, t, v, (p - SPECIAL) // W, (p - SPECIAL) % W])


def hand_bias(bank: str, role: str | None, moving: torch.Tensor) -> torch.Tensor:
    """The bias ``[N, L, L]`` of a block of ``bank``, token by token; ``role`` None: an unbiased block (zeros).

    time sequences: n = b·V + v, token (t, p) at t·P + p; view sequences: n = b·T + t, token (v, p) at v·P + p."""
    b_, t_, v_ = moving.shape[:3]
    outer, inner = (v_, t_) if bank == "time" else (t_, v_)
    bias = torch.zeros(b_ * outer, inner * P, inner * P, dtype=torch.double)
    if role is None:
        return bias
    for b in range(b_):
        for o in range(outer):
            for i1 in range(inner):
                for p1 in range(P):
                    row = row_weight(bank, role, p1)
                    for i2 in range(inner):
                        for p2 in range(P):
                            t, v = (i2, o) if bank == "time" else (o, i2)
                            bias[b * outer + o, i1 * P + p1, i2 * P + p2] = row * key_weight(moving, b, t, v, p2)
    return bias


@pytest.mark.parametrize("streams", ["shared", "dual-shared", "dual-branched"])
def test_pose_geo_bias_blocks_equal_a_float64_reference(streams: str) -> None:
    """Each biased block (time 1, view 1) equals the reference block whose logits get row_i · M_j placed by
    (t, v, p) by hand; the unbiased blocks (time 2, view 2) equal it with no bias. Dual streams: one call per
    stream, one of them with -λ_pose on every query, the other with +λ_geo."""
    b, t, v = 2, 2, 3
    dual = streams != "shared"
    mask_cfg = DynamicMaskConfig(
        head="fusion", bias="pose_geo", after_block=0, biased_view_blocks=(1,), biased_time_blocks=(1,),
        streams="dual" if dual else "shared", dual_from_block=1,
        dual_weights="branched" if streams == "dual-branched" else "shared",
    )
    aggregator = float64_aggregator(dynamic_mask=mask_cfg)
    with torch.no_grad():
        for name, value in LAMBDAS.items():
            getattr(aggregator.mask_bias, name).fill_(value)
        aggregator.dynamic_mask_head.beta.fill_(2.5)  # a spread of moving probabilities, from the external mask
    modules = {f"{bank}{i}": getattr(aggregator, f"{bank}_blocks")[i] for bank in ("time", "view") for i in (1, 2)}
    if streams == "dual-branched":
        modules |= {f"pose_{bank}{i}": getattr(aggregator, f"pose_{bank}_blocks")[str(i)]
                    for bank in ("time", "view") for i in (1, 2)}
    external = (torch.rand(b, t, v, H, W, generator=torch.Generator().manual_seed(4)) > 0.5).double()
    calls = Calls(modules)
    try:
        with torch.no_grad():
            inputs = ForwardInputs(external_mask=to_pixels(external))
            moving = aggregator(images(b, t, v), {3}, inputs=inputs).mask.moving
    finally:
        calls.remove()
    assert moving.shape == (b, t, v, H, W) and float(moving.max() - moving.min()) > 0.5

    # Which stream roles run each block module, per call.
    if streams == "shared":
        roles = {name: ["shared"] for name in modules}
    elif streams == "dual-shared":
        roles = {name: ["pose", "geometry"] for name in modules}
    else:
        roles = {name: ["pose" if name.startswith("pose_") else "geometry"] for name in modules}
    for name, block in modules.items():
        bank = "time" if "time" in name else "view"
        biased = name.endswith("1")
        assert len(calls.calls[name]) == len(roles[name]), name
        # An unbiased block is the same for every role: it is checked once per call, with no bias.
        candidates = roles[name] if biased else [None]
        matched = []
        for x, _, out in calls.calls[name]:
            with torch.no_grad():
                errors = {role: float((reference_block(block, x, hand_bias(bank, role, moving)) - out).abs().max())
                          for role in candidates}
            role, error = min(errors.items(), key=lambda item: item[1])
            assert error < 1e-10, (name, errors)
            matched.append(role)
        if biased:  # every stream's call matched its own role's bias
            assert sorted(matched) == sorted(roles[name]), (name, matched)
        if biased:  # the bias is not negligible: without it the block's output is far off
            x, _, out = calls.calls[name][0]
            with torch.no_grad():
                assert float((reference_block(block, x, hand_bias(bank, None, moving)) - out).abs().max()) > 1e-4


# ----------------------------------------------------------------------------------------------------------
# 3. landmark anchors are the most static patches


@pytest.mark.parametrize("pool", ["frame", "clip"])
def test_landmarks_are_the_static_patches(pool: str) -> None:
    """The sparse landmark block, run by the aggregator after the mask head, equals the reference block in
    which every token attends to exactly the patches a hand-built external mask calls static: K per frame
    (``frame`` pool) or K in the whole clip (``clip`` pool); every other patch moves."""
    b, t, v, k = 2, 2, 3, 2
    mask_cfg = DynamicMaskConfig(head="fusion", bias="pose_geo", after_block=0, biased_view_blocks=())
    sparse_cfg = SparseGlobalConfig(strategy="landmark", after_pairs=(1,), num_landmarks=k, landmark_pool=pool)
    aggregator = float64_aggregator(dynamic_mask=mask_cfg, sparse_global=sparse_cfg)
    sparse = aggregator.sparse_blocks[0]
    with torch.no_grad():
        # M = sigmoid(±8) from the external mask alone, so the static patches are the ones chosen below.
        aggregator.dynamic_mask_head.alpha.fill_(0.0)
        aggregator.dynamic_mask_head.bias.fill_(0.0)
        aggregator.dynamic_mask_head.beta.fill_(8.0)
        sparse.block.ls1.gamma.fill_(0.5)  # the block is the identity at LayerScale 0
        sparse.block.ls2.gamma.fill_(0.5)
    gen = torch.Generator().manual_seed(5)
    moving = torch.ones(b, t, v, H * W, dtype=torch.double)
    static: list[list[tuple[int, int, int]]] = [[] for _ in range(b)]  # (t, v, patch) per batch element
    if pool == "frame":
        for bi in range(b):
            for ti in range(t):
                for vi in range(v):
                    static[bi] += [(ti, vi, int(i)) for i in torch.randperm(H * W, generator=gen)[:k]]
    else:
        for bi in range(b):
            chosen = torch.randperm(t * v * H * W, generator=gen)[:k]
            static[bi] = [(int(i) // (v * H * W), int(i) // (H * W) % v, int(i) % (H * W)) for i in chosen]
    for bi, where in enumerate(static):
        for ti, vi, i in where:
            moving[bi, ti, vi, i] = 0.0
    calls = Calls({"sparse": sparse})
    try:
        with torch.no_grad():
            inputs = ForwardInputs(external_mask=to_pixels(moving.view(b, t, v, H, W)))
            aggregator(images(b, t, v), {3}, inputs=inputs)
    finally:
        calls.remove()
    (grid, _, out), = calls.calls["sparse"]
    allowed = torch.full((b, t * v * P, t * v * P), float("-inf"), dtype=torch.double)
    for bi, where in enumerate(static):
        for ti, vi, i in where:
            allowed[bi, :, (ti * v + vi) * P + SPECIAL + i] = 0.0  # global order (t, v, p)
    with torch.no_grad():
        expected = reference_block(sparse.block, grid.reshape(b, t * v * P, -1), allowed)
    assert float((expected.view_as(out) - out).abs().max()) < 1e-10
