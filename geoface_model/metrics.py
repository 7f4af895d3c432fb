"""Evaluation metrics of generated views and geometry (used by the `evaluate` stage on held-out subjects).

- `psnr`, `ssim` (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, 'valid' windows only, mean over
  channels), `image_metrics` (means over views + LPIPS).
- LPIPS (v0.1, AlexNet) only from local weights (`lpips_weights`): a folder holding `alexnet.pth` (torchvision
  AlexNet state dict) + `alex.pth` (the lpips package's linear layers), or one .pth / .safetensors file with both
  key sets. Without weights the result is {"lpips": None, "lpips_status": "unavailable: no local weights"};
  nothing is ever substituted. Weights that are given but unusable raise `MetricError`.
- TSED (Yu et al. 2023): SIFT (`cv2.SIFT_create`) matches between neighbouring generated views (Lowe ratio 0.8 and
  mutual nearest neighbours, no geometric verification — COLMAP's raw matches, as the reference code), symmetric
  epipolar distance ½(d(x₂, F x₁) + d(x₁, Fᵀ x₂)) with F from the known cameras; a pair is consistent with ≥ 10
  matches and a median < 2 px of the views themselves (distances measured on views upscaled for SIFT are divided
  by the scale); `tsed` is the fraction of consistent pairs.
- Landmark-fit consistency: MediaPipe landmarks on the generated views (upscaled to ≥ 256 px for detection), one
  head fitted across them with `fit_sequence` (cameras fixed, the known ones), RMSE of the reprojected embedded
  landmarks in pixels of the views.
- Geometry: error of a generated UV position map against ground truth, millimetres over the valid texels after
  denormalisation (`flame_fitting.uv.denormalize_points`), in the canonical frame (no alignment).
- Attention hit rate at a supervised block: fraction of appearance queries whose strongest geometry logit lies
  within Chebyshev distance 1 (UV token grid) of the true correspondence (the a2g target with the largest weight);
  `chance` = the same for a uniformly random key.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.camera import Camera
from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.uv import denormalize_points


class MetricError(GeofaceError, ValueError):
    """Bad metric input or unusable LPIPS weights (names the file / argument)."""


# ----------------------------------------------------------------------------- PSNR / SSIM
def _pair(a, b, data_range):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise MetricError(f"images must have the same (H, W[, C]) shape, got {a.shape} and {b.shape}")
    rng = data_range if data_range is not None else (255.0 if a.dtype == np.uint8 else 1.0)
    return a.astype(np.float64), b.astype(np.float64), float(rng)


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB of (H,W[,C]) images (uint8: range 255, float: 1 unless given); inf for identical images."""
    a, b, rng = _pair(pred, target, data_range)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(rng**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """(size,) normalised 1-D Gaussian; the 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of (H,W) with the window g ⊗ g -> (H-n+1, W-n+1)."""
    v = np.lib.stride_tricks.sliding_window_view(x, len(g), axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(v, len(g), axis=1) @ g


def ssim_map(pred: np.ndarray, target: np.ndarray, data_range: float | None = None, win: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """SSIM of every valid window of (H,W[,C]) images (H, W >= win) -> (H-win+1, W-win+1, C); entry (i, j) is the
    window centred on pixel (i + win//2, j + win//2)."""
    a, b, rng = _pair(pred, target, data_range)
    if min(a.shape[:2]) < win:
        raise MetricError(f"ssim: images {a.shape[:2]} are smaller than the {win}×{win} window")
    g = gaussian_window(win, sigma)
    c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
    a, b = (a[..., None], b[..., None]) if a.ndim == 2 else (a, b)
    maps = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        mx, my = _filter_valid(x, g), _filter_valid(y, g)
        sxx = _filter_valid(x * x, g) - mx**2
        syy = _filter_valid(y * y, g) - my**2
        sxy = _filter_valid(x * y, g) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))
    return np.stack(maps, -1)


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float | None = None, win: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM over the valid windows and the channels of (H,W[,C]) images (H, W >= win)."""
    return float(ssim_map(pred, target, data_range, win, sigma, k1, k2).mean())


def _fg(mask, shape) -> np.ndarray:
    m = np.asarray(mask).astype(bool)
    m = m[..., 0] if m.ndim == 3 else m
    if m.shape != tuple(shape[:2]):
        raise MetricError(f"foreground mask {m.shape} does not match images {tuple(shape[:2])}")
    return m


def psnr_fg(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float | None = None) -> float | None:
    """PSNR (dB) over the pixels inside `mask` (H,W) only (every channel); None for an empty mask, inf when the
    images agree inside it (the background is ignored)."""
    a, b, rng = _pair(pred, target, data_range)
    m = _fg(mask, a.shape)
    if not m.any():
        return None
    mse = float(((a[m] - b[m]) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(rng**2 / mse)


def ssim_fg(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float | None = None,
            win: int = 11) -> float | None:
    """Mean of the SSIM map (`ssim_map`) over the valid windows whose centre pixel is inside `mask` (H,W), and
    the channels; None when no window centre is inside. Windows near the mask edge still see some background."""
    H, W = np.asarray(pred).shape[:2]
    h = win // 2
    m = _fg(mask, (H, W))[h: h + H - win + 1, h: h + W - win + 1]
    if not m.any():
        return None
    return float(ssim_map(pred, target, data_range, win)[m].mean())


# ----------------------------------------------------------------------------- LPIPS (local weights only)
class _Lin(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with AlexNet features (torchvision layer indices, so its state dict loads as is)."""

    SHIFT, SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)
    TAPS, CHANNELS = (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)  # ReLU outputs compared

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        for k, c in enumerate(self.CHANNELS):
            setattr(self, f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor(self.SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(self.SCALE)[None, :, None, None])

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b (N,3,H,W) in [-1,1] -> (N,) distances."""
        d = 0
        for k, (fa, fb) in enumerate(zip(self._taps(a), self._taps(b))):
            d = d + getattr(self, f"lin{k}").model((fa - fb) ** 2).mean((2, 3))
        return d[:, 0]


def _load_state(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise MetricError(f"{path}: unreadable LPIPS weights ({type(e).__name__}: {e})") from None


_LPIPS: dict[str, LPIPSAlex] = {}


def load_lpips(weights: Path | str) -> LPIPSAlex:
    """LPIPSAlex from local weights (module docstring; cached per resolved path); MetricError naming the path
    when unusable."""
    p = Path(weights)
    key = str(p.resolve())
    if key not in _LPIPS:
        _LPIPS[key] = _build_lpips(p)
    return _LPIPS[key]


def _build_lpips(p: Path) -> LPIPSAlex:
    if p.is_dir():
        files = [p / "alexnet.pth", p / "alex.pth"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise MetricError(f"{p}: LPIPS weights folder lacks {missing} (alexnet.pth = torchvision AlexNet, "
                              "alex.pth = lpips v0.1 linear layers)")
        state = {**_load_state(files[0]), **_load_state(files[1])}
    elif p.is_file():
        state = _load_state(p)
    else:
        raise MetricError(f"{p}: LPIPS weights not found")
    state = {k: v for k, v in state.items() if k.startswith(("features.", "lin"))}
    net = LPIPSAlex()
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [m for m in missing if m not in ("shift", "scale")]
    if missing or unexpected:
        raise MetricError(f"{p}: not LPIPS-AlexNet weights (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return net.eval()


def _to_tensor(imgs) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i) for i in imgs])).permute(0, 3, 1, 2).float() / 127.5 - 1


def _mean_or_none(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


PSNR_CAP_DB = 100.0  # a view identical to its target counts as this in the means (its PSNR is inf)


def _capped(db: float | None) -> float | None:
    return None if db is None else min(db, PSNR_CAP_DB)


def image_metrics(preds: list[np.ndarray], targets: list[np.ndarray], lpips_weights: Path | str | None = None,
                  masks: list[np.ndarray] | None = None) -> dict:
    """Means over view pairs of PSNR, SSIM (uint8 RGB (H,W,3)) and LPIPS (or its unavailability); with `masks`
    ((H,W) foreground per target) also `psnr_fg` / `ssim_fg` (means over the views with a non-empty mask). A view's
    PSNR enters the means capped at PSNR_CAP_DB (an identical view's inf made the whole mean inf, and the evaluation
    then left the sample out)."""
    if len(preds) != len(targets) or not preds:
        raise MetricError(f"image_metrics: {len(preds)} predictions for {len(targets)} targets")
    out = {"psnr": float(np.mean([_capped(psnr(a, b)) for a, b in zip(preds, targets)])),
           "ssim": float(np.mean([ssim(a, b) for a, b in zip(preds, targets)]))}
    if masks is not None:
        if len(masks) != len(targets):
            raise MetricError(f"image_metrics: {len(masks)} masks for {len(targets)} targets")
        out["psnr_fg"] = _mean_or_none(_capped(psnr_fg(a, b, m)) for a, b, m in zip(preds, targets, masks))
        out["ssim_fg"] = _mean_or_none(ssim_fg(a, b, m) for a, b, m in zip(preds, targets, masks))
    if lpips_weights is None:
        return out | {"lpips": None, "lpips_status": "unavailable: no local weights"}
    d = load_lpips(lpips_weights)(_to_tensor(preds), _to_tensor(targets))
    return out | {"lpips": float(d.mean()), "lpips_status": f"ok: {lpips_weights}"}


# ----------------------------------------------------------------------------- TSED
def fundamental_matrix(cam1: Camera, cam2: Camera) -> np.ndarray:
    """F (3,3) float64 with x₂ᵀ F x₁ = 0 for pixels (geoface convention) of the same point in cam1, cam2."""
    R1, t1 = cam1.world_to_cam[:3, :3].astype(np.float64), cam1.world_to_cam[:3, 3].astype(np.float64)
    R2, t2 = cam2.world_to_cam[:3, :3].astype(np.float64), cam2.world_to_cam[:3, 3].astype(np.float64)
    R = R2 @ R1.T
    t = t2 - R @ t1
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(cam2.K.astype(np.float64)).T @ tx @ R @ np.linalg.inv(cam1.K.astype(np.float64))


def symmetric_epipolar_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """F (3,3), matched pixels x1, x2 (M,2) -> (M,) ½(d(x₂, F x₁) + d(x₁, Fᵀ x₂)) in pixels."""
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], 1)
    l2, l1 = h1 @ F.T, h2 @ F
    e = np.abs((h2 * l2).sum(1))
    return 0.5 * (e / np.hypot(l2[:, 0], l2[:, 1]) + e / np.hypot(l1[:, 0], l1[:, 1]))


def sift_matches(img1: np.ndarray, img2: np.ndarray, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """SIFT matches (ratio test + mutual nearest neighbours) of two uint8 RGB images -> pixels (M,2), (M,2),
    in geoface's convention (OpenCV keypoints + 0.5)."""
    sift = cv2.SIFT_create()
    k1, d1 = sift.detectAndCompute(cv2.cvtColor(np.asarray(img1), cv2.COLOR_RGB2GRAY), None)
    k2, d2 = sift.detectAndCompute(cv2.cvtColor(np.asarray(img2), cv2.COLOR_RGB2GRAY), None)
    if d1 is None or d2 is None or len(k1) < 2 or len(k2) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    bf = cv2.BFMatcher(cv2.NORM_L2)
    back = {m.queryIdx: m.trainIdx for m in bf.match(d2, d1)}
    pairs = [(m.queryIdx, m.trainIdx) for m, n in bf.knnMatch(d1, d2, k=2)
             if m.distance < ratio * n.distance and back.get(m.trainIdx) == m.queryIdx]
    p1 = np.array([k1[i].pt for i, _ in pairs], np.float64).reshape(-1, 2) + 0.5
    p2 = np.array([k2[j].pt for _, j in pairs], np.float64).reshape(-1, 2) + 0.5
    return p1, p2


def tsed(images: list[np.ndarray], cameras: list[Camera], pairs: list[tuple[int, int]] | None = None,
         min_matches: int = 10, max_median_px: float = 2.0, pixel_scale: float = 1.0) -> dict:
    """Fraction of consistent view pairs (default: neighbours i, i+1 in the given order) + per-pair details.
    `pixel_scale`: how many pixels of `images` make one pixel of the views they were upscaled from (for SIFT);
    the distances (`median_sed_px`) and `max_median_px` are in the views' own pixels."""
    if len(images) != len(cameras) or len(images) < 2:
        raise MetricError(f"tsed: needs >= 2 images with one camera each, got {len(images)} / {len(cameras)}")
    pairs = pairs if pairs is not None else [(i, i + 1) for i in range(len(images) - 1)]
    rows = []
    for i, j in pairs:
        x1, x2 = sift_matches(images[i], images[j])
        sed = symmetric_epipolar_distance(fundamental_matrix(cameras[i], cameras[j]), x1, x2) / pixel_scale
        med = float(np.median(sed)) if len(sed) else None
        ok = len(sed) >= min_matches and med is not None and med < max_median_px
        rows.append({"i": i, "j": j, "n_matches": int(len(sed)), "median_sed_px": med, "consistent": bool(ok)})
    return {"tsed": float(np.mean([r["consistent"] for r in rows])), "pairs": rows}


# ----------------------------------------------------------------------------- landmarks, geometry
def landmark_fit_rmse(model, cameras: list[Camera], points: list[np.ndarray]) -> dict:
    """One head fitted (cameras fixed) to MediaPipe landmarks (478,2) per view (NaN rows = missing) -> RMSE px of
    the embedded landmarks over the views with detections, or None when fewer than 2 views have any."""
    names = [c.name or f"view_{i:02d}" for i, c in enumerate(cameras)]
    ok = [bool(np.isfinite(p).all(1).sum() >= 6) for p in points]
    base = {"lmk_views_detected": int(sum(ok)), "lmk_views": len(points)}
    if sum(ok) < 2:
        return base | {"lmk_rmse_px": None, "lmk_status": "fewer than 2 views with landmarks"}
    cams = dict(zip(names, cameras))
    obs = {0: {n: np.asarray(p, np.float64) for n, p, o in zip(names, points, ok) if o}}
    fit = fit_sequence(model, cams, obs, FitConfig(threads=1), progress=False)
    if fit.status[0].status == "skipped":
        return base | {"lmk_rmse_px": None, "lmk_status": f"fit skipped: {fit.status[0].reason}"}
    ids = fit.landmark_indices
    err = np.concatenate([(fit.landmarks_2d(0, n)[ids] - p[ids]).reshape(-1, 2) for n, p in obs[0].items()])
    err = err[np.isfinite(err).all(1)]
    return base | {"lmk_rmse_px": float(np.sqrt((err**2).sum(1).mean())), "lmk_status": fit.status[0].status}


def detect_landmarks(images: list[np.ndarray], min_side: int = 256) -> list[np.ndarray]:
    """MediaPipe (478,2) landmarks per uint8 RGB view in its own pixels (NaN when no face); small views are
    upscaled (cubic) to `min_side` for detection."""
    from flame_fitting.landmarks.detector import detect_rgb

    out = []
    for img in images:
        s = max(1.0, min_side / min(img.shape[:2]))
        big = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC) if s > 1 else img
        out.append(detect_rgb(np.ascontiguousarray(big)).points / s)
    return out


def landmark_consistency(model, images: list[np.ndarray], cameras: list[Camera]) -> dict:
    """`landmark_fit_rmse` on MediaPipe landmarks detected on the generated views."""
    return landmark_fit_rmse(model, cameras, detect_landmarks(images))


def posmap_error_mm(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
    """pred, target (R,R,3) normalised UV position maps, mask (R,R) valid texels -> distances in mm."""
    pred, target, mask = np.asarray(pred), np.asarray(target), np.asarray(mask, bool)
    if pred.shape != target.shape or pred.shape[:2] != mask.shape or pred.shape[-1] != 3:
        raise MetricError(f"posmap_error_mm: shapes {pred.shape}, {target.shape}, mask {mask.shape} do not match")
    if not mask.any():
        raise MetricError("posmap_error_mm: empty mask")
    d = np.linalg.norm(denormalize_points(pred[mask]).astype(np.float64) - denormalize_points(target[mask]), axis=1) * 1e3
    return {"geo_mean_mm": float(d.mean()), "geo_median_mm": float(np.median(d)), "geo_p95_mm": float(np.percentile(d, 95)),
            "geo_rmse_mm": float(np.sqrt((d**2).mean()))}


# ----------------------------------------------------------------------------- attention
def attention_hit_rate(a2g: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, geo_grid: tuple[int, int]) -> dict:
    """a2g (B,Fa,La,Lg) logits; index (M,4) [b, view, app_token, geo_token] with weights (M,) (collated a2g
    targets); geo_grid (h, w) with h·w = Lg -> {"hit_rate", "chance", "n_queries"}."""
    B, Fa, La, Lg = a2g.shape
    gh, gw = geo_grid
    idx, w = np.asarray(index.cpu(), np.int64), np.asarray(weight.cpu(), np.float64)
    if gh * gw != Lg or idx.ndim != 2 or idx.shape[1] != 4 or len(w) != len(idx):
        raise MetricError(f"attention_hit_rate: grid {geo_grid} vs {Lg} keys, index {idx.shape}, weight {w.shape}")
    if len(idx) == 0:
        return {"hit_rate": None, "chance": None, "n_queries": 0}
    q = (idx[:, 0] * Fa + idx[:, 1]) * La + idx[:, 2]
    order = np.lexsort((-w, q))  # by query, largest weight first
    first = order[np.r_[True, q[order][1:] != q[order][:-1]]]
    true = idx[first, 3]
    pred = a2g.float().reshape(-1, Lg).argmax(-1).cpu().numpy()[q[first]]
    tr, tc, pr, pc = true // gw, true % gw, pred // gw, pred % gw
    hit = (np.abs(tr - pr) <= 1) & (np.abs(tc - pc) <= 1)
    near = (np.minimum(tr + 1, gh - 1) - np.maximum(tr - 1, 0) + 1) * (np.minimum(tc + 1, gw - 1) - np.maximum(tc - 1, 0) + 1)
    return {"hit_rate": float(hit.mean()), "chance": float((near / Lg).mean()), "n_queries": int(len(first))}


@torch.no_grad()
def attention_hit_rate_batch(model, batch: dict, codec, scheduler, cfg, generator: torch.Generator, device,
                             timestep: int | None = None) -> dict:
    """Hit rate at every supervised block ("hit_rate_l<k>") of a collated batch noised as in training
    (`diffusion.prepare_inputs`; at the noise level `timestep` when given, else a random one), plus "chance" and
    "n_queries"."""
    from .diffusion import prepare_inputs

    kwargs, _, _ = prepare_inputs(batch, codec, scheduler, cfg, generator, device, timestep=timestep)
    out = model(**kwargs, align=True, directions=("a2g",))
    if not out.align:
        raise MetricError("attention_hit_rate_batch: the model returned no alignment logits (no geometry stream?)")
    report = {}
    for layer, al in out.align.items():
        g = int(round(al.a2g.shape[-1] ** 0.5))
        r = attention_hit_rate(al.a2g, batch["a2g_index"], batch["a2g_weight"], (g, al.a2g.shape[-1] // g))
        report[f"hit_rate_l{layer}"] = r["hit_rate"]
        report["chance"], report["n_queries"] = r["chance"], r["n_queries"]
    return report
