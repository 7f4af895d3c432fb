"""Which network a `GeoFaceConfig` trains and loads: `model.backbone` dit (`model.GeoFaceTransformer`) or sd21_mv
(`sd21.SD21MultiView`, a local Stable Diffusion 2.x UNet made multi-view). Both share one interface
(`forward(...) -> GeoFaceOutput`), so training and the pipeline only ask this module for the model and the VAE.

Everything here refuses bad input before a model is built: the sd21_mv base folder is checked from its JSON
files (`sd21.check_base_folder`), and a saved model or a run's checkpoints written with the other backbone are
refused naming the file and the field.
"""
from __future__ import annotations

from pathlib import Path

from flame_fitting.core.json_files import read_json_object

from .config import GeoFaceConfig
from .model import GeoFaceTransformer, geo_norm_resolution, model_kwargs
from .sd21 import BaseModelError, SD21MultiView, check_base_folder
from .sd21.model import check_saved_backbone
from .weights import MAX_CONFIG_BYTES

CLASSES = {"dit": GeoFaceTransformer, "sd21_mv": SD21MultiView}


def vae_path_of(cfg: GeoFaceConfig) -> str | None:
    """The latent codec's folder: model.vae_path (dit) or base_path/vae (sd21_mv, base folder checked first)."""
    if cfg.model.backbone == "sd21_mv":
        return str(check_base_folder(cfg.model.base_path).path / "vae")
    return cfg.model.vae_path


def sd21_kwargs(cfg: GeoFaceConfig) -> dict:
    m = cfg.model
    return dict(geometry_stream=m.geometry_stream, align_layers=m.resolved_align_layers(), align_head=m.align_head,
                qk_norm=m.qk_norm, prediction_type=m.prediction_type, camera_scale=m.camera_scale,
                sigma_data=m.sigma_data, geo_norm_resolution=geo_norm_resolution(cfg))


def build_model(cfg: GeoFaceConfig, latent_channels: int, latent_downsample: int):
    """A fresh model for training: the DiT from scratch, or SD21MultiView from the base UNet's weights."""
    if cfg.model.backbone == "sd21_mv":
        if (latent_channels, latent_downsample) != (4, 8):
            raise BaseModelError(f"model.base_path: the VAE gives {latent_channels} channels / {latent_downsample}× "
                                 "downsampling, Stable Diffusion 2.x needs 4 / 8")
        return SD21MultiView.from_base(check_base_folder(cfg.model.base_path), **sd21_kwargs(cfg))
    return GeoFaceTransformer(**model_kwargs(cfg, latent_channels, latent_downsample))


def load_trained(path: str | Path, cfg: GeoFaceConfig):
    """A trained model folder (config.json + weights) of the config's backbone; another backbone's is refused."""
    backbone = cfg.model.backbone
    cls = CLASSES[backbone]
    check_saved_backbone(Path(path), cls.__name__, backbone)
    return cls.from_pretrained(str(path))


def check_run_backbone(saved_config: Path, cfg: GeoFaceConfig) -> None:
    """Refuse resuming a run whose geoface_config.json was written with another model.backbone."""
    try:
        old = read_json_object(saved_config, ValueError, MAX_CONFIG_BYTES).get("model", {}).get("backbone", "dit")
    except (ValueError, AttributeError):
        return  # an unreadable file is the caller's (train_checkpoint.check_run_dir) to judge
    if old != cfg.model.backbone:
        raise BaseModelError(f"{saved_config}: model.backbone is {old!r}, the config asks {cfg.model.backbone!r}; "
                             "checkpoints trained with another backbone are never loaded (use a fresh out_dir)")
