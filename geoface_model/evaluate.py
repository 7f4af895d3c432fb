"""Evaluation of a trained GeoFace model on held-out subjects (the `evaluate` stage's library).

Per sample (one frame of one held-out subject, all its views at the model resolution S):
  * cameras in the head's canonical frame: the fitted head's rigid transform (posed vs canonical mesh of the
    fit, `rigid_fit`) is applied to the capture cameras, so the generated UV map / mesh and the views share
    one frame (the generated views themselves do not depend on it: the model sees relative cameras);
  * reference = the most frontal view; targets = `n_targets` views with |yaw| <= `max_yaw_deg`, evenly spread
    in yaw, in yaw order;
  * `GeoFacePipeline` (seeded) -> target views, UV position map, mesh;
  * metrics (geoface_model/metrics.py, metrics_geometry.py): PSNR / SSIM (/ LPIPS only with local weights) against
    the ground-truth views; TSED on neighbouring generated views; landmark-fit RMSE (MediaPipe on the generated
    views, one head fitted across them with step 3's bundle adjustment, cameras fixed); UV position-map error (mm)
    against the fitted head the model was trained on; mesh-to-view alignment (the generated mesh's embedded
    landmarks projected into the generated views vs MediaPipe's detections there, px); attention hit rate at the
    supervised block(s) on the sample noised as in training.
Every consistency metric is also computed on the ground-truth views (and the fitted mesh) — the value a
perfect model would get at this resolution — and every metric has baselines beside it (geoface_model/baselines.py:
constant mean training colour, copy the reference, mean training UV map, camera-only attention), so the numbers
can be read. PSNR / SSIM are also measured inside the head mask (`psnr_fg`, `ssim_fg`), and the attention hit rate
per noise band (`attention_hit_rate_low` / `_mid` / `_high`). Views are upscaled (cubic) to `detect_min_side` for
SIFT and MediaPipe, identically for generated and ground-truth views; pixel figures are in the model's S×S pixels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from flame_fitting.geometry.camera import Camera
from flame_fitting.formats.capture import save_cameras
from flame_fitting.head.landmarks_embed import interpolate_landmarks
from flame_fitting.core.params import spec
from flame_fitting.core.fileio import write_obj, write_png
from flame_fitting.geometry.rigid import rigid_fit

from .baselines import TrainingStats, band_timesteps, camera_only_hit_rate
from .data import GeoFaceDataset, collate
from .diffusion import denoising_errors, make_noise_scheduler
from .export import export_3dgs
from .metrics import image_metrics
from .metrics_geometry import attention_hit_rate_batch, detect_landmarks, landmark_fit_rmse, posmap_error_mm, tsed
from .shard_names import sample_name


@dataclass
class EvalParams:
    split: str = spec("test", "split of data/dataset to evaluate (held-out subjects)", choices=["train", "val", "test"])
    n_targets: int = spec(4, "target views generated per sample", lo=1, hi=64)
    max_yaw_deg: float = spec(75.0, "targets are chosen among views with |yaw| up to this (degrees)", lo=0.0, hi=180.0)
    num_inference_steps: int = spec(25, "sampler steps", lo=1, hi=1000)
    scheduler: str = spec("ddim", "sampler", choices=["ddim", "euler"])
    guidance_scale: float = spec(1.0, "guidance on the reference (1 = conditional branch only)", lo=0.0, hi=20.0)
    seed: int = spec(0, "seed of the initial noise (sample k uses seed + k)")
    max_samples: int | None = spec(None, "evaluate at most this many samples (null = all)", lo=1)
    lpips_weights: str | None = spec(None, "local LPIPS weights (docs/evaluation.md); null = LPIPS unavailable")
    detect_min_side: int = spec(256, "views are upscaled to this side for SIFT and MediaPipe", lo=64, hi=2048)
    export_3dgs: bool = spec(True, "write a 3DGS starting point (transforms.json, COLMAP, PLY) per sample")
    device: str = spec("auto", "where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda "
                               "or cuda:N")


@dataclass
class SampleResult:
    name: str  # subject/sequence/frame
    metrics: dict  # flat numbers (None = not computable, see "*_status")
    views: list[dict]  # per target view: camera, yaw, psnr, ssim
    reference: np.ndarray  # (S,S,3) uint8
    gt: np.ndarray  # (N,S,S,3) uint8 ground-truth targets
    generated: np.ndarray  # (N,S,S,3) uint8
    cameras: list[Camera]  # reference + targets, canonical frame, S×S
    posmap: np.ndarray | None  # (R,R,3) generated
    gt_posmap: np.ndarray  # (R,R,3)
    uv_mask: np.ndarray  # (R,R) bool
    vertices: np.ndarray | None  # (V,3) generated mesh, canonical frame
    fitted_vertices: np.ndarray  # (V,3) the fitted canonical mesh (training target)
    notes: list[str] = field(default_factory=list)


def canonical_transform(model, fit: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit arrays of one sequence, frame index k -> (4,4) canonical->world transform, (V,3) canonical vertices."""
    t = lambda n: torch.as_tensor(fit[n][k:k + 1], dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        canon = model.canonical(t("shape"), t("expr"), t("jaw_pose"), neck_pose=t("neck_pose"), eye_pose=t("eye_pose"))
    canon = canon[0].double().numpy()
    R, tt, _ = rigid_fit(canon, np.asarray(fit["vertices"][k], np.float64))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, tt
    return T, canon.astype(np.float32)


def yaw_pitch(cameras: list[Camera], centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Degrees of each camera centre around the head centre in the canonical frame (face looks along +z, y up)."""
    d = np.stack([c.center for c in cameras]).astype(np.float64) - centre
    return np.degrees(np.arctan2(d[:, 0], d[:, 2])), np.degrees(np.arctan2(d[:, 1], np.hypot(d[:, 0], d[:, 2])))


def choose_views(yaw: np.ndarray, pitch: np.ndarray, n_targets: int, max_yaw_deg: float) -> tuple[int, list[int]]:
    """The most frontal view, and up to n_targets others with |yaw| <= max_yaw_deg spread evenly, in yaw order."""
    ref = int(np.argmin(np.hypot(yaw, pitch)))
    cand = sorted((i for i in range(len(yaw)) if i != ref and abs(yaw[i]) <= max_yaw_deg), key=lambda i: yaw[i])
    if len(cand) > n_targets:
        cand = [cand[int(round(x))] for x in np.linspace(0, len(cand) - 1, n_targets)]
    return ref, cand


def _u8(x: torch.Tensor) -> np.ndarray:
    """(N,3,S,S) in [-1,1] -> (N,S,S,3) uint8."""
    return ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def _upscaled(images: np.ndarray, cams: list[Camera], side: int) -> tuple[list[np.ndarray], list[Camera], int]:
    """The views and cameras upscaled by an integer factor to at least `side` pixels, and the factor."""
    s = max(1, int(math.ceil(side / images.shape[1])))
    if s == 1:
        return list(images), cams, 1
    size = images.shape[1] * s
    return ([cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC) for im in images],
            [c.resized(size, size) for c in cams], s)


def mesh_view_alignment(model, vertices: np.ndarray, cameras: list[Camera], points: list[np.ndarray]) -> dict:
    """RMSE (px) between a mesh's embedded MediaPipe landmarks projected into views and the landmarks detected there."""
    v = torch.as_tensor(np.asarray(vertices, np.float32))[None]
    if not torch.isfinite(v).all():
        return {"align_px": None, "align_status": "mesh not finite"}
    lmk = interpolate_landmarks(v, model.faces, model.mp_face_idx, model.mp_bary)[0].double().numpy()
    ids = model.mp_landmark_indices.numpy()
    errs = []
    for cam, p in zip(cameras, points):
        det = np.asarray(p, np.float64)[ids]
        ok = np.isfinite(det).all(1)
        if ok.sum() >= 6:
            uv, _ = cam.project(lmk)
            errs.append(((uv - det)[ok] ** 2).sum(1))
    if not errs:
        return {"align_px": None, "align_status": "no view with landmarks"}
    return {"align_px": float(np.sqrt(np.concatenate(errs).mean())), "align_status": f"{len(errs)} views"}


def _finite(x):
    return None if x is None or not np.isfinite(x) else float(x)


def batch_geometry_error_mm(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """`geometry_error_mm` (`posmap_error_mm`) of the first map of a batch: pred, target (B,3,R,R), mask (B,1,R,R)."""
    to_np = lambda x: x[0].detach().float().cpu().permute(1, 2, 0).numpy()  # noqa: E731
    return posmap_error_mm(to_np(pred), to_np(target), mask[0, 0].cpu().numpy() > 0.5)["geo_mean_mm"]


def evaluate_sample(pipe, model, ds: GeoFaceDataset, i: int, fit: dict, frame_index: int, p: EvalParams,
                    cfg, stats: TrainingStats | None = None) -> SampleResult:
    """One held-out sample: generate, measure (module docstring). `fit`: its sequence's fit arrays; `stats`: the
    training split's baseline statistics (geoface_model/baselines.py; None = no training-based baselines)."""
    s, j = ds.items[i]
    info = ds.metas[s].samples[j]
    name = sample_name(info)
    V, S = ds.metas[s].n_views, ds.meta.resolution
    full = ds.item(i, np.arange(V))
    T, canon = canonical_transform(model, fit, frame_index)
    cams = [Camera(K=full["K"][v].numpy(), world_to_cam=full["world_to_cam"][v].numpy().astype(np.float64) @ T,
                   width=S, height=S, name=info["cameras"][v]) for v in range(V)]
    yaw, pitch = yaw_pitch(cams, 0.5 * (canon.min(0) + canon.max(0)))
    ref, tg = choose_views(yaw, pitch, p.n_targets, p.max_yaw_deg)
    if len(tg) < 1:
        raise ValueError(f"{name}: no target view within |yaw| <= {p.max_yaw_deg}")
    images = _u8(full["images"])
    tcams = [cams[t] for t in tg]
    t0 = time.perf_counter()
    out = pipe(images[ref], cams[ref], tcams, num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
               seed=p.seed + i)
    gen_s = time.perf_counter() - t0
    gt = images[tg]
    m: dict = {"generate_s": gen_s}
    fg = list(full["masks"][tg, 0].numpy() > 0.5)  # (S,S) head masks of the targets
    im = image_metrics(list(out.images), list(gt), p.lpips_weights, masks=fg)
    m |= {"psnr": _finite(im["psnr"]), "ssim": im["ssim"], "psnr_fg": _finite(im["psnr_fg"]), "ssim_fg": im["ssim_fg"],
          "lpips": im["lpips"], "lpips_status": im["lpips_status"]}
    answers = {"copy_reference": [images[ref]] * len(tg)}
    if stats is not None:
        answers["mean_colour"] = [stats.constant_image(S)] * len(tg)
    for b, views in answers.items():
        bm = image_metrics(views, list(gt), masks=fg)
        m |= {f"baseline_{b}_{k}": _finite(bm[k]) for k in ("psnr", "ssim", "psnr_fg", "ssim_fg")}
    notes = []
    for tag, views in (("", out.images), ("gt_", gt)):
        if len(views) >= 2:
            up, ucams, scale = _upscaled(np.asarray(views), tcams, p.detect_min_side)
            m[f"{tag}tsed"] = tsed(up, ucams, pixel_scale=scale)["tsed"]  # 2 px of the S×S views
        else:
            m[f"{tag}tsed"] = None
        pts = detect_landmarks(list(views), p.detect_min_side)
        lf = landmark_fit_rmse(model, tcams, pts)
        m[f"{tag}landmark_fit_rmse_px"], m[f"{tag}landmark_views_detected"] = lf["lmk_rmse_px"], lf["lmk_views_detected"]
        mesh = out.vertices if tag == "" else canon
        if mesh is not None:
            al = mesh_view_alignment(model, mesh, tcams, pts)
            m[f"{tag}mesh_alignment_px"] = al["align_px"]
        else:
            m[f"{tag}mesh_alignment_px"] = None
    if len(tg) < 2:
        notes.append("one target view: TSED needs two")
    gt_posmap = full["uv_posmap"].permute(1, 2, 0).numpy()
    uv_mask = full["uv_mask"][0].numpy() > 0.5
    item = ds.item(i, np.array([ref, *tg]))
    bands = band_timesteps(cfg.train.num_train_timesteps)
    sched, batch = make_noise_scheduler(cfg), collate([item])
    m |= denoising_errors(pipe.transformer, batch, pipe.codec, sched, cfg,
                          torch.Generator("cpu").manual_seed(p.seed + i), pipe.transformer.device,
                          geometry_error_mm=batch_geometry_error_mm)
    if out.posmap is not None:
        g = posmap_error_mm(out.posmap, gt_posmap, uv_mask)
        m |= {"geometry_error_mm": g["geo_mean_mm"], "geometry_error_mm_p95": g["geo_p95_mm"]}

        def hit(t):  # mean over the supervised blocks; t None = a random level, as in training
            a = attention_hit_rate_batch(pipe.transformer, batch, pipe.codec, sched, cfg,
                                         torch.Generator("cpu").manual_seed(p.seed + i), pipe.transformer.device, t)
            rates = [v for k, v in a.items() if k.startswith("hit_rate_l") and v is not None]
            return (float(np.mean(rates)) if rates else None), a["chance"]

        m["attention_hit_rate"], m["attention_chance"] = hit(None)
        for band, ts in bands.items():
            rates = [r for r in (hit(t)[0] for t in ts) if r is not None]
            m[f"attention_hit_rate_{band}"] = float(np.mean(rates)) if rates else None
    else:
        m |= {"geometry_error_mm": None, "geometry_error_mm_p95": None, "attention_hit_rate": None,
              "attention_chance": None, **{f"attention_hit_rate_{b}": None for b in bands}}
        notes.append("no geometry stream: no UV map, mesh or alignment attention")
    if stats is not None:
        g = posmap_error_mm(stats.mean_posmap, gt_posmap, uv_mask)
        m |= {"baseline_mean_uv_geometry_error_mm": g["geo_mean_mm"], "baseline_mean_uv_geometry_error_mm_p95": g["geo_p95_mm"]}
        c = camera_only_hit_rate([cams[ref], *tcams], item["a2g_index"].numpy(), item["a2g_weight"].numpy(),
                                 ds.meta.app_tokens ** 2, (ds.meta.geo_tokens,) * 2, stats.views, canon[::10])
        # no noise input: the same number in every band, written beside each band's model key
        m |= {f"baseline_camera_only_attention_hit_rate{suffix}": c["hit_rate"] for suffix in ("", *[f"_{b}" for b in bands])}
    per_view = []
    for t, c, g1, g2, f in zip(tg, tcams, out.images, gt, fg):
        v = image_metrics([g1], [g2], masks=[f])
        per_view.append({"sample": name, "camera": c.name, "yaw_deg": round(float(yaw[t]), 2),
                         "yaw_from_reference_deg": round(float(yaw[t] - yaw[ref]), 2), "psnr": _finite(v["psnr"]),
                         "ssim": v["ssim"], "psnr_fg": _finite(v["psnr_fg"]), "ssim_fg": v["ssim_fg"]})
    return SampleResult(name, m, per_view, images[ref], gt, out.images, [cams[ref], *tcams], out.posmap, gt_posmap,
                        uv_mask, out.vertices, canon, notes)


def aggregate(results: list[SampleResult]) -> dict:
    """Mean of every numeric metric over the samples where it is defined, with how many that was."""
    keys = [k for k in results[0].metrics if not k.endswith("_status")]
    out: dict = {}
    for k in keys:
        vals = [r.metrics.get(k) for r in results]
        vals = [v for v in vals if v is not None]
        out[k] = float(np.mean(vals)) if vals else None
        if len(vals) != len(results) and (vals or f"{k}_status" not in results[0].metrics):
            out[f"{k}_n"] = len(vals)  # not for a metric unavailable to the whole run (LPIPS: _status says why)
    out["lpips_status"] = results[0].metrics["lpips_status"]
    return out


def save_sample(folder: Path, r: SampleResult, faces: np.ndarray, export: bool) -> None:
    """One sample's files (geoface_model/evaluate_run.py docstring): reference, views, cameras, UV map, mesh, optional 3DGS start."""
    folder.mkdir(parents=True)
    write_png(folder / "reference.png", r.reference)
    for c, im in zip(r.cameras[1:], r.generated):
        write_png(folder / "views" / f"{c.name}.png", im)
    save_cameras(folder / "cameras.json", {c.name: c for c in r.cameras})
    if r.posmap is not None:
        np.save(folder / "posmap.npy", r.posmap.astype(np.float32))
    if r.vertices is not None:
        write_obj(folder / "mesh.obj", r.vertices, faces)
    if export:
        export_3dgs(folder / "gs", [r.reference, *r.generated], r.cameras, r.vertices,
                    faces if r.vertices is not None else None)
