"""Baselines of the evaluation: answers that use no model, computed on the same held-out samples so the model's
numbers can be read (definitions in docs/evaluation.md, "Baselines").

- constant mean training colour: every target view = one constant image of the mean RGB of every pixel of every
  view of the training shards (`TrainingStats.mean_rgb`, rounded to uint8);
- copy the reference: every target view = the reference view (evaluate.py);
- mean training UV map: the generated UV position map = the texel-wise mean of the training shards' UV position
  maps (`TrainingStats.mean_posmap`), scored with the model's `posmap_error_mm`;
- camera-only attention: for every view of the evaluated item, the alignment targets (appearance token ->
  geometry token) of the training view whose camera is nearest (`nearest_view`: the training camera, in the
  head's canonical frame, that projects a fixed point set closest to where the evaluated camera projects it,
  mean pixel distance). No image content is used; the same hit-rate criterion as the model
  (`metrics_geometry.attention_hit_rate`): the predicted geometry token within Chebyshev distance 1 of the true one.
Noise bands of the per-band attention hit rate: `NOISE_BANDS` (fractions of the training timesteps T).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from flame_fitting.geometry.camera import Camera

NOISE_BANDS: dict[str, tuple[float, float]] = {"low": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "high": (2 / 3, 1.0)}


def band_timesteps(T: int, per_band: int = 3) -> dict[str, list[int]]:
    """Per band of `NOISE_BANDS`, `per_band` timesteps evenly inside [lo·T, hi·T) (cell centres, rounded down)."""
    out = {}
    for name, (lo, hi) in NOISE_BANDS.items():
        a, b = lo * T, hi * T
        out[name] = sorted({min(T - 1, int(a + (k + 0.5) * (b - a) / per_band)) for k in range(per_band)})
    return out


def band_ranges(T: int) -> dict[str, list[int]]:
    """Per band, the timesteps [first, last] it covers (for the report)."""
    return {n: [int(np.ceil(lo * T)), int(np.ceil(hi * T)) - 1] for n, (lo, hi) in NOISE_BANDS.items()}


def best_targets(index: np.ndarray, weight: np.ndarray, n_views: int, n_app: int) -> np.ndarray:
    """Alignment targets index (M,3) [view, app_token, geo_token], weights (M,) -> (n_views, n_app) int64: the geo
    token of largest weight per (view, app token), the first row among equal largest weights (the rule of
    `metrics_geometry.attention_hit_rate`, which scores the model against the same truth), -1 where the token has no
    target (background)."""
    idx, w = np.asarray(index, np.int64).reshape(-1, 3), np.asarray(weight, np.float64).reshape(-1)
    out = np.full((n_views, n_app), -1, np.int64)
    order = np.lexsort((-np.arange(len(w)), w))  # ascending weight, ties last row first: the winner is written last
    out[idx[order, 0], idx[order, 1]] = idx[order, 2]
    return out


@dataclass
class TrainView:
    camera: Camera  # in the head's canonical frame
    best_geo: np.ndarray  # (La,) int64, -1 = no target


@dataclass
class TrainingStats:
    mean_rgb: np.ndarray  # (3,) float64 in [0, 255]
    mean_posmap: np.ndarray  # (R,R,3) float32, normalised like the shards' maps
    views: list[TrainView] = field(default_factory=list)  # camera table of the camera-only baseline
    n_samples: int = 0
    n_without_frame: int = 0  # training samples left out of the camera table (no canonical frame)

    def constant_image(self, size: int) -> np.ndarray:
        """(size, size, 3) uint8 image of the mean training colour."""
        return np.broadcast_to(np.round(self.mean_rgb).clip(0, 255).astype(np.uint8), (size, size, 3)).copy()


def training_stats(ds, frame_of: Callable[[dict], np.ndarray | None]) -> TrainingStats:
    """Baseline statistics of every sample of a `data.GeoFaceDataset` (the training split). `frame_of(info)`: the
    (4,4) canonical->world transform of a sample (info = its shard metadata entry), or None when unknown (the
    sample then still counts for the mean colour and UV map, not for the camera table)."""
    rgb, n_pix, pm = np.zeros(3), 0, None
    views: list[TrainView] = []
    missing = 0
    for i in range(len(ds)):
        s, j = ds.items[i]
        meta = ds.metas[s]
        V = meta.n_views
        it = ds.item(i, np.arange(V))
        img = ((it["images"].numpy().astype(np.float64) + 1) * 127.5).round()  # (V,3,S,S), the stored uint8 values
        rgb += img.sum((0, 2, 3))
        n_pix += img.shape[0] * img.shape[2] * img.shape[3]
        p = it["uv_posmap"].permute(1, 2, 0).numpy().astype(np.float64)
        pm = p if pm is None else pm + p
        T = frame_of(meta.samples[j])
        if T is None:
            missing += 1
            continue
        best = best_targets(it["a2g_index"].numpy(), it["a2g_weight"].numpy(), V, meta.app_tokens ** 2)
        S = meta.resolution
        for v in range(V):
            cam = Camera(K=it["K"][v].numpy(), world_to_cam=it["world_to_cam"][v].numpy().astype(np.float64) @ T,
                         width=S, height=S)
            views.append(TrainView(cam, best[v]))
    if pm is None:
        raise ValueError("training_stats: the dataset is empty")
    return TrainingStats(rgb / n_pix, (pm / len(ds)).astype(np.float32), views, len(ds), missing)


def nearest_view(camera: Camera, table: list[TrainView], points: np.ndarray) -> int:
    """Index into `table` of the camera that projects `points` (P,3, canonical frame) closest to where `camera`
    projects them (mean pixel distance; all cameras at the same resolution)."""
    if not table:
        raise ValueError("nearest_view: empty camera table")
    uv, _ = camera.project(points)
    d = [float(np.linalg.norm(t.camera.project(points)[0] - uv, axis=1).mean()) for t in table]
    return int(np.argmin(d))


def _hits(true: np.ndarray, pred: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    gw = grid[1]
    ok = pred >= 0
    return ok & (np.abs(true // gw - pred // gw) <= 1) & (np.abs(true % gw - pred % gw) <= 1)


def camera_only_hit_rate(cameras: list[Camera], index: np.ndarray, weight: np.ndarray, n_app: int,
                         geo_grid: tuple[int, int], table: list[TrainView], points: np.ndarray) -> dict:
    """Hit rate of the camera-only baseline on one item: `cameras` (its views, canonical frame, in the order of
    the `index` (M,3) [view, app_token, geo_token] targets) -> {"hit_rate", "n_queries", "nearest"}. A query
    whose copied answer has no target (background in the training view) is a miss."""
    true = best_targets(index, weight, len(cameras), n_app)
    hits, nearest = [], []
    for v, cam in enumerate(cameras):
        q = true[v] >= 0
        if not q.any():
            continue
        k = nearest_view(cam, table, points)
        nearest.append(k)
        hits.append(_hits(true[v][q], table[k].best_geo[q], geo_grid))
    if not hits:
        return {"hit_rate": None, "n_queries": 0, "nearest": nearest}
    h = np.concatenate(hits)
    return {"hit_rate": float(h.mean()), "n_queries": int(len(h)), "nearest": nearest}
