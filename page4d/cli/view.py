"""``page4d view OUT``: look at a reconstruction (or a clip's ground truth) in the browser, with a time slider."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from page4d.export.points import (
    BACKGROUND_FACTOR,
    DEFAULT_CONF_PERCENTILE,
    MAX_MOVING_POINTS,
    check_conf_percentile,
)
from page4d.reconstruction.record import PREDICTIONS, Reconstruction


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "view",
        help="browse a reconstruction in 4D (points, camera frusta, time slider) in a web browser",
        description=(
            "Serve a 4D viewer of OUT on http://HOST:PORT and block until Ctrl-C. OUT is a page4d reconstruct "
            "output folder, or a clip folder with ground truth (images/, depths/, cameras.json) to check a rig's "
            "calibration. On a remote machine, forward the port: ssh -L PORT:localhost:PORT HOST."
        ),
    )
    p.add_argument("out", type=Path, metavar="OUT",
                   help="output folder of page4d reconstruct, or a clip folder with ground truth")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--conf-percentile", type=float, default=DEFAULT_CONF_PERCENTILE,
                   help="first value of the viewer's confidence slider: hide points below this percentile of "
                   f"each time step's confidence (default: {DEFAULT_CONF_PERCENTILE:g})")
    p.add_argument("--max-points", type=int, default=MAX_MOVING_POINTS,
                   help=f"at most this many moving points per time step (default: {MAX_MOVING_POINTS}); the static "
                   f"background gets {BACKGROUND_FACTOR}x that over the whole clip")
    p.set_defaults(run=run)


def load_input(path: Path) -> Reconstruction:
    """A reconstruct output folder (``predictions.npz``) or a clip folder's ground truth (``images/``)."""
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise ValueError(f"{path} {what}; pass the output folder of page4d reconstruct or a clip folder")
    if (path / PREDICTIONS).is_file():
        return Reconstruction.load(path)
    if (path / "images").is_dir():
        from page4d.data.layout import load_clip
        from page4d.reconstruction.ground_truth import reconstruction_from_clip

        return reconstruction_from_clip(load_clip(path))
    raise ValueError(f"{path} holds neither {PREDICTIONS} (page4d reconstruct output) nor images/ (a clip with "
                     "ground truth); pass one of those folders")


def run(args: argparse.Namespace) -> int:
    check_conf_percentile(args.conf_percentile)
    if args.max_points < 1:
        raise ValueError(f"--max-points {args.max_points} must be positive")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} must be in 1..65535")
    try:
        from page4d.viz.viewer import serve
    except ImportError as err:
        raise ValueError(f'the viewer needs viser ({err}); install it with pip install "page4d[viz]"') from None
    recon = load_input(args.out)
    viewer = serve(recon, host=args.host, port=args.port, conf_percentile=args.conf_percentile,
                   max_points_per_step=args.max_points, max_background_points=BACKGROUND_FACTOR * args.max_points)
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"page4d view: {args.out} (T={recon.num_times} × V={recon.num_views}) at http://{shown}:{args.port}")
    print(f"remote machine? ssh -L {args.port}:localhost:{args.port} HOST, then open http://localhost:{args.port}")
    print("press Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopped")
    finally:
        viewer.stop()
    return 0
