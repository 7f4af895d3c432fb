"""DVC stage `correspondences`: per view of every fitted frame, pixel → (u, v) with visibility and
depth, and the token-level targets of the attention alignment loss.

From the fitted (posed) mesh and the refined cameras of data/fits; token grids from the `tokens`
params section shared with the model (appearance tokens per side = tokens.resolution /
tokens.patch_size, geometry tokens = tokens.uv_resolution / tokens.geo_patch_size), so the targets
and the model cannot disagree. Self-check: the cycle pixel → UV → 3D (through the frame's UV position
map from data/uv and the fit's pose) → reprojected pixel; on synthetic captures, accuracy against
the ground-truth pixel→surface map. Writes data/correspondences/<subject>/<sequence>/<frame:05d>.npz,
previews (plots/correspondences/: colour-coded overlays and the paper's Figure 9 from ground truth
where available, else from the fit) and metrics/correspondences.json.
Run: `dvc repro correspondences`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_json

from flame_fitting.formats.capture import load_cameras, load_capture
from flame_fitting.core.fileio import make_temp_dir, replace_dir
from flame_fitting.uv.correspondences import TokenGrid, compute_correspondences, save_correspondences
from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.head.head_model import load_head_model
from flame_fitting.core.params import build_config, read_params, spec
from flame_fitting.uv import UVLayout, load_posmap
from flame_fitting.uv.checks import aggregate, frame_metrics, load_gt_raster
from flame_fitting.uv.preview import correspondence_overlay, figure9
from flame_fitting.core.fileio import write_png
from geoface_model.config import TokensConfig

FITS, UV, OUT, PREVIEWS = Path("data/fits"), Path("data/uv"), Path("data/correspondences"), Path("plots/correspondences")


@dataclass
class CorrespondenceParams:
    min_app_coverage: float = spec(0.5, "a2g: fraction of an appearance token's pixels that must be visible", lo=0.0, hi=1.0)
    min_geo_pixels: int = spec(1, "g2a: pixels of a view that must see a geometry token", lo=1)
    check_stride: int = spec(2, "self-check every n-th pixel (1 = all)", lo=1)


def load_params(params: dict) -> tuple[CorrespondenceParams, TokensConfig]:
    return (build_config(CorrespondenceParams, params.get("correspondences"), "params.yaml:correspondences"),
            build_config(TokensConfig, params.get("tokens"), "params.yaml:tokens"))


def main() -> None:
    cfg, tok = load_params(read_params())
    grid = TokenGrid(tok.app_tokens, tok.geo_tokens, cfg.min_app_coverage, cfg.min_geo_pixels)
    cap = load_capture("data/captures")
    fits = sorted(p.parent for p in FITS.glob("*/*/fit.npz"))
    model, layout = None, None
    tmp = make_temp_dir(OUT)
    per_frame = []
    for folder in tqdm(fits, desc="correspondences"):
        fit = load_sequence_fit(folder)
        if model is None:
            model = load_head_model("data/head_model", n_shape=fit["shape"].shape[1], n_expr=fit["expr"].shape[1])
            layout = UVLayout.from_head_model(model)
        subject, sequence = folder.parent.name, folder.name
        cams = load_cameras(folder / "cameras.json")
        names = sorted(cams)
        cam_list = [cams[n] for n in names]
        for i, frame in enumerate(fit["frame"].tolist()):
            frame_id = f"{subject}/{sequence}/{frame:05d}"
            corr = compute_correspondences(fit["vertices"][i], layout, cam_list, grid, frame_id=frame_id)
            save_correspondences(tmp / subject / sequence / f"{frame:05d}.npz", corr)
            uvf = UV / subject / sequence / f"{frame:05d}.npz"
            posmap = load_posmap(uvf).posmap
            canon = np.load(uvf.with_suffix(".canonical.npy"))
            frame_dir = cap.root / subject / sequence / f"{frame:05d}"
            gt = load_gt_raster(frame_dir, corr.views) if (frame_dir / "gt_raster.npz").is_file() else None
            m = frame_metrics(corr, posmap, cam_list, canon, fit["vertices"][i], layout, gt=gt, stride=cfg.check_stride)
            per_frame.append(m)
            if i == 0:
                write_previews(cap, subject, sequence, frame, corr, posmap, gt, layout)
    replace_dir(tmp, OUT)
    metrics = aggregate(per_frame)
    metrics.update({"app_tokens": tok.app_tokens, "geo_tokens": tok.geo_tokens})
    write_json("metrics/correspondences.json", metrics)
    print(f"correspondences: {metrics['frames']} frames, cycle error median {metrics['cycle_error_px_median']} px")


def write_previews(cap, subject, sequence, frame, corr, posmap, gt, layout) -> None:
    from flame_fitting.uv.preview import posmap_rgb

    m = cap.manifest
    rows = m[(m.subject == subject) & (m.sequence == sequence) & (m.frame == frame)].set_index("camera")
    images = np.stack([cap.image(rows.loc[v]) for v in corr.views])
    order = np.argsort(rows.loc[list(corr.views)].yaw_deg.to_numpy()) if "yaw_deg" in rows.columns \
        else np.arange(len(corr.views))
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(4, len(order))).round().astype(int))]
    overlays = [correspondence_overlay(images[k], corr.uv[k], corr.visible[k]) for k in pick]
    write_png(PREVIEWS / f"{subject}_{sequence}_{frame:05d}_overlay.png", np.concatenate(overlays, 1))
    if gt is not None:  # the paper's Figure 9 from the ground-truth pixel→surface map
        from flame_fitting.uv.correspondences import uv_from_fragments

        uv, vis = uv_from_fragments(gt[0], gt[1].astype(np.float32), layout), gt[0] >= 0
    else:
        uv, vis = corr.uv, corr.visible
    frontal = int(np.argmin(np.abs(rows.loc[[corr.views[k] for k in order]].yaw_deg.to_numpy()))) \
        if "yaw_deg" in rows.columns else 0
    fig = figure9(images[order], uv[order], vis[order], posmap_rgb(posmap, np.ones(posmap.shape[:2], bool)),
                  query_view=frontal, tol_texels=2.0, names=[corr.views[k] for k in order])
    write_png(PREVIEWS / f"{subject}_{sequence}_{frame:05d}_figure9.png", fig)


if __name__ == "__main__":
    run(main)
