"""Moving objects of the synthetic scenes beyond the rolling spheres: walkers and moving boxes, ray-cast exactly.

A *walker* is a human-scale figure of six capsules (a capsule: the points within ``radius`` of a segment; a sphere
is a capsule whose segment has length 0): torso, head, two legs and two arms. Legs and arms swing about the hip
and shoulder axis with the gait phase, opposite to each other; the walker translates across the floor, facing its
direction of motion, with a cadence tied to its speed (a stride of ``4 · leg · swing`` per gait cycle, so the
feet barely slide) and its pelvis dropping as its legs spread, so that its feet stay on the floor. A *moving box*
is a box resting on the floor that translates and turns about z. Both bounce
inside the square ``|x|, |y| <= moving_area``, their straight path folded back like the spheres'.

World axes: z up, floor at z = 0. Every part's surface is known in closed form, so depth and the dynamic mask
(all of these are moving) stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from page4d.data.scene_config import SceneConfig
from page4d.data.synthetic_rigs import uniform

EPS = 1e-9
PARTS_PER_WALKER = 6
"""Torso, head, left leg, right leg, left arm, right arm."""
PART_GROUP = torch.tensor([0, 1, 2, 2, 0, 0])
"""Colour / texture group of each part: 0 shirt (torso, arms), 1 skin (head), 2 trousers (legs)."""
GROUPS_PER_WALKER = 3


@dataclass
class Movers:
    """Walkers and moving boxes of one scene over its ``T`` time steps."""

    capsules: torch.Tensor
    """``[T, P, 2, 3]`` float64 segment end points of every walker part (``P = 6 · walkers``)."""
    capsule_radii: torch.Tensor
    """``[P]`` float64."""
    capsule_frames: torch.Tensor
    """``[T, P, 3, 3]`` rows: each part's own axes (along the segment first), which its texture is fixed in."""
    capsule_slots: torch.Tensor
    """``[P]`` long colour / texture group of each part across all walkers (``3 · walker + group``)."""
    bounds: torch.Tensor
    """``[T, walkers, 4]`` a sphere (centre, radius) around each walker: rays that miss it skip its parts."""
    box_centres: torch.Tensor
    """``[T, M, 3]`` float64 centres of the moving boxes."""
    box_half_sizes: torch.Tensor
    """``[M, 3]`` float64 half extents in each box's own frame."""
    box_yaws: torch.Tensor
    """``[T, M]`` float64 rotation about z (radians): box frame → world is ``Rz(yaw)``."""

    @classmethod
    def empty(cls, times: int) -> Movers:
        """No walkers and no moving boxes over ``times`` steps."""
        none = torch.zeros(times, 0, dtype=torch.float64)
        return cls(none[..., None, None].expand(times, 0, 2, 3), none[0], none[..., None, None].expand(times, 0, 3, 3),
                   torch.zeros(0, dtype=torch.long), none[..., None].expand(times, 0, 4),
                   none[..., None].expand(times, 0, 3), none[0, :, None].expand(0, 3), none)

    @property
    def walkers(self) -> int:
        return self.capsule_radii.shape[0] // PARTS_PER_WALKER

    @property
    def boxes(self) -> int:
        return self.box_half_sizes.shape[0]


def fold(path: torch.Tensor, limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``path`` folded back into ``[-limit, limit]`` (a bounce off each side) and the sign of its slope (±1)."""
    phase = (path + limit).remainder(4 * limit) - 2 * limit
    slope = -torch.sign(phase)
    return limit - phase.abs(), torch.where(slope == 0, 1.0, slope)


def _count(gen: torch.Generator, bounds: tuple[int, int]) -> int:
    return int(torch.randint(bounds[0], bounds[1] + 1, (1,), generator=gen))


def _walkers(config: SceneConfig, gen: torch.Generator, times: int) -> tuple[torch.Tensor, ...]:
    """Parts ``[T, P, 2, 3]``, radii ``[P]``, frames ``[T, P, 3, 3]`` and bounds ``[T, N, 4]`` of N walkers."""
    count = _count(gen, config.walkers)
    stature = uniform(gen, config.walker_height, count)
    speed, heading = uniform(gen, config.walker_speed, count), uniform(gen, (0, 2 * math.pi), count)
    start = uniform(gen, (-config.moving_area, config.moving_area), 2 * count).view(count, 2)
    swing, phase = uniform(gen, (0.3, 0.55), count), uniform(gen, (0, 2 * math.pi), count)
    step = torch.arange(times, dtype=torch.float64)[:, None]                                     # [T, 1]
    velocity = torch.stack([heading.cos(), heading.sin()], 1) * speed[:, None]                   # [N, 2]
    xy, slope = fold(start + step[..., None] * velocity, config.moving_area)                     # [T, N, 2]
    zeros = torch.zeros(times, count, 1, dtype=torch.float64)
    forward = torch.cat([torch.nn.functional.normalize(velocity * slope, dim=-1), zeros], -1)  # facing its motion
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(forward)
    left = torch.linalg.cross(up, forward)
    size = stature[:, None]                                                                      # [N, 1]
    leg, leg_radius, arm = 0.45 * size, 0.055 * size, 0.36 * size
    cadence = speed[:, None] / (4 * leg * swing[:, None] / (2 * math.pi))                         # radians per step
    angle = swing * torch.sin(step * cadence.T + phase)                                          # [T, N]
    # the pelvis drops as the legs spread, so that the feet stay on the floor (as in a real gait)
    base = torch.cat([xy, -(leg[:, 0] * (1 - angle.cos()))[..., None]], -1)

    def at(height: torch.Tensor, side: float = 0.0) -> torch.Tensor:
        return base + up * (height * stature)[..., None] + left * (side * stature)[..., None]

    def limb(root: torch.Tensor, length: torch.Tensor, swing_angle: torch.Tensor) -> torch.Tensor:
        tip = root + length.T[..., None] * (swing_angle.sin()[..., None] * forward - swing_angle.cos()[..., None] * up)
        return torch.stack([root, tip], -2)

    hip = (leg + leg_radius).T / stature                                                          # [1, N]
    torso = torch.stack([at(hip + 0.06), at(torch.full_like(hip, 0.76))], -2)
    head = at(torch.full_like(hip, 0.93))
    shoulder = torch.full_like(hip, 0.82)
    parts = torch.stack([
        torso, torch.stack([head, head], -2),
        limb(at(hip, 0.085), leg, angle), limb(at(hip, -0.085), leg, -angle),
        limb(at(shoulder, 0.17), arm, -0.7 * angle), limb(at(shoulder, -0.17), arm, 0.7 * angle),
    ], 2)                                                                                         # [T, N, 6, 2, 3]
    radii = torch.stack([0.12 * stature, 0.065 * stature, leg_radius[:, 0], leg_radius[:, 0], 0.04 * stature,
                         0.04 * stature], 1)                                                      # [N, 6]
    axis = parts[..., 1, :] - parts[..., 0, :]
    along = torch.where(axis.norm(dim=-1, keepdim=True) > EPS, axis, up[:, :, None]).expand_as(axis)
    along = torch.nn.functional.normalize(along, dim=-1)
    across = left[:, :, None].expand_as(along)  # the limbs swing in the forward-up plane: left stays square to them
    frames = torch.stack([along, torch.linalg.cross(across, along), across], -2)                 # [T, N, 6, 3, 3]
    middle = at(torch.full_like(hip, 0.5))
    reach = ((parts - middle[:, :, None, None]).norm(dim=-1).amax(-1) + radii).amax(-1)         # [T, N]
    bounds = torch.cat([middle, reach[..., None]], -1)
    return parts.flatten(1, 2), radii.flatten(), frames.flatten(1, 2), bounds


def draw_movers(config: SceneConfig, gen: torch.Generator, times: int) -> Movers:
    """Walkers then moving boxes of one scene; no draws from ``gen`` for a kind whose count range is ``(0, 0)``."""
    if config.walkers != (0, 0):
        capsules, radii, frames, bounds = _walkers(config, gen, times)
    else:
        none = Movers.empty(times)
        capsules, radii, frames, bounds = none.capsules, none.capsule_radii, none.capsule_frames, none.bounds
    slots = (GROUPS_PER_WALKER * torch.arange(len(radii) // PARTS_PER_WALKER)[:, None] + PART_GROUP).flatten()
    count = _count(gen, config.moving_boxes) if config.moving_boxes != (0, 0) else 0
    half = uniform(gen, (0.15, 0.45), 3 * count).view(count, 3)
    start = uniform(gen, (-config.moving_area, config.moving_area), 2 * count).view(count, 2)
    heading, speed = uniform(gen, (0, 2 * math.pi), count), uniform(gen, config.speed, count)
    yaw, turn = uniform(gen, (0, 2 * math.pi), count), uniform(gen, (-0.3, 0.3), count)
    step = torch.arange(times, dtype=torch.float64)[:, None]
    velocity = torch.stack([heading.cos(), heading.sin()], 1) * speed[:, None]
    xy, _ = fold(start + step[..., None] * velocity, config.moving_area)
    centres = torch.cat([xy, half[:, 2].expand(times, count)[..., None]], -1)  # resting on the floor
    return Movers(capsules, radii, frames, slots, bounds, centres, half, yaw + step * turn)


def _reach(origin: torch.Tensor, rays: torch.Tensor, spheres: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` bool: which rays meet which of ``spheres [K, 4]`` (centre, radius) in front of the camera."""
    rel = origin - spheres[:, :3]                                                      # [K, 3]
    a, b = (rays * rays).sum(1, keepdim=True), rays @ rel.T                            # [N, 1], [N, K]
    disc = b * b - a * ((rel * rel).sum(1) - spheres[:, 3] ** 2)
    return (disc >= 0) & (-b + disc.clamp(min=0).sqrt() > EPS * a)


def capsules_hit(origin: torch.Tensor, rays: torch.Tensor, ends: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First hit ``[N]`` (inf: none), which capsule ``[N]`` and unit normal ``[N, 3]`` of ``rays [N, 3]`` from
    ``origin`` with the capsules around segments ``ends [P, 2, 3]`` of radii ``[P]``. A capsule's first hit is
    the nearest of its two end spheres and its side, a cylinder clipped to the segment (a ray entering through a
    flat end of that cylinder has entered an end sphere before)."""
    dd = (rays * rays).sum(1, keepdim=True)                                            # [N, 1]
    # end spheres: |o + s d - c|² = r²
    centres, radii = ends.reshape(-1, 3), radius.repeat_interleave(2)                  # [2P, 3], [2P]
    rel = origin - centres
    b = rays @ rel.T                                                                   # [N, 2P]
    disc = b * b - dd * ((rel * rel).sum(1) - radii**2)
    step = (-b - disc.clamp(min=0).sqrt()) / dd
    ends_step = torch.where((disc >= 0) & (step > EPS), step, math.inf).unflatten(1, (-1, 2)).amin(2)  # [N, P]
    # side: |w - (w·u) u|² = r² for w = o + s d - a and u the unit axis; scaled by |axis|²: A s² + 2 B s + C = 0
    axis, rel = ends[:, 1] - ends[:, 0], origin - ends[:, 0]                          # [P, 3]
    length2, ra = (axis * axis).sum(1), (rel * axis).sum(1)                            # [P]
    da = rays @ axis.T                                                                 # [N, P]
    big_a = length2 * dd - da**2
    big_b = length2 * (rays @ rel.T) - ra * da
    big_c = length2 * (rel * rel).sum(1) - ra**2 - radius**2 * length2
    disc = big_b**2 - big_a * big_c
    step = (-big_b - disc.clamp(min=0).sqrt()) / torch.where(big_a > EPS, big_a, 1.0)
    along = ra + step * da
    side = (disc >= 0) & (big_a > EPS) & (step > EPS) & (along > 0) & (along < length2)
    depth, part = torch.minimum(torch.where(side, step, math.inf), ends_step).min(1)
    # on a capsule's surface the normal points away from the nearest point of its segment (side and caps alike)
    point = origin + torch.where(torch.isfinite(depth), depth, 0)[:, None] * rays
    start, span = ends[part, 0], axis[part]
    fraction = ((point - start) * span).sum(1) / length2[part].clamp(min=EPS)
    nearest = start + fraction.clamp(0, 1)[:, None] * span
    return depth, part, (point - nearest) / radius[part][:, None]


def yaw_matrix(yaw: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` rotation about z by ``yaw`` (radians)."""
    cos, sin, zero, one = yaw.cos(), yaw.sin(), torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], -1).unflatten(-1, (3, 3))


def box_hit(origin: torch.Tensor, rays: torch.Tensor, centre: torch.Tensor, half: torch.Tensor,
            turn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First hit ``[N]`` and world normal ``[N, 3]`` with the box ``centre ± half`` in its own frame, which
    ``turn [3, 3]`` maps to the world: the slab test on the rays taken into the box frame."""
    local_origin, local_rays = turn.T @ (origin - centre), rays @ turn
    safe = torch.where(local_rays.abs() > EPS, local_rays, EPS)
    near, far = (-half - local_origin) / safe, (half - local_origin) / safe
    low = torch.minimum(near, far)
    enter, leave = low.max(dim=1).values, torch.maximum(near, far).min(dim=1).values
    face = low.argmax(dim=1)
    normal = torch.zeros(len(rays), 3, dtype=torch.float64)
    normal.scatter_(1, face[:, None], -torch.sign(local_rays.gather(1, face[:, None])))
    return torch.where((enter <= leave) & (enter > EPS), enter, math.inf), normal @ turn.T


def mover_hits(origin: torch.Tensor, rays: torch.Tensor, movers: Movers, t: int
               ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(kind, index [n], rays' indices [n], depth [n], normal [n, 3])`` of the walker parts (``"capsule"``) and
    of each moving box (``"box"``) at time ``t``, for the rays that reach a bounding sphere only (the rest cannot
    hit them)."""
    boxes = torch.cat([movers.box_centres[t], movers.box_half_sizes.norm(dim=1, keepdim=True)], 1)
    reach = _reach(origin, rays, torch.cat([movers.bounds[t], boxes]))                # [N, walkers + boxes]
    near = reach[:, :movers.walkers].any(1).nonzero().squeeze(1)
    if len(near):
        depth, part, normal = capsules_hit(origin, rays[near], movers.capsules[t], movers.capsule_radii)
        yield "capsule", part, near, depth, normal
    turns = yaw_matrix(movers.box_yaws[t])
    for m in range(movers.boxes):
        near = reach[:, movers.walkers + m].nonzero().squeeze(1)
        if len(near):
            depth, normal = box_hit(origin, rays[near], movers.box_centres[t, m], movers.box_half_sizes[m], turns[m])
            yield "box", torch.full_like(near, m), near, depth, normal


def local_coordinates(kind: str, index: torch.Tensor, points: torch.Tensor, normals: torch.Tensor,
                      movers: Movers, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[N, 3]`` and normals in the frame of the part / box ``index [N]`` they lie on at time ``t``:
    textures are read there, so they move rigidly with the object."""
    if kind == "capsule":
        frames = movers.capsule_frames[t, index]
        rel = points - movers.capsules[t, index, 0]
    else:
        frames = yaw_matrix(movers.box_yaws[t, index]).transpose(-1, -2)
        rel = points - movers.box_centres[t, index]
    return (frames @ rel[..., None])[..., 0], (frames @ normals[..., None])[..., 0]
