"""``Page4D``: the aggregator and the heads, wired together. Reads no files itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import ModelHubMixin
from torch import nn

from page4d.aggregator import Aggregator
from page4d.aggregator.grid import FrameGrid, GridShard
from page4d.attention_plans import resolve_plan
from page4d.checkpoints import native
from page4d.checkpoints.hub import HubOptions
from page4d.config import ModelConfig
from page4d.geometry import pose_encoding_to_extri_intri
from page4d.heads import CameraHead, DPTHead, TrackHead
from page4d.inputs import ForwardInputs
from page4d.nn.precision import autocast, full_precision
from page4d.outputs import Predictions


def as_grid(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Validate images and return them as ``[B, T, V, 3, H, W]`` (a 5-D ``[B, S, ...]`` input is T = 1, V = S)."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError("images must be a floating-point tensor with values in [0, 1]")
    if images.dim() == 5:
        images = images.unsqueeze(1)
    if images.dim() != 6:
        raise ValueError(
            f"images must be [B, T, V, 3, H, W] or [B, S, 3, H, W], got {images.dim()}-D shape {tuple(images.shape)}; "
            "add a batch dimension with images[None] if needed"
        )
    channels, height, width = images.shape[-3:]
    if channels != 3:
        raise ValueError(f"images must be RGB with 3 channels in dim -3, got {channels} (shape {tuple(images.shape)})")
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"image height and width must be positive multiples of {patch_size}, got {height}×{width}; "
            "resize or crop them (page4d.data.preprocess does this)"
        )
    return images


def _check_inputs_type(inputs: object) -> None:
    if inputs is not None and not isinstance(inputs, ForwardInputs):
        raise TypeError(f"inputs must be a page4d.ForwardInputs, got {type(inputs).__name__} (query points go by "
                        "keyword: query_points=...)")


@dataclass(frozen=True)
class _Frames:
    """The (B, T, V) frame grid and the (H, W) image size of one forward pass."""

    b: int
    t: int
    v: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """Head output ``[B, T·V, ...]`` -> ``[B, T, V, ...]``."""
        return rearrange(x, "b (t v) ... -> b t v ...", t=self.t, v=self.v)

    def upsampled(self, moving: torch.Tensor) -> torch.Tensor:
        """Patch-grid probabilities ``[B, T, V, h, w]`` -> ``[B, T, V, H, W]`` float32 (bilinear)."""
        flat = F.interpolate(moving.float().flatten(0, 2)[:, None], size=self.size, mode="bilinear",
                             align_corners=False)
        return flat[:, 0].unflatten(0, (self.b, self.t, self.v))


class Page4D(nn.Module, ModelHubMixin, library_name="page4d", tags=["4d-reconstruction", "multi-view", "vggt"]):
    """Feed-forward 4D reconstruction from synchronized multi-view video.

    ``Page4D(config)`` builds an untrained model; ``Page4D.from_pretrained(folder_or_repo)`` loads
    a saved one. With T = 1 it is VGGT (the time bank acts as frame attention, the view bank as
    global attention), so VGGT checkpoints load through ``page4d.checkpoints``.
    """

    def __init__(self, config: ModelConfig | dict | None = None):
        super().__init__()
        if config is None:
            config = ModelConfig()
        elif isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        self.config = config
        self._hub_mixin_config = config.to_dict()
        dim_in, p = config.head_dim_in, config.patch_size
        self.aggregator = Aggregator(config.aggregator, config.encoder, p)
        self.camera_head = CameraHead(config.camera_head, dim_in) if config.camera_head else None
        self.point_head = DPTHead(config.point_head, dim_in, p) if config.point_head else None
        self.depth_head = DPTHead(config.depth_head, dim_in, p) if config.depth_head else None
        self.track_head = TrackHead(config.track_head, dim_in, p) if config.track_head else None

    def camera_entries(self) -> set[int]:
        """Aggregator output entries the camera head reads (the last)."""
        return {self.config.aggregator.depth - 1} if self.camera_head is not None else set()

    def dense_entries(self) -> set[int]:
        """Aggregator output entries the dense heads read (their taps)."""
        heads = (self.point_head, self.depth_head, self.track_head)
        return {i for head in heads if head is not None for i in head.cfg.intermediate_layer_idx}

    def required_entries(self) -> set[int]:
        """Every aggregator output entry a built head reads (all other layer outputs are dropped)."""
        return self.dense_entries() | self.camera_entries()

    def forward(
        self,
        images: torch.Tensor,
        inputs: ForwardInputs | None = None,
        query_points: torch.Tensor | None = None,
        shard: GridShard | None = None,
    ) -> Predictions:
        """Predict cameras, depth, points, the dynamic mask (and tracks when ``query_points`` are given).

        Args:
            images: ``[B, T, V, 3, H, W]`` or ``[B, S, 3, H, W]`` (= T 1, V S), RGB in [0, 1].
            inputs: optional per-forward inputs (external mask, camera priors, keypoints, mask step; see
                ``ForwardInputs``), at the images' resolution.
            query_points: optional ``[B, N, 2]`` pixel (x, y) in frame (t=0, v=0), for the track head.
            shard: spread the frame grid over processes (``page4d.aggregator.grid``): every process passes the
                same whole inputs, runs the encoder, blocks and dense heads on its share of the frames, and
                returns the whole predictions (gathered; the camera head runs on the gathered camera tokens).

        Returns:
            ``Predictions`` with ``[B, T, V, ...]`` fields (see its docstring).
        """
        images = as_grid(images, self.config.patch_size)
        _check_inputs_type(inputs)
        grid = FrameGrid(*images.shape[:3], shard)
        if grid.sharded and query_points is not None and self.track_head is not None:
            raise ValueError("tracks follow query points across the whole grid and are not sharded; run them in one "
                             "process")
        patch_inputs = (inputs or ForwardInputs()).at_patches(images.shape, self.config.patch_size)
        with autocast(images.device):
            aggregated = self.aggregator(images, self.camera_entries(), self.dense_entries(), patch_inputs, shard)
        frames = _Frames(*images.shape[:3], *images.shape[-2:])
        local = _Frames(*grid.shape("frame"), *images.shape[-2:])
        out = Predictions()
        if aggregated.mask is not None:
            out.dynamic_mask = frames.upsampled(aggregated.mask.moving)
        with full_precision(images.device):
            if self.camera_head is not None:
                self._predict_cameras(out, aggregated.pose_entries, frames, grid)
            geometry = aggregated.geometry_entries
            for head, key in ((self.depth_head, "depth"), (self.point_head, "world_points")):
                if head is not None:
                    pred, conf = head(self._taps(geometry, head.cfg.intermediate_layer_idx), frames.size)
                    setattr(out, key, grid.gather(local.split(pred)))
                    setattr(out, f"{key}_conf", grid.gather(local.split(conf)))
            if self.track_head is not None and query_points is not None:
                self._predict_tracks(out, geometry, frames, query_points)
        return out

    def _taps(self, entries: dict[int, torch.Tensor], indices: tuple[int, ...]) -> list[torch.Tensor]:
        """Patch tokens of the aggregator ``entries`` ``indices``, as ``[B, T·V, h·w, 2C]`` float32."""
        psi = self.aggregator.patch_start_idx
        return [rearrange(entries[i][:, :, :, psi:], "b t v p c -> b (t v) p c").float() for i in indices]

    def _predict_cameras(
        self, out: Predictions, entries: dict[int, torch.Tensor], frames: _Frames, grid: FrameGrid
    ) -> None:
        """Camera head on the camera token of the last pose-stream entry of every frame (gathered from every
        process when sharded): pose encodings, extrinsics, intrinsics."""
        camera_tokens = grid.gather(entries[self.config.aggregator.depth - 1][:, :, :, 0].float())
        poses = self.camera_head(rearrange(camera_tokens, "b t v c -> b (t v) c"))
        out.pose_enc_list = [frames.split(p) for p in poses]
        out.pose_enc = out.pose_enc_list[-1]
        out.extrinsic, out.intrinsic = pose_encoding_to_extri_intri(out.pose_enc, frames.size)

    def _predict_tracks(
        self, out: Predictions, entries: dict[int, torch.Tensor], frames: _Frames, query_points: torch.Tensor
    ) -> None:
        """Track head: every query point of frame (0, 0) followed through all (t, v)."""
        tracks = self.track_head(self._taps(entries, self.track_head.cfg.intermediate_layer_idx), frames.size,
                                 query_points.float())
        out.track_list = [frames.split(x) for x in tracks.tracks]
        out.track = out.track_list[-1]
        out.track_vis = frames.split(tracks.vis)
        if tracks.conf is not None:
            out.track_conf = frames.split(tracks.conf)

    @torch.inference_mode()
    def infer(
        self, images: torch.Tensor, inputs: ForwardInputs | None = None, query_points: torch.Tensor | None = None,
        attention: str = "auto", shard: GridShard | None = None,
    ) -> Predictions:
        """Inference entry point: eval mode, inputs moved to the model's device, bf16 aggregator on CUDA.

        Arguments as in ``forward`` (at inference the mask-strength step is 0), except that ``images`` may also
        be ``torch.uint8`` in 0..255 (divided by 255 here); float images of any precision must be finite and in
        [0, 1] (cast to the weights' dtype here). ``attention``: the plan over the ``[T, V]`` frames (see
        ``page4d.attention_plans``): ``set``, ``per-step``, ``factorised``, or ``auto`` (the layout the weights
        were trained in, ``config.trained_layout``). All plans coincide when T = 1. ``shard``: spread the plan's frame
        grid over processes (see ``forward``)."""
        self.eval()
        weight = next(self.parameters())
        device = weight.device
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (float in [0, 1] or uint8), got {type(images).__name__}")
        images = images.to(device)
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif not images.is_floating_point():
            raise TypeError(f"images have dtype {images.dtype}; pass float images in [0, 1] or uint8 images in 0..255")
        # Training calls forward directly; here bad pixels would give confident garbage without any error.
        non_finite = int((~torch.isfinite(images)).sum())
        if non_finite:
            raise ValueError(f"images contain {non_finite} NaN or Inf values (of {images.numel()}); check how they "
                             "were decoded and pre-processed")
        # aminmax fails on empty tensors; as_grid then reports their shape.
        low, high = (float(x) for x in torch.aminmax(images)) if images.numel() else (0.0, 0.0)
        if low < 0 or high > 1:
            hints = []
            if high > 1:
                hints.append("0-255 images: divide by 255 or pass uint8")
            if low < 0:
                hints.append("[-1, 1] images: pass (x + 1) / 2")
            raise ValueError(f"images must be in [0, 1], found values in [{low:g}, {high:g}]; {'; '.join(hints)}")
        images = as_grid(images.to(weight.dtype), self.config.patch_size)  # float64 / half images meet fp32 weights
        _check_inputs_type(inputs)
        plan = resolve_plan(attention, self.config)
        query_points = None if query_points is None else query_points.to(device)
        if plan.name == "per-step" and query_points is not None and images.shape[1] > 1:
            raise ValueError("tracks follow query points through time, but attention='per-step' runs each time step "
                             "on its own; use 'set' or 'factorised' for tracks")
        inputs = None if inputs is None else inputs.to(device).at_patches(images.shape, self.config.patch_size)
        # every plan is the identity at T = 1
        pred = self(plan.fold(images), plan.fold_inputs(inputs), query_points, shard)
        return plan.unfold_predictions(pred, *images.shape[:3])

    # --- thin delegates to page4d.checkpoints, which owns every file format -------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        """Called by the Hub mixin's ``save_pretrained`` / ``push_to_hub``: the native format."""
        native.save(self, Path(save_directory))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **hub_options) -> Page4D:
        """A trained model: a bundled name (``page4d-small``), a native folder, a checkpoint file (page4d, VGGT,
        PAGE-4D, Pi3), a known Hub checkpoint (``facebook/VGGT-1B``) or a native Hub repo, converted on the fly
        where needed. ``hub_options`` (``revision``, ``token``, ``cache_dir``, ``local_files_only``,
        ``force_download``) go to the Hub client. See ``page4d.checkpoints.pretrained.load_pretrained``, which
        also returns the load report."""
        from page4d.checkpoints.pretrained import load_pretrained  # the loader builds Page4D models: import late

        hub = HubOptions.from_kwargs(hub_options, str(pretrained_model_name_or_path)) if hub_options else None
        return load_pretrained(pretrained_model_name_or_path, hub=hub)[0]
