"""Synthetic multi-view landmark data from a head model, for tests and benchmarks of the fitter.

`arc_cameras` places OpenCV cameras on a yaw (× pitch) arc around a point, looking at it;
`random_params` draws plausible FLAME parameters; `project_landmarks` makes the (478, 2)
MediaPipe-ordered observations (NaN for landmarks the model does not embed), optionally with
Gaussian pixel noise; `corrupt_views` replaces whole views by gross errors (another face, or the
true points shuffled) to test robustness; `perturb_camera` moves a camera by a known rotation
and translation.
"""
from __future__ import annotations

import numpy as np
import torch

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.fit.report import FrameParams
from flame_fitting.fit.so3 import rodrigues_np
from flame_fitting.head.head_model import HeadModel
from flame_fitting.head.landmarks_embed import N_MEDIAPIPE


def arc_cameras(n: int, target: np.ndarray, distance: float = 1.0, yaw_deg: tuple[float, float] = (-70, 70),
                pitch_deg: tuple[float, float] = (0, 0), size: int = 512, focal: float = 1500.0) -> dict[str, Camera]:
    """n cameras with yaw evenly over `yaw_deg` and pitch alternating over `pitch_deg` (cycling through 3 rows),
    at `distance` metres from `target` (3,), looking at it, face along +z. Names cam00, cam01, ..."""
    yaws = np.radians(np.linspace(*yaw_deg, n))
    pitches = np.radians(np.array(pitch_deg[0] + (pitch_deg[1] - pitch_deg[0]) * ((np.arange(n) % 3) / 2.0)))
    K = intrinsics(focal, focal, size / 2, size / 2)
    cams = {}
    for i, (a, b) in enumerate(zip(yaws, pitches)):
        eye = np.asarray(target, np.float64) + distance * np.array([np.sin(a) * np.cos(b), np.sin(b),
                                                                    np.cos(a) * np.cos(b)])
        cams[f"cam{i:02d}"] = Camera(K=K, world_to_cam=look_at(eye, target), width=size, height=size,
                                     name=f"cam{i:02d}")
    return cams


def random_params(model: HeadModel, rng: np.random.Generator, shape: np.ndarray | None = None, expr_sigma: float = 1.0,
                  jaw_max: float = 0.15, rot_deg: float = 15.0, transl_m: float = 0.02, eyes: float = 0.0
                  ) -> FrameParams:
    """Plausible parameters: shape ~ N(0, 1) (unless given), expr ~ N(0, expr_sigma²), jaw opening up to jaw_max rad,
    head rotation up to rot_deg per axis, translation up to transl_m, neck zero, eyes ~ U(±eyes) rad."""
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return FrameParams(
        shape=f32(rng.standard_normal(model.n_shape) if shape is None else shape),
        expr=f32(expr_sigma * rng.standard_normal(model.n_expr)),
        jaw_pose=f32([rng.uniform(0, jaw_max), 0, 0]), neck_pose=f32(np.zeros(3)),
        eye_pose=f32(rng.uniform(-eyes, eyes, 6)), global_orient=f32(np.radians(rng.uniform(-rot_deg, rot_deg, 3))),
        transl=f32(rng.uniform(-transl_m, transl_m, 3)))


def model_outputs(model: HeadModel, params: FrameParams) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and MediaPipe-embedded landmarks (L, 3), float64."""
    with torch.no_grad():
        out = model(**params.tensors())
    return out.vertices[0].double().numpy(), out.landmarks_mp[0].double().numpy()


def project_landmarks(model: HeadModel, cameras: dict[str, Camera], params: FrameParams, noise_px: float = 0.0,
                      rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """{camera: (478, 2) float32 pixels} of the embedded landmarks (NaN for the others), + N(0, noise_px²) noise."""
    _, lmk = model_outputs(model, params)
    idx = model.mp_landmark_indices.numpy()
    out = {}
    for name, cam in cameras.items():
        uv = np.full((N_MEDIAPIPE, 2), np.nan)
        uv[idx] = cam.project(lmk)[0]
        if noise_px:
            uv[idx] += noise_px * rng.standard_normal((len(idx), 2))
        out[name] = uv.astype(np.float32)
    return out


def corrupt_views(views: dict[str, np.ndarray], names: list[str], rng: np.random.Generator,
                  other: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Gross errors in the views `names`: the landmarks of another face (`other`, same cameras) if given,
    else the view's own landmarks shuffled among themselves."""
    out = dict(views)
    for n in names:
        if other is not None:
            out[n] = other[n].copy()
        else:
            pts = views[n].copy()
            ok = np.flatnonzero(np.isfinite(pts[:, 0]))
            pts[ok] = pts[rng.permutation(ok)]
            out[n] = pts
    return out


def perturb_camera(cam: Camera, rng: np.random.Generator, rot_deg: float, trans_m: float) -> Camera:
    """The camera moved by a rotation of exactly rot_deg about a random axis (about its own centre) and a
    translation of exactly trans_m in a random direction."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    d = rng.standard_normal(3)
    d /= np.linalg.norm(d)
    w2c = cam.world_to_cam.astype(np.float64)
    R = rodrigues_np(axis * np.radians(rot_deg)) @ w2c[:3, :3]
    centre = cam.center.astype(np.float64) + trans_m * d
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, -R @ centre
    return cam.with_pose(m)
