"""GeoFace dual-stream multi-view diffusion transformer (appearance frames + one geometry frame).

Frames: Fa appearance frames (reference views first — clean, mask channel 1, timestep 0 — then noisy
target views, mask 0), each input = latent (C) + mask (1) + Plücker rays (6) at latent resolution,
patchified by a p×p convolution; plus, if `geometry_stream`, one geometry frame = the noisy latent of the
canonical UV position map + a mask channel (1 = given clean geometry), with its own pg×pg patch embedding
and, instead of rays, a learned camera token added to every geometry token. Every token gets a fixed 2D
sin-cos position embedding of its frame grid and a learned frame-type embedding (appearance / geometry).
Each frame has its own timestep, applied by adaLN-Zero modulation (DiT) broadcast over the frame's tokens.
Blocks: pre-norm self-attention over the concatenated tokens of ALL frames (3D attention), then an MLP.
Each frame type is unpatchified by its own final layer; the output is ε, v, x0 or the F of edm / sample_skip
(`prediction_type`; `sigma_data` for edm and sample_skip).

Saved/loaded with diffusers' `save_pretrained` / `from_pretrained` (config.json + safetensors): the
constructor arguments are the config.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from flame_fitting.core.errors import GeofaceError

from .attention import AlignLogits, Attention, TokenLayout
from .embeddings import sincos_2d, timestep_embedding
from .geo_norm import GeometryNormMixin
from .weights import load_model_folder


@dataclass
class GeoFaceOutput:
    app: torch.Tensor  # (B, Fa, C, h, w) prediction for every appearance frame (references included)
    geo: torch.Tensor | None  # (B, C, hg, wg) prediction for the geometry frame
    align: dict[int, AlignLogits] = field(default_factory=dict)  # block index -> explicit logits


def _per_frame(x: torch.Tensor, layout: TokenLayout, fn, *cond: torch.Tensor) -> torch.Tensor:
    """Apply fn(tokens, *frame_cond) with per-frame cond (B,F,D) broadcast over each frame's tokens; x (B,N,D)."""
    B, N, D = x.shape
    Fa, La, na = layout.n_app, layout.app_len, layout.n_app * layout.app_len
    xa = fn(x[:, :na].reshape(B, Fa, La, D), *(c[:, :Fa, None] for c in cond)).reshape(B, na, D)
    if layout.geo_len == 0:
        return xa
    return torch.cat([xa, fn(x[:, na:], *(c[:, Fa : Fa + 1] for c in cond))], 1)


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


def _gate(x, gate):
    return x * gate


class GeoFaceBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero per-frame modulation."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, layout: TokenLayout, directions: tuple[str, ...] = ()):
        """x (B,N,D), c (B,F,D) per-frame condition -> (x (B,N,D), AlignLogits | None)."""
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        a, align = self.attn(_per_frame(self.norm1(x), layout, _modulate, sh1, sc1), layout, directions)
        x = x + _per_frame(a, layout, _gate, g1)
        x = x + _per_frame(self.mlp(_per_frame(self.norm2(x), layout, _modulate, sh2, sc2)), layout, _gate, g2)
        return x, align


class FinalLayer(nn.Module):
    """adaLN-modulated norm + linear to p·p·C values per token, then unpatchify."""

    def __init__(self, dim: int, patch: int, channels: int):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch * patch * channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """x (B,F,L,D), c (B,F,D) -> (B,F,C,gh·p,gw·p)."""
        shift, scale = self.ada(c)[:, :, None].chunk(2, dim=-1)
        y = self.linear(_modulate(self.norm(x), shift, scale))  # (B,F,L,p·p·C)
        B, Fr, p, C = x.shape[0], x.shape[1], self.patch, self.channels
        y = y.reshape(B, Fr, gh, gw, p, p, C).permute(0, 1, 6, 2, 4, 3, 5)
        return y.reshape(B, Fr, C, gh * p, gw * p)


class ModelConfigError(GeofaceError, ValueError):
    """A model config (a model folder's config.json) with a value no trained GeoFace model has."""


# (lowest, highest) of the sizes a config.json sets: far beyond every preset, but a folder someone sent cannot make
# loading allocate what it declares (geo_norm_resolution 200000 asked for 480 GB before any weight was read)
CONFIG_RANGES = {"latent_channels": (1, 64), "patch_size": (1, 64), "geo_patch_size": (1, 64), "width": (1, 16384),
                 "depth": (1, 256), "heads": (1, 256), "freq_dim": (2, 16384), "geo_norm_resolution": (0, 4096)}


# real numbers of a config.json: finite and in range (mlp_ratio 1e6 asked for 147 GB; a NaN geo_norm_scale or
# sigma_data made every generated map NaN); geo_norm_scale 0 = not set (an untrained model)
FLOAT_RANGES = {"mlp_ratio": (1.0, 64.0), "camera_scale": (1e-3, 1e3), "sigma_data": (1e-3, 1e3),
                "geo_norm_scale": (0.0, 1e6)}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "edm", "sample_skip")


def check_config_ranges(values: dict) -> None:
    """ModelConfigError naming the first config key whose value is not an integer in CONFIG_RANGES or a finite
    number in FLOAT_RANGES."""
    for key, v in values.items():
        if key in FLOAT_RANGES:
            lo, hi = FLOAT_RANGES[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:  # NaN fails too
                raise ModelConfigError(f"GeoFaceTransformer config: {key} {v!r} is not a number in {lo:g}..{hi:g} "
                                       "(config.json of the model folder)")
            continue
        lo, hi = CONFIG_RANGES[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ModelConfigError(f"GeoFaceTransformer config: {key} {v!r} is not an integer in {lo}..{hi} "
                                   "(config.json of the model folder)")


class GeoFaceTransformer(ModelMixin, ConfigMixin, GeometryNormMixin):
    """The dual-stream transformer; see the module docstring. Constructor arguments = saved config."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, latent_channels: int = 3, patch_size: int = 8, geo_patch_size: int = 8, width: int = 128,
                 depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0, geometry_stream: bool = True,
                 align_layers: list[int] | None = None, prediction_type: str = "epsilon",
                 camera_scale: float = 2.0, freq_dim: int = 256, sigma_data: float = 0.5,
                 geo_norm_resolution: int = 0, geo_norm_scale: float = 0.0):
        super().__init__()
        check_config_ranges({"latent_channels": latent_channels, "patch_size": patch_size,
                             "geo_patch_size": geo_patch_size, "width": width, "depth": depth, "heads": heads,
                             "freq_dim": freq_dim, "geo_norm_resolution": geo_norm_resolution, "mlp_ratio": mlp_ratio,
                             "camera_scale": camera_scale, "sigma_data": sigma_data, "geo_norm_scale": geo_norm_scale})
        if prediction_type not in PREDICTION_TYPES:
            raise ModelConfigError(f"GeoFaceTransformer config: prediction_type {prediction_type!r} is not one of "
                                   f"{list(PREDICTION_TYPES)} (config.json of the model folder)")
        if not isinstance(geometry_stream, bool):
            raise ModelConfigError(f"GeoFaceTransformer config: geometry_stream {geometry_stream!r} is not true/false "
                                   "(config.json of the model folder)")
        self._init_geometry_norm(geo_norm_resolution if geometry_stream else 0, geo_norm_scale)
        D, C = width, latent_channels
        if width % heads:
            raise ModelConfigError(f"GeoFaceTransformer config: width {width} is not divisible by heads {heads} "
                                   "(config.json of the model folder)")
        self.align_layers = [depth // 2] if align_layers is None else align_layers
        if not isinstance(self.align_layers, (list, tuple)) or len(self.align_layers) > depth or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth for i in self.align_layers):
            shown = repr(self.align_layers)
            raise ModelConfigError(f"GeoFaceTransformer config: align_layers "
                                   f"{shown if len(shown) <= 80 else shown[:77] + '...'} is not a list of at most "
                                   f"{depth} layer indices in 0..{depth - 1} (config.json of the model folder)")
        self.align_layers = list(self.align_layers)
        self.gradient_checkpointing = False
        self.t_embed = nn.Sequential(nn.Linear(freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.app_embed = nn.Conv2d(C + 7, D, patch_size, stride=patch_size)
        self.app_final = FinalLayer(D, patch_size, C)
        if geometry_stream:
            self.geo_embed = nn.Conv2d(C + 1, D, geo_patch_size, stride=geo_patch_size)
            self.camera_token = nn.Parameter(torch.zeros(D))
            self.frame_type = nn.Parameter(torch.zeros(2, D))  # 0 appearance, 1 geometry
            self.geo_final = FinalLayer(D, geo_patch_size, C)
        self.blocks = nn.ModuleList(GeoFaceBlock(D, heads, mlp_ratio) for _ in range(depth))
        self._pos_cache: dict = {}
        self._init_weights()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "GeoFaceTransformer":
        """A saved model folder, checked first (`weights.load_model_folder`: configs, safetensors header, no pickle,
        finite weights)."""
        return load_model_folder(cls, super().from_pretrained, pretrained_model_name_or_path, ModelConfigError,
                                 *args, **kwargs)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for conv in (self.app_embed, getattr(self, "geo_embed", None)):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                nn.init.zeros_(conv.bias)
        for lin in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.config.geometry_stream:
            nn.init.normal_(self.camera_token, std=0.02)
            nn.init.normal_(self.frame_type, std=0.02)
        zero = [b.ada[-1] for b in self.blocks] + [self.app_final.ada[-1], self.app_final.linear]
        if self.config.geometry_stream:
            zero += [self.geo_final.ada[-1], self.geo_final.linear]
        for lin in zero:  # adaLN-Zero: every block starts as the identity, the output as 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _pos(self, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        key = (h, w, ref.device, ref.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_2d(self.config.width, h, w).to(ref.device, ref.dtype)
        return self._pos_cache[key]

    def forward(self, app: torch.Tensor, timesteps: torch.Tensor, plucker: torch.Tensor, app_cond: torch.Tensor,
                geo: torch.Tensor | None = None, geo_cond: torch.Tensor | None = None, align: bool = False,
                directions: tuple[str, ...] = ("a2g", "g2a")) -> GeoFaceOutput:
        """app (B,Fa,C,h,w) latents; timesteps (B,F) with F = Fa (+1 geometry, last); plucker (B,Fa,6,h,w);
        app_cond (B,Fa) 1 = clean reference; geo (B,C,hg,wg) geometry latent; geo_cond (B,) 1 = clean geometry
        (default 0); align: also return the explicit app↔geo logits of `align_layers` for `directions`."""
        cfg = self.config
        B, Fa, C, h, w = app.shape
        p, pg = cfg.patch_size, cfg.geo_patch_size
        nf = Fa + int(cfg.geometry_stream)
        if C != cfg.latent_channels or h % p or w % p:
            raise ValueError(f"GeoFaceTransformer: app {tuple(app.shape)} needs {cfg.latent_channels} channels and h, w divisible by {p}")
        if plucker.shape != (B, Fa, 6, h, w) or app_cond.shape != (B, Fa) or timesteps.shape != (B, nf):
            raise ValueError(f"GeoFaceTransformer: plucker {tuple(plucker.shape)}, app_cond {tuple(app_cond.shape)}, "
                             f"timesteps {tuple(timesteps.shape)} do not match app {tuple(app.shape)} (timesteps need {nf} frames)")
        if cfg.geometry_stream != (geo is not None):
            raise ValueError(f"GeoFaceTransformer: geometry_stream={cfg.geometry_stream} but geo is {'given' if geo is not None else 'missing'}")
        cond = app_cond.to(app.dtype)[:, :, None, None, None].expand(B, Fa, 1, h, w)
        xa = self.app_embed(torch.cat([app, cond, plucker.to(app.dtype)], 2).flatten(0, 1))  # (B·Fa, D, h/p, w/p)
        xa = xa.flatten(2).transpose(1, 2) + self._pos(h // p, w // p, xa)
        tokens = [xa.reshape(B, Fa * xa.shape[1], -1)]
        geo_len = 0
        if cfg.geometry_stream:
            Bg, Cg, hg, wg = geo.shape
            if Bg != B or Cg != C or hg % pg or wg % pg:
                raise ValueError(f"GeoFaceTransformer: geo {tuple(geo.shape)} needs batch {B}, {C} channels, sides divisible by {pg}")
            gc = torch.zeros(B, device=geo.device) if geo_cond is None else geo_cond
            xg = self.geo_embed(torch.cat([geo, gc.to(geo.dtype)[:, None, None, None].expand(B, 1, hg, wg)], 1))
            xg = xg.flatten(2).transpose(1, 2) + self._pos(hg // pg, wg // pg, xg) + self.camera_token + self.frame_type[1]
            tokens[0] = tokens[0] + self.frame_type[0]
            tokens.append(xg)
            geo_len = xg.shape[1]
        layout = TokenLayout(Fa, (h // p) * (w // p), geo_len)
        x = torch.cat(tokens, 1)
        c = self.t_embed(timestep_embedding(timesteps.reshape(-1), cfg.freq_dim).to(x.dtype)).reshape(B, nf, -1)
        want = align and cfg.geometry_stream
        logits: dict[int, AlignLogits] = {}
        for i, block in enumerate(self.blocks):
            dirs = tuple(directions) if want and i in self.align_layers else ()
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, al = self._gradient_checkpointing_func(block, x, c, layout, dirs)
            else:
                x, al = block(x, c, layout, dirs)
            if al is not None:
                logits[i] = al
        na = layout.n_app * layout.app_len
        out_app = self.app_final(x[:, :na].reshape(B, Fa, layout.app_len, -1), c[:, :Fa], h // p, w // p)
        out_geo = None
        if cfg.geometry_stream:
            out_geo = self.geo_final(x[:, None, na:], c[:, Fa:], hg // pg, wg // pg)[:, 0]
        return GeoFaceOutput(app=out_app, geo=out_geo, align=logits)


def model_kwargs(cfg, latent_channels: int, latent_downsample: int) -> dict:
    """Constructor arguments of `GeoFaceTransformer` from a `GeoFaceConfig` and the latent codec's
    channels / downsampling (pixel space: 3, 1; SD VAE: 4, 8). Token patch sizes are in image pixels."""
    t, m = cfg.tokens, cfg.model
    for what, p in (("patch_size", t.patch_size), ("geo_patch_size", t.geo_patch_size)):
        if p % latent_downsample:
            raise ValueError(f"tokens.{what} = {p} is not a multiple of the latent downsampling {latent_downsample}")
    return dict(latent_channels=latent_channels, patch_size=t.patch_size // latent_downsample,
                geo_patch_size=t.geo_patch_size // latent_downsample, width=m.width, depth=m.depth, heads=m.heads,
                mlp_ratio=m.mlp_ratio, geometry_stream=m.geometry_stream, align_layers=m.resolved_align_layers(),
                prediction_type=m.prediction_type, camera_scale=m.camera_scale, sigma_data=m.sigma_data,
                geo_norm_resolution=geo_norm_resolution(cfg))


def geo_norm_resolution(cfg) -> int:
    """Side of the geometry normalisation's mean map (tokens.uv_resolution), 0 when there is none."""
    return cfg.tokens.uv_resolution if cfg.model.geometry_stream and cfg.model.geometry_norm == "dataset" else 0
