"""``Page4D``: the aggregator and the heads, wired together. Reads no files itself."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import ModelHubMixin
from safetensors.torch import save_file
from torch import nn

from page4d.aggregator import Aggregator
from page4d.config import ModelConfig
from page4d.geometry import pose_encoding_to_extri_intri
from page4d.heads import CameraHead, DPTHead, TrackHead
from page4d.nn.precision import autocast, full_precision
from page4d.outputs import Predictions

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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

    def required_entries(self) -> set[int]:
        """Aggregator output entries the built heads read (all other layer outputs are dropped)."""
        return self._dense_entries() | self._camera_entries()

    def _camera_entries(self) -> set[int]:
        return {self.config.aggregator.depth - 1} if self.camera_head is not None else set()

    def _dense_entries(self) -> set[int]:
        heads = (self.config.point_head, self.config.depth_head, self.config.track_head)
        return {i for head in heads if head is not None for i in head.intermediate_layer_idx}

    def forward(
        self,
        images: torch.Tensor,
        query_points: torch.Tensor | None = None,
        mask_step: float = 0.0,
        external_mask: torch.Tensor | None = None,
        camera_priors: tuple[torch.Tensor, torch.Tensor] | None = None,
        keypoints: torch.Tensor | None = None,
    ) -> Predictions:
        """Predict cameras, depth, points (and tracks when ``query_points`` are given).

        Args:
            images: ``[B, T, V, 3, H, W]`` or ``[B, S, 3, H, W]`` (= T 1, V S), RGB in [0, 1].
            query_points: optional ``[B, N, 2]`` pixel (x, y) in frame (t=0, v=0), for the track head.
            mask_step: training step for PAGE-4D's mask-strength schedule (0 at inference).
            external_mask: optional moving mask in [0, 1] (1 = moving, e.g. from SegAnyMo) shaped like the
                images without channels, ``[B, T, V, H, W]`` or ``[B, S, H, W]``; averaged over each patch and
                fused by the ``seeds`` mask head.
            camera_priors: optional coarse (intrinsics ``[B, T, V, 3, 3]``, world-to-camera extrinsics
                ``[B, T, V, 3, 4]``) at the input resolution (``[B, S, ...]`` for 5-D images), for the
                epipolar prior of the configured view blocks.
            keypoints: optional keypoint density in [0, 1] shaped like ``external_mask``, for the sparse
                global blocks (landmark anchors, keypoint bias); averaged over each patch.

        Returns:
            ``Predictions`` with ``[B, T, V, ...]`` fields (see its docstring).
        """
        images = as_grid(images, self.config.patch_size)
        b, t, v, _, height, width = images.shape
        psi = self.aggregator.patch_start_idx
        patch_mask = None if external_mask is None else self._to_patches(external_mask, images.shape, "external_mask")
        patch_keypoints = None if keypoints is None else self._to_patches(keypoints, images.shape, "keypoints")
        if camera_priors is not None and camera_priors[0].dim() == 4 and t == 1:
            camera_priors = (camera_priors[0].unsqueeze(1), camera_priors[1].unsqueeze(1))
        with autocast(images.device):
            mask_cfg = self.config.aggregator.dynamic_mask
            dual = mask_cfg is not None and mask_cfg.streams == "dual"
            keep = self._dense_entries() if dual else self.required_entries()
            aggregated = self.aggregator(
                images, keep, mask_step, patch_mask, pose_keep=self._camera_entries(), cameras=camera_priors,
                keypoints=patch_keypoints,
            )
        frames = {i: rearrange(e, "b t v p c -> b (t v) p c").float() for i, e in aggregated.entries.items()}
        pose_source = aggregated.pose_entries if aggregated.pose_entries is not None else aggregated.entries

        def per_tv(x: torch.Tensor) -> torch.Tensor:
            return rearrange(x, "b (t v) ... -> b t v ...", t=t, v=v)

        out = Predictions()
        if aggregated.mask is not None:
            moving = aggregated.mask.moving.float().flatten(0, 2)[:, None]
            moving = F.interpolate(moving, size=(height, width), mode="bilinear", align_corners=False)
            out.dynamic_mask = moving[:, 0].unflatten(0, (b, t, v))
        with full_precision(images.device):
            if self.camera_head is not None:
                camera_tokens = pose_source[self.config.aggregator.depth - 1][:, :, :, 0].float()
                poses = self.camera_head(rearrange(camera_tokens, "b t v c -> b (t v) c"))
                out.pose_enc_list = [per_tv(p_) for p_ in poses]
                out.pose_enc = out.pose_enc_list[-1]
                out.extrinsic, out.intrinsic = pose_encoding_to_extri_intri(out.pose_enc, (height, width))
            for name in ("depth", "point"):
                head = getattr(self, f"{name}_head")
                if head is None:
                    continue
                taps = [frames[i][:, :, psi:] for i in head.cfg.intermediate_layer_idx]
                pred, conf = head(taps, (height, width))
                key = "depth" if name == "depth" else "world_points"
                setattr(out, key, per_tv(pred))
                setattr(out, f"{key}_conf", per_tv(conf))
            if self.track_head is not None and query_points is not None:
                taps = [frames[i][:, :, psi:] for i in self.track_head.cfg.intermediate_layer_idx]
                tracks = self.track_head(taps, (height, width), query_points.float())
                out.track_list = [per_tv(x) for x in tracks.tracks]
                out.track = out.track_list[-1]
                out.track_vis = per_tv(tracks.vis)
                if tracks.conf is not None:
                    out.track_conf = per_tv(tracks.conf)
        return out

    def _to_patches(self, mask: torch.Tensor, image_shape: torch.Size, name: str) -> torch.Tensor:
        """Pixel map ``[B, T, V, H, W]`` (or ``[B, S, H, W]`` when T = 1) -> patch means ``[B, T, V, h, w]``."""
        b, t, v, _, height, width = image_shape
        if mask.dim() == 4 and t == 1:
            mask = mask.unsqueeze(1)
        if tuple(mask.shape) != (b, t, v, height, width):
            raise ValueError(
                f"{name} must be [B, T, V, H, W] = {[b, t, v, height, width]} like the images "
                f"(or [B, S, H, W] for 5-D images), got {list(mask.shape)}"
            )
        pooled = F.avg_pool2d(mask.float().flatten(0, 2)[:, None], kernel_size=self.config.patch_size)
        return pooled[:, 0].unflatten(0, (b, t, v))

    @torch.inference_mode()
    def infer(
        self,
        images: torch.Tensor,
        query_points: torch.Tensor | None = None,
        external_mask: torch.Tensor | None = None,
        camera_priors: tuple[torch.Tensor, torch.Tensor] | None = None,
        keypoints: torch.Tensor | None = None,
    ) -> Predictions:
        """Inference entry point: eval mode, inputs moved to the model's device, bf16 aggregator on CUDA.

        Arguments as in ``forward`` (at inference the mask-strength step is 0), except that ``images`` may also
        be ``torch.uint8`` in 0..255 (divided by 255 here); float images of any precision must be finite and in
        [0, 1] (cast to the weights' dtype here)."""
        self.eval()
        weight = next(self.parameters())
        device = weight.device

        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device)

        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (float in [0, 1] or uint8), got {type(images).__name__}")
        images = move(images)
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
        images = images.to(weight.dtype)  # float64 or half images would meet float32 weights in the first layer
        cameras = None if camera_priors is None else (move(camera_priors[0]), move(camera_priors[1]))
        return self(
            images, move(query_points), external_mask=move(external_mask), camera_priors=cameras,
            keypoints=move(keypoints),
        )

    # --- Hugging Face Hub mixin: native format = model.safetensors + config.json -------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        weights, config = save_directory / WEIGHTS_NAME, save_directory / CONFIG_NAME
        save_file(state, str(weights), metadata={"format": "pt", "library": "page4d"})
        config.write_text(json.dumps(self.config.to_dict(), indent=2))
        # safetensors creates its file 0600; give it the mode the umask gives config.json, so others can read it.
        weights.chmod(config.stat().st_mode & 0o777)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict | None = None,
        **model_kwargs,
    ) -> Page4D:
        """A native Hub repo (the mixin passes its ``config.json``); local folders never come here."""
        from page4d.checkpoints.hub import fetch
        from page4d.checkpoints.pretrained import load_native

        if config is None:
            raise ValueError(f"{model_id}: no {CONFIG_NAME} found; a native page4d checkpoint needs one")
        try:
            model_config = ModelConfig.from_dict(config)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{model_id}: {CONFIG_NAME} is not a valid page4d model config ({err})") from None
        return load_native(fetch(model_id, WEIGHTS_NAME, revision=revision), model_config)[0]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> Page4D:
        """Load a bundled model (``page4d-small``), a native folder or Hub repo; known foreign checkpoints
        (``facebook/VGGT-1B``) and checkpoint files are converted on the fly (see
        ``page4d.checkpoints.pretrained.load_pretrained``, which reads every local folder and file; the Hub
        mixin and its ``kwargs`` are used for native Hub repos only)."""
        from page4d.checkpoints.hub import KNOWN_CHECKPOINTS, fetch
        from page4d.checkpoints.pretrained import load_pretrained, resolve

        where = resolve(pretrained_model_name_or_path)
        if isinstance(where, Path) or where in KNOWN_CHECKPOINTS:
            if kwargs:  # the mixin's options (revision, token, ...) mean nothing here; ignoring them would mislead
                raise TypeError(f"{pretrained_model_name_or_path}: {', '.join(sorted(kwargs))} apply to native Hub "
                                "repos only; load local folders, files and known checkpoints without them")
            return load_pretrained(where)[0]
        fetch(where, CONFIG_NAME, revision=kwargs.get("revision"))  # fails fast offline, unlike the mixin
        return super().from_pretrained(where, **kwargs)
