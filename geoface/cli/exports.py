"""`geoface export fits --format vhap|nerfstudio CAPTURE FITS --out DIR`: fitted FLAME sequences in the layouts
VHAP / GaussianAvatars and nerfstudio read (flame_fitting.formats.export_vhap / export_nerfstudio).

`geoface export SAMPLE --out DIR` (the 3DGS export of a generated sample, cli.model) keeps its form: `route`
sends `export fits ...` to the hidden subcommand `export-fits` only when it is this form (--format given, or
CAPTURE and FITS after the word `fits`, or --help), so a sample folder named `fits` still exports as before.
"""
from __future__ import annotations

import argparse

from .base import CliError, check_out, need, show

NAME = "export-fits"
# options of either export form that take a value (their values are not positionals)
VALUED = {"--out", "--format", "--cameras", "--n-shape", "--n-expr", "--train-ratio", "--val-camera"}
VHAP_ONLY = {"n_shape": "--n-shape", "n_expr": "--n-expr", "train_ratio": "--train-ratio", "val_camera": "--val-camera"}


def route(argv: list[str]) -> list[str]:
    """`argv` with `export fits` replaced by the hidden `export-fits` when it is the fits form (module docstring)."""
    pos, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a in VALUED:
            skip = True
        elif not a.startswith("-"):
            pos.append(i)
    if len(pos) < 2 or argv[pos[0]] != "export" or argv[pos[1]] != "fits":
        return argv
    wants = len(pos) > 2 or any(a == "--format" or a.startswith("--format=") or a in ("-h", "--help") for a in argv)
    return argv[:pos[0]] + [NAME] + argv[pos[0] + 1:pos[1]] + argv[pos[1] + 1:] if wants else argv


def export_fits(args) -> None:
    capture, fits = need(args.capture, "CAPTURE", "dir"), need(args.fits, "FITS", "dir")
    check_out(args.out, [capture, fits], args.force, kind=f"{args.format} export")
    if args.format == "vhap":
        from flame_fitting.formats.export_vhap import N_EXPR, N_SHAPE, TRAIN_RATIO, export_vhap

        opt = lambda k, d: d if getattr(args, k) is None else getattr(args, k)  # noqa: E731
        show(export_vhap(capture, fits, args.out, args.cameras, opt("n_shape", N_SHAPE), opt("n_expr", N_EXPR),
                         opt("train_ratio", TRAIN_RATIO), args.val_camera, overwrite=args.force,
                         follow_symlinks=args.follow_symlinks))
    else:
        given = [flag for k, flag in VHAP_ONLY.items() if getattr(args, k) is not None]
        if given:
            raise CliError(f"{', '.join(given)}: only for --format vhap")
        from flame_fitting.formats.export_nerfstudio import export_nerfstudio

        show(export_nerfstudio(capture, fits, args.out, args.cameras, overwrite=args.force,
                               follow_symlinks=args.follow_symlinks))


def register(sub) -> None:
    """Add the hidden `export-fits` subcommand (reached as `geoface export fits`, see `route`)."""
    p = sub.add_parser(NAME, prog="geoface export fits", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="fitted FLAME sequences (the fit stage's output) with their images, masks and "
                                   "cameras as VHAP / GaussianAvatars datasets (transforms*.json, images/, fg_masks/, "
                                   "flame_param/*.npz) or nerfstudio scenes (one transforms.json per frame, masks, "
                                   "points3d.ply); docs/export.md")
    p.add_argument("capture", metavar="CAPTURE", help="the canonical capture the fits were made from")
    p.add_argument("fits", metavar="FITS", help="the fit stage's folder (<subject>/<sequence>/fit.npz, cameras.json)")
    p.add_argument("--format", required=True, choices=["vhap", "nerfstudio"], help="the layout to write")
    p.add_argument("--out", required=True, help="folder to write (export.json in it lists what was written)")
    p.add_argument("--cameras", choices=["fit", "capture"], default="fit",
                   help="the fit's refined cameras (consistent with the parameters; default) or the capture's")
    p.add_argument("--n-shape", type=int, help="vhap: shape width, zero-padded (default 300, FLAME's; VHAP's n_shape)")
    p.add_argument("--n-expr", type=int, help="vhap: expression width, zero-padded (default 100; VHAP's n_expr)")
    p.add_argument("--train-ratio", type=float,
                   help="vhap: fraction of the timesteps in train/val, the rest is test (default 0.7, VHAP's)")
    p.add_argument("--val-camera", metavar="NAME", help="vhap: the camera of the val split (default as VHAP: the 9th "
                   "name in sorted order when there are more than 8, else the last)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="copy image / mask files that symbolic links in CAPTURE resolve to outside it (your own "
                        "symlink farm; the importers' captures.follow_symlinks). Off, such a frame is skipped with a "
                        "warning naming the file, so a hand-made capture cannot copy files from elsewhere on the "
                        "machine into the export; links into the .dvc/cache of a DVC repository holding CAPTURE "
                        "are always followed")
    p.add_argument("--force", action="store_true",
                   help="replace --out if an earlier geoface run wrote it (a folder geoface did not write is never "
                        "replaced)")
    p.set_defaults(func=export_fits, sections=[], display="export fits", usage_parser=p)
