"""VGGT checkpoints -> page4d: a pure key converter, and the model config of a reference setup.

The only renames are the design documents' two: ``aggregator.frame_blocks.* -> aggregator.time_blocks.*`` and
``aggregator.global_blocks.* -> aggregator.view_blocks.*``. Everything else keeps its name.
"""

from __future__ import annotations

from typing import Any

import torch

from page4d.checkpoints.io import detect_family
from page4d.checkpoints.report import LoadReport
from page4d.config import (
    AggregatorConfig,
    CameraHeadConfig,
    DPTHeadConfig,
    EncoderConfig,
    ModelConfig,
    TrackHeadConfig,
)

RENAMES = (
    ("aggregator.frame_blocks.", "aggregator.time_blocks."),
    ("aggregator.global_blocks.", "aggregator.view_blocks."),
)
_REFERENCE_KIND = {"frame": "time", "global": "view"}


def rename_key(key: str) -> str:
    """Reference key -> page4d key."""
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def convert(state_dict: dict[str, torch.Tensor], source: str = "vggt") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename a VGGT state dict to page4d keys. Pure: tensors are shared, the input is not modified."""
    family = detect_family(state_dict)
    if family != "vggt":
        hint = {
            "native": "it is already a page4d checkpoint: load it with Page4D.from_pretrained",
            "page4d-reference": "it is a PAGE-4D checkpoint (has aggregator.spatial_mask_head.*); use the "
            "page4d-reference converter",
            "pi3": "it is a Pi3 checkpoint (encoder.* / decoder.*); use the pi3 converter",
        }.get(family, "no aggregator.frame_blocks.* keys found")
        raise ValueError(f"{source} is not a VGGT checkpoint: {hint}")
    return renamed(state_dict, LoadReport(source=source, converter="vggt"))


def renamed(state_dict: dict[str, torch.Tensor], report: LoadReport) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Every key through ``rename_key`` (tensors shared), each recorded in ``report.mapped``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        target = rename_key(key)
        out[target] = value
        report.mapped[target] = key
    return out, report


def model_config_from_reference(ref: dict[str, Any]) -> ModelConfig:
    """``ModelConfig`` for a reference VGGT constructor setup (the fixtures' ``config.json`` schema)."""
    agg, pe = ref["aggregator"], ref["patch_embed"]
    if pe["kind"] == "conv":
        encoder = EncoderConfig(kind="conv", embed_dim=pe["embed_dim"], depth=0, num_heads=agg["num_heads"])
    else:
        grid = pe.get("pos_embed_grid", [pe["img_size"] // pe["patch_size"]] * 2)
        if grid[0] != grid[1]:
            raise ValueError(f"DINOv2 position-embedding grids are square, got {grid}")
        encoder = EncoderConfig(
            kind="dinov2", embed_dim=pe["embed_dim"], depth=pe["depth"], num_heads=pe["num_heads"],
            mlp_ratio=pe["mlp_ratio"], num_register_tokens=pe["num_register_tokens"], pos_embed_grid=grid[0],
            init_values=pe["init_values"], layernorm_eps=pe["layernorm_eps"], qkv_bias=pe["qkv_bias"],
            proj_bias=pe["proj_bias"], ffn_bias=pe["ffn_bias"],
        )
    constants = ref.get("fixed_constants", {})
    eps, qk_eps = constants.get("aggregator_layernorm_eps", 1e-5), constants.get("aggregator_qk_norm_eps", 1e-5)
    aggregator = AggregatorConfig(
        embed_dim=agg["embed_dim"], depth=agg["depth"], num_heads=agg["num_heads"], mlp_ratio=agg["mlp_ratio"],
        num_register_tokens=agg["num_register_tokens"], qkv_bias=agg["qkv_bias"], proj_bias=agg["proj_bias"],
        ffn_bias=agg["ffn_bias"], qk_norm=agg["qk_norm"], rope_freq=agg["rope_freq"],
        init_values=agg["init_values"], layernorm_eps=eps, qk_norm_eps=qk_eps,
        aa_order=tuple(_REFERENCE_KIND[k] for k in agg["aa_order"]), aa_block_size=agg["aa_block_size"],
    )
    enabled = ref.get("enabled_heads", {})

    def dpt(name: str) -> DPTHeadConfig | None:
        h = ref.get(name)
        if not h or not enabled.get(name.removesuffix("_head"), True):
            return None
        return DPTHeadConfig(
            output_dim=h["output_dim"], activation=h["activation"], conf_activation=h["conf_activation"],
            features=h["features"], out_channels=tuple(h["out_channels"]),
            intermediate_layer_idx=tuple(h["intermediate_layer_idx"]), pos_embed=h["pos_embed"],
            feature_only=h["feature_only"], down_ratio=h["down_ratio"], frames_chunk_size=h["frames_chunk_size"],
        )

    cam = ref.get("camera_head")
    camera = None
    if cam and enabled.get("camera", True):
        if cam["pose_encoding_type"] != "absT_quaR_FoV":
            raise ValueError(f"unsupported pose encoding {cam['pose_encoding_type']!r}")
        camera = CameraHeadConfig(
            trunk_depth=cam["trunk_depth"], num_heads=cam["num_heads"], mlp_ratio=cam["mlp_ratio"],
            init_values=cam["init_values"], trans_act=cam["trans_act"], quat_act=cam["quat_act"],
            fl_act=cam["fl_act"], num_iterations=cam["num_iterations"],
        )
    trk = ref.get("track_head")
    track = None
    if trk and enabled.get("track", True):
        fe, tr = trk["feature_extractor"], trk["tracker"]
        track = TrackHeadConfig(
            features=trk["features"], out_channels=tuple(fe["out_channels"]),
            intermediate_layer_idx=tuple(fe["intermediate_layer_idx"]), iters=trk["iters"],
            predict_conf=trk["predict_conf"], stride=trk["stride"], corr_levels=trk["corr_levels"],
            corr_radius=trk["corr_radius"], hidden_size=trk["hidden_size"], tracker_depth=tr["depth"],
            tracker_num_heads=tr["num_heads"], num_virtual_tracks=tr["num_virtual_tracks"],
            max_scale=tr["max_scale"], mlp_ratio=tr["mlp_ratio"],
        )
    return ModelConfig(
        patch_size=pe["patch_size"], encoder=encoder, aggregator=aggregator, camera_head=camera,
        depth_head=dpt("depth_head"), point_head=dpt("point_head"), track_head=track,
    )
