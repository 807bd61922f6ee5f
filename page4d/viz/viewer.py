"""A 4D browser viewer of a :class:`Reconstruction`: a time line over per-step points and camera frusta.

Built on viser because it is a pure-Python ``pip install`` (no system libraries, no GPU) that serves its web
client over plain HTTP/WebSocket on one port, so it works on a headless GPU box through SSH port forwarding
(``ssh -L 8080:localhost:8080 host``); it has the GUI widgets a 4D clip needs (sliders, checkboxes, folders,
markdown) and the scene primitives (point clouds, camera frusta textured with an image), and its client runs
in any browser, including a headless one, so the viewer is tested end to end.

Controls: the time step with play / pause and a speed; the confidence percentile (live); the colour (RGB,
confidence, dynamic mask); the point size; the static background, moving points and frusta; each camera on its
own (its frustum and its points). What is drawn and how it is decimated is in :mod:`page4d.viz.scene`; this
module uploads those arrays and wires the widgets.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import numpy as np
import viser
import viser.transforms as vtf
from PIL import Image

from page4d.export.points import (
    DEFAULT_CONF_PERCENTILE,
    MAX_MOVING_POINTS,
    MAX_STATIC_POINTS,
    check_conf_percentile,
)
from page4d.geometry.ground import up_direction
from page4d.geometry.unprojection import camera_to_world
from page4d.reconstruction.record import Reconstruction
from page4d.viz.scene import (
    COLOR_MODES,
    ScenePoints,
    opening_view,
    point_colors,
    step_layers,
)

FRUSTUM_IMAGE_WIDTH = 160
"""Frustum textures are downscaled to this width: V of them are re-sent on every time step."""
FRUSTUM_SCALE = 0.08
"""Frustum size as a fraction of the median depth: visible next to the scene without covering it."""
VIEW_COLORS = (((31, 119, 180), "blue"), ((255, 127, 14), "orange"), ((44, 160, 44), "green"),
               ((214, 39, 40), "red"), ((148, 103, 189), "purple"), ((140, 86, 75), "brown"))
PLAY_SPEED = (0.5, 30.0, 4.0)
"""Playback speed slider in time steps per second: minimum, maximum, initial."""
IDLE_POLL = 0.1
"""Seconds between checks of the play box while paused."""


def camera_poses(extrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world orientation ``[N, 4]`` (wxyz, viser's order) and centres ``[N, 3]`` of world-to-camera
    ``extrinsic [N, 3, 4]``."""
    pose = camera_to_world(extrinsic)
    return vtf.SO3.from_matrix(pose[:, :3, :3]).wxyz, pose[:, :3, 3]


def _thumbnail(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if width <= FRUSTUM_IMAGE_WIDTH:
        return image
    size = (FRUSTUM_IMAGE_WIDTH, max(1, round(height * FRUSTUM_IMAGE_WIDTH / width)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


class Playback:
    """Steps the time slider forward while ``play`` is ticked, ``speed`` steps per second, looping at the end;
    a daemon thread until :meth:`stop`."""

    def __init__(self, time: viser.GuiSliderHandle, play: viser.GuiCheckboxHandle, speed: viser.GuiSliderHandle,
                 num_steps: int) -> None:
        self.time, self.play, self.speed, self.num_steps = time, play, speed, num_steps
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="page4d-viewer-playback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(1.0 / max(float(self.speed.value), PLAY_SPEED[0]) if self.play.value
                                     else IDLE_POLL):
            if self.play.value:
                self.time.value = (int(self.time.value) + 1) % self.num_steps

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


@dataclass
class ViewerControls:
    """The widgets and scene nodes :func:`build_scene` made; setting a widget's ``value`` updates the scene."""

    time: viser.GuiSliderHandle
    play: viser.GuiCheckboxHandle
    speed: viser.GuiSliderHandle
    confidence: viser.GuiSliderHandle
    color: viser.GuiDropdownHandle
    point_size: viser.GuiSliderHandle
    show_static: viser.GuiCheckboxHandle
    show_dynamic: viser.GuiCheckboxHandle
    show_frusta: viser.GuiCheckboxHandle
    views: list[viser.GuiCheckboxHandle]
    """One box per camera (``recon.view_ids`` order): its frustum and its points."""
    status: viser.GuiMarkdownHandle
    static_cloud: viser.PointCloudHandle
    dynamic_cloud: viser.PointCloudHandle
    frusta: list[viser.CameraFrustumHandle]
    points: ScenePoints
    playback: Playback


def build_scene(
    server: viser.ViserServer,
    recon: Reconstruction,
    *,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points_per_step: int = MAX_MOVING_POINTS,
    max_background_points: int = MAX_STATIC_POINTS,
) -> ViewerControls:
    """Add ``recon``'s scene and GUI to ``server``; ``conf_percentile`` is the confidence slider's first value.
    The world's up is guessed from the cameras (:func:`~page4d.geometry.ground.up_direction`). Stop the
    returned controls' ``playback`` before the server."""
    check_conf_percentile(conf_percentile)
    points = ScenePoints(step_layers(recon, max_points_per_step=max_points_per_step,
                                     max_background_points=max_background_points))
    height, width = recon.size
    depth = recon.depth[:, :, ::8, ::8]
    depth = depth[np.isfinite(depth) & (depth > 0)]
    median_depth = float(np.median(depth)) if len(depth) else 1.0
    focal = recon.intrinsic[:, :, 1, 1]
    focal = focal[np.isfinite(focal) & (focal > 0)]  # untrained weights can predict no focal length at all
    focal = float(np.median(focal)) if len(focal) else float(max(height, width))
    # A point covers the pixels it stands for: one pixel's footprint at the median depth, widened when fewer
    # points are drawn at once (background + one step) than one step has pixels.
    drawn = max(len(points.background) + len(points.layers[0].dynamic), 1)
    point_size = median_depth / focal * np.sqrt(max(height * width * recon.num_views / drawn, 1.0))

    up = up_direction(recon.extrinsic)
    server.scene.set_up_direction(up)
    drawn_xyz = np.concatenate([points.background.xyz, points.layers[0].dynamic.xyz])
    eye, target = opening_view(drawn_xyz, recon.extrinsic, up, server.initial_camera.fov)
    server.initial_camera.position, server.initial_camera.look_at = tuple(eye), tuple(target)
    server.initial_camera.up = tuple(up)

    gui = server.gui
    if recon.untrained:
        gui.add_markdown("**Untrained weights**: this reconstruction came from random weights; it shows that the "
                         "pipeline runs, not what the scene looks like.")
    gui.add_markdown(f"**{recon.meta.get('model', 'unknown model')}** · T={recon.num_times} × V={recon.num_views} · "
                     f"{width}×{height} px")
    single = recon.num_times == 1
    with gui.add_folder("time"):
        time_slider = gui.add_slider("time step", 0, max(recon.num_times - 1, 1), 1, 0, disabled=single)
        play = gui.add_checkbox("play", False, disabled=single, hint="loop over the time steps")
        speed = gui.add_slider("steps / s", *PLAY_SPEED[:2], 0.5, PLAY_SPEED[2], disabled=single)
        status = gui.add_markdown("")
    with gui.add_folder("points"):
        confidence = gui.add_slider("min confidence %", 0.0, 99.0, 1.0, conf_percentile,
                                    hint="hide points below this percentile of their time step's confidence")
        modes = COLOR_MODES if recon.dynamic_mask is not None else COLOR_MODES[:2]
        color = gui.add_dropdown("colour", modes, initial_value="rgb")
        size = gui.add_slider("point size", point_size / 10, point_size * 5, point_size / 20, point_size)
        show_static = gui.add_checkbox("static background", True, visible=recon.dynamic_mask is not None)
        show_dynamic = gui.add_checkbox("moving points" if recon.dynamic_mask is not None else "points", True)
    with gui.add_folder("cameras"):
        show_frusta = gui.add_checkbox("camera frusta", True)
        views = [gui.add_checkbox(f"view {int(view_id)} ({VIEW_COLORS[v % len(VIEW_COLORS)][1]})", True)
                 for v, view_id in enumerate(recon.view_ids)]

    empty = np.zeros((0, 3), np.float32)
    static_cloud = server.scene.add_point_cloud("/static", empty, empty.astype(np.uint8), point_size=point_size,
                                                point_shape="rounded")
    dynamic_cloud = server.scene.add_point_cloud("/dynamic", empty, empty.astype(np.uint8), point_size=point_size,
                                                 point_shape="rounded")
    frusta = [
        server.scene.add_camera_frustum(
            f"/cameras/view{int(view_id)}", fov=1.0, aspect=width / height,  # pose, fov, image: per step
            scale=FRUSTUM_SCALE * median_depth, color=VIEW_COLORS[v % len(VIEW_COLORS)][0],
            thickness_units="screen", thickness=2.0,
        )
        for v, view_id in enumerate(recon.view_ids)
    ]
    playback = Playback(time_slider, play, speed, recon.num_times)
    controls = ViewerControls(time_slider, play, speed, confidence, color, size, show_static, show_dynamic,
                              show_frusta, views, status, static_cloud, dynamic_cloud, frusta, points, playback)
    _wire(server, recon, controls)
    return controls


def _wire(server: viser.ViserServer, recon: Reconstruction, c: ViewerControls) -> None:
    """Connect the widgets to the scene; callbacks run on viser's threads (and the playback's), so updates take
    a lock."""
    lock = threading.Lock()
    value_range = c.points.conf_range()

    def visible_views() -> np.ndarray:
        return np.array([box.value for box in c.views])

    def show_step(_: object = None) -> None:
        with lock, server.atomic():
            t = min(int(c.time.value), recon.num_times - 1)
            layer = c.points.moving_points(t, float(c.confidence.value), visible_views())
            wxyz, centres = camera_poses(recon.extrinsic[t])
            fov = 2 * np.arctan2(recon.size[0] / 2, recon.intrinsic[t, :, 1, 1])  # vertical, as viser wants
            fov = np.where(np.isfinite(fov) & (fov > 0), fov, 1.0)  # no usable focal: a plain frustum
            c.dynamic_cloud.points = layer.xyz
            c.dynamic_cloud.colors = point_colors(layer, c.color.value, value_range)
            for v, frustum in enumerate(c.frusta):
                frustum.wxyz, frustum.position, frustum.fov = wxyz[v], centres[v], float(fov[v])
                frustum.image = _thumbnail(recon.images[t, v])
            moving = "moving" if recon.dynamic_mask is not None else "per-step"
            c.status.content = (f"time id **{int(recon.time_ids[t])}** · {len(layer):,} {moving} points · "
                                f"{len(c.static_cloud.points):,} background points")

    def refilter(_: object = None) -> None:
        with lock, server.atomic():
            background = c.points.static_points(float(c.confidence.value), visible_views())
            c.static_cloud.points = background.xyz
            c.static_cloud.colors = point_colors(background, c.color.value, value_range)
        show_step()

    def resize(_: object) -> None:
        c.static_cloud.point_size = c.dynamic_cloud.point_size = float(c.point_size.value)

    def toggle(_: object) -> None:
        c.static_cloud.visible = c.show_static.value
        c.dynamic_cloud.visible = c.show_dynamic.value
        for frustum, box in zip(c.frusta, c.views, strict=True):
            frustum.visible = c.show_frusta.value and box.value

    c.time.on_update(show_step)
    for widget in (c.confidence, c.color, *c.views):
        widget.on_update(refilter)
    c.point_size.on_update(resize)
    for box in (c.show_static, c.show_dynamic, c.show_frusta, *c.views):
        box.on_update(toggle)
    refilter()


@dataclass
class Viewer:
    """A running viewer: the viser server and the controls of its scene."""

    server: viser.ViserServer
    controls: ViewerControls

    @property
    def port(self) -> int:
        return self.server.get_port()

    def stop(self) -> None:
        """Stop the playback thread, then the server (its port is free afterwards)."""
        self.controls.playback.stop()
        self.server.stop()


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """``ValueError`` unless ``host:port`` can be listened on (viser would silently move to the next port);
    ``flag`` is the option the message tells the user to change."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind((host, port))
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port} ({err}); pass a free {flag} or another --host") from None


def serve(recon: Reconstruction, host: str = "127.0.0.1", port: int = 8080, **options: object) -> Viewer:
    """Start a viser server showing ``recon`` and return it without blocking; ``options`` go to
    :func:`build_scene`. ``port=0`` picks a free port (``viewer.port``). Stop it with ``viewer.stop()``."""
    check_port(host, port)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    if port and server.get_port() != port:  # taken between the check and the bind
        server.stop()
        raise ValueError(f"port {port} on {host} is in use; pass a free --port")
    try:
        return Viewer(server, build_scene(server, recon, **options))
    except Exception:
        server.stop()
        raise
