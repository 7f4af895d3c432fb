"""Pixel↔UV correspondences of a fitted frame and the token-level attention targets built from them.

`compute_correspondences(verts, layout, cameras, tokens, frame_id)` rasterises the posed fitted mesh
(world vertices (V, 3)) into every camera and returns per view and pixel: the (u, v) the pixel sees
(interpolated from the raster's face id + barycentrics with the layout's uv_faces), visibility
(covered by a face that faces the camera; pixels that see the inside of the mesh, e.g. the mouth
cavity through open lips, are not visible) and depth (camera z of the covered surface, inf where empty).

Token targets (docs/contracts.md "Training samples"): each view is a `app_tokens`² grid of
(H/app_tokens)×(W/app_tokens)-pixel tokens, the UV square a `geo_tokens`² grid (row 0 = top = v near 1),
ids row-major. Every visible pixel links its appearance token to the geometry token of its (u, v);
the counts C[view, app, geo] (sorted triples `pair_index`, `pair_count`) give
  a2g: C / Σ_geo C for appearance tokens with ≥ min_app_coverage of their pixels visible,
  g2a: C / Σ_app C (within the view) for geometry tokens seen by ≥ min_geo_pixels pixels of the view.
Views that see nothing (head off-screen or behind the camera) are empty and recorded in `empty`.
`_pixel_kernel` (numba, one pass per view and row of appearance tokens) does both; `_pixel_uv_reference`
and `pairs_reference` are the numpy versions it is tested against.
Files: `save_correspondences` / `load_correspondences` live in `flame_fitting.uv.correspondence_files`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.render import front_facing
from flame_fitting.geometry.camera import Camera, stack_cameras
from flame_fitting.geometry.raster import Fragments, interpolate, rasterize
from flame_fitting.uv import UVLayout


class CorrespondenceError(GeofaceError, ValueError):
    """Bad input to the correspondence code (names the frame or file)."""


@dataclass(frozen=True)
class TokenGrid:
    app_tokens: int = 32            # appearance tokens per side of each view (token = S / app_tokens pixels)
    geo_tokens: int = 16            # geometry tokens per side of the UV square
    min_app_coverage: float = 0.5   # a2g: fraction of an appearance token's pixels that must be visible
    min_geo_pixels: int = 1         # g2a: pixels of a view that must see a geometry token

    def __post_init__(self):
        if self.app_tokens < 1 or self.geo_tokens < 1 or not 0 <= self.min_app_coverage <= 1 \
                or self.min_geo_pixels < 1:
            raise CorrespondenceError(f"TokenGrid: need app_tokens, geo_tokens >= 1, min_app_coverage in [0, 1], "
                                      f"min_geo_pixels >= 1, got {self}")


@dataclass(eq=False)
class FrameCorrespondences:
    frame_id: str
    views: tuple[str, ...]    # camera names, view order of every per-view array
    tokens: TokenGrid
    uv: np.ndarray            # (N, H, W, 2) float32 (u, v) of the visible surface, 0 where not visible
    visible: np.ndarray       # (N, H, W) bool covered by a camera-facing face
    depth: np.ndarray         # (N, H, W) float32 camera z of the covered surface, inf where empty
    pair_index: np.ndarray    # (P, 3) int32 [view, app_token, geo_token], sorted
    pair_count: np.ndarray    # (P,) int32 visible pixels of that view/app token seeing that geo token
    a2g_index: np.ndarray     # (M, 3) int32 [view, app_token, geo_token]
    a2g_weight: np.ndarray    # (M,) float32, sums to 1 per (view, app_token)
    g2a_index: np.ndarray     # (M2, 3) int32 [view, geo_token, app_token], sorted
    g2a_weight: np.ndarray    # (M2,) float32, sums to 1 per (view, geo_token)
    empty: dict[str, str] = field(default_factory=dict)  # view name -> why it sees nothing

    @property
    def size(self) -> tuple[int, int]:  # (width, height)
        return self.uv.shape[2], self.uv.shape[1]


# ----------------------------------------------------------------------------- kernels
@njit(cache=True, inline="always")
def _geo_token(u, v, G):
    gc = min(max(int(u * G), 0), G - 1)
    gr = min(max(int((1.0 - v) * G), 0), G - 1)
    return gr * G + gc


@njit(cache=True, parallel=True, error_model="numpy")
def _pixel_kernel(face_id, bary, uv_faces, uv, front, A, G, K, out_uv, out_vis, out_geo, out_count, n_pairs):
    """One pass per (view, row of appearance tokens). face_id (N,H,W), bary (N,H,W,3), uv_faces (F,3),
    uv (T,2), front (N,F) -> out_uv (N,H,W,2) (0 where not visible), out_vis (N,H,W); for every appearance
    token t: n_pairs[t] distinct geometry tokens (ascending) in out_geo[t*K:], their pixel counts in out_count."""
    N, H, W = face_id.shape
    ph, pw = H // A, W // A
    for task in prange(N * A):
        n, ar = task // A, task % A
        hist = np.zeros((A, G * G), np.int32)
        touched = np.empty((A, ph * pw), np.int64)
        k = np.zeros(A, np.int64)
        for r in range(ar * ph, (ar + 1) * ph):
            for c in range(W):
                f = face_id[n, r, c]
                if f < 0 or not front[n, f]:
                    out_uv[n, r, c, 0] = 0.0
                    out_uv[n, r, c, 1] = 0.0
                    out_vis[n, r, c] = False
                    continue
                b0, b1, b2 = bary[n, r, c, 0], bary[n, r, c, 1], bary[n, r, c, 2]
                t0, t1, t2 = uv_faces[f, 0], uv_faces[f, 1], uv_faces[f, 2]
                u = b0 * uv[t0, 0] + b1 * uv[t1, 0] + b2 * uv[t2, 0]
                v = b0 * uv[t0, 1] + b1 * uv[t1, 1] + b2 * uv[t2, 1]
                out_uv[n, r, c, 0] = u
                out_uv[n, r, c, 1] = v
                out_vis[n, r, c] = True
                g = _geo_token(u, v, G)
                ac = c // pw
                if hist[ac, g] == 0:
                    touched[ac, k[ac]] = g
                    k[ac] += 1
                hist[ac, g] += 1
        for ac in range(A):
            tok = (n * A + ar) * A + ac
            gs = np.sort(touched[ac, :k[ac]])
            for i in range(k[ac]):
                out_geo[tok * K + i] = gs[i]
                out_count[tok * K + i] = hist[ac, gs[i]]
            n_pairs[tok] = k[ac]


def _pixel_uv_reference(frags: Fragments, layout: UVLayout, front: np.ndarray):
    """numpy version of the uv / visibility part of `_pixel_kernel` -> uv (N,H,W,2) float32, visible (N,H,W)."""
    n_idx = np.arange(front.shape[0])[:, None, None]
    vis = (frags.face_id >= 0) & front[n_idx, np.maximum(frags.face_id, 0)]
    uv = interpolate(layout.uv, layout.uv_faces, np.where(vis, frags.face_id, -1), frags.bary)
    return uv.astype(np.float32), vis


def pixel_correspondences(frags: Fragments, layout: UVLayout, front: np.ndarray, tokens: TokenGrid):
    """Fragments (N,H,W) + front (N,F) -> uv (N,H,W,2) f32, visible (N,H,W) bool,
    pair_index (P,3) int32 [view, app, geo] sorted, pair_count (P,) int32."""
    N, H, W = frags.face_id.shape
    A, G = tokens.app_tokens, tokens.geo_tokens
    K = min((H // A) * (W // A), G * G)
    uv = np.empty((N, H, W, 2), np.float32)
    vis = np.empty((N, H, W), np.bool_)
    geo = np.empty(N * A * A * K, np.int32)  # virtual memory: only the touched pages are ever mapped
    count = np.empty(N * A * A * K, np.int32)
    n_pairs = np.empty(N * A * A, np.int64)
    _pixel_kernel(frags.face_id, frags.bary, layout.uv_faces, layout.uv, front, A, G, K, uv, vis, geo, count,
                  n_pairs)
    tok = np.repeat(np.arange(N * A * A), n_pairs)
    start = np.concatenate([[0], np.cumsum(n_pairs)[:-1]])
    src = tok * K + np.arange(len(tok)) - np.repeat(start, n_pairs)
    index = np.stack([tok // (A * A), tok % (A * A), geo[src]], 1).astype(np.int32)
    return uv, vis, index, count[src]


def pairs_reference(uv: np.ndarray, vis: np.ndarray, tokens: TokenGrid) -> tuple[np.ndarray, np.ndarray]:
    """numpy version of the token-pair part of `_pixel_kernel`: uv (N,H,W,2), vis (N,H,W) -> pair_index (P,3),
    pair_count (P,) (np.unique on combined keys)."""
    N, H, W = vis.shape
    A, G = tokens.app_tokens, tokens.geo_tokens
    n, r, c = np.nonzero(vis)
    app = (r // (H // A)) * A + c // (W // A)
    u, v = uv[n, r, c, 0].astype(np.float64), uv[n, r, c, 1].astype(np.float64)
    geo = np.clip(((1 - v) * G).astype(np.int64), 0, G - 1) * G + np.clip((u * G).astype(np.int64), 0, G - 1)
    keys, count = np.unique((n.astype(np.int64) * A * A + app) * G * G + geo, return_counts=True)
    index = np.stack([keys // (A * A * G * G), keys // (G * G) % (A * A), keys % (G * G)], 1)
    return index.astype(np.int32), count.astype(np.int32)


# ----------------------------------------------------------------------------- targets
def token_targets(pair_index: np.ndarray, pair_count: np.ndarray, n_views: int, tokens: TokenGrid,
                  pixels_per_app_token: int):
    """Sorted pair counts -> a2g_index (M,3), a2g_weight (M,) f32, g2a_index (M2,3) sorted by
    (view, geo, app), g2a_weight (M2,) f32 (see the module docstring)."""
    La, Lg = tokens.app_tokens ** 2, tokens.geo_tokens ** 2
    view, app, geo = (pair_index[:, k].astype(np.int64) for k in range(3))
    cnt = pair_count.astype(np.float64)
    a_key, g_key = view * La + app, view * Lg + geo
    a_tot = np.bincount(a_key, cnt, minlength=n_views * La)[a_key]
    g_tot = np.bincount(g_key, cnt, minlength=n_views * Lg)[g_key]
    a_ok = a_tot >= tokens.min_app_coverage * pixels_per_app_token
    a2g_index = pair_index[a_ok]
    a2g_weight = (cnt[a_ok] / a_tot[a_ok]).astype(np.float32)
    g_ok = np.flatnonzero(g_tot >= tokens.min_geo_pixels)
    g_ok = g_ok[np.argsort(g_key[g_ok] * La + app[g_ok], kind="stable")]
    g2a_index = np.stack([view[g_ok], geo[g_ok], app[g_ok]], 1).astype(np.int32)
    g2a_weight = (cnt[g_ok] / g_tot[g_ok]).astype(np.float32)
    return a2g_index, a2g_weight, g2a_index, g2a_weight


# ----------------------------------------------------------------------------- frame
def _check_inputs(verts, layout: UVLayout, cameras: list[Camera], tokens: TokenGrid, frame_id: str):
    if not isinstance(tokens, TokenGrid):
        raise CorrespondenceError(f"frame {frame_id}: tokens must be a TokenGrid (flame_fitting.uv.correspondences), "
                                  f"got {type(tokens).__name__}")
    if not isinstance(cameras, (list, tuple)) or not all(isinstance(c, Camera) for c in cameras):
        got = type(cameras).__name__ if not isinstance(cameras, (list, tuple)) else \
            f"a {type(cameras).__name__} holding {sorted({type(c).__name__ for c in cameras})}"
        raise CorrespondenceError(f"frame {frame_id}: cameras must be a list of Camera (the views, in order; from a "
                                  f"{{name: Camera}} dict: list(cameras.values())), got {got}")
    v = np.asarray(verts)
    if v.shape != (layout.n_vertices, 3):
        raise CorrespondenceError(f"frame {frame_id}: vertices must be ({layout.n_vertices}, 3), got {v.shape}")
    if not np.isfinite(v).all():
        bad = np.flatnonzero(~np.isfinite(v).all(1))
        raise CorrespondenceError(f"frame {frame_id}: vertices contain NaN/inf at {len(bad)} vertices "
                                  f"(first: {bad[:5].tolist()}); refusing to compute correspondences")
    if not cameras:
        raise CorrespondenceError(f"frame {frame_id}: no cameras")
    W, H = cameras[0].width, cameras[0].height
    for cam in cameras:
        if (cam.width, cam.height) != (W, H):
            raise CorrespondenceError(f"frame {frame_id}: camera {cam.name!r} is {cam.width}×{cam.height}, "
                                      f"the first is {W}×{H}; all views must share one size")
        if cam.dist is not None:
            raise CorrespondenceError(f"frame {frame_id}: camera {cam.name!r} has lens distortion; the rasteriser "
                                      f"is pinhole only: undistort the images (and drop dist) first")
    if W % tokens.app_tokens or H % tokens.app_tokens:
        t = tokens.app_tokens
        raise CorrespondenceError(f"frame {frame_id}: image {W}×{H} is not divisible by app_tokens={t}; import the "
                                  f"capture with sides that are (e.g. captures.resize [{W // t * t}, {H // t * t}], or "
                                  f"captures.crop_head for square head crops)")
    return np.ascontiguousarray(v, np.float32), W, H


def front_faces(verts: np.ndarray, faces: np.ndarray, cameras: list[Camera]) -> np.ndarray:
    """(N, F) bool: the face (counter-clockwise seen from outside) faces camera n's centre."""
    centers = np.stack([c.center for c in cameras]).astype(np.float64)
    return front_facing(np.asarray(verts, np.float64), faces, centers)


def _empty_reason(verts: np.ndarray, cam: Camera, covered: bool, near: float) -> str:
    z = verts.astype(np.float64) @ cam.R[2].astype(np.float64) + float(cam.t[2])
    if (z < near).all():
        return "behind the camera"
    if not covered:
        return "off-screen" if (z >= near).all() else "off-screen or partly behind the camera"
    return "only back faces visible"


def compute_correspondences(verts: np.ndarray, layout: UVLayout, cameras: list[Camera], tokens: TokenGrid,
                            frame_id: str = "?", near: float = 1e-3) -> FrameCorrespondences:
    """verts (V, 3) posed world vertices of the fitted mesh in metres (a fit.npz's `vertices[i]`), layout: the head
    model's `UVLayout`, cameras: a list of N `Camera`s (undistorted, one size divisible by tokens.app_tokens; the
    views in order), tokens: `TokenGrid(app_tokens, geo_tokens)` from this module (the stage uses
    tokens.resolution / patch_size and uv_resolution / geo_patch_size of params.yaml) -> FrameCorrespondences
    (uv (N, H, W, 2), visible (N, H, W), depth (N, H, W), token pairs and targets; see the class). Raises
    CorrespondenceError naming `frame_id` for NaN vertices, a vertex count other than the layout's, cameras of
    another kind or size, or a tokens value that is not a TokenGrid."""
    v, W, H = _check_inputs(verts, layout, cameras, tokens, frame_id)
    K, w2c = stack_cameras(cameras)
    frags = rasterize(v, layout.faces, K, w2c, W, H, near=near)
    front = front_faces(v, layout.faces, cameras)
    N = len(cameras)
    uv, vis, pair_index, pair_count = pixel_correspondences(frags, layout, front, tokens)
    a2g_i, a2g_w, g2a_i, g2a_w = token_targets(pair_index, pair_count, N, tokens,
                                               (H // tokens.app_tokens) * (W // tokens.app_tokens))
    empty = {}
    for n in np.flatnonzero(~vis.reshape(N, -1).any(1)):
        empty[cameras[n].name] = _empty_reason(v, cameras[n], bool((frags.face_id[n] >= 0).any()), near)
    return FrameCorrespondences(str(frame_id), tuple(c.name for c in cameras), tokens, uv, vis, frags.depth,
                                pair_index, pair_count, a2g_i, a2g_w, g2a_i, g2a_w, empty)


def uv_from_fragments(face_id: np.ndarray, bary: np.ndarray, layout: UVLayout) -> np.ndarray:
    """Ground-truth style maps: face_id (N,H,W) (-1 empty), bary (N,H,W,3) -> uv (N,H,W,2) float32 (0 where empty)."""
    return interpolate(layout.uv, layout.uv_faces, np.asarray(face_id), np.asarray(bary, np.float32)).astype(np.float32)
