"""The lines that end a command's output and tell the user which of the files it wrote to open."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def file_span(out: Path, names: Sequence[Path]) -> str:
    """``OUT/panels/time_08.png … time_10.png (3 files)``: a series of files, ``names`` relative to the output
    folder ``out`` in order, shown by its first and last; one file is shown alone."""
    first = out / names[0]
    if len(names) == 1:
        return str(first)
    return f"{first} … {names[-1].name} ({len(names)} files)"
