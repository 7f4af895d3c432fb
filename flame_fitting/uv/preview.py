"""PNG previews of UV position maps and pixel↔UV correspondences (OpenCV drawing, RGB uint8 in memory).

- `posmap_rgb`: a UV position map as colour (normalised xyz [-1, 1] → RGB), outside the charts grey.
- `uv_rgb` / `correspondence_overlay`: per-pixel UV as colour (R = u, G = v, B = 1 - u) alpha-blended over
  a view where it is visible.
- `figure9`: the paper's Figure 9 from (ground-truth) correspondences: a query pixel on one view, its UV
  location marked on the UV map, and the pixels of the other views that see the same UV (within
  `tol_texels`) marked on them; one labelled grid image.
"""
from __future__ import annotations


import cv2
import numpy as np


BACKGROUND = (40, 40, 40)
MARK = (255, 40, 200)  # magenta: query / matches


def posmap_rgb(posmap: np.ndarray, mask: np.ndarray, stretch: bool = False) -> np.ndarray:
    """posmap (R, R, 3) in [-1, 1], mask (R, R) bool -> (R, R, 3) uint8 (x→R, y→G, z→B; grey outside mask).
    Fixed mapping [-1, 1] → [0, 255] (comparable across frames), or with `stretch` each channel's range
    over the mask → [0, 255] (more contrast)."""
    p = np.asarray(posmap, np.float32)
    mask = np.asarray(mask, bool)
    if stretch and mask.any():
        lo, hi = p[mask].min(0), p[mask].max(0)
        p = 2 * (p - lo) / np.maximum(hi - lo, 1e-6) - 1
    rgb = np.clip((p + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    rgb[~mask] = BACKGROUND
    return rgb


def uv_rgb(uv: np.ndarray) -> np.ndarray:
    """uv (..., 2) in [0, 1] -> (..., 3) uint8 colour (R = u, G = v, B = 1 - u)."""
    uv = np.clip(np.asarray(uv, np.float32), 0, 1)
    return (np.stack([uv[..., 0], uv[..., 1], 1 - uv[..., 0]], -1) * 255 + 0.5).astype(np.uint8)


def correspondence_overlay(image: np.ndarray, uv: np.ndarray, visible: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """image (H, W, 3) uint8, uv (H, W, 2), visible (H, W) bool -> (H, W, 3) uint8 with the UV colour
    blended in at `alpha` on visible pixels (other pixels unchanged)."""
    out = np.asarray(image).copy()
    vis = np.asarray(visible, bool)
    col = uv_rgb(uv[vis]).astype(np.float32)
    out[vis] = np.clip((1 - alpha) * out[vis].astype(np.float32) + alpha * col + 0.5, 0, 255).astype(np.uint8)
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = np.ascontiguousarray(img).copy()
    cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _tile(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    scale = size / max(img.shape[:2])
    out = np.full((size, size, 3), BACKGROUND, np.uint8)
    h, w = int(round(img.shape[0] * scale)), int(round(img.shape[1] * scale))
    out[:h, :w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out, scale


def default_query(visible: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel centre of the visible pixel (H, W) nearest the centroid of the visible region."""
    rows, cols = np.nonzero(visible)
    if len(rows) == 0:
        raise ValueError("uv_preview.default_query: the query view sees nothing")
    i = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return cols[i] + 0.5, rows[i] + 0.5


def matches(uv: np.ndarray, visible: np.ndarray, q_uv: np.ndarray, tol: float) -> np.ndarray:
    """(H, W) bool: visible pixels whose uv (H, W, 2) is within `tol` (UV units) of q_uv (2,)."""
    return visible & (np.linalg.norm(uv - np.asarray(q_uv, np.float32), axis=-1) < tol)


def figure9(images: np.ndarray, uv: np.ndarray, visible: np.ndarray, uv_map: np.ndarray, query_view: int = 0,
            query_xy: tuple[float, float] | None = None, tol_texels: float = 1.0, names: list[str] | None = None,
            tile: int = 256, cols: int = 4) -> np.ndarray:
    """images (N, H, W, 3) uint8, uv (N, H, W, 2), visible (N, H, W) bool (e.g. ground truth),
    uv_map (R, R, 3) uint8 (e.g. `posmap_rgb`) -> grid (rows·tile, cols·tile, 3) uint8: the query view
    (query pixel circled), the UV map (its UV marked), then every other view with the pixels whose UV is
    within tol_texels (texels of uv_map) of the query's UV painted and their centroid circled."""
    N, H, W = visible.shape
    R = uv_map.shape[0]
    qx, qy = default_query(visible[query_view]) if query_xy is None else query_xy
    qr, qc = int(qy), int(qx)
    if not visible[query_view, qr, qc]:
        raise ValueError(f"uv_preview.figure9: query pixel ({qx}, {qy}) of view {query_view} sees no surface")
    q_uv = uv[query_view, qr, qc]
    names = names or [f"view {n}" for n in range(N)]
    qimg = images[query_view].copy()
    t, s = _tile(qimg, tile)
    cv2.circle(t, (int(qx * s), int(qy * s)), 7, MARK, 2, cv2.LINE_AA)
    tiles = [_label(t, f"{names[query_view]} (query)")]
    m, s = _tile(uv_map, tile)
    cv2.drawMarker(m, (int(q_uv[0] * R * s), int((1 - q_uv[1]) * R * s)), MARK, cv2.MARKER_CROSS, 16, 2)
    tiles.append(_label(m, f"UV ({q_uv[0]:.3f}, {q_uv[1]:.3f})"))
    for n in range(N):
        if n == query_view:
            continue
        hit = matches(uv[n], visible[n], q_uv, tol_texels / R)
        img = images[n].copy()
        img[hit] = MARK
        t, s = _tile(img, tile)
        if hit.any():
            rr, cc = np.nonzero(hit)
            cv2.circle(t, (int((cc.mean() + 0.5) * s), int((rr.mean() + 0.5) * s)), 7, MARK, 2, cv2.LINE_AA)
            tiles.append(_label(t, f"{names[n]}: {int(hit.sum())} px"))
        else:
            tiles.append(_label(t, f"{names[n]}: not visible"))
    while len(tiles) % cols:
        tiles.append(np.full((tile, tile, 3), BACKGROUND, np.uint8))
    return np.concatenate([np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)], 0)
