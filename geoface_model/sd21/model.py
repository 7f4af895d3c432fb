"""`SD21MultiView`: Stable Diffusion 2.x's UNet as GeoFace's dual-stream multi-view model (backbone `sd21_mv`).

Same interface as `GeoFaceTransformer` (geoface_model/model.py), so training (`diffusion.training_losses`) and
`GeoFacePipeline` use either unchanged:

    forward(app (B,Fa,C,h,w), timesteps (B,F), plucker (B,Fa,6,h,w), app_cond (B,Fa), geo (B,C,h,w) | None,
            geo_cond (B,) | None, align, directions) -> GeoFaceOutput(app, geo, align={layer: AlignLogits})

Frames: appearance views (references first: mask 1, timestep 0) then, with the geometry stream, one frame
holding the VAE latent of the canonical UV position map (encoded like an image, same latent size as the views:
the paper repurposes the last generation frame). Every frame's input is latent (4) + mask (1) + 6 channels:
the Plücker rays for a view, a learned 6-vector broadcast over the frame (`geo_camera`, the geometry stream's
camera embedding) for the geometry frame. conv_in is widened with zero kernels for those 7 channels, text
cross-attention is removed, every self-attention attends over all frames of the sample (`attention.py`),
optional QK-norm. Each frame gets its own timestep through the UNet's time embedding (batch of B·F frames).

Alignment: self-attention layer(s) `align_layers` (indices 0..15, down → mid → up; default 10) return the
explicit app↔geo logits, through `align_head` "mean" (head average) or "mlp" (CAMEO's HeadMlp_Softmax head,
whose weights are trained with the model); every other layer stays fused (SDPA).

Saving: `save_pretrained` stores the whole fine-tuned model (config.json = the constructor arguments, which
include the base UNet's config; model.safetensors). Fine-tuning changes every UNet weight, so "only the changed
weights" would be all of them; a saved model therefore loads without the base folder.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from flame_fitting.core.json_files import read_json_object

from ..attention import TokenLayout
from ..geo_norm import GeometryNormMixin
from ..model import GeoFaceOutput
from ..weights import MAX_CONFIG_BYTES, load_model_folder
from .attention import AlignRequest, LogitHead
from .base import BaseInfo, BaseModelError, check_unet_config, load_base_unet
from .surgery import (add_qk_norm, install_processors, latent_stride, remove_text_cross_attention,
                      self_attention_names, widen_conv_in)

EXTRA_CHANNELS = 7  # mask + 6 Plücker
DEFAULT_ALIGN_LAYER = 10


class SD21MultiView(ModelMixin, ConfigMixin, GeometryNormMixin):
    """See the module docstring. Constructor arguments = saved config."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict, geometry_stream: bool = True, align_layers: list[int] | None = None,
                 align_head: str = "mean", align_head_mlp_ratio: float = 4.0, qk_norm: bool = False,
                 prediction_type: str = "epsilon", camera_scale: float = 2.0, latent_channels: int = 4,
                 patch_size: int | None = None, geo_patch_size: int | None = None, base_model: str = "",
                 align_head_chunk: int = 256, geo_norm_resolution: int = 0, geo_norm_scale: float = 0.0,
                 sigma_data: float = 0.5):
        super().__init__()
        self._init_geometry_norm(geo_norm_resolution if geometry_stream else 0, geo_norm_scale)
        check_unet_config({"_class_name": "UNet2DConditionModel", **unet_config}, "unet_config")
        self.unet = UNet2DConditionModel(**{k: v for k, v in unet_config.items() if not k.startswith("_")})
        self.attn_names = self_attention_names(self.unet)
        layers = [DEFAULT_ALIGN_LAYER] if align_layers is None else list(align_layers)
        if any(not 0 <= i < len(self.attn_names) for i in layers):
            raise ValueError(f"SD21MultiView: align_layers {layers} outside the self-attention layers "
                             f"0..{len(self.attn_names) - 1}")
        n_levels = len(unet_config["block_out_channels"])
        strides = {latent_stride(self.attn_names[i], n_levels) for i in layers}
        if len(strides) != 1:
            raise ValueError(f"SD21MultiView: align_layers {layers} have token grids of different strides {sorted(strides)}")
        stride = strides.pop()
        for what, p in (("patch_size", patch_size), ("geo_patch_size", geo_patch_size)):
            if p not in (None, stride):
                raise ValueError(f"SD21MultiView: {what} {p} != the latent stride {stride} of align layer(s) {layers}")
        self.register_to_config(patch_size=stride, geo_patch_size=stride, align_layers=layers)
        self.align_layers = layers
        self.latent_multiple = 2 ** (n_levels - 1)  # latent sides must be divisible by this
        remove_text_cross_attention(self.unet)
        widen_conv_in(self.unet, EXTRA_CHANNELS)
        if qk_norm:
            add_qk_norm(self.unet, self.attn_names)
        self.procs = install_processors(self.unet, self.attn_names)
        heads = self.unet.get_submodule(self.attn_names[layers[0]]).heads
        self.logit_head = LogitHead(heads, align_head, align_head_mlp_ratio, align_head_chunk)
        if geometry_stream:
            self.geo_camera = nn.Parameter(torch.randn(6) * 0.5)

    @classmethod
    def from_base(cls, info: BaseInfo, *, dtype: torch.dtype | None = None, **kwargs) -> "SD21MultiView":
        """The model with the base UNet's weights, from a checked folder (`check_base_folder`)."""
        unet = load_base_unet(info, dtype)
        model = cls(unet_config=dict(info.unet_config), base_model=str(info.path), **kwargs)
        missing, unexpected = model.unet.load_state_dict(_surgery_compatible(unet, model.unet), strict=False)
        allowed = {"conv_in.weight"} | {k for k in model.unet.state_dict() if ".norm_q." in k or ".norm_k." in k}
        if set(missing) - allowed or unexpected:
            raise BaseModelError(f"{info.path / 'unet'}: weights do not fit the multi-view UNet (missing "
                                 f"{sorted(set(missing) - allowed)[:3]}, unexpected {sorted(unexpected)[:3]})")
        if dtype is not None:
            model.to(dtype)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a saved SD21MultiView (local folder; a checkpoint of another backbone is refused first)."""
        path = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        check_saved_backbone(path, cls.__name__, "sd21_mv")
        return load_model_folder(cls, super().from_pretrained, pretrained_model_name_or_path, BaseModelError,
                                 *args, **kwargs)

    def forward(self, app: torch.Tensor, timesteps: torch.Tensor, plucker: torch.Tensor, app_cond: torch.Tensor,
                geo: torch.Tensor | None = None, geo_cond: torch.Tensor | None = None, align: bool = False,
                directions: tuple[str, ...] = ("a2g", "g2a")) -> GeoFaceOutput:
        cfg = self.config
        B, Fa, C, h, w = app.shape
        nf = Fa + int(cfg.geometry_stream)
        m = self.latent_multiple
        if C != cfg.latent_channels or h % m or w % m:
            raise ValueError(f"SD21MultiView: app {tuple(app.shape)} needs {cfg.latent_channels} channels and latent "
                             f"sides divisible by {m}")
        if plucker.shape != (B, Fa, 6, h, w) or app_cond.shape != (B, Fa) or timesteps.shape != (B, nf):
            raise ValueError(f"SD21MultiView: plucker {tuple(plucker.shape)}, app_cond {tuple(app_cond.shape)}, "
                             f"timesteps {tuple(timesteps.shape)} do not match app {tuple(app.shape)} ({nf} frames)")
        if cfg.geometry_stream != (geo is not None):
            raise ValueError(f"SD21MultiView: geometry_stream={cfg.geometry_stream} but geo is "
                             f"{'given' if geo is not None else 'missing'}")
        dt = self.unet.conv_in.weight.dtype
        mask = app_cond.to(dt)[:, :, None, None, None].expand(B, Fa, 1, h, w)
        frames = [torch.cat([app.to(dt), mask, plucker.to(dt)], 2)]
        if cfg.geometry_stream:
            if geo.shape != (B, C, h, w):
                raise ValueError(f"SD21MultiView: geo {tuple(geo.shape)} must be the views' latent size {(B, C, h, w)} "
                                 "(tokens.uv_resolution = tokens.resolution)")
            gc = torch.zeros(B, device=geo.device) if geo_cond is None else geo_cond
            xg = torch.cat([geo.to(dt), gc.to(dt)[:, None, None, None].expand(B, 1, h, w),
                            self.geo_camera.to(dt)[None, :, None, None].expand(B, 6, h, w)], 1)
            frames.append(xg[:, None])
        x = torch.cat(frames, 1).flatten(0, 1)  # (B·F, 4+7, h, w)
        s = cfg.patch_size
        layout = TokenLayout(Fa, (h // s) * (w // s), (h // s) * (w // s) if cfg.geometry_stream else 0)
        dirs = tuple(directions) if align and cfg.geometry_stream else ()
        reqs = {}
        for i, name in enumerate(self.attn_names):  # a request stays until the next forward: gradient
            req = AlignRequest(layout, dirs, self.logit_head) if dirs and i in self.align_layers else None
            self.procs[name].request = req  # checkpointing recomputes the layer (logits included) in backward
            if req is not None:
                reqs[i] = req
        out = self.unet(x, timesteps.reshape(-1), encoder_hidden_states=None,
                        cross_attention_kwargs={"mv_frames": nf}).sample.reshape(B, nf, C, h, w)
        logits = {}
        for i, req in reqs.items():
            logits[i], req.result, req.taken = req.result, None, True
        return GeoFaceOutput(app=out[:, :Fa], geo=out[:, Fa] if cfg.geometry_stream else None, align=logits)


def _surgery_compatible(unet: nn.Module, target: nn.Module) -> dict:
    """The base UNet's state dict with conv_in widened (zero kernels) and the removed attn2/norm2 dropped."""
    sd = {k: v for k, v in unet.state_dict().items() if not _removed(k)}
    w = sd.pop("conv_in.weight")
    new = torch.zeros_like(target.conv_in.weight, dtype=w.dtype)
    new[:, : w.shape[1]] = w
    sd["conv_in.weight"] = new
    return sd


def _removed(key: str) -> bool:
    """A weight of a deleted cross-attention (attn2) or its norm (norm2) inside a transformer block."""
    return ".transformer_blocks." in key and (".attn2." in key or ".norm2." in key)


def check_saved_backbone(path: Path, class_name: str, backbone: str) -> None:
    """Refuse a saved model folder whose config.json names another class (a checkpoint of another backbone)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise BaseModelError(f"{file}: missing (not a saved {class_name} folder)")
    name = read_json_object(file, BaseModelError, MAX_CONFIG_BYTES, "model's config").get("_class_name")
    if name != class_name:
        raise BaseModelError(f"{file}: _class_name is {name!r}, model.backbone {backbone!r} needs {class_name!r} "
                             "(a checkpoint trained with another backbone)")
