"""`geoface` subcommands of the geometry toolkit: head-model build|validate|convert, import, landmarks, fit, uv,
correspondences. Each calls the same library function as its DVC stage."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .base import DATA_FORCE, CliError, add_executor, check_out, command, executor_of, need, show, writable_file

HEAD = ("head_model", "geoface.steps.head_model:HeadModelParams")
IMPORT = [("captures", "pipelines.common:ImportConfig", ("source", "root")), ("captures.synthetic", "pipelines.synthetic:SyntheticConfig")]
LANDMARKS = ("landmarks", "flame_fitting.landmarks.capture:LandmarksParams")
FIT = ("fit", "flame_fitting.fit.config:FitConfig")
UV = ("uv", "flame_fitting.uv.batch:UVParams")
CORR = ("correspondences", "flame_fitting.uv.batch:CorrespondenceParams")
TOKENS = ("tokens", "geoface_model.config:TokensConfig")
SOURCES = ("synthetic", "nersemble", "renderme360", "colmap", "transforms_json", "folder")
# the input folders of the data commands, as their --help says each positional: what it is and what writes it
FOLDERS = {"captures": "canonical capture folder (the captures stage; `geoface import --out`)",
           "fits": "fits folder (the fit stage; OUT/fits of `geoface fit --out OUT`)",
           "uv": "UV folder (the uv stage; `geoface uv --out`)",
           "correspondences": "correspondences folder (the correspondences stage; `geoface correspondences --out`)",
           "head_model": "head model folder (the head_model stage; `geoface head-model build --out`, or a FLAME "
                         "folder)"}


def head_build(args, cfg) -> None:
    from geoface.steps.head_model import build_head_model

    check_out(args.out, [cfg.path], args.force, kind="head model")
    writable_file(args.preview, "--preview")
    writable_file(args.metrics, "--metrics")
    show(build_head_model(args.out, args.preview, cfg, metrics_path=args.metrics))


def head_validate(args) -> None:
    from flame_fitting.head.flame_io import validate_flame_folder

    show(validate_flame_folder(need(args.folder, "FOLDER", "dir")))


def head_convert(args) -> None:
    from flame_fitting.head.flame_io import convert_flame_pickle

    show(convert_flame_pickle(need(args.src, "SRC", "file"), args.dst, overwrite=args.force))


def import_keys(args) -> None:
    """--set keys of the other kind of source are refused, not ignored: the synthetic generator's are synthetic.KEY,
    an imported dataset's are bare (`--set subjects=3` for synthetic meant synthetic.subjects)."""
    for pair in args.set:
        key = pair.partition("=")[0]
        synthetic_key = key.startswith("synthetic.")
        if args.source == "synthetic" and not synthetic_key:
            raise CliError(f"--set {key}: a setting of imported datasets, not used by the synthetic source (its "
                           f"settings are synthetic.KEY, e.g. --set synthetic.{key}=...; `geoface import --help`)")
        if args.source != "synthetic" and synthetic_key:
            raise CliError(f"--set {key}: a setting of the synthetic source, not used when importing {args.source}")


def import_(args, import_cfg, synthetic_cfg) -> None:
    from flame_fitting.core.fileio import nested
    from geoface.steps.captures import CaptureSource, make_captures

    if args.source == "synthetic":
        need(args.head_model, "--head-model", "dir")
        check_out(args.out, [args.head_model], args.force, kind="capture")
    else:
        if args.root is None:
            raise CliError(f"ROOT is needed for source {args.source}")
        need(args.root, "ROOT")
    writable_file(args.metrics, "--metrics")
    for option, path in (("--metrics", args.metrics), ("--sheets", args.sheets)):
        if path is not None and args.root is not None and nested(path, args.root):
            raise CliError(f"{option} {path} is inside the input {args.root}; an output never replaces input files")
    if args.sheets is not None and Path(args.sheets).exists() and not Path(args.sheets).is_dir():
        raise CliError(f"--sheets {args.sheets} is a file; give a folder for the contact sheets")
    src = CaptureSource(args.source, None if args.root is None else str(args.root))
    cfg = synthetic_cfg if args.source == "synthetic" else import_cfg
    show(make_captures(args.head_model, args.out, args.sheets, src, cfg, metrics_path=args.metrics,
                       overwrite=args.force))


def landmarks(args, cfg) -> None:
    from flame_fitting.landmarks.capture import detect_folder

    ex = executor_of(args)
    need(args.capture, "CAPTURE", "dir")
    writable_file(args.metrics, "--metrics")
    show(detect_folder(args.capture, args.out, cfg, metrics_path=args.metrics, overwrite=args.force,
                       executor=ex))


def fit(args, cfg) -> None:
    from flame_fitting.core.executor import open_executor
    from flame_fitting.core.fileio import mark_output, write_json
    from flame_fitting.fit.run import fit_folder
    from flame_fitting.formats.capture import load_capture
    from flame_fitting.head.head_model import load_head_model
    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder

    ex = executor_of(args)
    capture, head, out = need(args.capture, "CAPTURE", "dir"), Path(args.head_model), Path(args.out)
    if args.refine_cameras:
        cfg = dataclasses.replace(cfg, refine_cameras=True)
        cfg.validate()
    subs = ("fits", "overlays") if args.landmarks else ("landmarks", "fits", "overlays")
    # checked before any work, never replaces foreign data: OUT itself (it gets cost.csv and metrics.json beside
    # the folders, so a user's folder is refused) and each folder in it
    check_out(out, [capture, head, args.landmarks], args.force, kind="fit run")
    kinds = {"landmarks": "landmarks", "fits": "fit", "overlays": "fit previews"}
    for sub in subs:
        check_out(out / sub, [capture, head, args.landmarks], args.force, kind=kinds[sub])
    if not head.is_dir():
        raise CliError(f"--head-model {head} does not exist (run `dvc repro head_model` or `geoface head-model build`, "
                       "or pass a FLAME folder in smplx layout; see docs/head_model.md)")
    load_head_model(head)  # a folder that is not a head model stops here, before any detection is written
    lmk = Path(args.landmarks) if args.landmarks else out / "landmarks"
    if args.landmarks:
        need(lmk, "--landmarks", "dir")
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers {args.workers}: must be at least 1")
    workers = LandmarksParams(workers=args.workers or min(os.cpu_count() or 1, 256))
    load_capture(capture)  # not a capture: one line before OUT is created
    metrics = {}
    with open_executor(ex):  # a Ray cluster that does not answer: one line before OUT is created (both steps use it)
        mark_output(out, "fit run")
        if not args.landmarks:
            metrics["landmarks"] = detect_folder(capture, lmk, workers, overwrite=args.force, executor=ex)
        metrics["fit"] = fit_folder(capture, lmk, head, out / "fits", cfg, out / "overlays", out / "cost.csv",
                                    overwrite=args.force, executor=ex)
    write_json(out / "metrics.json", metrics)
    show(metrics)


def uv(args, cfg) -> None:
    from flame_fitting.uv.batch import bake_fits

    ex = executor_of(args)
    fits, head = need(args.fits, "FITS", "dir"), need(args.head_model, "HEAD_MODEL", "dir")
    check_out(args.out, [fits, head, args.previews], args.force, kind="uv")
    if args.previews:
        check_out(args.previews, [fits, head, args.out], args.force, kind="uv previews")
    writable_file(args.metrics, "--metrics")
    show(bake_fits(fits, head, args.out, args.previews, cfg, metrics_path=args.metrics, executor=ex))


def correspondences(args, cfg, tok) -> None:
    from flame_fitting.uv.batch import correspondences_for_fits

    ex = executor_of(args)
    ins = [need(getattr(args, k), k.upper(), "dir") for k in ("fits", "uv", "captures", "head_model")]
    check_out(args.out, ins + [args.previews], args.force, kind="correspondences")
    if args.previews:
        check_out(args.previews, ins + [args.out], args.force, kind="correspondences previews")
    writable_file(args.metrics, "--metrics")
    show(correspondences_for_fits(*ins, args.out, args.previews, cfg, tok.app_tokens, tok.geo_tokens,
                                  metrics_path=args.metrics, executor=ex))


def register(sub, chosen) -> None:
    """Add the geometry subcommands to `sub`; `chosen(name)`: whether that subcommand's --help is asked for."""
    hm = sub.add_parser("head-model", help="build, validate or convert a head model (FLAME folder layout)",
                        description="build, validate or convert a head model (FLAME folder layout)")
    hsub = hm.add_subparsers(dest="action", required=True, metavar="build|validate|convert")
    p = command(hsub, "build", "build the stand-in head model (or copy a validated FLAME folder: --set path=DIR), "
                "as the head_model stage does", head_build, [HEAD], chosen("head-model"))
    p.add_argument("--out", required=True, help="head model folder to write")
    p.add_argument("--preview", help="preview PNG to write")
    p.add_argument("--metrics", help="metrics JSON to write")
    p = command(hsub, "validate", "check a head model folder; prints what was found", head_validate, force=None)
    p.add_argument("folder", metavar="FOLDER", help="head model folder to check")
    p = command(hsub, "convert", "FLAME pickle (chumpy or plain) -> plain npz", head_convert,
                force="replace DST if it exists (without it an existing file is never overwritten)")
    p.add_argument("src", metavar="SRC", help="FLAME model pickle (e.g. generic_model.pkl)")
    p.add_argument("dst", metavar="DST", help="e.g. DST_FOLDER/FLAME_NEUTRAL.npz")

    p = command(sub, "import", "convert a dataset to the canonical capture format (or render synthetic captures), "
                "as the captures stage does", import_, IMPORT, chosen("import"))
    p.add_argument("source", choices=SOURCES, metavar="SOURCE", help="one of " + ", ".join(SOURCES))
    p.add_argument("root", metavar="ROOT", nargs="?", help="dataset folder (not for synthetic)")
    p.add_argument("--out", required=True, help="capture folder to write")
    p.add_argument("--head-model", default="data/head_model", help="synthetic: head model folder (default: %(default)s)")
    p.add_argument("--sheets", help="folder for a contact sheet PNG per subject")
    p.add_argument("--metrics", help="metrics JSON to write")
    p.set_defaults(check_set=import_keys, used_sections=lambda a: [IMPORT[a.source == "synthetic"][0]])

    p = command(sub, "landmarks", "MediaPipe landmarks of every image of a canonical capture (the landmarks stage)",
                landmarks, [LANDMARKS], chosen("landmarks"), force=DATA_FORCE)
    p.add_argument("capture", metavar="CAPTURE", help="canonical capture folder")
    p.add_argument("--out", required=True, help="landmark folder to write")
    p.add_argument("--metrics", help="metrics JSON to write")
    add_executor(p)

    p = command(sub, "fit", "landmarks + multi-view FLAME fit on a canonical capture (the landmarks and fit stages); "
                "writes OUT/landmarks, OUT/fits, OUT/overlays, OUT/cost.csv, OUT/metrics.json", fit, [FIT],
                chosen("fit"), force=DATA_FORCE)
    p.add_argument("capture", metavar="CAPTURE", help="canonical capture folder")
    p.add_argument("--out", required=True, help="folder to write (landmarks/, fits/, overlays/, cost.csv, metrics.json)")
    p.add_argument("--head-model", default="data/head_model", help="FLAME-layout folder (default: %(default)s)")
    p.add_argument("--landmarks", help="use this landmark folder instead of detecting into OUT/landmarks")
    p.add_argument("--refine-cameras", action="store_true", help="bundle adjustment of the cameras")
    p.add_argument("--workers", type=int, default=None, help="landmark detection threads (default: all cores)")
    add_executor(p)

    p = command(sub, "uv", "canonical UV position map of every fitted frame (the uv stage)", uv, [UV], chosen("uv"),
                force=DATA_FORCE)
    for name in ("fits", "head_model"):
        p.add_argument(name, metavar=name.upper(), help=FOLDERS[name])
    p.add_argument("--out", required=True, help="UV folder to write")
    p.add_argument("--previews", help="folder for PNG previews and OBJ round trips")
    p.add_argument("--metrics", help="metrics JSON to write")
    add_executor(p)

    p = command(sub, "correspondences", "pixel -> UV correspondences and token targets of every fitted frame (the "
                "correspondences stage)", correspondences, [CORR, TOKENS], chosen("correspondences"),
                force=DATA_FORCE)
    for name in ("fits", "uv", "captures", "head_model"):
        p.add_argument(name, metavar=name.upper(), help=FOLDERS[name])
    p.add_argument("--out", required=True, help="correspondence folder to write")
    p.add_argument("--previews", help="folder for overlay and Figure 9 PNGs")
    p.add_argument("--metrics", help="metrics JSON to write")
    add_executor(p)
