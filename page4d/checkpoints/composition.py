"""Initialisation recipes: build one model from several checkpoints with explicit precedence.

A recipe is data: a target preset, the named sources it needs (each with its converter family), an
ordered list of stages (source, glob patterns over *target* keys) and the target keys left at the
model's initialisation with a reason. It is validated against the target's key list and every
source's converted key list (meta tensors, no data) before any tensor is read:

* every pattern must match a target key, and its stage's source must provide every key it claims
  with the target's shape;
* a target key claimed by two stages is an error, unless ``precedence="first"`` says the earlier
  stage wins;
* a target key that no stage provides and ``initialise`` does not list is an error;
* a source key feeding two stages is an error unless ``allow_shared_sources``.

Then tensors are copied one at a time into the target model (see ``source.LazySource``), and the
returned ``LoadReport`` names every target key's source (``label:key``) or why it was initialised,
and every unused source key with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from page4d.checkpoints import native, page4d_reference, pi3, vggt
from page4d.checkpoints.io import detect_family
from page4d.checkpoints.loading import check_floating
from page4d.checkpoints.report import LoadReport
from page4d.checkpoints.source import LazySource
from page4d.config import ModelConfig
from page4d.fileio import read_json, read_yaml
from page4d.model import Page4D
from page4d.patterns import match_patterns
from page4d.presets import preset

CONVERTERS: dict[str, Callable] = {
    "vggt": vggt.convert,
    "page4d-reference": page4d_reference.convert,
    "pi3": pi3.convert,
    native.CONVERTER: native.convert,
}
"""Converter name (= checkpoint family, ``io.detect_family``) -> pure ``convert(state_dict, source)``."""
@dataclass(frozen=True)
class Stage:
    """Take the target keys matching ``keys`` from the source named ``source``."""

    source: str
    keys: tuple[str, ...]


@dataclass
class Recipe:
    name: str
    target: str | dict
    """Preset name, or a full ``ModelConfig`` dict, of the model being built."""
    sources: dict[str, str]
    """Source label -> converter (``vggt``, ``page4d-reference``, ``pi3``, ``native``), in the order given."""
    stages: tuple[Stage, ...]
    initialise: dict[str, str] = field(default_factory=dict)
    """Target key pattern -> why those keys keep the model's initialisation."""
    precedence: str = "error"
    """``error``: overlapping claims are rejected; ``first``: the earlier stage wins."""
    allow_shared_sources: bool = False
    copies: dict[str, str] = field(default_factory=dict)
    """Target key prefix -> the target key prefix whose loaded values its keys copy (e.g. a sparse block's from a
    view block), for keys no stage claims and ``initialise`` does not list."""

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """A recipe from parsed JSON / YAML; ``ValueError`` naming the first missing or mistyped field."""
        if not isinstance(data, dict):
            raise ValueError(f"a recipe is a mapping of fields, got {type(data).__name__}")
        fields = {"name", "target", "sources", "stages", "initialise", "precedence", "allow_shared_sources", "copies"}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown recipe fields: {sorted(unknown)}; known: {sorted(fields)}")
        missing = sorted({"name", "target", "sources", "stages"} - set(data))
        if missing:
            raise ValueError(f"recipe fields {missing} are missing; a recipe needs name, target, sources and stages")
        if not isinstance(data["name"], str):
            raise ValueError(f"recipe field name: expected a string, got {data['name']!r}")
        if not isinstance(data["target"], str | dict):
            raise ValueError(f"recipe field target: expected a preset name or a model config mapping, "
                             f"got {data['target']!r}")
        sources = _string_map(data["sources"], "sources")
        initialise = _string_map(data.get("initialise", {}), "initialise")
        copies = _string_map(data.get("copies", {}), "copies")
        stages = data["stages"]
        if not isinstance(stages, list):
            raise ValueError(f"recipe field stages: expected a list of {{source, keys}} mappings, got {stages!r}")
        for i, s in enumerate(stages):
            # A bare string as keys would otherwise become one pattern per character.
            if (not isinstance(s, dict) or set(s) != {"source", "keys"} or not isinstance(s["source"], str)
                    or not isinstance(s["keys"], list) or not all(isinstance(k, str) for k in s["keys"])):
                raise ValueError(f"recipe field stages[{i}]: expected {{source: label, keys: [patterns]}}, got {s!r}")
        precedence, shared = data.get("precedence", "error"), data.get("allow_shared_sources", False)
        if not isinstance(precedence, str):
            raise ValueError(f"recipe field precedence: expected 'error' or 'first', got {precedence!r}")
        if not isinstance(shared, bool):
            raise ValueError(f"recipe field allow_shared_sources: expected true or false, got {shared!r}")
        return cls(data["name"], data["target"], sources, tuple(Stage(s["source"], tuple(s["keys"])) for s in stages),
                   initialise, precedence, shared, copies)

    def target_config(self) -> ModelConfig:
        return preset(self.target) if isinstance(self.target, str) else ModelConfig.from_dict(self.target)

    def validate_fields(self) -> None:
        if self.precedence not in ("error", "first"):
            raise ValueError(f"recipe {self.name}: precedence must be 'error' or 'first', got {self.precedence!r}")
        for label, converter in self.sources.items():
            if converter not in CONVERTERS:
                raise ValueError(f"recipe {self.name}: source {label!r} has unknown converter {converter!r}; use one "
                                 f"of {', '.join(CONVERTERS)}")
        for stage in self.stages:
            if stage.source not in self.sources:
                raise ValueError(
                    f"recipe {self.name}: a stage uses source {stage.source!r}, not one of {list(self.sources)}"
                )


PI3_PAGE4D = Recipe(
    name="pi3-page4d",
    target="page4d-mv",
    sources={"pi3": "pi3", "page4d": "page4d-reference"},
    stages=(
        Stage("pi3", ("aggregator.time_blocks.{0..17}.*", "aggregator.view_blocks.{0..17}.*",
                      "aggregator.register_token")),
        Stage("page4d", ("aggregator.patch_embed.*", "aggregator.time_blocks.{18..23}.*",
                         "aggregator.view_blocks.{18..23}.*", "aggregator.camera_token", "camera_head.*",
                         "depth_head.*", "point_head.*", "track_head.*")),
    ),
    initialise={
        "aggregator.dynamic_mask_head.*": "new fusion mask head (PAGE-4D's head has another architecture)",
        "aggregator.mask_bias.*": "λ biases start at 0: the model starts as the unbiased one",
        "aggregator.temporal_rope.scale": "time rotation starts at 0: identity",
        "aggregator.sparse_blocks.*": "sparse global block with LayerScale 0: identity",
    },
)
"""Seed document 004 §4.1: Pi3's 18 decoder pairs and registers, PAGE-4D's encoder, last 6 pairs, camera
token and heads; the new modules start as the identity."""

_NEW_MV_KEYS = {
    "aggregator.dynamic_mask_head.*": "new fusion mask head (PAGE-4D's head has another architecture)",
    "aggregator.mask_bias.*": "λ biases start at 0: the model starts as the unbiased one",
    "aggregator.temporal_rope.scale": "time rotation starts at 0: identity",
}
_SPARSE_AT_INIT = {"aggregator.sparse_blocks.*": "sparse global block with LayerScale 0: identity"}
_SPARSE_GAMMAS = {"aggregator.sparse_blocks.*.block.ls*.gamma": "LayerScale 0: the copied block starts as identity"}
_SPARSE_FROM_VIEW = {"aggregator.sparse_blocks.0.block.": "aggregator.view_blocks.11."}
"""page4d-mv's sparse block runs after pair 11: its attention and MLP start as view block 11's."""

_VGGT_KEYS = ("aggregator.patch_embed.*", "aggregator.time_blocks.*", "aggregator.view_blocks.*",
              "aggregator.camera_token", "aggregator.register_token", "camera_head.*", "depth_head.*", "point_head.*",
              "track_head.*")
"""Every key a VGGT-1B (or PAGE-4D) checkpoint gives page4d-mv."""

PAGE4D_PI3 = Recipe(
    name="page4d-pi3",
    target="page4d-mv",
    sources={"page4d": "page4d-reference", "pi3": "pi3"},
    stages=(Stage("page4d", _VGGT_KEYS),
            Stage("pi3", ("aggregator.time_blocks.{0..17}.*", "aggregator.view_blocks.{0..17}.*",
                          "aggregator.register_token"))),
    initialise={**_NEW_MV_KEYS, **_SPARSE_AT_INIT},
    precedence="first",
)
"""Seed document 002's plan: PAGE-4D (fin10) for every block, token and head, Pi3 only for the keys PAGE-4D does
not give (at page4d-mv's size none: the report lists Pi3's keys as taken from PAGE-4D); new modules start as the
identity."""

VGGT_MV = Recipe(
    name="vggt-mv", target="page4d-mv", sources={"vggt": "vggt"}, stages=(Stage("vggt", _VGGT_KEYS),),
    initialise={**_NEW_MV_KEYS, **_SPARSE_AT_INIT},
)
"""page4d-mv from VGGT-1B: every VGGT key, the new modules at their identity initialisation."""

PAGE4D_MV = Recipe(
    name="page4d-mv", target="page4d-mv", sources={"page4d": "page4d-reference"},
    stages=(Stage("page4d", _VGGT_KEYS),), initialise={**_NEW_MV_KEYS, **_SPARSE_AT_INIT},
)
"""page4d-mv from PAGE-4D (fin10): every block, token and head; its mask head is not this model's (unused)."""


def _page4d_mask_target() -> dict:
    """page4d-mv with PAGE-4D's fin10 head, fused (``dynamic_mask.fuse``) for the pose/geometry biases."""
    config = preset("page4d-mv")
    config.aggregator.dynamic_mask = dataclasses.replace(config.aggregator.dynamic_mask, head="fin10", fuse=True)
    return config.to_dict()


PAGE4D_MV_MASK = Recipe(
    name="page4d-mv-page4d-mask", target=_page4d_mask_target(), sources={"page4d": "page4d-reference"},
    stages=(Stage("page4d", (*_VGGT_KEYS, "aggregator.spatial_mask_head.*")),),
    initialise={"aggregator.mask_fusion.*": "fusion gate α = β = 1, b = 0: M is PAGE-4D's own moving probability "
                                            "until an external mask is given",
                **{k: v for k, v in _NEW_MV_KEYS.items() if "dynamic_mask_head" not in k}, **_SPARSE_AT_INIT},
)
"""Seed 000's table / 004 §7.8: page4d-mv that keeps PAGE-4D's trained mask head (fin10), fused with external
masks and read by the pose/geometry biases."""


def with_sparse_from_view(recipe: Recipe) -> Recipe:
    """``recipe`` with page4d-mv's sparse block copied from view block 11 (LayerScale kept 0: still the identity,
    but its attention starts trained)."""
    initialise = {k: v for k, v in recipe.initialise.items() if k not in _SPARSE_AT_INIT} | _SPARSE_GAMMAS
    return dataclasses.replace(recipe, name=f"{recipe.name}-sparse-from-view", initialise=initialise,
                               copies=dict(_SPARSE_FROM_VIEW))


RECIPES = {recipe.name: recipe for recipe in (PI3_PAGE4D, PAGE4D_PI3, VGGT_MV, PAGE4D_MV, PAGE4D_MV_MASK,
                                              with_sparse_from_view(VGGT_MV), with_sparse_from_view(PAGE4D_MV))}


def _string_map(value: object, name: str) -> dict[str, str]:
    """``value`` as a ``str -> str`` dict; ``ValueError`` naming the recipe field otherwise."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"recipe field {name}: expected a mapping of names to strings, got {value!r}")
    return dict(value)


def load_recipe(name_or_file: str | Path) -> Recipe:
    """A named recipe, or one read from a ``.json`` / ``.yaml`` file; ``ValueError`` naming the file when it
    cannot be parsed or is not a recipe."""
    if str(name_or_file) in RECIPES:
        return RECIPES[str(name_or_file)]
    path = Path(name_or_file)
    if not path.is_file():
        raise ValueError(f"{name_or_file}: not a recipe name ({', '.join(RECIPES)}) nor a recipe file")
    hint = "fix the recipe file (see page4d.checkpoints.composition.Recipe)"
    data = read_yaml(path, hint) if path.suffix.lower() in (".yaml", ".yml") else read_json(path, hint)
    try:
        return Recipe.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def plan(recipe: Recipe, sources: dict[str, LazySource], target: Page4D) -> tuple[dict[str, int], LoadReport]:
    """Validate the recipe; returns target key -> index of the stage that provides it, and the report.

    Reads no tensor: sources are converted as meta tensors."""
    recipe.validate_fields()
    if set(sources) != set(recipe.sources):
        raise ValueError(f"recipe {recipe.name} needs sources {list(recipe.sources)}, got {list(sources)}")
    expected = target.state_dict()
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    keys = sorted(shapes)
    converted = {
        label: CONVERTERS[recipe.sources[label]](src.meta_state(), source=str(src.path))
        for label, src in sources.items()
    }
    owner: dict[str, int] = {}
    report = LoadReport(source=", ".join(f"{k}={s.path}" for k, s in sources.items()), converter=recipe.name)
    for index, stage in enumerate(recipe.stages):
        state, rep = converted[stage.source]
        what = f"recipe {recipe.name}, stage {index} ({stage.source})"
        claimed = match_patterns(stage.keys, keys, what)
        absent = sorted(claimed - set(state))
        if absent:
            raise ValueError(f"{what}: the source does not provide {len(absent)} claimed keys: {', '.join(absent[:8])}")
        wrong = [f"{k} (source {list(state[k].shape)} vs model {list(shapes[k])})"
                 for k in sorted(claimed) if tuple(state[k].shape) != shapes[k]]
        if wrong:
            raise ValueError(f"{what}: mis-shaped keys: {', '.join(wrong[:6])}; the target model is not the size of "
                             "the source: give a target config that matches it (convert --target PRESET|config.json)")
        check_floating(expected, {k: state[k] for k in claimed}, f"{sources[stage.source].path} ({what})")
        overlap = sorted(k for k in claimed if k in owner)
        if overlap and recipe.precedence == "error":
            raise ValueError(
                f"{what}: {len(overlap)} target keys are already claimed by stage {owner[overlap[0]]}, e.g. "
                f"{', '.join(overlap[:5])}; narrow the patterns or set precedence='first'"
            )
        for k in sorted(claimed - set(owner)):
            owner[k] = index
            report.mapped[k] = f"{stage.source}:{rep.mapped[k]}"
            if k in rep.notes:
                report.notes[k] = rep.notes[k]
    for pattern, why in recipe.initialise.items():
        for k in match_patterns([pattern], keys, f"recipe {recipe.name}, initialise"):
            if k in owner:
                raise ValueError(f"recipe {recipe.name}: {k} is claimed by stage {owner[k]} and listed in initialise")
            report.initialised[k] = why
    unfilled = [k for k in keys if k not in owner and k not in report.initialised]
    origins: dict[str, str] = {}  # target key -> the loaded target key it copies
    for prefix, source_prefix in recipe.copies.items():
        copied = {k: source_prefix + k[len(prefix):] for k in unfilled if k.startswith(prefix)}
        if not copied:
            raise ValueError(f"recipe {recipe.name}: copies {prefix!r} matches no target key left to fill")
        absent = next((k for k, origin in copied.items() if origin not in owner), None)
        if absent is not None:
            raise ValueError(f"recipe {recipe.name}: {absent} would copy {copied[absent]}, which no stage loads")
        origins |= copied
    # seed 004, stage 3: a branched pose-stream block starts as the loaded block it branches from
    origins |= {k: _branched_from(k) for k in unfilled if k not in origins and _branched_from(k) in owner}
    for k, origin in origins.items():
        owner[k], report.mapped[k], report.copies[k] = owner[origin], report.mapped[origin], origin
    orphans = sorted(set(keys) - set(owner) - set(report.initialised))
    if orphans:
        raise ValueError(
            f"recipe {recipe.name}: {len(orphans)} target keys have no source: {', '.join(orphans[:8])}; "
            "add a stage for them or list them in initialise with a reason"
        )
    _account_sources(recipe, converted, owner, set(keys), report)
    return owner, report


def _branched_from(key: str) -> str | None:
    """``aggregator.pose_time_blocks.3.x`` -> ``aggregator.time_blocks.3.x`` (None for any other key)."""
    for bank in ("time", "view"):
        prefix = f"aggregator.pose_{bank}_blocks."
        if key.startswith(prefix):
            return f"aggregator.{bank}_blocks." + key[len(prefix):]
    return None


def _account_sources(
    recipe: Recipe, converted: dict, owner: dict[str, int], target_keys: set[str], report: LoadReport
) -> None:
    """Every source key is used, or listed unused with the reason; a key feeding two stages is an error
    unless the recipe allows it."""
    stages_of: dict[tuple[str, str], set[int]] = {}
    for target, index in owner.items():
        label = recipe.stages[index].source
        source_key = converted[label][1].mapped[report.copies.get(target, target)]
        stages_of.setdefault((label, source_key), set()).add(index)
    shared = sorted(f"{label}:{key}" for (label, key), used in stages_of.items() if len(used) > 1)
    if shared and not recipe.allow_shared_sources:
        raise ValueError(
            f"recipe {recipe.name}: source keys feed two stages: {', '.join(shared[:5])}; "
            "set allow_shared_sources if that is intended"
        )
    for label, (_, rep) in converted.items():
        for key, why in rep.unused.items():
            report.unused[f"{label}:{key}"] = why
        for target, key in rep.mapped.items():
            if (label, key) not in stages_of:
                why = (f"recipe {recipe.name} takes its target key from another source" if target in target_keys
                       else "the target model has no such key (another architecture or size)")
                report.unused.setdefault(f"{label}:{key}", why)


def compose(
    recipe: Recipe, paths: dict[str, str | Path], progress: Callable | None = None
) -> tuple[Page4D, LoadReport]:
    """Build the recipe's target from the source files ``paths`` (label -> file). See the module docstring."""
    sources = {label: LazySource(path) for label, path in paths.items()}
    config = recipe.target_config()
    if native.CONVERTER not in recipe.sources.values():  # VGGT, PAGE-4D and Pi3 were trained on sets of frames
        config = dataclasses.replace(config, trained_layout="set")
    with torch.device("meta"):
        owner, report = plan(recipe, sources, Page4D(config))
    model = Page4D(config)
    params = model.state_dict()
    items = sorted(((k, i) for k, i in owner.items() if k not in report.copies), key=lambda item: item[1])
    derived: dict[str, dict[str, torch.Tensor]] = {}
    for target, index in progress(items, desc=f"{recipe.name}: copying", unit="tensor") if progress else items:
        label = recipe.stages[index].source
        src, source_key = sources[label], report.mapped[target].split(":", 1)[1]
        if target in report.notes:  # derived from a source tensor: run the converter on its few real inputs
            if label not in derived:
                mine = [t for t in report.notes if recipe.stages[owner[t]].source == label]
                needed = {report.mapped[t].split(":", 1)[1] for t in mine}
                derived[label] = CONVERTERS[recipe.sources[label]](src.with_values(needed), source=str(src.path))[0]
            value = derived[label][target]
        else:
            value = src.load(source_key)
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{src.path}: {source_key} contains NaN or Inf; the checkpoint is corrupt")
        with torch.no_grad():
            params[target].copy_(value)
        if target not in report.notes:
            src.release(source_key)
    with torch.no_grad():
        for target, branched_from in report.copies.items():
            params[target].copy_(params[branched_from])
    return model.eval(), report


_FAMILY_PRESETS = {"vggt": "vggt-1b", "pi3": "pi3-large"}
"""The preset a family's single checkpoint loads into by default (PAGE-4D's: the variant its keys show)."""


def single_source_recipe(path: str | Path, target: str | dict | None = None) -> Recipe:
    """The recipe that converts one checkpoint whole: its family's converter, every key it provides, the
    converter's own initialised keys (e.g. Pi3's missing ``mask_token``); target = the family's preset (a native
    file's: the ``config.json`` beside it)."""
    src = LazySource(path)
    family = detect_family(src.keys())
    if family not in CONVERTERS:
        raise ValueError(f"{path}: unrecognised checkpoint family; page4d, VGGT, PAGE-4D, Pi3 and Pi3X are supported")
    default: str | dict | None = _FAMILY_PRESETS.get(family)
    if family == native.CONVERTER:
        config_path = src.path.with_name(native.CONFIG_NAME)
        if target is None and not config_path.is_file():
            raise ValueError(f"{path} is a page4d checkpoint without a config.json beside it; put the config.json "
                             "it was saved with next to it (or pass its folder), or give a target config "
                             "(convert --target)")
        default = native.read_config(config_path).to_dict() if config_path.is_file() else None
    elif family == "page4d-reference":
        default = f"page4d-{page4d_reference.detect_variant(src.meta_state(), str(path))}"
    state, report = CONVERTERS[family](src.meta_state(), source=str(path))
    return Recipe(
        name=f"{report.converter}-import", target=target if target is not None else default,
        sources={"source": family}, stages=(Stage("source", tuple(sorted(state))),),
        initialise=dict(report.initialised),
    )
