"""What the synthetic scenes have beyond the original generator: the draw of the extras (movers, their colours,
the light, the texture placement), per-scene lighting, and albedo read from the texture libraries
(``page4d.data.textures``) in each surface's own frame.

The surface kinds (``FLOOR`` ... ``MOVING_BOXES``, ``SKY`` for no hit) live here so that the renderer
(``page4d.data.synthetic``, which re-exports them) and these helpers agree on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from page4d.data import textures as tex
from page4d.data.scene_config import SceneConfig
from page4d.data.synthetic_objects import Movers, draw_movers, local_coordinates
from page4d.data.synthetic_rigs import uniform

SKY = -1
SKY_COLOUR = torch.tensor([0.65, 0.7, 1.0], dtype=torch.float64)
FLOOR, WALLS, BOXES, SPHERES, CAPSULES, MOVING_BOXES = 0, 1, 2, 3, 4, 5
"""Surface kinds, in the order of ``_Hits.kind``; ``SPHERES`` and above move (walker parts are capsules)."""


@dataclass
class Light:
    """A scene's light (``SceneConfig.lighting``)."""

    gain: torch.Tensor
    """``[3]`` brightness times the colour temperature's RGB gains."""
    direction: torch.Tensor
    """``[3]`` unit vector towards the light (20° to 85° above the horizon)."""
    ambient: float


def draw_light(config: SceneConfig, gen: torch.Generator) -> Light:
    gain, warm = uniform(gen, config.brightness), uniform(gen, (-config.warmth, config.warmth))
    azimuth, elevation = uniform(gen, (0, 2 * math.pi)), uniform(gen, (math.radians(20), math.radians(85)))
    direction = torch.cat([elevation.cos() * azimuth.cos(), elevation.cos() * azimuth.sin(), elevation.sin()])
    rgb = torch.cat([1 + warm, torch.ones(1, dtype=torch.float64), 1 - warm])  # warm: redder, cool: bluer
    return Light(gain * rgb, direction, float(uniform(gen, config.ambient)))


def lit(colour: torch.Tensor, kind: torch.Tensor, normal: torch.Tensor, rays: torch.Tensor, light: Light
        ) -> torch.Tensor:
    """``[N, 3]``: ambient plus Lambert from ``light`` on the side of each surface its ray sees (a wall seen from
    outside is lit on that side); the sky takes the light's gain too."""
    facing = normal * -torch.sign((normal * rays).sum(1, keepdim=True))
    shading = light.ambient + (1 - light.ambient) * (facing @ light.direction).clamp(min=0)
    colour = colour * shading[:, None] * light.gain
    return torch.where((kind == SKY)[:, None], SKY_COLOUR * light.gain, colour).clamp(0, 1)


def object_frame(points: torch.Tensor, kind: torch.Tensor, index: torch.Tensor, normal: torch.Tensor,
                 movers: Movers, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points and normals ``[N, 3]`` in the frame of the walker part / moving box each pixel sees (unchanged for
    other pixels), so patterns stay fixed on the moving objects."""
    local, turned = points.clone(), normal.clone()
    for code, name in ((CAPSULES, "capsule"), (MOVING_BOXES, "box")):
        where = (kind == code).nonzero().squeeze(1)
        if len(where):
            local[where], turned[where] = local_coordinates(name, index[where], points[where], normal[where], movers, t)
    return local, turned


def walker_slots(movers: Movers | None) -> int:
    """Texture slots the walkers take (shirt, skin and trousers each)."""
    return 0 if movers is None or not len(movers.capsule_slots) else int(movers.capsule_slots.max()) + 1


@dataclass
class Extras:
    """What a scene has beyond the original generator's (which has none)."""

    movers: Movers | None
    palette: torch.Tensor
    """``[12, 3]`` with movers: the scene's 8 colours, then two for walker parts and two for moving boxes."""
    light: Light | None
    textures: tex.SurfaceTextures | None
    first_slot: dict[int, int]
    """First texture slot of each surface kind."""


def draw_extras(config: SceneConfig, gen: torch.Generator, palette: torch.Tensor, boxes: int, spheres: int) -> Extras:
    """Movers, then their colours, then the light, then the texture placement (each drawn only when asked for),
    for a scene of ``palette [8, 3]`` with ``boxes`` static boxes and ``spheres`` spheres."""
    moving = config.walkers != (0, 0) or config.moving_boxes != (0, 0)
    movers = draw_movers(config, gen, config.num_times) if moving else None
    if moving:
        palette = torch.cat([palette, torch.rand(4, 3, generator=gen, dtype=torch.float64)])
    light = draw_light(config, gen) if config.lighting else None
    counts = {FLOOR: 1, WALLS: 4, BOXES: boxes, SPHERES: spheres, CAPSULES: walker_slots(movers),
              MOVING_BOXES: 0 if movers is None else movers.boxes}
    first = dict(zip(counts, np.cumsum([0, *counts.values()])[:-1].tolist(), strict=True))
    textures = None
    if config.texture in ("procedural", "photo"):
        upright = torch.zeros(sum(counts.values()), dtype=torch.bool)
        upright[first[WALLS]:first[WALLS] + 4] = True  # wall photographs stand (nearly) upright
        share = tex.PHOTO_SHARE if config.texture == "photo" else 0.0
        size = torch.ones(len(upright), dtype=torch.float64)
        size[first[FLOOR]] = 1.5  # the floor fills most views: keep its mirrored continuation out of the room
        textures = tex.draw_surface_textures(gen, len(upright), upright, share, size)
    return Extras(movers, palette, light, textures, first)


@dataclass
class SceneSurfaces:
    """What ``textured`` needs of a scene at one time step."""

    textures: tex.SurfaceTextures
    first_slot: dict[int, int]
    """First texture slot of each surface kind (the floor, the four walls, each box, sphere, ...)."""
    sphere_centres: torch.Tensor
    """``[S, 3]`` at this time step."""
    sphere_turn: torch.Tensor
    """``[S]`` each sphere's rotation about z so far (radians)."""
    movers: Movers | None
    t: int


def textured(points: torch.Tensor, kind: torch.Tensor, index: torch.Tensor, normal: torch.Tensor,
             depth: torch.Tensor, rays: torch.Tensor, focal: float, scene: SceneSurfaces) -> torch.Tensor:
    """``[N, 3]`` albedo of the hits (``points``, ``kind``, ``index``, ``normal``, ``depth`` per ray; 0 for the
    sky), each read in its surface's frame: the world for the room and static boxes, a sphere's centre turned by
    its spin, a walker part's or moving box's own axes."""
    local, turned = points, normal
    if scene.movers is not None:
        local, turned = object_frame(points, kind, index, normal, scene.movers, scene.t)
    on_sphere = (kind == SPHERES).nonzero().squeeze(1)
    if len(on_sphere):
        local, turned = local.clone(), turned.clone()
        angle = -scene.sphere_turn[index[on_sphere]]
        cos, sin = angle.cos(), angle.sin()
        for values, shift in ((local, scene.sphere_centres[index[on_sphere]]), (turned, 0)):
            rel = values[on_sphere] - shift
            values[on_sphere] = torch.stack([cos * rel[:, 0] - sin * rel[:, 1], sin * rel[:, 0] + cos * rel[:, 1],
                                             rel[:, 2]], 1)
    slot = index.clone()
    for code, first in scene.first_slot.items():
        own = index
        if code == CAPSULES and scene.movers is not None and len(scene.movers.capsule_slots):
            own = scene.movers.capsule_slots[index.clamp(max=len(scene.movers.capsule_slots) - 1)]
        slot = torch.where(kind == code, first + own, slot)
    seen = (kind != SKY).nonzero().squeeze(1)
    # a pixel's footprint on the surface: its size at that depth, stretched where the surface is seen obliquely
    facing = ((normal * rays).sum(1).abs() / rays.norm(dim=1)).clamp(min=0.1)
    footprint = depth / focal / facing.sqrt()
    colour = torch.zeros(len(points), 3, dtype=torch.float64)
    colour[seen] = tex.albedo(scene.textures, slot[seen], local[seen], turned[seen], footprint[seen])
    return colour
