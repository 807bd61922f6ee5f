"""Sparse global attention: one extra block over all T·V·P tokens whose keys are a sparse, strategy-chosen set.

q, k, v of every token are computed once (q/k-norm and 2-D RoPE are per token, so gathering them
afterwards is exact); each strategy then attends every query to its own key set:

    landmark : every token -> the K anchor patches of every frame        O(N·T·V·K)
    dilated  : frame (t, v) -> frames (t ± l, v), (t, v ± l), itself      O(T·V·n·P²), n ≤ 1 + 4·len(levels)
    memory   : M learned tokens <- all tokens, then every token -> M      O(N·M)

The block is a standard ``Block`` with LayerScale 0, so it is exactly the identity until trained.
``dense_reference`` computes the same result through ``Block.forward`` with an explicit mask (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.aggregator.sparse_strategies import (
    STRATEGIES,
    dilated_groups,
    dilated_mask,
    landmark_anchors,
    landmark_mask,
    landmark_token_index,
)
from page4d.config import AggregatorConfig, SparseGlobalConfig
from page4d.nn import Block, RotaryEmbedding2D, RowKeyBias, attend, set_attention_backend

_BiasTerms = tuple[torch.Tensor, torch.Tensor]
"""Rank-1 keypoint bias over the global token order: row weights ``[B, N]`` and key values ``[B, N]``."""


def _merge(heads: torch.Tensor) -> torch.Tensor:
    return rearrange(heads, "n h l d -> n l (h d)")


def _with_bias(allowed: torch.Tensor, terms: _BiasTerms | None) -> torch.Tensor:
    """Boolean ``allowed`` ``[.., Lq, Lk]`` -> itself, or the keypoint bias ``[B, 1, Lq, Lk]`` (-inf: not allowed)."""
    if terms is None:
        return allowed
    rows, keys = terms
    return (rows[:, None, :, None] * keys[:, None, None, :]).masked_fill(~allowed, float("-inf"))


class SparseGlobalBlock(nn.Module):
    """A pre-norm residual block over the token grid ``[B, T, V, P, C]`` with sparse global attention.

    Keys: ``block.*`` (a standard aggregator ``Block``, LayerScale initialised to 0), ``memory_tokens``
    ``[1, M, C]`` (``memory`` only) and ``lambda_kpt`` (0-d, with ``keypoint_bias`` only).

    Keypoint bias: patch queries get ``+clamp(λ_kpt, ±lambda_bound) · keypoints_j`` on every patch key j
    (0 on camera/register keys and rows). With ``memory``, patch queries only ever see memory keys, so the
    bias applies where patches are keys: on the memory tokens' gather pass (memory rows get the λ weight).
    """

    def __init__(self, cfg: SparseGlobalConfig, agg: AggregatorConfig, rope: RotaryEmbedding2D):
        super().__init__()
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"unknown sparse global strategy {cfg.strategy!r}; use one of {STRATEGIES}")
        if cfg.strategy == "landmark" and cfg.num_landmarks < 1:
            raise ValueError(f"num_landmarks must be at least 1, got {cfg.num_landmarks}")
        if cfg.strategy == "dilated" and (not cfg.dilation_levels or min(cfg.dilation_levels) < 1):
            raise ValueError(f"dilation_levels must be positive frame offsets, got {cfg.dilation_levels}")
        if cfg.strategy == "memory" and cfg.num_memory_tokens < 1:
            raise ValueError(f"num_memory_tokens must be at least 1, got {cfg.num_memory_tokens}")
        self.cfg = cfg
        self.block = Block(
            agg.embed_dim, agg.num_heads, agg.mlp_ratio, agg.qkv_bias, agg.proj_bias, agg.ffn_bias,
            init_values=0.0, qk_norm=agg.qk_norm, norm_eps=agg.layernorm_eps, rope=rope,
            qk_norm_eps=agg.qk_norm_eps,
        )
        if cfg.strategy == "memory":
            self.memory_tokens = nn.Parameter(torch.randn(1, cfg.num_memory_tokens, agg.embed_dim) * 0.02)
        if cfg.keypoint_bias:
            self.lambda_kpt = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        grid: torch.Tensor,
        pos: torch.Tensor,
        num_special: int,
        scores: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens ``[B, T, V, P, C]`` -> ``[B, T, V, P, C]``.

        Args:
            grid: tokens; per frame ``num_special`` camera/register tokens, then h·w patches (row-major).
            pos: RoPE positions of one frame ``[P, 2]`` (``tokens.frame_positions``).
            scores: ``[B, T, V, h·w]`` anchor ranking for ``landmark`` (higher = better, e.g. 1 - moving);
                ignored by the other strategies.
            keypoints: ``[B, T, V, h·w]`` in [0, 1]: the keys of the keypoint bias, and the anchor ranking of
                ``landmark`` when no ``scores`` are given. Passing keypoints that nothing uses is an error.
        """
        t, v, p = self._check(grid, pos, num_special, scores, keypoints)
        x = rearrange(grid, "b t v p c -> b (t v p) c")
        q, k, values = self.block.attn.heads(self.block.norm1(x), pos.repeat(t * v, 1))
        terms = self._bias_terms(keypoints, num_special, p)
        if self.cfg.strategy == "landmark":
            index = landmark_token_index(
                landmark_anchors(grid, num_special, self.cfg.num_landmarks, scores, keypoints), p, num_special
            )
            out = self._landmark(q, k, values, index, terms)
        elif self.cfg.strategy == "dilated":
            out = self._dilated(q, k, values, t, v, p, terms)
        else:
            out = self._memory(q, k, values, terms)
        x = x + self.block.ls1(self.block.attn.proj(_merge(out)))
        x = x + self.block.ls2(self.block.mlp(self.block.norm2(x)))
        return rearrange(x, "b (t v p) c -> b t v p c", t=t, v=v)

    def dense_reference(
        self,
        grid: torch.Tensor,
        pos: torch.Tensor,
        num_special: int,
        scores: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward`` computed with ``Block.forward`` on the dense path over ``[B, T·V·P, C]`` and an explicit
        mask of who attends to whom (``memory``: each pass over ``[memory tokens; tokens]``). Builds N×N
        tensors: a test oracle only."""
        t, v, p = self._check(grid, pos, num_special, scores, keypoints)
        x = rearrange(grid, "b t v p c -> b (t v p) c")
        positions = pos.repeat(t * v, 1)
        terms = self._bias_terms(keypoints, num_special, p)
        backend = self.block.attn.backend
        set_attention_backend(self.block, "dense")
        try:
            if self.cfg.strategy == "memory":
                x = self._memory_reference(x, positions, terms)
            else:
                if self.cfg.strategy == "landmark":
                    anchors = landmark_anchors(grid, num_special, self.cfg.num_landmarks, scores, keypoints)
                    allowed = landmark_mask(landmark_token_index(anchors, p, num_special), x.shape[1])[:, None]
                else:
                    allowed = dilated_mask(t, v, p, self.cfg.dilation_levels).to(x.device)
                x = self.block(x, positions, _with_bias(allowed, terms))
        finally:
            set_attention_backend(self.block, backend)
        return rearrange(x, "b (t v p) c -> b t v p c", t=t, v=v)

    def _check(
        self,
        grid: torch.Tensor,
        pos: torch.Tensor,
        num_special: int,
        scores: torch.Tensor | None,
        keypoints: torch.Tensor | None,
    ) -> tuple[int, int, int]:
        """Validate the inputs; returns (T, V, P)."""
        if grid.dim() != 5:
            raise ValueError(f"sparse global attention needs tokens [B, T, V, P, C], got shape {tuple(grid.shape)}")
        b, t, v, p, _ = grid.shape
        if tuple(pos.shape) != (p, 2):
            raise ValueError(f"pos must be one frame's RoPE positions [{p}, 2], got shape {tuple(pos.shape)}")
        if not 0 <= num_special < p:
            raise ValueError(f"num_special must be in [0, {p}) for {p} tokens per frame, got {num_special}")
        patches = (b, t, v, p - num_special)
        for name, value in (("scores", scores), ("keypoints", keypoints)):
            if value is not None and tuple(value.shape) != patches:
                raise ValueError(f"{name} must have shape [B, T, V, h*w] = {list(patches)}, got {list(value.shape)}")
        landmark = self.cfg.strategy == "landmark"
        if keypoints is not None and not self.cfg.keypoint_bias and not (landmark and scores is None):
            raise ValueError(
                "keypoints were given but nothing uses them: keypoint_bias is off"
                + (" and scores already rank the landmarks" if landmark else f" and strategy is {self.cfg.strategy!r}")
            )
        if landmark and self.cfg.num_landmarks > p - num_special:
            raise ValueError(f"num_landmarks {self.cfg.num_landmarks} exceeds the {p - num_special} patches per frame")
        return t, v, p

    def _lambda(self) -> torch.Tensor:
        """λ_kpt clamped to ``[-lambda_bound, lambda_bound]`` (0-d)."""
        return self.lambda_kpt.clamp(-self.cfg.lambda_bound, self.cfg.lambda_bound)

    def _bias_terms(self, keypoints: torch.Tensor | None, num_special: int, p: int) -> _BiasTerms | None:
        """Keypoint bias over the global token order: rows ``λ`` on patch queries, keys = keypoints on patches."""
        if not self.cfg.keypoint_bias or keypoints is None:
            return None
        lam = self._lambda()
        keys = F.pad(keypoints.to(lam.dtype), (num_special, 0))
        rows = lam * (torch.arange(p, device=keys.device) >= num_special).to(lam.dtype)
        return rearrange(rows.expand_as(keys), "b t v p -> b (t v p)"), rearrange(keys, "b t v p -> b (t v p)")

    def _landmark(
        self, q: torch.Tensor, k: torch.Tensor, values: torch.Tensor, index: torch.Tensor, terms: _BiasTerms | None
    ) -> torch.Tensor:
        """Queries ``[B, heads, N, D]`` over the anchors ``index`` ``[B, T·V·K]`` -> ``[B, heads, N, D]``."""
        heads, dim = q.shape[1], q.shape[3]
        gather_index = index[:, None, :, None].expand(-1, heads, -1, dim)
        bias = None if terms is None else RowKeyBias(terms[0], terms[1].gather(1, index))
        return attend(
            q, k.gather(2, gather_index), values.gather(2, gather_index), backend=self.block.attn.backend, bias=bias
        )

    def _dilated(
        self, q: torch.Tensor, k: torch.Tensor, values: torch.Tensor, t: int, v: int, p: int, terms: _BiasTerms | None
    ) -> torch.Tensor:
        """Each frame's queries over its neighbour frames' keys, one attention call per neighbour count."""
        b = q.shape[0]
        qf, kf, vf = (rearrange(x, "b h (f p) d -> b h f p d", p=p) for x in (q, k, values))
        rows, keys = (None, None) if terms is None else (rearrange(x, "b (f p) -> b f p", p=p) for x in terms)
        outs, order = [], []
        for frames, near in dilated_groups(t, v, self.cfg.dilation_levels):
            frames, near = frames.to(q.device), near.to(q.device)
            bias = None
            if terms is not None:
                bias = RowKeyBias(
                    rearrange(rows[:, frames], "b g p -> (b g) p"), rearrange(keys[:, near], "b g n p -> (b g) (n p)")
                )
            out = attend(
                rearrange(qf[:, :, frames], "b h g p d -> (b g) h p d"),
                rearrange(kf[:, :, near], "b h g n p d -> (b g) h (n p) d"),
                rearrange(vf[:, :, near], "b h g n p d -> (b g) h (n p) d"),
                backend=self.block.attn.backend,
                bias=bias,
            )
            outs.append(rearrange(out, "(b g) h p d -> b h g p d", b=b))
            order.append(frames)
        out = torch.cat(outs, dim=2)[:, :, torch.argsort(torch.cat(order))]
        return rearrange(out, "b h f p d -> b h (f p) d")

    def _memory(self, q: torch.Tensor, k: torch.Tensor, values: torch.Tensor, terms: _BiasTerms | None) -> torch.Tensor:
        """Memory tokens gather from all tokens (+ residual), then every query reads the M updated memory tokens."""
        block, backend = self.block, self.block.attn.backend
        b, m = q.shape[0], self.cfg.num_memory_tokens
        origin = q.new_zeros(m, 2, dtype=torch.long)  # RoPE position (0, 0): no rotation
        memory = self.memory_tokens.expand(b, -1, -1)
        mq, mk, mv = block.attn.heads(block.norm1(memory), origin)
        bias = None
        if terms is not None:
            rows = self._lambda().expand(b, m)
            bias = RowKeyBias(rows, torch.cat([terms[1].new_zeros(b, m), terms[1]], dim=1))
        gathered = attend(mq, torch.cat([mk, k], dim=2), torch.cat([mv, values], dim=2), backend=backend, bias=bias)
        memory = memory + block.ls1(block.attn.proj(_merge(gathered)))
        _, mk, mv = block.attn.heads(block.norm1(memory), origin)
        return attend(q, mk, mv, backend=backend)

    def _memory_reference(self, x: torch.Tensor, positions: torch.Tensor, terms: _BiasTerms | None) -> torch.Tensor:
        """Both memory passes as masked dense attention over ``[memory tokens; tokens]`` ``[B, M + N, C]``."""
        block = self.block
        b, n, m = x.shape[0], x.shape[1], self.cfg.num_memory_tokens
        aug_pos = torch.cat([positions.new_zeros(m, 2), positions])
        is_memory = torch.arange(m + n, device=x.device) < m
        own = torch.eye(m + n, dtype=torch.bool, device=x.device)  # rows whose output is discarded see only themselves
        memory = self.memory_tokens.expand(b, -1, -1)
        gather_terms = None
        if terms is not None:
            rows = self._lambda() * is_memory.to(x.dtype)
            gather_terms = (rows.expand(b, -1), torch.cat([terms[1].new_zeros(b, m), terms[1]], dim=1))
        gather = _with_bias(is_memory[:, None] | own, gather_terms)
        memory = memory + block.ls1(block.attn(block.norm1(torch.cat([memory, x], dim=1)), aug_pos, gather)[:, :m])
        broadcast = torch.where(is_memory[:, None], own, is_memory[None, :])
        return block(torch.cat([memory, x], dim=1), aug_pos, broadcast)[:, m:]
