"""Key sets of the sparse global strategies over the global token order ``(t, v, p)``.

The forward of ``SparseGlobalBlock`` uses the index helpers (anchors, neighbour groups); the boolean
masks write the same key sets out as ``[.., N, N]`` for the dense reference (tests only).
"""

from __future__ import annotations

import torch
from einops import rearrange

STRATEGIES = ("landmark", "dilated", "memory")


def landmark_anchors(
    grid: torch.Tensor,
    num_special: int,
    num_landmarks: int,
    scores: torch.Tensor | None = None,
    keypoints: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patch indices ``[B, T, V, K]`` (in ``0..h·w-1``) of the K highest-ranked patches of every frame.

    Ranked by ``scores`` ``[B, T, V, h·w]`` (higher = better) if given, else by ``keypoints``, else by
    the L2 norm of the patch tokens of ``grid`` ``[B, T, V, P, C]``. Ties go to the lower patch index
    (stable sort), so the choice is deterministic on every device.
    """
    if scores is None:
        scores = keypoints if keypoints is not None else grid[..., num_special:, :].norm(dim=-1)
    order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices
    return order[..., :num_landmarks]


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


def landmark_mask(index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Dense reference: ``[B, N, N]``, every query may attend exactly to the anchors ``index`` ``[B, T·V·K]``."""
    keys = torch.zeros(index.shape[0], num_tokens, dtype=torch.bool, device=index.device)
    keys.scatter_(1, index, True)
    return keys[:, None, :].expand(-1, num_tokens, -1)


def dilated_mask(t: int, v: int, tokens_per_frame: int, levels: tuple[int, ...]) -> torch.Tensor:
    """Dense reference: ``[N, N]``, token i may attend to token j when their frames are dilated neighbours."""
    ti = torch.arange(t).repeat_interleave(v * tokens_per_frame)
    vi = torch.arange(v).repeat_interleave(tokens_per_frame).repeat(t)
    steps = torch.tensor([0, *levels])
    dt, dv = (ti[:, None] - ti[None, :]).abs(), (vi[:, None] - vi[None, :]).abs()
    return ((dt == 0) & torch.isin(dv, steps)) | ((dv == 0) & torch.isin(dt, steps))
