"""A 4D browser viewer of a :class:`Reconstruction`: a time slider over per-step points and camera frusta.

Built on viser because it is a pure-Python ``pip install`` (no system libraries, no GPU) that serves its web
client over plain HTTP/WebSocket on one port, so it works on a headless GPU box through SSH port forwarding
(``ssh -L 8080:localhost:8080 host``); it has the GUI widgets a 4D clip needs (slider, dropdown, checkbox,
markdown) and the scene primitives (point clouds, camera frusta textured with an image), and its client runs
in any browser, including a headless one, so the viewer is tested end to end.

What is shown: the static background, accumulated over every time step (points whose ``dynamic_mask`` is
<= ``MOVING_THRESHOLD``, thinned so that the total stays under ``max_background_points``), plus the current
time step's moving points (``dynamic_mask`` > ``MOVING_THRESHOLD``, at most ``max_points_per_step``) and its
camera frusta. Without a dynamic mask every point is per-step. Points are ``recon.depth_points()`` filtered
as the exports do (``page4d.export.points.select_points``: finite, positive depth and confidence, at or above
the step's ``conf_percentile``-th confidence percentile). All subsampling is seeded, so it is deterministic.

The scene logic is pure numpy (:func:`step_layers`, :func:`point_colors`, :func:`camera_poses`); the
``viser`` part (:func:`build_scene`, :func:`serve`) only uploads arrays and wires the widgets.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import numpy as np
import viser
import viser.transforms as vtf
from PIL import Image

from page4d.export.points import DEFAULT_CONF_PERCENTILE, SUBSAMPLE_SEED, PointSelection, select_points
from page4d.reconstruction.record import Reconstruction

DEFAULT_MAX_POINTS_PER_STEP = 150_000
DEFAULT_MAX_BACKGROUND_POINTS = 4 * DEFAULT_MAX_POINTS_PER_STEP
COLOR_MODES = ("rgb", "confidence", "dynamic mask")
FRUSTUM_IMAGE_WIDTH = 160
"""Frustum textures are downscaled to this width: V of them are re-sent on every time step."""
FRUSTUM_SCALE = 0.08
"""Frustum size as a fraction of the median depth: visible next to the scene without covering it."""
CONF_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
"""Low -> high confidence (viridis anchors)."""
MASK_RAMP = np.array([[120, 130, 150], [235, 40, 40]], np.float64)
"""Static (grey-blue) -> moving (red) probability."""
MIN_AXIS_SPREAD = 0.01
"""Camera x axes whose second principal direction holds less than this share of their spread are taken as
parallel (for two cameras: less than 11.5 degrees apart, sin²(angle / 2) < 0.01)."""
VIEW_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


@dataclass
class StepLayer:
    """What one time step contributes to the scene."""

    static: PointSelection
    """This step's share of the accumulated background (``dynamic_mask <= MOVING_THRESHOLD``); empty without
    a mask."""
    dynamic: PointSelection
    """Shown only while this step is selected (``dynamic_mask > MOVING_THRESHOLD``, or every point without a
    mask)."""


def _thin(layer: PointSelection, limit: int) -> PointSelection:
    """At most ``limit`` rows, a seeded random subset kept in the original order."""
    if len(layer) <= limit:
        return layer
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    return layer.subset(np.sort(rng.choice(len(layer), limit, replace=False)))


def step_layers(
    recon: Reconstruction,
    *,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points_per_step: int = DEFAULT_MAX_POINTS_PER_STEP,
    max_background_points: int = DEFAULT_MAX_BACKGROUND_POINTS,
) -> list[StepLayer]:
    """One :class:`StepLayer` per time step (``recon.time_ids`` order).

    Each step keeps at most ``max_points_per_step`` dynamic points and ``max_background_points // T`` static
    ones, so the scene stays bounded however long the clip is.
    """
    if max_points_per_step < 1 or max_background_points < 1:
        raise ValueError(f"point limits must be positive, got {max_points_per_step} and {max_background_points}")
    static_limit = max(1, max_background_points // recon.num_times)
    layers = []
    for t in range(recon.num_times):
        points = select_points(recon, t, source="depth", conf_percentile=conf_percentile)
        is_dynamic = np.ones(len(points), bool) if recon.dynamic_mask is None else points.moving
        layers.append(StepLayer(
            static=_thin(points.subset(~is_dynamic), static_limit),
            dynamic=_thin(points.subset(is_dynamic), max_points_per_step),
        ))
    return layers


def _ramp(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``[N]`` values in [0, 1] -> ``[N, 3]`` uint8, piecewise linear through evenly spaced ``anchors [K, 3]``."""
    stops = np.linspace(0.0, 1.0, len(anchors))
    return np.stack([np.interp(values, stops, anchors[:, c]) for c in range(3)], -1).round().astype(np.uint8)


def conf_range(layers: list[StepLayer]) -> tuple[float, float]:
    """Colour range of the confidence mode: 2nd and 98th percentiles of every drawn point's confidence."""
    conf = np.concatenate([x.conf for layer in layers for x in (layer.static, layer.dynamic)])
    return (0.0, 1.0) if len(conf) == 0 else tuple(float(q) for q in np.percentile(conf, (2.0, 98.0)))


def point_colors(layer: PointSelection, mode: str, value_range: tuple[float, float]) -> np.ndarray:
    """``[N, 3]`` uint8 colours of ``layer`` in one of ``COLOR_MODES``; ``value_range`` scales confidence."""
    if mode == "rgb":
        return layer.rgb
    if mode == "confidence":
        low, high = value_range
        return _ramp(np.clip((layer.conf - low) / max(high - low, 1e-12), 0.0, 1.0), CONF_RAMP)
    if mode == "dynamic mask":
        return _ramp(np.clip(layer.mask, 0.0, 1.0), MASK_RAMP)
    raise ValueError(f"colour mode must be one of {COLOR_MODES}, got {mode!r}")


def camera_poses(extrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world orientation ``[N, 4]`` (wxyz, viser's order) and centres ``[N, 3]`` of world-to-camera
    ``extrinsic [N, 3, 4]``."""
    rot_c2w = np.swapaxes(extrinsic[:, :, :3], -1, -2).astype(np.float64)
    centres = -(rot_c2w @ extrinsic[:, :, 3:].astype(np.float64))[..., 0]
    return vtf.SO3.from_matrix(rot_c2w).wxyz, centres


def up_direction(extrinsic: np.ndarray) -> np.ndarray:
    """``[3]`` world up guessed from world-to-camera ``extrinsic [..., 3, 4]``.

    Cameras are rarely rolled, so their x axes are horizontal whatever their pitch: up is the direction
    orthogonal to all of them, signed like the cameras' mean up axis (-y in OpenCV). When the x axes are all
    parallel (one camera, a rig facing one way) that plane is undefined and the mean up axis is used.
    """
    rotation = extrinsic[..., :3].reshape(-1, 3, 3).astype(np.float64)  # rows = camera axes in world
    mean_up = -rotation[:, 1].mean(0)
    spread, axes = np.linalg.eigh(rotation[:, 0].T @ rotation[:, 0])
    if spread[1] < MIN_AXIS_SPREAD * spread.sum():
        return mean_up / max(np.linalg.norm(mean_up), 1e-12)
    up = axes[:, 0]
    return up if up @ mean_up >= 0 else -up


def _thumbnail(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if width <= FRUSTUM_IMAGE_WIDTH:
        return image
    size = (FRUSTUM_IMAGE_WIDTH, max(1, round(height * FRUSTUM_IMAGE_WIDTH / width)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


@dataclass
class ViewerControls:
    """The widgets and scene nodes :func:`build_scene` made; setting a widget's ``value`` updates the scene."""

    time: viser.GuiSliderHandle
    color: viser.GuiDropdownHandle
    point_size: viser.GuiSliderHandle
    show_static: viser.GuiCheckboxHandle
    show_dynamic: viser.GuiCheckboxHandle
    show_frusta: viser.GuiCheckboxHandle
    status: viser.GuiMarkdownHandle
    static_cloud: viser.PointCloudHandle
    dynamic_cloud: viser.PointCloudHandle
    frusta: list[viser.CameraFrustumHandle]
    layers: list[StepLayer]
    background: PointSelection
    """Every step's ``static`` points, concatenated: what ``static_cloud`` holds."""


def build_scene(
    server: viser.ViserServer,
    recon: Reconstruction,
    *,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points_per_step: int = DEFAULT_MAX_POINTS_PER_STEP,
    max_background_points: int = DEFAULT_MAX_BACKGROUND_POINTS,
    up: str | tuple[float, float, float] = "auto",
) -> ViewerControls:
    """Add ``recon``'s scene and GUI to ``server``; ``up="auto"`` takes :func:`up_direction`, anything else is
    passed to ``server.scene.set_up_direction``."""
    layers = step_layers(recon, conf_percentile=conf_percentile, max_points_per_step=max_points_per_step,
                         max_background_points=max_background_points)
    background = PointSelection.concat([layer.static for layer in layers])
    value_range = conf_range(layers)
    height, width = recon.size
    depth = recon.depth[:, :, ::8, ::8]
    depth = depth[np.isfinite(depth) & (depth > 0)]
    median_depth = float(np.median(depth)) if len(depth) else 1.0
    focal = float(np.median(recon.intrinsic[:, :, 1, 1]))
    # A point covers the pixels it stands for: one pixel's footprint at the median depth, widened when fewer
    # points are drawn at once (background + one step) than one step has pixels.
    drawn = max(len(background) + len(layers[0].dynamic), 1)
    point_size = median_depth / focal * np.sqrt(max(height * width * recon.num_views / drawn, 1.0))

    up_vector = up_direction(recon.extrinsic) if up == "auto" else None
    server.scene.set_up_direction(up_vector if up_vector is not None else up)
    _place_initial_camera(server, recon, background, layers[0].dynamic, up_vector)

    gui = server.gui
    if recon.untrained:
        gui.add_markdown("**Untrained weights**: this reconstruction came from random weights; it shows that the "
                         "pipeline runs, not what the scene looks like.")
    model = recon.meta.get("model", "unknown model")
    gui.add_markdown(f"**{model}** · T={recon.num_times} × V={recon.num_views} · {width}×{height} px")
    time_slider = gui.add_slider("time step", 0, max(recon.num_times - 1, 1), 1, 0, disabled=recon.num_times == 1)
    status = gui.add_markdown("")
    modes = COLOR_MODES if recon.dynamic_mask is not None else COLOR_MODES[:2]
    color = gui.add_dropdown("colour", modes, initial_value="rgb")
    size = gui.add_slider("point size", point_size / 10, point_size * 5, point_size / 20, point_size)
    show_static = gui.add_checkbox("static background", True, visible=recon.dynamic_mask is not None)
    show_dynamic = gui.add_checkbox("moving points" if recon.dynamic_mask is not None else "points", True)
    show_frusta = gui.add_checkbox("camera frusta", True)

    static_cloud = server.scene.add_point_cloud("/static", background.xyz, background.rgb, point_size=point_size)
    dynamic_cloud = server.scene.add_point_cloud("/dynamic", layers[0].dynamic.xyz, layers[0].dynamic.rgb,
                                                 point_size=point_size)
    frusta = [
        server.scene.add_camera_frustum(
            f"/cameras/view{int(view_id)}", fov=1.0, aspect=width / height,  # pose, fov, image: per step
            scale=FRUSTUM_SCALE * median_depth, color=VIEW_COLORS[v % len(VIEW_COLORS)], thickness_units="screen",
            thickness=2.0,
        )
        for v, view_id in enumerate(recon.view_ids)
    ]
    controls = ViewerControls(time_slider, color, size, show_static, show_dynamic, show_frusta, status, static_cloud,
                              dynamic_cloud, frusta, layers, background)
    _wire(server, recon, controls, value_range)
    return controls


def _place_initial_camera(
    server: viser.ViserServer, recon: Reconstruction, background: PointSelection, first: PointSelection,
    up: np.ndarray | None,
) -> None:
    """Look from behind and above camera (t0, v0) at a point between the points' median and the rig's centre,
    far enough back to see the scene and every frustum (from the rig's centre a ring of cameras would give a
    top-down view)."""
    points = np.concatenate([background.xyz, first.xyz])
    _, centres = camera_poses(recon.extrinsic[0])
    target = np.median(points, axis=0) if len(points) else centres[0]
    target = target + 0.3 * (centres.mean(0) - target)
    offset = centres[0] - target
    lift = 0.9 * float(np.linalg.norm(offset)) * (up if up is not None else np.zeros(3))
    server.initial_camera.look_at = tuple(target)
    server.initial_camera.position = tuple(target + 1.45 * offset + lift)
    if up is not None:
        server.initial_camera.up = tuple(up)


def _wire(
    server: viser.ViserServer, recon: Reconstruction, c: ViewerControls, value_range: tuple[float, float]
) -> None:
    """Connect the widgets to the scene; callbacks run on viser's threads, so updates take a lock."""
    lock = threading.Lock()

    def show_step(_: object = None) -> None:
        t = min(int(c.time.value), recon.num_times - 1)
        layer = c.layers[t].dynamic
        wxyz, centres = camera_poses(recon.extrinsic[t])
        fov = 2 * np.arctan2(recon.size[0] / 2, recon.intrinsic[t, :, 1, 1])  # vertical, as viser wants
        with lock, server.atomic():
            c.dynamic_cloud.points = layer.xyz
            c.dynamic_cloud.colors = point_colors(layer, c.color.value, value_range)
            for v, frustum in enumerate(c.frusta):
                frustum.wxyz, frustum.position, frustum.fov = wxyz[v], centres[v], float(fov[v])
                frustum.image = _thumbnail(recon.images[t, v])
            c.status.content = f"time id **{int(recon.time_ids[t])}** · {len(layer):,} per-step points"

    def recolor(_: object) -> None:
        with lock, server.atomic():
            c.static_cloud.colors = point_colors(c.background, c.color.value, value_range)
        show_step()

    def resize(_: object) -> None:
        c.static_cloud.point_size = c.dynamic_cloud.point_size = float(c.point_size.value)

    def toggle(_: object) -> None:
        c.static_cloud.visible = c.show_static.value
        c.dynamic_cloud.visible = c.show_dynamic.value
        for frustum in c.frusta:
            frustum.visible = c.show_frusta.value

    c.time.on_update(show_step)
    c.color.on_update(recolor)
    c.point_size.on_update(resize)
    for box in (c.show_static, c.show_dynamic, c.show_frusta):
        box.on_update(toggle)
    show_step()


def check_port(host: str, port: int) -> None:
    """``ValueError`` unless ``host:port`` can be listened on (viser would silently move to the next port)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind((host, port))
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port} ({err}); pass a free --port or another --host") from None


def serve(recon: Reconstruction, host: str = "127.0.0.1", port: int = 8080, **options: object) -> viser.ViserServer:
    """Start a viser server showing ``recon`` and return it without blocking; ``options`` go to
    :func:`build_scene`. ``port=0`` picks a free port (``server.get_port()``). Stop it with ``server.stop()``."""
    check_port(host, port)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    if port and server.get_port() != port:  # taken between the check and the bind
        server.stop()
        raise ValueError(f"port {port} on {host} is in use; pass a free --port")
    try:
        build_scene(server, recon, **options)
    except Exception:
        server.stop()
        raise
    return server
