"""``page4d convert SRC [SRC ...] [--recipe NAME|FILE] -o OUT``: write a native checkpoint and its load report."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path

from tqdm import tqdm

from page4d.checkpoints.composition import RECIPES, compose, load_recipe, single_source_recipe
from page4d.checkpoints.hub import KNOWN_CHECKPOINTS, fetch
from page4d.checkpoints.report import LoadReport
from page4d.fileio import read_json
from page4d.presets import PRESETS
from page4d.transaction import OutputFolder


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "convert",
        help="convert VGGT / PAGE-4D / Pi3 checkpoints (or compose several) into a native page4d checkpoint",
        description=(
            "Write OUT/model.safetensors, OUT/config.json and OUT/load_report.json (every target key's source, "
            "every unused source key with the reason). One SRC without --recipe converts it whole; with "
            "--recipe, SRC are the recipe's sources in order."
        ),
    )
    p.add_argument("sources", nargs="+", help="checkpoint files (.safetensors, .pt, .pth) or known Hub names "
                   f"({', '.join(KNOWN_CHECKPOINTS)})")
    p.add_argument("--recipe", help=f"recipe name ({', '.join(RECIPES)}) or a .json / .yaml recipe file")
    p.add_argument("--target", help=f"target model: a preset ({', '.join(sorted(PRESETS))}) or a config.json; "
                   "default: the recipe's, or the source family's preset")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (created; must be empty; never a source, inside one or above one)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=run)


def _resolve(source: str) -> tuple[Path, str | None]:
    """The local file of a source, and the preset it loads into when it is a known Hub checkpoint."""
    path = Path(source)
    if path.is_file():
        return path, None
    if source in KNOWN_CHECKPOINTS:
        known = KNOWN_CHECKPOINTS[source]
        return fetch(known.repo_id, known.filename, known.repo_type), known.preset
    raise ValueError(f"{source}: no such checkpoint file, and not a known Hub name ({', '.join(KNOWN_CHECKPOINTS)})")


def _target(value: str | None) -> str | dict | None:
    if value is None or value in PRESETS:
        return value
    path = Path(value)
    if not path.is_file():
        close = difflib.get_close_matches(value, list(PRESETS), n=1)
        raise ValueError(f"--target {value}: not a preset ({', '.join(sorted(PRESETS))}) nor a config file"
                         + (f"; did you mean {close[0]}?" if close else ""))
    config = read_json(path, "--target takes a preset name or a page4d config.json")
    if not isinstance(config, dict):
        raise ValueError(f"--target {value}: a config.json holds a mapping of ModelConfig fields")
    return config


def _inputs(args: argparse.Namespace) -> list[Path]:
    """The local files the conversion reads, which ``-o`` must not overlap."""
    named = [*args.sources, *(v for v in (args.recipe, args.target) if v is not None)]
    return [Path(v) for v in named if Path(v).exists()]


def run(args: argparse.Namespace) -> int:
    log = (lambda *_: None) if args.quiet else print
    with OutputFolder(args.output, overwrite=args.overwrite, inputs=_inputs(args)) as output:
        for note in output.notes:
            log(f"note: {note}")
        report = _convert(args, output.path)
    log(report.table())
    log(f"wrote {args.output}/model.safetensors, config.json and load_report.json")
    return 0


def _convert(args: argparse.Namespace, folder: Path) -> LoadReport:
    """Resolve the sources and the recipe, compose, and save the model and its report into ``folder``."""
    target = _target(args.target)
    resolved = [_resolve(s) for s in args.sources]
    paths = [path for path, _ in resolved]
    if args.recipe is None:
        if len(paths) != 1:
            raise ValueError(f"{len(paths)} sources need a --recipe saying which keys each provides")
        # A known checkpoint carries its preset (e.g. PAGE-4D's checkpoint_mask.pt: the mask-on release).
        recipe = single_source_recipe(paths[0], target if target is not None else resolved[0][1])
    else:
        recipe = load_recipe(args.recipe)
        if len(paths) != len(recipe.sources):
            raise ValueError(f"recipe {recipe.name} takes {len(recipe.sources)} sources "
                             f"({', '.join(recipe.sources)}, in this order), got {len(paths)}")
        if target is not None:
            recipe = dataclasses.replace(recipe, target=target)
    sources = dict(zip(recipe.sources, paths, strict=True))
    model, report = compose(recipe, sources, progress=None if args.quiet else tqdm)
    model.save_pretrained(folder)
    report.save(folder / "load_report.json")
    return report
