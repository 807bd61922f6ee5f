"""``page4d`` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

from page4d import __version__
from page4d.interrupts import Terminated, deferred_signals, sigterm_raises

COMMANDS = ("reconstruct", "convert", "eval", "view", "train", "demo")
MODULES = {"eval": "evaluate"}
"""Subcommand -> its module in ``page4d.cli`` (imported inside ``main``, after the signal handling is in place)."""

GUARANTEES = """\
what page4d promises about your files:
  - it never writes into, over or above its inputs: an -o that is, contains or lies inside an input is refused,
    even with --overwrite;
  - an output folder is always whole: a run writes next to it and swaps the result in at the end, so -o holds the
    whole old or the whole new result at every instant, and a failed or stopped run leaves it as it was;
  - one run at a time per output: a second run into the same -o is refused while the first runs;
  - Ctrl-C and SIGTERM (docker stop, Slurm, systemd) clean up and exit 130 / 143 (the servers, view and demo,
    stop on Ctrl-C with 0); temporaries a killed run left behind are removed by the next run into the same place;
  - bad input: one line on stderr saying what is wrong and what to do, exit code 2, nothing written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="page4d", description="Feed-forward 4D reconstruction from synchronized multi-view video.",
        epilog=GUARANTEES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"page4d {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        importlib.import_module(f"page4d.cli.{MODULES.get(command, command)}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The command's name before parsing, so that a Ctrl-C while torch loads is reported like any other; one of
    # several processes (torchrun) says which.
    name = "page4d" + next((f" {a}" for a in argv if a in COMMANDS), "")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        name += f" [rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']}]"

    def show_warning(message: Warning | str, *_: object, **__: object) -> None:
        print(f"{name}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings(), sigterm_raises():
        warnings.showwarning = show_warning  # one line per warning, like the errors
        try:
            with deferred_signals():  # until torch and the rest are imported: a signal mid-import can be swallowed
                parser = build_parser()
            args = parser.parse_args(argv)
            return args.run(args)
        except (ValueError, OSError) as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            return 2
        except Exception as err:
            if not _peer_failed(err):
                raise
            print(f"{name}: error: another process of this run stopped (its own message says why), so this one "
                  "stops too", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        except Terminated:
            print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
            return 143


def _peer_failed(err: Exception) -> bool:
    """Whether ``err`` is a collective that failed because another process of the run went away."""
    ours = sys.modules.get("page4d.distributed.collectives")  # only ever raised once they are loaded
    dist = sys.modules.get("torch.distributed")
    return (ours is not None and isinstance(err, ours.CollectiveError)) or (
        dist is not None and isinstance(err, dist.DistError))


def entry() -> None:
    """The console script: :func:`main`, then exit with its code. Signals are ignored from the moment ``main``
    returns, so one that lands while the interpreter shuts down cannot turn a finished run into 130 / 143."""
    code = main()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
