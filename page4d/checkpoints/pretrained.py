"""One entry point for weights: native folders, foreign checkpoint files and known Hub checkpoints."""

from __future__ import annotations

from pathlib import Path

from page4d.checkpoints.composition import compose, single_source_recipe
from page4d.checkpoints.hub import KNOWN_CHECKPOINTS, fetch
from page4d.checkpoints.report import LoadReport
from page4d.config import ModelConfig, preset
from page4d.model import CONFIG_NAME, WEIGHTS_NAME, Page4D

BUNDLED_MODELS = {"page4d-small": Path(__file__).resolve().parents[1] / "weights" / "page4d-small"}
"""Trained models shipped inside the package, by name (each folder has a model card, ``README.md``)."""


def bundled_folder(name: str) -> Path:
    """The folder of the bundled model ``name``, checked to hold its weights."""
    folder = BUNDLED_MODELS[name]
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise ValueError(f"{name}: the bundled weights are missing from {folder}; reinstall page4d from a full "
                         "checkout (git clone, then pip install -e .)")
    return folder


def load_file(path: str | Path, config: ModelConfig | None = None) -> tuple[Page4D, LoadReport]:
    """Build a model for a checkpoint file and load it strictly, one tensor at a time.

    Native files use ``config`` or the ``config.json`` beside them; VGGT files use ``config`` or the
    ``vggt-1b`` preset (the only released VGGT size); PAGE-4D files use ``config`` or the preset of the
    variant their keys show (``page4d-fin10`` or ``page4d-release``, whose mask is off at inference
    as the release runs it; pass the ``page4d-release-mask`` config for ``checkpoint_mask.pt``); Pi3 and
    Pi3X files use ``config`` or the ``pi3-large`` preset, and only the keys the converter reports
    ``initialised`` (``mask_token``) may be absent: they keep their initial values. This is the
    single-source recipe of ``composition``: keys and shapes are checked before anything is allocated.
    """
    recipe = single_source_recipe(path, None if config is None else config.to_dict())
    return compose(recipe, {"source": path})


def load_pretrained(name_or_path: str | Path, config: ModelConfig | None = None) -> tuple[Page4D, LoadReport]:
    """A model from a bundled name (``page4d-small``), a native folder, a checkpoint file, a known Hub checkpoint
    or a native Hub repo."""
    path = Path(name_or_path)
    if str(name_or_path) in BUNDLED_MODELS:
        path = bundled_folder(str(name_or_path))
    if path.is_dir():
        model = Page4D.from_pretrained(path)
        report = LoadReport(source=str(path), converter="page4d", mapped={k: k for k in model.state_dict()})
        return model, report
    if path.is_file():
        return load_file(path, config)
    name = str(name_or_path)
    if name in KNOWN_CHECKPOINTS:
        known = KNOWN_CHECKPOINTS[name]
        local = fetch(known.repo_id, known.filename, known.repo_type)
        return load_file(local, config or preset(known.preset))
    if name.count("/") == 1 and not path.suffix:
        local = fetch(name, WEIGHTS_NAME)
        fetch(name, CONFIG_NAME)
        return load_file(local, config)
    raise ValueError(f"{name}: no such file or folder, and not a Hub repo id (owner/name)")
