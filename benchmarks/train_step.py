"""Benchmark: seconds per training step and peak memory of the `tiny` config on this machine, plus the
memory of the supervised block's explicit app↔geo logits against the full attention matrix at paper scale
(computed from the shapes by `presets.estimate_memory`, not run).

    python benchmarks/train_step.py [--steps 30] [--threads N]

Trains `tiny()` on a synthetic sphere shard (8 samples × 6 views, 64², 1 reference + 3 targets + geometry)
for --steps optimizer steps (batch 4). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from geoface_model.presets import estimate_memory, paper, tiny  # noqa: E402
from geoface_model.synthetic import make_synthetic_shard  # noqa: E402
from geoface_model.train import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synthetic_shard(tmp / "data" / "train.safetensors", n_samples=8, n_views=6, seed=0)
        cfg = tiny().replace(train=dict(steps=args.steps, checkpoint_every=args.steps, log_every=1))
        m = train(cfg, tmp / "data", tmp / "run", progress=False)
    est = estimate_memory(paper())
    result = {
        "s_per_step": round(m["s_per_step"], 4),
        "peak_mem_mb": round(m["peak_mem_mb"], 1),
        "align_block_mem_mb_paper": round(est["align_block_mb"], 1),
        "full_attention_mem_mb_paper": round(est["full_attention_mb"], 1),
        "tiny_steps": m["steps"], "tiny_loss_first": round(m["loss_first"], 4), "tiny_loss_last": round(m["loss_last"], 4),
        "tiny_params": m["n_params"], "device": m["device"], "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "paper_params": est["params"], "paper_tokens": est["tokens"], "paper_weights_mb": round(est["weights_mb"]),
        "paper_activations_mb": round(est["activations_mb"]), "paper_activations_ckpt_mb": round(est["activations_ckpt_mb"]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
