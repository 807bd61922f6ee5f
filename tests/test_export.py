"""Exports (PLY, GLB, COLMAP) and PNG panels, read back with trimesh, pycolmap and PIL (rerun: test_export_rerun.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re

import numpy as np
import pycolmap
import pytest
import trimesh
from conftest import example_truth
from matplotlib import colormaps
from PIL import Image

from page4d.data.preprocess import ImageTransform
from page4d.export import FORMATS, export, select_points
from page4d.export.colmap import write_colmap
from page4d.export.glb import FRUSTUM_SCALE, write_scene
from page4d.export.panels import DEPTH_COLORMAP, LABEL_HEIGHT, write_panels
from page4d.export.ply import write_point_cloud, write_point_clouds
from page4d.reconstruction.record import Reconstruction, transform_meta

H, W = 28, 42
TIME_IDS, VIEW_IDS = [3, 7], [0, 2]
PLANE_Z = 4.0
K = np.array([[40.0, 0.0, 20.5], [0.0, 40.0, 13.5], [0.0, 0.0, 1.0]], np.float32)
# 2x downscale of 64x84 originals, then 2 rows cropped at the top: original (u, v) = (2u' + 0.5, 2v' + 4.5).
CROP = ImageTransform((64, 84), (32, 42), crop_top=2, pad_top=0, pad_left=0, output_size=(H, W))
# 2x downscale of 40x84 originals padded with 4 white rows above and below: model rows 4..23 are the image.
PAD = ImageTransform((40, 84), (20, 42), crop_top=0, pad_top=4, pad_left=0, output_size=(H, W))
BOX = (slice(5, 10), slice(8, 20))
"""Moving region (rows, columns) of every view at time index 0; nothing moves at time index 1."""


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def make_recon(transform: ImageTransform = CROP) -> Reconstruction:
    """T=2, V=2 cameras looking at the plane z = 4, with a few invalid pixels and a known moving box."""
    rng = np.random.default_rng(0)
    extrinsic = np.zeros((2, 2, 3, 4), np.float32)
    depth = np.zeros((2, 2, H, W), np.float32)
    rays = np.stack([*np.meshgrid(np.arange(W), np.arange(H)), np.ones((H, W))], -1) @ np.linalg.inv(K).T
    for t in range(2):
        for v, (rot, centre) in enumerate([(np.eye(3), [0, 0, 0.5 * t]), (_rotation_y(0.2), [1, 0.2, 0.5 * t])]):
            extrinsic[t, v] = np.concatenate([rot, -rot @ np.array(centre)[:, None]], axis=1)
            # z-depth = ray parameter for rays with unit camera z; solve centre_z + s * (Rᵀ ray)_z = PLANE_Z
            depth[t, v] = (PLANE_Z - centre[2]) / (rays @ rot)[..., 2]
    depth[0, 0, 0, 0], depth[0, 1, 5, 5] = 0.0, np.nan
    depth_conf = (1 + rng.permutation(depth.size).reshape(depth.shape) / 100).astype(np.float32)
    depth_conf[0, 0, 1, 1] = 0.0
    mask = np.zeros(depth.shape, np.float32)
    mask[0][:, BOX[0], BOX[1]] = 0.9
    mask[0, 0, 0, 1] = 0.5  # exactly the threshold: not moving
    intrinsic = np.broadcast_to(K, (2, 2, 3, 3)).copy()
    recon = Reconstruction(
        time_ids=np.array(TIME_IDS), view_ids=np.array(VIEW_IDS),
        images=rng.integers(0, 256, (2, 2, H, W, 3), dtype=np.uint8), extrinsic=extrinsic, intrinsic=intrinsic,
        intrinsic_original=transform.restore_intrinsics(intrinsic), depth=depth, depth_conf=depth_conf,
        world_points=np.zeros((2, 2, H, W, 3), np.float32), world_points_conf=depth_conf.copy(), dynamic_mask=mask,
        meta={"transforms": [transform_meta(transform)] * 2},
    )
    recon.world_points = recon.depth_points()
    # A point behind its camera (view index 1 at time 0): centre minus the forward axis.
    rot = extrinsic[0, 1, :, :3]
    recon.world_points[0, 1, 2, 3] = -rot.T @ extrinsic[0, 1, :, 3] - rot[2]
    return recon


@pytest.fixture(scope="module")
def tabletop() -> Reconstruction:
    return example_truth()


def test_select_points_keeps_valid_pixels_with_their_values():
    recon = make_recon()
    sel = select_points(recon, 0, conf_percentile=0)
    assert len(sel) == 2 * H * W - 3  # depth 0, depth NaN, confidence 0
    view, col, row = sel.view, sel.pixel[:, 0], sel.pixel[:, 1]
    assert {(0, 0, 0), (0, 1, 1), (1, 5, 5)}.isdisjoint(zip(view.tolist(), row.tolist(), col.tolist(), strict=True))
    np.testing.assert_array_equal(sel.xyz, recon.depth_points()[0][view, row, col])
    np.testing.assert_allclose(sel.xyz[:, 2], PLANE_Z, atol=1e-4)
    np.testing.assert_array_equal(sel.rgb, recon.images[0][view, row, col])
    np.testing.assert_array_equal(sel.conf, recon.depth_conf[0][view, row, col])
    in_box = (row >= 5) & (row < 10) & (col >= 8) & (col < 20)
    np.testing.assert_array_equal(sel.moving, in_box)
    assert not select_points(dataclasses.replace(recon, dynamic_mask=None), 0).moving.any()


def test_select_points_percentile_and_subsampling():
    recon = make_recon()
    full = select_points(recon, 0, conf_percentile=0)
    kept = select_points(recon, 0, conf_percentile=20)
    # Distinct confidences: linear-interpolated percentile at position 0.2 (n - 1) drops ceil of it.
    n = len(full)
    assert len(kept) == n - math.ceil(0.2 * (n - 1))
    assert kept.conf.min() > np.sort(full.conf)[n - len(kept) - 1]
    sub = select_points(recon, 0, conf_percentile=0, max_points=100)
    again = select_points(recon, 0, conf_percentile=0, max_points=100)
    assert len(sub) == 100 and np.array_equal(sub.pixel, again.pixel) and np.array_equal(sub.view, again.view)
    linear = lambda s: (s.view * H + s.pixel[:, 1]) * W + s.pixel[:, 0]  # noqa: E731
    assert np.all(np.diff(linear(sub)) > 0) and np.isin(linear(sub), linear(full)).all()
    np.testing.assert_array_equal(sub.xyz, full.xyz[np.isin(linear(full), linear(sub))])


def test_select_points_from_point_head_and_errors():
    recon = make_recon()
    sel = select_points(recon, 0, source="points", conf_percentile=0)
    assert len(sel) == 2 * H * W - 4  # at the camera centre (z = 0), confidence 0, NaN, behind the camera
    np.testing.assert_array_equal(sel.xyz, recon.world_points[0][sel.view, sel.pixel[:, 1], sel.pixel[:, 0]])
    with pytest.raises(ValueError, match="pass 0 to 1"):
        select_points(recon, 2)
    with pytest.raises(ValueError, match="'depth' or 'points'"):
        select_points(recon, 0, source="mesh")
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        select_points(recon, 0, conf_percentile=101)


def test_ply_splits_static_and_dynamic_and_skips_empty_parts(tmp_path):
    recon = make_recon()
    paths = write_point_clouds(recon, tmp_path, conf_percentile=0)
    names = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert names == ["points/time_03_static.ply", "points/time_03_dynamic.ply", "points/time_07_static.ply"]
    sel = select_points(recon, 0, conf_percentile=0)
    static, dynamic = trimesh.load(paths[0]), trimesh.load(paths[1])
    assert len(dynamic.vertices) == 2 * 5 * 12 and len(static.vertices) + len(dynamic.vertices) == len(sel)
    for cloud, part in ((static, ~sel.moving), (dynamic, sel.moving)):
        np.testing.assert_array_equal(cloud.vertices, sel.xyz[part])
        np.testing.assert_array_equal(cloud.colors[:, :3], sel.rgb[part])
    assert len(trimesh.load(paths[2]).vertices) == 2 * H * W
    no_mask = write_point_clouds(dataclasses.replace(recon, dynamic_mask=None), tmp_path / "no_mask")
    assert [p.name for p in no_mask] == ["time_03_static.ply", "time_07_static.ply"]


def test_ply_ground_truth_counts(tmp_path, tabletop):
    # Ground-truth confidence is 1 wherever depth is valid, so the default percentile keeps every valid pixel.
    static, dynamic = (trimesh.load(p) for p in write_point_cloud(tabletop, tmp_path, 0))
    valid, moving = tabletop.depth[0] > 0, tabletop.dynamic_mask[0] > 0.5
    assert len(dynamic.vertices) == (valid & moving).sum() > 0
    assert len(static.vertices) == (valid & ~moving).sum()
    view, row, col = np.nonzero(valid & moving)
    np.testing.assert_array_equal(dynamic.colors[:, :3], tabletop.images[0][view, row, col])


def test_glb_frustums_sit_on_the_cameras(tmp_path):
    recon = make_recon()
    scene = trimesh.load(write_scene(recon, tmp_path / "scene.glb", 1, conf_percentile=0))
    sel = select_points(recon, 1, conf_percentile=0)
    cloud = scene.geometry["points"]
    assert len(cloud.vertices) == len(sel) == 2 * H * W
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # glTF y up <-> OpenCV y down
    np.testing.assert_array_equal(cloud.vertices @ flip[:3, :3], sel.xyz)
    np.testing.assert_array_equal(cloud.colors[:, :3], sel.rgb)
    rot, trans = recon.extrinsic[1, :, :, :3].astype(np.float64), recon.extrinsic[1, :, :, 3].astype(np.float64)
    centres = -np.einsum("vji,vj->vi", rot, trans)
    corners = np.concatenate([sel.xyz, centres])
    depth = FRUSTUM_SCALE * np.linalg.norm(corners.max(0) - corners.min(0))
    for v, view_id in enumerate(VIEW_IDS):
        pose, geom = scene.graph[f"camera_view{view_id}"]
        pose = flip @ pose
        world = scene.geometry[geom].vertices @ pose[:3, :3].T + pose[:3, 3]
        np.testing.assert_allclose(world[0], centres[v], atol=1e-6)
        # Back in OpenCV camera axes the base is at z = depth and its corners project to the image corners.
        base = (world[1:] - world[0]) @ rot[v].T
        np.testing.assert_allclose(base[:, 2], depth, rtol=1e-6)
        uv = base @ K.T.astype(np.float64)
        expected = [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]]
        np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], expected, atol=1e-6)


def _check_colmap(folder, recon: Reconstruction, t: int, num_points: int, tol_px: float) -> pycolmap.Reconstruction:
    """Read ``folder`` back with pycolmap and compare cameras, poses, colours and reprojections with ``recon``."""
    model = pycolmap.Reconstruction(folder)
    height, width = recon.original_sizes[0]
    assert model.num_cameras() == model.num_images() == recon.num_views and model.num_points3D() == num_points
    for v, view_id in enumerate(recon.view_ids):
        camera, image = model.cameras[v + 1], model.images[v + 1]
        k = recon.intrinsic_original[t, v].astype(np.float64)
        assert camera.model == pycolmap.CameraModelId.PINHOLE and (camera.width, camera.height) == (width, height)
        np.testing.assert_allclose(camera.params, [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5], rtol=0, atol=1e-6)
        assert image.name == f"view{view_id}.png"
        np.testing.assert_allclose(image.cam_from_world().rotation.matrix(), recon.extrinsic[t, v, :, :3], atol=1e-6)
        np.testing.assert_allclose(image.cam_from_world().translation, recon.extrinsic[t, v, :, 3], atol=1e-6)
    errors = []
    for point in model.points3D.values():
        (element,) = point.track.elements
        image = model.images[element.image_id]
        errors.append(np.abs(image.project_point(point.xyz) - image.points2D[element.point2D_idx].xy).max())
    assert max(errors) < tol_px
    return model


def test_colmap_round_trip(tmp_path):
    recon = make_recon()
    sel = select_points(recon, 0, conf_percentile=0)
    model = _check_colmap(write_colmap(recon, tmp_path / "bin", 0, conf_percentile=0), recon, 0, len(sel), 1e-3)
    for v in range(2):
        rows = sel.view == v
        observed = np.array([p.xy for p in model.images[v + 1].points2D])
        # Hand-computed for the CROP transform, +0.5 for COLMAP's pixel-centre convention.
        np.testing.assert_allclose(observed, 2 * (sel.pixel[rows] + [0, 2]) + 1, atol=1e-9)
        ids = [p.point3D_id for p in model.images[v + 1].points2D]
        np.testing.assert_array_equal([model.points3D[i].color for i in ids], sel.rgb[rows])
        np.testing.assert_allclose([model.points3D[i].xyz for i in ids], sel.xyz[rows], atol=0)
    text = write_colmap(recon, tmp_path / "txt", 0, binary=False, conf_percentile=0)
    assert sorted(p.name for p in text.iterdir() if p.name in ("cameras.txt", "images.txt", "points3D.txt")) == [
        "cameras.txt", "images.txt", "points3D.txt"
    ]
    _check_colmap(text, recon, 0, len(sel), 1e-3)


def test_colmap_drops_points_in_padding(tmp_path):
    recon = make_recon(PAD)
    rows = select_points(recon, 1, conf_percentile=0).pixel[:, 1]
    inside = int(((rows >= 4) & (rows < 24)).sum())
    assert 0 < inside < len(rows)
    _check_colmap(write_colmap(recon, tmp_path, 1, conf_percentile=0), recon, 1, inside, 1e-3)


def test_colmap_ground_truth(tmp_path, tabletop):
    _check_colmap(write_colmap(tabletop, tmp_path, 1), tabletop, 1, 50_000, 1e-2)


def test_panels_layout_and_pixels(tmp_path):
    recon = make_recon()
    paths = write_panels(recon, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["panels/time_03.png", "panels/time_07.png"]
    panel = np.asarray(Image.open(paths[0]))
    row = LABEL_HEIGHT + H
    assert panel.shape == (4 * row, 2 * W, 3)
    assert panel[:LABEL_HEIGHT].max() > 200  # the (anti-aliased) label text was drawn
    depth = recon.depth[0]
    lowest = np.unravel_index(np.nanargmin(np.where(depth > 0, depth, np.nan)), depth.shape)
    for v in range(2):
        tile = [panel[r * row + LABEL_HEIGHT : (r + 1) * row, v * W : (v + 1) * W] for r in range(4)]
        np.testing.assert_array_equal(tile[0], recon.images[0, v])
        grey = np.round(recon.dynamic_mask[0, v] * 255).astype(np.uint8)
        np.testing.assert_array_equal(tile[3], np.repeat(grey[..., None], 3, axis=-1))
        invalid = ~(np.isfinite(depth[v]) & (depth[v] > 0))
        assert invalid.sum() == 1 and (tile[1][invalid] == 0).all() and (tile[1][~invalid].max(-1) > 0).all()
    # The nearest valid pixel is below the robust range: the colormap's first colour.
    v, r, c = lowest
    first = colormaps[DEPTH_COLORMAP](0.0, bytes=True)[:3]
    np.testing.assert_array_equal(panel[row + LABEL_HEIGHT + r, v * W + c], first)
    no_mask = write_panels(dataclasses.replace(recon, dynamic_mask=None), tmp_path / "no_mask")
    assert np.asarray(Image.open(no_mask[1])).shape == (3 * row, 2 * W, 3)


def _originals(t: int, v: int) -> np.ndarray:
    """A distinct original frame (64 × 84, CROP's size) per (t, v)."""
    return np.full((64, 84, 3), 40 * t + 10 * v, np.uint8)


def test_export_writes_every_format(tmp_path):
    recon = make_recon()
    out = tmp_path / "out"
    written = export(recon, out, FORMATS, progress=False, frames=_originals)
    colmap = [f"colmap/time_07/sparse/0/{name}.bin" for name in ("cameras", "frames", "images", "points3D", "rigs")]
    frames = [f"nerfstudio/{kind}/time_{t:02d}_view{v}.png" for t in TIME_IDS for v in VIEW_IDS
              for kind in ("images", "masks")]
    colmap_images = [f"colmap/time_07/images/view{v}.png" for v in VIEW_IDS]
    expected = [
        "points/time_03_static.ply", "points/time_03_dynamic.ply", "panels/time_03.png",
        "points/time_07_static.ply", "panels/time_07.png", "scene_time_07.glb",
        "nerfstudio/transforms.json", *frames, "nerfstudio/points_static.ply", "recording.rrd", *colmap, *colmap_images,
    ]
    assert [p.relative_to(out).as_posix() for p in written] == expected
    assert all(p.is_file() for p in written)
    # The default percentile applies: the PLY files hold the default selection.
    sel = select_points(recon, 1)
    assert len(sel) < 2 * H * W and len(trimesh.load(out / "points/time_07_static.ply").vertices) == len(sel)
    assert pycolmap.Reconstruction(out / "colmap/time_07/sparse/0").num_points3D() == len(sel)


def test_nerfstudio_export_reads_back_in_the_reconstructions_world(tmp_path):
    """transforms.json: camera centres and K as in cameras.json (original resolution, no re-centring; the principal
    point in nerfstudio's pixel convention, centres at +0.5), OpenGL camera-to-world matrices, a static point
    projecting through them onto the centre of the original pixel it came from, masks that zero the moving box at
    original resolution, and times spread over [0, 1]."""
    recon = make_recon()
    export(recon, tmp_path, ["nerfstudio"], progress=False, frames=_originals)
    folder = tmp_path / "nerfstudio"
    doc = json.loads((folder / "transforms.json").read_text())
    cameras = recon.cameras_json()
    assert doc["camera_model"] == "PINHOLE" and len(doc["frames"]) == 4
    for index, frame in enumerate(doc["frames"]):
        t, v = divmod(index, 2)
        assert frame["file_path"] == f"images/time_{TIME_IDS[t]:02d}_view{VIEW_IDS[v]}.png"
        assert frame["time"] == t and (frame["w"], frame["h"]) == (84, 64)
        k = np.array(cameras["K"][t][v])
        np.testing.assert_allclose([frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"]],
                                   [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5], rtol=1e-6)
        c2w = np.array(frame["transform_matrix"])
        w2c = np.array(cameras["E_w2c"][t][v])
        np.testing.assert_allclose(c2w[:3, 3], -w2c[:, :3].T @ w2c[:, 3], atol=1e-6)  # the same centre
        np.testing.assert_allclose(c2w[:3, :3] @ np.diag([1, -1, -1]), w2c[:, :3].T, atol=1e-6)  # GL = CV · flip
        image = np.asarray(Image.open(folder / frame["file_path"]))
        np.testing.assert_array_equal(image, _originals(t, v))
        mask = np.asarray(Image.open(folder / frame["mask_path"]))
        assert mask.shape == (64, 84) and set(np.unique(mask)) <= {0, 255}
        # the moving box, rows 5..9 and columns 8..19 of the model grid, is original rows 14.5..22.5, columns
        # 16.5..38.5 (CROP); the box is moving at time index 0 only
        assert (mask[16:22, 18:38] == 0).all() == (t == 0) and (mask[40:, 50:] == 255).all()
    cloud = trimesh.load(folder / doc["ply_file_path"])
    static = select_points(recon, 0)
    static = static.subset(~static.moving)
    point = np.asarray(cloud.vertices[0], np.float64)
    np.testing.assert_allclose(point, static.xyz[0], rtol=1e-6)
    frame = doc["frames"][static.view[0]]  # time index 0, the first selected point's view
    camera = np.linalg.inv(np.array(frame["transform_matrix"])) @ np.append(point, 1.0)
    x, y, z = np.diag([1, -1, -1]) @ camera[:3]  # back to OpenCV axes
    pixel = [frame["fl_x"] * x / z + frame["cx"], frame["fl_y"] * y / z + frame["cy"]]
    # nerfstudio's coordinates of the pixel's centre: page4d's + 0.5 (its rays pass through i + 0.5)
    np.testing.assert_allclose(pixel, CROP.unmap_pixels(static.pixel[0].astype(np.float64)) + 0.5, atol=1e-3)


def test_nerfstudio_export_needs_the_frames(tmp_path):
    with pytest.raises(ValueError, match="writes the original frames"):
        export(make_recon(), tmp_path / "out", ["nerfstudio"])
    assert not (tmp_path / "out").exists()


def test_export_errors_write_nothing(tmp_path, monkeypatch):
    recon = make_recon()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="choose from ply, glb, colmap, png, nerfstudio"):
        export(recon, out, ["ply", "obj"])
    with pytest.raises(ValueError, match="out of range"):
        export(recon, out, ["glb"], time_index=2)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        export(recon, out, ["png", "glb"], conf_percentile=-1)
    real_find_spec = importlib.util.find_spec
    without_pycolmap = lambda name, *args: None if name == "pycolmap" else real_find_spec(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", without_pycolmap)
    message = 'needs pycolmap, not installed; run pip install "page4d[export]"'
    with pytest.raises(ValueError, match=re.escape(message)):
        export(recon, out, ["png", "colmap"])
    assert not out.exists()
