"""Latent codec: pixel space identity, a tiny local AutoencoderKL, refusal of hub ids; VAE-space training."""
import math

import pytest
import torch
from diffusers import AutoencoderKL

from geoface_model.config import GeoFaceConfig
from geoface_model.latents import LatentCodec, LatentError, latent_shape_info
from geoface_model.model import GeoFaceTransformer
from geoface_model.synthetic import make_synthetic_shard
from geoface_model.train import train


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.5)
    d = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(d)
    return d


def test_pixel_space_is_identity():
    c = LatentCodec.from_path(None)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert (c.channels, c.downsample) == (3, 1) == latent_shape_info(None)
    assert torch.equal(c.encode(x), x) and torch.equal(c.decode(c.encode(x)), x)


def test_tiny_vae_encode_decode(vae_dir):
    c = LatentCodec.from_path(vae_dir)
    assert (c.channels, c.downsample) == (4, 2) == latent_shape_info(vae_dir)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = c.encode(x)
    assert z.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z, c.vae.encode(x).latent_dist.mean * 0.5)  # deterministic mean × scaling
    y = c.decode(z)
    assert y.shape == (2, 3, 16, 16) and y.abs().max() <= 1
    torch.testing.assert_close(y, c.vae.decode(z / 0.5).sample.clamp(-1, 1))
    assert c.encode_frames(x.reshape(1, 2, 3, 16, 16)).shape == (1, 2, 4, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        c.encode(torch.zeros(1, 3, 15, 15))


def test_refuses_hub_ids_and_incomplete_folders(tmp_path):
    with pytest.raises(LatentError, match="not a local folder"):
        LatentCodec.from_path("stabilityai/sd-vae-ft-mse")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentError, match="config.json"):
        latent_shape_info(tmp_path / "empty")


def test_training_in_vae_latent_space(vae_dir, tmp_path):
    """tokens.patch_size 8 = VAE ×2 · latent patch 4: 4×4 tokens per view, latent 4 channels."""
    make_synthetic_shard(tmp_path / "ds" / "a.safetensors", n_samples=2, n_views=3, resolution=32, uv_resolution=32, seed=0)
    cfg = GeoFaceConfig.from_sections(
        tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
        model=dict(vae_path=str(vae_dir), width=32, depth=2, heads=2),
        train=dict(steps=2, batch_size=2, n_ref=1, n_tgt=2, checkpoint_every=2, warmup_steps=0, lr=1e-3))
    m = train(cfg, tmp_path / "ds", tmp_path / "run", progress=False)
    assert m["completed"] and m["steps"] == 2 and math.isfinite(m["loss_last"])
    model = GeoFaceTransformer.from_pretrained(tmp_path / "run" / "model")
    assert (model.config.latent_channels, model.config.patch_size, model.config.geo_patch_size) == (4, 4, 4)
