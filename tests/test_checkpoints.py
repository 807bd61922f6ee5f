"""VGGT checkpoint conversion, strict loading, file formats, the full-size key list, save / load, the Hub."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import FIXTURES, load_fixture, needs_shared
from safetensors.torch import save_file

from page4d.checkpoints import hub, vggt
from page4d.checkpoints.io import read_state_dict
from page4d.checkpoints.loading import load_strict
from page4d.checkpoints.pretrained import load_checkpoint_file, load_pretrained
from page4d.model import Page4D
from page4d.presets import preset


@pytest.fixture(scope="module")
def conv_fixture() -> dict:
    return load_fixture("vggt_conv_tiny")


def fresh_model(fx: dict) -> Page4D:
    return Page4D(vggt.model_config_from_reference(fx["config"])).eval()


@needs_shared
def test_converter_is_pure_and_renames_only_the_block_banks(conv_fixture):
    source = dict(conv_fixture["model"])
    converted, report = vggt.convert(source)
    assert source == conv_fixture["model"]
    assert set(report.mapped.values()) == set(source) and len(converted) == len(source)
    renamed = report.renamed
    assert all(s.startswith(("aggregator.frame_blocks.", "aggregator.global_blocks.")) for s in renamed.values())
    assert len(renamed) == sum(k.startswith(("aggregator.frame_blocks.", "aggregator.global_blocks.")) for k in source)
    assert all(converted[t] is source[s] for t, s in report.mapped.items())
    assert not report.unused and not report.initialised


@needs_shared
def test_vggt_1b_preset_has_exactly_the_reference_keys_and_shapes():
    listing = json.loads((FIXTURES / "vggt_keys_fullsize.json").read_text())
    with torch.device("meta"):
        model = Page4D(preset("vggt-1b"))
        reference = {k: torch.empty(shape) for k, shape in listing["keys"].items()}
    converted, report = vggt.convert(reference)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: list(v.shape) for k, v in converted.items()}
    assert sorted(set(ours) ^ set(theirs)) == []
    assert ours == theirs
    assert len(ours) == listing["num_keys"] == 1797
    assert sum(p.numel() for p in model.parameters()) == listing["num_parameters"]
    assert not list(model.buffers(recurse=True)) or all(
        k not in model.state_dict() for k, _ in model.named_buffers()
    )


@needs_shared
@pytest.mark.parametrize("wrapper", ["raw", "model", "module"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_file_formats_and_wrappers(conv_fixture, tmp_path, wrapper, suffix):
    state = conv_fixture["model"]
    if wrapper == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".pt":
        torch.save({"model": state} if wrapper == "model" else state, path)
    else:
        save_file(state, str(path))
    loaded = read_state_dict(path)
    assert set(loaded) == set(conv_fixture["model"])
    model, report = load_checkpoint_file(path, vggt.model_config_from_reference(conv_fixture["config"]))
    assert len(report.mapped) == len(conv_fixture["model"])
    ref_model = fresh_model(conv_fixture)
    load_strict(ref_model, *vggt.convert(conv_fixture["model"]))
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


@needs_shared
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_load_into_fp32(conv_fixture, tmp_path, dtype):
    path = tmp_path / "half.safetensors"
    save_file({k: v.to(dtype) for k, v in conv_fixture["model"].items()}, str(path))
    model, _ = load_checkpoint_file(path, vggt.model_config_from_reference(conv_fixture["config"]))
    weight = model.state_dict()["aggregator.time_blocks.0.attn.qkv.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, conv_fixture["model"]["aggregator.frame_blocks.0.attn.qkv.weight"].to(dtype).float())


@needs_shared
def test_missing_unexpected_and_misshaped_keys_are_named(conv_fixture):
    model = fresh_model(conv_fixture)
    state, report = vggt.convert(conv_fixture["model"])
    missing = dict(state)
    del missing["camera_head.embed_pose.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys: camera_head\.embed_pose\.bias"):
        load_strict(model, missing, report)
    extra = dict(state, **{"depth_head.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected keys: depth_head\.extra\.weight"):
        load_strict(model, extra, report)
    wrong = dict(state, **{"aggregator.camera_token": torch.zeros(1, 2, 1, 32)})
    shapes = r"aggregator\.camera_token \(checkpoint \[1, 2, 1, 32\] vs model \[1, 2, 1, 64\]\)"
    with pytest.raises(ValueError, match=shapes):
        load_strict(model, wrong, report)
    nan = dict(state, **{"aggregator.camera_token": torch.full((1, 2, 1, 64), float("nan"))})
    with pytest.raises(ValueError, match="NaN"):
        load_strict(model, nan, report)


@needs_shared
def test_a_failed_load_leaves_the_model_untouched(conv_fixture):
    model = fresh_model(conv_fixture)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, report = vggt.convert(conv_fixture["model"])
    del state["point_head.norm.weight"]
    with pytest.raises(ValueError):
        load_strict(model, state, report)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@needs_shared
@pytest.mark.parametrize(("fixture", "family"), [("pi3_tiny", "Pi3"), ("page4d_tiny", "PAGE-4D")])
def test_wrong_family_is_rejected(fixture, family):
    state = load_fixture(fixture)["model"]
    with pytest.raises(ValueError, match=f"not a VGGT checkpoint: it is a {family} checkpoint"):
        vggt.convert(state)


@needs_shared
def test_truncated_and_non_checkpoint_files_raise(conv_fixture, tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(conv_fixture["model"], str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(truncated)
    pt = tmp_path / "bad.pt"
    pt.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(pt)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown checkpoint extension"):
        read_state_dict(tmp_path / "weights.txt")
    torch.save({"epoch": 3, "step": 10}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="found no tensors"):
        read_state_dict(tmp_path / "meta.pt")


@needs_shared
def test_save_pretrained_round_trip_is_exact(conv_fixture, tmp_path):
    model = fresh_model(conv_fixture)
    load_strict(model, *vggt.convert(conv_fixture["model"]))
    model.save_pretrained(tmp_path / "native")
    assert (tmp_path / "native" / "model.safetensors").is_file() and (tmp_path / "native" / "config.json").is_file()
    again = Page4D.from_pretrained(tmp_path / "native")
    assert again.config == model.config
    images = conv_fixture["inputs"]["images"]
    with torch.no_grad():
        a, b = model(images), again(images)
    for name in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "extrinsic"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    via_loader, report = load_pretrained(tmp_path / "native")
    assert len(report.mapped) == len(model.state_dict())
    assert all(torch.equal(v, via_loader.state_dict()[k]) for k, v in model.state_dict().items())


def test_offline_hub_download_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(hub.OfflineError) as err:
        Page4D.from_pretrained("facebook/VGGT-1B")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "model.pt" in message and "facebook/VGGT-1B" in message and "HF_HUB_OFFLINE" in message
    assert "https://huggingface.co/facebook/VGGT-1B/resolve/main/model.pt" in message


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(hub.OfflineError, match="cannot reach http://127.0.0.1:9"):
        hub.fetch("facebook/VGGT-1B", "model.pt")
    assert time.monotonic() - start < 10
