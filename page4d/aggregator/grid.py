"""Which frames of a ``[B, T, V]`` grid each process holds, per attention layout, and how tokens move between them.

One forward pass over a grid may be spread over the ranks of a process group (grid parallelism, sequence
parallelism over the frame grid as DeepSpeed-Ulysses does over heads). Each attention layout's sequences are
split along one grid axis in contiguous runs (``split_sizes``):

    every layout, when B ≥ N: by batch element (independent sets, e.g. the per-step plan's steps: no exchange);
    time   : by view when V ≥ N, so each rank holds whole time sequences (its cameras, all T steps);
    view   : by time when T ≥ N, so each rank holds whole view sequences (its time steps, all V cameras);
    frame, global, and a time / view layout whose own axis is shorter than N: by the output axis (time when
             T ≥ N, else view); a block then attends its local queries to keys and values gathered from every
             rank (``key_gather``).

Between blocks of different splits the tokens are exchanged all-to-all; entries the heads read, the dynamic mask
and predictions are kept or gathered in the output split. With one process (no ``GridShard``) every layout is
local, nothing is exchanged, and every method is the identity on the whole grid: the single-process model is
this same code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from einops import rearrange
from torch.distributed import ProcessGroup

from page4d.aggregator import kinds
from page4d.distributed.collectives import exchange, gather, split_sizes

BATCH, TIME, VIEW = 0, 1, 2
"""Grid dimensions of ``[B, T, V, ...]`` a split runs along."""
KeyGather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Local keys and values ``[N, heads, L_loc, D]`` -> those of the whole sequences ``[N, heads, L, D]``."""


@dataclass(frozen=True)
class GridShard:
    """Spread one forward pass's frame grid over the processes of ``group`` (None: the default process group,
    ``torch.distributed.init_process_group`` called first). Every process calls the forward with the same whole
    inputs; each computes its share and every process returns the whole predictions."""

    group: ProcessGroup | None = None

    def position(self) -> tuple[int, int]:
        """(this process's rank, the number of processes) in the group."""
        return dist.get_rank(self.group), dist.get_world_size(self.group)


@dataclass(frozen=True)
class Split:
    """How a layout's frames are spread: along ``axis`` (``BATCH``, ``TIME`` or ``VIEW``), ``sizes[r]`` on rank r."""

    axis: int
    sizes: tuple[int, ...]
    gathered: bool
    """Whether a sequence of this layout spans ranks, so that its keys and values must be gathered."""

    def span(self, rank: int) -> range:
        """The indices along ``axis`` that ``rank`` holds."""
        start = sum(self.sizes[:rank])
        return range(start, start + self.sizes[rank])


class FrameGrid:
    """The frame grid ``[B, T, V]`` of one forward pass as seen by one rank of ``shard``'s group (None: one process).

    Tensors "local" to a layout are ``[B_loc, T_loc, V_loc, ...]``: the frames this rank holds in that layout's split.
    """

    def __init__(self, b: int, t: int, v: int, shard: GridShard | None = None):
        self.b, self.t, self.v = b, t, v
        self.group = None if shard is None else shard.group
        self.rank, self.world = (0, 1) if shard is None else shard.position()
        if self.world > 1 and max(b, t, v) < self.world:
            raise ValueError(
                f"grid sharding over {self.world} processes needs at least {self.world} time steps, cameras or "
                f"independent sets (the per-step plan's steps), got B, T, V = {b}, {t}, {v}; run fewer processes, "
                "or shard windows instead"
            )
        # Independent sets (a batch, or the per-step plan's steps) need no exchange at all: split them first.
        axis = BATCH if b >= self.world else TIME if t >= self.world else VIEW
        self.output = self._split(axis, gathered=False)

    @property
    def sharded(self) -> bool:
        """Whether the frames are spread over several processes."""
        return self.world > 1

    @property
    def size(self) -> tuple[int, int, int]:
        return self.b, self.t, self.v

    def _split(self, axis: int, gathered: bool) -> Split:
        return Split(axis, tuple(split_sizes(self.size[axis], self.world)), gathered)

    def split(self, layout: str) -> Split:
        """The split of ``layout``'s frames (every layout is the output split, local, with one process)."""
        if not self.sharded or self.output.axis == BATCH or layout == "frame":
            return self.output
        own = {"time": VIEW, "view": TIME}.get(layout)
        if own is not None and self.size[own] >= self.world:
            return self._split(own, gathered=False)
        return Split(self.output.axis, self.output.sizes, gathered=True)

    def spans(self, layout: str) -> tuple[range, range, range]:
        """(batch elements, time steps, views) this rank holds in ``layout``."""
        split = self.split(layout)
        spans = [range(n) for n in self.size]
        spans[split.axis] = split.span(self.rank)
        return spans[0], spans[1], spans[2]

    def shape(self, layout: str) -> tuple[int, int, int]:
        """``(B_loc, T_loc, V_loc)`` of ``layout``'s local frames."""
        return tuple(len(span) for span in self.spans(layout))

    def take(self, full: torch.Tensor, layout: str = "frame") -> torch.Tensor:
        """The local frames of a whole-grid tensor ``[B, T, V, ...]``."""
        if not self.sharded:
            return full
        batch, times, views = self.spans(layout)
        return full[batch.start:batch.stop, times.start:times.stop, views.start:views.stop]

    def take_batch(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's batch elements of a whole-grid tensor ``[B, ...]`` (all of them unless the batch is split)."""
        batch = self.spans("frame")[0]
        return full if not self.sharded else full[batch.start:batch.stop]

    def gather(self, local: torch.Tensor, layout: str = "frame") -> torch.Tensor:
        """Every rank's local frames of ``layout`` -> the whole grid ``[B, T, V, ...]`` on every rank."""
        if not self.sharded:
            return local
        split = self.split(layout)
        return gather(local, split.axis, list(split.sizes), self.group)

    def seen(self, local: torch.Tensor, layout: str) -> torch.Tensor:
        """Local frames ``[B_loc, T_loc, V_loc, ...]`` of ``layout`` -> every frame its local queries see: all
        frames of this rank's batch elements, gathered where ``layout``'s sequences span ranks."""
        split = self.split(layout)
        return gather(local, split.axis, list(split.sizes), self.group) if split.gathered else local

    def to_sequences(self, local: torch.Tensor, layout: str) -> torch.Tensor:
        """Local frames ``[B, T_loc, V_loc, P, C]`` -> the local sequences of ``layout``."""
        return kinds.to_sequences(local, layout)

    def from_sequences(self, seq: torch.Tensor, layout: str) -> torch.Tensor:
        """Local sequences of ``layout`` -> its local frames ``[B, T_loc, V_loc, P, C]``."""
        return kinds.from_sequences(seq, layout, *self.shape(layout))

    def local_frames(self, seq: torch.Tensor, layout: str, dst: str = "frame") -> torch.Tensor:
        """Local sequences of ``layout`` -> the local frames of ``dst``'s split (exchanged if the splits differ)."""
        return self._move(self.from_sequences(seq, layout), self.split(layout), self.split(dst))

    def convert(self, seq: torch.Tensor, src: str, dst: str) -> torch.Tensor:
        """Local sequences of layout ``src`` -> local sequences of ``dst``."""
        if self._same(self.split(src), self.split(dst)):
            return kinds.convert(seq, src, dst, *self.shape(src))
        return kinds.to_sequences(self.local_frames(seq, src, dst), dst)

    def key_gather(self, layout: str) -> KeyGather | None:
        """For a layout whose sequences span ranks: a map from local keys and values ``[N, heads, L_loc, D]`` to
        the whole sequences' ``[N, heads, L, D]``, in the layout's token order (one exchange for both); None when
        sequences are local."""
        if not self.split(layout).gathered:
            return None

        def whole(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            heads = keys.shape[1]
            both = rearrange(torch.cat([keys, values], dim=-1), "n h l d -> n l (h d)")
            seen = kinds.to_sequences(self.seen(self.from_sequences(both, layout), layout), layout)
            keys, values = rearrange(seen, "n l (h d) -> n h l d", h=heads).chunk(2, dim=-1)
            return keys, values

        return whole

    def row_values(self, full: torch.Tensor, layout: str) -> torch.Tensor:
        """Per-token values ``[B, T, V, P]`` of the whole grid -> ``[N, L_loc]`` for ``layout``'s local queries."""
        return kinds.to_sequences(self.take(full, layout)[..., None], layout)[..., 0]

    def key_values(self, full: torch.Tensor, layout: str) -> torch.Tensor:
        """Per-token key values ``[B, T, V, P]`` of the whole grid -> ``[N, L]`` for the keys a local query of
        ``layout`` sees (all of its batch element's where sequences span ranks)."""
        if self.split(layout).gathered:
            return kinds.to_sequences(self.take_batch(full)[..., None], layout)[..., 0]
        return self.row_values(full, layout)

    def frame_ids(self, layout: str, device: torch.device | None = None) -> torch.Tensor:
        """Global frame numbers ``t·V + v`` of ``layout``'s local frames, in local (t, v) order ``[T_loc·V_loc]``."""
        _, times, views = self.spans(layout)
        t = torch.arange(times.start, times.stop, device=device)
        v = torch.arange(views.start, views.stop, device=device)
        return (t[:, None] * self.v + v[None, :]).flatten()

    @staticmethod
    def _same(a: Split, b: Split) -> bool:
        return a.axis == b.axis and a.sizes == b.sizes

    def _move(self, local: torch.Tensor, src: Split, dst: Split) -> torch.Tensor:
        """Local frames of split ``src`` -> those of ``dst`` (all-to-all between a time and a view split)."""
        if self._same(src, dst):
            return local
        mine = dst.span(self.rank)
        chunks, shapes = [], []
        for rank in range(self.world):
            theirs = dst.span(rank)
            chunks.append(local.narrow(dst.axis, theirs.start, len(theirs)))
            shape = list(local.shape)
            shape[src.axis], shape[dst.axis] = src.sizes[rank], len(mine)
            shapes.append(torch.Size(shape))
        return torch.cat(exchange(chunks, shapes, self.group), dim=src.axis)
