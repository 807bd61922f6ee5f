"""Refinement when the predicted cameras are too far off (issue 15): pycolmap's mapper on exact tracks, the
fallback on a rendered scene whose cameras are 20° off, and the refusal of an adjustment that rejects most of its
observations (repetitive texture), with the forward pass kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_refine import SIZE, STEPS, VIEWS, K, _errors, _perturbed, _scene

from page4d.data.sources import open_input
from page4d.data.synthetic import SceneConfig, generate_clip, write_clip
from page4d.reconstruction.ground_truth import reconstruction_from_clip
from page4d.reconstruction.rig import camera_errors, fit_cameras
from page4d.reconstruction.runner import reconstruct
from page4d.refine.mapper import register
from page4d.refine.modes import RefineOptions
from page4d.refine.pipeline import refine_reconstruction


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

    def refined(options: RefineOptions | None) -> tuple[dict, np.ndarray]:
        recon = reconstruction_from_clip(clip, size=224)
        recon.extrinsic = _turned(recon.extrinsic, 20.0)
        assert _worst_error(recon.extrinsic, truth) > 20
        return refine_reconstruction(recon, clip, static=True, fixed_poses=False, options=options), recon.extrinsic

    report, extrinsic = refined(None)
    fallback = report["fallback"]
    assert report["method"] == "mapper+ba" and "further than the guided search could follow" in fallback["reason"]
    assert fallback["registered_images"] == fallback["images"] == 8
    agree = fallback["agreeing_observations"]
    assert agree["mapper+ba"] > 1.2 * agree["ba"]
    assert _worst_error(extrinsic, truth) < 1.5
    report, extrinsic = refined(RefineOptions(fallback=False))
    assert report["method"] == "ba" and "fallback" not in report
    assert _worst_error(extrinsic, truth) > 10


def test_an_adjustment_that_rejects_most_observations_is_refused_and_the_forward_pass_kept(tmp_path):
    """Checkerboard walls and floor: guided matches agree on wrong cells, the adjustment rejects most of its
    observations, the mapper's start does no better; the run says so and keeps the forward pass bit for bit."""
    config = SceneConfig(num_times=8, num_views=4, height=336, width=448)
    clip = open_input([write_clip(generate_clip(config, seed=123), tmp_path / "checker")])[0]
    lines: list[str] = []
    refined = reconstruct("page4d-small", clip, progress=False, rig="static", refine="ba", log=lines.append)
    plain = reconstruct("page4d-small", clip, progress=False, rig="static")
    report = refined.meta["refine"]
    assert report["status"] == "skipped"
    assert "observations as outliers (50% or more)" in report["reason"]
    assert "pycolmap's mapper registered no two of the 4 images" in report["reason"]
    assert any(line.startswith("refine: skipped, the result is not refined") for line in lines)
    for name in ("extrinsic", "intrinsic", "depth", "world_points"):
        assert np.array_equal(getattr(refined, name), getattr(plain, name)), name
    assert refined.tracks is None
