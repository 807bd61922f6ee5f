"""``page4d reconstruct`` end to end on the bundled example, and its bad-input behaviour."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLE
from PIL import Image

from page4d.cli.main import main
from page4d.cli.reconstruct import open_lines
from page4d.data.layout import load_clip
from page4d.model import Page4D
from page4d.presets import preset


def test_reconstruct_bundled_example(tmp_path, capsys):
    """The README's first command: the shipped page4d-small at the width it was trained at (168)."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--export", "none"]) == 0
    printed = capsys.readouterr().out
    assert "page4d-small" in printed and "UNTRAINED" not in printed and "peak memory" in printed
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "meta.json", "predictions.npz"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == "page4d-small" and meta["untrained"] is False
    assert [t["output_size"] for t in meta["transforms"]] == [[126, 168]] * 4
    assert [t["original_size"] for t in meta["transforms"]] == [[480, 640]] * 4 and meta["windows"] == [[0, 3]]
    pred = np.load(out / "predictions.npz")
    t, v, h, w = 3, 4, 126, 168
    assert pred["time_ids"].tolist() == [8, 9, 10] and pred["view_ids"].tolist() == [0, 1, 2, 3]
    assert pred["images"].shape == (t, v, h, w, 3) and pred["images"].dtype == np.uint8
    assert pred["extrinsic"].shape == (t, v, 3, 4) and pred["depth"].shape == (t, v, h, w)
    assert pred["world_points"].shape == (t, v, h, w, 3) and pred["world_points_conf"].shape == (t, v, h, w)
    assert pred["dynamic_mask"].shape == (t, v, h, w)  # the default model has a dynamic-mask head
    assert all(np.isfinite(pred[k]).all() for k in pred.files)
    clip = load_clip(EXAMPLE)
    images, transforms = clip.load_images(target_size=168)
    assert np.array_equal(pred["images"], (images.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy())
    # intrinsic_original maps the model-resolution K back to the 640x480 originals.
    restored = transforms[2].restore_intrinsics(torch.from_numpy(pred["intrinsic"][1, 2]).double()).numpy()
    np.testing.assert_allclose(pred["intrinsic_original"][1, 2], restored, rtol=1e-6)


def test_summary_names_the_exports_to_open(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--size", "56", "--export", "png,glb,nerfstudio"]) == 0
    lines = capsys.readouterr().out.splitlines()
    opened = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines[-3:]}
    assert opened == {
        "PNG panels": f"{out}/panels/time_08.png … time_10.png (3 files)",
        "GLB scene": f"{out}/scene_time_09.glb",
        "nerfstudio / gsplat dataset": f"{out}/nerfstudio/transforms.json",
    }
    for path in (out / "panels" / "time_08.png", out / "panels" / "time_10.png", out / "scene_time_09.glb",
                 out / "nerfstudio" / "transforms.json"):
        assert path.is_file()


def test_summary_lines_of_every_export() -> None:
    out = Path("OUT")
    written = [Path(name) for name in (
        "predictions.npz", "points/time_00_static.ply", "panels/time_00.png", "points/time_00_dynamic.ply",
        "points/time_01_static.ply", "panels/time_01.png", "scene_time_01.glb", "nerfstudio/transforms.json",
        "nerfstudio/images/time_00_view0.png", "colmap/time_01/sparse/0/cameras.bin",
        "colmap/time_01/sparse/0/images.bin", "colmap/time_01/images/view0.png", "recording.rrd",
    )]
    assert open_lines(out, written) == [
        "PNG panels: OUT/panels/time_00.png … time_01.png (2 files)",
        "point clouds: OUT/points/time_00_static.ply … time_01_static.ply (3 files)",
        "GLB scene: OUT/scene_time_01.glb",
        "COLMAP project: OUT/colmap/time_01",
        "nerfstudio / gsplat dataset: OUT/nerfstudio/transforms.json",
        "rerun recording (open with: rerun FILE): OUT/recording.rrd",
    ]
    assert open_lines(out, written[:1]) == []


def test_a_preset_runs_with_random_weights_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--model", "tiny-mv", "--export", "none"]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["untrained"] is True and meta["transforms"][0]["output_size"] == [392, 518]  # presets default to 518


def test_cameras_json_reads_back_as_a_clip(tmp_path):
    """cameras.json follows the clip layout: next to the images it is a valid clip with the predicted cameras."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--export", "none", "--quiet"]) == 0
    clip = tmp_path / "clip"
    shutil.copytree(EXAMPLE / "images", clip / "images")
    shutil.copy(out / "cameras.json", clip / "cameras.json")
    pred, loaded = np.load(out / "predictions.npz"), load_clip(clip)
    np.testing.assert_allclose(loaded.intrinsics.numpy(), pred["intrinsic_original"], rtol=1e-5)
    np.testing.assert_allclose(loaded.extrinsics.numpy(), pred["extrinsic"], atol=1e-6)


def test_windows_and_masks_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["reconstruct", str(EXAMPLE), "-o", str(out), "--size", "112", "--export", "none", "--window", "2",
            "--overlap", "1", "--masks", str(EXAMPLE / "masks")]
    assert main(args) == 0
    assert "2 window(s) of 2 steps" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["windows"] == [[0, 2], [1, 3]] and meta["external_masks"] == str(EXAMPLE / "masks")
    masked = np.load(out / "predictions.npz")["dynamic_mask"]
    assert main([*args[:3], str(tmp_path / "plain"), *args[4:-2]]) == 0
    assert not np.array_equal(masked, np.load(tmp_path / "plain" / "predictions.npz")["dynamic_mask"])


def test_video_input_end_to_end(tmp_path, capsys):
    """cam1 starts one frame (0.1 s) after cam0: by timestamp the clip is the 3 frames both cover, --sync index
    pairs frame i with frame i."""
    import av

    rng = np.random.default_rng(0)
    for view in range(2):
        with av.open(str(tmp_path / f"cam{view}.mkv"), "w") as container:
            stream = container.add_stream("ffv1", rate=10)
            stream.width, stream.height, stream.pix_fmt = 56, 42, "bgr0"
            for i in range(4):
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (42, 56, 3), dtype=np.uint8), format="rgb24")
                frame.pts = i + view
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    videos = [str(tmp_path / "cam0.mkv"), str(tmp_path / "cam1.mkv")]
    for sync, time_ids in (("timestamp", [1, 3]), ("index", [0, 2])):
        out = tmp_path / sync
        assert main(["reconstruct", *videos, "-o", str(out), "--size", "56", "--fps", "5", "--export", "none",
                     "--sync", sync]) == 0
        pred = np.load(out / "predictions.npz")
        assert pred["time_ids"].tolist() == time_ids and pred["depth"].shape == (2, 2, 42, 56)
        assert ("the 3 time steps from 0.1 to 0.3 s" in capsys.readouterr().out) == (sync == "timestamp")


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
    args = ["reconstruct", str(EXAMPLE), "-o", str(out), "--size", "112", "--overwrite", "--quiet", "--export", "none"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "meta.json", "predictions.npz"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "100"], "multiple of 14"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--model", "pi3-large"], "a reconstruction needs the camera, depth and point heads"),
        (["--export", "ply,obj"], "unknown export format 'obj'; choose from ply, glb, colmap, png, nerfstudio"),
        (["--export-time", "3"], "--export-time 3 is not a time id of the input (8..10)"),
        (["--window", "1"], "window 1: give 'auto', 'all' or a number of time steps >= 2"),
        (["--overlap", "0", "--window", "2"], "overlap 0 leaves consecutive windows nothing to register on"),
        (["--masks", str(EXAMPLE / "depths"), "--model", "tiny"], "model tiny has no fusion mask head to take them"),
        (["--masks", str(EXAMPLE / "nope")], "folder not found"),
        (["--start", "5"], "--start 5 is past the end"),
        (["--fps", "5"], "--fps applies to video inputs"),
        (["--window", "3", "--overlap", "3"], "overlap 3 must be below window 3"),
        (["--window", "2", "--overlap", "5"], "overlap 5 must be below window 2"),
        (["--export", ","], "--export ',' names no format"),
        (["--export", " , "], "names no format"),
        (["--size", "14"], "size 14 gives 1×1 patches per image, fewer than the 4 this model needs"),
        (["--size", "140000"], "size 140000 is more than this model takes: at most 672"),
        (["--size", "2086", "--model", "tiny-mv"], "at most 2072"),
        (["--device", "tpu"], "tpu"),
    ],
)
def test_bad_options_fail_cleanly(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_short_window_without_overlap_shares_one_step_less(tmp_path):
    """--window 2 alone: the default overlap of 2 becomes 1 (an explicit --overlap 2 is still refused above)."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--window", "2", "--quiet", "--export", "none"]) == 0
    assert json.loads((out / "meta.json").read_text())["windows"] == [[0, 2], [1, 3]]


def test_bad_clip_fails_cleanly(tmp_path, capsys):
    clip = tmp_path / "clip"
    shutil.copytree(EXAMPLE / "images", clip / "images")
    (clip / "images" / "time_09" / "view2.png").unlink()
    out = tmp_path / "out"
    assert main(["reconstruct", str(clip), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "time_09" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("problem", ["resolution", "unreadable", "empty", "extra"])
def test_broken_clips_fail_cleanly(tmp_path, capsys, problem):
    clip = tmp_path / "clip"
    shutil.copytree(EXAMPLE / "images", clip / "images")
    target = clip / "images" / "time_10" / "view1.png"
    if problem == "resolution":
        Image.open(target).resize((320, 240)).save(target)
    elif problem == "unreadable":
        target.write_bytes(target.read_bytes()[:500])
    elif problem == "empty":
        shutil.rmtree(clip / "images")
        (clip / "images").mkdir()
    else:
        shutil.copy(target, clip / "images" / "time_10" / "view7.png")
    out = tmp_path / "out"
    assert main(["reconstruct", str(clip), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    expected = {"resolution": "320x240 but", "unreadable": "cannot read the image", "empty": "no time_XX folders",
                "extra": "extra view7.png"}[problem]
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_nan_checkpoint_fails_cleanly(tmp_path, capsys):
    model = Page4D(preset("tiny"))
    with torch.no_grad():
        model.aggregator.camera_token.fill_(float("nan"))
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--model", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "aggregator.camera_token" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_failing_export_leaves_nothing(tmp_path, monkeypatch):
    import page4d.export

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(page4d.export, "export", broken)
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--size", "112", "--export", "png", "--quiet"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_offline_hub_model_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--model", "facebook/VGGT-1B"]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "HF_HUB_OFFLINE" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_smallest_size_suggested_runs(tmp_path, capsys):
    """--size 14 is refused before the model runs, and the size the message suggests is one the model takes."""
    assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "a"), "--size", "14"]) == 2
    suggested = re.search(r"use size (\d+) or more", capsys.readouterr().err)
    assert suggested and int(suggested[1]) == 28
    args = ["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "b"), "--size", suggested[1], "--export", "none"]
    assert main([*args, "--quiet"]) == 0
    assert np.load(tmp_path / "b" / "predictions.npz")["depth"].shape == (3, 4, 28, 28)


def test_masks_of_the_wrong_size_fail_before_the_model_loads(tmp_path, capsys, monkeypatch):
    masks = tmp_path / "masks"
    for t in (8, 9, 10):
        (masks / f"time_{t:02d}").mkdir(parents=True)
        for v in range(4):
            Image.new("L", (320, 240)).save(masks / f"time_{t:02d}" / f"view{v}.png")
    import page4d.reconstruction.runner as runner

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the masks were checked")

    monkeypatch.setattr(runner, "load_pretrained", never)
    assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "out"), "--masks", str(masks)]) == 2
    err = capsys.readouterr().err
    assert "320x240" in err and "view0.png" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]


def test_a_broken_meta_json_is_named(tmp_path, capsys):
    pred = tmp_path / "pred"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(pred), "--model", "tiny", "--size", "56", "--export", "none",
                 "--quiet"]) == 0
    (pred / "meta.json").write_text('{"model": ')
    assert main(["eval", str(EXAMPLE), str(pred)]) == 2
    err = capsys.readouterr().err
    assert f"{pred / 'meta.json'}: not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert not (pred / "eval").exists()


def test_a_huge_image_is_one_line_of_warning_not_pils(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 640 * 480 - 1)  # the example's images are above it
    assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "out"), "--size", "56", "--export", "none"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and warnings[0].startswith("page4d reconstruct: warning: ")
    assert "640x480 (0.3 Mpx)" in warnings[0] and "downscaled to the model input" in warnings[0]
    assert "DecompressionBombWarning" not in err


@pytest.mark.parametrize("meta", [None, "{}"])
def test_a_missing_or_empty_meta_json_is_named(tmp_path, capsys, meta):
    pred = tmp_path / "pred"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(pred), "--model", "tiny", "--size", "56", "--export", "none",
                 "--quiet"]) == 0
    if meta is None:
        (pred / "meta.json").unlink()
    else:
        (pred / "meta.json").write_text(meta)
    assert main(["eval", str(EXAMPLE), str(pred)]) == 2
    err = capsys.readouterr().err
    assert str(pred / "meta.json") in err and ("not found" if meta is None else "'transforms'") in err
    assert len(err.strip().splitlines()) == 1


def test_cameras_json_is_strict_json_even_for_untrained_cameras(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--model", "tiny", "--size", "56", "--export", "none",
                 "--quiet"]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    cameras = json.loads((out / "cameras.json").read_text(), parse_constant=refuse)
    pred = np.load(out / "predictions.npz")
    assert not np.isfinite(pred["intrinsic_original"]).all()  # the random camera head predicts infinite focals
    written = np.asarray(cameras["K"], dtype=np.float64)  # null reads back as NaN
    finite = np.isfinite(pred["intrinsic_original"])
    assert np.array_equal(np.isfinite(written), finite)
    np.testing.assert_allclose(written[finite], pred["intrinsic_original"][finite], rtol=1e-5)
    clip = tmp_path / "clip"
    shutil.copytree(EXAMPLE / "images", clip / "images")
    shutil.copy(out / "cameras.json", clip / "cameras.json")
    with pytest.raises(ValueError, match="has NaN or Inf in K or E_w2c"):
        load_clip(clip)
