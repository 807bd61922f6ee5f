"""``page4d demo``: upload staging, a job end to end against the command line, its errors, the CLI, and the page
driven in headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, EXAMPLE, free_port, needs_chromium
from PIL import Image
from test_sources import write_video

from page4d.cli.main import main
from page4d.demo.app import Demo, launch, viewer_frame
from page4d.demo.uploads import stage


def zip_folder(folder: Path, archive: Path, prefix: str | None = None) -> Path:
    """``archive`` holding ``folder``'s files under ``prefix/`` (default: the folder's name), as zipping a folder
    in a file manager does."""
    prefix = folder.name if prefix is None else prefix
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, str(Path(prefix) / path.relative_to(folder)))
    return archive


@pytest.fixture
def demo(tmp_path):
    demo = Demo(tmp_path / "workspace", device="cpu", viewer_port=free_port())
    yield demo
    demo.stop()


def test_a_zipped_clip_is_found_inside_its_top_folders_or_at_the_root(tmp_path):
    for i, prefix in enumerate(("tabletop4v_mini", "", "captures/2026/tabletop4v_mini")):
        archive = zip_folder(EXAMPLE, tmp_path / f"clip{i}.zip", prefix)
        staged = stage([archive], None, tmp_path / f"job{i}")
        assert len(staged.inputs) == 1 and staged.cameras is None
        assert sorted(p.name for p in (staged.inputs[0] / "images").iterdir()) == \
            sorted(p.name for p in (EXAMPLE / "images").iterdir())


def test_videos_keep_their_upload_order(tmp_path):
    videos = [tmp_path / name for name in ("b.mkv", "a.mkv", "c.mkv")]
    assert stage(videos, None, tmp_path / "job").inputs == videos


@pytest.mark.parametrize(("uploads", "message"), [
    ([], "nothing uploaded; drop one video per camera"),
    (["notes.txt"], "cannot use notes.txt; drop one video per camera"),
    (["clip.zip", "cam0.mp4"], "2 files with a zip among them"),
])
def test_uploads_that_are_not_a_clip_are_refused(tmp_path, uploads, message):
    with pytest.raises(ValueError, match=message):
        stage([tmp_path / name for name in uploads], None, tmp_path / "job")


def test_bad_zips_are_refused_before_anything_is_unpacked(tmp_path):
    (tmp_path / "broken.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="broken.zip is not a readable zip file"):
        stage([tmp_path / "broken.zip"], None, tmp_path / "job")
    with zipfile.ZipFile(tmp_path / "escape.zip", "w") as bundle:
        bundle.writestr("clip/images/time_00/view0.png", b"")
        bundle.writestr("../../outside.txt", b"x")
    with pytest.raises(ValueError, match="would unpack outside the folder"):
        stage([tmp_path / "escape.zip"], None, tmp_path / "job")
    assert not (tmp_path / "job").exists() and not (tmp_path.parent / "outside.txt").exists()
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("clip/images/time_00/view0.png", bytes(100 * 2**20))  # 100 MB of zeros, 0.1 MB zipped
    with pytest.raises(ValueError, match="unpacks to [0-9]+ times its size"):
        stage([tmp_path / "bomb.zip"], None, tmp_path / "job")
    assert not (tmp_path / "job").exists()


def test_calibrations(tmp_path):
    clip = zip_folder(EXAMPLE, tmp_path / "clip.zip")
    assert stage([clip], EXAMPLE / "cameras.json", tmp_path / "a").cameras == EXAMPLE / "cameras.json"
    model = tmp_path / "colmap"
    model.mkdir()
    (model / "cameras.txt").write_text("# a COLMAP model\n")
    staged = stage([clip], zip_folder(model, tmp_path / "colmap.zip", "sparse"), tmp_path / "b")
    assert staged.cameras.name == "sparse" and (staged.cameras / "cameras.txt").is_file()
    with pytest.raises(ValueError, match="cannot read the calibration rig.yaml; give an anipose"):
        stage([clip], tmp_path / "rig.yaml", tmp_path / "c")


@pytest.mark.slow
def test_a_job_writes_what_the_command_line_writes(tmp_path, demo):
    result = demo.reconstruct([str(zip_folder(EXAMPLE, tmp_path / "mini.zip"))], None, "page4d-small", 0)
    assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "cli"), "--export", "png", "--device", "cpu",
                 "--quiet"]) == 0
    ours, cli = np.load(result.folder / "predictions.npz"), np.load(tmp_path / "cli" / "predictions.npz")
    for key in ("extrinsic", "intrinsic", "depth", "depth_conf", "dynamic_mask"):
        np.testing.assert_array_equal(ours[key], cli[key])
    assert [p.name for p in result.panels] == ["time_08.png", "time_09.png", "time_10.png"]
    for panel in result.panels:
        assert Image.open(panel).tobytes() == Image.open(tmp_path / "cli" / "panels" / panel.name).tobytes()
    names = [p.name for p in result.downloads]
    assert names[:3] == ["page4d_result.zip", "scene_time_09.glb", "cameras.json"] and "predictions.npz" in names
    with zipfile.ZipFile(result.downloads[0]) as bundle:
        inside = set(bundle.namelist())
    assert {"predictions.npz", "cameras.json", "nerfstudio/transforms.json", "panels/time_09.png"} <= inside
    assert "done: 12 frames (3×4)" in result.summary and "PNG panels: result/panels/time_08.png" in result.summary
    assert str(demo.workspace) not in result.summary  # the server's paths stay on the server
    viewer = demo._viewer  # the result is on show
    assert viewer is not None and viewer.controls.points.layers[0].dynamic.xyz.shape[1] == 3
    np.testing.assert_array_equal(viewer.controls.time.max, 2)


@pytest.mark.slow
def test_videos_are_the_cameras_in_upload_order(tmp_path, demo):
    frames = {v: [np.asarray(Image.open(EXAMPLE / "images" / f"time_{t:02d}" / f"view{v}.png").convert("RGB"))
                  for t in (8, 9, 10)] for v in range(3)}
    uploads = []
    for v in (2, 0, 1):
        write_video(tmp_path / f"cam{v}.mkv", frames[v])
        uploads.append(str(tmp_path / f"cam{v}.mkv"))
    result = demo.reconstruct(uploads, None, "page4d-small", 2)
    cameras = json.loads((result.folder / "cameras.json").read_text())
    assert cameras["view_names"] == ["cam2", "cam0", "cam1"]
    assert np.load(result.folder / "predictions.npz")["depth"].shape[:2] == (2, 3)  # --frames 2


def test_a_refused_upload_gives_the_command_lines_message(tmp_path, demo, capsys):
    two_cameras = json.loads((EXAMPLE / "cameras.json").read_text())
    two_cameras["view_ids"] = two_cameras["view_ids"][:2]
    for key in ("K", "E_w2c"):
        two_cameras[key] = [per_step[:2] for per_step in two_cameras[key]]
    calibration = tmp_path / "cameras.json"
    calibration.write_text(json.dumps(two_cameras))
    clip = tmp_path / "clip"
    shutil.copytree(EXAMPLE, clip)
    with pytest.raises(ValueError) as refused:
        demo.reconstruct([str(zip_folder(clip, tmp_path / "clip.zip"))], str(calibration), "page4d-small", 0)
    staged = next((tmp_path / "workspace").glob("job-*/clip/clip"))
    assert main(["reconstruct", str(staged), "-o", str(tmp_path / "out"), "--cameras", str(calibration)]) == 2
    assert capsys.readouterr().err.strip() == f"page4d reconstruct: error: {refused.value}"
    assert not list((tmp_path / "workspace").glob("job-*/out"))  # nothing half-written


def test_the_viewer_frame_points_at_the_host_the_page_was_reached_at():
    assert 'src="http://gpu-box:8081/?result=job-a"' in viewer_frame("http://gpu-box:7860/?x=1", 8081, "job-a")
    assert 'src="http://[::1]:9000/?result=job-b"' in viewer_frame("http://[::1]:7860/", 9000, "job-b")


def test_only_the_offered_models_run(tmp_path, demo):
    with pytest.raises(ValueError, match="model '/etc/passwd' is not offered here; pick one of page4d-small"):
        demo.reconstruct([str(zip_folder(EXAMPLE, tmp_path / "mini.zip"))], None, "/etc/passwd", 0)
    assert not list(demo.workspace.glob("job-*"))


def test_cli_refusals(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--port", "8100", "--viewer-port", "8100"]) == 2
    assert "give the viewer a port of its own" in capsys.readouterr().err
    assert main(["demo", "--device", "tpu"]) == 2
    assert "tpu" in capsys.readouterr().err
    assert main(["demo", "--model", "page4d-smol"]) == 2
    assert "page4d-smol" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["demo", "--viewer-port", str(busy.getsockname()[1])]) == 2
    assert "pass a free --viewer-port" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "page4d.demo.app", None)
    assert main(["demo"]) == 2
    assert 'pip install "page4d[demo]"' in capsys.readouterr().err


SIGTERM_AFTER_A_COLMAP_JOB = """
import os, signal, socket, sys, threading, time
from page4d.cli.main import entry

def job():  # what a job with a COLMAP calibration does on a worker thread of the page, then docker stop
    while socket.socket().connect_ex(("127.0.0.1", int(ports[0]))):  # until the page is up
        time.sleep(0.2)
    import pycolmap
    os.kill(os.getpid(), signal.SIGTERM)

ports = sys.argv[1:]
threading.Thread(target=job, daemon=True).start()
sys.argv = ["page4d", "demo", "--port", ports[0], "--viewer-port", ports[1]]
entry()
"""


@pytest.mark.slow
def test_sigterm_after_a_colmap_job_stops_the_demo_cleanly(tmp_path):
    """pycolmap's glog takes SIGTERM when it loads, and only the main thread can take it back: the demo loads it
    at start, so a job that needs it later (on a worker thread) leaves SIGTERM to Python: exit 143, workspace
    removed."""
    import os
    import subprocess

    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_A_COLMAP_JOB, str(free_port()), str(free_port())],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "page4d demo: terminated (SIGTERM)" in done.stderr
    assert not list(tmp_path.glob("page4d-demo-*"))


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_the_page_in_a_headless_browser(tmp_path, demo):
    """Upload the zipped example, reconstruct, see the viewer, panels and downloads; a control of the framed
    viewer changes what it draws; a second result replaces the first in the frame; a broken upload shows the
    one-line message and clears the previous result."""
    from playwright.sync_api import sync_playwright

    archive = zip_folder(EXAMPLE, tmp_path / "mini.zip")
    (tmp_path / "broken.zip").write_text("not a zip")
    port = free_port()
    app = launch(demo, "127.0.0.1", port, block=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            button = page.get_by_role("button", name="Reconstruct")
            button.wait_for(timeout=30_000)
            upload = page.locator("input[type=file]").first
            upload.set_input_files(str(tmp_path / "broken.zip"))
            page.get_by_text("broken", exact=True).first.wait_for(timeout=30_000)
            button.click()
            page.get_by_text("broken.zip is not a readable zip file").wait_for(timeout=60_000)
            page.reload()
            button.wait_for(timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(str(archive))
            page.get_by_text("mini", exact=True).first.wait_for(timeout=30_000)
            button.click()
            # the command's progress bars, in the page (reconstruct's frames, then the exports' steps)
            page.get_by_text(re.compile(r"\d+/\d+ (frame|step)")).first.wait_for(timeout=60_000)
            frame = page.frame_locator("iframe[title='page4d 4D viewer']")
            frame.get_by_text("min confidence %", exact=True).wait_for(timeout=120_000)
            page.get_by_text("page4d_result", exact=True).wait_for(timeout=30_000)  # stem and suffix are two spans
            gallery = page.locator("img[src*='time_']")
            deadline = time.monotonic() + 30
            while gallery.count() < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            panels = gallery.count()
            time.sleep(3)  # the viewer's points fade in
            shot = np.asarray(Image.open(io.BytesIO(page.locator("iframe").screenshot())).convert("RGB"))
            frame.get_by_label("static background").click()
            deadline = time.monotonic() + 10
            while demo._viewer.controls.static_cloud.visible and time.monotonic() < deadline:
                time.sleep(0.05)  # the box's value arrives first, then its callback hides the cloud
            hidden = not demo._viewer.controls.static_cloud.visible
            page.get_by_label("at most this many time steps (0 = all)").fill("2")
            button.click()  # a second result on the same viewer port: the frame must show it, not the old one
            page.frame_locator("iframe[title='page4d 4D viewer']").get_by_text("T=2 × V=4").wait_for(timeout=120_000)
            page.locator("input[type=file]").first.set_input_files(str(tmp_path / "broken.zip"))  # beside mini.zip
            page.get_by_text("broken", exact=True).first.wait_for(timeout=30_000)
            button.click()  # refused: the previous result leaves the page with it
            page.get_by_text("2 files with a zip among them").wait_for(timeout=60_000)
            stale = (page.locator("iframe").count(), page.locator("img[src*='time_']").count(),
                     page.get_by_label("summary").input_value())
            browser.close()
    finally:
        app.close()
    assert panels >= 3, f"the gallery shows {panels} panels"
    assert shot.std() > 30 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 2000, "the framed viewer is blank"
    assert hidden, "unticking the background in the framed viewer did not hide it"
    assert stale == (0, 0, ""), f"a refused upload left the previous result on show: {stale}"
