"""``SceneConfig``: the ranges synthetic scenes are drawn from (``page4d.data.synthetic`` renders them). Its own
module, so that the generator's parts (rigs, objects, shading, textures) can name it without an import circle."""

from __future__ import annotations

from dataclasses import dataclass

RIG_FAMILIES = ("ring", "arc", "stereo_pairs", "mixed_heights", "dome", "wide_baseline")
ORIENTATIONS = ("fixed", "landscape", "portrait", "random")
FOV_SAMPLING = ("uniform", "log_focal")

TEXTURES = ("checker", "noise", "procedural", "photo")


@dataclass(frozen=True)
class SceneConfig:
    """Ranges that scenes are drawn from (uniformly); one seed gives one scene. Every field maps to a key of a
    training config's ``scene:`` mapping (lists become tuples); the fields after ``texture`` are the variety
    options, whose defaults reproduce the original generator exactly."""

    num_times: int = 4
    num_views: int = 4
    height: int = 84
    width: int = 112
    room: float = 6.0
    """Half-width of the square room; walls at x, y = ±room."""
    wall_height: float = 3.0
    static_boxes: tuple[int, int] = (1, 3)
    moving_spheres: tuple[int, int] = (1, 3)
    sphere_radius: tuple[float, float] = (0.3, 0.7)
    speed: tuple[float, float] = (0.1, 0.35)
    """Sphere speed, units per time step."""
    camera_distance: tuple[float, float] = (3.0, 4.5)
    camera_height: tuple[float, float] = (1.2, 2.4)
    fov_deg: tuple[float, float] = (55.0, 75.0)
    """Horizontal field of view, drawn per camera (see ``fov_sampling``); e.g. (30, 90) from tele to wide."""
    texture: str = "checker"
    """``checker``: two-colour cells per surface (what the first page4d-small was trained on); ``noise``: a smooth
    non-repeating pattern (a sum of random plane waves), which feature matching can tell apart everywhere;
    ``procedural``: a material tile per surface (stone, wood, marble, fabric, cobbles, bricks, concrete, foliage;
    ``page4d.data.textures``); ``photo``: photographs from installed packages on most surfaces, materials on the
    rest (materials only, with a warning, when no photographs are installed)."""
    rig_families: tuple[str, ...] = ("ring",)
    """Camera layouts (``page4d.data.synthetic_rigs``): ``ring``, ``arc``, ``stereo_pairs``, ``mixed_heights``,
    ``dome``, ``wide_baseline``; with several, each scene draws one uniformly. A single name is read as a
    one-element tuple."""
    look_at_jitter: float = 0.6
    """Each camera aims at the shared centre moved by up to this much in x and y (uniform)."""
    look_at_height: float = 0.4
    """Height of the shared centre the cameras aim at (and of the ``dome``'s centre)."""
    roll_deg: float = 0.0
    """Largest per-camera roll about the optical axis (uniform in ±roll_deg)."""
    arc_span_deg: tuple[float, float] = (60.0, 180.0)
    """``arc``: the angle the cameras spread over."""
    stereo_baseline: tuple[float, float] = (0.1, 0.35)
    """``stereo_pairs``: distance between the two cameras of a pair."""
    mixed_height: tuple[float, float] = (0.3, 4.0)
    """``mixed_heights``: the camera heights, one camera per 1 / V of this range."""
    dome_elevation_deg: tuple[float, float] = (20.0, 70.0)
    """``dome``: elevation of the cameras above the centre, one camera per 1 / V of this range."""
    wide_distance: tuple[float, float] = (4.5, 5.5)
    """``wide_baseline``: camera distance from the centre (keep it below ``room``: the walls are opaque)."""
    orientation: str = "fixed"
    """Frame shape. ``fixed``: ``height × width`` as given (a portrait clip is simply ``height > width``);
    ``landscape`` / ``portrait``: the longer of the two sides horizontal / vertical; ``random``: one or the other
    per scene, so clip shapes differ between scenes: fine for written clips and one-clip evaluation, but training
    stacks samples of one shape, so train portrait with ``portrait`` (a run or data source of its own).
    ``fov_deg`` is always across the frame's width."""
    fov_sampling: str = "uniform"
    """How each camera's horizontal field of view is drawn from ``fov_deg``: ``uniform`` in degrees, or
    ``log_focal``: log-uniform focal length, which spreads a wide range such as 30°–90° evenly from wide to
    tele (uniform degrees favour the wide end). Either way every camera draws its own."""
    walkers: tuple[int, int] = (0, 0)
    """Number of walkers (human-scale figures of capsules swinging arms and legs, ``synthetic_objects``)."""
    walker_height: tuple[float, float] = (1.5, 1.9)
    walker_speed: tuple[float, float] = (0.05, 0.2)
    """Walker speed, units per time step (its gait follows it)."""
    moving_boxes: tuple[int, int] = (0, 0)
    """Number of boxes on the floor that translate (at ``speed``) and turn about z."""
    moving_area: float = 1.8
    """Walkers and moving boxes keep their centres within ``|x|, |y| <= moving_area``; their bodies reach about
    0.5 further, so at 1.8 they stay clear of cameras 3 or more from the centre (``camera_distance``)."""
    lighting: bool = False
    """Per-scene lighting: a brightness and colour temperature, an ambient share and a directional (Lambert)
    light from a random direction, instead of the fixed light; it changes colours only, never depth or masks."""
    brightness: tuple[float, float] = (0.6, 1.4)
    """``lighting``: overall gain."""
    warmth: float = 0.25
    """``lighting``: the light's red gain is ``1 + w`` and blue gain ``1 - w`` with ``w`` uniform in ±warmth."""
    ambient: tuple[float, float] = (0.2, 0.6)
    """``lighting``: the share of light that does not depend on the surface's direction."""

    def __post_init__(self) -> None:
        if isinstance(self.rig_families, str):  # ``rig_families: dome`` in YAML
            object.__setattr__(self, "rig_families", (self.rig_families,))
        for name, value, known in (("texture", self.texture, TEXTURES), ("orientation", self.orientation, ORIENTATIONS),
                                   ("fov_sampling", self.fov_sampling, FOV_SAMPLING)):
            if value not in known:
                raise ValueError(f"scene.{name} {value!r}: choose one of {', '.join(known)}")
        unknown = [family for family in self.rig_families if family not in RIG_FAMILIES]
        if not self.rig_families or unknown:
            raise ValueError(f"scene.rig_families {self.rig_families!r}: choose one or more of "
                             f"{', '.join(RIG_FAMILIES)}")
