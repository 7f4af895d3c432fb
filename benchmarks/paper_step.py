"""Benchmark: one training step of the full-size SD 2.1 multi-view model (backbone sd21_mv, random weights) with the
alignment loss, at the `paper_sd21` preset: 1 reference + 3 targets + the geometry frame, layer-10 alignment through
the MLP logit head, QK-norm, gradient checkpointing, bf16 autocast + AdamW on a GPU.

    python benchmarks/paper_step.py [--resolution 512] [--steps 3] [--cpu-resolution 128]

On a GPU: 512² (64² latents, 32×32 tokens at layer 10), peak GiB from torch.cuda.max_memory_allocated, and the
step repeated without the alignment loss to measure what the explicit logit block costs. Without a GPU: fp32 at
--cpu-resolution (default 128², so the run stays within a few minutes and ~8 GB of RAM), SGD instead of AdamW
(no optimizer state), a single step (its time includes first-step overhead), peak = the process's max RSS.
Latents are drawn at random (the frozen VAE's encode is not timed); alignment targets are one-hot, one geometry
token per appearance token and back (CAMEO's point-map targets). The memory of the explicit app↔geo logit blocks
against the full attention matrix of layer 10 at 512² is computed from the shapes (`layer10_512_*`). The last
line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoface_model.losses import alignment_loss, diffusion_loss  # noqa: E402
from geoface_model.presets import paper_sd21  # noqa: E402
from geoface_model.sd21 import SD21_UNET_CONFIG, SD21MultiView  # noqa: E402

GiB = 2.0**30


def logit_memory(Fa: int, La: int, Lg: int, heads: int, mlp_ratio: float, chunk: int = 256) -> dict:
    """MiB of layer-10's explicit fp32 logits (both directions, forward) against its full fp32 attention matrix.
    mean head: the two blocks; mlp head: + the per-head blocks and one chunk of the hidden layer (pre/post GELU)."""
    block = 2 * Fa * La * Lg * 4
    N = Fa * La + Lg
    hidden_chunk = Fa * min(chunk, La) * Lg * heads * mlp_ratio * 4 * 2
    return {"align_mean_head_mib": block / 2**20,
            "align_mlp_head_mib": (block * (1 + heads) + hidden_chunk) / 2**20,
            "full_attention_mib": N * N * heads * 4 / 2**20}


def targets(B: int, Fa: int, L: int, gen: torch.Generator, device) -> dict:
    """One-hot a2g / g2a targets: a random geometry token for every appearance token, and back."""
    b, v, i = torch.meshgrid(torch.arange(B), torch.arange(Fa), torch.arange(L), indexing="ij")
    k = torch.randint(0, L, b.shape, generator=gen)
    idx = torch.stack([b.flatten(), v.flatten(), i.flatten(), k.flatten()], 1).to(device)
    w = torch.ones(len(idx), device=device)
    return {"a2g": (idx, w), "g2a": (idx[:, [0, 1, 3, 2]], w)}


def step(model, opt, batch, tg, align_w: float, amp: bool, device) -> float:
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(**batch, align=align_w > 0)
        loss = diffusion_loss(out.app, batch["app"], 1, out.geo, batch["geo"])
        if align_w > 0:
            loss = loss + align_w * alignment_loss(out.align, tg)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=512, help="image side on a GPU")
    ap.add_argument("--cpu-resolution", type=int, default=128, help="image side without a GPU")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    args = ap.parse_args()
    cfg = paper_sd21()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    S = args.resolution if gpu else args.cpu_resolution
    steps = args.steps if gpu else 0  # CPU: one step, its time includes the first-step overhead
    torch.manual_seed(0)
    t0 = time.perf_counter()
    m = cfg.model
    model = SD21MultiView(unet_config=SD21_UNET_CONFIG, align_layers=m.align_layers, align_head=m.align_head,
                          qk_norm=m.qk_norm, prediction_type=m.prediction_type).to(device)
    model.enable_gradient_checkpointing()
    model.train()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    tc = cfg.train
    opt = (torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay) if gpu
           else torch.optim.SGD(model.parameters(), lr=tc.lr))
    Fa, h = tc.n_ref + tc.n_tgt, S // 8
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    batch = dict(app=r(1, Fa, 4, h, h), timesteps=torch.cat([torch.zeros(1, 1, dtype=torch.long),
                                                              torch.randint(0, 1000, (1, 1), generator=gen).expand(1, Fa)], 1).to(device),
                 plucker=r(1, Fa, 6, h, h), app_cond=torch.tensor([[1.0] + [0.0] * tc.n_tgt], device=device), geo=r(1, 4, h, h))
    L = (h // model.config.patch_size) ** 2
    tg = targets(1, Fa, L, gen, device)
    times = [step(model, opt, batch, tg, cfg.loss.align_weight, gpu, device) for _ in range(steps + 1)]
    s_per_step = sum(times[1:]) / steps if steps else times[0]  # GPU: the steps after the warm-up one
    if gpu:
        peak = torch.cuda.max_memory_allocated() / GiB
        torch.cuda.reset_peak_memory_stats()
        step(model, opt, batch, tg, 0.0, gpu, device)
        peak_no_align = torch.cuda.max_memory_allocated() / GiB
    else:
        peak, peak_no_align = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, None
    heads = model.unet.get_submodule(model.attn_names[m.align_layers[0]]).heads
    mem = logit_memory(Fa, 1024, 1024, heads, 4.0)  # layer 10 at 512²: 32×32 tokens per frame
    result = {"device": torch.cuda.get_device_name() if gpu else "cpu (not measured on a GPU)",
              "params_m": round(n_params / 1e6, 2), "s_per_step": round(s_per_step, 3), "peak_gib": round(peak, 2),
              "resolution": S, "frames": f"1 ref + {tc.n_tgt} targets + geometry",
              "precision": "bf16 autocast" if gpu else "fp32", "optimizer": "AdamW" if gpu else "SGD (no state, CPU memory)",
              "gradient_checkpointing": True, "align_layer": m.align_layers[0], "align_head": m.align_head,
              "build_s": round(build_s, 1), "peak_gib_without_align": None if peak_no_align is None else round(peak_no_align, 2),
              "layer10_512_align_mean_mib": round(mem["align_mean_head_mib"], 1),
              "layer10_512_align_mlp_mib": round(mem["align_mlp_head_mib"], 1),
              "layer10_512_full_attention_mib": round(mem["full_attention_mib"], 1),
              "timed_steps": max(steps, 1), "threads": torch.get_num_threads(), "load_avg_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
