"""PNG panels: per time step, a grid of one column per view and one row per map, at the model resolution.

Rows, each under a label strip of ``LABEL_HEIGHT`` pixels: ``image`` (the model-input pixels, unchanged),
``depth`` (``DEPTH_COLORMAP``), ``confidence`` (``CONF_COLORMAP``), ``dynamic mask`` (grey, 255 = moving;
omitted when the reconstruction has no mask). Depth and confidence share one colour range per time step over
all views, the ``ROBUST_PERCENTILES`` of its valid values, written in the labels; invalid pixels (not finite,
or <= 0) are black. A panel is ``V·W`` wide and ``rows · (LABEL_HEIGHT + H)`` high.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from page4d.export.points import time_name
from page4d.reconstruction.record import Reconstruction

PANELS_FOLDER = "panels"
LABEL_HEIGHT = 12
DEPTH_COLORMAP = "turbo"
CONF_COLORMAP = "viridis"
ROBUST_PERCENTILES = (2.0, 98.0)
"""Colour range of depth and confidence: outliers (a few far points, a confident sky) do not flatten the rest."""


def panel_rows(recon: Reconstruction) -> list[str]:
    """Row names of the panels of ``recon``, top to bottom."""
    rows = ["image", "depth", "confidence"]
    return rows if recon.dynamic_mask is None else [*rows, "dynamic mask"]


def colorize(values: np.ndarray, colormap: str) -> tuple[np.ndarray, tuple[float, float]]:
    """``[..., H, W]`` values -> ``[..., H, W, 3]`` uint8 colours and the (low, high) range used.

    The range is ``ROBUST_PERCENTILES`` of the valid (finite, > 0) values; invalid pixels are black.
    """
    valid = np.isfinite(values) & (values > 0)
    if not valid.any():
        return np.zeros(values.shape + (3,), np.uint8), (0.0, 0.0)
    low, high = (float(x) for x in np.percentile(values[valid], ROBUST_PERCENTILES))
    scaled = np.clip((np.where(valid, values, low) - low) / max(high - low, 1e-12), 0.0, 1.0)
    rgb = colormaps[colormap](scaled, bytes=True)[..., :3]
    rgb[~valid] = 0
    return rgb, (low, high)


def _label(text: str, width: int) -> np.ndarray:
    """``[LABEL_HEIGHT, width, 3]`` white text on black, clipped to the tile width."""
    strip = Image.new("RGB", (width, LABEL_HEIGHT))
    ImageDraw.Draw(strip).text((2, 0), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(strip)


def render_panel(recon: Reconstruction, t: int) -> np.ndarray:
    """The panel of time step index ``t`` as ``[rows·(LABEL_HEIGHT + H), V·W, 3]`` uint8."""
    depth, (d_low, d_high) = colorize(recon.depth[t], DEPTH_COLORMAP)
    conf, (c_low, c_high) = colorize(recon.depth_conf[t], CONF_COLORMAP)
    tiles = {
        "image": (recon.images[t], None),
        "depth": (depth, f"depth {d_low:.3g}-{d_high:.3g}"),
        "confidence": (conf, f"conf {c_low:.3g}-{c_high:.3g}"),
    }
    if recon.dynamic_mask is not None:
        grey = np.round(np.clip(recon.dynamic_mask[t], 0.0, 1.0) * 255).astype(np.uint8)
        tiles["dynamic mask"] = (np.repeat(grey[..., None], 3, axis=-1), "moving")
    width = recon.size[1]
    rows = []
    for name in panel_rows(recon):
        maps, text = tiles[name]
        # The image row names the views; the other rows name the map and its colour range.
        labels = [_label(text or f"view {int(view_id)}", width) for view_id in recon.view_ids]
        rows += [np.concatenate(labels, axis=1), np.concatenate(list(maps), axis=1)]
    return np.concatenate(rows, axis=0)


def write_panel(recon: Reconstruction, folder: Path, t: int) -> Path:
    """Write ``folder/panels/time_XX.png`` for time step index ``t``; returns its path."""
    out = Path(folder) / PANELS_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time_name(recon, t)}.png"
    Image.fromarray(render_panel(recon, t)).save(path)
    return path


def write_panels(recon: Reconstruction, folder: Path) -> list[Path]:
    """:func:`write_panel` for every time step; returns the paths in time order."""
    return [write_panel(recon, folder, t) for t in range(recon.num_times)]
