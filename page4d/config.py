"""Typed model configuration: dataclasses with named presets.

Every hyper-parameter that changes weights or numerics lives here, so a checkpoint's
``config.json`` (``ModelConfig.to_dict``) fully describes the model that wrote it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from page4d.conventions import PATCH_SIZE

BlockBank = Literal["time", "view"]
"""A bank of aggregator blocks: ``time_blocks`` (VGGT ``frame_blocks``) or ``view_blocks`` (VGGT ``global_blocks``)."""

AttentionKind = Literal["time", "view", "frame", "global"]
"""Which tokens attend to each other: same view across time, same time across views, one image, all."""


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

    ``bias = "pose_geo"`` (the seeds' shared stream): ``key`` is the moving probability M (1 = moving),
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

    Heads: ``fin10`` and ``release`` (PAGE-4D's two, reference key names) and ``seeds`` (the design
    documents' head with ``M = sigmoid(alpha·z(M̃) + beta·M_ext)``, gates ``scalar`` or per-frame ``mlp``).
    """

    head: Literal["fin10", "release", "seeds"] = "release"
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
    """How the seeds head weighs its own logit and the external mask."""
    streams: Literal["shared", "dual"] = "shared"
    dual_from_block: int = 0
    dual_weights: Literal["shared", "branched"] = "shared"


@dataclass
class SparseGlobalConfig:
    """Sparse global attention: extra blocks over all T·V·P tokens, each run after one (time, view) pair.

    ``landmark``: every token attends to ``num_landmarks`` anchor patches per (t, v) (the most static
    patches by the dynamic mask, or given keypoints, or the largest tokens). ``dilated``: the tokens of
    frame (t, v) attend to the frames at time and view offsets ``0, ±l`` for l in ``dilation_levels``.
    ``memory``: ``num_memory_tokens`` learned tokens gather from all tokens, then every token reads them.
    With ``keypoint_bias``, patch queries get ``+λ_kpt · K_ext`` on keypoint keys (λ_kpt learnable, 0 at
    init, clamped to ``[-lambda_bound, lambda_bound]``). The blocks start as the identity (LayerScale 0).
    """

    strategy: Literal["landmark", "dilated", "memory"] = "landmark"
    after_pairs: tuple[int, ...] = (11,)
    num_landmarks: int = 16
    dilation_levels: tuple[int, ...] = (1, 2, 4)
    num_memory_tokens: int = 32
    keypoint_bias: bool = False
    lambda_bound: float = 4.0


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
    sparse_global: SparseGlobalConfig | None = None
    epipolar: EpipolarConfig | None = None
    """Relative time encoding in the time bank (learnable RoPE-style rotation by t, identity at init)."""


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

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim_in(self) -> int:
        """Width of the tokens every head reads: concat(time, view) = 2C."""
        return 2 * self.aggregator.embed_dim

    def validate(self) -> None:
        """Raise ``ValueError`` for configurations that cannot be built."""
        enc, agg = self.encoder, self.aggregator
        if enc.embed_dim != agg.embed_dim:
            raise ValueError(
                f"encoder.embed_dim ({enc.embed_dim}) must equal aggregator.embed_dim ({agg.embed_dim}): "
                "there is no projection between them"
            )
        if enc.num_register_tokens != agg.num_register_tokens and enc.kind == "dinov2":
            raise ValueError("encoder and aggregator must use the same number of register tokens")
        if self.input_width <= 0 or self.input_width % self.patch_size:
            raise ValueError(f"input_width ({self.input_width}) must be a positive multiple of {self.patch_size}")
        if agg.depth % agg.aa_block_size:
            raise ValueError(f"aggregator.depth ({agg.depth}) must be divisible by aa_block_size ({agg.aa_block_size})")
        if sorted(agg.aa_order) != ["time", "view"]:
            raise ValueError(f"aggregator.aa_order must name the banks 'time' and 'view' once each, got {agg.aa_order}")
        if set(agg.bank_kinds) != {"time", "view"}:
            raise ValueError(f"aggregator.bank_kinds needs an entry for 'time' and 'view', got {agg.bank_kinds}")
        for bank, kind in agg.bank_kinds.items():
            if kind not in ("time", "view", "frame", "global"):
                raise ValueError(f"unknown attention kind {kind!r} for bank {bank!r}")
        mask = agg.dynamic_mask
        if mask is not None:
            if not 0 <= mask.after_block < agg.depth:
                raise ValueError(f"dynamic_mask.after_block {mask.after_block} is outside 0..{agg.depth - 1}")
            if any(not 0 <= i < agg.depth for i in mask.biased_view_blocks):
                raise ValueError(
                    f"dynamic_mask.biased_view_blocks {mask.biased_view_blocks} outside 0..{agg.depth - 1}"
                )
            if any(not 0 <= i < agg.depth for i in mask.biased_time_blocks):
                raise ValueError(
                    f"dynamic_mask.biased_time_blocks {mask.biased_time_blocks} outside 0..{agg.depth - 1}"
                )
            if mask.scale < 0 or mask.hold_end < mask.hold_start:
                raise ValueError("dynamic_mask needs scale >= 0 and hold_end >= hold_start")
            if mask.lambda_bound <= 0:
                raise ValueError(f"dynamic_mask.lambda_bound must be > 0, got {mask.lambda_bound}")
            if mask.streams == "dual" and mask.bias != "pose_geo":
                raise ValueError("dual streams need bias='pose_geo' (the pose and geometry λ)")
            if not 0 <= mask.dual_from_block < agg.depth:
                raise ValueError(f"dynamic_mask.dual_from_block {mask.dual_from_block} is outside 0..{agg.depth - 1}")
            if mask.bias == "page4d" and mask.biased_time_blocks:
                raise ValueError("the page4d bias only applies to view blocks; use bias='pose_geo' to bias time blocks")
            from page4d.aggregator.schedule import LayerSchedule  # the schedule owns the ordering rules

            LayerSchedule.alternating(agg)
        sparse = agg.sparse_global
        if sparse is not None:
            if any(not 0 <= i < agg.depth for i in sparse.after_pairs):
                raise ValueError(f"sparse_global.after_pairs {sparse.after_pairs} outside 0..{agg.depth - 1}")
            if sparse.strategy not in ("landmark", "dilated", "memory"):
                raise ValueError(f"unknown sparse_global.strategy {sparse.strategy!r}; use landmark, dilated or memory")
        epi = agg.epipolar
        if epi is not None:
            if any(not 0 <= i < agg.depth for i in epi.view_blocks):
                raise ValueError(f"epipolar.view_blocks {epi.view_blocks} outside 0..{agg.depth - 1}")
            if epi.view_blocks and agg.bank_kinds["view"] != "view":
                raise ValueError("the epipolar prior needs the view bank to run view attention (bank_kinds['view'])")
            if epi.band_px < 0 or epi.penalty < 0 or epi.chunk_size < 1:
                raise ValueError("epipolar needs band_px >= 0, penalty >= 0 and chunk_size >= 1")
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
        """Inverse of ``to_dict``; unknown fields raise ``ValueError``."""
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

        data = dict(data)
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
}


def _vggt_1b() -> ModelConfig:
    return ModelConfig()


def _pi3_large() -> ModelConfig:
    """The model Pi3 / Pi3X weights load into: Pi3's DINOv2 ViT-L encoder, 18 (time, view) pairs (Pi3's 36
    decoder blocks), block LayerNorm eps 1e-6, and no heads (Pi3's own heads have no page4d counterpart)."""
    return ModelConfig(
        aggregator=AggregatorConfig(depth=18, layernorm_eps=1e-6),
        camera_head=None, depth_head=None, point_head=None, track_head=None,
    )


def _tiny() -> ModelConfig:
    """A few-hundred-k-parameter model for tests and the untrained demo (DINOv2-style encoder)."""
    return ModelConfig(
        encoder=EncoderConfig(embed_dim=48, depth=2, num_heads=4, pos_embed_grid=8),
        aggregator=AggregatorConfig(embed_dim=48, depth=4, num_heads=4),
        camera_head=CameraHeadConfig(trunk_depth=1, num_heads=8),
        depth_head=DPTHeadConfig(features=8, out_channels=(8, 16, 16, 32), intermediate_layer_idx=(0, 1, 2, 3)),
        point_head=DPTHeadConfig(
            output_dim=4, activation="inv_log", features=8, out_channels=(8, 16, 16, 32),
            intermediate_layer_idx=(0, 1, 2, 3),
        ),
        track_head=None,
    )


def _small() -> ModelConfig:
    """About 6 M parameters (24 MB in float32): width 128, a 2-block encoder and 6 (time, view) pairs; small enough
    to train on a 2-core CPU in hours at 168 × 126 pixels. The base of ``small-mv``, the shipped model."""
    dense = dict(features=32, out_channels=(32, 64, 96, 128), intermediate_layer_idx=(1, 3, 4, 5))
    return ModelConfig(
        encoder=EncoderConfig(embed_dim=128, depth=2, num_heads=4, pos_embed_grid=12),
        aggregator=AggregatorConfig(embed_dim=128, depth=6, num_heads=4),
        camera_head=CameraHeadConfig(trunk_depth=2, num_heads=8),
        depth_head=DPTHeadConfig(**dense),
        point_head=DPTHeadConfig(output_dim=4, activation="inv_log", **dense),
        track_head=None,
        input_width=168,
    )


def _tiny_conv() -> ModelConfig:
    """Tiny model with a conv patch embedding (no ViT encoder)."""
    cfg = _tiny()
    cfg.encoder = EncoderConfig(kind="conv", embed_dim=48, depth=0, num_heads=4)
    return cfg


def _tiny_track() -> ModelConfig:
    """Tiny model with the track head."""
    cfg = _tiny()
    cfg.track_head = TrackHeadConfig(
        features=8, out_channels=(8, 8, 16, 16), intermediate_layer_idx=(0, 1, 2, 3),
        corr_levels=3, corr_radius=2, hidden_size=16,
    )
    return cfg


def page4d_mask_config(
    variant: str, depth: int = 24, hold_start: float = 0.0, hold_end: float = 0.0
) -> DynamicMaskConfig:
    """PAGE-4D's mask placement: ``fin10`` (after time block 7, biases view blocks 8..depth-1, strength 1)
    or ``release`` (after block 9, biases 10..19, strength 64·alpha with the cosine hold)."""
    if variant == "fin10":
        return DynamicMaskConfig(
            head="fin10", after_block=7, biased_view_blocks=tuple(range(8, depth)), scale=1.0, schedule="constant"
        )
    if variant == "release":
        return DynamicMaskConfig(
            head="release", after_block=9, biased_view_blocks=tuple(range(10, 20)), scale=64.0,
            schedule="cosine_hold", hold_start=hold_start, hold_end=hold_end,
        )
    raise ValueError(f"unknown PAGE-4D variant {variant!r}; use 'fin10' or 'release'")


def _with_mask(base: ModelConfig, mask: DynamicMaskConfig) -> ModelConfig:
    base.aggregator.dynamic_mask = mask
    base.validate()
    return base


def _tiny_page4d(head: Literal["fin10", "release"]) -> ModelConfig:
    """Tiny PAGE-4D model: the mask head reads time block 1 and biases view blocks 2 and 3."""
    release = head == "release"
    return _with_mask(_tiny(), DynamicMaskConfig(
        head=head, after_block=1, biased_view_blocks=(2, 3), release_hidden=16, scale=64.0 if release else 1.0,
        schedule="cosine_hold" if release else "constant", hold_start=1.0 if release else 0.0,
        hold_end=2.0 if release else 0.0,
    ))


def _page4d_mv(base: ModelConfig, split: int, landmarks: int = 16) -> ModelConfig:
    """The seeds' design on ``base``: time/view pairs, the seeds mask head after pair ``split - 1`` biasing
    the later time and view blocks through one shared stream, temporal RoPE, one sparse global layer
    (landmarks) after the middle pair. The epipolar prior is available but off (it needs camera priors)."""
    depth = base.aggregator.depth
    base.aggregator.dynamic_mask = DynamicMaskConfig(
        head="seeds", bias="pose_geo", after_block=split - 1, biased_view_blocks=tuple(range(split, depth)),
        biased_time_blocks=tuple(range(split, depth)),
    )
    base.aggregator.temporal_rope = True
    base.aggregator.sparse_global = SparseGlobalConfig(
        strategy="landmark", after_pairs=(depth // 2 - 1,), num_landmarks=landmarks
    )
    base.validate()
    return base


PRESETS = {
    "vggt-1b": _vggt_1b,
    "page4d-fin10": lambda: _with_mask(_vggt_1b(), page4d_mask_config("fin10")),
    "page4d-release": lambda: _with_mask(_vggt_1b(), page4d_mask_config("release")),
    "page4d-release-mask": lambda: _with_mask(_vggt_1b(), page4d_mask_config("release", hold_start=1.0, hold_end=2.0)),
    "page4d-mv": lambda: _page4d_mv(_vggt_1b(), split=8),
    "pi3-large": _pi3_large,
    "small-mv": lambda: _page4d_mv(_small(), split=2, landmarks=4),
    "tiny-mv": lambda: _page4d_mv(_tiny(), split=1, landmarks=2),
    "tiny-page4d-fin10": lambda: _tiny_page4d("fin10"),
    "tiny-page4d-release": lambda: _tiny_page4d("release"),
    "tiny": _tiny,
    "tiny-conv": _tiny_conv,
    "tiny-track": _tiny_track,
}


def preset(name: str) -> ModelConfig:
    """A fresh ``ModelConfig`` for a named preset.

    ``vggt-1b``; ``page4d-fin10`` (author's PAGE-4D: mask after time block 7, biases view blocks 8–23);
    ``page4d-release`` (official release: mask after block 9, biases 10–19, strength 64·alpha with the
    release default hold 0/0, i.e. off at inference, as ``checkpoint_nomask.pt`` is used) and
    ``page4d-release-mask`` (hold 1/2: strength 64 at step 0, for ``checkpoint_mask.pt``); tiny test
    models ``tiny``, ``tiny-conv``, ``tiny-track``, ``tiny-page4d-fin10``, ``tiny-page4d-release``;
    ``page4d-mv`` (the design documents' multi-view model: seeds mask head after pair 7 with pose/geo λ
    biases in time and view blocks 8–23, temporal RoPE, a landmark sparse global block after pair 11)
    and its small and tiny twins ``small-mv`` (the architecture of the shipped trained model) and ``tiny-mv``;
    ``pi3-large`` (Pi3's backbone: 18 pairs, block eps 1e-6, no heads; the
    model ``yyfz233/Pi3`` and ``yyfz233/Pi3X`` load into).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
