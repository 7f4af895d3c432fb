"""The `fit` stage's work (also `geoface fit`): fit every sequence of a canonical capture from its landmarks, one
work unit per sequence (flame_fitting/core/units.py: a sequence whose images, cameras, landmarks, head model, fit
params and code did not change keeps its fit as it is), and write the fits, the overlays, the cost per iteration of
the first sequence and the metrics over every sequence."""
from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.fileio import check_output_dir, write_csv, write_json
from flame_fitting.core.unit_keys import Unit, code_digest, tree_digest, unit_key
from flame_fitting.core.units import run_units, write_unit_failures
from flame_fitting.formats.capture import capture_version, load_capture
from flame_fitting.formats.lineage import check_same_capture, write_lineage
from flame_fitting.formats.landmarks import load_landmarks
from flame_fitting.formats.units import capture_unit_hashes, capture_units, unit_capture, unit_payload
from flame_fitting.head.shared import shared_head_model

from .capture import embedding_used, face_region_of, fit_one_sequence, resolve_silhouette_mode
from .capture_results import summarise, unpack_medians
from .config import FitConfig

ROOT = Path(__file__).resolve().parents[1]  # flame_fitting/
# the code a fit depends on (landmark files are read through `formats`; no `landmarks` module is imported, and a
# change there re-ran every fit)
ROOMS = ("__init__.py", "core", "geometry", "formats", "head", "fit")


def fit_folder(captures: Path | str, landmarks: Path | str, head_model: Path | str, out: Path | str, cfg: FitConfig,
               overlays: Path | str | None = None, cost_csv: Path | str | None = None,
               metrics_path: Path | str | None = None, overwrite: bool = True,
               executor: ExecutorConfig | None = None) -> dict:
    """Fit the capture at `captures` with the landmark folder `landmarks` and the head model folder `head_model`
    into `out` (an existing one only if geoface wrote it and `overwrite`), the sequences whose inputs changed only,
    on `executor`. Returns (and writes) the public metrics (+ units run / kept / removed / failed)."""
    check_output_dir(out, [captures, landmarks, head_model], overwrite, kind="fit")
    cap, landmarks = load_capture(captures, check_files=False), Path(landmarks)  # units check their images
    check_same_capture(captures, landmarks, "landmarks")
    cfg = resolve_silhouette_mode(cfg, cap)
    head, code = tree_digest(head_model), code_digest(*(ROOT / r for r in ROOMS))
    units = [Unit(u.subject, u.sequence, unit_key(
        "fit", capture=capture_unit_hashes(cap, u.subject, u.sequence), params=asdict(cfg), head=head, code=code,
        landmarks=tree_digest(unit_landmarks(landmarks, u.subject, u.sequence)))) for u in capture_units(cap)]
    _model(str(head_model), cfg.n_shape, cfg.n_expr)  # read and checked here once: a bad or malicious head model
    # fails the stage before any output exists, instead of failing every unit
    fn = partial(fit_unit, str(cap.root), str(landmarks), str(head_model), cfg)
    with open_executor(executor or ExecutorConfig(workers=1)) as ex:
        run = run_units(ex, fn, units, out, "fit", extras=overlays, inputs=[captures, landmarks, head_model],
                        source=captures, payload=partial(unit_payload, cap))
    out = Path(out)
    write_unit_failures(out / "failures.json", run)
    recs = run.records
    for name in ("overlays_skipped", "masks_skipped"):
        rows = [r for k in recs for r in recs[k][name]]
        (write_json(out / f"{name}.json", rows, indent=1) if rows else (out / f"{name}.json").unlink(missing_ok=True))
    # the records alone (key files, which run_units read): no kept sequence's residuals.parquet is opened; only the
    # first sequence's history.csv, for cost_csv
    metrics = summarise([unpack_medians(recs[k]["median_px"]) for k in recs],
                        [e for k in recs for e in recs[k]["errors"]], run.failures,
                        [pd.read_csv(out / k / "history.csv").assign(subject=k.split("/")[0],
                                                                     sequence=k.split("/", 1)[1])
                         for k in list(recs)[:1]],
                        [(run.timings.get(k, {}).get("total_s", np.nan), recs[k]["n_fit"]) for k in recs],
                        [s for k in recs for s in recs[k]["statuses"]])
    model = _model(str(head_model), cfg.n_shape, cfg.n_expr)
    history = metrics.pop("_history")
    if cost_csv is not None:
        write_csv(cost_csv, history)
    metrics = {"captures_version": capture_version(captures), **{k: v for k, v in metrics.items() if k[0] != "_"}}
    write_lineage(out, captures_version=metrics["captures_version"], head_model_sha256=head)
    metrics.update({"mediapipe_embedding": embedding_used(model, cfg), "silhouette_weight": float(cfg.silhouette_weight),
                    "silhouette_mode": cfg.silhouette_mode,
                    "silhouette_sequences": int(sum(r["silhouette_used"] for r in recs.values())),
                    "masks_skipped": sum(len(r["masks_skipped"]) for r in recs.values()),
                    "overlays_skipped": sum(len(r["overlays_skipped"]) for r in recs.values()), **run.summary()})
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def unit_landmarks(landmarks: Path, subject: str, sequence: str) -> Path:
    """The landmark folder of one sequence (the landmarks stage's layout), or the whole folder (a single-file one)."""
    return landmarks / subject / sequence if (landmarks / subject / sequence).is_dir() else landmarks


def _model(head_model: str, n_shape, n_expr):
    return shared_head_model(head_model, n_shape=n_shape, n_expr=n_expr)  # once per process and folder content


def fit_unit(captures: str, landmarks: str, head_model: str, cfg: FitConfig, unit: Unit, tmp: Path,
             extras: Path | None) -> tuple[dict, list[str]]:
    """One fit unit (runs in a worker): fit one sequence into `tmp`, its overlays into `extras`."""
    cap = unit_capture(captures, unit)
    ls = load_landmarks(unit_landmarks(Path(landmarks), unit.subject, unit.sequence))
    model = _model(head_model, cfg.n_shape, cfg.n_expr)
    rec = fit_one_sequence(cap, ls, model, cfg, unit.subject, unit.sequence, tmp, extras, face_region_of(model))
    return json.loads(json.dumps(rec, default=_plain)), list(rec["overlays"])


def _plain(o):
    """JSON form of numpy scalars in a record."""
    return o.item() if hasattr(o, "item") else str(o)
