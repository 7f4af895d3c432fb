"""What the `check_params` stage runs (stages/check_params.py): every section of params.yaml validated by each stage
script's own `load_params`, and the checks that span sections, before any other stage runs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from flame_fitting.core.params import ParamsError, read_params
from geoface.steps.captures import check_view_size
from geoface_model.latents import latent_shape_info
from geoface_model.train_run import config_warnings
from pipelines.synthetic.sampling import split_subjects

STAGES = ("head_model", "captures", "landmarks", "fit", "uv", "correspondences", "dataset", "train", "evaluate")
SECTIONS = STAGES[:6] + ("executor", "tokens", "dataset", "model", "loss", "train", "eval")
STAGES_DIR = Path(__file__).resolve().parents[2] / "stages"  # this checkout's stage scripts


def check_params(path: Path | str = "params.yaml", stages_dir: Path | str = STAGES_DIR) -> list[str]:
    """Validate every section of `path` with the stage scripts' own loaders (in `stages_dir`), the view size
    against the token grid (`check_view_size`) and the settings of different sections that cannot work together
    (`check_combinations`); ParamsError on the first problem. Settings that work but most likely defeat the run's
    purpose are printed as warnings (`train_run.config_warnings`). Returns the sections checked."""
    params = read_params(path)
    if unknown := sorted(set(params) - set(SECTIONS)):
        raise ParamsError(f"{path}: unknown sections {unknown}; known: {list(SECTIONS)}")
    loaded = {}
    for name in STAGES:
        spec = importlib.util.spec_from_file_location(f"geoface_stage_{name}", Path(stages_dir) / f"{name}.py")
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(module)
        loaded[name] = module.load_params(params)
    check_view_size(*loaded["captures"], loaded["correspondences"][1], path)
    check_combinations(loaded, path)
    cfg = loaded["train"]  # a VAE's latent shape is in its folder, read when training starts: pixel space only here
    for warning in config_warnings(cfg, latent_shape_info(None) if cfg.model.vae_path is None else None):
        print(f"check_params: warning: {warning}", file=sys.stderr)
    return sorted(params)


def check_combinations(loaded: dict, path: Path | str = "params.yaml") -> None:
    """ParamsError for values valid one by one that no run can use together, known from params.yaml alone: more
    components fitted or drawn than the head model has (the fit or captures stage would fail), and with the
    synthetic source (whose camera and subject counts params.yaml sets) fewer cameras than a fit, a training sample
    or an evaluated sample needs, an evaluated split without subjects, and fewer training samples than one batch
    (the train or evaluate stage would fail after every data stage had run). `loaded`: stage name -> what its
    `load_params` returned."""
    head, fit, tc = loaded["head_model"], loaded["fit"][0], loaded["train"].train
    src, cap = loaded["captures"]
    ev = loaded["evaluate"][0]
    comps = [("fit", fit.n_shape, fit.n_expr)]
    if src.source == "synthetic":
        comps.append(("captures.synthetic", cap.n_shape, cap.n_expr))
    for where, n_shape, n_expr in comps:
        for key, n, have in (("n_shape", n_shape, head.n_shape), ("n_expr", n_expr, head.n_expr)):
            if n is not None and n > have:
                raise ParamsError(f"{path}: {where}.{key} = {n} is above head_model.{key} = {have}, the components "
                                  f"the head model has; use at most {have} (or null = all of them)")
    if src.source != "synthetic":
        return  # an imported capture's cameras and subjects are known to its stages only
    need = [(fit.min_views, "fit.min_views", "no frame could be fitted"),
            (tc.n_ref + tc.n_tgt, "train.n_ref + train.n_tgt", "a training sample could not be drawn"),
            (1 + ev.n_targets, "1 + eval.n_targets", "the evaluation could not pick its reference and targets")]
    for n, what, why in need:
        if cap.cameras < n:
            raise ParamsError(f"{path}: captures.synthetic.cameras = {cap.cameras} is below {what} = {n}: {why}; "
                              f"use at least {n} cameras")
    split = list(split_subjects([str(i) for i in range(cap.subjects)], cap.split_fractions, cap.seed).values())
    counts = {s: split.count(s) for s in ("train", "val", "test")}
    told = (f"captures.synthetic.subjects = {cap.subjects} with split_fractions {cap.split_fractions} gives "
            f"{counts['train']} train / {counts['val']} val / {counts['test']} test subjects")
    if not counts[ev.split]:
        raise ParamsError(f"{path}: eval.split = {ev.split}: {told}, so nothing would be evaluated; raise the "
                          f"subjects or that split's fraction")
    samples, batch = counts["train"] * cap.frames, tc.batch_size * tc.grad_accum
    if samples < batch:
        raise ParamsError(f"{path}: train.batch_size × train.grad_accum = {batch} is above the {samples} training "
                          f"samples at most ({told}, {cap.frames} frame(s) each): no batch could be drawn")
