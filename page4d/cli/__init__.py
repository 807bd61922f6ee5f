"""The ``page4d`` console script."""
