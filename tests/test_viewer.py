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
from conftest import CHROMIUM, EXAMPLE, needs_chromium
from PIL import Image

from page4d.cli.main import main
from page4d.data.preprocess import ImageTransform
from page4d.reconstruction.record import Reconstruction, transform_meta
from page4d.viz.viewer import (
    CONF_RAMP,
    MASK_RAMP,
    build_scene,
    camera_poses,
    point_colors,
    serve,
    step_layers,
    up_direction,
)

H, W = 28, 42
K = np.array([[40.0, 0.0, 20.5], [0.0, 40.0, 13.5], [0.0, 0.0, 1.0]], np.float32)
BOX = (slice(5, 12), slice(8, 20))
"""Moving region (rows, columns) of every view at time index 0; at time index 1 it is shifted 10 columns."""
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]


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


def test_layers_split_by_mask_with_pixel_colours_and_depth_points():
    recon = make_recon()
    layers = step_layers(recon, conf_percentile=0.0)
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


def test_confidence_percentile_keeps_the_most_confident_points():
    recon = make_recon()
    full, kept = step_layers(recon, conf_percentile=0.0), step_layers(recon, conf_percentile=50.0)
    for t in range(2):
        conf = np.concatenate([full[t].static.conf, full[t].dynamic.conf])
        threshold = np.percentile(conf, 50.0)
        assert len(kept[t].static) + len(kept[t].dynamic) == (conf >= threshold).sum()
        assert kept[t].static.conf.min() >= threshold


def test_without_mask_every_point_is_per_step():
    recon = make_recon(with_mask=False)
    for t, layer in enumerate(step_layers(recon, conf_percentile=0.0)):
        assert len(layer.static) == 0
        assert len(layer.dynamic) == _valid(recon, t).sum()
        np.testing.assert_array_equal(layer.dynamic.mask, 0.0)


def test_point_limits_are_deterministic_subsets():
    recon = make_recon()
    full = step_layers(recon, conf_percentile=0.0)
    small = step_layers(recon, conf_percentile=0.0, max_points_per_step=50, max_background_points=300)
    again = step_layers(recon, conf_percentile=0.0, max_points_per_step=50, max_background_points=300)
    for t in range(2):
        assert len(small[t].dynamic) == 50 and len(small[t].static) == 150  # 300 over T = 2
        for part, whole, repeat in ((small[t].dynamic, full[t].dynamic, again[t].dynamic),
                                    (small[t].static, full[t].static, again[t].static)):
            rows = {tuple(c) for c in whole.rgb.tolist()}
            assert all(tuple(c) in rows for c in part.rgb.tolist())
            np.testing.assert_array_equal(part.xyz, repeat.xyz)


def test_point_colors():
    recon = make_recon()
    layer = step_layers(recon, conf_percentile=0.0)[0].dynamic
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


@pytest.fixture
def server():
    server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    yield server
    server.stop()


def test_scene_follows_the_widgets(server):
    recon = make_recon()
    c = build_scene(server, recon, conf_percentile=0.0, max_background_points=400)
    np.testing.assert_allclose(c.static_cloud.points, np.concatenate([x.static.xyz for x in c.layers]), atol=4e-3)
    np.testing.assert_array_equal(c.static_cloud.colors, np.concatenate([x.static.rgb for x in c.layers]))
    np.testing.assert_allclose(c.dynamic_cloud.points, c.layers[0].dynamic.xyz, atol=4e-3)  # float16 upload
    c.time.value = 1
    np.testing.assert_allclose(c.dynamic_cloud.points, c.layers[1].dynamic.xyz, atol=4e-3)
    _, centres = camera_poses(recon.extrinsic[1])
    np.testing.assert_allclose([f.position for f in c.frusta], centres, atol=1e-6)
    assert c.frusta[0].image.shape == (H, W, 3)
    assert "time id **7**" in c.status.content
    c.color.value = "dynamic mask"
    np.testing.assert_array_equal(c.dynamic_cloud.colors, point_colors(c.layers[1].dynamic, "dynamic mask", (0, 1)))
    c.show_static.value, c.show_frusta.value = False, False
    assert not c.static_cloud.visible and c.dynamic_cloud.visible and not any(f.visible for f in c.frusta)
    c.point_size.value = 0.05
    assert c.static_cloud.point_size == c.dynamic_cloud.point_size == pytest.approx(0.05)


def test_no_mask_offers_no_mask_colours(server):
    c = build_scene(server, make_recon(with_mask=False))
    assert c.color.options == ("rgb", "confidence") and not c.show_static.visible
    assert len(c.static_cloud.points) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_headless_browser_draws_the_scene():
    from playwright.sync_api import sync_playwright

    server = serve(make_recon(untrained=True), port=_free_port())
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.goto(f"http://127.0.0.1:{server.get_port()}")
            deadline = time.monotonic() + 20
            while not server.get_clients() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.get_clients(), "the browser never connected to the viser server"
            page.get_by_text("Untrained weights").wait_for(timeout=15_000)
            while True:  # nodes fade in; software WebGL takes a few frames
                region = _canvas_region(page.screenshot())
                colours = len(np.unique(region.reshape(-1, 3), axis=0))
                if (region.std() > 30 and colours > 2000) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            browser.close()
    finally:
        server.stop()
    # Measured here: the drawn scene gives std ~75 and ~19k colours; frusta without points std ~10 and 7 colours.
    assert region.std() > 30, f"the canvas is blank (pixel std {region.std():.1f})"
    assert colours > 2000, f"the canvas shows only {colours} colours: no points drawn"


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
    port = _free_port()

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
