"""Rig calibration readers: TOML (anipose / Pose2Sim) and COLMAP models round-trip the cameras they were written
from, COLMAP's half-pixel offset is undone, and broken calibrations are refused naming the camera."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
import rigs
from conftest import EXAMPLE, example_truth
from scipy.spatial.transform import Rotation

from page4d.data.calibration import match_cameras, read_calibration, read_colmap, rodrigues
from page4d.export.colmap import write_colmap

CAMERAS = json.loads((EXAMPLE / "cameras.json").read_text())
SIZE = (CAMERAS["image_size"]["width"], CAMERAS["image_size"]["height"])
DISTORTION = [[-0.12, 0.03, 0.001, -0.002], [0.05, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-0.3, 0.1, 0.0, 0.004]]


def example_cameras() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, K, world-to-camera) of the example's four cameras at its first time step."""
    return [(f"view{v}", np.array(CAMERAS["K"][0][i]), np.array(CAMERAS["E_w2c"][0][i]))
            for i, v in enumerate(CAMERAS["view_ids"])]


def write_toml(path, cameras, **overrides) -> None:
    """The example's cameras as an anipose calibration, with this file's distortions."""
    rigs.write_toml(path, cameras, SIZE, DISTORTION[: len(cameras)], **overrides)


def test_rodrigues_matches_scipy():
    gen = np.random.default_rng(0)
    for vector in [*gen.normal(size=(5, 3)), np.zeros(3), np.array([np.pi, 0.0, 0.0])]:
        assert np.allclose(rodrigues(vector), Rotation.from_rotvec(vector).as_matrix(), atol=1e-12)


def test_toml_round_trips_the_cameras_it_was_written_from(tmp_path):
    write_toml(tmp_path / "calibration.toml", example_cameras())
    read = read_calibration(tmp_path / "calibration.toml")
    assert [c.name for c in read] == ["view0", "view1", "view2", "view3"]
    for camera, (_, k, w2c), distortion in zip(read, example_cameras(), DISTORTION, strict=True):
        assert camera.size == SIZE and np.array_equal(camera.intrinsic, k)
        assert np.allclose(camera.extrinsic, w2c, atol=1e-9) and np.array_equal(camera.distortion, distortion)


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_models_round_trip_with_the_half_pixel_offset_undone(tmp_path, binary):
    model = pycolmap.Reconstruction()
    for index, (name, k, w2c) in enumerate(example_cameras(), start=1):
        params = [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5, *DISTORTION[index - 1]]
        model.add_camera_with_trivial_rig(pycolmap.Camera(model="OPENCV", width=SIZE[0], height=SIZE[1],
                                                          params=params, camera_id=index))
        image = pycolmap.Image(name=f"{name}.jpg", camera_id=index, image_id=index)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:, :3]), w2c[:, 3]))
    (model.write_binary if binary else model.write_text)(str(tmp_path))
    read = read_calibration(tmp_path)
    assert [c.name for c in read] == ["view0", "view1", "view2", "view3"]
    for camera, (_, k, w2c), distortion in zip(read, example_cameras(), DISTORTION, strict=True):
        assert camera.size == SIZE and np.allclose(camera.intrinsic, k, atol=1e-12)
        assert np.allclose(camera.extrinsic, w2c, atol=1e-9) and np.allclose(camera.distortion, distortion)


def test_page4d_s_own_colmap_export_reads_back_as_its_cameras(tmp_path):
    """The COLMAP model ``page4d reconstruct`` writes is a calibration page4d reads: the same K and poses."""
    recon = example_truth(112)
    write_colmap(recon, tmp_path, 1, max_points=100)
    read = read_colmap(tmp_path)
    assert [c.name for c in read] == [f"view{v}" for v in recon.view_ids]
    for v, camera in enumerate(read):
        assert camera.size == (recon.original_sizes[v][1], recon.original_sizes[v][0])
        assert np.allclose(camera.intrinsic, recon.intrinsic_original[1, v], atol=1e-4)
        assert np.allclose(camera.extrinsic, recon.extrinsic[1, v], atol=1e-5)
        assert np.array_equal(camera.distortion, np.zeros(4))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"translation": "[0.0, nan, 1.0]"}, r"\[cam_0\]: the calibration of camera 'view0' contains NaN or Inf"),
        ({"matrix": "[[-500.0, 0, 320], [0, 500, 240], [0, 0, 1]]"}, "needs a pinhole K .* with fx, fy > 0"),
        ({"matrix": "[[500.0, 3, 320], [0, 500, 240], [0, 0, 1]]"}, "needs a pinhole K"),
        ({"size": "[640]"}, r"size \(\[width, height\]\) must have shape \[2\], got \[1\]"),
        ({"size": "[640.5, 480]"}, "size must be .* in whole pixels"),
        ({"rotation": "[0.1, 0.2]"}, r"rotation \(a Rodrigues vector\) must have shape \[3\]"),
        ({"distortions": "[0.1, 0.0, 0.0, 0.0, 0.3]"}, "higher-order terms are not supported"),
    ],
)
def test_broken_toml_cameras_are_refused_naming_them(tmp_path, overrides, match):
    write_toml(tmp_path / "calibration.toml", example_cameras()[:1], **overrides)
    with pytest.raises(ValueError, match=match):
        read_calibration(tmp_path / "calibration.toml")


def test_unreadable_or_foreign_calibrations_say_what_page4d_reads(tmp_path):
    (tmp_path / "bad.toml").write_text("[cam_0\nname = ")
    with pytest.raises(ValueError, match=r"bad\.toml: not valid TOML"):
        read_calibration(tmp_path / "bad.toml")
    (tmp_path / "empty.toml").write_text('[metadata]\nadjusted = false\n')
    with pytest.raises(ValueError, match=r"empty\.toml: no camera tables"):
        read_calibration(tmp_path / "empty.toml")
    (tmp_path / "partial.toml").write_text('[cam_0]\nname = "a"\nsize = [640, 480]\n')
    with pytest.raises(ValueError, match=r"\[cam_0\]: missing matrix, rotation, translation"):
        read_calibration(tmp_path / "partial.toml")
    (tmp_path / "calibration.yaml").write_text("cameras: []\n")
    with pytest.raises(ValueError, match="not a calibration page4d reads; give an anipose / Pose2Sim .toml"):
        read_calibration(tmp_path / "calibration.yaml")
    with pytest.raises(ValueError, match="no such calibration file or folder"):
        read_calibration(tmp_path / "missing.toml")
    fisheye = pycolmap.Reconstruction()
    fisheye.add_camera_with_trivial_rig(pycolmap.Camera(model="OPENCV_FISHEYE", width=64, height=48,
                                                        params=[50, 50, 32, 24, 0.1, 0, 0, 0], camera_id=1))
    fisheye.add_image_with_trivial_frame(pycolmap.Image(name="cam.png", camera_id=1, image_id=1),
                                         pycolmap.Rigid3d())
    (tmp_path / "fisheye").mkdir()
    fisheye.write_text(str(tmp_path / "fisheye"))
    with pytest.raises(ValueError, match="COLMAP camera model OPENCV_FISHEYE is not supported"):
        read_calibration(tmp_path / "fisheye")


def test_cameras_match_views_by_name_else_by_order(tmp_path):
    write_toml(tmp_path / "calibration.toml", example_cameras())
    cameras = read_calibration(tmp_path / "calibration.toml")
    shuffled = ["view2", "view0", "view3", "view1"]
    matched, note = match_cameras(cameras, shuffled)
    assert [c.name for c in matched] == shuffled
    assert note == "cameras matched by name: view2 -> view2, view0 -> view0, view3 -> view3, view1 -> view1"
    matched, note = match_cameras(cameras, ["left", "right", "top", "back"])
    assert [c.name for c in matched] == ["view0", "view1", "view2", "view3"]
    assert note.startswith("cameras matched by order (no camera is named like a view): view0 -> left, ")


@pytest.mark.parametrize(
    ("views", "match"),
    [
        (["view0", "view1", "view2"], r"has 4 camera\(s\) \(view0, view1, view2, view3\) for 3 view\(s\)"),
        (["view0", "view1", "view2", "view3", "view4"], r"for 5 view\(s\)"),
        (["view0", "view1", "side", "view3"], r"camera\(s\) view2 match no view \(view0, view1, side, view3\)"),
    ],
)
def test_camera_and_view_mismatches_are_refused(tmp_path, views, match):
    write_toml(tmp_path / "calibration.toml", example_cameras())
    with pytest.raises(ValueError, match=match):
        match_cameras(read_calibration(tmp_path / "calibration.toml"), views, "calibration.toml")


def test_cameras_json_of_a_clip_or_a_reconstruction_is_a_calibration(tmp_path):
    """The clip layout's cameras.json (a static rig: one pose per camera) and a reconstruction's (named views) read
    as calibrations; poses that change over time are kept per time step, K that changes is refused."""
    read = read_calibration(EXAMPLE)  # a folder holding a cameras.json
    assert [c.name for c in read] == ["view0", "view1", "view2", "view3"]
    for camera, (_, k, w2c) in zip(read, example_cameras(), strict=True):
        assert camera.size == SIZE and np.array_equal(camera.intrinsic, k) and np.array_equal(camera.extrinsic, w2c)
        assert camera.time_ids is None and not camera.has_lens_distortion
    recon = example_truth(112)
    recon.meta["view_names"] = ["left", "right", "top", "back"]
    (tmp_path / "recon").mkdir()
    recon.save(tmp_path / "recon")
    read = read_calibration(tmp_path / "recon" / "cameras.json")
    assert [c.name for c in read] == ["left", "right", "top", "back"]
    assert np.allclose(read[2].intrinsic, recon.intrinsic_original[0, 2], atol=1e-5)
    moving = json.loads((EXAMPLE / "cameras.json").read_text())
    moving["E_w2c"][1][2][0][3] += 0.25
    (tmp_path / "moving.json").write_text(json.dumps(moving))
    camera = read_calibration(tmp_path / "moving.json")[2]
    assert camera.time_ids == tuple(moving["time_ids"]) and camera.extrinsic.shape == (len(moving["time_ids"]), 3, 4)
    assert camera.extrinsic[1, 0, 3] == moving["E_w2c"][1][2][0][3]
    assert read_calibration(tmp_path / "moving.json")[0].time_ids is None  # the cameras that stay keep one pose
    moving["K"][1][0][0][0] *= 1.1
    (tmp_path / "zoom.json").write_text(json.dumps(moving))
    with pytest.raises(ValueError, match="camera view0: K changes over time"):
        read_calibration(tmp_path / "zoom.json")


def test_a_calibration_for_another_resolution_is_rescaled_only_at_the_same_aspect_ratio():
    camera = read_calibration(EXAMPLE)[1]
    half = camera.fitted_to(SIZE[1] // 2, SIZE[0] // 2)
    assert half.size == (SIZE[0] // 2, SIZE[1] // 2)
    np.testing.assert_allclose(half.intrinsic, rigs.scaled_intrinsic(camera.intrinsic, SIZE, half.size), atol=1e-12)
    assert np.array_equal(camera.fitted_to(SIZE[1], SIZE[0]).intrinsic, camera.intrinsic)
    with pytest.raises(ValueError, match=rf"camera 'view1' is calibrated for {SIZE[0]}x{SIZE[1]} images but its "
                                         rf"frames are {SIZE[0]}x{SIZE[0]}, another aspect ratio"):
        camera.fitted_to(SIZE[0], SIZE[0])
