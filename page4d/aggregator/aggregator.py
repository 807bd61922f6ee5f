"""The aggregator: encoder, special tokens, and the layer schedule of time / view blocks.

Tokens stay in the layout of the attention kind that last ran and are re-grouped only when the
kind changes. Only the output entries the heads read are kept (VGGT keeps all of them, its top
memory cost). How many token streams run (one shared, or a pose and a geometry stream) is the
stream strategy's business (``streams``); the aggregator always returns both readers' entries. Which frames this
process holds in each layout, and how tokens move between layouts, is the frame grid's (``grid``): one process
holds them all, and with a ``GridShard`` several processes share one forward pass.
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
from page4d.aggregator.grid import FrameGrid, GridShard
from page4d.aggregator.mask_bias import BIASES, StreamRole, grid_bias
from page4d.aggregator.mask_head import HEAD_KEYS, FusionGate, MaskOutput, build_mask_head, compute_mask
from page4d.aggregator.reduction import TokenPooling
from page4d.aggregator.schedule import BlockStep, LayerSchedule
from page4d.aggregator.sparse_strategies import sparse_block
from page4d.aggregator.streams import DualStreams, Entries, SharedStreams, Stream, Streams
from page4d.aggregator.temporal import TemporalRoPE, token_times
from page4d.aggregator.tokens import frame_positions, special_tokens
from page4d.config import AggregatorConfig, EncoderConfig
from page4d.conventions import IMAGENET_MEAN, IMAGENET_STD, patch_start_index
from page4d.encoder import build_encoder
from page4d.inputs import ForwardInputs
from page4d.nn import AttentionExtras, Block, RotaryEmbedding2D, RowKeyBias, TimeRotation


@dataclass
class AggregatorOutput:
    """The requested output entries of the pose and geometry readers and, with a dynamic-mask head, its outputs."""

    pose_entries: Entries
    """``{i: [B, T, V, P, 2C]}`` = concat(time block i output, view block i output) for the camera head."""
    geometry_entries: Entries
    """The same for the dense heads; the very same dict as ``pose_entries`` when one stream ran."""
    mask: MaskOutput | None = None


@dataclass
class _Run:
    """Per-forward state shared by every block: the frame grid, positions, time indices, inputs, bias caches."""

    frames: FrameGrid
    positions: dict[str, torch.Tensor]
    times: dict[str, torch.Tensor | None]
    frame_positions: torch.Tensor
    inputs: ForwardInputs
    biases: dict[tuple[StreamRole, str, str, bool], RowKeyBias] = field(default_factory=dict)
    """(stream role, bank, layout, pooled) -> the rank-1 bias of those blocks, built once per forward."""
    mask: MaskOutput | None = None
    epipolar: EpipolarBias | None = None
    pooling: TokenPooling | None = None
    """With token reduction: how reduced blocks pool the patch tokens, and their positions and time indices."""
    pooled_positions: dict[str, torch.Tensor] = field(default_factory=dict)
    pooled_times: dict[str, torch.Tensor | None] = field(default_factory=dict)


class Aggregator(nn.Module):
    """Images ``[B, T, V, 3, H, W]`` -> output entries ``{i: [B, T, V, P, 2C]}`` (+ dynamic mask).

    Keys: ``camera_token`` [1,2,1,C], ``register_token`` [1,2,R,C], ``patch_embed.*``,
    ``time_blocks.{i}.*``, ``view_blocks.{i}.*`` and, with a dynamic mask, its head
    (``spatial_mask_head.*`` for PAGE-4D's, ``dynamic_mask_head.*`` for the fusion head; ``mask_fusion.*``, a
    fused PAGE-4D head's gate) and its bias
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
        self.time_blocks = nn.ModuleList(Block.from_config(cfg, self.rope) for _ in range(cfg.depth))
        self.view_blocks = nn.ModuleList(Block.from_config(cfg, self.rope) for _ in range(cfg.depth))
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, c) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, c) * 1e-6)
        self.stream_strategy = self._stream_strategy(cfg)
        if cfg.temporal_rope:
            self.temporal_rope = TemporalRoPE(cfg.depth, cfg.num_heads)
        if cfg.sparse_global is not None:
            self.sparse_blocks = nn.ModuleList(
                sparse_block(cfg.sparse_global, cfg, self.rope) for _ in cfg.sparse_global.after_pairs
            )
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def _stream_strategy(self, cfg: AggregatorConfig) -> partial[Streams]:
        """Build the mask head, its bias and the pose stream's own blocks (if any); return how each forward's
        streams are made."""
        mask = cfg.dynamic_mask
        if mask is None:
            return partial(SharedStreams)
        self.add_module(HEAD_KEYS[mask.head], build_mask_head(mask, cfg.embed_dim))
        if mask.fuse:
            self.mask_fusion = FusionGate(cfg.embed_dim, mask.gate, mask.normalise)
        self.mask_bias = BIASES[mask.bias](mask)
        if mask.streams == "shared":
            return partial(SharedStreams)
        pose_blocks = {}
        if mask.dual_weights == "branched":
            for bank, blocks in (("time", self.time_blocks), ("view", self.view_blocks)):
                copies = {str(i): copy.deepcopy(blocks[i]) for i in range(mask.dual_from_block, cfg.depth)}
                self.add_module(f"pose_{bank}_blocks", nn.ModuleDict(copies))
                pose_blocks[bank] = getattr(self, f"pose_{bank}_blocks")
        return partial(DualStreams, from_block=mask.dual_from_block, pose_blocks=pose_blocks)

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
        pose_keep: Collection[int],
        geometry_keep: Collection[int] = (),
        inputs: ForwardInputs | None = None,
        shard: GridShard | None = None,
    ) -> AggregatorOutput:
        """Run the schedule on images ``[B, T, V, 3, H, W]`` and return the requested output entries.

        ``pose_keep`` / ``geometry_keep``: the entries the camera head / the dense heads read (every other layer
        output is dropped as soon as it is used). ``inputs``: optional per-forward inputs at patch resolution
        (``ForwardInputs.at_patches``); each is refused when this config has nothing that uses it. ``shard``: spread
        the grid over processes (``page4d.aggregator.grid``); every process passes the whole images and inputs, the
        entries then hold this process's frames ``[B, T_loc, V_loc, P, 2C]`` (``FrameGrid.output``) and the mask is
        the whole grid's.
        """
        b, t, v, _, height, width = images.shape
        patch_grid = (height // self.patch_size, width // self.patch_size)
        inputs = (inputs or ForwardInputs()).at_patches(images.shape, self.patch_size)
        pose_keep, geometry_keep = set(pose_keep), set(geometry_keep)
        if not pose_keep | geometry_keep <= set(range(self.cfg.depth)):
            raise ValueError(f"requested output entries {sorted(pose_keep | geometry_keep)} outside "
                             f"0..{self.cfg.depth - 1}")
        self._check_inputs(inputs)
        frames = FrameGrid(b, t, v, shard)
        patches = self.encode(frames.take(images))
        special = frames.take(special_tokens(self.camera_token, self.register_token, b, t, v)).to(patches.dtype)
        grid = torch.cat([special, patches], dim=3)
        run = self._prepare_run(frames, patch_grid, inputs, images.device)

        def rows(role: StreamRole) -> dict:
            return {} if self.cfg.dynamic_mask is None else self.mask_bias.row_values(inputs.mask_step, role)

        streams = self.stream_strategy(frames.to_sequences(grid, "global"), "global", pose_keep, geometry_keep, rows)
        for step in self.schedule.steps:
            for stream in streams.running(step):
                self._run_block(step, stream, run)
            if step.emits_mask:
                run.mask = self._mask(streams.geometry(), run, patch_grid)
        pose, geometry = streams.entries()
        return AggregatorOutput(pose, geometry, run.mask)

    def _mask(self, source: Stream, run: _Run, patch_grid: tuple[int, int]) -> MaskOutput:
        """The mask head on the tokens of ``source``; each process computes its frames, and keeps the whole grid's."""
        frames, external = run.frames, run.inputs.external_mask
        local = compute_mask(self.mask_head, frames.from_sequences(source.x, source.layout), patch_grid,
                             self.patch_start_idx, None if external is None else frames.take(external, source.layout),
                             getattr(self, "mask_fusion", None))
        whole = (frames.gather(x, source.layout) for x in (local.logits, local.key, local.moving))
        return MaskOutput(*whole)

    def _check_inputs(self, inputs: ForwardInputs) -> None:
        if inputs.external_mask is not None and not self.cfg.reads("external_mask"):
            raise ValueError("an external dynamic mask needs a model whose dynamic_mask head is 'fusion' (or a "
                             "PAGE-4D head with dynamic_mask.fuse)")
        if inputs.keypoints is not None and not self.cfg.reads("keypoints"):
            raise ValueError("keypoints feed the sparse global blocks, which this model's config does not use")
        if inputs.camera_priors is not None and not self.cfg.reads("camera_priors"):
            raise ValueError("camera priors feed the epipolar prior, which this model's config does not use")

    def _prepare_run(
        self, frames: FrameGrid, patch_grid: tuple[int, int], inputs: ForwardInputs, device: torch.device
    ) -> _Run:
        pos = frame_positions(*patch_grid, self.patch_start_idx, device)
        kinds_used = set(self.cfg.bank_kinds.values())
        local = {k: frames.shape(k)[1:] for k in kinds_used}
        # RoPE positions are per frame, so a sequence of n frames repeats them n times.
        positions = {k: pos.repeat(kinds.frames_per_sequence(k, *local[k]), 1) for k in kinds_used}

        def times_of(k: str, p: int) -> torch.Tensor | None:
            return token_times(k, *local[k], p, device, first=frames.spans(k)[1].start)

        times = {}
        if self.cfg.temporal_rope and self.temporal_rope.active():
            times = {k: times_of(k, pos.shape[0]) for k in kinds_used}
        run = _Run(frames, positions, times, pos, inputs)
        fewer = self.cfg.token_reduction
        if fewer is not None:
            run.pooling = TokenPooling(fewer.factor, patch_grid, self.patch_start_idx)
            pooled = run.pooling.pool(pos[None].to(torch.float32))[0]  # a window's mean position, in patch units
            run.pooled_positions = {k: pooled.repeat(kinds.frames_per_sequence(k, *local[k]), 1) for k in kinds_used}
            if times:
                run.pooled_times = {k: times_of(k, pooled.shape[0]) for k in kinds_used}
        if inputs.camera_priors is not None:
            whole = (frames.b, frames.t, frames.v, pos.shape[0])
            run.epipolar = EpipolarBias(
                *inputs.camera_priors, patch_grid, self.patch_size, self.patch_start_idx, self.cfg.epipolar, whole
            ).queries(*frames.spans("view"))
        return run

    def _block(self, stream: Stream, bank: str, index: int) -> Block:
        """The block ``index`` of ``bank`` that ``stream`` runs: its own copy if it has one."""
        own = stream.own_blocks.get(bank)
        if own is not None:
            return own[str(index)]
        return (self.time_blocks if bank == "time" else self.view_blocks)[index]

    def _run_block(self, step: BlockStep, stream: Stream, run: _Run) -> None:
        """Run one scheduled block on one stream, with the biases and rotations that apply to it."""
        if step.bank == "sparse":
            self._run_sparse(step.index, stream, run)
            return
        frames = run.frames
        stream.x, stream.layout = frames.convert(stream.x, stream.layout, step.kind), step.kind
        layout, pooling = stream.layout, run.pooling if step.reduced else None
        bias = None
        if step.biased and step.bank in stream.rows:  # no rows: every weight is 0, plain attention exactly
            cache = (stream.role, step.bank, layout, pooling is not None)
            if cache not in run.biases:
                grids = grid_bias(stream.rows[step.bank], self.mask_bias.key_values(run.mask), self.patch_start_idx)
                if pooling is not None:
                    grids = tuple(pooling.pool_values(g) for g in grids)
                run.biases[cache] = RowKeyBias(rows=frames.row_values(grids[0], layout),
                                               keys=frames.key_values(grids[1], layout))
            bias = run.biases[cache]
        times = run.times if pooling is None else run.pooled_times
        rotation = None
        if step.bank == "time" and times.get(layout) is not None:
            rotation = TimeRotation(times[layout], self.temporal_rope.scale[step.index],
                                    self.cfg.temporal_frequencies == "own")
        extras = AttentionExtras(bias, run.epipolar if step.epipolar else None, rotation,
                                 gather_keys=frames.key_gather(layout))
        block = partial(self._block(stream, step.bank, step.index), extras=extras)
        x, positions = stream.x, run.positions[layout]
        if pooling is not None:
            full = frames.from_sequences(stream.x, layout)
            pooled = pooling.pool(full)
            x, positions = kinds.to_sequences(pooled, layout), run.pooled_positions[layout]
        if self.gradient_checkpointing and torch.is_grad_enabled():
            # Keep only the block's input; its activations are recomputed in the backward pass.
            x = checkpoint(block, x, positions, use_reentrant=False)
        else:
            x = block(x, positions)
        if pooling is not None:
            out = frames.from_sequences(x, layout)
            x = kinds.to_sequences(pooling.restore(full, pooled, out), layout)
        stream.x = x
        if step.index in stream.keep:
            stream.record(step.bank, step.index, frames.local_frames(stream.x, stream.layout))

    def _run_sparse(self, index: int, stream: Stream, run: _Run) -> None:
        """Sparse block ``index`` on the token grid. Landmarks are the given keypoints, else the most static
        patches (``1 - moving``) when a dynamic mask exists."""
        frames = run.frames
        grid = frames.local_frames(stream.x, stream.layout, "global")
        given = run.inputs.keypoints
        keypoints = frames.take_batch(given.flatten(-2)) if given is not None and stream.takes_keypoints else None
        scores = None if run.mask is None or given is not None else frames.take_batch(1.0 - run.mask.moving.flatten(-2))
        grid = self.sparse_blocks[index](grid, run.frame_positions, self.patch_start_idx, scores, keypoints, frames)
        stream.x, stream.layout = kinds.to_sequences(grid, "global"), "global"
