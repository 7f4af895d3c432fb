"""The noise schedule (zero terminal SNR, SNR shift), the presets' parameterisation, and sampling with an
imperfect model: a denoiser that is exact for Gaussian data except for a fixed prediction error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from flame_fitting.core.params import ParamsError
from geoface_model.config import GeoFaceConfig
from geoface_model.noise_schedule import alphas_cumprod, schedule_kwargs, train_schedule
from geoface_model.pipeline import make_scheduler
from geoface_model.presets import paper, paper_sd21, tiny


def test_zero_terminal_snr_and_shift():
    base = DDPMScheduler(**schedule_kwargs()).alphas_cumprod.double()
    zt = DDPMScheduler(**schedule_kwargs(zero_terminal_snr=True)).alphas_cumprod.double()
    assert float(zt[-1]) == 0.0 and float(base[-1]) > 0
    assert float(zt[0]) == pytest.approx(float(base[0]), rel=1e-5)
    sh = DDPMScheduler(**schedule_kwargs(snr_shift=4.0)).alphas_cumprod.double()
    snr, snr_sh = base / (1 - base), sh / (1 - sh)
    np.testing.assert_allclose((snr_sh / snr)[:900].numpy(), 0.25, rtol=2e-3)  # float32 betas
    both = DDPMScheduler(**schedule_kwargs(zero_terminal_snr=True, snr_shift=4.0)).alphas_cumprod
    assert float(both[-1]) == 0.0 and bool((both[1:] <= both[:-1]).all())


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_samplers_share_the_training_schedule(kind):
    cfg = paper()
    s = make_scheduler(kind, **train_schedule(cfg.train), prediction_type="v_prediction", clip_sample=False)
    train_ab = alphas_cumprod(cfg.train)
    n = len(train_ab) - 1  # Euler replaces ᾱ_T = 0 by 2^-24 (a finite sigma)
    np.testing.assert_allclose(s.alphas_cumprod[:n].numpy(), train_ab[:n].numpy(), rtol=1e-6, atol=1e-9)


def test_zero_terminal_snr_refuses_epsilon():
    with pytest.raises(ParamsError, match="zero_terminal_snr"):
        GeoFaceConfig.from_sections(model={"prediction_type": "epsilon"}, train={"zero_terminal_snr": True})


def test_presets_sample_from_pure_noise():
    """Every preset has ᾱ_T = 0; the paper presets predict v (as SD 2.1 and CAMEO), the CPU preset x0 with a skip."""
    for cfg in (tiny(), paper(), paper_sd21()):
        assert cfg.train.zero_terminal_snr
    assert tiny().model.prediction_type == "sample_skip" and tiny().loss.align_weight == 0.02
    for cfg in (paper(), paper_sd21()):
        assert cfg.model.prediction_type == "v_prediction"
    for p in (paper(), paper_sd21()):
        assert p.train.snr_shift == 4.0 and p.train.cond_dropout == 0.1 and p.loss.align_weight == 0.02


def _imperfect_sample(cfg: GeoFaceConfig, error: float, kind: str = "ddim", steps: int = 25, data_std: float = 0.8,
                      n: int = 8192, clip: bool = False) -> float:
    """Std of samples drawn with the exact posterior-mean denoiser for x0 ~ N(0, data_std²) plus a fixed error
    `error`·u (u a fixed N(0, 1) vector) in the model's own output (ε, v, x0 or the F of edm / sample_skip)."""
    from geoface_model.diffusion import scheduler_prediction_type
    from geoface_model.noise_schedule import preconditioning

    pt = cfg.model.prediction_type
    sched = make_scheduler(kind, **train_schedule(cfg.train), prediction_type=scheduler_prediction_type(pt),
                           clip_sample=clip)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(n, generator=g, dtype=torch.float64) * float(sched.init_noise_sigma)
    d2 = data_std**2
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        if kind == "euler":
            ab = 1 / (1 + float(sched.sigmas[sched.step_index]) ** 2)
        else:
            ab = float(sched.alphas_cumprod[int(t)])
        den = ab * d2 + 1 - ab
        x0 = math.sqrt(ab) * d2 / den * xin
        eps = math.sqrt(1 - ab) / den * xin
        pre = preconditioning(pt, torch.tensor(ab, dtype=torch.float64), cfg.model.sigma_data)
        if pre is not None:  # the network's F carries the error; the sampler is given x̂0 = c_skip·x_t + c_out·F
            c_skip, c_out = pre
            pred = c_skip * xin + c_out * ((x0 - c_skip * xin) / c_out + error * u)
        else:
            pred = {"epsilon": eps, "sample": x0, "v_prediction": math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0}[
                pt] + error * u
        x = sched.step(pred.float(), t, x.float()).prev_sample.double()
    return float(x.std())


def _old_paper() -> GeoFaceConfig:
    """The paper preset before step 11: ε-prediction, cosine schedule with ᾱ_T = 2.4e-9, no shift."""
    return paper().replace(model={"prediction_type": "epsilon"},
                           train={"zero_terminal_snr": False, "snr_shift": 1.0, "cond_dropout": 0.0})


@pytest.mark.parametrize("error", [0.01, 0.05])
def test_imperfect_oracle_samples_the_data_scale(error):
    """A small fixed prediction error must not blow the samples up: the new presets keep the sample std within
    10 % of the data's; the old ε paper preset (latent space, no clipping) does not."""
    data_std = 0.8
    exact = _imperfect_sample(paper(), 0.0, data_std=data_std)
    assert abs(exact / data_std - 1) < 0.10  # 25 deterministic DDIM steps: 0.755 for 0.8
    new = _imperfect_sample(paper(), error, data_std=data_std)
    old = _imperfect_sample(_old_paper(), error, data_std=data_std)
    print(f"imperfect oracle (error {error}): sample std new paper {new:.3f}, old paper {old:.3f}, data {data_std}")
    assert abs(new / data_std - 1) < 0.10
    assert abs(old / data_std - 1) > 0.10
    for kind in ("ddim", "euler"):  # the tiny DiT preset gets the same protection, with either sampler
        s = _imperfect_sample(tiny(), error, kind=kind, data_std=data_std)
        assert abs(s / data_std - 1) < 0.10, (kind, s)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample", "edm"])
def test_training_target_inverts_to_x0(kind):
    """The exact training target, read back by x0_from_prediction at the same t, is the clean sample — and for
    edm and v the input passes through at t = 0 whatever the network outputs (pass-through by construction)."""
    from geoface_model.diffusion import _target, make_noise_scheduler, x0_from_prediction

    cfg = tiny().replace(model={"prediction_type": kind, "sigma_data": 0.5}, train={"zero_terminal_snr": kind != "epsilon"})
    sched = make_noise_scheduler(cfg)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 8, 8, generator=g) * 0.5, torch.randn(6, 3, 8, 8, generator=g)
    for t in (0, 5, 500, 998):
        tt = torch.full((6,), t)
        x_t = sched.add_noise(x0, noise, tt)
        target = _target(kind, sched, x0, noise, tt, cfg.model.sigma_data)
        back = x0_from_prediction(kind, sched, x_t, target, t, cfg.model.sigma_data)
        np.testing.assert_allclose(back.numpy(), x0.numpy(), atol=2e-3 if kind == "epsilon" and t > 900 else 1e-4)
    if kind in ("edm", "v_prediction"):
        junk = torch.randn(6, 3, 8, 8, generator=g)
        x_t = sched.add_noise(x0, noise, torch.zeros(6, dtype=torch.long))
        est = x0_from_prediction(kind, sched, x_t, junk, 0, cfg.model.sigma_data)
        assert float((est - x0).abs().max()) < 0.05  # √(1−ᾱ_0) ≈ 0.006 scales the junk


def test_sample_skip_passes_the_input_through_and_is_x0_at_high_noise():
    """sample_skip: x̂0 → x_t at low noise whatever the network outputs, x̂0 = F at pure noise (ᾱ_T = 0) and ≈ F
    where σ ≫ σd; the network output that reaches x0 exactly is read back as x0; the mixing weight w of the VE
    frame is σd²/(σ²+σd²) (the two coefficients checked against their definition)."""
    from geoface_model.diffusion import make_noise_scheduler, precondition, x0_from_prediction
    from geoface_model.noise_schedule import skip_coefficients

    cfg = tiny().replace(model={"prediction_type": "sample_skip", "sigma_data": 0.1})
    sched = make_noise_scheduler(cfg)
    assert sched.config.prediction_type == "sample"
    g = torch.Generator().manual_seed(0)
    x0, noise, junk = (torch.randn(6, 3, 8, 8, generator=g) * s for s in (0.5, 1.0, 1.0))
    ab = sched.alphas_cumprod.double()
    for t in (0, 5, 300, 700, 999):
        x_t = sched.add_noise(x0, noise, torch.full((6,), t))
        c_skip, c_out = skip_coefficients(ab[t], 0.1)
        sigma2 = (1 - ab[t]) / ab[t].clamp_min(1e-300)
        w = 0.01 / (sigma2 + 0.01)
        assert float(c_skip * ab[t].sqrt()) == pytest.approx(float(w), rel=1e-9, abs=1e-12)
        assert float(c_out) == pytest.approx(float(1 - w), rel=1e-9, abs=1e-12)
        exact = ((x0.double() - c_skip * x_t.double()) / c_out).float()
        np.testing.assert_allclose(x0_from_prediction("sample_skip", sched, x_t, exact, t, 0.1).numpy(), x0.numpy(),
                                   atol=1e-4)
        est = x0_from_prediction("sample_skip", sched, x_t, junk, t, 0.1)
        if t <= 5:  # σ ≤ 0.02: the junk is weighted by ≤ 4 %, the input passes through
            assert float((est - x_t).abs().max()) < 0.2 and float((est - x0).square().mean()) < 0.01
        if t >= 700:
            np.testing.assert_allclose(est.numpy(), junk.numpy(), atol=0.05 if t < 999 else 1e-6)
    one = torch.ones(2, 3, requires_grad=True)  # the gradient reaches the network's output, scaled by c_out
    precondition("sample_skip", ab[300], torch.zeros(2, 3), one, 0.1).sum().backward()
    assert torch.allclose(one.grad.double(), skip_coefficients(ab[300], 0.1)[1].expand(2, 3))


def test_sample_skip_trains_in_x0_space(micro_shards):
    """training_losses of sample_skip: the diffusion loss is the x0 MSE of the network's output mixed with the
    noisy input (x0_from_prediction of the same output at each frame's t), geometry frame included."""
    from geoface_model.data import GeoFaceDataset, collate
    from geoface_model.diffusion import make_noise_scheduler, prepare_inputs, training_losses, x0_from_prediction
    from geoface_model.latents import LatentCodec
    from geoface_model.model import GeoFaceTransformer

    cfg = GeoFaceConfig.from_sections(tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
                                      model=dict(width=32, depth=2, heads=2, prediction_type="sample_skip",
                                                 sigma_data=0.1),
                                      loss=dict(align_weight=0.0), train=dict(n_ref=1, n_tgt=2, zero_terminal_snr=True))
    torch.manual_seed(0)
    model = GeoFaceTransformer(width=32, depth=2, heads=2, patch_size=8, geo_patch_size=8,
                               prediction_type="sample_skip", sigma_data=0.1)
    codec, sched = LatentCodec(None), make_noise_scheduler(cfg)
    batch = collate([GeoFaceDataset(micro_shards, "train", 1, 2, 0).item(i, np.arange(3)) for i in range(2)])
    with torch.no_grad():
        got = training_losses(model, batch, codec, sched, cfg, torch.Generator().manual_seed(4), "cpu")
        kw, x0_app, x0_geo = prepare_inputs(batch, codec, sched, cfg, torch.Generator().manual_seed(4), "cpu")
        out, ts = model(**kw), kw["timesteps"]
        errs = [(x0_from_prediction("sample_skip", sched, kw["app"][b, 1 + f], out.app[b, 1 + f], int(ts[b, 1 + f]),
                                    0.1) - x0_app[b, f]).square().mean() for b in range(2) for f in range(2)]
        geo = [(x0_from_prediction("sample_skip", sched, kw["geo"][b], out.geo[b], int(ts[b, -1]), 0.1)
                - x0_geo[b]).square().mean() for b in range(2)]
    want = (sum(errs[:2]) + geo[0] + sum(errs[2:]) + geo[1]) / 3 / 2  # frames of a sample, then samples
    assert float(got["diffusion_loss"]) == pytest.approx(float(want), rel=1e-5)
    raw = (out.app[:, 1:] - x0_app).square().mean()  # the unmixed output is not what is scored
    assert abs(float(raw) - float(want)) > 1e-3


def test_per_loss_gradient_norms_add_up():
    """The two measured gradients are the parts of the total: ∇(diff + w·align) = ∇diff + ∇(w·align)."""
    from geoface_model.train import loss_grad_norms

    lin = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    y = lin(x)
    out = {"diffusion_term": y.square().mean(), "align_term": 0.1 * y.sum()}
    n = loss_grad_norms(out, list(lin.parameters()))
    gd = torch.autograd.grad(out["diffusion_term"], list(lin.parameters()), retain_graph=True)
    ga = torch.autograd.grad(out["align_term"], list(lin.parameters()), retain_graph=True)
    assert n["grad_norm_diffusion"] == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in gd))), rel=1e-6)
    assert n["grad_norm_align"] == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in ga))), rel=1e-6)
    assert math.isnan(loss_grad_norms({"diffusion_term": y.sum(), "align_term": None}, list(lin.parameters()))["grad_norm_align"])
