"""``page4d view``: the scene layers (pure numpy), the viser scene they drive, a real headless browser, the CLI."""

from __future__ import annotations

import io
import math
import socket
import sys
import time

import numpy as np
import pytest
import viser
import viser.transforms as vtf
from conftest import CHROMIUM, CHROMIUM_ARGS, EXAMPLE, free_port, needs_chromium
from PIL import Image

from page4d.cli.main import main
from page4d.data.preprocess import ImageTransform
from page4d.export.points import PointSelection, select_points
from page4d.geometry.ground import up_direction
from page4d.reconstruction.record import Reconstruction, transform_meta
from page4d.viz.scene import (
    CONF_RAMP,
    MASK_RAMP,
    ScenePoints,
    camera_centres,
    opening_view,
    point_colors,
    step_layers,
)
from page4d.viz.viewer import build_scene, camera_poses, serve

H, W = 28, 42
K = np.array([[40.0, 0.0, 20.5], [0.0, 40.0, 13.5], [0.0, 0.0, 1.0]], np.float32)
BOX = (slice(5, 12), slice(8, 20))
"""Moving region (rows, columns) of every view at time index 0; at time index 1 it is shifted 10 columns."""


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """World-to-camera rotation of an OpenCV camera in a z-up world, turned by ``yaw`` about z and tilted
    ``pitch`` radians down from horizontal (yaw = pitch = 0 looks along +x)."""
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    return np.stack([right, np.cross(forward, right), forward])  # rows: camera x, y (down), z in world


def make_recon(with_mask: bool = True, untrained: bool = False) -> Reconstruction:
    """T=2, V=2 cameras facing the plane z = 4 whose pixel colours encode (t, v, row, column): R = 9·row,
    G = 6·column, B = 100·v + 50·t. Two invalid pixels and one zero-confidence pixel."""
    extrinsic = np.zeros((2, 2, 3, 4), np.float32)
    rays = np.stack([*np.meshgrid(np.arange(W), np.arange(H)), np.ones((H, W))], -1) @ np.linalg.inv(K).T
    depth = np.zeros((2, 2, H, W), np.float32)
    images = np.zeros((2, 2, H, W, 3), np.uint8)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    for t in range(2):
        for v in range(2):
            rot = np.eye(3) if v == 0 else vtf.SO3.from_y_radians(0.2).as_matrix()
            centre = np.array([v * 1.0, 0.2 * v, 0.5 * t])
            extrinsic[t, v] = np.concatenate([rot, -rot @ centre[:, None]], axis=1)
            depth[t, v] = (4.0 - centre[2]) / (rays @ rot)[..., 2]  # z-depth of the plane z = 4 along each ray
            images[t, v] = np.stack([9 * rows, 6 * cols, np.full_like(rows, 100 * v + 50 * t)], -1)
    depth[0, 0, 0, 0], depth[0, 1, 5, 5] = 0.0, np.nan
    depth_conf = np.linspace(1.0, 3.0, depth.size, dtype=np.float32).reshape(depth.shape)
    depth_conf[1, 0, 2, 2] = 0.0
    mask = np.zeros(depth.shape, np.float32)
    mask[0][:, BOX[0], BOX[1]] = 0.625
    mask[1][:, BOX[0], 10:22] = 0.6
    transform = ImageTransform((H, W), (H, W), crop_top=0, pad_top=0, pad_left=0, output_size=(H, W))
    intrinsic = np.broadcast_to(K, (2, 2, 3, 3)).copy()
    return Reconstruction(
        time_ids=np.array([3, 7]), view_ids=np.array([0, 2]), images=images, extrinsic=extrinsic,
        intrinsic=intrinsic, intrinsic_original=intrinsic.copy(), depth=depth, depth_conf=depth_conf,
        world_points=np.zeros(depth.shape + (3,), np.float32), world_points_conf=depth_conf.copy(),
        dynamic_mask=mask if with_mask else None,
        meta={"model": "test", "untrained": untrained, "transforms": [transform_meta(transform)] * 2},
    )


def _decode(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t, v, row, column) of each point from :func:`make_recon`'s colour encoding."""
    blue = rgb[:, 2].astype(int)
    return blue % 100 // 50, blue // 100, rgb[:, 0] // 9, rgb[:, 1] // 6


def _valid(recon: Reconstruction, t: int) -> np.ndarray:
    depth, conf = recon.depth[t], recon.depth_conf[t]
    return np.isfinite(depth) & (depth > 0) & (conf > 0)


ALL_VIEWS = np.array([True, True])


def test_layers_split_by_mask_with_pixel_colours_and_depth_points():
    recon = make_recon()
    layers = step_layers(recon)
    points = recon.depth_points()
    for t, layer in enumerate(layers):
        moving = recon.dynamic_mask[t] > 0.5
        for part, want in ((layer.dynamic, moving), (layer.static, ~moving)):
            pt, pv, pr, pc = _decode(part.rgb)
            assert (pt == t).all()
            got = np.zeros((2, H, W), bool)
            got[pv, pr, pc] = True
            assert len(part) == got.sum()  # each pixel once
            np.testing.assert_array_equal(got, _valid(recon, t) & want)
            np.testing.assert_array_equal(part.rgb, recon.images[t][pv, pr, pc])
            np.testing.assert_allclose(part.xyz, points[t][pv, pr, pc], atol=1e-6)
            np.testing.assert_array_equal(part.conf, recon.depth_conf[t][pv, pr, pc])
            np.testing.assert_array_equal(part.mask, recon.dynamic_mask[t][pv, pr, pc])
    assert len(layers[0].dynamic) == 2 * 7 * 12  # the box in both views, all valid
    assert len(layers[1].static) == 2 * H * W - 2 * 7 * 12 - 1  # one zero-confidence pixel


@pytest.mark.parametrize("percentile", [0.0, 37.0, 50.0, 90.0])
def test_live_confidence_filter_keeps_what_the_exports_keep(percentile):
    recon = make_recon()
    points = ScenePoints(step_layers(recon))
    want = [select_points(recon, t, conf_percentile=percentile) for t in range(2)]  # the exports' own filter
    static = PointSelection.concat([w.subset(~w.moving) for w in want])
    got = points.static_points(percentile, ALL_VIEWS)
    for field in ("pixel", "view", "rgb"):  # the colour encodes the time step
        np.testing.assert_array_equal(getattr(got, field), getattr(static, field))
    for t in range(2):
        moving, want_moving = points.moving_points(t, percentile, ALL_VIEWS), want[t].subset(want[t].moving)
        for field in ("pixel", "view", "rgb"):
            np.testing.assert_array_equal(getattr(moving, field), getattr(want_moving, field))
    assert 0 < len(points.static_points(90.0, ALL_VIEWS)) < len(points.static_points(37.0, ALL_VIEWS))


def test_camera_filter_drops_that_cameras_points_only():
    points = ScenePoints(step_layers(make_recon()))
    only_first = np.array([True, False])
    for got, whole in ((points.static_points(20.0, only_first), points.static_points(20.0, ALL_VIEWS)),
                       (points.moving_points(1, 20.0, only_first), points.moving_points(1, 20.0, ALL_VIEWS))):
        assert len(got) > 0 and (got.view == 0).all()
        np.testing.assert_array_equal(got.pixel, whole.pixel[whole.view == 0])
    assert len(points.static_points(0.0, np.array([False, False]))) == 0


def test_without_mask_every_point_is_per_step():
    recon = make_recon(with_mask=False)
    for t, layer in enumerate(step_layers(recon)):
        assert len(layer.static) == 0
        assert len(layer.dynamic) == _valid(recon, t).sum()
        np.testing.assert_array_equal(layer.dynamic.mask, 0.0)


def test_point_limits_are_deterministic_subsets():
    recon = make_recon()
    full = step_layers(recon)
    small = step_layers(recon, max_points_per_step=50, max_background_points=300)
    again = step_layers(recon, max_points_per_step=50, max_background_points=300)
    for t in range(2):
        assert len(small[t].dynamic) == 50 and len(small[t].static) == 150  # 300 over T = 2
        for part, whole, repeat in ((small[t].dynamic, full[t].dynamic, again[t].dynamic),
                                    (small[t].static, full[t].static, again[t].static)):
            rows = {tuple(c) for c in whole.rgb.tolist()}
            assert all(tuple(c) in rows for c in part.rgb.tolist())
            np.testing.assert_array_equal(part.xyz, repeat.xyz)


def test_point_colors():
    recon = make_recon()
    layer = step_layers(recon)[0].dynamic
    np.testing.assert_array_equal(point_colors(layer, "rgb", (0, 1)), layer.rgb)
    low, high = float(layer.conf.min()), float(layer.conf.max())
    conf = point_colors(layer, "confidence", (low, high))
    np.testing.assert_array_equal(conf[layer.conf.argmin()], CONF_RAMP[0])
    np.testing.assert_array_equal(conf[layer.conf.argmax()], CONF_RAMP[-1])
    mask = point_colors(layer, "dynamic mask", (0, 1))
    # 0.625 of the way from MASK_RAMP[0] (120, 130, 150) to MASK_RAMP[1] (235, 40, 40), by hand
    np.testing.assert_array_equal(mask, np.broadcast_to([192, 74, 81], mask.shape))
    np.testing.assert_array_equal(point_colors(step_layers(recon)[0].static, "dynamic mask", (0, 1))[0], MASK_RAMP[0])
    with pytest.raises(ValueError, match="colour mode"):
        point_colors(layer, "depth", (0, 1))


def test_camera_poses_are_camera_to_world():
    extrinsic = make_recon().extrinsic[:, 1]
    wxyz, centres = camera_poses(extrinsic)
    for e, q, c in zip(extrinsic, wxyz, centres, strict=True):
        np.testing.assert_allclose(e[:, :3] @ c + e[:, 3], 0.0, atol=1e-6)  # the centre maps to the origin
        np.testing.assert_allclose(vtf.SO3(q).as_matrix(), e[:, :3].T, atol=1e-6)


def test_up_direction_ignores_pitch_and_falls_back_for_one_camera():
    pitched = [_rotation(yaw, math.radians(30)) for yaw in (0.0, math.pi / 2)]
    extrinsic = np.stack([np.concatenate([r, np.zeros((3, 1))], 1) for r in pitched])
    np.testing.assert_allclose(up_direction(extrinsic), [0.0, 0.0, 1.0], atol=1e-9)
    # the cameras' own up axes both lean 30 degrees: their mean is not the world's up
    assert -extrinsic[:, 1, 2].mean() < 0.9
    np.testing.assert_allclose(up_direction(extrinsic[:1]), -extrinsic[0, 1, :3], atol=1e-9)


def test_opening_view_frames_the_scene_from_behind_the_reference_camera():
    """A ring of 6 cameras pitched 20 degrees down at a cloud around the origin, in a world whose up is not an
    axis; 10 % of the points are far walls behind camera 0, which must not pull the eye in among them."""
    rng = np.random.default_rng(0)
    turn = vtf.SO3.from_rpy_radians(0.4, -0.3, 1.1).as_matrix()  # world = z-up world turned
    extrinsic = []
    for yaw in np.linspace(0, 2 * np.pi, 6, endpoint=False):
        rot = _rotation(yaw, math.radians(20))
        centre = -4.0 * np.array([math.cos(yaw), math.sin(yaw), 0.0]) + [0, 0, 1.5]
        extrinsic.append(np.concatenate([rot @ turn.T, -(rot @ centre)[:, None]], 1))
    extrinsic = np.stack(extrinsic)[None]
    scene = rng.normal(0.0, 0.7, (9000, 3))
    walls = np.array([-12.0, 0.0, 0.0]) + rng.uniform(-3, 3, (1000, 3))  # behind camera 0 (at x = -4)
    points = np.concatenate([scene, walls]) @ turn.T
    up, fov = turn @ [0.0, 0.0, 1.0], 1.3
    np.testing.assert_allclose(up_direction(extrinsic), up, atol=1e-9)
    eye, target = opening_view(points, extrinsic, up, fov)
    look = (target - eye) / np.linalg.norm(target - eye)
    forward0, centre0 = extrinsic[0, 0, 2, :3], camera_centres(extrinsic[0, 0])
    assert (centre0 - eye) @ forward0 > 0  # the eye is behind camera 0 ...
    assert look @ forward0 > 0.8  # ... looking its way (30 degrees down; camera 0 looks 20 degrees down)
    assert (eye - target) @ up > 0  # from above
    for inside in (camera_centres(extrinsic).reshape(-1, 3), scene[np.linalg.norm(scene, axis=1) < 1.0] @ turn.T):
        rays = (inside - eye) / np.linalg.norm(inside - eye, axis=1, keepdims=True)
        assert np.arccos(np.clip(rays @ look, -1, 1)).max() < fov / 2  # every camera and the scene's core in view
    nearest = np.linalg.norm(points - eye, axis=1).min()
    assert nearest > 0.3 * np.linalg.norm(target - eye)  # not among the walls' points


@pytest.fixture
def server():
    server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    yield server
    server.stop()


def test_scene_follows_the_widgets(server):
    recon = make_recon()
    c = build_scene(server, recon, conf_percentile=0.0, max_background_points=400)
    try:
        background = c.points.static_points(0.0, ALL_VIEWS)
        np.testing.assert_allclose(c.static_cloud.points, background.xyz, atol=4e-3)  # float16 upload
        np.testing.assert_array_equal(c.static_cloud.colors, background.rgb)
        np.testing.assert_allclose(c.dynamic_cloud.points, c.points.layers[0].dynamic.xyz, atol=4e-3)
        c.time.value = 1
        np.testing.assert_allclose(c.dynamic_cloud.points, c.points.layers[1].dynamic.xyz, atol=4e-3)
        _, centres = camera_poses(recon.extrinsic[1])
        np.testing.assert_allclose([f.position for f in c.frusta], centres, atol=1e-6)
        assert c.frusta[0].image.shape == (H, W, 3)
        assert "time id **7**" in c.status.content
        c.color.value = "dynamic mask"
        np.testing.assert_array_equal(c.dynamic_cloud.colors,
                                      point_colors(c.points.layers[1].dynamic, "dynamic mask", (0, 1)))
        c.confidence.value = 60.0
        kept = c.points.static_points(60.0, ALL_VIEWS)
        assert 0 < len(kept) < len(background) and len(c.static_cloud.points) == len(kept)
        np.testing.assert_allclose(c.static_cloud.points, kept.xyz, atol=4e-3)
        assert len(c.dynamic_cloud.points) == len(c.points.moving_points(1, 60.0, ALL_VIEWS))
        c.views[1].value = False  # camera 1: its frustum and its points go
        assert c.frusta[0].visible and not c.frusta[1].visible
        np.testing.assert_allclose(c.static_cloud.points, kept.xyz[kept.view == 0], atol=4e-3)
        c.show_static.value, c.show_frusta.value = False, False
        assert not c.static_cloud.visible and c.dynamic_cloud.visible and not any(f.visible for f in c.frusta)
        c.show_frusta.value = True
        assert [f.visible for f in c.frusta] == [True, False]
        c.point_size.value = 0.05
        assert c.static_cloud.point_size == c.dynamic_cloud.point_size == pytest.approx(0.05)
    finally:
        c.playback.stop()


def test_play_loops_over_the_steps_until_paused(server):
    c = build_scene(server, make_recon())
    try:
        seen, deadline = set(), time.monotonic() + 10
        c.speed.value = 30.0
        c.play.value = True
        while len(seen) < 2 and time.monotonic() < deadline:  # T = 2: both steps, so it wrapped round
            seen.add(int(c.time.value))
            time.sleep(0.005)
        c.play.value = False
        assert seen == {0, 1}
        time.sleep(0.2)  # the loop sees the pause within IDLE_POLL
        paused_at = int(c.time.value)
        shown = c.points.moving_points(paused_at, float(c.confidence.value), ALL_VIEWS)
        np.testing.assert_allclose(c.dynamic_cloud.points, shown.xyz, atol=4e-3)
        time.sleep(0.3)  # 9 steps at 30 steps / s, had it not paused
        assert int(c.time.value) == paused_at
    finally:
        c.playback.stop()
    assert not c.playback._thread.is_alive()


def test_no_focal_length_still_opens(server):
    """Untrained weights can predict an infinite focal length: the point size and frusta fall back."""
    recon = make_recon(untrained=True)
    recon.intrinsic[:, :, 1, 1] = np.inf
    c = build_scene(server, recon)
    c.playback.stop()
    assert np.isfinite(c.point_size.value) and c.point_size.value > 0
    assert [f.fov for f in c.frusta] == [1.0, 1.0]


def test_playback_survives_a_zero_speed(server):
    c = build_scene(server, make_recon())
    try:
        c.speed.value, c.play.value = 0.0, True  # below the slider's minimum, set from Python
        time.sleep(0.3)
        assert c.playback._thread.is_alive()
    finally:
        c.playback.stop()


def test_no_mask_offers_no_mask_colours(server):
    c = build_scene(server, make_recon(with_mask=False))
    c.playback.stop()
    assert c.color.options == ("rgb", "confidence") and not c.show_static.visible
    assert len(c.static_cloud.points) == 0


def test_serve_refuses_a_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ValueError, match="free --port"):
            serve(make_recon(), port=busy.getsockname()[1])


def _canvas_region(png: bytes) -> np.ndarray:
    """The left middle of the screenshot, clear of the GUI panel (top right, from 58% of the width), the
    software-WebGL toast (top left) and the axes gizmo (bottom left)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)
    height, width = pixels.shape[:2]
    return pixels[int(0.3 * height):int(0.9 * height), int(0.1 * width):int(0.55 * width)]


def _settled_canvas(page: object, deadline: float) -> np.ndarray:
    """The canvas region once it stops changing (nodes fade in; software WebGL takes a few frames)."""
    region = _canvas_region(page.screenshot())
    while time.monotonic() < deadline:
        time.sleep(0.5)
        again = _canvas_region(page.screenshot())
        if np.abs(again - region).mean() < 0.5:
            break
        region = again
    return region


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_headless_browser_draws_the_scene_and_its_controls_change_it():
    from playwright.sync_api import sync_playwright

    viewer = serve(make_recon(untrained=True), port=free_port())
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.goto(f"http://127.0.0.1:{viewer.port}")
            deadline = time.monotonic() + 20
            while not viewer.server.get_clients() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert viewer.server.get_clients(), "the browser never connected to the viser server"
            page.get_by_text("Untrained weights").wait_for(timeout=15_000)
            for label in ("play", "min confidence %", "view 2 (orange)"):  # the panel shows every control
                page.get_by_text(label, exact=True).wait_for(timeout=15_000)
            drawn = _settled_canvas(page, time.monotonic() + 20)
            page.get_by_label("static background").click()  # in the browser, as a user would
            deadline = time.monotonic() + 10
            while viewer.controls.static_cloud.visible and time.monotonic() < deadline:
                time.sleep(0.05)  # the box's value arrives first, then its callback hides the cloud
            without_background = _settled_canvas(page, time.monotonic() + 20)
            browser.close()
    finally:
        viewer.stop()
    # Measured here: the drawn scene gives std ~75 and ~19k colours; frusta without points std ~10 and 7 colours.
    colours = len(np.unique(drawn.reshape(-1, 3), axis=0))
    assert drawn.std() > 30, f"the canvas is blank (pixel std {drawn.std():.1f})"
    assert colours > 2000, f"the canvas shows only {colours} colours: no points drawn"
    assert not viewer.controls.show_static.value and not viewer.controls.static_cloud.visible
    changed = (np.abs(without_background - drawn).sum(-1) > 60).mean()
    assert changed > 0.05, f"hiding the background changed {changed:.1%} of the canvas"


def test_cli_rejects_missing_and_empty_folders(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope")]) == 2
    assert "does not exist; pass the output folder of page4d reconstruct" in capsys.readouterr().err
    assert main(["view", str(tmp_path)]) == 2
    assert "holds neither predictions.npz" in capsys.readouterr().err


def test_cli_reports_a_port_in_use(tmp_path, capsys):
    make_recon().save(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["view", str(tmp_path), "--port", str(busy.getsockname()[1])]) == 2
    assert "pass a free --port" in capsys.readouterr().err


def test_cli_serves_until_ctrl_c(tmp_path, capsys, monkeypatch):
    make_recon().save(tmp_path)
    port = free_port()

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("page4d.cli.view.time.sleep", interrupt)
    assert main(["view", str(tmp_path), "--port", str(port)]) == 0
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out
    with socket.socket() as again:  # the server let the port go
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_cli_needs_viser(tmp_path, capsys, monkeypatch):
    make_recon().save(tmp_path)
    monkeypatch.setitem(sys.modules, "page4d.viz.viewer", None)
    assert main(["view", str(tmp_path)]) == 2
    assert 'pip install "page4d[viz]"' in capsys.readouterr().err


def test_cli_loads_a_clip_ground_truth():
    from page4d.cli.view import load_input

    recon = load_input(EXAMPLE)
    assert recon.meta["model"] == "ground truth" and recon.depth.shape[:2] == (3, 4)
    assert recon.dynamic_mask is not None
