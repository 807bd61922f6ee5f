"""Bad weights, folders, names and images are refused with one-line errors naming what is wrong (all offline)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import load_fixture, needs_shared
from safetensors.torch import load_file as read_safetensors
from safetensors.torch import save_file

from page4d.checkpoints import vggt
from page4d.checkpoints.pretrained import load_checkpoint_file, load_pretrained
from page4d.model import Page4D
from page4d.presets import preset

WEIGHT = "aggregator.camera_token"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach the Hub: a network attempt fails fast instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny() -> Page4D:
    torch.manual_seed(0)
    return Page4D(preset("tiny")).eval()


@pytest.fixture
def folder(tiny: Page4D, tmp_path: Path) -> Path:
    """A native model folder as ``save_pretrained`` writes it."""
    tiny.save_pretrained(tmp_path / "native")
    return tmp_path / "native"


def recast(path: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with every tensor cast to ``dtype``."""
    save_file({k: v.to(dtype) for k, v in read_safetensors(str(path)).items()}, str(path))


@pytest.mark.parametrize("how", ["folder", "file", "from_pretrained"])
def test_integer_weights_in_a_native_checkpoint_are_refused(folder, how):
    recast(folder / "model.safetensors", torch.int32)
    load = {
        "folder": lambda: load_pretrained(folder), "file": lambda: load_checkpoint_file(folder / "model.safetensors"),
        "from_pretrained": lambda: Page4D.from_pretrained(folder),
    }[how]
    integral = rf"model\.safetensors (\(.*\) )?has \d+ non-floating-point .*{WEIGHT} \(torch\.int32\)"
    with pytest.raises(ValueError, match=integral):
        load()


@needs_shared
def test_integer_weights_in_a_foreign_safetensors_file_are_refused(tmp_path):
    fx = load_fixture("vggt_conv_tiny")
    path = tmp_path / "vggt.safetensors"
    save_file({k: v.to(torch.int32) for k, v in fx["model"].items()}, str(path))
    integral = rf"vggt\.safetensors (\(.*\) )?has .*non-floating-point.*{WEIGHT} \(torch\.int32\)"
    with pytest.raises(ValueError, match=integral):
        load_checkpoint_file(path, vggt.model_config_from_reference(fx["config"]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_native_folders_still_load(tiny, folder, dtype):
    recast(folder / "model.safetensors", dtype)
    for model in (Page4D.from_pretrained(folder), load_pretrained(folder)[0]):
        assert torch.equal(model.state_dict()[WEIGHT], tiny.state_dict()[WEIGHT].to(dtype).float())


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("load", [Page4D.from_pretrained, load_pretrained], ids=["from_pretrained", "load_pretrained"])
def test_damaged_weights_in_a_folder_name_the_file(folder, damage, load):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x93not a checkpoint" * 9}
    weights.write_bytes(damaged[damage])
    with pytest.raises(ValueError, match=rf"{re.escape(str(weights))}: cannot read checkpoint"):
        load(folder)


@pytest.mark.parametrize("load", [Page4D.from_pretrained, load_pretrained], ids=["from_pretrained", "load_pretrained"])
def test_bad_or_missing_config_json_names_the_file(folder, load):
    config = folder / "config.json"
    settings = json.loads(config.read_text())
    config.write_text('{"patch_size": 14,')
    with pytest.raises(ValueError, match=rf"{re.escape(str(config))}: not valid JSON"):
        load(folder)
    config.write_text(json.dumps({**settings, "colour": "blue"}))
    unknown = r": not a valid page4d model config \(unknown ModelConfig fields: \['colour'\]\)"
    with pytest.raises(ValueError, match=re.escape(str(config)) + unknown):
        load(folder)
    config.unlink()
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: no config\.json in the folder"):
        load(folder)


@pytest.mark.parametrize("load", [Page4D.from_pretrained, load_pretrained], ids=["from_pretrained", "load_pretrained"])
@pytest.mark.parametrize("missing", ["/not/here", "./model", "~/no-such-page4d-model", r"C:\models\page4d",
                                     "runs/exp1/final", "weights.safetensors", "ckpt.pt", "ckpt.pth", "ckpt.bin",
                                     "ckpt.ckpt", "config.json", Path("model"), Path("owner/name")])
def test_missing_paths_say_not_found_and_what_is_accepted(load, missing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"not found; pass a bundled model \(page4d-small\), a page4d model folder"):
        load(missing)


@pytest.mark.parametrize("load", [Page4D.from_pretrained, load_pretrained], ids=["from_pretrained", "load_pretrained"])
def test_non_path_arguments_are_a_type_error(load):
    for wrong in (None, 123):
        with pytest.raises(TypeError, match=f"as a str or Path, got {type(wrong).__name__}"):
            load(wrong)


def test_hub_options_for_a_local_folder_are_refused_not_ignored(folder):
    with pytest.raises(TypeError, match=r"Hub options \(revision\) apply to Hub repos only"):
        Page4D.from_pretrained(folder, revision="v2")
    with pytest.raises(TypeError, match=r"unknown option\(s\) map_location; the Hub options are cache_dir, "):
        Page4D.from_pretrained(folder, map_location="cuda")


@pytest.mark.parametrize("load", [Page4D.from_pretrained, load_pretrained], ids=["from_pretrained", "load_pretrained"])
def test_unknown_names_list_the_choices_and_suggest_the_closest(load):
    with pytest.raises(ValueError, match=r"tiny-mvv: not a bundled model \(page4d-small\), a preset \(.*tiny-mv.*\)"
                       r".*; did you mean tiny-mv\?$"):
        load("tiny-mvv")
    with pytest.raises(ValueError, match=r"did you mean page4d-small\?"):
        load("page4d-smal")
    with pytest.raises(ValueError, match=r"tiny is a model preset with random, untrained weights.*Page4D\(preset"):
        load("tiny")


def test_save_pretrained_files_get_the_umask_mode(tiny, tmp_path):
    previous = os.umask(0o027)
    try:
        tiny.save_pretrained(tmp_path / "native")
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "native" / name).stat().st_mode & 0o777 == 0o640, name


def test_uint8_images_match_float_images_divided_by_255(tiny):
    pixels = torch.randint(0, 256, (1, 2, 2, 3, 28, 42), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    as_uint8, as_float = tiny.infer(pixels), tiny.infer(pixels.float() / 255)
    for name in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert torch.equal(getattr(as_uint8, name), getattr(as_float, name)), name


def test_float64_images_run_as_float32(tiny):
    images = torch.rand(1, 2, 2, 3, 28, 42, generator=torch.Generator().manual_seed(2))
    as_double, as_float = tiny.infer(images.double()), tiny.infer(images)
    assert torch.equal(as_double.depth, as_float.depth) and as_double.depth.dtype == torch.float32


@pytest.mark.parametrize(("bad", "message"), [
    (float("nan"), r"images contain 3 NaN or Inf values \(of 9408\)"),
    (float("inf"), r"images contain 3 NaN or Inf values"),
    (-float("inf"), r"images contain 3 NaN or Inf values"),
])
def test_non_finite_images_are_refused_with_the_count(tiny, bad, message):
    images = torch.rand(1, 2, 2, 3, 28, 28)
    images.view(-1)[:3] = bad
    with pytest.raises(ValueError, match=message):
        tiny.infer(images)


def test_out_of_range_images_are_refused_with_the_fix(tiny):
    images = torch.rand(1, 1, 2, 3, 28, 28)
    images.view(-1)[:2] = torch.tensor([0.0, 1.0])  # the exact extremes, so the reported range is known
    with pytest.raises(ValueError, match=r"found values in \[0, 255\]; 0-255 images: divide by 255 or pass uint8$"):
        tiny.infer(images * 255)
    with pytest.raises(ValueError, match=r"found values in \[-1, 1\]; \[-1, 1\] images: pass \(x \+ 1\) / 2$"):
        tiny.infer(images * 2 - 1)
    tiny.infer(images)  # [0, 1] itself is fine


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_other_image_dtypes_are_refused(tiny, dtype):
    with pytest.raises(TypeError, match=rf"dtype {dtype}; pass float images in \[0, 1\] or uint8 images in 0\.\.255"):
        tiny.infer(torch.ones(1, 1, 2, 3, 28, 28, dtype=dtype))
