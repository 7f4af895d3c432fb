"""DVC stage `uv`: the canonical UV position map of every fitted frame.

Canonical = the fitted identity + expression + jaw (+ neck and eye pose, which the fit keeps near
zero) with no global rotation or translation, normalised to [-1, 1] by the fixed box of
flame_fitting/uv/__init__.py (docs/uv_and_correspondences.md), baked into the head model's UV layout at
`uv.resolution` with a validity mask and seam-aware gutter dilation. Writes
data/uv/<subject>/<sequence>/<frame:05d>.npz (posmap, mask, canonical vertices), PNG previews of
the first frame of every sequence (plots/uv/), and metrics/uv.json (round trip posmap → mesh
against the fitted canonical mesh, clipped texels, UV-layout overlap, bake time).
Run: `dvc repro uv`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_json

from flame_fitting.core.fileio import make_temp_dir, replace_dir
from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.head.head_model import load_head_model
from flame_fitting.core.params import build_config, read_params, spec
from flame_fitting.uv import UVLayout, bake_posmap, get_bake_table, posmap_to_vertices, save_posmap
from flame_fitting.uv.checks import layout_report
from flame_fitting.uv.preview import posmap_rgb
from flame_fitting.core.fileio import write_obj, write_png

FITS, OUT, PREVIEWS = Path("data/fits"), Path("data/uv"), Path("plots/uv")


@dataclass
class UVParams:
    resolution: int = spec(256, "side of the UV position map in texels", lo=16, hi=4096)
    gutter: int = spec(4, "texels of seam-aware dilation around every chart", lo=0, hi=64)
    dtype: str = spec("float16", "storage precision of the maps (lossless for the model's needs)", choices=["float16", "float32"])


@torch.no_grad()
def canonical_vertices(model, fit: dict, i: int) -> np.ndarray:
    """(V,3) canonical vertices of fitted frame index i (fit arrays as saved by the fit stage)."""
    t = lambda k: torch.as_tensor(fit[k][i:i + 1], dtype=torch.float32)  # noqa: E731
    return model.canonical(t("shape"), t("expr"), t("jaw_pose"), neck_pose=t("neck_pose"), eye_pose=t("eye_pose"))[0].numpy()


def load_params(params: dict) -> UVParams:
    return build_config(UVParams, params.get("uv"), "params.yaml:uv")


def main() -> None:
    cfg = load_params(read_params())
    fits = sorted(p.parent for p in FITS.glob("*/*/fit.npz"))
    first = load_sequence_fit(fits[0]) if fits else None
    model = load_head_model("data/head_model", n_shape=first["shape"].shape[1], n_expr=first["expr"].shape[1]) if fits \
        else None
    layout = UVLayout.from_head_model(model) if model is not None else None
    tmp = make_temp_dir(OUT)
    roundtrip, clipped, bake_ms, n = [], 0, [], 0
    if layout is not None:
        get_bake_table(layout, cfg.resolution, cfg.gutter)  # one-off per layout
    for folder in tqdm(fits, desc="uv"):
        fit = load_sequence_fit(folder)
        subject, sequence = folder.parent.name, folder.name
        for i, frame in enumerate(fit["frame"].tolist()):
            frame_id = f"{subject}/{sequence}/{frame:05d}"
            canon = canonical_vertices(model, fit, i)
            t0 = time.perf_counter()
            baked = bake_posmap(canon, layout, cfg.resolution, cfg.gutter, frame_id=frame_id)
            bake_ms.append((time.perf_counter() - t0) * 1e3)
            path = tmp / subject / sequence / f"{frame:05d}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_posmap(path, baked, dtype=np.float16 if cfg.dtype == "float16" else np.float32, frame_id=frame_id)
            np.save(path.with_suffix(".canonical.npy"), canon.astype(np.float32))
            back = posmap_to_vertices(baked.posmap, layout, cfg.gutter)
            roundtrip.append(float(np.linalg.norm(back - canon, axis=1).mean() * 1e3))
            clipped += int(baked.n_clipped)
            n += 1
            if i == 0:
                write_png(PREVIEWS / f"{subject}_{sequence}_{frame:05d}.png", posmap_rgb(baked.posmap, baked.mask))
                write_obj(PREVIEWS / f"{subject}_{sequence}_{frame:05d}_from_posmap.obj", back,
                          model.faces.numpy(), layout.uv, layout.uv_faces)
    replace_dir(tmp, OUT)
    metrics = {"n_frames": n, "resolution": cfg.resolution,
               "roundtrip_mm_mean": float(np.mean(roundtrip)) if roundtrip else None,
               "roundtrip_mm_max": float(np.max(roundtrip)) if roundtrip else None,
               "clipped_texels": clipped, "bake_ms_median": float(np.median(bake_ms)) if bake_ms else None}
    if layout is not None:
        metrics.update({f"layout_{k}": v for k, v in layout_report(layout, cfg.resolution).items()
                        if isinstance(v, (int, float))})
    write_json("metrics/uv.json", metrics)
    print(f"uv: {n} position maps at {cfg.resolution}², round trip {metrics['roundtrip_mm_mean']} mm")


if __name__ == "__main__":
    run(main)
