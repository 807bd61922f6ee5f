"""Camera geometry: rotations, the ``absT_quaR_FoV`` pose encoding, depth unprojection and projection, and the
ground plane of a rig."""

from page4d.geometry.ground import ground_axes, top_view, up_direction
from page4d.geometry.pose_encoding import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from page4d.geometry.rotations import mat_to_quat, quat_to_mat, standardize_quaternion
from page4d.geometry.unprojection import (
    camera_to_world,
    closed_form_inverse_se3,
    depth_to_camera_points,
    pixels_to_camera,
    project_points,
    unproject_depth,
)

__all__ = [
    "camera_to_world",
    "closed_form_inverse_se3",
    "depth_to_camera_points",
    "pixels_to_camera",
    "extri_intri_to_pose_encoding",
    "ground_axes",
    "mat_to_quat",
    "pose_encoding_to_extri_intri",
    "project_points",
    "quat_to_mat",
    "standardize_quaternion",
    "top_view",
    "unproject_depth",
    "up_direction",
]
