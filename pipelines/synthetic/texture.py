"""The photo part of the synthetic heads' texture: a public-domain face photo warped into the UV layout.

`build_face_warp(head_model_dir, resolution)` runs once per head model. It rasterises the UV
layout (texel → face + barycentrics → point on the neutral mesh) and a second, coarser mesh in
the same UV square: the MediaPipe face triangulation whose corners are the UV positions of the
embedded MediaPipe landmarks. A texel inside MediaPipe triangle t with barycentrics b samples
the photo at b · photo_px[t] — a piecewise-affine warp that sends every embedded landmark i
exactly onto landmark i of the photo, so MediaPipe's landmark i on a render lands near the
embedded point i. Eye and mouth openings (holes of MediaPipe's tessellation) are filled by a
triangulation of their rim (+ the iris points inside). Each texel also gets a photo weight:
1 inside the face, feathered (in texels, i.e. on the surface) towards the face outline and away
from non-skin photo pixels near the outline (Grace Hopper's cap brim), faded sideways beyond the
outer eye corners (temples, grey hair, glasses arms), 0 outside.

Sources of the landmark triangulation: the stand-in's `standin_extras.npz` (MediaPipe's own
triangles and the photo landmarks measured when the head model was built); for other head
models (real FLAME: 105 embedded points) MediaPipe runs on the photo and the embedded points'
UVs are Delaunay-triangulated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib.path import Path as MplPath
from scipy import ndimage
from scipy.spatial import Delaunay

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.errors import GeofaceError
from flame_fitting.head.flame_io import load_flame_folder
from flame_fitting.geometry.raster import interpolate, rasterize_uv
from flame_fitting.head.standin.face_surface import boundary_loops

DEFAULT_PHOTO = "grace_hopper.jpg"
IRIS = np.arange(468, 478)
SKIN_PROBES = (50, 280, 205, 425, 151, 108, 337, 36, 266)  # cheeks and forehead (MediaPipe ids)
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
CHROMA = 0.5  # share of the photo's own colour variation kept in photo_detail (the rest: its luminance only)
LATERAL = (1.0, 1.3)  # photo fades out sideways between these multiples of half the outer-eye-corner span
FEATHER = 0.035  # photo weight ramps over this fraction of the texture size inside the face texels


class TextureError(GeofaceError, RuntimeError):
    """The photo texture cannot be built for this head model (message names the file)."""


@dataclass(frozen=True)
class FaceWarp:
    """Everything per head model and texture resolution R that the per-identity textures reuse."""

    photo_name: str  # the matplotlib sample photo the face comes from
    photo_px: np.ndarray  # (R, R, 2) float32 photo pixel (+0.5 convention) each texel shows, NaN outside the face
    photo_uv: np.ndarray  # (R, R, 3) float32 sRGB: the photo warped into UV (0 outside the face)
    photo_detail: np.ndarray  # (R, R, 3) float32 linear photo / its skin colour, CHROMA per channel + rest luminance
    weight: np.ndarray  # (R, R) float32 in [0, 1]: photo share of each texel
    points: np.ndarray  # (R, R, 3) float32 neutral-mesh point of each texel (0 where not covered)
    covered: np.ndarray  # (R, R) bool: texel lies on a head face
    fill_rows: np.ndarray  # (R, R) int32: row of the nearest covered texel (padding across seams)
    fill_cols: np.ndarray  # (R, R) int32
    skin_rgb: np.ndarray  # (3,) float32 sRGB skin colour of the photo where it blends into the plain skin
    anchors: dict  # neutral-mesh places the hair / neck shading use: eye, forehead, chin, top (3,); back_z

    @property
    def resolution(self) -> int:
        return self.weight.shape[0]


def photo_path(name: str = DEFAULT_PHOTO) -> Path:
    """A photo from matplotlib's sample data (public domain)."""
    import matplotlib.cbook as cbook

    path = Path(cbook.get_sample_data(name, asfileobj=False))
    if not path.is_file():
        raise TextureError(f"{path}: matplotlib sample photo {name!r} is missing")
    return path


def read_photo(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise TextureError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def fill_holes(tris: np.ndarray, uv: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Triangles (K,3) filling the inner boundary loops (eyes, mouth) of triangulation `tris` (T,3).

    uv (N,2): 2D positions of the points; extra: point ids that may lie inside a hole (irises).
    The outer loop is the one with the longest perimeter. A hole is triangulated by Delaunay of its
    rim (+ the extra points inside it), keeping triangles whose centroid is inside the rim.
    """
    loops = boundary_loops(tris)
    if len(loops) <= 1:
        return np.zeros((0, 3), np.int64)
    perim = [np.linalg.norm(uv[lp] - uv[np.roll(lp, 1)], axis=1).sum() for lp in loops]
    out = []
    for k, lp in enumerate(loops):
        if k == int(np.argmax(perim)):
            continue
        rim = MplPath(uv[lp])
        ids = np.concatenate([lp, [e for e in extra if rim.contains_point(uv[e])]]).astype(np.int64)
        tri = Delaunay(uv[ids]).simplices
        keep = rim.contains_points(uv[ids][tri].mean(1))
        out.append(ids[tri[keep]])
    return np.concatenate(out) if out else np.zeros((0, 3), np.int64)


def _landmark_triangulation(folder: Path, lmk_uv: np.ndarray, lmk_ids: np.ndarray, photo: np.ndarray):
    """-> (photo_px (L,2) +0.5 convention, triangles (T,3) into the L embedded landmarks)."""
    extras = folder / "standin_extras.npz"
    if extras.is_file():
        z = load_npz(extras, TextureError, keys=("photo_landmarks_px", "mp_triangles"))
        photo_px = z["photo_landmarks_px"].astype(np.float64)[lmk_ids]
        mp_tris = z["mp_triangles"].astype(np.int64)
        pos = np.full(478, -1, np.int64)
        pos[lmk_ids] = np.arange(len(lmk_ids))
        tris = pos[mp_tris]
        tris = tris[(tris >= 0).all(1)]
        tris = np.concatenate([tris, fill_holes(tris, lmk_uv, pos[IRIS][pos[IRIS] >= 0])])
        return photo_px, tris
    from flame_fitting.landmarks.detector import detect_rgb

    res = detect_rgb((photo * 255).astype(np.uint8))
    if not res.detected:
        raise TextureError(f"{folder}: MediaPipe found no face on the texture photo")
    return res.points[lmk_ids].astype(np.float64), Delaunay(lmk_uv).simplices.astype(np.int64)


def skin_likeness(photo: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """(Hp, Wp) float32 in [0, 1]: how close each photo pixel is to the skin colour (smoothed)."""
    d = np.linalg.norm(photo - skin[None, None], axis=-1)
    return cv2.GaussianBlur(np.clip(1.5 - d / 0.18, 0.0, 1.0), (0, 0), 3.0).astype(np.float32)


def photo_weight(inside: np.ndarray, likeness_uv: np.ndarray) -> np.ndarray:
    """(R, R) float32 photo share: 1 well inside the face texels `inside` (R, R) bool, a smoothstep ramp
    over FEATHER·R texels towards their border; in a band twice as wide, texels whose photo pixel is
    not skin-like (likeness_uv (R, R)) fade out too (glasses arms, cap brim, hair at the temples)."""
    R = inside.shape[0]
    solid = ndimage.binary_fill_holes(inside)  # distances to the outline only, not to seams inside the face
    dist = cv2.distanceTransform(solid.astype(np.uint8), cv2.DIST_L2, 5)
    ramp = np.clip(dist / (FEATHER * R), 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)
    band = np.clip(dist / (2 * FEATHER * R), 0.0, 1.0)
    return (ramp * (band + (1 - band) * likeness_uv)).astype(np.float32)


def lateral_fade(px: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(R, R) float32: 1 between the outer eye corners left/right (2,) of the photo, fading to 0 from
    LATERAL[0] to LATERAL[1] half eye-spans sideways (temples, hair, glasses arms stay out of the texture).
    px (R, R, 2): photo pixel of each texel."""
    c, e = 0.5 * (left + right), right - left
    half = 0.5 * np.linalg.norm(e)
    u = np.abs((px - c) @ (e / np.linalg.norm(e))) / half
    x = np.clip((u - LATERAL[0]) / (LATERAL[1] - LATERAL[0]), 0.0, 1.0)
    return (1.0 - x * x * (3 - 2 * x)).astype(np.float32)


def skin_colour(photo: np.ndarray, px: np.ndarray, radius: int = 5) -> np.ndarray:
    """Median sRGB colour (3,) of discs of `radius` pixels around the points px (K,2)."""
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = (yy**2 + xx**2) <= radius**2
    samples = []
    for x, y in px:
        r = np.clip(int(y) + yy[disc], 0, h - 1)
        c = np.clip(int(x) + xx[disc], 0, w - 1)
        samples.append(photo[r, c])
    return np.median(np.concatenate(samples), axis=0).astype(np.float32)


def _anchors(verts: np.ndarray, faces: np.ndarray, emb) -> dict:
    """Neutral landmark positions the hair layer is placed by (forehead top, eye line, ...)."""
    pts = np.einsum("lk,lkd->ld", emb.bary, verts[faces[emb.face_idx]])
    by_id = {int(i): pts[k] for k, i in enumerate(emb.landmark_indices)}

    def get(i: int, fallback: np.ndarray) -> np.ndarray:
        return by_id.get(i, fallback).astype(np.float32)

    eyes = [p for i, p in by_id.items() if i in (33, 263, 133, 362)]
    eye = np.mean(eyes, 0) if eyes else pts.mean(0)
    top = verts[np.argmax(verts[:, 1])]
    forehead = get(10, eye + np.array([0.0, 0.5 * (top[1] - eye[1]), 0.0]))
    return {"eye": eye.astype(np.float32), "forehead": forehead, "chin": get(152, eye - [0.0, 0.11, 0.0]),
            "top": top.astype(np.float32), "back_z": np.float32(verts[:, 2].min())}


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def photo_detail(photo_uv: np.ndarray, skin_rgb: np.ndarray) -> np.ndarray:
    """(R, R, 3) linear-RGB ratio of the warped photo to its skin colour: CHROMA of it per channel, the
    rest as the luminance ratio (so the photo's reddish wrinkles stay wrinkles, not red lines, on other
    skin tones). An identity's texture is its target skin colour times this."""
    skin = srgb_to_linear(skin_rgb)
    ratio = srgb_to_linear(photo_uv) / np.maximum(skin, 1e-4)
    lum = ratio @ (LUMA * skin / (LUMA @ skin))
    return (CHROMA * ratio + (1 - CHROMA) * lum[..., None]).astype(np.float32)


def _photo_name(folder: Path) -> str:
    extras = folder / "standin_extras.npz"
    if extras.is_file():
        z = load_npz(extras, TextureError)
        if "photo_name" in z:
            return str(z["photo_name"])
    return DEFAULT_PHOTO


def build_face_warp(head_model_dir: Path | str, resolution: int = 1024) -> FaceWarp:
    """Precompute the photo warp and per-texel geometry of a head model folder at resolution R."""
    folder = Path(head_model_dir)
    info = load_flame_folder(folder)
    t = info.template
    verts, faces = t.verts.astype(np.float32), t.faces
    uv, uv_faces = np.clip(t.uv.astype(np.float64), 0.0, 1.0), t.uv_faces
    R = int(resolution)
    fid, bary = rasterize_uv(uv, uv_faces, R)  # texel -> head face
    covered = fid >= 0
    emb = info.mediapipe
    lmk_uv = np.einsum("lk,lkd->ld", emb.bary, uv[uv_faces[emb.face_idx]])
    name = _photo_name(folder)
    photo = read_photo(photo_path(name))
    photo_px, tris = _landmark_triangulation(folder, lmk_uv, emb.landmark_indices, photo)
    tri_id, tb = rasterize_uv(lmk_uv, tris, R)  # texel -> landmark triangle
    inside = (tri_id >= 0) & covered
    px = np.einsum("rck,rckd->rcd", tb, photo_px[tris[np.maximum(tri_id, 0)]]).astype(np.float32) - 0.5
    px[~inside] = -1.0  # OpenCV remap coordinates (pixel centres at integers)
    photo_uv = cv2.remap(photo, px[..., 0], px[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    photo_uv[~inside] = 0.0
    pos = {int(i): k for k, i in enumerate(emb.landmark_indices)}
    probes = [pos[i] for i in SKIN_PROBES if i in pos]
    skin = skin_colour(photo, photo_px[probes] if probes else photo_px)
    like = cv2.remap(skin_likeness(photo, skin), px[..., 0], px[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weight = np.where(inside, photo_weight(inside, like), 0.0)
    if 33 in pos and 263 in pos:
        weight = weight * lateral_fade(px + 0.5, photo_px[pos[33]], photo_px[pos[263]])
    band = (weight > 0.1) & (weight < 0.9) & (like > 0.5)
    if band.sum() > 100:  # the colour the photo actually has where it blends into the plain skin
        skin = np.median(photo_uv[band], axis=0).astype(np.float32)
    _, (fill_r, fill_c) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return FaceWarp(photo_name=name, photo_px=np.where(inside[..., None], px + 0.5, np.nan),
                    photo_uv=photo_uv, photo_detail=photo_detail(photo_uv, skin), weight=weight.astype(np.float32),
                    points=interpolate(verts, faces, fid, bary).astype(np.float32), covered=covered,
                    fill_rows=fill_r.astype(np.int32), fill_cols=fill_c.astype(np.int32), skin_rgb=skin,
                    anchors=_anchors(verts.astype(np.float64), faces, emb))
