"""Canonical UV position maps: bake a head mesh into its UV layout, and turn a map back into a mesh.

A UV position map stores, at every texel of the head model's UV layout, the canonical (FLAME-frame,
no global rotation / translation) position of the surface point with that UV, normalised to [-1, 1]
by ONE fixed box (`BOX_CENTER`, `BOX_HALF`, see docs/uv_and_correspondences.md):

    normalised = (xyz_metres - BOX_CENTER) / BOX_HALF, clipped to [-1, 1] (clipped texels are counted)

Layout: `posmap (R, R, 3) float32`, texel (row r, col c) has centre u = (c+0.5)/R, v = 1-(r+0.5)/R
(OBJ convention, row 0 is v = 1; `raster.rasterize_uv`). `mask (R, R) bool` = texels covered by a
triangle (un-dilated validity). Texels of the `gutter` rings around the charts hold the chart's surface
extrapolated there, so bilinear lookups near seams stay on the chart.

Baking a frame = one gather + weighted sum over a per-layout texel table (`get_bake_table`, cached per
(layout, R, gutter)): covered texels use their (face, barycentric) from `rasterize_uv`; a gutter texel
(≤ `gutter` texels from a chart, found with a Euclidean distance transform) uses the face of its nearest
covered texel with barycentrics extrapolated to its own centre (its nearest texel's weights when that
would exceed `MAX_EXTRAPOLATION`). The nearest covered texel decides the chart, so charts need ≥ 2 texels
of free space between them for seam lookups to be exact. `_bake_reference` is the numpy version the numba
kernel is tested against.

Inverse: `posmap_to_vertices` (seam-aware bilinear samples at the template's per-corner UVs, a vertex's
UV copies averaged; `vertex_sampler`) and `posmap_to_points` (valid texels), both in metres; `write_obj`,
`save_posmap` / `load_posmap` (files written atomically).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit
from scipy.ndimage import distance_transform_edt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from flame_fitting.raster import rasterize_uv, uv_overlap_fraction

# One fixed normalisation box for every frame (FLAME frame, metres). FLAME's origin sits near the
# neck/head joint; the head extends ~0.13 m above it and the neck ~0.2 m below. Measured on the
# stand-in (build_standin seed 0) over 192 random canonical heads (identity/expression ~N(0, 1..3 sd),
# jaw 0..0.5 rad, neck ~N(0, 0.3 rad)): x [-0.136, 0.144], y [-0.242, 0.160], z [-0.156, 0.144].
# The box below is x, z in [-0.25, 0.25], y in [-0.29, 0.21]: >= 4.8 cm margin on every side.
BOX_CENTER = np.array([0.0, -0.04, 0.0], np.float32)  # metres
BOX_HALF = 0.25  # metres; the same half-size on all axes keeps the map's aspect ratio (isotropic)

__all__ = ["BOX_CENTER", "BOX_HALF", "BakedPosmap", "UVError", "UVLayout", "bake_posmap", "normalize_points",
           "denormalize_points", "sample_bilinear", "posmap_to_vertices", "posmap_to_points", "write_obj",
           "save_posmap", "load_posmap", "get_bake_table", "BakeTable", "MAX_EXTRAPOLATION", "vertex_sampler"]


class UVError(ValueError):
    """Bad input to the UV position map code (names the frame or file)."""


# ----------------------------------------------------------------------------- layout + texel table
@dataclass(frozen=True, eq=False)
class UVLayout:
    """A mesh's UV layout. Build with `UVLayout.from_arrays` or `UVLayout.from_head_model`."""

    uv: np.ndarray            # (T, 2) float32 in [0, 1], OBJ convention (v up)
    uv_faces: np.ndarray      # (F, 3) int32 indices into uv
    faces: np.ndarray         # (F, 3) int32 vertex indices, same face order
    n_vertices: int
    corner_pairs: np.ndarray  # (P, 2) int64 distinct (vertex, uv index) pairs of the face corners
    face_chart: np.ndarray    # (F,) int32 connected component (chart) of each face in UV
    key: str                  # content hash of (uv, uv_faces, faces)

    @classmethod
    def from_arrays(cls, uv: np.ndarray, uv_faces: np.ndarray, faces: np.ndarray,
                    n_vertices: int | None = None) -> UVLayout:
        uv = np.ascontiguousarray(uv, np.float32)
        uf, f = np.asarray(uv_faces), np.asarray(faces)
        if uv.ndim != 2 or uv.shape[1] != 2 or not np.isfinite(uv).all() or uv.min() < 0 or uv.max() > 1:
            raise UVError(f"UVLayout: uv must be finite (T, 2) in [0, 1], got {uv.shape}")
        if uf.shape != f.shape or f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer) \
                or not np.issubdtype(uf.dtype, np.integer):
            raise UVError(f"UVLayout: uv_faces and faces must be (F, 3) integer arrays, got {uf.shape}, {f.shape}")
        nv = int(f.max()) + 1 if n_vertices is None else int(n_vertices)
        if uf.min() < 0 or uf.max() >= len(uv) or f.min() < 0 or f.max() >= nv:
            raise UVError(f"UVLayout: indices out of range ({len(uv)} uv coordinates, {nv} vertices)")
        uf, f = np.ascontiguousarray(uf, np.int32), np.ascontiguousarray(f, np.int32)
        pairs = np.unique(np.stack([f.ravel(), uf.ravel()], 1).astype(np.int64), axis=0)
        T = len(uv)  # charts: faces connected through shared uv vertices
        rows = np.repeat(np.arange(len(uf)), 3)
        graph = coo_matrix((np.ones(rows.size), (rows, len(uf) + uf.ravel())), shape=(len(uf) + T, len(uf) + T))
        _, comp = connected_components(graph, directed=False)
        _, chart = np.unique(comp[:len(uf)], return_inverse=True)
        h = hashlib.sha1(uv.tobytes() + uf.tobytes() + f.tobytes() + str(nv).encode()).hexdigest()[:16]
        return cls(uv, uf, f, nv, pairs, chart.astype(np.int32), h)

    @classmethod
    def from_head_model(cls, model) -> UVLayout:
        """The layout of a `flame_fitting.head_model.HeadModel` (uv_coords, uv_faces, faces)."""
        return cls.from_arrays(model.uv_coords.cpu().numpy(), model.uv_faces.cpu().numpy(),
                               model.faces.cpu().numpy(), model.n_vertices)

    @property
    def n_charts(self) -> int:
        return int(self.face_chart.max()) + 1 if len(self.face_chart) else 0


@dataclass(frozen=True, eq=False)
class BakeTable:
    """Per-(layout, R, gutter) texel table: rows [0, n_valid) are covered texels, then the gutter texels."""

    resolution: int
    gutter: int
    face_id: np.ndarray   # (R, R) int32 face covering each texel, -1 outside the charts (rasterize_uv)
    mask: np.ndarray      # (R, R) bool covered texels
    dilated: np.ndarray   # (R, R) bool covered or gutter texels
    chart: np.ndarray     # (R, R) int32 chart of covered and gutter texels, -1 elsewhere
    texels: np.ndarray    # (M,) int64 flat texel index (r * R + c)
    row_faces: np.ndarray  # (M,) int32 face of each row (for gutter rows: the face extrapolated)
    vids: np.ndarray      # (M, 3) int32 vertex ids of the row's face
    weights: np.ndarray   # (M, 3) float32 barycentric weights (extrapolated for gutter rows)
    n_valid: int
    overlap_fraction: float  # raster.uv_overlap_fraction of the layout at R


MAX_EXTRAPOLATION = 8.0  # |barycentric| bound for gutter rows; beyond it the nearest texel is copied
_TABLES: dict[tuple[str, int, int], BakeTable] = {}


def _texel_centres(flat: np.ndarray, R: int) -> np.ndarray:
    """flat texel indices (M,) -> uv of their centres (M, 2) float64."""
    r, c = np.divmod(flat, R)
    return np.stack([(c + 0.5) / R, 1.0 - (r + 0.5) / R], 1)


def _gutter_rows(layout: UVLayout, face_id, bary, R: int, gutter: int):
    """Gutter texels (K,) flat, their faces (K,) and weights (K, 3) float64, from the nearest covered texel."""
    mask = face_id >= 0
    if gutter <= 0 or not mask.any() or mask.all():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    dist, (ir, ic) = distance_transform_edt(~mask, return_indices=True)
    gut = ~mask & (dist <= gutter)
    dst = np.flatnonzero(gut)
    src = (ir[gut] * R + ic[gut]).astype(np.int64)
    f = face_id.ravel()[src].astype(np.int64)
    tri = layout.uv[layout.uv_faces[f]].astype(np.float64)  # (K, 3, 2)
    e1, e2, d = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], _texel_centres(dst, R) - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        w1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / det
        w2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / det
    w = np.stack([1.0 - w1 - w2, w1, w2], 1)
    bad = ~np.isfinite(w).all(1) | (np.abs(w).max(1) > MAX_EXTRAPOLATION)
    w[bad] = bary.reshape(-1, 3)[src[bad]]
    return dst, f, w


def get_bake_table(layout: UVLayout, resolution: int = 256, gutter: int = 4) -> BakeTable:
    """The texel table of `layout` at R = resolution with `gutter` rings of dilation (cached in memory)."""
    if int(resolution) != resolution or resolution < 2 or int(gutter) != gutter or gutter < 0:
        raise UVError(f"get_bake_table: resolution must be an integer >= 2 and gutter >= 0, got {resolution}, {gutter}")
    R, gutter = int(resolution), int(gutter)
    key = (layout.key, R, gutter)
    if key not in _TABLES:
        face_id, bary = rasterize_uv(layout.uv, layout.uv_faces, R)
        mask = face_id >= 0
        valid = np.flatnonzero(mask)
        g_tex, g_face, g_w = _gutter_rows(layout, face_id, bary, R, gutter)
        faces = np.concatenate([face_id.ravel()[valid], g_face]).astype(np.int64)
        texels = np.concatenate([valid, g_tex]).astype(np.int64)
        dilated = mask.copy()
        dilated.ravel()[g_tex] = True
        chart = np.full(R * R, -1, np.int32)
        chart[texels] = layout.face_chart[faces]
        _TABLES[key] = BakeTable(
            R, gutter, face_id, mask, dilated, chart.reshape(R, R), texels, faces.astype(np.int32),
            np.ascontiguousarray(layout.faces[faces], np.int32),
            np.ascontiguousarray(np.concatenate([bary.reshape(-1, 3)[valid], g_w]), np.float32), len(valid),
            uv_overlap_fraction(layout.uv, layout.uv_faces, R))
    return _TABLES[key]


def normalize_points(points: np.ndarray) -> np.ndarray:
    """(..., 3) metres -> (..., 3) float32 box coordinates (not clipped; inside the box = [-1, 1])."""
    return ((np.asarray(points, np.float32) - BOX_CENTER) / np.float32(BOX_HALF)).astype(np.float32)


def denormalize_points(points: np.ndarray) -> np.ndarray:
    """(..., 3) box coordinates -> (..., 3) float32 metres."""
    return (np.asarray(points, np.float32) * np.float32(BOX_HALF) + BOX_CENTER).astype(np.float32)


@dataclass(eq=False)
class BakedPosmap:
    posmap: np.ndarray  # (R, R, 3) float32 in [-1, 1], gutter-dilated, 0 elsewhere outside the charts
    mask: np.ndarray    # (R, R) bool, texels covered by the layout (un-dilated)
    n_clipped: int      # covered texels with a coordinate outside the box (clipped to ±1)
    layout_key: str


# ----------------------------------------------------------------------------- baking
@njit(cache=True, error_model="numpy")
def _bake_kernel(verts, texel, vid, w, center, inv_half, out, clipped):
    """verts (V,3) f32, rows texel (M,), vid (M,3), w (M,3) -> out (R*R,3) f32 normalised + clipped, clipped (M,) bool.
    Serial on purpose: ~0.3 ms at 256², where a parallel barrier costs more than it saves on a busy machine."""
    for m in range(texel.shape[0]):
        t = texel[m]
        a, b, c = vid[m, 0], vid[m, 1], vid[m, 2]
        w0, w1, w2 = w[m, 0], w[m, 1], w[m, 2]
        hit = False
        for k in range(3):
            y = (w0 * verts[a, k] + w1 * verts[b, k] + w2 * verts[c, k] - center[k]) * inv_half
            if y > 1.0:
                y, hit = 1.0, True
            elif y < -1.0:
                y, hit = -1.0, True
            out[t, k] = y
        clipped[m] = hit


def _bake_reference(table: BakeTable, verts: np.ndarray) -> tuple[np.ndarray, int]:
    """Slow numpy version of the bake: (R,R,3) normalised + clipped posmap, number of clipped covered texels."""
    R = table.resolution
    pos = np.einsum("mk,mkc->mc", table.weights.astype(np.float64), verts.astype(np.float64)[table.vids])
    y = (pos - BOX_CENTER) / BOX_HALF
    clipped = (np.abs(y) > 1).any(1)
    out = np.zeros((R * R, 3), np.float32)
    out[table.texels] = np.clip(y, -1, 1)
    return out.reshape(R, R, 3), int(clipped[:table.n_valid].sum())


def _check_verts(verts, layout: UVLayout, frame_id: str, what: str) -> np.ndarray:
    v = np.asarray(verts)
    if v.shape != (layout.n_vertices, 3):
        raise UVError(f"frame {frame_id}: {what} must be ({layout.n_vertices}, 3) like the UV layout's mesh, "
                      f"got {v.shape}")
    v = np.ascontiguousarray(v, np.float32)
    if not np.isfinite(v).all():
        bad = np.flatnonzero(~np.isfinite(v).all(1))
        raise UVError(f"frame {frame_id}: {what} contain NaN/inf at {len(bad)} vertices (first: {bad[:5].tolist()}); "
                      f"refusing to bake")
    return v


def bake_posmap(canonical: np.ndarray, layout: UVLayout, resolution: int = 256, gutter: int = 4,
                frame_id: str = "?") -> BakedPosmap:
    """canonical (V, 3) metres, FLAME frame, no global rotation/translation -> BakedPosmap at R = resolution.
    Raises UVError naming `frame_id` for NaN/inf vertices or a vertex count that does not match the layout."""
    verts = _check_verts(canonical, layout, frame_id, "canonical vertices")
    table = get_bake_table(layout, resolution, gutter)
    R = table.resolution
    out = np.zeros((R * R, 3), np.float32)
    clipped = np.empty(len(table.texels), np.bool_)
    _bake_kernel(verts, table.texels, table.vids, table.weights, BOX_CENTER, np.float32(1.0 / BOX_HALF), out, clipped)
    return BakedPosmap(out.reshape(R, R, 3), table.mask, int(clipped[:table.n_valid].sum()), layout.key)


# ----------------------------------------------------------------------------- sampling / inverse
def _bilinear_taps(uv: np.ndarray, R: int) -> tuple[np.ndarray, np.ndarray]:
    """uv (N, 2) in [0, 1] -> flat texel indices (N, 4) int64 and bilinear weights (N, 4) float64 of the 4
    texels around each point (texel centres as in the module docstring). In the outer half texel of the
    square the weights extrapolate linearly from the two border texels (so they may be negative)."""
    uv = np.asarray(uv, np.float64).reshape(-1, 2)
    x = uv[:, 0] * R - 0.5
    y = (1.0 - uv[:, 1]) * R - 0.5
    x0 = np.clip(np.floor(x), 0, R - 2).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, R - 2).astype(np.int64)
    fx, fy = x - x0, y - y0
    idx = np.stack([y0 * R + x0, y0 * R + x0 + 1, (y0 + 1) * R + x0, (y0 + 1) * R + x0 + 1], 1)
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    return idx, w


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of image (R, R, C) at uv (N, 2) in [0, 1] -> (N, C) float32."""
    image = np.asarray(image)
    R = image.shape[0]
    if image.ndim != 3 or image.shape[1] != R or R < 2:
        raise UVError(f"sample_bilinear: image must be (R, R, C) with R >= 2, got {image.shape}")
    idx, w = _bilinear_taps(uv, R)
    flat = image.reshape(R * R, -1).astype(np.float64)
    return np.einsum("nk,nkc->nc", w, flat[idx]).astype(np.float32)


_SAMPLERS: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def vertex_sampler(layout: UVLayout, resolution: int = 256, gutter: int = 4):
    """Seam-aware taps for `posmap_to_vertices` (cached): pair_vertex (P,) int64, texels (P, 4) int64,
    weights (P, 4) float64 for every distinct (vertex, uv) corner pair. A tap is kept only when the face
    owning its texel has a vertex within 2 edges of the pair's vertex (so a lookup on a zero-width seam,
    e.g. a mouth cut whose upper and lower lips share UVs, reads only its own side); kept weights are
    renormalised, and a pair whose kept weights sum to <= 1e-6 uses plain bilinear weights."""
    table = get_bake_table(layout, resolution, gutter)
    R = table.resolution
    key = (layout.key, R, table.gutter)
    if key not in _SAMPLERS:
        V, f = layout.n_vertices, layout.faces.astype(np.int64)
        ring = coo_matrix((np.ones(f.size * 2), (np.concatenate([f.ravel(), np.roll(f, 1, 1).ravel()]),
                                                  np.concatenate([np.roll(f, 1, 1).ravel(), f.ravel()]))),
                          shape=(V, V)).tocsr()
        ring = ring + coo_matrix((np.ones(V), (np.arange(V), np.arange(V))), shape=(V, V)).tocsr()
        ring2 = (ring @ ring).tocoo()
        near = np.unique(ring2.row.astype(np.int64) * V + ring2.col)  # sorted keys v * V + w, w within 2 edges
        texel_face = np.full(R * R, -1, np.int64)
        texel_face[table.texels] = table.row_faces
        pv, pt = layout.corner_pairs[:, 0], layout.corner_pairs[:, 1]
        idx, w = _bilinear_taps(layout.uv[pt], R)
        tf = texel_face[idx]  # (P, 4)
        keep = np.zeros(idx.shape, bool)
        for k in range(3):
            keys = pv[:, None] * V + f[np.maximum(tf, 0), k]
            pos = np.minimum(np.searchsorted(near, keys), len(near) - 1)
            keep |= (near[pos] == keys) & (tf >= 0)
        kw = np.where(keep, w, 0.0)
        total = kw.sum(1, keepdims=True)
        w = np.where(total > 1e-6, kw / np.where(total > 1e-6, total, 1.0), w)
        _SAMPLERS[key] = (pv, idx, w)
    return _SAMPLERS[key]


def _check_posmap(posmap: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(posmap)
    if p.ndim != 3 or p.shape[2] != 3 or p.shape[0] != p.shape[1]:
        raise UVError(f"{what}: posmap must be (R, R, 3) (channels last), got {p.shape}")
    if not np.isfinite(p).all():
        raise UVError(f"{what}: posmap contains NaN/inf")
    return p.astype(np.float32)


def posmap_to_vertices(posmap: np.ndarray, layout: UVLayout, gutter: int = 4) -> np.ndarray:
    """posmap (R, R, 3) normalised (e.g. generated by a model) -> vertices (V, 3) float32 metres.
    Each vertex = mean over its distinct UV copies (seams) of a seam-aware bilinear sample at that UV
    (`vertex_sampler`; `gutter` must match the bake's only for the tap selection). NaN for vertices
    no face references."""
    p = _check_posmap(posmap, "posmap_to_vertices")
    pv, idx, w = vertex_sampler(layout, p.shape[0], gutter)
    vals = np.einsum("pk,pkc->pc", w, p.reshape(-1, 3).astype(np.float64)[idx])  # (P, 3)
    acc = np.stack([np.bincount(pv, vals[:, k], minlength=layout.n_vertices) for k in range(3)], 1)
    n = np.bincount(pv, minlength=layout.n_vertices)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        verts = np.where(n > 0, acc / n, np.nan)
    return denormalize_points(verts)


def posmap_to_points(posmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """posmap (R, R, 3) normalised, mask (R, R) bool -> points (M, 3) float32 metres of the masked texels
    (row-major order)."""
    p = _check_posmap(posmap, "posmap_to_points")
    mask = np.asarray(mask)
    if mask.shape != p.shape[:2]:
        raise UVError(f"posmap_to_points: mask must be {p.shape[:2]}, got {mask.shape}")
    return denormalize_points(p[mask.astype(bool)])


# ----------------------------------------------------------------------------- files
def atomic_write(path: Path, write) -> Path:
    """Call write(file object) on a temporary sibling of `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_obj(path: Path | str, verts: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              uv_faces: np.ndarray | None = None) -> Path:
    """Write a triangle OBJ (atomic): verts (V, 3), faces (F, 3) 0-based, optional uv (T, 2) + uv_faces (F, 3)
    -> `v`, `vt`, `f v/vt` lines (1-based)."""
    verts, faces = np.asarray(verts, np.float64), np.asarray(faces, np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3 or not np.isfinite(verts).all():
        raise UVError(f"{path}: verts must be finite (V, 3), got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min(initial=0) < 0 or faces.max(initial=0) >= len(verts):
        raise UVError(f"{path}: faces must be (F, 3) indices into {len(verts)} vertices")
    lines = [f"v {a:.7f} {b:.7f} {c:.7f}" for a, b, c in verts]
    if uv is None:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    else:
        uv, uv_faces = np.asarray(uv, np.float64), np.asarray(uv_faces, np.int64)
        if uv_faces.shape != faces.shape or uv_faces.min() < 0 or uv_faces.max() >= len(uv):
            raise UVError(f"{path}: uv_faces must be {faces.shape} indices into {len(uv)} uv coordinates")
        lines += [f"vt {a:.7f} {b:.7f}" for a, b in uv]
        lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
                  for (a, b, c), (ta, tb, tc) in zip(faces, uv_faces)]
    data = ("\n".join(lines) + "\n").encode()
    return atomic_write(Path(path), lambda fh: fh.write(data))


def save_posmap(path: Path | str, baked: BakedPosmap, dtype=np.float32, frame_id: str = "") -> Path:
    """Write a compressed npz (atomic): posmap (R,R,3) `dtype` (float32 default = lossless; float16 quantises
    to ≤ 0.25 mm), mask (R,R) bool, n_clipped, box_center, box_half, layout_key, frame_id."""
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise UVError(f"{path}: posmap dtype must be float32 or float16, got {dtype}")
    arrays = dict(posmap=baked.posmap.astype(dtype), mask=baked.mask, n_clipped=np.int64(baked.n_clipped),
                  box_center=BOX_CENTER, box_half=np.float32(BOX_HALF), layout_key=np.array(baked.layout_key),
                  frame_id=np.array(str(frame_id)))
    return atomic_write(Path(path), lambda fh: np.savez_compressed(fh, **arrays))


def load_posmap(path: Path | str) -> BakedPosmap:
    """Read `save_posmap`'s file (posmap as float32); refuses a file written with another normalisation box."""
    with np.load(path) as z:
        missing = {"posmap", "mask", "box_center", "box_half", "layout_key", "n_clipped"} - set(z.files)
        if missing:
            raise UVError(f"{path}: not a UV position map file (missing {sorted(missing)})")
        if not (np.allclose(z["box_center"], BOX_CENTER) and np.isclose(z["box_half"], BOX_HALF)):
            raise UVError(f"{path}: written with box centre {z['box_center'].tolist()} half {float(z['box_half'])}, "
                          f"this code uses {BOX_CENTER.tolist()} / {BOX_HALF}")
        return BakedPosmap(z["posmap"].astype(np.float32), z["mask"].astype(bool), int(z["n_clipped"]),
                           str(z["layout_key"]))
