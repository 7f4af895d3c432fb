"""Correspondence files: `save_correspondences` / `load_correspondences` (compressed npz, atomic) of a
`FrameCorrespondences` (computed by `flame_fitting.uv.correspondences`); `MAP_KEYS` names the per-pixel maps a
file may leave out (`correspondences.save_maps`).
"""
from __future__ import annotations

import zipfile

import numpy as np

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.fileio import write_npz
from flame_fitting.uv.correspondences import CorrespondenceError, FrameCorrespondences, TokenGrid


def save_correspondences(path, corr: FrameCorrespondences, maps: bool = True):
    """Compressed npz (atomic; zlib level 1: the maps' compression at numpy's default level took as long as
    computing them, 0.55 s per 16 views at 512², for 10 % fewer bytes): contract arrays (a2g/g2a int32 index
    triples, float16 weights), the pair counts, views, token grid, empty views (names + reasons), frame_id, and
    with `maps` the per-view uv (N,H,W,2) float16, visible (N,H,W) bool, depth float16 (0 where empty): 3.8 MB of a
    16-view 512² frame's file, the rest 0.03 MB (`correspondences.save_maps`; the dataset stage reads no map)."""
    t = corr.tokens
    arrays = dict(
        frame_id=np.array(corr.frame_id), views=np.array(corr.views, dtype=str),
        app_tokens=np.int32(t.app_tokens), geo_tokens=np.int32(t.geo_tokens),
        min_app_coverage=np.float64(t.min_app_coverage), min_geo_pixels=np.int32(t.min_geo_pixels),
        a2g_index=corr.a2g_index.astype(np.int32), a2g_weight=corr.a2g_weight.astype(np.float16),
        g2a_index=corr.g2a_index.astype(np.int32), g2a_weight=corr.g2a_weight.astype(np.float16),
        pair_index=corr.pair_index.astype(np.int32), pair_count=corr.pair_count.astype(np.int32),
        empty_views=np.array(list(corr.empty), dtype=str), empty_reasons=np.array(list(corr.empty.values()), dtype=str))
    if maps:
        arrays.update(uv=corr.uv.astype(np.float16), visible=corr.visible,
                      depth=np.where(np.isfinite(corr.depth), corr.depth, 0).astype(np.float16))
    return write_npz(path, compresslevel=1, **arrays)


MAP_KEYS = ("uv", "visible", "depth")  # the per-pixel maps: the bulk of a file at a capture's full resolution


def load_correspondences(path, maps: bool = True) -> FrameCorrespondences:
    """Read `save_correspondences`' file (uv / depth as float32, depth inf where empty, weights float32). maps False:
    the token-level arrays only, `uv` / `visible` / `depth` left empty ((0, 0, 0[, 2]) arrays): the dataset stage
    needs no more, and at RenderMe-360's 60 × 2448×2048 the maps are ~200 MB a frame to decompress."""
    if maps and _has_no_maps(path):
        raise CorrespondenceError(f"{path}: no per-pixel maps (written with correspondences.save_maps first or none); "
                                  "read its token-level arrays with maps=False")
    z = load_npz(path, CorrespondenceError, keys=(
        "frame_id", "views", "a2g_index", "a2g_weight", "g2a_index", "g2a_weight", "pair_index", "pair_count",
        *(MAP_KEYS if maps else ()), "app_tokens", "geo_tokens", "min_app_coverage", "min_geo_pixels", "empty_views",
        "empty_reasons"))
    tokens = TokenGrid(int(z["app_tokens"]), int(z["geo_tokens"]), float(z["min_app_coverage"]),
                       int(z["min_geo_pixels"]))
    if not maps:
        z.update(uv=np.zeros((0, 0, 0, 2), np.float32), visible=np.zeros((0, 0, 0), bool),
                 depth=np.zeros((0, 0, 0), np.float32))
    depth = z["depth"].astype(np.float32)
    return FrameCorrespondences(
        str(z["frame_id"]), tuple(str(s) for s in z["views"]), tokens, z["uv"].astype(np.float32),
        z["visible"].astype(bool), np.where(depth > 0, depth, np.inf).astype(np.float32),
        z["pair_index"], z["pair_count"], z["a2g_index"], z["a2g_weight"].astype(np.float32), z["g2a_index"],
        z["g2a_weight"].astype(np.float32), dict(zip(map(str, z["empty_views"]), map(str, z["empty_reasons"]))))


def _has_no_maps(path) -> bool:
    """True for a readable npz without the MAP_KEYS arrays (a broken file is left to load_npz to report)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return not any(f"{k}.npy" in names for k in MAP_KEYS)
