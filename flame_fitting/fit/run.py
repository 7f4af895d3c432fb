"""The `fit` stage's work (also `geoface fit`): fit every sequence of a canonical capture from its landmarks and
write the fits, the overlays, the cost per iteration of the first sequence and the metrics."""
from __future__ import annotations

from pathlib import Path

from flame_fitting.core.fileio import write_csv, write_json
from flame_fitting.formats.capture import capture_version, load_capture
from flame_fitting.formats.lineage import tree_hash, write_lineage
from flame_fitting.formats.landmarks import load_landmarks
from flame_fitting.head.head_model import load_head_model

from .capture import fit_capture
from .config import FitConfig


def fit_folder(captures: Path | str, landmarks: Path | str, head_model: Path | str, out: Path | str, cfg: FitConfig,
               overlays: Path | str | None = None, cost_csv: Path | str | None = None,
               metrics_path: Path | str | None = None, overwrite: bool = True) -> dict:
    """Fit the capture at `captures` with the landmark folder `landmarks` and the head model folder `head_model`;
    `out` is replaced only if geoface wrote it and `overwrite`. Returns (and writes) the public metrics."""
    cap, ls = load_capture(captures), load_landmarks(landmarks)
    model = load_head_model(head_model, n_shape=cfg.n_shape, n_expr=cfg.n_expr)
    metrics = fit_capture(cap, ls, model, cfg, Path(out), overlay_dir=None if overlays is None else Path(overlays),
                          overwrite=overwrite)
    history = metrics.pop("_history")
    if cost_csv is not None:
        write_csv(cost_csv, history)
    metrics = {"captures_version": capture_version(captures), **{k: v for k, v in metrics.items() if k[0] != "_"}}
    write_lineage(out, captures_version=metrics["captures_version"], head_model_sha256=tree_hash(head_model))
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics
