"""Attention plans: how the frames of a ``[B, T, V]`` grid are laid out for one forward pass.

With T = 1 the model is VGGT (time blocks = frame attention, view blocks = global attention), so a plan is a
regrouping of the grid around the same forward pass, undone on the outputs:

    set        : ``[B, T, V] -> [B, 1, T·V]``  all frames of the window are one set, as VGGT / PAGE-4D / Pi3 were
                 trained: frame attention per image, global attention and the camera head over all T·V frames,
                 frame (t=0, v=0) the reference. Global attention costs O((T·V·P)²).
    per-step   : ``[B, T, V] -> [B·T, 1, V]``  each time step an independent set of its V views, with its own
                 reference camera (t, v=0); outputs of different steps are in different frames. O(T·(V·P)²).
    factorised : the grid as it is: page4d's time / view blocks (models trained in that layout).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from einops import rearrange

from page4d.config import ModelConfig
from page4d.inputs import ForwardInputs
from page4d.outputs import Predictions

ATTENTION_PLANS = ("auto", "set", "per-step", "factorised")


@dataclass(frozen=True)
class AttentionPlan:
    """A regrouping of the frame grid: ``fold`` maps ``b t v`` to ``into`` before the forward pass, ``unfold``
    restores it on every output. The identity grouping is the factorised plan."""

    name: str
    into: str
    """einops grouping of ``b t v`` as the model sees it (``b t v`` for the identity)."""

    def _pattern(self, forward: bool) -> str:
        return f"b t v ... -> {self.into} ..." if forward else f"{self.into} ... -> b t v ..."

    def model_grid(self, t: int, v: int) -> tuple[int, int, int]:
        """``(B', T', V')`` the model sees for one ``[1, t, v]`` window."""
        b, t, v = self.fold(torch.empty(1, t, v, device="meta")).shape
        return b, t, v

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, V, ...]`` -> the model's grid."""
        return rearrange(x, self._pattern(True))

    def unfold(self, x: torch.Tensor, b: int, t: int, v: int) -> torch.Tensor:
        """The model's grid ``[B', T', V', ...]`` -> ``[B, T, V, ...]``."""
        return rearrange(x, self._pattern(False), b=b, t=t, v=v)

    def fold_inputs(self, inputs: ForwardInputs | None) -> ForwardInputs | None:
        """Every ``[B, T, V, ...]`` input (pixel maps or their patch means, priors) regrouped like the images."""
        if inputs is None:
            return None
        priors = inputs.camera_priors
        return dataclasses.replace(
            inputs,
            external_mask=None if inputs.external_mask is None else self.fold(inputs.external_mask),
            keypoints=None if inputs.keypoints is None else self.fold(inputs.keypoints),
            camera_priors=None if priors is None else (self.fold(priors[0]), self.fold(priors[1])),
        )

    def unfold_predictions(self, pred: Predictions, b: int, t: int, v: int) -> Predictions:
        """Every output field back to ``[B, T, V, ...]``."""
        def back(value: object) -> object:
            if isinstance(value, torch.Tensor):
                return self.unfold(value, b, t, v)
            if isinstance(value, list):
                return [self.unfold(x, b, t, v) for x in value]
            return value

        return Predictions(**{f.name: back(getattr(pred, f.name)) for f in dataclasses.fields(pred)})


PLANS = {
    "set": AttentionPlan("set", "b 1 (t v)"),
    "per-step": AttentionPlan("per-step", "(b t) 1 v"),
    "factorised": AttentionPlan("factorised", "b t v"),
}


def resolve_plan(attention: str, config: ModelConfig) -> AttentionPlan:
    """The plan ``attention`` names; ``auto`` is the layout the weights were trained in (``config.trained_layout``)."""
    if attention not in ATTENTION_PLANS:
        raise ValueError(f"attention {attention!r}: choose one of {', '.join(ATTENTION_PLANS)}")
    return PLANS[config.trained_layout if attention == "auto" else attention]
