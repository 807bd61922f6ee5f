"""The generator's variety options: rig families, frames, per-camera fields of view, walkers and moving boxes,
photographic and procedural textures, lighting and the presets. Geometry is checked against closed-form surfaces
and, for "the mask is the nearest moving surface", against an independent sphere tracer."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from page4d.data import textures
from page4d.data.scene_config import RIG_FAMILIES
from page4d.data.synthetic import SCENE_PRESETS, SceneConfig, generate_clip, scene_preset
from page4d.data.synthetic_objects import PARTS_PER_WALKER, yaw_matrix
from page4d.data.synthetic_rigs import draw_rig, look_at
from page4d.geometry.unprojection import unproject_depth

SMALL = dict(num_times=2, num_views=3, height=36, width=48)
OBJECTS = dict(walkers=(2, 2), moving_boxes=(2, 2), moving_spheres=(1, 1), static_boxes=(2, 2))


def world_points(clip) -> torch.Tensor:
    """``[T, V, H, W, 3]`` float64 points unprojected from the rendered depth through the rendered K and [R | t]."""
    points = unproject_depth(clip.depth.flatten(0, 1).double(), clip.extrinsics.flatten(0, 1).double(),
                             clip.intrinsics.flatten(0, 1).double())
    return points.unflatten(0, clip.depth.shape[:2]).double()


def rigs(config: SceneConfig, seeds: range = range(12)):
    """The drawn rig of each seed (no rendering)."""
    return [draw_rig(config, torch.Generator().manual_seed(seed)) for seed in seeds]


def centres_of(rig) -> torch.Tensor:
    """``[V, 3]`` camera centres ``-Rᵀ t``."""
    rot, trans = rig.extrinsics[:, :, :3], rig.extrinsics[:, :, 3:]
    return -(rot.transpose(1, 2) @ trans)[..., 0]


# --- surfaces in closed form (numpy, float64): signed distances --------------------------------------------------


def segment_distance(points: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``[N, P]`` distance of each point to each segment ``ends [P, 2, 3]``."""
    a, axis = ends[:, 0], ends[:, 1] - ends[:, 0]
    rel = points[:, None] - a[None]
    fraction = np.clip((rel * axis).sum(-1) / np.maximum((axis * axis).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(rel - fraction[..., None] * axis, axis=-1)


def box_distance(points: np.ndarray, centre: np.ndarray, half: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """``[N]`` signed distance to the box ``centre ± half`` of frame ``turn`` (box → world)."""
    q = np.abs((points - centre) @ turn) - half
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def scene_distances(clip, config: SceneConfig, t: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` signed distances of ``points [N, 3]`` to every surface of the scene at time ``t`` and ``[K]``
    bool: which surfaces move."""
    columns, moving = [np.abs(points[:, 2])], [False]  # the floor z = 0
    above = np.maximum.reduce([-points[:, 2], np.zeros(len(points)), points[:, 2] - config.wall_height])
    for axis in (0, 1):  # the walls: strips x, y = ±room, 0 <= z <= wall_height
        for side in (-1, 1):
            columns.append(np.hypot(points[:, axis] - side * config.room, above))
            moving.append(False)
    for low, high in clip.static_boxes.numpy():
        columns.append(box_distance(points, (low + high) / 2, (high - low) / 2, np.eye(3)))
        moving.append(False)
    for centre, radius in zip(clip.sphere_centres[t].numpy(), clip.sphere_radii.numpy(), strict=True):
        columns.append(np.linalg.norm(points - centre, axis=1) - radius)
        moving.append(True)
    movers = clip.movers
    if movers.capsule_radii.numel():
        parts = segment_distance(points, movers.capsules[t].numpy()) - movers.capsule_radii.numpy()
        columns += list(parts.T)
        moving += [True] * parts.shape[1]
    turns = yaw_matrix(movers.box_yaws[t]).numpy()
    for m in range(movers.boxes):
        columns.append(box_distance(points, movers.box_centres[t, m].numpy(), movers.box_half_sizes[m].numpy(),
                                    turns[m]))
        moving.append(True)
    return np.stack(columns, 1), np.array(moving)


def sphere_trace(origin: np.ndarray, directions: np.ndarray, distances, steps: int = 4000
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters ``[N]`` of the first surface along unit ``directions`` (inf: escaped) by sphere tracing
    (step by the distance to the nearest surface), and ``[N]`` bool: converged either way."""
    along = np.zeros(len(directions))
    done = np.zeros(len(directions), dtype=bool)
    hit = np.zeros(len(directions), dtype=bool)
    for _ in range(steps):
        active = np.flatnonzero(~done)
        if not len(active):
            break
        gap = distances(origin + along[active, None] * directions[active]).min(1)
        along[active] += gap
        close, far = gap < 1e-9 * (1 + along[active]), along[active] > 80
        hit[active[close]] = True
        done[active[close | far]] = True
    return np.where(hit, along, np.inf), done


# --- rig families --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", RIG_FAMILIES)
def test_every_family_looks_at_the_shared_centre_within_the_jitter(family):
    config = SceneConfig(num_views=6, rig_families=(family,), look_at_jitter=0.5, roll_deg=6.0)
    centre = torch.tensor([0.0, 0.0, config.look_at_height], dtype=torch.float64)
    rolls = []
    for rig in rigs(config):
        rot = rig.extrinsics[:, :, :3]
        assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(rot), atol=1e-9)
        cams, forward = centres_of(rig), rot[:, 2]
        # the optical axis passes within the look-at jitter (x, y up to ±0.5 each) of the shared centre
        rel = centre - cams
        miss = (rel - (rel * forward).sum(1, keepdim=True) * forward).norm(dim=1)
        assert (miss <= config.look_at_jitter * math.sqrt(2) + 1e-6).all() and (rel * forward).sum(1).min() > 0
        assert (cams[:, :2].abs() < config.room).all()  # inside the walls, which are opaque
        unrolled = torch.stack([look_at(c, c + f)[:, :3] for c, f in zip(cams, forward, strict=True)])
        cos = (unrolled[:, 0] * rot[:, 0]).sum(1).clamp(-1, 1)
        rolls.append(torch.rad2deg(torch.acos(cos)))
    rolls = torch.cat(rolls)
    assert rolls.max() <= config.roll_deg + 1e-6 and rolls.max() > 0.5 * config.roll_deg  # rolls drawn, bounded


def test_ring_keeps_one_camera_per_sector():
    config = SceneConfig(num_views=5)
    for rig in rigs(config):
        cams = centres_of(rig)
        azimuth = torch.atan2(cams[:, 1], cams[:, 0]).remainder(2 * math.pi) / (2 * math.pi / config.num_views)
        sector = torch.arange(config.num_views, dtype=torch.float64)
        assert ((azimuth - sector + 2.5).remainder(config.num_views) - 2.5).abs().max() <= 0.3 + 1e-9
        distance = cams[:, :2].norm(dim=1)
        assert (distance >= 3.0 - 1e-9).all() and (distance <= 4.5 + 1e-9).all()


def test_arc_spans_a_partial_arc_within_its_bounds():
    config = SceneConfig(num_views=6, rig_families=("arc",), arc_span_deg=(60.0, 150.0))
    extents = []
    for rig in rigs(config, range(30)):
        cams = centres_of(rig)
        azimuth = torch.atan2(cams[:, 1], cams[:, 0])
        middle = torch.atan2(azimuth.sin().mean(), azimuth.cos().mean())
        offset = (azimuth - middle + math.pi).remainder(2 * math.pi) - math.pi
        extents.append(math.degrees(float(offset.max() - offset.min())))
    # one camera per span / V slot (±30 % of a slot): the extent is at least (V - 1.6) / V of the smallest span
    assert max(extents) <= 150.0 and min(extents) >= 60.0 * (6 - 1.6) / 6
    assert max(extents) - min(extents) > 30  # spans differ between scenes


def test_stereo_pairs_have_a_small_baseline_within_and_a_large_one_between_pairs():
    config = SceneConfig(num_views=6, rig_families=("stereo_pairs",), stereo_baseline=(0.1, 0.3))
    for rig in rigs(config):
        cams = centres_of(rig)
        pairs = cams.view(3, 2, 3)
        within = (pairs[:, 0] - pairs[:, 1]).norm(dim=1)
        assert (within >= 0.1 - 1e-9).all() and (within <= 0.3 + 1e-9).all()
        assert torch.allclose(pairs[:, 0, 2], pairs[:, 1, 2], atol=1e-9)  # side by side
        gaps = torch.cdist(pairs[:, 0], pairs[:, 0]) + torch.eye(3, dtype=torch.float64) * 1e9
        assert gaps.min() > 10 * 0.3  # pairs on a ring of radius >= 3, one per third
        # the two cameras see almost the same thing: their optical axes differ by little
        forward = rig.extrinsics[:, 2, :3].view(3, 2, 3)
        assert ((forward[:, 0] * forward[:, 1]).sum(1) > math.cos(math.radians(25))).all()


def test_an_odd_number_of_views_leaves_the_last_camera_alone():
    rig = rigs(SceneConfig(num_views=5, rig_families=("stereo_pairs",)), range(1))[0]
    cams = centres_of(rig)
    assert cams.shape == (5, 3) and (cams[4] - cams[:4]).norm(dim=1).min() > 1.0


def test_mixed_heights_and_domes_spread_their_cameras_up_and_look_down_steeply():
    for config, heights in ((SceneConfig(num_views=4, rig_families=("mixed_heights",), mixed_height=(0.3, 4.0)),
                             (0.3, 4.0)),
                            (SceneConfig(num_views=4, rig_families=("dome",), dome_elevation_deg=(20.0, 70.0)), None)):
        for rig in rigs(config):
            cams = centres_of(rig)
            rel = cams - torch.tensor([0.0, 0.0, config.look_at_height], dtype=torch.float64)
            if heights is not None:  # one camera per quarter of the height range
                low, high = heights
                assert cams[:, 2].min() >= low and cams[:, 2].max() <= high
                assert cams[:, 2].max() - cams[:, 2].min() >= (high - low) * 2 / 4
            else:  # one camera per quarter of the elevation range, on the dome's sphere
                elevation = torch.rad2deg(torch.asin(rel[:, 2] / rel.norm(dim=1)))
                assert elevation.min() >= 20 - 1e-6 and elevation.max() <= 70 + 1e-6
                assert elevation.max() - elevation.min() >= 50 * 2 / 4
                assert (rel.norm(dim=1) >= 3.0 - 1e-9).all() and (rel.norm(dim=1) <= 4.5 + 1e-9).all()
            pitch = torch.rad2deg(torch.asin(-rig.extrinsics[:, 2, 2]))  # forward's downward component
            assert pitch.max() > (45 if heights is None else 25) and pitch.max() - pitch.min() > 15


def test_wide_baselines_keep_every_two_cameras_far_apart():
    for views in (2, 4, 6):
        config = SceneConfig(num_views=views, rig_families=("wide_baseline",), wide_distance=(4.5, 5.5))
        for rig in rigs(config):
            cams = centres_of(rig)
            distance = cams[:, :2].norm(dim=1)
            assert (distance >= 4.5 - 1e-9).all() and (distance <= 5.5 + 1e-9).all()
            gaps = torch.cdist(cams, cams) + torch.eye(views, dtype=torch.float64) * 1e9
            assert gaps.min() >= 2 * 4.5 * math.sin(0.8 * math.pi / views) - 1e-9


def test_several_families_are_drawn_per_scene_and_only_those():
    config = SceneConfig(rig_families=("arc", "dome", "wide_baseline"))
    assert {rig.family for rig in rigs(config, range(40))} == {"arc", "dome", "wide_baseline"}
    assert SceneConfig(rig_families="dome").rig_families == ("dome",)  # ``rig_families: dome`` in YAML
    with pytest.raises(ValueError, match="rig_families"):
        SceneConfig(rig_families=("ring", "spiral"))


# --- frames and fields of view -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["uniform", "log_focal"])
def test_fields_of_view_are_drawn_per_camera_from_wide_to_tele(sampling):
    config = SceneConfig(num_views=6, fov_deg=(30.0, 90.0), fov_sampling=sampling)
    fovs = []
    for rig in rigs(config, range(40)):
        fov = torch.rad2deg(2 * torch.atan(rig.width / 2 / rig.intrinsics[:, 0, 0]))
        assert (fov >= 30 - 1e-6).all() and (fov <= 90 + 1e-6).all()
        assert len(set(fov.tolist())) == config.num_views  # every camera its own
        assert torch.equal(rig.intrinsics[:, 0, 0], rig.intrinsics[:, 1, 1])
        fovs.append(fov)
    fovs = torch.cat(fovs)
    assert fovs.min() < 36 and fovs.max() > 84  # the whole range is used
    if sampling == "log_focal":  # as many tele as wide cameras: the median focal length is the geometric mean
        focal = 1 / torch.tan(torch.deg2rad(fovs) / 2)
        middle = math.sqrt(1 / math.tan(math.radians(15)) / math.tan(math.radians(45)))
        assert abs(float(focal.median()) / middle - 1) < 0.15


def test_portrait_frames_are_upright_and_their_depth_reprojects_exactly():
    config = SceneConfig(**SMALL, orientation="portrait", texture="noise", moving_spheres=(0, 0))
    clip = generate_clip(config, seed=3)
    assert clip.images.shape[-2:] == (48, 36) and clip.depth.shape[-2:] == (48, 36)
    k = clip.intrinsics[0, 0]
    assert (float(k[0, 2]), float(k[1, 2])) == (17.5, 23.5)
    points = world_points(clip)
    p = points[clip.depth > 0].numpy()
    assert np.abs(scene_distances(clip, config, 0, p)[0]).min(1).max() < 1e-4  # every pixel on some surface
    shapes = {generate_clip(dataclasses.replace(config, orientation="random", num_times=1, num_views=1), s)
              .images.shape[-2:] for s in range(8)}
    assert shapes == {(48, 36), (36, 48)}
    swapped = dataclasses.replace(config, orientation="landscape", height=48, width=36, num_times=1, num_views=1)
    assert generate_clip(swapped, 0).images.shape[-2:] == (36, 48)


# --- walkers and moving boxes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def movers_clip():
    config = SceneConfig(**SMALL, **OBJECTS, rig_families=("mixed_heights",), texture="noise", lighting=True)
    return config, generate_clip(config, seed=4)


def test_moving_pixels_lie_exactly_on_walker_parts_spheres_or_moving_boxes(movers_clip):
    config, clip = movers_clip
    points = world_points(clip)
    kinds = set()
    for t in range(config.num_times):
        distances, moving = scene_distances(clip, config, t, points[t][clip.dynamic_mask[t]].numpy())
        on_moving = np.abs(distances[:, moving])
        assert on_moving.min(1).max() < 1e-4  # each moving pixel is on a moving surface
        kinds |= set(np.unique(on_moving.argmin(1)).tolist())
        static, _ = scene_distances(clip, config, t, points[t][(clip.depth[t] > 0) & ~clip.dynamic_mask[t]].numpy())
        assert np.abs(static[:, ~moving]).min(1).max() < 1e-4
    # the spheres (column 0), parts of both walkers and both boxes are all seen somewhere
    walker_columns = range(1, 1 + 2 * PARTS_PER_WALKER)
    assert 0 in kinds and kinds & set(walker_columns) and {13, 14} & kinds


def test_the_dynamic_mask_is_the_nearest_moving_surface_by_independent_sphere_tracing(movers_clip):
    config, clip = movers_clip
    mismatched = unconverged = 0
    for t, v in ((0, 0), (1, 2)):
        ext, k = clip.extrinsics[t, v].double().numpy(), clip.intrinsics[t, v].double().numpy()
        rows, cols = np.mgrid[0:config.height, 0:config.width]
        pixels = np.stack([cols.ravel(), rows.ravel(), np.ones(rows.size)], 1)
        rays = pixels @ np.linalg.inv(k).T @ ext[:, :3]
        origin = -ext[:, :3].T @ ext[:, 3]
        length = np.linalg.norm(rays, axis=1)
        surfaces = functools.partial(scene_distances, clip, config, t)
        along, done = sphere_trace(origin, rays / length[:, None], lambda p, surfaces=surfaces: surfaces(p)[0])
        unconverged += int((~done).sum())
        hit = done & np.isfinite(along)
        distances, moving = scene_distances(clip, config, t, origin + along[hit, None] * rays[hit] / length[hit, None])
        nearest = np.sort(np.abs(distances), 1)
        clear = nearest[:, 1] > 1e-5  # not where two surfaces meet (a foot on the floor): either answer is right
        traced_moving = moving[np.abs(distances).argmin(1)]
        mask = clip.dynamic_mask[t, v].numpy().ravel()[hit]
        mismatched += int((traced_moving != mask)[clear].sum())
        depth = clip.depth[t, v].numpy().ravel()
        assert np.abs(depth[hit][clear] - (along[hit] / length[hit])[clear]).max() < 1e-4 * 20
        assert ((depth == 0) == ~hit)[done].all()  # sky where the tracer escapes
        assert clear.mean() > 0.98
    assert mismatched == 0 and unconverged < 0.01 * 2 * config.height * config.width


def test_walkers_are_rigid_human_scale_figures_that_walk():
    config = SceneConfig(num_times=8, num_views=1, height=14, width=14, walkers=(1, 1), walker_height=(1.7, 1.7))
    movers = generate_clip(config, seed=5).movers
    parts, radii = movers.capsules, movers.capsule_radii                     # [T, 6, 2, 3], [6]
    length = (parts[:, :, 1] - parts[:, :, 0]).norm(dim=-1)
    assert torch.allclose(length, length[0].expand_as(length), atol=1e-9)  # limbs keep their length
    top = (parts[..., 2].amax(-1) + radii).amax(-1)
    bottom = (parts[..., 2].amin(-1) - radii).amin(-1)
    assert (top <= 1.7 * 0.995 + 1e-9).all() and (top > 0.93 * 1.7).all()  # the head's top near its stature
    assert torch.allclose(bottom, torch.zeros_like(bottom), atol=1e-9)  # its feet on the floor
    assert top.max() - top.min() > 0.005  # the pelvis bobs as the legs swing
    torso = parts[:, 0].mean(1)
    assert (torso[1:, :2] - torso[:-1, :2]).norm(dim=-1).min() > 0.04  # it walks ...
    assert ((torso[:, :2].abs() <= config.moving_area + 1e-9).all())  # ... within its area
    legs = parts[:, 2:4, 1] - parts[:, 2:4, 0]
    swing = torch.atan2((legs[..., :2] ** 2).sum(-1).sqrt(), -legs[..., 2])
    assert swing.max() - swing.min() > 0.2  # ... swinging its legs


# --- textures and lighting -----------------------------------------------------------------------------------------


def along_a_line(photo: bool, tile: int) -> torch.Tensor:
    """``[384]`` float64 grey level of one library tile placed on the floor at scale 1 (6 units wide), read along
    a slanting line of 6 units that stays inside the tile."""
    placement = textures.SurfaceTextures(
        photo=torch.tensor([photo]), tile=torch.tensor([tile]),
        transform=torch.diag(torch.tensor([1 / 6, 1 / 3], dtype=torch.float64))[None],
        offset=torch.zeros(1, 2, dtype=torch.float64), tint=torch.ones(1, 3, dtype=torch.float64),
        texels_per_unit=torch.tensor([textures.TILE_WIDTH / 6.0], dtype=torch.float64))
    x = torch.linspace(0.02, 5.98, 384, dtype=torch.float64)
    points = torch.stack([x, 0.37 * x + 0.2, torch.zeros_like(x)], 1)
    normals = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(points)
    slot = torch.zeros(384, dtype=torch.long)
    return textures.albedo(placement, slot, points, normals, torch.full((384,), 0.01)).mean(1)


def autocorrelation(signal: torch.Tensor, lags: range) -> torch.Tensor:
    centred = (signal - signal.mean()) / signal.std()
    return torch.stack([(centred[:-lag] * centred[lag:]).mean() for lag in lags])


def recurrence(signal: torch.Tensor) -> float:
    """How strongly ``signal`` comes back to itself: the largest autocorrelation at lags (up to two thirds of it)
    past the first one where it has decorrelated (below 0.2). Near 1 for a repeating pattern; a signal that never
    decorrelates counts as repeating (1)."""
    correlation = autocorrelation(signal, range(1, 2 * len(signal) // 3))
    below = (correlation < 0.2).nonzero()
    return 1.0 if not len(below) else float(correlation[int(below[0]):].max())


def test_photographs_and_organic_materials_do_not_repeat():
    photos = textures.photo_library()
    tiles = [(True, k) for k in range(photos.count if photos is not None else 0)]
    organic = ("stone", "marble", "cobbles", "concrete", "foliage")  # bricks, weaves and wood rings nearly repeat
    tiles += [(False, k) for k, name in enumerate(textures.procedural_library().names) if name in organic]
    for photo, tile in tiles:
        signal = along_a_line(photo, tile)
        assert signal.std() > 0.01 and recurrence(signal) < 0.5, (photo, tile)
    # against a pattern that does repeat: the checkered floor along the same line
    x = torch.linspace(0.02, 5.98, 384, dtype=torch.float64)
    assert recurrence(torch.floor(torch.stack([x, 0.37 * x + 0.2], 1) / 0.5).sum(1).remainder(2)) > 0.7


@pytest.mark.parametrize("texture", ["photo", "procedural"])
def test_textures_stick_to_their_surfaces_across_views(texture):
    """A static point seen by both cameras of a stereo pair has the same colour in both (the fixed light depends
    on the surface only): textures are painted on the world, not on the image, so views can be matched."""
    config = SceneConfig(num_times=1, num_views=2, height=84, width=112, texture=texture, moving_spheres=(0, 0),
                         rig_families=("stereo_pairs",))
    clip = generate_clip(config, seed=2)
    points = world_points(clip)[0, 0][clip.depth[0, 0] > 0]
    colours = clip.images[0, 0].permute(1, 2, 0)[clip.depth[0, 0] > 0]
    ext, k = clip.extrinsics[0, 1].double(), clip.intrinsics[0, 1].double()
    cam = points @ ext[:, :3].T + ext[:, 3]
    uv = cam @ k.T
    u, v = (uv[:, 0] / uv[:, 2]).round().long(), (uv[:, 1] / uv[:, 2]).round().long()
    inside = (cam[:, 2] > 0) & (u >= 0) & (u < config.width) & (v >= 0) & (v < config.height)
    seen = inside.clone()
    seen[inside] = (clip.depth[0, 1][v[inside], u[inside]].double() - cam[inside, 2]).abs() < 0.01 * cam[inside, 2]
    other = clip.images[0, 1].permute(1, 2, 0)[v[seen], u[seen]]
    gap = (colours[seen] - other).abs().mean(1)
    assert seen.sum() > 3000 and colours[seen].std() > 0.05
    # up to a pixel's rounding and a different mip blend at the other distance
    assert gap.median() < 0.015 and gap.quantile(0.9) < 0.08  # a shuffled pairing gives a median of ~0.07


def test_texture_libraries_are_fixed_and_photographs_fall_back_to_materials(monkeypatch):
    library = textures.procedural_library()
    assert library.count == textures.PROCEDURAL_TILES and set(library.names) == set(textures.MATERIALS)
    assert library.levels[0].shape == (1, 3, library.count * textures.TILE_HEIGHT, textures.TILE_WIDTH)
    photos = textures.photo_library()
    assert photos is None or (photos.count >= 1 and photos.levels[0].std() > 0.1)
    config = SceneConfig(num_times=1, num_views=1, height=28, width=28, texture="photo")
    monkeypatch.setattr(textures, "PHOTO_SOURCES", (("page4d", "no/such/*.jpg"),))
    textures.photo_library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no photographs"):
            assert textures.photo_library() is None
        fallback = generate_clip(config, seed=1)  # warned once above: the library is cached
    finally:
        monkeypatch.undo()
        textures.photo_library.cache_clear()
    assert fallback.images.std() > 0.05
    photographed = generate_clip(config, seed=1)
    assert torch.equal(fallback.depth, photographed.depth)  # the look changes, not the geometry
    assert photos is None or not torch.equal(fallback.images, photographed.images)


def test_lighting_changes_colours_only():
    config = SceneConfig(**SMALL, walkers=(1, 1), texture="noise")
    dark, lit = generate_clip(config, seed=6), generate_clip(dataclasses.replace(config, lighting=True), seed=6)
    for name in ("depth", "dynamic_mask", "intrinsics", "extrinsics"):
        assert torch.equal(getattr(dark, name), getattr(lit, name))
    assert (dark.images - lit.images).abs().mean() > 0.02
    tiny = dataclasses.replace(config, lighting=True, num_times=1, num_views=1, height=18, width=24, walkers=(0, 0))
    means = [generate_clip(tiny, s).images.mean((0, 1, 3, 4)) for s in range(8)]
    brightness = [float(m.mean()) for m in means]
    assert max(brightness) - min(brightness) > 0.1  # brightness differs between scenes ...
    balance = [float(m[0] / m[2]) for m in means]
    assert max(balance) - min(balance) > 0.1  # ... and so does the colour temperature (red against blue)


# --- presets and configs -------------------------------------------------------------------------------------------


def test_presets_hold_out_rig_families_and_read_from_yaml_style_dicts():
    train, held_out = set(SCENE_PRESETS["rigs-train"].rig_families), set(SCENE_PRESETS["rigs-heldout"].rig_families)
    assert train == {"ring", "arc", "stereo_pairs", "mixed_heights"} and held_out == {"wide_baseline", "dome"}
    assert SCENE_PRESETS["ring-checker"] == SceneConfig()
    assert scene_preset("rigs-train-portrait", height=126, width=168).orientation == "portrait"
    with pytest.raises(ValueError, match="preset"):
        scene_preset("rigs")
    from page4d.train.config import TrainConfig

    scene = {"num_times": 2, "num_views": 4, "height": 28, "width": 42, "rig_families": ["arc", "dome"],
             "fov_deg": [30, 90], "walkers": [0, 2], "texture": "photo", "lighting": True, "orientation": "portrait"}
    loaded = TrainConfig.from_dict({"model": "tiny-mv", "scene": scene}).scene
    assert loaded.rig_families == ("arc", "dome") and loaded.walkers == (0, 2) and loaded.lighting
    clip = generate_clip(dataclasses.replace(loaded, num_views=2, num_times=1), seed=2**31)
    assert clip.images.shape[-2:] == (42, 28) and clip.family in ("arc", "dome")
