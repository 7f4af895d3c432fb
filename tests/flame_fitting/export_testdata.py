"""Test data for the exports of fits: a small head model, a capture and the fit stage's folder for it.

`make_export_data(root)` writes, under `root`:
    head/        a factory head model (flame_folder_factory, 10 shape / 8 expression components)
    capture/     one subject, one sequence, frames 0, 1, 2 (frame 2 with one view unmasked), 4 cameras of
                 60×44 pixels with fx ≠ fy and an off-centre principal point (a flipped cy or swapped w / h shows)
    fits/        <subject>/<sequence>/fit.npz (frames 0, 1, 2 fitted, frame 1 not ok = diverged) with random
                 parameters in every slot and the head model's vertices for them, and cameras.json: the capture's
                 cameras moved by a few mm (the "refined" ones), so `--cameras fit|capture` can be told apart
`make_export_data(root, MIXED)` makes a mixed rig instead: each camera its own size and aspect (`MIXED`).
From another test folder put `Path(__file__).parents[1] / "flame_fitting"` on sys.path first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flame_folder_factory import write_flame_folder

from flame_fitting.core.fileio import write_npz
from flame_fitting.formats.capture import CaptureWriter, save_cameras
from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.head.head_model import HeadModel

SUBJECT, SEQUENCE = "p001", "EMO-1"
FRAMES = (0, 1, 2)
DIVERGED = 1          # fitted but not ok: left out of the exports
UNMASKED = (2, "c3")  # (frame, camera) stored without a mask
N_SHAPE, N_EXPR = 10, 8
W, H = 60, 44
# a mixed rig: per camera (width, height), portrait / landscape / square / wide, the same K (principal points inside)
MIXED = {"c0": (44, 60), "c1": (60, 44), "c2": (48, 48), "c3": (72, 40)}


@dataclass
class ExportData:
    root: Path
    head: Path
    capture: Path
    fits: Path
    model: HeadModel
    capture_cameras: dict[str, Camera]
    fit_cameras: dict[str, Camera]
    params: dict[int, dict[str, np.ndarray]]   # frame -> fit_export.PARAMS names
    vertices: dict[int, np.ndarray]            # frame -> (V, 3) float32


def cameras(sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, Camera]:
    """Four cameras of W×H pixels, or of `sizes[name]` = (width, height)."""
    out = {}
    for i, yaw in enumerate(np.radians([-40, -10, 15, 45])):
        eye = 0.6 * np.array([np.sin(yaw), 0.1 * (i - 1.5), np.cos(yaw)])
        K = intrinsics(80.0 + 3 * i, 84.0 + 2 * i, 27.25 + i, 19.5 - 1.5 * i)  # off-centre: cx ≠ W/2, cy ≠ H/2
        w, h = (sizes or {}).get(f"c{i}", (W, H))
        out[f"c{i}"] = Camera(K=K, world_to_cam=look_at(eye, np.array([0.0, 0.01, 0.0])), width=w, height=h,
                              name=f"c{i}")
    return out


def moved(cam: Camera, rng: np.random.Generator) -> Camera:
    """The camera shifted by a few mm (a 'refined' camera)."""
    m = cam.world_to_cam.astype(np.float64).copy()
    m[:3, 3] += rng.uniform(-0.004, 0.004, 3)
    return cam.with_pose(m)


def random_frame_params(rng: np.random.Generator, shape: np.ndarray) -> dict[str, np.ndarray]:
    """Non-zero values in every slot (a swapped name moves the vertices)."""
    f = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return {"shape": f(shape), "expr": f(rng.standard_normal(N_EXPR)), "global_orient": f(rng.uniform(-0.3, 0.3, 3)),
            "transl": f(rng.uniform(-0.03, 0.03, 3)), "neck_pose": f(rng.uniform(-0.1, 0.1, 3)),
            "jaw_pose": f([rng.uniform(0.05, 0.2), rng.uniform(-0.05, 0.05), 0.02]),
            "eye_pose": f(rng.uniform(-0.2, 0.2, 6))}


def head_vertices(model: HeadModel, params: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v)[None] for k, v in params.items()}).vertices[0].numpy()


def make_export_data(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> ExportData:
    root = Path(root)
    spec = write_flame_folder(root / "head", n_shape=N_SHAPE, n_expr=N_EXPR, seed=5)
    model = HeadModel.from_folder(spec.path, N_SHAPE, N_EXPR)
    rng = np.random.default_rng(0)
    cams = cameras(sizes)
    with CaptureWriter(root / "capture", source="test") as w:
        w.set_cameras(SUBJECT, SEQUENCE, cams)
        for f in FRAMES:
            for name in cams:
                size = (cams[name].height, cams[name].width)
                rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                mask = None if (f, name) == UNMASKED else (rng.random(size) > 0.5).astype(np.uint8) * 255
                w.add_image(SUBJECT, SEQUENCE, f, name, rgb, mask=mask)
    fit_cams = {n: moved(c, rng) for n, c in cams.items()}
    shape = rng.standard_normal(N_SHAPE).astype(np.float32)
    params = {f: random_frame_params(rng, shape) for f in FRAMES}
    verts = {f: head_vertices(model, p) for f, p in params.items()}
    folder = root / "fits" / SUBJECT / SEQUENCE
    folder.mkdir(parents=True)
    write_npz(folder / "fit.npz", frame=np.array(FRAMES, np.int64), ok=np.array([f != DIVERGED for f in FRAMES]),
              vertices=np.stack([verts[f] for f in FRAMES]),
              **{k: np.stack([params[f][k] for f in FRAMES]) for k in params[0]})
    save_cameras(folder / "cameras.json", fit_cams)
    return ExportData(root, spec.path, root / "capture", root / "fits", model, cams, fit_cams, params, verts)
