"""Reading the small text files page4d owns (``config.json``, ``meta.json``, ``cameras.json``) with errors that
name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, hint: str) -> Any:
    """The parsed JSON at ``path``; ``ValueError`` naming the file, where it breaks and ``hint`` (what to do)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; {hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the file ({err}); {hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise ValueError(f"{path}: not valid JSON ({err.msg} at {where}); {hint}") from None
