"""What an OpenCV pinhole `K` may hold (geometry/camera.py `Camera` runs `check_intrinsics` on every camera).

Refused, each with one line naming the camera: a K that is not [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0;
a skew s beyond MAX_SKEW_RATIO of fx (no consumer of a geoface camera may need it: OpenCV's undistortion at import
and the COLMAP / nerfstudio / VHAP exports have no skew term); an image corner more than MAX_VIEW_ANGLE_DEG from the
optical axis (a principal point far outside the image, a focal length far too small); a horizontal or vertical field
of view under MIN_FIELD_OF_VIEW_DEG (a focal length far too large). Every real capture rig meets each bound. Resizing
an image changes none of the three measures; cropping keeps the skew ratio and narrows the field of view to the crop's.
"""
from __future__ import annotations

import math

import numpy as np

from flame_fitting.core.errors import GeofaceError


class CameraError(GeofaceError, ValueError):
    """A camera that is not a valid OpenCV pinhole camera."""


MAX_VIEW_ANGLE_DEG = 85.0  # no pinhole image reaches further from the optical axis (a 170° field of view)
# A 600 mm lens on a full-frame sensor sees 3.4° × 2.3°, 800 mm 2.6° × 1.7°; NeRSemble's ~7000 px over 2200 px ~18°.
# Under 1° a head (0.25 m) fills the frame only from 14 m away: a focal length in the wrong unit or for another size.
MIN_FIELD_OF_VIEW_DEG = 1.0
# Skew |K[0, 1]| / fx allowed (rounding of a zero): dropping it moves no pixel by more than 1e-6 × the image's
# height / 2 · fx / fy (0.005 px in a 10,000-px-tall image).
MAX_SKEW_RATIO = 1e-6
CALIBRATION_CAUSE = "K is for another size or unit, or damaged"  # what a refused field of view or view angle suggests


def check_intrinsics(K: np.ndarray, width: int, height: int, what: str, cause: str = CALIBRATION_CAUSE) -> None:
    """CameraError unless K (3, 3) is a plausible pinhole K for a width × height image (module docstring); `cause`
    ends a refused field of view or view angle's message (`Camera.cropped` names the crop instead of the calibration)."""
    K = np.asarray(K, np.float64)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1 or np.any(K[2, :2] != 0) or K[1, 0] != 0:
        raise CameraError(f"{what}: K must be [[fx,s,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0, got {K.tolist()}")
    if abs(K[0, 1]) > MAX_SKEW_RATIO * K[0, 0]:
        raise CameraError(f"{what}: K has skew K[0, 1] = {K[0, 1]:.6g} ({abs(K[0, 1]) / K[0, 0]:.3g} of fx, more than "
                          f"{MAX_SKEW_RATIO:g}); geoface's cameras have none (OpenCV's undistortion and the COLMAP, "
                          f"nerfstudio and VHAP exports drop it): calibrate without skew")
    check_view_angle(K, width, height, what, cause)
    for axis, f, c, n in (("horizontal", K[0, 0], K[0, 2], width), ("vertical", K[1, 1], K[1, 2], height)):
        fov = math.degrees(math.atan(c / f) + math.atan((n - c) / f))
        if fov < MIN_FIELD_OF_VIEW_DEG:
            raise CameraError(f"{what}: a {axis} field of view of {fov:.3g}° (focal length {f:.6g} px over {n} px) is "
                              f"under {MIN_FIELD_OF_VIEW_DEG:g}°, narrower than any capture lens (600 mm on full frame "
                              f"sees 3.4° × 2.3°); {cause}")


def check_view_angle(K: np.ndarray, width: int, height: int, what: str, cause: str = CALIBRATION_CAUSE) -> None:
    """CameraError unless every image corner is within MAX_VIEW_ANGLE_DEG of K's optical axis (a principal point far
    outside the image, a focal length far too small: K of another size or unit); crops and resizes of real cameras pass."""
    K = np.asarray(K, np.float64)
    tan = np.maximum(np.abs(K[:2, 2]), np.abs(np.array([width, height]) - K[:2, 2])) / np.diag(K)[:2]
    angle = math.degrees(math.atan(math.hypot(*tan)))
    if angle > MAX_VIEW_ANGLE_DEG:
        raise CameraError(f"{what}: an image corner is {angle:.3f}° from the optical axis (more than {MAX_VIEW_ANGLE_DEG:g}°, "
                          f"no pinhole camera sees that far): principal point ({K[0, 2]:.6g}, {K[1, 2]:.6g}), focal length "
                          f"({K[0, 0]:.6g}, {K[1, 1]:.6g}), {width}×{height} image; {cause}")
