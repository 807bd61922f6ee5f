"""Uploaded files -> what ``page4d reconstruct`` takes: one video per camera, or a zip of a clip folder, and an
optional calibration (a file, or a zip of a COLMAP model folder). Pure file handling, no web framework, so the
demo's checks are tested on their own and its messages are the command line's where the command line checks.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from page4d.data.video import VIDEO_SUFFIXES

CALIBRATION_SUFFIXES = (".toml", ".json")
MAX_UNZIPPED_BYTES = 8 * 2**30
"""A zip that would unpack to more than this is refused before anything is written (a clip of 16 × 8 full-HD PNGs
is about 0.5 GB)."""
MAX_RATIO = 50
"""Nor more than this many times its own size, beyond ``RATIO_FREE_BYTES``: images and videos hardly compress (a
zip of PNGs or MP4s is about as large as they are), so a higher ratio is a zip bomb, not a clip."""
RATIO_FREE_BYTES = 64 * 2**20
MAX_MEMBERS = 200_000
"""Files in one zip (a 500 × 16 clip with depths and masks has 24,000)."""
UPLOAD_HINT = (f"drop one video per camera ({', '.join(sorted(VIDEO_SUFFIXES))}) or one .zip of a clip folder "
               "(images/time_XX/viewN.png, or the videos)")
CALIBRATION_HINT = "give an anipose / Pose2Sim .toml, a page4d cameras.json, or a .zip of a COLMAP model folder"


@dataclass(frozen=True)
class StagedUpload:
    """The inputs of one reconstruction, ready for ``page4d reconstruct``."""

    inputs: list[Path]
    """The clip folder, or the videos in camera order."""
    cameras: Path | None
    """The calibration file or folder, if one was given."""


def stage(uploads: list[Path], calibration: Path | None, folder: Path) -> StagedUpload:
    """Check the uploaded files and unpack any zip under ``folder`` (empty or missing); ``ValueError`` saying
    what is wrong and what to drop instead. Videos keep their upload order, which is the cameras' order."""
    uploads = [Path(p) for p in uploads]
    if not uploads:
        raise ValueError(f"nothing uploaded; {UPLOAD_HINT}")
    zips = [p for p in uploads if p.suffix.lower() == ".zip"]
    others = [p.name for p in uploads if p.suffix.lower() not in VIDEO_SUFFIXES and p not in zips]
    if others:
        raise ValueError(f"cannot use {', '.join(others)}; {UPLOAD_HINT}")
    if zips and len(uploads) > 1:
        raise ValueError(f"{len(uploads)} files with a zip among them; {UPLOAD_HINT}")
    inputs = [_clip_root(unzip(zips[0], folder / "clip"))] if zips else uploads
    return StagedUpload(inputs, None if calibration is None else _calibration(Path(calibration), folder))


def unzip(archive: Path, folder: Path) -> Path:
    """Unpack ``archive`` into ``folder``; ``ValueError`` for a file that is not a zip, members that would land
    outside ``folder``, or more than ``MAX_UNZIPPED_BYTES`` unpacked."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            for member in members:
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts or ":" in member.filename:
                    raise ValueError(f"{archive.name}: the member {member.filename!r} would unpack outside the "
                                     "folder; zip the clip folder itself")
            size = sum(member.file_size for member in members)
            if size > MAX_UNZIPPED_BYTES or len(members) > MAX_MEMBERS:
                raise ValueError(f"{archive.name} unpacks to {len(members)} files, {size / 2**30:.1f} GiB, more than "
                                 f"the demo's {MAX_MEMBERS} files or {MAX_UNZIPPED_BYTES / 2**30:.0f} GiB; run page4d "
                                 "reconstruct on the folder")
            if size > max(MAX_RATIO * archive.stat().st_size, RATIO_FREE_BYTES):
                raise ValueError(f"{archive.name} unpacks to {size / archive.stat().st_size:.0f} times its size, which "
                                 "images and videos never do; zip the clip folder itself")
            folder.mkdir(parents=True, exist_ok=True)
            bundle.extractall(folder)
    except (zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{archive.name} is not a readable zip file ({err}); zip the clip folder again") from None
    return folder


def _clip_root(folder: Path) -> Path:
    """The clip inside an unpacked zip: the folder itself, or the folder that one folder after another holds alone
    (how most tools zip a folder, or a folder inside one), skipping the ``__MACOSX`` folder macOS adds."""
    while True:
        entries = [p for p in folder.iterdir() if p.name != "__MACOSX" and not p.name.startswith(".")]
        if not entries:
            raise ValueError(f"the zip is empty; {UPLOAD_HINT}")
        if len(entries) > 1 or not entries[0].is_dir() or entries[0].name == "images":
            return folder
        folder = entries[0]


def _calibration(path: Path, folder: Path) -> Path:
    """The calibration as ``--cameras`` takes it: a .toml / .json file, or the COLMAP folder a .zip holds."""
    suffix = path.suffix.lower()
    if suffix in CALIBRATION_SUFFIXES:
        return path
    if suffix == ".zip":
        return _clip_root(unzip(path, folder / "calibration"))
    raise ValueError(f"cannot read the calibration {path.name}; {CALIBRATION_HINT}")
