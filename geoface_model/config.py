"""Typed configs of the GeoFace model, its losses and its training, and their validation.

Four sections, each a dataclass with one line of documentation per field (`flame_fitting.core.params.spec`),
so a stage builds them from params.yaml with `GeoFaceConfig.from_sections(...)` and gets unknown keys,
wrong types and out-of-range values refused before any work starts:

- `TokensConfig`  the token grids shared with the `correspondences` and `dataset` stages (pixel units);
- `ModelConfig`   the dual-stream transformer (latent space, width, depth, ablation switch `geometry_stream`);
- `LossConfig`    diffusion + geometry-guided attention alignment loss (ablation switch `align_weight`);
- `TrainConfig`   optimiser, schedule, EMA, checkpoints, views per sample.

The presets `tiny()` (= these defaults), `paper()` and `paper_sd21()`, and the parameter count and memory estimate
of a config: presets.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from flame_fitting.core.params import ParamsError, build_config, spec

DIRECTIONS = ("a2g", "g2a")


@dataclass
class TokensConfig:
    resolution: int = spec(64, "side S of the square training views in pixels", lo=8)
    patch_size: int = spec(8, "image pixels per appearance token side (VAE downsampling × latent patch)", lo=1)
    uv_resolution: int = spec(64, "side R of the canonical UV position map in texels", lo=8)
    geo_patch_size: int = spec(8, "UV texels per geometry token side (VAE downsampling × latent patch)", lo=1)

    @property
    def app_tokens(self) -> int:  # appearance tokens per side of one view
        return self.resolution // self.patch_size

    @property
    def geo_tokens(self) -> int:  # geometry tokens per side of the UV frame
        return self.uv_resolution // self.geo_patch_size

    def validate(self) -> None:
        for what, size, p in (("resolution", self.resolution, self.patch_size), ("uv_resolution", self.uv_resolution, self.geo_patch_size)):
            if size % p:
                raise ParamsError(f"tokens.{what} = {size} is not divisible by its patch size {p}")


@dataclass
class ModelConfig:
    vae_path: str | None = spec(None, "local folder of a diffusers AutoencoderKL (never a hub id); null = pixel space")
    width: int = spec(192, "transformer width D (token channels; ≥ the values per patch, 3·8² = 192 for the tiny "
                           "pixel-space model, else a warning: train_run.config_warnings)", lo=8)
    depth: int = spec(6, "number of transformer blocks", lo=1)
    heads: int = spec(4, "attention heads per block (width must be divisible by heads)", lo=1)
    mlp_ratio: float = spec(4.0, "MLP hidden width / width", lo=1.0)
    geometry_stream: bool = spec(True, "add the geometry frame (noisy canonical UV position map); false = appearance-only ablation")
    align_layers: list[int] | None = spec(None, "blocks whose app↔geo attention is supervised; null = the middle block depth // 2", lo=0)
    prediction_type: str = spec("sample_skip", "what the network predicts: ε, v, x0 (sample), edm = EDM-preconditioned "
                                           "x̂0 = c_skip·x_t + c_out·F (noise_schedule.edm_coefficients), or "
                                           "sample_skip = x0 mixed with the noisy input at low noise, trained with "
                                           "the x0 loss (noise_schedule.skip_coefficients)",
                                choices=["epsilon", "v_prediction", "sample", "edm", "sample_skip"])
    sigma_data: float = spec(0.03, "edm: the data's standard deviation σd in the preconditioning (EDM's own: 0.5); "
                                   "sample_skip: the noise level σ at which input and network count equally", lo=1e-3)
    camera_scale: float = spec(2.0, "SEVA normalisation: distance of the reference camera to the views' centroid", lo=1e-3)
    gradient_checkpointing: bool = spec(False, "recompute block activations in the backward pass (saves memory)")
    geometry_norm: str = spec("dataset", "how the geometry frame is diffused: dataset = (map − training mean map) / scale, "
                                         "residuals filling [-1, 1] (geo_norm.py); none = the maps' box coordinates as they are",
                              choices=["dataset", "none"])
    # --- backbone sd21_mv (geoface_model/sd21): Stable Diffusion 2.x UNet as the multi-view model
    backbone: str = spec("dit", "dit: the transformer trained from scratch; sd21_mv: fine-tune a local Stable Diffusion 2.x "
                                "UNet (model.base_path; width/depth/heads/vae_path then unused)", choices=["dit", "sd21_mv"])
    base_path: str | None = spec(None, "sd21_mv: local Stable Diffusion 2.1 folder in diffusers layout (unet/, vae/, "
                                       "scheduler/); hub ids are refused, nothing is downloaded")
    align_head: str = spec("mean", "sd21_mv: per-head logits of the supervised layer -> one logit: mean (head average) or "
                                   "mlp (CAMEO's per-view MLP logit head, mlp_ratio 4, depth 1)", choices=["mean", "mlp"])
    qk_norm: bool = spec(False, "sd21_mv: LayerNorm on the queries and keys of every self-attention (CAMEO: on)")

    def resolved_align_layers(self) -> list[int]:
        if self.backbone == "sd21_mv":  # self-attention layers 0..15, down → mid → up; CAMEO's layer 10
            return [10] if self.align_layers is None else list(self.align_layers)
        return [self.depth // 2] if self.align_layers is None else list(self.align_layers)

    def validate(self) -> None:
        if self.backbone == "sd21_mv":
            return _validate_sd21(self)
        if self.align_head != "mean" or self.qk_norm:
            raise ParamsError("model.align_head = mlp and model.qk_norm are implemented for model.backbone sd21_mv only")
        if self.width % self.heads:
            raise ParamsError(f"model.width = {self.width} is not divisible by model.heads = {self.heads}")
        if self.width % 4:
            raise ParamsError(f"model.width = {self.width} must be divisible by 4 (2D sin-cos position embedding)")
        bad = [i for i in self.resolved_align_layers() if not 0 <= i < self.depth]
        if bad:
            raise ParamsError(f"model.align_layers {bad} outside the blocks 0..{self.depth - 1}")


@dataclass
class LossConfig:
    align_weight: float = spec(0.02, "weight of the attention alignment loss (CAMEO: 0.02); 0 = ablation, logits not computed", lo=0.0)
    align_directions: list[str] = spec(["a2g", "g2a"], "supervised directions: a2g (app query → geo keys), g2a (geo query → app keys of one view)", choices=None)
    align_on_reference: bool = spec(True, "also supervise the reference view(s) (else target views only)")
    geo_loss_weight: float = spec(1.0, "weight of the geometry frame in the diffusion loss, relative to one target view", lo=0.0)

    def validate(self) -> None:
        bad = [d for d in self.align_directions if d not in DIRECTIONS]
        if bad or len(set(self.align_directions)) != len(self.align_directions):
            raise ParamsError(f"loss.align_directions = {self.align_directions}: each of {list(DIRECTIONS)} at most once")


@dataclass
class TrainConfig:
    seed: int = spec(0, "seed of weights, data order, view choice and noise")
    steps: int = spec(300, "optimizer steps of the full run (sets the lr schedule)", lo=1)
    batch_size: int = spec(4, "samples per process per micro-batch", lo=1)
    grad_accum: int = spec(1, "micro-batches per optimizer step", lo=1)
    lr: float = spec(3e-4, "AdamW peak learning rate", lo=0.0)
    weight_decay: float = spec(0.0, "AdamW weight decay", lo=0.0)
    warmup_steps: int = spec(20, "linear learning-rate warm-up steps", lo=0)
    lr_schedule: str = spec("constant", "after warm-up", choices=["constant", "cosine"])
    max_grad_norm: float = spec(1.0, "gradient clipping norm (0 = off)", lo=0.0)
    mixed_precision: str = spec("bf16", "autocast on GPU; always 'no' on CPU", choices=["no", "bf16", "fp16"])
    ema_decay: float = spec(0.999, "EMA decay (diffusers EMAModel, with its (1+n)/(10+n) warm-up)", lo=0.0, hi=1.0)
    checkpoint_every: int = spec(100, "optimizer steps between checkpoints", lo=1)
    keep_checkpoints: int = spec(3, "most recent checkpoints kept (older ones deleted)", lo=2)
    keep_states: int = spec(3, "train stage: resumable runs (models/train_state/<run id>/) kept, the most recently "
                               "used ones; older runs are deleted. Not part of the run id", lo=1)
    log_every: int = spec(1, "optimizer steps between loss-curve rows (and a row at the last step); ≥ steps: one "
                              "row, a warning", lo=1)
    num_workers: int = spec(0, "DataLoader worker processes", lo=0)
    n_ref: int = spec(1, "clean reference views per sample", lo=1)
    n_tgt: int = spec(3, "noisy target views per sample", lo=1)
    num_train_timesteps: int = spec(1000, "DDPM noise levels", lo=2)
    beta_schedule: str = spec("squaredcos_cap_v2", "DDPM beta schedule", choices=["linear", "scaled_linear", "squaredcos_cap_v2"])
    zero_terminal_snr: bool = spec(True, "rescale the betas so that ᾱ_T = 0 (pure noise at the last step; needs "
                                         "model.prediction_type v_prediction, sample, sample_skip or edm; "
                                         "geoface_model/noise_schedule.py)")
    snr_shift: float = spec(1.0, "divide the schedule's SNR at every t by this (> 1 = noisier; CAMEO: 4 at 512²)", lo=1e-3)
    cond_dropout: float = spec(0.0, "probability that a micro-batch is trained without its reference frames (the "
                                    "unconditional branch of classifier-free guidance, eval.guidance_scale > 1); CAMEO: 0.1",
                               lo=0.0, hi=1.0)
    grad_norm_every: int = spec(10, "optimizer steps between measurements of the diffusion and alignment losses' "
                                    "separate gradient norms (metrics/train.json, loss.csv)", lo=1)
    independent_frame_noise: bool = spec(False, "draw a noise level per generated frame (else one per sample, as at inference)")


@dataclass
class GeoFaceConfig:
    tokens: TokensConfig = field(default_factory=TokensConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        for part in (self.tokens, self.model, self.loss):
            part.validate()
        if self.train.zero_terminal_snr and self.model.prediction_type == "epsilon":
            raise ParamsError("train.zero_terminal_snr needs model.prediction_type v_prediction, sample, sample_skip or edm: at ᾱ_T = 0 "
                              "an ε prediction says nothing about the image (set train.zero_terminal_snr false for ε)")
        if self.model.backbone == "sd21_mv":
            _validate_sd21_tokens(self)

    @classmethod
    def from_sections(cls, tokens: dict | None = None, model: dict | None = None, loss: dict | None = None,
                      train: dict | None = None, where: str = "params.yaml") -> "GeoFaceConfig":
        """Build and validate from plain dicts (params.yaml sections); unknown keys are refused."""
        cfg = cls(
            tokens=build_config(TokensConfig, tokens or {}, f"{where}:tokens"),
            model=build_config(ModelConfig, model or {}, f"{where}:model"),
            loss=build_config(LossConfig, loss or {}, f"{where}:loss"),
            train=build_config(TrainConfig, train or {}, f"{where}:train"),
        )
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections: dict) -> "GeoFaceConfig":
        """A copy with some fields changed, e.g. `cfg.replace(loss={"align_weight": 0.0})`."""
        d = self.to_dict()
        for name, values in sections.items():
            d[name].update(values)
        return GeoFaceConfig.from_sections(**d, where="replace()")


SD21_LAYER_STRIDE = [1, 1, 2, 2, 4, 4, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1]  # latent stride of SD 2.x self-attention layer i
SD21_VAE_DOWNSAMPLE = 8


def _validate_sd21(m: ModelConfig) -> None:
    if not m.base_path:
        raise ParamsError("model.base_path is not set: model.backbone sd21_mv needs a local Stable Diffusion 2.1 folder")
    if m.vae_path is not None:
        raise ParamsError("model.vae_path must be null with model.backbone sd21_mv (the VAE is base_path/vae)")
    bad = [i for i in m.resolved_align_layers() if not 0 <= i < len(SD21_LAYER_STRIDE)]
    if bad:
        raise ParamsError(f"model.align_layers {bad} outside the 16 self-attention layers 0..15 of SD 2.x")


def _validate_sd21_tokens(cfg: GeoFaceConfig) -> None:
    """The alignment token grid is the supervised layer's grid; the geometry frame has the views' latent size."""
    t, layers = cfg.tokens, cfg.model.resolved_align_layers()
    px = {SD21_LAYER_STRIDE[i] * SD21_VAE_DOWNSAMPLE for i in layers}
    if len(px) != 1:
        raise ParamsError(f"model.align_layers {layers}: layers with different token grids ({sorted(px)} px)")
    p = px.pop()
    if t.patch_size != p or t.geo_patch_size != p:
        raise ParamsError(f"tokens.patch_size / geo_patch_size = {t.patch_size} / {t.geo_patch_size}: self-attention "
                          f"layer(s) {layers} of SD 2.x see {p}×{p}-pixel tokens, set both to {p}")
    if t.uv_resolution != t.resolution or t.resolution % (SD21_VAE_DOWNSAMPLE * 8):
        raise ParamsError(f"tokens.uv_resolution = {t.uv_resolution} and tokens.resolution = {t.resolution}: backbone "
                          "sd21_mv needs them equal (the geometry frame is one more frame) and divisible by 64")
