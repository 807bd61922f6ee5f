"""Typed model configuration: one dataclass per part of the model, each validating its own fields.

Every hyper-parameter that changes weights or numerics lives here, so a checkpoint's
``config.json`` (``ModelConfig.to_dict``) fully describes the model that wrote it. Named presets are in
``page4d.presets``; configs written by older versions are brought up to date by ``migrate``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from page4d.config_migration import migrate
from page4d.conventions import PATCH_SIZE

BlockBank = Literal["time", "view"]
"""A bank of aggregator blocks: ``time_blocks`` (VGGT ``frame_blocks``) or ``view_blocks`` (VGGT ``global_blocks``)."""

AttentionKind = Literal["time", "view", "frame", "global"]
"""Which tokens attend to each other: same view across time, same time across views, one image, all."""

MaskHeadName = Literal["fin10", "release", "fusion"]
"""Dynamic-mask heads: PAGE-4D's two, and the design documents' head that fuses its estimate with an external mask."""

SparseStrategyName = Literal["landmark", "dilated", "memory"]
"""Key sets of sparse global attention (one class each in ``page4d.aggregator.sparse``)."""

SPARSE_STRATEGIES: tuple[str, ...] = get_args(SparseStrategyName)

TrainedLayout = Literal["set", "factorised"]
"""How a checkpoint's frames attended while it was trained: ``set`` (VGGT, PAGE-4D, Pi3: one unordered set of
frames, frame and global attention) or ``factorised`` (page4d's time / view blocks over a (t, v) grid)."""


def _check_choice(owner: str, name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {owner}.{name} {value!r}; use one of {', '.join(map(str, choices))}")


def _check_blocks(owner: str, name: str, blocks: tuple[int, ...], depth: int) -> None:
    if any(not 0 <= i < depth for i in blocks):
        raise ValueError(f"{owner}.{name} {tuple(blocks)} outside 0..{depth - 1}")


@dataclass
class EncoderConfig:
    """Patch encoder: a DINOv2 ViT with registers, or a single conv patch embedding."""

    kind: Literal["dinov2", "conv"] = "dinov2"
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    pos_embed_grid: int = 37
    """Side of the stored (square) position-embedding grid; 37 for DINOv2 trained at 518 px."""
    init_values: float = 1.0
    layernorm_eps: float = 1e-6
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True


@dataclass
class DynamicMaskConfig:
    """A dynamic-mask head on the patch tokens after one time block, and how its output biases attention.

    Every bias is rank 1: ``logits[i, j] += row_i · key_j`` with ``key_j = 0`` on camera/register keys.

    ``bias = "page4d"`` (PAGE-4D, both variants): ``key`` is the head's own key value, ``row`` is the
    strength on camera/register queries and 0 on patch queries, in ``biased_view_blocks`` only. The
    strength is ``scale · alpha(step)`` with ``alpha = 1`` (``constant``, fin10) or the release's cosine
    hold (``cosine_hold``: 1 before ``hold_start``, 0 from ``hold_end``). The step is an input of
    ``forward`` (the training loop passes it), never a counter inside the model.

    ``bias = "pose_geo"`` (the design documents' shared stream): ``key`` is the moving probability M (1 = moving),
    ``row = -λ_pose`` on camera/register queries (the pose stream ignores moving keys) and ``+λ_geo`` on
    patch queries (the geometry stream attends to them), with separate ``λ_pose_t``, ``λ_geo_t`` in the
    biased time blocks. The λ are learnable, clamped to ``[-lambda_bound, lambda_bound]`` and start at 0,
    so an untrained bias leaves the model exactly as it was.

    ``streams = "dual"`` (with ``pose_geo``): from block ``dual_from_block`` on, two token streams run
    the remaining blocks: the pose stream with row ``-λ_pose`` on every query (read by the camera head)
    and the geometry stream with ``+λ_geo`` (read by the dense heads and the mask head). Their blocks
    share weights (``dual_weights = "shared"``) or the pose stream gets its own copies (``branched``,
    keys ``pose_time_blocks.{i}`` / ``pose_view_blocks.{i}``, initialised equal to the shared ones).
    At λ = 0 both streams equal the single stream exactly.

    Heads: ``fin10`` and ``release`` (PAGE-4D's two, reference key names) and ``fusion`` (the design
    documents' head, fusing its own estimate with an external mask: ``M = sigmoid(alpha·M̃ + b + beta·M_ext)``,
    gates ``scalar`` or per-frame ``mlp``; ``normalise`` z-scores M̃ per frame first).
    """

    head: MaskHeadName = "release"
    after_block: int = 9
    """Time-bank block whose output (before the view block of the same index) feeds the head."""
    biased_view_blocks: tuple[int, ...] = tuple(range(10, 20))
    biased_time_blocks: tuple[int, ...] = ()
    bias: Literal["page4d", "pose_geo"] = "page4d"
    release_hidden: int = 256
    """Width of the release head's hidden 1×1 conv."""
    scale: float = 64.0
    schedule: Literal["constant", "cosine_hold"] = "cosine_hold"
    hold_start: float = 0.0
    hold_end: float = 0.0
    lambda_bound: float = 4.0
    gate: Literal["scalar", "mlp"] = "scalar"
    """How the fusion head weighs its own logit and the external mask."""
    normalise: bool = False
    """Fusion gate: z-score M̃ per frame first (page4d-small's first weights were trained so)."""
    fuse: bool = False
    """fin10 / release: fuse the head's moving logit with an external mask through a fusion gate (keys
    ``mask_fusion.*``), whose M the pose/geometry bias reads: PAGE-4D's trained head in the multi-view model. The
    fusion head always fuses."""
    streams: Literal["shared", "dual"] = "shared"
    dual_from_block: int = 0
    dual_weights: Literal["shared", "branched"] = "shared"

    @property
    def takes_external_mask(self) -> bool:
        """Whether a fusion gate reads an external mask (the fusion head, or a fused PAGE-4D head)."""
        return self.head == "fusion" or self.fuse

    def validate(self, depth: int) -> None:
        """Raise ``ValueError`` for settings that cannot be built in an aggregator of ``depth`` blocks per bank."""
        _check_choice("dynamic_mask", "head", self.head, get_args(MaskHeadName))
        _check_choice("dynamic_mask", "bias", self.bias, ("page4d", "pose_geo"))
        _check_choice("dynamic_mask", "schedule", self.schedule, ("constant", "cosine_hold"))
        _check_choice("dynamic_mask", "gate", self.gate, ("scalar", "mlp"))
        _check_choice("dynamic_mask", "streams", self.streams, ("shared", "dual"))
        _check_choice("dynamic_mask", "dual_weights", self.dual_weights, ("shared", "branched"))
        if self.fuse and (self.head == "fusion" or self.bias != "pose_geo"):
            raise ValueError("dynamic_mask.fuse wraps a PAGE-4D head (fin10, release) for the pose/geometry bias: "
                             f"use it with bias 'pose_geo' and head fin10 or release, not {self.head!r} / "
                             f"{self.bias!r} (the fusion head always fuses)")
        if not 0 <= self.after_block < depth:
            raise ValueError(f"dynamic_mask.after_block {self.after_block} is outside 0..{depth - 1}")
        _check_blocks("dynamic_mask", "biased_view_blocks", self.biased_view_blocks, depth)
        _check_blocks("dynamic_mask", "biased_time_blocks", self.biased_time_blocks, depth)
        if self.scale < 0 or self.hold_end < self.hold_start:
            raise ValueError("dynamic_mask needs scale >= 0 and hold_end >= hold_start")
        if self.lambda_bound <= 0:
            raise ValueError(f"dynamic_mask.lambda_bound must be > 0, got {self.lambda_bound}")
        if self.streams == "dual" and self.bias != "pose_geo":
            raise ValueError("dual streams need bias='pose_geo' (the pose and geometry λ)")
        if not 0 <= self.dual_from_block < depth:
            raise ValueError(f"dynamic_mask.dual_from_block {self.dual_from_block} is outside 0..{depth - 1}")
        if self.bias == "page4d" and self.biased_time_blocks:
            raise ValueError("the page4d bias only applies to view blocks; use bias='pose_geo' to bias time blocks")


@dataclass
class SparseGlobalConfig:
    """Sparse global attention: extra blocks over all T·V·P tokens, each run after one (time, view) pair.

    ``landmark``: every token attends to ``num_landmarks`` anchor patches per (t, v) (the most static
    patches by the dynamic mask, or given keypoints, or the largest tokens): N·T·V·K pairs, quadratic in the
    frames; with ``landmark_pool = "clip"`` to the ``num_landmarks`` best-ranked patches of the whole clip
    instead, a fixed pool: N·K pairs, linear in the frames. ``dilated``: the tokens of
    frame (t, v) attend to the frames at time and view offsets ``0, ±l`` for l in ``dilation_levels``.
    ``memory``: ``num_memory_tokens`` learned tokens gather from all tokens, then every token reads them.
    With ``keypoint_bias``, patch queries get ``+λ_kpt · K_ext`` on keypoint keys (λ_kpt learnable, 0 at
    init, clamped to ``[-lambda_bound, lambda_bound]``). The blocks start as the identity (LayerScale 0).
    """

    strategy: SparseStrategyName = "landmark"
    after_pairs: tuple[int, ...] = (11,)
    num_landmarks: int = 16
    landmark_pool: Literal["frame", "clip"] = "frame"
    """``frame``: ``num_landmarks`` anchors from every frame; ``clip``: ``num_landmarks`` anchors in all."""
    dilation_levels: tuple[int, ...] = (1, 2, 4)
    num_memory_tokens: int = 32
    keypoint_bias: bool = False
    lambda_bound: float = 4.0

    def validate(self, depth: int) -> None:
        """Raise ``ValueError`` for settings that cannot be built in an aggregator of ``depth`` pairs."""
        _check_choice("sparse_global", "strategy", self.strategy, SPARSE_STRATEGIES)
        _check_blocks("sparse_global", "after_pairs", self.after_pairs, depth)
        _check_choice("sparse_global", "landmark_pool", self.landmark_pool, ("frame", "clip"))
        if self.strategy == "landmark" and self.num_landmarks < 1:
            raise ValueError(f"sparse_global.num_landmarks must be at least 1, got {self.num_landmarks}")
        if self.strategy == "dilated" and (not self.dilation_levels or min(self.dilation_levels) < 1):
            raise ValueError(
                f"sparse_global.dilation_levels must be positive frame offsets, got {self.dilation_levels}"
            )
        if self.strategy == "memory" and self.num_memory_tokens < 1:
            raise ValueError(f"sparse_global.num_memory_tokens must be at least 1, got {self.num_memory_tokens}")
        if self.lambda_bound <= 0:
            raise ValueError(f"sparse_global.lambda_bound must be > 0, got {self.lambda_bound}")


@dataclass
class EpipolarConfig:
    """Epipolar prior in view blocks, used when coarse cameras are given to ``forward``.

    For a query patch of view a and a key patch of view b (same time step, a ≠ b), the key's centre is
    compared with the epipolar line of the query's centre in view b; keys farther than ``band_px``
    pixels get ``-penalty`` added to their logit. Computed ``chunk_size`` query rows at a time.
    """

    view_blocks: tuple[int, ...] = ()
    band_px: float = 14.0
    penalty: float = 4.0
    chunk_size: int = 1024

    def validate(self, depth: int) -> None:
        """Raise ``ValueError`` for settings that cannot be built in an aggregator of ``depth`` blocks per bank."""
        _check_blocks("epipolar", "view_blocks", self.view_blocks, depth)
        if not self.band_px >= 0 or not 0 <= self.penalty < float("inf") or self.chunk_size < 1:
            raise ValueError(f"epipolar needs band_px >= 0, a finite penalty >= 0 and chunk_size >= 1, got "
                             f"band_px={self.band_px}, penalty={self.penalty}, chunk_size={self.chunk_size}")


@dataclass
class TokenReductionConfig:
    """Run the listed time / view blocks on patch tokens average-pooled in ``factor × factor`` windows (camera and
    register tokens untouched); each block's update is spread back over its windows, so every layer output, and
    every DPT tap, keeps its full resolution (``page4d.aggregator.reduction``)."""

    factor: int = 2
    time_blocks: tuple[int, ...] = ()
    view_blocks: tuple[int, ...] = ()

    def validate(self, depth: int) -> None:
        """Raise ``ValueError`` for settings that cannot be built in an aggregator of ``depth`` blocks per bank."""
        if self.factor < 2:
            raise ValueError(f"token_reduction.factor must be at least 2 (a window of factor × factor patches), "
                             f"got {self.factor}")
        _check_blocks("token_reduction", "time_blocks", self.time_blocks, depth)
        _check_blocks("token_reduction", "view_blocks", self.view_blocks, depth)


@dataclass
class AggregatorConfig:
    """Alternating-attention aggregator over tokens ``[B, T, V, P, C]``.

    ``aa_order`` names the block banks in the order they run within a group; each group runs
    ``aa_block_size`` consecutive blocks of each bank. ``bank_kinds`` says which attention pattern a
    bank uses: the default (time → ``time``, view → ``view``) is the multi-view model, and
    (time → ``frame``, view → ``global``) is VGGT's schedule applied to all T·V frames.
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    layernorm_eps: float = 1e-5
    """Epsilon of the blocks' ``norm1`` / ``norm2`` (VGGT 1e-5, Pi3 1e-6)."""
    qk_norm_eps: float = 1e-5
    """Epsilon of the per-head q/k LayerNorms (1e-5 in VGGT and Pi3 alike)."""
    aa_order: tuple[BlockBank, ...] = ("time", "view")
    aa_block_size: int = 1
    bank_kinds: dict[str, AttentionKind] = field(default_factory=lambda: {"time": "time", "view": "view"})
    dynamic_mask: DynamicMaskConfig | None = None
    temporal_rope: bool = False
    """Relative time encoding in the time bank (learnable RoPE-style rotation by t, identity at init)."""
    temporal_frequencies: Literal["own", "spatial"] = "own"
    """The time rotation's frequency per channel pair: ``own`` (the spatial set reversed, so no time step is a
    spatial shift) or ``spatial`` (the 2-D RoPE's: a step by Δt is the diagonal shift (sΔt, sΔt); page4d-small's
    first weights were trained so)."""
    sparse_global: SparseGlobalConfig | None = None
    epipolar: EpipolarConfig | None = None
    token_reduction: TokenReductionConfig | None = None

    def reads(self, name: str) -> bool:
        """Whether a mechanism of this config reads the optional forward input ``name`` (a ``ForwardInputs``
        field: ``external_mask``, ``camera_priors`` or ``keypoints``)."""
        if name == "external_mask":
            return self.dynamic_mask is not None and self.dynamic_mask.takes_external_mask
        if name == "camera_priors":
            return self.epipolar is not None and bool(self.epipolar.view_blocks)
        if name == "keypoints":
            return self.sparse_global is not None
        raise ValueError(f"{name!r} is not an optional forward input; use external_mask, camera_priors or keypoints")

    def block_order(self) -> list[tuple[BlockBank, int]]:
        """The (bank, index) of every time and view block in running order: groups of ``aa_block_size``
        blocks of each bank in ``aa_order`` (VGGT's alternation). The layer schedule runs exactly this order."""
        k = self.aa_block_size
        return [(bank, g * k + j) for g in range(self.depth // k) for bank in self.aa_order for j in range(k)]

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot be built (the mechanisms' own fields included)."""
        if self.embed_dim % self.num_heads:
            raise ValueError(f"aggregator.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.aa_block_size < 1 or self.depth % self.aa_block_size:
            raise ValueError(
                f"aggregator.depth ({self.depth}) must be divisible by aa_block_size ({self.aa_block_size})"
            )
        if sorted(self.aa_order) != ["time", "view"]:
            raise ValueError(
                f"aggregator.aa_order must name the banks 'time' and 'view' once each, got {self.aa_order}"
            )
        if set(self.bank_kinds) != {"time", "view"}:
            raise ValueError(f"aggregator.bank_kinds needs an entry for 'time' and 'view', got {self.bank_kinds}")
        for bank, kind in self.bank_kinds.items():
            if kind not in get_args(AttentionKind):
                raise ValueError(f"unknown attention kind {kind!r} for bank {bank!r}")
        _check_choice("aggregator", "temporal_frequencies", self.temporal_frequencies, ("own", "spatial"))
        for part in (self.dynamic_mask, self.sparse_global, self.epipolar, self.token_reduction):
            if part is not None:
                part.validate(self.depth)
        if self.epipolar is not None and self.token_reduction is not None:
            both = sorted(set(self.epipolar.view_blocks) & set(self.token_reduction.view_blocks))
            if both:
                raise ValueError(f"view blocks {both} take both the epipolar prior and token reduction; the prior "
                                 "is built per full-size patch: reduce other blocks")
        if self.dynamic_mask is not None:
            self._check_mask_order(self.dynamic_mask)
        if self.epipolar is not None and self.epipolar.view_blocks and self.bank_kinds["view"] != "view":
            raise ValueError("the epipolar prior needs the view bank to run view attention (bank_kinds['view'])")

    def _check_mask_order(self, mask: DynamicMaskConfig) -> None:
        """Every biased block must run after the time block that feeds the mask head."""
        order = self.block_order()
        source = order.index(("time", mask.after_block))
        biased = [*(("view", i) for i in mask.biased_view_blocks), *(("time", i) for i in mask.biased_time_blocks)]
        early = sorted((order.index(b), b) for b in biased if order.index(b) <= source)
        if early:
            raise ValueError(
                f"the dynamic mask is computed after time block {mask.after_block}, but "
                f"{', '.join(f'{bank} block {i}' for _, (bank, i) in early)} run(s) before it and cannot use it; "
                "move dynamic_mask.after_block earlier or bias later blocks"
            )


@dataclass
class CameraHeadConfig:
    """Iterative camera head (VGGT ``CameraHead``, pose encoding ``absT_quaR_FoV``)."""

    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float = 0.01
    trans_act: str = "linear"
    quat_act: str = "linear"
    fl_act: str = "relu"
    num_iterations: int = 4


@dataclass
class DPTHeadConfig:
    """DPT dense head reading four aggregator taps (patch tokens only)."""

    output_dim: int = 2
    activation: str = "exp"
    conf_activation: str = "expp1"
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23)
    pos_embed: bool = True
    feature_only: bool = False
    down_ratio: int = 1
    head_features_2: int = 32
    frames_chunk_size: int = 8


@dataclass
class TrackHeadConfig:
    """Track head: a DPT feature extractor plus the iterative tracker (CoTracker / VGGSfM style)."""

    features: int = 128
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23)
    iters: int = 4
    predict_conf: bool = True
    stride: int = 2
    corr_levels: int = 7
    corr_radius: int = 4
    hidden_size: int = 384
    tracker_depth: int = 6
    tracker_num_heads: int = 8
    num_virtual_tracks: int = 64
    max_scale: int = 518
    mlp_ratio: float = 4.0


@dataclass
class ModelConfig:
    """The whole model. A head set to ``None`` is not built (and has no keys)."""

    patch_size: int = PATCH_SIZE
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    camera_head: CameraHeadConfig | None = field(default_factory=CameraHeadConfig)
    depth_head: DPTHeadConfig | None = field(default_factory=DPTHeadConfig)
    point_head: DPTHeadConfig | None = field(
        default_factory=lambda: DPTHeadConfig(output_dim=4, activation="inv_log")
    )
    track_head: TrackHeadConfig | None = field(default_factory=TrackHeadConfig)
    input_width: int = 518
    """Model-input width (crop mode) the weights were trained at: ``page4d reconstruct``'s default ``--size``."""
    trained_layout: TrainedLayout = "factorised"
    """The attention layout the weights were trained in; ``Page4D.infer(attention="auto")`` runs it (converters of
    VGGT, PAGE-4D and Pi3 checkpoints record ``set``, ``page4d train`` records ``factorised``)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim_in(self) -> int:
        """Width of the tokens every head reads: concat(time, view) = 2C."""
        return 2 * self.aggregator.embed_dim

    def validate(self) -> None:
        """Raise ``ValueError`` for configurations that cannot be built: each part's own rules, then the few
        that join parts (widths, head taps)."""
        enc, agg = self.encoder, self.aggregator
        _check_choice("encoder", "kind", enc.kind, ("dinov2", "conv"))
        _check_choice("model", "trained_layout", self.trained_layout, get_args(TrainedLayout))
        agg.validate()
        if enc.embed_dim != agg.embed_dim:
            raise ValueError(
                f"encoder.embed_dim ({enc.embed_dim}) must equal aggregator.embed_dim ({agg.embed_dim}): "
                "there is no projection between them"
            )
        if enc.num_register_tokens != agg.num_register_tokens and enc.kind == "dinov2":
            raise ValueError("encoder and aggregator must use the same number of register tokens")
        if self.input_width <= 0 or self.input_width % self.patch_size:
            raise ValueError(f"input_width ({self.input_width}) must be a positive multiple of {self.patch_size}")
        for name in ("depth_head", "point_head", "track_head"):
            head = getattr(self, name)
            if head is not None and any(not 0 <= i < agg.depth for i in head.intermediate_layer_idx):
                raise ValueError(
                    f"{name}.intermediate_layer_idx {head.intermediate_layer_idx} out of range for depth {agg.depth}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict`` (after ``migrate``, so configs of earlier versions load); unknown fields raise
        ``ValueError``."""
        def build(klass: type, values: dict[str, Any] | None) -> Any:
            if values is None:
                return None
            names = {f.name for f in dataclasses.fields(klass)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {klass.__name__} fields: {sorted(unknown)}")
            kwargs = {}
            for f in dataclasses.fields(klass):
                if f.name in values:
                    v = values[f.name]
                    nested = _NESTED.get((klass, f.name))
                    kwargs[f.name] = build(nested, v) if nested else tuple(v) if isinstance(v, list) else v
            return klass(**kwargs)

        data = migrate(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(
            patch_size=data.get("patch_size", PATCH_SIZE),
            encoder=build(EncoderConfig, data.get("encoder", {})),
            aggregator=build(AggregatorConfig, data.get("aggregator", {})),
            camera_head=build(CameraHeadConfig, data.get("camera_head")),
            depth_head=build(DPTHeadConfig, data.get("depth_head")),
            point_head=build(DPTHeadConfig, data.get("point_head")),
            track_head=build(TrackHeadConfig, data.get("track_head")),
            input_width=data.get("input_width", cls.input_width),
        )


_NESTED: dict[tuple[type, str], type] = {
    (AggregatorConfig, "dynamic_mask"): DynamicMaskConfig,
    (AggregatorConfig, "sparse_global"): SparseGlobalConfig,
    (AggregatorConfig, "epipolar"): EpipolarConfig,
    (AggregatorConfig, "token_reduction"): TokenReductionConfig,
}
