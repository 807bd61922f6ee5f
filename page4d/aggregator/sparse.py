"""Sparse global attention: one extra block over all T·V·P tokens whose keys are a sparse, strategy-chosen set.

q, k, v of every token are computed once (q/k-norm and 2-D RoPE are per token, so gathering them
afterwards is exact); each strategy (``page4d.aggregator.sparse_strategies``, one subclass each) then
attends every query to its own key set. The block is a standard ``Block`` with LayerScale 0, so it is
exactly the identity until trained. ``dense_reference`` computes the same result through
``Block.forward`` with an explicit mask of who attends to whom (tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.aggregator.grid import FrameGrid
from page4d.config import AggregatorConfig, SparseGlobalConfig
from page4d.nn import Block, RotaryEmbedding2D, set_attention_backend


@dataclass(frozen=True)
class SparseCall:
    """One call of a sparse block: its tokens and the optional inputs, already checked."""

    grid: torch.Tensor
    """``[B, T_loc, V_loc, P, C]`` the query frames' tokens (this process's; the whole grid with one process); per
    frame ``num_special`` camera/register tokens, then h·w patches."""
    num_special: int
    scores: torch.Tensor | None
    """``[B, T, V, h·w]`` landmark ranking (higher = better), every frame of ``grid``'s batch elements."""
    keypoints: torch.Tensor | None
    """``[B, T, V, h·w]`` keypoint density in [0, 1], every frame of ``grid``'s batch elements."""
    lam: torch.Tensor | None
    """Clamped λ_kpt (0-d) when the keypoint bias is on and keypoints were given, else None."""
    frame_grid: FrameGrid | None = None
    """The whole grid and which of its frames ``grid`` holds (layout ``global``; a split batch: its elements);
    default: one process, ``grid`` is the whole grid."""

    def __post_init__(self) -> None:
        if self.frame_grid is None:
            object.__setattr__(self, "frame_grid", FrameGrid(*self.grid.shape[:3]))

    @property
    def frames(self) -> tuple[int, int, int]:
        """(T, V, P) of the whole grid."""
        return self.frame_grid.t, self.frame_grid.v, self.grid.shape[3]

    @property
    def queries(self) -> torch.Tensor:
        """Global frame numbers ``t·V + v`` of the query frames ``[T_loc·V_loc]``, in ``grid``'s order."""
        return self.frame_grid.frame_ids("global", self.grid.device)

    def bias_terms(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keypoint bias: rows ``[B, N_q]`` over the query tokens (λ on patch queries, 0 on the others) and keys
        ``[B, N]`` over the whole grid's tokens in global order (the keypoint density on patches, 0 on
        camera/register tokens); None without the bias."""
        if self.lam is None:
            return None
        b, t, v, p = self.grid.shape[:4]
        keys = F.pad(self.keypoints.to(self.lam.dtype), (self.num_special, 0))
        rows = self.lam * (torch.arange(p, device=keys.device) >= self.num_special).to(self.lam.dtype)
        return rearrange(rows.expand(b, t, v, p), "b t v p -> b (t v p)"), rearrange(keys, "b t v p -> b (t v p)")


def with_bias(allowed: torch.Tensor, terms: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Boolean ``allowed`` ``[.., Lq, Lk]`` -> itself, or the keypoint bias ``[B, 1, Lq, Lk]`` (-inf: not allowed)."""
    if terms is None:
        return allowed
    rows, keys = terms
    return (rows[:, None, :, None] * keys[:, None, None, :]).masked_fill(~allowed, float("-inf"))


def merge_heads(heads: torch.Tensor) -> torch.Tensor:
    """``[N, heads, L, D]`` -> ``[N, L, heads·D]``."""
    return rearrange(heads, "n h l d -> n l (h d)")


class SparseGlobalBlock(nn.Module, ABC):
    """A pre-norm residual block over the token grid ``[B, T, V, P, C]`` with sparse global attention; the
    subclasses in ``sparse_strategies`` say which keys each query sees (``attend``, ``reference``).

    Keys: ``block.*`` (a standard aggregator ``Block``, LayerScale initialised to 0), ``lambda_kpt`` (0-d, with
    ``keypoint_bias`` only) and the strategy's own (``memory_tokens`` for ``memory``).

    Keypoint bias: patch queries get ``+clamp(λ_kpt, ±lambda_bound) · keypoints_j`` on every patch key j
    (0 on camera/register keys and rows).
    """

    def __init__(self, cfg: SparseGlobalConfig, agg: AggregatorConfig, rope: RotaryEmbedding2D):
        super().__init__()
        self.cfg = cfg
        self.block = Block.from_config(agg, rope, init_values=0.0)
        self.build_own(agg)
        if cfg.keypoint_bias:
            self.lambda_kpt = nn.Parameter(torch.zeros(()))

    def build_own(self, agg: AggregatorConfig) -> None:
        """Register the strategy's own parameters (before ``lambda_kpt``, keeping the parameter order)."""

    @abstractmethod
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: SparseCall) -> torch.Tensor:
        """Queries ``[B, heads, N_q, D]`` of the query frames (``call.queries``) over this strategy's keys among
        the whole grid's ``k``, ``v`` ``[B, heads, N, D]`` -> ``[B, heads, N_q, D]``."""

    @abstractmethod
    def reference(self, x: torch.Tensor, positions: torch.Tensor, call: SparseCall) -> torch.Tensor:
        """Dense oracle of the block on ``x`` ``[B, N, C]``: ``self.block`` with an explicit ``[.., N, N]`` mask."""

    def reads_keypoints(self, call: SparseCall) -> bool:
        """Whether the strategy itself reads ``call.keypoints`` (besides the keypoint bias)."""
        return False

    @classmethod
    def min_patches(cls, cfg: SparseGlobalConfig) -> int:
        """Patches per frame the strategy needs."""
        return 1

    def forward(
        self,
        grid: torch.Tensor,
        pos: torch.Tensor,
        num_special: int,
        scores: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
        frames: FrameGrid | None = None,
    ) -> torch.Tensor:
        """Tokens ``[B, T, V, P, C]`` -> ``[B, T, V, P, C]``.

        Args:
            grid: tokens; per frame ``num_special`` camera/register tokens, then h·w patches (row-major). With
                ``frames`` sharded over processes: this process's frames ``[B, T_loc, V_loc, P, C]`` of layout
                ``global``, whose queries attend to keys and values gathered from every process.
            pos: RoPE positions of one frame ``[P, 2]`` (``tokens.frame_positions``).
            scores: ``[B, T, V, h·w]`` anchor ranking for ``landmark`` (higher = better, e.g. 1 - moving);
                ignored by the other strategies.
            keypoints: ``[B, T, V, h·w]`` in [0, 1]: the keys of the keypoint bias, and the anchor ranking of
                ``landmark`` when no ``scores`` are given. Passing keypoints that nothing uses is an error.
            frames: the whole grid and this process's part of it (default: one process, ``grid`` is whole).
        """
        frames = frames or FrameGrid(*grid.shape[:3])
        call = self._call(grid, pos, num_special, scores, keypoints, frames)
        b, t, v = grid.shape[:3]
        block = self.block
        x = rearrange(grid, "b t v p c -> b (t v p) c")
        q, k, values = block.attn.heads(block.norm1(x), pos.repeat(t * v, 1))
        whole = frames.key_gather("global")
        if whole is not None:
            k, values = whole(k, values)
        x = x + block.ls1(block.attn.proj(merge_heads(self.attend(q, k, values, call))))
        x = x + block.ls2(block.mlp(block.norm2(x)))
        return rearrange(x, "b (t v p) c -> b t v p c", t=t, v=v)

    def dense_reference(
        self,
        grid: torch.Tensor,
        pos: torch.Tensor,
        num_special: int,
        scores: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward`` computed on the dense path over ``[B, T·V·P, C]`` (``reference``). Builds N×N tensors: a
        test oracle only."""
        call = self._call(grid, pos, num_special, scores, keypoints, FrameGrid(*grid.shape[:3]))
        t, v, _ = call.frames
        backend = self.block.attn.backend
        set_attention_backend(self.block, "dense")
        try:
            x = self.reference(rearrange(grid, "b t v p c -> b (t v p) c"), pos.repeat(t * v, 1), call)
        finally:
            set_attention_backend(self.block, backend)
        return rearrange(x, "b (t v p) c -> b t v p c", t=t, v=v)

    def _call(
        self,
        grid: torch.Tensor,
        pos: torch.Tensor,
        num_special: int,
        scores: torch.Tensor | None,
        keypoints: torch.Tensor | None,
        frames: FrameGrid,
    ) -> SparseCall:
        """The checked inputs as one ``SparseCall``; ``ValueError`` naming the input that is wrong."""
        if grid.dim() != 5:
            raise ValueError(f"sparse global attention needs tokens [B, T, V, P, C], got shape {tuple(grid.shape)}")
        if tuple(grid.shape[:3]) != frames.shape("global"):
            raise ValueError(f"tokens of {tuple(grid.shape[:3])} frames, but this process holds "
                             f"{frames.shape('global')}")
        b, t, v, p = grid.shape[0], frames.t, frames.v, grid.shape[3]
        if tuple(pos.shape) != (p, 2):
            raise ValueError(f"pos must be one frame's RoPE positions [{p}, 2], got shape {tuple(pos.shape)}")
        if not 0 <= num_special < p:
            raise ValueError(f"num_special must be in [0, {p}) for {p} tokens per frame, got {num_special}")
        patches = (b, t, v, p - num_special)
        for name, value in (("scores", scores), ("keypoints", keypoints)):
            if value is not None and tuple(value.shape) != patches:
                raise ValueError(f"{name} must have shape [B, T, V, h*w] = {list(patches)}, got {list(value.shape)}")
        need = self.min_patches(self.cfg)
        if p - num_special < need:
            raise ValueError(f"the {self.cfg.strategy} sparse block needs at least {need} patches per frame, got "
                             f"{p - num_special}")
        lam = None
        if self.cfg.keypoint_bias and keypoints is not None:
            lam = self.lambda_kpt.clamp(-self.cfg.lambda_bound, self.cfg.lambda_bound)
        call = SparseCall(grid, num_special, scores, keypoints, lam, frames)
        if keypoints is not None and lam is None and not self.reads_keypoints(call):
            raise ValueError(
                f"keypoints were given but nothing uses them: keypoint_bias is off and the {self.cfg.strategy!r} "
                "strategy does not read them" + (" (scores already rank the landmarks)" if scores is not None else "")
            )
        return call
