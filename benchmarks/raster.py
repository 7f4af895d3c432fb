"""Benchmark of the CPU rasteriser (flame_fitting/geometry/raster.py) against pytorch3d's CPU rasterize_meshes.

A head-sized ellipsoid (icosphere, 20480 faces, radii 0.10/0.125/0.10 m) 0.6 m in front of a
512² camera with f = 1000 px (covers ~40% of the image). Times, with the JIT warm:
one view on one thread (median of 30), 16 views in parallel on all threads, and pytorch3d's
`rasterize_meshes` (faces_per_pixel=1, naive CPU path, torch on one thread, median of 3).
Run: .venv/bin/python benchmarks/raster.py   (last line: one JSON object)
"""
from __future__ import annotations

import json
import time

import numba
import numpy as np
import torch

from flame_fitting.geometry.camera import intrinsics, look_at
from flame_fitting.geometry.meshes import icosphere
from flame_fitting.geometry.raster import project, rasterize

from _timing import timed

RES, FOCAL, DIST, SUBDIV = 512, 1000.0, 0.6, 5


def pytorch3d_ms(verts, faces, K, w2c, runs: int = 3) -> tuple[float, np.ndarray]:
    """pytorch3d CPU rasterize_meshes on the same view (screen -> pytorch3d NDC: +x left, +y up)."""
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    xy, z = project(verts, K[None], w2c[None])
    ndc = np.concatenate([1 - 2 * xy[0] / RES, z[0, :, None]], axis=1)  # pixel centre (j+.5) -> PixToNdc(W-1-j)
    mesh = Meshes([torch.tensor(ndc, dtype=torch.float32)], [torch.tensor(faces)])
    run = lambda: rasterize_meshes(mesh, RES, 0.0, 1, bin_size=0, perspective_correct=True)  # noqa: E731
    torch.set_num_threads(1)
    return timed(run, runs), run()[0][0, ..., 0].numpy()


def main() -> None:
    unit, faces = icosphere(SUBDIV)
    verts = (unit * [0.10, 0.125, 0.10]).astype(np.float32)
    K = intrinsics(FOCAL, FOCAL, RES / 2, RES / 2)
    w2c = look_at(eye=[0.0, 0.0, DIST], target=[0.0, 0.0, 0.0])
    one = lambda: rasterize(verts, faces, K[None], w2c[None], RES, RES)  # noqa: E731

    threads = numba.get_num_threads()
    one()  # JIT warm-up (compiles or loads the cache)
    numba.set_num_threads(1)
    ms = timed(one, 30)
    frags = one()
    coverage = float((frags.face_id[0] >= 0).mean())

    numba.set_num_threads(threads)
    eyes = [[DIST * np.sin(a), 0.05 * np.cos(3 * a), DIST * np.cos(a)] for a in np.linspace(-1.2, 1.2, 16)]
    Ks, w2cs = np.stack([K] * 16), np.stack([look_at(e, [0, 0, 0]) for e in eyes])
    many = lambda: rasterize(verts, faces, Ks, w2cs, RES, RES)  # noqa: E731
    many()
    ms16 = timed(many, 10) / 16

    p3d_ms, p3d_ids = pytorch3d_ms(verts, faces, K, w2c)
    agree = float((p3d_ids == frags.face_id[0])[p3d_ids >= 0].mean())
    print(f"raster: {len(faces)} faces, {RES}² view, coverage {coverage:.1%}: {ms:.2f} ms/view (1 thread), "
          f"{ms16:.2f} ms/view for 16 views on {threads} threads; pytorch3d CPU {p3d_ms:.0f} ms/view "
          f"(speedup {p3d_ms / ms:.0f}×, same face id on {agree:.2%} of its covered pixels)")
    print(json.dumps({"ms_per_view": round(ms, 3), "pytorch3d_ms_per_view": round(p3d_ms, 1),
                      "speedup": round(p3d_ms / ms, 1), "faces": int(len(faces)), "resolution": RES, "threads": 1,
                      "ms_per_view_16_parallel": round(ms16, 3), "parallel_threads": threads,
                      "coverage": round(coverage, 3), "face_id_agreement_pytorch3d": round(agree, 4)}))


if __name__ == "__main__":
    main()
