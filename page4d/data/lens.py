"""Lens distortion removed from the frames before the model (OpenCV's k1, k2, p1, p2 model).

The model is a pinhole predictor; a calibration's distortion is honoured by resampling every frame onto the
undistorted image of the same pinhole K (``newCameraMatrix = K``), so the calibrated K stays the camera's K for
the model's outputs, the exports and the reprojection of depth. OpenCV (headless build, the ``rig`` extra) does
the resampling: it is the reference implementation of the model the calibration files were fitted with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


def _cv2():  # noqa: ANN202 - the module, imported on first use so that pinhole rigs need no OpenCV
    try:
        import cv2
    except ImportError:
        raise ImportError("the calibration has lens distortion, and removing it needs OpenCV: pip install "
                          "'page4d[rig]' (opencv-python-headless)") from None
    return cv2


@dataclass(frozen=True, eq=False)
class Lens:
    """One camera's distortion at the resolution of its frames."""

    intrinsic: np.ndarray
    """``[3, 3]`` float64 pinhole K of the frames (OpenCV pixel centres, like page4d)."""
    distortion: np.ndarray
    """``[4]`` float64 k1, k2, p1, p2."""
    size: tuple[int, int]
    """(width, height) of the frames."""
    _maps: dict = field(default_factory=dict, repr=False)

    def undistort(self, img: Image.Image) -> Image.Image:
        """The frame as the pinhole camera K would see it (bilinear; pixels from outside the frame are black)."""
        if img.size != self.size:
            raise ValueError(f"a {img.size[0]}x{img.size[1]} frame for a lens calibrated at "
                             f"{self.size[0]}x{self.size[1]}")
        cv2 = _cv2()
        if not self._maps:  # one remap table per camera, built on its first frame
            self._maps["xy"] = cv2.initUndistortRectifyMap(
                self.intrinsic, self.distortion, None, self.intrinsic, self.size, cv2.CV_32FC1)
        map_x, map_y = self._maps["xy"]
        pixels = cv2.remap(np.asarray(img), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return Image.fromarray(pixels)
