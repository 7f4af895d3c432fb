"""Calibrate the MediaPipe landmark embedding against the detector, on renders of the head model.

MediaPipe does not report the surface points the embedding says; part of its error is a 3D offset per
landmark that repeats in every frame and subject, which a fit cannot tell from identity (docs/fitting.md,
"Landmark embedding calibration"). Calibration subjects with known geometry are rendered and detected
(`pipelines.synthetic.calibration.calibrate_head_model` does that and calls this module's maths). (1) Lift: each detection of a truly visible point is cast onto the ground-truth surface (ray
vs the faces the pixel→surface map shows around the pixel) where the surface faces the camera away
from silhouettes and occlusion edges; that (face, barycentrics) is a template point; per landmark the
geometric median of them, snapped to the template surface. (2) Refine: per landmark, the surface point
minimising the robust reprojection error to its usable detections (Gauss-Newton in the tangent plane).
Face-oval (contour) points slide along the silhouette with the view and keep their original embedding,
as do points with fewer than `min_samples` lifted detections. Output beside the original (which the
synthetic generator keeps texturing through, so calibration never feeds back into the data):
`mediapipe_landmark_embedding_calibrated.npz` (the original's keys + `calibrated`, `shift_mm`,
`n_samples`) and its provenance `.json`; the fit uses it when present (`FitConfig.calibrated_embedding`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flame_fitting.core.arrays import load_npz
from flame_fitting.geometry.camera import Camera
from flame_fitting.core.fileio import write_json, write_npz
from flame_fitting.head.head_model import CALIBRATED_EMBEDDING, CALIBRATION_JSON
from flame_fitting.core.params import spec
from flame_fitting.geometry.surface_points import (closest_points, dot, geometric_median, ray_triangles,
                                          template_points)



def contour_ids() -> np.ndarray:
    """MediaPipe's face-oval ids (FACEMESH_FACE_OVAL), sorted (36,) int64."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    return np.array(sorted({i for edge in FACEMESH_FACE_OVAL for i in edge}), np.int64)


@dataclass
class CalibrationConfig:
    """Calibration captures and sample selection (params.yaml `head_model.calibration`)."""

    subjects: int = spec(8, "calibration identities rendered", lo=1, hi=1000)
    frames: int = spec(2, "frames per subject (frame 0 neutral, then expressions / head turns)", lo=1, hi=100)
    cameras: int = spec(16, "cameras per subject (yaw -90°…90°)", lo=1, hi=256)
    resolution: int = spec(512, "image size (pixels); use the resolution the fits will see", lo=64, hi=4096)
    seed: int = spec(1000, "generator seed of the calibration subjects: keep it different from the seed of any "
                           "synthetic capture evaluated with the calibrated embedding", lo=0)
    min_facing_cos: float = spec(0.3, "lift a detection only where the surface faces the camera at least this much "
                                      "(cos of normal vs direction to the camera)", lo=-1.0, hi=1.0)
    edge_px: int = spec(3, "… and every pixel within this many pixels shows the head", lo=1, hi=32)
    depth_jump_m: float = spec(0.015, "… with a depth span below this (no occlusion edge), metres", lo=0.0)
    max_image_error: float = spec(0.1, "skip views whose mean detection error vs the ground truth exceeds this "
                                       "fraction of the face size (a wrong face)", lo=0.0)
    min_samples: int = spec(8, "a landmark with fewer lifted detections keeps its original embedding", lo=1)
    keep_contour: bool = spec(True, "face-oval points keep their original embedding (they slide along the "
                                    "silhouette: no surface point is theirs)")
    refine_iterations: int = spec(10, "Gauss-Newton iterations of the reprojection refinement (0 = lift only)",
                                  lo=0, hi=100)
    refine_scale_px: float = spec(3.0, "Cauchy scale of the reprojection refinement (pixels)", lo=0.1)
    workers: int = spec(0, "MediaPipe worker processes (0 = one per CPU)", lo=0, hi=64)


@dataclass
class CalibrationResult:
    face_idx: np.ndarray     # (L,) int64 (original where not calibrated)
    bary: np.ndarray         # (L, 3) float64
    calibrated: np.ndarray   # (L,) bool: estimated (contour / too few samples: False, original kept)
    shift_mm: np.ndarray     # (L,) template distance from the original point
    n_samples: np.ndarray    # (L,) int64 lifted detections
    spread_mm: np.ndarray    # (L,) median distance of the lifted samples to their median (NaN: none)


@dataclass
class FrameViews:
    """One calibration frame: posed mesh and usable detections of the embedded landmarks."""

    verts: np.ndarray        # (V, 3) world vertices
    cams: list[Camera]       # N views
    det: np.ndarray          # (N, L, 2) pixels, NaN where not detected / not visible in truth


def lift_detections(uv: np.ndarray, cam: Camera, verts: np.ndarray, faces: np.ndarray, face_id: np.ndarray,
                    depth: np.ndarray, cfg: CalibrationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Detections uv (L,2) (NaN = none) in view `cam` of the mesh verts (V,3) / faces (F,3) rendered as face_id
    (H,W) (-1 background) / depth (H,W) -> face (L,) int64 (-1: not usable), bary (L,3) of the surface point
    the ray through each pixel hits (Möller–Trumbore against the faces of the 3×3 pixels around it)."""
    h, w = face_id.shape
    face, bary = np.full(len(uv), -1, np.int64), np.zeros((len(uv), 3))
    uv, r = np.asarray(uv, np.float64), cfg.edge_px
    with np.errstate(invalid="ignore"):
        col, row = np.floor(uv[:, 0]), np.floor(uv[:, 1])
        sel = np.flatnonzero(np.isfinite(uv).all(1) & (col >= r) & (col < w - r) & (row >= r) & (row < h - r))
    if sel.size == 0:
        return face, bary
    off = np.arange(-r, r + 1)
    rr = row[sel].astype(np.int64)[:, None, None] + off[None, :, None]
    cc = col[sel].astype(np.int64)[:, None, None] + off[None, None, :]
    nb_f, nb_d = face_id[rr, cc], np.asarray(depth, np.float64)[rr, cc]
    good = (nb_f >= 0).all((1, 2)) & (np.ptp(nb_d, axis=(1, 2)) <= cfg.depth_jump_m)
    sel, nb_f = sel[good], nb_f[good]
    if sel.size == 0:
        return face, bary
    cand = nb_f[:, r - 1:r + 2, r - 1:r + 2].reshape(len(sel), 9)
    tri = np.asarray(verts, np.float64)[faces[cand]]                                # (n, 9, 3 corners, 3)
    d = (np.concatenate([cam.normalized(uv[sel]), np.ones((len(sel), 1))], 1) @ cam.R.astype(np.float64))[:, None]
    o = cam.center.astype(np.float64)
    bc, t = ray_triangles(o, d, tri)
    score = np.where(np.isfinite(t) & (t > 0), np.nan_to_num(bc.min(-1), nan=-np.inf), -np.inf)
    best, n = score.argmax(1), np.arange(len(sel))
    bb = np.clip(bc[n, best], 0.0, 1.0)
    bb /= np.maximum(bb.sum(1, keepdims=True), 1e-12)
    tri = tri[n, best]
    normal, to_cam = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), o - np.einsum("nk,nkd->nd", bb, tri)
    cos = dot(normal, to_cam) / np.maximum(np.linalg.norm(normal, axis=1) * np.linalg.norm(to_cam, axis=1), 1e-18)
    ok = (score[n, best] > -0.1) & (cos >= cfg.min_facing_cos)
    face[sel[ok]], bary[sel[ok]] = cand[n, best][ok], bb[ok]
    return face, bary


def _reprojection(frames: list[FrameViews], faces: np.ndarray, fi: np.ndarray, bc: np.ndarray) -> np.ndarray:
    """Residuals (M, L, 2) over all views of all frames of the surface points (fi (L,), bc (L,3)); NaN unused."""
    out = []
    for fr in frames:
        x = template_points(fi, bc, fr.verts, faces)
        out += [cam.project(x)[0].astype(np.float64) - fr.det[v] for v, cam in enumerate(fr.cams)]
    return np.stack(out)


def refine_reprojection(frames: list[FrameViews], verts: np.ndarray, faces: np.ndarray, face_idx: np.ndarray,
                        bary: np.ndarray, move: np.ndarray, cfg: CalibrationConfig, step_m: float = 5e-4
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Move each landmark with move (L,) True from (face_idx (L,), bary (L,3)) to the surface point minimising
    Σ log(1 + |r|²/s²) over its detections in `frames` (s = refine_scale_px): damped Gauss-Newton in the tangent
    plane of the template verts (V,3) (finite-difference Jacobians, re-snapped to the surface each step; a step
    that does not lower a landmark's cost is not taken and its damping grows) -> new face_idx, bary."""
    L, s2, v = len(face_idx), cfg.refine_scale_px ** 2, np.asarray(verts, np.float64)
    fi, bc, lam = np.asarray(face_idx, np.int64).copy(), np.asarray(bary, np.float64).copy(), np.full(L, 1e-3)
    cost = lambda r: np.nansum(np.log1p((r ** 2).sum(-1) / s2), 0)  # noqa: E731  (M,L,2) -> (L,)
    for _ in range(cfg.refine_iterations if move.any() else 0):
        p, tri = template_points(fi, bc, v, faces), v[faces[fi]]
        nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-30)
        t1 = np.cross(nrm, np.where(np.abs(nrm[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]]))
        t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
        t2 = np.cross(nrm, t1)
        r0 = _reprojection(frames, faces, fi, bc)                                   # (M, L, 2)
        J = np.stack([(_reprojection(frames, faces, *closest_points(p + step_m * t, v, faces)[:2]) - r0) / step_m
                      for t in (t1, t2)], -1)                                       # (M, L, 2, 2)
        ok = np.isfinite(r0).all(-1) & np.isfinite(J).all((-1, -2))
        r0z, J = np.nan_to_num(r0), np.where(ok[..., None, None], J, 0.0)
        wgt = np.where(ok, 1 / (1 + (r0z ** 2).sum(-1) / s2), 0.0)                  # IRLS weights (M, L)
        H = np.einsum("ml,mlai,mlaj->lij", wgt, J, J)
        H += (lam * np.maximum(np.trace(H, axis1=1, axis2=2), 1e-12))[:, None, None] * np.eye(2)
        delta = -np.linalg.solve(H, np.einsum("ml,mlai,mla->li", wgt, J, r0z)[..., None])[..., 0]
        delta *= np.minimum(1.0, 2e-3 / np.maximum(np.linalg.norm(delta, axis=1), 1e-12))[:, None]  # ≤ 2 mm a step
        nf, nb, _ = closest_points(p + delta[:, :1] * t1 + delta[:, 1:] * t2, v, faces)
        better = move & (cost(_reprojection(frames, faces, nf, nb)) < cost(r0))
        fi[better], bc[better] = nf[better], nb[better]
        lam = np.where(better, lam / 3, lam * 4)
    return fi, bc


def calibrate_embedding(samples: list[np.ndarray], frames: list[FrameViews], verts: np.ndarray, faces: np.ndarray,
                        face_idx: np.ndarray, bary: np.ndarray, keep: np.ndarray, cfg: CalibrationConfig
                        ) -> CalibrationResult:
    """samples: per embedded landmark the template points (n_l,3) of its lifted detections; frames: the usable
    detections for the refinement ([] = lift only); verts (V,3) / faces (F,3): the template; face_idx (L,), bary
    (L,3): the original embedding; keep (L,) bool: landmarks that keep it (the contour)."""
    if not len(samples) == len(face_idx) == len(keep):
        raise ValueError(f"calibrate_embedding: {len(samples)} sample sets and {len(keep)} keep flags for "
                         f"{len(face_idx)} landmarks")
    original = template_points(face_idx, bary, verts, faces)
    n = np.array([len(s) for s in samples], np.int64)
    move = (n >= cfg.min_samples) & ~np.asarray(keep, bool)
    centre, spread = original.copy(), np.full(len(n), np.nan)
    for i in np.flatnonzero(n):
        c = geometric_median(samples[i])
        spread[i] = float(np.median(np.linalg.norm(samples[i] - c, axis=1))) * 1e3
        centre[i] = c if move[i] else centre[i]
    fi, bc = np.asarray(face_idx, np.int64).copy(), np.asarray(bary, np.float64).copy()
    if move.any():
        fi[move], bc[move], _ = closest_points(centre[move], verts, faces)
    if frames:
        fi, bc = refine_reprojection(frames, verts, faces, fi, bc, move, cfg)
    shift = np.linalg.norm(template_points(fi, bc, verts, faces) - original, axis=1) * 1e3
    return CalibrationResult(fi, bc, move, shift, n, spread)


def collect(cap, ls, verts_t: np.ndarray, faces: np.ndarray, landmark_indices: np.ndarray, cfg: CalibrationConfig
            ) -> tuple[list[np.ndarray], list[FrameViews], dict]:
    """From a synthetic capture `cap` (gt.npz / gt_raster.npz) and its LandmarkSet `ls`: per embedded landmark the
    template points (n_l,3) of its lifted detections (template verts_t (V,3)), the usable detections per frame,
    and counts (views, detected, used)."""
    keys = ["subject", "sequence", "frame", "camera"]
    m = cap.manifest.merge(ls.table[keys].assign(row_id=np.arange(len(ls.table))), on=keys, how="inner")
    lists: list[list[np.ndarray]] = [[] for _ in landmark_indices]
    frames, stats = [], {"n_views": int(len(m)), "n_detected": 0, "n_views_used": 0}
    for (subject, sequence, gt_path), rows in m.groupby(["subject", "sequence", "gt_path"], sort=True):
        cams = cap.cameras(subject, sequence)
        z = load_npz(cap.root / gt_path, keys=("cameras", "vertices", "lmk_mp_2d", "lmk_mp_visible"))
        names, verts, gt2d, gtvis = list(z["cameras"]), z["vertices"], z["lmk_mp_2d"], z["lmk_mp_visible"]
        z = load_npz(cap.root / Path(gt_path).with_name("gt_raster.npz"), keys=("face_id", "depth"))
        fid_all, dep_all = z["face_id"], z["depth"]
        used_cams, dets = [], []
        for row in rows.itertuples():
            if not ls.table.detected.iat[row.row_id]:
                continue
            stats["n_detected"] += 1
            v = names.index(row.camera)
            det = ls.points[row.row_id][landmark_indices].astype(np.float64)
            gt, vis = gt2d[v][landmark_indices], gtvis[v][landmark_indices]
            if vis.sum() < 3 or (np.linalg.norm(det[vis] - gt[vis], axis=1).mean()
                                 > cfg.max_image_error * np.sqrt(np.prod(np.ptp(gt[vis], axis=0)))):
                continue  # a wrong face (beyond ~60° yaw MediaPipe pastes a frontal face on the cheek)
            det[~vis] = np.nan  # MediaPipe reports hidden points too: they land on some other, visible surface
            face, bary = lift_detections(det, cams[row.camera], verts, faces, fid_all[v], dep_all[v], cfg)
            pts = template_points(np.maximum(face, 0), bary, verts_t, faces)
            for i in np.flatnonzero(face >= 0):
                lists[i].append(pts[i])
            used_cams.append(cams[row.camera])
            dets.append(det)
        if used_cams:
            frames.append(FrameViews(np.asarray(verts, np.float64), used_cams, np.stack(dets)))
            stats["n_views_used"] += len(used_cams)
    return [np.asarray(s, np.float64).reshape(-1, 3) for s in lists], frames, stats


def write_calibrated_embedding(folder: Path | str, res: CalibrationResult, landmark_indices: np.ndarray,
                               provenance: dict) -> Path:
    """Write CALIBRATED_EMBEDDING and CALIBRATION_JSON into the head model folder (each temp file + rename)."""
    folder = Path(folder)
    npz, js = folder / CALIBRATED_EMBEDDING, folder / CALIBRATION_JSON
    write_json(js, provenance, indent=1)
    write_npz(npz, lmk_face_idx=res.face_idx.astype(np.int64), lmk_b_coords=res.bary.astype(np.float64),
              landmark_indices=np.asarray(landmark_indices, np.int64), calibrated=res.calibrated,
              shift_mm=res.shift_mm.astype(np.float32), n_samples=res.n_samples)
    return npz
