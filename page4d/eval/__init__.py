"""Evaluation metrics: video depth, camera trajectories (ATE / RPE), relative-pose AUC and dynamic masks."""

from page4d.eval.metrics import camera_centres, depth_metrics, mask_metrics, pose_auc, trajectory_metrics

__all__ = ["camera_centres", "depth_metrics", "mask_metrics", "pose_auc", "trajectory_metrics"]
