"""The on-disk clip layout ``images/time_XX/viewN.png`` (+ optional ``depths/``, ``masks/``, ``cameras.json``).

::

    root/
      images/time_XX/viewN.png   RGB or grey (.png, .jpg or .jpeg); XX = time index, N = camera index
      depths/time_XX/viewN.png   optional uint16 depth, same names as images/
      masks/time_XX/viewN.png    optional dynamic mask (non-zero grey, palette index or colour = moving)
      cameras.json               optional: "time_ids", "view_ids", "K" [T][V] 3x3, "E_w2c" [T][V] 3x4, and
                                 "image_size" {"width", "height"} or "image_sizes" (one per view id)

Time ids come from the folder names and view ids from the file names; neither has to start at 0 or
be contiguous. The images of one camera share a resolution; cameras may differ. ``cameras.json`` rows are
matched by id, so it may list more time steps or views than the folder holds, but every camera the clip uses
must be finite (``null``, NaN and Inf are refused). Anything else in the folders is ignored.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from page4d.data.clip import MultiViewClip
from page4d.data.rasters import check_pixel_count, oriented_size
from page4d.fileio import read_json

TIME_DIR = re.compile(r"time_(\d+)")
VIEW_FILE = re.compile(r"view(\d+)\.(?:png|jpe?g)", re.IGNORECASE)
LAYOUT_HINT = "expected <clip>/images/time_XX/viewN.png"
CAMERAS_HINT = "it needs 'time_ids', 'view_ids', 'K' [T][V][3][3] and 'E_w2c' [T][V][3][4]"


def _indexed(folder: Path, pattern: re.Pattern[str], want_dirs: bool) -> dict[int, Path]:
    """``{index: path}`` of the entries of ``folder`` whose name matches ``pattern``."""
    found: dict[int, Path] = {}
    for entry in sorted(folder.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match is None or entry.is_dir() != want_dirs:
            continue
        index = int(match.group(1))
        if index in found:
            raise ValueError(f"{folder}: {found[index].name} and {entry.name} have the same index; keep one")
        found[index] = entry
    return found


def _common_views(time_dirs: dict[int, Path], views: dict[int, dict[int, Path]]) -> list[int]:
    """The view ids every time step must have (the most common set); raises naming the time steps that differ."""
    counts = Counter(frozenset(found) for found in views.values())
    expected = max(counts, key=lambda ids: counts[ids])
    problems = []
    for time_id, found in views.items():
        missing, extra = sorted(expected - found.keys()), sorted(found.keys() - expected)
        parts = [f"missing {', '.join(f'view{v}' for v in missing)}"] if missing else []
        parts += [f"extra {', '.join(found[v].name for v in extra)}"] if extra else []
        if parts:
            problems.append(f"{time_dirs[time_id].name}: {'; '.join(parts)}")
    images_dir = next(iter(time_dirs.values())).parent
    if problems:
        raise ValueError(
            f"{images_dir}: time steps do not all have the same views (most have "
            f"{', '.join(f'view{v}' for v in sorted(expected)) or 'none'}): {' | '.join(problems)}; "
            "add the missing images or remove the extra ones"
        )
    if not expected:
        raise ValueError(f"{images_dir}: the time_XX folders hold no viewN images; {LAYOUT_HINT}")
    return sorted(expected)


def _check_sizes(root: Path, paths: list[list[Path]], references: list[Path]) -> list[tuple[int, int]]:
    """The oriented (H, W) of each view's ``references`` image, shared by that view's ``paths``; raises naming the
    first file that differs (a camera keeps its resolution; cameras may differ).

    Headers only: corrupt PNGs are caught by ``verify``, pixels are decoded later."""
    expected = [oriented_size(reference) for reference in references]
    for row in paths:
        for path, size, reference in zip(row, expected, references, strict=True):
            found = oriented_size(path)
            if found != size:
                raise ValueError(
                    f"{path.relative_to(root)} is {found[1]}x{found[0]} but {reference.relative_to(root)} is "
                    f"{size[1]}x{size[0]} (W x H); every image, depth and mask of one camera must have the same "
                    "resolution: resize them to one size first"
                )
    return expected


def _companion_paths(root: Path, folder: str, image_paths: list[list[Path]]) -> list[list[Path]] | None:
    """``root/folder/time_XX/viewN.png`` for every image, or None if ``folder`` is absent."""
    if not (root / folder).is_dir():
        return None
    paths = [[root / folder / p.parent.name / f"{p.stem}.png" for p in row] for row in image_paths]
    missing = [str(p.relative_to(root)) for row in paths for p in row if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{root / folder}: missing {shown}; add them or remove the {folder}/ folder")
    return paths


def _size_entry(path: Path, size: object, key: str) -> tuple[int, int]:
    if not isinstance(size, dict) or not all(
        isinstance(size.get(k), int) and not isinstance(size[k], bool) and size[k] > 0 for k in ("width", "height")
    ):
        raise ValueError(
            f'{path}: {key} is {json.dumps(size)}, expected {{"width": W, "height": H}} in pixels; fix it or remove it'
        )
    return size["height"], size["width"]


def image_size_entries(path: Path, data: dict, view_count: int) -> list[tuple[int, int]] | None:
    """(H, W) per listed view from the optional ``"image_size": {"width": W, "height": H}`` (shared) or
    ``"image_sizes": [{...}, ...]`` (one per entry of ``view_ids``); raises if either has another form."""
    if "image_sizes" in data:
        sizes = data["image_sizes"]
        if not isinstance(sizes, list) or len(sizes) != view_count:
            raise ValueError(f"{path}: image_sizes must list one {{\"width\": W, \"height\": H}} per view id "
                             f"({view_count}); fix it or remove it")
        return [_size_entry(path, size, f"image_sizes[{i}]") for i, size in enumerate(sizes)]
    if "image_size" in data:
        return [_size_entry(path, data["image_size"], "image_size")] * view_count
    return None


def _read_cameras(
    path: Path, time_ids: list[int], view_ids: list[int], image_sizes: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``K [T, V, 3, 3]`` and ``E_w2c [T, V, 3, 4]`` float32, rows selected by time and view id; every selected
    camera must be finite."""
    data = read_json(path, f"fix cameras.json: {CAMERAS_HINT}")
    try:
        listed_t, listed_v = [int(t) for t in data["time_ids"]], [int(v) for v in data["view_ids"]]
        shape = (len(listed_t), len(listed_v))
        intr, extr = np.asarray(data["K"], dtype=np.float32), np.asarray(data["E_w2c"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid cameras file ({type(err).__name__}: {err}); {CAMERAS_HINT}") from None
    if intr.shape != shape + (3, 3) or extr.shape != shape + (3, 4):
        raise ValueError(
            f"{path}: K has shape {intr.shape} and E_w2c {extr.shape}, expected {shape + (3, 3)} and "
            f"{shape + (3, 4)} for its {shape[0]} time_ids x {shape[1]} view_ids; fix the file"
        )
    missing_t = [t for t in time_ids if t not in listed_t]
    missing_v = [v for v in view_ids if v not in listed_v]
    if missing_t or missing_v:
        raise ValueError(
            f"{path}: no camera entry for time ids {missing_t} / view ids {missing_v} present in images/; "
            "add them to cameras.json or remove those images"
        )
    listed_sizes = image_size_entries(path, data, len(listed_v))
    for v, image_size in zip(view_ids, image_sizes, strict=True):
        size = None if listed_sizes is None else listed_sizes[listed_v.index(v)]
        if size is not None and size != image_size:
            raise ValueError(
                f"{path}: the camera of view{v} is for {size[1]}x{size[0]} images but its images are "
                f"{image_size[1]}x{image_size[0]}; rescale K or use the matching images"
            )
    rows = np.ix_([listed_t.index(t) for t in time_ids], [listed_v.index(v) for v in view_ids])
    intr, extr = intr[rows], extr[rows]
    # JSON allows NaN and Infinity (and null becomes NaN): refuse them here, not deep inside evaluation
    finite = np.isfinite(intr).all(axis=(-2, -1)) & np.isfinite(extr).all(axis=(-2, -1))
    if not finite.all():
        t, v = np.argwhere(~finite)[0]
        raise ValueError(
            f"{path}: the camera of time id {time_ids[t]}, view id {view_ids[v]} has NaN or Inf in K or E_w2c; "
            "fix the file"
        )
    return torch.from_numpy(intr), torch.from_numpy(extr)


def load_clip(root: str | Path) -> MultiViewClip:
    """Parse a clip folder into a :class:`MultiViewClip` (paths and cameras; pixels are loaded on demand).

    Checks that every time step has the same views, that all images (and depths, masks) share one
    resolution (after EXIF orientation) and are readable, and that ``cameras.json`` covers every (time, view)
    with finite values. Any problem raises ``ValueError`` with
    what is wrong and what to do; a resolution above PIL's decompression-bomb threshold gives one ``UserWarning``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: clip folder not found; {LAYOUT_HINT}")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise ValueError(f"{root}: no images/ folder; {LAYOUT_HINT}")
    time_dirs = _indexed(images_dir, TIME_DIR, want_dirs=True)
    if not time_dirs:
        raise ValueError(f"{images_dir}: no time_XX folders; {LAYOUT_HINT}")
    time_ids = sorted(time_dirs)
    views = {t: _indexed(time_dirs[t], VIEW_FILE, want_dirs=False) for t in time_ids}
    view_ids = _common_views(time_dirs, views)

    image_paths = [[views[t][v] for v in view_ids] for t in time_ids]
    image_sizes = _check_sizes(root, image_paths, image_paths[0])
    largest = max(range(len(view_ids)), key=lambda v: image_sizes[v][0] * image_sizes[v][1])
    check_pixel_count(image_sizes[largest], str(image_paths[0][largest]))
    depth_paths = _companion_paths(root, "depths", image_paths)
    mask_paths = _companion_paths(root, "masks", image_paths)
    for paths in (depth_paths, mask_paths):
        if paths is not None:
            _check_sizes(root, paths, image_paths[0])

    intrinsics = extrinsics = None
    if (root / "cameras.json").is_file():
        intrinsics, extrinsics = _read_cameras(root / "cameras.json", time_ids, view_ids, image_sizes)
    return MultiViewClip(
        root=root,
        time_ids=time_ids,
        view_ids=view_ids,
        frames=image_paths,
        image_sizes=image_sizes,
        depth_paths=depth_paths,
        mask_paths=mask_paths,
        intrinsics=intrinsics,
        extrinsics=extrinsics,
    )
