"""The `uv` and `correspondences` stages' work over a folder of fits (also `geoface uv|correspondences`).

`bake_fits`: the canonical UV position map of every fitted frame. Canonical = the fitted identity +
expression + jaw (+ neck and eye pose, which the fit keeps near zero) with no global rotation or translation,
normalised to [-1, 1] by the fixed box of flame_fitting/uv/__init__.py (docs/uv_and_correspondences.md),
baked into the head model's UV layout at `resolution` with a validity mask and seam-aware gutter dilation.
Writes OUT/<subject>/<sequence>/<frame:05d>.npz (posmap, mask) + .canonical.npy, PNG previews and OBJ round
trips of the first frame of every sequence, and metrics (round trip posmap → mesh against the fitted
canonical mesh, clipped texels, UV-layout overlap, bake time).

`correspondences_for_fits`: per view of every fitted frame, pixel → (u, v) with visibility and depth, and the
token-level targets of the attention alignment loss, from the fitted (posed) mesh and the refined cameras (a mixed
rig's views, cameras of different sizes, on one pixel grid: `one_grid`).
Self-check: the cycle pixel → UV → 3D (through the frame's UV position map) → reprojected pixel; on synthetic
captures, accuracy against the ground-truth pixel→surface map. Writes OUT/<subject>/<sequence>/<frame:05d>.npz,
previews (colour-coded overlays and the paper's Figure 9 from ground truth where available, else from the fit).

Both run one work unit per fitted sequence on an executor (flame_fitting/core/units.py, core/executor.py): a
sequence whose inputs (the files of its fit and UV maps it reads, its capture files, the head model, the params, the
code) did not change keeps its outputs and previews as they are; the metrics are aggregated over every sequence from
the units' records.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.fileio import check_output_dir, preview_size, write_json, write_obj, write_png
from flame_fitting.core.params import spec
from flame_fitting.core.unit_keys import Unit, code_digest, tree_digest, unit_key
from flame_fitting.core.units import run_units, write_unit_failures
from flame_fitting.formats.capture import load_capture
from flame_fitting.formats.capture_checks import load_cameras
from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.formats.lineage import captures_version_of, check_same_capture
from flame_fitting.formats.units import capture_unit_hashes, unit_capture, unit_payload
from flame_fitting.geometry.camera import Camera
from flame_fitting.head.shared import shared_head_model

from .bake import bake_posmap, get_bake_table, model_layout
from .checks import aggregate, frame_metrics, layout_report, load_gt_raster
from .correspondence_files import save_correspondences
from .correspondences import TokenGrid, compute_correspondences, uv_from_fragments
from .files import load_posmap, save_posmap
from .preview import correspondence_overlay, figure9, posmap_rgb
from .sample import posmap_to_vertices


@dataclass
class UVParams:
    resolution: int = spec(256, "side of the UV position map in texels", lo=16, hi=4096)
    gutter: int = spec(4, "texels of seam-aware dilation around every chart", lo=0, hi=64)
    dtype: str = spec("float16", "storage precision of the maps (lossless for the model's needs)", choices=["float16", "float32"])


@dataclass
class CorrespondenceParams:
    min_app_coverage: float = spec(0.5, "a2g: fraction of an appearance token's pixels that must be visible", lo=0.0, hi=1.0)
    min_geo_pixels: int = spec(1, "g2a: pixels of a view that must see a geometry token", lo=1)
    check_stride: int = spec(2, "self-check every n-th pixel (1 = all)", lo=1)
    save_maps: str = spec("all", "per-pixel uv / visible / depth maps in the frame files: all frames, the first frame "
                          "of each sequence, or none (the token-level arrays are always written; the dataset stage "
                          "reads nothing else)", choices=["all", "first", "none"])


def fit_folders(fits: Path | str) -> list[Path]:
    """The sequence folders of a fits folder (<subject>/<sequence>/fit.npz), sorted."""
    return sorted(p.parent for p in Path(fits).glob("*/*/fit.npz"))


CANONICAL_KEYS = ("frame", "shape", "expr", "jaw_pose", "neck_pose", "eye_pose")  # the fit arrays a uv unit reads
# the files of a fit folder a unit reads, the only ones its key hashes: the fit's status.json, history.csv,
# residuals.parquet and noise_model.csv may change (a note, an overlay list) without re-running the units after it
UV_FIT_FILES = ("fit.npz",)
CORRESPONDENCE_FIT_FILES = ("fit.npz", "cameras.json")


@torch.no_grad()
def canonical_vertices(model, fit: dict, i: int) -> np.ndarray:
    """(V,3) canonical vertices of fitted frame index i (fit arrays as saved by the fit stage: CANONICAL_KEYS)."""
    t = lambda k: torch.as_tensor(fit[k][i:i + 1], dtype=torch.float32)  # noqa: E731
    return model.canonical(t("shape"), t("expr"), t("jaw_pose"), neck_pose=t("neck_pose"), eye_pose=t("eye_pose"))[0].numpy()


ROOT = Path(__file__).resolve().parents[1]  # flame_fitting/
ROOMS = ("__init__.py", "core", "geometry", "formats", "head", "uv")  # the code the uv outputs depend on


def _model_layout(head_model: str, n_shape: int, n_expr: int):
    model = shared_head_model(head_model, n_shape=n_shape, n_expr=n_expr)  # once per process and folder content
    return model, model_layout(model)


def _plain(o):
    return o.item() if hasattr(o, "item") else str(o)


def bake_fits(fits: Path | str, head_model: Path | str, out: Path | str, previews: Path | str | None, cfg: UVParams,
              metrics_path: Path | str | None = None, executor: ExecutorConfig | None = None) -> dict:
    """Bake every fitted frame of `fits` (see the module docstring; `previews` None: none), the sequences whose
    inputs changed only, on `executor`; returns (and writes) the metrics."""
    folders, out = fit_folders(fits), Path(out)
    check_output_dir(out, [fits, head_model], True, kind="uv")
    head, code = tree_digest(head_model), code_digest(*(ROOT / r for r in ROOMS))
    units = [Unit(f.parent.name, f.name, unit_key("uv", fit=tree_digest(f, UV_FIT_FILES), head=head, params=asdict(cfg),
                                                  code=code)) for f in folders]
    with open_executor(executor or ExecutorConfig(workers=1)) as ex:
        run = run_units(ex, partial(bake_unit, str(fits), str(head_model), cfg), units, out, "uv", extras=previews,
                        inputs=[fits, head_model], source=fits)
    write_unit_failures(out / "failures.json", run)
    recs = list(run.records.values())
    roundtrip = [x for r in recs for x in r["roundtrip_mm"]]          # per frame: mean over the vertices
    worst = [x for r in recs for x in r.get("roundtrip_mm_worst", [])]  # per frame: the worst vertex
    bake_ms = [x for t in run.timings.values() for x in t["bake_ms"]]  # the sequences baked now
    metrics = {"captures_version": captures_version_of(fits), "n_frames": sum(r["n"] for r in recs),
               "resolution": cfg.resolution,
               "roundtrip_mm_mean": float(np.mean(roundtrip)) if roundtrip else None,
               "roundtrip_mm_max": float(np.max(worst)) if worst else None,
               "clipped_texels": sum(r["clipped"] for r in recs),
               "bake_ms_median": float(np.median(bake_ms)) if bake_ms else None}
    # the layout's report needs the model's sizes, from a sequence with fitted frames: its shape and expr arrays only
    # (not its vertices: tens of MB per sequence at NeRSemble's scale)
    first = next((fit for fit in (load_sequence_fit(f, keys=("shape", "expr")) for f in folders)
                  if fit["shape"].ndim == 2), None)
    if first is not None:
        _, layout = _model_layout(str(head_model), first["shape"].shape[1], first["expr"].shape[1])
        metrics.update({f"layout_{k}": v for k, v in layout_report(layout, cfg.resolution).items()
                        if isinstance(v, (int, float))})
    metrics.update(run.summary())
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def bake_unit(fits: str, head_model: str, cfg: UVParams, unit: Unit, tmp: Path, previews: Path | None
              ) -> tuple[dict, list[str]]:
    """One uv unit (runs in a worker): the position maps of one fitted sequence into `tmp`, the preview and OBJ round
    trip of its first frame into `previews`. Returns the record (round trips, bake times, clipped texels) and the
    preview names; the bake times go under the record's `timing` (the stage's metrics, not the key file)."""
    fit = load_sequence_fit(Path(fits) / unit.subject / unit.sequence, keys=CANONICAL_KEYS)  # not its vertices
    model, layout = _model_layout(head_model, fit["shape"].shape[1], fit["expr"].shape[1])
    get_bake_table(layout, cfg.resolution, cfg.gutter)  # one-off per layout and process
    rec, names = {"roundtrip_mm": [], "roundtrip_mm_worst": [], "clipped": 0, "n": 0, "timing": {"bake_ms": []}}, []
    for i, frame in enumerate(fit["frame"].tolist()):
        frame_id = f"{unit.subject}/{unit.sequence}/{frame:05d}"
        canon = canonical_vertices(model, fit, i)
        t0 = time.perf_counter()
        baked = bake_posmap(canon, layout, cfg.resolution, cfg.gutter, frame_id=frame_id)
        rec["timing"]["bake_ms"].append((time.perf_counter() - t0) * 1e3)
        path = tmp / f"{frame:05d}.npz"
        save_posmap(path, baked, dtype=np.float16 if cfg.dtype == "float16" else np.float32, frame_id=frame_id)
        np.save(path.with_suffix(".canonical.npy"), canon.astype(np.float32))
        back = posmap_to_vertices(baked.posmap, layout, cfg.gutter)
        dist = np.linalg.norm(back - canon, axis=1) * 1e3
        rec["roundtrip_mm"].append(float(dist.mean()))
        rec["roundtrip_mm_worst"].append(float(dist.max()))
        rec["clipped"] += int(baked.n_clipped)
        rec["n"] += 1
        if i == 0 and previews is not None:
            stem = f"{unit.subject}_{unit.sequence}_{frame:05d}"
            write_png(previews / f"{stem}.png", posmap_rgb(baked.posmap, baked.mask))
            write_obj(previews / f"{stem}_from_posmap.obj", back, model.faces.numpy(), layout.uv, layout.uv_faces)
            names += [f"{stem}.png", f"{stem}_from_posmap.obj"]
    return rec, names


def correspondences_for_fits(fits: Path | str, uv: Path | str, captures: Path | str, head_model: Path | str,
                             out: Path | str, previews: Path | str | None, cfg: CorrespondenceParams, app_tokens: int,
                             geo_tokens: int, metrics_path: Path | str | None = None,
                             executor: ExecutorConfig | None = None) -> dict:
    """Correspondences of every fitted frame of `fits` at token grids `app_tokens`² / `geo_tokens`² per side (see
    the module docstring), the sequences whose inputs changed only, on `executor`; `uv` holds the position maps of
    `bake_fits`; `previews` None: none. Returns (and writes) the metrics."""
    cap, uv, out = load_capture(captures, check_files=False), Path(uv), Path(out)  # units check their images
    check_output_dir(out, [fits, uv, captures, head_model], True, kind="correspondences")
    check_same_capture(captures, fits, "fits")
    head, code = tree_digest(head_model), code_digest(*(ROOT / r for r in ROOMS))
    params = {**asdict(cfg), "app_tokens": app_tokens, "geo_tokens": geo_tokens}
    units = [Unit(f.parent.name, f.name, unit_key(
        "correspondences", fit=tree_digest(f, CORRESPONDENCE_FIT_FILES), uv=tree_digest(uv / f.parent.name / f.name),
        head=head, params=params, code=code, capture=capture_unit_hashes(cap, f.parent.name, f.name)))
        for f in fit_folders(fits)]
    fn = partial(correspondence_unit, str(fits), str(uv), str(cap.root), str(head_model), cfg, app_tokens, geo_tokens)
    with open_executor(executor or ExecutorConfig(workers=1)) as ex:
        run = run_units(ex, fn, units, out, "correspondences", extras=previews, inputs=[fits, uv, captures, head_model],
                        source=fits, payload=partial(unit_payload, cap))
    write_unit_failures(out / "failures.json", run)
    metrics = aggregate([f for r in run.records.values() for f in r["frames"]])
    metrics.update({"app_tokens": app_tokens, "geo_tokens": geo_tokens, "captures_version": captures_version_of(captures),
                    **run.summary()})
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def correspondence_unit(fits: str, uv: str, captures: str, head_model: str, cfg: CorrespondenceParams,
                        app_tokens: int, geo_tokens: int, unit: Unit, tmp: Path, previews: Path | None
                        ) -> tuple[dict, list[str]]:
    """One correspondences unit (runs in a worker): one fitted sequence into `tmp`, the previews of its first frame
    into `previews`. Returns the record (per-frame self-check metrics) and the preview names."""
    grid = TokenGrid(app_tokens, geo_tokens, cfg.min_app_coverage, cfg.min_geo_pixels)
    subject, sequence = unit.subject, unit.sequence
    cap = unit_capture(captures, unit)
    folder = Path(fits) / subject / sequence
    fit = load_sequence_fit(folder)
    _, layout = _model_layout(head_model, fit["shape"].shape[1], fit["expr"].shape[1])
    cams = load_cameras(folder / "cameras.json")
    cam_list = one_grid([cams[n] for n in sorted(cams)])
    mixed = any(c.size != cams[c.name].size for c in cam_list)
    per_frame, names = [], []
    for i, frame in enumerate(fit["frame"].tolist()):
        frame_id = f"{subject}/{sequence}/{frame:05d}"
        corr = compute_correspondences(fit["vertices"][i], layout, cam_list, grid, frame_id=frame_id)
        save_correspondences(tmp / f"{frame:05d}.npz", corr,
                             maps=cfg.save_maps == "all" or (cfg.save_maps == "first" and i == 0))
        uvf = Path(uv) / subject / sequence / f"{frame:05d}.npz"
        posmap = load_posmap(uvf).posmap
        canon = np.load(uvf.with_suffix(".canonical.npy"))
        frame_dir = cap.root / subject / sequence / f"{frame:05d}"
        gt = load_gt_raster(frame_dir, corr.views) if (frame_dir / "gt_raster.npz").is_file() and not mixed else None
        per_frame.append(frame_metrics(corr, posmap, cam_list, canon, fit["vertices"][i], layout, gt=gt,
                                       stride=cfg.check_stride))
        if i == 0 and previews is not None:
            names += write_previews(Path(previews), cap, subject, sequence, frame, corr, posmap, gt, layout)
    return {"frames": json.loads(json.dumps(per_frame, default=_plain))}, names


def one_grid(cameras: list[Camera]) -> list[Camera]:
    """A frame's cameras on one pixel grid: on a mixed rig (views of different sizes) every view is resampled to the
    largest width × height among them (`Camera.resized`, K scaled per axis). An appearance token is a fixed fraction
    of its view (row ⌊y·A/H⌋, column ⌊x·A/W⌋), so the token targets are those of each view at its own size up to
    pixel sampling; the per-pixel maps are on that grid. One-size rigs are returned as they are."""
    W, H = max(c.width for c in cameras), max(c.height for c in cameras)
    return [c if c.size == (W, H) else c.resized(W, H) for c in cameras]


def write_previews(previews: Path, cap, subject, sequence, frame, corr, posmap, gt, layout) -> list[str]:
    """Colour-coded overlays of up to 4 views and the paper's Figure 9 of one frame, under `previews`; returns the
    file names written."""
    m = cap.manifest
    rows = m[(m.subject == subject) & (m.sequence == sequence) & (m.frame == frame)].set_index("camera")
    images = np.stack([on_size(cap.image(rows.loc[v]), corr.size) for v in corr.views])  # a mixed rig: one grid
    order = np.argsort(rows.loc[list(corr.views)].yaw_deg.to_numpy()) if "yaw_deg" in rows.columns \
        else np.arange(len(corr.views))
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(4, len(order))).round().astype(int))]
    overlays = [preview_size(correspondence_overlay(images[k], corr.uv[k], corr.visible[k]), 512) for k in pick]
    write_png(previews / f"{subject}_{sequence}_{frame:05d}_overlay.png", np.concatenate(overlays, 1))
    if gt is not None:  # the paper's Figure 9 from the ground-truth pixel→surface map
        uv, vis = uv_from_fragments(gt[0], gt[1].astype(np.float32), layout), gt[0] >= 0
    else:
        uv, vis = corr.uv, corr.visible
    frontal = int(np.argmin(np.abs(rows.loc[[corr.views[k] for k in order]].yaw_deg.to_numpy()))) \
        if "yaw_deg" in rows.columns else 0
    fig = figure9(images[order], uv[order], vis[order], posmap_rgb(posmap, np.ones(posmap.shape[:2], bool)),
                  query_view=frontal, tol_texels=2.0, names=[corr.views[k] for k in order])
    write_png(previews / f"{subject}_{sequence}_{frame:05d}_figure9.png", fig)
    return [f"{subject}_{sequence}_{frame:05d}_overlay.png", f"{subject}_{sequence}_{frame:05d}_figure9.png"]


def on_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H,W,3) `image` resized to size = (width, height) (as `one_grid` resized its camera), unchanged if it is."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(int(x) for x in size), interpolation=cv2.INTER_AREA)
