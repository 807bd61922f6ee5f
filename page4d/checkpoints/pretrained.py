"""One entry point for weights: native folders, foreign checkpoint files and known Hub checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from page4d.checkpoints import page4d, pi3, vggt
from page4d.checkpoints.hub import KNOWN_CHECKPOINTS, fetch
from page4d.checkpoints.io import detect_family, read_state_dict
from page4d.checkpoints.loading import check_state_dict, completed
from page4d.checkpoints.report import LoadReport
from page4d.config import ModelConfig, preset
from page4d.model import CONFIG_NAME, WEIGHTS_NAME, Page4D


def load_file(path: str | Path, config: ModelConfig | None = None) -> tuple[Page4D, LoadReport]:
    """Build a model for a checkpoint file and load it strictly.

    Native files use ``config`` or the ``config.json`` beside them; VGGT files use ``config`` or the
    ``vggt-1b`` preset (the only released VGGT size); PAGE-4D files use ``config`` or the preset of the
    variant their keys show (``page4d-fin10`` or ``page4d-release``, whose mask is off at inference
    as the release runs it; pass the ``page4d-release-mask`` config for ``checkpoint_mask.pt``); Pi3 and
    Pi3X files use ``config`` or the ``pi3-large`` preset, and only the keys the converter reports
    ``initialised`` (``mask_token``) may be absent: they keep their initial values.
    """
    path = Path(path)
    state = read_state_dict(path)
    family = detect_family(state)
    if family == "page4d":
        if config is None:
            config_path = path.with_name(CONFIG_NAME)
            if not config_path.is_file():
                raise ValueError(f"{path} is a page4d checkpoint without a {CONFIG_NAME} beside it; pass a config")
            config = ModelConfig.from_dict(json.loads(config_path.read_text()))
        report = LoadReport(source=str(path), converter="page4d", mapped={k: k for k in state})
    elif family == "vggt":
        config = config or preset("vggt-1b")
        state, report = vggt.convert(state, source=str(path))
    elif family == "page4d-ref":
        config = config or preset(f"page4d-{page4d.detect_variant(state, str(path))}")
        state, report = page4d.convert(state, source=str(path))
    elif family == "pi3":
        config = config or preset("pi3-large")
        state, report = pi3.convert(state, source=str(path))
    else:
        raise ValueError(
            f"{path}: unsupported checkpoint family {family!r}; this version loads page4d, VGGT, PAGE-4D "
            "and Pi3 / Pi3X checkpoints"
        )
    with torch.device("meta"):  # check keys and shapes before allocating a full-size model
        check_state_dict(Page4D(config), state, report.source, report.initialised)
    model = Page4D(config)
    model.load_state_dict(completed(model, state, report.initialised), strict=True)
    return model.eval(), report


def load_pretrained(name_or_path: str | Path, config: ModelConfig | None = None) -> tuple[Page4D, LoadReport]:
    """A model from a native folder, a checkpoint file, a known Hub checkpoint or a native Hub repo."""
    path = Path(name_or_path)
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
