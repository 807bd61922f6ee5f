"""``page4d`` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import sys
import warnings

from page4d import __version__
from page4d.cli import convert, evaluate, reconstruct, train, view
from page4d.interrupts import Terminated, sigterm_raises

GUARANTEES = """\
what page4d promises about your files:
  - it never writes into, over or above its inputs: an -o that is, contains or lies inside an input is refused,
    even with --overwrite;
  - an output folder is always whole: a run writes next to it and swaps the result in at the end, so -o holds the
    whole old or the whole new result at every instant, and a failed or stopped run leaves it as it was;
  - one run at a time per output: a second run into the same -o is refused while the first runs;
  - Ctrl-C and SIGTERM (docker stop, Slurm, systemd) clean up and exit 130 / 143; temporaries a killed run left
    behind are removed by the next run into the same place;
  - bad input: one line on stderr saying what is wrong and what to do, exit code 2, nothing written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="page4d", description="Feed-forward 4D reconstruction from synchronized multi-view video.",
        epilog=GUARANTEES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"page4d {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    reconstruct.register(commands)
    convert.register(commands)
    evaluate.register(commands)
    view.register(commands)
    train.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"page4d {args.command}"

    def show_warning(message: Warning | str, *_: object, **__: object) -> None:
        print(f"{name}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings(), sigterm_raises():
        warnings.showwarning = show_warning  # one line per warning, like the errors
        try:
            return args.run(args)
        except (ValueError, OSError) as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        except Terminated:
            print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
            return 143


if __name__ == "__main__":
    sys.exit(main())
