"""PAGE-4D: variant detection, full-size keys, the rank-1 mask bias, strength 0 == plain VGGT, schedules."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import FIXTURES, fused_and_dense, load_fixture, needs_shared, perturbed
from safetensors.torch import save_file

from page4d.aggregator.mask_bias import mask_alpha
from page4d.checkpoints import page4d_reference, vggt
from page4d.checkpoints.loading import load_strict
from page4d.checkpoints.pretrained import load_checkpoint_file
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.nn import AttentionExtras, RowKeyBias
from page4d.nn.attention import _augmented_attention, dense_attention
from page4d.presets import preset

VARIANTS = {"page4d_tiny": "fin10", "page4d_release_tiny": "release"}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def fixture(request) -> dict:
    return load_fixture(request.param) | {"name": request.param}


def loaded(fx: dict, **mask_changes) -> Page4D:
    cfg = page4d_reference.model_config_from_reference(fx["config"])
    cfg.aggregator.dynamic_mask = dataclasses.replace(cfg.aggregator.dynamic_mask, **mask_changes)
    model = Page4D(cfg).eval()
    load_strict(model, *page4d_reference.convert(fx["model"]))
    return model


@needs_shared
@pytest.mark.parametrize("variant", ["fin10", "release"])
def test_full_size_presets_have_exactly_the_reference_keys(variant):
    listing = json.loads((FIXTURES / "page4d_keys_fullsize.json").read_text())[f"page4d_{variant}"]
    with torch.device("meta"):
        model = Page4D(preset(f"page4d-{variant}"))
        reference = {k: torch.empty(shape) for k, shape in listing.items()}
    converted, report = page4d_reference.convert(reference)
    assert report.converter == f"page4d-{variant}"
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: list(v.shape) for k, v in converted.items()}
    assert len(ours) == {"fin10": 1805, "release": 1803}[variant]


@needs_shared
def test_variant_is_detected_from_keys_and_shapes(fixture):
    assert page4d_reference.detect_variant(fixture["model"]) == VARIANTS[fixture["name"]]
    with pytest.raises(ValueError, match="not a PAGE-4D checkpoint"):
        page4d_reference.detect_variant(load_fixture("vggt_conv_tiny")["model"])
    broken = dict(fixture["model"])
    broken["aggregator.spatial_mask_head.head0.2.weight"] = torch.zeros(5, 3, 2, 2)
    with pytest.raises(ValueError, match=r"unrecognised PAGE-4D mask head .*head0\.2\.weight \[5, 3, 2, 2\]"):
        page4d_reference.convert(broken)


@needs_shared
def test_wrong_variant_config_names_the_keys():
    fin10 = load_fixture("page4d_tiny")
    release_cfg = page4d_reference.model_config_from_reference(load_fixture("page4d_release_tiny")["config"])
    with pytest.raises(ValueError, match=r"unexpected keys: aggregator\.spatial_mask_head\.alpha_logit"):
        load_strict(Page4D(release_cfg), *page4d_reference.convert(fin10["model"]))


@needs_shared
def test_page4d_file_loads_with_its_config_and_rejects_the_full_size_preset(tmp_path):
    fx = load_fixture("page4d_release_tiny")
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {f"module.{k}": v for k, v in fx["model"].items()}}, path)
    model, report = load_checkpoint_file(path, page4d_reference.model_config_from_reference(fx["config"]))
    assert report.converter == "page4d-release-import" and len(report.mapped) == len(fx["model"])
    save_file(fx["model"], str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match=r"mis-shaped keys: aggregator\.camera_token"):
        load_checkpoint_file(tmp_path / "c.safetensors")


@needs_shared
@pytest.mark.parametrize("changes", [{"scale": 0.0}, {"schedule": "cosine_hold", "hold_start": 0.0, "hold_end": 0.0}])
def test_zero_strength_is_plain_vggt_bit_for_bit(fixture, changes):
    """With strength 0 the mask path changes nothing: identical to a VGGT model on the same weights."""
    model = loaded(fixture, **changes)
    plain_cfg = dataclasses.replace(model.config)
    plain_cfg.aggregator = dataclasses.replace(plain_cfg.aggregator, dynamic_mask=None)
    plain = Page4D(plain_cfg).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "spatial_mask_head" not in k})
    images = fixture["inputs"]["images"]
    with torch.no_grad():
        a, b = model(images), plain(images)
    for name in ("pose_enc", "depth", "world_points", "world_points_conf"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with torch.no_grad():
        masked = loaded(fixture)(images)
    assert not torch.allclose(masked.pose_enc, a.pose_enc, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-page4d-fin10", "tiny-page4d-release"])
def test_multi_view_bias_fused_equals_dense(name):
    model = perturbed(preset(name))
    fused, dense = fused_and_dense(model, torch.rand(1, 2, 3, 3, 28, 42))
    assert fused.dynamic_mask.shape == (1, 2, 3, 28, 42)
    assert ((fused.dynamic_mask >= 0) & (fused.dynamic_mask <= 1)).all()
    for field in ("pose_enc", "depth", "world_points", "dynamic_mask"):
        assert torch.allclose(getattr(fused, field), getattr(dense, field), atol=1e-5, rtol=1e-5), field


@pytest.mark.parametrize("head_dim", [16, 64, 12])
def test_rank_one_bias_fused_equals_dense_and_moves_mass_on_rows_it_weights(head_dim):
    gen = torch.Generator().manual_seed(head_dim)
    n, heads, length = 2, 3, 30
    q, k = (torch.randn(n, heads, length, head_dim, generator=gen, dtype=torch.double) for _ in range(2))
    suppressed = torch.zeros(length, dtype=torch.bool)
    suppressed[10:20] = True
    # Values = indicator of the suppressed keys, so the output is the attention mass they receive.
    v = suppressed.double()[None, None, :, None].expand(n, heads, length, head_dim).contiguous()
    rows = torch.zeros(n, length, dtype=torch.double)
    rows[:, :5] = 4.0
    bias = RowKeyBias(rows=rows, keys=torch.where(suppressed, -1.0, 0.0).double().expand(n, length))
    plain = dense_attention(q, k, v)[..., 0]
    biased = dense_attention(q, k, v, AttentionExtras(bias=bias))[..., 0]
    assert (biased[:, :, :5] < plain[:, :, :5]).all()
    assert torch.equal(biased[:, :, 5:], plain[:, :, 5:])
    assert torch.allclose(_augmented_attention(q, k, v, bias)[..., 0], biased, atol=1e-12)


@needs_shared
def test_every_parameter_including_the_mask_head_gets_a_gradient(fixture):
    model = loaded(fixture).train()
    pred = model(fixture["inputs"]["images"])
    torch.manual_seed(0)
    loss = sum((x * torch.randn_like(x)).sum() for x in (*pred.pose_enc_list, pred.depth, pred.world_points))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == ["aggregator.patch_embed.mask_token"]


def test_mask_strength_schedule():
    assert mask_alpha(0.0, 0.0, 0.0) == 0.0
    assert mask_alpha(0.0, 1.0, 2.0) == 1.0
    assert mask_alpha(1.5, 1.0, 2.0) == pytest.approx(0.5)
    assert mask_alpha(2.0, 1.0, 2.0) == 0.0


@needs_shared
def test_mask_step_is_an_input_not_a_counter(fixture):
    model = loaded(fixture, schedule="cosine_hold", scale=64.0, hold_start=10.0, hold_end=20.0).train()
    images = fixture["inputs"]["images"]
    with torch.no_grad():
        first, again = model(images, ForwardInputs(mask_step=0.0)), model(images, ForwardInputs(mask_step=0.0))
        off = model(images, ForwardInputs(mask_step=25.0))
    assert torch.equal(first.pose_enc, again.pose_enc)
    assert not torch.allclose(first.pose_enc, off.pose_enc, atol=1e-4)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"after_block": 3, "biased_view_blocks": (2, 3)}, r"computed after time block 3, but view block 2"),
        ({"after_block": 5}, r"after_block 5 is outside 0\.\.3"),
        ({"biased_view_blocks": (1, 4)}, r"biased_view_blocks \(1, 4\) outside 0\.\.3"),
        ({"hold_start": 3.0, "hold_end": 1.0}, "hold_end >= hold_start"),
        ({"scale": -1.0}, "scale >= 0"),
    ],
)
def test_bad_mask_configs_raise(changes, message):
    cfg = preset("tiny-page4d-release")
    with pytest.raises(ValueError, match=message):
        cfg.aggregator.dynamic_mask = dataclasses.replace(cfg.aggregator.dynamic_mask, **changes)
        cfg.validate()


def test_reversed_order_moves_the_view_block_before_the_mask():
    cfg = preset("tiny-page4d-release")
    with pytest.raises(ValueError, match="computed after time block 1, but view block 1"):
        cfg.aggregator = dataclasses.replace(
            cfg.aggregator, aa_order=("view", "time"),
            dynamic_mask=dataclasses.replace(cfg.aggregator.dynamic_mask, biased_view_blocks=(1, 2)),
        )
        cfg.validate()


@needs_shared
def test_vggt_converter_refuses_page4d_and_page4d_refuses_vggt(fixture):
    with pytest.raises(ValueError, match="PAGE-4D checkpoint"):
        vggt.convert(fixture["model"])
    with pytest.raises(ValueError, match="not a PAGE-4D checkpoint"):
        page4d_reference.convert(load_fixture("vggt_conv_tiny")["model"])
