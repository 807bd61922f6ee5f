"""``page4d demo``: a browser page around ``page4d reconstruct`` and ``page4d view``.

A user drops one video per camera (or a zip of a clip folder) and optionally a calibration, picks the model and
gets the 4D viewer, the per-step panels and the exports to download. The work is the command line's own: the
page builds a ``reconstruct`` command line and runs it in-process, so the checks, the defaults and the one-line
messages are the same, and what it writes is what the command writes. Its progress bars (tqdm) show in the page.

The viewer is ``page4d view``'s viser server, on a port of its own, shown in a frame of the page; the demo keeps
one (the latest result's). Jobs run one at a time (gradio's queue), each in its own folder under the workspace,
of which the last ``KEEP_JOBS`` are kept.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import gradio as gr

from page4d.checkpoints.hub import KNOWN_CHECKPOINTS
from page4d.checkpoints.pretrained import DEFAULT_MODEL
from page4d.cli.main import build_parser
from page4d.data.video import VIDEO_SUFFIXES
from page4d.demo.uploads import CALIBRATION_SUFFIXES, StagedUpload, stage
from page4d.reconstruction.record import Reconstruction
from page4d.viz.viewer import Viewer, serve

EXPORTS = ("ply", "glb", "png", "nerfstudio")
"""What every job writes; ``rerun`` joins when rerun-sdk is installed."""
KEEP_JOBS = 4
MODELS = (DEFAULT_MODEL, *KNOWN_CHECKPOINTS)
"""What the page offers unless ``page4d demo --model`` names others: a visitor picks, never types, a model (a
typed path or Hub id would let anyone who reaches the page probe the server's files or make it download)."""
DOWNLOADS = ("cameras.json", "predictions.npz", "recording.rrd")
"""Files offered one by one beside the zip of everything (with the GLB scene)."""
FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
"""System fonts: the default theme fetches web fonts, which an offline machine cannot."""


@dataclass
class Result:
    """One job's outputs, as the page shows them."""

    folder: Path
    summary: str
    panels: list[Path]
    downloads: list[Path]


def run_reconstruct(staged: StagedUpload, out: Path, model: str, frames: int | None, device: str) -> str:
    """``page4d reconstruct`` on ``staged`` into ``out``; returns what the command printed. ``ValueError`` /
    ``OSError`` with the command's message when it refuses the input."""
    exports = [*EXPORTS, *(["rerun"] if importlib.util.find_spec("rerun") else [])]
    argv = ["reconstruct", *map(str, staged.inputs), "-o", str(out), "--model", model, "--export", ",".join(exports),
            "--device", device]
    if staged.cameras is not None:
        argv += ["--cameras", str(staged.cameras)]
    if frames:
        argv += ["--frames", str(frames)]
    parser_errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(parser_errors):
            args = build_parser().parse_args(argv)
    except SystemExit:
        raise ValueError(parser_errors.getvalue().strip().splitlines()[-1]) from None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        args.run(args)
    return printed.getvalue()


def collect(out: Path, summary: str, job: Path) -> Result:
    """The panels, and the downloads: a zip of ``out`` (in ``job``), the GLB scene and :data:`DOWNLOADS`."""
    archive = Path(shutil.make_archive(str(job / "page4d_result"), "zip", out))
    singles = sorted(out.glob("scene_*.glb")) + [out / name for name in DOWNLOADS if (out / name).is_file()]
    return Result(out, summary, sorted((out / "panels").glob("*.png")), [archive, *singles])


@dataclass
class Demo:
    """The page's state: where jobs go and the viewer of the latest result."""

    workspace: Path
    device: str = "auto"
    viewer_host: str = "127.0.0.1"
    viewer_port: int = 8081
    models: tuple[str, ...] = MODELS
    _viewer: Viewer | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def new_job(self) -> Path:
        """A fresh job folder; the oldest beyond :data:`KEEP_JOBS` are removed."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        for old in sorted(self.workspace.glob("job-*"), key=lambda p: p.stat().st_mtime)[:-KEEP_JOBS + 1]:
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="job-", dir=self.workspace))

    def reconstruct(self, uploads: list[str] | None, calibration: str | None, model: str, frames: float | None
                    ) -> Result:
        """Stage the uploads, reconstruct, and show the result in the viewer."""
        if model not in self.models:
            raise ValueError(f"model {model!r} is not offered here; pick one of {', '.join(self.models)}")
        job = self.new_job()
        staged = stage([Path(p) for p in uploads or []], None if calibration is None else Path(calibration), job)
        out = job / "out"
        summary = run_reconstruct(staged, out, model, int(frames or 0), self.device)
        # the visitor's view of the paths: the result and the upload, not where they lie on the server
        summary = summary.replace(str(out), "result").replace(str(job), "upload")
        result = collect(out, summary, job)
        self.show(Reconstruction.load(out))
        return result

    def show(self, recon: Reconstruction) -> Viewer:
        """Serve ``recon`` in the viewer, in place of the previous result."""
        with self._lock:
            if self._viewer is not None:
                self._viewer.stop()
                self._viewer = None
            self._viewer = serve(recon, host=self.viewer_host, port=self.viewer_port)
            return self._viewer

    def stop(self) -> None:
        with self._lock:
            if self._viewer is not None:
                self._viewer.stop()
                self._viewer = None


def viewer_frame(page_url: str, port: int, job: str) -> str:
    """An ``<iframe>`` of the viewer at ``port`` on the host the browser reached the page at (``page_url``).
    ``job`` names the result in the address: a new result on the same port is then a new address, which the
    browser loads (the same frame would keep talking to the stopped server)."""
    parts = urlsplit(page_url)
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    src = f"{parts.scheme or 'http'}://{host}:{port}/?result={job}"
    return (f'<iframe src="{src}" title="page4d 4D viewer" style="width:100%;height:640px;border:0"></iframe>'
            f'<p>4D viewer: <a href="{src}" target="_blank">{src}</a> (on a remote machine, forward this port '
            "too)</p>")


def build_app(demo: Demo) -> gr.Blocks:
    """The page: uploads, options and downloads on top; the viewer, the panels and the summary below."""

    def on_run(uploads: list[str] | None, calibration: str | None, model: str, frames: float | None,
               request: gr.Request, progress: gr.Progress = gr.Progress(track_tqdm=True)  # noqa: B008
               ) -> tuple[str, list[str], list[str], str]:
        try:
            result = demo.reconstruct(uploads, calibration, model, frames)
        except (ValueError, OSError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        page = str(request.headers.get("referer") or f"http://{request.headers.get('host', 'localhost')}/")
        return (viewer_frame(page, demo.viewer_port, result.folder.parent.name), [str(p) for p in result.panels],
                [str(p) for p in result.downloads], result.summary)

    with gr.Blocks(title="page4d demo", analytics_enabled=False) as app:
        gr.Markdown("## page4d: 4D reconstruction from synchronized multi-view video\n"
                    "Drop one video per camera (in camera order), or one .zip of a clip folder "
                    "(`images/time_XX/viewN.png`). Add the rig's calibration if you have one. Every camera, "
                    "time step, depth map and moving-object mask comes from one forward pass.")
        with gr.Row():
            with gr.Column(scale=1):
                uploads = gr.File(label="videos, one per camera, or a .zip of a clip folder", file_count="multiple",
                                  file_types=[*sorted(VIDEO_SUFFIXES), ".zip"], type="filepath")
                calibration = gr.File(label="calibration (optional): .toml, cameras.json, or a .zip of a COLMAP "
                                      "model", file_types=[*CALIBRATION_SUFFIXES, ".zip"], type="filepath")
            with gr.Column(scale=1):
                model = gr.Dropdown(list(demo.models), value=demo.models[0], label="model",
                                    info="page4d-small ships with page4d and runs on a CPU; Hub checkpoints "
                                    "download once")
                frames = gr.Number(0, precision=0, minimum=0, label="at most this many time steps (0 = all)")
                run = gr.Button("Reconstruct", variant="primary")
                downloads = gr.File(label="downloads", file_count="multiple", interactive=False)
        viewer = gr.HTML("<p>The 4D viewer appears here.</p>", label="4D viewer")
        panels = gr.Gallery(label="panels: image, depth, confidence and dynamic mask per camera", columns=1,
                            object_fit="contain", height="auto")
        summary = gr.Textbox(label="summary", lines=8, interactive=False)
        results = [viewer, panels, downloads, summary]
        # the last result goes first, so that a refused upload does not leave it on show as if it were the answer
        run.click(lambda: ("<p>Reconstructing…</p>", [], None, ""), None, results, queue=False).then(
            on_run, [uploads, calibration, model, frames], results, concurrency_limit=1)
    return app


def launch(demo: Demo, host: str, port: int, block: bool = True) -> gr.Blocks:
    """Serve the page on ``host:port`` (``block=False`` returns at once; stop with ``app.close()``)."""
    app = build_app(demo)
    app.queue().launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
                       allowed_paths=[str(demo.workspace)], theme=gr.themes.Default(**FONTS), show_error=True)
    return app
