"""Training samples: windows and view subsets, jitter, clip samples at the model size, and mixing by weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLE

from page4d.data.layout import load_clip
from page4d.data.preprocess import resample_to_model
from page4d.data.samplers import ClipSamples, WindowSampler, colour_jitter, quarter_turn, zoom
from page4d.data.synthetic import SceneConfig
from page4d.train.config import DataSource, TrainConfig
from page4d.train.trainer import Batches, Trainer

SCENE = SceneConfig(num_times=2, num_views=3, height=98, width=126)


def test_windows_are_consecutive_and_views_distinct():
    sampler = WindowSampler(num_times=2, num_views=3)
    draws = [sampler.draw(np.random.default_rng(i), 5, 4) for i in range(50)]
    for times, views in draws:
        assert times[1] == times[0] + 1 and 0 <= times[0] <= 3 and len(set(views)) == 3 and set(views) <= {0, 1, 2, 3}
    assert len({tuple(v) for _, v in draws}) > 10  # subsets and orders vary
    assert sampler.draw(np.random.default_rng(7), 5, 4) == sampler.draw(np.random.default_rng(7), 5, 4)
    assert WindowSampler(2, 3, permute_views=False).draw(np.random.default_rng(1), 5, 4)[1] == sorted(
        WindowSampler(2, 3, permute_views=False).draw(np.random.default_rng(1), 5, 4)[1])
    with pytest.raises(ValueError, match="needs a clip at least that large, got 1 × 4"):
        sampler.draw(np.random.default_rng(0), 1, 4)


def test_colour_jitter_keeps_range_and_grey():
    images = torch.rand(2, 3, 3, 8, 8)
    assert torch.equal(colour_jitter(images, np.random.default_rng(0), 0.0), images)
    jittered = colour_jitter(images, np.random.default_rng(0), 0.3)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.equal(jittered, images)
    grey = torch.full((1, 3, 4, 4), 0.4)
    out = colour_jitter(grey, np.random.default_rng(1), 0.3)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_clip_samples_are_the_clip_at_the_model_size():
    clip = load_clip(EXAMPLE)
    samples = ClipSamples(clip, width=126)
    assert samples.size == (98, 126) and samples.shape == (3, 4)
    sample = samples.sample([1, 2], [3, 0, 2])
    images, transforms = clip.load_images(mode="crop", target_size=126)
    assert torch.equal(sample["images"], images[1:3][:, [3, 0, 2]])
    expected = resample_to_model(clip.load_depths().numpy()[1:3][:, [3, 0, 2]], transforms[0])
    assert np.array_equal(sample["depth"].numpy(), expected)
    assert torch.equal(sample["intrinsics"], clip.model_intrinsics(transforms)[1:3][:, [3, 0, 2]])
    assert torch.equal(sample["extrinsics"], clip.extrinsics[1:3][:, [3, 0, 2]])
    assert sample["dynamic_mask"].dtype == torch.bool and sample["dynamic_mask"].any()


def test_sources_are_mixed_by_weight_and_reproducibly():
    config = TrainConfig(scene=SCENE, batch_size=1,
                         data=[DataSource(kind="synthetic", weight=1.0), DataSource(kind="clip", path=str(EXAMPLE),
                                                                                    weight=3.0)])
    batches = Batches(config)
    clip_ks = batches.sources[1].intrinsics.flatten(0, 1)

    def is_clip(sample: dict) -> bool:
        return any(torch.equal(sample["intrinsics"][0, 0], k) for k in clip_ks)

    from_clip = [is_clip(batches.sample(step, 0)) for step in range(80)]
    assert 0.6 < np.mean(from_clip) < 0.9  # 3 / 4 expected
    first, again = batches.sample(11, 0), Batches(config).sample(11, 0)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_clip_source_keeps_only_its_time_steps():
    """``start`` / ``frames`` hold time steps out: every sample comes from the kept ones (example ids 08-10)."""
    config = TrainConfig(scene=SceneConfig(num_times=2, num_views=2, height=98, width=126), batch_size=1,
                         data=[DataSource(kind="clip", path=str(EXAMPLE), start=1, frames=2)])
    source = Batches(config).sources[0]
    full = ClipSamples(load_clip(EXAMPLE), 126)
    assert source.shape == (2, 4) and torch.equal(source.images, full.images[1:3])
    assert torch.equal(source.extrinsics, full.extrinsics[1:3])
    with pytest.raises(ValueError, match=r"data\[0\] .*: start 3 / frames None select no time steps of its 3"):
        Batches(TrainConfig(scene=SCENE, data=[DataSource(kind="clip", path=str(EXAMPLE), start=3)]))


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match=r"data\[0\]: kind must be 'synthetic' or 'clip' \(with a path\)"):
        Batches(TrainConfig(scene=SCENE, data=[DataSource(kind="clip")]))
    with pytest.raises(ValueError, match="its images are 98 high, not scene.height 84; set scene.height"):
        Batches(TrainConfig(scene=SceneConfig(height=84, width=126), data=[DataSource(kind="clip", path=str(EXAMPLE))]))
    with pytest.raises(ValueError, match="data weights must be >= 0 with a positive sum"):
        Batches(TrainConfig(scene=SCENE, data=[DataSource(weight=0.0)]))


def test_a_fine_tuning_step_on_a_clip(tmp_path):
    config = TrainConfig(scene=SCENE, data=[DataSource(kind="clip", path=str(EXAMPLE))], jitter=0.1, steps=1)
    values = Trainer(config, tmp_path).train_step()
    assert np.isfinite(values["loss"]) and values["mask_bce"] > 0


def test_zoom_keeps_the_geometry_consistent():
    from page4d.data.synthetic import generate_clip
    from page4d.geometry.unprojection import unproject_depth

    clip = generate_clip(SceneConfig(num_times=2, num_views=2, height=84, width=112), seed=5)
    sample = {k: getattr(clip, k) for k in ("images", "depth", "dynamic_mask", "intrinsics", "extrinsics")}
    zoomed = zoom(sample, np.random.default_rng(3), 1.5)
    assert zoomed["images"].shape == sample["images"].shape and zoomed["dynamic_mask"].dtype == torch.bool
    k, k0 = zoomed["intrinsics"][0, 0].double(), sample["intrinsics"][0, 0].double()
    scale = (k[0, 0] / k0[0, 0]).item()
    assert 1 < scale <= 1.5 and torch.isclose(k[1, 1] / k0[1, 1], k[0, 0] / k0[0, 0])
    # Moving pixels of the zoomed sample, unprojected with the new K, still lie on their spheres (nearest
    # resampling moves a depth by at most half an original pixel, hence the small tolerance).
    points = unproject_depth(zoomed["depth"].flatten(0, 1).double(), zoomed["extrinsics"].flatten(0, 1).double(),
                             zoomed["intrinsics"].flatten(0, 1).double()).double().unflatten(0, (2, 2))
    for t in range(2):
        moving = points[t][zoomed["dynamic_mask"][t]]
        gap = (torch.cdist(moving, clip.sphere_centres[t]) - clip.sphere_radii).abs().min(dim=1).values
        assert len(gap) > 20 and gap.median() < 0.01 and gap.max() < 0.1
    assert zoom(sample, np.random.default_rng(3), 1.0) is sample


@pytest.mark.parametrize("clockwise", [True, False])
def test_quarter_turn_keeps_every_pixel_on_its_world_point(clockwise):
    from page4d.data.synthetic import generate_clip
    from page4d.geometry.unprojection import unproject_depth

    clip = generate_clip(SceneConfig(num_times=1, num_views=3, height=42, width=70, moving_spheres=(1, 1)), seed=2)
    sample = {k: getattr(clip, k) for k in ("images", "depth", "dynamic_mask", "intrinsics", "extrinsics")}
    turned = quarter_turn(sample, clockwise)
    assert turned["images"].shape == (1, 3, 3, 70, 42) and turned["depth"].shape == (1, 3, 70, 42)

    def world(s):  # [V, H, W, 3] world point of every pixel, float64
        return unproject_depth(s["depth"][0].double(), s["extrinsics"][0].double(), s["intrinsics"][0].double())

    # The turned pixel grid, unprojected through the turned cameras, lands on the same world points as the
    # original grid turned the same way (an independent route: the world points, not the cameras, are turned).
    expected = torch.rot90(world(sample), -1 if clockwise else 1, dims=(1, 2))
    hit = torch.rot90(sample["depth"][0] > 0, -1 if clockwise else 1, dims=(1, 2))
    assert hit.float().mean() > 0.9
    assert torch.allclose(world(turned)[hit], expected[hit], atol=1e-4)
    assert torch.equal(turned["dynamic_mask"][0], torch.rot90(sample["dynamic_mask"][0], -1 if clockwise else 1,
                                                              dims=(1, 2)))
    # Still upper-triangular with a positive focal length (a real pinhole), and a rotation in the extrinsics.
    k = turned["intrinsics"][0, 0]
    assert k[1, 0] == 0 and k[2, :2].abs().sum() == 0 and k[0, 0] > 0 and k[1, 1] > 0
    rot = turned["extrinsics"][0, 0, :, :3].double()
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-6) and torch.det(rot) > 0


def test_portrait_steps_stack_one_turned_shape_and_the_rest_are_unchanged():
    plain = Batches(TrainConfig(scene=SCENE, batch_size=2))
    mixed = Batches(TrainConfig(scene=SCENE, batch_size=2, portrait=0.5))
    turned = [s for s in range(12) if mixed.turned(s)]
    assert 0 < len(turned) < 12  # both kinds of step occur
    for step in range(4):
        batch, base = mixed.batch(step), plain.batch(step)
        if step in turned:
            assert batch["images"].shape[-2:] == (126, 98) and batch["depth"].shape[-2:] == (126, 98)
        else:  # a landscape step is exactly the sample a run without portrait steps draws
            assert all(torch.equal(batch[k], base[k]) for k in base)
    assert not any(plain.turned(s) for s in range(50))
