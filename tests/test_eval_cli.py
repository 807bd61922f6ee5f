"""``page4d eval``: end-to-end report (metrics.json, the figures, table) and error cases that write nothing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE, example_truth
from PIL import Image

from page4d.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 84  # model grid 56 x 84 keeps the run fast; the protocol is the same at any size
FILES = ["depth_error", "metrics.json", "per_step.png", "trajectories.png"]
VIEW_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
"""matplotlib's tab10, the colours of views 0-3."""
INVALID = (153, 153, 153)
"""The grey (0.6) of pixels without ground truth."""


@pytest.fixture(scope="module")
def saved_truth(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truth")
    example_truth(SIZE).save(folder)
    return folder


@pytest.fixture
def prediction(saved_truth, tmp_path) -> Path:
    """A fresh copy of the ground truth saved as a prediction (the default report goes inside it)."""
    return Path(shutil.copytree(saved_truth, tmp_path / "pred"))


def _rewrite(folder: Path, **changes) -> None:
    """Re-save the reconstruction in ``folder`` with ``changes`` (fields, or ``meta`` entries via ``meta=``)."""
    from page4d.reconstruction import Reconstruction

    recon = Reconstruction.load(folder)
    meta = {**recon.meta, **changes.pop("meta", {})}
    dataclasses.replace(recon, meta=meta, **changes).save(folder)


def test_eval_writes_metrics_plot_and_table(prediction, capsys) -> None:
    assert main(["eval", str(EXAMPLE), str(prediction)]) == 0
    out = prediction / "eval"
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert sorted(p.name for p in (out / "depth_error").iterdir()) == ["time_08.png", "time_09.png", "time_10.png"]
    assert not [p for p in prediction.iterdir() if p.name.startswith(".")]  # no temporary folder left

    report = json.loads((out / "metrics.json").read_text())
    assert report["format"] == "page4d eval v1"
    assert report["prediction"] == {
        "model": "ground truth", "weights": f"ground truth of {EXAMPLE}", "untrained": False, "folder": str(prediction),
    }
    assert report["protocol"]["name"] == "video-depth" and report["protocol"]["max_depth"] is None
    assert report["protocol"]["grid"].startswith("model-input grid")
    assert report["evaluated"] == {
        "time_ids": [8, 9, 10], "view_ids": [0, 1, 2, 3], "model_size": [56, 84], "original_sizes": [[480, 640]] * 4,
    }
    assert report["depth"]["median"]["dynamic"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert report["cameras"]["ate_rmse"] == pytest.approx(0.0, abs=1e-6)
    assert report["points"]["depth"]["chamfer"] == pytest.approx(0.0, abs=1e-6)
    assert report["dynamic_mask"]["iou"] == 1.0
    assert len(report["per_step"]["abs_rel"]) == 3

    png = (out / "per_step.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out / "per_step.png") as img:
        assert img.size == (1200, 320)
        assert len(np.unique(np.asarray(img.convert("L")))) > 10  # drawn axes, lines and text, not a blank canvas
    with Image.open(out / "trajectories.png") as img:
        assert img.size == (750, 600)
        colours = {tuple(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3)}
    assert set(VIEW_COLOURS) <= colours  # a track in each view's colour
    with Image.open(out / "depth_error" / "time_09.png") as img:
        assert img.size == (1040, 686)  # 4 views of 56 x 84: one 2.2-inch column each, 4 rows
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels == INVALID).all(-1).sum() > 100  # pixels without ground-truth depth are grey
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # images, depth maps, colour bars

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "prediction: ground truth"
    depth_rows = [line for line in lines if line.startswith("depth ")]
    assert len(depth_rows) == 5 and len({len(line) for line in depth_rows}) == 1  # aligned columns
    assert depth_rows[1].split()[-3:] == ["0.0000", "0.0000", "0.0000"]
    assert next(line for line in lines if line.startswith("pose AUC")).split()[-3:] == ["1.0000"] * 3
    assert next(line for line in lines if line.startswith("dynamic mask")).split()[-2:] == ["1.0000", "1.0000"]
    assert lines[-4:] == [
        f"report: {out}/metrics.json",
        f"errors per time step: {out}/per_step.png",
        f"camera centres seen from above: {out}/trajectories.png",
        f"per-pixel depth errors: {out}/depth_error/time_08.png … time_10.png (3 files)",
    ]


def test_options_and_untrained_flag(prediction, tmp_path, capsys) -> None:
    _rewrite(prediction, dynamic_mask=None, meta={"model": "tiny-mv", "untrained": True})
    out = tmp_path / "report"
    args = ["eval", str(EXAMPLE), str(prediction), "-o", str(out), "--protocol", "per-frame", "--max-depth", "15"]
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["protocol"]["name"] == "per-frame" and report["protocol"]["max_depth"] == 15.0
    assert report["prediction"]["untrained"] is True and report["prediction"]["model"] == "tiny-mv"
    assert report["dynamic_mask"] is None
    assert len(report["depth"]["median"]["fit"]["scale"]) == 3  # one fit per image: [T][V]
    text = capsys.readouterr().out
    assert "UNTRAINED" in text.splitlines()[0]
    assert "max depth 15.0" in text
    assert next(line for line in text.splitlines() if line.startswith("dynamic mask")).endswith("no mask head")
    assert not (prediction / "eval").exists()


def _assert_fails(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("page4d eval: error: ") and message in err and err.count("\n") == 1


def test_errors_exit_2_and_write_nothing(prediction, tmp_path, capsys, monkeypatch) -> None:
    before = sorted(p.name for p in prediction.iterdir())

    _rewrite(prediction, time_ids=np.array([0, 1, 2]))
    _assert_fails(["eval", str(EXAMPLE), str(prediction)], "have no (time, view) in common", capsys)
    shutil.copytree(EXAMPLE, tmp_path / "no_depths", ignore=shutil.ignore_patterns("depths"))
    _assert_fails(["eval", str(tmp_path / "no_depths"), str(prediction)], "the clip has no depths/", capsys)
    _assert_fails(["eval", str(EXAMPLE), str(tmp_path / "missing")], "no predictions.npz", capsys)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    _assert_fails(["eval", str(EXAMPLE), str(prediction)], 'pip install "page4d[eval]"', capsys)
    monkeypatch.undo()
    assert sorted(p.name for p in prediction.iterdir()) == before

    _rewrite(prediction, time_ids=np.array([8, 9, 10]))
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _assert_fails(["eval", str(EXAMPLE), str(prediction), "-o", str(out)], "pass --overwrite", capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["eval", str(EXAMPLE), str(prediction), "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == FILES


def test_non_finite_predicted_depth_is_named(prediction, capsys) -> None:
    from page4d.reconstruction import Reconstruction

    depth = Reconstruction.load(prediction).depth.copy()
    depth[1, 2, 10:12, 20:25] = np.nan  # time id 9, view 2: 10 pixels, all with ground truth in the example
    depth[2, 0, 0, 0] = np.inf
    _rewrite(prediction, depth=depth)
    _assert_fails(["eval", str(EXAMPLE), str(prediction)], "the predicted depth is NaN or infinite at 11 pixels "
                  "with ground truth, in 2 image(s): time 9 view2, time 10 view0; the model failed there", capsys)
    assert not (prediction / "eval").exists()


def test_a_failing_figure_leaves_nothing(prediction, monkeypatch, capsys) -> None:
    """The depth-error figures are the last thing written: when one fails, the report and the figures before it
    go too."""
    from page4d.cli import evaluate as cli

    def fail_after_one(evaluation, folder):
        folder.mkdir()
        (folder / "time_08.png").write_bytes(b"half")
        raise ValueError("drawing failed")

    monkeypatch.setattr(cli, "plot_depth_errors", fail_after_one)
    _assert_fails(["eval", str(EXAMPLE), str(prediction)], "drawing failed", capsys)
    assert not (prediction / "eval").exists()
    assert not [p for p in prediction.iterdir() if p.name.startswith(".")]


def test_help_documents_protocols(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("video-depth", "per-frame", "--max-depth", "--overwrite", "PREDICTIONS/eval"):
        assert option in text
