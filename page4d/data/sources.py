"""Every input ``page4d reconstruct`` accepts, turned into one :class:`MultiViewClip`.

* a clip folder in the layout ``images/time_XX/viewN.png`` (``page4d.data.layout``);
* one video file per camera (PyAV), synchronised by presentation timestamp or by frame index
  (``page4d.data.sync``), or a folder holding just those videos (natural order of their names);
* one image folder or ``.txt`` list (one path per line) per camera, synchronised by (natural) sorted position;
  a single folder without ``images/`` is one camera.

Time selection (``every``, ``start``, ``frames``) applies to all three, and an optional external-mask tree
``MASKS/time_XX/viewN.png`` (ids as in the clip) supplies the design documents' ``M_ext``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from page4d.data.clip import MultiViewClip
from page4d.data.layout import load_clip
from page4d.data.rasters import check_pixel_count, oriented_size
from page4d.data.sync import SYNC_MODES, SYNCS
from page4d.data.video import VIDEO_SUFFIXES, decode_frames, frame_step, probe_video
from page4d.fileio import natural_key

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
INPUT_HINT = (
    "pass a clip folder (images/time_XX/viewN.png), one video per camera (or a folder of them), or one image "
    "folder / .txt list per camera"
)


@dataclass(frozen=True)
class TimeSelection:
    """Which time steps to use: every ``every``-th step (or about ``fps`` per second for videos), then ``frames``
    steps from position ``start``."""

    start: int = 0
    frames: int | None = None
    every: int = 1
    fps: float | None = None
    sync: str = "timestamp"
    """How the frames of video inputs are paired into time steps: one of ``SYNC_MODES``."""

    def __post_init__(self) -> None:
        if self.start < 0 or self.every < 1 or (self.frames is not None and self.frames < 1):
            raise ValueError("--start must be >= 0, --every >= 1 and --frames >= 1")
        if self.fps is not None and self.every != 1:
            raise ValueError("--fps and --every both set the time step; give one of them")
        if self.sync not in SYNC_MODES:
            raise ValueError(f"--sync {self.sync!r}: choose one of {', '.join(SYNC_MODES)}")

    def positions(self, count: int, step: int | None = None) -> range:
        """Positions kept out of ``count`` time steps."""
        step = self.every if step is None else step
        kept = range(0, count, step)[self.start :]
        kept = kept if self.frames is None else kept[: self.frames]
        if not kept:
            raise ValueError(f"--start {self.start} is past the end: the input has {len(range(0, count, step))} "
                             "time steps after subsampling; lower --start")
        return kept


def _view_images(source: Path) -> list[Path]:
    """The images of one camera: a folder's images in natural order, or a ``.txt`` list (relative to the list)."""
    if source.is_dir():
        images = sorted((p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                        key=lambda p: natural_key(p.name))
        if not images:
            raise ValueError(f"{source}: no .png/.jpg images in this folder; {INPUT_HINT}")
        return images
    lines = [line.strip() for line in source.read_text().splitlines()]
    images = [(source.parent / line) for line in lines if line and not line.startswith("#")]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise ValueError(f"{source}: listed images not found: {', '.join(missing[:3])}; fix the list")
    if not images:
        raise ValueError(f"{source}: the list names no images; one image path per line")
    return images


def _view_sizes(frames: list[list], names: list[str]) -> list[tuple[int, int]]:
    """Oriented (H, W) of each view, shared by its time steps; raises naming a frame whose resolution differs from
    its camera's first, warns once if the largest view is huge. Cameras may differ from one another."""
    def label(frame: object, name: str, t: int | None = None) -> str:
        if not isinstance(frame, Image.Image):
            return str(frame)
        return name if t is None else f"{name} (frame {t})"

    sizes = [oriented_size(frame) for frame in frames[0]]
    for t, row in enumerate(frames[1:], start=1):
        for frame, size, first, name in zip(row, sizes, frames[0], names, strict=True):
            found = oriented_size(frame)
            if found != size:
                raise ValueError(f"{label(frame, name, t)} is {found[1]}x{found[0]} but {label(first, name, 0)} is "
                                 f"{size[1]}x{size[0]} (W x H); every frame of one camera must have the same "
                                 "resolution: resize them to one size first")
    largest = max(range(len(sizes)), key=lambda v: sizes[v][0] * sizes[v][1])
    check_pixel_count(sizes[largest], label(frames[0][largest], names[largest]))
    return sizes


def _from_videos(paths: Sequence[Path], select: TimeSelection) -> tuple[MultiViewClip, list[str]]:
    timeline = SYNCS[select.sync].timeline([probe_video(path) for path in paths])
    notes = list(timeline.notes)
    step = frame_step(timeline.fps, select.fps) if select.fps is not None else select.every
    steps = select.positions(len(timeline.positions), step)
    kept = [timeline.positions[i] for i in steps]
    decoded = [decode_frames(path, {row[v] for row in kept}) for v, path in enumerate(paths)]
    frames = [[decoded[v][position] for v, position in enumerate(row)] for row in kept]
    sizes = _view_sizes(frames[:1], [str(p) for p in paths])
    if select.fps is not None:
        notes.append(f"every {step}th frame of {timeline.fps:g} fps video ≈ {timeline.fps / step:g} fps")
    clip = MultiViewClip(root=paths[0].parent, time_ids=[timeline.time_ids[i] for i in steps],
                         view_ids=list(range(len(paths))), frames=frames, image_sizes=sizes, names=_names(paths))
    return clip, notes


def _from_lists(paths: Sequence[Path], select: TimeSelection) -> MultiViewClip:
    if select.fps is not None:
        raise ValueError("--fps applies to video inputs; use --every to subsample image sequences")
    per_view = [_view_images(p) for p in paths]
    counts = {len(images) for images in per_view}
    if len(counts) > 1:
        lengths = ", ".join(f"{p}: {len(images)}" for p, images in zip(paths, per_view, strict=True))
        raise ValueError(f"the cameras have different numbers of images ({lengths}); every camera needs one image "
                         "per time step: add the missing frames or remove the extra ones")
    kept = select.positions(counts.pop())
    frames = [[images[i] for images in per_view] for i in kept]
    sizes = _view_sizes(frames, [str(p) for p in paths])
    return MultiViewClip(root=paths[0].parent, time_ids=list(kept), view_ids=list(range(len(paths))), frames=frames,
                         image_sizes=sizes, names=_names(paths))


def _names(paths: Sequence[Path]) -> list[str]:
    """The views' names: file or folder stems, made unique by their position where two agree."""
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [f"{stem}#{i}" for i, stem in enumerate(stems)]


def select_clip(clip: MultiViewClip, select: TimeSelection) -> MultiViewClip:
    """The time steps of ``clip`` that ``select`` keeps, with their frames, depths, masks and cameras."""
    if select.fps is not None:
        raise ValueError("--fps applies to video inputs; use --every to subsample a clip folder")
    kept = list(select.positions(clip.num_times))

    def rows(nested: list | None) -> list | None:
        return None if nested is None else [nested[i] for i in kept]

    def steps(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[kept]

    return dataclasses.replace(
        clip, time_ids=[clip.time_ids[i] for i in kept], frames=rows(clip.frames), depth_paths=rows(clip.depth_paths),
        mask_paths=rows(clip.mask_paths), intrinsics=steps(clip.intrinsics), extrinsics=steps(clip.extrinsics),
    )


def select_views(clip: MultiViewClip, views: Sequence[int]) -> MultiViewClip:
    """The views of ``clip`` at positions ``views`` (in that order), with everything that is per view."""
    def pick(items: list | None) -> list | None:
        return None if items is None else [items[v] for v in views]

    def columns(nested: list | None) -> list | None:
        return None if nested is None else [[row[v] for v in views] for row in nested]

    def cameras(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[:, list(views)]

    return dataclasses.replace(
        clip, view_ids=pick(clip.view_ids), frames=columns(clip.frames), image_sizes=pick(clip.image_sizes),
        depth_paths=columns(clip.depth_paths), mask_paths=columns(clip.mask_paths),
        external_mask_paths=columns(clip.external_mask_paths), intrinsics=cameras(clip.intrinsics),
        extrinsics=cameras(clip.extrinsics), names=pick(clip.names), lenses=pick(clip.lenses),
    )


def _attach_masks(clip: MultiViewClip, masks: Path) -> MultiViewClip:
    if not masks.is_dir():
        raise ValueError(f"--masks {masks}: folder not found; it needs time_XX/viewN.png masks like the images")
    paths = [[masks / f"time_{t:02d}" / f"view{v}.png" for v in clip.view_ids] for t in clip.time_ids]
    missing = [str(p.relative_to(masks)) for row in paths for p in row if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ValueError(f"--masks {masks}: missing {shown}; give a mask for every (time, view) used")
    for row in paths:
        for path, (height, width) in zip(row, clip.image_sizes, strict=True):
            size = oriented_size(path)
            if size != (height, width):
                raise ValueError(f"--masks {path} is {size[1]}x{size[0]} but its view's images are {width}x{height} "
                                 "(W x H); give masks at the image resolution (resize them with nearest-neighbour)")
    return dataclasses.replace(clip, external_mask_paths=paths)


def _refuse_repeats(paths: Sequence[Path]) -> None:
    """Raises if two inputs are one file or folder (also spelled differently, or through a symlink)."""
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        stat = path.stat()
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            raise ValueError(f"{seen[key]} and {path} are the same camera; each camera must be given once: "
                             "remove one of them")
        seen[key] = path


def _folder_videos(path: Path) -> list[Path]:
    """The videos of a folder that holds videos and no images (a rig's recordings, one file per camera), in
    natural order; empty for anything else."""
    if not path.is_dir() or (path / "images").is_dir():
        return []
    files = [p for p in path.iterdir() if p.is_file()]
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        return []
    return sorted((p for p in files if p.suffix.lower() in VIDEO_SUFFIXES), key=lambda p: natural_key(p.name))


def open_input(
    inputs: str | Path | Sequence[str | Path], select: TimeSelection | None = None, masks: str | Path | None = None
) -> tuple[MultiViewClip, list[str]]:
    """The clip described by ``inputs`` (one path, or several) and notes for the user (e.g. videos of different
    lengths)."""
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    select = select or TimeSelection()
    if not paths:
        raise ValueError(f"no input given; {INPUT_HINT}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"{', '.join(missing)}: not found; {INPUT_HINT}")
    _refuse_repeats(paths)
    notes: list[str] = []
    if len(paths) == 1 and (videos := _folder_videos(paths[0])):
        paths = videos
        notes.append(f"{len(videos)} videos in {paths[0].parent}, one camera each, in this order: "
                     f"{', '.join(p.name for p in videos)}")
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / "images").is_dir():
        clip = select_clip(load_clip(paths[0]), select)
    elif all(p.suffix.lower() in VIDEO_SUFFIXES for p in paths):
        clip, video_notes = _from_videos(paths, select)
        notes += video_notes
    elif all(p.is_dir() or p.suffix.lower() == ".txt" for p in paths):
        clip = _from_lists(paths, select)
    else:
        raise ValueError(f"cannot tell what {', '.join(map(str, paths))} is; {INPUT_HINT} (videos: "
                         f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    if masks is not None:
        clip = _attach_masks(clip, Path(masks))
    return clip, notes
