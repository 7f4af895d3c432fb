"""Conditioning embeddings of the GeoFace transformer: Plücker rays, timesteps, 2D positions.

Plücker rays (SEVA convention, `plucker_rays`): for each view v and each token-grid cell centre,
(d̂, o × d̂) with d̂ the unit ray direction and o the camera centre, both expressed in the frame of
the reference camera (view `ref`, the first view by default), after this normalisation:

1. relative poses: cam_to_ref_v = world_to_cam_ref @ cam_to_world_v, so the reference camera is the
   identity (centre at the origin, looking along +z, OpenCV axes) whatever the world frame;
2. scale: camera centres are multiplied by s = camera_scale / ‖c̄‖, where c̄ is the centroid of the
   sample's camera centres (in the reference frame, so ‖c̄‖ is the reference camera's distance to the
   centroid). SEVA centres on the robust mean of the centres and uses camera_scale = 2; with a handful of
   views per sample we take the plain mean. If ‖c̄‖ < 1e-6 (a single view, or all centres coincide)
   s = 1.

The embedding is therefore invariant to any rotation, translation and uniform scaling of the world
(tested), and the reference view's moment o × d̂ is 0.
Ray directions go through the cell centres: token (i, j) of an h×w grid over a W×H image samples
pixel ((j + 0.5)·W/w, (i + 0.5)·H/h) — the centre of the stride×stride pixel block, as
`flame_fitting.geometry.camera.Camera.plucker(stride)`. No lens distortion (views are undistorted upstream).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def invert_rigid(m: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) rigid transforms -> their inverses."""
    R, t = m[..., :3, :3], m[..., :3, 3:]
    out = torch.zeros_like(m)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


def normalized_cameras(world_to_cam: torch.Tensor, ref: int = 0, camera_scale: float = 2.0) -> torch.Tensor:
    """world_to_cam (B,V,4,4) -> cam_to_ref (B,V,4,4): poses in the reference camera's frame, centres rescaled."""
    if world_to_cam.ndim != 4 or world_to_cam.shape[-2:] != (4, 4):
        raise ValueError(f"normalized_cameras: world_to_cam must be (B,V,4,4), got {tuple(world_to_cam.shape)}")
    w2c = world_to_cam.double()
    rel = w2c[:, ref : ref + 1] @ invert_rigid(w2c)  # (B,V,4,4) cam_to_ref
    centres = rel[..., :3, 3]  # (B,V,3)
    dist = centres.mean(1).norm(dim=-1)  # (B,) reference camera to centroid
    scale = torch.where(dist > 1e-6, camera_scale / dist.clamp_min(1e-6), torch.ones_like(dist))
    rel = rel.clone()
    rel[..., :3, 3] = centres * scale[:, None, None]
    return rel.to(world_to_cam.dtype)


def plucker_rays(K: torch.Tensor, world_to_cam: torch.Tensor, image_size: tuple[int, int], grid: tuple[int, int],
                 ref: int = 0, camera_scale: float = 2.0) -> torch.Tensor:
    """Plücker embedding (B,V,6,h,w) = (d̂, o × d̂) relative to view `ref`, SEVA-normalised (module docstring).

    K (B,V,3,3) in pixels of an image of `image_size` = (width, height); world_to_cam (B,V,4,4);
    grid = (h, w) token/latent cells per side.
    """
    if K.shape[:2] != world_to_cam.shape[:2] or K.shape[-2:] != (3, 3):
        raise ValueError(f"plucker_rays: K {tuple(K.shape)} and world_to_cam {tuple(world_to_cam.shape)} do not match")
    (W, H), (h, w) = image_size, grid
    rel = normalized_cameras(world_to_cam, ref, camera_scale).double()
    ys = (torch.arange(h, dtype=torch.float64, device=K.device) + 0.5) * (H / h)
    xs = (torch.arange(w, dtype=torch.float64, device=K.device) + 0.5) * (W / w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(-1, 3)  # (h*w, 3)
    d_cam = pix @ torch.linalg.inv(K.double()).transpose(-1, -2)  # (B,V,h*w,3)
    d = d_cam @ rel[..., :3, :3].transpose(-1, -2)
    d = d / d.norm(dim=-1, keepdim=True)
    o = rel[..., None, :3, 3].expand_as(d)
    out = torch.cat([d, torch.cross(o, d, dim=-1)], -1)  # (B,V,h*w,6)
    B, V = K.shape[:2]
    return out.transpose(-1, -2).reshape(B, V, 6, h, w).to(torch.float32)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) of (possibly fractional) timesteps t (N,), DiT/ADM convention [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], -1)
    return emb


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim) [sin | cos] with frequencies 1/10000^(2i/dim) (MAE)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], 1)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (h*w, dim) of a row-major h×w grid: half the channels encode the
    row, half the column (MAE / DiT). dim must be divisible by 4."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim {dim} must be divisible by 4")
    gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, gy), sincos_1d(dim // 2, gx)], 1)
    return torch.from_numpy(emb.astype(np.float32))
