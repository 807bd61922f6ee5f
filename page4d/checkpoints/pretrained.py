"""One entry point for weights: native folders, foreign checkpoint files and known Hub checkpoints."""

from __future__ import annotations

import difflib
from pathlib import Path

from page4d.checkpoints.composition import compose, single_source_recipe
from page4d.checkpoints.hub import KNOWN_CHECKPOINTS, fetch
from page4d.checkpoints.io import read_state_dict
from page4d.checkpoints.loading import load_strict
from page4d.checkpoints.report import LoadReport
from page4d.config import PRESETS, ModelConfig, preset
from page4d.fileio import read_json
from page4d.model import CONFIG_NAME, WEIGHTS_NAME, Page4D

BUNDLED_MODELS = {"page4d-small": Path(__file__).resolve().parents[1] / "weights" / "page4d-small"}
"""Trained models shipped inside the package, by name (each folder has a model card, ``README.md``)."""

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


def read_config(path: Path) -> ModelConfig:
    """The ``ModelConfig`` in a folder's ``config.json``; ``ValueError`` naming the file when it is not one."""
    hint = "it should be the config.json that Page4D.save_pretrained writes"
    data = read_json(path, hint)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of model settings, got {type(data).__name__}; {hint}")
    try:
        return ModelConfig.from_dict(data)
    except (ValueError, TypeError) as err:  # unknown fields, impossible or mistyped settings
        raise ValueError(f"{path}: not a valid page4d model config ({err}); {hint}") from None


def load_folder(folder: Path) -> tuple[Page4D, LoadReport]:
    """A native model folder as ``Page4D.save_pretrained`` writes it (``model.safetensors`` + ``config.json``)."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: no {name} in the folder; a page4d model folder holds {WEIGHTS_NAME} and "
                             f"{CONFIG_NAME} (as save_pretrained writes them); for a single checkpoint, pass the file")
    return load_native(folder / WEIGHTS_NAME, read_config(folder / CONFIG_NAME))


def load_native(weights: Path, config: ModelConfig) -> tuple[Page4D, LoadReport]:
    """A model built from ``config`` with the native ``weights`` file loaded strictly (local folders, Hub repos)."""
    state = read_state_dict(weights)
    model = Page4D(config)
    report = LoadReport(source=str(weights), converter="page4d", mapped={k: k for k in model.state_dict()})
    load_strict(model, state, report)
    return model.eval(), report


def load_file(path: str | Path, config: ModelConfig | None = None) -> tuple[Page4D, LoadReport]:
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


def load_pretrained(name_or_path: str | Path, config: ModelConfig | None = None) -> tuple[Page4D, LoadReport]:
    """A model from a bundled name (``page4d-small``), a native folder, a checkpoint file, a known Hub checkpoint
    or a native Hub repo (see ``resolve`` for how the argument is read)."""
    where = resolve(name_or_path)
    if isinstance(where, Path):
        return load_folder(where) if where.is_dir() else load_file(where, config)
    if where in KNOWN_CHECKPOINTS:
        known = KNOWN_CHECKPOINTS[where]
        local = fetch(known.repo_id, known.filename, known.repo_type)
        return load_file(local, config or preset(known.preset))
    local = fetch(where, WEIGHTS_NAME)
    fetch(where, CONFIG_NAME)
    return load_file(local, config)
