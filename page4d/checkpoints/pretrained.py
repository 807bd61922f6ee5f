"""The one entry point for weights: ``load_pretrained`` reads a bundled name, a preset (random weights, when
asked for), a native folder, a checkpoint file of any supported family, a known Hub checkpoint or a native Hub
repo, and returns the model with a ``LoadReport`` that accounts for every key."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from page4d.checkpoints import native
from page4d.checkpoints.composition import compose, single_source_recipe
from page4d.checkpoints.hub import KNOWN_CHECKPOINTS, HubOptions, fetch
from page4d.checkpoints.native import CONFIG_NAME, WEIGHTS_NAME
from page4d.checkpoints.report import LoadReport
from page4d.config import ModelConfig
from page4d.model import Page4D
from page4d.presets import PRESETS, preset

BUNDLED_MODELS = {"page4d-small": Path(__file__).resolve().parents[1] / "weights" / "page4d-small"}
"""Trained models shipped inside the package, by name (each folder has a model card, ``README.md``)."""
DEFAULT_MODEL = "page4d-small"
"""The model ``page4d reconstruct`` uses unless told otherwise."""

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json")
"""Names ending so are files, never Hub repo ids."""

ACCEPTS = (
    f"a bundled model ({', '.join(BUNDLED_MODELS)}), a page4d model folder ({WEIGHTS_NAME} + {CONFIG_NAME}), "
    "a checkpoint file (.safetensors, .pt, .pth) or a Hub repo id (owner/name)"
)


def bundled_folder(name: str) -> Path:
    """The folder of the bundled model ``name``, checked to hold its weights."""
    folder = BUNDLED_MODELS[name]
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise ValueError(f"{name}: the bundled weights are missing from {folder}; reinstall page4d from a full "
                         "checkout (git clone, then pip install -e .)")
    return folder


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only mean a local file or folder (a Hub repo id is ``owner/name``)."""
    return (
        Path(name).is_absolute() or name.startswith((".", "~")) or "\\" in name or name.count("/") >= 2
        or name.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def _unknown_name(name: str) -> ValueError:
    """The error for a bare word that names nothing, suggesting the closest bundled model or preset."""
    if name in PRESETS:
        return ValueError(f"{name} is a model preset with random, untrained weights, not a trained model; build it "
                          f"with Page4D(preset({name!r})), or load {' or '.join(BUNDLED_MODELS)}")
    close = difflib.get_close_matches(name, [*BUNDLED_MODELS, *PRESETS], n=1)
    return ValueError(
        f"{name}: not a bundled model ({', '.join(BUNDLED_MODELS)}), a preset ({', '.join(sorted(PRESETS))}), an "
        "existing file or folder, or a Hub repo id (owner/name)" + (f"; did you mean {close[0]}?" if close else "")
    )


def resolve(name_or_path: str | Path) -> Path | str:
    """Where weights come from, without touching the network: an existing local file or folder (a ``Path``;
    bundled names give their folder), or a Hub name (a ``str``: a known checkpoint or an ``owner/name`` repo).

    Raises ``TypeError`` for other argument types and ``ValueError`` for a path-like argument that does not
    exist (see ``_looks_like_path``) or a bare word that names nothing."""
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"expected {ACCEPTS} as a str or Path, got {type(name_or_path).__name__} {name_or_path!r}")
    name = str(name_or_path)
    if not name:  # Path("") would mean the working directory
        raise ValueError(f"empty model name; pass {ACCEPTS}")
    if isinstance(name_or_path, str) and name in BUNDLED_MODELS:
        return bundled_folder(name)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if isinstance(name_or_path, str) and name in KNOWN_CHECKPOINTS:
        return name
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise ValueError(f"{name}: not found; pass {ACCEPTS}")
    if "/" not in name:
        raise _unknown_name(name)
    return name


def load_checkpoint_file(path: str | Path, config: ModelConfig | None = None) -> tuple[Page4D, LoadReport]:
    """Build a model for a checkpoint file and load it strictly, one tensor at a time.

    Native files use ``config`` or the ``config.json`` beside them; VGGT files use ``config`` or the
    ``vggt-1b`` preset (the only released VGGT size); PAGE-4D files use ``config`` or the preset of the
    variant their keys show (``page4d-fin10`` or ``page4d-release``, whose mask is off at inference
    as the release runs it; pass the ``page4d-release-mask`` config for ``checkpoint_mask.pt``); Pi3 and
    Pi3X files use ``config`` or the ``pi3-large`` preset, and only the keys the converter reports
    ``initialised`` (``mask_token``) may be absent: they keep their initial values. This is the
    single-source recipe of ``composition``: keys, shapes and dtypes are checked before anything is allocated.
    """
    recipe = single_source_recipe(path, None if config is None else config.to_dict())
    return compose(recipe, {"source": path})


def load_preset(name: str, seed: int = 0) -> tuple[Page4D, LoadReport]:
    """A model of preset ``name`` with random weights drawn from ``seed`` (the caller's random state is left
    alone); the report lists every key as initialised, so ``report.untrained`` is true."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Page4D(preset(name)).eval()
    why = f"random weights of preset {name} (seed {seed}): untrained"
    initialised = dict.fromkeys(model.state_dict(), why)
    return model, LoadReport(source=f"preset {name}", converter="preset", initialised=initialised)


def load_pretrained(
    name_or_path: str | Path,
    config: ModelConfig | None = None,
    *,
    presets: bool = False,
    seed: int = 0,
    hub: HubOptions | None = None,
) -> tuple[Page4D, LoadReport]:
    """A model, in eval mode, and the report of where every weight came from.

    ``name_or_path``: a bundled name (``page4d-small``), a native folder, a checkpoint file, a known Hub
    checkpoint (``facebook/VGGT-1B``) or a native Hub repo (see ``resolve``); with ``presets``, also a preset name,
    built with random weights from ``seed`` (otherwise a preset name is an error: it is not a trained model).
    ``config``: the model the weights load into (default: a native folder's or repo's ``config.json``, a foreign
    file's family preset). ``hub``: how Hub files are fetched (revision, token, cache, ...); refused for local paths
    and presets, where it would mean nothing.
    """
    hub_set = hub is not None and bool(hub.given())
    if presets and isinstance(name_or_path, str) and name_or_path in PRESETS:
        if hub_set or config is not None:
            raise TypeError(f"{name_or_path} is a preset built here with random weights: "
                            f"{'Hub options' if hub_set else 'a config'} would mean nothing; pass neither")
        return load_preset(name_or_path, seed)
    where = resolve(name_or_path)
    if isinstance(where, Path):
        if hub_set:
            raise TypeError(f"{name_or_path}: Hub options ({', '.join(hub.given())}) apply to Hub repos only; load "
                            "local folders and files without them")
        if where.is_dir():
            return _load_native(*native.read_folder(where, config))
        return load_checkpoint_file(where, config)
    if where in KNOWN_CHECKPOINTS:
        known = KNOWN_CHECKPOINTS[where]
        local = fetch(known.repo_id, known.filename, known.repo_type, hub)
        return load_checkpoint_file(local, config or preset(known.preset))
    config_file = fetch(where, CONFIG_NAME, options=hub)  # first: a repo that is not page4d's fails before the weights
    weights = fetch(where, WEIGHTS_NAME, options=hub)
    return _load_native(weights, config or native.read_config(config_file))


def _load_native(weights: Path, config: ModelConfig) -> tuple[Page4D, LoadReport]:
    """A model built from ``config`` with the native ``weights`` loaded strictly, in eval mode."""
    model = Page4D(config)
    report = native.load_into(model, weights)
    return model.eval(), report
