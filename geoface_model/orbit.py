"""Cameras for generation: the camera of an in-the-wild photo, the model-resolution crop around the head, and
target cameras on an orbit around it. World frame everywhere = the head model's canonical frame (FLAME: metres,
y up, face along +z, no global rotation / translation) — the frame of the generated UV position map and mesh.

Camera of a photo (`estimate_photo_camera`), single view, no calibration:
1. intrinsics: an assumed 50 mm-equivalent lens, f = 50 / 43.27 · image diagonal in pixels (43.27 mm is the
   full-frame diagonal), principal point at the image centre, no distortion;
2. PnP (OpenCV SQPnP, then iterative refinement) of the neutral head model's embedded MediaPipe landmarks
   against the detected ones -> initial head pose;
3. `flame_fitting.fit.fit_sequence` on that one view with the camera fixed (identity / expression / jaw / pose by
   Levenberg-Marquardt from the PnP pose). `FitConfig.min_views` is 2 by default; here it is set to 1 on
   purpose (the pose comes from the PnP initialisation, not from triangulation). If the fit does not end
   "ok", the PnP pose of the neutral head is kept and the reason noted;
4. the camera in the canonical frame: world_to_cam = camera_from_posed · posed_from_canonical, the latter the
   exact rigid transform between the fitted posed and canonical vertices (`geometry.rigid.rigid_fit`).
Depth (and so the distance of the orbit) comes from the head model's metric size through the assumed focal
length: a wrong focal length changes the distance and the perspective, not the framing.

Crop (`head_crop`): a square centred on the projection of the head centre (halfway between crown and chin, as
the synthetic rigs aim), whose side makes the crown-to-chin height fill `fill` of it (synthetic captures: 0.5–0.6),
padded by edge replication where it leaves the photo, resized to the model resolution.

Orbit (`orbit_cameras`): n cameras at the reference camera's distance from the head centre and its elevation,
yaws evenly spread over `yaw_range_deg` (head-relative: 0 = frontal, + = the subject's left, as the synthetic
rigs), looking at the head centre with the head's up axis up, all with the reference intrinsics.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.camera import Camera, look_at
from flame_fitting.fit import FitConfig, FrameParams, fit_sequence
from flame_fitting.geometry.rigid import rigid_fit

FULL_FRAME_DIAGONAL_MM = 43.27
DEFAULT_FOCAL_MM = 50.0
DEFAULT_FILL = 0.55


class CameraEstimateError(GeofaceError, ValueError):
    """The photo's camera could not be estimated (too few landmarks, degenerate PnP)."""


@dataclass
class PhotoCamera:
    camera: Camera               # the full photo's camera, world = canonical head frame
    centre: np.ndarray           # (3,) head centre (canonical frame), halfway between crown and chin
    head_height: float           # crown-to-chin height in metres
    canonical_vertices: np.ndarray  # (V, 3) float32 fitted canonical head (neutral head on the PnP fallback)
    params: FrameParams | None   # fitted parameters (None on the PnP fallback)
    rms_px: float                # landmark reprojection RMSE of the chosen pose (pixels)
    method: str                  # "fit" | "pnp"
    note: str                    # why the fit was not used, else ""


def assumed_intrinsics(width: int, height: int, focal_mm: float = DEFAULT_FOCAL_MM) -> np.ndarray:
    """K (3,3) float32 of a `focal_mm` full-frame-equivalent lens for a width×height image."""
    f = focal_mm / FULL_FRAME_DIAGONAL_MM * float(np.hypot(width, height))
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float32)


def pnp_pose(points3d: np.ndarray, points2d: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, float]:
    """points3d (L,3), points2d (L,2) pixels (finite rows used), K (3,3) -> world_to_cam (4,4) float64, RMSE px."""
    ok = np.isfinite(points2d).all(1) & np.isfinite(points3d).all(1)
    if ok.sum() < 6:
        raise CameraEstimateError(f"PnP needs at least 6 landmarks, got {int(ok.sum())}")
    X, x, K64 = points3d[ok].astype(np.float64), points2d[ok].astype(np.float64), np.asarray(K, np.float64)
    good, rvec, tvec = cv2.solvePnP(X, x, K64, None, flags=cv2.SOLVEPNP_SQPNP)
    if not good:
        raise CameraEstimateError("PnP failed on the landmarks")
    _, rvec, tvec = cv2.solvePnP(X, x, K64, None, rvec, tvec, True, flags=cv2.SOLVEPNP_ITERATIVE)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    pc = X @ m[:3, :3].T + m[:3, 3]
    if (pc[:, 2] <= 0).any():
        raise CameraEstimateError("PnP put landmarks behind the camera")
    uv = pc[:, :2] / pc[:, 2:] @ K64[:2, :2].T + K64[:2, 2]
    return m, float(np.sqrt(((uv - x) ** 2).sum(1).mean()))


def head_extent(canonical: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """canonical vertices (V,3), embedded face landmarks (L,3) -> head centre (3,), crown-to-chin height (m).
    Chin = the lowest face landmark; centre halfway between crown and chin, mid-width and mid-depth of the head
    above the chin (the point the synthetic rigs aim at)."""
    v = np.asarray(canonical, np.float64)
    chin = float(np.nanmin(np.asarray(landmarks, np.float64)[:, 1]))
    top = v[:, 1].max()
    above = v[v[:, 1] > chin]
    cx, cz = 0.5 * (above[:, 0].min() + above[:, 0].max()), 0.5 * (above[:, 2].min() + above[:, 2].max())
    return np.array([cx, 0.5 * (top + chin), cz]), float(top - chin)


def _canonical(model, params: FrameParams | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> canonical vertices (V,3), canonical landmarks (L,3), posed vertices (V,3), posed landmarks (L,3)."""
    with torch.no_grad():
        if params is None:
            out = model()
            return (out.vertices[0].double().numpy(), out.landmarks_mp[0].double().numpy()) * 2
        p = params.tensors()
        posed = model(**p)
        canon = model(**{k: v for k, v in p.items() if k not in ("global_orient", "transl")})
    return (canon.vertices[0].double().numpy(), canon.landmarks_mp[0].double().numpy(),
            posed.vertices[0].double().numpy(), posed.landmarks_mp[0].double().numpy())


def estimate_photo_camera(model, landmarks: np.ndarray, width: int, height: int, focal_mm: float = DEFAULT_FOCAL_MM,
                          fit: bool = True, name: str = "photo") -> PhotoCamera:
    """model: `flame_fitting.head.head_model.HeadModel`; landmarks (478,2) MediaPipe pixels of the photo (NaN rows
    allowed). See the module docstring for the method."""
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (478, 2):
        raise CameraEstimateError(f"landmarks must be (478, 2) MediaPipe pixels, got {lm.shape}")
    K = assumed_intrinsics(width, height, focal_mm)
    ids = model.mp_landmark_indices.cpu().numpy()
    canon0, lmk0, _, _ = _canonical(model, None)
    w2c_pnp, rms_pnp = pnp_pose(lmk0, lm[ids], K)
    method, note, params = "pnp", "", None
    posed_from_canon, canon, lmk_canon, rms = w2c_pnp, canon0, lmk0, rms_pnp
    if fit:
        root = model().joints[0, 0].detach().double().numpy()
        Rm, t = w2c_pnp[:3, :3], w2c_pnp[:3, 3]
        z = np.zeros
        init = FrameParams(shape=z(model.n_shape, np.float32), expr=z(model.n_expr, np.float32), jaw_pose=z(3, np.float32),
                           neck_pose=z(3, np.float32), eye_pose=z(6, np.float32),
                           global_orient=cv2.Rodrigues(Rm)[0].ravel().astype(np.float32),
                           transl=(t + Rm @ root - root).astype(np.float32))  # smplx: R (x - root) + root + transl
        cam = Camera(K=K, world_to_cam=np.eye(4), width=width, height=height, name=name)
        res = fit_sequence(model, {name: cam}, {0: {name: lm}}, FitConfig(min_views=1, threads=1), progress=False,
                           init={0: init})
        st = res.status[0]
        if st.status == "ok":
            params = res.params[0]
            canon, lmk_canon, posed, lmk_posed = _canonical(model, params)
            R, tt, _ = rigid_fit(canon, posed)
            posed_from_canon = np.eye(4)
            posed_from_canon[:3, :3], posed_from_canon[:3, 3] = R, tt
            uv, _ = cam.project(lmk_posed)
            ok = np.isfinite(lm[ids]).all(1)
            rms = float(np.sqrt(((uv[ok] - lm[ids][ok]) ** 2).sum(1).mean()))
            method = "fit"
        else:
            note = f"single-view fit {st.status} ({st.reason}); kept the PnP pose of the neutral head"
    camera = Camera(K=K, world_to_cam=posed_from_canon, width=width, height=height, name=name)
    centre, h = head_extent(canon, lmk_canon)
    return PhotoCamera(camera, centre, h, canon.astype(np.float32), params, rms, method, note)


def head_crop(camera: Camera, centre: np.ndarray, head_height: float, fill: float = DEFAULT_FILL) -> tuple[int, int, int]:
    """Square crop (x0, y0, side) in pixels of `camera`'s image: centred on the head centre's projection, the
    crown-to-chin height filling `fill` of the side."""
    if not 0 < fill <= 1:
        raise ValueError(f"head_crop: fill must be in (0, 1], got {fill}")
    uv, z = camera.project(np.asarray(centre, np.float64)[None])
    if z[0] <= 0:
        raise CameraEstimateError("head_crop: the head centre is behind the camera")
    f = 0.5 * (camera.K[0, 0] + camera.K[1, 1])
    side = max(8, int(round(f * head_height / z[0] / fill)))
    return int(round(uv[0, 0] - side / 2)), int(round(uv[0, 1] - side / 2)), side


def crop_view(image: np.ndarray, camera: Camera, box: tuple[int, int, int], size: int) -> tuple[np.ndarray, Camera]:
    """image (H,W,3) uint8, box (x0, y0, side) -> (size, size, 3) uint8 crop (edges replicated outside the image)
    and its camera (K cropped then rescaled; pixel centres stay consistent)."""
    x0, y0, side = box
    H, W = image.shape[:2]
    pad = [max(0, -y0), max(0, y0 + side - H), max(0, -x0), max(0, x0 + side - W)]
    img = cv2.copyMakeBorder(image, *pad, cv2.BORDER_REPLICATE) if any(pad) else image
    crop = img[y0 + pad[0]: y0 + pad[0] + side, x0 + pad[2]: x0 + pad[2] + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp), camera.cropped(x0, y0, side, side).resized(size, size)


def orbit_cameras(reference: Camera, centre: np.ndarray, n_views: int, yaw_range_deg: tuple[float, float] = (-60.0, 60.0),
                  pitch_deg: float | None = None, prefix: str = "view") -> list[Camera]:
    """n_views cameras around `centre` (canonical frame), each looking at it: the reference's distance, image size
    and focal lengths, the principal point at the image centre (so the head centre is there, as in the reference
    crop: the crop's K keeps the photo's principal point offset, which put the head centre off the middle of every
    view — the chin below the frame of a portrait, the whole head out of it for a face far from the photo's centre),
    yaws evenly over yaw_range_deg (one view: the middle), elevation = the reference's unless pitch_deg is given."""
    if n_views < 1:
        raise ValueError(f"orbit_cameras: n_views must be >= 1, got {n_views}")
    c = np.asarray(centre, np.float64)
    d = reference.center.astype(np.float64) - c
    dist = float(np.linalg.norm(d))
    if dist < 1e-6:
        raise ValueError("orbit_cameras: the reference camera sits at the head centre")
    pitch = np.radians(pitch_deg) if pitch_deg is not None else np.arctan2(d[1], np.hypot(d[0], d[2]))
    lo, hi = yaw_range_deg
    yaws = np.radians(np.linspace(lo, hi, n_views) if n_views > 1 else [0.5 * (lo + hi)])
    K = np.array(reference.K, copy=True)
    K[0, 2], K[1, 2] = reference.width / 2, reference.height / 2
    cams = []
    for i, a in enumerate(yaws):
        eye = c + dist * np.array([np.sin(a) * np.cos(pitch), np.sin(pitch), np.cos(a) * np.cos(pitch)])
        cams.append(Camera(K=K, world_to_cam=look_at(eye, c, (0.0, 1.0, 0.0)), width=reference.width,
                           height=reference.height, name=f"{prefix}_{i:02d}"))
    return cams
