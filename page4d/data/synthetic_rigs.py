"""Camera layouts ("rig families") and frame sizes of the synthetic scenes (``page4d.data.synthetic``).

Every family places ``V`` static cameras inside the room, each looking at the shared centre ``(0, 0,
look_at_height)`` moved by a per-camera jitter of up to ``look_at_jitter`` in x and y, then turned about its optical
axis by a per-camera roll of up to ``roll_deg``:

- ``ring``: today's layout, one camera per ``2π / V`` sector (±30 % of a sector), distance ``camera_distance``,
  height ``camera_height``.
- ``arc``: the cameras spread over a partial arc of ``arc_span_deg`` around a random direction (one per
  ``span / V`` slot, ±30 % of a slot), so they all see the scene from one side.
- ``stereo_pairs``: ``ceil(V / 2)`` pair positions placed like ``ring``; the two cameras of a pair sit
  ``stereo_baseline`` apart, side by side (horizontal, across the direction to the centre). Views ``2p`` and
  ``2p + 1`` are pair ``p``; an odd ``V`` leaves the last camera alone.
- ``mixed_heights``: ``ring`` azimuths and distances with strongly different heights: one camera per ``1 / V``
  stratum of ``mixed_height`` (in a random order), so the highest ones look down steeply.
- ``dome``: cameras on a hemisphere of radius ``camera_distance`` around the centre, one per ``1 / V`` stratum
  of ``dome_elevation_deg`` (random order), azimuths like ``ring``.
- ``wide_baseline``: evenly spread azimuths (±10 % of a sector) at the far distances ``wide_distance``: any two
  cameras at least ``2 · wide_distance[0] · sin(0.8 π / V)`` apart.

Draws come from the scene's generator in a fixed order; the ``ring`` family with default options consumes it
exactly as the original single-family code did, so old configs and seeds give the same cameras bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from page4d.data.scene_config import RIG_FAMILIES, SceneConfig


def uniform(gen: torch.Generator, bounds: tuple[float, float], count: int = 1) -> torch.Tensor:
    """``[count]`` float64 draws, uniform in ``bounds``."""
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=gen, dtype=torch.float64)


def look_at(centre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``[3, 4]`` of a camera at ``centre`` looking at ``target`` with world z up (OpenCV axes)."""
    forward = torch.nn.functional.normalize(target - centre, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, centre.new_tensor([0.0, 0.0, 1.0])), dim=0)
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])
    return torch.cat([rot, (-rot @ centre)[:, None]], dim=1)


@dataclass
class Rig:
    """The static cameras of one scene."""

    intrinsics: torch.Tensor
    """``[V, 3, 3]`` float64 pixel K."""
    extrinsics: torch.Tensor
    """``[V, 3, 4]`` float64 world-to-camera."""
    family: str
    height: int
    """Rendered frame height (``SceneConfig.orientation`` may swap the configured sides)."""
    width: int


def frame_size(config: SceneConfig, gen: torch.Generator) -> tuple[int, int]:
    """``(height, width)`` of this scene's frames; draws from ``gen`` only for ``orientation="random"``."""
    if config.orientation == "fixed":
        return config.height, config.width
    short, long = sorted((config.height, config.width))
    if config.orientation == "random":
        portrait = bool(torch.rand(1, generator=gen, dtype=torch.float64) < 0.5)
    else:
        portrait = config.orientation == "portrait"
    return (long, short) if portrait else (short, long)


def _sectors(gen: torch.Generator, count: int, jitter: float) -> torch.Tensor:
    """``[count]`` azimuths, one per ``2π / count`` sector, moved by up to ``jitter`` of a sector."""
    return 2 * math.pi * (torch.arange(count, dtype=torch.float64) + jitter * uniform(gen, (-1, 1), count)) / count


def _strata(gen: torch.Generator, bounds: tuple[float, float], count: int) -> torch.Tensor:
    """``[count]`` values, one in each ``1 / count`` stratum of ``bounds``, in a random order: a guaranteed spread."""
    order = torch.randperm(count, generator=gen).double()
    low, high = bounds
    return low + (high - low) * (order + torch.rand(count, generator=gen, dtype=torch.float64)) / count


def _on_circle(angles: torch.Tensor, distance: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    return torch.stack([distance * angles.cos(), distance * angles.sin(), height], dim=1)


def camera_centres(family: str, config: SceneConfig, gen: torch.Generator) -> torch.Tensor:
    """``[V, 3]`` camera centres of one scene of ``family`` (world frame, z up)."""
    views = config.num_views
    if family == "ring":
        # the original draw order (angles, distances, heights): the default configs depend on it
        angles = _sectors(gen, views, 0.3)
        distance, height = uniform(gen, config.camera_distance, views), uniform(gen, config.camera_height, views)
        return _on_circle(angles, distance, height)
    if family == "arc":
        span = torch.deg2rad(uniform(gen, config.arc_span_deg))
        middle = uniform(gen, (0.0, 2 * math.pi))
        slots = (torch.arange(views, dtype=torch.float64) + 0.5 + 0.3 * uniform(gen, (-1, 1), views)) / views - 0.5
        distance, height = uniform(gen, config.camera_distance, views), uniform(gen, config.camera_height, views)
        return _on_circle(middle + span * slots, distance, height)
    if family == "stereo_pairs":
        pairs = (views + 1) // 2
        angles = _sectors(gen, pairs, 0.3)
        distance, height = uniform(gen, config.camera_distance, pairs), uniform(gen, config.camera_height, pairs)
        baseline = uniform(gen, config.stereo_baseline, pairs)
        middle = _on_circle(angles, distance, height)
        # side by side: horizontal and across the direction to the centre, like a stereo head facing the scene
        side = torch.stack([-angles.sin(), angles.cos(), torch.zeros(pairs, dtype=torch.float64)], 1)
        offset = 0.5 * baseline[:, None] * side
        return torch.stack([middle - offset, middle + offset], 1).reshape(2 * pairs, 3)[:views]
    if family == "mixed_heights":
        angles = _sectors(gen, views, 0.3)
        distance = uniform(gen, config.camera_distance, views)
        return _on_circle(angles, distance, _strata(gen, config.mixed_height, views))
    if family == "dome":
        angles = _sectors(gen, views, 0.3)
        radius = uniform(gen, config.camera_distance, views)
        elevation = torch.deg2rad(_strata(gen, config.dome_elevation_deg, views))
        return _on_circle(angles, radius * elevation.cos(), config.look_at_height + radius * elevation.sin())
    if family == "wide_baseline":
        angles = uniform(gen, (0.0, 2 * math.pi)) + _sectors(gen, views, 0.1)
        distance, height = uniform(gen, config.wide_distance, views), uniform(gen, config.camera_height, views)
        return _on_circle(angles, distance, height)
    raise ValueError(f"rig family {family!r}: choose from {', '.join(RIG_FAMILIES)}")


def boxes_around_cameras(boxes: torch.Tensor, extrinsics: torch.Tensor, margin: float = 0.25) -> torch.Tensor:
    """``[B]`` bool: which boxes (``[B, 2, 3]`` min and max corners) a camera of ``extrinsics [V, 3, 4]`` is
    inside of or within ``margin`` of."""
    centres = -(extrinsics[:, :, :3].transpose(1, 2) @ extrinsics[:, :, 3:])[..., 0]          # [V, 3]
    low, high = boxes[:, None, 0] - margin, boxes[:, None, 1] + margin                        # [B, 1, 3]
    return ((centres >= low) & (centres <= high)).all(-1).any(-1)


def _roll(extrinsics: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``[V, 3, 4]`` cameras turned by ``angles [V]`` (radians) about their optical axes, centres kept."""
    cos, sin, zero, one = angles.cos(), angles.sin(), torch.zeros_like(angles), torch.ones_like(angles)
    turn = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], 1).view(-1, 3, 3)
    return turn @ extrinsics  # [R | t] -> [T R | T t]: the same centre -Rᵀt, axes turned in the image plane


def focal_lengths(config: SceneConfig, gen: torch.Generator, width: int) -> torch.Tensor:
    """``[V]`` focal lengths (pixels) from per-camera horizontal fields of view in ``config.fov_deg``."""
    views = config.num_views
    if config.fov_sampling == "uniform":
        return width / 2 / torch.tan(torch.deg2rad(uniform(gen, config.fov_deg, views)) / 2)
    # log-uniform focal length: as many tele as wide cameras, where a uniform FOV favours the wide end
    wide, tele = (width / 2 / math.tan(math.radians(fov) / 2) for fov in (max(config.fov_deg), min(config.fov_deg)))
    return torch.exp(uniform(gen, (math.log(wide), math.log(tele)), views))


def draw_rig(config: SceneConfig, gen: torch.Generator) -> Rig:
    """One scene's cameras: the family (drawn from ``config.rig_families`` when there are several), the frame
    size, the centres, the look-at targets, the rolls and the focal lengths, in that order."""
    views = config.num_views
    families = config.rig_families
    family = families[int(torch.randint(len(families), (1,), generator=gen))] if len(families) > 1 else families[0]
    height, width = frame_size(config, gen)
    centres = camera_centres(family, config, gen)
    # torch.full makes float32 (as the original code did): cat promotes it to float64 with the same rounding
    targets = torch.cat([config.look_at_jitter * uniform(gen, (-1, 1), 2 * views).view(views, 2),
                         torch.full((views, 1), config.look_at_height)], 1)
    extrinsics = torch.stack([look_at(c, t) for c, t in zip(centres, targets, strict=True)])
    if config.roll_deg > 0:
        extrinsics = _roll(extrinsics, torch.deg2rad(uniform(gen, (-config.roll_deg, config.roll_deg), views)))
    focal = focal_lengths(config, gen, width)
    intrinsics = torch.zeros(views, 3, 3, dtype=torch.float64)
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = focal
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = (width - 1) / 2, (height - 1) / 2, 1
    return Rig(intrinsics, extrinsics, family, height, width)
