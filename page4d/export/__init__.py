"""Exports of a :class:`~page4d.reconstruction.record.Reconstruction`: PLY point clouds, GLB scenes, COLMAP models,
PNG panels, a nerfstudio dataset and a rerun recording, written under one folder::

    points/time_XX_{static,dynamic}.ply   every time step (ply)
    scene_time_XX.glb                     one time step (glb)
    colmap/time_XX/sparse/0/*.bin         one time step (colmap), with images/ of that step
    panels/time_XX.png                    every time step (png)
    nerfstudio/transforms.json            every frame, with images/, masks/ and points_static.ply (nerfstudio)
    recording.rrd                         every time step, for the rerun viewer (rerun)

XX is the time id. The writers import trimesh, pycolmap and matplotlib (the ``export`` extra) or rerun-sdk (the
``rerun`` extra), so this module imports them only when a format that needs them is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from page4d.export.points import (
    DEFAULT_CONF_PERCENTILE,
    PointSelection,
    check_conf_percentile,
    check_time_index,
    select_points,
    time_name,
)
from page4d.reconstruction.record import Reconstruction

__all__ = ["FORMATS", "PointSelection", "export", "select_points"]

FORMATS = ("ply", "glb", "colmap", "png", "nerfstudio", "rerun")
REQUIREMENTS = {
    "ply": "trimesh", "glb": "trimesh", "colmap": "pycolmap", "png": "matplotlib", "nerfstudio": "trimesh",
    "rerun": "rerun",
}
"""The third-party package (module) each format needs."""
EXTRAS = {"rerun": "rerun"}
"""The page4d extra that installs a format's package, where it is not ``export``."""


def check_formats(formats: str | Iterable[str]) -> list[str]:
    """The requested formats without duplicates, in order; ``ValueError`` for an unknown one or a missing package.

    A single string is one format (not its letters).
    """
    formats = list(dict.fromkeys([formats] if isinstance(formats, str) else formats))
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {', '.join(map(repr, unknown))}; choose from {', '.join(FORMATS)}")
    lacking = [name for name in formats if importlib.util.find_spec(REQUIREMENTS[name]) is None]
    if lacking:
        missing = sorted({REQUIREMENTS[name] for name in lacking})
        extras = sorted({EXTRAS.get(name, "export") for name in lacking})
        raise ValueError(
            f"exporting {', '.join(formats)} needs {', '.join(missing)}, not installed; "
            f'run pip install "page4d[{",".join(extras)}]"'
        )
    if "rerun" in formats:
        from page4d.export.rerun import check_enabled

        check_enabled()
    return formats


def export(
    recon: Reconstruction,
    folder: str | Path,
    formats: str | Iterable[str],
    *,
    time_index: int | None = None,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    progress: bool = True,
    frames: Callable[[int, int], np.ndarray] | None = None,
) -> list[Path]:
    """Write ``formats`` (a subset of :data:`FORMATS`) of ``recon`` under ``folder``; returns the files written.

    ``ply`` and ``png`` cover every time step; ``glb`` and ``colmap`` the time step at index ``time_index``
    (position in ``recon.time_ids``; default: the middle one). ``conf_percentile`` drops the least confident
    points (see :func:`select_points`). ``progress`` shows a tqdm bar over the time steps. ``colmap`` is a COLMAP
    project: the model in ``colmap/time_XX/sparse/0`` and, with ``frames`` (``frames(t, v)``: the original image
    of step index ``t``, view ``v``, ``[H0, W0, 3]`` uint8), the step's images in ``colmap/time_XX/images``, the
    layout COLMAP's GUI, gsplat and nerfstudio read. ``nerfstudio`` needs ``frames`` (``page4d.export.nerfstudio``).
    ``rerun`` is one recording of every time step (``page4d.export.rerun``).
    """
    formats = check_formats(formats)
    if "nerfstudio" in formats and frames is None:
        raise ValueError("the nerfstudio export writes the original frames: pass frames=clip.load_original")
    t = recon.num_times // 2 if time_index is None else time_index
    check_time_index(recon, t)
    check_conf_percentile(conf_percentile)
    folder = Path(folder)
    written: list[Path] = []
    step_writers: list[Callable[[int], list[Path]]] = []
    if "ply" in formats:
        from page4d.export.ply import write_point_cloud

        step_writers.append(lambda step: write_point_cloud(recon, folder, step, conf_percentile=conf_percentile))
    if "png" in formats:
        from page4d.export.panels import write_panel

        step_writers.append(lambda step: [write_panel(recon, folder, step)])
    if step_writers:
        for step in tqdm(range(recon.num_times), desc="export", unit="step", disable=not progress):
            for write in step_writers:
                written += write(step)
    if "glb" in formats:
        from page4d.export.glb import write_scene

        scene = folder / f"scene_{time_name(recon, t)}.glb"
        written.append(write_scene(recon, scene, t, conf_percentile=conf_percentile))
    if "nerfstudio" in formats:
        from page4d.export.nerfstudio import write_nerfstudio

        written += write_nerfstudio(recon, folder, frames, conf_percentile)
    if "rerun" in formats:
        from page4d.export.rerun import write_rerun

        written.append(write_rerun(recon, folder, conf_percentile, progress))
    if "colmap" in formats:
        from page4d.export.colmap import image_name, write_colmap

        project = folder / "colmap" / time_name(recon, t)
        model = write_colmap(recon, project / "sparse" / "0", t, conf_percentile=conf_percentile)
        written += sorted(model.iterdir())
        if frames is not None:
            (project / "images").mkdir()
            for v, view_id in enumerate(recon.view_ids):
                path = project / "images" / image_name(view_id)
                Image.fromarray(frames(t, v)).save(path)
                written.append(path)
    return written
