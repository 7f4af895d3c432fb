"""PNG previews of a head model for a human to look at: neutral (front, side), a few
identities (±2σ on the leading components), a few expressions (jaw open, leading expression
components) and the UV layout, in one labelled grid image.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from flame_fitting.geometry.camera import intrinsics, look_at
from flame_fitting.core.fileio import write_png
from flame_fitting.geometry.render import Lighting, render_mesh

TILE = 256


def _orbit_camera(yaw_deg: float, center: np.ndarray, dist: float = 0.75):
    yaw = np.deg2rad(yaw_deg)
    eye = center + dist * np.array([np.sin(yaw), 0.0, np.cos(yaw)])
    return look_at(eye, center), intrinsics(TILE * 2.0, TILE * 2.0, TILE / 2, TILE / 2)


def render_tiles(verts_list: list[np.ndarray], faces: np.ndarray, yaws: list[float]) -> list[np.ndarray]:
    """Grey-shaded renders (TILE×TILE RGB uint8) of meshes verts (V,3), one yaw (degrees) each."""
    center = np.asarray(verts_list[0], np.float64).mean(0)
    w2c, K = zip(*[_orbit_camera(y, center) for y in yaws])
    light = Lighting(direction=np.array([0.3, 0.4, 1.0]), ambient=0.35, diffuse=0.75)
    rgb, _ = render_mesh(np.stack(verts_list).astype(np.float32), faces, np.stack(K), np.stack(w2c), TILE, TILE,
                         [light] * len(yaws), vertex_colors=np.full((verts_list[0].shape[0], 3), 0.78, np.float32),
                         background=np.full((len(yaws), TILE, TILE, 3), 0.12, np.float32))
    return [(img * 255).astype(np.uint8) for img in rgb]


def uv_layout_tile(uv: np.ndarray, uv_faces: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The UV layout (TILE×TILE RGB uint8, v up): every chart triangle filled with the colour of its
    3D position (x, y, z → R, G, B over the mesh's bounding box), so a person sees which part of the
    head lands where; texels no triangle covers stay dark."""
    img = np.full((TILE, TILE, 3), 24, np.uint8)
    lo, hi = verts.min(0), verts.max(0)
    col = ((verts[faces].mean(1) - lo) / np.maximum(hi - lo, 1e-9) * 205 + 40).astype(np.uint8)
    pts = np.stack([uv[:, 0] * TILE, (1 - uv[:, 1]) * TILE], 1)
    tris = (pts[uv_faces] * 16).astype(np.int32)  # 4 bits of sub-pixel precision
    for tri, c in zip(tris, col):
        cv2.fillConvexPoly(img, tri, c.tolist(), cv2.LINE_8, shift=4)
    return img


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return img


@torch.no_grad()
def head_model_preview(model, out_png: Path | str) -> Path:
    """Write the preview grid of a `HeadModel` to out_png (atomic)."""
    faces = model.faces.cpu().numpy().astype(np.int32)

    def verts(shape=None, expr=None, jaw=None):
        out = model(shape=shape, expr=expr, jaw_pose=jaw)
        return out.vertices[0].cpu().numpy()

    def unit(n, k, s):
        x = torch.zeros(1, n)
        x[0, k] = s
        return x

    neutral = verts()
    items = [(neutral, 0.0, "neutral front"), (neutral, 60.0, "neutral 60 deg"), (neutral, 90.0, "neutral profile")]
    for k in range(min(3, model.n_shape)):
        for s in (-2.0, 2.0):
            items.append((verts(shape=unit(model.n_shape, k, s)), 20.0, f"identity {k} {s:+.0f} sd"))
    items.append((verts(jaw=torch.tensor([[0.3, 0.0, 0.0]])), 20.0, "jaw open 0.3 rad"))
    for k in range(min(3, model.n_expr)):
        items.append((verts(expr=unit(model.n_expr, k, 2.0)), 20.0, f"expression {k} +2"))
    tiles = render_tiles([v for v, _, _ in items], faces, [y for _, y, _ in items])
    tiles = [_label(t, lbl) for t, (_, _, lbl) in zip(tiles, items)]
    tiles.append(_label(uv_layout_tile(model.uv_coords.cpu().numpy(), model.uv_faces.cpu().numpy(), neutral, faces),
                        "UV layout (colour = 3D position)"))
    cols = 4
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)], 0)
    title = np.zeros((28, grid.shape[1], 3), np.uint8)
    cv2.putText(title, f"head model: {model.kind} ({model.n_vertices} vertices)" +
                ("  -- geoface stand-in, NOT FLAME" if model.kind == "standin" else ""), (8, 19),
                cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return write_png(out_png, np.concatenate([title, grid], 0))
