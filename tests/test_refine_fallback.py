"""Refinement when the predicted cameras are too far off (issue 15): pycolmap's mapper on exact tracks, the
fallback on a rendered scene whose cameras are 20° off, the refusal of an adjustment that rejects most of its
observations (repetitive texture) with the forward pass kept; and the predicted depth checking the tracks (a
match off the surface removed) and setting each group's scale."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_refine import SIZE, STEPS, VIEWS, K, _errors, _perturbed, _scene

from page4d.data.sources import open_input
from page4d.data.synthetic import SceneConfig, generate_clip, write_clip
from page4d.reconstruction.ground_truth import reconstruction_from_clip
from page4d.reconstruction.rig import camera_errors, fit_cameras
from page4d.reconstruction.runner import _refined, reconstruct
from page4d.refine import pipeline
from page4d.refine.bundle import BundleOptions, BundleResult, reprojection_errors
from page4d.refine.mapper import register
from page4d.refine.modes import RefineOptions
from page4d.refine.tracks import Tracks


@pytest.mark.parametrize("static", [True, False])
def test_the_mapper_registers_every_image_from_tracks_alone(static):
    """Cameras 60° off say nothing to the mapper: from the tracks alone it registers every image, and once placed
    in the input's world its cameras are the truth within 0.1° (centres within 0.5 % of the ring's radius)."""
    truth, tracks = _scene(seed=8)
    start = np.broadcast_to(_perturbed(truth, degrees=60.0), (STEPS, VIEWS, 3, 4)).copy()
    assert _errors(start, truth)[0] > 40
    found = register(tracks, start, np.broadcast_to(K, (VIEWS, 3, 3)), [SIZE] * VIEWS, static)
    assert found.registered == found.images == (VIEWS if static else STEPS * VIEWS)
    rotation, centre = _errors(found.extrinsic, truth)
    assert rotation < 0.1 and centre < 0.02
    if static:
        assert np.array_equal(found.extrinsic, np.broadcast_to(found.extrinsic[:1], found.extrinsic.shape))
    few = tracks.subset(tracks.point < 5)
    with pytest.raises(ValueError, match="registered no two of the 4 images"):
        register(few, start, np.broadcast_to(K, (VIEWS, 3, 3)), [SIZE] * VIEWS, True)


def _turned(extrinsic: np.ndarray, degrees: float) -> np.ndarray:
    """Each view's camera turned by ``degrees`` about a random axis (the same at every step)."""
    rng, out = np.random.default_rng(0), extrinsic.astype(np.float64).copy()
    for v in range(out.shape[1]):
        axis = rng.normal(size=3)
        out[:, v, :, :3] = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix() @ out[
            :, v, :, :3]
    return out.astype(np.float32)


def _worst_error(extrinsic: np.ndarray, truth: np.ndarray) -> float:
    found, known = extrinsic.astype(np.float64).reshape(-1, 3, 4), truth.reshape(-1, 3, 4)
    return float(camera_errors(found, known, fit_cameras(found, known))[0].max())


def test_cameras_too_far_off_for_the_guided_search_fall_back_to_the_mapper(tmp_path):
    """A rendered 8-camera ring (non-repeating texture) with its true depth and its cameras turned 20° each: the
    guided adjustment turns cameras further than its search can follow, so the fallback matches exhaustively,
    registers all 8 cameras with the mapper, keeps the result the exhaustive matches agree with more, and lands
    within 1.5° of the truth; without the fallback the guided result stays more than 10° off."""
    config = SceneConfig(num_times=2, num_views=8, height=240, width=320, texture="noise", static_boxes=(4, 6),
                         camera_distance=(4.0, 5.0))
    clip = open_input([write_clip(generate_clip(config, seed=12), tmp_path / "ring")])[0]
    truth = clip.extrinsics.numpy().astype(np.float64)

    def refined(options: RefineOptions) -> tuple[dict, np.ndarray, list[str]]:
        recon = reconstruction_from_clip(clip, size=224)
        recon.extrinsic = _turned(recon.extrinsic, 20.0)
        recon.meta["rig"] = {"mode": "static"}
        assert _worst_error(recon.extrinsic, truth) > 20
        lines: list[str] = []
        return _refined(recon, clip, None, options, lines.append), recon.extrinsic, lines

    report, extrinsic, lines = refined(RefineOptions())
    fallback = report["fallback"]
    assert report["method"] == "mapper+ba" and "further than the guided search could follow" in fallback["reason"]
    assert fallback["registered_images"] == fallback["images"] == 8
    assert (f"pycolmap's mapper registered 8 of 8 images in {fallback['models']} model(s), and the mapper+ba result "
            "is kept") in lines[0]
    agree = fallback["agreeing_observations"]
    assert agree["mapper+ba"] > 1.2 * agree["ba"]
    assert _worst_error(extrinsic, truth) < 1.5
    report, extrinsic, _ = refined(RefineOptions(fallback=False))
    assert report["method"] == "ba" and "fallback" not in report
    assert _worst_error(extrinsic, truth) > 10


def test_an_adjustment_that_rejects_most_observations_is_refused_and_the_forward_pass_kept(tmp_path):
    """Checkerboard walls and floor: guided matches agree on wrong cells, so the adjustment is refused (too
    many observations rejected, or too few points left: which guard fires first depends on the model's
    cameras), the mapper's start does no better; the run says so and keeps the forward pass bit for bit."""
    config = SceneConfig(num_times=8, num_views=4, height=336, width=448)
    clip = open_input([write_clip(generate_clip(config, seed=123), tmp_path / "checker")])[0]
    lines: list[str] = []
    refined = reconstruct("page4d-small", clip, progress=False, rig="static", refine="ba", log=lines.append)
    plain = reconstruct("page4d-small", clip, progress=False, rig="static")
    report = refined.meta["refine"]
    assert report["status"] == "skipped"
    assert ("observations as outliers (50% or more)" in report["reason"]
            or "tracked points survive the outlier rejection (at least 30 are needed)" in report["reason"])
    assert "pycolmap's mapper registered no two of the 4 images" in report["reason"]
    assert any(line.startswith("refine: skipped, the result is not refined") for line in lines)
    for name in ("extrinsic", "intrinsic", "depth", "world_points"):
        assert np.array_equal(getattr(refined, name), getattr(plain, name)), name
    assert refined.tracks is None


def test_an_adjustment_that_rejects_half_its_observations_is_refused(monkeypatch):
    """The rejection guard on its own: enough points survive, but half of all observations were rejected."""
    options = RefineOptions()
    points = options.min_points + 10  # one observation each, so observations = points + rejected
    result = BundleResult.__new__(BundleResult)
    result.tracks = SimpleNamespace(num_points=points, point=np.arange(points))
    monkeypatch.setattr(pipeline, "adjust", lambda *args: result)
    recon = SimpleNamespace(intrinsic_original=None, original_sizes=None)
    result.rejected = points - 1  # just under half: accepted
    assert pipeline._solved(recon, None, None, None, options) is result
    result.rejected = points  # half: refused, saying what went wrong
    with pytest.raises(pipeline.RefinementError, match=rf"rejected {points} of {2 * points} observations"):
        pipeline._solved(recon, None, None, None, options)


def _two_view_tracks(tmp_path) -> tuple:
    """A rendered pair of views with its true depth and cameras, and exact tracks: pixels of view 0 that view 1
    sees too (the true depth agrees there), projected into view 1 through the truth."""
    config = SceneConfig(num_times=1, num_views=2, height=120, width=160, texture="noise", moving_spheres=(0, 0))
    clip = open_input([write_clip(generate_clip(config, seed=3), tmp_path / "pair")])[0]
    recon = reconstruction_from_clip(clip, size=154)
    e, k = clip.extrinsics.numpy().astype(np.float64)[0], clip.intrinsics.numpy().astype(np.float64)[0]
    u, _, vt = np.linalg.svd(e[:, :, :3])
    e[:, :, :3] = u @ vt  # float32 rotations are orthonormal to 1e-7 only; centre <-> translation then round-trips
    depth = clip.load_depths(recon.transforms).numpy()[0]
    rng = np.random.default_rng(0)
    xy = np.stack([rng.uniform(5, 155, 4000), rng.uniform(5, 115, 4000)], axis=1)
    grid = np.rint(recon.transforms[0].map_pixels(xy)).astype(np.int64)
    z = depth[0][grid[:, 1].clip(0, depth.shape[1] - 1), grid[:, 0].clip(0, depth.shape[2] - 1)]
    world = ((np.c_[xy, np.ones(len(xy))] @ np.linalg.inv(k[0]).T) * z[:, None] - e[0, :, 3]) @ e[0, :, :3]
    seen = world @ e[1, :, :3].T + e[1, :, 3]
    other = seen @ k[1].T
    other = other[:, :2] / other[:, 2:]
    back = np.rint(recon.transforms[1].map_pixels(other)).astype(np.int64)
    inside = (other >= 5).all(1) & (other[:, 0] < 155) & (other[:, 1] < 115) & (z > 0)
    z1 = depth[1][back[:, 1].clip(0, depth.shape[1] - 1), back[:, 0].clip(0, depth.shape[2] - 1)]
    keep = inside & (np.abs(z1 - seen[:, 2]) < 0.02 * seen[:, 2])  # not hidden in view 1
    xy, other, world = xy[keep][:300], other[keep][:300], world[keep][:300]
    n = len(xy)
    tracks = Tracks(np.repeat(np.arange(n), 2), np.zeros(2 * n, dtype=np.int64), np.tile([0, 1], n),
                    np.stack([xy, other], axis=1).reshape(-1, 2))
    return recon, tracks, world, e, k


def test_a_match_off_the_predicted_surface_is_removed(tmp_path):
    """A two-view match slid along its epipolar line triangulates exactly (no reprojection error shows it) but off
    the surface: the predicted depth disagrees, so the point goes; with the check off it stays."""
    recon, tracks, world, e, k = _two_view_tracks(tmp_path)
    assert tracks.num_points >= 100
    # slide the first track's view-1 pixel along the epipolar line of its view-0 pixel, to a point 2.5x as far
    centre = -e[0, :, :3].T @ e[0, :, 3]
    far = centre + 2.5 * (world[0] - centre)
    pixel = k[1] @ (e[1, :, :3] @ far + e[1, :, 3])
    xy = tracks.xy.copy()
    xy[1] = pixel[:2] / pixel[2]
    wrong = Tracks(tracks.point, tracks.time, tracks.view, xy)
    bundle = BundleOptions(static=True, fixed_poses=True)
    extrinsic = recon.extrinsic.astype(np.float64)
    kept = pipeline._adjusted(recon, wrong, extrinsic, bundle, RefineOptions())
    assert 0 not in set(_sources(kept.tracks, xy))
    assert kept.tracks.num_points == tracks.num_points - 1
    unchecked = pipeline._adjusted(recon, wrong, extrinsic, bundle, RefineOptions(max_depth_disagreement=np.inf))
    assert unchecked.tracks.num_points == tracks.num_points and 0 in set(_sources(unchecked.tracks, xy))


def _sources(kept: Tracks, xy: np.ndarray) -> list[int]:
    """The input track of each kept point, found by its view-1 pixel."""
    rows = np.flatnonzero(kept.view == 1)
    return [int(np.argmin(np.linalg.norm(xy[1::2] - kept.xy[r], axis=1))) for r in rows]


def test_a_group_of_cameras_is_scaled_to_the_predicted_depth(tmp_path):
    """Cameras and points of a result twice the true size (the adjustment leaves a group's scale free): scaled
    to the predicted (here true) depth, the points' depths match it, and every reprojection and rotation is as
    it was."""
    recon, tracks, world, e, k = _two_view_tracks(tmp_path)
    big = e.copy()
    big[:, :, 3] *= 2.0
    result = BundleResult(big[None], k, 2.0 * world, tracks, 0.0, 0.0, 0)
    assert np.nanmedian(pipeline.depth_ratios(recon, result)) == pytest.approx(2.0, rel=1e-3)
    scaled = pipeline.scaled_to_depth(recon, result, static=True)
    ratios = pipeline.depth_ratios(recon, scaled)
    assert np.nanmedian(ratios) == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(scaled.extrinsic[0, :, :, :3], e[:, :, :3], atol=1e-12)
    np.testing.assert_allclose(reprojection_errors(scaled.points, tracks, scaled.extrinsic[0], k),
                               reprojection_errors(result.points, tracks, big, k), atol=1e-9)
