"""``torchrun ... -m page4d.cli.main reconstruct``: the command run as 2 or 3 CPU processes (gloo) writes what one
process writes, with either way of sharing the work, and a failing process stops the run without leaving output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from page4d.cli.main import main
from page4d.distributed.processes import Processes
from page4d.reconstruction.scaleout import resolve_shard

pytestmark = [pytest.mark.ddp, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "examples" / "tabletop4v_mini"
TABLETOP = ROOT.parent / "shared" / "data" / "tabletop4v"
FAULT = """\
import torch.distributed as dist

from page4d.cli.main import entry
from page4d.model import Page4D

forward = Page4D.forward


def failing(self, *args, **kwargs):
    if dist.get_rank() == 1:
        raise RuntimeError("injected fault on rank 1")
    return forward(self, *args, **kwargs)


Page4D.forward = failing
entry()
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(processes: int, *command: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                f"--master_port={_port()}"]
    target = list(command) if command[0].endswith(".py") else ["-m", "page4d.cli.main", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *target], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def _same_predictions(one: Path, many: Path) -> None:
    with np.load(one / "predictions.npz") as a, np.load(many / "predictions.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            if a[key].dtype.kind == "f":  # float32 sums in another order (other threads, other splits)
                np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-4, err_msg=key)
            else:
                np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("processes", [2, 3])
def test_grid_sharded_run_writes_what_one_process_writes(processes, tmp_path):
    """3 × 4 frames over 2 processes (steps 2 + 1) or 3 (cameras 2 + 1 + 1 in the time blocks)."""
    assert main(["reconstruct", str(MINI), "-o", str(tmp_path / "one"), "--export", "none", "--quiet"]) == 0
    run = _torchrun(processes, "reconstruct", str(MINI), "-o", str(tmp_path / "many"), "--export", "none",
                    "--shard", "grid")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"processes: {processes}, shard grid; peak memory and time per rank: rank 0 " in run.stdout
    assert f"rank {processes - 1} " in run.stdout.splitlines()[-1]
    _same_predictions(tmp_path / "one", tmp_path / "many")
    assert _files(tmp_path / "one") == _files(tmp_path / "many")
    meta = json.loads((tmp_path / "many" / "meta.json").read_text())
    assert meta["processes"] == {"count": processes, "shard": "grid"}


def test_window_sharded_run_writes_what_one_process_writes(tmp_path):
    """16 steps in windows of 6 (4 windows) over 3 processes: rank 0 runs two, the others one each."""
    args = [str(TABLETOP), "--window", "6", "--overlap", "2", "--export", "ply,png"]
    assert main(["reconstruct", *args, "-o", str(tmp_path / "one"), "--quiet"]) == 0
    run = _torchrun(3, "reconstruct", *args, "-o", str(tmp_path / "many"))  # auto: several windows -> windows
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shard windows" in run.stdout
    assert _files(tmp_path / "one") == _files(tmp_path / "many")  # no window files left behind either
    _same_predictions(tmp_path / "one", tmp_path / "many")
    one, many = (json.loads((tmp_path / name / "cameras.json").read_text()) for name in ("one", "many"))
    assert one.keys() == many.keys()
    meta = json.loads((tmp_path / "many" / "meta.json").read_text())
    assert meta["windows"] == [[0, 6], [4, 10], [8, 14], [10, 16]] and meta["processes"]["shard"] == "windows"


@pytest.mark.parametrize("shard", ["grid", "windows"])
def test_a_failing_process_stops_every_process_and_writes_nothing(shard, tmp_path):
    script = tmp_path / "faulty.py"
    script.write_text(FAULT)
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    args = [str(TABLETOP), "--window", "6"] if shard == "windows" else [str(MINI)]
    run = _torchrun(2, str(script), "reconstruct", *args, "-o", str(out), "--export", "none", "--shard", shard)
    assert run.returncode != 0
    assert "RuntimeError: injected fault on rank 1" in run.stderr
    if shard == "grid":  # rank 0 was waiting for rank 1's tokens
        assert "page4d reconstruct [rank 0 of 2]: error: another process of this run stopped" in run.stderr
    assert list(out.parent.iterdir()) == []  # no output, no temporary sibling


def test_shard_names_are_checked():
    assert resolve_shard("grid", Processes(), 3) is None  # one process: nothing to share
    assert resolve_shard("auto", Processes(rank=0, world=2), 1) == "grid"
    assert resolve_shard("auto", Processes(rank=0, world=2), 4) == "windows"
    with pytest.raises(ValueError, match="shard 'rows': choose one of auto, windows, grid"):
        resolve_shard("rows", Processes(), 1)
