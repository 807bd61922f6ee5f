"""Which parameters train: glob patterns over parameter names, each of which must match something.

PAGE-4D's recipe, for example, trains only the middle blocks and the mask head::

    train_only(model, ["aggregator.time_blocks.{10..19}.*", "aggregator.view_blocks.{10..19}.*",
                       "aggregator.mask_head.*"])

A pattern that matches no parameter is an error (a typo would otherwise silently freeze everything).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from page4d.patterns import match_patterns


def train_only(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Set ``requires_grad`` to True exactly for the parameters matched by ``patterns``; returns their names, sorted.

    Raises ``ValueError`` naming every pattern that matches no parameter (nothing is changed then).
    """
    names = [name for name, _ in model.named_parameters()]
    trained = match_patterns(list(patterns), names, "train patterns",
                             hint="list the model's parameter names with model.named_parameters()")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trained)
    return sorted(trained)
