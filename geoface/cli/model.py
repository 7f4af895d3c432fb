"""`geoface` subcommands of the model: dataset, train, evaluate, generate, export. Each calls the same library
function as its DVC stage (generate and export: geoface_model.generate / geoface_model.export)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from flame_fitting.core.json_files import read_json_object

from .base import DATA_FORCE, CliError, add_executor, check_out, command, executor_of, need, show, writable_file
from .geometry import FOLDERS, TOKENS, UV

DATASET = ("dataset", "geoface_model.dataset_build:DatasetParams")
TRAIN = [("train", "geoface_model.config:TrainConfig"), TOKENS, ("model", "geoface_model.config:ModelConfig"),
         ("loss", "geoface_model.config:LossConfig")]
EVAL = ("eval", "geoface_model.evaluate:EvalParams")
FILE_FORCE = ("replace the outputs an earlier geoface run wrote: folders with geoface's marker, and the {files} "
              "if their content is geoface's (a folder or file geoface did not write is never replaced)")


def _csv_with(columns: tuple[str, ...]):
    """Whether a file is a CSV whose header starts with `columns` (how geoface's loss CSV begins)."""
    def ours(p: Path) -> bool:
        try:
            with open(p, encoding="utf-8") as f:
                return f.readline(4096).strip().split(",")[:len(columns)] == list(columns)
        except (OSError, UnicodeDecodeError):
            return False
    return ours


def _json_with(keys: tuple[str, ...]):
    """Whether a file is a JSON object holding `keys` (how geoface's metrics JSON of that command looks)."""
    def ours(p: Path) -> bool:
        try:
            data = read_json_object(p, ValueError, 1 << 20)  # missing, a FIFO, too large, not JSON, too deep: not ours
        except ValueError:
            return False
        return all(k in data for k in keys)
    return ours


LOSS_CSV = _csv_with(("step", "loss"))  # geoface_model/checkpoint.py COLUMNS
TRAIN_METRICS = _json_with(("steps", "loss_last"))  # train_model's metrics
EVAL_METRICS = _json_with(("n_samples", "split"))  # evaluate_model's summary


def check_out_file(path: str | Path | None, option: str, force: bool, ours) -> Path | None:
    """Refuse a file output before any work: a folder (or a path under a file); an existing file that `ours(path)`
    does not recognise as geoface's, even with --force; one it does, without --force."""
    p = writable_file(path, option)
    if p is None:
        return None
    if p.exists() or p.is_symlink():
        if not p.is_file() or not ours(p):
            raise CliError(f"{option} {p} exists and was not written by geoface; refusing to replace it: choose "
                           "another path or move it away")
        if not force:
            raise CliError(f"{option} {p} exists (written by geoface); pass --force to replace it")
    return p


def dataset(args, cfg, tok, uv) -> None:
    from geoface_model.dataset_build import build_dataset

    ex = executor_of(args)
    ins = [need(getattr(args, k), k.upper(), "dir") for k in ("captures", "fits", "uv", "correspondences", "head_model")]
    check_out(args.out, ins, args.force, kind="dataset")
    writable_file(args.metrics, "--metrics")
    show(build_dataset(*ins, args.out, cfg, tok, metrics_path=args.metrics, gutter=uv.gutter,
                       executor=ex))


def train(args, train_cfg, tok, model, loss) -> None:
    from geoface_model.config import GeoFaceConfig
    from geoface_model.train_run import scalar_entries, train_model

    data, out = need(args.dataset, "DATASET", "dir"), Path(args.out)
    state = Path(args.state) if args.state else out.parent / f"{out.name}_train_state"
    check_out(out, [data], args.force, kind="model")
    loss_csv = check_out_file(args.loss_csv or out.parent / f"{out.name}_loss.csv", "--loss-csv", args.force,
                              LOSS_CSV)
    check_out_file(args.metrics, "--metrics", args.force, TRAIN_METRICS)
    if state.is_dir() and any(not re.fullmatch(r"[0-9a-f]{16}", p.name) for p in state.iterdir()):
        raise CliError(f"--state {state} holds files that are not geoface training runs; choose another folder")
    cfg = GeoFaceConfig.from_sections(**{k: dataclasses.asdict(c) for k, c in
                                         (("train", train_cfg), ("tokens", tok), ("model", model), ("loss", loss))},
                                      where="--set")
    m = train_model(cfg, data, state, out, loss_csv, metrics_path=args.metrics)
    show(scalar_entries(m))


def evaluate(args, p, uv) -> None:
    from geoface_model.evaluate_run import evaluate_model

    ins = [need(getattr(args, k), k.upper(), "dir") for k in ("model", "dataset", "fits", "head_model")]
    check_out(args.out, ins, args.force, kind="eval samples")
    check_out(args.plots, ins, args.force, kind="eval plots")
    check_out_file(args.metrics, "--metrics", args.force, EVAL_METRICS)
    for option, path in (("--loss-csv", args.loss_csv), ("--train-metrics", args.train_metrics)):
        if path is not None:
            need(path, option, "file")
    show(evaluate_model(*ins, args.out, args.plots, p, uv.gutter, args.loss_csv, args.train_metrics,
                        metrics_path=args.metrics))


def generate(args) -> None:
    from geoface_model.generate import generate_from_photo

    from geoface_model.device import resolve_device

    need(args.photo, "PHOTO", "file")
    resolve_device(args.device)  # a GPU that is not there: said first
    for option, value, low in (("--views", args.views, 1), ("--steps", args.steps, 1), ("--guidance", args.guidance, 0)):
        if value < low:
            raise CliError(f"{option} {value}: must be at least {low}")
    lo, hi = args.yaw_range
    if not -180 <= lo <= hi <= 180:
        raise CliError(f"--yaw-range {lo:g} {hi:g}: give MIN <= MAX, both within -180..180 degrees")
    if args.pitch is not None and not -90 < args.pitch < 90:  # straight above or below: no image up (look_at)
        raise CliError(f"--pitch {args.pitch:g}: give an elevation between -90 and 90 degrees (exclusive)")
    for option, path, made_by in (("--model", args.model, "`dvc repro train` or `geoface train`"),
                                  ("--head-model", args.head_model, "`dvc repro head_model`")):
        if not Path(path).exists():
            raise CliError(f"{option} {path} does not exist (the default is relative to this folder: run from the "
                           f"repository after {made_by}, or pass {option})")
    show(generate_from_photo(args.photo, args.model, args.views, args.out, head_model_dir=args.head_model,
                             num_inference_steps=args.steps, scheduler=args.scheduler, guidance_scale=args.guidance,
                             seed=args.seed, yaw_range_deg=(lo, hi), pitch_deg=args.pitch,
                             export_gs=args.gs, overwrite=args.force,
                             device=args.device))


def export(args) -> None:
    from geoface_model.export import export_sample

    sample = need(args.sample, "SAMPLE", "dir")
    check_out(args.out, [sample], args.force, kind="3dgs export")
    show(export_sample(sample, args.out, colmap_points=not args.no_points))


def register(sub, chosen) -> None:
    """Add the model subcommands to `sub`; `chosen(name)`: whether that subcommand's --help is asked for."""
    p = command(sub, "dataset", "pack fitted frames into training shards of their sequence's split (the dataset stage)",
                dataset, [DATASET, TOKENS, UV], chosen("dataset"), force=DATA_FORCE)
    for name in ("captures", "fits", "uv", "correspondences", "head_model"):
        p.add_argument(name, metavar=name.upper(), help=FOLDERS[name])
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--metrics", help="metrics JSON to write")
    add_executor(p)

    p = command(sub, "train", "train the GeoFace transformer on dataset shards (the train stage); a killed run "
                "resumes from --state", train, TRAIN, chosen("train"),
                force=FILE_FORCE.format(files="--loss-csv / --metrics files"))
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (dataset stage: "
                   "<subject>/<sequence>/shard_XXXX.safetensors, each shard's metadata naming its split; the train "
                   "split's shards are used)")
    p.add_argument("--out", required=True, help="model folder to write (EMA weights + geoface_config.json)")
    p.add_argument("--state", help="training state folder (default: OUT_train_state beside OUT)")
    p.add_argument("--loss-csv", help="loss curve CSV to write (default: OUT_loss.csv beside OUT); an existing file "
                   "is replaced only with --force and only if geoface wrote it")
    p.add_argument("--metrics", help="metrics JSON to write; an existing file is replaced only with --force and only "
                   "if geoface train wrote it")

    p = command(sub, "evaluate", "generate and measure held-out samples with a trained model (the evaluate stage)",
                evaluate, [EVAL, UV], chosen("evaluate"), force=FILE_FORCE.format(files="--metrics file"))
    folders = {"model": "trained model folder (the train stage; `geoface train --out`)",
               "dataset": "dataset folder (the dataset stage; `geoface dataset --out`)", **FOLDERS}
    for name in ("model", "dataset", "fits", "head_model"):
        p.add_argument(name, metavar=name.upper(), help=folders[name])
    p.add_argument("--out", required=True, help="folder for the sample folders (not --plots, nor inside or around it)")
    p.add_argument("--plots", required=True, help="folder for grids, views.csv and report.html")
    p.add_argument("--metrics", help="metrics JSON to write; an existing file is replaced only with --force and only "
                   "if geoface evaluate wrote it")
    p.add_argument("--loss-csv", help="training loss CSV shown in the report (an existing file)")
    p.add_argument("--train-metrics", help="training metrics JSON shown in the report (an existing file)")

    p = command(sub, "generate", "views + geometry from one face photo with a trained model", generate,
                force="replace --out if an earlier geoface run wrote it")
    p.add_argument("photo", metavar="PHOTO", help="face photo (JPEG, PNG, WebP, TIFF, BMP, GIF; read as a viewer "
                   "shows it: EXIF orientation applied, first frame, ICC profile (Display P3, CMYK, grey) converted to "
                   "sRGB, transparency over white; a JPEG up to 537 MP, other formats up to 134 MP; HEIC: export as "
                   "JPEG); the face is found, cropped and aligned")
    p.add_argument("--views", type=int, default=8, help="number of views generated on a yaw orbit (default 8)")
    p.add_argument("--yaw-range", type=float, nargs=2, default=(-60.0, 60.0), metavar=("MIN", "MAX"),
                   help="yaws of the first and last view in degrees, the others evenly between (head-relative: 0 = "
                   "frontal, + = the subject's left; one view: the middle; default -60 60)")
    p.add_argument("--pitch", type=float, metavar="DEG",
                   help="elevation of every view in degrees, head-relative (0 = level with the head centre, + = from "
                   "above; within -90..90 exclusive; default: the photo's own elevation)")
    p.add_argument("--out", required=True, help="folder to write: views/, contact sheet, cameras.json, UV map, mesh")
    p.add_argument("--model", default="models/geoface", help="trained transformer or pipeline folder (default: "
                   "%(default)s, relative to the current folder)")
    p.add_argument("--head-model", default="data/head_model",
                   help="head model folder (UV layout, landmarks) the model was trained with (default: %(default)s)")
    p.add_argument("--steps", type=int, default=25, help="sampler steps (default 25)")
    p.add_argument("--scheduler", choices=["ddim", "euler"], default="ddim", help="sampler (default ddim)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance on the reference (1 = off; needs a model trained with "
                   "train.cond_dropout; default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--device", default="auto", help="where the model runs: auto (a CUDA GPU when there is one, else "
                   "the CPU), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--gs", action="store_true", help="also export transforms.json + COLMAP text + PLY for 3DGS")

    p = command(sub, "export", "3D Gaussian Splatting starting point (transforms.json, COLMAP text, PLY) of a "
                "folder written by `geoface generate` or the evaluate stage; fits as VHAP / nerfstudio datasets: "
                "`geoface export fits --format vhap|nerfstudio CAPTURE FITS --out DIR` (its --help)", export,
                force="replace --out if an earlier geoface run wrote it")
    p.add_argument("sample", metavar="SAMPLE", help="reference.png, views/*.png, cameras.json, optional mesh.obj")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--no-points", action="store_true", help="leave COLMAP's points3D.txt empty")
