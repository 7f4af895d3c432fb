"""Per-identity appearance of the synthetic heads: skin tone, hair, and the composed UV texture.

`compose_texture(warp, app)` builds an identity's (R, R, 3) sRGB texture from the head model's
`FaceWarp` (texture.py), in linear RGB: plain skin with subtle low-frequency 3D variation (a few
random plane waves) and a slightly darker neck, the photo blended in with its feathered weight,
both in the identity's target skin tone (the photo enters as its ratio to its own skin colour,
half per channel and half luminance only, so its wrinkles do not turn into red lines on other
tones), and hair (per-identity colour, hairline height, strand texture) on the top and back of
the scalp. Texels off the UV charts are padded with their nearest covered texel, so bilinear
lookups at seams stay clean.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.synthetic.texture import FaceWarp, srgb_to_linear

# target skin tones (sRGB), from very light to dark; an identity interpolates between neighbours
SKIN_TONES = np.array([[0.96, 0.80, 0.70], [0.92, 0.72, 0.60], [0.84, 0.62, 0.48], [0.78, 0.60, 0.45],
                       [0.64, 0.45, 0.33], [0.50, 0.34, 0.25], [0.40, 0.27, 0.20]], np.float32)
HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.22, 0.14, 0.09], [0.40, 0.27, 0.16], [0.70, 0.56, 0.36],
                         [0.55, 0.25, 0.12], [0.62, 0.61, 0.60], [0.85, 0.84, 0.82]], np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


@dataclass(frozen=True)
class Appearance:
    """What makes one synthetic identity look different from another (besides its shape)."""

    skin_rgb: np.ndarray  # (3,) float32 sRGB target skin tone
    hair_rgb: np.ndarray  # (3,) float32 sRGB hair colour
    hairline_m: float  # hairline height above the top of the face landmarks (m, negative = lower)
    seed: int  # seed of the skin variation and hair strand noise

    def to_dict(self) -> dict:
        return {"skin_rgb": self.skin_rgb.tolist(), "hair_rgb": self.hair_rgb.tolist(),
                "hairline_m": float(self.hairline_m), "seed": int(self.seed)}


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """A random skin tone (between two neighbouring palette tones), hair colour and hairline."""
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    skin = (1 - (t - i)) * SKIN_TONES[i] + (t - i) * SKIN_TONES[i + 1]
    skin = np.clip(skin * rng.uniform(0.96, 1.04, 3), 0.05, 1.0)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    return Appearance(skin_rgb=skin.astype(np.float32), hair_rgb=np.clip(hair, 0.0, 1.0).astype(np.float32),
                      hairline_m=float(rng.uniform(-0.004, 0.018)), seed=int(rng.integers(2**31)))


def smooth_noise(points: np.ndarray, rng: np.random.Generator, wavelengths=(0.03, 0.10), n: int = 8) -> np.ndarray:
    """Low-frequency noise on 3D points (..., 3) -> (...) float32 roughly in [-1, 1] (random plane waves)."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * np.pi / rng.uniform(*wavelengths, n))[:, None]
    phase = rng.uniform(0, 2 * np.pi, n)
    out = np.zeros(points.shape[:-1], np.float32)
    for j in range(n):
        out += np.sin(points @ k[j].astype(np.float32) + phase[j]).astype(np.float32)
    return out / np.sqrt(n / 2.0)


def hair_weight(warp: FaceWarp, hairline_m: float, noise: np.ndarray) -> np.ndarray:
    """(R, R) float32 in [0, 1]: hair above a hairline that runs from the forehead (front) over the
    ears (sides) down to the nape (back), with a soft, slightly irregular edge."""
    a = warp.anchors
    p = warp.points
    zc = 0.5 * (float(a["forehead"][2]) + float(a["back_z"]))
    phi = np.degrees(np.abs(np.arctan2(p[..., 0], p[..., 2] - zc)))
    eye_y = float(a["eye"][1])
    front = float(a["forehead"][1]) + hairline_m
    side = eye_y + 0.028
    back = eye_y - 0.065

    def ss(x):
        x = np.clip(x, 0.0, 1.0)
        return x * x * (3 - 2 * x)

    line = front + (side - front) * ss((phi - 45.0) / 45.0) + (back - side) * ss((phi - 100.0) / 70.0)
    line = line + 0.004 * noise
    return ss((p[..., 1] - line) / 0.008 + 0.5).astype(np.float32)


def strand_texture(res: int, rng: np.random.Generator) -> np.ndarray:
    """(R, R) float32 zero-mean hair strand noise, elongated along UV v (down the scalp)."""
    half, eighth = max(res // 2, 8), max(res // 8, 4)
    fine = cv2.GaussianBlur(rng.normal(size=(half, half)).astype(np.float32), (0, 0), sigmaX=0.4 * half / 512,
                            sigmaY=5.0 * half / 512)
    coarse = cv2.GaussianBlur(rng.normal(size=(eighth, eighth)).astype(np.float32), (0, 0),
                              sigmaX=0.75 * eighth / 128, sigmaY=3.75 * eighth / 128)
    fine = cv2.resize(fine / (fine.std() + 1e-6), (res, res), interpolation=cv2.INTER_LINEAR)
    coarse = cv2.resize(coarse / (coarse.std() + 1e-6), (res, res), interpolation=cv2.INTER_LINEAR)
    return ((fine + 0.5 * coarse) / 1.5).astype(np.float32)


def compose_texture(warp: FaceWarp, app: Appearance) -> np.ndarray:
    """The identity's UV texture (R, R, 3) float32 sRGB in [0, 1] (see the module docstring)."""
    rng = np.random.default_rng(app.seed)
    p = warp.points
    target = srgb_to_linear(app.skin_rgb)
    var = smooth_noise(p, rng)
    chin_y = float(warp.anchors["chin"][1])
    neck = np.clip((chin_y - 0.01 - p[..., 1]) / 0.05, 0.0, 1.0)  # darker under the jaw
    shade = ((1.0 + 0.05 * var) * (1.0 - 0.18 * neck))[..., None]
    w = warp.weight[..., None]
    base = target[None, None] * ((1 - w) * shade + w * warp.photo_detail)
    hw = hair_weight(warp, app.hairline_m, smooth_noise(p, rng, (0.02, 0.05), 6)) * (1.0 - warp.weight)
    strands = strand_texture(warp.resolution, rng)
    hair = srgb_to_linear(app.hair_rgb)[None, None] * np.clip(1.0 + 0.35 * strands, 0.2, 2.0)[..., None]
    out = (1 - hw[..., None]) * base + hw[..., None] * hair
    out = linear_to_srgb(out)
    return out[warp.fill_rows, warp.fill_cols]
