"""``page4d view`` on a real clip: how many points it draws, and how long each control takes to answer.

For a reconstruct output (or a clip with ground truth) OUT:

1. **Scene**: the points drawn at once (background + one step's moving points, at the default limits and the
   default confidence percentile) and the build time (reading, thinning, first upload).
2. **Server side**: the time each control's update takes (filtering, colouring and queueing the upload): a time
   step (mean over every step), the confidence slider, a camera box, the colour mode.
3. **In the browser** (headless Chromium, software WebGL; skipped with ``--no-browser``): from typing a time
   step into the panel's box to the panel showing that step's time id, the whole round trip a user waits
   through (browser -> server -> points uploaded -> browser), the median over ``--repeats`` steps.

    python benchmarks/viewer.py OUT [--max-points N] [--repeats 8] [--no-browser]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from page4d.cli.view import load_input
from page4d.export.points import BACKGROUND_FACTOR, MAX_MOVING_POINTS
from page4d.viz.viewer import serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def timed(action: object) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def browser_round_trip(viewer: object, recon: object, repeats: int) -> list[float]:
    """Seconds from typing a time step into the browser's box to the browser showing its time id."""
    from playwright.sync_api import sync_playwright

    waits = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://127.0.0.1:{viewer.port}")
        page.get_by_text("min confidence %", exact=True).wait_for(timeout=60_000)
        # The slider's number box: the first input in the row of the panel that holds the "time step" label.
        box = page.locator("xpath=//label[normalize-space()='time step']/ancestor::div[.//input"
                           "[not(@type='hidden')]][1]//input[not(@type='hidden')]").first
        for t in np.linspace(1, recon.num_times - 1, repeats).round().astype(int):
            start = time.perf_counter()
            box.fill(str(t))
            box.press("Enter")
            page.get_by_text(f"time id {int(recon.time_ids[t])} ·").wait_for(timeout=60_000)
            waits.append(time.perf_counter() - start)
        browser.close()
    return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-points", type=int, default=MAX_MOVING_POINTS,
                        help=f"page4d view's --max-points (the background gets {BACKGROUND_FACTOR}x that)")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    recon = load_input(args.out)
    start = time.perf_counter()
    viewer = serve(recon, port=0, max_points_per_step=args.max_points,
                   max_background_points=BACKGROUND_FACTOR * args.max_points)
    build = time.perf_counter() - start
    c = viewer.controls
    try:
        moving = [len(c.points.moving_points(t, float(c.confidence.value), np.ones(recon.num_views, bool)))
                  for t in range(recon.num_times)]
        height, width = recon.size
        print(f"{args.out}: T={recon.num_times} × V={recon.num_views} at {width}×{height} "
              f"({recon.num_times * recon.num_views * height * width:,} pixels)")
        print(f"drawn at once: {len(c.static_cloud.points):,} background + up to {max(moving):,} moving points "
              f"(mean {statistics.mean(moving):,.0f} per step); build {build:.2f} s")
        steps = [timed(lambda t=t: setattr(c.time, "value", t)) for t in range(recon.num_times)]
        print(f"server side: time step {1e3 * statistics.mean(steps):.0f} ms (mean of {len(steps)}), "
              f"confidence {1e3 * timed(lambda: setattr(c.confidence, 'value', 50.0)):.0f} ms, "
              f"camera box {1e3 * timed(lambda: setattr(c.views[-1], 'value', False)):.0f} ms, "
              f"colour {1e3 * timed(lambda: setattr(c.color, 'value', 'confidence')):.0f} ms")
        c.confidence.value, c.views[-1].value, c.color.value, c.time.value = 20.0, True, "rgb", 0
        if not args.no_browser:
            waits = browser_round_trip(viewer, recon, args.repeats)
            print(f"browser round trip (type a time step -> its time id shown): median "
                  f"{1e3 * statistics.median(waits):.0f} ms, max {1e3 * max(waits):.0f} ms over {len(waits)} steps")
    finally:
        viewer.stop()


if __name__ == "__main__":
    main()
