"""Downloading checkpoints from the Hugging Face Hub, failing fast and clearly when offline."""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled


@dataclass(frozen=True)
class HubCheckpoint:
    """A known foreign checkpoint: where it lives and the model preset it loads into."""

    repo_id: str
    filename: str
    preset: str
    repo_type: str = "model"


KNOWN_CHECKPOINTS = {
    "facebook/VGGT-1B": HubCheckpoint("facebook/VGGT-1B", "model.pt", preset="vggt-1b"),
    # PAGE-4D's official weights live in a Hugging Face *dataset* repo.
    "zhouk777/PAGE4D/checkpoint_nomask.pt": HubCheckpoint(
        "zhouk777/PAGE4D", "checkpoint_nomask.pt", preset="page4d-release", repo_type="dataset"
    ),
    "zhouk777/PAGE4D/checkpoint_mask.pt": HubCheckpoint(
        "zhouk777/PAGE4D", "checkpoint_mask.pt", preset="page4d-release-mask", repo_type="dataset"
    ),
    # Pi3 / Pi3X weights are CC BY-NC 4.0 (non-commercial); only their backbone loads (no heads).
    "yyfz233/Pi3": HubCheckpoint("yyfz233/Pi3", "model.safetensors", preset="pi3-large"),
    "yyfz233/Pi3X": HubCheckpoint("yyfz233/Pi3X", "model.safetensors", preset="pi3-large"),
}


@dataclass(frozen=True)
class HubOptions:
    """How files are fetched from the Hub: the ``huggingface_hub.hf_hub_download`` options page4d passes on."""

    revision: str | None = None
    """Branch, tag or commit (default: ``main``)."""
    token: str | bool | None = None
    cache_dir: str | Path | None = None
    local_files_only: bool = False
    """Use the cache only, never the network."""
    force_download: bool = False

    @classmethod
    def from_kwargs(cls, kwargs: dict, what: str) -> HubOptions:
        """The options in ``kwargs`` (``from_pretrained``'s); ``TypeError`` naming any that is not one."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"{what}: unknown option(s) {', '.join(unknown)}; the Hub options are "
                            f"{', '.join(sorted(names))}")
        return cls(**kwargs)

    def given(self) -> list[str]:
        """The names of the options set to something other than their defaults."""
        defaults = HubOptions()
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(defaults, f.name)]


class OfflineError(OSError):
    """The file is not cached and the Hub cannot be reached."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(kwargs: dict) -> Path | None:
    try:
        return Path(hf_hub_download(**kwargs, local_files_only=True))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        return None


def fetch(repo_id: str, filename: str, repo_type: str = "model", options: HubOptions | None = None) -> Path:
    """Local path of ``repo_id/filename``: from the cache, else downloaded (with ``options``).

    Raises ``OfflineError`` within seconds (instead of the Hub client's retry loop) when the file is
    not cached and the Hub is unreachable, ``HF_HUB_OFFLINE=1`` or ``local_files_only``, saying what to fetch
    and where.
    """
    options = options or HubOptions()
    kwargs = {"repo_id": repo_id, "filename": filename, "repo_type": repo_type, "revision": options.revision,
              "token": options.token, "cache_dir": options.cache_dir}
    cached = None if options.force_download else _cached(kwargs)
    if cached is not None:
        return cached
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if offline or options.local_files_only or not _hub_reachable():
        kind = "datasets/" if repo_type == "dataset" else ""
        url = f"{constants.ENDPOINT}/{kind}{repo_id}/resolve/{options.revision or 'main'}/{filename}"
        reason = ("HF_HUB_OFFLINE is set" if offline else "local_files_only is set" if options.local_files_only
                  else f"cannot reach {constants.ENDPOINT}")
        cache = options.cache_dir or constants.HF_HUB_CACHE
        raise OfflineError(
            f"{filename} of {repo_id} is not in the local cache and {reason}. Fetch it on a connected machine "
            f"({url}, or `hf download {repo_id} {filename}"
            f"{' --repo-type dataset' if repo_type == 'dataset' else ''}`), then either pass the file's path "
            f"instead of the repo id, or copy the Hugging Face cache to {cache}."
        )
    return Path(hf_hub_download(**kwargs, force_download=options.force_download))
