"""The layer schedule: which block of which bank runs, in which order, with which attention kind.

The schedule is data built from the config, not control flow in ``forward``. Output entry ``i`` of
the aggregator is ``concat(time bank block i output, view bank block i output)`` (time first, as
VGGT's ``[frame, global]``), whatever the running order. Sparse global blocks (bank ``sparse``, kind
``global``) run right after the step that completes their pair; they change the next pair's input,
not entry ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass

from page4d.config import AggregatorConfig


@dataclass(frozen=True)
class BlockStep:
    """Run block ``index`` of ``bank`` (``time`` or ``view``) with attention ``kind``.

    ``emits_mask``: the dynamic-mask head reads this block's output. ``biased``: this block's attention
    takes the mask bias. ``epipolar``: this block takes the epipolar prior when cameras are given.
    """

    bank: str
    index: int
    kind: str
    emits_mask: bool = False
    biased: bool = False
    epipolar: bool = False


@dataclass(frozen=True)
class LayerSchedule:
    """An ordered tuple of ``BlockStep`` over ``depth`` blocks per bank."""

    steps: tuple[BlockStep, ...]
    depth: int

    @classmethod
    def alternating(cls, cfg: AggregatorConfig) -> LayerSchedule:
        """VGGT's alternating schedule: groups of ``aa_block_size`` blocks of each bank in ``aa_order``,
        with the dynamic-mask placement of ``cfg.dynamic_mask`` (if any)."""
        k = cfg.aa_block_size
        mask = cfg.dynamic_mask
        steps = []
        for g in range(cfg.depth // k):
            for bank in cfg.aa_order:
                for j in range(k):
                    i = g * k + j
                    emits = mask is not None and bank == "time" and i == mask.after_block
                    biased = mask is not None and i in (
                        mask.biased_view_blocks if bank == "view" else mask.biased_time_blocks
                    )
                    epipolar = cfg.epipolar is not None and bank == "view" and i in cfg.epipolar.view_blocks
                    steps.append(BlockStep(bank, i, cfg.bank_kinds[bank], emits, biased, epipolar))
            sparse = cfg.sparse_global
            if sparse is not None:
                done = range(g * k, (g + 1) * k)  # pairs completed by this group
                steps += [BlockStep("sparse", j, "global") for j, i in enumerate(sparse.after_pairs) if i in done]
        schedule = cls(tuple(steps), cfg.depth)
        schedule.validate()
        return schedule

    def validate(self) -> None:
        """Every biased block must run after the block that feeds the mask head."""
        emits = [n for n, s in enumerate(self.steps) if s.emits_mask]
        biased = [n for n, s in enumerate(self.steps) if s.biased]
        if biased and len(emits) != 1:
            raise ValueError("a schedule with mask-biased blocks needs exactly one block that computes the mask")
        early = [self.steps[n] for n in biased if n < emits[0]] if biased else []
        if early:
            source = self.steps[emits[0]]
            raise ValueError(
                f"the dynamic mask is computed after {source.bank} block {source.index}, but "
                f"{', '.join(f'{s.bank} block {s.index}' for s in early)} run(s) before it and cannot use it; "
                "move dynamic_mask.after_block earlier or bias later blocks"
            )
