"""One video file per camera, read with PyAV: presentation timestamps first (demuxing only, no decoding), then
just the frames a synchronisation keeps (``page4d.data.sync``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})
_HINT = "re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or replace it"


@dataclass(frozen=True)
class VideoTimes:
    """When each frame of a video's first stream is shown, in presentation order."""

    path: Path
    fps: float
    """Frame rate the stream states (0 when it does not)."""
    times: np.ndarray | None
    """``[N]`` presentation time of each frame in seconds, on the container's clock; ``None`` when some packets carry
    no timestamp (only synchronisation by index is possible then)."""
    count: int
    """Number of frames."""


def _import_av():
    try:
        import av
    except ImportError:
        raise ValueError('video inputs need PyAV: pip install "page4d[video]"') from None
    return av


def probe_video(path: Path) -> VideoTimes:
    """Frame count and presentation times of ``path`` from its packets (cheap: nothing is decoded).

    Raises ``ValueError`` for a file that cannot be opened, a file without a video stream, and a truncated stream
    (fewer frames than its header announces).
    """
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream; pass one video file per camera")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            announced, base = stream.frames, stream.time_base
            stamps = [packet.pts for packet in container.demux(stream) if packet.size]
    except av.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode the video ({err}); {_HINT}") from None
    if not stamps:
        raise ValueError(f"{path}: the video has no frames; {_HINT}")
    if announced and len(stamps) < announced:
        raise ValueError(f"{path}: truncated video, its header announces {announced} frames but only {len(stamps)} "
                         f"are stored; {_HINT}")
    times = None
    if base is not None and all(s is not None for s in stamps):
        times = np.sort(np.asarray(stamps, dtype=np.float64)) * float(base)
    return VideoTimes(path=path, fps=rate, times=times, count=len(stamps))


def decode_frames(path: Path, positions: Collection[int]) -> dict[int, Image.Image]:
    """The frames at ``positions`` (presentation order, as in :class:`VideoTimes`), RGB; decoding stops after the
    last one. Raises ``ValueError`` naming the file when the stream cannot be decoded that far."""
    av = _import_av()
    wanted, last = set(positions), max(positions)
    frames: dict[int, Image.Image] = {}
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index in wanted:
                    frames[index] = frame.to_image()
                if index >= last:
                    break
    except av.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode the video ({err}); {_HINT}") from None
    if len(frames) < len(wanted):
        raise ValueError(f"{path}: frame {last} cannot be decoded (the stream ends early or is damaged); {_HINT}")
    return frames


def frame_step(native_fps: float, target_fps: float | None) -> int:
    """Keep every ``step``-th frame to get about ``target_fps`` (1 when no target is given or the rate is unknown)."""
    if target_fps is None:
        return 1
    if target_fps <= 0:
        raise ValueError(f"--fps {target_fps} must be positive")
    if native_fps <= 0:
        raise ValueError("the videos do not state a frame rate, so --fps cannot be applied; use --every instead")
    return max(1, round(native_fps / target_fps))
