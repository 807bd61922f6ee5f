"""Attention kinds as reshapes between the token grid ``[B, T, V, P, C]`` and attention sequences.

    time   : fixed view, attends over T·P tokens  ``[B·V, T·P, C]``   (Time-SA; VGGT frame blocks at T = 1)
    view   : fixed time, attends over V·P tokens  ``[B·T, V·P, C]``   (View-SA; VGGT global blocks at T = 1)
    frame  : one image, P tokens                  ``[B·T·V, P, C]``
    global : all T·V·P tokens                     ``[B, T·V·P, C]``
"""

from __future__ import annotations

import torch
from einops import rearrange

_SEQUENCE = {
    "time": "(b v) (t p) c",
    "view": "(b t) (v p) c",
    "frame": "(b t v) p c",
    "global": "b (t v p) c",
}
GRID = "b t v p c"


def to_sequences(tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """``[B, T, V, P, C]`` -> the attention sequences of ``kind``."""
    return rearrange(tokens, f"{GRID} -> {_SEQUENCE[kind]}")


def from_sequences(seq: torch.Tensor, kind: str, b: int, t: int, v: int) -> torch.Tensor:
    """Inverse of ``to_sequences``: -> ``[B, T, V, P, C]``."""
    return rearrange(seq, f"{_SEQUENCE[kind]} -> {GRID}", b=b, t=t, v=v)


def convert(seq: torch.Tensor, src: str, dst: str, b: int, t: int, v: int) -> torch.Tensor:
    """Re-group sequences of kind ``src`` as sequences of kind ``dst`` (a no-op when equal)."""
    if src == dst:
        return seq
    return rearrange(seq, f"{_SEQUENCE[src]} -> {_SEQUENCE[dst]}", b=b, t=t, v=v)


def frames_per_sequence(kind: str, t: int, v: int) -> int:
    """How many frames one attention sequence of ``kind`` spans."""
    return {"time": t, "view": v, "frame": 1, "global": t * v}[kind]


def same_group_mask(kind: str, t: int, v: int, p: int) -> torch.Tensor:
    """Boolean ``[T·V·P, T·V·P]`` mask over the global (t, v, p) order: True where two tokens share a
    ``kind`` sequence. Dense reference for tests only (never used on the fused path)."""
    ti = torch.arange(t).repeat_interleave(v * p)
    vi = torch.arange(v).repeat_interleave(p).repeat(t)
    frame = ti * v + vi
    same = {
        "time": vi[:, None] == vi[None, :],
        "view": ti[:, None] == ti[None, :],
        "frame": frame[:, None] == frame[None, :],
        "global": torch.ones(t * v * p, t * v * p, dtype=torch.bool),
    }
    return same[kind]
