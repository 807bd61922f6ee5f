"""The README's rig example: ``rig`` turns ../shared/data/tabletop4v into what a lab rig records (four H.264
videos named by camera, one started 0.3 s late, and an anipose calibration.toml); ``figure`` draws
docs/rig_check.png from a calibrated ``page4d reconstruct`` output of it: the points of one time step seen from above
in the calibration's world, its cameras, and the per-camera check stored in ``meta.json``.

    python docs/rig_figure.py rig ../shared/data/tabletop4v RIG
    page4d reconstruct RIG --cameras RIG/calibration.toml -o OUT
    python docs/rig_figure.py figure OUT docs/rig_check.png
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

NAMES = ("cam1_left", "cam2_front", "cam3_right", "cam4_top")


def rig(clip: Path, folder: Path, late_view: int = 2, late_steps: int = 3, fps: int = 10) -> None:
    folder.mkdir(parents=True)
    cameras = json.loads((clip / "cameras.json").read_text())
    tables = []
    for v, name in enumerate(NAMES):
        start = late_steps if v == late_view else 0
        steps = range(start, len(cameras["time_ids"]))
        with av.open(str(folder / f"{name}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = cameras["image_size"]["width"], cameras["image_size"]["height"]
            stream.pix_fmt, stream.codec_context.time_base = "yuv420p", Fraction(1, 1000)
            for t in steps:
                image = Image.open(clip / "images" / f"time_{t:02d}" / f"view{v}.png").convert("RGB")
                frame = av.VideoFrame.from_image(image)
                frame.pts, frame.time_base = round(1000 * t / fps), Fraction(1, 1000)
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        w2c = np.asarray(cameras["E_w2c"][0][v])
        tables += [f"[cam_{v}]", f'name = "{name}"', f"size = {[stream.width, stream.height]}",
                   f"matrix = {np.asarray(cameras['K'][0][v]).tolist()}", "distortions = [0.0, 0.0, 0.0, 0.0]",
                   f"rotation = {cv2.Rodrigues(w2c[:, :3])[0].ravel().tolist()}",
                   f"translation = {w2c[:, 3].tolist()}", ""]
    (folder / "calibration.toml").write_text("\n".join(tables))


def figure(out: Path, path: Path, step: int = 6) -> None:
    pred = np.load(out / "predictions.npz")
    check = json.loads((out / "meta.json").read_text())["calibration"]["check"]["cameras"]
    points, conf = pred["world_points"][step].reshape(-1, 3), pred["world_points_conf"][step].reshape(-1)
    colours = pred["images"][step].reshape(-1, 3) / 255
    keep = conf > np.percentile(conf, 70)
    w2c = pred["extrinsic"][step]
    centres = -np.einsum("vji,vj->vi", w2c[:, :, :3], w2c[:, :, 3])
    axes = w2c[:, 2, :3]  # each camera's optical axis in the world
    fig, (top, bars) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    top.scatter(points[keep, 0], points[keep, 2], c=colours[keep], s=0.5)
    span = np.percentile(points[keep][:, [0, 2]], [2, 98], axis=0)
    length = 0.15 * float(np.max(span[1] - span[0]))
    for name, centre, axis in zip(check, centres, axes, strict=True):
        tip = centre[[0, 2]] + length * axis[[0, 2]] / max(float(np.linalg.norm(axis[[0, 2]])), 1e-9)
        top.annotate("", tip, centre[[0, 2]], arrowprops={"arrowstyle": "->", "color": "crimson", "lw": 1.5})
        top.plot(*centre[[0, 2]], "o", color="crimson", ms=4)
        top.annotate(name, centre[[0, 2]], textcoords="offset points", xytext=(5, -10), fontsize=8, color="crimson")
    every = np.vstack([span, centres[:, [0, 2]]])
    margin = 0.1 * (every.max(0) - every.min(0))
    top.set_xlim(every[:, 0].min() - margin[0], every[:, 0].max() + margin[0])
    top.set_ylim(every[:, 1].min() - margin[1], every[:, 1].max() + margin[1])
    top.set(xlabel="x (calibration units)", ylabel="z (calibration units)", aspect="equal",
            title=f"time step {int(pred['time_ids'][step])} in the calibration's world (top view)")
    names = list(check)
    rotation = [check[n]["rotation_deg"] for n in names]
    centre = [check[n]["centre_distance"] for n in names]
    x = np.arange(len(names))
    bars.bar(x - 0.2, rotation, 0.4, label="rotation (°)")
    twin = bars.twinx()
    twin.bar(x + 0.2, centre, 0.4, color="tab:orange", label="centre distance (units)")
    bars.set(xticks=x, xticklabels=names, ylabel="rotation error (°)",
             title="the model's own cameras against the calibration")
    twin.set_ylabel("centre distance (calibration units)")
    bars.legend(handles=[*bars.patches[:1], *twin.patches[:1]], labels=["rotation", "centre distance"],
                loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    {"rig": rig, "figure": figure}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
