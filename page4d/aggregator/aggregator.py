"""The aggregator: encoder, special tokens, and the layer schedule of time / view blocks.

Tokens stay in the layout of the attention kind that last ran and are re-grouped only when the
kind changes. Only the output entries the heads read are kept (VGGT keeps all of them, its top
memory cost).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from page4d.aggregator import kinds
from page4d.aggregator.mask_head import HEAD_KEYS, MaskOutput, build_mask_head, compute_mask
from page4d.aggregator.schedule import LayerSchedule
from page4d.aggregator.streams import build_bias, grid_bias
from page4d.aggregator.temporal import TemporalRoPE, token_times
from page4d.aggregator.tokens import frame_positions, special_tokens
from page4d.config import AggregatorConfig, EncoderConfig
from page4d.conventions import IMAGENET_MEAN, IMAGENET_STD, patch_start_index
from page4d.encoder import build_encoder
from page4d.nn import Block, RotaryEmbedding2D, RowKeyBias, TimeRotation


@dataclass
class AggregatorOutput:
    """The requested output entries and, with a dynamic-mask head, its outputs."""

    entries: dict[int, torch.Tensor]
    """``{i: [B, T, V, P, 2C]}`` = concat(time block i output, view block i output)."""
    mask: MaskOutput | None = None


class Aggregator(nn.Module):
    """Images ``[B, T, V, 3, H, W]`` -> output entries ``{i: [B, T, V, P, 2C]}`` (+ dynamic mask).

    Keys: ``camera_token`` [1,2,1,C], ``register_token`` [1,2,R,C], ``patch_embed.*``,
    ``time_blocks.{i}.*``, ``view_blocks.{i}.*`` and, with a dynamic mask, its head
    (``spatial_mask_head.*`` for PAGE-4D's, ``dynamic_mask_head.*`` for the seeds') and its bias
    strategy's parameters (``mask_bias.*``, none for PAGE-4D); with a temporal encoding,
    ``temporal_rope.scale``.
    """

    def __init__(self, cfg: AggregatorConfig, encoder: EncoderConfig, patch_size: int):
        super().__init__()
        c = cfg.embed_dim
        self.cfg = cfg
        self.patch_size = patch_size
        self.patch_start_idx = patch_start_index(cfg.num_register_tokens)
        self.schedule = LayerSchedule.alternating(cfg)
        self.patch_embed = build_encoder(encoder, patch_size)
        self.rope = RotaryEmbedding2D(cfg.rope_freq)
        self.time_blocks = nn.ModuleList(self._block() for _ in range(cfg.depth))
        self.view_blocks = nn.ModuleList(self._block() for _ in range(cfg.depth))
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, c) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, c) * 1e-6)
        if cfg.dynamic_mask is not None:
            self.add_module(HEAD_KEYS[cfg.dynamic_mask.head], build_mask_head(cfg.dynamic_mask, c))
            self.mask_bias = build_bias(cfg.dynamic_mask)
        if cfg.temporal_rope:
            self.temporal_rope = TemporalRoPE(cfg.depth, cfg.num_heads)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def _block(self) -> Block:
        cfg = self.cfg
        return Block(
            cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.proj_bias, cfg.ffn_bias,
            init_values=cfg.init_values, qk_norm=cfg.qk_norm, norm_eps=cfg.layernorm_eps, rope=self.rope,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens of every frame: ``[B, T, V, 3, H, W]`` in [0, 1] -> ``[B, T, V, h·w, C]``."""
        b, t, v = images.shape[:3]
        x = (images.flatten(0, 2) - self.image_mean) / self.image_std
        return self.patch_embed(x).unflatten(0, (b, t, v))

    @property
    def mask_head(self) -> nn.Module | None:
        """The dynamic-mask head, if the config has one."""
        mask = self.cfg.dynamic_mask
        return None if mask is None else getattr(self, HEAD_KEYS[mask.head])

    def forward(
        self,
        images: torch.Tensor,
        keep: Collection[int],
        mask_step: float = 0.0,
        external_mask: torch.Tensor | None = None,
    ) -> AggregatorOutput:
        """Run the schedule and return the requested output entries ``{i: [B, T, V, P, 2C]}``.

        ``mask_step``: training step for PAGE-4D's strength schedule (0 at inference).
        ``external_mask``: optional ``[B, T, V, h, w]`` moving mask in [0, 1] for the seeds head.
        """
        b, t, v, _, height, width = images.shape
        patch_grid = (height // self.patch_size, width // self.patch_size)
        patches = self.encode(images)
        special = special_tokens(self.camera_token, self.register_token, b, t, v).to(patches.dtype)
        grid = torch.cat([special, patches], dim=3)
        pos = frame_positions(*patch_grid, self.patch_start_idx, images.device)
        mask_cfg = self.cfg.dynamic_mask
        if external_mask is not None and (mask_cfg is None or mask_cfg.head != "seeds"):
            raise ValueError("an external dynamic mask needs a model whose dynamic_mask head is 'seeds'")
        rows = self.mask_bias.row_values(mask_step) if mask_cfg is not None else {}
        mask: MaskOutput | None = None
        biases: dict[tuple[str, str], RowKeyBias] = {}

        keep = set(keep)
        if not keep <= set(range(self.cfg.depth)):
            raise ValueError(f"requested output entries {sorted(keep)} outside 0..{self.cfg.depth - 1}")
        # RoPE positions are per frame, so a sequence of n frames repeats them n times.
        positions = {k: pos.repeat(kinds.frames_per_sequence(k, t, v), 1) for k in set(self.cfg.bank_kinds.values())}
        times = {}
        if self.cfg.temporal_rope and self.temporal_rope.active():
            p = pos.shape[0]
            times = {k: token_times(k, t, v, p, images.device) for k in set(self.cfg.bank_kinds.values())}
        halves: dict[str, dict[int, torch.Tensor]] = {"time": {}, "view": {}}
        entries: dict[int, torch.Tensor] = {}
        layout = "global"
        x = kinds.to_sequences(grid, layout)
        for step in self.schedule.steps:
            x = kinds.convert(x, layout, step.kind, b, t, v)
            layout = step.kind
            block = (self.time_blocks if step.bank == "time" else self.view_blocks)[step.index]
            bias = None
            if step.biased and step.bank in rows:  # no rows: every weight is 0, plain attention exactly
                if (step.bank, layout) not in biases:
                    grids = grid_bias(rows[step.bank], self.mask_bias.key_values(mask), self.patch_start_idx)
                    row, key = (kinds.to_sequences(g[..., None], layout)[..., 0] for g in grids)
                    biases[step.bank, layout] = RowKeyBias(rows=row, keys=key)
                bias = biases[step.bank, layout]
            rotation = None
            if step.bank == "time" and times.get(layout) is not None:
                rotation = TimeRotation(times[layout], self.temporal_rope.scale[step.index])
            x = block(x, positions[layout], bias=bias, time_rotation=rotation)
            if step.emits_mask:
                tokens = kinds.from_sequences(x, layout, b, t, v)
                mask = compute_mask(self.mask_head, tokens, patch_grid, self.patch_start_idx, external_mask)
            if step.index in keep:
                halves[step.bank][step.index] = kinds.from_sequences(x, layout, b, t, v)
                if step.index in halves["time"] and step.index in halves["view"]:
                    pair = (halves["time"].pop(step.index), halves["view"].pop(step.index))
                    entries[step.index] = torch.cat(pair, dim=-1)
        return AggregatorOutput(entries, mask)
