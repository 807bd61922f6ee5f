"""Procedural multi-view dynamic scenes with exact geometry, for training and for held-out evaluation.

A scene is a textured room (checkered floor at z = 0, striped walls, a few static boxes on the floor)
with spheres rolling across the floor, seen by a static rig of V cameras on a ring looking at the room's
centre. Every pixel is ray-cast analytically (planes, slabs, spheres), so depth, the dynamic mask (1 = the
pixel sees a moving sphere) and the cameras are exact, not estimated. Rays that leave the room upwards
see the sky: depth 0 (invalid) and ``SKY_COLOUR``. World axes: z up, metres-like units.

Cameras follow ``page4d.conventions`` (OpenCV axes, world-to-camera ``[R | t]``, integer pixel = centre);
the ray through pixel (u, v) is ``Rᵀ K⁻¹ [u, v, 1]``, whose camera-frame z is 1, so the ray parameter of a
hit is its z-depth. Generation is vectorised torch on the CPU: a 4 × 4 clip of 112 × 84 takes milliseconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SKY = -1
SKY_COLOUR = torch.tensor([0.65, 0.7, 1.0], dtype=torch.float64)
FLOOR, WALLS, BOXES, SPHERES = 0, 1, 2, 3
"""Surface kinds, in the order of ``_Hits.kind``."""


TEXTURES = ("checker", "noise")


@dataclass(frozen=True)
class SceneConfig:
    """Ranges that scenes are drawn from (uniformly); one seed gives one scene."""

    num_times: int = 4
    num_views: int = 4
    height: int = 84
    width: int = 112
    room: float = 6.0
    """Half-width of the square room; walls at x, y = ±room."""
    wall_height: float = 3.0
    static_boxes: tuple[int, int] = (1, 3)
    moving_spheres: tuple[int, int] = (1, 3)
    sphere_radius: tuple[float, float] = (0.3, 0.7)
    speed: tuple[float, float] = (0.1, 0.35)
    """Sphere speed, units per time step."""
    camera_distance: tuple[float, float] = (3.0, 4.5)
    camera_height: tuple[float, float] = (1.2, 2.4)
    fov_deg: tuple[float, float] = (55.0, 75.0)
    """Horizontal field of view."""
    texture: str = "checker"
    """``checker``: two-colour cells per surface (what the shipped model was trained on); ``noise``: a smooth
    non-repeating pattern (a sum of random plane waves), which feature matching can tell apart everywhere."""


@dataclass
class SyntheticClip:
    """One rendered clip, ``[T, V, ...]`` tensors (the layout ``MultiViewClip`` describes on disk)."""

    images: torch.Tensor
    """``[T, V, 3, H, W]`` float32 RGB in [0, 1]."""
    depth: torch.Tensor
    """``[T, V, H, W]`` float32 z-depth, 0 where a pixel sees the sky."""
    dynamic_mask: torch.Tensor
    """``[T, V, H, W]`` bool, True where a pixel sees a moving sphere."""
    intrinsics: torch.Tensor
    """``[T, V, 3, 3]`` float32 pixel K."""
    extrinsics: torch.Tensor
    """``[T, V, 3, 4]`` float32 world-to-camera."""
    sphere_centres: torch.Tensor
    """``[T, S, 3]`` float64 centres of the moving spheres (world frame: z up, floor at z = 0)."""
    sphere_radii: torch.Tensor
    """``[S]`` float64."""


def _uniform(gen: torch.Generator, bounds: tuple[float, float], count: int = 1) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=gen, dtype=torch.float64)


def _look_at(centre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``[3, 4]`` of a camera at ``centre`` looking at ``target`` with world z up (OpenCV axes)."""
    forward = torch.nn.functional.normalize(target - centre, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, centre.new_tensor([0.0, 0.0, 1.0])), dim=0)
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])
    return torch.cat([rot, (-rot @ centre)[:, None]], dim=1)


def _rig(config: SceneConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``K [V, 3, 3]`` and world-to-camera ``[V, 3, 4]`` of a ring of cameras around the room's centre."""
    views = config.num_views
    angles = 2 * math.pi * (torch.arange(views, dtype=torch.float64) + 0.3 * _uniform(gen, (-1, 1), views)) / views
    distance, height = _uniform(gen, config.camera_distance, views), _uniform(gen, config.camera_height, views)
    centres = torch.stack([distance * angles.cos(), distance * angles.sin(), height], dim=1)
    targets = torch.cat([0.6 * _uniform(gen, (-1, 1), 2 * views).view(views, 2), torch.full((views, 1), 0.4)], 1)
    extrinsics = torch.stack([_look_at(c, t) for c, t in zip(centres, targets, strict=True)])
    focal = config.width / 2 / torch.tan(torch.deg2rad(_uniform(gen, config.fov_deg, views)) / 2)
    intrinsics = torch.zeros(views, 3, 3, dtype=torch.float64)
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = focal
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = (config.width - 1) / 2, (config.height - 1) / 2, 1
    return intrinsics, extrinsics


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


def _shade(points: torch.Tensor, hits: _Hits, scene: _Scene, centres: torch.Tensor, t: int,
           texture: str = "checker") -> torch.Tensor:
    """``[N, 3]`` colours: a two-colour pattern per surface kind, Lambert-shaded; ``SKY_COLOUR`` for no hit."""
    palette = scene.palette
    local = points - centres[hits.index.clamp(max=len(centres) - 1)] if len(centres) else points
    angle = scene.spin[hits.index.clamp(max=len(scene.spin) - 1)] * t if len(scene.spin) else torch.zeros(len(points))
    base = torch.zeros(len(points), dtype=torch.long)
    for kind in (FLOOR, WALLS, BOXES, SPHERES):
        base = torch.where(hits.kind == kind, 2 * kind, base)
    if texture == "noise":
        # a sphere's pattern turns with it: its points are read in its own frame, turned back by its spin
        cos, sin = angle.cos(), angle.sin()
        turned = torch.stack([cos * local[:, 0] + sin * local[:, 1], -sin * local[:, 0] + cos * local[:, 1],
                              local[:, 2]], 1)
        where = torch.where((hits.kind == SPHERES)[:, None], turned, points)
        waves = torch.sin(where @ scene.waves[:, :3].T + scene.waves[:, 3]).sum(1)
        mix = torch.sigmoid(3 * waves / math.sqrt(len(scene.waves)))[:, None]
    elif texture == "checker":
        floor_cells = torch.floor(points[:, :2] / scene.checker[0]).sum(1)
        wall_cells = torch.floor((points[:, 0] + points[:, 1]) / 0.4) + torch.floor(points[:, 2] / 0.75)
        box_cells = torch.floor(points / scene.checker[1]).sum(1)
        azimuth = torch.atan2(local[:, 1], local[:, 0]) - angle
        sphere_cells = torch.floor(azimuth / (math.pi / 4)) + torch.floor(local[:, 2] / 0.25)
        pattern = torch.zeros(len(points), dtype=torch.bool)
        for kind, cells in ((FLOOR, floor_cells), (WALLS, wall_cells), (BOXES, box_cells), (SPHERES, sphere_cells)):
            pattern = torch.where(hits.kind == kind, cells.remainder(2) > 0.5, pattern)
        mix = pattern[:, None].double()
    else:
        raise ValueError(f"texture {texture!r}: choose one of {', '.join(TEXTURES)}")
    colour = palette[base] * (1 - mix) + palette[base + 1] * mix
    light = torch.nn.functional.normalize(torch.tensor([0.4, 0.3, 1.0], dtype=torch.float64), dim=0)
    colour = colour * (0.45 + 0.55 * (hits.normal @ light).clamp(min=0))[:, None]
    return torch.where((hits.kind == SKY)[:, None], SKY_COLOUR, colour).clamp(0, 1)


def generate_clip(config: SceneConfig, seed: int) -> SyntheticClip:
    """Render one scene (drawn from ``config`` with ``seed``) for every (t, v)."""
    gen = torch.Generator().manual_seed(seed)
    intrinsics, extrinsics = _rig(config, gen)
    scene = _scene(config, gen)
    rows, cols = torch.meshgrid(torch.arange(config.height, dtype=torch.float64),
                                torch.arange(config.width, dtype=torch.float64), indexing="ij")
    pixels = torch.stack([cols, rows, torch.ones_like(rows)], -1).reshape(-1, 3)
    shape = (config.num_times, config.num_views)
    images = torch.zeros(*shape, 3, config.height, config.width)
    depth = torch.zeros(*shape, config.height, config.width)
    moving = torch.zeros(*shape, config.height, config.width, dtype=torch.bool)
    limit = config.room - 0.5
    # Spheres bounce off the walls: the straight path is folded back into [-limit, limit].
    path = scene.start + torch.arange(config.num_times, dtype=torch.float64)[:, None, None] * scene.velocity
    all_centres = path.clone()
    all_centres[..., :2] = limit - ((path[..., :2] + limit).remainder(4 * limit) - 2 * limit).abs()
    for t, centres in enumerate(all_centres):
        for v in range(config.num_views):
            rot, trans = extrinsics[v, :, :3], extrinsics[v, :, 3]
            rays = pixels @ torch.linalg.inv(intrinsics[v]).T @ rot
            origin = -rot.T @ trans
            hits = _cast(origin, rays, scene, centres, config)
            points = origin + torch.where(torch.isfinite(hits.depth), hits.depth, 0)[:, None] * rays
            colour = _shade(points, hits, scene, centres, t, config.texture)
            images[t, v] = colour.T.reshape(3, config.height, config.width).float()
            hit = torch.isfinite(hits.depth)
            depth[t, v] = torch.where(hit, hits.depth, 0).reshape(config.height, config.width).float()
            moving[t, v] = (hits.kind == SPHERES).reshape(config.height, config.width)
    return SyntheticClip(
        images=images, depth=depth, dynamic_mask=moving,
        intrinsics=intrinsics.float().expand(*shape, 3, 3).clone(),
        extrinsics=extrinsics.float().expand(*shape, 3, 4).clone(), sphere_centres=all_centres,
        sphere_radii=scene.radius,
    )


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
