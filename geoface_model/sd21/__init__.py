"""Backbone `sd21_mv`: Stable Diffusion 2.x's UNet fine-tuned into GeoFace's multi-view model (docs/model.md)."""
from .base import SD21_UNET_CONFIG, SD21_VAE_CONFIG, BaseInfo, BaseModelError, check_base_folder
from .model import SD21MultiView

__all__ = ["SD21_UNET_CONFIG", "SD21_VAE_CONFIG", "BaseInfo", "BaseModelError", "SD21MultiView", "check_base_folder"]
