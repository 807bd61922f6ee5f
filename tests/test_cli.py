"""``page4d reconstruct`` end to end on the bundled example, and its bad-input behaviour."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from page4d.cli.main import main
from page4d.data.layout import load_clip

EXAMPLE = REPO / "examples" / "tabletop4v_mini"


def test_reconstruct_bundled_example(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--size", "224"]) == 0
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "predictions.npz"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["untrained"] is True and meta["model_input_size"] == [168, 224]
    pred = np.load(out / "predictions.npz")
    t, v, h, w = 3, 4, 168, 224
    assert pred["time_ids"].tolist() == [8, 9, 10] and pred["view_ids"].tolist() == [0, 1, 2, 3]
    assert pred["images"].shape == (t, v, h, w, 3) and pred["images"].dtype == np.uint8
    assert pred["extrinsic"].shape == (t, v, 3, 4) and pred["depth"].shape == (t, v, h, w)
    assert pred["world_points"].shape == (t, v, h, w, 3) and pred["world_points_conf"].shape == (t, v, h, w)
    # Random weights may give FoV = relu(x) = 0, i.e. an infinite focal length (as VGGT would); all else is finite.
    assert all(np.isfinite(pred[k]).all() for k in pred.files if not k.startswith("intrinsic"))
    clip = load_clip(EXAMPLE)
    images, transforms = clip.load_images(target_size=224)
    assert np.array_equal(pred["images"], (images.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy())
    # intrinsic_original maps the model-resolution K back to the 640x480 originals.
    restored = transforms[1][2].restore_intrinsics(torch.from_numpy(pred["intrinsic"][1, 2])).numpy()
    np.testing.assert_array_equal(pred["intrinsic_original"][1, 2], restored)


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "page4d.cli.main", "reconstruct", "--help"], capture_output=True, text=True, check=True
    )
    assert "--model" in result.stdout and "--overwrite" in result.stdout


def test_non_empty_output_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--size", "112"]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--size", "112", "--overwrite", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "predictions.npz"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "100"], "multiple of 14"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--model", "pi3-large"], "reconstruct needs the camera, depth and point heads"),
    ],
)
def test_bad_options_fail_cleanly(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_clip_fails_cleanly(tmp_path, capsys):
    clip = tmp_path / "clip"
    shutil.copytree(EXAMPLE / "images", clip / "images")
    (clip / "images" / "time_09" / "view2.png").unlink()
    out = tmp_path / "out"
    assert main(["reconstruct", str(clip), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "time_09" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_offline_hub_model_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--model", "facebook/VGGT-1B"]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "HF_HUB_OFFLINE" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
