"""Output folders never harm the user's data: no overlap with inputs, atomic replacement, one run per output,
SIGTERM and Ctrl-C clean up, stale temporaries of killed runs are removed (``page4d.transaction``)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE, FIXTURES, REPO, needs_shared

import page4d.transaction as transaction
from page4d.checkpoints import vggt
from page4d.cli.main import build_parser, main
from page4d.model import Page4D
from page4d.presets import preset
from page4d.transaction import OutputFolder, OutputLock, clean_stale, swap_into_place

FAST = ["--size", "56", "--export", "none", "--quiet"]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """``tmp_path/data/clip`` (a copy of the bundled example) with an unrelated file beside it."""
    shutil.copytree(EXAMPLE, tmp_path / "data" / "clip")
    (tmp_path / "data" / "notes.txt").write_text("the user's own file")
    return tmp_path


# --- 1. -o equal to, containing or inside an input ------------------------------------------------------------

@pytest.mark.parametrize(("where", "problem"), [("data/clip", "is the input"), ("data", "contains the input"),
                                                 (".", "contains the input"), ("data/clip/images", "is inside"),
                                                 ("data/clip/images/time_08", "is inside")])
def test_reconstruct_never_overwrites_its_input(workspace, capsys, where, problem):
    before = tree(workspace)
    out = workspace / where
    assert main(["reconstruct", str(workspace / "data" / "clip"), "-o", str(out), "--overwrite", *FAST]) == 2
    one_line_error(capsys, problem, "never writes into, over or above its inputs")
    assert tree(workspace) == before


def test_overlap_is_found_through_symlinks_and_dot_dots(workspace, capsys):
    before = tree(workspace)
    (workspace / "link").symlink_to(workspace / "data" / "clip")
    clip = workspace / "data" / "clip"
    for out in (workspace / "link", workspace / "data" / "clip" / ".." / "clip"):
        assert main(["reconstruct", str(clip), "-o", str(out), "--overwrite", *FAST]) == 2
        one_line_error(capsys, "is the input")
    assert tree(workspace / "data") == {k[len("data/"):]: v for k, v in before.items()}


def test_masks_and_model_folders_are_inputs_too(workspace, capsys):
    clip = workspace / "data" / "clip"
    model = workspace / "model"
    Page4D(preset("tiny-mv")).save_pretrained(model)
    before = tree(workspace)
    runs = [["--masks", str(clip / "masks"), "-o", str(clip / "masks")], ["--model", str(model), "-o", str(model)],
            ["--model", str(model / "model.safetensors"), "-o", str(model)]]
    for extra in runs:
        assert main(["reconstruct", str(clip), *extra, "--overwrite", *FAST]) == 2
        one_line_error(capsys, "never writes into")
    assert tree(workspace) == before


def test_eval_never_replaces_the_reconstruction_it_scores(tmp_path, capsys):
    pred = tmp_path / "pred"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(pred), "--model", "tiny", *FAST]) == 0
    before = tree(pred)
    for out in (pred, tmp_path, pred / "points"):
        assert main(["eval", str(EXAMPLE), str(pred), "-o", str(out), "--overwrite"]) == 2
        one_line_error(capsys, "never writes into")
    assert tree(pred) == before
    assert main(["eval", str(EXAMPLE), str(pred)]) == 0  # the default report folder PRED/eval is allowed
    assert (pred / "eval" / "metrics.json").is_file()


@needs_shared
def test_convert_never_replaces_its_source(tmp_path, capsys):
    source = tmp_path / "ckpts" / "model.safetensors"
    source.parent.mkdir()
    shutil.copy(FIXTURES / "vggt_conv_tiny" / "model.safetensors", source)
    before = tree(tmp_path)
    for out in (source.parent, tmp_path, source):
        assert main(["convert", str(source), "-o", str(out), "--overwrite", "--quiet"]) == 2
        one_line_error(capsys, "never writes into")
    assert tree(tmp_path) == before


def test_train_never_replaces_its_config_or_data(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 1\n")
    before = tree(tmp_path)
    assert main(["train", str(config), "-o", str(tmp_path), "--overwrite", "--quiet"]) == 2
    one_line_error(capsys, "contains the input")
    assert main(["train", "steps=1", f"data=[{{kind: clip, path: {EXAMPLE}}}]", "-o", str(EXAMPLE / "run")]) == 2
    one_line_error(capsys, "is inside the input")
    assert tree(tmp_path) == before


# --- 2. --overwrite is atomic: kill the process at every step of the replacement ---------------------------------

OLD = {"predictions.npz": b"old predictions", "meta.json": b"{}", "points/time_00.ply": b"old points"}
NEW = {"predictions.npz": b"new predictions", "cameras.json": b"[]", "panels/time_00.png": b"new panel",
       "panels/time_01.png": b"new panel 2"}


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


FILE_OPERATIONS = ("rename", "replace", "unlink", "rmdir", "mkdir", "chmod")


def replace_and_die_at(out: Path, kill_at: int | None, exchange: bool) -> int:
    """In a forked child: replace ``out`` by NEW through ``OutputFolder``, SIGKILLing itself just before file
    operation number ``kill_at`` (None: never). Returns the number of operations the child reached."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count file operations, die at the chosen one
        os.close(read)
        count = [0]

        def counted(name: str, owner: object):
            original = getattr(owner, name)

            def operation(*args, **kwargs):
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                count[0] += 1
                os.write(write, b".")  # tells the parent how far the child got
                return original(*args, **kwargs)

            return operation

        for name in FILE_OPERATIONS:
            setattr(os, name, counted(name, os))
        if exchange:
            transaction._exchange = counted("_exchange", transaction)
        else:
            transaction._exchange = lambda new, out: False
        try:
            with OutputFolder(out, overwrite=True) as output:
                write_files(output.path, NEW)
        finally:
            os._exit(0)
    os.close(write)
    reached = 0
    while chunk := os.read(read, 4096):
        reached += len(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return reached


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_kill_at_any_point_of_overwrite_leaves_the_whole_old_or_the_whole_new_result(tmp_path, exchange):
    out = tmp_path / "out"
    write_files(out, OLD)
    total = replace_and_die_at(out, None, exchange)
    assert contents(out) == NEW and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert total > 8  # mkdirs, chmods, the swap and the deletion of the old result
    seen = set()
    for kill_at in range(total):
        shutil.rmtree(out)
        for leftover in tmp_path.iterdir():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        write_files(out, OLD)
        replace_and_die_at(out, kill_at, exchange)
        if exchange:  # one renameat2 swaps the folders: out is whole at every instant
            assert contents(out) in (OLD, NEW), f"killed before operation {kill_at}"
        # With two renames a kill between them leaves the old result set aside, which the next claim puts back.
        with OutputLock(out):
            clean_stale(out)
        state = contents(out)
        assert state in (OLD, NEW), f"killed before operation {kill_at}: {sorted(state)}"
        seen.add("old" if state == OLD else "new")
        assert [p.name for p in tmp_path.iterdir()] == ["out"], f"killed before operation {kill_at}"
    assert seen == {"old", "new"}


def test_swap_replaces_an_existing_folder_and_removes_the_old_one(tmp_path):
    out, new = tmp_path / "out", tmp_path / "new"
    write_files(out, OLD)
    write_files(new, NEW)
    swap_into_place(new, out)
    assert contents(out) == NEW and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- 3. concurrent runs into one -o ------------------------------------------------------------------------------

def page4d(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "page4d.cli.main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def blocked_run(tmp_path: Path, out: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A real ``page4d reconstruct`` whose one camera is a ``.txt`` list on a named pipe: it claims ``out``, then
    blocks reading the list until :func:`unblock` writes it. Returns once the claim is visible on disk."""
    fifo = tmp_path / "camera.txt"
    os.mkfifo(fifo)
    proc = page4d("reconstruct", fifo, "-o", out, *FAST, *extra)
    lock = out.parent / f".{out.name}.lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and any(".page4d-new." in p.name for p in out.parent.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never claimed its output"
        time.sleep(0.05)
    return proc, fifo


def unblock(fifo: Path) -> None:
    frames = sorted((EXAMPLE / "images").glob("time_*/view0.png"))
    with open(fifo, "w") as pipe:
        pipe.write("\n".join(str(p) for p in frames) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_second_run_into_the_same_output_fails_fast(tmp_path, overwrite):
    out = tmp_path / "out"
    flags = ["--overwrite"] if overwrite else []
    first, fifo = blocked_run(tmp_path, out, *flags)
    try:
        second = subprocess.run([sys.executable, "-m", "page4d.cli.main", "reconstruct", str(EXAMPLE), "-o", str(out),
                                 *FAST, *flags], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert second.returncode == 2
        assert f"is being written by another page4d run (PID {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        unblock(fifo)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        first.kill()
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "meta.json", "predictions.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.txt", "out"]  # lock and temporaries gone


# --- 4 and 5. SIGTERM and Ctrl-C clean up; temporaries of killed runs are removed ---------------------------------

@pytest.mark.parametrize(("signum", "code", "message"), [(signal.SIGTERM, 143, "terminated"),
                                                         (signal.SIGINT, 130, "interrupted")])
def test_signals_clean_up_and_exit_with_the_signal_code(tmp_path, signum, code, message):
    out = tmp_path / "out"
    write_files(out, OLD)
    proc, _ = blocked_run(tmp_path, out, "--overwrite")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.strip().splitlines()[-1].startswith(f"page4d reconstruct: {message}") and "Traceback" not in err
    assert contents(out) == OLD  # the old result untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.txt", "out"]


@pytest.mark.slow
def test_the_next_run_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "out"
    proc, _ = blocked_run(tmp_path, out)
    proc.kill()  # SIGKILL: no cleanup is possible
    proc.communicate(timeout=60)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert any(".page4d-new." in name for name in left)
    result = subprocess.run([sys.executable, "-m", "page4d.cli.main", "reconstruct", str(EXAMPLE), "-o", str(out),
                             "--size", "56", "--export", "none"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"left in {tmp_path} by a killed run (PID {proc.pid})" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.txt", "out"]


def test_temporaries_of_live_runs_are_kept(tmp_path):
    out = tmp_path / "out"
    live = tmp_path / f".out.page4d-new.{os.getppid()}.abcd"  # the parent of this process is alive
    live.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.page4d-new.{dead.pid}.abcd"
    write_files(stale, NEW)
    notes = clean_stale(out)
    assert live.is_dir() and not stale.exists() and len(notes) == 1 and str(dead.pid) in notes[0]


@pytest.mark.parametrize("command", [pytest.param("convert", marks=needs_shared), "view"])
def test_ctrl_c_in_other_commands_prints_one_line(tmp_path, capsys, monkeypatch, command):
    import page4d.cli.convert
    import page4d.cli.view

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if command == "convert":
        monkeypatch.setattr(page4d.cli.convert, "compose", interrupted)
        args = ["convert", str(FIXTURES / "vggt_conv_tiny" / "model.safetensors"), "-o", str(tmp_path / "out")]
    else:
        monkeypatch.setattr(page4d.cli.view, "load_input", interrupted)
        args = ["view", str(EXAMPLE)]
    assert main(args) == 130
    assert capsys.readouterr().err == f"page4d {command}: interrupted\n"
    assert list(tmp_path.iterdir()) == []


# --- disk full, permissions, train's folder, the stated guarantees -------------------------------------------------

@pytest.mark.parametrize("failure", [OSError("254016 requested and 155648 written"),
                                     OSError(errno.ENOSPC, "No space left on device")])
def test_a_full_disk_is_named_and_leaves_nothing(tmp_path, capsys, monkeypatch, failure):
    import page4d.reconstruction.record as record

    def full(path, arrays):
        path.write_bytes(b"partial")
        raise failure

    monkeypatch.setattr(record, "write_npz", full)
    out = tmp_path / "results" / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), *FAST]) == 2
    one_line_error(capsys, f"no space left on the disk of {tmp_path / 'results'} while writing "
                   f"{out / 'predictions.npz'}", "free some space")
    assert list(tmp_path.iterdir()) == []  # not even the parent folder it created


@needs_shared
def test_every_output_file_gets_the_umask_mode(tmp_path):
    source = FIXTURES / "vggt_conv_tiny"
    target = tmp_path / "target.json"
    target.write_text(json.dumps(vggt.model_config_from_reference(json.loads((source / "config.json").read_text()))
                                 .to_dict()))
    umask = os.umask(0o022)
    try:
        assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "r"), "--size", "56", "--quiet",
                     "--export", "ply,png"]) == 0
        assert main(["convert", str(source / "model.safetensors"), "--target", str(target), "-o", str(tmp_path / "c"),
                     "--quiet"]) == 0
        assert main(["train", "steps=1", "model=tiny", "scene.num_times=2", "scene.num_views=2", "scene.height=56",
                     "scene.width=56", "-o", str(tmp_path / "t"), "--quiet"]) == 0
    finally:
        os.umask(umask)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert "c/model.safetensors" in modes and "t/model/model.safetensors" in modes
    assert {name: mode for name, mode in modes.items() if mode != (0o755 if Path(tmp_path, name).is_dir() else 0o644)} \
        == {}


TRAIN = ["steps=1", "model=tiny", "scene.num_times=2", "scene.num_views=2", "scene.height=56", "scene.width=56"]


def test_train_refuses_a_used_folder_and_overwrite_starts_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "old.txt").write_text("the old run")
    assert main(["train", *TRAIN, "-o", str(run), "--quiet"]) == 2
    one_line_error(capsys, "--resume to continue", "--overwrite to start over")
    assert main(["train", *TRAIN, "batch_size=0", "-o", str(run), "--overwrite", "--quiet"]) == 2
    one_line_error(capsys, "batch_size")
    assert (run / "old.txt").read_text() == "the old run"  # a bad config leaves the old run as it was
    assert main(["train", *TRAIN, "-o", str(run), "--overwrite", "--quiet"]) == 0
    assert not (run / "old.txt").exists() and (run / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert main(["train", *TRAIN, "-o", str(run), "--overwrite", "--resume", "--quiet"]) == 2
    one_line_error(capsys, "give one of them")


def test_a_bad_train_config_leaves_no_run_folder(tmp_path, capsys):
    for bad in ("batch_size=0", "steps=-5"):
        assert main(["train", *TRAIN, bad, "-o", str(tmp_path / "new" / "run"), "--quiet"]) == 2
        one_line_error(capsys, bad.split("=")[0])
    assert list(tmp_path.iterdir()) == []


def test_help_states_the_guarantees():
    text = build_parser().format_help()
    for promise in ("never writes into, over or above its inputs", "whole old or the whole new result",
                    "a second run into the same -o is refused", "exit 130 / 143", "exit code 2, nothing written"):
        assert promise in " ".join(text.split()), promise


def test_python_api_outputs_are_transactions_too(tmp_path):
    out = tmp_path / "out"
    write_files(out, OLD)
    with pytest.raises(RuntimeError), OutputFolder(out, overwrite=True) as output:
        write_files(output.path, NEW)
        raise RuntimeError("the writer failed")
    assert contents(out) == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(ValueError, match="not empty; pass --overwrite"), OutputFolder(out):
        pass


def test_signals_inside_a_critical_section_wait_for_its_end():
    from page4d.interrupts import Terminated, deferred_signals, sigterm_raises

    finished = []
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a handler would run here if the signal were not held back
        finished.append("swap")
    assert finished == ["swap"]
    # nested blocks: the outer one delivers
    with pytest.raises(Terminated), sigterm_raises(), deferred_signals(), deferred_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        finished.append("nested")
    assert finished == ["swap", "nested"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- what a hostile user found: startup signals, bind mounts, long names, odd targets, other full-disk errors -----

@pytest.mark.parametrize(("signum", "code", "message"), [(signal.SIGINT, 130, "interrupted"),
                                                         (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_torch_loads_is_one_line_too(tmp_path, signum, code, message):
    proc = page4d("reconstruct", EXAMPLE, "-o", tmp_path / "out", *FAST)
    time.sleep(0.5)  # python is up, torch (seconds to import) is not
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert err == f"page4d reconstruct: {message}" + (" (SIGTERM)\n" if code == 143 else "\n")
    assert list(tmp_path.iterdir()) == []


def test_an_overlap_hidden_from_paths_is_found_by_identity(workspace, capsys, monkeypatch):
    """A bind mount of the clip shows it under another path; resolving paths cannot see that, the identity of the
    folders (device, inode) can. A symlink with path resolution switched off stands in for the mount."""
    clip = workspace / "data" / "clip"
    (workspace / "mounted").symlink_to(clip)
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: self.absolute())
    before = tree(clip)
    for out in (workspace / "mounted", workspace / "mounted" / "out"):
        assert main(["reconstruct", str(clip), "-o", str(out), "--overwrite", *FAST]) == 2
        one_line_error(capsys, "never writes into")
    assert tree(clip) == before


def test_a_long_output_name_works(tmp_path):
    out = tmp_path / ("r" * 250)
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), *FAST]) == 0
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--overwrite", *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "meta.json", "predictions.npz"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_outputs_that_cannot_be_made_say_why(tmp_path, capsys):
    (tmp_path / "afile").write_text("a file")
    assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "afile" / "sub"), *FAST]) == 2
    one_line_error(capsys, f"cannot create or write in {tmp_path / 'afile'}", "choose an -o in a folder")
    assert main(["reconstruct", str(EXAMPLE), "-o", "/proc", "--overwrite", *FAST]) == 2
    one_line_error(capsys, "/proc is a mount point, which cannot be replaced whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@needs_shared
def test_full_disks_reported_without_an_errno_are_recognised(tmp_path, capsys, monkeypatch):
    source = FIXTURES / "vggt_conv_tiny"
    target = tmp_path / "target.json"
    target.write_text(json.dumps(vggt.model_config_from_reference(json.loads((source / "config.json").read_text()))
                                 .to_dict()))

    def rust_writer(self, folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                           "left on device\" })")

    monkeypatch.setattr(Page4D, "save_pretrained", rust_writer)
    out = tmp_path / "converted"
    args = ["convert", str(source / "model.safetensors"), "--target", str(target), "-o", str(out), "--quiet"]
    assert main(args) == 2
    one_line_error(capsys, f"no space left on the disk of {tmp_path} while writing {out / 'model.safetensors'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.json"]


def test_a_full_disk_during_training_names_the_checkpoint_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import page4d.train.trainer as trainer
    import page4d.transaction

    def full_disk_save(state, path):
        Path(path).write_bytes(b"partial")
        monkeypatch.setattr(page4d.transaction.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, 0))
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0; basic_ios::clear: "
                           "iostream error")

    monkeypatch.setattr(trainer.torch, "save", full_disk_save)
    run = tmp_path / "run"
    assert main(["train", *TRAIN, "-o", str(run), "--quiet"]) == 2
    one_line_error(capsys, f"no space left on the disk of {run} while writing {run / 'checkpoint.pt'}")
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.pt").exists()


def test_a_lock_that_cannot_be_written_leaves_nothing(tmp_path, capsys, monkeypatch):
    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "new" / "out"), *FAST]) == 2
    one_line_error(capsys, "no space left on the disk of", f"while writing {tmp_path / 'new' / '.out.lock'}")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_on_an_almost_full_disk_is_still_reported_as_bad_input(tmp_path, capsys, monkeypatch):
    import page4d.transaction

    monkeypatch.setattr(page4d.transaction.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, 0))
    assert main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "out"), "--export-time", "3", *FAST]) == 2
    err = one_line_error(capsys, "--export-time 3 is not a time id of the input")
    assert "no space" not in err and list(tmp_path.iterdir()) == []


PROBE = """\
import ctypes, signal, sys
class Action(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]
def installed():
    action = Action()
    ctypes.CDLL(None).sigaction(signal.SIGTERM, None, ctypes.byref(action))
    return action.handler
signal.signal(signal.SIGTERM, lambda *_: None)
python = installed()
import {module}
print(int(installed() == python))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the handler through glibc's sigaction")
@pytest.mark.parametrize("module", ["pycolmap", "page4d.refine.pipeline", "page4d.export.colmap"])
def test_loading_pycolmap_leaves_python_in_charge_of_sigterm(module):
    """pycolmap installs glog's SIGTERM handler (a C++ stack dump and exit, skipping every cleanup) when it loads;
    page4d's modules that load it put Python's handler back, so a stopped --refine ba run still cleans up."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-1] == ("0" if module == "pycolmap" else "1")  # the bare import is what page4d works around
