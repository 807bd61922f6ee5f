"""The ``refine`` choices of ``reconstruct`` (apart from the pipeline, which needs pycolmap only when it runs)."""

REFINE_MODES = ("none", "ba")
"""``none``: the forward pass as it is; ``ba``: cameras adjusted on feature tracks (``page4d.refine.pipeline``)."""
