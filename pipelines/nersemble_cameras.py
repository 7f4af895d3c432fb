"""NeRSemble calibration pieces that are pure functions of the files: which image size the intrinsics
refer to, and the two colour corrections.

Intrinsics size. camera_params.json stores K in pixels of *some* resolution and (in every public
release) no width/height: nersemble-data v2 shares one K for the 2200×3208 (width × height, portrait)
full-resolution frames, the benchmark release stores one K per camera for its own (already downscaled,
1100×1604 or smaller) videos. `intrinsics_size` decides, in this order: `captures.nersemble_intrinsics_size`
when set; `width`/`height` in camera_params.json; else the data: the candidate sizes are the base size
of the images (their size × the VHAP downsample factor) times 1, 2 and 4, and the full NeRSemble resolution
when it has the same aspect ratio; the one whose centre the principal point is near (within 10 % of the
size on both axes) wins. None or several candidates → CaptureError naming the option. The caller scales K to
the stored images and records / prints the decision; nothing is rescaled silently.

Colour. v2 (`calibration/color_calibration.json`, as nersemble-data's `correct_color`): sRGB → linear,
rgb' = M @ f(r, g, b) with M (3, T) and f the T-term polynomial expansion of Cheung et al. 2004 as
colour-science's `matrix_augmented_Cheung2004` orders it (T = 3: [r, g, b]; 4: [r, g, b, 1]; 5: [r, g, b,
rgb, 1]; 7: [r, g, b, rg, rb, gb, 1]; … `CHEUNG_TERMS`), → sRGB, clipped and *truncated* to uint8.
v1 (`annotations/<seq>/color_correction/<serial>.npy`, as nersemble's dataset code and VHAP): an affine
M (3×4 or 4×4) applied to sRGB in [0, 1] as rgb' = rgb @ M[:3, :3] + M[:3, 3], clipped, truncated (upstream
has no polynomial v1 files).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.formats.capture import CaptureError
from pipelines.import_config import as_matrix, load_json

FULL_SIZE = (2200, 3208)  # NeRSemble's full-resolution frames (width, height)
CENTRE_TOLERANCE = 0.1    # |cx / W - 0.5| and |cy / H - 0.5| at most this for "the principal point is at the centre"
OPTION = "captures.nersemble_intrinsics_size"

_X = np.arange(256) / 255.0
_SRGB_TO_LINEAR = np.where(_X <= 0.04045, _X / 12.92, ((_X + 0.055) / 1.055) ** 2.4)  # (256,) float64


def centre_offset(K: np.ndarray, size: tuple[float, float]) -> float:
    """max(|cx / W - 0.5|, |cy / H - 0.5|) of K (3,3) for an image of size (W, H)."""
    return max(abs(K[0, 2] / size[0] - 0.5), abs(K[1, 2] / size[1] - 0.5))


def same_aspect(a: tuple[float, float], b: tuple[float, float], tol_px: float = 1.0) -> bool:
    """True when b is a scaled copy of a (height within tol_px of b's width × a's aspect ratio)."""
    return abs(b[1] - a[1] * b[0] / a[0]) <= tol_px


def intrinsics_size(K: np.ndarray, base: tuple[int, int], explicit: tuple[int, int] | None, keys: tuple[int, int] | None,
                    what: str) -> tuple[tuple[int, int], str]:
    """((W, H) the intrinsics K (3,3) refer to, the rule that decided it).
    base: the images' size at scale 1 (stored size × VHAP downsample factor); explicit: the option's value;
    keys: width/height from camera_params.json; what: names the intrinsics in messages.
    Candidates without those: base × 1, 2, 4 and NeRSemble's full resolution (when it has base's aspect ratio;
    it replaces a multiple of base within a pixel of it). CaptureError naming the option when the principal
    point is near the centre of none or of several of them."""
    if explicit is not None:
        return (int(explicit[0]), int(explicit[1])), OPTION
    if keys is not None:
        return keys, "camera_params.json width/height"
    cands = [(base[0] * k, base[1] * k) for k in (1, 2, 4)]
    if same_aspect(FULL_SIZE, base):
        cands = [c for c in cands if max(abs(c[0] - FULL_SIZE[0]), abs(c[1] - FULL_SIZE[1])) > 1] + [FULL_SIZE]
    near = [c for c in cands if centre_offset(K, c) <= CENTRE_TOLERANCE]
    cx, cy = K[0, 2], K[1, 2]
    if len(near) == 1:
        return near[0], f"principal point ({cx:.1f}, {cy:.1f}) is at the centre of {near[0][0]}×{near[0][1]}"
    names = ", ".join(f"{c[0]}×{c[1]}" for c in (near or cands))
    what_pp = f"near the centre of several candidate sizes ({names})" if near else f"not near the centre of {names}"
    raise CaptureError(f"{what}: the principal point ({cx:.1f}, {cy:.1f}) is {what_pp}, so the image size the "
                       f"intrinsics refer to is unknown; set {OPTION}: [width, height]")


# --- colour -----------------------------------------------------------------------------------
# Cheung 2004 / Westland 2004 polynomial terms as (exponent of r, of g, of b), in colour-science's order
_LIN, _ONE = [(1, 0, 0), (0, 1, 0), (0, 0, 1)], [(0, 0, 0)]
_CROSS = [(1, 1, 0), (1, 0, 1), (0, 1, 1)]                    # rg, rb, gb
_SQ, _CUBE = [(2, 0, 0), (0, 2, 0), (0, 0, 2)], [(3, 0, 0), (0, 3, 0), (0, 0, 3)]
_RGB = [(1, 1, 1)]
_SQ_NEXT = [(2, 1, 0), (0, 2, 1), (1, 0, 2)]                  # r²g, g²b, b²r
_SQ_PREV = [(2, 0, 1), (1, 2, 0), (0, 1, 2)]                  # r²b, g²r, b²g
_DEG2 = _LIN + _CROSS + _SQ
_DEG3 = _DEG2 + _RGB + _SQ_NEXT + _SQ_PREV + _CUBE
_DEG4 = (_DEG3 + [(3, 1, 0), (3, 0, 1), (1, 3, 0), (0, 3, 1), (1, 0, 3), (0, 1, 3)]   # r³g, r³b, g³r, g³b, b³r, b³g
         + [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 0), (2, 0, 2), (0, 2, 2)] + [(4, 0, 0), (0, 4, 0), (0, 0, 4)])
CHEUNG_TERMS: dict[int, list[tuple[int, int, int]]] = {
    3: _LIN, 4: _LIN + _ONE, 5: _LIN + _RGB + _ONE, 7: _LIN + _CROSS + _ONE, 8: _LIN + _CROSS + _RGB + _ONE,
    10: _DEG2 + _ONE, 11: _DEG2 + _RGB + _ONE, 14: _DEG2 + _RGB + _CUBE + _ONE,
    16: _DEG2 + _RGB + _SQ_NEXT + _CUBE, 17: _DEG2 + _RGB + _SQ_NEXT + _CUBE + _ONE,
    19: _DEG3, 20: _DEG3 + _ONE, 22: _DEG3 + [(2, 1, 1), (1, 2, 1), (1, 1, 2)], 35: _DEG4 + _ONE,
}


def _monomial(rgb: np.ndarray, e: tuple[int, int, int]) -> np.ndarray:
    """(N,) r^e0 · g^e1 · b^e2 of rgb (N,3)."""
    out = np.ones(len(rgb))
    for c, k in enumerate(e):
        if k:
            out = out * rgb[:, c] ** k
    return out


def cheung_features(rgb: np.ndarray, terms: int) -> np.ndarray:
    """(N,3) -> (N,terms) polynomial expansion of Cheung 2004 (columns as `CHEUNG_TERMS[terms]`)."""
    return np.stack([_monomial(rgb, e) for e in CHEUNG_TERMS[terms]], axis=1)


def correct_color(rgb: np.ndarray, ccm: np.ndarray) -> np.ndarray:
    """v2: (H,W,3) uint8 sRGB, ccm (3,T), T in CHEUNG_TERMS, applied to the expansion of linear RGB
    -> (H,W,3) uint8 sRGB (truncated). Terms are added one at a time (no (N,T) array)."""
    lin = _SRGB_TO_LINEAR[rgb].reshape(-1, 3)
    M = np.asarray(ccm, np.float64)
    exps = CHEUNG_TERMS[M.shape[1]]
    out = lin @ M[:, :3].T  # every expansion starts with r, g, b
    for k, e in enumerate(exps[3:], start=3):
        out += M[:, k] if e == (0, 0, 0) else _monomial(lin, e)[:, None] * M[:, k]
    out = np.where(out <= 0.0031308, 12.92 * out, 1.055 * np.maximum(out, 0.0031308) ** (1 / 2.4) - 0.055)
    return np.clip(out * 255.0, 0, 255).astype(np.uint8).reshape(rgb.shape)


def correct_color_affine(rgb: np.ndarray, M: np.ndarray) -> np.ndarray:
    """v1: (H,W,3) uint8 sRGB, M (3,4)|(4,4) -> (H,W,3) uint8 of rgb @ M[:3,:3] + M[:3,3] in [0, 1] (truncated)."""
    M = np.asarray(M, np.float64)
    out = (rgb.reshape(-1, 3) / 255.0) @ M[:3, :3] + M[:3, 3]
    return (np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(rgb.shape)


def load_color_calibration(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """v2: ({serial: (3,T) float64, T in CHEUNG_TERMS}, {serial: why its matrix is unusable}) from
    color_calibration.json; CaptureError when the file is not a {serial: matrix} object."""
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise CaptureError(f"{path}: expected {{serial: 3×T matrix}}")
    out, bad = {}, {}
    for s, m in raw.items():
        try:
            out[s] = as_matrix(m, (None, None), "")
        except CaptureError as e:
            bad[s] = f"colour matrix of camera {s}{e}"
            continue
        if out[s].shape[0] != 3 or out[s].shape[1] not in CHEUNG_TERMS:
            bad[s] = (f"colour matrix of camera {s} is {'×'.join(map(str, out.pop(s).shape))}; expected 3×T with T one of "
                      f"{', '.join(map(str, CHEUNG_TERMS))} (the terms of Cheung 2004's expansions)")
    return out, bad


def load_color_correction(path: Path) -> np.ndarray:
    """v1: the (3,4)|(4,4) float64 affine colour correction of one camera from its .npy (no pickles)."""
    try:
        m = np.array(np.load(path, allow_pickle=False, mmap_mode="r"))  # the header's shape is checked against the file
    except (OSError, ValueError, EOFError) as e:
        raise CaptureError(f"{path}: not a readable numeric .npy ({e})") from None
    if not isinstance(m, np.ndarray) or m.dtype.kind not in "fiu":
        raise CaptureError(f"{path}: expected a numeric 3×4 or 4×4 matrix")
    return as_matrix(m, (4, 4) if m.shape == (4, 4) else (3, 4), str(path))
