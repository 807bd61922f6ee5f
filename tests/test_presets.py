"""The design documents' multi-view preset: full-size keys = PAGE-4D's minus its mask head plus an explicit list of new
keys; at initialisation it is the plain model bit-for-bit; it runs with every optional input."""

from __future__ import annotations

import json

import torch
from conftest import FIXTURES, needs_shared

from page4d.checkpoints import page4d_reference
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.presets import preset

BLOCK_KEYS = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.q_norm.weight", "attn.q_norm.bias",
    "attn.k_norm.weight", "attn.k_norm.bias", "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight",
    "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma",
]
NEW_KEYS = {
    **{f"aggregator.dynamic_mask_head.convs.{i}.{p}": None for i in (0, 2, 4) for p in ("weight", "bias")},
    "aggregator.dynamic_mask_head.alpha": [],
    "aggregator.dynamic_mask_head.beta": [],
    "aggregator.dynamic_mask_head.bias": [],
    "aggregator.mask_bias.lambda_pose": [],
    "aggregator.mask_bias.lambda_geo": [],
    "aggregator.mask_bias.lambda_pose_t": [],
    "aggregator.mask_bias.lambda_geo_t": [],
    "aggregator.temporal_rope.scale": [24, 16],
    **{f"aggregator.sparse_blocks.0.block.{k}": None for k in BLOCK_KEYS},
}


@needs_shared
def test_page4d_mv_keys_are_page4d_minus_its_mask_head_plus_the_listed_new_keys():
    listing = json.loads((FIXTURES / "page4d_keys_fullsize.json").read_text())["page4d_fin10"]
    with torch.device("meta"):
        model = Page4D(preset("page4d-mv"))
        reference, _ = page4d_reference.convert({k: torch.empty(s) for k, s in listing.items()})
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: list(v.shape) for k, v in reference.items()}
    assert set(theirs) - set(ours) == {k for k in theirs if k.startswith("aggregator.spatial_mask_head.")}
    assert set(ours) - set(theirs) == set(NEW_KEYS)
    assert all(ours[k] == shape for k, shape in NEW_KEYS.items() if shape is not None)
    assert all(ours[k] == theirs[k] for k in set(ours) & set(theirs))
    assert ours["aggregator.sparse_blocks.0.block.attn.qkv.weight"] == [3072, 1024]


def test_tiny_mv_at_init_is_the_plain_tiny_model_bit_for_bit():
    torch.manual_seed(0)
    mv = Page4D(preset("tiny-mv")).eval()
    plain = Page4D(preset("tiny")).eval()
    plain.load_state_dict({k: v for k, v in mv.state_dict().items() if k in plain.state_dict()})
    images = torch.rand(1, 3, 2, 3, 28, 42, generator=torch.Generator().manual_seed(6))
    external = (torch.rand(1, 3, 2, 28, 42) > 0.7).float()
    with torch.no_grad():
        a, b = mv(images, ForwardInputs(external_mask=external, keypoints=external)), plain(images)
    for name in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.dynamic_mask.shape == (1, 3, 2, 28, 42)


def test_infer_passes_every_optional_input():
    torch.manual_seed(0)
    model = Page4D(preset("tiny-mv"))
    images = torch.rand(1, 2, 2, 3, 28, 42)
    external = (torch.rand(1, 2, 2, 28, 42) > 0.5).float()
    pred = model.infer(images, ForwardInputs(external_mask=external, keypoints=external))
    assert pred.depth.grad_fn is None and not pred.depth.requires_grad
    with torch.no_grad():
        direct = model.eval()(images, ForwardInputs(external_mask=external, keypoints=external))
    assert torch.equal(pred.dynamic_mask, direct.dynamic_mask) and torch.equal(pred.depth, direct.depth)
