"""Evaluation: metrics (depth, trajectories, pose AUC, masks, point clouds, multi-view consistency), protocols
and the runner behind ``page4d eval``."""

from page4d.eval.geometry_metrics import multiview_consistency, point_cloud_metrics
from page4d.eval.metrics import (
    camera_centres,
    depth_metrics,
    mask_metrics,
    pose_auc,
    relative_pose_error,
    trajectory_metrics,
)
from page4d.eval.protocols import PROTOCOLS
from page4d.eval.runner import evaluate

__all__ = [
    "PROTOCOLS",
    "camera_centres",
    "depth_metrics",
    "evaluate",
    "mask_metrics",
    "multiview_consistency",
    "point_cloud_metrics",
    "pose_auc",
    "relative_pose_error",
    "trajectory_metrics",
]
