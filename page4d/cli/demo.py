"""``page4d demo``: the browser demo (upload videos or a clip, get the 4D viewer, panels and exports)."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
from pathlib import Path

DEMO_EXTRA = 'pip install "page4d[demo]"'


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="a browser page: drop one video per camera (or a zipped clip), get the 4D viewer, panels and exports",
        description=(
            "Serve the page4d demo on http://HOST:PORT and block until Ctrl-C: upload one video per camera or a .zip "
            "of a clip folder and optionally a calibration, pick the model, and get the 4D viewer (on "
            "--viewer-port), the panels and the exports to download. Runs on the CPU with the default model. On a "
            "remote machine forward both ports: ssh -L PORT:localhost:PORT -L VIEWER_PORT:localhost:VIEWER_PORT HOST."
        ),
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=7860, help="port of the page (default: 7860)")
    p.add_argument("--viewer-port", type=int, default=8081, help="port of the 4D viewer (default: 8081)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME_OR_PATH",
                   help="a model the page offers (repeat for several; the first is preselected). Default: "
                   "page4d-small and the known Hub checkpoints. Visitors pick from these and cannot type a path")
    p.add_argument("--workspace", type=Path,
                   help="folder for the uploads and results (default: a temporary folder, removed at exit)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for flag, port in (("--port", args.port), ("--viewer-port", args.viewer_port)):
        if not 0 < port < 65536:
            raise ValueError(f"{flag} {port} must be in 1..65535")
    if args.port == args.viewer_port:
        raise ValueError(f"--port and --viewer-port are both {args.port}; give the viewer a port of its own")
    from page4d.checkpoints.pretrained import resolve
    from page4d.devices import resolve_device

    resolve_device(args.device)  # a bad --device is refused now, not at the first upload
    try:
        from page4d.demo.app import MODELS, Demo, launch
        from page4d.viz.viewer import check_port
    except ImportError as err:
        raise ValueError(f"the demo needs gradio and viser ({err}); install them with {DEMO_EXTRA}") from None
    for flag, port in (("--port", args.port), ("--viewer-port", args.viewer_port)):
        check_port(args.host, port, flag)
    models = tuple(dict.fromkeys(args.models)) if args.models else MODELS
    for model in models:
        resolve(model)  # an unknown name or missing path is refused now, not when a visitor picks it
    _load_pycolmap()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="page4d-demo-"))
    demo = Demo(workspace, device=args.device, viewer_host=args.host, viewer_port=args.viewer_port, models=models)
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"page4d demo at http://{shown}:{args.port} (4D viewer on port {args.viewer_port}); press Ctrl-C to stop")
    try:
        launch(demo, args.host, args.port)
    except KeyboardInterrupt:
        print("stopped")
    finally:
        demo.stop()
        if args.workspace is None:
            shutil.rmtree(workspace, ignore_errors=True)
    return 0


def _load_pycolmap() -> None:
    """Load pycolmap (calibrations from COLMAP, ``--refine``) here, on the main thread: loading it installs glog's
    SIGTERM handler, which only the main thread can take back, and the page's jobs run on worker threads."""
    if importlib.util.find_spec("pycolmap") is not None:
        from page4d.interrupts import python_handlers_kept

        with python_handlers_kept():
            import pycolmap  # noqa: F401
