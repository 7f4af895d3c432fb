"""Shaded, textured mesh rendering on the CPU, on top of the numba rasteriser.

`render_mesh` rasterises a mesh into N OpenCV cameras and shades every covered pixel:
albedo from a UV texture (bilinear) or per-vertex colours, Lambert lighting with an ambient
term and one directional light (per view), back faces (the inside of the head, e.g. the
mouth cavity) in a dark interior colour, composited over a background with cheap
silhouette antialiasing. It returns the fragments too, so callers get the exact
pixel→surface map of what they rendered.

`_shade_reference` is the short numpy version `_shade_kernel` is tested against;
`antialias_silhouette` (OpenCV, one view) is the reference of `_antialias_kernel` (all views).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit, prange

from flame_fitting.geometry.meshes import vertex_normals
from flame_fitting.geometry.raster import Fragments, rasterize


@dataclass
class Lighting:
    """Per-view lighting: direction the light travels *from* (world, unit), intensities."""

    direction: np.ndarray  # (3,) towards the light, world frame
    ambient: float = 0.45
    diffuse: float = 0.65
    interior: tuple[float, float, float] = (0.08, 0.03, 0.03)  # colour of back faces (mouth cavity)


@njit(cache=True, parallel=True, error_model="numpy")
def _shade_kernel(face_id, bary, faces, uv_faces, uv, texture, vcolor, use_tex, normals, front,
                  light_dir, ambient, diffuse, interior, out):
    n_views, h, w = face_id.shape
    th, tw = texture.shape[0], texture.shape[1]
    for vi in prange(n_views):
        for i in range(h):
            for j in range(w):
                f = face_id[vi, i, j]
                if f < 0:
                    continue
                b0, b1, b2 = bary[vi, i, j, 0], bary[vi, i, j, 1], bary[vi, i, j, 2]
                if not front[vi, f]:
                    for c in range(3):
                        out[vi, i, j, c] = min(max(interior[c], 0.0), 1.0)
                    continue
                a, b, cc = faces[f, 0], faces[f, 1], faces[f, 2]
                r = 0.0
                g = 0.0
                bl = 0.0
                if use_tex:
                    ta, tb, tc = uv_faces[f, 0], uv_faces[f, 1], uv_faces[f, 2]
                    u = b0 * uv[ta, 0] + b1 * uv[tb, 0] + b2 * uv[tc, 0]
                    v = b0 * uv[ta, 1] + b1 * uv[tb, 1] + b2 * uv[tc, 1]
                    x = min(max(u * tw - 0.5, 0.0), tw - 1.0)
                    y = min(max((1.0 - v) * th - 0.5, 0.0), th - 1.0)
                    x0 = min(int(x), tw - 2)
                    y0 = min(int(y), th - 2)
                    fx = x - x0
                    fy = y - y0
                    w00 = (1 - fx) * (1 - fy)
                    w01 = fx * (1 - fy)
                    w10 = (1 - fx) * fy
                    w11 = fx * fy
                    r = (w00 * texture[y0, x0, 0] + w01 * texture[y0, x0 + 1, 0] + w10 * texture[y0 + 1, x0, 0]
                         + w11 * texture[y0 + 1, x0 + 1, 0])
                    g = (w00 * texture[y0, x0, 1] + w01 * texture[y0, x0 + 1, 1] + w10 * texture[y0 + 1, x0, 1]
                         + w11 * texture[y0 + 1, x0 + 1, 1])
                    bl = (w00 * texture[y0, x0, 2] + w01 * texture[y0, x0 + 1, 2] + w10 * texture[y0 + 1, x0, 2]
                          + w11 * texture[y0 + 1, x0 + 1, 2])
                else:
                    r = b0 * vcolor[a, 0] + b1 * vcolor[b, 0] + b2 * vcolor[cc, 0]
                    g = b0 * vcolor[a, 1] + b1 * vcolor[b, 1] + b2 * vcolor[cc, 1]
                    bl = b0 * vcolor[a, 2] + b1 * vcolor[b, 2] + b2 * vcolor[cc, 2]
                nx = b0 * normals[vi, a, 0] + b1 * normals[vi, b, 0] + b2 * normals[vi, cc, 0]
                ny = b0 * normals[vi, a, 1] + b1 * normals[vi, b, 1] + b2 * normals[vi, cc, 1]
                nz = b0 * normals[vi, a, 2] + b1 * normals[vi, b, 2] + b2 * normals[vi, cc, 2]
                nn = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-12
                lam = (nx * light_dir[vi, 0] + ny * light_dir[vi, 1] + nz * light_dir[vi, 2]) / nn
                s = ambient[vi] + diffuse[vi] * max(lam, 0.0)
                out[vi, i, j, 0] = min(max(r * s, 0.0), 1.0)
                out[vi, i, j, 1] = min(max(g * s, 0.0), 1.0)
                out[vi, i, j, 2] = min(max(bl * s, 0.0), 1.0)


def _shade_reference(frags: Fragments, faces, uv_faces, uv, texture, normals, front, light_dir, ambient, diffuse,
                     interior) -> np.ndarray:
    """Slow, obvious numpy version of `_shade_kernel` (texture path), for tests."""
    n, h, w = frags.face_id.shape
    out = np.zeros((n, h, w, 3), np.float64)
    th, tw = texture.shape[:2]
    for vi in range(n):
        ii, jj = np.nonzero(frags.face_id[vi] >= 0)
        f = frags.face_id[vi, ii, jj]
        b = frags.bary[vi, ii, jj].astype(np.float64)
        uvp = (b[:, :, None] * uv[uv_faces[f]]).sum(1)
        x = np.clip(uvp[:, 0] * tw - 0.5, 0, tw - 1)
        y = np.clip((1 - uvp[:, 1]) * th - 0.5, 0, th - 1)
        x0 = np.minimum(x.astype(int), tw - 2)
        y0 = np.minimum(y.astype(int), th - 2)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        col = ((1 - fx) * (1 - fy) * texture[y0, x0] + fx * (1 - fy) * texture[y0, x0 + 1]
               + (1 - fx) * fy * texture[y0 + 1, x0] + fx * fy * texture[y0 + 1, x0 + 1])
        nrm = (b[:, :, None] * normals[vi][faces[f]]).sum(1)
        lam = (nrm @ light_dir[vi]) / (np.linalg.norm(nrm, axis=1) + 1e-12)
        col = col * (ambient[vi] + diffuse[vi] * np.maximum(lam, 0))[:, None]
        col[~front[vi, f]] = interior
        out[vi, ii, jj] = col
    return out.astype(np.float32)


def front_facing(verts: np.ndarray, faces: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(N,F) bool: face normal points towards camera centre n (verts (V,3) or (N,V,3), centers (N,3))."""
    v = verts if verts.ndim == 3 else verts[None]
    p0 = v[:, faces[:, 0]]
    fn = np.cross(v[:, faces[:, 1]] - p0, v[:, faces[:, 2]] - p0)
    return np.einsum("nfk,nfk->nf", fn, centers[:, None, :] - p0) > 0


def antialias_silhouette(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend the one-pixel band around a silhouette with its 3×3 blur. rgb (H,W,3) float, mask (H,W) bool."""
    m = mask.astype(np.float32)
    soft = cv2.blur(m, (3, 3))
    edge = (soft > 0) & (soft < 1)
    if not edge.any():
        return rgb
    blurred = cv2.GaussianBlur(rgb, (3, 3), 0.6)
    out = rgb.copy()
    out[edge] = blurred[edge]
    return out


@njit(cache=True, parallel=True)
def _antialias_kernel(img, face_id, g):
    """In place, per view (prange): pixels whose 3×3 neighbourhood mixes covered and empty pixels get
    the 3×3 Gaussian blur (separable weights g (3,)) of the un-antialiased image. Borders reflect
    without repeating the edge pixel (OpenCV's BORDER_REFLECT_101), as `antialias_silhouette`."""
    n_views, h, w = face_id.shape
    for vi in prange(n_views):
        count = 0
        for i in range(h):
            for j in range(w):
                if _mixed(face_id, vi, i, j, h, w):
                    count += 1
        rows = np.empty(count, np.int64)
        cols = np.empty(count, np.int64)
        vals = np.empty((count, 3), np.float32)
        k = 0
        for i in range(h):
            for j in range(w):
                if not _mixed(face_id, vi, i, j, h, w):
                    continue
                rows[k], cols[k] = i, j
                for c in range(3):
                    acc = 0.0
                    for di in range(-1, 2):
                        ii = _reflect101(i + di, h)
                        for dj in range(-1, 2):
                            acc += g[di + 1] * g[dj + 1] * img[vi, ii, _reflect101(j + dj, w), c]
                    vals[k, c] = acc
                k += 1
        for k in range(count):
            for c in range(3):
                img[vi, rows[k], cols[k], c] = vals[k, c]


@njit(cache=True, inline="always")
def _reflect101(i, n):
    if n == 1:
        return 0
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


@njit(cache=True, inline="always")
def _mixed(face_id, vi, i, j, h, w):
    """Does the 3×3 neighbourhood (reflect-101 borders) of pixel (i, j) hold covered and empty pixels?"""
    any_in = False
    any_out = False
    for di in range(-1, 2):
        ii = _reflect101(i + di, h)
        for dj in range(-1, 2):
            if face_id[vi, ii, _reflect101(j + dj, w)] >= 0:
                any_in = True
            else:
                any_out = True
    return any_in and any_out


def antialias_views(img: np.ndarray, face_id: np.ndarray) -> None:
    """`antialias_silhouette` of every view, in place: img (N,H,W,3) float32, face_id (N,H,W) int32."""
    g = cv2.getGaussianKernel(3, 0.6).ravel().astype(np.float64)
    _antialias_kernel(img, np.ascontiguousarray(face_id), g)


def render_mesh(verts: np.ndarray, faces: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray, width: int,
                height: int, lights: list[Lighting], texture: np.ndarray | None = None, uv: np.ndarray | None = None,
                uv_faces: np.ndarray | None = None, vertex_colors: np.ndarray | None = None,
                background: np.ndarray | None = None, antialias: bool = True,
                out: np.ndarray | None = None) -> tuple[np.ndarray, Fragments]:
    """Render N views. verts (V,3) or (N,V,3) world; K (N,3,3); world_to_cam (N,4,4);
    texture (Ht,Wt,3) float32 [0,1] with uv (T,2)/uv_faces (F,3), or vertex_colors (V,3);
    background (N,H,W,3) float32 or None (black); out: optional (N,H,W,3) float32 C-contiguous buffer
    to render into (reusing one across calls saves fresh-memory page faults).
    Returns rgb (N,H,W,3) float32 [0,1] (`out` when given), fragments."""
    n = K.shape[0]
    if len(lights) != n:
        raise ValueError(f"render_mesh: {n} cameras but {len(lights)} lights")
    faces = np.ascontiguousarray(faces, np.int32)
    frags = rasterize(verts, faces, K, world_to_cam, width, height)
    vv = verts if verts.ndim == 3 else np.broadcast_to(verts, (n, *verts.shape))
    normals = np.stack([vertex_normals(vv[i], faces) for i in range(n)]).astype(np.float32) if verts.ndim == 3 else \
        np.broadcast_to(vertex_normals(verts, faces).astype(np.float32), (n, *verts.shape))
    R = world_to_cam[:, :3, :3].astype(np.float64)
    centers = -np.einsum("nji,nj->ni", R, world_to_cam[:, :3, 3].astype(np.float64))
    front = front_facing(np.asarray(verts, np.float64), faces, centers)  # (V,3) shared or (N,V,3)
    use_tex = texture is not None
    if use_tex and (uv is None or uv_faces is None):
        raise ValueError("render_mesh: a texture needs uv and uv_faces")
    tex = np.ascontiguousarray(texture if use_tex else np.zeros((2, 2, 3)), np.float32)
    vcol = np.ascontiguousarray(vertex_colors if vertex_colors is not None else np.full((vv.shape[1], 3), 0.7), np.float32)
    uvs = np.ascontiguousarray(uv if use_tex else np.zeros((1, 2)), np.float32)
    uvf = np.ascontiguousarray(uv_faces if use_tex else faces, np.int32)
    ldir = np.stack([np.asarray(lt.direction, np.float32) / np.linalg.norm(lt.direction) for lt in lights])
    if out is None:
        out = np.empty((n, height, width, 3), np.float32)
    elif out.shape != (n, height, width, 3) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"render_mesh: out must be a C-contiguous float32 array {(n, height, width, 3)}, "
                         f"got {out.dtype} {out.shape}")
    if background is None:
        out[...] = 0.0
    else:
        np.clip(background, 0.0, 1.0, out=out)  # the kernel clips what it shades
    _shade_kernel(frags.face_id, frags.bary, faces, uvf, uvs, tex, vcol, use_tex,
                  np.ascontiguousarray(normals, np.float32), front, ldir,
                  np.array([lt.ambient for lt in lights], np.float32), np.array([lt.diffuse for lt in lights], np.float32),
                  np.asarray(lights[0].interior, np.float32), out)
    if antialias:
        antialias_views(out, frags.face_id)
    return out, frags
