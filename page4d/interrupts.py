"""SIGTERM handled like Ctrl-C, and critical sections that a signal cannot cut in half.

``docker stop``, Slurm and systemd stop a process with SIGTERM, whose default action kills it without running any
``finally`` block, so temporary folders stay behind. :func:`sigterm_raises` turns SIGTERM into a
:class:`Terminated` exception that unwinds like ``KeyboardInterrupt`` (cleanup runs, the caller exits 143).
:func:`deferred_signals` holds SIGINT and SIGTERM back for the few operations that must finish once begun (swapping
an output folder into place, removing a temporary one) and delivers them right after.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived. A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` does not swallow it."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (only the main thread can set handlers; elsewhere the
    block changes nothing)."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then deliver the first that arrived to the handler that
    was in place. Nested blocks defer to the outermost."""
    if not _main_thread() or signal.getsignal(signal.SIGINT) is _record:
        yield
        return
    previous = {signum: signal.signal(signum, _record) for signum in HANDLED}
    _pending.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if _pending:
            signal.raise_signal(_pending.pop(0))
            _pending.clear()


_pending: list[int] = []


def _record(signum: int, _frame: object) -> None:
    _pending.append(signum)


@contextlib.contextmanager
def python_handlers_kept() -> Iterator[None]:
    """Put Python's SIGINT and SIGTERM handlers back after the block. For imports of native libraries that install
    their own at load time: pycolmap's glog takes SIGTERM (it prints a C++ stack trace and exits, skipping every
    ``finally``, so a stopped run would leave its temporary folder)."""
    if not _main_thread():
        yield
        return
    handlers = {signum: signal.getsignal(signum) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            if handler is not None:  # None: a handler not installed from Python; nothing to restore
                signal.signal(signum, handler)
