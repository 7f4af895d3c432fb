"""`geoface` command line: every stage's work without DVC, through the same library functions as the stages.

    geoface head-model build|validate|convert   the head model (stand-in or FLAME folder)
    geoface import SOURCE [ROOT] --out DIR        a dataset (or synthetic captures) as a canonical capture
    geoface landmarks CAPTURE --out DIR           MediaPipe landmarks of a capture
    geoface fit CAPTURE --out DIR                 landmarks + multi-view FLAME fit
    geoface uv FITS HEAD_MODEL --out DIR          canonical UV position maps of fitted frames
    geoface correspondences FITS UV CAPTURES HEAD_MODEL --out DIR
    geoface dataset CAPTURES FITS UV CORRESPONDENCES HEAD_MODEL --out DIR
    geoface train DATASET --out DIR               train the transformer
    geoface evaluate MODEL DATASET FITS HEAD_MODEL --out DIR --plots DIR
    geoface generate PHOTO --out DIR              views + geometry from one photo
    geoface export SAMPLE --out DIR               3DGS starting point of a generated or evaluated sample
    geoface export fits --format vhap|nerfstudio CAPTURE FITS --out DIR   fits as VHAP / nerfstudio datasets
    geoface audit [MODEL_DIR]                     a model's lineage; does the workspace still hold its data?
    geoface diff-captures OLD NEW                 what changed between two captures (folders or git revisions)
    geoface remote [check|push|pull]              the default DVC remote

`geoface CMD --help` lists the options and the params keys of CMD (with their docs and ranges; --set KEY=VALUE).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from flame_fitting.core.errors import GeofaceError, error_line
from flame_fitting.core.interrupt import INTERRUPTED, exiting_interrupted, unwind_on_sigterm

from . import exports, geometry, lineage, model


def version() -> str:
    """The installed distribution's version (importlib.metadata), else the package's own."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("geoface")
    except PackageNotFoundError:
        import geoface

        return getattr(geoface, "__version__", "unknown")


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `geoface` parser; only the subcommand named in `argv` renders its params keys (imports its configs)."""
    asked = next((a for a in (argv or []) if not a.startswith("-")), None)
    ap = argparse.ArgumentParser(prog="geoface", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"geoface {version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    geometry.register(sub, lambda name: name == asked)
    model.register(sub, lambda name: name == asked)
    exports.register(sub)
    lineage.register(sub, lambda name: name == asked)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # here, not at exit: a reader that stopped early is then caught below
            if argv is None:  # the process's own command (not a call from Python): a faster exit
                from flame_fitting.core.gc_freeze import freeze  # (flame_fitting/core/gc_freeze.py)

                freeze()
    except BrokenPipeError:  # the reader of our output stopped early (`geoface ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would raise again
        return 141  # what a shell reports for a command stopped by SIGPIPE (128 + 13)


def interrupted_line(args, e: BaseException | None = None) -> str:
    """What Ctrl-C (or SIGTERM) left: a data command (landmarks ... dataset, which take the executor options) keeps
    the sequences it finished in OUT (core/units.py); the others write their output folder in one rename; a training
    (`e`: geoface_model.train_run.TrainInterrupted) also says what the same command does now: resume from its newest
    checkpoint, or start over."""
    if hasattr(args, "executor"):
        return (f"interrupted; the sequences finished before are kept in {args.out} and the temporaries removed: run "
                "the same command with --force to do the others")
    line = "interrupted; its output folder was not written (the temporary is removed)"
    again = getattr(e, "again", None)
    return f"{line}; {again('running the same command')}" if again is not None else line


def _main(argv: list[str] | None) -> int:
    own = argv is None  # the process's own command (not a call from Python)
    argv = exports.route(sys.argv[1:] if argv is None else list(argv))
    ap = parser(argv)
    args, unknown = ap.parse_known_args(argv)  # an unknown option is the subcommand's error, with its usage
    if unknown:
        getattr(args, "usage_parser", ap).error(f"unrecognized arguments: {' '.join(unknown)}")
    unwind_on_sigterm()  # `kill`: unwind like Ctrl-C, so temporaries are removed (flame_fitting/core/interrupt.py)
    name = getattr(args, "display", None) or " ".join(x for x in (args.cmd, getattr(args, "action", None)) if x)
    from .words import Annotating, annotate, options_of

    words = options_of(args)  # the params keys the library's messages name -> this command's options (words.py)
    try:
        from .base import configs

        with contextlib.redirect_stderr(Annotating(sys.stderr, words)):  # the library's warnings, in our words
            if getattr(args, "check_set", None) is not None:  # a subcommand's own check of its --set keys
                args.check_set(args)
            rc = args.func(args, *(configs(args) if args.sections else []))
    except BrokenPipeError:
        raise
    except KeyboardInterrupt as e:
        status = exiting_interrupted() if own else INTERRUPTED  # own command: a second Ctrl-C / SIGTERM
        print(f"geoface {name}: {annotate(interrupted_line(args, e), words)}", file=sys.stderr)  # one is ignored
        return status
    except (GeofaceError, ValueError, OSError) as e:  # our errors name the file and the problem; the system's
        print(f"geoface {name}: {annotate(error_line(e), words)}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0
