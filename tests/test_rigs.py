"""Real rigs: cameras of different resolutions and aspect ratios in one clip (issue 14, part 1)."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
import torch
from conftest import needs_shared
from PIL import Image
from rigs import RESIZED, mixed_resolution_clip

from page4d.cli.main import main
from page4d.data.layout import load_clip
from page4d.data.rasters import read_depth
from page4d.geometry.unprojection import project_points
from page4d.reconstruction.ground_truth import reconstruction_from_clip
from page4d.reconstruction.record import Reconstruction, restore_intrinsics
from page4d.reconstruction.runner import reconstruct

pytestmark = needs_shared
TIMES = [4, 5, 6]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return mixed_resolution_clip(tmp_path_factory.mktemp("mixed"), TIMES)


def _original_depth(clip, t: int, v: int) -> np.ndarray:
    return read_depth(clip.depth_paths[t][v]) / np.float32(clip.depth_divisor) * np.float32(clip.depth_multiplier)


def _agreement(recon: Reconstruction, clip, source: int, target: int, intrinsic: np.ndarray) -> float:
    """Share of view ``source``'s valid ground-truth points (model grid, time index 1) that, projected with
    ``intrinsic`` (view ``target``'s K at its ORIGINAL resolution) into its original image, land on a pixel whose
    original depth agrees within 2 % (the views overlap only in part, so even exact cameras give 0.2 to 0.7)."""
    points = recon.world_points[1, source][recon.depth_conf[1, source] > 0]
    uv, z = project_points(torch.from_numpy(points[None]).double(),
                           torch.from_numpy(recon.extrinsic[1, target][None]).double(),
                           torch.from_numpy(intrinsic[None]).double())
    uv, z = uv[0].numpy(), z[0].numpy()
    height, width = clip.image_sizes[target]
    u, v = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    seen = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    depth = _original_depth(clip, 1, target)[v[seen], u[seen]]
    close = (depth > 0) & (np.abs(depth - z[seen]) < 0.02 * depth)
    return close.sum() / max((depth > 0).sum(), 1)


def test_each_view_keeps_its_own_resolution_and_k(mixed, tmp_path):
    """Ground truth read from a clip whose views differ in size and aspect ratio, on the model grid: each view's
    model K, mapped back with its own transform, sends the 3-D points of another view onto the pixels of its own
    original depth map as often as in the unmodified capture (both ways, so both views' transforms are checked)."""
    clip = load_clip(mixed)
    assert clip.image_sizes == [(480, 640), (240, 320), (480, 640), (480, 480)]
    recon = reconstruction_from_clip(clip, size=168)
    assert [t.original_size for t in recon.transforms] == clip.image_sizes
    # the square view sets the grid (168 x 168 in crop mode); the 4:3 views are padded above and below
    assert recon.transforms[3].pad_top == 0 and recon.transforms[0].pad_top == 21 and recon.size == (168, 168)
    restored = restore_intrinsics(recon.intrinsic, recon.transforms)
    np.testing.assert_allclose(restored, clip.intrinsics.numpy(), rtol=1e-5, atol=1e-3)
    same = load_clip(mixed_resolution_clip(tmp_path / "same", TIMES, resized={}))
    reference = reconstruction_from_clip(same, size=168)
    for source, target in ((0, 1), (0, 3), (3, 0), (1, 2)):
        base = _agreement(reference, same, source, target, same.intrinsics[1, target].numpy())
        assert base > 0.2 and abs(_agreement(recon, clip, source, target, restored[1, target]) - base) < 0.03
    # one transform for every view (what page4d did before) sends view 0's points to the wrong pixels of view 3
    shared = recon.transforms[0].restore_intrinsics(recon.intrinsic[1, 3])
    exact = _agreement(reference, same, 0, 3, same.intrinsics[1, 3].numpy())
    assert _agreement(recon, clip, 0, 3, shared) < 0.5 * exact


def test_a_mixed_rig_reconstructs_and_every_output_is_per_view(mixed, tmp_path):
    """The CLI on the mixed clip: cameras.json lists each view's size and K at that size, the COLMAP model has a
    camera per view at its resolution, and the library gives the same numbers."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(mixed), "-o", str(out), "--quiet", "--export", "colmap,ply"]) == 0
    cameras = json.loads((out / "cameras.json").read_text())
    sizes = [(640, 480), RESIZED[1], (640, 480), RESIZED[3]]
    assert [(s["width"], s["height"]) for s in cameras["image_sizes"]] == sizes
    recon = Reconstruction.load(out)
    meta = json.loads((out / "meta.json").read_text())
    for v, transform in enumerate(recon.transforms):
        k = transform.restore_intrinsics(recon.intrinsic[:, v].astype(np.float64))
        np.testing.assert_allclose(np.asarray(cameras["K"])[:, v], k, rtol=1e-5, atol=1e-4)
    model = pycolmap.Reconstruction(str(out / "colmap" / "time_05" / "sparse" / "0"))
    for v, (width, height) in enumerate(sizes):  # the step's frames beside the model, each at its own size
        assert Image.open(out / "colmap" / "time_05" / "images" / f"view{v}.png").size == (width, height)
    assert [(model.cameras[i + 1].width, model.cameras[i + 1].height) for i in range(4)] == sizes
    for image in model.images.values():  # every observation inside its own camera's image
        width, height = sizes[image.camera_id - 1]
        uv = np.array([p.xy for p in image.points2D])
        assert len(uv) and (uv >= 0).all() and (uv[:, 0] <= width).all() and (uv[:, 1] <= height).all()
    assert meta["view_names"] == ["view0", "view1", "view2", "view3"]
    with reconstruct("page4d-small", load_clip(mixed), progress=False) as library:
        np.testing.assert_array_equal(library.extrinsic, recon.extrinsic)
        np.testing.assert_array_equal(library.intrinsic_original, recon.intrinsic_original)
