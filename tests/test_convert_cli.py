"""``page4d convert``: single-source conversion, the pi3-page4d recipe, the report files, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, load_fixture, needs_shared
from test_composition import synthetic_pi3, tiny_mv_target

from page4d.checkpoints import vggt
from page4d.checkpoints.loading import load_strict
from page4d.cli.main import main
from page4d.model import Page4D

CONV = FIXTURES / "vggt_conv_tiny"


def target_file(tmp_path, config: dict) -> str:
    path = tmp_path / "target.json"
    path.write_text(json.dumps(config))
    return str(path)


@needs_shared
def test_convert_a_vggt_checkpoint_and_load_it_strictly(tmp_path, capsys):
    fx = load_fixture("vggt_conv_tiny")
    cfg = vggt.model_config_from_reference(fx["config"])
    out = tmp_path / "native"
    target = target_file(tmp_path, cfg.to_dict())
    args = ["convert", str(CONV / "model.safetensors"), "--target", target, "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "vggt-import: 313 target keys" in printed and "loaded from source" in printed
    assert {"model.safetensors", "config.json", "load_report.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "load_report.json").read_text())
    assert len(report["mapped"]) == 313 and not report["initialised"] and not report["unused"]
    qkv = report["mapped"]["aggregator.time_blocks.0.attn.qkv.weight"]
    assert qkv == "source:aggregator.frame_blocks.0.attn.qkv.weight"
    converted = Page4D.from_pretrained(out)
    reference = Page4D(cfg).eval()
    load_strict(reference, *vggt.convert(fx["model"]))
    with torch.no_grad():
        a, b = converted(fx["inputs"]["images"]), reference(fx["inputs"]["images"])
    assert torch.equal(a.pose_enc, b.pose_enc) and torch.equal(a.depth, b.depth)


@needs_shared
def test_convert_with_the_pi3_page4d_recipe(tmp_path, capsys):
    pi3 = tmp_path / "pi3.safetensors"
    synthetic_pi3(pi3)
    recipe = {
        "name": "pi3-page4d-tiny", "target": tiny_mv_target(), "sources": {"pi3": "pi3", "page4d": "page4d-reference"},
        "stages": [
            {"source": "pi3", "keys": ["aggregator.time_blocks.{0..17}.*", "aggregator.view_blocks.{0..17}.*",
                                      "aggregator.register_token"]},
            {"source": "page4d", "keys": ["aggregator.patch_embed.*", "aggregator.time_blocks.{18..23}.*",
                                         "aggregator.view_blocks.{18..23}.*", "aggregator.camera_token",
                                         "camera_head.*", "depth_head.*", "point_head.*"]},
        ],
        "initialise": {"aggregator.dynamic_mask_head.*": "new", "aggregator.mask_bias.*": "λ = 0",
                       "aggregator.temporal_rope.scale": "identity", "aggregator.sparse_blocks.*": "LayerScale 0"},
    }
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is valid YAML
    out = tmp_path / "mv"
    args = ["convert", str(pi3), str(FIXTURES / "page4d_tiny" / "model.safetensors"), "--recipe",
            str(tmp_path / "recipe.yaml"), "-o", str(out), "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "load_report.json").read_text())
    assert report["mapped"]["aggregator.view_blocks.17.ls2.gamma"] == "pi3:decoder.35.ls2.gamma"
    assert report["mapped"]["aggregator.view_blocks.18.ls2.gamma"] == "page4d:aggregator.global_blocks.18.ls2.gamma"
    assert report["initialised"]["aggregator.mask_bias.lambda_pose"] == "λ = 0"
    model = Page4D.from_pretrained(out)
    assert model.config.aggregator.dynamic_mask.head == "fusion"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--recipe", "pi3-page4d"], "recipe pi3-page4d takes 2 sources", marks=needs_shared),
        pytest.param(["--recipe", "no-such-recipe"], "not a recipe name", marks=needs_shared),
        (["--target", "no-such-preset"], "not a preset"),  # refused before the source file is read
    ],
)
def test_bad_convert_arguments_fail_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["convert", str(CONV / "model.safetensors"), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


@needs_shared
def test_a_mismatched_target_names_the_keys_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(CONV / "model.safetensors"), "--target", "tiny-conv", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "patterns match no target key: camera_head.trunk.1." in err and not out.exists()


def test_offline_hub_source_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["convert", "facebook/VGGT-1B", "-o", str(tmp_path / "out")]) == 2
    assert "model.pt" in capsys.readouterr().err


@needs_shared
def test_convert_a_wrapped_half_precision_pt_file(tmp_path):
    fx = load_fixture("vggt_conv_tiny")
    cfg = vggt.model_config_from_reference(fx["config"])
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v.half() for k, v in fx["model"].items()}}, path)
    out = tmp_path / "native"
    target = target_file(tmp_path, cfg.to_dict())
    assert main(["convert", str(path), "--target", target, "-o", str(out), "--quiet"]) == 0
    weight = Page4D.from_pretrained(out).state_dict()["aggregator.view_blocks.1.attn.qkv.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, fx["model"]["aggregator.global_blocks.1.attn.qkv.weight"].half().float())


@needs_shared
def test_a_known_hub_checkpoint_converts_into_its_own_preset(monkeypatch):
    """checkpoint_mask.pt must become the mask-on release (page4d-release-mask), not the detected default."""
    from page4d.checkpoints.composition import single_source_recipe
    from page4d.cli import convert

    fixture = FIXTURES / "page4d_release_tiny" / "model.safetensors"
    monkeypatch.setattr(convert, "fetch", lambda *args: fixture)
    assert convert._resolve("zhouk777/PAGE4D/checkpoint_mask.pt") == (fixture, "page4d-release-mask")
    assert convert._resolve(str(fixture)) == (fixture, None)
    assert single_source_recipe(fixture).target == "page4d-release"  # what detection alone would pick
