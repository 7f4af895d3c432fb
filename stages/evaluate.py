"""DVC stage `evaluate`: generate views + geometry for held-out subjects and measure them.

Reads params section `eval` (geoface_model/evaluate.py, EvalParams) and `uv.gutter`; the model is
models/geoface with the config it was trained with (geoface_config.json beside it). For every sample
of the `eval.split` shards (data/dataset): the most frontal view is the reference, `eval.n_targets`
views are generated with their UV position map and mesh, and measured (geoface_model/evaluate.py;
definitions in docs/evaluation.md). A sample that fails is recorded and skipped.
Writes:
  metrics/eval.json           means over samples (DVC metrics): psnr, ssim, lpips (null + status without
                              local weights), tsed, landmark_fit_rmse_px, mesh_alignment_px, geometry_error_mm,
                              attention_hit_rate, the same consistency metrics on the ground-truth views
                              (gt_*), the copy-the-reference baseline, counts, failures
  plots/eval/views.csv        per generated view: yaw, PSNR, SSIM (DVC plot)
  plots/eval/samples/*.png    per-sample grids (reference, ground truth, generated, mesh overlay, UV maps)
  plots/eval/overlay.png      the generated mesh over the generated views of the first sample
  plots/eval/report.html      everything above in one offline HTML file
  data/eval/<sample>/         views/*.png, reference.png, mesh.obj, posmap.npy, cameras.json (canonical head frame),
                              gs/ (3DGS start: transforms.json, COLMAP text, points3d.ply) when eval.export_3dgs
Run: `dvc repro evaluate`.
"""
from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_csv, write_json

from flame_fitting.core.fileio import make_temp_dir, replace_dir, sha256_file, write_png
from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.head.head_model import load_head_model
from flame_fitting.core.params import build_config, read_params
from geoface_model.config import GeoFaceConfig
from geoface_model.data import GeoFaceDataset
from geoface_model.evaluate import EvalParams, aggregate, evaluate_sample, save_sample
from geoface_model.generate import load_pipeline
from geoface_model.report import loss_figure, overlay_figure, sample_grid, write_report

DATA, FITS, HEAD, MODEL = Path("data/dataset"), Path("data/fits"), Path("data/head_model"), Path("models/geoface")
OUT, PLOTS, METRICS = Path("data/eval"), Path("plots/eval"), Path("metrics/eval.json")


def _tmp(p: Path) -> Path:
    t = make_temp_dir(p)
    return t


def load_params(params: dict) -> EvalParams:
    return build_config(EvalParams, params.get("eval"), "params.yaml:eval")


def main() -> None:
    p = load_params(read_params())
    gutter = int((read_params().get("uv") or {}).get("gutter", 4))
    cfg_path = MODEL / "geoface_config.json"
    if not cfg_path.is_file():
        raise SystemExit(f"{cfg_path}: missing (the train stage writes it beside the model; run `dvc repro train`)")
    cfg = GeoFaceConfig.from_sections(**{k: v for k, v in json.loads(cfg_path.read_text()).items()
                                         if k in ("tokens", "model", "loss", "train")}, where=str(cfg_path))
    fits = {f.parent.relative_to(FITS).as_posix(): load_sequence_fit(f.parent) for f in sorted(FITS.glob("*/*/fit.npz"))}
    if not fits:
        raise SystemExit(f"{FITS}: no fit.npz (run the fit stage)")
    any_fit = next(iter(fits.values()))
    head = load_head_model(HEAD, n_shape=any_fit["shape"].shape[1], n_expr=any_fit["expr"].shape[1])
    pipe = load_pipeline(MODEL, head, cfg, scheduler=p.scheduler, gutter=gutter)
    pipe.set_progress_bar_config(disable=True)
    ds = GeoFaceDataset(DATA, p.split, n_ref=1, n_tgt=p.n_targets, random_views=False)
    n = len(ds) if p.max_samples is None else min(len(ds), p.max_samples)
    faces = head.faces.numpy()

    out_tmp, plots_tmp = _tmp(OUT), _tmp(PLOTS)
    results, failures, t0 = [], [], time.perf_counter()
    try:
        for i in tqdm(range(n), desc="evaluate"):
            s, j = ds.items[i]
            info = ds.metas[s].samples[j]
            key = f"{info['subject']}/{info['sequence']}"
            try:
                fit = fits.get(key)
                if fit is None:
                    raise ValueError(f"no fit for {key} in {FITS}")
                k = np.flatnonzero(fit["frame"] == int(info["frame"]))
                if len(k) != 1 or not bool(fit["ok"][k[0]]):
                    raise ValueError(f"frame {info['frame']} of {key} has no successful fit")
                r = evaluate_sample(pipe, head, ds, i, fit, int(k[0]), p, cfg)
            except Exception as e:  # one bad sample is recorded and skipped
                failures.append({"sample": f"{key}/{int(info['frame']):05d}", "error": f"{type(e).__name__}: {e}"})
                traceback.print_exc()
                continue
            results.append(r)
            stem = r.name.replace("/", "_")
            save_sample(out_tmp / stem, r, faces, p.export_3dgs)
            write_png(plots_tmp / "samples" / f"{stem}.png", sample_grid(r, faces))
        if not results:
            raise SystemExit(f"evaluate: every sample failed: {failures}")
        summary = {"split": p.split, "n_samples": len(results), "n_failed": len(failures), "n_targets": p.n_targets,
                   **aggregate(results), "s_per_sample": (time.perf_counter() - t0) / len(results),
                   "num_inference_steps": p.num_inference_steps, "scheduler": p.scheduler,
                   "notes": sorted({note for r in results for note in r.notes}), "failures": failures}
        views = [v for r in results for v in r.views]
        write_csv(plots_tmp / "views.csv", pd.DataFrame(views))
        figs = []
        ov = overlay_figure(results[0], faces)
        write_png(plots_tmp / "overlay.png", ov)
        figs.append((f"generated views of {results[0].name}" +
                     (" with the generated mesh overlaid" if results[0].vertices is not None else " (no mesh)"), ov))
        loss = loss_figure("plots/train/loss.csv")
        if loss is not None:
            figs.append(("training loss (plots/train/loss.csv)", loss))
        figs += [(f"sample {r.name}", sample_grid(r, faces)) for r in results]
        weights = sorted(MODEL.glob("*.safetensors"))
        provenance = {"model": str(MODEL), "model_sha256": {w.name: sha256_file(w) for w in weights},
                      "config": cfg.to_dict(), "eval": p.__dict__,
                      "shards": {str(q): sha256_file(q) for q in sorted(DATA.glob(f"**/*.safetensors"))}}
        train_json = Path("metrics/train.json")
        write_report(plots_tmp / "report.html", summary, [{"sample": r.name, **r.metrics} for r in results], views, figs,
                     provenance, json.loads(train_json.read_text()) if train_json.is_file() else None)
        replace_dir(out_tmp, OUT)
        replace_dir(plots_tmp, PLOTS)
    except BaseException:
        shutil.rmtree(out_tmp, ignore_errors=True)
        shutil.rmtree(plots_tmp, ignore_errors=True)
        raise
    write_json(METRICS, summary)
    print(f"evaluate: {len(results)} sample(s), {len(failures)} failed; psnr {summary['psnr']}, ssim {summary['ssim']}, "
          f"tsed {summary['tsed']} (gt {summary['gt_tsed']}), geometry {summary['geometry_error_mm']} mm, "
          f"attention hit rate {summary['attention_hit_rate']} (chance {summary['attention_chance']}); "
          f"report {PLOTS / 'report.html'}")


if __name__ == "__main__":
    run(main)
