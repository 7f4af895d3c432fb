"""Benchmark: seconds to generate 8 views + the UV position map + the mesh with `GeoFacePipeline`, and peak memory.

    python benchmarks/generate.py [--steps 25] [--views 8] [--scheduler ddim] [--repeats 3] [--threads 1] [--photo]

Model: the trained one at models/geoface (config from params.yaml) when it exists, else the `tiny` config with
random weights (seed 0) — the JSON says which. Head model (UV layout for posmap -> mesh): data/head_model when it
exists, else a stand-in built into a temporary folder (not timed). Reference: matplotlib's grace_hopper.jpg
resized to the model resolution, seen by a frontal camera at 0.8 m; targets: `orbit_cameras` over ±60° yaw.
One untimed warm-up call, then `--repeats` timed calls (median reported). --photo also times the whole
`generate_from_photo` (MediaPipe, camera fit, generation, files). Peak memory: CUDA max allocated on a GPU, else
the process's max RSS (so it includes every imported library). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from flame_fitting.geometry.camera import Camera, look_at  # noqa: E402
from flame_fitting.head.head_model import load_head_model  # noqa: E402
from flame_fitting.uv import UVLayout  # noqa: E402
from geoface_model.config import GeoFaceConfig  # noqa: E402
from geoface_model.model import GeoFaceTransformer, model_kwargs  # noqa: E402
from geoface_model.orbit import assumed_intrinsics, orbit_cameras  # noqa: E402
from geoface_model.pipeline import GeoFacePipeline, head_info_of  # noqa: E402
from geoface_model.presets import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 30.0


def head_model(tmp: Path):
    folder = ROOT / "data" / "head_model"
    if not (folder / "head_model.json").is_file():
        from flame_fitting.head.standin import build_standin
        folder = tmp / "head"
        build_standin(folder, seed=0, n_shape=10, n_expr=10)
    return load_head_model(folder), str(folder)


def pipeline(head, scheduler: str) -> tuple[GeoFacePipeline, str]:
    layout, info = UVLayout.from_head_model(head), head_info_of(head)
    trained = ROOT / "models" / "geoface"
    if (trained / "config.json").is_file():
        from flame_fitting.core.params import read_params
        p = read_params(ROOT / "params.yaml")
        cfg = GeoFaceConfig.from_sections(tokens=p.get("tokens"), model=p.get("model"), loss=p.get("loss"),
                                          train=p.get("train"))
        return GeoFacePipeline.from_training(trained, cfg, layout=layout, head_info=info, scheduler=scheduler), \
            f"trained: {trained.relative_to(ROOT)}"
    torch.manual_seed(0)
    cfg = tiny()
    tr = GeoFaceTransformer(**model_kwargs(cfg, 3, 1)).eval()
    return GeoFacePipeline.build(tr, layout=layout, head_info=info, resolution=cfg.tokens.resolution,
                                 uv_resolution=cfg.tokens.uv_resolution, scheduler=scheduler), \
        "random tiny (no trained model at models/geoface)"


def peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--scheduler", default="ddim", choices=["ddim", "euler"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's choice); one thread "
                    "avoids OpenMP stalls on a shared 2-core machine (measured 1.5 s vs 4-16 s for two)")
    ap.add_argument("--photo", action="store_true", help="also time generate_from_photo end to end")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import matplotlib.cbook as cbook
    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        head, head_dir = head_model(tmp)
        pipe, model_desc = pipeline(head, args.scheduler)
        if torch.cuda.is_available():
            pipe.to("cuda")
        pipe.set_progress_bar_config(disable=True)
        S = pipe.config.resolution
        ref = cv2.resize(cv2.cvtColor(cv2.imread(photo), cv2.COLOR_BGR2RGB), (S, S), interpolation=cv2.INTER_AREA)
        centre = np.array([0.0, 0.0, 0.0])
        ref_cam = Camera(K=assumed_intrinsics(S, S), world_to_cam=look_at(centre + [0, 0.05, 0.8], centre), width=S, height=S)
        targets = orbit_cameras(ref_cam, centre, args.views, (-60.0, 60.0))
        pipe(ref, ref_cam, targets, num_inference_steps=1, seed=0)  # warm-up (kernels, caches, UV sampler table)
        times = []
        for r in range(args.repeats):
            t = time.perf_counter()
            out = pipe(ref, ref_cam, targets, num_inference_steps=args.steps, seed=r)
            times.append(time.perf_counter() - t)
        photo_s = None
        if args.photo:
            from geoface_model.generate import generate_from_photo
            pipe.save_pretrained(tmp / "pipe")
            t = time.perf_counter()
            generate_from_photo(photo, tmp / "pipe", args.views, tmp / "out", head_model_dir=head_dir,
                                num_inference_steps=args.steps, scheduler=args.scheduler, progress=False)
            photo_s = round(time.perf_counter() - t, 3)
    s = statistics.median(times)
    result = {
        "s_per_8_views": round(s, 3) if args.views == 8 else None, "peak_mem_mb": round(peak_mem_mb(), 1),
        "views": args.views, "steps": args.steps, "scheduler": args.scheduler, "model": model_desc,
        "resolution": S, "uv_resolution": pipe.config.uv_resolution, "mesh_vertices": int(len(out.vertices)),
        "s_median": round(s, 3), "s_min": round(min(times), 3), "s_generate_from_photo": photo_s,
        "target_s": TARGET_S, "meets_target": bool(s <= TARGET_S) if args.views == 8 else None,
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
