"""Backgrounds of the synthetic views: smooth colour gradients, blurred coloured noise, solid colours.

One background per (subject, camera), fixed over the frames (as the walls behind a real rig's
cameras are). Colours are muted (saturation ≤ 0.6, value 0.15–0.9) and never contain faces.
"""
from __future__ import annotations

import cv2
import numpy as np


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random muted sRGB colour (3,) float32."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.0, 0.6) * 255, rng.uniform(0.15, 0.9) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) linear gradient between two colours along a random direction."""
    a, b = _colour(rng), _colour(rng)
    ang = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    t = np.clip(0.5 + (x * np.cos(ang) + y * np.sin(ang)) * rng.uniform(0.8, 1.6), 0.0, 1.0)[..., None]
    return (1 - t) * a + t * b


def blurred_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) coloured noise at a coarse scale: a few cells, smoothly upsampled."""
    cells = int(rng.integers(3, 12))
    base = _colour(rng)
    coarse = base + rng.normal(0.0, rng.uniform(0.03, 0.12), (cells, cells, 3)).astype(np.float32)
    small = cv2.resize(coarse, (64, 64), interpolation=cv2.INTER_CUBIC)
    small = cv2.GaussianBlur(small, (0, 0), 64 / cells / 3)
    return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def solid(size: int, rng: np.random.Generator) -> np.ndarray:
    return np.broadcast_to(_colour(rng), (size, size, 3)).copy()


KINDS = {"gradient": gradient, "noise": blurred_noise, "solid": solid}


def make_backgrounds(n: int, size: int, kinds: list[str], seed: int) -> np.ndarray:
    """(n, size, size, 3) float32 sRGB in [0, 1]: one background per camera, kinds drawn from `kinds`."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        out[i] = KINDS[kinds[rng.integers(len(kinds))]](size, rng)
    return out
