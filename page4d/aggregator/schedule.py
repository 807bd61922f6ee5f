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
    ``reduced``: this block runs on pooled patch tokens (``page4d.aggregator.reduction``).
    """

    bank: str
    index: int
    kind: str
    emits_mask: bool = False
    biased: bool = False
    epipolar: bool = False
    reduced: bool = False


@dataclass(frozen=True)
class LayerSchedule:
    """An ordered tuple of ``BlockStep`` over ``depth`` blocks per bank."""

    steps: tuple[BlockStep, ...]
    depth: int

    @classmethod
    def alternating(cls, cfg: AggregatorConfig) -> LayerSchedule:
        """VGGT's alternating schedule (``cfg.block_order()``) with the dynamic-mask placement of
        ``cfg.dynamic_mask`` (if any) and each sparse block right after the group that completes its pair.
        ``cfg.validate`` has checked that every biased block runs after the one that feeds the mask head."""
        mask, sparse, epi, fewer = cfg.dynamic_mask, cfg.sparse_global, cfg.epipolar, cfg.token_reduction
        k = cfg.aa_block_size
        steps = []
        for position, (bank, i) in enumerate(cfg.block_order()):
            emits = mask is not None and bank == "time" and i == mask.after_block
            biased = mask is not None and i in (mask.biased_view_blocks if bank == "view" else mask.biased_time_blocks)
            epipolar = epi is not None and bank == "view" and i in epi.view_blocks
            reduced = fewer is not None and i in (fewer.view_blocks if bank == "view" else fewer.time_blocks)
            steps.append(BlockStep(bank, i, cfg.bank_kinds[bank], emits, biased, epipolar, reduced))
            if sparse is not None and (position + 1) % (2 * k) == 0:  # a group of both banks is complete
                done = range(i - k + 1, i + 1)
                steps += [BlockStep("sparse", j, "global") for j, pair in enumerate(sparse.after_pairs) if pair in done]
        return cls(tuple(steps), cfg.depth)
