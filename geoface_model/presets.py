"""Named configs of the GeoFace model and what they cost: the `tiny`, `paper` and `paper_sd21` presets, the
guidance each samples with, and the parameter count and training memory of a config (`count_params`,
`estimate_memory`).

`tiny()` trains in minutes on a 2-core CPU; `paper()` is the published scale (see `docs/model.md` and
`estimate_memory` for what it needs); `paper_sd21()` is CAMEO's recipe on the Stable Diffusion 2.1 backbone.
The config classes themselves, their fields and their validation: config.py.
"""
from __future__ import annotations

from .config import GeoFaceConfig, LossConfig, ModelConfig, TokensConfig, TrainConfig


def tiny() -> GeoFaceConfig:
    """Pixel space, 64² views (8×8 tokens, patch 8), 64² UV map (8×8 geo tokens), width 192, depth 6.

    1 reference + 3 targets + the geometry frame = 5 frames, 320 tokens; ≈ 0.3 s/step (batch 4) on 2 idle CPU
    cores. Parameterisation x0 with a skip at low noise (`sample_skip`, σd 0.03: the input passes through at low
    noise, the network answers x0 elsewhere) with a zero-terminal-SNR schedule and CAMEO's alignment weight 0.02:
    the combination measured best at CPU scale (docs/model.md "Parameterisation", "Alignment weight"):
    v-prediction and EDM pass the input through at low noise by construction but, after the CPU run's few
    hundred to few thousand steps, their samples are far worse (geometry 105-130 mm vs 13 mm).

    The configs' defaults ARE this preset (and params.yaml's values: tests/geoface_model/test_config.py keeps the
    three equal), so `geoface train` without `--params` trains the model `dvc repro` trains.
    """
    cfg = GeoFaceConfig()
    cfg.validate()
    return cfg


def paper() -> GeoFaceConfig:
    """Paper scale: 512² views through the SD VAE (64² latents, patch 2 → 32×32 tokens per view),
    1 reference + 6 targets + the geometry frame (the paper repurposes the last of 8 frames), 512² UV map
    (32×32 geo tokens), width 1152, depth 28, heads 16 (DiT-XL), alignment at block 14, weight 0.02.

    Needs `model.vae_path` set to a local AutoencoderKL folder. Memory per GPU (batch 1, bf16, see
    `estimate_memory`; 676 M parameters, 8192 tokens): ≈ 12.6 GiB of fp32 weights + grads + AdamW + EMA,
    ≈ 8.4 GiB of activations without gradient checkpointing (≈ 0.8 GiB with it), and 56 MiB (112 MiB with
    the backward) for the explicit app↔geo logits of the supervised block — the full 8192² × 16-head
    attention matrix would be 4 GiB in fp32. Total ≈ 21 GiB, or ≈ 13.5 GiB with gradient checkpointing (on
    here), plus the frozen VAE: a 24 GB GPU with checkpointing, a 40 GB one without.
    """
    cfg = GeoFaceConfig(
        tokens=TokensConfig(resolution=512, patch_size=16, uv_resolution=512, geo_patch_size=16),
        model=ModelConfig(vae_path="models/vae", width=1152, depth=28, heads=16, align_layers=[14], gradient_checkpointing=True,
                          prediction_type="v_prediction"),
        loss=LossConfig(align_weight=0.02),
        train=TrainConfig(steps=100_000, batch_size=1, grad_accum=4, lr=1e-4, weight_decay=0.01, warmup_steps=1000,
                          checkpoint_every=2000, log_every=10, num_workers=4, n_ref=1, n_tgt=6,
                          zero_terminal_snr=True, snr_shift=4.0, cond_dropout=0.1),
    )
    cfg.validate()
    return cfg


def paper_sd21() -> GeoFaceConfig:
    """CAMEO's recipe (cvlab-kaist/CAMEO configs/config.yaml) on the paper preset: backbone sd21_mv fine-tuned from a
    local Stable Diffusion 2.1 folder (`models/sd21`, downloaded by the user), 512² views, 1 reference + 3 targets +
    the geometry frame (512² UV map, same latent size), alignment at self-attention layer 10 (32×32 tokens:
    patch 16 px) through the per-view MLP logit head, weight 0.02, QK-norm, lr 2.5e-5 constant after 500
    warm-up steps, AdamW wd 0.01, clip 1.0, bf16, gradient checkpointing. Noise schedule / prediction type:
    those of `paper()`. Memory: docs/model.md and benchmarks/paper_step.py."""
    base = paper()
    cfg = base.replace(
        tokens=dict(resolution=512, patch_size=16, uv_resolution=512, geo_patch_size=16),
        model=dict(backbone="sd21_mv", base_path="models/sd21", vae_path=None, align_layers=[10], align_head="mlp",
                   qk_norm=True, gradient_checkpointing=True),
        loss=dict(align_weight=0.02),
        train=dict(lr=2.5e-5, warmup_steps=500, lr_schedule="constant", weight_decay=0.01, max_grad_norm=1.0,
                   mixed_precision="bf16", batch_size=1, grad_accum=1, n_ref=1, n_tgt=3))
    return cfg


PRESETS = {"tiny": tiny, "paper": paper, "paper_sd21": paper_sd21}
# eval.guidance_scale / `geoface generate --guidance` each preset is meant to sample with: the paper presets are
# trained with reference dropout (train.cond_dropout 0.1) and sample with guidance 2.0, as CAMEO's validation does
PRESET_GUIDANCE = {"tiny": 1.0, "paper": 2.0, "paper_sd21": 2.0}


def count_params(width: int, depth: int, mlp_ratio: float, latent_channels: int, latent_patch: int,
                 geo_latent_patch: int, geometry_stream: bool = True, freq_dim: int = 256) -> int:
    """Exact parameter count of `GeoFaceTransformer` (tested against a built model)."""
    D, C, H = width, latent_channels, int(width * mlp_ratio)
    block = 3 * D * D + 3 * D + D * D + D + D * H + H + H * D + D + 6 * D * D + 6 * D
    n = depth * block
    n += freq_dim * D + D + D * D + D  # timestep MLP
    n += (C + 7) * latent_patch**2 * D + D  # appearance patch embedding (latent + mask + 6 Plücker)
    n += 2 * D * D + 2 * D + D * latent_patch**2 * C + latent_patch**2 * C  # appearance final layer
    if geometry_stream:
        n += (C + 1) * geo_latent_patch**2 * D + D + D + 2 * D  # geo patch embedding, camera token, frame types
        n += 2 * D * D + 2 * D + D * geo_latent_patch**2 * C + geo_latent_patch**2 * C
    return n


def estimate_memory(cfg: GeoFaceConfig, latent_channels: int = 4, latent_downsample: int = 8,
                    batch_size: int = 1, act_bytes: int = 2) -> dict:
    """Training memory per GPU in MiB (weights, activations, attention) — a model, not a measurement.

    Weights: fp32 params + grads + AdamW (2 moments) + EMA = 20 bytes/param. Activations per block: 34·N·D
    bytes at 16 bit (Korthikanti et al. 2022, fused attention so no N² term) ; with checkpointing only the
    2·N·D-byte block inputs stay, plus one block recomputed. Explicit alignment logits: fp32 a2g + g2a blocks
    (Fa·La·Lg each), ×2 for the saved softmax in backward; full matrix: N²·heads fp32 logits.
    """
    t, m = cfg.tokens, cfg.model
    p_lat, pg_lat = t.patch_size // latent_downsample, t.geo_patch_size // latent_downsample
    P = count_params(m.width, m.depth, m.mlp_ratio, latent_channels, p_lat, pg_lat, m.geometry_stream)
    Fa = cfg.train.n_ref + cfg.train.n_tgt
    La, Lg = t.app_tokens**2, (t.geo_tokens**2 if m.geometry_stream else 0)
    N = Fa * La + Lg
    MiB = 2.0**20
    per_block = 34 * N * m.width * act_bytes / 2 * batch_size
    acts_full = m.depth * per_block
    acts_ckpt = m.depth * 2 * N * m.width * act_bytes / 2 * batch_size + per_block
    align = 2 * Fa * La * Lg * 4 * batch_size * len(m.resolved_align_layers())
    full = N * N * m.heads * 4 * batch_size
    return {
        "params": P, "tokens": N,
        "weights_mb": 20 * P / MiB,
        "activations_mb": acts_full / MiB, "activations_ckpt_mb": acts_ckpt / MiB,
        "align_block_mb": align / MiB, "align_block_with_backward_mb": 2 * align / MiB,
        "full_attention_mb": full / MiB,
    }
