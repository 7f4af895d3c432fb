"""`geoface` command line: work on captures without DVC, through the same code as the stages.

    geoface fit CAPTURE_DIR --out DIR [--head-model DIR] [--refine-cameras] [--workers N] [--set key=value ...]
        MediaPipe landmarks + multi-view FLAME fitting on any folder in the canonical capture format
        (docs/capture_format.md). Writes DIR/landmarks/, DIR/fits/, DIR/overlays/, DIR/metrics.json.
    geoface import SOURCE ROOT --out DIR
        Convert a dataset (nersemble, renderme360, colmap, transforms_json, folder) to a canonical capture.
    geoface generate PHOTO --views N --out DIR [--model models/geoface] [--steps 25] [--scheduler ddim|euler]
        Views + UV position map + mesh from one face photo with a trained model (geoface_model/generate.py):
        writes the views, the mesh (OBJ), cameras.json and a contact sheet with the mesh overlaid.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import check_output_dir, write_json


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def cmd_fit(args) -> int:
    from flame_fitting.formats.capture import load_capture
    from flame_fitting.fit import FitConfig
    from flame_fitting.fit.capture import fit_capture
    from flame_fitting.head.head_model import load_head_model
    from flame_fitting.formats.landmarks import save_landmarks
    from flame_fitting.landmarks.capture import detect_capture, landmark_metrics
    from flame_fitting.core.params import build_config

    over = _overrides(args.set)
    if args.refine_cameras:
        over["refine_cameras"] = True
    cfg = build_config(FitConfig, over, "geoface fit --set")
    head = Path(args.head_model)
    out = Path(args.out)
    for sub in ("landmarks", "fits", "overlays"):  # checked before any work, never replaces foreign data
        check_output_dir(out / sub, [args.capture_dir, head], args.force)
    if not head.is_dir():
        raise SystemExit(f"{head}: no head model folder (run `dvc repro head_model`, or pass --head-model "
                         "pointing at a FLAME folder in smplx layout; see docs/head_model.md)")
    cap = load_capture(args.capture_dir)
    model = load_head_model(head, n_shape=cfg.n_shape, n_expr=cfg.n_expr)
    ls = detect_capture(cap, workers=args.workers)
    save_landmarks(ls, out / "landmarks", overwrite=args.force)
    metrics = {"landmarks": landmark_metrics(cap, ls)}
    fit_metrics = fit_capture(cap, ls, model, cfg, out / "fits", overlay_dir=out / "overlays", overwrite=args.force)
    metrics["fit"] = {k: v for k, v in fit_metrics.items() if not k.startswith("_")}
    write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def cmd_import(args) -> int:
    from pipelines.import_config import ImportConfig
    from flame_fitting.core.params import build_config
    from pipelines.registry import import_capture

    cfg = build_config(ImportConfig, _overrides(args.set), "geoface import --set")
    report = import_capture(args.source, args.root, args.out, cfg, overwrite=args.force)
    print(report)
    return 0


def cmd_generate(args) -> int:
    from geoface_model.generate import generate_from_photo

    report = generate_from_photo(args.photo, args.model, args.views, args.out, head_model_dir=args.head_model,
                                 num_inference_steps=args.steps, scheduler=args.scheduler,
                                 guidance_scale=args.guidance, seed=args.seed, export_gs=args.gs,
                                 overwrite=args.force)
    print(json.dumps(report, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="geoface", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="landmarks + multi-view FLAME fit on a canonical capture")
    f.add_argument("capture_dir")
    f.add_argument("--out", required=True)
    f.add_argument("--head-model", default="data/head_model", help="FLAME-layout folder (default: data/head_model)")
    f.add_argument("--refine-cameras", action="store_true", help="bundle adjustment of the cameras")
    f.add_argument("--workers", type=int, default=None, help="landmark detection processes (default: all cores)")
    f.add_argument("--set", nargs="*", default=[], help="FitConfig overrides, e.g. --set iterations=50 n_expr=20")
    f.add_argument("--force", action="store_true",
                   help="replace OUT/landmarks, OUT/fits, OUT/overlays if an earlier geoface run wrote them")
    f.set_defaults(func=cmd_fit)
    i = sub.add_parser("import", help="convert a dataset to the canonical capture format")
    i.add_argument("source", choices=["nersemble", "renderme360", "colmap", "transforms_json", "folder"])
    i.add_argument("root")
    i.add_argument("--out", required=True)
    i.add_argument("--set", nargs="*", default=[], help="ImportConfig overrides, e.g. --set downscale=2")
    i.add_argument("--force", action="store_true", help="replace --out if an earlier geoface import wrote it "
                   "(a folder geoface did not write is never replaced)")
    i.set_defaults(func=cmd_import)
    g = sub.add_parser("generate", help="views + geometry from one face photo with a trained model")
    g.add_argument("photo")
    g.add_argument("--views", type=int, default=8)
    g.add_argument("--out", required=True)
    g.add_argument("--model", default="models/geoface", help="trained transformer or pipeline folder")
    g.add_argument("--head-model", default="data/head_model")
    g.add_argument("--steps", type=int, default=25)
    g.add_argument("--scheduler", choices=["ddim", "euler"], default="ddim")
    g.add_argument("--guidance", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--gs", action="store_true", help="also export transforms.json + COLMAP text + PLY for 3DGS")
    g.add_argument("--force", action="store_true", help="replace --out if an earlier geoface run wrote it")
    g.set_defaults(func=cmd_generate)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (GeofaceError, ValueError, FileNotFoundError) as e:  # our errors name the file and the problem
        print(f"geoface {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
