"""Refinement after the forward pass: multi-view tracks, bundle adjustment, dense outputs moved with the cameras."""
