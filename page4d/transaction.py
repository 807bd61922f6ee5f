"""Output folders as transactions: claimed at the start, written aside, swapped in whole, never over an input.

A run that writes the folder ``OUT``

1. refuses an ``OUT`` that is, contains or lies inside one of its inputs (:func:`check_disjoint`), so not even
   ``--overwrite`` can delete an input;
2. claims ``OUT`` with an exclusive ``flock`` on the sibling file ``.OUT.lock`` (:class:`OutputLock`); the kernel
   releases it however the process ends, so a second run into the same ``OUT`` fails at once and a killed run
   never blocks the next;
3. removes what dead runs into ``OUT`` left behind (:func:`clean_stale`; temporary names carry the owner's PID),
   first putting back an old result that a kill left aside;
4. writes into the temporary sibling ``.OUT.page4d-new.PID.XXXXXXXX``;
5. swaps it in (:func:`swap_into_place`): one ``renameat2(RENAME_EXCHANGE)`` where the system has it (Linux), else
   the old result is moved aside and the new one moved in with SIGINT / SIGTERM held back between the two
   renames; the old result is deleted last. At every instant ``OUT`` is the whole old or the whole new result.

On failure (an exception, Ctrl-C, SIGTERM) the temporary folder is removed and ``OUT`` is left as it was.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from page4d.interrupts import deferred_signals

TEMPORARY = re.compile(r"\.(?P<name>.+)\.page4d-(?P<kind>new|old)\.(?P<pid>\d+)\.[0-9a-f]+")
"""Temporary siblings of an output: ``.OUT.page4d-new.PID.HEX`` (being written) and ``.page4d-old.`` (set aside)."""

_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full disk sets no errno
_NO_SPACE = ("No space left on device", "os error 28", "Disk quota exceeded")
"""How a full disk reads in errors that carry no errno (safetensors' Rust writer, among others)."""
MIN_FREE = 2**20
"""Below this many free bytes a failed write is put down to the full disk, whatever the error says (torch.save's
C++ writer reports one only as "iostream error")."""


def sibling_stem(out: Path) -> str:
    """The part of ``out``'s name its hidden siblings carry: the name, shortened with a hash when the sibling names
    would pass the usual 255-byte limit on a file name."""
    name = out.name
    if len(os.fsencode(name)) <= 200:
        return name
    return name[:100] + "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it: by resolved path, or by identity (device and inode) of
    ``outer`` and an existing ancestor of ``inner``, which also sees through bind mounts."""
    inner, outer = inner.resolve(), outer.resolve()
    if inner.is_relative_to(outer):
        return True
    try:
        target = os.stat(outer)
        return any(os.path.samestat(os.stat(p), target) for p in (inner, *inner.parents) if p.exists())
    except OSError:
        return False


def check_disjoint(out: Path, inputs: Iterable[Path], allowed: Iterable[Path] = (), option: str = "-o") -> None:
    """Raise ``ValueError`` if ``out`` is, contains, or lies inside one of ``inputs`` (symlinks, ``..`` and bind
    mounts do not hide an overlap). ``allowed``: output locations accepted inside an input (never equal to or
    containing one), such as the report folder ``PREDICTIONS/eval`` of ``page4d eval``."""
    allowed = list(allowed)
    for given in inputs:
        source = Path(given)
        inside, contains = _within(out, source), _within(source, out)
        if inside and contains:
            problem = "is"
        elif contains:
            problem = "contains"
        elif inside and not any(_within(out, a) and _within(a, out) for a in allowed):
            problem = "is inside"
        else:
            continue
        raise ValueError(f"{option} {out} {problem} the input {given}; page4d never writes into, over or above its "
                         f"inputs (not even with --overwrite): choose an {option} outside it")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class OutputLock:
    """An exclusive claim on the output path ``out`` (the ``flock`` of ``.OUT.lock``, holding the owner's PID).

    ``acquire`` creates missing parent folders and fails at once with ``ValueError`` if another live process holds
    the claim; ``release`` removes the file, and the parents it created if nothing was put in them."""

    def __init__(self, out: Path, option: str = "-o"):
        self.out, self.option = out, option
        self.path = out.parent / f".{sibling_stem(out)}.lock"
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> None:
        self._created = [p for p in (self.out.parent, *self.out.parent.parents) if not p.exists()]
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as err:
            self._remove_parents()
            if is_disk_full(err, self.out.parent):
                raise disk_full_error(self.out.parent, str(self.path), err, self.option) from None
            raise ValueError(f"{self.option} {self.out}: cannot create or write in {self.out.parent} "
                             f"({err.strerror or err}); choose an {self.option} in a folder you can write to") from None
        except BaseException:
            self._remove_parents()
            raise

    def _lock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ValueError(f"{self.option} {self.out} is being written by another page4d run (PID {owner}); "
                                 f"wait for it to finish or choose another {self.option}") from None
            # The previous owner unlinks the file as it releases it: a lock taken on that old file claims nothing.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        with deferred_signals():
            self.path.unlink(missing_ok=True)  # while still holding it: see acquire
            os.close(self._fd)
            self._fd = None
        self._remove_parents()

    def _remove_parents(self) -> None:
        for folder in self._created:  # innermost first; the first that holds anything (the output) stops it
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def temporary_sibling(out: Path, kind: str) -> Path:
    """A new name next to ``out`` for a folder being written (``new``) or set aside (``old``), owned by this PID."""
    return out.parent / f".{sibling_stem(out)}.page4d-{kind}.{os.getpid()}.{secrets.token_hex(4)}"


def _remove(path: Path) -> None:
    with deferred_signals():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def clean_stale(out: Path) -> list[str]:
    """Remove the temporaries of dead runs into ``out`` (call while holding its :class:`OutputLock`); an old result
    that a kill left aside with ``out`` missing is put back first. Returns notes saying what was done."""
    stale = []
    for entry in out.parent.iterdir():
        match = TEMPORARY.fullmatch(entry.name)
        owner = int(match["pid"]) if match else 0
        if match and match["name"] == sibling_stem(out) and owner != os.getpid() and not _alive(owner):
            stale.append((match["kind"] != "old", entry.name, match["kind"], owner))
    notes = []
    for _, name, kind, pid in sorted(stale):  # set-aside old results first
        entry = out.parent / name
        if kind == "old" and not out.exists():
            os.rename(entry, out)
            notes.append(f"restored {out} from {name}, set aside by a run (PID {pid}) killed while replacing it")
            continue
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()) if entry.is_dir() else 0
        _remove(entry)
        notes.append(f"removed {name} ({size / 2**20:.0f} MB) left in {out.parent} by a killed run (PID {pid})")
    return notes


_libc: ctypes.CDLL | None | bool = False


def _exchange(new: Path, out: Path) -> bool:
    """Swap ``new`` and ``out`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    global _libc
    if _libc is False:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        except (OSError, AttributeError):
            _libc = None
    if _libc is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _libc.renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(out), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(out))


def normalise_permissions(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes the umask gives new files (some writers, like ``mkstemp``,
    make them private), so every output file of a run has the same mode."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def swap_into_place(new: Path, out: Path) -> None:
    """Replace ``out`` (absent, or a folder) by the folder ``new`` so that ``out`` is always whole; the old result
    is deleted afterwards."""
    with deferred_signals():
        if not out.exists():
            os.rename(new, out)
            return
        if _exchange(new, out):
            old = new
        else:
            old = temporary_sibling(out, "old")
            os.rename(out, old)
            try:
                os.rename(new, out)
            except BaseException:
                os.rename(old, out)
                raise
    _remove(old)


def is_disk_full(err: BaseException | None, folder: Path) -> bool:
    """Whether ``err``, raised while writing into ``folder``, comes from a full disk (or quota)."""
    if not isinstance(err, Exception) or isinstance(err, ValueError):  # ValueErrors are page4d's own messages
        return False
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    if _SHORT_WRITE.search(text) or any(marker in text for marker in _NO_SPACE):
        return True
    try:
        return shutil.disk_usage(folder).free < MIN_FREE
    except OSError:
        return False


def disk_full_error(folder: Path, writing: str, err: BaseException, option: str = "-o") -> ValueError:
    """The one-line error for a full disk: which disk, which file, how much is free, what to do."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 2**20
    reason = " ".join(str(err).split()) or type(err).__name__
    return ValueError(f"no space left on the disk of {folder} while writing {writing} ({free:.0f} MB free; "
                      f"{reason}); free some space or choose an {option} on another disk")


class OutputFolder:
    """``with OutputFolder(out, overwrite=..., inputs=...) as output:`` write into ``output.path``; on a normal exit
    it becomes ``out`` (module docstring), on an exception it is removed and ``out`` is left as it was.

    Raises ``ValueError`` at entry for an ``out`` that overlaps an input, is a file, is non-empty without
    ``overwrite`` or is being written by another run. ``notes`` says what stale temporaries were cleaned."""

    def __init__(self, out: str | Path, *, overwrite: bool = False, inputs: Iterable[Path] = (),
                 allowed: Iterable[Path] = (), option: str = "-o"):
        self.out, self.overwrite, self.option = Path(out), overwrite, option
        check_disjoint(self.out, inputs, allowed, option)
        self.out = self.out.resolve()  # a symlinked -o is replaced at its target
        self.lock = OutputLock(self.out, option)
        self.notes: list[str] = []
        self.path = self.out

    def _check_target(self) -> None:
        out, option = self.out, self.option
        if out.exists() and not out.is_dir():
            raise ValueError(f"{option} {out} exists and is not a folder; choose another {option}")
        if out.is_dir() and any(out.iterdir()) and not self.overwrite:
            raise ValueError(f"{option} {out} exists and is not empty; pass --overwrite to replace it or choose "
                             f"another {option}")
        if os.path.ismount(out):
            raise ValueError(f"{option} {out} is a mount point, which cannot be replaced whole (page4d swaps the new "
                             f"result in by renaming); choose a folder inside it")

    def __enter__(self) -> OutputFolder:
        self._check_target()
        self.lock.acquire()
        try:
            self.notes = clean_stale(self.out)
            self._check_target()  # again, now that no other run can change it
            self.path = temporary_sibling(self.out, "new")
            self.path.mkdir()
        except BaseException as err:
            self._fail(err)
            raise
        return self

    def _abandon(self) -> None:
        if self.path != self.out:
            _remove(self.path)
        self.lock.release()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, _tb: TracebackType | None) -> None:
        if kind is None:
            try:
                normalise_permissions(self.path)
                swap_into_place(self.path, self.out)
            except BaseException as failure:
                self._fail(failure)
                raise
            self.lock.release()
            return
        self._fail(err)

    def _fail(self, err: BaseException | None) -> None:
        """Remove what this run wrote; a full disk becomes a ``ValueError`` naming the disk and the file."""
        full = self.out.parent.is_dir() and is_disk_full(err, self.out.parent)
        if full:
            files = [f for f in self.path.rglob("*") if f.is_file()] if self.path.is_dir() else []
            newest = max(files, key=lambda f: f.stat().st_mtime_ns, default=None)
            writing = f"{self.out}/{newest.relative_to(self.path)}" if newest else str(self.out)
            error = disk_full_error(self.out.parent, writing, err, self.option)
        self._abandon()
        if full:
            raise error from None
