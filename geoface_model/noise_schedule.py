"""The training noise schedule, shared by the training loss and every sampler: `schedule_kwargs(train_cfg)`.

Three knobs of `TrainConfig` on top of diffusers' beta schedules:
- `snr_shift` s: SNR'(t) = SNR(t) / s (s > 1 = noisier at every t; MVGenMaster/CAMEO shift the SD schedule for
  several 512² frames sharing one sample). Applied to ᾱ, then converted back to betas (`trained_betas`).
- `zero_terminal_snr`: ᾱ_T = 0 exactly (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
  flawed"; diffusers' `rescale_betas_zero_snr`), so the first sampling step starts from pure noise, as in
  training. Needs v-prediction (or x0): an ε-prediction carries no information at ᾱ = 0.
- `num_train_timesteps`, `beta_schedule` as in diffusers.

Why the paper presets use v-prediction + zero terminal SNR (docs/model.md "Parameterisation"): the sample
estimate is x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂, so at low noise a v error is multiplied by √(1−ᾱ) → 0 (the input passes
through by construction), and at ᾱ = 0 it is x̂0 = −v̂ (bounded), whereas ε-prediction gives
x̂0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ, an ε error multiplied by √((1−ᾱ)/ᾱ) ≈ 2·10⁴ at the last step of the cosine schedule.
The CPU preset predicts x0 with ᾱ_T = 0 instead: measured, it samples far better at a few thousand steps; its
`sample_skip` form (`skip_coefficients`) mixes the noisy input into x̂0 at low noise, so it passes the input through
too without asking the network to reproduce x_t at mid noise.
"""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def shifted_betas(num_train_timesteps: int, beta_schedule: str, snr_shift: float) -> list[float]:
    """Betas whose ᾱ has SNR(t) / snr_shift (float64 maths, float list for the scheduler config)."""
    base = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    a = base.alphas_cumprod.double()
    snr = a / (1 - a) / float(snr_shift)
    a2 = snr / (1 + snr)
    alphas = torch.cat([a2[:1], a2[1:] / a2[:-1]])
    return (1 - alphas).clamp(0, 0.999999).tolist()


def schedule_kwargs(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                    zero_terminal_snr: bool = False, snr_shift: float = 1.0) -> dict:
    """Keyword arguments every diffusers scheduler (DDPM, DDIM, Euler) takes for this noise schedule."""
    kw = dict(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
              rescale_betas_zero_snr=bool(zero_terminal_snr))
    if float(snr_shift) != 1.0:
        kw["trained_betas"] = shifted_betas(num_train_timesteps, beta_schedule, snr_shift)
    return kw


def train_schedule(train_cfg) -> dict:
    """`schedule_kwargs` of a `TrainConfig`."""
    return schedule_kwargs(train_cfg.num_train_timesteps, train_cfg.beta_schedule, train_cfg.zero_terminal_snr,
                           train_cfg.snr_shift)


SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "rescale_betas_zero_snr", "trained_betas")


def schedule_of(scheduler) -> dict:
    """The schedule keyword arguments of an existing scheduler's config (to rebuild another sampler on it)."""
    c = dict(scheduler.config)
    kw = {k: c[k] for k in SCHEDULE_KEYS if c.get(k) is not None}
    kw.setdefault("rescale_betas_zero_snr", False)
    return kw


def alphas_cumprod(train_cfg) -> torch.Tensor:
    """(T,) float32 ᾱ of the training schedule (what `add_noise` uses)."""
    return DDPMScheduler(**train_schedule(train_cfg)).alphas_cumprod


def edm_coefficients(alpha_bar: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM preconditioning (Karras et al. 2022) written for the VP noisy sample x_t = √ᾱ·x0 + √(1−ᾱ)·ε:
    x̂0 = c_skip·x_t + c_out·F with c_skip = σd²√ᾱ / (1−ᾱ+ᾱσd²), c_out = σd√(1−ᾱ) / √(1−ᾱ+ᾱσd²).
    ᾱ → 1: x̂0 = x_t (the input passes through exactly); ᾱ = 0: x̂0 = σd·F (bounded). Trained on the unit-variance
    target F = (x0 − c_skip·x_t)/c_out with a plain MSE, this is EDM's loss weighting."""
    ab = alpha_bar.double()
    den = 1 - ab + ab * sigma_data**2
    return sigma_data**2 * ab.sqrt() / den, sigma_data * (1 - ab).sqrt() / den.sqrt()


def skip_coefficients(alpha_bar: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 prediction with a skip at low noise (`prediction_type: sample_skip`): x̂0 = c_skip·x_t + c_out·F with
    EDM's c_skip = σd²√ᾱ / (1−ᾱ+ᾱσd²) and c_out = (1−ᾱ) / (1−ᾱ+ᾱσd²) = 1 − √ᾱ·c_skip, i.e. in the VE frame
    x̃ = x_t/√ᾱ = x0 + σ·ε (σ² = (1−ᾱ)/ᾱ) a convex mix x̂0 = w·x̃ + (1−w)·F, w = σd²/(σ²+σd²).
    σ ≫ σd: x̂0 = F, the plain x0 model (no noise to reproduce at mid and high noise, bounded at ᾱ = 0);
    σ ≪ σd: x̂0 → x_t whatever F is (the input passes through). Trained with the x0 loss ‖x̂0 − x0‖² (the
    network's output is mixed before the loss, `diffusion.precondition`), not EDM's weighting, which puts
    1/c_out² on the low-noise steps. σd is where input and network count equally: about the x0 model's own
    error at low noise (a mix w·x̃ + (1−w)·F with F's error e is best at w = e/(σ²+e), i.e. σd² = e)."""
    ab = alpha_bar.double()
    den = 1 - ab + ab * sigma_data**2
    return sigma_data**2 * ab.sqrt() / den, (1 - ab) / den


PRECONDITIONED = ("edm", "sample_skip")  # prediction types whose output F gives x̂0 = c_skip·x_t + c_out·F


def preconditioning(prediction_type: str, alpha_bar: torch.Tensor, sigma_data: float
                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(c_skip, c_out) of the preconditioned prediction types (x̂0 = c_skip·x_t + c_out·F: `edm`,
    `sample_skip`), None for the others."""
    if prediction_type not in PRECONDITIONED:
        return None
    return (edm_coefficients if prediction_type == "edm" else skip_coefficients)(alpha_bar, sigma_data)
