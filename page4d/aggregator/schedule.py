"""The layer schedule: which block of which bank runs, in which order, with which attention kind.

The schedule is data built from the config, not control flow in ``forward``. Output entry ``i`` of
the aggregator is ``concat(time bank block i output, view bank block i output)`` (time first, as
VGGT's ``[frame, global]``), whatever the running order.
"""

from __future__ import annotations

from dataclasses import dataclass

from page4d.config import AggregatorConfig


@dataclass(frozen=True)
class BlockStep:
    """Run block ``index`` of ``bank`` (``time`` or ``view``) with attention ``kind``."""

    bank: str
    index: int
    kind: str


@dataclass(frozen=True)
class LayerSchedule:
    """An ordered tuple of ``BlockStep`` over ``depth`` blocks per bank."""

    steps: tuple[BlockStep, ...]
    depth: int

    @classmethod
    def alternating(cls, cfg: AggregatorConfig) -> LayerSchedule:
        """VGGT's alternating schedule: groups of ``aa_block_size`` blocks of each bank in ``aa_order``."""
        k = cfg.aa_block_size
        steps = [
            BlockStep(bank, g * k + j, cfg.bank_kinds[bank])
            for g in range(cfg.depth // k)
            for bank in cfg.aa_order
            for j in range(k)
        ]
        return cls(tuple(steps), cfg.depth)
