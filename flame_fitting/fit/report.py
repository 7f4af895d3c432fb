"""Outputs of the fitter (dataclasses, tables) and gauge-free camera evaluation.

`SequenceFit` holds, for one sequence: per-frame parameters, fitted vertices, the refined cameras,
a per-(frame, camera) residual table, the cost per LM iteration, per-frame status and timings.
Camera errors are measured in the head's frame: camera-from-head = world_to_cam @ head_to_world,
which is invariant to the rigid gauge shared by the head pose and all cameras (the head frame is
anchored on the observed face, see `head_to_world`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from flame_fitting.geometry.camera import Camera
from flame_fitting.fit.config import FitConfig
from flame_fitting.fit.so3 import angle_deg, rodrigues_np
from flame_fitting.head.head_model import HeadModel

PARAM_NAMES = ("shape", "expr", "jaw_pose", "neck_pose", "eye_pose", "global_orient", "transl")


@dataclass
class FrameParams:
    """FLAME parameters of one frame (float32; widths of the head model: n_shape, n_expr)."""

    shape: np.ndarray          # (n_shape,) the sequence's identity
    expr: np.ndarray           # (n_expr,)
    jaw_pose: np.ndarray       # (3,) axis-angle
    neck_pose: np.ndarray      # (3,)
    eye_pose: np.ndarray       # (6,) left | right
    global_orient: np.ndarray  # (3,)
    transl: np.ndarray         # (3,) metres

    def tensors(self) -> dict[str, torch.Tensor]:
        """Batch-of-one tensors for `HeadModel.forward(**p.tensors())`."""
        return {k: torch.as_tensor(np.asarray(v, np.float32))[None] for k, v in asdict(self).items()}


@dataclass
class FrameStatus:
    frame: int
    status: str        # "ok" | "skipped" | "diverged"
    reason: str = ""   # why skipped / diverged
    note: str = ""     # warnings that did not stop the fit (e.g. an odd initial scale)


@dataclass
class SequenceFit:
    subject: str
    sequence: str
    params: dict[int, FrameParams]        # fitted frames (ok and diverged)
    vertices: dict[int, np.ndarray]       # frame -> (V, 3) float32, from HeadModel.forward
    landmarks: dict[int, np.ndarray]      # frame -> (L, 3) float32 fitted embedded landmarks
    landmark_indices: np.ndarray          # (L,) MediaPipe ids of the embedded landmarks
    cameras: dict[str, Camera]            # refined cameras (the input ones when not refining)
    residuals: pd.DataFrame               # one row per (frame, camera), see `residual_table`
    history: pd.DataFrame                 # one row per LM iteration (cost before it, candidate cost, accepted, gain,
                                          # λ, robust scale, median error) + a last row with the final cost
    status: dict[int, FrameStatus]        # every frame given, incl. skipped ones
    timing: dict[str, float]              # seconds: init, solve, outputs, total, per_frame
    converged: bool
    config: FitConfig
    noise: pd.DataFrame | None = None     # landmark noise model per group (noise.NoiseModel.table); None when off
    silhouette: dict | None = None        # silhouette term: used, n_masks, n_samples_used, median_px (fitter.py)
    points: dict | None = None            # surface-point term: used, n_points, n_points_used, median_mm (fitter.py)
    camera_refinement: dict | None = None  # refine_cameras: accepted, reason, objective_before / _after, threshold,
                                           # max_rot_deg, max_centre_mm (refine.py); None when not refining

    @property
    def frames(self) -> list[int]:
        return sorted(self.params)

    def status_table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(s) for s in self.status.values()],
                            columns=["frame", "status", "reason", "note"]).sort_values("frame", ignore_index=True)

    def stacked(self) -> dict[str, np.ndarray]:
        """Arrays over the fitted frames (F, ...) for saving: frame, every parameter, vertices, ok flag."""
        fr = self.frames
        out = {"frame": np.array(fr, np.int64), "ok": np.array([self.status[f].status == "ok" for f in fr])}
        for k in PARAM_NAMES:
            out[k] = np.stack([getattr(self.params[f], k) for f in fr]) if fr else np.zeros((0,), np.float32)
        out["vertices"] = np.stack([self.vertices[f] for f in fr]) if fr else np.zeros((0, 0, 3), np.float32)
        return out

    def landmarks_2d(self, frame: int, camera: str) -> np.ndarray:
        """Fitted landmarks of `frame` projected into refined `camera`: (478, 2) pixels, NaN where not embedded."""
        out = np.full((478, 2), np.nan, np.float32)
        out[self.landmark_indices] = self.cameras[camera].project(self.landmarks[frame])[0]
        return out


def residual_table(frames: list[int], cam_names: list[str], errors: np.ndarray, observed: np.ndarray,
                   vis: np.ndarray, inlier_px: float) -> pd.DataFrame:
    """Per (frame, camera): landmarks used, median / mean / p95 pixel error, visible and inlier fractions.

    errors (F, C, L) px (NaN where not used); observed (F, C, L) bool; vis (F, C, L) visibility weights.
    """
    rows = []
    for i, fr in enumerate(frames):
        for c, name in enumerate(cam_names):
            e = errors[i, c][np.isfinite(errors[i, c])]
            n_obs = int(observed[i, c].sum())
            stats = (np.median(e), e.mean(), np.percentile(e, 95), float((e < inlier_px).mean())) if e.size else (
                np.nan,) * 4
            rows.append({"frame": fr, "camera": name, "n_landmarks": int(e.size), "median_px": float(stats[0]),
                         "mean_px": float(stats[1]), "p95_px": float(stats[2]),
                         "visible_fraction": float((vis[i, c][observed[i, c]] >= 0.5).mean()) if n_obs else np.nan,
                         "inlier_fraction": float(stats[3])})
    return pd.DataFrame(rows, columns=["frame", "camera", "n_landmarks", "median_px", "mean_px", "p95_px",
                                       "visible_fraction", "inlier_fraction"])


def head_to_world(model: HeadModel, params: FrameParams) -> np.ndarray:
    """(4, 4) float64 rigid transform of the head's frame: rotation of the head (global_orient ∘ neck_pose),
    origin at the centroid of the embedded landmarks (the observed face) in world coordinates.

    The face-anchored origin keeps the frame independent of identity components that move the model's
    origin relative to the face (invisible to landmarks), and the composed rotation of the split between
    global_orient and neck_pose (ambiguous for face landmarks)."""
    with torch.no_grad():
        lmk = model(**params.tensors()).landmarks_mp[0].double().numpy()
    out = np.eye(4)
    out[:3, :3] = rodrigues_np(params.global_orient) @ rodrigues_np(params.neck_pose)
    out[:3, 3] = lmk.mean(0)
    return out


def head_frame_vertices(model: HeadModel, params: FrameParams, vertices: np.ndarray) -> np.ndarray:
    """World vertices (V, 3) -> the same in the head's frame (`head_to_world`), for gauge-free comparisons."""
    H = head_to_world(model, params)
    return (np.asarray(vertices, np.float64) - H[:3, 3]) @ H[:3, :3]


def camera_errors(cams: dict[str, Camera], head: np.ndarray, cams_ref: dict[str, Camera], head_ref: np.ndarray
                  ) -> pd.DataFrame:
    """Gauge-free camera errors: compare world_to_cam @ head_to_world of two solutions, per camera.

    head, head_ref: (4, 4) head_to_world of the same frame in each solution. Returns a table with
    camera, rot_deg (angle of the relative rotation), trans_mm (difference of the head origin in the camera
    frame), focal_ratio (fx / fx_ref).
    """
    rows = []
    for name, ref in cams_ref.items():
        a = cams[name].world_to_cam.astype(np.float64) @ head
        b = ref.world_to_cam.astype(np.float64) @ head_ref
        rows.append({"camera": name, "rot_deg": angle_deg(a[:3, :3] @ b[:3, :3].T),
                     "trans_mm": float(np.linalg.norm(a[:3, 3] - b[:3, 3]) * 1e3),
                     "focal_ratio": float(cams[name].K[0, 0] / ref.K[0, 0])})
    return pd.DataFrame(rows, columns=["camera", "rot_deg", "trans_mm", "focal_ratio"])


def rig_similarity(cams: dict[str, Camera], ref: dict[str, Camera]) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R (3, 3), t (3,)) taking the world of `cams` to that of `ref` (x_ref ≈ s R x + t) that
    best aligns the rigs: R the chordal mean of the cameras' relative orientations (R_ref_cᵀ R_c), s and t from the
    camera centres by least squares. For comparing a refined rig (and its heads) with a reference: the rig's rigid
    motion is unobservable, so refinement errors are measured after removing it."""
    names = sorted(ref)
    M = sum(ref[n].R.astype(np.float64).T @ cams[n].R.astype(np.float64) for n in names)
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    a = np.stack([cams[n].center for n in names]).astype(np.float64)
    b = np.stack([ref[n].center for n in names]).astype(np.float64)
    ma, mb = a.mean(0), b.mean(0)
    s = float(((b - mb) * ((a - ma) @ R.T)).sum() / ((a - ma) ** 2).sum())
    return s, R, mb - s * R @ ma


def rig_errors(cams: dict[str, Camera], ref: dict[str, Camera]) -> pd.DataFrame:
    """Per camera of `ref`: rot_deg and centre_mm errors of `cams` after `rig_similarity` (gauge-free)."""
    s, R, t = rig_similarity(cams, ref)
    rows = [{"camera": n, "rot_deg": angle_deg(cams[n].R.astype(np.float64) @ R.T @ ref[n].R.astype(np.float64).T),
             "centre_mm": float(np.linalg.norm(s * R @ cams[n].center.astype(np.float64) + t - ref[n].center) * 1e3)}
            for n in sorted(ref)]
    return pd.DataFrame(rows, columns=["camera", "rot_deg", "centre_mm"])
