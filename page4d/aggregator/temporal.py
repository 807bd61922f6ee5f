"""Relative temporal position encoding for the time bank: a learnable RoPE-style time rotation.

Each time-bank block has one angle scale per head (key ``aggregator.temporal_rope.scale``
``[depth, heads]``, initialised to 0). Queries and keys are rotated by ``scale · t`` on the same channel
pairs as the 2-D RoPE, at the time rotation's own frequencies (``page4d.nn.rope``; a step in time is then
no shift in space), so logits depend only on t - t'. Chosen over an ALiBi-style ``-m·|t - t'|``
bias because it costs one rotation, keeps the fused attention kernels and needs no extra channels,
whereas an exact ALiBi bias over T time steps needs T extra q/k channels (|t - t'| has rank up to T).
With T = 1, or all scales 0, it is the identity and is skipped.
"""

from __future__ import annotations

import torch
from torch import nn


class TemporalRoPE(nn.Module):
    """Learnable time-rotation scales ``[depth, heads]`` for the time-bank blocks."""

    def __init__(self, depth: int, num_heads: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(depth, num_heads))

    def active(self) -> bool:
        """False when every scale is 0 and none is being trained: the rotation is then skipped."""
        if torch.is_grad_enabled() and self.scale.requires_grad:
            return True
        return bool((self.scale.detach() != 0).any())


def token_times(
    kind: str, t: int, v: int, p: int, device: torch.device | None = None, first: int = 0
) -> torch.Tensor | None:
    """Time index of every token of a ``kind`` sequence ``[L]`` of ``t`` time steps from ``first`` (a process
    holding part of a grid's steps); None where a sequence spans one time step."""
    times = torch.arange(first, first + t, device=device)
    if kind == "time":
        return times.repeat_interleave(p)
    if kind == "global":
        return times.repeat_interleave(v * p)
    return None
