"""Shared test helpers: where ``../shared`` and the example clip live, the prerequisite marks, how fixture
outputs are compared, and ``--fail-on-skip``."""

from __future__ import annotations

import copy
import functools
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import load_file

if TYPE_CHECKING:
    from page4d.reconstruction.record import Reconstruction

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
EXAMPLE = REPO / "examples" / "tabletop4v_mini"
"""The bundled example clip the README runs."""
CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium, which the headless viewer and demo tests drive through Playwright."""
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
"""Headless, offline, WebGL in software (SwiftShader): no GPU and no network on CI."""

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"prerequisite missing: {SHARED} (fixtures and data, checked out beside the repository)"
)
"""For a test that reads ``../shared``: without it the test skips naming the folder (``--fail-on-skip``: fails)."""
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"prerequisite missing: {CHROMIUM} (headless browser for the viewer test: apt-get install chromium)",
)
"""For a test that drives a real browser: without Chromium it skips naming it (``--fail-on-skip``: fails)."""


@functools.cache
def _example_truth(size: int) -> Reconstruction:
    from page4d.data.layout import load_clip
    from page4d.reconstruction.ground_truth import reconstruction_from_clip

    return reconstruction_from_clip(load_clip(EXAMPLE), size=size)


def example_truth(size: int = 518) -> Reconstruction:
    """The ground-truth reconstruction of :data:`EXAMPLE` at model width ``size``: built once per size, handed
    out as a fresh deep copy each call, so a test may change it freely."""
    return copy.deepcopy(_example_truth(size))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip", action="store_true", default=False,
        help="a skipped test counts as a failure: a missing prerequisite must not pass as green",
    )


def _skip_reason(longrepr) -> str:
    """The reason of a skipped report (its longrepr is ``(path, line, "Skipped: reason")``)."""
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")


def _fail_skipped(report: pytest.CollectReport | pytest.TestReport, config: pytest.Config) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and config.getoption("--fail-on-skip"):
        report.outcome = "failed"
        report.longrepr = (f"skipped: {_skip_reason(report.longrepr)}\n"
                           "--fail-on-skip makes a skipped test a failure (a missing prerequisite must not pass as "
                           "green)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """``--fail-on-skip``: a skipped test (not an xfail, whose report is a skip too) is reported as failed."""
    outcome = yield
    _fail_skipped(outcome.get_result(), item.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """``--fail-on-skip``: a module that skips as a whole (``pytest.skip(allow_module_level=True)``,
    ``pytest.importorskip``) is a collection error."""
    outcome = yield
    _fail_skipped(outcome.get_result(), collector.config)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server or a process group a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The fixtures' metric: ``max|ours - ref| / max(1, max|ref|)``."""
    ours, ref = ours.detach().double(), ref.double()
    if ours.shape != ref.shape:
        raise AssertionError(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    return float((ours - ref).abs().max() / max(1.0, float(ref.abs().max())))


def load_fixture(name: str) -> dict:
    """``{'config', 'model', 'inputs', 'outputs', 'tolerance'}`` of a fixture folder (by name or path)."""
    folder = Path(name) if Path(name).is_absolute() else FIXTURES / name
    config = json.loads((folder / "config.json").read_text())
    return {
        "config": config,
        "model": load_file(folder / "model.safetensors"),
        "inputs": load_file(folder / "inputs.safetensors"),
        "outputs": load_file(folder / "outputs.safetensors"),
        "tolerance": config.get("tolerance"),
    }


def tolerance(fixture: dict, key: str) -> float:
    """The fixture's threshold for ``key``: per tensor (VGGT fixtures) or one ``abs_scaled`` bound (PAGE-4D)."""
    tol = fixture["tolerance"]
    if "per_tensor" in tol:
        return tol["per_tensor"].get(key, tol["default"])
    return float(tol["abs_scaled"])


def fixture_kind(config: dict) -> str:
    """``vggt``, ``page4d`` (has a ``variant`` field) or ``pi3`` (its own schema), from a fixture's config.json."""
    if "variant" in config:
        return "page4d"
    if "decoder" in config and "Pi3" in config.get("reference", ""):
        return "pi3"
    if "aggregator" in config and "patch_embed" in config:
        return "vggt"
    return "unknown"


PI3_THRESHOLD = 1e-6
"""Pi3 fixtures state no tolerance; this bound (the fixtures' metric) is justified in test_pi3.py: float32
noise is ~2e-7, plausible eps mistakes give 2.6e-6 and more."""

PI3_HEAD_OUTPUTS = {
    "points", "local_points", "conf", "camera_poses",
    "inter.point_decoder_out", "inter.conf_decoder_out", "inter.camera_decoder_out",
}
"""Outputs of Pi3's own heads: page4d has no counterpart (the converter reports those weights unused)."""


def pi3_intermediates(model, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our counterpart of each Pi3 backbone intermediate, for ``imgs`` ``[B, N, 3, H, W]`` as T = 1, V = N."""
    from page4d.aggregator.tokens import frame_positions

    grid = imgs.unsqueeze(1)
    depth, width = model.config.aggregator.depth, model.config.aggregator.embed_dim
    with torch.no_grad():
        out = {"inter.encoder_patch_tokens": model.aggregator.encode(grid).flatten(0, 2)}
        entries = model.aggregator(grid, range(depth)).pose_entries
    for k, entry in entries.items():
        out[f"inter.decoder_block_{2 * k:02d}"] = entry[:, 0, ..., :width]
        out[f"inter.decoder_block_{2 * k + 1:02d}"] = entry[:, 0, ..., width:]
    out["inter.decoder_out"] = entries[depth - 1].flatten(0, 2)
    h, w = imgs.shape[-2] // model.config.patch_size, imgs.shape[-1] // model.config.patch_size
    positions = frame_positions(h, w, model.aggregator.patch_start_idx)
    out["inter.pos"] = positions.expand(imgs.shape[0] * imgs.shape[1], -1, -1)
    return out


def perturbed(config, seed: int = 0, scale: float = 0.05, skip: str | None = None):
    """A ``Page4D`` of ``config`` in eval mode, every parameter (except names containing ``skip``) moved off
    its initial value by N(0, scale²) noise, so that no mechanism is tested on trivial weights."""
    from page4d.model import Page4D

    torch.manual_seed(seed)
    model = Page4D(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if skip is None or skip not in name:
                p.add_(torch.randn_like(p) * scale)
    return model


def twin(model, **aggregator_changes):
    """The same weights in a model whose aggregator config differs by ``aggregator_changes``: the twin's
    keys must all come from ``model``; keys only ``model`` has (the mechanism switched off) are dropped."""
    import dataclasses

    from page4d.model import Page4D

    cfg = dataclasses.replace(model.config)
    cfg.aggregator = dataclasses.replace(cfg.aggregator, **aggregator_changes)
    other = Page4D(cfg).eval()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k in other.state_dict()}, strict=True)
    return other


def fused_and_dense(model, *args, **kwargs):
    """The model's predictions on the fused attention path and on the dense reference path (no grad)."""
    from page4d.nn import set_attention_backend

    with torch.no_grad():
        fused = model(*args, **kwargs)
        set_attention_backend(model, "dense")
        try:
            dense = model(*args, **kwargs)
        finally:
            set_attention_backend(model, "fused")
    return fused, dense


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many ops on small tensors (the evaluation tests): on a shared 2-core machine two intra-op threads spend
    more time in OpenMP spin-waits than they save (measured 4-8x slower), so such modules use one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
