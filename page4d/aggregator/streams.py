"""Token streams: one shared stream, or a pose and a geometry stream (the design documents' "two streams").

A stream strategy lives for one forward pass and tells the aggregator which streams run each block,
which one the mask head reads, and which output entries go to the camera head (pose) and to the dense
heads (geometry):

* ``SharedStreams``: one stream; camera/register query rows take the pose bias and patch rows the
  geometry bias (``mask_bias``). The pose and geometry entries are the same dict.
* ``DualStreams``: the shared stream until ``dual_from_block``, then a pose stream (every query row takes
  the pose bias; read by the camera head) and a geometry stream (the geometry bias; read by the dense heads
  and the mask head). Their blocks share weights, or the pose stream runs its own copies (``branched``,
  keys ``aggregator.pose_{time,view}_blocks.{i}``). While both would compute the same thing (no active
  bias, shared weights) the fork is not made, so at λ = 0 the outputs are the shared stream's exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from page4d.aggregator.mask_bias import RowValues, StreamRole
from page4d.aggregator.schedule import BlockStep

Entries = dict[int, torch.Tensor]
"""Output entry index -> ``[B, T, V, P, 2C]`` = concat(time block i output, view block i output)."""


@dataclass
class Stream:
    """One token stream during a forward: its tokens in the layout of the last block, and its kept outputs."""

    role: StreamRole
    x: torch.Tensor
    layout: str
    keep: set[int]
    rows: RowValues
    """The mask bias's row weights for this stream's queries (empty: no bias, plain attention)."""
    own_blocks: dict[str, nn.ModuleDict] = field(default_factory=dict)
    """Bank -> blocks this stream runs instead of the aggregator's (keyed by ``str(index)``)."""
    halves: dict[str, Entries] = field(default_factory=lambda: {"time": {}, "view": {}})
    entries: Entries = field(default_factory=dict)

    @property
    def takes_keypoints(self) -> bool:
        """The keypoint bias belongs to the geometry queries, so a dual pose stream runs without keypoints."""
        return self.role != "pose"

    def fork(self, role: StreamRole, keep: set[int], rows: RowValues,
             own_blocks: dict[str, nn.ModuleDict] | None = None) -> Stream:
        """A stream that continues from this one's tokens and kept outputs."""
        halves = {bank: dict(kept) for bank, kept in self.halves.items()}
        return Stream(role, self.x, self.layout, keep, rows, own_blocks or {}, halves, dict(self.entries))

    def record(self, bank: str, index: int, grid: torch.Tensor) -> None:
        """Keep block ``index`` of ``bank``'s output ``[B, T, V, P, C]``; an entry is made once both halves exist."""
        self.halves[bank][index] = grid
        if index in self.halves["time"] and index in self.halves["view"]:
            pair = (self.halves["time"].pop(index), self.halves["view"].pop(index))
            self.entries[index] = torch.cat(pair, dim=-1)


class Streams(Protocol):
    """What the aggregator asks of its streams during one forward."""

    def running(self, step: BlockStep) -> list[Stream]:
        """The streams that run ``step``."""
        ...

    def geometry(self) -> Stream:
        """The stream the dynamic-mask head reads."""
        ...

    def entries(self) -> tuple[Entries, Entries]:
        """(pose entries for the camera head, geometry entries for the dense heads)."""
        ...


RowsFor = Callable[[StreamRole], RowValues]


class SharedStreams:
    """One stream for every query; it keeps the entries both the pose and the geometry readers need."""

    def __init__(self, tokens: torch.Tensor, layout: str, pose_keep: set[int], geometry_keep: set[int],
                 rows: RowsFor):
        self.stream = Stream("shared", tokens, layout, pose_keep | geometry_keep, rows("shared"))

    def running(self, step: BlockStep) -> list[Stream]:
        return [self.stream]

    def geometry(self) -> Stream:
        return self.stream

    def entries(self) -> tuple[Entries, Entries]:
        return self.stream.entries, self.stream.entries


class DualStreams(SharedStreams):
    """The shared stream, forked into a pose and a geometry stream at block ``from_block``."""

    def __init__(self, tokens: torch.Tensor, layout: str, pose_keep: set[int], geometry_keep: set[int],
                 rows: RowsFor, from_block: int, pose_blocks: dict[str, nn.ModuleDict]):
        super().__init__(tokens, layout, pose_keep, geometry_keep, rows)
        self.keeps = (pose_keep, geometry_keep)
        self.rows = (rows("pose"), rows("geometry"))
        self.pose_blocks = pose_blocks
        self.fork_at = from_block if self.rows[0] or self.rows[1] or pose_blocks else None
        self.split: tuple[Stream, Stream] | None = None

    def running(self, step: BlockStep) -> list[Stream]:
        # A sparse step's index counts sparse blocks, not pairs: it never triggers the fork.
        due = self.fork_at is not None and step.bank != "sparse" and step.index >= self.fork_at
        if self.split is None and due:
            self.split = (
                self.stream.fork("pose", self.keeps[0], self.rows[0], self.pose_blocks),
                self.stream.fork("geometry", self.keeps[1], self.rows[1]),
            )
        return [self.stream] if self.split is None else list(self.split)

    def geometry(self) -> Stream:
        return self.stream if self.split is None else self.split[1]

    def entries(self) -> tuple[Entries, Entries]:
        if self.split is None:
            return super().entries()
        return self.split[0].entries, self.split[1].entries
