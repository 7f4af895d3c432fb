"""Benchmark of the multi-view landmark fitter (flame_fitting.fit) on synthetic observations.

Head model: data/head_model if it exists, else the stand-in built into a temporary folder
(flame_fitting.head.standin.build.build_standin), else the test factory folder; "head_model" in the JSON
says which. 16 cameras, 512², f = 1500 px, 1 m from the head, yaw -90°…90° × pitch -25°…25°; one
subject, 8 frames (random expression, jaw, head pose), landmarks = the model's own embedded
landmarks projected (+ N(0, 1 px²) noise unless said otherwise).

Metrics (face region = standin_extras.npz `face_region` when present, else the vertices within 10 cm
of the nose tip (MediaPipe point 1 when embedded, else the front-most template vertex)):
  s_per_frame                     wall time of fit_sequence / frames, 8-frame sequence, default config
                                  (after a warm-up fit); s_per_frame_single: a one-frame sequence
  vertex_error_mm_gt_landmarks    mean face-region vertex error, world frame
  outlier_error_ratio             the same with 3 of 16 views per frame replaced by another face's landmarks,
                                  divided by the clean error (…_shuffled: the view's own points shuffled)
  camera_rot_error_deg / camera_trans_error_mm
                                  cameras perturbed by 2° (about their centre) and 1 cm, refine_cameras=True:
                                  max over cameras and frames of the camera-from-head error (gauge-free),
                                  median over N_DRAWS perturbation draws (each draw in "camera_draws");
                                  *_mean: mean over cameras and frames; camera_trans_error_mm_scale_aligned:
                                  after removing the one global scale factor no image can observe (moving
                                  each camera by 1 cm changes the rig's size, "input_rig_scale_error"; the
                                  fit keeps the input rig's scale, the head model can rescale the head)
  refined_error_ratio             face-region vertex error in the head frame, perturbed + refine over
                                  unperturbed (no refinement); *_scale_aligned: both after removing the best
                                  global scale (the rig scale the perturbation changed, see above)
  vertex_error_mm_mediapipe       real MediaPipe landmarks: a default-like synthetic capture (pipelines.synthetic;
                                  3 subjects × 2 frames × 16 cameras at 512², yaw -90°…90°, seed 1) rendered in a
                                  temporary folder, landmarks detected with landmark_set.detect_capture, each
                                  sequence fitted with the default FitConfig, i.e. with the MediaPipe embedding
                                  calibrated by flame_fitting.landmarks.calibration on calibration subjects of another
                                  generator seed (MP_CALIBRATION: 8 subjects × 2 frames × 16 cameras, seed 1000;
                                  disjoint identities, but the same source photo texture, see docs/fitting.md);
                                  mean face-region vertex error against gt.npz "vertices" (world frame); *_head: whole
                                  head; s_per_frame_mediapipe: fit time / fitted frame; *_no_noise_model: the same
                                  fits with noise_model=False; *_uncalibrated[_no_noise_model]: with the original
                                  embedding (calibrated_embedding=False); mediapipe_calibration: its settings and
                                  provenance summary; mediapipe_detection_rate, mediapipe_frames_fitted / _ok,
                                  mediapipe_s (wall time of this part: calibration + render + detect + fits);
                                  the fits get the capture's foreground masks (mediapipe_masks: how many), used
                                  when silhouette_weight > 0 (FitConfig's default: silhouette_weight_default);
                                  *_landmarks_only: silhouette_weight=0, with the surface points triangulated
                                  from the images' feature tracks (features.frame_points, no mask; as the fit
                                  stage does without masks; their time counts in its s_per_frame);
                                  *_landmarks_only_no_points: the same with points_weight=0 (landmarks alone);
                                  *_silhouette: silhouette_weight=SILHOUETTE_WEIGHT (a variant whose FitConfig
                                  equals an earlier one's reuses it)
  mediapipe_camera_refinement     refine_cameras=True (default FitConfig otherwise) on the same MediaPipe capture, as
                                  the fit stage runs it (fit.capture.fit_capture_sequence: the rig refined from the
                                  images' feature tracks first, camera_features; the landmark camera solve only
                                  when the images give too few tracks):
                                  "exact" (the true cameras), "perturbed" (every camera turned CAM_PERTURB[0]° about its
                                  centre and moved CAM_PERTURB[1] m, seeded per sequence) and "perturbed_no_refine";
                                  per setting: face vertex error (world frame; perturbed: after removing the rig
                                  similarity no image observes, fit.report.rig_similarity to the true cameras), camera
                                  rot / centre errors (fit.report.rig_errors: median and max over cameras and sequences),
                                  the largest camera move from the given calibration vs the prior (prior σ, bound),
                                  how many sequences kept the refinement, the largest move of the camera solve's
                                  candidate (kept or not: fit.camera_refinement); "exact" vertex_error_mm_change and "perturbed"
                                  vertex_error_mm_minus_exact_cameras compare with vertex_error_mm_mediapipe (the same
                                  fits without refinement); flat copies: vertex_error_mm_mediapipe_refine_exact / _perturbed,
                                  camera_rot_error_deg_ / camera_centre_error_mm_mediapipe_refine_perturbed
  mediapipe_landmarks_only / mediapipe_landmarks_only_no_points / mediapipe_default
                                  {vertex_error_mm_head, vertex_error_mm_face} of the landmarks-only fit (no masks:
                                  the landmarks-only priors and the surface points, docs/fitting.md "Landmarks
                                  only"), of the same without the points, and of the default fit
The head model folder is copied without any calibrated embedding it may have (the GT-landmark figures fit the
original embedding, whose projections they are); the MediaPipe part calibrates that copy itself.
Run: python benchmarks/fit.py   (last line: JSON)
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame_fitting.fit import FitConfig, camera_errors, fit_sequence, head_frame_vertices, head_to_world  # noqa: E402
from flame_fitting.fit.so3 import angle_deg  # noqa: E402
from flame_fitting.fit.synthetic import (arc_cameras, corrupt_views, model_outputs, perturb_camera,  # noqa: E402
                                         project_landmarks, random_params)
from flame_fitting.head.head_model import HeadModel  # noqa: E402

N_FRAMES, N_CAMS, N_BAD, N_DRAWS = 8, 16, 3, 3
MP_CAPTURE = {"subjects": 3, "frames": 2, "cameras": 16, "resolution": 512, "seed": 1}
MP_CALIBRATION = {"subjects": 8, "frames": 2, "cameras": 16, "resolution": 512, "seed": 1000}
assert MP_CALIBRATION["seed"] != MP_CAPTURE["seed"], "calibration and evaluation subjects must differ"
CAM_PERTURB = (2.0, 0.02)  # degrees about the camera's centre, metres: the MediaPipe camera-refinement settings
SILHOUETTE_WEIGHT = 1.0  # the "_silhouette" variant's silhouette_weight (FitConfig's default may differ)
MP_VARIANTS = {"": {}, "_no_noise_model": {"noise_model": False}, "_uncalibrated": {"calibrated_embedding": False},
               "_uncalibrated_no_noise_model": {"calibrated_embedding": False, "noise_model": False},
               "_landmarks_only": {"silhouette_weight": 0.0},
               "_landmarks_only_no_points": {"silhouette_weight": 0.0, "points_weight": 0.0},
               "_silhouette": {"silhouette_weight": SILHOUETTE_WEIGHT}}
MP_KEYS = ["mediapipe_landmarks_only", "mediapipe_landmarks_only_no_points", "mediapipe_default",
           "mediapipe_detection_rate", "mediapipe_masks", "silhouette_weight_default", "mediapipe_calibration",
           "mediapipe_frames_fitted", "mediapipe_frames_ok", "mediapipe_s", "mediapipe_camera_refinement",
           "vertex_error_mm_mediapipe_refine_exact", "vertex_error_mm_mediapipe_refine_perturbed",
           "camera_rot_error_deg_mediapipe_refine_perturbed", "camera_centre_error_mm_mediapipe_refine_perturbed",
           *[f"{k}{v}{h}" for v in MP_VARIANTS for k, h in (
               ("vertex_error_mm_mediapipe", ""), ("vertex_error_mm_mediapipe", "_head"), ("s_per_frame_mediapipe", ""))]]
CALIBRATED_FILES = "mediapipe_landmark_embedding_calibrated.*"


def load_head(tmp: Path) -> tuple[HeadModel, str]:
    folder = ROOT / "data" / "head_model"
    if folder.exists():
        label = f"data/head_model ({json.loads((folder / 'head_model.json').read_text()).get('kind', '?')})" if (
            folder / "head_model.json").exists() else "data/head_model"
        folder = Path(shutil.copytree(folder, tmp / "head_model", ignore=shutil.ignore_patterns(CALIBRATED_FILES)))
    else:
        try:
            from flame_fitting.head.standin.build import build_standin
            folder = tmp / "standin"
            build_standin(folder, seed=0, n_shape=50, n_expr=30)
            label = "standin (built by the benchmark)"
        except Exception as e:  # noqa: BLE001 - fall back to the factory, and say so
            sys.path.insert(0, str(ROOT / "tests" / "flame_fitting"))
            from flame_folder_factory import write_flame_folder
            folder = write_flame_folder(tmp / "factory", n_shape=10, n_expr=8).path
            label = f"factory (stand-in unavailable: {type(e).__name__})"
    meta = json.loads((folder / "head_model.json").read_text()) if (folder / "head_model.json").exists() else {}
    n_shape, n_expr = min(50, meta.get("n_shape", 300)), min(30, meta.get("n_expr", 100))
    return HeadModel.from_folder(folder, n_shape, n_expr), label


def face_region(head: HeadModel) -> tuple[np.ndarray, str]:
    extras = Path(head.folder) / "standin_extras.npz"
    if extras.exists():
        return np.load(extras)["face_region"].astype(bool), "standin_extras face_region"
    v = head.v_template.double().numpy()
    ids = head.mp_landmark_indices.numpy()
    if 1 in ids:
        _, lmk = model_outputs(head, random_params(head, np.random.default_rng(0), shape=np.zeros(head.n_shape),
                                                   expr_sigma=0, jaw_max=0, rot_deg=0, transl_m=0))
        nose = lmk[int(np.flatnonzero(ids == 1)[0])]
    else:
        nose = v[np.argmax(v[:, 2])]
    return np.linalg.norm(v - nose, axis=1) < 0.10, "within 10 cm of the nose tip"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="geoface_bench_fit_") as tmp:
        head, label = load_head(Path(tmp))
        face, face_label = face_region(head)
        out = run(head, label, face, face_label)
        try:
            out.update(run_mediapipe(head, face, Path(tmp)))
        except Exception as e:  # noqa: BLE001 - no number rather than a made-up one; say why
            out.update({k: None for k in MP_KEYS}, mediapipe_error=f"{type(e).__name__}: {e}")
    print(f"fit on MediaPipe landmarks ({MP_CAPTURE['subjects']} subjects × {MP_CAPTURE['frames']} frames, "
          f"{MP_CAPTURE['cameras']} views at {MP_CAPTURE['resolution']}²): face vertex error "
          f"{out['vertex_error_mm_mediapipe']} mm with the calibrated embedding (uncalibrated "
          f"{out['vertex_error_mm_mediapipe_uncalibrated']} mm; whole head {out['vertex_error_mm_mediapipe_head']} mm; "
          f"without the noise model {out['vertex_error_mm_mediapipe_no_noise_model']} / "
          f"{out['vertex_error_mm_mediapipe_uncalibrated_no_noise_model']} mm), {out['s_per_frame_mediapipe']} s/frame; "
          f"landmarks only {out['vertex_error_mm_mediapipe_landmarks_only']} mm with the images' surface points "
          f"({out['s_per_frame_mediapipe_landmarks_only']} s/frame; without them "
          f"{out['vertex_error_mm_mediapipe_landmarks_only_no_points']} mm), default silhouette_weight "
          f"{out['silhouette_weight_default']}")
    cr = out.get("mediapipe_camera_refinement") or {}
    if cr:
        print(f"refine_cameras on MediaPipe: exact cameras {cr['exact']['vertex_error_mm']} mm "
              f"(change {cr['exact']['vertex_error_mm_change']:+} mm, max move {cr['exact']['max_camera_move_deg']}° / "
              f"{cr['exact']['max_camera_move_mm']} mm, accepted {cr['exact']['refinement_accepted']}); perturbed "
              f"{CAM_PERTURB[0]}° / {CAM_PERTURB[1] * 1e3:g} mm: {cr['perturbed_no_refine']['vertex_error_mm']} mm "
              f"without refinement, {cr['perturbed']['vertex_error_mm']} mm with (cameras "
              f"{cr['perturbed']['camera_rot_error_deg_median']}° / {cr['perturbed']['camera_centre_error_mm_median']} mm "
              f"median, accepted {cr['perturbed']['refinement_accepted']})")
    print(json.dumps(out))


def run_mediapipe(head: HeadModel, face: np.ndarray, tmp: Path) -> dict:
    """Calibrate the MediaPipe embedding of `head`'s folder (MP_CALIBRATION), render a synthetic capture of another
    seed (MP_CAPTURE), detect MediaPipe landmarks, fit every sequence (MP_VARIANTS of the default FitConfig), score
    against the ground truth. Keys: see the module docstring."""
    from flame_fitting.formats.capture import load_capture
    from flame_fitting.fit.capture_masks import load_masks
    from flame_fitting.fit.capture_results import gt_vertex_errors
    from flame_fitting.fit.features import frame_points
    from flame_fitting.landmarks.calibration import CalibrationConfig
    from pipelines.synthetic.calibration import calibrate_head_model
    from flame_fitting.landmarks.capture import detect_capture
    from pipelines.synthetic import SyntheticConfig, generate

    t0 = time.perf_counter()
    prov = calibrate_head_model(head.folder, CalibrationConfig(**MP_CALIBRATION), work_dir=tmp)
    head = HeadModel.from_folder(head.folder, head.n_shape, head.n_expr)
    assert head.has_calibrated_embedding
    generate(Path(head.folder), tmp / "cap", SyntheticConfig(**MP_CAPTURE), progress=False)
    cap = load_capture(tmp / "cap")
    ls = detect_capture(cap, progress=False)
    out = {"mediapipe_detection_rate": round(float(ls.table.detected.mean()), 4),
           "mediapipe_calibration": {**MP_CALIBRATION, **{k: prov[k] for k in (
               "texture_photo", "n_views_used", "n_calibrated", "n_kept_contour", "n_kept_few_samples",
               "mean_shift_mm", "max_shift_mm", "total_s")}}}
    masks = {sq: load_masks(cap, *sq) for sq in cap.sequences()}
    out["mediapipe_masks"] = sum(len(v) for m in masks.values() if m for v in m.values())
    done: dict[str, FitConfig] = {}
    for key, kw in MP_VARIANTS.items():
        cfg = FitConfig(**kw)
        same = next((k for k, c in done.items() if c == cfg), None)
        if same is not None:  # the same configuration as an earlier variant (e.g. the default): same fits
            for k, h in (("vertex_error_mm_mediapipe", ""), ("vertex_error_mm_mediapipe", "_head"),
                         ("s_per_frame_mediapipe", "")):
                out[f"{k}{key}{h}"] = out[f"{k}{same}{h}"]
            continue
        done[key] = cfg
        rows, fit_s, n_fit, n_ok = [], 0.0, 0, 0
        for subject, sequence in cap.sequences():
            t = time.perf_counter()
            cams = cap.cameras(subject, sequence)
            points = (frame_points(cap, subject, sequence, cams, cfg)
                      if cfg.silhouette_weight <= 0 and cfg.points_weight > 0 else None)
            fit = fit_sequence(head, cams, ls.for_sequence(subject, sequence), cfg, progress=False, subject=subject,
                               sequence=sequence, masks=masks[(subject, sequence)], points=points)
            fit_s += time.perf_counter() - t
            n_fit += len(fit.params)
            n_ok += sum(s.status == "ok" for s in fit.status.values())
            rows += gt_vertex_errors(cap, subject, sequence, fit, face)
        out[f"vertex_error_mm_mediapipe{key}"] = round(float(np.mean([r["vertex_error_mm_face"] for r in rows])), 4)
        out[f"vertex_error_mm_mediapipe{key}_head"] = round(float(np.mean([r["vertex_error_mm"] for r in rows])), 4)
        out[f"s_per_frame_mediapipe{key}"] = round(fit_s / max(n_fit, 1), 4)
        if not key:
            out["mediapipe_frames_fitted"], out["mediapipe_frames_ok"] = n_fit, n_ok
    out["silhouette_weight_default"] = FitConfig().silhouette_weight
    out.update(run_camera_refinement(head, face, cap, ls, out["vertex_error_mm_mediapipe"]))
    for name, key in (("mediapipe_landmarks_only", "_landmarks_only"),
                      ("mediapipe_landmarks_only_no_points", "_landmarks_only_no_points"), ("mediapipe_default", "")):
        out[name] = {"vertex_error_mm_head": out[f"vertex_error_mm_mediapipe{key}_head"],
                     "vertex_error_mm_face": out[f"vertex_error_mm_mediapipe{key}"]}
    out["mediapipe_s"] = round(time.perf_counter() - t0, 1)
    return out


def head_shift(cap, subject: str, sequence: str, fit, face: np.ndarray) -> tuple[float, float]:
    """How much of a fit's face vertex error is one rigid shift of the head: (length of the mean displacement of
    the face vertices from the ground truth, mm; the face error after removing that mean displacement, mm), means
    over the fitted frames."""
    from flame_fitting.fit.capture_results import gt_vertices

    shifts, rest = [], []
    for f, verts in fit.vertices.items():
        d = (verts.astype(np.float64) - gt_vertices(cap, subject, sequence, f))[face] * 1e3
        shifts.append(np.linalg.norm(d.mean(0)))
        rest.append(np.linalg.norm(d - d.mean(0), axis=1).mean())
    return float(np.mean(shifts)), float(np.mean(rest))


def run_camera_refinement(head: HeadModel, face: np.ndarray, cap, ls, exact_error_mm: float) -> dict:
    """refine_cameras on the MediaPipe capture (default FitConfig otherwise): with the exact cameras, and with every
    camera perturbed by CAM_PERTURB (seeded per sequence). Vertex errors: face region, world frame; for perturbed
    cameras after removing the rig similarity that no image observes (`rig_similarity` to the true cameras, applied
    to the mesh as well). Camera errors: `rig_errors` against the true cameras (medians over cameras and sequences).
    Moves: the largest change of a camera from the given calibration (degrees, mm) and the prior σ it is bounded by.
    `face_mean_shift_mm` / `vertex_error_mm_shift_removed` (`head_shift`): how much of the face error is one rigid
    shift of the head relative to the rig, and what is left without it (the shape and pose error)."""
    from flame_fitting.fit.report import rig_errors, rig_similarity
    from flame_fitting.fit.capture import fit_capture_sequence
    from flame_fitting.fit.capture_results import gt_vertex_errors

    def moves(fit, given):
        rot = max(angle_deg(fit.cameras[n].R.astype(np.float64) @ given[n].R.astype(np.float64).T) for n in given)
        return rot, max(float(np.linalg.norm(fit.cameras[n].center - given[n].center)) * 1e3 for n in given)

    res: dict[str, list] = {}
    for i, (subject, sequence) in enumerate(cap.sequences()):
        true = cap.cameras(subject, sequence)
        prng = np.random.default_rng(500 + i)
        perturbed = {n: perturb_camera(c, prng, *CAM_PERTURB) for n, c in true.items()}
        for key, given, refine in (("exact", true, True), ("perturbed_no_refine", perturbed, False),
                                   ("perturbed", perturbed, True)):
            fit = fit_capture_sequence(cap, ls, head, FitConfig(refine_cameras=refine), subject, sequence, given)
            s, R, t = rig_similarity(fit.cameras, true) if given is not true else (1.0, np.eye(3), np.zeros(3))
            aligned = replace(fit, vertices={f: (s * v.astype(np.float64) @ R.T + t) for f, v in fit.vertices.items()})
            ce = rig_errors(fit.cameras, true)
            mr, mc = moves(fit, given)
            shift, unshifted = head_shift(cap, subject, sequence, aligned, face)
            res.setdefault(key, []).append({
                "err": np.mean([r["vertex_error_mm_face"]
                                for r in gt_vertex_errors(cap, subject, sequence, aligned, face)]),
                "shift": shift, "unshifted": unshifted,
                "rot": ce.rot_deg.to_numpy(), "centre": ce.centre_mm.to_numpy(), "move_deg": mr, "move_mm": mc,
                "accepted": bool(fit.camera_refinement and fit.camera_refinement["accepted"]),
                "cand": (fit.camera_refinement["max_rot_deg"], fit.camera_refinement["max_centre_mm"])
                if fit.camera_refinement else (0.0, 0.0)})
    sig = FitConfig()
    out = {}
    for key, rows in res.items():
        out[key] = {"vertex_error_mm": round(float(np.mean([r["err"] for r in rows])), 4),
                    "camera_rot_error_deg_median": round(float(np.median(np.concatenate([r["rot"] for r in rows]))), 4),
                    "camera_centre_error_mm_median": round(float(np.median(np.concatenate([r["centre"] for r in rows]))),
                                                           3),
                    "camera_rot_error_deg_max": round(float(np.max(np.concatenate([r["rot"] for r in rows]))), 4),
                    "max_camera_move_deg": round(max(r["move_deg"] for r in rows), 4),
                    "max_camera_move_mm": round(max(r["move_mm"] for r in rows), 3),
                    "refinement_accepted": f"{sum(r['accepted'] for r in rows)}/{len(rows)}",
                    "face_mean_shift_mm": round(float(np.mean([r["shift"] for r in rows])), 4),
                    "vertex_error_mm_shift_removed": round(float(np.mean([r["unshifted"] for r in rows])), 4),
                    "vertex_error_mm_per_sequence": [round(float(r["err"]), 3) for r in rows],
                    "candidate_max_move_deg": round(max(r["cand"][0] for r in rows), 3),
                    "candidate_max_move_mm": round(max(r["cand"][1] for r in rows), 2)}
    out["exact"]["vertex_error_mm_change"] = round(out["exact"]["vertex_error_mm"] - exact_error_mm, 4)
    out["perturbed"]["vertex_error_mm_minus_exact_cameras"] = round(out["perturbed"]["vertex_error_mm"] - exact_error_mm,
                                                                    4)
    out["prior"] = {"rot_sigma_deg": sig.camera_rot_sigma_deg, "centre_sigma_mm": sig.camera_trans_sigma_mm,
                    "max_sigmas": sig.camera_max_sigmas, "perturbation_deg_mm": [CAM_PERTURB[0], CAM_PERTURB[1] * 1e3]}
    return {"mediapipe_camera_refinement": out,
            "vertex_error_mm_mediapipe_refine_exact": out["exact"]["vertex_error_mm"],
            "vertex_error_mm_mediapipe_refine_perturbed": out["perturbed"]["vertex_error_mm"],
            "camera_rot_error_deg_mediapipe_refine_perturbed": out["perturbed"]["camera_rot_error_deg_median"],
            "camera_centre_error_mm_mediapipe_refine_perturbed": out["perturbed"]["camera_centre_error_mm_median"]}


def run(head: HeadModel, label: str, face: np.ndarray, face_label: str) -> dict:
    rng = np.random.default_rng(0)
    cams = arc_cameras(N_CAMS, head.v_template.double().mean(0).numpy(), 1.0, yaw_deg=(-90, 90), pitch_deg=(-25, 25))
    shape = rng.standard_normal(head.n_shape)
    truth = {f: random_params(head, rng, shape=shape) for f in range(N_FRAMES)}
    obs = {f: project_landmarks(head, cams, p, 1.0, rng) for f, p in truth.items()}
    gt_verts = {f: model_outputs(head, p)[0] for f, p in truth.items()}

    def world_err(fit):
        return float(np.mean([np.linalg.norm(fit.vertices[f] - gt_verts[f], axis=1)[face].mean() * 1e3 for f in truth]))

    def head_err(fit, scale_aligned: bool = False):
        errs = []
        for f in truth:
            a = head_frame_vertices(head, fit.params[f], fit.vertices[f])[face]
            b = head_frame_vertices(head, truth[f], gt_verts[f])[face]
            s = (a * b).sum() / (b * b).sum() if scale_aligned else 1.0
            errs.append(np.linalg.norm(a - s * b, axis=1).mean() * 1e3)
        return float(np.mean(errs))

    cfg = FitConfig()
    fit_sequence(head, cams, {0: obs[0]}, cfg, progress=False)                   # warm-up
    t = time.perf_counter()
    single = fit_sequence(head, cams, {0: obs[0]}, cfg, progress=False)
    s_single = time.perf_counter() - t
    t = time.perf_counter()
    clean = fit_sequence(head, cams, obs, cfg, progress=False)
    s_frame = (time.perf_counter() - t) / N_FRAMES
    err_clean = world_err(clean)

    names = sorted(cams)
    ratios = {}
    for kind in ("other_face", "shuffled"):
        bad = {}
        for f in truth:
            views = list(rng.choice(names, N_BAD, replace=False))
            other = project_landmarks(head, cams, random_params(head, rng), 1.0, rng) if kind == "other_face" else None
            bad[f] = corrupt_views(obs[f], views, rng, other)
        ratios[kind] = world_err(fit_sequence(head, cams, bad, cfg, progress=False)) / err_clean

    spread = lambda cs: np.sqrt(((cs - cs.mean(0)) ** 2).sum(1).mean())  # noqa: E731
    c_true = np.stack([cams[n].center for n in names])
    draws = []
    for draw in range(N_DRAWS):
        prng = np.random.default_rng(100 + draw)
        perturbed = {n: perturb_camera(c, prng, 2.0, 0.01) for n, c in cams.items()}
        refined = fit_sequence(head, perturbed, obs, FitConfig(refine_cameras=True), progress=False)
        rot, trans, aligned = [], [], []
        for f, p in truth.items():
            ce = camera_errors(refined.cameras, head_to_world(head, refined.params[f]), cams, head_to_world(head, p))
            rot.append(ce.rot_deg.to_numpy())
            trans.append(ce.trans_mm.to_numpy())
            a = np.stack([refined.cameras[n].world_to_cam.astype(np.float64) @ head_to_world(head, refined.params[f])
                          for n in names])[:, :3, 3]
            b = np.stack([cams[n].world_to_cam.astype(np.float64) @ head_to_world(head, p) for n in names])[:, :3, 3]
            s = (a * b).sum() / (b * b).sum()
            aligned.append(np.linalg.norm(a - s * b, axis=1) * 1e3)
        draws.append({
            "rot_max": float(np.max(rot)), "rot_mean": float(np.mean(rot)), "trans_max": float(np.max(trans)),
            "trans_mean": float(np.mean(trans)), "aligned_max": float(np.max(aligned)),
            "rig_in": spread(np.stack([perturbed[n].center for n in names])) / spread(c_true) - 1,
            "rig_fit": spread(np.stack([refined.cameras[n].center for n in names])) / spread(c_true) - 1,
            "ratio": head_err(refined) / head_err(clean), "ratio_aligned": head_err(refined, True) / head_err(clean, True),
            "ok": sum(s.status == "ok" for s in refined.status.values())})
    med = lambda k, nd=3: round(float(np.median([d[k] for d in draws])), nd)  # noqa: E731
    each = lambda k, nd=3: [round(float(d[k]), nd) for d in draws]  # noqa: E731

    out = {
        "head_model": label, "n_vertices": int(head.n_vertices), "n_landmarks": int(len(head.mp_landmark_indices)),
        "n_shape": head.n_shape, "n_expr": head.n_expr, "cameras": N_CAMS, "frames": N_FRAMES,
        "face_region": face_label,
        "s_per_frame": round(s_frame, 4), "s_per_frame_single": round(s_single, 4),
        "lm_iterations": int(len(clean.history) - 1),
        "vertex_error_mm_gt_landmarks": round(err_clean, 4),
        "vertex_error_mm_gt_landmarks_single_frame": round(float(np.linalg.norm(
            single.vertices[0] - gt_verts[0], axis=1)[face].mean() * 1e3), 4),
        "outlier_error_ratio": round(ratios["other_face"], 3),
        "outlier_error_ratio_shuffled": round(ratios["shuffled"], 3),
        "camera_rot_error_deg": med("rot_max", 4), "camera_rot_error_deg_mean": med("rot_mean", 4),
        "camera_trans_error_mm": med("trans_max"), "camera_trans_error_mm_mean": med("trans_mean"),
        "camera_trans_error_mm_scale_aligned": med("aligned_max"),
        "refined_error_ratio": med("ratio"), "refined_error_ratio_scale_aligned": med("ratio_aligned"),
        "camera_draws": {"rot_deg": each("rot_max", 4), "trans_mm": each("trans_max"),
                         "input_rig_scale_error": each("rig_in", 5), "refined_rig_scale_error": each("rig_fit", 5),
                         "refined_error_ratio": each("ratio")},
        "frames_ok": int(sum(s.status == "ok" for s in clean.status.values()) + sum(d["ok"] for d in draws)),
        "frames_fitted": int(N_FRAMES * (1 + N_DRAWS)),
    }
    print(f"fit [{label}]: {out['s_per_frame']:.3f} s/frame ({N_CAMS} views, {N_FRAMES} frames; single frame "
          f"{out['s_per_frame_single']:.3f} s), face vertex error {out['vertex_error_mm_gt_landmarks']:.3f} mm at 1 px "
          f"noise, outliers ×{out['outlier_error_ratio']:.2f}, cameras {out['camera_rot_error_deg']:.3f}° / "
          f"{out['camera_trans_error_mm']:.2f} mm after refinement, median of {N_DRAWS} draws (refined/clean vertex error "
          f"×{out['refined_error_ratio']:.2f})")
    return out


if __name__ == "__main__":
    main()
