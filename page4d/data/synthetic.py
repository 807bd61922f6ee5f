"""Procedural multi-view dynamic scenes with exact geometry, for training and for held-out evaluation.

A scene is a textured room (checkered floor at z = 0, striped walls, a few static boxes on the floor)
with spheres rolling across the floor, seen by a static rig of V cameras on a ring looking at the room's
centre. Every pixel is ray-cast analytically (planes, slabs, spheres), so depth, the dynamic mask (1 = the
pixel sees a moving sphere) and the cameras are exact, not estimated. Rays that leave the room upwards
see the sky: depth 0 (invalid) and ``SKY_COLOUR``. World axes: z up, metres-like units.

Cameras follow ``page4d.conventions`` (OpenCV axes, world-to-camera ``[R | t]``, integer pixel = centre);
the ray through pixel (u, v) is ``Rᵀ K⁻¹ [u, v, 1]``, whose camera-frame z is 1, so the ray parameter of a
hit is its z-depth. Generation is vectorised torch on the CPU.

Options beyond that narrow family (all off by default, so old configs and seeds render bit for bit as before):
camera layouts (``rig_families``, ``page4d.data.synthetic_rigs``), rolls and look-at jitter, portrait frames
(``orientation``), per-camera fields of view from wide to tele (``fov_deg``, ``fov_sampling``), walkers and moving
boxes (``page4d.data.synthetic_objects``), photographic and procedural textures (``page4d.data.textures``) and
per-scene lighting. ``SCENE_PRESETS`` names ready-made configs, e.g. training and held-out rig families.

Seeds: the trainer draws training scenes with seeds in ``[0, 2**31)`` and evaluates on seeds ``2**31 + k``
(``page4d.train.trainer.EVAL_SEED``), so training never sees an evaluation scene; keep any other evaluation seeds
at ``2**31`` or above too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from page4d.data import synthetic_shading as shading
from page4d.data.scene_config import TEXTURES, SceneConfig
from page4d.data.synthetic_objects import Movers, mover_hits
from page4d.data.synthetic_rigs import boxes_around_cameras, draw_rig
from page4d.data.synthetic_rigs import uniform as _uniform
from page4d.data.synthetic_shading import BOXES, CAPSULES, FLOOR, MOVING_BOXES, SKY, SKY_COLOUR, SPHERES, WALLS

_NEW_FIELDS = ("rig_families", "look_at_jitter", "look_at_height", "roll_deg", "arc_span_deg", "stereo_baseline",
               "mixed_height", "dome_elevation_deg", "wide_distance", "orientation", "fov_sampling", "walkers",
               "walker_height", "walker_speed", "moving_boxes", "moving_area", "lighting", "brightness", "warmth",
               "ambient")
"""Fields that the original generator did not have: at their defaults a scene is drawn exactly as it drew it."""


def _is_original(config: SceneConfig) -> bool:
    defaults = {f.name: f.default for f in dataclasses.fields(SceneConfig)}
    return config.texture in ("checker", "noise") and all(getattr(config, n) == defaults[n] for n in _NEW_FIELDS)


@dataclass
class SyntheticClip:
    """One rendered clip, ``[T, V, ...]`` tensors (the layout ``MultiViewClip`` describes on disk)."""

    images: torch.Tensor
    """``[T, V, 3, H, W]`` float32 RGB in [0, 1]."""
    depth: torch.Tensor
    """``[T, V, H, W]`` float32 z-depth, 0 where a pixel sees the sky."""
    dynamic_mask: torch.Tensor
    """``[T, V, H, W]`` bool, True where a pixel's nearest surface moves (a sphere, a walker part, a moving box)."""
    intrinsics: torch.Tensor
    """``[T, V, 3, 3]`` float32 pixel K."""
    extrinsics: torch.Tensor
    """``[T, V, 3, 4]`` float32 world-to-camera."""
    sphere_centres: torch.Tensor
    """``[T, S, 3]`` float64 centres of the moving spheres (world frame: z up, floor at z = 0)."""
    sphere_radii: torch.Tensor
    """``[S]`` float64."""
    family: str = "ring"
    """The rig family the cameras were laid out by."""
    static_boxes: torch.Tensor | None = None
    """``[B, 2, 3]`` float64 min and max corners of the static boxes."""
    movers: Movers | None = None
    """Walkers (capsules ``[T, P, 2, 3]``, radii ``[P]``) and moving boxes (centres ``[T, M, 3]``, half sizes,
    yaws) over time; empty when the config has none."""


@dataclass
class _Scene:
    boxes: torch.Tensor
    """``[B, 2, 3]`` min and max corners of the static boxes."""
    start: torch.Tensor
    """``[S, 3]`` sphere centres at t = 0."""
    velocity: torch.Tensor
    """``[S, 3]`` per-step motion (in the floor plane)."""
    radius: torch.Tensor
    """``[S]``."""
    spin: torch.Tensor
    """``[S]`` rotation about z per step (radians): the texture turns with the sphere."""
    palette: torch.Tensor
    """``[8, 3]`` colours: floor (2), walls (2), boxes (2), spheres (2)."""
    checker: torch.Tensor
    """``[2]`` floor and box checker sizes."""
    waves: torch.Tensor
    """``[NOISE_WAVES, 4]`` the ``noise`` texture's plane waves: wave vector (x, y, z) and phase."""


def _scene(config: SceneConfig, gen: torch.Generator) -> _Scene:
    boxes = int(torch.randint(config.static_boxes[0], config.static_boxes[1] + 1, (1,), generator=gen))
    spheres = int(torch.randint(config.moving_spheres[0], config.moving_spheres[1] + 1, (1,), generator=gen))
    centre = _uniform(gen, (-0.5 * config.room, 0.5 * config.room), 2 * boxes).view(boxes, 2)
    half = _uniform(gen, (0.2, 0.6), 3 * boxes).view(boxes, 3)
    lows = torch.cat([centre - half[:, :2], torch.zeros(boxes, 1)], 1)
    highs = torch.cat([centre + half[:, :2], 2 * half[:, 2:]], 1)
    radius = _uniform(gen, config.sphere_radius, spheres)
    heading = _uniform(gen, (0, 2 * math.pi), spheres)
    speed = _uniform(gen, config.speed, spheres)
    start = torch.cat([_uniform(gen, (-1.5, 1.5), 2 * spheres).view(spheres, 2), radius[:, None]], 1)
    velocity = torch.stack([speed * heading.cos(), speed * heading.sin(), torch.zeros(spheres)], 1)
    return _Scene(
        boxes=torch.stack([lows, highs], 1), start=start, velocity=velocity, radius=radius,
        spin=_uniform(gen, (-0.4, 0.4), spheres), palette=torch.rand(8, 3, generator=gen, dtype=torch.float64),
        checker=_uniform(gen, (0.3, 0.9), 2), waves=_waves(gen),
    )


NOISE_WAVES = 48


def _waves(gen: torch.Generator) -> torch.Tensor:
    """Random directions, wavelengths from 0.2 to 2 units (log-uniform; finer ones alias at rig resolutions) and
    phases."""
    direction = torch.nn.functional.normalize(torch.randn(NOISE_WAVES, 3, generator=gen, dtype=torch.float64), dim=1)
    wavelength = torch.exp(_uniform(gen, (math.log(0.2), math.log(2.0)), NOISE_WAVES))
    return torch.cat([direction * (2 * math.pi / wavelength[:, None]), _uniform(gen, (0, 2 * math.pi), NOISE_WAVES)[
        :, None]], 1)


@dataclass
class _Hits:
    depth: torch.Tensor
    """``[N]`` ray parameter of the nearest hit (inf: none)."""
    kind: torch.Tensor
    """``[N]`` surface kind (``FLOOR``, ``WALLS``, ``BOXES``, ``SPHERES``; ``SKY`` for none)."""
    index: torch.Tensor
    """``[N]`` which box / wall / sphere."""
    normal: torch.Tensor
    """``[N, 3]`` unit surface normal."""

    def offer(self, depth: torch.Tensor, kind: int, index: torch.Tensor, normal: torch.Tensor) -> None:
        closer = depth < self.depth
        self.depth = torch.where(closer, depth, self.depth)
        self.kind = torch.where(closer, kind, self.kind)
        self.index = torch.where(closer, index, self.index)
        self.normal = torch.where(closer[:, None], normal, self.normal)

    def offer_at(self, rays: torch.Tensor, depth: torch.Tensor, kind: int, index: torch.Tensor,
                 normal: torch.Tensor) -> None:
        """``offer`` for the rays ``rays [n]`` (indices) only: ``depth``, ``index [n]``, ``normal [n, 3]``."""
        closer = depth < self.depth[rays]
        chosen = rays[closer]
        self.depth[chosen], self.kind[chosen], self.index[chosen] = depth[closer], kind, index[closer]
        self.normal[chosen] = normal[closer]


def _cast(origin: torch.Tensor, rays: torch.Tensor, scene: _Scene, centres: torch.Tensor, config: SceneConfig) -> _Hits:
    """Nearest hits of ``rays [N, 3]`` from ``origin [3]`` (float64)."""
    count = len(rays)
    inf = torch.full((count,), math.inf, dtype=torch.float64)
    hits = _Hits(inf, torch.full((count,), SKY), torch.zeros(count, dtype=torch.long),
                 torch.zeros(count, 3, dtype=torch.float64))
    eps = 1e-9
    # Floor z = 0 and the four walls x, y = ±room, limited to the wall height.
    for kind, axis, value, index in ((FLOOR, 2, 0.0, 0), *((WALLS, a, s * config.room, 2 * a + (s > 0))
                                                          for a in (0, 1) for s in (-1, 1))):
        step = (value - origin[axis]) / torch.where(rays[:, axis].abs() > eps, rays[:, axis], eps)
        point = origin + step[:, None] * rays
        ok = step > eps
        if kind == WALLS:
            ok &= (point[:, 2] >= 0) & (point[:, 2] <= config.wall_height)
        normal = torch.zeros(count, 3, dtype=torch.float64)
        normal[:, axis] = 1.0 if kind == FLOOR else -math.copysign(1.0, value)
        hits.offer(torch.where(ok, step, inf), kind, torch.full((count,), index), normal)
    # Static boxes: slab test.
    safe = torch.where(rays.abs() > eps, rays, torch.full_like(rays, eps))
    for b, (low, high) in enumerate(scene.boxes):
        near, far = (low - origin) / safe, (high - origin) / safe
        enter, leave = torch.minimum(near, far).max(dim=1).values, torch.maximum(near, far).min(dim=1).values
        ok = (enter <= leave) & (enter > eps)
        face = torch.minimum(near, far).argmax(dim=1)
        normal = torch.zeros(count, 3, dtype=torch.float64)
        normal.scatter_(1, face[:, None], -torch.sign(rays.gather(1, face[:, None])))
        hits.offer(torch.where(ok, enter, inf), BOXES, torch.full((count,), b), normal)
    # Moving spheres: |o + s·d − c|² = r².
    for s, (centre, radius) in enumerate(zip(centres, scene.radius, strict=True)):
        rel = origin - centre
        a, b, c = (rays * rays).sum(1), 2 * (rays * rel).sum(1), rel @ rel - radius**2
        disc = b * b - 4 * a * c
        step = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
        ok = (disc >= 0) & (step > eps)
        normal = (origin + step[:, None] * rays - centre) / radius
        hits.offer(torch.where(ok, step, inf), SPHERES, torch.full((count,), s), normal)
    return hits


def _cast_movers(hits: _Hits, origin: torch.Tensor, rays: torch.Tensor, movers: Movers, t: int) -> None:
    """Offer the walker parts and moving boxes at time ``t`` to ``hits``."""
    for kind, index, near, depth, normal in mover_hits(origin, rays, movers, t):
        hits.offer_at(near, depth, CAPSULES if kind == "capsule" else MOVING_BOXES, index, normal)


def _shade(points: torch.Tensor, hits: _Hits, scene: _Scene, centres: torch.Tensor, t: int,
           texture: str = "checker", extras: shading.Extras | None = None, rays: torch.Tensor | None = None,
           focal: float = 1.0) -> torch.Tensor:
    """``[N, 3]`` colours: a two-colour pattern per surface kind (or a texture tile per surface), Lambert-shaded;
    ``SKY_COLOUR`` for no hit. Without ``extras`` this is the original shading, operation for operation."""
    movers = None if extras is None else extras.movers
    palette = scene.palette if extras is None else extras.palette
    local = points - centres[hits.index.clamp(max=len(centres) - 1)] if len(centres) else points
    angle = scene.spin[hits.index.clamp(max=len(scene.spin) - 1)] * t if len(scene.spin) else torch.zeros(len(points))
    base = torch.zeros(len(points), dtype=torch.long)
    for kind in (FLOOR, WALLS, BOXES, SPHERES):
        base = torch.where(hits.kind == kind, 2 * kind, base)
    if movers is not None:
        for kind in (CAPSULES, MOVING_BOXES):
            base = torch.where(hits.kind == kind, 2 * kind, base)
        object_points, _ = shading.object_frame(points, hits.kind, hits.index, hits.normal, movers, t)
        on_mover = (hits.kind == CAPSULES) | (hits.kind == MOVING_BOXES)
    if texture in ("procedural", "photo"):
        surfaces = shading.SceneSurfaces(extras.textures, extras.first_slot, centres, scene.spin * t, movers, t)
        depth = torch.where(torch.isfinite(hits.depth), hits.depth, 0)
        colour = shading.textured(points, hits.kind, hits.index, hits.normal, depth, rays, focal, surfaces)
    elif texture == "noise":
        # a sphere's pattern turns with it: its points are read in its own frame, turned back by its spin
        cos, sin = angle.cos(), angle.sin()
        turned = torch.stack([cos * local[:, 0] + sin * local[:, 1], -sin * local[:, 0] + cos * local[:, 1],
                              local[:, 2]], 1)
        where = torch.where((hits.kind == SPHERES)[:, None], turned, points)
        if movers is not None:
            where = torch.where(on_mover[:, None], object_points, where)
        waves = torch.sin(where @ scene.waves[:, :3].T + scene.waves[:, 3]).sum(1)
        mix = torch.sigmoid(3 * waves / math.sqrt(len(scene.waves)))[:, None]
        colour = palette[base] * (1 - mix) + palette[base + 1] * mix
    elif texture == "checker":
        floor_cells = torch.floor(points[:, :2] / scene.checker[0]).sum(1)
        wall_cells = torch.floor((points[:, 0] + points[:, 1]) / 0.4) + torch.floor(points[:, 2] / 0.75)
        box_cells = torch.floor(points / scene.checker[1]).sum(1)
        azimuth = torch.atan2(local[:, 1], local[:, 0]) - angle
        sphere_cells = torch.floor(azimuth / (math.pi / 4)) + torch.floor(local[:, 2] / 0.25)
        pattern = torch.zeros(len(points), dtype=torch.bool)
        for kind, cells in ((FLOOR, floor_cells), (WALLS, wall_cells), (BOXES, box_cells), (SPHERES, sphere_cells)):
            pattern = torch.where(hits.kind == kind, cells.remainder(2) > 0.5, pattern)
        if movers is not None:
            pattern = torch.where(on_mover, torch.floor(object_points / 0.2).sum(1).remainder(2) > 0.5, pattern)
        mix = pattern[:, None].double()
        colour = palette[base] * (1 - mix) + palette[base + 1] * mix
    else:
        raise ValueError(f"texture {texture!r}: choose one of {', '.join(TEXTURES)}")
    if extras is not None and extras.light is not None:
        return shading.lit(colour, hits.kind, hits.normal, rays, extras.light)
    light = torch.nn.functional.normalize(torch.tensor([0.4, 0.3, 1.0], dtype=torch.float64), dim=0)
    colour = colour * (0.45 + 0.55 * (hits.normal @ light).clamp(min=0))[:, None]
    return torch.where((hits.kind == SKY)[:, None], SKY_COLOUR, colour).clamp(0, 1)


def generate_clip(config: SceneConfig, seed: int) -> SyntheticClip:
    """Render one scene (drawn from ``config`` with ``seed``) for every (t, v).

    Runs on one intra-op thread (restored afterwards): its tensors are a frame's pixels, too small to gain from
    threads, and on a busy machine extra threads made it many times slower. The result is the same either way.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate_clip(config, seed)
    finally:
        torch.set_num_threads(threads)


def _generate_clip(config: SceneConfig, seed: int) -> SyntheticClip:
    gen = torch.Generator().manual_seed(seed)
    rig = draw_rig(config, gen)
    intrinsics, extrinsics = rig.intrinsics, rig.extrinsics
    scene = _scene(config, gen)
    extras = None
    if not _is_original(config):
        # low cameras of the new rig families must not stand inside a static box (they would see its inside)
        scene = dataclasses.replace(scene, boxes=scene.boxes[~boxes_around_cameras(scene.boxes, extrinsics)])
        extras = shading.draw_extras(config, gen, scene.palette, len(scene.boxes), len(scene.radius))
    height, width = rig.height, rig.width
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    pixels = torch.stack([cols, rows, torch.ones_like(rows)], -1).reshape(-1, 3)
    shape = (config.num_times, config.num_views)
    images = torch.zeros(*shape, 3, height, width)
    depth = torch.zeros(*shape, height, width)
    moving = torch.zeros(*shape, height, width, dtype=torch.bool)
    limit = config.room - 0.5
    # Spheres bounce off the walls: the straight path is folded back into [-limit, limit].
    path = scene.start + torch.arange(config.num_times, dtype=torch.float64)[:, None, None] * scene.velocity
    all_centres = path.clone()
    all_centres[..., :2] = limit - ((path[..., :2] + limit).remainder(4 * limit) - 2 * limit).abs()
    movers = None if extras is None else extras.movers
    for t, centres in enumerate(all_centres):
        for v in range(config.num_views):
            rot, trans = extrinsics[v, :, :3], extrinsics[v, :, 3]
            rays = pixels @ torch.linalg.inv(intrinsics[v]).T @ rot
            origin = -rot.T @ trans
            hits = _cast(origin, rays, scene, centres, config)
            if movers is not None:
                _cast_movers(hits, origin, rays, movers, t)
            points = origin + torch.where(torch.isfinite(hits.depth), hits.depth, 0)[:, None] * rays
            colour = _shade(points, hits, scene, centres, t, config.texture, extras, rays, float(intrinsics[v, 0, 0]))
            images[t, v] = colour.T.reshape(3, height, width).float()
            hit = torch.isfinite(hits.depth)
            depth[t, v] = torch.where(hit, hits.depth, 0).reshape(height, width).float()
            moving[t, v] = (hits.kind >= SPHERES).reshape(height, width)  # spheres, walker parts, moving boxes
    if movers is None:
        movers = Movers.empty(config.num_times)
    return SyntheticClip(
        images=images, depth=depth, dynamic_mask=moving,
        intrinsics=intrinsics.float().expand(*shape, 3, 3).clone(),
        extrinsics=extrinsics.float().expand(*shape, 3, 4).clone(), sphere_centres=all_centres,
        sphere_radii=scene.radius, family=rig.family, static_boxes=scene.boxes, movers=movers,
    )


_VARIETY = dict(
    camera_distance=(3.0, 5.0), camera_height=(0.8, 2.6), fov_deg=(30.0, 90.0), fov_sampling="log_focal",
    roll_deg=4.0, look_at_jitter=0.8, static_boxes=(1, 4), moving_spheres=(0, 2), walkers=(1, 2), moving_boxes=(0, 2),
    texture="photo", lighting=True,
)
SCENE_PRESETS: dict[str, SceneConfig] = {
    "ring-checker": SceneConfig(),
    "rigs-train": SceneConfig(rig_families=("ring", "arc", "stereo_pairs", "mixed_heights"), **_VARIETY),
    "rigs-heldout": SceneConfig(rig_families=("wide_baseline", "dome"), **_VARIETY),
    "rigs-train-portrait": SceneConfig(rig_families=("ring", "arc", "stereo_pairs", "mixed_heights"),
                                       orientation="portrait", **_VARIETY),
    "rigs-heldout-portrait": SceneConfig(rig_families=("wide_baseline", "dome"), orientation="portrait", **_VARIETY),
}
"""Named scene configs (at the default size, 4 × 4 frames of 112 × 84; ``scene_preset`` resizes them).
``ring-checker``: the original family the first page4d-small was trained on. ``rigs-train``: every kind of variety
(fields of view from 30° to 90° per camera, rolls, walkers, moving boxes, photographs, lighting) on the ``ring``,
``arc``, ``stereo_pairs`` and ``mixed_heights`` rig families; ``rigs-heldout``: the same variety on the families
``rigs-train`` never draws (``wide_baseline``, ``dome``), to measure generalisation to unseen rigs. The
``-portrait`` variants stand the frames upright. Evaluate on seeds disjoint from training: the trainer trains on
seeds below ``2**31`` and evaluates on ``2**31 + k``."""


def scene_preset(name: str, **changes: object) -> SceneConfig:
    """``SCENE_PRESETS[name]`` with ``changes`` (e.g. ``num_times=3, height=126, width=168``)."""
    if name not in SCENE_PRESETS:
        raise ValueError(f"scene preset {name!r}: choose one of {', '.join(SCENE_PRESETS)}")
    return dataclasses.replace(SCENE_PRESETS[name], **changes)


DEPTH_UNIT = 0.006
"""World units per step of the uint16 depth PNGs (the clip layout's default ``value / 1000 * 6``)."""


def write_clip(clip: SyntheticClip, folder: str | Path) -> Path:
    """Write ``clip`` in the clip layout (``images/``, ``depths/``, ``masks/``, ``cameras.json``); returns ``folder``.

    Depth is quantised to ``DEPTH_UNIT`` (uint16), so it reads back to within half a unit.
    """
    folder = Path(folder)
    t_count, v_count, _, height, width = clip.images.shape
    for t in range(t_count):
        for name in ("images", "depths", "masks"):
            (folder / name / f"time_{t:02d}").mkdir(parents=True, exist_ok=True)
        for v in range(v_count):
            stem = f"time_{t:02d}/view{v}.png"
            rgb = (clip.images[t, v].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(rgb).save(folder / "images" / stem)
            units = np.clip(np.round(clip.depth[t, v].numpy() / DEPTH_UNIT), 0, 65535).astype(np.uint16)
            Image.fromarray(units).save(folder / "depths" / stem)
            Image.fromarray(clip.dynamic_mask[t, v].numpy()).save(folder / "masks" / stem)
    cameras = {
        "format": "page4d synthetic cameras v1", "image_size": {"width": width, "height": height},
        "time_ids": list(range(t_count)), "view_ids": list(range(v_count)),
        "K": clip.intrinsics.double().tolist(), "E_w2c": clip.extrinsics.double().tolist(),
    }
    (folder / "cameras.json").write_text(json.dumps(cameras))
    return folder
