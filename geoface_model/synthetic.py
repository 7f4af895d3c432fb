"""Toy but consistent training samples: a textured sphere with exactly known correspondences.

Used by the tests and `benchmarks/train_step.py` in place of the real `dataset` stage output.
Per sample: a sphere of random radius r ∈ [0.75, 1] at the origin (FLAME frame: y up, +z = "face"),
a random smooth colour field on it (sinusoids of the surface normal, so continuous across the seam),
and V cameras looking at the origin from azimuth ±100°, elevation ±35°, distance 2.6–3.4.

- UV position map: texel (row i, col j) has centre u = (j+0.5)/R, v = 1-(i+0.5)/R (contracts.md),
  longitude λ = 2π(u - ½), latitude φ = π(v - ½), xyz = r (cos φ sin λ, sin φ, cos φ cos λ) ∈ [-1,1].
- Views: numpy ray casting (OpenCV cameras, `flame_fitting.geometry.camera.look_at`) at `ss`× supersampling;
  the image is the box-filtered albedo (background -1), the mask is pixel coverage ≥ ½.
- Correspondences: every supersampled ray hitting the sphere links its app token to the geo token of
  the texel it hits; counts C[v, app, geo] give a2g weights C/Σ_geo (app tokens covered ≥ min_coverage)
  and g2a weights C/Σ_app (every geo token seen in the view).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.geometry.camera import intrinsics, look_at

from .data import ShardMeta, write_shard


def sphere_uv(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (..., 3) -> (u, v) in [0,1] of the UV layout above."""
    lon = np.arctan2(n[..., 0], n[..., 2])
    lat = np.arcsin(np.clip(n[..., 1], -1, 1))
    return lon / (2 * np.pi) + 0.5, lat / np.pi + 0.5


def sphere_posmap(R: int, radius: float) -> np.ndarray:
    """(3,R,R) float32 xyz of the sphere at each texel centre."""
    u = (np.arange(R) + 0.5) / R
    v = 1 - (np.arange(R) + 0.5) / R
    lon = 2 * np.pi * (u[None, :] - 0.5)
    lat = np.pi * (v[:, None] - 0.5)
    xyz = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat) * np.ones_like(lon), np.cos(lat) * np.cos(lon)])
    return (radius * xyz).astype(np.float32)


def _texture(rng: np.random.Generator):
    """A random smooth colour field on the unit sphere: n (...,3) -> rgb (...,3) in [0,1]."""
    freq = rng.normal(size=(3, 2, 3)) * 2.0
    phase = rng.uniform(0, 2 * np.pi, size=(3, 2))

    def colour(n):
        s = np.sin(np.einsum("...k,ctk->...ct", n, freq) + phase)
        return 0.5 + 0.25 * s.sum(-1)

    return colour


def render_sample(rng: np.random.Generator, n_views: int, S: int, R: int, patch_size: int, geo_patch_size: int,
                  ss: int = 2, min_coverage: float = 0.5) -> dict:
    """One sphere sample in the contract's format (numpy float32 / int32)."""
    radius = rng.uniform(0.75, 1.0)
    colour = _texture(rng)
    f = S / (2 * np.tan(np.radians(45.0) / 2))
    K = intrinsics(f, f, S / 2, S / 2)
    At, Gt, gp = S // patch_size, R // geo_patch_size, geo_patch_size
    La, Lg = At * At, Gt * Gt
    ys, xs = np.meshgrid((np.arange(S * ss) + 0.5) / ss, (np.arange(S * ss) + 0.5) / ss, indexing="ij")
    pix = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3)
    app_tok = ((ys.astype(int) // patch_size) * At + xs.astype(int) // patch_size).reshape(-1)
    images, masks, w2cs = [], [], []
    a2g_i, a2g_w, g2a_i, g2a_w = [], [], [], []
    for v in range(n_views):
        az, el = np.radians(rng.uniform(-100, 100)), np.radians(rng.uniform(-35, 35))
        eye = rng.uniform(2.6, 3.4) * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
        w2c = look_at(eye, np.zeros(3))
        d = pix @ np.linalg.inv(K.astype(np.float64)).T @ w2c[:3, :3].astype(np.float64)  # R^T K^-1 x
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        b = d @ eye
        disc = b * b - (eye @ eye - radius**2)
        hit = disc > 0
        t = -b[hit] - np.sqrt(disc[hit])
        n = (eye + t[:, None] * d[hit]) / radius
        rgb = np.full((len(d), 3), -1.0)
        rgb[hit] = 2 * colour(n) - 1
        img = rgb.reshape(S, ss, S, ss, 3).mean((1, 3)).transpose(2, 0, 1)
        cov = hit.reshape(S, ss, S, ss).mean((1, 3))
        images.append(np.clip(img, -1, 1))
        masks.append((cov >= 0.5)[None].astype(np.float32))
        w2cs.append(w2c)
        u, vv = sphere_uv(n)
        col = np.minimum((u * R).astype(int), R - 1)
        row = np.minimum(((1 - vv) * R).astype(int), R - 1)
        geo_tok = (row // gp) * Gt + col // gp
        C = np.zeros((La, Lg))
        np.add.at(C, (app_tok[hit], geo_tok), 1.0)
        a_ok = C.sum(1) >= min_coverage * (patch_size * ss) ** 2
        a, g = np.nonzero(C * a_ok[:, None])
        a2g_i.append(np.stack([np.full_like(a, v), a, g], 1))
        a2g_w.append(C[a, g] / C.sum(1)[a])
        g, a = np.nonzero(C.T)
        g2a_i.append(np.stack([np.full_like(g, v), g, a], 1))
        g2a_w.append(C[a, g] / C.sum(0)[g])
    return {
        "images": np.stack(images).astype(np.float32), "masks": np.stack(masks),
        "K": np.repeat(K[None], n_views, 0), "world_to_cam": np.stack(w2cs).astype(np.float32),
        "uv_posmap": sphere_posmap(R, radius), "uv_mask": np.ones((1, R, R), np.float32),
        "a2g_index": np.concatenate(a2g_i).astype(np.int32), "a2g_weight": np.concatenate(a2g_w).astype(np.float32),
        "g2a_index": np.concatenate(g2a_i).astype(np.int32), "g2a_weight": np.concatenate(g2a_w).astype(np.float32),
    }


def make_synthetic_shard(path: Path | str, n_samples: int = 4, n_views: int = 6, resolution: int = 64,
                         uv_resolution: int = 64, patch_size: int = 8, geo_patch_size: int = 8, split: str = "train",
                         seed: int = 0, ss: int = 2) -> ShardMeta:
    """Write a shard of `n_samples` sphere samples (subjects sphere<seed>_<k>) to `path`; returns its metadata."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(n_samples):
        s = render_sample(rng, n_views, resolution, uv_resolution, patch_size, geo_patch_size, ss)
        s.update(subject=f"sphere{seed}_{k:03d}", sequence="synthetic", frame=0, cameras=[f"cam{v}" for v in range(n_views)])
        samples.append(s)
    return write_shard(path, samples, split=split, patch_size=patch_size, geo_patch_size=geo_patch_size)
