"""Named model presets: ``preset(name)`` gives a fresh ``ModelConfig``.

Real architectures (``vggt-1b``, PAGE-4D's two variants, ``pi3-large``, the design documents' ``page4d-mv``),
the shipped model's ``small-mv``, and tiny models for tests and demos.
"""

from __future__ import annotations

from typing import Literal

from page4d.config import (
    AggregatorConfig,
    CameraHeadConfig,
    DPTHeadConfig,
    DynamicMaskConfig,
    EncoderConfig,
    ModelConfig,
    SparseGlobalConfig,
    TrackHeadConfig,
)


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
    """The design documents' design on ``base``: time/view pairs, the fusion mask head after pair ``split - 1`` biasing
    the later time and view blocks through one shared stream, temporal RoPE, one sparse global layer
    (landmarks) after the middle pair. The epipolar prior is available but off (it needs camera priors)."""
    depth = base.aggregator.depth
    base.aggregator.dynamic_mask = DynamicMaskConfig(
        head="fusion", bias="pose_geo", after_block=split - 1, biased_view_blocks=tuple(range(split, depth)),
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
    ``page4d-mv`` (the design documents' multi-view model: fusion mask head after pair 7 with pose/geo λ
    biases in time and view blocks 8–23, temporal RoPE, a landmark sparse global block after pair 11)
    and its small and tiny twins ``small-mv`` (the architecture of the shipped trained model) and ``tiny-mv``;
    ``pi3-large`` (Pi3's backbone: 18 pairs, block eps 1e-6, no heads; the
    model ``yyfz233/Pi3`` and ``yyfz233/Pi3X`` load into).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
