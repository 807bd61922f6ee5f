"""Reading the small text files page4d owns (``config.json``, ``meta.json``, ``cameras.json``, YAML configs and
recipes) with one-line errors that name the file, and the natural order of file names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def _read_text(path: Path, hint: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; {hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the file ({err}); {hint}") from None


def read_yaml(path: str | Path, hint: str) -> Any:
    """The parsed YAML at ``path`` (``safe_load``); ``ValueError`` naming the file, where it breaks and ``hint``."""
    import yaml

    path = Path(path)
    text = _read_text(path, hint)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:  # PyYAML's own message spans several lines with a caret drawing
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ValueError(f"{path}: not valid YAML ({problem}{where}); {hint}") from None


def read_json(path: str | Path, hint: str) -> Any:
    """The parsed JSON at ``path``; ``ValueError`` naming the file, where it breaks and ``hint`` (what to do)."""
    path = Path(path)
    text = _read_text(path, hint)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise ValueError(f"{path}: not valid JSON ({err.msg} at {where}); {hint}") from None


def natural_key(name: str) -> list:
    """Sort key that puts ``cam2`` before ``cam10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
