"""One video file per camera, decoded with PyAV and synchronised by frame index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})


@dataclass
class DecodedVideo:
    path: Path
    fps: float
    """Native frame rate (0 when the container does not say)."""
    frames: list[Image.Image]
    """The kept frames, RGB."""
    indices: list[int]
    """Source frame index of each kept frame."""


def _import_av():
    try:
        import av
    except ImportError:
        raise ValueError('video inputs need PyAV: pip install "page4d[video]"') from None
    return av


def decode_video(path: Path, step: int = 1, stop: int | None = None) -> DecodedVideo:
    """Frames ``0, step, 2·step, …`` (source indices ``< stop`` when given) of the first video stream.

    Raises ``ValueError`` for a file that cannot be opened or decoded, a file without a video stream, and a
    truncated stream (fewer frames than its header announces).
    """
    av = _import_av()
    hint = "re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or replace it"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream; pass one video file per camera")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            announced = stream.frames
            frames, indices, decoded = [], [], 0
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if stop is not None and index >= stop:
                    break
                if index % step == 0:
                    frames.append(frame.to_image())
                    indices.append(index)
    except av.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode the video ({err}); {hint}") from None
    if not frames:
        raise ValueError(f"{path}: the video has no decodable frames; {hint}")
    if stop is None and announced and decoded < announced:
        raise ValueError(f"{path}: truncated video, its header announces {announced} frames but only {decoded} "
                         f"decode; {hint}")
    return DecodedVideo(path=path, fps=float(rate or 0), frames=frames, indices=indices)


def frame_step(native_fps: float, target_fps: float | None) -> int:
    """Keep every ``step``-th frame to get about ``target_fps`` (1 when no target is given or the rate is unknown)."""
    if target_fps is None:
        return 1
    if target_fps <= 0:
        raise ValueError(f"--fps {target_fps} must be positive")
    if native_fps <= 0:
        raise ValueError("the videos do not state a frame rate, so --fps cannot be applied; use --every instead")
    return max(1, round(native_fps / target_fps))
