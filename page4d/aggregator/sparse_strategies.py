"""The sparse global strategies, one ``SparseGlobalBlock`` subclass each, over the global token order ``(t, v, p)``:

    landmark : every token -> the K anchor patches of every frame        O(N·T·V·K)
               (pool "clip": -> the K best-ranked patches of the clip)  O(N·K)
    dilated  : frame (t, v) -> frames (t ± l, v), (t, v ± l), itself      O(T·V·n·P²), n ≤ 1 + 4·len(levels)
    memory   : M learned tokens <- all tokens, then every token -> M      O(N·M)

Each class attends with index helpers (anchors, neighbour groups) and writes the same key set out as a
boolean ``[.., N, N]`` mask for the dense reference (tests only). ``STRATEGIES`` maps the config's names
(``page4d.config.SPARSE_STRATEGIES``) to the classes; ``sparse_block`` builds the configured one.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from page4d.aggregator.sparse import SparseCall, SparseGlobalBlock, merge_heads, with_bias
from page4d.config import AggregatorConfig, SparseGlobalConfig
from page4d.nn import AttentionExtras, RotaryEmbedding2D, RowKeyBias, attend


def landmark_scores(call: SparseCall) -> torch.Tensor:
    """``[B, T, V, h·w]`` how good an anchor each patch is (higher = better): ``call.scores`` if given, else
    ``call.keypoints``, else the L2 norm of the patch tokens (detached: the ranking is a choice, not a path)."""
    scores = call.scores
    if scores is None and call.keypoints is not None:
        scores = call.keypoints
    elif scores is None:
        scores = call.frame_grid.seen(call.grid[..., call.num_special:, :].detach().norm(dim=-1), "global")
    return scores.detach()


def landmark_anchors(call: SparseCall, num_landmarks: int) -> torch.Tensor:
    """Patch indices ``[B, T, V, K]`` (in ``0..h·w-1``) of the K highest-ranked patches of every frame
    (:func:`landmark_scores`). Ties go to the lower patch index (stable sort), so the choice is deterministic
    on every device."""
    order = torch.sort(landmark_scores(call), dim=-1, descending=True, stable=True).indices
    return order[..., :num_landmarks]


def pooled_landmark_index(call: SparseCall, num_landmarks: int) -> torch.Tensor:
    """Global token positions ``[B, K]`` of the K highest-ranked patches of the whole clip (all of them if it
    has fewer); ties to the earlier frame and patch."""
    scores = landmark_scores(call)
    patches = scores.shape[-1]
    order = torch.sort(rearrange(scores, "b t v p -> b (t v p)"), dim=-1, descending=True, stable=True).indices
    best = order[:, :num_landmarks]
    return (best // patches) * call.frames[2] + call.num_special + best % patches


def landmark_token_index(anchors: torch.Tensor, tokens_per_frame: int, num_special: int) -> torch.Tensor:
    """Anchor patch indices ``[B, T, V, K]`` -> their positions ``[B, T·V·K]`` in the global token order."""
    t, v = anchors.shape[1:3]
    frame = torch.arange(t * v, device=anchors.device).view(t, v, 1)
    return rearrange(frame * tokens_per_frame + num_special + anchors, "b t v k -> b (t v k)")


def dilated_groups(t: int, v: int, levels: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Frames (index ``t·V + v``) grouped by how many distinct neighbour frames they have.

    The neighbours of (t, v) are (t + δ, v) and (t, v + δ) for δ in ``{0, ±l}`` that lie inside the grid.
    Returns ``[(frames [G], neighbours [G, n])]``, one entry per distinct count n, so that each group
    attends to equally many keys and no padding (or padding mask) is needed.
    """
    offsets = sorted({0, *levels, *(-level for level in levels)})
    groups: dict[int, tuple[list[int], list[list[int]]]] = {}
    for ti in range(t):
        for vi in range(v):
            near = {(ti + d) * v + vi for d in offsets if 0 <= ti + d < t}
            near |= {ti * v + vi + d for d in offsets if 0 <= vi + d < v}
            frames, neighbours = groups.setdefault(len(near), ([], []))
            frames.append(ti * v + vi)
            neighbours.append(sorted(near))
    return [(torch.tensor(frames), torch.tensor(neighbours)) for frames, neighbours in groups.values()]


def dilated_mask(t: int, v: int, tokens_per_frame: int, levels: tuple[int, ...]) -> torch.Tensor:
    """Dense reference: ``[N, N]``, token i may attend to token j when their frames are dilated neighbours."""
    ti = torch.arange(t).repeat_interleave(v * tokens_per_frame)
    vi = torch.arange(v).repeat_interleave(tokens_per_frame).repeat(t)
    steps = torch.tensor([0, *levels])
    dt, dv = (ti[:, None] - ti[None, :]).abs(), (vi[:, None] - vi[None, :]).abs()
    return ((dt == 0) & torch.isin(dv, steps)) | ((dv == 0) & torch.isin(dt, steps))


class LandmarkBlock(SparseGlobalBlock):
    """Every token attends to the ``num_landmarks`` anchor patches of every frame (``landmark_pool = "clip"``:
    of the whole clip)."""

    def reads_keypoints(self, call: SparseCall) -> bool:
        return call.scores is None  # the keypoints rank the anchors

    @classmethod
    def min_patches(cls, cfg: SparseGlobalConfig) -> int:
        return cfg.num_landmarks if cfg.landmark_pool == "frame" else 1  # a frame pool: each frame gives K

    def _index(self, call: SparseCall) -> torch.Tensor:
        """Global token positions of the anchors ``[B, T·V·K]`` (``clip`` pool: ``[B, K]``)."""
        if self.cfg.landmark_pool == "clip":
            return pooled_landmark_index(call, self.cfg.num_landmarks)
        return landmark_token_index(landmark_anchors(call, self.cfg.num_landmarks), call.frames[2], call.num_special)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: SparseCall) -> torch.Tensor:
        index = self._index(call)
        heads, dim = q.shape[1], q.shape[3]
        gather_index = index[:, None, :, None].expand(-1, heads, -1, dim)
        terms = call.bias_terms()
        bias = None if terms is None else RowKeyBias(terms[0], terms[1].gather(1, index))
        return attend(q, k.gather(2, gather_index), v.gather(2, gather_index), AttentionExtras(bias=bias),
                      backend=self.block.attn.backend)

    def reference(self, x: torch.Tensor, positions: torch.Tensor, call: SparseCall) -> torch.Tensor:
        index, n = self._index(call), x.shape[1]
        keys = torch.zeros(index.shape[0], n, dtype=torch.bool, device=index.device)
        keys.scatter_(1, index, True)
        allowed = keys[:, None, None, :].expand(-1, 1, n, -1)
        return self.block(x, positions, AttentionExtras(mask=with_bias(allowed, call.bias_terms())))


class DilatedBlock(SparseGlobalBlock):
    """The tokens of frame (t, v) attend to the frames at time and view offsets ``0, ±l`` (``dilation_levels``)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: SparseCall) -> torch.Tensor:
        """One attention call per neighbour count (``dilated_groups``) over the query frames, outputs put back in
        their order."""
        t, views, p = call.frames
        b = q.shape[0]
        qf, kf, vf = (rearrange(x, "b h (f p) d -> b h f p d", p=p) for x in (q, k, v))
        terms = call.bias_terms()
        rows, keys = (None, None) if terms is None else (rearrange(x, "b (f p) -> b f p", p=p) for x in terms)
        queries = call.queries
        local = torch.full((t * views,), -1, dtype=torch.long, device=q.device)  # global frame -> query position
        local[queries] = torch.arange(len(queries), device=q.device)
        outs, order = [], []
        for frames, near in dilated_groups(t, views, self.cfg.dilation_levels):
            frames, near = local[frames.to(q.device)], near.to(q.device)
            held = frames >= 0
            frames, near = frames[held], near[held]
            if not len(frames):
                continue
            bias = None
            if terms is not None:
                bias = RowKeyBias(
                    rearrange(rows[:, frames], "b g p -> (b g) p"), rearrange(keys[:, near], "b g n p -> (b g) (n p)")
                )
            out = attend(
                rearrange(qf[:, :, frames], "b h g p d -> (b g) h p d"),
                rearrange(kf[:, :, near], "b h g n p d -> (b g) h (n p) d"),
                rearrange(vf[:, :, near], "b h g n p d -> (b g) h (n p) d"),
                AttentionExtras(bias=bias),
                backend=self.block.attn.backend,
            )
            outs.append(rearrange(out, "(b g) h p d -> b h g p d", b=b))
            order.append(frames)
        out = torch.cat(outs, dim=2)[:, :, torch.argsort(torch.cat(order))]
        return rearrange(out, "b h f p d -> b h (f p) d")

    def reference(self, x: torch.Tensor, positions: torch.Tensor, call: SparseCall) -> torch.Tensor:
        allowed = dilated_mask(*call.frames, self.cfg.dilation_levels).to(x.device)
        return self.block(x, positions, AttentionExtras(mask=with_bias(allowed, call.bias_terms())))


class MemoryBlock(SparseGlobalBlock):
    """``num_memory_tokens`` learned tokens (key ``memory_tokens`` ``[1, M, C]``) gather from all tokens, then every
    token reads them. Patch queries only ever see memory keys, so the keypoint bias applies where patches are
    keys: on the gather pass (memory rows get the λ weight)."""

    def build_own(self, agg: AggregatorConfig) -> None:
        self.memory_tokens = nn.Parameter(torch.randn(1, self.cfg.num_memory_tokens, agg.embed_dim) * 0.02)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: SparseCall) -> torch.Tensor:
        """Memory tokens gather from all tokens (+ residual), then every query reads the M updated memory tokens."""
        block, backend = self.block, self.block.attn.backend
        b, m = q.shape[0], self.cfg.num_memory_tokens
        origin = q.new_zeros(m, 2, dtype=torch.long)  # RoPE position (0, 0): no rotation
        memory = self.memory_tokens.expand(b, -1, -1)
        mq, mk, mv = block.attn.heads(block.norm1(memory), origin)
        terms = call.bias_terms()
        bias = None
        if terms is not None:
            bias = RowKeyBias(call.lam.expand(b, m), torch.cat([terms[1].new_zeros(b, m), terms[1]], dim=1))
        gathered = attend(mq, torch.cat([mk, k], dim=2), torch.cat([mv, v], dim=2), AttentionExtras(bias=bias),
                          backend=backend)
        memory = memory + block.ls1(block.attn.proj(merge_heads(gathered)))
        _, mk, mv = block.attn.heads(block.norm1(memory), origin)
        return attend(q, mk, mv, backend=backend)

    def reference(self, x: torch.Tensor, positions: torch.Tensor, call: SparseCall) -> torch.Tensor:
        """Both memory passes as masked dense attention over ``[memory tokens; tokens]`` ``[B, M + N, C]``."""
        block = self.block
        b, n, m = x.shape[0], x.shape[1], self.cfg.num_memory_tokens
        aug_pos = torch.cat([positions.new_zeros(m, 2), positions])
        is_memory = torch.arange(m + n, device=x.device) < m
        own = torch.eye(m + n, dtype=torch.bool, device=x.device)  # rows whose output is discarded see only themselves
        memory = self.memory_tokens.expand(b, -1, -1)
        terms = call.bias_terms()
        gather_terms = None
        if terms is not None:
            rows = call.lam * is_memory.to(x.dtype)
            gather_terms = (rows.expand(b, -1), torch.cat([terms[1].new_zeros(b, m), terms[1]], dim=1))
        gather = AttentionExtras(mask=with_bias(is_memory[:, None] | own, gather_terms))
        memory = memory + block.ls1(block.attn(block.norm1(torch.cat([memory, x], dim=1)), aug_pos, gather)[:, :m])
        broadcast = torch.where(is_memory[:, None], own, is_memory[None, :])
        return block(torch.cat([memory, x], dim=1), aug_pos, AttentionExtras(mask=broadcast))[:, m:]


STRATEGIES: dict[str, type[SparseGlobalBlock]] = {
    "landmark": LandmarkBlock, "dilated": DilatedBlock, "memory": MemoryBlock,
}
"""One class per name of ``config.SPARSE_STRATEGIES`` (a test checks the two agree)."""


def sparse_block(cfg: SparseGlobalConfig, agg: AggregatorConfig, rope: RotaryEmbedding2D) -> SparseGlobalBlock:
    """The sparse block of ``cfg.strategy`` (``cfg`` validated by ``SparseGlobalConfig.validate``)."""
    return STRATEGIES[cfg.strategy](cfg, agg, rope)
