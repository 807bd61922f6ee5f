"""Surface textures for the synthetic scenes: photographs shipped inside installed packages, and procedural
materials (stone, wood, marble, fabric, cobbles, bricks, concrete, foliage) generated from spectral noise.

Both are libraries of ``TILE_HEIGHT × TILE_WIDTH`` RGB tiles with a mip pyramid, built once per process:

- ``photo_library()``: crops of the photographs that optional dependencies install: the ten Poly Haven (CC0)
  environment maps viser ships (``viz`` extra; two crops of each one's horizon band) and matplotlib's sample
  portrait (``export`` / ``eval`` extras). Nothing is downloaded and ``../shared`` is never read. When none of
  them is installed it is None, with a warning, and ``texture="photo"`` scenes use procedural tiles instead (so
  a scene's look depends on what is installed; its geometry never does).
- ``procedural_library()``: ``PROCEDURAL_TILES`` material tiles from a fixed seed, the same everywhere.

A scene draws, per surface (the floor, each wall, each box, each sphere, each walker's clothes and skin, each
moving box), a tile, a scale, a rotation, an offset and a tint (``draw_surface_textures``). A surface point is
mapped to the tile by dropping its dominant normal axis (box-style projection in the surface's own frame), so
textures on moving objects move with them. Beyond a tile the texture continues mirrored (no seams; the period,
two tiles, is 12 units at scale 1, a room's width), and the mip level follows the pixel's footprint so that
minified photographs blur as a lens would instead of aliasing.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from page4d.data.synthetic_rigs import uniform

TILE_HEIGHT, TILE_WIDTH = 256, 512
TILE_UNITS = 6.0
"""World units one tile's width spans at scale 1 (its height spans half): about 85 texels per unit."""
LEVELS = 3
"""Mip levels: full, half and quarter resolution."""
PROCEDURAL_TILES = 12
"""One tile per material, then a second variant of the first four (stone, wood, marble, fabric)."""
PROCEDURAL_SEED = 16_2024
PHOTO_SOURCES: tuple[tuple[str, str], ...] = (
    ("viser", "_assets/hdri/*.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)
"""(package, glob inside it) of the photographs ``photo_library`` looks for; the package is located, not imported."""
PHOTO_SHARE = 0.6
"""With ``texture="photo"``, the chance that a surface gets a photograph rather than a procedural material."""


@dataclass(frozen=True)
class TextureLibrary:
    """``count`` tiles stacked into one tall atlas per mip level, so one ``grid_sample`` reads any mix of them."""

    levels: tuple[torch.Tensor, ...]
    """``LEVELS`` float32 atlases ``[1, 3, count · h, w]`` (h, w halving per level)."""
    count: int
    names: tuple[str, ...]

    @classmethod
    def from_tiles(cls, tiles: torch.Tensor, names: tuple[str, ...]) -> TextureLibrary:
        """From ``tiles [K, 3, TILE_HEIGHT, TILE_WIDTH]`` in [0, 1]."""
        levels, level = [], tiles.float()
        for _ in range(LEVELS):
            levels.append(level.permute(1, 0, 2, 3).reshape(1, 3, -1, level.shape[-1]).contiguous())
            level = torch.nn.functional.avg_pool2d(level, 2)
        return cls(tuple(levels), len(tiles), names)

    def sample(self, tile: torch.Tensor, uv: torch.Tensor, texels: torch.Tensor) -> torch.Tensor:
        """``[N, 3]`` float64 colours of ``tile [N]`` at ``uv [N, 2]`` (tile widths, tile heights; mirrored
        beyond [0, 1]), blending the two mip levels nearest to ``texels [N]``, the full-resolution texels a pixel
        covers."""
        mirrored = 1 - (uv.remainder(2) - 1).abs()
        level = torch.log2(texels.clamp(min=1)).clamp(max=LEVELS - 1)
        colour = torch.zeros(len(tile), 3, dtype=torch.float64)
        for index, atlas in enumerate(self.levels):
            weight = (1 - (level - index).abs()).clamp(min=0)
            used = (weight > 0).nonzero().squeeze(1)  # most pixels need one or two levels
            if not len(used):
                continue
            rows = TILE_HEIGHT >> index
            # keep half a texel inside the tile: bilinear reads must not bleed into the next tile of the atlas
            v = mirrored[used, 1].clamp(0.5 / rows, 1 - 0.5 / rows)
            grid = torch.stack([2 * mirrored[used, 0] - 1, 2 * (tile[used] + v) / self.count - 1], -1).float()
            read = torch.nn.functional.grid_sample(atlas, grid.view(1, 1, -1, 2), mode="bilinear",
                                                   padding_mode="border", align_corners=False)
            colour[used] += weight[used, None] * read[0, :, 0].T.double()
        return colour


def _package_files(package: str, pattern: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], pattern)))


def photo_files() -> list[str]:
    """Paths of the photographs found (see ``PHOTO_SOURCES``), in a fixed order."""
    return [path for package, pattern in PHOTO_SOURCES for path in _package_files(package, pattern)]


def _photo_tiles(path: str) -> list[torch.Tensor]:
    """``[3, TILE_HEIGHT, TILE_WIDTH]`` crops of one photograph: of a 2:1 panorama, the two halves of its horizon
    band (the poles of an equirectangular map are stretched); of anything else, one centred 2:1 crop."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    if width == 2 * height:
        image = image.resize((2 * TILE_WIDTH, TILE_WIDTH), Image.Resampling.LANCZOS)
        band = (TILE_WIDTH - TILE_HEIGHT) // 2
        boxes = [(x, band, x + TILE_WIDTH, band + TILE_HEIGHT) for x in (0, TILE_WIDTH)]
    else:
        crop_w = min(width, 2 * height)
        crop_h = crop_w // 2
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((TILE_WIDTH, TILE_HEIGHT),
                                                                            Image.Resampling.LANCZOS)
        boxes = [(0, 0, TILE_WIDTH, TILE_HEIGHT)]
    return [torch.from_numpy(np.asarray(image.crop(box), dtype=np.float32) / 255).permute(2, 0, 1) for box in boxes]


@functools.lru_cache(maxsize=1)
def photo_library() -> TextureLibrary | None:
    """Crops of the installed photographs, or None (with a warning) when none is installed."""
    tiles, names = [], []
    for path in photo_files():
        try:
            crops = _photo_tiles(path)
        except OSError:  # a damaged file: skip it, the others still make a library
            continue
        tiles += crops
        names += [f"{os.path.basename(path)}#{i}" for i in range(len(crops))]
    if not tiles:
        warnings.warn("texture='photo': no photographs found (install page4d[viz] or matplotlib); "
                      "using procedural materials instead", RuntimeWarning, stacklevel=2)
        return None
    return TextureLibrary.from_tiles(torch.stack(tiles), tuple(names))


# --- procedural materials -----------------------------------------------------------------------------------------

_REAL = torch.float32
"""Materials are made in float32, the atlas's precision (and half the memory traffic of float64)."""
_ROWS, _COLS = TILE_HEIGHT // 2, TILE_WIDTH // 2
"""Materials are made at half the tile's resolution, then upsampled (bicubic): a quarter of the work, and they
are smooth at that scale anyway."""


def _noise(gen: torch.Generator, beta: float, stretch: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """``[H, W]`` zero-mean, unit-variance fractal noise, built coarse to fine: each level doubles the grid
    (bicubic) and adds white noise weighted ``2^(-beta · level)``, so the amplitude spectrum falls as
    ``f^-beta`` (natural images are near 1). ``stretch`` > 1 lengthens the features along (x, y)."""
    rows, cols = max(round(_ROWS / stretch[1]), 4), max(round(_COLS / stretch[0]), 4)
    field = torch.randn(1, 1, 2, 2, generator=gen, dtype=_REAL)
    weight = 1.0
    while field.shape[-2] < rows or field.shape[-1] < cols:
        size = (min(2 * field.shape[-2], rows), min(2 * field.shape[-1], cols))
        weight *= 2.0**-beta
        field = torch.nn.functional.interpolate(field, size=size, mode="bicubic", align_corners=False)
        field += weight * torch.randn(1, 1, *size, generator=gen, dtype=_REAL)
    if field.shape[-2:] != (_ROWS, _COLS):
        field = torch.nn.functional.interpolate(field, size=(_ROWS, _COLS), mode="bicubic",
                                                align_corners=False)
    field = field[0, 0]
    return (field - field.mean()) / field.std()


def _hsv(gen: torch.Generator, hue: tuple[float, float], saturation: tuple[float, float],
         value: tuple[float, float]) -> torch.Tensor:
    """``[3]`` RGB of a colour drawn uniformly in the HSV box."""
    h, s, v = (float(uniform(gen, bounds)) for bounds in (hue, saturation, value))
    k = torch.tensor([5.0, 3.0, 1.0], dtype=_REAL)
    k = (k + 6 * (h % 1.0)) % 6
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _mix(low: torch.Tensor, high: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]``: ``low`` where ``amount`` is 0, ``high`` where it is 1."""
    return low[:, None, None] * (1 - amount) + high[:, None, None] * amount


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Tile coordinates ``x [1, W]`` in [0, 2) and ``y [H, 1]`` in [0, 1): one unit is the tile's height."""
    return (torch.arange(_COLS, dtype=_REAL)[None, :] / _ROWS,
            torch.arange(_ROWS, dtype=_REAL)[:, None] / _ROWS)


def _stone(gen: torch.Generator) -> torch.Tensor:
    low, high = _hsv(gen, (0.05, 0.15), (0.05, 0.3), (0.3, 0.5)), _hsv(gen, (0.0, 0.2), (0.05, 0.25), (0.6, 0.85))
    body = torch.sigmoid(1.5 * _noise(gen, 1.8))
    return _mix(low, high, body) * (1 + 0.08 * _noise(gen, 0.9))


def _wood(gen: torch.Generator) -> torch.Tensor:
    _, y = _grid()
    rings = float(uniform(gen, (5.0, 14.0)))
    # rings of uneven width (growth varies from year to year) and bent along the board
    warped = (y + 0.12 * _noise(gen, 2.5, (4.0, 1.0))) * rings + 0.3 * _noise(gen, 2.2)
    late = (warped.remainder(1.0)) ** 0.5  # each ring darkens sharply at its end, like latewood
    grain = _noise(gen, 1.0, (12.0, 1.0))
    dark, light = _hsv(gen, (0.04, 0.09), (0.5, 0.75), (0.25, 0.45)), _hsv(gen, (0.06, 0.11), (0.35, 0.6), (0.6, 0.85))
    return _mix(light, dark, 0.75 * late) * (1 + 0.07 * grain)


def _marble(gen: torch.Generator) -> torch.Tensor:
    x, y = _grid()
    angle, bands = float(uniform(gen, (0, math.pi))), float(uniform(gen, (1.5, 4.0)))
    wave = torch.sin(2 * math.pi * bands * (x * math.cos(angle) + y * math.sin(angle)) + 3.0 * _noise(gen, 1.6))
    veins = (1 - wave.abs()) ** 8
    base, vein = _hsv(gen, (0.0, 1.0), (0.0, 0.12), (0.75, 0.95)), _hsv(gen, (0.0, 1.0), (0.0, 0.3), (0.2, 0.45))
    return _mix(base, vein, veins) * (1 + 0.04 * _noise(gen, 1.2))


def _fabric(gen: torch.Generator) -> torch.Tensor:
    x, y = _grid()
    threads = float(uniform(gen, (16.0, 32.0)))  # per tile height: 8 to 16 texels a thread at full resolution
    u, v = x * threads, y * threads
    warp, weft = torch.sin(math.pi * u.remainder(1.0)), torch.sin(math.pi * v.remainder(1.0))
    over = (torch.floor(u) + torch.floor(v)).remainder(2) < 0.5
    weave = torch.where(over, weft.expand(_ROWS, _COLS), warp.expand(_ROWS, _COLS))
    colour = _hsv(gen, (0.0, 1.0), (0.3, 0.8), (0.35, 0.8))
    shade = (0.65 + 0.35 * weave) * (1 + 0.12 * _noise(gen, 1.7)) * (1 + 0.05 * _noise(gen, 0.5))
    return colour[:, None, None] * shade


def _cobbles(gen: torch.Generator) -> torch.Tensor:
    x, y = _grid()
    count = int(torch.randint(40, 90, (1,), generator=gen))
    seeds = torch.rand(count, 2, generator=gen, dtype=_REAL) * torch.tensor([2.0, 1.0], dtype=_REAL)
    points = torch.stack(torch.broadcast_tensors(x, y), -1).reshape(-1, 2)
    nearest = torch.cdist(points, seeds).topk(2, largest=False)
    gap = (nearest.values[:, 1] - nearest.values[:, 0]).view(_ROWS, _COLS)
    mortar = torch.clamp(1 - gap / 0.02, 0, 1)
    shade = 0.75 + 0.5 * torch.rand(count, generator=gen, dtype=_REAL)
    cell = shade[nearest.indices[:, 0]].view(_ROWS, _COLS)
    stone = _hsv(gen, (0.0, 0.15), (0.05, 0.35), (0.45, 0.7))[:, None, None] * cell * (1 + 0.1 * _noise(gen, 1.3))
    return _mix(torch.zeros(3, dtype=_REAL), torch.ones(3, dtype=_REAL), 1 - 0.7 * mortar) * stone


def _bricks(gen: torch.Generator) -> torch.Tensor:
    x, y = _grid()
    rows = float(uniform(gen, (6.0, 11.0)))
    length = float(uniform(gen, (2.0, 3.0))) / rows
    row = torch.floor(y * rows)
    shifted = x + 0.5 * length * row.remainder(2)
    column = torch.floor(shifted / length)
    mortar = ((y * rows).remainder(1.0) < 0.08) | ((shifted / length).remainder(1.0) < 0.04)
    table = 0.8 + 0.4 * torch.rand(64, 64, generator=gen, dtype=_REAL)
    brick = table[row.long().remainder(64), column.long().remainder(64)]
    red = _hsv(gen, (0.0, 0.07), (0.45, 0.75), (0.4, 0.7))[:, None, None] * brick * (1 + 0.1 * _noise(gen, 1.1))
    grey = _hsv(gen, (0.0, 1.0), (0.0, 0.1), (0.6, 0.8))[:, None, None].expand_as(red)
    return torch.where(mortar, grey, red)


def _concrete(gen: torch.Generator) -> torch.Tensor:
    grey = _hsv(gen, (0.0, 1.0), (0.0, 0.08), (0.4, 0.7))
    speckle = (torch.randn(_ROWS, _COLS, generator=gen, dtype=_REAL) > 2.3).to(_REAL)
    return grey[:, None, None] * (1 + 0.12 * _noise(gen, 0.6) + 0.15 * _noise(gen, 1.8) - 0.25 * speckle)


def _foliage(gen: torch.Generator) -> torch.Tensor:
    dark, light = _hsv(gen, (0.2, 0.35), (0.5, 0.85), (0.15, 0.35)), _hsv(gen, (0.15, 0.3), (0.4, 0.8), (0.5, 0.8))
    leaves = torch.sigmoid(2.5 * (_noise(gen, 0.7) + 0.6 * _noise(gen, 1.5)))
    return _mix(dark, light, leaves)


MATERIALS = {"stone": _stone, "wood": _wood, "marble": _marble, "fabric": _fabric, "cobbles": _cobbles,
             "bricks": _bricks, "concrete": _concrete, "foliage": _foliage}


@functools.lru_cache(maxsize=1)
def procedural_library() -> TextureLibrary:
    """``PROCEDURAL_TILES`` material tiles (each material in turn) from ``PROCEDURAL_SEED``: the same on every
    machine, independent of the scene seeds (a scene draws which tiles it uses)."""
    gen = torch.Generator().manual_seed(PROCEDURAL_SEED)
    names = [list(MATERIALS)[i % len(MATERIALS)] for i in range(PROCEDURAL_TILES)]
    tiles = torch.stack([MATERIALS[name](gen) for name in names])
    tiles = torch.nn.functional.interpolate(tiles, size=(TILE_HEIGHT, TILE_WIDTH), mode="bicubic", align_corners=False)
    return TextureLibrary.from_tiles(tiles.clamp(0, 1), tuple(names))


# --- a scene's surfaces -------------------------------------------------------------------------------------------


@dataclass
class SurfaceTextures:
    """What each texture *slot* (one surface or object group of a scene) shows and how it is placed."""

    photo: torch.Tensor
    """``[S]`` bool: read from ``photo_library()`` (else ``procedural_library()``)."""
    tile: torch.Tensor
    """``[S]`` long tile index in its library."""
    transform: torch.Tensor
    """``[S, 2, 2]`` float64 surface coordinates (world units) → tile uv: rotation and scale."""
    offset: torch.Tensor
    """``[S, 2]`` float64 uv offset."""
    tint: torch.Tensor
    """``[S, 3]`` float64 colour multiplier (1 = the tile's own colours)."""
    texels_per_unit: torch.Tensor
    """``[S]`` full-resolution texels per world unit (picks the mip level)."""


def draw_surface_textures(gen: torch.Generator, slots: int, upright: torch.Tensor, photo_share: float,
                          size: torch.Tensor | None = None) -> SurfaceTextures:
    """Placement of ``slots`` surfaces: each tile spans ``TILE_UNITS`` times a log-uniform scale in [0.8, 2] and
    ``size [S]`` (default 1; large for the floor, so that its mirrored continuation stays far away); ``upright
    [S]`` bool keeps a slot's tile nearly upright (walls). With no photographs installed, photo slots fall back to
    procedural tiles (the draws stay the same)."""
    pick, index = torch.rand(slots, generator=gen, dtype=torch.float64), torch.rand(slots, generator=gen,
                                                                                    dtype=torch.float64)
    scale = torch.exp(uniform(gen, (math.log(0.8), math.log(2.0)), slots))
    if size is not None:
        scale = scale * size
    angle = uniform(gen, (-math.pi, math.pi), slots) * torch.where(upright, 0.05, 1.0)
    offset = uniform(gen, (0.0, 2.0), 2 * slots).view(slots, 2)
    colour, strength = torch.rand(slots, 3, generator=gen, dtype=torch.float64), uniform(gen, (0.0, 0.5), slots)
    photos = photo_library() if photo_share > 0 else None
    photo = (pick < photo_share) & (photos is not None)
    count = torch.where(photo, photos.count if photos is not None else 1, procedural_library().count)
    cos, sin = angle.cos(), angle.sin()
    units = TILE_UNITS * scale
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(slots, 2, 2)
    transform = rotate / torch.stack([units, units / 2], 1)[:, :, None]  # v spans half a tile width's units
    tint = 1 - strength[:, None] + strength[:, None] * 1.6 * colour
    return SurfaceTextures(photo, (index * count).long().clamp(max=count - 1), transform, offset, tint,
                           TILE_WIDTH / units)


def surface_uv(points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` surface coordinates of ``points [N, 3]``: the two axes left when the dominant axis of
    ``normals`` is dropped, with z pointing down the tile so that wall textures stand upright."""
    axis = normals.abs().argmax(dim=1)
    first = torch.where(axis == 0, points[:, 1], points[:, 0])
    second = torch.where(axis == 2, points[:, 1], -points[:, 2])
    return torch.stack([first, second], 1)


def albedo(textures: SurfaceTextures, slot: torch.Tensor, points: torch.Tensor, normals: torch.Tensor,
           footprint: torch.Tensor) -> torch.Tensor:
    """``[N, 3]`` surface colour of ``points [N, 3]`` (in their surface's frame, ``normals`` likewise) on texture
    slots ``slot [N]``; ``footprint [N]`` is the world size of each pixel there."""
    uv = (textures.transform[slot] @ surface_uv(points, normals)[..., None])[..., 0] + textures.offset[slot]
    texels = footprint * textures.texels_per_unit[slot]
    colour = torch.zeros(len(slot), 3, dtype=torch.float64)
    photo = textures.photo[slot]
    for library, chosen in ((photo_library() if bool(photo.any()) else None, photo), (procedural_library(), ~photo)):
        where = chosen.nonzero().squeeze(1)
        if library is not None and len(where):
            colour[where] = library.sample(textures.tile[slot[where]], uv[where], texels[where])
    return (colour * textures.tint[slot]).clamp(0, 1)
