"""``page4d`` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from page4d import __version__
from page4d.cli import convert, evaluate, reconstruct, train, view


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="page4d", description="Feed-forward 4D reconstruction from synchronized multi-view video."
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
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"page4d {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
