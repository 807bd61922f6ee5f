"""How many time steps one forward pass takes (``--window auto``): what fits the free memory and what the
attention plan's longest sequence allows.

Attention runs through fused kernels that never hold an N×N tensor, so a window's memory grows linearly with its
frames under every plan; its time does not. One attention layer over a sequence of N tokens costs O(N²), so the
plan decides how the cost of a window grows (``page4d.attention_plans``): ``set`` attends over all T·V frames of
the window at once (quadratic in T·V), ``factorised`` over the T frames of one camera and the V frames of one
step, ``per-step`` over the V frames of one step only (linear in T).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from page4d.attention_plans import AttentionPlan
from page4d.config import ModelConfig

MEMORY_FRACTION = 0.5
"""Share of the free memory the automatic window size plans to use (the rest is left for outputs and others)."""
MAX_ATTENTION_TOKENS = 65536
"""The longest attention sequence an automatic window may give (about 62 frames at 518×392). Beyond it an
attention layer of a 1024-wide model costs over ten times its token-wise layers (the MLP and projections), and
each further frame slows every other one: windows cut there and stitched cost less time than one larger set."""


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def tokens_per_frame(config: ModelConfig, image_size: tuple[int, int]) -> int:
    """Tokens of one frame at ``image_size`` (H, W): the camera token, the registers and the patches."""
    patches = (image_size[0] // config.patch_size) * (image_size[1] // config.patch_size)
    return 1 + config.aggregator.num_register_tokens + patches


def bytes_per_frame(config: ModelConfig, image_size: tuple[int, int], entries: int, processes: int = 1) -> int:
    """Rough peak bytes one frame adds to a forward pass: the ``entries`` kept aggregator outputs (2C each) plus
    about 24 token-sized working buffers (encoder, attention, MLP), and about 80 bytes per pixel for the input and
    the full-resolution outputs (10 float32 channels, held as a tensor and as a numpy copy). With the frames
    spread over ``processes`` (grid parallelism) each holds its share of the tokens and all of the outputs.

    For ``tiny-mv`` at 518×392 this gives 21 MB where a 16 × 4 pass measures 18 MB per frame; the full-size
    ``page4d-mv`` gives 145 MB."""
    tokens = (image_size[0] // config.patch_size) * (image_size[1] // config.patch_size)
    width = config.aggregator.embed_dim
    return tokens * width * 4 * (2 * entries + 24) // processes + image_size[0] * image_size[1] * 80


def longest_sequence(config: ModelConfig, plan: AttentionPlan, steps: int, views: int, frame_tokens: int) -> int:
    """Tokens in the longest attention sequence of a window of ``steps`` × ``views`` frames under ``plan``: each
    bank's attention kind (``config.aggregator.bank_kinds``) over the grid the plan gives the model."""
    _, t, v = plan.model_grid(steps, views)
    frames = {"time": t, "view": v, "frame": 1, "global": t * v}
    return frame_tokens * max(frames[kind] for kind in config.aggregator.bank_kinds.values())


@dataclass(frozen=True)
class WindowChoice:
    """The automatic window and what set it."""

    steps: int
    reason: str


def choose_window(
    config: ModelConfig, entries: int, plan: AttentionPlan, num_times: int, num_views: int,
    image_size: tuple[int, int], device: torch.device, processes: int = 1,
) -> WindowChoice:
    """The most time steps per window (at least 2, at most the clip) that fit ``MEMORY_FRACTION`` of the free
    memory on ``device`` and keep the plan's longest attention sequence within ``MAX_ATTENTION_TOKENS``;
    ``entries``: the aggregator outputs the heads keep (``Page4D.required_entries``); ``processes``: how many
    share each window's frames (``--shard grid``)."""
    budget = MEMORY_FRACTION * available_memory(device)
    by_memory = int(budget // (bytes_per_frame(config, image_size, entries, processes) * num_views))
    frame_tokens = tokens_per_frame(config, image_size)
    low, high = 1, num_times  # the sequence grows with the steps: bisect for the last that stays within the limit
    while low < high:
        middle = (low + high + 1) // 2
        fits = longest_sequence(config, plan, middle, num_views, frame_tokens) <= MAX_ATTENTION_TOKENS
        low, high = (middle, high) if fits else (low, middle - 1)
    by_attention = low
    steps = max(2, min(num_times, by_memory, by_attention))
    if steps == num_times:
        return WindowChoice(steps, "the whole clip fits")
    if by_attention < by_memory:
        longest = longest_sequence(config, plan, steps, num_views, frame_tokens)
        return WindowChoice(steps, f"the {plan.name} plan attends over {longest} tokens at once in a window of "
                                   f"{steps} steps, near the {MAX_ATTENTION_TOKENS} beyond which attention time grows "
                                   "with the square of the window")
    return WindowChoice(steps, f"what fits {MEMORY_FRACTION:.0%} of the free memory on {device}")
