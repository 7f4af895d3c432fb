"""A tiny random-weight Stable Diffusion 2.x folder (diffusers layout) for tests and smoke runs.

Same block structure as SD 2.1 (3 CrossAttnDownBlock2D + DownBlock2D, UpBlock2D + 3 CrossAttnUpBlock2D,
16 self-attention layers, cross_attention_dim 1024, linear projection; VAE with 4 levels, 8× downsampling,
4 latent channels, scaling 0.18215), with channels 32/32/64/64 and 2/2/4/4 heads instead of
320/640/1280/1280 and 5/10/20/20. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from flame_fitting.core.fileio import replace_dir, temp_path, write_json

from .base import SD21_UNET_CONFIG, SD21_VAE_CONFIG

TINY_UNET = dict(SD21_UNET_CONFIG, sample_size=8, block_out_channels=[32, 32, 64, 64], attention_head_dim=[2, 2, 4, 4],
                 norm_num_groups=8)
TINY_VAE = dict(SD21_VAE_CONFIG, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
                sample_size=64)


def write_tiny_sd21(folder: Path | str, seed: int = 0, prediction_type: str = "epsilon", unet_overrides: dict | None = None,
                    vae_overrides: dict | None = None) -> Path:
    """Write unet/, vae/, scheduler/, model_index.json with random weights (seeded) into `folder`."""
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(TINY_UNET | (unet_overrides or {})))
    vae = AutoencoderKL(**(TINY_VAE | (vae_overrides or {})))
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(folder)
    unet.save_pretrained(str(tmp / "unet"))
    vae.save_pretrained(str(tmp / "vae"))
    sched.save_pretrained(str(tmp / "scheduler"))
    write_json(tmp / "model_index.json", {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                                          "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]})
    replace_dir(tmp, folder)
    return folder
