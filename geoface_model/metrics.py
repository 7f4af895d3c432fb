"""Image metrics of generated views against their targets (used by the `evaluate` stage on held-out subjects).

- `psnr`, `ssim` (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, 'valid' windows only, mean over
  channels), `image_metrics` (means over views + LPIPS).
- LPIPS (v0.1, AlexNet) only from local weights (`lpips_weights`): a folder holding `alexnet.pth` (torchvision
  AlexNet state dict) + `alex.pth` (the lpips package's linear layers), or one .pth / .safetensors file with both
  key sets. Without weights the result is {"lpips": None, "lpips_status": "unavailable: no local weights"};
  nothing is ever substituted. Weights that are given but unusable raise `MetricError`.

The consistency and geometry metrics (TSED, landmark fit, UV position map error, attention hit rate):
metrics_geometry.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from flame_fitting.core.errors import GeofaceError


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
