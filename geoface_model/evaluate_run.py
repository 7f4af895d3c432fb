"""The `evaluate` stage's work (also `geoface evaluate`): generate views + geometry for held-out subjects and
measure them (per-sample maths in geoface_model/evaluate.py; definitions in docs/evaluation.md).

The model folder holds the config it was trained with (geoface_config.json beside the weights). For every sample
of the `split` shards: the most frontal view is the reference, `n_targets` views are generated with their UV
position map and mesh, and measured. A sample that fails is recorded and skipped. Checked before any work (one
error line, nothing written): OUT and PLOTS are two folders neither inside the other, the model's config is a valid
JSON config, the report's loss CSV / training metrics are readable files, the LPIPS weights load. Writes:
  METRICS (JSON)           means over samples: psnr, ssim (+ psnr_fg, ssim_fg inside the head mask), lpips (null +
                           status without local weights), tsed, landmark_fit_rmse_px, mesh_alignment_px,
                           geometry_error_mm, attention_hit_rate (+ per noise band), the same consistency metrics on
                           the ground-truth views (gt_*), the baselines (baseline_<name>_<metric>, from the training
                           split: geoface_model/baselines.py), counts, failures
  PLOTS/views.csv          per generated view: yaw, PSNR, SSIM (DVC plot)
  PLOTS/samples/*.png      per-sample grids (reference, ground truth, generated, mesh overlay, UV maps)
  PLOTS/overlay.png        the generated mesh over the generated views of the first sample
  PLOTS/report.html        everything above in one offline HTML file
  OUT/<sample>/            views/*.png, reference.png, mesh.obj, posmap.npy, cameras.json (canonical head frame),
                           gs/ (3DGS start: transforms.json, COLMAP text, points3d.ply) when `export_3dgs`
<sample> is <subject>_<sequence>_<frame:05d>, with '~' and a hash of the name when that is too long or another
sample's too (shard_names.py); a dataset holding one sample twice is refused before any work.
"""
from __future__ import annotations

import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.names import terminal_safe
from flame_fitting.core.fileio import make_temp_dir, nested, replace_dir, sha256_file, write_csv, write_json, write_png
from flame_fitting.core.json_files import read_json_object
from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.formats.lineage import captures_version_of
from flame_fitting.head.head_model import load_head_model

from .baselines import TrainingStats, band_ranges, training_stats
from .data import GeoFaceDataset, ShardError
from .evaluate import EvalParams, aggregate, canonical_transform, evaluate_sample, save_sample
from .generate import load_pipeline, read_model_config
from .lineage import MAX_CARD_BYTES
from .metrics import load_lpips
from .report import loss_figure, overlay_figure, sample_grid, write_report
from .shard_names import sample_name, sample_stems


class EvaluateError(GeofaceError, ValueError):
    """An evaluation that cannot start (missing model config or fits, clashing outputs, unreadable report inputs)
    or in which every sample failed."""


def check_outputs(out: Path, plots: Path, metrics_path: Path | str | None) -> None:
    """Refuse, before any work, a samples folder and plots folder that are the same or one inside the other (one
    would replace or hide the other), and a metrics path that is a folder or one of them."""
    if nested(out, plots):
        how = "the same folder" if out.resolve() == plots.resolve() else "one is inside the other"
        raise EvaluateError(f"--out {out} and --plots {plots}: {how}; give two separate folders")
    if metrics_path is not None:
        m = Path(metrics_path)
        if m.resolve() in (out.resolve(), plots.resolve()):
            raise EvaluateError(f"--metrics {m}: is the --out or --plots folder; give the path of a file")
        if m.is_dir():
            raise EvaluateError(f"--metrics {m}: is a folder; give the path of a file")


def read_report_inputs(loss_csv: Path | str | None, train_metrics: Path | str | None) -> dict | None:
    """Check the training loss CSV and read the training metrics JSON shown in the report, before any work (each
    optional; given, it must be a readable file): the metrics object, or None."""
    if loss_csv is not None:
        f = Path(loss_csv)
        if not f.is_file():
            raise EvaluateError(f"{f}: the training loss CSV is {'a folder' if f.is_dir() else 'missing'}")
        try:
            columns = pd.read_csv(f, nrows=1).columns
        except (OSError, ValueError, UnicodeDecodeError) as e:  # pandas' parser errors are ValueErrors
            why = (str(e).splitlines() or [""])[0]
            raise EvaluateError(f"{f}: not a readable CSV ({type(e).__name__}: {why})") from None
        if "step" not in columns:
            raise EvaluateError(f"{f}: not a training loss CSV (no 'step' column)")
    if train_metrics is None:
        return None
    return read_json_object(train_metrics, EvaluateError, MAX_CARD_BYTES, "metrics file")


def baseline_stats(dataset: Path, fit_of: dict, head) -> TrainingStats | None:
    """The training split's baseline statistics (geoface_model/baselines.py), None when there is no training split.
    The camera table uses each training sample's canonical frame from its fit (samples without a fit are left out)."""
    try:
        train = GeoFaceDataset(dataset, "train", n_ref=1, n_tgt=1, random_views=False)
    except ShardError as e:
        if "no shard of split" in str(e):
            return None
        raise

    def frame_of(info: dict):
        fit = fit_of.get(f"{info['subject']}/{info['sequence']}")
        if fit is None:
            return None
        k = np.flatnonzero(fit["frame"] == int(info["frame"]))
        if len(k) != 1 or not bool(fit["ok"][k[0]]):
            return None
        return canonical_transform(head, fit, int(k[0]))[0]

    return training_stats(train, frame_of)


def output_stems(ds: GeoFaceDataset, n: int) -> list[str]:
    """The file name of each of the first `n` samples' outputs (shard_names.py `sample_stems`: collision-free), before
    any work; a sample held twice (two shards, or one shard twice) is refused naming both places."""
    seen: dict[str, str] = {}
    for i in range(n):
        s, j = ds.items[i]
        name, where = sample_name(ds.metas[s].samples[j]), f"{ds.paths[s]}#{j}"
        if (other := seen.setdefault(name, where)) != where:
            raise EvaluateError(f"{where}: sample {terminal_safe(name)} is also {other}: a dataset holds each frame "
                                "once (its outputs and its place in the means would be the same)")
    return sample_stems(list(seen))


def evaluate_model(model_dir: Path | str, dataset: Path | str, fits: Path | str, head_model: Path | str,
                   out: Path | str, plots: Path | str, p: EvalParams, gutter: int = 4,
                   loss_csv: Path | str | None = None, train_metrics: Path | str | None = None,
                   metrics_path: Path | str | None = None) -> dict:
    """Evaluate the model in `model_dir` on the `p.split` shards of `dataset` (module docstring); returns (and
    writes) the summary. `loss_csv` / `train_metrics`: the training loss curve and metrics shown in the report."""
    model_dir, dataset, fits, out, plots = map(Path, (model_dir, dataset, fits, out, plots))
    check_outputs(out, plots, metrics_path)
    cfg_path = model_dir / "geoface_config.json"
    if not cfg_path.is_file():
        raise EvaluateError(f"{cfg_path}: missing (the train stage writes it beside the model; run `dvc repro train`)")
    cfg = read_model_config(cfg_path, EvaluateError)
    train_info = read_report_inputs(loss_csv, train_metrics)
    if p.lpips_weights is not None:
        load_lpips(p.lpips_weights)  # unusable weights: one error now, not one traceback per sample
    ds = GeoFaceDataset(dataset, p.split, n_ref=1, n_tgt=p.n_targets, random_views=False,  # names checked
                        views_asked=f"1 reference + eval.n_targets = {p.n_targets}")
    n = len(ds) if p.max_samples is None else min(len(ds), p.max_samples)
    stems = output_stems(ds, n)
    fit_of = {f.parent.relative_to(fits).as_posix(): load_sequence_fit(f.parent) for f in sorted(fits.glob("*/*/fit.npz"))}
    if not fit_of:
        raise EvaluateError(f"{fits}: no fit.npz (run the fit stage)")
    any_fit = next(iter(fit_of.values()))
    head = load_head_model(head_model, n_shape=any_fit["shape"].shape[1], n_expr=any_fit["expr"].shape[1])
    pipe = load_pipeline(model_dir, head, cfg, scheduler=p.scheduler, gutter=gutter, device=p.device)
    pipe.set_progress_bar_config(disable=True)
    faces = head.faces.numpy()
    stats = baseline_stats(dataset, fit_of, head)

    out_tmp, plots_tmp = make_temp_dir(out), make_temp_dir(plots)
    results, failures, t0 = [], [], time.perf_counter()
    try:
        for i in tqdm(range(n), desc="evaluate"):
            s, j = ds.items[i]
            info = ds.metas[s].samples[j]
            key = f"{info['subject']}/{info['sequence']}"
            try:
                fit = fit_of.get(key)
                if fit is None:
                    raise ValueError(f"no fit for {key} in {fits}")
                k = np.flatnonzero(fit["frame"] == int(info["frame"]))
                if len(k) != 1 or not bool(fit["ok"][k[0]]):
                    raise ValueError(f"frame {info['frame']} of {key} has no successful fit")
                r = evaluate_sample(pipe, head, ds, i, fit, int(k[0]), p, cfg, stats)
            except Exception as e:  # one bad sample is recorded and skipped
                failures.append({"sample": sample_name(info), "error": f"{type(e).__name__}: {e}"})
                if isinstance(e, GeofaceError):  # about the input: its one line says it; anything else is a bug
                    tqdm.write(terminal_safe(f"evaluate: sample {failures[-1]['sample']} failed: {e}"), file=sys.stderr)
                else:
                    traceback.print_exc()
                continue
            results.append(r)
            stem = stems[i]
            save_sample(out_tmp / stem, r, faces, p.export_3dgs)
            write_png(plots_tmp / "samples" / f"{stem}.png", sample_grid(r, faces))
        if not results:
            raise EvaluateError(f"evaluate: every sample failed: {failures}")
        summary = {"captures_version": captures_version_of(dataset), "split": p.split, "n_samples": len(results), "n_failed": len(failures), "n_targets": p.n_targets,
                   **aggregate(results), "s_per_sample": (time.perf_counter() - t0) / (len(results) + len(failures)),
                   "num_inference_steps": p.num_inference_steps, "scheduler": p.scheduler, "device": str(pipe.device),
                   "noise_bands": band_ranges(cfg.train.num_train_timesteps),
                   "baseline_training_samples": stats.n_samples if stats is not None else 0,
                   "notes": sorted({note for r in results for note in r.notes} |
                                   ({"no training split: no mean-colour, mean-UV or camera-only baseline"}
                                    if stats is None else set()) |
                                   ({"split 'train': the mean-colour, mean-UV and camera-only baselines were computed "
                                     "from the evaluated samples themselves (they are the ground truth's own mean)"}
                                    if p.split == "train" and stats is not None else set())), "failures": failures}
        views = [v for r in results for v in r.views]
        write_csv(plots_tmp / "views.csv", pd.DataFrame(views))
        figs = []
        ov = overlay_figure(results[0], faces)
        write_png(plots_tmp / "overlay.png", ov)
        figs.append((f"generated views of {results[0].name}" +
                     (" with the generated mesh overlaid" if results[0].vertices is not None else " (no mesh)"), ov))
        loss = loss_figure(loss_csv) if loss_csv is not None else None
        if loss is not None:
            figs.append((f"training loss ({loss_csv})", loss))
        figs += [(f"sample {r.name}", sample_grid(r, faces)) for r in results]
        weights = sorted(model_dir.glob("*.safetensors"))
        provenance = {"model": str(model_dir), "model_sha256": {w.name: sha256_file(w) for w in weights},
                      "config": cfg.to_dict(), "eval": p.__dict__,
                      "shards": {str(q): sha256_file(q) for q in sorted(dataset.glob("**/*.safetensors"))}}
        write_report(plots_tmp / "report.html", summary, [{"sample": r.name, **r.metrics} for r in results], views,
                     figs, provenance, train_info)
        replace_dir(out_tmp, out, kind="eval samples")
        replace_dir(plots_tmp, plots, kind="eval plots")
    except BaseException:
        shutil.rmtree(out_tmp, ignore_errors=True)
        shutil.rmtree(plots_tmp, ignore_errors=True)
        raise
    if metrics_path is not None:
        write_json(metrics_path, summary)
    return summary
