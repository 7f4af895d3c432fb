"""Camera refinement from image feature tracks (`refine_cameras` with `camera_features`, docs/fitting.md), and the
same tracks triangulated into surface points for fits without masks (`frame_points`, points.py).

MediaPipe's landmarks are biased per view by several pixels, far more than the sub-pixel parallax that tells a
2° / 20 mm camera error apart from a moved head, so the landmark camera solve cannot recover the cameras (refine.py).
The skin's texture can: per frame, SIFT features inside each view's mask (eroded, so the background and the
silhouette's edge do not count) are matched between every camera and its `camera_feature_neighbours` nearest cameras
(by optical axis) — Lowe's ratio test, mutual best match, a RANSAC epipolar check — and joined into multi-view tracks
(a track that sees one camera twice is dropped). The rig is then bundle-adjusted over the tracks of all frames
(rig_ba.py: rotations and centres, gauge held, priors from the calibration; Huber at `camera_feature_scale_px`,
0.3 px) with the reprojection errors in units of the tracks' own noise (`noise_level_px` of a first solve in 1-px
units, ~0.1 px on rendered skin: weighed at 1 px, the priors held the rig ~100-fold too firmly along its weak modes,
0.11° / 1.35 mm instead of 0.06° / 1.0 mm median on the default capture), each observation weighted by
(median keypoint size / its keypoint size)²: a keypoint's localisation error grows with its scale, and the large
blobs shift most between viewpoints (on the benchmark capture: cameras 0.14° / 1.8 mm median off against 0.18° /
2.8 mm unweighted).

Acceptance, as for the landmark camera solve: the refined rig is kept only if the objective (robust reprojection
cost at 1 px + priors: the tracks' errors are partly shared, so their nominal noise would overstate the evidence)
falls by more than `camera_accept_gain` per free camera parameter from the given cameras'
(points re-optimised with the cameras held), and no camera moves beyond `camera_feature_max_sigmas` (3) prior σ
relative to the rest of the rig (the similarity that no image observes removed: `report.rig_errors`). The priors are
per axis, so a calibration error of 1 σ per axis is √3 σ long: the landmark solve's 1.5 σ bound would refuse half of
the corrections the prior itself expects (a 2° / 20 mm perturbation moves a camera up to 34 mm relative to the rig). Too few tracks
(textureless images, no masks and a busy background) report `usable: False`, and the landmark solve runs instead.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from flame_fitting.geometry.camera import Camera

from .config import FitConfig
from .observations import undistort_px
from .report import rig_errors
from .rig_ba import BAResult, Tracks, bundle_adjust, noise_level_px, prior_cost, reprojection_errors, triangulate
from .so3 import angle_deg

log = logging.getLogger(__name__)
MIN_OBSERVATIONS = 15     # per camera: 30 equations for its 6 unknowns; fewer and the rig is not refined
MIN_PAIR_MATCHES = 12     # matches of a camera pair before the epipolar check


def view_features(gray: np.ndarray, mask: np.ndarray | None, n_features: int = 8000, erode_px: int = 3):
    """SIFT keypoints (k, 3): x, y in pixels (OpenCV's integer-centred convention) and the keypoint's size, and
    descriptors of one view, inside the mask eroded by `erode_px` (None: the whole image)."""
    import cv2

    m = None
    if mask is not None:
        m = cv2.erode((mask > 0).astype(np.uint8) * 255, np.ones((2 * erode_px + 1,) * 2, np.uint8))
    kp, des = cv2.SIFT_create(nfeatures=n_features, contrastThreshold=0.01,
                              enable_precise_upscale=True).detectAndCompute(gray, m)
    return np.array([k.pt + (k.size,) for k in kp], np.float64).reshape(-1, 3), des


def neighbour_pairs(cameras: dict[str, Camera], k: int) -> list[tuple[str, str]]:
    """Each camera with its k nearest cameras by the angle between optical axes, as sorted unique pairs."""
    names = sorted(cameras)
    axis = np.stack([cameras[n].R[2].astype(np.float64) for n in names])
    ang = axis @ axis.T
    pairs = set()
    for i, a in enumerate(names):
        for j in [j for j in np.argsort(-ang[i]) if j != i][:k]:
            pairs.add(tuple(sorted((a, names[j]))))
    return sorted(pairs)


def match_pair(fa, fb, ratio: float = 0.8, ransac_px: float = 1.0) -> np.ndarray:
    """(m, 2) indices of mutual best SIFT matches of two views that pass the ratio test and a RANSAC epipolar check."""
    import cv2

    (pa, da), (pb, db) = fa, fb
    if da is None or db is None or len(pa) < MIN_PAIR_MATCHES or len(pb) < MIN_PAIR_MATCHES:
        return np.zeros((0, 2), int)
    bf = cv2.BFMatcher(cv2.NORM_L2)
    best = lambda ms: {m[0].queryIdx: m[0].trainIdx for m in ms if len(m) == 2 and m[0].distance < ratio * m[1].distance}  # noqa: E731
    ab, ba = best(bf.knnMatch(da, db, k=2)), best(bf.knnMatch(db, da, k=2))
    good = np.array([(i, j) for i, j in ab.items() if ba.get(j) == i], int).reshape(-1, 2)
    if len(good) < MIN_PAIR_MATCHES:
        return np.zeros((0, 2), int)
    _, inl = cv2.findFundamentalMat(pa[good[:, 0], :2], pb[good[:, 1], :2], cv2.FM_RANSAC, ransac_px, 0.999)
    return good[inl.ravel().astype(bool)] if inl is not None else np.zeros((0, 2), int)


def build_tracks(features: dict, cameras: dict[str, Camera], k: int) -> Tracks:
    """Tracks over every frame of `features` ({(frame, camera): (points, descriptors)}): matches of neighbouring
    cameras joined by union-find; observations as undistorted pixels (the toolkit's centre-at-+0.5 convention)."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for f in sorted({f for f, _ in features}):
        for a, b in neighbour_pairs(cameras, k):
            if (f, a) in features and (f, b) in features:
                for i, j in match_pair(features[(f, a)], features[(f, b)]):
                    ra, rb = find((f, a, int(i))), find((f, b, int(j)))
                    if ra != rb:
                        parent[ra] = rb
    groups: dict = {}
    for key in list(parent):
        groups.setdefault(find(key), []).append(key)
    names = sorted(cameras)
    index = {n: i for i, n in enumerate(names)}
    pixels = {key: undistort_px(cameras[key[1]], pts[:, :2] + 0.5) for key, (pts, _) in features.items()}
    cam, point, uv, size = [], [], [], []
    for obs in sorted(groups.values()):
        if len(obs) < 2 or len({c for _, c, _ in obs}) != len(obs):
            continue
        p = point[-1] + 1 if point else 0
        for f, c, i in obs:
            cam.append(index[c])
            point.append(p)
            uv.append(pixels[(f, c)][i])
            size.append(features[(f, c)][0][i, 2])
    size = np.array(size, np.float64)
    weight = (np.median(size) / size) ** 2 if len(size) else None  # localisation σ ∝ the keypoint's size
    return Tracks(np.array(cam, int), np.array(point, int), np.array(uv, np.float64).reshape(-1, 2),
                  (point[-1] + 1) if point else 0, weight)


def _rig_arrays(cameras: dict[str, Camera]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Camera names in sorted order (the track's camera indices) and their K, R, centres as float64 stacks."""
    names = sorted(cameras)
    K = np.stack([cameras[n].K.astype(np.float64) for n in names])
    R = np.stack([cameras[n].R.astype(np.float64) for n in names])
    return names, K, R, np.stack([cameras[n].center.astype(np.float64) for n in names])


def refine_rig(images: dict, masks: dict | None, cameras: dict[str, Camera], cfg: FitConfig
               ) -> tuple[dict[str, Camera], dict]:
    """The cameras to fit with, and a report (accepted, usable, reason, objective_before / _after, threshold,
    max_rot_deg, max_centre_mm, tracks, observations, median_px, noise_px). images: {frame: {camera: (H, W) uint8 gray}};
    masks: {frame: {camera: (H, W)}} or None."""
    import cv2

    cv2.setRNGSeed(0)  # RANSAC's draws: the same result whatever ran before in this process (pool worker or not)
    masks = masks or {}
    names = sorted(cameras)
    feats = {(f, c): view_features(img, masks.get(f, {}).get(c)) for f, views in images.items()
             for c, img in views.items() if c in cameras}
    tr = build_tracks(feats, cameras, cfg.camera_feature_neighbours)
    per_cam = np.bincount(tr.cam, minlength=len(names))
    C = len(names)
    report = {"accepted": False, "usable": False, "reason": "", "source": "features", "tracks": int(tr.n_points),
              "observations": int(len(tr.cam)), "objective_before": None, "objective_after": None,
              "threshold": cfg.camera_accept_gain * (6 * C - 7), "max_rot_deg": 0.0, "max_centre_mm": 0.0,
              "median_px": None, "noise_px": None}
    if C < 3 or per_cam.min() < MIN_OBSERVATIONS:
        weakest = names[int(per_cam.argmin())] if C else ""
        report["reason"] = (f"too few feature tracks to refine the cameras (camera {weakest!r}: {int(per_cam.min())} "
                            f"observations, fewer than {MIN_OBSERVATIONS})")
        return cameras, report
    report["usable"] = True
    _, K, R0, o0 = _rig_arrays(cameras)
    rs, ts = np.radians(cfg.camera_rot_sigma_deg), cfg.camera_trans_sigma_mm * 1e-3
    sp = cfg.camera_feature_scale_px
    held = bundle_adjust(tr, K, R0, o0, rs, ts, scale_px=sp, hold_cameras=True)
    # the tracks' noise, from a first solve in 1-px units; the candidate weighs the images at that noise level
    first = bundle_adjust(tr, K, R0, o0, rs, ts, scale_px=sp, X0=held.X)
    noise = noise_level_px(tr, first.residuals, C)
    cand: BAResult = bundle_adjust(tr, K, R0, o0, rs, ts, scale_px=sp, noise_px=noise, start=first)
    # acceptance in the given calibration's objective (1-px units): points re-fitted to the candidate, its priors
    after = (bundle_adjust(tr, K, cand.R, cand.centers, rs, ts, scale_px=sp, hold_cameras=True, X0=cand.X).cost
             + prior_cost(cand.R, cand.centers, R0, o0, rs, ts))
    out = {}
    for i, n in enumerate(names):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = cand.R[i], -cand.R[i] @ cand.centers[i]
        out[n] = cameras[n].with_pose(m)
    rot = np.array([angle_deg(a @ b.T) for a, b in zip(cand.R, R0)])
    centre = np.linalg.norm(cand.centers - o0, axis=1) * 1e3
    moved = rig_errors(out, cameras)  # each camera's move relative to the rest of the rig (gauge removed)
    report.update(objective_before=held.cost, objective_after=after, noise_px=noise, max_rot_deg=float(rot.max()),
                  max_centre_mm=float(centre.max()), max_rot_deg_in_rig=float(moved.rot_deg.max()),
                  max_centre_mm_in_rig=float(moved.centre_mm.max()),
                  median_px=float(np.median(np.linalg.norm(cand.residuals, axis=1))))
    sig = cfg.camera_feature_max_sigmas
    limit_r, limit_c = sig * cfg.camera_rot_sigma_deg, sig * cfg.camera_trans_sigma_mm
    if held.cost - after <= report["threshold"]:
        report["reason"] = (f"objective fell by {held.cost - after:.4g}, not more than {report['threshold']:.4g}: "
                            "the images do not call for it")
    elif moved.rot_deg.max() > limit_r or moved.centre_mm.max() > limit_c:
        report["reason"] = (f"a camera moved {moved.rot_deg.max():.2f}° / {moved.centre_mm.max():.1f} mm relative to "
                            f"the rig, beyond camera_feature_max_sigmas ({limit_r:g}° / {limit_c:g} mm)")
    else:
        report["accepted"] = True
    return (out if report["accepted"] else cameras), report


def frame_points(cap, subject: str, sequence: str, cameras: dict[str, Camera], cfg: FitConfig
                 ) -> dict[int, np.ndarray]:
    """{frame: (n, 3) float64 world points} of one sequence for the surface-point term (points.py): per frame, the
    feature tracks of its views (no mask: whatever the images show), triangulated with `cameras`, those whose every
    observation reprojects within `points_reproj_px`. Frames are read one at a time."""
    _, K, R, o = _rig_arrays(cameras)
    m = cap.manifest
    rows = m[(m.subject == subject) & (m.sequence == sequence)]
    out: dict[int, np.ndarray] = {}
    for f in sorted(rows.frame.unique()):
        views = _gray_views(cap, rows[rows.frame == f])
        feats = {(int(f), c): view_features(img, None) for c, img in views.items() if c in cameras}
        tr = build_tracks(feats, cameras, cfg.camera_feature_neighbours)
        if tr.n_points == 0:
            continue
        X = triangulate(tr, K, R, o)
        worst = np.zeros(tr.n_points)
        np.maximum.at(worst, tr.point, reprojection_errors(tr, K, R, o, X))
        keep = (worst <= cfg.points_reproj_px) & np.isfinite(X).all(1)
        out[int(f)] = X[keep]
    return out


def _gray_views(cap, rows) -> dict[str, np.ndarray]:
    """{camera: (H, W) uint8 gray} of manifest rows; an unreadable image is left out (the fit records bad images)."""
    import cv2

    out = {}
    for row in rows.to_dict("records"):
        try:
            out[row["camera"]] = cv2.cvtColor(cap.image(row), cv2.COLOR_RGB2GRAY)
        except Exception:  # noqa: BLE001 - one unreadable view only has no features
            continue
    return out


def sequence_images(cap, subject: str, sequence: str, max_frames: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """{frame: {camera: (H, W) uint8 gray}} of one sequence of a capture, of at most `max_frames` frames spread
    evenly over it (0: all); an unreadable image is left out (it has no features; the fit records bad images)."""
    m = cap.manifest
    rows = m[(m.subject == subject) & (m.sequence == sequence)]
    frames = sorted(rows.frame.unique())
    if 0 < max_frames < len(frames):
        frames = [frames[i] for i in np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))]
    out = {int(f): _gray_views(cap, rows[rows.frame == f]) for f in frames}
    return {f: v for f, v in out.items() if v}


def feature_refined_cameras(cap, subject: str, sequence: str, cameras: dict[str, Camera], masks: dict | None,
                            cfg: FitConfig) -> tuple[dict[str, Camera], FitConfig, dict | None]:
    """What to fit one sequence with: (cameras, config, feature report). With `refine_cameras` and
    `camera_features` and enough tracks, the feature-refined (or, when refused, the given) cameras and a config whose
    landmark camera solve is off; otherwise the given cameras and `cfg` unchanged (report None when not asked)."""
    if not (cfg.refine_cameras and cfg.camera_features):
        return cameras, cfg, None
    cams, report = refine_rig(sequence_images(cap, subject, sequence, cfg.camera_feature_frames), masks, cameras, cfg)
    where = f"subject {subject!r} sequence {sequence!r}"
    if not report["usable"]:
        log.warning("fit: %s: %s; the landmark camera solve runs instead", where, report["reason"])
        return cameras, cfg, report
    if not report["accepted"]:
        log.warning("fit: %s: feature camera refinement not applied (the cameras stay as they were): %s", where,
                    report["reason"])
    return cams, replace(cfg, refine_cameras=False, refine_focal=False), report
