"""The geometry stream's data normalisation (`model.geometry_norm`, docs/model.md "Geometry normalisation").

The canonical UV position maps are box coordinates (flame_fitting.uv: ±1 = ±0.25 m), and heads differ from one
another by a few millimetres — about 0.015 in those units, a hundredth of the diffusion's unit noise. Diffused as
they are, the maps carry no identity information above the noise except at the very last steps, and the network
has to reproduce the mean head to better than a millimetre through its patch projection before it can beat the
trivial "mean training UV map" (measured: 5.76 mm against that baseline's 3.46 mm). With `geometry_norm:
dataset` the geometry frame is diffused as

    g = (posmap − mean) / scale

where `mean` (3, R, R) is the training split's per-texel mean map and `scale` maps the residuals' 99.9th
percentile (|coordinate|, over the covered texels) to 1: the residuals then fill [-1, 1] like the views' pixel values,
so the samplers' clipping of x̂0 to [-1, 1] (pixel space) and the VAE's input range (latent space) hold for them too.
A network output of zero is exactly the mean-map baseline, and what it learns is the subject's deviation from it,
at a signal-to-noise ratio comparable to the views'. The statistics are computed from the training data when a run starts
(deterministic: a resumed run gets the same), stored in the model (`geo_norm_mean` buffer, `geo_norm_scale` in
its config: `save_pretrained` / `from_pretrained` carry them), and applied by the latent codec
(`LatentCodec.encode_geometry` / `decode_geometry`) wherever the geometry frame is encoded or decoded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

COVER_QUANTILE = 0.999  # of |residual coordinates|, mapped to 1


@dataclass
class GeometryNorm:
    """mean (3, R, R) of the maps in box coordinates, scale > 0: g = (posmap − mean) / scale."""

    mean: torch.Tensor
    scale: float

    def normalize(self, posmap: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) box coordinates -> normalised residuals."""
        return (posmap - self.mean.to(posmap.device, posmap.dtype)) / self.scale

    def denormalize(self, g: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) normalised residuals -> box coordinates."""
        return g * self.scale + self.mean.to(g.device, g.dtype)


def posmap_statistics(dataset, max_samples: int = 1024, values_per_sample: int = 16384) -> tuple[np.ndarray, float]:
    """(mean (3, R, R) float32, scale) of a `data.GeoFaceDataset` (the training split): the per-texel mean map and
    the scale that maps the COVER_QUANTILE of the residuals' |coordinates| over covered texels to 1 (1.0 when the
    maps do not vary, e.g. one sample). At most `max_samples` samples, spread evenly over the dataset, and two
    streaming passes (memory: one map plus `values_per_sample` residual values per sample, a fixed-seed subsample,
    for the quantile)."""
    n = len(dataset)
    if n == 0:
        raise ValueError("posmap_statistics: the dataset is empty")
    ids = np.unique(np.linspace(0, n - 1, min(n, max_samples)).round().astype(int))

    def maps():
        for i in ids:
            it = dataset.item(int(i), np.array([0]))
            yield it["uv_posmap"].numpy().astype(np.float64), it["uv_mask"].numpy()[0] > 0.5

    total = None
    for m, _ in maps():
        total = m if total is None else total + m
    mean = total / len(ids)
    rng, values = np.random.default_rng(0), []
    for m, covered in maps():
        r = np.abs((m - mean).transpose(1, 2, 0)[covered]).ravel()
        values.append(r if len(r) <= values_per_sample else rng.choice(r, values_per_sample, replace=False))
    v = np.concatenate(values)
    q = float(np.quantile(v, COVER_QUANTILE)) if len(v) else 0.0
    return mean.astype(np.float32), (q if q > 1e-8 else 1.0)


class GeometryNormMixin:
    """For the backbones (`ModelMixin` subclasses): the `geo_norm_mean` buffer and `geo_norm_scale` config entry.
    Call `_init_geometry_norm(resolution, scale)` in `__init__` (resolution 0: off)."""

    def _init_geometry_norm(self, resolution: int, scale: float) -> None:
        if resolution > 0:
            self.register_buffer("geo_norm_mean", torch.zeros(3, resolution, resolution))

    def set_geometry_norm(self, mean: np.ndarray, scale: float) -> None:
        """Install the training data's statistics (`posmap_statistics`); the model must have been built with
        `geo_norm_resolution` equal to the maps' side."""
        if not hasattr(self, "geo_norm_mean"):
            raise ValueError("set_geometry_norm: the model was built without geometry normalisation "
                             "(geo_norm_resolution 0)")
        if tuple(mean.shape) != tuple(self.geo_norm_mean.shape):
            raise ValueError(f"set_geometry_norm: mean map {tuple(mean.shape)}, the model holds "
                             f"{tuple(self.geo_norm_mean.shape)} (tokens.uv_resolution changed?)")
        if not scale > 0:
            raise ValueError(f"set_geometry_norm: scale {scale} must be > 0")
        with torch.no_grad():
            self.geo_norm_mean.copy_(torch.from_numpy(np.asarray(mean, np.float32)))
        self.register_to_config(geo_norm_scale=float(scale))

    def geometry_norm(self) -> GeometryNorm | None:
        """The normalisation the model was trained with, or None (maps diffused as box coordinates)."""
        scale = float(getattr(self.config, "geo_norm_scale", 0.0) or 0.0)
        if not hasattr(self, "geo_norm_mean") or scale <= 0:
            return None
        return GeometryNorm(self.geo_norm_mean.detach().float(), scale)
