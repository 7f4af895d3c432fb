"""Landmark noise model: per-group noise levels estimated from a fit's residuals, as landmark weights.

Detected landmarks are not equally reliable. MediaPipe's face-oval (contour) points slide along the
silhouette; its dense surface points (cheeks, forehead, ...) are placed by its own mesh model rather
than by image features; lips, eyes and irises are the sharpest. Their errors are also largely
*systematic*: a landmark is off by about the same 3D offset in every view, so its error does not
average out over views the way independent pixel noise does, and a fit that trusts every view as an
independent 1-px measurement bends identity and expression to follow the detector's bias.

The model (variance components estimated from the data, see docs/fitting.md):
  * landmarks fall in groups by MediaPipe id (`GROUP_NAMES`: contour, lips, eyes, brows, iris, nose,
    and "dense" for every other id);
  * per group, the per-axis spread σ̂ = median(|r|) / √(2 ln 2) of the 2D residuals of the observations
    the fit used (visible, in views it did not reject as gross failures);
  * spread up to `free_px` is independent pixel noise, which the data term (1 px² per unit) already
    assumes; the excess variance is a detector bias shared by the m views that see the landmark with
    correlation ρ, so it counts with Kish's design effect 1 + (m - 1) ρ, times `dense_factor` for the
    dense group (neighbouring dense points share their errors as well):
        σ_eff² = 1 px² + κ_g · max(0, σ̂_g² - free_px²),  κ_g = (1 + (m_g - 1) ρ) · [dense_factor],
        weight_g = 1 px² / σ_eff².
Landmarks as accurate as the data term assumes (σ̂ ≤ free_px) keep weight 1, so exact or 1-px-noise
landmarks are fitted exactly as without the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

# MediaPipe FaceMesh ids (mediapipe.solutions.face_mesh_connections: FACEMESH_FACE_OVAL, _LIPS,
# _LEFT_EYE | _RIGHT_EYE, _LEFT_EYEBROW | _RIGHT_EYEBROW, _NOSE; iris = the 10 refined points 468-477),
# copied so that the fitter does not import mediapipe (a test compares them with mediapipe's sets).
MP_GROUPS: dict[str, tuple[int, ...]] = {
    "contour": (10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251, 284,
                288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454),
    "lips": (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269,
             270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415),
    "eyes": (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246, 249, 263, 362, 373, 374,
             380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466),
    "brows": (46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 276, 282, 283, 285, 293, 295, 296, 300, 334, 336),
    "iris": tuple(range(468, 478)),
    "nose": (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440),
}
GROUP_NAMES = (*MP_GROUPS, "dense")
DENSE = len(GROUP_NAMES) - 1
MIN_SAMPLES = 30     # observations a group needs for an estimate (fewer: the group keeps weight 1)
MEDIAN_TO_SIGMA = float(np.sqrt(2 * np.log(2)))  # median |r| of a 2D N(0, σ² I) error is σ √(2 ln 2)


def landmark_groups(landmark_indices: np.ndarray) -> np.ndarray:
    """MediaPipe ids (L,) -> group index (L,) int64 into GROUP_NAMES (ids in no named group are "dense")."""
    ids = np.asarray(landmark_indices, np.int64)
    out = np.full(len(ids), DENSE, np.int64)
    for g, members in enumerate(MP_GROUPS.values()):
        out[np.isin(ids, members)] = g
    return out


@dataclass
class NoiseModel:
    """Estimated noise per landmark group and the resulting weights (index = GROUP_NAMES)."""

    sigma_px: np.ndarray    # (G,) per-axis σ̂ in pixels (NaN: fewer than MIN_SAMPLES observations)
    samples: np.ndarray     # (G,) observations the estimate used
    views: np.ndarray       # (G,) mean number of views that see a landmark of the group in a frame
    weights: np.ndarray     # (G,) weight in (0, 1]

    @property
    def is_identity(self) -> bool:
        """True when every weight is 1: the model changes nothing."""
        return bool(np.all(self.weights >= 1.0))

    def landmark_weights(self, groups: np.ndarray) -> np.ndarray:
        """(L,) weight of each landmark, groups (L,) from `landmark_groups`."""
        return self.weights[np.asarray(groups)]

    def table(self) -> pd.DataFrame:
        """One row per group: group, sigma_px, samples, views, weight."""
        return pd.DataFrame({"group": list(GROUP_NAMES), "sigma_px": self.sigma_px, "samples": self.samples,
                             "views": self.views, "weight": self.weights})


def estimate_noise(errors: Tensor, used: Tensor, groups: np.ndarray, free_px: float, correlation: float,
                   dense_factor: float) -> NoiseModel:
    """Variance components from the residuals of a fit.

    errors (F, C, L) pixel errors (NaN where not observed); used (F, C, L) bool: the observations to learn
    from; groups (L,) from `landmark_groups`.
    """
    if errors.shape != used.shape or errors.shape[-1] != len(groups):
        raise ValueError(f"estimate_noise: errors {tuple(errors.shape)}, used {tuple(used.shape)} and groups "
                         f"({len(groups)},) do not match")
    G = len(GROUP_NAMES)
    ok = used & torch.isfinite(errors)
    gl = torch.as_tensor(np.asarray(groups))
    sigma, samples, views = np.full(G, np.nan), np.zeros(G, np.int64), np.ones(G)
    for g in range(G):
        sel = ok & (gl == g)                                              # (F, C, L)
        samples[g] = int(sel.sum())
        if samples[g] < MIN_SAMPLES:
            continue
        seen = sel.sum(1)                                                 # (F, L) views per landmark and frame
        views[g] = float(seen[seen > 0].double().mean())
        sigma[g] = float(errors[sel].median()) / MEDIAN_TO_SIGMA
    return NoiseModel(sigma_px=sigma, samples=samples, views=views,
                      weights=noise_weights(sigma, views, free_px, correlation, dense_factor))


def noise_weights(sigma: np.ndarray, views: np.ndarray, free_px: float, correlation: float, dense_factor: float
                  ) -> np.ndarray:
    """σ̂ (G,) px, views per landmark (G,) -> weights (G,) = 1 / (1 + κ_g max(0, σ̂_g² - free_px²)) (NaN σ̂: 1)
    with κ_g = (1 + (views_g - 1) ρ) × (dense_factor for the dense group, else 1)."""
    kappa = 1 + (np.maximum(views, 1) - 1) * correlation
    kappa = kappa * np.where(np.arange(len(views)) == DENSE, dense_factor, 1.0)
    excess = np.maximum(0.0, np.nan_to_num(sigma, nan=0.0) ** 2 - free_px ** 2)
    return 1 / (1 + kappa * excess)
