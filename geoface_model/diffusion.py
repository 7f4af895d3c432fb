"""One GeoFace training step in plain view: encode, noise, predict, losses — and the attention report.

`prepare_inputs` turns a collated batch (data.collate) into the model's inputs and its regression
targets: views and UV map are encoded by the latent codec; the n_ref reference frames stay clean
(mask 1, timestep 0); target frames and the geometry frame get DDPM noise at one timestep per sample
(or per frame with `train.independent_frame_noise`); Plücker rays are computed at latent resolution
relative to the first reference view. `training_losses` adds the alignment loss when it is switched on
(geometry stream present, align_weight > 0, at least one direction) — otherwise the explicit logits are
not even computed.
"""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from .config import GeoFaceConfig
from .embeddings import plucker_rays
from .latents import LatentCodec
from .losses import alignment_loss, attention_mass, diffusion_loss
from .noise_schedule import PRECONDITIONED, preconditioning, train_schedule


def scheduler_prediction_type(prediction_type: str) -> str:
    """What diffusers' schedulers are told: a preconditioned model (edm, sample_skip) is converted to x0 before
    each step."""
    return "sample" if prediction_type in PRECONDITIONED else prediction_type


def make_noise_scheduler(cfg: GeoFaceConfig) -> DDPMScheduler:
    """The training noise schedule (noise_schedule.py) with the model's prediction type."""
    return DDPMScheduler(**train_schedule(cfg.train), prediction_type=scheduler_prediction_type(cfg.model.prediction_type))


def align_enabled(cfg: GeoFaceConfig) -> bool:
    return cfg.model.geometry_stream and cfg.loss.align_weight > 0 and len(cfg.loss.align_directions) > 0


def align_targets(batch: dict, cfg: GeoFaceConfig, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sparse targets of the enabled directions, restricted to target views unless align_on_reference."""
    out = {}
    for name in cfg.loss.align_directions:
        idx, w = batch[f"{name}_index"].to(device), batch[f"{name}_weight"].to(device)
        if not cfg.loss.align_on_reference:
            keep = idx[:, 1] >= batch["n_ref"]
            idx, w = idx[keep], w[keep]
        out[name] = (idx, w)
    return out


def prepare_inputs(batch: dict, codec: LatentCodec, scheduler: DDPMScheduler, cfg: GeoFaceConfig,
                   generator: torch.Generator, device, timestep: int | None = None
                   ) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """-> (model keyword arguments, target for the target frames (B,Ft,C,h,w), target geo (B,C,hg,wg) | None).
    `timestep`: every generated frame at this noise level instead of a random one (evaluation per noise band)."""
    images = batch["images"].to(device)
    B, V, _, H, W = images.shape
    n_ref = batch["n_ref"]
    if not 1 <= n_ref < V:
        raise ValueError(f"prepare_inputs: n_ref = {n_ref} with {V} views leaves no target view")
    x0 = codec.encode_frames(images)  # (B,V,C,h,w)
    h, w = x0.shape[-2:]
    plucker = plucker_rays(batch["K"].to(device), batch["world_to_cam"].to(device), (W, H), (h, w),
                           ref=0, camera_scale=cfg.model.camera_scale)
    geo_on = cfg.model.geometry_stream
    n_gen = V - n_ref + int(geo_on)
    T = scheduler.config.num_train_timesteps
    shape = (B, n_gen) if cfg.train.independent_frame_noise else (B, 1)
    t = torch.randint(0, T, shape, generator=generator, device=generator.device).to(device).expand(B, n_gen)
    if timestep is not None:
        if not 0 <= timestep < T:
            raise ValueError(f"prepare_inputs: timestep {timestep} outside [0, {T})")
        t = torch.full_like(t, int(timestep))
    x0_t = x0[:, n_ref:]
    noise = torch.randn(x0_t.shape, generator=generator, device=generator.device).to(device)
    tt = t[:, : V - n_ref].reshape(-1)
    flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
    noisy = scheduler.add_noise(flat(x0_t), flat(noise), tt).reshape(x0_t.shape)
    target = _target(cfg.model.prediction_type, scheduler, flat(x0_t), flat(noise), tt,
                     cfg.model.sigma_data).reshape(x0_t.shape)
    kwargs = dict(app=torch.cat([x0[:, :n_ref], noisy], 1),
                  timesteps=torch.cat([torch.zeros(B, n_ref, dtype=t.dtype, device=device), t], 1),
                  plucker=plucker,
                  app_cond=torch.cat([torch.ones(B, n_ref, device=device), torch.zeros(B, V - n_ref, device=device)], 1))
    target_geo = None
    if geo_on:
        g0 = codec.encode_geometry(batch["uv_posmap"].to(device))
        g_noise = torch.randn(g0.shape, generator=generator, device=generator.device).to(device)
        tg = t[:, -1]
        kwargs["geo"] = scheduler.add_noise(g0, g_noise, tg)
        target_geo = _target(cfg.model.prediction_type, scheduler, g0, g_noise, tg, cfg.model.sigma_data)
    return kwargs, target, target_geo


def _target(prediction_type: str, scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
            t: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """What the network is trained to output: ε ("epsilon"), v ("v_prediction"), x0 ("sample"), the EDM
    target F = (x0 − c_skip·x_t)/c_out ("edm"), or for "sample_skip" x0, compared with the network's output
    after `precondition` mixed it with x_t (the loss is in x0 space)."""
    if prediction_type == "edm":
        ab = scheduler.alphas_cumprod.to(x0.device)[t].reshape(-1, *([1] * (x0.dim() - 1)))
        c_skip, c_out = preconditioning(prediction_type, ab, sigma_data)
        x_t = ab.double().sqrt() * x0.double() + (1 - ab.double()).sqrt() * noise.double()
        return ((x0.double() - c_skip * x_t) / c_out).float()
    if prediction_type == "epsilon":
        return noise
    if prediction_type in ("sample", "sample_skip"):
        return x0
    return scheduler.get_velocity(x0, noise, t)


def precondition(prediction_type: str, alpha_bar: torch.Tensor, x_t: torch.Tensor, out: torch.Tensor,
                 sigma_data: float) -> torch.Tensor:
    """x̂0 = c_skip·x_t + c_out·out of a preconditioned prediction type (`edm`, `sample_skip`); alpha_bar
    broadcastable to x_t. Coefficients in float64, the mix in float32 at least (float64 inputs stay float64),
    returned in out's dtype (the gradient flows through `out`)."""
    c_skip, c_out = preconditioning(prediction_type, alpha_bar, sigma_data)
    dt = torch.promote_types(torch.promote_types(x_t.dtype, out.dtype), torch.float32)
    return (c_skip.to(dt) * x_t.to(dt) + c_out.to(dt) * out.to(dt)).to(out.dtype)


def training_losses(model, batch: dict, codec: LatentCodec, scheduler: DDPMScheduler, cfg: GeoFaceConfig,
                    generator: torch.Generator, device) -> dict[str, torch.Tensor]:
    """{"loss", "diffusion_loss", "align_loss"} (scalars; align_loss is 0 when the loss is switched off), and the
    two terms of "loss" with their graphs ("diffusion_term", "align_term" = align_weight · align_loss, or None)
    for measuring each one's gradient norm."""
    kwargs, target, target_geo = prepare_inputs(batch, codec, scheduler, cfg, generator, device)
    n_ref = batch["n_ref"]
    use_align = align_enabled(cfg)
    p_drop = cfg.train.cond_dropout
    if p_drop > 0 and float(torch.rand((), generator=generator, device=generator.device)) < p_drop:
        kwargs = drop_reference(kwargs, n_ref)  # the unconditional branch of classifier-free guidance
        n_ref, use_align = 0, False  # alignment targets index the reference view: not supervised here
    out = model(**kwargs, align=use_align, directions=tuple(cfg.loss.align_directions))
    pred_app, pred_geo = out.app[:, n_ref:], out.geo
    if cfg.model.prediction_type == "sample_skip":  # x̂0 = c_skip·x_t + c_out·F, then the x0 loss
        ab, ts, n_app = scheduler.alphas_cumprod.to(pred_app.device), kwargs["timesteps"], kwargs["app"].shape[1]
        # in fp32: under bf16 autocast the network's output is bf16, and c_skip·x_t (the low-noise pass-through)
        # must not be rounded to it
        pred_app = precondition("sample_skip", ab[ts[:, n_ref:n_app]][..., None, None, None],
                                kwargs["app"][:, n_ref:], pred_app.float(), cfg.model.sigma_data)
        if pred_geo is not None:
            pred_geo = precondition("sample_skip", ab[ts[:, -1]][:, None, None, None],
                                    kwargs["geo"], pred_geo.float(), cfg.model.sigma_data)
    diff = diffusion_loss(pred_app, target, 0, pred_geo, target_geo, cfg.loss.geo_loss_weight)
    if use_align:
        al = alignment_loss(out.align, align_targets(batch, cfg, device))
        term = cfg.loss.align_weight * al
        loss = diff + term
    else:
        al, term = torch.zeros((), device=diff.device), None
        loss = diff
    return {"loss": loss, "diffusion_loss": diff.detach(), "align_loss": al.detach(), "diffusion_term": diff,
            "align_term": term}


def drop_reference(kwargs: dict, n_ref: int) -> dict:
    """Model inputs without the reference frames (what `GeoFacePipeline` feeds the unconditional branch of
    guidance: targets + geometry only, rays still relative to the reference camera)."""
    out = dict(kwargs)
    for k in ("app", "plucker", "app_cond"):
        out[k] = kwargs[k][:, n_ref:]
    out["timesteps"] = kwargs["timesteps"][:, n_ref:]
    return out


@torch.no_grad()
def attention_report(model, batch: dict, codec: LatentCodec, scheduler: DDPMScheduler, cfg: GeoFaceConfig,
                     generator: torch.Generator, device) -> dict[str, float]:
    """Attention mass on the correct tokens at each supervised block ("<dir>_mass_l<k>") and the chance
    level ("<dir>_chance": mean targets per query / keys), for a batch noised as in training."""
    if not cfg.model.geometry_stream:
        raise ValueError("attention_report: the model has no geometry stream")
    kwargs, _, _ = prepare_inputs(batch, codec, scheduler, cfg, generator, device)
    out = model(**kwargs, align=True, directions=("a2g", "g2a"))
    report = {}
    for name in ("a2g", "g2a"):
        idx, w = batch[f"{name}_index"].to(device), batch[f"{name}_weight"].to(device)
        for layer, al in out.align.items():
            report[f"{name}_mass_l{layer}"] = attention_mass(getattr(al, name), idx, w)
        n_keys = getattr(next(iter(out.align.values())), name).shape[-1]
        n_q = torch.unique(idx[:, :3], dim=0).shape[0]
        report[f"{name}_chance"] = len(idx) / max(n_q, 1) / n_keys
    return report


DENOISE_TIMESTEPS = (5, 100, 300, 500, 700, 900, 999)  # per-noise-level x0 errors in metrics/eval.json


def x0_from_prediction(prediction_type: str, scheduler: DDPMScheduler, x_t: torch.Tensor, pred: torch.Tensor,
                       t: int, sigma_data: float = 0.5) -> torch.Tensor:
    """The model's estimate of the clean sample from its output at noise level t (any shape)."""
    ab = scheduler.alphas_cumprod[int(t)].to(x_t.device, torch.float64)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x, p = x_t.double(), pred.double()
    if prediction_type in PRECONDITIONED:
        x0 = precondition(prediction_type, ab, x, p, sigma_data).double()
    elif prediction_type == "sample":
        x0 = p
    elif prediction_type == "v_prediction":
        x0 = a * x - s * p
    else:
        x0 = (x - s * p) / a.clamp_min(1e-12)
    return x0.float()


@torch.no_grad()
def denoising_errors(model, batch: dict, codec: LatentCodec, scheduler: DDPMScheduler, cfg: GeoFaceConfig,
                     generator: torch.Generator, device, timesteps=DENOISE_TIMESTEPS,
                     geometry_error_mm=None) -> dict[str, float]:
    """One-step denoising at fixed noise levels: MSE of the model's x0 estimate of the target views
    ("x0_mse_t<t>") and of the geometry frame ("geo_x0_mse_t<t>"), beside the trivial estimates that make them
    readable: returning the noisy input ("identity_x0_mse_t<t>", exact at t → 0) and predicting 0 = the data
    mean of [-1, 1] images ("zero_x0_mse_t<t>", the best guess at pure noise without the reference). With
    `geometry_error_mm(pred, target, mask)` ((B,3,R,R) decoded maps, (B,1,R,R) mask -> mm; the evaluation passes
    its `geometry_error_mm` metric) also "geo_x0_mm_t<t>": that metric of the geometry estimate decoded to a UV map
    (compare with the mean-UV baseline of the evaluation)."""
    pt = cfg.model.prediction_type
    out: dict[str, float] = {}
    n_ref = batch["n_ref"]
    x0 = codec.encode_frames(batch["images"].to(device))[:, n_ref:]  # clean latents: the same at every t
    g0 = None
    for t in timesteps:
        kwargs, _, _ = prepare_inputs(batch, codec, scheduler, cfg, generator, device, timestep=int(t))
        res = model(**kwargs)
        x_t = kwargs["app"][:, n_ref:]
        est = x0_from_prediction(pt, scheduler, x_t, res.app[:, n_ref:], t, cfg.model.sigma_data)
        out[f"x0_mse_t{t}"] = float((est - x0).square().mean())
        out[f"identity_x0_mse_t{t}"] = float((x_t - x0).square().mean())
        out[f"zero_x0_mse_t{t}"] = float(x0.square().mean())
        if res.geo is not None:
            g0 = codec.encode_geometry(batch["uv_posmap"].to(device)) if g0 is None else g0
            gest = x0_from_prediction(pt, scheduler, kwargs["geo"], res.geo, t, cfg.model.sigma_data)
            out[f"geo_x0_mse_t{t}"] = float((gest - g0).square().mean())
            if geometry_error_mm is not None:
                out[f"geo_x0_mm_t{t}"] = geometry_error_mm(codec.decode_geometry(gest), batch["uv_posmap"],
                                                           batch["uv_mask"])
    return out

