"""The load report: where every target key came from and why every unused source key was dropped."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class LoadReport:
    """Accounts for every key of a conversion.

    ``mapped``: target key -> source key. ``initialised``: target key -> reason it was not loaded.
    ``unused``: source key -> reason it was dropped. ``notes``: mapped target key -> how its value was
    derived, for targets that are more than a renamed copy of their source (e.g. a slice of it).
    ``copies``: mapped target key -> the target key whose loaded value it copies (a branched pose-stream
    block starts as the shared block it branches from; a recipe's ``copies``).
    """

    source: str
    converter: str
    mapped: dict[str, str] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        """No weight was loaded: every key keeps its random initialisation (a preset)."""
        return not self.mapped

    @property
    def renamed(self) -> dict[str, str]:
        """The mapped keys whose name changed (target -> source)."""
        return {t: s for t, s in self.mapped.items() if t != s}

    def summary(self) -> str:
        """A few lines for humans: counts, derived, initialised and unused keys."""
        lines = [
            f"{self.converter} <- {self.source}: {len(self.mapped)} keys loaded "
            f"({len(self.renamed)} renamed), {len(self.initialised)} initialised, {len(self.unused)} unused",
        ]
        lines += [f"  derived {k} <- {self.mapped[k]}: {how}" for k, how in sorted(self.notes.items())]
        if self.copies:
            lines.append(f"  copied {len(self.copies)} keys from other loaded keys (branched pose-stream blocks, "
                         f"recipe copies), e.g. {min(self.copies)} <- {self.copies[min(self.copies)]}")
        lines += [f"  initialised {k}: {why}" for k, why in sorted(self.initialised.items())]
        lines += [f"  unused {k}: {why}" for k, why in sorted(self.unused.items())]
        return "\n".join(lines)

    def table(self) -> str:
        """A summary table: loaded keys per source, initialised and unused keys counted by reason."""
        loaded = Counter(v.split(":", 1)[0] if ":" in v else self.converter for v in self.mapped.values())
        rows = [(f"loaded from {label}", n) for label, n in sorted(loaded.items())]
        rows += [(f"initialised: {why}", n) for why, n in sorted(Counter(self.initialised.values()).items())]
        rows += [(f"unused: {why}", n) for why, n in sorted(Counter(self.unused.values()).items())]
        width = max(len(r[0]) for r in rows) if rows else 0
        lines = [f"{self.converter}: {len(self.mapped) + len(self.initialised)} target keys"]
        lines += [f"  {what:<{width}}  {n:6d}" for what, n in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
