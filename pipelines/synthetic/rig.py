"""Camera rigs of the synthetic captures: calibrated OpenCV cameras on a frontal arc around the head.

A rig of n cameras is a jittered grid over (yaw, pitch): yaws evenly spread over `yaw_range_deg`
(each jittered by up to 30% of the spacing), cameras alternating between `camera_rows` pitch rows
(each row's pitch jittered), sorted by yaw and named cam00, cam01, ... Every camera looks at the
neutral head centre (± 5 mm) from a distance drawn from `distance_m`, with a focal length chosen
so the head (crown to chin) fills a drawn fraction of the image height, a small roll and a
principal point near the image centre. One rig per subject (cameras.json of its sequence).
Angles: yaw > 0 puts the camera on the subject's left (+x), pitch > 0 above the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flame_fitting.geometry.camera import Camera, intrinsics, look_at


@dataclass(frozen=True)
class HeadFrame:
    """Where the (neutral) head is: the point cameras look at and its crown-to-chin height."""

    centre: np.ndarray  # (3,) float64 world
    height: float  # m


def head_frame(verts: np.ndarray, chin: np.ndarray) -> HeadFrame:
    """HeadFrame of a neutral head: verts (V,3), chin (3,) (MediaPipe 152). The centre is halfway
    between crown and chin, in the middle of the head's depth and width above the chin."""
    v = np.asarray(verts, np.float64)
    top = v[:, 1].max()
    above = v[v[:, 1] > chin[1]]
    cx = 0.5 * (above[:, 0].min() + above[:, 0].max())
    cz = 0.5 * (above[:, 2].min() + above[:, 2].max())
    return HeadFrame(centre=np.array([cx, 0.5 * (top + chin[1]), cz]), height=float(top - chin[1]))


def camera_angles(n: int, yaw_range, pitch_range, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(yaw (n,), pitch (n,)) in degrees, sorted by yaw, within the ranges (jittered grid)."""
    y0, y1 = yaw_range
    p0, p1 = pitch_range
    if n == 1:
        return np.array([0.5 * (y0 + y1)]), np.array([0.5 * (p0 + p1)])
    step = (y1 - y0) / (n - 1)
    yaw = np.clip(np.linspace(y0, y1, n) + rng.uniform(-0.3, 0.3, n) * step, y0, y1)
    rows = max(1, min(rows, n))
    row_step = (p1 - p0) / rows
    row = np.arange(n) % rows
    pitch = np.clip(p0 + (row + 0.5 + rng.uniform(-0.3, 0.3, n)) * row_step, p0, p1)
    order = np.argsort(yaw, kind="stable")
    return yaw[order], pitch[order]


def camera_names(n: int) -> list[str]:
    width = max(2, len(str(n - 1)))
    return [f"cam{i:0{width}d}" for i in range(n)]


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of vector v (3,) about unit axis (3,) by angle (rad)."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))


def make_rig(n: int, head: HeadFrame, size: int, rng: np.random.Generator, yaw_range=(-90.0, 90.0),
             pitch_range=(-25.0, 25.0), rows: int = 2, distance=(0.9, 1.2), fill=(0.5, 0.6), roll_deg: float = 3.0,
             principal_jitter: float = 0.02) -> dict[str, Camera]:
    """n calibrated size×size cameras around `head` (see the module docstring)."""
    yaw, pitch = camera_angles(n, yaw_range, pitch_range, rows, rng)
    cams = {}
    for name, a, b in zip(camera_names(n), np.radians(yaw), np.radians(pitch)):
        d = rng.uniform(*distance)
        f = rng.uniform(*fill) * size * d / head.height
        c = size / 2 + rng.uniform(-principal_jitter, principal_jitter, 2) * size
        eye = head.centre + d * np.array([np.sin(a) * np.cos(b), np.sin(b), np.cos(a) * np.cos(b)])
        target = head.centre + rng.uniform(-0.005, 0.005, 3)
        view = (target - eye) / np.linalg.norm(target - eye)
        up = _rotate(np.array([0.0, 1.0, 0.0]), view, np.radians(rng.uniform(-roll_deg, roll_deg)))
        cams[name] = Camera(K=intrinsics(f, f, c[0], c[1]), world_to_cam=look_at(eye, target, up), width=size,
                            height=size, name=name)
    return cams


def view_angles(cam_centers: np.ndarray, head_centre: np.ndarray,
                head_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera direction relative to the head's facing direction: cam_centers (N,3), head_centre (3,),
    head_rot (3,3) world rotation of the head -> (yaw (N,), pitch (N,)) degrees."""
    d = (np.asarray(cam_centers, np.float64) - head_centre) @ np.asarray(head_rot, np.float64)  # R^T d, row form
    yaw = np.degrees(np.arctan2(d[:, 0], d[:, 2]))
    pitch = np.degrees(np.arctan2(d[:, 1], np.hypot(d[:, 0], d[:, 2])))
    return yaw, pitch
