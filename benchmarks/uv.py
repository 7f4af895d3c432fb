"""Benchmark of UV position maps and pixel↔UV correspondences (flame_fitting/uv/__init__.py, correspondences.py,
correspondence_files.py, uv_checks.py) on the head model: data/head_model if it exists, else the stand-in built
into a temp folder.

One random frame (seeded identity, expression, jaw, neck, eyes, global pose) seen by 16 cameras on a
frontal arc (yaw -90…90°, pitch -25…25°, 1 m from the head, f = 1500 px, 512²). Times with the JIT warm:
- bake_ms: canonical mesh → 256² UV position map (median of 50; the per-layout table is built once, bake_table_ms)
- correspondences_ms_per_frame: 16-view rasterisation + per-pixel UV / visibility / depth + token targets
  (32² appearance tokens of 16 px, 16² geometry tokens), median of 7
- save_ms / npz_mb: one frame's file (zlib level 1); _level6: the same arrays at numpy's default level (the files
  before 2026-12-07); _no_maps: without the per-pixel maps (`correspondences.save_maps: none`)
- cycle_error_px_median / _p95: pixel → UV → posmap → posed 3D → pixel, over every visible pixel of all views
Run: .venv/bin/python benchmarks/uv.py   (last line: one JSON object)
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.core.fileio import write_npz
from flame_fitting.uv.correspondence_files import save_correspondences
from flame_fitting.uv.correspondences import TokenGrid, compute_correspondences
from flame_fitting.head.head_model import HeadModel
from flame_fitting.uv import UVLayout, bake_posmap, get_bake_table, posmap_to_vertices
from flame_fitting.uv.checks import frame_metrics, layout_report

from _timing import timed

S, FOCAL, DIST, N_VIEWS, R = 512, 1500.0, 1.0, 16, 256


def head_model(tmp: Path) -> HeadModel:
    folder = Path("data/head_model")
    if not (folder / "head_model.json").exists() and not (folder / "FLAME_NEUTRAL.npz").exists():
        from flame_fitting.head.standin import build_standin
        folder = tmp / "head_model"
        build_standin(folder, seed=0)
    return HeadModel.from_folder(folder, n_shape=50, n_expr=30)


def frame(model: HeadModel, seed: int = 0):
    """Random canonical (V,3) and posed (V,3) vertices of one frame (canonical keeps neck/jaw/eyes)."""
    g = torch.Generator().manual_seed(seed)
    p = dict(shape=torch.randn(1, model.n_shape, generator=g), expr=torch.randn(1, model.n_expr, generator=g),
             jaw_pose=torch.tensor([[0.1 + 0.2 * torch.rand(1, generator=g).item(), 0.0, 0.0]]),
             neck_pose=0.1 * torch.randn(1, 3, generator=g), eye_pose=0.1 * torch.randn(1, 6, generator=g))
    with torch.no_grad():
        canonical = model.canonical(**p)[0].numpy()
        posed = model(**p, global_orient=0.2 * torch.randn(1, 3, generator=g),
                      transl=0.05 * torch.randn(1, 3, generator=g)).vertices[0].numpy()
    return canonical, posed


def arc_cameras(center: np.ndarray) -> list[Camera]:
    cams = []
    for k in range(N_VIEWS):
        yaw = np.radians(-90 + 180 * k / (N_VIEWS - 1))
        pitch = np.radians(-25 + 50 * ((7 * k) % N_VIEWS) / (N_VIEWS - 1))  # pitches spread over the arc
        eye = center + DIST * np.array([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)])
        cams.append(Camera(intrinsics(FOCAL, FOCAL, S / 2, S / 2), look_at(eye, center), S, S, name=f"cam{k:02d}"))
    return cams


def main() -> dict:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = head_model(Path(tmp))
        layout = UVLayout.from_head_model(model)
        canonical, posed = frame(model)
        cams = arc_cameras(posed.mean(0))
        tokens = TokenGrid(app_tokens=32, geo_tokens=16, min_app_coverage=0.5)

        t0 = time.perf_counter()
        get_bake_table(layout, R)
        table_ms = (time.perf_counter() - t0) * 1e3
        baked = bake_posmap(canonical, layout, R)  # JIT warm-up
        bake_ms = timed(lambda: bake_posmap(canonical, layout, R), 50)
        posmap_to_vertices(baked.posmap, layout)
        inverse_ms = timed(lambda: posmap_to_vertices(baked.posmap, layout), 10)
        rt = np.linalg.norm(posmap_to_vertices(baked.posmap, layout) - canonical, axis=1) * 1e3

        corr = compute_correspondences(posed, layout, cams, tokens, "bench")  # JIT warm-up
        corr_ms = timed(lambda: compute_correspondences(posed, layout, cams, tokens, "bench"), 7)
        t0 = time.perf_counter()
        path = save_correspondences(Path(tmp) / "corr.npz", corr)
        save_ms = (time.perf_counter() - t0) * 1e3
        size_mb = path.stat().st_size / 1e6
        with np.load(path) as z:  # the same arrays at numpy's default zlib level (what the files used before)
            arrays = dict(z)
        t0 = time.perf_counter()
        level6 = write_npz(Path(tmp) / "corr6.npz", compresslevel=6, **arrays)
        save6_ms, size6_mb = (time.perf_counter() - t0) * 1e3, level6.stat().st_size / 1e6
        t0 = time.perf_counter()
        lean = save_correspondences(Path(tmp) / "lean.npz", corr, maps=False)  # correspondences.save_maps: none
        lean_ms, lean_mb = (time.perf_counter() - t0) * 1e3, lean.stat().st_size / 1e6

        t0 = time.perf_counter()
        m = frame_metrics(corr, baked.posmap, cams, canonical, posed, layout)
        metrics_ms = (time.perf_counter() - t0) * 1e3
        per_view = [v["median"] for v in m["cycle_per_view"].values() if v["median"] is not None]
        lay = layout_report(layout, R)
    return {
        "head_model": model.kind, "views": N_VIEWS, "image": S, "uv_resolution": R, "threads": numba.get_num_threads(),
        "load_avg_1min": round(load, 2),
        "bake_table_ms": round(table_ms, 1), "inverse_ms": round(inverse_ms, 2),
        "roundtrip_mm_mean": round(float(rt.mean()), 4), "roundtrip_mm_max": round(float(rt.max()), 3),
        "visible_fraction": round(float(corr.visible.mean()), 4), "a2g_rows": int(len(corr.a2g_index)),
        "g2a_rows": int(len(corr.g2a_index)), "save_ms": round(save_ms, 1), "npz_mb": round(size_mb, 2),
        "save_ms_level6": round(save6_ms, 1), "npz_mb_level6": round(size6_mb, 2),
        "save_ms_no_maps": round(lean_ms, 1), "npz_mb_no_maps": round(lean_mb, 3),
        "metrics_ms": round(metrics_ms, 1), "cycle_error_px_p95": round(m["cycle_error_px_p95"], 4),
        "cycle_error_px_worst_view_median": round(max(per_view), 4), "empty_views": m["empty_views"],
        "uv_overlap_fraction": lay["uv_overlap_fraction"], "n_shared_uv_points": lay["n_shared_uv_points"],
        "bake_ms": round(bake_ms, 3), "correspondences_ms_per_frame": round(corr_ms, 1),
        "cycle_error_px_median": round(m["cycle_error_px_median"], 4),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
