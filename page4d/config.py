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
    aa_order: tuple[BlockBank, ...] = ("time", "view")
    aa_block_size: int = 1
    bank_kinds: dict[str, AttentionKind] = field(default_factory=lambda: {"time": "time", "view": "view"})


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
        if agg.depth % agg.aa_block_size:
            raise ValueError(f"aggregator.depth ({agg.depth}) must be divisible by aa_block_size ({agg.aa_block_size})")
        if sorted(agg.aa_order) != ["time", "view"]:
            raise ValueError(f"aggregator.aa_order must name the banks 'time' and 'view' once each, got {agg.aa_order}")
        if set(agg.bank_kinds) != {"time", "view"}:
            raise ValueError(f"aggregator.bank_kinds needs an entry for 'time' and 'view', got {agg.bank_kinds}")
        for bank, kind in agg.bank_kinds.items():
            if kind not in ("time", "view", "frame", "global"):
                raise ValueError(f"unknown attention kind {kind!r} for bank {bank!r}")
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
                    kwargs[f.name] = tuple(v) if isinstance(v, list) else v
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
        )


def _vggt_1b() -> ModelConfig:
    return ModelConfig()


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


PRESETS = {
    "vggt-1b": _vggt_1b,
    "tiny": _tiny,
    "tiny-conv": _tiny_conv,
    "tiny-track": _tiny_track,
}


def preset(name: str) -> ModelConfig:
    """A fresh ``ModelConfig`` for a named preset (``vggt-1b``, ``tiny``, ``tiny-conv``, ``tiny-track``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
