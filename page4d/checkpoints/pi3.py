"""Pi3 / Pi3X checkpoints -> page4d: a pure key converter and the model config of a reference setup.

Licence: the Pi3 and Pi3X weights (``yyfz233/Pi3``, ``yyfz233/Pi3X``) are CC BY-NC 4.0, non-commercial
use only; a model initialised from them inherits that restriction.

Pi3 is a DINOv2 ViT-L/14 with 4 registers (``encoder.*``, VGGT's ``patch_embed`` layout without
``mask_token``), 36 decoder blocks with VGGT's block layout (even: attention within one image, odd:
attention over all images), 5 special tokens shared by every frame (``register_token`` ``[1, 1, 5, C]``)
and its own heads. The mapping:

* ``encoder.<rest>`` -> ``aggregator.patch_embed.<rest>``;
* ``decoder.{2k}`` -> ``aggregator.time_blocks.{k}``, ``decoder.{2k+1}`` -> ``aggregator.view_blocks.{k}``;
* ``register_token`` token 0 -> ``aggregator.camera_token``, tokens 1-4 -> ``aggregator.register_token``,
  the same values in both slots (first frame and the others).

Laid out as T = 1, V = images, with the time block before the view block of each pair, the
aggregator then computes Pi3's decoder exactly, and identical slots keep Pi3's permutation
equivariance over the views. Pi3X has the same encoder, decoder and special tokens (its decoder is
Pi3's computation when no depth / ray / pose priors are given), so it maps the same way; only its
heads and prior branches differ, and like Pi3's heads they are reported unused.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from page4d.checkpoints.io import detect_family
from page4d.checkpoints.loading import listing
from page4d.checkpoints.report import LoadReport
from page4d.config import AggregatorConfig, EncoderConfig, ModelConfig

ENCODER, DECODER, TOKENS = "encoder.", "decoder.", "register_token"
NUM_SPECIAL = 5
"""Pi3's special tokens per frame: page4d's camera token and its 4 registers."""

_ENCODER_TOP = (
    "cls_token", "pos_embed", "register_tokens", "patch_embed.proj.weight", "patch_embed.proj.bias",
    "norm.weight", "norm.bias",
)
_BLOCK = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    "ls2.gamma",
)
_DECODER_BLOCK = (*_BLOCK, "attn.q_norm.weight", "attn.q_norm.bias", "attn.k_norm.weight", "attn.k_norm.bias")
_INDEXED = re.compile(r"(\d+)\.(.+)")

MASK_TOKEN = "aggregator.patch_embed.mask_token"
ALLOWED_MISSING = {MASK_TOKEN: "not in Pi3; unused at inference and in training, zeros"}
"""The only model keys a Pi3 source may leave unset (key -> reason); they keep their initial values."""

_HEADS = "page4d has no counterpart of Pi3's heads"
UNUSED = {
    "point_decoder": f"Pi3 point-map head transformer; {_HEADS}",
    "point_head": f"Pi3 point-map output head (linear in Pi3, convolutional in Pi3X); {_HEADS}",
    "conf_decoder": f"Pi3 confidence head transformer; {_HEADS}",
    "conf_head": f"Pi3 confidence output head (linear in Pi3, convolutional in Pi3X); {_HEADS}",
    "camera_decoder": f"Pi3 camera head transformer; {_HEADS}",
    "camera_head": f"Pi3 camera-pose head; {_HEADS}",
    "image_mean": "ImageNet mean buffer; page4d's aggregator normalises with the same constants",
    "image_std": "ImageNet std buffer; page4d's aggregator normalises with the same constants",
}
"""Top-level names of Pi3 keys with no page4d counterpart -> reason."""

_PRIORS = (
    "Pi3X depth / ray / pose prior branch; page4d has no counterpart, and without priors Pi3X adds nothing "
    "from it to the decoder, so the mapping stays exact"
)
PI3X_UNUSED = {
    "metric_token": f"Pi3X metric-scale token; {_HEADS}",
    "metric_decoder": f"Pi3X metric-scale head transformer; {_HEADS}",
    "metric_head": f"Pi3X metric-scale output head; {_HEADS}",
    "depth_encoder": _PRIORS,
    "depth_emb": _PRIORS,
    "ray_embed": _PRIORS,
    "pose_inject_blk": _PRIORS,
}
"""Top-level names of the keys only Pi3X has -> reason."""

_OTHER_FAMILIES = {
    "vggt": "it is a VGGT checkpoint (aggregator.frame_blocks.*); use page4d.checkpoints.vggt",
    "page4d-reference": "it is a PAGE-4D checkpoint (aggregator.spatial_mask_head.*); use "
    "page4d.checkpoints.page4d_reference",
    "native": "it is already a page4d checkpoint: load it with Page4D.from_pretrained",
}


def detect_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """``pi3x`` when the metric-scale head's keys are present, else ``pi3``."""
    metric = ("metric_token", "metric_decoder", "metric_head")
    return "pi3x" if any(k.split(".")[0] in metric for k in state_dict) else "pi3"


def _blocks(
    keys: dict[str, torch.Tensor], prefix: str, suffixes: tuple[str, ...], unknown: list[str]
) -> dict[int, dict[str, torch.Tensor]]:
    """Group ``{i}.{suffix}`` keys (``prefix`` stripped) by block index; anything else goes to ``unknown``."""
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in keys.items():
        match = _INDEXED.fullmatch(key)
        if match is None or match[2] not in suffixes:
            unknown.append(prefix + key)
            continue
        blocks.setdefault(int(match[1]), {})[match[2]] = value
    return blocks


def _missing_block_keys(blocks: dict[int, dict[str, Any]], prefix: str, suffixes: tuple[str, ...]) -> list[str]:
    """Keys absent from blocks ``0 .. max index``: gaps in the indices and incomplete blocks."""
    count = max(blocks) + 1 if blocks else 0
    return [f"{prefix}{i}.{s}" for i in range(count) for s in suffixes if s not in blocks.get(i, {})]


def convert(state_dict: dict[str, torch.Tensor], source: str = "pi3") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Pi3 / Pi3X state dict -> page4d keys. Pure: renamed tensors are shared, the input is not modified.

    ``register_token`` ``[1, 1, 5, C]`` becomes ``aggregator.camera_token`` ``[1, 2, 1, C]`` (token 0) and
    ``aggregator.register_token`` ``[1, 2, 4, C]`` (tokens 1-4), each copied into both slots (new tensors).
    Every source key is mapped or reported unused with a reason; ``report.initialised`` lists the model
    keys left unset (``ALLOWED_MISSING``: only ``mask_token``, when the source lacks it).

    Raises ``ValueError`` naming the keys for another family, unrecognised keys, missing encoder /
    decoder / token keys, an odd number of decoder blocks or a ``register_token`` not ``[1, 1, 5, C]``.
    """
    family = detect_family(state_dict)
    if family in _OTHER_FAMILIES:
        raise ValueError(f"{source} is not a Pi3 checkpoint: {_OTHER_FAMILIES[family]}")
    if family != "pi3":
        absent = [p + "*" for p in (ENCODER, DECODER) if not any(k.startswith(p) for k in state_dict)]
        found = listing(sorted(state_dict), 8) if state_dict else "no keys at all"
        raise ValueError(
            f"{source} is not a Pi3 checkpoint: it has no {' and no '.join(absent)} keys (found: {found}); "
            "a Pi3 checkpoint has encoder.*, decoder.* and register_token at the top level"
        )
    variant = detect_variant(state_dict)
    reasons = UNUSED | PI3X_UNUSED if variant == "pi3x" else UNUSED
    encoder, decoder, unused, unknown = {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(ENCODER):
            encoder[key[len(ENCODER) :]] = value
        elif key.startswith(DECODER):
            decoder[key[len(DECODER) :]] = value
        elif key.split(".")[0] in reasons:
            unused[key] = reasons[key.split(".")[0]]
        elif key != TOKENS:
            unknown.append(key)

    encoder_blocks = _blocks(
        {k[len("blocks.") :]: v for k, v in encoder.items() if k.startswith("blocks.")},
        ENCODER + "blocks.", _BLOCK, unknown,
    )
    unknown += [ENCODER + k for k in encoder if not k.startswith("blocks.") and k not in (*_ENCODER_TOP, "mask_token")]
    decoder_blocks = _blocks(decoder, DECODER, _DECODER_BLOCK, unknown)
    if unknown:
        raise ValueError(f"{source}: unrecognised keys for a {variant} checkpoint: {listing(sorted(unknown))}")
    missing = [ENCODER + k for k in _ENCODER_TOP if k not in encoder]
    missing += _missing_block_keys(encoder_blocks, ENCODER + "blocks.", _BLOCK)
    missing += _missing_block_keys(decoder_blocks, DECODER, _DECODER_BLOCK)
    missing += [] if TOKENS in state_dict else [TOKENS]
    if missing:
        raise ValueError(f"{source}: {len(missing)} missing keys: {listing(missing)}; the checkpoint is incomplete")
    if len(decoder_blocks) % 2:
        raise ValueError(
            f"{source} has {len(decoder_blocks)} decoder blocks (decoder.0 .. decoder.{len(decoder_blocks) - 1}); "
            "an odd count cannot be paired into (time, view) blocks"
        )
    tokens = state_dict[TOKENS]
    if tokens.dim() != 4 or tuple(tokens.shape[:3]) != (1, 1, NUM_SPECIAL):
        raise ValueError(f"{source}: {TOKENS} has shape {list(tokens.shape)}, expected [1, 1, {NUM_SPECIAL}, C]")

    out: dict[str, torch.Tensor] = {}
    report = LoadReport(source=source, converter=variant, unused=unused)
    for rest, value in encoder.items():
        out["aggregator.patch_embed." + rest] = value
        report.mapped["aggregator.patch_embed." + rest] = ENCODER + rest
    for index, block in decoder_blocks.items():
        bank = "time_blocks" if index % 2 == 0 else "view_blocks"
        for rest, value in block.items():
            target = f"aggregator.{bank}.{index // 2}.{rest}"
            out[target] = value
            report.mapped[target] = f"{DECODER}{index}.{rest}"
    out["aggregator.camera_token"] = tokens[:, :, :1].repeat(1, 2, 1, 1)
    out["aggregator.register_token"] = tokens[:, :, 1:].repeat(1, 2, 1, 1)
    for target, how in (
        ("aggregator.camera_token", "register_token[:, :, 0:1] [1, 1, 1, C] copied into both slots -> [1, 2, 1, C]"),
        ("aggregator.register_token", "register_token[:, :, 1:5] [1, 1, 4, C] copied into both slots -> [1, 2, 4, C]"),
    ):
        report.mapped[target] = TOKENS
        report.notes[target] = how
    report.initialised = {k: why for k, why in ALLOWED_MISSING.items() if k not in out}
    return out, report


def model_config_from_reference(ref: dict[str, Any]) -> ModelConfig:
    """``ModelConfig`` for a reference Pi3 setup (the pi3 fixture's ``config.json`` schema).

    Encoder from ``encoder``; aggregator depth = decoder blocks / 2 with the decoder's width, heads, MLP
    ratio, LayerScale init and both LayerNorm epsilons, time before view; 4 registers + the camera token
    hold Pi3's 5 special tokens. No heads: Pi3 provides none of page4d's.
    """
    enc, dec = ref["encoder"], ref["decoder"]
    required = {
        f"num_register_tokens = {NUM_SPECIAL}": ref["num_register_tokens"] == NUM_SPECIAL,
        f"patch_start_idx = {NUM_SPECIAL}": ref["patch_start_idx"] == NUM_SPECIAL,
        "pos_type = rope<rope_freq>": ref["pos_type"] == f"rope{ref['rope_freq']:g}",
        "encoder.patch_size = patch_size": enc["patch_size"] == ref["patch_size"],
        "encoder.img_size a multiple of patch_size": enc["img_size"] % enc["patch_size"] == 0,
        "encoder.ffn_layer = mlp": enc["ffn_layer"] == "mlp",
        "antialiased position-embedding resize without offset": (
            enc["interpolate_antialias"] is True and enc["interpolate_offset"] == 0.0
        ),
        "decoder.qk_norm": dec["qk_norm"] is True,
        "an even decoder.depth": dec["depth"] % 2 == 0,
    }
    failed = [name for name, ok in required.items() if not ok]
    if failed:
        raise ValueError(f"unsupported Pi3 setup: page4d needs {', '.join(failed)}")
    encoder = EncoderConfig(
        kind="dinov2", embed_dim=enc["embed_dim"], depth=enc["depth"], num_heads=enc["num_heads"],
        mlp_ratio=enc["mlp_ratio"], num_register_tokens=enc["num_register_tokens"],
        pos_embed_grid=enc["img_size"] // enc["patch_size"], init_values=enc["layerscale_init"],
        layernorm_eps=enc["norm_eps"], qkv_bias=enc["qkv_bias"], proj_bias=enc["proj_bias"], ffn_bias=enc["ffn_bias"],
    )
    aggregator = AggregatorConfig(
        embed_dim=dec["embed_dim"], depth=dec["depth"] // 2, num_heads=dec["num_heads"], mlp_ratio=dec["mlp_ratio"],
        num_register_tokens=NUM_SPECIAL - 1, qkv_bias=dec["qkv_bias"], proj_bias=dec["proj_bias"],
        ffn_bias=dec["ffn_bias"], qk_norm=True, rope_freq=ref["rope_freq"], init_values=dec["layerscale_init"],
        layernorm_eps=dec["norm_eps"], qk_norm_eps=dec["qk_norm_eps"], aa_order=("time", "view"), aa_block_size=1,
    )
    return ModelConfig(
        patch_size=ref["patch_size"], encoder=encoder, aggregator=aggregator,
        camera_head=None, depth_head=None, point_head=None, track_head=None,
    )
