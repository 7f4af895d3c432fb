"""Where the diffusion runs: pixel space (identity) or the latent space of a local diffusers AutoencoderKL.

Views and the UV position map go through the same codec (both are 3-channel images in [-1,1]); the map first
through the model's geometry normalisation when it has one (geo_norm.py: `encode_geometry` / `decode_geometry`).
VAE latents are the posterior mean (deterministic), then `(z - shift_factor) * scaling_factor` as in
diffusers' pipelines; `decode` inverts that. `vae_path` must be a local folder holding the VAE's
config.json + weights (`AutoencoderKL.save_pretrained` layout): hub ids are refused, nothing is downloaded.
"""
from __future__ import annotations

from .weights import read_config_json
from pathlib import Path

import torch

from flame_fitting.core.errors import GeofaceError


class LatentError(GeofaceError, ValueError):
    """A VAE path that is not a usable local AutoencoderKL folder."""


def _vae_config(vae_path: Path | str) -> dict:
    path = Path(vae_path)
    if not path.is_dir():
        raise LatentError(f"vae_path {str(vae_path)!r}: not a local folder (hub ids are not allowed; "
                          "save the VAE with AutoencoderKL.save_pretrained and point here)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise LatentError(f"{cfg_file}: missing (expected an AutoencoderKL saved with save_pretrained)")
    cfg = read_config_json(cfg_file, LatentError)
    if cfg.get("_class_name") not in (None, "AutoencoderKL"):
        raise LatentError(f"{cfg_file}: _class_name is {cfg.get('_class_name')!r}, expected 'AutoencoderKL'")
    blocks, channels = cfg.get("block_out_channels", [0] * 4), cfg.get("latent_channels", 4)
    sizes = [channels, *blocks] if isinstance(blocks, list) and 1 <= len(blocks) <= 8 else None
    if sizes is None or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in sizes):
        raise LatentError(f"{cfg_file}: block_out_channels {blocks!r} / latent_channels {channels!r} are not 1-8 "
                          "levels of 1..4096 channels (a VAE config declaring what no VAE has)")
    return cfg


def latent_shape_info(vae_path: Path | str | None) -> tuple[int, int]:
    """(channels, downsampling) of the codec without loading weights: pixel space (3, 1)."""
    if vae_path is None:
        return 3, 1
    cfg = _vae_config(vae_path)
    return int(cfg.get("latent_channels", 4)), 2 ** (len(cfg.get("block_out_channels", [0] * 4)) - 1)


class LatentCodec:
    """encode (N,3,H,W) in [-1,1] -> (N,C,H/f,W/f); decode back. Frozen, no gradients."""

    def __init__(self, vae=None, geometry_norm=None):
        self.vae = vae
        self.geometry_norm = geometry_norm  # geo_norm.GeometryNorm of the model, or None
        if vae is None:
            self.channels, self.downsample = 3, 1
            self.scaling, self.shift = 1.0, 0.0
        else:
            c = vae.config
            self.channels, self.downsample = int(c.latent_channels), 2 ** (len(c.block_out_channels) - 1)
            self.scaling = float(getattr(c, "scaling_factor", 1.0) or 1.0)
            self.shift = float(getattr(c, "shift_factor", None) or 0.0)

    @classmethod
    def from_path(cls, vae_path: Path | str | None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> "LatentCodec":
        if vae_path is None:
            return cls(None)
        _vae_config(vae_path)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(vae_path), local_files_only=True, use_safetensors=True, torch_dtype=dtype)
        vae.requires_grad_(False).eval().to(device)
        return cls(vae)

    def to(self, device) -> "LatentCodec":
        if self.vae is not None:
            self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (N,3,H,W) in [-1,1] -> latents (N,C,H/f,W/f) float32."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LatentCodec.encode: expected (N,3,H,W), got {tuple(x.shape)}")
        if self.vae is None:
            return x.float()
        if x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(f"LatentCodec.encode: size {tuple(x.shape[-2:])} not divisible by {self.downsample}")
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return ((z - self.shift) * self.scaling).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents (N,C,h,w) -> images (N,3,h·f,w·f), clamped to [-1,1]."""
        if self.vae is None:
            return z.float().clamp(-1, 1)
        x = self.vae.decode((z / self.scaling + self.shift).to(self.vae.dtype)).sample
        return x.float().clamp(-1, 1)

    def encode_geometry(self, posmap: torch.Tensor) -> torch.Tensor:
        """UV position maps (N,3,R,R) in box coordinates -> the geometry frame's latents (normalised first)."""
        return self.encode(posmap if self.geometry_norm is None else self.geometry_norm.normalize(posmap.float()))

    @torch.no_grad()
    def decode_geometry(self, z: torch.Tensor) -> torch.Tensor:
        """The geometry frame's latents -> UV position maps (N,3,R,R) in box coordinates, clamped to [-1,1]."""
        g = self.decode(z)
        return g if self.geometry_norm is None else self.geometry_norm.denormalize(g).clamp(-1, 1)

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B,F,3,H,W) -> (B,F,C,h,w)."""
        B, Fr = x.shape[:2]
        z = self.encode(x.flatten(0, 1))
        return z.reshape(B, Fr, *z.shape[1:])
