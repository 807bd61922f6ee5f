"""The aggregator: encoder, special tokens, and the layer schedule of time / view blocks.

Tokens stay in the layout of the attention kind that last ran and are re-grouped only when the
kind changes. Only the output entries the heads read are kept (VGGT keeps all of them, its top
memory cost). With dual streams the token grid is forked into a pose and a geometry stream; while
both would compute the same thing (no active bias, shared weights) the fork is not made.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from page4d.aggregator import kinds
from page4d.aggregator.epipolar import EpipolarBias
from page4d.aggregator.mask_head import HEAD_KEYS, MaskOutput, build_mask_head, compute_mask
from page4d.aggregator.schedule import BlockStep, LayerSchedule
from page4d.aggregator.sparse import SparseGlobalBlock
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
    """``{i: [B, T, V, P, 2C]}`` = concat(time block i output, view block i output); the geometry stream's
    entries with dual streams."""
    mask: MaskOutput | None = None
    pose_entries: dict[int, torch.Tensor] | None = None
    """With dual streams, the pose stream's entries (read by the camera head); else None."""


@dataclass
class _Stream:
    """One token stream during a forward: tokens in the layout of the last block, and its kept outputs."""

    x: torch.Tensor
    layout: str
    keep: set[int]
    halves: dict[str, dict[int, torch.Tensor]] = field(default_factory=lambda: {"time": {}, "view": {}})
    entries: dict[int, torch.Tensor] = field(default_factory=dict)

    def fork(self, keep: set[int]) -> _Stream:
        halves = {bank: dict(kept) for bank, kept in self.halves.items()}
        return _Stream(self.x, self.layout, keep, halves, dict(self.entries))

    def record(self, bank: str, index: int, grid: torch.Tensor) -> None:
        self.halves[bank][index] = grid
        if index in self.halves["time"] and index in self.halves["view"]:
            pair = (self.halves["time"].pop(index), self.halves["view"].pop(index))
            self.entries[index] = torch.cat(pair, dim=-1)


@dataclass
class _Run:
    """Per-forward state shared by every block: sizes, positions, time indices, bias rows and caches."""

    b: int
    t: int
    v: int
    positions: dict[str, torch.Tensor]
    times: dict[str, torch.Tensor | None]
    rows: dict[str, dict]
    biases: dict[tuple[str, str, str], RowKeyBias] = field(default_factory=dict)
    mask: MaskOutput | None = None
    epipolar: EpipolarBias | None = None
    frame_positions: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None


class Aggregator(nn.Module):
    """Images ``[B, T, V, 3, H, W]`` -> output entries ``{i: [B, T, V, P, 2C]}`` (+ dynamic mask).

    Keys: ``camera_token`` [1,2,1,C], ``register_token`` [1,2,R,C], ``patch_embed.*``,
    ``time_blocks.{i}.*``, ``view_blocks.{i}.*`` and, with a dynamic mask, its head
    (``spatial_mask_head.*`` for PAGE-4D's, ``dynamic_mask_head.*`` for the seeds') and its bias
    strategy's parameters (``mask_bias.*``, none for PAGE-4D); with branched dual streams
    ``pose_time_blocks.{i}`` / ``pose_view_blocks.{i}``; with a temporal encoding ``temporal_rope.scale``;
    with sparse global attention ``sparse_blocks.{j}.*``.
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
        self.gradient_checkpointing = False
        """Recompute each block's activations in the backward pass instead of storing them (training memory)."""
        self.time_blocks = nn.ModuleList(self._block() for _ in range(cfg.depth))
        self.view_blocks = nn.ModuleList(self._block() for _ in range(cfg.depth))
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, c) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, c) * 1e-6)
        mask = cfg.dynamic_mask
        if mask is not None:
            self.add_module(HEAD_KEYS[mask.head], build_mask_head(mask, c))
            self.mask_bias = build_bias(mask)
            if mask.streams == "dual" and mask.dual_weights == "branched":
                for bank, blocks in (("time", self.time_blocks), ("view", self.view_blocks)):
                    copies = {str(i): copy.deepcopy(blocks[i]) for i in range(mask.dual_from_block, cfg.depth)}
                    self.add_module(f"pose_{bank}_blocks", nn.ModuleDict(copies))
        if cfg.temporal_rope:
            self.temporal_rope = TemporalRoPE(cfg.depth, cfg.num_heads)
        if cfg.sparse_global is not None:
            self.sparse_blocks = nn.ModuleList(
                SparseGlobalBlock(cfg.sparse_global, cfg, self.rope) for _ in cfg.sparse_global.after_pairs
            )
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def _block(self) -> Block:
        cfg = self.cfg
        return Block(
            cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.proj_bias, cfg.ffn_bias,
            init_values=cfg.init_values, qk_norm=cfg.qk_norm, norm_eps=cfg.layernorm_eps, rope=self.rope,
            qk_norm_eps=cfg.qk_norm_eps,
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

    def block_for(self, bank: str, index: int, stream: str) -> Block:
        """The block a stream runs: the pose stream's own copy when dual weights are branched."""
        if stream == "pose" and hasattr(self, f"pose_{bank}_blocks"):
            return getattr(self, f"pose_{bank}_blocks")[str(index)]
        return (self.time_blocks if bank == "time" else self.view_blocks)[index]

    def forward(
        self,
        images: torch.Tensor,
        keep: Collection[int],
        mask_step: float = 0.0,
        external_mask: torch.Tensor | None = None,
        pose_keep: Collection[int] | None = None,
        cameras: tuple[torch.Tensor, torch.Tensor] | None = None,
        keypoints: torch.Tensor | None = None,
    ) -> AggregatorOutput:
        """Run the schedule and return the requested output entries ``{i: [B, T, V, P, 2C]}``.

        ``mask_step``: training step for PAGE-4D's strength schedule (0 at inference).
        ``external_mask``: optional ``[B, T, V, h, w]`` moving mask in [0, 1] for the seeds head.
        ``pose_keep``: with dual streams, the entries to keep from the pose stream (default ``keep``).
        ``cameras``: optional coarse (intrinsics ``[B, T, V, 3, 3]``, extrinsics ``[B, T, V, 3, 4]``) at the
        input resolution, for the epipolar prior of the configured view blocks.
        ``keypoints``: optional ``[B, T, V, h, w]`` keypoint density in [0, 1] for the sparse blocks (landmark
        choice and the keypoint bias).
        """
        b, t, v, _, height, width = images.shape
        patch_grid = (height // self.patch_size, width // self.patch_size)
        patches = self.encode(images)
        special = special_tokens(self.camera_token, self.register_token, b, t, v).to(patches.dtype)
        grid = torch.cat([special, patches], dim=3)
        mask_cfg = self.cfg.dynamic_mask
        if external_mask is not None and (mask_cfg is None or mask_cfg.head != "seeds"):
            raise ValueError("an external dynamic mask needs a model whose dynamic_mask head is 'seeds'")
        keep, pose_keep = set(keep), set(keep if pose_keep is None else pose_keep)
        if not keep | pose_keep <= set(range(self.cfg.depth)):
            raise ValueError(f"requested output entries {sorted(keep | pose_keep)} outside 0..{self.cfg.depth - 1}")

        run = self._prepare_run(grid.shape, patch_grid, mask_step, images.device)
        if keypoints is not None:
            if self.cfg.sparse_global is None:
                raise ValueError("keypoints feed the sparse global blocks, which this model's config does not use")
            run.keypoints = keypoints.flatten(-2)
        if cameras is not None:
            if self.cfg.epipolar is None or not self.cfg.epipolar.view_blocks:
                raise ValueError("camera priors feed the epipolar prior, which this model's config does not use")
            run.epipolar = EpipolarBias(
                *cameras, patch_grid, self.patch_size, self.patch_start_idx, self.cfg.epipolar, grid.shape
            )
        dual = mask_cfg is not None and mask_cfg.streams == "dual"
        fork = dual and (bool(run.rows.get("pose")) or mask_cfg.dual_weights == "branched")
        streams = {"main": _Stream(kinds.to_sequences(grid, "global"), "global", keep | pose_keep)}
        for step in self.schedule.steps:
            if fork and "main" in streams and step.index >= mask_cfg.dual_from_block:
                streams = {"pose": streams["main"].fork(pose_keep), "geo": streams.pop("main").fork(keep)}
            for name, stream in streams.items():
                self._run_block(step, stream, name, run)
            if step.emits_mask:
                source = streams.get("geo", streams.get("main"))
                tokens = kinds.from_sequences(source.x, source.layout, b, t, v)
                run.mask = compute_mask(self.mask_head, tokens, patch_grid, self.patch_start_idx, external_mask)

        if "main" in streams:
            entries = streams["main"].entries
            pose = {i: e for i, e in entries.items() if i in pose_keep} if dual else None
            return AggregatorOutput({i: e for i, e in entries.items() if i in keep}, run.mask, pose)
        return AggregatorOutput(streams["geo"].entries, run.mask, streams["pose"].entries)

    def _prepare_run(
        self, grid_shape: torch.Size, patch_grid: tuple[int, int], mask_step: float, device: torch.device
    ) -> _Run:
        b, t, v = grid_shape[:3]
        pos = frame_positions(*patch_grid, self.patch_start_idx, device)
        kinds_used = set(self.cfg.bank_kinds.values())
        # RoPE positions are per frame, so a sequence of n frames repeats them n times.
        positions = {k: pos.repeat(kinds.frames_per_sequence(k, t, v), 1) for k in kinds_used}
        times = {}
        if self.cfg.temporal_rope and self.temporal_rope.active():
            times = {k: token_times(k, t, v, pos.shape[0], device) for k in kinds_used}
        mask_cfg = self.cfg.dynamic_mask
        rows = {}
        if mask_cfg is not None:
            names = ("main", "pose", "geo") if mask_cfg.streams == "dual" else ("main",)
            rows = {name: self.mask_bias.row_values(mask_step, name) for name in names}
        return _Run(b, t, v, positions, times, rows, frame_positions=pos)

    def _run_block(self, step: BlockStep, stream: _Stream, name: str, run: _Run) -> None:
        """Run one scheduled block on one stream, with the biases and rotations that apply to it."""
        if step.bank == "sparse":
            self._run_sparse(step.index, stream, name, run)
            return
        stream.x, stream.layout = kinds.convert(stream.x, stream.layout, step.kind, run.b, run.t, run.v), step.kind
        bias = None
        rows = run.rows.get(name, {})
        if step.biased and step.bank in rows:  # no rows: every weight is 0, plain attention exactly
            cache = (name, step.bank, stream.layout)
            if cache not in run.biases:
                grids = grid_bias(rows[step.bank], self.mask_bias.key_values(run.mask), self.patch_start_idx)
                row, key = (kinds.to_sequences(g[..., None], stream.layout)[..., 0] for g in grids)
                run.biases[cache] = RowKeyBias(rows=row, keys=key)
            bias = run.biases[cache]
        rotation = None
        if step.bank == "time" and run.times.get(stream.layout) is not None:
            rotation = TimeRotation(run.times[stream.layout], self.temporal_rope.scale[step.index])
        block = partial(self.block_for(step.bank, step.index, name), bias=bias, time_rotation=rotation,
                        chunked_bias=run.epipolar if step.epipolar else None)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            # Keep only the block's input; its activations are recomputed in the backward pass.
            stream.x = checkpoint(block, stream.x, run.positions[stream.layout], use_reentrant=False)
        else:
            stream.x = block(stream.x, run.positions[stream.layout])
        if step.index in stream.keep:
            tokens = kinds.from_sequences(stream.x, stream.layout, run.b, run.t, run.v)
            stream.record(step.bank, step.index, tokens)

    def _run_sparse(self, index: int, stream: _Stream, name: str, run: _Run) -> None:
        """Sparse block ``index`` on the token grid. Landmarks are the given keypoints, else the most static
        patches (``1 - moving``) when a dynamic mask exists. The keypoint bias belongs to the geometry
        stream, so a dual pose stream runs without keypoints."""
        grid = kinds.from_sequences(stream.x, stream.layout, run.b, run.t, run.v)
        keypoints = None if name == "pose" else run.keypoints
        scores = None if run.mask is None or run.keypoints is not None else 1.0 - run.mask.moving.flatten(-2)
        grid = self.sparse_blocks[index](grid, run.frame_positions, self.patch_start_idx, scores, keypoints)
        stream.x, stream.layout = kinds.to_sequences(grid, "global"), "global"
