"""Glob patterns over parameter / state-dict names, with numeric ranges, used by recipes and freezing."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand(pattern: str) -> list[str]:
    """Glob patterns with numeric ranges: ``time_blocks.{0..2}.*`` -> three patterns."""
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    first, last = int(match[1]), int(match[2])
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [p for i in range(first, last + 1) for p in expand(f"{head}{i}{tail}")]


def match_patterns(
    patterns: Iterable[str], keys: list[str], what: str,
    hint: str = "check the patterns and that the target model's config matches the source",
) -> set[str]:
    """Keys matched by ``patterns``; every pattern must match (all failures are named at once, after ``what``,
    followed by ``hint``)."""
    found: set[str] = set()
    empty = []
    for pattern in patterns:
        hits = {k for p in expand(pattern) for k in fnmatch.filter(keys, p)}
        if not hits:
            empty.append(pattern)
        found |= hits
    if empty:
        shown = ", ".join(empty[:8]) + (f", ... ({len(empty) - 8} more)" if len(empty) > 8 else "")
        raise ValueError(
            f"{what}: {len(empty)} patterns match no target key: {shown}; {hint}"
        )
    return found
